//! `silo serve` as a process: the PORT line, graceful shutdown on SIGTERM, and a SIGKILL
//! during a write load that loses no acknowledged write.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use silo::FunctionStorage;
use silo::http::{HttpOptions, HttpStorage};

use common::{start_server, start_server_with_env_token};

fn client(port: u16, retries: u32) -> HttpStorage {
    HttpStorage::new(
        &format!("http://127.0.0.1:{port}"),
        HttpOptions {
            retries,
            timeout: Duration::from_secs(5),
            ..HttpOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/s.db", dir.path().display());
    let (mut child, port) = start_server(&url, &[]);
    client(port, 0).kv_put(b"s", b"k", b"v").unwrap();
    send_signal(&child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
}

fn send_signal(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn sigkill_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/s.db", dir.path().display());
    let (mut server, port) = start_server(&url, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u8)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let c = client(port, 0);
                let mut acked = Vec::new();
                for seq in 0u32.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = [&[w][..], &seq.to_be_bytes()].concat();
                    let ok = c.kv_put(b"load", &key, &key).is_ok()
                        && c.append(b"load", b"", &[w], &key).is_ok()
                        && c.queue_push(b"load", std::slice::from_ref(&key)).is_ok();
                    if !ok {
                        break;
                    }
                    acked.push(key);
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    server.kill().unwrap();
    server.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    let acked: Vec<Vec<u8>> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(acked.len() > 50, "the load ran: {} writes", acked.len());

    let (mut again, port) = start_server(&url, &[]);
    let c = client(port, 3);
    let queued = c.queue_len(b"load").unwrap();
    assert!(
        queued >= acked.len() as u64,
        "{queued} queued < {} acknowledged",
        acked.len()
    );
    for w in 0..4u8 {
        let log = c.scan(b"load", b"", &[w], 0, u64::MAX).unwrap();
        let mine: Vec<&Vec<u8>> = acked.iter().filter(|k| k[0] == w).collect();
        assert!(log.len() >= mine.len());
        for (entry, key) in log.iter().zip(&mine) {
            assert_eq!(&&entry.1, key, "log of writer {w} in order");
        }
    }
    for key in &acked {
        assert_eq!(
            c.kv_get(b"load", key).unwrap().as_ref(),
            Some(key),
            "acknowledged put survives"
        );
    }
    again.kill().unwrap();
    again.wait().unwrap();
}

/// An empty token (flag or environment) would serve without auth: refused at start-up, as
/// is a store URL that does not parse; both are usage errors (exit 2) that say why.
#[test]
fn an_empty_token_or_a_bad_store_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/state.db", dir.path().display());
    let run = |args: &[&str], env_token: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_silo"));
        cmd.args(args).env_remove("VGI_STORAGE_TOKEN");
        if let Some(t) = env_token {
            cmd.env("VGI_STORAGE_TOKEN", t);
        }
        let out = cmd
            .args(["--bind", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--store", &url, "serve", "--token", ""], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("token is empty"), "{err}");
    let (code, err) = run(&["--store", &url, "serve"], Some(""));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("token is empty"), "{err}");
    let (code, err) = run(&["--store", "nosuch://x", "serve"], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nosuch"), "{err}");
}

/// A tokens file wins over a token in the environment (workers on the same host often have
/// VGI_STORAGE_TOKEN set): the server starts multi-tenant instead of refusing.
#[test]
fn a_tokens_file_wins_over_an_env_token() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/state.db", dir.path().display());
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "alpha-token-0123456789 alpha\n").unwrap();
    // The helper fails unless the server prints its PORT line, i.e. it started.
    let tokens = tokens.to_string_lossy().into_owned();
    let (mut child, _port) = start_server_with_env_token(
        &url,
        &["--tokens", &tokens],
        Some("a-worker-token-0123456789"),
    );
    let _ = child.kill();
    let _ = child.wait();
}
