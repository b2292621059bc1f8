//! Options every backend shares (limits, queue attempts, durability, lock patience), how they
//! are read from a store URL's query string, and the input checks built on them.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Error, Result};

/// The clock a store reads for leases, touch times and idempotency records: the system's
/// wall clock (shared by every process and host of a store), or a manual one that only moves
/// when told to, so tests of leases and sweeps need no sleeps.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Self {
        Clock(None)
    }

    /// A clock standing at `start_ms` (milliseconds since the Unix epoch) until advanced.
    pub fn manual(start_ms: i64) -> Self {
        Clock(Some(Arc::new(AtomicI64::new(start_ms))))
    }

    /// A manual clock standing at the system's current time.
    pub fn manual_now() -> Self {
        Self::manual(now_millis())
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            None => now_millis(),
            Some(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward; returns false (and does nothing) on the system clock.
    pub fn advance(&self, by: Duration) -> bool {
        match &self.0 {
            None => false,
            Some(ms) => {
                ms.fetch_add(millis(by), Ordering::SeqCst);
                true
            }
        }
    }

    /// True for a manual clock.
    pub fn is_manual(&self) -> bool {
        self.0.is_some()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Clock::system"),
            Some(ms) => write!(f, "Clock::manual({})", ms.load(Ordering::SeqCst)),
        }
    }
}

impl PartialEq for Clock {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Clock {}

/// How hard a commit tries to survive a crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// Survives `kill -9` of any process; a power loss may drop the latest commits
    /// (SQLite `synchronous=NORMAL` in WAL mode).
    #[default]
    Normal,
    /// Also survives power loss: every commit is fsynced (`synchronous=FULL`).
    Full,
}

/// Options shared by all backends; set from a store URL's query, e.g.
/// `sqlite:///var/lib/silo/state.db?sync=full&max_attempts=3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Largest value (state value, log entry, queue item) accepted, in bytes.
    pub max_value_bytes: usize,
    /// Largest name (scope, namespace, key) accepted, in bytes.
    pub max_name_bytes: usize,
    /// Claims of one queue item before it goes to the dead-letter list.
    pub max_attempts: u32,
    /// Commit durability.
    pub sync: SyncMode,
    /// How long an operation waits for another process's lock before it returns
    /// [`Error::Unavailable`].
    pub busy_timeout: Duration,
    /// The clock for leases, touch times and idempotency records (not settable by URL).
    pub clock: Clock,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_value_bytes: 256 << 20,
            max_name_bytes: 1 << 20,
            max_attempts: 5,
            sync: SyncMode::Normal,
            busy_timeout: Duration::from_secs(30),
            clock: Clock::system(),
        }
    }
}

impl StoreOptions {
    /// The names [`StoreOptions::set`] takes.
    pub const NAMES: [&'static str; 5] = [
        "max_value_bytes",
        "max_name_bytes",
        "max_attempts",
        "sync",
        "busy_timeout_ms",
    ];

    /// Applies one `name=value` pair from a URL query. Unknown names are errors, so a typo
    /// never silently leaves a default in force.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let number = |what: &str| -> Result<u64> {
            value
                .parse::<u64>()
                .map_err(|_| Error::config(format!("option {name}={value:?}: expected {what}")))
        };
        match name {
            "max_value_bytes" => self.max_value_bytes = to_usize(number("a byte count")?)?,
            "max_name_bytes" => self.max_name_bytes = to_usize(number("a byte count")?)?,
            "max_attempts" => {
                let n = number("a whole number from 1 to 1000000")?;
                self.max_attempts = u32::try_from(n)
                    .ok()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| {
                        Error::config(format!("option max_attempts={value}: must be 1..=1000000"))
                    })?;
            }
            "sync" => {
                self.sync = match value {
                    "normal" => SyncMode::Normal,
                    "full" => SyncMode::Full,
                    _ => {
                        return Err(Error::config(format!(
                            "option sync={value:?}: expected \"normal\" or \"full\""
                        )));
                    }
                }
            }
            "busy_timeout_ms" => self.busy_timeout = Duration::from_millis(number("milliseconds")?),
            _ => {
                return Err(Error::config(format!(
                    "unknown store option {name:?} (known: {})",
                    Self::NAMES.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Checks a scope, namespace or key against `max_name_bytes`.
    pub fn check_name(&self, what: &str, name: &[u8]) -> Result<()> {
        if name.len() > self.max_name_bytes {
            return Err(Error::invalid(format!(
                "{what} is {} bytes, over the limit of {} (max_name_bytes)",
                name.len(),
                self.max_name_bytes
            )));
        }
        Ok(())
    }

    /// Checks a value against `max_value_bytes`.
    pub fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.max_value_bytes {
            return Err(Error::invalid(format!(
                "value is {} bytes, over the limit of {} (max_value_bytes); split it or raise \
                 the limit",
                value.len(),
                self.max_value_bytes
            )));
        }
        Ok(())
    }

    /// Checks a `(scope, ns, key)` triple.
    pub fn check_path(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<()> {
        self.check_name("scope", scope)?;
        self.check_name("namespace", ns)?;
        self.check_name("key", key)
    }
}

fn to_usize(n: u64) -> Result<usize> {
    usize::try_from(n).map_err(|_| Error::config(format!("{n} does not fit this platform")))
}

/// Wall-clock milliseconds since the Unix epoch: the one clock every process of a store shares
/// (leases and scope touch times are compared across processes and hosts).
pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A lease as whole milliseconds; a lease under 1 ms is invalid input.
pub(crate) fn lease_millis(lease: Duration) -> Result<i64> {
    let ms = millis(lease);
    if ms <= 0 {
        return Err(Error::invalid("a lease must be at least 1 millisecond"));
    }
    Ok(ms)
}

/// A duration as whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_reject_unknown_names() {
        let mut o = StoreOptions::default();
        o.set("sync", "full").unwrap();
        o.set("max_attempts", "3").unwrap();
        o.set("busy_timeout_ms", "250").unwrap();
        assert_eq!(o.sync, SyncMode::Full);
        assert_eq!(o.max_attempts, 3);
        assert_eq!(o.busy_timeout, Duration::from_millis(250));
        assert!(matches!(o.set("sycn", "full"), Err(Error::Config { .. })));
        assert!(matches!(o.set("sync", "fast"), Err(Error::Config { .. })));
        assert!(matches!(
            o.set("max_attempts", "0"),
            Err(Error::Config { .. })
        ));
        assert!(matches!(
            o.set("max_value_bytes", "-1"),
            Err(Error::Config { .. })
        ));
    }

    #[test]
    fn limits_are_enforced() {
        let o = StoreOptions {
            max_value_bytes: 4,
            max_name_bytes: 2,
            ..StoreOptions::default()
        };
        assert!(o.check_value(b"1234").is_ok());
        assert!(matches!(
            o.check_value(b"12345"),
            Err(Error::InvalidInput { .. })
        ));
        assert!(o.check_path(b"ab", b"", b"cd").is_ok());
        assert!(matches!(
            o.check_path(b"ab", b"xyz", b""),
            Err(Error::InvalidInput { .. })
        ));
    }
}
