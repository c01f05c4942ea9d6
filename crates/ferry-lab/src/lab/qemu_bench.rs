//! `ferry lab bench-qemu`: the same QEMU guest moved four ways on this
//! machine, runs interleaved: QEMU over plain TCP, QEMU's own TLS
//! (tls-creds-x509, AES-256-GCM), and ferry carrying QEMU's channels with
//! encryption off (Disabled) and on; each on 1 channel and on 4 multifd
//! channels. Total time, downtime, throughput, and the CPU ferry's relay
//! uses per 10 Gb/s.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use crate::lab::error::{Context, LabError, Result, bail};
use serde::Serialize;
use serde_json::json;

use crate::{
    engine::{
        DestinationEvent, IncomingRegistry, MigrationListener, SourceOptions,
        channels::ChannelGuest,
    },
    machine::QemuMachine,
    protocol::{
        Backend, EncryptionMode, Limits, MigrationId, MigrationKey, MigrationSpec, Transport,
        spec::Endpoint,
    },
    qemu::QemuGuest,
    report::svg::{COLORS, Chart, LINE_COLORS, Series},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Way {
    QemuPlain,
    QemuTls,
    FerryDisabled,
    FerryEncrypted,
}

impl Way {
    const ALL: [Way; 4] = [
        Way::QemuPlain,
        Way::QemuTls,
        Way::FerryDisabled,
        Way::FerryEncrypted,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Way::QemuPlain => "QEMU, plain TCP",
            Way::QemuTls => "QEMU TLS (AES-256-GCM)",
            Way::FerryDisabled => "ferry, Disabled",
            Way::FerryEncrypted => "ferry, AES-256-GCM",
        }
    }
}

/// One migration.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub way: Way,
    pub multifd: u16,
    pub total_seconds: f64,
    pub downtime_seconds: f64,
    /// RAM bytes QEMU sent.
    pub ram_bytes: u64,
    pub gbit_per_second: f64,
    /// CPU seconds this process (ferry's relay, both sides) used.
    pub relay_cpu_seconds: f64,
}

/// min / median / max of one measure.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub(crate) fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self {
            min: v[0],
            median: v[v.len() / 2],
            max: v[v.len() - 1],
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub way: Way,
    pub multifd: u16,
    pub total_seconds: Spread,
    pub downtime_ms: Spread,
    pub gbit_per_second: Spread,
    /// ferry only: relay cores per 10 Gb/s, per side (half the process's).
    pub relay_cores_per_10gbit_per_side: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub memory_bytes: u64,
    pub touched_mib: u32,
    pub runs: Vec<Run>,
    pub cases: Vec<Case>,
}

pub(crate) fn cpu_seconds() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) };
    // SAFETY: initialised above (zeroed, then filled).
    let u = unsafe { u.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

pub(crate) fn test_machine(memory_mib: u64, touched_mib: u32) -> Result<QemuMachine> {
    let dir = Path::new("target/test-guest");
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.gz"));
    if !kernel.is_file() || !initrd.is_file() {
        bail!(
            "no test guest in {} (run `cargo xtask setup` in the repository)",
            dir.display()
        );
    }
    Ok(QemuMachine {
        memory: memory_mib << 20,
        vcpus: 1,
        accel: Default::default(),
        machine: "pc".into(),
        kernel: Some(std::fs::canonicalize(kernel)?),
        initrd: Some(std::fs::canonicalize(initrd)?),
        // Idle once its region is written: a fair transfer test.
        append: Some(format!(
            "console=ttyS0 quiet panic=-1 ferry.check_mib={touched_mib} ferry.dirty_mib_s=0"
        )),
        disk: None,
        extra_args: vec!["-no-reboot".into()],
        nic: None,
        devices: Vec::new(),
    })
}

/// Ends the QEMUs of one run however it ends.
struct Ending(Vec<Arc<QemuGuest>>);

impl Drop for Ending {
    fn drop(&mut self) {
        for g in &self.0 {
            if g.run_state() != crate::guest::RunState::Released {
                g.release();
            }
        }
    }
}

fn wait_ready(g: &QemuGuest) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(120);
    while g.verdict().is_none_or(|v| v.0 == 0) {
        if Instant::now() > until {
            bail!(
                "the test guest did not boot in 120 s ({})",
                g.dir().display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn set_multifd(g: &QemuGuest, multifd: u16) -> Result<()> {
    g.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "multifd", "state": multifd > 0}]}),
    )?;
    if multifd > 0 {
        g.execute(
            "migrate-set-parameters",
            json!({"multifd-channels": multifd}),
        )?;
    }
    Ok(())
}

fn tls_creds(g: &QemuGuest, dir: &Path, endpoint: &str) -> Result<()> {
    g.execute(
        "object-add",
        json!({"qom-type": "tls-creds-x509", "id": "tls0", "dir": dir, "endpoint": endpoint,
               "verify-peer": endpoint == "client",
               "priority": "NORMAL:-CIPHER-ALL:+AES-256-GCM"}),
    )?;
    g.execute(
        "migrate-set-parameters",
        json!({"tls-creds": "tls0", "tls-hostname": "qemu-bench"}),
    )?;
    Ok(())
}

/// QEMU to QEMU over loopback TCP, plain or with its own TLS.
fn qemu_native(
    src: &QemuGuest,
    dst: &QemuGuest,
    multifd: u16,
    tls: Option<&Path>,
) -> Result<(f64, f64, u64)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let ch = json!([{"channel-type": "main", "addr": {"transport": "socket", "type": "inet",
                      "host": "127.0.0.1", "port": port.to_string()}}]);
    for g in [src, dst] {
        set_multifd(g, multifd)?;
    }
    if let Some(d) = tls {
        tls_creds(dst, d, "server")?;
        tls_creds(src, d, "client")?;
    }
    src.execute(
        "migrate-set-parameters",
        json!({"max-bandwidth": 1u64 << 40}),
    )?;
    dst.execute("migrate-incoming", json!({"channels": ch}))?;
    let t = Instant::now();
    src.execute("migrate", json!({"channels": ch}))?;
    let until = t + Duration::from_secs(300);
    loop {
        let v = src.execute("query-migrate", json!({}))?;
        match v["status"].as_str().unwrap_or("") {
            "completed" => {
                let total = t.elapsed().as_secs_f64();
                let ram = v["ram"]["transferred"].as_u64().unwrap_or(0);
                return Ok((total, resume_native(src, dst)?, ram));
            }
            "failed" | "cancelled" => bail!("QEMU's migration failed: {}", v["error-desc"]),
            _ => {}
        }
        if Instant::now() > until {
            bail!("QEMU's migration did not complete in 300 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Resumes the destination once it has loaded everything, as a management
/// layer does (libvirt: `cont` after completion), and returns the true
/// downtime: the source's STOP to the destination's RESUME, both QEMU's own
/// event times. (QEMU's `downtime` figure ends at the source's completion.)
fn resume_native(src: &QemuGuest, dst: &QemuGuest) -> Result<f64> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let st = dst.execute("query-status", json!({}))?;
        if st["status"] != "inmigrate" {
            break;
        }
        if Instant::now() > until {
            bail!("the destination QEMU did not finish loading in 30 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    dst.execute("cont", json!({}))?;
    // The RESUME event reaches this session with the next reply.
    let until = Instant::now() + Duration::from_secs(5);
    let resumed = loop {
        dst.execute("query-status", json!({}))?;
        if let Some(t) = dst.last_event("RESUME") {
            break t;
        }
        if Instant::now() > until {
            bail!("no RESUME event from the destination QEMU");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let stopped = src
        .last_event("STOP")
        .context("no STOP event from the source QEMU")?;
    Ok(resumed
        .duration_since(stopped)
        .unwrap_or_default()
        .as_secs_f64())
}

/// The same QEMUs, with ferry carrying the channels on its streams.
fn through_ferry(
    src: Arc<QemuGuest>,
    dst: Arc<QemuGuest>,
    machine: &QemuMachine,
    multifd: u16,
    encrypted: bool,
) -> Result<(f64, f64, u64)> {
    let (tx, events) = mpsc::channel();
    let tx = Mutex::new(tx);
    let registry = IncomingRegistry::new(
        Backend::default(),
        None,
        Duration::from_secs(30),
        move |e| {
            let _ = tx.lock().expect("events").send(e);
        },
    );
    let listener = MigrationListener::bind("127.0.0.1:0".parse()?, registry.clone())?;
    let transport = if encrypted {
        Transport::Aes256Gcm
    } else {
        Transport::Plaintext
    };
    let spec = MigrationSpec {
        id: MigrationId::generate(),
        guest: "bench".into(),
        memory: machine.memory,
        source: Endpoint {
            host: "a".into(),
            migration: "127.0.0.1:1".parse()?,
        },
        destination: Endpoint {
            host: "b".into(),
            migration: listener.local_addr(),
        },
        mode: EncryptionMode::Opportunistic,
        setting: EncryptionMode::Opportunistic,
        transport,
        key: encrypted.then(MigrationKey::generate),
        nonce: 1,
        streams: 1 + multifd,
        limits: Limits::default(),
        machine: Some(machine.clone()),
    };
    registry.prepare_channels(&spec, dst)?;
    let stats =
        crate::engine::channels::migrate_out(src, &spec, &SourceOptions::default(), &mut |_| {})
            .map_err(|f| LabError::unexpected(ferry_core::error::report(&f)))?;
    match events.recv_timeout(Duration::from_secs(10)) {
        Ok(DestinationEvent::Resumed { .. }) => {}
        _ => bail!("the destination did not resume the guest"),
    }
    Ok((
        stats.total_seconds,
        stats.downtime_seconds,
        // What crossed the wire: QEMU's stream in ferry's records.
        stats.transferred_bytes,
    ))
}

pub(crate) fn one(
    way: Way,
    multifd: u16,
    machine: &QemuMachine,
    dir: &Path,
    certs: &Path,
) -> Result<Run> {
    let src = Arc::new(QemuGuest::launch(
        "bench",
        machine,
        &dir.join("a"),
        false,
        None,
    )?);
    let dst = Arc::new(QemuGuest::launch(
        "bench",
        machine,
        &dir.join("b"),
        true,
        None,
    )?);
    let _end = Ending(vec![src.clone(), dst.clone()]);
    wait_ready(&src)?;
    let cpu = cpu_seconds();
    let (total, downtime, ram_bytes) = match way {
        Way::QemuPlain => qemu_native(&src, &dst, multifd, None)?,
        Way::QemuTls => qemu_native(&src, &dst, multifd, Some(certs))?,
        Way::FerryDisabled => through_ferry(src.clone(), dst.clone(), machine, multifd, false)?,
        Way::FerryEncrypted => through_ferry(src.clone(), dst.clone(), machine, multifd, true)?,
    };
    Ok(Run {
        way,
        multifd,
        total_seconds: total,
        downtime_seconds: downtime,
        ram_bytes,
        gbit_per_second: ram_bytes as f64 * 8.0 / total / 1e9,
        relay_cpu_seconds: cpu_seconds() - cpu,
    })
}

/// QEMU's x509 directory: ca-cert.pem, server-cert.pem, server-key.pem.
pub(crate) fn qemu_certs(dir: &Path) -> Result<PathBuf> {
    let d = dir.join("x509");
    crate::certs::issue_qemu_x509(&d, "qemu-bench")?;
    Ok(d)
}

pub fn run(
    runs: usize,
    memory_mib: u64,
    touched_mib: u32,
    progress: &dyn Fn(&str),
) -> Result<Results> {
    crate::qemu::available()?;
    let machine = test_machine(memory_mib, touched_mib)?;
    let dir = std::env::temp_dir().join(format!("ferry-bench-qemu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let certs = qemu_certs(&dir)?;
    let mut all = Vec::new();
    let total = runs * 2 * Way::ALL.len();
    for r in 0..runs {
        for multifd in [0u16, 4] {
            for way in Way::ALL {
                let run_dir = dir.join(format!("{r}-{multifd}-{way:?}"));
                let x = one(way, multifd, &machine, &run_dir, &certs)
                    .with_context(|| format!("{} with {multifd} multifd channels", way.name()))?;
                let _ = std::fs::remove_dir_all(&run_dir);
                progress(&format!(
                    "[{}/{total}] {}, {} channel(s): {:.2} s, downtime {:.0} ms, {:.2} Gbit/s",
                    all.len() + 1,
                    way.name(),
                    multifd.max(1),
                    x.total_seconds,
                    x.downtime_seconds * 1e3,
                    x.gbit_per_second
                ));
                all.push(x);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut cases = Vec::new();
    for multifd in [0u16, 4] {
        for way in Way::ALL {
            let rs: Vec<&Run> = all
                .iter()
                .filter(|r| r.way == way && r.multifd == multifd)
                .collect();
            let ferry = matches!(way, Way::FerryDisabled | Way::FerryEncrypted);
            cases.push(Case {
                way,
                multifd,
                total_seconds: Spread::of(rs.iter().map(|r| r.total_seconds).collect()),
                downtime_ms: Spread::of(rs.iter().map(|r| r.downtime_seconds * 1e3).collect()),
                gbit_per_second: Spread::of(rs.iter().map(|r| r.gbit_per_second).collect()),
                relay_cores_per_10gbit_per_side: ferry.then(|| {
                    let cpu: f64 = rs.iter().map(|r| r.relay_cpu_seconds).sum();
                    let bits: f64 = rs.iter().map(|r| r.ram_bytes as f64 * 8.0).sum();
                    // cores x seconds per 10 Gbit, halved: both sides run here.
                    cpu / (bits / 1e10) / 2.0
                }),
            });
        }
    }
    Ok(Results {
        memory_bytes: machine.memory,
        touched_mib,
        runs: all,
        cases,
    })
}

impl Results {
    fn case(&self, way: Way, multifd: u16) -> &Case {
        self.cases
            .iter()
            .find(|c| c.way == way && c.multifd == multifd)
            .expect("every case ran")
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "\nA {} MiB QEMU guest ({} MiB touched, idle), loopback, min / median / max\n\
             (downtime: the source's STOP to the destination's RESUME, QEMU's own event times):\n",
            self.memory_bytes >> 20,
            self.touched_mib
        );
        s.push_str(&format!(
            "  {:<24} {:>4} {:>20} {:>20} {:>20} {:>14}\n",
            "way", "ch", "total s", "downtime ms", "Gbit/s", "relay c/10G/side"
        ));
        let f = |x: &Spread, p: usize| format!("{:.p$}/{:.p$}/{:.p$}", x.min, x.median, x.max);
        for c in &self.cases {
            s.push_str(&format!(
                "  {:<24} {:>4} {:>20} {:>20} {:>20} {:>14}\n",
                c.way.name(),
                c.multifd.max(1),
                f(&c.total_seconds, 2),
                f(&c.downtime_ms, 0),
                f(&c.gbit_per_second, 2),
                c.relay_cores_per_10gbit_per_side
                    .map_or("-".into(), |v| format!("{v:.2}"))
            ));
        }
        for m in [0u16, 4] {
            let enc = self.case(Way::FerryEncrypted, m);
            let tls = self.case(Way::QemuTls, m);
            let plain = self.case(Way::QemuPlain, m);
            s.push_str(&format!(
                "  {} channel(s): ferry encrypted at {:.2}x QEMU TLS's throughput; its time {:.2}x QEMU plaintext's (medians)\n",
                m.max(1),
                enc.gbit_per_second.median / tls.gbit_per_second.median,
                enc.total_seconds.median / plain.total_seconds.median
            ));
        }
        s
    }

    pub fn chart(&self) -> String {
        let cats: Vec<String> = Way::ALL.iter().map(|w| w.name().to_string()).collect();
        let series = |m: u16, f: &dyn Fn(&Case) -> f64| -> Vec<f64> {
            Way::ALL.iter().map(|w| f(self.case(*w, m))).collect()
        };
        Chart {
            title: format!(
                "QEMU migration of a {} MiB guest: four ways (medians)",
                self.memory_bytes >> 20
            ),
            categories: cats,
            bars: vec![
                Series {
                    name: "throughput, 1 channel (Gbit/s)".into(),
                    values: series(0, &|c| c.gbit_per_second.median),
                    color: COLORS[0],
                },
                Series {
                    name: "throughput, 4 multifd (Gbit/s)".into(),
                    values: series(4, &|c| c.gbit_per_second.median),
                    color: COLORS[1],
                },
            ],
            bar_axis: "Gbit/s".into(),
            lines: vec![
                Series {
                    name: "downtime, 1 channel (ms)".into(),
                    values: series(0, &|c| c.downtime_ms.median),
                    color: LINE_COLORS[0],
                },
                Series {
                    name: "downtime, 4 multifd (ms)".into(),
                    values: series(4, &|c| c.downtime_ms.median),
                    color: LINE_COLORS[1],
                },
            ],
            line_axis: "ms".into(),
        }
        .render()
    }
}
