//! A synthetic guest: memory plus vCPU threads running a workload in it,
//! inside the host process. It behaves like a VM where the engine can see
//! it: it dirties memory at a configurable rate, can be stunned, throttled
//! and resumed, carries device state, and reports its throughput over time.

use std::{
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{
    Guest, GuestError, GuestInfo, RunState, Sample,
    memory::GuestMemory,
    workload::{self, VcpuState, WorkloadSpec},
};

/// How a synthetic guest is built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyntheticConfig {
    pub memory: u64,
    pub vcpus: usize,
    pub workload: WorkloadSpec,
    /// Fill memory first (see [`workload::prefill`]).
    pub prefill: bool,
    pub seed: u64,
}

/// What travels in the device state.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DeviceState {
    workload: WorkloadSpec,
    vcpus: Vec<VcpuState>,
    #[serde(default)]
    nic: Option<super::Nic>,
}

/// Slice of a throttle period: a throttled vCPU is stunned for that share of
/// every 10 ms (QEMU's cpu-throttle works the same way).
const THROTTLE_PERIOD: Duration = Duration::from_millis(10);
/// A vCPU that fell behind its rate catches up at most this much.
const MAX_BACKLOG: Duration = Duration::from_millis(100);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

struct Control {
    pause: AtomicBool,
    stop: AtomicBool,
    throttle: AtomicU8,
    parked: Mutex<Vec<Option<VcpuState>>>,
    cv: Condvar,
}

struct Runtime {
    vcpus: Vec<JoinHandle<VcpuState>>,
    sampler: Option<JoinHandle<()>>,
}

/// Live counters of one vCPU, read by the sampler and by [`SyntheticGuest::counters`].
#[derive(Default)]
struct VcpuCounters {
    ops: AtomicU64,
    get_errors: AtomicU64,
}

pub struct SyntheticGuest {
    name: String,
    memory: Arc<GuestMemory>,
    vcpu_count: Mutex<usize>,
    workload: Mutex<WorkloadSpec>,
    ctrl: Arc<Control>,
    counters: Mutex<Arc<Vec<VcpuCounters>>>,
    state: Mutex<RunState>,
    runtime: Mutex<Runtime>,
    loaded: Mutex<Option<DeviceState>>,
    nic: Mutex<Option<super::Nic>>,
    timeline: Arc<Mutex<Vec<Sample>>>,
    sampler_stop: Arc<AtomicBool>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl SyntheticGuest {
    /// Allocates, optionally prefills, and starts a guest.
    pub fn boot(name: &str, cfg: &SyntheticConfig) -> Result<Arc<Self>, GuestError> {
        if cfg.vcpus == 0 || cfg.vcpus > 64 {
            return Err(GuestError::Invalid(format!("{} vCPUs (1..=64)", cfg.vcpus)));
        }
        let memory = GuestMemory::new(cfg.memory).map_err(GuestError::Memory)?;
        if cfg.prefill {
            workload::prefill(&cfg.workload, &memory, cfg.seed);
        }
        let g = Self::with_memory(
            name,
            memory,
            cfg.vcpus,
            cfg.workload.clone(),
            RunState::Paused,
        );
        let states = (0..cfg.vcpus)
            .map(|i| VcpuState {
                rng: cfg
                    .seed
                    .wrapping_mul(0x9e37_79b9)
                    .wrapping_add(i as u64 * 7919)
                    | 1,
                ..Default::default()
            })
            .collect();
        g.start_vcpus(states);
        Ok(g)
    }

    /// Gives the guest a NIC (before it first migrates).
    pub fn set_nic(&self, nic: Option<super::Nic>) {
        *self.nic.lock().expect("nic") = nic;
    }

    /// An empty guest of `memory` bytes that receives an incoming migration.
    pub fn incoming(name: &str, memory: u64) -> Result<Arc<Self>, GuestError> {
        let memory = GuestMemory::new(memory).map_err(GuestError::Memory)?;
        Ok(Self::with_memory(
            name,
            memory,
            0,
            WorkloadSpec::Idle,
            RunState::Incoming,
        ))
    }

    fn with_memory(
        name: &str,
        memory: GuestMemory,
        vcpus: usize,
        workload: WorkloadSpec,
        state: RunState,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            memory: Arc::new(memory),
            vcpu_count: Mutex::new(vcpus),
            workload: Mutex::new(workload),
            ctrl: Arc::new(Control {
                pause: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                throttle: AtomicU8::new(0),
                parked: Mutex::new(Vec::new()),
                cv: Condvar::new(),
            }),
            counters: Mutex::new(Arc::new(Vec::new())),
            state: Mutex::new(state),
            runtime: Mutex::new(Runtime {
                vcpus: Vec::new(),
                sampler: None,
            }),
            loaded: Mutex::new(None),
            nic: Mutex::new(None),
            timeline: Arc::new(Mutex::new(Vec::new())),
            sampler_stop: Arc::new(AtomicBool::new(false)),
        })
    }

    fn start_vcpus(&self, states: Vec<VcpuState>) {
        let n = states.len();
        let counters: Arc<Vec<VcpuCounters>> = Arc::new(
            states
                .iter()
                .map(|s| VcpuCounters {
                    ops: AtomicU64::new(s.ops()),
                    get_errors: AtomicU64::new(s.get_errors),
                })
                .collect(),
        );
        *self.counters.lock().expect("counters") = counters.clone();
        *self.ctrl.parked.lock().expect("parked") = vec![None; n];
        self.ctrl.stop.store(false, Ordering::SeqCst);
        self.sampler_stop.store(false, Ordering::SeqCst);
        let spec = self.workload.lock().expect("workload").clone();
        let mut rt = self.runtime.lock().expect("runtime");
        for (i, st) in states.into_iter().enumerate() {
            let (mem, ctrl, spec, counters) = (
                self.memory.clone(),
                self.ctrl.clone(),
                spec.clone(),
                counters.clone(),
            );
            let h = std::thread::Builder::new()
                .name(format!("vcpu{i}-{}", self.name))
                .spawn(move || vcpu_loop(i, n, &spec, &mem, &ctrl, &counters, st))
                .expect("spawn vCPU thread");
            rt.vcpus.push(h);
        }
        let (tl, stop) = (self.timeline.clone(), self.sampler_stop.clone());
        rt.sampler = Some(
            std::thread::Builder::new()
                .name(format!("sampler-{}", self.name))
                .spawn(move || sampler(&counters, &tl, &stop))
                .expect("spawn sampler"),
        );
        *self.state.lock().expect("state") = RunState::Running;
    }

    /// The guest's throughput over time: one sample per 100 ms while it runs here.
    pub fn timeline(&self) -> Vec<Sample> {
        self.timeline.lock().expect("timeline").clone()
    }

    /// Total operations and GET integrity errors so far (all vCPUs, all hosts).
    pub fn counters(&self) -> (u64, u64) {
        let c = self.counters.lock().expect("counters").clone();
        (
            c.iter().map(|v| v.ops.load(Ordering::Relaxed)).sum(),
            c.iter().map(|v| v.get_errors.load(Ordering::Relaxed)).sum(),
        )
    }

    fn stop_all(&self) -> Vec<VcpuState> {
        self.ctrl.stop.store(true, Ordering::SeqCst);
        self.ctrl.cv.notify_all();
        self.sampler_stop.store(true, Ordering::SeqCst);
        let mut rt = self.runtime.lock().expect("runtime");
        let states = rt
            .vcpus
            .drain(..)
            .map(|h| h.join().unwrap_or_default())
            .collect();
        if let Some(s) = rt.sampler.take() {
            s.thread().unpark();
            let _ = s.join();
        }
        states
    }
}

/// Paces a vCPU at `rate` operations per second of guest time: a token
/// bucket that fills with the time the vCPU ran and holds at most `burst`
/// worth of operations. A vCPU that was descheduled or frozen catches up by
/// that much and no more; what it missed beyond is dropped, never owed.
struct Pacer {
    rate: f64,
    cap: f64,
    credit: f64,
}

impl Pacer {
    fn new(rate: f64, burst: Duration) -> Self {
        Self {
            rate,
            // At least one operation, or a slow vCPU could never run one.
            cap: (rate * burst.as_secs_f64()).max(1.0),
            credit: 0.0,
        }
    }

    /// Adds `ran` of guest time; returns the operations due now.
    fn advance(&mut self, ran: Duration) -> u64 {
        self.credit = (self.credit + self.rate * ran.as_secs_f64()).min(self.cap);
        self.credit as u64
    }

    fn spend(&mut self, ops: u64) {
        self.credit -= ops as f64;
    }

    /// How long until the next operation is due (at most 1 ms, so pause and
    /// throttle requests are seen promptly).
    fn until_next(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.credit) / self.rate).clamp(0.0, 1e-3))
    }
}

/// Sleeps up to `d`, or less if a pause or stop comes: a vCPU leaves what
/// it is doing at once when the guest is stunned, as a real one is kicked
/// out of the guest, instead of adding its nap to the downtime.
fn nap(ctrl: &Control, d: Duration) {
    let parked = ctrl.parked.lock().expect("parked");
    if !ctrl.pause.load(Ordering::Acquire) && !ctrl.stop.load(Ordering::Relaxed) {
        let _ = ctrl.cv.wait_timeout(parked, d).expect("parked");
    }
}

fn vcpu_loop(
    index: usize,
    vcpus: usize,
    spec: &WorkloadSpec,
    mem: &GuestMemory,
    ctrl: &Control,
    counters: &[VcpuCounters],
    mut st: VcpuState,
) -> VcpuState {
    let rate = spec.ops_per_second() as f64 / vcpus as f64;
    let mut pacer = Pacer::new(rate, MAX_BACKLOG);
    let mut last = Instant::now();
    let mut period = last;
    loop {
        if ctrl.stop.load(Ordering::Relaxed) {
            return st;
        }
        if ctrl.pause.load(Ordering::Acquire) {
            let mut parked = ctrl.parked.lock().expect("parked");
            parked[index] = Some(st.clone());
            ctrl.cv.notify_all();
            while ctrl.pause.load(Ordering::Acquire) && !ctrl.stop.load(Ordering::Relaxed) {
                parked = ctrl.cv.wait(parked).expect("parked");
            }
            // A state loaded while parked (never on a running guest) wins.
            st = parked[index].take().unwrap_or(st);
            drop(parked);
            // Paused time is not guest time.
            last = Instant::now();
            period = last;
            continue;
        }
        let now = Instant::now();
        let ran = now - last;
        st.guest_ns += ran.as_nanos() as u64;
        last = now;
        let p = u32::from(ctrl.throttle.load(Ordering::Relaxed));
        if p > 0 && now - period >= THROTTLE_PERIOD * (100 - p) / 100 {
            // Stunned for p% of the period: not guest time either.
            nap(ctrl, THROTTLE_PERIOD * p / 100);
            last = Instant::now();
            period = last;
            continue;
        }
        if p == 0 {
            period = now;
        }
        if rate == 0.0 {
            nap(ctrl, Duration::from_millis(5));
            continue;
        }
        let due = pacer.advance(ran);
        if due == 0 {
            nap(ctrl, pacer.until_next());
            continue;
        }
        let due = due.min(512);
        pacer.spend(due);
        workload::step(spec, mem, index, vcpus, &mut st, due);
        counters[index].ops.store(st.ops(), Ordering::Relaxed);
        counters[index]
            .get_errors
            .store(st.get_errors, Ordering::Relaxed);
    }
}

fn sampler(counters: &[VcpuCounters], timeline: &Mutex<Vec<Sample>>, stop: &AtomicBool) {
    let total = || {
        counters
            .iter()
            .map(|c| c.ops.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let mut prev = total();
    let mut t = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Parked rather than asleep: stopping the guest wakes it at once.
        let until = Instant::now() + SAMPLE_EVERY;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::park_timeout(until.saturating_duration_since(Instant::now()));
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        let cur = total();
        let rate = (cur - prev) as f64 / (now - t).as_secs_f64();
        timeline.lock().expect("timeline").push(Sample {
            unix_ms: unix_ms(),
            ops_per_second: rate,
        });
        prev = cur;
        t = now;
    }
}

impl Guest for SyntheticGuest {
    fn name(&self) -> &str {
        &self.name
    }

    fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    fn run_state(&self) -> RunState {
        *self.state.lock().expect("state")
    }

    fn pause(&self) -> Result<(), GuestError> {
        let mut state = self.state.lock().expect("state");
        match *state {
            RunState::Running => {}
            RunState::Paused => return Ok(()),
            s => {
                return Err(GuestError::State {
                    op: "pause",
                    state: s,
                });
            }
        }
        self.ctrl.pause.store(true, Ordering::Release);
        let n = self.runtime.lock().expect("runtime").vcpus.len();
        let mut parked = self.ctrl.parked.lock().expect("parked");
        // Wakes napping vCPUs (they nap under this lock: none misses it).
        self.ctrl.cv.notify_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        // vCPUs check for a pause at least every millisecond or throttle period.
        while parked.iter().filter(|s| s.is_some()).count() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.ctrl.pause.store(false, Ordering::Release);
                self.ctrl.cv.notify_all();
                return Err(GuestError::Timeout("vCPUs did not stop within 5 s"));
            }
            parked = self.ctrl.cv.wait_timeout(parked, left).expect("parked").0;
        }
        *state = RunState::Paused;
        Ok(())
    }

    fn resume(&self) -> Result<(), GuestError> {
        let mut state = self.state.lock().expect("state");
        match *state {
            RunState::Paused => {}
            RunState::Running => return Ok(()),
            s => {
                return Err(GuestError::State {
                    op: "resume",
                    state: s,
                });
            }
        }
        if let Some(loaded) = self.loaded.lock().expect("loaded").take() {
            // First start on this host, from the incoming device state.
            *self.workload.lock().expect("workload") = loaded.workload.clone();
            *self.vcpu_count.lock().expect("vcpus") = loaded.vcpus.len();
            drop(state);
            self.ctrl.pause.store(false, Ordering::Release);
            self.start_vcpus(loaded.vcpus);
            return Ok(());
        }
        self.ctrl.pause.store(false, Ordering::Release);
        self.ctrl.cv.notify_all();
        *state = RunState::Running;
        Ok(())
    }

    fn set_throttle(&self, percent: u8) {
        self.ctrl.throttle.store(percent.min(99), Ordering::Relaxed);
    }

    fn throttle(&self) -> u8 {
        self.ctrl.throttle.load(Ordering::Relaxed)
    }

    fn save_state(&self) -> Result<Vec<u8>, GuestError> {
        let state = self.run_state();
        if state != RunState::Paused {
            return Err(GuestError::State {
                op: "save device state",
                state,
            });
        }
        let vcpus: Vec<VcpuState> = self
            .ctrl
            .parked
            .lock()
            .expect("parked")
            .iter()
            .map(|s| s.clone().unwrap_or_default())
            .collect();
        let ds = DeviceState {
            workload: self.workload.lock().expect("workload").clone(),
            vcpus,
            nic: *self.nic.lock().expect("nic"),
        };
        Ok(serde_json::to_vec(&ds).expect("device state serializes"))
    }

    fn restore_state(&self, bytes: &[u8]) -> Result<(), GuestError> {
        let mut state = self.state.lock().expect("state");
        if *state != RunState::Incoming {
            return Err(GuestError::State {
                op: "load device state",
                state: *state,
            });
        }
        let ds: DeviceState =
            serde_json::from_slice(bytes).map_err(|e| GuestError::DeviceState(e.to_string()))?;
        if ds.vcpus.is_empty() || ds.vcpus.len() > 64 {
            return Err(GuestError::DeviceState(format!("{} vCPUs", ds.vcpus.len())));
        }
        *self.nic.lock().expect("nic") = ds.nic;
        *self.loaded.lock().expect("loaded") = Some(ds);
        *state = RunState::Paused;
        Ok(())
    }

    fn release(&self) {
        let _ = self.stop_all();
        *self.state.lock().expect("state") = RunState::Released;
    }

    fn info(&self) -> GuestInfo {
        let (ops, get_errors) = self.counters();
        GuestInfo {
            name: self.name.clone(),
            kind: "synthetic".into(),
            memory: self.memory.len(),
            vcpus: *self.vcpu_count.lock().expect("vcpus"),
            state: self.run_state(),
            throttle: self.throttle(),
            ops,
            get_errors,
            workload: Some(self.workload.lock().expect("workload").clone()),
            nic: *self.nic.lock().expect("nic"),
            machine: None,
        }
    }

    fn timeline(&self) -> Vec<Sample> {
        SyntheticGuest::timeline(self)
    }
}

impl Drop for SyntheticGuest {
    fn drop(&mut self) {
        let _ = self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::memory::PAGE_SIZE;

    fn kv(memory: u64) -> SyntheticConfig {
        SyntheticConfig {
            memory,
            vcpus: 2,
            workload: WorkloadSpec::KeyValue {
                gets_per_second: 20_000,
                sets_per_second: 20_000,
            },
            prefill: true,
            seed: 7,
        }
    }

    fn wait_ops(g: &SyntheticGuest, more_than: u64) -> u64 {
        // Bounded: 10 s at most, normally a few milliseconds.
        for _ in 0..1000 {
            let (ops, _) = g.counters();
            if ops > more_than {
                return ops;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("guest made no progress past {more_than} ops");
    }

    #[test]
    fn runs_pauses_and_resumes() {
        let g = SyntheticGuest::boot("t", &kv(4 << 20)).unwrap();
        assert_eq!(g.run_state(), RunState::Running);
        let ops = wait_ops(&g, 0);
        g.pause().unwrap();
        assert_eq!(g.run_state(), RunState::Paused);
        let (frozen, errors) = g.counters();
        assert!(frozen >= ops);
        assert_eq!(errors, 0, "every GET found an intact slot");
        let d1 = g.memory().digest(1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            g.memory().digest(1),
            d1,
            "a paused guest's memory does not change"
        );
        assert_eq!(g.counters().0, frozen, "a paused guest does no work");
        g.resume().unwrap();
        wait_ops(&g, frozen);
        g.release();
        assert_eq!(g.run_state(), RunState::Released);
        assert!(g.pause().is_err(), "a released guest cannot be paused");
    }

    #[test]
    fn device_state_carries_the_vcpus_to_a_new_guest() {
        let src = SyntheticGuest::boot("t", &kv(2 << 20)).unwrap();
        let nic = super::super::Nic {
            mac: "52:54:00:00:00:07".parse().unwrap(),
            ipv4: Some([10, 0, 0, 7].into()),
        };
        src.set_nic(Some(nic));
        wait_ops(&src, 100);
        src.pause().unwrap();
        let state = src.save_state().unwrap();
        let (ops_at_stun, _) = src.counters();

        let dst = SyntheticGuest::incoming("t", 2 << 20).unwrap();
        assert_eq!(dst.run_state(), RunState::Incoming);
        assert!(
            dst.resume().is_err(),
            "an incoming guest has nothing to run yet"
        );
        let mut page = [0u8; PAGE_SIZE];
        for p in 0..src.memory().pages() {
            src.memory().read_page(p, &mut page);
            dst.memory().write_page(p, &page);
        }
        dst.restore_state(&state).unwrap();
        assert_eq!(dst.run_state(), RunState::Paused);
        dst.resume().unwrap();
        src.release();
        // The counters continue from the source's, and every GET on the new
        // host finds the records the old host wrote.
        let ops = wait_ops(&dst, ops_at_stun + 100);
        assert!(ops > ops_at_stun);
        assert_eq!(dst.counters().1, 0);
        assert_eq!(dst.info().vcpus, 2);
        assert_eq!(dst.info().nic, Some(nic), "the NIC moves with the guest");
    }

    /// Runs `pacer` for `total` of guest time in `step`s, spending all it
    /// allows; returns the operations it allowed.
    fn drain(pacer: &mut Pacer, total: Duration, step: Duration) -> u64 {
        let mut ops = 0;
        let mut t = Duration::ZERO;
        while t < total {
            let due = pacer.advance(step);
            pacer.spend(due);
            ops += due;
            t += step;
        }
        ops
    }

    #[test]
    fn pacer_keeps_its_rate_and_a_stall_is_not_owed() {
        let mut pacer = Pacer::new(1000.0, MAX_BACKLOG);
        let steady = drain(&mut pacer, Duration::from_secs(2), Duration::from_millis(1));
        assert!(
            (1995..=2000).contains(&steady),
            "1000 ops/s for 2 s: expected 1995-2000 ops, got {steady}"
        );
        // A 10 s stall (the host frozen or descheduled), then 2 s running:
        // at most the burst (100 ms worth) is caught up, never the 10 s.
        for round in 0..5 {
            let caught_up = pacer.advance(Duration::from_secs(10));
            pacer.spend(caught_up);
            let after = drain(&mut pacer, Duration::from_secs(2), Duration::from_millis(1));
            assert!(
                caught_up <= 100 && (1995..=2000).contains(&after),
                "round {round} after a 10 s stall: expected at most 100 ops caught up \
                 and 1995-2000 in the next 2 s, got {caught_up} and {after}"
            );
        }
        // Coarse steps (a vCPU that runs late every time) keep the rate too.
        let coarse = drain(
            &mut pacer,
            Duration::from_secs(2),
            Duration::from_millis(250),
        );
        assert!(
            coarse <= 2000,
            "2 s in 250 ms steps: expected at most 2000 ops, got {coarse}"
        );
        // A slow rate still runs: one op per 2 s at 0.5 ops/s (the fifth
        // may fall a rounding error past 10 s).
        let mut slow = Pacer::new(0.5, MAX_BACKLOG);
        let ops = drain(
            &mut slow,
            Duration::from_secs(10),
            Duration::from_millis(10),
        );
        assert!(
            (4..=5).contains(&ops),
            "0.5 ops/s for 10 s: expected 4-5 ops, got {ops}"
        );
    }

    #[test]
    fn garbage_device_state_is_refused() {
        let dst = SyntheticGuest::incoming("t", 1 << 20).unwrap();
        assert!(matches!(
            dst.restore_state(b"{not json"),
            Err(GuestError::DeviceState(_))
        ));
        assert_eq!(dst.run_state(), RunState::Incoming);
    }
}
