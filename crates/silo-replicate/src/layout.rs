//! What a replica looks like in object storage: the names of its objects and its manifest.
//!
//! ```text
//! manifest.json                                   format, store id, durable_frame_no and its time
//! segments/<first>-<last>-<t_first>-<t_last>-<h>.slf   frames first..=last, as on disk
//! snapshots/<through>-<t>-<h>.slf                 a compacted base: the state through a frame
//! ```
//!
//! Numbers are zero-padded to 20 digits, so names sort in frame order; times are ms since the
//! epoch (the running maximum of the frames' times); `h` is the first 128 bits of the object's
//! BLAKE3 hash, in hex. An object is written once under its final name and never changed:
//! shipping the same frames again writes the same bytes under the same name. The manifest is
//! rewritten after every object it vouches for, and only frames up to its `durable_frame_no`
//! count: a segment past it is what a shipper killed mid-upload left, and is removed.

use serde::{Deserialize, Serialize};
use silo::{Error, Result};

/// The manifest's object name.
pub const MANIFEST: &str = "manifest.json";
/// Where segment objects live.
pub const SEGMENTS: &str = "segments";
/// Where snapshot objects live.
pub const SNAPSHOTS: &str = "snapshots";
const FORMAT: &str = "silo-replica 1";

/// The replica's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The store this history belongs to (its `REPLICA` mark's id).
    pub store_id: String,
    /// Every frame up to this one is in the target.
    pub durable_frame_no: u64,
    /// The time of that frame (ms since the epoch).
    pub durable_time_ms: i64,
    /// When the manifest was written (ms since the epoch).
    pub updated_ms: i64,
}

impl Manifest {
    /// A manifest of nothing shipped yet.
    pub fn new(store_id: &str) -> Self {
        Manifest {
            format: FORMAT.to_owned(),
            store_id: store_id.to_owned(),
            durable_frame_no: 0,
            durable_time_ms: 0,
            updated_ms: 0,
        }
    }

    /// Reads one, refusing other formats.
    pub fn decode(bytes: &[u8], url: &str) -> Result<Self> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            path: format!("{url}/{MANIFEST}"),
            detail: format!("not a silo replica manifest: {e}"),
        })?;
        if manifest.format != FORMAT {
            return Err(Error::Unsupported {
                op: format!("reading a replica of format {:?}", manifest.format),
                backend: format!("this silo {} (it reads {FORMAT:?})", silo::VERSION),
            });
        }
        Ok(manifest)
    }

    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and integers always serialises.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// The first 128 bits of BLAKE3, hex.
pub fn digest(bytes: &[u8]) -> String {
    let hash = blake3::hash(bytes);
    hash.to_hex()[..32].to_owned()
}

/// A shipped run of frames, as its name describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentKey {
    pub first: u64,
    pub last: u64,
    pub time_first_ms: i64,
    pub time_last_ms: i64,
    pub digest: String,
}

impl SegmentKey {
    /// Its object name.
    pub fn name(&self) -> String {
        format!(
            "{SEGMENTS}/{:020}-{:020}-{:020}-{:020}-{}.slf",
            self.first,
            self.last,
            self.time_first_ms.max(0),
            self.time_last_ms.max(0),
            self.digest
        )
    }

    /// The key an object name describes (`None`: not a segment's name).
    pub fn parse(name: &str) -> Option<Self> {
        let stem = name
            .strip_prefix(SEGMENTS)?
            .strip_prefix('/')?
            .strip_suffix(".slf")?;
        let mut parts = stem.split('-');
        let first = parts.next()?.parse().ok()?;
        let last = parts.next()?.parse().ok()?;
        let time_first_ms = parts.next()?.parse().ok()?;
        let time_last_ms = parts.next()?.parse().ok()?;
        let digest = parts.next()?.to_owned();
        if parts.next().is_some() || digest.len() != 32 || first == 0 || last < first {
            return None;
        }
        Some(SegmentKey {
            first,
            last,
            time_first_ms,
            time_last_ms,
            digest,
        })
    }
}

/// A shipped base, as its name describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotKey {
    /// It holds the state through this frame.
    pub through: u64,
    /// That frame's time (ms since the epoch).
    pub time_ms: i64,
    pub digest: String,
}

impl SnapshotKey {
    /// Its object name.
    pub fn name(&self) -> String {
        format!(
            "{SNAPSHOTS}/{:020}-{:020}-{}.slf",
            self.through,
            self.time_ms.max(0),
            self.digest
        )
    }

    /// The key an object name describes (`None`: not a snapshot's name).
    pub fn parse(name: &str) -> Option<Self> {
        let stem = name
            .strip_prefix(SNAPSHOTS)?
            .strip_prefix('/')?
            .strip_suffix(".slf")?;
        let mut parts = stem.split('-');
        let through = parts.next()?.parse().ok()?;
        let time_ms = parts.next()?.parse().ok()?;
        let digest = parts.next()?.to_owned();
        if parts.next().is_some() || digest.len() != 32 || through == 0 {
            return None;
        }
        Some(SnapshotKey {
            through,
            time_ms,
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_in_frame_order() {
        let a = SegmentKey {
            first: 9,
            last: 12,
            time_first_ms: 1_700_000_000_000,
            time_last_ms: 1_700_000_000_500,
            digest: digest(b"x"),
        };
        let b = SegmentKey {
            first: 13,
            ..a.clone()
        };
        assert_eq!(SegmentKey::parse(&a.name()), Some(a.clone()));
        assert!(a.name() < b.name());
        let s = SnapshotKey {
            through: 12,
            time_ms: 5,
            digest: digest(b"y"),
        };
        assert_eq!(SnapshotKey::parse(&s.name()), Some(s));
        assert_eq!(SegmentKey::parse("segments/1-2-3-4.slf"), None);
        assert_eq!(SegmentKey::parse("segments/00000000000000000001-x"), None);
    }
}
