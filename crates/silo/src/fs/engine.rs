//! The engine under `fs:`: one directory, a chain of segment files of checksummed frames, and
//! in every process an index that is the fold of those frames (SPEC §5).
//!
//! Directory: `FORMAT` (the format version), `LOCK` (the page the store's processes share:
//! the writers' lock and a change counter, see [`silo_engine::shared`]), `CURRENT` (names the compacted base the chain starts from; missing = none),
//! `base-N.slf` (the state through frame N, rewritten compactly), `seg-N.slf` (frames from
//! number N on). A segment ends with a seal frame; the chain continues in `seg-(seal+1).slf`.
//! A compaction writes a new base when the chain holds more dead bytes than live ones, or the
//! log has outgrown the base (see [`FsTuning`]).
//!
//! A write takes the writers' lock, catches up on frames other processes appended, decides
//! its records against the index (the precondition check), appends them as one frame, folds
//! them and bumps the change counter. A read catches up without the lock: frames are never
//! rewritten, and a partial frame at the end is invisible until it is whole. A process that
//! saw the files at the counter's current value skips catching up altogether.

use std::sync::Arc;
use std::time::Duration;

use silo_engine::frame::MAX_PAYLOAD;
use silo_engine::{Dir, FrameLog, LogError, PageLock, Shared, Store, StoreLock};

use super::index::{Index, ValRef};
use super::record::{Decoder, Encoder, Rec, Span};
use crate::{Error, Result};

/// The format this build writes (and the newest it reads). 2 added the `At` record (a
/// frame's time when no other record carries one); a store of format 1 is upgraded when
/// this build opens it, so that an older silo refuses it instead of misreading it.
pub(crate) const FORMAT_VERSION: u32 = 2;
const FORMAT_NAME: &str = "FORMAT";
const FORMAT_MAGIC: &str = "silo-fs";
const LOCK_NAME: &str = "LOCK";
const CURRENT_NAME: &str = "CURRENT";

pub(crate) fn segment_name(first: u64) -> String {
    format!("seg-{first:020}.slf")
}

pub(crate) fn base_name(through: u64) -> String {
    format!("base-{through:020}.slf")
}

pub(crate) fn parse_numbered(name: &str, prefix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(".slf")
        .filter(|n| n.len() == 20)?
        .parse()
        .ok()
}

/// Tuning of an `fs:` store (URL options `segment_bytes`, `compact_min_bytes`).
///
/// Compaction rewrites the live state as a new base, in the writer that committed and under
/// the writers' lock, reading and writing every live byte; so it runs only when that pays.
/// After a write it runs when either
///
/// - **garbage**: the chain (the base and the log since it) holds more dead bytes than live
///   ones, and more than `compact_min_bytes` — dead being all a base drops: overwritten and
///   removed values, queue traffic, records and frame headers that no longer say anything; or
/// - **growth**: the log since the base is larger than the base, than `compact_min_bytes` and
///   than 16 segments.
///
/// Live bytes are the size of the base a compaction would write now; the index counts them
/// as it folds. While no compaction is due the chain holds at most 2 × live +
/// `compact_min_bytes` bytes: the bound on a store's files (a replicated store also keeps its
/// unshipped segments) and on what opening it reads (every byte of every frame). A store that
/// only grows (appends, new keys: Arrow buffering) is not rewritten until its log passes 16
/// segments (1 GiB by default), then each time it doubles, so each byte is rewritten about
/// once; meanwhile opening it reads its frames, which cost what a base holding them would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsTuning {
    /// A segment is sealed and the next one started once it grows past this many bytes.
    pub segment_bytes: u64,
    /// No compaction runs on its own before it would drop more than this many dead bytes,
    /// or, for growth alone, before the log since the base holds more than this (see above).
    pub compact_min_bytes: u64,
}

/// How many segments the log since the base may span, when it is larger than the base, before
/// growth alone compacts (see [`FsTuning`]). Every segment since the base is a file each
/// process holds open, and without garbage a compaction only folds them into one base: 16
/// bounds the files while a store of up to 1 GiB (default segments) that only grows is never
/// rewritten.
const GROWTH_SEGMENTS: u64 = 16;

/// Whether a compaction is due (see [`FsTuning`]): `base` and `log` are the chain's bytes,
/// `live` the size of the base a compaction would write.
pub(crate) fn compaction_due(tuning: &FsTuning, base: u64, log: u64, live: u64) -> bool {
    // What a compaction leaves besides the records: the base's frame headers (a frame per
    // MiB of records, see `write_base`) and the seal after it. Not dead: with a tiny floor,
    // counting them would compact again right after a compaction.
    let header = silo_engine::frame::HEADER as u64;
    let fresh = live + header * ((live / BASE_FRAME_BYTES as u64) + 1) + header + 1;
    let dead = (base + log).saturating_sub(fresh);
    let garbage = dead > live.max(tuning.compact_min_bytes);
    let growth_floor = tuning
        .compact_min_bytes
        .max(tuning.segment_bytes.saturating_mul(GROWTH_SEGMENTS));
    let growth = log > base.max(growth_floor);
    garbage || growth
}

impl Default for FsTuning {
    fn default() -> Self {
        FsTuning {
            segment_bytes: 64 << 20,
            compact_min_bytes: 64 << 20,
        }
    }
}

/// An I/O error with what was being done and where, classified (a full disk is
/// [`Error::StorageFull`]).
pub(crate) fn io_error(context: &str, where_: &str, e: std::io::Error) -> Error {
    let full = matches!(
        e.raw_os_error(),
        Some(libc_consts::ENOSPC | libc_consts::EFBIG | libc_consts::EDQUOT)
    );
    if full {
        return Error::StorageFull {
            path: where_.to_owned(),
            detail: format!("{context}: {e}"),
        };
    }
    Error::io(format!("{context} ({where_})"), e)
}

/// The errno values of a full disk, without a libc dependency in the library.
mod libc_consts {
    pub const ENOSPC: i32 = 28;
    pub const EFBIG: i32 = 27;
    pub const EDQUOT: i32 = 122;
}

/// A transaction in progress: the records decided so far. Each operation decides its records
/// from the state before it, and they are folded into the live index in place once the frame
/// is written. When an `apply_once` runs a second operation, the records before it are folded
/// into a copy (`working`, O(1) to take with persistent maps) so it sees the earlier ones;
/// rolling back drops the copy. The copy is taken only then: a copy written to while the live
/// index still shares its nodes copies every node on the path (with its keys), which cost a
/// single-operation `apply_once` several times the operation itself.
#[derive(Debug)]
pub(crate) struct Txn {
    pub working: Option<Index>,
    /// How many bytes of `enc.buf` are folded into `working`.
    folded: usize,
    pub enc: Encoder,
    /// Where the payload will land in the active segment, so values folded now point at
    /// the place they will have on disk.
    pub payload_at: u64,
    pub file: u32,
    /// Held for a whole `apply_once`/`apply_atomically` (its operations join this one).
    pub held: Option<StoreLock>,
    /// A record carrying the frame's time (a touch, an `apply_once` record) was decided.
    pub timed: bool,
}

impl Txn {
    /// The index as of every record decided so far, for the next operation of an
    /// `apply_once` to decide from: `live` until a record was decided, then the copy.
    pub fn index_so_far<'a>(&'a mut self, live: &'a Index) -> Result<&'a Index> {
        if self.folded < self.enc.buf.len() {
            let working = self.working.get_or_insert_with(|| live.clone());
            fold_payload(
                working,
                &self.enc.buf[self.folded..],
                self.file,
                self.payload_at + self.folded as u64,
            )
            .map_err(|detail| Error::Backend {
                backend: "fs".into(),
                message: format!("a record did not apply ({detail}; a silo bug)"),
            })?;
            self.folded = self.enc.buf.len();
        }
        Ok(self.working.as_ref().unwrap_or(live))
    }
}

/// A file the index points into, with its name; `None` once it was let go.
pub(crate) type OpenFile<F> = Option<(Arc<F>, String)>;

/// What a committed write leaves to do after the locks are released.
pub(crate) struct Committed<F> {
    pub file: Arc<F>,
    /// The segment's first frame number: unique in the store's history, unlike an address.
    pub segment: u64,
    pub end: u64,
}

/// What finishing a write leaves: the commit's outcome and the maintenance's after it.
pub(crate) type Finished<F> = (Result<Option<Committed<F>>>, Result<()>);

#[derive(Debug)]
pub(crate) struct Engine<D: Dir> {
    pub dir: D,
    shared: D::Shared,
    /// The change count at which this process last saw the files whole (`None`: look).
    seen: Option<u64>,
    /// The writers' lock came from a holder that died: the active segment may end torn.
    tail_unchecked: bool,
    pub index: Index,
    /// Open files by id (segments and the base the index points into).
    pub files: Vec<OpenFile<D::File>>,
    active: FrameLog<Arc<D::File>>,
    pub active_id: u32,
    active_name: String,
    /// The active segment ended with a seal whose successor is not open yet.
    sealed: bool,
    /// The frame number the loaded base ends at (0 = no base).
    base: u64,
    base_bytes: u64,
    /// Bytes of the segments since the base, up to the active one's start.
    sealed_bytes: u64,
    pub txn: Option<Txn>,
    tuning: FsTuning,
    /// The index may be half-folded (a failure while catching up): rebuild it before use.
    poisoned: bool,
}

impl<D: Dir> Engine<D> {
    /// Opens (creating when empty) the store in `dir`, under its exclusive lock.
    pub fn open(dir: D, tuning: FsTuning, busy_timeout: Duration) -> Result<Self> {
        let names = dir
            .list()
            .map_err(|e| io_error("listing the store directory", &dir.describe(""), e))?;
        let has_format = names.iter().any(|n| n == FORMAT_NAME);
        // `FORMAT.tmp` is what a creation interrupted before its rename leaves behind.
        let format_tmp = format!("{FORMAT_NAME}.tmp");
        if !has_format
            && names
                .iter()
                .any(|n| n != LOCK_NAME && *n != format_tmp && !n.starts_with('.'))
        {
            return Err(Error::config(format!(
                "{} is not empty and is not a silo fs: store (no {FORMAT_NAME} file); use an \
                 empty or new directory",
                dir.describe("")
            )));
        }
        let shared = dir
            .open_shared(LOCK_NAME)
            .map_err(|e| io_error("opening the shared page", &dir.describe(LOCK_NAME), e))?;
        let _held = lock_writers(&shared, busy_timeout, || dir.describe(LOCK_NAME))?.guard;
        let changes = shared.changes();
        check_format(&dir)?;
        let base = read_current(&dir)?;
        let placeholder = Arc::new(
            dir.open(LOCK_NAME, false)
                .map_err(|e| io_error("opening the lock file", &dir.describe(LOCK_NAME), e))?
                .ok_or_else(|| Error::config("the lock file vanished"))?,
        );
        let mut engine = Engine {
            dir,
            shared,
            seen: None,
            tail_unchecked: false,
            index: Index::default(),
            files: Vec::new(),
            active: FrameLog::attach(placeholder, 1),
            active_id: 0,
            active_name: String::new(),
            sealed: false,
            base: 0,
            base_bytes: 0,
            sealed_bytes: 0,
            txn: None,
            tuning,
            poisoned: false,
        };
        engine.load(base, true)?;
        engine.remove_strays()?;
        engine.seen = Some(changes);
        Ok(engine)
    }

    /// Rebuilds the index from the base `base` (0 = none) and the segments after it. A
    /// process that lagged behind a compaction may find them removed already: it follows
    /// `CURRENT` to the newer base instead.
    fn load(&mut self, mut base: u64, writer: bool) -> Result<()> {
        loop {
            match self.load_from(base, writer) {
                Err(Missing(name)) => {
                    let current = read_current(&self.dir)?;
                    if current == base {
                        return Err(Error::Corrupt {
                            path: self.dir.describe(&name),
                            detail: format!(
                                "missing, though {CURRENT_NAME} names the chain it belongs to"
                            ),
                        });
                    }
                    base = current;
                }
                Ok(result) => return result,
            }
        }
    }

    fn load_from(&mut self, base: u64, writer: bool) -> std::result::Result<Result<()>, Missing> {
        self.index = Index::default();
        self.files.clear();
        self.base = base;
        self.base_bytes = 0;
        self.sealed_bytes = 0;
        if base > 0
            && let Err(e) = self.load_base(base)
        {
            return match e {
                BaseLoad::Missing(name) => Err(Missing(name)),
                BaseLoad::Failed(e) => Ok(Err(e)),
            };
        }
        let first = base + 1;
        let name = segment_name(first);
        // The segment after a base is created before the base is named; only a newer
        // compaction removes it.
        let file = match self.dir.open(&name, false) {
            Ok(Some(file)) => file,
            Ok(None) if base > 0 => return Err(Missing(name)),
            Ok(None) => match self.dir.open(&name, writer) {
                Ok(Some(file)) => file,
                Ok(None) => return Ok(Ok(())),
                Err(e) => {
                    return Ok(Err(io_error(
                        "creating a segment",
                        &self.dir.describe(&name),
                        e,
                    )));
                }
            },
            Err(e) => {
                return Ok(Err(io_error(
                    "opening a segment",
                    &self.dir.describe(&name),
                    e,
                )));
            }
        };
        self.attach(file, first, name);
        Ok(self.catch_up_frames(writer))
    }

    fn add_file(&mut self, file: Arc<D::File>, name: String) -> u32 {
        self.files.push(Some((file, name)));
        (self.files.len() - 1) as u32
    }

    fn attach(&mut self, file: D::File, first: u64, name: String) {
        let file = Arc::new(file);
        self.active_id = self.add_file(file.clone(), name.clone());
        self.active = FrameLog::attach(file, first);
        self.active_name = name;
        self.sealed = false;
    }

    fn load_base(&mut self, base: u64) -> std::result::Result<(), BaseLoad> {
        let name = base_name(base);
        let where_ = self.dir.describe(&name);
        let file = Arc::new(
            self.dir
                .open(&name, false)
                .map_err(|e| io_error("opening the base", &where_, e))?
                .ok_or(BaseLoad::Missing(name.clone()))?,
        );
        let id = self.add_file(file.clone(), name);
        let mut log = FrameLog::attach(file.clone(), 1);
        let mut ended = false;
        loop {
            let found = log
                .catch_up_some(false)
                .map_err(|e| log_error(e, &where_))?;
            for frame in &found.frames {
                let (_, end) = fold_payload(
                    &mut self.index,
                    found.payload(frame),
                    id,
                    frame.payload_offset(),
                )
                .map_err(|detail| Error::Corrupt {
                    path: where_.clone(),
                    detail: format!("frame at offset {}: {detail}", frame.offset),
                })?;
                ended |= end;
            }
            if !found.more {
                break;
            }
        }
        let len = file
            .len()
            .map_err(|e| io_error("reading the base", &where_, e))?;
        if !ended || log.end() != len {
            return Err(BaseLoad::Failed(Error::Corrupt {
                path: where_,
                detail: "the base is incomplete or damaged at its end (a base is written whole \
                         before it is named, so this is damage on the medium)"
                    .into(),
            }));
        }
        self.base_bytes = len;
        Ok(())
    }

    /// Folds the frames appended since this process last looked, following seals into the
    /// next segment; a `writer` (holding the exclusive lock) cuts a torn tail.
    pub fn catch_up(&mut self, writer: bool) -> Result<()> {
        // Read before looking: whatever changed after it is looked at next time.
        let changes = self.shared.changes();
        let tail_unchecked = writer && self.tail_unchecked;
        if self.seen == Some(changes) && !self.poisoned && !tail_unchecked {
            return Ok(());
        }
        let outcome = if self.poisoned {
            self.poisoned = false;
            read_current(&self.dir).and_then(|base| self.load(base, writer))
        } else {
            self.catch_up_frames(writer)
        };
        // A failure between or inside frames may leave the index half-way: the next
        // operation rebuilds it from the files.
        self.poisoned |= outcome.is_err();
        self.seen = outcome.is_ok().then_some(changes);
        if writer && outcome.is_err() {
            // A writer's failed catch-up may have cut the tail half-way: everyone looks again.
            self.shared.cut();
            self.shared.bump();
        }
        if tail_unchecked && outcome.is_ok() {
            self.tail_unchecked = false;
        }
        outcome
    }

    /// Records a change to the files (under the writers' lock) in the shared counter, so
    /// every process looks again. This process's view stays current only when it was
    /// current before and the change succeeded.
    fn changed(&mut self, ok: bool) {
        if !ok {
            // A failed write may have cut bytes back: a durability record counting them
            // must not vouch for what is written there next.
            self.shared.cut();
        }
        let now = self.shared.bump();
        self.seen = (ok && self.seen == Some(now.wrapping_sub(1))).then_some(now);
    }

    fn catch_up_frames(&mut self, writer: bool) -> Result<()> {
        loop {
            if !self.sealed {
                let found = self
                    .active
                    .catch_up_some(false)
                    .map_err(|e| log_error(e, &self.dir.describe(&self.active_name)))?;
                self.fold_found(&found)?;
                if found.more {
                    continue;
                }
                if writer && found.torn_bytes > 0 && !self.sealed {
                    self.check_cut_is_a_torn_write()?;
                    let cut = self.active.catch_up(true);
                    // Counted after the bytes are gone (see `Shared::synced`).
                    self.shared.cut();
                    let cut =
                        cut.map_err(|e| log_error(e, &self.dir.describe(&self.active_name)))?;
                    self.fold_found(&cut)?;
                }
                if !self.sealed {
                    return Ok(());
                }
            }
            // Crossing a seal: a compaction names its base (through its first seal) before
            // its second seal, so a process crossing a seal that a base covers reloads from
            // that base, letting go of the files it replaced, and a process that lagged
            // behind removed segments finds the newer chain the same way.
            let next = self.active.next_number();
            let current = read_current(&self.dir)?;
            if current >= next - 1 && current > self.base {
                return self.load(current, writer);
            }
            let name = segment_name(next);
            let Some(file) = self
                .dir
                .open(&name, false)
                .map_err(|e| io_error("opening a segment", &self.dir.describe(&name), e))?
            else {
                // Removed since CURRENT was read: a compaction moved the chain on.
                let current = read_current(&self.dir)?;
                if current > self.base {
                    return self.load(current, writer);
                }
                return Err(Error::Corrupt {
                    path: self.dir.describe(&name),
                    detail: "missing, though a durable seal leads to it".into(),
                });
            };
            self.sealed_bytes += self.active.end();
            self.attach(file, next, name);
        }
    }

    /// Folds the frames a catch-up of the active segment found; a seal ends the segment.
    fn fold_found(&mut self, found: &silo_engine::Recovery) -> Result<()> {
        for frame in &found.frames {
            if self.sealed {
                return Err(Error::Corrupt {
                    path: self.dir.describe(&self.active_name),
                    detail: format!("frame at offset {} follows a seal", frame.offset),
                });
            }
            let (seal, _) = fold_payload(
                &mut self.index,
                found.payload(frame),
                self.active_id,
                frame.payload_offset(),
            )
            .map_err(|detail| Error::Corrupt {
                path: self.dir.describe(&self.active_name),
                detail: format!("frame at offset {}: {detail}", frame.offset),
            })?;
            self.sealed = seal;
        }
        Ok(())
    }

    /// Before a writer cuts the damaged end of the active segment as a torn write: a torn
    /// write is the last thing anyone wrote, so a segment after this one with frames in it
    /// means the damaged bytes were a seal, and cutting would drop that segment.
    fn check_cut_is_a_torn_write(&self) -> Result<()> {
        // A seal in the damaged frame would lead to the segment after its number.
        let name = segment_name(self.active.next_number() + 1);
        let where_ = self.dir.describe(&name);
        let next = self
            .dir
            .open(&name, false)
            .map_err(|e| io_error("opening a segment", &where_, e))?;
        let len = match next {
            Some(file) => file
                .len()
                .map_err(|e| io_error("reading a segment", &where_, e))?,
            None => 0,
        };
        if len > 0 {
            return Err(Error::Corrupt {
                path: self.dir.describe(&self.active_name),
                detail: format!(
                    "the last frame, at offset {}, is damaged but {name} holds frames after it: \
                     its seal was damaged on the medium, not torn by a crash",
                    self.active.end()
                ),
            });
        }
        // A frame a shipper took was whole and synced then: damage to it now is the medium's,
        // and cutting it would give its number to another frame, forking the store's history
        // from its replica's.
        let number = self.active.next_number();
        if let Some(mark) = super::history::read_mark(&self.dir)?
            && mark.shipped_through >= number
        {
            return Err(Error::Corrupt {
                path: self.dir.describe(&self.active_name),
                detail: format!(
                    "frame {number}, at offset {}, is damaged, but it was shipped to the replica \
                     (which holds frames up to {}): it was damaged on the medium, not torn by a \
                     crash; restore the store from its replica (silo restore)",
                    self.active.end(),
                    mark.shipped_through
                ),
            });
        }
        Ok(())
    }

    /// Starts a transaction (the caller holds the exclusive lock and caught up).
    pub fn begin(&mut self, held: Option<StoreLock>) {
        self.txn = Some(Txn {
            working: None,
            folded: 0,
            enc: Encoder::default(),
            payload_at: self.active.end() + silo_engine::frame::HEADER as u64,
            file: self.active_id,
            held,
            timed: false,
        });
    }

    /// Gives the pending frame its time when none of its records carries one, so every
    /// frame of the log can be placed in time (restore to a moment).
    pub fn stamp(&mut self, now: i64) {
        if let Some(txn) = self.txn.as_mut()
            && !txn.timed
            && !txn.enc.buf.is_empty()
        {
            txn.enc.push(&Rec::At { at: now });
            txn.timed = true;
        }
    }

    /// Appends the transaction's records as one frame and adopts its index. Nothing is
    /// written when it decided no records.
    pub fn commit(&mut self) -> Result<Option<Committed<D::File>>> {
        let Some(txn) = self.txn.take() else {
            return Ok(None);
        };
        if txn.enc.buf.is_empty() {
            return Ok(None);
        }
        if txn.enc.buf.len() > MAX_PAYLOAD {
            return Err(Error::invalid(format!(
                "one atomic write of {} bytes is over the limit of {MAX_PAYLOAD} bytes per \
                 frame; split it into smaller operations",
                txn.enc.buf.len()
            )));
        }
        // Under the exclusive lock, caught up since it was taken (`FsStore::write`).
        let appended = self.active.append_caught_up(&txn.enc.buf);
        self.changed(appended.is_ok());
        let frame = appended.map_err(|e| {
            io_error(
                "appending to the log",
                &self.dir.describe(&self.active_name),
                e,
            )
        })?;
        if frame.payload_offset() != txn.payload_at || txn.file != self.active_id {
            // Cannot happen under the exclusive lock; refuse to adopt an index that points
            // at the wrong bytes.
            return Err(Error::Backend {
                backend: "fs".into(),
                message: format!(
                    "a frame landed at {} where {} was planned (a silo bug); reopen the store",
                    frame.payload_offset(),
                    txn.payload_at
                ),
            });
        }
        // Adopting the copy first drops the old index, so the records still to fold (the
        // last operation's, the reply's) change nodes nobody else holds, in place.
        let mut folded = 0;
        if let Some(working) = txn.working {
            self.index = working;
            folded = txn.folded;
        }
        let rest = &txn.enc.buf[folded..];
        if let Err(detail) = fold_payload(
            &mut self.index,
            rest,
            txn.file,
            txn.payload_at + folded as u64,
        ) {
            self.poisoned = true;
            return Err(Error::Backend {
                backend: "fs".into(),
                message: format!("a committed frame did not apply ({detail}; a silo bug)"),
            });
        }
        let file = self.active.store().clone();
        Ok(Some(Committed {
            file,
            segment: self.active_first(),
            end: frame.end(),
        }))
    }

    /// [`Engine::commit`], then, when a frame was written, [`Engine::maintain`]: the commit's
    /// outcome and the maintenance's, kept apart (a failed seal does not fail the write).
    pub fn commit_and_maintain(&mut self) -> Finished<D::File> {
        let committed = self.commit();
        let maintained = match &committed {
            Ok(Some(_)) => self.maintain(),
            _ => Ok(()),
        };
        (committed, maintained)
    }

    /// Seals the active segment when it is full, and compacts when the chain holds more dead
    /// bytes than live ones or the log has grown far past the base (see [`FsTuning`]; the
    /// caller holds the exclusive lock and committed).
    pub fn maintain(&mut self) -> Result<()> {
        if self.active.end() >= self.tuning.segment_bytes {
            let sealed = self.seal();
            self.changed(sealed.is_ok());
            sealed?;
        }
        if self.compaction_due() {
            self.compact()?;
        }
        Ok(())
    }

    /// Whether the chain is due for a compaction (see [`FsTuning`]). Compaction runs in the
    /// writer, under the writers' lock, and reads and rewrites every live byte: it is worth
    /// it only when it reclaims as much as it rewrites, or when the log has outgrown the base.
    fn compaction_due(&self) -> bool {
        compaction_due(
            &self.tuning,
            self.base_bytes,
            self.sealed_bytes + self.active.end(),
            self.index.live_bytes(),
        )
    }

    /// Ends the active segment with a seal frame and opens the next one. The next file is
    /// emptied before the seal is written (only a seal can lead a reader into it), and the
    /// seal is synced before any frame lands in the next file, so no stale frame is ever
    /// read as part of the chain.
    fn seal(&mut self) -> Result<()> {
        let outcome = self.seal_segment();
        // A seal that was appended but not synced, or a next segment not attached: the files
        // are right, this process's view may not be; rebuild it from them.
        self.poisoned |= outcome.is_err();
        outcome
    }

    fn seal_segment(&mut self) -> Result<()> {
        let seal_number = self.active.next_number();
        let next = seal_number + 1;
        let name = segment_name(next);
        let where_ = self.dir.describe(&name);
        let file = self
            .dir
            .open(&name, true)
            .map_err(|e| io_error("creating a segment", &where_, e))?
            .ok_or_else(|| Error::config("a new segment vanished"))?;
        file.truncate(0)
            .map_err(|e| io_error("creating a segment", &where_, e))?;
        self.dir
            .sync()
            .map_err(|e| io_error("creating a segment", &where_, e))?;
        let mut enc = Encoder::default();
        enc.push(&Rec::Seal);
        let old = self.dir.describe(&self.active_name);
        self.active
            .append(&enc.buf)
            .map_err(|e| io_error("sealing a segment", &old, e))?;
        self.active
            .sync()
            .map_err(|e| io_error("sealing a segment", &old, e))?;
        self.sealed_bytes += self.active.end();
        self.attach(file, next, name);
        Ok(())
    }

    /// Rewrites the live state as a new base beside the log, names it in `CURRENT`, and
    /// removes what it replaced. Crash-safe at every step: until `CURRENT` is renamed the old
    /// chain is whole and named; after, the new one is.
    pub fn compact(&mut self) -> Result<()> {
        let outcome = self.compact_now();
        self.poisoned |= outcome.is_err();
        self.changed(outcome.is_ok());
        outcome
    }

    fn compact_now(&mut self) -> Result<()> {
        self.seal()?;
        let through = self.active.next_number() - 1;
        let name = base_name(through);
        let tmp = format!("{name}.tmp");
        let where_ = self.dir.describe(&tmp);
        let file = self
            .dir
            .open(&tmp, true)
            .map_err(|e| io_error("writing a base", &where_, e))?
            .ok_or_else(|| Error::config("a new base vanished"))?;
        file.truncate(0)
            .map_err(|e| io_error("writing a base", &where_, e))?;
        let mut log = FrameLog::attach(&file, 1);
        let io = |e| io_error("writing a base", &where_, e);
        write_base(&self.index, &self.files, &mut log).map_err(|e| match e {
            BaseError::Io(e) => io(e),
            BaseError::Silo(e) => e,
        })?;
        log.sync().map_err(io)?;
        self.dir.rename(&tmp, &name).map_err(io)?;
        write_small_file(&self.dir, CURRENT_NAME, format!("{name}\n").as_bytes())?;
        // Every process that crosses this seal sees the new CURRENT and reloads from it.
        self.seal()?;
        self.load(through, true)?;
        self.remove_strays()
    }

    /// Removes files the chain no longer uses: segments before it, other bases, leftovers of
    /// an interrupted compaction, a next segment whose seal never became durable.
    fn remove_strays(&mut self) -> Result<()> {
        let names = self
            .dir
            .list()
            .map_err(|e| io_error("listing the store directory", &self.dir.describe(""), e))?;
        let active_start =
            parse_numbered(&self.active_name, "seg-").unwrap_or(self.active.next_number());
        // A replicated store keeps the segments whose frames were not shipped yet.
        let shipped = super::history::read_mark(&self.dir)?.map(|m| m.shipped_through);
        // A segment ends where the next one with frames begins (an empty one is what a seal
        // that failed or never became durable left: it holds nothing and ends nothing).
        let mut segments = Vec::new();
        for first in names.iter().filter_map(|n| parse_numbered(n, "seg-")) {
            let name = segment_name(first);
            let len = match self.dir.open(&name, false) {
                Ok(Some(file)) => file.len().unwrap_or(1),
                _ => 1,
            };
            segments.push((first, len));
        }
        for name in names {
            let stray = if let Some(first) = parse_numbered(&name, "seg-") {
                let last = segments
                    .iter()
                    .find(|&&(f, len)| f > first && len > 0)
                    .map_or(u64::MAX, |(next, _)| next - 1);
                let held = shipped.is_some_and(|through| last > through);
                (first <= self.base && !held) || first > active_start
            } else if let Some(through) = parse_numbered(&name, "base-") {
                through != self.base
            } else {
                name.ends_with(".tmp")
            };
            if stray {
                self.dir
                    .remove(&name)
                    .map_err(|e| io_error("removing a stale file", &self.dir.describe(&name), e))?;
            }
        }
        self.dir
            .sync()
            .map_err(|e| io_error("syncing the store directory", &self.dir.describe(""), e))
    }

    /// Takes the writers' lock, waiting up to `timeout`.
    pub fn lock_exclusive(&mut self, timeout: Duration) -> Result<StoreLock> {
        let locked = lock_writers(&self.shared, timeout, || self.dir.describe(LOCK_NAME))?;
        // A writer that died may have left a torn frame: the next catch-up looks at the tail.
        self.tail_unchecked |= locked.owner_died;
        Ok(locked.guard)
    }

    /// The page this store's processes share.
    pub fn shared(&self) -> &D::Shared {
        &self.shared
    }

    /// A value's bytes, from the pending transaction or from its file.
    pub fn load_value(&self, r: ValRef) -> Result<Vec<u8>> {
        load_value(&self.files, self.txn.as_ref(), r, &self.dir)
    }

    /// The active segment's first frame number.
    fn active_first(&self) -> u64 {
        parse_numbered(&self.active_name, "seg-").unwrap_or(0)
    }

    /// Bytes of every file the chain uses.
    pub fn bytes_on_disk(&self) -> u64 {
        self.files
            .iter()
            .flatten()
            .filter_map(|(f, _)| f.len().ok())
            .sum()
    }

    /// Where the store lives, for messages.
    pub fn describe(&self) -> String {
        self.dir.describe("")
    }
}

/// A value's bytes: pending in `txn`'s payload when it points past the log's end, else read
/// from its file.
pub(crate) fn load_value<D: Dir>(
    files: &[OpenFile<D::File>],
    txn: Option<&Txn>,
    r: ValRef,
    dir: &D,
) -> Result<Vec<u8>> {
    if let Some(txn) = txn
        && r.file == txn.file
        && r.offset >= txn.payload_at
    {
        let start = (r.offset - txn.payload_at) as usize;
        return txn
            .enc
            .buf
            .get(start..start + r.len as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::Backend {
                backend: "fs".into(),
                message: "a pending value lies outside its transaction (a silo bug)".into(),
            });
    }
    let Some(Some((file, name))) = files.get(r.file as usize) else {
        return Err(Error::Backend {
            backend: "fs".into(),
            message: format!(
                "a value points at file {} which is not open (a silo bug)",
                r.file
            ),
        });
    };
    let mut buf = vec![0u8; r.len as usize];
    file.read_at(&mut buf, r.offset)
        .map_err(|e| io_error("reading a value", &dir.describe(name), e))?;
    Ok(buf)
}

/// Folds every record of one payload; returns whether it held a seal and an end mark.
pub(crate) fn fold_payload(
    index: &mut Index,
    payload: &[u8],
    file: u32,
    payload_offset: u64,
) -> std::result::Result<(bool, bool), String> {
    let mut decoder = Decoder::new(payload);
    let (mut seal, mut end) = (false, false);
    let at = |s: Span| ValRef {
        file,
        offset: payload_offset + s.pos as u64,
        len: s.len as u32,
    };
    loop {
        let rec = decoder
            .next_record()
            .map_err(|m| format!("record at payload byte {}: {}", m.at, m.detail))?;
        let Some(rec) = rec else { break };
        seal |= rec == Rec::Seal;
        end |= rec == Rec::End;
        index.fold(&rec, at)?;
    }
    Ok((seal, end))
}

/// A file of the chain was not there.
struct Missing(String);

enum BaseLoad {
    Missing(String),
    Failed(Error),
}

impl From<Error> for BaseLoad {
    fn from(e: Error) -> Self {
        BaseLoad::Failed(e)
    }
}

enum BaseError {
    Io(std::io::Error),
    Silo(Error),
}

/// The largest read a base makes to copy values, and the smallest once reads run in order.
const READ_WINDOW: usize = 1 << 20;
const FIRST_WINDOW: usize = 16 << 10;

/// Reads the values a base copies. A log's entries lie one after another in the segments
/// and are copied in that order: there one read of a window serves many values instead of
/// one `pread` each, the window doubling while the reads keep running forward. State is
/// copied in hash order, all over the files: there each value is read alone, so a window
/// never costs more than the values it serves.
struct ValueReader<'a, F> {
    files: &'a [OpenFile<F>],
    window: Vec<u8>,
    /// Which file the window holds (`usize::MAX`: none), and from which offset.
    file: usize,
    start: u64,
    /// How much the next read past the window fetches: 0 after a jump (the value alone).
    ahead: usize,
}

impl<'a, F: Store> ValueReader<'a, F> {
    fn new(files: &'a [OpenFile<F>]) -> Self {
        ValueReader {
            files,
            window: Vec::new(),
            file: usize::MAX,
            start: 0,
            ahead: 0,
        }
    }

    fn read(&mut self, r: ValRef) -> std::result::Result<&[u8], BaseError> {
        let (index, offset, len) = (r.file as usize, r.offset, r.len as usize);
        let Some(Some((file, _))) = self.files.get(index) else {
            return Err(BaseError::Silo(Error::Backend {
                backend: "fs".into(),
                message: "a value points at a file that is not open (a silo bug)".into(),
            }));
        };
        let end = self.start + self.window.len() as u64;
        let within = index == self.file
            && offset >= self.start
            && offset - self.start + len as u64 <= self.window.len() as u64;
        if !within {
            // Forward from the window and close to it: reads run in order; read ahead more.
            let forward = index == self.file && offset >= end && offset - end <= READ_WINDOW as u64;
            self.ahead = if forward {
                (self.ahead * 2).clamp(FIRST_WINDOW, READ_WINDOW)
            } else {
                0
            };
            // Never past the file's end (a short file is an error only when the value itself
            // runs past it).
            let size = if self.ahead > len {
                let available = file.len().map_err(BaseError::Io)?.saturating_sub(offset);
                available.min(self.ahead as u64).max(len as u64) as usize
            } else {
                len
            };
            self.file = usize::MAX;
            self.window.resize(size, 0);
            file.read_at(&mut self.window, offset)
                .map_err(BaseError::Io)?;
            (self.file, self.start) = (index, offset);
        }
        let at = (offset - self.start) as usize;
        Ok(&self.window[at..at + len])
    }
}

/// A base's frames end at the first record that takes them to this size.
const BASE_FRAME_BYTES: usize = 1 << 20;

/// Writes the index as records, in frames of about [`BASE_FRAME_BYTES`], ending with an end
/// mark.
fn write_base<S: Store, F: Store>(
    index: &Index,
    files: &[OpenFile<F>],
    log: &mut FrameLog<S>,
) -> std::result::Result<(), BaseError> {
    let mut values = ValueReader::new(files);
    let mut enc = Encoder::default();
    let mut flush = |enc: &mut Encoder, force: bool| -> std::result::Result<(), BaseError> {
        if enc.buf.len() >= BASE_FRAME_BYTES || (force && !enc.buf.is_empty()) {
            log.append(&enc.buf).map_err(BaseError::Io)?;
            enc.buf.clear();
        }
        Ok(())
    };
    for (name, scope) in index.scopes.iter() {
        enc.push(&Rec::Touch {
            scope: name,
            at: scope.touched_ms,
        });
        for (ns, map) in scope.state.iter() {
            for (key, v) in map.iter() {
                let value = values.read(*v)?;
                enc.push(&Rec::Put {
                    scope: name,
                    ns,
                    key,
                    value,
                });
                flush(&mut enc, false)?;
            }
        }
        for ((ns, key), log) in scope.logs.iter() {
            for (id, v) in log.iter() {
                let value = values.read(*v)?;
                enc.push(&Rec::Append {
                    scope: name,
                    ns,
                    key,
                    id: *id,
                    value,
                });
                flush(&mut enc, false)?;
            }
        }
        for ((ns, key), value) in scope.counters.iter() {
            enc.push(&Rec::CounterSet {
                scope: name,
                ns,
                key,
                value: *value,
            });
        }
        for (id, item) in scope.queue.iter() {
            let value = values.read(item.value)?;
            enc.push(&Rec::Item {
                scope: name,
                id: *id,
                value,
                attempts: item.attempts,
                visible_at: item.visible_at,
                claim: item.claim.unwrap_or(0),
            });
            flush(&mut enc, false)?;
        }
        for dead in scope.dead.iter() {
            let value = values.read(dead.value)?;
            enc.push(&Rec::Dead {
                scope: name,
                value,
                attempts: dead.attempts,
                at: dead.at,
            });
            flush(&mut enc, false)?;
        }
    }
    for (key, once) in index.once.iter() {
        let reply = values.read(once.reply)?;
        enc.push(&Rec::Once {
            key,
            fingerprint: &once.fingerprint,
            reply,
            at: once.at,
        });
        flush(&mut enc, false)?;
    }
    let seq = index.seq;
    enc.push(&Rec::Seq {
        log: seq.last_log_id,
        item: seq.last_item_id,
        claim: seq.last_claim_id,
    });
    enc.push(&Rec::End);
    flush(&mut enc, true)
}

pub(crate) fn log_error(e: LogError, where_: &str) -> Error {
    match e {
        LogError::Io(e) => io_error("reading the log", where_, e),
        LogError::Corrupt { offset, detail } => Error::Corrupt {
            path: where_.to_owned(),
            detail: format!("at offset {offset}: {detail}"),
        },
    }
}

fn lock_writers<S: Shared>(
    shared: &S,
    timeout: Duration,
    where_: impl Fn() -> String,
) -> Result<silo_engine::Locked> {
    let locked = shared
        .lock(PageLock::Writers, timeout)
        .map_err(|e| io_error("taking the writers' lock", &where_(), e))?;
    // A process stopped while holding the lock surfaces as Unavailable, not a hang.
    locked.ok_or_else(|| Error::Unavailable {
        message: format!(
            "another process held the writers' lock of {} for longer than {timeout:?} \
             (busy_timeout_ms)",
            where_()
        ),
    })
}

pub(crate) fn read_small_file<D: Dir>(dir: &D, name: &str) -> Result<Option<Vec<u8>>> {
    let where_ = dir.describe(name);
    let Some(file) = dir
        .open(name, false)
        .map_err(|e| io_error("opening", &where_, e))?
    else {
        return Ok(None);
    };
    let len = file.len().map_err(|e| io_error("reading", &where_, e))?;
    if len > 4096 {
        return Err(Error::Corrupt {
            path: where_,
            detail: format!("{len} bytes where a short line was expected"),
        });
    }
    let mut buf = vec![0u8; len as usize];
    file.read_at(&mut buf, 0)
        .map_err(|e| io_error("reading", &where_, e))?;
    Ok(Some(buf))
}

/// Replaces `name` with `bytes` atomically and durably (a temp file, synced, renamed).
pub(crate) fn write_small_file<D: Dir>(dir: &D, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = format!("{name}.tmp");
    let where_ = dir.describe(name);
    let io = |e| io_error("writing", &where_, e);
    let file = dir
        .open(&tmp, true)
        .map_err(io)?
        .ok_or_else(|| Error::config(format!("{where_} vanished while it was written")))?;
    file.truncate(0).map_err(io)?;
    file.write_at(bytes, 0).map_err(io)?;
    file.sync().map_err(io)?;
    dir.rename(&tmp, name).map_err(io)
}

/// Creates `FORMAT` in a new store, or checks the one there.
fn check_format<D: Dir>(dir: &D) -> Result<()> {
    let where_ = dir.describe(FORMAT_NAME);
    let Some(bytes) = read_small_file(dir, FORMAT_NAME)? else {
        return write_small_file(
            dir,
            FORMAT_NAME,
            format!("{FORMAT_MAGIC} {FORMAT_VERSION}\n").as_bytes(),
        );
    };
    let text = String::from_utf8_lossy(&bytes);
    let version = text
        .trim_end()
        .strip_prefix(FORMAT_MAGIC)
        .and_then(|v| v.trim().parse::<u32>().ok())
        .ok_or_else(|| Error::Corrupt {
            path: where_.clone(),
            detail: format!("{text:?} is not a silo fs: format line; this is not a silo store"),
        })?;
    if version > FORMAT_VERSION {
        return Err(Error::Unsupported {
            op: format!("opening a store of fs: format {version} ({where_})"),
            backend: format!(
                "this silo {} (it reads format {FORMAT_VERSION}; upgrade silo)",
                crate::VERSION
            ),
        });
    }
    if version < FORMAT_VERSION {
        // Every older format is a subset of this one: only the number changes.
        write_small_file(
            dir,
            FORMAT_NAME,
            format!("{FORMAT_MAGIC} {FORMAT_VERSION}\n").as_bytes(),
        )?;
    }
    Ok(())
}

/// The frame number the chain's base ends at (0 = no base yet).
pub(crate) fn read_current<D: Dir>(dir: &D) -> Result<u64> {
    let Some(bytes) = read_small_file(dir, CURRENT_NAME)? else {
        return Ok(0);
    };
    let text = String::from_utf8_lossy(&bytes);
    parse_numbered(text.trim_end(), "base-").ok_or_else(|| Error::Corrupt {
        path: dir.describe(CURRENT_NAME),
        detail: format!("{text:?} does not name a base"),
    })
}
