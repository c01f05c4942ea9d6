//! ferry-qemu: real QEMU guests for ferry.
//!
//! - [`Qmp`]: a QMP session (commands, and the events between them).
//! - [`QemuGuest`]: a QEMU process ferry launched or adopted, as a
//!   [`ferry_engine::channels::ChannelGuest`]: QEMU does pre-copy and
//!   convergence, ferry carries its channels and commits the switch-over.
//!
//! QEMU runs as its own process (its own process group): a `ferry host`
//! that stops or restarts neither kills nor loses it; the restarted host
//! adopts it by its QMP socket.

mod guest;
mod qmp;

pub use guest::{QemuGuest, device_model, exited, verdict_of};
pub use qmp::Qmp;

use std::path::PathBuf;

/// The QEMU binary ferry runs.
pub const PROGRAM: &str = "qemu-system-x86_64";

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("starting {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP socket {path}")]
    Qmp {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "QMP socket {path} did not greet within {secs} s: another client holds it \
         (QEMU serves one client per QMP socket: give ferry one of its own, \
         another -qmp unix:PATH,server=on,wait=off)"
    )]
    Busy { path: PathBuf, secs: u64 },
    #[error("the QEMU at {qmp} {what}")]
    Unlike { qmp: PathBuf, what: String },
    #[error(
        "the twin's device model differs from the source's ({differences}): \
         both hosts must start the guest with the same devices (qemu.extra_args, nic)"
    )]
    DeviceModel { differences: String },
    #[error("QMP {command}: {message}")]
    Command { command: String, message: String },
    #[error("QEMU exited early ({status}): {stderr}")]
    Exited { status: String, stderr: String },
    #[error("{0}")]
    Timeout(String),
    #[error("{path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why QEMU cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("{PROGRAM} --version failed: {stderr}")]
    Fails { stderr: String },
    #[error("{PROGRAM} not found; `cargo xtask setup` installs it")]
    Missing(#[source] std::io::Error),
}

/// Whether QEMU can run here, and why not.
pub fn available() -> Result<(), Unavailable> {
    match std::process::Command::new(PROGRAM)
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(Unavailable::Fails {
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        }),
        Err(e) => Err(Unavailable::Missing(e)),
    }
}
