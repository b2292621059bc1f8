//! A seeded workload over an `fs:` store with a reference model of what it must hold after
//! every operation, and a dump of everything a store holds in the model's key space (two
//! stores are equal when their dumps are).

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::time::Duration;

use silo::fs::{FsStorage, FsTuning};
use silo::{Clock, FunctionStorage, StoreOptions};

pub const SCOPES: u8 = 4;
pub const KEYS: u8 = 12;
/// How far the manual clock moves before each operation.
pub const STEP_MS: i64 = 10;

/// A store with small segments and an eager compaction, so a short workload crosses many
/// seals and several compactions.
pub fn open_store(dir: &Path, clock: &Clock) -> FsStorage {
    let tuning = FsTuning {
        segment_bytes: 16 << 10,
        compact_min_bytes: 48 << 10,
    };
    open_store_tuned(dir, clock, tuning)
}

/// A store on `clock` with `tuning`.
pub fn open_store_tuned(dir: &Path, clock: &Clock, tuning: FsTuning) -> FsStorage {
    let options = StoreOptions {
        clock: clock.clone(),
        ..StoreOptions::default()
    };
    FsStorage::open(dir, options, tuning).expect("open the fs store")
}

/// Opens a store somebody else wrote (a restored one), on the system clock.
pub fn open_plain(dir: &Path) -> FsStorage {
    FsStorage::open(dir, StoreOptions::default(), FsTuning::default()).expect("open a store")
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    kv: BTreeMap<(u8, u8), Vec<u8>>,
    logs: BTreeMap<u8, Vec<Vec<u8>>>,
    counters: BTreeMap<u8, i64>,
    queues: BTreeMap<u8, VecDeque<Vec<u8>>>,
}

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn scope(s: u8) -> Vec<u8> {
    format!("scope/{s}").into_bytes()
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', k, 0, b'/']
}

fn value(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 0,
        1 => 3000 + rng.below(3000) as usize,
        _ => rng.below(200) as usize,
    };
    let seed = rng.next();
    (0..len).map(|i| (seed >> (i % 56)) as u8).collect()
}

/// One seeded operation against `store`, mirrored in `model`; returns which.
pub fn step(store: &dyn FunctionStorage, model: &mut Model, rng: &mut Rng) -> &'static str {
    let s = rng.below(u64::from(SCOPES)) as u8;
    let sc = scope(s);
    match rng.below(100) {
        0..=34 => {
            let k = rng.below(u64::from(KEYS)) as u8;
            let v = value(rng);
            store.kv_put(&sc, &key(k), &v).expect("kv_put");
            model.kv.insert((s, k), v);
            "put"
        }
        35..=44 => {
            let k = rng.below(u64::from(KEYS)) as u8;
            store.kv_del(&sc, &key(k)).expect("kv_del");
            model.kv.remove(&(s, k));
            "del"
        }
        45..=64 => {
            let v = value(rng);
            store.append(&sc, b"log", b"l", &v).expect("append");
            model.logs.entry(s).or_default().push(v);
            "append"
        }
        65..=74 => {
            let d = rng.below(1000) as i64 - 300;
            let n = store.counter_add(&sc, b"c", b"n", d).expect("counter_add");
            let m = model.counters.entry(s).or_default();
            *m += d;
            assert_eq!(n, *m, "counter_add answered what the model says");
            "add"
        }
        75..=86 => {
            let v = value(rng);
            store
                .queue_push(&sc, std::slice::from_ref(&v))
                .expect("queue_push");
            model.queues.entry(s).or_default().push_back(v);
            "push"
        }
        87..=96 => {
            let got = store.queue_pop(&sc).expect("queue_pop");
            let want = model.queues.entry(s).or_default().pop_front();
            assert_eq!(got, want, "queue_pop answered what the model says");
            "pop"
        }
        _ => {
            store.clear(&sc).expect("clear");
            model.kv.retain(|(m, _), _| *m != s);
            model.logs.remove(&s);
            model.counters.remove(&s);
            model.queues.remove(&s);
            "clear"
        }
    }
}

/// Runs `n` operations, advancing `clock` by [`STEP_MS`] before each; returns the time each
/// ran at, the model after it and which it was. `between(i)` runs after operation `i`.
pub fn run(
    store: &dyn FunctionStorage,
    clock: &Clock,
    seed: u64,
    n: usize,
    mut between: impl FnMut(usize),
) -> Vec<(i64, Model, &'static str)> {
    let mut rng = Rng::new(seed);
    let mut model = Model::default();
    let mut history = Vec::with_capacity(n);
    for i in 0..n {
        clock.advance(Duration::from_millis(STEP_MS as u64));
        let kind = step(store, &mut model, &mut rng);
        history.push((clock.now_ms(), model.clone(), kind));
        between(i);
    }
    history
}

/// What a model says the store holds, in the form [`dump`] prints.
pub fn render(model: &Model) -> String {
    let mut out = String::new();
    for s in 0..SCOPES {
        for k in 0..KEYS {
            if let Some(v) = model.kv.get(&(s, k)) {
                out += &format!("kv {s} {k} {}\n", hexish(v));
            }
        }
        for v in model.logs.get(&s).into_iter().flatten() {
            out += &format!("log {s} {}\n", hexish(v));
        }
        out += &format!(
            "counter {s} {}\n",
            model.counters.get(&s).copied().unwrap_or(0)
        );
        for v in model.queues.get(&s).into_iter().flatten() {
            out += &format!("queue {s} {}\n", hexish(v));
        }
    }
    out
}

/// Everything `store` holds in the model's key space. Reads the queues by popping them, so
/// the store is used up: dump copies, not originals that go on.
pub fn dump(store: &dyn FunctionStorage) -> String {
    let mut out = String::new();
    for s in 0..SCOPES {
        let sc = scope(s);
        for k in 0..KEYS {
            if let Some(v) = store.kv_get(&sc, &key(k)).expect("kv_get") {
                out += &format!("kv {s} {k} {}\n", hexish(&v));
            }
        }
        for (_, v) in store.scan(&sc, b"log", b"l", 0, u64::MAX).expect("scan") {
            out += &format!("log {s} {}\n", hexish(&v));
        }
        out += &format!(
            "counter {s} {}\n",
            store.counter_get(&sc, b"c", b"n").expect("counter_get")
        );
        while let Some(v) = store.queue_pop(&sc).expect("queue_pop") {
            out += &format!("queue {s} {}\n", hexish(&v));
        }
    }
    out
}

fn hexish(v: &[u8]) -> String {
    format!("{}:{:016x}", v.len(), blake3_ish(v))
}

fn blake3_ish(v: &[u8]) -> u64 {
    // FNV-1a: a short, stable fingerprint for the dump.
    v.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The segment files in a store directory.
pub fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the store directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-"))
        .collect();
    names.sort();
    names
}
