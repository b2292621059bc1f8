//! Arrow `RecordBatch`es on any silo store (SPEC roadmap 6): what VGI workers actually keep.
//!
//! - [`BatchLog`]: batches appended to one log from any number of processes and read back in
//!   order, streaming — a scan holds one page of entries at a time, never the whole log. The
//!   log's schema is recorded once, before its first batch; every entry is only the
//!   batch's IPC messages (its dictionaries, then the record batch), optionally LZ4- or
//!   ZSTD-compressed. A batch of another schema is refused with both schemas in the error.
//! - [`BatchQueue`]: batches pushed to a scope's queue, popped or claimed (leased) by any
//!   process; the queue's schema is recorded the same way.
//! - [`put_batch`] / [`get_batch`]: one batch as a state value (a whole IPC stream: a state
//!   value stands alone).
//!
//! The schema is the first entry of a log of the scope in the namespace [`SCHEMA_NS`] (racing
//! first writers agree on whichever landed first, on every store), so clearing the
//! scope (or the orphan sweep) removes it with the data.
//!
//! [`Buffering`] is the sink → combine → finalize lifecycle of a buffering table function, in
//! the same encoding, every step safe to retry on every store:
//!
//! ```
//! # fn main() -> silo::Result<()> {
//! use std::sync::Arc;
//! use arrow_array::{Int64Array, RecordBatch};
//! use silo_arrow::{Buffering, Partitioning};
//!
//! let store = silo::open("memory:")?; // any store: sqlite, fs, http, postgres
//! let batch = RecordBatch::try_from_iter([(
//!     "x",
//!     Arc::new(Int64Array::from(vec![3, 1, 2])) as _,
//! )])
//! .expect("a batch");
//!
//! // In any worker process: each sink appends its input (a retried call is read once).
//! let buffering = Buffering::new(&*store, b"execution-42");
//! buffering.process(b"sink-a", 0, &batch)?;
//! buffering.process(b"sink-b", 0, &batch)?;
//! // Once: spread the sinks' batches over the finalize partitions.
//! buffering.combine(&[b"sink-a".to_vec(), b"sink-b".to_vec()], 2, &Partitioning::Hash("x".into()))?;
//! // In any process: each partition's batches, streaming.
//! let rows: usize = (0..2)
//!     .map(|p| buffering.finalize(p)?.map(|b| Ok(b?.num_rows())).sum::<silo::Result<usize>>())
//!     .sum::<silo::Result<usize>>()?;
//! assert_eq!(rows, 6);
//! buffering.destroy()?;
//! # Ok(())
//! # }
//! ```

mod buffering;

/// The README's examples (silo's and this crate's), compiled and run as doctests here: this
/// crate depends on both.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

pub use buffering::{Buffering, Finalize, Partitioning};

use std::io::Cursor;
use std::sync::OnceLock;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::CompressionType;
use arrow_ipc::reader::{StreamDecoder, StreamReader};
use arrow_ipc::writer::{
    DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions, StreamWriter,
    write_message,
};
use arrow_schema::{ArrowError, Schema, SchemaRef};
use silo::{Error, FunctionStorage, Result};

/// The log namespace holding the schemas of a scope's batch logs, queue and buffering input.
pub const SCHEMA_NS: &[u8] = b"\0silo-arrow/schema";

/// How batch bodies are compressed (the IPC format's own buffer compression: readers need no
/// setting, a log may mix them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

fn write_options(compression: Compression) -> Result<IpcWriteOptions> {
    let codec = match compression {
        Compression::None => None,
        Compression::Lz4 => Some(CompressionType::LZ4_FRAME),
        Compression::Zstd => Some(CompressionType::ZSTD),
    };
    IpcWriteOptions::default()
        .try_with_compression(codec)
        .map_err(arrow_error("choosing the compression"))
}

pub(crate) fn arrow_error(doing: &'static str) -> impl Fn(ArrowError) -> Error {
    move |e| Error::Backend {
        backend: "arrow".into(),
        message: format!("{doing}: {e}"),
    }
}

/// A stored batch that does not decode: the bytes are not what silo-arrow wrote.
fn undecodable(what: &str, e: ArrowError) -> Error {
    Error::Corrupt {
        path: what.to_owned(),
        detail: format!("not Arrow IPC that silo-arrow wrote: {e}"),
    }
}

/// The schema as one IPC schema message (with its stream framing).
fn schema_message(schema: &Schema) -> Result<Vec<u8>> {
    let options = IpcWriteOptions::default();
    let encoded = IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
        schema,
        &mut DictionaryTracker::new(false),
        &options,
    );
    let mut out = Vec::new();
    write_message(&mut out, encoded, &options).map_err(arrow_error("encoding a schema"))?;
    Ok(out)
}

/// A schema back from its message.
fn decode_schema(bytes: &[u8], what: &str) -> Result<SchemaRef> {
    arrow_ipc::convert::try_schema_from_ipc_buffer(bytes)
        .map(SchemaRef::new)
        .map_err(|e| undecodable(what, e))
}

/// A batch as the IPC messages that follow a schema: its dictionaries, then itself.
fn batch_messages(batch: &RecordBatch, options: &IpcWriteOptions) -> Result<Vec<u8>> {
    let generator = IpcDataGenerator::default();
    // Dictionary ids are handed out as the schema is encoded; the reader's schema message
    // hands them out the same way.
    let mut dictionaries = DictionaryTracker::new(false);
    generator.schema_to_bytes_with_dictionary_tracker(
        batch.schema_ref(),
        &mut dictionaries,
        options,
    );
    let (dictionaries, encoded) = generator
        .encode(
            batch,
            &mut dictionaries,
            options,
            &mut IpcWriteContext::default(),
        )
        .map_err(arrow_error("encoding a batch"))?;
    let mut out = Vec::with_capacity(encoded.arrow_data.len() + 1024);
    for dictionary in dictionaries {
        write_message(&mut out, dictionary, options).map_err(arrow_error("encoding a batch"))?;
    }
    write_message(&mut out, encoded, options).map_err(arrow_error("encoding a batch"))?;
    Ok(out)
}

/// Decodes entries written against `schema`.
struct Decoder {
    schema_message: Vec<u8>,
    what: String,
}

impl Decoder {
    fn decode(&self, entry: Vec<u8>) -> Result<RecordBatch> {
        // Dictionaries are sent again in every entry, so each decodes on its own.
        let mut decoder = StreamDecoder::new();
        let mut schema = Buffer::from(self.schema_message.clone());
        decoder
            .decode(&mut schema)
            .map_err(|e| undecodable(&self.what, e))?;
        let mut buffer = Buffer::from(entry);
        while !buffer.is_empty() {
            if let Some(batch) = decoder
                .decode(&mut buffer)
                .map_err(|e| undecodable(&self.what, e))?
            {
                return Ok(batch);
            }
        }
        Err(Error::Corrupt {
            path: self.what.clone(),
            detail: "an entry that ends before its record batch".into(),
        })
    }
}

/// The state key of a log's schema: the log's namespace and key, unambiguously joined.
fn schema_key(ns: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + ns.len() + key.len());
    out.extend_from_slice(&(ns.len() as u32).to_le_bytes());
    out.extend_from_slice(ns);
    out.extend_from_slice(key);
    out
}

/// Where a schema is recorded, and what was recorded there.
///
/// The record is the first entry of a log (`SCHEMA_NS`, `key`) of the scope: a writer that
/// finds none appends its own schema and reads the first entry again. Racing first writers
/// agree on whichever landed first, on every store (no atomic unit needed, so a remote store
/// works the same) and after any crash; a loser's entry is never read, and the record never
/// changes while the scope lives.
struct SchemaSlot {
    scope: Vec<u8>,
    key: Vec<u8>,
    what: String,
    known: OnceLock<(SchemaRef, Vec<u8>)>,
}

impl SchemaSlot {
    fn new(scope: &[u8], key: Vec<u8>, what: String) -> Self {
        SchemaSlot {
            scope: scope.to_vec(),
            key,
            what,
            known: OnceLock::new(),
        }
    }

    fn recorded(&self, store: &dyn FunctionStorage) -> Result<Option<(SchemaRef, Vec<u8>)>> {
        if let Some(known) = self.known.get() {
            return Ok(Some(known.clone()));
        }
        let first = store.scan(&self.scope, SCHEMA_NS, &self.key, 0, 1)?;
        let Some((_, bytes)) = first.into_iter().next() else {
            return Ok(None);
        };
        let schema = decode_schema(&bytes, &self.what)?;
        Ok(Some(self.known.get_or_init(|| (schema, bytes)).clone()))
    }

    /// Checks `schema` against the recorded one; `None` when none is recorded yet.
    fn check(&self, store: &dyn FunctionStorage, schema: &Schema) -> Result<Option<()>> {
        match self.recorded(store)? {
            None => Ok(None),
            Some((recorded, _)) if recorded.as_ref() == schema => Ok(Some(())),
            Some((recorded, _)) => Err(Error::invalid(format!(
                "{} holds batches of schema {recorded:?}; this batch has schema {schema:?} \
                 (a log or queue holds one schema: write the others elsewhere)",
                self.what
            ))),
        }
    }

    /// Runs `write` once `schema` is the recorded one, recording it first when nothing is.
    fn write_with<T>(
        &self,
        store: &dyn FunctionStorage,
        schema: &Schema,
        write: impl FnOnce(&dyn FunctionStorage) -> Result<T>,
    ) -> Result<T> {
        if self.check(store, schema)?.is_none() {
            store.append(&self.scope, SCHEMA_NS, &self.key, &schema_message(schema)?)?;
            if self.check(store, schema)?.is_none() {
                return Err(Error::Unavailable {
                    message: format!(
                        "the schema of {} vanished while written (was the scope cleared?)",
                        self.what
                    ),
                });
            }
        }
        write(store)
    }
}

/// Batches on one log (`scope`, `ns`, `key`), shared by every process of the store.
pub struct BatchLog<'a> {
    store: &'a dyn FunctionStorage,
    ns: Vec<u8>,
    key: Vec<u8>,
    slot: SchemaSlot,
    options: IpcWriteOptions,
}

impl<'a> BatchLog<'a> {
    /// The log `key` in namespace `ns` of `scope`.
    pub fn new(store: &'a dyn FunctionStorage, scope: &[u8], ns: &[u8], key: &[u8]) -> Self {
        BatchLog {
            store,
            ns: ns.to_vec(),
            key: key.to_vec(),
            slot: SchemaSlot::new(
                scope,
                schema_key(ns, key),
                format!(
                    "batch log {}/{}/{}",
                    String::from_utf8_lossy(scope),
                    String::from_utf8_lossy(ns),
                    String::from_utf8_lossy(key)
                ),
            ),
            options: IpcWriteOptions::default(),
        }
    }

    /// Compresses the batches this handle appends.
    pub fn with_compression(mut self, compression: Compression) -> Result<Self> {
        self.options = write_options(compression)?;
        Ok(self)
    }

    /// The log's schema (`None` before its first batch).
    pub fn schema(&self) -> Result<Option<SchemaRef>> {
        Ok(self.slot.recorded(self.store)?.map(|(s, _)| s))
    }

    /// Appends `batch`; returns its entry id. The first batch records the log's schema; a
    /// batch of another schema is refused.
    pub fn append(&self, batch: &RecordBatch) -> Result<i64> {
        let bytes = self.encode(batch)?;
        self.append_encoded(batch.schema_ref(), &bytes)
    }

    /// A batch as this handle appends it (encoded before any lock is taken).
    pub(crate) fn encode(&self, batch: &RecordBatch) -> Result<Vec<u8>> {
        batch_messages(batch, &self.options)
    }

    /// Appends a batch [`BatchLog::encode`] made, of schema `schema`.
    fn append_encoded(&self, schema: &Schema, bytes: &[u8]) -> Result<i64> {
        self.slot.write_with(self.store, schema, |s| {
            s.append(&self.slot.scope, &self.ns, &self.key, bytes)
        })
    }

    /// The batches with entry ids after `after` (0 = from the start), in order, read a page
    /// of `page` entries at a time.
    pub fn scan(&self, after: i64, page: u64) -> Result<BatchScan<'_, 'a>> {
        let decoder = self.slot.recorded(self.store)?.map(|(_, message)| Decoder {
            schema_message: message,
            what: self.slot.what.clone(),
        });
        Ok(BatchScan {
            log: self,
            decoder,
            after,
            page: page.max(1),
            pending: Vec::new().into_iter(),
            done: false,
        })
    }
}

/// A scan of a [`BatchLog`]: `(entry id, batch)` in order, one page in memory at a time.
pub struct BatchScan<'l, 'a> {
    log: &'l BatchLog<'a>,
    decoder: Option<Decoder>,
    after: i64,
    page: u64,
    pending: std::vec::IntoIter<(i64, Vec<u8>)>,
    done: bool,
}

impl Iterator for BatchScan<'_, '_> {
    type Item = Result<(i64, RecordBatch)>;

    fn next(&mut self) -> Option<Self::Item> {
        let decoder = self.decoder.as_ref()?;
        loop {
            if let Some((id, entry)) = self.pending.next() {
                self.after = id;
                return Some(decoder.decode(entry).map(|batch| (id, batch)));
            }
            if self.done {
                return None;
            }
            let log = self.log;
            match log
                .store
                .scan(&log.slot.scope, &log.ns, &log.key, self.after, self.page)
            {
                Ok(entries) => {
                    self.done = (entries.len() as u64) < self.page;
                    self.pending = entries.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Batches on the queue of `scope`.
pub struct BatchQueue<'a> {
    store: &'a dyn FunctionStorage,
    slot: SchemaSlot,
    options: IpcWriteOptions,
}

/// A batch claimed from a [`BatchQueue`]: ack it by `id` when done.
#[derive(Debug)]
pub struct ClaimedBatch {
    pub id: i64,
    pub attempt: u32,
    pub batch: RecordBatch,
}

impl<'a> BatchQueue<'a> {
    /// The queue of `scope`.
    pub fn new(store: &'a dyn FunctionStorage, scope: &[u8]) -> Self {
        BatchQueue {
            store,
            slot: SchemaSlot::new(
                scope,
                b"\0queue".to_vec(),
                format!("batch queue {}", String::from_utf8_lossy(scope)),
            ),
            options: IpcWriteOptions::default(),
        }
    }

    /// Compresses the batches this handle pushes.
    pub fn with_compression(mut self, compression: Compression) -> Result<Self> {
        self.options = write_options(compression)?;
        Ok(self)
    }

    /// Pushes `batches` in order, atomically; all must have one schema, the queue's.
    pub fn push(&self, batches: &[RecordBatch]) -> Result<()> {
        let Some(first) = batches.first() else {
            return Ok(());
        };
        let schema = first.schema();
        let mut items = Vec::with_capacity(batches.len());
        for batch in batches {
            if batch.schema_ref().as_ref() != schema.as_ref() {
                return Err(Error::invalid(format!(
                    "one push holds one schema: {:?} and {:?}",
                    schema,
                    batch.schema()
                )));
            }
            items.push(batch_messages(batch, &self.options)?);
        }
        self.slot.write_with(self.store, &schema, |s| {
            s.queue_push(&self.slot.scope, &items)
        })
    }

    fn decoder(&self) -> Result<Option<Decoder>> {
        Ok(self.slot.recorded(self.store)?.map(|(_, message)| Decoder {
            schema_message: message,
            what: self.slot.what.clone(),
        }))
    }

    /// Takes the oldest batch (`None` when the queue is empty).
    pub fn pop(&self) -> Result<Option<RecordBatch>> {
        let Some(decoder) = self.decoder()? else {
            return Ok(None);
        };
        match self.store.queue_pop(&self.slot.scope)? {
            Some(entry) => decoder.decode(entry).map(Some),
            None => Ok(None),
        }
    }

    /// Takes the oldest visible batch with a lease of `lease`; ack it with
    /// [`BatchQueue::ack`] or it is delivered again when the lease ends.
    pub fn claim(&self, lease: Duration) -> Result<Option<ClaimedBatch>> {
        let Some(decoder) = self.decoder()? else {
            return Ok(None);
        };
        match self.store.queue_claim(&self.slot.scope, lease)? {
            Some(claim) => Ok(Some(ClaimedBatch {
                id: claim.id,
                attempt: claim.attempt,
                batch: decoder.decode(claim.value)?,
            })),
            None => Ok(None),
        }
    }

    /// Acknowledges a claimed batch; false when the lease was lost.
    pub fn ack(&self, claim_id: i64) -> Result<bool> {
        self.store.queue_ack(&self.slot.scope, claim_id)
    }
}

/// Stores `batch` as the state value (`scope`, `ns`, `key`): a whole IPC stream.
pub fn put_batch(
    store: &dyn FunctionStorage,
    scope: &[u8],
    ns: &[u8],
    key: &[u8],
    batch: &RecordBatch,
    compression: Compression,
) -> Result<()> {
    let options = write_options(compression)?;
    let mut out = Vec::new();
    {
        let mut writer = StreamWriter::try_new_with_options(&mut out, batch.schema_ref(), options)
            .map_err(arrow_error("encoding a batch"))?;
        writer
            .write(batch)
            .map_err(arrow_error("encoding a batch"))?;
        writer.finish().map_err(arrow_error("encoding a batch"))?;
    }
    store.state_put(scope, ns, key, &out)
}

/// The batch [`put_batch`] stored at (`scope`, `ns`, `key`), if any.
pub fn get_batch(
    store: &dyn FunctionStorage,
    scope: &[u8],
    ns: &[u8],
    key: &[u8],
) -> Result<Option<RecordBatch>> {
    let Some(bytes) = store.state_get(scope, ns, key)? else {
        return Ok(None);
    };
    let what = format!(
        "state {}/{}/{}",
        String::from_utf8_lossy(scope),
        String::from_utf8_lossy(ns),
        String::from_utf8_lossy(key)
    );
    let mut reader =
        StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| undecodable(&what, e))?;
    match reader.next() {
        Some(batch) => batch.map(Some).map_err(|e| undecodable(&what, e)),
        None => Err(Error::Corrupt {
            path: what,
            detail: "an IPC stream with no batch".into(),
        }),
    }
}
