//! Wire interop with the incumbent, both ways: the `vgi` crate's own `HttpStorage` (and a VGI
//! worker configured only by environment) against silo's server; silo's http client against a
//! server built from vgi's public API over vgi's `SqliteStorage`.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use silo_compat::{silo_server, vgi_server};
use vgi::storage::FunctionStorage as _;
use vgi::storage::{HttpStorage as VgiHttp, SqliteStorage as VgiSqlite};

fn silo_sqlite() -> (tempfile::TempDir, Arc<dyn silo::FunctionStorage>) {
    let dir = tempfile::tempdir().unwrap();
    let store = silo::open(&format!("sqlite://{}/silo.db", dir.path().display())).unwrap();
    (dir, store)
}

/// Every core operation of vgi's client against `silo serve` gives the answers the contract
/// promises.
#[test]
fn vgi_client_against_silo_server() {
    let (_dir, store) = silo_sqlite();
    let server = silo_server(store.clone());
    let vgi = VgiHttp::new(server.url(), None);

    assert_eq!(vgi.kv_get(b"s", b"k"), None);
    vgi.kv_put(b"s", b"k", b"v1");
    vgi.kv_put(b"s", b"k", b"v2");
    assert_eq!(vgi.kv_get(b"s", b"k"), Some(b"v2".to_vec()));
    assert_eq!(
        store.kv_get(b"s", b"k").unwrap(),
        Some(b"v2".to_vec()),
        "same data silo-side"
    );
    vgi.kv_del(b"s", b"k");
    assert_eq!(vgi.kv_get(b"s", b"k"), None);

    let ids: Vec<i64> = (0..20u8)
        .map(|i| vgi.append(b"s", b"ns", b"log", vec![i]))
        .collect();
    assert!(
        ids[0] >= 1 && ids.windows(2).all(|w| w[0] < w[1]),
        "{ids:?}"
    );
    let all = vgi.scan(b"s", b"ns", b"log", -1, usize::MAX);
    assert_eq!(all.len(), 20);
    assert_eq!(all[3], (ids[3], vec![3]));
    assert_eq!(
        vgi.scan(b"s", b"ns", b"log", ids[9], 3)
            .iter()
            .map(|e| e.0)
            .collect::<Vec<_>>(),
        ids[10..13]
    );

    vgi.queue_push(b"s", &[b"a".to_vec(), b"b".to_vec()]);
    vgi.queue_push(b"s", &[b"c".to_vec()]);
    assert_eq!(vgi.queue_pop(b"s"), Some(b"a".to_vec()));
    assert_eq!(vgi.queue_pop(b"s"), Some(b"b".to_vec()));
    assert_eq!(vgi.queue_pop(b"s"), Some(b"c".to_vec()));
    assert_eq!(vgi.queue_pop(b"s"), None);

    let big: Vec<u8> = (0..(16 << 20)).map(|i: usize| (i % 253) as u8).collect();
    vgi.kv_put(b"s", b"big", &big);
    assert!(
        vgi.kv_get(b"s", b"big") == Some(big.clone()),
        "16 MiB value intact"
    );
    vgi.append(b"s", b"ns", b"biglog", big.clone());
    assert!(vgi.scan(b"s", b"ns", b"biglog", -1, usize::MAX)[0].1 == big);

    vgi.clear(b"s");
    assert_eq!(vgi.kv_get(b"s", b"big"), None);
    assert!(vgi.scan(b"s", b"ns", b"log", -1, usize::MAX).is_empty());
    vgi.kv_put(b"old", b"k", b"v");
    std::thread::sleep(Duration::from_millis(1100));
    vgi.gc(Duration::from_millis(500));
    assert_eq!(
        vgi.kv_get(b"old", b"k"),
        None,
        "gc through the core op sweeps"
    );
}

/// The worker side: a VGI worker configured only by environment, as a deployment would,
/// run as a separate process.
#[test]
fn vgi_worker_configured_by_environment_uses_silo() {
    let (_dir, store) = silo_sqlite();
    let server = silo_server(store.clone());
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["vgi_worker_process", "--exact", "--ignored", "--nocapture"])
        .env("VGI_WORKER_SHARED_STORAGE", "http")
        .env("VGI_STORAGE_URL", server.url())
        .env("COMPAT_WORKER", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        store.kv_get(b"worker-scope", b"group:1").unwrap(),
        Some(b"42".to_vec())
    );
    assert_eq!(
        store.queue_pop(b"worker-scope").unwrap(),
        Some(b"partition-1".to_vec())
    );
    assert_eq!(
        store
            .scan(b"worker-scope", b"sink", b"batches", 0, u64::MAX)
            .unwrap()
            .len(),
        2
    );
}

#[test]
#[ignore = "worker process entry point of vgi_worker_configured_by_environment_uses_silo"]
fn vgi_worker_process() {
    if std::env::var("COMPAT_WORKER").is_err() {
        return;
    }
    let storage = vgi::storage::default_storage();
    storage.kv_put(b"worker-scope", b"group:1", b"42");
    storage.append(b"worker-scope", b"sink", b"batches", b"batch-1".to_vec());
    storage.append(b"worker-scope", b"sink", b"batches", b"batch-2".to_vec());
    storage.queue_push(
        b"worker-scope",
        &[b"partition-0".to_vec(), b"partition-1".to_vec()],
    );
    assert_eq!(
        storage.queue_pop(b"worker-scope"),
        Some(b"partition-0".to_vec())
    );
}

/// silo's http client runs the core conformance checks against a vgi-built server over
/// vgi's own SQLite store.
mod silo_client_against_vgi_server {
    use super::*;

    struct Guard {
        client: Arc<dyn silo::FunctionStorage>,
        _server: silo_compat::Running,
        _dir: tempfile::TempDir,
    }

    impl std::ops::Deref for Guard {
        type Target = dyn silo::FunctionStorage;
        fn deref(&self) -> &Self::Target {
            &*self.client
        }
    }

    fn vgi_backed() -> Guard {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(VgiSqlite::open(dir.path().join("vgi.db")));
        let server = vgi_server(store);
        let client = silo::open(&server.url()).unwrap();
        Guard {
            client,
            _server: server,
            _dir: dir,
        }
    }

    silo::core_conformance_tests!(vgi_backed());

    #[test]
    fn extended_operations_are_unsupported_not_wrong() {
        let s = vgi_backed();
        let err = s.counter_add(b"s", b"", b"c", 1).unwrap_err();
        assert!(matches!(err, silo::Error::Unsupported { .. }), "{err}");
    }
}
