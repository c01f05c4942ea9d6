//! Addresses, routes and static neighbour entries.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
};

use super::{MacAddr, Netlink, Result};

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// A neighbour (ARP / NDP) table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: Option<MacAddr>,
    pub permanent: bool,
}

impl Netlink {
    /// Adds `ip/prefix` to interface `name`.
    pub fn add_address(&mut self, name: &str, ip: IpAddr, prefix: u8) -> Result<()> {
        let index = self.link_index(name)?;
        let mut m = AddressMessage::default();
        m.header.family = family(&ip);
        m.header.prefix_len = prefix;
        m.header.index = index;
        if ip.is_ipv4() {
            m.attributes.push(AddressAttribute::Local(ip));
        }
        m.attributes.push(AddressAttribute::Address(ip));
        self.request(
            &format!("add address {ip}/{prefix} to {name}"),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// The addresses on interface `name`, with their prefix lengths.
    pub fn addresses(&mut self, name: &str) -> Result<Vec<(IpAddr, u8)>> {
        let index = self.link_index(name)?;
        let replies = self.request(
            &format!("list addresses of {name}"),
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewAddress(m) = r else {
                continue;
            };
            if m.header.index != index {
                continue;
            }
            for a in m.attributes {
                if let AddressAttribute::Address(ip) = a {
                    out.push((ip, m.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// The interfaces (by index) that IPv4 or IPv6 default routes of the
    /// main table leave through, multipath next hops included.
    pub fn default_route_links(&mut self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessage::default();
            q.header.address_family = fam;
            let replies =
                self.request("list routes", RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)?;
            for r in replies {
                let RouteNetlinkMessage::NewRoute(m) = r else {
                    continue;
                };
                let table = m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(m.header.table));
                if m.header.destination_prefix_length != 0
                    || table != u32::from(RouteHeader::RT_TABLE_MAIN)
                    || m.header.kind != RouteType::Unicast
                {
                    continue;
                }
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Oif(i) => out.push(*i),
                        RouteAttribute::MultiPath(hops) => {
                            out.extend(hops.iter().map(|h| h.interface_index))
                        }
                        _ => {}
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Adds a route to `dst/prefix` (prefix 0: default route) via `gateway`, or
    /// directly out of `dev` when there is no gateway.
    pub fn add_route(
        &mut self,
        dst: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        dev: Option<&str>,
    ) -> Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(&dst);
        m.header.destination_prefix_length = prefix;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        m.header.kind = RouteType::Unicast;
        if prefix > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        }
        if let Some(gw) = gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(dev) = dev {
            let index = self.link_index(dev)?;
            m.attributes.push(RouteAttribute::Oif(index));
        }
        let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        self.request(
            &format!("add route {dst}/{prefix}{via}"),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Adds or replaces a permanent neighbour entry, so that traffic to `ip`
    /// needs no ARP / neighbour discovery.
    pub fn set_neighbour(&mut self, dev: &str, ip: IpAddr, mac: MacAddr) -> Result<()> {
        let index = self.link_index(dev)?;
        let mut m = NeighbourMessage::default();
        m.header.family = family(&ip);
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.kind = RouteType::Unicast;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        self.request(
            &format!("set neighbour {ip} lladdr {mac} on {dev}"),
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// The neighbour table of one address family.
    pub fn neighbours(&mut self, v6: bool) -> Result<Vec<Neighbour>> {
        let mut q = NeighbourMessage::default();
        q.header.family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let replies = self.request(
            "list neighbours",
            RouteNetlinkMessage::GetNeighbour(q),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewNeighbour(m) = r else {
                continue;
            };
            let mut n = Neighbour {
                ifindex: m.header.ifindex,
                ip: IpAddr::from([0u8; 4]),
                mac: None,
                permanent: m.header.state == NeighbourState::Permanent,
            };
            let mut have_ip = false;
            for a in m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                        n.ip = ip.into();
                        have_ip = true;
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                        n.ip = ip.into();
                        have_ip = true;
                    }
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                        n.mac = Some(MacAddr(l.try_into().expect("length checked")))
                    }
                    _ => {}
                }
            }
            if have_ip {
                out.push(n);
            }
        }
        Ok(out)
    }
}
