//! A QMP connection: JSON lines over a unix socket.

use ferry_core::error::report;
use std::{
    io::{BufRead, BufReader, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde_json::{Value, json};

use crate::QemuError;

/// How long a QMP socket may take to greet.
const GREETING: Duration = Duration::from_secs(5);

/// One QMP session. Events that arrive between replies are kept: the
/// switch-over's STOP and RESUME times come from them.
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// (event name, when QEMU says it happened)
    events: Vec<(String, SystemTime)>,
}

impl Qmp {
    fn io(&self) -> impl FnOnce(std::io::Error) -> QemuError + '_ {
        move |source| QemuError::Qmp {
            path: self.path.clone(),
            source,
        }
    }

    /// Connects and leaves capabilities negotiation mode.
    pub fn connect(path: &Path) -> Result<Self, QemuError> {
        let io = |source| QemuError::Qmp {
            path: path.to_path_buf(),
            source,
        };
        let s = UnixStream::connect(path).map_err(io)?;
        // QEMU greets at once, unless another client holds the socket: then
        // the connection waits in the backlog, silent.
        s.set_read_timeout(Some(GREETING)).map_err(io)?;
        let mut q = Self {
            path: path.to_path_buf(),
            reader: BufReader::new(s.try_clone().map_err(io)?),
            writer: s,
            events: Vec::new(),
        };
        let greeting = match q.line() {
            Err(QemuError::Qmp { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(QemuError::Busy {
                    path: path.to_path_buf(),
                    secs: GREETING.as_secs(),
                });
            }
            r => r?,
        };
        // A command that takes longer than this is a hung QEMU.
        q.writer
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        if greeting.get("QMP").is_none() {
            return Err(QemuError::Command {
                command: "greeting".into(),
                message: greeting.to_string(),
            });
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn line(&mut self) -> Result<Value, QemuError> {
        let mut l = String::new();
        let n = self.reader.read_line(&mut l).map_err(self.io())?;
        if n == 0 {
            return Err(QemuError::Qmp {
                path: self.path.clone(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        serde_json::from_str(&l).map_err(|e| QemuError::Command {
            command: "reply".into(),
            message: format!("{e}: {l}", e = report(&e)),
        })
    }

    /// Runs `command`; its "return" value. Events in between are kept.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QemuError> {
        let msg = json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{msg}").map_err(self.io())?;
        // Bounded: QEMU answers each command once; events are few.
        for _ in 0..10_000 {
            let v = self.line()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QemuError::Command {
                    command: command.into(),
                    message: e["desc"].as_str().unwrap_or("").into(),
                });
            }
            if let Some(name) = v["event"].as_str() {
                let t = &v["timestamp"];
                let at = SystemTime::UNIX_EPOCH
                    + Duration::from_secs(t["seconds"].as_u64().unwrap_or(0))
                    + Duration::from_micros(t["microseconds"].as_u64().unwrap_or(0));
                self.events.push((name.to_string(), at));
                if self.events.len() > 1000 {
                    self.events.drain(..500);
                }
            }
        }
        Err(QemuError::Timeout(format!("no reply to {command}")))
    }

    /// The process at the other end of the socket (QEMU's pid), from the
    /// kernel's record of who connected.
    pub fn peer_pid(&self) -> Option<u32> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`, a
        // ucred of exactly that size, on a socket this session owns.
        let rc = unsafe {
            libc::getsockopt(
                self.writer.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        };
        (rc == 0 && cred.pid > 0).then_some(cred.pid as u32)
    }

    /// When `event` last happened, as far as this session has seen.
    pub fn last_event(&self, event: &str) -> Option<SystemTime> {
        self.events
            .iter()
            .rev()
            .find(|(n, _)| n == event)
            .map(|(_, t)| *t)
    }
}
