//! The record layer: what flows on a migration stream after the handshake.
//!
//! ```text
//! offset size field
//!      0    1 version      2
//!      1    1 kind         1 = data, 2 = end of stream
//!      2    2 reserved     0
//!      4    4 length       bytes that follow: payload and trailer
//!      8    8 counter      0, 1, 2, ... per stream and direction
//!     16    n payload      ciphertext when encrypted
//!   16+n   16 tag          AES-256-GCM tag (encrypted streams), or
//!   16+n    4 checksum     CRC32C of header and payload (plaintext streams)
//! ```
//! All integers big-endian. The 16-byte header is the AEAD's associated
//! data and the counter selects the nonce, so a record cannot be altered,
//! replayed, reordered or dropped without detection; an authenticated
//! end-of-stream record makes truncation detectable too.
//!
//! Plaintext means unencrypted, not unchecked: the checksum catches a
//! corrupted record (a flipped bit on a bad NIC or a buggy middlebox) at
//! hardware CRC speed. It is no defence against a deliberate forger, who
//! can recompute it; that is what the encrypted transport is for.
//!
//! Buffers are allocated once per stream; sealing and opening happen in
//! place, so the steady state allocates nothing.

use std::{
    io::{self, Read, Write},
    time::Duration,
};

use super::ProtocolMetrics;
use super::{
    aead::{Aead, NONCE_LEN, TAG_LEN},
    error::ProtocolError,
    keys::record_nonce,
};

pub const HEADER_LEN: usize = 16;
pub const VERSION: u8 = crate::PROTOCOL_VERSION;
/// The trailer of a plaintext record: its CRC32C.
pub const CHECKSUM_LEN: usize = 4;
const KIND_DATA: u8 = 1;
const KIND_END: u8 = 2;

/// CPU time of the calling thread: crypto cost is measured as CPU seconds,
/// not wall time, so that waiting on the socket is not counted.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer; this clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Sealing or opening state of one direction of one stream.
pub struct Crypto {
    pub aead: Box<dyn Aead>,
    pub iv: [u8; NONCE_LEN],
}

fn checksum(header: &[u8], payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    crc32c::crc32c_append(crc32c::crc32c(header), payload).to_be_bytes()
}

fn trailer_len(crypto: &Option<Crypto>) -> usize {
    if crypto.is_some() {
        TAG_LEN
    } else {
        CHECKSUM_LEN
    }
}

fn header(kind: u8, length: u32, counter: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = VERSION;
    h[1] = kind;
    h[4..8].copy_from_slice(&length.to_be_bytes());
    h[8..16].copy_from_slice(&counter.to_be_bytes());
    h
}

/// Writes records to a stream.
pub struct RecordWriter<W> {
    inner: W,
    crypto: Option<Crypto>,
    counter: u64,
    max_payload: usize,
    /// header | payload (max_payload) | tag
    buf: Vec<u8>,
    /// Thread CPU time spent sealing.
    pub seal_cpu: Duration,
    /// Bytes written to the stream, headers and tags included.
    pub wire_bytes: u64,
    finished: bool,
}

impl<W: Write> RecordWriter<W> {
    pub fn new(inner: W, crypto: Option<Crypto>, max_payload: usize) -> Self {
        Self {
            inner,
            crypto,
            counter: 0,
            max_payload,
            buf: vec![0; HEADER_LEN + max_payload + TAG_LEN],
            seal_cpu: Duration::ZERO,
            wire_bytes: 0,
            finished: false,
        }
    }

    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    pub fn encrypted(&self) -> bool {
        self.crypto.is_some()
    }

    /// The payload area of the next record, to be filled in place.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf[HEADER_LEN..HEADER_LEN + self.max_payload]
    }

    fn emit(&mut self, kind: u8, len: usize) -> io::Result<()> {
        assert!(
            len <= self.max_payload,
            "record payload {len} exceeds {}",
            self.max_payload
        );
        assert!(!self.finished, "record written after end of stream");
        let trailer = trailer_len(&self.crypto);
        let h = header(kind, (len + trailer) as u32, self.counter);
        self.buf[..HEADER_LEN].copy_from_slice(&h);
        let (head, rest) = self.buf.split_at_mut(HEADER_LEN);
        if let Some(c) = &self.crypto {
            let t0 = thread_cpu_time();
            let nonce = record_nonce(&c.iv, self.counter);
            let tag = c.aead.seal(&nonce, head, &mut rest[..len]);
            rest[len..len + TAG_LEN].copy_from_slice(&tag);
            self.seal_cpu += thread_cpu_time().saturating_sub(t0);
        } else {
            let sum = checksum(head, &rest[..len]);
            rest[len..len + CHECKSUM_LEN].copy_from_slice(&sum);
        }
        let total = HEADER_LEN + len + trailer;
        self.inner.write_all(&self.buf[..total])?;
        self.wire_bytes += total as u64;
        self.counter += 1;
        Ok(())
    }

    /// Sends the first `len` bytes of [`Self::payload_mut`] as one record.
    pub fn send(&mut self, len: usize) -> io::Result<()> {
        self.emit(KIND_DATA, len)
    }

    /// Copies `data` into the payload area and sends it.
    pub fn send_bytes(&mut self, data: &[u8]) -> io::Result<()> {
        self.payload_mut()[..data.len()].copy_from_slice(data);
        self.send(data.len())
    }

    /// Sends the authenticated end-of-stream record and flushes.
    pub fn finish(&mut self) -> io::Result<()> {
        self.emit(KIND_END, 0)?;
        self.finished = true;
        self.inner.flush()
    }

    pub fn records(&self) -> u64 {
        self.counter
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

/// A record as read: its authenticated payload, or the end of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Data(&'a [u8]),
    End,
}

/// Reads and verifies records from a stream.
pub struct RecordReader<R> {
    inner: R,
    crypto: Option<Crypto>,
    expected: u64,
    max_payload: usize,
    buf: Vec<u8>,
    ended: bool,
    metrics: Option<ProtocolMetrics>,
    /// Thread CPU time spent opening.
    pub open_cpu: Duration,
    pub wire_bytes: u64,
}

/// Reads exactly `buf.len()` bytes; Ok(false) on a clean EOF before the first byte.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl<R: Read> RecordReader<R> {
    pub fn new(
        inner: R,
        crypto: Option<Crypto>,
        max_payload: usize,
        metrics: Option<ProtocolMetrics>,
    ) -> Self {
        Self {
            inner,
            crypto,
            expected: 0,
            max_payload,
            buf: vec![0; max_payload + TAG_LEN],
            ended: false,
            metrics,
            open_cpu: Duration::ZERO,
            wire_bytes: 0,
        }
    }

    /// The next record. Every error is final for the stream and is counted
    /// in the metrics once, here, where it is detected.
    pub fn read_record(&mut self) -> Result<Record<'_>, ProtocolError> {
        match self.next_inner() {
            Ok((true, _)) => Ok(Record::End),
            Ok((false, len)) => Ok(Record::Data(&self.buf[..len])),
            Err(e) => {
                if let Some(m) = &self.metrics {
                    m.reject(&e);
                }
                Err(e)
            }
        }
    }

    fn next_inner(&mut self) -> Result<(bool, usize), ProtocolError> {
        if self.ended {
            return Err(ProtocolError::Malformed(
                "read past the end-of-stream record",
            ));
        }
        let truncated = |records| ProtocolError::Truncated { records };
        let mut h = [0u8; HEADER_LEN];
        match read_full(&mut self.inner, &mut h) {
            Ok(true) => {}
            Ok(false) => return Err(truncated(self.expected)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(truncated(self.expected));
            }
            Err(e) => return Err(e.into()),
        }
        if h[0] != VERSION {
            return Err(ProtocolError::Version(h[0]));
        }
        let kind = h[1];
        if kind != KIND_DATA && kind != KIND_END {
            return Err(ProtocolError::Malformed("unknown record kind"));
        }
        let tag_len = trailer_len(&self.crypto);
        let length = u32::from_be_bytes(h[4..8].try_into().expect("4 bytes"));
        let limit = (self.max_payload + tag_len) as u32;
        // Checked before reading: a forged length cannot make us allocate or wait.
        if length > limit {
            return Err(ProtocolError::TooLong { length, limit });
        }
        let length = length as usize;
        if length < tag_len {
            return Err(ProtocolError::Malformed("record shorter than its trailer"));
        }
        if length > 0 {
            match read_full(&mut self.inner, &mut self.buf[..length]) {
                Ok(true) => {}
                Ok(false) => return Err(truncated(self.expected)),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(truncated(self.expected));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.wire_bytes += (HEADER_LEN + length) as u64;
        let counter = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"));
        let plain = length - tag_len;
        if let Some(c) = &self.crypto {
            // Authenticate first: only an authentic counter is compared below,
            // so tampering reads as an authentication failure.
            let t0 = thread_cpu_time();
            let nonce = record_nonce(&c.iv, counter);
            let (payload, tag) = self.buf[..length].split_at_mut(plain);
            let tag: &[u8; TAG_LEN] = (&*tag).try_into().expect("tag length checked");
            let ok = c.aead.open(&nonce, &h, payload, tag);
            self.open_cpu += thread_cpu_time().saturating_sub(t0);
            ok.map_err(|_| ProtocolError::Decrypt { counter })?;
        } else {
            let (payload, sum) = self.buf[..length].split_at(plain);
            if checksum(&h, payload) != sum {
                return Err(ProtocolError::Checksum { counter });
            }
        }
        if counter < self.expected {
            return Err(ProtocolError::Replay {
                expected: self.expected,
                got: counter,
            });
        }
        if counter > self.expected {
            return Err(ProtocolError::OutOfOrder {
                expected: self.expected,
                got: counter,
            });
        }
        if h[2..4] != [0, 0] {
            return Err(ProtocolError::Malformed("reserved header bits set"));
        }
        self.expected += 1;
        if kind == KIND_END {
            if plain != 0 {
                return Err(ProtocolError::Malformed(
                    "end-of-stream record with a payload",
                ));
            }
            self.ended = true;
            return Ok((true, 0));
        }
        Ok((false, plain))
    }

    pub fn records(&self) -> u64 {
        self.expected
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}
