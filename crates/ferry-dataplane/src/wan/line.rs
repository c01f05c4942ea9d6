//! One running delay line: a thread that reads a class's frames off its
//! tap, holds each until its time and sends it out of the interface it was
//! leaving, marked so that the egress program lets it pass this time.

use ferry_core::error::report;
use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use ferry_common::wan::DELAYED_MARK;
use prometheus::{Histogram, IntCounter, IntGauge};

use super::{
    WanError,
    config::WanConfig,
    metrics::WanMetrics,
    model::{DropReason, Model, Queue, Verdict},
    tap::{Tap, VNET_HDR},
};
use crate::{clock::monotonic_ns, net::PacketSocket, netns::Netns};

/// What a line is for: a class leaving an interface.
#[derive(Clone, Debug, PartialEq)]
pub struct LineSpec {
    pub interface: String,
    pub ifindex: u32,
    pub class_id: u16,
    pub class: String,
    pub cfg: WanConfig,
}

const RUN: u8 = 0;
/// Take no more frames; send what is held at its time, then end.
const DRAIN: u8 = 1;
/// End now; what is held is dropped (flushed).
const STOP: u8 = 2;

/// Frames read off the tap between two looks at the clock for departures:
/// bounds how late a due frame can be behind a flood of arrivals.
const READ_BATCH: usize = 64;
/// Longest sleep, so that the heartbeat and new settings are seen.
const IDLE: Duration = Duration::from_millis(50);

/// Per-line handles into the metrics, resolved once.
struct Counters {
    added_delay: Histogram,
    held_frames: IntGauge,
    held_bytes: IntGauge,
    frames: IntCounter,
    bytes: IntCounter,
    dropped: Vec<(DropReason, IntCounter)>,
}

impl Counters {
    fn new(m: &WanMetrics, interface: &str, class: &str) -> Self {
        let l = [interface, class];
        Self {
            added_delay: m.added_delay.with_label_values(&l),
            held_frames: m.held_frames.with_label_values(&l),
            held_bytes: m.held_bytes.with_label_values(&l),
            frames: m.frames.with_label_values(&l),
            bytes: m.bytes.with_label_values(&l),
            dropped: DropReason::ALL
                .iter()
                .map(|r| {
                    (
                        *r,
                        m.dropped.with_label_values(&[interface, class, r.label()]),
                    )
                })
                .collect(),
        }
    }

    fn drop(&self, r: DropReason) {
        self.dropped_counter(r).inc();
    }

    fn dropped_counter(&self, r: DropReason) -> &IntCounter {
        &self
            .dropped
            .iter()
            .find(|(x, _)| *x == r)
            .expect("every reason")
            .1
    }
}

struct Shared {
    state: AtomicU8,
    /// New settings for the thread to pick up.
    pending: Mutex<Option<WanConfig>>,
    /// Last time the thread went round its loop.
    heartbeat_ns: AtomicU64,
    counters: Counters,
}

/// What a line has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineStats {
    pub interface: String,
    pub class: String,
    pub sent_frames: u64,
    pub sent_bytes: u64,
    pub held_frames: u64,
    /// By reason, every reason present.
    pub dropped: Vec<(DropReason, u64)>,
}

impl LineStats {
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.dropped
            .iter()
            .find(|(x, _)| *x == r)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }
}

pub struct DelayLine {
    pub spec: LineSpec,
    pub tap_name: String,
    pub tap_ifindex: u32,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl DelayLine {
    /// Creates the line's tap (in `netns`) and starts its thread.
    pub fn start(
        netns: &Option<Arc<Netns>>,
        spec: LineSpec,
        metrics: &WanMetrics,
    ) -> Result<Self, WanError> {
        let tap_name = format!("fdl{}.{}", spec.ifindex, spec.class_id);
        let io = |what: String| move |source: io::Error| WanError::Io { what, source };
        let (tap, sock, tap_ifindex) = crate::netns::run_in(netns.as_deref(), || {
            let tap = Tap::create(&tap_name)?;
            // The tap must send nothing of its own (IPv6 router
            // solicitations, MLD): the line would pass it on.
            match std::fs::write(
                format!("/proc/sys/net/ipv6/conf/{tap_name}/disable_ipv6"),
                "1",
            ) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            tap.set_offload(gso(&spec.cfg))?;
            let sock = PacketSocket::sender(&spec.interface)?;
            sock.set_vnet_hdr()?;
            sock.set_mark(DELAYED_MARK)?;
            sock.set_send_buffer(8 << 20)?;
            let idx = crate::net::packet_socket::ifindex(&tap_name)?;
            Ok((tap, sock, idx))
        })
        .map_err(io(format!(
            "delay line for class {} on {}",
            spec.class, spec.interface
        )))?;
        let mut nl = crate::netns::netlink_in::<WanError>(netns.as_deref())?;
        let mtu = nl.link(&spec.interface)?.mtu;
        nl.set_mtu(&tap_name, mtu)?;
        // Room for a burst the thread has not read yet (what overflows is
        // counted as intake drops), not a standing queue adding delay.
        nl.set_txqueuelen(&tap_name, 1_000)?;
        nl.set_up(&tap_name)?;

        metrics.configure(&spec.interface, &spec.class, &spec.cfg);
        let shared = Arc::new(Shared {
            state: AtomicU8::new(RUN),
            pending: Mutex::new(None),
            heartbeat_ns: AtomicU64::new(monotonic_ns()),
            counters: Counters::new(metrics, &spec.interface, &spec.class),
        });
        let model = Model::new(&spec.cfg);
        let thread = std::thread::Builder::new()
            .name(format!("ferry-wan-{}", spec.class_id))
            .spawn({
                let shared = shared.clone();
                move || run(&tap, &sock, model, &shared)
            })
            .map_err(io("spawning a delay line thread".into()))?;
        tracing::info!(
            interface = %spec.interface, class = %spec.class, tap = %tap_name,
            delay_ms = spec.cfg.delay.as_secs_f64() * 1e3,
            jitter_ms = spec.cfg.jitter.as_secs_f64() * 1e3,
            loss = spec.cfg.loss.map(|l| l.mean()).unwrap_or(0.0),
            rate = ?spec.cfg.rate.map(|r| r.to_string()),
            "delay line started"
        );
        Ok(Self {
            spec,
            tap_name,
            tap_ifindex,
            shared,
            thread: Some(thread),
        })
    }

    /// New settings, taken up at once; held frames keep their times.
    pub fn reconfigure(&mut self, cfg: WanConfig, metrics: &WanMetrics) {
        metrics.configure(&self.spec.interface, &self.spec.class, &cfg);
        *self.shared.pending.lock().expect("line settings") = Some(cfg.clone());
        self.spec.cfg = cfg;
    }

    /// The thread went round its loop at most `within_ns` ago.
    pub fn alive(&self, now_ns: u64, within_ns: u64) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
            && now_ns.saturating_sub(self.shared.heartbeat_ns.load(Ordering::Relaxed)) <= within_ns
    }

    /// Adds frames the tap dropped before the line read them.
    pub fn intake_dropped(&self, n: u64) {
        self.shared
            .counters
            .dropped_counter(DropReason::Intake)
            .inc_by(n);
    }

    pub fn stats(&self) -> LineStats {
        let c = &self.shared.counters;
        LineStats {
            interface: self.spec.interface.clone(),
            class: self.spec.class.clone(),
            sent_frames: c.frames.get(),
            sent_bytes: c.bytes.get(),
            held_frames: c.held_frames.get().max(0) as u64,
            dropped: c.dropped.iter().map(|(r, n)| (*r, n.get())).collect(),
        }
    }

    /// Takes no more frames and returns once every held frame has left at
    /// its time (the caller stops steering frames here first).
    pub fn drain(mut self) {
        self.finish(DRAIN);
    }

    fn finish(&mut self, how: u8) {
        self.shared.state.store(how, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.finish(STOP);
    }
}

/// Super-packets may cross the line whole unless loss is configured: loss
/// is per frame on the wire.
fn gso(cfg: &WanConfig) -> bool {
    cfg.loss.is_none()
}

/// Waits until `fd` is readable (if `read`) or `timeout_ns` passes, with
/// nanosecond resolution.
fn wait(fd: &impl AsFd, read: bool, timeout_ns: u64) {
    let mut pfd = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: if read { libc::POLLIN } else { 0 },
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: one valid pollfd and a valid timespec.
    unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
}

/// Real-time priority for the line's thread, below the kernel's interrupt
/// threads (50): on a busy router a normal thread wakes milliseconds late,
/// and every frame it holds would carry that on top of its delay, where
/// netem, running in softirq, would not.
const REALTIME_PRIORITY: libc::c_int = 20;

fn realtime(tap: &str) {
    let param = libc::sched_param {
        sched_priority: REALTIME_PRIORITY,
    };
    // SAFETY: a valid sched_param, for this thread only (0).
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
        tracing::debug!(
            tap,
            priority = REALTIME_PRIORITY,
            "delay line runs SCHED_FIFO"
        );
    } else {
        tracing::warn!(
            tap,
            error = %io::Error::last_os_error(),
            "the delay line runs at normal priority (SCHED_FIFO needs CAP_SYS_NICE): \
             when the machine is busy its frames may leave late by the scheduler's latency"
        );
    }
}

fn run(tap: &Tap, sock: &PacketSocket, mut model: Model, shared: &Shared) {
    // Wake-ups on time: the default 50 µs of timer slack is the error we
    // would otherwise add to every frame's delay.
    // SAFETY: plain prctl on this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
    realtime(tap.name());
    let c = &shared.counters;
    let mut q = Queue::default();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let mut now = monotonic_ns();
        shared.heartbeat_ns.store(now, Ordering::Relaxed);
        if let Some(cfg) = shared.pending.lock().expect("line settings").take() {
            if let Err(e) = tap.set_offload(gso(&cfg)) {
                tracing::warn!(error = %report(&e), tap = tap.name(), "changing the tap's offload");
            }
            model.reconfigure(&cfg);
        }
        let state = shared.state.load(Ordering::Relaxed);
        if state == STOP {
            for _ in q.drain() {
                c.drop(DropReason::Flushed);
            }
            break;
        }
        // Departures first: they are already late if anything.
        while let Some(h) = q.pop_due(now) {
            match sock.send(&h.frame) {
                Ok(()) => {
                    let t = monotonic_ns();
                    c.added_delay
                        .observe(t.saturating_sub(h.arrived) as f64 / 1e9);
                    c.frames.inc();
                    c.bytes.inc_by((h.frame.len() - VNET_HDR) as u64);
                    now = t;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => c.drop(DropReason::EgressFull),
                Err(e) => {
                    tracing::debug!(error = %report(&e), "delay line send failed");
                    c.drop(DropReason::SendError)
                }
            }
            pool.push(h.frame);
        }
        if state == DRAIN && q.is_empty() {
            break;
        }
        let mut read = 0;
        if state == RUN {
            while read < READ_BATCH {
                match tap.read(&mut buf) {
                    Ok(Some(n)) if n > VNET_HDR => {
                        read += 1;
                        let arrived = monotonic_ns();
                        match model.admit(arrived, n - VNET_HDR, q.len()) {
                            Verdict::Drop(r) => c.drop(r),
                            Verdict::At(at) => {
                                let mut f = pool.pop().unwrap_or_default();
                                f.clear();
                                f.extend_from_slice(&buf[..n]);
                                q.push(at, arrived, f);
                            }
                        }
                    }
                    Ok(Some(_)) => read += 1,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %report(&e), tap = tap.name(), "reading the delay line's tap");
                        break;
                    }
                }
            }
        }
        c.held_frames.set(q.len() as i64);
        c.held_bytes.set((q.bytes() - q.len() * VNET_HDR) as i64);
        if read == READ_BATCH {
            continue; // more may be waiting: look at the clock, read again
        }
        let now = monotonic_ns();
        let until = q
            .next_at()
            .map(|t| t.saturating_sub(now))
            .unwrap_or(u64::MAX)
            .min(IDLE.as_nanos() as u64);
        if until > 0 {
            wait(tap, state == RUN, until);
        }
    }
    c.held_frames.set(0);
    c.held_bytes.set(0);
}
