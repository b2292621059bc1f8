//! The `silo` command line: every subcommand, flag and help text, parsed by clap.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

const AFTER_HELP: &str = "\
Names (scope, namespace, key) and values are UTF-8 text unless --hex is given.
A value argument may also be `-` (read stdin to the end) or `@PATH` (read a file).

The store is --store URL, else SILO_STORAGE_URL, else the VGI variables
(VGI_WORKER_SHARED_STORAGE, VGI_STORAGE_URL, VGI_STORAGE_DB), else the default
SQLite file $XDG_STATE_HOME/silo/state.db (~/.local/state/silo/state.db).
URLs: memory:, sqlite:///abs/path.db[?sync=full&max_attempts=N&...],
fs:///abs/dir[?sync=full&segment_bytes=N&...], http://host:port
Backup and restore of fs: stores: silo replicate, silo restore.

Exit status: 0 success; 1 nothing found (missing key, empty queue, lost lease);
2 bad command line or input; 3 the store reported an error.";

/// Inspect and change silo stores: durable, cross-process state for pooled workers.
#[derive(Debug, Parser)]
#[command(name = "silo", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Store URL (memory:, sqlite:///abs/file.db, fs:///abs/dir, http://host:port,
    /// postgres://user:pass@host/db?schema=silo).
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,

    /// Names and values are hex on input and output.
    #[arg(long, global = true, conflicts_with = "raw")]
    pub hex: bool,

    /// Print values as raw bytes, with no trailing newline (names stay text).
    #[arg(long, global = true)]
    pub raw: bool,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// How names and values are written on this command line.
    pub fn encoding(&self) -> Encoding {
        if self.hex {
            Encoding::Hex
        } else if self.raw {
            Encoding::Raw
        } else {
            Encoding::Text
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the store over HTTP (the VGI storage wire protocol); prints `PORT:<n>` once bound.
    Serve(ServeArgs),
    /// Ship an fs: store's log to object storage, continuously (or --once), for restore.
    Replicate(ReplicateArgs),
    /// Rebuild an fs: store from a replica, as of the latest shipped point, a frame or a time.
    Restore(RestoreArgs),
    /// Counts of what the store holds, its location and limits.
    Stat,
    /// Key/value state of a scope (the empty namespace).
    #[command(subcommand)]
    Kv(KvCmd),
    /// Append-only logs.
    #[command(subcommand)]
    Log(LogCmd),
    /// FIFO work queues.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Atomic i64 counters.
    #[command(subcommand)]
    Counter(CounterCmd),
    /// Drop everything of a scope: state, logs, counters, queue; prints how many entries went.
    Clear {
        /// The scope to drop.
        scope: String,
    },
    /// Drop every scope not written for longer than the TTL; prints how many went.
    Gc {
        /// Age in seconds past which a scope is an orphan.
        #[arg(long = "ttl", value_name = "SECS")]
        ttl_secs: u64,
    },
}

const SERVE_HELP: &str = "\
The store is --store URL, else VGI_STORAGE_DB (a SQLite path), else SILO_STORAGE_URL, else the
default SQLite file. VGI_WORKER_SHARED_STORAGE is a worker's setting and is ignored here.

VGI workers use the server unchanged:
  VGI_WORKER_SHARED_STORAGE=http VGI_STORAGE_URL=http://HOST:PORT [VGI_STORAGE_TOKEN=...]

Routes: POST /rpc (wire protocol), GET /health, GET /metrics (Prometheus), GET /v1/info.
SIGINT or SIGTERM stops accepting and finishes the requests in flight.";

#[derive(Debug, clap::Args)]
#[command(after_help = SERVE_HELP)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "VGI_STORAGE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,

    /// Bearer token every request must carry.
    #[arg(long, env = "VGI_STORAGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File of `TOKEN TENANT` lines: each token is a tenant, fenced off from the others. Wins
    /// over --token / VGI_STORAGE_TOKEN (which workers on the same host often have set).
    #[arg(long, value_name = "FILE")]
    pub tokens: Option<PathBuf>,

    /// Largest request body in bytes; larger requests get 413.
    #[arg(long, default_value_t = silo_server::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Seconds an idempotency key and its reply are kept for retries.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub idempotency_window: u64,

    /// Scopes untouched for this many seconds are orphans, dropped by the sweep.
    #[arg(
        long,
        value_name = "SECS",
        env = "VGI_BUFFERING_STORE_TTL_SECS",
        default_value_t = 86_400
    )]
    pub orphan_ttl: u64,

    /// Seconds between orphan sweeps (the first runs at start-up); default a tenth of the TTL,
    /// between 1 s and 1 h.
    #[arg(long, value_name = "SECS")]
    pub sweep_every: Option<u64>,

    /// Do not sweep orphaned scopes (run `silo gc` from cron instead).
    #[arg(long)]
    pub no_orphan_sweep: bool,

    /// Requests read or executed at once; more wait up to --queue-wait-ms, then get 503.
    #[arg(long, value_name = "N", default_value_t = silo_server::Limits::default().max_concurrent_requests)]
    pub max_concurrent_requests: usize,

    /// Request body bytes held at once over all requests; more wait, then get 503.
    #[arg(long, value_name = "BYTES", default_value_t = silo_server::Limits::default().max_inflight_bytes)]
    pub max_inflight_bytes: usize,

    /// How long a request waits for a free slot or body budget before 503 + Retry-After.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub queue_wait_ms: u64,

    /// Deadline for a request's header; also how long an idle keep-alive connection is kept.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub header_timeout_ms: u64,

    /// Deadline for a request's body once its header arrived; slower ones get 408.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    pub body_timeout_ms: u64,

    /// Open connections at most; more wait in the listen backlog.
    #[arg(long, value_name = "N", default_value_t = silo_server::Limits::default().max_connections)]
    pub max_connections: usize,

    /// Elements one request may carry in a list (queue items, keys, pairs); more get 413.
    #[arg(long, value_name = "N", default_value_t = silo_server::Limits::default().max_items)]
    pub max_items: usize,

    /// Largest reply; a read that would answer more fails (page it), a drain is rolled back.
    #[arg(long, value_name = "BYTES", default_value_t = silo_server::Limits::default().max_reply_bytes)]
    pub max_reply_bytes: usize,

    /// Ship the store's log to this target while serving (fs: stores; see `silo replicate`).
    #[arg(long, value_name = "URL")]
    pub replicate: Option<String>,

    #[command(flatten)]
    pub ship: ShipFlags,
}

const REPLICATE_HELP: &str = "\
Targets: file:///abs/dir, s3://bucket/prefix (credentials, region and endpoint from AWS_*:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT for S3-compatible services,
AWS_ALLOW_HTTP=true for a plain-HTTP endpoint), gs://bucket/prefix (GOOGLE_*),
az://container/prefix (AZURE_*). Ship each store to its own prefix.

Every frame the store writes is uploaded in order, as segment objects named by their frame
range, times and hash, with manifest.json saying how far it got (durable_frame_no); compacted
bases go as snapshots. The store keeps every segment not shipped yet (a REPLICA file in its
directory), so a shipper that is down or cut off loses nothing; delete REPLICA to stop
replicating for good. Restore with `silo restore`.";

/// How far back the replica must stay restorable, and how often to ship.
#[derive(Debug, Clone, clap::Args)]
pub struct ShipFlags {
    /// Ship at least this often, in seconds: the most recent history a lost disk can take.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub max_lag: f64,

    /// Keep every point of this window restorable (e.g. 7d, 12h) and delete older objects;
    /// default: keep everything.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub retain: Option<std::time::Duration>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = REPLICATE_HELP)]
pub struct ReplicateArgs {
    /// Where to ship (file:///abs/dir, s3://bucket/prefix, gs://…, az://…).
    #[arg(long, value_name = "URL")]
    pub to: String,

    /// Ship everything written so far, then exit (for scripts and cron).
    #[arg(long)]
    pub once: bool,

    #[command(flatten)]
    pub ship: ShipFlags,
}

const RESTORE_HELP: &str = "\
Restores exactly the operations up to the chosen point (never a torn one), from the newest
snapshot before it plus the segments after, checking every object's hash and every frame's
checksum. --at includes every frame at or before the moment. The destination must be a new
or empty directory; the result is opened as a store before restore reports success.

Exit status: 0 restored; 2 bad command line or point; 3 the replica or the target failed
(a damaged object is named; --stop-before-damage restores up to just before it).";

#[derive(Debug, clap::Args)]
#[command(after_help = RESTORE_HELP)]
pub struct RestoreArgs {
    /// The replica (file:///abs/dir, s3://bucket/prefix, gs://…, az://…).
    #[arg(long, value_name = "URL")]
    pub from: String,

    /// The new store: fs:///abs/dir (missing or empty).
    #[arg(long, value_name = "URL", required_unless_present = "list")]
    pub to: Option<String>,

    /// Restore the state as of this moment (RFC 3339, e.g. 2026-12-05T14:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time, conflicts_with_all = ["frame", "latest"])]
    pub at: Option<i64>,

    /// Restore the state after this frame.
    #[arg(long, value_name = "N", conflicts_with = "latest")]
    pub frame: Option<u64>,

    /// Restore the last shipped point (the default).
    #[arg(long)]
    pub latest: bool,

    /// A damaged object ends the restore at the frame before it instead of failing it.
    #[arg(long)]
    pub stop_before_damage: bool,

    /// Show the restorable range instead of restoring.
    #[arg(long, conflicts_with_all = ["to", "at", "frame", "latest", "stop_before_damage"])]
    pub list: bool,
}

/// `7d`, `12h`, `90s`, `1h 30m`: a duration.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 7d or 12h: {e}"))
}

/// An RFC 3339 moment, as ms since the epoch.
fn parse_time(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time like 2026-12-05T14:00:00Z: {e}"))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970"))?
        .as_millis();
    i64::try_from(ms).map_err(|_| format!("{s:?} is too far in the future"))
}

#[derive(Debug, Subcommand)]
pub enum KvCmd {
    /// Print the value (exit 1 when missing).
    Get { scope: String, key: String },
    /// Set the value.
    Put {
        scope: String,
        key: String,
        /// Text, `-` for stdin, or `@PATH`.
        value: ValueArg,
    },
    /// Remove the key (no error when missing).
    Del { scope: String, key: String },
}

#[derive(Debug, Subcommand)]
pub enum LogCmd {
    /// Append an entry; prints its id.
    Append {
        scope: String,
        ns: String,
        key: String,
        /// Text, `-` for stdin, or `@PATH`.
        value: ValueArg,
    },
    /// Print entries as `ID<TAB>VALUE`, in id order.
    Scan {
        scope: String,
        ns: String,
        key: String,
        /// Only entries with a larger id (0 = from the start).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        after: i64,
        /// At most this many entries.
        #[arg(long, default_value_t = u64::MAX)]
        limit: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCmd {
    /// Push items, in order, atomically.
    Push {
        scope: String,
        /// Items: text, `-` for stdin, or `@PATH`.
        #[arg(required = true)]
        values: Vec<ValueArg>,
    },
    /// Remove and print the oldest item (exit 1 when empty).
    Pop { scope: String },
    /// Print how many items are not yet acknowledged.
    Len { scope: String },
    /// Take the oldest item with a lease; prints `CLAIM_ID<TAB>ATTEMPT<TAB>VALUE`.
    Claim {
        scope: String,
        /// Lease length in seconds.
        #[arg(long = "lease", value_name = "SECS", default_value_t = 30.0)]
        lease_secs: f64,
    },
    /// Acknowledge a claimed item (exit 1 when the lease was lost).
    Ack {
        scope: String,
        /// The id `queue claim` printed.
        #[arg(allow_negative_numbers = true)]
        claim_id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum CounterCmd {
    /// Print the counter (0 when missing).
    Get {
        scope: String,
        ns: String,
        key: String,
    },
    /// Add DELTA atomically; prints the new value.
    Add {
        scope: String,
        ns: String,
        key: String,
        #[arg(allow_negative_numbers = true)]
        delta: i64,
    },
}

/// How names and values appear on the command line and in output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Text,
    Hex,
    /// Values out as raw bytes; input as text.
    Raw,
}

impl Encoding {
    /// The bytes a name or literal value stands for.
    pub fn decode(self, s: &str) -> Result<Vec<u8>, String> {
        match self {
            Encoding::Hex => hex::decode(s).map_err(|e| format!("{s:?} is not hex: {e}")),
            Encoding::Text | Encoding::Raw => Ok(s.as_bytes().to_vec()),
        }
    }
}

/// Where a value comes from.
#[derive(Clone, Debug)]
pub enum ValueArg {
    Literal(String),
    Stdin,
    File(PathBuf),
}

impl std::str::FromStr for ValueArg {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "-" => ValueArg::Stdin,
            _ => match s.strip_prefix('@') {
                Some(path) => ValueArg::File(PathBuf::from(path)),
                None => ValueArg::Literal(s.to_string()),
            },
        })
    }
}
