//! Everything that can go wrong on a migration stream, each with the label
//! it is counted under in `ferry_protocol_rejections_total{reason}`.

use std::io;

use super::{handshake::HelloStatus, spec::MigrationId, spec::Transport};

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection: {0}")]
    Io(io::Error),
    #[error("timed out: the peer neither sent nor took any bytes within the stream's timeout")]
    Stalled,
    #[error("not a ferry migration stream: first bytes {0}")]
    NotFerry(String),
    #[error("peer speaks ferry protocol version {0}; this host speaks version {v}", v = crate::PROTOCOL_VERSION)]
    Version(u8),
    #[error("handshake for unknown migration {0}")]
    UnknownMigration(MigrationId),
    #[error(
        "migration {id}: peer asked for {got} but the coordinator's spec says {expected}: refused (downgrade attempt?)"
    )]
    ModeMismatch {
        id: MigrationId,
        expected: Transport,
        got: Transport,
    },
    #[error(
        "migration {id}: handshake authentication failed: the peer does not hold this migration's key"
    )]
    HandshakeAuth { id: MigrationId },
    #[error("migration {id}: stream {index} is outside 0..{count}")]
    BadStream {
        id: MigrationId,
        index: u16,
        count: u16,
    },
    #[error("migration {id}: stream {index} is already connected")]
    DuplicateStream { id: MigrationId, index: u16 },
    #[error("the destination refused the stream: {0}")]
    Refused(HelloStatus),
    #[error(
        "record {counter}: authentication failed (wrong key, altered header or altered payload)"
    )]
    Decrypt { counter: u64 },
    #[error("record {counter}: checksum mismatch (the plaintext record was corrupted on its way)")]
    Checksum { counter: u64 },
    #[error("record {got} replayed: record {expected} was expected next")]
    Replay { expected: u64, got: u64 },
    #[error(
        "record {got} arrived while record {expected} was expected: a record was dropped or reordered"
    )]
    OutOfOrder { expected: u64, got: u64 },
    #[error("record length {length} exceeds the limit of {limit} bytes")]
    TooLong { length: u32, limit: u32 },
    #[error("stream truncated after {records} records: it ended without an end-of-stream record")]
    Truncated { records: u64 },
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    #[error("the peer did not complete the handshake in time")]
    Timeout,
    #[error("too many connections waiting for their handshake; closed")]
    Overloaded,
}

/// A socket timeout is a timeout, not "Resource temporarily unavailable
/// (os error 11)": it is named and counted as one.
impl From<io::Error> for ProtocolError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ProtocolError::Stalled,
            _ => ProtocolError::Io(e),
        }
    }
}

impl ProtocolError {
    /// The metrics label: a fixed, bounded set.
    pub fn reason(&self) -> &'static str {
        match self {
            ProtocolError::Io(_) => "io",
            ProtocolError::NotFerry(_) => "garbage_handshake",
            ProtocolError::Version(_) => "version",
            ProtocolError::UnknownMigration(_) => "unknown_migration",
            ProtocolError::ModeMismatch { .. } => "mode_mismatch",
            ProtocolError::HandshakeAuth { .. } => "handshake_auth",
            ProtocolError::BadStream { .. } => "bad_stream",
            ProtocolError::DuplicateStream { .. } => "duplicate_stream",
            ProtocolError::Refused(_) => "refused",
            ProtocolError::Decrypt { .. } => "decrypt",
            ProtocolError::Checksum { .. } => "checksum",
            ProtocolError::Replay { .. } => "replay",
            ProtocolError::OutOfOrder { .. } => "out_of_order",
            ProtocolError::TooLong { .. } => "length",
            ProtocolError::Truncated { .. } => "truncated",
            ProtocolError::Malformed(_) => "malformed",
            ProtocolError::Timeout | ProtocolError::Stalled => "timeout",
            ProtocolError::Overloaded => "overload",
        }
    }

    pub const REASONS: &'static [&'static str] = &[
        "io",
        "garbage_handshake",
        "version",
        "unknown_migration",
        "mode_mismatch",
        "handshake_auth",
        "bad_stream",
        "duplicate_stream",
        "refused",
        "decrypt",
        "checksum",
        "replay",
        "out_of_order",
        "length",
        "truncated",
        "malformed",
        "timeout",
        "overload",
    ];
}
