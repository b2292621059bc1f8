//! An example VGI worker on the `vgi` crate (0.22) whose buffering state lives in silo: one
//! table-buffering (sink + source) function, `top_k_per_group`.
//!
//! ```sql
//! SELECT * FROM top_k_per_group((SELECT grp, val, id, tag FROM t), k := 5)
//! ```
//!
//! Input columns `grp` (utf8), `val` (int64), `id` (int64, unique), `tag` (utf8, nullable).
//! Output `grp, rank, val, id, tag`: for every group its `k` rows with the largest `val` (ties:
//! the smaller `id` first), ranked 1..k; a `k` larger than every group is a full sort. Within a
//! finalize partition groups come in UTF-8 byte order; the partitions split groups by hash.
//!
//! Every phase may run in another worker process, so nothing is kept in memory between calls:
//! `process` appends its batch with `silo_arrow::Buffering` (once per batch index, so a retried
//! call is read once), `combine` splits the rows over the finalize partitions by `grp`'s
//! hash, each finalize streams its partition and keeps only the top `k` of each group, and the
//! last partition read to its end drops the execution's state.
//!
//! Configured only by the environment (`silo::from_env`), so the same binary runs on a local
//! store or on `silo serve`:
//! - `VGI_WORKER_SHARED_STORAGE=http VGI_STORAGE_URL=http://HOST:PORT [VGI_STORAGE_TOKEN=T]`:
//!   everything on `silo serve`, the `vgi` crate's own records (bind results, arguments) too;
//! - `SILO_STORAGE_URL=fs:///var/lib/topk` (or `sqlite://…`): the rows in that store, the `vgi`
//!   crate's small records where `VGI_WORKER_SHARED_STORAGE` puts them (its SQLite by default).
//!
//! Transport as every `vgi` worker: stdio by default, `--tcp [HOST:]PORT`, `--unix PATH`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{Int64Builder, StringBuilder};
use arrow_array::{Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use silo::FunctionStorage;
use silo_arrow::{Buffering, Partitioning};
use vgi::buffering::{BufferingParams, TableBufferingFunction};
use vgi::table_function::TableProducer;
use vgi::{ArgSpec, BindParams, BindResponse, FunctionMetadata, Worker};
use vgi_rpc::{OutputCollector, Result, RpcError};

const FUNCTION: &str = "top_k_per_group";
const DEFAULT_K: i64 = 5;
const DEFAULT_PARTITIONS: i64 = 4;
/// Output rows per batch.
const OUT_ROWS: usize = 4096;

fn main() {
    let mut worker = Worker::new();
    worker.register_buffering(TopKPerGroup);
    worker.run();
}

/// The store every call of this process uses, opened once from the environment.
fn store() -> Result<Arc<dyn FunctionStorage>> {
    static STORE: OnceLock<std::result::Result<Arc<dyn FunctionStorage>, String>> = OnceLock::new();
    STORE
        .get_or_init(|| silo::from_env().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| RpcError::runtime_error(format!("opening the silo store: {e}")))
}

fn silo_error(what: &str) -> impl Fn(silo::Error) -> RpcError + '_ {
    move |e| RpcError::runtime_error(format!("{FUNCTION}: {what}: {e}"))
}

fn output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("grp", DataType::Utf8, false),
        Field::new("rank", DataType::Int64, false),
        Field::new("val", DataType::Int64, false),
        Field::new("id", DataType::Int64, false),
        Field::new("tag", DataType::Utf8, true),
    ]))
}

struct TopKPerGroup;

impl TopKPerGroup {
    fn k(params: &BufferingParams) -> Result<usize> {
        let k = params.arguments.named_i64("k").unwrap_or(DEFAULT_K);
        usize::try_from(k)
            .ok()
            .filter(|&k| k > 0)
            .ok_or_else(|| RpcError::value_error(format!("k must be positive, not {k}")))
    }

    fn partitions(params: &BufferingParams) -> Result<u32> {
        let n = params
            .arguments
            .named_i64("partitions")
            .unwrap_or(DEFAULT_PARTITIONS);
        u32::try_from(n)
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .ok_or_else(|| RpcError::value_error(format!("partitions must be 1..=1024, not {n}")))
    }
}

impl TableBufferingFunction for TopKPerGroup {
    fn name(&self) -> &str {
        FUNCTION
    }

    fn metadata(&self) -> FunctionMetadata {
        FunctionMetadata {
            description: "The k rows with the largest val of every grp, ranked; state in silo"
                .into(),
            // The batch index makes a sink's append idempotent: a retried call is read once.
            requires_input_batch_index: true,
            ..Default::default()
        }
    }

    fn argument_specs(&self) -> Vec<ArgSpec> {
        vec![
            ArgSpec::const_arg("k", -1, "int64", "rows kept per group (default 5)"),
            ArgSpec::const_arg("partitions", -1, "int64", "finalize partitions (default 4)"),
        ]
    }

    fn on_bind(&self, params: &BindParams) -> Result<BindResponse> {
        let want = [
            ("grp", DataType::Utf8),
            ("val", DataType::Int64),
            ("id", DataType::Int64),
            ("tag", DataType::Utf8),
        ];
        let input = params
            .input_schema
            .as_ref()
            .ok_or_else(|| RpcError::value_error(format!("{FUNCTION} needs an input table")))?;
        for (name, ty) in want {
            match input.field_with_name(name) {
                Ok(f) if *f.data_type() == ty => {}
                _ => {
                    return Err(RpcError::value_error(format!(
                        "{FUNCTION} needs columns grp utf8, val int64, id int64, tag utf8; \
                         the input has {input}"
                    )));
                }
            }
        }
        Ok(BindResponse {
            output_schema: output_schema(),
            opaque_data: Vec::new(),
        })
    }

    fn process(&self, params: &BufferingParams, batch: &RecordBatch) -> Result<Vec<u8>> {
        let store = store()?;
        let buffering = Buffering::new(&*store, &params.execution_id);
        // With a batch index every sink shares one log and the index makes the append
        // idempotent wherever a retry lands; without one each process appends to its own log
        // in its own order.
        let (sink, seq) = match params.batch_index {
            Some(index) => ("in".to_string(), index as u64),
            None => {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let seq = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (format!("p{}", std::process::id()), seq)
            }
        };
        buffering
            .process(sink.as_bytes(), seq, batch)
            .map_err(silo_error("appending a batch"))?;
        // The state id names the process that sank it (the end-to-end test checks that) and
        // the sink's log.
        Ok(format!("{}:{sink}", std::process::id()).into_bytes())
    }

    fn combine(&self, params: &BufferingParams, state_ids: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        let mut sinks: Vec<Vec<u8>> = Vec::new();
        for id in state_ids {
            let sink = id
                .iter()
                .position(|&b| b == b':')
                .map(|at| id[at + 1..].to_vec())
                .ok_or_else(|| RpcError::value_error("a state id this function did not make"))?;
            if !sinks.contains(&sink) {
                sinks.push(sink);
            }
        }
        let partitions = Self::partitions(params)?;
        let store = store()?;
        Buffering::new(&*store, &params.execution_id)
            .combine(&sinks, partitions, &Partitioning::Hash("grp".into()))
            .map_err(silo_error("combining"))?;
        Ok((0..partitions)
            .map(|p| p.to_string().into_bytes())
            .collect())
    }

    fn finalize_producer(
        &self,
        params: &BufferingParams,
        finalize_state_id: Vec<u8>,
    ) -> Result<Box<dyn TableProducer>> {
        let partition = std::str::from_utf8(&finalize_state_id)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| {
                RpcError::value_error("a finalize state id this function did not make")
            })?;
        Ok(Box::new(TopKProducer {
            store: store()?,
            execution: params.execution_id.clone(),
            partition,
            k: Self::k(params)?,
            out: None,
        }))
    }
}

/// An output row: grp, rank, val, id, tag.
type Ranked = (String, i64, i64, i64, Option<String>);

/// One group's best rows so far: a min-heap of at most k, its root the row to drop next.
type Best = BinaryHeap<Reverse<(i64, Reverse<i64>, Option<String>)>>;

struct TopKProducer {
    store: Arc<dyn FunctionStorage>,
    execution: Vec<u8>,
    partition: u32,
    k: usize,
    /// The ranked output rows, built on the first call.
    out: Option<std::vec::IntoIter<Ranked>>,
}

impl TopKProducer {
    /// Streams the partition (one batch in memory at a time) keeping k rows per group.
    fn rank(&self) -> Result<Vec<Ranked>> {
        let buffering = Buffering::new(&*self.store, &self.execution);
        let mut groups: BTreeMap<String, Best> = BTreeMap::new();
        let batches = buffering
            .finalize(self.partition)
            .map_err(silo_error("reading a partition"))?;
        for batch in batches {
            let batch = batch.map_err(silo_error("reading a partition"))?;
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| RpcError::runtime_error(format!("no column {name}")))
            };
            let (grp, val, id, tag) = (
                column("grp")?,
                column("val")?,
                column("id")?,
                column("tag")?,
            );
            let (Some(grp), Some(val), Some(id), Some(tag)) = (
                grp.as_any().downcast_ref::<StringArray>(),
                val.as_any().downcast_ref::<Int64Array>(),
                id.as_any().downcast_ref::<Int64Array>(),
                tag.as_any().downcast_ref::<StringArray>(),
            ) else {
                return Err(RpcError::runtime_error(
                    "buffered columns of unexpected types",
                ));
            };
            for i in 0..batch.num_rows() {
                let best = groups.entry(grp.value(i).to_owned()).or_default();
                let tag = tag.is_valid(i).then(|| tag.value(i).to_owned());
                best.push(Reverse((val.value(i), Reverse(id.value(i)), tag)));
                if best.len() > self.k {
                    best.pop();
                }
            }
        }
        let mut rows = Vec::new();
        for (grp, best) in groups {
            // into_sorted_vec of Reverse: the best row first.
            for (rank, Reverse((val, Reverse(id), tag))) in
                best.into_sorted_vec().into_iter().enumerate()
            {
                rows.push((grp.clone(), rank as i64 + 1, val, id, tag));
            }
        }
        // Read to its end: the last partition to get here drops the execution.
        buffering
            .drained(self.partition)
            .map_err(silo_error("dropping a finished execution"))?;
        Ok(rows)
    }
}

impl TableProducer for TopKProducer {
    fn next_batch(&mut self, _out: &mut OutputCollector) -> Result<Option<RecordBatch>> {
        if self.out.is_none() {
            self.out = Some(self.rank()?.into_iter());
        }
        let Some(rows) = self.out.as_mut() else {
            return Ok(None);
        };
        let (mut grp, mut rank, mut val, mut id, mut tag) = (
            StringBuilder::new(),
            Int64Builder::new(),
            Int64Builder::new(),
            Int64Builder::new(),
            StringBuilder::new(),
        );
        let mut n = 0;
        for (g, r, v, i, t) in rows.by_ref().take(OUT_ROWS) {
            grp.append_value(g);
            rank.append_value(r);
            val.append_value(v);
            id.append_value(i);
            tag.append_option(t);
            n += 1;
        }
        if n == 0 {
            return Ok(None);
        }
        RecordBatch::try_new(
            output_schema(),
            vec![
                Arc::new(grp.finish()),
                Arc::new(rank.finish()),
                Arc::new(val.finish()),
                Arc::new(id.finish()),
                Arc::new(tag.finish()),
            ],
        )
        .map(Some)
        .map_err(|e| RpcError::runtime_error(format!("building an output batch: {e}")))
    }
}
