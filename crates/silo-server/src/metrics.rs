//! Prometheus metrics of the server: requests, errors and latency by operation; requests
//! refused before the store, by reason; open connections; the orphan sweeper's work.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use silo::StoreStats;
use silo::wire::OP_NAMES;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct OpMetrics {
    requests: AtomicU64,
    errors: AtomicU64,
    micros: AtomicU64,
    /// Cumulative counts per bucket, plus one for +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
}

/// Counters shared by every request handler.
pub struct Metrics {
    ops: Vec<OpMetrics>,
    rejected: [AtomicU64; REJECTIONS.len()],
    /// Connections open now.
    pub connections: AtomicU64,
    /// Orphan sweeps run, sweeps that failed, and scopes they dropped.
    pub sweeps: AtomicU64,
    pub sweep_failures: AtomicU64,
    pub swept_scopes: AtomicU64,
    /// When the last sweep finished, in seconds since the Unix epoch (0: none yet).
    pub last_sweep_unix: AtomicU64,
}

/// Label values of [`Rejection`], in discriminant order.
const REJECTIONS: [&str; 7] = [
    "unauthorized",
    "undecodable",
    "too_large",
    "overloaded",
    "timeout",
    "too_many_items",
    "reply_too_large",
];

/// Why a request was refused before it reached the store.
#[derive(Clone, Copy)]
pub enum Rejection {
    Unauthorized = 0,
    Undecodable = 1,
    TooLarge = 2,
    /// Every request slot or all in-flight body bytes were taken for too long.
    Overloaded = 3,
    /// The body did not arrive within the body timeout.
    Timeout = 4,
    TooManyItems = 5,
    ReplyTooLarge = 6,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            ops: OP_NAMES.iter().map(|_| OpMetrics::default()).collect(),
            rejected: Default::default(),
            connections: AtomicU64::new(0),
            sweeps: AtomicU64::new(0),
            sweep_failures: AtomicU64::new(0),
            swept_scopes: AtomicU64::new(0),
            last_sweep_unix: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Records one operation that reached the store.
    pub fn record(&self, op: usize, elapsed: Duration, ok: bool) {
        let Some(m) = self.ops.get(op) else { return };
        m.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            m.errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        m.micros.fetch_add(micros, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        m.buckets[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a request refused before it reached the store.
    pub fn reject(&self, why: Rejection) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, stats: Option<&StoreStats>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP silo_requests_total Requests that reached the store, by operation."
        );
        let _ = writeln!(out, "# TYPE silo_requests_total counter");
        for (name, m) in OP_NAMES.iter().zip(&self.ops) {
            let _ = writeln!(
                out,
                "silo_requests_total{{op=\"{name}\"}} {}",
                m.requests.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP silo_errors_total Requests that failed in the store, by operation."
        );
        let _ = writeln!(out, "# TYPE silo_errors_total counter");
        for (name, m) in OP_NAMES.iter().zip(&self.ops) {
            let _ = writeln!(
                out,
                "silo_errors_total{{op=\"{name}\"}} {}",
                m.errors.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP silo_rejected_total Requests refused before the store."
        );
        let _ = writeln!(out, "# TYPE silo_rejected_total counter");
        for (reason, n) in REJECTIONS.iter().zip(&self.rejected) {
            let _ = writeln!(
                out,
                "silo_rejected_total{{reason=\"{reason}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP silo_request_duration_seconds Time spent in the store, by operation."
        );
        let _ = writeln!(out, "# TYPE silo_request_duration_seconds histogram");
        for (name, m) in OP_NAMES.iter().zip(&self.ops) {
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += m.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "silo_request_duration_seconds_bucket{{op=\"{name}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += m.buckets[BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "silo_request_duration_seconds_bucket{{op=\"{name}\",le=\"+Inf\"}} {cumulative}"
            );
            let sum = m.micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "silo_request_duration_seconds_sum{{op=\"{name}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "silo_request_duration_seconds_count{{op=\"{name}\"}} {cumulative}"
            );
        }
        let server = [
            (
                "silo_connections",
                "gauge",
                "Client connections open now.",
                &self.connections,
            ),
            (
                "silo_orphan_sweeps_total",
                "counter",
                "Orphan sweeps run (scopes untouched for the orphan TTL are dropped).",
                &self.sweeps,
            ),
            (
                "silo_orphan_sweep_failures_total",
                "counter",
                "Orphan sweeps that failed (see the server log).",
                &self.sweep_failures,
            ),
            (
                "silo_orphan_scopes_swept_total",
                "counter",
                "Scopes dropped by the orphan sweeper.",
                &self.swept_scopes,
            ),
            (
                "silo_orphan_last_sweep_timestamp_seconds",
                "gauge",
                "When the last orphan sweep finished (Unix seconds; 0 = none yet).",
                &self.last_sweep_unix,
            ),
        ];
        for (name, kind, help, value) in server {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        if let Some(s) = stats {
            let gauges = [
                ("silo_store_scopes", "Scopes in the store.", s.scopes),
                (
                    "silo_store_state_entries",
                    "State entries in the store.",
                    s.state_entries,
                ),
                (
                    "silo_store_log_entries",
                    "Log entries in the store.",
                    s.log_entries,
                ),
                (
                    "silo_store_queue_items",
                    "Queue items not yet acknowledged.",
                    s.queue_items,
                ),
                (
                    "silo_store_dead_letters",
                    "Dead-lettered queue items.",
                    s.dead_letters,
                ),
                (
                    "silo_store_bytes",
                    "Bytes the store uses on disk.",
                    s.bytes_on_disk.unwrap_or(0),
                ),
            ];
            let replication = s.durable_frame_no.map(|n| {
                (
                    "silo_replication_durable_frame_no",
                    "The last frame of the store known to be in object storage.",
                    n,
                )
            });
            for (name, help, value) in gauges.into_iter().chain(replication) {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
                );
            }
        }
        out
    }
}
