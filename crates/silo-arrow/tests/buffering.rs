//! The buffering lifecycle on memory, sqlite, fs and http: sinks in several threads (retrying some
//! batches), combine round-robin and by a key column's hash (and again, after a combine cut
//! short), finalize of every partition giving back exactly the rows that went in, destroy.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use common::stores;
use silo::FunctionStorage;
use silo_arrow::{Buffering, Partitioning};

fn batch(sink: i64, seq: i64, rows: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("group", DataType::Utf8, false),
        Field::new("value", DataType::Int64, false),
    ]));
    let groups =
        StringArray::from_iter_values((0..rows).map(|i| format!("g{}", (i * 7 + seq) % 11)));
    let values = Int64Array::from_iter_values((0..rows).map(|i| sink * 1_000_000 + seq * 1000 + i));
    RecordBatch::try_new(schema, vec![Arc::new(groups), Arc::new(values)]).unwrap()
}

/// (group, value) of every row.
fn rows(batches: &[RecordBatch]) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for b in batches {
        let g = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let v = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            out.push((g.value(i).to_owned(), v.value(i)));
        }
    }
    out.sort();
    out
}

/// Three sinks in three threads, each retrying its every third batch.
fn sink_all(
    store: &Arc<dyn FunctionStorage>,
    execution: &[u8],
) -> (Vec<Vec<u8>>, Vec<RecordBatch>) {
    let threads: Vec<_> = (0..3i64)
        .map(|sink| {
            let store = store.clone();
            let execution = execution.to_vec();
            std::thread::spawn(move || {
                let buffering = Buffering::new(&*store, &execution);
                let state_id = format!("sink-{sink}").into_bytes();
                let mut sent = Vec::new();
                for seq in 0..8i64 {
                    let b = batch(sink, seq, 1 + (seq * 13 + sink) % 50);
                    buffering.process(&state_id, seq as u64, &b).unwrap();
                    if seq % 3 == 0 {
                        // A retried call (its reply was lost): read once.
                        buffering.process(&state_id, seq as u64, &b).unwrap();
                    }
                    sent.push(b);
                }
                (state_id, sent)
            })
        })
        .collect();
    let mut ids = Vec::new();
    let mut all = Vec::new();
    for t in threads {
        let (id, sent) = t.join().unwrap();
        ids.push(id);
        all.extend(sent);
    }
    (ids, all)
}

#[test]
fn round_robin_gives_every_batch_to_exactly_one_partition() {
    for (name, store, _dir) in stores() {
        let (ids, sent) = sink_all(&store, b"exec-rr");
        let buffering = Buffering::new(&*store, b"exec-rr");
        assert!(
            buffering.finalize(0).is_err(),
            "{name}: finalize before combine"
        );
        buffering
            .combine(&ids, 4, &Partitioning::RoundRobin)
            .unwrap();
        buffering
            .combine(&ids, 4, &Partitioning::RoundRobin)
            .unwrap();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        for p in 0..4 {
            // Another handle, as another process would.
            let reader = Buffering::new(&*store, b"exec-rr");
            let part: Vec<_> = reader.finalize(p).unwrap().map(|b| b.unwrap()).collect();
            sizes.push(part.len());
            got.extend(part);
        }
        assert_eq!(got.len(), sent.len(), "{name}: every batch once: {sizes:?}");
        assert_eq!(rows(&got), rows(&sent), "{name}");
        assert!(
            sizes.iter().all(|&n| n == 6),
            "{name}: spread evenly: {sizes:?}"
        );
        assert!(buffering.destroy().unwrap() > 0);
        assert!(buffering.finalize(0).is_err(), "{name}: destroyed");
    }
}

#[test]
fn hash_partitioning_puts_each_key_in_one_partition_even_after_a_repeated_combine() {
    for (name, store, _dir) in stores() {
        let (ids, sent) = sink_all(&store, b"exec-h");
        let buffering = Buffering::new(&*store, b"exec-h");
        let how = Partitioning::Hash("group".into());
        // A combine cut short after the first sink, then run whole: nothing doubles.
        buffering.combine(&ids[..1], 3, &how).unwrap_or(());
        store
            .state_del(b"exec-h", b"\0silo-arrow/plan", b"done")
            .unwrap();
        buffering.combine(&ids, 3, &how).unwrap();
        buffering.combine(&ids, 3, &how).unwrap();
        let mut home: BTreeMap<String, u32> = BTreeMap::new();
        let mut got = Vec::new();
        for p in 0..3 {
            let part: Vec<_> = buffering.finalize(p).unwrap().map(|b| b.unwrap()).collect();
            for (group, _) in rows(&part) {
                let was = home.insert(group.clone(), p);
                assert!(
                    was.is_none_or(|w| w == p),
                    "{name}: {group} in {was:?} and {p}"
                );
            }
            got.extend(part);
        }
        assert_eq!(rows(&got), rows(&sent), "{name}: every row exactly once");
        assert!(
            home.values()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 1
        );
        let err = buffering
            .combine(&ids, 3, &Partitioning::Hash("nope".into()))
            .err();
        assert!(err.is_none(), "{name}: a finished combine is not redone");
        buffering.destroy().unwrap();
    }
}

#[test]
fn an_unknown_key_column_is_named() {
    let store = silo::open("memory:").unwrap();
    let buffering = Buffering::new(&*store, b"e");
    buffering.process(b"s", 0, &batch(0, 0, 5)).unwrap();
    let err = buffering
        .combine(&[b"s".to_vec()], 2, &Partitioning::Hash("nope".into()))
        .unwrap_err();
    assert!(
        err.to_string().contains("nope") && err.to_string().contains("group"),
        "{err}"
    );
}

#[test]
fn the_last_drained_partition_destroys_the_execution_and_repeats_are_harmless() {
    for (name, store, _dir) in stores() {
        let (ids, sent) = sink_all(&store, b"exec-d");
        let other = Buffering::new(&*store, b"exec-other");
        other.process(b"s", 0, &sent[0]).unwrap();
        let buffering = Buffering::new(&*store, b"exec-d");
        buffering
            .combine(&ids, 3, &Partitioning::Hash("group".into()))
            .unwrap();
        for p in 0..2 {
            assert!(buffering.finalize(p).unwrap().all(|b| b.is_ok()));
            assert!(!buffering.drained(p).unwrap(), "{name}: {p} of 3 drained");
            // A finalize retried after its drained call: still not the last.
            assert!(!buffering.drained(p).unwrap(), "{name}: {p} again");
        }
        assert!(
            buffering.drained(7).is_err(),
            "{name}: a partition combine did not make"
        );
        let last: Vec<_> = buffering.finalize(2).unwrap().collect();
        assert!(last.iter().all(|b| b.is_ok()));
        assert!(buffering.drained(2).unwrap(), "{name}: the last one");
        assert_eq!(
            store.clear(b"exec-d").unwrap(),
            0,
            "{name}: nothing of the execution is left"
        );
        assert!(buffering.drained(2).unwrap(), "{name}: repeated after");
        assert_eq!(store.clear(b"exec-d").unwrap(), 0, "{name}: still nothing");
        assert!(
            store.clear(b"exec-other").unwrap() > 0,
            "{name}: another execution is untouched"
        );
    }
}
