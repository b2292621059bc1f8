//! The kit's cross-process scenarios on `postgres://` with real OS processes (4 poppers,
//! 4 pushers, 4 appenders, a SIGKILLed writer, a SIGKILLed leased consumer), each on a schema
//! of its own in the throwaway cluster this test process starts.
#![cfg(feature = "postgres")]

use silo::conformance::processes;

silo::worker_entry!();

/// A fresh store's URL, or `None` (after a loud SKIPPED line) without PostgreSQL.
fn url() -> Option<String> {
    Some(silo::conformance::postgres::cluster()?.fresh_url(""))
}

#[test]
fn postgres_four_poppers_one_pusher() {
    let Some(url) = url() else { return };
    processes::four_poppers_one_pusher(&url);
}

#[test]
fn postgres_four_pushers() {
    let Some(url) = url() else { return };
    processes::four_pushers(&url);
}

#[test]
fn postgres_four_appenders() {
    let Some(url) = url() else { return };
    processes::four_appenders(&url);
}

#[test]
fn postgres_killed_writer_loses_nothing_acknowledged() {
    let Some(url) = url() else { return };
    processes::killed_writer_loses_nothing_acknowledged(&url);
}

#[test]
fn postgres_leased_consumers_survive_a_kill() {
    let Some(url) = url() else { return };
    processes::leased_consumers_survive_a_kill(&url);
}
