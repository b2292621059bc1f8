//! The directory under an engine: named byte images ([`Store`]s) that can be listed, removed
//! and atomically renamed. [`FileDir`] is a real directory (0700, files 0600, renames made
//! durable with an fsync of the directory); [`MemDir`] keeps images in memory so a test can
//! "lose power" across every file at once; [`FaultyDir`] wraps the files of any directory in
//! [`FaultyStore`]s that share one countdown, so a crash can strike at any write of any file.
//! Each also opens the store's [`Shared`] page (the writers' lock and change counter).

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::shared::{MemShared, Shared, SharedFile};
use crate::store::{FaultPlan, Faults, FaultyStore, FileStore, MemStore, Store};

/// A flat directory of named images. Names are the engine's own (never user bytes).
pub trait Dir: Send + Sync + std::fmt::Debug {
    /// The images it holds.
    type File: Store + std::fmt::Debug + 'static;

    /// The page its processes share.
    type Shared: Shared + Clone;

    /// Opens (creating) the shared page kept in the file `name`.
    fn open_shared(&self, name: &str) -> io::Result<Self::Shared>;

    /// Opens `name`; creates it empty when missing and `create`, else `None` when missing.
    fn open(&self, name: &str, create: bool) -> io::Result<Option<Self::File>>;

    /// Every name present, sorted.
    fn list(&self) -> io::Result<Vec<String>>;

    /// Removes `name` (missing is fine). Open handles keep reading it.
    fn remove(&self, name: &str) -> io::Result<()>;

    /// Replaces `to` with `from` atomically and durably: after a crash the name holds either
    /// the old image or the whole new one.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// Makes created and removed names durable.
    fn sync(&self) -> io::Result<()>;

    /// Where it lives, for messages.
    fn describe(&self, name: &str) -> String;
}

// ------------------------------------------------------------------------------- FileDir

/// A real directory, created 0700 when missing.
#[derive(Debug, Clone)]
pub struct FileDir {
    path: PathBuf,
}

impl FileDir {
    /// Opens (creating, 0700) the directory at `path`.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} exists and is not a directory", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&path)?;
            }
            Err(e) => return Err(e),
        }
        Ok(FileDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Dir for FileDir {
    type File = FileStore;
    type Shared = SharedFile;

    fn open_shared(&self, name: &str) -> io::Result<SharedFile> {
        SharedFile::open(&self.path.join(name))
    }

    fn open(&self, name: &str, create: bool) -> io::Result<Option<FileStore>> {
        let path = self.path.join(name);
        if create {
            FileStore::open(path).map(Some)
        } else {
            FileStore::open_existing(path)
        }
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            // A name that is not UTF-8 is not the engine's; it is listed lossily so that a
            // foreign file still marks the directory as not empty.
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        match fs::remove_file(self.path.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path.join(from), self.path.join(to))?;
        self.sync()
    }

    fn sync(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }

    fn describe(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}

// -------------------------------------------------------------------------------- MemDir

/// Images in memory. Clones share the directory, as two opens of one path do. Names are
/// durable at once (the engine syncs the directory after every change of names anyway).
#[derive(Debug, Clone, Default)]
pub struct MemDir {
    files: Arc<Mutex<BTreeMap<String, MemStore>>>,
    shared: Arc<Mutex<BTreeMap<String, MemShared>>>,
}

impl MemDir {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// A power loss: every file drops the bytes it had not synced.
    pub fn power_loss(&self) {
        for file in self.files.lock().values() {
            file.power_loss();
        }
        // The shared pages lived in memory that a power loss clears; the processes that
        // mapped them are gone too.
        self.shared.lock().clear();
    }

    /// The image named `name`, if present.
    pub fn file(&self, name: &str) -> Option<MemStore> {
        self.files.lock().get(name).cloned()
    }
}

impl Dir for MemDir {
    type File = MemStore;
    type Shared = MemShared;

    fn open_shared(&self, name: &str) -> io::Result<MemShared> {
        // The file exists as on a real directory, where the page lives in it.
        self.open(name, true)?;
        Ok(self
            .shared
            .lock()
            .entry(name.to_owned())
            .or_default()
            .clone())
    }

    fn open(&self, name: &str, create: bool) -> io::Result<Option<MemStore>> {
        let mut files = self.files.lock();
        if let Some(file) = files.get(name) {
            return Ok(Some(file.clone()));
        }
        if !create {
            return Ok(None);
        }
        let file = MemStore::new();
        files.insert(name.to_owned(), file.clone());
        Ok(Some(file))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.files.lock().keys().cloned().collect())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.files.lock().remove(name);
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut files = self.files.lock();
        let file = files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no file {from}")))?;
        files.insert(to.to_owned(), file);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn describe(&self, name: &str) -> String {
        format!("memory:{name}")
    }
}

// ------------------------------------------------------------------------------ FaultyDir

/// Any directory whose files share one [`Faults`] countdown; creating, removing and renaming
/// names count as mutating operations too.
#[derive(Debug, Clone)]
pub struct FaultyDir<D> {
    inner: D,
    faults: Faults,
}

impl<D: Dir> FaultyDir<D> {
    /// `inner` with the `countdown`-th mutating operation meeting `plan`.
    pub fn new(inner: D, countdown: u64, plan: FaultPlan) -> Self {
        Self::sharing(inner, Faults::new(countdown, plan))
    }

    /// `inner` meeting `faults`.
    pub fn sharing(inner: D, faults: Faults) -> Self {
        FaultyDir { inner, faults }
    }

    /// The shared fault.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    fn strike(&self) -> io::Result<()> {
        match self.faults.strike()? {
            None => Ok(()),
            Some(_) => Err(io::Error::other("injected I/O failure")),
        }
    }
}

impl<D: Dir> Dir for FaultyDir<D> {
    type File = FaultyStore<D::File>;
    type Shared = D::Shared;

    fn open_shared(&self, name: &str) -> io::Result<D::Shared> {
        self.faults.check_alive()?;
        if self.inner.open(name, false)?.is_none() {
            // Creating the page's file is a write that can fail.
            self.strike()?;
        }
        self.inner.open_shared(name)
    }

    fn open(&self, name: &str, create: bool) -> io::Result<Option<Self::File>> {
        self.faults.check_alive()?;
        let existing = self.inner.open(name, false)?;
        let file = match existing {
            Some(file) => file,
            None if create => {
                self.strike()?;
                match self.inner.open(name, true)? {
                    Some(file) => file,
                    None => return Ok(None),
                }
            }
            None => return Ok(None),
        };
        Ok(Some(FaultyStore::sharing(file, self.faults.clone())))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        self.faults.check_alive()?;
        self.inner.list()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.strike()?;
        self.inner.remove(name)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.strike()?;
        self.inner.rename(from, to)
    }

    fn sync(&self) -> io::Result<()> {
        self.strike()?;
        self.inner.sync()
    }

    fn describe(&self, name: &str) -> String {
        self.inner.describe(name)
    }
}
