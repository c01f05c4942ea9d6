//! Per-interface, per-direction, per-VLAN packet and byte counters.
//!
//! Attached at TCX ingress and egress. Per-CPU values, so the hot path needs no
//! atomics; userspace sums the CPUs when it reads.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::PerCpuHashMap,
    programs::TcContext,
};
use ferry_common::counters::{Counter, Direction, VLAN_COUNTERS_MAX_ENTRIES, VlanKey};

use crate::parse::{VLAN_HLEN, vlans};

#[map]
static VLAN_COUNTERS: PerCpuHashMap<VlanKey, Counter> =
    PerCpuHashMap::with_max_entries(VLAN_COUNTERS_MAX_ENTRIES, 0);

#[classifier]
pub fn vlan_count_ingress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Ingress);
    // TCX_NEXT / "unspec": counting never changes the frame's fate.
    TC_ACT_UNSPEC
}

#[classifier]
pub fn vlan_count_egress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Egress);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn count(ctx: &TcContext, direction: Direction) {
    let v = vlans(ctx);
    // SAFETY: valid context pointer; ifindex is readable by sched_cls programs.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let key = VlanKey {
        ifindex,
        vlan: v.vlan,
        inner_vlan: v.inner_vlan,
        tag: v.tag as u8,
        direction: direction as u8,
        _pad: [0; 2],
    };
    // An offloaded tag is not in skb->len but is on the wire.
    let bytes = ctx.len() as u64 + if v.offloaded { VLAN_HLEN as u64 } else { 0 };
    match VLAN_COUNTERS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        Some(c) => unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        },
        None => {
            let _ = VLAN_COUNTERS.insert(key, Counter { packets: 1, bytes }, 0);
        }
    }
}
