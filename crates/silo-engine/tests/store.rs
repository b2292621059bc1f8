//! The byte-image Store layer: the file and in-memory images behave alike under any sequence
//! of operations; the memory image loses exactly the unsynced bytes on a power loss; the fault
//! injector fails, tears and crashes where it is told; the file lock holds across processes.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use silo_engine::{FaultPlan, FaultyStore, FileStore, LockMode, MemStore, Store};

/// A small deterministic generator (splitmix64), so a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn outcome<T>(r: io::Result<T>) -> Result<T, io::ErrorKind> {
    r.map_err(|e| e.kind())
}

/// Random appends, writes (in place, extending, and past the end), truncates, syncs and reads:
/// the file and the memory image agree on every result and on every byte.
#[test]
fn file_and_memory_images_agree_on_any_sequence() {
    for seed in 0..20u64 {
        let dir = tempfile::tempdir().unwrap();
        let file = FileStore::open(dir.path().join("image")).unwrap();
        let mem = MemStore::new();
        let mut rng = Rng(seed);
        for step in 0..400 {
            let len = mem.len().unwrap();
            let data: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
            let what = format!("seed {seed} step {step}");
            match rng.below(6) {
                0 | 1 => assert_eq!(
                    outcome(file.append(&data)),
                    outcome(mem.append(&data)),
                    "{what}"
                ),
                2 => {
                    let at = rng.below(len + 3);
                    assert_eq!(
                        outcome(file.write_at(&data, at)),
                        outcome(mem.write_at(&data, at)),
                        "{what}: write at {at} of {len}"
                    );
                }
                3 => {
                    let to = rng.below(len + 3);
                    assert_eq!(
                        outcome(file.truncate(to)),
                        outcome(mem.truncate(to)),
                        "{what}"
                    );
                }
                4 => assert_eq!(outcome(file.sync()), outcome(mem.sync()), "{what}"),
                _ => {
                    let at = rng.below(len + 3);
                    let n = rng.below(64) as usize;
                    let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
                    let read = outcome(file.read_at(&mut a, at));
                    assert_eq!(
                        read,
                        outcome(mem.read_at(&mut b, at)),
                        "{what}: read {n} at {at} of {len}"
                    );
                    if read.is_ok() {
                        assert_eq!(a, b, "{what}");
                    }
                }
            }
            assert_eq!(file.len().unwrap(), mem.len().unwrap(), "{what}");
        }
        let mut on_disk = vec![0u8; file.len().unwrap() as usize];
        file.read_at(&mut on_disk, 0).unwrap();
        assert_eq!(on_disk, mem.bytes(), "seed {seed}: same bytes");
    }
}

#[test]
fn a_power_loss_drops_exactly_the_unsynced_bytes() {
    let mem = MemStore::new();
    mem.append(b"durable").unwrap();
    mem.sync().unwrap();
    mem.append(b" lost").unwrap();
    mem.write_at(b"D", 0).unwrap();
    mem.power_loss();
    assert_eq!(mem.bytes(), b"durable");
    mem.truncate(3).unwrap();
    mem.sync().unwrap();
    mem.append(b"x").unwrap();
    mem.power_loss();
    assert_eq!(mem.bytes(), b"dur", "a synced truncate is durable too");
}

#[test]
fn faults_strike_where_they_are_told() {
    // Reads and lengths do not count; the third mutating operation fails and changes nothing.
    let faulty = FaultyStore::new(MemStore::new(), 2, FaultPlan::Fail);
    faulty.append(b"one").unwrap();
    assert_eq!(faulty.len().unwrap(), 3);
    faulty.sync().unwrap();
    assert!(faulty.append(b"two").is_err());
    assert!(faulty.fired());
    assert_eq!(
        faulty.inner().bytes(),
        b"one",
        "a failed append wrote nothing"
    );
    faulty.append(b"two").unwrap();
    assert_eq!(faulty.inner().bytes(), b"onetwo", "later operations work");

    // A short write leaves a torn tail behind the error, as a real disk can.
    let torn = FaultyStore::new(MemStore::new(), 0, FaultPlan::ShortWrite(2));
    assert!(torn.append(b"abcdef").is_err());
    assert_eq!(torn.inner().bytes(), b"ab");

    // A crash fails the operation and every later one, reads included.
    let crashed = FaultyStore::new(MemStore::new(), 1, FaultPlan::Crash);
    crashed.append(b"kept?").unwrap();
    assert!(crashed.sync().is_err(), "the crash strikes the sync");
    assert!(crashed.append(b"more").is_err());
    let mut buf = [0u8; 1];
    assert!(crashed.read_at(&mut buf, 0).is_err());
    crashed.inner().power_loss();
    assert!(
        crashed.inner().bytes().is_empty(),
        "the unsynced append died with it"
    );
}

#[test]
fn a_file_image_is_private_and_reopens_with_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image");
    let store = FileStore::open(&path).unwrap();
    assert_eq!(store.append(b"hello").unwrap(), 0);
    assert_eq!(store.append(b" world").unwrap(), 5);
    store.sync().unwrap();
    drop(store);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = FileStore::open(&path).unwrap();
    let mut buf = vec![0u8; 11];
    again.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, b"hello world");
    let mut past = [0u8; 2];
    let err = again.read_at(&mut past, 10).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

/// The lock holds between two opens of one file in this process and against another process
/// (`flock(1)` from util-linux takes the same kind of lock).
#[test]
fn the_file_lock_holds_across_opens_and_processes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image");
    let a = FileStore::open(&path).unwrap();
    let b = FileStore::open(&path).unwrap();
    let held = a.lock(LockMode::Exclusive).unwrap();
    assert!(
        b.try_lock(LockMode::Shared).unwrap().is_none(),
        "exclusive excludes"
    );
    let other_process = |mode: &str| {
        Command::new("flock")
            .args([mode, "-n"])
            .arg(&path)
            .arg("true")
            .status()
            .expect("run flock(1)")
            .success()
    };
    assert!(
        !other_process("-s"),
        "another process cannot take it either"
    );
    drop(held);
    let r1 = a.lock(LockMode::Shared).unwrap();
    let r2 = b.try_lock(LockMode::Shared).unwrap();
    assert!(r2.is_some(), "shared locks share");
    assert!(other_process("-s"));
    assert!(!other_process("-x"), "but exclude a writer");
    drop((r1, r2));
    assert!(other_process("-x"), "released on drop");
}

#[test]
fn the_memory_lock_is_shared_by_clones() {
    let a = MemStore::new();
    let b = a.clone();
    let held = a.lock(LockMode::Exclusive).unwrap();
    assert!(b.try_lock(LockMode::Shared).unwrap().is_none());
    let waiter = std::thread::spawn(move || {
        let _w = b.lock(LockMode::Exclusive).unwrap();
        b.append(b"after").unwrap();
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    a.append(b"first").unwrap();
    drop(held);
    waiter.join().unwrap();
    assert_eq!(
        a.bytes(),
        b"firstafter",
        "the waiter ran after the holder released"
    );
}
