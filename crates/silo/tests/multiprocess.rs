//! Cross-process behaviour on SQLite and `fs:` with real OS processes: the kit's scenarios
//! (`silo::conformance::processes`), plus a full disk in a writer process. `fs:` runs them
//! again with tiny segments, so seals and compactions happen while other processes read.

mod common;

use std::io::Write;

use common::TempStore;
use silo::conformance::processes::{self, finish, spawn};

silo::worker_entry!(|role, url| {
    if role != "fill" && role != "fill-batches" {
        return false;
    }
    let store = silo::open(url).expect("worker opens the store");
    let fsize = std::env::var("FSIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    limit_file_size(fsize);
    if role == "fill" {
        fill_until_full(&*store, &mut std::io::stdout().lock());
    } else {
        fill_with_batches(&*store, &mut std::io::stdout().lock());
    }
    true
});

/// Items per batch in the `fill-batches` role.
const BATCH: u32 = 8;

/// Caps the size of any file this process writes; an oversized write then fails with EFBIG
/// instead of killing the process.
fn limit_file_size(fsize: u64) {
    // SAFETY: plain libc calls on this process: ignore SIGXFSZ, then set the limit.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit {
            rlim_cur: fsize,
            rlim_max: fsize,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

/// Alternates batches (a `state_put_many` and a `queue_push` of `BATCH` 16 KiB values each)
/// until the file-size limit stops one midway through its commit; prints each acknowledged
/// batch and the error.
fn fill_with_batches(store: &dyn silo::FunctionStorage, out: &mut impl Write) {
    let value = |seq: u64, i: u32| {
        let mut v = vec![0xcdu8; 16 << 10];
        v[..8].copy_from_slice(&seq.to_le_bytes());
        v[8..12].copy_from_slice(&i.to_le_bytes());
        v
    };
    for seq in 0u64.. {
        let outcome = if seq % 2 == 0 {
            let pairs: Vec<_> = (0..BATCH)
                .map(|i| ([seq.to_be_bytes(), [0; 8]].concat()[..12].to_vec(), i))
                .map(|(mut k, i)| {
                    k[8..12].copy_from_slice(&i.to_be_bytes());
                    (k, value(seq, i))
                })
                .collect();
            store.state_put_many(b"mp-batches", b"b", &pairs)
        } else {
            let items: Vec<_> = (0..BATCH).map(|i| value(seq, i)).collect();
            store.queue_push(b"mp-batches", &items)
        };
        match outcome {
            Ok(()) => writeln!(out, "ok {seq}").unwrap(),
            Err(e) => {
                writeln!(out, "error {seq} {e}").unwrap();
                return;
            }
        }
    }
}

/// Writes until a file-size limit stops it; prints each acknowledged sequence number and
/// finally the error it got.
fn fill_until_full(store: &dyn silo::FunctionStorage, out: &mut impl Write) {
    let value = vec![0xabu8; 16 << 10];
    for seq in 0u64.. {
        match store.kv_put(b"mp-full", &seq.to_be_bytes(), &value) {
            Ok(()) => {
                writeln!(out, "ok {seq}").unwrap();
            }
            Err(e) => {
                writeln!(out, "error {e}").unwrap();
                // The store stays usable for reads after a failed write.
                let first = store.kv_get(b"mp-full", &0u64.to_be_bytes()).unwrap();
                writeln!(out, "read-after-error {}", first.is_some()).unwrap();
                return;
            }
        }
    }
}

#[test]
fn sqlite_four_poppers_one_pusher() {
    processes::four_poppers_one_pusher(&TempStore::sqlite("").url);
}

#[test]
fn sqlite_four_pushers() {
    processes::four_pushers(&TempStore::sqlite("").url);
}

#[test]
fn sqlite_four_appenders() {
    processes::four_appenders(&TempStore::sqlite("").url);
}

#[test]
fn sqlite_killed_writer_loses_nothing_acknowledged() {
    processes::killed_writer_loses_nothing_acknowledged(&TempStore::sqlite("").url);
}

#[test]
fn sqlite_leased_consumers_survive_a_kill() {
    processes::leased_consumers_survive_a_kill(&TempStore::sqlite("").url);
}

/// Options that make `fs:` seal a segment every 16 KiB and compact from 64 KiB on.
const FS_SMALL: &str = "segment_bytes=16384&compact_min_bytes=65536";

#[test]
fn fs_four_poppers_one_pusher() {
    processes::four_poppers_one_pusher(&TempStore::fs("").url);
    processes::four_poppers_one_pusher(&TempStore::fs(FS_SMALL).url);
}

#[test]
fn fs_four_pushers() {
    processes::four_pushers(&TempStore::fs("").url);
    processes::four_pushers(&TempStore::fs(FS_SMALL).url);
}

#[test]
fn fs_four_appenders() {
    processes::four_appenders(&TempStore::fs("").url);
    processes::four_appenders(&TempStore::fs(FS_SMALL).url);
}

#[test]
fn fs_killed_writer_loses_nothing_acknowledged() {
    processes::killed_writer_loses_nothing_acknowledged(&TempStore::fs("").url);
    processes::killed_writer_loses_nothing_acknowledged(&TempStore::fs(FS_SMALL).url);
}

#[test]
fn fs_leased_consumers_survive_a_kill() {
    processes::leased_consumers_survive_a_kill(&TempStore::fs("").url);
    processes::leased_consumers_survive_a_kill(&TempStore::fs(FS_SMALL).url);
}

/// The largest file of a store's directory (or the file itself): what a per-file size limit
/// must leave room above.
fn largest_file(path: &std::path::Path) -> u64 {
    if path.is_file() {
        return std::fs::metadata(path).unwrap().len();
    }
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap_or(0)
}

/// A full disk (RLIMIT_FSIZE in the writer) gives a clear error, the writer's process
/// survives, and every write acknowledged before stays readable.
#[test]
fn sqlite_full_disk_is_an_error_and_loses_nothing() {
    let temp = TempStore::sqlite("");
    full_disk_is_an_error_and_loses_nothing(&temp, &temp.dir.path().join("state.db"), "state.db");
}

#[test]
fn fs_full_disk_is_an_error_and_loses_nothing() {
    let temp = TempStore::fs("");
    full_disk_is_an_error_and_loses_nothing(&temp, &temp.dir.path().join("store"), "seg-");
}

fn full_disk_is_an_error_and_loses_nothing(temp: &TempStore, data: &std::path::Path, names: &str) {
    temp.kv_put(b"mp-full", b"before", b"kept").unwrap();
    let db_len = largest_file(data);
    let child = spawn(
        &temp.url,
        "fill",
        &[("FSIZE", (db_len + (2 << 20)).to_string())],
    );
    let lines = finish(child);
    let error = lines
        .iter()
        .find_map(|l| l.strip_prefix("error "))
        .expect("the writer hit the limit");
    assert!(error.contains(names), "the error names the file: {error}");
    assert!(
        lines.contains(&"read-after-error true".to_string()),
        "{lines:?}"
    );
    let acked: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ok ").map(|s| s.parse().unwrap()))
        .collect();
    assert!(acked.len() > 10, "some writes fit before the limit");
    let store = silo::open(&temp.url).expect("store opens after the full disk");
    for seq in acked {
        assert!(
            store
                .kv_get(b"mp-full", &seq.to_be_bytes())
                .unwrap()
                .is_some(),
            "write {seq} kept"
        );
    }
    assert_eq!(
        store.kv_get(b"mp-full", b"before").unwrap(),
        Some(b"kept".to_vec())
    );
}

/// A popper whose STOP item never comes (lost, or never pushed) fails the test at the
/// deadline instead of hanging it.
#[test]
fn a_worker_waiting_for_a_lost_stop_fails_at_the_deadline() {
    let store = TempStore::sqlite("");
    let popper = spawn(&store.url, "pop", &[]);
    let outcome = std::panic::catch_unwind(|| {
        processes::finish_within(popper, std::time::Duration::from_secs(2))
    });
    let message = outcome.expect_err("the popper never gets STOP");
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("did not finish"), "{text}");
}

/// Batches that a full disk stops midway through their commit are all-or-nothing: every
/// acknowledged batch is whole, the failed one left no item behind, and none is partial. The
/// limit is moved across a batch's width so the cut falls at every point inside one.
#[test]
fn sqlite_batches_cut_by_a_full_disk_are_all_or_nothing() {
    for cut in 0..BATCH as u64 {
        let temp = TempStore::sqlite("");
        let data = temp.dir.path().join("state.db");
        batches_cut_by_a_full_disk(&temp, &data, (3 << 20) + cut * ((16 << 10) + 977));
    }
}

#[test]
fn fs_batches_cut_by_a_full_disk_are_all_or_nothing() {
    for cut in 0..BATCH as u64 {
        let temp = TempStore::fs("");
        let data = temp.dir.path().join("store");
        batches_cut_by_a_full_disk(&temp, &data, (3 << 20) + cut * ((16 << 10) + 977));
    }
}

fn batches_cut_by_a_full_disk(temp: &TempStore, data: &std::path::Path, room: u64) {
    let db_len = largest_file(data);
    let child = spawn(
        &temp.url,
        "fill-batches",
        &[("FSIZE", (db_len + room).to_string())],
    );
    let lines = finish(child);
    let failed: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("error "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("a batch hit the limit");
    let acked: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ok ").map(|s| s.parse().unwrap()))
        .collect();
    assert!(
        acked.len() > 4,
        "some batches fit before the limit: {lines:?}"
    );
    let store = silo::open(&temp.url).expect("store opens after the full disk");
    let mut count = std::collections::BTreeMap::<u64, u32>::new();
    for (key, value) in store.state_drain(b"mp-batches", b"b").unwrap() {
        let seq = u64::from_be_bytes(key[..8].try_into().unwrap());
        assert_eq!(value[..8], seq.to_le_bytes(), "pair of batch {seq} intact");
        *count.entry(seq).or_default() += 1;
    }
    while let Some(item) = store.queue_pop(b"mp-batches").unwrap() {
        let seq = u64::from_le_bytes(item[..8].try_into().unwrap());
        *count.entry(seq).or_default() += 1;
    }
    for (seq, n) in &count {
        assert_eq!(*n, BATCH, "batch {seq} is whole, not partial (room {room})");
        assert!(
            acked.contains(seq),
            "batch {seq} was stored but not acknowledged"
        );
    }
    for seq in &acked {
        assert!(count.contains_key(seq), "acknowledged batch {seq} kept");
    }
    assert!(
        !count.contains_key(&failed),
        "the failed batch {failed} left nothing"
    );
}
