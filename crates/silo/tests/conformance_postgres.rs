//! The conformance kit on the `postgres://` backend, against a throwaway PostgreSQL cluster
//! this test process starts (see `silo::conformance::postgres`): one fresh schema per check;
//! through two tenants' prefixes; on a manual clock; and what only a shared database shows
//! (several handles racing, an unreachable server, a wrong database).
#![cfg(feature = "postgres")]

use std::ops::Deref;
use std::sync::Arc;

use silo::FunctionStorage;
use silo::conformance::postgres::cluster;

/// A store in a schema of its own.
struct PgTemp {
    store: Arc<dyn FunctionStorage>,
    url: String,
}

impl Deref for PgTemp {
    type Target = dyn FunctionStorage;
    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

/// A fresh store (`query`: more URL options), or `None` when PostgreSQL is not installed.
fn pg(query: &str) -> Option<PgTemp> {
    let url = cluster()?.fresh_url(query);
    let store = silo::open(&url).unwrap_or_else(|e| panic!("opening {url}: {e}"));
    Some(PgTemp { store, url })
}

fn pg_clocked() -> Option<(PgTemp, silo::Clock)> {
    let url = cluster()?.fresh_url("max_value_bytes=68157440");
    let clock = silo::Clock::manual_now();
    let options = silo::StoreOptions {
        clock: clock.clone(),
        ..silo::StoreOptions::default()
    };
    let parsed = url::Url::parse(&url).unwrap();
    let store =
        Arc::new(silo::postgres::PostgresStorage::open_with_options(&parsed, options).unwrap());
    Some((PgTemp { store, url }, clock))
}

silo::conformance_tests!(maybe pg("max_value_bytes=68157440"));

#[test]
fn apply_once_applies_once() {
    let Some(store) = pg("") else { return };
    silo::conformance::apply_once_applies_once(&*store);
}

#[test]
fn apply_once_fails_atomically_at_every_step() {
    let Some(store) = pg("") else { return };
    silo::conformance::apply_once_fails_atomically_at_every_step(&*store);
}

#[test]
fn gc_prefix_sweeps_only_its_prefix() {
    let Some(store) = pg("") else { return };
    silo::conformance::gc_prefix_sweeps_only_its_prefix(&*store);
}

#[test]
fn apply_once_is_isolated_by_prefix() {
    let Some(store) = pg("") else { return };
    silo::conformance::run_isolated(&*store, silo::conformance::apply_once_applies_once);
    silo::conformance::run_isolated(
        &*store,
        silo::conformance::apply_once_fails_atomically_at_every_step,
    );
}

/// Every check again, through two tenants' prefixes.
mod isolated {
    #[allow(unused_imports)]
    use super::*;
    silo::conformance_tests!(maybe isolated super::pg("max_value_bytes=68157440"));
}

/// Every check on a manual clock: leases and sweeps without sleeping.
mod clocked {
    #[allow(unused_imports)]
    use super::*;
    silo::conformance_tests!(maybe clocked super::pg_clocked());
}

/// Several handles on one schema (as several hosts would have): appends to one log from all
/// of them get strictly increasing ids in commit order, so a reader following the log with
/// a cursor never skips an entry; pops hand every item out once.
#[test]
fn handles_on_one_database_share_one_store() {
    let Some(first) = pg("pool_size=4") else {
        return;
    };
    let handles: Vec<Arc<dyn FunctionStorage>> =
        (0..4).map(|_| silo::open(&first.url).unwrap()).collect();
    const PER: usize = 200;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let seen = std::thread::scope(|t| {
        for (h, store) in handles.iter().enumerate() {
            let done = &done;
            t.spawn(move || {
                for i in 0..PER {
                    store
                        .append(b"s", b"", b"log", format!("{h}:{i}").as_bytes())
                        .unwrap();
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        // A follower reading with a cursor while the writers run.
        let reader = t.spawn(|| {
            let mut after = 0;
            let mut seen = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            loop {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the writers never finished"
                );
                let finished = done.load(std::sync::atomic::Ordering::SeqCst) == 4;
                let page = first.scan(b"s", b"", b"log", after, 50).unwrap();
                if let Some((id, _)) = page.last() {
                    after = *id;
                }
                seen.extend(page.into_iter().map(|(_, v)| v));
                if finished && seen.len() >= 4 * PER {
                    return seen;
                }
                if finished && first.scan(b"s", b"", b"log", after, 1).unwrap().is_empty() {
                    return seen;
                }
            }
        });
        reader.join().unwrap()
    });
    assert_eq!(
        seen.len(),
        4 * PER,
        "the cursor saw every entry exactly once"
    );
    let all = first.scan(b"s", b"", b"log", 0, u64::MAX).unwrap();
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));

    let items: Vec<Vec<u8>> = (0..400u32).map(|i| i.to_be_bytes().to_vec()).collect();
    first.queue_push(b"q", &items).unwrap();
    let popped = std::thread::scope(|t| {
        let workers: Vec<_> = handles
            .iter()
            .map(|store| {
                t.spawn(move || {
                    let mut got = Vec::new();
                    while let Some(v) = store.queue_pop(b"q").unwrap() {
                        got.push(v);
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<Vec<u8>> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        all.sort();
        all
    });
    assert_eq!(popped, items, "every item popped exactly once");
}

/// Two processes' handles opening one fresh schema at once: the migration runs once.
#[test]
fn concurrent_opens_of_a_fresh_schema_do_not_race() {
    let Some(cluster) = cluster() else { return };
    let url = cluster.fresh_url("");
    let opened: Vec<_> = std::thread::scope(|t| {
        let all: Vec<_> = (0..6).map(|_| t.spawn(|| silo::open(&url))).collect();
        all.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for store in opened {
        let store = store.expect("every concurrent open succeeds");
        store.kv_put(b"s", b"k", b"v").unwrap();
    }
}

/// Unreachable servers and wrong databases are clear errors, not hangs or panics.
#[test]
fn bad_connections_are_clear_errors() {
    let Some(cluster) = cluster() else { return };
    let missing_db = cluster
        .url("s", "")
        .replace("postgres:///postgres", "postgres:///no_such_db");
    let err = silo::open(&missing_db).unwrap_err();
    assert!(matches!(err, silo::Error::Config { .. }), "{err}");
    assert!(err.to_string().contains("no_such_db"), "{err}");
    let err = silo::open("postgres://silo@127.0.0.1:1/x?connect_timeout=2").unwrap_err();
    assert!(matches!(err, silo::Error::Unavailable { .. }), "{err}");
    let err = silo::open(&cluster.url("Bad-Name", "")).unwrap_err();
    assert!(matches!(err, silo::Error::Config { .. }), "{err}");
    // `allow` tries the clear first, a downgrade anyone on the path can force: not offered.
    let err = silo::open(&cluster.url("s", "sslmode=allow")).unwrap_err();
    assert!(matches!(err, silo::Error::Config { .. }), "{err}");
}

/// A backend killed under a store (`pg_terminate_backend`): the next operations fail with
/// `Unavailable` or succeed on a new connection; the pool recovers without a restart.
#[test]
fn a_terminated_backend_is_survived() {
    let Some(store) = pg("pool_size=2&application_name=silo_terminated") else {
        return;
    };
    store.kv_put(b"s", b"k", b"v").unwrap();
    let cluster = cluster().unwrap();
    cluster
        .psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'silo_terminated'",
        )
        .unwrap();
    // A read is retried on a fresh connection; a write may fail once, as Unavailable.
    assert_eq!(store.kv_get(b"s", b"k").unwrap(), Some(b"v".to_vec()));
    for _ in 0..3 {
        match store.kv_put(b"s", b"k2", b"v2") {
            Ok(()) => break,
            Err(silo::Error::Unavailable { .. }) => continue,
            Err(e) => panic!("a lost connection must be Unavailable: {e}"),
        }
    }
    assert_eq!(store.kv_get(b"s", b"k2").unwrap(), Some(b"v2".to_vec()));
}

/// Writers racing `clear` on one scope (from several handles, as several hosts would): no
/// write outlives its scope's row, so a sweep afterwards leaves nothing behind.
#[test]
fn clear_racing_writers_leaves_no_orphans() {
    let Some(first) = pg("") else { return };
    let handles: Vec<Arc<dyn FunctionStorage>> =
        (0..3).map(|_| silo::open(&first.url).unwrap()).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|t| {
        for (h, store) in handles.iter().enumerate() {
            let stop = &stop;
            t.spawn(move || {
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store
                        .kv_put(b"raced", format!("{h}-{i}").as_bytes(), b"v")
                        .unwrap();
                    store.append(b"raced", b"", b"log", b"v").unwrap();
                    i += 1;
                }
            });
        }
        for _ in 0..200 {
            first.clear(b"raced").unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    std::thread::sleep(std::time::Duration::from_millis(20));
    first.gc(std::time::Duration::from_millis(1)).unwrap();
    let stats = first.stat().unwrap();
    assert_eq!(
        (stats.scopes, stats.state_entries, stats.log_entries),
        (0, 0, 0),
        "a sweep of every scope leaves nothing: no data lost its scope's row"
    );
}

/// A worked queue is vacuumed by silo itself every `vacuum_every` retired rows (autovacuum
/// alone wakes once a minute, and a busy queue bloats in between); with `vacuum_every=0` it is
/// left to autovacuum. Manual vacuums are counted apart from autovacuum's (`vacuum_count`).
#[test]
fn a_worked_queue_is_vacuumed_by_silo() {
    let vacuums = |store: &PgTemp| -> i64 {
        let url = url::Url::parse(&store.url).unwrap();
        let schema = url
            .query_pairs()
            .find(|(k, _)| k == "schema")
            .unwrap()
            .1
            .to_string();
        let sql = format!(
            "SELECT coalesce(sum(vacuum_count), 0) FROM pg_stat_user_tables \
             WHERE schemaname = '{schema}' AND relname = 'queue'"
        );
        cluster().unwrap().psql(&sql).unwrap().parse().unwrap()
    };
    let work = |store: &PgTemp| {
        let items: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_be_bytes().to_vec()).collect();
        store.queue_push(b"q", &items).unwrap();
        while store.queue_pop(b"q").unwrap().is_some() {}
    };
    let Some(busy) = pg("vacuum_every=100") else {
        return;
    };
    let quiet = pg("vacuum_every=0").unwrap();
    work(&busy);
    work(&quiet);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while vacuums(&busy) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "300 pops with vacuum_every=100 and no vacuum of the queue table"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(vacuums(&quiet), 0, "vacuum_every=0 vacuumed");
    let err = silo::open(&cluster().unwrap().fresh_url("vacuum_every=x")).unwrap_err();
    assert!(matches!(err, silo::Error::Config { .. }), "{err}");
}
