//! silo-bench: one workload against silo's backends and the `vgi` crate's, back to back in one
//! process on one machine, verified as it goes, summarised as one table (medians of
//! repeated runs, and the ratio silo / vgi per cell), written to BENCHMARKS.md with an SVG
//! chart of the ratios.
//!
//! `cargo run --release --manifest-path compat/Cargo.toml --bin silo-bench -- [--quick]
//!  [--reps N] [--out BENCHMARKS.md] [--svg benchmarks.svg]`

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ the two subjects

/// What a workload needs from a store; implemented over silo and over vgi.
trait Subject: Send + Sync {
    fn kv_put(&self, scope: &[u8], key: &[u8], value: &[u8]);
    fn kv_get(&self, scope: &[u8], key: &[u8]) -> Option<Vec<u8>>;
    fn append(&self, scope: &[u8], key: &[u8], value: &[u8]) -> i64;
    fn scan(&self, scope: &[u8], key: &[u8], after: i64, limit: u64) -> Vec<(i64, Vec<u8>)>;
    fn push(&self, scope: &[u8], items: &[Vec<u8>]);
    fn pop(&self, scope: &[u8]) -> Option<Vec<u8>>;
    /// silo: one `state_put_many`; vgi has none, so its natural equivalent: one `kv_put` each.
    fn put_many(&self, scope: &[u8], items: &[(Vec<u8>, Vec<u8>)]);
    /// Drops the scope after a run, so that stores (the in-memory ones above all) do not grow
    /// from one run to the next.
    fn clear(&self, scope: &[u8]);
}

struct Silo(Arc<dyn silo::FunctionStorage>);
struct Vgi(Arc<dyn vgi::storage::FunctionStorage>);

impl Subject for Silo {
    fn kv_put(&self, s: &[u8], k: &[u8], v: &[u8]) {
        self.0.kv_put(s, k, v).expect("silo kv_put");
    }
    fn kv_get(&self, s: &[u8], k: &[u8]) -> Option<Vec<u8>> {
        self.0.kv_get(s, k).expect("silo kv_get")
    }
    fn append(&self, s: &[u8], k: &[u8], v: &[u8]) -> i64 {
        self.0.append(s, b"bench", k, v).expect("silo append")
    }
    fn scan(&self, s: &[u8], k: &[u8], after: i64, limit: u64) -> Vec<(i64, Vec<u8>)> {
        self.0
            .scan(s, b"bench", k, after, limit)
            .expect("silo scan")
    }
    fn push(&self, s: &[u8], items: &[Vec<u8>]) {
        self.0.queue_push(s, items).expect("silo queue_push");
    }
    fn pop(&self, s: &[u8]) -> Option<Vec<u8>> {
        self.0.queue_pop(s).expect("silo queue_pop")
    }
    fn put_many(&self, s: &[u8], items: &[(Vec<u8>, Vec<u8>)]) {
        self.0
            .state_put_many(s, b"", items)
            .expect("silo state_put_many");
    }
    fn clear(&self, s: &[u8]) {
        self.0.clear(s).expect("silo clear");
    }
}

impl Subject for Vgi {
    fn kv_put(&self, s: &[u8], k: &[u8], v: &[u8]) {
        self.0.kv_put(s, k, v);
    }
    fn kv_get(&self, s: &[u8], k: &[u8]) -> Option<Vec<u8>> {
        self.0.kv_get(s, k)
    }
    fn append(&self, s: &[u8], k: &[u8], v: &[u8]) -> i64 {
        self.0.append(s, b"bench", k, v.to_vec())
    }
    fn scan(&self, s: &[u8], k: &[u8], after: i64, limit: u64) -> Vec<(i64, Vec<u8>)> {
        self.0.scan(
            s,
            b"bench",
            k,
            after,
            usize::try_from(limit).unwrap_or(usize::MAX),
        )
    }
    fn push(&self, s: &[u8], items: &[Vec<u8>]) {
        self.0.queue_push(s, items);
    }
    fn pop(&self, s: &[u8]) -> Option<Vec<u8>> {
        self.0.queue_pop(s)
    }
    fn put_many(&self, s: &[u8], items: &[(Vec<u8>, Vec<u8>)]) {
        for (k, v) in items {
            self.0.kv_put(s, k, v);
        }
    }
    fn clear(&self, s: &[u8]) {
        self.0.clear(s);
    }
}

// ------------------------------------------------------------------ workloads

#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    KvPut,
    KvGet,
    Append,
    Scan,
    Push,
    Pop,
    PutMany,
    PushMany,
}

impl Family {
    const ALL: [Family; 8] = [
        Family::KvPut,
        Family::KvGet,
        Family::Append,
        Family::Scan,
        Family::Push,
        Family::Pop,
        Family::PutMany,
        Family::PushMany,
    ];
    fn name(self) -> &'static str {
        match self {
            Family::KvPut => "kv_put",
            Family::KvGet => "kv_get",
            Family::Append => "append",
            Family::Scan => "scan (entries)",
            Family::Push => "queue_push",
            Family::Pop => "queue_pop",
            Family::PutMany => "put_many ×1000 (items)",
            Family::PushMany => "push ×1000 (items)",
        }
    }
}

const BATCH: usize = 1000;

/// A self-checking value for `(thread, seq)` of `size` bytes (at least 16).
fn value(thread: usize, seq: usize, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size.max(16));
    v.extend_from_slice(&(thread as u64).to_le_bytes());
    v.extend_from_slice(&(seq as u64).to_le_bytes());
    v.extend((16..size).map(|i| (i * 7 + seq * 13 + thread) as u8));
    v
}

fn key(thread: usize, seq: usize) -> Vec<u8> {
    [(thread as u32).to_be_bytes(), (seq as u32).to_be_bytes()].concat()
}

fn origin(v: &[u8]) -> (usize, usize) {
    let t = u64::from_le_bytes(v[..8].try_into().expect("8 bytes")) as usize;
    let s = u64::from_le_bytes(v[8..16].try_into().expect("8 bytes")) as usize;
    (t, s)
}

static RUN: AtomicU64 = AtomicU64::new(0);

fn fresh_scope(f: Family) -> Vec<u8> {
    format!(
        "bench-{f:?}-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    )
    .into_bytes()
}

/// One timed run: `(units per second, per-op latencies if recorded)`, or what went wrong.
type Outcome = Result<(f64, Vec<Duration>), String>;

fn timed<T: Send>(threads: usize, work: impl Fn(usize) -> T + Sync) -> (Duration, Vec<T>) {
    let start = Instant::now();
    let out = std::thread::scope(|s| {
        let work = &work;
        let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || work(t))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect::<Vec<_>>()
    });
    (start.elapsed(), out)
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}

/// Runs one family once on a fresh scope, then drops the scope.
fn run(sub: &dyn Subject, f: Family, size: usize, threads: usize, n: usize, lat: bool) -> Outcome {
    let scope = fresh_scope(f);
    let outcome = run_in(sub, &scope, f, size, threads, n, lat);
    sub.clear(&scope);
    outcome
}

/// `n` operations (items for the batch forms) of family `f` across `threads` in `scope`.
fn run_in(
    sub: &dyn Subject,
    scope: &[u8],
    f: Family,
    size: usize,
    threads: usize,
    n: usize,
    lat: bool,
) -> Outcome {
    let sc = scope;
    let per = n / threads;
    let rec = |lats: &mut Vec<Duration>, t0: Instant| {
        if lat {
            lats.push(t0.elapsed());
        }
    };
    match f {
        Family::KvPut => {
            let (el, lats) = timed(threads, |t| {
                let mut lats = Vec::new();
                for i in 0..per {
                    let v = value(t, i, size);
                    let t0 = Instant::now();
                    sub.kv_put(sc, &key(t, i), &v);
                    rec(&mut lats, t0);
                }
                lats
            });
            for t in 0..threads {
                for i in (0..per).step_by(7) {
                    check(
                        sub.kv_get(sc, &key(t, i)) == Some(value(t, i, size)),
                        || format!("kv {t}/{i} lost or torn"),
                    )?;
                }
            }
            Ok(((per * threads) as f64 / el.as_secs_f64(), lats.concat()))
        }
        Family::KvGet => {
            for t in 0..threads {
                let items: Vec<_> = (0..per).map(|i| (key(t, i), value(t, i, size))).collect();
                items.chunks(BATCH).for_each(|c| sub.put_many(sc, c));
            }
            let (el, res) = timed(threads, |t| {
                let mut lats = Vec::new();
                for i in 0..per {
                    let t0 = Instant::now();
                    let got = sub.kv_get(sc, &key(t, i));
                    rec(&mut lats, t0);
                    if got != Some(value(t, i, size)) {
                        return Err(format!("kv_get {t}/{i} returned the wrong value"));
                    }
                }
                Ok(lats)
            });
            let lats = res.into_iter().collect::<Result<Vec<_>, _>>()?;
            Ok(((per * threads) as f64 / el.as_secs_f64(), lats.concat()))
        }
        Family::Append => {
            let (el, res) = timed(threads, |t| {
                let (mut ids, mut lats) = (Vec::new(), Vec::new());
                for i in 0..per {
                    let v = value(t, i, size);
                    let t0 = Instant::now();
                    ids.push(sub.append(sc, b"log", &v));
                    rec(&mut lats, t0);
                }
                (ids, lats)
            });
            let mut all = HashSet::new();
            for (ids, _) in &res {
                check(ids.windows(2).all(|w| w[0] < w[1]), || {
                    "ids not increasing".into()
                })?;
                all.extend(ids.iter().copied());
            }
            check(all.len() == per * threads, || "duplicate ids".into())?;
            let log = sub.scan(sc, b"log", -1, u64::MAX);
            check(log.len() == per * threads, || {
                format!("scan found {} of {}", log.len(), per * threads)
            })?;
            for (id, v) in &log {
                let (t, i) = origin(v);
                check(all.contains(id) && *v == value(t, i, size), || {
                    format!("entry {id} torn")
                })?;
            }
            let lats = res.into_iter().flat_map(|(_, l)| l).collect();
            Ok(((per * threads) as f64 / el.as_secs_f64(), lats))
        }
        Family::Scan => {
            let entries = (n / 4).max(BATCH);
            for i in 0..entries {
                sub.append(sc, b"log", &value(0, i, size));
            }
            let rounds = 4;
            let (el, res) = timed(threads, |_| {
                let mut seen = 0usize;
                for _ in 0..rounds {
                    let mut after = -1;
                    loop {
                        let page = sub.scan(sc, b"log", after, BATCH as u64);
                        let Some(last) = page.last() else { break };
                        after = last.0;
                        seen += page.len();
                    }
                }
                seen
            });
            check(res.iter().all(|&s| s == entries * rounds), || {
                "scan missed entries".into()
            })?;
            Ok((
                (entries * rounds * threads) as f64 / el.as_secs_f64(),
                Vec::new(),
            ))
        }
        Family::Push => {
            let (el, lats) = timed(threads, |t| {
                let mut lats = Vec::new();
                for i in 0..per {
                    let item = [value(t, i, size)];
                    let t0 = Instant::now();
                    sub.push(sc, &item);
                    rec(&mut lats, t0);
                }
                lats
            });
            drain_and_check(sub, sc, threads, per, size)?;
            Ok(((per * threads) as f64 / el.as_secs_f64(), lats.concat()))
        }
        Family::Pop => {
            for t in 0..threads {
                let items: Vec<_> = (0..per).map(|i| value(t, i, size)).collect();
                items.chunks(BATCH).for_each(|c| sub.push(sc, c));
            }
            let (el, res) = timed(threads, |_| {
                let (mut got, mut lats) = (Vec::new(), Vec::new());
                loop {
                    let t0 = Instant::now();
                    let Some(v) = sub.pop(sc) else { break };
                    rec(&mut lats, t0);
                    got.push(v);
                }
                (got, lats)
            });
            let mut seen = HashSet::new();
            for (got, _) in &res {
                for v in got {
                    let (t, i) = origin(v);
                    check(*v == value(t, i, size) && seen.insert((t, i)), || {
                        format!("item {t}/{i} torn or twice")
                    })?;
                }
            }
            check(seen.len() == per * threads, || {
                format!("popped {} of {}", seen.len(), per * threads)
            })?;
            let lats = res.into_iter().flat_map(|(_, l)| l).collect();
            Ok(((per * threads) as f64 / el.as_secs_f64(), lats))
        }
        Family::PutMany => {
            let batches = (per / BATCH).max(1);
            let (el, _) = timed(threads, |t| {
                for b in 0..batches {
                    let items: Vec<_> = (b * BATCH..(b + 1) * BATCH)
                        .map(|i| (key(t, i), value(t, i, size)))
                        .collect();
                    sub.put_many(sc, &items);
                }
            });
            for t in 0..threads {
                for i in (0..batches * BATCH).step_by(97) {
                    check(
                        sub.kv_get(sc, &key(t, i)) == Some(value(t, i, size)),
                        || format!("put_many {t}/{i} lost"),
                    )?;
                }
            }
            Ok((
                (batches * BATCH * threads) as f64 / el.as_secs_f64(),
                Vec::new(),
            ))
        }
        Family::PushMany => {
            let batches = (per / BATCH).max(1);
            let (el, _) = timed(threads, |t| {
                for b in 0..batches {
                    let items: Vec<_> = (b * BATCH..(b + 1) * BATCH)
                        .map(|i| value(t, i, size))
                        .collect();
                    sub.push(sc, &items);
                }
            });
            drain_and_check(sub, sc, threads, batches * BATCH, size)?;
            Ok((
                (batches * BATCH * threads) as f64 / el.as_secs_f64(),
                Vec::new(),
            ))
        }
    }
}

/// Pops everything; checks each pusher's items arrived whole, once, in its order.
fn drain_and_check(
    sub: &dyn Subject,
    sc: &[u8],
    threads: usize,
    per: usize,
    size: usize,
) -> Result<(), String> {
    let mut next = vec![0usize; threads];
    while let Some(v) = sub.pop(sc) {
        let (t, i) = origin(&v);
        check(
            t < threads && i == next[t] && v == value(t, i, size),
            || format!("item {t}/{i} out of order or torn"),
        )?;
        next[t] += 1;
    }
    check(next.iter().all(|&c| c == per), || {
        format!("queue held {next:?}, expected {per} each")
    })
}

// ------------------------------------------------------------------ the matrix

struct Cell {
    group: String,
    family: String,
    size: usize,
    threads: usize,
    silo: Option<f64>,
    vgi: Option<f64>,
    /// Whether every silo run checked out, and every vgi run.
    silo_ok: Result<(), String>,
    vgi_ok: Result<(), String>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Settings {
    reps: usize,
    scale: f64,
}

/// Sorted per-operation latencies of silo and of vgi, by operation name.
type Latencies = Vec<(String, Vec<Duration>, Vec<Duration>)>;

/// One store kind, with the silo and the vgi subject (either may be missing) and how many
/// operations one run does at 100 B and at 64 KiB.
struct Group<'a> {
    name: &'a str,
    silo: Option<&'a dyn Subject>,
    vgi: Option<&'a dyn Subject>,
    n_small: usize,
    n_big: usize,
}

/// Runs a family on both subjects, alternating them each repetition so drift hits both.
fn measure(
    settings: &Settings,
    group: &Group<'_>,
    (f, size, threads, n): (Family, usize, usize, usize),
    lats: Option<&mut Latencies>,
) -> Measured {
    let (silo, vgi) = (group.silo, group.vgi);
    let n = ((n as f64 * settings.scale) as usize).max(threads * BATCH.min(n));
    let (mut s, mut v) = (Vec::new(), Vec::new());
    let (mut sl, mut vl) = (Vec::new(), Vec::new());
    let (mut silo_ok, mut vgi_ok) = (Ok(()), Ok(()));
    let want_lat = lats.is_some();
    for _ in 0..settings.reps {
        for (subject, rates, l, ok) in [
            (silo, &mut s, &mut sl, &mut silo_ok),
            (vgi, &mut v, &mut vl, &mut vgi_ok),
        ] {
            let Some(subject) = subject else { continue };
            match run(subject, f, size, threads, n, want_lat) {
                Ok((rate, lat)) => {
                    rates.push(rate);
                    l.extend(lat);
                }
                Err(e) => *ok = Err(e),
            }
        }
    }
    if let Some(lats) = lats {
        sl.sort();
        vl.sort();
        lats.push((f.name().to_string(), sl, vl));
    }
    let med = |x: Vec<f64>| (!x.is_empty()).then(|| median(x));
    Measured {
        silo: med(s),
        vgi: med(v),
        silo_ok,
        vgi_ok,
    }
}

/// Medians of a cell's runs and whether each side's runs checked out.
struct Measured {
    silo: Option<f64>,
    vgi: Option<f64>,
    silo_ok: Result<(), String>,
    vgi_ok: Result<(), String>,
}

// ------------------------------------------------------------------ processes

/// Worker mode: `silo-bench --worker ROLE IMPL PATH COUNT`; prints `ready`, waits for a line
/// on stdin, works, prints its results.
fn worker(args: &[String]) {
    let (role, imp, path, count) = (
        &args[0],
        &args[1],
        &args[2],
        args[3].parse::<usize>().expect("count"),
    );
    let sub: Box<dyn Subject> = if imp == "silo" {
        Box::new(Silo(
            silo::open(&format!("sqlite://{path}")).expect("open silo"),
        ))
    } else {
        Box::new(Vgi(Arc::new(vgi::storage::SqliteStorage::open(
            path.into(),
        ))))
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").expect("stdout");
    out.flush().expect("stdout");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).expect("stdin");
    match role.as_str() {
        "pop" => {
            while let Some(v) = sub.pop(b"mp") {
                let (t, i) = origin(&v);
                if v != value(t, i, 100) {
                    writeln!(out, "torn {t} {i}").expect("stdout");
                }
                writeln!(out, "{i}").expect("stdout");
            }
        }
        "append" => {
            let me: usize = std::process::id() as usize;
            for i in 0..count {
                let id = sub.append(b"mp", b"log", &value(me % 1000, i, 100));
                writeln!(out, "{id}").expect("stdout");
            }
        }
        other => panic!("unknown worker role {other}"),
    }
}

/// 4 processes popping one queue (or appending to one log) of a SQLite store: ops/s over the
/// time from "go" to the last exit, and a check that every item was seen exactly once.
fn processes(imp: &str, role: &str, total: usize) -> (f64, Result<(), String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mp.db").display().to_string();
    let sub: Box<dyn Subject> = if imp == "silo" {
        Box::new(Silo(
            silo::open(&format!("sqlite://{path}")).expect("open silo"),
        ))
    } else {
        Box::new(Vgi(Arc::new(vgi::storage::SqliteStorage::open(
            path.clone().into(),
        ))))
    };
    if role == "pop" {
        let items: Vec<_> = (0..total).map(|i| value(0, i, 100)).collect();
        items.chunks(BATCH).for_each(|c| sub.push(b"mp", c));
    }
    let exe = std::env::current_exe().expect("own path");
    let mut children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(&exe)
                .args(["--worker", role, imp, &path, &(total / 4).to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let mut readers: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().expect("stdout")))
        .collect();
    for r in &mut readers {
        let mut line = String::new();
        r.read_line(&mut line).expect("ready");
    }
    let start = Instant::now();
    for c in &mut children {
        writeln!(c.stdin.as_mut().expect("stdin"), "go").expect("go");
    }
    let outputs: Vec<Vec<String>> = readers
        .into_iter()
        .map(|r| r.lines().map_while(Result::ok).collect())
        .collect();
    for c in &mut children {
        c.wait().expect("worker exit");
    }
    let elapsed = start.elapsed();
    let lines: Vec<&String> = outputs.iter().flatten().collect();
    let verified = if lines.iter().any(|l| l.starts_with("torn")) {
        Err("a torn item".to_string())
    } else {
        let ids: HashSet<i64> = lines.iter().filter_map(|l| l.parse().ok()).collect();
        let logged = if role == "append" {
            sub.scan(b"mp", b"log", -1, u64::MAX).len()
        } else {
            total
        };
        check(
            ids.len() == total && lines.len() == total && logged == total,
            || {
                format!(
                    "{} distinct of {total} ({} lines, {logged} in the log)",
                    ids.len(),
                    lines.len()
                )
            },
        )
    };
    (total as f64 / elapsed.as_secs_f64(), verified)
}

// ------------------------------------------------------------------ the server's concurrency

/// `clients` threads, each with its own client, doing kv_put + kv_get pairs for `secs`.
fn concurrent_clients(
    make: &(dyn Fn() -> Box<dyn Subject> + Sync),
    clients: usize,
    secs: f64,
) -> (f64, Result<(), String>) {
    let deadline = Duration::from_secs_f64(secs);
    let (el, res) = timed(clients, |t| {
        let sub = make();
        let sc = b"clients".as_slice();
        let start = Instant::now();
        let mut ops = 0usize;
        let mut i = 0;
        while start.elapsed() < deadline {
            let v = value(t, i, 100);
            sub.kv_put(sc, &key(t, i), &v);
            if sub.kv_get(sc, &key(t, i)) != Some(v) {
                return Err(format!("client {t}: read {i} back wrong"));
            }
            ops += 2;
            i += 1;
        }
        Ok(ops)
    });
    match res.into_iter().collect::<Result<Vec<_>, _>>() {
        Ok(ops) => (ops.iter().sum::<usize>() as f64 / el.as_secs_f64(), Ok(())),
        Err(e) => (0.0, Err(e)),
    }
}

// ------------------------------------------------------------------ report

/// `ok`, or which side failed its checks.
fn verdict(silo: &Result<(), String>, vgi: &Result<(), String>) -> &'static str {
    match (silo.is_ok(), vgi.is_ok()) {
        (true, true) => "ok",
        (true, false) => "ok (vgi FAILED)",
        (false, true) => "silo FAILED",
        (false, false) => "both FAILED",
    }
}

fn fmt_rate(r: Option<f64>) -> String {
    match r {
        None => "—".into(),
        Some(r) if r >= 1e6 => format!("{:.2} M", r / 1e6),
        Some(r) if r >= 1e3 => format!("{:.1} k", r / 1e3),
        Some(r) => format!("{r:.0}"),
    }
}

fn ratio(c: &Cell) -> Option<f64> {
    Some(c.silo? / c.vgi?)
}

fn size_name(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn svg(cells: &[Cell]) -> String {
    let rows: Vec<(&Cell, f64)> = cells.iter().filter_map(|c| Some((c, ratio(c)?))).collect();
    let (bar_h, left, width) = (16.0, 330.0, 900.0);
    let height = 50.0 + rows.len() as f64 * bar_h;
    let max = rows
        .iter()
        .map(|r| r.1.log10())
        .fold(1.0f64, f64::max)
        .ceil();
    let min = rows
        .iter()
        .map(|r| r.1.log10())
        .fold(-1.0f64, f64::min)
        .floor();
    let x = |r: f64| left + (r.log10() - min) / (max - min) * (width - left - 20.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"10\" y=\"18\" font-size=\"14\">silo / vgi throughput ratio (log scale; right of the line = silo faster)</text>\n"
    );
    for p in (min as i32)..=(max as i32) {
        let r = 10f64.powi(p);
        let _ = writeln!(
            s,
            "<line x1=\"{0}\" y1=\"28\" x2=\"{0}\" y2=\"{1}\" stroke=\"{2}\"/><text x=\"{0}\" y=\"{3}\" text-anchor=\"middle\">{r}×</text>",
            x(r),
            height - 14.0,
            if p == 0 { "#000" } else { "#ccc" },
            height - 2.0
        );
    }
    for (i, (c, r)) in rows.iter().enumerate() {
        let y = 32.0 + i as f64 * bar_h;
        let (x0, x1) = (x(1.0).min(x(*r)), x(1.0).max(x(*r)));
        let color = if *r >= 1.0 { "#2b7" } else { "#d54" };
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} · {} · {} · {}t</text><rect x=\"{x0}\" y=\"{y}\" width=\"{}\" height=\"{}\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{r:.2}×</text>",
            left - 6.0,
            y + 11.0,
            c.group,
            c.family,
            size_name(c.size),
            c.threads,
            (x1 - x0).max(1.0),
            bar_h - 3.0,
            x1 + 4.0,
            y + 11.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores; {rustc}")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        return worker(&args[1..]);
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    let settings = Settings {
        reps: flag("--reps")
            .and_then(|r| r.parse().ok())
            .unwrap_or(if quick { 3 } else { 5 }),
        scale: if quick { 0.3 } else { 1.0 },
    };
    let out_path = flag("--out").unwrap_or_else(|| "BENCHMARKS.md".into());
    let svg_path = flag("--svg").unwrap_or_else(|| "benchmarks.svg".into());
    let only = flag("--only");
    let started = Instant::now();

    let dir = tempfile::tempdir().expect("temp dir");
    let silo_mem = Silo(silo::open("memory:").expect("memory"));
    let vgi_mem = Vgi(Arc::new(vgi::storage::MemoryStorage::new()));
    let silo_sql =
        Silo(silo::open(&format!("sqlite://{}/silo.db", dir.path().display())).expect("sqlite"));
    let vgi_sql = Vgi(Arc::new(vgi::storage::SqliteStorage::open(
        dir.path().join("vgi.db"),
    )));
    let vgi_fs = Vgi(Arc::new(vgi::storage::FsStorage::new()));
    let silo_server_store =
        silo::open(&format!("sqlite://{}/silo-server.db", dir.path().display())).expect("sqlite");
    let silo_srv = silo_compat::silo_server(silo_server_store);
    let vgi_srv = silo_compat::vgi_server(Arc::new(vgi::storage::SqliteStorage::open(
        dir.path().join("vgi-server.db"),
    )));
    let silo_url = silo_srv.url();
    let vgi_url = vgi_srv.url();
    let silo_http = Silo(silo::open(&silo_url).expect("http"));
    let vgi_http = Vgi(Arc::new(vgi::storage::HttpStorage::new(
        vgi_url.clone(),
        None,
    )));

    // (group, silo, vgi, ops for 100 B, ops for 64 KiB)
    let groups = [
        Group {
            name: "memory",
            silo: Some(&silo_mem),
            vgi: Some(&vgi_mem),
            n_small: 100_000,
            n_big: 2_000,
        },
        Group {
            name: "sqlite",
            silo: Some(&silo_sql),
            vgi: Some(&vgi_sql),
            n_small: 20_000,
            n_big: 1_000,
        },
        Group {
            name: "fs (vgi only)",
            silo: None,
            vgi: Some(&vgi_fs),
            n_small: 5_000,
            n_big: 500,
        },
        Group {
            name: "http",
            silo: Some(&silo_http),
            vgi: Some(&vgi_http),
            n_small: 5_000,
            n_big: 500,
        },
    ];
    let mut cells = Vec::new();
    let mut latencies = Vec::new();
    for g in &groups {
        let group = g.name;
        if only.as_deref().is_some_and(|o| !group.starts_with(o)) {
            continue;
        }
        for size in [100usize, 64 << 10] {
            for threads in [1usize, 2] {
                for f in Family::ALL {
                    let n = if size == 100 { g.n_small } else { g.n_big };
                    let n = if matches!(f, Family::PutMany | Family::PushMany) {
                        n.max(BATCH * threads) * 2
                    } else {
                        n
                    };
                    let lat =
                        (group == "http" && size == 100 && threads == 1).then_some(&mut latencies);
                    let m = measure(&settings, g, (f, size, threads, n), lat);
                    eprintln!(
                        "{group:>14} {:>24} {:>7} {threads}t  silo {:>9}  vgi {:>9}  {}",
                        f.name(),
                        size_name(size),
                        fmt_rate(m.silo),
                        fmt_rate(m.vgi),
                        verdict(&m.silo_ok, &m.vgi_ok)
                    );
                    cells.push(Cell {
                        group: group.to_string(),
                        family: f.name().into(),
                        size,
                        threads,
                        silo: m.silo,
                        vgi: m.vgi,
                        silo_ok: m.silo_ok,
                        vgi_ok: m.vgi_ok,
                    });
                }
            }
        }
    }

    let mut extra = Vec::new();
    if only.as_deref().is_none_or(|o| o == "processes") {
        for (role, name, total) in [
            ("pop", "4 processes popping one queue", 20_000),
            ("append", "4 processes appending to one log", 8_000),
        ] {
            let (mut s, mut v) = (Vec::new(), Vec::new());
            let (mut silo_ok, mut vgi_ok) = (Ok(()), Ok(()));
            for _ in 0..settings.reps {
                let (rate, ok) = processes("silo", role, total);
                s.push(rate);
                silo_ok = silo_ok.and(ok);
                let (rate, ok) = processes("vgi", role, total);
                v.push(rate);
                vgi_ok = vgi_ok.and(ok);
            }
            eprintln!(
                "{name}: silo {} vgi {}",
                fmt_rate(Some(median(s.clone()))),
                fmt_rate(Some(median(v.clone())))
            );
            extra.push(Cell {
                group: "sqlite".into(),
                family: name.into(),
                size: 100,
                threads: 4,
                silo: Some(median(s)),
                vgi: Some(median(v)),
                silo_ok,
                vgi_ok,
            });
        }
    }
    if only
        .as_deref()
        .is_none_or(|o| o == "http" || o == "clients")
    {
        for clients in [1usize, 32] {
            let secs = if quick { 1.0 } else { 2.0 };
            let (mut s, mut v) = (Vec::new(), Vec::new());
            let (mut silo_ok, mut vgi_ok) = (Ok(()), Ok(()));
            for _ in 0..settings.reps.min(3) {
                let su = silo_url.clone();
                let (rate, ok) = concurrent_clients(
                    &move || Box::new(Silo(silo::open(&su).expect("http"))) as Box<dyn Subject>,
                    clients,
                    secs,
                );
                s.push(rate);
                silo_ok = silo_ok.and(ok);
                let vu = vgi_url.clone();
                let (rate, ok) = concurrent_clients(
                    &move || {
                        Box::new(Vgi(Arc::new(vgi::storage::HttpStorage::new(
                            vu.clone(),
                            None,
                        )))) as Box<dyn Subject>
                    },
                    clients,
                    secs,
                );
                v.push(rate);
                vgi_ok = vgi_ok.and(ok);
            }
            let name = format!("{clients} concurrent clients, kv_put+kv_get");
            eprintln!(
                "{name}: silo {} vgi {}",
                fmt_rate(Some(median(s.clone()))),
                fmt_rate(Some(median(v.clone())))
            );
            extra.push(Cell {
                group: "http".into(),
                family: name,
                size: 100,
                threads: clients,
                silo: Some(median(s)),
                vgi: Some(median(v)),
                silo_ok,
                vgi_ok,
            });
        }
    }
    cells.extend(extra);

    // ---- the report
    let all_ok = cells.iter().all(|c| c.silo_ok.is_ok());
    let vgi_failures: Vec<String> = cells
        .iter()
        .filter_map(|c| {
            let e = c.vgi_ok.as_ref().err()?;
            Some(format!(
                "{} {} {} {}t: {e}",
                c.group,
                c.family,
                size_name(c.size),
                c.threads
            ))
        })
        .collect();
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `silo-bench` (compat/src/bin/silo-bench.rs); do not edit by hand. Regenerate with:\n"
    );
    let _ = writeln!(
        md,
        "```bash\ncargo run --release --manifest-path compat/Cargo.toml --bin silo-bench{}\n```\n",
        if args.is_empty() {
            String::new()
        } else {
            format!(" -- {}", args.join(" "))
        }
    );
    let _ = writeln!(md, "- Machine: {}", machine());
    let _ = writeln!(
        md,
        "- silo {} vs vgi 0.22.0 (crates.io), same process, same run, subjects alternated every repetition",
        silo::VERSION
    );
    let _ = writeln!(
        md,
        "- Each cell: median of {} runs, operations (or entries/items where named) per second; ratio = silo / vgi",
        settings.reps
    );
    let _ = writeln!(
        md,
        "- Every run checked its result (nothing lost, nothing duplicated, values intact): silo **{}**; vgi **{}**",
        if all_ok {
            "all verified"
        } else {
            "SOME RUNS FAILED VERIFICATION"
        },
        if vgi_failures.is_empty() {
            "all verified".to_string()
        } else {
            format!("{} cells failed (below)", vgi_failures.len())
        }
    );
    let _ = writeln!(md, "- Run took {:.0} s\n", started.elapsed().as_secs_f64());
    let _ = writeln!(md, "![silo / vgi ratios]({svg_path})\n");
    let _ = writeln!(
        md,
        "| store | operation | value | threads | silo | vgi | silo / vgi | verified |"
    );
    let _ = writeln!(md, "|---|---|---|---|---:|---:|---:|---|");
    for c in &cells {
        let r = ratio(c).map_or("—".into(), |r| format!("**{r:.2}×**"));
        let ok = verdict(&c.silo_ok, &c.vgi_ok);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {r} | {ok} |",
            c.group,
            c.family,
            size_name(c.size),
            c.threads,
            fmt_rate(c.silo),
            fmt_rate(c.vgi)
        );
    }
    if !latencies.is_empty() {
        let _ = writeln!(
            md,
            "\n## Server latency, one client over loopback (100 B)\n"
        );
        let _ = writeln!(
            md,
            "| operation | silo p50 | silo p99 | vgi p50 | vgi p99 |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for (name, s, v) in &latencies {
            let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} |",
                us(percentile(s, 0.5)),
                us(percentile(s, 0.99)),
                us(percentile(v, 0.5)),
                us(percentile(v, 0.99))
            );
        }
    }
    if !vgi_failures.is_empty() {
        let _ = writeln!(
            md,
            "\n## Runs where vgi lost, duplicated or reordered data\n"
        );
        for f in &vgi_failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    let _ = writeln!(
        md,
        "\nThe vgi side of `http` is a server built from the vgi crate's public `apply_op` and `WIRE`, behaving as `vgi-storage-server` does (store calls on the async reactor, in-memory idempotency map) over vgi's `SqliteStorage`; silo's is `silo serve`'s router over silo's SQLite store. vgi has no batch `put_many`: its cell is the same 1,000 items written with `kv_put`, as a vgi user would."
    );
    std::fs::write(&out_path, md).expect("write the report");
    std::fs::write(&svg_path, svg(&cells)).expect("write the chart");
    eprintln!(
        "wrote {out_path} and {svg_path}; verification: {}",
        if all_ok {
            "all runs verified"
        } else {
            "FAILURES"
        }
    );
    if !all_ok {
        std::process::exit(1);
    }
}
