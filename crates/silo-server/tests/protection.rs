//! The server protects itself before it trusts a caller, seen from outside over real sockets:
//! the token is checked before any body byte is read; oversized bodies, lists and replies are
//! refused with clear messages (and a drain whose reply cannot be sent is rolled back);
//! concurrent requests, in-flight body bytes and open connections are bounded, with `503` and
//! `Retry-After` for the excess; half-sent headers, idle keep-alive connections and slow bodies
//! time out.
//!
//! Raw `TcpStream`s are used wherever the test needs control over which bytes are sent when.
//! Every read has a socket timeout, so a server that fails to answer fails the test instead of
//! hanging it. Requests that are expected to be refused before their body is read are sent
//! without it, or with a small one in the same write as the head: a server that closes a socket
//! with unread bytes in it resets the connection, which could swallow the answer under test.

mod common;

use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{PROMPT, Reply, TestServer, connect, read_reply, send, sqlite_url};
use silo::http::{HttpOptions, HttpStorage};
use silo::wire::{self, Bytes, StorageOp, StorageRequest};
use silo::{Error, FunctionStorage, KeyRange};
use silo_server::{Auth, Config, Limits};

/// A server over a fresh SQLite store, with `configure` applied to the default config.
fn server_with(
    configure: impl FnOnce(Config) -> Config,
) -> (tempfile::TempDir, String, TestServer) {
    let (dir, url) = sqlite_url("");
    let server = common::start(configure(Config::new(silo::open(&url).unwrap())));
    (dir, url, server)
}

/// The head of a `POST /rpc` declaring `length` body bytes.
fn rpc_head(length: usize, token: Option<&str>) -> Vec<u8> {
    let mut head = format!(
        "POST /rpc HTTP/1.1\r\nHost: silo\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {length}\r\n"
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// A whole `POST /rpc` of `body`, answered.
fn rpc(server: &TestServer, body: &[u8]) -> Reply {
    send(server, &[&rpc_head(body.len(), None)[..], body].concat())
}

fn encode(op: StorageOp) -> Vec<u8> {
    wire::encode(&StorageRequest {
        idempotency_key: None,
        op,
    })
    .unwrap()
}

fn b(bytes: &[u8]) -> Bytes {
    Bytes(bytes.to_vec())
}

/// A `KvPut` request whose body is exactly `length` bytes.
fn kv_put_of_length(key: &[u8], length: usize) -> Vec<u8> {
    let empty = encode(StorageOp::KvPut {
        scope: b(b"s"),
        key: b(key),
        value: b(b""),
    });
    let body = encode(StorageOp::KvPut {
        scope: b(b"s"),
        key: b(key),
        value: Bytes(vec![7; length - empty.len()]),
    });
    assert_eq!(body.len(), length);
    body
}

/// A small request that always succeeds.
fn ping() -> Vec<u8> {
    encode(StorageOp::KvGet {
        scope: b(b"s"),
        key: b(b"k"),
    })
}

/// `GET /metrics`, on a connection of its own.
fn metrics(server: &TestServer) -> String {
    let reply = send(
        server,
        b"GET /metrics HTTP/1.1\r\nHost: silo\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.text()
}

/// The value of one metric line (`name{labels}` exactly) in `GET /metrics`.
fn metric(server: &TestServer, series: &str) -> u64 {
    let text = metrics(server);
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in {text}"))
        .parse()
        .unwrap()
}

/// Reads until the server closes the connection (EOF or reset); panics when it is still open
/// at `deadline`.
fn expect_closed_by(stream: &mut TcpStream, deadline: Instant, what: &str) {
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what}: still open at the deadline");
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), IoErrorKind::WouldBlock | IoErrorKind::TimedOut) => {
                panic!("{what}: still open at the deadline")
            }
            Err(e) if e.kind() == IoErrorKind::Interrupted => continue,
            Err(_) => return, // reset: closed too
        }
    }
}

/// Sends a request on `stream` and expects no answer for `wait`: a liveness probe, not a
/// timing measurement (the server owes no answer at all while the condition holds).
fn expect_no_answer_for(stream: &mut TcpStream, wait: Duration, what: &str) {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut chunk = [0u8; 64];
    match stream.read(&mut chunk) {
        Err(e) if matches!(e.kind(), IoErrorKind::WouldBlock | IoErrorKind::TimedOut) => {}
        other => panic!("{what}: expected no answer yet, got {other:?}"),
    }
    stream.set_read_timeout(Some(PROMPT)).unwrap();
}

#[test]
fn token_is_checked_before_the_body_is_read() {
    let (_dir, _url, server) = server_with(|c| Config {
        auth: Auth::Token("s3cret-token-0123".into()),
        ..c
    });
    // 300 MB declared, none sent: a server that read (or waited for) the body before checking
    // the token would not answer at all.
    for token in [None, Some("wrong-token-0123"), Some("s3cret-token-012")] {
        let mut stream = connect(&server);
        stream.write_all(&rpc_head(300_000_000, token)).unwrap();
        let reply = read_reply(&mut stream);
        assert_eq!(reply.status, 401, "token {token:?}: {reply:?}");
        assert_eq!(
            reply.header("x-silo-error"),
            Some("unauthorized"),
            "{reply:?}"
        );
    }
    // The other routes behind the token are fenced the same way.
    let reply = send(
        &server,
        b"GET /metrics HTTP/1.1\r\nHost: silo\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.status, 401, "{reply:?}");

    // The right token is let through: now the server does wait for the body, and then serves.
    let body = ping();
    let mut stream = connect(&server);
    stream
        .write_all(&rpc_head(body.len(), Some("s3cret-token-0123")))
        .unwrap();
    expect_no_answer_for(
        &mut stream,
        Duration::from_millis(200),
        "an authorized request before its body",
    );
    stream.write_all(&body).unwrap();
    let reply = read_reply(&mut stream);
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[test]
fn oversized_declared_body_gets_413_before_it_is_sent() {
    let (_dir, _url, server) = server_with(|c| Config {
        auth: Auth::Token("s3cret-token-0123".into()),
        max_body_bytes: 4096,
        ..c
    });
    for declared in [4097, 300_000_000] {
        let mut stream = connect(&server);
        stream
            .write_all(&rpc_head(declared, Some("s3cret-token-0123")))
            .unwrap();
        let reply = read_reply(&mut stream);
        assert_eq!(reply.status, 413, "{declared}: {reply:?}");
        assert!(reply.text().contains("4096"), "names the limit: {reply:?}");
        assert_eq!(reply.header("x-silo-error"), Some("invalid_input"));
    }
    // A body at the limit is read and served.
    let body = kv_put_of_length(b"k", 4096);
    let mut stream = connect(&server);
    stream
        .write_all(&[&rpc_head(body.len(), Some("s3cret-token-0123"))[..], &body].concat())
        .unwrap();
    let reply = read_reply(&mut stream);
    assert_eq!(reply.status, 200, "{reply:?}");
}

/// Sends `body` as a whole request on new connections until the server answers it with
/// `503`, which proves that the request the caller holds open has taken the resources it
/// needs; a `200` means it had not reached the server yet, so try again. (The body goes in
/// the same write as the head and is small, so the server has it all in hand when it refuses
/// the request: no unread bytes to reset the connection with. A probe that sent only its head
/// could itself take the resources and starve the held request instead.) Returns the `503`
/// and how long it took.
fn until_overloaded(server: &TestServer, body: &[u8]) -> (Reply, Duration) {
    let deadline = Instant::now() + PROMPT;
    loop {
        let started = Instant::now();
        let reply = rpc(server, body);
        let waited = started.elapsed();
        if reply.status == 503 {
            return (reply, waited);
        }
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(Instant::now() < deadline, "never overloaded");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn excess_concurrent_requests_wait_then_get_503_with_retry_after() {
    let (_dir, _url, server) = server_with(|c| Config {
        limits: Limits {
            max_concurrent_requests: 1,
            queue_wait: Duration::from_millis(200),
            ..Default::default()
        },
        ..c
    });
    // The one slot: a request whose body is still arriving.
    let body = kv_put_of_length(b"held", 1000);
    let mut held = connect(&server);
    held.write_all(&rpc_head(body.len(), None)).unwrap();
    held.write_all(&body[..500]).unwrap();

    let ping = ping();
    let (reply, waited) = until_overloaded(&server, &ping);
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.header("retry-after").is_some(), "{reply:?}");
    assert_eq!(reply.header("x-silo-error"), Some("unavailable"));
    assert!(
        reply.text().contains("max-concurrent-requests"),
        "{reply:?}"
    );
    assert!(
        waited >= Duration::from_millis(150),
        "the request waited for the slot (queue_wait 200 ms) before giving up: {waited:?}"
    );
    assert!(metric(&server, "silo_rejected_total{reason=\"overloaded\"}") >= 1);

    // The held request completes, and the slot is free again.
    held.write_all(&body[500..]).unwrap();
    let reply = read_reply(&mut held);
    assert_eq!(
        reply.status, 200,
        "the held request itself is served: {reply:?}"
    );
    let reply = rpc(&server, &ping);
    assert_eq!(reply.status, 200, "{reply:?}");

    // A held request whose caller goes away frees its slot too.
    let mut held = connect(&server);
    held.write_all(&rpc_head(body.len(), None)).unwrap();
    held.write_all(&body[..500]).unwrap();
    let (reply, _) = until_overloaded(&server, &ping);
    assert_eq!(reply.status, 503, "{reply:?}");
    drop(held);
    let deadline = Instant::now() + PROMPT;
    loop {
        let reply = rpc(&server, &ping);
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(
            Instant::now() < deadline,
            "the slot of a closed connection was never freed"
        );
    }
}

#[test]
fn inflight_body_bytes_are_bounded() {
    let (_dir, _url, server) = server_with(|c| Config {
        max_body_bytes: 64 << 10,
        limits: Limits {
            max_inflight_bytes: 64 << 10,
            queue_wait: Duration::from_millis(200),
            ..Default::default()
        },
        ..c
    });
    // 60 KiB reserved by a request whose body is half sent.
    let big = kv_put_of_length(b"big", 60 << 10);
    let mut held = connect(&server);
    held.write_all(&rpc_head(big.len(), None)).unwrap();
    held.write_all(&big[..30 << 10]).unwrap();

    // 10 KiB more do not fit in the 4 KiB left.
    let small = kv_put_of_length(b"small", 10 << 10);
    let (reply, _) = until_overloaded(&server, &small);
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.header("retry-after").is_some(), "{reply:?}");
    assert_eq!(reply.header("x-silo-error"), Some("unavailable"));
    assert!(reply.text().contains("max-inflight-bytes"), "{reply:?}");
    // A request that fits is still served meanwhile: the bound is on bytes, not requests.
    let reply = rpc(&server, &ping());
    assert_eq!(reply.status, 200, "{reply:?}");

    held.write_all(&big[30 << 10..]).unwrap();
    let reply = read_reply(&mut held);
    assert_eq!(reply.status, 200, "{reply:?}");
    // The reservation was returned: the 10 KiB request now fits.
    let reply = rpc(&server, &small);
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[test]
fn half_sent_headers_are_closed_after_the_header_timeout() {
    let (_dir, _url, server) = server_with(|c| Config {
        limits: Limits {
            header_timeout: Duration::from_millis(300),
            ..Default::default()
        },
        ..c
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut stalled: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = connect(&server);
            s.write_all(b"POST /rpc HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    for (i, s) in stalled.iter_mut().enumerate() {
        expect_closed_by(s, deadline, &format!("half-sent header #{i}"));
    }
    // A connection that never sends a byte is closed too.
    let mut silent = connect(&server);
    expect_closed_by(
        &mut silent,
        Instant::now() + Duration::from_secs(3),
        "a silent connection",
    );
    // So is one that stops in the middle of HTTP/2's preface.
    let mut half_preface = connect(&server);
    half_preface.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    expect_closed_by(
        &mut half_preface,
        Instant::now() + Duration::from_secs(3),
        "half an HTTP/2 preface",
    );
    let reply = rpc(&server, &ping());
    assert_eq!(reply.status, 200, "{reply:?}");

    // An idle keep-alive connection: one request answered, then silence.
    let mut idle = connect(&server);
    let body = ping();
    idle.write_all(&[&rpc_head(body.len(), None)[..], &body].concat())
        .unwrap();
    let reply = read_reply(&mut idle);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_ne!(reply.header("connection"), Some("close"), "{reply:?}");
    expect_closed_by(
        &mut idle,
        Instant::now() + Duration::from_secs(3),
        "an idle keep-alive connection",
    );
    // A keep-alive connection in use is not cut off: requests within the timeout are served.
    let mut busy = connect(&server);
    for _ in 0..4 {
        busy.write_all(&[&rpc_head(body.len(), None)[..], &body].concat())
            .unwrap();
        assert_eq!(read_reply(&mut busy).status, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn slow_bodies_get_408() {
    let (_dir, _url, server) = server_with(|c| Config {
        limits: Limits {
            body_timeout: Duration::from_millis(300),
            ..Default::default()
        },
        ..c
    });
    let mut slow = connect(&server);
    slow.write_all(&rpc_head(1000, None)).unwrap();
    slow.write_all(&[0u8; 10]).unwrap();
    let reply = read_reply(&mut slow);
    assert_eq!(reply.status, 408, "{reply:?}");
    assert!(reply.text().contains("body-timeout"), "{reply:?}");
    assert_eq!(
        metric(&server, "silo_rejected_total{reason=\"timeout\"}"),
        1
    );
    // The server keeps serving, and a body that arrives in time is not cut off.
    let reply = rpc(&server, &ping());
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = kv_put_of_length(b"k", 1000);
    let mut stream = connect(&server);
    stream.write_all(&rpc_head(body.len(), None)).unwrap();
    stream.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    stream.write_all(&body[10..]).unwrap();
    assert_eq!(read_reply(&mut stream).status, 200);
}

#[test]
fn connections_are_capped() {
    let (_dir, _url, server) = server_with(|c| Config {
        limits: Limits {
            max_connections: 4,
            header_timeout: Duration::from_secs(10),
            ..Default::default()
        },
        ..c
    });
    let health = b"GET /health HTTP/1.1\r\nHost: silo\r\nConnection: close\r\n\r\n";
    // Four idle connections take every slot; each is served, so each was accepted.
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect(&server);
            s.write_all(b"GET /health HTTP/1.1\r\nHost: silo\r\n\r\n")
                .unwrap();
            assert_eq!(read_reply(&mut s).status, 200);
            s
        })
        .collect();
    let mut fifth = connect(&server);
    fifth.write_all(health).unwrap();
    expect_no_answer_for(
        &mut fifth,
        Duration::from_millis(500),
        "a fifth connection while four are open",
    );
    drop(held.pop());
    let reply = read_reply(&mut fifth);
    assert_eq!(reply.status, 200, "answered once a slot is free: {reply:?}");
    assert_eq!(reply.text(), "ok");
    expect_closed_by(
        &mut fifth,
        Instant::now() + PROMPT,
        "a Connection: close exchange",
    );
    drop(fifth);
    // Three held and the metrics request's own connection.
    assert_eq!(metric(&server, "silo_connections"), 4);
    drop(held);
}

#[test]
fn too_many_items_get_413_with_a_clear_message() {
    let (_dir, url, server) = server_with(|c| Config {
        limits: Limits {
            max_items: 10,
            ..Default::default()
        },
        ..c
    });
    let push = |n: usize| {
        encode(StorageOp::QueuePush {
            scope: b(b"q"),
            items: (0..n).map(|i| Bytes(vec![i as u8])).collect(),
        })
    };
    let reply = rpc(&server, &push(11));
    assert_eq!(reply.status, 413, "{reply:?}");
    let text = reply.text();
    assert!(
        text.contains("11 items") && text.contains("limit of 10"),
        "{text}"
    );
    assert!(text.contains("QueuePush"), "{text}");
    assert_eq!(
        metric(&server, "silo_rejected_total{reason=\"too_many_items\"}"),
        1
    );

    let client = HttpStorage::new(&server.url(), HttpOptions::default()).unwrap();
    let items: Vec<Vec<u8>> = (0..11u8).map(|i| vec![i]).collect();
    let err = client.queue_push(b"q", &items).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(err.to_string().contains("limit of 10"), "{err}");
    let keys: Vec<Vec<u8>> = (0..11u8).map(|i| vec![i]).collect();
    let err = client.state_get_many(b"q", b"ns", &keys).unwrap_err();
    assert!(err.to_string().contains("limit of 10"), "{err}");
    assert_eq!(client.queue_len(b"q").unwrap(), 0, "nothing was pushed");
    assert_eq!(silo::open(&url).unwrap().queue_len(b"q").unwrap(), 0);

    client.queue_push(b"q", &items[..10]).unwrap();
    assert_eq!(client.queue_len(b"q").unwrap(), 10);
    assert_eq!(
        client
            .state_get_many(b"q", b"ns", &keys[..10])
            .unwrap()
            .len(),
        10
    );
}

#[test]
fn replies_over_the_limit_fail_clearly_and_a_drain_is_rolled_back() {
    let (_dir, url, server) = server_with(|c| Config {
        limits: Limits {
            max_reply_bytes: 4096,
            ..Default::default()
        },
        ..c
    });
    // Retries allowed: a client that retried these answers would send them again.
    let client = HttpStorage::new(
        &server.url(),
        HttpOptions {
            retries: 4,
            ..HttpOptions::default()
        },
    )
    .unwrap();
    for i in 0..10u8 {
        client
            .state_put(b"s", b"ns", &[b'k', i], &[i; 1024])
            .unwrap();
    }
    let direct = silo::open(&url).unwrap();
    let stored = || {
        direct
            .state_scan(b"s", b"ns", &KeyRange::all(), false, u64::MAX)
            .unwrap()
            .len()
    };
    let count = |op: &str| metric(&server, &format!("silo_requests_total{{op=\"{op}\"}}"));
    let clear = |result: silo::Result<usize>| {
        let e = result.expect_err("a reply over the limit was sent (length shown)");
        assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
        assert!(e.to_string().contains("limit of 4096"), "{e}");
    };

    let before = count("StateScan");
    clear(
        client
            .state_scan(b"s", b"ns", &KeyRange::all(), false, u64::MAX)
            .map(|pairs| pairs.len()),
    );
    assert_eq!(count("StateScan"), before + 1, "not retried");
    // A page that fits is fine.
    assert_eq!(
        client
            .state_scan(b"s", b"ns", &KeyRange::all(), false, 3)
            .unwrap()
            .len(),
        3
    );

    let before = count("StateDrain");
    clear(client.state_drain(b"s", b"ns").map(|pairs| pairs.len()));
    assert_eq!(count("StateDrain"), before + 1, "not retried");
    assert_eq!(stored(), 10, "the drain was rolled back");

    // The same drain sent raw, without an idempotency key.
    let raw = encode(StorageOp::StateDrain {
        scope: b(b"s"),
        ns: b(b"ns"),
    });
    let reply = rpc(&server, &raw);
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.header("x-silo-error"), Some("invalid_input"));
    assert!(reply.text().contains("limit of 4096"), "{reply:?}");
    assert_eq!(stored(), 10, "the unkeyed drain was rolled back");
    // And once more with a key, raw.
    let keyed = wire::encode(&StorageRequest {
        idempotency_key: Some("drain-1".into()),
        op: StorageOp::StateDrain {
            scope: b(b"s"),
            ns: b(b"ns"),
        },
    })
    .unwrap();
    assert_eq!(rpc(&server, &keyed).status, 400);
    assert_eq!(stored(), 10, "the keyed drain was rolled back");

    // A log with too much in it.
    for i in 0..10u8 {
        client.append(b"s", b"", b"log", &[i; 1024]).unwrap();
    }
    let before = count("Scan");
    clear(
        client
            .scan(b"s", b"", b"log", 0, u64::MAX)
            .map(|entries| entries.len()),
    );
    assert_eq!(count("Scan"), before + 1, "not retried");
    assert_eq!(client.scan(b"s", b"", b"log", 0, 2).unwrap().len(), 2);
    assert_eq!(
        metric(&server, "silo_rejected_total{reason=\"reply_too_large\"}"),
        5
    );

    // A drain that fits still drains.
    client.state_put(b"s", b"small", b"k", b"v").unwrap();
    assert_eq!(client.state_drain(b"s", b"small").unwrap().len(), 1);
    assert_eq!(
        client
            .state_scan(b"s", b"small", &KeyRange::all(), false, 10)
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn undecodable_and_huge_list_bodies_get_400_and_the_server_stays_small() {
    let (_dir, _url, server) = server_with(|c| Config {
        max_body_bytes: 1 << 20,
        ..c
    });
    let header = |variant: u32| {
        let mut body = vec![0u8]; // no idempotency key
        body.extend(variant.to_le_bytes());
        body.extend(1u64.to_le_bytes()); // the scope
        body.push(b'q');
        body
    };
    let mut bodies = Vec::new();
    for claimed in [1u64 << 40, u64::MAX, (wire::MAX_LIST_LEN as u64) + 1] {
        // QueuePush { items }
        let mut push = header(5);
        push.extend(claimed.to_le_bytes());
        bodies.push(push);
        // StateGetMany { ns, keys }
        let mut get_many = header(12);
        get_many.extend(0u64.to_le_bytes());
        get_many.extend(claimed.to_le_bytes());
        bodies.push(get_many);
        // StatePutMany { ns, items }
        let mut put_many = header(13);
        put_many.extend(0u64.to_le_bytes());
        put_many.extend(claimed.to_le_bytes());
        bodies.push(put_many);
        // A byte string claiming as much.
        let mut value = header(1);
        value.extend(0u64.to_le_bytes()); // the key
        value.extend(claimed.to_le_bytes());
        bodies.push(value);
    }
    // A list at the limit whose elements never come.
    let mut short = header(5);
    short.extend((wire::MAX_LIST_LEN as u64).to_le_bytes());
    short.extend([0u8; 64]);
    bodies.push(short);
    for body in &bodies {
        let reply = rpc(&server, body);
        assert_eq!(reply.status, 400, "{reply:?}");
        assert_eq!(reply.header("x-silo-error"), Some("invalid_input"));
        assert!(reply.text().contains("decode"), "{reply:?}");
    }
    // Many of them at once. A server that allocated what a length prefix claims would abort
    // this very process (2^40 elements); one that survives still serves.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let body = bodies[0].clone();
            let addr = server.addr;
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(PROMPT)).unwrap();
                    s.write_all(&[&rpc_head(body.len(), None)[..], &body].concat())
                        .unwrap();
                    assert_eq!(read_reply(&mut s).status, 400);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        metric(&server, "silo_rejected_total{reason=\"undecodable\"}"),
        bodies.len() as u64 + 160
    );
    let reply = rpc(&server, &ping());
    assert_eq!(reply.status, 200, "{reply:?}");
    let client: Arc<dyn FunctionStorage> =
        Arc::new(HttpStorage::new(&server.url(), HttpOptions::default()).unwrap());
    client.queue_push(b"q", &[b"x".to_vec()]).unwrap();
    assert_eq!(client.queue_len(b"q").unwrap(), 1);
}
