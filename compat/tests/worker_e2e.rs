//! The example VGI worker (`src/bin/silo-example-worker.rs`, on the `vgi` crate 0.22) driven by a
//! client nobody here wrote: vgi-python 0.31.3's `Client.table_buffering_function`, from
//! `python/test_rust_worker_e2e.py` in the venv `python/venv.sh vgi031` makes. Four pooled
//! worker processes; the sink, combine and finalize RPCs of a query land in different ones;
//! every output row is checked against a reference; afterwards the store holds nothing.
//!
//! Without the venv these tests print a loud SKIPPED line, unless `SILO_REQUIRE_PYTHON=1`
//! (set by `.ci/run`), which makes a missing venv a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use silo_compat::silo_server;

/// The vgi-python 0.31.3 venv's Python: `SILO_PYTHON_VGI031`, else
/// `python/.venv-vgi031/bin/python`; `None` (after a loud line) when there is none and none
/// is required.
fn python() -> Option<PathBuf> {
    let python = std::env::var_os("SILO_PYTHON_VGI031")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("python/.venv-vgi031/bin/python"));
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var("SILO_REQUIRE_PYTHON").as_deref() != Ok("1"),
        "no vgi-python 0.31.3 venv at {} (run python/venv.sh vgi031); SILO_REQUIRE_PYTHON=1 \
         makes that a failure",
        python.display()
    );
    eprintln!(
        "SKIPPED: vgi-python end-to-end test: no venv at {} (run python/venv.sh vgi031)",
        python.display()
    );
    None
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the driver against the example worker with `worker_env` (the workers' storage
/// settings); panics with its output unless it passed.
fn drive(python: &Path, worker_env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(python);
    cmd.arg(root().join("python/test_rust_worker_e2e.py"))
        .arg("--worker")
        .arg(env!("CARGO_BIN_EXE_silo-example-worker"));
    for (k, v) in worker_env {
        cmd.arg("--worker-env").arg(format!("{k}={v}"));
    }
    // The client process keeps no storage settings of its own (the driver refuses them).
    for (k, _) in std::env::vars() {
        if k.starts_with("VGI_WORKER_SHARED_STORAGE")
            || k.starts_with("VGI_STORAGE_")
            || k == "SILO_STORAGE_URL"
        {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("run python/test_rust_worker_e2e.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "the end-to-end driver failed:\n{text}"
    );
    let summary = text
        .lines()
        .find(|l| l.starts_with("PASS: "))
        .unwrap_or_else(|| panic!("no PASS line:\n{text}"));
    assert!(
        summary.contains("4 queries ok") && summary.contains("in 3/4 queries"),
        "{summary}"
    );
    text
}

fn assert_empty(store: &Arc<dyn silo::FunctionStorage>) {
    let stats = store.stat().unwrap();
    assert_eq!(
        (
            stats.scopes,
            stats.state_entries,
            stats.log_entries,
            stats.counters
        ),
        (0, 0, 0, 0),
        "the queries left state behind: {stats:?}"
    );
}

/// `silo serve` holds everything: the rows (silo's http client) and the `vgi` crate's own
/// records (its `HttpStorage`, on the same port).
#[test]
fn the_example_worker_pool_runs_queries_for_vgi_pythons_client_on_silo_serve() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = silo::open(&format!("fs://{}/store", dir.path().display())).unwrap();
    let server = silo_server(store.clone());
    let url = server.url();
    drive(
        &python,
        &[
            ("VGI_WORKER_SHARED_STORAGE", "http"),
            ("VGI_STORAGE_URL", &url),
        ],
    );
    // The rows went through the server: fetch its counts of what it served.
    let metrics = http_get(&format!("{url}/metrics"));
    for op in [
        "StatePut",
        "StatePutMany",
        "StateScan",
        "KvPut",
        "ClearCounted",
    ] {
        let needle = format!("silo_requests_total{{op=\"{op}\"}} ");
        let n: u64 = metrics
            .lines()
            .filter_map(|l| l.strip_prefix(&needle)?.trim().parse::<u64>().ok())
            .sum();
        assert!(n > 0, "no {op} reached the server:\n{metrics}");
    }
    assert_empty(&store);
}

/// A local `fs:` store shared by the pool's processes (the `vgi` crate's own records in its
/// default SQLite file).
#[test]
fn the_example_worker_pool_runs_queries_on_a_local_fs_store() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("fs://{}/store", dir.path().display());
    drive(&python, &[("SILO_STORAGE_URL", &url)]);
    let store = silo::open(&url).unwrap();
    assert!(
        store.stat().unwrap().bytes_on_disk.unwrap_or(0) > 100_000,
        "the rows never reached the store"
    );
    assert_empty(&store);
}

fn http_get(url: &str) -> String {
    let mut stream =
        std::net::TcpStream::connect(url.trim_start_matches("http://").split('/').next().unwrap())
            .unwrap();
    use std::io::{Read, Write};
    let path = format!(
        "/{}",
        url.trim_start_matches("http://").split_once('/').unwrap().1
    );
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}
