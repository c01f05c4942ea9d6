//! Namespaces and the links between them, removed together on drop.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::fd::AsFd,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use crate::{
    net::MacAddr,
    netlink::NetlinkError,
    netns::{self, Netns, NetnsError},
};

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("node {node}")]
    Netlink {
        node: String,
        #[source]
        source: NetlinkError,
    },
    #[error("no node named {0:?} in this topology")]
    NoNode(String),
    #[error("node {0:?} already exists")]
    Duplicate(String),
    #[error(transparent)]
    BadCidr(#[from] crate::net::BadCidr),
}

pub type Result<T, E = TopologyError> = std::result::Result<T, E>;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A set of network namespaces ("nodes") and the links between them.
///
/// Namespace names are `<prefix>-<pid>-<seq>-<node>`, unique per process and
/// per topology, so tests run in parallel; interface names live inside the
/// namespaces and need not be unique.
pub struct Topology {
    prefix: String,
    base: String,
    nodes: BTreeMap<String, Arc<Netns>>,
}

impl Topology {
    /// A new, empty topology whose namespaces start with `prefix` (letters,
    /// digits, '-'; keep it short). Namespaces left by killed runs with the
    /// same prefix are removed first.
    pub fn new(prefix: &str) -> Self {
        netns::sweep_stale(prefix);
        let base = format!(
            "{}{}",
            netns::owned_prefix(prefix, std::process::id()),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            prefix: prefix.to_string(),
            base,
            nodes: BTreeMap::new(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Adds a node (a namespace). IPv6 is off unless `ipv6`, so that a test
    /// sees only the traffic it makes (no router solicitations, no DAD).
    pub fn add_node(&mut self, node: &str, ipv6: bool) -> Result<Arc<Netns>> {
        if self.nodes.contains_key(node) {
            return Err(TopologyError::Duplicate(node.to_string()));
        }
        let ns = Arc::new(Netns::create(&format!("{}-{node}", self.base))?);
        if !ipv6 {
            for key in [
                "net.ipv6.conf.all.disable_ipv6",
                "net.ipv6.conf.default.disable_ipv6",
            ] {
                ns.sysctl(key, "1")?;
            }
        }
        self.nodes.insert(node.to_string(), ns.clone());
        Ok(ns)
    }

    pub fn node(&self, node: &str) -> Result<&Arc<Netns>> {
        self.nodes
            .get(node)
            .ok_or_else(|| TopologyError::NoNode(node.to_string()))
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&str, &Arc<Netns>)> {
        self.nodes.iter().map(|(k, v)| (k.as_str(), v))
    }

    fn nl<T>(node: &str, r: Result<T, NetlinkError>) -> Result<T> {
        r.map_err(|source| TopologyError::Netlink {
            node: node.to_string(),
            source,
        })
    }

    /// Runs netlink operations in `node`.
    pub fn with_netlink<T>(
        &self,
        node: &str,
        f: impl FnOnce(&mut crate::netlink::Netlink) -> Result<T, NetlinkError>,
    ) -> Result<T> {
        let mut nl = self.node(node)?.netlink()?;
        Self::nl(node, f(&mut nl))
    }

    /// Joins `a`'s interface `a_if` and `b`'s interface `b_if` with a veth
    /// pair, both ends up.
    pub fn link(&self, a: &str, a_if: &str, b: &str, b_if: &str) -> Result<()> {
        let b_ns = self.node(b)?.clone();
        self.with_netlink(a, |nl| {
            nl.add_veth(a_if, b_if, Some(b_ns.as_fd()))?;
            nl.set_up(a_if)
        })?;
        self.with_netlink(b, |nl| nl.set_up(b_if))
    }

    /// Creates bridge `br` in `node` with `ports` enslaved, all up.
    pub fn bridge(&self, node: &str, br: &str, ports: &[&str]) -> Result<()> {
        self.with_netlink(node, |nl| {
            nl.add_bridge(br)?;
            for p in ports {
                nl.set_master(p, br)?;
            }
            nl.set_up(br)
        })
    }

    /// Adds an address like "10.0.0.1/24" to `node`'s interface `ifname`.
    pub fn addr(&self, node: &str, ifname: &str, cidr: &str) -> Result<()> {
        let (ip, prefix) = crate::net::parse_cidr(cidr)?;
        self.with_netlink(node, |nl| nl.add_address(ifname, ip, prefix))
    }

    /// The MAC address of `node`'s interface `ifname`.
    pub fn mac(&self, node: &str, ifname: &str) -> Result<MacAddr> {
        let info = self.with_netlink(node, |nl| nl.link(ifname))?;
        Ok(info.mac.unwrap_or_default())
    }

    /// Adds a route in `node`: `dst` ("10.1.0.0/16" or "default") via `gateway`.
    pub fn route(&self, node: &str, dst: &str, gateway: IpAddr) -> Result<()> {
        let (ip, prefix) = if dst == "default" {
            (
                if gateway.is_ipv4() {
                    IpAddr::from([0u8; 4])
                } else {
                    IpAddr::from([0u16; 8])
                },
                0,
            )
        } else {
            crate::net::parse_cidr(dst)?
        };
        self.with_netlink(node, |nl| nl.add_route(ip, prefix, Some(gateway), None))
    }

    /// Enables IPv4 forwarding in `node` (a router).
    /// a --(va|ra)-- r --(rb|vb)-- b: a (10.6.1.1) and b (10.6.2.1) on two
    /// subnets, routed by r (10.6.1.2, 10.6.2.2). Returns (a, r, b).
    pub fn routed(&mut self) -> Result<(Arc<Netns>, Arc<Netns>, Arc<Netns>)> {
        let a = self.add_node("a", false)?;
        let r = self.add_node("r", false)?;
        let b = self.add_node("b", false)?;
        self.link("a", "va", "r", "ra")?;
        self.link("r", "rb", "b", "vb")?;
        self.addr("a", "va", "10.6.1.1/24")?;
        self.addr("r", "ra", "10.6.1.2/24")?;
        self.addr("r", "rb", "10.6.2.2/24")?;
        self.addr("b", "vb", "10.6.2.1/24")?;
        self.route("a", "10.6.2.0/24", "10.6.1.2".parse().expect("address"))?;
        self.route("b", "10.6.1.0/24", "10.6.2.2".parse().expect("address"))?;
        self.forwarding("r")?;
        Ok((a, r, b))
    }

    pub fn forwarding(&self, node: &str) -> Result<()> {
        self.node(node)?.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(())
    }
}
