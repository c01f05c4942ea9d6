//! What a migration reports: as complete as QEMU's query-migrate, plus the
//! per-pass history and the crypto cost.

use serde::{Deserialize, Serialize};

use ferry_protocol::{EncryptionMode, MigrationId, Transport};

/// One pre-copy pass (or the final, stunned one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PassStats {
    pub pass: u32,
    /// Pages sent in this pass, and how many of them were all zeros.
    pub pages: u64,
    pub zero_pages: u64,
    /// Bytes put on the wire (records, headers and tags included).
    pub bytes: u64,
    pub seconds: f64,
    /// Pages the guest dirtied while this pass ran.
    pub dirtied_pages: u64,
    pub dirty_rate: f64,
    pub transfer_rate: f64,
    /// Predicted stun time if the next pass were the last.
    pub expected_downtime_seconds: f64,
    pub throttle_percent: u8,
    pub stunned: bool,
}

/// Live progress, streamed to the client while a migration runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    pub pass: u32,
    pub elapsed_seconds: f64,
    pub transferred_bytes: u64,
    pub total_bytes: u64,
    pub remaining_bytes: u64,
    /// The last rates measured: during a pass, the transfer rate so far in
    /// it and the dirty rate of the pass before (the dirty log is read only
    /// between passes).
    pub dirty_rate: f64,
    pub transfer_rate: f64,
    pub throttle_percent: u8,
    /// This pass: bytes sent so far and bytes it has to send (0: not
    /// known, as for a device model's migration).
    #[serde(default)]
    pub pass_bytes: u64,
    #[serde(default)]
    pub pass_total_bytes: u64,
    /// The stun if it began now, from the last measurement.
    #[serde(default)]
    pub expected_downtime_seconds: f64,
    /// Seconds to the switch-over if the rates hold (None: the guest dirties
    /// as fast as the link carries, so it converges only if throttled).
    #[serde(default)]
    pub eta_seconds: Option<f64>,
}

/// Seconds until pre-copy converges: `remaining` bytes at `transfer_rate`,
/// while the guest dirties `dirty_rate` (each pass resends what the one
/// before it dirtied, a geometric series), or None when it cannot.
pub fn eta(remaining: u64, transfer_rate: f64, dirty_rate: f64) -> Option<f64> {
    (transfer_rate > dirty_rate && transfer_rate > 0.0)
        .then(|| remaining as f64 / (transfer_rate - dirty_rate))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    #[default]
    Setup,
    PreCopy,
    Switchover,
    Completed,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationResult {
    Completed,
    Failed,
}

/// The full record of one migration, as the source saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationStats {
    pub id: MigrationId,
    pub guest: String,
    pub source: String,
    pub destination: String,
    pub result: MigrationResult,
    pub error: Option<String>,
    /// What the operator should know about these figures (e.g. that the
    /// source was lost after the switch-over, so only the outcome is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub mode: EncryptionMode,
    pub transport: Transport,
    pub backend: String,
    pub streams: u16,
    pub total_seconds: f64,
    pub setup_seconds: f64,
    /// From stun on the source to the destination's resume confirmation.
    pub downtime_seconds: f64,
    pub downtime_limit_seconds: f64,
    /// The bandwidth cap across all streams at the end, in bytes per second
    /// (none: as fast as the path went).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<u64>,
    /// The guest was stunned longer than `downtime_limit_seconds` (the
    /// migration completed, but not within what was asked).
    #[serde(default)]
    pub downtime_over_limit: bool,
    pub transferred_bytes: u64,
    pub total_bytes: u64,
    pub remaining_bytes: u64,
    pub normal_pages: u64,
    pub zero_pages: u64,
    pub passes: u32,
    pub dirty_rate: f64,
    pub transfer_rate: f64,
    pub throttle_percent: u8,
    pub throttle_max_percent: u8,
    /// Pages and device state sent while the guest was stunned.
    pub stunned_bytes: u64,
    pub device_state_bytes: u64,
    /// CPU seconds spent sealing records on the source.
    pub seal_cpu_seconds: f64,
    pub dirty_log: String,
    /// Digests of guest memory at stun and at resume compared (None: not asked).
    pub memory_identical: Option<bool>,
    /// Before the stun, guest running: waiting for the destination to
    /// confirm it has the last pre-copy pass in memory (PASSED).
    #[serde(default)]
    pub drain_seconds: f64,
    /// Where the downtime went.
    #[serde(default)]
    pub stun: StunTimes,
    pub pass_history: Vec<PassStats>,
}

impl MigrationStats {
    /// Records the downtime, and says so where it went over the limit the
    /// source switched over under: a prediction can be wrong (a path that
    /// slowed, a host that stalled), and that must never pass silently.
    pub fn set_downtime(&mut self, seconds: f64) {
        self.downtime_seconds = seconds;
        self.downtime_over_limit =
            self.downtime_limit_seconds > 0.0 && seconds > self.downtime_limit_seconds;
        if self.downtime_over_limit {
            tracing::warn!(migration = %self.id, guest = %self.guest,
                downtime_ms = seconds * 1e3, limit_ms = self.downtime_limit_seconds * 1e3,
                "migration: the downtime went over its limit");
        }
    }
}

/// The downtime in its steps, on the source's clock; they add up to
/// `downtime_seconds`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StunTimes {
    /// Parking the vCPUs and collecting the last dirty set.
    pub pause_seconds: f64,
    /// The final pass, the device state and the stun-time memory check.
    pub final_pass_seconds: f64,
    /// From PREPARE to READY: the destination checks and loads what it got.
    pub ready_seconds: f64,
    /// From READY to RESUMED: the journal, GO, and the resume there.
    pub commit_seconds: f64,
}

impl MigrationStats {
    /// A migration that has not moved anything yet: every figure zero,
    /// result failed until something says otherwise.
    pub fn begin(
        id: MigrationId,
        guest: &str,
        source: &str,
        destination: &str,
        mode: EncryptionMode,
        transport: Transport,
    ) -> Self {
        MigrationStats {
            id,
            guest: guest.into(),
            source: source.into(),
            destination: destination.into(),
            result: MigrationResult::Failed,
            error: None,
            note: None,
            mode,
            transport,
            backend: String::new(),
            streams: 0,
            total_seconds: 0.0,
            setup_seconds: 0.0,
            downtime_seconds: 0.0,
            downtime_limit_seconds: 0.0,
            bandwidth_limit: None,
            downtime_over_limit: false,
            transferred_bytes: 0,
            total_bytes: 0,
            remaining_bytes: 0,
            normal_pages: 0,
            zero_pages: 0,
            passes: 0,
            dirty_rate: 0.0,
            transfer_rate: 0.0,
            throttle_percent: 0,
            throttle_max_percent: 0,
            stunned_bytes: 0,
            device_state_bytes: 0,
            seal_cpu_seconds: 0.0,
            dirty_log: String::new(),
            memory_identical: None,
            drain_seconds: 0.0,
            stun: StunTimes::default(),
            pass_history: Vec::new(),
        }
    }
}

/// What the destination saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DestinationStats {
    pub received_bytes: u64,
    pub pages: u64,
    pub zero_pages: u64,
    /// CPU seconds spent opening records.
    pub open_cpu_seconds: f64,
    /// From PREPARE to READY: completeness check, digest, device state load.
    pub verify_seconds: f64,
    pub memory_identical: Option<bool>,
}
