//! `silo replicate` and `silo restore`: an `fs:` store's log shipped to object storage, and a
//! store rebuilt from it (the work is `silo-replicate`'s; this file parses, reports and draws
//! the progress bar). `silo serve --replicate` starts the same shipper beside the server.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use silo::{Error, Result};
use silo_replicate::{Point, RestoreOptions, ShipOptions, Shipper, Target};

use crate::cli::{ReplicateArgs, RestoreArgs, ShipFlags};
use crate::serve::{init_logging, shutdown_signal};

/// The directory of the `fs:` store `url` names, or why there is none.
pub fn fs_store_dir(url: &str) -> Result<PathBuf> {
    silo::fs_dir(url)?.ok_or_else(|| {
        Error::config(format!(
            "replication ships fs: stores; {} is not one (use --store fs:///abs/dir)",
            silo::redact_url(url)
        ))
    })
}

fn max_lag(flags: &ShipFlags) -> Result<Duration> {
    Duration::try_from_secs_f64(flags.max_lag)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Error::invalid(format!(
                "--max-lag {} is not a positive number of seconds",
                flags.max_lag
            ))
        })
}

fn ship_options(flags: &ShipFlags) -> ShipOptions {
    ShipOptions {
        retain: flags.retain,
        ..ShipOptions::default()
    }
}

/// `silo replicate`.
pub fn replicate(args: &ReplicateArgs, store_url: &str) -> Result<()> {
    init_logging();
    let dir = fs_store_dir(store_url)?;
    let lag = max_lag(&args.ship)?;
    // Open the store once, so that a new directory becomes a store and a bad one is refused
    // before anything is shipped.
    drop(silo::open(store_url)?);
    let target = Target::open(&args.to)?;
    let mut shipper = Shipper::open(&dir, target, ship_options(&args.ship))?;
    if args.once {
        let report = shipper.ship()?;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "shipped {} segments, {} snapshots, {} bytes; durable_frame_no {}",
            report.segments, report.snapshots, report.bytes, report.durable_frame_no
        )
        .map_err(|e| Error::io("writing to stdout", e))?;
        return Ok(());
    }
    tracing::info!("shipping {} to {} every {lag:?}", dir.display(), args.to);
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signal(stop.clone())?;
    silo_replicate::run(&mut shipper, lag, &stop);
    tracing::info!(
        durable_frame_no = shipper.durable_frame_no(),
        "replication stopped"
    );
    Ok(())
}

/// A shipper running on a thread of its own beside `silo serve`.
pub struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts shipping the `fs:` store `store_url` to `to`.
    pub fn start(store_url: &str, to: &str, flags: &ShipFlags) -> Result<Self> {
        let dir = fs_store_dir(store_url)?;
        let lag = max_lag(flags)?;
        let target = Target::open(to)?;
        let mut shipper = Shipper::open(&dir, target, ship_options(flags))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("silo-replicate".into())
            .spawn(move || silo_replicate::run(&mut shipper, lag, &stopping))
            .map_err(|e| Error::io("starting the replication thread", e))?;
        tracing::info!("shipping {} to {to} every {lag:?}", dir.display());
        Ok(Background {
            stop,
            thread: Some(thread),
        })
    }

    /// Ships what is left and stops.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `silo restore`.
pub fn restore(args: &RestoreArgs) -> Result<()> {
    init_logging();
    let target = Target::open(&args.from)?;
    let mut out = std::io::stdout().lock();
    let io = |e| Error::io("writing to stdout", e);
    if args.list {
        let r = silo_replicate::list(&target)?;
        writeln!(out, "store_id: {}", r.store_id).map_err(io)?;
        match r.earliest {
            Some((frame, time)) => {
                writeln!(out, "earliest: frame {frame} at {}", show_time(time)).map_err(io)?
            }
            None => writeln!(out, "earliest: - (nothing shipped yet)").map_err(io)?,
        }
        writeln!(
            out,
            "latest: frame {} at {}",
            r.latest.0,
            show_time(r.latest.1)
        )
        .map_err(io)?;
        for (from, to) in &r.gaps {
            writeln!(out, "gap: frames {from}..={to} cannot be restored").map_err(io)?;
        }
        writeln!(out, "snapshots: {}", r.snapshots.len()).map_err(io)?;
        for s in &r.snapshots {
            writeln!(out, "  frame {} at {}", s.through, show_time(s.time_ms)).map_err(io)?;
        }
        writeln!(out, "segments: {}\nbytes: {}", r.segments, r.bytes).map_err(io)?;
        return Ok(());
    }
    let Some(to) = &args.to else {
        return Err(Error::invalid(
            "--to fs:///abs/dir names the store to create",
        ));
    };
    let dest = fs_store_dir(to)?;
    let point = match (args.at, args.frame) {
        (Some(at), _) => Point::At(at),
        (None, Some(frame)) => Point::Frame(frame),
        (None, None) => Point::Latest,
    };
    let options = RestoreOptions {
        point,
        stop_before_damage: args.stop_before_damage,
    };
    let bar =
        indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} restoring [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let report = silo_replicate::restore(&target, &dest, &options, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = report?;
    writeln!(
        out,
        "restored {} through frame {} ({}){}: {} segments, {} bytes",
        report.path.display(),
        report.frame,
        show_time(report.time_ms),
        report
            .snapshot
            .map(|s| format!(" from the snapshot at frame {s}"))
            .unwrap_or_default(),
        report.segments,
        report.bytes
    )
    .map_err(io)?;
    if let Some(damaged) = &report.stopped_before {
        writeln!(out, "stopped before a damaged object: {damaged}").map_err(io)?;
    }
    Ok(())
}

/// A time for people: RFC 3339 (UTC, ms).
fn show_time(ms: i64) -> String {
    let Ok(ms) = u64::try_from(ms) else {
        return "-".into();
    };
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Sets `stop` on SIGINT or SIGTERM (the shipper then ships what is left and exits).
fn stop_on_signal(stop: Arc<AtomicBool>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the signal watcher", e))?;
    std::thread::Builder::new()
        .name("silo-signals".into())
        .spawn(move || {
            runtime.block_on(shutdown_signal());
            tracing::info!("stopping: shipping what is left");
            stop.store(true, Ordering::Relaxed);
        })
        .map_err(|e| Error::io("starting the signal watcher", e))?;
    Ok(())
}
