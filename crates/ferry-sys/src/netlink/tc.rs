//! Queueing disciplines over netlink: an HTB tree whose classes the
//! egress program picks through skb->priority.
//!
//! netlink-packet-route knows no HTB, so its options are encoded here from
//! the kernel UAPI (include/uapi/linux/pkt_sched.h): TCA_HTB_INIT carries a
//! `tc_htb_glob`, TCA_HTB_PARMS a `tc_htb_opt`, with 64-bit rates beside
//! them when they do not fit 32 bits. Rates are given with linklayer
//! ethernet, so the kernel needs no rate tables.

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcHandle, TcMessage, TcOption, TcStats2},
};

use super::{Netlink, Result};

const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TC_HTB_PROTOVER: u32 = 3;
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// The kernel's scheduler clock runs in 64 ns ticks (PSCHED_SHIFT 6).
const PSCHED_SHIFT: u32 = 6;

/// An HTB class's parameters, in bytes per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HtbClass {
    pub rate: u64,
    pub ceil: u64,
    /// Priority among siblings when borrowing (0 first).
    pub prio: u32,
}

/// Statistics of one class, from the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    pub handle: u32,
    pub bytes: u64,
    pub packets: u64,
    pub drops: u64,
    pub overlimits: u64,
}

pub fn handle(major: u16, minor: u16) -> u32 {
    (u32::from(major) << 16) | u32::from(minor)
}

fn tc_handle(h: u32) -> TcHandle {
    TcHandle {
        major: (h >> 16) as u16,
        minor: (h & 0xffff) as u16,
    }
}

fn ratespec(rate: u64) -> [u8; 12] {
    let mut r = [0u8; 12];
    r[1] = TC_LINKLAYER_ETHERNET;
    r[8..12].copy_from_slice(&(rate.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
    r
}

/// Burst allowance: the bytes `rate` carries in 1 ms, but at least a full
/// 64 KiB GSO segment plus headers, so that large segments are not held.
fn burst(rate: u64) -> u64 {
    (rate / 1000).max(65_536 + 1_600)
}

fn ticks(bytes: u64, rate: u64) -> u32 {
    let ns = bytes.saturating_mul(1_000_000_000) / rate.max(1);
    (ns >> PSCHED_SHIFT).min(u64::from(u32::MAX)) as u32
}

fn htb_opt(c: &HtbClass) -> Vec<TcOption> {
    let mut p = Vec::with_capacity(44);
    p.extend_from_slice(&ratespec(c.rate));
    p.extend_from_slice(&ratespec(c.ceil));
    p.extend_from_slice(&ticks(burst(c.rate), c.rate).to_ne_bytes());
    p.extend_from_slice(&ticks(burst(c.ceil), c.ceil).to_ne_bytes());
    // Quantum: bytes a class may send per round when borrowing.
    let quantum = (c.rate / 10).clamp(1_600, 200_000) as u32;
    p.extend_from_slice(&quantum.to_ne_bytes());
    p.extend_from_slice(&0u32.to_ne_bytes()); // level: computed by the kernel
    p.extend_from_slice(&c.prio.to_ne_bytes());
    let mut opts = vec![TcOption::Other(DefaultNla::new(TCA_HTB_PARMS, p))];
    if c.rate > u64::from(u32::MAX) {
        opts.push(TcOption::Other(DefaultNla::new(
            TCA_HTB_RATE64,
            c.rate.to_ne_bytes().to_vec(),
        )));
    }
    if c.ceil > u64::from(u32::MAX) {
        opts.push(TcOption::Other(DefaultNla::new(
            TCA_HTB_CEIL64,
            c.ceil.to_ne_bytes().to_vec(),
        )));
    }
    opts
}

impl Netlink {
    fn tc_message(&mut self, dev: &str, handle: u32, parent: u32) -> Result<TcMessage> {
        let index = self.link_index(dev)?;
        let mut m = TcMessage::default();
        m.header.index = index as i32;
        m.header.handle = tc_handle(handle);
        m.header.parent = tc_handle(parent);
        Ok(m)
    }

    /// Replaces `dev`'s root qdisc with HTB `major:`, unclassified traffic to
    /// class `major:default_minor`.
    pub fn htb_root(&mut self, dev: &str, major: u16, default_minor: u16) -> Result<()> {
        let mut m = self.tc_message(dev, handle(major, 0), u32::MAX)?;
        let mut glob = Vec::with_capacity(20);
        glob.extend_from_slice(&TC_HTB_PROTOVER.to_ne_bytes());
        glob.extend_from_slice(&10u32.to_ne_bytes()); // rate2quantum
        glob.extend_from_slice(&u32::from(default_minor).to_ne_bytes());
        glob.extend_from_slice(&0u32.to_ne_bytes()); // debug
        glob.extend_from_slice(&0u32.to_ne_bytes()); // direct_pkts (output only)
        m.attributes.push(TcAttribute::Kind("htb".into()));
        m.attributes.push(TcAttribute::Options(vec![TcOption::Other(
            DefaultNla::new(TCA_HTB_INIT, glob),
        )]));
        self.request(
            &format!("set an HTB root qdisc on {dev}"),
            RouteNetlinkMessage::NewQueueDiscipline(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// Creates class `classid` under `parent`, or changes it in place if it
    /// exists (traffic keeps flowing through it).
    pub fn htb_class(&mut self, dev: &str, parent: u32, classid: u32, c: &HtbClass) -> Result<()> {
        let mut m = self.tc_message(dev, classid, parent)?;
        m.attributes.push(TcAttribute::Kind("htb".into()));
        m.attributes.push(TcAttribute::Options(htb_opt(c)));
        let op = format!(
            "set HTB class {:x}:{:x} on {dev}",
            classid >> 16,
            classid & 0xffff
        );
        match self.request(
            &op,
            RouteNetlinkMessage::NewTrafficClass(m.clone()),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                self.request(&op, RouteNetlinkMessage::NewTrafficClass(m), 0)?;
                Ok(())
            }
            r => r.map(drop),
        }
    }

    pub fn delete_class(&mut self, dev: &str, parent: u32, classid: u32) -> Result<()> {
        let m = self.tc_message(dev, classid, parent)?;
        self.request(
            &format!("delete class {classid:x} on {dev}"),
            RouteNetlinkMessage::DelTrafficClass(m),
            0,
        )?;
        Ok(())
    }

    /// Removes `dev`'s root qdisc (back to the default).
    pub fn delete_root_qdisc(&mut self, dev: &str) -> Result<()> {
        let m = self.tc_message(dev, 0, u32::MAX)?;
        match self.request(
            &format!("delete the root qdisc of {dev}"),
            RouteNetlinkMessage::DelQueueDiscipline(m),
            0,
        ) {
            Err(e) if e.errno() == Some(libc::ENOENT) || e.errno() == Some(libc::EINVAL) => Ok(()),
            r => r.map(drop),
        }
    }

    /// The kind of `dev`'s root qdisc ("htb", "noqueue", ...).
    pub fn root_qdisc(&mut self, dev: &str) -> Result<Option<String>> {
        let index = self.link_index(dev)?;
        let replies = self.request(
            &format!("list qdiscs of {dev}"),
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            NLM_F_DUMP,
        )?;
        for r in replies {
            let RouteNetlinkMessage::NewQueueDiscipline(m) = r else {
                continue;
            };
            if m.header.index as u32 == index && m.header.parent == TcHandle::ROOT {
                return Ok(m.attributes.iter().find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.clone()),
                    _ => None,
                }));
            }
        }
        Ok(None)
    }

    /// Statistics of every class on `dev`.
    pub fn class_stats(&mut self, dev: &str) -> Result<Vec<ClassStats>> {
        let index = self.link_index(dev)?;
        let mut q = TcMessage::default();
        q.header.index = index as i32;
        let replies = self.request(
            &format!("list classes of {dev}"),
            RouteNetlinkMessage::GetTrafficClass(q),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewTrafficClass(m) = r else {
                continue;
            };
            let mut s = ClassStats {
                handle: handle(m.header.handle.major, m.header.handle.minor),
                ..Default::default()
            };
            for a in &m.attributes {
                match a {
                    TcAttribute::Stats2(st) => {
                        for x in st {
                            match x {
                                TcStats2::Basic(b) => {
                                    s.bytes = b.bytes;
                                    s.packets = u64::from(b.packets);
                                }
                                TcStats2::Queue(q) => {
                                    s.drops = u64::from(q.drops);
                                    s.overlimits = u64::from(q.overlimits);
                                }
                                _ => {}
                            }
                        }
                    }
                    TcAttribute::Stats(st) if s.bytes == 0 => {
                        s.bytes = st.bytes;
                        s.packets = u64::from(st.packets);
                        s.drops = u64::from(st.drops);
                    }
                    _ => {}
                }
            }
            out.push(s);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htb_parameters_are_laid_out_like_the_uapi() {
        let opts = htb_opt(&HtbClass {
            rate: 6_250_000,
            ceil: 12_500_000,
            prio: 1,
        });
        let TcOption::Other(p) = &opts[0] else {
            panic!()
        };
        let mut b = vec![0u8; 44];
        netlink_packet_core::Nla::emit_value(p, &mut b);
        assert_eq!(b.len(), 44, "sizeof(struct tc_htb_opt)");
        assert_eq!(b[1], TC_LINKLAYER_ETHERNET);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 6_250_000);
        assert_eq!(
            u32::from_ne_bytes(b[20..24].try_into().unwrap()),
            12_500_000
        );
        // 64 KiB + 1600 bytes at 50 Mbit/s is 10.7 ms: 167,680 ticks of 64 ns.
        assert_eq!(
            u32::from_ne_bytes(b[24..28].try_into().unwrap()),
            ((67_136u64 * 1_000_000_000 / 6_250_000) >> 6) as u32
        );
        assert_eq!(u32::from_ne_bytes(b[40..44].try_into().unwrap()), 1);
        assert_eq!(opts.len(), 1, "no 64-bit rates needed");
        assert_eq!(
            htb_opt(&HtbClass {
                rate: 10_000_000_000,
                ceil: 10_000_000_000,
                prio: 0
            })
            .len(),
            3
        );
        assert_eq!(handle(1, 0x10), 0x0001_0010);
    }
}
