//! Shipping: every frame of an `fs:` store, in order, to a [`Target`], with the manifest
//! saying how far it got (`durable_frame_no`), and the store holding what is not there yet.
//!
//! One round ([`Shipper::ship`]) uploads the frames written since the last one as segment
//! objects of whole frames, then the newest compacted base as a snapshot when there is one
//! the target lacks. After each object: the manifest, then the store's `REPLICA` mark — so
//! the store lets go of a segment only once the target vouches for it. A shipper killed at
//! any point restarts from the manifest: objects past it are removed and shipped again under
//! the same names, so no frame is lost or doubled. [`run`] repeats rounds every `max_lag`
//! (the bound on how much recent history a lost disk can take), retrying failures with
//! backoff; writers never wait for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use silo::fs::history::{
    HistoryReader, Next, ReplicaMark, ShipperLock, lock_shipper, read_replica_mark,
    write_replica_mark,
};
use silo::{Error, Result};

use crate::layout::{MANIFEST, Manifest, SEGMENTS, SNAPSHOTS, SegmentKey, SnapshotKey, digest};
use crate::target::Target;

/// The largest segment object a round uploads (frames larger than it go alone).
pub const CHUNK_BYTES: usize = 16 << 20;

/// How shipping goes.
#[derive(Clone, Debug)]
pub struct ShipOptions {
    /// Segment objects hold about this many bytes at most.
    pub chunk_bytes: usize,
    /// Keep every point of this window restorable and delete what is older (`None`: keep all).
    pub retain: Option<Duration>,
}

impl Default for ShipOptions {
    fn default() -> Self {
        ShipOptions {
            chunk_bytes: CHUNK_BYTES,
            retain: None,
        }
    }
}

/// What a round shipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShipReport {
    /// Segment objects uploaded.
    pub segments: u64,
    /// Snapshot objects uploaded.
    pub snapshots: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Objects deleted by retention (and leftovers of an interrupted round).
    pub deleted: u64,
    /// The last frame in the target after the round.
    pub durable_frame_no: u64,
}

/// How far shipping got, shared with whoever reports it (`silo serve`'s metrics).
#[derive(Debug, Default)]
pub struct Progress {
    /// The last frame known to be in object storage.
    pub durable_frame_no: AtomicU64,
    /// When it was last moved or confirmed (ms since the epoch).
    pub checked_ms: AtomicU64,
    /// Consecutive failed rounds.
    pub failures: AtomicU64,
}

/// Ships one store to one target.
#[derive(Debug)]
pub struct Shipper {
    store: PathBuf,
    reader: HistoryReader,
    target: Target,
    manifest: Manifest,
    snapshots: BTreeMap<u64, SnapshotKey>,
    /// The time of the frame that ended each shipped segment: a base made at that seal is
    /// a snapshot of that moment.
    seal_times: BTreeMap<u64, i64>,
    options: ShipOptions,
    progress: Arc<Progress>,
    /// A round failed: what the target holds is not known; read it again before shipping.
    unsure: bool,
    /// Held while this shipper lives: one shipper per store.
    _lock: ShipperLock,
}

impl Shipper {
    /// Starts shipping the `fs:` store in `store` to `target`: picks up where the target's
    /// manifest says an earlier shipper stopped, and removes what one killed mid-upload left.
    pub fn open(store: &Path, target: Target, mut options: ShipOptions) -> Result<Self> {
        options.chunk_bytes = options.chunk_bytes.max(1);
        let lock = lock_shipper(store)?;
        let reader = HistoryReader::open(store)?;
        let existing = match target.get(MANIFEST)? {
            Some(bytes) => Some(Manifest::decode(&bytes, target.url())?),
            None => None,
        };
        let mark = read_replica_mark(store)?;
        let manifest = match (mark, existing) {
            (Some(mark), Some(manifest)) if mark.store_id != manifest.store_id => {
                return Err(Error::config(format!(
                    "{} holds the history of another store (id {}; this one is {}): ship each \
                     store to its own prefix",
                    target.url(),
                    manifest.store_id,
                    mark.store_id
                )));
            }
            (Some(_), Some(manifest)) => manifest,
            (None, Some(manifest)) => {
                return Err(Error::config(format!(
                    "{} holds the history of store {} and {} was never shipped: ship each store \
                     to its own prefix (or restore from that one)",
                    target.url(),
                    manifest.store_id,
                    store.display()
                )));
            }
            (mark, None) => {
                // Objects and no manifest: a first round killed before its first manifest
                // (this store's mark says nothing was confirmed yet: they are its leftovers),
                // or a manifest lost after the fact, or another store's.
                if mark.as_ref().is_none_or(|m| m.shipped_through > 0) {
                    refuse_objects_without_manifest(&target)?;
                }
                let store_id = match mark {
                    Some(mark) => {
                        if mark.shipped_through > 0 {
                            tracing::warn!(
                                target = target.url(),
                                shipped_through = mark.shipped_through,
                                "the target has no manifest though this store shipped to one; \
                                 shipping from the oldest frame still on disk"
                            );
                        }
                        mark.store_id
                    }
                    None => new_store_id(store),
                };
                // Hold every segment from now on, before anything is uploaded.
                write_replica_mark(
                    store,
                    &ReplicaMark {
                        store_id: store_id.clone(),
                        shipped_through: 0,
                    },
                )?;
                Manifest::new(&store_id)
            }
        };
        let mut shipper = Shipper {
            store: store.to_owned(),
            reader,
            target,
            manifest,
            snapshots: BTreeMap::new(),
            seal_times: BTreeMap::new(),
            options,
            progress: Arc::new(Progress::default()),
            unsure: false,
            _lock: lock,
        };
        shipper.tidy()?;
        shipper.report_progress();
        Ok(shipper)
    }

    /// The progress it reports as it goes.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// The last frame known to be in the target.
    pub fn durable_frame_no(&self) -> u64 {
        self.manifest.durable_frame_no
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Learns what the target holds and removes objects past the manifest (a shipper killed
    /// between an upload and the manifest left them; they are shipped again).
    fn tidy(&mut self) -> Result<()> {
        let durable = self.manifest.durable_frame_no;
        for listed in self.target.list(SEGMENTS)? {
            match SegmentKey::parse(&listed.name) {
                Some(key) if key.last <= durable => {
                    self.seal_times.insert(key.last, key.time_last_ms);
                }
                Some(_) => self.target.delete(&listed.name)?,
                None => {}
            }
        }
        for listed in self.target.list(SNAPSHOTS)? {
            match SnapshotKey::parse(&listed.name) {
                Some(key) if key.through <= durable => {
                    self.snapshots.insert(key.through, key);
                }
                Some(_) => self.target.delete(&listed.name)?,
                None => {}
            }
        }
        // Only seals still need their times: a newer base ends at one.
        let newest = self.snapshots.keys().next_back().copied().unwrap_or(0);
        self.seal_times.retain(|&last, _| last > newest);
        Ok(())
    }

    /// Ships everything written so far that the target lacks. After a failed round the next
    /// one first reads the manifest again and removes what the failed one left past it (an
    /// upload whose reply was lost may have landed), as a restarted shipper does.
    pub fn ship(&mut self) -> Result<ShipReport> {
        if self.unsure {
            self.reload()?;
        }
        let outcome = self.ship_round();
        self.unsure = outcome.is_err();
        outcome
    }

    fn reload(&mut self) -> Result<()> {
        let manifest = match self.target.get(MANIFEST)? {
            Some(bytes) => Manifest::decode(&bytes, self.target.url())?,
            None => {
                let confirmed = read_replica_mark(&self.store)?.map_or(0, |m| m.shipped_through);
                if self.manifest.durable_frame_no > 0 || confirmed > 0 {
                    refuse_objects_without_manifest(&self.target)?;
                }
                Manifest::new(&self.manifest.store_id)
            }
        };
        if manifest.store_id != self.manifest.store_id {
            return Err(Error::config(format!(
                "{} now holds the history of another store (id {}): ship each store to its \
                 own prefix",
                self.target.url(),
                manifest.store_id
            )));
        }
        self.manifest = manifest;
        self.snapshots.clear();
        self.seal_times.clear();
        self.tidy()?;
        self.unsure = false;
        Ok(())
    }

    fn ship_round(&mut self) -> Result<ShipReport> {
        let mut report = ShipReport::default();
        loop {
            let from = self.manifest.durable_frame_no + 1;
            let next = self.reader.read(
                from,
                self.manifest.durable_time_ms,
                self.options.chunk_bytes,
            )?;
            match next {
                Next::UpToDate => break,
                Next::Chunk(chunk) => {
                    let key = SegmentKey {
                        first: chunk.first,
                        last: chunk.last,
                        time_first_ms: chunk.time_first_ms,
                        time_last_ms: chunk.time_last_ms,
                        digest: digest(&chunk.bytes),
                    };
                    // A chunk short of the limit that does not end its segment reached the
                    // end of the log as it was: the round is done. (Under a steady load new
                    // frames are always there; chasing them would upload an object every few
                    // milliseconds instead of one per `max_lag`.)
                    let at_end =
                        !chunk.ends_segment && chunk.bytes.len() < self.options.chunk_bytes;
                    report.bytes += chunk.bytes.len() as u64;
                    self.target.put(&key.name(), chunk.bytes)?;
                    report.segments += 1;
                    if chunk.ends_segment {
                        self.seal_times.insert(chunk.last, chunk.time_last_ms);
                    }
                    self.advance(chunk.last, chunk.time_last_ms)?;
                    if at_end {
                        break;
                    }
                }
                Next::Compacted { base } => {
                    // The frames before it are gone (the store was not held for a shipper
                    // when they were compacted): history restarts at this base.
                    tracing::warn!(
                        store = %self.store.display(),
                        from,
                        base,
                        "frames were compacted before they were shipped; shipping the base \
                         instead (points before frame {base} are not restorable)"
                    );
                    // The frames before the base and their times are gone: name the snapshot
                    // by now, a time no frame of it is later than, so a restore to an earlier
                    // moment is refused rather than given this later state.
                    // The frames after it run on from that time too: no point before the
                    // shipper caught up with the store is placed in time.
                    let time = now_ms().max(self.manifest.durable_time_ms);
                    if !self.ship_snapshot(Some(base), time, &mut report)? {
                        continue; // A newer base replaced it meanwhile: look again.
                    }
                    self.advance(base, time)?;
                }
            }
        }
        // The newest base, once the frames it covers are shipped, as a snapshot.
        let newest = self.snapshots.keys().next_back().copied().unwrap_or(0);
        if let Some(base) = self.reader.current_base()?
            && base.through() > newest
            && base.through() <= self.manifest.durable_frame_no
        {
            let time = self
                .seal_times
                .get(&base.through())
                .copied()
                .unwrap_or(self.manifest.durable_time_ms);
            self.ship_snapshot(Some(base.through()), time, &mut report)?;
            let newest = base.through();
            self.seal_times.retain(|&last, _| last > newest);
        }
        if let Some(retain) = self.options.retain {
            report.deleted += self.prune(retain, now_ms())?;
        }
        report.durable_frame_no = self.manifest.durable_frame_no;
        self.report_progress();
        Ok(report)
    }

    /// Uploads the base `CURRENT` names if it ends at `through` (any when `None`); false when
    /// the store has moved on to another base.
    fn ship_snapshot(
        &mut self,
        through: Option<u64>,
        time_ms: i64,
        report: &mut ShipReport,
    ) -> Result<bool> {
        let Some(base) = self.reader.current_base()? else {
            return Ok(false);
        };
        if through.is_some_and(|t| t != base.through()) {
            return Ok(false);
        }
        let len = base.len()?;
        // Two passes: the name carries the hash, and the base may be too large to hold.
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; (8 << 20).min(len as usize)];
        let mut at = 0u64;
        while at < len {
            let n = buf.len().min((len - at) as usize);
            base.read_at(&mut buf[..n], at)?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        let key = SnapshotKey {
            through: base.through(),
            time_ms,
            digest: hasher.finalize().to_hex()[..32].to_owned(),
        };
        self.target
            .put_with(&key.name(), len, |buf, at| base.read_at(buf, at))?;
        report.bytes += len;
        report.snapshots += 1;
        self.snapshots.insert(key.through, key);
        Ok(true)
    }

    /// Records that every frame through `last` is in the target: the manifest first, then the
    /// store's mark (which lets the store drop the segments).
    fn advance(&mut self, last: u64, time_ms: i64) -> Result<()> {
        self.manifest.durable_frame_no = last;
        self.manifest.durable_time_ms = time_ms;
        self.manifest.updated_ms = now_ms();
        self.target.put(MANIFEST, self.manifest.encode())?;
        write_replica_mark(
            &self.store,
            &ReplicaMark {
                store_id: self.manifest.store_id.clone(),
                shipped_through: last,
            },
        )?;
        self.report_progress();
        Ok(())
    }

    fn report_progress(&self) {
        self.progress
            .durable_frame_no
            .store(self.manifest.durable_frame_no, Ordering::Relaxed);
        self.progress
            .checked_ms
            .store(now_ms().max(0) as u64, Ordering::Relaxed);
    }

    /// Deletes what no point of the last `retain` needs: everything before the newest
    /// snapshot made at or before the window's start. When no snapshot is that old yet, the
    /// store is compacted so that one will be (a store that never grows past its compaction
    /// threshold would otherwise keep its whole history). Returns how many objects went.
    fn prune(&mut self, retain: Duration, now_ms: i64) -> Result<u64> {
        let cutoff = now_ms.saturating_sub(retain.as_millis() as i64);
        let keep_from = self
            .snapshots
            .values()
            .filter(|s| s.time_ms <= cutoff)
            .map(|s| s.through)
            .max();
        // A snapshot at least every half window keeps the history at most 1.5 windows long.
        let newest_time = self.snapshots.values().map(|s| s.time_ms).max();
        let half = now_ms.saturating_sub(retain.as_millis() as i64 / 2);
        if newest_time.is_none_or(|t| t < half)
            && self.oldest_segment_time()?.is_some_and(|t| t < cutoff)
        {
            self.compact_store()?;
        }
        let Some(keep_from) = keep_from else {
            return Ok(0);
        };
        let mut deleted = 0;
        for listed in self.target.list(SEGMENTS)? {
            if SegmentKey::parse(&listed.name).is_some_and(|k| k.last <= keep_from) {
                self.target.delete(&listed.name)?;
                deleted += 1;
            }
        }
        let old: Vec<u64> = self.snapshots.range(..keep_from).map(|(&t, _)| t).collect();
        for through in old {
            if let Some(key) = self.snapshots.remove(&through) {
                self.target.delete(&key.name())?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    fn oldest_segment_time(&self) -> Result<Option<i64>> {
        Ok(self
            .target
            .list(SEGMENTS)?
            .iter()
            .filter_map(|l| SegmentKey::parse(&l.name))
            .map(|k| k.time_first_ms)
            .min())
    }

    fn compact_store(&self) -> Result<()> {
        let store = silo::fs::FsStorage::open(
            &self.store,
            silo::StoreOptions::default(),
            silo::fs::FsTuning::default(),
        )?;
        store.compact()
    }
}

/// A target with segments or snapshots but no manifest lost it (deleted by hand, a bucket
/// rule): shipping from scratch would remove the history it still has. Refuse, and say how
/// to go on.
fn refuse_objects_without_manifest(target: &Target) -> Result<()> {
    let objects = target.list(SEGMENTS)?.len() + target.list(SNAPSHOTS)?.len();
    if objects == 0 {
        return Ok(());
    }
    Err(Error::Corrupt {
        path: format!("{}/{MANIFEST}", target.url().trim_end_matches('/')),
        detail: format!(
            "missing, though the target holds {objects} segment and snapshot objects: restore \
             what is there (silo restore --from …), or ship to a new prefix"
        ),
    })
}

/// A new store identity: hashed from the store's path, this process and the time (unique
/// enough to tell two stores apart, which is all it is for).
fn new_store_id(store: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(store.as_os_str().as_encoded_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.update(&nanos.to_le_bytes());
    hasher.finalize().to_hex()[..16].to_owned()
}

/// Now, in ms since the epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Ships rounds every `max_lag` until `stop` is set: a failed round is retried with backoff
/// (from 100 ms, doubling to 30 s) and logged; nothing is dropped, since every round ships
/// from the manifest on. Returns after the round that follows `stop` (a last shipment).
pub fn run(shipper: &mut Shipper, max_lag: Duration, stop: &AtomicBool) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let started = Instant::now();
        let progress = shipper.progress();
        let pause = match shipper.ship() {
            Ok(report) => {
                progress.failures.store(0, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
                if report.segments + report.snapshots + report.deleted > 0 {
                    tracing::debug!(
                        segments = report.segments,
                        snapshots = report.snapshots,
                        bytes = report.bytes,
                        deleted = report.deleted,
                        durable_frame_no = report.durable_frame_no,
                        "shipped"
                    );
                }
                // A frame written just after this round read the log is shipped at the end of
                // the next one: leave room for both rounds inside `max_lag`.
                max_lag.saturating_sub(started.elapsed() * 2)
            }
            Err(e) => {
                let failures = progress.failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    error = %e,
                    failures,
                    retry_in_ms = backoff.as_millis() as u64,
                    "shipping to {} failed; retrying (the store keeps what is not shipped)",
                    shipper.target().url()
                );
                let pause = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                pause
            }
        };
        if stopping {
            if shipper.unsure && progress.failures.load(Ordering::Relaxed) < 5 {
                // The last round failed: what was written before the stop is not all shipped.
                std::thread::sleep(pause);
                continue;
            }
            return;
        }
        // Sleep in small steps so a stop is seen promptly.
        let until = Instant::now() + pause;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
    }
}
