//! The migration demo: a coordinator and two hosts on loopback, real mutual
//! TLS and the real encrypted protocol between them; a synthetic guest under
//! a key/value workload moves from host-a to host-b, and its throughput is
//! watched before, during and after the move.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::lab::error::{Context, bail};
use serde::Serialize;

use crate::{
    client::ProgressView,
    config::ByteSize,
    control::wire::MigrateOptions,
    coordinator::request_migration,
    demo::DemoConfig,
    engine::{MigrationResult, MigrationStats},
    guest::{Guest, Sample},
    host::{
        GuestConfig,
        config::{GuestKind, QemuSettings},
    },
    lab::cluster::{Cluster, ClusterSpec, HostSpec},
};

/// The guest's throughput around the move (the paper's guest penalty).
#[derive(Clone, Debug, Serialize)]
pub struct Penalty {
    pub before_ops_per_second: f64,
    pub during_ops_per_second: f64,
    pub after_ops_per_second: f64,
    /// Lowest 100 ms sample during the migration (the stun shows here).
    pub min_ops_per_second: f64,
    /// Samples, seconds relative to the start of the migration.
    pub timeline: Vec<(f64, f64)>,
    /// GETs that found a corrupt record, before or after the move.
    pub get_errors: u64,
}

/// What `ferry demo --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct DemoSummary {
    pub result: MigrationResult,
    pub mode: String,
    pub transport: String,
    pub streams: u16,
    pub backend: String,
    pub total_seconds: f64,
    pub setup_seconds: f64,
    pub downtime_seconds: f64,
    pub transferred_bytes: u64,
    pub memory_bytes: u64,
    pub passes: u32,
    pub normal_pages: u64,
    pub zero_pages: u64,
    pub throttle_max_percent: u8,
    pub memory_identical: Option<bool>,
    pub seal_cpu_seconds: f64,
    /// "synthetic" or "qemu".
    pub guest_kind: String,
    /// The guest's own verdict on its memory (a QEMU test guest checks
    /// itself and says so); None for a synthetic guest, whose GET
    /// integrity errors are in `guest_penalty`.
    pub guest_verified: Option<bool>,
    /// A synthetic guest's throughput around the move.
    pub guest_penalty: Option<Penalty>,
    pub migration: MigrationStats,
}

fn unix_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { s / n as f64 }
}

fn penalty(before: &[Sample], after: &[Sample], start: f64, end: f64, get_errors: u64) -> Penalty {
    let all: Vec<(f64, f64)> = before
        .iter()
        .chain(after)
        .map(|s| (s.unix_ms as f64 / 1e3 - start, s.ops_per_second))
        .collect();
    let dur = end - start;
    let during: Vec<f64> = all
        .iter()
        .filter(|(t, _)| *t >= 0.0 && *t <= dur)
        .map(|x| x.1)
        .collect();
    Penalty {
        before_ops_per_second: mean(all.iter().filter(|(t, _)| *t < 0.0).map(|x| x.1)),
        during_ops_per_second: mean(during.iter().copied()),
        after_ops_per_second: mean(all.iter().filter(|(t, _)| *t > dur).map(|x| x.1)),
        min_ops_per_second: during
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(f64::MAX),
        timeline: all,
        get_errors,
    }
}

pub async fn run(cfg: &DemoConfig, quiet: bool) -> crate::lab::error::Result<DemoSummary> {
    if cfg.guest_kind == GuestKind::Qemu {
        return run_qemu(cfg, quiet).await;
    }
    let g = &cfg.guest;
    if !quiet {
        eprintln!(
            "starting a coordinator and two hosts on loopback; host-a boots guest {} ({})",
            g.name, g.memory
        );
    }
    let host = |name: &str, guests| HostSpec {
        name: name.into(),
        coordinator: "demo-coordinator".into(),
        encryption: true,
        capacity: ByteSize(g.memory.0 * 2),
        backend: cfg.backend,
        guests,
        network: None,
    };
    let cluster = Cluster::start(
        ClusterSpec {
            coordinators: vec!["demo-coordinator".into()],
            hosts: vec![
                host(
                    "host-a",
                    vec![GuestConfig {
                        nic: None,
                        kind: Default::default(),
                        qemu: None,
                        name: g.name.clone(),
                        memory: g.memory,
                        vcpus: g.vcpus,
                        encryption: cfg.mode,
                        workload: g.workload.clone(),
                        prefill: g.prefill,
                    }],
                ),
                host("host-b", vec![]),
            ],
            defaults: Default::default(),
            scheduler: Default::default(),
        },
        None,
    )
    .await?;
    let hosts = [
        cluster.host("host-a").clone(),
        cluster.host("host-b").clone(),
    ];
    let guest: Arc<dyn Guest> = hosts[0]
        .guest(&g.name)
        .context("the demo guest did not boot")?;
    if !quiet {
        eprintln!(
            "letting the guest's {:?} workload run for {:?}",
            g.workload, cfg.watch
        );
    }
    tokio::time::sleep(cfg.watch).await;

    let client = &cluster.client;
    let coord = cluster.coordinator("demo-coordinator");
    let options = MigrateOptions {
        mode: Some(cfg.mode),
        streams: Some(cfg.streams),
        limits: Some(cfg.limits.clone()),
    };
    let mut view = ProgressView::new(quiet);
    let start = unix_s();
    let stats = request_migration(client, &coord, &g.name, None, "host-b", options, |r| {
        view.update(r)
    })
    .await;
    view.finish();
    let end = unix_s();
    let stats = *stats.context("the migration request failed")?;
    if stats.result != MigrationResult::Completed {
        bail!(
            "the migration failed: {}",
            stats.error.clone().unwrap_or_default()
        );
    }
    let moved = hosts[1]
        .guest(&g.name)
        .context("the guest is not on host-b after the migration")?;
    tokio::time::sleep(cfg.watch).await;
    let before = guest.timeline();
    let after = moved.timeline();
    let errors = guest.info().get_errors + moved.info().get_errors;
    Ok(summary(
        stats,
        "synthetic",
        None,
        Some(penalty(&before, &after, start, end, errors)),
    ))
}

fn summary(
    stats: MigrationStats,
    kind: &str,
    verified: Option<bool>,
    penalty: Option<Penalty>,
) -> DemoSummary {
    DemoSummary {
        result: stats.result,
        mode: stats.mode.to_string(),
        transport: stats.transport.to_string(),
        streams: stats.streams,
        backend: stats.backend.clone(),
        total_seconds: stats.total_seconds,
        setup_seconds: stats.setup_seconds,
        downtime_seconds: stats.downtime_seconds,
        transferred_bytes: stats.transferred_bytes,
        memory_bytes: stats.total_bytes,
        passes: stats.passes,
        normal_pages: stats.normal_pages,
        zero_pages: stats.zero_pages,
        throttle_max_percent: stats.throttle_max_percent,
        memory_identical: stats.memory_identical,
        seal_cpu_seconds: stats.seal_cpu_seconds,
        guest_kind: kind.into(),
        guest_verified: verified,
        guest_penalty: penalty,
        migration: stats,
    }
}

/// Ends the demo's QEMU guests, wherever they are, however the demo ends:
/// QEMU outlives a host on purpose, but not the demo.
struct EndQemu(Vec<Arc<crate::host::Host>>, String);

impl Drop for EndQemu {
    fn drop(&mut self) {
        for h in &self.0 {
            if let Some(g) = h.hosted(&self.1) {
                g.release();
            }
        }
    }
}

/// (checks passed, failed) the guest on `host` reports.
fn checks(host: &crate::host::Host, name: &str) -> Option<(u64, u64)> {
    host.hosted(name).map(|g| {
        let i = g.info();
        (i.ops, i.get_errors)
    })
}

/// Waits, bounded, for `n` passed checks on `host` (or any failure).
async fn wait_checks(host: &crate::host::Host, name: &str, n: u64) -> (u64, u64) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let c = checks(host, name).unwrap_or((0, 0));
        if c.0 >= n || c.1 > 0 || std::time::Instant::now() > until {
            return c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The QEMU demo: the test guest boots on host-a under QEMU, checks its
/// memory, moves encrypted to host-b, and checks it there.
async fn run_qemu(cfg: &DemoConfig, quiet: bool) -> crate::lab::error::Result<DemoSummary> {
    let q = &cfg.qemu;
    crate::qemu::available()?;
    for (what, p) in [("kernel", &q.kernel), ("initrd", &q.initrd)] {
        if !p.is_file() {
            bail!(
                "qemu.{what}: {} is not a file (run `cargo xtask setup` in the repository to build the test guest, or point qemu.{what} at yours)",
                p.display()
            );
        }
    }
    let abs = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if !quiet {
        eprintln!(
            "starting a coordinator and two hosts on loopback; host-a boots QEMU guest {} ({}, TCG)",
            q.name, q.memory
        );
    }
    let guest = GuestConfig {
        name: q.name.clone(),
        kind: GuestKind::Qemu,
        memory: q.memory,
        vcpus: 1,
        encryption: cfg.mode,
        workload: Default::default(),
        qemu: Some(QemuSettings {
            accel: Default::default(),
            machine: "pc".into(),
            kernel: Some(abs(&q.kernel)),
            initrd: Some(abs(&q.initrd)),
            append: Some(format!(
                "console=ttyS0 quiet panic=-1 ferry.check_mib=32 ferry.dirty_mib_s={}",
                q.dirty_mib_per_second
            )),
            disk: None,
            extra_args: vec!["-no-reboot".into()],
            adopt: None,
        }),
        prefill: false,
        nic: None,
    };
    let host = |name: &str, guests| HostSpec {
        name: name.into(),
        coordinator: "demo-coordinator".into(),
        encryption: true,
        capacity: ByteSize(q.memory.0 * 2),
        backend: cfg.backend,
        guests,
        network: None,
    };
    let cluster = Cluster::start(
        ClusterSpec {
            coordinators: vec!["demo-coordinator".into()],
            hosts: vec![host("host-a", vec![guest]), host("host-b", vec![])],
            defaults: Default::default(),
            scheduler: Default::default(),
        },
        None,
    )
    .await?;
    let hosts = [
        cluster.host("host-a").clone(),
        cluster.host("host-b").clone(),
    ];
    let _end = EndQemu(hosts.to_vec(), q.name.clone());
    if !quiet {
        eprintln!("waiting for the guest to boot and check its memory");
    }
    let (ok, failed) = wait_checks(&hosts[0], &q.name, 1).await;
    if ok == 0 || failed > 0 {
        bail!("the QEMU guest did not boot and pass its first memory check in 90 s");
    }
    let client = &cluster.client;
    let coord = cluster.coordinator("demo-coordinator");
    let options = MigrateOptions {
        mode: Some(cfg.mode),
        streams: Some(cfg.streams),
        limits: Some(cfg.limits.clone()),
    };
    let mut view = ProgressView::new(quiet);
    let stats = request_migration(client, &coord, &q.name, None, "host-b", options, |r| {
        view.update(r)
    })
    .await;
    view.finish();
    let stats = *stats.context("the migration request failed")?;
    if stats.result != MigrationResult::Completed {
        bail!(
            "the migration failed: {}",
            stats.error.clone().unwrap_or_default()
        );
    }
    if hosts[1].hosted(&q.name).is_none() {
        bail!("the guest is not on host-b after the migration");
    }
    if !quiet {
        eprintln!("the guest runs on host-b; waiting for it to check its memory there");
    }
    let (ok, failed) = wait_checks(&hosts[1], &q.name, 2).await;
    Ok(summary(stats, "qemu", Some(ok >= 2 && failed == 0), None))
}

/// The human-readable end of `ferry demo`.
pub fn render(s: &DemoSummary) -> String {
    let mut out = crate::client::summary(&s.migration);
    if let Some(p) = &s.guest_penalty {
        out.push_str(&format!(
            "\n  guest throughput (ops/s): before {:.0}, during {:.0} (lowest 100 ms sample {:.0}), after {:.0}; GET integrity errors: {}\n",
            p.before_ops_per_second, p.during_ops_per_second, p.min_ops_per_second, p.after_ops_per_second, p.get_errors
        ));
    }
    if let Some(v) = s.guest_verified {
        out.push_str(&format!(
            "\n  guest ({}): its own memory checks on host-b {}\n",
            s.guest_kind,
            if v { "pass" } else { "FAILED" }
        ));
    }
    out
}
