//! Header parsing over direct packet access, shared by XDP and tc programs.

use ferry_common::{counters::TagKind, ethertype, ipproto};

/// The bytes of a frame: [data, end).
#[derive(Clone, Copy)]
pub struct Frame {
    pub data: usize,
    pub end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn u8_at(&self, off: usize) -> Option<u8> {
        if self.data + off + 1 > self.end {
            return None;
        }
        // SAFETY: bounds checked against end, as the verifier requires.
        Some(unsafe { *((self.data + off) as *const u8) })
    }

    #[inline(always)]
    pub fn be16(&self, off: usize) -> Option<u16> {
        if self.data + off + 2 > self.end {
            return None;
        }
        let p = (self.data + off) as *const u8;
        // SAFETY: bounds checked; read bytewise (packet data is unaligned).
        Some(unsafe { u16::from_be_bytes([*p, *p.add(1)]) })
    }

    #[inline(always)]
    pub fn be32(&self, off: usize) -> Option<u32> {
        if self.data + off + 4 > self.end {
            return None;
        }
        let p = (self.data + off) as *const u8;
        // SAFETY: bounds checked against end, read bytewise.
        Some(unsafe { u32::from_be_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]) })
    }

    #[inline(always)]
    pub fn mac(&self, off: usize) -> Option<[u8; 6]> {
        if self.data + off + 6 > self.end {
            return None;
        }
        let p = (self.data + off) as *const u8;
        // SAFETY: bounds checked against end, read bytewise.
        Some(unsafe { [*p, *p.add(1), *p.add(2), *p.add(3), *p.add(4), *p.add(5)] })
    }
}

/// What the programs need to know about a frame.
#[derive(Clone, Copy)]
pub struct Headers {
    pub src_mac: [u8; 6],
    pub tag: TagKind,
    pub vlan: u16,
    pub inner_vlan: u16,
    /// The ethertype after any tags in the data.
    pub ethertype: u16,
    /// Offset of the L3 header in the data.
    pub l3: usize,
    /// 4, 6, or 0 for non-IP.
    pub family: u8,
    pub dscp: u8,
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub has_ports: bool,
    pub sport: u16,
    pub dport: u16,
    /// Offset of the L4 header (valid when family != 0).
    pub l4: usize,
}

#[inline(always)]
fn kind_of(tpid: u16) -> Option<TagKind> {
    match tpid {
        ethertype::VLAN_8021Q => Some(TagKind::Dot1Q),
        ethertype::VLAN_8021AD => Some(TagKind::Dot1Ad),
        _ => None,
    }
}

/// Parses a frame; `meta` is an outer tag the stack already moved into skb
/// metadata (tc receive path), as (TPID, TCI). None: a frame too short to
/// have an Ethernet header.
#[inline(always)]
pub fn parse(f: &Frame, meta: Option<(u16, u16)>) -> Option<Headers> {
    let mut h = Headers {
        src_mac: f.mac(6)?,
        tag: TagKind::Untagged,
        vlan: 0,
        inner_vlan: 0,
        ethertype: 0,
        l3: 14,
        family: 0,
        dscp: 0,
        proto: 0,
        src: [0; 4],
        dst: [0; 4],
        has_ports: false,
        sport: 0,
        dport: 0,
        l4: 0,
    };
    let mut depth = 0u8;
    if let Some((tpid, tci)) = meta {
        h.tag = kind_of(tpid).unwrap_or(TagKind::Dot1Q);
        h.vlan = tci & 0x0fff;
        depth = 1;
    }
    let mut off = 12;
    let mut et = f.be16(off)?;
    let mut i = 0;
    while i < 2 {
        let Some(kind) = kind_of(et) else { break };
        let tci = f.be16(off + 2)?;
        if depth == 0 {
            h.tag = kind;
            h.vlan = tci & 0x0fff;
        } else if depth == 1 {
            h.inner_vlan = tci & 0x0fff;
        }
        depth += 1;
        off += 4;
        et = f.be16(off)?;
        i += 1;
    }
    h.ethertype = et;
    h.l3 = off + 2;
    let l3 = h.l3;
    match et {
        ethertype::IPV4 => {
            let vihl = f.u8_at(l3)?;
            if vihl >> 4 != 4 {
                return Some(h);
            }
            h.family = 4;
            h.dscp = f.u8_at(l3 + 1)? >> 2;
            h.proto = f.u8_at(l3 + 9)?;
            h.src[0] = f.be32(l3 + 12)?;
            h.dst[0] = f.be32(l3 + 16)?;
            h.l4 = l3 + usize::from(vihl & 0x0f) * 4;
            // Only the first fragment carries the ports.
            let frag = f.be16(l3 + 6)? & 0x1fff;
            if frag != 0 {
                return Some(h);
            }
        }
        ethertype::IPV6 => {
            let w = f.be16(l3)?;
            if w >> 12 != 6 {
                return Some(h);
            }
            h.family = 6;
            h.dscp = ((w >> 6) & 0x3f) as u8;
            h.proto = f.u8_at(l3 + 6)?;
            let mut k = 0;
            while k < 4 {
                h.src[k] = f.be32(l3 + 8 + 4 * k)?;
                h.dst[k] = f.be32(l3 + 24 + 4 * k)?;
                k += 1;
            }
            h.l4 = l3 + 40;
        }
        _ => return Some(h),
    }
    if (h.proto == ipproto::TCP || h.proto == ipproto::UDP)
        && let (Some(s), Some(d)) = (f.be16(h.l4), f.be16(h.l4 + 2))
    {
        h.sport = s;
        h.dport = d;
        h.has_ports = true;
    }
    Some(h)
}
