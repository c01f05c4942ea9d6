//! `ferry host` configuration.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    config::{ByteSize, Invalid, Validate, check_name},
    control::TlsFiles,
    guest::{PAGE_SIZE, WorkloadSpec},
    metrics::http::MetricsListen,
    protocol::{Backend, EncryptionMode},
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// This host's name: its certificate's name and what the coordinator calls it.
    pub name: String,
    /// Control API (mutual TLS), for coordinators.
    pub control: SocketAddr,
    /// Where migration streams are accepted (the migration network).
    pub migration: SocketAddr,
    #[schemars(example = &"192.0.2.10:7601")]
    /// The address sources should connect to, if not `migration` (NAT, 0.0.0.0).
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// The host's CA, certificate and key (see `ferry certs`); relative
    /// paths are from the file's directory.
    pub tls: TlsFiles,
    /// Whether this host can encrypt migrations (a host that cannot is like a
    /// pre-6.5 ESXi: Opportunistic migrations to it go in the clear).
    #[serde(default = "yes")]
    pub encryption: bool,
    /// The AES-256-GCM implementation this host seals and opens with.
    #[serde(default)]
    pub backend: Backend,
    /// Memory available to guests, incoming ones included.
    pub memory_capacity: ByteSize,
    /// Coordinators allowed to send specs (names from their certificates);
    /// empty: any coordinator certified by the CA.
    #[serde(default)]
    pub coordinators: Vec<String>,
    /// The guests this host boots at start (a restarted host skips those
    /// its journal says migrated away).
    #[serde(default)]
    pub guests: Vec<GuestConfig>,
    /// Prometheus /metrics (localhost only unless said otherwise).
    #[serde(default)]
    pub metrics: Option<MetricsListen>,
    /// The host's networks: migration VLAN tagging and guest announcements.
    #[serde(default)]
    pub network: Option<HostNetwork>,
    /// Use the software dirty log even where the kernel's works.
    #[serde(default)]
    pub software_dirty_log: bool,
    /// The host's journal (guests released and received, fsynced at each
    /// switch-over) and its QEMU guests' QMP sockets, serial logs and pid
    /// files: a restarted host never boots a guest that migrated away, and
    /// adopts its QEMU guests from here. A file without it gets
    /// /var/lib/ferry/NAME; a configuration built in code without it keeps
    /// no journal (QEMU files then go to /run/ferry/NAME).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

impl HostConfig {
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/run/ferry").join(&self.name))
    }
}

fn yes() -> bool {
    true
}

/// A guest this host boots at start: synthetic (ferry's own), or a real
/// QEMU virtual machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// The guest's name, unique on the site: what `ferry migrate` moves.
    pub name: String,
    /// What runs it: ferry's own synthetic guest, or a QEMU virtual machine.
    #[serde(default)]
    pub kind: GuestKind,
    /// Guest memory: a multiple of 4 KiB.
    pub memory: ByteSize,
    /// Virtual CPUs, 1..=64.
    #[serde(default = "one")]
    pub vcpus: usize,
    /// Encrypted-vMotion-style per-guest setting.
    #[serde(default)]
    pub encryption: EncryptionMode,
    /// What a synthetic guest's vCPUs do (default idle).
    #[serde(default)]
    pub workload: WorkloadSpec,
    /// How QEMU starts a `kind: qemu` guest, here and on any destination.
    #[serde(default)]
    pub qemu: Option<QemuSettings>,
    /// Fill memory first (a loaded database; a fully touched idle guest).
    #[serde(default = "yes")]
    pub prefill: bool,
    /// The guest's NIC: announced by whichever host it lands on.
    #[serde(default)]
    pub nic: Option<crate::guest::Nic>,
}

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    #[default]
    Synthetic,
    Qemu,
}

/// A QEMU guest's device model; memory and vCPUs come from the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QemuSettings {
    /// QEMU's accelerator: tcg everywhere, kvm where /dev/kvm works.
    #[serde(default)]
    pub accel: crate::machine::Accel,
    /// QEMU's `-machine` type; the destination starts the same one.
    #[serde(default = "pc")]
    pub machine: String,
    /// A kernel to boot directly (`-kernel`).
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Its initramfs (`-initrd`).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// The kernel command line (`-append`).
    #[serde(default)]
    pub append: Option<String>,
    /// A disk image both hosts reach at this path (shared storage: memory
    /// moves, the disk stays).
    #[schemars(example = &"/srv/images/vm-1.qcow2")]
    #[serde(default)]
    pub disk: Option<PathBuf>,
    /// More QEMU arguments, passed as they are on both hosts (devices
    /// must match for a migration to load).
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Adopt a QEMU that runs already (started by an operator or a
    /// supervisor) by its QMP socket, instead of starting one here. The
    /// keys above still say how its twin starts on a destination: its
    /// memory, vCPUs and accelerator must be this guest's (checked when the
    /// host starts), its devices the twin's (checked before memory moves).
    #[serde(default)]
    pub adopt: Option<crate::machine::QemuAdopt>,
}

fn pc() -> String {
    "pc".into()
}

impl GuestConfig {
    /// The running QEMU a `kind: qemu` guest adopts, if it names one.
    pub fn adopt(&self) -> Option<&crate::machine::QemuAdopt> {
        self.qemu.as_ref()?.adopt.as_ref()
    }

    /// The QEMU machine of a `kind: qemu` guest.
    pub fn machine(&self) -> Option<crate::machine::QemuMachine> {
        let q = self.qemu.as_ref()?;
        (self.kind == GuestKind::Qemu).then(|| crate::machine::QemuMachine {
            memory: self.memory.0,
            vcpus: self.vcpus as u32,
            accel: q.accel,
            machine: q.machine.clone(),
            kernel: q.kernel.clone(),
            initrd: q.initrd.clone(),
            append: q.append.clone(),
            disk: q.disk.clone(),
            extra_args: q.extra_args.clone(),
            nic: self.nic.map(|n| crate::machine::QemuNic { mac: n.mac }),
            devices: Vec::new(),
        })
    }
}

/// A host's networks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostNetwork {
    /// The interface migration streams leave by (the vMotion network).
    #[serde(default)]
    pub migration_interface: Option<String>,
    /// Put migration streams on this VLAN there (tag on the way out, pop
    /// on the way in): this kernel has no VLAN devices, ferry does it in eBPF.
    #[serde(default)]
    pub migration_vlan: Option<MigrationVlan>,
    /// The guests' network: a guest that lands here is announced on it.
    #[serde(default)]
    pub guest_interface: Option<String>,
    #[schemars(example = &"br0")]
    /// The bridge QEMU guests' tap interfaces join (their NICs' network).
    #[serde(default)]
    pub guest_bridge: Option<String>,
    /// How the landing host announces a guest (gratuitous ARP / RARP).
    #[serde(default)]
    pub announce: crate::net::announce::Schedule,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationVlan {
    /// The VLAN id, 1..=4094.
    pub vlan: u16,
    /// 802.1p priority of the tag.
    #[serde(default = "pcp")]
    pub pcp: u8,
    /// DSCP of the IP header (default AF11, 10: bulk, low drop).
    #[serde(default = "dscp")]
    pub dscp: u8,
}

fn pcp() -> u8 {
    4
}
fn dscp() -> u8 {
    10
}

fn one() -> usize {
    1
}

impl Validate for HostConfig {
    fn validate(&self) -> Result<(), Invalid> {
        check_name("name", &self.name)?;
        if self.control == self.migration {
            return Err(Invalid::new("migration", "must differ from control"));
        }
        let mut total = 0u64;
        let mut names = std::collections::HashSet::new();
        for (i, g) in self.guests.iter().enumerate() {
            let f = |k: &str| format!("guests[{i}].{k}");
            check_name(&f("name"), &g.name)?;
            if !names.insert(&g.name) {
                return Err(Invalid::new(
                    f("name"),
                    format!("guest {} is configured twice", g.name),
                ));
            }
            if g.memory.0 == 0 || !g.memory.0.is_multiple_of(PAGE_SIZE as u64) {
                return Err(Invalid::new(
                    f("memory"),
                    "must be a positive multiple of 4KiB",
                ));
            }
            if !(1..=64).contains(&g.vcpus) {
                return Err(Invalid::new(
                    f("vcpus"),
                    format!("{} is out of range 1..=64", g.vcpus),
                ));
            }
            match (g.kind, &g.qemu) {
                (GuestKind::Qemu, None) => {
                    return Err(Invalid::new(
                        f("qemu"),
                        "a qemu guest needs qemu: {kernel, initrd, ...} or {disk}",
                    ));
                }
                (GuestKind::Synthetic, Some(_)) => {
                    return Err(Invalid::new(f("qemu"), "only for kind: qemu"));
                }
                (GuestKind::Qemu, Some(_)) => {
                    if g.memory.0 % (1 << 20) != 0 {
                        return Err(Invalid::new(
                            f("memory"),
                            "a qemu guest's memory is a whole number of MiB",
                        ));
                    }
                    self.guests[i]
                        .machine()
                        .expect("qemu")
                        .validate(&f("qemu"))?;
                    if let Some(a) = g.adopt() {
                        a.validate(&f("qemu.adopt"))?;
                    }
                }
                (GuestKind::Synthetic, None) => {}
            }
            total += g.memory.0;
        }
        if let Some(n) = &self.network {
            if let Some(v) = n.migration_vlan {
                if n.migration_interface.is_none() {
                    return Err(Invalid::new(
                        "network.migration_vlan",
                        "needs network.migration_interface",
                    ));
                }
                if !(1..=4094).contains(&v.vlan) {
                    return Err(Invalid::new(
                        "network.migration_vlan.vlan",
                        format!("{} is out of range 1..=4094", v.vlan),
                    ));
                }
                if v.pcp > 7 {
                    return Err(Invalid::new(
                        "network.migration_vlan.pcp",
                        format!("{} is out of range 0..=7", v.pcp),
                    ));
                }
                if v.dscp > 63 {
                    return Err(Invalid::new(
                        "network.migration_vlan.dscp",
                        format!("{} is out of range 0..=63", v.dscp),
                    ));
                }
            }
            if n.announce.rounds == 0 || n.announce.rounds > 100 {
                return Err(Invalid::new(
                    "network.announce.rounds",
                    format!("{} is out of range 1..=100", n.announce.rounds),
                ));
            }
        }
        if total > self.memory_capacity.0 {
            return Err(Invalid::new(
                "memory_capacity",
                format!(
                    "{} is less than the {} its guests need",
                    self.memory_capacity,
                    ByteSize(total)
                ),
            ));
        }
        Ok(())
    }
}
