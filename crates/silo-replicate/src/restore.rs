//! Restore: a new `fs:` store holding exactly the operations up to a chosen point of a
//! replica's history — the latest shipped frame, a frame number, or a moment in time (every
//! frame at or before it) — never a torn operation, since a frame is one whole operation.
//!
//! The newest snapshot at or before the point is the start (so a restore does not replay
//! months of log), then the segment objects after it in frame order, each checked against
//! the hash its name carries and frame by frame (checksum, number), and written where the
//! original had the frames. The result is opened as a store before the restore reports
//! success. A damaged object fails the restore with its name — or, when asked, ends the
//! restore at the last whole object before it.

use std::path::{Path, PathBuf};

use silo::fs::history::{RestoreWriter, decode_chunk};
use silo::{Error, Result};

use crate::layout::{MANIFEST, Manifest, SEGMENTS, SNAPSHOTS, SegmentKey, SnapshotKey, digest};
use crate::target::Target;

/// Which point of the history to restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// The last shipped frame.
    Latest,
    /// The state after this frame.
    Frame(u64),
    /// Every frame whose time is at or before this moment (ms since the epoch).
    At(i64),
}

/// How to restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreOptions {
    pub point: Point,
    /// A damaged object ends the restore at the frame before it instead of failing it.
    pub stop_before_damage: bool,
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreReport {
    /// The store it made.
    pub path: PathBuf,
    /// The last frame in it.
    pub frame: u64,
    /// That frame's time (ms since the epoch).
    pub time_ms: i64,
    /// The snapshot it started from (the frame it ends at), if any.
    pub snapshot: Option<u64>,
    /// Segment objects applied.
    pub segments: u64,
    /// Bytes read from the target.
    pub bytes: u64,
    /// The damaged object the restore stopped before, when it was asked to.
    pub stopped_before: Option<String>,
}

/// What a replica can restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restorable {
    /// The store the history belongs to.
    pub store_id: String,
    /// The earliest restorable frame and its time (`None`: nothing shipped yet).
    pub earliest: Option<(u64, i64)>,
    /// The last shipped frame and its time.
    pub latest: (u64, i64),
    /// Snapshots, oldest first.
    pub snapshots: Vec<SnapshotKey>,
    /// Segment objects in the history.
    pub segments: u64,
    /// Bytes of every object the history uses.
    pub bytes: u64,
    /// Frame ranges the history lacks (points in them cannot be restored).
    pub gaps: Vec<(u64, u64)>,
}

/// The objects of a replica that its manifest vouches for.
struct Catalog {
    manifest: Manifest,
    segments: Vec<(SegmentKey, u64)>,
    snapshots: Vec<(SnapshotKey, u64)>,
}

impl Catalog {
    fn read(target: &Target) -> Result<Self> {
        let manifest = match target.get(MANIFEST)? {
            Some(bytes) => Manifest::decode(&bytes, target.url())?,
            None => {
                return Err(Error::config(format!(
                    "{} holds no silo replica (no {MANIFEST}); check the URL",
                    target.url()
                )));
            }
        };
        let durable = manifest.durable_frame_no;
        let mut segments: Vec<(SegmentKey, u64)> = target
            .list(SEGMENTS)?
            .into_iter()
            .filter_map(|l| SegmentKey::parse(&l.name).map(|k| (k, l.size)))
            .filter(|(k, _)| k.last <= durable)
            .collect();
        segments.sort_by_key(|(k, _)| (k.first, k.last));
        let mut snapshots: Vec<(SnapshotKey, u64)> = target
            .list(SNAPSHOTS)?
            .into_iter()
            .filter_map(|l| SnapshotKey::parse(&l.name).map(|k| (k, l.size)))
            .filter(|(k, _)| k.through <= durable)
            .collect();
        snapshots.sort_by_key(|(k, _)| k.through);
        Ok(Catalog {
            manifest,
            segments,
            snapshots,
        })
    }

    /// The segments that hold frames `from..=to`, in order, each with the first frame taken
    /// from it: objects may overlap (a shipper that failed mid-round may have shipped the
    /// same frames twice, under two names), so each step takes the object reaching furthest
    /// among those holding the next frame. An error names a gap.
    fn chain(&self, from: u64, to: u64) -> Result<Vec<(&SegmentKey, u64, u64)>> {
        let mut chain = Vec::new();
        let mut next = from;
        let mut i = 0;
        while next <= to {
            let mut best: Option<&(SegmentKey, u64)> = None;
            while let Some(entry) = self.segments.get(i).filter(|(k, _)| k.first <= next) {
                if entry.0.last >= next && best.is_none_or(|b| entry.0.last > b.0.last) {
                    best = Some(entry);
                }
                i += 1;
            }
            let Some((key, size)) = best else {
                let resumes = self.segments.get(i).map_or(to, |(k, _)| k.first - 1);
                return Err(self.gap(next, resumes.min(to)));
            };
            chain.push((key, *size, next));
            // Every object looked at so far ends before the new `next` (this one reached
            // furthest); the ones starting inside this one are still ahead of `i`.
            next = key.last + 1;
        }
        Ok(chain)
    }

    fn gap(&self, from: u64, to: u64) -> Error {
        Error::Corrupt {
            path: SEGMENTS.to_owned(),
            detail: format!(
                "the replica lacks frames {from}..={to} (a segment object was deleted or never \
                 shipped); points before frame {from} and from {to} on may still be restorable: \
                 see `silo restore --list`"
            ),
        }
    }

    /// The history's runs: each starts at a snapshot or frame 1 and goes on through
    /// contiguous segments. Returns (start frame, start time, end frame, end time) of each.
    fn runs(&self) -> Vec<(u64, i64, u64, i64)> {
        let mut runs: Vec<(u64, i64, u64, i64)> = Vec::new();
        let mut starts: Vec<(u64, i64)> = self
            .snapshots
            .iter()
            .map(|(k, _)| (k.through, k.time_ms))
            .collect();
        if let Some((first, _)) = self.segments.first().filter(|(k, _)| k.first == 1) {
            starts.push((0, first.time_first_ms));
        }
        starts.sort();
        for (start, time) in starts {
            if runs.iter().any(|r| start >= r.0 && start <= r.2) {
                continue;
            }
            let mut end = (start, time);
            for (key, _) in &self.segments {
                if key.first == end.0 + 1 {
                    end = (key.last, key.time_last_ms);
                }
            }
            runs.push((start, time, end.0, end.1));
        }
        runs
    }
}

/// What the replica at `target` can restore.
pub fn list(target: &Target) -> Result<Restorable> {
    let catalog = Catalog::read(target)?;
    let runs = catalog.runs();
    let earliest = runs
        .first()
        .map(|&(start, time, _, _)| (start.max(1), time));
    let mut gaps = Vec::new();
    for pair in runs.windows(2) {
        if pair[1].0 > pair[0].2 + 1 {
            gaps.push((pair[0].2 + 1, pair[1].0));
        }
    }
    let bytes = catalog.segments.iter().map(|(_, s)| s).sum::<u64>()
        + catalog.snapshots.iter().map(|(_, s)| s).sum::<u64>();
    Ok(Restorable {
        store_id: catalog.manifest.store_id.clone(),
        earliest,
        latest: (
            catalog.manifest.durable_frame_no,
            catalog.manifest.durable_time_ms,
        ),
        snapshots: catalog.snapshots.iter().map(|(k, _)| k.clone()).collect(),
        segments: catalog.segments.len() as u64,
        bytes,
        gaps,
    })
}

/// Restores the replica at `target` into `dest` (missing or empty) as of `options.point`.
/// `progress(done, total)` is called as bytes arrive.
pub fn restore(
    target: &Target,
    dest: &Path,
    options: &RestoreOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RestoreReport> {
    // What a failure may clean up: only a directory this restore made, or found empty.
    let cleanup = match std::fs::read_dir(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Cleanup::Remove,
        Ok(mut entries) => match entries.next() {
            None => Cleanup::Empty,
            Some(_) => Cleanup::Nothing,
        },
        Err(_) => Cleanup::Nothing,
    };
    if cleanup == Cleanup::Nothing {
        return Err(Error::config(format!(
            "{} is not empty (or not readable): restore into a new or empty directory (a \
             restore never writes over a store)",
            dest.display()
        )));
    }
    let outcome = restore_into(target, dest, options, progress);
    if outcome.is_err() {
        // Leave nothing that looks like a store behind.
        let _ = match cleanup {
            Cleanup::Remove => std::fs::remove_dir_all(dest),
            Cleanup::Empty => empty_dir(dest),
            Cleanup::Nothing => Ok(()),
        };
    }
    outcome
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cleanup {
    Remove,
    Empty,
    Nothing,
}

fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(path)?;
        } else {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

fn restore_into(
    target: &Target,
    dest: &Path,
    options: &RestoreOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RestoreReport> {
    let catalog = Catalog::read(target)?;
    let durable = catalog.manifest.durable_frame_no;
    if durable == 0 {
        return Err(Error::config(format!(
            "{} holds no frames yet: nothing to restore",
            target.url()
        )));
    }
    let frame = match options.point {
        Point::Latest => durable,
        Point::Frame(n) if n == 0 || n > durable => {
            return Err(Error::invalid(format!(
                "frame {n} is not in the replica: it holds frames up to {durable}"
            )));
        }
        Point::Frame(n) => n,
        Point::At(t) => frame_at(target, &catalog, t, options.stop_before_damage)?,
    };
    let snapshot = catalog
        .snapshots
        .iter()
        .rev()
        .find(|(k, _)| k.through <= frame);
    let start = snapshot.map_or(1, |(k, _)| k.through + 1);
    let chain = catalog.chain(start, frame)?;
    let total = snapshot.map_or(0, |(_, s)| *s) + chain.iter().map(|(_, s, _)| s).sum::<u64>();
    let mut done = 0u64;
    progress(0, total);

    let mut writer = RestoreWriter::create(dest)?;
    let mut time_ms = 0;
    if let Some((key, _)) = snapshot {
        let name = key.name();
        let mut hasher = blake3::Hasher::new();
        target.get_streaming(&name, |piece| {
            hasher.update(piece);
            writer.write_base(key.through, piece)?;
            done += piece.len() as u64;
            progress(done, total);
            Ok(())
        })?;
        if hasher.finalize().to_hex()[..32] != key.digest {
            return Err(damaged(
                target,
                &name,
                "its bytes do not match the hash in its name",
            ));
        }
        time_ms = key.time_ms;
    }
    let mut report = RestoreReport {
        path: dest.to_owned(),
        frame: start - 1,
        time_ms,
        snapshot: snapshot.map(|(k, _)| k.through),
        segments: 0,
        bytes: done,
        stopped_before: None,
    };
    for (key, _, from) in chain {
        let name = key.name();
        let checked = fetch_checked(target, key)?;
        let (bytes, facts) = match checked {
            Ok(found) => found,
            Err(e) if options.stop_before_damage && report.frame >= 1 => {
                report.stopped_before = Some(format!("{}/{name}: {e}", target.url()));
                break;
            }
            Err(e) => return Err(e),
        };
        // Frames before `from` came from an earlier object already.
        let skip = facts.iter().take_while(|f| f.number < from).count();
        let skip_bytes = skip.checked_sub(1).map_or(0, |i| facts[i].end);
        let keep = facts.iter().take_while(|f| f.number <= frame).count();
        let Some(last) = keep.checked_sub(1).map(|i| facts[i]) else {
            break;
        };
        writer.write_frames(&bytes[skip_bytes..last.end])?;
        report.frame = last.number;
        report.time_ms = if last.number == key.last {
            key.time_last_ms
        } else {
            running_time(time_ms, &facts[skip..keep])
        };
        time_ms = key.time_last_ms;
        report.segments += 1;
        done += bytes.len() as u64;
        report.bytes = done;
        progress(done, total);
        if last.number == frame {
            break;
        }
    }
    if report.frame == 0 {
        return Err(Error::Corrupt {
            path: target.url().to_owned(),
            detail: "the first object of the history is damaged: nothing could be restored".into(),
        });
    }
    let (path, last) = writer.finish()?;
    // The proof: the result opens as a store (base whole, chain followed, every frame folded).
    drop(silo::fs::FsStorage::open(
        &path,
        silo::StoreOptions::default(),
        silo::fs::FsTuning::default(),
    )?);
    report.frame = last;
    Ok(report)
}

/// The running time at the last of `facts`, from `before`.
fn running_time(before: i64, facts: &[silo::fs::history::FrameFacts]) -> i64 {
    facts
        .iter()
        .filter_map(|f| f.time_ms)
        .fold(before, i64::max)
}

/// The last frame whose time is at or before `at`.
fn frame_at(target: &Target, catalog: &Catalog, at: i64, stop_before_damage: bool) -> Result<u64> {
    let manifest = &catalog.manifest;
    if manifest.durable_time_ms <= at {
        return Ok(manifest.durable_frame_no);
    }
    let runs = catalog.runs();
    let too_early = || {
        let earliest = runs
            .first()
            .map(|r| format!("frame {} at {} ms", r.0.max(1), r.1))
            .unwrap_or_else(|| "none".into());
        Error::invalid(format!(
            "nothing in the replica is at or before {at} ms (the earliest restorable point is \
             {earliest})"
        ))
    };
    // The first segment whose frames reach past the moment decides it.
    let mut before = (0u64, i64::MIN);
    for (key, _) in &catalog.segments {
        if key.time_last_ms <= at {
            before = (key.last, key.time_last_ms);
            continue;
        }
        if key.time_first_ms > at {
            break;
        }
        let facts = match fetch_checked(target, key)? {
            Ok((_, facts)) => facts,
            // The restore will stop before this object anyway: the moment lies in it.
            Err(_) if stop_before_damage && key.first > 1 => {
                before = (key.first - 1, before.1);
                break;
            }
            Err(e) => return Err(e),
        };
        let mut time = before.1.max(0);
        let mut found = key.first - 1;
        for fact in &facts {
            time = time.max(fact.time_ms.unwrap_or(i64::MIN));
            if time > at {
                break;
            }
            found = fact.number;
        }
        before = (found, time);
        break;
    }
    // A snapshot newer than the last segment frame at or before the moment still counts.
    let snapshot = catalog
        .snapshots
        .iter()
        .filter(|(k, _)| k.time_ms <= at)
        .map(|(k, _)| k.through)
        .max()
        .unwrap_or(0);
    let frame = before.0.max(snapshot);
    if frame == 0 {
        return Err(too_early());
    }
    Ok(frame)
}

/// A segment object's bytes and what its frames hold.
type Fetched = (Vec<u8>, Vec<silo::fs::history::FrameFacts>);

/// The bytes and frames of a segment object (the inner result), checked against the hash in
/// its name and frame by frame: the inner error is damage to the object, named; the outer one
/// a failure to reach the target.
fn fetch_checked(target: &Target, key: &SegmentKey) -> Result<Result<Fetched>> {
    let name = key.name();
    let Some(bytes) = target.get(&name)? else {
        return Ok(Err(damaged(target, &name, "listed but gone")));
    };
    if digest(&bytes) != key.digest {
        return Ok(Err(damaged(
            target,
            &name,
            "its bytes do not match the hash in its name",
        )));
    }
    Ok(decode_chunk(&bytes, key.first)
        .map(|facts| (bytes, facts))
        .map_err(|d| damaged(target, &name, &d)))
}

fn damaged(target: &Target, name: &str, detail: &str) -> Error {
    let hint = if name.starts_with(SEGMENTS) {
        "restore to a point before it (--frame), or pass --stop-before-damage to restore up to \
         just before this object"
    } else {
        "restore to a point before this snapshot's frame (--frame), from the segments before it"
    };
    Error::Corrupt {
        path: format!("{}/{name}", target.url().trim_end_matches('/')),
        detail: format!("{detail}; {hint}"),
    }
}
