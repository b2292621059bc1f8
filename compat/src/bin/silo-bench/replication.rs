//! The replication section (`--only replication`): what `silo-replicate` costs and gives on an
//! `fs:` store, all on the run's temp directory (so the `file://` target shares the store's
//! disk and page cache):
//!
//! - write throughput of one thread (100 B `kv_put`s to rotating keys; 4 KiB appends) with no
//!   shipper and with a [`Shipper`] under [`silo_replicate::run`] (`max_lag` 1 s) on a thread
//!   of its own, the two modes alternated within every round, each on a fresh store;
//! - restore throughput: a store of ~256 MiB of log (1 MiB appends to four logs, with
//!   `compact_min_bytes` above that so it is all segments and no snapshot), shipped once, then
//!   restored (latest point) into a new directory every round;
//! - RPO: a paced `kv_put` load with continuous shipping, the target's `manifest.json` sampled
//!   every 50 ms for how far behind the writes it is.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use silo::FunctionStorage;
use silo_replicate::{MANIFEST, Manifest, Point, RestoreOptions, ShipOptions, Shipper, Target};

use super::{fmt_rate, median, value};

/// The shipper's bound on lag, in every part.
const MAX_LAG: Duration = Duration::from_secs(1);
/// Keys the kv_put workload rotates over.
const KEYS: usize = 1000;
/// Targets (issue): shipping costs at most 10 % of write throughput; restore at 200 MB/s.
const COST_TARGET: f64 = 0.90;
const RESTORE_TARGET_MBS: f64 = 200.0;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn file_target(dir: &Path) -> Target {
    Target::open(&format!("file://{}", dir.display())).expect("open the file:// target")
}

fn open_fs(dir: &Path, query: &str) -> Arc<dyn FunctionStorage> {
    silo::open(&format!("fs://{}{query}", dir.display())).expect("open the fs: store")
}

fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

// ------------------------------------------------------------------ 1. write throughput

#[derive(Clone, Copy, PartialEq)]
enum Load {
    KvPut,
    Append4k,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::KvPut => "kv_put 100 B, rotating 1,000 keys",
            Load::Append4k => "append 4 KiB, one log",
        }
    }
}

/// One thread writing `load` for `secs` to a fresh store in `root/name`; with `ship`, a
/// shipper runs alongside to `root/name-target`. Returns ops/s, checked.
fn write_run(root: &Path, name: &str, load: Load, ship: bool, secs: f64) -> Result<f64, String> {
    let store_dir = root.join(name);
    let target_dir = root.join(format!("{name}-target"));
    let store = open_fs(&store_dir, "");
    let stop = AtomicBool::new(false);
    let mut shipper = ship.then(|| {
        Shipper::open(&store_dir, file_target(&target_dir), ShipOptions::default())
            .expect("start shipping")
    });
    let (ops, last_id, elapsed) = std::thread::scope(|s| {
        let shipping = shipper.as_mut().map(|sh| {
            let stop = &stop;
            s.spawn(move || silo_replicate::run(sh, MAX_LAG, stop))
        });
        let until = Duration::from_secs_f64(secs);
        let started = Instant::now();
        let (mut ops, mut last_id) = (0usize, 0i64);
        while started.elapsed() < until {
            // A few operations between clock reads.
            for _ in 0..16 {
                match load {
                    Load::KvPut => {
                        let k = (ops % KEYS) as u32;
                        store
                            .kv_put(b"repl", &k.to_be_bytes(), &value(0, ops, 100))
                            .expect("kv_put");
                    }
                    Load::Append4k => {
                        last_id = store
                            .append(b"repl", b"bench", b"log", &value(0, ops, 4096))
                            .expect("append");
                    }
                }
                ops += 1;
            }
        }
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        if let Some(h) = shipping {
            h.join().expect("shipper thread");
        }
        (ops, last_id, elapsed)
    });
    // Checks: the last writes read back; a shipper's last round shipped every operation.
    let checked = match load {
        Load::KvPut => (ops.saturating_sub(KEYS)..ops)
            .step_by(37)
            .try_for_each(|i| {
                let k = (i % KEYS) as u32;
                let got = store.kv_get(b"repl", &k.to_be_bytes()).expect("kv_get");
                (got == Some(value(0, i, 100)))
                    .then_some(())
                    .ok_or_else(|| format!("key {k} does not hold write {i}"))
            }),
        Load::Append4k => {
            let got = store
                .scan(b"repl", b"bench", b"log", last_id - 1, 1)
                .expect("scan");
            (got.len() == 1 && got[0].0 == last_id && got[0].1 == value(0, ops - 1, 4096))
                .then_some(())
                .ok_or_else(|| format!("the last entry ({last_id}) is not the last append"))
        }
    }
    .and_then(|()| match &shipper {
        Some(sh) if sh.durable_frame_no() < ops as u64 => Err(format!(
            "shipped through frame {} after {ops} operations",
            sh.durable_frame_no()
        )),
        _ => Ok(()),
    });
    drop(shipper);
    drop(store);
    remove(&store_dir);
    remove(&target_dir);
    checked.map(|()| ops as f64 / elapsed.as_secs_f64())
}

struct WriteRow {
    load: Load,
    plain: Vec<f64>,
    shipped: Vec<f64>,
    ratios: Vec<f64>,
}

// ------------------------------------------------------------------ 2. restore

struct RestoreRow {
    log_bytes: u64,
    ship_secs: f64,
    ship_bytes: u64,
    object_bytes: u64,
    secs: Vec<f64>,
    rates: Vec<f64>,
}

const RESTORE_LOGS: usize = 4;
const RESTORE_ENTRY: usize = 1 << 20;
const RESTORE_ENTRIES: usize = 256;

fn restore_part(root: &Path, reps: usize, failures: &mut Vec<String>) -> Option<RestoreRow> {
    let store_dir = root.join("restore-src");
    let target_dir = root.join("restore-target");
    // No compaction below 1 GiB of log: the history is segments only, no snapshot.
    let store = open_fs(&store_dir, "?compact_min_bytes=1073741824");
    let mut last = [(0i64, 0usize); RESTORE_LOGS];
    for i in 0..RESTORE_ENTRIES {
        let log = i % RESTORE_LOGS;
        let id = store
            .append(
                b"restore",
                b"bench",
                format!("log-{log}").as_bytes(),
                &value(log, i, RESTORE_ENTRY),
            )
            .expect("append 1 MiB");
        last[log] = (id, i);
    }
    drop(store);
    let log_bytes = std::fs::read_dir(&store_dir)
        .expect("list the store")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let started = Instant::now();
    let mut shipper = Shipper::open(&store_dir, file_target(&target_dir), ShipOptions::default())
        .expect("start shipping");
    let shipped = match shipper.ship() {
        Ok(r) => r,
        Err(e) => {
            failures.push(format!("replication: shipping the restore store: {e}"));
            return None;
        }
    };
    let ship_secs = started.elapsed().as_secs_f64();
    drop(shipper);
    let target = file_target(&target_dir);
    let options = RestoreOptions {
        point: Point::Latest,
        stop_before_damage: false,
    };
    let mut row = RestoreRow {
        log_bytes,
        ship_secs,
        ship_bytes: shipped.bytes,
        object_bytes: 0,
        secs: Vec::new(),
        rates: Vec::new(),
    };
    for rep in 0..reps {
        let dest = root.join(format!("restore-dest-{rep}"));
        let started = Instant::now();
        let report = silo_replicate::restore(&target, &dest, &options, &mut |_, _| {});
        let secs = started.elapsed().as_secs_f64();
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("replication: restore: {e}"));
                remove(&dest);
                continue;
            }
        };
        // Checked: the restored store holds every log's last entry, intact.
        let restored = open_fs(&dest, "");
        let ok = last.iter().enumerate().try_for_each(|(log, &(id, i))| {
            let got = restored
                .scan(
                    b"restore",
                    b"bench",
                    format!("log-{log}").as_bytes(),
                    id - 1,
                    1,
                )
                .expect("scan the restored store");
            (got.len() == 1 && got[0].0 == id && got[0].1 == value(log, i, RESTORE_ENTRY))
                .then_some(())
                .ok_or_else(|| format!("restored log-{log} lacks its last entry {id}"))
        });
        if report.frame != shipped.durable_frame_no {
            failures.push(format!(
                "replication: restore ended at frame {} of {}",
                report.frame, shipped.durable_frame_no
            ));
        }
        if let Err(e) = ok {
            failures.push(format!("replication: restore: {e}"));
        }
        drop(restored);
        row.object_bytes = report.bytes;
        row.secs.push(secs);
        row.rates.push(report.bytes as f64 / 1e6 / secs);
        eprintln!(
            "replication restore: {:.0} MB of objects in {secs:.2} s = {:.0} MB/s",
            report.bytes as f64 / 1e6,
            report.bytes as f64 / 1e6 / secs
        );
        remove(&dest);
    }
    remove(&store_dir);
    remove(&target_dir);
    (!row.rates.is_empty()).then_some(row)
}

// ------------------------------------------------------------------ 3. RPO

const RPO_RATE: f64 = 2000.0;
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

struct RpoRow {
    secs: f64,
    achieved: Vec<f64>,
    /// Every sample's lag (ms), all rounds.
    lags: Vec<i64>,
    /// Segment objects in the target per second of writing, each round.
    objects_per_sec: Vec<f64>,
}

/// One round: `secs` of `RPO_RATE` kv_puts/s with continuous shipping; the lags sampled.
fn rpo_round(root: &Path, round: usize, secs: f64) -> Result<(f64, Vec<i64>, f64), String> {
    let store_dir = root.join(format!("rpo-{round}"));
    let target_dir = root.join(format!("rpo-{round}-target"));
    let store = open_fs(&store_dir, "");
    let mut shipper = Shipper::open(&store_dir, file_target(&target_dir), ShipOptions::default())
        .expect("start shipping");
    let manifest_path = target_dir.join(MANIFEST);
    let stop_shipping = AtomicBool::new(false);
    let writing = AtomicBool::new(true);
    // The store-clock time of the first write (0: none yet) and of the latest.
    let first_write = AtomicI64::new(0);
    let last_write = AtomicI64::new(0);
    let (ops, elapsed, lags) = std::thread::scope(|s| {
        let shipping = s.spawn(|| silo_replicate::run(&mut shipper, MAX_LAG, &stop_shipping));
        let sampler = s.spawn(|| {
            let mut lags = Vec::new();
            while writing.load(Ordering::Relaxed) {
                std::thread::sleep(SAMPLE_EVERY);
                let first = first_write.load(Ordering::Relaxed);
                if first == 0 {
                    continue;
                }
                let durable = std::fs::read(&manifest_path)
                    .ok()
                    .and_then(|b| Manifest::decode(&b, "rpo").ok())
                    .map_or(0, |m| m.durable_time_ms);
                let now = now_ms();
                if last_write.load(Ordering::Relaxed) > durable {
                    // Nothing shipped yet: the writes began at `first`.
                    lags.push(now - durable.max(first - 1));
                }
            }
            lags
        });
        let started = Instant::now();
        let until = Duration::from_secs_f64(secs);
        let mut ops = 0usize;
        while started.elapsed() < until {
            let due = started + Duration::from_secs_f64(ops as f64 / RPO_RATE);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let t = now_ms();
            let k = (ops % KEYS) as u32;
            store
                .kv_put(b"rpo", &k.to_be_bytes(), &value(1, ops, 100))
                .expect("kv_put");
            let _ = first_write.compare_exchange(0, t, Ordering::Relaxed, Ordering::Relaxed);
            last_write.store(t, Ordering::Relaxed);
            ops += 1;
        }
        let elapsed = started.elapsed();
        writing.store(false, Ordering::Relaxed);
        let lags = sampler.join().expect("sampler thread");
        stop_shipping.store(true, Ordering::Relaxed);
        shipping.join().expect("shipper thread");
        (ops, elapsed, lags)
    });
    let shipped = shipper.durable_frame_no();
    let objects = std::fs::read_dir(target_dir.join("segments")).map_or(0, |d| d.count());
    drop(shipper);
    drop(store);
    remove(&store_dir);
    remove(&target_dir);
    if shipped < ops as u64 {
        return Err(format!(
            "shipped through frame {shipped} after {ops} operations"
        ));
    }
    if lags.is_empty() {
        return Err("no sample of the manifest".into());
    }
    let secs = elapsed.as_secs_f64();
    Ok((ops as f64 / secs, lags, objects as f64 / secs))
}

// ------------------------------------------------------------------ the section

/// Runs the three parts; returns the report's section and what failed its checks.
pub fn section(reps: usize, quick: bool, dir: &Path) -> (String, Vec<String>) {
    let root: PathBuf = dir.join("replication");
    std::fs::create_dir_all(&root).expect("create the replication dir");
    let mut failures = Vec::new();
    let write_secs = if quick { 2.0 } else { 3.0 };
    let rpo_secs = if quick { 10.0 } else { 20.0 };

    // ---- 1. write throughput, the two modes alternated within every round
    let mut writes: Vec<WriteRow> = [Load::KvPut, Load::Append4k]
        .into_iter()
        .map(|load| WriteRow {
            load,
            plain: Vec::new(),
            shipped: Vec::new(),
            ratios: Vec::new(),
        })
        .collect();
    for rep in 0..reps {
        for row in &mut writes {
            let mut got = [None, None];
            let order = if rep % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for ship in order {
                let name = format!("w-{rep}-{}", if ship { "ship" } else { "plain" });
                match write_run(&root, &name, row.load, ship, write_secs) {
                    Ok(rate) => got[usize::from(ship)] = Some(rate),
                    Err(e) => failures.push(format!(
                        "replication {} ({}): {e}",
                        row.load.name(),
                        if ship { "shipping" } else { "no shipping" }
                    )),
                }
            }
            if let Some(p) = got[0] {
                row.plain.push(p);
            }
            if let Some(s) = got[1] {
                row.shipped.push(s);
            }
            if let [Some(p), Some(s)] = got {
                row.ratios.push(s / p);
                eprintln!(
                    "replication {}: none {}  shipping {}  {:.2}×",
                    row.load.name(),
                    fmt_rate(Some(p)),
                    fmt_rate(Some(s)),
                    s / p
                );
            }
        }
    }

    // ---- 2. restore
    let restore = restore_part(&root, reps, &mut failures);

    // ---- 3. RPO
    let mut rpo = RpoRow {
        secs: rpo_secs,
        achieved: Vec::new(),
        lags: Vec::new(),
        objects_per_sec: Vec::new(),
    };
    for round in 0..reps {
        match rpo_round(&root, round, rpo_secs) {
            Ok((rate, lags, objects)) => {
                let worst = lags.iter().copied().max().unwrap_or(0);
                eprintln!(
                    "replication RPO round {round}: {} puts/s, {} samples, worst lag {worst} ms, \
                     {objects:.1} segment objects/s",
                    fmt_rate(Some(rate)),
                    lags.len()
                );
                rpo.achieved.push(rate);
                rpo.objects_per_sec.push(objects);
                rpo.lags.extend(lags);
            }
            Err(e) => failures.push(format!("replication RPO: {e}")),
        }
    }
    remove(&root);

    // ---- the report
    let mut md = String::new();
    let med = |xs: &Vec<f64>| (!xs.is_empty()).then(|| median(xs.clone()));
    let _ = writeln!(
        md,
        "\n## Replication: shipping an `fs:` store's log (`silo-replicate`)\n"
    );
    let _ = writeln!(
        md,
        "One writer thread on a fresh `fs:` store (`sync=normal`) for {write_secs} s a run, with no \
         shipper and with `silo_replicate::run` (max_lag 1 s) shipping to a `file://` target on \
         the same disk from a thread of its own; the two alternated within every round; median \
         of {reps} rounds, ratio = the median of each round's shipping / none (target ≥ \
         {COST_TARGET:.2}×).\n"
    );
    let _ = writeln!(
        md,
        "| workload | no shipping | shipping | shipping / none | verified |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---|");
    for row in &writes {
        let ratio = med(&row.ratios);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            row.load.name(),
            fmt_rate(med(&row.plain)),
            fmt_rate(med(&row.shipped)),
            ratio.map_or("—".into(), |r| format!("**{r:.2}×**")),
            if row.ratios.len() == reps {
                "ok"
            } else {
                "FAILED"
            }
        );
        eprintln!(
            "replication {}: none {} shipping {} ratio {}",
            row.load.name(),
            fmt_rate(med(&row.plain)),
            fmt_rate(med(&row.shipped)),
            ratio.map_or("—".into(), |r| format!("{r:.2}×"))
        );
    }

    let _ = writeln!(md, "\n### Restore\n");
    match &restore {
        Some(r) => {
            let (mbs, secs) = (median(r.rates.clone()), median(r.secs.clone()));
            let _ = writeln!(
                md,
                "A store of {RESTORE_ENTRIES} appends of 1 MiB to {RESTORE_LOGS} logs \
                 ({:.0} MiB of segments; `compact_min_bytes` = 1 GiB, so no compaction and no \
                 snapshot: the history is all segment objects), shipped once ({:.0} MB in \
                 {:.2} s = {:.0} MB/s), then restored at the latest point into a new directory, \
                 every round; MB/s = bytes of objects read (10⁶) / wall time, including the \
                 opening of the result; median of {} rounds (target ≥ {RESTORE_TARGET_MBS:.0} \
                 MB/s). The objects were just written, so they are read from the page cache.\n",
                r.log_bytes as f64 / (1 << 20) as f64,
                r.ship_bytes as f64 / 1e6,
                r.ship_secs,
                r.ship_bytes as f64 / 1e6 / r.ship_secs,
                r.rates.len()
            );
            let _ = writeln!(md, "| objects read | time | MB/s |");
            let _ = writeln!(md, "|---:|---:|---:|");
            let _ = writeln!(
                md,
                "| {:.0} MB | {secs:.2} s | **{mbs:.0}** |",
                r.object_bytes as f64 / 1e6
            );
            eprintln!(
                "replication restore: {:.0} MB in {secs:.2} s = {mbs:.0} MB/s (median)",
                r.object_bytes as f64 / 1e6
            );
        }
        None => {
            let _ = writeln!(md, "Restore FAILED (below).");
        }
    }

    let _ = writeln!(md, "\n### RPO under continuous shipping\n");
    let mut lags = rpo.lags.clone();
    lags.sort_unstable();
    let pct =
        |p: f64| (!lags.is_empty()).then(|| lags[((lags.len() - 1) as f64 * p).round() as usize]);
    let ms = |x: Option<i64>| x.map_or("—".into(), |x| format!("{x} ms"));
    let _ = writeln!(
        md,
        "One thread paced at {RPO_RATE:.0} kv_puts/s (100 B) for {:.0} s a round, {} rounds, \
         shipped by `silo_replicate::run` with max_lag {} ms; every {} ms a sampler reads the \
         target's `{MANIFEST}` and, when a write is newer than its `durable_time_ms`, records \
         lag = now − `durable_time_ms` (from the first write while nothing is shipped yet): how \
         much acknowledged history a lost disk would take. Samples of all rounds together.\n",
        rpo.secs,
        reps,
        MAX_LAG.as_millis(),
        SAMPLE_EVERY.as_millis()
    );
    let _ = writeln!(
        md,
        "| writes/s achieved | segment objects/s | samples | p50 lag | p99 lag | worst lag | max_lag |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        md,
        "| {} | {} | {} | {} | **{}** | **{}** | {} ms |",
        fmt_rate(med(&rpo.achieved)),
        med(&rpo.objects_per_sec).map_or("—".into(), |x| format!("{x:.1}")),
        lags.len(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(lags.last().copied()),
        MAX_LAG.as_millis()
    );
    if med(&rpo.objects_per_sec).is_some_and(|x| x > 2.0 / MAX_LAG.as_secs_f64()) {
        let _ = writeln!(
            md,
            "\nMany more segment objects than one per max_lag: a shipping round ends only when it \
             finds no new frame, so under a steady load it never pauses and ships each few frames \
             as an object of its own (with a manifest rewrite each) — the lag above is that of \
             continuous shipping, not of rounds every max_lag."
        );
    }
    eprintln!(
        "replication RPO: p50 {} p99 {} worst {} ({} samples)",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(lags.last().copied()),
        lags.len()
    );
    (md, failures)
}
