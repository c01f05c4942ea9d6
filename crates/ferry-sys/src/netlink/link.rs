//! Interfaces: veth pairs, bridges, state, addresses, namespaces.

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{
        InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
    },
};

pub use crate::net::MacAddr;

use super::{Netlink, NetlinkError, Result};

/// What ferry needs to know about an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    pub up: bool,
    /// Index of the bridge this port is enslaved to.
    pub master: Option<u32>,
    /// "veth", "bridge", ... (None for loopback and physical devices).
    pub kind: Option<String>,
    /// Frames the device dropped on transmit (its queue full, ...).
    pub tx_dropped: u64,
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(NetlinkError::BadName(name.to_string()))
    }
}

fn parse_link(msg: LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        master: None,
        kind: None,
        tx_dropped: 0,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n,
            LinkAttribute::Address(a) if a.len() == 6 => {
                info.mac = Some(MacAddr(a.try_into().expect("length checked")))
            }
            LinkAttribute::Mtu(m) => info.mtu = m,
            LinkAttribute::Controller(m) => info.master = Some(m),
            LinkAttribute::Stats64(s) => info.tx_dropped = s.tx_dropped,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let NlLinkInfo::Kind(k) = i {
                        info.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    info
}

fn named(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m
}

impl Netlink {
    /// Every interface in this namespace.
    pub fn links(&mut self) -> Result<Vec<LinkInfo>> {
        let replies = self.request(
            "list interfaces",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(parse_link(m)),
                _ => None,
            })
            .collect())
    }

    pub fn link(&mut self, name: &str) -> Result<LinkInfo> {
        check_name(name)?;
        let op = format!("look up interface {name}");
        match self.request(&op, RouteNetlinkMessage::GetLink(named(name)), 0) {
            Ok(replies) => replies
                .into_iter()
                .find_map(|r| match r {
                    RouteNetlinkMessage::NewLink(m) => Some(parse_link(m)),
                    _ => None,
                })
                .ok_or_else(|| NetlinkError::NoSuchLink(name.to_string())),
            Err(e) if e.errno() == Some(libc::ENODEV) => {
                Err(NetlinkError::NoSuchLink(name.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    pub fn link_index(&mut self, name: &str) -> Result<u32> {
        Ok(self.link(name)?.index)
    }

    /// Creates a veth pair. With `peer_ns`, the peer end is created directly in
    /// that namespace.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_ns: Option<BorrowedFd<'_>>,
    ) -> Result<()> {
        check_name(name)?;
        check_name(peer)?;
        let mut peer_msg = named(peer);
        if let Some(fd) = peer_ns {
            peer_msg
                .attributes
                .push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
        }
        let mut m = named(name);
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            NlLinkInfo::Kind(InfoKind::Veth),
            NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            &format!("create veth pair {name}/{peer}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    pub fn add_bridge(&mut self, name: &str) -> Result<()> {
        check_name(name)?;
        let mut m = named(name);
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            &format!("create bridge {name}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    fn set_link(
        &mut self,
        op: String,
        name: &str,
        edit: impl FnOnce(&mut LinkMessage),
    ) -> Result<()> {
        let index = self.link_index(name)?;
        let mut m = LinkMessage::default();
        m.header.index = index;
        edit(&mut m);
        self.request(&op, RouteNetlinkMessage::SetLink(m), 0)?;
        Ok(())
    }

    pub fn set_up(&mut self, name: &str) -> Result<()> {
        self.set_link(format!("bring {name} up"), name, |m| {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        })
    }

    pub fn set_down(&mut self, name: &str) -> Result<()> {
        self.set_link(format!("bring {name} down"), name, |m| {
            m.header.flags = LinkFlags::empty();
            m.header.change_mask = LinkFlags::Up;
        })
    }

    /// Makes `name` a port of `bridge`.
    pub fn set_master(&mut self, name: &str, bridge: &str) -> Result<()> {
        let master = self.link_index(bridge)?;
        self.set_link(format!("add {name} to bridge {bridge}"), name, |m| {
            m.attributes.push(LinkAttribute::Controller(master));
        })
    }

    /// Detaches `name` from its bridge.
    pub fn set_nomaster(&mut self, name: &str) -> Result<()> {
        self.set_link(format!("remove {name} from its bridge"), name, |m| {
            m.attributes.push(LinkAttribute::Controller(0));
        })
    }

    pub fn set_mac(&mut self, name: &str, mac: MacAddr) -> Result<()> {
        self.set_link(format!("set {name} address {mac}"), name, |m| {
            m.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        })
    }

    pub fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<()> {
        self.set_link(format!("set {name} mtu {mtu}"), name, |m| {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        })
    }

    /// The length of `name`'s transmit queue, in frames.
    pub fn set_txqueuelen(&mut self, name: &str, frames: u32) -> Result<()> {
        self.set_link(format!("set {name} txqueuelen {frames}"), name, |m| {
            m.attributes.push(LinkAttribute::TxQueueLen(frames));
        })
    }

    /// Moves `name` into the namespace `ns`.
    pub fn set_netns(&mut self, name: &str, ns: BorrowedFd<'_>) -> Result<()> {
        self.set_link(format!("move {name} to another namespace"), name, |m| {
            m.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        })
    }

    pub fn delete_link(&mut self, name: &str) -> Result<()> {
        let index = self.link_index(name)?;
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(
            &format!("delete {name}"),
            RouteNetlinkMessage::DelLink(m),
            0,
        )?;
        Ok(())
    }
}
