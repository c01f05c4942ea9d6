//! Guests whose device model migrates itself (QEMU): ferry is the transport
//! and the orchestrator beneath it.
//!
//! The device model keeps doing pre-copy, dirty logging and convergence. It
//! migrates to a unix socket of ferry's; each connection it opens (the main
//! channel, then one per multifd channel) becomes the next ferry stream, in
//! accept order, carried both ways (the main channel's return path) inside
//! encrypted records, a half-close carried as CHANNEL_END. On the other
//! host, ferry connects each stream to the twin device model's incoming
//! socket when the stream's first bytes arrive (the twin sorts channels by
//! their first bytes itself).
//!
//! The commit is the engine's, as for ferry's own page stream: both device
//! models done (source stopped, destination loaded and paused) is READY; GO
//! resumes the destination and RESUMED retires the source; any failure
//! before GO resumes the source.
//!
//! ```text
//! stream k, either way
//!   0x03 DATA         channel bytes
//!   0x04 CHANNEL_END  the sender's side of the channel closed (half-close)
//! ```

pub mod relay;
pub mod source;

use std::path::Path;

use ferry_protocol::Limits;

use crate::guest::{GuestError, GuestInfo, RunState};

pub use source::migrate_out;

/// Where a device model's migration is, on either side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelStatus {
    /// Not started, or setting up.
    Setup,
    Active,
    /// Source: everything sent and the guest stopped. Destination: loaded,
    /// paused, waiting to be resumed.
    Completed,
    Failed(String),
    Cancelled,
}

/// The device model's own figures, as `query-migrate` gives them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChannelProgress {
    pub status: Option<ChannelStatus>,
    pub transferred_bytes: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
    pub duplicate_pages: u64,
    pub normal_pages: u64,
    /// Bytes per second the guest dirties.
    pub dirty_rate: f64,
    /// Bytes per second the device model sends.
    pub transfer_rate: f64,
    pub passes: u32,
    pub throttle_percent: u8,
    pub expected_downtime_seconds: f64,
    pub setup_seconds: f64,
}

/// A guest whose device model migrates itself over byte channels.
pub trait ChannelGuest: Send + Sync {
    fn name(&self) -> &str;
    fn memory_bytes(&self) -> u64;
    fn run_state(&self) -> RunState;
    fn info(&self) -> GuestInfo;
    /// Source: starts migrating into the unix socket `socket` over
    /// `channels` connections (1: the main channel; n > 1: main and n - 1
    /// multifd channels), within `limits`.
    fn start_migration(
        &self,
        socket: &Path,
        channels: u16,
        limits: &Limits,
    ) -> Result<(), GuestError>;
    /// Destination: waits for the migration on `socket`, set up as the
    /// source's `channels`.
    fn accept_migration(&self, socket: &Path, channels: u16) -> Result<(), GuestError>;
    fn progress(&self) -> Result<ChannelProgress, GuestError>;
    /// Source: the rate ferry measures end to end, in bytes per second,
    /// for the device model's switch-over decision. It sees only a local
    /// socket, so it cannot know the path's rate itself.
    fn set_switchover_bandwidth(&self, bytes_per_second: u64) -> Result<(), GuestError>;
    /// Source: a change of the running migration's cap (None: none) and
    /// downtime limit (`ferry migrate-set`).
    fn set_limits(
        &self,
        bandwidth: Option<u64>,
        downtime_limit: std::time::Duration,
    ) -> Result<(), GuestError>;
    /// Source: stops the migration; the guest runs on here.
    fn cancel_migration(&self);
    /// When the guest stopped for the switch-over (the source's stun).
    fn stopped_at(&self) -> Option<std::time::SystemTime>;
    /// Runs the guest (the source after a failure; the destination on GO).
    fn resume(&self) -> Result<(), GuestError>;
    /// Ends the guest here for good: migrated away, or an incoming one
    /// discarded.
    fn release(&self);
    /// The guest's own verdict on its memory, if it gives one: (checks
    /// passed, checks failed) so far.
    fn verdict(&self) -> Option<(u64, u64)>;
}
