//! The migration demo: a coordinator and two hosts on loopback, real mutual
//! TLS and the real encrypted protocol between them; a synthetic guest under
//! a key/value workload moves from host-a to host-b, and its throughput is
//! watched before, during and after the move.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::{
    client::ProgressView,
    config::ByteSize,
    control::wire::MigrateOptions,
    coordinator::request_migration,
    demo::DemoConfig,
    engine::{MigrationResult, MigrationStats},
    guest::{Guest, Sample},
    host::GuestConfig,
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
    pub guest_penalty: Penalty,
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

pub async fn run(cfg: &DemoConfig, quiet: bool) -> anyhow::Result<DemoSummary> {
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
    Ok(DemoSummary {
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
        guest_penalty: penalty(&before, &after, start, end, errors),
        migration: stats,
    })
}

/// The human-readable end of `ferry demo`.
pub fn render(s: &DemoSummary) -> String {
    let mut out = crate::client::summary(&s.migration);
    let p = &s.guest_penalty;
    out.push_str(&format!(
        "\n  guest throughput (ops/s): before {:.0}, during {:.0} (lowest 100 ms sample {:.0}), after {:.0}; GET integrity errors: {}\n",
        p.before_ops_per_second, p.during_ops_per_second, p.min_ops_per_second, p.after_ops_per_second, p.get_errors
    ));
    out
}
