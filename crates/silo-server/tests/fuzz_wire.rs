//! Fuzzing the wire decoder and the `POST /rpc` handler on the stable toolchain: a
//! deterministic property-test loop instead of cargo-fuzz (which needs nightly).
//!
//! This file owns itself and the seed corpus in `tests/corpus/`. The `seed-*.bin` files there
//! are valid encoded requests built by [`seed_requests`]; each must still decode, so a change
//! that breaks the wire layout of an existing operation fails here. Any other file dropped in
//! that directory (say, a saved reproducer) is used as a seed too, but need not decode.
//!
//! Input `i` is a pure function of the base seed, `i` and the corpus: a mutated seed, a freshly
//! generated valid request (maybe mutated), or a random buffer. A failure prints the seed, the
//! index and the input as hex; a stuck input (no progress for [`HANG_AFTER`]) is printed the
//! same way and aborts the run.
//!
//! Environment:
//! - `SILO_FUZZ_ITERS`: decoder inputs (default [`DEFAULT_DECODER_ITERS`]).
//! - `SILO_FUZZ_HANDLER_ITERS`: handler inputs (default [`DEFAULT_HANDLER_ITERS`]).
//! - `SILO_FUZZ_SECS`: stop each test after this many seconds, whatever is left.
//! - `SILO_FUZZ_SEED`: the base seed, decimal or `0x` hex (default [`DEFAULT_SEED`]).
//! - `SILO_FUZZ_WRITE_CORPUS=1`: rewrite `tests/corpus/seed-*.bin` first.
//!
//! A long campaign: ten million decoder inputs (seconds in release) alongside as many handler
//! inputs as fit in ten minutes. Name one test after `--` to run it alone.
//!
//! ```text
//! SILO_FUZZ_ITERS=10000000 SILO_FUZZ_HANDLER_ITERS=1000000000 SILO_FUZZ_SECS=600 \
//!     cargo test --release -p silo-server --test fuzz_wire -- --nocapture
//! ```
//!
//! Use a different `SILO_FUZZ_SEED` per campaign to explore new inputs.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use silo::wire::{self, Bytes, StorageOp, StorageReply, StorageRequest};
use silo::{KeyRange, MemoryStorage, Selection};
use tower::ServiceExt;

/// Decoder inputs by default: 1–2 s in a debug build (measured on a busy 2-core machine),
/// so the default run stays well under 5 s.
const DEFAULT_DECODER_ITERS: u64 = 200_000;
/// Handler inputs by default: 1–2 s in a debug build on the same machine.
const DEFAULT_HANDLER_ITERS: u64 = 20_000;
/// The base seed unless `SILO_FUZZ_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x5170_f022_3eed_0001;
/// The largest input. Small, so the handler's memory check measures what the server makes of
/// a request rather than the request itself.
const MAX_INPUT: usize = 4096;
/// Requests served by one router (and one store) before a fresh one: the store's contents
/// would otherwise grow with the run and hide what a single request costs in memory.
const ROUTER_LIFETIME: u64 = 1000;
/// No progress for this long is a hang.
const HANG_AFTER: Duration = Duration::from_secs(30);
/// The handler's whole process must stay under this peak resident size.
const MAX_HWM_BYTES: u64 = 1 << 30;

// ---------------------------------------------------------------------------------------------
// A small deterministic PRNG (splitmix64): fast, no dependency, and every input can be rebuilt
// from (seed, index) alone.

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Rng(u64);

impl Rng {
    /// The generator for input `index`. Mixing the index (rather than stepping one stream)
    /// keeps inputs independent, so input `i` is reproducible without running `0..i`.
    fn for_input(seed: u64, index: u64) -> Self {
        Rng(mix(seed ^ mix(index.wrapping_add(0x9e37_79b9_7f4a_7c15))))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform-enough in `0..n` (`n > 0`); modulo bias is irrelevant for fuzzing.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------------------------
// The seed corpus.

fn b(bytes: &[u8]) -> Bytes {
    Bytes(bytes.to_vec())
}

fn req(key: Option<&str>, op: StorageOp) -> StorageRequest {
    StorageRequest {
        idempotency_key: key.map(str::to_owned),
        op,
    }
}

/// The committed seeds: every operation at least once, with and without idempotency keys,
/// empty and non-empty byte strings, NUL and 0xff bytes, extreme integers, keys at and over
/// the server's key-length limit, and a few longer byte strings (length prefixes above 255).
fn seed_requests() -> Vec<(&'static str, StorageRequest)> {
    use StorageOp::*;
    let kilo: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    vec![
        (
            "kvget-empty",
            req(
                None,
                KvGet {
                    scope: b(b""),
                    key: b(b""),
                },
            ),
        ),
        (
            "kvput-nul",
            req(
                None,
                KvPut {
                    scope: b(b"s\0"),
                    key: b(b"\0"),
                    value: b(b"\0\0\0"),
                },
            ),
        ),
        (
            "kvput-all-bytes",
            req(
                None,
                KvPut {
                    scope: b(b"s"),
                    key: b(&[0xff; 3]),
                    value: b(&all_bytes),
                },
            ),
        ),
        (
            "kvdel",
            req(
                None,
                KvDel {
                    scope: b(b"s"),
                    key: b(b"k"),
                },
            ),
        ),
        (
            "append-keyed",
            req(
                Some("k1"),
                Append {
                    scope: b(b"s"),
                    ns: b(b""),
                    key: b(b"ab"),
                    value: b(&[0xff]),
                },
            ),
        ),
        (
            "scan-extremes",
            req(
                None,
                Scan {
                    scope: b(b"s"),
                    ns: b(b""),
                    key: b(b"ab"),
                    after_id: -1,
                    limit: u64::MAX,
                },
            ),
        ),
        (
            "queuepush-keyed",
            req(
                Some("push-1"),
                QueuePush {
                    scope: b(b"q"),
                    items: [b(b"x"), b(b""), b(b"\0y\0")].into_iter().collect(),
                },
            ),
        ),
        (
            "queuepop-keyed",
            req(Some("pop-1"), QueuePop { scope: b(b"q") }),
        ),
        ("clear", req(None, Clear { scope: b(b"s") })),
        ("gc-zero", req(None, Gc { ttl_secs: 0 })),
        (
            "stateget",
            req(
                None,
                StateGet {
                    scope: b(b"s"),
                    ns: b(b"n"),
                    key: b(b"k"),
                },
            ),
        ),
        (
            "stateput-1kib",
            req(
                None,
                StatePut {
                    scope: b(b"s"),
                    ns: b(b"n"),
                    key: b(b"big"),
                    value: b(&kilo),
                },
            ),
        ),
        (
            "statedel-keyed",
            req(
                Some("del-1"),
                StateDel {
                    scope: b(b"s"),
                    ns: b(b"n"),
                    key: b(b"k"),
                },
            ),
        ),
        (
            "stategetmany",
            req(
                None,
                StateGetMany {
                    scope: b(b"s"),
                    ns: b(b"n"),
                    keys: (0..8u8).map(|i| b(&[b'k', i])).collect(),
                },
            ),
        ),
        (
            "stateputmany",
            req(
                None,
                StatePutMany {
                    scope: b(b"s"),
                    ns: b(b"n"),
                    items: (0..5u8).map(|i| (b(&[b'k', i]), b(&[i; 3]))).collect(),
                },
            ),
        ),
        (
            "statescan-all-reverse",
            req(
                None,
                StateScan {
                    scope: b(b"s"),
                    ns: b(b"n"),
                    range: KeyRange::all(),
                    reverse: true,
                    limit: 10,
                },
            ),
        ),
        (
            "statescan-bounded",
            req(
                None,
                StateScan {
                    scope: b(b"s"),
                    ns: b(b"n"),
                    range: KeyRange::new(b"a".to_vec(), b"z\0".to_vec()),
                    reverse: false,
                    limit: 0,
                },
            ),
        ),
        (
            "statedelete-keys",
            req(
                Some("sd-keys"),
                StateDelete {
                    scope: b(b"s"),
                    ns: b(b"n"),
                    selection: Selection::Keys(vec![b"k".to_vec(), Vec::new()]),
                },
            ),
        ),
        (
            "statedelete-range",
            req(
                Some("sd-range"),
                StateDelete {
                    scope: b(b"s"),
                    ns: b(b"n"),
                    selection: Selection::Range(KeyRange {
                        start: Some(b"k".to_vec()),
                        end: None,
                    }),
                },
            ),
        ),
        (
            "statedelete-all",
            req(
                Some("sd-all"),
                StateDelete {
                    scope: b(b"s"),
                    ns: b(b"n"),
                    selection: Selection::All,
                },
            ),
        ),
        (
            "statedrain",
            req(
                Some("drain"),
                StateDrain {
                    scope: b(b"s"),
                    ns: b(b"n"),
                },
            ),
        ),
        (
            "counterget",
            req(
                None,
                CounterGet {
                    scope: b(b"s"),
                    ns: b(b"c"),
                    key: b(b"k"),
                },
            ),
        ),
        (
            "counteradd-max",
            req(
                Some("add-max"),
                CounterAdd {
                    scope: b(b"s"),
                    ns: b(b"c"),
                    key: b(b"k"),
                    delta: i64::MAX,
                },
            ),
        ),
        (
            "counterset-min",
            req(
                Some("set-min"),
                CounterSet {
                    scope: b(b"s"),
                    ns: b(b"c"),
                    key: b(b"k"),
                    value: i64::MIN,
                },
            ),
        ),
        (
            "counterdelete",
            req(
                Some("cdel"),
                CounterDelete {
                    scope: b(b"s"),
                    ns: b(b"c"),
                    key: b(b"k"),
                },
            ),
        ),
        ("queuelen", req(None, QueueLen { scope: b(b"q") })),
        (
            "queueclear-keyed",
            req(Some("qclear"), QueueClear { scope: b(b"q") }),
        ),
        (
            "queueclaim-max-lease",
            req(
                Some("claim"),
                QueueClaim {
                    scope: b(b"q"),
                    lease_ms: u64::MAX,
                },
            ),
        ),
        (
            "queueack-min",
            req(
                Some("ack"),
                QueueAck {
                    scope: b(b"q"),
                    claim_id: i64::MIN,
                },
            ),
        ),
        (
            "queuerelease",
            req(
                Some("release"),
                QueueRelease {
                    scope: b(b"q"),
                    claim_id: 1,
                },
            ),
        ),
        (
            "queueextend",
            req(
                Some("extend"),
                QueueExtend {
                    scope: b(b"q"),
                    claim_id: -1,
                    lease_ms: 1,
                },
            ),
        ),
        (
            "queuedeadletters",
            req(
                None,
                QueueDeadLetters {
                    scope: b(b"q"),
                    limit: u64::MAX,
                },
            ),
        ),
        ("sweep-max", req(Some("sweep"), Sweep { ttl_ms: u64::MAX })),
        ("stat", req(None, Stat {})),
        ("stat-empty-key", req(Some(""), Stat {})),
        (
            "unicode-key-nul",
            req(
                Some("ключ\0✓"),
                KvPut {
                    scope: b(&[0xff, 0, 0xfe]),
                    key: b(b"k"),
                    value: b(b""),
                },
            ),
        ),
        (
            "key-at-limit",
            req(
                Some(&"a".repeat(512)),
                KvPut {
                    scope: b(b"s"),
                    key: b(b"k"),
                    value: b(b"v"),
                },
            ),
        ),
        (
            "key-over-limit",
            req(
                Some(&"b".repeat(513)),
                KvPut {
                    scope: b(b"s"),
                    key: b(b"k"),
                    value: b(b"v"),
                },
            ),
        ),
    ]
}

fn corpus_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus"))
}

/// Rewrites `seed-*.bin` from [`seed_requests`], removing seeds no longer built.
fn write_corpus(dir: &Path) {
    fs::create_dir_all(dir).expect("create the corpus directory");
    let seeds: Vec<(String, Vec<u8>)> = seed_requests()
        .into_iter()
        .enumerate()
        .map(|(n, (name, request))| {
            let bytes = wire::encode(&request).expect("encode a seed");
            (format!("seed-{n:02}-{name}.bin"), bytes)
        })
        .collect();
    for entry in fs::read_dir(dir).expect("list the corpus") {
        let entry = entry.expect("a corpus entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = name.starts_with("seed-") && !seeds.iter().any(|(n, _)| *n == name);
        if stale {
            fs::remove_file(entry.path()).expect("remove a stale seed");
        }
    }
    for (name, bytes) in &seeds {
        fs::write(dir.join(name), bytes).expect("write a seed");
    }
    println!("wrote {} seeds to {}", seeds.len(), dir.display());
}

/// The corpus, loaded once for both tests (and written first when asked).
fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = corpus_dir();
        if std::env::var("SILO_FUZZ_WRITE_CORPUS").is_ok_and(|v| v == "1") {
            write_corpus(dir);
        }
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| {
                panic!(
                    "cannot read {}: {e}; run once with SILO_FUZZ_WRITE_CORPUS=1",
                    dir.display()
                )
            })
            .map(|entry| entry.expect("a corpus entry").path())
            .filter(|path| path.is_file())
            .collect();
        // read_dir's order is the file system's; sorting keeps input `i` the same everywhere.
        files.sort();
        let mut seeds = Vec::with_capacity(files.len());
        for path in files {
            let bytes = fs::read(&path).expect("read a seed");
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with("seed-") {
                let request = wire::decode::<StorageRequest>(&bytes).unwrap_or_else(|e| {
                    panic!("{name} no longer decodes (the wire layout changed?): {e}")
                });
                let again = wire::encode(&request).expect("re-encode a seed");
                assert_eq!(again, bytes, "{name} does not re-encode to itself");
            }
            seeds.push(bytes);
        }
        assert!(
            !seeds.is_empty(),
            "{} is empty; run once with SILO_FUZZ_WRITE_CORPUS=1",
            dir.display()
        );
        seeds
    })
}

// ---------------------------------------------------------------------------------------------
// Generated valid requests: reach every operation with extreme field values, which mutation
// alone rarely produces intact.

fn gen_bytes(rng: &mut Rng, max: usize) -> Bytes {
    let len = match rng.below(8) {
        0 => 0,
        1 => 1,
        2..=5 => rng.below(17),
        _ => rng.below(max + 1),
    };
    let fill = rng.below(4);
    Bytes(
        (0..len)
            .map(|_| match fill {
                0 => 0,
                1 => b'a' + rng.below(26) as u8,
                _ => rng.byte(),
            })
            .collect(),
    )
}

fn gen_u64(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => u32::MAX.into(),
        4 => i64::MAX as u64,
        5 => 1 << 63,
        6 | 7 => rng.below(100) as u64,
        _ => rng.next(),
    }
}

fn gen_i64(rng: &mut Rng) -> i64 {
    match rng.below(10) {
        0 => 0,
        1 => 1,
        2 => -1,
        3 => i64::MIN,
        4 => i64::MAX,
        5..=7 => rng.below(100) as i64,
        _ => rng.next() as i64,
    }
}

fn gen_key(rng: &mut Rng) -> Option<String> {
    if rng.below(2) == 0 {
        return None;
    }
    // Lengths around the server's 512-byte limit matter most.
    let len = match rng.below(6) {
        0 => 0,
        1 => 511 + rng.below(3),
        2 => rng.below(700),
        _ => 1 + rng.below(24),
    };
    let mut key = String::with_capacity(len);
    while key.len() < len {
        key.push(match rng.below(8) {
            0 => '\0',
            1 => 'é',
            2 => '✓',
            _ => char::from(b'a' + rng.below(26) as u8),
        });
    }
    Some(key)
}

/// Up to 8 short byte strings, as whatever list type the field has.
fn gen_list<L: FromIterator<Bytes>>(rng: &mut Rng) -> L {
    let n = rng.below(9);
    (0..n).map(|_| gen_bytes(rng, 64)).collect()
}

fn gen_range(rng: &mut Rng) -> KeyRange {
    let bound = |rng: &mut Rng| (rng.below(3) != 0).then(|| gen_bytes(rng, 16).0);
    KeyRange {
        start: bound(rng),
        end: bound(rng),
    }
}

fn gen_request(rng: &mut Rng) -> StorageRequest {
    use StorageOp::*;
    let idempotency_key = gen_key(rng);
    let s = |rng: &mut Rng| gen_bytes(rng, 300);
    let op = match rng.below(30) {
        0 => KvGet {
            scope: s(rng),
            key: s(rng),
        },
        1 => KvPut {
            scope: s(rng),
            key: s(rng),
            value: s(rng),
        },
        2 => KvDel {
            scope: s(rng),
            key: s(rng),
        },
        3 => Append {
            scope: s(rng),
            ns: s(rng),
            key: s(rng),
            value: s(rng),
        },
        4 => Scan {
            scope: s(rng),
            ns: s(rng),
            key: s(rng),
            after_id: gen_i64(rng),
            limit: gen_u64(rng),
        },
        5 => QueuePush {
            scope: s(rng),
            items: gen_list(rng),
        },
        6 => QueuePop { scope: s(rng) },
        7 => Clear { scope: s(rng) },
        8 => Gc {
            ttl_secs: gen_u64(rng),
        },
        9 => StateGet {
            scope: s(rng),
            ns: s(rng),
            key: s(rng),
        },
        10 => StatePut {
            scope: s(rng),
            ns: s(rng),
            key: s(rng),
            value: s(rng),
        },
        11 => StateDel {
            scope: s(rng),
            ns: s(rng),
            key: s(rng),
        },
        12 => StateGetMany {
            scope: s(rng),
            ns: s(rng),
            keys: gen_list(rng),
        },
        13 => StatePutMany {
            scope: s(rng),
            ns: s(rng),
            items: (0..rng.below(9))
                .map(|_| (gen_bytes(rng, 64), gen_bytes(rng, 64)))
                .collect(),
        },
        14 => StateScan {
            scope: s(rng),
            ns: s(rng),
            range: gen_range(rng),
            reverse: rng.below(2) == 0,
            limit: gen_u64(rng),
        },
        15 => StateDelete {
            scope: s(rng),
            ns: s(rng),
            selection: match rng.below(3) {
                0 => Selection::Keys((0..rng.below(9)).map(|_| gen_bytes(rng, 64).0).collect()),
                1 => Selection::Range(gen_range(rng)),
                _ => Selection::All,
            },
        },
        16 => StateDrain {
            scope: s(rng),
            ns: s(rng),
        },
        17 => CounterGet {
            scope: s(rng),
            ns: s(rng),
            key: s(rng),
        },
        18 => CounterAdd {
            scope: s(rng),
            ns: s(rng),
            key: s(rng),
            delta: gen_i64(rng),
        },
        19 => CounterSet {
            scope: s(rng),
            ns: s(rng),
            key: s(rng),
            value: gen_i64(rng),
        },
        20 => CounterDelete {
            scope: s(rng),
            ns: s(rng),
            key: s(rng),
        },
        21 => QueueLen { scope: s(rng) },
        22 => QueueClear { scope: s(rng) },
        23 => QueueClaim {
            scope: s(rng),
            lease_ms: gen_u64(rng),
        },
        24 => QueueAck {
            scope: s(rng),
            claim_id: gen_i64(rng),
        },
        25 => QueueRelease {
            scope: s(rng),
            claim_id: gen_i64(rng),
        },
        26 => QueueExtend {
            scope: s(rng),
            claim_id: gen_i64(rng),
            lease_ms: gen_u64(rng),
        },
        27 => QueueDeadLetters {
            scope: s(rng),
            limit: gen_u64(rng),
        },
        28 => Sweep {
            ttl_ms: gen_u64(rng),
        },
        _ => Stat {},
    };
    StorageRequest {
        idempotency_key,
        op,
    }
}

// ---------------------------------------------------------------------------------------------
// Mutations.

fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(word)
}

/// A span `start..end` inside `buf`, short more often than long.
fn span(rng: &mut Rng, len: usize) -> (usize, usize) {
    let start = rng.below(len + 1);
    let room = len - start;
    let n = if rng.below(4) == 0 {
        rng.below(room + 1)
    } else {
        rng.below(room.min(16) + 1)
    };
    (start, start + n)
}

/// Overwrites an 8-byte little-endian word with an extreme length. Prefers offsets that hold a
/// plausible length already (a value that fits in what follows), because that is where real
/// length prefixes sit, rather than the middle of a payload.
fn overwrite_length(rng: &mut Rng, buf: &mut Vec<u8>) {
    if buf.len() < 8 {
        buf.resize(8, 0);
    }
    let plausible: Vec<usize> = (0..=buf.len() - 8)
        .filter(|&at| read_u64(buf, at) <= (buf.len() - at - 8) as u64)
        .collect();
    let at = if !plausible.is_empty() && rng.below(4) != 0 {
        *rng.pick(&plausible)
    } else {
        rng.below(buf.len() - 7)
    };
    let rest = (buf.len() - at - 8) as u64;
    let body = buf.len() as u64;
    let small = rng.below(9) as u64;
    let value = match rng.below(13) {
        0 => 0,
        1 => 1,
        2 => u32::MAX.into(),
        3 => u64::from(u32::MAX) + 1,
        4 => u64::MAX,
        5 => i64::MAX as u64,
        6 => rest + small,
        7 => rest.saturating_sub(small),
        8 => body + small,
        9 => body.saturating_sub(small),
        10 => 1 << rng.below(64),
        11 => u64::MAX - small,
        _ => rng.next(),
    };
    buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Overwrites a 4-byte word with a variant index: near the real ones, or absurd.
fn overwrite_variant(rng: &mut Rng, buf: &mut Vec<u8>) {
    if buf.len() < 4 {
        buf.resize(4, 0);
    }
    // The op's index sits at offset 1 when there is no idempotency key; elsewhere otherwise.
    let at = if rng.below(2) == 0 && buf.len() >= 5 {
        1
    } else {
        rng.below(buf.len() - 3)
    };
    let value: u32 = match rng.below(4) {
        0 => u32::MAX,
        1 => 1 << 31,
        _ => rng.below(36) as u32,
    };
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    const INTERESTING: [u8; 8] = [0, 1, 2, 0x7f, 0x80, 0xfe, 0xff, b'a'];
    match rng.below(12) {
        0 => {
            if buf.is_empty() {
                buf.push(0);
            }
            let at = rng.below(buf.len());
            buf[at] ^= 1 << rng.below(8);
        }
        1 => {
            if buf.is_empty() {
                buf.push(0);
            }
            let at = rng.below(buf.len());
            buf[at] = if rng.below(2) == 0 {
                *rng.pick(&INTERESTING)
            } else {
                rng.byte()
            };
        }
        2 => {
            // Insert random bytes, one repeated byte, or a copy of part of the input.
            let at = rng.below(buf.len() + 1);
            let n = if rng.below(8) == 0 {
                rng.below(257)
            } else {
                1 + rng.below(16)
            };
            let chunk: Vec<u8> = match rng.below(3) {
                0 => (0..n).map(|_| rng.byte()).collect(),
                1 => vec![*rng.pick(&INTERESTING); n],
                _ => {
                    let (start, end) = span(rng, buf.len());
                    buf[start..end].to_vec()
                }
            };
            buf.splice(at..at, chunk);
        }
        3 => {
            let (start, end) = span(rng, buf.len());
            buf.drain(start..end);
        }
        4 | 5 => overwrite_length(rng, buf),
        6 => overwrite_variant(rng, buf),
        7 => {
            // Splice: our head, another seed's tail.
            let other = rng.pick(corpus);
            let head = rng.below(buf.len() + 1);
            let tail = rng.below(other.len() + 1);
            buf.truncate(head);
            buf.extend_from_slice(&other[tail..]);
        }
        8 => {
            let keep = rng.below(buf.len() + 1);
            buf.truncate(keep);
        }
        9 => {
            // Copy a chunk over another place in the input.
            let (start, end) = span(rng, buf.len());
            let chunk = buf[start..end].to_vec();
            let at = rng.below(buf.len() - chunk.len() + 1);
            buf[at..at + chunk.len()].copy_from_slice(&chunk);
        }
        10 => {
            // Trailing garbage, which a whole-message decoder must refuse.
            let n = 1 + rng.below(8);
            buf.extend((0..n).map(|_| rng.byte()));
        }
        _ => {
            // Option tags, bools and the first byte of the variant index.
            if buf.is_empty() {
                buf.push(0);
            }
            let at = if rng.below(2) == 0 {
                0
            } else {
                rng.below(buf.len())
            };
            buf[at] = *rng.pick(&[0, 1, 2, 0xff]);
        }
    }
}

fn random_buffer(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(4) {
        0 | 1 => rng.below(33),
        2 => rng.below(257),
        _ => rng.below(MAX_INPUT + 1),
    };
    // Mostly-zero buffers decode much further (None, variant 0, empty strings) than noise.
    let sparse = rng.below(2) == 0;
    (0..len)
        .map(|_| {
            if sparse && rng.below(8) != 0 {
                0
            } else {
                rng.byte()
            }
        })
        .collect()
}

/// Input number `index` of the run seeded with `seed`.
fn input(corpus: &[Vec<u8>], seed: u64, index: u64) -> Vec<u8> {
    let mut rng = Rng::for_input(seed, index);
    let (mut buf, mutations) = match rng.below(16) {
        0 | 1 => return random_buffer(&mut rng),
        2..=4 => {
            let request = gen_request(&mut rng);
            let bytes = wire::encode(&request).expect("encode a generated request");
            (bytes, rng.below(4).saturating_sub(1))
        }
        // A seed left intact now and then: the handler then does real work on real state.
        5 => (rng.pick(corpus).clone(), 0),
        _ => (rng.pick(corpus).clone(), 1 + rng.below(4)),
    };
    for _ in 0..mutations {
        mutate(&mut rng, &mut buf, corpus);
    }
    buf.truncate(MAX_INPUT);
    buf
}

// ---------------------------------------------------------------------------------------------
// Running.

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => {
            let text = text.trim().replace('_', "");
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{name}={text:?} is not a number: {e}"))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a run stands, for its progress line and its stopping rule.
struct Run {
    name: &'static str,
    seed: u64,
    iters: u64,
    deadline: Option<Instant>,
    started: Instant,
}

impl Run {
    fn new(name: &'static str, iters_var: &str, default_iters: u64) -> Self {
        let started = Instant::now();
        let secs = env_u64("SILO_FUZZ_SECS", 0);
        Run {
            name,
            seed: env_u64("SILO_FUZZ_SEED", DEFAULT_SEED),
            iters: env_u64(iters_var, default_iters),
            deadline: (secs > 0).then(|| started + Duration::from_secs(secs)),
            started,
        }
    }

    /// Whether to run input `index`. The clock is read once per 256 inputs: cheap enough.
    fn goes_on(&self, index: u64) -> bool {
        index < self.iters
            && (!index.is_multiple_of(256) || self.deadline.is_none_or(|d| Instant::now() < d))
    }

    fn fail(&self, index: u64, bytes: &[u8], what: &str) -> ! {
        panic!(
            "{}: input #{index} (SILO_FUZZ_SEED={:#x}) {what}\ninput ({} bytes): {}",
            self.name,
            self.seed,
            bytes.len(),
            hex(bytes)
        )
    }

    fn report(&self, ran: u64, detail: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        println!(
            "{}: {ran} inputs in {secs:.2} s ({:.0} inputs/s), seed {:#x}; {detail}",
            self.name,
            ran as f64 / secs.max(1e-9),
            self.seed
        );
    }

    /// Runs `body` with a watchdog: if the index `body` publishes stands still for
    /// [`HANG_AFTER`], the stuck input is printed and the process aborted (a hang cannot be
    /// unwound out of).
    fn watched<R>(&self, corpus: &'static [Vec<u8>], body: impl FnOnce(&AtomicU64) -> R) -> R {
        let progress = &AtomicU64::new(0);
        let (done, finished) = mpsc::channel::<()>();
        let (name, seed) = (self.name, self.seed);
        // `done` moves into the scope's closure so that it drops, waking the watchdog, also
        // when `body` panics; otherwise the scope would wait for the watchdog forever.
        thread::scope(move |scope| {
            scope.spawn(move || {
                let tick = Duration::from_millis(500);
                let (mut last, mut still) = (u64::MAX, Duration::ZERO);
                while let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(tick) {
                    let now = progress.load(Ordering::Relaxed);
                    if now != last {
                        (last, still) = (now, Duration::ZERO);
                        continue;
                    }
                    still += tick;
                    if still >= HANG_AFTER {
                        let bytes = input(corpus, seed, now);
                        // Straight to stderr: `eprintln!` goes to the test harness's capture
                        // buffer, which the abort would throw away.
                        let _ = writeln!(
                            std::io::stderr(),
                            "{name}: input #{now} (SILO_FUZZ_SEED={seed:#x}) made no progress \
                             for {HANG_AFTER:?}\ninput ({} bytes): {}",
                            bytes.len(),
                            hex(&bytes)
                        );
                        std::process::abort();
                    }
                }
            });
            let result = body(progress);
            drop(done);
            result
        })
    }
}

#[test]
fn decoder_never_panics() {
    let corpus = corpus();
    let run = Run::new("decoder", "SILO_FUZZ_ITERS", DEFAULT_DECODER_ITERS);
    let (ran, decoded) = run.watched(corpus, |progress| {
        let (mut ran, mut decoded) = (0u64, 0u64);
        while run.goes_on(ran) {
            progress.store(ran, Ordering::Relaxed);
            let bytes = input(corpus, run.seed, ran);
            let outcome = panic::catch_unwind(|| wire::decode::<StorageRequest>(&bytes));
            match outcome {
                Err(_) => run.fail(ran, &bytes, "panicked in wire::decode"),
                Ok(Err(_)) => {}
                Ok(Ok(request)) => {
                    decoded += 1;
                    // The layout has one encoding per value, so anything accepted must be
                    // exactly what encoding the decoded value gives.
                    match wire::encode(&request) {
                        Ok(again) if again == bytes => {}
                        Ok(again) => run.fail(
                            ran,
                            &bytes,
                            &format!("re-encodes differently: {}", hex(&again)),
                        ),
                        Err(e) => run.fail(ran, &bytes, &format!("cannot be re-encoded: {e}")),
                    }
                }
            }
            ran += 1;
        }
        (ran, decoded)
    });
    run.report(ran, &format!("{decoded} decoded"));
}

fn fresh_router() -> Router {
    silo_server::router(silo_server::Config::new(Arc::new(MemoryStorage::new())))
}

/// One `POST /rpc` through the router, in process; the status and the whole reply body.
async fn post_rpc(router: &Router, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let request = Request::builder()
        .method(Method::POST)
        .uri("/rpc")
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(body))
        .expect("a well-formed request");
    let Ok(response) = router.clone().oneshot(request).await;
    let status = response.status();
    let reply = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) => panic!("reading a {status} reply failed: {e}"),
    };
    (status, reply)
}

/// `VmRSS` and `VmHWM` of this process in bytes, where `/proc` has them.
fn memory() -> Option<(u64, u64)> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[test]
fn handler_never_panics_and_answers_4xx() {
    let corpus = corpus();
    let run = Run::new("handler", "SILO_FUZZ_HANDLER_ITERS", DEFAULT_HANDLER_ITERS);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");

    // A plain valid request must succeed, or every later 4xx would be meaningless (a router
    // that started demanding auth would answer 401 to everything and pass vacuously).
    let probe = wire::encode(&req(None, StorageOp::Stat {})).expect("encode Stat");
    let (status, text) = runtime.block_on(post_rpc(&fresh_router(), probe));
    assert_eq!(
        status,
        StatusCode::OK,
        "a plain Stat request failed ({}); does the router need auth now?",
        String::from_utf8_lossy(&text)
    );

    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut ok_ops = vec![0u64; wire::OP_NAMES.len()];
    let (ran, decodable) = run.watched(corpus, |progress| {
        let (mut ran, mut decodable) = (0u64, 0u64);
        let mut router = fresh_router();
        while run.goes_on(ran) {
            progress.store(ran, Ordering::Relaxed);
            if ran.is_multiple_of(ROUTER_LIFETIME) {
                router = fresh_router();
            }
            let bytes = input(corpus, run.seed, ran);
            let request = wire::decode::<StorageRequest>(&bytes).ok();
            decodable += u64::from(request.is_some());
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                runtime.block_on(post_rpc(&router, bytes.clone()))
            }));
            let Ok((status, reply)) = outcome else {
                run.fail(ran, &bytes, "panicked in the handler")
            };
            *statuses.entry(status.as_u16()).or_default() += 1;
            let text = || String::from_utf8_lossy(&reply).into_owned();
            if status != StatusCode::OK && !status.is_client_error() {
                run.fail(ran, &bytes, &format!("answered {status}: {}", text()));
            }
            let Some(request) = request else {
                if status != StatusCode::BAD_REQUEST {
                    run.fail(ran, &bytes, &format!("undecodable, answered {status}"));
                }
                ran += 1;
                continue;
            };
            if status == StatusCode::OK {
                if let Some(n) = ok_ops.get_mut(request.op.index()) {
                    *n += 1;
                }
                // A success carries a reply in the same canonical layout.
                match wire::decode::<StorageReply>(&reply) {
                    Ok(decoded) if wire::encode(&decoded).ok().as_deref() == Some(&reply[..]) => {}
                    Ok(_) => run.fail(ran, &bytes, "the reply does not re-encode to itself"),
                    Err(e) => run.fail(ran, &bytes, &format!("the reply is undecodable: {e}")),
                }
            }
            ran += 1;
        }
        (ran, decodable)
    });

    let reached = ok_ops.iter().filter(|&&n| n > 0).count();
    let memory = memory();
    let memory_text = match memory {
        Some((rss, hwm)) => format!(
            "VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            rss as f64 / 1048576.0,
            hwm as f64 / 1048576.0
        ),
        None => "memory not measured (no /proc/self/status)".into(),
    };
    run.report(
        ran,
        &format!(
            "{decodable} decodable; statuses {statuses:?}; {reached}/{} ops answered 200; \
             {memory_text}",
            ok_ops.len()
        ),
    );
    if let Some((_, hwm)) = memory {
        assert!(
            hwm < MAX_HWM_BYTES,
            "peak resident memory {hwm} bytes over {MAX_HWM_BYTES}"
        );
    }
}
