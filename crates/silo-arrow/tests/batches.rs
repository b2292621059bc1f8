//! Arrow batches through logs, queues and state on the memory, sqlite, fs and http stores: every
//! batch back equal and in order (nulls, strings, dictionaries, lists; compressed or not), the
//! schema recorded once, another schema refused, racing first appenders agreeing on one.

mod common;

use std::sync::Arc;
use std::time::Duration;

use arrow_array::builder::{Int32Builder, ListBuilder, StringDictionaryBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use common::stores;
use silo::Error;
use silo_arrow::{BatchLog, BatchQueue, Compression, SCHEMA_NS, get_batch, put_batch};

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new(
            "tag",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            true,
        ),
        Field::new(
            "xs",
            DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
            true,
        ),
        Field::new("score", DataType::Float64, true),
    ]))
}

/// A batch of `rows` rows, different for every `seed`.
fn batch(seed: i64, rows: usize) -> RecordBatch {
    let ids = Int64Array::from_iter_values((0..rows as i64).map(|i| seed * 1_000_000 + i));
    let names = StringArray::from_iter(
        (0..rows).map(|i| (i % 7 != 3).then(|| format!("name-{seed}-{i}-{}", "x".repeat(i % 13)))),
    );
    let mut tags = StringDictionaryBuilder::<Int32Type>::new();
    let mut xs = ListBuilder::new(Int32Builder::new());
    for i in 0..rows {
        if i % 5 == 4 {
            tags.append_null();
            xs.append_null();
        } else {
            tags.append_value(format!("tag{}", (i as i64 + seed) % 4));
            for j in 0..(i % 4) {
                xs.values().append_value((seed as i32) * 10 + j as i32);
            }
            xs.append(true);
        }
    }
    let scores = Float64Array::from_iter((0..rows).map(|i| (i % 3 != 0).then_some(i as f64 / 7.0)));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids),
        Arc::new(names),
        Arc::new(tags.finish()),
        Arc::new(xs.finish()),
        Arc::new(scores),
    ];
    RecordBatch::try_new(schema(), columns).unwrap()
}

fn other_batch() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap()
}

#[test]
fn a_log_gives_back_every_batch_in_order_with_the_schema_recorded_once() {
    for (name, store, _dir) in stores() {
        let plain = BatchLog::new(&*store, b"q1", b"sink", b"part-0");
        let lz4 = BatchLog::new(&*store, b"q1", b"sink", b"part-0")
            .with_compression(Compression::Lz4)
            .unwrap();
        let zstd = BatchLog::new(&*store, b"q1", b"sink", b"part-0")
            .with_compression(Compression::Zstd)
            .unwrap();
        assert!(plain.schema().unwrap().is_none());
        let mut written = Vec::new();
        for seed in 0..9i64 {
            let b = batch(seed, 1 + (seed as usize * 37) % 200);
            let writer = [&plain, &lz4, &zstd][seed as usize % 3];
            let id = writer.append(&b).unwrap();
            written.push((id, b));
        }
        assert_eq!(
            plain.schema().unwrap().as_deref(),
            Some(schema().as_ref()),
            "{name}"
        );
        for page in [1, 2, 4, 100] {
            let read: Vec<_> = plain
                .scan(0, page)
                .unwrap()
                .collect::<silo::Result<_>>()
                .unwrap();
            assert_eq!(read, written, "{name}: page {page}");
        }
        // From the middle on.
        let after = written[4].0;
        let rest: Vec<_> = plain.scan(after, 2).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(rest, written[5..].to_vec(), "{name}");
        // One schema record for the log (the first entry of its schema log, key = u32 LE
        // length of ns, ns, key); entries are batches only.
        let slot = [&4u32.to_le_bytes()[..], b"sink", b"part-0"].concat();
        let schemas = store.scan(b"q1", SCHEMA_NS, &slot, 0, u64::MAX).unwrap();
        assert_eq!(schemas.len(), 1, "{name}");
        let entries = store.scan(b"q1", b"sink", b"part-0", 0, u64::MAX).unwrap();
        assert_eq!(entries.len(), written.len(), "{name}");
        let schema_len = schemas[0].1.len();
        let lone = {
            let mut out = Vec::new();
            let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, &schema()).unwrap();
            w.write(&written[0].1).unwrap();
            w.finish().unwrap();
            out.len()
        };
        assert!(
            entries[0].1.len() + schema_len <= lone,
            "{name}: an entry carries no schema ({} + {schema_len} vs a stream of {lone})",
            entries[0].1.len()
        );
        // A scope clear takes the schema with it.
        store.clear(b"q1").unwrap();
        assert!(plain.scan(0, 10).unwrap().next().is_none());
        let fresh = BatchLog::new(&*store, b"q1", b"sink", b"part-0");
        fresh.append(&other_batch()).unwrap();
    }
}

#[test]
fn a_batch_of_another_schema_is_refused_and_changes_nothing() {
    for (name, store, _dir) in stores() {
        let log = BatchLog::new(&*store, b"s", b"ns", b"k");
        log.append(&batch(1, 10)).unwrap();
        let err = log.append(&other_batch()).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{name}: {err}");
        assert!(
            err.to_string().contains("\"x\""),
            "{name}: names both schemas: {err}"
        );
        // A handle that has not seen the schema yet is refused the same way.
        let err = BatchLog::new(&*store, b"s", b"ns", b"k")
            .append(&other_batch())
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{name}: {err}");
        assert_eq!(log.scan(0, 10).unwrap().count(), 1, "{name}");
        // Another log of the scope has its own schema.
        BatchLog::new(&*store, b"s", b"ns", b"k2")
            .append(&other_batch())
            .unwrap();
        // Bytes that are not Arrow are reported as damage, not a panic.
        store.append(b"s", b"ns", b"k", b"not arrow").unwrap();
        let last = log.scan(0, 10).unwrap().last().unwrap();
        assert!(
            matches!(last, Err(Error::Corrupt { .. })),
            "{name}: {last:?}"
        );
    }
}

#[test]
fn racing_first_appenders_agree_on_one_schema() {
    for (name, store, _dir) in stores() {
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let log = BatchLog::new(&*store, b"race", b"ns", b"k");
                    let b = if t % 2 == 0 {
                        batch(t, 5)
                    } else {
                        other_batch()
                    };
                    log.append(&b).map(|_| t % 2)
                })
            })
            .collect();
        let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<i64> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok().copied())
            .collect();
        assert_eq!(
            winners.len(),
            3,
            "{name}: one schema's appenders all won: {outcomes:?}"
        );
        assert!(
            winners.iter().all(|w| *w == winners[0]),
            "{name}: {outcomes:?}"
        );
        let log = BatchLog::new(&*store, b"race", b"ns", b"k");
        assert_eq!(
            log.scan(0, 10)
                .unwrap()
                .collect::<silo::Result<Vec<_>>>()
                .unwrap()
                .len(),
            3,
            "{name}"
        );
    }
}

#[test]
fn a_queue_pops_and_claims_batches_in_order() {
    for (name, store, _dir) in stores() {
        let queue = BatchQueue::new(&*store, b"work")
            .with_compression(Compression::Zstd)
            .unwrap();
        assert!(queue.pop().unwrap().is_none());
        let batches: Vec<_> = (0..4).map(|s| batch(s, 20)).collect();
        queue.push(&batches).unwrap();
        assert_eq!(queue.pop().unwrap().as_ref(), Some(&batches[0]), "{name}");
        let claimed = queue.claim(Duration::from_secs(30)).unwrap().unwrap();
        assert_eq!(claimed.batch, batches[1], "{name}");
        assert_eq!(claimed.attempt, 1);
        assert!(queue.ack(claimed.id).unwrap());
        let reader = BatchQueue::new(&*store, b"work");
        assert_eq!(reader.pop().unwrap().as_ref(), Some(&batches[2]), "{name}");
        let err = queue.push(&[other_batch()]).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{name}: {err}");
        let err = queue.push(&[batch(9, 2), other_batch()]).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{name}: {err}");
        assert_eq!(reader.pop().unwrap().as_ref(), Some(&batches[3]), "{name}");
        assert!(reader.pop().unwrap().is_none());
    }
}

#[test]
fn state_holds_a_batch() {
    for (name, store, _dir) in stores() {
        assert!(get_batch(&*store, b"s", b"ns", b"k").unwrap().is_none());
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let b = batch(3, 300);
            put_batch(&*store, b"s", b"ns", b"k", &b, compression).unwrap();
            assert_eq!(
                get_batch(&*store, b"s", b"ns", b"k").unwrap(),
                Some(b),
                "{name}"
            );
        }
        store.state_put(b"s", b"ns", b"bad", b"junk").unwrap();
        let err = get_batch(&*store, b"s", b"ns", b"bad").unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{name}: {err}");
    }
}
