//! The buffering (sink → combine → finalize) lifecycle of a VGI table function, over one
//! execution's scope, on any store and from any number of processes.
//!
//! Every step writes under keys it derives from its input, so a retried or resumed step
//! writes the same places again and doubles nothing — on every store, with no `apply_once`
//! (which a remote store cannot offer: the unit would be a closure). A batch is the first
//! entry of a log of its own, keyed by where it came from: a retry appends a second entry
//! that nothing reads. Logs, not state values, because the stores append large values
//! fastest (SQLite: a rowid table, where a keyed `WITHOUT ROWID` one rewrites pages).
//!
//! - `process(state_id, seq, batch)`: the `seq`-th input batch of sink `state_id`, in the log
//!   (state_id, seq), then named in the sinks' index. The first batch of the execution records
//!   its schema; every batch must have it.
//! - `combine(state_ids, partitions, how)`: spreads the sinks' batches over N finalize
//!   partitions. Round-robin moves no bytes: each partition gets a plan naming the sink
//!   entries it reads. By a key column's hash, every batch is split by row and each piece
//!   goes to the log (partition, sink entry), then into the partition's index, then the sink
//!   entry is marked combined; a combine that dies half-way is finished by the next call
//!   without doubling a row.
//! - `finalize(partition)`: the partition's batches, streaming (one entry in memory at a
//!   time), from any process.
//! - `drained(partition)`: a finalize read its partition to the end; the last of them destroys
//!   the execution, so a query that ran to completion leaves nothing behind even where the
//!   host calls no destructor.
//! - `destroy()`: drops the execution's scope (what the orphan sweep does to a crashed one).

use std::sync::Arc;

use arrow_array::{RecordBatch, UInt32Array};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_row::{RowConverter, SortField};
use silo::{Error, FunctionStorage, KeyRange, Result};

use crate::{Compression, Decoder, SchemaSlot, batch_messages, write_options};

/// Sink entries: a log per [`sink_key`]; its first entry is the batch's IPC messages.
const SINKS: &[u8] = b"\0silo-arrow/sink";
/// The sink entries stored: state keys = [`sink_key`]s, values empty.
const SINK_INDEX: &[u8] = b"\0silo-arrow/sinks";
/// Hash-combined pieces: a log per partition (u32, big-endian) ++ sink key; first entry.
const PARTS: &[u8] = b"\0silo-arrow/partition";
/// The pieces stored: state keys = the pieces' log keys, values empty.
const PART_INDEX: &[u8] = b"\0silo-arrow/pieces";
/// Sink entries whose pieces are all stored and indexed: state keys = sink keys.
const COMBINED: &[u8] = b"\0silo-arrow/combined";
const PLAN: &[u8] = b"\0silo-arrow/plan";
const DRAINED: &[u8] = b"\0silo-arrow/drained";
/// The plan's key holding the number of partitions (u32, big-endian), written with `done`.
const PARTITIONS: &[u8] = b"partitions";
/// The schema slot of the execution's input (every sink shares it).
const INPUT_SCHEMA_KEY: &[u8] = b"\0buffering-input";

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
    options: IpcWriteOptions,
    schema: SchemaSlot,
}

impl<'a> Buffering<'a> {
    /// The buffering state of execution `execution` (its scope).
    pub fn new(store: &'a dyn FunctionStorage, execution: &[u8]) -> Self {
        Buffering {
            store,
            scope: execution.to_vec(),
            options: IpcWriteOptions::default(),
            schema: SchemaSlot::new(
                execution,
                INPUT_SCHEMA_KEY.to_vec(),
                format!(
                    "the buffered input of execution {}",
                    String::from_utf8_lossy(execution)
                ),
            ),
        }
    }

    /// Compresses what this handle writes (LZ4 or ZSTD; readers need no setting).
    pub fn with_compression(mut self, compression: Compression) -> Result<Self> {
        self.options = write_options(compression)?;
        Ok(self)
    }

    /// Stores the `seq`-th input batch of sink `state_id`. A retry of the same
    /// `(state_id, seq)` is read once.
    pub fn process(&self, state_id: &[u8], seq: u64, batch: &RecordBatch) -> Result<()> {
        // Encoded before the write: the store's writers do not wait for this sink's encoding.
        let bytes = batch_messages(batch, &self.options)?;
        let key = sink_key(state_id, seq);
        self.schema
            .write_with(self.store, batch.schema_ref(), |s| {
                s.append(&self.scope, SINKS, &key, &bytes)
            })?;
        // Indexed after it is stored: the index never names a batch that is not there.
        self.store.state_put(&self.scope, SINK_INDEX, &key, b"")
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
        let mut done = vec![(PARTITIONS.to_vec(), partitions.to_be_bytes().to_vec())];
        match how {
            Partitioning::RoundRobin => {
                // The plan: for each partition, the sink entries it reads.
                let mut plans = vec![Vec::new(); partitions as usize];
                let mut next = 0usize;
                for state_id in state_ids {
                    for entry in self.sink_entries(state_id) {
                        let (key, _) = entry?;
                        let plan: &mut Vec<u8> = &mut plans[next % partitions as usize];
                        plan.extend_from_slice(&(key.len() as u32).to_le_bytes());
                        plan.extend_from_slice(&key);
                        next += 1;
                    }
                }
                done.extend(
                    plans
                        .into_iter()
                        .enumerate()
                        .map(|(p, plan)| ((p as u32).to_be_bytes().to_vec(), plan)),
                );
                done.push((b"done".to_vec(), b"round-robin".to_vec()));
            }
            Partitioning::Hash(column) => {
                let decoder = self.decoder()?;
                for state_id in state_ids {
                    for entry in self.sink_entries(state_id) {
                        let (key, _) = entry?;
                        if self.store.state_get(&self.scope, COMBINED, &key)?.is_some() {
                            continue; // by a combine cut short before
                        }
                        let Some(decoder) = &decoder else {
                            return Err(self.no_schema());
                        };
                        let batch = decoder.decode(self.first_entry(SINKS, &key)?)?;
                        let mut index = Vec::new();
                        for (p, piece) in split_by_hash(&batch, column, partitions)? {
                            let mut piece_key = p.to_be_bytes().to_vec();
                            piece_key.extend_from_slice(&key);
                            let bytes = batch_messages(&piece, &self.options)?;
                            self.store.append(&self.scope, PARTS, &piece_key, &bytes)?;
                            index.push((piece_key, Vec::new()));
                        }
                        self.store.state_put_many(&self.scope, PART_INDEX, &index)?;
                        self.store.state_put(&self.scope, COMBINED, &key, b"")?;
                    }
                }
                done.push((b"done".to_vec(), b"hash".to_vec()));
            }
        }
        self.store.state_put_many(&self.scope, PLAN, &done)
    }

    /// The batches of finalize partition `partition`, in order, one in memory at a time.
    pub fn finalize(&self, partition: u32) -> Result<Finalize<'_, 'a>> {
        let source = match self.store.state_get(&self.scope, PLAN, b"done")?.as_deref() {
            Some(b"round-robin") => Source::Plan {
                plan: self
                    .store
                    .state_get(&self.scope, PLAN, &partition.to_be_bytes())?
                    .unwrap_or_default(),
                at: 0,
            },
            Some(_) => Source::Pieces(self.index(PART_INDEX, &partition.to_be_bytes())),
            None => {
                return Err(Error::invalid(
                    "finalize before combine: combine the sinks first",
                ));
            }
        };
        Ok(Finalize {
            buffering: self,
            decoder: self.decoder()?,
            source,
        })
    }

    /// Records that finalize partition `partition` was read to its end. When every partition
    /// of the combine has been, destroys the execution and returns `true`. Safe to repeat,
    /// from any process, concurrently: of partitions finishing at once at least one sees all
    /// of them done. Once the execution is gone there is nothing left to drop: `true`.
    pub fn drained(&self, partition: u32) -> Result<bool> {
        let Some(partitions) = self.store.state_get(&self.scope, PLAN, PARTITIONS)? else {
            return Ok(true);
        };
        let partitions = <[u8; 4]>::try_from(partitions.as_slice())
            .map(u32::from_be_bytes)
            .map_err(|_| {
                corrupt(format!(
                    "its partition count is {} bytes, not 4",
                    partitions.len()
                ))
            })?;
        if partition >= partitions {
            return Err(Error::invalid(format!(
                "partition {partition} drained, but combine made {partitions}"
            )));
        }
        self.store
            .state_put(&self.scope, DRAINED, &partition.to_be_bytes(), b"")?;
        let done = self.store.state_scan(
            &self.scope,
            DRAINED,
            &KeyRange::all(),
            false,
            u64::from(partitions),
        )?;
        if done.len() < partitions as usize {
            return Ok(false);
        }
        self.destroy()?;
        Ok(true)
    }

    /// Drops everything of the execution; returns how many entries went.
    pub fn destroy(&self) -> Result<u64> {
        self.store.clear(&self.scope)
    }

    /// Decodes the execution's entries; `None` while no batch was stored.
    fn decoder(&self) -> Result<Option<Decoder>> {
        Ok(self
            .schema
            .recorded(self.store)?
            .map(|(_, message)| Decoder {
                schema_message: message,
                what: self.schema.what.clone(),
            }))
    }

    fn no_schema(&self) -> Error {
        corrupt(format!(
            "{} has entries but no recorded schema",
            self.schema.what
        ))
    }

    /// The keys of sink `state_id`'s entries, in sequence order.
    fn sink_entries(&self, state_id: &[u8]) -> KeyScan<'_> {
        let mut prefix = (state_id.len() as u32).to_be_bytes().to_vec();
        prefix.extend_from_slice(state_id);
        self.index(SINK_INDEX, &prefix)
    }

    /// The keys in index `ns` that start with `prefix`, in order, a page at a time.
    fn index(&self, ns: &'static [u8], prefix: &[u8]) -> KeyScan<'_> {
        let range = KeyRange::prefix(prefix);
        KeyScan {
            store: self.store,
            scope: &self.scope,
            ns,
            next: range.start,
            end: range.end,
            page: 1024,
            pending: Vec::new().into_iter(),
            done: false,
        }
    }

    /// The first entry of log `key` in `ns`: the batch stored there (a retry's copy after it
    /// is never read).
    fn first_entry(&self, ns: &[u8], key: &[u8]) -> Result<Vec<u8>> {
        self.store
            .scan(&self.scope, ns, key, 0, 1)?
            .into_iter()
            .next()
            .map(|(_, bytes)| bytes)
            .ok_or_else(|| {
                corrupt("a batch its index names is gone (was the execution destroyed?)".into())
            })
    }
}

/// A sink entry's key: the state id (length-prefixed, so no id is a prefix of another's
/// entries) and the sequence number, big-endian so keys sort in sequence order.
fn sink_key(state_id: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(state_id.len() + 12);
    key.extend_from_slice(&(state_id.len() as u32).to_be_bytes());
    key.extend_from_slice(state_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn corrupt(detail: String) -> Error {
    Error::Corrupt {
        path: "a buffering plan".into(),
        detail,
    }
}

/// The state pairs of one (index) namespace whose keys lie in `[next, end)`, read a page at a
/// time.
struct KeyScan<'s> {
    store: &'s dyn FunctionStorage,
    scope: &'s [u8],
    ns: &'static [u8],
    next: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    page: u64,
    pending: std::vec::IntoIter<silo::KeyValue>,
    done: bool,
}

impl Iterator for KeyScan<'_> {
    type Item = Result<silo::KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((key, value)) = self.pending.next() {
                // The smallest key after this one.
                let mut after = key.clone();
                after.push(0);
                self.next = Some(after);
                return Some(Ok((key, value)));
            }
            if self.done {
                return None;
            }
            let range = KeyRange {
                start: self.next.clone(),
                end: self.end.clone(),
            };
            match self
                .store
                .state_scan(self.scope, self.ns, &range, false, self.page)
            {
                Ok(pairs) => {
                    self.done = (pairs.len() as u64) < self.page;
                    self.pending = pairs.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Where a finalize partition's batches come from.
enum Source<'b> {
    /// Round-robin: the encoded sink keys of the partition, read from `at`.
    Plan { plan: Vec<u8>, at: usize },
    /// By hash: the partition's index of pieces.
    Pieces(KeyScan<'b>),
}

/// The batches of one finalize partition.
pub struct Finalize<'b, 'a> {
    buffering: &'b Buffering<'a>,
    /// `None` when the execution stored no batch: nothing to read.
    decoder: Option<Decoder>,
    source: Source<'b>,
}

impl Finalize<'_, '_> {
    fn next_encoded(&mut self) -> Result<Option<Vec<u8>>> {
        let b = self.buffering;
        match &mut self.source {
            Source::Plan { plan, at } => {
                let Some(rest) = plan.get(*at..).filter(|r| !r.is_empty()) else {
                    return Ok(None);
                };
                let parsed = (|| {
                    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                    Some((rest.get(4..4 + len)?.to_vec(), 4 + len))
                })();
                let Some((key, used)) = parsed else {
                    *at = plan.len();
                    return Err(corrupt("truncated".into()));
                };
                *at += used;
                b.first_entry(SINKS, &key).map(Some)
            }
            Source::Pieces(index) => match index.next() {
                Some(key) => b.first_entry(PARTS, &key?.0).map(Some),
                None => Ok(None),
            },
        }
    }
}

impl Iterator for Finalize<'_, '_> {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.next_encoded();
        if !matches!(next, Ok(Some(_))) {
            // The end, or an error: either ends the iteration.
            self.source = Source::Plan {
                plan: Vec::new(),
                at: 0,
            };
        }
        let bytes = match next {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        match &self.decoder {
            Some(decoder) => Some(decoder.decode(bytes)),
            None => Some(Err(self.buffering.no_schema())),
        }
    }
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
