//! Engine messages, carried inside protocol records (so encrypted and
//! authenticated with them). First byte: the message type. [`Message`] is
//! their codec: [`Message::decode`] and [`Message::encode`] are the only code
//! that knows the layout below, except that the senders build PAGES
//! ([`BatchBuilder`]) and DATA ([`DATA_HEADER`]) in place, so page and
//! channel bytes are copied once. The layout is part of
//! [`ferry_protocol::PROTOCOL_VERSION`]: a change to it raises that.
//!
//! ```text
//! source -> destination, every stream
//!   0x01 PAGES   u32 pass, u16 n, the 4096 bytes of each non-zero page,
//!                 then n x u32 entry (page | ZERO << 31) in page order
//!                 (entries last, so pages are copied once, in place)
//!   0x02 DONE    u64 pages, u64 batches sent on this stream in all
//!   0x05 PASS_END u32 pass: this stream's part of the pass is sent
//! either way, every stream of a device model's migration (see channels)
//!   0x03 DATA    channel bytes
//!   0x04 CHANNEL_END the sender's side of the channel closed
//! source -> destination, stream 0
//!   0x10 STATE   u32 offset, u32 total, bytes: a chunk of the device state
//!   0x11 DIGEST  16 bytes: xxh3-128 of the page digests as sent (check
//!                 `pages`), or of all guest memory at stun (`full`)
//!   0x12 PREPARE everything is sent: verify and load, do not resume
//!   0x13 GO      the source will never run the guest again: resume it
//!   0x14 ABORT   utf-8 reason: discard the guest
//! destination -> source, stream 0
//!   0x20 READY   verified and loaded
//!   0x21 FAILED  utf-8 reason
//!   0x22 RESUMED u64 unix ns of the resume
//!   0x23 PASSED  u32 pass: every stream's part of the pass is in memory
//! either way, outcome-query streams
//!   0x30 QUERY   (source) what happened to this migration?
//!   0x31 OUTCOME u8 0 = unknown, 1 = resumed, 2 = aborted
//! ```

use std::borrow::Cow;

use crate::guest::PAGE_SIZE;

const PAGES: u8 = 0x01;
const DONE: u8 = 0x02;
const DATA: u8 = 0x03;
const CHANNEL_END: u8 = 0x04;
const PASS_END: u8 = 0x05;
const STATE: u8 = 0x10;
const DIGEST: u8 = 0x11;
const PREPARE: u8 = 0x12;
const GO: u8 = 0x13;
const ABORT: u8 = 0x14;
const READY: u8 = 0x20;
const FAILED: u8 = 0x21;
const RESUMED: u8 = 0x22;
const PASSED: u8 = 0x23;
const QUERY: u8 = 0x30;
const OUTCOME: u8 = 0x31;

const ZERO_FLAG: u32 = 1 << 31;
/// Bytes of a PAGES message before its entries.
pub const PAGES_HEADER: usize = 7;

/// Most pages one PAGES message can carry in a record of `max_record` bytes.
pub fn pages_per_batch(max_record: usize) -> usize {
    ((max_record - PAGES_HEADER) / (PAGE_SIZE + 4)).clamp(1, u16::MAX as usize)
}

/// Builds a PAGES message in place: page data goes straight into the
/// record at its final offset; the entry table, kept aside, is appended at
/// the end. (No large move: on some machines `rep movsb` copies are slow.)
pub struct BatchBuilder<'a> {
    buf: &'a mut [u8],
    capacity: usize,
    entries: Vec<u32>,
    data: usize,
}

impl<'a> BatchBuilder<'a> {
    pub fn new(buf: &'a mut [u8], pass: u32, capacity: usize) -> Self {
        buf[0] = PAGES;
        buf[1..5].copy_from_slice(&pass.to_be_bytes());
        Self {
            buf,
            capacity,
            entries: Vec::with_capacity(capacity),
            data: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.entries.len() == self.capacity
    }

    /// Adds page `page`, filling its data with `fill`, which returns whether
    /// the page was all zeros (then only the entry is kept).
    pub fn push(&mut self, page: u32, fill: impl FnOnce(&mut [u8]) -> bool) -> bool {
        debug_assert!(!self.is_full());
        let at = PAGES_HEADER + self.data * PAGE_SIZE;
        let zero = fill(&mut self.buf[at..at + PAGE_SIZE]);
        self.entries
            .push(if zero { page | ZERO_FLAG } else { page });
        if !zero {
            self.data += 1;
        }
        zero
    }

    /// Finishes the message; returns its length.
    pub fn finish(self) -> usize {
        self.buf[5..7].copy_from_slice(&(self.entries.len() as u16).to_be_bytes());
        let mut at = PAGES_HEADER + self.data * PAGE_SIZE;
        for e in &self.entries {
            self.buf[at..at + 4].copy_from_slice(&e.to_be_bytes());
            at += 4;
        }
        at
    }
}

/// A PAGES message, structurally checked ([`Batch::check`] checks its
/// page indexes against the guest).
#[derive(Debug, PartialEq, Eq)]
pub struct Batch<'a> {
    pub pass: u32,
    entries: &'a [u8],
    data: &'a [u8],
}

/// One page of a batch: its index and its contents (None: all zeros).
pub type PageRef<'a> = (u32, Option<&'a [u8]>);

impl<'a> Batch<'a> {
    /// `msg` without its type byte.
    fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let header = PAGES_HEADER - 1;
        if body.len() < header {
            return Err(WireError::Pages("page batch shorter than its header"));
        }
        let pass = u32::from_be_bytes(body[0..4].try_into().expect("4 bytes"));
        let n = u16::from_be_bytes([body[4], body[5]]) as usize;
        if body.len() < header + 4 * n {
            return Err(WireError::Pages("page batch shorter than its entry table"));
        }
        let entries = &body[body.len() - 4 * n..];
        let nonzero = entries.chunks_exact(4).filter(|e| e[0] & 0x80 == 0).count();
        let data = &body[header..body.len() - 4 * n];
        if data.len() != nonzero * PAGE_SIZE {
            return Err(WireError::Pages(
                "page batch data does not match its entries",
            ));
        }
        Ok(Self {
            pass,
            entries,
            data,
        })
    }

    /// Every page index within a guest of `pages` pages.
    pub fn check(&self, pages: usize) -> Result<(), WireError> {
        let beyond = self.entries.chunks_exact(4).any(|e| {
            (u32::from_be_bytes(e.try_into().expect("4 bytes")) & !ZERO_FLAG) as usize >= pages
        });
        if beyond {
            return Err(WireError::Pages("page index beyond guest memory"));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len() / 4
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Each page in order.
    pub fn pages(&self) -> impl Iterator<Item = PageRef<'a>> + 'a {
        let mut data = self.data;
        self.entries.chunks_exact(4).map(move |e| {
            let e = u32::from_be_bytes(e.try_into().expect("4 bytes"));
            if e & ZERO_FLAG != 0 {
                (e & !ZERO_FLAG, None)
            } else {
                let (page, rest) = data.split_at(PAGE_SIZE);
                data = rest;
                (e, Some(page))
            }
        })
    }
}

/// What a destination answers an outcome query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not decided yet (or never heard of).
    Unknown,
    Resumed,
    Aborted,
}

/// A message that does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("empty engine message")]
    Empty,
    #[error("unknown engine message type {0:#04x}")]
    Unknown(u8),
    #[error("malformed {0} message")]
    Length(&'static str),
    #[error("{0}")]
    Pages(&'static str),
    #[error("unknown outcome code {0}")]
    Answer(u8),
}

/// One engine message.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Pages(Batch<'a>),
    /// The stream's totals, after its last page.
    Done {
        pages: u64,
        batches: u64,
    },
    Data(&'a [u8]),
    ChannelEnd,
    PassEnd {
        pass: u32,
    },
    State {
        offset: u32,
        total: u32,
        chunk: &'a [u8],
    },
    Digest(u128),
    Prepare,
    Go,
    Abort {
        reason: Cow<'a, str>,
    },
    Ready,
    Failed {
        reason: Cow<'a, str>,
    },
    Resumed {
        unix_ns: u64,
    },
    Passed {
        pass: u32,
    },
    Query,
    Outcome(Answer),
}

fn exact<const N: usize>(body: &[u8], what: &'static str) -> Result<[u8; N], WireError> {
    body.try_into().map_err(|_| WireError::Length(what))
}

fn empty(body: &[u8], what: &'static str) -> Result<(), WireError> {
    exact::<0>(body, what).map(|_| ())
}

impl<'a> Message<'a> {
    pub fn decode(m: &'a [u8]) -> Result<Self, WireError> {
        let (&kind, body) = m.split_first().ok_or(WireError::Empty)?;
        let u32_of = |b: [u8; 4]| u32::from_be_bytes(b);
        Ok(match kind {
            PAGES => Message::Pages(Batch::decode(body)?),
            DONE => {
                let b = exact::<16>(body, "DONE")?;
                Message::Done {
                    pages: u64::from_be_bytes(b[..8].try_into().expect("8")),
                    batches: u64::from_be_bytes(b[8..].try_into().expect("8")),
                }
            }
            DATA => Message::Data(body),
            CHANNEL_END => empty(body, "CHANNEL_END").map(|()| Message::ChannelEnd)?,
            PASS_END => Message::PassEnd {
                pass: u32_of(exact(body, "PASS_END")?),
            },
            STATE => {
                if body.len() < 8 {
                    return Err(WireError::Length("STATE"));
                }
                Message::State {
                    offset: u32_of(body[0..4].try_into().expect("4")),
                    total: u32_of(body[4..8].try_into().expect("4")),
                    chunk: &body[8..],
                }
            }
            DIGEST => Message::Digest(u128::from_be_bytes(exact(body, "DIGEST")?)),
            PREPARE => empty(body, "PREPARE").map(|()| Message::Prepare)?,
            GO => empty(body, "GO").map(|()| Message::Go)?,
            ABORT => Message::Abort {
                reason: String::from_utf8_lossy(body),
            },
            READY => empty(body, "READY").map(|()| Message::Ready)?,
            FAILED => Message::Failed {
                reason: String::from_utf8_lossy(body),
            },
            RESUMED => Message::Resumed {
                unix_ns: u64::from_be_bytes(exact(body, "RESUMED")?),
            },
            PASSED => Message::Passed {
                pass: u32_of(exact(body, "PASSED")?),
            },
            QUERY => empty(body, "QUERY").map(|()| Message::Query)?,
            OUTCOME => Message::Outcome(match exact::<1>(body, "OUTCOME")?[0] {
                0 => Answer::Unknown,
                1 => Answer::Resumed,
                2 => Answer::Aborted,
                b => return Err(WireError::Answer(b)),
            }),
            k => return Err(WireError::Unknown(k)),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let (kind, body): (u8, Cow<'_, [u8]>) = match self {
            Message::Pages(b) => {
                let mut body = Vec::with_capacity(PAGES_HEADER + b.data.len() + b.entries.len());
                body.extend_from_slice(&b.pass.to_be_bytes());
                body.extend_from_slice(&(b.len() as u16).to_be_bytes());
                body.extend_from_slice(b.data);
                body.extend_from_slice(b.entries);
                (PAGES, body.into())
            }
            Message::Done { pages, batches } => (
                DONE,
                [pages.to_be_bytes(), batches.to_be_bytes()].concat().into(),
            ),
            Message::Data(d) => (DATA, (*d).into()),
            Message::ChannelEnd => (CHANNEL_END, (&[][..]).into()),
            Message::PassEnd { pass } => (PASS_END, pass.to_be_bytes().to_vec().into()),
            Message::State {
                offset,
                total,
                chunk,
            } => (
                STATE,
                [&offset.to_be_bytes()[..], &total.to_be_bytes(), chunk]
                    .concat()
                    .into(),
            ),
            Message::Digest(d) => (DIGEST, d.to_be_bytes().to_vec().into()),
            Message::Prepare => (PREPARE, (&[][..]).into()),
            Message::Go => (GO, (&[][..]).into()),
            Message::Abort { reason } => (ABORT, reason.as_bytes().into()),
            Message::Ready => (READY, (&[][..]).into()),
            Message::Failed { reason } => (FAILED, reason.as_bytes().into()),
            Message::Resumed { unix_ns } => (RESUMED, unix_ns.to_be_bytes().to_vec().into()),
            Message::Passed { pass } => (PASSED, pass.to_be_bytes().to_vec().into()),
            Message::Query => (QUERY, (&[][..]).into()),
            Message::Outcome(a) => {
                let code = match a {
                    Answer::Unknown => 0,
                    Answer::Resumed => 1,
                    Answer::Aborted => 2,
                };
                (OUTCOME, vec![code].into())
            }
        };
        let mut m = Vec::with_capacity(1 + body.len());
        m.push(kind);
        m.extend_from_slice(&body);
        m
    }

    /// The message's name, for errors about one out of turn.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Pages(_) => "PAGES",
            Message::Done { .. } => "DONE",
            Message::Data(_) => "DATA",
            Message::ChannelEnd => "CHANNEL_END",
            Message::PassEnd { .. } => "PASS_END",
            Message::State { .. } => "STATE",
            Message::Digest(_) => "DIGEST",
            Message::Prepare => "PREPARE",
            Message::Go => "GO",
            Message::Abort { .. } => "ABORT",
            Message::Ready => "READY",
            Message::Failed { .. } => "FAILED",
            Message::Resumed { .. } => "RESUMED",
            Message::Passed { .. } => "PASSED",
            Message::Query => "QUERY",
            Message::Outcome(_) => "OUTCOME",
        }
    }
}

/// The bytes before a DATA message's payload: a sender writes them once
/// and fills the rest of its buffer straight from the channel.
pub const DATA_HEADER: [u8; 1] = [DATA];

/// Splits device state into STATE messages of at most `max` bytes each.
pub fn state_chunks(state: &[u8], max: usize) -> Vec<Vec<u8>> {
    let room = max - 9;
    let total = state.len() as u32;
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let end = (off + room).min(state.len());
        let chunk = Message::State {
            offset: off as u32,
            total,
            chunk: &state[off..end],
        };
        out.push(chunk.encode());
        off = end;
        if off >= state.len() {
            return out;
        }
    }
}

/// Reassembles device state from STATE messages, in order.
#[derive(Default)]
pub struct StateAssembler {
    buf: Vec<u8>,
    total: Option<usize>,
}

/// Device state larger than this is refused (a synthetic guest's is a few KiB).
pub const MAX_DEVICE_STATE: usize = 64 << 20;

impl StateAssembler {
    /// Adds the chunk of a STATE message.
    pub fn push(&mut self, offset: u32, total: u32, chunk: &[u8]) -> Result<(), &'static str> {
        let (off, total) = (offset as usize, total as usize);
        if total > MAX_DEVICE_STATE {
            return Err("device state too large");
        }
        if *self.total.get_or_insert(total) != total
            || off != self.buf.len()
            || off + chunk.len() > total
        {
            return Err("device-state chunks out of order");
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    pub fn complete(&self) -> Option<&[u8]> {
        (self.total == Some(self.buf.len())).then_some(&self.buf[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(m: &[u8], pages: usize) -> Result<Batch<'_>, WireError> {
        match Message::decode(m)? {
            Message::Pages(b) => b.check(pages).map(|()| b),
            other => panic!("decoded {} from a page batch", other.name()),
        }
    }

    #[test]
    fn batches_round_trip_with_zero_pages() {
        let cap = pages_per_batch(256 * 1024);
        assert_eq!(cap, 63);
        let mut buf = vec![0u8; 256 * 1024];
        let mut b = BatchBuilder::new(&mut buf, 3, cap);
        b.push(10, |d| {
            d.fill(7);
            false
        });
        b.push(11, |d| {
            d.fill(0);
            true
        });
        b.push(12, |d| {
            d.fill(9);
            false
        });
        let len = b.finish();
        assert_eq!(len, PAGES_HEADER + 12 + 2 * PAGE_SIZE);
        let batch = parse(&buf[..len], 100).unwrap();
        assert_eq!(batch.pass, 3);
        let pages: Vec<_> = batch.pages().map(|(p, d)| (p, d.map(|d| d[0]))).collect();
        assert_eq!(pages, vec![(10, Some(7)), (11, None), (12, Some(9))]);
        // The codec's own encoding is the builder's, byte for byte.
        assert_eq!(Message::Pages(batch).encode(), &buf[..len]);
    }

    #[test]
    fn malformed_batches_are_refused() {
        let mut buf = vec![0u8; 64 * 1024];
        let mut b = BatchBuilder::new(&mut buf, 0, 4);
        b.push(5, |d| {
            d.fill(1);
            false
        });
        let len = b.finish();
        let refused = |m: &[u8], pages| parse(m, pages).err().map(|e| e.to_string());
        assert_eq!(
            refused(&buf[..len], 5).as_deref(),
            Some("page index beyond guest memory")
        );
        // One byte of page data missing (the entry table is at the end).
        let mut short = buf[..len].to_vec();
        short.remove(PAGES_HEADER);
        assert_eq!(
            refused(&short, 100).as_deref(),
            Some("page batch data does not match its entries")
        );
        assert_eq!(
            refused(&buf[..len - 1], 100).as_deref(),
            Some("page batch data does not match its entries")
        );
        assert_eq!(
            refused(&buf[..6], 100).as_deref(),
            Some("page batch shorter than its header")
        );
    }

    #[test]
    fn every_message_decodes_what_it_encodes_and_lengths_are_exact() {
        let all = [
            Message::Done {
                pages: 1 << 40,
                batches: 7,
            },
            Message::Data(b"qemu bytes"),
            Message::ChannelEnd,
            Message::PassEnd { pass: 9 },
            Message::State {
                offset: 4,
                total: 10,
                chunk: b"abcdef",
            },
            Message::Digest(u128::MAX - 5),
            Message::Prepare,
            Message::Go,
            Message::Abort {
                reason: "source aborted".into(),
            },
            Message::Ready,
            Message::Failed {
                reason: "digest mismatch".into(),
            },
            Message::Resumed { unix_ns: 123 },
            Message::Passed { pass: 2 },
            Message::Query,
            Message::Outcome(Answer::Unknown),
            Message::Outcome(Answer::Resumed),
            Message::Outcome(Answer::Aborted),
        ];
        for m in &all {
            let b = m.encode();
            assert_eq!(&Message::decode(&b).unwrap(), m, "{}", m.name());
            let fixed = !matches!(
                m,
                Message::Data(_)
                    | Message::State { .. }
                    | Message::Abort { .. }
                    | Message::Failed { .. }
            );
            if fixed {
                let mut longer = b.clone();
                longer.push(0);
                assert_eq!(
                    Message::decode(&longer),
                    Err(WireError::Length(m.name())),
                    "{} with a byte too many",
                    m.name()
                );
            }
        }
        assert_eq!(Message::decode(&[]), Err(WireError::Empty));
        assert_eq!(Message::decode(&[0x7f]), Err(WireError::Unknown(0x7f)));
        assert_eq!(Message::decode(&[OUTCOME, 3]), Err(WireError::Answer(3)));
        assert_eq!(
            Message::decode(&[STATE, 0, 0]),
            Err(WireError::Length("STATE"))
        );
        assert_eq!(DATA_HEADER, Message::Data(&[]).encode()[..]);
    }

    #[test]
    fn device_state_chunks_reassemble() {
        let state: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let chunks = state_chunks(&state, 65536);
        assert_eq!(chunks.len(), 2);
        let push = |a: &mut StateAssembler, c: &[u8]| match Message::decode(c).unwrap() {
            Message::State {
                offset,
                total,
                chunk,
            } => a.push(offset, total, chunk),
            other => panic!("decoded {} from a state chunk", other.name()),
        };
        let mut a = StateAssembler::default();
        assert!(a.complete().is_none());
        for c in &chunks {
            push(&mut a, c).unwrap();
        }
        assert_eq!(a.complete(), Some(&state[..]));
        let mut b = StateAssembler::default();
        assert!(push(&mut b, &chunks[1]).is_err(), "second chunk first");
        let empty = state_chunks(&[], 1024);
        let mut c = StateAssembler::default();
        push(&mut c, &empty[0]).unwrap();
        assert_eq!(c.complete(), Some(&[][..]));
    }
}
