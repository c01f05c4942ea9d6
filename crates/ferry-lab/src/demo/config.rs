//! `ferry demo`: the built-in demonstration's settings.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config::{ByteSize, Invalid, Validate, deserialize_duration, serialize_duration};
use crate::{
    guest::{PAGE_SIZE, WorkloadSpec},
    host::config::GuestKind,
    protocol::{Backend, EncryptionMode, Limits},
};

/// A coordinator and two hosts on loopback; one guest moves from the first
/// host to the second.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    /// synthetic: ferry's own guest (`guest`); qemu: the QEMU test guest (`qemu`).
    #[serde(default)]
    pub guest_kind: GuestKind,
    /// The synthetic guest that moves (`guest_kind: synthetic`).
    #[serde(default = "default_guest")]
    pub guest: DemoGuest,
    /// The QEMU guest that moves (`guest_kind: qemu`).
    #[serde(default)]
    pub qemu: DemoQemu,
    /// The guest's setting; both demo hosts can encrypt.
    #[serde(default)]
    pub mode: EncryptionMode,
    /// Parallel streams of the migration.
    #[serde(default = "default_streams")]
    pub streams: u16,
    /// The AES-256-GCM implementation.
    #[serde(default)]
    pub backend: Backend,
    /// The migration's limits.
    #[serde(default = "default_limits")]
    pub limits: Limits,
    /// How long the guest runs before the move, and is watched after it.
    #[serde(
        default = "default_watch",
        deserialize_with = "deserialize_duration",
        serialize_with = "serialize_duration"
    )]
    #[schemars(with = "ferry_core::config::DurationText")]
    pub watch: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoGuest {
    /// The guest's name.
    pub name: String,
    /// Guest memory: a multiple of 4 KiB.
    pub memory: ByteSize,
    /// Virtual CPUs.
    pub vcpus: usize,
    /// What its vCPUs do.
    pub workload: WorkloadSpec,
    /// Fill memory first (a loaded database).
    pub prefill: bool,
}

/// The QEMU test guest `cargo xtask setup` builds: Debian's cloud kernel and
/// a busybox initramfs that dirties memory and checks its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoQemu {
    /// The guest's name.
    pub name: String,
    /// Guest memory.
    pub memory: ByteSize,
    /// The test guest's kernel (relative paths: from where ferry runs).
    pub kernel: PathBuf,
    /// The test guest's initramfs.
    pub initrd: PathBuf,
    /// MiB the guest rewrites every second.
    pub dirty_mib_per_second: u32,
}

impl Default for DemoQemu {
    fn default() -> Self {
        Self {
            name: "vm-1".into(),
            memory: ByteSize(512 << 20),
            kernel: "target/test-guest/vmlinuz".into(),
            initrd: "target/test-guest/initrd.gz".into(),
            dirty_mib_per_second: 16,
        }
    }
}

fn default_guest() -> DemoGuest {
    DemoGuest {
        name: "redis-1".into(),
        memory: ByteSize(1 << 30),
        vcpus: 2,
        // Table 1's 50% GET / 50% SET, scaled to one small guest.
        workload: WorkloadSpec::KeyValue {
            gets_per_second: 50_000,
            sets_per_second: 50_000,
        },
        prefill: true,
    }
}

fn default_streams() -> u16 {
    2
}

fn default_limits() -> Limits {
    Limits::default()
}

fn default_watch() -> Duration {
    Duration::from_secs(1)
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            guest_kind: GuestKind::default(),
            guest: default_guest(),
            qemu: DemoQemu::default(),
            mode: EncryptionMode::default(),
            streams: default_streams(),
            backend: Backend::default(),
            limits: default_limits(),
            watch: default_watch(),
        }
    }
}

impl Validate for DemoConfig {
    fn validate(&self) -> Result<(), Invalid> {
        let m = self.guest.memory.0;
        if m == 0 || !m.is_multiple_of(PAGE_SIZE as u64) || m > 64 << 30 {
            return Err(Invalid::new(
                "guest.memory",
                "must be a multiple of 4KiB between 4KiB and 64GiB",
            ));
        }
        if !(1..=64).contains(&self.guest.vcpus) {
            return Err(Invalid::new(
                "guest.vcpus",
                format!("{} is out of range 1..=64", self.guest.vcpus),
            ));
        }
        if !(1..=64).contains(&self.streams) {
            return Err(Invalid::new(
                "streams",
                format!("{} is out of range 1..=64", self.streams),
            ));
        }
        let q = self.qemu.memory.0;
        if q < 64 << 20 || !q.is_multiple_of(1 << 20) || q > 64 << 30 {
            return Err(Invalid::new(
                "qemu.memory",
                "must be a whole number of MiB between 64MiB and 64GiB",
            ));
        }
        if self.watch > Duration::from_secs(600) {
            return Err(Invalid::new("watch", "at most 10m"));
        }
        self.limits.check().map_err(|i| i.within("limits"))
    }
}
