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
