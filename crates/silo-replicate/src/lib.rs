//! Segment shipping and point-in-time restore for silo's `fs:` stores (SPEC §5,
//! "Replication"): the store's log of frames goes, in order and checksummed, to any object
//! store (`file://`, `s3://`, `gs://`, `az://`), and a new store can be rebuilt from it as of
//! the latest shipped frame, a frame number, or a moment in time.
//!
//! ```no_run
//! # fn main() -> silo::Result<()> {
//! use silo_replicate::{Point, RestoreOptions, ShipOptions, Shipper, Target};
//!
//! let store = std::path::Path::new("/var/lib/silo/fs");
//! let mut shipper = Shipper::open(store, Target::open("s3://backups/silo")?, ShipOptions::default())?;
//! shipper.ship()?; // everything written so far
//!
//! let target = Target::open("s3://backups/silo")?;
//! let options = RestoreOptions { point: Point::Latest, stop_before_damage: false };
//! silo_replicate::restore(&target, "/var/lib/silo/restored".as_ref(), &options, &mut |_, _| {})?;
//! # Ok(())
//! # }
//! ```

mod layout;
mod restore;
mod ship;
mod target;

pub use layout::{MANIFEST, Manifest, SegmentKey, SnapshotKey};
pub use restore::{Point, Restorable, RestoreOptions, RestoreReport, list, restore};
pub use ship::{CHUNK_BYTES, Progress, ShipOptions, ShipReport, Shipper, run};
pub use target::{Listed, Target};
