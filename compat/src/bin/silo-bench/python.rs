//! The python section (`--only python`): vgi-python's own remote client
//! (`FunctionStorageCfDo`, what a Python worker pool uses with
//! `VGI_WORKER_SHARED_STORAGE=cloudflare-do`) against `silo serve`'s `/python` endpoints,
//! beside vgi-python's local `FunctionStorageSqlite`, both driven from Python by
//! `python/bench_storage.py` with the venv's interpreter (`python/.venv`, made by
//! `python/venv.sh`): single operations (latency), batches of 1,000 (items/s), and 1 vs 8
//! client processes (aggregate ops/s). The server is `silo serve`'s router running in this
//! process (as the server section's), on its default store, `sqlite://` in the run's temp
//! directory. Without the venv the section says so and measures nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{fmt_rate, median};

/// The subjects, as `bench_storage.py` names them: vgi-python's remote client against silo,
/// vgi-python's local SQLite, and (single operations only, a reference) the same requests from
/// a minimal `http.client` client.
const SILO: &str = "silo";
const SQLITE: &str = "sqlite";
const LEAN: &str = "silo-lean";

/// The single operations, in table order (what the script measures).
const SINGLE_OPS: [&str; 6] = [
    "state_put_many",
    "state_get_many",
    "state_append",
    "queue_push",
    "queue_pop",
    "state_counter_add",
];

/// How a single operation reads in the table.
fn op_label(op: &str) -> &str {
    match op {
        "state_put_many" => "state_put_many (1 item)",
        "state_get_many" => "state_get_many (1 key)",
        "queue_push" => "queue_push (1 item)",
        other => other,
    }
}

/// Targets (issue): single ops within 3× of local SQLite; batches faster than it; 8 client
/// processes at least 4× one.
const SINGLE_TARGET: f64 = 3.0;
const PROCS_TARGET: f64 = 4.0;

/// `python/` of the repository.
fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("python")
}

// ------------------------------------------------------------------ the script's JSON Lines

/// A value of a flat JSON object (what `bench_storage.py` prints, one object a line).
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

/// One line of JSON: a flat object of strings, numbers, booleans and nulls.
fn parse_object(line: &str) -> Result<BTreeMap<String, Json>, String> {
    let mut p = Parser {
        s: line.as_bytes(),
        i: 0,
    };
    let mut map = BTreeMap::new();
    p.expect(b'{')?;
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            let k = p.string()?;
            p.expect(b':')?;
            let v = p.value()?;
            map.insert(k, v);
            match p.next() {
                Some(b',') => {}
                Some(b'}') => break,
                _ => return Err(format!("expected , or }} at byte {}", p.i)),
            }
        }
    }
    if p.peek().is_some() {
        return Err(format!("trailing bytes at {}", p.i));
    }
    Ok(map)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }
    fn expect(&mut self, want: u8) -> Result<(), String> {
        match self.next() {
            Some(b) if b == want => Ok(()),
            _ => Err(format!("expected {:?} at byte {}", want as char, self.i)),
        }
    }
    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let b = *self.s.get(self.i).ok_or("unterminated string")?;
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let e = *self.s.get(self.i).ok_or("unterminated escape")?;
                    self.i += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut code = self.hex4()?;
                            // A surrogate pair: the low half follows as another \u escape.
                            if (0xD800..0xDC00).contains(&code)
                                && self.s.get(self.i..self.i + 2) == Some(b"\\u")
                            {
                                self.i += 2;
                                let low = self.hex4()?;
                                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                            }
                            char::from_u32(code).unwrap_or('\u{fffd}')
                        }
                        other => return Err(format!("bad escape \\{}", other as char)),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                other => out.push(other),
            }
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }
    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self.s.get(self.i..self.i + 4).ok_or("short \\u escape")?;
        self.i += 4;
        u32::from_str_radix(std::str::from_utf8(digits).map_err(|e| e.to_string())?, 16)
            .map_err(|e| e.to_string())
    }
    fn value(&mut self) -> Result<Json, String> {
        match self.peek() {
            Some(b'"') => self.string().map(Json::Str),
            Some(b't') | Some(b'f') | Some(b'n') => {
                for (word, v) in [
                    (&b"true"[..], Json::Bool(true)),
                    (b"false", Json::Bool(false)),
                    (b"null", Json::Null),
                ] {
                    if self.s[self.i..].starts_with(word) {
                        self.i += word.len();
                        return Ok(v);
                    }
                }
                Err(format!("bad literal at byte {}", self.i))
            }
            Some(_) => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|b| b.is_ascii_digit() || b"+-.eE".contains(b))
                {
                    self.i += 1;
                }
                std::str::from_utf8(&self.s[start..self.i])
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .map(Json::Num)
                    .ok_or_else(|| format!("bad value at byte {start}"))
            }
            None => Err("missing value".into()),
        }
    }
}

/// One record of the script's output.
struct Record(BTreeMap<String, Json>);

impl Record {
    fn str(&self, k: &str) -> &str {
        match self.0.get(k) {
            Some(Json::Str(s)) => s,
            _ => "",
        }
    }
    fn num(&self, k: &str) -> Option<f64> {
        match self.0.get(k) {
            Some(Json::Num(n)) => Some(*n),
            _ => None,
        }
    }
}

// ------------------------------------------------------------------ the section

/// What the runs measured, by (subject, operation or process count): one value per run.
#[derive(Default)]
struct Results {
    meta: Option<Record>,
    p50: BTreeMap<(String, String), Vec<f64>>,
    p99: BTreeMap<(String, String), Vec<f64>>,
    handler: BTreeMap<(String, String), Vec<f64>>,
    client_cpu: BTreeMap<(String, String), Vec<f64>>,
    server_cpu: BTreeMap<(String, String), Vec<f64>>,
    batch: BTreeMap<(String, String), Vec<f64>>,
    procs: BTreeMap<(String, u64), Vec<f64>>,
    /// (subject, what failed and why)
    errors: Vec<(String, String)>,
}

impl Results {
    fn take(&mut self, r: Record) {
        let subject = r.str("subject").to_string();
        let push = |m: &mut BTreeMap<(String, String), Vec<f64>>, k: &str, v: Option<f64>| {
            if let Some(v) = v {
                m.entry((subject.clone(), k.to_string()))
                    .or_default()
                    .push(v);
            }
        };
        match r.str("kind") {
            "meta" => self.meta = Some(r),
            "single" => {
                let op = r.str("op");
                push(&mut self.p50, op, r.num("p50_us"));
                push(&mut self.p99, op, r.num("p99_us"));
                push(&mut self.handler, op, r.num("handler_us"));
                push(&mut self.client_cpu, op, r.num("client_cpu_us"));
                push(&mut self.server_cpu, op, r.num("server_cpu_us"));
            }
            "batch" => push(&mut self.batch, r.str("op"), r.num("items_per_s")),
            "procs" => {
                if let (Some(n), Some(rate)) = (r.num("procs"), r.num("ops_per_s")) {
                    self.procs
                        .entry((subject, n as u64))
                        .or_default()
                        .push(rate);
                }
            }
            "error" => self
                .errors
                .push((subject, format!("{}: {}", r.str("what"), r.str("error")))),
            other => self
                .errors
                .push((String::new(), format!("unknown record kind {other:?}"))),
        }
    }
}

fn med(m: &BTreeMap<(String, String), Vec<f64>>, subject: &str, op: &str) -> Option<f64> {
    m.get(&(subject.to_string(), op.to_string()))
        .filter(|xs| !xs.is_empty())
        .map(|xs| median(xs.clone()))
}

fn us(x: Option<f64>) -> String {
    x.map_or("—".into(), |x| format!("{x:.0} µs"))
}

fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "—",
    }
}

/// Runs the section and returns its Markdown and the silo-side runs that failed.
pub fn section(reps: usize, quick: bool, dir: &Path) -> (String, Vec<String>) {
    let mut md = String::new();
    let mut failures = Vec::new();
    let _ = writeln!(
        md,
        "\n## vgi-python's remote client against `silo serve` (`/python`), beside vgi-python's local SQLite\n"
    );
    let pydir = python_dir();
    let python = pydir.join(".venv").join("bin").join("python");
    let script = pydir.join("bench_storage.py");
    let missing = [
        (&python, "python/.venv/bin/python"),
        (&script, "python/bench_storage.py"),
    ]
    .into_iter()
    .find(|(path, _)| !path.exists());
    if let Some((path, name)) = missing {
        eprintln!(
            "python section skipped: {} not found (python/venv.sh makes the venv)",
            path.display()
        );
        let _ = writeln!(
            md,
            "Not measured in this run: `{name}` not found (run `python/venv.sh` to make the \
             Python 3.13 venv with vgi-python)."
        );
        return (md, failures);
    }

    let (n, batches, secs) = if quick {
        (1_000, 10, 1.5)
    } else {
        (3_000, 30, 3.0)
    };
    let store = silo::open(&format!("sqlite://{}/python-silo.db", dir.display()))
        .expect("sqlite store for the python section");
    let server = silo_compat::silo_server(store);
    let url = format!("{}/python", server.url());
    let local = dir.join("python-vgi.db");
    let started = std::time::Instant::now();
    let out = Command::new(&python)
        .arg(&script)
        .args(["--url", &url, "--sqlite"])
        .arg(&local)
        .args(["--reps", &reps.to_string()])
        .args(["--n", &n.to_string()])
        .args(["--batches", &batches.to_string()])
        .args(["--secs", &secs.to_string()])
        .args(["--procs", "1,8"])
        // The server runs in this process, which does nothing else meanwhile.
        .args(["--server-pid", &std::process::id().to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output();
    drop(server);
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            let _ = writeln!(
                md,
                "Not measured in this run: `{}` did not start: {e}.",
                python.display()
            );
            failures.push(format!(
                "python section: the venv's python did not start: {e}"
            ));
            return (md, failures);
        }
    };
    let mut results = Results::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_object(line) {
            Ok(map) => results.take(Record(map)),
            Err(e) => results.errors.push((
                String::new(),
                format!("unreadable output line ({e}): {line}"),
            )),
        }
    }
    if !out.status.success() {
        results.errors.push((
            String::new(),
            format!("bench_storage.py exited with {}", out.status),
        ));
    }
    let took = started.elapsed().as_secs_f64();

    // ---- the header
    let meta = results.meta.as_ref();
    let m = |k: &str| meta.map_or("?".to_string(), |r| r.str(k).to_string());
    let cores = meta
        .and_then(|r| r.num("cores"))
        .map_or("?".into(), |c| format!("{c:.0}"));
    let _ = writeln!(
        md,
        "Driven from Python {} by `python/bench_storage.py` ({took:.0} s): **silo** = vgi-python \
         {}'s own remote client `FunctionStorageCfDo` (httpx2 {}, HTTP/1.1 keep-alive, no token) \
         posting JSON to `silo serve`'s `/python/<endpoint>` — the server running in the bench \
         process on its default store, `sqlite://` (WAL, `sync=normal`) in a temp directory, \
         default limits; **local SQLite** = vgi-python's `FunctionStorageSqlite` on a temp file \
         (WAL, `synchronous=NORMAL`, SQLite {}) inside the Python process itself, no network. \
         100 B values, every result checked (read back, FIFO order, ordinals, counter values); \
         median of {reps} runs, the subjects run in turn, their order reversed every run. This machine has {cores} \
         cores, shared by the clients and the server.\n",
        m("python"),
        m("vgi_python"),
        m("httpx2"),
        m("sqlite"),
    );

    // ---- single operations
    let _ = writeln!(
        md,
        "### Single operations, one client: latency per call ({n} calls a run; target: silo within \
         {SINGLE_TARGET:.0}× of local SQLite)\n"
    );
    let _ = writeln!(
        md,
        "| operation | silo p50 | silo p99 | local SQLite p50 | local SQLite p99 | silo / SQLite (p50) | within {SINGLE_TARGET:.0}× |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|");
    let mut single_met = Vec::new();
    for op in SINGLE_OPS {
        let (s, l) = (med(&results.p50, SILO, op), med(&results.p50, SQLITE, op));
        let ratio = s.zip(l).filter(|(_, l)| *l > 0.0).map(|(s, l)| s / l);
        let ok = ratio.map(|r| r <= SINGLE_TARGET);
        single_met.push(ok);
        let line = format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            op_label(op),
            us(s),
            us(med(&results.p99, SILO, op)),
            us(l),
            us(med(&results.p99, SQLITE, op)),
            ratio.map_or("—".into(), |r| format!("**{r:.1}×**")),
            met(ok)
        );
        eprintln!("python {line}");
        let _ = writeln!(md, "{line}");
    }

    // ---- where a remote call's time goes
    let _ = writeln!(
        md,
        "\n#### Where a call's time goes (silo, the same runs; µs per call, medians)\n"
    );
    let _ = writeln!(
        md,
        "| operation | latency p50 | Python client CPU | server CPU | in silo's handler | lean client p50 | lean client CPU |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for op in SINGLE_OPS {
        let line = format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            op_label(op),
            us(med(&results.p50, SILO, op)),
            us(med(&results.client_cpu, SILO, op)),
            us(med(&results.server_cpu, SILO, op)),
            us(med(&results.handler, SILO, op)),
            us(med(&results.p50, LEAN, op)),
            us(med(&results.client_cpu, LEAN, op)),
        );
        eprintln!("python {line}");
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(
        md,
        "\n*Python client CPU*: the Python process's CPU time over the timed calls, per call \
         (`FunctionStorageCfDo` and httpx2 building, sending and parsing the request). *Server \
         CPU*: every thread of the bench process, which hosts `silo serve` and does nothing else \
         meanwhile (HTTP, JSON, the store, thread hand-offs). *In silo's handler*: the server's \
         own time per request from its `/metrics` (`silo_request_duration_seconds`: the store \
         call, `apply_once` for the writes, which carry an `attempt_id`, and the JSON answer; not \
         HTTP, not reading the request). *Lean client*: the same JSON requests (base64, an \
         `attempt_id` on writes) from a minimal client on Python's `http.client`, one keep-alive \
         connection, to the same server, in the same runs — how much of the latency is \
         vgi-python's client rather than the server or the network hop."
    );

    // ---- batches
    let _ = writeln!(
        md,
        "\n### Batches of 1,000 items (100 B): items/s ({batches} batches a run; target: silo faster \
         than local SQLite)\n"
    );
    let _ = writeln!(
        md,
        "| operation | silo | local SQLite | silo / SQLite | faster |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---|");
    let mut batch_met = Vec::new();
    for op in ["state_put_many", "state_get_many"] {
        let (s, l) = (
            med(&results.batch, SILO, op),
            med(&results.batch, SQLITE, op),
        );
        let ratio = s.zip(l).filter(|(_, l)| *l > 0.0).map(|(s, l)| s / l);
        let ok = ratio.map(|r| r > 1.0);
        batch_met.push(ok);
        let line = format!(
            "| {op} ×1000 | {} | {} | {} | {} |",
            fmt_rate(s),
            fmt_rate(l),
            ratio.map_or("—".into(), |r| format!("**{r:.2}×**")),
            met(ok)
        );
        eprintln!("python {line}");
        let _ = writeln!(md, "{line}");
    }

    // ---- processes
    let _ = writeln!(
        md,
        "\n### 1 vs 8 client processes: aggregate ops/s ({secs} s a run; target: 8 processes ≥ \
         {PROCS_TARGET:.0}× one, on {cores} cores)\n"
    );
    let _ = writeln!(
        md,
        "Each process (forked) opens its own client and works on its own scope: a loop of \
         state_put_many (1 item), state_get_many (1 key), state_counter_add, state_append, \
         queue_push (1 item), queue_pop, each checked; the local SQLite processes share one \
         database file, as a worker pool on one machine does.\n"
    );
    let _ = writeln!(
        md,
        "| store | 1 process | 8 processes | 8 / 1 | ≥ {PROCS_TARGET:.0}× |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---|");
    let mut procs_met = Vec::new();
    for (subject, label) in [(SILO, "silo"), (SQLITE, "local SQLite")] {
        let get = |p: u64| {
            results
                .procs
                .get(&(subject.to_string(), p))
                .filter(|xs| !xs.is_empty())
                .map(|xs| median(xs.clone()))
        };
        let (one, eight) = (get(1), get(8));
        let ratio = one.zip(eight).filter(|(o, _)| *o > 0.0).map(|(o, e)| e / o);
        let ok = ratio.map(|r| r >= PROCS_TARGET);
        if subject == SILO {
            procs_met.push(ok);
        }
        let line = format!(
            "| {label} | {} | {} | {} | {} |",
            fmt_rate(one),
            fmt_rate(eight),
            ratio.map_or("—".into(), |r| format!("**{r:.2}×**")),
            met(ok)
        );
        eprintln!("python {line}");
        let _ = writeln!(md, "{line}");
    }

    // ---- the verdict
    let all = |v: &[Option<bool>]| {
        if v.iter().all(|x| *x == Some(true)) {
            "met"
        } else if v.iter().any(|x| x.is_none()) {
            "not measured"
        } else {
            "**not met**"
        }
    };
    let _ = writeln!(
        md,
        "\nTargets in this run: single operations within {SINGLE_TARGET:.0}× of local SQLite — {} \
         ({} of {}); batches faster than local SQLite — {}; 8 processes ≥ {PROCS_TARGET:.0}× one \
         (silo) — {}.",
        all(&single_met),
        single_met.iter().filter(|x| **x == Some(true)).count(),
        single_met.len(),
        all(&batch_met),
        all(&procs_met),
    );

    if !results.errors.is_empty() {
        let _ = writeln!(md, "\nRuns that failed (not counted above):\n");
        for (subject, e) in &results.errors {
            let who = match subject.as_str() {
                SILO => "silo",
                SQLITE => "local SQLite",
                LEAN => "lean client",
                _ => "bench_storage.py",
            };
            let _ = writeln!(md, "- {who}: {e}");
            eprintln!("python section: {who}: {e}");
            if subject != SQLITE {
                failures.push(format!("python {who}: {e}"));
            }
        }
    }
    (md, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flat_json() {
        let m = parse_object(r#"{"kind": "single", "p50_us": 12.5, "n": 3, "x": null, "e": "a\"b\u00e9\ud83d\ude00", "ok": true}"#)
            .unwrap();
        assert_eq!(m["kind"], Json::Str("single".into()));
        assert_eq!(m["p50_us"], Json::Num(12.5));
        assert_eq!(m["n"], Json::Num(3.0));
        assert_eq!(m["x"], Json::Null);
        assert_eq!(m["e"], Json::Str("a\"bé😀".into()));
        assert_eq!(m["ok"], Json::Bool(true));
        assert!(parse_object("{}").unwrap().is_empty());
        assert!(parse_object("{\"a\": 1").is_err());
        assert!(parse_object("{\"a\": [1]}").is_err());
    }
}
