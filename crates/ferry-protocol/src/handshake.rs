//! The per-stream handshake.
//!
//! The source (client) opens each TCP stream with a 64-byte hello:
//!
//! ```text
//! offset size field
//!      0    8 magic        "FERRYMIG"
//!      8    1 version      2 ([`crate::PROTOCOL_VERSION`])
//!      9    1 transport    0 = plaintext, 1 = AES-256-GCM
//!     10    2 stream       index of this stream
//!     12    2 streams      number of streams
//!     14    2 flags        bit 0: outcome query (see engine), others 0
//!     16   16 migration    id from the spec
//!     32   16 reserved     0
//!     48   16 tag          GCM tag over bytes 0..48 under the client hello key
//! ```
//!
//! The destination (server) answers with 32 bytes:
//!
//! ```text
//!      0    8 magic        "FERRYACK"
//!      8    1 version      2 ([`crate::PROTOCOL_VERSION`])
//!      9    1 status       0 = accepted, else a [`HelloStatus`]
//!     10    2 stream       echoed
//!     12    4 reserved     0
//!     16   16 tag          GCM tag over bytes 0..16 and the client's whole
//!                          hello, under the server hello key
//! ```
//!
//! Tags are zero on plaintext migrations (there is no key to prove). The
//! transport byte is authenticated and must equal the coordinator's spec on
//! both ends: a stream cannot be talked down to plaintext. Only an accepted
//! hello is authenticated; a refusal is a courtesy the client cannot trust,
//! and it closes the stream either way.

use std::{
    fmt,
    io::{Read, Write},
    sync::Arc,
};

use super::ProtocolMetrics;
use super::{
    aead::{Backend, TAG_LEN},
    error::ProtocolError,
    keys::{KeySchedule, Role},
    spec::{MigrationId, Transport},
};

pub const CLIENT_HELLO_LEN: usize = 64;
pub const SERVER_HELLO_LEN: usize = 32;
const CLIENT_MAGIC: &[u8; 8] = b"FERRYMIG";
const SERVER_MAGIC: &[u8; 8] = b"FERRYACK";
pub const FLAG_OUTCOME_QUERY: u16 = 1;

/// Why a destination refused a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloStatus {
    Accepted,
    UnknownMigration,
    ModeMismatch,
    AuthFailed,
    BadStream,
    Duplicate,
    Version,
    Other(u8),
}

impl HelloStatus {
    fn to_wire(self) -> u8 {
        match self {
            HelloStatus::Accepted => 0,
            HelloStatus::UnknownMigration => 1,
            HelloStatus::ModeMismatch => 2,
            HelloStatus::AuthFailed => 3,
            HelloStatus::BadStream => 4,
            HelloStatus::Duplicate => 5,
            HelloStatus::Version => 6,
            HelloStatus::Other(b) => b,
        }
    }

    fn from_wire(b: u8) -> Self {
        match b {
            0 => HelloStatus::Accepted,
            1 => HelloStatus::UnknownMigration,
            2 => HelloStatus::ModeMismatch,
            3 => HelloStatus::AuthFailed,
            4 => HelloStatus::BadStream,
            5 => HelloStatus::Duplicate,
            6 => HelloStatus::Version,
            b => HelloStatus::Other(b),
        }
    }

    fn of(e: &ProtocolError) -> Self {
        match e {
            ProtocolError::UnknownMigration(_) => HelloStatus::UnknownMigration,
            ProtocolError::ModeMismatch { .. } => HelloStatus::ModeMismatch,
            ProtocolError::HandshakeAuth { .. } => HelloStatus::AuthFailed,
            ProtocolError::BadStream { .. } => HelloStatus::BadStream,
            ProtocolError::DuplicateStream { .. } => HelloStatus::Duplicate,
            ProtocolError::Version(_) => HelloStatus::Version,
            _ => HelloStatus::Other(255),
        }
    }
}

impl fmt::Display for HelloStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HelloStatus::Accepted => f.write_str("accepted"),
            HelloStatus::UnknownMigration => f.write_str("unknown migration"),
            HelloStatus::ModeMismatch => {
                f.write_str("transport differs from the coordinator's spec")
            }
            HelloStatus::AuthFailed => f.write_str("wrong migration key"),
            HelloStatus::BadStream => f.write_str("stream index out of range"),
            HelloStatus::Duplicate => f.write_str("stream already connected"),
            HelloStatus::Version => f.write_str("unsupported protocol version"),
            HelloStatus::Other(b) => write!(f, "status {b}"),
        }
    }
}

/// A client hello as parsed, before it is authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    pub transport: Transport,
    pub stream: u16,
    pub streams: u16,
    pub flags: u16,
    pub id: MigrationId,
    pub tag: [u8; TAG_LEN],
    pub bytes: [u8; CLIENT_HELLO_LEN],
}

/// Structural parse of a client hello (what the fuzzer exercises).
pub fn parse_client_hello(b: &[u8; CLIENT_HELLO_LEN]) -> Result<ClientHello, ProtocolError> {
    if &b[0..8] != CLIENT_MAGIC {
        return Err(ProtocolError::NotFerry(hex::encode(&b[0..8])));
    }
    if b[8] != crate::PROTOCOL_VERSION {
        return Err(ProtocolError::Version(b[8]));
    }
    let transport =
        Transport::from_wire(b[9]).ok_or(ProtocolError::Malformed("unknown transport in hello"))?;
    let u16_at = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    let flags = u16_at(14);
    if flags & !FLAG_OUTCOME_QUERY != 0 || b[32..48] != [0; 16] {
        return Err(ProtocolError::Malformed("reserved hello bits set"));
    }
    Ok(ClientHello {
        transport,
        stream: u16_at(10),
        streams: u16_at(12),
        flags,
        id: MigrationId(b[16..32].try_into().expect("16 bytes")),
        tag: b[48..64].try_into().expect("16 bytes"),
        bytes: *b,
    })
}

fn hello_tag(
    schedule: &KeySchedule,
    backend: Backend,
    stream: u16,
    role: Role,
    aad: &[u8],
) -> [u8; TAG_LEN] {
    let k = schedule.hello(stream, role);
    backend.cipher(&k.key).seal(&k.iv, aad, &mut [])
}

/// What a destination expects of the streams of one migration.
#[derive(Clone)]
pub struct Expectation {
    pub transport: Transport,
    /// Present exactly when the transport is encrypted.
    pub schedule: Option<Arc<KeySchedule>>,
    pub streams: u16,
}

/// The destination's view of the migrations it has accepted specs for.
pub trait StreamRegistry {
    fn expect(&self, id: &MigrationId) -> Option<Expectation>;
    /// Marks `stream` of `id` connected; false if it already was.
    fn claim(&self, id: &MigrationId, stream: u16, flags: u16) -> bool;
}

/// A stream the destination accepted.
#[derive(Clone)]
pub struct Accepted {
    pub id: MigrationId,
    pub stream: u16,
    pub streams: u16,
    pub flags: u16,
    pub expectation: Expectation,
}

/// Destination side. On refusal, tells the client why (best effort) and
/// returns the error; the caller closes the connection.
pub fn server_handshake<S: Read + Write>(
    s: &mut S,
    registry: &dyn StreamRegistry,
    backend: Backend,
    metrics: Option<&ProtocolMetrics>,
) -> Result<Accepted, ProtocolError> {
    let mut b = [0u8; CLIENT_HELLO_LEN];
    let r = read_hello(s, &mut b).and_then(|()| check_client_hello(&b, registry, backend));
    match r {
        Ok(acc) => {
            let mut reply = [0u8; SERVER_HELLO_LEN];
            reply[0..8].copy_from_slice(SERVER_MAGIC);
            reply[8] = crate::PROTOCOL_VERSION;
            reply[9] = HelloStatus::Accepted.to_wire();
            reply[10..12].copy_from_slice(&acc.stream.to_be_bytes());
            if let Some(ks) = &acc.expectation.schedule {
                let mut aad = [0u8; 16 + CLIENT_HELLO_LEN];
                aad[..16].copy_from_slice(&reply[..16]);
                aad[16..].copy_from_slice(&b);
                let tag = hello_tag(ks, backend, acc.stream, Role::Server, &aad);
                reply[16..].copy_from_slice(&tag);
            }
            s.write_all(&reply)?;
            s.flush()?;
            Ok(acc)
        }
        Err(e) => {
            if let Some(m) = metrics {
                m.reject(&e);
            }
            if !matches!(
                e,
                ProtocolError::Io(_) | ProtocolError::Timeout | ProtocolError::NotFerry(_)
            ) {
                let mut reply = [0u8; SERVER_HELLO_LEN];
                reply[0..8].copy_from_slice(SERVER_MAGIC);
                reply[8] = crate::PROTOCOL_VERSION;
                reply[9] = HelloStatus::of(&e).to_wire();
                reply[10..12].copy_from_slice(&b[10..12]);
                let _ = s.write_all(&reply);
            }
            Err(e)
        }
    }
}

fn read_hello<S: Read>(s: &mut S, b: &mut [u8]) -> Result<(), ProtocolError> {
    s.read_exact(b).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ProtocolError::Timeout,
        std::io::ErrorKind::UnexpectedEof => ProtocolError::Truncated { records: 0 },
        _ => ProtocolError::Io(e),
    })
}

fn check_client_hello(
    b: &[u8; CLIENT_HELLO_LEN],
    registry: &dyn StreamRegistry,
    backend: Backend,
) -> Result<Accepted, ProtocolError> {
    let h = parse_client_hello(b)?;
    let exp = registry
        .expect(&h.id)
        .ok_or(ProtocolError::UnknownMigration(h.id))?;
    if h.transport != exp.transport {
        return Err(ProtocolError::ModeMismatch {
            id: h.id,
            expected: exp.transport,
            got: h.transport,
        });
    }
    let query = h.flags & FLAG_OUTCOME_QUERY != 0;
    if !query && (h.streams != exp.streams || h.stream >= exp.streams) {
        return Err(ProtocolError::BadStream {
            id: h.id,
            index: h.stream,
            count: exp.streams,
        });
    }
    match &exp.schedule {
        Some(ks) => {
            let expect = hello_tag(ks, backend, h.stream, Role::Client, &b[..48]);
            // Constant time: the tag is a proof of key possession.
            let diff = expect.iter().zip(h.tag).fold(0u8, |d, (a, b)| d | (a ^ b));
            if diff != 0 {
                return Err(ProtocolError::HandshakeAuth { id: h.id });
            }
        }
        None if h.tag != [0; TAG_LEN] => {
            return Err(ProtocolError::Malformed("tag on a plaintext hello"));
        }
        None => {}
    }
    if !registry.claim(&h.id, h.stream, h.flags) {
        return Err(ProtocolError::DuplicateStream {
            id: h.id,
            index: h.stream,
        });
    }
    Ok(Accepted {
        id: h.id,
        stream: h.stream,
        streams: h.streams,
        flags: h.flags,
        expectation: exp,
    })
}

/// Source side: sends the hello and verifies the destination's answer.
#[allow(clippy::too_many_arguments)]
pub fn client_handshake<S: Read + Write>(
    s: &mut S,
    id: &MigrationId,
    transport: Transport,
    schedule: Option<&KeySchedule>,
    backend: Backend,
    stream: u16,
    streams: u16,
    flags: u16,
) -> Result<(), ProtocolError> {
    let mut b = [0u8; CLIENT_HELLO_LEN];
    b[0..8].copy_from_slice(CLIENT_MAGIC);
    b[8] = crate::PROTOCOL_VERSION;
    b[9] = transport.wire();
    b[10..12].copy_from_slice(&stream.to_be_bytes());
    b[12..14].copy_from_slice(&streams.to_be_bytes());
    b[14..16].copy_from_slice(&flags.to_be_bytes());
    b[16..32].copy_from_slice(&id.0);
    if let Some(ks) = schedule {
        let tag = hello_tag(ks, backend, stream, Role::Client, &b[..48]);
        b[48..].copy_from_slice(&tag);
    }
    s.write_all(&b)?;
    s.flush()?;
    let mut r = [0u8; SERVER_HELLO_LEN];
    read_hello(s, &mut r)?;
    if &r[0..8] != SERVER_MAGIC {
        return Err(ProtocolError::NotFerry(hex::encode(&r[0..8])));
    }
    if r[8] != crate::PROTOCOL_VERSION {
        return Err(ProtocolError::Version(r[8]));
    }
    let status = HelloStatus::from_wire(r[9]);
    if status != HelloStatus::Accepted {
        return Err(ProtocolError::Refused(status));
    }
    if r[10..12] != stream.to_be_bytes() {
        return Err(ProtocolError::Malformed("server hello for another stream"));
    }
    if let Some(ks) = schedule {
        let mut aad = [0u8; 16 + CLIENT_HELLO_LEN];
        aad[..16].copy_from_slice(&r[..16]);
        aad[16..].copy_from_slice(&b);
        let expect = hello_tag(ks, backend, stream, Role::Server, &aad);
        let diff = expect
            .iter()
            .zip(&r[16..])
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 {
            return Err(ProtocolError::HandshakeAuth { id: *id });
        }
    }
    Ok(())
}
