//! Several `silo serve`s on one PostgreSQL store (a throwaway cluster the test starts): four
//! poppers spread over three servers take every item once while one server is SIGKILLed, each
//! popper failing over to another server with the same idempotency key; and a retried request
//! answered by another server is applied once.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use silo::wire::{Bytes, StorageOp, StorageReply, StorageRequest};

/// Sends one encoded request to the server on `port`; `None` when the server could not be
/// reached or answered with a server error (the caller then tries another one).
fn send(port: u16, body: &[u8]) -> Option<StorageReply> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent
        .post(format!("http://127.0.0.1:{port}/rpc"))
        .send(body)
        .ok()?;
    let status = resp.status().as_u16();
    let bytes = resp.body_mut().read_to_vec().ok()?;
    assert!(!(400..500).contains(&status), "client error {status}");
    if status != 200 {
        return None;
    }
    Some(silo::wire::decode(&bytes).unwrap())
}

/// Sends `request` to the servers in turn, from `first`, until one answers: the same bytes,
/// so the same idempotency key, every time.
fn send_with_failover(ports: &[u16], first: usize, request: &StorageRequest) -> StorageReply {
    let body = silo::wire::encode(request).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    for turn in 0.. {
        assert!(Instant::now() < deadline, "no server answered");
        if let Some(reply) = send(ports[(first + turn) % ports.len()], &body) {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unreachable!()
}

#[test]
fn three_servers_one_database_every_item_once_through_a_kill() {
    let Some(cluster) = silo::conformance::postgres::cluster() else {
        return;
    };
    let url = cluster.fresh_url("");
    let mut servers: Vec<(Child, u16)> = (0..3).map(|_| common::start_server(&url, &[])).collect();
    let ports: Vec<u16> = servers.iter().map(|(_, p)| *p).collect();

    const ITEMS: u32 = 600;
    let items: Vec<Vec<u8>> = (0..ITEMS).map(|i| i.to_be_bytes().to_vec()).collect();
    let direct = silo::open(&url).unwrap();
    direct.queue_push(b"work", &items).unwrap();

    let popped_so_far = std::sync::atomic::AtomicU32::new(0);
    let (mut popped, killed) = std::thread::scope(|t| {
        let poppers: Vec<_> = (0..4usize)
            .map(|p| {
                let ports = &ports;
                let popped_so_far = &popped_so_far;
                t.spawn(move || {
                    let mut got = Vec::new();
                    for n in 0u64.. {
                        let request = StorageRequest {
                            idempotency_key: Some(format!("popper-{p}-{n}")),
                            op: StorageOp::QueuePop {
                                scope: Bytes(b"work".to_vec()),
                            },
                        };
                        match send_with_failover(ports, p % 3, &request) {
                            StorageReply::MaybeBytes(Some(v)) => {
                                got.push(v.0);
                                popped_so_far.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            StorageReply::MaybeBytes(None) => return got,
                            other => panic!("unexpected reply {other:?}"),
                        }
                    }
                    got
                })
            })
            .collect();
        // Mid-run, server 2 dies without a chance to answer what it was doing.
        while popped_so_far.load(std::sync::atomic::Ordering::SeqCst) < ITEMS / 4 {
            std::thread::sleep(Duration::from_millis(2));
        }
        let (child, _) = &mut servers[2];
        child.kill().unwrap();
        child.wait().unwrap();
        let killed_at = popped_so_far.load(std::sync::atomic::Ordering::SeqCst);
        let all: Vec<Vec<u8>> = poppers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        (all, killed_at)
    });
    assert!(
        killed < ITEMS,
        "the kill happened mid-run ({killed} popped before it)"
    );
    popped.sort();
    assert_eq!(
        popped.len(),
        items.len(),
        "every item popped once, none lost"
    );
    assert_eq!(popped, items);
    assert_eq!(direct.queue_len(b"work").unwrap(), 0);

    // A request applied by server 0 whose reply was lost, retried through server 1: the
    // shared idempotency table answers with the first reply and applies nothing again.
    let append = StorageRequest {
        idempotency_key: Some("append-once".into()),
        op: StorageOp::Append {
            scope: Bytes(b"log".to_vec()),
            ns: Bytes(Vec::new()),
            key: Bytes(b"k".to_vec()),
            value: Bytes(b"v".to_vec()),
        },
    };
    let body = silo::wire::encode(&append).unwrap();
    let first = send(ports[0], &body).unwrap();
    let again = send(ports[1], &body).unwrap();
    assert!(matches!(first, StorageReply::Id(_)), "{first:?}");
    assert_eq!(first, again, "the retry gets the first reply");
    assert_eq!(direct.scan(b"log", b"", b"k", 0, 10).unwrap().len(), 1);

    for (mut child, _) in servers {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A server embedded with the library's defaults (`silo_server::Config::new`) over a postgres
/// store: point operations go to the blocking pool, since the `postgres` client cannot run on
/// a reactor thread (it panicked there, and every request answered 500).
#[test]
fn an_embedded_server_on_postgres_answers_point_operations() {
    let Some(cluster) = silo::conformance::postgres::cluster() else {
        return;
    };
    let store = silo::open(&cluster.fresh_url("")).unwrap();
    assert!(!store.answers_in_microseconds());
    let server = silo_server::spawn(silo_server::Config::new(store)).unwrap();
    let client =
        silo::http::HttpStorage::new(&server.url(), silo::http::HttpOptions::default()).unwrap();
    use silo::FunctionStorage;
    client.kv_put(b"s", b"k", b"v").unwrap();
    assert_eq!(client.kv_get(b"s", b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(client.append(b"s", b"ns", b"log", b"e").unwrap(), 1);
    client.queue_push(b"s", &[b"i".to_vec()]).unwrap();
    assert_eq!(client.queue_pop(b"s").unwrap(), Some(b"i".to_vec()));
}
