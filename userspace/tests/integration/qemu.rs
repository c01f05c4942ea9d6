//! Real QEMU guests moved by ferry: QEMU's own migration channels carried
//! on ferry's encrypted streams, committed by ferry's switch-over. The test
//! guest (`cargo xtask setup` builds it) checks its own memory and says so
//! on its serial console.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use ferry::{
    engine::{
        DestinationEvent, IncomingRegistry, LiveLimits, MigrationError, MigrationListener,
        MigrationResult, SourceOptions, channels::ChannelGuest,
    },
    guest::RunState,
    machine::QemuMachine,
    metrics::ProtocolMetrics,
    protocol::{
        Backend, EncryptionMode, LimitChange, Limits, MigrationId, MigrationKey, MigrationSpec,
        Transport, spec::Endpoint,
    },
    qemu::QemuGuest,
};

/// The test guest's machine, or why it cannot run here.
pub fn test_machine(memory_mib: u64, dirty_mib_s: u32) -> Result<QemuMachine, String> {
    ferry::qemu::available().map_err(|e| ferry_core::error::report(&e).to_string())?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-guest");
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.gz"));
    if !kernel.is_file() || !initrd.is_file() {
        return Err(format!(
            "no test guest in {} (`cargo xtask setup` builds it)",
            dir.display()
        ));
    }
    Ok(QemuMachine {
        memory: memory_mib << 20,
        vcpus: 1,
        accel: Default::default(),
        machine: "pc".into(),
        kernel: Some(kernel),
        initrd: Some(initrd),
        append: Some(format!(
            "console=ttyS0 quiet panic=-1 ferry.check_mib=16 ferry.dirty_mib_s={dirty_mib_s}"
        )),
        disk: None,
        extra_args: vec!["-no-reboot".into()],
        nic: None,
        devices: Vec::new(),
    })
}

/// A directory for one test's QEMU processes, removed afterwards.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ferry-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A QEMU this test started, ended when the test ends however it ends
/// (QEMU outlives its starter on purpose).
pub struct Started(pub Arc<QemuGuest>);

impl Drop for Started {
    fn drop(&mut self) {
        if self.0.run_state() != RunState::Released {
            self.0.release();
        }
    }
}

impl std::ops::Deref for Started {
    type Target = Arc<QemuGuest>;
    fn deref(&self) -> &Arc<QemuGuest> {
        &self.0
    }
}

/// Waits (bounded) until the guest has passed `more` checks beyond what it
/// had passed at `base`, and returns (passed, failed).
pub fn wait_checks(g: &dyn ChannelGuest, base: u64, more: u64, within: Duration) -> (u64, u64) {
    let until = Instant::now() + within;
    loop {
        let v = g.verdict().unwrap_or((0, 0));
        if v.0 >= base + more || v.1 > 0 || Instant::now() > until {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Running: not gone, and not a zombie (which still answers signal 0).
pub fn alive(pid: u32) -> bool {
    !ferry::qemu::exited(pid)
}

struct Dest {
    registry: Arc<IncomingRegistry>,
    listener: MigrationListener,
    events: mpsc::Receiver<DestinationEvent>,
}

fn destination() -> Dest {
    let (tx, events) = mpsc::channel();
    let tx = Mutex::new(tx);
    let registry = IncomingRegistry::new(
        Backend::default(),
        Some(ProtocolMetrics::new()),
        Duration::from_secs(20),
        move |e| {
            let _ = tx.lock().unwrap().send(e);
        },
    );
    let listener =
        MigrationListener::bind("127.0.0.1:0".parse().unwrap(), registry.clone()).unwrap();
    Dest {
        registry,
        listener,
        events,
    }
}

fn spec(machine: &QemuMachine, streams: u16, transport: Transport, dest: &Dest) -> MigrationSpec {
    MigrationSpec {
        id: MigrationId::generate(),
        guest: "vm1".into(),
        memory: machine.memory,
        source: Endpoint {
            host: "a".into(),
            migration: "127.0.0.1:1".parse().unwrap(),
        },
        destination: Endpoint {
            host: "b".into(),
            migration: dest.listener.local_addr(),
        },
        mode: if transport.encrypted() {
            EncryptionMode::Required
        } else {
            EncryptionMode::Disabled
        },
        setting: if transport.encrypted() {
            EncryptionMode::Required
        } else {
            EncryptionMode::Disabled
        },
        transport,
        key: transport.encrypted().then(MigrationKey::generate),
        nonce: 7,
        streams,
        limits: Limits {
            max_time: Duration::from_secs(120),
            ..Limits::default()
        },
        machine: Some(machine.clone()),
    }
}

/// Boots the test guest and waits for its first check.
fn boot(machine: &QemuMachine, dir: &Path) -> Started {
    let g = Started(Arc::new(
        QemuGuest::launch("vm1", machine, dir, false, None).expect("start QEMU"),
    ));
    let (ok, failed) = wait_checks(&**g, 0, 1, Duration::from_secs(60));
    assert!(
        ok >= 1 && failed == 0,
        "the test guest did not boot and check itself in 60 s (ok {ok}, failed {failed}); serial log in {}",
        dir.display()
    );
    g
}

#[test]
fn a_qemu_guest_moves_encrypted_on_one_and_three_streams_and_in_the_clear_and_checks_itself() {
    let machine = match test_machine(256, 8) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    // Required and Opportunistic moves are encrypted; a Disabled one is not.
    for (streams, transport) in [
        (1u16, Transport::Aes256Gcm),
        (3, Transport::Aes256Gcm),
        (2, Transport::Plaintext),
    ] {
        let scratch = Scratch::new(&format!("qemu-move-{streams}"));
        let src = boot(&machine, &scratch.0.join("a"));
        let src_pid = src.pid().expect("pid");
        let dest = destination();
        let spec = spec(&machine, streams, transport, &dest);
        let twin = Started(Arc::new(
            QemuGuest::launch("vm1", &machine, &scratch.0.join("b"), true, None).expect("twin"),
        ));
        dest.registry
            .prepare_channels(&spec, twin.0.clone())
            .expect("prepare");
        let mut phases = Vec::new();
        let r = ferry::engine::channels::migrate_out(
            src.0.clone(),
            &spec,
            &SourceOptions::default(),
            &mut |p| phases.push(p.phase),
        );
        let stats = r.unwrap_or_else(|f| panic!("{streams} stream(s): migration failed: {f}"));
        assert_eq!(stats.result, MigrationResult::Completed);
        eprintln!(
            "{streams} stream(s), {transport}: {:.2} s, downtime {:.1} ms, {} bytes on the wire, {} passes",
            stats.total_seconds,
            stats.downtime_seconds * 1e3,
            stats.transferred_bytes,
            stats.passes
        );
        assert!(
            stats.transferred_bytes > 1 << 20,
            "{streams} stream(s): only {} bytes crossed",
            stats.transferred_bytes
        );
        assert!(
            stats.downtime_seconds > 0.0 && stats.downtime_seconds < 30.0,
            "{streams} stream(s): downtime {} s",
            stats.downtime_seconds
        );
        match dest.events.recv_timeout(Duration::from_secs(10)) {
            Ok(DestinationEvent::Resumed { .. }) => {}
            Ok(DestinationEvent::Aborted { reason, .. }) => panic!("destination aborted: {reason}"),
            Err(_) => panic!("the destination reported nothing"),
        }
        assert_eq!(src.run_state(), RunState::Released);
        assert_eq!(twin.run_state(), RunState::Running);
        // The source QEMU is gone; the guest runs on and its checks pass.
        let until = Instant::now() + Duration::from_secs(10);
        while alive(src_pid) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !alive(src_pid),
            "the source QEMU (pid {src_pid}) still runs"
        );
        let (ok, failed) = wait_checks(&**twin, 0, 2, Duration::from_secs(60));
        assert!(
            ok >= 2 && failed == 0,
            "{streams} stream(s): after the move the guest passed {ok} checks and failed {failed}"
        );
    }
}

#[test]
fn a_qemu_twin_that_dies_mid_migration_leaves_the_guest_running_on_the_source() {
    let machine = match test_machine(256, 64) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let scratch = Scratch::new("qemu-twin-dies");
    let src = boot(&machine, &scratch.0.join("a"));
    let dest = destination();
    let mut spec = spec(&machine, 2, Transport::Aes256Gcm, &dest);
    // Slow enough that the twin is killed while pages still flow.
    spec.limits.bandwidth = Some(16 << 20);
    let twin = Started(Arc::new(
        QemuGuest::launch("vm1", &machine, &scratch.0.join("b"), true, None).expect("twin"),
    ));
    let twin_pid = twin.pid().expect("pid");
    dest.registry
        .prepare_channels(&spec, twin.0.clone())
        .expect("prepare");
    let mut killed = false;
    let r = ferry::engine::channels::migrate_out(
        src.0.clone(),
        &spec,
        &SourceOptions::default(),
        &mut |p| {
            if !killed && p.transferred_bytes > 8 << 20 {
                // SAFETY: the twin this test started, by its id.
                unsafe { libc::kill(twin_pid as i32, libc::SIGKILL) };
                killed = true;
            }
        },
    );
    assert!(
        killed,
        "the migration ended before the twin could be killed"
    );
    let failed = r.expect_err("the twin died");
    assert!(failed.error.guest_kept(), "{}", failed.error);
    assert!(
        !matches!(failed.error, MigrationError::InDoubt(_)),
        "{}",
        failed.error
    );
    assert_eq!(src.run_state(), RunState::Running);
    let base = src.verdict().unwrap().0;
    let (ok, bad) = wait_checks(&**src, base, 2, Duration::from_secs(60));
    assert!(
        ok >= base + 2 && bad == 0,
        "the guest on the source after the failure: {ok} checks passed (was {base}), {bad} failed"
    );
}

/// Runs a migration of a booted test guest through `relay` (set up by
/// `arrange`; `during` may change its limits as it runs); the
/// destination's verdict and the source's error.
fn migrate_through_relay(
    name: &str,
    dirty_mib_s: u32,
    limits: impl FnOnce(&mut Limits),
    arrange: impl FnOnce(&crate::relay::Relay),
    during: impl FnMut(&ferry::engine::Progress, &crate::relay::Relay, &LiveLimits),
) -> (
    Started,
    Started,
    Result<ferry::engine::MigrationStats, ferry::engine::source::Failed>,
    Option<DestinationEvent>,
    Scratch,
) {
    let machine = test_machine(256, dirty_mib_s).expect("checked by the caller");
    let scratch = Scratch::new(name);
    let src = boot(&machine, &scratch.0.join("a"));
    let dest = destination();
    let relay = crate::relay::Relay::new(dest.listener.local_addr());
    let mut spec = spec(&machine, 2, Transport::Aes256Gcm, &dest);
    spec.destination.migration = relay.addr();
    spec.limits.switchover_timeout = Duration::from_secs(10);
    limits(&mut spec.limits);
    arrange(&relay);
    let twin = Started(Arc::new(
        QemuGuest::launch("vm1", &machine, &scratch.0.join("b"), true, None).expect("twin"),
    ));
    dest.registry
        .prepare_channels(&spec, twin.0.clone())
        .expect("prepare");
    let mut during = during;
    let live = Arc::new(LiveLimits::new(&spec.limits));
    let opts = SourceOptions {
        limits: Some(live.clone()),
        ..SourceOptions::default()
    };
    let r = ferry::engine::channels::migrate_out(src.0.clone(), &spec, &opts, &mut |p| {
        during(p, &relay, &live);
    });
    let ev = dest.events.recv_timeout(Duration::from_secs(20)).ok();
    drop(relay);
    (src, twin, r, ev, scratch)
}

/// The guest runs on at the source and passes more checks; the twin is gone.
fn kept_on_the_source(src: &Started, twin: &Started, ev: Option<DestinationEvent>) {
    assert_eq!(src.run_state(), RunState::Running);
    match ev {
        Some(DestinationEvent::Aborted { .. }) => {}
        Some(DestinationEvent::Resumed { .. }) => panic!("the destination resumed the guest"),
        None => panic!("the destination reported nothing"),
    }
    assert_eq!(twin.run_state(), RunState::Released, "the twin still runs");
    let twin_pid = twin.pid().expect("pid");
    let until = Instant::now() + Duration::from_secs(10);
    while alive(twin_pid) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !alive(twin_pid),
        "the twin QEMU (pid {twin_pid}) still runs"
    );
    let base = src.verdict().unwrap().0;
    let (ok, bad) = wait_checks(&***src, base, 2, Duration::from_secs(60));
    assert!(
        ok >= base + 2 && bad == 0,
        "the guest on the source afterwards: {ok} checks passed (was {base}), {bad} failed"
    );
}

#[test]
fn a_tampered_qemu_stream_is_caught_and_the_guest_stays_on_the_source() {
    if let Err(why) = test_machine(256, 8) {
        eprintln!("skipped: {why}");
        return;
    }
    // One bit, 4 MiB into stream 1 (a multifd channel's pages).
    let (src, twin, r, ev, _s) = migrate_through_relay(
        "qemu-tamper",
        8,
        |_| {},
        |relay| relay.flip_byte(1, 4 << 20),
        |_, _, _| {},
    );
    let failed = r.expect_err("tampering must be detected");
    let msg = failed.error.to_string();
    assert!(
        msg.contains("authentication failed"),
        "the source's error names the destination's finding: {msg}"
    );
    assert!(failed.error.guest_kept());
    kept_on_the_source(&src, &twin, ev);
}

#[test]
fn a_cut_qemu_stream_mid_pass_leaves_the_guest_on_the_source() {
    if let Err(why) = test_machine(256, 64) {
        eprintln!("skipped: {why}");
        return;
    }
    let mut cut = false;
    let (src, twin, r, ev, _s) = migrate_through_relay(
        "qemu-cut",
        64,
        |l| l.bandwidth = Some(16 << 20),
        |_| {},
        |p, relay, _| {
            if !cut && p.transferred_bytes > 4 << 20 {
                relay.cut();
                cut = true;
            }
        },
    );
    assert!(cut, "the migration ended before the cut");
    let failed = r.expect_err("the link died");
    assert!(failed.error.guest_kept(), "{}", failed.error);
    kept_on_the_source(&src, &twin, ev);
}

#[test]
fn a_qemu_guest_that_cannot_converge_gives_up_after_max_time_on_the_source() {
    if let Err(why) = test_machine(256, 96) {
        eprintln!("skipped: {why}");
        return;
    }
    // It rewrites 96 MiB/s; the link gives it 8 MiB/s and no throttling.
    let (src, twin, r, ev, _s) = migrate_through_relay(
        "qemu-giveup",
        96,
        |l| {
            l.bandwidth = Some(8 << 20);
            l.throttle_initial = 0;
            l.throttle_step = 0;
            l.throttle_max = 0;
            l.downtime_limit = Duration::from_millis(50);
            l.max_time = Duration::from_secs(6);
        },
        |_| {},
        // `ferry migrate-set` while it runs: QEMU is told (still too slow
        // and too strict to converge).
        |p, _, live| {
            if p.phase == ferry::engine::Phase::PreCopy && live.changes() == 0 {
                live.apply(&LimitChange {
                    bandwidth: Some(7 << 20),
                    downtime_limit_us: Some(40_000),
                });
            }
        },
    );
    let failed = r.expect_err("it cannot converge");
    assert!(
        matches!(failed.error, MigrationError::GaveUp { .. }),
        "{}",
        failed.error
    );
    // QEMU sees only ferry's local socket: the rate it plans the
    // switch-over with is the one ferry measured on its streams (here,
    // what the 6 s carried on average, give or take a factor of two for
    // the last window's burst), not QEMU's default of none.
    let wire = failed.stats.transferred_bytes as f64 / failed.stats.total_seconds.max(0.1);
    let params = src
        .0
        .execute("query-migrate-parameters", serde_json::json!({}))
        .unwrap();
    let avail = params["avail-switchover-bandwidth"].as_u64().unwrap_or(0) as f64;
    assert_eq!(
        (
            params["max-bandwidth"].as_u64(),
            params["downtime-limit"].as_u64()
        ),
        (Some(7 << 20), Some(40)),
        "the limits changed while it ran reached QEMU: {params}"
    );
    assert_eq!(failed.stats.downtime_limit_seconds, 0.04);
    assert!(
        (0.5 * wire..=2.0 * wire).contains(&avail),
        "expected avail-switchover-bandwidth within 0.5x..2x of the {wire:.0} B/s ferry carried on average, saw {avail} B/s: {params}"
    );
    kept_on_the_source(&src, &twin, ev);
}
