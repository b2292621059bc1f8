//! silo-bench: one workload against silo's backends and the `vgi` crate's, back to back in one
//! process on one machine, verified as it goes, summarised as one table (medians of
//! repeated runs, and the ratio silo / vgi per cell), written to BENCHMARKS.md with an SVG
//! chart of the ratios.
//!
//! `cargo run --release --manifest-path compat/Cargo.toml --bin silo-bench -- [--quick]
//!  [--reps N] [--only PART] [--out BENCHMARKS.md] [--svg benchmarks.svg]`
//!
//! A whole run writes BENCHMARKS.md and benchmarks.svg; `--only` prints its part's report
//! on stdout unless `--out` names a file.
//!
//! `--only` runs one part: `memory`, `sqlite`, `http`, `vgi-fs` (the incumbent's own fs
//! backend, no silo side), `processes` (both backends), `clients`, or `fs` — everything about
//! silo's `fs:` backend: the "fs vs vgi sqlite" group, its processes rows, the 1k-vs-20k-entries
//! section and the `sync=full` section (those two alone: `scale`, `sync`); `server` — `silo
//! serve` against the incumbent's server through the incumbent's client, concurrent clients,
//! silo's batch API and a Redis reference (`server.rs`); `postgres` — silo's `postgres://`
//! backend against the same SQL issued raw, batches, processes, and `silo serve` on it (`pg.rs`);
//! `postgres-vacuum` (only by name; `--pairs N`, default 1 M) — the queue table's size under
//! push/pop churn; `python` — vgi-python's remote client against `silo serve`'s `/python`
//! beside vgi-python's local SQLite, driven from Python (`python.rs`, `python/bench_storage.py`);
//! `replication` — an `fs:` store's writes with and without `silo-replicate` shipping, restore
//! throughput and the shipped lag (RPO) under a paced load (`replication.rs`); `arrow` — Arrow
//! batches through `silo-arrow`'s buffering lifecycle against vgi storage (`arrow.rs`).

mod arrow;
mod pg;
mod python;
mod replication;
mod server;

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

/// The group of silo's `fs:` backend; its vgi column is the incumbent's SQLite store, which
/// issue 8's targets are ratios against.
const FS_GROUP: &str = "fs vs vgi sqlite";

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
    /// What `--only` selects it by.
    key: &'a str,
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

/// Worker mode: `silo-bench --worker ROLE IMPL TARGET COUNT`, IMPL `silo` (TARGET a store
/// URL) or `vgi` (TARGET the file of a vgi SQLite store); prints `ready`, waits for a line on
/// stdin, works, prints its results.
/// What `--only` takes.
const PARTS: [&str; 15] = [
    "memory",
    "sqlite",
    "http",
    "vgi-fs",
    "processes",
    "clients",
    "fs",
    "scale",
    "sync",
    "server",
    "postgres",
    "postgres-vacuum",
    "python",
    "replication",
    "arrow",
];

/// `Some(None)` for `--help`, `Some(Some(why))` for arguments it does not take; `None` to run.
/// A full run writes BENCHMARKS.md: a mistyped flag must not start one.
fn check_args(args: &[String]) -> Option<Option<String>> {
    const VALUED: [&str; 5] = ["--reps", "--only", "--out", "--svg", "--pairs"];
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--help" | "-h" => return Some(None),
            "--quick" => i += 1,
            flag if VALUED.contains(&flag) => {
                let Some(value) = args.get(i + 1) else {
                    return Some(Some(format!("{flag} needs a value")));
                };
                if flag == "--only" && !PARTS.contains(&value.as_str()) {
                    return Some(Some(format!("no part {value:?} to run")));
                }
                i += 2;
            }
            other => return Some(Some(format!("unknown argument {other:?}"))),
        }
    }
    None
}

fn worker(args: &[String]) {
    let (role, imp, target, count) = (
        &args[0],
        &args[1],
        &args[2],
        args[3].parse::<usize>().expect("count"),
    );
    let sub = open_subject(imp, target);
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
        "claim" => {
            // Claims and acks through silo's own API (the Subject has no leases).
            let store = silo::open(target).expect("open silo");
            while let Some(claim) = store
                .queue_claim(b"mp", Duration::from_secs(60))
                .expect("claim")
            {
                let (t, i) = origin(&claim.value);
                if claim.value != value(t, i, 100) {
                    writeln!(out, "torn {t} {i}").expect("stdout");
                }
                store.queue_ack(b"mp", claim.id).expect("ack");
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

/// A handle on a processes run's store: silo at the store URL `target`, or the incumbent's
/// SQLite store in the file `target`.
fn open_subject(imp: &str, target: &str) -> Box<dyn Subject> {
    if imp == "silo" {
        Box::new(Silo(silo::open(target).expect("open silo")))
    } else {
        Box::new(Vgi(Arc::new(vgi::storage::SqliteStorage::open(
            target.into(),
        ))))
    }
}

/// 4 processes popping one queue (or appending to one log) of a fresh store — silo's
/// `backend` (`sqlite` or `fs`), or vgi's SQLite: ops/s over the time from "go" to the last
/// exit, and a check that every item was seen exactly once.
fn processes(imp: &str, backend: &str, role: &str, total: usize) -> (f64, Result<(), String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = match (imp, backend) {
        ("silo", "fs") => format!("fs://{}", dir.path().join("mp-fs").display()),
        ("silo", _) => format!("sqlite://{}", dir.path().join("mp.db").display()),
        _ => dir.path().join("mp.db").display().to_string(),
    };
    processes_at(imp, &target, role, total, 4)
}

/// [`processes`] on the store at `target` (fresh: scope `mp` unused) with `workers` processes;
/// roles `pop`, `claim` (claim + ack, silo only) and `append`.
fn processes_at(
    imp: &str,
    target: &str,
    role: &str,
    total: usize,
    workers: usize,
) -> (f64, Result<(), String>) {
    let sub = open_subject(imp, target);
    if role == "pop" || role == "claim" {
        let items: Vec<_> = (0..total).map(|i| value(0, i, 100)).collect();
        items.chunks(BATCH).for_each(|c| sub.push(b"mp", c));
    }
    let exe = std::env::current_exe().expect("own path");
    let mut children: Vec<_> = (0..workers)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--worker",
                    role,
                    imp,
                    target,
                    &(total / workers).to_string(),
                ])
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

// ------------------------------------------------------------------ fs at 1k vs 20k entries

/// How many entries the store holds in the two columns of the scale section.
const SCALE_STORED: [usize; 2] = [1_000, 20_000];
const SCALE_FAMILIES: [Family; 4] = [Family::KvPut, Family::KvGet, Family::Append, Family::Pop];

/// Operations per timed window of the scale section: more where they leave the size alone.
fn scale_ops(f: Family) -> usize {
    match f {
        Family::KvGet => 5_000,
        Family::KvPut => 2_000,
        _ => 1_000,
    }
}

/// One operation's rates on a store holding 1k and 20k entries, for silo fs and vgi sqlite.
struct ScaleRow {
    family: Family,
    silo: [Option<f64>; 2],
    vgi: [Option<f64>; 2],
    silo_ok: Result<(), String>,
    vgi_ok: Result<(), String>,
}

impl ScaleRow {
    /// Per-op cost at 20k entries over the cost at 1k (1.0 = no slower).
    fn cost(rates: [Option<f64>; 2]) -> Option<f64> {
        Some(rates[0]? / rates[1]?)
    }
}

/// Runs each of [`SCALE_FAMILIES`] on a fresh silo fs store and a fresh vgi SQLite store per
/// size, the four alternated every repetition so that drift hits both sizes alike.
fn scale_section(reps: usize, dir: &std::path::Path) -> Vec<ScaleRow> {
    let mut subjects: Vec<(Box<dyn Subject>, usize)> = Vec::new();
    for stored in SCALE_STORED {
        let url = format!(
            "fs://{}",
            dir.join(format!("scale-silo-{stored}")).display()
        );
        subjects.push((Box::new(Silo(silo::open(&url).expect("fs"))), stored));
        let path = dir.join(format!("scale-vgi-{stored}.db"));
        subjects.push((
            Box::new(Vgi(Arc::new(vgi::storage::SqliteStorage::open(path)))),
            stored,
        ));
    }
    let mut rows = Vec::new();
    for f in SCALE_FAMILIES {
        // (subject, its prefilled kv scope, rates, verified), in the order of `subjects`:
        // silo and vgi at each size.
        let mut sides: Vec<_> = subjects
            .iter()
            .map(|(sub, stored)| {
                let kv = ScaleKv::prepare(&**sub, f, *stored);
                (&**sub, *stored, kv, Vec::new(), Ok(()))
            })
            .collect();
        for rep in 0..reps {
            for (sub, stored, kv, rates, ok) in &mut sides {
                let outcome = match kv {
                    Some(kv) => kv.window(*sub, rep),
                    None => scale_fresh(*sub, f, *stored),
                };
                match outcome {
                    Ok(rate) => rates.push(rate),
                    Err(e) => *ok = Err(e),
                }
            }
        }
        let mut row = ScaleRow {
            family: f,
            silo: [None; 2],
            vgi: [None; 2],
            silo_ok: Ok(()),
            vgi_ok: Ok(()),
        };
        for (i, (sub, _, kv, rates, mut ok)) in sides.into_iter().enumerate() {
            if let Some(kv) = kv
                && let Err(e) = kv.finish(sub)
            {
                ok = Err(e);
            }
            let rate = (!rates.is_empty()).then(|| median(rates));
            let (slot, is_silo) = (i / 2, i % 2 == 0);
            let (rates, side_ok) = if is_silo {
                (&mut row.silo, &mut row.silo_ok)
            } else {
                (&mut row.vgi, &mut row.vgi_ok)
            };
            rates[slot] = rate;
            if side_ok.is_ok() {
                *side_ok = ok;
            }
        }
        for (slot, stored) in SCALE_STORED.into_iter().enumerate() {
            eprintln!(
                "{:>14} {:>24} {stored:>6} stored  silo {:>9}  vgi {:>9}  {}",
                "fs scale",
                f.name(),
                fmt_rate(row.silo[slot]),
                fmt_rate(row.vgi[slot]),
                verdict(&row.silo_ok, &row.vgi_ok)
            );
        }
        rows.push(row);
    }
    rows
}

const SCALE_SIZE: usize = 100;

/// kv_put and kv_get leave the number of entries alone, so one scope prefilled with `stored`
/// entries serves every repetition: kv_put overwrites keys spread over it, kv_get reads them.
struct ScaleKv {
    family: Family,
    scope: Vec<u8>,
    stored: usize,
    /// Which write each key last had (0 = the prefill), to check at the end.
    last: Vec<usize>,
}

impl ScaleKv {
    /// The prefilled scope for the kv families; `None` for the others.
    fn prepare(sub: &dyn Subject, family: Family, stored: usize) -> Option<Self> {
        if !matches!(family, Family::KvPut | Family::KvGet) {
            return None;
        }
        let scope = fresh_scope(family);
        let items: Vec<_> = (0..stored)
            .map(|i| (key(0, i), value(0, i, SCALE_SIZE)))
            .collect();
        items.chunks(BATCH).for_each(|c| sub.put_many(&scope, c));
        Some(ScaleKv {
            family,
            scope,
            stored,
            last: vec![0; stored],
        })
    }

    /// The `k`th key of a window: 7919 is prime, so `stored` consecutive ones are distinct.
    fn at(&self, k: usize) -> usize {
        k * 7919 % self.stored
    }

    /// One timed window of repetition `rep`.
    fn window(&mut self, sub: &dyn Subject, rep: usize) -> Result<f64, String> {
        let (sc, m) = (self.scope.as_slice(), scale_ops(self.family));
        let start = Instant::now();
        if self.family == Family::KvPut {
            for i in rep * m..(rep + 1) * m {
                let k = self.at(i);
                sub.kv_put(sc, &key(0, k), &value(rep + 1, k, SCALE_SIZE));
            }
        } else {
            for i in rep * m..(rep + 1) * m {
                let k = self.at(i);
                check(
                    sub.kv_get(sc, &key(0, k)) == Some(value(0, k, SCALE_SIZE)),
                    || format!("kv_get {k} of {} returned the wrong value", self.stored),
                )?;
            }
        }
        let el = start.elapsed();
        if self.family == Family::KvPut {
            for i in rep * m..(rep + 1) * m {
                let k = self.at(i);
                self.last[k] = rep + 1;
            }
        }
        Ok(m as f64 / el.as_secs_f64())
    }

    /// Checks every entry holds its last write, then drops the scope.
    fn finish(self, sub: &dyn Subject) -> Result<(), String> {
        let sc = self.scope.as_slice();
        let verified = (0..self.stored).try_for_each(|k| {
            check(
                sub.kv_get(sc, &key(0, k)) == Some(value(self.last[k], k, SCALE_SIZE)),
                || format!("kv {k} of {} lost or stale", self.stored),
            )
        });
        sub.clear(sc);
        verified
    }
}

/// One timed window of append or queue_pop in a fresh scope holding `stored` entries: append
/// adds to a log of `stored` entries, queue_pop takes from a queue of `stored` items plus the
/// ones it pops. Checked, then the scope dropped.
fn scale_fresh(sub: &dyn Subject, f: Family, stored: usize) -> Result<f64, String> {
    let scope = fresh_scope(f);
    let outcome = scale_fresh_in(sub, &scope, f, stored);
    sub.clear(&scope);
    outcome
}

fn scale_fresh_in(sub: &dyn Subject, sc: &[u8], f: Family, stored: usize) -> Result<f64, String> {
    let m = scale_ops(f);
    let el = match f {
        Family::Append => {
            for i in 0..stored {
                sub.append(sc, b"log", &value(0, i, SCALE_SIZE));
            }
            let start = Instant::now();
            let ids: Vec<i64> = (0..m)
                .map(|i| sub.append(sc, b"log", &value(1, i, SCALE_SIZE)))
                .collect();
            let el = start.elapsed();
            let log = sub.scan(sc, b"log", -1, u64::MAX);
            check(log.len() == stored + m, || {
                format!("scan found {} of {}", log.len(), stored + m)
            })?;
            check(
                log[stored..].iter().map(|e| e.0).eq(ids.iter().copied()),
                || "the appended ids are not the log's last entries, in order".into(),
            )?;
            for (n, (_, v)) in log.iter().enumerate() {
                let want = if n < stored {
                    value(0, n, SCALE_SIZE)
                } else {
                    value(1, n - stored, SCALE_SIZE)
                };
                check(*v == want, || format!("log entry {n} torn or out of place"))?;
            }
            el
        }
        Family::Pop => {
            let items: Vec<_> = (0..stored + m).map(|i| value(0, i, SCALE_SIZE)).collect();
            items.chunks(BATCH).for_each(|c| sub.push(sc, c));
            let start = Instant::now();
            let got: Vec<Option<Vec<u8>>> = (0..m).map(|_| sub.pop(sc)).collect();
            let el = start.elapsed();
            for (i, g) in got.iter().enumerate() {
                check(*g == Some(value(0, i, SCALE_SIZE)), || {
                    format!("pop {i} of {stored} returned the wrong item")
                })?;
            }
            check(sub.pop(sc) == Some(value(0, m, SCALE_SIZE)), || {
                "the queue lost the item after the popped ones".into()
            })?;
            el
        }
        other => return Err(format!("{other:?} is not a fresh-scope scale family")),
    };
    Ok(m as f64 / el.as_secs_f64())
}

// ------------------------------------------------------------------ sync=full

/// One row of the `sync=full` section.
struct SyncRow {
    name: &'static str,
    writers: usize,
    /// The incumbent's row (its failures are reported, not fatal).
    vgi: bool,
    rate: Option<f64>,
    /// The median over rounds of its rate over the floor's in the same round.
    over_floor: Option<f64>,
    ok: Result<(), String>,
}

/// The floor, silo fs `sync=full` with 1 and 8 writers (separate handles, and one shared), and
/// vgi's SQLite at its default durability: kv_put of 100 B for `secs` each, every row once a
/// round — short rounds, many of them, as fsync times drift a lot on a shared disk.
fn sync_section(rounds: usize, secs: f64, dir: &std::path::Path) -> Vec<SyncRow> {
    const WRITERS: usize = 8;
    let url = format!("fs://{}?sync=full", dir.join("sync-fs").display());
    let open = || -> Box<dyn Subject> { Box::new(Silo(silo::open(&url).expect("fs sync=full"))) };
    let one = vec![open()];
    let separate: Vec<_> = (0..WRITERS).map(|_| open()).collect();
    let shared = silo::open(&url).expect("fs sync=full");
    let shared: Vec<Box<dyn Subject>> = (0..WRITERS)
        .map(|_| Box::new(Silo(shared.clone())) as Box<dyn Subject>)
        .collect();
    let vgi: Vec<Box<dyn Subject>> = vec![Box::new(Vgi(Arc::new(
        vgi::storage::SqliteStorage::open(dir.join("sync-vgi.db")),
    )))];
    let floor_path = dir.join("sync-floor");
    let mut rows = vec![
        ("write(100 B) + fdatasync floor", 1, false),
        ("silo fs sync=full kv_put", 1, false),
        ("silo fs sync=full kv_put, a handle each", WRITERS, false),
        (
            "silo fs sync=full kv_put, one shared handle",
            WRITERS,
            false,
        ),
        (
            "vgi sqlite kv_put (its default: WAL, synchronous=NORMAL, no fsync per commit)",
            1,
            true,
        ),
    ]
    .into_iter()
    .map(|(name, writers, vgi)| {
        (
            SyncRow {
                name,
                writers,
                vgi,
                rate: None,
                over_floor: None,
                ok: Ok(()),
            },
            Vec::new(),
        )
    })
    .collect::<Vec<_>>();
    for _ in 0..rounds {
        for (i, (row, rates)) in rows.iter_mut().enumerate() {
            let (rate, ok) = match i {
                0 => fdatasync_floor(&floor_path, secs),
                1 => timed_writers(&one, secs),
                2 => timed_writers(&separate, secs),
                3 => timed_writers(&shared, secs),
                _ => timed_writers(&vgi, secs),
            };
            rates.push(rate);
            if row.ok.is_ok() {
                row.ok = ok;
            }
        }
    }
    let floor = rows[0].1.clone();
    rows.into_iter()
        .map(|(mut row, rates)| {
            let ratios = rates.iter().zip(&floor).map(|(r, f)| r / f).collect();
            row.over_floor = Some(median(ratios));
            row.rate = Some(median(rates));
            eprintln!(
                "sync: {} ({}w): {}/s, {:.2}× the floor, {}",
                row.name,
                row.writers,
                fmt_rate(row.rate),
                row.over_floor.unwrap_or(0.0),
                if row.ok.is_ok() { "ok" } else { "FAILED" }
            );
            row
        })
        .collect()
}

/// What one writer reaches appending 100 B with `write` and making it durable with
/// `fdatasync`, in a loop for `secs`, on a fresh file in `path`.
fn fdatasync_floor(path: &std::path::Path, secs: f64) -> (f64, Result<(), String>) {
    let mut file = std::fs::File::create(path).expect("create the floor file");
    let buf = value(0, 0, 100);
    let deadline = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < deadline {
        file.write_all(&buf).expect("write the floor file");
        file.sync_data().expect("fdatasync the floor file");
        ops += 1;
    }
    let el = start.elapsed();
    let len = file.metadata().map_or(0, |m| m.len());
    (
        ops as f64 / el.as_secs_f64(),
        check(len == ops * 100, || {
            format!("floor file holds {len} bytes, not {}", ops * 100)
        }),
    )
}

/// One thread per handle in `subs`, each doing 100 B kv_puts to its own keys for `secs`; then
/// every put read back (through the first handle).
fn timed_writers(subs: &[Box<dyn Subject>], secs: f64) -> (f64, Result<(), String>) {
    let scope = fresh_scope(Family::KvPut);
    let sc = scope.as_slice();
    let deadline = Duration::from_secs_f64(secs);
    let (el, counts) = timed(subs.len(), |t| {
        let start = Instant::now();
        let mut i = 0;
        while start.elapsed() < deadline {
            subs[t].kv_put(sc, &key(t, i), &value(t, i, 100));
            i += 1;
        }
        i
    });
    let verified = (|| {
        for (t, &n) in counts.iter().enumerate() {
            for i in 0..n {
                check(
                    subs[0].kv_get(sc, &key(t, i)) == Some(value(t, i, 100)),
                    || format!("writer {t}: put {i} of {n} lost"),
                )?;
            }
        }
        Ok(())
    })();
    subs[0].clear(sc);
    (
        counts.iter().sum::<usize>() as f64 / el.as_secs_f64(),
        verified,
    )
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

/// The sections about silo's `fs:` backend: issue 8's targets against what this run measured,
/// 64 KiB write bandwidth, the 1k-vs-20k-entries table and the `sync=full` table. Each part
/// only when its measurements ran.
fn fs_report(md: &mut String, cells: &[Cell], scale: &[ScaleRow], sync: &[SyncRow]) {
    let fs_cell = |family: &str, size: usize, threads: usize| {
        cells.iter().find(|c| {
            c.group == FS_GROUP && c.family == family && c.size == size && c.threads == threads
        })
    };
    let mbps = |rate: Option<f64>| rate.map(|r| r * (64 << 10) as f64 / 1e6);
    // (target, measured, bound, whether the bound is a ceiling, how to show it)
    type Show = fn(f64) -> String;
    let mut targets: Vec<(String, Option<f64>, f64, bool, Show)> = Vec::new();
    let times_show: Show = |x| format!("{x:.2}×");
    let mb_show: Show = |x| format!("{x:.0} MB/s");
    if fs_cell("kv_put", 100, 1).is_some() {
        for (family, want) in [
            ("kv_put", 10.0),
            ("append", 10.0),
            ("queue_push", 10.0),
            ("queue_pop", 10.0),
            ("kv_get", 2.0),
        ] {
            targets.push((
                format!("{family} 100 B, 1 thread, fs / vgi sqlite"),
                fs_cell(family, 100, 1).and_then(ratio),
                want,
                false,
                times_show,
            ));
        }
        for family in ["kv_put", "append"] {
            targets.push((
                format!("{family} 64 KiB, 1 thread, silo fs"),
                mbps(fs_cell(family, 64 << 10, 1).and_then(|c| c.silo)),
                1000.0,
                false,
                mb_show,
            ));
        }
    }
    for family in [
        "4 processes popping one queue",
        "4 processes appending to one log",
    ] {
        if let Some(c) = fs_cell(family, 100, 4) {
            targets.push((
                format!("{family}, fs / vgi sqlite"),
                ratio(c),
                5.0,
                false,
                times_show,
            ));
        }
    }
    for r in scale {
        targets.push((
            format!(
                "{} 100 B, per-op cost at 20k / at 1k entries, silo fs",
                r.family.name()
            ),
            ScaleRow::cost(r.silo),
            1.5,
            true,
            times_show,
        ));
    }
    for (row, want) in sync.iter().skip(1).take(2).zip([0.9, 3.0]) {
        targets.push((
            format!(
                "{}, {} writer{} / the fdatasync floor",
                row.name,
                row.writers,
                if row.writers == 1 { "" } else { "s" }
            ),
            row.over_floor,
            want,
            false,
            times_show,
        ));
    }
    if !targets.is_empty() {
        let _ = writeln!(md, "\n## silo fs: issue 8's targets in this run\n");
        let _ = writeln!(md, "| target | measured | wanted | |");
        let _ = writeln!(md, "|---|---:|---:|---|");
        for (what, got, want, ceiling, show) in &targets {
            let verdict = match got {
                None => "—",
                Some(g) if (*ceiling && g <= want) || (!*ceiling && g >= want) => "met",
                Some(_) => "**missed**",
            };
            let _ = writeln!(
                md,
                "| {what} | {} | {} {} | {verdict} |",
                got.map_or("—".into(), show),
                if *ceiling { "≤" } else { "≥" },
                show(*want)
            );
        }
    }

    let big: Vec<&Cell> = cells
        .iter()
        .filter(|c| {
            c.group == FS_GROUP
                && c.size == 64 << 10
                && ["kv_put", "append", "queue_push"].contains(&c.family.as_str())
        })
        .collect();
    if !big.is_empty() {
        let _ = writeln!(md, "\n## fs: 64 KiB writes (MB/s, 1 MB = 10⁶ bytes)\n");
        let _ = writeln!(md, "| operation | threads | silo fs | vgi sqlite |");
        let _ = writeln!(md, "|---|---|---:|---:|");
        for c in big {
            let show = |r: Option<f64>| mbps(r).map_or("—".into(), mb_show);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                c.family,
                c.threads,
                show(c.silo),
                show(c.vgi)
            );
        }
    }

    if !scale.is_empty() {
        let _ = writeln!(md, "\n## fs at 1k vs 20k entries (100 B, 1 thread)\n");
        let _ = writeln!(
            md,
            "| operation | silo fs @1k | silo fs @20k | silo cost 20k / 1k | vgi sqlite @1k | vgi sqlite @20k | vgi cost 20k / 1k | verified |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---|");
        for r in scale {
            let cost =
                |rates| ScaleRow::cost(rates).map_or("—".into(), |c| format!("**{c:.2}×**"));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.family.name(),
                fmt_rate(r.silo[0]),
                fmt_rate(r.silo[1]),
                cost(r.silo),
                fmt_rate(r.vgi[0]),
                fmt_rate(r.vgi[1]),
                cost(r.vgi),
                verdict(&r.silo_ok, &r.vgi_ok)
            );
        }
        let _ = writeln!(
            md,
            "\nOperations per second, median of timed windows, on a fresh store per size (silo `fs:` at its defaults; vgi `SqliteStorage`). kv_put ({} overwrites a window) and kv_get ({} reads) work on keys spread over one scope prefilled with exactly 1k or 20k entries; append ({} a window) adds to a fresh log of 1k or 20k entries; queue_pop ({}) takes from a fresh queue of 1k or 20k items plus the ones it pops. Cost 20k / 1k = per-operation time at 20k entries over that at 1k (1.00× = no slower).",
            scale_ops(Family::KvPut),
            scale_ops(Family::KvGet),
            scale_ops(Family::Append),
            scale_ops(Family::Pop)
        );
    }

    if !sync.is_empty() {
        let _ = writeln!(
            md,
            "\n## sync=full: durable writes against the fdatasync floor (100 B)\n"
        );
        let _ = writeln!(md, "| writer | writers | ops/s | / floor | verified |");
        let _ = writeln!(md, "|---|---|---:|---:|---|");
        for r in sync {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                r.name,
                r.writers,
                fmt_rate(r.rate),
                r.over_floor.map_or("—".into(), |x| format!("**{x:.2}×**")),
                if r.ok.is_ok() { "ok" } else { "FAILED" }
            );
        }
        let _ = writeln!(
            md,
            "\nThe floor: one thread appending 100 bytes with `write` and `fdatasync`ing them, in a loop, on a fresh file in the same directory as the stores. Every row runs once a round, for a fixed time, over many short rounds; ops/s is the median over rounds, / floor the median over rounds of the row's rate over the floor's in the same round (fsync times drift a lot on a shared disk). The writers: threads doing kv_put to keys of their own for a fixed time, every put read back afterwards; \"a handle each\" = every thread its own `silo::open` of the one `fs:` store (`?sync=full`), \"one shared handle\" = all threads on one. The vgi row is not durable per commit and is there for scale only."
        );
    }
}

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
    if args.first().map(String::as_str) == Some("--arrow-worker") {
        return arrow::worker(&args[1..]);
    }
    if let Some(problem) = check_args(&args) {
        let usage = "usage: silo-bench [--quick] [--reps N] [--only PART] [--pairs N] \
                     [--out BENCHMARKS.md] [--svg benchmarks.svg]\n\
                     PART: one of the parts below (the module doc of \
                     compat/src/bin/silo-bench/main.rs says what each runs)";
        let usage = format!("{usage}\n  {}", PARTS.join(", "));
        match problem {
            None => println!("{usage}"),
            Some(problem) => {
                eprintln!("silo-bench: {problem}\n{usage}");
                std::process::exit(2);
            }
        }
        return;
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
    // One part is not the whole report: unless told where, it goes to stdout, not over
    // BENCHMARKS.md.
    let to_stdout = flag("--only").is_some() && flag("--out").is_none();
    let out_path = flag("--out").unwrap_or_else(|| "BENCHMARKS.md".into());
    let svg_path = flag("--svg").unwrap_or_else(|| "benchmarks.svg".into());
    let only = flag("--only");
    let wants = |parts: &[&str]| only.as_deref().is_none_or(|o| parts.contains(&o));
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
    let silo_fs =
        Silo(silo::open(&format!("fs://{}", dir.path().join("silo-fs").display())).expect("fs"));
    let vgi_sql_vs_fs = Vgi(Arc::new(vgi::storage::SqliteStorage::open(
        dir.path().join("vgi-vs-fs.db"),
    )));
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
            key: "memory",
            silo: Some(&silo_mem),
            vgi: Some(&vgi_mem),
            n_small: 100_000,
            n_big: 2_000,
        },
        Group {
            name: "sqlite",
            key: "sqlite",
            silo: Some(&silo_sql),
            vgi: Some(&vgi_sql),
            n_small: 20_000,
            n_big: 1_000,
        },
        Group {
            name: FS_GROUP,
            key: "fs",
            silo: Some(&silo_fs),
            vgi: Some(&vgi_sql_vs_fs),
            n_small: 20_000,
            n_big: 1_000,
        },
        Group {
            name: "fs (vgi only)",
            key: "vgi-fs",
            silo: None,
            vgi: Some(&vgi_fs),
            n_small: 5_000,
            n_big: 500,
        },
        Group {
            name: "http",
            key: "http",
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
        if !wants(&[g.key]) {
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
    // silo's backends in the processes rows, each beside the same vgi SQLite runs.
    let backends: Vec<(&str, &str)> = [
        ("sqlite", "sqlite", wants(&["processes"])),
        ("fs", FS_GROUP, wants(&["processes", "fs"])),
    ]
    .into_iter()
    .filter_map(|(backend, group, on)| on.then_some((backend, group)))
    .collect();
    if !backends.is_empty() {
        for (role, name, total) in [
            ("pop", "4 processes popping one queue", 20_000),
            ("append", "4 processes appending to one log", 8_000),
        ] {
            let mut silo: Vec<(Vec<f64>, Result<(), String>)> =
                backends.iter().map(|_| (Vec::new(), Ok(()))).collect();
            let (mut v, mut vgi_ok) = (Vec::new(), Ok(()));
            for _ in 0..settings.reps {
                for ((backend, _), (rates, silo_ok)) in backends.iter().zip(&mut silo) {
                    let (rate, ok) = processes("silo", backend, role, total);
                    rates.push(rate);
                    if silo_ok.is_ok() {
                        *silo_ok = ok;
                    }
                }
                let (rate, ok) = processes("vgi", "sqlite", role, total);
                v.push(rate);
                vgi_ok = vgi_ok.and(ok);
            }
            let vgi_rate = median(v);
            for ((_, group), (rates, silo_ok)) in backends.iter().zip(silo) {
                let silo_rate = median(rates);
                eprintln!(
                    "{group}: {name}: silo {} vgi {}",
                    fmt_rate(Some(silo_rate)),
                    fmt_rate(Some(vgi_rate))
                );
                extra.push(Cell {
                    group: group.to_string(),
                    family: name.into(),
                    size: 100,
                    threads: 4,
                    silo: Some(silo_rate),
                    vgi: Some(vgi_rate),
                    silo_ok,
                    vgi_ok: vgi_ok.clone(),
                });
            }
        }
    }
    if wants(&["http", "clients"]) {
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
    let scale = if wants(&["fs", "scale"]) {
        scale_section(settings.reps.max(7), dir.path())
    } else {
        Vec::new()
    };
    let sync = if wants(&["fs", "sync"]) {
        sync_section(
            if quick { 8 } else { 15 },
            if quick { 0.25 } else { 0.4 },
            dir.path(),
        )
    } else {
        Vec::new()
    };

    let (server_md, server_failures) = if wants(&["server"]) {
        server::section(settings.reps, quick, dir.path())
    } else {
        (String::new(), Vec::new())
    };
    let (mut pg_md, mut pg_failures) = if wants(&["postgres"]) {
        pg::section(settings.reps, quick)
    } else {
        (String::new(), Vec::new())
    };
    let (python_md, python_failures) = if wants(&["python"]) {
        python::section(settings.reps, quick, dir.path())
    } else {
        (String::new(), Vec::new())
    };
    let (replication_md, replication_failures) = if wants(&["replication"]) {
        replication::section(settings.reps, quick, dir.path())
    } else {
        (String::new(), Vec::new())
    };
    let (arrow_md, arrow_failures) = if wants(&["arrow"]) {
        arrow::section(settings.reps, quick, dir.path())
    } else {
        (String::new(), Vec::new())
    };
    // Minutes long, so only when asked for by name.
    if only.as_deref() == Some("postgres-vacuum") {
        let pairs = flag("--pairs")
            .and_then(|p| p.parse().ok())
            .unwrap_or(1_000_000);
        let (md, failures) = pg::vacuum_section(pairs);
        pg_md.push_str(&md);
        pg_failures.extend(failures);
    }

    // ---- the report
    let silo_failures: Vec<String> = cells
        .iter()
        .filter_map(|c| {
            let e = c.silo_ok.as_ref().err()?;
            Some(format!(
                "{} {} {} {}t: {e}",
                c.group,
                c.family,
                size_name(c.size),
                c.threads
            ))
        })
        .chain(scale.iter().filter_map(|r| {
            let e = r.silo_ok.as_ref().err()?;
            Some(format!("fs scale {}: {e}", r.family.name()))
        }))
        .chain(sync.iter().filter(|r| !r.vgi).filter_map(|r| {
            let e = r.ok.as_ref().err()?;
            Some(format!("{} ({} writers): {e}", r.name, r.writers))
        }))
        .chain(server_failures)
        .chain(pg_failures)
        .chain(python_failures)
        .chain(replication_failures)
        .chain(arrow_failures)
        .collect();
    let all_ok = silo_failures.is_empty();
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
        .chain(scale.iter().filter_map(|r| {
            let e = r.vgi_ok.as_ref().err()?;
            Some(format!("sqlite scale {}: {e}", r.family.name()))
        }))
        .chain(sync.iter().filter(|r| r.vgi).filter_map(|r| {
            let e = r.ok.as_ref().err()?;
            Some(format!("{} ({} writers): {e}", r.name, r.writers))
        }))
        .collect();
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `silo-bench` (compat/src/bin/silo-bench/); do not edit by hand. Regenerate with:\n"
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
    fs_report(&mut md, &cells, &scale, &sync);
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
    md.push_str(&server_md);
    md.push_str(&pg_md);
    md.push_str(&python_md);
    md.push_str(&replication_md);
    md.push_str(&arrow_md);
    if !silo_failures.is_empty() {
        let _ = writeln!(md, "\n## Runs where silo FAILED verification\n");
        for f in &silo_failures {
            let _ = writeln!(md, "- {f}");
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
    if cells.iter().any(|c| c.group == FS_GROUP) {
        let _ = writeln!(
            md,
            "\n`{FS_GROUP}`: silo's own `fs:` store (log-structured, `sync=normal`) against a fresh vgi `SqliteStorage` (WAL, `synchronous=NORMAL`) — the incumbent's SQLite, which issue 8's targets are ratios against; its processes rows share their vgi runs with the `sqlite` rows when both run. `fs (vgi only)` is the incumbent's own fs backend, which has no silo counterpart of that design."
        );
    }
    let wrote = if to_stdout {
        println!("{md}");
        "the report to stdout (--out FILE writes it to a file)".to_string()
    } else {
        std::fs::write(&out_path, md).expect("write the report");
        std::fs::write(&svg_path, svg(&cells)).expect("write the chart");
        format!("{out_path} and {svg_path}")
    };
    eprintln!(
        "wrote {wrote}; verification: {}",
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
