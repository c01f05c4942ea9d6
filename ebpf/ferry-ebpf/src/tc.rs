//! tc helpers shared by the programs.

use aya_ebpf::programs::TcContext;

use crate::packet::Frame;

/// The frame of a tc program, with at least the first 128 bytes (or all of
/// a shorter frame) in the linear area, so that headers can be read directly.
#[inline(always)]
pub fn frame(ctx: &TcContext) -> Frame {
    let want = ctx.len().min(128) as usize;
    if ctx.data_end() - ctx.data() < want {
        let _ = ctx.pull_data(want as u32);
    }
    Frame {
        data: ctx.data(),
        end: ctx.data_end(),
    }
}

/// The outer tag the stack moved into skb metadata, as (TPID, TCI).
#[inline(always)]
pub fn meta_vlan(ctx: &TcContext) -> Option<(u16, u16)> {
    let skb = ctx.skb.skb;
    // SAFETY: valid context; these fields are readable by sched_cls.
    let (present, tci, proto) =
        unsafe { ((*skb).vlan_present, (*skb).vlan_tci, (*skb).vlan_proto) };
    (present != 0).then(|| (u16::from_be(proto as u16), tci as u16))
}

#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: valid context.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Bytes on the wire: an offloaded tag is not in skb->len.
#[inline(always)]
pub fn wire_len(ctx: &TcContext) -> u64 {
    ctx.len() as u64 + if meta_vlan(ctx).is_some() { 4 } else { 0 }
}
