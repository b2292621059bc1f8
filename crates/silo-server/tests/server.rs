//! The server's promises beyond the contract: bad input answered and survived, tenants fenced
//! off, retried requests applied once (also when the reply is lost and the server restarts),
//! `Unsupported` against a server without an operation.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, post, sqlite_url};
use silo::http::{HttpOptions, HttpStorage};
use silo::wire::{self, Bytes, StorageOp, StorageReply, StorageRequest};
use silo::{Error, FunctionStorage};
use silo_server::{Auth, Config, Tenant};

fn get_request(scope: &[u8]) -> Vec<u8> {
    wire::encode(&StorageRequest {
        idempotency_key: None,
        op: StorageOp::KvGet {
            scope: Bytes(scope.to_vec()),
            key: Bytes(b"k".to_vec()),
        },
    })
    .unwrap()
}

#[test]
fn bad_requests_get_clear_statuses_and_the_server_keeps_serving() {
    let (_dir, url) = sqlite_url("");
    let config = Config {
        auth: Auth::Token("s3cret".into()),
        max_body_bytes: 4096,
        ..Config::new(silo::open(&url).unwrap())
    };
    let server = common::start(config);
    let good = get_request(b"s");
    let ok = |server: &TestServer| assert_eq!(post(&server.url(), Some("s3cret"), &good).0, 200);

    let (status, text) = post(&server.url(), Some("s3cret"), b"\x07garbage");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("decode"), "{text}");
    ok(&server);

    let mut unknown = vec![0u8];
    unknown.extend(99u32.to_le_bytes());
    let (status, text) = post(&server.url(), Some("s3cret"), &unknown);
    assert_eq!(status, 400);
    assert!(text.contains("99"), "the message names the variant: {text}");
    ok(&server);

    let (status, text) = post(&server.url(), Some("s3cret"), &vec![0u8; 8192]);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("4096"), "{text}");
    ok(&server);

    assert_eq!(post(&server.url(), None, &good).0, 401, "missing token");
    assert_eq!(
        post(&server.url(), Some("s3cre"), &good).0,
        401,
        "wrong token"
    );
    assert_eq!(
        post(&server.url(), Some("s3cret!"), &good).0,
        401,
        "longer token"
    );
    ok(&server);

    let long_key = wire::encode(&StorageRequest {
        idempotency_key: Some("k".repeat(600)),
        op: StorageOp::QueuePop {
            scope: Bytes(b"s".to_vec()),
        },
    })
    .unwrap();
    assert_eq!(post(&server.url(), Some("s3cret"), &long_key).0, 400);

    let too_big_value = HttpStorage::new(
        &server.url(),
        HttpOptions {
            token: Some("s3cret".into()),
            ..HttpOptions::default()
        },
    )
    .unwrap()
    .kv_put(b"s", b"k", &[0u8; 5000])
    .unwrap_err();
    assert!(
        matches!(too_big_value, Error::InvalidInput { .. }),
        "{too_big_value}"
    );
    ok(&server);

    let agent = ureq::agent();
    assert_eq!(
        agent
            .get(format!("{}/health", server.url()))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap(),
        "ok"
    );
    let metrics = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
        .get(format!("{}/metrics", server.url()))
        .header("authorization", "Bearer s3cret")
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("silo_requests_total{op=\"KvGet\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("silo_rejected_total{reason=\"unauthorized\"} 3"),
        "{metrics}"
    );
    assert!(
        // The raw 8 KiB body and the client's 5000-byte value: both over the body limit.
        metrics.contains("silo_rejected_total{reason=\"too_large\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("silo_request_duration_seconds_bucket{op=\"KvGet\",le=\"+Inf\"} 5"));
    assert!(metrics.contains("silo_store_bytes "), "{metrics}");
}

#[test]
fn tenants_cannot_see_clear_or_sweep_each_other() {
    let (_dir, url) = sqlite_url("");
    let tenants = vec![
        Tenant {
            token: "alpha-token-0123456789".into(),
            name: "alpha".into(),
        },
        Tenant {
            token: "beta-token-0123456789".into(),
            name: "beta".into(),
        },
    ];
    let server = common::start(Config {
        auth: Auth::Tenants(tenants),
        ..Config::new(silo::open(&url).unwrap())
    });
    let client = |token: &str| {
        HttpStorage::new(
            &server.url(),
            HttpOptions {
                token: Some(token.into()),
                ..HttpOptions::default()
            },
        )
        .unwrap()
    };
    let (alpha, beta) = (
        client("alpha-token-0123456789"),
        client("beta-token-0123456789"),
    );
    alpha.kv_put(b"shared-name", b"k", b"alpha's").unwrap();
    alpha
        .queue_push(b"shared-name", &[b"job".to_vec()])
        .unwrap();
    assert_eq!(
        beta.kv_get(b"shared-name", b"k").unwrap(),
        None,
        "beta cannot read alpha's scope"
    );
    assert_eq!(
        beta.queue_pop(b"shared-name").unwrap(),
        None,
        "nor pop its queue"
    );
    beta.kv_put(b"shared-name", b"k", b"beta's").unwrap();
    beta.clear(b"shared-name").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        beta.gc(Duration::ZERO).unwrap(),
        0,
        "beta's sweep sees only beta's scopes"
    );
    assert_eq!(
        alpha.kv_get(b"shared-name", b"k").unwrap(),
        Some(b"alpha's".to_vec())
    );
    assert_eq!(alpha.queue_len(b"shared-name").unwrap(), 1);
    assert!(
        matches!(alpha.stat(), Err(Error::Unauthorized { .. })),
        "store-wide stats are not a tenant's"
    );
    assert_eq!(alpha.gc(Duration::ZERO).unwrap(), 1, "alpha sweeps its own");
    let direct = silo::open(&url).unwrap();
    assert_eq!(direct.stat().unwrap().scopes, 0);
    let outsider = client("gamma-token-0123456789");
    assert!(matches!(
        outsider.kv_get(b"x", b"k"),
        Err(Error::Unauthorized { .. })
    ));
}

/// A TCP proxy that can swallow a reply: it forwards the request (so the server applies it),
/// then closes the connection instead of forwarding the answer. While paused it holds new
/// connections until the test says where to send them.
struct LossyProxy {
    addr: SocketAddr,
    drops: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    paused: Arc<AtomicBool>,
    upstream: Arc<Mutex<SocketAddr>>,
}

impl LossyProxy {
    fn start(upstream: SocketAddr) -> LossyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = LossyProxy {
            addr: listener.local_addr().unwrap(),
            drops: Arc::default(),
            dropped: Arc::default(),
            paused: Arc::default(),
            upstream: Arc::new(Mutex::new(upstream)),
        };
        let (drops, dropped, paused, up) = (
            proxy.drops.clone(),
            proxy.dropped.clone(),
            proxy.paused.clone(),
            proxy.upstream.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let (drops, dropped, paused, up) =
                    (drops.clone(), dropped.clone(), paused.clone(), up.clone());
                std::thread::spawn(move || {
                    while paused.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let target = *up.lock().unwrap();
                    let Ok(server) = TcpStream::connect(target) else {
                        return;
                    };
                    let (mut c_in, mut s_out) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c_in, &mut s_out);
                        let _ = s_out.shutdown(Shutdown::Write);
                    });
                    let (mut s_in, mut c_out) = (server, client);
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match s_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if drops.load(Ordering::SeqCst) > 0 {
                            drops.fetch_sub(1, Ordering::SeqCst);
                            dropped.fetch_add(1, Ordering::SeqCst);
                            let _ = c_out.shutdown(Shutdown::Both);
                            let _ = s_in.shutdown(Shutdown::Both);
                            return;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Both);
                });
            }
        });
        proxy
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[test]
fn a_lost_reply_is_not_applied_twice() {
    let (_dir, url) = sqlite_url("");
    let server = common::start(Config::new(silo::open(&url).unwrap()));
    let proxy = LossyProxy::start(server.addr);
    let client = HttpStorage::new(&proxy.url(), HttpOptions::default()).unwrap();
    client
        .queue_push(b"s", &[b"first".to_vec(), b"second".to_vec()])
        .unwrap();

    proxy.drops.store(1, Ordering::SeqCst);
    let info = client.server_info().unwrap();
    assert_eq!(info.server, "silo", "the info request is retried too");
    assert_eq!(proxy.dropped.load(Ordering::SeqCst), 1);

    proxy.drops.store(1, Ordering::SeqCst);
    assert_eq!(
        client.counter_add(b"s", b"", b"n", 5).unwrap(),
        5,
        "the retry gets the original reply"
    );
    assert_eq!(
        proxy.dropped.load(Ordering::SeqCst),
        2,
        "a reply really was lost"
    );
    assert_eq!(
        client.counter_get(b"s", b"", b"n").unwrap(),
        5,
        "applied once"
    );

    proxy.drops.store(1, Ordering::SeqCst);
    assert_eq!(
        client.queue_pop(b"s").unwrap(),
        Some(b"first".to_vec()),
        "the popped item is not lost"
    );
    assert_eq!(
        client.queue_pop(b"s").unwrap(),
        Some(b"second".to_vec()),
        "nor popped twice"
    );

    proxy.drops.store(1, Ordering::SeqCst);
    let id = client.append(b"s", b"", b"log", b"once").unwrap();
    assert_eq!(
        client.scan(b"s", b"", b"log", 0, u64::MAX).unwrap(),
        vec![(id, b"once".to_vec())]
    );
    assert_eq!(proxy.dropped.load(Ordering::SeqCst), 4);

    // A batch is one request with one key: its retry replays every reply, applies nothing.
    client.queue_push(b"s", &[b"third".to_vec()]).unwrap();
    proxy.drops.store(1, Ordering::SeqCst);
    let replies = client
        .pipeline()
        .push(StorageOp::CounterAdd {
            scope: b"s".into(),
            ns: b"".into(),
            key: b"n".into(),
            delta: 10,
        })
        .push(StorageOp::QueuePop { scope: b"s".into() })
        .push(StorageOp::Append {
            scope: b"s".into(),
            ns: b"".into(),
            key: b"log".into(),
            value: b"batched".into(),
        })
        .send()
        .unwrap();
    assert_eq!(proxy.dropped.load(Ordering::SeqCst), 5, "a reply was lost");
    assert_eq!(
        replies,
        vec![
            StorageReply::Int(15),
            StorageReply::MaybeBytes(Some(b"third".into())),
            StorageReply::Id(id + 1),
        ]
    );
    assert_eq!(client.counter_get(b"s", b"", b"n").unwrap(), 15);
    assert_eq!(client.queue_len(b"s").unwrap(), 0);
    assert_eq!(
        client.scan(b"s", b"", b"log", 0, u64::MAX).unwrap().len(),
        2
    );
}

#[test]
fn a_retry_after_a_server_restart_gets_the_original_reply() {
    let (_dir, url) = sqlite_url("");
    let first = common::start(Config::new(silo::open(&url).unwrap()));
    let proxy = LossyProxy::start(first.addr);
    let client = HttpStorage::new(&proxy.url(), HttpOptions::default()).unwrap();
    client.queue_push(b"s", &[b"only".to_vec()]).unwrap();

    proxy.drops.store(1, Ordering::SeqCst);
    proxy.paused.store(true, Ordering::SeqCst);
    let popper = std::thread::spawn(move || client.queue_pop(b"s"));
    while proxy.dropped.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(first);
    let second = common::start(Config::new(silo::open(&url).unwrap()));
    *proxy.upstream.lock().unwrap() = second.addr;
    proxy.paused.store(false, Ordering::SeqCst);
    let popped = popper.join().unwrap().unwrap();
    assert_eq!(
        popped,
        Some(b"only".to_vec()),
        "the new server replays the stored reply"
    );
    assert_eq!(silo::open(&url).unwrap().queue_len(b"s").unwrap(), 0);
}

#[test]
fn extended_operations_against_a_server_without_them_are_unsupported() {
    // A minimal incumbent-like server: core ops only, no /v1/info.
    let store: Arc<dyn FunctionStorage> = Arc::new(silo::MemoryStorage::new());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/rpc",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let req: StorageRequest = wire::decode(&body).unwrap();
                let reply: StorageReply = wire::apply(&*store, req.op).unwrap();
                wire::encode(&reply).unwrap()
            }
        }),
    );
    rt.spawn(async move { axum::serve(listener, app).await });
    let client = HttpStorage::new(&format!("http://{addr}"), HttpOptions::default()).unwrap();
    client.kv_put(b"s", b"k", b"v").unwrap();
    assert_eq!(
        client.kv_get(b"s", b"k").unwrap(),
        Some(b"v".to_vec()),
        "core ops work"
    );
    let err = client.counter_add(b"s", b"", b"c", 1).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

#[test]
fn an_unreachable_server_is_unavailable_after_bounded_retries() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = HttpStorage::new(
        &format!("http://127.0.0.1:{port}"),
        HttpOptions {
            retries: 2,
            ..HttpOptions::default()
        },
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = client.kv_get(b"s", b"k").unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("3 attempts"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Sends `call` through the proxy with its first reply swallowed; while the client's retry is
/// held back, `interfere` changes the store directly (as another worker would). Returns what
/// the retried call returned.
fn with_lost_reply<T: Send + 'static>(
    proxy: &LossyProxy,
    call: impl FnOnce() -> T + Send + 'static,
    interfere: impl FnOnce(),
) -> T {
    let before = proxy.dropped.load(Ordering::SeqCst);
    proxy.drops.store(1, Ordering::SeqCst);
    proxy.paused.store(true, Ordering::SeqCst);
    let caller = std::thread::spawn(call);
    while proxy.dropped.load(Ordering::SeqCst) == before {
        std::thread::sleep(Duration::from_millis(2));
    }
    interfere();
    proxy.paused.store(false, Ordering::SeqCst);
    caller.join().unwrap()
}

/// Every write silo's client sends is applied once even when its reply is lost and the
/// client retries, and even when other workers changed the store in between: a retried put,
/// delete or clear must not undo their writes, a retried pop, claim, ack or drain must answer
/// what the first attempt did.
#[test]
fn every_write_is_applied_once_when_its_reply_is_lost() {
    let (_dir, url) = sqlite_url("");
    let server = common::start(Config::new(silo::open(&url).unwrap()));
    let proxy = LossyProxy::start(server.addr);
    let client = Arc::new(HttpStorage::new(&proxy.url(), HttpOptions::default()).unwrap());
    let direct = HttpStorage::new(&server.url(), HttpOptions::default()).unwrap();
    // Warm the client's connection pool so the first attempt goes out before the pause, and
    // its cache of the server's operations so no `/v1/info` request takes the lost reply.
    client.kv_put(b"warm", b"k", b"v").unwrap();
    client.server_info().unwrap();
    let c = || client.clone();

    let cl = c();
    with_lost_reply(
        &proxy,
        move || cl.kv_put(b"s", b"k", b"old").unwrap(),
        || direct.kv_put(b"s", b"k", b"newer").unwrap(),
    );
    assert_eq!(
        direct.kv_get(b"s", b"k").unwrap(),
        Some(b"newer".to_vec()),
        "kv_put"
    );

    let cl = c();
    with_lost_reply(
        &proxy,
        move || cl.kv_del(b"s", b"k").unwrap(),
        || direct.kv_put(b"s", b"k", b"recreated").unwrap(),
    );
    assert_eq!(
        direct.kv_get(b"s", b"k").unwrap(),
        Some(b"recreated".to_vec()),
        "kv_del"
    );

    let cl = c();
    with_lost_reply(
        &proxy,
        move || cl.clear(b"s").unwrap(),
        || {
            direct
                .kv_put(b"s", b"other", b"written after the clear")
                .unwrap()
        },
    );
    assert!(direct.kv_get(b"s", b"other").unwrap().is_some(), "clear");

    let cl = c();
    let items = vec![(b"a".to_vec(), b"old".to_vec())];
    with_lost_reply(
        &proxy,
        move || cl.state_put_many(b"s", b"n", &items).unwrap(),
        || direct.state_put(b"s", b"n", b"a", b"newer").unwrap(),
    );
    assert_eq!(
        direct.state_get(b"s", b"n", b"a").unwrap(),
        Some(b"newer".to_vec()),
        "put_many"
    );

    let cl = c();
    let n = with_lost_reply(
        &proxy,
        move || cl.counter_add(b"s", b"", b"c", 5).unwrap(),
        || {},
    );
    assert_eq!(
        (n, direct.counter_get(b"s", b"", b"c").unwrap()),
        (5, 5),
        "counter_add"
    );

    let cl = c();
    let old = with_lost_reply(
        &proxy,
        move || cl.counter_set(b"s", b"", b"c", 9).unwrap(),
        || {},
    );
    assert_eq!(old, 5, "counter_set answers the value it replaced");

    let cl = c();
    with_lost_reply(
        &proxy,
        move || cl.queue_push(b"q", &[b"one".to_vec()]).unwrap(),
        || {},
    );
    assert_eq!(direct.queue_len(b"q").unwrap(), 1, "queue_push");

    direct.queue_push(b"q", &[b"two".to_vec()]).unwrap();
    let cl = c();
    let popped = with_lost_reply(&proxy, move || cl.queue_pop(b"q").unwrap(), || {});
    assert_eq!(
        popped,
        Some(b"one".to_vec()),
        "queue_pop answers the item it took"
    );
    assert_eq!(direct.queue_len(b"q").unwrap(), 1, "and took one");

    let cl = c();
    let claim = with_lost_reply(
        &proxy,
        move || cl.queue_claim(b"q", Duration::from_secs(60)).unwrap(),
        || {},
    )
    .expect("an item was claimed");
    assert_eq!(
        (claim.value.as_slice(), claim.attempt),
        (&b"two"[..], 1),
        "queue_claim"
    );
    let cl = c();
    let acked = with_lost_reply(&proxy, move || cl.queue_ack(b"q", claim.id).unwrap(), || {});
    assert!(acked, "queue_ack answers what the first attempt did");
    assert_eq!(direct.queue_len(b"q").unwrap(), 0);

    let cl = c();
    let id = with_lost_reply(
        &proxy,
        move || cl.append(b"s", b"", b"log", b"x").unwrap(),
        || {},
    );
    assert_eq!(
        direct.scan(b"s", b"", b"log", 0, u64::MAX).unwrap(),
        vec![(id, b"x".to_vec())]
    );

    direct.state_put(b"s", b"d", b"k", b"v").unwrap();
    let cl = c();
    let drained = with_lost_reply(&proxy, move || cl.state_drain(b"s", b"d").unwrap(), || {});
    assert_eq!(
        drained,
        vec![(b"k".to_vec(), b"v".to_vec())],
        "state_drain keeps its pairs"
    );
    assert_eq!(
        proxy.dropped.load(Ordering::SeqCst),
        12,
        "every reply above was lost once"
    );
}

fn keyed(key: &str, op: StorageOp) -> Vec<u8> {
    wire::encode(&StorageRequest {
        idempotency_key: Some(key.into()),
        op,
    })
    .unwrap()
}

fn counter_add(delta: i64) -> StorageOp {
    StorageOp::CounterAdd {
        scope: Bytes(b"s".to_vec()),
        ns: Bytes::default(),
        key: Bytes(b"c".to_vec()),
        delta,
    }
}

/// A key reused for a different request is refused with 409 and applies nothing; the same
/// key from two tenants is two keys; after the window a key is forgotten.
#[test]
fn idempotency_keys_are_per_request_per_tenant_and_expire() {
    let (_dir, url) = sqlite_url("");
    let store = silo::open(&url).unwrap();
    let server = common::start(Config {
        auth: Auth::Tenants(vec![
            Tenant {
                token: "alpha-token-0123456789".into(),
                name: "alpha".into(),
            },
            Tenant {
                token: "beta-token-0123456789".into(),
                name: "beta".into(),
            },
        ]),
        idempotency_window: Duration::from_millis(300),
        ..Config::new(store.clone())
    });
    let alpha = Some("alpha-token-0123456789");
    let beta = Some("beta-token-0123456789");
    let counter = |tenant: &str| {
        store
            .counter_get(format!("tenant:{tenant}\0s").as_bytes(), b"", b"c")
            .unwrap()
    };

    let (status, _) = post(&server.url(), alpha, &keyed("K", counter_add(1)));
    assert_eq!(status, 200);
    let (status, _) = post(&server.url(), alpha, &keyed("K", counter_add(1)));
    assert_eq!(status, 200, "the same request again is a replay");
    assert_eq!(counter("alpha"), 1);

    let (status, text) = post(&server.url(), alpha, &keyed("K", counter_add(2)));
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("idempotency key"), "{text}");
    let pop = StorageOp::QueuePop {
        scope: Bytes(b"s".to_vec()),
    };
    let (status, _) = post(&server.url(), alpha, &keyed("K", pop));
    assert_eq!(status, 409, "another operation under a used key");
    assert_eq!(counter("alpha"), 1, "conflicts apply nothing");

    let (status, _) = post(&server.url(), beta, &keyed("K", counter_add(1)));
    assert_eq!(status, 200);
    assert_eq!(counter("beta"), 1, "beta's K is not alpha's K");

    // The sweeper runs every tenth of the window (at least every 100 ms).
    std::thread::sleep(Duration::from_millis(1000));
    let (status, _) = post(&server.url(), alpha, &keyed("K", counter_add(1)));
    assert_eq!(status, 200);
    assert_eq!(counter("alpha"), 2, "after the window the key is new again");
}

/// The server sweeps orphaned scopes by itself (at start-up and then every interval), leaves
/// live ones alone, and shows its work in `/metrics`.
#[test]
fn the_server_sweeps_orphans_and_reports_it() {
    let (_dir, url) = sqlite_url("");
    let store = silo::open(&url).unwrap();
    store.kv_put(b"orphan", b"k", b"v").unwrap();
    let server = common::start(Config {
        orphan_sweep: Some(silo_server::OrphanSweep {
            ttl: Duration::from_millis(1500),
            every: Duration::from_millis(200),
        }),
        ..Config::new(store.clone())
    });
    let client = HttpStorage::new(&server.url(), HttpOptions::default()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.kv_get(b"orphan", b"k").unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphan was never swept"
        );
        // A live scope, written more often than the TTL, must survive every sweep.
        client.kv_put(b"live", b"k", b"v").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        client.kv_get(b"live", b"k").unwrap().is_some(),
        "the live scope survived"
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let metrics = agent
        .get(format!("{}/metrics", server.url()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics:\n{metrics}"))
    };
    assert!(value("silo_orphan_sweeps_total ") >= 1);
    assert!(value("silo_orphan_scopes_swept_total ") >= 1);
    assert!(value("silo_orphan_last_sweep_timestamp_seconds ") > 0);
}

/// A reply over the client's limit is a final `InvalidInput`: the same request would bring
/// the same reply, so it is sent once, not retried.
#[test]
fn a_reply_over_the_clients_limit_is_final() {
    let (_dir, url) = sqlite_url("");
    let store = silo::open(&url).unwrap();
    store.kv_put(b"s", b"big", &[7u8; 4096]).unwrap();
    let server = common::start(Config::new(store.clone()));
    let client = HttpStorage::new(
        &server.url(),
        HttpOptions {
            retries: 5,
            max_reply_bytes: 1024,
            ..HttpOptions::default()
        },
    )
    .unwrap();
    let err = client.kv_get(b"s", b"big").unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(err.to_string().contains("1024"), "{err}");
    let metrics = ureq::get(format!("{}/metrics", server.url()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("silo_requests_total{op=\"KvGet\"} 1\n"),
        "sent once, not retried:\n{metrics}"
    );
    assert_eq!(
        client.kv_get(b"s", b"missing").unwrap(),
        None,
        "small replies pass"
    );
}

/// A store that fails every third operation *after* applying it (a crash or a lost reply
/// after the effect), under a server, with silo's client retrying: every write is applied
/// exactly once — the failed attempt's effect is rolled back with its idempotency record, and
/// the retry applies it for real.
#[test]
fn faults_after_the_effect_never_double_apply() {
    use silo::conformance::faults::{FaultMode, Faults};
    let (_dir, url) = sqlite_url("");
    let direct = silo::open(&url).unwrap();
    let faults = Faults::every(3, FaultMode::After);
    let faulty: Arc<dyn FunctionStorage> =
        Arc::new(silo::Layered::with_layer(direct.clone(), faults.clone()));
    let server = common::start(Config::new(faulty));
    let client = HttpStorage::new(
        &server.url(),
        HttpOptions {
            retries: 30,
            ..HttpOptions::default()
        },
    )
    .unwrap();
    let mut popped = Vec::new();
    for i in 0..40u32 {
        client.counter_add(b"s", b"", b"c", 1).unwrap();
        client.append(b"s", b"", b"log", &i.to_le_bytes()).unwrap();
        client
            .queue_push(b"s", &[i.to_le_bytes().to_vec()])
            .unwrap();
        client
            .state_put_many(b"s", b"n", &[(i.to_le_bytes().to_vec(), b"v".to_vec())])
            .unwrap();
        if i % 2 == 1 {
            popped.extend(client.queue_pop(b"s").unwrap());
        }
    }
    assert!(
        faults.injected() >= 40,
        "faults were injected: {}",
        faults.injected()
    );
    assert_eq!(
        direct.counter_get(b"s", b"", b"c").unwrap(),
        40,
        "each add applied once"
    );
    let log: Vec<Vec<u8>> = direct
        .scan(b"s", b"", b"log", 0, u64::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let want: Vec<Vec<u8>> = (0..40u32).map(|i| i.to_le_bytes().to_vec()).collect();
    assert_eq!(log, want, "each append once, in order");
    while let Some(item) = direct.queue_pop(b"s").unwrap() {
        popped.push(item);
    }
    assert_eq!(
        popped, want,
        "each item pushed once and popped once, in order"
    );
    assert_eq!(
        direct
            .state_scan(b"s", b"n", &silo::KeyRange::all(), false, u64::MAX)
            .unwrap()
            .len(),
        40
    );
}

/// A write whose reply is over the client's limit is rolled back on the server (the client
/// sends its limit; the server checks it inside the operation's transaction), so the popped
/// item or drained pairs are still there, not lost between server and client.
#[test]
fn a_write_whose_reply_the_client_refuses_is_rolled_back() {
    let (_dir, url) = sqlite_url("");
    let store = silo::open(&url).unwrap();
    store.queue_push(b"s", &[vec![1u8; 4096]]).unwrap();
    store.state_put(b"s", b"n", b"k", &[2u8; 4096]).unwrap();
    let server = common::start(Config::new(store.clone()));
    let client = HttpStorage::new(
        &server.url(),
        HttpOptions {
            max_reply_bytes: 1024,
            ..HttpOptions::default()
        },
    )
    .unwrap();
    assert!(matches!(
        client.queue_pop(b"s"),
        Err(Error::InvalidInput { .. })
    ));
    assert_eq!(store.queue_len(b"s").unwrap(), 1, "the pop was rolled back");
    assert!(matches!(
        client.state_drain(b"s", b"n"),
        Err(Error::InvalidInput { .. })
    ));
    assert!(
        store.state_get(b"s", b"n", b"k").unwrap().is_some(),
        "the drain too"
    );
}

/// A process forked after its client was made sends keys of its own: the parent's and the
/// child's first pops are two requests, not one replayed.
#[test]
fn forked_processes_do_not_share_idempotency_keys() {
    use std::io::Read as _;
    let (_dir, url) = sqlite_url("");
    let store = silo::open(&url).unwrap();
    store
        .queue_push(b"s", &[b"one".to_vec(), b"two".to_vec()])
        .unwrap();
    let server = common::start(Config::new(store.clone()));
    let client = HttpStorage::new(&server.url(), HttpOptions::default()).unwrap();
    let mut fds = [0i32; 2];
    // SAFETY: plain libc calls; the child only uses the client, writes to the pipe and exits
    // without running destructors or returning into the test harness.
    let child = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::fork()
    };
    assert!(child >= 0, "fork failed");
    if child == 0 {
        let popped = client.queue_pop(b"s").ok().flatten().unwrap_or_default();
        // SAFETY: the write end of the pipe, then immediate exit.
        unsafe {
            libc::write(fds[1], popped.as_ptr().cast(), popped.len());
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end and reaping the child.
    unsafe {
        libc::close(fds[1]);
        let mut status = 0;
        libc::waitpid(child, &mut status, 0);
    }
    // SAFETY: the read end is ours; File takes ownership and closes it.
    let mut from_child = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    let mut child_popped = Vec::new();
    from_child.read_to_end(&mut child_popped).unwrap();
    let parent_popped = client.queue_pop(b"s").unwrap().unwrap_or_default();
    let mut both = vec![child_popped, parent_popped];
    both.sort();
    assert_eq!(
        both,
        vec![b"one".to_vec(), b"two".to_vec()],
        "two pops, two items"
    );
    assert_eq!(store.queue_len(b"s").unwrap(), 0);
}

/// A layer that makes every `kv_get` slow and counts how many run at once.
#[derive(Clone, Debug, Default)]
struct SlowReads {
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl silo::Layer for SlowReads {
    fn call<T>(
        &self,
        op: &'static str,
        inner: impl FnOnce() -> silo::Result<T>,
    ) -> silo::Result<T> {
        if op != "kv_get" {
            return inner();
        }
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(600));
        self.running.fetch_sub(1, Ordering::SeqCst);
        inner()
    }
}

/// Clients that hang up do not free their request slot while their work still runs: with one
/// slot, never two operations execute at once.
#[test]
fn a_hung_up_request_keeps_its_slot_until_its_work_ends() {
    let (_dir, url) = sqlite_url("");
    let slow = SlowReads::default();
    let store: Arc<dyn FunctionStorage> = Arc::new(silo::Layered::with_layer(
        silo::open(&url).unwrap(),
        slow.clone(),
    ));
    let server = common::start(Config {
        limits: silo_server::Limits {
            max_concurrent_requests: 1,
            queue_wait: Duration::from_millis(100),
            ..silo_server::Limits::default()
        },
        ..Config::new(store)
    });
    let body = get_request(b"s");
    let mut hung_up = Vec::new();
    for _ in 0..4 {
        let mut conn = TcpStream::connect(server.addr).unwrap();
        let head = format!(
            "POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(&body).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        drop(conn);
        hung_up.push(());
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        slow.most.load(Ordering::SeqCst),
        1,
        "one slot, one execution at a time"
    );
}

/// Limits at their extremes (zero, the largest number) neither panic the server nor lock it
/// up: they are clamped to what can work.
#[test]
fn extreme_limits_are_clamped_not_fatal() {
    let (_dir, url) = sqlite_url("");
    let server = common::start(Config {
        limits: silo_server::Limits {
            max_concurrent_requests: usize::MAX,
            max_inflight_bytes: 0,
            max_connections: usize::MAX,
            ..silo_server::Limits::default()
        },
        ..Config::new(silo::open(&url).unwrap())
    });
    let client = HttpStorage::new(&server.url(), HttpOptions::default()).unwrap();
    client.kv_put(b"s", b"k", b"v").unwrap();
    assert_eq!(client.kv_get(b"s", b"k").unwrap(), Some(b"v".to_vec()));
    let (status, _) = post(&server.url(), None, &get_request(b"s"));
    assert_eq!(status, 200);
}

/// An unkeyed drain runs atomically but leaves no idempotency record behind (its reply is
/// the drained data; nobody could ever replay it).
#[test]
fn an_unkeyed_drain_keeps_no_record() {
    let store: Arc<dyn FunctionStorage> = Arc::new(silo::MemoryStorage::new());
    store.state_put(b"s", b"n", b"k", &[3u8; 1024]).unwrap();
    let server = common::start(Config::new(store.clone()));
    let drain = wire::encode(&StorageRequest {
        idempotency_key: None,
        op: StorageOp::StateDrain {
            scope: Bytes(b"s".to_vec()),
            ns: Bytes(b"n".to_vec()),
        },
    })
    .unwrap();
    assert_eq!(post(&server.url(), None, &drain).0, 200);
    assert_eq!(store.state_get(b"s", b"n", b"k").unwrap(), None, "drained");
    assert_eq!(
        store.expire_once_keys(Duration::ZERO).unwrap(),
        0,
        "no record kept"
    );
}

/// Panics inside the store on the named calls.
#[derive(Clone, Debug)]
struct PanicOn(&'static [&'static str]);

impl silo::Layer for PanicOn {
    fn call<T>(
        &self,
        op: &'static str,
        inner: impl FnOnce() -> silo::Result<T>,
    ) -> silo::Result<T> {
        if self.0.contains(&op) {
            panic!("injected panic in {op}");
        }
        inner()
    }
}

#[test]
fn a_store_that_panics_gets_an_error_reply_inline_and_on_the_pool() {
    // kv_get is a point operation (run on the task that read it), scan runs on the blocking
    // pool: both must answer with an error and leave the server serving.
    for inline in [true, false] {
        let store =
            silo::Layered::with_layer(silo::open("memory:").unwrap(), PanicOn(&["kv_get", "scan"]));
        let server = common::start(Config {
            inline_point_ops: inline,
            ..Config::new(Arc::new(store))
        });
        let scan = wire::encode(&StorageRequest {
            idempotency_key: None,
            op: StorageOp::Scan {
                scope: Bytes(b"s".to_vec()),
                ns: Bytes(b"n".to_vec()),
                key: Bytes(b"k".to_vec()),
                after_id: 0,
                limit: 10,
            },
        })
        .unwrap();
        for body in [get_request(b"s"), scan] {
            let (status, text) = post(&server.url(), None, &body);
            assert_eq!(status, 500, "inline={inline}: {text}");
            assert!(text.contains("panicked"), "inline={inline}: {text}");
        }
        let put = wire::encode(&StorageRequest {
            idempotency_key: None,
            op: StorageOp::KvPut {
                scope: Bytes(b"s".to_vec()),
                key: Bytes(b"k".to_vec()),
                value: Bytes(b"v".to_vec()),
            },
        })
        .unwrap();
        assert_eq!(post(&server.url(), None, &put).0, 200, "inline={inline}");
    }
}

#[test]
fn the_client_reaches_a_server_by_address_and_by_host_name() {
    // An IP address skips the resolver (no lookup thread per request); a name still resolves.
    let server = common::start(Config::new(silo::open("memory:").unwrap()));
    let by_address = server.url();
    assert!(by_address.contains("127.0.0.1"), "{by_address}");
    let by_name = by_address.replace("127.0.0.1", "localhost");
    for url in [by_address, by_name] {
        let client = HttpStorage::new(&url, HttpOptions::default()).unwrap();
        client.kv_put(b"s", b"k", url.as_bytes()).unwrap();
        assert_eq!(
            client.kv_get(b"s", b"k").unwrap().as_deref(),
            Some(url.as_bytes())
        );
    }
}
