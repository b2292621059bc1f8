//! An `fs:` store's history as frames, for shipping it elsewhere and building a store back
//! from it (`silo-replicate`, SPEC §5 "Replication").
//!
//! [`HistoryReader`] reads the frames of a live store's segments from any frame number on —
//! without the writers' lock, as every reader does, and only frames made durable first — in
//! [`Chunk`]s of whole frames that never cross a segment's end. Each frame's time is the
//! latest time its records carry (a scope's touch, an `apply_once` record), carried forward
//! as a running maximum so times never go backwards even when the clocks of the store's
//! processes disagree. [`RestoreWriter`] builds a new store directory from a base and chunks:
//! every byte is checked and lands exactly where it lay in the original (segments end at the
//! same seals), so the rebuilt store is the original as of its last frame.
//!
//! The `REPLICA` file in the store directory records how far the history was shipped (and
//! which store the target belongs to). While it is there, the engine keeps every segment that
//! holds a frame not yet shipped, even after compaction replaced it, so a shipper that was
//! down or cut off from its target loses nothing; it catches up from disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use silo_engine::{Dir, FileDir, FileStore, FrameLog, Store, decode_frames};

use super::engine::{
    base_name, io_error, parse_numbered, read_current, read_small_file, segment_name,
    write_small_file,
};
use super::record::{Decoder, Rec};
use crate::{Error, Result};

/// The file recording the replication's progress.
pub const REPLICA_NAME: &str = "REPLICA";
const REPLICA_MAGIC: &str = "silo-replica 1";

/// How far a store's history was shipped, and the identity its target knows it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaMark {
    /// A random identity chosen when replication started: a target holding another store's
    /// history is refused.
    pub store_id: String,
    /// Every frame up to this one is in object storage (`durable_frame_no`; 0 = none).
    pub shipped_through: u64,
}

/// Reads `REPLICA` from a store directory (`None` when the store is not replicated).
pub fn read_replica_mark(store: &Path) -> Result<Option<ReplicaMark>> {
    let dir = open_dir(store)?;
    read_mark(&dir)
}

pub(crate) fn read_mark<D: Dir>(dir: &D) -> Result<Option<ReplicaMark>> {
    let Some(bytes) = read_small_file(dir, REPLICA_NAME)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    let bad = || Error::Corrupt {
        path: dir.describe(REPLICA_NAME),
        detail: format!(
            "{text:?} is not a replication mark (\"{REPLICA_MAGIC}\", \"id …\", \"shipped N\"); \
             delete it to stop holding segments for a shipper"
        ),
    };
    if lines.next() != Some(REPLICA_MAGIC) {
        return Err(bad());
    }
    let store_id = lines
        .next()
        .and_then(|l| l.strip_prefix("id "))
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or_else(bad)?
        .to_owned();
    let shipped_through = lines
        .next()
        .and_then(|l| l.strip_prefix("shipped "))
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)?;
    Ok(Some(ReplicaMark {
        store_id,
        shipped_through,
    }))
}

/// Replaces `REPLICA` (atomically and durably). Its temporary file is not named `*.tmp`: the
/// engine removes those as leftovers of its own, and the shipper writes without its lock.
pub fn write_replica_mark(store: &Path, mark: &ReplicaMark) -> Result<()> {
    let dir = open_dir(store)?;
    let text = format!(
        "{REPLICA_MAGIC}\nid {}\nshipped {}\n",
        mark.store_id, mark.shipped_through
    );
    let where_ = dir.describe(REPLICA_NAME);
    let io = |e| io_error("writing", &where_, e);
    let tmp = format!("{REPLICA_NAME}.new");
    let file = dir
        .open(&tmp, true)
        .map_err(io)?
        .ok_or_else(|| Error::config(format!("{where_} vanished while it was written")))?;
    file.truncate(0).map_err(io)?;
    file.write_at(text.as_bytes(), 0).map_err(io)?;
    file.sync().map_err(io)?;
    dir.rename(&tmp, REPLICA_NAME).map_err(io)
}

/// The one shipper of a store: held while a shipper runs, so that a second one (another
/// `silo serve --replicate`, a `silo replicate` beside it) is refused instead of racing it.
#[derive(Debug)]
pub struct ShipperLock {
    _held: silo_engine::StoreLock,
}

/// Takes the store's shipper lock (`REPLICA.lock`), or says who holds it.
pub fn lock_shipper(store: &Path) -> Result<ShipperLock> {
    let dir = open_dir(store)?;
    let name = "REPLICA.lock";
    let where_ = dir.describe(name);
    let file = dir
        .open(name, true)
        .map_err(|e| io_error("opening the shipper lock", &where_, e))?
        .ok_or_else(|| Error::config(format!("{where_} vanished")))?;
    match file
        .try_lock(silo_engine::LockMode::Exclusive)
        .map_err(|e| io_error("taking the shipper lock", &where_, e))?
    {
        Some(held) => Ok(ShipperLock { _held: held }),
        None => Err(Error::config(format!(
            "another process is shipping {} (it holds {where_}); one shipper per store",
            store.display()
        ))),
    }
}

fn open_dir(path: &Path) -> Result<FileDir> {
    if !path.join("FORMAT").exists() {
        return Err(Error::config(format!(
            "{} is not a silo fs: store (no FORMAT file)",
            path.display()
        )));
    }
    FileDir::open(path).map_err(|e| {
        io_error(
            "opening the store directory",
            &path.display().to_string(),
            e,
        )
    })
}

/// What a frame's records say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameFacts {
    /// Its number.
    pub number: u64,
    /// Where it ends in the bytes it was decoded from.
    pub end: usize,
    /// The latest time (ms since the epoch) its records carry, if any.
    pub time_ms: Option<i64>,
    /// It ends its segment.
    pub seal: bool,
}

/// Checks `bytes` as whole frames numbered from `first` on (checksums, numbering, records)
/// and says what each frame holds.
pub fn decode_chunk(bytes: &[u8], first: u64) -> std::result::Result<Vec<FrameFacts>, String> {
    let frames = decode_frames(bytes, first).map_err(|e| e.to_string())?;
    let mut facts = Vec::with_capacity(frames.len());
    for frame in frames {
        let start = frame.payload_offset() as usize;
        let end = frame.end() as usize;
        let mut decoder = Decoder::new(&bytes[start..end]);
        let (mut time_ms, mut seal) = (None::<i64>, false);
        loop {
            let rec = decoder.next_record().map_err(|m| {
                format!(
                    "frame {} at offset {}: record at payload byte {}: {}",
                    frame.number, frame.offset, m.at, m.detail
                )
            })?;
            match rec {
                None => break,
                Some(Rec::Touch { at, .. } | Rec::Once { at, .. } | Rec::At { at }) => {
                    time_ms = Some(time_ms.map_or(at, |t| t.max(at)));
                }
                Some(Rec::Seal) => seal = true,
                Some(_) => {}
            }
        }
        facts.push(FrameFacts {
            number: frame.number,
            end,
            time_ms,
            seal,
        });
    }
    Ok(facts)
}

/// A run of whole frames of one segment, as they lie on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The first frame's number.
    pub first: u64,
    /// The last frame's number.
    pub last: u64,
    /// The running maximum of frame times at the first frame and at the last (ms).
    pub time_first_ms: i64,
    pub time_last_ms: i64,
    /// The frames' bytes.
    pub bytes: Vec<u8>,
    /// The last frame is its segment's seal.
    pub ends_segment: bool,
}

/// What [`HistoryReader::read`] found at a frame number.
#[derive(Debug)]
pub enum Next {
    /// Frames from that number on.
    Chunk(Chunk),
    /// No frame with that number yet.
    UpToDate,
    /// The segment holding it is gone: compaction replaced it (the store was not holding its
    /// segments for a shipper). The base `CURRENT` names holds the state through `base`.
    Compacted {
        /// The frame the current base ends at.
        base: u64,
    },
}

/// Where a reader stopped in a segment.
struct Cursor {
    log: FrameLog<Arc<FileStore>>,
    name: String,
}

/// Reads a live store's frames for shipping.
pub struct HistoryReader {
    path: PathBuf,
    dir: FileDir,
    cursor: Option<Cursor>,
    /// The frame that begins the segment after the last seal this reader read: an empty
    /// segment starting there is the store's real continuation, not a stray.
    continuation: Option<u64>,
}

impl std::fmt::Debug for HistoryReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl HistoryReader {
    /// A reader of the store in `path` (which must exist).
    pub fn open(path: &Path) -> Result<Self> {
        Ok(HistoryReader {
            path: path.to_owned(),
            dir: open_dir(path)?,
            cursor: None,
            continuation: None,
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole frames from number `from` on — about `max_bytes` at most, never past the end
    /// of the segment holding `from` — made durable on disk before they are returned. Times
    /// run on from `time_before` (the time of frame `from - 1`).
    pub fn read(&mut self, from: u64, time_before: i64, max_bytes: usize) -> Result<Next> {
        if from == 0 {
            return Err(Error::invalid("frame numbers start at 1"));
        }
        let resume = self
            .cursor
            .as_ref()
            .is_some_and(|c| c.log.next_number() == from);
        if !resume {
            self.cursor = None;
            let Some(mut first) = self.segment_holding(from)? else {
                let base = read_current(&self.dir)?;
                return Ok(if base >= from {
                    Next::Compacted { base }
                } else {
                    Next::UpToDate
                });
            };
            // An empty newest segment starting at `from` follows a seal — or is what a writer
            // that died between creating it and writing its seal left, the log going on in the
            // segment before it. Look there once (a restarted shipper has not seen the seal).
            // (An empty segment starting before `from` is always such a leftover.)
            if (first < from || self.continuation != Some(from)) && self.is_empty_segment(first)? {
                match self.segment_before(first)? {
                    Some(previous) if self.holds_frame(previous, from)? => first = previous,
                    _ if first == from => self.continuation = Some(from),
                    _ => {}
                }
            }
            let name = segment_name(first);
            let Some(file) = self
                .dir
                .open(&name, false)
                .map_err(|e| io_error("opening a segment", &self.dir.describe(&name), e))?
            else {
                // Removed between the listing and the open: look again next time.
                return Ok(Next::UpToDate);
            };
            self.cursor = Some(Cursor {
                log: FrameLog::attach(Arc::new(file), first),
                name,
            });
        }
        let Some(cursor) = self.cursor.as_mut() else {
            return Ok(Next::UpToDate);
        };
        let where_ = self.dir.describe(&cursor.name);
        // Skip the frames before `from` (a fresh cursor starts at the segment's start).
        let start_offset = loop {
            if cursor.log.next_number() == from {
                break cursor.log.end();
            }
            let found = cursor
                .log
                .catch_up_some(false)
                .map_err(|e| super::engine::log_error(e, &where_))?;
            if let Some(frame) = found.frames.iter().find(|f| f.number == from) {
                // Rewind to it: the frames after it are read below.
                let file = cursor.log.store().clone();
                cursor.log = FrameLog::attach_at(file, from, frame.offset);
                break frame.offset;
            }
            if found.frames.is_empty() {
                return Ok(Next::UpToDate);
            }
        };
        let mut end = start_offset;
        let mut facts = Vec::new();
        let mut payload_bytes = Vec::new();
        'read: while (end - start_offset) < max_bytes as u64 {
            let found = cursor
                .log
                .catch_up_some(false)
                .map_err(|e| super::engine::log_error(e, &where_))?;
            for frame in &found.frames {
                payload_bytes.clear();
                payload_bytes.extend_from_slice(found.payload(frame));
                let seal = payload_is_seal(&payload_bytes);
                facts.push((frame.number, payload_time(&payload_bytes), seal));
                end = frame.end();
                if seal || end - start_offset >= max_bytes as u64 {
                    // Leave the cursor just past the last frame taken.
                    let file = cursor.log.store().clone();
                    cursor.log = FrameLog::attach_at(file, frame.number + 1, end);
                    break 'read;
                }
            }
            if !found.more {
                break;
            }
        }
        if facts.is_empty() {
            return Ok(Next::UpToDate);
        }
        let file = cursor.log.store().clone();
        // Shipped frames must survive a power loss here: a frame lost locally but kept in
        // object storage would make the two histories differ.
        file.sync()
            .map_err(|e| io_error("syncing a segment before shipping it", &where_, e))?;
        let mut bytes = vec![0u8; (end - start_offset) as usize];
        file.read_at(&mut bytes, start_offset)
            .map_err(|e| io_error("reading a segment", &where_, e))?;
        let mut time = time_before;
        let mut time_first = None;
        for (_, t, _) in &facts {
            time = time.max(t.unwrap_or(i64::MIN));
            time_first.get_or_insert(time);
        }
        let (last, _, ends_segment) = facts[facts.len() - 1];
        if ends_segment {
            self.cursor = None;
            self.continuation = Some(last + 1);
        }
        Ok(Next::Chunk(Chunk {
            first: from,
            last,
            time_first_ms: time_first.unwrap_or(time),
            time_last_ms: time,
            bytes,
            ends_segment,
        }))
    }

    /// The segment whose frames include `from`: the newest starting at or before it, passing
    /// over empty ones that are not the newest (what a seal that failed left: the chain went on
    /// in the segment before it).
    fn segment_holding(&self, from: u64) -> Result<Option<u64>> {
        let names = self
            .dir
            .list()
            .map_err(|e| io_error("listing the store directory", &self.dir.describe(""), e))?;
        let firsts: Vec<u64> = names
            .iter()
            .filter_map(|n| parse_numbered(n, "seg-"))
            .collect();
        if firsts.first().is_none_or(|&oldest| oldest > from) {
            return Ok(None);
        }
        let newest = firsts.last().copied();
        for &first in firsts.iter().rev().filter(|&&f| f <= from) {
            if Some(first) == newest || !self.is_empty_segment(first)? {
                return Ok(Some(first));
            }
        }
        Ok(None)
    }

    /// The newest segment starting before `first`.
    fn segment_before(&self, first: u64) -> Result<Option<u64>> {
        let names = self
            .dir
            .list()
            .map_err(|e| io_error("listing the store directory", &self.dir.describe(""), e))?;
        Ok(names
            .iter()
            .filter_map(|n| parse_numbered(n, "seg-"))
            .filter(|&f| f < first)
            .max())
    }

    /// Whether the segment starting at `first` holds frame `number` (reads it through).
    fn holds_frame(&self, first: u64, number: u64) -> Result<bool> {
        let name = segment_name(first);
        let where_ = self.dir.describe(&name);
        let Some(file) = self
            .dir
            .open(&name, false)
            .map_err(|e| io_error("opening a segment", &where_, e))?
        else {
            return Ok(false);
        };
        let mut log = FrameLog::attach(file, first);
        loop {
            let found = log
                .catch_up_some(false)
                .map_err(|e| super::engine::log_error(e, &where_))?;
            if log.next_number() > number {
                return Ok(true);
            }
            if !found.more {
                return Ok(false);
            }
        }
    }

    fn is_empty_segment(&self, first: u64) -> Result<bool> {
        let name = segment_name(first);
        let where_ = self.dir.describe(&name);
        match self
            .dir
            .open(&name, false)
            .map_err(|e| io_error("opening a segment", &where_, e))?
        {
            Some(file) => Ok(file
                .len()
                .map_err(|e| io_error("reading a segment", &where_, e))?
                == 0),
            None => Ok(true),
        }
    }

    /// The base `CURRENT` names, open, if any. It stays readable while open even if a later
    /// compaction removes its name.
    pub fn current_base(&self) -> Result<Option<BaseFile>> {
        loop {
            let through = read_current(&self.dir)?;
            if through == 0 {
                return Ok(None);
            }
            let name = base_name(through);
            let where_ = self.dir.describe(&name);
            match self
                .dir
                .open(&name, false)
                .map_err(|e| io_error("opening a base", &where_, e))?
            {
                Some(file) => {
                    return Ok(Some(BaseFile {
                        through,
                        file,
                        where_,
                    }));
                }
                // Replaced between reading CURRENT and opening it: read CURRENT again.
                None if read_current(&self.dir)? != through => continue,
                None => {
                    return Err(Error::Corrupt {
                        path: where_,
                        detail: "missing, though CURRENT names it".into(),
                    });
                }
            }
        }
    }
}

/// A compacted base of a live store, open for reading.
#[derive(Debug)]
pub struct BaseFile {
    through: u64,
    file: FileStore,
    where_: String,
}

impl BaseFile {
    /// It holds the state through this frame.
    pub fn through(&self) -> u64 {
        self.through
    }

    /// Its size.
    pub fn len(&self) -> Result<u64> {
        self.file
            .len()
            .map_err(|e| io_error("reading a base", &self.where_, e))
    }

    /// Whether it is empty (a base never is).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Fills `buf` from `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_at(buf, offset)
            .map_err(|e| io_error("reading a base", &self.where_, e))
    }
}

/// The latest time a payload's records carry (a payload that does not decode has none; the
/// engine itself refuses such a frame).
fn payload_time(payload: &[u8]) -> Option<i64> {
    let mut decoder = Decoder::new(payload);
    let mut time = None::<i64>;
    while let Ok(Some(rec)) = decoder.next_record() {
        if let Rec::Touch { at, .. } | Rec::Once { at, .. } | Rec::At { at } = rec {
            time = Some(time.map_or(at, |t| t.max(at)));
        }
    }
    time
}

fn payload_is_seal(payload: &[u8]) -> bool {
    let mut decoder = Decoder::new(payload);
    while let Ok(Some(rec)) = decoder.next_record() {
        if rec == Rec::Seal {
            return true;
        }
    }
    false
}

/// Builds a store directory from a base and runs of frames, checking every byte.
pub struct RestoreWriter {
    path: PathBuf,
    dir: FileDir,
    base: Option<(u64, FileStore, u64)>,
    /// The segment being written: its first frame, file and length.
    segment: Option<(u64, FileStore, u64)>,
    /// The number the next frame must have.
    next: u64,
    /// The last frame written was a seal.
    sealed: bool,
}

impl std::fmt::Debug for RestoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreWriter")
            .field("path", &self.path)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl RestoreWriter {
    /// Starts a store in `path`, which must be missing or an empty directory (a restore never
    /// writes over a store).
    pub fn create(path: &Path) -> Result<Self> {
        let where_ = path.display().to_string();
        if path.exists() {
            let mut entries = std::fs::read_dir(path)
                .map_err(|e| io_error("reading the restore directory", &where_, e))?;
            if entries.next().is_some() {
                return Err(Error::config(format!(
                    "{where_} is not empty: restore into a new or empty directory (a restore \
                     never writes over a store)"
                )));
            }
        }
        let dir = FileDir::open(path)
            .map_err(|e| io_error("creating the restore directory", &where_, e))?;
        Ok(RestoreWriter {
            path: path.to_owned(),
            dir,
            base: None,
            segment: None,
            next: 1,
            sealed: false,
        })
    }

    /// Appends bytes of the base that holds the state through frame `through` (before any
    /// frame; the base is checked whole when the store opens).
    pub fn write_base(&mut self, through: u64, bytes: &[u8]) -> Result<()> {
        if self.segment.is_some() || self.base.as_ref().is_some_and(|b| b.0 != through) {
            return Err(Error::invalid(
                "a restore writes one base, before any frame",
            ));
        }
        if self.base.is_none() {
            let name = base_name(through);
            let file = self.create_file(&name)?;
            self.base = Some((through, file, 0));
            self.next = through + 1;
        }
        if let Some((_, file, len)) = self.base.as_mut() {
            let where_ = self.dir.describe(&base_name(through));
            file.write_at(bytes, *len)
                .map_err(|e| io_error("writing the base", &where_, e))?;
            *len += bytes.len() as u64;
        }
        Ok(())
    }

    fn create_file(&self, name: &str) -> Result<FileStore> {
        let where_ = self.dir.describe(name);
        let file = self
            .dir
            .open(name, true)
            .map_err(|e| io_error("creating a file", &where_, e))?
            .ok_or_else(|| Error::config(format!("{where_} vanished while it was created")))?;
        file.truncate(0)
            .map_err(|e| io_error("creating a file", &where_, e))?;
        Ok(file)
    }

    /// The number the next frame must carry.
    pub fn next_frame(&self) -> u64 {
        self.next
    }

    /// Appends whole frames (numbered from [`RestoreWriter::next_frame`] on, checked), ending
    /// a segment file at each seal as the original did.
    pub fn write_frames(&mut self, bytes: &[u8]) -> Result<()> {
        let facts = decode_chunk(bytes, self.next).map_err(|detail| Error::Corrupt {
            path: format!("frames from {} on", self.next),
            detail,
        })?;
        let mut from = 0usize;
        for fact in facts {
            if self.segment.is_none() {
                let name = segment_name(fact.number);
                let file = self.create_file(&name)?;
                self.segment = Some((fact.number, file, 0));
            }
            let Some((first, file, len)) = self.segment.as_mut() else {
                continue;
            };
            let piece = &bytes[from..fact.end];
            file.write_at(piece, *len).map_err(|e| {
                io_error(
                    "writing a segment",
                    &self.dir.describe(&segment_name(*first)),
                    e,
                )
            })?;
            *len += piece.len() as u64;
            from = fact.end;
            self.next = fact.number + 1;
            self.sealed = fact.seal;
            if fact.seal {
                self.close_segment()?;
            }
        }
        Ok(())
    }

    fn close_segment(&mut self) -> Result<()> {
        if let Some((first, file, _)) = self.segment.take() {
            file.sync().map_err(|e| {
                io_error(
                    "syncing a segment",
                    &self.dir.describe(&segment_name(first)),
                    e,
                )
            })?;
        }
        Ok(())
    }

    /// Makes the store whole and durable: the segment the next frame goes to, `CURRENT`,
    /// `FORMAT`. Returns the store's directory and the last frame it holds.
    pub fn finish(mut self) -> Result<(PathBuf, u64)> {
        self.close_segment()?;
        // The chain always has a segment to continue in (after a seal, or right after the
        // base), as the engine leaves it.
        if self.sealed || self.next == self.base.as_ref().map_or(1, |b| b.0 + 1) {
            let name = segment_name(self.next);
            let file = self.create_file(&name)?;
            file.sync()
                .map_err(|e| io_error("creating a segment", &self.dir.describe(&name), e))?;
        }
        if let Some((through, file, _)) = self.base.take() {
            let name = base_name(through);
            file.sync()
                .map_err(|e| io_error("syncing the base", &self.dir.describe(&name), e))?;
            write_small_file(&self.dir, "CURRENT", format!("{name}\n").as_bytes())?;
        }
        write_small_file(
            &self.dir,
            "FORMAT",
            format!("silo-fs {}\n", super::engine::FORMAT_VERSION).as_bytes(),
        )?;
        self.dir
            .sync()
            .map_err(|e| io_error("syncing the store directory", &self.dir.describe(""), e))?;
        Ok((self.path, self.next - 1))
    }
}
