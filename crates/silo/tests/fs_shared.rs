//! `fs:` processes coordinating through the shared page. A writer that dies after its frame
//! landed but before it told anyone (it bumps the change counter after the append) must not
//! leave the other processes out of step — the next writer inherits the lock marked "owner
//! died", looks at the tail, and appends after that frame, not over it. And the record of how
//! far the log is durable (shared by every process's `sync=full` writers) must not vouch for
//! bytes that were cut and written anew.

use std::io;
use std::time::Duration;

use silo::FunctionStorage;
use silo::conformance::processes::{finish, spawn};
use silo::fs::{FsStore, FsTuning};
use silo_engine::{
    Dir, FaultPlan, Faults, FaultyDir, FileDir, FileStore, LockMode, MemDir, PageLock, Shared,
    SharedFile, Store, StoreLock, Synced,
};

silo::worker_entry!(|role, url| {
    if role != "die-after-append" {
        return false;
    }
    let path = url.strip_prefix("fs://").expect("an fs: URL");
    let dir = DieDir(FileDir::open(path).expect("the store directory"));
    let store = FsStore::open_in(dir, silo::StoreOptions::default(), FsTuning::default())
        .expect("worker opens the store");
    store
        .state_put(b"s", b"n", b"k", b"child")
        .expect("the put");
    unreachable!("the process exits inside the append");
});

/// A real directory whose files end the process right after an append lands, while the
/// writers' lock is held and before the change counter is bumped.
#[derive(Debug)]
struct DieDir(FileDir);

#[derive(Debug)]
struct DieFile(FileStore);

impl Dir for DieDir {
    type File = DieFile;
    type Shared = SharedFile;

    fn open_shared(&self, name: &str) -> io::Result<SharedFile> {
        self.0.open_shared(name)
    }
    fn open(&self, name: &str, create: bool) -> io::Result<Option<DieFile>> {
        Ok(self.0.open(name, create)?.map(DieFile))
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.0.list()
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.0.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.0.rename(from, to)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync()
    }
    fn describe(&self, name: &str) -> String {
        self.0.describe(name)
    }
}

impl Store for DieFile {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_at(data, offset)
    }
    fn append(&self, data: &[u8]) -> io::Result<u64> {
        self.0.append(data)
    }
    fn append_at(&self, data: &[u8], end: u64) -> io::Result<()> {
        self.0.append_at(data, end)?;
        // SAFETY: ends this process at once, without unwinding or releasing anything, as a
        // SIGKILL right after the write would.
        unsafe { libc::_exit(0) }
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.truncate(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync()
    }
    fn lock(&self, mode: LockMode) -> io::Result<StoreLock> {
        self.0.lock(mode)
    }
    fn try_lock(&self, mode: LockMode) -> io::Result<Option<StoreLock>> {
        self.0.try_lock(mode)
    }
}

fn open(path: &std::path::Path) -> FsStore {
    FsStore::open(path, silo::StoreOptions::default(), FsTuning::default()).unwrap()
}

#[test]
fn a_writer_dead_after_its_frame_landed_leaves_every_process_in_step() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("store");
    let writer = open(&path);
    let reader = open(&path);
    writer.state_put(b"s", b"n", b"a", b"1").unwrap();
    assert_eq!(
        reader.state_get(b"s", b"n", b"a").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    // The reader is now one change behind, so its next read looks at the files.
    writer.state_put(b"s", b"n", b"b", b"2").unwrap();

    let url = format!("fs://{}", path.display());
    let out = finish(spawn(&url, "die-after-append", &[]));
    assert!(out.is_empty(), "the child died before reporting: {out:?}");

    // The reader looks, and finds the dead writer's whole frame.
    assert_eq!(
        reader.state_get(b"s", b"n", b"k").unwrap().as_deref(),
        Some(&b"child"[..])
    );
    // The writer had seen every counted change; only the dead holder tells it to look.
    writer.state_put(b"s", b"n", b"c", b"3").unwrap();
    assert_eq!(
        reader.state_get(b"s", b"n", b"c").unwrap().as_deref(),
        Some(&b"3"[..]),
        "the next write landed over the dead writer's frame instead of after it"
    );
    assert_eq!(
        writer.state_get(b"s", b"n", b"k").unwrap().as_deref(),
        Some(&b"child"[..])
    );
    drop((writer, reader));
    let fresh = open(&path);
    for (key, value) in [("a", "1"), ("b", "2"), ("k", "child"), ("c", "3")] {
        assert_eq!(
            fresh
                .state_get(b"s", b"n", key.as_bytes())
                .unwrap()
                .as_deref(),
            Some(value.as_bytes()),
            "{key}"
        );
    }
}

/// Steps 1–3 of the scenario below on `dir`: a durable put, then a durability record that
/// vouches for far more of segment 1 than was written (what a `sync=full` writer records when
/// it measured the file while another writer's frame was half-written, before that frame was
/// cut back).
fn durable_put_then_an_overreaching_record(
    dir: &MemDir,
    faults: &Faults,
) -> FsStore<FaultyDir<MemDir>> {
    let options = silo::StoreOptions {
        sync: silo::SyncMode::Full,
        ..silo::StoreOptions::default()
    };
    let store = FsStore::open_in(
        FaultyDir::sharing(dir.clone(), faults.clone()),
        options,
        FsTuning::default(),
    )
    .unwrap();
    store.state_put(b"s", b"n", b"a", b"1").unwrap();
    let page = dir.open_shared("LOCK").unwrap();
    let _held = page
        .lock(PageLock::Sync, Duration::from_secs(5))
        .unwrap()
        .unwrap();
    page.publish_synced(Synced {
        segment: 1,
        end: 1 << 40,
        cuts: page.cuts(),
    });
    store
}

#[test]
fn a_cut_tail_voids_the_durability_record_that_counted_its_bytes() {
    let counting = Faults::never();
    drop(durable_put_then_an_overreaching_record(
        &MemDir::new(),
        &counting,
    ));
    let dir = MemDir::new();
    // The next mutating operation after the setup: the append of "b", cut short.
    let faults = Faults::new(counting.seen(), FaultPlan::ShortWrite(10));
    let store = durable_put_then_an_overreaching_record(&dir, &faults);
    assert!(store.state_put(b"s", b"n", b"b", b"2").is_err());
    assert!(faults.fired());
    store.state_put(b"s", b"n", b"c", b"3").unwrap();
    drop(store);
    dir.power_loss();
    let reopened =
        FsStore::open_in(dir, silo::StoreOptions::default(), FsTuning::default()).unwrap();
    assert_eq!(
        reopened.state_get(b"s", b"n", b"c").unwrap().as_deref(),
        Some(&b"3"[..]),
        "an acknowledged sync=full put was not synced: a stale record vouched for it"
    );
    assert_eq!(reopened.state_get(b"s", b"n", b"b").unwrap(), None);
}
