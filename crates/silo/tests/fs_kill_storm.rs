//! SIGKILL storms on `fs:`: rounds of 4 real worker processes (this test binary again, in
//! the roles below) share one store directory and are killed one by one, each at its own
//! instant; the next round starts on the same directory. A storm has 8–10 rounds, with
//! default tuning, with tiny segments (`segment_bytes=16384&compact_min_bytes=65536`, so kills
//! land in seals and compactions), and with tiny segments and `sync=full`.
//!
//! Writers mix appends to one shared log, queue pushes, `kv_put`s (small, 32–128 KiB, and now
//! and then 2–3 MiB values) and `counter_add`s; consumers pop, or claim and then ack or
//! release. Each worker is SIGKILLed 50–300 ms after it opened the store; or 0–150 ms after
//! its start (mostly while it opens and loads the store under the lock); or in the middle of
//! writing a 2–3 MiB frame, which leaves a torn tail for the next writer to cut: either
//! SIGKILL once the segment has visibly grown (a busy machine may be too slow to catch it),
//! or (every third round at least once) a file-size limit makes the kernel cut the frame
//! short and kill the worker with SIGXFSZ, a torn tail for sure.
//!
//! Every worker prints `begin <op> <seq> …` before an operation and `ack <op> <seq> …` only
//! after it returned `Ok`, so the parent knows which operations were acknowledged and which
//! one (at most one per process) was in flight when it died. Every value is self-checking
//! (writer tag, sequence number, what it is for, and a body derived from those), so a torn or
//! misplaced value is detected.
//!
//! After every round the store is checked through a handle the test kept open since before
//! the storm (it catches up across seals and compactions as a reader) and through a fresh
//! open, after which no segment may end in a partial frame: every acknowledged append is present with its id and bytes, ids strictly increase,
//! and no entry is there twice or was never appended; every key holds a whole value that a
//! put of that key made and that no acknowledged put known to be later (a later round, or
//! later in the same worker) replaced; every counter is the sum of its acknowledged adds plus
//! some of the in-flight ones, and the values adds returned are distinct (no lost update);
//! claim ids are never given twice; the queue's length is within what pushes and
//! acknowledged removals allow. At the end the queue is drained: no item removed twice by
//! acknowledged pops/acks, none both removed and still queued, none that was never pushed,
//! and every acknowledged push is removed, still queued (or dead-lettered), or explained by
//! an in-flight removal. Then a reopen and one more write of every kind must work.
//!
//! The seed is printed; `SILO_STORM_SEED=<n>` repeats its choices (the kills' timing is still
//! the machine's). `SILO_TEST_WORKER_DEADLINE_SECS` (default 180) bounds each storm: a hang
//! fails the run instead of stalling it.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::TempStore;
use silo::FunctionStorage;
use silo::conformance::processes::{spawn, worker_deadline};
use silo_engine::{FileStore, FrameLog, Store};

// ------------------------------------------------------------------------ what is written

const LOG_SCOPE: &[u8] = b"storm-log";
const LOG_NS: &[u8] = b"ns";
const LOG_KEY: &[u8] = b"log";
const KV_SCOPE: &[u8] = b"storm-kv";
const COUNTER_SCOPE: &[u8] = b"storm-counters";
const COUNTER_NS: &[u8] = b"n";
const QUEUE: &[u8] = b"storm-queue";
/// Small-value keys `k0..`, keys `big0..` whose values are 32–128 KiB, and the key `huge`
/// (2–3 MiB values: a frame whose write takes long enough for a kill to land inside it, so
/// the tail is torn).
const SMALL_KEYS: u64 = 10;
const BIG_KEYS: u64 = 2;
const COUNTERS: u64 = 3;
/// The lease of a consumer's claim: a killed claimer's item comes back after it.
const LEASE: Duration = Duration::from_millis(400);
/// Processes per round; a worker's tag is `round * PROCS + index`.
const PROCS: u64 = 4;

const HUGE_KEY: &str = "huge";

fn kv_keys() -> Vec<String> {
    (0..SMALL_KEYS)
        .map(|k| format!("k{k}"))
        .chain((0..BIG_KEYS).map(|k| format!("big{k}")))
        .chain([HUGE_KEY.to_string()])
        .collect()
}

fn counter_key(c: u64) -> String {
    format!("c{c}")
}

fn round_of(tag: u64) -> u64 {
    tag / PROCS
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A self-checking value: the writer's tag, its sequence number, what it is for (`log`,
/// `kv:<key>`, `q<index>`), and a body derived from all three.
fn payload(tag: u64, seq: u64, what: &[u8]) -> Vec<u8> {
    let mut h = mix(tag ^ mix(seq ^ 0x5eed));
    for &b in what {
        h = mix(h ^ u64::from(b));
    }
    let body = if what == b"kv:huge" {
        (2 << 20) + (h % (1 << 20)) as usize
    } else if what.starts_with(b"kv:big") {
        (32 << 10) + (h % (96 << 10)) as usize
    } else if h.is_multiple_of(19) {
        4000 + (h % 5000) as usize
    } else {
        (h % 700) as usize
    };
    let len = 17 + what.len() + body;
    let mut v = Vec::with_capacity(len + 8);
    v.extend_from_slice(&tag.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.push(what.len() as u8);
    v.extend_from_slice(what);
    let mut s = h;
    while v.len() < len {
        s = mix(s.wrapping_add(1));
        v.extend_from_slice(&s.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The (tag, seq, what) of a value, or why it is not one [`payload`] made.
fn parse_payload(v: &[u8]) -> Result<(u64, u64, Vec<u8>), String> {
    if v.len() < 17 || v.len() < 17 + v[16] as usize {
        return Err(format!("a value of {} bytes (torn?)", v.len()));
    }
    let tag = u64::from_le_bytes(v[..8].try_into().unwrap());
    let seq = u64::from_le_bytes(v[8..16].try_into().unwrap());
    let what = v[17..17 + v[16] as usize].to_vec();
    let expected = payload(tag, seq, &what);
    if v != expected.as_slice() {
        let differs = v.iter().zip(&expected).position(|(a, b)| a != b);
        return Err(format!(
            "the value claiming to be writer {tag}'s seq {seq} ({}) is not what it wrote: {} \
             bytes where {} were written, first difference at {differs:?} (torn or mixed); it \
             starts {}",
            what.escape_ascii(),
            v.len(),
            expected.len(),
            v[..v.len().min(40)].escape_ascii()
        ));
    }
    Ok((tag, seq, what))
}

/// A queue item: (writer tag, push seq, index in the push).
type Item = (u64, u64, u64);

fn parse_item(v: &[u8]) -> Result<Item, String> {
    let (tag, seq, what) = parse_payload(v)?;
    match what.as_slice() {
        [b'q', i] => Ok((tag, seq, u64::from(*i))),
        _ => Err(format!(
            "queue item of {tag}/{seq} is marked {}",
            what.escape_ascii()
        )),
    }
}

// ------------------------------------------------------------------------ the workers

silo::worker_entry!(|role, url| {
    let run: fn(&dyn FunctionStorage, u64, &mut Rng, &mut Out) = match role {
        "storm-writer" => writer,
        "storm-popper" => popper,
        "storm-claimer" => claimer,
        _ => return false,
    };
    let arg = |name: &str| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("a storm worker's argument")
    };
    let tag = arg("STORM_TAG");
    let mut rng = Rng(arg("STORM_SEED") ^ mix(tag + 1));
    let mut out = Out {
        out: std::io::stdout().lock(),
        // A worker is SIGKILLed long before this; an orphaned one stops by itself.
        stop_at: Instant::now() + worker_deadline(),
        huge_at: std::env::var("STORM_HUGE_AT")
            .ok()
            .and_then(|v| v.parse().ok()),
    };
    let store = out.must("open", silo::open(url));
    out.say(format_args!("opened"));
    run(&*store, tag, &mut rng, &mut out);
    true
});

/// A worker's report: one flushed line per event.
struct Out {
    out: std::io::StdoutLock<'static>,
    stop_at: Instant,
    /// A writer's op that puts a huge value (the parent kills it while it is written).
    huge_at: Option<u64>,
}

impl Out {
    fn say(&mut self, line: std::fmt::Arguments<'_>) {
        writeln!(self.out, "{line}").unwrap();
        self.out.flush().unwrap();
    }

    /// The operation's result; an error is reported and ends the worker (the parent fails).
    fn must<T>(&mut self, what: &str, r: silo::Result<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                self.say(format_args!("error {what}: {e}"));
                panic!("storm worker: {what} failed: {e}");
            }
        }
    }

    fn overdue(&self) -> bool {
        Instant::now() >= self.stop_at
    }
}

/// Appends, pushes, puts and adds, forever.
fn writer(store: &dyn FunctionStorage, tag: u64, rng: &mut Rng, out: &mut Out) {
    for seq in 0u64.. {
        if out.overdue() {
            return;
        }
        let roll = rng.below(100);
        if out.huge_at == Some(seq) {
            let value = payload(tag, seq, format!("kv:{HUGE_KEY}").as_bytes());
            out.say(format_args!("begin put {seq} {HUGE_KEY}"));
            if let Some(dir) = std::env::var_os("STORM_LIMIT_DIR") {
                // The kernel cuts this frame short 1 MiB past where the newest segment ends
                // now, and kills the process (SIGXFSZ) when it writes on: a torn tail.
                let end = newest_segment(Path::new(&dir)).map_or(0, |(_, len)| len);
                limit_file_size(end + (1 << 20));
            } else {
                // The parent watches the files from now on, and says so.
                let go = std::env::var_os("STORM_GO").expect("STORM_GO");
                let asked = Instant::now();
                while !Path::new(&go).exists() && asked.elapsed() < Duration::from_secs(2) {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            out.must(
                "kv_put",
                store.kv_put(KV_SCOPE, HUGE_KEY.as_bytes(), &value),
            );
            out.say(format_args!("ack put {seq}"));
        } else if roll < 35 {
            out.say(format_args!("begin append {seq}"));
            let value = payload(tag, seq, b"log");
            let id = out.must("append", store.append(LOG_SCOPE, LOG_NS, LOG_KEY, &value));
            out.say(format_args!("ack append {seq} {id}"));
        } else if roll < 55 {
            let n = 1 + rng.below(3);
            let items: Vec<Vec<u8>> = (0..n)
                .map(|i| payload(tag, seq, &[b'q', i as u8]))
                .collect();
            out.say(format_args!("begin push {seq} {n}"));
            out.must("queue_push", store.queue_push(QUEUE, &items));
            out.say(format_args!("ack push {seq}"));
        } else if roll < 80 {
            let key = if rng.below(8) == 0 {
                format!("big{}", rng.below(BIG_KEYS))
            } else {
                format!("k{}", rng.below(SMALL_KEYS))
            };
            let value = payload(tag, seq, format!("kv:{key}").as_bytes());
            out.say(format_args!("begin put {seq} {key}"));
            out.must("kv_put", store.kv_put(KV_SCOPE, key.as_bytes(), &value));
            out.say(format_args!("ack put {seq}"));
        } else {
            let key = counter_key(rng.below(COUNTERS));
            let delta = 1 + rng.below(5) as i64;
            out.say(format_args!("begin add {seq} {key} {delta}"));
            let now = out.must(
                "counter_add",
                store.counter_add(COUNTER_SCOPE, COUNTER_NS, key.as_bytes(), delta),
            );
            out.say(format_args!("ack add {seq} {now}"));
        }
    }
}

/// Caps the size of any file this process writes (and turns off core dumps): a write across
/// the cap is cut short there, and the next one kills the process with SIGXFSZ.
fn limit_file_size(bytes: u64) {
    let cap = |resource, n| {
        let limit = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: setrlimit on this process with a valid struct.
        assert_eq!(unsafe { libc::setrlimit(resource, &limit) }, 0);
    };
    cap(libc::RLIMIT_CORE, 0);
    cap(libc::RLIMIT_FSIZE, bytes);
}

/// Pops items, forever.
fn popper(store: &dyn FunctionStorage, _tag: u64, _rng: &mut Rng, out: &mut Out) {
    for seq in 0u64.. {
        if out.overdue() {
            return;
        }
        out.say(format_args!("begin pop {seq}"));
        match out.must("queue_pop", store.queue_pop(QUEUE)) {
            Some(v) => {
                let (t, s, i) = parse_item(&v).unwrap_or_else(|e| {
                    out.say(format_args!("error pop: {e}"));
                    panic!("storm worker: popped a bad item: {e}")
                });
                out.say(format_args!("ack pop {seq} {t} {s} {i}"));
            }
            None => {
                out.say(format_args!("ack pop {seq} none"));
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Claims items with a lease, works 0–2 ms, then acks (or now and then releases), forever.
fn claimer(store: &dyn FunctionStorage, _tag: u64, rng: &mut Rng, out: &mut Out) {
    let mut seq = 0u64;
    while !out.overdue() {
        out.say(format_args!("begin claim {seq}"));
        let claim = out.must("queue_claim", store.queue_claim(QUEUE, LEASE));
        let Some(claim) = claim else {
            out.say(format_args!("ack claim {seq} none"));
            seq += 1;
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let (t, s, i) = parse_item(&claim.value).unwrap_or_else(|e| {
            out.say(format_args!("error claim: {e}"));
            panic!("storm worker: claimed a bad item: {e}")
        });
        out.say(format_args!("ack claim {seq} {} {t} {s} {i}", claim.id));
        seq += 1;
        std::thread::sleep(Duration::from_millis(rng.below(3)));
        if rng.below(8) == 0 {
            out.say(format_args!("begin release {seq} {}", claim.id));
            let ok = out.must("queue_release", store.queue_release(QUEUE, claim.id));
            out.say(format_args!("ack release {seq} {ok}"));
        } else {
            out.say(format_args!("begin ack {seq} {}", claim.id));
            let ok = out.must("queue_ack", store.queue_ack(QUEUE, claim.id));
            out.say(format_args!("ack ack {seq} {ok}"));
        }
        seq += 1;
    }
}

// ------------------------------------------------------------------------ what the parent knows

/// One operation a worker reported: its `begin` line's words, and its `ack` line's words
/// after the kind and seq, when it was acknowledged.
#[derive(Debug)]
struct Op {
    kind: String,
    seq: u64,
    args: Vec<String>,
    ack: Option<Vec<String>>,
}

/// A worker's operations from its output (whole lines only; libtest's own lines skipped):
/// `begin`/`ack` pairs, at most the last one unacknowledged.
fn parse_ops(ctx: &str, text: &str) -> Vec<Op> {
    let whole = &text[..text.rfind('\n').map_or(0, |at| at + 1)];
    let mut ops: Vec<Op> = Vec::new();
    for line in whole.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["error", ..] => panic!("{ctx}: a worker's operation failed: {line}"),
            ["begin", kind, seq, args @ ..] => {
                if let Some(last) = ops.last() {
                    assert!(
                        last.ack.is_some(),
                        "{ctx}: `{line}` while {last:?} is unacknowledged"
                    );
                }
                ops.push(Op {
                    kind: kind.to_string(),
                    seq: seq.parse().unwrap(),
                    args: args.iter().map(|s| s.to_string()).collect(),
                    ack: None,
                });
            }
            ["ack", kind, seq, rest @ ..] => {
                let last = ops
                    .last_mut()
                    .unwrap_or_else(|| panic!("{ctx}: `{line}` first"));
                assert!(
                    last.ack.is_none() && last.kind == *kind && last.seq.to_string() == *seq,
                    "{ctx}: `{line}` does not acknowledge {last:?}"
                );
                last.ack = Some(rest.iter().map(|s| s.to_string()).collect());
            }
            _ => {}
        }
    }
    ops
}

#[derive(Debug, Default)]
struct Counter {
    acked_sum: i64,
    /// (writer tag, value returned) of every acknowledged add.
    returned: Vec<(u64, i64)>,
    /// Deltas of adds in flight at a kill: each may or may not have happened.
    in_flight: Vec<i64>,
}

#[derive(Debug)]
struct Put {
    key: String,
    acked: bool,
}

/// Every operation the workers began, and which were acknowledged.
#[derive(Debug, Default)]
struct Model {
    /// (tag, seq) of every append begun, with its id when acknowledged.
    appends: HashMap<(u64, u64), Option<i64>>,
    puts: HashMap<(u64, u64), Put>,
    counters: BTreeMap<String, Counter>,
    pushed: HashSet<Item>,
    pushed_acked: HashSet<Item>,
    /// Items an acknowledged pop or ack (true) removed, with (round, tag, seq) of that op.
    removed: HashMap<Item, (u64, u64, u64)>,
    /// Acknowledged claims by claim id.
    claims: HashMap<i64, Item>,
    /// Pops in flight at a kill (each may have removed one unknown item).
    pops_in_flight: u64,
    /// Items whose ack was in flight at a kill (each may be gone).
    acks_in_flight: Vec<Item>,
    acked_ops: u64,
}

fn num<T: std::str::FromStr>(ctx: &str, s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse()
        .unwrap_or_else(|e| panic!("{ctx}: {s:?} is not a number: {e:?}"))
}

impl Model {
    /// Registers one worker's pushes (before any worker's pops and claims of the round are
    /// folded in, which may take them).
    fn add_pushes(&mut self, ctx: &str, tag: u64, ops: &[Op]) {
        for op in ops.iter().filter(|op| op.kind == "push") {
            for i in 0..num::<u64>(ctx, &op.args[0]) {
                self.pushed.insert((tag, op.seq, i));
                if op.ack.is_some() {
                    self.pushed_acked.insert((tag, op.seq, i));
                }
            }
        }
    }

    /// Folds in one worker's report (its pushes registered already).
    fn add(&mut self, ctx: &str, tag: u64, ops: &[Op]) {
        let round = round_of(tag);
        let mut last_id = 0i64;
        let mut removed_here = HashSet::new();
        for op in ops {
            let ctx = &format!("{ctx}, worker {tag} op {} ({})", op.seq, op.kind);
            self.acked_ops += u64::from(op.ack.is_some());
            let ack = op.ack.as_deref();
            match op.kind.as_str() {
                "append" => {
                    let id = ack.map(|a| num::<i64>(ctx, &a[0]));
                    if let Some(id) = id {
                        assert!(id > last_id, "{ctx}: id {id} after {last_id}");
                        last_id = id;
                    }
                    self.appends.insert((tag, op.seq), id);
                }
                "push" => {}
                "put" => {
                    let put = Put {
                        key: op.args[0].clone(),
                        acked: ack.is_some(),
                    };
                    self.puts.insert((tag, op.seq), put);
                }
                "add" => {
                    let delta: i64 = num(ctx, &op.args[1]);
                    let c = self.counters.entry(op.args[0].clone()).or_default();
                    match ack {
                        Some(a) => {
                            c.acked_sum += delta;
                            c.returned.push((tag, num(ctx, &a[0])));
                        }
                        None => c.in_flight.push(delta),
                    }
                }
                "pop" => match ack {
                    None => self.pops_in_flight += 1,
                    Some([none]) if none == "none" => {}
                    Some(a) => {
                        let item = (num(ctx, &a[0]), num(ctx, &a[1]), num(ctx, &a[2]));
                        self.remove(ctx, item, (round, tag, op.seq));
                        removed_here.insert(item);
                    }
                },
                "claim" => match ack {
                    None => {}
                    Some([none]) if none == "none" => {}
                    Some(a) => {
                        let item = (num(ctx, &a[1]), num(ctx, &a[2]), num(ctx, &a[3]));
                        assert!(
                            self.pushed.contains(&item),
                            "{ctx}: claimed {item:?}, which was never pushed"
                        );
                        if let Some(by) = self.removed.get(&item) {
                            assert!(
                                by.0 == round && !removed_here.contains(&item),
                                "{ctx}: claimed {item:?} after it was removed by {by:?}"
                            );
                        }
                        let claim: i64 = num(ctx, &a[0]);
                        let again = self.claims.insert(claim, item);
                        assert!(again.is_none(), "{ctx}: claim id {claim} given twice");
                    }
                },
                "ack" | "release" => {
                    let claim: i64 = num(ctx, &op.args[0]);
                    let item = *self
                        .claims
                        .get(&claim)
                        .unwrap_or_else(|| panic!("{ctx}: claim {claim} was never reported"));
                    match (op.kind.as_str(), ack) {
                        ("ack", None) => self.acks_in_flight.push(item),
                        ("ack", Some([t])) if t == "true" => {
                            self.remove(ctx, item, (round, tag, op.seq));
                            removed_here.insert(item);
                        }
                        (_, Some([t])) if t == "true" || t == "false" => {}
                        (_, None) => {}
                        (_, Some(a)) => panic!("{ctx}: unexpected acknowledgement {a:?}"),
                    }
                }
                other => panic!("{ctx}: unknown operation {other}"),
            }
        }
    }

    fn remove(&mut self, ctx: &str, item: Item, by: (u64, u64, u64)) {
        assert!(
            self.pushed.contains(&item),
            "{ctx}: removed {item:?}, which was never pushed"
        );
        if let Some(first) = self.removed.insert(item, by) {
            panic!(
                "{ctx}: item {item:?} delivered twice: removed by (round, worker, op) {first:?} \
                 and again by {by:?}"
            );
        }
    }
}

// ------------------------------------------------------------------------ the checks

/// Checks the log, the keys, the counters and the queue's length against `m`, through
/// `store`, without changing anything; returns the last log id.
fn check(store: &dyn FunctionStorage, m: &Model, ctx: &str) -> i64 {
    let last_id = check_log(store, m, ctx);
    check_kv(store, m, ctx);
    check_counters(store, m, ctx);
    let len = store
        .queue_len(QUEUE)
        .unwrap_or_else(|e| panic!("{ctx}: queue_len: {e}"));
    let dead = store
        .queue_dead_letters(QUEUE, u64::MAX)
        .unwrap_or_else(|e| panic!("{ctx}: queue_dead_letters: {e}"))
        .len() as u64;
    let most = (m.pushed.len() - m.removed.len()) as u64;
    assert!(
        len + dead <= most,
        "{ctx}: {len} items queued and {dead} dead, but only {} were pushed and {} of them \
         removed",
        m.pushed.len(),
        m.removed.len()
    );
    let kept = m
        .pushed_acked
        .iter()
        .filter(|i| !m.removed.contains_key(i))
        .count() as u64;
    let least = kept.saturating_sub(m.pops_in_flight + m.acks_in_flight.len() as u64);
    assert!(
        len + dead >= least,
        "{ctx}: {len} items queued and {dead} dead, but {kept} acknowledged pushes were not \
         removed by an acknowledged pop/ack and only {} removals were in flight",
        m.pops_in_flight + m.acks_in_flight.len() as u64
    );
    last_id
}

/// Every acknowledged append is there with its id and bytes; ids strictly increase; nothing
/// appears twice or was never appended; each writer's entries are in its order, rounds in
/// round order.
fn check_log(store: &dyn FunctionStorage, m: &Model, ctx: &str) -> i64 {
    let log = store
        .scan(LOG_SCOPE, LOG_NS, LOG_KEY, -1, u64::MAX)
        .unwrap_or_else(|e| panic!("{ctx}: scan: {e}"));
    let mut seen: HashMap<(u64, u64), i64> = HashMap::new();
    let mut last_id = i64::MIN;
    let mut last_seq: HashMap<u64, u64> = HashMap::new();
    let mut last_round = 0;
    for (id, value) in &log {
        let id = *id;
        assert!(
            id > last_id,
            "{ctx}: log id {id} follows {last_id} (not strictly increasing)"
        );
        last_id = id;
        let (tag, seq, what) =
            parse_payload(value).unwrap_or_else(|e| panic!("{ctx}: log entry {id}: {e}"));
        assert_eq!(
            what, b"log",
            "{ctx}: log entry {id} is a value of another kind"
        );
        let Some(acked) = m.appends.get(&(tag, seq)) else {
            panic!("{ctx}: log entry {id} holds {tag}/{seq}, which no worker appended");
        };
        if let Some(acked) = acked {
            assert_eq!(
                *acked, id,
                "{ctx}: append {tag}/{seq} was acknowledged with id {acked} but is at {id}"
            );
        }
        if let Some(first) = seen.insert((tag, seq), id) {
            panic!("{ctx}: append {tag}/{seq} is in the log twice, at {first} and {id}");
        }
        if let Some(before) = last_seq.insert(tag, seq) {
            assert!(
                before < seq,
                "{ctx}: worker {tag}'s append {seq} is after its {before}"
            );
        }
        assert!(
            round_of(tag) >= last_round,
            "{ctx}: entry {id} of round {} after one of round {last_round}",
            round_of(tag)
        );
        last_round = round_of(tag);
    }
    let mut lost: Vec<_> = m
        .appends
        .iter()
        .filter(|(k, id)| id.is_some() && !seen.contains_key(k))
        .collect();
    lost.sort();
    assert!(
        lost.is_empty(),
        "{ctx}: {} acknowledged appends are missing ((tag, seq), id): {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    last_id
}

/// Every key holds a whole value that a put of that key made, and no acknowledged put that
/// must have come later (a later round, or later in the same worker) replaced it.
fn check_kv(store: &dyn FunctionStorage, m: &Model, ctx: &str) {
    for key in kv_keys() {
        let acked: Vec<(u64, u64)> = m
            .puts
            .iter()
            .filter(|(_, p)| p.key == key && p.acked)
            .map(|(k, _)| *k)
            .collect();
        let got = store
            .kv_get(KV_SCOPE, key.as_bytes())
            .unwrap_or_else(|e| panic!("{ctx}: kv_get {key}: {e}"));
        let Some(value) = got else {
            assert!(
                acked.is_empty(),
                "{ctx}: key {key} is missing though {} puts of it were acknowledged",
                acked.len()
            );
            continue;
        };
        let (tag, seq, what) =
            parse_payload(&value).unwrap_or_else(|e| panic!("{ctx}: key {key}: {e}"));
        assert_eq!(
            what,
            format!("kv:{key}").as_bytes(),
            "{ctx}: key {key} holds the value put {tag}/{seq} wrote for another key"
        );
        assert!(
            m.puts.contains_key(&(tag, seq)),
            "{ctx}: key {key} holds {tag}/{seq}, which no worker put"
        );
        for (t, s) in acked {
            assert!(
                round_of(t) <= round_of(tag),
                "{ctx}: key {key} holds put {tag}/{seq} of round {}, but put {t}/{s} of round \
                 {} was acknowledged (a lost update)",
                round_of(tag),
                round_of(t)
            );
            assert!(
                t != tag || s <= seq,
                "{ctx}: key {key} holds put {tag}/{seq}, but the same worker's later put {s} \
                 was acknowledged (a lost update)"
            );
        }
    }
}

/// Every counter is its acknowledged adds plus some of those in flight; the values adds
/// returned are distinct (each add saw all before it).
fn check_counters(store: &dyn FunctionStorage, m: &Model, ctx: &str) {
    for c in 0..COUNTERS {
        let key = counter_key(c);
        let got = store
            .counter_get(COUNTER_SCOPE, COUNTER_NS, key.as_bytes())
            .unwrap_or_else(|e| panic!("{ctx}: counter_get {key}: {e}"));
        let empty = Counter::default();
        let counter = m.counters.get(&key).unwrap_or(&empty);
        let extra = got - counter.acked_sum;
        let mut sums = vec![true];
        for &d in &counter.in_flight {
            let mut next = sums.clone();
            next.resize(sums.len() + d as usize, false);
            for (s, _) in sums.iter().enumerate().filter(|(_, r)| **r) {
                next[s + d as usize] = true;
            }
            sums = next;
        }
        assert!(
            extra >= 0 && sums.get(extra as usize) == Some(&true),
            "{ctx}: counter {key} is {got}: acknowledged adds sum to {}, and no subset of the \
             in-flight adds {:?} makes up the difference",
            counter.acked_sum,
            counter.in_flight
        );
        let mut returned: HashMap<i64, u64> = HashMap::new();
        for &(tag, value) in &counter.returned {
            assert!(
                value <= got,
                "{ctx}: an add to {key} by {tag} returned {value}, more than the {got} stored"
            );
            if let Some(other) = returned.insert(value, tag) {
                panic!(
                    "{ctx}: adds to {key} by workers {other} and {tag} both returned {value} \
                     (a lost update)"
                );
            }
        }
    }
}

/// Drains the queue (after every lease ran out) and checks every item's fate.
fn check_queue_drained(store: &dyn FunctionStorage, m: &Model, ctx: &str) {
    let mut left: HashSet<Item> = HashSet::new();
    let mut note = |item: Item, how: &str| {
        assert!(
            m.pushed.contains(&item),
            "{ctx}: {how} {item:?}, which was never pushed"
        );
        if let Some(by) = m.removed.get(&item) {
            panic!("{ctx}: {how} {item:?}, which an acknowledged pop/ack removed: {by:?}");
        }
        assert!(left.insert(item), "{ctx}: {item:?} is queued twice");
    };
    while let Some(v) = store
        .queue_pop(QUEUE)
        .unwrap_or_else(|e| panic!("{ctx}: draining: {e}"))
    {
        let item = parse_item(&v).unwrap_or_else(|e| panic!("{ctx}: a queued item: {e}"));
        note(item, "queued");
    }
    let dead = store
        .queue_dead_letters(QUEUE, u64::MAX)
        .unwrap_or_else(|e| panic!("{ctx}: queue_dead_letters: {e}"));
    for d in &dead {
        let item = parse_item(&d.value).unwrap_or_else(|e| panic!("{ctx}: a dead letter: {e}"));
        note(item, "dead-lettered");
    }
    assert_eq!(
        store.queue_len(QUEUE).unwrap(),
        0,
        "{ctx}: items left after the drain"
    );
    let mut missing: Vec<Item> = m
        .pushed_acked
        .iter()
        .filter(|i| !m.removed.contains_key(i) && !left.contains(i))
        .copied()
        .collect();
    missing.sort();
    let unexplained: Vec<Item> = missing
        .iter()
        .filter(|i| !m.acks_in_flight.contains(i))
        .copied()
        .collect();
    assert!(
        unexplained.len() as u64 <= m.pops_in_flight,
        "{ctx}: {} acknowledged pushes are neither removed by an acknowledged pop/ack nor \
         queued, and only {} pops were in flight at a kill: {:?}",
        unexplained.len(),
        m.pops_in_flight,
        &unexplained[..unexplained.len().min(10)]
    );
    eprintln!(
        "{ctx}: queue: {} pushed ({} acknowledged), {} removed by acknowledged pops/acks, {} \
         left ({} dead), {} lost to in-flight removals",
        m.pushed.len(),
        m.pushed_acked.len(),
        m.removed.len(),
        left.len(),
        dead.len(),
        missing.len()
    );
}

// ------------------------------------------------------------------------ the storm

/// Kills the workers a test still has running when it ends, fails or hangs.
#[derive(Clone, Default)]
struct Live(Arc<Mutex<Vec<u32>>>);

impl Live {
    fn kill_all(&self) {
        for &pid in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            // SAFETY: a plain kill(2) of a worker this test started and has not reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

/// Fails (exits) the test binary when the storm is not done by `limit`: a hung worker or
/// store operation must fail the run, not hang it.
struct Watchdog(Option<mpsc::Sender<()>>);

impl Watchdog {
    fn start(what: String, limit: Duration, live: Live) -> Watchdog {
        let (done, wait) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
                live.kill_all();
                eprintln!("{what}: not done within {limit:?} (a hang); failing the run");
                std::process::exit(101);
            }
        });
        Watchdog(Some(done))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.take();
    }
}

/// A running worker; dropped (as on a failed assertion), it is killed.
struct Worker {
    child: Child,
    tag: u64,
    role: &'static str,
    plan: Plan,
    live: Live,
    /// Its output, complete once it is dead.
    text: String,
    /// How it was killed.
    kill: String,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        self.live
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&p| p != pid);
    }
}

const W: &str = "storm-writer";
const P: &str = "storm-popper";
const C: &str = "storm-claimer";
const TEAMS: [[&str; 4]; 4] = [[W, W, W, W], [W, W, W, P], [W, W, W, C], [W, W, P, C]];

fn seed() -> u64 {
    std::env::var("SILO_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            mix(t.as_nanos() as u64 ^ u64::from(std::process::id()))
        })
}

/// Bytes past the last whole frame in the store's segments: tails torn by a kill mid-append
/// that no process has cut yet. Damaged files are left to the engine to judge.
fn torn_tail_bytes(dir: &Path) -> u64 {
    let mut torn = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(first) = name
            .strip_prefix("seg-")
            .and_then(|n| n.strip_suffix(".slf"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let Ok(Some(file)) = FileStore::open_existing(entry.path()) else {
            continue;
        };
        let Ok(len) = file.len() else { continue };
        let mut log = FrameLog::attach(file, first);
        if log.catch_up(false).is_ok() {
            torn += len - log.end();
        }
    }
    torn
}

fn current_base(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("CURRENT"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "none".into())
}

/// When a worker is killed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Plan {
    /// 50–300 ms after it opened the store.
    Timed(Duration),
    /// 0–150 ms after it was started: most likely while it opens (and loads) the store.
    Early(Duration),
    /// While it writes the frame of a huge put it begins after `at` operations, so that
    /// the tail is torn (600 ms after it opened if the put has not come by then). Without
    /// `limit` the segments are watched and SIGKILL comes once the frame has started to land
    /// (which a busy machine may miss); with it, a file-size limit makes the kernel cut the
    /// frame short and kill the worker with SIGXFSZ (a torn tail for sure).
    InHugeWrite { at: u64, limit: bool },
}

/// What a worker's output reader reports.
enum Event {
    Opened(usize),
    HugePut(usize, u64),
    /// A watcher killed the worker: how, and whether a torn tail was seen right after.
    HugeKilled(usize, String, bool),
    Done(usize, std::io::Result<String>),
}

/// Starts `team` on the store and SIGKILLs each worker as its [`Plan`] says; returns them
/// dead, with their output.
#[allow(clippy::too_many_arguments)]
fn run_round(
    url: &str,
    dir: &Path,
    team: &[&'static str],
    round: u64,
    seed: u64,
    rng: &mut Rng,
    live: &Live,
    ctx: &str,
) -> (Vec<Worker>, u64) {
    let mut torn_seen = 0;
    let start = Instant::now();
    let give_up = start + worker_deadline();
    let (sender, events) = mpsc::channel::<Event>();
    let mut workers: Vec<Worker> = Vec::new();
    let mut plans = Vec::new();
    for (i, role) in team.iter().enumerate() {
        let tag = round * PROCS + i as u64;
        // Every third round, the first writer surely tears the tail.
        let plan = match rng.below(8) {
            _ if round % 3 == 1 && i == 0 => Plan::InHugeWrite {
                at: rng.below(100),
                limit: true,
            },
            0 => Plan::Early(Duration::from_millis(rng.below(151))),
            1 | 2 if *role == W => Plan::InHugeWrite {
                at: rng.below(300),
                limit: rng.below(2) == 0,
            },
            _ => Plan::Timed(Duration::from_millis(50 + rng.below(251))),
        };
        plans.push(plan);
        let mut env = vec![
            ("STORM_TAG", tag.to_string()),
            ("STORM_SEED", seed.to_string()),
        ];
        if let Plan::InHugeWrite { at, limit } = plan {
            env.push(("STORM_HUGE_AT", at.to_string()));
            match limit {
                true => env.push(("STORM_LIMIT_DIR", dir.display().to_string())),
                false => env.push(("STORM_GO", go_file(dir, tag).display().to_string())),
            }
        }
        let mut child = spawn(url, role, &env);
        live.0.lock().unwrap().push(child.id());
        let stdout = child.stdout.take().expect("piped stdout");
        let sender = sender.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let (mut text, mut line) = (String::new(), String::new());
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) if line == "opened\n" => drop(sender.send(Event::Opened(i))),
                    Ok(_) if line.starts_with("begin put ") && line.ends_with(" huge\n") => {
                        let seq = line.split(' ').nth(2).and_then(|s| s.parse().ok());
                        drop(sender.send(Event::HugePut(i, seq.unwrap_or(0))))
                    }
                    Ok(_) => {}
                    Err(e) => return drop(sender.send(Event::Done(i, Err(e)))),
                }
                text.push_str(&line);
            }
            let _ = sender.send(Event::Done(i, Ok(text)));
        });
        workers.push(Worker {
            child,
            tag,
            role,
            plan,
            live: live.clone(),
            text: String::new(),
            kill: String::new(),
        });
    }
    // When each is due to be killed (None: not yet known), and whether it was.
    let mut due: Vec<Option<Instant>> = plans
        .iter()
        .map(|p| match p {
            Plan::Early(after) => Some(start + *after),
            _ => None,
        })
        .collect();
    let mut opened_at: Vec<Option<Instant>> = vec![None; workers.len()];
    let mut done = vec![false; workers.len()];
    let kill = |w: &mut Worker, why: String| {
        if w.kill.is_empty() {
            w.kill = why;
            w.child.kill().expect("SIGKILL a worker");
        }
    };
    let mut watching = 0;
    while watching > 0 || done.iter().any(|d| !d) {
        let now = Instant::now();
        assert!(
            now < give_up,
            "{ctx}: the round did not end within {:?} (a worker hangs opening the store, or \
             its output never ends)",
            worker_deadline()
        );
        for (i, w) in workers.iter_mut().enumerate() {
            if due[i].is_some_and(|at| at <= now) {
                let since = |t: Instant| now.duration_since(t).as_millis();
                let why = match (plans[i], opened_at[i]) {
                    (Plan::InHugeWrite { .. }, Some(t)) => {
                        format!("killed {} ms after opening, no huge put came", since(t))
                    }
                    (_, Some(t)) => format!("killed {} ms after opening", since(t)),
                    (_, None) => format!("killed {} ms after its start", since(start)),
                };
                kill(w, why);
            }
        }
        let wake = due
            .iter()
            .zip(&workers)
            .filter(|(_, w)| w.kill.is_empty())
            .filter_map(|(d, _)| *d)
            .min()
            .unwrap_or(give_up)
            .min(give_up);
        let event = match events.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(event) => event,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let now = Instant::now();
        match event {
            Event::Opened(i) => {
                opened_at[i] = Some(now);
                due[i] = match plans[i] {
                    Plan::Timed(after) => Some(now + after),
                    Plan::InHugeWrite { .. } => Some(now + Duration::from_millis(600)),
                    Plan::Early(_) => due[i],
                };
            }
            Event::HugePut(i, _) if matches!(plans[i], Plan::InHugeWrite { limit: true, .. }) => {
                // It dies by itself; SIGKILL only if it has not within 2 s.
                due[i] = Some(now + Duration::from_secs(2));
            }
            Event::HugePut(i, seq) => {
                let w = &mut workers[i];
                if w.kill.is_empty() {
                    w.kill = "killed in a huge put (watching)".into();
                    watching += 1;
                    let what = format!("kv:{HUGE_KEY}");
                    let bytes = payload(w.tag, seq, what.as_bytes()).len() as u64;
                    let (dir, pid, sender) = (dir.to_path_buf(), w.child.id(), sender.clone());
                    let go = go_file(&dir, w.tag);
                    std::thread::spawn(move || {
                        let (why, torn) = kill_while_growing(&dir, &go, pid, bytes);
                        let _ = sender.send(Event::HugeKilled(i, why, torn));
                    });
                }
            }
            Event::HugeKilled(i, why, torn) => {
                watching -= 1;
                workers[i].kill = why;
                torn_seen += u64::from(torn);
            }
            Event::Done(i, text) => {
                done[i] = true;
                workers[i].text = text.expect("a worker's output is UTF-8");
                if workers[i].kill.is_empty() {
                    // It ended by itself: the status check says whether that was expected.
                    workers[i].kill = match plans[i] {
                        Plan::InHugeWrite { limit: true, .. } => {
                            torn_seen += u64::from(torn_tail_bytes(dir) > 0);
                            "cut short by its file-size limit".into()
                        }
                        _ => "ended by itself".into(),
                    };
                }
            }
        }
    }
    drop(sender);
    (workers, torn_seen)
}

/// The newest segment of the store in `dir`, and its length.
fn newest_segment(dir: &Path) -> Option<(std::path::PathBuf, u64)> {
    let mut newest: Option<(String, std::path::PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("seg-") && newest.as_ref().is_none_or(|(n, _)| name > *n) {
            newest = Some((name, entry.path()));
        }
    }
    let path = newest?.1;
    let len = std::fs::metadata(&path).ok()?.len();
    Some((path, len))
}

/// The file whose creation tells worker `tag` that the parent watches its huge put.
fn go_file(dir: &Path, tag: u64) -> std::path::PathBuf {
    dir.with_file_name(format!("go-{tag}"))
}

/// Bytes of every segment of the store in `dir`, by name.
fn segment_sizes(dir: &Path) -> HashMap<String, u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let len = e.metadata().ok()?.len();
            name.starts_with("seg-").then_some((name, len))
        })
        .collect()
}

/// SIGKILLs the worker `pid`, which waits for `go` to write a frame of about `bytes`, once
/// the segments have grown by 256 KiB: in the middle of that write (a short write, a torn
/// tail), unless the machine is too slow to see it. Returns what it saw, and whether a torn
/// tail was there once the worker was dead (before another writer cut it).
fn kill_while_growing(dir: &Path, go: &Path, pid: u32, bytes: u64) -> (String, bool) {
    let before = segment_sizes(dir);
    std::fs::write(go, b"go").expect("create the go file");
    let start = Instant::now();
    let mut watched = newest_segment(dir);
    let mut polls = 0u64;
    let why = loop {
        polls += 1;
        if polls.is_multiple_of(64) {
            // Another writer may have sealed the segment: look at them all.
            let grown: u64 = segment_sizes(dir)
                .iter()
                .map(|(name, len)| len.saturating_sub(before.get(name).copied().unwrap_or(0)))
                .max()
                .unwrap_or(0);
            if grown >= 256 << 10 {
                break format!("killed writing a {bytes}-byte put, {grown} bytes of it on disk");
            }
            watched = newest_segment(dir);
        }
        if let Some((path, from)) = &watched {
            let len = std::fs::metadata(path).map_or(0, |m| m.len());
            if len >= from + (256 << 10) {
                break format!(
                    "killed writing a {bytes}-byte put, {} bytes of it on disk",
                    len - from
                );
            }
        }
        if start.elapsed() > Duration::from_millis(500) {
            break "killed in a huge put whose write did not show within 500 ms".to_string();
        }
        std::thread::yield_now();
    };
    // SAFETY: kill(2) of a worker this test started; the parent reaps it only after this
    // thread reported back, so the pid is still that worker's.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    // Wait until it is a zombie (its last write ended), then look at the tail.
    let dead = Instant::now();
    while dead.elapsed() < Duration::from_millis(200) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| rest.starts_with('Z'))
        {
            break;
        }
        std::thread::yield_now();
    }
    (why, torn_tail_bytes(dir) > 0)
}

/// One storm on a fresh store with URL options `query`: `rounds` rounds of 4 workers, each
/// killed as its [`Plan`] says; the store checked after every round and at the end.
fn storm(name: &str, query: &str, rounds: u64) {
    let base_seed = seed();
    eprintln!(
        "fs_kill_storm {name}: seed {base_seed} (SILO_STORM_SEED={base_seed} repeats its \
         choices)"
    );
    // Each storm of one run draws its own choices from the run's seed.
    let seed = name.bytes().fold(base_seed, |h, b| mix(h ^ u64::from(b)));
    let started = Instant::now();
    let live = Live::default();
    let _watchdog = Watchdog::start(
        format!("fs_kill_storm {name} (seed {base_seed})"),
        worker_deadline(),
        live.clone(),
    );
    let temp = TempStore::fs(query);
    let dir = temp.dir.path().join("store");
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let team_offset = rng.below(TEAMS.len() as u64);
    let mut torn_rounds = 0;
    let mut torn_at_kill = 0;
    let mut bases = HashSet::new();
    for round in 0..rounds {
        let ctx = format!("{name} seed {base_seed} round {round}");
        let team = TEAMS[((round + team_offset) % TEAMS.len() as u64) as usize];
        let (mut workers, torn) =
            run_round(&temp.url, &dir, &team, round, seed, &mut rng, &live, &ctx);
        torn_at_kill += torn;
        let mut report = Vec::new();
        let mut reports = Vec::new();
        for w in &mut workers {
            // First the output: an operation that failed is reported there.
            let ops = parse_ops(&format!("{ctx}, worker {}", w.tag), &w.text);
            let status = w.child.wait().unwrap();
            let limited = matches!(w.plan, Plan::InHugeWrite { limit: true, .. });
            assert!(
                status.signal() == Some(libc::SIGKILL)
                    || (limited && status.signal() == Some(libc::SIGXFSZ)),
                "{ctx}: worker {} ({}) ended by itself (see its panic above): {status:?}",
                w.tag,
                w.role
            );
            let acked = ops.iter().filter(|o| o.ack.is_some()).count();
            let opened = w.text.lines().any(|l| l == "opened");
            report.push(match (opened, &w.kill) {
                (false, _) => "killed opening".to_string(),
                (true, kill) => format!("{acked} acked, {kill}"),
            });
            model.add_pushes(&ctx, w.tag, &ops);
            reports.push((w.tag, ops));
        }
        drop(workers);
        for (tag, ops) in &reports {
            model.add(&ctx, *tag, ops);
        }
        let torn = torn_tail_bytes(&dir);
        torn_rounds += u64::from(torn > 0);
        check(
            &*temp.store,
            &model,
            &format!("{ctx} (the long-open handle)"),
        );
        let opening = Instant::now();
        let fresh = silo::open(&temp.url)
            .unwrap_or_else(|e| panic!("{ctx}: the store does not open after the kills: {e}"));
        let opening = opening.elapsed();
        // A writer's open cuts the torn tail a kill left: no segment ends in a partial frame.
        let left = torn_tail_bytes(&dir);
        assert_eq!(
            left, 0,
            "{ctx}: {left} bytes of torn tail are still there after a fresh open (which holds \
             the writers' lock and must cut them)"
        );
        check(&*fresh, &model, &format!("{ctx} (a fresh open)"));
        drop(fresh);
        let base = current_base(&dir);
        bases.insert(base.clone());
        eprintln!(
            "{ctx}: {team:?}: {report:?}; torn tail {torn} bytes; CURRENT {base}; an open took \
             {opening:?}"
        );
    }

    let ctx = format!("{name} seed {base_seed} after the storm");
    let count = |kind: &str| match kind {
        "append" => model.appends.values().filter(|a| a.is_some()).count(),
        "put" => model.puts.values().filter(|p| p.acked).count(),
        "push" => model.pushed_acked.len(),
        _ => model.counters.values().map(|c| c.returned.len()).sum(),
    };
    for kind in ["append", "put", "push", "add"] {
        assert!(
            count(kind) >= 20,
            "{ctx}: only {} {kind}s were acknowledged in the whole storm: the workers barely \
             ran, so this run proves little (a slow machine?)",
            count(kind)
        );
    }
    assert!(
        !model.removed.is_empty(),
        "{ctx}: no pop or ack was acknowledged in the whole storm"
    );
    // Every lease a killed claimer held runs out; then drain through a fresh open.
    std::thread::sleep(LEASE + Duration::from_millis(100));
    let store = silo::open(&temp.url).unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
    let last_id = check(&*store, &model, &ctx);
    check_queue_drained(&*store, &model, &ctx);
    drop(store);

    // Reopen, write once more of every kind, and read it back through another open.
    let store = silo::open(&temp.url).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
    let id = store
        .append(LOG_SCOPE, LOG_NS, LOG_KEY, b"after")
        .unwrap_or_else(|e| panic!("{ctx}: append after the storm: {e}"));
    assert!(
        id > last_id,
        "{ctx}: id {id} after the storm, not above {last_id}"
    );
    store.kv_put(KV_SCOPE, b"after", b"storm").unwrap();
    let c0 = counter_key(0);
    let before = store
        .counter_get(COUNTER_SCOPE, COUNTER_NS, c0.as_bytes())
        .unwrap();
    let now = store
        .counter_add(COUNTER_SCOPE, COUNTER_NS, c0.as_bytes(), 1)
        .unwrap();
    assert_eq!(now, before + 1, "{ctx}: counter_add after the storm");
    store.queue_push(QUEUE, &[b"after".to_vec()]).unwrap();
    drop(store);
    let store = silo::open(&temp.url).unwrap_or_else(|e| panic!("{ctx}: second reopen: {e}"));
    let tail = store.scan(LOG_SCOPE, LOG_NS, LOG_KEY, last_id, 10).unwrap();
    assert_eq!(
        tail,
        vec![(id, b"after".to_vec())],
        "{ctx}: the last append"
    );
    assert_eq!(
        store.kv_get(KV_SCOPE, b"after").unwrap(),
        Some(b"storm".to_vec())
    );
    assert_eq!(
        store
            .counter_get(COUNTER_SCOPE, COUNTER_NS, c0.as_bytes())
            .unwrap(),
        now
    );
    assert_eq!(store.queue_pop(QUEUE).unwrap(), Some(b"after".to_vec()));
    eprintln!(
        "{ctx}: {rounds} rounds, {} operations acknowledged, torn tails seen right after a \
         kill mid-write {torn_at_kill}, after a round {torn_rounds}, {} bases seen, {:?}",
        model.acked_ops,
        bases.len(),
        started.elapsed()
    );
}

/// Options that make `fs:` seal a segment every 16 KiB and compact from 64 KiB on.
const TINY: &str = "segment_bytes=16384&compact_min_bytes=65536";

#[test]
fn kill_storm_default_tuning() {
    storm("default", "", 10);
}

#[test]
fn kill_storm_tiny_segments() {
    storm("tiny", TINY, 10);
}

#[test]
fn kill_storm_tiny_segments_sync_full() {
    storm("sync-full", &format!("sync=full&{TINY}"), 8);
}
