//! The buffering (sink → combine → finalize) lifecycle of a VGI table function, over one
//! execution's scope, on any store and from any number of processes.
//!
//! - `process(state_id, seq, batch)`: a sink appends its input batches to its own log (the
//!   state id names it). A retry of the same `(state_id, seq)` appends nothing: the append
//!   runs under `apply_once`.
//! - `combine(state_ids, partitions, how)`: spreads the sinks' batches over N finalize
//!   partitions. Round-robin moves no bytes: each partition gets a plan naming the sink
//!   entries it reads. By a key column's hash, every batch is split by row and the pieces
//!   appended to the partitions' logs, one sink entry per `apply_once`, so a combine that dies
//!   half-way is finished by the next call without doubling a row.
//! - `finalize(partition)`: the partition's batches, streaming (one entry in memory at a
//!   time), from any process.
//! - `destroy()`: drops the execution's scope (what the orphan sweep does to a crashed one).

use std::sync::Arc;

use arrow_array::{RecordBatch, UInt32Array};
use arrow_row::{RowConverter, SortField};
use silo::{Error, FunctionStorage, Result};

use crate::{BatchLog, Compression};

const SINKS: &[u8] = b"\0silo-arrow/sink";
const PARTS: &[u8] = b"\0silo-arrow/partition";
const PLAN: &[u8] = b"\0silo-arrow/plan";

/// How `combine` spreads rows over the finalize partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partitioning {
    /// Whole batches, in turn: no bytes move.
    RoundRobin,
    /// Rows by the hash of this column's value: equal values meet in one partition.
    Hash(String),
}

/// One execution's buffering state on a store.
pub struct Buffering<'a> {
    store: &'a dyn FunctionStorage,
    scope: Vec<u8>,
    compression: Compression,
}

impl<'a> Buffering<'a> {
    /// The buffering state of execution `execution` (its scope).
    pub fn new(store: &'a dyn FunctionStorage, execution: &[u8]) -> Self {
        Buffering {
            store,
            scope: execution.to_vec(),
            compression: Compression::None,
        }
    }

    /// Compresses what this handle writes.
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    fn sink(&self, state_id: &[u8]) -> Result<BatchLog<'a>> {
        BatchLog::new(self.store, &self.scope, SINKS, state_id).with_compression(self.compression)
    }

    fn partition(&self, partition: u32) -> Result<BatchLog<'a>> {
        BatchLog::new(self.store, &self.scope, PARTS, &partition.to_be_bytes())
            .with_compression(self.compression)
    }

    /// The `seq`-th input batch of sink `state_id`; a retry appends nothing.
    pub fn process(&self, state_id: &[u8], seq: u64, batch: &RecordBatch) -> Result<()> {
        let sink = self.sink(state_id)?;
        // Encoded before the unit: the store's writers do not wait for this sink's encoding.
        let bytes = sink.encode(batch)?;
        let key = once_key(&self.scope, b"process", state_id, seq);
        self.store
            .apply_once(&key, &[], &mut |s| {
                BatchLog::new(s, &self.scope, SINKS, state_id)
                    .in_unit()
                    .append_encoded(batch.schema_ref(), &bytes)?;
                Ok(Vec::new())
            })
            .map(|_| ())
            .or_else(|e| match e {
                // A store without apply_once (a remote one of the vgi crate): at least once.
                Error::Unsupported { .. } => {
                    sink.append_encoded(batch.schema_ref(), &bytes).map(|_| ())
                }
                e => Err(e),
            })
    }

    /// Spreads the batches of the sinks `state_ids` over `partitions` finalize partitions.
    /// Safe to call again after a failure, from any process; a second call after success
    /// changes nothing.
    pub fn combine(
        &self,
        state_ids: &[Vec<u8>],
        partitions: u32,
        how: &Partitioning,
    ) -> Result<()> {
        if partitions == 0 {
            return Err(Error::invalid("combine needs at least one partition"));
        }
        if self.store.state_get(&self.scope, PLAN, b"done")?.is_some() {
            return Ok(());
        }
        match how {
            Partitioning::RoundRobin => {
                // The plan: for each partition, the (sink, entry id) pairs it reads.
                let mut plans = vec![Vec::new(); partitions as usize];
                let mut next = 0usize;
                for state_id in state_ids {
                    // Only the entry ids are needed, but a scan reads the bytes too: a few
                    // entries at a time, so the sinks are never in memory whole.
                    let mut after = 0;
                    loop {
                        let entries = self.store.scan(&self.scope, SINKS, state_id, after, 4)?;
                        let Some(last) = entries.last().map(|(id, _)| *id) else {
                            break;
                        };
                        for (id, _) in entries {
                            let plan: &mut Vec<u8> = &mut plans[next % partitions as usize];
                            plan.extend_from_slice(&(state_id.len() as u32).to_le_bytes());
                            plan.extend_from_slice(state_id);
                            plan.extend_from_slice(&id.to_le_bytes());
                            next += 1;
                        }
                        after = last;
                    }
                }
                let mut items: Vec<silo::KeyValue> = plans
                    .into_iter()
                    .enumerate()
                    .map(|(p, plan)| ((p as u32).to_be_bytes().to_vec(), plan))
                    .collect();
                items.push((b"done".to_vec(), b"round-robin".to_vec()));
                self.store.state_put_many(&self.scope, PLAN, &items)
            }
            Partitioning::Hash(column) => {
                for state_id in state_ids {
                    let sink = self.sink(state_id)?;
                    for entry in sink.scan(0, 1)? {
                        let (id, batch) = entry?;
                        let pieces = split_by_hash(&batch, column, partitions)?;
                        let key = once_key(&self.scope, b"combine", state_id, id as u64);
                        self.store.apply_once(&key, &[], &mut |s| {
                            for (p, piece) in &pieces {
                                BatchLog::new(s, &self.scope, PARTS, &p.to_be_bytes())
                                    .in_unit()
                                    .with_compression(self.compression)?
                                    .append(piece)?;
                            }
                            Ok(Vec::new())
                        })?;
                    }
                }
                self.store.state_put(&self.scope, PLAN, b"done", b"hash")
            }
        }
    }

    /// The batches of finalize partition `partition`, in order, one in memory at a time.
    pub fn finalize(&self, partition: u32) -> Result<Finalize<'_, 'a>> {
        let plan = match self.store.state_get(&self.scope, PLAN, b"done")?.as_deref() {
            Some(b"round-robin") => Some(
                self.store
                    .state_get(&self.scope, PLAN, &partition.to_be_bytes())?
                    .unwrap_or_default(),
            ),
            Some(_) => None,
            None => {
                return Err(Error::invalid(
                    "finalize before combine: combine the sinks first",
                ));
            }
        };
        Ok(Finalize {
            buffering: self,
            plan,
            at: 0,
            partition: self.partition(partition)?,
            after: 0,
        })
    }

    /// Drops everything of the execution; returns how many entries went.
    pub fn destroy(&self) -> Result<u64> {
        self.store.clear(&self.scope)
    }
}

/// The batches of one finalize partition.
pub struct Finalize<'b, 'a> {
    buffering: &'b Buffering<'a>,
    /// Round-robin: the encoded (sink, entry) references; `None`: the partition's own log.
    plan: Option<Vec<u8>>,
    at: usize,
    partition: BatchLog<'a>,
    after: i64,
}

impl Iterator for Finalize<'_, '_> {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let Some(plan) = &self.plan else {
            let next = self
                .partition
                .scan(self.after, 1)
                .and_then(|mut scan| scan.next().transpose());
            return match next {
                Ok(Some((id, batch))) => {
                    self.after = id;
                    Some(Ok(batch))
                }
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            };
        };
        let rest = plan.get(self.at..)?;
        if rest.is_empty() {
            return None;
        }
        let corrupt = || Error::Corrupt {
            path: "a buffering plan".into(),
            detail: "truncated".into(),
        };
        let parsed = (|| {
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let state_id = rest.get(4..4 + len)?.to_vec();
            let id = i64::from_le_bytes(rest.get(4 + len..12 + len)?.try_into().ok()?);
            Some((state_id, id, 12 + len))
        })();
        let Some((state_id, id, used)) = parsed else {
            self.at = plan.len();
            return Some(Err(corrupt()));
        };
        self.at += used;
        let entry = self
            .buffering
            .sink(&state_id)
            .and_then(|sink| sink.scan(id - 1, 1)?.next().transpose());
        match entry {
            Ok(Some((got, batch))) if got == id => Some(Ok(batch)),
            Ok(_) => Some(Err(Error::Corrupt {
                path: "a buffering plan".into(),
                detail: format!("sink entry {id} is gone (was the execution destroyed?)"),
            })),
            Err(e) => Some(Err(e)),
        }
    }
}

fn once_key(scope: &[u8], what: &[u8], state_id: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(scope.len() + state_id.len() + 32);
    key.extend_from_slice(b"silo-arrow/");
    key.extend_from_slice(what);
    key.extend_from_slice(&(scope.len() as u32).to_le_bytes());
    key.extend_from_slice(scope);
    key.extend_from_slice(&(state_id.len() as u32).to_le_bytes());
    key.extend_from_slice(state_id);
    key.extend_from_slice(&seq.to_le_bytes());
    key
}

/// `batch` split by the hash of `column`'s values into non-empty pieces per partition.
fn split_by_hash(
    batch: &RecordBatch,
    column: &str,
    partitions: u32,
) -> Result<Vec<(u32, RecordBatch)>> {
    let index = batch.schema().index_of(column).map_err(|_| {
        Error::invalid(format!(
            "no column {column:?} to partition by (the batches have {:?})",
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
        ))
    })?;
    let values = batch.column(index);
    let converter = RowConverter::new(vec![SortField::new(values.data_type().clone())])
        .map_err(crate::arrow_error("hashing a key column"))?;
    let rows = converter
        .convert_columns(&[Arc::clone(values)])
        .map_err(crate::arrow_error("hashing a key column"))?;
    let mut picks: Vec<Vec<u32>> = vec![Vec::new(); partitions as usize];
    for (i, row) in rows.iter().enumerate() {
        // FNV-1a over the row encoding: stable across builds and processes.
        let hash = row.as_ref().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        picks[(hash % u64::from(partitions)) as usize].push(i as u32);
    }
    let mut pieces = Vec::new();
    for (p, rows) in picks.into_iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let piece = arrow_select::take::take_record_batch(batch, &UInt32Array::from(rows))
            .map_err(crate::arrow_error("splitting a batch"))?;
        pieces.push((p as u32, piece));
    }
    Ok(pieces)
}
