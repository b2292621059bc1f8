//! The server section (`--only server`): `silo serve` on its default store (`sqlite`) and on
//! `fs:` against the incumbent's server, through the incumbent's own client — one thread per
//! operation, then 1, 8, 32 and 128 concurrent clients with p50/p99 — silo's batch API at 1 and
//! 32 clients, and a Redis reference row (`redis-benchmark`, no persistence) when Redis is
//! installed, so the table shows how far each server is from the machine's floor.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use silo::wire::{StorageOp, StorageReply};

use super::{Silo, Subject, Vgi, fmt_rate, key, median, percentile, timed, value};

/// The servers compared: a name and its base URL (each runs in this process).
struct Servers {
    _running: Vec<silo_compat::Running>,
    urls: Vec<(&'static str, String)>,
}

const INCUMBENT: &str = "incumbent (vgi sqlite)";
const SILO_SQLITE: &str = "silo serve, sqlite (default)";
const SILO_FS: &str = "silo serve, fs:";

fn start_servers(dir: &Path) -> Servers {
    let vgi = silo_compat::vgi_server(Arc::new(vgi::storage::SqliteStorage::open(
        dir.join("server-vgi.db"),
    )));
    let sqlite = silo_compat::silo_server(
        silo::open(&format!("sqlite://{}/server-silo.db", dir.display())).expect("sqlite"),
    );
    let fs = silo_compat::silo_server(
        silo::open(&format!("fs://{}", dir.join("server-fs").display())).expect("fs"),
    );
    Servers {
        urls: vec![
            (INCUMBENT, vgi.url()),
            (SILO_SQLITE, sqlite.url()),
            (SILO_FS, fs.url()),
        ],
        _running: vec![vgi, sqlite, fs],
    }
}

pub(super) fn vgi_client(url: &str) -> Vgi {
    Vgi(Arc::new(vgi::storage::HttpStorage::new(
        url.to_string(),
        None,
    )))
}

fn silo_client(url: &str) -> silo::http::HttpStorage {
    silo::http::HttpStorage::new(url, silo::http::HttpOptions::default()).expect("silo client")
}

/// The single-client operations, in table order.
pub(super) const OPS: [&str; 5] = ["kv_put", "kv_get", "append", "queue_push", "queue_pop"];

/// One run of `op` by one client: operations per second, checked.
pub(super) fn one_client(sub: &dyn Subject, op: &str, n: usize, run: usize) -> Result<f64, String> {
    let scope = format!("server-{op}-{run}").into_bytes();
    // Reads and pops need something to read: written before the clock starts.
    match op {
        "kv_get" => (0..n).for_each(|i| sub.kv_put(&scope, &key(0, i), &value(0, i, 100))),
        "queue_pop" => {
            let items: Vec<Vec<u8>> = (0..n).map(|i| value(0, i, 100)).collect();
            items.chunks(1000).for_each(|c| sub.push(&scope, c));
        }
        _ => {}
    }
    let start = Instant::now();
    let mut last_id = i64::MIN;
    for i in 0..n {
        let v = value(0, i, 100);
        match op {
            "kv_put" => sub.kv_put(&scope, &key(0, i), &v),
            "kv_get" => {
                if sub.kv_get(&scope, &key(0, i)) != Some(v) {
                    return Err(format!("{op}: key {i} read back wrong"));
                }
            }
            "append" => {
                let id = sub.append(&scope, b"log", &v);
                if id <= last_id {
                    return Err(format!("{op}: id {id} after {last_id}"));
                }
                last_id = id;
            }
            "queue_push" => sub.push(&scope, &[v]),
            "queue_pop" => {
                if sub.pop(&scope) != Some(v) {
                    return Err(format!("{op}: item {i} popped wrong or out of order"));
                }
            }
            other => return Err(format!("unknown op {other}")),
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    if op == "queue_push" {
        for i in 0..n {
            if sub.pop(&scope) != Some(value(0, i, 100)) {
                return Err(format!("{op}: item {i} missing or out of order"));
            }
        }
    }
    sub.clear(&scope);
    Ok(rate)
}

/// Requests per second and sorted latencies of `clients` threads, each with its own client,
/// each putting a fresh key and reading it back for `secs`.
fn many_clients(
    make: &(dyn Fn() -> Box<dyn Subject> + Sync),
    clients: usize,
    secs: f64,
    run: usize,
) -> Result<(f64, Vec<Duration>), String> {
    let deadline = Duration::from_secs_f64(secs);
    let scope = format!("clients-{clients}-{run}").into_bytes();
    let (elapsed, out) = timed(clients, |t| {
        let sub = make();
        let mut lat = Vec::new();
        let start = Instant::now();
        let mut i = 0;
        while start.elapsed() < deadline {
            let v = value(t, i, 100);
            let t0 = Instant::now();
            sub.kv_put(&scope, &key(t, i), &v);
            let t1 = Instant::now();
            let back = sub.kv_get(&scope, &key(t, i));
            lat.push(t1 - t0);
            lat.push(t1.elapsed());
            if back != Some(v) {
                return Err(format!("client {t}: key {i} read back wrong"));
            }
            i += 1;
        }
        Ok(lat)
    });
    let mut all = Vec::new();
    for lat in out {
        all.extend(lat?);
    }
    all.sort();
    Ok((all.len() as f64 / elapsed.as_secs_f64(), all))
}

/// Items per second of `clients` threads sending batches of `per_batch` appends through
/// silo's client for `secs`; every batch's ids checked, the log's length checked at the end.
fn batches(
    url: &str,
    clients: usize,
    per_batch: usize,
    secs: f64,
    run: usize,
) -> Result<f64, String> {
    let deadline = Duration::from_secs_f64(secs);
    let scope = format!("batch-{clients}-{run}").into_bytes();
    let (elapsed, out) = timed(clients, |t| {
        let client = silo_client(url);
        let log = format!("log-{t}").into_bytes();
        let start = Instant::now();
        let (mut items, mut batch_no) = (0usize, 0usize);
        let mut last_id = i64::MIN;
        while start.elapsed() < deadline {
            let ops = (0..per_batch)
                .map(|i| StorageOp::Append {
                    scope: scope.clone().into(),
                    ns: b"".into(),
                    key: log.clone().into(),
                    value: value(t, batch_no * per_batch + i, 100).into(),
                })
                .collect();
            let replies = client.batch(ops).map_err(|e| format!("batch: {e}"))?;
            for reply in replies {
                match reply {
                    StorageReply::Id(id) if id > last_id => last_id = id,
                    other => return Err(format!("client {t}: append answered {other:?}")),
                }
            }
            items += per_batch;
            batch_no += 1;
        }
        let stored = silo::FunctionStorage::scan(&client, &scope, b"", &log, i64::MIN, u64::MAX)
            .map_err(|e| format!("scan: {e}"))?
            .len();
        if stored != items {
            return Err(format!("client {t}: {items} appended, {stored} in the log"));
        }
        Ok(items)
    });
    let mut total = 0;
    for n in out {
        total += n?;
    }
    let c = silo_client(url);
    let _ = silo::FunctionStorage::clear(&c, &scope);
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// `h2load` rows (Markdown) for each server, operation and connection shape.
fn h2load_rows(servers: &Servers, quick: bool, dir: &Path) -> Result<Vec<String>, String> {
    let n = if quick { 40_000 } else { 100_000 };
    let mut rows = Vec::new();
    let bodies = [
        (
            "kv_get",
            StorageOp::KvGet {
                scope: b"h2load".into(),
                key: b"k".into(),
            },
        ),
        (
            "kv_put",
            StorageOp::KvPut {
                scope: b"h2load".into(),
                key: b"k".into(),
                value: vec![7u8; 100].into(),
            },
        ),
    ];
    for (name, url) in &servers.urls {
        for (op, body) in &bodies {
            let path = dir.join(format!("h2load-{op}.bin"));
            let bytes = silo::wire::encode(&silo::wire::StorageRequest {
                idempotency_key: None,
                op: body.clone(),
            })
            .map_err(|e| e.to_string())?;
            std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
            let mut shapes = vec![("1 × 1 (HTTP/1.1)", vec!["--h1", "-c", "1"])];
            shapes.push(("32 × 1 (HTTP/1.1)", vec!["--h1", "-c", "32"]));
            if *name != INCUMBENT {
                shapes.push(("1 × 32 (h2c)", vec!["-c", "1", "-m", "32"]));
            }
            for (shape, args) in shapes {
                let mut runs = Vec::new();
                for _ in 0..3 {
                    runs.push(h2load(&args, n, &path, url)?);
                }
                runs.sort_by(|a, b| a.0.total_cmp(&b.0));
                let (rate, mean) = &runs[1];
                rows.push(format!(
                    "| {name} | {op} | {shape} | {} | {mean} |",
                    fmt_rate(Some(*rate))
                ));
            }
        }
    }
    Ok(rows)
}

/// One `h2load` run: requests per second and the mean request time as printed.
fn h2load(args: &[&str], n: usize, body: &Path, url: &str) -> Result<(f64, String), String> {
    let out = Command::new("h2load")
        .args(args)
        .args(["-n", &n.to_string(), "-d"])
        .arg(body)
        .args(["-H", "content-type: application/octet-stream"])
        .arg(format!("{url}/rpc"))
        .output()
        .map_err(|e| format!("h2load not run ({e}); apt-get install nghttp2-client"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let failed = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .is_none_or(|l| !l.contains(&format!("{n} succeeded")));
    if failed {
        return Err(format!(
            "h2load {args:?} did not succeed every request: {text}"
        ));
    }
    // "finished in 551.90ms, 72477.29 req/s, 8.29MB/s"
    let rate = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok())
        .ok_or_else(|| format!("unexpected h2load output: {text}"))?;
    // "time for request:  min  max  mean  sd  +/- sd"
    let mean = text
        .lines()
        .find(|l| l.starts_with("time for request:"))
        .and_then(|l| l.split_whitespace().nth(5).map(str::to_string))
        .unwrap_or_default();
    Ok((rate, mean))
}

/// One row of the Redis reference: clients, SET/s, GET/s, GET p50 and p99 in milliseconds.
type RedisRow = (usize, f64, f64, f64, f64);

/// A Redis reference from `redis-benchmark` against a `redis-server` without persistence, or
/// why there is none.
fn redis_reference(quick: bool) -> Result<Vec<RedisRow>, String> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server not started ({e}); apt-get install redis-server"))?;
    std::thread::sleep(Duration::from_millis(300));
    let mut rows = Vec::new();
    for clients in [1usize, 50] {
        let n = if quick { 20_000 } else { 100_000 } * if clients == 1 { 1 } else { 4 };
        let out = Command::new("redis-benchmark")
            .args(["-p", &port.to_string(), "-c", &clients.to_string()])
            .args(["-n", &n.to_string(), "-t", "set,get", "-d", "100", "--csv"])
            .output()
            .map_err(|e| format!("redis-benchmark: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",...
        let field = |line: &str, i: usize| -> Option<f64> {
            line.split(',').nth(i)?.trim_matches('"').parse().ok()
        };
        let row = |name: &str| text.lines().find(|l| l.starts_with(&format!("\"{name}\"")));
        let (Some(set), Some(get)) = (row("SET"), row("GET")) else {
            let _ = server.kill();
            return Err(format!("unexpected redis-benchmark output: {text}"));
        };
        rows.push((
            clients,
            field(set, 1).unwrap_or(0.0),
            field(get, 1).unwrap_or(0.0),
            field(get, 4).unwrap_or(0.0),
            field(get, 6).unwrap_or(0.0),
        ));
    }
    let _ = server.kill();
    let _ = server.wait();
    Ok(rows)
}

/// Runs the section and returns its Markdown and the runs that failed verification.
pub fn section(reps: usize, quick: bool, dir: &Path) -> (String, Vec<String>) {
    let servers = start_servers(dir);
    let mut failures = Vec::new();
    let mut md = String::new();
    let n = if quick { 2_000 } else { 5_000 };

    // ---- one thread through the incumbent's client
    let mut rates: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); OPS.len()]; servers.urls.len()];
    for rep in 0..reps {
        for (o, op) in OPS.iter().enumerate() {
            for (s, (name, url)) in servers.urls.iter().enumerate() {
                match one_client(&vgi_client(url), op, n, rep) {
                    Ok(r) => rates[s][o].push(r),
                    Err(e) => failures.push(format!("{name} {op}: {e}")),
                }
            }
        }
    }
    let med = |xs: &Vec<f64>| (!xs.is_empty()).then(|| median(xs.clone()));
    let _ = writeln!(
        md,
        "\n## `silo serve` against the incumbent's server, through the incumbent's client (issue 9)\n"
    );
    let _ = writeln!(
        md,
        "The `vgi` crate's `HttpStorage` (what VGI workers cannot change), one thread, 100 B values, \
         {n} operations a run, median of {reps}; ratio = silo / incumbent.\n"
    );
    let _ = writeln!(
        md,
        "| operation | {INCUMBENT} | {SILO_SQLITE} | ratio | {SILO_FS} | ratio |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    for (o, op) in OPS.iter().enumerate() {
        let base = med(&rates[0][o]);
        let cell = |s: usize| {
            let r = med(&rates[s][o]);
            let ratio = match (r, base) {
                (Some(r), Some(b)) if b > 0.0 => format!("**{:.2}×**", r / b),
                _ => "—".into(),
            };
            format!("{} | {ratio}", fmt_rate(r))
        };
        let _ = writeln!(
            md,
            "| {op} | {} | {} | {} |",
            fmt_rate(base),
            cell(1),
            cell(2)
        );
        eprintln!(
            "server {op}: vgi {} | {} | {}",
            fmt_rate(base),
            cell(1),
            cell(2)
        );
    }

    // ---- many clients
    let secs = if quick { 1.0 } else { 2.0 };
    let _ = writeln!(
        md,
        "\n### Concurrent clients, each `kv_put` of a fresh key then `kv_get` of it (100 B)\n"
    );
    let _ = writeln!(
        md,
        "Requests per second over {secs} s (median of {}), and p50 / p99 latency of every request of \
         the median run; each client a thread with its own connection, all in this process with \
         the servers (2 cores).\n",
        reps.min(3)
    );
    let _ = writeln!(md, "| client → server | clients | requests/s | p50 | p99 |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    let mut subjects: Vec<(String, String, bool)> = servers
        .urls
        .iter()
        .map(|(name, url)| (format!("vgi client → {name}"), url.clone(), false))
        .collect();
    subjects.push((
        format!("silo client → {SILO_FS}"),
        servers.urls[2].1.clone(),
        true,
    ));
    for clients in [1usize, 8, 32, 128] {
        for (name, url, silo_side) in &subjects {
            let make = |url: String, silo_side: bool| {
                move || -> Box<dyn Subject> {
                    if silo_side {
                        Box::new(Silo(Arc::new(silo_client(&url))))
                    } else {
                        Box::new(vgi_client(&url))
                    }
                }
            };
            let make = make(url.clone(), *silo_side);
            let mut runs = Vec::new();
            for rep in 0..reps.min(3) {
                match many_clients(&make, clients, secs, rep) {
                    Ok(run) => runs.push(run),
                    Err(e) => failures.push(format!("{name} {clients} clients: {e}")),
                }
            }
            if runs.is_empty() {
                continue;
            }
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (rate, lat) = &runs[runs.len() / 2];
            let line = format!(
                "| {name} | {clients} | {} | {} | {} |",
                fmt_rate(Some(*rate)),
                us(percentile(lat, 0.5)),
                us(percentile(lat, 0.99))
            );
            eprintln!("{line}");
            let _ = writeln!(md, "{line}");
        }
    }

    // ---- batches
    let _ = writeln!(
        md,
        "\n### silo's batch API (`HttpStorage::batch`): appends of 100 B, 1,000 per request\n"
    );
    let _ = writeln!(md, "| server | clients | items/s |");
    let _ = writeln!(md, "|---|---:|---:|");
    for (name, url) in servers.urls.iter().skip(1) {
        for clients in [1usize, 32] {
            let mut r = Vec::new();
            for rep in 0..reps.min(3) {
                match batches(url, clients, 1000, secs, rep) {
                    Ok(rate) => r.push(rate),
                    Err(e) => failures.push(format!("{name} batch {clients} clients: {e}")),
                }
            }
            let line = format!("| {name} | {clients} | {} |", fmt_rate(med(&r)));
            eprintln!("{line}");
            let _ = writeln!(md, "{line}");
        }
    }

    // ---- a client that costs little: h2load
    let _ = writeln!(
        md,
        "\n### Through a fast client: `h2load` (nghttp2), 100 B values\n"
    );
    match h2load_rows(&servers, quick, dir) {
        Ok(rows) => {
            let _ = writeln!(
                md,
                "The same request body sent over and over (`kv_get` of one key; `kv_put` of one key, \
                 no idempotency key), so the server's cost per request is what is measured: one \
                 HTTP/1.1 connection, 32 HTTP/1.1 connections, and one HTTP/2 (h2c) connection \
                 with 32 streams in flight (the incumbent speaks HTTP/1.1 only). Median of {} runs.\n",
                reps.min(3)
            );
            let _ = writeln!(
                md,
                "| server | operation | connections × streams | requests/s | mean |"
            );
            let _ = writeln!(md, "|---|---|---|---:|---:|");
            for row in rows {
                eprintln!("h2load {row}");
                let _ = writeln!(md, "{row}");
            }
        }
        Err(e) => {
            eprintln!("h2load rows skipped: {e}");
            let _ = writeln!(md, "Not measured in this run: {e}.");
        }
    }

    // ---- the floor
    let _ = writeln!(
        md,
        "\n### Reference: Redis on this machine (`redis-benchmark`, 100 B, no persistence)\n"
    );
    match redis_reference(quick) {
        Ok(rows) => {
            let _ = writeln!(md, "| clients | SET/s | GET/s | GET p50 | GET p99 |");
            let _ = writeln!(md, "|---:|---:|---:|---:|---:|");
            for (clients, set, get, p50, p99) in rows {
                let line = format!(
                    "| {clients} | {} | {} | {:.0} µs | {:.0} µs |",
                    fmt_rate(Some(set)),
                    fmt_rate(Some(get)),
                    p50 * 1000.0,
                    p99 * 1000.0
                );
                eprintln!("redis {line}");
                let _ = writeln!(md, "{line}");
            }
        }
        Err(e) => {
            eprintln!("redis reference skipped: {e}");
            let _ = writeln!(md, "Not measured in this run: {e}.");
        }
    }
    (md, failures)
}
