//! `postgres://` — the backend for deployments that outgrow one host: every table of the store
//! in one PostgreSQL schema, shared by any number of processes, hosts and `silo serve`s.
//!
//! Each operation is one SQL statement where it can be (data-modifying CTEs carry the scope's
//! touch along), run in autocommit on a pooled connection: one round trip. Operations that must
//! read before they write (a claim that sets exhausted items aside, a counter set) run in one
//! transaction. Concurrency comes from PostgreSQL's row locks, never from a lock in this
//! process:
//! - queue pops and claims take the head with `FOR UPDATE SKIP LOCKED`, so consumers on
//!   different hosts never block on, or both take, one item;
//! - an append takes a transaction-scoped advisory lock on its log before it draws an id from
//!   the store's sequence, so ids commit in increasing order per log and a cursor never skips;
//! - a write takes a `KEY SHARE` lock on its scope's row (or creates it), so `clear` and `gc`
//!   (which delete that row first, then the data, in one transaction) never leave a write
//!   behind without its scope;
//! - `apply_once` runs its operations in one transaction that ends with the reply's record: a
//!   concurrent retry through another server waits on that row and replays the reply.
//!
//! TLS (`sslmode`, `sslrootcert`) is [`tls`]'s.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};
use url::Url;

mod tls;

use crate::options::{SyncMode, lease_millis, millis};
use crate::storage::{Entry, KeyValue, key_reused};
use crate::{
    Claim, DeadLetter, Error, FunctionStorage, KeyRange, Result, Selection, StoreOptions,
    StoreStats,
};

/// Schema migrations: entry `n` takes a schema from version `n` to `n + 1`.
const MIGRATIONS: [&str; 1] = [SCHEMA_V1];

const SCHEMA_V1: &str = "
CREATE TABLE scopes (scope BYTEA PRIMARY KEY, touched_ms BIGINT NOT NULL);
CREATE INDEX scopes_by_touch ON scopes (touched_ms);

CREATE TABLE state (
    scope BYTEA NOT NULL, ns BYTEA NOT NULL, key BYTEA NOT NULL, value BYTEA NOT NULL,
    PRIMARY KEY (scope, ns, key)
);

CREATE SEQUENCE log_ids;
CREATE TABLE log (
    id BIGINT PRIMARY KEY,
    scope BYTEA NOT NULL, ns BYTEA NOT NULL, key BYTEA NOT NULL, value BYTEA NOT NULL
);
CREATE INDEX log_by_key ON log (scope, ns, key, id);

CREATE TABLE counters (
    scope BYTEA NOT NULL, ns BYTEA NOT NULL, key BYTEA NOT NULL, value BIGINT NOT NULL,
    PRIMARY KEY (scope, ns, key)
);

-- Pushed and popped all day: vacuumed early so dead rows are reused, not piled up.
CREATE TABLE queue (
    id BIGSERIAL PRIMARY KEY,
    scope BYTEA NOT NULL,
    value BYTEA NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    visible_at_ms BIGINT NOT NULL DEFAULT 0,
    claim_id BIGINT
) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_insert_scale_factor = 0.01);
CREATE INDEX queue_by_scope ON queue (scope, id);
CREATE UNIQUE INDEX queue_by_claim ON queue (claim_id) WHERE claim_id IS NOT NULL;
CREATE SEQUENCE claim_ids;

CREATE TABLE dead_letters (
    id BIGSERIAL PRIMARY KEY,
    scope BYTEA NOT NULL, value BYTEA NOT NULL, attempts INTEGER NOT NULL,
    dead_at_ms BIGINT NOT NULL
);
CREATE INDEX dead_letters_by_scope ON dead_letters (scope, id);

CREATE TABLE idempotency (
    key BYTEA PRIMARY KEY, fingerprint BYTEA NOT NULL, reply BYTEA NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX idempotency_by_age ON idempotency (created_ms);
";

/// Tables holding a scope's data, for `clear` and `gc` (its `scopes` row goes first).
const SCOPED_TABLES: [&str; 5] = ["state", "log", "counters", "queue", "dead_letters"];

/// A scope's touch time is rewritten only when it is at least 1000 ms older than now (as in
/// the SQLite backend): `gc` is exact to that resolution.
///
/// Takes a `KEY SHARE` lock on the scope's row when it was touched recently, else creates or
/// refreshes it (`$1` = scope, `$T` = now): the first CTEs of every write that may create data.
/// A `clear` or `gc` deleting the row waits for the write to commit, and a write arriving after
/// the delete creates the row again, so no data outlives its scope's row.
macro_rules! touching {
    ($now:literal) => {
        concat!(
            "WITH held AS (SELECT touched_ms FROM scopes WHERE scope = $1 FOR KEY SHARE),
             touched AS (INSERT INTO scopes (scope, touched_ms)
                 SELECT $1, ",
            $now,
            "::bigint WHERE NOT EXISTS (SELECT 1 FROM held WHERE touched_ms > ",
            $now,
            "::bigint - 1000)
                 ON CONFLICT (scope) DO UPDATE SET touched_ms = excluded.touched_ms
                 WHERE scopes.touched_ms <= excluded.touched_ms - 1000) "
        )
    };
}

/// Refreshes an existing scope's touch time (`$1` = scope, `$T` = now): for changes that
/// create nothing (deletes, pops, acks), so a scope being drained is not swept as an orphan.
macro_rules! touch_existing {
    ($now:literal) => {
        concat!(
            "UPDATE scopes SET touched_ms = ",
            $now,
            "::bigint WHERE scope = $1 AND touched_ms <= ",
            $now,
            "::bigint - 1000"
        )
    };
}

// After the macros, which it uses.
#[cfg(feature = "conformance")]
pub mod statements;
#[cfg(not(feature = "conformance"))]
mod statements;

/// The options of a `postgres://` URL that silo reads itself; every other query parameter is
/// a TLS option (`sslmode`, `sslrootcert`: see [`tls`]), a store option ([`StoreOptions`]) or
/// goes to the PostgreSQL client (`host`, `application_name`, `connect_timeout`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresOptions {
    /// The schema holding the store's tables (created on open), so several stores can share
    /// one database. Lowercase letters, digits and `_`.
    pub schema: String,
    /// Connections kept by this process.
    pub pool_size: u32,
    /// Longest a statement may run before PostgreSQL cancels it; 0 = no limit.
    pub statement_timeout: Duration,
    /// After this many queue rows retired by this process (pops, claims, acks, releases and
    /// extends each leave one dead row version), it vacuums the queue table in the background;
    /// 0 = leave it to autovacuum.
    pub vacuum_every: u64,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "silo".into(),
            pool_size: 16,
            statement_timeout: Duration::from_secs(30),
            vacuum_every: 10_000,
        }
    }
}

/// The PostgreSQL store.
pub struct PostgresStorage {
    session: Session,
    options: StoreOptions,
    /// The URL without its password, for messages.
    location: String,
    /// The schema: part of every log's advisory-lock key (the location is not: two hosts may
    /// name one database differently).
    schema: String,
    churn: Arc<Churn>,
}

/// The queue table's dead rows made by this process, and its vacuums of them. Autovacuum
/// wakes once a minute by default (`autovacuum_naptime`), and a queue worked at thousands of
/// items a second grew by everything retired in between — to 58 MiB over 1 M push/pop pairs
/// (silo-bench `--only postgres-vacuum`). So every `every` retired rows, one
/// background thread runs `VACUUM (SKIP_LOCKED)` on it: a few milliseconds on a table that
/// small, skipped when another vacuum holds it.
struct Churn {
    every: u64,
    retired: AtomicU64,
    vacuuming: AtomicBool,
    pool: r2d2::Pool<Connector>,
    location: String,
}

impl Churn {
    /// Counts `n` retired rows; past the threshold, starts a vacuum unless one is running.
    fn retired(self: &Arc<Self>, n: u64) {
        if self.every == 0 || n == 0 {
            return;
        }
        let before = self.retired.fetch_add(n, Ordering::Relaxed);
        if before + n < self.every || self.vacuuming.swap(true, Ordering::AcqRel) {
            return;
        }
        self.retired.store(0, Ordering::Relaxed);
        let churn = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("silo-vacuum".into())
            .spawn(move || {
                let outcome = churn
                    .pool
                    .get()
                    .map_err(|e| e.to_string())
                    .and_then(|mut conn| {
                        conn.client
                            .batch_execute("VACUUM (SKIP_LOCKED) queue")
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = outcome {
                    // Autovacuum still runs; the next threshold tries again.
                    tracing::warn!(store = %churn.location, "vacuuming the queue table: {e}");
                }
                churn.vacuuming.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.vacuuming.store(false, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// A connection and the statements prepared on it.
struct Conn {
    client: Client,
    prepared: HashMap<String, Statement>,
    /// The server ended this connection: the pool drops it instead of handing it out again.
    broken: bool,
}

impl Conn {
    fn statement(&mut self, sql: &str) -> std::result::Result<Statement, postgres::Error> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.prepared.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query(&s, params)
    }

    fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Option<Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query_opt(&s, params)
    }

    fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Row, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query_one(&s, params)
    }

    fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<u64, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.execute(&s, params)
    }
}

/// Opens connections for the pool, each set to the store's schema and timeouts.
struct Connector {
    config: postgres::Config,
    /// `None`: connections never use TLS.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    setup: String,
}

impl r2d2::ManageConnection for Connector {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> std::result::Result<Conn, postgres::Error> {
        let mut client = match &self.tls {
            Some(tls) => self.config.connect(tls.clone())?,
            None => self.config.connect(NoTls)?,
        };
        client.batch_execute(&self.setup)?;
        Ok(Conn {
            client,
            prepared: HashMap::new(),
            broken: false,
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> std::result::Result<(), postgres::Error> {
        conn.client.simple_query("").map(drop)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken || conn.client.is_closed()
    }
}

/// Why one attempt of an operation failed: PostgreSQL (maybe retryable) or the operation.
enum Failure {
    Pg(postgres::Error),
    Silo(Error),
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Self {
        Failure::Pg(e)
    }
}

type Attempt<T> = std::result::Result<T, Failure>;

/// How an operation uses its connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Reads only: safe to run again on a fresh connection when the first one was lost.
    Read,
    /// One statement, autocommitted.
    Write,
    /// Several statements that must commit together.
    Atomic,
}

/// Where a store's operations run.
enum Session {
    /// A pool: each operation takes a connection.
    Pooled(r2d2::Pool<Connector>),
    /// The connection whose transaction an `apply_once` holds open: its operations run in it.
    Joined(Box<Mutex<JoinedConn>>),
}

/// A pooled connection inside `BEGIN`: rolled back when dropped unfinished (by a panicking
/// `apply` too), so it never goes back to the pool with a transaction open.
struct InTransaction {
    conn: r2d2::PooledConnection<Connector>,
    open: bool,
}

impl InTransaction {
    fn begin(mut conn: r2d2::PooledConnection<Connector>) -> Result<Self, postgres::Error> {
        conn.client.batch_execute("BEGIN")?;
        Ok(InTransaction { conn, open: true })
    }

    /// Ends the transaction with `COMMIT` or `ROLLBACK`.
    fn finish(&mut self, how: &str) -> std::result::Result<(), postgres::Error> {
        self.open = false;
        self.conn.client.batch_execute(how)
    }
}

impl Drop for InTransaction {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.client.batch_execute("ROLLBACK");
        }
    }
}

impl std::ops::Deref for InTransaction {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl std::ops::DerefMut for InTransaction {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

struct JoinedConn {
    conn: InTransaction,
    /// The first failure of an operation in the transaction: PostgreSQL aborts a transaction
    /// at its first error, so nothing after it may be reported as done.
    failed: Option<String>,
    /// That failure was a deadlock or serialization failure: the whole unit may run again.
    retryable: bool,
}

/// Runs `f` on a pooled connection (in a transaction when `kind` says so), again after a
/// deadlock until `patience` has passed.
fn run_pooled<T>(
    pool: &r2d2::Pool<Connector>,
    location: &str,
    op: &str,
    kind: Kind,
    patience: Duration,
    f: &mut dyn FnMut(&mut Conn) -> Attempt<T>,
) -> Result<T> {
    let deadline = Instant::now() + patience;
    let mut backoff = Duration::from_millis(1);
    let mut reconnects = 0;
    loop {
        let mut conn = connection(pool, location, op)?;
        let outcome = if kind == Kind::Atomic {
            in_transaction(&mut conn, f)
        } else {
            f(&mut conn)
        };
        if let Err(Failure::Pg(e)) = &outcome
            && connection_lost(e)
        {
            conn.broken = true;
        }
        match outcome {
            Ok(v) => return Ok(v),
            Err(Failure::Silo(e)) => return Err(e),
            Err(Failure::Pg(e)) if is_retryable(&e) && Instant::now() < deadline => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            // A read on a connection that was lost (a restarted server, a terminated
            // backend) runs again on another one (a few times: the pool may hold more
            // connections to the server that went away); a write does not: it may have
            // committed before the connection dropped, and only the caller knows whether
            // running it again is safe.
            Err(Failure::Pg(e)) if kind == Kind::Read && connection_lost(&e) && reconnects < 3 => {
                reconnects += 1;
            }
            Err(Failure::Pg(e)) => return Err(map_error(location, op, &e)),
        }
    }
}

/// Runs `f` in the open transaction; its first failure fails the rest of the unit.
fn run_joined<T>(
    joined: &Mutex<JoinedConn>,
    location: &str,
    op: &str,
    f: &mut dyn FnMut(&mut Conn) -> Attempt<T>,
) -> Result<T> {
    let mut joined = joined.lock();
    if let Some(first) = &joined.failed {
        return Err(Error::invalid(format!(
            "{op} after a failed operation in the same atomic unit ({first}); the unit is \
             rolled back"
        )));
    }
    match f(&mut joined.conn) {
        Ok(v) => Ok(v),
        Err(failure) => {
            let e = match failure {
                Failure::Silo(e) => e,
                Failure::Pg(e) => {
                    joined.retryable = is_retryable(&e);
                    map_error(location, op, &e)
                }
            };
            joined.failed = Some(format!("{op}: {e}"));
            Err(e)
        }
    }
}

fn connection(
    pool: &r2d2::Pool<Connector>,
    location: &str,
    op: &str,
) -> Result<r2d2::PooledConnection<Connector>> {
    pool.get().map_err(|e| Error::Unavailable {
        message: format!("{op}: no connection to {location} ({e})"),
    })
}

/// Runs `f` between `BEGIN` and `COMMIT`, rolling back when it fails.
fn in_transaction<T>(conn: &mut Conn, f: &mut dyn FnMut(&mut Conn) -> Attempt<T>) -> Attempt<T> {
    conn.client.batch_execute("BEGIN")?;
    match f(conn) {
        Ok(v) => {
            conn.client.batch_execute("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            // A lost connection has rolled back already; a live one is told to.
            let _ = conn.client.batch_execute("ROLLBACK");
            Err(e)
        }
    }
}

/// The connection is gone: closed, or its backend terminated or shut down.
fn connection_lost(e: &postgres::Error) -> bool {
    e.is_closed()
        || e.code().is_some_and(|c| {
            *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || c.code().starts_with("08")
        })
}

fn is_retryable(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// Turns a PostgreSQL error into the semantic [`Error`] that says what to do.
fn map_error(location: &str, op: &str, e: &postgres::Error) -> Error {
    let Some(db) = e.as_db_error() else {
        if let Some(tls) = tls::failure(e) {
            return Error::config(format!(
                "{op}: {location}: TLS failed: {tls} (check the URL's sslmode, sslrootcert and \
                 host: verify-full needs a certificate naming the host connected to)"
            ));
        }
        if e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()) {
            return Error::Unavailable {
                message: format!("{op}: the connection to {location} was lost ({e})"),
            };
        }
        return Error::Backend {
            backend: "postgres".into(),
            message: format!("{location}: {op}: {e}"),
        };
    };
    let code = db.code();
    let detail = format!("{op}: {} ({})", db.message(), code.code());
    if *code == SqlState::NUMERIC_VALUE_OUT_OF_RANGE {
        Error::invalid(format!(
            "{detail}: the result does not fit a 64-bit integer"
        ))
    } else if *code == SqlState::PROGRAM_LIMIT_EXCEEDED {
        Error::invalid(format!("{detail}: too large for PostgreSQL"))
    } else if *code == SqlState::DISK_FULL || *code == SqlState::OUT_OF_MEMORY {
        Error::StorageFull {
            path: location.into(),
            detail,
        }
    } else if *code == SqlState::INVALID_PASSWORD
        || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        || *code == SqlState::INVALID_CATALOG_NAME
        || *code == SqlState::INSUFFICIENT_PRIVILEGE
    {
        Error::config(format!(
            "{location}: {detail} (check the URL's user, password and database)"
        ))
    } else if code.code().starts_with("08")
        || code.code().starts_with("57")
        || code.code().starts_with("53")
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
    {
        // Connection failures, shutdowns, cancels (statement_timeout), resource limits, lock
        // waits past busy_timeout_ms.
        Error::Unavailable {
            message: format!("{location}: {detail}"),
        }
    } else {
        Error::Backend {
            backend: "postgres".into(),
            message: format!("{location}: {detail}"),
        }
    }
}

/// The URL without its password, for messages and `stat`.
fn redacted(url: &Url) -> String {
    crate::redact_url(url.as_str())
}

/// A stable 64-bit hash (FNV-1a) of a log's identity, for its advisory lock: the same in every
/// process and every version of silo, or two of them could append to one log unordered.
fn log_lock_key(schema: &str, scope: &[u8], ns: &[u8], key: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [schema.as_bytes(), scope, ns, key] {
        // The length first, so ("ab", "c") and ("a", "bc") differ.
        for b in (part.len() as u64).to_le_bytes().iter().chain(part) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h as i64
}

/// `LIMIT $n` takes a bigint; NULL means no limit.
fn sql_limit(limit: u64) -> Option<i64> {
    i64::try_from(limit).ok()
}

fn attempts(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// ` AND key >= $N AND key < $M` for the bounds present in `range`, with their parameters.
fn range_sql(range: &KeyRange, first_param: usize) -> (String, Vec<&[u8]>) {
    let mut sql = String::new();
    let mut args = Vec::new();
    if let Some(start) = &range.start {
        sql.push_str(&format!(" AND key >= ${}", first_param + args.len()));
        args.push(start.as_slice());
    }
    if let Some(end) = &range.end {
        sql.push_str(&format!(" AND key < ${}", first_param + args.len()));
        args.push(end.as_slice());
    }
    (sql, args)
}

impl PostgresStorage {
    /// Opens the store a `postgres://` URL names: connects, creates the schema or migrates it
    /// (under an advisory lock, so processes opening a fresh database at once do not race).
    pub fn open(url: &Url) -> Result<Self> {
        Self::open_with_options(url, StoreOptions::default())
    }

    /// [`PostgresStorage::open`] with `options` (the URL's store options apply on top).
    pub fn open_with_options(url: &Url, mut options: StoreOptions) -> Result<Self> {
        let location = redacted(url);
        let mut pg = PostgresOptions::default();
        let mut tls = tls::TlsOptions::default();
        let mut client_params = Vec::new();
        for (name, value) in url.query_pairs() {
            let number = |what: &str| -> Result<u64> {
                value
                    .parse::<u64>()
                    .map_err(|_| Error::config(format!("option {name}={value:?}: expected {what}")))
            };
            match &*name {
                "schema" => {
                    let ok = !value.is_empty()
                        && value.len() <= 48
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                        && !value.as_bytes()[0].is_ascii_digit();
                    if !ok {
                        return Err(Error::config(format!(
                            "option schema={value:?}: expected 1 to 48 lowercase letters, digits \
                             and _, not starting with a digit"
                        )));
                    }
                    pg.schema = value.to_string();
                }
                "pool_size" => {
                    pg.pool_size = u32::try_from(number("a number of connections")?)
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| Error::config("option pool_size: must be 1..=1000"))?;
                }
                "statement_timeout_ms" => {
                    pg.statement_timeout = Duration::from_millis(number("milliseconds")?);
                }
                "vacuum_every" => pg.vacuum_every = number("a number of queue rows")?,
                name if tls.take(name, &value)? => {}
                name if StoreOptions::NAMES.contains(&name) => options.set(name, &value)?,
                _ => client_params.push((name.to_string(), value.to_string())),
            }
        }
        Self::open_with(url, &location, options, pg, &tls, &client_params)
    }

    fn open_with(
        url: &Url,
        location: &str,
        options: StoreOptions,
        pg: PostgresOptions,
        tls: &tls::TlsOptions,
        client_params: &[(String, String)],
    ) -> Result<Self> {
        let mut client_url = url.clone();
        client_url.set_query(None);
        if !client_params.is_empty() {
            client_url
                .query_pairs_mut()
                .extend_pairs(client_params.iter());
        }
        let mut config = postgres::Config::from_str(client_url.as_str())
            .map_err(|e| Error::config(format!("cannot use store URL {location}: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.busy_timeout.min(Duration::from_secs(10)));
        }
        if config.get_application_name().is_none() {
            config.application_name("silo");
        }
        let (ssl_mode, tls) = tls.connector(&config)?;
        config.ssl_mode(ssl_mode);
        let synchronous = match options.sync {
            // The database's own setting (on by default: every commit is flushed).
            SyncMode::Normal => String::new(),
            SyncMode::Full => "SET synchronous_commit = on; ".into(),
        };
        let connector = Connector {
            config,
            tls,
            setup: format!(
                "SET search_path TO {schema}; SET statement_timeout = {statement}; \
                 SET lock_timeout = {lock}; {synchronous}",
                schema = pg.schema,
                statement = pg.statement_timeout.as_millis(),
                lock = options.busy_timeout.as_millis().max(1),
            ),
        };
        // The first connection is made here, so a wrong password or a missing database is
        // reported as such instead of as a pool timeout.
        let first = r2d2::ManageConnection::connect(&connector)
            .map_err(|e| map_error(location, "connecting", &e))?;
        let pool = r2d2::Pool::builder()
            .max_size(pg.pool_size)
            .min_idle(Some(0))
            .connection_timeout(options.busy_timeout.max(Duration::from_millis(100)))
            .test_on_check_out(false)
            .build_unchecked(connector);
        let churn = Arc::new(Churn {
            every: pg.vacuum_every,
            retired: AtomicU64::new(0),
            vacuuming: AtomicBool::new(false),
            pool: pool.clone(),
            location: location.to_string(),
        });
        let store = PostgresStorage {
            session: Session::Pooled(pool),
            options,
            location: location.to_string(),
            schema: pg.schema.clone(),
            churn,
        };
        store.migrate(first, &pg.schema)?;
        Ok(store)
    }

    fn migrate(&self, mut conn: Conn, schema: &str) -> Result<()> {
        let map = |e: postgres::Error| map_error(&self.location, "creating the schema", &e);
        let mut tx = conn.client.transaction().map_err(map)?;
        // "already exists, skipping" notices would be logged on every open.
        tx.batch_execute("SET LOCAL client_min_messages = warning")
            .map_err(map)?;
        // One lock per schema name: two processes opening a fresh database at once take turns.
        let lock = log_lock_key("silo-migrate", schema.as_bytes(), b"", b"");
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
            .map_err(map)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.silo_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);"
        ))
        .map_err(map)?;
        let version: i64 = tx
            .query_opt(
                &format!("SELECT value FROM {schema}.silo_meta WHERE name = 'schema_version'"),
                &[],
            )
            .map_err(map)?
            .map_or(0, |row| row.get(0));
        let latest = MIGRATIONS.len() as i64;
        if version > latest {
            return Err(Error::config(format!(
                "{} schema {schema} has version {version}, newer than this silo understands \
                 ({latest}); upgrade silo",
                self.location
            )));
        }
        for migration in MIGRATIONS.iter().skip(version.max(0) as usize) {
            tx.batch_execute(&format!("SET LOCAL search_path TO {schema}; {migration}"))
                .map_err(map)?;
        }
        tx.execute(
            &format!(
                "INSERT INTO {schema}.silo_meta (name, value) VALUES ('schema_version', $1)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value"
            ),
            &[&latest],
        )
        .map_err(map)?;
        tx.commit().map_err(map)?;
        Ok(())
    }

    /// `apply_once` and `apply_atomically`: `apply`'s operations in one transaction, ended by
    /// the reply's record when there is a key.
    fn transact(
        &self,
        record: Option<(&[u8], &[u8])>,
        apply: &mut dyn FnMut(&dyn FunctionStorage) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.options.busy_timeout;
        loop {
            match self.transact_once(record, apply) {
                Err(Retry::Again) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(Retry::Again) => {
                    return Err(Error::Unavailable {
                        message: format!(
                            "{}: an atomic unit kept deadlocking with others for {:?}",
                            self.location, self.options.busy_timeout
                        ),
                    });
                }
                Err(Retry::Fail(e)) => return Err(e),
                Ok(reply) => return Ok(reply),
            }
        }
    }

    fn transact_once(
        &self,
        record: Option<(&[u8], &[u8])>,
        apply: &mut dyn FnMut(&dyn FunctionStorage) -> Result<Vec<u8>>,
    ) -> std::result::Result<Vec<u8>, Retry> {
        let fail = |op: &str, e: postgres::Error| {
            if is_retryable(&e) {
                Retry::Again
            } else {
                Retry::Fail(map_error(&self.location, op, &e))
            }
        };
        let Session::Pooled(pool) = &self.session else {
            return Err(Retry::Fail(Error::invalid("apply_once cannot be nested")));
        };
        let mut conn = connection(pool, &self.location, "apply_once").map_err(Retry::Fail)?;
        if let Some((key, fingerprint)) = record
            && let Some(reply) = self
                .replay(&mut conn, key, fingerprint)
                .map_err(Retry::Fail)?
        {
            return Ok(reply);
        }
        let conn = InTransaction::begin(conn).map_err(|e| fail("apply_once", e))?;
        let joined = PostgresStorage {
            session: Session::Joined(Box::new(Mutex::new(JoinedConn {
                conn,
                failed: None,
                retryable: false,
            }))),
            options: self.options.clone(),
            location: self.location.clone(),
            schema: self.schema.clone(),
            churn: Arc::clone(&self.churn),
        };
        let outcome = apply(&joined);
        let Session::Joined(joined) = joined.session else {
            return Err(Retry::Fail(Error::Backend {
                backend: "postgres".into(),
                message: "an atomic unit lost its connection (a silo bug)".into(),
            }));
        };
        let JoinedConn {
            mut conn,
            failed,
            retryable,
        } = joined.into_inner();
        let rollback = |conn: &mut InTransaction| {
            let _ = conn.finish("ROLLBACK");
        };
        let reply = match (outcome, failed) {
            (Ok(reply), None) => reply,
            (_, Some(_)) if retryable => {
                rollback(&mut conn);
                return Err(Retry::Again);
            }
            (Ok(_), Some(first)) => {
                rollback(&mut conn);
                return Err(Retry::Fail(Error::invalid(format!(
                    "an operation of the atomic unit failed ({first}); nothing of it was stored"
                ))));
            }
            (Err(e), _) => {
                rollback(&mut conn);
                return Err(Retry::Fail(e));
            }
        };
        if let Some((key, fingerprint)) = record {
            let now = self.options.clock.now_ms();
            let stored = conn.query_opt(
                "INSERT INTO idempotency (key, fingerprint, reply, created_ms)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING RETURNING 1",
                &[&key, &fingerprint, &reply, &now],
            );
            match stored {
                Ok(Some(_)) => {}
                Ok(None) => {
                    // Another server applied the same request first (this insert waited for
                    // its commit): undo this one and answer with that one's reply.
                    rollback(&mut conn);
                    return match self.replay(&mut conn, key, fingerprint) {
                        Ok(Some(reply)) => Ok(reply),
                        Ok(None) => Err(Retry::Again),
                        Err(e) => Err(Retry::Fail(e)),
                    };
                }
                Err(e) => {
                    rollback(&mut conn);
                    return Err(fail("apply_once", e));
                }
            }
        }
        conn.finish("COMMIT").map_err(|e| fail("apply_once", e))?;
        Ok(reply)
    }

    /// The stored reply of `key`, if it was applied; a conflict if it was applied for another
    /// request.
    fn replay(&self, conn: &mut Conn, key: &[u8], fingerprint: &[u8]) -> Result<Option<Vec<u8>>> {
        let row = conn
            .query_opt(
                "SELECT reply, fingerprint FROM idempotency WHERE key = $1",
                &[&key],
            )
            .map_err(|e| map_error(&self.location, "apply_once", &e))?;
        let Some(row) = row else { return Ok(None) };
        let stored: Vec<u8> = row.get(1);
        if !stored.is_empty() && stored != fingerprint {
            return Err(key_reused());
        }
        Ok(Some(row.get(0)))
    }
}

/// Whether an atomic unit gets another go.
enum Retry {
    Again,
    Fail(Error),
}

impl PostgresStorage {
    fn run<T>(
        &self,
        op: &str,
        kind: Kind,
        mut f: impl FnMut(&mut Conn) -> Attempt<T>,
    ) -> Result<T> {
        match &self.session {
            Session::Pooled(pool) => run_pooled(
                pool,
                &self.location,
                op,
                kind,
                self.options.busy_timeout,
                &mut f,
            ),
            Session::Joined(joined) => run_joined(joined, &self.location, op, &mut f),
        }
    }

    fn now(&self) -> i64 {
        self.options.clock.now_ms()
    }

    fn check_path(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<()> {
        self.options.check_path(scope, ns, key)
    }

    /// Deletes a scope's row, then its data (each statement sees what committed before it,
    /// so a write that held the row is deleted with the rest). With `stale_before`, only a
    /// scope not touched since then; returns whether it was dropped.
    /// Drops the scope (only when untouched since `stale_before`, if given); returns how many
    /// entries went, or `None` when the scope was not stale.
    fn drop_scope(
        conn: &mut Conn,
        scope: &[u8],
        stale_before: Option<i64>,
    ) -> Attempt<Option<u64>> {
        let removed = match stale_before {
            Some(cutoff) => conn.execute(
                "DELETE FROM scopes WHERE scope = $1 AND touched_ms < $2",
                &[&scope, &cutoff],
            )?,
            None => conn.execute("DELETE FROM scopes WHERE scope = $1", &[&scope])?,
        };
        if removed == 0 && stale_before.is_some() {
            return Ok(None);
        }
        let mut entries = 0;
        for table in SCOPED_TABLES {
            entries += conn.execute(&format!("DELETE FROM {table} WHERE scope = $1"), &[&scope])?;
        }
        Ok(Some(entries))
    }
}

impl FunctionStorage for PostgresStorage {
    fn state_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.run("state_get", Kind::Read, |c| {
            Ok(c.query_opt(statements::STATE_GET, &[&scope, &ns, &key])?
                .map(|row| row.get(0)))
        })
    }

    fn state_put(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<()> {
        self.check_path(scope, ns, key)?;
        self.options.check_value(value)?;
        let now = self.now();
        self.run("state_put", Kind::Write, |c| {
            c.execute(statements::STATE_PUT, &[&scope, &ns, &key, &value, &now])?;
            Ok(())
        })
    }

    fn state_del(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<bool> {
        let now = self.now();
        self.run("state_del", Kind::Write, |c| {
            let row = c.query_one(
                concat!(
                    "WITH gone AS (DELETE FROM state WHERE scope = $1 AND ns = $2 AND key = $3
                         RETURNING 1),
                     touched AS (",
                    touch_existing!("$4"),
                    ") SELECT count(*) FROM gone"
                ),
                &[&scope, &ns, &key, &now],
            )?;
            Ok(row.get::<_, i64>(0) > 0)
        })
    }

    fn state_get_many(
        &self,
        scope: &[u8],
        ns: &[u8],
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let found = self.run("state_get_many", Kind::Read, |c| {
            let rows = c.query(
                "SELECT key, value FROM state WHERE scope = $1 AND ns = $2 AND key = ANY($3)",
                &[&scope, &ns, &keys],
            )?;
            Ok(rows
                .into_iter()
                .map(|row| (row.get::<_, Vec<u8>>(0), row.get::<_, Vec<u8>>(1)))
                .collect::<HashMap<_, _>>())
        })?;
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    fn state_put_many(&self, scope: &[u8], ns: &[u8], items: &[KeyValue]) -> Result<()> {
        for (key, value) in items {
            self.check_path(scope, ns, key)?;
            self.options.check_value(value)?;
        }
        if items.is_empty() {
            return Ok(());
        }
        // One row per key, the last value given for it: an upsert may not touch a row twice.
        let mut last: HashMap<&[u8], &[u8]> = HashMap::with_capacity(items.len());
        for (key, value) in items {
            last.insert(key, value);
        }
        let (keys, values): (Vec<&[u8]>, Vec<&[u8]>) = last.into_iter().unzip();
        let now = self.now();
        self.run("state_put_many", Kind::Write, |c| {
            c.execute(
                statements::STATE_PUT_MANY,
                &[&scope, &ns, &keys, &values, &now],
            )?;
            Ok(())
        })
    }

    fn state_scan(
        &self,
        scope: &[u8],
        ns: &[u8],
        range: &KeyRange,
        reverse: bool,
        limit: u64,
    ) -> Result<Vec<KeyValue>> {
        if range.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let (bounds, bound_args) = range_sql(range, 4);
        let order = if reverse { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT key, value FROM state WHERE scope = $1 AND ns = $2{bounds}
             ORDER BY key {order} LIMIT $3"
        );
        let lim = sql_limit(limit);
        self.run("state_scan", Kind::Read, |c| {
            let mut args: Vec<&(dyn ToSql + Sync)> = vec![&scope, &ns, &lim];
            for a in &bound_args {
                args.push(a);
            }
            Ok(c.query(&sql, &args)?
                .into_iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect())
        })
    }

    fn state_delete(&self, scope: &[u8], ns: &[u8], selection: &Selection) -> Result<u64> {
        let now = self.now();
        let (filter, bound_args): (String, Vec<&[u8]>) = match selection {
            Selection::Keys(keys) if keys.is_empty() => return Ok(0),
            Selection::Range(range) if range.is_empty() => return Ok(0),
            Selection::Keys(_) => (" AND key = ANY($4)".into(), Vec::new()),
            Selection::Range(range) => range_sql(range, 4),
            Selection::All => (String::new(), Vec::new()),
        };
        let sql = format!(
            "WITH gone AS (DELETE FROM state WHERE scope = $1 AND ns = $2{filter} RETURNING 1),
             touched AS ({}) SELECT count(*) FROM gone",
            touch_existing!("$3")
        );
        self.run("state_delete", Kind::Write, |c| {
            let mut args: Vec<&(dyn ToSql + Sync)> = vec![&scope, &ns, &now];
            if let Selection::Keys(keys) = selection {
                args.push(keys);
            }
            for a in &bound_args {
                args.push(a);
            }
            Ok(c.query_one(&sql, &args)?.get::<_, i64>(0).unsigned_abs())
        })
    }

    fn state_drain(&self, scope: &[u8], ns: &[u8]) -> Result<Vec<KeyValue>> {
        let now = self.now();
        self.run("state_drain", Kind::Write, |c| {
            Ok(c.query(
                concat!(
                    "WITH gone AS (DELETE FROM state WHERE scope = $1 AND ns = $2
                         RETURNING key, value),
                     touched AS (",
                    touch_existing!("$3"),
                    ") SELECT key, value FROM gone ORDER BY key"
                ),
                &[&scope, &ns, &now],
            )?
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
        })
    }

    fn append(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<i64> {
        self.check_path(scope, ns, key)?;
        self.options.check_value(value)?;
        let now = self.now();
        let lock = log_lock_key(&self.schema, scope, ns, key);
        self.run("append", Kind::Write, |c| {
            Ok(c.query_one(
                statements::APPEND,
                &[&scope, &ns, &key, &value, &now, &lock],
            )?
            .get(0))
        })
    }

    fn scan(
        &self,
        scope: &[u8],
        ns: &[u8],
        key: &[u8],
        after_id: i64,
        limit: u64,
    ) -> Result<Vec<Entry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lim = sql_limit(limit);
        self.run("scan", Kind::Read, |c| {
            Ok(
                c.query(statements::SCAN, &[&scope, &ns, &key, &after_id, &lim])?
                    .into_iter()
                    .map(|row| (row.get(0), row.get(1)))
                    .collect(),
            )
        })
    }

    fn counter_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64> {
        self.run("counter_get", Kind::Read, |c| {
            Ok(c.query_opt(
                "SELECT value FROM counters WHERE scope = $1 AND ns = $2 AND key = $3",
                &[&scope, &ns, &key],
            )?
            .map_or(0, |row| row.get(0)))
        })
    }

    fn counter_add(&self, scope: &[u8], ns: &[u8], key: &[u8], delta: i64) -> Result<i64> {
        self.check_path(scope, ns, key)?;
        let now = self.now();
        self.run("counter_add", Kind::Write, |c| {
            let added = c.query_one(
                concat!(
                    touching!("$5"),
                    "INSERT INTO counters (scope, ns, key, value) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (scope, ns, key) DO UPDATE SET value = counters.value + excluded.value
                     RETURNING value"
                ),
                &[&scope, &ns, &key, &delta, &now],
            );
            match added {
                Ok(row) => Ok(row.get(0)),
                Err(e) if e.code() == Some(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE) => {
                    Err(Failure::Silo(Error::invalid(format!(
                        "counter_add({delta}) would overflow the counter's value"
                    ))))
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn counter_set(&self, scope: &[u8], ns: &[u8], key: &[u8], value: i64) -> Result<i64> {
        self.check_path(scope, ns, key)?;
        let now = self.now();
        self.run("counter_set", Kind::Atomic, |c| {
            // Lock the row (or create it at 0) first, so the value returned is the one replaced.
            c.execute(
                concat!(
                    touching!("$4"),
                    "INSERT INTO counters (scope, ns, key, value) VALUES ($1, $2, $3, 0)
                     ON CONFLICT (scope, ns, key) DO NOTHING"
                ),
                &[&scope, &ns, &key, &now],
            )?;
            let old: i64 = c
                .query_opt(
                    "SELECT value FROM counters WHERE scope = $1 AND ns = $2 AND key = $3
                     FOR UPDATE",
                    &[&scope, &ns, &key],
                )?
                .map_or(0, |row| row.get(0));
            c.execute(
                "INSERT INTO counters (scope, ns, key, value) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (scope, ns, key) DO UPDATE SET value = excluded.value",
                &[&scope, &ns, &key, &value],
            )?;
            Ok(old)
        })
    }

    fn counter_delete(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64> {
        let now = self.now();
        self.run("counter_delete", Kind::Write, |c| {
            Ok(c.query_one(
                concat!(
                    "WITH gone AS (DELETE FROM counters WHERE scope = $1 AND ns = $2 AND key = $3
                         RETURNING value),
                     touched AS (",
                    touch_existing!("$4"),
                    ") SELECT coalesce((SELECT value FROM gone), 0)"
                ),
                &[&scope, &ns, &key, &now],
            )?
            .get(0))
        })
    }

    fn queue_push(&self, scope: &[u8], items: &[Vec<u8>]) -> Result<()> {
        self.options.check_name("scope", scope)?;
        for item in items {
            self.options.check_value(item)?;
        }
        if items.is_empty() {
            return Ok(());
        }
        let now = self.now();
        self.run("queue_push", Kind::Write, |c| {
            c.execute(statements::QUEUE_PUSH, &[&scope, &items, &now])?;
            Ok(())
        })
    }

    fn queue_pop(&self, scope: &[u8]) -> Result<Option<Vec<u8>>> {
        let max_attempts = i32::try_from(self.options.max_attempts).unwrap_or(i32::MAX);
        let now = self.now();
        let popped = self.run("queue_pop", Kind::Write, |c| {
            loop {
                let head = c.query_opt(statements::QUEUE_POP, &[&scope, &now, &max_attempts])?;
                match head {
                    Some(row) if row.get::<_, i32>(1) >= max_attempts => continue,
                    other => return Ok(other.map(|row| row.get(0))),
                }
            }
        })?;
        self.churn.retired(u64::from(popped.is_some()));
        Ok(popped)
    }

    fn queue_len(&self, scope: &[u8]) -> Result<u64> {
        self.run("queue_len", Kind::Read, |c| {
            Ok(
                c.query_one("SELECT count(*) FROM queue WHERE scope = $1", &[&scope])?
                    .get::<_, i64>(0)
                    .unsigned_abs(),
            )
        })
    }

    fn queue_clear(&self, scope: &[u8]) -> Result<u64> {
        let now = self.now();
        self.run("queue_clear", Kind::Write, |c| {
            Ok(c.query_one(
                concat!(
                    "WITH live AS (DELETE FROM queue WHERE scope = $1 RETURNING 1),
                     dead AS (DELETE FROM dead_letters WHERE scope = $1 RETURNING 1),
                     touched AS (",
                    touch_existing!("$2"),
                    ") SELECT (SELECT count(*) FROM live) + (SELECT count(*) FROM dead)"
                ),
                &[&scope, &now],
            )?
            .get::<_, i64>(0)
            .unsigned_abs())
        })
    }

    fn queue_claim(&self, scope: &[u8], lease: Duration) -> Result<Option<Claim>> {
        let lease_ms = lease_millis(lease)?;
        let max_attempts = i32::try_from(self.options.max_attempts).unwrap_or(i32::MAX);
        let now = self.now();
        let until = now.saturating_add(lease_ms);
        let claim = self.run("queue_claim", Kind::Write, |c| {
            loop {
                // One statement: the head is either set aside (exhausted) or claimed.
                let row = c.query_one(
                    concat!(
                        "WITH head AS (
                         SELECT id, attempts FROM queue WHERE scope = $1 AND visible_at_ms <= $2
                         ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED),
                     dead AS (DELETE FROM queue q USING head
                         WHERE q.id = head.id AND head.attempts >= $3
                         RETURNING q.scope, q.value, q.attempts),
                     buried AS (INSERT INTO dead_letters (scope, value, attempts, dead_at_ms)
                         SELECT scope, value, attempts, $2 FROM dead),
                     claimed AS (UPDATE queue q
                         SET attempts = q.attempts + 1, visible_at_ms = $4,
                             claim_id = nextval('claim_ids')
                         FROM head WHERE q.id = head.id AND head.attempts < $3
                         RETURNING q.claim_id, q.value, q.attempts),
                     touched AS (",
                        touch_existing!("$2"),
                        ") SELECT (SELECT count(*) FROM dead), c.claim_id, c.value, c.attempts
                       FROM (SELECT 1) AS one LEFT JOIN claimed c ON true"
                    ),
                    &[&scope, &now, &max_attempts, &until],
                )?;
                let buried: i64 = row.get(0);
                let claim: Option<i64> = row.get(1);
                match claim {
                    Some(id) => {
                        return Ok(Some(Claim {
                            id,
                            value: row.get(2),
                            attempt: attempts(row.get(3)),
                        }));
                    }
                    None if buried > 0 => continue,
                    None => return Ok(None),
                }
            }
        })?;
        self.churn.retired(u64::from(claim.is_some()));
        Ok(claim)
    }

    fn queue_ack(&self, scope: &[u8], claim_id: i64) -> Result<bool> {
        let now = self.now();
        let done = self.run("queue_ack", Kind::Write, |c| {
            let n: i64 = c
                .query_one(
                    "WITH gone AS (DELETE FROM queue
                         WHERE claim_id = $2 AND scope = $1 AND visible_at_ms > $3 RETURNING 1),
                     touched AS (UPDATE scopes SET touched_ms = $3::bigint
                         WHERE scope = $1 AND touched_ms <= $3::bigint - 1000
                         AND EXISTS (SELECT 1 FROM gone))
                     SELECT count(*) FROM gone",
                    &[&scope, &claim_id, &now],
                )?
                .get(0);
            Ok(n == 1)
        })?;
        self.churn.retired(u64::from(done));
        Ok(done)
    }

    fn queue_release(&self, scope: &[u8], claim_id: i64) -> Result<bool> {
        let now = self.now();
        let done = self.run("queue_release", Kind::Write, |c| {
            let n: i64 = c
                .query_one(
                    "WITH given AS (UPDATE queue SET visible_at_ms = 0, claim_id = NULL
                         WHERE claim_id = $2 AND scope = $1 AND visible_at_ms > $3 RETURNING 1),
                     touched AS (UPDATE scopes SET touched_ms = $3::bigint
                         WHERE scope = $1 AND touched_ms <= $3::bigint - 1000
                         AND EXISTS (SELECT 1 FROM given))
                     SELECT count(*) FROM given",
                    &[&scope, &claim_id, &now],
                )?
                .get(0);
            Ok(n == 1)
        })?;
        self.churn.retired(u64::from(done));
        Ok(done)
    }

    fn queue_extend(&self, scope: &[u8], claim_id: i64, lease: Duration) -> Result<bool> {
        let lease_ms = lease_millis(lease)?;
        let now = self.now();
        let until = now.saturating_add(lease_ms);
        let done = self.run("queue_extend", Kind::Write, |c| {
            let n: i64 = c
                .query_one(
                    "WITH kept AS (UPDATE queue SET visible_at_ms = $4
                         WHERE claim_id = $2 AND scope = $1 AND visible_at_ms > $3 RETURNING 1),
                     touched AS (UPDATE scopes SET touched_ms = $3::bigint
                         WHERE scope = $1 AND touched_ms <= $3::bigint - 1000
                         AND EXISTS (SELECT 1 FROM kept))
                     SELECT count(*) FROM kept",
                    &[&scope, &claim_id, &now, &until],
                )?
                .get(0);
            Ok(n == 1)
        })?;
        self.churn.retired(u64::from(done));
        Ok(done)
    }

    fn queue_dead_letters(&self, scope: &[u8], limit: u64) -> Result<Vec<DeadLetter>> {
        let lim = sql_limit(limit);
        self.run("queue_dead_letters", Kind::Read, |c| {
            Ok(c.query(
                "SELECT value, attempts, dead_at_ms FROM dead_letters WHERE scope = $1
                 ORDER BY id LIMIT $2",
                &[&scope, &lim],
            )?
            .into_iter()
            .map(|row| DeadLetter {
                value: row.get(0),
                attempts: attempts(row.get(1)),
                dead_at_ms: row.get(2),
            })
            .collect())
        })
    }

    fn clear(&self, scope: &[u8]) -> Result<u64> {
        self.run("clear", Kind::Atomic, |c| {
            Ok(Self::drop_scope(c, scope, None)?.unwrap_or(0))
        })
    }

    fn gc_prefix(&self, scope_prefix: &[u8], ttl: Duration) -> Result<u64> {
        // A batch of candidates at a time, each dropped in its own short transaction (which
        // checks again that it is stale), so a big sweep never holds locks for long.
        const BATCH: i64 = 64;
        let cutoff = self.now().saturating_sub(millis(ttl));
        let range = KeyRange::prefix(scope_prefix);
        let (bounds, bound_args) = range_sql(&range, 3);
        let sql = format!(
            "SELECT scope FROM scopes WHERE touched_ms < $1{} ORDER BY scope LIMIT $2",
            bounds.replace("key", "scope")
        );
        let mut dropped = 0u64;
        let mut seen_all = false;
        while !seen_all {
            let stale: Vec<Vec<u8>> = self.run("gc", Kind::Read, |c| {
                let mut args: Vec<&(dyn ToSql + Sync)> = vec![&cutoff, &BATCH];
                for a in &bound_args {
                    args.push(a);
                }
                Ok(c.query(&sql, &args)?
                    .into_iter()
                    .map(|row| row.get(0))
                    .collect())
            })?;
            seen_all = (stale.len() as i64) < BATCH;
            let mut progress = false;
            for scope in &stale {
                if self
                    .run("gc", Kind::Atomic, |c| {
                        Self::drop_scope(c, scope, Some(cutoff))
                    })?
                    .is_some()
                {
                    dropped += 1;
                    progress = true;
                }
            }
            if !progress {
                // Every candidate was touched meanwhile: the next batch would be the same.
                break;
            }
        }
        Ok(dropped)
    }

    fn apply_once(
        &self,
        key: &[u8],
        fingerprint: &[u8],
        apply: &mut dyn FnMut(&dyn FunctionStorage) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        self.transact(Some((key, fingerprint)), apply)
    }

    fn apply_atomically(
        &self,
        apply: &mut dyn FnMut(&dyn FunctionStorage) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        self.transact(None, apply)
    }

    fn expire_once_keys(&self, age: Duration) -> Result<u64> {
        let cutoff = self.now().saturating_sub(millis(age));
        let mut expired = 0u64;
        loop {
            // In batches, so the sweep never holds many row locks at once.
            let n = self.run("expire_once_keys", Kind::Write, |c| {
                Ok(c.execute(
                    "DELETE FROM idempotency WHERE key IN (
                         SELECT key FROM idempotency WHERE created_ms < $1 LIMIT 1000
                         FOR UPDATE SKIP LOCKED)",
                    &[&cutoff],
                )?)
            })?;
            expired += n;
            if n < 1000 {
                return Ok(expired);
            }
        }
    }

    fn stat(&self) -> Result<StoreStats> {
        let (counts, bytes) = self.run("stat", Kind::Read, |c| {
            let row = c.query_one(
                "SELECT (SELECT count(*) FROM scopes), (SELECT count(*) FROM state),
                        (SELECT count(*) FROM log), (SELECT count(*) FROM counters),
                        (SELECT count(*) FROM queue), (SELECT count(*) FROM dead_letters),
                        (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
                           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE n.nspname = current_schema() AND c.relkind = 'r')",
                &[],
            )?;
            let counts: [u64; 6] = std::array::from_fn(|i| row.get::<_, i64>(i).unsigned_abs());
            Ok((counts, row.get::<_, i64>(6).unsigned_abs()))
        })?;
        Ok(StoreStats {
            backend: "postgres".into(),
            location: self.location.clone(),
            scopes: counts[0],
            state_entries: counts[1],
            log_entries: counts[2],
            counters: counts[3],
            queue_items: counts[4],
            dead_letters: counts[5],
            bytes_on_disk: Some(bytes),
            max_attempts: self.options.max_attempts,
            max_value_bytes: self.options.max_value_bytes as u64,
            durable_frame_no: None,
        })
    }
}
