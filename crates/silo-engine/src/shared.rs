//! The page every process of one store shares, as SQLite's `-shm` file is: the writers' lock
//! and a change counter, and the sync lock with how far the log is known durable. A write
//! takes the writers' lock, and after changing any file bumps the counter; a process whose
//! last look at the files was at the current count knows it is up to date without asking
//! the file system (no `fstat`, no `flock` on the hot path). Under `sync=full` one fsync at a
//! time runs under the sync lock and records what it covered, so writers in any process that
//! waited for it find their frame durable already (group commit across processes).
//!
//! [`SharedFile`] maps a small file and keeps a robust, process-shared pthread mutex in it:
//! taking it uncontended is one atomic instruction, waiting sleeps on a futex (no polling),
//! and the kernel hands it on with `EOWNERDEAD` when its holder dies, so the next writer
//! knows to check the log's tail. The page holds no durable state: every process holds a
//! shared `flock` on the file for as long as it has it mapped, and the first process to open
//! a store nobody has open initialises the page afresh (a page left "locked" by a machine
//! crash is never trusted). [`MemShared`] is the same in memory, for tests.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::store::StoreLock;

/// The locks of one store's shared page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageLock {
    /// Held by a write for its whole operation.
    Writers = 0,
    /// Held by the one process that runs an fsync for everyone (see [`sync_through`]).
    Sync = 1,
}

/// The locks and counters of one store, shared by every process that has it open.
pub trait Shared: Send + Sync + fmt::Debug + 'static {
    /// Takes `which` lock, waiting up to `timeout`; `None` when it did not come free.
    fn lock(&self, which: PageLock, timeout: Duration) -> io::Result<Option<Locked>>;

    /// The change counter.
    fn changes(&self) -> u64;

    /// Bumps the change counter and returns its new value. Only under the writers' lock.
    fn bump(&self) -> u64;

    /// Counts cuts of the log's tail (bytes of a failed or dead writer's frame removed).
    /// Only under the writers' lock.
    fn cut(&self);

    /// How many cuts there were.
    fn cuts(&self) -> u64;

    /// The durability record's version: odd while it is being rewritten, and moved on by
    /// every [`Shared::publish_synced`].
    fn synced_version(&self) -> u32;

    /// The durability record's fields as they are now (consistent only when the version
    /// read before and after is the same even number).
    fn synced(&self) -> Synced;

    /// Rewrites the durability record and wakes every process waiting for it to move. Only
    /// under the sync lock.
    fn publish_synced(&self, synced: Synced);

    /// Sleeps until the record's version is no longer `version`, or `timeout` passes.
    fn wait_synced(&self, version: u32, timeout: Duration);
}

/// Makes the log durable through `end` of `segment` (its first frame number): returns at
/// once when an fsync that any process ran already covered it; else the first waiter to get
/// the sync lock runs `sync` (which measures the file, fsyncs it, and returns the length it
/// measured) for everyone, and the rest wake when it records what it covered — group commit
/// across threads and processes, with no convoy of lock hand-offs. `Ok(false)`: not done
/// within `timeout`.
pub fn sync_through<S: Shared + ?Sized>(
    shared: &S,
    segment: u64,
    end: u64,
    timeout: Duration,
    mut sync: impl FnMut() -> io::Result<u64>,
) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let version = shared.synced_version();
        if version.is_multiple_of(2) {
            let record = shared.synced();
            if shared.synced_version() == version && record.covers(segment, end, shared.cuts()) {
                return Ok(true);
            }
        }
        if let Some(held) = shared.lock(PageLock::Sync, Duration::ZERO)? {
            // The record is ours to read now, unless its last writer died halfway through.
            if !held.owner_died && shared.synced().covers(segment, end, shared.cuts()) {
                return Ok(true);
            }
            // The cut count is read before the length: a cut after this may remove bytes the
            // length counts, and then the count moves and voids this record.
            let cuts = shared.cuts();
            let measured = sync()?;
            shared.publish_synced(Synced {
                segment,
                end: measured.max(end),
                cuts,
            });
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        // Woken by the syncer's record; the bound only matters if it died without one.
        shared.wait_synced(version, (deadline - now).min(Duration::from_millis(10)));
    }
}

/// How far the log was made durable: every byte before `end` of `segment` (its first frame
/// number), measured when the cut count was `cuts`. A record from before a later cut may count
/// bytes that were cut and written anew, so it only holds while the count is unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// The segment (its first frame number).
    pub segment: u64,
    /// Every byte before this offset in that segment.
    pub end: u64,
    /// The cut count read before `end` was measured.
    pub cuts: u64,
}

impl Synced {
    /// Whether this record makes `end` of `segment` durable while the cut count is `cuts`.
    /// A later segment covers every earlier one: a segment is synced when it is sealed.
    pub fn covers(&self, segment: u64, end: u64, cuts: u64) -> bool {
        self.cuts == cuts
            && (self.segment > segment || (self.segment == segment && self.end >= end))
    }
}

/// The writers' lock, held.
#[derive(Debug)]
pub struct Locked {
    /// Releases the lock when dropped, on the thread that took it.
    pub guard: StoreLock,
    /// The previous holder died holding it: the files may end in a torn write.
    pub owner_died: bool,
}

// ---------------------------------------------------------------------------- SharedFile

const PAGE_BYTES: usize = 4096;
/// Marks an initialised page; changes whenever the layout does.
const MAGIC: u64 = u64::from_le_bytes(*b"silopg02");

#[repr(C)]
struct Page {
    magic: AtomicU64,
    changes: AtomicU64,
    cuts: AtomicU64,
    synced_segment: AtomicU64,
    synced_end: AtomicU64,
    synced_cuts: AtomicU64,
    /// The record's version, and the futex word its waiters sleep on.
    synced_version: AtomicU32,
    /// By [`PageLock`].
    mutexes: [std::cell::UnsafeCell<libc::pthread_mutex_t>; 2],
}

const _: () = assert!(std::mem::size_of::<Page>() <= PAGE_BYTES);

/// A mapped page file (see the module doc).
#[derive(Clone)]
pub struct SharedFile {
    map: Arc<Mapping>,
}

struct Mapping {
    page: *mut Page,
    /// Holds the shared `flock` that marks this process as a user of the page.
    _file: File,
    path: String,
}

// SAFETY: the page is process-shared memory designed for concurrent use: its counters are
// atomics and its mutex is a process-shared pthread mutex, both safe from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `page` is the mapping of PAGE_BYTES this struct created and nobody else
        // unmaps; every guard holds an Arc of this mapping, so none outlives it.
        unsafe {
            libc::munmap(self.page.cast(), PAGE_BYTES);
        }
    }
}

impl fmt::Debug for SharedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedFile")
            .field("path", &self.map.path)
            .finish_non_exhaustive()
    }
}

fn flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor owned by `file` for the whole call.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if op & libc::LOCK_NB != 0 => return Ok(false),
            _ => return Err(e),
        }
    }
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::Error::from_raw_os_error(rc).kind(),
            format!("{what}: {}", io::Error::from_raw_os_error(rc)),
        ))
    }
}

impl SharedFile {
    /// Opens (creating, 0600) the page file at `path` and maps it, initialising the page
    /// when no other process has it open.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let describe = path.display().to_string();
        // A page that someone initialises right now is ready within microseconds; a page
        // without its magic under a shared lock was left by a creator that died.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if flock(&file, libc::LOCK_EX | libc::LOCK_NB)? {
                // Nobody else has the store open: whatever the page says is stale.
                if file.metadata()?.len() < PAGE_BYTES as u64 {
                    file.set_len(PAGE_BYTES as u64)?;
                }
                let page = map(&file)?;
                // SAFETY: `page` is a fresh mapping of PAGE_BYTES; no other process maps it
                // while we hold the exclusive flock, so initialising the mutex races nobody.
                let ready = unsafe { init(page) };
                // Converting to shared releases first: an opener in between finds the page
                // initialised (or, holding the exclusive lock itself, initialises it again
                // before anyone uses it).
                let shared = ready.and_then(|()| flock(&file, libc::LOCK_SH).map(|_| ()));
                if let Err(e) = shared {
                    // SAFETY: unmapping the mapping made above, used by nothing else.
                    unsafe { libc::munmap(page.cast(), PAGE_BYTES) };
                    return Err(e);
                }
                return Ok(SharedFile {
                    map: Arc::new(Mapping {
                        page,
                        _file: file,
                        path: describe,
                    }),
                });
            }
            flock(&file, libc::LOCK_SH)?;
            if file.metadata()?.len() >= PAGE_BYTES as u64 {
                let page = map(&file)?;
                // SAFETY: the mapping is PAGE_BYTES long; the magic is an atomic.
                if unsafe { (*page).magic.load(Ordering::Acquire) } == MAGIC {
                    return Ok(SharedFile {
                        map: Arc::new(Mapping {
                            page,
                            _file: file,
                            path: describe,
                        }),
                    });
                }
                // SAFETY: unmapping the mapping made above, used by nothing else.
                unsafe { libc::munmap(page.cast(), PAGE_BYTES) };
            }
            flock(&file, libc::LOCK_UN)?;
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{describe} stays uninitialised while other processes hold it open; \
                         stop the processes using this store (or a silo older than this \
                         one) and open it again"
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn page(&self) -> &Page {
        // SAFETY: the mapping lives as long as `self.map`, and every field is either atomic
        // or behind an UnsafeCell reached only through the pthread calls.
        unsafe { &*self.map.page }
    }
}

fn map(file: &File) -> io::Result<*mut Page> {
    // SAFETY: mapping PAGE_BYTES of a file at least that long, shared, at an address the
    // kernel picks; the result is checked before use.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr.cast())
}

/// Initialises the page: counters zero, fresh robust process-shared error-checking mutexes,
/// then the magic.
///
/// # Safety
/// `page` maps PAGE_BYTES that no other process uses while this runs.
unsafe fn init(page: *mut Page) -> io::Result<()> {
    // SAFETY: per the contract, the page is ours alone; the attribute object lives on this
    // stack frame and is destroyed before returning.
    unsafe {
        (*page).magic.store(0, Ordering::Release);
        (*page).changes.store(0, Ordering::Release);
        (*page).cuts.store(0, Ordering::Release);
        (*page).synced_segment.store(0, Ordering::Release);
        (*page).synced_end.store(0, Ordering::Release);
        (*page).synced_cuts.store(0, Ordering::Release);
        (*page).synced_version.store(0, Ordering::Release);
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        check(
            libc::pthread_mutexattr_init(attr.as_mut_ptr()),
            "pthread_mutexattr_init",
        )?;
        let attr = attr.as_mut_ptr();
        let made = check(
            libc::pthread_mutexattr_setpshared(attr, libc::PTHREAD_PROCESS_SHARED),
            "pthread_mutexattr_setpshared",
        )
        .and_then(|()| {
            check(
                libc::pthread_mutexattr_setrobust(attr, libc::PTHREAD_MUTEX_ROBUST),
                "pthread_mutexattr_setrobust",
            )
        })
        .and_then(|()| {
            check(
                libc::pthread_mutexattr_settype(attr, libc::PTHREAD_MUTEX_ERRORCHECK),
                "pthread_mutexattr_settype",
            )
        })
        .and_then(|()| {
            for mutex in &(*page).mutexes {
                check(
                    libc::pthread_mutex_init(mutex.get(), attr),
                    "pthread_mutex_init",
                )?;
            }
            Ok(())
        });
        libc::pthread_mutexattr_destroy(attr);
        made?;
        (*page).magic.store(MAGIC, Ordering::Release);
    }
    Ok(())
}

impl Shared for SharedFile {
    fn lock(&self, which: PageLock, timeout: Duration) -> io::Result<Option<Locked>> {
        let mutex = self.page().mutexes[which as usize].get();
        // SAFETY: `mutex` was initialised (the magic is set) and lives as long as the
        // mapping; `now` is a valid timespec to fill.
        let rc = unsafe {
            match libc::pthread_mutex_trylock(mutex) {
                libc::EBUSY => {
                    let mut now = std::mem::zeroed::<libc::timespec>();
                    libc::clock_gettime(libc::CLOCK_REALTIME, &mut now);
                    let deadline = add(now, timeout);
                    libc::pthread_mutex_timedlock(mutex, &deadline)
                }
                rc => rc,
            }
        };
        let owner_died = match rc {
            0 => false,
            libc::EOWNERDEAD => {
                // SAFETY: we hold the mutex (EOWNERDEAD grants it); marking it consistent
                // is what lets it be used again after we unlock.
                check(
                    unsafe { libc::pthread_mutex_consistent(mutex) },
                    "pthread_mutex_consistent",
                )?;
                true
            }
            libc::ETIMEDOUT => return Ok(None),
            libc::EDEADLK => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "this thread already holds the {which:?} lock of {} through another \
                         handle of the same store; use one handle per thread",
                        self.map.path
                    ),
                ));
            }
            libc::ENOTRECOVERABLE => {
                return Err(io::Error::other(format!(
                    "the {which:?} lock in {} is unrecoverable; stop every process using the \
                     store and open it again (the page is rebuilt)",
                    self.map.path
                )));
            }
            rc => return check(rc, "pthread_mutex_lock").map(|()| None),
        };
        let map = self.map.clone();
        Ok(Some(Locked {
            guard: StoreLock::new(move || {
                // SAFETY: this guard is released on the thread that took the lock (the
                // engine never hands a held lock to another thread); the mapping is kept
                // alive by the Arc this closure owns.
                unsafe {
                    libc::pthread_mutex_unlock((*map.page).mutexes[which as usize].get());
                }
            }),
            owner_died,
        }))
    }

    fn changes(&self) -> u64 {
        self.page().changes.load(Ordering::Acquire)
    }

    fn bump(&self) -> u64 {
        self.page().changes.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn cut(&self) {
        self.page().cuts.fetch_add(1, Ordering::AcqRel);
    }

    fn cuts(&self) -> u64 {
        self.page().cuts.load(Ordering::Acquire)
    }

    fn synced_version(&self) -> u32 {
        self.page().synced_version.load(Ordering::Acquire)
    }

    fn synced(&self) -> Synced {
        let page = self.page();
        Synced {
            segment: page.synced_segment.load(Ordering::Acquire),
            end: page.synced_end.load(Ordering::Acquire),
            cuts: page.synced_cuts.load(Ordering::Acquire),
        }
    }

    fn publish_synced(&self, synced: Synced) {
        let page = self.page();
        // Odd while rewriting, whatever a holder that died halfway left behind.
        let odd = page.synced_version.load(Ordering::Acquire) | 1;
        page.synced_version.store(odd, Ordering::Release);
        std::sync::atomic::fence(Ordering::Release);
        page.synced_segment.store(synced.segment, Ordering::Release);
        page.synced_end.store(synced.end, Ordering::Release);
        page.synced_cuts.store(synced.cuts, Ordering::Release);
        page.synced_version
            .store(odd.wrapping_add(1), Ordering::Release);
        // SAFETY: FUTEX_WAKE on the address of an aligned u32 inside this live shared
        // mapping; the other arguments are unused by FUTEX_WAKE.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                page.synced_version.as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }

    fn wait_synced(&self, version: u32, timeout: Duration) {
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        // SAFETY: FUTEX_WAIT on the address of an aligned u32 inside this live shared
        // mapping, with a relative timeout that lives across the call. It returns at once
        // when the word is no longer `version`; every outcome (woken, timed out,
        // interrupted) sends the caller back to look.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.page().synced_version.as_ptr(),
                libc::FUTEX_WAIT,
                version,
                &timeout as *const libc::timespec,
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }
}

fn add(now: libc::timespec, by: Duration) -> libc::timespec {
    let nanos = now.tv_nsec as u64 + u64::from(by.subsec_nanos());
    let secs = (now.tv_sec as u64)
        .saturating_add(by.as_secs())
        .saturating_add(nanos / 1_000_000_000)
        .min(libc::time_t::MAX as u64);
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: (nanos % 1_000_000_000) as _,
    }
}

// ----------------------------------------------------------------------------- MemShared

/// The page in memory: clones share it, as processes opening one store do. A guard dropped
/// by a test that simulates a crash releases it normally.
#[derive(Clone, Debug, Default)]
pub struct MemShared {
    inner: Arc<MemPage>,
}

#[derive(Debug, Default)]
struct MemPage {
    locks: [MemLock; 2],
    changes: AtomicU64,
    cuts: AtomicU64,
    /// The record and its version; waiters sleep on `moved`.
    synced: Mutex<(Synced, u32)>,
    moved: Condvar,
}

#[derive(Debug, Default)]
struct MemLock {
    held: Mutex<bool>,
    freed: Condvar,
}

impl Shared for MemShared {
    fn lock(&self, which: PageLock, timeout: Duration) -> io::Result<Option<Locked>> {
        let deadline = Instant::now() + timeout;
        let lock = &self.inner.locks[which as usize];
        let mut held = lock.held.lock();
        while *held {
            if lock.freed.wait_until(&mut held, deadline).timed_out() && *held {
                return Ok(None);
            }
        }
        *held = true;
        let page = self.inner.clone();
        Ok(Some(Locked {
            guard: StoreLock::new(move || {
                let lock = &page.locks[which as usize];
                *lock.held.lock() = false;
                lock.freed.notify_one();
            }),
            owner_died: false,
        }))
    }

    fn changes(&self) -> u64 {
        self.inner.changes.load(Ordering::Acquire)
    }

    fn bump(&self) -> u64 {
        self.inner.changes.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn cut(&self) {
        self.inner.cuts.fetch_add(1, Ordering::AcqRel);
    }

    fn cuts(&self) -> u64 {
        self.inner.cuts.load(Ordering::Acquire)
    }

    fn synced_version(&self) -> u32 {
        self.inner.synced.lock().1
    }

    fn synced(&self) -> Synced {
        self.inner.synced.lock().0
    }

    fn publish_synced(&self, synced: Synced) {
        let mut record = self.inner.synced.lock();
        *record = (synced, (record.1 | 1).wrapping_add(1));
        self.inner.moved.notify_all();
    }

    fn wait_synced(&self, version: u32, timeout: Duration) {
        let mut record = self.inner.synced.lock();
        if record.1 == version {
            self.inner.moved.wait_for(&mut record, timeout);
        }
    }
}
