//! What the router makes of the watch's events: announcement bursts, MAC
//! moves, and how long the network took to re-converge.

use std::collections::{HashMap, VecDeque};

use ferry_common::watch::{WatchEvent, announce, event};
use serde::Serialize;

use crate::net::MacAddr;

/// One burst of announcements of one MAC on one VLAN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Burst {
    pub mac: MacAddr,
    pub vlan: u16,
    pub ifindex: u32,
    pub first_ns: u64,
    pub last_ns: u64,
    pub frames: u32,
    pub rarp: u32,
    pub garp: u32,
    pub una: u32,
}

impl Burst {
    /// From its first frame to its last.
    pub fn spread_seconds(&self) -> f64 {
        (self.last_ns - self.first_ns) as f64 / 1e9
    }
}

/// A MAC seen on a new port, and how the network converged.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Move {
    pub mac: MacAddr,
    pub vlan: u16,
    pub from_ifindex: u32,
    pub to_ifindex: u32,
    /// When the MAC was last seen on its old port, and first on its new one.
    pub last_on_old_ns: u64,
    pub first_on_new_ns: u64,
    /// Last frame on the old port to first data frame on the new: the outage
    /// the network saw (None until a data frame arrives).
    pub outage_seconds: Option<f64>,
    /// First announcement of the burst to the first data frame.
    pub announce_to_data_seconds: Option<f64>,
}

/// What just happened, for the metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum Finding {
    Announcement { ifindex: u32, kind: u8 },
    BurstDone(Burst),
    Moved(Move),
    Converged(Move),
}

/// Keeps bursts open while announcements arrive and closes them after a gap.
pub struct Aggregator {
    gap_ns: u64,
    open: HashMap<(MacAddr, u16), Burst>,
    /// Moves waiting for their first data frame.
    pending: HashMap<(MacAddr, u16), Move>,
    pub bursts: VecDeque<Burst>,
    pub moves: VecDeque<Move>,
}

/// How many finished bursts and moves are kept for inspection.
const KEEP: usize = 1024;

impl Aggregator {
    pub fn new(gap: std::time::Duration) -> Self {
        Self {
            gap_ns: gap.as_nanos() as u64,
            open: HashMap::new(),
            pending: HashMap::new(),
            bursts: VecDeque::new(),
            moves: VecDeque::new(),
        }
    }

    fn keep<T>(q: &mut VecDeque<T>, v: T) {
        if q.len() == KEEP {
            q.pop_front();
        }
        q.push_back(v);
    }

    /// Closes bursts quiet for longer than the gap as of `now_ns`.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Finding> {
        let gap = self.gap_ns;
        let done: Vec<_> = self
            .open
            .iter()
            .filter(|(_, b)| now_ns.saturating_sub(b.last_ns) > gap)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        for k in done {
            let b = self.open.remove(&k).expect("listed above");
            Self::keep(&mut self.bursts, b.clone());
            out.push(Finding::BurstDone(b));
        }
        out
    }

    pub fn on_event(&mut self, e: &WatchEvent) -> Vec<Finding> {
        let mut out = self.tick(e.ts_ns);
        let key = (MacAddr(e.mac), e.vlan);
        match e.kind {
            event::ANNOUNCE => {
                let b = self.open.entry(key).or_insert_with(|| Burst {
                    mac: key.0,
                    vlan: e.vlan,
                    ifindex: e.ifindex,
                    first_ns: e.ts_ns,
                    last_ns: e.ts_ns,
                    frames: 0,
                    rarp: 0,
                    garp: 0,
                    una: 0,
                });
                b.frames += 1;
                b.last_ns = e.ts_ns;
                b.ifindex = e.ifindex;
                match e.announce {
                    announce::RARP => b.rarp += 1,
                    announce::GARP => b.garp += 1,
                    announce::UNA => b.una += 1,
                    _ => {}
                }
                out.push(Finding::Announcement {
                    ifindex: e.ifindex,
                    kind: e.announce,
                });
            }
            event::MOVE => {
                let m = Move {
                    mac: key.0,
                    vlan: e.vlan,
                    from_ifindex: e.old_ifindex,
                    to_ifindex: e.ifindex,
                    last_on_old_ns: e.old_last_ns,
                    first_on_new_ns: e.ts_ns,
                    outage_seconds: None,
                    announce_to_data_seconds: None,
                };
                self.pending.insert(key, m.clone());
                out.push(Finding::Moved(m));
            }
            event::FIRST_DATA => {
                if let Some(mut m) = self.pending.remove(&key) {
                    m.outage_seconds = Some(e.ts_ns.saturating_sub(m.last_on_old_ns) as f64 / 1e9);
                    // The burst that announced the move: still open, or the
                    // latest finished one of this MAC.
                    let first = self.open.get(&key).map(|b| b.first_ns).or_else(|| {
                        self.bursts
                            .iter()
                            .rev()
                            .find(|b| (b.mac, b.vlan) == key)
                            .map(|b| b.first_ns)
                    });
                    m.announce_to_data_seconds =
                        first.map(|f| e.ts_ns.saturating_sub(f) as f64 / 1e9);
                    Self::keep(&mut self.moves, m.clone());
                    out.push(Finding::Converged(m));
                }
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: u8, ts_ms: u64, ifindex: u32) -> WatchEvent {
        WatchEvent {
            ts_ns: ts_ms * 1_000_000,
            kind,
            ifindex,
            mac: [2, 0, 0, 0, 0, 7],
            vlan: 0,
            ..Default::default()
        }
    }

    #[test]
    fn a_qemu_style_schedule_is_one_burst_and_convergence_is_measured() {
        let mut a = Aggregator::new(std::time::Duration::from_secs(2));
        // Data on port 1, then silence; the move is seen on port 2 with the first RARP.
        let mv = WatchEvent {
            old_ifindex: 1,
            old_last_ns: 500_000_000,
            ..ev(event::MOVE, 1000, 2)
        };
        a.on_event(&mv);
        for t in [0u64, 50, 200, 450, 800] {
            let mut e = ev(event::ANNOUNCE, 1000 + t, 2);
            e.announce = announce::RARP;
            a.on_event(&e);
        }
        let conv = a.on_event(&ev(event::FIRST_DATA, 1100, 2));
        let Some(Finding::Converged(m)) = conv.last() else {
            panic!("{conv:?}")
        };
        assert!((m.outage_seconds.unwrap() - 0.6).abs() < 1e-9);
        assert!((m.announce_to_data_seconds.unwrap() - 0.1).abs() < 1e-9);
        assert!(
            a.tick(2_500_000_000).is_empty(),
            "still within the gap of the last frame"
        );
        let done = a.tick(3_900_000_000);
        let [Finding::BurstDone(b)] = &done[..] else {
            panic!("{done:?}")
        };
        assert_eq!((b.frames, b.rarp, b.ifindex), (5, 5, 2));
        assert!((b.spread_seconds() - 0.8).abs() < 1e-9);
        // A data frame without a move is nothing.
        assert!(a.on_event(&ev(event::FIRST_DATA, 4000, 2)).is_empty());
    }
}
