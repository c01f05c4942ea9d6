//! Guests: what the migration engine moves.
//!
//! The engine sees a guest only through [`Guest`]: memory in 4 KiB pages
//! with a dirty log, pause / resume / throttle, and opaque device state. It
//! does not know what kind of guest it moves.

pub mod memory;
pub mod synthetic;
pub mod workload;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use memory::{DirtyBitmap, DirtyLogKind, GuestMemory, PAGE_SIZE, PageDigests};
pub use synthetic::{SyntheticConfig, SyntheticGuest};
pub use workload::WorkloadSpec;

/// Where a guest is in its life on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Receiving an incoming migration: memory only, never run here yet.
    Incoming,
    Running,
    /// Stopped (stunned); its memory does not change.
    Paused,
    /// Moved to another host: it will never run here again.
    Released,
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunState::Incoming => "incoming",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Released => "released",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("guest memory")]
    Memory(#[source] std::io::Error),
    #[error("cannot {op} a guest that is {state}")]
    State { op: &'static str, state: RunState },
    #[error("{0}")]
    Timeout(&'static str),
    #[error("invalid device state: {0}")]
    DeviceState(String),
    #[error("invalid guest: {0}")]
    Invalid(String),
}

/// One throughput sample: the guest's operations per second at a time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub unix_ms: u64,
    pub ops_per_second: f64,
}

/// What a host reports about a guest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuestInfo {
    pub name: String,
    pub kind: String,
    pub memory: u64,
    pub vcpus: usize,
    pub state: RunState,
    pub throttle: u8,
    pub ops: u64,
    pub get_errors: u64,
    pub workload: Option<WorkloadSpec>,
    /// The guest's network interface, which its new host announces.
    #[serde(default)]
    pub nic: Option<Nic>,
    /// A QEMU guest's device model (None: a synthetic guest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<ferry_core::machine::QemuMachine>,
}

/// A guest's NIC as the network knows it. Travels in the device state, as a
/// virtio-net device's MAC does in QEMU's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// Its MAC address: what the landing host announces.
    pub mac: ferry_core::MacAddr,
    /// Its IPv4 address, if known: gratuitous ARPs announce it (RARP
    /// alone otherwise).
    #[serde(default)]
    pub ipv4: Option<std::net::Ipv4Addr>,
}

/// A guest as the migration engine sees it.
pub trait Guest: Send + Sync {
    fn name(&self) -> &str;
    fn memory(&self) -> &GuestMemory;
    fn run_state(&self) -> RunState;
    /// Stops the vCPUs; returns once none runs and memory is quiescent.
    fn pause(&self) -> Result<(), GuestError>;
    /// Starts (or restarts) the vCPUs.
    fn resume(&self) -> Result<(), GuestError>;
    /// Stuns the vCPUs for `percent` of the time (SDPS); 0 lifts it.
    fn set_throttle(&self, percent: u8);
    fn throttle(&self) -> u8;
    /// Device state of a paused guest.
    fn save_state(&self) -> Result<Vec<u8>, GuestError>;
    /// Loads device state into an incoming guest, which becomes paused.
    fn restore_state(&self, state: &[u8]) -> Result<(), GuestError>;
    /// The guest moved away: stop it for good.
    fn release(&self);
    fn info(&self) -> GuestInfo;
    /// Throughput samples while it ran here.
    fn timeline(&self) -> Vec<Sample>;
}
