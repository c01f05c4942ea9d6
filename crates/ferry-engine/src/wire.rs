//! Engine messages, carried inside protocol records (so encrypted and
//! authenticated with them). First byte: the message type.
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

use crate::guest::PAGE_SIZE;

pub const PAGES: u8 = 0x01;
pub const DONE: u8 = 0x02;
pub const DATA: u8 = 0x03;
pub const CHANNEL_END: u8 = 0x04;
pub const PASS_END: u8 = 0x05;
pub const STATE: u8 = 0x10;
pub const DIGEST: u8 = 0x11;
pub const PREPARE: u8 = 0x12;
pub const GO: u8 = 0x13;
pub const ABORT: u8 = 0x14;
pub const READY: u8 = 0x20;
pub const FAILED: u8 = 0x21;
pub const RESUMED: u8 = 0x22;
pub const PASSED: u8 = 0x23;
pub const QUERY: u8 = 0x30;
pub const OUTCOME: u8 = 0x31;

pub const ZERO_FLAG: u32 = 1 << 31;
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

/// A parsed PAGES message.
pub struct Batch<'a> {
    pub pass: u32,
    entries: &'a [u8],
    data: &'a [u8],
}

/// One page of a batch: its index and its contents (None: all zeros).
pub type PageRef<'a> = (u32, Option<&'a [u8]>);

impl<'a> Batch<'a> {
    /// Parses a PAGES message, checking every length and index against `pages`.
    pub fn parse(msg: &'a [u8], pages: usize) -> Result<Self, &'static str> {
        if msg.len() < PAGES_HEADER || msg[0] != PAGES {
            return Err("not a page batch");
        }
        let pass = u32::from_be_bytes(msg[1..5].try_into().expect("4 bytes"));
        let n = u16::from_be_bytes([msg[5], msg[6]]) as usize;
        if msg.len() < PAGES_HEADER + 4 * n {
            return Err("page batch shorter than its entry table");
        }
        let entries = &msg[msg.len() - 4 * n..];
        let mut nonzero = 0;
        for e in entries.chunks_exact(4) {
            let e = u32::from_be_bytes(e.try_into().expect("4 bytes"));
            if (e & !ZERO_FLAG) as usize >= pages {
                return Err("page index beyond guest memory");
            }
            if e & ZERO_FLAG == 0 {
                nonzero += 1;
            }
        }
        let data = &msg[PAGES_HEADER..msg.len() - 4 * n];
        if data.len() != nonzero * PAGE_SIZE {
            return Err("page batch data does not match its entries");
        }
        Ok(Self {
            pass,
            entries,
            data,
        })
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

/// A PASS_END or PASSED message.
pub fn pass_message(kind: u8, pass: u32) -> [u8; 5] {
    let mut m = [kind; 5];
    m[1..].copy_from_slice(&pass.to_be_bytes());
    m
}

/// The pass of a PASS_END or PASSED message of type `kind`.
pub fn parse_pass(kind: u8, m: &[u8]) -> Option<u32> {
    (m.len() == 5 && m[0] == kind).then(|| u32::from_be_bytes(m[1..5].try_into().expect("4")))
}

pub fn done(pages: u64, batches: u64) -> [u8; 17] {
    let mut m = [0u8; 17];
    m[0] = DONE;
    m[1..9].copy_from_slice(&pages.to_be_bytes());
    m[9..17].copy_from_slice(&batches.to_be_bytes());
    m
}

pub fn parse_done(m: &[u8]) -> Option<(u64, u64)> {
    (m.len() == 17 && m[0] == DONE).then(|| {
        (
            u64::from_be_bytes(m[1..9].try_into().expect("8")),
            u64::from_be_bytes(m[9..17].try_into().expect("8")),
        )
    })
}

/// Splits device state into STATE messages of at most `max` bytes each.
pub fn state_chunks(state: &[u8], max: usize) -> Vec<Vec<u8>> {
    let room = max - 9;
    let total = state.len() as u32;
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let end = (off + room).min(state.len());
        let mut m = Vec::with_capacity(9 + end - off);
        m.push(STATE);
        m.extend_from_slice(&(off as u32).to_be_bytes());
        m.extend_from_slice(&total.to_be_bytes());
        m.extend_from_slice(&state[off..end]);
        out.push(m);
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
    pub fn push(&mut self, m: &[u8]) -> Result<(), &'static str> {
        if m.len() < 9 || m[0] != STATE {
            return Err("not a device-state chunk");
        }
        let off = u32::from_be_bytes(m[1..5].try_into().expect("4")) as usize;
        let total = u32::from_be_bytes(m[5..9].try_into().expect("4")) as usize;
        if total > MAX_DEVICE_STATE {
            return Err("device state too large");
        }
        if *self.total.get_or_insert(total) != total
            || off != self.buf.len()
            || off + m.len() - 9 > total
        {
            return Err("device-state chunks out of order");
        }
        self.buf.extend_from_slice(&m[9..]);
        Ok(())
    }

    pub fn complete(&self) -> Option<&[u8]> {
        (self.total == Some(self.buf.len())).then_some(&self.buf[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let batch = Batch::parse(&buf[..len], 100).unwrap();
        assert_eq!(batch.pass, 3);
        let pages: Vec<_> = batch.pages().map(|(p, d)| (p, d.map(|d| d[0]))).collect();
        assert_eq!(pages, vec![(10, Some(7)), (11, None), (12, Some(9))]);
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
        assert_eq!(
            Batch::parse(&buf[..len], 5).err(),
            Some("page index beyond guest memory")
        );
        // One byte of page data missing (the entry table is at the end).
        let mut short = buf[..len].to_vec();
        short.remove(PAGES_HEADER);
        assert_eq!(
            Batch::parse(&short, 100).err(),
            Some("page batch data does not match its entries")
        );
        assert_eq!(
            Batch::parse(&buf[..len - 1], 100).err(),
            Some("page index beyond guest memory")
        );
        assert_eq!(Batch::parse(&buf[..6], 100).err(), Some("not a page batch"));
    }

    #[test]
    fn device_state_chunks_reassemble() {
        let state: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let chunks = state_chunks(&state, 65536);
        assert_eq!(chunks.len(), 2);
        let mut a = StateAssembler::default();
        assert!(a.complete().is_none());
        for c in &chunks {
            a.push(c).unwrap();
        }
        assert_eq!(a.complete(), Some(&state[..]));
        let mut b = StateAssembler::default();
        assert!(b.push(&chunks[1]).is_err(), "second chunk first");
        let empty = state_chunks(&[], 1024);
        let mut c = StateAssembler::default();
        c.push(&empty[0]).unwrap();
        assert_eq!(c.complete(), Some(&[][..]));
    }
}
