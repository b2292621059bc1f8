//! The conformance kit and the cross-process scenarios over `http://`, against a real server
//! on a SQLite store.

mod common;

use common::HttpStore;
use silo::conformance::processes;

silo::conformance_tests!(HttpStore::new("max_value_bytes=68157440"));

silo::worker_entry!();

#[test]
fn http_four_poppers_one_pusher() {
    let s = HttpStore::new("");
    processes::four_poppers_one_pusher(&s.server.url());
}

#[test]
fn http_four_pushers() {
    let s = HttpStore::new("");
    processes::four_pushers(&s.server.url());
}

#[test]
fn http_four_appenders() {
    let s = HttpStore::new("");
    processes::four_appenders(&s.server.url());
}

#[test]
fn http_killed_writer_loses_nothing_acknowledged() {
    let s = HttpStore::new("");
    processes::killed_writer_loses_nothing_acknowledged(&s.server.url());
}

#[test]
fn http_leased_consumers_survive_a_kill() {
    let s = HttpStore::new("");
    processes::leased_consumers_survive_a_kill(&s.server.url());
}

/// The client is synchronous yet safe inside a tokio runtime (a VGI worker calls it there).
#[test]
fn client_works_inside_a_tokio_runtime() {
    let s = HttpStore::new("");
    for flavor in ["current_thread", "multi_thread"] {
        let rt = match flavor {
            "current_thread" => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            _ => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build(),
        }
        .unwrap();
        let client = s.client.clone();
        rt.block_on(async move {
            client.kv_put(b"rt", flavor.as_bytes(), b"inside").unwrap();
            assert_eq!(
                client.kv_get(b"rt", flavor.as_bytes()).unwrap(),
                Some(b"inside".to_vec())
            );
            let c = client.clone();
            let n = tokio::spawn(async move { c.counter_add(b"rt", b"", b"n", 1).unwrap() })
                .await
                .unwrap();
            assert!(n >= 1);
        });
    }
}
