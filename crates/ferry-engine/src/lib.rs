//! The live-migration engine: iterative pre-copy with SDPS throttling,
//! a two-step switch-over that never lets a guest run on two hosts, and the
//! destination that writes pages straight into guest memory.
//!
//! It moves any [`guest::Guest`] over the encrypted protocol
//! ([`ferry_protocol`]), on N TCP streams. Page `p` always travels on
//! stream `(p / 64) % N`, so the copies of one page from successive passes
//! arrive in order without any cross-stream synchronisation.

pub mod channels;
pub mod commit;
pub mod converge;
pub mod destination;
pub mod guest;
pub mod hosted;
pub mod journal;
pub mod limits;
pub mod source;
pub mod stats;
pub mod wire;

use std::time::Duration;

pub use commit::{Commit, Decision, DecisionSlot};
pub use destination::{
    DestinationEvent, IncomingRegistry, MigrationListener, Outcome, PrepareError,
};
pub use hosted::Hosted;
pub use journal::Journal;
pub use limits::LiveLimits;
pub use source::{SourceOptions, migrate_out};
pub use stats::{
    DestinationStats, MigrationResult, MigrationStats, PassStats, Phase, Progress, StunTimes,
};

use crate::guest::GuestError;
use ferry_protocol::ProtocolError;

/// Pages per partition unit: page p goes on stream (p / CHUNK_PAGES) % streams.
pub const CHUNK_PAGES: usize = 64;

/// The stream a page travels on.
pub fn stream_of(page: usize, streams: usize) -> usize {
    (page / CHUNK_PAGES) % streams
}

/// Outcome-query streams use indexes from here up (data streams are < 64),
/// one per attempt, so no two queries share keys and nonces.
pub const QUERY_STREAM_BASE: u16 = 0xff00;

/// How long either end waits for the other during switch-over.
pub const DEFAULT_SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("invalid spec")]
    Spec(#[from] ferry_protocol::SpecError),
    #[error("the guest has {guest} bytes of memory, the spec says {spec}")]
    SpecMemory { guest: u64, spec: u64 },
    #[error("spec {id} does not describe guest {guest}'s machine ({bytes} bytes)")]
    SpecMachine {
        id: ferry_protocol::MigrationId,
        guest: String,
        bytes: u64,
    },
    #[error("connecting stream {stream} to {addr}")]
    Connect {
        stream: u16,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("stream {stream}")]
    Stream {
        stream: u16,
        #[source]
        source: ProtocolError,
    },
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error(
        "gave up after {passes} passes and {seconds:.1}s: {remaining} bytes still dirty (max_time reached)"
    )]
    GaveUp {
        passes: u32,
        seconds: f64,
        remaining: u64,
    },
    #[error("the destination failed: {0}")]
    Destination(String),
    #[error("the destination did not answer within {0:?} during switch-over")]
    SwitchoverTimeout(Duration),
    #[error(
        "cannot tell whether the destination resumed the guest ({0}); the guest stays stunned on the source until `ferry resolve GUEST` decides"
    )]
    InDoubt(String),
    /// The host's journal could not make a commit point durable.
    #[error("cannot record the switch-over in the host's journal")]
    Journal(#[source] std::io::Error),
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// The coordinator did not commit the switch-over (the guest resumes
    /// on the source).
    #[error("the switch-over was not committed: {0}")]
    NotCommitted(String),
}

impl MigrationError {
    /// True when the guest is known to be running on the source afterwards.
    pub fn guest_kept(&self) -> bool {
        !matches!(self, MigrationError::InDoubt(_))
    }
}
