//! A sink process killed with SIGKILL in the middle of its batches: the store opens, the
//! batches it stored read back whole, and the orphan sweep (the TTL of untouched scopes)
//! removes the dead execution while a live one stays.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Int64Array, RecordBatch};
use silo_arrow::{Buffering, Partitioning};

const CHILD_DIR: &str = "SILO_ARROW_CRASH_CHILD_DIR";

fn batch(seq: i64) -> RecordBatch {
    // About 256 KiB: the kill lands mid-write often enough.
    let values = Int64Array::from_iter_values((0..32 * 1024).map(|i| seq * 1_000_000 + i));
    RecordBatch::try_from_iter([("v", Arc::new(values) as _)]).unwrap()
}

/// The child: sinks batches into `$SILO_ARROW_CRASH_CHILD_DIR` until killed, saying each.
#[test]
fn crash_child_sinks_until_killed() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let store = silo::open(&format!("fs://{dir}")).unwrap();
    let buffering = Buffering::new(&*store, b"crashed");
    for seq in 0.. {
        buffering.process(b"sink", seq as u64, &batch(seq)).unwrap();
        println!("sank {seq}");
    }
}

#[test]
fn a_killed_sinks_execution_is_swept_by_the_orphan_ttl_and_a_live_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_sinks_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut sunk = 0;
    while sunk < 12 {
        let line = lines.next().expect("the child stopped").unwrap();
        if let Some(n) = line.strip_prefix("sank ") {
            sunk = n.parse::<i64>().unwrap() + 1;
        }
    }
    // SIGKILL: no destructor, no cleanup, maybe a torn last write.
    child.kill().unwrap();
    child.wait().unwrap();

    let store = silo::open(&format!("fs://{}", path.display())).unwrap();
    let crashed = Buffering::new(&*store, b"crashed");
    crashed
        .combine(&[b"sink".to_vec()], 1, &Partitioning::RoundRobin)
        .unwrap();
    let back: Vec<RecordBatch> = crashed.finalize(0).unwrap().map(|b| b.unwrap()).collect();
    assert!(
        back.len() >= 12,
        "every batch it said it stored is there: {}",
        back.len()
    );
    for (seq, b) in back.iter().enumerate() {
        assert_eq!(b, &batch(seq as i64), "batch {seq} whole");
    }

    let ttl = Duration::from_millis(600);
    std::thread::sleep(ttl + Duration::from_millis(300));
    let live = Buffering::new(&*store, b"live");
    live.process(b"sink", 0, &batch(7)).unwrap();
    assert!(store.gc(ttl).unwrap() >= 1, "the dead execution swept");
    assert_eq!(store.clear(b"crashed").unwrap(), 0, "nothing of it is left");
    live.combine(&[b"sink".to_vec()], 1, &Partitioning::RoundRobin)
        .unwrap();
    let kept: Vec<RecordBatch> = live.finalize(0).unwrap().map(|b| b.unwrap()).collect();
    assert_eq!(kept, vec![batch(7)], "the live execution stays");
}
