//! Crash tests for the `fs:` engine, in the style of SQLite's and redb's: a seeded workload of
//! every kind of write (puts of 0 bytes to a few KiB whose bytes encode the operation that
//! wrote them, batches, deletes, drains, appends, pushes, pops, claims and acks on a manual
//! clock so leases expire and items are dead-lettered, counters, clears, `apply_once` around
//! 2–3 operations, explicit compactions) runs on an in-memory directory whose every mutating
//! storage call (writes, appends, truncates, syncs, creating, removing and renaming names)
//! can be made to fail. `MemoryStorage` running the same workload is the model. What this
//! file proves, reproducibly by seed:
//!
//! - **Crash at every mutating call** (`FaultPlan::Crash`; a dense sample when there are more
//!   than 3000), and at every write or append also death right after it wrote half its bytes,
//!   with default and with tiny tuning (4 KiB segments, compaction from 16 KiB, so crashes
//!   land inside seals and compactions), under `sync=full` and `sync=normal`. After `kill -9`
//!   alone (a copy of the bytes written), a reopened store holds every acknowledged operation
//!   and possibly the one in flight, in both modes. After a power loss as well, `sync=full`
//!   still does; `sync=normal` holds a prefix of the operations that contains at least every
//!   operation a segment sync covered. The reopened store accepts a write, issues a log id
//!   above every id it holds, and reopens again to the same state.
//! - **Failed and short writes without a crash** (`FaultPlan::Fail`, `ShortWrite(n)`): the
//!   operation that met the fault returns `Err`, the same handle carries on with the rest of
//!   the workload, and both it and a reopen equal the model in which the failed operation
//!   left no effect — unless the fault struck a sync after its frame was written.
//! - **Torn tails**: the active segment cut at every byte of its last frames, or with its
//!   tail zero-filled, reopens to the operations whose frames are whole.
//! - **Bit flips**: one byte flipped in any frame of a sealed segment but its seal, in a
//!   frame of the active segment followed by a whole frame, or in a compacted base is
//!   `Error::Corrupt` naming the file (and, for a frame with a whole frame after it, the
//!   offset), on open and when a running store catches up; a flip in the active segment's
//!   last frame is a torn tail.
//! - **FORMAT**: a newer format is `Unsupported`, garbage is `Corrupt`, a non-empty directory
//!   without one is `Config`.
//!
//! Regression tests for what these found: a crash while a store is created, a failed sync of
//! a seal, a flipped byte in a seal, an acknowledged `sync=full` write after a compaction that
//! a power loss took away, and an operation that returned `Err` although its effect stayed.
//!
//! State is compared through the contract only: `state_scan` of every scope and namespace,
//! `scan` of every log, `counter_get`, `queue_len`, dead letters, `stat` counts, the queues'
//! contents (popped to the end on both sides, in order) and every `apply_once` key's reply.

use std::collections::BTreeSet;
use std::io;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use silo::fs::{FsStore, FsTuning};
use silo::{
    Clock, Error, FunctionStorage, KeyRange, MemoryStorage, Selection, StoreOptions, SyncMode,
};
use silo_engine::{
    Dir, FaultPlan, Faults, FaultyDir, FaultyStore, LockMode, MemDir, MemShared, MemStore, Store,
    StoreLock,
};

// --------------------------------------------------------------------------- parameters

/// The manual clock's start.
const T0: i64 = 1_700_000_000_000;
/// Where every dump moves the clock to: far past every lease, so every claimed item is
/// visible again when the queues are drained.
const T_END: i64 = T0 + 1_000_000_000;
/// Low, so that redeliveries reach the dead-letter list within a short workload.
const MAX_ATTEMPTS: u32 = 2;
/// Most crash points one configuration visits; more are sampled densely.
const MAX_POINTS: usize = 3000;

const SCOPES: [&[u8]; 3] = [b"job-a", b"job-b", b"\x00odd/../scope\xff"];
const NSS: [&[u8]; 2] = [b"", b"ns"];
const KEYS: usize = 6;
const LOGS: [(&[u8], &[u8]); 2] = [(b"", b"log"), (b"ns", b"events")];
const COUNTERS: [(&[u8], &[u8]); 2] = [(b"", b"n"), (b"ns", b"hits")];
const ONCE_KEYS: usize = 5;
const FINGERPRINT: &[u8] = b"fp";
const DELIBERATE: &str = "deliberate failure inside apply_once";

fn tiny() -> FsTuning {
    FsTuning {
        segment_bytes: 4096,
        compact_min_bytes: 16384,
    }
}

fn options(sync: SyncMode, clock: &Clock) -> StoreOptions {
    StoreOptions {
        sync,
        max_attempts: MAX_ATTEMPTS,
        busy_timeout: Duration::from_secs(5),
        clock: clock.clone(),
        ..StoreOptions::default()
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i}").into_bytes()
}

// ---------------------------------------------------------------------------------- PRNG

/// xorshift64*: tiny, seedable, the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// -------------------------------------------------------------------------------- values

/// A value of `len` bytes that names the operation (`tag`) that wrote it: from 8 bytes on, a
/// header (tag, length) and a pattern derived from the tag, so a torn value, or one mixed
/// from two writes, is not well formed.
fn value(tag: u32, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| (tag as usize * 31 + i * 7 + 3) as u8)
        .collect();
    if len >= 8 {
        v[..4].copy_from_slice(&tag.to_le_bytes());
        v[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    }
    v
}

fn well_formed(v: &[u8]) -> bool {
    if v.len() < 8 {
        return true;
    }
    let tag = u32::from_le_bytes(v[..4].try_into().unwrap());
    value(tag, v.len()) == v
}

fn fnv(v: &[u8]) -> u64 {
    v.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A value for a dump line: length, digest and the writing operation's tag.
fn show(v: &[u8]) -> String {
    let tag = if v.len() >= 8 {
        format!("op{}", u32::from_le_bytes(v[..4].try_into().unwrap()) / 16)
    } else {
        "short".into()
    };
    let bad = if well_formed(v) { "" } else { " TORN/MIXED" };
    format!("[{} bytes {tag} #{:016x}{bad}]", v.len(), fnv(v))
}

const SIZES: [usize; 12] = [0, 0, 1, 5, 8, 16, 64, 200, 700, 1500, 3000, 5000];

// ------------------------------------------------------------------------------ workload

#[derive(Clone, Debug)]
enum Sel {
    Keys(Vec<usize>),
    Range(usize, usize),
    All,
}

#[derive(Clone)]
enum Op {
    /// `kv_put` on the empty namespace, `state_put` on the other.
    Put {
        scope: usize,
        ns: usize,
        key: usize,
        value: Vec<u8>,
    },
    PutMany {
        scope: usize,
        ns: usize,
        items: Vec<(usize, Vec<u8>)>,
    },
    Delete {
        scope: usize,
        ns: usize,
        sel: Sel,
    },
    Drain {
        scope: usize,
        ns: usize,
    },
    Append {
        scope: usize,
        log: usize,
        value: Vec<u8>,
    },
    Push {
        scope: usize,
        items: Vec<Vec<u8>>,
    },
    Pop {
        scope: usize,
    },
    Claim {
        scope: usize,
        lease_ms: u64,
    },
    /// Acks the `nth` (modulo) claim still held by the worker.
    Ack {
        nth: usize,
    },
    Release {
        nth: usize,
    },
    CounterAdd {
        scope: usize,
        counter: usize,
        delta: i64,
    },
    Clear {
        scope: usize,
    },
    /// `apply_once` around `ops`; with `fail` the effect fails after them.
    Once {
        key: usize,
        ops: Vec<Op>,
        fail: bool,
    },
    Advance {
        ms: u64,
    },
    Compact,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Put {
                scope,
                ns,
                key,
                value,
            } => write!(f, "put(s{scope}, ns{ns}, k{key}, {} bytes)", value.len()),
            Op::PutMany { scope, ns, items } => {
                write!(f, "put_many(s{scope}, ns{ns}, {} pairs)", items.len())
            }
            Op::Delete { scope, ns, sel } => write!(f, "delete(s{scope}, ns{ns}, {sel:?})"),
            Op::Drain { scope, ns } => write!(f, "drain(s{scope}, ns{ns})"),
            Op::Append { scope, log, value } => {
                write!(f, "append(s{scope}, log{log}, {} bytes)", value.len())
            }
            Op::Push { scope, items } => write!(f, "push(s{scope}, {} items)", items.len()),
            Op::Pop { scope } => write!(f, "pop(s{scope})"),
            Op::Claim { scope, lease_ms } => write!(f, "claim(s{scope}, {lease_ms} ms)"),
            Op::Ack { nth } => write!(f, "ack(claim #{nth})"),
            Op::Release { nth } => write!(f, "release(claim #{nth})"),
            Op::CounterAdd {
                scope,
                counter,
                delta,
            } => write!(f, "counter_add(s{scope}, c{counter}, {delta})"),
            Op::Clear { scope } => write!(f, "clear(s{scope})"),
            Op::Once { key, ops, fail } => {
                write!(
                    f,
                    "apply_once(once-{key}, {ops:?}{})",
                    if *fail { ", fails" } else { "" }
                )
            }
            Op::Advance { ms } => write!(f, "clock +{ms} ms"),
            Op::Compact => write!(f, "compact()"),
        }
    }
}

/// `n` operations from `seed`. Values are tagged `index * 16 + part`.
fn workload(seed: u64, n: usize) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| gen_op(&mut rng, i as u32, 0, true))
        .collect()
}

fn gen_value(rng: &mut Rng, tag: u32) -> Vec<u8> {
    let len = SIZES[rng.below(SIZES.len())];
    value(tag, len)
}

fn gen_op(rng: &mut Rng, i: u32, part: u32, top: bool) -> Op {
    let scope = rng.below(SCOPES.len());
    let ns = rng.below(NSS.len());
    let tag = i * 16 + part;
    // Inside apply_once: only operations that need no worker bookkeeping.
    let roll = if top { rng.below(100) } else { rng.below(60) };
    match roll {
        0..=17 => Op::Put {
            scope,
            ns,
            key: rng.below(KEYS),
            value: gen_value(rng, tag),
        },
        18..=24 => Op::PutMany {
            scope,
            ns,
            items: (0..1 + rng.below(4))
                .map(|j| (rng.below(KEYS), gen_value(rng, tag + j as u32)))
                .collect(),
        },
        25..=30 => Op::Delete {
            scope,
            ns,
            sel: match rng.below(3) {
                0 => Sel::Keys((0..1 + rng.below(3)).map(|_| rng.below(KEYS)).collect()),
                1 => Sel::Range(rng.below(KEYS + 1), rng.below(KEYS + 1)),
                _ => Sel::All,
            },
        },
        31..=44 => Op::Append {
            scope,
            log: rng.below(LOGS.len()),
            value: gen_value(rng, tag),
        },
        45..=54 => Op::Push {
            scope,
            items: (0..1 + rng.below(4))
                .map(|j| gen_value(rng, tag + j as u32))
                .collect(),
        },
        55..=59 => Op::CounterAdd {
            scope,
            counter: rng.below(COUNTERS.len()),
            delta: rng.below(30) as i64 - 5,
        },
        60..=66 => Op::Pop { scope },
        67..=73 => Op::Claim {
            scope,
            lease_ms: 500 + rng.below(3500) as u64,
        },
        74..=78 => Op::Ack {
            nth: rng.below(1000),
        },
        79..=80 => Op::Release {
            nth: rng.below(1000),
        },
        81..=82 => Op::Drain { scope, ns },
        83..=84 => Op::Clear { scope },
        85..=91 => Op::Once {
            key: rng.below(ONCE_KEYS),
            ops: (0..2 + rng.below(2))
                .map(|j| gen_op(rng, i, 8 + 2 * j as u32, false))
                .collect(),
            fail: rng.below(5) == 0,
        },
        92..=97 => Op::Advance {
            ms: 100 + rng.below(3000) as u64,
        },
        _ => Op::Compact,
    }
}

// -------------------------------------------------------------------------------- runner

/// A store the workload runs on: `FunctionStorage` plus an explicit compaction (a no-op on
/// the model).
trait Target: FunctionStorage {
    fn compact_now(&self) -> silo::Result<()>;
}

impl Target for MemoryStorage {
    fn compact_now(&self) -> silo::Result<()> {
        Ok(())
    }
}

impl<D: Dir> Target for FsStore<D> {
    fn compact_now(&self) -> silo::Result<()> {
        self.compact()
    }
}

/// The worker's side of the workload: its clock and the claims it holds.
struct Worker {
    clock: Clock,
    claims: Vec<(usize, i64)>,
}

impl Worker {
    fn new(clock: Clock) -> Self {
        Worker {
            clock,
            claims: Vec::new(),
        }
    }
}

fn selection(sel: &Sel) -> Selection {
    match sel {
        Sel::Keys(keys) => Selection::Keys(keys.iter().map(|&k| key(k)).collect()),
        Sel::Range(a, b) => Selection::Range(KeyRange::new(key(*a), key(*b))),
        Sel::All => Selection::All,
    }
}

/// Runs one operation that needs no worker state; renders its result.
fn apply_plain(s: &dyn FunctionStorage, op: &Op) -> silo::Result<String> {
    Ok(match op {
        Op::Put {
            scope,
            ns,
            key: k,
            value,
        } => {
            if NSS[*ns].is_empty() {
                s.kv_put(SCOPES[*scope], &key(*k), value)?;
            } else {
                s.state_put(SCOPES[*scope], NSS[*ns], &key(*k), value)?;
            }
            "ok".into()
        }
        Op::PutMany { scope, ns, items } => {
            let items: Vec<_> = items.iter().map(|(k, v)| (key(*k), v.clone())).collect();
            s.state_put_many(SCOPES[*scope], NSS[*ns], &items)?;
            "ok".into()
        }
        Op::Delete { scope, ns, sel } => s
            .state_delete(SCOPES[*scope], NSS[*ns], &selection(sel))?
            .to_string(),
        Op::Drain { scope, ns } => {
            let pairs = s.state_drain(SCOPES[*scope], NSS[*ns])?;
            let shown: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", k.escape_ascii(), show(v)))
                .collect();
            format!("drained {shown:?}")
        }
        Op::Append { scope, log, value } => {
            let (ns, k) = LOGS[*log];
            s.append(SCOPES[*scope], ns, k, value)?.to_string()
        }
        Op::Push { scope, items } => {
            s.queue_push(SCOPES[*scope], items)?;
            "ok".into()
        }
        Op::Pop { scope } => match s.queue_pop(SCOPES[*scope])? {
            Some(v) => format!("popped {}", show(&v)),
            None => "empty".into(),
        },
        Op::CounterAdd {
            scope,
            counter,
            delta,
        } => {
            let (ns, k) = COUNTERS[*counter];
            s.counter_add(SCOPES[*scope], ns, k, *delta)?.to_string()
        }
        Op::Clear { scope } => {
            s.clear(SCOPES[*scope])?;
            "ok".into()
        }
        other => panic!("{other:?} is not a plain operation"),
    })
}

/// Runs one operation of the workload; renders its result.
fn apply(s: &dyn Target, w: &mut Worker, op: &Op) -> silo::Result<String> {
    match op {
        Op::Claim { scope, lease_ms } => {
            match s.queue_claim(SCOPES[*scope], Duration::from_millis(*lease_ms))? {
                Some(c) => {
                    w.claims.push((*scope, c.id));
                    Ok(format!(
                        "claimed {} as {} attempt {}",
                        show(&c.value),
                        c.id,
                        c.attempt
                    ))
                }
                None => Ok("nothing to claim".into()),
            }
        }
        Op::Ack { nth } | Op::Release { nth } => {
            if w.claims.is_empty() {
                return Ok("no claim held".into());
            }
            let (scope, id) = w.claims[nth % w.claims.len()];
            let done = if matches!(op, Op::Ack { .. }) {
                s.queue_ack(SCOPES[scope], id)?
            } else {
                s.queue_release(SCOPES[scope], id)?
            };
            // Forgotten only once the store answered, as a worker would.
            w.claims.retain(|&(_, c)| c != id);
            Ok(format!("{id}: {done}"))
        }
        Op::Once { key: k, ops, fail } => {
            let name = format!("once-{k}");
            let mut effect = |tx: &dyn FunctionStorage| -> silo::Result<Vec<u8>> {
                let mut parts = Vec::new();
                for op in ops {
                    parts.push(apply_plain(tx, op)?);
                }
                if *fail {
                    return Err(Error::invalid(DELIBERATE));
                }
                Ok(parts.join("; ").into_bytes())
            };
            match s.apply_once(name.as_bytes(), FINGERPRINT, &mut effect) {
                Ok(reply) => Ok(format!("replied {}", String::from_utf8_lossy(&reply))),
                Err(Error::InvalidInput { message }) if message.contains(DELIBERATE) => {
                    Ok("effect failed".into())
                }
                Err(e) => Err(e),
            }
        }
        Op::Advance { ms } => {
            w.clock.advance(Duration::from_millis(*ms));
            Ok(format!("t={}", w.clock.now_ms() - T0))
        }
        Op::Compact => {
            s.compact_now()?;
            Ok("ok".into())
        }
        plain => apply_plain(s, plain),
    }
}

// ------------------------------------------------------------------------------- observe

fn advance_to(clock: &Clock, t: i64) {
    let now = clock.now_ms();
    if now < t {
        clock.advance(Duration::from_millis((t - now) as u64));
    }
}

/// Everything observable without changing the store.
fn snapshot(s: &dyn FunctionStorage) -> silo::Result<Vec<String>> {
    let mut out = Vec::new();
    for (si, scope) in SCOPES.iter().enumerate() {
        for (ni, ns) in NSS.iter().enumerate() {
            for (k, v) in s.state_scan(scope, ns, &KeyRange::all(), false, u64::MAX)? {
                out.push(format!("s{si} ns{ni} {}={}", k.escape_ascii(), show(&v)));
            }
        }
        for (li, (ns, k)) in LOGS.iter().enumerate() {
            let entries = s.scan(scope, ns, k, 0, u64::MAX)?;
            if entries.windows(2).any(|w| w[0].0 >= w[1].0) {
                out.push(format!("s{si} log{li} IDS NOT STRICTLY INCREASING"));
            }
            for (id, v) in entries {
                out.push(format!("s{si} log{li} #{id}={}", show(&v)));
            }
        }
        for (ci, (ns, k)) in COUNTERS.iter().enumerate() {
            out.push(format!("s{si} c{ci}={}", s.counter_get(scope, ns, k)?));
        }
        out.push(format!("s{si} queue_len={}", s.queue_len(scope)?));
        for d in s.queue_dead_letters(scope, u64::MAX)? {
            out.push(format!(
                "s{si} dead {} attempts={} at={}",
                show(&d.value),
                d.attempts,
                d.dead_at_ms - T0
            ));
        }
    }
    let st = s.stat()?;
    out.push(format!(
        "stat scopes={} state={} log={} counters={} queue={} dead={}",
        st.scopes, st.state_entries, st.log_entries, st.counters, st.queue_items, st.dead_letters
    ));
    Ok(out)
}

/// The snapshot, then what only changing the store shows: the queues popped to the end (the
/// clock moved past every lease first), the dead letters that made, and every `apply_once`
/// key's stored reply (an absent key records "absent").
fn dump(s: &dyn FunctionStorage, clock: &Clock) -> silo::Result<Vec<String>> {
    let mut out = snapshot(s)?;
    advance_to(clock, T_END);
    for (si, scope) in SCOPES.iter().enumerate() {
        let mut popped = 0;
        while let Some(v) = s.queue_pop(scope)? {
            out.push(format!("s{si} popped {}", show(&v)));
            popped += 1;
            assert!(popped < 100_000, "a queue that never empties");
        }
        out.push(format!(
            "s{si} queue_len after drain={}",
            s.queue_len(scope)?
        ));
        out.push(format!(
            "s{si} dead letters after drain={}",
            s.queue_dead_letters(scope, u64::MAX)?.len()
        ));
    }
    for k in 0..ONCE_KEYS {
        let reply = s.apply_once(format!("once-{k}").as_bytes(), FINGERPRINT, &mut |_| {
            Ok(b"absent".to_vec())
        })?;
        out.push(format!("once-{k} -> {}", String::from_utf8_lossy(&reply)));
    }
    Ok(out)
}

fn max_log_id(s: &dyn FunctionStorage) -> silo::Result<i64> {
    let mut max = 0;
    for scope in SCOPES {
        for (ns, k) in LOGS {
            if let Some((id, _)) = s.scan(scope, ns, k, 0, u64::MAX)?.last() {
                max = max.max(*id);
            }
        }
    }
    Ok(max)
}

/// Where two dumps first differ.
fn diff(got: &[String], want: &[String]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    format!(
        "first difference at line {at}: store {:?} vs model {:?} ({} vs {} lines)",
        got.get(at),
        want.get(at),
        got.len(),
        want.len()
    )
}

// --------------------------------------------------------------------------------- model

/// The model's answers: each operation's result, and the dump after every prefix.
struct Model {
    ops: Vec<Op>,
    results: Vec<String>,
    dumps: Vec<Vec<String>>,
}

fn run_model(ops: &[Op], skip: Option<usize>) -> (MemoryStorage, Clock, Vec<String>) {
    let clock = Clock::manual(T0);
    let model = MemoryStorage::with_options(options(SyncMode::Normal, &clock));
    let mut worker = Worker::new(clock.clone());
    let mut results = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if skip == Some(i) {
            results.push("(skipped)".into());
            continue;
        }
        let r = apply(&model, &mut worker, op)
            .unwrap_or_else(|e| panic!("the model failed op {i} {op:?}: {e}"));
        results.push(r);
    }
    (model, clock, results)
}

impl Model {
    fn new(ops: Vec<Op>) -> Self {
        let (_, _, results) = run_model(&ops, None);
        let dumps = (0..=ops.len())
            .map(|n| {
                let (model, clock, _) = run_model(&ops[..n], None);
                dump(&model, &clock).expect("the model dumps")
            })
            .collect();
        Model {
            ops,
            results,
            dumps,
        }
    }
}

// ------------------------------------------------------------------------ tracing a run

/// One mutating storage call of a run: during which operation of the workload (`None` =
/// opening the store) and what (`append seg-….slf`, `sync CURRENT.tmp`, `rename …`).
#[derive(Clone, Debug)]
struct Event {
    op: Option<usize>,
    what: String,
    /// Bytes a write or append carried.
    bytes: usize,
}

#[derive(Debug, Default)]
struct Trace {
    op: Option<usize>,
    events: Vec<Event>,
}

type SharedTrace = Arc<Mutex<Trace>>;

/// Records `what` for every mutating call `f` made (the faults' count says whether it did).
fn note<T>(
    faults: &Faults,
    trace: &SharedTrace,
    what: impl FnOnce() -> String,
    bytes: usize,
    f: impl FnOnce() -> T,
) -> T {
    let before = faults.seen();
    let out = f();
    let after = faults.seen();
    if after > before {
        let what = what();
        let mut t = trace.lock().unwrap();
        let op = t.op;
        for _ in before..after {
            t.events.push(Event {
                op,
                what: what.clone(),
                bytes,
            });
        }
    }
    out
}

/// A `FaultyDir<MemDir>` that names every mutating call it counts.
#[derive(Clone, Debug)]
struct TraceDir {
    inner: FaultyDir<MemDir>,
    trace: SharedTrace,
}

#[derive(Debug)]
struct TraceFile {
    inner: FaultyStore<MemStore>,
    name: String,
    faults: Faults,
    trace: SharedTrace,
}

impl Dir for TraceDir {
    type File = TraceFile;
    type Shared = MemShared;

    fn open_shared(&self, name: &str) -> io::Result<MemShared> {
        note(
            self.inner.faults(),
            &self.trace,
            || format!("create {name}"),
            0,
            || self.inner.open_shared(name),
        )
    }

    fn open(&self, name: &str, create: bool) -> io::Result<Option<TraceFile>> {
        let faults = self.inner.faults().clone();
        let file = note(
            &faults,
            &self.trace,
            || format!("create {name}"),
            0,
            || self.inner.open(name, create),
        )?;
        Ok(file.map(|inner| TraceFile {
            inner,
            name: name.to_owned(),
            faults,
            trace: self.trace.clone(),
        }))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        note(
            self.inner.faults(),
            &self.trace,
            || format!("remove {name}"),
            0,
            || self.inner.remove(name),
        )
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        note(
            self.inner.faults(),
            &self.trace,
            || format!("rename {from} {to}"),
            0,
            || self.inner.rename(from, to),
        )
    }

    fn sync(&self) -> io::Result<()> {
        note(
            self.inner.faults(),
            &self.trace,
            || "dirsync".into(),
            0,
            || self.inner.sync(),
        )
    }

    fn describe(&self, name: &str) -> String {
        self.inner.describe(name)
    }
}

impl TraceFile {
    fn note<T>(&self, kind: &str, bytes: usize, f: impl FnOnce() -> T) -> T {
        note(
            &self.faults,
            &self.trace,
            || format!("{kind} {}", self.name),
            bytes,
            f,
        )
    }
}

impl Store for TraceFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.note("write", data.len(), || self.inner.write_at(data, offset))
    }

    fn append(&self, data: &[u8]) -> io::Result<u64> {
        self.note("append", data.len(), || self.inner.append(data))
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.note("truncate", 0, || self.inner.truncate(len))
    }

    fn sync(&self) -> io::Result<()> {
        self.note("sync", 0, || self.inner.sync())
    }

    fn lock(&self, mode: LockMode) -> io::Result<StoreLock> {
        self.inner.lock(mode)
    }

    fn try_lock(&self, mode: LockMode) -> io::Result<Option<StoreLock>> {
        self.inner.try_lock(mode)
    }
}

/// Runs the whole workload without a fault, naming every mutating call; checks every result
/// against the model.
fn dry_run(model: &Model, sync: SyncMode, tuning: FsTuning) -> Vec<Event> {
    let trace = SharedTrace::default();
    let dir = TraceDir {
        inner: FaultyDir::sharing(MemDir::new(), Faults::never()),
        trace: trace.clone(),
    };
    let clock = Clock::manual(T0);
    let store = FsStore::open_in(dir, options(sync, &clock), tuning).expect("open");
    let mut worker = Worker::new(clock);
    for (i, op) in model.ops.iter().enumerate() {
        trace.lock().unwrap().op = Some(i);
        let r = apply(&store, &mut worker, op).unwrap_or_else(|e| panic!("op {i} {op:?}: {e}"));
        assert_eq!(
            r, model.results[i],
            "op {i} {op:?} answered unlike the model"
        );
    }
    std::mem::take(&mut trace.lock().unwrap().events)
}

fn describe_event(events: &[Event], k: usize) -> String {
    match events.get(k) {
        Some(Event { op: None, what, .. }) => format!("{what} while opening"),
        Some(Event {
            op: Some(i), what, ..
        }) => format!("{what} in op {i}"),
        None => "past the end".into(),
    }
}

// ---------------------------------------------------------------------------- utilities

/// A fresh directory holding a copy of `src`'s current bytes (all durable), each file passed
/// through `edit` first.
fn copy_dir(src: &MemDir, edit: impl Fn(&str, &mut Vec<u8>)) -> MemDir {
    let dst = MemDir::new();
    for name in src.list().unwrap() {
        let mut bytes = src.file(&name).unwrap().bytes();
        edit(&name, &mut bytes);
        let file = dst.open(&name, true).unwrap().unwrap();
        file.write_at(&bytes, 0).unwrap();
        file.sync().unwrap();
    }
    dst
}

/// The `(start, end)` of every whole frame in a segment's bytes.
fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 20 <= bytes.len() && &bytes[at..at + 4] == b"SLF1" {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let end = at + 20 + len;
        if end > bytes.len() {
            break;
        }
        out.push((at, end));
        at = end;
    }
    out
}

fn names(dir: &MemDir, prefix: &str) -> Vec<String> {
    dir.list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(prefix) && n.ends_with(".slf"))
        .collect()
}

/// The crash points to visit: all of `0..total`, or a dense sample of `MAX_POINTS` spread
/// over it (reproducible: a fixed stride from a seeded start) plus the first and last 50.
fn points(total: usize, seed: u64) -> Vec<usize> {
    if total <= MAX_POINTS {
        return (0..total).collect();
    }
    let mut set: BTreeSet<usize> = (0..50).chain(total - 50..total).collect();
    let stride = total as f64 / MAX_POINTS as f64;
    let offset = (Rng::new(seed).next() % 1000) as f64 / 1000.0 * stride;
    for j in 0..MAX_POINTS {
        set.insert(((offset + j as f64 * stride) as usize).min(total - 1));
    }
    set.into_iter().collect()
}

fn fail_report(what: &str, failures: &[String], checked: usize) {
    if !failures.is_empty() {
        let shown: Vec<&String> = failures.iter().take(12).collect();
        panic!(
            "{what}: {} of {checked} cases failed; the first:\n{}",
            failures.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

// --------------------------------------------------------------------- checking a reopen

/// Opens `dir`, requires its state to equal the model after one of the prefixes in
/// `allowed`, then writes once more (a log id above every id held) and reopens to the same
/// state. Returns the prefix matched.
fn check_reopen(
    dir: &MemDir,
    model: &Model,
    sync: SyncMode,
    tuning: FsTuning,
    allowed: RangeInclusive<usize>,
) -> Result<usize, String> {
    check_reopen_with(dir, model, sync, tuning, allowed, true)
}

/// [`check_reopen`]; without `further`, only the state after opening is compared.
fn check_reopen_with(
    dir: &MemDir,
    model: &Model,
    sync: SyncMode,
    tuning: FsTuning,
    allowed: RangeInclusive<usize>,
    further: bool,
) -> Result<usize, String> {
    let clock = Clock::manual(T_END);
    let store = FsStore::open_in(dir.clone(), options(sync, &clock), tuning)
        .map_err(|e| format!("reopening failed: {e}"))?;
    let got = dump(&store, &clock).map_err(|e| format!("reading the reopened store: {e}"))?;
    let Some(prefix) = allowed.clone().rev().find(|&p| model.dumps[p] == got) else {
        let nearest = (0..model.dumps.len())
            .rev()
            .find(|&p| model.dumps[p] == got)
            .map_or("no prefix at all".to_string(), |p| format!("prefix {p}"));
        let end = *allowed.end();
        return Err(format!(
            "state matches no allowed prefix {allowed:?} (it matches {nearest}); against \
             prefix {end}: {}",
            diff(&got, &model.dumps[end])
        ));
    };
    if !further {
        return Ok(prefix);
    }
    let max_id = max_log_id(&store).map_err(|e| e.to_string())?;
    let written = value(0xffff_0000, 300);
    let further = store
        .kv_put(b"after", b"k", &written)
        .and_then(|()| store.append(b"after", b"", b"log", &written))
        .map_err(|e| format!("a write after reopening failed: {e}"))?;
    if further <= max_id {
        return Err(format!(
            "a log id {further} after reopening, not above the {max_id} already held"
        ));
    }
    let settled = dump(&store, &clock).map_err(|e| format!("second dump: {e}"))?;
    drop(store);
    let store = FsStore::open_in(dir.clone(), options(sync, &clock), tuning)
        .map_err(|e| format!("the second reopen failed: {e}"))?;
    let kv = store.kv_get(b"after", b"k").map_err(|e| e.to_string())?;
    let log = store
        .scan(b"after", b"", b"log", 0, u64::MAX)
        .map_err(|e| e.to_string())?;
    if kv.as_deref() != Some(&written[..]) || log != vec![(further, written.clone())] {
        return Err("the write after reopening did not survive the next reopen".into());
    }
    let again = dump(&store, &clock).map_err(|e| format!("dump after second reopen: {e}"))?;
    if again != settled {
        return Err(format!(
            "the second reopen changed the state: {}",
            diff(&again, &settled)
        ));
    }
    Ok(prefix)
}

// ------------------------------------------------------------------------- crash points

/// What crash tests found, for the test's summary line.
struct Visited {
    points: usize,
    total: usize,
    /// Of those, writes that also died torn.
    torn: usize,
    /// Crash points after which the in-flight operation survived (kill -9 alone).
    in_flight_kept: usize,
    /// Crash points after which a power loss took acknowledged operations away.
    acked_lost: usize,
}

impl std::fmt::Display for Visited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} crash points, {} of them also torn; the op in flight kept after {}; \
             acknowledged ops lost to power loss after {}",
            self.points, self.total, self.torn, self.in_flight_kept, self.acked_lost
        )
    }
}

/// Crashes at every mutating call of the workload (`opening`: of creating the store).
fn crash_everywhere(
    seed: u64,
    n: usize,
    sync: SyncMode,
    tuning: FsTuning,
    opening: bool,
) -> Visited {
    let model = Model::new(workload(seed, n));
    let events = dry_run(&model, sync, tuning);
    let total = events.len();
    let first = events.iter().take_while(|e| e.op.is_none()).count();
    let visit: Vec<usize> = if opening {
        (0..first).collect()
    } else {
        points(total - first, seed)
            .into_iter()
            .map(|k| k + first)
            .collect()
    };
    let mut failures = Vec::new();
    let (mut in_flight_kept, mut acked_lost, mut torn) = (0, 0, 0);
    // At every call, a crash; at a write or append, also death right after it wrote half
    // its bytes (a torn write, which a crash alone never leaves).
    let runs = visit.iter().flat_map(|&k| {
        let ev = &events[k];
        let tearable =
            ev.bytes > 1 && (ev.what.starts_with("append ") || ev.what.starts_with("write "));
        std::iter::once((k, FaultPlan::Crash))
            .chain(tearable.then_some((k, FaultPlan::ShortWrite(ev.bytes / 2))))
    });
    for (k, plan) in runs {
        torn += usize::from(plan != FaultPlan::Crash);
        match crash_at(&model, &events, k, plan, sync, tuning) {
            Ok(Outcome {
                acked,
                killed,
                powered,
            }) => {
                in_flight_kept += usize::from(killed > acked);
                acked_lost += usize::from(powered < acked);
            }
            Err(e) => failures.push(format!(
                "seed {seed} {sync:?} {tuning:?}: {plan:?} at mutating call {k} ({}): {e}",
                describe_event(&events, k)
            )),
        }
    }
    fail_report(
        &format!("crashes, seed {seed}, {sync:?}, {tuning:?}"),
        &failures,
        visit.len() + torn,
    );
    Visited {
        points: visit.len(),
        total,
        torn,
        in_flight_kept,
        acked_lost,
    }
}

/// The prefixes one crash point's reopens matched.
struct Outcome {
    acked: usize,
    killed: usize,
    powered: usize,
}

fn crash_at(
    model: &Model,
    events: &[Event],
    k: usize,
    plan: FaultPlan,
    sync: SyncMode,
    tuning: FsTuning,
) -> Result<Outcome, String> {
    let mem = MemDir::new();
    let faults = Faults::new(k as u64, plan);
    let clock = Clock::manual(T0);
    let mut acked = 0;
    let mut in_flight = false;
    match FsStore::open_in(
        FaultyDir::sharing(mem.clone(), faults.clone()),
        options(sync, &clock),
        tuning,
    ) {
        Err(_) => {}
        Ok(store) => {
            let mut worker = Worker::new(clock);
            for (i, op) in model.ops.iter().enumerate() {
                match apply(&store, &mut worker, op) {
                    Ok(r) if r == model.results[i] => acked += 1,
                    Ok(r) => {
                        return Err(format!(
                            "op {i} {op:?} answered {r:?}, the model {:?}",
                            model.results[i]
                        ));
                    }
                    Err(_) => {
                        in_flight = true;
                        break;
                    }
                }
                // The process dies at the fault (a short write leaves the store working).
                if faults.fired() {
                    break;
                }
            }
        }
    }
    if !faults.fired() {
        return Err("the fault never struck: the workload's calls are not deterministic".into());
    }
    let upper = acked + usize::from(in_flight);

    // kill -9 alone: every byte written survives, so every acknowledged op must.
    let killed = copy_dir(&mem, |_, _| {});
    let killed = check_reopen(&killed, model, sync, tuning, acked..=upper)
        .map_err(|e| format!("after kill -9 (acked {acked}, in flight {in_flight}): {e}"))?;

    // Power loss too: sync=full keeps every acknowledged op; sync=normal a prefix that
    // holds at least what the last segment sync before the crash covered.
    mem.power_loss();
    let lower = match sync {
        SyncMode::Full => acked,
        _ => events[..k]
            .iter()
            .rev()
            .find(|e| e.what.starts_with("sync seg-"))
            .and_then(|e| e.op)
            .unwrap_or(0),
    };
    let powered = check_reopen(&mem, model, sync, tuning, lower..=upper).map_err(|e| {
        format!("after power loss (acked {acked}, in flight {in_flight}, at least {lower}): {e}")
    })?;
    Ok(Outcome {
        acked,
        killed,
        powered,
    })
}

/// Operations per workload; more with tiny segments, so that compactions start on their own.
const OPS: usize = 120;
const OPS_TINY: usize = 200;

#[test]
fn crash_anywhere_sync_full() {
    let v = crash_everywhere(11, OPS, SyncMode::Full, FsTuning::default(), false);
    eprintln!("sync=full default tuning: {v}");
}

#[test]
fn crash_anywhere_sync_normal() {
    let v = crash_everywhere(12, OPS, SyncMode::Normal, FsTuning::default(), false);
    eprintln!("sync=normal default tuning: {v}");
}

#[test]
fn crash_anywhere_in_seals_and_compactions_sync_full() {
    let v = crash_everywhere(13, OPS_TINY, SyncMode::Full, tiny(), false);
    eprintln!("sync=full tiny tuning: {v}");
}

#[test]
fn crash_anywhere_in_seals_and_compactions_sync_normal() {
    let v = crash_everywhere(14, OPS_TINY, SyncMode::Normal, tiny(), false);
    eprintln!("sync=normal tiny tuning: {v}");
}

/// A crash while a new store is being created (its `LOCK`, `FORMAT`, first segment) must
/// leave a directory that opens, empty.
#[test]
fn crash_while_creating_the_store() {
    for sync in [SyncMode::Full, SyncMode::Normal] {
        crash_everywhere(15, 3, sync, FsTuning::default(), true);
    }
    // A failed (not crashed) call while creating: opening again must work.
    let model = Model::new(workload(15, 3));
    let events = dry_run(&model, SyncMode::Normal, FsTuning::default());
    let opening = events.iter().take_while(|e| e.op.is_none()).count();
    let mut failures = Vec::new();
    for k in 0..opening {
        let mem = MemDir::new();
        let dir = FaultyDir::sharing(mem, Faults::new(k as u64, FaultPlan::Fail));
        let clock = Clock::manual(T0);
        let opts = options(SyncMode::Normal, &clock);
        if FsStore::open_in(dir.clone(), opts.clone(), FsTuning::default()).is_err()
            && let Err(e) = FsStore::open_in(dir, opts, FsTuning::default())
        {
            failures.push(format!(
                "Fail at call {k} ({}): {e}",
                describe_event(&events, k)
            ));
        }
    }
    fail_report("failures while creating a store", &failures, opening);
}

/// Every file's bytes, by name.
fn files(mem: &MemDir) -> Vec<(String, Vec<u8>)> {
    let names = mem.list().unwrap();
    names
        .into_iter()
        .map(|n| {
            let bytes = mem.file(&n).unwrap().bytes();
            (n, bytes)
        })
        .collect()
}

/// Under `sync=full`, once an operation returned, every byte written is durable: a power loss
/// right then changes no file. Checked after every operation of the workload (both tunings),
/// and in a loop built for the case that matters: a commit to a segment that a compaction
/// just opened, after a larger commit to the segment it replaced was synced.
#[test]
fn sync_full_leaves_nothing_unsynced_after_an_acknowledged_write() {
    let mut failures = Vec::new();
    for (seed, tuning) in [(51, FsTuning::default()), (52, tiny())] {
        let model = Model::new(workload(seed, OPS));
        let mem = MemDir::new();
        let clock = Clock::manual(T0);
        let store =
            FsStore::open_in(mem.clone(), options(SyncMode::Full, &clock), tuning).expect("open");
        let mut worker = Worker::new(clock);
        for (i, op) in model.ops.iter().enumerate() {
            apply(&store, &mut worker, op).unwrap_or_else(|e| panic!("op {i} {op:?}: {e}"));
            let before = files(&mem);
            mem.power_loss();
            if files(&mem) != before {
                failures.push(format!(
                    "seed {seed} {tuning:?}: op {i} {op:?} was not durable"
                ));
                break;
            }
        }
    }
    let rounds = 300;
    for round in 0..rounds {
        let mem = MemDir::new();
        let clock = Clock::manual(T0);
        let opts = options(SyncMode::Full, &clock);
        let store = FsStore::open_in(mem.clone(), opts, FsTuning::default()).unwrap();
        for i in 0..5 {
            store.kv_put(b"s", b"big", &value(i, 20_000)).unwrap();
            store.compact().unwrap();
            store.kv_put(b"s", &key(i as usize), b"small").unwrap();
            let before = files(&mem);
            mem.power_loss();
            if files(&mem) != before {
                failures.push(format!(
                    "round {round}: the put after compaction {i} was acknowledged and lost"
                ));
                break;
            }
        }
    }
    fail_report("sync=full power loss", &failures, 2 + rounds);
}

// ------------------------------------------------------------ failed and short writes

/// Runs the workload with `plan` striking mutating call `k` (no crash): the operation that
/// meets it fails, the same handle runs the rest, and it and a reopen equal the model in
/// which the failed operation applied exactly when its frame was appended before the
/// fault. With `strict`, an operation that failed although its effect stays is an error
/// unless the fault was on a sync.
#[allow(clippy::too_many_arguments)]
fn fault_at(
    ops: &[Op],
    events: &[Event],
    k: usize,
    plan: FaultPlan,
    sync: SyncMode,
    tuning: FsTuning,
    strict: bool,
    absorbed: &mut Vec<String>,
) -> Result<(), String> {
    let mem = MemDir::new();
    let faults = Faults::new(k as u64, plan);
    let dir = FaultyDir::sharing(mem.clone(), faults.clone());
    let clock = Clock::manual(T0);
    let store = match FsStore::open_in(dir.clone(), options(sync, &clock), tuning) {
        Ok(store) => store,
        Err(e) if faults.fired() => FsStore::open_in(dir, options(sync, &clock), tuning)
            .map_err(|again| format!("opening failed ({e}), and so did opening again: {again}"))?,
        Err(e) => return Err(format!("opening failed without a fault: {e}")),
    };
    let mut worker = Worker::new(clock);
    let model_clock = Clock::manual(T0);
    let model = MemoryStorage::with_options(options(SyncMode::Normal, &model_clock));
    let mut model_worker = Worker::new(model_clock.clone());
    let mut failed: Option<usize> = None;
    for (i, op) in ops.iter().enumerate() {
        match apply(&store, &mut worker, op) {
            Ok(got) => {
                let want = apply(&model, &mut model_worker, op).expect("the model");
                if got != want {
                    return Err(format!(
                        "op {i} {op:?} answered {got:?}, the model {want:?} (failed op: \
                         {failed:?})"
                    ));
                }
            }
            Err(e) => {
                if let Some(j) = failed {
                    return Err(format!(
                        "op {i} {op:?} failed after op {j} met the fault: the handle did not \
                         keep working: {e}"
                    ));
                }
                if !faults.fired() {
                    return Err(format!("op {i} {op:?} failed without a fault: {e}"));
                }
                if events[k].op != Some(i) {
                    return Err(format!(
                        "op {i} failed, but the dry run met call {k} in {:?}",
                        events[k].op
                    ));
                }
                failed = Some(i);
                // The operation's frame is its first append to a segment (a compaction
                // has none); it applies when it was appended before the fault. An append
                // that fails — even a short write that wrote all of it — is cut back, so
                // the frame is never read later.
                let commit = events
                    .iter()
                    .position(|ev| ev.op == Some(i) && ev.what.starts_with("append seg-"))
                    .filter(|_| !matches!(op, Op::Compact));
                let committed = commit.is_some_and(|c| c < k);
                if strict && committed && !events[k].what.starts_with("sync ") {
                    return Err(format!(
                        "op {i} {op:?} returned an error ({e}) though its effect was committed \
                         and stays: the fault was on {:?}, not a sync",
                        events[k].what
                    ));
                }
                if committed {
                    apply(&model, &mut model_worker, op).expect("the model");
                }
                // The worker only knows what the store answered.
                model_worker.claims = worker.claims.clone();
            }
        }
    }
    if !faults.fired() {
        return Err("the fault never struck: the workload's calls are not deterministic".into());
    }
    if failed.is_none() {
        absorbed.push(events[k].what.clone());
    }
    let live = snapshot(&store).map_err(|e| format!("reading the live handle: {e}"))?;
    let want = snapshot(&model).expect("the model");
    if live != want {
        return Err(format!(
            "the live handle after the workload (failed op {failed:?}): {}",
            diff(&live, &want)
        ));
    }
    let reopen_clock = Clock::manual(T_END);
    let reopened = FsStore::open_in(mem.clone(), options(sync, &reopen_clock), tuning)
        .map_err(|e| format!("reopening (failed op {failed:?}): {e}"))?;
    let got = dump(&reopened, &reopen_clock).map_err(|e| format!("reading a reopen: {e}"))?;
    let want = dump(&model, &model_clock).expect("the model");
    if got != want {
        return Err(format!(
            "a reopen (failed op {failed:?}): {}",
            diff(&got, &want)
        ));
    }
    drop(reopened);
    // The first handle catches up on what the reopen wrote and writes on.
    store
        .kv_put(b"after", b"k", b"v")
        .map_err(|e| format!("the first handle's write after the reopen: {e}"))?;
    let again = FsStore::open_in(mem, options(sync, &reopen_clock), tuning)
        .map_err(|e| format!("the last reopen: {e}"))?;
    if again.kv_get(b"after", b"k").map_err(|e| e.to_string())? != Some(b"v".to_vec()) {
        return Err("the first handle's last write is missing".into());
    }
    Ok(())
}

/// True when call `m` is the sync of a seal: a segment's sync right after an append to it
/// that is not the operation's own frame (its first append).
fn is_seal_sync(events: &[Event], m: usize) -> bool {
    let ev = &events[m];
    let Some(file) = ev.what.strip_prefix("sync seg-") else {
        return false;
    };
    let Some(prev) = m.checked_sub(1).map(|p| &events[p]) else {
        return false;
    };
    let commit = events
        .iter()
        .position(|e| e.op == ev.op && e.what.starts_with("append seg-"));
    prev.what == format!("append seg-{file}") && commit != Some(m - 1)
}

/// Which faults [`fault_everywhere`] injects.
#[derive(Clone, Copy, PartialEq)]
enum Faulting {
    /// `Fail` and `ShortWrite(n)` on two of every `stride` calls after the store is created,
    /// except the sync of a seal (see `a_failed_seal_sync_leaves_an_openable_store`).
    Sample { stride: usize },
    /// `Fail` on the sync of every seal.
    SealSyncs,
}

fn fault_everywhere(seed: u64, faulting: Faulting, strict: bool) {
    let ops = workload(seed, OPS);
    let model = Model::new(ops.clone());
    let mut failures = Vec::new();
    let (mut checked, mut skipped, mut absorbed) = (0, 0, Vec::new());
    for (sync, tuning) in [
        (SyncMode::Full, FsTuning::default()),
        (SyncMode::Normal, FsTuning::default()),
        (SyncMode::Full, tiny()),
        (SyncMode::Normal, tiny()),
    ] {
        let events = dry_run(&model, sync, tuning);
        // Faults while the store is created: see `crash_while_creating_the_store`.
        let first = events.iter().take_while(|e| e.op.is_none()).count();
        for k in first..events.len() {
            let plan = match faulting {
                Faulting::SealSyncs if is_seal_sync(&events, k) => FaultPlan::Fail,
                Faulting::SealSyncs => continue,
                Faulting::Sample { .. } if is_seal_sync(&events, k) => {
                    skipped += 1;
                    continue;
                }
                // Fail on one stride, short writes of varied lengths on another.
                Faulting::Sample { stride } => match (k + seed as usize) % stride {
                    0 => FaultPlan::Fail,
                    1 => FaultPlan::ShortWrite([0, 3, 19, 20, 21, 64, 300][k % 7]),
                    _ => continue,
                },
            };
            checked += 1;
            if let Err(e) = fault_at(&ops, &events, k, plan, sync, tuning, strict, &mut absorbed) {
                failures.push(format!(
                    "seed {seed} {sync:?} {tuning:?} {plan:?} at call {k} ({}): {e}",
                    describe_event(&events, k)
                ));
            }
        }
    }
    eprintln!(
        "faults, seed {seed}: {checked} runs ({skipped} seal syncs skipped); the fault was \
         absorbed (every operation Ok) on {absorbed:?}"
    );
    fail_report(&format!("faults, seed {seed}"), &failures, checked);
}

#[test]
fn failed_and_short_writes_leave_a_working_handle() {
    fault_everywhere(21, Faulting::Sample { stride: 3 }, true);
}

/// A seal whose sync failed must not have frames appended after it: the handle that met the
/// failure goes on writing, and the store must still open afterwards.
#[test]
fn a_failed_seal_sync_leaves_an_openable_store() {
    fault_everywhere(21, Faulting::SealSyncs, true);
}

/// The brief's stricter promise: an operation that returns an error left no effect, unless
/// the error came from a sync (then it may have).
#[test]
fn an_operation_that_fails_leaves_no_effect_unless_its_sync_failed() {
    fault_everywhere(22, Faulting::Sample { stride: 3 }, true);
}

// -------------------------------------------------------------------------- torn tails

/// Runs the workload on a plain `MemDir` (`sync=normal`); returns the directory and, after
/// each operation, the active segment and its length.
fn run_recorded(model: &Model, tuning: FsTuning) -> (MemDir, Vec<(String, usize)>) {
    let mem = MemDir::new();
    let clock = Clock::manual(T0);
    let store =
        FsStore::open_in(mem.clone(), options(SyncMode::Normal, &clock), tuning).expect("open");
    let mut worker = Worker::new(clock);
    let mut ends = Vec::new();
    for (i, op) in model.ops.iter().enumerate() {
        let r = apply(&store, &mut worker, op).unwrap_or_else(|e| panic!("op {i} {op:?}: {e}"));
        assert_eq!(r, model.results[i], "op {i} {op:?}");
        let active = names(&mem, "seg-").pop().expect("a segment");
        let len = mem.file(&active).unwrap().bytes().len();
        ends.push((active, len));
    }
    (mem, ends)
}

/// How many operations have their frames whole when the active segment `active` keeps only
/// its first `len` bytes.
fn whole_ops(ends: &[(String, usize)], active: &str, len: usize) -> usize {
    let p = ends
        .iter()
        .take_while(|(seg, end)| seg != active || *end <= len)
        .count();
    assert_eq!(
        p,
        ends.iter()
            .filter(|(seg, end)| seg != active || *end <= len)
            .count(),
        "operations' frames out of order"
    );
    p
}

/// Cut lengths (or zero-fill starts) to try inside a frame: every byte near its ends, a
/// stride through a large payload.
fn cuts(start: usize, end: usize) -> impl Iterator<Item = usize> {
    (start..end).filter(move |&c| c - start < 64 || end - c <= 64 || (c - start).is_multiple_of(7))
}

/// The frames of the directory's active (last) segment: its name, bytes and frames.
fn active_frames(mem: &MemDir) -> (String, Vec<u8>, Vec<(usize, usize)>) {
    let active = names(mem, "seg-").pop().expect("a segment");
    let bytes = mem.file(&active).unwrap().bytes();
    let fr = frames(&bytes);
    assert_eq!(
        fr.last().map_or(0, |f| f.1),
        bytes.len(),
        "{active} is whole"
    );
    (active, bytes, fr)
}

/// The workload of the first seed from `seed` on whose directory ends as `wanted` says
/// (reproducible: the same seed every run), run with [`run_recorded`].
fn recorded_where(
    seed: u64,
    tuning: FsTuning,
    wanted: impl Fn(&MemDir) -> bool,
) -> (u64, Model, MemDir, Vec<(String, usize)>) {
    for seed in seed..seed + 50 {
        let model = Model::new(workload(seed, OPS));
        let (mem, ends) = run_recorded(&model, tuning);
        if wanted(&mem) {
            return (seed, model, mem, ends);
        }
    }
    panic!("no seed from {seed} on ends as wanted");
}

fn torn_tails(seed: u64, tuning: FsTuning) -> usize {
    let (seed, model, mem, ends) =
        recorded_where(seed, tuning, |mem| active_frames(mem).2.len() >= 3);
    let (active, bytes, fr) = active_frames(&mem);
    let mut failures = Vec::new();
    let mut checked: usize = 0;
    for &(start, end) in &fr[fr.len() - 3..] {
        for cut in cuts(start, end).chain((end == bytes.len()).then_some(end)) {
            for zeroed in [false, true] {
                // Zeroing bytes that are zero already changes nothing: the damage starts at
                // the first byte that changes.
                let damaged = match zeroed {
                    true => bytes[cut..]
                        .iter()
                        .position(|&b| b != 0)
                        .map_or(bytes.len(), |at| cut + at),
                    false => cut,
                };
                let p = whole_ops(&ends, &active, damaged);
                checked += 1;
                let dir = copy_dir(&mem, |name, b| {
                    if name == active {
                        if zeroed {
                            b[cut..].fill(0);
                        } else {
                            b.truncate(cut);
                        }
                    }
                });
                // The write after reopening (which must land after the cut) on every 8th
                // cut and near the frame's ends.
                let further = checked.is_multiple_of(8) || cut - start < 4 || end - cut < 4;
                if let Err(e) =
                    check_reopen_with(&dir, &model, SyncMode::Normal, tuning, p..=p, further)
                {
                    let how = if zeroed { "zero-filled from" } else { "cut at" };
                    failures.push(format!("seed {seed} {active} {how} {cut}: {e}"));
                }
            }
        }
    }
    fail_report(&format!("torn tails, seed {seed}"), &failures, checked);
    checked
}

#[test]
fn a_torn_tail_is_cut_at_every_byte_of_the_last_frames() {
    let a = torn_tails(31, FsTuning::default());
    let b = torn_tails(32, tiny());
    eprintln!("torn tails: {a} + {b} cuts");
}

// --------------------------------------------------------------------------- bit flips

/// Opens a copy of `mem` with the byte at `offset` of `name` flipped; the error, if any.
fn open_flipped(mem: &MemDir, name: &str, offset: usize, tuning: FsTuning) -> silo::Result<()> {
    let dir = copy_dir(mem, |_, _| {});
    dir.file(name).unwrap().corrupt(offset, 1 << (offset % 8));
    let clock = Clock::manual(T_END);
    let store = FsStore::open_in(dir, options(SyncMode::Normal, &clock), tuning)?;
    // Opened: whatever it holds must be readable (the caller decides whether opening was
    // allowed).
    dump(&store, &clock).map(drop)
}

/// Requires `Corrupt` naming `name` (and, when `offset`, an offset in the detail).
fn expect_corrupt(r: silo::Result<()>, name: &str, offset: bool) -> Result<(), String> {
    match r {
        Err(Error::Corrupt { path, detail }) => {
            if !path.contains(name) {
                return Err(format!("Corrupt names {path:?}, not {name}"));
            }
            if offset && !detail.contains("offset") {
                return Err(format!("Corrupt without an offset: {detail:?}"));
            }
            Ok(())
        }
        Err(e) => Err(format!("not Corrupt: {e}")),
        Ok(()) => Err("opened and read as if nothing were wrong".into()),
    }
}

/// The workload on tiny segments, ending with a compacted base and sealed segments after it.
fn compacted(seed: u64) -> MemDir {
    let (_, _, mem, _) = recorded_where(seed, tiny(), |mem| {
        names(mem, "seg-").len() >= 3
            && names(mem, "base-").len() == 1
            && active_frames(mem).2.len() >= 2
    });
    mem
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_or_before_the_tail_is_corrupt() {
    let mem = compacted(41);
    let segs = names(&mem, "seg-");
    let mut failures = Vec::new();
    let mut checked = 0;
    for (si, seg) in segs.iter().enumerate() {
        let bytes = mem.file(seg).unwrap().bytes();
        let fr = frames(&bytes);
        assert_eq!(fr.last().map(|f| f.1), Some(bytes.len()), "{seg} is whole");
        // Every frame with a whole frame after it: all but a sealed segment's seal and the
        // active segment's last frame.
        let last = si == segs.len() - 1;
        for &(start, end) in &fr[..fr.len() - 1] {
            for offset in cuts(start, end) {
                checked += 1;
                if let Err(e) = expect_corrupt(open_flipped(&mem, seg, offset, tiny()), seg, true) {
                    let kind = if last { "active" } else { "sealed" };
                    failures.push(format!("{kind} {seg} byte {offset} flipped: {e}"));
                }
            }
        }
    }
    eprintln!("bit flips in segments: {checked}");
    fail_report("bit flips in segments", &failures, checked);
}

#[test]
fn a_flipped_byte_in_the_base_is_corrupt() {
    // The workload's base (one frame) and a base of two frames (a frame holds about 1 MiB).
    let small = compacted(42);
    let big = MemDir::new();
    {
        let clock = Clock::manual(T0);
        let opts = options(SyncMode::Normal, &clock);
        let store = FsStore::open_in(big.clone(), opts, FsTuning::default()).unwrap();
        for i in 0..300 {
            store
                .kv_put(b"big", &key(i), &value(i as u32, 4000))
                .unwrap();
        }
        store.compact().unwrap();
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for (mem, tuning) in [(small, tiny()), (big, FsTuning::default())] {
        let base = names(&mem, "base-").pop().expect("a base");
        let bytes = mem.file(&base).unwrap().bytes();
        let fr = frames(&bytes);
        assert_eq!(fr.last().map(|f| f.1), Some(bytes.len()), "{base} is whole");
        for (fi, &(start, end)) in fr.iter().enumerate() {
            // Every header byte, the last bytes, and about 60 bytes spread over the payload.
            let stride = ((end - start) / 60).max(1);
            let offsets = (start..end)
                .filter(|&o| o - start < 24 || end - o <= 8 || (o - start).is_multiple_of(stride));
            for offset in offsets {
                checked += 1;
                // A frame with a whole frame after it is damage at an offset; damage in the
                // last frame leaves the base without its end.
                let with_offset = fi + 1 < fr.len();
                let r = open_flipped(&mem, &base, offset, tuning);
                if let Err(e) = expect_corrupt(r, &base, with_offset) {
                    failures.push(format!("{base} frame {fi}, byte {offset} flipped: {e}"));
                }
            }
        }
    }
    fail_report("bit flips in bases", &failures, checked);
}

/// A seal is the last frame of its segment, so damage to it looks like a torn write; but a
/// seal is synced before anything is written after it, and the next segment exists, so it
/// can never be torn: the store must not open as if the chain ended there.
#[test]
fn a_flipped_byte_in_a_seal_is_corrupt() {
    let mem = compacted(43);
    let segs = names(&mem, "seg-");
    let mut failures = Vec::new();
    let mut checked = 0;
    for seg in &segs[..segs.len() - 1] {
        let bytes = mem.file(seg).unwrap().bytes();
        let &(start, end) = frames(&bytes).last().unwrap();
        for offset in start..end {
            checked += 1;
            let dir = copy_dir(&mem, |_, _| {});
            dir.file(seg).unwrap().corrupt(offset, 1 << (offset % 8));
            let clock = Clock::manual(T_END);
            let opened = FsStore::open_in(dir.clone(), options(SyncMode::Normal, &clock), tiny());
            let r = match opened {
                Ok(_) => {
                    let gone: Vec<String> = segs
                        .iter()
                        .filter(|s| dir.file(s).is_none())
                        .cloned()
                        .collect();
                    Err(format!(
                        "opened, and removed the segments after it: {gone:?}"
                    ))
                }
                Err(e) => expect_corrupt(Err(e), seg, false),
            };
            if let Err(e) = r {
                failures.push(format!("seal of {seg}, byte {offset} flipped: {e}"));
            }
        }
    }
    fail_report("bit flips in seals", &failures, checked);
}

#[test]
fn a_flipped_byte_in_the_last_frame_is_a_torn_tail() {
    for (seed, tuning) in [(44, FsTuning::default()), (45, tiny())] {
        let (seed, model, mem, ends) =
            recorded_where(seed, tuning, |mem| !active_frames(mem).2.is_empty());
        let (active, _, fr) = active_frames(&mem);
        let &(start, end) = fr.last().unwrap();
        let p = whole_ops(&ends, &active, start);
        assert!(p < model.ops.len(), "the last frame is an operation's");
        let mut failures = Vec::new();
        for offset in cuts(start, end) {
            let dir = copy_dir(&mem, |_, _| {});
            dir.file(&active)
                .unwrap()
                .corrupt(offset, 1 << (offset % 8));
            let further = offset.is_multiple_of(8);
            if let Err(e) =
                check_reopen_with(&dir, &model, SyncMode::Normal, tuning, p..=p, further)
            {
                failures.push(format!("seed {seed} {active} byte {offset} flipped: {e}"));
            }
        }
        fail_report(
            "bit flips in the last frame",
            &failures,
            cuts(start, end).count(),
        );
    }
}

/// A running store that catches up on a damaged frame another handle appended refuses it,
/// as a reader and as a writer, and never answers from it.
#[test]
fn catching_up_on_a_flipped_byte_is_corrupt() {
    let mem = MemDir::new();
    let clock = Clock::manual(T0);
    let opts = options(SyncMode::Full, &clock);
    let reader = FsStore::open_in(mem.clone(), opts.clone(), FsTuning::default()).unwrap();
    reader.kv_put(b"s", b"before", b"1").unwrap();
    let writer = FsStore::open_in(mem.clone(), opts.clone(), FsTuning::default()).unwrap();
    let seg = names(&mem, "seg-").pop().unwrap();
    let before = mem.file(&seg).unwrap().bytes().len();
    writer.kv_put(b"s", b"x", &value(1, 100)).unwrap();
    writer.kv_put(b"s", b"y", &value(2, 100)).unwrap();
    let bytes = mem.file(&seg).unwrap().bytes();
    let fr = frames(&bytes);
    let &(x_start, x_end) = fr.iter().find(|f| f.0 == before).unwrap();
    for offset in [
        x_start,
        x_start + 5,
        x_start + 13,
        x_start + 17,
        x_end - 40,
        x_end - 1,
    ] {
        mem.file(&seg).unwrap().corrupt(offset, 0x10);
        expect_corrupt(reader.kv_get(b"s", b"x").map(drop), &seg, true)
            .unwrap_or_else(|e| panic!("reader, byte {offset}: {e}"));
        expect_corrupt(reader.kv_get(b"s", b"before").map(drop), &seg, true)
            .unwrap_or_else(|e| panic!("reader of an older key, byte {offset}: {e}"));
        expect_corrupt(reader.kv_put(b"s", b"z", b"3"), &seg, true)
            .unwrap_or_else(|e| panic!("writer, byte {offset}: {e}"));
        mem.file(&seg).unwrap().corrupt(offset, 0x10);
    }
    // Undamaged again: both frames read back.
    assert_eq!(reader.kv_get(b"s", b"y").unwrap(), Some(value(2, 100)));
    assert_eq!(reader.kv_get(b"s", b"x").unwrap(), Some(value(1, 100)));
}

// ------------------------------------------------------------------------------ FORMAT

fn dir_with_format(text: &[u8]) -> MemDir {
    let mem = MemDir::new();
    let f = mem.open("FORMAT", true).unwrap().unwrap();
    f.write_at(text, 0).unwrap();
    f.sync().unwrap();
    mem
}

fn open_mem(mem: MemDir) -> silo::Result<FsStore<MemDir>> {
    let clock = Clock::manual(T0);
    FsStore::open_in(mem, options(SyncMode::Normal, &clock), FsTuning::default())
}

#[test]
fn a_newer_format_is_unsupported() {
    match open_mem(dir_with_format(b"silo-fs 99\n")) {
        Err(e @ Error::Unsupported { .. }) => {
            assert!(e.to_string().contains("format 99"), "{e}");
        }
        other => panic!("a store of format 99 opened as {other:?}"),
    }
    // The format this build writes opens.
    let mem = MemDir::new();
    open_mem(mem.clone())
        .unwrap()
        .kv_put(b"s", b"k", b"v")
        .unwrap();
    let text = mem.file("FORMAT").unwrap().bytes();
    assert_eq!(text, b"silo-fs 2\n");
    // A store of the first format is upgraded when opened: its data is kept.
    let old = MemDir::new();
    open_mem(old.clone())
        .unwrap()
        .kv_put(b"s", b"k", b"old")
        .unwrap();
    old.file("FORMAT").unwrap().truncate(0).unwrap();
    old.file("FORMAT")
        .unwrap()
        .write_at(b"silo-fs 1\n", 0)
        .unwrap();
    let reopened = open_mem(old.clone()).unwrap();
    assert_eq!(reopened.kv_get(b"s", b"k").unwrap(), Some(b"old".to_vec()));
    assert_eq!(old.file("FORMAT").unwrap().bytes(), b"silo-fs 2\n");
    assert_eq!(
        open_mem(mem).unwrap().kv_get(b"s", b"k").unwrap(),
        Some(b"v".to_vec())
    );
}

#[test]
fn a_garbage_format_is_corrupt() {
    for text in [
        &b"hello\n"[..],
        b"",
        b"silo-fs\n",
        b"silo-fs x\n",
        b"\xff\xfe\x00",
    ] {
        match open_mem(dir_with_format(text)) {
            Err(Error::Corrupt { path, .. }) => assert!(path.contains("FORMAT"), "{path}"),
            other => panic!(
                "FORMAT {:?} opened as {other:?}",
                text.escape_ascii().to_string()
            ),
        }
    }
}

#[test]
fn a_foreign_directory_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"not a store").unwrap();
    let url = format!("fs://{}", dir.path().display());
    match silo::open(&url) {
        Err(Error::Config { message }) => assert!(message.contains("FORMAT"), "{message}"),
        other => panic!("a foreign directory opened as {other:?}"),
    }
    assert_eq!(
        std::fs::read(dir.path().join("notes.txt")).unwrap(),
        b"not a store",
        "the foreign file is left alone"
    );
    // An empty directory is a new store.
    let empty = tempfile::tempdir().unwrap();
    let store = silo::open(&format!("fs://{}", empty.path().display())).unwrap();
    store.kv_put(b"s", b"k", b"v").unwrap();
}
