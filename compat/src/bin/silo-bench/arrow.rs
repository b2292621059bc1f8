//! The arrow section (`--only arrow`): Arrow `RecordBatch`es through `silo-arrow`'s buffering
//! lifecycle on silo's `fs:` and `sqlite:` stores and on `silo serve` (over `fs:`, in this
//! process) through `http://`, against the incumbent — the `vgi` crate's
//! `SqliteStorage` holding the same batches as Arrow IPC streams in one log per sink.
//!
//! Every round, on a fresh store in the run's temp directory (one disk for all):
//!
//! - sink: 4 worker processes (this binary, `--arrow-worker`), each `Buffering::process` of its
//!   own batches of ~1 MiB (an Int64 and a Utf8 column, 32,768 rows); then `combine(.., 4,
//!   RoundRobin)` in the parent; then finalize: 4 worker processes, one a partition, each
//!   reading its batches and checking every row; then `destroy`. The incumbent: 4 processes each
//!   encoding its batches as IPC streams (`StreamWriter`) and `append`ing them to a log of its
//!   own, then 4 processes each `scan`ning one log back (one entry a call, as silo's finalize
//!   reads) and decoding it.
//! - MB/s = IPC bytes (10⁶; the batches' IPC stream size) / wall time from "go" to the last
//!   worker's end of work (its exit not included); memory = per finalize process, the peak
//!   resident set during finalize (VmHWM, reset just before) over the resident set before it.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{Array, Int64Array, RecordBatch, StringArray};
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::StreamWriter;
use silo_arrow::{Buffering, Partitioning};
use vgi::storage::FunctionStorage as _;

use super::median;

/// Sinks, finalize partitions, and worker processes of each phase.
const WORKERS: usize = 4;
/// Rows a batch: 8 B of Int64 + 20 B of Utf8 + 4 B of offset each = 1 MiB of buffers.
const ROWS: usize = 32_768;
const EXECUTION: &[u8] = b"bench-arrow";
/// The incumbent's log namespace.
const VGI_NS: &[u8] = b"sink";
/// Targets (issue 12): on `fs:`, sink ≥ 1 GB/s, finalize ≥ 2 GB/s, finalize memory ≤ 3 batches.
const SINK_TARGET_MBS: f64 = 1000.0;
const FINALIZE_TARGET_MBS: f64 = 2000.0;
const MEMORY_TARGET_BATCHES: f64 = 3.0;
/// The rows of the table: silo's stores, then the incumbent.
const SILO_ROWS: usize = 3;
const VGI: usize = SILO_ROWS;

fn sink_id(sink: usize) -> Vec<u8> {
    format!("sink-{sink}").into_bytes()
}

/// The `seq`-th batch of sink `sink`: value = sink << 40 | seq << 20 | row; name =
/// "{sink:02}-{seq:06}-{value:010}" (20 bytes).
fn batch(sink: usize, seq: usize) -> RecordBatch {
    let base = base(sink, seq);
    let values = Int64Array::from_iter_values((0..ROWS as i64).map(|i| base + i));
    let names = StringArray::from_iter_values((0..ROWS).map(|i| name(sink, seq, i)));
    RecordBatch::try_from_iter([
        ("value", Arc::new(values) as Arc<dyn Array>),
        ("name", Arc::new(names) as Arc<dyn Array>),
    ])
    .expect("a batch")
}

fn base(sink: usize, seq: usize) -> i64 {
    ((sink as i64) << 40) | ((seq as i64) << 20)
}

fn name(sink: usize, seq: usize, row: usize) -> String {
    format!("{sink:02}-{seq:06}-{row:010}")
}

/// `batch` as one Arrow IPC stream (schema, batch, end marker).
fn ipc_stream(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::with_capacity(ROWS * 32 + 4096);
    let mut writer = StreamWriter::try_new(&mut out, batch.schema_ref()).expect("IPC writer");
    writer.write(batch).expect("IPC write");
    writer.finish().expect("IPC finish");
    drop(writer);
    out
}

/// An IPC stream back to its one batch.
fn decode_stream(bytes: Vec<u8>) -> Result<RecordBatch, String> {
    let mut decoder = StreamDecoder::new();
    let mut buffer = Buffer::from(bytes);
    while !buffer.is_empty() {
        if let Some(b) = decoder.decode(&mut buffer).map_err(|e| e.to_string())? {
            return Ok(b);
        }
    }
    Err("an IPC stream with no batch".into())
}

/// Checks every row of a batch [`batch`] made; returns its (sink, seq).
fn check_batch(b: &RecordBatch) -> Result<(usize, usize), String> {
    if b.num_rows() != ROWS || b.num_columns() != 2 {
        return Err(format!(
            "a batch of {} rows, {} columns",
            b.num_rows(),
            b.num_columns()
        ));
    }
    let values = b.column(0).as_any().downcast_ref::<Int64Array>();
    let names = b.column(1).as_any().downcast_ref::<StringArray>();
    let (Some(values), Some(names)) = (values, names) else {
        return Err("a batch of other column types".into());
    };
    let first = values.value(0);
    let (sink, seq) = ((first >> 40) as usize, ((first >> 20) & 0xf_ffff) as usize);
    if first != base(sink, seq)
        || values.null_count() != 0
        || !values
            .values()
            .iter()
            .zip(first..)
            .all(|(&v, want)| v == want)
    {
        return Err(format!("sink {sink} batch {seq}: values not as written"));
    }
    let last = ROWS - 1;
    if names.value_data().len() != ROWS * 20
        || names.value(0) != name(sink, seq, 0)
        || names.value(last) != name(sink, seq, last)
    {
        return Err(format!("sink {sink} batch {seq}: names not as written"));
    }
    Ok((sink, seq))
}

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Resets VmHWM to the current resident set (Linux ≥ 4.0); false where it cannot.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// (resident set, its file-backed part, reset ok), taken just before a measured phase.
fn memory_before() -> (u64, u64, bool) {
    let reset = reset_peak();
    (
        status_kib("VmRSS:").unwrap_or(0),
        status_kib("RssFile:").unwrap_or(0),
        reset,
    )
}

/// Since [`memory_before`], in KiB: the peak resident growth, and how much the file-backed
/// resident set (mapped files, e.g. SQLite's mmap) grew by the end.
fn memory_growth(before: (u64, u64, bool)) -> Option<(u64, u64)> {
    let (rss, file, reset) = before;
    let hwm = status_kib("VmHWM:")?;
    let file_now = status_kib("RssFile:").unwrap_or(file);
    (reset && rss > 0).then(|| (hwm.saturating_sub(rss), file_now.saturating_sub(file)))
}

// ------------------------------------------------------------------ the worker processes

/// `--arrow-worker ROLE TARGET INDEX COUNT`: one sink or finalize process. Says `ready`, waits
/// for a line on stdin, works; prints `seen SINK SEQ` per batch read, `mem KIB FILE_KIB` (peak
/// growth, file-backed growth), `error ...` on failure, `done` when the work is done (before
/// anything is freed: the parent's clock stops there, not at the exit).
pub fn worker(args: &[String]) {
    let (role, target, index, count) = (
        args[0].as_str(),
        args[1].as_str(),
        args[2].parse::<usize>().expect("index"),
        args[3].parse::<usize>().expect("count"),
    );
    let mut out = std::io::stdout().lock();
    // The sinks' input, freed after `done`.
    let mut keep: Vec<RecordBatch> = Vec::new();
    let result = (|| -> Result<(), String> {
        let go = |out: &mut std::io::StdoutLock| {
            writeln!(out, "ready").expect("stdout");
            out.flush().expect("stdout");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).expect("stdin");
        };
        match role {
            "silo-sink" => {
                let store = silo::open(target).map_err(|e| e.to_string())?;
                let buffering = Buffering::new(&*store, EXECUTION);
                let batches: Vec<_> = (0..count).map(|seq| batch(index, seq)).collect();
                go(&mut out);
                for (seq, b) in batches.iter().enumerate() {
                    buffering
                        .process(&sink_id(index), seq as u64, b)
                        .map_err(|e| format!("process {seq}: {e}"))?;
                }
                keep = batches;
            }
            "vgi-sink" => {
                let storage = vgi::storage::SqliteStorage::open(target.into());
                let batches: Vec<_> = (0..count).map(|seq| batch(index, seq)).collect();
                go(&mut out);
                for (seq, b) in batches.iter().enumerate() {
                    // The incumbent logs failures and returns -1.
                    if storage.append(EXECUTION, VGI_NS, &sink_id(index), ipc_stream(b)) < 0 {
                        return Err(format!("append {seq} failed"));
                    }
                }
                keep = batches;
            }
            "silo-finalize" => {
                let store = silo::open(target).map_err(|e| e.to_string())?;
                let buffering = Buffering::new(&*store, EXECUTION);
                go(&mut out);
                let before = memory_before();
                for b in buffering
                    .finalize(index as u32)
                    .map_err(|e| e.to_string())?
                {
                    let (sink, seq) = check_batch(&b.map_err(|e| e.to_string())?)?;
                    writeln!(out, "seen {sink} {seq}").expect("stdout");
                }
                if let Some((kib, file_kib)) = memory_growth(before) {
                    writeln!(out, "mem {kib} {file_kib}").expect("stdout");
                }
            }
            "vgi-scan" => {
                let storage = vgi::storage::SqliteStorage::open(target.into());
                go(&mut out);
                let before = memory_before();
                let mut after = 0;
                loop {
                    let page = storage.scan(EXECUTION, VGI_NS, &sink_id(index), after, 1);
                    if page.is_empty() {
                        break;
                    }
                    for (id, bytes) in page {
                        let (sink, seq) = check_batch(&decode_stream(bytes)?)?;
                        writeln!(out, "seen {sink} {seq}").expect("stdout");
                        after = id;
                    }
                }
                if let Some((kib, file_kib)) = memory_growth(before) {
                    writeln!(out, "mem {kib} {file_kib}").expect("stdout");
                }
            }
            other => return Err(format!("unknown arrow worker role {other}")),
        }
        Ok(())
    })();
    match result {
        Ok(()) => writeln!(out, "done").expect("stdout"),
        Err(e) => writeln!(out, "error {e}").expect("stdout"),
    }
    out.flush().expect("stdout");
    drop(keep);
}

/// What a phase's workers said.
struct Phase {
    secs: f64,
    /// (sink, seq) of every batch read, in the order each worker read them.
    seen: Vec<(usize, usize)>,
    /// Each worker's (peak resident growth, file-backed growth), KiB.
    mem_kib: Vec<(u64, u64)>,
}

/// Runs `WORKERS` processes of `role` on `target` (worker i gets index i); timed from "go" to
/// the last worker's `done`.
fn phase(role: &str, target: &str, count: usize) -> Result<Phase, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children: Vec<_> = (0..WORKERS)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "--arrow-worker",
                    role,
                    target,
                    &i.to_string(),
                    &count.to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn an arrow worker")
        })
        .collect();
    let mut readers: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().expect("stdout")))
        .collect();
    for r in &mut readers {
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            return Err(format!("{role} worker: {}", line.trim()));
        }
    }
    let start = Instant::now();
    for c in &mut children {
        let _ = writeln!(c.stdin.as_mut().expect("stdin"), "go");
    }
    // Read in turn: the last `done` read is read when the last worker says it.
    let mut secs: f64 = 0.0;
    let outputs: Vec<Vec<String>> = readers
        .into_iter()
        .map(|r| {
            let mut lines = Vec::new();
            for line in r.lines().map_while(Result::ok) {
                if line == "done" {
                    secs = secs.max(start.elapsed().as_secs_f64());
                }
                lines.push(line);
            }
            lines
        })
        .collect();
    for c in &mut children {
        c.wait().map_err(|e| e.to_string())?;
    }
    let mut got = Phase {
        secs,
        seen: Vec::new(),
        mem_kib: Vec::new(),
    };
    for (i, lines) in outputs.iter().enumerate() {
        if lines.last().map(String::as_str) != Some("done") {
            let said = lines
                .iter()
                .find(|l| l.starts_with("error"))
                .cloned()
                .unwrap_or_else(|| "exited without finishing".into());
            return Err(format!("{role} worker {i}: {said}"));
        }
        for l in lines {
            let mut words = l.split_whitespace();
            match words.next() {
                Some("seen") => {
                    let mut n = || words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                    got.seen.push((n(), n()));
                }
                Some("mem") => {
                    let mut n = || words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                    got.mem_kib.push((n(), n()));
                }
                _ => {}
            }
        }
    }
    Ok(got)
}

/// Every batch of every sink read exactly once.
fn check_seen(seen: &[(usize, usize)], per_sink: usize) -> Result<(), String> {
    let distinct: HashSet<_> = seen.iter().collect();
    let all = (0..WORKERS).all(|s| (0..per_sink).all(|q| distinct.contains(&(s, q))));
    if seen.len() == WORKERS * per_sink && distinct.len() == seen.len() && all {
        Ok(())
    } else {
        Err(format!(
            "read {} batches ({} distinct) of {}",
            seen.len(),
            distinct.len(),
            WORKERS * per_sink
        ))
    }
}

// ------------------------------------------------------------------ the rounds

#[derive(Default)]
struct Row {
    name: &'static str,
    sink_mbs: Vec<f64>,
    finalize_mbs: Vec<f64>,
    /// Per round, the largest of the finalize processes' peak growths (KiB), and that
    /// process's file-backed growth.
    finalize_mem_kib: Vec<f64>,
    finalize_file_kib: Vec<f64>,
    combine_secs: Vec<f64>,
    combine_mem_kib: Vec<f64>,
    destroy_secs: Vec<f64>,
    sink_ratio: Vec<f64>,
    finalize_ratio: Vec<f64>,
    failures: Vec<String>,
}

fn push_memory(row: &mut Row, mem_kib: &[(u64, u64)]) {
    if let Some(&(peak, file)) = mem_kib.iter().max() {
        row.finalize_mem_kib.push(peak as f64);
        row.finalize_file_kib.push(file as f64);
    }
}

/// One round of silo's lifecycle on `url`.
fn silo_round(row: &mut Row, url: &str, per_sink: usize, mb: f64) -> Result<(f64, f64), String> {
    let sink = phase("silo-sink", url, per_sink)?;
    let store = silo::open(url).map_err(|e| e.to_string())?;
    let buffering = Buffering::new(&*store, EXECUTION);
    let ids: Vec<Vec<u8>> = (0..WORKERS).map(sink_id).collect();
    let before = memory_before();
    let started = Instant::now();
    buffering
        .combine(&ids, WORKERS as u32, &Partitioning::RoundRobin)
        .map_err(|e| format!("combine: {e}"))?;
    let combine_secs = started.elapsed().as_secs_f64();
    let combine_mem = memory_growth(before);
    let finalize = phase("silo-finalize", url, 0)?;
    check_seen(&finalize.seen, per_sink)?;
    let started = Instant::now();
    let dropped = buffering.destroy().map_err(|e| format!("destroy: {e}"))?;
    let destroy_secs = started.elapsed().as_secs_f64();
    if dropped < (WORKERS * per_sink) as u64 {
        return Err(format!("destroy dropped {dropped} entries"));
    }
    let (sink_mbs, finalize_mbs) = (mb / sink.secs, mb / finalize.secs);
    row.sink_mbs.push(sink_mbs);
    row.finalize_mbs.push(finalize_mbs);
    row.combine_secs.push(combine_secs);
    row.combine_mem_kib
        .extend(combine_mem.map(|(k, _)| k as f64));
    push_memory(row, &finalize.mem_kib);
    row.destroy_secs.push(destroy_secs);
    Ok((sink_mbs, finalize_mbs))
}

/// One round of the incumbent on a fresh SQLite file at `path`.
fn vgi_round(row: &mut Row, path: &str, per_sink: usize, mb: f64) -> Result<(f64, f64), String> {
    let sink = phase("vgi-sink", path, per_sink)?;
    let scan = phase("vgi-scan", path, 0)?;
    check_seen(&scan.seen, per_sink)?;
    let (sink_mbs, scan_mbs) = (mb / sink.secs, mb / scan.secs);
    row.sink_mbs.push(sink_mbs);
    row.finalize_mbs.push(scan_mbs);
    push_memory(row, &scan.mem_kib);
    Ok((sink_mbs, scan_mbs))
}

fn med(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| median(xs.to_vec()))
}

fn fmt_mbs(x: Option<f64>) -> String {
    x.map_or("—".into(), |x| format!("{x:.0}"))
}

pub fn section(reps: usize, quick: bool, dir: &Path) -> (String, Vec<String>) {
    let per_sink = if quick { 64 } else { 256 };
    let batch_bytes = ipc_stream(&batch(0, 0)).len();
    let total_bytes = batch_bytes * per_sink * WORKERS;
    let mb = total_bytes as f64 / 1e6;
    let mut rows = [
        Row {
            name: "silo `fs:`",
            ..Row::default()
        },
        Row {
            name: "silo `sqlite:`",
            ..Row::default()
        },
        Row {
            name: "silo `http://` (`silo serve` on `fs:`)",
            ..Row::default()
        },
        Row {
            name: "vgi `SqliteStorage`",
            ..Row::default()
        },
    ];
    let started = Instant::now();
    for rep in 0..reps {
        let mut got: [Option<(f64, f64)>; SILO_ROWS + 1] = [None; SILO_ROWS + 1];
        // Subjects alternated every round.
        for k in 0..=SILO_ROWS {
            let which = (k + rep) % (SILO_ROWS + 1);
            let root = dir.join(format!("arrow-{rep}-{which}"));
            if let Err(e) = std::fs::create_dir_all(&root) {
                rows[which].failures.push(format!("temp dir: {e}"));
                continue;
            }
            let row = &mut rows[which];
            let result = match which {
                0 => silo_round(
                    row,
                    &format!("fs://{}", root.join("fs").display()),
                    per_sink,
                    mb,
                ),
                1 => silo_round(
                    row,
                    &format!("sqlite://{}", root.join("silo.db").display()),
                    per_sink,
                    mb,
                ),
                2 => silo::open(&format!("fs://{}", root.join("served").display()))
                    .map_err(|e| format!("the served store: {e}"))
                    .and_then(|store| {
                        let server = silo_compat::silo_server(store);
                        silo_round(row, &server.url(), per_sink, mb)
                    }),
                _ => vgi_round(
                    row,
                    &root.join("vgi.db").display().to_string(),
                    per_sink,
                    mb,
                ),
            };
            let _ = std::fs::remove_dir_all(&root);
            match result {
                Ok(r) => got[which] = Some(r),
                Err(e) => row.failures.push(e),
            }
        }
        if let Some((vs, vf)) = got[VGI] {
            for which in 0..SILO_ROWS {
                if let Some((s, f)) = got[which] {
                    rows[which].sink_ratio.push(s / vs);
                    rows[which].finalize_ratio.push(f / vf);
                }
            }
        }
        for (which, r) in got.iter().enumerate() {
            if let Some((s, f)) = r {
                eprintln!(
                    "arrow {}: sink {s:.0} MB/s  finalize {f:.0} MB/s{}",
                    rows[which].name,
                    match got[VGI] {
                        Some((vs, vf)) if which < SILO_ROWS =>
                            format!("  ({:.2}× / {:.2}× vgi)", s / vs, f / vf),
                        _ => String::new(),
                    }
                );
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();

    // ---- the report
    let mib = |kib: f64| kib / 1024.0;
    let batch_mib = batch_bytes as f64 / (1 << 20) as f64;
    let mem = |xs: &[f64]| {
        med(xs).map_or("—".into(), |k| {
            format!("{:.1} MiB ({:.1} batches)", mib(k), mib(k) / batch_mib)
        })
    };
    let file_part = |xs: &[f64]| {
        med(xs)
            .filter(|&k| mib(k) >= 2.0)
            .map_or(String::new(), |k| {
                format!("; {:.0} MiB mapped file", mib(k))
            })
    };
    let ratio = |xs: &[f64]| med(xs).map_or("—".into(), |r| format!("**{r:.2}×**"));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## Arrow batches: `silo-arrow`'s buffering lifecycle against vgi storage\n"
    );
    let _ = writeln!(
        md,
        "Per round, on a fresh store in one temp directory: {WORKERS} sink processes each \
         `Buffering::process` {per_sink} batches of {ROWS} rows (Int64 + 20-byte Utf8; {:.2} MiB \
         as an IPC stream; {:.0} MiB in all), then `combine(.., {WORKERS}, RoundRobin)` in the \
         parent, then {WORKERS} finalize processes (one a partition) read every batch and check \
         every row, then `destroy`. The incumbent, on a fresh vgi `SqliteStorage` (WAL, \
         `synchronous=NORMAL`): {WORKERS} processes each encode the same batches as IPC streams \
         (`StreamWriter`) and `append` them to a log of their own, then {WORKERS} processes each \
         `scan` one log back one entry a call (as silo's finalize reads) and decode and check \
         it. MB/s = IPC bytes (10⁶) / wall time from \"go\" to the last process's \
         end of work (encoding and decoding included on both sides; process exits not); silo / vgi = median of each round's ratio; \
         memory = the largest finalize process's peak resident growth during finalize (VmHWM \
         reset before it; per process; \"mapped file\" = how much of it is file pages mapped by \
         the store, RssFile); median of {reps} rounds ({secs:.0} s in all). Targets \
         (issue 12, on `fs:`): sink ≥ {:.0} GB/s, finalize ≥ {:.0} GB/s, finalize memory ≤ \
         {MEMORY_TARGET_BATCHES:.0} batches.\n",
        batch_mib,
        total_bytes as f64 / (1 << 20) as f64,
        SINK_TARGET_MBS / 1e3,
        FINALIZE_TARGET_MBS / 1e3,
    );
    let _ = writeln!(
        md,
        "| store | sink MB/s | sink / vgi | combine | finalize (vgi: scan) MB/s | finalize / vgi | finalize memory | destroy | verified |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (which, row) in rows.iter().enumerate() {
        let silo = which < SILO_ROWS;
        let secs = |xs: &[f64]| med(xs).map_or("—".into(), |s| format!("{s:.2} s"));
        let _ = writeln!(
            md,
            "| {} | **{}** | {} | {} | **{}** | {} | {}{} | {} | {} |",
            row.name,
            fmt_mbs(med(&row.sink_mbs)),
            if silo {
                ratio(&row.sink_ratio)
            } else {
                "1".into()
            },
            if silo {
                format!(
                    "{} (+{:.0} MiB)",
                    secs(&row.combine_secs),
                    med(&row.combine_mem_kib).map_or(0.0, mib)
                )
            } else {
                "—".into()
            },
            fmt_mbs(med(&row.finalize_mbs)),
            if silo {
                ratio(&row.finalize_ratio)
            } else {
                "1".into()
            },
            mem(&row.finalize_mem_kib),
            file_part(&row.finalize_file_kib),
            if silo {
                secs(&row.destroy_secs)
            } else {
                "—".into()
            },
            if row.failures.is_empty() {
                "ok"
            } else {
                "FAILED"
            }
        );
        eprintln!(
            "arrow {}: sink {} MB/s, finalize {} MB/s, finalize memory {}{}{}",
            row.name,
            fmt_mbs(med(&row.sink_mbs)),
            fmt_mbs(med(&row.finalize_mbs)),
            mem(&row.finalize_mem_kib),
            file_part(&row.finalize_file_kib),
            if silo {
                format!(
                    ", combine {:.2} s, silo / vgi {:.2}× sink {:.2}× finalize",
                    med(&row.combine_secs).unwrap_or(f64::NAN),
                    med(&row.sink_ratio).unwrap_or(f64::NAN),
                    med(&row.finalize_ratio).unwrap_or(f64::NAN)
                )
            } else {
                String::new()
            }
        );
    }
    let fs = &rows[0];
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "—",
    };
    let _ = writeln!(
        md,
        "\nTargets on `fs:`: sink {} MB/s ({}), finalize {} MB/s ({}), finalize memory {} ({}). \
         The combine column is the parent's time and peak resident growth for the round-robin \
         plan.",
        fmt_mbs(med(&fs.sink_mbs)),
        verdict(med(&fs.sink_mbs).map(|x| x >= SINK_TARGET_MBS)),
        fmt_mbs(med(&fs.finalize_mbs)),
        verdict(med(&fs.finalize_mbs).map(|x| x >= FINALIZE_TARGET_MBS)),
        mem(&fs.finalize_mem_kib),
        verdict(med(&fs.finalize_mem_kib).map(|k| mib(k) / batch_mib <= MEMORY_TARGET_BATCHES)),
    );
    let mut failures = Vec::new();
    for (which, row) in rows.iter().enumerate() {
        for f in &row.failures {
            if which < SILO_ROWS {
                failures.push(format!("arrow {}: {f}", row.name));
            } else {
                // The incumbent's failures are reported, not fatal.
                let _ = writeln!(md, "\n- vgi FAILED: {f}");
            }
        }
    }
    (md, failures)
}
