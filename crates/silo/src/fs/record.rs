//! The records inside a frame of the `fs:` log: the effects of operations, already decided
//! (ids assigned, times fixed, preconditions checked), so that folding them into an index is
//! deterministic — the same in the process that wrote them, in every process that catches up
//! on them, and on reopen. A frame holds the records of one operation (or of one `apply_once`
//! with its reply), so it applies whole or not at all.
//!
//! Encoding, little-endian: a tag byte, then the fields in order; byte strings are a u32
//! length and the bytes; integers are fixed width. Values are located by their offset inside
//! the payload, so the index can point at them on disk instead of holding them.

/// Where a value lies inside a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub pos: usize,
    pub len: usize,
}

/// One effect. `V` is the value: bytes when writing, a [`Span`] when reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Rec<'a, V> {
    /// The scope exists and was written at `at` (ms).
    Touch {
        scope: &'a [u8],
        at: i64,
    },
    Put {
        scope: &'a [u8],
        ns: &'a [u8],
        key: &'a [u8],
        value: V,
    },
    Del {
        scope: &'a [u8],
        ns: &'a [u8],
        key: &'a [u8],
    },
    /// A whole state namespace removed.
    DropNs {
        scope: &'a [u8],
        ns: &'a [u8],
    },
    Append {
        scope: &'a [u8],
        ns: &'a [u8],
        key: &'a [u8],
        id: i64,
        value: V,
    },
    CounterSet {
        scope: &'a [u8],
        ns: &'a [u8],
        key: &'a [u8],
        value: i64,
    },
    CounterDel {
        scope: &'a [u8],
        ns: &'a [u8],
        key: &'a [u8],
    },
    /// A queue item with its whole delivery state (a push has 0 attempts and no claim).
    Item {
        scope: &'a [u8],
        id: i64,
        value: V,
        attempts: u32,
        visible_at: i64,
        /// 0 = not claimed.
        claim: i64,
    },
    /// A queue item popped or acked.
    Remove {
        scope: &'a [u8],
        id: i64,
    },
    Claim {
        scope: &'a [u8],
        id: i64,
        claim: i64,
        visible_at: i64,
    },
    Release {
        scope: &'a [u8],
        id: i64,
    },
    Extend {
        scope: &'a [u8],
        id: i64,
        visible_at: i64,
    },
    /// A queue item moved to the dead letters at `at`.
    Bury {
        scope: &'a [u8],
        id: i64,
        at: i64,
    },
    /// A dead letter with its whole state (compacted bases).
    Dead {
        scope: &'a [u8],
        value: V,
        attempts: u32,
        at: i64,
    },
    QueueClear {
        scope: &'a [u8],
    },
    /// The scope and everything in it removed.
    Clear {
        scope: &'a [u8],
    },
    /// An `apply_once` key answered with `reply` at `at`.
    Once {
        key: &'a [u8],
        fingerprint: &'a [u8],
        reply: V,
        at: i64,
    },
    /// `apply_once` keys recorded before `cutoff` forgotten.
    ExpireOnce {
        cutoff: i64,
    },
    /// The store-wide id sequences (compacted bases; live frames advance them by folding).
    Seq {
        log: i64,
        item: i64,
        claim: i64,
    },
    /// When the frame was written (ms), in a frame whose other records carry no time (a
    /// clear, a sweep): so that restoring to a moment knows which side of it every frame is.
    At {
        at: i64,
    },
    /// The segment ends here; the log continues in the next segment file.
    Seal,
    /// The last record of a compacted base: the base is whole.
    End,
}

const TOUCH: u8 = 1;
const PUT: u8 = 2;
const DEL: u8 = 3;
const DROP_NS: u8 = 4;
const APPEND: u8 = 5;
const COUNTER_SET: u8 = 6;
const COUNTER_DEL: u8 = 7;
const ITEM: u8 = 8;
const REMOVE: u8 = 9;
const CLAIM: u8 = 10;
const RELEASE: u8 = 11;
const EXTEND: u8 = 12;
const BURY: u8 = 13;
const DEAD: u8 = 14;
const QUEUE_CLEAR: u8 = 15;
const CLEAR: u8 = 16;
const ONCE: u8 = 17;
const EXPIRE_ONCE: u8 = 18;
const SEQ: u8 = 19;
const SEAL: u8 = 20;
const END: u8 = 21;
const AT: u8 = 22;

/// Appends records to a payload.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    pub buf: Vec<u8>,
}

impl Encoder {
    fn bytes(&mut self, b: &[u8]) {
        // Names and values are checked against limits far below 4 GiB before they get here.
        self.buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(b);
    }

    fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Encodes `rec`; returns where its value (if any) landed in the payload.
    pub fn push(&mut self, rec: &Rec<'_, &[u8]>) -> Option<Span> {
        let mut value_at = None;
        let mut value = |enc: &mut Encoder, v: &[u8]| {
            enc.u32(v.len() as u32);
            value_at = Some(Span {
                pos: enc.buf.len(),
                len: v.len(),
            });
            enc.buf.extend_from_slice(v);
        };
        match *rec {
            Rec::Touch { scope, at } => {
                self.buf.push(TOUCH);
                self.bytes(scope);
                self.i64(at);
            }
            Rec::Put {
                scope,
                ns,
                key,
                value: v,
            } => {
                self.buf.push(PUT);
                self.bytes(scope);
                self.bytes(ns);
                self.bytes(key);
                value(self, v);
            }
            Rec::Del { scope, ns, key } => {
                self.buf.push(DEL);
                self.bytes(scope);
                self.bytes(ns);
                self.bytes(key);
            }
            Rec::DropNs { scope, ns } => {
                self.buf.push(DROP_NS);
                self.bytes(scope);
                self.bytes(ns);
            }
            Rec::Append {
                scope,
                ns,
                key,
                id,
                value: v,
            } => {
                self.buf.push(APPEND);
                self.bytes(scope);
                self.bytes(ns);
                self.bytes(key);
                self.i64(id);
                value(self, v);
            }
            Rec::CounterSet {
                scope,
                ns,
                key,
                value: v,
            } => {
                self.buf.push(COUNTER_SET);
                self.bytes(scope);
                self.bytes(ns);
                self.bytes(key);
                self.i64(v);
            }
            Rec::CounterDel { scope, ns, key } => {
                self.buf.push(COUNTER_DEL);
                self.bytes(scope);
                self.bytes(ns);
                self.bytes(key);
            }
            Rec::Item {
                scope,
                id,
                value: v,
                attempts,
                visible_at,
                claim,
            } => {
                self.buf.push(ITEM);
                self.bytes(scope);
                self.i64(id);
                self.u32(attempts);
                self.i64(visible_at);
                self.i64(claim);
                value(self, v);
            }
            Rec::Remove { scope, id } => {
                self.buf.push(REMOVE);
                self.bytes(scope);
                self.i64(id);
            }
            Rec::Claim {
                scope,
                id,
                claim,
                visible_at,
            } => {
                self.buf.push(CLAIM);
                self.bytes(scope);
                self.i64(id);
                self.i64(claim);
                self.i64(visible_at);
            }
            Rec::Release { scope, id } => {
                self.buf.push(RELEASE);
                self.bytes(scope);
                self.i64(id);
            }
            Rec::Extend {
                scope,
                id,
                visible_at,
            } => {
                self.buf.push(EXTEND);
                self.bytes(scope);
                self.i64(id);
                self.i64(visible_at);
            }
            Rec::Bury { scope, id, at } => {
                self.buf.push(BURY);
                self.bytes(scope);
                self.i64(id);
                self.i64(at);
            }
            Rec::Dead {
                scope,
                value: v,
                attempts,
                at,
            } => {
                self.buf.push(DEAD);
                self.bytes(scope);
                self.u32(attempts);
                self.i64(at);
                value(self, v);
            }
            Rec::QueueClear { scope } => {
                self.buf.push(QUEUE_CLEAR);
                self.bytes(scope);
            }
            Rec::Clear { scope } => {
                self.buf.push(CLEAR);
                self.bytes(scope);
            }
            Rec::Once {
                key,
                fingerprint,
                reply,
                at,
            } => {
                self.buf.push(ONCE);
                self.bytes(key);
                self.bytes(fingerprint);
                self.i64(at);
                value(self, reply);
            }
            Rec::ExpireOnce { cutoff } => {
                self.buf.push(EXPIRE_ONCE);
                self.i64(cutoff);
            }
            Rec::Seq { log, item, claim } => {
                self.buf.push(SEQ);
                self.i64(log);
                self.i64(item);
                self.i64(claim);
            }
            Rec::At { at } => {
                self.buf.push(AT);
                self.i64(at);
            }
            Rec::Seal => self.buf.push(SEAL),
            Rec::End => self.buf.push(END),
        }
        value_at
    }
}

/// A value's length, whichever form it has (bytes when writing, a [`Span`] when reading).
pub(crate) trait ValueLen {
    fn value_len(&self) -> usize;
}

impl ValueLen for Span {
    fn value_len(&self) -> usize {
        self.len
    }
}

impl ValueLen for &[u8] {
    fn value_len(&self) -> usize {
        self.len()
    }
}

impl<V: ValueLen> Rec<'_, V> {
    /// How many bytes [`Encoder::push`] makes of this record, without encoding it: the index
    /// sums it over what it holds to know how large a base written now would be (SPEC §5,
    /// compaction). Kept beside the encoder so a change to one shows in the other (a test
    /// compares them for every record).
    pub fn encoded_len(&self) -> u64 {
        // A tag byte; a byte string or value is a u32 length and its bytes.
        const I64: usize = 8;
        const U32: usize = 4;
        let b = |x: &[u8]| U32 + x.len();
        let v = |x: &V| U32 + x.value_len();
        let fields = match self {
            Rec::Touch { scope, .. } => b(scope) + I64,
            Rec::Put {
                scope,
                ns,
                key,
                value,
            } => b(scope) + b(ns) + b(key) + v(value),
            Rec::Del { scope, ns, key } | Rec::CounterDel { scope, ns, key } => {
                b(scope) + b(ns) + b(key)
            }
            Rec::DropNs { scope, ns } => b(scope) + b(ns),
            Rec::Append {
                scope,
                ns,
                key,
                value,
                ..
            } => b(scope) + b(ns) + b(key) + I64 + v(value),
            Rec::CounterSet { scope, ns, key, .. } => b(scope) + b(ns) + b(key) + I64,
            Rec::Item { scope, value, .. } => b(scope) + I64 + U32 + I64 + I64 + v(value),
            Rec::Remove { scope, .. } | Rec::Release { scope, .. } => b(scope) + I64,
            Rec::Claim { scope, .. } => b(scope) + 3 * I64,
            Rec::Extend { scope, .. } | Rec::Bury { scope, .. } => b(scope) + 2 * I64,
            Rec::Dead { scope, value, .. } => b(scope) + U32 + I64 + v(value),
            Rec::QueueClear { scope } | Rec::Clear { scope } => b(scope),
            Rec::Once {
                key,
                fingerprint,
                reply,
                ..
            } => b(key) + b(fingerprint) + I64 + v(reply),
            Rec::ExpireOnce { .. } | Rec::At { .. } => I64,
            Rec::Seq { .. } => 3 * I64,
            Rec::Seal | Rec::End => 0,
        };
        (1 + fields) as u64
    }
}

/// Reads the records of one payload in order.
#[derive(Debug)]
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    at: usize,
}

/// Why a payload could not be read: its checksum held, so a newer or foreign writer made it.
#[derive(Debug)]
pub(crate) struct Malformed {
    pub at: usize,
    pub detail: String,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, at: 0 }
    }

    fn fail<T>(&self, detail: impl Into<String>) -> Result<T, Malformed> {
        Err(Malformed {
            at: self.at,
            detail: detail.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let out = &self.buf[self.at..end];
                self.at = end;
                Ok(out)
            }
            None => self.fail(format!("a field of {n} bytes runs past the payload")),
        }
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, Malformed> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn value(&mut self) -> Result<Span, Malformed> {
        let len = self.u32()? as usize;
        let pos = self.at;
        self.take(len)?;
        Ok(Span { pos, len })
    }

    /// The next record, or `None` at the end of the payload.
    pub fn next_record(&mut self) -> Result<Option<Rec<'a, Span>>, Malformed> {
        if self.at == self.buf.len() {
            return Ok(None);
        }
        let tag = self.take(1)?[0];
        let rec = match tag {
            TOUCH => Rec::Touch {
                scope: self.bytes()?,
                at: self.i64()?,
            },
            PUT => Rec::Put {
                scope: self.bytes()?,
                ns: self.bytes()?,
                key: self.bytes()?,
                value: self.value()?,
            },
            DEL => Rec::Del {
                scope: self.bytes()?,
                ns: self.bytes()?,
                key: self.bytes()?,
            },
            DROP_NS => Rec::DropNs {
                scope: self.bytes()?,
                ns: self.bytes()?,
            },
            APPEND => Rec::Append {
                scope: self.bytes()?,
                ns: self.bytes()?,
                key: self.bytes()?,
                id: self.i64()?,
                value: self.value()?,
            },
            COUNTER_SET => Rec::CounterSet {
                scope: self.bytes()?,
                ns: self.bytes()?,
                key: self.bytes()?,
                value: self.i64()?,
            },
            COUNTER_DEL => Rec::CounterDel {
                scope: self.bytes()?,
                ns: self.bytes()?,
                key: self.bytes()?,
            },
            ITEM => Rec::Item {
                scope: self.bytes()?,
                id: self.i64()?,
                attempts: self.u32()?,
                visible_at: self.i64()?,
                claim: self.i64()?,
                value: self.value()?,
            },
            REMOVE => Rec::Remove {
                scope: self.bytes()?,
                id: self.i64()?,
            },
            CLAIM => Rec::Claim {
                scope: self.bytes()?,
                id: self.i64()?,
                claim: self.i64()?,
                visible_at: self.i64()?,
            },
            RELEASE => Rec::Release {
                scope: self.bytes()?,
                id: self.i64()?,
            },
            EXTEND => Rec::Extend {
                scope: self.bytes()?,
                id: self.i64()?,
                visible_at: self.i64()?,
            },
            BURY => Rec::Bury {
                scope: self.bytes()?,
                id: self.i64()?,
                at: self.i64()?,
            },
            DEAD => Rec::Dead {
                scope: self.bytes()?,
                attempts: self.u32()?,
                at: self.i64()?,
                value: self.value()?,
            },
            QUEUE_CLEAR => Rec::QueueClear {
                scope: self.bytes()?,
            },
            CLEAR => Rec::Clear {
                scope: self.bytes()?,
            },
            ONCE => Rec::Once {
                key: self.bytes()?,
                fingerprint: self.bytes()?,
                at: self.i64()?,
                reply: self.value()?,
            },
            EXPIRE_ONCE => Rec::ExpireOnce {
                cutoff: self.i64()?,
            },
            SEQ => Rec::Seq {
                log: self.i64()?,
                item: self.i64()?,
                claim: self.i64()?,
            },
            AT => Rec::At { at: self.i64()? },
            SEAL => Rec::Seal,
            END => Rec::End,
            other => {
                self.at -= 1;
                return self.fail(format!(
                    "unknown record tag {other} (written by a newer silo?)"
                ));
            }
        };
        Ok(Some(rec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `encoded_len` is what `push` writes, for every record (the live-bytes count of the
    /// index, and so the compaction policy, rests on it).
    #[test]
    fn encoded_len_matches_the_encoder_for_every_record() {
        let (scope, ns, key, value): (&[u8], &[u8], &[u8], &[u8]) =
            (b"scope-1", b"ns", b"a key", b"a value of some length");
        let recs: Vec<Rec<'_, &[u8]>> = vec![
            Rec::Touch { scope, at: 1 },
            Rec::Put {
                scope,
                ns,
                key,
                value,
            },
            Rec::Del { scope, ns, key },
            Rec::DropNs { scope, ns },
            Rec::Append {
                scope,
                ns,
                key,
                id: 7,
                value,
            },
            Rec::CounterSet {
                scope,
                ns,
                key,
                value: -3,
            },
            Rec::CounterDel { scope, ns, key },
            Rec::Item {
                scope,
                id: 1,
                value,
                attempts: 2,
                visible_at: 3,
                claim: 4,
            },
            Rec::Remove { scope, id: 1 },
            Rec::Claim {
                scope,
                id: 1,
                claim: 2,
                visible_at: 3,
            },
            Rec::Release { scope, id: 1 },
            Rec::Extend {
                scope,
                id: 1,
                visible_at: 2,
            },
            Rec::Bury {
                scope,
                id: 1,
                at: 2,
            },
            Rec::Dead {
                scope,
                value,
                attempts: 1,
                at: 2,
            },
            Rec::QueueClear { scope },
            Rec::Clear { scope },
            Rec::Once {
                key,
                fingerprint: b"fp",
                reply: value,
                at: 5,
            },
            Rec::ExpireOnce { cutoff: 9 },
            Rec::Seq {
                log: 1,
                item: 2,
                claim: 3,
            },
            Rec::At { at: 4 },
            Rec::Seal,
            Rec::End,
        ];
        for rec in &recs {
            let mut enc = Encoder::default();
            enc.push(rec);
            assert_eq!(enc.buf.len() as u64, rec.encoded_len(), "{rec:?}");
            // The form the index measures (read back, values as spans) agrees too.
            let read = Decoder::new(&enc.buf).next_record().unwrap().unwrap();
            assert_eq!(read.encoded_len(), rec.encoded_len(), "{rec:?}");
        }
    }
}
