//! `ferry router`: a router in the migration path. Classifies what crosses
//! its interfaces (eBPF, TCX), shapes what leaves them (HTB over netlink,
//! the class picked by the egress program through skb->priority, optional
//! eBPF policers), and watches for the announcements a moved guest sends,
//! measuring how fast the network re-converges.
//!
//! Rules, classes and rates change live ([`Router::apply`]) through maps and
//! netlink; with a `pin_dir`, maps and program links live in bpffs and the
//! HTB tree stays, so restarting the daemon leaves traffic shaped.

pub mod config;
pub mod metrics;
pub mod watch;

use ferry_common::names::{map, program};
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::programs::TcAttachType;
use ferry_common::classify::ClassEntry;

pub use config::RouterConfig;
use config::{HTB_MAJOR, HTB_ROOT_MINOR, htb_minor};
pub use watch::{Burst, Move};

use crate::{
    clock::monotonic_ns,
    config::{Invalid, Validate},
    dataplane::{Dataplane, DataplaneError},
    netlink::{Netlink, NetlinkError, tc::HtbClass, tc::handle},
    netns::{Netns, NetnsError},
    wan::{LineSpec, LineStats, WanLines},
};

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("router configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("metrics")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wan(#[from] crate::wan::WanError),
}

impl From<Invalid> for RouterError {
    fn from(i: Invalid) -> Self {
        Self::Config(format!("{}: {}", i.field, i.message))
    }
}

pub type Result<T, E = RouterError> = std::result::Result<T, E>;

/// Where /metrics listens when the configuration does not say.
pub const DEFAULT_METRICS: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9473);

struct WatchThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for WatchThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A running router.
pub struct Router {
    cfg: RouterConfig,
    netns: Option<Arc<Netns>>,
    dp: Arc<Mutex<Dataplane>>,
    /// Interface index to name, in the router's namespace.
    ifaces: Arc<BTreeMap<u32, String>>,
    /// The watch's aggregator: open bursts, and the latest finished bursts
    /// and converged moves (bounded).
    watch: Arc<Mutex<watch::Aggregator>>,
    pub metrics: metrics::RouterMetrics,
    /// Delay lines, when an interface is a WAN port.
    wan: Option<WanLines>,
    _watch: Option<WatchThread>,
}

/// The delay lines `cfg` asks for: every class with WAN settings on every
/// WAN port.
fn wan_specs(cfg: &RouterConfig, ifaces: &BTreeMap<u32, String>) -> Vec<LineSpec> {
    let mut v = Vec::new();
    for ifc in cfg.interfaces.iter().filter(|i| i.wan) {
        let Some(ifindex) = ifaces
            .iter()
            .find(|(_, n)| **n == ifc.name)
            .map(|(i, _)| *i)
        else {
            continue;
        };
        for c in &cfg.classes {
            if let Some(w) = &c.wan {
                v.push(LineSpec {
                    interface: ifc.name.clone(),
                    ifindex,
                    class_id: c.id,
                    class: c.name.clone(),
                    cfg: w.clone(),
                });
            }
        }
    }
    v
}

/// The fair share a class gets when its rate is not configured.
/// A rate as the plan shows it: exact where the configuration's unit
/// divides it, else whole Mbit/s as `tc` rounds it (a fair share of 10Gbit
/// in three is 3333Mbit).
fn plan_rate(bytes_per_s: u64) -> String {
    let bits = bytes_per_s * 8;
    if bits >= 1_000_000 && !bits.is_multiple_of(1_000) {
        format!("{:.0}Mbit", bits as f64 / 1e6)
    } else {
        ferry_core::config::Rate(bytes_per_s).to_string()
    }
}

fn class_rates(cfg: &RouterConfig, link: u64, id: u16) -> HtbClass {
    let c = cfg.class(id).expect("class exists");
    let share = link / cfg.classes.len().max(1) as u64;
    let rate = c
        .rate
        .map(|r| r.bytes_per_second())
        .unwrap_or(share)
        .clamp(1, link);
    let ceil = c
        .ceil
        .map(|r| r.bytes_per_second())
        .unwrap_or(link)
        .max(rate);
    HtbClass {
        rate,
        ceil,
        prio: c.prio,
    }
}

impl Router {
    /// Loads the programs, installs rules and classes, builds the HTB trees
    /// and attaches to every interface of `cfg`, in `netns` (None: here).
    pub fn start(cfg: RouterConfig, netns: Option<Arc<Netns>>) -> Result<Self> {
        cfg.validate()?;
        Self::refuse_default_route(&cfg, &netns)?;
        let mut dp = Dataplane::load_pinned(netns.clone(), cfg.pin_dir.as_deref())?;
        let shaped = cfg.interfaces.iter().any(|i| i.shape.is_some());
        Self::program(&mut dp, &cfg, shaped)?;
        let mut nl = Self::netlink(&netns)?;
        for ifc in &cfg.interfaces {
            if let Some(shape) = ifc.shape {
                Self::shape(&mut nl, &cfg, &ifc.name, shape.rate.bytes_per_second())?;
            }
        }
        let mut ifaces = BTreeMap::new();
        for ifc in &cfg.interfaces {
            let pin = |dir: &str| {
                cfg.pin_dir
                    .as_ref()
                    .map(|d| d.join(format!("link-{}-{dir}", ifc.name)))
            };
            if ifc.classify {
                dp.attach_tc_pinned(
                    program::CLASSIFY_INGRESS,
                    &ifc.name,
                    TcAttachType::Ingress,
                    pin("classify-in").as_deref(),
                )?;
                dp.attach_tc_pinned(
                    program::CLASSIFY_EGRESS,
                    &ifc.name,
                    TcAttachType::Egress,
                    pin("classify-out").as_deref(),
                )?;
            }
            if ifc.watch {
                dp.attach_tc_pinned(
                    program::WATCH_INGRESS,
                    &ifc.name,
                    TcAttachType::Ingress,
                    pin("watch-in").as_deref(),
                )?;
            }
            ifaces.insert(nl.link_index(&ifc.name)?, ifc.name.clone());
        }
        let ifaces = Arc::new(ifaces);
        let events = if cfg.interfaces.iter().any(|i| i.watch) {
            Some(dp.watch_events()?)
        } else {
            None
        };
        let steering = if cfg.interfaces.iter().any(|i| i.wan) {
            let m = dp
                .ebpf_mut()
                .take_map(map::WAN_LINES)
                .ok_or(DataplaneError::MissingMap("WAN_LINES"))?;
            Some(aya::maps::HashMap::try_from(m).map_err(crate::wan::WanError::from)?)
        } else {
            None
        };
        let dp = Arc::new(Mutex::new(dp));
        let metrics = metrics::RouterMetrics::new(&cfg, dp.clone(), ifaces.clone(), netns.clone())?;
        let wan = match steering {
            Some(s) => {
                let w = WanLines::new(netns.clone(), s, &metrics.registry)?;
                w.apply(wan_specs(&cfg, &ifaces))?;
                Some(w)
            }
            None => None,
        };
        let agg = Arc::new(Mutex::new(watch::Aggregator::new(cfg.watch.burst_gap)));
        let watch_thread = events.map(|ev| {
            let stop = Arc::new(AtomicBool::new(false));
            let handle = std::thread::Builder::new()
                .name("ferry-watch".into())
                .spawn({
                    let (stop, agg, m, ifaces) =
                        (stop.clone(), agg.clone(), metrics.clone(), ifaces.clone());
                    move || watch_loop(ev, &stop, &agg, &m, &ifaces)
                })
                .expect("spawning a thread");
            WatchThread {
                stop,
                handle: Some(handle),
            }
        });
        tracing::info!(
            router = %cfg.name,
            interfaces = cfg.interfaces.len(),
            classes = cfg.classes.len(),
            pinned = cfg.pin_dir.is_some(),
            "router started"
        );
        Ok(Self {
            cfg,
            netns,
            dp,
            ifaces,
            watch: agg,
            metrics,
            wan,
            _watch: watch_thread,
        })
    }

    pub(crate) fn netlink(netns: &Option<Arc<Netns>>) -> Result<Netlink> {
        crate::netns::netlink_in(netns.as_deref())
    }

    /// Rules and classes into the maps.
    fn program(dp: &mut Dataplane, cfg: &RouterConfig, shaped: bool) -> Result<()> {
        let (rules, default) = cfg.compile()?;
        for c in &cfg.classes {
            let priority = if shaped {
                handle(HTB_MAJOR, htb_minor(c.id))
            } else {
                0
            };
            let (police_rate, police_burst) = c
                .police
                .map(|p| (p.rate.bytes_per_second(), p.burst.0))
                .unwrap_or((0, 0));
            dp.set_class(
                c.id,
                ClassEntry {
                    priority,
                    _pad: 0,
                    police_rate,
                    police_burst,
                },
            )?;
        }
        dp.set_rules(&rules, default)?;
        Ok(())
    }

    /// The HTB tree of `dev`: created, or changed in place (never torn down,
    /// so queued packets and the shaping survive).
    fn shape(nl: &mut Netlink, cfg: &RouterConfig, dev: &str, link: u64) -> Result<()> {
        let (_, default) = cfg.compile()?;
        // HTB cannot change a root in place; an existing one (ours, from a
        // previous run or apply) stays, and only its classes change. The
        // egress program gives every parsed frame a class, so the root's
        // default matters only for frames too short to parse.
        if nl.root_qdisc(dev)?.as_deref() != Some("htb") {
            nl.htb_root(dev, HTB_MAJOR, htb_minor(default))?;
        }
        let root = handle(HTB_MAJOR, HTB_ROOT_MINOR);
        nl.htb_class(
            dev,
            handle(HTB_MAJOR, 0),
            root,
            &HtbClass {
                rate: link,
                ceil: link,
                prio: 0,
            },
        )?;
        let wanted: Vec<u32> = cfg
            .classes
            .iter()
            .map(|c| handle(HTB_MAJOR, htb_minor(c.id)))
            .collect();
        for c in &cfg.classes {
            nl.htb_class(
                dev,
                root,
                handle(HTB_MAJOR, htb_minor(c.id)),
                &class_rates(cfg, link, c.id),
            )?;
        }
        // Classes removed from the configuration go too.
        for s in nl.class_stats(dev)? {
            if s.handle >> 16 == u32::from(HTB_MAJOR)
                && s.handle != root
                && !wanted.contains(&s.handle)
            {
                nl.delete_class(dev, root, s.handle)?;
            }
        }
        Ok(())
    }

    /// Applies a changed configuration live: rules, classes, rates and
    /// policers. Interfaces and the pin directory need a restart.
    pub fn apply(&mut self, cfg: RouterConfig) -> Result<()> {
        cfg.validate()?;
        let attached = |c: &RouterConfig| {
            c.interfaces
                .iter()
                .map(|i| (i.name.clone(), i.classify, i.watch, i.wan))
                .collect::<Vec<_>>()
        };
        if attached(&cfg) != attached(&self.cfg) {
            return Err(RouterError::Config(
                "interfaces changed: restart the router to attach to other interfaces".into(),
            ));
        }
        if cfg.pin_dir != self.cfg.pin_dir {
            return Err(RouterError::Config(
                "pin_dir changed: restart the router".into(),
            ));
        }
        let shaped = cfg.interfaces.iter().any(|i| i.shape.is_some());
        let mut nl = Self::netlink(&self.netns)?;
        // Shaping first, so that a class the maps start naming exists.
        for ifc in &cfg.interfaces {
            match ifc.shape {
                Some(shape) => {
                    Self::shape(&mut nl, &cfg, &ifc.name, shape.rate.bytes_per_second())?
                }
                None => {
                    if self
                        .cfg
                        .interfaces
                        .iter()
                        .any(|o| o.name == ifc.name && o.shape.is_some())
                    {
                        nl.delete_root_qdisc(&ifc.name)?;
                    }
                }
            }
        }
        Self::program(&mut self.dp.lock().expect("dataplane lock"), &cfg, shaped)?;
        if let Some(w) = &self.wan {
            w.apply(wan_specs(&cfg, &self.ifaces))?;
        }
        self.metrics.configure(&cfg);
        tracing::info!(router = %cfg.name, classes = cfg.classes.len(), "configuration applied");
        self.cfg = cfg;
        Ok(())
    }

    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// Per interface, direction and class: packets, bytes, drops.
    pub fn class_counters(&self) -> Result<Vec<crate::dataplane::classify::ClassCount>> {
        Ok(self.dp.lock().expect("dataplane lock").class_counters()?)
    }

    /// What each delay line has sent, holds and dropped.
    pub fn wan_stats(&self) -> Vec<LineStats> {
        self.wan.as_ref().map(WanLines::stats).unwrap_or_default()
    }

    pub fn ifname(&self, ifindex: u32) -> Option<&str> {
        self.ifaces.get(&ifindex).map(String::as_str)
    }

    /// Finished announcement bursts.
    pub fn bursts(&self) -> Vec<Burst> {
        self.watch
            .lock()
            .expect("watch state")
            .bursts
            .iter()
            .cloned()
            .collect()
    }

    /// MAC moves whose first data frame on the new port was seen.
    pub fn moves(&self) -> Vec<Move> {
        self.watch
            .lock()
            .expect("watch state")
            .moves
            .iter()
            .cloned()
            .collect()
    }

    /// Every MAC in the watch's table.
    pub fn mac_table(
        &self,
    ) -> Result<Vec<(ferry_common::watch::MacKey, ferry_common::watch::MacEntry)>> {
        Ok(self.dp.lock().expect("dataplane lock").mac_table()?)
    }

    /// Stops the router. Unpinned, everything it set up goes with it (links
    /// with the process, the HTB trees here). Pinned, it all stays for the
    /// next start; [`Router::remove`] takes it away.
    pub fn stop(mut self) -> Result<()> {
        // Delay lines stop steering, then send what they hold.
        drop(self.wan.take());
        let pinned = self.cfg.pin_dir.is_some();
        if !pinned {
            let mut nl = Self::netlink(&self.netns)?;
            for ifc in self.cfg.interfaces.iter().filter(|i| i.shape.is_some()) {
                nl.delete_root_qdisc(&ifc.name)?;
            }
        }
        tracing::info!(router = %self.cfg.name, kept = pinned, "router stopped");
        Ok(())
    }

    /// An interface the default route leaves through is taken only when the
    /// configuration says so (`allow_default_route`).
    fn refuse_default_route(cfg: &RouterConfig, netns: &Option<Arc<Netns>>) -> Result<()> {
        let mut nl = Self::netlink(netns)?;
        let defaults = nl.default_route_links()?;
        for (k, ifc) in cfg.interfaces.iter().enumerate() {
            if ifc.allow_default_route {
                continue;
            }
            // A missing interface is reported where it is attached.
            if let Ok(i) = nl.link_index(&ifc.name)
                && defaults.contains(&i)
            {
                return Err(RouterError::Config(format!(
                    "interfaces[{k}] ({}): this machine's default route leaves through it, \
                     and a wrong class or rate there cuts the machine off; check the plan with \
                     `ferry router --dry-run`, then set `allow_default_route: true` on it",
                    ifc.name
                )));
            }
        }
        Ok(())
    }

    /// What [`Router::start`] would create for `cfg`, touching nothing
    /// (`ferry router --dry-run`): programs and where they attach, pins,
    /// and each shaped interface's HTB tree with its handles as `tc class
    /// show` prints them (hexadecimal minors: class id 10 is `1:10a`).
    pub fn plan(cfg: &RouterConfig) -> Result<String> {
        use std::fmt::Write as _;
        cfg.validate()?;
        let (rules, default) = cfg.compile()?;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "router {}: {} classification rules, {} classes",
            cfg.name,
            rules.len(),
            cfg.classes.len()
        );
        let tc = |minor: u16| format!("{HTB_MAJOR}:{minor:x}");
        let pin = |ifc: &str, dir: &str| {
            cfg.pin_dir
                .as_ref()
                .map(|d| {
                    format!(
                        ", pinned at {}",
                        d.join(format!("link-{ifc}-{dir}")).display()
                    )
                })
                .unwrap_or_default()
        };
        for ifc in &cfg.interfaces {
            let _ = writeln!(t, "interface {}:", ifc.name);
            if ifc.classify {
                let _ = writeln!(
                    t,
                    "  tcx ingress: classify_ingress{}",
                    pin(&ifc.name, "classify-in")
                );
                let _ = writeln!(
                    t,
                    "  tcx egress:  classify_egress{}",
                    pin(&ifc.name, "classify-out")
                );
            }
            if ifc.watch {
                let _ = writeln!(
                    t,
                    "  tcx ingress: watch_ingress{} (announcements, MAC moves)",
                    pin(&ifc.name, "watch-in")
                );
            }
            if let Some(shape) = ifc.shape {
                let link = shape.rate.bytes_per_second();
                let _ = writeln!(
                    t,
                    "  qdisc htb {HTB_MAJOR}: root default {} (an existing htb root stays; only its classes change)",
                    tc(htb_minor(default))
                );
                let _ = writeln!(
                    t,
                    "  class htb {} parent {HTB_MAJOR}: rate {} ceil {}",
                    tc(HTB_ROOT_MINOR),
                    shape.rate,
                    shape.rate
                );
                for c in &cfg.classes {
                    let r = class_rates(cfg, link, c.id);
                    let _ = writeln!(
                        t,
                        "  class htb {} parent {} rate {} ceil {} prio {}   # class {} (id {})",
                        tc(htb_minor(c.id)),
                        tc(HTB_ROOT_MINOR),
                        plan_rate(r.rate),
                        plan_rate(r.ceil),
                        r.prio,
                        c.name,
                        c.id
                    );
                }
            }
            if ifc.wan {
                for c in cfg.classes.iter().filter(|c| c.wan.is_some()) {
                    let _ = writeln!(t, "  delay line for class {} leaving here", c.name);
                }
            }
        }
        match &cfg.pin_dir {
            Some(d) => {
                let _ = writeln!(
                    t,
                    "pins in {} (bpffs; mounted if missing): maps {}",
                    d.display(),
                    crate::dataplane::PINNED_MAPS.join(", ")
                );
            }
            None => {
                let _ = writeln!(t, "no pins: all of it goes when the router stops");
            }
        }
        Ok(t)
    }

    /// Removes what a pinned router left: its pins (which detaches the
    /// programs) and its HTB trees.
    pub fn remove(cfg: &RouterConfig, netns: Option<Arc<Netns>>) -> Result<()> {
        if let Some(dir) = &cfg.pin_dir
            && dir.exists()
        {
            std::fs::remove_dir_all(dir)?;
        }
        let mut nl = Self::netlink(&netns)?;
        for ifc in cfg.interfaces.iter().filter(|i| i.shape.is_some()) {
            match nl.delete_root_qdisc(&ifc.name) {
                Err(NetlinkError::NoSuchLink(_)) => {}
                r => r?,
            }
        }
        Ok(())
    }

    pub fn pin_dir(&self) -> Option<&PathBuf> {
        self.cfg.pin_dir.as_ref()
    }
}

fn watch_loop(
    mut ev: crate::dataplane::watch::WatchEvents,
    stop: &AtomicBool,
    agg: &Mutex<watch::Aggregator>,
    m: &metrics::RouterMetrics,
    ifaces: &BTreeMap<u32, String>,
) {
    let name = |i: u32| ifaces.get(&i).cloned().unwrap_or_else(|| format!("if{i}"));
    while !stop.load(Ordering::Relaxed) {
        let next = ev.next(Duration::from_millis(100));
        let findings = {
            let mut agg = agg.lock().expect("watch state");
            match next {
                Some(e) => agg.on_event(&e),
                None => agg.tick(monotonic_ns()),
            }
        };
        for f in findings {
            match f {
                watch::Finding::Announcement { ifindex, kind } => {
                    m.announcement(&name(ifindex), kind)
                }
                watch::Finding::BurstDone(b) => {
                    tracing::info!(
                        mac = %b.mac, vlan = b.vlan, interface = %name(b.ifindex), frames = b.frames,
                        rarp = b.rarp, garp = b.garp, una = b.una, spread_s = b.spread_seconds(),
                        "announcement burst"
                    );
                    m.burst(&name(b.ifindex), &b);
                }
                watch::Finding::Moved(mv) => {
                    tracing::info!(mac = %mv.mac, vlan = mv.vlan, from = %name(mv.from_ifindex), to = %name(mv.to_ifindex), "MAC moved");
                    m.moved(&name(mv.to_ifindex));
                }
                watch::Finding::Converged(mv) => {
                    tracing::info!(
                        mac = %mv.mac, vlan = mv.vlan, to = %name(mv.to_ifindex),
                        outage_s = mv.outage_seconds, announce_to_data_s = mv.announce_to_data_seconds,
                        "network re-converged"
                    );
                    m.converged(&mv);
                }
            }
        }
    }
}
