//! `silo serve` driven by code nobody here wrote: `vgi-python`'s own remote storage client
//! (`FunctionStorageCfDo`) and a real Python VGI worker pool, run from the scripts in
//! `python/` in the venv that `python/venv.sh` makes (Python 3.13, `vgi-python` pinned in
//! `python/requirements.txt`).
//!
//! Without the venv these tests print a loud SKIPPED line, unless `SILO_REQUIRE_PYTHON=1`
//! (set by `.ci/run`), which makes a missing venv a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's Python: `SILO_PYTHON`, else `python/.venv/bin/python`; `None` (after a loud
/// line) when there is none and none is required.
fn python() -> Option<PathBuf> {
    let python = std::env::var_os("SILO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("python/.venv/bin/python"));
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var("SILO_REQUIRE_PYTHON").as_deref() != Ok("1"),
        "no Python venv at {} (run python/venv.sh); SILO_REQUIRE_PYTHON=1 makes that a failure",
        python.display()
    );
    eprintln!(
        "SKIPPED: vgi-python tests: no venv at {} (run python/venv.sh)",
        python.display()
    );
    None
}

/// A `silo serve` child, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(store: &str, extra: &[&str]) -> Server {
    let (child, port) = common::start_server(store, extra);
    Server { child, port }
}

impl Server {
    /// The URL a Python worker sets as `VGI_CF_DO_URL`.
    fn python_url(&self) -> String {
        format!("http://127.0.0.1:{}/python", self.port)
    }

    fn metrics(&self) -> String {
        ureq::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }
}

/// Runs `python/<script>` with `env`; fails the test with its output unless it exits 0 and
/// says `ok`/`PASS` on its last line.
fn run_script(python: &Path, script: &str, env: &[(&str, &str)]) -> String {
    let mut command = Command::new(python);
    command
        .arg(root().join("python").join(script))
        .current_dir(root())
        .env_remove("VGI_CF_DO_TOKEN")
        .env_remove("VGI_WORKER_SHARED_STORAGE");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        out.status.success() && (last.starts_with("ok") || last.starts_with("PASS")),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    eprintln!("{script}: {last}");
    last
}

/// A temporary directory and store URLs in it.
fn stores(dir: &Path) -> Vec<String> {
    vec![
        format!("sqlite://{}/state.db", dir.display()),
        format!("fs://{}/fs", dir.display()),
        "memory:".into(),
    ]
}

#[test]
fn every_operation_answers_as_vgi_python_sqlite_does() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()) {
        let server = serve(&store, &[]);
        let url = server.python_url();
        run_script(&python, "test_differential.py", &[("VGI_CF_DO_URL", &url)]);
    }
}

#[test]
fn every_operation_answers_as_vgi_python_sqlite_does_on_postgres() {
    let Some(python) = python() else { return };
    let Some(cluster) = silo::conformance::postgres::cluster() else {
        return;
    };
    let server = serve(&cluster.fresh_url(""), &[]);
    let url = server.python_url();
    run_script(
        &python,
        "test_differential.py",
        &[("VGI_CF_DO_URL", &url), ("SILO_TEST_OPS", "1500")],
    );
    run_script(&python, "test_lost_reply.py", &[("VGI_CF_DO_URL", &url)]);
}

#[test]
fn retried_writes_after_lost_replies_apply_once() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()) {
        let server = serve(&store, &[]);
        run_script(
            &python,
            "test_lost_reply.py",
            &[("VGI_CF_DO_URL", &server.python_url())],
        );
    }
}

#[test]
fn tenants_and_shard_keys_are_isolated_and_tokens_checked() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let (a, b) = (
        "alpha-token-0123456789abcdef",
        "beta-token-0123456789abcdef",
    );
    std::fs::write(&tokens, format!("{a} alpha\n{b} beta\n")).unwrap();
    let store = format!("sqlite://{}/state.db", dir.path().display());
    let server = serve(&store, &["--tokens", tokens.to_str().unwrap()]);
    let url = server.python_url();
    run_script(
        &python,
        "test_isolation.py",
        &[
            ("SILO_URL_PY", &url),
            ("SILO_TOKEN_A", a),
            ("SILO_TOKEN_B", b),
        ],
    );
    // A tenant's differential run, through its prefix.
    run_script(
        &python,
        "test_differential.py",
        &[
            ("VGI_CF_DO_URL", &url),
            ("VGI_CF_DO_TOKEN", a),
            ("SILO_TEST_OPS", "1000"),
        ],
    );
}

/// The requests the server counted for `op`, from `/metrics`.
fn requests(metrics: &str, op: &str) -> u64 {
    let needle = format!("silo_requests_total{{op=\"{op}\"}}");
    metrics
        .lines()
        .filter(|l| l.starts_with(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_python_worker_pool_keeps_its_buffering_state_on_silo_serve() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/state.db", dir.path().display());
    let server = serve(&store, &[]);
    let url = server.python_url();
    run_script(
        &python,
        "test_worker_e2e.py",
        &[
            ("VGI_WORKER_SHARED_STORAGE", "cloudflare-do"),
            ("VGI_CF_DO_URL", &url),
        ],
    );
    // The workers' state went through this server.
    std::thread::sleep(Duration::from_millis(50));
    let metrics = server.metrics();
    for op in [
        "StatePutMany",
        "StateGetMany",
        "Append",
        "StateDrain",
        "ClearCounted",
    ] {
        assert!(requests(&metrics, op) > 0, "no {op} reached the server");
    }
}
