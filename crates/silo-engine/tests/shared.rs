//! The shared page (`SharedFile`): the writers' lock across threads and real processes, a
//! holder killed with SIGKILL, a stale page left "locked", and the change counter.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use silo_engine::{PageLock, Shared, SharedFile, Synced, sync_through};

const HOLDER_PAGE: &str = "SILO_TEST_SHARED_PAGE";

/// Entry point of the child process: takes the lock, says so, and waits to be killed.
#[test]
#[ignore = "child process entry point, started by the tests below"]
fn holder() {
    let Ok(path) = std::env::var(HOLDER_PAGE) else {
        return;
    };
    let page = SharedFile::open(Path::new(&path)).unwrap();
    let held = page
        .lock(PageLock::Writers, Duration::from_secs(5))
        .unwrap()
        .unwrap();
    page.bump();
    println!("locked");
    std::thread::sleep(Duration::from_secs(60));
    drop(held);
}

#[test]
fn a_lock_held_by_a_killed_process_passes_on_marked_owner_died() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("LOCK");
    let page = SharedFile::open(&path).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["holder", "--exact", "--ignored", "--nocapture", "--quiet"])
        .env(HOLDER_PAGE, &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while !line.contains("locked") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the holder exited");
    }
    assert!(
        page.lock(PageLock::Writers, Duration::from_millis(50))
            .unwrap()
            .is_none(),
        "the holder has it"
    );
    assert_eq!(page.changes(), 1, "the holder's bump is visible here");
    child.kill().unwrap();
    child.wait().unwrap();
    let taken = page
        .lock(PageLock::Writers, Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert!(taken.owner_died, "the next holder learns the last one died");
    drop(taken);
    let again = page
        .lock(PageLock::Writers, Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert!(
        !again.owner_died,
        "after an orderly release it is clean again"
    );
}

#[test]
fn a_held_lock_waits_and_times_out_then_passes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("LOCK");
    let a = SharedFile::open(&path).unwrap();
    let b = SharedFile::open(&path).unwrap();
    let held = a
        .lock(PageLock::Writers, Duration::from_secs(1))
        .unwrap()
        .unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            assert!(
                b.lock(PageLock::Writers, Duration::from_millis(30))
                    .unwrap()
                    .is_none()
            );
        })
        .join()
        .unwrap();
        let waiter = s.spawn(|| {
            b.lock(PageLock::Writers, Duration::from_secs(10))
                .unwrap()
                .is_some()
        });
        std::thread::sleep(Duration::from_millis(30));
        drop(held);
        assert!(
            waiter.join().unwrap(),
            "a waiter gets it once it is released"
        );
    });
}

#[test]
fn one_thread_taking_it_twice_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("LOCK");
    let a = SharedFile::open(&path).unwrap();
    let b = SharedFile::open(&path).unwrap();
    let _held = a
        .lock(PageLock::Writers, Duration::from_secs(1))
        .unwrap()
        .unwrap();
    let e = b
        .lock(PageLock::Writers, Duration::from_secs(30))
        .unwrap_err();
    assert!(e.to_string().contains("already holds"), "{e}");
}

#[test]
fn a_page_nobody_has_open_is_initialised_afresh() {
    // A page copied while locked is what a machine crash leaves behind: the lock word says
    // "held" by a thread that no longer exists. The first opener must not trust it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("LOCK");
    let copy = dir.path().join("LOCK-after-a-crash");
    let page = SharedFile::open(&path).unwrap();
    let held = page
        .lock(PageLock::Writers, Duration::from_secs(1))
        .unwrap()
        .unwrap();
    page.bump();
    std::fs::copy(&path, &copy).unwrap();
    drop(held);
    drop(page);
    let reopened = SharedFile::open(&copy).unwrap();
    assert_eq!(reopened.changes(), 0, "a fresh page starts its count again");
    let taken = reopened
        .lock(PageLock::Writers, Duration::from_millis(200))
        .unwrap();
    assert!(taken.is_some(), "a stale lock word was trusted");
}

#[test]
fn every_handle_sees_the_count_and_a_second_opener_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("LOCK");
    let a = SharedFile::open(&path).unwrap();
    let held = a
        .lock(PageLock::Writers, Duration::from_secs(1))
        .unwrap()
        .unwrap();
    assert_eq!(a.bump(), 1);
    assert_eq!(a.bump(), 2);
    drop(held);
    let b = SharedFile::open(&path).unwrap();
    assert_eq!(b.changes(), 2, "a page in use is not reinitialised");
    let held = b
        .lock(PageLock::Writers, Duration::from_secs(1))
        .unwrap()
        .unwrap();
    assert_eq!(b.bump(), 3);
    drop(held);
    assert_eq!(a.changes(), 3);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_waiter_covered_by_another_fsync_returns_without_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("LOCK");
    let syncer = SharedFile::open(&path).unwrap();
    let waiter = SharedFile::open(&path).unwrap();
    let held = syncer
        .lock(PageLock::Sync, Duration::from_secs(1))
        .unwrap()
        .unwrap();
    std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            let mut synced_itself = 0;
            let done = sync_through(&waiter, 7, 100, Duration::from_secs(10), || {
                synced_itself += 1;
                Ok(100)
            })
            .unwrap();
            (done, synced_itself)
        });
        std::thread::sleep(Duration::from_millis(20));
        // The other process's fsync measured 250 bytes of segment 7 before it ran.
        syncer.publish_synced(Synced {
            segment: 7,
            end: 250,
            cuts: syncer.cuts(),
        });
        let (done, synced_itself) = waiting.join().unwrap();
        assert!(done);
        assert_eq!(synced_itself, 0, "it ran an fsync that another had covered");
    });
    drop(held);
    // Past the record, or after a cut, it syncs itself.
    let mut calls = 0;
    assert!(
        sync_through(&waiter, 7, 300, Duration::from_secs(1), || {
            calls += 1;
            Ok(300)
        })
        .unwrap()
    );
    assert_eq!(calls, 1);
    let held = waiter
        .lock(PageLock::Writers, Duration::from_secs(1))
        .unwrap()
        .unwrap();
    waiter.cut();
    drop(held);
    assert!(
        sync_through(&waiter, 7, 10, Duration::from_secs(1), || {
            calls += 1;
            Ok(300)
        })
        .unwrap()
    );
    assert_eq!(
        calls, 2,
        "a record from before a cut vouched for rewritten bytes"
    );
    assert_eq!(
        syncer.synced(),
        Synced {
            segment: 7,
            end: 300,
            cuts: 1
        }
    );
}

#[test]
fn a_waiter_times_out_while_the_syncer_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("LOCK");
    let syncer = SharedFile::open(&path).unwrap();
    let waiter = SharedFile::open(&path).unwrap();
    let _held = syncer
        .lock(PageLock::Sync, Duration::from_secs(1))
        .unwrap()
        .unwrap();
    std::thread::scope(|s| {
        let done = s
            .spawn(|| sync_through(&waiter, 1, 10, Duration::from_millis(50), || Ok(10)).unwrap())
            .join()
            .unwrap();
        assert!(!done);
    });
}
