//! Batches (`StorageOp::Batch`, `HttpStorage::pipeline`): many operations in one request,
//! applied in order, all or none, one reply each, on every local store; bounded, fenced by
//! tenant, and refused when nested.

mod common;

use std::sync::Arc;
use std::time::Duration;

use silo::FunctionStorage;
use silo::http::{HttpOptions, HttpStorage};
use silo::wire::{self, StorageOp, StorageReply, StorageRequest};
use silo_server::{Auth, Config, Limits, Tenant};

/// A server over a fresh store of each local backend (values at most 64 bytes), its store
/// and a client.
fn servers() -> Vec<(
    &'static str,
    tempfile::TempDir,
    Arc<dyn FunctionStorage>,
    common::TestServer,
)> {
    let mut out = Vec::new();
    for backend in ["memory", "sqlite", "fs"] {
        let dir = tempfile::tempdir().unwrap();
        let url = match backend {
            "memory" => "memory:?max_value_bytes=64".to_string(),
            "sqlite" => format!("sqlite://{}/s.db?max_value_bytes=64", dir.path().display()),
            _ => format!("fs://{}/fs?max_value_bytes=64", dir.path().display()),
        };
        let store = silo::open(&url).unwrap();
        let server = common::start(Config::new(store.clone()));
        out.push((backend, dir, store, server));
    }
    out
}

fn client(server: &common::TestServer) -> HttpStorage {
    HttpStorage::new(&server.url(), HttpOptions::default()).unwrap()
}

fn append(log: &[u8], value: &[u8]) -> StorageOp {
    StorageOp::Append {
        scope: b"s".into(),
        ns: b"".into(),
        key: log.into(),
        value: value.into(),
    }
}

fn kv_put(key: &[u8], value: &[u8]) -> StorageOp {
    StorageOp::KvPut {
        scope: b"s".into(),
        key: key.into(),
        value: value.into(),
    }
}

#[test]
fn a_batch_applies_in_order_and_answers_each_operation() {
    for (backend, _dir, store, server) in servers() {
        let client = client(&server);
        let mut pipeline = client.pipeline();
        pipeline
            .push(kv_put(b"k", b"v1"))
            .push(kv_put(b"k", b"v2"))
            .push(StorageOp::KvGet {
                scope: b"s".into(),
                key: b"k".into(),
            })
            .push(append(b"log", b"a"))
            .push(append(b"log", b"b"))
            .push(StorageOp::QueuePush {
                scope: b"s".into(),
                items: vec![b"x".into(), b"y".into()].into(),
            })
            .push(StorageOp::QueuePop { scope: b"s".into() })
            .push(StorageOp::CounterAdd {
                scope: b"s".into(),
                ns: b"".into(),
                key: b"c".into(),
                delta: 3,
            });
        assert_eq!(pipeline.len(), 8);
        let replies = pipeline.send().unwrap();
        assert!(pipeline.is_empty(), "sent operations are not sent again");
        let StorageReply::Id(first) = replies[3] else {
            panic!("{backend}: append answered {:?}", replies[3]);
        };
        assert_eq!(
            replies,
            vec![
                StorageReply::Unit,
                StorageReply::Unit,
                StorageReply::MaybeBytes(Some(b"v2".into())),
                StorageReply::Id(first),
                StorageReply::Id(first + 1),
                StorageReply::Unit,
                StorageReply::MaybeBytes(Some(b"x".into())),
                StorageReply::Int(3),
            ],
            "{backend}"
        );
        assert_eq!(store.kv_get(b"s", b"k").unwrap(), Some(b"v2".to_vec()));
        assert_eq!(
            store.scan(b"s", b"", b"log", 0, 10).unwrap(),
            vec![(first, b"a".to_vec()), (first + 1, b"b".to_vec())],
            "{backend}"
        );
        assert_eq!(store.queue_pop(b"s").unwrap(), Some(b"y".to_vec()));
        assert_eq!(client.batch(Vec::new()).unwrap(), Vec::new());
    }
}

#[test]
fn a_failing_batch_leaves_nothing_behind() {
    for (backend, _dir, store, server) in servers() {
        store.queue_push(b"s", &[b"kept".to_vec()]).unwrap();
        let ops = vec![
            kv_put(b"k", b"v"),
            append(b"log", b"a"),
            StorageOp::QueuePop { scope: b"s".into() },
            kv_put(b"big", &[7u8; 65]),
        ];
        // Through silo's client (keyed: `apply_once`) and as a bare request (no key).
        let err = client(&server).batch(ops.clone()).unwrap_err();
        assert!(
            matches!(err, silo::Error::InvalidInput { .. }),
            "{backend}: {err}"
        );
        assert!(
            err.to_string()
                .contains("operation #3 (KvPut) of the batch"),
            "{backend}: the error names the operation: {err}"
        );
        let bare = wire::encode(&StorageRequest {
            idempotency_key: None,
            op: StorageOp::Batch { ops: ops.into() },
        })
        .unwrap();
        let (status, text) = common::post(&server.url(), None, &bare);
        assert_eq!(status, 400, "{backend}: {text}");
        assert!(text.contains("operation #3"), "{backend}: {text}");
        assert_eq!(store.kv_get(b"s", b"k").unwrap(), None, "{backend}");
        assert_eq!(store.scan(b"s", b"", b"log", 0, 10).unwrap(), vec![]);
        assert_eq!(
            store.queue_pop(b"s").unwrap(),
            Some(b"kept".to_vec()),
            "{backend}: the popped item is back"
        );
    }
}

/// A batch of reads carries no idempotency key (it is retried like a read) and so leaves no
/// record; a batch with one write carries one.
#[test]
fn only_batches_that_write_are_recorded() {
    let store: Arc<dyn FunctionStorage> = Arc::new(silo::MemoryStorage::new());
    let server = common::start(Config::new(store.clone()));
    let client = client(&server);
    let get = StorageOp::KvGet {
        scope: b"s".into(),
        key: b"k".into(),
    };
    // Records younger than a millisecond are not expired: wait one out before counting.
    let recorded = || {
        std::thread::sleep(Duration::from_millis(5));
        store.expire_once_keys(Duration::ZERO).unwrap()
    };
    client.batch(vec![get.clone(), get.clone()]).unwrap();
    assert_eq!(recorded(), 0);
    client.batch(vec![get, kv_put(b"k", b"v")]).unwrap();
    assert_eq!(recorded(), 1);
}

#[test]
fn nested_batches_are_refused_and_the_server_keeps_serving() {
    let server = common::start(Config::new(Arc::new(silo::MemoryStorage::new())));
    // A million batches inside one another: refused at the second level, no deep recursion.
    let mut body = vec![0u8]; // no idempotency key
    for _ in 0..1_000_000 {
        body.extend(30u32.to_le_bytes()); // Batch
        body.extend(1u64.to_le_bytes()); // of one operation
    }
    let (status, text) = common::post(&server.url(), None, &body);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("a batch inside a batch"), "{text}");
    let inner = StorageOp::Batch {
        ops: vec![kv_put(b"k", b"v")].into(),
    };
    let err = client(&server).batch(vec![inner]).unwrap_err();
    assert!(
        matches!(err, silo::Error::InvalidInput { .. }),
        "refused while decoding: {err}"
    );
    client(&server).kv_put(b"s", b"k", b"v").unwrap();
}

#[test]
fn a_batch_counts_its_operations_and_their_items_against_the_limit() {
    let config = Config {
        limits: Limits {
            max_items: 10,
            ..Limits::default()
        },
        ..Config::new(Arc::new(silo::MemoryStorage::new()))
    };
    let server = common::start(config);
    let client = client(&server);
    client
        .batch((0..10).map(|i| kv_put(&[i], b"v")).collect())
        .unwrap();
    let err = client
        .batch((0..11).map(|i| kv_put(&[i], b"v")).collect())
        .unwrap_err();
    assert!(err.to_string().contains("11 items"), "{err}");
    // Five pushes of one item each: ten items.
    let push = StorageOp::QueuePush {
        scope: b"s".into(),
        items: vec![b"x".into()].into(),
    };
    client.batch(vec![push.clone(); 5]).unwrap();
    let err = client.batch(vec![push; 6]).unwrap_err();
    assert!(err.to_string().contains("12 items"), "{err}");
}

#[test]
fn a_tenants_batch_stays_in_its_tenant_and_cannot_read_the_whole_store() {
    let store: Arc<dyn FunctionStorage> = Arc::new(silo::MemoryStorage::new());
    let config = Config {
        auth: Auth::Tenants(vec![
            Tenant {
                token: "alice-token-0123456789".into(),
                name: "alice".into(),
            },
            Tenant {
                token: "bob-token-0123456789".into(),
                name: "bob".into(),
            },
        ]),
        ..Config::new(store)
    };
    let server = common::start(config);
    let as_tenant = |token: &str| {
        HttpStorage::new(
            &server.url(),
            HttpOptions {
                token: Some(token.into()),
                ..HttpOptions::default()
            },
        )
        .unwrap()
    };
    let (alice, bob) = (
        as_tenant("alice-token-0123456789"),
        as_tenant("bob-token-0123456789"),
    );
    alice.batch(vec![kv_put(b"k", b"alice's")]).unwrap();
    assert_eq!(bob.kv_get(b"s", b"k").unwrap(), None);
    assert_eq!(alice.kv_get(b"s", b"k").unwrap(), Some(b"alice's".to_vec()));
    let err = alice
        .batch(vec![kv_put(b"k", b"x"), StorageOp::Stat {}])
        .unwrap_err();
    assert!(matches!(err, silo::Error::Unauthorized { .. }), "{err}");
    assert_eq!(alice.kv_get(b"s", b"k").unwrap(), Some(b"alice's".to_vec()));
}
