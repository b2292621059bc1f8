//! When `fs:` compacts (SPEC §5, "Compaction"): by garbage — the chain holds more dead bytes
//! than live ones, and more than `compact_min_bytes` — or by growth, once the log since the
//! base passes the base and 16 segments. A store that only grows is not rewritten again and
//! again; one that overwrites the same key stays small; growth alone compacts, rarely.
//! Compactions are counted from outside: each one names a new base in `CURRENT`.

#![cfg(feature = "fs")]

use std::path::Path;

/// The base `CURRENT` names (`None` before the first compaction).
fn current(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("CURRENT")).ok()
}

/// Bytes of every file in the store directory.
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("seg-")
        })
        .count()
}

/// Calls `write(i)` `n` times and counts the compactions they ran; `after(i)` looks at the
/// directory after each.
fn count_compactions(
    dir: &Path,
    n: usize,
    mut write: impl FnMut(usize),
    mut after: impl FnMut(usize),
) -> usize {
    let mut base = current(dir);
    let mut compactions = 0;
    for i in 0..n {
        write(i);
        let now = current(dir);
        if now != base {
            compactions += 1;
            base = now;
        }
        after(i);
    }
    compactions
}

fn entry(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 131 + j / 97) as u8).collect()
}

/// The Arrow buffering shape: large entries appended to several logs by two handles (as two
/// processes), nothing dead. 48 MiB with a 1 MiB floor compacted six times under the old
/// policy (whenever the log passed the base), rewriting 63 MiB; now never (the growth floor
/// is 16 segments of 4 MiB).
#[test]
fn an_append_only_store_is_not_rewritten_again_and_again() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store");
    let url = format!(
        "fs://{}?segment_bytes=4194304&compact_min_bytes=1048576",
        path.display()
    );
    let a = silo::open(&url).unwrap();
    let b = silo::open(&url).unwrap();
    let n = 48;
    let compactions = count_compactions(
        &path,
        n,
        |i| {
            let store = if i % 2 == 0 { &a } else { &b };
            let key = format!("sink-{}", i % 4);
            store
                .append(b"exec", b"sinks", key.as_bytes(), &entry(i, 1 << 20))
                .unwrap();
            store
                .state_put(b"exec", b"index", format!("{i}").as_bytes(), b"")
                .unwrap();
        },
        |_| {},
    );
    assert_eq!(
        compactions, 0,
        "an append-only store of {n} MiB was compacted {compactions} times"
    );
    // Everything is there, through a fresh open that replays the whole log.
    drop((a, b));
    let store = silo::open(&url).unwrap();
    for k in 0..4 {
        let got = store
            .scan(b"exec", b"sinks", format!("sink-{k}").as_bytes(), 0, 1000)
            .unwrap();
        let want: Vec<Vec<u8>> = (k..n).step_by(4).map(|i| entry(i, 1 << 20)).collect();
        assert!(
            got.into_iter().map(|(_, v)| v).collect::<Vec<_>>() == want,
            "log {k}"
        );
    }
}

/// A key overwritten over and over: everything but the last value is dead, so compaction
/// runs whenever the dead bytes pass the floor (1 MiB) and the live ones, and the files stay
/// within live + floor + one value, far below the 16 segments growth alone would allow.
#[test]
fn an_overwritten_key_is_compacted_and_its_files_stay_small() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store");
    let url = format!(
        "fs://{}?segment_bytes=262144&compact_min_bytes=1048576",
        path.display()
    );
    let store = silo::open(&url).unwrap();
    let value_len = 200 << 10;
    let n = 400; // ~80 MiB written
    let mut largest = 0;
    let compactions = count_compactions(
        &path,
        n,
        |i| store.kv_put(b"s", b"k", &entry(i, value_len)).unwrap(),
        |_| largest = largest.max(disk_bytes(&path)),
    );
    assert!(
        largest <= 2 << 20,
        "the store grew to {largest} bytes holding one {value_len}-byte value"
    );
    assert!(
        compactions >= 40,
        "{compactions} compactions for {n} overwrites"
    );
    assert_eq!(
        store.kv_get(b"s", b"k").unwrap(),
        Some(entry(n - 1, value_len))
    );
}

/// Growth alone compacts once the log since the base passes the base and 16 segments: the
/// files a process holds open stay bounded, and compactions are rare (the log doubles
/// between them).
#[test]
fn growth_alone_compacts_past_sixteen_segments_and_then_as_the_store_doubles() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store");
    let segment = 64 << 10;
    let url = format!(
        "fs://{}?segment_bytes={segment}&compact_min_bytes={segment}",
        path.display()
    );
    let store = silo::open(&url).unwrap();
    let n = 512; // 16 MiB in 32 KiB entries
    let mut most_segments = 0;
    let compactions = count_compactions(
        &path,
        n,
        |i| {
            store
                .append(b"s", b"", b"log", &entry(i, 32 << 10))
                .unwrap();
        },
        |_| {
            // Beyond the base, the log since it never spans much more than the larger of
            // 16 segments and the base (plus the one being written and a sealed one).
            let base = std::fs::read_dir(&path)
                .unwrap()
                .filter_map(|e| {
                    let e = e.unwrap();
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with("base-")
                        .then(|| e.metadata().unwrap().len())
                })
                .sum::<u64>();
            let allowed = 16.max(base / segment as u64) as usize + 3;
            let now = segments(&path);
            assert!(now <= allowed, "{now} segments beside a {base}-byte base");
            most_segments = most_segments.max(now);
        },
    );
    // 1, 2, 4, 8 MiB (then 16 MiB would need 16 more): a handful, not one per segment.
    assert!(
        (3..=5).contains(&compactions),
        "{compactions} compactions for {n} appends of 32 KiB"
    );
    assert!(
        most_segments >= 16,
        "the log grew to {most_segments} segments"
    );
    let got = store.scan(b"s", b"", b"log", 0, u64::MAX).unwrap();
    assert_eq!(got.len(), n);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, (_, v))| *v == entry(i, 32 << 10))
    );
}
