//! vgi-python's remote storage protocol (`POST /python/<endpoint>`) seen from raw sockets:
//! bad input gets `400` with a JSON error (the client raises `ValueError` from it) and the server
//! keeps serving; the token is checked before the body is read and refused with a JSON `401`
//! (a non-JSON one would be retried by the client instead of raising `PermissionError`); `413`
//! over the body and item limits; pages carry a non-empty cursor even after the empty key (the
//! client stops at a falsy one); a drain's pages replay identically under their attempt.
//! (The tests with vgi-python's own client are in `silo-cli/tests/python_clients.rs`.)

mod common;

use std::io::Write;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{Reply, TestServer, connect, read_reply, send, sqlite_url};
use serde_json::{Value, json};
use silo_server::{Auth, Config, Limits};

fn server_with(configure: impl FnOnce(Config) -> Config) -> (tempfile::TempDir, TestServer) {
    let (dir, url) = sqlite_url("");
    let server = common::start(configure(Config::new(silo::open(&url).unwrap())));
    (dir, server)
}

fn head(endpoint: &str, length: usize, token: Option<&str>) -> Vec<u8> {
    let mut head = format!(
        "POST /python/{endpoint} HTTP/1.1\r\nHost: silo\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n"
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn raw(server: &TestServer, endpoint: &str, body: &[u8], token: Option<&str>) -> Reply {
    send(
        server,
        &[&head(endpoint, body.len(), token)[..], body].concat(),
    )
}

fn call(server: &TestServer, endpoint: &str, body: Value) -> Reply {
    raw(server, endpoint, body.to_string().as_bytes(), None)
}

fn json_of(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("not JSON ({e}): {reply:?}"))
}

fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Asserts a JSON error answer with `status` whose `error` mentions `words`.
fn assert_error(reply: &Reply, status: u16, words: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    let error = json_of(reply)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains(words), "{words:?} not in {error:?}");
}

fn assert_serving(server: &TestServer) {
    let reply = call(
        server,
        "state_counter_add",
        json!({"shard_key": "s", "scope_id": b64(b"alive"), "ns": "", "key": "", "delta": 1}),
    );
    assert_eq!(reply.status, 200, "the server still serves: {reply:?}");
}

#[test]
fn bad_requests_get_400_with_a_json_error_and_the_server_keeps_serving() {
    let (_dir, server) = server_with(|c| c);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("state_get_many", b"{not json".to_vec(), "not JSON"),
        ("state_get_many", b"[1, 2]".to_vec(), "must be a JSON object"),
        (
            "state_get_many",
            json!({"scope_id": "", "ns": "", "keys": []}).to_string().into_bytes(),
            "shard_key",
        ),
        (
            "state_get_many",
            json!({"shard_key": "s", "scope_id": "!!!", "ns": "", "keys": []})
                .to_string()
                .into_bytes(),
            "scope_id` is not valid base64",
        ),
        (
            "state_append",
            json!({"shard_key": "s", "scope_id": "", "ns": "", "key": ""})
                .to_string()
                .into_bytes(),
            "`item` is missing",
        ),
        (
            "state_counter_add",
            br#"{"shard_key": "s", "scope_id": "", "ns": "", "key": "", "delta": 9223372036854775808}"#
                .to_vec(),
            "`delta` must be an integer",
        ),
        (
            "state_delete",
            json!({"shard_key": "s", "scope_id": "", "ns": "", "keys": [], "start": ""})
                .to_string()
                .into_bytes(),
            "mutually exclusive",
        ),
        (
            "state_scan",
            json!({"shard_key": "s", "scope_id": "", "ns": "", "after_key": "forged"})
                .to_string()
                .into_bytes(),
            "not a cursor",
        ),
        (
            "no_such_endpoint",
            json!({"shard_key": "s"}).to_string().into_bytes(),
            "unknown endpoint",
        ),
    ];
    for (endpoint, body, words) in cases {
        let reply = raw(&server, endpoint, &body, None);
        assert_error(&reply, 400, words);
        assert_serving(&server);
    }
}

#[test]
fn the_token_is_checked_before_the_body_and_refused_in_json() {
    let token = "s3cret-token-0123";
    let (_dir, server) = server_with(|c| Config {
        auth: Auth::Token(token.into()),
        ..c
    });
    // 300 MB declared, none sent: only a server that checks the headers first answers.
    for presented in [None, Some("wrong-token-0123")] {
        let mut stream = connect(&server);
        stream
            .write_all(&head("state_put_many", 300_000_000, presented))
            .unwrap();
        let reply = read_reply(&mut stream);
        assert_error(&reply, 401, "bearer token");
    }
    let body = json!({"shard_key": "s", "scope_id": "", "ns": "", "key": ""}).to_string();
    let reply = raw(&server, "state_counter_get", body.as_bytes(), Some(token));
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[test]
fn bodies_and_lists_over_the_limits_get_413_in_json() {
    let (_dir, server) = server_with(|c| Config {
        max_body_bytes: 4096,
        limits: Limits {
            max_items: 10,
            ..Limits::default()
        },
        ..c
    });
    let mut stream = connect(&server);
    stream
        .write_all(&head("state_put_many", 300_000_000, None))
        .unwrap();
    assert_error(&read_reply(&mut stream), 413, "4096");
    let items: Vec<String> = (0..11u8).map(|i| b64(&[i])).collect();
    let reply = call(
        &server,
        "queue_push",
        json!({"shard_key": "s", "execution_id": "", "items": items}),
    );
    assert_error(&reply, 413, "11 items");
    assert_serving(&server);
}

/// Keys and values of one page (as bytes) and its cursor.
fn page(reply: &Reply) -> (Vec<(Vec<u8>, usize)>, Option<String>) {
    assert_eq!(reply.status, 200, "{reply:?}");
    let answer = json_of(reply);
    let rows = answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let key = BASE64.decode(r["key"].as_str().unwrap()).unwrap();
            let value = BASE64.decode(r["value"].as_str().unwrap()).unwrap();
            (key, value.len())
        })
        .collect();
    (rows, answer["next_after"].as_str().map(str::to_owned))
}

#[test]
fn pages_after_the_empty_key_carry_a_cursor_and_drain_pages_replay() {
    let (_dir, server) = server_with(|c| c);
    let big = vec![7u8; silo_server::python::PAGE_BYTES];
    let scope = b64(b"paged");
    let put = call(
        &server,
        "state_put_many",
        json!({"shard_key": "s", "scope_id": scope, "ns": "", "attempt_id": "put-1",
               "items": [{"key": "", "value": b64(&big)}, {"key": b64(b"a"), "value": b64(b"x")}]}),
    );
    assert_eq!(put.status, 200, "{put:?}");

    // A scan: the first page ends at the empty key, and its cursor must still say "more".
    let first = page(&call(
        &server,
        "state_scan",
        json!({"shard_key": "s", "scope_id": scope, "ns": ""}),
    ));
    assert_eq!(first.0, vec![(vec![], big.len())]);
    let cursor = first.1.expect("a cursor after the empty key");
    assert!(!cursor.is_empty());
    let second = page(&call(
        &server,
        "state_scan",
        json!({"shard_key": "s", "scope_id": scope, "ns": "", "after_key": cursor}),
    ));
    assert_eq!((second.0, second.1), (vec![(b"a".to_vec(), 1)], None));

    // A drain, paged under one attempt: every page retried gives the same bytes.
    let drain = |after: Option<&str>| {
        let mut body = json!({"shard_key": "s", "scope_id": scope, "ns": "", "attempt_id": "d-1"});
        if let Some(after) = after {
            body["after_key"] = json!(after);
        }
        call(&server, "state_drain", body)
    };
    let first = drain(None);
    assert_eq!(drain(None).body, first.body, "a retried first page replays");
    let (rows, cursor) = page(&first);
    assert_eq!(rows, vec![(vec![], big.len())]);
    let cursor = cursor.expect("a cursor after the empty key");
    let second = drain(Some(&cursor));
    assert_eq!(
        drain(Some(&cursor)).body,
        second.body,
        "a retried page replays"
    );
    assert_eq!(page(&second), (vec![(b"a".to_vec(), 1)], None));
    // The namespace is empty now: a new attempt drains nothing.
    let again = call(
        &server,
        "state_drain",
        json!({"shard_key": "s", "scope_id": scope, "ns": "", "attempt_id": "d-2"}),
    );
    assert_eq!(page(&again), (vec![], None));
}

#[test]
fn a_later_drain_page_of_an_unknown_attempt_drains_nothing() {
    let (_dir, server) = server_with(|c| c);
    let scope = b64(b"kept");
    let put = call(
        &server,
        "state_put_many",
        json!({"shard_key": "s", "scope_id": scope, "ns": "",
               "items": [{"key": b64(b"k"), "value": b64(b"v")}]}),
    );
    assert_eq!(put.status, 200);
    let reply = call(
        &server,
        "state_drain",
        json!({"shard_key": "s", "scope_id": scope, "ns": "", "attempt_id": "never-seen",
               "after_key": "k:AA=="}),
    );
    assert_error(&reply, 400, "no record");
    let still = call(
        &server,
        "state_get_many",
        json!({"shard_key": "s", "scope_id": scope, "ns": "", "keys": [b64(b"k")]}),
    );
    assert_eq!(json_of(&still)["rows"][0]["value"], json!(b64(b"v")));
}

#[test]
fn an_attempt_id_reused_for_another_write_is_a_conflict_not_a_replay() {
    let (_dir, server) = server_with(|c| c);
    let add = |delta: i64| {
        call(
            &server,
            "state_counter_add",
            json!({"shard_key": "s", "scope_id": "", "ns": "", "key": "", "delta": delta,
                   "attempt_id": "a-1"}),
        )
    };
    assert_eq!(json_of(&add(5))["n"], json!(5));
    assert_eq!(json_of(&add(5))["n"], json!(5), "a retry replays");
    let reply = add(6);
    assert_eq!(reply.status, 409, "{reply:?}");
    // The same attempt id in another shard is another attempt.
    let other = call(
        &server,
        "state_counter_add",
        json!({"shard_key": "t", "scope_id": "", "ns": "", "key": "", "delta": 6,
               "attempt_id": "a-1"}),
    );
    assert_eq!(json_of(&other)["n"], json!(6));
}
