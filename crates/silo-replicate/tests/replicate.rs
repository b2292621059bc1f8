//! Shipping and restore against a local-directory target, checked against a reference model
//! of the operations: the latest point, moments in the middle of a workload, frames, the
//! store holding unshipped segments through compaction, damaged objects, retention.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{STEP_MS, dump, open_plain, open_store, open_store_tuned, render, run, segment_files};
use silo::{Clock, Error, FunctionStorage};
use silo_replicate::{Point, RestoreOptions, ShipOptions, Shipper, Target, list, restore};

fn target(dir: &Path) -> Target {
    Target::open(&format!("file://{}", dir.display())).expect("open the target")
}

fn restore_to(
    rep: &Path,
    dest: &Path,
    point: Point,
) -> silo::Result<silo_replicate::RestoreReport> {
    let options = RestoreOptions {
        point,
        stop_before_damage: false,
    };
    restore(&target(rep), dest, &options, &mut |_, _| {})
}

/// A store in `root/store`, shipped to `root/rep` every `ship_every` operations from its
/// first write on; returns the model history.
fn shipped_workload(
    root: &Path,
    seed: u64,
    ops: usize,
    ship_every: usize,
    options: ShipOptions,
    clock: &Clock,
) -> Vec<(i64, common::Model, &'static str)> {
    let store_dir = root.join("store");
    let store = open_store(&store_dir, clock);
    let mut shipper =
        Shipper::open(&store_dir, target(&root.join("rep")), options).expect("start shipping");
    let history = run(&store, clock, seed, ops, |i| {
        if (i + 1) % ship_every == 0 {
            shipper.ship().expect("ship a round");
        }
    });
    shipper.ship().expect("ship the rest");
    history
}

#[test]
fn restore_latest_and_moments_mid_workload_match_the_model() {
    let root = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_790_000_000_000);
    let history = shipped_workload(root.path(), 7, 600, 37, ShipOptions::default(), &clock);
    let rep = root.path().join("rep");

    let listed = list(&target(&rep)).unwrap();
    assert_eq!(listed.earliest.map(|e| e.0), Some(1), "{listed:?}");
    assert!(listed.gaps.is_empty(), "{listed:?}");
    assert!(
        !listed.snapshots.is_empty(),
        "compaction ran and its bases were shipped"
    );

    // The latest point is the store as it is.
    let latest = root.path().join("latest");
    let report = restore_to(&rep, &latest, Point::Latest).unwrap();
    assert_eq!(report.frame, listed.latest.0);
    let want = render(&history.last().unwrap().1);
    assert_eq!(dump(&open_plain(&latest)), want);
    assert_eq!(dump(&open_store(&root.path().join("store"), &clock)), want);

    // A moment between two operations: everything at or before it, nothing after. Every
    // operation before a clear (a frame whose only time is its own stamp) and a spread of
    // others.
    let moments: Vec<usize> = (0..history.len() - 1)
        .filter(|&i| history[i + 1].2 == "clear" || i % 23 == 0 || i < 3)
        .collect();
    assert!(
        moments
            .iter()
            .filter(|&&i| history[i + 1].2 == "clear")
            .count()
            >= 5
    );
    for (n, i) in moments.into_iter().enumerate() {
        let (time, model, _) = &history[i];
        let dest = root.path().join(format!("at-{n}"));
        let report = restore_to(&rep, &dest, Point::At(time + STEP_MS / 2)).unwrap();
        assert_eq!(
            dump(&open_plain(&dest)),
            render(model),
            "restored at op {i}"
        );
        // The frame it ended at names the same point.
        let by_frame = root.path().join(format!("frame-{n}"));
        restore_to(&rep, &by_frame, Point::Frame(report.frame)).unwrap();
        assert_eq!(
            dump(&open_plain(&by_frame)),
            render(model),
            "frame {}",
            report.frame
        );
    }
    // Exactly at an operation's time includes it.
    let (time, model, _) = &history[300];
    let exact = root.path().join("exact");
    restore_to(&rep, &exact, Point::At(*time)).unwrap();
    assert_eq!(dump(&open_plain(&exact)), render(model));

    // Before the first operation nothing is restorable, and nothing is left behind.
    let early = root.path().join("early");
    let err = restore_to(&rep, &early, Point::At(history[0].0 - 1)).unwrap_err();
    assert!(err.to_string().contains("earliest"), "{err}");
    assert!(!early.exists());
    let err = restore_to(&rep, &early, Point::Frame(listed.latest.0 + 1)).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");

    // A restore never writes over anything, and a failed one never removes what it found.
    let listing = |dir: &Path| -> Vec<(String, u64)> {
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        out.sort();
        out
    };
    let before = listing(&latest);
    let err = restore_to(&rep, &latest, Point::Latest).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    let missing = root.path().join("no-such-replica");
    let err = restore_to(&missing, &latest, Point::Latest).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    let err = restore_to(&rep, &latest, Point::At(history[0].0 - 1)).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(listing(&latest), before, "the store it refused is intact");
    // An empty directory is used, and left empty when the restore fails.
    std::fs::create_dir(&early).unwrap();
    restore_to(&rep, &early, Point::At(history[0].0 - 1)).unwrap_err();
    assert_eq!(std::fs::read_dir(&early).unwrap().count(), 0);
    assert!(early.exists());
}

#[test]
fn the_store_holds_unshipped_segments_through_compaction() {
    let root = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_790_000_000_000);
    let store_dir = root.path().join("store");
    let rep = root.path().join("rep");
    let store = open_store(&store_dir, &clock);
    // Replication starts (the store is marked), then nothing ships for a long while.
    let mut shipper = Shipper::open(&store_dir, target(&rep), ShipOptions::default()).unwrap();
    let history = run(&store, &clock, 11, 500, |_| {});
    assert!(
        store_dir.join("CURRENT").exists(),
        "compaction ran while the shipper was away"
    );
    assert_eq!(
        segment_files(&store_dir).first().map(String::as_str),
        Some("seg-00000000000000000001.slf"),
        "the first segment is kept for the shipper"
    );
    shipper.ship().unwrap();
    let listed = list(&target(&rep)).unwrap();
    assert_eq!(
        listed.earliest.map(|e| e.0),
        Some(1),
        "the whole history shipped"
    );
    let dest = root.path().join("early");
    restore_to(&rep, &dest, Point::At(history[3].0)).unwrap();
    assert_eq!(dump(&open_plain(&dest)), render(&history[3].1));

    // Once shipped, the next compaction lets them go.
    store.compact().unwrap();
    assert_ne!(
        segment_files(&store_dir).first().map(String::as_str),
        Some("seg-00000000000000000001.slf")
    );
}

#[test]
fn a_store_shipped_late_starts_its_history_at_a_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_790_000_000_000);
    let store_dir = root.path().join("store");
    let rep = root.path().join("rep");
    let store = open_store(&store_dir, &clock);
    let history = run(&store, &clock, 13, 500, |_| {});
    assert!(
        segment_files(&store_dir).first().map(String::as_str)
            != Some("seg-00000000000000000001.slf"),
        "compaction removed the early segments"
    );
    let mut shipper = Shipper::open(&store_dir, target(&rep), ShipOptions::default()).unwrap();
    shipper.ship().unwrap();
    let listed = list(&target(&rep)).unwrap();
    let earliest = listed.earliest.unwrap().0;
    assert!(earliest > 1, "{listed:?}");
    assert_eq!(listed.snapshots.first().map(|s| s.through), Some(earliest));
    let latest = root.path().join("latest");
    restore_to(&rep, &latest, Point::Latest).unwrap();
    assert_eq!(
        dump(&open_plain(&latest)),
        render(&history.last().unwrap().1)
    );
    let err = restore_to(&rep, &root.path().join("x"), Point::Frame(earliest - 1)).unwrap_err();
    assert!(err.to_string().contains("lacks frames"), "{err}");
    // Every operation happened before shipping began: no moment of them is restorable (the
    // snapshot would give a later state than asked for).
    let last_op = history.last().unwrap().0;
    let err = restore_to(&rep, &root.path().join("y"), Point::At(last_op)).unwrap_err();
    assert!(err.to_string().contains("earliest"), "{err}");
}

#[test]
fn one_shipper_per_store_and_a_lost_manifest_is_not_a_fresh_start() {
    let root = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_790_000_000_000);
    shipped_workload(root.path(), 29, 60, 20, ShipOptions::default(), &clock);
    let store_dir = root.path().join("store");
    let rep = root.path().join("rep");
    let first = Shipper::open(&store_dir, target(&rep), ShipOptions::default()).unwrap();
    let err = Shipper::open(&store_dir, target(&rep), ShipOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("another process is shipping"),
        "{err}"
    );
    drop(first);
    let objects = |dir: &Path| std::fs::read_dir(dir.join("segments")).unwrap().count();
    let before = objects(&rep);
    std::fs::remove_file(rep.join("manifest.json")).unwrap();
    let err = Shipper::open(&store_dir, target(&rep), ShipOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("manifest.json"), "{err}");
    assert_eq!(objects(&rep), before, "nothing was removed");
}

#[test]
fn a_damaged_object_is_named_or_the_restore_stops_just_before_it() {
    let root = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_790_000_000_000);
    shipped_workload(root.path(), 17, 300, 20, ShipOptions::default(), &clock);
    let rep = root.path().join("rep");
    let mut segments: Vec<_> = std::fs::read_dir(rep.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    // A restore of the latest point starts at the newest snapshot: damage the first object
    // it needs after that, where a whole object comes before it too.
    let newest = list(&target(&rep))
        .unwrap()
        .snapshots
        .last()
        .map_or(0, |s| s.through);
    let first_of = |p: &Path| -> u64 {
        p.file_name().unwrap().to_string_lossy()[..20]
            .parse()
            .unwrap()
    };
    let after: Vec<_> = segments.iter().filter(|p| first_of(p) > newest).collect();
    assert!(
        after.len() > 1,
        "objects after the newest snapshot: {segments:?}"
    );
    let victim = after[1].clone();
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    let first = first_of(&victim);

    // The state just before the victim, restored while it was whole.
    let before = root.path().join("before");
    restore_to(&rep, &before, Point::Frame(first - 1)).unwrap();
    let want = dump(&open_plain(&before));

    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&victim, &bytes).unwrap();

    let dest = root.path().join("damaged");
    let err = restore_to(&rep, &dest, Point::Latest).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains(&name),
        "the error names the object: {err}"
    );
    assert!(!dest.exists(), "a failed restore leaves nothing behind");

    let options = RestoreOptions {
        point: Point::Latest,
        stop_before_damage: true,
    };
    let report = restore(&target(&rep), &dest, &options, &mut |_, _| {}).unwrap();
    assert_eq!(report.frame, first - 1);
    assert!(report.stopped_before.as_deref().unwrap().contains(&name));
    assert_eq!(dump(&open_plain(&dest)), want);

    // Points before the damage restore as usual.
    let fine = root.path().join("fine");
    restore_to(&rep, &fine, Point::Frame(first - 1)).unwrap();
}

#[test]
fn a_target_holding_another_stores_history_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_790_000_000_000);
    shipped_workload(root.path(), 19, 30, 10, ShipOptions::default(), &clock);
    let other = root.path().join("other");
    let store = open_store(&other, &clock);
    store.kv_put(b"s", b"k", b"v").unwrap();
    let err = Shipper::open(
        &other,
        target(&root.path().join("rep")),
        ShipOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("its own prefix"), "{err}");
}

#[test]
fn retention_keeps_every_point_of_the_window_and_drops_the_rest() {
    let root = tempfile::tempdir().unwrap();
    let day = 86_400_000i64;
    let now = silo::Clock::system().now_ms();
    // Twenty days of history, an operation every hour.
    let clock = Clock::manual(now - 20 * day);
    let hour = Duration::from_secs(3600);
    let store_dir = root.path().join("store");
    let rep = root.path().join("rep");
    let store = open_store(&store_dir, &clock);
    let options = ShipOptions {
        retain: Some(Duration::from_secs(7 * 86_400)),
        ..ShipOptions::default()
    };
    let mut shipper = Shipper::open(&store_dir, target(&rep), options).unwrap();
    let mut rng = common::Rng::new(23);
    let mut model = common::Model::default();
    let mut history = Vec::new();
    for i in 0..480 {
        clock.advance(hour);
        let kind = common::step(&store, &mut model, &mut rng);
        history.push((clock.now_ms(), model.clone(), kind));
        if i % 12 == 11 {
            shipper.ship().unwrap();
        }
    }
    shipper.ship().unwrap();
    let listed = list(&target(&rep)).unwrap();
    let (earliest, earliest_time) = listed.earliest.unwrap();
    assert!(earliest > 1, "old history was deleted: {listed:?}");
    assert!(
        earliest_time <= now - 7 * day,
        "the whole window stays restorable: earliest {earliest_time}, window from {}",
        now - 7 * day
    );
    assert!(listed.gaps.is_empty(), "{listed:?}");
    // The window's first moment restores exactly.
    let start = now - 7 * day;
    let i = history.iter().rposition(|(t, _, _)| *t <= start).unwrap();
    let dest = root.path().join("window-start");
    restore_to(&rep, &dest, Point::At(start)).unwrap();
    assert_eq!(dump(&open_plain(&dest)), render(&history[i].1));
    // Well before the window is gone.
    let err = restore_to(&rep, &root.path().join("old"), Point::At(now - 19 * day)).unwrap_err();
    assert!(err.to_string().contains("earliest"), "{err}");
}

#[test]
fn a_stray_empty_segment_does_not_stall_a_restarted_shipper() {
    let root = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_790_000_000_000);
    let store_dir = root.path().join("store");
    let rep = root.path().join("rep");
    // Segments large enough that no seal or compaction tidies the stray away meanwhile.
    let store = open_store_tuned(&store_dir, &clock, silo::fs::FsTuning::default());
    let mut shipper =
        Some(Shipper::open(&store_dir, target(&rep), ShipOptions::default()).unwrap());
    let mut stray = None;
    let history = run(&store, &clock, 41, 53, |i| {
        if i != 49 {
            return;
        }
        let running = shipper.as_mut().unwrap();
        running.ship().unwrap();
        let next = running.durable_frame_no() + 1;
        shipper = None;
        // What a writer that died between creating the next segment and writing its seal
        // leaves; the log goes on in the segment before it.
        let path = store_dir.join(format!("seg-{next:020}.slf"));
        std::fs::write(&path, b"").unwrap();
        stray = Some(path);
        shipper = Some(Shipper::open(&store_dir, target(&rep), ShipOptions::default()).unwrap());
    });
    shipper.as_mut().unwrap().ship().unwrap();
    let stray = stray.unwrap();
    assert_eq!(
        segment_files(&store_dir).last().map(String::as_str),
        stray.file_name().and_then(|n| n.to_str()),
        "the stray is still there, the newest segment"
    );
    let dest = root.path().join("latest");
    restore_to(&rep, &dest, Point::Latest).unwrap();
    assert_eq!(dump(&open_plain(&dest)), render(&history.last().unwrap().1));
}

#[test]
fn a_shipped_frame_damaged_at_the_tail_is_not_cut_as_a_torn_write() {
    let root = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_790_000_000_000);
    let store_dir = root.path().join("store");
    let rep = root.path().join("rep");
    let store = open_store_tuned(&store_dir, &clock, silo::fs::FsTuning::default());
    let history = run(&store, &clock, 43, 40, |_| {});
    let mut shipper = Shipper::open(&store_dir, target(&rep), ShipOptions::default()).unwrap();
    shipper.ship().unwrap();
    drop(shipper);
    drop(store);
    // A bit flip in the last frame, which the replica holds.
    let segment = store_dir.join(segment_files(&store_dir).last().unwrap());
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let err = silo::fs::FsStorage::open(
        &store_dir,
        silo::StoreOptions::default(),
        silo::fs::FsTuning::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("shipped"), "{err}");
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "nothing was cut");
    // The replica has it whole.
    let dest = root.path().join("restored");
    restore_to(&rep, &dest, Point::Latest).unwrap();
    assert_eq!(dump(&open_plain(&dest)), render(&history.last().unwrap().1));
}
