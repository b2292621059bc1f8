//! Cross-process conformance: scenarios with real OS processes sharing one store (by URL),
//! some of them killed with SIGKILL mid-stream. The workers are the test binary itself,
//! started again in a worker role: a test file defines the entry with
//! [`worker_entry!`](crate::worker_entry) and calls the scenarios with its store's URL.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming a worker's role.
pub const ROLE: &str = "SILO_TEST_ROLE";
/// The environment variable naming the store a worker opens.
pub const URL: &str = "SILO_TEST_URL";
const ROLES: [&str; 5] = ["push", "pop", "append", "write-forever", "lease"];

/// Defines the `worker` test function that [`spawn`] starts: ignored in normal runs; in a
/// worker process it runs the role named by the environment (the kit's, or else `$custom`'s,
/// a `fn(role: &str, url: &str) -> bool`).
#[macro_export]
macro_rules! worker_entry {
    () => {
        $crate::worker_entry!(|_: &str, _: &str| false);
    };
    ($custom:expr) => {
        #[test]
        #[ignore = "worker process entry point, started by the multi-process tests"]
        fn worker() {
            let (Ok(role), Ok(url)) = (
                std::env::var($crate::conformance::processes::ROLE),
                std::env::var($crate::conformance::processes::URL),
            ) else {
                return;
            };
            let custom: fn(&str, &str) -> bool = $custom;
            assert!(
                $crate::conformance::processes::run_worker(&role, &url) || custom(&role, &url),
                "unknown worker role {role}"
            );
        }
    };
}

/// Runs the worker role `role` against the store at `url`, writing its report lines to
/// stdout. Returns false for a role this kit does not know (a test may add its own).
pub fn run_worker(role: &str, url: &str) -> bool {
    if !ROLES.contains(&role) {
        return false;
    }
    let arg = |name: &str| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let store = crate::open(url).expect("worker opens the store");
    let mut out = std::io::stdout().lock();
    match role {
        "push" => {
            let (me, n) = (arg("PUSHER"), arg("ITEMS"));
            let mut seq = 0;
            while seq < n {
                let batch = (1 + (seq * 7919) % 37).min(n - seq);
                let items: Vec<Vec<u8>> = (seq..seq + batch).map(|s| item(me, s)).collect();
                store.queue_push(b"mp-queue", &items).unwrap();
                seq += batch;
            }
            for _ in 0..arg("STOPS") {
                store.queue_push(b"mp-queue", &[b"STOP".to_vec()]).unwrap();
            }
        }
        "pop" => loop {
            let Some(value) = store.queue_pop(b"mp-queue").unwrap() else {
                std::thread::yield_now();
                continue;
            };
            if value == b"STOP" {
                break;
            }
            let (pusher, seq) = parse_item(&value);
            writeln!(out, "{pusher} {seq}").unwrap();
        },
        "append" => {
            let (me, n) = (arg("PUSHER"), arg("ITEMS"));
            for seq in 0..n {
                let id = store
                    .append(b"mp-log", b"ns", b"log", &item(me, seq))
                    .unwrap();
                writeln!(out, "{id} {me} {seq}").unwrap();
            }
        }
        "write-forever" => {
            for seq in 0u64.. {
                store
                    .kv_put(b"mp-crash", &seq.to_be_bytes(), &item(0, seq))
                    .unwrap();
                store
                    .append(b"mp-crash", b"", b"log", &item(0, seq))
                    .unwrap();
                // Printed only after both writes returned Ok: the parent treats it as acknowledged.
                writeln!(out, "{seq}").unwrap();
                out.flush().unwrap();
            }
        }
        "lease" => loop {
            match store
                .queue_claim(b"mp-lease", Duration::from_millis(1500))
                .unwrap()
            {
                Some(claim) => {
                    let (_, seq) = parse_item(&claim.value);
                    writeln!(out, "claimed {seq}").unwrap();
                    out.flush().unwrap();
                    std::thread::sleep(Duration::from_millis(arg("WORK_MS")));
                    if store.queue_ack(b"mp-lease", claim.id).unwrap() {
                        writeln!(out, "acked {seq}").unwrap();
                        out.flush().unwrap();
                    }
                }
                None if store.queue_len(b"mp-lease").unwrap() == 0 => break,
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        },
        _ => return false,
    }
    true
}

/// A self-checking value: who wrote it, its sequence number, and a body derived from both,
/// so a torn or mixed-up value is detected.
pub fn item(pusher: u64, seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + 200);
    v.extend_from_slice(&pusher.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    let len = 50 + (seq % 150) as usize;
    v.extend((0..len).map(|i| (pusher as usize * 31 + seq as usize * 7 + i) as u8));
    v
}

pub fn parse_item(v: &[u8]) -> (u64, u64) {
    assert!(v.len() >= 16, "torn value of {} bytes", v.len());
    let pusher = u64::from_le_bytes(v[..8].try_into().unwrap());
    let seq = u64::from_le_bytes(v[8..16].try_into().unwrap());
    assert_eq!(
        v,
        item(pusher, seq).as_slice(),
        "value of {pusher}/{seq} is intact"
    );
    (pusher, seq)
}

// ---------------------------------------------------------------- the parent side

/// Starts this test binary again as a worker in `role` (see [`worker_entry!`](crate::worker_entry)).
pub fn spawn(url: &str, role: &str, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "worker",
        "--exact",
        "--ignored",
        "--nocapture",
        "--quiet",
        "--test-threads=1",
    ])
    .env(ROLE, role)
    .env(URL, url)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn worker")
}

/// How long a worker may run before the test fails: a worker waiting for a STOP item that
/// was lost must fail the test, not hang it. `SILO_TEST_WORKER_DEADLINE_SECS` overrides it
/// (slow machines, debuggers).
pub fn worker_deadline() -> Duration {
    let secs = std::env::var("SILO_TEST_WORKER_DEADLINE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(180);
    Duration::from_secs(secs)
}

/// Waits for a worker and returns its output lines (libtest's own lines filtered out);
/// fails the test when it runs past [`worker_deadline`].
pub fn finish(child: Child) -> Vec<String> {
    finish_within(child, worker_deadline())
}

/// [`finish`] with an explicit deadline: the worker is killed and the test fails when it has
/// not exited by then.
pub fn finish_within(mut child: Child, deadline: Duration) -> Vec<String> {
    let mut stdout = child.stdout.take().expect("the worker's stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).map(|_| text)
    });
    let give_up = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the worker") {
            break status;
        }
        if Instant::now() >= give_up {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "a worker did not finish within {deadline:?} (a lost STOP item, or a hang); \
                 killed it"
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "worker failed: {status:?}");
    let text = reader
        .join()
        .expect("the output reader")
        .expect("the worker's output is UTF-8");
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with("running") && !l.starts_with("test result"))
        .filter(|l| !l.starts_with("test ") && !l.starts_with('.'))
        .map(str::to_string)
        .collect()
}

fn parse_pairs(lines: &[String]) -> Vec<(u64, u64)> {
    lines
        .iter()
        .map(|l| {
            let mut it = l.split_whitespace().map(|x| x.parse::<u64>().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        })
        .collect()
}

/// 4 processes pop one queue while a fifth pushes 20,000 items: every item exactly once, in
/// FIFO order per popper, none torn.
pub fn four_poppers_one_pusher(url: &str) {
    const ITEMS: u64 = 20_000;
    let poppers: Vec<Child> = (0..4).map(|_| spawn(url, "pop", &[])).collect();
    let pusher = spawn(
        url,
        "push",
        &[
            ("PUSHER", "7".into()),
            ("ITEMS", ITEMS.to_string()),
            ("STOPS", "4".into()),
        ],
    );
    assert!(finish(pusher).is_empty());
    let mut all = Vec::new();
    for p in poppers {
        let got = parse_pairs(&finish(p));
        assert!(
            got.windows(2).all(|w| w[0].1 < w[1].1),
            "a popper sees FIFO order"
        );
        all.extend(got);
    }
    assert!(all.iter().all(|&(pusher, _)| pusher == 7));
    let mut seqs: Vec<u64> = all.into_iter().map(|(_, s)| s).collect();
    seqs.sort_unstable();
    assert_eq!(seqs.len() as u64, ITEMS, "no item lost or duplicated");
    assert_eq!(seqs, (0..ITEMS).collect::<Vec<_>>());
}

/// 4 processes push at once: nothing lost, each pusher's order kept.
pub fn four_pushers(url: &str) {
    const ITEMS: u64 = 3_000;
    let pushers: Vec<Child> = (0..4)
        .map(|p| {
            spawn(
                url,
                "push",
                &[("PUSHER", p.to_string()), ("ITEMS", ITEMS.to_string())],
            )
        })
        .collect();
    for p in pushers {
        finish(p);
    }
    let store = crate::open(url).unwrap();
    assert_eq!(store.queue_len(b"mp-queue").unwrap(), 4 * ITEMS);
    let mut next: HashMap<u64, u64> = HashMap::new();
    while let Some(v) = store.queue_pop(b"mp-queue").unwrap() {
        let (pusher, seq) = parse_item(&v);
        let expected = next.entry(pusher).or_insert(0);
        assert_eq!(
            seq, *expected,
            "pusher {pusher}'s items arrive in its order"
        );
        *expected += 1;
    }
    assert_eq!(next, (0..4).map(|p| (p, ITEMS)).collect());
}

/// 4 processes append to one log: ids unique and strictly increasing per appender, and a scan
/// returns every entry with the id its appender was given.
pub fn four_appenders(url: &str) {
    const ITEMS: u64 = 2_000;
    let appenders: Vec<Child> = (0..4)
        .map(|p| {
            spawn(
                url,
                "append",
                &[("PUSHER", p.to_string()), ("ITEMS", ITEMS.to_string())],
            )
        })
        .collect();
    let mut given: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for a in appenders {
        let mut last = 0i64;
        for line in finish(a) {
            let f: Vec<u64> = line
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
            let id = f[0] as i64;
            assert!(id > last, "ids increase for each appender");
            last = id;
            assert!(
                given.insert(id, (f[1], f[2])).is_none(),
                "id {id} given twice"
            );
        }
    }
    let store = crate::open(url).unwrap();
    let log = store.scan(b"mp-log", b"ns", b"log", -1, u64::MAX).unwrap();
    assert_eq!(log.len() as u64, 4 * ITEMS);
    assert!(
        log.windows(2).all(|w| w[0].0 < w[1].0),
        "scan is in id order"
    );
    for (id, value) in log {
        assert_eq!(
            Some(&parse_item(&value)),
            given.get(&id),
            "entry {id} is what was appended"
        );
    }
}

/// A writer killed with SIGKILL mid-stream: the store opens and every acknowledged write is
/// there.
pub fn killed_writer_loses_nothing_acknowledged(url: &str) {
    let mut child = spawn(url, "write-forever", &[]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = None;
    for line in lines.by_ref() {
        let seq: u64 = match line.unwrap().trim().parse() {
            Ok(seq) => seq,
            Err(_) => continue,
        };
        acked = Some(seq);
        if seq >= 1500 {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Lines already in the pipe were acknowledged too.
    for line in lines.map_while(Result::ok) {
        if let Ok(seq) = line.trim().parse::<u64>() {
            acked = Some(seq);
        }
    }
    let acked = acked.expect("the writer acknowledged something");
    let store = crate::open(url).expect("store opens after the writer's SIGKILL");
    for seq in 0..=acked {
        let got = store.kv_get(b"mp-crash", &seq.to_be_bytes()).unwrap();
        assert_eq!(got, Some(item(0, seq)), "acknowledged put {seq} survives");
    }
    let log = store.scan(b"mp-crash", b"", b"log", -1, u64::MAX).unwrap();
    assert!(
        log.len() as u64 > acked,
        "every acknowledged append survives"
    );
    for (i, (_, value)) in log.iter().enumerate() {
        assert_eq!(parse_item(value), (0, i as u64));
    }
    store.kv_put(b"mp-crash", b"after", b"usable").unwrap();
}

/// 4 processes claim with leases; one is SIGKILLed mid-task. Its item is redelivered after
/// the lease and every item is acked exactly once.
pub fn leased_consumers_survive_a_kill(url: &str) {
    const ITEMS: u64 = 60;
    let store = crate::open(url).unwrap();
    let items: Vec<Vec<u8>> = (0..ITEMS).map(|s| item(1, s)).collect();
    store.queue_push(b"mp-lease", &items).unwrap();
    let slow = [("WORK_MS", "20".to_string())];
    let mut victim = spawn(url, "lease", &[("WORK_MS", "60000".to_string())]);
    let mut victim_lines = BufReader::new(victim.stdout.take().unwrap()).lines();
    let killed_seq = loop {
        let line = victim_lines
            .next()
            .expect("victim claims something")
            .unwrap();
        if let Some(seq) = line.strip_prefix("claimed ") {
            break seq.parse::<u64>().unwrap();
        }
    };
    let others: Vec<Child> = (0..3).map(|_| spawn(url, "lease", &slow)).collect();
    victim.kill().unwrap();
    victim.wait().unwrap();
    let started = Instant::now();
    let mut acked: HashMap<u64, u32> = HashMap::new();
    let mut claims = 0;
    for o in others {
        for line in finish(o) {
            if let Some(seq) = line.strip_prefix("acked ") {
                *acked.entry(seq.parse().unwrap()).or_default() += 1;
            } else if line.starts_with("claimed ") {
                claims += 1;
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "consumers finished"
    );
    assert!(
        acked.contains_key(&killed_seq),
        "the killed consumer's item was redelivered"
    );
    assert!(claims >= ITEMS as usize, "{claims} claims");
    let keys: HashSet<u64> = acked.keys().copied().collect();
    assert_eq!(keys, (0..ITEMS).collect(), "every item acked");
    assert!(
        acked.values().all(|&n| n == 1),
        "no item acked twice: {acked:?}"
    );
    assert_eq!(store.queue_len(b"mp-lease").unwrap(), 0);
}
