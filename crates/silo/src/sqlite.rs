//! `sqlite:` — the embedded default backend: one SQLite file in WAL mode, shared by every
//! process on the host that opens it.
//!
//! Each operation is one transaction (writes `BEGIN IMMEDIATE`, so read-then-write sequences
//! such as a queue claim are atomic across processes) on one writer connection; reads run on a
//! small pool of reader connections so they never queue behind writes. `SQLITE_BUSY` and
//! `SQLITE_LOCKED` are retried with backoff until `busy_timeout`, then surface as
//! [`Error::Unavailable`]: never as a partial or empty result.

use std::cell::{Cell, RefCell};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use parking_lot::ReentrantMutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::options::{SyncMode, millis};
use crate::storage::{Entry, KeyValue};
use crate::{
    Claim, DeadLetter, Error, FunctionStorage, KeyRange, Result, Selection, StoreOptions,
    StoreStats,
};

/// The schema version this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How much of the database file each connection maps into memory.
const MMAP_BYTES: i64 = 256 << 20;

/// Reader connections kept open for reuse.
const MAX_IDLE_READERS: usize = 8;

/// A scope's touch time is rewritten only when it is at least this much older than now, so
/// that a stream of writes does not rewrite the `scopes` row every time. `gc` is therefore
/// exact to this resolution.
const TOUCH_RESOLUTION_MS: i64 = 1000;

/// Schema migrations: entry `n` takes a database from version `n` to `n + 1`.
const MIGRATIONS: [&str; 3] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS scopes (
    scope BLOB PRIMARY KEY,
    touched_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS scopes_by_touch ON scopes (touched_ms);

CREATE TABLE IF NOT EXISTS state (
    scope BLOB NOT NULL, ns BLOB NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (scope, ns, key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope BLOB NOT NULL, ns BLOB NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS log_by_key ON log (scope, ns, key, id);

CREATE TABLE IF NOT EXISTS counters (
    scope BLOB NOT NULL, ns BLOB NOT NULL, key BLOB NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (scope, ns, key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope BLOB NOT NULL,
    value BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    visible_at_ms INTEGER NOT NULL DEFAULT 0,
    claim_id INTEGER
);
CREATE INDEX IF NOT EXISTS queue_by_scope ON queue (scope, id);
CREATE UNIQUE INDEX IF NOT EXISTS queue_by_claim ON queue (claim_id) WHERE claim_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    scope BLOB NOT NULL, value BLOB NOT NULL, attempts INTEGER NOT NULL, dead_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_scope ON dead_letters (scope, id);

CREATE TABLE IF NOT EXISTS sequences (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO sequences (name, value) VALUES ('claim', 0);
";

/// Version 2: replies of requests applied once, keyed by their idempotency key (`apply_once`).
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS idempotency (
    key BLOB PRIMARY KEY, reply BLOB NOT NULL, created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_ms);
";

/// Version 3: the fingerprint of the request each idempotency key answered, so a key reused
/// for another request is refused instead of answered with the first one's reply. Rows from
/// version 2 have an empty fingerprint and replay as before until they expire.
const SCHEMA_V3: &str = "
ALTER TABLE idempotency ADD COLUMN fingerprint BLOB NOT NULL DEFAULT x'';
";

/// Tables holding a scope's data, for `clear` and `gc`.
const SCOPED_TABLES: [&str; 6] = [
    "state",
    "log",
    "counters",
    "queue",
    "dead_letters",
    "scopes",
];

/// The SQLite store.
pub struct SqliteStorage {
    path: PathBuf,
    options: StoreOptions,
    /// The one connection that writes. Reentrant so that the operations `apply_once` runs
    /// can join the transaction it holds open on the same thread.
    writer: ReentrantMutex<Writer>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The writer connection, and whether `apply_once` holds a transaction open on it (only the
/// thread holding the reentrant lock reads or changes either).
struct Writer {
    conn: RefCell<Connection>,
    in_apply_once: Cell<bool>,
}

/// Why one attempt of an operation failed: SQLite (maybe retryable) or the operation itself.
enum Failure {
    Sqlite(rusqlite::Error),
    Silo(Error),
}

impl Failure {
    fn into_error(self, path: &Path, op: &str) -> Error {
        match self {
            Failure::Silo(e) => e,
            Failure::Sqlite(e) => map_error(path, op, e),
        }
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sqlite(e)
    }
}

type Attempt<T> = std::result::Result<T, Failure>;

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// SQLite's `LIMIT` takes an i64; negative means unbounded.
fn sql_limit(limit: u64) -> i64 {
    i64::try_from(limit).unwrap_or(-1)
}

fn lease_millis(lease: Duration) -> Result<i64> {
    let ms = millis(lease);
    if ms <= 0 {
        return Err(Error::invalid("a lease must be at least 1 millisecond"));
    }
    Ok(ms)
}

impl SqliteStorage {
    /// Opens (creating if needed) the store at `path`. The parent directory is created 0700
    /// and the file 0600. The schema is created or migrated.
    pub fn open(path: impl Into<PathBuf>, options: StoreOptions) -> Result<Self> {
        let path = path.into();
        prepare_file(&path)?;
        let mut store = SqliteStorage {
            writer: ReentrantMutex::new(Writer {
                conn: RefCell::new(
                    connect(&path, &options).map_err(|e| map_error(&path, "opening", e))?,
                ),
                in_apply_once: Cell::new(false),
            }),
            readers: Mutex::new(Vec::new()),
            path,
            options,
        };
        store.init_schema()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn init_schema(&mut self) -> Result<()> {
        let path = self.path.clone();
        let conn = self.writer.get_mut().conn.get_mut();
        retry(&path, "opening", self.options.busy_timeout, || {
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(Failure::Silo(Error::Backend {
                    backend: "sqlite".into(),
                    message: format!(
                        "{} cannot use WAL mode (got {mode:?}); put it on a local filesystem",
                        path.display()
                    ),
                }));
            }
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
            if version > SCHEMA_VERSION {
                return Err(Failure::Silo(Error::config(format!(
                    "{} has schema version {version}, newer than this silo understands \
                     ({SCHEMA_VERSION}); upgrade silo",
                    path.display()
                ))));
            }
            for (from, migration) in MIGRATIONS.iter().enumerate() {
                if version <= from as i64 {
                    tx.execute_batch(migration)?;
                }
            }
            if version < SCHEMA_VERSION {
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Runs `f` as one atomic write: its own `BEGIN IMMEDIATE` transaction, retried on lock
    /// contention; or, inside `apply_once`'s open transaction, a savepoint of it.
    fn write<T>(&self, op: &str, mut f: impl FnMut(&Connection) -> Attempt<T>) -> Result<T> {
        let guard = self.writer.lock();
        let mut conn = guard.conn.try_borrow_mut().map_err(|_| Error::Backend {
            backend: "sqlite".into(),
            message: format!("{op} re-entered the writer while it was in use (a silo bug)"),
        })?;
        if guard.in_apply_once.get() {
            return self.write_in_savepoint(&conn, op, f);
        }
        if !conn.is_autocommit() {
            // Left open by a failed rollback: never commit into it.
            conn.execute_batch("ROLLBACK")
                .map_err(|e| map_error(&self.path, op, e))?;
        }
        retry(&self.path, op, self.options.busy_timeout, || {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    fn write_in_savepoint<T>(
        &self,
        conn: &Connection,
        op: &str,
        mut f: impl FnMut(&Connection) -> Attempt<T>,
    ) -> Result<T> {
        let mut run = || -> Attempt<T> {
            // Prepared once per connection, not parsed again for every operation.
            conn.prepare_cached("SAVEPOINT silo_op")?.execute([])?;
            match f(conn) {
                Ok(out) => {
                    conn.prepare_cached("RELEASE silo_op")?.execute([])?;
                    Ok(out)
                }
                Err(e) => {
                    conn.execute_batch("ROLLBACK TO silo_op; RELEASE silo_op")?;
                    Err(e)
                }
            }
        };
        run().map_err(|failure| failure.into_error(&self.path, op))
    }

    /// Runs `f` in one read transaction on a pooled reader connection.
    /// Runs `f`, a single statement, on a pooled reader connection (SQLite gives a single
    /// statement its own consistent snapshot).
    fn read<T>(&self, op: &str, f: impl FnMut(&Connection) -> Attempt<T>) -> Result<T> {
        self.read_with(op, false, f)
    }

    /// Runs `f`, several statements, in one read transaction so they see one snapshot.
    fn read_snapshot<T>(&self, op: &str, f: impl FnMut(&Connection) -> Attempt<T>) -> Result<T> {
        self.read_with(op, true, f)
    }

    fn read_with<T>(
        &self,
        op: &str,
        snapshot: bool,
        mut f: impl FnMut(&Connection) -> Attempt<T>,
    ) -> Result<T> {
        // Inside `apply_once` on this thread, read through its transaction to see its writes.
        // (Another thread cannot take the writer while that transaction is open.)
        if let Some(guard) = self.writer.try_lock()
            && guard.in_apply_once.get()
            && let Ok(conn) = guard.conn.try_borrow()
        {
            return f(&conn).map_err(|failure| failure.into_error(&self.path, op));
        }
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => connect(&self.path, &self.options).map_err(|e| map_error(&self.path, op, e))?,
        };
        let out = retry(&self.path, op, self.options.busy_timeout, || {
            if !snapshot {
                return f(&conn);
            }
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let out = f(&tx)?;
            tx.finish()?;
            Ok(out)
        });
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }

    fn check_path(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<()> {
        self.options.check_path(scope, ns, key)
    }

    /// Runs `apply` in one `BEGIN IMMEDIATE` transaction that its operations join (as
    /// savepoints), rolled back on any failure or panic; with a `(key, fingerprint)` record,
    /// replays or refuses a recorded key first and stores the reply in the same transaction.
    fn transact(
        &self,
        record: Option<(&[u8], &[u8])>,
        apply: &mut dyn FnMut(&dyn FunctionStorage) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let guard = self.writer.lock();
        let map = |e| map_error(&self.path, "apply_once", e);
        {
            let conn = guard.conn.try_borrow_mut().map_err(|_| Error::Backend {
                backend: "sqlite".into(),
                message: "apply_once re-entered the writer (a silo bug)".into(),
            })?;
            if guard.in_apply_once.get() {
                return Err(Error::invalid("apply_once cannot be nested"));
            }
            if !conn.is_autocommit() {
                // Left open by a failed rollback: never run inside it.
                conn.execute_batch("ROLLBACK").map_err(map)?;
            }
            retry(&self.path, "apply_once", self.options.busy_timeout, || {
                Ok(conn.execute_batch("BEGIN IMMEDIATE")?)
            })?;
        }
        // Rolls the transaction back on every exit that did not commit, panics included.
        let open = OpenTransaction::new(&guard);
        if let Some((key, fingerprint)) = record {
            let replay: Option<(Vec<u8>, Vec<u8>)> = guard
                .conn
                .borrow()
                .prepare_cached("SELECT reply, fingerprint FROM idempotency WHERE key = ?1")
                .and_then(|mut stmt| {
                    stmt.query_row(params![key], |row| Ok((row.get(0)?, row.get(1)?)))
                        .optional()
                })
                .map_err(map)?;
            if let Some((reply, stored)) = replay {
                if stored.is_empty() || stored == fingerprint {
                    return Ok(reply);
                }
                return Err(crate::storage::key_reused());
            }
        }
        let reply = apply(self)?;
        {
            let conn = guard.conn.borrow();
            if let Some((key, fingerprint)) = record {
                conn.prepare_cached(
                    "INSERT INTO idempotency (key, reply, created_ms, fingerprint)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        key,
                        reply,
                        self.options.clock.now_ms(),
                        fingerprint
                    ])
                })
                .map_err(map)?;
            }
            conn.execute_batch("COMMIT").map_err(map)?;
        }
        drop(open);
        Ok(reply)
    }
}

/// Marks `apply_once`'s transaction open; dropping it ends the mark and rolls back whatever
/// was not committed, on every exit, panics included.
struct OpenTransaction<'a>(&'a Writer);

impl<'a> OpenTransaction<'a> {
    fn new(writer: &'a Writer) -> Self {
        writer.in_apply_once.set(true);
        OpenTransaction(writer)
    }
}

impl Drop for OpenTransaction<'_> {
    fn drop(&mut self) {
        self.0.in_apply_once.set(false);
        if let Ok(conn) = self.0.conn.try_borrow()
            && !conn.is_autocommit()
        {
            // If even this fails, the next `write` rolls back before it begins.
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
}

/// Creates the parent directory (0700) and the file (0600) before SQLite sees them, so the
/// WAL and shared-memory files SQLite derives from it get the same owner-only mode.
fn prepare_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("creating the store directory {}", dir.display()), e))?;
    }
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if path.is_dir() {
                return Err(Error::config(format!(
                    "{} is a directory; a sqlite store needs a file path",
                    path.display()
                )));
            }
            Ok(())
        }
        Err(e) => Err(Error::io(
            format!("creating the store file {}", path.display()),
            e,
        )),
    }
}

fn connect(path: &Path, options: &StoreOptions) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(options.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(64);
    let sync = match options.sync {
        SyncMode::Normal => "NORMAL",
        SyncMode::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    // Reads straight from the page cache's mapping instead of a pread per page.
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
    Ok(conn)
}

/// Runs `attempt` until it succeeds, fails for a reason other than lock contention, or
/// `patience` has passed.
fn retry<T>(
    path: &Path,
    op: &str,
    patience: Duration,
    mut attempt: impl FnMut() -> Attempt<T>,
) -> Result<T> {
    let deadline = Instant::now() + patience;
    let mut backoff = Duration::from_micros(500);
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(Failure::Silo(e)) => return Err(e),
            Err(Failure::Sqlite(e)) if is_busy(&e) && Instant::now() < deadline => {
                // Jitter from the clock's low bits keeps contending processes from retrying in
                // lockstep.
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let jitter = Duration::from_micros(u64::from(nanos % 500));
                thread::sleep(backoff + jitter);
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            Err(Failure::Sqlite(e)) => return Err(map_error(path, op, e)),
        }
    }
}

/// Turns a SQLite error into the semantic [`Error`] that says what to do.
fn map_error(path: &Path, op: &str, e: rusqlite::Error) -> Error {
    let where_ = path.display().to_string();
    let detail = format!("{op}: {e}");
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::Unavailable {
            message: format!("{where_} stayed locked by another process during {op} ({e})"),
        },
        Some(ErrorCode::DiskFull) => Error::StorageFull {
            path: where_,
            detail,
        },
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => Error::Corrupt {
            path: where_,
            detail: format!("{detail} (not a silo SQLite store, or damaged)"),
        },
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => {
            Error::Io {
                context: format!("{op} {where_}"),
                source: io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()),
            }
        }
        Some(ErrorCode::SystemIoFailure) => {
            // A failed write is most often a full disk, a quota or a file-size limit; SQLite
            // reports those as SQLITE_IOERR_WRITE without the errno.
            let write_failed = matches!(
                &e,
                rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_IOERR_WRITE
            );
            let hint = if write_failed {
                " while writing (disk full, quota or file-size limit?); nothing of the operation \
                 was stored"
            } else {
                ""
            };
            Error::Io {
                context: format!("{op} {where_}"),
                source: io::Error::other(format!("{e}{hint}")),
            }
        }
        Some(ErrorCode::TooBig) => Error::invalid(format!("{detail}: value too large for SQLite")),
        _ => Error::Backend {
            backend: "sqlite".into(),
            message: format!("{where_}: {detail}"),
        },
    }
}

/// Marks `scope` as written now (see [`TOUCH_RESOLUTION_MS`]).
fn touch(tx: &Connection, scope: &[u8], now: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO scopes (scope, touched_ms) VALUES (?1, ?2)
         ON CONFLICT (scope) DO UPDATE SET touched_ms = excluded.touched_ms
         WHERE excluded.touched_ms >= scopes.touched_ms + ?3",
    )?
    .execute(params![scope, now, TOUCH_RESOLUTION_MS])?;
    Ok(())
}

/// Marks an existing `scope` as written now: for operations that change a scope without
/// creating data (deletes, pops, acks), so that a scope being drained is not swept as an
/// orphan, and a pop of a scope that never existed does not invent one.
fn touch_existing(tx: &Connection, scope: &[u8], now: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE scopes SET touched_ms = ?2 WHERE scope = ?1 AND touched_ms <= ?2 - ?3",
    )?
    .execute(params![scope, now, TOUCH_RESOLUTION_MS])?;
    Ok(())
}

/// `AND key >= ?N AND key < ?M` for the bounds present in `range`, with their parameters.
fn range_sql(range: &KeyRange, first_param: usize) -> (String, Vec<&[u8]>) {
    let mut sql = String::new();
    let mut args = Vec::new();
    if let Some(start) = &range.start {
        sql.push_str(&format!(" AND key >= ?{}", first_param + args.len()));
        args.push(start.as_slice());
    }
    if let Some(end) = &range.end {
        sql.push_str(&format!(" AND key < ?{}", first_param + args.len()));
        args.push(end.as_slice());
    }
    (sql, args)
}

/// Deletes the scope's rows from every table; returns how many entries went (the `scopes` row
/// is bookkeeping, not an entry).
fn clear_scope(tx: &Connection, scope: &[u8]) -> rusqlite::Result<u64> {
    let mut entries = 0;
    for table in SCOPED_TABLES {
        let n = tx
            .prepare_cached(&format!("DELETE FROM {table} WHERE scope = ?1"))?
            .execute(params![scope])?;
        if table != "scopes" {
            entries += n as u64;
        }
    }
    Ok(entries)
}

/// Moves exhausted head items to the dead-letter list and returns the oldest deliverable one:
/// `(id, attempts)`.
fn next_visible(
    tx: &Connection,
    scope: &[u8],
    now: i64,
    max_attempts: u32,
) -> rusqlite::Result<Option<(i64, u32)>> {
    loop {
        let head = tx
            .prepare_cached(
                "SELECT id, attempts FROM queue WHERE scope = ?1 AND visible_at_ms <= ?2
                 ORDER BY id LIMIT 1",
            )?
            .query_row(params![scope, now], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, u32>(1)?))
            })
            .optional()?;
        match head {
            Some((id, attempts)) if attempts >= max_attempts => dead_letter(tx, id, now)?,
            other => return Ok(other),
        }
    }
}

fn dead_letter(tx: &Connection, id: i64, now: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO dead_letters (scope, value, attempts, dead_at_ms)
         SELECT scope, value, attempts, ?2 FROM queue WHERE id = ?1",
    )?
    .execute(params![id, now])?;
    tx.prepare_cached("DELETE FROM queue WHERE id = ?1")?
        .execute(params![id])?;
    Ok(())
}

impl FunctionStorage for SqliteStorage {
    fn state_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read("state_get", |tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT value FROM state WHERE scope = ?1 AND ns = ?2 AND key = ?3",
                )?
                .query_row(params![scope, ns, key], |row| row.get(0))
                .optional()?)
        })
    }

    fn state_put(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<()> {
        self.check_path(scope, ns, key)?;
        self.options.check_value(value)?;
        self.write("state_put", |tx| {
            tx.prepare_cached(
                "INSERT INTO state (scope, ns, key, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (scope, ns, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![scope, ns, key, value])?;
            touch(tx, scope, self.options.clock.now_ms())?;
            Ok(())
        })
    }

    fn state_del(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<bool> {
        self.write("state_del", |tx| {
            let n = tx
                .prepare_cached("DELETE FROM state WHERE scope = ?1 AND ns = ?2 AND key = ?3")?
                .execute(params![scope, ns, key])?;
            touch_existing(tx, scope, self.options.clock.now_ms())?;
            Ok(n > 0)
        })
    }

    fn state_get_many(
        &self,
        scope: &[u8],
        ns: &[u8],
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        self.read_snapshot("state_get_many", |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT value FROM state WHERE scope = ?1 AND ns = ?2 AND key = ?3",
            )?;
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                out.push(
                    stmt.query_row(params![scope, ns, key], |row| row.get(0))
                        .optional()?,
                );
            }
            Ok(out)
        })
    }

    fn state_put_many(&self, scope: &[u8], ns: &[u8], items: &[KeyValue]) -> Result<()> {
        for (key, value) in items {
            self.check_path(scope, ns, key)?;
            self.options.check_value(value)?;
        }
        self.write("state_put_many", |tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO state (scope, ns, key, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (scope, ns, key) DO UPDATE SET value = excluded.value",
            )?;
            for (key, value) in items {
                stmt.execute(params![scope, ns, key, value])?;
            }
            touch(tx, scope, self.options.clock.now_ms())?;
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
            "SELECT key, value FROM state WHERE scope = ?1 AND ns = ?2{bounds}
             ORDER BY key {order} LIMIT ?3"
        );
        self.read("state_scan", |tx| {
            let mut stmt = tx.prepare_cached(&sql)?;
            let mut args: Vec<&dyn rusqlite::ToSql> = vec![&scope, &ns];
            let lim = sql_limit(limit);
            args.push(&lim);
            for a in &bound_args {
                args.push(a);
            }
            let rows = stmt.query_map(args.as_slice(), |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<KeyValue>>>()?)
        })
    }

    fn state_delete(&self, scope: &[u8], ns: &[u8], selection: &Selection) -> Result<u64> {
        self.write("state_delete", |tx| {
            let removed = match selection {
                Selection::Keys(keys) => {
                    let mut stmt = tx.prepare_cached(
                        "DELETE FROM state WHERE scope = ?1 AND ns = ?2 AND key = ?3",
                    )?;
                    let mut n = 0;
                    for key in keys {
                        n += stmt.execute(params![scope, ns, key])?;
                    }
                    n
                }
                Selection::Range(range) if range.is_empty() => 0,
                Selection::Range(range) => {
                    let (bounds, bound_args) = range_sql(range, 3);
                    let mut args: Vec<&dyn rusqlite::ToSql> = vec![&scope, &ns];
                    for a in &bound_args {
                        args.push(a);
                    }
                    tx.prepare_cached(&format!(
                        "DELETE FROM state WHERE scope = ?1 AND ns = ?2{bounds}"
                    ))?
                    .execute(args.as_slice())?
                }
                Selection::All => tx
                    .prepare_cached("DELETE FROM state WHERE scope = ?1 AND ns = ?2")?
                    .execute(params![scope, ns])?,
            };
            touch_existing(tx, scope, self.options.clock.now_ms())?;
            Ok(removed as u64)
        })
    }

    fn state_drain(&self, scope: &[u8], ns: &[u8]) -> Result<Vec<KeyValue>> {
        let mut drained = self.write("state_drain", |tx| {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM state WHERE scope = ?1 AND ns = ?2 RETURNING key, value",
            )?;
            let rows = stmt.query_map(params![scope, ns], |row| Ok((row.get(0)?, row.get(1)?)))?;
            let pairs = rows.collect::<rusqlite::Result<Vec<KeyValue>>>()?;
            touch_existing(tx, scope, self.options.clock.now_ms())?;
            Ok(pairs)
        })?;
        // RETURNING yields rows in no promised order; the contract is key order.
        drained.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(drained)
    }

    fn append(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<i64> {
        self.check_path(scope, ns, key)?;
        self.options.check_value(value)?;
        self.write("append", |tx| {
            let id = tx
                .prepare_cached(
                    "INSERT INTO log (scope, ns, key, value) VALUES (?1, ?2, ?3, ?4) RETURNING id",
                )?
                .query_row(params![scope, ns, key, value], |row| row.get(0))?;
            touch(tx, scope, self.options.clock.now_ms())?;
            Ok(id)
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
        self.read("scan", |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT id, value FROM log WHERE scope = ?1 AND ns = ?2 AND key = ?3 AND id > ?4
                 ORDER BY id LIMIT ?5",
            )?;
            let rows = stmt
                .query_map(params![scope, ns, key, after_id, sql_limit(limit)], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
            Ok(rows.collect::<rusqlite::Result<Vec<Entry>>>()?)
        })
    }

    fn counter_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64> {
        self.read("counter_get", |tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT value FROM counters WHERE scope = ?1 AND ns = ?2 AND key = ?3",
                )?
                .query_row(params![scope, ns, key], |row| row.get(0))
                .optional()?
                .unwrap_or(0))
        })
    }

    fn counter_add(&self, scope: &[u8], ns: &[u8], key: &[u8], delta: i64) -> Result<i64> {
        self.check_path(scope, ns, key)?;
        self.write("counter_add", |tx| {
            let old: i64 = tx
                .prepare_cached(
                    "SELECT value FROM counters WHERE scope = ?1 AND ns = ?2 AND key = ?3",
                )?
                .query_row(params![scope, ns, key], |row| row.get(0))
                .optional()?
                .unwrap_or(0);
            let new = old.checked_add(delta).ok_or_else(|| {
                Failure::Silo(Error::invalid(format!(
                    "counter_add({delta}) would overflow the value {old}"
                )))
            })?;
            tx.prepare_cached(
                "INSERT INTO counters (scope, ns, key, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (scope, ns, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![scope, ns, key, new])?;
            touch(tx, scope, self.options.clock.now_ms())?;
            Ok(new)
        })
    }

    fn counter_set(&self, scope: &[u8], ns: &[u8], key: &[u8], value: i64) -> Result<i64> {
        self.check_path(scope, ns, key)?;
        self.write("counter_set", |tx| {
            let old: i64 = tx
                .prepare_cached(
                    "SELECT value FROM counters WHERE scope = ?1 AND ns = ?2 AND key = ?3",
                )?
                .query_row(params![scope, ns, key], |row| row.get(0))
                .optional()?
                .unwrap_or(0);
            tx.prepare_cached(
                "INSERT INTO counters (scope, ns, key, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (scope, ns, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![scope, ns, key, value])?;
            touch(tx, scope, self.options.clock.now_ms())?;
            Ok(old)
        })
    }

    fn counter_delete(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64> {
        self.write("counter_delete", |tx| {
            let old = tx
                .prepare_cached(
                    "DELETE FROM counters WHERE scope = ?1 AND ns = ?2 AND key = ?3 RETURNING value",
                )?
                .query_row(params![scope, ns, key], |row| row.get(0))
                .optional()?
                .unwrap_or(0);
            touch_existing(tx, scope, self.options.clock.now_ms())?;
            Ok(old)
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
        self.write("queue_push", |tx| {
            let mut stmt = tx.prepare_cached("INSERT INTO queue (scope, value) VALUES (?1, ?2)")?;
            for item in items {
                stmt.execute(params![scope, item])?;
            }
            touch(tx, scope, self.options.clock.now_ms())?;
            Ok(())
        })
    }

    fn queue_pop(&self, scope: &[u8]) -> Result<Option<Vec<u8>>> {
        let max_attempts = self.options.max_attempts;
        self.write("queue_pop", |tx| {
            let now = self.options.clock.now_ms();
            touch_existing(tx, scope, now)?;
            // One statement in the common case; an exhausted item is set aside and the next
            // one taken.
            loop {
                let head: Option<(Vec<u8>, u32)> = tx
                    .prepare_cached(
                        "DELETE FROM queue WHERE id = (
                             SELECT id FROM queue WHERE scope = ?1 AND visible_at_ms <= ?2
                             ORDER BY id LIMIT 1
                         ) RETURNING value, attempts",
                    )?
                    .query_row(params![scope, now], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                match head {
                    Some((value, attempts)) if attempts >= max_attempts => {
                        tx.prepare_cached(
                            "INSERT INTO dead_letters (scope, value, attempts, dead_at_ms)
                             VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![scope, value, attempts, now])?;
                    }
                    other => return Ok(other.map(|(value, _)| value)),
                }
            }
        })
    }

    fn queue_len(&self, scope: &[u8]) -> Result<u64> {
        self.read("queue_len", |tx| {
            Ok(tx
                .prepare_cached("SELECT count(*) FROM queue WHERE scope = ?1")?
                .query_row(params![scope], |row| row.get::<_, i64>(0))?
                .unsigned_abs())
        })
    }

    fn queue_clear(&self, scope: &[u8]) -> Result<u64> {
        self.write("queue_clear", |tx| {
            let live = tx
                .prepare_cached("DELETE FROM queue WHERE scope = ?1")?
                .execute(params![scope])?;
            let dead = tx
                .prepare_cached("DELETE FROM dead_letters WHERE scope = ?1")?
                .execute(params![scope])?;
            touch_existing(tx, scope, self.options.clock.now_ms())?;
            Ok((live + dead) as u64)
        })
    }

    fn queue_claim(&self, scope: &[u8], lease: Duration) -> Result<Option<Claim>> {
        let lease_ms = lease_millis(lease)?;
        let max_attempts = self.options.max_attempts;
        self.write("queue_claim", |tx| {
            let now = self.options.clock.now_ms();
            touch_existing(tx, scope, now)?;
            let Some((id, _)) = next_visible(tx, scope, now, max_attempts)? else {
                return Ok(None);
            };
            let claim_id: i64 = tx
                .prepare_cached(
                    "UPDATE sequences SET value = value + 1 WHERE name = 'claim' RETURNING value",
                )?
                .query_row([], |row| row.get(0))?;
            let (value, attempt) = tx
                .prepare_cached(
                    "UPDATE queue SET attempts = attempts + 1, visible_at_ms = ?2, claim_id = ?3
                     WHERE id = ?1 RETURNING value, attempts",
                )?
                .query_row(params![id, now.saturating_add(lease_ms), claim_id], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
            Ok(Some(Claim {
                id: claim_id,
                value,
                attempt,
            }))
        })
    }

    fn queue_ack(&self, scope: &[u8], claim_id: i64) -> Result<bool> {
        self.write("queue_ack", |tx| {
            let n = tx
                .prepare_cached(
                    "DELETE FROM queue WHERE claim_id = ?1 AND scope = ?2 AND visible_at_ms > ?3",
                )?
                .execute(params![claim_id, scope, self.options.clock.now_ms()])?;
            if n == 1 {
                touch_existing(tx, scope, self.options.clock.now_ms())?;
            }
            Ok(n == 1)
        })
    }

    fn queue_release(&self, scope: &[u8], claim_id: i64) -> Result<bool> {
        self.write("queue_release", |tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE queue SET visible_at_ms = 0, claim_id = NULL
                     WHERE claim_id = ?1 AND scope = ?2 AND visible_at_ms > ?3",
                )?
                .execute(params![claim_id, scope, self.options.clock.now_ms()])?;
            if n == 1 {
                touch_existing(tx, scope, self.options.clock.now_ms())?;
            }
            Ok(n == 1)
        })
    }

    fn queue_extend(&self, scope: &[u8], claim_id: i64, lease: Duration) -> Result<bool> {
        let lease_ms = lease_millis(lease)?;
        self.write("queue_extend", |tx| {
            let now = self.options.clock.now_ms();
            let n = tx
                .prepare_cached(
                    "UPDATE queue SET visible_at_ms = ?4
                     WHERE claim_id = ?1 AND scope = ?2 AND visible_at_ms > ?3",
                )?
                .execute(params![claim_id, scope, now, now.saturating_add(lease_ms)])?;
            if n == 1 {
                touch_existing(tx, scope, now)?;
            }
            Ok(n == 1)
        })
    }

    fn queue_dead_letters(&self, scope: &[u8], limit: u64) -> Result<Vec<DeadLetter>> {
        self.read("queue_dead_letters", |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT value, attempts, dead_at_ms FROM dead_letters WHERE scope = ?1
                 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![scope, sql_limit(limit)], |row| {
                Ok(DeadLetter {
                    value: row.get(0)?,
                    attempts: row.get(1)?,
                    dead_at_ms: row.get(2)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn clear(&self, scope: &[u8]) -> Result<u64> {
        self.write("clear", |tx| Ok(clear_scope(tx, scope)?))
    }

    fn gc_prefix(&self, scope_prefix: &[u8], ttl: Duration) -> Result<u64> {
        // Sweep in batches so one huge sweep never holds the write lock for long.
        const BATCH: i64 = 64;
        let cutoff = self.options.clock.now_ms().saturating_sub(millis(ttl));
        let range = KeyRange::prefix(scope_prefix);
        let (bounds, bound_args) = range_sql(&range, 3);
        let sql = format!(
            "SELECT scope FROM scopes WHERE touched_ms < ?1{} LIMIT ?2",
            bounds.replace("key", "scope")
        );
        let mut dropped = 0u64;
        loop {
            let n = self.write("gc", |tx| {
                let mut args: Vec<&dyn rusqlite::ToSql> = vec![&cutoff, &BATCH];
                for a in &bound_args {
                    args.push(a);
                }
                let stale: Vec<Vec<u8>> = tx
                    .prepare_cached(&sql)?
                    .query_map(args.as_slice(), |row| row.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                for scope in &stale {
                    clear_scope(tx, scope)?;
                }
                Ok(stale.len() as u64)
            })?;
            dropped += n;
            if n < BATCH as u64 {
                return Ok(dropped);
            }
        }
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
        let cutoff = self.options.clock.now_ms().saturating_sub(millis(age));
        self.write("expire_once_keys", |tx| {
            let n = tx
                .prepare_cached("DELETE FROM idempotency WHERE created_ms < ?1")?
                .execute(params![cutoff])?;
            Ok(n as u64)
        })
    }

    fn answers_in_microseconds(&self) -> bool {
        self.options.sync != SyncMode::Full
    }

    fn stat(&self) -> Result<StoreStats> {
        let counts = self.read_snapshot("stat", |tx| {
            let mut counts = [0u64; 6];
            for (slot, table) in counts.iter_mut().zip([
                "scopes",
                "state",
                "log",
                "counters",
                "queue",
                "dead_letters",
            ]) {
                *slot = tx
                    .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                        row.get::<_, i64>(0)
                    })?
                    .unsigned_abs();
            }
            Ok(counts)
        })?;
        let file_len = |suffix: &str| {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            fs::metadata(name).map(|m| m.len()).unwrap_or(0)
        };
        Ok(StoreStats {
            backend: "sqlite".into(),
            location: self.path.display().to_string(),
            scopes: counts[0],
            state_entries: counts[1],
            log_entries: counts[2],
            counters: counts[3],
            queue_items: counts[4],
            dead_letters: counts[5],
            bytes_on_disk: Some(file_len("") + file_len("-wal") + file_len("-shm")),
            max_attempts: self.options.max_attempts,
            max_value_bytes: self.options.max_value_bytes as u64,
            durable_frame_no: None,
        })
    }
}
