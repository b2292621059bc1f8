//! `postgres://` over the network: TLS with libpq's `sslmode`s, passwords, and a server that
//! stops and starts again under a running store. Each test starts a cluster of its own (see
//! `silo::conformance::postgres::private_cluster`), listening on loopback TCP with a
//! certificate from a throwaway CA that names `localhost` only.
#![cfg(feature = "postgres")]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use silo::conformance::postgres::{Cluster, Setup, private_cluster};
use silo::{Error, FunctionStorage};

/// The cluster with TCP and TLS shared by this file's TLS checks.
fn tls_cluster() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| {
            private_cluster(Setup {
                tcp: true,
                ..Setup::default()
            })
        })
        .as_ref()
}

fn open(url: &str) -> silo::Result<Arc<dyn FunctionStorage>> {
    silo::open(url)
}

/// Opens `url`, writes and reads a key, and returns whether the server saw this connection
/// as TLS (`pg_stat_ssl`, matched by a unique application_name).
fn round_trip_is_encrypted(cluster: &Cluster, url: &str, name: &str) -> bool {
    let url = format!("{url}&application_name={name}");
    let store = open(&url).unwrap_or_else(|e| panic!("opening {url}: {e}"));
    store.kv_put(b"s", b"k", b"v").unwrap();
    assert_eq!(store.kv_get(b"s", b"k").unwrap(), Some(b"v".to_vec()));
    let ssl = cluster
        .psql(&format!(
            "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE application_name = '{name}'"
        ))
        .unwrap();
    drop(store);
    ssl == "t"
}

fn config_error_mentioning(result: silo::Result<Arc<dyn FunctionStorage>>, words: &[&str]) {
    match result {
        Ok(_) => panic!("expected an error mentioning {words:?}, the store opened"),
        Err(e @ Error::Config { .. }) => {
            let text = e.to_string();
            for w in words {
                assert!(text.contains(w), "{text:?} should mention {w:?}");
            }
        }
        Err(e) => panic!("expected a Config error mentioning {words:?}, got {e:?}"),
    }
}

/// `require` and `prefer` encrypt without checking the certificate; the server refuses plain
/// connections over TCP, so `disable` is turned away (and says why).
#[test]
fn require_and_prefer_encrypt() {
    let Some(cluster) = tls_cluster() else { return };
    let url = cluster.tcp_url("127.0.0.1", "tls_require", "sslmode=require");
    assert!(round_trip_is_encrypted(cluster, &url, "silo_require"));
    let url = cluster.tcp_url("127.0.0.1", "tls_prefer", "sslmode=prefer");
    assert!(round_trip_is_encrypted(cluster, &url, "silo_prefer"));
    // No sslmode: prefer, as in libpq.
    let url = cluster.tcp_url("127.0.0.1", "tls_default", "");
    assert!(round_trip_is_encrypted(cluster, &url, "silo_default"));
    let url = cluster.tcp_url("127.0.0.1", "tls_disable", "sslmode=disable");
    config_error_mentioning(open(&url), &["no encryption"]);
}

/// `verify-full` checks the chain and the name; `verify-ca` the chain only; `require` with
/// `sslrootcert` is `verify-ca` (libpq's rule).
#[test]
fn verify_modes_check_what_they_promise() {
    let Some(cluster) = tls_cluster() else { return };
    let ca = cluster.ca_cert();
    let other = cluster.other_ca_cert();
    let with = |mode: &str, root: &std::path::Path| {
        format!("sslmode={mode}&sslrootcert={}", root.display())
    };
    // The certificate names localhost and chains to `ca`.
    let url = cluster.tcp_url("localhost", "tls_full", &with("verify-full", &ca));
    assert!(round_trip_is_encrypted(cluster, &url, "silo_full"));
    // Right CA, wrong name: verify-full refuses, verify-ca accepts.
    let url = cluster.tcp_url("127.0.0.1", "tls_full", &with("verify-full", &ca));
    config_error_mentioning(open(&url), &["TLS", "127.0.0.1"]);
    let url = cluster.tcp_url("127.0.0.1", "tls_ca", &with("verify-ca", &ca));
    assert!(round_trip_is_encrypted(cluster, &url, "silo_ca"));
    // A CA that did not sign it: refused by every checking mode.
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = cluster.tcp_url("localhost", "tls_other", &with(mode, &other));
        config_error_mentioning(open(&url), &["TLS", "UnknownIssuer"]);
    }
    // No sslrootcert: Mozilla's roots, which did not sign a throwaway CA.
    let url = cluster.tcp_url("localhost", "tls_mozilla", "sslmode=verify-full");
    config_error_mentioning(open(&url), &["TLS", "UnknownIssuer"]);
    let url = cluster.tcp_url(
        "localhost",
        "tls_none",
        "sslmode=verify-full&sslrootcert=/no/such.crt",
    );
    config_error_mentioning(open(&url), &["sslrootcert=/no/such.crt"]);
}

/// A wrong password and a missing database are configuration errors naming the problem; so is
/// an unknown sslmode.
#[test]
fn wrong_password_is_a_clear_error() {
    let Some(cluster) = tls_cluster() else { return };
    let url = cluster
        .tcp_url("localhost", "pw", "sslmode=require")
        .replace(silo::conformance::postgres::PASSWORD, "not-the-password");
    config_error_mentioning(open(&url), &["password", "silo"]);
    assert!(
        !open(&url)
            .unwrap_err()
            .to_string()
            .contains("not-the-password")
    );
    let url = cluster
        .tcp_url("localhost", "pw", "sslmode=require")
        .replace("/postgres?", "/no_such_db?");
    config_error_mentioning(open(&url), &["no_such_db"]);
    let url = cluster.tcp_url("localhost", "pw", "sslmode=allow");
    config_error_mentioning(open(&url), &["sslmode"]);
}

/// The server stops (`pg_ctl stop -m fast`) and starts again under a writer whose every
/// operation is an `apply_once` retried with the same key until it succeeds, as callers that
/// retry do: while the server is down operations fail as `Unavailable` (never a panic, never
/// another kind); afterwards the same store object works again, and the log holds each of the
/// writer's entries exactly once, in order.
#[test]
fn a_restarted_server_is_survived() {
    let Some(cluster) = private_cluster(Setup::default()) else {
        return;
    };
    let url = cluster.url("restart", "pool_size=3&busy_timeout_ms=300");
    let store = open(&url).unwrap();
    const ENTRIES: u64 = 300;
    // Three writers on three logs, so some connection is mid-transaction when the server stops.
    let writers: Vec<_> = (0..3u8)
        .map(|w| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut unavailable = 0;
                for i in 0..ENTRIES {
                    let key = format!("writer-{w}-entry-{i}");
                    loop {
                        let result = store.apply_once(key.as_bytes(), &[0; 32], &mut |s| {
                            s.append(b"s", b"ns", &[w], &i.to_be_bytes())
                                .map(|id| id.to_be_bytes().to_vec())
                        });
                        match result {
                            Ok(_) => break,
                            Err(Error::Unavailable { .. }) => {
                                unavailable += 1;
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            Err(e) => {
                                panic!("entry {i}: a stopped server must be Unavailable: {e:?}")
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                unavailable
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    cluster.stop().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    cluster.start_again().unwrap();
    let unavailable: u32 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(
        unavailable > 0,
        "no writer saw the server down: the test did not test"
    );
    for w in 0..3u8 {
        let entries = store.scan(b"s", b"ns", &[w], 0, u64::MAX).unwrap();
        let values: Vec<u64> = entries
            .iter()
            .map(|e| u64::from_be_bytes(e.1.as_slice().try_into().unwrap()))
            .collect();
        assert_eq!(values, (0..ENTRIES).collect::<Vec<_>>(), "writer {w}");
    }
}
