//! Real QEMU virtual machines for the lab: started in a namespace with a tap
//! NIC, driven over QMP, migrated between two QEMU processes.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{net::MacAddr, netns::Netns};

pub use crate::qemu::{PROGRAM, QemuError, Qmp, available};

pub type Result<T, E = QemuError> = std::result::Result<T, E>;

/// A QEMU process with one virtio-net NIC on a tap interface, no disk and
/// no OS: the firmware runs, which is all a migration and QEMU's own
/// announcement frames need.
pub struct Vm {
    child: Child,
    pub qmp: Qmp,
    pub tap: String,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start a [`Vm`].
pub struct VmSpec<'a> {
    pub netns: &'a Netns,
    /// Tap interface QEMU creates in `netns` (it comes up down).
    pub tap: &'a str,
    pub mac: MacAddr,
    pub memory_mib: u32,
    /// Directory for the QMP socket.
    pub dir: &'a Path,
    /// Wait for an incoming migration (`-incoming defer`).
    pub incoming: bool,
}

impl Vm {
    pub fn start(spec: &VmSpec) -> Result<Self> {
        let qmp_path = spec.dir.join(format!("{}.qmp", spec.tap));
        let _ = std::fs::remove_file(&qmp_path);
        let mut cmd = spec.netns.command(PROGRAM);
        cmd.args([
            "-nodefaults",
            "-display",
            "none",
            "-machine",
            "pc,accel=tcg",
            "-m",
        ])
        .arg(spec.memory_mib.to_string())
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={},script=no,downscript=no", spec.tap),
        ])
        // No option ROM: no iPXE, so the only frames are QEMU's own.
        .args([
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={},romfile=", spec.mac),
        ])
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", qmp_path.display()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if spec.incoming {
            cmd.args(["-incoming", "defer"]);
        }
        let mut child = cmd.spawn().map_err(|source| QemuError::Spawn {
            program: PROGRAM.into(),
            source,
        })?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let qmp = loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
                return Err(QemuError::Exited {
                    status: status.to_string(),
                    stderr,
                });
            }
            if qmp_path.exists()
                && let Ok(q) = Qmp::connect(&qmp_path)
            {
                break q;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(QemuError::Timeout(format!(
                    "QMP socket {} did not appear in 20 s",
                    qmp_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Self {
            child,
            qmp,
            tap: spec.tap.to_string(),
        })
    }

    /// "running", "paused", "inmigrate", "postmigrate", ...
    pub fn status(&mut self) -> Result<String> {
        Ok(self.qmp.execute("query-status", json!({}))?["status"]
            .as_str()
            .unwrap_or("")
            .to_string())
    }

    /// Migrates this VM into `dest` over a unix socket in `dir`; returns
    /// QEMU's migration statistics once completed (at most `timeout`).
    pub fn migrate_to(&mut self, dest: &mut Vm, dir: &Path, timeout: Duration) -> Result<Value> {
        let uri = format!(
            "unix:{}",
            dir.join(format!("{}-{}.mig", self.tap, dest.tap)).display()
        );
        dest.qmp.execute("migrate-incoming", json!({"uri": uri}))?;
        self.qmp.execute("migrate", json!({"uri": uri}))?;
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.qmp.execute("query-migrate", json!({}))?;
            match info["status"].as_str().unwrap_or("") {
                "completed" => return Ok(info),
                "failed" | "cancelled" => {
                    return Err(QemuError::Command {
                        command: "migrate".into(),
                        message: info["error-desc"].as_str().unwrap_or("failed").into(),
                    });
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(QemuError::Timeout(format!(
                    "migration not completed in {timeout:?}: {info}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
