//! The postgres section (`--only postgres`): silo's `postgres://` backend on a throwaway
//! cluster with PostgreSQL's default durability (fsync and synchronous commit on), beside a
//! baseline that issues the same SQL statements (`silo::postgres::statements`) directly with
//! the `postgres` client crate, prepared once, on one connection — so the table shows what
//! silo's own layers (pool, validation, retries) cost. Then batches, 1 vs 4 processes claiming
//! from one queue, and the same single operations through `silo serve` on that database.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use postgres::{Client, NoTls, Statement};
use silo::conformance::postgres::{Cluster, Setup, private_cluster};
use silo::postgres::statements;

use super::server::{OPS, one_client, vgi_client};
use super::{Silo, Subject, fmt_rate, key, median, processes_at, value};

/// The raw baseline: silo's statements, prepared once, on one connection of its own.
struct RawSql {
    conn: Mutex<(Client, Prepared)>,
    /// `clear` is not timed: silo's does it.
    silo: Arc<dyn silo::FunctionStorage>,
}

struct Prepared {
    get: Statement,
    put: Statement,
    put_many: Statement,
    append: Statement,
    scan: Statement,
    push: Statement,
    pop: Statement,
}

impl RawSql {
    fn connect(cluster: &Cluster, schema: &str, silo: Arc<dyn silo::FunctionStorage>) -> Self {
        let mut client = postgres::Config::new()
            .host_path(cluster.dir())
            .port(cluster.port())
            .user("postgres")
            .dbname("postgres")
            .connect(NoTls)
            .expect("raw connection");
        client
            .batch_execute(&format!("SET search_path TO {schema}"))
            .expect("search_path");
        let mut prepare = |sql: &str| client.prepare(sql).expect("prepare");
        let prepared = Prepared {
            get: prepare(statements::STATE_GET),
            put: prepare(statements::STATE_PUT),
            put_many: prepare(statements::STATE_PUT_MANY),
            append: prepare(statements::APPEND),
            scan: prepare(statements::SCAN),
            push: prepare(statements::QUEUE_PUSH),
            pop: prepare(statements::QUEUE_POP),
        };
        RawSql {
            conn: Mutex::new((client, prepared)),
            silo,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Client, &Prepared) -> T) -> T {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let (client, prepared) = &mut *guard;
        f(client, prepared)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Subject for RawSql {
    fn kv_put(&self, s: &[u8], k: &[u8], v: &[u8]) {
        self.with(|c, p| c.execute(&p.put, &[&s, &&b""[..], &k, &v, &now_ms()]))
            .expect("raw put");
    }
    fn kv_get(&self, s: &[u8], k: &[u8]) -> Option<Vec<u8>> {
        self.with(|c, p| c.query_opt(&p.get, &[&s, &&b""[..], &k]))
            .expect("raw get")
            .map(|row| row.get(0))
    }
    fn append(&self, s: &[u8], k: &[u8], v: &[u8]) -> i64 {
        // Any 64-bit key serves as the log's lock here: one log per run.
        let lock = i64::from_le_bytes(*b"rawbench");
        self.with(|c, p| c.query_one(&p.append, &[&s, &&b"bench"[..], &k, &v, &now_ms(), &lock]))
            .expect("raw append")
            .get(0)
    }
    fn scan(&self, s: &[u8], k: &[u8], after: i64, limit: u64) -> Vec<(i64, Vec<u8>)> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(|c, p| c.query(&p.scan, &[&s, &&b"bench"[..], &k, &after, &limit]))
            .expect("raw scan")
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }
    fn push(&self, s: &[u8], items: &[Vec<u8>]) {
        self.with(|c, p| c.execute(&p.push, &[&s, &items, &now_ms()]))
            .expect("raw push");
    }
    fn pop(&self, s: &[u8]) -> Option<Vec<u8>> {
        let max_attempts = 1_000_000i32;
        self.with(|c, p| c.query_opt(&p.pop, &[&s, &now_ms(), &max_attempts]))
            .expect("raw pop")
            .map(|row| row.get(0))
    }
    fn put_many(&self, s: &[u8], items: &[(Vec<u8>, Vec<u8>)]) {
        let keys: Vec<&[u8]> = items.iter().map(|(k, _)| k.as_slice()).collect();
        let values: Vec<&[u8]> = items.iter().map(|(_, v)| v.as_slice()).collect();
        self.with(|c, p| c.execute(&p.put_many, &[&s, &&b""[..], &keys, &values, &now_ms()]))
            .expect("raw put_many");
    }
    fn clear(&self, s: &[u8]) {
        self.silo.clear(s).expect("clear");
    }
}

/// Items per second of `batches` batches of 1,000 100-byte items (`put_many` or `push`), and a
/// check that every item arrived.
fn batch_run(sub: &dyn Subject, op: &str, batches: usize, run: usize) -> Result<f64, String> {
    let scope = format!("pg-batch-{op}-{run}").into_bytes();
    let per = super::BATCH;
    let start = Instant::now();
    for b in 0..batches {
        match op {
            "put_many" => {
                let items: Vec<(Vec<u8>, Vec<u8>)> =
                    (0..per).map(|i| (key(b, i), value(b, i, 100))).collect();
                sub.put_many(&scope, &items);
            }
            _ => {
                let items: Vec<Vec<u8>> = (0..per).map(|i| value(b, i, 100)).collect();
                sub.push(&scope, &items);
            }
        }
    }
    let rate = (batches * per) as f64 / start.elapsed().as_secs_f64();
    // Checked outside the clock: a sample of keys, or every item popped in order.
    let verified = match op {
        "put_many" => (0..batches).all(|b| {
            [0, per / 2, per - 1]
                .iter()
                .all(|&i| sub.kv_get(&scope, &key(b, i)) == Some(value(b, i, 100)))
        }),
        _ => (0..batches).all(|b| (0..per).all(|i| sub.pop(&scope) == Some(value(b, i, 100)))),
    };
    sub.clear(&scope);
    if verified {
        Ok(rate)
    } else {
        Err(format!("{op}: items missing or wrong"))
    }
}

fn us(rate: Option<f64>) -> String {
    rate.map_or("—".into(), |r| format!("{:.0} µs", 1e6 / r))
}

/// The section's markdown and its verification failures.
pub fn section(reps: usize, quick: bool) -> (String, Vec<String>) {
    let mut md = String::new();
    let mut failures = Vec::new();
    let _ = writeln!(md, "\n## postgres:// (issue 10)\n");
    let Some(cluster) = private_cluster(Setup {
        durable: true,
        ..Setup::default()
    }) else {
        let _ = writeln!(
            md,
            "Not measured: no PostgreSQL binaries on this machine (apt-get install postgresql)."
        );
        return (md, failures);
    };
    let version = cluster
        .psql("SHOW server_version")
        .unwrap_or_else(|e| e.trim().to_string());
    let url = cluster.url("bench", "");
    let store = silo::open(&url).expect("open the postgres store");
    let silo_sub = Silo(Arc::clone(&store));
    let raw = RawSql::connect(&cluster, "bench", Arc::clone(&store));
    let med = |xs: &Vec<f64>| (!xs.is_empty()).then(|| median(xs.clone()));

    // ---- single operations: silo vs the same statements raw
    let n = if quick { 1_000 } else { 3_000 };
    let mut rates = vec![[Vec::new(), Vec::new()]; OPS.len()];
    for rep in 0..reps {
        for (o, op) in OPS.iter().enumerate() {
            let subjects: [(&str, &dyn Subject); 2] = [("silo", &silo_sub), ("raw SQL", &raw)];
            for (s, (name, sub)) in subjects.into_iter().enumerate() {
                match one_client(sub, op, n, rep * 2 + s) {
                    Ok(r) => rates[o][s].push(r),
                    Err(e) => failures.push(format!("postgres {name} {op}: {e}")),
                }
            }
        }
    }
    let _ = writeln!(
        md,
        "PostgreSQL {version} on this machine (a throwaway cluster on a unix socket, default \
         durability: `fsync` and `synchronous_commit` on), 100 B values, one thread, {n} \
         operations a run, median of {reps}. *Raw SQL* is the same statement silo sends \
         (`silo::postgres::statements`), prepared once, on one connection of the `postgres` \
         crate: the ratio is what silo's own layers cost (target ≤ 1.25×).\n"
    );
    let _ = writeln!(md, "| operation | silo | raw SQL | silo latency / raw |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for (o, op) in OPS.iter().enumerate() {
        let (s, r) = (med(&rates[o][0]), med(&rates[o][1]));
        let ratio = match (s, r) {
            (Some(s), Some(r)) if s > 0.0 => format!("**{:.2}×**", r / s),
            _ => "—".into(),
        };
        let _ = writeln!(md, "| {op} | {} | {} | {ratio} |", us(s), us(r));
        eprintln!("postgres {op}: silo {} raw {} ({ratio})", us(s), us(r));
    }

    // ---- batches
    let batches = if quick { 30 } else { 100 };
    let _ = writeln!(
        md,
        "\n### Batches of 1,000 items (100 B): items/s, {batches} batches a run, median of {reps} \
         (target ≥ 100k items/s)\n"
    );
    let _ = writeln!(md, "| operation | silo | raw SQL |");
    let _ = writeln!(md, "|---|---:|---:|");
    for op in ["put_many", "push"] {
        let mut r = [Vec::new(), Vec::new()];
        for rep in 0..reps {
            let subjects: [(&str, &dyn Subject); 2] = [("silo", &silo_sub), ("raw SQL", &raw)];
            for (s, (name, sub)) in subjects.into_iter().enumerate() {
                match batch_run(sub, op, batches, rep * 2 + s) {
                    Ok(x) => r[s].push(x),
                    Err(e) => failures.push(format!("postgres {name} batch {op}: {e}")),
                }
            }
        }
        let (s, raw_rate) = (med(&r[0]), med(&r[1]));
        let _ = writeln!(
            md,
            "| {op} ×1000 | {} | {} |",
            fmt_rate(s),
            fmt_rate(raw_rate)
        );
        eprintln!(
            "postgres batch {op}: silo {} raw {}",
            fmt_rate(s),
            fmt_rate(raw_rate)
        );
    }

    // ---- processes claiming from one queue
    let total = if quick { 4_000 } else { 12_000 };
    let _ = writeln!(
        md,
        "\n### Processes taking from one queue ({total} items of 100 B; each process its own \
         pool): items/s, median of {reps} (target: 4 processes claiming ≥ 2.5× one)\n"
    );
    let _ = writeln!(md, "| role | 1 process | 4 processes | scaling |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for role in ["claim", "pop"] {
        let mut r = [Vec::new(), Vec::new()];
        for _ in 0..reps {
            for (w, workers) in [1, 4].into_iter().enumerate() {
                let target = cluster.fresh_url("");
                let (rate, ok) = processes_at("silo", &target, role, total, workers);
                match ok {
                    Ok(()) => r[w].push(rate),
                    Err(e) => failures.push(format!("postgres {workers} × {role}: {e}")),
                }
            }
        }
        let (one, four) = (med(&r[0]), med(&r[1]));
        let scaling = match (one, four) {
            (Some(a), Some(b)) if a > 0.0 => format!("**{:.2}×**", b / a),
            _ => "—".into(),
        };
        let what = if role == "claim" {
            "claim + ack"
        } else {
            "pop"
        };
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {scaling} |",
            fmt_rate(one),
            fmt_rate(four)
        );
        eprintln!(
            "postgres processes {role}: 1 {} 4 {} ({scaling})",
            fmt_rate(one),
            fmt_rate(four)
        );
    }

    // ---- through silo serve
    let server = silo_compat::silo_server(Arc::clone(&store));
    let server_url = server.url();
    let mut served = vec![Vec::new(); OPS.len()];
    for rep in 0..reps {
        for (o, op) in OPS.iter().enumerate() {
            match one_client(&vgi_client(&server_url), op, n, 100 + rep) {
                Ok(r) => served[o].push(r),
                Err(e) => failures.push(format!("silo serve on postgres {op}: {e}")),
            }
        }
    }
    let _ = writeln!(
        md,
        "\n### Through `silo serve --store postgres://…`, the incumbent's client, one thread \
         ({n} operations, median of {reps})\n"
    );
    let _ = writeln!(md, "| operation | ops/s | latency | library call (above) |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for (o, op) in OPS.iter().enumerate() {
        let r = med(&served[o]);
        let _ = writeln!(
            md,
            "| {op} | {} | {} | {} |",
            fmt_rate(r),
            us(r),
            us(med(&rates[o][0]))
        );
        eprintln!("postgres served {op}: {} ({})", fmt_rate(r), us(r));
    }
    drop(server);
    (md, failures)
}

/// `--only postgres-vacuum` (not part of a full run: it takes minutes): `pairs` pushes and pops
/// through one queue scope, as a work queue sees all day, 1,000 pushed per statement and popped
/// one at a time by 4 threads; the queue table's size (heap + indexes + TOAST) every tenth of
/// the way, to show that autovacuum keeps it bounded.
pub fn vacuum_section(pairs: usize) -> (String, Vec<String>) {
    let mut md = String::new();
    let mut failures = Vec::new();
    let _ = writeln!(
        md,
        "\n## postgres:// queue table size under push/pop churn\n"
    );
    let Some(cluster) = private_cluster(Setup {
        durable: true,
        ..Setup::default()
    }) else {
        let _ = writeln!(md, "Not measured: no PostgreSQL binaries on this machine.");
        return (md, failures);
    };
    let store = silo::open(&cluster.url("churn", "pool_size=4")).expect("open");
    let size = || -> (u64, u64) {
        let out = cluster
            .psql(
                "SELECT pg_total_relation_size('churn.queue'), \
                 (SELECT n_dead_tup FROM pg_stat_user_tables \
                  WHERE schemaname = 'churn' AND relname = 'queue')",
            )
            .unwrap_or_default();
        let mut parts = out.split('|').map(|p| p.trim().parse::<u64>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    };
    let _ = writeln!(
        md,
        "{pairs} push/pop pairs of 100 B on one scope (pushed 1,000 per statement, popped one at \
         a time by 4 threads), default autovacuum settings of the cluster, the queue table's \
         own autovacuum scale factors (0.01); size = `pg_total_relation_size` (heap, indexes, \
         TOAST).\n"
    );
    let _ = writeln!(
        md,
        "| pairs done | queue table size | dead tuples | elapsed |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|");
    let start = Instant::now();
    let step = (pairs / 10).max(super::BATCH);
    let mut done = 0;
    while done < pairs {
        let this = step.min(pairs - done);
        for b in (0..this).step_by(super::BATCH) {
            let items: Vec<Vec<u8>> = (b..(b + super::BATCH).min(this))
                .map(|i| value(0, done + i, 100))
                .collect();
            store.queue_push(b"churn", &items).expect("push");
            let popped = std::thread::scope(|s| {
                let workers: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            let mut n = 0;
                            while store.queue_pop(b"churn").expect("pop").is_some() {
                                n += 1;
                            }
                            n
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap_or(0))
                    .sum::<usize>()
            });
            if popped != items.len() {
                failures.push(format!("churn: pushed {} popped {popped}", items.len()));
            }
        }
        done += this;
        let (bytes, dead) = size();
        let _ = writeln!(
            md,
            "| {done} | {:.1} MiB | {dead} | {:.0} s |",
            bytes as f64 / (1 << 20) as f64,
            start.elapsed().as_secs_f64()
        );
        eprintln!(
            "churn {done}: {:.1} MiB, {dead} dead, {:.0} s",
            bytes as f64 / (1 << 20) as f64,
            start.elapsed().as_secs_f64()
        );
    }
    (md, failures)
}
