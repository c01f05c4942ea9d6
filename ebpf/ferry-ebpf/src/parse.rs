//! Frame parsing shared by the programs.

use aya_ebpf::programs::TcContext;
use ferry_common::{counters::TagKind, ethertype};

/// Offset of the ethertype (or first TPID) in an Ethernet header.
pub const ETH_TYPE_OFF: usize = 12;
pub const VLAN_HLEN: usize = 4;

/// VLAN tags of a frame as tc sees it: the outer tag may have been moved into
/// skb metadata by the stack (receive path, or tx offload), the rest are in the
/// packet data.
#[derive(Clone, Copy)]
pub struct Vlans {
    pub tag: TagKind,
    pub vlan: u16,
    pub inner_vlan: u16,
    /// True when the outer tag lives in skb metadata rather than in the data.
    pub offloaded: bool,
}

#[inline(always)]
fn kind_of(tpid: u16) -> Option<TagKind> {
    match tpid {
        ethertype::VLAN_8021Q => Some(TagKind::Dot1Q),
        ethertype::VLAN_8021AD => Some(TagKind::Dot1Ad),
        _ => None,
    }
}

#[inline(always)]
fn load_be16(ctx: &TcContext, off: usize) -> Option<u16> {
    ctx.load::<u16>(off).ok().map(u16::from_be)
}

/// Reads the outer and (for double-tagged frames) inner VLAN of `ctx`.
#[inline(always)]
pub fn vlans(ctx: &TcContext) -> Vlans {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the program's lifetime; these
    // __sk_buff fields are readable by sched_cls programs.
    let (present, tci, proto) =
        unsafe { ((*skb).vlan_present, (*skb).vlan_tci, (*skb).vlan_proto) };
    let mut out = Vlans {
        tag: TagKind::Untagged,
        vlan: 0,
        inner_vlan: 0,
        offloaded: false,
    };
    let mut depth = 0u8;
    if present != 0 {
        // vlan_proto holds the TPID in network byte order.
        out.tag = kind_of(u16::from_be(proto as u16)).unwrap_or(TagKind::Dot1Q);
        out.vlan = (tci & 0x0fff) as u16;
        out.offloaded = true;
        depth = 1;
    }
    // Tags still in the data follow the MAC addresses, 4 bytes each.
    let mut off = ETH_TYPE_OFF;
    let mut i = 0;
    while i < 2 {
        let Some(tpid) = load_be16(ctx, off) else {
            break;
        };
        let Some(kind) = kind_of(tpid) else { break };
        let Some(tci) = load_be16(ctx, off + 2) else {
            break;
        };
        if depth == 0 {
            out.tag = kind;
            out.vlan = tci & 0x0fff;
        } else if depth == 1 {
            out.inner_vlan = tci & 0x0fff;
        }
        depth += 1;
        off += VLAN_HLEN;
        i += 1;
    }
    out
}
