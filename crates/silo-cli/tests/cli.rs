//! The `silo` binary end to end: each subcommand against a real SQLite store, exit codes,
//! byte-exact input and output, and help text.

use std::io::Write;
use std::process::{Command, Output, Stdio};

struct Env {
    _dir: tempfile::TempDir,
    url: String,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cli.db", dir.path().display());
    Env { _dir: dir, url }
}

fn silo(e: &Env, args: &[&str]) -> Output {
    silo_stdin(e, args, b"")
}

fn silo_stdin(e: &Env, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_silo"))
        .arg("--store")
        .arg(&e.url)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap()
}

#[test]
fn kv_text_hex_stdin_and_file() {
    let e = env();
    ok(silo(&e, &["kv", "put", "q1", "greeting", "hello world"]));
    assert_eq!(
        ok(silo(&e, &["kv", "get", "q1", "greeting"])),
        "hello world\n"
    );
    ok(silo(
        &e,
        &["--hex", "kv", "put", "00ff", "2f2e2e", "deadbeef00"],
    ));
    assert_eq!(
        ok(silo(&e, &["--hex", "kv", "get", "00ff", "2f2e2e"])),
        "deadbeef00\n"
    );
    ok(silo_stdin(
        &e,
        &["kv", "put", "q1", "bin", "-"],
        b"\x00\x01\xff",
    ));
    let raw = silo(&e, &["--raw", "kv", "get", "q1", "bin"]);
    assert_eq!(raw.stdout, b"\x00\x01\xff", "--raw is byte exact");
    let not_text = silo(&e, &["kv", "get", "q1", "bin"]);
    assert_eq!(code(&not_text), 0);
    assert_eq!(
        not_text.stdout, b"0001ff\n",
        "a value that is not text prints as hex"
    );
    assert!(String::from_utf8_lossy(&not_text.stderr).contains("--hex"));

    // A pop removes the item before it is printed: it must come out in a printable form,
    // never be lost to an encoding error.
    ok(silo_stdin(&e, &["queue", "push", "q2", "-"], b"\xfe\x00ok"));
    let popped = silo(&e, &["queue", "pop", "q2"]);
    assert_eq!(
        code(&popped),
        0,
        "{}",
        String::from_utf8_lossy(&popped.stderr)
    );
    assert_eq!(popped.stdout, b"fe006f6b\n");
    assert!(String::from_utf8_lossy(&popped.stderr).contains("not UTF-8"));
    let file = e._dir.path().join("value.bin");
    std::fs::write(&file, b"from a file").unwrap();
    ok(silo(
        &e,
        &["kv", "put", "q1", "f", &format!("@{}", file.display())],
    ));
    assert_eq!(ok(silo(&e, &["kv", "get", "q1", "f"])), "from a file\n");
    ok(silo(&e, &["kv", "del", "q1", "greeting"]));
    let missing = silo(&e, &["kv", "get", "q1", "greeting"]);
    assert_eq!(code(&missing), 1, "missing key exits 1");
    assert!(missing.stdout.is_empty());
}

#[test]
fn log_queue_counter_clear_gc_stat() {
    let e = env();
    assert_eq!(
        ok(silo(&e, &["log", "append", "s", "ns", "l", "one"])),
        "1\n"
    );
    assert_eq!(
        ok(silo(&e, &["log", "append", "s", "ns", "l", "two"])),
        "2\n"
    );
    assert_eq!(
        ok(silo(&e, &["log", "scan", "s", "ns", "l"])),
        "1\tone\n2\ttwo\n"
    );
    assert_eq!(
        ok(silo(&e, &["log", "scan", "s", "ns", "l", "--after", "1"])),
        "2\ttwo\n"
    );

    ok(silo(&e, &["queue", "push", "s", "a", "b", "c"]));
    assert_eq!(ok(silo(&e, &["queue", "len", "s"])), "3\n");
    assert_eq!(ok(silo(&e, &["queue", "pop", "s"])), "a\n");
    let claim = ok(silo(&e, &["queue", "claim", "s", "--lease", "30"]));
    let fields: Vec<&str> = claim.trim_end().split('\t').collect();
    assert_eq!(&fields[1..], ["1", "b"]);
    ok(silo(&e, &["queue", "ack", "s", fields[0]]));
    assert_eq!(
        code(&silo(&e, &["queue", "ack", "s", fields[0]])),
        1,
        "second ack exits 1"
    );
    assert_eq!(ok(silo(&e, &["queue", "pop", "s"])), "c\n");
    assert_eq!(
        code(&silo(&e, &["queue", "pop", "s"])),
        1,
        "empty queue exits 1"
    );

    assert_eq!(ok(silo(&e, &["counter", "add", "s", "n", "c", "5"])), "5\n");
    assert_eq!(
        ok(silo(&e, &["counter", "add", "s", "n", "c", "-7"])),
        "-2\n"
    );
    assert_eq!(ok(silo(&e, &["counter", "get", "s", "n", "c"])), "-2\n");

    let stat = ok(silo(&e, &["stat"]));
    assert!(
        stat.contains("backend: sqlite") && stat.contains("log_entries: 2"),
        "{stat}"
    );
    assert_eq!(
        ok(silo(&e, &["clear", "s"])),
        "3\n",
        "two log entries and a counter"
    );
    assert_eq!(ok(silo(&e, &["counter", "get", "s", "n", "c"])), "0\n");
    ok(silo(&e, &["kv", "put", "t", "k", "v"]));
    assert_eq!(ok(silo(&e, &["gc", "--ttl", "3600"])), "0\n");
    assert_eq!(ok(silo(&e, &["gc", "--ttl", "0"])), "1\n");
}

#[test]
fn errors_are_one_clear_line_with_documented_codes() {
    let e = Env {
        _dir: tempfile::tempdir().unwrap(),
        url: "bogus://nowhere".into(),
    };
    let out = silo(&e, &["stat"]);
    assert_eq!(code(&out), 2, "a bad --store is a usage error");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("silo: ") && err.contains("bogus"), "{err}");

    let e = env();
    assert_eq!(
        code(&silo(&e, &["--hex", "kv", "get", "zz", "00"])),
        2,
        "bad hex"
    );
    assert_eq!(
        code(&silo(&e, &["kv", "frobnicate"])),
        2,
        "unknown subcommand"
    );
    let file = e._dir.path().join("not-a-db");
    std::fs::write(&file, b"hello, not sqlite at all".repeat(100)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_silo"))
        .args(["--store", &format!("sqlite://{}", file.display()), "stat"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3);
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt store"));
}

/// An `fs:` store through the binary: every call is its own process, so each one reopens the
/// directory and finds what the last one wrote; a directory that is not a store is refused.
#[test]
fn fs_store_across_invocations() {
    let dir = tempfile::tempdir().unwrap();
    let e = Env {
        url: format!("fs://{}/store", dir.path().display()),
        _dir: dir,
    };
    ok(silo(&e, &["kv", "put", "q1", "k", "v1"]));
    ok(silo(&e, &["queue", "push", "jobs", "a", "b"]));
    assert_eq!(ok(silo(&e, &["kv", "get", "q1", "k"])), "v1\n");
    assert_eq!(ok(silo(&e, &["queue", "pop", "jobs"])), "a\n");
    assert_eq!(ok(silo(&e, &["queue", "pop", "jobs"])), "b\n");
    assert_eq!(code(&silo(&e, &["queue", "pop", "jobs"])), 1);
    assert!(ok(silo(&e, &["stat"])).contains("fs"));

    let foreign = e._dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), b"mine").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_silo"))
        .args(["--store", &format!("fs://{}", foreign.display()), "stat"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a silo fs: store"));
    assert_eq!(
        std::fs::read_dir(&foreign).unwrap().count(),
        1,
        "nothing written into a foreign directory"
    );
}

#[test]
fn every_subcommand_has_help() {
    let e = env();
    for args in [
        &["--help"][..],
        &["stat", "--help"],
        &["kv", "--help"],
        &["kv", "get", "--help"],
        &["kv", "put", "--help"],
        &["kv", "del", "--help"],
        &["log", "append", "--help"],
        &["log", "scan", "--help"],
        &["queue", "push", "--help"],
        &["queue", "pop", "--help"],
        &["queue", "len", "--help"],
        &["queue", "claim", "--help"],
        &["queue", "ack", "--help"],
        &["counter", "get", "--help"],
        &["counter", "add", "--help"],
        &["clear", "--help"],
        &["gc", "--help"],
    ] {
        let help = ok(silo(&e, args));
        assert!(help.contains("Usage:"), "{args:?}: {help}");
    }
    assert!(ok(silo(&e, &["--help"])).contains("Exit status"));
}
