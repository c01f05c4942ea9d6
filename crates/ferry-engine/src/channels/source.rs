//! The source of a device model's migration.
//!
//! ```text
//! connect + handshake N streams; a private unix socket for the device model
//! start its migration (N channels); accept them in order: channel k -> stream k
//! relay both ways while it runs; report its own figures as progress
//! it completes (guest stopped); its channels close; PREPARE
//! READY (the twin loaded everything) -> GO; RESUMED -> retire the source
//! ```
//! Any failure before GO cancels the device model's migration and resumes
//! the guest here; after GO the outcome query decides, as for page guests.

use ferry_core::error::report;
use std::{
    collections::HashSet,
    io,
    net::{Shutdown, TcpStream},
    os::unix::{
        fs::{DirBuilderExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use super::{
    ChannelGuest, ChannelProgress, ChannelStatus,
    relay::{self, RelayError, SharedWriter},
};
use crate::{
    MigrationError,
    guest::GuestError,
    limits::LiveLimits,
    source::{Decided, Failed, Run, SourceOptions, connect_streams, live_limits, query_outcome},
    stats::{MigrationResult, MigrationStats, Phase, Progress},
    wire::Message,
};
use ferry_protocol::{
    KeySchedule, Limits, MigrationSpec, ProtocolError, Side,
    record::{RecordReader, RecordWriter},
    stream_crypto,
};

/// A directory only this process's user can enter, removed when dropped:
/// the device model's migration socket lives there.
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    pub fn new(prefix: &str) -> io::Result<Self> {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).map_err(io::Error::other)?;
        let p = std::env::temp_dir().join(format!("{prefix}-{:016x}", u64::from_be_bytes(r)));
        std::fs::DirBuilder::new().mode(0o700).create(&p)?;
        // The mode survives a umask that would have widened nothing, but
        // say it explicitly: a socket here carries the guest's memory.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How often the device model's migration is looked at.
const POLL: Duration = Duration::from_millis(5);
/// How often the device model hears the rate ferry measured end to end.
const RATE_WINDOW: Duration = Duration::from_millis(500);

enum Ev {
    /// A message from the destination on stream 0.
    Control(Vec<u8>),
    /// A stream's inward pump ended (the destination's end of stream, or an error).
    Inward {
        stream: u16,
        result: Result<(), RelayError>,
    },
    /// The device model closed channel `stream` (Ok), or relaying it failed.
    Outward {
        stream: u16,
        result: Result<(), RelayError>,
    },
}

fn relay_error(stream: u16, e: RelayError) -> MigrationError {
    match e {
        RelayError::Stream(source) => MigrationError::Stream { stream, source },
        RelayError::Channel(e) => MigrationError::Guest(GuestError::Invalid(format!(
            "the device model's channel {stream}: {e}",
            e = report(&e)
        ))),
    }
}

struct Streams {
    writers: Vec<SharedWriter>,
    socks: Vec<TcpStream>,
    readers: Vec<JoinHandle<()>>,
    accept: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// The device model's channels, by the stream that carries each.
    channels: Arc<Mutex<Vec<(u16, UnixStream)>>>,
}

impl Streams {
    /// Bytes sealed onto the wire so far, on every stream.
    fn wire_bytes(&self) -> u64 {
        self.writers
            .iter()
            .map(|w| w.lock().expect("writer").wire_bytes)
            .sum()
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        self.writers[0].lock().expect("writer").send_bytes(msg)
    }

    /// Ends every stream: gracefully (authenticated end) or by cutting it.
    fn close(mut self, graceful: bool) -> (f64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut cpu, mut bytes) = (0.0, 0);
        for w in &self.writers {
            let mut w = w.lock().expect("writer");
            if graceful {
                let _ = w.finish();
            }
            cpu += w.seal_cpu.as_secs_f64();
            bytes += w.wire_bytes;
        }
        for s in &self.socks {
            let _ = s.shutdown(Shutdown::Both);
        }
        for (_, c) in self.channels.lock().expect("channels").iter() {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        (cpu, bytes)
    }
}

/// The device-model source's state machine: each state is one function
/// of [`Outgoing`] that names the next. Until GO is sent in
/// [`Step::Commit`], a failure cancels the device model's migration and
/// resumes the guest here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The device model pre-copies by itself; ferry relays and watches.
    PreCopy,
    /// It completed (guest stopped): until its channels close; PREPARE.
    Flush,
    /// Until the destination's twin has loaded everything (READY).
    AwaitReady,
    /// Under a coordinator: until it decides GO.
    AwaitGo,
    /// Release durably, send GO, learn that the guest resumed there.
    Commit,
    Completed,
}

/// Migrates a device-model guest (QEMU) to the destination named in `spec`,
/// ferry carrying its channels. On success it runs there and is retired
/// here; on failure it runs here (unless [`MigrationError::InDoubt`]).
pub fn migrate_out(
    guest: Arc<dyn ChannelGuest>,
    spec: &MigrationSpec,
    opts: &SourceOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<MigrationStats, Failed> {
    let mut out = Outgoing::setup(guest, spec, opts, progress)?;
    let mut step = Step::PreCopy;
    loop {
        let next = match step {
            Step::PreCopy => out.pre_copy(),
            Step::Flush => out.flush(),
            Step::AwaitReady => out.await_ready(),
            Step::AwaitGo => out.await_go(),
            Step::Commit => out.commit(),
            Step::Completed => return Ok(out.complete()),
        };
        step = match next {
            Ok(next) => next,
            Err(e) => return Err(out.fail(e)),
        };
    }
}

/// One outgoing device-model migration, from its streams' setup on.
struct Outgoing<'a> {
    guest: Arc<dyn ChannelGuest>,
    spec: &'a MigrationSpec,
    opts: &'a SourceOptions,
    progress: &'a mut dyn FnMut(&Progress),
    run: Run<'a>,
    schedule: Option<KeySchedule>,
    mem: u64,
    /// Taken when they close.
    streams: Option<Streams>,
    ev_rx: mpsc::Receiver<Ev>,
    /// Streams whose channel the device model has closed.
    ended: HashSet<u16>,
    /// The device model's last figures.
    last: ChannelProgress,
    /// The limits it runs under, and how many changes to them the device
    /// model has been given (counted from before it started).
    limits: Arc<LiveLimits>,
    applied: u64,
    /// When the device model stopped the guest.
    stun: SystemTime,
    /// Holds the device model's migration socket while the migration lasts.
    _socket_dir: PrivateDir,
}

impl<'a> Outgoing<'a> {
    /// Checks the spec, opens the device model's socket and every stream,
    /// and starts the device model's migration onto them.
    fn setup(
        guest: Arc<dyn ChannelGuest>,
        spec: &'a MigrationSpec,
        opts: &'a SourceOptions,
        progress: &'a mut dyn FnMut(&Progress),
    ) -> Result<Self, Failed> {
        let mem = guest.memory_bytes();
        let mut run = Run::new(spec, opts, mem);
        run.stats.dirty_log = "device-model".into();
        if let Err(e) = spec.check() {
            return Err(run.fail(MigrationError::Spec(e)));
        }
        if spec.machine.is_none() || mem != spec.memory {
            return Err(run.fail(MigrationError::SpecMachine {
                id: spec.id,
                guest: guest.name().to_string(),
                bytes: mem,
            }));
        }
        let schedule = spec
            .key
            .as_ref()
            .map(|k| KeySchedule::new(k, spec.nonce, &spec.id));
        progress(&Progress {
            phase: Phase::Setup,
            total_bytes: mem,
            remaining_bytes: mem,
            ..Default::default()
        });
        tracing::info!(migration = %spec.id, guest = %spec.guest, destination = %spec.destination.host,
            transport = %spec.transport, channels = spec.streams, "device-model migration: setup");
        let dir = match PrivateDir::new("ferry-mig") {
            Ok(d) => d,
            Err(e) => {
                return Err(run.fail(MigrationError::Guest(GuestError::Invalid(format!(
                    "a private directory for the migration socket: {e}",
                    e = report(&e)
                )))));
            }
        };
        let socket = dir.path().join("channels.sock");
        let listener = match UnixListener::bind(&socket).and_then(|l| {
            l.set_nonblocking(true)?;
            Ok(l)
        }) {
            Ok(l) => l,
            Err(e) => {
                return Err(run.fail(MigrationError::Guest(GuestError::Invalid(format!(
                    "listening on {}: {e}",
                    socket.display(),
                    e = report(&e)
                )))));
            }
        };
        let connected = match connect_streams(spec, schedule.as_ref(), opts) {
            Ok(c) => c,
            Err(e) => return Err(run.fail(e)),
        };
        let (ev_tx, ev_rx) = mpsc::channel();
        let streams = start_streams(
            connected,
            listener,
            schedule.as_ref(),
            spec,
            opts,
            ev_tx,
            Arc::new(AtomicU64::new(0)),
        );
        run.stats.setup_seconds = run.start.elapsed().as_secs_f64();
        // The device model paces itself: ferry hands it the limits, and
        // any change to them while it runs.
        let limits = live_limits(spec, opts);
        let applied = limits.changes();
        let mut out = Outgoing {
            guest,
            spec,
            opts,
            progress,
            run,
            schedule,
            mem,
            streams: Some(streams),
            ev_rx,
            ended: HashSet::new(),
            last: ChannelProgress::default(),
            limits: limits.clone(),
            applied,
            stun: SystemTime::now(),
            _socket_dir: dir,
        };
        let start_limits = Limits {
            bandwidth: limits.bandwidth(),
            downtime_limit: limits.downtime_limit(spec.limits.downtime_limit),
            ..spec.limits.clone()
        };
        out.run.stats.downtime_limit_seconds = start_limits.downtime_limit.as_secs_f64();
        if let Err(e) = out
            .guest
            .start_migration(&socket, spec.streams, &start_limits)
        {
            return Err(out.fail(MigrationError::Guest(e)));
        }
        Ok(out)
    }

    fn streams(&self) -> &Streams {
        self.streams.as_ref().expect("streams open")
    }

    /// Handles what has arrived: channels that closed, and errors.
    fn drain(&mut self) -> Result<(), MigrationError> {
        drain(&self.ev_rx, &mut self.ended)
    }

    /// Where the stun goes, step by step (debug level).
    fn step(&self, what: &str) {
        let ms = SystemTime::now()
            .duration_since(self.stun)
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3;
        tracing::debug!(migration = %self.spec.id, since_stop_ms = ms, "device-model switch-over: {what}");
    }

    /// The device model converges by itself: ferry relays, passes on
    /// limit changes and the rate it measures, reports progress, and
    /// enforces cancel and the time limit.
    fn pre_copy(&mut self) -> Result<Step, MigrationError> {
        let r = self.watch();
        fill_stats(&mut self.run.stats, &self.last);
        r?;
        // The device model stopped the guest and sent its last bytes: once
        // its channels have closed, everything is on the streams.
        self.stun = self.guest.stopped_at().unwrap_or_else(SystemTime::now);
        self.step("the device model completed");
        (self.progress)(&to_progress(
            &self.last,
            Phase::Switchover,
            &self.run,
            self.mem,
        ));
        Ok(Step::Flush)
    }

    fn watch(&mut self) -> Result<(), MigrationError> {
        let (spec, opts) = (self.spec, self.opts);
        let limits = self.limits.clone();
        let downtime_limit = || limits.downtime_limit(spec.limits.downtime_limit);
        let mut last_report = Instant::now() - opts.progress_every;
        let deadline = self.run.start + spec.limits.max_time;
        let mut rate_from = (Instant::now(), self.streams().wire_bytes());
        loop {
            self.drain()?;
            if opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                return Err(MigrationError::Cancelled(
                    "cancelled before switch-over".into(),
                ));
            }
            if limits.changes() != self.applied {
                self.applied = limits.changes();
                self.run.stats.downtime_limit_seconds = downtime_limit().as_secs_f64();
                self.guest
                    .set_limits(limits.bandwidth(), downtime_limit())
                    .map_err(MigrationError::Guest)?;
                tracing::info!(migration = %spec.id, bandwidth = ?limits.bandwidth(),
                    downtime_limit = ?downtime_limit(), "device-model migration: limits changed");
            }
            let p = self.guest.progress().map_err(MigrationError::Guest)?;
            let since = rate_from.0.elapsed();
            if since >= RATE_WINDOW {
                let now = self.streams().wire_bytes();
                let rate = (now - rate_from.1) as f64 / since.as_secs_f64();
                rate_from = (Instant::now(), now);
                // An idle window (setup, a pause in dirtying) says nothing
                // about the path.
                if rate > 0.0 {
                    self.guest
                        .set_switchover_bandwidth(rate as u64)
                        .map_err(MigrationError::Guest)?;
                }
            }
            if last_report.elapsed() >= opts.progress_every {
                (self.progress)(&to_progress(&p, Phase::PreCopy, &self.run, self.mem));
                last_report = Instant::now();
            }
            let status = p.status.clone();
            self.last = p;
            match status {
                Some(ChannelStatus::Completed) => return Ok(()),
                Some(ChannelStatus::Failed(why)) => {
                    return Err(MigrationError::Guest(GuestError::Invalid(format!(
                        "the device model's migration failed: {why}"
                    ))));
                }
                Some(ChannelStatus::Cancelled) => {
                    return Err(MigrationError::Cancelled(
                        "the device model's migration was cancelled".into(),
                    ));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(MigrationError::GaveUp {
                    passes: self.last.passes,
                    seconds: self.run.start.elapsed().as_secs_f64(),
                    remaining: self.last.remaining_bytes,
                });
            }
            // Often: the stun starts when the device model stops the guest,
            // and every poll interval until ferry sees it completed adds to it.
            std::thread::sleep(POLL);
        }
    }

    /// Until every channel the device model opened has closed; PREPARE.
    fn flush(&mut self) -> Result<Step, MigrationError> {
        let opened = self.streams().opened();
        let until = Instant::now() + self.spec.limits.switchover_timeout;
        while !opened.iter().all(|s| self.ended.contains(s)) {
            self.drain()?;
            if Instant::now() >= until {
                return Err(MigrationError::Guest(GuestError::Timeout(
                    "the device model completed but kept its channels open",
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.step("its channels closed; PREPARE");
        self.streams()
            .send(&Message::Prepare.encode())
            .map_err(|e| MigrationError::Stream {
                stream: 0,
                source: ProtocolError::from(e),
            })?;
        Ok(Step::AwaitReady)
    }

    fn await_ready(&mut self) -> Result<Step, MigrationError> {
        let timeout = self.spec.limits.switchover_timeout;
        wait_for(&self.ev_rx, &mut self.ended, Awaited::Ready, timeout)?;
        self.step("READY");
        Ok(match self.opts.commit {
            Some(_) => Step::AwaitGo,
            None => Step::Commit,
        })
    }

    /// The coordinator's decision, while the destination holds the guest.
    fn await_go(&mut self) -> Result<Step, MigrationError> {
        let commit = self.opts.commit.as_deref().expect("a coordinator decides");
        let bound = 2 * self.spec.limits.switchover_timeout;
        let (ev_rx, ended) = (&self.ev_rx, &mut self.ended);
        crate::commit::await_go(commit, &self.spec.id, bound, || drain(ev_rx, ended))?;
        self.step("GO decided");
        Ok(Step::Commit)
    }

    /// Releases the guest durably and sends GO; then learns whether it
    /// resumed there (asking if the answer is lost).
    fn commit(&mut self) -> Result<Step, MigrationError> {
        let (spec, opts) = (self.spec, self.opts);
        crate::source::journal_release(opts, spec)?;
        // Committed: from here the source never runs the guest again unless
        // the destination says it discarded it.
        let go = self.streams().send(&Message::Go.encode());
        tracing::info!(migration = %spec.id, "device-model migration: destination ready, sent GO");
        let timeout = spec.limits.switchover_timeout;
        let answer = go.map_err(|e| report(&e).to_string()).and_then(|()| {
            wait_for(&self.ev_rx, &mut self.ended, Awaited::Resumed, timeout)
                .map_err(|e| report(&e).to_string())
        });
        let decided = match answer {
            Ok(()) => Decided::Resumed,
            Err(why) => {
                tracing::warn!(migration = %spec.id, why = %why, "device-model migration: lost the destination after GO, asking what it did");
                query_outcome(spec, self.schedule.as_ref(), opts).map_err(|e| {
                    MigrationError::InDoubt(format!("{why}; outcome query: {e}", e = report(&e)))
                })?
            }
        };
        if decided == Decided::Discarded {
            crate::source::journal_reclaim(opts, spec);
            return Err(MigrationError::Destination(
                "the destination discarded the guest after GO".into(),
            ));
        }
        self.step("RESUMED");
        Ok(Step::Completed)
    }

    fn close(&mut self, graceful: bool) -> u64 {
        let (cpu, bytes) = self.streams.take().map_or((0.0, 0), |s| s.close(graceful));
        self.run.stats.seal_cpu_seconds = cpu;
        self.run.stats.transferred_bytes = bytes;
        bytes
    }

    /// Ends the migration failed: before GO (and after a discard) the
    /// device model's migration is cancelled, the destination told and the
    /// guest resumed here; in doubt, only the streams close.
    fn fail(mut self, error: MigrationError) -> Failed {
        if matches!(error, MigrationError::InDoubt(_)) {
            self.close(false);
            return self.run.fail(error);
        }
        self.guest.cancel_migration();
        if let Some(s) = &self.streams {
            let abort = Message::Abort {
                reason: "source aborted".into(),
            };
            let _ = s.send(&abort.encode());
        }
        self.close(false);
        if let Err(r) = self.guest.resume() {
            tracing::error!(migration = %self.spec.id, error = %r, "resuming the guest on the source failed");
        }
        self.run.fail(error)
    }

    /// The guest runs on the destination: retire it here and report.
    fn complete(mut self) -> MigrationStats {
        let downtime = SystemTime::now()
            .duration_since(self.stun)
            .unwrap_or_default()
            .as_secs_f64();
        self.run.stats.set_downtime(downtime);
        self.guest.release();
        let bytes = self.close(true);
        let stats = &mut self.run.stats;
        stats.remaining_bytes = 0;
        stats.result = MigrationResult::Completed;
        stats.total_seconds = self.run.start.elapsed().as_secs_f64();
        tracing::info!(migration = %self.spec.id, total_s = stats.total_seconds, downtime_ms = stats.downtime_seconds * 1e3,
            bytes, "device-model migration: completed");
        (self.progress)(&Progress {
            phase: Phase::Completed,
            pass: stats.passes,
            elapsed_seconds: stats.total_seconds,
            transferred_bytes: bytes,
            total_bytes: self.mem,
            remaining_bytes: 0,
            dirty_rate: stats.dirty_rate,
            transfer_rate: stats.transfer_rate,
            throttle_percent: 0,
            eta_seconds: Some(0.0),
            ..Default::default()
        });
        self.run.stats
    }
}

impl Streams {
    /// The streams that carry a channel the device model opened.
    fn opened(&self) -> Vec<u16> {
        self.channels
            .lock()
            .expect("channels")
            .iter()
            .map(|(k, _)| *k)
            .collect()
    }
}

/// Starts the stream pumps and the thread that accepts the device model's
/// channels, the k-th onto stream k.
fn start_streams(
    connected: Vec<TcpStream>,
    listener: UnixListener,
    schedule: Option<&KeySchedule>,
    spec: &MigrationSpec,
    opts: &SourceOptions,
    ev: mpsc::Sender<Ev>,
    counted: Arc<AtomicU64>,
) -> Streams {
    let max_record = spec.limits.max_record as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let channels: Arc<Mutex<Vec<(u16, UnixStream)>>> = Arc::default();
    let mut writers: Vec<SharedWriter> = Vec::new();
    let mut readers = Vec::new();
    let mut channel_txs = Vec::new();
    for (i, sock) in connected.iter().enumerate() {
        let i = i as u16;
        let (tx_c, rx_c) = stream_crypto(schedule, opts.backend, i, Side::Source);
        writers.push(Arc::new(Mutex::new(RecordWriter::new(
            sock.try_clone().expect("clone stream"),
            tx_c,
            max_record,
        ))));
        let (ctx, crx) = mpsc::channel::<UnixStream>();
        channel_txs.push(ctx);
        let mut reader = RecordReader::new(
            sock.try_clone().expect("clone stream"),
            rx_c,
            max_record,
            opts.metrics.clone(),
        );
        let (ev, counted, wait) = (ev.clone(), counted.clone(), opts.connect_timeout);
        readers.push(
            std::thread::Builder::new()
                .name(format!("mig-src-in-{i}"))
                .spawn(move || {
                    let result = relay::inward(
                        &mut reader,
                        || {
                            crx.recv_timeout(wait).map_err(|_| {
                                io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    "the device model never opened this channel",
                                )
                            })
                        },
                        |m| {
                            let _ = ev.send(Ev::Control(m.to_vec()));
                        },
                        &counted,
                    );
                    let _ = ev.send(Ev::Inward { stream: i, result });
                })
                .expect("spawn"),
        );
    }
    let accept = {
        let (writers, stop, channels) = (writers.clone(), stop.clone(), channels.clone());
        std::thread::Builder::new()
            .name("mig-src-accept".into())
            .spawn(move || {
                for (k, ctx) in channel_txs.into_iter().enumerate() {
                    let k = k as u16;
                    // Never wait for a channel's first bytes: accept order
                    // alone decides its stream (a silent channel stays so).
                    let conn = loop {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        match listener.accept() {
                            Ok((c, _)) => break c,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(2));
                            }
                            Err(e) => {
                                let _ = ev.send(Ev::Outward {
                                    stream: k,
                                    result: Err(RelayError::Channel(e)),
                                });
                                return;
                            }
                        }
                    };
                    let _ = conn.set_nonblocking(false);
                    let (Ok(inward), Ok(keep)) = (conn.try_clone(), conn.try_clone()) else {
                        return;
                    };
                    let _ = ctx.send(inward);
                    channels.lock().expect("channels").push((k, keep));
                    let (w, ev, counted) =
                        (writers[k as usize].clone(), ev.clone(), counted.clone());
                    let _ = std::thread::Builder::new()
                        .name(format!("mig-src-out-{k}"))
                        .spawn(move || {
                            let result = relay::outward(conn, &w, max_record, &counted);
                            let _ = ev.send(Ev::Outward { stream: k, result });
                        });
                }
            })
            .expect("spawn")
    };
    Streams {
        writers,
        socks: connected,
        readers,
        accept: Some(accept),
        stop,
        channels,
    }
}

fn to_progress(p: &ChannelProgress, phase: Phase, run: &Run, mem: u64) -> Progress {
    Progress {
        phase,
        pass: p.passes,
        elapsed_seconds: run.start.elapsed().as_secs_f64(),
        transferred_bytes: p.transferred_bytes,
        total_bytes: mem,
        remaining_bytes: p.remaining_bytes,
        dirty_rate: p.dirty_rate,
        transfer_rate: p.transfer_rate,
        throttle_percent: p.throttle_percent,
        // The device model's own figures; it does not say how far into a
        // pass it is.
        expected_downtime_seconds: p.expected_downtime_seconds,
        eta_seconds: crate::stats::eta(p.remaining_bytes, p.transfer_rate, p.dirty_rate),
        ..Default::default()
    }
}

fn fill_stats(s: &mut MigrationStats, p: &ChannelProgress) {
    s.passes = p.passes;
    s.normal_pages = p.normal_pages;
    s.zero_pages = p.duplicate_pages;
    s.dirty_rate = p.dirty_rate;
    s.transfer_rate = p.transfer_rate;
    s.throttle_percent = p.throttle_percent;
    s.throttle_max_percent = s.throttle_max_percent.max(p.throttle_percent);
    s.remaining_bytes = p.remaining_bytes;
}

/// Handles what has arrived: channels that closed, and errors.
fn drain(rx: &mpsc::Receiver<Ev>, ended: &mut HashSet<u16>) -> Result<(), MigrationError> {
    while let Ok(ev) = rx.try_recv() {
        handle(ev, ended, None).map_err(|e| why_broken(e, rx))?;
    }
    Ok(())
}

/// A stream broke. A destination that detects a bad record says why on
/// stream 0 (FAILED) while it closes every stream, and the close can reach
/// this side first: its reason, when it comes in time, is the error.
fn why_broken(broken: MigrationError, rx: &mpsc::Receiver<Ev>) -> MigrationError {
    if !matches!(
        broken,
        MigrationError::Stream { .. } | MigrationError::Guest(_)
    ) {
        return broken;
    }
    let until = Instant::now() + crate::source::WHY_WAIT;
    loop {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(Ev::Control(m)) => {
                if let Ok(Message::Failed { reason }) = Message::decode(&m) {
                    return MigrationError::Destination(reason.into_owned());
                }
            }
            // Stream 0's own end: nothing more can come.
            Ok(Ev::Inward { stream: 0, .. }) | Err(_) => return broken,
            Ok(_) => continue,
        }
    }
}

/// What the source waits for on stream 0.
#[derive(Clone, Copy)]
enum Awaited {
    Ready,
    Resumed,
}

impl Awaited {
    fn is(self, m: &Message<'_>) -> bool {
        matches!(
            (self, m),
            (Awaited::Ready, Message::Ready) | (Awaited::Resumed, Message::Resumed { .. })
        )
    }
}

/// Waits for message `want` on stream 0, handling everything else.
fn wait_for(
    rx: &mpsc::Receiver<Ev>,
    ended: &mut HashSet<u16>,
    want: Awaited,
    timeout: Duration,
) -> Result<(), MigrationError> {
    let until = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(ev) => {
                if handle(ev, ended, Some(want)).map_err(|e| why_broken(e, rx))? {
                    return Ok(());
                }
            }
            Err(_) => return Err(MigrationError::SwitchoverTimeout(timeout)),
        }
    }
}

/// True when `ev` is the awaited message.
fn handle(ev: Ev, ended: &mut HashSet<u16>, want: Option<Awaited>) -> Result<bool, MigrationError> {
    match ev {
        Ev::Control(m) => match Message::decode(&m) {
            Ok(m) if want.is_some_and(|w| w.is(&m)) => Ok(true),
            Ok(Message::Failed { reason }) => Err(MigrationError::Destination(reason.into_owned())),
            Ok(m) => Err(MigrationError::Destination(format!(
                "unexpected message from the destination: {}",
                m.name()
            ))),
            Err(e) => Err(MigrationError::Destination(format!(
                "unreadable message from the destination: {e}"
            ))),
        },
        Ev::Outward { stream, result } => match result {
            Ok(()) => {
                ended.insert(stream);
                Ok(false)
            }
            Err(e) => Err(relay_error(stream, e)),
        },
        Ev::Inward { stream, result } => Err(match result {
            Ok(()) => MigrationError::Destination(format!("stream {stream} ended early")),
            Err(e) => relay_error(stream, e),
        }),
    }
}
