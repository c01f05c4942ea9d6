//! The router's Prometheus metrics: class counters and shaper statistics
//! read from the kernel at scrape time; announcements, bursts, moves and
//! re-convergence counted as the watch reports them. Labels are interface
//! and class names from the configuration (bounded), never MAC addresses.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use ferry_common::{counters::Direction, watch::announce};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

use super::{
    config::{HTB_MAJOR, RouterConfig, htb_minor},
    watch::{Burst, Move},
};
use crate::{
    dataplane::Dataplane,
    metrics::scrape::{Family, Kind, Sample, ScrapeCollector},
    netlink::tc::handle,
    netns::Netns,
};

const IFC: &[&str] = &["interface", "direction", "class"];

fn families() -> Vec<Family> {
    let f = |name, help, kind, labels| Family {
        name,
        help,
        kind,
        labels,
    };
    vec![
        f(
            "ferry_class_packets_total",
            "Packets classified into a class, by interface and direction",
            Kind::Counter,
            IFC,
        ),
        f(
            "ferry_class_bytes_total",
            "Bytes (on the wire) classified into a class, by interface and direction",
            Kind::Counter,
            IFC,
        ),
        f(
            "ferry_class_policer_drops_total",
            "Packets dropped by a class's eBPF policer",
            Kind::Counter,
            IFC,
        ),
        f(
            "ferry_class_rate_bytes_per_second",
            "Configured HTB rate (guaranteed) of a class on a shaped interface",
            Kind::Gauge,
            &["interface", "class"],
        ),
        f(
            "ferry_class_ceil_bytes_per_second",
            "Configured HTB ceil of a class on a shaped interface",
            Kind::Gauge,
            &["interface", "class"],
        ),
        f(
            "ferry_class_police_rate_bytes_per_second",
            "Configured eBPF policer rate of a class (0: none)",
            Kind::Gauge,
            &["class"],
        ),
        f(
            "ferry_interface_shaping_rate_bytes_per_second",
            "Configured link rate of a shaped interface (the HTB root)",
            Kind::Gauge,
            &["interface"],
        ),
        f(
            "ferry_shaper_sent_bytes_total",
            "Bytes the kernel's HTB class sent",
            Kind::Counter,
            &["interface", "class"],
        ),
        f(
            "ferry_shaper_drops_total",
            "Packets the kernel's HTB class dropped",
            Kind::Counter,
            &["interface", "class"],
        ),
        f(
            "ferry_shaper_overlimits_total",
            "Times the kernel's HTB class was over its rate",
            Kind::Counter,
            &["interface", "class"],
        ),
        f(
            "ferry_mac_table_entries",
            "MAC addresses in the announcement watch's table",
            Kind::Gauge,
            &[],
        ),
    ]
}

/// Event-driven metrics and the registry that holds them with the
/// scrape-time families.
#[derive(Clone)]
pub struct RouterMetrics {
    pub registry: Registry,
    cfg: Arc<Mutex<RouterConfig>>,
    announcements: IntCounterVec,
    bursts: IntCounterVec,
    burst_frames: Histogram,
    burst_spread: Histogram,
    moves: IntCounterVec,
    outage: Histogram,
    announce_to_data: Histogram,
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        announce::RARP => "rarp",
        announce::GARP => "garp",
        announce::UNA => "unsolicited_na",
        _ => "other",
    }
}

fn class_name(cfg: &RouterConfig, id: u16) -> String {
    cfg.class(id)
        .map(|c| c.name.clone())
        .unwrap_or_else(|| format!("class{id}"))
}

impl RouterMetrics {
    pub fn new(
        cfg: &RouterConfig,
        dp: Arc<Mutex<Dataplane>>,
        ifaces: Arc<BTreeMap<u32, String>>,
        netns: Option<Arc<Netns>>,
    ) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let shared = Arc::new(Mutex::new(cfg.clone()));
        let c = shared.clone();
        let collector = ScrapeCollector::new(families(), move |s: &mut Sample| {
            let cfg = c.lock().expect("config lock").clone();
            read(&cfg, &dp, &ifaces, &netns, s)
        })?;
        registry.register(Box::new(collector))?;
        let ifaces_labels = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let announcements = ifaces_labels(
            "ferry_announcements_total",
            "Announcement frames seen (RARP, gratuitous ARP, unsolicited neighbour advertisements), by arrival interface and kind",
            &["interface", "kind"],
        )?;
        let bursts = ifaces_labels(
            "ferry_announcement_bursts_total",
            "Announcement bursts (one MAC's frames close together)",
            &["interface"],
        )?;
        let moves = ifaces_labels(
            "ferry_mac_moves_total",
            "MAC addresses seen moving to a new port, by the new port",
            &["interface"],
        )?;
        let h = |name: &str, help: &str, buckets: &[f64]| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        };
        let burst_frames = h(
            "ferry_announcement_burst_frames",
            "Frames per announcement burst",
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 16.0],
        )?;
        let burst_spread = h(
            "ferry_announcement_burst_spread_seconds",
            "From the first to the last frame of an announcement burst (QEMU's schedule spreads 5 frames over 0.8 s)",
            &[0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0],
        )?;
        let conv = [
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let outage = h(
            "ferry_reconvergence_outage_seconds",
            "From the last frame of a moved MAC on its old port to its first data frame on the new port",
            &conv,
        )?;
        let announce_to_data = h(
            "ferry_reconvergence_announce_to_data_seconds",
            "From the first announcement of a moved MAC to its first data frame on the new port",
            &conv,
        )?;
        for m in [&announcements, &bursts, &moves] {
            registry.register(Box::new(m.clone()))?;
        }
        for m in [&burst_frames, &burst_spread, &outage, &announce_to_data] {
            registry.register(Box::new(m.clone()))?;
        }
        // Series exist from the start, so rate() works at zero.
        for ifc in cfg.interfaces.iter().filter(|i| i.watch) {
            for k in [announce::RARP, announce::GARP, announce::UNA] {
                announcements.with_label_values(&[&ifc.name, kind_name(k)]);
            }
            bursts.with_label_values(&[&ifc.name]);
            moves.with_label_values(&[&ifc.name]);
        }
        Ok(Self {
            registry,
            cfg: shared,
            announcements,
            bursts,
            burst_frames,
            burst_spread,
            moves,
            outage,
            announce_to_data,
        })
    }

    pub fn configure(&self, cfg: &RouterConfig) {
        *self.cfg.lock().expect("config lock") = cfg.clone();
    }

    pub fn announcement(&self, ifname: &str, kind: u8) {
        self.announcements
            .with_label_values(&[ifname, kind_name(kind)])
            .inc();
    }

    pub fn burst(&self, ifname: &str, b: &Burst) {
        self.bursts.with_label_values(&[ifname]).inc();
        self.burst_frames.observe(f64::from(b.frames));
        self.burst_spread.observe(b.spread_seconds());
    }

    pub fn moved(&self, ifname: &str) {
        self.moves.with_label_values(&[ifname]).inc();
    }

    pub fn converged(&self, m: &Move) {
        if let Some(s) = m.outage_seconds {
            self.outage.observe(s);
        }
        if let Some(s) = m.announce_to_data_seconds {
            self.announce_to_data.observe(s);
        }
    }
}

fn read(
    cfg: &RouterConfig,
    dp: &Mutex<Dataplane>,
    ifaces: &BTreeMap<u32, String>,
    netns: &Option<Arc<Netns>>,
    s: &mut Sample,
) -> Result<(), super::RouterError> {
    let (counts, macs) = {
        let dp = dp.lock().expect("dataplane lock");
        (dp.class_counters()?, dp.mac_table()?.len())
    };
    for c in counts {
        // Pinned counters can outlive an interface a new config dropped.
        let Some(ifname) = ifaces.get(&c.ifindex) else {
            continue;
        };
        let dir = if c.direction == Direction::Ingress {
            "ingress"
        } else {
            "egress"
        };
        let class = class_name(cfg, c.class);
        let l = [ifname.as_str(), dir, class.as_str()];
        s.set("ferry_class_packets_total", &l, c.packets as f64);
        s.set("ferry_class_bytes_total", &l, c.bytes as f64);
        s.set("ferry_class_policer_drops_total", &l, c.drops as f64);
    }
    s.set("ferry_mac_table_entries", &[], macs as f64);
    for c in &cfg.classes {
        s.set(
            "ferry_class_police_rate_bytes_per_second",
            &[&c.name],
            c.police.map(|p| p.rate.bytes_per_second()).unwrap_or(0) as f64,
        );
    }
    let shaped: Vec<_> = cfg
        .interfaces
        .iter()
        .filter_map(|i| i.shape.map(|sh| (i, sh)))
        .collect();
    if shaped.is_empty() {
        return Ok(());
    }
    let mut nl = super::Router::netlink(netns)?;
    for (ifc, shape) in shaped {
        let link = shape.rate.bytes_per_second();
        s.set(
            "ferry_interface_shaping_rate_bytes_per_second",
            &[&ifc.name],
            link as f64,
        );
        let stats = nl.class_stats(&ifc.name)?;
        for c in &cfg.classes {
            let r = super::class_rates(cfg, link, c.id);
            let l = [ifc.name.as_str(), c.name.as_str()];
            s.set("ferry_class_rate_bytes_per_second", &l, r.rate as f64);
            s.set("ferry_class_ceil_bytes_per_second", &l, r.ceil as f64);
            if let Some(st) = stats
                .iter()
                .find(|st| st.handle == handle(HTB_MAJOR, htb_minor(c.id)))
            {
                s.set("ferry_shaper_sent_bytes_total", &l, st.bytes as f64);
                s.set("ferry_shaper_drops_total", &l, st.drops as f64);
                s.set("ferry_shaper_overlimits_total", &l, st.overlimits as f64);
            }
        }
    }
    Ok(())
}
