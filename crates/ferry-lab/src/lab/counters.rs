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

use crate::lab::error::{Context, LabError, Result, bail};
use ferry_common::counters::{Direction, TagKind};

use crate::{
    dataplane::{Dataplane, VlanCount, summarize},
    lab::CountersConfig,
    lab::Topology,
    net::{
        MacAddr, PacketSocket,
        frame::{VlanTag, ethernet},
        icmp,
    },
    netns::Netns,
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

/// The two ends of the veth pair, each with ferry's VLAN counters attached.
struct Pair {
    left: Arc<Netns>,
    right: Arc<Netns>,
    lmac: MacAddr,
    rmac: MacAddr,
    dp_left: Dataplane,
    dp_right: Dataplane,
    // Last: the namespaces go after the programs in them.
    _topo: Topology,
}

impl Pair {
    fn new() -> Result<Pair> {
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
        Ok(Pair {
            left,
            right,
            lmac,
            rmac,
            dp_left,
            dp_right,
            _topo: topo,
        })
    }

    fn table(&self, t: Duration, sent: u64) -> Result<String> {
        live_table(&self.dp_left, &self.dp_right, t, sent)
    }
}

/// The demo's traffic from the left end: tagged frames at the configured
/// rate and pings, both bounded by the configured duration.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    sender: std::thread::JoinHandle<std::io::Result<()>>,
    pinger: std::thread::JoinHandle<std::io::Result<icmp::PingStats>>,
}

impl Traffic {
    fn start(cfg: &CountersConfig, pair: &Pair) -> Result<Traffic> {
        let mut tag_sets: Vec<Vec<VlanTag>> =
            cfg.vlans.iter().map(|v| vec![VlanTag::dot1q(*v)]).collect();
        if let Some(q) = cfg.qinq {
            tag_sets.push(vec![VlanTag::dot1ad(q.outer), VlanTag::dot1q(q.inner)]);
        }
        let frames: Vec<Vec<u8>> = tag_sets
            .iter()
            .map(|tags| ethernet(pair.rmac, pair.lmac, tags, DEMO_ETHERTYPE, &[0x5a; 46]))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let period = Duration::from_secs(1) / cfg.rate;
        let rounds = (cfg.duration.as_secs_f64() * f64::from(cfg.rate)).ceil() as u64;
        let sender = {
            let (stop, sent) = (stop.clone(), sent.clone());
            pair.left
                .spawn("demo-sender", move || -> std::io::Result<()> {
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
        let pinger = pair.left.spawn("demo-pinger", move || {
            icmp::ping(RIGHT_IP, pings, 56, period, Duration::from_secs(1))
        })?;
        Ok(Traffic {
            stop,
            sent,
            sender,
            pinger,
        })
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn finished(&self) -> bool {
        self.sender.is_finished() && self.pinger.is_finished()
    }

    /// Stops the sender and waits for both: the frames sent, the pings' figures.
    fn join(self) -> Result<(u64, icmp::PingStats)> {
        self.stop.store(true, Ordering::Relaxed);
        self.sender
            .join()
            .map_err(|_| LabError::Panicked("sender"))?
            .context("sending frames")?;
        let ping = self
            .pinger
            .join()
            .map_err(|_| LabError::Panicked("pinger"))?
            .context("pinging")?;
        Ok((self.sent.load(Ordering::Relaxed), ping))
    }
}

pub fn run(cfg: &CountersConfig) -> Result<Outcome> {
    let pair = Pair::new()?;
    let traffic = Traffic::start(cfg, &pair)?;
    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ferry demo: eBPF VLAN counters on a veth pair {} (l0, {}) <-> {} (r0, {})",
        pair.left.name(),
        pair.lmac,
        pair.right.name(),
        pair.rmac
    )?;
    let start = Instant::now();
    let mut drawn_lines = 0;
    // Bounded by the configured duration plus a grace period for the last replies.
    while !traffic.finished() && start.elapsed() < cfg.duration + Duration::from_secs(5) {
        std::thread::sleep(cfg.refresh);
        let table = pair.table(start.elapsed(), traffic.sent())?;
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
                traffic.sent()
            )?;
        }
        out.flush()?;
    }
    let (frames_sent, ping) = traffic.join()?;
    let left = pair.dp_left.vlan_counters()?;
    let right = pair.dp_right.vlan_counters()?;
    let consistent = matches(&left, &right) && matches(&right, &left);
    if tty && drawn_lines > 0 {
        write!(out, "\x1b[{drawn_lines}A\x1b[J")?;
    }
    write!(out, "{}", pair.table(start.elapsed(), frames_sent)?)?;
    let rtt_ms = if ping.rtts.is_empty() {
        f64::NAN
    } else {
        ping.rtts.iter().map(Duration::as_secs_f64).sum::<f64>() / ping.rtts.len() as f64 * 1e3
    };
    writeln!(
        out,
        "\nsent {frames_sent} tagged frames and {} pings ({} replies, mean rtt {rtt_ms:.3} ms)",
        ping.sent, ping.received
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
    drop(pair);
    if !consistent {
        bail!("counters on the two ends of the veth pair disagree");
    }
    Ok(Outcome {
        frames_sent,
        pings_sent: ping.sent,
        pings_received: ping.received,
        left,
        right,
        consistent,
    })
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
