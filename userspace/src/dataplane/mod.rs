//! ferry's data plane: the embedded eBPF object, its loader, and typed views
//! of its maps.
//!
//! One [`Dataplane`] is one loaded copy of the object in one network
//! namespace (a host or a router). Interface indexes are only unique within a
//! namespace, so a copy never spans two.

mod counters;

use std::{collections::BTreeMap, sync::Arc};

use aya::{
    Ebpf,
    programs::{ProgramError, SchedClassifier, TcAttachType},
};

pub use counters::{VlanCount, summarize};

use crate::netns::Netns;

/// The eBPF object built from `ebpf/ferry-ebpf` by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ferry-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading ferry's eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching {program} to {ifname} ({direction}): {source}")]
    Attach {
        program: &'static str,
        ifname: String,
        direction: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("interface {ifname}: {source}")]
    Interface {
        ifname: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

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

impl Dataplane {
    /// Loads the object for use in `netns` (None: the caller's namespace).
    pub fn load(netns: Option<Arc<Netns>>) -> Result<Self> {
        let ebpf = Ebpf::load(OBJECT).map_err(|e| DataplaneError::Load(Box::new(e)))?;
        Ok(Self {
            ebpf,
            netns,
            interfaces: BTreeMap::new(),
        })
    }

    /// Runs `f` in the data plane's namespace (attach and ifindex lookups
    /// resolve interface names there).
    fn in_ns<R: Send>(netns: &Option<Arc<Netns>>, f: impl FnOnce() -> R + Send) -> R {
        match netns {
            Some(ns) => ns.run(f),
            None => f(),
        }
    }

    fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier> {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        let cls: &mut SchedClassifier = prog.try_into().map_err(|e| DataplaneError::Program {
            name,
            source: Box::new(e),
        })?;
        if cls.fd().is_err() {
            cls.load().map_err(|e| DataplaneError::Program {
                name,
                source: Box::new(e),
            })?;
        }
        Ok(cls)
    }

    /// Attaches a classifier at TCX ingress or egress of `ifname`.
    fn attach_tc(
        &mut self,
        program: &'static str,
        ifname: &str,
        attach: TcAttachType,
    ) -> Result<u32> {
        let netns = self.netns.clone();
        let ifindex = Self::in_ns(&netns, || crate::net::packet_socket::ifindex(ifname)).map_err(
            |source| DataplaneError::Interface {
                ifname: ifname.to_string(),
                source,
            },
        )?;
        let cls = self.classifier(program)?;
        let direction = if attach == TcAttachType::Ingress {
            "ingress"
        } else {
            "egress"
        };
        Self::in_ns(&netns, || cls.attach(ifname, attach)).map_err(|e| DataplaneError::Attach {
            program,
            ifname: ifname.to_string(),
            direction,
            source: Box::new(e),
        })?;
        self.interfaces.insert(ifindex, ifname.to_string());
        Ok(ifindex)
    }

    /// Counts every frame in and out of `ifname` by VLAN.
    pub fn attach_vlan_counters(&mut self, ifname: &str) -> Result<Attached> {
        self.attach_tc("vlan_count_ingress", ifname, TcAttachType::Ingress)?;
        let ifindex = self.attach_tc("vlan_count_egress", ifname, TcAttachType::Egress)?;
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
}
