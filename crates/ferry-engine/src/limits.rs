//! The limits a running migration reads as it goes, so that `ferry
//! migrate-set` can change its bandwidth and downtime limit while it runs.
//! The spec carries the limits it starts with; whoever drives the
//! migration (a host) holds one of these beside it and may change it from
//! another thread at any time.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use ferry_protocol::{LimitChange, Limits};

/// Not set yet: a change may arrive before the migration starts, and the
/// spec's values then fill only what it did not set.
const UNSET: u64 = u64::MAX;

#[derive(Debug)]
pub struct LiveLimits {
    /// Bytes per second across all streams; 0: no cap.
    bandwidth: AtomicU64,
    downtime_limit_us: AtomicU64,
    /// Counts changes, so a reader that applies them elsewhere (a device
    /// model's own parameters) sees when to.
    changes: AtomicU64,
}

impl Default for LiveLimits {
    fn default() -> Self {
        Self {
            bandwidth: AtomicU64::new(UNSET),
            downtime_limit_us: AtomicU64::new(UNSET),
            changes: AtomicU64::new(0),
        }
    }
}

impl LiveLimits {
    /// The limits a spec starts with.
    pub fn new(limits: &Limits) -> Self {
        let l = Self::default();
        l.fill(limits);
        l
    }

    /// Takes `limits`' values for whatever no change has set yet.
    pub fn fill(&self, limits: &Limits) {
        let _ = self.bandwidth.compare_exchange(
            UNSET,
            limits.bandwidth.unwrap_or(0),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let _ = self.downtime_limit_us.compare_exchange(
            UNSET,
            micros(limits.downtime_limit),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub fn apply(&self, change: &LimitChange) {
        if let Some(b) = change.bandwidth {
            self.bandwidth.store(b, Ordering::Relaxed);
        }
        if let Some(d) = change.downtime_limit_us {
            self.downtime_limit_us.store(d.max(1), Ordering::Relaxed);
        }
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// The cap across all streams in bytes per second (None: as fast as
    /// the path goes).
    pub fn bandwidth(&self) -> Option<u64> {
        match self.bandwidth.load(Ordering::Relaxed) {
            0 | UNSET => None,
            b => Some(b),
        }
    }

    /// The downtime limit (`otherwise` until one is known).
    pub fn downtime_limit(&self, otherwise: Duration) -> Duration {
        match self.downtime_limit_us.load(Ordering::Relaxed) {
            UNSET => otherwise,
            us => Duration::from_micros(us),
        }
    }

    /// How many changes have been applied.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(UNSET - 1).max(1)
}

/// A pacer for one stream's share of a cap that may change: it keeps the
/// average since the last change, so raising the cap does not let a stream
/// burst to make up for the time it was held back, and lowering it does
/// not stall a stream that was ahead.
pub(crate) struct Pacer {
    share: u64,
    since: std::time::Instant,
    base: u64,
}

impl Pacer {
    pub(crate) fn new() -> Self {
        Self {
            share: 0,
            since: std::time::Instant::now(),
            base: 0,
        }
    }

    /// How long to wait after `sent` bytes in all, under `cap` shared by
    /// `streams`.
    pub(crate) fn delay(&mut self, sent: u64, cap: Option<u64>, streams: usize) -> Duration {
        let share = cap.map_or(0, |c| (c / streams.max(1) as u64).max(1));
        if share != self.share {
            *self = Self {
                share,
                since: std::time::Instant::now(),
                base: sent,
            };
        }
        if share == 0 {
            return Duration::ZERO;
        }
        let due = Duration::from_secs_f64((sent - self.base) as f64 / share as f64);
        due.saturating_sub(self.since.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_before_the_start_wins_over_the_spec() {
        let l = LiveLimits::default();
        l.apply(&LimitChange {
            bandwidth: Some(0),
            downtime_limit_us: None,
        });
        let spec = Limits {
            bandwidth: Some(1_000_000),
            downtime_limit: Duration::from_millis(50),
            ..Limits::default()
        };
        l.fill(&spec);
        assert_eq!(l.bandwidth(), None, "the change lifted the cap");
        assert_eq!(
            l.downtime_limit(Duration::ZERO),
            Duration::from_millis(50),
            "the spec fills what the change left out"
        );
        assert_eq!(l.changes(), 1);
        l.apply(&LimitChange {
            bandwidth: Some(5),
            downtime_limit_us: Some(2_000),
        });
        assert_eq!(l.bandwidth(), Some(5));
        assert_eq!(l.downtime_limit(Duration::ZERO), Duration::from_millis(2));
        assert_eq!(l.changes(), 2);
    }

    #[test]
    fn the_pacer_starts_over_when_the_cap_changes() {
        let mut p = Pacer::new();
        assert_eq!(p.delay(1 << 30, None, 4), Duration::ZERO);
        // 4 MB at 1 MB/s per stream: about 4 s owed.
        let d = p.delay((1 << 30) + 4_000_000, Some(4_000_000), 4);
        assert!(d == Duration::ZERO, "the change itself owes nothing: {d:?}");
        let d = p.delay((1 << 30) + 8_000_000, Some(4_000_000), 4);
        assert!(
            d > Duration::from_secs(3) && d <= Duration::from_secs(4),
            "4 MB after the change at 1 MB/s a stream: expected 3-4 s, got {d:?}"
        );
        // Lifted: nothing owed, whatever was sent.
        assert_eq!(p.delay(u64::MAX / 2, None, 4), Duration::ZERO);
    }
}
