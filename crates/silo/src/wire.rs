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

/// One request: an optional idempotency key and the operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageRequest {
    /// Set on operations whose effect or reply would change if applied twice; the server
    /// applies a keyed request at most once and replays its reply to retries.
    pub idempotency_key: Option<String>,
    /// The operation.
    pub op: StorageOp,
}

/// Every operation. The order of variants is the wire format: append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageOp {
    // ---- 0..=8: the `vgi` crate's operations ----
    KvGet {
        scope: Bytes,
        key: Bytes,
    },
    KvPut {
        scope: Bytes,
        key: Bytes,
        value: Bytes,
    },
    KvDel {
        scope: Bytes,
        key: Bytes,
    },
    Append {
        scope: Bytes,
        ns: Bytes,
        key: Bytes,
        value: Bytes,
    },
    Scan {
        scope: Bytes,
        ns: Bytes,
        key: Bytes,
        after_id: i64,
        limit: u64,
    },
    QueuePush {
        scope: Bytes,
        items: Vec<Bytes>,
    },
    QueuePop {
        scope: Bytes,
    },
    Clear {
        scope: Bytes,
    },
    Gc {
        ttl_secs: u64,
    },
    // ---- 9..: silo's extensions ----
    StateGet {
        scope: Bytes,
        ns: Bytes,
        key: Bytes,
    },
    StatePut {
        scope: Bytes,
        ns: Bytes,
        key: Bytes,
        value: Bytes,
    },
    StateDel {
        scope: Bytes,
        ns: Bytes,
        key: Bytes,
    },
    StateGetMany {
        scope: Bytes,
        ns: Bytes,
        keys: Vec<Bytes>,
    },
    StatePutMany {
        scope: Bytes,
        ns: Bytes,
        items: Vec<(Bytes, Bytes)>,
    },
    StateScan {
        scope: Bytes,
        ns: Bytes,
        range: KeyRange,
        reverse: bool,
        limit: u64,
    },
    StateDelete {
        scope: Bytes,
        ns: Bytes,
        selection: Selection,
    },
    StateDrain {
        scope: Bytes,
        ns: Bytes,
    },
    CounterGet {
        scope: Bytes,
        ns: Bytes,
        key: Bytes,
    },
    CounterAdd {
        scope: Bytes,
        ns: Bytes,
        key: Bytes,
        delta: i64,
    },
    CounterSet {
        scope: Bytes,
        ns: Bytes,
        key: Bytes,
        value: i64,
    },
    CounterDelete {
        scope: Bytes,
        ns: Bytes,
        key: Bytes,
    },
    QueueLen {
        scope: Bytes,
    },
    QueueClear {
        scope: Bytes,
    },
    QueueClaim {
        scope: Bytes,
        lease_ms: u64,
    },
    QueueAck {
        scope: Bytes,
        claim_id: i64,
    },
    QueueRelease {
        scope: Bytes,
        claim_id: i64,
    },
    QueueExtend {
        scope: Bytes,
        claim_id: i64,
        lease_ms: u64,
    },
    QueueDeadLetters {
        scope: Bytes,
        limit: u64,
    },
    Sweep {
        ttl_ms: u64,
    },
    Stat,
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
}

/// Names of the operations, in variant order (for metrics and `GET /v1/info`).
pub const OP_NAMES: [&str; 30] = [
    "KvGet",
    "KvPut",
    "KvDel",
    "Append",
    "Scan",
    "QueuePush",
    "QueuePop",
    "Clear",
    "Gc",
    "StateGet",
    "StatePut",
    "StateDel",
    "StateGetMany",
    "StatePutMany",
    "StateScan",
    "StateDelete",
    "StateDrain",
    "CounterGet",
    "CounterAdd",
    "CounterSet",
    "CounterDelete",
    "QueueLen",
    "QueueClear",
    "QueueClaim",
    "QueueAck",
    "QueueRelease",
    "QueueExtend",
    "QueueDeadLetters",
    "Sweep",
    "Stat",
];

impl StorageOp {
    /// The variant index (its number on the wire).
    pub fn index(&self) -> usize {
        use StorageOp::*;
        match self {
            KvGet { .. } => 0,
            KvPut { .. } => 1,
            KvDel { .. } => 2,
            Append { .. } => 3,
            Scan { .. } => 4,
            QueuePush { .. } => 5,
            QueuePop { .. } => 6,
            Clear { .. } => 7,
            Gc { .. } => 8,
            StateGet { .. } => 9,
            StatePut { .. } => 10,
            StateDel { .. } => 11,
            StateGetMany { .. } => 12,
            StatePutMany { .. } => 13,
            StateScan { .. } => 14,
            StateDelete { .. } => 15,
            StateDrain { .. } => 16,
            CounterGet { .. } => 17,
            CounterAdd { .. } => 18,
            CounterSet { .. } => 19,
            CounterDelete { .. } => 20,
            QueueLen { .. } => 21,
            QueueClear { .. } => 22,
            QueueClaim { .. } => 23,
            QueueAck { .. } => 24,
            QueueRelease { .. } => 25,
            QueueExtend { .. } => 26,
            QueueDeadLetters { .. } => 27,
            Sweep { .. } => 28,
            Stat => 29,
        }
    }

    /// The operation's name.
    pub fn name(&self) -> &'static str {
        OP_NAMES[self.index()]
    }

    /// True when applying the operation twice could change its effect or its reply, so a
    /// retry must carry an idempotency key.
    pub fn needs_idempotency_key(&self) -> bool {
        use StorageOp::*;
        !matches!(
            self,
            KvGet { .. }
                | KvPut { .. }
                | KvDel { .. }
                | Scan { .. }
                | Clear { .. }
                | Gc { .. }
                | StateGet { .. }
                | StatePut { .. }
                | StateGetMany { .. }
                | StatePutMany { .. }
                | StateScan { .. }
                | CounterGet { .. }
                | QueueLen { .. }
                | QueueDeadLetters { .. }
                | Stat
        )
    }

    /// Prefixes every scope the operation names with `prefix` (a server's tenant).
    fn prefix_scope(&mut self, prefix: &[u8]) {
        use StorageOp::*;
        let scope = match self {
            KvGet { scope, .. }
            | KvPut { scope, .. }
            | KvDel { scope, .. }
            | Append { scope, .. }
            | Scan { scope, .. }
            | QueuePush { scope, .. }
            | QueuePop { scope }
            | Clear { scope }
            | StateGet { scope, .. }
            | StatePut { scope, .. }
            | StateDel { scope, .. }
            | StateGetMany { scope, .. }
            | StatePutMany { scope, .. }
            | StateScan { scope, .. }
            | StateDelete { scope, .. }
            | StateDrain { scope, .. }
            | CounterGet { scope, .. }
            | CounterAdd { scope, .. }
            | CounterSet { scope, .. }
            | CounterDelete { scope, .. }
            | QueueLen { scope }
            | QueueClear { scope }
            | QueueClaim { scope, .. }
            | QueueAck { scope, .. }
            | QueueRelease { scope, .. }
            | QueueExtend { scope, .. }
            | QueueDeadLetters { scope, .. } => scope,
            Gc { .. } | Sweep { .. } | Stat => return,
        };
        scope.0.splice(0..0, prefix.iter().copied());
    }
}

/// How an error travels: an HTTP status, and the `x-silo-error` header naming the kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidInput,
    Config,
    Unauthorized,
    Unavailable,
    Unsupported,
    Corrupt,
    StorageFull,
    Io,
    Backend,
}

impl ErrorKind {
    const ALL: [ErrorKind; 9] = [
        ErrorKind::InvalidInput,
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

/// Applies `op` to `store`, with every scope prefixed by `scope_prefix` (empty for none; a
/// tenant's prefix on a multi-tenant server), and shapes the reply.
pub fn apply(
    store: &dyn FunctionStorage,
    scope_prefix: &[u8],
    mut op: StorageOp,
) -> Result<StorageReply> {
    use StorageOp as Op;
    use StorageReply as Reply;
    if !scope_prefix.is_empty() {
        if matches!(op, Op::Stat) {
            return Err(Error::Unauthorized {
                message: "Stat covers every tenant; it needs the server's admin token".into(),
            });
        }
        op.prefix_scope(scope_prefix);
    }
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
            store.queue_push(&scope.0, &bytes_list(items))?;
            Reply::Unit
        }
        Op::QueuePop { scope } => Reply::MaybeBytes(store.queue_pop(&scope.0)?.map(Bytes)),
        Op::Clear { scope } => {
            store.clear(&scope.0)?;
            Reply::Unit
        }
        Op::Gc { ttl_secs } => {
            store.gc_prefix(scope_prefix, Duration::from_secs(ttl_secs))?;
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
                .state_get_many(&scope.0, &ns.0, &bytes_list(keys))?
                .into_iter()
                .map(|v| v.map(Bytes))
                .collect(),
        ),
        Op::StatePutMany { scope, ns, items } => {
            let items: Vec<KeyValue> = items.into_iter().map(|(k, v)| (k.0, v.0)).collect();
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
        Op::Sweep { ttl_ms } => {
            Reply::Count(store.gc_prefix(scope_prefix, Duration::from_millis(ttl_ms))?)
        }
        Op::Stat => Reply::Stats(store.stat()?),
    })
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
            items: vec![b(b"x"), b(b"")],
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

    #[test]
    fn every_op_name_matches_its_index() {
        let ops = [
            StorageOp::KvGet {
                scope: b(b""),
                key: b(b""),
            },
            StorageOp::Gc { ttl_secs: 0 },
            StorageOp::StateGet {
                scope: b(b""),
                ns: b(b""),
                key: b(b""),
            },
            StorageOp::Sweep { ttl_ms: 0 },
            StorageOp::Stat,
        ];
        for op in ops {
            let bytes = encode(&op).unwrap();
            let index = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(index, op.index());
            assert_eq!(
                op.name(),
                format!("{op:?}").split([' ', '{']).next().unwrap()
            );
        }
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
            op: StorageOp::Stat,
        })
        .unwrap();
        trailing.push(0);
        assert!(
            decode::<StorageRequest>(&trailing).is_err(),
            "trailing bytes"
        );
    }

    #[test]
    fn tenant_prefix_applies_to_scopes_and_sweeps() {
        let store = crate::MemoryStorage::new();
        let put = StorageOp::KvPut {
            scope: b(b"s"),
            key: b(b"k"),
            value: b(b"v"),
        };
        apply(&store, b"tenant:a\0", put).unwrap();
        assert_eq!(
            store.kv_get(b"tenant:a\0s", b"k").unwrap(),
            Some(b"v".to_vec())
        );
        assert_eq!(store.kv_get(b"s", b"k").unwrap(), None);
        let get = StorageOp::KvGet {
            scope: b(b"s"),
            key: b(b"k"),
        };
        assert_eq!(
            apply(&store, b"tenant:b\0", get).unwrap(),
            StorageReply::MaybeBytes(None)
        );
        assert!(matches!(
            apply(&store, b"tenant:a\0", StorageOp::Stat),
            Err(Error::Unauthorized { .. })
        ));
        store.kv_put(b"other", b"k", b"v").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            apply(&store, b"tenant:b\0", StorageOp::Sweep { ttl_ms: 0 }).unwrap(),
            StorageReply::Count(0)
        );
        assert_eq!(
            apply(&store, b"tenant:a\0", StorageOp::Sweep { ttl_ms: 0 }).unwrap(),
            StorageReply::Count(1)
        );
        assert!(store.kv_get(b"other", b"k").unwrap().is_some());
    }
}
