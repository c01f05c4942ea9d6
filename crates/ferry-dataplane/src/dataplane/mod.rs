//! ferry's data plane: the embedded eBPF object, its loader, and typed views
//! of its maps.
//!
//! One [`Dataplane`] is one loaded copy of the object in one network
//! namespace (a host or a router). Interface indexes are only unique within a
//! namespace, so a copy never spans two.

pub mod classify;
mod counters;
pub mod migration;
pub mod watch;

use ferry_common::names::program;
use ferry_core::error::report;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};

pub use counters::{VlanCount, summarize};

use crate::netns::Netns;

/// The eBPF object built from `ebpf/ferry-ebpf` by build.rs.
#[cfg(feature = "ebpf")]
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ferry-ebpf"));
/// Built without the `ebpf` feature (the control plane's own tests, which
/// need no nightly toolchain): loading says so.
#[cfg(not(feature = "ebpf"))]
pub static OBJECT: &[u8] = &[];

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this build has no eBPF programs (ferry-dataplane built without its `ebpf` feature): \
         build the `ferry` binary, which enables it (needs `cargo xtask setup`)"
    )]
    NotBuilt,
    #[error("loading ferry's eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("eBPF program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching {program} to {ifname} ({direction})")]
    Attach {
        program: &'static str,
        ifname: String,
        direction: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("pinning at {path}: {message}")]
    Pin { path: PathBuf, message: String },
    #[error("interface {ifname}")]
    Interface {
        ifname: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// Maps a router keeps in bpffs across restarts.
pub const PINNED_MAPS: &[&str] = &[
    "RULES",
    "ROUTER_SETTINGS",
    "CLASSES",
    "POLICERS",
    "CLASS_COUNTERS",
];

/// One interface ferry attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub ifname: String,
    pub ifindex: u32,
}

/// A loaded copy of ferry's eBPF object in one network namespace.
pub struct Dataplane {
    ebpf: Ebpf,
    netns: Option<Arc<Netns>>,
    interfaces: BTreeMap<u32, String>,
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> DataplaneError {
    move |e| DataplaneError::Program {
        name,
        source: Box::new(e),
    }
}

fn pin_err(path: &Path, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Pin {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl Dataplane {
    /// Loads the object for use in `netns` (None: the caller's namespace).
    pub fn load(netns: Option<Arc<Netns>>) -> Result<Self> {
        Self::load_pinned(netns, None)
    }

    /// Loads the object; with `pin_dir`, the maps in [`PINNED_MAPS`] live in
    /// that bpffs directory and are reused when already there, so that a
    /// restarted daemon finds its rules, classes and counters.
    pub fn load_pinned(netns: Option<Arc<Netns>>, pin_dir: Option<&Path>) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(d) => {
                ensure_bpffs(d)?;
                std::fs::create_dir_all(d).map_err(|e| pin_err(d, e))?;
                PINNED_MAPS.iter().map(|m| (*m, d.join(m))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        if OBJECT.is_empty() {
            return Err(DataplaneError::NotBuilt);
        }
        let ebpf = loader
            .load(OBJECT)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        Ok(Self {
            ebpf,
            netns,
            interfaces: BTreeMap::new(),
        })
    }

    /// Runs `f` in the data plane's namespace (attach and ifindex lookups
    /// resolve interface names there).
    fn in_ns<R: Send>(netns: &Option<Arc<Netns>>, f: impl FnOnce() -> R + Send) -> R {
        crate::netns::run_in(netns.as_deref(), f)
    }

    fn ifindex_of(&self, ifname: &str) -> Result<u32> {
        Self::in_ns(&self.netns, || crate::net::packet_socket::ifindex(ifname)).map_err(|source| {
            DataplaneError::Interface {
                ifname: ifname.to_string(),
                source,
            }
        })
    }

    fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier> {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        let cls: &mut SchedClassifier = prog.try_into().map_err(prog_err(name))?;
        if cls.fd().is_err() {
            cls.load().map_err(prog_err(name))?;
        }
        Ok(cls)
    }

    /// Attaches a classifier at TCX ingress or egress of `ifname`; the link
    /// lives as long as this Dataplane.
    fn attach_tc(
        &mut self,
        program: &'static str,
        ifname: &str,
        attach: TcAttachType,
    ) -> Result<u32> {
        self.attach_tc_pinned(program, ifname, attach, None)
    }

    /// As [`Self::attach_tc`]; with `pin`, the TCX link is pinned there and
    /// outlives this process. If a link is already pinned there (a previous
    /// run), its program is replaced atomically: traffic is never left
    /// unclassified in between.
    pub fn attach_tc_pinned(
        &mut self,
        program: &'static str,
        ifname: &str,
        attach: TcAttachType,
        pin: Option<&Path>,
    ) -> Result<u32> {
        let ifindex = self.ifindex_of(ifname)?;
        let netns = self.netns.clone();
        let cls = self.classifier(program)?;
        match pin {
            Some(path) if path.exists() => {
                let old = PinnedLink::from_pin(path).map_err(|e| pin_err(path, e))?;
                let link: SchedClassifierLink =
                    FdLink::from(old).try_into().map_err(|e| pin_err(path, e))?;
                let id = cls.attach_to_link(link).map_err(prog_err(program))?;
                // The pin holds the link; our handle on it can go.
                drop(cls.take_link(id).map_err(prog_err(program))?);
            }
            _ => {
                let direction = if attach == TcAttachType::Ingress {
                    "ingress"
                } else {
                    "egress"
                };
                let id = Self::in_ns(&netns, || cls.attach(ifname, attach)).map_err(|e| {
                    DataplaneError::Attach {
                        program,
                        ifname: ifname.to_string(),
                        direction,
                        source: Box::new(e),
                    }
                })?;
                if let Some(path) = pin {
                    let link = cls.take_link(id).map_err(prog_err(program))?;
                    let fd: FdLink = link.try_into().map_err(|e| pin_err(path, e))?;
                    fd.pin(path).map_err(|e| pin_err(path, e))?;
                }
            }
        }
        self.interfaces.insert(ifindex, ifname.to_string());
        Ok(ifindex)
    }

    /// Attaches XDP program `program` to `ifname`, in generic (skb) mode
    /// unless `native`.
    pub fn attach_xdp(&mut self, program: &'static str, ifname: &str, native: bool) -> Result<u32> {
        let ifindex = self.ifindex_of(ifname)?;
        let netns = self.netns.clone();
        let prog = self
            .ebpf
            .program_mut(program)
            .ok_or(DataplaneError::MissingProgram(program))?;
        let xdp: &mut Xdp = prog.try_into().map_err(prog_err(program))?;
        if xdp.fd().is_err() {
            xdp.load().map_err(prog_err(program))?;
        }
        let flags = if native {
            XdpMode::Driver
        } else {
            XdpMode::Skb
        };
        Self::in_ns(&netns, || xdp.attach(ifname, flags)).map_err(|e| DataplaneError::Attach {
            program,
            ifname: ifname.to_string(),
            direction: "xdp",
            source: Box::new(e),
        })?;
        self.interfaces.insert(ifindex, ifname.to_string());
        Ok(ifindex)
    }

    /// Counts every frame in and out of `ifname` by VLAN.
    pub fn attach_vlan_counters(&mut self, ifname: &str) -> Result<Attached> {
        self.attach_tc(program::VLAN_COUNT_INGRESS, ifname, TcAttachType::Ingress)?;
        let ifindex = self.attach_tc(program::VLAN_COUNT_EGRESS, ifname, TcAttachType::Egress)?;
        Ok(Attached {
            ifname: ifname.to_string(),
            ifindex,
        })
    }

    /// Name of an attached interface, by index.
    pub fn ifname(&self, ifindex: u32) -> Option<&str> {
        self.interfaces.get(&ifindex).map(String::as_str)
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map> {
        self.ebpf.map(name).ok_or(DataplaneError::MissingMap(name))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))
    }
}

/// bpffs's f_type (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Pins need a bpf filesystem. /sys/fs/bpf is mounted as one when it is
/// not yet (as systemd would); anywhere else must already be on one.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let on_bpffs =
        |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if on_bpffs(existing) {
        return Ok(());
    }
    let sysfs_bpf = Path::new("/sys/fs/bpf");
    if dir.starts_with(sysfs_bpf) {
        // A bpffs mounted in a mount namespace no other process shares
        // (`ip netns exec` makes one, with a fresh /sys) vanishes with this
        // process, and its pins with it: the point of pinning is lost.
        if let Some(how) = private_mount_namespace() {
            return Err(pin_err(
                dir,
                format!(
                    "this process has a mount namespace of its own ({how}), where /sys/fs/bpf is no bpffs; \
                     one mounted here would vanish with the process, and the pins with it. Mount a bpffs \
                     in the host's namespace outside /sys (`mount -t bpf bpf /run/ferry/bpf`) and pin under \
                     it, or leave pin_dir out"
                ),
            ));
        }
        nix::mount::mount(
            Some("bpf"),
            sysfs_bpf,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| pin_err(sysfs_bpf, format!("mounting bpffs: {e}", e = report(&e))))?;
        return Ok(());
    }
    Err(pin_err(
        dir,
        "not on a bpf filesystem (mount one, or pin under /sys/fs/bpf)",
    ))
}

/// Whether no other process shares this one's mount namespace, and if so
/// how it came by it, as far as /sys tells (`ip netns exec` mounts a sysfs
/// named after the network namespace). None when it is shared, or when
/// /proc cannot say.
fn private_mount_namespace() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let ns = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/mnt")).map(|m| m.ino());
    let mine = ns("self").ok()?;
    let me = std::process::id().to_string();
    let shared = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()) && *pid != me)
        .any(|pid| ns(&pid).is_ok_and(|n| n == mine));
    if shared {
        return None;
    }
    let sys_source = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .rev()
        // The one on top: the last listed.
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let (fstype, source) = (r.next()?, r.next()?);
            (point == "/sys" && fstype == "sysfs").then(|| source.to_string())
        });
    Some(match sys_source {
        Some(s) if s != "sysfs" && s != "none" => format!("as `ip netns exec {s}` gives it"),
        _ => "as `unshare -m` or `ip netns exec` gives one".into(),
    })
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError::Map {
        name,
        source: Box::new(e),
    }
}

#[cfg(all(test, feature = "ebpf"))]
mod tests {
    use std::collections::BTreeSet;

    use ferry_common::names::{map, program};

    /// Every map and program name userspace looks up is in the object, and
    /// the object has no other: a renamed static or function fails here, not
    /// at the first load on a router.
    #[test]
    fn the_object_has_exactly_the_maps_and_programs_userspace_names() {
        let obj = aya_obj::Object::parse(super::OBJECT).expect("the built eBPF object parses");
        let maps: BTreeSet<&str> = obj
            .maps
            .keys()
            .map(String::as_str)
            // Sections the compiler adds, not maps of ours.
            .filter(|m| !m.starts_with('.'))
            .collect();
        let programs: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
        assert_eq!(maps, map::ALL.iter().copied().collect(), "maps");
        assert_eq!(programs, program::ALL.iter().copied().collect(), "programs");
    }
}
