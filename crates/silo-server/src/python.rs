//! vgi-python's remote storage protocol: `POST /python/<endpoint>` with a JSON body, as
//! `FunctionStorageCfDo` (`vgi/function_storage_cf_do.py` in the `vgi-python` wheel; its code
//! and docstrings are the contract) sends it. A Python worker pool keeps its state on `silo
//! serve` by setting `VGI_WORKER_SHARED_STORAGE=cloudflare-do`,
//! `VGI_CF_DO_URL=http://HOST:PORT/python` and `VGI_CF_DO_TOKEN`.
//!
//! Every endpoint becomes operations of the one list ([`StorageOp`]) run by [`wire::apply`];
//! what this module adds is naming, paging and the JSON shapes:
//! - **Names.** A request's `shard_key` picks a Durable Object on Cloudflare; here it is an
//!   isolation domain inside the caller's tenant: scope = [`TAG`], a kind byte (state or
//!   queue: `execution_clear` must leave queues alone), the shard key's length and bytes, then
//!   the client's `scope_id` or `execution_id`. No two shard keys share a scope, and no name
//!   made here is a name the tenant's VGI-wire clients would pick by accident (`TAG` is not
//!   UTF-8).
//! - **Retries.** A write's `attempt_id` is an `apply_once` key (tenant- and shard-scoped; the
//!   fingerprint is a digest of the endpoint and its operation), so a retry after a lost reply
//!   gets the stored JSON answer instead of a second effect. A drain stores its whole snapshot
//!   under its attempt; every page is cut from it, so a retried page is the same page.
//! - **Pages.** `state_scan` and `state_drain` answer at most [`PAGE_BYTES`] of keys and values
//!   (at least one pair) and a `next_after` cursor, never empty while more may follow.
//! - **Errors.** JSON `{"error": message, "kind": kind}`; 400 for bad input (the client raises
//!   `ValueError`), 401 before the body is read (`PermissionError`), 413 over the body limit.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};
use silo::wire::{self, Bytes, ErrorKind, List, OP_NAMES, StorageOp, StorageReply};
use silo::{Error, FunctionStorage, KeyRange, PrefixStore, Selection};

use crate::metrics::Rejection;
use crate::{
    App, Caller, INLINE_MAX_BODY, MAX_IDEMPOTENCY_KEY, Refusal, admit, is_point_op,
    is_reply_too_large, reply_too_large, run_job,
};

/// The first bytes of every scope and `apply_once` key this protocol names (not UTF-8).
pub const TAG: &[u8] = b"\xffvgi-python\x00";

/// The most key and value bytes one `state_scan` or `state_drain` page carries (a page holds
/// at least one pair, however large).
pub const PAGE_BYTES: usize = 4 << 20;

/// Longest `shard_key` accepted, in bytes.
const MAX_SHARD_KEY: usize = 1024;

/// Which of a shard's two families of scopes a name is in.
#[derive(Clone, Copy)]
enum Kind {
    /// `state_*`, logs and counters of one `scope_id`.
    State = b's' as isize,
    /// The work queue of one `execution_id`.
    Queue = b'q' as isize,
    /// An `apply_once` key: one `attempt_id`.
    Attempt = b'a' as isize,
}

/// The store name for `id` of `kind` in `shard`.
fn name(kind: Kind, shard: &str, id: &[u8]) -> Vec<u8> {
    let len = u32::try_from(shard.len()).unwrap_or(u32::MAX);
    [TAG, &[kind as u8], &len.to_be_bytes(), shard.as_bytes(), id].concat()
}

/// The protocol's endpoints, by the name the client posts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    QueuePush,
    QueuePop,
    QueueClear,
    StateGetMany,
    StatePutMany,
    StateScan,
    StateDrain,
    StateDelete,
    ExecutionClear,
    StateAppend,
    StateLogScan,
    CounterGet,
    CounterAdd,
    CounterSet,
    CounterDelete,
}

/// Every endpoint with its path name.
const ENDPOINTS: [(&str, Endpoint); 15] = [
    ("queue_push", Endpoint::QueuePush),
    ("queue_pop", Endpoint::QueuePop),
    ("queue_clear", Endpoint::QueueClear),
    ("state_get_many", Endpoint::StateGetMany),
    ("state_put_many", Endpoint::StatePutMany),
    ("state_scan", Endpoint::StateScan),
    ("state_drain", Endpoint::StateDrain),
    ("state_delete", Endpoint::StateDelete),
    ("execution_clear", Endpoint::ExecutionClear),
    ("state_append", Endpoint::StateAppend),
    ("state_log_scan", Endpoint::StateLogScan),
    ("state_counter_get", Endpoint::CounterGet),
    ("state_counter_add", Endpoint::CounterAdd),
    ("state_counter_set", Endpoint::CounterSet),
    ("state_counter_delete", Endpoint::CounterDelete),
];

impl Endpoint {
    fn from_name(name: &str) -> Option<Endpoint> {
        ENDPOINTS.iter().find(|(n, _)| *n == name).map(|(_, e)| *e)
    }

    fn name(self) -> &'static str {
        ENDPOINTS
            .iter()
            .find(|(_, e)| *e == self)
            .map_or("?", |(n, _)| n)
    }
}

/// The routes of this protocol, behind their own auth layer (whose refusal is JSON, which the
/// client turns into `PermissionError`).
pub(crate) fn routes(app: Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route("/python/{endpoint}", post(handle))
        .route_layer(middleware::from_fn_with_state(app, authenticate))
}

/// The auth layer: the bearer token, from the headers alone, before the body is read.
async fn authenticate(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match app.config.auth.scope_prefix(presented) {
        Some(prefix) => {
            request.extensions_mut().insert(Caller { prefix });
            next.run(request).await
        }
        None => {
            app.metrics.reject(Rejection::Unauthorized);
            json_error(
                StatusCode::UNAUTHORIZED,
                &Error::Unauthorized {
                    message: "missing or wrong bearer token (VGI_CF_DO_TOKEN)".into(),
                },
            )
        }
    }
}

/// An error as the client reads it: `error` is what it shows.
fn json_error(status: StatusCode, e: &Error) -> Response {
    let body = json!({ "error": e.to_string(), "kind": ErrorKind::of(e).name() });
    (status, axum::Json(body)).into_response()
}

fn error_status(e: &Error) -> StatusCode {
    StatusCode::from_u16(ErrorKind::of(e).status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn refusal_response(refusal: Refusal) -> Response {
    let mut response = json_error(refusal.status, &refusal.error);
    if refusal.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// What one request asks for, translated.
struct Request1 {
    endpoint: Endpoint,
    shard: String,
    attempt_id: Option<String>,
    plan: Plan,
}

/// How a request runs.
enum Plan {
    /// One operation, answered in the endpoint's JSON shape.
    Apply(StorageOp),
    /// One page of a `StateScan` (its `limit` is what remains), after `after` when given.
    Scan {
        op: StorageOp,
        after: Option<Vec<u8>>,
    },
    /// One page of a `StateDrain`: the first page drains, later ones read its snapshot.
    Drain {
        op: StorageOp,
        after: Option<Vec<u8>>,
    },
}

impl Plan {
    fn op(&self) -> &StorageOp {
        match self {
            Plan::Apply(op) | Plan::Scan { op, .. } | Plan::Drain { op, .. } => op,
        }
    }
}

/// The JSON body's fields, read with errors that name the endpoint and the field.
struct Fields {
    endpoint: Endpoint,
    map: Map<String, Value>,
}

impl Fields {
    fn bad(&self, field: &str, what: &str) -> Error {
        Error::invalid(format!("{}: field `{field}` {what}", self.endpoint.name()))
    }

    /// A present, non-null field.
    fn get(&self, field: &str) -> Option<&Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn required(&self, field: &str) -> Result<&Value, Error> {
        self.get(field).ok_or_else(|| self.bad(field, "is missing"))
    }

    fn decode(&self, field: &str, value: &Value) -> Result<Vec<u8>, Error> {
        let text = value
            .as_str()
            .ok_or_else(|| self.bad(field, "must be a base64 string"))?;
        BASE64
            .decode(text)
            .map_err(|e| self.bad(field, &format!("is not valid base64: {e}")))
    }

    fn bytes(&self, field: &str) -> Result<Bytes, Error> {
        Ok(Bytes(self.decode(field, self.required(field)?)?))
    }

    fn opt_bytes(&self, field: &str) -> Result<Option<Vec<u8>>, Error> {
        self.get(field).map(|v| self.decode(field, v)).transpose()
    }

    fn list(&self, field: &str) -> Result<&Vec<Value>, Error> {
        self.required(field)?
            .as_array()
            .ok_or_else(|| self.bad(field, "must be a list"))
    }

    fn bytes_list(&self, field: &str) -> Result<Vec<Bytes>, Error> {
        self.list(field)?
            .iter()
            .map(|v| self.decode(field, v).map(Bytes))
            .collect()
    }

    fn pairs(&self, field: &str) -> Result<Vec<(Bytes, Bytes)>, Error> {
        self.list(field)?
            .iter()
            .map(|item| {
                let part = |name: &str| {
                    item.get(name)
                        .ok_or_else(|| self.bad(field, &format!("has an item without `{name}`")))
                        .and_then(|v| self.decode(field, v))
                };
                Ok((Bytes(part("key")?), Bytes(part("value")?)))
            })
            .collect()
    }

    fn int(&self, field: &str) -> Result<i64, Error> {
        self.required(field)?
            .as_i64()
            .ok_or_else(|| self.bad(field, "must be an integer between -2^63 and 2^63-1"))
    }

    /// A row limit: absent or negative means none (as SQLite's `LIMIT -1`, which the
    /// reference backend passes through).
    fn limit(&self, field: &str) -> Result<u64, Error> {
        match self.get(field) {
            None => Ok(u64::MAX),
            Some(_) => Ok(u64::try_from(self.int(field)?).unwrap_or(u64::MAX)),
        }
    }

    fn flag(&self, field: &str) -> Result<bool, Error> {
        match self.get(field) {
            None => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.bad(field, "must be true or false")),
        }
    }

    fn string(&self, field: &str) -> Result<Option<String>, Error> {
        self.get(field)
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| self.bad(field, "must be a string"))
            })
            .transpose()
    }

    /// A page cursor this server handed out (`next_after`).
    fn cursor(&self) -> Result<Option<Vec<u8>>, Error> {
        let Some(text) = self.string("after_key")? else {
            return Ok(None);
        };
        let encoded = text
            .strip_prefix(CURSOR_PREFIX)
            .ok_or_else(|| self.bad("after_key", "is not a cursor this server handed out"))?;
        BASE64
            .decode(encoded)
            .map(Some)
            .map_err(|_| self.bad("after_key", "is not a cursor this server handed out"))
    }
}

/// Cursors are this prefix and the last key's base64: never empty, even after the empty key
/// (the client stops paging at a falsy `next_after`).
const CURSOR_PREFIX: &str = "k:";

fn cursor(key: &[u8]) -> String {
    format!("{CURSOR_PREFIX}{}", BASE64.encode(key))
}

/// Reads the body and translates it into a plan.
fn translate(endpoint: Endpoint, body: &[u8]) -> Result<Request1, Error> {
    let map = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(Error::invalid(format!(
                "{}: the body must be a JSON object",
                endpoint.name()
            )));
        }
        Err(e) => {
            return Err(Error::invalid(format!(
                "{}: the body is not JSON: {e}",
                endpoint.name()
            )));
        }
    };
    let f = Fields { endpoint, map };
    let shard = f
        .string("shard_key")?
        .ok_or_else(|| f.bad("shard_key", "is missing (every request names its shard)"))?;
    if shard.len() > MAX_SHARD_KEY {
        return Err(f.bad(
            "shard_key",
            &format!("is longer than {MAX_SHARD_KEY} bytes"),
        ));
    }
    let attempt_id = f.string("attempt_id")?;
    if attempt_id
        .as_ref()
        .is_some_and(|a| a.len() > MAX_IDEMPOTENCY_KEY)
    {
        return Err(f.bad(
            "attempt_id",
            &format!("is longer than {MAX_IDEMPOTENCY_KEY} bytes"),
        ));
    }
    let state = |f: &Fields| -> Result<Bytes, Error> {
        Ok(Bytes(name(Kind::State, &shard, &f.bytes("scope_id")?.0)))
    };
    let queue = |f: &Fields| -> Result<Bytes, Error> {
        Ok(Bytes(name(
            Kind::Queue,
            &shard,
            &f.bytes("execution_id")?.0,
        )))
    };
    use Endpoint as E;
    let plan = match endpoint {
        E::QueuePush => Plan::Apply(StorageOp::QueuePush {
            scope: queue(&f)?,
            items: List(f.bytes_list("items")?),
        }),
        E::QueuePop => Plan::Apply(StorageOp::QueuePop { scope: queue(&f)? }),
        E::QueueClear => Plan::Apply(StorageOp::QueueClear { scope: queue(&f)? }),
        E::StateGetMany => Plan::Apply(StorageOp::StateGetMany {
            scope: state(&f)?,
            ns: f.bytes("ns")?,
            keys: List(f.bytes_list("keys")?),
        }),
        E::StatePutMany => Plan::Apply(StorageOp::StatePutMany {
            scope: state(&f)?,
            ns: f.bytes("ns")?,
            items: List(f.pairs("items")?),
        }),
        E::StateScan => Plan::Scan {
            op: StorageOp::StateScan {
                scope: state(&f)?,
                ns: f.bytes("ns")?,
                range: KeyRange {
                    start: f.opt_bytes("start")?,
                    end: f.opt_bytes("end")?,
                },
                reverse: f.flag("reverse")?,
                limit: f.limit("limit")?,
            },
            after: f.cursor()?,
        },
        E::StateDrain => Plan::Drain {
            op: StorageOp::StateDrain {
                scope: state(&f)?,
                ns: f.bytes("ns")?,
            },
            after: f.cursor()?,
        },
        E::StateDelete => {
            let start = f.opt_bytes("start")?;
            let end = f.opt_bytes("end")?;
            let selection = match f.get("keys") {
                Some(_) if start.is_some() || end.is_some() => {
                    return Err(Error::invalid(
                        "state_delete: `keys` and `start`/`end` are mutually exclusive",
                    ));
                }
                Some(_) => {
                    Selection::Keys(f.bytes_list("keys")?.into_iter().map(|k| k.0).collect())
                }
                None if start.is_some() || end.is_some() => {
                    Selection::Range(KeyRange { start, end })
                }
                None => Selection::All,
            };
            Plan::Apply(StorageOp::StateDelete {
                scope: state(&f)?,
                ns: f.bytes("ns")?,
                selection,
            })
        }
        E::ExecutionClear => Plan::Apply(StorageOp::ClearCounted { scope: state(&f)? }),
        E::StateAppend => Plan::Apply(StorageOp::Append {
            scope: state(&f)?,
            ns: f.bytes("ns")?,
            key: f.bytes("key")?,
            value: f.bytes("item")?,
        }),
        E::StateLogScan => Plan::Apply(StorageOp::Scan {
            scope: state(&f)?,
            ns: f.bytes("ns")?,
            key: f.bytes("key")?,
            after_id: match f.get("after_id") {
                None => -1,
                Some(_) => f.int("after_id")?,
            },
            limit: f.limit("limit")?,
        }),
        E::CounterGet => Plan::Apply(StorageOp::CounterGet {
            scope: state(&f)?,
            ns: f.bytes("ns")?,
            key: f.bytes("key")?,
        }),
        E::CounterAdd => Plan::Apply(StorageOp::CounterAdd {
            scope: state(&f)?,
            ns: f.bytes("ns")?,
            key: f.bytes("key")?,
            delta: f.int("delta")?,
        }),
        E::CounterSet => Plan::Apply(StorageOp::CounterSet {
            scope: state(&f)?,
            ns: f.bytes("ns")?,
            key: f.bytes("key")?,
            value: f.int("value")?,
        }),
        E::CounterDelete => Plan::Apply(StorageOp::CounterDelete {
            scope: state(&f)?,
            ns: f.bytes("ns")?,
            key: f.bytes("key")?,
        }),
    };
    Ok(Request1 {
        endpoint,
        shard,
        attempt_id,
        plan,
    })
}

fn b64(bytes: &[u8]) -> Value {
    Value::String(BASE64.encode(bytes))
}

fn unexpected(endpoint: Endpoint, reply: &StorageReply) -> Error {
    Error::Backend {
        backend: "silo server".into(),
        message: format!(
            "{} got an unexpected reply {reply:?} (a server bug)",
            endpoint.name()
        ),
    }
}

/// The endpoint's JSON answer to its operation's reply. `items` is how many items the
/// request pushed.
fn answer(endpoint: Endpoint, reply: StorageReply, items: usize) -> Result<Value, Error> {
    use Endpoint as E;
    use StorageReply as R;
    Ok(match (endpoint, reply) {
        (E::QueuePush, R::Unit) => json!({ "count": items }),
        (E::QueuePop, R::MaybeBytes(item)) => json!({ "item": item.map(|b| b64(&b.0)) }),
        (E::QueueClear, R::Count(n)) => json!({ "cleared": n }),
        (E::StateGetMany, R::MaybeBytesList(values)) => {
            let rows: Vec<Value> = values
                .into_iter()
                .map(|v| v.map_or(Value::Null, |b| json!({ "value": b64(&b.0) })))
                .collect();
            json!({ "rows": rows })
        }
        (E::StatePutMany, R::Unit) => json!({ "ok": true }),
        (E::StateDelete | E::ExecutionClear, R::Count(n)) => json!({ "deleted": n }),
        (E::StateAppend, R::Id(id)) => json!({ "ordinal": id }),
        (E::StateLogScan, R::Entries(entries)) => {
            let rows: Vec<Value> = entries
                .into_iter()
                .map(|(id, v)| json!({ "id": id, "value": b64(&v.0) }))
                .collect();
            json!({ "rows": rows })
        }
        (E::CounterGet | E::CounterAdd, R::Int(n)) => json!({ "n": n }),
        (E::CounterSet, R::Int(previous)) | (E::CounterDelete, R::Int(previous)) => {
            json!({ "ok": true, "previous": previous })
        }
        (endpoint, reply) => return Err(unexpected(endpoint, &reply)),
    })
}

/// A page of pairs and the cursor after it (`None`: nothing follows).
fn page_answer(rows: &[(Vec<u8>, Vec<u8>)], next: Option<&[u8]>) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|(k, v)| json!({ "key": b64(k), "value": b64(v) }))
        .collect();
    json!({ "rows": rows, "next_after": next.map(cursor) })
}

/// The JSON bytes of `value`, refused when over `limit`.
fn encode_bounded(value: &Value, limit: usize) -> Result<Vec<u8>, Error> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| Error::invalid(format!("cannot encode the answer: {e}")))?;
    if bytes.len() > limit {
        return Err(reply_too_large(bytes.len(), limit));
    }
    Ok(bytes)
}

/// The smallest key after `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    [key, &[0]].concat()
}

/// One page of a `StateScan`: up to its `limit` pairs of its range after `after` (in scan
/// order), cut at `budget` bytes; read in growing chunks, so a page of large values never
/// reads far past its budget.
fn scan_page(
    store: &dyn FunctionStorage,
    scan: StorageOp,
    after: Option<Vec<u8>>,
    budget: usize,
) -> Result<Value, Error> {
    let StorageOp::StateScan {
        scope: Bytes(scope),
        ns: Bytes(ns),
        mut range,
        reverse,
        limit,
    } = scan
    else {
        return Err(Error::invalid(
            "a scan page of another operation (a server bug)",
        ));
    };
    if let Some(after) = after {
        // Only ever narrows the range: a forged cursor cannot widen it.
        if reverse {
            if range.end.as_ref().is_none_or(|end| after < *end) {
                range.end = Some(after);
            }
        } else {
            let next = successor(&after);
            if range.start.as_ref().is_none_or(|start| next > *start) {
                range.start = Some(next);
            }
        }
    }
    let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut bytes = 0usize;
    let mut remaining = limit;
    let mut chunk = 16u64;
    while remaining > 0 && !range.is_empty() {
        let want = chunk.min(remaining);
        let got = store.state_scan(&scope, &ns, &range, reverse, want)?;
        let exhausted = (got.len() as u64) < want;
        for (key, value) in got {
            let size = key.len() + value.len();
            if !rows.is_empty() && bytes + size > budget {
                let last = rows.last().map(|(k, _)| k.clone()).unwrap_or_default();
                return Ok(page_answer(&rows, Some(&last)));
            }
            bytes += size;
            rows.push((key, value));
            remaining -= 1;
        }
        if exhausted {
            break;
        }
        let Some((last, _)) = rows.last() else { break };
        if reverse {
            range.end = Some(last.clone());
        } else {
            range.start = Some(successor(last));
        }
        chunk = (chunk * 4).min(4096);
    }
    Ok(page_answer(&rows, None))
}

/// The page of a drained snapshot (ascending by key) after `after`, cut at `budget` bytes.
fn drain_page(snapshot: &[(Bytes, Bytes)], after: Option<&[u8]>, budget: usize) -> Value {
    let start = after.map_or(0, |after| {
        snapshot.partition_point(|(k, _)| k.0[..] <= *after)
    });
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    for (key, value) in &snapshot[start..] {
        let size = key.0.len() + value.0.len();
        if !rows.is_empty() && bytes + size > budget {
            let next = rows.last().map(|(k, _): &(Vec<u8>, Vec<u8>)| k.clone());
            return page_answer(&rows, next.as_deref());
        }
        bytes += size;
        rows.push((key.0.clone(), value.0.clone()));
    }
    page_answer(&rows, None)
}

/// Runs a translated request on the caller's store; answers the JSON bytes.
fn execute(
    store: &dyn FunctionStorage,
    request: Request1,
    reply_limit: usize,
) -> Result<Vec<u8>, Error> {
    let Request1 {
        endpoint,
        shard,
        attempt_id,
        plan,
    } = request;
    let page_budget = PAGE_BYTES.min(reply_limit / 2).max(1);
    let once_key = attempt_id.map(|a| name(Kind::Attempt, &shard, a.as_bytes()));
    let fingerprint = |op: &StorageOp| -> Result<blake3::Hash, Error> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(endpoint.name().as_bytes());
        hasher.update(&[0]);
        hasher.update(&wire::encode(op)?);
        Ok(hasher.finalize())
    };
    match plan {
        Plan::Apply(op) => {
            let items = crate::items_of(&op);
            let run = |store: &dyn FunctionStorage, op: StorageOp| -> Result<Vec<u8>, Error> {
                encode_bounded(
                    &answer(endpoint, wire::apply(store, op)?, items)?,
                    reply_limit,
                )
            };
            match once_key {
                Some(key) if op.is_write() => {
                    let fingerprint = fingerprint(&op)?;
                    let mut op = Some(op);
                    store.apply_once(&key, fingerprint.as_bytes(), &mut |store| {
                        let op = op
                            .take()
                            .ok_or_else(|| Error::invalid("apply_once ran one request twice"))?;
                        run(store, op)
                    })
                }
                _ => run(store, op),
            }
        }
        Plan::Scan { op, after } => {
            encode_bounded(&scan_page(store, op, after, page_budget)?, reply_limit)
        }
        Plan::Drain { op, after } => {
            let Some(key) = once_key else {
                if after.is_some() {
                    return Err(Error::invalid(
                        "state_drain: a later page needs the attempt_id of the first",
                    ));
                }
                // No attempt to page under: the whole namespace in one answer, undone when
                // that answer is too large to send.
                let mut op = Some(op);
                return store.apply_atomically(&mut |store| {
                    let op = op
                        .take()
                        .ok_or_else(|| Error::invalid("one request was applied twice"))?;
                    match wire::apply(store, op)? {
                        StorageReply::Pairs(pairs) => {
                            let rows: Vec<(Vec<u8>, Vec<u8>)> =
                                pairs.into_iter().map(|(k, v)| (k.0, v.0)).collect();
                            encode_bounded(&page_answer(&rows, None), reply_limit)
                        }
                        other => Err(unexpected(endpoint, &other)),
                    }
                });
            };
            let fingerprint = fingerprint(&op)?;
            let continuation = after.is_some();
            let mut op = Some(op);
            let snapshot = store.apply_once(&key, fingerprint.as_bytes(), &mut |store| {
                if continuation {
                    return Err(Error::invalid(
                        "state_drain: a later page of a drain this server has no record of \
                         (its first page never arrived, or it is older than the idempotency \
                         window, silo serve --idempotency-window-secs); drain again",
                    ));
                }
                let op = op
                    .take()
                    .ok_or_else(|| Error::invalid("apply_once ran one request twice"))?;
                wire::encode(&wire::apply(store, op)?)
            })?;
            match wire::decode::<StorageReply>(&snapshot)? {
                StorageReply::Pairs(pairs) => encode_bounded(
                    &drain_page(&pairs, after.as_deref(), page_budget),
                    reply_limit,
                ),
                other => Err(unexpected(endpoint, &other)),
            }
        }
    }
}

/// Serves one request of the protocol.
async fn handle(
    State(app): State<Arc<App>>,
    Path(endpoint): Path<String>,
    request: Request,
) -> Response {
    let Some(endpoint) = Endpoint::from_name(&endpoint) else {
        app.metrics.reject(Rejection::Undecodable);
        let known: Vec<&str> = ENDPOINTS.iter().map(|(n, _)| *n).collect();
        return json_error(
            StatusCode::BAD_REQUEST,
            &Error::invalid(format!(
                "unknown endpoint {endpoint:?}; this server speaks {}",
                known.join(", ")
            )),
        );
    };
    let admitted = match admit(&app, request).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal_response(refusal),
    };
    let translated = match translate(endpoint, &admitted.body) {
        Ok(translated) => translated,
        Err(e) => {
            app.metrics.reject(Rejection::Undecodable);
            return json_error(StatusCode::BAD_REQUEST, &e);
        }
    };
    let op = translated.plan.op();
    let items = crate::items_of(op);
    let max_items = app.config.limits.max_items;
    if items > max_items {
        app.metrics.reject(Rejection::TooManyItems);
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &Error::invalid(format!(
                "{} carries {items} items, over the server's limit of {max_items} \
                 (silo serve --max-items); split it into several requests",
                endpoint.name()
            )),
        );
    }
    let index = op.index();
    let inline = app.config.inline_point_ops
        && admitted.body.len() <= INLINE_MAX_BODY
        && matches!(translated.plan, Plan::Apply(_))
        && is_point_op(op);
    let started = Instant::now();
    let worker = app.clone();
    let job = move || {
        let _held = admitted.held;
        let store = &*worker.config.store;
        if admitted.prefix.is_empty() {
            execute(store, translated, admitted.reply_limit)
        } else {
            let tenant = PrefixStore::new(store, admitted.prefix);
            execute(&tenant, translated, admitted.reply_limit)
        }
    };
    let response = match run_job(inline, job).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Ok(Err(e)) => {
            if is_reply_too_large(&e) {
                app.metrics.reject(Rejection::ReplyTooLarge);
            } else if !matches!(e, Error::InvalidInput { .. } | Error::Conflict { .. }) {
                tracing::warn!(endpoint = endpoint.name(), "request failed: {e}");
            }
            json_error(error_status(&e), &e)
        }
        Err(panic) => {
            tracing::error!(op = OP_NAMES[index], "request handler panicked: {panic}");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &Error::Backend {
                    backend: "silo server".into(),
                    message: "the request handler panicked; see the server log".into(),
                },
            )
        }
    };
    app.metrics
        .record(index, started.elapsed(), response.status().is_success());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_two_shards_never_meet() {
        // A shard key that is a prefix of another, with ids that make up the difference.
        assert_ne!(name(Kind::State, "ab", b"c"), name(Kind::State, "a", b"bc"));
        assert_ne!(name(Kind::State, "a", b"x"), name(Kind::Queue, "a", b"x"));
        assert!(name(Kind::State, "", b"").starts_with(TAG));
    }

    #[test]
    fn every_endpoint_has_one_name() {
        for (n, e) in ENDPOINTS {
            assert_eq!(Endpoint::from_name(n), Some(e));
            assert_eq!(e.name(), n);
        }
    }
}
