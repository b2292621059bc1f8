//! The frame log: an append-only sequence of checksummed frames with strictly increasing
//! frame numbers, on any [`Store`]. Opening scans the image, keeps every whole frame, cuts a
//! torn tail (an append that a crash interrupted), and refuses damage anywhere else.
//!
//! Frame layout (little-endian), 20 bytes of header then the payload:
//!
//! ```text
//! magic  u32  "SLF1"
//! len    u32  payload length
//! number u64  frame number: the first frame's, then +1 per frame
//! crc    u32  CRC-32C of len, number and payload
//! payload
//! ```
//!
//! Only the last append can be torn, so a frame that fails its checks with no whole frame
//! anywhere after it is a torn tail and is cut; one with a whole frame after it is corruption
//! ([`LogError::Corrupt`] with its offset), never skipped. (Damage inside the very last frame
//! looks like a torn write; the engine above decides with its sync record.)

use std::fmt;
use std::io;

use crate::store::Store;

/// The frame magic, "SLF1".
pub const MAGIC: u32 = u32::from_le_bytes(*b"SLF1");

/// Bytes before each payload.
pub const HEADER: usize = 20;

/// The largest payload a frame may carry (the length field's range, less a margin).
pub const MAX_PAYLOAD: usize = (u32::MAX - 1024) as usize;

/// What opening or reading a frame log can fail with.
#[derive(Debug)]
pub enum LogError {
    /// The store failed.
    Io(io::Error),
    /// Bytes that are not a whole, valid frame where one must be.
    Corrupt { offset: u64, detail: String },
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Io(e) => write!(f, "{e}"),
            LogError::Corrupt { offset, detail } => {
                write!(f, "corrupt frame at offset {offset}: {detail}")
            }
        }
    }
}

impl std::error::Error for LogError {}

impl From<io::Error> for LogError {
    fn from(e: io::Error) -> Self {
        LogError::Io(e)
    }
}

/// Where a frame lies in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef {
    /// Its number.
    pub number: u64,
    /// Offset of its header.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
}

impl FrameRef {
    /// Offset of its payload.
    pub fn payload_offset(&self) -> u64 {
        self.offset + HEADER as u64
    }

    /// Offset just past it.
    pub fn end(&self) -> u64 {
        self.payload_offset() + u64::from(self.len)
    }
}

/// What a catch-up found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Whole frames kept.
    pub frames: Vec<FrameRef>,
    /// Bytes of torn tail cut off.
    pub cut_bytes: u64,
    /// Bytes past the last whole frame that were left in place (a reader does not cut).
    pub torn_bytes: u64,
    /// Whole frames remain past these: catch up again for the rest (one
    /// [`FrameLog::catch_up_some`] reads about [`CATCH_UP_BYTES`], so a long backlog never sits
    /// in memory whole).
    pub more: bool,
    /// The bytes read, from `bytes_at` on: the frames' payloads are sliced from here.
    bytes: Vec<u8>,
    bytes_at: u64,
}

impl Recovery {
    /// The payload of one of [`Recovery::frames`], from the bytes already read.
    pub fn payload(&self, frame: &FrameRef) -> &[u8] {
        let start = (frame.payload_offset() - self.bytes_at) as usize;
        &self.bytes[start..start + frame.len as usize]
    }
}

/// About how many bytes one [`FrameLog::catch_up_some`] reads (more when one frame is larger).
pub const CATCH_UP_BYTES: u64 = 1 << 20;

/// An open frame log.
#[derive(Debug)]
pub struct FrameLog<S> {
    store: S,
    next_number: u64,
    end: u64,
}

fn checksum(len: u32, number: u64, payload: &[u8]) -> u32 {
    let mut crc = crc32c::crc32c(&len.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &number.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

/// The bytes of one frame.
pub fn encode(number: u64, payload: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l as usize <= MAX_PAYLOAD)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a frame payload of {} bytes is too large", payload.len()),
            )
        })?;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&number.to_le_bytes());
    out.extend_from_slice(&checksum(len, number, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Checks that `bytes` is exactly a run of whole frames numbered from `first_number` on (a
/// shipped piece of a log, say) and returns where each lies. Unlike opening a log, nothing is
/// forgiven: a partial frame at the end is damage too.
pub fn decode_frames(bytes: &[u8], first_number: u64) -> Result<Vec<FrameRef>, LogError> {
    let mut frames = Vec::new();
    let mut offset = 0usize;
    let mut expected = first_number;
    while offset < bytes.len() {
        let corrupt = |detail: String| LogError::Corrupt {
            offset: offset as u64,
            detail,
        };
        let Some(header) = bytes.get(offset..offset + HEADER) else {
            return Err(corrupt(format!(
                "{} bytes where a frame header of {HEADER} was expected",
                bytes.len() - offset
            )));
        };
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (magic, plen, crc) = (word(0), word(4), word(16));
        let number = u64::from(word(8)) | (u64::from(word(12)) << 32);
        if magic != MAGIC {
            return Err(corrupt(format!("bad magic {magic:#x}")));
        }
        let body = offset + HEADER;
        let Some(payload) = bytes.get(body..body + plen as usize) else {
            return Err(corrupt(format!(
                "frame {number} claims {plen} bytes of payload, {} remain",
                bytes.len() - body
            )));
        };
        if checksum(plen, number, payload) != crc {
            return Err(corrupt(format!("frame {number} fails its checksum")));
        }
        if number != expected {
            return Err(corrupt(format!(
                "frame number {number} where {expected} was expected"
            )));
        }
        frames.push(FrameRef {
            number,
            offset: offset as u64,
            len: plen,
        });
        expected += 1;
        offset = body + plen as usize;
    }
    Ok(frames)
}

impl<S: Store> FrameLog<S> {
    /// Opens the log in `store` (the caller holds the store's exclusive lock while a torn
    /// tail may be cut): keeps every whole frame, cuts a torn tail, and refuses corruption.
    /// An empty image starts at frame `first_number`.
    pub fn open(store: S, first_number: u64) -> Result<(Self, Recovery), LogError> {
        let mut log = FrameLog {
            store,
            next_number: first_number,
            end: 0,
        };
        let recovery = log.catch_up(true)?;
        Ok((log, recovery))
    }

    /// A handle on the log in `store` that has read nothing yet: its first
    /// [`catch_up`](Self::catch_up) reads from the start (a reader, which must not cut).
    pub fn attach(store: S, first_number: u64) -> Self {
        FrameLog {
            store,
            next_number: first_number,
            end: 0,
        }
    }

    /// A reader's handle that resumes where an earlier one stopped: the next whole frame is
    /// expected at offset `end` with number `next_number` (a replication shipper reading a
    /// segment a little at a time keeps these instead of rereading the file from its start).
    pub fn attach_at(store: S, next_number: u64, end: u64) -> Self {
        FrameLog {
            store,
            next_number,
            end,
        }
    }

    /// Where this handle caught up to: the offset the next frame will be written at.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Reads the frames other handles (other processes) appended since this one last looked,
    /// and moves past them. A partial frame at the end is a torn tail: with `cut_torn` (the
    /// caller holds the exclusive lock, so no append is in flight) it is cut; without, it is
    /// left for a writer to cut and not returned.
    pub fn catch_up(&mut self, cut_torn: bool) -> Result<Recovery, LogError> {
        self.catch_up_within(cut_torn, u64::MAX)
    }

    /// [`catch_up`](Self::catch_up) reading about [`CATCH_UP_BYTES`] at most: when
    /// [`Recovery::more`] is set, whole frames remain and nothing was judged torn yet.
    pub fn catch_up_some(&mut self, cut_torn: bool) -> Result<Recovery, LogError> {
        self.catch_up_within(cut_torn, CATCH_UP_BYTES)
    }

    fn catch_up_within(&mut self, cut_torn: bool, limit: u64) -> Result<Recovery, LogError> {
        let store = &self.store;
        let len = store.len()?;
        let start = self.end;
        // One read for the frames that are there (usually a few, or none), not two per frame.
        let mut bytes = vec![0u8; (len - start).min(limit) as usize];
        store.read_at(&mut bytes, start)?;
        let mut frames = Vec::new();
        let mut offset = start;
        let mut expected = self.next_number;
        let mut more = false;
        while offset < len {
            if offset - start >= limit {
                more = true;
                break;
            }
            if len - offset < HEADER as u64 {
                break; // A header cut short: a torn tail.
            }
            let at = (offset - start) as usize;
            if at + HEADER > bytes.len() {
                let to = ((offset - start) + HEADER as u64).min(len - start);
                grow(store, &mut bytes, start, to)?;
            }
            let header = &bytes[at..at + HEADER];
            let word = |i: usize| {
                u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]])
            };
            let magic = word(0);
            let plen = word(4);
            let number = u64::from(word(8)) | (u64::from(word(12)) << 32);
            let crc = word(16);
            let frame_end = offset + HEADER as u64 + u64::from(plen);
            let valid = magic == MAGIC && frame_end <= len && {
                if frame_end - start > bytes.len() as u64 {
                    grow(store, &mut bytes, start, frame_end - start)?;
                }
                let body = at + HEADER;
                checksum(plen, number, &bytes[body..body + plen as usize]) == crc
            };
            if !valid {
                // Only the last append can be torn: any whole frame after this one means the
                // damage is elsewhere.
                if let Some(later) = next_whole_frame(store, offset + 1, len)? {
                    return Err(LogError::Corrupt {
                        offset,
                        detail: format!(
                            "damaged frame (magic {magic:#x}, length {plen}, number {number}) \
                             with a whole frame after it at offset {later}"
                        ),
                    });
                }
                break; // An interrupted append.
            }
            if number != expected {
                return Err(LogError::Corrupt {
                    offset,
                    detail: format!("frame number {number} where {expected} was expected"),
                });
            }
            frames.push(FrameRef {
                number,
                offset,
                len: plen,
            });
            expected += 1;
            offset = frame_end;
        }
        let torn = if more { 0 } else { len - offset };
        let mut cut_bytes = 0;
        if torn > 0 && cut_torn {
            store.truncate(offset)?;
            store.sync()?;
            cut_bytes = torn;
        }
        self.end = offset;
        self.next_number = expected;
        Ok(Recovery {
            frames,
            cut_bytes,
            torn_bytes: torn - cut_bytes,
            more,
            bytes,
            bytes_at: start,
        })
    }

    /// Appends one frame; returns it. The caller holds the store's exclusive lock and has
    /// caught up, so the frame lands where this handle believes the log ends.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<FrameRef> {
        let bytes = encode(self.next_number, payload)?;
        let len = self.store.len()?;
        if len != self.end {
            // Another handle wrote since this one caught up: appending now would number a
            // frame twice. The caller must hold the exclusive lock and catch up first.
            return Err(io::Error::other(format!(
                "the frame log ends at {len}, not at {} where this handle caught up to; take \
                 the exclusive lock and catch up before appending",
                self.end
            )));
        }
        let offset = self.store.append(&bytes)?;
        if offset != self.end {
            // Someone else wrote behind our back: the image is not what this log believes.
            return Err(io::Error::other(format!(
                "the frame log expected to append at {} but the image ended at {offset}",
                self.end
            )));
        }
        let frame = FrameRef {
            number: self.next_number,
            offset,
            len: payload.len() as u32,
        };
        self.next_number += 1;
        self.end = frame.end();
        Ok(frame)
    }

    /// Appends one frame without checking where the image ends: for a writer that holds the
    /// exclusive lock and caught up since it took it (the engine's hot path), where the check
    /// [`append`](Self::append) makes would be a wasted system call.
    pub fn append_caught_up(&mut self, payload: &[u8]) -> io::Result<FrameRef> {
        let bytes = encode(self.next_number, payload)?;
        if let Err(e) = self.store.append_at(&bytes, self.end) {
            // Whatever part of the frame reached the image must not be read as a frame later:
            // the caller reports this write as failed.
            let _ = self.store.truncate(self.end);
            return Err(e);
        }
        let frame = FrameRef {
            number: self.next_number,
            offset: self.end,
            len: payload.len() as u32,
        };
        self.next_number += 1;
        self.end = frame.end();
        Ok(frame)
    }

    /// Makes every appended frame durable.
    pub fn sync(&self) -> io::Result<()> {
        self.store.sync()
    }

    /// A frame's payload.
    pub fn read(&self, frame: &FrameRef) -> io::Result<Vec<u8>> {
        let mut payload = vec![0u8; frame.len as usize];
        self.store.read_at(&mut payload, frame.payload_offset())?;
        Ok(payload)
    }

    /// The number the next frame will get.
    pub fn next_number(&self) -> u64 {
        self.next_number
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }
}

/// Extends `bytes` (the image from `start` on) to `to` bytes.
fn grow<S: Store>(store: &S, bytes: &mut Vec<u8>, start: u64, to: u64) -> io::Result<()> {
    let have = bytes.len();
    bytes.resize(to as usize, 0);
    store.read_at(&mut bytes[have..], start + have as u64)
}

/// The offset of the first whole, valid frame starting in `[from, len)`, if any.
fn next_whole_frame<S: Store>(store: &S, from: u64, len: u64) -> io::Result<Option<u64>> {
    if from >= len {
        return Ok(None);
    }
    let mut rest = vec![0u8; (len - from) as usize];
    store.read_at(&mut rest, from)?;
    let magic = MAGIC.to_le_bytes();
    let mut at = 0;
    while at + HEADER <= rest.len() {
        let Some(found) = rest[at..].windows(4).position(|w| w == magic) else {
            return Ok(None);
        };
        let start = at + found;
        if start + HEADER > rest.len() {
            return Ok(None);
        }
        let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        let plen = word(start + 4) as usize;
        let number = u64::from(word(start + 8)) | (u64::from(word(start + 12)) << 32);
        let crc = word(start + 16);
        let body = start + HEADER;
        if let Some(payload) = body.checked_add(plen).and_then(|end| rest.get(body..end))
            && checksum(plen as u32, number, payload) == crc
        {
            return Ok(Some(from + start as u64));
        }
        at = start + 1;
    }
    Ok(None)
}
