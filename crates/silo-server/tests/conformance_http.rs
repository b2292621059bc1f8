//! The conformance kit and the cross-process scenarios over `http://`, against a real server
//! on a SQLite store (and the kit again on an `fs:` store).

mod common;

use common::HttpStore;
use silo::conformance::processes;

silo::conformance_tests!(HttpStore::new("max_value_bytes=68157440"));

/// Every check through a server on an `fs:` store: each write arrives keyed, so this runs
/// `apply_once` on the engine for every operation.
mod on_fs {
    use super::HttpStore;
    silo::conformance_tests!(HttpStore::fs("max_value_bytes=68157440"));
}

/// Every check through two tenants of one server, one after the other: the second tenant's
/// run passes only if nothing of the first's leaked through the server's tenant fence.
mod tenants {
    use std::sync::Arc;

    use silo::http::{HttpOptions, HttpStorage};
    use silo_server::{Auth, Config, Tenant};

    /// Two tenants' clients of one server; the server lives as long as the pair.
    pub struct Tenants {
        client: Arc<HttpStorage>,
        _server: Arc<super::common::TestServer>,
        _dir: Arc<tempfile::TempDir>,
    }

    impl std::ops::Deref for Tenants {
        type Target = dyn silo::FunctionStorage;
        fn deref(&self) -> &Self::Target {
            &*self.client
        }
    }

    pub fn two_tenants() -> (Tenants, Tenants) {
        let (dir, url) = super::common::sqlite_url("max_value_bytes=68157440");
        let tenants = ["alpha", "beta"].map(|name| Tenant {
            token: format!("{name}-token-0123456789"),
            name: name.into(),
        });
        let server = Arc::new(super::common::start(Config {
            auth: Auth::Tenants(tenants.to_vec()),
            ..Config::new(silo::open(&url).unwrap())
        }));
        let dir = Arc::new(dir);
        let client = |tenant: &Tenant| Tenants {
            client: Arc::new(
                HttpStorage::new(
                    &server.url(),
                    HttpOptions {
                        token: Some(tenant.token.clone()),
                        ..HttpOptions::default()
                    },
                )
                .unwrap(),
            ),
            _server: server.clone(),
            _dir: dir.clone(),
        };
        (client(&tenants[0]), client(&tenants[1]))
    }

    // Every check but the four that read the store's limits or counts through `Stat`, which
    // the server keeps for its admin token (a tenant's Stat is 401, tested in server.rs).
    silo::conformance_tests!(@each two_tenants(), twice;
        kv_roundtrip, state_namespaces_are_isolated, state_scan_ranges,
        state_delete_selections, state_drain_takes_everything_once,
        state_drains_race_without_sharing, log_ordering_and_cursors,
        counters_basic, counters_concurrent_adds, scopes_are_isolated,
        clear_drops_the_whole_scope, gc_drops_only_stale_scopes, queue_fifo,
        queue_concurrent_pops, queue_leases, lease_expiry_has_one_owner,
        adversarial_names, value_sizes, every_change_touches_its_scope);
}

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
