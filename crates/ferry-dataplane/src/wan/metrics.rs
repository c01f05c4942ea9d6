//! The delay lines' Prometheus metrics: what is configured, what the lines
//! measure, what they hold and what they drop, by interface and class.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use super::{config::WanConfig, model::DropReason};

#[derive(Clone)]
pub struct WanMetrics {
    delay: GaugeVec,
    jitter: GaugeVec,
    loss: GaugeVec,
    rate: GaugeVec,
    pub(super) added_delay: HistogramVec,
    pub(super) held_frames: IntGaugeVec,
    pub(super) held_bytes: IntGaugeVec,
    pub(super) frames: IntCounterVec,
    pub(super) bytes: IntCounterVec,
    pub(super) dropped: IntCounterVec,
}

const L: &[&str] = &["interface", "class"];

impl WanMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let g = |n: &str, h: &str| GaugeVec::new(Opts::new(n, h), L);
        let m = Self {
            delay: g(
                "ferry_wan_configured_delay_seconds",
                "One-way delay configured on a delay line",
            )?,
            jitter: g(
                "ferry_wan_configured_jitter_seconds",
                "Jitter configured on a delay line (half-width for uniform, standard deviation for normal)",
            )?,
            loss: g(
                "ferry_wan_configured_loss_ratio",
                "Long-run fraction of frames the configured loss drops",
            )?,
            rate: g(
                "ferry_wan_configured_rate_bytes_per_second",
                "Rate of the emulated link (0: not limited)",
            )?,
            added_delay: HistogramVec::new(
                HistogramOpts::new(
                    "ferry_wan_added_delay_seconds",
                    "Measured delay a frame spent in the line, from reading it off the tap to sending it",
                )
                .buckets(vec![
                    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.0125, 0.025, 0.0375, 0.05,
                    0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                L,
            )?,
            held_frames: IntGaugeVec::new(
                Opts::new("ferry_wan_queued_frames", "Frames held in a delay line now"),
                L,
            )?,
            held_bytes: IntGaugeVec::new(
                Opts::new("ferry_wan_queued_bytes", "Bytes held in a delay line now"),
                L,
            )?,
            frames: IntCounterVec::new(
                Opts::new(
                    "ferry_wan_frames_total",
                    "Frames a delay line sent on after their delay (a TCP super-packet counts once)",
                ),
                L,
            )?,
            bytes: IntCounterVec::new(
                Opts::new(
                    "ferry_wan_bytes_total",
                    "Bytes a delay line sent on after their delay",
                ),
                L,
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "ferry_wan_dropped_frames_total",
                    "Frames a delay line dropped, by reason: configured loss (random_loss, burst_loss) or the line's limits (queue_full, intake, egress_full, send_error, flushed)",
                ),
                &["interface", "class", "reason"],
            )?,
        };
        registry.register(Box::new(m.delay.clone()))?;
        registry.register(Box::new(m.jitter.clone()))?;
        registry.register(Box::new(m.loss.clone()))?;
        registry.register(Box::new(m.rate.clone()))?;
        registry.register(Box::new(m.added_delay.clone()))?;
        registry.register(Box::new(m.held_frames.clone()))?;
        registry.register(Box::new(m.held_bytes.clone()))?;
        registry.register(Box::new(m.frames.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        Ok(m)
    }

    /// The configured figures of a line, and its series at zero.
    pub(super) fn configure(&self, interface: &str, class: &str, cfg: &WanConfig) {
        let l = [interface, class];
        self.delay
            .with_label_values(&l)
            .set(cfg.delay.as_secs_f64());
        self.jitter
            .with_label_values(&l)
            .set(cfg.jitter.as_secs_f64());
        self.loss
            .with_label_values(&l)
            .set(cfg.loss.map(|l| l.mean()).unwrap_or(0.0));
        self.rate
            .with_label_values(&l)
            .set(cfg.rate.map(|r| r.bytes_per_second()).unwrap_or(0) as f64);
        self.frames.with_label_values(&l);
        self.bytes.with_label_values(&l);
        self.added_delay.with_label_values(&l);
        for r in DropReason::ALL {
            self.dropped
                .with_label_values(&[interface, class, r.label()]);
        }
    }

    /// A removed line's series go, so no stale configuration is shown.
    pub(super) fn forget(&self, interface: &str, class: &str) {
        let l = [interface, class];
        for v in [&self.delay, &self.jitter, &self.loss, &self.rate] {
            let _ = v.remove_label_values(&l);
        }
        let _ = self.held_frames.remove_label_values(&l);
        let _ = self.held_bytes.remove_label_values(&l);
    }
}
