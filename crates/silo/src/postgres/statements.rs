//! The SQL of the one-statement operations that silo-bench times against the same statements
//! issued directly with the client crate (silo's overhead over raw PostgreSQL). Public only with
//! the `conformance` feature; each constant says its parameters, in order.

/// `state_get`: `$1` scope, `$2` ns, `$3` key → `value`.
pub const STATE_GET: &str = "SELECT value FROM state WHERE scope = $1 AND ns = $2 AND key = $3";

/// `state_put`: `$1` scope, `$2` ns, `$3` key, `$4` value, `$5` now (ms).
pub const STATE_PUT: &str = concat!(
    touching!("$5"),
    "INSERT INTO state (scope, ns, key, value) VALUES ($1, $2, $3, $4)
     ON CONFLICT (scope, ns, key) DO UPDATE SET value = excluded.value"
);

/// `state_put_many`: `$1` scope, `$2` ns, `$3` keys (distinct), `$4` values, `$5` now (ms).
pub const STATE_PUT_MANY: &str = concat!(
    touching!("$5"),
    "INSERT INTO state (scope, ns, key, value)
     SELECT $1, $2, k, v FROM unnest($3::bytea[], $4::bytea[]) AS t(k, v)
     ON CONFLICT (scope, ns, key) DO UPDATE SET value = excluded.value"
);

/// `append`: `$1` scope, `$2` ns, `$3` key, `$4` value, `$5` now (ms), `$6` the log's lock
/// key → `id`. The id is drawn after the log's lock is taken (the insert reads the lock's row),
/// and the lock is held to commit: ids become visible in order.
pub const APPEND: &str = concat!(
    touching!("$5"),
    ", locked AS (SELECT pg_advisory_xact_lock($6))
     INSERT INTO log (id, scope, ns, key, value)
     SELECT nextval('log_ids'), $1, $2, $3, $4 FROM locked RETURNING id"
);

/// `scan`: `$1` scope, `$2` ns, `$3` key, `$4` after id, `$5` limit → `id, value`.
pub const SCAN: &str = "SELECT id, value FROM log WHERE scope = $1 AND ns = $2 AND key = $3
     AND id > $4 ORDER BY id LIMIT $5";

/// `queue_push`: `$1` scope, `$2` items (in order), `$3` now (ms).
pub const QUEUE_PUSH: &str = concat!(
    touching!("$3"),
    "INSERT INTO queue (scope, value)
     SELECT $1, v FROM unnest($2::bytea[]) WITH ORDINALITY AS t(v, n) ORDER BY n"
);

/// `queue_pop`, one try: `$1` scope, `$2` now (ms), `$3` max attempts (int4) → `value,
/// attempts`. The head is taken and, when it is exhausted, set aside in one statement (the
/// caller then tries the next one).
pub const QUEUE_POP: &str = concat!(
    "WITH head AS (
         DELETE FROM queue WHERE id = (
             SELECT id FROM queue WHERE scope = $1 AND visible_at_ms <= $2
             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING scope, value, attempts),
     buried AS (INSERT INTO dead_letters (scope, value, attempts, dead_at_ms)
         SELECT scope, value, attempts, $2 FROM head WHERE attempts >= $3),
     touched AS (",
    touch_existing!("$2"),
    ") SELECT value, attempts FROM head"
);
