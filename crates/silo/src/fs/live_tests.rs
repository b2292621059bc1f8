//! The index's count of live bytes, which the compaction policy decides by, stays exact: in
//! the writer, in a handle catching up on another's frames (across seals and compactions),
//! after a reopen, and it equals what a compaction then writes.

use std::time::Duration;

use silo_engine::{FrameLog, MemDir};

use super::FsStore;
use super::engine::{FsTuning, base_name, read_current};
use crate::{Clock, FunctionStorage, Selection, StoreOptions};

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn open(dir: &MemDir, clock: &Clock) -> FsStore<MemDir> {
    let options = StoreOptions {
        clock: clock.clone(),
        // Items are buried at their second claim: dead letters reach the bases.
        max_attempts: 1,
        ..StoreOptions::default()
    };
    // Tiny segments and floor: seals and garbage compactions run inside the workload.
    let tuning = FsTuning {
        segment_bytes: 4096,
        compact_min_bytes: 16384,
    };
    FsStore::open_in(dir.clone(), options, tuning).unwrap()
}

/// The running count, checked against a recount from scratch (per scope too); it catches up
/// first, as every operation does.
fn live(store: &FsStore<MemDir>) -> u64 {
    store.stat().unwrap();
    let guard = store.engine.lock();
    let eng = guard.borrow();
    let counted = eng.index.live_bytes();
    assert_eq!(counted, eng.index.recount(), "the running count drifted");
    counted
}

/// The payload bytes of the base `CURRENT` names: what a compaction wrote.
fn base_payload(dir: &MemDir) -> u64 {
    let through = read_current(dir).unwrap();
    let file = dir.file(&base_name(through)).unwrap();
    let mut log = FrameLog::attach(file, 1);
    let found = log.catch_up(false).unwrap();
    found
        .frames
        .iter()
        .map(|f| found.payload(f).len() as u64)
        .sum()
}

/// One seeded operation of every kind that changes what is live.
fn step(store: &FsStore<MemDir>, rng: &mut Rng, clock: &Clock) {
    let scope = format!("scope-{}", rng.below(4)).into_bytes();
    let key = format!("key-{}", rng.below(6)).into_bytes();
    let value = vec![b'v'; rng.below(3) as usize * rng.below(700) as usize];
    clock.advance(Duration::from_millis(5));
    match rng.below(20) {
        0..=3 => store.state_put(&scope, b"ns", &key, &value).unwrap(),
        4 => {
            store.state_del(&scope, b"ns", &key).unwrap();
        }
        5 => {
            store.state_delete(&scope, b"ns", &Selection::All).unwrap();
        }
        6 => {
            store.state_drain(&scope, b"other").unwrap();
            store.state_put(&scope, b"other", &key, &value).unwrap();
        }
        7..=8 => {
            store.append(&scope, b"log", &key, &value).unwrap();
        }
        9 => {
            store.counter_add(&scope, b"c", &key, 3).unwrap();
        }
        10 => {
            store.counter_delete(&scope, b"c", &key).unwrap();
        }
        11 => store
            .queue_push(&scope, &[value.clone(), key.clone()])
            .unwrap(),
        12 => {
            store.queue_pop(&scope).unwrap();
        }
        13 => {
            // A lease shorter than the clock's step: claimed again by the next claim, so
            // attempts run out and items are buried.
            let lease = Duration::from_millis(1);
            if let Some(claim) = store.queue_claim(&scope, lease).unwrap() {
                match rng.below(3) {
                    0 => store.queue_ack(&scope, claim.id).unwrap(),
                    1 => store.queue_release(&scope, claim.id).unwrap(),
                    _ => store.queue_extend(&scope, claim.id, lease).unwrap(),
                };
            }
        }
        14 => {
            store.queue_clear(&scope).unwrap();
        }
        15 => {
            store.clear(&scope).unwrap();
        }
        16 => {
            store
                .gc_prefix(b"scope-3", Duration::from_millis(50))
                .unwrap();
        }
        17 => {
            let once_key = format!("once-{}", rng.below(8)).into_bytes();
            store
                .apply_once(&once_key, b"fp", &mut |s| {
                    s.append(&scope, b"log", b"once", b"x")?;
                    Ok(value.clone())
                })
                .unwrap();
        }
        18 => {
            store.expire_once_keys(Duration::from_millis(200)).unwrap();
        }
        _ => {
            let reply = store
                .apply_atomically(&mut |s| {
                    s.state_put(&scope, b"ns", &key, b"atomic")?;
                    s.counter_add(&scope, b"c", &key, 1)?;
                    Ok(Vec::new())
                })
                .unwrap();
            assert!(reply.is_empty());
        }
    }
}

#[test]
fn live_bytes_stay_exact_in_writers_readers_reloads_and_bases() {
    let dir = MemDir::new();
    let clock = Clock::manual(1_790_000_000_000);
    let a = open(&dir, &clock);
    let b = open(&dir, &clock);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut compactions = 0;
    let mut last_base = read_current(&dir).unwrap();
    let mut dead_letters_compacted = 0;
    for i in 0..3000 {
        // Two handles take turns, so each catches up on the other's frames.
        step(if rng.below(2) == 0 { &a } else { &b }, &mut rng, &clock);
        let counted = live(&a);
        assert_eq!(
            live(&b),
            counted,
            "op {i}: a handle that caught up counts the same"
        );
        let base = read_current(&dir).unwrap();
        if base != last_base {
            // The base holds the state after this operation.
            compactions += 1;
            last_base = base;
            dead_letters_compacted += a.stat().unwrap().dead_letters;
        }
        if i % 500 == 499 {
            let reopened = open(&dir, &clock);
            assert_eq!(live(&reopened), counted, "op {i}: a reload counts the same");
            a.compact().unwrap();
            assert_eq!(
                base_payload(&dir),
                live(&a),
                "op {i}: the base holds exactly the live bytes"
            );
            last_base = read_current(&dir).unwrap();
        }
    }
    assert!(
        compactions >= 3,
        "the workload compacts on its own ({compactions} compactions): counts crossed reloads"
    );
    assert!(
        dead_letters_compacted > 0,
        "dead letters went through a compaction"
    );
}

/// The policy itself, on the numbers: compaction pays by garbage or by growth past 16
/// segments, never right after a compaction, whatever the floor.
#[test]
fn compaction_is_due_by_garbage_or_growth_and_never_right_after_one() {
    use super::engine::compaction_due;
    const MIB: u64 = 1 << 20;
    let default = FsTuning::default();
    // Right after a compaction: the base (records, a header per MiB) and one seal.
    let fresh = |live: u64| live + 20 * (live / MIB + 1) + 21;
    for floor in [1, 4096, 64 * MIB] {
        let tuning = FsTuning {
            compact_min_bytes: floor,
            ..default
        };
        for live in [0, 26, 300, MIB, 100 * MIB, 5000 * MIB] {
            assert!(
                !compaction_due(&tuning, fresh(live) - 21, 21, live),
                "floor {floor}, live {live}: due right after a compaction"
            );
        }
    }
    // Only growth, all of it live: not due below 16 segments (1 GiB), due past it.
    assert!(!compaction_due(&default, 0, 1000 * MIB, 1000 * MIB));
    assert!(compaction_due(&default, 0, 1100 * MIB, 1100 * MIB));
    // ... and after a growth compaction, due again when the log passes the base.
    assert!(!compaction_due(
        &default,
        2048 * MIB,
        2000 * MIB,
        4048 * MIB
    ));
    assert!(compaction_due(&default, 2048 * MIB, 2100 * MIB, 4148 * MIB));
    // Garbage: due once the dead bytes pass both the live ones and the floor.
    assert!(!compaction_due(&default, 0, 60 * MIB, MIB));
    assert!(compaction_due(&default, 0, 70 * MIB, MIB));
    assert!(!compaction_due(&default, 300 * MIB, 250 * MIB, 300 * MIB));
    assert!(compaction_due(&default, 300 * MIB, 310 * MIB, 300 * MIB));
}
