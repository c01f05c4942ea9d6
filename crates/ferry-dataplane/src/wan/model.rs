//! The delay line's decisions, apart from any I/O: whether a frame is lost,
//! and when it leaves. Times are CLOCK_MONOTONIC nanoseconds.

use std::{cmp::Reverse, collections::BinaryHeap};

use super::config::{Distribution, Loss, WanConfig};

/// SplitMix64: small, fast, and good enough for loss and jitter draws.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]: ln is finite
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Why a frame did not make it through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The configured random loss.
    RandomLoss,
    /// The configured burst loss.
    BurstLoss,
    /// The line held `limit` frames already.
    QueueFull,
    /// The tap's queue overflowed before the line read the frame.
    Intake,
    /// The interface refused the frame when it was sent (its qdisc full).
    EgressFull,
    /// Sending failed otherwise (the interface went away, ...).
    SendError,
    /// The line was removed or stopped with the frame still held.
    Flushed,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::RandomLoss,
        DropReason::BurstLoss,
        DropReason::QueueFull,
        DropReason::Intake,
        DropReason::EgressFull,
        DropReason::SendError,
        DropReason::Flushed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::RandomLoss => "random_loss",
            DropReason::BurstLoss => "burst_loss",
            DropReason::QueueFull => "queue_full",
            DropReason::Intake => "intake",
            DropReason::EgressFull => "egress_full",
            DropReason::SendError => "send_error",
            DropReason::Flushed => "flushed",
        }
    }

    /// Losses the configuration asked for, as opposed to the line failing.
    pub fn configured(self) -> bool {
        matches!(self, DropReason::RandomLoss | DropReason::BurstLoss)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Drop(DropReason),
    /// Leave at this time.
    At(u64),
}

/// Loss, jitter, rate and ordering of one line.
#[derive(Clone, Debug)]
pub struct Model {
    cfg: WanConfig,
    rng: Rng,
    /// Gilbert model: in the lossy state.
    bad: bool,
    /// Latest departure handed out (frames keep their order unless reorder).
    last_at: u64,
    /// When the emulated link finishes serialising what it was given.
    free_at: u64,
}

impl Model {
    pub fn new(cfg: &WanConfig) -> Self {
        let seed = cfg.seed.unwrap_or_else(|| {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).expect("getrandom");
            u64::from_ne_bytes(b)
        });
        Self {
            cfg: cfg.clone(),
            rng: Rng::new(seed),
            bad: false,
            last_at: 0,
            free_at: 0,
        }
    }

    pub fn config(&self) -> &WanConfig {
        &self.cfg
    }

    /// New settings; frames already held keep their times, the order and
    /// link state carry over.
    pub fn reconfigure(&mut self, cfg: &WanConfig) {
        if cfg.seed.is_some() && cfg.seed != self.cfg.seed {
            self.rng = Rng::new(cfg.seed.unwrap_or_default());
        }
        self.cfg = cfg.clone();
    }

    fn lost(&mut self) -> Option<DropReason> {
        match self.cfg.loss? {
            Loss::Random(p) => (self.rng.unit() < p.0).then_some(DropReason::RandomLoss),
            Loss::Burst { enter, exit } => {
                let flip = if self.bad { exit.0 } else { enter.0 };
                if self.rng.unit() < flip {
                    self.bad = !self.bad;
                }
                self.bad.then_some(DropReason::BurstLoss)
            }
        }
    }

    /// This frame's delay in nanoseconds.
    fn delay_ns(&mut self) -> u64 {
        let d = self.cfg.delay.as_nanos() as f64;
        let j = self.cfg.jitter.as_nanos() as f64;
        if j == 0.0 {
            return d as u64;
        }
        let v = match self.cfg.distribution {
            Distribution::Uniform => d + (2.0 * self.rng.unit() - 1.0) * j,
            Distribution::Normal => (d + j * self.rng.normal()).clamp(0.0, d + 4.0 * j),
        };
        v.max(0.0) as u64
    }

    /// Decides the fate of a frame of `len` bytes that arrived at `now`,
    /// with `held` frames already in the line.
    pub fn admit(&mut self, now: u64, len: usize, held: usize) -> Verdict {
        if held >= self.cfg.limit as usize {
            return Verdict::Drop(DropReason::QueueFull);
        }
        if let Some(r) = self.lost() {
            return Verdict::Drop(r);
        }
        // A rate-limited link serialises the frame first, then it travels.
        let sent = match self.cfg.rate {
            Some(rate) => {
                let start = now.max(self.free_at);
                self.free_at = start + len as u64 * 1_000_000_000 / rate.bytes_per_second();
                self.free_at
            }
            None => now,
        };
        let mut at = sent + self.delay_ns();
        if !self.cfg.reorder {
            at = at.max(self.last_at);
        }
        self.last_at = self.last_at.max(at);
        Verdict::At(at)
    }
}

/// A frame waiting in the line.
#[derive(Debug)]
pub struct Held {
    pub at: u64,
    pub arrived: u64,
    seq: u64,
    pub frame: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Held frames by departure time; equal times leave in arrival order.
#[derive(Debug, Default)]
pub struct Queue {
    heap: BinaryHeap<Reverse<Held>>,
    seq: u64,
    bytes: usize,
}

impl Queue {
    pub fn push(&mut self, at: u64, arrived: u64, frame: Vec<u8>) {
        self.seq += 1;
        self.bytes += frame.len();
        self.heap.push(Reverse(Held {
            at,
            arrived,
            seq: self.seq,
            frame,
        }));
    }

    /// When the next frame is due.
    pub fn next_at(&self) -> Option<u64> {
        self.heap.peek().map(|h| h.0.at)
    }

    /// The next frame, if it is due at `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<Held> {
        if self.next_at()? > now {
            return None;
        }
        let h = self.heap.pop()?.0;
        self.bytes -= h.frame.len();
        Some(h)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Everything held, in departure order.
    pub fn drain(&mut self) -> Vec<Held> {
        let mut v: Vec<_> = std::mem::take(&mut self.heap)
            .into_iter()
            .map(|r| r.0)
            .collect();
        v.sort();
        self.bytes = 0;
        v
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Rate, Ratio};

    fn cfg(delay_ms: u64) -> WanConfig {
        WanConfig {
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::ZERO,
            distribution: Distribution::Uniform,
            reorder: false,
            loss: None,
            rate: None,
            limit: 1_000_000,
            seed: Some(42),
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn fixed_delay_is_exact() {
        let mut m = Model::new(&cfg(75));
        assert_eq!(m.admit(1_000, 1500, 0), Verdict::At(1_000 + 75 * MS));
    }

    #[test]
    fn uniform_jitter_stays_in_its_band_with_the_right_spread_and_keeps_order() {
        let mut c = cfg(50);
        c.jitter = Duration::from_millis(10);
        let mut m = Model::new(&c);
        let (mut last, mut sum, mut sq) = (0u64, 0f64, 0f64);
        let n = 100_000;
        for i in 0..n {
            // Frames 100 ms apart: ordering never binds, every draw shows.
            let now = i * 100 * MS;
            let Verdict::At(at) = m.admit(now, 100, 0) else {
                panic!()
            };
            assert!(at >= last);
            last = at;
            let d = (at - now) as f64 / MS as f64;
            assert!((40.0..=60.0).contains(&d), "{d}");
            sum += d;
            sq += d * d;
        }
        let mean = sum / n as f64;
        let sd = (sq / n as f64 - mean * mean).sqrt();
        assert!((mean - 50.0).abs() < 0.1, "{mean}");
        // Uniform on ±10: standard deviation 10/sqrt(3).
        assert!((sd - 10.0 / 3f64.sqrt()).abs() < 0.1, "{sd}");
    }

    #[test]
    fn normal_jitter_has_its_standard_deviation_and_never_goes_negative() {
        let mut c = cfg(5);
        c.jitter = Duration::from_millis(2);
        c.distribution = Distribution::Normal;
        c.reorder = true;
        let mut m = Model::new(&c);
        let n = 100_000;
        let d: Vec<f64> = (0..n)
            .map(|i| {
                let now = 1_000 * MS + i * MS;
                match m.admit(now, 100, 0) {
                    Verdict::At(at) => (at as f64 - now as f64) / MS as f64,
                    v => panic!("{v:?}"),
                }
            })
            .collect();
        let mean = d.iter().sum::<f64>() / n as f64;
        let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!(d.iter().all(|&x| (0.0..=13.0).contains(&x)));
        assert!(
            (mean - 5.0).abs() < 0.05 && (sd - 2.0).abs() < 0.05,
            "{mean} {sd}"
        );
    }

    #[test]
    fn without_reorder_a_frame_never_overtakes_with_it_some_do() {
        let mut c = cfg(20);
        c.jitter = Duration::from_millis(10);
        let count_overtakes = |c: &WanConfig| {
            let mut m = Model::new(c);
            let ats: Vec<u64> = (0..10_000)
                .map(|i| match m.admit(i * MS / 10, 100, 0) {
                    Verdict::At(at) => at,
                    v => panic!("{v:?}"),
                })
                .collect();
            ats.windows(2).filter(|w| w[1] < w[0]).count()
        };
        assert_eq!(count_overtakes(&c), 0);
        c.reorder = true;
        assert!(count_overtakes(&c) > 1_000);
    }

    #[test]
    fn random_loss_matches_its_probability() {
        let mut c = cfg(1);
        c.loss = Some(Loss::Random(Ratio(0.05)));
        let mut m = Model::new(&c);
        let n = 200_000u64;
        let lost = (0..n)
            .filter(|&i| matches!(m.admit(i, 100, 0), Verdict::Drop(DropReason::RandomLoss)))
            .count() as f64;
        let sd = (n as f64 * 0.05 * 0.95).sqrt();
        assert!((lost - n as f64 * 0.05).abs() < 5.0 * sd, "{lost}");
    }

    #[test]
    fn burst_loss_has_its_mean_and_burst_length() {
        let mut c = cfg(1);
        c.loss = Some(Loss::Burst {
            enter: Ratio(0.02),
            exit: Ratio(0.25),
        });
        let mut m = Model::new(&c);
        let n = 500_000u64;
        let lost: Vec<bool> = (0..n)
            .map(|i| matches!(m.admit(i, 100, 0), Verdict::Drop(DropReason::BurstLoss)))
            .collect();
        let total = lost.iter().filter(|&&l| l).count() as f64;
        let bursts = lost.windows(2).filter(|w| !w[0] && w[1]).count() as f64;
        let mean = total / n as f64;
        assert!((mean - 0.02 / 0.27).abs() < 0.005, "{mean}");
        assert!((total / bursts - 4.0).abs() < 0.2, "{}", total / bursts);
    }

    #[test]
    fn a_rate_serialises_frames_before_the_delay() {
        let mut c = cfg(10);
        c.rate = Some(Rate(1_000_000)); // 1 MB/s: 1500 bytes take 1.5 ms
        let mut m = Model::new(&c);
        let a = m.admit(0, 1500, 0);
        let b = m.admit(0, 1500, 1);
        assert_eq!(a, Verdict::At(1_500_000 + 10 * MS));
        assert_eq!(b, Verdict::At(3_000_000 + 10 * MS));
        // An idle link starts afresh.
        assert_eq!(
            m.admit(100 * MS, 1500, 0),
            Verdict::At(100 * MS + 1_500_000 + 10 * MS)
        );
    }

    #[test]
    fn a_full_line_drops() {
        let mut c = cfg(1);
        c.limit = 3;
        let mut m = Model::new(&c);
        assert_eq!(m.admit(0, 1, 3), Verdict::Drop(DropReason::QueueFull));
        assert!(matches!(m.admit(0, 1, 2), Verdict::At(_)));
    }

    #[test]
    fn the_queue_releases_by_time_then_arrival() {
        let mut q = Queue::default();
        q.push(30, 1, vec![3]);
        q.push(10, 2, vec![1; 2]);
        q.push(10, 3, vec![2; 3]);
        assert_eq!((q.len(), q.bytes(), q.next_at()), (3, 6, Some(10)));
        assert!(q.pop_due(9).is_none());
        assert_eq!(q.pop_due(10).unwrap().frame, vec![1; 2]);
        assert_eq!(q.pop_due(10).unwrap().frame, vec![2; 3]);
        assert!(q.pop_due(29).is_none());
        assert_eq!(q.drain().len(), 1);
        assert!(q.is_empty() && q.bytes() == 0);
    }
}
