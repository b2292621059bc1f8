//! The shipper against a target that fails: every mutating call in turn (a segment, the
//! manifest, a snapshot, a deletion) fails once, either before the object store sees it (a
//! lost request) or after it did the work (a lost reply). The shipper retries in process or
//! is restarted; either way, in the end the objects tile the history exactly once and a
//! restore matches the model.

mod common;

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use silo::Clock;
use silo_replicate::{Point, RestoreOptions, SegmentKey, ShipOptions, Shipper, Target};

use common::{dump, open_plain, open_store, render, run};

/// A store whose `fail_at`-th mutating call fails; `after`: it does the work first.
#[derive(Debug)]
struct Faulty {
    inner: LocalFileSystem,
    calls: AtomicU64,
    fail_at: u64,
    after: bool,
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

impl Faulty {
    /// Whether this mutating call is the one that fails.
    fn strikes(&self) -> bool {
        self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at
    }
}

fn injected() -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: "injected failure".into(),
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if !self.strikes() {
            return self.inner.put_opts(location, payload, opts).await;
        }
        if self.after {
            self.inner.put_opts(location, payload, opts).await?;
        }
        Err(injected())
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        if self.strikes() && !self.after {
            return Err(injected());
        }
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        if self.strikes() {
            if self.after {
                return self
                    .inner
                    .delete_stream(locations)
                    .map(|_| Err(injected()))
                    .boxed();
            }
            return locations.map(|_| Err(injected())).boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn faulty_target(dir: &Path, fail_at: u64, after: bool) -> Target {
    std::fs::create_dir_all(dir).unwrap();
    let store = Faulty {
        inner: LocalFileSystem::new_with_prefix(dir).unwrap(),
        calls: AtomicU64::new(0),
        fail_at,
        after,
    };
    Target::from_store("faulty", Arc::new(store)).unwrap()
}

fn plain_target(dir: &Path) -> Target {
    Target::open(&format!("file://{}", dir.display())).unwrap()
}

/// The segment objects' ranges in order.
fn ranges(rep: &Path) -> Vec<(u64, u64)> {
    let target = plain_target(rep);
    let mut out: Vec<(u64, u64)> = target
        .list("segments")
        .unwrap()
        .iter()
        .filter_map(|l| SegmentKey::parse(&l.name))
        .map(|k| (k.first, k.last))
        .collect();
    out.sort();
    out
}

#[test]
fn a_failure_at_every_call_of_a_round_loses_and_doubles_nothing() {
    let mut struck = 0;
    for fail_at in 1..=24u64 {
        for after in [false, true] {
            let root = tempfile::tempdir().unwrap();
            let clock = Clock::manual(1_790_000_000_000);
            let store_dir = root.path().join("store");
            let rep = root.path().join("rep");
            let store = open_store(&store_dir, &clock);
            let mut shipper = Some(
                Shipper::open(
                    &store_dir,
                    faulty_target(&rep, fail_at, after),
                    ShipOptions {
                        chunk_bytes: 8 << 10,
                        retain: None,
                    },
                )
                .unwrap(),
            );
            let mut failed = false;
            let restart = fail_at % 2 == 0;
            let history = run(&store, &clock, fail_at * 31 + u64::from(after), 240, |i| {
                if i % 40 != 39 {
                    return;
                }
                if shipper.as_mut().unwrap().ship().is_err() {
                    failed = true;
                    if restart {
                        // A new process picks up from the target (once the old one is gone:
                        // one shipper per store).
                        shipper = None;
                        shipper = Some(
                            Shipper::open(&store_dir, plain_target(&rep), ShipOptions::default())
                                .unwrap(),
                        );
                    }
                }
            });
            shipper.as_mut().unwrap().ship().unwrap();
            struck += u64::from(failed);
            let tiles = ranges(&rep);
            let mut next = 1;
            for (first, last) in &tiles {
                assert_eq!(
                    *first, next,
                    "fail_at {fail_at} after {after}: objects tile the history: {tiles:?}"
                );
                next = last + 1;
            }
            let dest = root.path().join("restored");
            let options = RestoreOptions {
                point: Point::Latest,
                stop_before_damage: false,
            };
            silo_replicate::restore(&plain_target(&rep), &dest, &options, &mut |_, _| {}).unwrap();
            assert_eq!(
                dump(&open_plain(&dest)),
                render(&history.last().unwrap().1),
                "fail_at {fail_at} after {after}"
            );
        }
    }
    assert!(
        struck >= 40,
        "the faults struck inside rounds ({struck} of 48)"
    );
}
