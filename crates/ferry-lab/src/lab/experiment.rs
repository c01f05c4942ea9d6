//! The paper's experiments, described in YAML (config/lab/experiment-*.yaml)
//! and run on this machine: each scenario boots a synthetic guest, lets its
//! workload warm up, and migrates it over loopback with each transport; the
//! results come out as a table, JSON and an SVG figure.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::lab::error::{Context, LabError, bail};
use serde::{Deserialize, Serialize};

use crate::{
    config::{ByteSize, Invalid, Validate, deserialize_duration, serialize_duration},
    engine::{
        DestinationEvent, IncomingRegistry, MigrationListener, MigrationResult, SourceOptions,
        migrate_out,
    },
    guest::{Guest, PAGE_SIZE, SyntheticConfig, SyntheticGuest, WorkloadSpec},
    protocol::{
        Backend, EncryptionMode, Limits, MigrationId, MigrationKey, MigrationSpec, Transport,
        spec::Endpoint,
    },
    report::svg::{COLORS, Chart, LINE_COLORS, Series},
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// The experiment's name: its output files' name.
    pub name: String,
    /// The figure's title.
    pub title: String,
    /// The guest each scenario boots, unless the scenario says otherwise.
    pub guest: GuestDefaults,
    /// Parallel streams per migration, 1..=64.
    #[serde(default = "two")]
    pub streams: u16,
    /// The AES-256-GCM implementation.
    #[serde(default)]
    pub backend: Backend,
    /// Each migration's limits.
    #[serde(default)]
    pub limits: Limits,
    /// Each scenario is migrated once per transport (and per repeat).
    #[serde(default = "both")]
    pub transports: Vec<Transport>,
    /// Runs of each scenario and transport, 1..=10; tables give min,
    /// median and max.
    #[serde(default = "one")]
    pub repeat: u32,
    /// How long each guest runs before it is migrated.
    #[serde(
        default = "second",
        deserialize_with = "deserialize_duration",
        serialize_with = "serialize_duration"
    )]
    #[schemars(with = "ferry_core::config::DurationText")]
    pub warmup: Duration,
    /// The bars of the figure, in order.
    pub scenarios: Vec<Scenario>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestDefaults {
    /// Guest memory: a multiple of 4 KiB up to 16 GiB.
    pub memory: ByteSize,
    /// Virtual CPUs, 1..=64.
    pub vcpus: usize,
    /// Fill memory first (a loaded database; a fully touched idle guest).
    #[serde(default = "yes")]
    pub prefill: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The scenario's name on the figure and in the table.
    pub label: String,
    /// What the guest's vCPUs do.
    pub workload: WorkloadSpec,
    /// This scenario's guest memory, instead of `guest.memory`.
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// This scenario's vCPUs, instead of `guest.vcpus`.
    #[serde(default)]
    pub vcpus: Option<usize>,
}

fn two() -> u16 {
    2
}
fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn second() -> Duration {
    Duration::from_secs(1)
}
fn both() -> Vec<Transport> {
    vec![Transport::Plaintext, Transport::Aes256Gcm]
}

impl Validate for ExperimentConfig {
    fn validate(&self) -> Result<(), Invalid> {
        crate::config::check_name("name", &self.name)?;
        if self.scenarios.is_empty() {
            return Err(Invalid::new("scenarios", "at least one scenario"));
        }
        if self.transports.is_empty() {
            return Err(Invalid::new("transports", "at least one transport"));
        }
        if !(1..=10).contains(&self.repeat) {
            return Err(Invalid::new("repeat", "1..=10"));
        }
        if !(1..=64).contains(&self.streams) {
            return Err(Invalid::new("streams", "1..=64"));
        }
        for (i, s) in self.scenarios.iter().enumerate() {
            let m = s.memory.unwrap_or(self.guest.memory).0;
            if m == 0 || !m.is_multiple_of(PAGE_SIZE as u64) || m > 16 << 30 {
                return Err(Invalid::new(
                    format!("scenarios[{i}].memory"),
                    "a multiple of 4KiB up to 16GiB",
                ));
            }
            if !(1..=64).contains(&s.vcpus.unwrap_or(self.guest.vcpus)) {
                return Err(Invalid::new(format!("scenarios[{i}].vcpus"), "1..=64"));
            }
        }
        self.limits.check().map_err(|i| i.within("limits"))
    }
}

/// One migration of one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub scenario: String,
    pub transport: Transport,
    pub run: u32,
    pub memory_bytes: u64,
    pub total_seconds: f64,
    pub downtime_seconds: f64,
    pub transferred_bytes: u64,
    pub passes: u32,
    pub normal_pages: u64,
    pub zero_pages: u64,
    pub throttle_max_percent: u8,
    pub seal_cpu_seconds: f64,
    pub open_cpu_seconds: f64,
    /// The guest's operations per second before, during and after the move.
    pub ops_before: f64,
    pub ops_during: f64,
    pub ops_after: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub name: String,
    pub title: String,
    pub backend: String,
    pub streams: u16,
    pub rows: Vec<Row>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { s / n as f64 }
}

/// Runs every scenario with every transport; `progress` hears about each run.
pub fn run(
    cfg: &ExperimentConfig,
    mut progress: impl FnMut(&str),
) -> crate::lab::error::Result<Results> {
    let dest = Destination::new(cfg.backend)?;
    let mut rows = Vec::new();
    let total = cfg.scenarios.len() * cfg.transports.len() * cfg.repeat as usize;
    let mut n = 0;
    for sc in &cfg.scenarios {
        for &transport in &cfg.transports {
            for r in 0..cfg.repeat {
                n += 1;
                progress(&format!(
                    "[{n}/{total}] {} / {transport} / run {}",
                    sc.label,
                    r + 1
                ));
                rows.push(dest.one(cfg, sc, transport, r, 1 + n as u64)?);
            }
        }
    }
    Ok(Results {
        name: cfg.name.clone(),
        title: cfg.title.clone(),
        backend: cfg.backend.name().into(),
        streams: cfg.streams,
        rows,
    })
}

/// The experiment's destination, on loopback: every run migrates into it.
struct Destination {
    registry: Arc<IncomingRegistry>,
    listener: MigrationListener,
    events: mpsc::Receiver<DestinationEvent>,
}

impl Destination {
    fn new(backend: Backend) -> crate::lab::error::Result<Self> {
        let (tx, events) = mpsc::channel();
        let tx = Mutex::new(tx);
        let registry = IncomingRegistry::new(backend, None, Duration::from_secs(30), move |e| {
            let _ = tx.lock().expect("events").send(e);
        });
        let listener = MigrationListener::bind("127.0.0.1:0".parse()?, registry.clone())?;
        Ok(Destination {
            registry,
            listener,
            events,
        })
    }

    /// Run `r` of scenario `sc` with `transport`: a guest booted (with
    /// `seed`), warmed up and moved; its figures and the guest's throughput
    /// before, during and after.
    fn one(
        &self,
        cfg: &ExperimentConfig,
        sc: &Scenario,
        transport: Transport,
        r: u32,
        seed: u64,
    ) -> crate::lab::error::Result<Row> {
        let memory = sc.memory.unwrap_or(cfg.guest.memory).0;
        let gc = SyntheticConfig {
            memory,
            vcpus: sc.vcpus.unwrap_or(cfg.guest.vcpus),
            workload: sc.workload.clone(),
            prefill: cfg.guest.prefill,
            seed,
        };
        let src = SyntheticGuest::boot("guest", &gc)?;
        std::thread::sleep(cfg.warmup);
        let spec = MigrationSpec {
            id: MigrationId::generate(),
            guest: "guest".into(),
            memory,
            source: Endpoint {
                host: "source".into(),
                migration: "127.0.0.1:0".parse()?,
            },
            destination: Endpoint {
                host: "destination".into(),
                migration: self.listener.local_addr(),
            },
            mode: EncryptionMode::Opportunistic,
            setting: EncryptionMode::Opportunistic,
            transport,
            key: transport.encrypted().then(MigrationKey::generate),
            nonce: 1,
            streams: cfg.streams,
            limits: cfg.limits.clone(),
            machine: None,
        };
        let dst = SyntheticGuest::incoming("guest", memory)?;
        self.registry.prepare(&spec, dst.clone())?;
        let opts = SourceOptions {
            backend: cfg.backend,
            ..Default::default()
        };
        let start = unix_ms();
        let src_dyn: Arc<dyn Guest> = src.clone();
        let stats = migrate_out(src_dyn, &spec, &opts, &mut |_| {}).map_err(|f| {
            LabError::unexpected(format!(
                "{}: {}",
                sc.label,
                ferry_core::error::report(&f.error)
            ))
        })?;
        let end = unix_ms();
        let open_cpu = match self
            .events
            .recv_timeout(Duration::from_secs(30))
            .context("the destination reported nothing")?
        {
            DestinationEvent::Resumed { stats, .. } => stats.open_cpu_seconds,
            DestinationEvent::Aborted { reason, .. } => {
                bail!("{}: destination aborted: {reason}", sc.label)
            }
        };
        std::thread::sleep(Duration::from_millis(500));
        let before = src.timeline();
        let after = dst.timeline();
        dst.release();
        let pick = |samples: &[crate::guest::Sample], f: &dyn Fn(u64) -> bool| {
            mean(
                samples
                    .iter()
                    .filter(|s| f(s.unix_ms))
                    .map(|s| s.ops_per_second),
            )
        };
        if stats.result != MigrationResult::Completed {
            bail!("{}: {:?}", sc.label, stats.error);
        }
        Ok(Row {
            scenario: sc.label.clone(),
            transport,
            run: r,
            memory_bytes: memory,
            total_seconds: stats.total_seconds,
            downtime_seconds: stats.downtime_seconds,
            transferred_bytes: stats.transferred_bytes,
            passes: stats.passes,
            normal_pages: stats.normal_pages,
            zero_pages: stats.zero_pages,
            throttle_max_percent: stats.throttle_max_percent,
            seal_cpu_seconds: stats.seal_cpu_seconds,
            open_cpu_seconds: open_cpu,
            ops_before: pick(&before, &|t| t < start),
            ops_during: mean(
                before
                    .iter()
                    .chain(after.iter())
                    .filter(|s| s.unix_ms >= start && s.unix_ms <= end)
                    .map(|s| s.ops_per_second),
            ),
            ops_after: pick(&after, &|t| t > end),
        })
    }
}

impl Results {
    fn mean_of(&self, scenario: &str, t: Transport, f: impl Fn(&Row) -> f64) -> f64 {
        mean(
            self.rows
                .iter()
                .filter(|r| r.scenario == scenario && r.transport == t)
                .map(f),
        )
    }

    fn scenarios(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for r in &self.rows {
            if !v.contains(&r.scenario) {
                v.push(r.scenario.clone());
            }
        }
        v
    }

    fn transports(&self) -> Vec<Transport> {
        let mut v = Vec::new();
        for r in &self.rows {
            if !v.contains(&r.transport) {
                v.push(r.transport);
            }
        }
        v
    }

    /// A text table: per scenario and transport, means over the repeats.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{}\n{:<24} {:<12} {:>8} {:>10} {:>12} {:>7} {:>9} {:>10} {:>10} {:>12}\n",
            self.title,
            "scenario",
            "transport",
            "memory",
            "total s",
            "downtime ms",
            "passes",
            "throttle",
            "GiB sent",
            "seal cpu s",
            "ops/s during"
        );
        for sc in self.scenarios() {
            for t in self.transports() {
                let rows: Vec<&Row> = self
                    .rows
                    .iter()
                    .filter(|r| r.scenario == sc && r.transport == t)
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                let m = |f: &dyn Fn(&Row) -> f64| mean(rows.iter().map(|r| f(r)));
                s.push_str(&format!(
                    "{:<24} {:<12} {:>8} {:>10.2} {:>12.1} {:>7.1} {:>8.0}% {:>10.2} {:>10.3} {:>12.0}\n",
                    sc,
                    t.to_string(),
                    ByteSize(rows[0].memory_bytes).to_string(),
                    m(&|r| r.total_seconds),
                    m(&|r| r.downtime_seconds * 1e3),
                    m(&|r| f64::from(r.passes)),
                    m(&|r| f64::from(r.throttle_max_percent)),
                    m(&|r| r.transferred_bytes as f64 / (1u64 << 30) as f64),
                    m(&|r| r.seal_cpu_seconds),
                    m(&|r| r.ops_during),
                ));
            }
        }
        // Encrypted against plaintext, as the paper compares them.
        let ts = self.transports();
        if ts.contains(&Transport::Plaintext) && ts.contains(&Transport::Aes256Gcm) {
            s.push_str("\nencrypted / plaintext:\n");
            for sc in self.scenarios() {
                let ratio = |f: &dyn Fn(&Row) -> f64| {
                    self.mean_of(&sc, Transport::Aes256Gcm, f)
                        / self.mean_of(&sc, Transport::Plaintext, f)
                };
                s.push_str(&format!(
                    "  {:<24} migration time x{:.2}, switch-over time x{:.2}\n",
                    sc,
                    ratio(&|r| r.total_seconds),
                    ratio(&|r| r.downtime_seconds)
                ));
            }
        }
        s
    }

    /// The figure: migration time as bars, switch-over time as lines.
    pub fn svg(&self) -> String {
        let cats = self.scenarios();
        let ts = self.transports();
        let bars = ts
            .iter()
            .enumerate()
            .map(|(i, &t)| Series {
                name: format!("migration time, {t}"),
                values: cats
                    .iter()
                    .map(|c| self.mean_of(c, t, |r| r.total_seconds))
                    .collect(),
                color: COLORS[i % COLORS.len()],
            })
            .collect();
        let lines = ts
            .iter()
            .enumerate()
            .map(|(i, &t)| Series {
                name: format!("switch-over, {t}"),
                values: cats
                    .iter()
                    .map(|c| self.mean_of(c, t, |r| r.downtime_seconds * 1e3))
                    .collect(),
                color: LINE_COLORS[i % LINE_COLORS.len()],
            })
            .collect();
        Chart {
            title: self.title.clone(),
            categories: cats,
            bars,
            bar_axis: "migration time (s)".into(),
            lines,
            line_axis: "switch-over time (ms)".into(),
        }
        .render()
    }

    /// Writes `<name>.json` and `<name>.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> crate::lab::error::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join(format!("{}.json", self.name));
        let svg = dir.join(format!("{}.svg", self.name));
        std::fs::write(&json, serde_json::to_string_pretty(self)?)?;
        std::fs::write(&svg, self.svg())?;
        Ok(vec![json, svg])
    }
}
