//! The coordinator's migration queue: at most `max_running` migrations at
//! once, `max_outgoing_per_host` leaving and `max_incoming_per_host`
//! arriving at any host (KubeVirt's parallelMigrationsPerCluster and
//! parallelOutboundMigrationsPerNode, with the incoming side too, since a
//! destination's first touch of memory is the costlier half).
//!
//! A migration waits in arrival order; whenever one ends, every waiting
//! migration that now fits starts, oldest first. One that fits does not wait
//! behind an older one that does not (a busy host's queue does not hold up
//! the rest of the site).

use std::{collections::VecDeque, fmt, sync::Mutex};

use serde::{Deserialize, Serialize};

use crate::{
    config::{Invalid, Rate},
    protocol::MigrationId,
};

/// `scheduler:` in the coordinator's YAML.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Migrations under way at once across this coordinator's hosts; the
    /// rest queue.
    #[serde(default = "default_running")]
    pub max_running: u32,
    /// Migrations leaving any one host at once.
    #[serde(default = "default_per_host")]
    pub max_outgoing_per_host: u32,
    /// Migrations arriving at any one host at once.
    #[serde(default = "default_per_host")]
    pub max_incoming_per_host: u32,
    /// The bandwidth cap each migration gets when its request sets none
    /// (none: as fast as the path goes).
    #[serde(default)]
    pub bandwidth: Option<Rate>,
}

fn default_running() -> u32 {
    5
}

fn default_per_host() -> u32 {
    2
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_running: default_running(),
            max_outgoing_per_host: default_per_host(),
            max_incoming_per_host: default_per_host(),
            bandwidth: None,
        }
    }
}

impl SchedulerConfig {
    pub fn check(&self) -> Result<(), Invalid> {
        for (field, v) in [
            ("max_running", self.max_running),
            ("max_outgoing_per_host", self.max_outgoing_per_host),
            ("max_incoming_per_host", self.max_incoming_per_host),
        ] {
            if v == 0 {
                return Err(Invalid::new(
                    field,
                    "0 would never start a migration: at least 1",
                ));
            }
        }
        if self.bandwidth == Some(Rate(0)) {
            return Err(Invalid::new(
                "bandwidth",
                "0 would never move a byte: leave it out for no cap",
            ));
        }
        Ok(())
    }
}

/// One migration, as the queue counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub id: MigrationId,
    pub source: String,
    /// As the migration names it: `HOST`, or `HOST@COORDINATOR`.
    pub destination: String,
}

/// Why a migration cannot start yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    Cluster { limit: u32 },
    Outgoing { host: String, limit: u32 },
    Incoming { host: String, limit: u32 },
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wait::Cluster { limit } => {
                write!(f, "{limit} migrations running (scheduler.max_running)")
            }
            Wait::Outgoing { host, limit } => write!(
                f,
                "{limit} migrations leaving {host} (scheduler.max_outgoing_per_host)"
            ),
            Wait::Incoming { host, limit } => write!(
                f,
                "{limit} migrations arriving at {host} (scheduler.max_incoming_per_host)"
            ),
        }
    }
}

/// Where a migration stands in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    Running,
    /// 1 is the next to be looked at.
    Waiting {
        position: usize,
        behind: Wait,
    },
    /// Not in the queue (withdrawn, or never entered).
    Gone,
}

/// The queue itself: pure, so its rule is tested without a coordinator.
#[derive(Debug, Default)]
pub struct Queue {
    running: Vec<Slot>,
    waiting: VecDeque<Slot>,
}

impl Queue {
    /// What keeps `s` from starting beside the running ones, if anything.
    fn blocker(&self, s: &Slot, cfg: &SchedulerConfig) -> Option<Wait> {
        let out = self.running.iter().filter(|r| r.source == s.source).count();
        let inc = self
            .running
            .iter()
            .filter(|r| r.destination == s.destination)
            .count();
        // A host's limit first: it still holds once the cluster has room.
        if out >= cfg.max_outgoing_per_host as usize {
            Some(Wait::Outgoing {
                host: s.source.clone(),
                limit: cfg.max_outgoing_per_host,
            })
        } else if inc >= cfg.max_incoming_per_host as usize {
            Some(Wait::Incoming {
                host: s.destination.clone(),
                limit: cfg.max_incoming_per_host,
            })
        } else if self.running.len() >= cfg.max_running as usize {
            Some(Wait::Cluster {
                limit: cfg.max_running,
            })
        } else {
            None
        }
    }

    /// Starts every waiting migration that fits, oldest first; returns how
    /// many started.
    fn admit(&mut self, cfg: &SchedulerConfig) -> usize {
        let mut started = 0;
        let mut i = 0;
        while i < self.waiting.len() {
            if self.blocker(&self.waiting[i], cfg).is_none() {
                let s = self.waiting.remove(i).expect("index checked");
                self.running.push(s);
                started += 1;
            } else {
                i += 1;
            }
        }
        started
    }

    pub fn enter(&mut self, s: Slot, cfg: &SchedulerConfig) {
        self.waiting.push_back(s);
        self.admit(cfg);
    }

    /// Takes `id` out, running or waiting, and starts what now fits.
    pub fn leave(&mut self, id: &MigrationId, cfg: &SchedulerConfig) {
        self.running.retain(|r| r.id != *id);
        self.waiting.retain(|r| r.id != *id);
        self.admit(cfg);
    }

    pub fn place(&self, id: &MigrationId, cfg: &SchedulerConfig) -> Place {
        if self.running.iter().any(|r| r.id == *id) {
            return Place::Running;
        }
        match self.waiting.iter().position(|r| r.id == *id) {
            Some(i) => Place::Waiting {
                position: i + 1,
                // Waiting means something blocks it (admit runs on every change).
                behind: self
                    .blocker(&self.waiting[i], cfg)
                    .unwrap_or(Wait::Cluster {
                        limit: cfg.max_running,
                    }),
            },
            None => Place::Gone,
        }
    }

    pub fn running(&self) -> &[Slot] {
        &self.running
    }

    pub fn waiting(&self) -> impl Iterator<Item = &Slot> {
        self.waiting.iter()
    }
}

/// The queue shared by a coordinator's migrations. Every change bumps a
/// generation that waiting migrations watch.
pub struct Scheduler {
    cfg: SchedulerConfig,
    queue: Mutex<Queue>,
    changed: tokio::sync::watch::Sender<u64>,
    /// (running, queued), set on every change.
    gauges: Option<(prometheus::IntGauge, prometheus::IntGauge)>,
}

/// A place in the queue: leaves it when dropped, however the migration ends.
pub struct Ticket<'a> {
    scheduler: &'a Scheduler,
    id: MigrationId,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.scheduler.leave(&self.id);
    }
}

impl Ticket<'_> {
    pub fn place(&self) -> Place {
        let q = self.scheduler.queue.lock().expect("queue");
        q.place(&self.id, &self.scheduler.cfg)
    }

    /// Returns once the migration may start (or has left the queue), or
    /// after `wait`, whichever is first, with where it stands.
    pub async fn wait(&self, wait: std::time::Duration) -> Place {
        let mut rx = self.scheduler.changed.subscribe();
        let now = self.place();
        if !matches!(now, Place::Waiting { .. }) {
            return now;
        }
        let _ = tokio::time::timeout(wait, rx.changed()).await;
        self.place()
    }
}

impl Scheduler {
    pub fn new(
        cfg: SchedulerConfig,
        gauges: Option<(prometheus::IntGauge, prometheus::IntGauge)>,
    ) -> Self {
        Self {
            cfg,
            queue: Mutex::new(Queue::default()),
            changed: tokio::sync::watch::channel(0).0,
            gauges,
        }
    }

    /// Tells the waiters and the gauges that the queue changed.
    fn changed(&self, q: &Queue) {
        if let Some((running, queued)) = &self.gauges {
            running.set(q.running().len() as i64);
            queued.set(q.waiting().count() as i64);
        }
        self.changed.send_modify(|g| *g += 1);
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Queues a migration; it starts at once if it fits.
    pub fn enter(&self, s: Slot) -> Ticket<'_> {
        let id = s.id;
        let mut q = self.queue.lock().expect("queue");
        q.enter(s, &self.cfg);
        self.changed(&q);
        Ticket {
            scheduler: self,
            id,
        }
    }

    fn leave(&self, id: &MigrationId) {
        let mut q = self.queue.lock().expect("queue");
        q.leave(id, &self.cfg);
        self.changed(&q);
    }

    /// Wakes the waiters (a cancel to look at).
    pub fn poke(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    /// (running, waiting) now.
    pub fn counts(&self) -> (usize, usize) {
        let q = self.queue.lock().expect("queue");
        (q.running().len(), q.waiting().count())
    }

    /// Every queued migration's place and why it waits.
    pub fn waiting(&self) -> Vec<(MigrationId, usize, Wait)> {
        let q = self.queue.lock().expect("queue");
        q.waiting()
            .filter_map(|s| match q.place(&s.id, &self.cfg) {
                Place::Waiting { position, behind } => Some((s.id, position, behind)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(running: u32, out: u32, inc: u32) -> SchedulerConfig {
        SchedulerConfig {
            max_running: running,
            max_outgoing_per_host: out,
            max_incoming_per_host: inc,
            bandwidth: None,
        }
    }

    fn slot(n: u8, src: &str, dst: &str) -> Slot {
        Slot {
            id: MigrationId([n; 16]),
            source: src.into(),
            destination: dst.into(),
        }
    }

    fn running(q: &Queue) -> Vec<u8> {
        q.running().iter().map(|s| s.id.0[0]).collect()
    }

    #[test]
    fn each_limit_holds_a_migration_back_and_says_which() {
        let c = cfg(3, 1, 1);
        let mut q = Queue::default();
        q.enter(slot(1, "a", "b"), &c);
        q.enter(slot(2, "a", "c"), &c); // a already sends one
        q.enter(slot(3, "d", "b"), &c); // b already receives one
        q.enter(slot(4, "e", "f"), &c);
        q.enter(slot(5, "g", "h"), &c);
        q.enter(slot(6, "i", "j"), &c); // three run: the cluster is full
        assert_eq!(running(&q), vec![1, 4, 5]);
        let place = |q: &Queue, n: u8| q.place(&MigrationId([n; 16]), &c);
        assert_eq!(
            place(&q, 6),
            Place::Waiting {
                position: 3,
                behind: Wait::Cluster { limit: 3 }
            }
        );
        q.leave(&MigrationId([4; 16]), &c);
        // 2 still waits on a's one outgoing, 3 on b's one incoming: 6 goes
        // ahead of both.
        assert_eq!(running(&q), vec![1, 5, 6]);
        assert_eq!(
            place(&q, 2),
            Place::Waiting {
                position: 1,
                behind: Wait::Outgoing {
                    host: "a".into(),
                    limit: 1
                }
            }
        );
        assert_eq!(
            place(&q, 3),
            Place::Waiting {
                position: 2,
                behind: Wait::Incoming {
                    host: "b".into(),
                    limit: 1
                }
            }
        );
        // 1 ends: a can send and b receive again; 2 is older, so it starts,
        // and the cluster (1 free place) then holds 3.
        q.leave(&MigrationId([1; 16]), &c);
        assert_eq!(running(&q), vec![5, 6, 2]);
        assert_eq!(
            place(&q, 3),
            Place::Waiting {
                position: 1,
                behind: Wait::Cluster { limit: 3 }
            }
        );
        q.leave(&MigrationId([5; 16]), &c);
        assert_eq!(running(&q), vec![6, 2, 3]);
        assert_eq!(place(&q, 5), Place::Gone);
    }

    #[test]
    fn a_withdrawn_migration_frees_nothing_but_its_place_in_line() {
        let c = cfg(1, 1, 1);
        let mut q = Queue::default();
        q.enter(slot(1, "a", "b"), &c);
        q.enter(slot(2, "c", "d"), &c);
        q.enter(slot(3, "e", "f"), &c);
        q.leave(&MigrationId([2; 16]), &c);
        assert_eq!(running(&q), vec![1]);
        assert_eq!(
            q.place(&MigrationId([3; 16]), &c),
            Place::Waiting {
                position: 1,
                behind: Wait::Cluster { limit: 1 }
            }
        );
    }

    #[test]
    fn zero_limits_and_a_zero_bandwidth_are_refused_by_name() {
        for (c, field) in [
            (cfg(0, 1, 1), "max_running"),
            (cfg(1, 0, 1), "max_outgoing_per_host"),
            (cfg(1, 1, 0), "max_incoming_per_host"),
        ] {
            let e = c.check().unwrap_err();
            assert_eq!(e.field, field, "{}", e.message);
        }
        let mut c = cfg(1, 1, 1);
        c.bandwidth = Some(Rate(0));
        assert_eq!(c.check().unwrap_err().field, "bandwidth");
        assert!(SchedulerConfig::default().check().is_ok());
    }
}
