//! `ferry lab counters`, the data-plane demo: ferry's VLAN counters on both ends of a veth pair
//! between two throwaway namespaces, with tagged, double-tagged and untagged
//! (ICMP) traffic across, and a live table of what the eBPF programs count.

use std::{
    io::{IsTerminal, Write},
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ferry_common::counters::{Direction, TagKind};

use crate::{
    dataplane::{Dataplane, VlanCount, summarize},
    lab::CountersConfig,
    lab::Topology,
    net::{
        PacketSocket,
        frame::{VlanTag, ethernet},
        icmp,
    },
};

/// IEEE 802 "local experimental" ethertype for the demo's tagged frames.
const DEMO_ETHERTYPE: u16 = 0x88b5;
const LEFT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const RIGHT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

/// What the demo measured.
#[derive(Debug)]
pub struct Outcome {
    pub frames_sent: u64,
    pub pings_sent: u32,
    pub pings_received: u32,
    pub left: Vec<VlanCount>,
    pub right: Vec<VlanCount>,
    /// Every (tag, vlan) counted leaving the left end was counted, with the
    /// same packets and bytes, arriving at the right end, and vice versa.
    pub consistent: bool,
}

fn key(c: &VlanCount) -> (TagKind, u16, u16) {
    (c.tag, c.vlan, c.inner_vlan)
}

/// Egress counters of one end must equal ingress counters of the other.
fn matches(tx: &[VlanCount], rx: &[VlanCount]) -> bool {
    let pick = |v: &[VlanCount], d: Direction| {
        let mut out: Vec<_> = v
            .iter()
            .filter(|c| c.direction == d)
            .map(|c| (key(c), c.packets, c.bytes))
            .collect();
        out.sort();
        out
    };
    pick(tx, Direction::Egress) == pick(rx, Direction::Ingress)
}

pub fn run(cfg: &CountersConfig) -> Result<Outcome> {
    let mut topo = Topology::new("ferry-demo");
    let left = topo
        .add_node("left", false)
        .context("creating namespace 'left'")?;
    let right = topo
        .add_node("right", false)
        .context("creating namespace 'right'")?;
    topo.link("left", "l0", "right", "r0")
        .context("creating the veth pair")?;
    topo.addr("left", "l0", "10.99.0.1/24")?;
    topo.addr("right", "r0", "10.99.0.2/24")?;
    let (lmac, rmac) = (topo.mac("left", "l0")?, topo.mac("right", "r0")?);
    // Static neighbours: no ARP, so the counters show only the demo's traffic.
    topo.with_netlink("left", |nl| nl.set_neighbour("l0", RIGHT_IP.into(), rmac))?;
    topo.with_netlink("right", |nl| nl.set_neighbour("r0", LEFT_IP.into(), lmac))?;

    let mut dp_left =
        Dataplane::load(Some(left.clone())).context("loading the data plane (left)")?;
    let mut dp_right =
        Dataplane::load(Some(right.clone())).context("loading the data plane (right)")?;
    dp_left.attach_vlan_counters("l0")?;
    dp_right.attach_vlan_counters("r0")?;

    let mut tag_sets: Vec<Vec<VlanTag>> =
        cfg.vlans.iter().map(|v| vec![VlanTag::dot1q(*v)]).collect();
    if let Some(q) = cfg.qinq {
        tag_sets.push(vec![VlanTag::dot1ad(q.outer), VlanTag::dot1q(q.inner)]);
    }
    let frames: Vec<Vec<u8>> = tag_sets
        .iter()
        .map(|tags| ethernet(rmac, lmac, tags, DEMO_ETHERTYPE, &[0x5a; 46]))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let period = Duration::from_secs(1) / cfg.rate;
    let rounds = (cfg.duration.as_secs_f64() * f64::from(cfg.rate)).ceil() as u64;
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        left.spawn("demo-sender", move || -> std::io::Result<()> {
            let sock = PacketSocket::bind("l0")?;
            let start = Instant::now();
            for round in 0..rounds {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for f in &frames {
                    sock.send(f)?;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                let next = start + period * (round as u32 + 1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok(())
        })?
    };
    let pings = rounds.min(u64::from(u32::MAX)) as u32;
    let pinger = left.spawn("demo-pinger", move || {
        icmp::ping(RIGHT_IP, pings, 56, period, Duration::from_secs(1))
    })?;

    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ferry demo: eBPF VLAN counters on a veth pair {} (l0, {lmac}) <-> {} (r0, {rmac})",
        left.name(),
        right.name()
    )?;
    let start = Instant::now();
    let mut drawn_lines = 0;
    // Bounded by the configured duration plus a grace period for the last replies.
    while !(sender.is_finished() && pinger.is_finished())
        && start.elapsed() < cfg.duration + Duration::from_secs(5)
    {
        std::thread::sleep(cfg.refresh);
        let table = live_table(
            &dp_left,
            &dp_right,
            start.elapsed(),
            sent.load(Ordering::Relaxed),
        )?;
        if tty {
            if drawn_lines > 0 {
                write!(out, "\x1b[{drawn_lines}A\x1b[J")?;
            }
            drawn_lines = table.lines().count();
            write!(out, "{table}")?;
        } else {
            writeln!(
                out,
                "t={:.1}s frames sent={}",
                start.elapsed().as_secs_f64(),
                sent.load(Ordering::Relaxed)
            )?;
        }
        out.flush()?;
    }
    stop.store(true, Ordering::Relaxed);
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))?
        .context("sending frames")?;
    let ping = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("pinger thread panicked"))?
        .context("pinging")?;

    let left_counts = dp_left.vlan_counters()?;
    let right_counts = dp_right.vlan_counters()?;
    let consistent = matches(&left_counts, &right_counts) && matches(&right_counts, &left_counts);
    if tty && drawn_lines > 0 {
        write!(out, "\x1b[{drawn_lines}A\x1b[J")?;
    }
    write!(
        out,
        "{}",
        live_table(
            &dp_left,
            &dp_right,
            start.elapsed(),
            sent.load(Ordering::Relaxed)
        )?
    )?;
    let rtt_ms = if ping.rtts.is_empty() {
        f64::NAN
    } else {
        ping.rtts.iter().map(Duration::as_secs_f64).sum::<f64>() / ping.rtts.len() as f64 * 1e3
    };
    writeln!(
        out,
        "\nsent {} tagged frames and {} pings ({} replies, mean rtt {rtt_ms:.3} ms)",
        sent.load(Ordering::Relaxed),
        ping.sent,
        ping.received
    )?;
    writeln!(
        out,
        "{}",
        if consistent {
            "every frame counted leaving one end was counted arriving at the other: counters consistent"
        } else {
            "MISMATCH: egress counters of one end differ from ingress counters of the other"
        }
    )?;
    drop(out);
    let outcome = Outcome {
        frames_sent: sent.load(Ordering::Relaxed),
        pings_sent: ping.sent,
        pings_received: ping.received,
        left: left_counts,
        right: right_counts,
        consistent,
    };
    drop((dp_left, dp_right));
    drop(topo);
    if !outcome.consistent {
        bail!("counters on the two ends of the veth pair disagree");
    }
    Ok(outcome)
}

fn live_table(left: &Dataplane, right: &Dataplane, t: Duration, sent: u64) -> Result<String> {
    let mut s = format!(
        "\nt={:.1}s  tagged frames sent: {sent}\n\n-- left --\n",
        t.as_secs_f64()
    );
    s.push_str(&summarize(left, &left.vlan_counters()?));
    s.push_str("\n-- right --\n");
    s.push_str(&summarize(right, &right.vlan_counters()?));
    Ok(s)
}
