//! WAN emulation on the router: per class, one-way delay, jitter, loss and
//! a rate, as the latency appliance on the paper's long-distance vMotion
//! link did.
//!
//! This kernel has neither netem nor sch_fq, so the delay line is ferry's
//! own. The router's egress program redirects a delayed class's frames to
//! the line's tap; a thread reads them, decides loss and departure time
//! ([`model`]), holds them and sends each out of the original interface at
//! its time, marked so that the egress program lets it pass, shaped by HTB
//! like any other frame. Other classes never leave the kernel's fast path.
//! A heartbeat in the steering map makes frames pass undelayed, not vanish,
//! when the daemon is gone.

pub mod config;
mod line;
pub mod metrics;
pub mod model;
mod tap;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use ferry_common::wan::{LineEntry, LineKey};

pub use config::{Distribution, Loss, WanConfig};
pub use line::{DelayLine, LineSpec, LineStats};
pub use metrics::WanMetrics;
pub use model::DropReason;

use crate::{clock::monotonic_ns, netlink::Netlink, netns::Netns};

#[derive(Debug, thiserror::Error)]
pub enum WanError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error("delay line steering map")]
    Map(#[from] aya::maps::MapError),
}

type Steering = BpfHashMap<MapData, LineKey, LineEntry>;

/// How long a refreshed steering entry stays valid, and how often the
/// keeper refreshes it.
const ALIVE_FOR: Duration = Duration::from_secs(1);
const KEEP_EVERY: Duration = Duration::from_millis(200);

fn key(spec: &LineSpec) -> LineKey {
    LineKey {
        ifindex: spec.ifindex,
        class: spec.class_id,
        _pad: 0,
    }
}

/// Every delay line of a router, and the keeper that vouches for them.
pub struct WanLines {
    netns: Option<Arc<Netns>>,
    steering: Arc<Mutex<Steering>>,
    lines: Arc<Mutex<BTreeMap<LineKey, DelayLine>>>,
    metrics: WanMetrics,
    keeper_stop: Arc<AtomicBool>,
    keeper: Option<JoinHandle<()>>,
}

impl WanLines {
    /// `steering` is the egress program's WAN_LINES map.
    pub fn new(
        netns: Option<Arc<Netns>>,
        steering: Steering,
        registry: &prometheus::Registry,
    ) -> Result<Self, WanError> {
        let metrics = WanMetrics::new(registry).map_err(|e| WanError::Io {
            what: "registering delay line metrics".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let steering = Arc::new(Mutex::new(steering));
        let lines = Arc::new(Mutex::new(BTreeMap::new()));
        let keeper_stop = Arc::new(AtomicBool::new(false));
        let nl = crate::netns::netlink_in::<WanError>(netns.as_deref())?;
        let keeper = std::thread::Builder::new()
            .name("ferry-wan-keeper".into())
            .spawn({
                let (steering, lines, stop) =
                    (steering.clone(), lines.clone(), keeper_stop.clone());
                move || keep(nl, &steering, &lines, &stop)
            })
            .map_err(|source| WanError::Io {
                what: "spawning the delay line keeper".into(),
                source,
            })?;
        Ok(Self {
            netns,
            steering,
            lines,
            metrics,
            keeper_stop,
            keeper: Some(keeper),
        })
    }

    /// Makes the running lines what `wanted` says: new lines start, changed
    /// ones take their new settings live, dropped ones stop steering and
    /// send what they hold before they go.
    pub fn apply(&self, wanted: Vec<LineSpec>) -> Result<(), WanError> {
        let mut gone = Vec::new();
        {
            let mut lines = self.lines.lock().expect("delay lines");
            let keys: Vec<LineKey> = wanted.iter().map(key).collect();
            for k in lines.keys().copied().collect::<Vec<_>>() {
                if !keys.contains(&k) {
                    let _ = self.steering.lock().expect("steering").remove(&k);
                    gone.extend(lines.remove(&k));
                }
            }
            for spec in wanted {
                let k = key(&spec);
                if let Some(l) = lines.get_mut(&k) {
                    if l.spec.cfg != spec.cfg {
                        tracing::info!(interface = %spec.interface, class = %spec.class, "delay line reconfigured");
                        l.reconfigure(spec.cfg, &self.metrics);
                    }
                    continue;
                }
                let l = DelayLine::start(&self.netns, spec, &self.metrics)?;
                steer(&mut self.steering.lock().expect("steering"), k, &l)?;
                lines.insert(k, l);
            }
        }
        for l in gone {
            let (i, c) = (l.spec.interface.clone(), l.spec.class.clone());
            l.drain();
            self.metrics.forget(&i, &c);
            tracing::info!(interface = %i, class = %c, "delay line removed");
        }
        Ok(())
    }

    pub fn stats(&self) -> Vec<LineStats> {
        self.lines
            .lock()
            .expect("delay lines")
            .values()
            .map(DelayLine::stats)
            .collect()
    }
}

impl Drop for WanLines {
    fn drop(&mut self) {
        self.keeper_stop.store(true, Ordering::Relaxed);
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
        let lines = std::mem::take(&mut *self.lines.lock().expect("delay lines"));
        {
            let mut s = self.steering.lock().expect("steering");
            for k in lines.keys() {
                let _ = s.remove(k);
            }
        }
        for l in lines.into_values() {
            l.drain();
        }
    }
}

fn steer(s: &mut Steering, k: LineKey, l: &DelayLine) -> Result<(), WanError> {
    s.insert(
        k,
        LineEntry {
            tap_ifindex: l.tap_ifindex,
            _pad: 0,
            alive_until_ns: monotonic_ns() + ALIVE_FOR.as_nanos() as u64,
        },
        0,
    )?;
    Ok(())
}

/// Refreshes the steering entries of lines whose threads are going round,
/// and counts what their taps dropped before the lines read it.
fn keep(
    mut nl: Netlink,
    steering: &Mutex<Steering>,
    lines: &Mutex<BTreeMap<LineKey, DelayLine>>,
    stop: &AtomicBool,
) {
    let mut tap_drops: BTreeMap<String, u64> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        {
            let lines = lines.lock().expect("delay lines");
            let now = monotonic_ns();
            for (k, l) in lines.iter() {
                // A stuck thread loses its steering within ALIVE_FOR: its
                // class then flows undelayed instead of piling up.
                if l.alive(now, ALIVE_FOR.as_nanos() as u64 / 2) {
                    let _ = steer(&mut steering.lock().expect("steering"), *k, l);
                }
                if let Ok(info) = nl.link(&l.tap_name) {
                    let before = tap_drops.insert(l.tap_name.clone(), info.tx_dropped);
                    let new = info.tx_dropped.saturating_sub(before.unwrap_or(0));
                    if new > 0 {
                        l.intake_dropped(new);
                    }
                }
            }
            tap_drops.retain(|t, _| lines.values().any(|l| &l.tap_name == t));
        }
        std::thread::sleep(KEEP_EVERY);
    }
}
