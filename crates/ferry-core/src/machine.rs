//! A QEMU machine as ferry describes it: what a host needs to start a guest,
//! and what a destination needs to start its twin (`-incoming defer`) with
//! the same device model. It travels in the migration spec.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Invalid;

/// How QEMU runs the vCPUs.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Emulation: works everywhere, slowly.
    #[default]
    Tcg,
    Kvm,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// A QEMU guest's device model: identical on both hosts of a migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuMachine {
    /// Guest memory in bytes.
    pub memory: u64,
    pub vcpus: u32,
    #[serde(default)]
    pub accel: Accel,
    /// `-machine` type.
    #[serde(default = "pc")]
    pub machine: String,
    /// Linux kernel to boot (`-kernel`); present on every host.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub append: Option<String>,
    /// A disk image (virtio-blk), shared storage or the same copy on both hosts.
    #[serde(default)]
    pub disk: Option<PathBuf>,
    /// Further QEMU arguments, the same on both hosts.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// A virtio-net NIC on a tap interface of each host's (attached to the
    /// host's guest bridge); its MAC moves with the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<QemuNic>,
    /// The PCI devices of the running guest (`query-pci`: slot, vendor and
    /// device ids, class), read from its QEMU; a twin must show the same
    /// before any memory moves, since QEMU itself finds a device missing
    /// only when it loads the device state, after the whole pre-copy and
    /// with the guest stopped. Empty in a configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuNic {
    pub mac: crate::MacAddr,
}

/// A QEMU that runs already, started by something other than ferry (an
/// operator, a supervisor), for a host to adopt instead of starting one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QemuAdopt {
    /// Its QMP socket, which ferry drives it by from then on: a socket of
    /// ferry's own (`-qmp unix:PATH,server=on,wait=off`), since QEMU
    /// serves one client per QMP socket.
    #[schemars(example = &"/run/vm-1/ferry-qmp.sock")]
    pub qmp: PathBuf,
    /// Where its serial console writes, when the guest reports there (the
    /// test guest's memory checks); without it the guest gives no verdict.
    #[schemars(example = &"/run/vm-1/serial.log")]
    #[serde(default)]
    pub serial_log: Option<PathBuf>,
}

impl QemuAdopt {
    pub fn validate(&self, field: &str) -> Result<(), Invalid> {
        for (k, p) in [
            ("qmp", Some(&self.qmp)),
            ("serial_log", self.serial_log.as_ref()),
        ] {
            if let Some(p) = p
                && !p.is_absolute()
            {
                return Err(Invalid::new(
                    format!("{field}.{k}"),
                    format!(
                        "{} is not an absolute path (the one given to QEMU)",
                        p.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn pc() -> String {
    "pc".into()
}

impl QemuMachine {
    /// Checks what can be checked anywhere (not files: a coordinator or a
    /// config check may run elsewhere); `field` is where it came from.
    pub fn validate(&self, field: &str) -> Result<(), Invalid> {
        let f = |k: &str| format!("{field}.{k}");
        if self.kernel.is_none() && self.disk.is_none() {
            return Err(Invalid::new(
                field,
                "needs a kernel (with an initrd) or a disk image to boot",
            ));
        }
        if self.initrd.is_some() && self.kernel.is_none() {
            return Err(Invalid::new(f("initrd"), "needs a kernel"));
        }
        if self.machine.is_empty() || self.machine.contains(',') {
            return Err(Invalid::new(
                f("machine"),
                "a machine type such as pc or q35",
            ));
        }
        for (i, a) in self.extra_args.iter().enumerate() {
            // ferry owns these: the twin must be started the same way.
            for own in [
                "-incoming",
                "-qmp",
                "-S",
                "-daemonize",
                "-serial",
                "-monitor",
                "-pidfile",
            ] {
                if a == own {
                    return Err(Invalid::new(
                        format!("{field}.extra_args[{i}]"),
                        format!("{own} is set by ferry"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that the files it boots from exist on this host.
    pub fn check_files(&self, field: &str) -> Result<(), Invalid> {
        let f = |k: &str| format!("{field}.{k}");
        for (k, p) in [
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("disk", &self.disk),
        ] {
            if let Some(p) = p
                && !p.is_file()
            {
                return Err(Invalid::new(
                    f(k),
                    format!(
                        "{} is not a file here (`cargo xtask setup` builds the test guest)",
                        p.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}
