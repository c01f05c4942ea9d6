//! Builders for the frames ferry sends or crafts in tests: Ethernet with any
//! stack of 802.1Q / 802.1ad tags, ARP, RARP.

use std::net::Ipv4Addr;

use ferry_common::ethertype;

use super::MacAddr;

/// One VLAN tag as it appears on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanTag {
    /// 0x8100 (802.1Q) or 0x88a8 (802.1ad).
    pub tpid: u16,
    /// Priority code point, 0..=7.
    pub pcp: u8,
    /// 1..=4094.
    pub vid: u16,
}

impl VlanTag {
    pub fn dot1q(vid: u16) -> Self {
        Self {
            tpid: ethertype::VLAN_8021Q,
            pcp: 0,
            vid,
        }
    }
    pub fn dot1ad(vid: u16) -> Self {
        Self {
            tpid: ethertype::VLAN_8021AD,
            pcp: 0,
            vid,
        }
    }
    pub fn tci(&self) -> u16 {
        (u16::from(self.pcp & 7) << 13) | (self.vid & 0x0fff)
    }
}

/// An Ethernet frame: MAC header, tags in order (outermost first), ethertype, payload.
pub fn ethernet(
    dst: MacAddr,
    src: MacAddr,
    tags: &[VlanTag],
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * tags.len() + payload.len());
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    for t in tags {
        f.extend_from_slice(&t.tpid.to_be_bytes());
        f.extend_from_slice(&t.tci().to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// ARP/RARP operation codes.
pub mod arp_op {
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;
    pub const RARP_REQUEST: u16 = 3;
    pub const RARP_REPLY: u16 = 4;
}

/// The 28-byte ARP (or RARP) body for Ethernet/IPv4.
pub fn arp_body(op: u16, sha: MacAddr, spa: Ipv4Addr, tha: MacAddr, tpa: Ipv4Addr) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    b[2..4].copy_from_slice(&ethertype::IPV4.to_be_bytes());
    b[4] = 6;
    b[5] = 4;
    b[6..8].copy_from_slice(&op.to_be_bytes());
    b[8..14].copy_from_slice(&sha.0);
    b[14..18].copy_from_slice(&spa.octets());
    b[18..24].copy_from_slice(&tha.0);
    b[24..28].copy_from_slice(&tpa.octets());
    b
}

/// Pads a frame to the 60-byte Ethernet minimum (without FCS), as NICs and
/// QEMU do for ARP and RARP.
pub fn pad_min(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

/// The RARP frame QEMU and ESXi send after a migration: broadcast, op 3
/// (request reverse), sender = target = the guest's MAC, IPs 0.0.0.0.
pub fn rarp_announce(mac: MacAddr, tags: &[VlanTag]) -> Vec<u8> {
    let z = Ipv4Addr::UNSPECIFIED;
    let body = arp_body(arp_op::RARP_REQUEST, mac, z, mac, z);
    pad_min(ethernet(
        MacAddr::BROADCAST,
        mac,
        tags,
        ethertype::RARP,
        &body,
    ))
}

/// A gratuitous ARP: broadcast request whose sender and target IP are both `ip`.
pub fn gratuitous_arp(mac: MacAddr, ip: Ipv4Addr, tags: &[VlanTag]) -> Vec<u8> {
    let body = arp_body(arp_op::REQUEST, mac, ip, MacAddr::ZERO, ip);
    pad_min(ethernet(
        MacAddr::BROADCAST,
        mac,
        tags,
        ethertype::ARP,
        &body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacked_tags_are_in_order() {
        let f = ethernet(
            MacAddr::BROADCAST,
            MacAddr::local(1),
            &[
                VlanTag::dot1ad(200),
                VlanTag {
                    tpid: 0x8100,
                    pcp: 5,
                    vid: 300,
                },
            ],
            0x0800,
            &[1, 2, 3],
        );
        assert_eq!(&f[12..14], &[0x88, 0xa8]);
        assert_eq!(&f[14..16], &200u16.to_be_bytes());
        assert_eq!(&f[16..18], &[0x81, 0x00]);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), (5 << 13) | 300);
        assert_eq!(&f[20..22], &[0x08, 0x00]);
        assert_eq!(&f[22..], &[1, 2, 3]);
    }

    #[test]
    fn rarp_matches_qemu_layout() {
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        let f = rarp_announce(mac, &[]);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac.0);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3]);
        assert_eq!(&f[22..28], &mac.0); // sender
        assert_eq!(&f[28..32], &[0; 4]);
        assert_eq!(&f[32..38], &mac.0); // target
        assert_eq!(&f[38..42], &[0; 4]);
    }

    #[test]
    fn gratuitous_arp_has_equal_ips() {
        let f = gratuitous_arp(MacAddr::local(9), Ipv4Addr::new(10, 0, 0, 9), &[]);
        assert_eq!(&f[28..32], &[10, 0, 0, 9]);
        assert_eq!(&f[38..42], &[10, 0, 0, 9]);
    }
}
