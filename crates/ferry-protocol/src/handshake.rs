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

use subtle::ConstantTimeEq;

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
const FLAG_OUTCOME_QUERY: u16 = 1;
/// The client hello's bytes its tag covers.
const CLIENT_SIGNED: usize = 48;
/// The server hello's own bytes its tag covers (then the client's hello).
const SERVER_SIGNED: usize = 16;

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

/// What a stream is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamPurpose {
    /// One of the migration's `streams` streams.
    Migration,
    /// The source asks what became of the migration (see the engine).
    OutcomeQuery,
}

/// A client hello. [`ClientHello::encode`] and [`ClientHello::decode`] are
/// the only code that knows its layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    pub transport: Transport,
    pub stream: u16,
    pub streams: u16,
    pub purpose: StreamPurpose,
    pub id: MigrationId,
    /// Zero on plaintext migrations.
    pub tag: [u8; TAG_LEN],
}

impl ClientHello {
    /// An unsigned hello ([`client_handshake`] signs it).
    pub fn new(
        id: MigrationId,
        transport: Transport,
        stream: u16,
        streams: u16,
        purpose: StreamPurpose,
    ) -> Self {
        ClientHello {
            transport,
            stream,
            streams,
            purpose,
            id,
            tag: [0; TAG_LEN],
        }
    }

    pub fn encode(&self) -> [u8; CLIENT_HELLO_LEN] {
        let mut b = [0u8; CLIENT_HELLO_LEN];
        b[0..8].copy_from_slice(CLIENT_MAGIC);
        b[8] = crate::PROTOCOL_VERSION;
        b[9] = self.transport.wire();
        b[10..12].copy_from_slice(&self.stream.to_be_bytes());
        b[12..14].copy_from_slice(&self.streams.to_be_bytes());
        let flags = match self.purpose {
            StreamPurpose::Migration => 0,
            StreamPurpose::OutcomeQuery => FLAG_OUTCOME_QUERY,
        };
        b[14..16].copy_from_slice(&flags.to_be_bytes());
        b[16..32].copy_from_slice(&self.id.0);
        b[CLIENT_SIGNED..].copy_from_slice(&self.tag);
        b
    }

    /// Structural parse, before authentication (what the fuzzer exercises).
    /// Strict: what decodes encodes back to the same bytes, so the tags
    /// can be computed over [`ClientHello::encode`].
    pub fn decode(b: &[u8; CLIENT_HELLO_LEN]) -> Result<Self, ProtocolError> {
        if &b[0..8] != CLIENT_MAGIC {
            return Err(ProtocolError::NotFerry(hex::encode(&b[0..8])));
        }
        if b[8] != crate::PROTOCOL_VERSION {
            return Err(ProtocolError::Version(b[8]));
        }
        let transport = Transport::from_wire(b[9])
            .ok_or(ProtocolError::Malformed("unknown transport in hello"))?;
        let u16_at = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
        let purpose = match u16_at(14) {
            0 => StreamPurpose::Migration,
            FLAG_OUTCOME_QUERY => StreamPurpose::OutcomeQuery,
            _ => return Err(ProtocolError::Malformed("reserved hello bits set")),
        };
        if b[32..CLIENT_SIGNED] != [0; 16] {
            return Err(ProtocolError::Malformed("reserved hello bits set"));
        }
        Ok(ClientHello {
            transport,
            stream: u16_at(10),
            streams: u16_at(12),
            purpose,
            id: MigrationId(b[16..32].try_into().expect("16 bytes")),
            tag: b[CLIENT_SIGNED..].try_into().expect("16 bytes"),
        })
    }

    /// The tag proving the client holds the migration's key.
    fn sign(&self, schedule: &KeySchedule, backend: Backend) -> [u8; TAG_LEN] {
        let b = self.encode();
        hello_tag(
            schedule,
            backend,
            self.stream,
            Role::Client,
            &b[..CLIENT_SIGNED],
        )
    }
}

/// The destination's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHello {
    pub status: HelloStatus,
    /// The client's stream, echoed.
    pub stream: u16,
    /// Zero on plaintext migrations and on refusals.
    pub tag: [u8; TAG_LEN],
}

impl ServerHello {
    pub fn encode(&self) -> [u8; SERVER_HELLO_LEN] {
        let mut b = [0u8; SERVER_HELLO_LEN];
        b[0..8].copy_from_slice(SERVER_MAGIC);
        b[8] = crate::PROTOCOL_VERSION;
        b[9] = self.status.to_wire();
        b[10..12].copy_from_slice(&self.stream.to_be_bytes());
        b[SERVER_SIGNED..].copy_from_slice(&self.tag);
        b
    }

    pub fn decode(b: &[u8; SERVER_HELLO_LEN]) -> Result<Self, ProtocolError> {
        if &b[0..8] != SERVER_MAGIC {
            return Err(ProtocolError::NotFerry(hex::encode(&b[0..8])));
        }
        if b[8] != crate::PROTOCOL_VERSION {
            return Err(ProtocolError::Version(b[8]));
        }
        Ok(ServerHello {
            status: HelloStatus::from_wire(b[9]),
            stream: u16::from_be_bytes([b[10], b[11]]),
            tag: b[SERVER_SIGNED..].try_into().expect("16 bytes"),
        })
    }

    /// The tag binding this answer to the client's whole hello.
    fn sign(
        &self,
        client: &ClientHello,
        schedule: &KeySchedule,
        backend: Backend,
    ) -> [u8; TAG_LEN] {
        let mut aad = [0u8; SERVER_SIGNED + CLIENT_HELLO_LEN];
        aad[..SERVER_SIGNED].copy_from_slice(&self.encode()[..SERVER_SIGNED]);
        aad[SERVER_SIGNED..].copy_from_slice(&client.encode());
        hello_tag(schedule, backend, self.stream, Role::Server, &aad)
    }
}

/// Whether two tags are equal, in time independent of where they differ:
/// a tag is a proof of key possession.
pub fn tags_equal(a: &[u8; TAG_LEN], b: &[u8; TAG_LEN]) -> bool {
    bool::from(a.ct_eq(b))
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
    fn claim(&self, id: &MigrationId, stream: u16, purpose: StreamPurpose) -> bool;
}

/// A stream the destination accepted.
#[derive(Clone)]
pub struct Accepted {
    pub id: MigrationId,
    pub stream: u16,
    pub streams: u16,
    pub purpose: StreamPurpose,
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
        Ok((acc, hello)) => {
            let mut reply = ServerHello {
                status: HelloStatus::Accepted,
                stream: acc.stream,
                tag: [0; TAG_LEN],
            };
            if let Some(ks) = &acc.expectation.schedule {
                reply.tag = reply.sign(&hello, ks, backend);
            }
            s.write_all(&reply.encode())?;
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
                let reply = ServerHello {
                    status: HelloStatus::of(&e),
                    // Echoed as sent, whatever else the hello got wrong.
                    stream: u16::from_be_bytes([b[10], b[11]]),
                    tag: [0; TAG_LEN],
                };
                let _ = s.write_all(&reply.encode());
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
) -> Result<(Accepted, ClientHello), ProtocolError> {
    let h = ClientHello::decode(b)?;
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
    if h.purpose == StreamPurpose::Migration
        && (h.streams != exp.streams || h.stream >= exp.streams)
    {
        return Err(ProtocolError::BadStream {
            id: h.id,
            index: h.stream,
            count: exp.streams,
        });
    }
    match &exp.schedule {
        Some(ks) if !tags_equal(&h.sign(ks, backend), &h.tag) => {
            return Err(ProtocolError::HandshakeAuth { id: h.id });
        }
        None if h.tag != [0; TAG_LEN] => {
            return Err(ProtocolError::Malformed("tag on a plaintext hello"));
        }
        _ => {}
    }
    if !registry.claim(&h.id, h.stream, h.purpose) {
        return Err(ProtocolError::DuplicateStream {
            id: h.id,
            index: h.stream,
        });
    }
    let acc = Accepted {
        id: h.id,
        stream: h.stream,
        streams: h.streams,
        purpose: h.purpose,
        expectation: exp,
    };
    Ok((acc, h))
}

/// Source side: sends `hello` (signed here when `schedule` is given) and
/// verifies the destination's answer.
pub fn client_handshake<S: Read + Write>(
    s: &mut S,
    mut hello: ClientHello,
    schedule: Option<&KeySchedule>,
    backend: Backend,
) -> Result<(), ProtocolError> {
    if let Some(ks) = schedule {
        hello.tag = hello.sign(ks, backend);
    }
    s.write_all(&hello.encode())?;
    s.flush()?;
    let mut r = [0u8; SERVER_HELLO_LEN];
    read_hello(s, &mut r)?;
    let reply = ServerHello::decode(&r)?;
    if reply.status != HelloStatus::Accepted {
        return Err(ProtocolError::Refused(reply.status));
    }
    if reply.stream != hello.stream {
        return Err(ProtocolError::Malformed("server hello for another stream"));
    }
    if let Some(ks) = schedule
        && !tags_equal(&reply.sign(&hello, ks, backend), &reply.tag)
    {
        return Err(ProtocolError::HandshakeAuth { id: hello.id });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: MigrationId = MigrationId([7; 16]);

    #[test]
    fn hellos_decode_what_they_encode_and_refuse_reserved_bits() {
        for purpose in [StreamPurpose::Migration, StreamPurpose::OutcomeQuery] {
            let mut h = ClientHello::new(ID, Transport::Aes256Gcm, 3, 4, purpose);
            h.tag = [9; TAG_LEN];
            let b = h.encode();
            assert_eq!(ClientHello::decode(&b).unwrap(), h);
        }
        let b = ClientHello::new(ID, Transport::Plaintext, 0, 1, StreamPurpose::Migration).encode();
        for (at, why) in [(15, "flags"), (40, "reserved")] {
            let mut bad = b;
            bad[at] = 0x80;
            assert!(
                matches!(ClientHello::decode(&bad), Err(ProtocolError::Malformed(_))),
                "a set {why} bit must be refused"
            );
        }
        let mut old = b;
        old[8] = crate::PROTOCOL_VERSION - 1;
        assert!(matches!(
            ClientHello::decode(&old),
            Err(ProtocolError::Version(_))
        ));

        let reply = ServerHello {
            status: HelloStatus::Duplicate,
            stream: 513,
            tag: [1; TAG_LEN],
        };
        assert_eq!(ServerHello::decode(&reply.encode()).unwrap(), reply);
        let mut foreign = reply.encode();
        foreign[0] = b'X';
        assert!(matches!(
            ServerHello::decode(&foreign),
            Err(ProtocolError::NotFerry(_))
        ));
    }

    #[test]
    fn tags_equal_compares_every_byte() {
        let a = [5u8; TAG_LEN];
        assert!(tags_equal(&a, &a));
        for i in 0..TAG_LEN {
            let mut b = a;
            b[i] ^= 1;
            assert!(!tags_equal(&a, &b), "byte {i} differs");
        }
    }
}
