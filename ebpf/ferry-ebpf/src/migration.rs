//! Host side: put migration streams on the migration VLAN with a priority
//! and a DSCP mark on the way out, and take the tag off on the way in (this
//! kernel has no VLAN devices to do it).

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_l3_csum_replace, bpf_skb_store_bytes, bpf_skb_vlan_pop, bpf_skb_vlan_push},
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use ferry_common::{
    counters::TagKind,
    ethertype, ipproto,
    migration::{Endpoint, MigSettings, MigStats},
};

use crate::{
    packet::{Frame, Headers, parse},
    tc,
};

#[map]
static MIG_SETTINGS: Array<MigSettings> = Array::with_max_entries(1, 0);
#[map]
static MIG_ENDPOINTS: HashMap<Endpoint, u8> = HashMap::with_max_entries(1024, 0);
#[map]
static MIG_STATS: PerCpuArray<MigStats> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn is_migration(family: u8, addr: [u32; 4], port: u16) -> bool {
    let key = Endpoint {
        addr,
        port,
        family,
        _pad: 0,
    };
    // SAFETY: read-only lookup of a plain value.
    unsafe { MIG_ENDPOINTS.get(key).is_some() }
}

/// The settings, the frame and its headers, when migration tagging is
/// enabled.
#[inline(always)]
fn enabled_frame(ctx: &TcContext) -> Option<(&'static MigSettings, Frame, Headers)> {
    let s = MIG_SETTINGS.get(0)?;
    if s.enabled == 0 {
        return None;
    }
    let f = tc::frame(ctx);
    let h = parse(&f, tc::meta_vlan(ctx))?;
    Some((s, f, h))
}

#[classifier]
pub fn mig_tag_egress(ctx: TcContext) -> i32 {
    let Some((s, f, h)) = enabled_frame(&ctx) else {
        return TC_ACT_UNSPEC;
    };
    if h.tag != TagKind::Untagged || h.proto != ipproto::TCP || !h.has_ports {
        return TC_ACT_UNSPEC;
    }
    if !is_migration(h.family, h.dst, h.dport) && !is_migration(h.family, h.src, h.sport) {
        return TC_ACT_UNSPEC;
    }
    let skb = ctx.skb.skb;
    let (vlan, pcp, dscp) = (s.vlan, s.pcp, s.dscp);
    // DSCP first, while the IP header is where parse() found it.
    if h.ethertype == ethertype::IPV4 {
        let Some(old) = f.be16(h.l3) else {
            return TC_ACT_UNSPEC;
        };
        let new = (old & 0xff03) | (u16::from(dscp) << 2);
        if old != new {
            let nb = new.to_be_bytes();
            // SAFETY: helper calls on a valid skb; offsets are within the header parsed above.
            unsafe {
                bpf_l3_csum_replace(
                    skb,
                    (h.l3 + 10) as u32,
                    u64::from(old.to_be()),
                    u64::from(new.to_be()),
                    2,
                );
                bpf_skb_store_bytes(skb, h.l3 as u32, nb.as_ptr().cast(), 2, 0);
            }
        }
    } else if h.ethertype == ethertype::IPV6 {
        let Some(old) = f.be16(h.l3) else {
            return TC_ACT_UNSPEC;
        };
        let new = (old & 0xf03f) | (u16::from(dscp) << 6);
        let nb = new.to_be_bytes();
        // SAFETY: as above; IPv6 has no header checksum.
        unsafe { bpf_skb_store_bytes(skb, h.l3 as u32, nb.as_ptr().cast(), 2, 0) };
    }
    let tci = (u16::from(pcp & 7) << 13) | (vlan & 0x0fff);
    // SAFETY: valid skb; the tag goes into skb metadata, the NIC or veth inserts it.
    if unsafe { bpf_skb_vlan_push(skb, ethertype::VLAN_8021Q.to_be(), tci) } == 0
        && let Some(st) = MIG_STATS.get_ptr_mut(0)
    {
        // SAFETY: per-CPU value.
        unsafe {
            (*st).tagged_packets += 1;
            (*st).tagged_bytes += u64::from(ctx.len()) + 4;
        }
    }
    TC_ACT_UNSPEC
}

#[classifier]
pub fn mig_untag_ingress(ctx: TcContext) -> i32 {
    let Some((s, _, h)) = enabled_frame(&ctx) else {
        return TC_ACT_UNSPEC;
    };
    if h.tag == TagKind::Dot1Q && h.vlan == s.vlan {
        let len = tc::wire_len(&ctx);
        // SAFETY: valid skb.
        if unsafe { bpf_skb_vlan_pop(ctx.skb.skb) } == 0
            && let Some(st) = MIG_STATS.get_ptr_mut(0)
        {
            // SAFETY: per-CPU value.
            unsafe {
                (*st).untagged_packets += 1;
                (*st).untagged_bytes += len;
            }
        }
    }
    TC_ACT_UNSPEC
}
