//! The byte-image `Store`: the only way the engine touches storage. Three implementations:
//! [`FileStore`] (a real file, locked across processes with `flock`), [`MemStore`] (an image in
//! memory that tracks what was synced, so a test can drop every unsynced byte as a power loss
//! would), and [`FaultyStore`] (any store that fails, writes short, or "crashes" after a
//! countdown of mutating operations).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// Shared or exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders at once (readers).
    Shared,
    /// One holder (a writer).
    Exclusive,
}

/// A held lock; released when dropped.
pub struct StoreLock {
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl StoreLock {
    pub(crate) fn new(release: impl FnOnce() + Send + 'static) -> Self {
        StoreLock {
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl std::fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreLock")
    }
}

/// A byte image with cross-process locking. Offsets are absolute; the image has no holes:
/// writes land at or before the current end.
pub trait Store: Send + Sync {
    /// The image's length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// True when the image is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Fills `buf` from `offset`; reading past the end is `UnexpectedEof` (and leaves `buf`'s
    /// contents unspecified).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes `data` at `offset` (≤ the length; extends the image when it runs past the end).
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()>;

    /// Appends `data` at the end; returns the offset it starts at. Appends from several
    /// processes must hold the exclusive lock (the end is read, then written).
    fn append(&self, data: &[u8]) -> io::Result<u64>;

    /// Appends `data` at `end`, which the caller knows to be the image's end (it holds the
    /// exclusive lock and has just read the length): the hot path of a writer, so a real file
    /// writes without asking its length again. A failed write leaves no bytes behind where
    /// the store can undo them.
    fn append_at(&self, data: &[u8], end: u64) -> io::Result<()> {
        let at = self.append(data)?;
        if at != end {
            return Err(io::Error::other(format!(
                "appended at {at}, not at {end} where the caller believed the image ended"
            )));
        }
        Ok(())
    }

    /// Cuts the image to `len` bytes (≤ the length).
    fn truncate(&self, len: u64) -> io::Result<()>;

    /// Makes every byte written so far durable (survives power loss).
    fn sync(&self) -> io::Result<()>;

    /// Takes the image's lock, waiting for it; every process opening the same image contends
    /// for the same lock.
    fn lock(&self, mode: LockMode) -> io::Result<StoreLock>;

    /// Takes the lock if it is free now; `None` when another holder has it.
    fn try_lock(&self, mode: LockMode) -> io::Result<Option<StoreLock>>;
}

fn hole(offset: u64, len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("a write at {offset} would leave a hole after the end at {len}"),
    )
}

// ------------------------------------------------------------------------------ FileStore

/// A real file: created 0600; appends and writes with `pwrite`, syncs with `fdatasync`, locks
/// with `flock` (one lock per open file, so two opens in one process contend like two
/// processes).
#[derive(Debug)]
pub struct FileStore {
    file: Arc<File>,
    path: PathBuf,
    /// Serialises appends within this process (the end is read, then written).
    append: Mutex<()>,
}

impl FileStore {
    /// Opens `path`, creating it (mode 0600) when missing.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Self> {
        Self::open_with(path.into(), true)
    }

    /// Opens `path` if it exists.
    pub fn open_existing(path: impl Into<PathBuf>) -> io::Result<Option<Self>> {
        match Self::open_with(path.into(), false) {
            Ok(store) => Ok(Some(store)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open_with(path: PathBuf, create: bool) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        Ok(FileStore {
            file: Arc::new(file),
            path,
            append: Mutex::new(()),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn flock(file: &File, op: libc::c_int) -> io::Result<bool> {
        loop {
            // SAFETY: flock on a descriptor this struct owns for as long as the call runs.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
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

    fn take_lock(&self, mode: LockMode, wait: bool) -> io::Result<Option<StoreLock>> {
        let mut op = match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        };
        if !wait {
            op |= libc::LOCK_NB;
        }
        if !Self::flock(&self.file, op)? {
            return Ok(None);
        }
        let file = self.file.clone();
        Ok(Some(StoreLock::new(move || {
            // Closing the file would release it too; an error here leaves nothing to do.
            let _ = Self::flock(&file, libc::LOCK_UN);
        })))
    }
}

impl Store for FileStore {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let len = self.len()?;
        if offset > len {
            return Err(hole(offset, len));
        }
        self.file.write_all_at(data, offset)
    }

    fn append(&self, data: &[u8]) -> io::Result<u64> {
        let _one = self.append.lock();
        let at = self.len()?;
        if let Err(e) = self.file.write_all_at(data, at) {
            // Never leave a torn tail behind an error the caller will see.
            let _ = self.file.set_len(at);
            return Err(e);
        }
        Ok(at)
    }

    fn append_at(&self, data: &[u8], end: u64) -> io::Result<()> {
        if let Err(e) = self.file.write_all_at(data, end) {
            let _ = self.file.set_len(end);
            return Err(e);
        }
        Ok(())
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        let now = self.len()?;
        if len > now {
            return Err(hole(len, now));
        }
        self.file.set_len(len)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn lock(&self, mode: LockMode) -> io::Result<StoreLock> {
        self.take_lock(mode, true)?
            .ok_or_else(|| io::Error::other("flock returned without the lock"))
    }

    fn try_lock(&self, mode: LockMode) -> io::Result<Option<StoreLock>> {
        self.take_lock(mode, false)
    }
}

// ------------------------------------------------------------------------------- MemStore

/// An image in memory. Clones share the image and its lock, as two opens of one file do.
/// [`MemStore::power_loss`] drops every byte not yet synced.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    shared: Arc<MemShared>,
}

#[derive(Debug, Default)]
struct MemShared {
    image: Mutex<MemImage>,
    lock: Mutex<LockState>,
    released: Condvar,
}

#[derive(Debug, Default)]
struct MemImage {
    bytes: Vec<u8>,
    /// The image as of the last sync.
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct LockState {
    shared: usize,
    exclusive: bool,
}

impl MemStore {
    /// An empty image.
    pub fn new() -> Self {
        Self::default()
    }

    /// What a power loss leaves: the image as of the last sync.
    pub fn power_loss(&self) {
        let mut image = self.shared.image.lock();
        image.bytes = image.durable.clone();
    }

    /// A copy of the current bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.shared.image.lock().bytes.clone()
    }

    /// Overwrites one byte (a bit flip on the medium), durable at once.
    pub fn corrupt(&self, offset: usize, xor: u8) {
        let mut image = self.shared.image.lock();
        if let Some(b) = image.bytes.get_mut(offset) {
            *b ^= xor;
        }
        if let Some(b) = image.durable.get_mut(offset) {
            *b ^= xor;
        }
    }

    fn grant(&self, mode: LockMode, wait: bool) -> Option<StoreLock> {
        let shared = &self.shared;
        let mut state = shared.lock.lock();
        loop {
            let free = match mode {
                LockMode::Shared => !state.exclusive,
                LockMode::Exclusive => !state.exclusive && state.shared == 0,
            };
            if free {
                break;
            }
            if !wait {
                return None;
            }
            shared.released.wait(&mut state);
        }
        match mode {
            LockMode::Shared => state.shared += 1,
            LockMode::Exclusive => state.exclusive = true,
        }
        let shared = self.shared.clone();
        Some(StoreLock::new(move || {
            let mut state = shared.lock.lock();
            match mode {
                LockMode::Shared => state.shared -= 1,
                LockMode::Exclusive => state.exclusive = false,
            }
            shared.released.notify_all();
        }))
    }
}

impl Store for MemStore {
    fn len(&self) -> io::Result<u64> {
        Ok(self.shared.image.lock().bytes.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let image = self.shared.image.lock();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(buf.len())
            .and_then(|end| image.bytes.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut image = self.shared.image.lock();
        let len = image.bytes.len() as u64;
        if offset > len {
            return Err(hole(offset, len));
        }
        let start = offset as usize;
        let overlap = data.len().min(image.bytes.len() - start);
        image.bytes[start..start + overlap].copy_from_slice(&data[..overlap]);
        image.bytes.extend_from_slice(&data[overlap..]);
        Ok(())
    }

    fn append(&self, data: &[u8]) -> io::Result<u64> {
        let mut image = self.shared.image.lock();
        let at = image.bytes.len() as u64;
        image.bytes.extend_from_slice(data);
        Ok(at)
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        let mut image = self.shared.image.lock();
        let now = image.bytes.len() as u64;
        if len > now {
            return Err(hole(len, now));
        }
        image.bytes.truncate(len as usize);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut image = self.shared.image.lock();
        image.durable = image.bytes.clone();
        Ok(())
    }

    fn lock(&self, mode: LockMode) -> io::Result<StoreLock> {
        self.grant(mode, true)
            .ok_or_else(|| io::Error::other("the lock was not granted"))
    }

    fn try_lock(&self, mode: LockMode) -> io::Result<Option<StoreLock>> {
        Ok(self.grant(mode, false))
    }
}

// ----------------------------------------------------------------------------- FaultyStore

/// What a [`FaultyStore`] does when its countdown of mutating operations (write, append,
/// truncate, sync) reaches zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPlan {
    /// The operation fails with an I/O error and changes nothing; later ones work.
    Fail,
    /// A write or append stores only its first `n` bytes, then fails; later ones work.
    ShortWrite(usize),
    /// The process "dies": the operation and every later one fail (the test then drops the
    /// unsynced bytes with [`MemStore::power_loss`] and reopens).
    Crash,
}

/// One fault, armed after a countdown of mutating operations, that any number of
/// [`FaultyStore`]s (the files of one directory) can share: the n-th mutating call across all
/// of them meets it. Clones share the countdown.
#[derive(Clone, Debug)]
pub struct Faults {
    plan: FaultPlan,
    state: Arc<Mutex<FaultState>>,
}

#[derive(Debug)]
struct FaultState {
    countdown: u64,
    crashed: bool,
    fired: bool,
    /// Mutating operations seen, for tests that first count a workload's writes.
    seen: u64,
}

impl Faults {
    /// A fault that the `countdown`-th mutating operation from now (0 = the next one) meets.
    pub fn new(countdown: u64, plan: FaultPlan) -> Self {
        Faults {
            plan,
            state: Arc::new(Mutex::new(FaultState {
                countdown,
                crashed: false,
                fired: false,
                seen: 0,
            })),
        }
    }

    /// No fault at all: counts mutating operations only.
    pub fn never() -> Self {
        Self::new(u64::MAX, FaultPlan::Fail)
    }

    /// True once the fault struck.
    pub fn fired(&self) -> bool {
        self.state.lock().fired
    }

    /// True once a [`FaultPlan::Crash`] struck.
    pub fn crashed(&self) -> bool {
        self.state.lock().crashed
    }

    /// Mutating operations seen so far.
    pub fn seen(&self) -> u64 {
        self.state.lock().seen
    }

    /// Whether this mutating operation meets the fault.
    pub fn strike(&self) -> io::Result<Option<FaultPlan>> {
        let mut state = self.state.lock();
        if state.crashed {
            return Err(io::Error::other("the store crashed (injected)"));
        }
        state.seen += 1;
        if state.fired {
            return Ok(None);
        }
        if state.countdown > 0 {
            state.countdown -= 1;
            return Ok(None);
        }
        state.fired = true;
        if self.plan == FaultPlan::Crash {
            state.crashed = true;
        }
        Ok(Some(self.plan))
    }

    /// Fails when a crash struck: nothing works after the "process" died.
    pub fn check_alive(&self) -> io::Result<()> {
        if self.state.lock().crashed {
            return Err(io::Error::other("the store crashed (injected)"));
        }
        Ok(())
    }
}

/// Any store with a fault injected after a countdown of mutating operations.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Faults,
}

impl<S: Store> FaultyStore<S> {
    /// `inner`, whose `countdown`-th mutating operation from now (0 = the next one) meets
    /// `plan`.
    pub fn new(inner: S, countdown: u64, plan: FaultPlan) -> Self {
        Self::sharing(inner, Faults::new(countdown, plan))
    }

    /// `inner`, meeting the fault `faults` shares with other stores.
    pub fn sharing(inner: S, faults: Faults) -> Self {
        FaultyStore { inner, faults }
    }

    /// True once the fault struck.
    pub fn fired(&self) -> bool {
        self.faults.fired()
    }

    /// The store underneath.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn strike(&self) -> io::Result<Option<FaultPlan>> {
        self.faults.strike()
    }

    fn injected() -> io::Error {
        io::Error::other("injected I/O failure")
    }

    fn write_with(
        &self,
        data: &[u8],
        write: impl FnOnce(&[u8]) -> io::Result<u64>,
    ) -> io::Result<u64> {
        match self.strike()? {
            None => write(data),
            Some(FaultPlan::ShortWrite(n)) => {
                write(&data[..n.min(data.len())])?;
                Err(Self::injected())
            }
            Some(_) => Err(Self::injected()),
        }
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.faults.check_alive()?;
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.write_with(data, |d| self.inner.write_at(d, offset).map(|()| offset))
            .map(drop)
    }

    fn append(&self, data: &[u8]) -> io::Result<u64> {
        // A short append is a torn tail: the bytes stay, as they would on a real disk.
        let inner = &self.inner;
        self.write_with(data, |d| inner.append(d))
    }

    fn append_at(&self, data: &[u8], end: u64) -> io::Result<()> {
        let inner = &self.inner;
        self.write_with(data, |d| inner.append_at(d, end).map(|()| end))
            .map(drop)
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        match self.strike()? {
            None => self.inner.truncate(len),
            Some(_) => Err(Self::injected()),
        }
    }

    fn sync(&self) -> io::Result<()> {
        match self.strike()? {
            None => self.inner.sync(),
            Some(_) => Err(Self::injected()),
        }
    }

    fn lock(&self, mode: LockMode) -> io::Result<StoreLock> {
        self.inner.lock(mode)
    }

    fn try_lock(&self, mode: LockMode) -> io::Result<Option<StoreLock>> {
        self.inner.try_lock(mode)
    }
}

/// Implements [`Store`] for a pointer to a store by forwarding every call to the store.
macro_rules! forward_store {
    ($(#[$doc:meta])* $ptr:ty) => {
        $(#[$doc])*
        impl<S: Store + ?Sized> Store for $ptr {
            fn len(&self) -> io::Result<u64> {
                (**self).len()
            }

            fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
                (**self).read_at(buf, offset)
            }

            fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
                (**self).write_at(data, offset)
            }

            fn append(&self, data: &[u8]) -> io::Result<u64> {
                (**self).append(data)
            }

            fn append_at(&self, data: &[u8], end: u64) -> io::Result<()> {
                (**self).append_at(data, end)
            }

            fn truncate(&self, len: u64) -> io::Result<()> {
                (**self).truncate(len)
            }

            fn sync(&self) -> io::Result<()> {
                (**self).sync()
            }

            fn lock(&self, mode: LockMode) -> io::Result<StoreLock> {
                (**self).lock(mode)
            }

            fn try_lock(&self, mode: LockMode) -> io::Result<Option<StoreLock>> {
                (**self).try_lock(mode)
            }
        }
    };
}

forward_store!(
    /// A shared reference to a store is a store (tests and layers hold one image in many places).
    &S
);
forward_store!(
    /// A shared store is a store (an engine keeps one open file in several places).
    Arc<S>
);
