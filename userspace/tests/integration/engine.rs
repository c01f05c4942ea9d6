//! The migration engine end to end on loopback: real streams, real guests,
//! the kernel dirty log; memory compared page by page at stun and resume.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use ferry::{
    engine::{
        DestinationEvent, IncomingRegistry, LiveLimits, MigrationError, MigrationListener,
        MigrationResult, Outcome, Phase, Progress, SourceOptions, migrate_out, source::Failed,
    },
    guest::{
        Guest, GuestError, GuestInfo, GuestMemory, PAGE_SIZE, RunState, Sample, SyntheticConfig,
        SyntheticGuest, WorkloadSpec,
    },
    metrics::ProtocolMetrics,
    protocol::{
        Backend, EncryptionMode, LimitChange, Limits, MemoryCheck, MigrationId, MigrationKey,
        MigrationSpec, Transport, spec::Endpoint,
    },
};

use crate::relay::{AfterLimit, Relay};

/// Delegates to a synthetic guest and copies its memory when the source has
/// stunned it, or when the destination is about to resume it.
struct Snapshot {
    inner: Arc<SyntheticGuest>,
    at_pause: bool,
    snap: Mutex<Option<Vec<u8>>>,
    /// At pause: the guest's other copy, and how many of its pages differ
    /// from this one's then.
    peer: Option<Arc<SyntheticGuest>>,
    peer_lag: Mutex<Option<usize>>,
}

impl Snapshot {
    fn new(inner: Arc<SyntheticGuest>, at_pause: bool) -> Arc<Self> {
        Arc::new(Self {
            inner,
            at_pause,
            snap: Mutex::new(None),
            peer: None,
            peer_lag: Mutex::new(None),
        })
    }
    /// A source that counts, when it is stunned, the pages `peer` (the
    /// incoming copy) does not hold yet.
    fn watching(inner: Arc<SyntheticGuest>, peer: Arc<SyntheticGuest>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            at_pause: true,
            snap: Mutex::new(None),
            peer: Some(peer),
            peer_lag: Mutex::new(None),
        })
    }
    fn copy(&self) {
        let m = self.inner.memory();
        let mut out = vec![0u8; m.len() as usize];
        for p in 0..m.pages() {
            m.read_page(p, &mut out[p * PAGE_SIZE..(p + 1) * PAGE_SIZE]);
        }
        *self.snap.lock().unwrap() = Some(out);
    }
    fn take(&self) -> Vec<u8> {
        self.snap
            .lock()
            .unwrap()
            .take()
            .expect("no snapshot was taken")
    }
}

impl Guest for Snapshot {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn memory(&self) -> &GuestMemory {
        self.inner.memory()
    }
    fn run_state(&self) -> RunState {
        self.inner.run_state()
    }
    fn pause(&self) -> Result<(), GuestError> {
        self.inner.pause()?;
        if self.at_pause {
            self.copy();
        }
        if let Some(peer) = &self.peer {
            let (a, b) = (self.inner.memory(), peer.memory());
            let (mut x, mut y) = (vec![0u8; PAGE_SIZE], vec![0u8; PAGE_SIZE]);
            let lag = (0..a.pages())
                .filter(|&p| {
                    a.read_page(p, &mut x);
                    b.read_page(p, &mut y);
                    x != y
                })
                .count();
            *self.peer_lag.lock().unwrap() = Some(lag);
        }
        Ok(())
    }
    fn resume(&self) -> Result<(), GuestError> {
        if !self.at_pause {
            self.copy();
        }
        self.inner.resume()
    }
    fn set_throttle(&self, p: u8) {
        self.inner.set_throttle(p)
    }
    fn throttle(&self) -> u8 {
        self.inner.throttle()
    }
    fn save_state(&self) -> Result<Vec<u8>, GuestError> {
        self.inner.save_state()
    }
    fn restore_state(&self, s: &[u8]) -> Result<(), GuestError> {
        self.inner.restore_state(s)
    }
    fn release(&self) {
        self.inner.release()
    }
    fn info(&self) -> GuestInfo {
        self.inner.info()
    }
    fn timeline(&self) -> Vec<Sample> {
        self.inner.timeline()
    }
}

struct Dest {
    registry: Arc<IncomingRegistry>,
    listener: MigrationListener,
    events: mpsc::Receiver<DestinationEvent>,
    metrics: ProtocolMetrics,
}

fn destination() -> Dest {
    destination_with(Duration::from_secs(10), |_| {})
}

/// A destination whose host sees each event in `seen` before the test does.
fn destination_with(
    switchover: Duration,
    seen: impl Fn(&DestinationEvent) + Send + Sync + 'static,
) -> Dest {
    let metrics = ProtocolMetrics::new();
    let (tx, events) = mpsc::channel();
    let tx = Mutex::new(tx);
    let registry = IncomingRegistry::new(
        Backend::RustCrypto,
        Some(metrics.clone()),
        switchover,
        move |e| {
            seen(&e);
            let _ = tx.lock().unwrap().send(e);
        },
    );
    let listener =
        MigrationListener::bind("127.0.0.1:0".parse().unwrap(), registry.clone()).unwrap();
    Dest {
        registry,
        listener,
        events,
        metrics,
    }
}

fn spec(
    memory: u64,
    streams: u16,
    transport: Transport,
    to: SocketAddr,
    limits: Limits,
) -> MigrationSpec {
    MigrationSpec {
        id: MigrationId::generate(),
        guest: "g1".into(),
        memory,
        source: Endpoint {
            host: "src".into(),
            migration: "127.0.0.1:1".parse().unwrap(),
        },
        destination: Endpoint {
            host: "dst".into(),
            migration: to,
        },
        mode: EncryptionMode::Opportunistic,
        setting: EncryptionMode::Opportunistic,
        transport,
        key: transport.encrypted().then(MigrationKey::generate),
        nonce: 0x1234_5678,
        streams,
        limits,
        machine: None,
    }
}

fn kv_guest(memory: u64, gets: u64, sets: u64, prefill: bool) -> Arc<SyntheticGuest> {
    let cfg = SyntheticConfig {
        memory,
        vcpus: 2,
        workload: WorkloadSpec::KeyValue {
            gets_per_second: gets,
            sets_per_second: sets,
        },
        prefill,
        seed: 11,
    };
    SyntheticGuest::boot("g1", &cfg).unwrap()
}

struct Run {
    result: Result<ferry::engine::MigrationStats, Failed>,
    src: Arc<Snapshot>,
    dst: Arc<Snapshot>,
    phases: Vec<Phase>,
}

fn migrate(
    src: Arc<SyntheticGuest>,
    dest: &Dest,
    spec: &MigrationSpec,
    on_progress: impl FnMut(&Progress),
) -> Run {
    let opts = SourceOptions {
        backend: Backend::AwsLc,
        ..Default::default()
    };
    migrate_with(src, dest, spec, &opts, on_progress)
}

fn migrate_with(
    src: Arc<SyntheticGuest>,
    dest: &Dest,
    spec: &MigrationSpec,
    opts: &SourceOptions,
    on_progress: impl FnMut(&Progress),
) -> Run {
    let src = Snapshot::new(src, true);
    let dst = Snapshot::new(SyntheticGuest::incoming("g1", spec.memory).unwrap(), false);
    dest.registry.prepare(spec, dst.clone()).unwrap();
    let mut phases = Vec::new();
    let mut cb = on_progress;
    let result = migrate_out(src.clone(), spec, opts, &mut |p: &Progress| {
        if phases.last() != Some(&p.phase) {
            phases.push(p.phase);
        }
        cb(p)
    });
    Run {
        result,
        src,
        dst,
        phases,
    }
}

/// A source guest under a light key/value load and an incoming guest, with
/// `spec` prepared at `dest`.
fn prepared_pair(dest: &Dest, spec: &MigrationSpec) -> (Arc<Snapshot>, Arc<Snapshot>) {
    let src = Snapshot::new(kv_guest(spec.memory, 5_000, 5_000, true), true);
    let dst = Snapshot::new(SyntheticGuest::incoming("g1", spec.memory).unwrap(), false);
    dest.registry.prepare(spec, dst.clone()).unwrap();
    (src, dst)
}

fn pages_differing(a: &[u8], b: &[u8]) -> usize {
    a.chunks(PAGE_SIZE)
        .zip(b.chunks(PAGE_SIZE))
        .filter(|(x, y)| x != y)
        .count()
}

/// Once decided, the registry drops its hold on the guest (its memory is the
/// host's now, or gone) and keeps only what answers outcome queries.
fn settled(d: &Dest) {
    for _ in 0..500 {
        if d.registry.pending() == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the registry still holds {} guest(s)", d.registry.pending());
}

fn wait_event(d: &Dest) -> DestinationEvent {
    d.events
        .recv_timeout(Duration::from_secs(20))
        .expect("the destination reported nothing")
}

#[test]
fn encrypted_kv_guest_arrives_byte_identical_and_keeps_running() {
    let dest = destination();
    let memory = 64 << 20;
    let spec = spec(
        memory,
        2,
        Transport::Aes256Gcm,
        dest.listener.local_addr(),
        Limits::default(),
    );
    let run = migrate(kv_guest(memory, 20_000, 20_000, true), &dest, &spec, |_| {});
    let stats = run
        .result
        .unwrap_or_else(|f| panic!("migration failed: {f}"));
    assert_eq!(stats.result, MigrationResult::Completed);
    // Every page of the destination at resume equals the source at stun.
    let (a, b) = (run.src.take(), run.dst.take());
    assert_eq!(a.len(), memory as usize);
    assert_eq!(
        pages_differing(&a, &b),
        0,
        "pages differ between stun and resume"
    );
    assert_eq!(
        run.src.run_state(),
        RunState::Released,
        "the source let go of the guest"
    );
    assert_eq!(
        run.dst.run_state(),
        RunState::Running,
        "the guest runs on the destination"
    );
    match wait_event(&dest) {
        DestinationEvent::Resumed { id, stats: d, .. } => {
            assert_eq!(id, spec.id);
            assert!(d.pages >= memory / PAGE_SIZE as u64);
        }
        DestinationEvent::Aborted { reason, .. } => panic!("destination aborted: {reason}"),
    }
    assert_eq!(dest.registry.outcome(&spec.id), Some(Outcome::Resumed));
    settled(&dest);
    // The workload continues on the new host and every GET finds intact data.
    let (ops0, _) = run.dst.inner.counters();
    for _ in 0..500 {
        if run.dst.inner.counters().0 > ops0 + 1000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (ops1, errors) = run.dst.inner.counters();
    assert!(ops1 > ops0, "the workload runs after the move");
    assert_eq!(errors, 0, "GETs on the destination found corrupt slots");
    // Accounting.
    assert!(
        stats.passes >= 2,
        "at least one pre-copy pass and the final one"
    );
    assert_eq!(stats.pass_history.len() as u32, stats.passes);
    assert!(stats.pass_history.last().unwrap().stunned);
    assert_eq!(
        stats.normal_pages + stats.zero_pages,
        stats.pass_history.iter().map(|p| p.pages).sum::<u64>()
    );
    assert!(
        stats.normal_pages >= memory / PAGE_SIZE as u64,
        "every prefilled page went at least once"
    );
    assert!(
        stats.transferred_bytes > memory,
        "the wire carried at least the memory"
    );
    assert!(stats.downtime_seconds > 0.0 && stats.downtime_seconds < stats.total_seconds);
    assert!(stats.seal_cpu_seconds > 0.0, "sealing cost is measured");
    assert_eq!(stats.dirty_log, "kernel");
    assert_eq!(run.phases.first(), Some(&Phase::Setup));
    assert_eq!(run.phases.last(), Some(&Phase::Completed));
    assert!(run.phases.contains(&Phase::Switchover));
    for r in ferry::protocol::ProtocolError::REASONS {
        assert_eq!(dest.metrics.rejected(r), 0, "{r}");
    }
}

#[test]
fn plaintext_migration_of_a_fresh_guest_sends_zero_pages_as_markers() {
    let dest = destination();
    let memory = 32 << 20;
    // No prefill: most of the guest is zero pages.
    let spec = spec(
        memory,
        3,
        Transport::Plaintext,
        dest.listener.local_addr(),
        Limits::default(),
    );
    let run = migrate(kv_guest(memory, 2_000, 2_000, false), &dest, &spec, |_| {});
    let stats = run
        .result
        .unwrap_or_else(|f| panic!("migration failed: {f}"));
    assert_eq!(pages_differing(&run.src.take(), &run.dst.take()), 0);
    assert!(
        stats.zero_pages > (memory / PAGE_SIZE as u64) / 2,
        "{} zero pages",
        stats.zero_pages
    );
    // A zero page costs 4 bytes on the wire, not 4096.
    assert!(
        stats.transferred_bytes < memory / 4,
        "{} bytes for a mostly empty guest",
        stats.transferred_bytes
    );
    assert_eq!(stats.transport, Transport::Plaintext);
}

#[test]
fn the_stun_starts_once_the_destination_holds_every_precopied_page() {
    // A slow link (16 MB/s) whose sockets hold a backlog of pass 0 when the
    // source has handed it all over. The stun must not begin until that
    // backlog is in the destination's memory: otherwise the downtime pays
    // for it, growing with the link's buffers and the guest's size. The
    // guest is prefilled and idle, so nothing it dirties can explain a
    // difference.
    let dest = destination();
    let relay = Relay::new(dest.listener.local_addr());
    relay.pace(16 << 20);
    let memory = 8 << 20;
    let spec = spec(
        memory,
        1,
        Transport::Aes256Gcm,
        relay.addr(),
        Limits::default(),
    );
    let dst = SyntheticGuest::incoming("g1", memory).unwrap();
    let src = Snapshot::watching(kv_guest(memory, 0, 0, true), dst.clone());
    let dst = Snapshot::new(dst, false);
    dest.registry.prepare(&spec, dst.clone()).unwrap();
    let opts = SourceOptions {
        backend: Backend::AwsLc,
        ..Default::default()
    };
    let stats = migrate_out(src.clone(), &spec, &opts, &mut |_| {}).expect("migrates");
    let lag = src
        .peer_lag
        .lock()
        .unwrap()
        .expect("the source was stunned");
    assert_eq!(
        lag,
        0,
        "at the stun the destination still lacked {lag} pre-copied pages (drain {:.1} ms)",
        stats.drain_seconds * 1e3
    );
    assert_eq!(
        stats.pass_history.last().unwrap().pages,
        0,
        "idle: nothing dirtied"
    );
    let stun = &stats.stun;
    let parts =
        stun.pause_seconds + stun.final_pass_seconds + stun.ready_seconds + stun.commit_seconds;
    assert!(
        (parts - stats.downtime_seconds).abs() < 1e-6,
        "the stun's steps {stun:?} add up to the downtime {}",
        stats.downtime_seconds
    );
    assert!(matches!(
        wait_event(&dest),
        DestinationEvent::Resumed { .. }
    ));
}

#[test]
fn verify_memory_compares_digests_before_resuming() {
    for check in [MemoryCheck::Pages, MemoryCheck::Full] {
        let dest = destination();
        let memory = 32 << 20;
        let limits = Limits {
            verify_memory: check,
            ..Limits::default()
        };
        let spec = spec(
            memory,
            2,
            Transport::Aes256Gcm,
            dest.listener.local_addr(),
            limits,
        );
        let run = migrate(kv_guest(memory, 10_000, 10_000, true), &dest, &spec, |_| {});
        let stats = run
            .result
            .unwrap_or_else(|f| panic!("{check:?}: migration failed: {f}"));
        assert_eq!(stats.memory_identical, Some(true), "{check:?}");
        assert_eq!(stats.note, None, "{check:?}");
        match wait_event(&dest) {
            DestinationEvent::Resumed { stats: d, .. } => {
                assert_eq!(d.memory_identical, Some(true), "{check:?}")
            }
            DestinationEvent::Aborted { reason, .. } => panic!("{check:?}: {reason}"),
        }
        assert_eq!(
            pages_differing(&run.src.take(), &run.dst.take()),
            0,
            "{check:?}"
        );
    }
}

#[test]
fn a_write_the_dirty_log_missed_is_caught_by_either_memory_check() {
    // The software dirty log sees writes made through `store`; `write_page`
    // goes around it, as a write a buggy dirty log missed would. One page
    // is rewritten that way once pass 0 has sent it: the destination ends
    // with its old contents. `full` hashes all memory in the stun and
    // refuses; `pages` learns it after the release, when the source reads
    // its memory against what it sent, and says so.
    for check in [MemoryCheck::Full, MemoryCheck::Pages] {
        let dest = destination();
        let memory = 16 << 20;
        let limits = Limits {
            verify_memory: check,
            ..Limits::default()
        };
        let spec = spec(
            memory,
            2,
            Transport::Aes256Gcm,
            dest.listener.local_addr(),
            limits,
        );
        // Prefilled and idle: nothing else dirties a page.
        let src = kv_guest(memory, 0, 0, true);
        let dst = Snapshot::new(SyntheticGuest::incoming("g1", memory).unwrap(), false);
        dest.registry.prepare(&spec, dst.clone()).unwrap();
        let opts = SourceOptions {
            backend: Backend::AwsLc,
            software_dirty_log: true,
            ..Default::default()
        };
        let mut written = false;
        let (g, victim) = (src.clone(), 1234);
        let result = migrate_out(src.clone(), &spec, &opts, &mut |p: &Progress| {
            if p.phase == Phase::PreCopy && p.transferred_bytes >= memory && !written {
                g.memory().write_page(victim, &[0x5a; PAGE_SIZE]);
                written = true;
            }
        });
        assert!(written, "{check:?}: pass 0 ended");
        match check {
            MemoryCheck::Full => {
                let failed = result.expect_err("full: the stun-time digests differ");
                assert!(
                    ferry_core::error::report(&failed.error)
                        .to_string()
                        .contains("digest mismatch"),
                    "{}",
                    ferry_core::error::report(&failed.error)
                );
                assert!(
                    failed.error.guest_kept(),
                    "{}",
                    ferry_core::error::report(&failed.error)
                );
                assert_eq!(src.run_state(), RunState::Running);
            }
            _ => {
                let stats = result.unwrap_or_else(|f| panic!("pages: {f}"));
                assert_eq!(
                    stats.memory_identical,
                    Some(false),
                    "pages: the source's memory no longer matches what it sent"
                );
                let note = stats.note.unwrap_or_default();
                assert!(
                    note.contains("1 page(s)")
                        && note.contains("the first: 1234")
                        && note.contains("dirty log"),
                    "pages: the note says what went wrong: {note:?}"
                );
            }
        }
    }
}

/// A prefilled guest of `memory` running `workload` on `vcpus`, moved
/// encrypted on 2 streams under `limits`.
fn moved(
    dest: &Dest,
    memory: u64,
    limits: Limits,
    vcpus: usize,
    workload: WorkloadSpec,
    seed: u64,
) -> (MigrationSpec, Run) {
    let spec = spec(
        memory,
        2,
        Transport::Aes256Gcm,
        dest.listener.local_addr(),
        limits,
    );
    let cfg = SyntheticConfig {
        memory,
        vcpus,
        workload,
        prefill: true,
        seed,
    };
    let run = migrate(
        SyntheticGuest::boot("g1", &cfg).unwrap(),
        dest,
        &spec,
        |_| {},
    );
    (spec, run)
}

#[test]
fn sdps_throttles_a_guest_that_outruns_the_link_until_it_converges() {
    let dest = destination();
    // The link carries 16 MB/s; the guest writes 48 MB/s.
    let limits = Limits {
        bandwidth: Some(16 << 20),
        ..Limits::default()
    };
    let stream = WorkloadSpec::Stream {
        bytes_per_second: 48 << 20,
    };
    let (_, run) = moved(&dest, 32 << 20, limits, 2, stream, 3);
    let stats = run
        .result
        .unwrap_or_else(|f| panic!("migration failed: {f}"));
    assert!(
        stats.throttle_max_percent >= 20,
        "SDPS engaged: {}%",
        stats.throttle_max_percent
    );
    // Throttling grows pass by pass while the guest outruns the link.
    let throttles: Vec<u8> = stats
        .pass_history
        .iter()
        .map(|p| p.throttle_percent)
        .collect();
    assert!(throttles.windows(2).all(|w| w[1] >= w[0]), "{throttles:?}");
    assert_eq!(pages_differing(&run.src.take(), &run.dst.take()), 0);
    assert_eq!(
        run.dst.inner.throttle(),
        0,
        "the guest is not throttled on arrival"
    );
}

#[test]
fn a_busy_guest_that_fits_the_limit_is_shrunk_to_the_knee_before_the_stun() {
    use ferry::engine::converge::{self, Next, PassEnd};
    let dest = destination();
    // At 64 MiB/s pass 0 takes about a second, while which 2,000 SETs dirty
    // about 1,900 pages: a stun of about 0.12 s, inside the 300 ms limit at
    // once. Each pass after it dirties about an eighth of what it sends.
    let limits = Limits {
        bandwidth: Some(64 << 20),
        ..Limits::default()
    };
    let sets = WorkloadSpec::KeyValue {
        gets_per_second: 0,
        sets_per_second: 2_000,
    };
    let (spec, run) = moved(&dest, 64 << 20, limits, 1, sets, 5);
    let stats = run
        .result
        .unwrap_or_else(|f| panic!("migration failed: {f}"));
    let passes: Vec<(u64, u64, f64)> = stats
        .pass_history
        .iter()
        .map(|p| (p.pages, p.dirtied_pages, p.expected_downtime_seconds))
        .collect();
    let (stunned, precopy) = stats.pass_history.split_last().expect("passes");
    assert!(stunned.stunned && precopy.iter().all(|p| !p.stunned));
    let limit = spec.limits.downtime_limit.as_secs_f64();
    let first_fit = precopy
        .iter()
        .position(|p| p.expected_downtime_seconds <= limit)
        .unwrap_or_else(|| panic!("no pass fitted the limit: {passes:?}"));
    // Every pass the rule saw, it decided as the rule says; the last one
    // switched over, each before it asked for another.
    for (i, p) in precopy.iter().enumerate() {
        let end = PassEnd {
            sent: p.pages,
            dirtied: p.dirtied_pages,
            expected_seconds: p.expected_downtime_seconds,
            limit_seconds: limit,
            fitted_passes: (i >= first_fit).then(|| (i - first_fit) as u32),
            out_of_time: false,
        };
        let want = if i + 1 == precopy.len() {
            Next::SwitchOver
        } else if i >= first_fit {
            Next::Shrink
        } else {
            Next::Converge
        };
        assert_eq!(converge::next(&end), want, "pass {i} of {passes:?}");
    }
    // What the stun sent is a fraction of the set that first fitted.
    let fitted = precopy[first_fit].dirtied_pages;
    assert!(
        fitted >= 500 && stunned.pages * 4 <= fitted,
        "the first pass that fitted left {fitted} pages dirty; the stun sent {} \
         (expected at most a quarter): {passes:?}",
        stunned.pages
    );
    assert_eq!(pages_differing(&run.src.take(), &run.dst.take()), 0);
    assert_eq!(
        stats.throttle_max_percent, 0,
        "a guest that fits is never throttled"
    );
}

#[test]
fn a_downtime_over_its_limit_is_said_in_the_result_summary_json_and_metrics() {
    use ferry::metrics::migration::{MigrationMetrics, Role};
    let dest = destination();
    let idle = |limit: Duration| {
        let limits = Limits {
            downtime_limit: limit,
            ..Limits::default()
        };
        let (_, run) = moved(&dest, 16 << 20, limits, 1, WorkloadSpec::Idle, 9);
        assert!(matches!(
            wait_event(&dest),
            DestinationEvent::Resumed { .. }
        ));
        run.result
            .unwrap_or_else(|f| panic!("migration failed: {f}"))
    };
    let over_limit_total = |m: &MigrationMetrics| {
        let reg = prometheus::Registry::new();
        m.register_host(&reg).unwrap();
        reg.gather()
            .iter()
            .find(|f| f.name() == "ferry_migration_downtime_over_limit_total")
            .map(|f| f.get_metric()[0].get_counter().value())
            .expect("the family is registered")
    };
    let metrics = MigrationMetrics::new(&[Role::Source]).unwrap();

    // An idle guest predicts a stun of nothing, which fits 1 µs; no real
    // stun is that short.
    let over = idle(Duration::from_micros(1));
    assert!(
        over.downtime_seconds > 1e-6 && over.downtime_over_limit,
        "downtime {} s against a 1 µs limit, over_limit {}",
        over.downtime_seconds,
        over.downtime_over_limit
    );
    let json = serde_json::to_value(&over).unwrap();
    assert_eq!(json["downtime_over_limit"], true, "{json}");
    let text = ferry::client::summary(&over);
    assert!(
        text.contains("completed, the downtime over its limit") && text.contains("OVER THE LIMIT"),
        "{text}"
    );
    metrics.source_finished(&over);
    assert_eq!(over_limit_total(&metrics), 1.0);

    // Within the default 300 ms: nothing said, nothing counted.
    let within = idle(Limits::default().downtime_limit);
    assert!(!within.downtime_over_limit, "{}", within.downtime_seconds);
    let text = ferry::client::summary(&within);
    assert!(
        !text.contains("OVER") && !text.contains("over its limit"),
        "{text}"
    );
    metrics.source_finished(&within);
    assert_eq!(over_limit_total(&metrics), 1.0);
}

/// A guest of `memory` that writes 32 MB/s, unthrottled, behind a 4 MiB/s
/// cap: under the default downtime limit it can never converge.
fn outrunning(
    dest: &Dest,
    memory: u64,
    streams: u16,
    max_time: Duration,
) -> (MigrationSpec, Arc<SyntheticGuest>) {
    let limits = Limits {
        bandwidth: Some(4 << 20),
        max_time,
        throttle_initial: 0,
        throttle_step: 0,
        throttle_max: 0,
        ..Limits::default()
    };
    let spec = spec(
        memory,
        streams,
        Transport::Aes256Gcm,
        dest.listener.local_addr(),
        limits,
    );
    let cfg = SyntheticConfig {
        memory,
        vcpus: 1,
        workload: WorkloadSpec::Stream {
            bytes_per_second: 32 << 20,
        },
        prefill: true,
        seed: 3,
    };
    (spec, SyntheticGuest::boot("g1", &cfg).unwrap())
}

#[test]
fn gives_up_after_max_time_and_the_guest_keeps_running_on_the_source() {
    let dest = destination();
    let (spec, guest) = outrunning(&dest, 16 << 20, 1, Duration::from_secs(2));
    let run = migrate(guest, &dest, &spec, |_| {});
    let failed = run.result.expect_err("cannot converge");
    assert!(
        matches!(failed.error, MigrationError::GaveUp { .. }),
        "{}",
        ferry_core::error::report(&failed.error)
    );
    assert!(failed.error.guest_kept());
    assert_eq!(
        run.src.run_state(),
        RunState::Running,
        "the guest never stopped on the source"
    );
    assert_eq!(run.src.throttle(), 0);
    match wait_event(&dest) {
        DestinationEvent::Aborted { .. } => {}
        DestinationEvent::Resumed { .. } => {
            panic!("the destination resumed a guest the source kept")
        }
    }
    assert_eq!(
        run.dst.run_state(),
        RunState::Released,
        "the destination discarded its copy"
    );
    assert!(matches!(
        dest.registry.outcome(&spec.id),
        Some(Outcome::Aborted(_))
    ));
    settled(&dest);
    assert!(
        matches!(dest.registry.outcome(&spec.id), Some(Outcome::Aborted(_))),
        "still answerable"
    );
}

/// [`outrunning`], with `change` applied to the running migration once
/// its first pass has ended; every progress report it made.
fn changed_while_running(change: LimitChange) -> (Run, Vec<Progress>) {
    let dest = destination();
    let (spec, guest) = outrunning(&dest, 8 << 20, 2, Duration::from_secs(40));
    let live = Arc::new(LiveLimits::new(&spec.limits));
    let opts = SourceOptions {
        backend: Backend::AwsLc,
        limits: Some(live.clone()),
        ..Default::default()
    };
    let mut reports = Vec::new();
    let run = migrate_with(guest, &dest, &spec, &opts, |p| {
        reports.push(p.clone());
        if p.pass >= 1 && live.changes() == 0 {
            live.apply(&change);
        }
    });
    assert_eq!(live.changes(), 1, "the change was applied once");
    if run.result.is_ok() {
        assert!(matches!(
            wait_event(&dest),
            DestinationEvent::Resumed { .. }
        ));
    }
    (run, reports)
}

#[test]
fn a_cap_lifted_while_it_runs_lets_a_migration_converge() {
    let (run, reports) = changed_while_running(LimitChange {
        bandwidth: Some(0),
        downtime_limit_us: None,
    });
    // Issue 16: progress is live within a pass (2 s at the cap here), not
    // 0 until the pass ends: the pass's own share, its rate so far, an ETA.
    let in_pass: Vec<&Progress> = reports
        .iter()
        .filter(|p| p.phase == Phase::PreCopy && p.pass == 0)
        .filter(|p| p.pass_total_bytes > 0 && p.pass_bytes < p.pass_total_bytes)
        .collect();
    assert!(
        in_pass.len() >= 2,
        "expected reports during pass 0, got {in_pass:?}"
    );
    for p in &in_pass {
        assert!(
            p.transfer_rate > 0.0 && p.transfer_rate < 8.4e6 && p.eta_seconds.is_some(),
            "during pass 0 at the 4 MiB/s cap: a rate above 0 and under twice the cap, and an ETA; got {p:?}"
        );
    }
    assert!(
        in_pass
            .windows(2)
            .all(|w| w[1].pass_bytes >= w[0].pass_bytes),
        "the pass's progress never goes back: {in_pass:?}"
    );
    let end0 = reports
        .iter()
        .find(|p| p.pass == 0 && p.pass_total_bytes > 0 && p.pass_bytes == p.pass_total_bytes)
        .expect("a report at the end of pass 0");
    assert!(
        end0.expected_downtime_seconds > 0.3,
        "pass 0 predicts the stun its dirt would cost: {end0:?}"
    );
    let stats = run.result.unwrap_or_else(|f| {
        panic!("under its first cap it could not converge; lifted, it must: {f}")
    });
    // A pass's rate leaves out the wait after its last record, so a paced
    // pass may read somewhat above the cap (4.2 MB/s).
    let first = stats.pass_history[0].transfer_rate;
    let after = stats.pass_history[1..]
        .iter()
        .map(|p| p.transfer_rate)
        .fold(0.0, f64::max);
    assert!(
        first <= 6.3e6 && after > 16.8e6,
        "pass 0 paced to the 4 MiB/s cap, a later pass free of it: expected <= 6.3 MB/s, then > 16.8 MB/s; got {:.1}, then at most {:.1} MB/s",
        first / 1e6,
        after / 1e6
    );
    assert_eq!(pages_differing(&run.src.take(), &run.dst.take()), 0);
}

#[test]
fn a_downtime_limit_raised_while_it_runs_lets_a_migration_converge() {
    let (run, _) = changed_while_running(LimitChange {
        bandwidth: None,
        downtime_limit_us: Some(30_000_000),
    });
    let stats = run
        .result
        .unwrap_or_else(|f| panic!("under 300 ms it could not converge; under 30 s it must: {f}"));
    assert_eq!(
        stats.downtime_limit_seconds, 30.0,
        "the result reports the limit it switched over under"
    );
    let over: Vec<f64> = stats
        .pass_history
        .iter()
        .filter(|p| !p.stunned)
        .map(|p| p.expected_downtime_seconds)
        .collect();
    assert!(
        over[0] > 0.3,
        "pass 0 predicted more than the first limit: {over:?}"
    );
    assert_eq!(pages_differing(&run.src.take(), &run.dst.take()), 0);
}

#[test]
fn destination_gone_mid_pass_leaves_the_guest_running_on_the_source() {
    let dest = destination();
    let relay = Relay::new(dest.listener.local_addr());
    let memory = 64 << 20;
    let limits = Limits {
        bandwidth: Some(32 << 20),
        ..Limits::default()
    };
    let spec = spec(memory, 2, Transport::Aes256Gcm, relay.addr(), limits);
    let run = migrate(kv_guest(memory, 5_000, 5_000, true), &dest, &spec, |p| {
        if p.phase == Phase::PreCopy && p.transferred_bytes > 4 << 20 {
            relay.cut();
        }
    });
    let failed = run.result.expect_err("the link died");
    assert!(
        matches!(failed.error, MigrationError::Stream { .. }),
        "{}",
        ferry_core::error::report(&failed.error)
    );
    assert_eq!(run.src.run_state(), RunState::Running);
    assert!(matches!(
        wait_event(&dest),
        DestinationEvent::Aborted { .. }
    ));
    assert_eq!(
        run.dst.run_state(),
        RunState::Released,
        "no running copy on the destination"
    );
    // The guest keeps working on the source.
    let (ops, errors) = run.src.inner.counters();
    std::thread::sleep(Duration::from_millis(200));
    assert!(run.src.inner.counters().0 > ops);
    assert_eq!(errors, 0);
}

#[test]
fn connection_cut_during_switchover_resumes_the_guest_on_the_source() {
    let dest = destination();
    let relay = Relay::new(dest.listener.local_addr());
    let memory = 32 << 20;
    let spec = spec(
        memory,
        2,
        Transport::Aes256Gcm,
        relay.addr(),
        Limits::default(),
    );
    let run = migrate(kv_guest(memory, 5_000, 5_000, true), &dest, &spec, |p| {
        if p.phase == Phase::Switchover {
            relay.cut();
        }
    });
    let failed = run.result.expect_err("cut during switch-over");
    assert!(
        failed.error.guest_kept(),
        "{}",
        ferry_core::error::report(&failed.error)
    );
    assert_eq!(
        run.src.run_state(),
        RunState::Running,
        "stunned guest resumed on the source"
    );
    assert!(matches!(
        wait_event(&dest),
        DestinationEvent::Aborted { .. }
    ));
    assert_eq!(run.dst.run_state(), RunState::Released);
}

#[test]
fn a_record_tampered_with_on_the_wire_fails_the_migration_safely() {
    // Encrypted, the tag catches it; in plaintext, the record's CRC32C does
    // (Disabled means unencrypted, not unchecked).
    for (transport, detail, reason) in [
        (Transport::Aes256Gcm, "authentication failed", "decrypt"),
        (Transport::Plaintext, "checksum mismatch", "checksum"),
    ] {
        let dest = destination();
        let relay = Relay::new(dest.listener.local_addr());
        let memory = 32 << 20;
        let spec = spec(memory, 1, transport, relay.addr(), Limits::default());
        // One bit, a megabyte into the only stream: inside some page.
        relay.flip_byte(0, 1 << 20);
        let run = migrate(kv_guest(memory, 5_000, 5_000, true), &dest, &spec, |_| {});
        assert!(relay.flipped());
        let failed = run
            .result
            .expect_err(&format!("{transport}: tampering must be detected"));
        assert!(
            failed.error.guest_kept(),
            "{}",
            ferry_core::error::report(&failed.error)
        );
        assert_eq!(run.src.run_state(), RunState::Running);
        match wait_event(&dest) {
            DestinationEvent::Aborted { reason: why, .. } => {
                assert!(
                    why.contains(detail),
                    "{transport}: expected {detail:?} in {why:?}"
                )
            }
            DestinationEvent::Resumed { .. } => panic!("{transport}: resumed a tampered guest"),
        }
        assert_eq!(dest.metrics.rejected(reason), 1, "{transport}");
        assert_eq!(run.dst.run_state(), RunState::Released);
    }
}

#[test]
fn the_source_reports_what_the_destination_detected_on_which_stream() {
    // A bit flipped on stream 1: the destination detects it and says so on
    // stream 0 while closing every stream; the source's error is that
    // reason, not the broken pipe it saw on whichever stream it was writing.
    let dest = destination();
    let relay = Relay::new(dest.listener.local_addr());
    let memory = 32 << 20;
    let spec = spec(
        memory,
        2,
        Transport::Aes256Gcm,
        relay.addr(),
        Limits::default(),
    );
    relay.flip_byte(1, 1 << 20);
    let run = migrate(kv_guest(memory, 5_000, 5_000, true), &dest, &spec, |_| {});
    assert!(relay.flipped());
    let failed = run.result.expect_err("tampering must be detected");
    let msg = failed.error.to_string();
    assert!(
        matches!(failed.error, MigrationError::Destination(_))
            && msg.starts_with("the destination failed: stream 1: ")
            && msg.contains("authentication failed"),
        "expected the destination's reason naming stream 1, got: {msg}"
    );
    assert!(failed.error.guest_kept());
    assert_eq!(run.src.run_state(), RunState::Running);
}

#[test]
fn destination_refusal_before_any_memory_moves() {
    // A spec the destination never accepted: the handshake fails, nothing moves.
    let dest = destination();
    let memory = 8 << 20;
    let spec = spec(
        memory,
        2,
        Transport::Aes256Gcm,
        dest.listener.local_addr(),
        Limits::default(),
    );
    let src = Snapshot::new(kv_guest(memory, 1_000, 1_000, true), true);
    let r = migrate_out(src.clone(), &spec, &SourceOptions::default(), &mut |_| {});
    let failed = r.expect_err("unknown migration");
    let why = ferry_core::error::report(&failed.error).to_string();
    assert!(why.contains("unknown migration"), "{why}");
    assert_eq!(failed.stats.transferred_bytes, 0);
    assert_eq!(src.run_state(), RunState::Running);
    assert_eq!(
        dest.metrics.rejected("unknown_migration"),
        2,
        "both streams refused"
    );
}

#[test]
fn link_cut_between_ready_and_go_resumes_the_guest_on_the_source() {
    let dest = destination();
    let relay = Relay::new(dest.listener.local_addr());
    let memory = 16 << 20;
    let spec = spec(
        memory,
        2,
        Transport::Aes256Gcm,
        relay.addr(),
        Limits::default(),
    );
    // READY reaches the source; GO can never reach the destination.
    relay.after_ready(0, AfterLimit::Cut);
    let run = migrate(kv_guest(memory, 5_000, 5_000, true), &dest, &spec, |_| {});
    let failed = run.result.expect_err("GO never arrived");
    // The source asked; the destination had discarded its copy.
    assert!(
        matches!(&failed.error, MigrationError::Destination(m) if m.contains("discarded the guest after GO")),
        "{}",
        ferry_core::error::report(&failed.error)
    );
    assert!(failed.error.guest_kept());
    assert_eq!(
        run.src.run_state(),
        RunState::Running,
        "the guest resumed on the source"
    );
    assert!(matches!(
        dest.registry.outcome(&spec.id),
        Some(Outcome::Aborted(_))
    ));
    assert_eq!(
        run.dst.run_state(),
        RunState::Released,
        "exactly one copy runs"
    );
}

#[test]
fn resumed_lost_after_go_is_settled_by_asking_the_destination() {
    let dest = destination();
    let relay = Relay::new(dest.listener.local_addr());
    let memory = 16 << 20;
    let spec = spec(
        memory,
        2,
        Transport::Aes256Gcm,
        relay.addr(),
        Limits {
            switchover_timeout: Duration::from_secs(2),
            ..Limits::default()
        },
    );
    // GO gets through and the destination resumes, but RESUMED vanishes.
    relay.after_ready(0, AfterLimit::BlackHole);
    let (src, dst) = prepared_pair(&dest, &spec);
    let opts = SourceOptions::default();
    let stats = migrate_out(src.clone(), &spec, &opts, &mut |_| {})
        .unwrap_or_else(|f| panic!("the outcome query should settle it: {f}"));
    assert_eq!(stats.result, MigrationResult::Completed);
    // The spec's switchover_timeout (2 s) bounds the wait, not the 30 s default.
    assert!(
        stats.downtime_seconds < 8.0,
        "stunned {:.1} s with switchover_timeout 2 s (expected about 2 s plus the query)",
        stats.downtime_seconds
    );
    assert_eq!(dest.registry.outcome(&spec.id), Some(Outcome::Resumed));
    assert_eq!(dst.run_state(), RunState::Running);
    assert_eq!(src.run_state(), RunState::Released, "exactly one copy runs");
    assert_eq!(pages_differing(&src.take(), &dst.take()), 0);
}

/// What a host's inventory would hold: guests the destination handed over,
/// registered only after `delay` (a slow host, a loaded machine).
struct Ledger {
    owned: Mutex<Vec<String>>,
    discarded: Mutex<Vec<String>>,
}

fn slow_destination(delay: Duration, switchover: Duration) -> (Dest, Arc<Ledger>) {
    let ledger = Arc::new(Ledger {
        owned: Mutex::new(Vec::new()),
        discarded: Mutex::new(Vec::new()),
    });
    let l = ledger.clone();
    let dest = destination_with(switchover, move |e| {
        std::thread::sleep(delay);
        match e {
            DestinationEvent::Resumed { guest, .. } => {
                l.owned.lock().unwrap().push(guest.name().into())
            }
            DestinationEvent::Aborted { guest, .. } => {
                l.discarded.lock().unwrap().push(guest.clone())
            }
        }
    });
    (dest, ledger)
}

#[test]
fn whoever_hears_resumed_finds_the_guest_owned_by_the_destination() {
    // The host registers an arriving guest in the destination's sink; a
    // slow sink must delay RESUMED, not let the source (and the coordinator
    // and client after it) hear it while the guest is on no host.
    let (dest, ledger) = slow_destination(Duration::from_millis(700), Duration::from_secs(10));
    let memory = 16 << 20;
    let spec = spec(
        memory,
        2,
        Transport::Aes256Gcm,
        dest.listener.local_addr(),
        Limits::default(),
    );
    let run = migrate(kv_guest(memory, 5_000, 5_000, true), &dest, &spec, |_| {});
    let stats = run
        .result
        .unwrap_or_else(|f| panic!("migration failed: {f}"));
    assert_eq!(stats.result, MigrationResult::Completed);
    assert_eq!(
        *ledger.owned.lock().unwrap(),
        vec!["g1".to_string()],
        "when the source hears RESUMED the destination's host owns the guest"
    );
    assert_eq!(run.dst.run_state(), RunState::Running);
    assert_eq!(run.src.run_state(), RunState::Released);
}

#[test]
fn an_outcome_query_answers_resumed_only_once_the_destination_owns_the_guest() {
    // RESUMED is lost; the source asks. The answer must wait for the host's
    // registration too (the sink takes longer than the source waits for
    // RESUMED, so its first queries arrive while the host registers).
    let (dest, ledger) = slow_destination(Duration::from_millis(2500), Duration::from_secs(10));
    let relay = Relay::new(dest.listener.local_addr());
    let memory = 16 << 20;
    let spec = spec(
        memory,
        2,
        Transport::Aes256Gcm,
        relay.addr(),
        Limits {
            switchover_timeout: Duration::from_secs(1),
            ..Limits::default()
        },
    );
    relay.after_ready(0, AfterLimit::BlackHole);
    let (src, dst) = prepared_pair(&dest, &spec);
    let opts = SourceOptions::default();
    let stats = migrate_out(src.clone(), &spec, &opts, &mut |_| {})
        .unwrap_or_else(|f| panic!("the outcome query should settle it: {f}"));
    assert_eq!(stats.result, MigrationResult::Completed);
    assert_eq!(
        *ledger.owned.lock().unwrap(),
        vec!["g1".to_string()],
        "the query said resumed before the destination's host owned the guest"
    );
    assert_eq!(dst.run_state(), RunState::Running);
    assert_eq!(src.run_state(), RunState::Released, "exactly one copy runs");
}

#[test]
fn whoever_hears_the_destination_discarded_finds_it_gone_there() {
    // GO never arrives; the destination gives up and discards. The source
    // learns it by asking; by then the destination's host has let go of
    // the guest (so a retry is not refused as a duplicate).
    let (dest, ledger) = slow_destination(Duration::from_millis(1500), Duration::from_secs(2));
    let relay = Relay::new(dest.listener.local_addr());
    let memory = 16 << 20;
    let spec = spec(
        memory,
        2,
        Transport::Aes256Gcm,
        relay.addr(),
        Limits {
            switchover_timeout: Duration::from_secs(2),
            ..Limits::default()
        },
    );
    relay.after_ready(0, AfterLimit::Cut);
    let (src, dst) = prepared_pair(&dest, &spec);
    let opts = SourceOptions::default();
    let failed = migrate_out(src.clone(), &spec, &opts, &mut |_| {}).expect_err("GO never arrived");
    assert!(
        failed.error.guest_kept(),
        "{}",
        ferry_core::error::report(&failed.error)
    );
    assert_eq!(
        *ledger.discarded.lock().unwrap(),
        vec!["g1".to_string()],
        "the source heard of the discard before the destination's host did"
    );
    assert_eq!(src.run_state(), RunState::Running);
    assert_eq!(dst.run_state(), RunState::Released, "exactly one copy runs");
}
