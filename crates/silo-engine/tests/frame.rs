//! The frame log's recovery: whole frames survive reopening, a torn tail is cut at every
//! possible byte, a crash at any write or sync keeps a prefix holding every synced frame, and
//! damage before the tail is refused with its offset, never skipped.

use silo_engine::{FaultPlan, FaultyStore, FrameLog, LogError, MemStore, Store};

fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 300) as usize;
    (0..len).map(|j| (i as usize * 7 + j) as u8).collect()
}

/// A log of `n` frames in a fresh image; the image.
fn written(n: u64) -> MemStore {
    let mem = MemStore::new();
    let (mut log, _) = FrameLog::open(mem.clone(), 1).unwrap();
    for i in 0..n {
        let frame = log.append(&payload(i)).unwrap();
        assert_eq!(frame.number, i + 1);
    }
    log.sync().unwrap();
    mem
}

fn image_of(bytes: &[u8]) -> MemStore {
    let mem = MemStore::new();
    mem.append(bytes).unwrap();
    mem.sync().unwrap();
    mem
}

#[test]
fn whole_frames_survive_reopening() {
    let mem = written(30);
    let (log, recovery) = FrameLog::open(mem.clone(), 1).unwrap();
    assert_eq!(recovery.cut_bytes, 0);
    assert_eq!(recovery.frames.len(), 30);
    for (i, frame) in recovery.frames.iter().enumerate() {
        assert_eq!(frame.number, i as u64 + 1);
        assert_eq!(log.read(frame).unwrap(), payload(i as u64));
    }
    assert_eq!(log.next_number(), 31);
}

/// Cut the image at every byte of its last frame: the earlier frames stay, the partial one is
/// cut off, and the next append takes its number.
#[test]
fn a_torn_tail_is_cut_at_every_byte() {
    let full = written(5).bytes();
    let (_, four) = FrameLog::open(image_of(&full), 1).unwrap();
    let last = four.frames[4];
    let end_of_four = last.offset;
    for cut in end_of_four + 1..full.len() as u64 {
        let mem = image_of(&full[..cut as usize]);
        let (mut log, recovery) = FrameLog::open(mem.clone(), 1).unwrap();
        assert_eq!(recovery.frames.len(), 4, "cut at {cut}");
        assert_eq!(recovery.cut_bytes, cut - end_of_four);
        assert_eq!(mem.len().unwrap(), end_of_four, "the torn bytes are gone");
        assert_eq!(log.append(b"next").unwrap().number, 5);
        let (_, again) = FrameLog::open(mem, 1).unwrap();
        assert_eq!(again.frames.len(), 5);
    }
}

/// The workload crashes at its k-th write or sync, for every k; after the power loss the log
/// holds a prefix of the workload that includes every frame synced before the crash.
#[test]
fn a_crash_at_every_write_or_sync_keeps_a_synced_prefix() {
    const FRAMES: u64 = 24;
    let mut k = 0;
    loop {
        let mem = MemStore::new();
        let faulty = FaultyStore::new(mem.clone(), k, FaultPlan::Crash);
        let mut synced = 0;
        if let Ok((mut log, _)) = FrameLog::open(&faulty, 1) {
            for i in 0..FRAMES {
                if log.append(&payload(i)).is_err() {
                    break;
                }
                if i % 3 == 2 {
                    if log.sync().is_err() {
                        break;
                    }
                    synced = i + 1;
                }
            }
        }
        let finished = !faulty.fired();
        mem.power_loss();
        let (_, recovery) = FrameLog::open(mem.clone(), 1).unwrap();
        let kept = recovery.frames.len() as u64;
        assert!(
            kept >= synced,
            "crash at op {k}: {kept} frames kept, {synced} were synced"
        );
        let log = FrameLog::open(mem, 1).unwrap().0;
        for (i, frame) in recovery.frames.iter().enumerate() {
            assert_eq!(
                log.read(frame).unwrap(),
                payload(i as u64),
                "crash at op {k}"
            );
        }
        if finished {
            assert!(k > FRAMES, "every operation was a crash point");
            break;
        }
        k += 1;
    }
}

/// A write cut short at every point of the workload leaves a torn tail that reopening cuts.
#[test]
fn a_short_write_anywhere_is_cut_on_reopen() {
    for k in 0..12u64 {
        for short in [0usize, 1, 19, 20, 21] {
            let mem = MemStore::new();
            let faulty = FaultyStore::new(mem.clone(), k, FaultPlan::ShortWrite(short));
            let (mut log, _) = FrameLog::open(&faulty, 1).unwrap();
            let mut appended = 0;
            for i in 0..12 {
                if log.append(&payload(i + 5)).is_err() {
                    break;
                }
                appended += 1;
            }
            let (_, recovery) = FrameLog::open(mem, 1).unwrap();
            assert_eq!(
                recovery.frames.len(),
                appended,
                "short write {short} at op {k}"
            );
        }
    }
}

/// A flipped byte anywhere in any frame but the last is refused as corruption at that frame.
#[test]
fn damage_before_the_tail_is_corruption_with_its_offset() {
    let full = written(6).bytes();
    let (_, whole) = FrameLog::open(image_of(&full), 1).unwrap();
    let last = whole.frames[5];
    for at in 0..last.offset as usize {
        let mem = image_of(&full);
        mem.corrupt(at, 0x40);
        let frame = whole
            .frames
            .iter()
            .find(|f| (f.offset..f.end()).contains(&(at as u64)))
            .unwrap();
        match FrameLog::open(mem, 1) {
            Err(LogError::Corrupt { offset, .. }) => {
                assert_eq!(offset, frame.offset, "byte {at} flipped")
            }
            Ok((_, r)) => panic!("byte {at} flipped: opened with {} frames", r.frames.len()),
            Err(e) => panic!("byte {at} flipped: {e}"),
        }
    }
}

#[test]
fn frame_numbers_must_follow_each_other() {
    let mem = MemStore::new();
    let (mut log, _) = FrameLog::open(mem.clone(), 10).unwrap();
    log.append(b"a").unwrap();
    log.append(b"b").unwrap();
    log.sync().unwrap();
    assert_eq!(FrameLog::open(mem.clone(), 10).unwrap().1.frames.len(), 2);
    match FrameLog::open(mem, 1) {
        Err(LogError::Corrupt { offset: 0, detail }) => assert!(detail.contains("10"), "{detail}"),
        other => panic!("a log starting at 10 opened as one starting at 1: {other:?}"),
    }
}

/// Two handles on one image (two processes on one file): each catches up on the other's
/// frames and continues the numbering; a handle that did not catch up may not append.
#[test]
fn handles_catch_up_on_each_others_frames() {
    let mem = MemStore::new();
    let (mut a, _) = FrameLog::open(mem.clone(), 1).unwrap();
    let (mut b, _) = FrameLog::open(mem.clone(), 1).unwrap();
    for i in 0..3 {
        a.append(&payload(i)).unwrap();
    }
    assert!(b.append(b"stale").is_err(), "b has not caught up");
    let seen = b.catch_up(false).unwrap();
    assert_eq!(
        seen.frames.iter().map(|f| f.number).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(b.read(&seen.frames[2]).unwrap(), payload(2));
    assert_eq!(b.append(b"from b").unwrap().number, 4);
    let seen = a.catch_up(false).unwrap();
    assert_eq!(seen.frames.len(), 1);
    assert_eq!(a.read(&seen.frames[0]).unwrap(), b"from b");
    assert_eq!(a.append(b"from a").unwrap().number, 5);
}

/// A torn tail (a writer died mid-append) is invisible to a reader's catch-up and cut by the
/// next writer's.
#[test]
fn a_reader_skips_a_torn_tail_and_a_writer_cuts_it() {
    let mem = written(2);
    let (mut reader, _) = FrameLog::open(mem.clone(), 1).unwrap();
    let whole = mem.len().unwrap();
    mem.append(&silo_engine::frame::encode(3, b"half written").unwrap()[..9])
        .unwrap();
    assert!(reader.catch_up(false).unwrap().frames.is_empty());
    assert_eq!(mem.len().unwrap(), whole + 9, "a reader cuts nothing");
    let cut = reader.catch_up(true).unwrap();
    assert_eq!(cut.cut_bytes, 9);
    assert_eq!(mem.len().unwrap(), whole);
    assert_eq!(reader.append(b"third").unwrap().number, 3);
}

/// Four writers, each with its own open of one file (flock contends between opens as between
/// processes), take the exclusive lock, catch up and append: every frame numbered once, in
/// order, every writer's frames all there and in its order.
#[test]
fn concurrent_writers_on_one_file_number_every_frame_once() {
    use silo_engine::{FileStore, LockMode};
    const EACH: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    std::thread::scope(|t| {
        for w in 0..4u64 {
            let path = path.clone();
            t.spawn(move || {
                let store = FileStore::open(&path).unwrap();
                let mut log = {
                    let _lock = store.lock(LockMode::Exclusive).unwrap();
                    FrameLog::open(&store, 1).unwrap().0
                };
                for i in 0..EACH {
                    let _lock = store.lock(LockMode::Exclusive).unwrap();
                    log.catch_up(true).unwrap();
                    log.append(&[w.to_le_bytes(), i.to_le_bytes()].concat())
                        .unwrap();
                }
            });
        }
    });
    let store = FileStore::open(&path).unwrap();
    let (log, recovery) = FrameLog::open(&store, 1).unwrap();
    assert_eq!(recovery.frames.len() as u64, 4 * EACH);
    let mut next = [0u64; 4];
    for (n, frame) in recovery.frames.iter().enumerate() {
        assert_eq!(frame.number, n as u64 + 1);
        let bytes = log.read(frame).unwrap();
        let w = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let i = u64::from_le_bytes(bytes[8..].try_into().unwrap());
        assert_eq!(i, next[w], "writer {w}'s frames in its order");
        next[w] += 1;
    }
    assert_eq!(next, [EACH; 4]);
}

#[test]
fn a_long_backlog_is_read_in_bounded_steps_with_every_payload() {
    // ~3.5 MiB of frames (some larger than one step's budget) and a torn tail.
    let mem = MemStore::new();
    let (mut writer, _) = FrameLog::open(mem.clone(), 1).unwrap();
    let big = |i: u64| vec![i as u8; if i % 50 == 7 { 1_300_000 } else { 700 }];
    let n = 1_000;
    for i in 0..n {
        writer.append(&big(i)).unwrap();
    }
    let whole = mem.len().unwrap();
    mem.append(&[0x53, 0x4c, 0x46]).unwrap(); // the start of a frame that never finished
    let mut reader = FrameLog::attach(mem.clone(), 1);
    let (mut seen, mut steps) = (0u64, 0);
    loop {
        let found = reader.catch_up_some(true).unwrap();
        steps += 1;
        for frame in &found.frames {
            assert_eq!(frame.number, seen + 1);
            assert_eq!(
                found.payload(frame),
                &big(seen)[..],
                "frame {}",
                frame.number
            );
            seen += 1;
        }
        if !found.more {
            assert_eq!(
                found.cut_bytes, 3,
                "the torn tail is judged only at the end"
            );
            break;
        }
        assert_eq!(found.cut_bytes + found.torn_bytes, 0);
        assert!(
            found.frames.len() < n as usize,
            "a step read everything at once"
        );
    }
    assert_eq!(seen, n);
    assert!(steps > 3, "{steps} steps");
    assert_eq!(reader.end(), whole);
    assert_eq!(mem.len().unwrap(), whole);
}
