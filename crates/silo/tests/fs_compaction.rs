//! Compaction copies every live value into the new base, whatever its size and wherever it
//! lies: values read through one window of the old files, values crossing a window's end,
//! values larger than a window, values at a file's very end. Checked after several
//! compactions and after reopening from the base.

#![cfg(feature = "fs")]

/// The base writer's read window (engine.rs `READ_WINDOW`).
const WINDOW: usize = 1 << 20;

fn value(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 31 + seed * 7 + i / 251) as u8)
        .collect()
}

fn bases(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("base-")
        })
        .count()
}

#[test]
fn compaction_copies_values_of_every_size_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let url = format!(
        "fs://{}?segment_bytes=65536&compact_min_bytes=65536&max_value_bytes=8388608",
        path.display()
    );
    let sizes = [
        0,
        1,
        100,
        WINDOW - 1,
        WINDOW,
        WINDOW + 1,
        3 * WINDOW + 17,
        4096,
    ];
    let mut state = Vec::new();
    let mut log = Vec::new();
    let mut queue = Vec::new();
    let mut compactions = 0;
    {
        let store = silo::open(&url).unwrap();
        for round in 0..6 {
            for (i, &len) in sizes.iter().enumerate() {
                let key = format!("k{round}-{i}").into_bytes();
                let v = value(round * 100 + i, len);
                store.state_put(b"s", b"n", &key, &v).unwrap();
                state.push((key, v));
                // Small values between the large ones, so windows start mid-frame.
                for j in 0..20 {
                    let small = value(round * 10_000 + i * 100 + j, 37 + j);
                    store.append(b"s", b"", b"log", &small).unwrap();
                    log.push(small);
                }
                let item = value(round * 1000 + i, len / 3);
                store.queue_push(b"s", std::slice::from_ref(&item)).unwrap();
                queue.push(item);
            }
            // Overwrites leave dead bytes for the next compaction to skip.
            let (key, v) = &mut state[round];
            let half = v.len() / 2;
            v.truncate(half);
            store.state_put(b"s", b"n", key, v).unwrap();
            if bases(&path) > 0 {
                compactions += 1;
            }
        }
    }
    assert!(compactions > 0, "the workload must compact at least once");
    let store = silo::open(&url).unwrap();
    for (key, v) in &state {
        let got = store.state_get(b"s", b"n", key).unwrap();
        assert!(
            got.as_deref() == Some(v.as_slice()),
            "{}: {} bytes stored, {:?} read back",
            String::from_utf8_lossy(key),
            v.len(),
            got.map(|g| g.len())
        );
    }
    let scanned: Vec<Vec<u8>> = store
        .scan(b"s", b"", b"log", i64::MIN, u64::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert!(scanned == log, "the log came back changed");
    for (i, item) in queue.iter().enumerate() {
        let got = store.queue_pop(b"s").unwrap();
        assert!(got.as_ref() == Some(item), "queue item {i} changed");
    }
}
