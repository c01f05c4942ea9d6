//! ferry's encrypted migration protocol, above TCP.
//!
//! A migration runs over N TCP streams. Each opens with a [`handshake`]
//! that names the migration and proves both ends hold its key, then carries
//! [`record`]s sealed with AES-256-GCM under keys derived per stream and
//! direction ([`keys`]) from the coordinator's [`spec`]. The byte layouts
//! are documented in the modules and in `PROTOCOL.md` beside this crate.

pub mod aead;
pub mod error;
pub mod fuzzing;
pub mod handshake;
pub mod keys;
mod metrics;
pub mod record;
pub mod spec;

/// The version byte of hellos and records. 2: plaintext records carry a
/// CRC32C (version 1 had no check on plaintext).
pub const PROTOCOL_VERSION: u8 = 2;

pub use aead::Backend;
pub use error::ProtocolError;
pub use keys::{Direction, KeySchedule, MigrationKey};
pub use metrics::ProtocolMetrics;
pub use spec::{
    EncryptionMode, LimitChange, Limits, MemoryCheck, MigrationId, MigrationSpec, SpecError,
    Transport,
};

use record::Crypto;

/// Which end of a migration this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// Sealing and opening state for one stream on one side: (send, receive).
pub fn stream_crypto(
    schedule: Option<&KeySchedule>,
    backend: Backend,
    stream: u16,
    side: Side,
) -> (Option<Crypto>, Option<Crypto>) {
    let Some(ks) = schedule else {
        return (None, None);
    };
    let (tx, rx) = match side {
        Side::Source => (
            Direction::SourceToDestination,
            Direction::DestinationToSource,
        ),
        Side::Destination => (
            Direction::DestinationToSource,
            Direction::SourceToDestination,
        ),
    };
    let mk = |d| {
        let k = ks.record(stream, d);
        Crypto {
            aead: backend.cipher(&k.key),
            iv: k.iv,
        }
    };
    (Some(mk(tx)), Some(mk(rx)))
}
