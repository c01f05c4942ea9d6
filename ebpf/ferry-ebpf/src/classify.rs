//! Router classification: ordered rules map each frame to a class; per
//! interface, direction and class counters; at egress, the class's HTB
//! handle in skb->priority and an optional token-bucket policer.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::{bpf_ktime_get_ns, generated::bpf_redirect},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, PerCpuHashMap},
    programs::{TcContext, XdpContext},
};
use ferry_common::{
    classify::{
        ClassCounter, ClassEntry, ClassKey, MAX_CLASSES, MAX_RULES, PolicerState, RouterSettings,
        Rule, m,
    },
    counters::Direction,
    wan::{DELAYED_MARK, LineEntry, LineKey, MAX_LINES},
};

use crate::{
    atomic,
    packet::{Frame, Headers, parse},
    tc,
};

#[map]
static RULES: Array<Rule> = Array::with_max_entries(MAX_RULES, 0);
#[map]
static ROUTER_SETTINGS: Array<RouterSettings> = Array::with_max_entries(1, 0);
#[map]
static CLASSES: Array<ClassEntry> = Array::with_max_entries(MAX_CLASSES, 0);
#[map]
static POLICERS: Array<PolicerState> = Array::with_max_entries(MAX_CLASSES, 0);
#[map]
static CLASS_COUNTERS: PerCpuHashMap<ClassKey, ClassCounter> =
    PerCpuHashMap::with_max_entries(4096, 0);
/// (interface, class) egress frames that go through a WAN delay line.
#[map]
static WAN_LINES: HashMap<LineKey, LineEntry> = HashMap::with_max_entries(MAX_LINES, 0);

#[inline(always)]
fn in_net(a: &[u32; 4], net: &[u32; 4], mask: &[u32; 4]) -> bool {
    a[0] & mask[0] == net[0]
        && a[1] & mask[1] == net[1]
        && a[2] & mask[2] == net[2]
        && a[3] & mask[3] == net[3]
}

#[inline(always)]
fn matches(r: &Rule, h: &Headers) -> bool {
    let f = r.flags;
    if f & m::TAG != 0 && r.tag != h.tag as u8 {
        return false;
    }
    if f & m::VLAN != 0 && r.vlan != h.vlan {
        return false;
    }
    if f & m::INNER_VLAN != 0 && r.inner_vlan != h.inner_vlan {
        return false;
    }
    if f & (m::DSCP | m::PROTO | m::FAMILY | m::SRC | m::DST) != 0 && h.family == 0 {
        return false;
    }
    if f & m::FAMILY != 0 && r.family != h.family {
        return false;
    }
    if f & m::DSCP != 0 && r.dscp != h.dscp {
        return false;
    }
    if f & m::PROTO != 0 && r.proto != h.proto {
        return false;
    }
    if f & m::SRC != 0 && !in_net(&h.src, &r.src_net, &r.src_mask) {
        return false;
    }
    if f & m::DST != 0 && !in_net(&h.dst, &r.dst_net, &r.dst_mask) {
        return false;
    }
    if f & (m::SPORT | m::DPORT) != 0 && !h.has_ports {
        return false;
    }
    if f & m::SPORT != 0 && (h.sport < r.sport_lo || h.sport > r.sport_hi) {
        return false;
    }
    if f & m::DPORT != 0 && (h.dport < r.dport_lo || h.dport > r.dport_hi) {
        return false;
    }
    true
}

/// The class of a frame: the first matching rule's, else the default.
#[inline(always)]
pub fn classify(h: &Headers) -> u16 {
    let Some(s) = ROUTER_SETTINGS.get(0) else {
        return 0;
    };
    let count = s.rule_count.min(MAX_RULES);
    let mut i = 0;
    while i < MAX_RULES {
        if i >= count {
            break;
        }
        if let Some(r) = RULES.get(i)
            && r.class != 0
            && matches(r, h)
        {
            return r.class;
        }
        i += 1;
    }
    s.default_class
}

#[inline(always)]
fn count(ifindex: u32, class: u16, dir: Direction, bytes: u64, dropped: bool) {
    let key = ClassKey {
        ifindex,
        class,
        direction: dir as u8,
        _pad: 0,
    };
    match CLASS_COUNTERS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it now.
        Some(c) => unsafe {
            if dropped {
                (*c).drops += 1;
            } else {
                (*c).packets += 1;
                (*c).bytes += bytes;
            }
        },
        None => {
            let v = if dropped {
                ClassCounter {
                    packets: 0,
                    bytes: 0,
                    drops: 1,
                }
            } else {
                ClassCounter {
                    packets: 1,
                    bytes,
                    drops: 0,
                }
            };
            let _ = CLASS_COUNTERS.insert(key, v, 0);
        }
    }
}

/// Token bucket shared by all CPUs: refilled by whichever CPU wins the
/// compare-and-swap on the timestamp, drained with atomic adds.
#[inline(always)]
fn police(class: u16, e: &ClassEntry, len: u64) -> bool {
    if e.police_rate == 0 {
        return true;
    }
    let Some(st) = POLICERS.get_ptr_mut(u32::from(class)) else {
        return true;
    };
    // SAFETY: st points at this class's map value; fields are 8-byte aligned.
    unsafe {
        let now = bpf_ktime_get_ns();
        let last_p = core::ptr::addr_of_mut!((*st).last_ns);
        let tok_p = core::ptr::addr_of_mut!((*st).tokens).cast::<u64>();
        let last = core::ptr::read_volatile(last_p);
        if now > last && atomic::cmpxchg(last_p, last, now) == last {
            // Capped at one second of refill, so the product cannot overflow.
            let us = ((now - last) / 1000).min(1_000_000);
            let add = us * e.police_rate / 1_000_000;
            let before = atomic::fetch_add(tok_p, add) as i64;
            let after = before + add as i64;
            let burst = e.police_burst as i64;
            if after > burst {
                atomic::fetch_add(tok_p, (burst - after) as u64);
            }
        }
        let left = atomic::fetch_add(tok_p, (len as i64).wrapping_neg() as u64) as i64 - len as i64;
        if left < 0 {
            atomic::fetch_add(tok_p, len);
            return false;
        }
    }
    true
}

/// The tap of the live delay line of (interface, class), if there is one.
#[inline(always)]
fn wan_line(ifindex: u32, class: u16) -> Option<u32> {
    let key = LineKey {
        ifindex,
        class,
        _pad: 0,
    };
    // SAFETY: read-only lookup of a plain value.
    let e = unsafe { WAN_LINES.get(key) }?;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    (now < e.alive_until_ns).then_some(e.tap_ifindex)
}

#[classifier]
pub fn classify_ingress(ctx: TcContext) -> i32 {
    let f = tc::frame(&ctx);
    if let Some(h) = parse(&f, tc::meta_vlan(&ctx)) {
        let class = classify(&h);
        if class != 0 {
            count(
                tc::ifindex(&ctx),
                class,
                Direction::Ingress,
                tc::wire_len(&ctx),
                false,
            );
        }
    }
    TC_ACT_UNSPEC
}

#[classifier]
pub fn classify_egress(ctx: TcContext) -> i32 {
    let f = tc::frame(&ctx);
    let Some(h) = parse(&f, tc::meta_vlan(&ctx)) else {
        return TC_ACT_UNSPEC;
    };
    let class = classify(&h);
    if class == 0 {
        return TC_ACT_UNSPEC;
    }
    let len = tc::wire_len(&ctx);
    let ifindex = tc::ifindex(&ctx);
    // A delayed class leaves through its delay line: the frame goes to the
    // line's tap now and comes back marked when its time has come, and is
    // policed, prioritised and counted then.
    let skb = ctx.skb.skb;
    // SAFETY: valid context; mark is readable and writable by sched_cls.
    let delayed = unsafe {
        let d = (*skb).mark == DELAYED_MARK;
        if d {
            (*skb).mark = 0;
        }
        d
    };
    if !delayed && let Some(line) = wan_line(ifindex, class) {
        // SAFETY: plain helper call; the tap is in this namespace.
        return unsafe { bpf_redirect(line, 0) } as i32;
    }
    if let Some(e) = CLASSES.get(u32::from(class)) {
        if !police(class, e, len) {
            count(ifindex, class, Direction::Egress, len, true);
            return TC_ACT_SHOT;
        }
        if e.priority != 0 {
            // SAFETY: valid context; priority is writable by sched_cls.
            unsafe { (*ctx.skb.skb).priority = e.priority };
        }
    }
    count(ifindex, class, Direction::Egress, len, false);
    TC_ACT_UNSPEC
}

/// The same ingress classification at XDP, for comparison (see README).
#[xdp]
pub fn classify_xdp(ctx: XdpContext) -> u32 {
    let f = Frame {
        data: ctx.data(),
        end: ctx.data_end(),
    };
    if let Some(h) = parse(&f, None) {
        let class = classify(&h);
        if class != 0 {
            // SAFETY: valid context.
            let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
            count(
                ifindex,
                class,
                Direction::Ingress,
                (f.end - f.data) as u64,
                false,
            );
        }
    }
    xdp_action::XDP_PASS
}
