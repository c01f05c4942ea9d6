//! `ferry lab bench-migration`: ferry's own engine moving its synthetic
//! guest at growing sizes, idle and under the demo's 50/50 GET/SET load,
//! encrypted on loopback, interleaved with QEMU 10 moving a guest of the
//! same size over its own TCP and TLS (the peer). Downtime and time per
//! GiB against size, where the stun went, CPU per 10 Gb/s and peak memory.

use std::{sync::Arc, time::Duration};

use crate::lab::error::{Context, LabError, Result};
use serde::Serialize;

use super::qemu_bench::{self, Spread, Way};
use crate::{
    engine::{IncomingRegistry, MigrationListener, MigrationStats, SourceOptions, migrate_out},
    guest::{SyntheticConfig, SyntheticGuest, WorkloadSpec},
    protocol::{
        Backend, EncryptionMode, Limits, MigrationId, MigrationKey, MigrationSpec, Transport,
        spec::Endpoint,
    },
    report::svg::{COLORS, Chart, LINE_COLORS, Series},
};

/// What runs in one case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Load {
    /// Prefilled memory, vCPUs doing nothing (the paper's idle VM).
    Idle,
    /// The demo's key/value guest: 50k GETs and 50k SETs a second.
    Busy,
    /// QEMU's own migration over plain TCP (the peer), guest idle.
    QemuTcp,
    /// QEMU's own TLS (AES-256-GCM), guest idle.
    QemuTls,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Idle => "ferry, idle",
            Load::Busy => "ferry, 50/50 GET/SET",
            Load::QemuTcp => Way::QemuPlain.name(),
            Load::QemuTls => Way::QemuTls.name(),
        }
    }
}

/// One migration.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub load: Load,
    pub memory_bytes: u64,
    pub total_seconds: f64,
    pub downtime_seconds: f64,
    /// ferry only: pass 0's rate against the rate of the pass after it.
    pub pass0_bytes_per_second: Option<f64>,
    /// ferry only: where the stun went.
    pub stun: Option<crate::engine::StunTimes>,
    /// CPU seconds this process used (both sides run in it).
    pub cpu_seconds: f64,
    pub wire_bytes: u64,
}

/// min / median / max of each measure over the runs of one case.
#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub load: Load,
    pub memory_bytes: u64,
    pub total_seconds: Spread,
    pub seconds_per_gib: Spread,
    pub downtime_ms: Spread,
    /// ferry only: this process's CPU (both sides, and the guest's vCPUs)
    /// per 10 Gb/s on the wire. QEMU's runs in its own processes.
    pub cores_per_10gbit: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub runs: Vec<Run>,
    pub cases: Vec<Case>,
    /// This process's peak resident memory (VmHWM), both sides' guests in it.
    pub peak_rss_bytes: u64,
    /// Why memory-bound figures vary on this machine, when they do.
    pub machine_note: Option<String>,
    /// Sizes QEMU moved too (its guests boot under TCG: the large ones are
    /// left to ferry alone unless asked).
    pub qemu_sizes: Vec<u64>,
}

/// Whether memory this machine frees goes back to its hypervisor (a
/// virtio balloon with free page reporting): touching it again then costs
/// a host fault per page, about 1 s per GiB on the project's VMs, and that
/// first touch, on both sides of every migration, is in the figures.
fn free_page_reporting() -> Option<String> {
    let order =
        std::fs::read_to_string("/sys/module/page_reporting/parameters/page_reporting_order")
            .ok()?;
    let balloon = std::fs::read_dir("/sys/bus/virtio/drivers/virtio_balloon")
        .ok()?
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("virtio"));
    balloon.then(|| {
        format!(
            "free page reporting is on (virtio balloon, order {}): memory freed here goes back to the hypervisor, \
             and the next guest's first touch of it costs a host fault per page on both sides; \
             runs that reuse memory freed a moment earlier are faster",
            order.trim()
        )
    })
}

/// The process's peak resident set (VmHWM), bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn synthetic(
    load: Load,
    memory: u64,
    registry: &Arc<IncomingRegistry>,
    to: std::net::SocketAddr,
) -> Result<Run> {
    let workload = match load {
        // Prefilled with records, and nobody touches them.
        Load::Idle => WorkloadSpec::KeyValue {
            gets_per_second: 0,
            sets_per_second: 0,
        },
        _ => WorkloadSpec::KeyValue {
            gets_per_second: 50_000,
            sets_per_second: 50_000,
        },
    };
    let src = SyntheticGuest::boot(
        "bench",
        &SyntheticConfig {
            memory,
            vcpus: 2,
            workload,
            prefill: true,
            seed: 7,
        },
    )?;
    let spec = MigrationSpec {
        id: MigrationId::generate(),
        guest: "bench".into(),
        memory,
        source: Endpoint {
            host: "source".into(),
            migration: "127.0.0.1:1".parse().expect("address"),
        },
        destination: Endpoint {
            host: "destination".into(),
            migration: to,
        },
        mode: EncryptionMode::Required,
        setting: EncryptionMode::Required,
        transport: Transport::Aes256Gcm,
        key: Some(MigrationKey::generate()),
        nonce: 0x5eed,
        streams: 2,
        limits: Limits::default(),
        machine: None,
    };
    let dst = SyntheticGuest::incoming("bench", memory)?;
    registry.prepare(&spec, dst.clone())?;
    // The guest runs a while first, as it would before anyone moves it.
    std::thread::sleep(Duration::from_millis(300));
    let opts = SourceOptions {
        backend: Backend::Fastest,
        ..Default::default()
    };
    let cpu = qemu_bench::cpu_seconds();
    let stats: MigrationStats = migrate_out(src.clone(), &spec, &opts, &mut |_| {})
        .map_err(|f| LabError::unexpected(ferry_core::error::report(&f.error)))?;
    let cpu = qemu_bench::cpu_seconds() - cpu;
    use crate::guest::Guest;
    dst.release();
    Ok(Run {
        load,
        memory_bytes: memory,
        total_seconds: stats.total_seconds,
        downtime_seconds: stats.downtime_seconds,
        pass0_bytes_per_second: stats.pass_history.first().map(|p| p.transfer_rate),
        stun: Some(stats.stun.clone()),
        cpu_seconds: cpu,
        wire_bytes: stats.transferred_bytes,
    })
}

/// Runs every case `runs` times, interleaved (each round runs every case
/// once), so that a machine that changes speed changes every case alike.
pub fn run(
    runs: usize,
    sizes: &[u64],
    qemu_up_to: u64,
    progress: &dyn Fn(&str),
) -> Result<Results> {
    // The destination's guest is this bench's to end (below): an event
    // kept would keep its memory.
    let registry = IncomingRegistry::new(Backend::Fastest, None, Duration::from_secs(30), |_| {});
    let listener =
        MigrationListener::bind("127.0.0.1:0".parse().expect("address"), registry.clone())
            .context("binding the bench's migration listener on loopback")?;
    let to = listener.local_addr();
    let qemu_sizes: Vec<u64> = match crate::qemu::available() {
        Ok(()) => sizes.iter().copied().filter(|&s| s <= qemu_up_to).collect(),
        Err(why) => {
            progress(&format!("QEMU left out: {why}"));
            Vec::new()
        }
    };
    let dir = std::env::temp_dir().join(format!("ferry-bench-migration-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let certs = if qemu_sizes.is_empty() {
        None
    } else {
        Some(qemu_bench::qemu_certs(&dir)?)
    };
    let mut cases: Vec<(Load, u64)> = Vec::new();
    for &s in sizes {
        cases.push((Load::Idle, s));
        cases.push((Load::Busy, s));
        if qemu_sizes.contains(&s) {
            cases.push((Load::QemuTcp, s));
            cases.push((Load::QemuTls, s));
        }
    }
    let total = runs * cases.len();
    let mut all = Vec::new();
    for r in 0..runs {
        for &(load, memory) in &cases {
            let x = match load {
                Load::Idle | Load::Busy => synthetic(load, memory, &registry, to),
                Load::QemuTcp | Load::QemuTls => {
                    let mib = memory >> 20;
                    // The guest's kernel needs some room of its own.
                    let machine = qemu_bench::test_machine(mib, (mib - 96) as u32)?;
                    let way = if load == Load::QemuTcp {
                        Way::QemuPlain
                    } else {
                        Way::QemuTls
                    };
                    let run_dir = dir.join(format!("{r}-{mib}-{load:?}"));
                    let certs = certs.as_deref().expect("certificates for QEMU");
                    let q = qemu_bench::one(way, 0, &machine, &run_dir, certs);
                    let _ = std::fs::remove_dir_all(&run_dir);
                    q.map(|q| Run {
                        load,
                        memory_bytes: memory,
                        total_seconds: q.total_seconds,
                        downtime_seconds: q.downtime_seconds,
                        pass0_bytes_per_second: None,
                        stun: None,
                        cpu_seconds: q.relay_cpu_seconds,
                        wire_bytes: q.ram_bytes,
                    })
                }
            }
            .with_context(|| format!("{} with {} MiB", load.name(), memory >> 20))?;
            progress(&format!(
                "[{}/{total}] {} MiB, {}: {:.2} s, downtime {:.1} ms",
                all.len() + 1,
                memory >> 20,
                load.name(),
                x.total_seconds,
                x.downtime_seconds * 1e3
            ));
            all.push(x);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let cases = cases
        .iter()
        .map(|&(load, memory)| {
            let rs: Vec<&Run> = all
                .iter()
                .filter(|r| r.load == load && r.memory_bytes == memory)
                .collect();
            let gib = memory as f64 / (1u64 << 30) as f64;
            let cpu: f64 = rs.iter().map(|r| r.cpu_seconds).sum();
            let bits: f64 = rs.iter().map(|r| r.wire_bytes as f64 * 8.0).sum();
            Case {
                load,
                memory_bytes: memory,
                total_seconds: Spread::of(rs.iter().map(|r| r.total_seconds).collect()),
                seconds_per_gib: Spread::of(rs.iter().map(|r| r.total_seconds / gib).collect()),
                downtime_ms: Spread::of(rs.iter().map(|r| r.downtime_seconds * 1e3).collect()),
                cores_per_10gbit: matches!(load, Load::Idle | Load::Busy)
                    .then(|| cpu / (bits / 1e10).max(1e-9)),
            }
        })
        .collect();
    drop(listener);
    Ok(Results {
        runs: all,
        cases,
        peak_rss_bytes: peak_rss(),
        machine_note: free_page_reporting(),
        qemu_sizes,
    })
}

impl Results {
    fn case(&self, load: Load, memory: u64) -> Option<&Case> {
        self.cases
            .iter()
            .find(|c| c.load == load && c.memory_bytes == memory)
    }

    fn sizes(&self) -> Vec<u64> {
        let mut s: Vec<u64> = self.cases.iter().map(|c| c.memory_bytes).collect();
        s.dedup();
        s
    }

    pub fn table(&self) -> String {
        let mut s = String::from(
            "\nMigrations on loopback, encrypted (AES-256-GCM), 2 streams; min / median / max;\n\
             ferry's synthetic guest and QEMU 10's own migration of a guest of the same size:\n",
        );
        s.push_str(&format!(
            "  {:>8} {:<28} {:>20} {:>20} {:>22} {:>10}\n",
            "memory", "case", "total s", "s per GiB", "downtime ms", "c/10Gb/s"
        ));
        let cores = |c: &Case| c.cores_per_10gbit.map_or("-".into(), |v| format!("{v:.2}"));
        let f = |x: &Spread, p: usize| format!("{:.p$}/{:.p$}/{:.p$}", x.min, x.median, x.max);
        for c in &self.cases {
            s.push_str(&format!(
                "  {:>5} MiB {:<28} {:>20} {:>20} {:>22} {:>10}\n",
                c.memory_bytes >> 20,
                c.load.name(),
                f(&c.total_seconds, 2),
                f(&c.seconds_per_gib, 2),
                f(&c.downtime_ms, 1),
                cores(c)
            ));
        }
        for m in self.sizes() {
            let (Some(idle), Some(tls), Some(tcp)) = (
                self.case(Load::Idle, m),
                self.case(Load::QemuTls, m),
                self.case(Load::QemuTcp, m),
            ) else {
                continue;
            };
            s.push_str(&format!(
                "  {} MiB idle, ferry / QEMU TLS: time {:.2}x, downtime {:.3}x; ferry / QEMU TCP: time {:.2}x (medians)\n",
                m >> 20,
                idle.total_seconds.median / tls.total_seconds.median,
                idle.downtime_ms.median / tls.downtime_ms.median,
                idle.total_seconds.median / tcp.total_seconds.median,
            ));
        }
        let stun: Vec<String> = self
            .runs
            .iter()
            .filter(|r| r.load == Load::Idle)
            .filter_map(|r| r.stun.as_ref().map(|t| (r.memory_bytes, t)))
            .map(|(m, t)| {
                format!(
                    "{} MiB: pause {:.2} + final pass {:.2} + ready {:.2} + commit {:.2} ms",
                    m >> 20,
                    t.pause_seconds * 1e3,
                    t.final_pass_seconds * 1e3,
                    t.ready_seconds * 1e3,
                    t.commit_seconds * 1e3
                )
            })
            .collect();
        s.push_str("  where an idle guest's stun went (each run):\n");
        for l in stun {
            s.push_str(&format!("    {l}\n"));
        }
        s.push_str(&format!(
            "  peak resident memory of this process (both sides): {} MiB\n",
            self.peak_rss_bytes >> 20
        ));
        if let Some(n) = &self.machine_note {
            s.push_str(&format!("  note: {n}\n"));
        }
        s
    }

    /// Time per GiB (bars) and downtime (lines) against size, medians.
    pub fn chart(&self) -> String {
        let sizes = self.sizes();
        let series = |load: Load, f: &dyn Fn(&Case) -> f64| -> Vec<f64> {
            sizes
                .iter()
                .map(|&m| self.case(load, m).map_or(0.0, f))
                .collect()
        };
        let mut bars = Vec::new();
        let mut lines = Vec::new();
        for (i, load) in [Load::Idle, Load::Busy, Load::QemuTls]
            .into_iter()
            .enumerate()
        {
            if load == Load::QemuTls && self.qemu_sizes.is_empty() {
                continue;
            }
            bars.push(Series {
                name: format!("{}: s per GiB", load.name()),
                values: series(load, &|c| c.seconds_per_gib.median),
                color: COLORS[i],
            });
            lines.push(Series {
                name: format!("{}: downtime (ms)", load.name()),
                values: series(load, &|c| c.downtime_ms.median),
                color: LINE_COLORS[i],
            });
        }
        Chart {
            title: "Migration time per GiB and downtime against guest size (medians)".into(),
            categories: sizes.iter().map(|m| format!("{} MiB", m >> 20)).collect(),
            bars,
            bar_axis: "s per GiB".into(),
            lines,
            line_axis: "ms".into(),
        }
        .render()
    }
}
