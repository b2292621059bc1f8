//! One parser that turns a store URL (or the environment) into a backend, as
//! `object_store::parse_url` does; and the default on-disk location of the embedded store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::memory::MemoryStorage;
use crate::{Error, FunctionStorage, Result, StoreOptions};

/// The orphan TTL used when `VGI_BUFFERING_STORE_TTL_SECS` is unset: one day.
pub const DEFAULT_ORPHAN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Opens the store a URL names (SPEC §5):
///
/// | URL | backend |
/// |---|---|
/// | `memory:` | in-process |
/// | `sqlite:///abs/file.db` | SQLite file (WAL); `sqlite:` alone = the default path |
/// | `fs:///abs/dir` | silo's log-structured engine in a directory; `fs:` alone = the default directory |
/// | `http://host:port` | client of `silo serve` (`?retries=N&timeout_ms=M`) |
/// | `postgres://user:pass@host:port/db?schema=silo` | PostgreSQL, shared by many hosts (cargo feature `postgres`) |
///
/// Query parameters set [`StoreOptions`], e.g. `?sync=full&max_attempts=3`.
pub fn open(url: &str) -> Result<Arc<dyn FunctionStorage>> {
    let parsed = Url::parse(url).map_err(|e| {
        Error::config(format!(
            "cannot parse store URL {url:?}: {e} (expected e.g. memory:, sqlite:///abs/path.db)"
        ))
    })?;
    match parsed.scheme() {
        "memory" => Ok(Arc::new(MemoryStorage::with_options(store_options(
            &parsed,
        )?))),
        "sqlite" => open_sqlite(&parsed, store_options(&parsed)?),
        "http" | "https" => open_http(&parsed),
        "fs" => open_fs(&parsed),
        "postgres" | "postgresql" => open_postgres(&parsed),
        other => Err(Error::config(format!(
            "unknown store URL scheme {other:?} in {:?} (known: memory, fs, sqlite, http, postgres)",
            redact_url(url)
        ))),
    }
}

/// The directory an `fs:` store URL names (`None` for any other kind of store): what
/// replication and restore work on.
pub fn fs_dir(url: &str) -> Result<Option<PathBuf>> {
    let parsed = Url::parse(url)
        .map_err(|e| Error::config(format!("cannot parse store URL {url:?}: {e}")))?;
    if parsed.scheme() != "fs" {
        return Ok(None);
    }
    local_path(&parsed, "fs", "dir", default_fs_path).map(Some)
}

/// A store URL fit for logs and messages: its password, and any query parameter named
/// `password`, shown as `***`.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = Url::parse(url) else {
        return "(an unparsable URL)".into();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" { "***".into() } else { v };
                (k.into_owned(), v.into_owned())
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// The [`StoreOptions`] a local store's URL query sets.
fn store_options(url: &Url) -> Result<StoreOptions> {
    let mut options = StoreOptions::default();
    for (name, value) in url.query_pairs() {
        options.set(&name, &value)?;
    }
    Ok(options)
}

#[cfg(feature = "postgres")]
fn open_postgres(url: &Url) -> Result<Arc<dyn FunctionStorage>> {
    Ok(Arc::new(crate::postgres::PostgresStorage::open(url)?))
}

#[cfg(not(feature = "postgres"))]
fn open_postgres(url: &Url) -> Result<Arc<dyn FunctionStorage>> {
    Err(Error::unsupported(
        format!("opening a {}: store", url.scheme()),
        "this build of silo (built without the `postgres` cargo feature)",
    ))
}

#[cfg(feature = "sqlite")]
fn open_sqlite(url: &Url, options: StoreOptions) -> Result<Arc<dyn FunctionStorage>> {
    let path = sqlite_path(url)?;
    Ok(Arc::new(crate::sqlite::SqliteStorage::open(path, options)?))
}

#[cfg(not(feature = "sqlite"))]
fn open_sqlite(_url: &Url, _options: StoreOptions) -> Result<Arc<dyn FunctionStorage>> {
    Err(Error::unsupported(
        "opening a sqlite: store",
        "this build of silo (built without the `sqlite` feature)",
    ))
}

#[cfg(feature = "fs")]
fn open_fs(url: &Url) -> Result<Arc<dyn FunctionStorage>> {
    let path = local_path(url, "fs", "dir", default_fs_path)?;
    let mut options = StoreOptions::default();
    let mut tuning = crate::fs::FsTuning::default();
    for (name, value) in url.query_pairs() {
        let bytes = || {
            value.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
                Error::config(format!(
                    "option {name}={value:?}: expected a byte count above 0"
                ))
            })
        };
        match &*name {
            "segment_bytes" => tuning.segment_bytes = bytes()?,
            "compact_min_bytes" => tuning.compact_min_bytes = bytes()?,
            _ => options.set(&name, &value).map_err(|e| match e {
                Error::Config { message } => Error::config(format!(
                    "{message}; fs: also takes segment_bytes and compact_min_bytes"
                )),
                other => other,
            })?,
        }
    }
    Ok(Arc::new(crate::fs::FsStorage::open(path, options, tuning)?))
}

#[cfg(not(feature = "fs"))]
fn open_fs(_url: &Url) -> Result<Arc<dyn FunctionStorage>> {
    Err(Error::unsupported(
        "opening an fs: store",
        "this build of silo (built without the `fs` feature)",
    ))
}

#[cfg(feature = "http")]
fn open_http(url: &Url) -> Result<Arc<dyn FunctionStorage>> {
    Ok(Arc::new(crate::http::HttpStorage::open(url)?))
}

#[cfg(not(feature = "http"))]
fn open_http(_url: &Url) -> Result<Arc<dyn FunctionStorage>> {
    Err(Error::unsupported(
        "opening an http: store",
        "this build of silo (built without the `http` feature)",
    ))
}

/// The file a `sqlite:` URL names: `sqlite:///abs/file.db`, or the default path for `sqlite:`
/// and `sqlite://`.
fn sqlite_path(url: &Url) -> Result<PathBuf> {
    local_path(url, "sqlite", "file.db", default_sqlite_path)
}

/// The local path a `scheme:///abs/path` URL names, or `default()` for `scheme:` and
/// `scheme://`. Relative paths are refused so that two processes started in different
/// directories can never open different stores by accident.
fn local_path(
    url: &Url,
    scheme: &str,
    example: &str,
    default: fn() -> Result<PathBuf>,
) -> Result<PathBuf> {
    if url.host_str().is_some_and(|h| !h.is_empty()) {
        return Err(Error::config(format!(
            "{scheme} URL {url} names a host; use three slashes for an absolute path: \
             {scheme}:///abs/{example}"
        )));
    }
    let path = url.path();
    if path.is_empty() {
        return default();
    }
    if !path.starts_with('/') {
        return Err(Error::config(format!(
            "{scheme} URL {url} has a relative path; use an absolute one: {scheme}:///abs/{example}"
        )));
    }
    // `to_file_path` percent-decodes; it does not care that the scheme is not `file`.
    url.to_file_path()
        .map_err(|()| Error::config(format!("{scheme} URL {url} does not name a usable path")))
}

/// silo's state directory: `$XDG_STATE_HOME/silo`, else `$HOME/.local/state/silo`.
fn state_dir() -> Result<PathBuf> {
    let base =
        match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => {
                let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or_else(|| {
                Error::config(
                    "cannot find a default store location: neither XDG_STATE_HOME nor HOME is \
                     set; pass a store URL such as sqlite:///abs/state.db",
                )
            })?;
                PathBuf::from(home).join(".local").join("state")
            }
        };
    Ok(base.join("silo"))
}

/// The default `fs:` store directory: the state directory's `fs`.
pub fn default_fs_path() -> Result<PathBuf> {
    Ok(state_dir()?.join("fs"))
}

/// The default embedded store: `$XDG_STATE_HOME/silo/state.db`, else
/// `$HOME/.local/state/silo/state.db`.
pub fn default_sqlite_path() -> Result<PathBuf> {
    Ok(state_dir()?.join("state.db"))
}

/// The URL of the default embedded store.
pub fn default_url() -> Result<String> {
    sqlite_url(&default_sqlite_path()?)
}

/// The `sqlite://` URL of a database file, its path percent-escaped, so that a path holding
/// `%`, `?` or `#` names that file and no other.
pub fn sqlite_url(path: &std::path::Path) -> Result<String> {
    let url = Url::from_file_path(path).map_err(|()| {
        Error::config(format!(
            "{} is not an absolute path; a sqlite store needs one",
            path.display()
        ))
    })?;
    Ok(format!("sqlite://{}", &url.as_str()["file://".len()..]))
}

/// What the environment asks for (SPEC §5): the store URL and the orphan TTL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvConfig {
    /// The store to open.
    pub url: String,
    /// Scopes untouched for longer than this are orphans (`VGI_BUFFERING_STORE_TTL_SECS`).
    pub orphan_ttl: Duration,
    /// Bearer token for an `http` store (`SILO_TOKEN`, else `VGI_STORAGE_TOKEN`).
    pub token: Option<String>,
}

impl EnvConfig {
    /// Reads `SILO_STORAGE_URL`; failing that the VGI variables `VGI_WORKER_SHARED_STORAGE`
    /// (`memory` | `fs` | `sqlite` | `http`), `VGI_STORAGE_URL`, `VGI_STORAGE_DB`; and
    /// `VGI_BUFFERING_STORE_TTL_SECS`. An unknown backend name is an error.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`EnvConfig::from_env`] over any variable lookup (tests pass a map).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let orphan_ttl = match var("VGI_BUFFERING_STORE_TTL_SECS") {
            None => DEFAULT_ORPHAN_TTL,
            Some(s) => Duration::from_secs(s.trim().parse::<u64>().map_err(|_| {
                Error::config(format!(
                    "VGI_BUFFERING_STORE_TTL_SECS={s:?} is not a whole number of seconds"
                ))
            })?),
        };
        let token = var("SILO_TOKEN").or_else(|| var("VGI_STORAGE_TOKEN"));
        let url = match var("SILO_STORAGE_URL") {
            Some(url) => url,
            None => match var("VGI_WORKER_SHARED_STORAGE").as_deref() {
                Some("memory") => "memory:".to_string(),
                None | Some("sqlite") => match var("VGI_STORAGE_DB") {
                    Some(path) if path.starts_with('/') => sqlite_url(std::path::Path::new(&path))?,
                    Some(path) => {
                        return Err(Error::config(format!(
                            "VGI_STORAGE_DB={path:?} must be an absolute path"
                        )));
                    }
                    None => default_url()?,
                },
                Some("fs") => "fs:".to_string(),
                Some("http") => var("VGI_STORAGE_URL").ok_or_else(|| {
                    Error::config("VGI_WORKER_SHARED_STORAGE=http requires VGI_STORAGE_URL")
                })?,
                Some(other) => {
                    return Err(Error::config(format!(
                        "VGI_WORKER_SHARED_STORAGE={other:?} is not a backend \
                         (memory, fs, sqlite, http)"
                    )));
                }
            },
        };
        Ok(EnvConfig {
            url,
            orphan_ttl,
            token,
        })
    }
}

/// Opens the store the environment names (see [`EnvConfig::from_env`]).
pub fn from_env() -> Result<Arc<dyn FunctionStorage>> {
    open(&EnvConfig::from_env()?.url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<EnvConfig> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EnvConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn passwords_are_redacted() {
        let shown = redact_url("postgres://u:secret@h/db?password=other&schema=s");
        assert!(
            !shown.contains("secret") && !shown.contains("other"),
            "{shown}"
        );
        assert!(
            shown.contains("schema=s") && shown.contains("u:***@h"),
            "{shown}"
        );
        assert_eq!(redact_url("fs:///tmp/x"), "fs:///tmp/x");
    }

    #[test]
    fn only_local_stores_without_sync_full_answer_in_microseconds() {
        let dir = tempfile::tempdir().unwrap();
        let at = |url: String| open(&url).unwrap().answers_in_microseconds();
        let d = dir.path().display();
        assert!(!at(format!("fs://{d}/a?sync=full")));
        assert!(!at(format!("sqlite://{d}/b.db?max_attempts=3&sync=full")));
        assert!(at(format!("sqlite://{d}/c.db")));
        assert!(at(format!("fs://{d}/d")));
        assert!(at(format!("fs://{d}/e?sync=normal")));
        assert!(at("memory:".into()));
        // A network client never answers on the calling thread alone.
        assert!(!at("http://127.0.0.1:1".into()));
    }

    #[test]
    fn silo_url_wins_over_vgi_variables() {
        let c = env(&[
            ("SILO_STORAGE_URL", "memory:"),
            ("VGI_WORKER_SHARED_STORAGE", "http"),
        ])
        .unwrap();
        assert_eq!(c.url, "memory:");
        assert_eq!(c.orphan_ttl, DEFAULT_ORPHAN_TTL);
    }

    #[test]
    fn vgi_variables_map_to_urls() {
        assert_eq!(
            env(&[("VGI_WORKER_SHARED_STORAGE", "memory")]).unwrap().url,
            "memory:"
        );
        let http = env(&[
            ("VGI_WORKER_SHARED_STORAGE", "http"),
            ("VGI_STORAGE_URL", "http://10.0.0.1:8080"),
            ("VGI_STORAGE_TOKEN", "t0k"),
            ("VGI_BUFFERING_STORE_TTL_SECS", "60"),
        ])
        .unwrap();
        assert_eq!(http.url, "http://10.0.0.1:8080");
        assert_eq!(http.token.as_deref(), Some("t0k"));
        assert_eq!(http.orphan_ttl, Duration::from_secs(60));
        let db = env(&[
            ("VGI_WORKER_SHARED_STORAGE", "sqlite"),
            ("VGI_STORAGE_DB", "/x/y.db"),
        ]);
        assert_eq!(db.unwrap().url, "sqlite:///x/y.db");
        // Bytes that mean something in a URL name the file, not a query or fragment.
        let odd = env(&[("VGI_STORAGE_DB", "/tmp/a%41?b#c.db")]).unwrap();
        assert_eq!(
            sqlite_path(&Url::parse(&odd.url).unwrap()).unwrap(),
            PathBuf::from("/tmp/a%41?b#c.db")
        );
        assert_eq!(
            env(&[("VGI_WORKER_SHARED_STORAGE", "fs")]).unwrap().url,
            "fs:"
        );
        let fs_dir = default_fs_path().unwrap();
        assert!(fs_dir.ends_with("silo/fs"), "{}", fs_dir.display());
        let default = env(&[("HOME", "/home/u")]);
        // HOME comes from the real environment in `default_url`, so only the scheme is fixed here.
        assert!(default.unwrap().url.starts_with("sqlite:///"));
    }

    #[test]
    fn bad_environment_is_an_error_not_a_fallback() {
        assert!(matches!(
            env(&[("VGI_WORKER_SHARED_STORAGE", "redis")]),
            Err(Error::Config { .. })
        ));
        assert!(matches!(
            env(&[("VGI_WORKER_SHARED_STORAGE", "http")]),
            Err(Error::Config { .. })
        ));
        assert!(matches!(
            env(&[("VGI_BUFFERING_STORE_TTL_SECS", "soon")]),
            Err(Error::Config { .. })
        ));
    }

    #[test]
    fn urls_are_checked() {
        assert!(matches!(open("nosuch://x"), Err(Error::Config { .. })));
        assert!(matches!(open("not a url"), Err(Error::Config { .. })));
        // Nothing listens on port 1: the store is unavailable (or not built in).
        let pg = open("postgres://silo@127.0.0.1:1/x?connect_timeout=2");
        if cfg!(feature = "postgres") {
            assert!(matches!(pg, Err(Error::Unavailable { .. })), "{pg:?}");
        } else {
            assert!(matches!(pg, Err(Error::Unsupported { .. })), "{pg:?}");
        }
        assert!(matches!(open("fs:rel/dir"), Err(Error::Config { .. })));
        assert!(matches!(open("fs://host/dir"), Err(Error::Config { .. })));
        assert!(matches!(open("memory:?bogus=1"), Err(Error::Config { .. })));
        assert!(open("memory:?max_attempts=2").is_ok());
    }

    #[test]
    fn sqlite_paths() {
        let p = |s: &str| sqlite_path(&Url::parse(s).unwrap());
        assert_eq!(
            p("sqlite:///tmp/a%20b.db").unwrap(),
            PathBuf::from("/tmp/a b.db")
        );
        assert_eq!(
            p("sqlite:///tmp/a+b.db").unwrap(),
            PathBuf::from("/tmp/a+b.db")
        );
        assert!(matches!(p("sqlite://host/x.db"), Err(Error::Config { .. })));
        assert!(matches!(p("sqlite:rel.db"), Err(Error::Config { .. })));
    }
}
