//! Migration metrics of hosts and coordinators: how many by role, result
//! and encryption mode; how long (histograms with buckets around the
//! paper's figures); what moved; and, while one runs, its rates, throttle
//! and what remains.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::{
    engine::stats::{DestinationStats, MigrationResult, MigrationStats, Progress},
    protocol::EncryptionMode,
};

const MODES: [EncryptionMode; 3] = [
    EncryptionMode::Disabled,
    EncryptionMode::Opportunistic,
    EncryptionMode::Required,
];

/// Who counts: a host as source or destination, or a coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Source,
    Destination,
    Coordinator,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Destination => "destination",
            Role::Coordinator => "coordinator",
        }
    }
}

fn result_label(ok: bool) -> &'static str {
    if ok { "completed" } else { "failed" }
}

#[derive(Clone)]
pub struct MigrationMetrics {
    migrations: IntCounterVec,
    started: IntCounterVec,
    running: IntGaugeVec,
    duration: Histogram,
    setup: Histogram,
    downtime: Histogram,
    passes: Histogram,
    bytes: IntCounterVec,
    pages: IntCounterVec,
    zero_pages: IntCounterVec,
    crypto_cpu: prometheus::CounterVec,
    dirty_rate: Gauge,
    transfer_rate: Gauge,
    throttle: Gauge,
    remaining: IntGauge,
    downtime_limit: Gauge,
    over_limit: IntCounter,
    refusals: IntCounter,
}

// The paper's migrations take seconds to minutes (1 GbE, 150 ms).
const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
const SETUP_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
// Switch-over: tens of ms idle, ~0.1-0.5 s under heavy writes.
const DOWNTIME_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
];
const PASS_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0];

impl MigrationMetrics {
    /// The families for `roles` (their series exist from the start, at 0).
    pub fn new(roles: &[Role]) -> prometheus::Result<Self> {
        let h = |name: &str, help: &str, b: &[f64]| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(b.to_vec()))
        };
        let by = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label])
        };
        let m = Self {
            migrations: IntCounterVec::new(
                Opts::new(
                    "ferry_migrations_total",
                    "Migrations ended, by role (source, destination, coordinator), result and encryption mode",
                ),
                &["role", "result", "mode"],
            )?,
            // A dashboard marks each start from it (the running gauge may
            // rise and fall between two scrapes).
            started: by(
                "ferry_migrations_started_total",
                "Migrations begun, by role",
                "role",
            )?,
            running: IntGaugeVec::new(
                Opts::new("ferry_migrations_running", "Migrations under way, by role"),
                &["role"],
            )?,
            duration: h(
                "ferry_migration_duration_seconds",
                "From the spec to the destination's resume, as the source saw it",
                DURATION_BUCKETS,
            )?,
            setup: h(
                "ferry_migration_setup_seconds",
                "Connecting and authenticating the migration streams",
                SETUP_BUCKETS,
            )?,
            downtime: h(
                "ferry_migration_downtime_seconds",
                "From stunning the guest on the source to its resume on the destination",
                DOWNTIME_BUCKETS,
            )?,
            passes: h(
                "ferry_migration_passes",
                "Pre-copy passes per migration, the stunned one included",
                PASS_BUCKETS,
            )?,
            bytes: by(
                "ferry_migration_transferred_bytes_total",
                "Bytes of migration streams sent (source) or received (destination), records and headers included",
                "role",
            )?,
            pages: by(
                "ferry_migration_pages_total",
                "Guest pages moved, by role",
                "role",
            )?,
            zero_pages: by(
                "ferry_migration_zero_pages_total",
                "Guest pages moved that were all zeros (sent as a marker), by role",
                "role",
            )?,
            crypto_cpu: prometheus::CounterVec::new(
                Opts::new(
                    "ferry_migration_crypto_cpu_seconds_total",
                    "CPU seconds spent sealing (source) and opening (destination) migration records",
                ),
                &["side"],
            )?,
            dirty_rate: Gauge::new(
                "ferry_migration_dirty_rate_bytes_per_second",
                "While a migration runs: the rate the guest dirties memory",
            )?,
            transfer_rate: Gauge::new(
                "ferry_migration_transfer_rate_bytes_per_second",
                "While a migration runs: the rate its streams move memory",
            )?,
            throttle: Gauge::new(
                "ferry_migration_throttle_ratio",
                "While a migration runs: the share of vCPU time SDPS takes from the guest (0 to 1)",
            )?,
            remaining: IntGauge::new(
                "ferry_migration_remaining_bytes",
                "While a migration runs: guest memory still to send",
            )?,
            // Kept after the migration ends, so a dashboard can draw the
            // limit next to the downtimes it bounds.
            downtime_limit: Gauge::new(
                "ferry_migration_downtime_limit_seconds",
                "The downtime limit of the migration this host sends now, or sent last (0: none yet)",
            )?,
            over_limit: IntCounter::new(
                "ferry_migration_downtime_over_limit_total",
                "Completed migrations whose guest was stunned longer than their downtime limit",
            )?,
            refusals: IntCounter::new(
                "ferry_coordinator_refusals_total",
                "Migration requests the coordinator refused before any memory moved",
            )?,
        };
        m.zero_series(roles);
        Ok(m)
    }

    /// Every series of `roles` at 0, so a dashboard shows them before the
    /// first migration.
    fn zero_series(&self, roles: &[Role]) {
        let m = self;
        for r in roles {
            m.running.with_label_values(&[r.label()]);
            m.started.with_label_values(&[r.label()]);
            for ok in [true, false] {
                for mode in MODES {
                    m.migrations.with_label_values(&[
                        r.label(),
                        result_label(ok),
                        &mode.to_string(),
                    ]);
                }
            }
            if *r != Role::Coordinator {
                m.bytes.with_label_values(&[r.label()]);
                m.pages.with_label_values(&[r.label()]);
                m.zero_pages.with_label_values(&[r.label()]);
                m.crypto_cpu.with_label_values(&[r.label()]);
            }
        }
    }

    /// A host's families.
    pub fn register_host(&self, reg: &Registry) -> prometheus::Result<()> {
        reg.register(Box::new(self.migrations.clone()))?;
        reg.register(Box::new(self.started.clone()))?;
        reg.register(Box::new(self.running.clone()))?;
        reg.register(Box::new(self.duration.clone()))?;
        reg.register(Box::new(self.setup.clone()))?;
        reg.register(Box::new(self.downtime.clone()))?;
        reg.register(Box::new(self.passes.clone()))?;
        reg.register(Box::new(self.bytes.clone()))?;
        reg.register(Box::new(self.pages.clone()))?;
        reg.register(Box::new(self.zero_pages.clone()))?;
        reg.register(Box::new(self.crypto_cpu.clone()))?;
        reg.register(Box::new(self.dirty_rate.clone()))?;
        reg.register(Box::new(self.transfer_rate.clone()))?;
        reg.register(Box::new(self.throttle.clone()))?;
        reg.register(Box::new(self.remaining.clone()))?;
        reg.register(Box::new(self.downtime_limit.clone()))?;
        reg.register(Box::new(self.over_limit.clone()))
    }

    /// A coordinator's families.
    pub fn register_coordinator(&self, reg: &Registry) -> prometheus::Result<()> {
        reg.register(Box::new(self.migrations.clone()))?;
        reg.register(Box::new(self.started.clone()))?;
        reg.register(Box::new(self.running.clone()))?;
        reg.register(Box::new(self.refusals.clone()))
    }

    pub fn started(&self, role: Role) {
        self.started.with_label_values(&[role.label()]).inc();
        self.running.with_label_values(&[role.label()]).inc();
    }

    /// A migration of `mode` ended (`ok`), seen by `role`; the running
    /// count drops.
    pub fn ended(&self, role: Role, mode: EncryptionMode, ok: bool) {
        self.running.with_label_values(&[role.label()]).dec();
        self.migrations
            .with_label_values(&[role.label(), result_label(ok), &mode.to_string()])
            .inc();
    }

    /// A migration this host sends begins, aiming its switch-over under
    /// `limit`.
    pub fn sending(&self, limit: std::time::Duration) {
        self.downtime_limit.set(limit.as_secs_f64());
    }

    pub fn refused(&self) {
        self.refusals.inc();
    }

    /// The source's live figures.
    pub fn progress(&self, p: &Progress) {
        self.dirty_rate.set(p.dirty_rate);
        self.transfer_rate.set(p.transfer_rate);
        self.throttle.set(f64::from(p.throttle_percent) / 100.0);
        self.remaining.set(p.remaining_bytes as i64);
    }

    /// The source's record of a finished migration (failed ones too: what
    /// moved, moved).
    pub fn source_finished(&self, s: &MigrationStats) {
        let ok = s.result == MigrationResult::Completed;
        self.ended(Role::Source, s.mode, ok);
        if ok {
            self.duration.observe(s.total_seconds);
            self.downtime.observe(s.downtime_seconds);
            self.passes.observe(f64::from(s.passes));
            if s.downtime_over_limit {
                self.over_limit.inc();
            }
        }
        self.setup.observe(s.setup_seconds);
        // The limit as it stood at the end (an operator may change it).
        if s.downtime_limit_seconds > 0.0 {
            self.downtime_limit.set(s.downtime_limit_seconds);
        }
        let r = [Role::Source.label()];
        self.bytes.with_label_values(&r).inc_by(s.transferred_bytes);
        self.pages
            .with_label_values(&r)
            .inc_by(s.normal_pages + s.zero_pages);
        self.zero_pages.with_label_values(&r).inc_by(s.zero_pages);
        self.crypto_cpu
            .with_label_values(&r)
            .inc_by(s.seal_cpu_seconds);
        // Nothing runs now: the live figures go back to rest.
        self.dirty_rate.set(0.0);
        self.transfer_rate.set(0.0);
        self.throttle.set(0.0);
        self.remaining.set(0);
    }

    /// The destination's record of a guest that arrived.
    pub fn destination_finished(&self, mode: EncryptionMode, s: &DestinationStats) {
        self.ended(Role::Destination, mode, true);
        let r = [Role::Destination.label()];
        self.bytes.with_label_values(&r).inc_by(s.received_bytes);
        self.pages.with_label_values(&r).inc_by(s.pages);
        self.zero_pages.with_label_values(&r).inc_by(s.zero_pages);
        self.crypto_cpu
            .with_label_values(&r)
            .inc_by(s.open_cpu_seconds);
    }
}
