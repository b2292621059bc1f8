//! The VGI storage wire protocol (SPEC §6), defined once for the http client and the server.
//!
//! Layout: bincode 1 "legacy" — little-endian fixed-width integers, an enum is its variant
//! index as `u32` then its fields, a byte string is a `u64` length then the bytes, `Option` is
//! one tag byte. Variants 0–8 of [`StorageOp`] and 0–3 of [`StorageReply`] are byte-for-byte
//! those of the `vgi` crate's `HttpStorage`; silo's extended operations follow, so an old
//! client never meets them. Errors travel as HTTP statuses (see [`ErrorKind`]), never as
//! replies, because the incumbent client treats any non-2xx status as a failure.

use std::time::Duration;

use bincode::Options;
use serde::{Deserialize, Serialize};

use crate::storage::KeyValue;
use crate::{Claim, DeadLetter, Error, FunctionStorage, KeyRange, Result, Selection, StoreStats};

/// A byte string on the wire (`u64` length, then the bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(v.to_vec())
    }
}

impl<const N: usize> From<&[u8; N]> for Bytes {
    fn from(v: &[u8; N]) -> Self {
        Bytes(v.to_vec())
    }
}

/// One request: an optional idempotency key and the operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageRequest {
    /// Set on operations whose effect or reply would change if applied twice; the server
    /// applies a keyed request at most once and replays its reply to retries.
    pub idempotency_key: Option<String>,
    /// The operation.
    pub op: StorageOp,
}

/// What an operation does to the store, which decides how it may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpClass {
    /// Changes nothing: a client may send it again after any failure.
    Read,
    /// Changes the store: silo's client sends it with an idempotency key, so that a retry
    /// after a lost reply is answered from the server's record instead of applied twice.
    Write,
}

/// One row of the operation table: everything the client, server and tests need to know
/// about an operation besides its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpInfo {
    /// The variant index: the operation's number on the wire.
    pub index: usize,
    /// The variant name (metrics, `GET /v1/info`, logs).
    pub name: &'static str,
    /// The name of the [`StorageReply`] variant a success is answered with.
    pub reply: &'static str,
    /// Read or write.
    pub class: OpClass,
    /// True when the operation names a scope (its first field), which a tenant's prefix
    /// fences; false for store-wide operations.
    pub scoped: bool,
}

/// Defines [`StorageOp`], the operation table [`OPS`] and [`OP_NAMES`] from one list, so the
/// wire layout, names, reply shapes and retry classes cannot drift apart. A scoped operation
/// is written `Name [scope] { fields }`: its first field is the scope.
macro_rules! operations {
    ($(
        $(#[$doc:meta])*
        $index:literal $name:ident [$($scope:ident)?] { $($field:ident : $ty:ty),* $(,)? }
            -> $reply:ident, $class:ident;
    )*) => {
        /// Every operation. The order of variants is the wire format: append only.
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub enum StorageOp {
            $( $(#[$doc])* $name { $($scope: Bytes,)? $($field: $ty,)* }, )*
        }

        /// The operation table, in wire order.
        pub const OPS: &[OpInfo] = &[$(
            OpInfo {
                index: $index,
                name: stringify!($name),
                reply: stringify!($reply),
                class: OpClass::$class,
                scoped: operations!(@present $($scope)?),
            },
        )*];

        /// Names of the operations, in wire order (for metrics and `GET /v1/info`).
        pub const OP_NAMES: &[&str] = &[$(stringify!($name)),*];

        impl StorageOp {
            /// The variant index (its number on the wire).
            pub fn index(&self) -> usize {
                match self { $( StorageOp::$name { .. } => $index, )* }
            }

            /// The scope the operation names, if it names one.
            pub fn scope(&self) -> Option<&[u8]> {
                match self {
                    $( StorageOp::$name { $($scope,)? .. } => operations!(@scope $($scope)?), )*
                }
            }

            /// The scope the operation names, to change it.
            pub fn scope_mut(&mut self) -> Option<&mut Bytes> {
                match self {
                    $( StorageOp::$name { $($scope,)? .. } => operations!(@scope_mut $($scope)?), )*
                }
            }

            /// One instance of every operation, in wire order, with every field at its default
            /// (empty names, zero numbers): for tests that must cover the whole table.
            pub fn examples() -> Vec<StorageOp> {
                vec![$(
                    StorageOp::$name { $($scope: Bytes::default(),)? $($field: Default::default(),)* },
                )*]
            }
        }
    };
    (@present $scope:ident) => { true };
    (@present) => { false };
    (@scope $scope:ident) => { Some(&$scope.0[..]) };
    (@scope) => { None };
    (@scope_mut $scope:ident) => { Some($scope) };
    (@scope_mut) => { None };
}

operations! {
    // ---- 0..=8: the `vgi` crate's operations ----
    0 KvGet [scope] { key: Bytes } -> MaybeBytes, Read;
    1 KvPut [scope] { key: Bytes, value: Bytes } -> Unit, Write;
    2 KvDel [scope] { key: Bytes } -> Unit, Write;
    3 Append [scope] { ns: Bytes, key: Bytes, value: Bytes } -> Id, Write;
    4 Scan [scope] { ns: Bytes, key: Bytes, after_id: i64, limit: u64 } -> Entries, Read;
    5 QueuePush [scope] { items: List<Bytes> } -> Unit, Write;
    6 QueuePop [scope] {} -> MaybeBytes, Write;
    7 Clear [scope] {} -> Unit, Write;
    /// Sweeps every scope (of the caller's tenant) untouched for `ttl_secs`; answers `Unit`
    /// because that is what the `vgi` client decodes. silo's client uses `Sweep`.
    8 Gc [] { ttl_secs: u64 } -> Unit, Write;
    // ---- 9..: silo's extensions ----
    9 StateGet [scope] { ns: Bytes, key: Bytes } -> MaybeBytes, Read;
    10 StatePut [scope] { ns: Bytes, key: Bytes, value: Bytes } -> Unit, Write;
    11 StateDel [scope] { ns: Bytes, key: Bytes } -> Bool, Write;
    12 StateGetMany [scope] { ns: Bytes, keys: List<Bytes> } -> MaybeBytesList, Read;
    13 StatePutMany [scope] { ns: Bytes, items: List<(Bytes, Bytes)> } -> Unit, Write;
    14 StateScan [scope] { ns: Bytes, range: KeyRange, reverse: bool, limit: u64 } -> Pairs, Read;
    15 StateDelete [scope] { ns: Bytes, selection: Selection } -> Count, Write;
    16 StateDrain [scope] { ns: Bytes } -> Pairs, Write;
    17 CounterGet [scope] { ns: Bytes, key: Bytes } -> Int, Read;
    18 CounterAdd [scope] { ns: Bytes, key: Bytes, delta: i64 } -> Int, Write;
    19 CounterSet [scope] { ns: Bytes, key: Bytes, value: i64 } -> Int, Write;
    20 CounterDelete [scope] { ns: Bytes, key: Bytes } -> Int, Write;
    21 QueueLen [scope] {} -> Count, Read;
    22 QueueClear [scope] {} -> Count, Write;
    23 QueueClaim [scope] { lease_ms: u64 } -> MaybeClaim, Write;
    24 QueueAck [scope] { claim_id: i64 } -> Bool, Write;
    25 QueueRelease [scope] { claim_id: i64 } -> Bool, Write;
    26 QueueExtend [scope] { claim_id: i64, lease_ms: u64 } -> Bool, Write;
    27 QueueDeadLetters [scope] { limit: u64 } -> DeadLetters, Read;
    /// `Gc` that answers how many scopes it dropped.
    28 Sweep [] { ttl_ms: u64 } -> Count, Write;
    /// Store-wide counts; refused to tenants.
    29 Stat [] {} -> Stats, Read;
    /// Several operations in one request, applied in order as one atomic unit (all or none),
    /// answered with one reply per operation. A batch may not hold another batch.
    30 Batch [] { ops: Batch<StorageOp> } -> Replies, Write;
    /// `Clear` that answers how many entries it dropped.
    31 ClearCounted [scope] {} -> Count, Write;
}

pub use crate::storage::MAX_LIST_LEN;

/// A list on the wire (`u64` length, then the elements), refused while decoding when it is
/// longer than [`MAX_LIST_LEN`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct List<T>(pub Vec<T>);

impl<T> From<Vec<T>> for List<T> {
    fn from(v: Vec<T>) -> Self {
        List(v)
    }
}

impl<T> FromIterator<T> for List<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        List(iter.into_iter().collect())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        crate::storage::bounded_list(d).map(List)
    }
}

/// Every reply. The order of variants is the wire format: append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageReply {
    // ---- 0..=3: the `vgi` crate's replies ----
    Unit,
    MaybeBytes(Option<Bytes>),
    Id(i64),
    Entries(Vec<(i64, Bytes)>),
    // ---- 4..: silo's extensions ----
    Bool(bool),
    MaybeBytesList(Vec<Option<Bytes>>),
    Pairs(Vec<(Bytes, Bytes)>),
    Count(u64),
    Int(i64),
    MaybeClaim(Option<Claim>),
    DeadLetters(Vec<DeadLetter>),
    Stats(StoreStats),
    /// A [`StorageOp::Batch`]'s replies, one per operation, in order.
    Replies(Batch<StorageReply>),
}

thread_local! {
    /// How many [`Batch`]es the current thread is decoding inside one another.
    static BATCH_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// The operations of a [`StorageOp::Batch`] (or the replies of one): a bounded list that may
/// not hold another batch. The refusal happens while decoding, one level down, so hostile
/// bytes nesting batches a million deep cannot exhaust the stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Batch<T>(pub Vec<T>);

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Batch(Vec::new())
    }
}

impl<T> From<Vec<T>> for Batch<T> {
    fn from(v: Vec<T>) -> Self {
        Batch(v)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Batch<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        /// Leaves the depth as it found it, however decoding ends.
        struct Level;
        impl Drop for Level {
            fn drop(&mut self) {
                BATCH_DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
            }
        }
        let outer = BATCH_DEPTH.with(|depth| {
            let outer = depth.get();
            depth.set(outer + 1);
            outer
        });
        let _level = Level;
        if outer > 0 {
            return Err(serde::de::Error::custom(
                "a batch inside a batch; send its operations in the outer batch",
            ));
        }
        crate::storage::bounded_list(d).map(Batch)
    }
}

impl StorageOp {
    /// The operation's row of [`OPS`].
    pub fn info(&self) -> &'static OpInfo {
        &OPS[self.index()]
    }

    /// The operation's name.
    pub fn name(&self) -> &'static str {
        self.info().name
    }

    /// True when the operation changes the store (see [`OpClass`]); a batch does when any of
    /// its operations does, so a batch of reads is sent again freely, like a read.
    pub fn is_write(&self) -> bool {
        match self {
            StorageOp::Batch { ops } => ops.0.iter().any(StorageOp::is_write),
            _ => self.info().class == OpClass::Write,
        }
    }
}

/// The request header in which silo's client names the largest reply it accepts; the server
/// applies the smaller of it and its own limit inside the operation's transaction.
pub const MAX_REPLY_HEADER: &str = "x-silo-max-reply-bytes";

/// How an error travels: an HTTP status, and the `x-silo-error` header naming the kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidInput,
    Config,
    Unauthorized,
    Unavailable,
    Conflict,
    Unsupported,
    Corrupt,
    StorageFull,
    Io,
    Backend,
}

impl ErrorKind {
    const ALL: [ErrorKind; 10] = [
        ErrorKind::InvalidInput,
        ErrorKind::Conflict,
        ErrorKind::Config,
        ErrorKind::Unauthorized,
        ErrorKind::Unavailable,
        ErrorKind::Unsupported,
        ErrorKind::Corrupt,
        ErrorKind::StorageFull,
        ErrorKind::Io,
        ErrorKind::Backend,
    ];

    /// The kind of an error.
    pub fn of(e: &Error) -> Self {
        match e {
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::Config { .. } => ErrorKind::Config,
            Error::Unauthorized { .. } => ErrorKind::Unauthorized,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::StorageFull { .. } => ErrorKind::StorageFull,
            Error::Io { .. } => ErrorKind::Io,
            Error::Backend { .. } => ErrorKind::Backend,
        }
    }

    /// The value of the `x-silo-error` header.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Config => "config",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::StorageFull => "storage_full",
            ErrorKind::Io => "io",
            ErrorKind::Backend => "backend",
        }
    }

    /// The kind a header names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The HTTP status a server answers with.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidInput | ErrorKind::Config => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Conflict => 409,
            ErrorKind::Unsupported => 501,
            ErrorKind::Unavailable => 503,
            ErrorKind::StorageFull => 507,
            ErrorKind::Corrupt | ErrorKind::Io | ErrorKind::Backend => 500,
        }
    }

    /// Rebuilds an error on the client side from its kind and the server's message.
    pub fn into_error(self, message: String) -> Error {
        match self {
            ErrorKind::InvalidInput => Error::InvalidInput { message },
            ErrorKind::Config => Error::Config { message },
            ErrorKind::Unauthorized => Error::Unauthorized { message },
            ErrorKind::Unavailable => Error::Unavailable { message },
            ErrorKind::Conflict => Error::Conflict { message },
            ErrorKind::Unsupported => Error::Unsupported {
                op: message,
                backend: "the server".into(),
            },
            ErrorKind::Corrupt => Error::Corrupt {
                path: "(server)".into(),
                detail: message,
            },
            ErrorKind::StorageFull => Error::StorageFull {
                path: "(server)".into(),
                detail: message,
            },
            ErrorKind::Io | ErrorKind::Backend => Error::Backend {
                backend: "silo server".into(),
                message,
            },
        }
    }
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
}

/// Encodes a message in the wire layout.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>> {
    options()
        .serialize(message)
        .map_err(|e| Error::invalid(format!("cannot encode a wire message: {e}")))
}

/// Decodes a whole message; trailing bytes are an error.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    options()
        .deserialize(bytes)
        .map_err(|e| Error::invalid(format!("cannot decode a wire message: {e}")))
}

fn bytes_list(items: Vec<Bytes>) -> Vec<Vec<u8>> {
    items.into_iter().map(|b| b.0).collect()
}

fn pairs_out(pairs: Vec<KeyValue>) -> Vec<(Bytes, Bytes)> {
    pairs
        .into_iter()
        .map(|(k, v)| (Bytes(k), Bytes(v)))
        .collect()
}

/// Applies `op` to `store` and shapes the reply. (A server gives each tenant its store
/// through a [`PrefixStore`](crate::PrefixStore).)
pub fn apply(store: &dyn FunctionStorage, op: StorageOp) -> Result<StorageReply> {
    use StorageOp as Op;
    use StorageReply as Reply;
    Ok(match op {
        Op::KvGet { scope, key } => Reply::MaybeBytes(store.kv_get(&scope.0, &key.0)?.map(Bytes)),
        Op::KvPut { scope, key, value } => {
            store.kv_put(&scope.0, &key.0, &value.0)?;
            Reply::Unit
        }
        Op::KvDel { scope, key } => {
            store.kv_del(&scope.0, &key.0)?;
            Reply::Unit
        }
        Op::Append {
            scope,
            ns,
            key,
            value,
        } => Reply::Id(store.append(&scope.0, &ns.0, &key.0, &value.0)?),
        Op::Scan {
            scope,
            ns,
            key,
            after_id,
            limit,
        } => Reply::Entries(
            store
                .scan(&scope.0, &ns.0, &key.0, after_id, limit)?
                .into_iter()
                .map(|(id, v)| (id, Bytes(v)))
                .collect(),
        ),
        Op::QueuePush { scope, items } => {
            store.queue_push(&scope.0, &bytes_list(items.0))?;
            Reply::Unit
        }
        Op::QueuePop { scope } => Reply::MaybeBytes(store.queue_pop(&scope.0)?.map(Bytes)),
        Op::Clear { scope } => {
            store.clear(&scope.0)?;
            Reply::Unit
        }
        Op::Gc { ttl_secs } => {
            store.gc(Duration::from_secs(ttl_secs))?;
            Reply::Unit
        }
        Op::StateGet { scope, ns, key } => {
            Reply::MaybeBytes(store.state_get(&scope.0, &ns.0, &key.0)?.map(Bytes))
        }
        Op::StatePut {
            scope,
            ns,
            key,
            value,
        } => {
            store.state_put(&scope.0, &ns.0, &key.0, &value.0)?;
            Reply::Unit
        }
        Op::StateDel { scope, ns, key } => Reply::Bool(store.state_del(&scope.0, &ns.0, &key.0)?),
        Op::StateGetMany { scope, ns, keys } => Reply::MaybeBytesList(
            store
                .state_get_many(&scope.0, &ns.0, &bytes_list(keys.0))?
                .into_iter()
                .map(|v| v.map(Bytes))
                .collect(),
        ),
        Op::StatePutMany { scope, ns, items } => {
            let items: Vec<KeyValue> = items.0.into_iter().map(|(k, v)| (k.0, v.0)).collect();
            store.state_put_many(&scope.0, &ns.0, &items)?;
            Reply::Unit
        }
        Op::StateScan {
            scope,
            ns,
            range,
            reverse,
            limit,
        } => Reply::Pairs(pairs_out(
            store.state_scan(&scope.0, &ns.0, &range, reverse, limit)?,
        )),
        Op::StateDelete {
            scope,
            ns,
            selection,
        } => Reply::Count(store.state_delete(&scope.0, &ns.0, &selection)?),
        Op::StateDrain { scope, ns } => {
            Reply::Pairs(pairs_out(store.state_drain(&scope.0, &ns.0)?))
        }
        Op::CounterGet { scope, ns, key } => {
            Reply::Int(store.counter_get(&scope.0, &ns.0, &key.0)?)
        }
        Op::CounterAdd {
            scope,
            ns,
            key,
            delta,
        } => Reply::Int(store.counter_add(&scope.0, &ns.0, &key.0, delta)?),
        Op::CounterSet {
            scope,
            ns,
            key,
            value,
        } => Reply::Int(store.counter_set(&scope.0, &ns.0, &key.0, value)?),
        Op::CounterDelete { scope, ns, key } => {
            Reply::Int(store.counter_delete(&scope.0, &ns.0, &key.0)?)
        }
        Op::QueueLen { scope } => Reply::Count(store.queue_len(&scope.0)?),
        Op::QueueClear { scope } => Reply::Count(store.queue_clear(&scope.0)?),
        Op::QueueClaim { scope, lease_ms } => {
            Reply::MaybeClaim(store.queue_claim(&scope.0, Duration::from_millis(lease_ms))?)
        }
        Op::QueueAck { scope, claim_id } => Reply::Bool(store.queue_ack(&scope.0, claim_id)?),
        Op::QueueRelease { scope, claim_id } => {
            Reply::Bool(store.queue_release(&scope.0, claim_id)?)
        }
        Op::QueueExtend {
            scope,
            claim_id,
            lease_ms,
        } => {
            Reply::Bool(store.queue_extend(&scope.0, claim_id, Duration::from_millis(lease_ms))?)
        }
        Op::QueueDeadLetters { scope, limit } => {
            Reply::DeadLetters(store.queue_dead_letters(&scope.0, limit)?)
        }
        Op::Sweep { ttl_ms } => Reply::Count(store.gc(Duration::from_millis(ttl_ms))?),
        Op::Stat {} => Reply::Stats(store.stat()?),
        Op::Batch { ops } => Reply::Replies(apply_batch(store, ops.0)?),
        Op::ClearCounted { scope } => Reply::Count(store.clear(&scope.0)?),
    })
}

/// Applies a batch's operations in order on `store` and collects their replies; the first
/// failure ends it, naming the operation. This alone is not atomic: run it inside
/// [`FunctionStorage::apply_atomically`] or `apply_once` (the server does) so that a failure
/// leaves none of the batch behind.
fn apply_batch(store: &dyn FunctionStorage, ops: Vec<StorageOp>) -> Result<Batch<StorageReply>> {
    let mut replies = Vec::with_capacity(ops.len());
    for (i, op) in ops.into_iter().enumerate() {
        let name = op.name();
        if matches!(op, StorageOp::Batch { .. }) {
            return Err(Error::invalid(format!(
                "operation #{i} of the batch is a batch; send its operations in the outer batch"
            )));
        }
        let reply = apply(store, op)
            .map_err(|e| e.within(&format!("operation #{i} ({name}) of the batch")))?;
        replies.push(reply);
    }
    Ok(Batch(replies))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes(s.to_vec())
    }

    /// The layout, written out by hand from SPEC §6, so a serializer change cannot slip by.
    #[test]
    fn core_requests_have_the_vgi_layout() {
        let req = StorageRequest {
            idempotency_key: Some("k1".into()),
            op: StorageOp::Append {
                scope: b(b"s"),
                ns: b(b""),
                key: b(b"ab"),
                value: b(&[0xff]),
            },
        };
        let mut want = vec![1u8]; // Some
        want.extend(2u64.to_le_bytes());
        want.extend(b"k1");
        want.extend(3u32.to_le_bytes()); // Append
        want.extend(1u64.to_le_bytes());
        want.extend(b"s");
        want.extend(0u64.to_le_bytes());
        want.extend(2u64.to_le_bytes());
        want.extend(b"ab");
        want.extend(1u64.to_le_bytes());
        want.push(0xff);
        assert_eq!(encode(&req).unwrap(), want);
        assert_eq!(decode::<StorageRequest>(&want).unwrap(), req);

        let scan = StorageRequest {
            idempotency_key: None,
            op: StorageOp::Scan {
                scope: b(b""),
                ns: b(b""),
                key: b(b""),
                after_id: -1,
                limit: u64::MAX,
            },
        };
        let mut want = vec![0u8];
        want.extend(4u32.to_le_bytes());
        for _ in 0..3 {
            want.extend(0u64.to_le_bytes());
        }
        want.extend((-1i64).to_le_bytes());
        want.extend(u64::MAX.to_le_bytes());
        assert_eq!(encode(&scan).unwrap(), want);

        let push = StorageOp::QueuePush {
            scope: b(b"q"),
            items: List(vec![b(b"x"), b(b"")]),
        };
        let mut want = 5u32.to_le_bytes().to_vec();
        want.extend(1u64.to_le_bytes());
        want.extend(b"q");
        want.extend(2u64.to_le_bytes());
        want.extend(1u64.to_le_bytes());
        want.extend(b"x");
        want.extend(0u64.to_le_bytes());
        assert_eq!(encode(&push).unwrap(), want);
        assert_eq!(
            encode(&StorageOp::Gc { ttl_secs: 7 }).unwrap(),
            [&8u32.to_le_bytes()[..], &7u64.to_le_bytes()].concat()
        );
    }

    #[test]
    fn core_replies_have_the_vgi_layout() {
        assert_eq!(encode(&StorageReply::Unit).unwrap(), 0u32.to_le_bytes());
        assert_eq!(
            encode(&StorageReply::MaybeBytes(None)).unwrap(),
            [1, 0, 0, 0, 0]
        );
        let some = encode(&StorageReply::MaybeBytes(Some(b(b"hi")))).unwrap();
        assert_eq!(
            some,
            [&1u32.to_le_bytes()[..], &[1], &2u64.to_le_bytes(), b"hi"].concat()
        );
        assert_eq!(
            encode(&StorageReply::Id(-2)).unwrap(),
            [&2u32.to_le_bytes()[..], &(-2i64).to_le_bytes()].concat()
        );
        let entries = encode(&StorageReply::Entries(vec![(5, b(b"v"))])).unwrap();
        assert_eq!(
            entries,
            [
                &3u32.to_le_bytes()[..],
                &1u64.to_le_bytes(),
                &5i64.to_le_bytes(),
                &1u64.to_le_bytes(),
                b"v"
            ]
            .concat()
        );
    }

    /// The name of a reply's variant, from its `Debug` form.
    fn reply_name(reply: &StorageReply) -> String {
        let debug = format!("{reply:?}");
        debug.split(['(', ' ', '{']).next().unwrap().to_string()
    }

    #[test]
    fn the_table_is_in_wire_order_and_complete() {
        let examples = StorageOp::examples();
        assert_eq!(examples.len(), OPS.len());
        assert_eq!(OP_NAMES.len(), OPS.len());
        for (i, (op, info)) in examples.iter().zip(OPS).enumerate() {
            assert_eq!(info.index, i, "{} is out of order in the table", info.name);
            assert_eq!(op.index(), i);
            assert_eq!(op.info(), info);
            assert_eq!(OP_NAMES[i], info.name);
            let bytes = encode(op).unwrap();
            let on_wire = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(on_wire, i, "{} is variant {on_wire} on the wire", info.name);
            assert_eq!(
                info.name,
                format!("{op:?}").split([' ', '{']).next().unwrap()
            );
            assert_eq!(info.scoped, op.scope().is_some(), "{}", info.name);
        }
    }

    /// Every operation goes through encode → decode → apply on the local backends and is
    /// answered with the reply its table row names.
    #[test]
    fn every_op_roundtrips_and_applies_on_every_local_backend() {
        let dir = tempfile::tempdir().unwrap();
        let mut stores: Vec<Box<dyn FunctionStorage>> = vec![Box::new(crate::MemoryStorage::new())];
        #[cfg(feature = "sqlite")]
        stores.push(Box::new(
            crate::SqliteStorage::open(dir.path().join("s.db"), Default::default()).unwrap(),
        ));
        for store in &stores {
            for mut op in StorageOp::examples() {
                if let Some(scope) = op.scope_mut() {
                    *scope = b(b"roundtrip");
                }
                if let StorageOp::QueueClaim { lease_ms, .. }
                | StorageOp::QueueExtend { lease_ms, .. } = &mut op
                {
                    *lease_ms = 1000;
                }
                for key in [None, Some("k".to_string())] {
                    let request = StorageRequest {
                        idempotency_key: key,
                        op: op.clone(),
                    };
                    let bytes = encode(&request).unwrap();
                    let back: StorageRequest = decode(&bytes).unwrap();
                    assert_eq!(back, request, "{} round-trips", op.name());
                }
                let reply = apply(&**store, op.clone())
                    .unwrap_or_else(|e| panic!("{} on {store:?}: {e}", op.name()));
                assert_eq!(reply_name(&reply), op.info().reply, "{}", op.name());
                let reply_bytes = encode(&reply).unwrap();
                assert_eq!(decode::<StorageReply>(&reply_bytes).unwrap(), reply);
            }
        }
    }

    #[test]
    fn lists_longer_than_the_limit_are_refused_before_allocation() {
        let mut body = vec![0u8]; // no idempotency key
        body.extend(5u32.to_le_bytes()); // QueuePush
        body.extend(1u64.to_le_bytes());
        body.push(b'q');
        body.extend((MAX_LIST_LEN as u64 + 1).to_le_bytes());
        let err = decode::<StorageRequest>(&body).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
        let mut body = vec![0u8];
        body.extend(15u32.to_le_bytes()); // StateDelete
        body.extend(0u64.to_le_bytes());
        body.extend(0u64.to_le_bytes());
        body.extend(0u32.to_le_bytes()); // Selection::Keys
        body.extend((MAX_LIST_LEN as u64 + 1).to_le_bytes());
        let err = decode::<StorageRequest>(&body).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert!(decode::<StorageRequest>(&[]).is_err());
        assert!(
            decode::<StorageRequest>(&[0, 99, 0, 0, 0]).is_err(),
            "unknown variant"
        );
        // A length prefix far beyond the body must fail, not allocate.
        let mut huge = vec![0u8];
        huge.extend(0u32.to_le_bytes());
        huge.extend(u64::MAX.to_le_bytes());
        assert!(decode::<StorageRequest>(&huge).is_err());
        let mut trailing = encode(&StorageRequest {
            idempotency_key: None,
            op: StorageOp::Stat {},
        })
        .unwrap();
        trailing.push(0);
        assert!(
            decode::<StorageRequest>(&trailing).is_err(),
            "trailing bytes"
        );
    }
}
