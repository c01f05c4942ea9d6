//! Network namespaces: create, enter, run code and programs inside, remove.
//!
//! A namespace made by [`Netns::create`] is bind-mounted at
//! `/run/netns/<name>`, exactly like `ip netns add`, so operators can inspect
//! it with `ip netns exec`. It is removed when the [`Netns`] is dropped,
//! panics included; [`sweep_stale`] removes those left by killed processes.
//!
//! Namespace membership is per thread. Nothing here changes the namespace of
//! the calling thread: code runs in a short-lived thread that joins the
//! namespace ([`Netns::run`]), and sockets created there stay bound to it.

use std::{
    fs, io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::Command,
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

use crate::netlink::{Netlink, NetlinkError};

pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("invalid namespace name {0:?} (1 to 64 characters from [A-Za-z0-9._-])")]
    BadName(String),
    #[error("network namespace {0:?} already exists")]
    Exists(String),
    #[error("network namespace {0:?} does not exist")]
    Missing(String),
    #[error("namespace {name:?}: {op}")]
    Sys {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("namespace {name:?}")]
    Netlink {
        name: String,
        #[source]
        source: NetlinkError,
    },
}

fn sys<'a>(name: &'a str, op: &'static str) -> impl FnOnce(nix::Error) -> NetnsError + 'a {
    move |e| NetnsError::Sys {
        name: name.to_string(),
        op,
        source: io::Error::from(e),
    }
}

fn check_name(name: &str) -> Result<(), NetnsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(NetnsError::BadName(name.to_string()))
    }
}

/// A network namespace, held open by a file descriptor.
#[derive(Debug)]
pub struct Netns {
    name: String,
    fd: OwnedFd,
    /// The bind mount to remove on drop; None for namespaces we did not create.
    mount: Option<PathBuf>,
}

impl Netns {
    /// Creates the namespace `/run/netns/<name>` with its loopback up.
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        check_name(name)?;
        fs::create_dir_all(NETNS_DIR).map_err(|source| NetnsError::Sys {
            name: name.into(),
            op: "create /run/netns",
            source,
        })?;
        let path = Path::new(NETNS_DIR).join(name);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    NetnsError::Exists(name.to_string())
                } else {
                    NetnsError::Sys {
                        name: name.into(),
                        op: "create mount point",
                        source: e,
                    }
                }
            })?;
        // A fresh thread unshares its network namespace and pins it with a
        // bind mount; the process's other threads are unaffected.
        let made = std::thread::scope(|s| {
            s.spawn(|| -> Result<(), NetnsError> {
                unshare(CloneFlags::CLONE_NEWNET).map_err(sys(name, "unshare"))?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(sys(name, "bind mount"))
            })
            .join()
            .expect("namespace thread panicked")
        });
        if let Err(e) = made {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        let fd = match fs::File::open(&path) {
            Ok(f) => OwnedFd::from(f),
            Err(source) => {
                let _ = umount2(&path, MntFlags::MNT_DETACH);
                let _ = fs::remove_file(&path);
                return Err(NetnsError::Sys {
                    name: name.into(),
                    op: "open",
                    source,
                });
            }
        };
        let ns = Netns {
            name: name.to_string(),
            fd,
            mount: Some(path),
        };
        ns.netlink()?
            .set_up("lo")
            .map_err(|source| NetnsError::Netlink {
                name: name.into(),
                source,
            })?;
        Ok(ns)
    }

    /// Opens an existing named namespace without taking ownership of it.
    pub fn open(name: &str) -> Result<Self, NetnsError> {
        check_name(name)?;
        let path = Path::new(NETNS_DIR).join(name);
        let f = fs::File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                NetnsError::Missing(name.to_string())
            } else {
                NetnsError::Sys {
                    name: name.into(),
                    op: "open",
                    source: e,
                }
            }
        })?;
        Ok(Netns {
            name: name.to_string(),
            fd: OwnedFd::from(f),
            mount: None,
        })
    }

    /// The namespace the calling thread is in.
    pub fn current() -> Result<Self, NetnsError> {
        let f = fs::File::open("/proc/thread-self/ns/net").map_err(|source| NetnsError::Sys {
            name: "current".into(),
            op: "open",
            source,
        })?;
        Ok(Netns {
            name: "current".into(),
            fd: OwnedFd::from(f),
            mount: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread inside this namespace and returns its result.
    /// A panic in `f` is propagated to the caller.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
                f()
            });
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Starts a named thread inside this namespace.
    pub fn spawn<R: Send + 'static>(
        &self,
        thread_name: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> io::Result<std::thread::JoinHandle<R>> {
        let fd = self.fd.try_clone()?;
        let ns = self.name.clone();
        std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
                drop(fd);
                f()
            })
    }

    /// A command whose process starts inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let raw = self.fd.as_raw_fd();
        // SAFETY: setns(2) is async-signal-safe; raw stays open in the child
        // until exec (it is close-on-exec), which is after pre_exec runs.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// A netlink socket bound to this namespace.
    pub fn netlink(&self) -> Result<Netlink, NetnsError> {
        self.run(Netlink::open)
            .map_err(|source| NetnsError::Netlink {
                name: self.name.clone(),
                source,
            })
    }

    /// Writes a sysctl under /proc/sys/net (these are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| fs::write(&path, value))
            .map_err(|source| NetnsError::Sys {
                name: self.name.clone(),
                op: "write sysctl",
                source,
            })
    }

    /// Reads a sysctl under /proc/sys/net.
    pub fn sysctl_get(&self, key: &str) -> Result<String, NetnsError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| fs::read_to_string(&path))
            .map(|s| s.trim().to_string())
            .map_err(|source| NetnsError::Sys {
                name: self.name.clone(),
                op: "read sysctl",
                source,
            })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(path) = self.mount.take() {
            // Lazy unmount: the namespace itself lives on while any process or
            // socket still uses it, and dies with the last of them.
            let _ = umount2(&path, MntFlags::MNT_DETACH);
            let _ = fs::remove_file(&path);
        }
    }
}

/// Runs `f` inside `ns`, or on this thread (in the caller's namespace) when
/// `ns` is None.
pub fn run_in<R: Send>(ns: Option<&Netns>, f: impl FnOnce() -> R + Send) -> R {
    match ns {
        Some(ns) => ns.run(f),
        None => f(),
    }
}

/// A netlink socket bound to `ns`, or to the caller's namespace.
pub fn netlink_in<E: From<NetnsError> + From<NetlinkError>>(
    ns: Option<&Netns>,
) -> Result<Netlink, E> {
    Ok(match ns {
        Some(ns) => ns.netlink()?,
        None => Netlink::open()?,
    })
}

/// Name prefix of namespaces owned by process `pid`: `<prefix>-<pid>-`.
pub fn owned_prefix(prefix: &str, pid: u32) -> String {
    format!("{prefix}-{pid}-")
}

/// Removes namespaces named `<prefix>-<pid>-*` whose process `pid` is gone,
/// left behind by a test or lab run that was killed before it could clean up.
pub fn sweep_stale(prefix: &str) -> usize {
    let Ok(dir) = fs::read_dir(NETNS_DIR) else {
        return 0;
    };
    let mut removed = 0;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        let _ = umount2(&path, MntFlags::MNT_DETACH);
        if fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}
