//! `silo replicate`, `silo restore` and `silo serve --replicate` as processes: a shipper
//! SIGKILLed again and again mid-upload under a live writer (no frame lost or doubled), a
//! real S3-compatible server (moto, from python/s3-venv.sh) as the target, and a server
//! shipping while it serves.
//!
//! The S3 test prints a loud SKIPPED line without moto, unless `SILO_REQUIRE_S3=1` (set by
//! `.ci/run`), which makes that a failure.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use silo::FunctionStorage;

fn silo() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_silo"));
    command.env("SILO_LOG", "warn");
    command
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn fs_url(dir: &Path) -> String {
    format!("fs://{}", dir.display())
}

fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

fn kill9(child: &mut Child) {
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// Everything a store holds in the keys the tests write.
fn contents(store: &dyn FunctionStorage, writers: u64) -> Vec<String> {
    let mut out = Vec::new();
    for w in 0..writers {
        let scope = format!("w{w}");
        for (id, v) in store
            .scan(scope.as_bytes(), b"log", b"l", 0, u64::MAX)
            .unwrap()
        {
            out.push(format!("{scope} log {id} {}", v.len()));
        }
        out.push(format!(
            "{scope} counter {}",
            store.counter_get(scope.as_bytes(), b"c", b"n").unwrap()
        ));
    }
    out
}

/// The segment objects' frame ranges, in order (`file://` target).
fn segment_ranges(rep: &Path) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = std::fs::read_dir(rep.join("segments"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            // `NAME#N`: the staging file of an upload killed before its rename (the local
            // target writes a temporary file, then renames it); no object, ignored.
            if !name.ends_with(".slf") {
                return None;
            }
            let first = name.get(..20)?.parse().ok()?;
            let last = name.get(21..41)?.parse().ok()?;
            Some((first, last))
        })
        .collect();
    ranges.sort();
    ranges
}

/// `silo restore` of the latest point of the `file://` replica `rep` into `dest`, opened.
fn restore_latest(rep: &Path, dest: &Path) -> Arc<dyn FunctionStorage> {
    ok(silo()
        .args(["restore", "--from", &file_url(rep), "--to", &fs_url(dest)])
        .output()
        .unwrap());
    silo::open(&fs_url(dest)).unwrap()
}

fn durable(rep: &Path) -> u64 {
    let manifest = std::fs::read_to_string(rep.join("manifest.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    value["durable_frame_no"].as_u64().unwrap()
}

#[test]
fn a_shipper_killed_mid_upload_again_and_again_loses_and_doubles_nothing() {
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("store");
    let rep = root.path().join("rep");
    let url = fs_url(&store_dir);
    let store = silo::open(&format!(
        "{url}?segment_bytes=262144&compact_min_bytes=1048576"
    ))
    .unwrap();
    store.kv_put(b"init", b"k", b"v").unwrap();

    // Two writers: 8-64 KiB appends (uploads take a while) and counter adds.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let store = store.clone();
            let stop = stop.clone();
            let written = written.clone();
            std::thread::spawn(move || {
                let scope = format!("w{w}");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let value = vec![w as u8; 8192 + (i as usize * 7919) % 57344];
                    store
                        .append(scope.as_bytes(), b"log", b"l", &value)
                        .unwrap();
                    store.counter_add(scope.as_bytes(), b"c", b"n", 1).unwrap();
                    written.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    std::thread::sleep(Duration::from_micros(300));
                }
            })
        })
        .collect();

    let mut seen_durable = Vec::new();
    for round in 0..10u64 {
        let mut shipper = silo()
            .args([
                "--store",
                &url,
                "replicate",
                "--to",
                &file_url(&rep),
                "--max-lag",
                "0.02",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150 + (round * 97) % 350));
        kill9(&mut shipper);
        if rep.join("manifest.json").exists() {
            seen_durable.push(durable(&rep));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(written.load(Ordering::Relaxed) > 100, "the writers wrote");
    assert!(
        seen_durable.windows(2).any(|w| w[1] > w[0]),
        "the killed shippers made progress: {seen_durable:?}"
    );
    ok(silo()
        .args([
            "--store",
            &url,
            "replicate",
            "--to",
            &file_url(&rep),
            "--once",
        ])
        .output()
        .unwrap());

    // Every frame exactly once: the objects tile 1..=durable without overlap.
    let ranges = segment_ranges(&rep);
    let mut next = 1;
    for (first, last) in &ranges {
        assert_eq!(
            *first,
            next,
            "objects tile the history: {ranges:?}\n{:?}",
            std::fs::read_dir(rep.join("segments"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| n.to_string_lossy().starts_with(&format!("{first:020}")))
                .collect::<Vec<_>>()
        );
        next = last + 1;
    }
    assert_eq!(next - 1, durable(&rep));

    let copy = restore_latest(&rep, &root.path().join("restored"));
    assert_eq!(contents(&*copy, 2), contents(&*store, 2));
    assert_eq!(copy.kv_get(b"init", b"k").unwrap(), Some(b"v".to_vec()));
}

#[test]
fn serve_replicate_ships_while_serving_and_reports_durable_frame_no() {
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("store");
    let rep = root.path().join("rep");
    let (mut server, port) = common::start_server(
        &fs_url(&store_dir),
        &["--replicate", &file_url(&rep), "--max-lag", "0.05"],
    );
    let client = silo::open(&format!("http://127.0.0.1:{port}")).unwrap();
    for i in 0..200u32 {
        client
            .append(b"w0", b"log", b"l", &i.to_le_bytes())
            .unwrap();
    }
    client.counter_add(b"w0", b"c", b"n", 7).unwrap();
    // Shipped within the lag, without stopping the server.
    let deadline = Instant::now() + Duration::from_secs(20);
    let info = loop {
        let text = ureq::get(&format!("http://127.0.0.1:{port}/v1/info"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let info: serde_json::Value = serde_json::from_str(&text).unwrap();
        if info["durable_frame_no"].as_u64().unwrap_or(0) >= 201 {
            break info;
        }
        assert!(Instant::now() < deadline, "never shipped: {info}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let metrics = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("silo_replication_durable_frame_no"),
        "{metrics}"
    );
    assert!(durable(&rep) >= info["durable_frame_no"].as_u64().unwrap());

    // The last writes before SIGTERM are shipped on the way out.
    client.counter_add(b"w0", b"c", b"n", 1).unwrap();
    // SAFETY: kill(2) on the server this test started.
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    assert!(server.wait().unwrap().success());
    let copy = restore_latest(&rep, &root.path().join("restored"));
    let original = silo::open(&fs_url(&store_dir)).unwrap();
    assert_eq!(copy.counter_get(b"w0", b"c", b"n").unwrap(), 8);
    assert_eq!(contents(&*copy, 1), contents(&*original, 1));
    let stat = ok(silo()
        .args(["--store", &fs_url(&store_dir), "stat"])
        .output()
        .unwrap());
    assert!(stat.contains("durable_frame_no: "), "{stat}");
}

#[test]
fn replicate_refuses_stores_it_cannot_ship() {
    let root = tempfile::tempdir().unwrap();
    let out = silo()
        .args([
            "--store",
            &format!("sqlite://{}/s.db", root.path().display()),
            "replicate",
            "--to",
            &file_url(&root.path().join("rep")),
            "--once",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fs: stores"));
    let out = silo()
        .args([
            "restore",
            "--from",
            &file_url(&root.path().join("none")),
            "--list",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no silo replica"));
}

// ------------------------------------------------------------------------------------- S3

/// moto's S3 server: `SILO_MOTO_SERVER`, else `python/.s3venv/bin/moto_server`.
fn moto_server() -> Option<PathBuf> {
    let path = std::env::var_os("SILO_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/.s3venv/bin/moto_server")
        });
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("SILO_REQUIRE_S3").as_deref() != Ok("1"),
        "no moto_server at {} (run python/s3-venv.sh); SILO_REQUIRE_S3=1 makes that a failure",
        path.display()
    );
    eprintln!(
        "SKIPPED: S3 replication test: no moto_server at {} (run python/s3-venv.sh)",
        path.display()
    );
    None
}

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

fn start_moto(server: &Path) -> Moto {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&moto.endpoint).call().is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    moto
}

fn with_s3<'a>(command: &'a mut Command, moto: &Moto) -> &'a mut Command {
    command
        .env("AWS_ENDPOINT", &moto.endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
}

#[test]
fn an_s3_compatible_server_holds_a_replica_that_restores_to_any_point() {
    let Some(server) = moto_server() else {
        return;
    };
    let moto = start_moto(&server);
    // moto takes an unsigned bucket creation.
    ureq::put(&format!("{}/backups", moto.endpoint))
        .send_empty()
        .unwrap();
    let target = "s3://backups/silo/one";
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("store");
    let url = fs_url(&store_dir);
    let store = silo::open(&url).unwrap();

    let mut marks = Vec::new();
    for round in 0..3u32 {
        for i in 0..50u32 {
            store
                .append(
                    b"w0",
                    b"log",
                    b"l",
                    &vec![round as u8; 100 + i as usize * 50],
                )
                .unwrap();
            store.counter_add(b"w0", b"c", b"n", 1).unwrap();
        }
        ok(with_s3(&mut silo(), &moto)
            .args(["--store", &url, "replicate", "--to", target, "--once"])
            .output()
            .unwrap());
        marks.push((contents(&*store, 1), silo::Clock::system().now_ms()));
        std::thread::sleep(Duration::from_millis(30));
    }
    let listed = ok(with_s3(&mut silo(), &moto)
        .args(["restore", "--from", target, "--list"])
        .output()
        .unwrap());
    assert!(listed.contains("earliest: frame 1"), "{listed}");

    // Latest, and the moment after the second round.
    let latest = root.path().join("latest");
    ok(with_s3(&mut silo(), &moto)
        .args(["restore", "--from", target, "--to", &fs_url(&latest)])
        .output()
        .unwrap());
    assert_eq!(
        contents(&*silo::open(&fs_url(&latest)).unwrap(), 1),
        marks[2].0
    );
    let middle = root.path().join("middle");
    let at = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(marks[1].1 as u64),
    )
    .to_string();
    ok(with_s3(&mut silo(), &moto)
        .args([
            "restore",
            "--from",
            target,
            "--to",
            &fs_url(&middle),
            "--at",
            &at,
        ])
        .output()
        .unwrap());
    assert_eq!(
        contents(&*silo::open(&fs_url(&middle)).unwrap(), 1),
        marks[1].0
    );

    // An object damaged in the bucket: the restore names it. (moto does not check
    // signatures, but wants an Authorization header to overwrite an object.)
    let listing = ureq::get(&format!(
        "{}/backups?list-type=2&prefix=silo/one/segments/",
        moto.endpoint
    ))
    .header("Authorization", "AWS test:x")
    .call()
    .unwrap()
    .body_mut()
    .read_to_string()
    .unwrap();
    let key = listing
        .split("<Key>")
        .nth(1)
        .and_then(|rest| rest.split("</Key>").next())
        .expect("a segment object is listed")
        .to_owned();
    ureq::put(&format!("{}/backups/{key}", moto.endpoint))
        .header("Authorization", "AWS test:x")
        .header("Content-Type", "application/octet-stream")
        .send(&b"not the frames"[..])
        .unwrap();
    let out = with_s3(&mut silo(), &moto)
        .args([
            "restore",
            "--from",
            target,
            "--to",
            &fs_url(&root.path().join("bad")),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let name = key.rsplit('/').next().unwrap();
    let mut stderr = String::new();
    out.stderr.as_slice().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains(name), "the error names {name}: {stderr}");
}
