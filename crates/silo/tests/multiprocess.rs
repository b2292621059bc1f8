//! Cross-process behaviour on SQLite with real OS processes: the kit's scenarios
//! (`silo::conformance::processes`), plus a full disk in a writer process.

mod common;

use std::io::Write;

use common::TempStore;
use silo::conformance::processes::{self, finish, spawn};

silo::worker_entry!(|role, url| {
    if role != "fill" {
        return false;
    }
    let store = silo::open(url).expect("worker opens the store");
    let fsize = std::env::var("FSIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    fill_until_full(&*store, fsize, &mut std::io::stdout().lock());
    true
});

/// Writes until a file-size limit stops it; prints each acknowledged sequence number and
/// finally the error it got.
fn fill_until_full(store: &dyn silo::FunctionStorage, fsize: u64, out: &mut impl Write) {
    // SAFETY: plain libc calls on this process: ignore SIGXFSZ so an oversized write fails
    // with EFBIG instead of killing the process, then cap the size of any file we write.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit {
            rlim_cur: fsize,
            rlim_max: fsize,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
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

/// A full disk (RLIMIT_FSIZE in the writer) gives a clear error, the writer's process
/// survives, and every write acknowledged before stays readable.
#[test]
fn sqlite_full_disk_is_an_error_and_loses_nothing() {
    let temp = TempStore::sqlite("");
    temp.kv_put(b"mp-full", b"before", b"kept").unwrap();
    let db_len = std::fs::metadata(temp.dir.path().join("state.db"))
        .unwrap()
        .len();
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
    assert!(
        error.contains("state.db"),
        "the error names the file: {error}"
    );
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
