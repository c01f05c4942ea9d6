//! Announcement watch: RARP, gratuitous ARP and unsolicited IPv6 neighbour
//! advertisements; per MAC and VLAN where it was last seen; MAC moves and
//! the first data frame after a move, reported through a ring buffer.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{LruHashMap, RingBuf},
    programs::TcContext,
};
use ferry_common::{
    ethertype, ipproto,
    watch::{MAC_TABLE_ENTRIES, MacEntry, MacKey, WatchEvent, announce, event},
};

use crate::{
    packet::{Frame, Headers, parse},
    tc,
};

#[map]
static MAC_TABLE: LruHashMap<MacKey, MacEntry> = LruHashMap::with_max_entries(MAC_TABLE_ENTRIES, 0);
#[map]
static WATCH_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// The announcement a frame is, if any, and the address it announces.
#[inline(always)]
fn announcement(f: &Frame, h: &Headers) -> Option<(u8, [u8; 16])> {
    let mut ip = [0u8; 16];
    match h.ethertype {
        ethertype::RARP => {
            // Ethernet/IPv4, op 3 (request reverse): QEMU and ESXi after a move.
            if f.be16(h.l3 + 6)? == 3 {
                return Some((announce::RARP, ip));
            }
            None
        }
        ethertype::ARP => {
            let op = f.be16(h.l3 + 6)?;
            let spa = f.be32(h.l3 + 14)?;
            let tpa = f.be32(h.l3 + 24)?;
            if (op == 1 || op == 2) && spa == tpa && spa != 0 {
                ip[..4].copy_from_slice(&spa.to_be_bytes());
                return Some((announce::GARP, ip));
            }
            None
        }
        _ if h.family == 6 && h.proto == ipproto::ICMPV6 => {
            // Neighbour advertisement (136) without the solicited flag.
            if f.u8_at(h.l4)? == 136 && f.u8_at(h.l4 + 4)? & 0x40 == 0 {
                let mut k = 0;
                while k < 4 {
                    ip[4 * k..4 * k + 4].copy_from_slice(&f.be32(h.l4 + 8 + 4 * k)?.to_be_bytes());
                    k += 1;
                }
                return Some((announce::UNA, ip));
            }
            None
        }
        _ => None,
    }
}

#[inline(always)]
fn emit(ev: WatchEvent) {
    let _ = WATCH_EVENTS.output::<WatchEvent>(&ev, 0);
}

#[classifier]
pub fn watch_ingress(ctx: TcContext) -> i32 {
    let f = tc::frame(&ctx);
    let Some(h) = parse(&f, tc::meta_vlan(&ctx)) else {
        return TC_ACT_UNSPEC;
    };
    // Sources only: a multicast source address is not a station.
    if h.src_mac[0] & 1 != 0 {
        return TC_ACT_UNSPEC;
    }
    let ifindex = tc::ifindex(&ctx);
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let ann = announcement(&f, &h);
    let key = MacKey {
        mac: h.src_mac,
        vlan: h.vlan,
    };
    let base = WatchEvent {
        ts_ns: now,
        old_last_ns: 0,
        ifindex,
        old_ifindex: 0,
        kind: 0,
        announce: 0,
        vlan: h.vlan,
        mac: h.src_mac,
        _pad: [0; 2],
        ip: [0; 16],
    };
    match MAC_TABLE.get_ptr_mut(key) {
        None => {
            let e = MacEntry {
                ifindex,
                awaiting_data: 0,
                first_ns: now,
                last_ns: now,
                announcements: u64::from(ann.is_some()),
                moves: 0,
            };
            let _ = MAC_TABLE.insert(key, e, 0);
        }
        // SAFETY: the entry stays valid for this program run (LRU eviction is RCU-deferred).
        Some(e) => unsafe {
            if (*e).ifindex != ifindex {
                emit(WatchEvent {
                    kind: event::MOVE,
                    old_ifindex: (*e).ifindex,
                    old_last_ns: (*e).last_ns,
                    ..base
                });
                (*e).ifindex = ifindex;
                (*e).awaiting_data = 1;
                (*e).moves += 1;
            }
            if ann.is_some() {
                (*e).announcements += 1;
            } else if (*e).awaiting_data != 0 {
                emit(WatchEvent {
                    kind: event::FIRST_DATA,
                    ..base
                });
                (*e).awaiting_data = 0;
            }
            (*e).last_ns = now;
        },
    }
    if let Some((kind, ip)) = ann {
        emit(WatchEvent {
            kind: event::ANNOUNCE,
            announce: kind,
            ip,
            ..base
        });
    }
    TC_ACT_UNSPEC
}
