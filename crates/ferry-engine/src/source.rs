//! The source side of a migration.
//!
//! ```text
//! connect + handshake N streams          (setup)
//! start the dirty log
//! pass 0: every page; pass k: pages dirtied during pass k-1
//!   after each pass: dirty rate, transfer rate, predicted downtime;
//!   once it fits the limit, more passes while each halves the dirty set
//!   (switch over at the knee: converge.rs);
//!   SDPS: when the guest dirtied more than half of what was sent, throttle
//!   it harder (initial, +step per pass, up to max)
//! stun; final pass; DONE on every stream; device state (+ digest); PREPARE
//! READY from the destination  -> GO: at once alone, under a coordinator
//!                                once it says so (commit.rs)
//! GO; RESUMED                 -> release the guest
//! ```
//! Any failure before GO resumes the guest here (it never stopped running
//! before the stun). If the link fails after GO, the source asks the
//! destination what it did (an authenticated outcome query) and follows its
//! answer; if it cannot get one, the guest stays stunned: never on two hosts.

use ferry_core::error::report;
use std::{
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    CHUNK_PAGES, MigrationError, QUERY_STREAM_BASE,
    stats::{MigrationResult, MigrationStats, PassStats, Phase, Progress},
    wire,
};
use crate::{
    converge::{self, Next, PassEnd},
    guest::{DirtyBitmap, Guest, PAGE_SIZE, PageDigests},
    limits::{LiveLimits, Pacer},
};
use ferry_protocol::{
    Backend, KeySchedule, MemoryCheck, MigrationSpec, ProtocolError, ProtocolMetrics, Side,
    handshake::{FLAG_OUTCOME_QUERY, client_handshake},
    record::{Crypto, Record, RecordReader, RecordWriter},
    stream_crypto,
};

/// How the source runs.
#[derive(Clone)]
pub struct SourceOptions {
    pub backend: Backend,
    pub metrics: Option<ProtocolMetrics>,
    pub connect_timeout: Duration,
    /// Use the software dirty log even where the kernel one works.
    pub software_dirty_log: bool,
    /// Set to cancel the migration (honoured before the switch-over).
    pub cancel: Option<Arc<AtomicBool>>,
    /// Limits that may change while it runs (None: the spec's, fixed).
    pub limits: Option<Arc<LiveLimits>>,
    /// How often progress is reported during a pass.
    pub progress_every: Duration,
    /// Where the release is made durable before GO (a host's journal).
    pub journal: Option<Arc<dyn crate::Journal>>,
    /// Who decides GO at READY (None: the source itself).
    pub commit: Option<Arc<dyn crate::Commit>>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            backend: Backend::default(),
            metrics: None,
            connect_timeout: Duration::from_secs(10),
            software_dirty_log: false,
            cancel: None,
            limits: None,
            progress_every: Duration::from_millis(250),
            journal: None,
            commit: None,
        }
    }
}

/// A failed migration: why (its source), and what had happened until then.
#[derive(Debug, thiserror::Error)]
#[error("migration {} of {} failed", .stats.id, .stats.guest)]
pub struct Failed {
    #[source]
    pub error: MigrationError,
    pub stats: Box<MigrationStats>,
}

enum Cmd {
    Pass { pass: u32, pages: Arc<DirtyBitmap> },
    Message(Vec<u8>),
    Done,
    Finish,
}

enum Report {
    PassDone { pages: u64, zero: u64, bytes: u64 },
    Error { stream: u16, error: ProtocolError },
}

#[derive(Default)]
struct Live {
    bytes: AtomicU64,
    /// Passes the destination has written to memory on every stream
    /// (PASSED), counted from 1.
    passed: AtomicU32,
    /// What each page held when it was last sent (memory check `pages`).
    digests: Option<PageDigests>,
}

struct SenderEnd {
    seal_cpu: Duration,
    wire_bytes: u64,
}

struct Sender {
    tx: mpsc::Sender<Cmd>,
    sock: TcpStream,
    handle: JoinHandle<SenderEnd>,
}

#[allow(clippy::too_many_arguments)]
fn sender_loop(
    stream: u16,
    streams: usize,
    sock: TcpStream,
    crypto: Option<Crypto>,
    max_record: usize,
    guest: Arc<dyn Guest>,
    rx: mpsc::Receiver<Cmd>,
    reports: mpsc::Sender<Report>,
    live: Arc<Live>,
    limits: Arc<LiveLimits>,
) -> SenderEnd {
    let mut w = RecordWriter::new(sock, crypto, max_record);
    let per_batch = wire::pages_per_batch(max_record);
    let (mut total_pages, mut total_batches) = (0u64, 0u64);
    let mut pacer = Pacer::new();
    let mut pace = |w: &RecordWriter<TcpStream>| {
        let wait = pacer.delay(w.wire_bytes, limits.bandwidth(), streams);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    };
    let fail = |e: std::io::Error| Report::Error {
        stream,
        error: ProtocolError::from(e),
    };
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Cmd::Pass { pass, pages } => {
                let mem = guest.memory();
                let (mut sent, mut zero) = (0u64, 0u64);
                let before = w.wire_bytes;
                let chunks = pages.pages().div_ceil(CHUNK_PAGES);
                let mut chunk = stream as usize;
                let mut pending = pages.iter_range(0, 0).peekable(); // empty
                let result: std::io::Result<()> = (|| {
                    loop {
                        let mut b = wire::BatchBuilder::new(w.payload_mut(), pass, per_batch);
                        while !b.is_full() {
                            if pending.peek().is_none() {
                                if chunk >= chunks {
                                    break;
                                }
                                pending = pages
                                    .iter_range(chunk * CHUNK_PAGES, (chunk + 1) * CHUNK_PAGES)
                                    .peekable();
                                chunk += streams;
                                continue;
                            }
                            let p = pending.next().expect("peeked");
                            let fill = |buf: &mut [u8]| {
                                let zero = mem.read_page(p, buf);
                                if let Some(d) = &live.digests {
                                    d.record(p, buf, zero);
                                }
                                zero
                            };
                            if b.push(p as u32, fill) {
                                zero += 1;
                            }
                            sent += 1;
                        }
                        if b.is_empty() {
                            return Ok(());
                        }
                        let len = b.finish();
                        let wb = w.wire_bytes;
                        w.send(len)?;
                        total_batches += 1;
                        live.bytes.fetch_add(w.wire_bytes - wb, Ordering::Relaxed);
                        pace(&w);
                    }
                })();
                total_pages += sent;
                let result = result.and_then(|()| {
                    let wb = w.wire_bytes;
                    w.send_bytes(&wire::pass_message(wire::PASS_END, pass))?;
                    live.bytes.fetch_add(w.wire_bytes - wb, Ordering::Relaxed);
                    Ok(())
                });
                match result {
                    Ok(()) => {
                        let _ = reports.send(Report::PassDone {
                            pages: sent,
                            zero,
                            bytes: w.wire_bytes - before,
                        });
                    }
                    Err(e) => {
                        let _ = reports.send(fail(e));
                        break;
                    }
                }
            }
            Cmd::Message(m) => {
                let wb = w.wire_bytes;
                if let Err(e) = w.send_bytes(&m) {
                    let _ = reports.send(fail(e));
                    break;
                }
                live.bytes.fetch_add(w.wire_bytes - wb, Ordering::Relaxed);
            }
            Cmd::Done => {
                if let Err(e) = w.send_bytes(&wire::done(total_pages, total_batches)) {
                    let _ = reports.send(fail(e));
                    break;
                }
            }
            Cmd::Finish => {
                let _ = w.finish();
                break;
            }
        }
    }
    SenderEnd {
        seal_cpu: w.seal_cpu,
        wire_bytes: w.wire_bytes,
    }
}

/// Messages from the destination on stream 0, or why they stopped.
enum Inbound {
    Msg(Vec<u8>),
    Closed(ProtocolError),
}

fn reader_loop(
    sock: TcpStream,
    crypto: Option<Crypto>,
    max_record: usize,
    metrics: Option<ProtocolMetrics>,
    tx: mpsc::Sender<Inbound>,
    live: Arc<Live>,
) {
    let mut r = RecordReader::new(sock, crypto, max_record, metrics);
    loop {
        match r.read_record() {
            Ok(Record::Data(d)) => {
                if let Some(pass) = wire::parse_pass(wire::PASSED, d) {
                    live.passed
                        .fetch_max(pass.saturating_add(1), Ordering::Relaxed);
                    continue;
                }
                if tx.send(Inbound::Msg(d.to_vec())).is_err() {
                    return;
                }
            }
            Ok(Record::End) => {
                let _ = tx.send(Inbound::Closed(ProtocolError::Truncated {
                    records: r.records(),
                }));
                return;
            }
            Err(e) => {
                let _ = tx.send(Inbound::Closed(e));
                return;
            }
        }
    }
}

/// Opens and handshakes one stream.
#[allow(clippy::too_many_arguments)]
pub(crate) fn open_stream(
    spec: &MigrationSpec,
    schedule: Option<&KeySchedule>,
    opts: &SourceOptions,
    addr: SocketAddr,
    index: u16,
    streams: u16,
    flags: u16,
) -> Result<TcpStream, MigrationError> {
    let mut s = TcpStream::connect_timeout(&addr, opts.connect_timeout).map_err(|source| {
        MigrationError::Connect {
            stream: index,
            addr,
            source,
        }
    })?;
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(opts.connect_timeout)).ok();
    client_handshake(
        &mut s,
        &spec.id,
        spec.transport,
        schedule,
        opts.backend,
        index,
        streams,
        flags,
    )
    .map_err(|source| MigrationError::Stream {
        stream: index,
        source,
    })?;
    s.set_read_timeout(None).ok();
    // A destination that stops reading (dead, or a black-holing path) fails
    // the migration instead of blocking a sender for ever.
    s.set_write_timeout(Some(spec.limits.switchover_timeout))
        .ok();
    Ok(s)
}

/// Opens and handshakes every stream of `spec`, in parallel; on any
/// failure, closes those that opened.
pub(crate) fn connect_streams(
    spec: &MigrationSpec,
    schedule: Option<&KeySchedule>,
    opts: &SourceOptions,
) -> Result<Vec<TcpStream>, MigrationError> {
    let socks: Vec<Result<TcpStream, MigrationError>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..spec.streams)
            .map(|i| {
                s.spawn(move || {
                    open_stream(
                        spec,
                        schedule,
                        opts,
                        spec.destination.migration,
                        i,
                        spec.streams,
                        0,
                    )
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("connect thread"))
            .collect()
    });
    let mut connected = Vec::new();
    for s in socks {
        match s {
            Ok(s) => connected.push(s),
            Err(e) => {
                for c in &connected {
                    let _ = c.shutdown(Shutdown::Both);
                }
                return Err(e);
            }
        }
    }
    Ok(connected)
}

/// Asks the destination what became of the migration, over a fresh,
/// authenticated query stream. Some(true): it resumed the guest.
pub(crate) fn query_outcome(
    spec: &MigrationSpec,
    schedule: Option<&KeySchedule>,
    opts: &SourceOptions,
) -> Result<Option<bool>, String> {
    let mut last = String::new();
    for attempt in 0..8u16 {
        let index = QUERY_STREAM_BASE + attempt;
        let r = (|| -> Result<Option<bool>, String> {
            let s = open_stream(
                spec,
                schedule,
                opts,
                spec.destination.migration,
                index,
                spec.streams,
                FLAG_OUTCOME_QUERY,
            )
            .map_err(|e| report(&e).to_string())?;
            s.set_read_timeout(Some(opts.connect_timeout)).ok();
            let (tx, rx) = stream_crypto(schedule, opts.backend, index, Side::Source);
            let mut w =
                RecordWriter::new(s.try_clone().map_err(|e| report(&e).to_string())?, tx, 64);
            w.send_bytes(&[wire::QUERY])
                .map_err(|e| report(&e).to_string())?;
            let mut r = RecordReader::new(s, rx, 64, opts.metrics.clone());
            match r.read_record().map_err(|e| report(&e).to_string())? {
                Record::Data([wire::OUTCOME, 1]) => Ok(Some(true)),
                Record::Data([wire::OUTCOME, 2]) => Ok(Some(false)),
                Record::Data([wire::OUTCOME, _]) => Ok(None),
                _ => Err("unexpected answer to an outcome query".into()),
            }
        })();
        match r {
            Ok(Some(v)) => return Ok(Some(v)),
            // The destination has not decided yet: ask again shortly.
            Ok(None) => last = "the destination has not decided yet".into(),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250 << attempt.min(4)));
    }
    Err(last)
}

/// Makes the release durable before GO: a source restarted from here on
/// does not run the guest again.
pub(crate) fn journal_release(
    opts: &SourceOptions,
    spec: &MigrationSpec,
) -> Result<(), MigrationError> {
    let Some(j) = &opts.journal else {
        return Ok(());
    };
    j.write(crate::journal::Entry::Released {
        id: spec.id,
        guest: &spec.guest,
        destination: &spec.destination.host,
    })
    .map_err(MigrationError::Journal)
}

/// The destination discarded the guest after GO: it is this host's again.
pub(crate) fn journal_reclaim(opts: &SourceOptions, spec: &MigrationSpec) {
    let Some(j) = &opts.journal else { return };
    if let Err(e) = j.write(crate::journal::Entry::Reclaimed {
        id: spec.id,
        guest: &spec.guest,
    }) {
        // It runs here now; a restart would not boot it again, which an
        // operator sees in the log.
        tracing::error!(migration = %spec.id, guest = %spec.guest, error = %report(&e), "cannot record that the guest came back");
    }
}

/// How long a broken stream waits for the destination to say why: the
/// destination first lets go of the guest, and a loaded machine can take
/// a while to schedule that (500 ms was not always enough in CI). A dead
/// destination closes stream 0 and ends the wait at once.
pub(crate) const WHY_WAIT: Duration = Duration::from_secs(2);

/// A stream broke. A destination that detects a bad record says why on
/// stream 0 (FAILED) and closes every stream; the close can reach this side
/// first, on whichever stream it was sending. The destination's reason
/// (which stream, what it saw) is the error when it arrives in time;
/// otherwise (a dead destination, a cut link) the break itself is.
fn why_broken(broken: MigrationError, in_rx: &mpsc::Receiver<Inbound>) -> MigrationError {
    let until = Instant::now() + WHY_WAIT;
    loop {
        match in_rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(Inbound::Msg(m)) if m.first() == Some(&wire::FAILED) => {
                return MigrationError::Destination(String::from_utf8_lossy(&m[1..]).into_owned());
            }
            Ok(Inbound::Msg(_)) => continue,
            Ok(Inbound::Closed(_)) | Err(_) => return broken,
        }
    }
}

/// The limits this run reads as it goes: the caller's, filled from the
/// spec where no change has set them, or the spec's own.
/// A sender's stream error, if one came, with the destination's reason
/// for it when that follows in time.
fn sender_broke(
    rep_rx: &mpsc::Receiver<Report>,
    in_rx: &mpsc::Receiver<Inbound>,
) -> Option<MigrationError> {
    match rep_rx.try_recv() {
        Ok(Report::Error { stream, error }) => Some(why_broken(
            MigrationError::Stream {
                stream,
                source: error,
            },
            in_rx,
        )),
        _ => None,
    }
}

/// What the destination said or did unasked (`when`): a refusal, a
/// message out of turn, or its stream's end. None: nothing.
fn unsolicited(in_rx: &mpsc::Receiver<Inbound>, when: &str) -> Option<MigrationError> {
    match in_rx.try_recv() {
        Ok(Inbound::Msg(m)) if m.first() == Some(&wire::FAILED) => Some(
            MigrationError::Destination(String::from_utf8_lossy(&m[1..]).into_owned()),
        ),
        Ok(Inbound::Msg(_)) => Some(MigrationError::Destination(format!(
            "unexpected message {when}"
        ))),
        Ok(Inbound::Closed(e)) => Some(MigrationError::Stream {
            stream: 0,
            source: e,
        }),
        Err(_) => None,
    }
}

pub(crate) fn live_limits(spec: &MigrationSpec, opts: &SourceOptions) -> Arc<LiveLimits> {
    match &opts.limits {
        Some(l) => {
            l.fill(&spec.limits);
            l.clone()
        }
        None => Arc::new(LiveLimits::new(&spec.limits)),
    }
}

pub(crate) struct Run<'a> {
    pub(crate) spec: &'a MigrationSpec,
    pub(crate) start: Instant,
    pub(crate) stats: MigrationStats,
}

impl<'a> Run<'a> {
    pub(crate) fn new(spec: &'a MigrationSpec, opts: &SourceOptions, mem_bytes: u64) -> Self {
        Run {
            spec,
            start: Instant::now(),
            stats: MigrationStats {
                backend: opts.backend.name().into(),
                streams: spec.streams,
                downtime_limit_seconds: spec.limits.downtime_limit.as_secs_f64(),
                bandwidth_limit: spec.limits.bandwidth,
                total_bytes: mem_bytes,
                remaining_bytes: mem_bytes,
                ..MigrationStats::begin(
                    spec.id,
                    &spec.guest,
                    &spec.source.host,
                    &spec.destination.host,
                    spec.mode,
                    spec.transport,
                )
            },
        }
    }

    pub(crate) fn fail(mut self, error: MigrationError) -> Failed {
        self.stats.result = MigrationResult::Failed;
        self.stats.error = Some(report(&error).to_string());
        self.stats.total_seconds = self.start.elapsed().as_secs_f64();
        tracing::warn!(migration = %self.spec.id, guest = %self.spec.guest, error = %report(&error),
            guest_kept = error.guest_kept(), "migration failed");
        Failed {
            error,
            stats: Box::new(self.stats),
        }
    }
}

/// Migrates `guest` to the destination named in `spec`. On success the guest
/// has been released here and runs on the destination; on failure it runs
/// here (unless the error is [`MigrationError::InDoubt`]).
pub fn migrate_out(
    guest: Arc<dyn Guest>,
    spec: &MigrationSpec,
    opts: &SourceOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<MigrationStats, Failed> {
    let start = Instant::now();
    let mem_bytes = guest.memory().len();
    let mut run = Run::new(spec, opts, mem_bytes);
    if let Err(e) = spec.check() {
        return Err(run.fail(MigrationError::Spec(e)));
    }
    if mem_bytes != spec.memory {
        return Err(run.fail(MigrationError::Spec(format!(
            "guest has {mem_bytes} bytes, the spec says {}",
            spec.memory
        ))));
    }
    let schedule = spec
        .key
        .as_ref()
        .map(|k| KeySchedule::new(k, spec.nonce, &spec.id));
    let streams = spec.streams as usize;
    let max_record = spec.limits.max_record as usize;
    let limits = live_limits(spec, opts);
    tracing::info!(migration = %spec.id, guest = %spec.guest, destination = %spec.destination.host,
        transport = %spec.transport, streams, "migration: setup");
    progress(&Progress {
        phase: Phase::Setup,
        total_bytes: mem_bytes,
        remaining_bytes: mem_bytes,
        ..Default::default()
    });

    // Setup: all streams, in parallel.
    let connected = match connect_streams(spec, schedule.as_ref(), opts) {
        Ok(c) => c,
        Err(e) => return Err(run.fail(e)),
    };
    let live = Arc::new(Live {
        digests: (spec.limits.verify_memory == MemoryCheck::Pages)
            .then(|| PageDigests::new(guest.memory().pages())),
        ..Live::default()
    });
    let (rep_tx, rep_rx) = mpsc::channel();
    let (in_tx, in_rx) = mpsc::channel();
    let mut senders = Vec::new();
    let mut reader = None;
    for (i, sock) in connected.into_iter().enumerate() {
        let (tx_crypto, rx_crypto) =
            stream_crypto(schedule.as_ref(), opts.backend, i as u16, Side::Source);
        if i == 0 {
            let rs = sock.try_clone().expect("clone stream 0");
            let (m, t, l) = (opts.metrics.clone(), in_tx.clone(), live.clone());
            reader = Some(
                std::thread::Builder::new()
                    .name("mig-src-rx".into())
                    .spawn(move || reader_loop(rs, rx_crypto, max_record, m, t, l))
                    .expect("spawn"),
            );
        }
        let (tx, rx) = mpsc::channel();
        let (g, r, l, bw) = (guest.clone(), rep_tx.clone(), live.clone(), limits.clone());
        let ws = sock.try_clone().expect("clone stream");
        let handle = std::thread::Builder::new()
            .name(format!("mig-src-{i}"))
            .spawn(move || {
                sender_loop(
                    i as u16, streams, ws, tx_crypto, max_record, g, rx, r, l, bw,
                )
            })
            .expect("spawn sender");
        senders.push(Sender { tx, sock, handle });
    }
    drop(in_tx);
    run.stats.setup_seconds = start.elapsed().as_secs_f64();
    tracing::info!(migration = %spec.id, setup_s = run.stats.setup_seconds, streams, "migration: streams up");

    let shutdown = |senders: Vec<Sender>, graceful: bool| -> (Duration, u64) {
        let mut cpu = Duration::ZERO;
        let mut bytes = 0;
        for s in &senders {
            if graceful {
                let _ = s.tx.send(Cmd::Finish);
            } else {
                let _ = s.sock.shutdown(Shutdown::Both);
            }
        }
        for s in senders {
            drop(s.tx);
            if let Ok(end) = s.handle.join() {
                cpu += end.seal_cpu;
                bytes += end.wire_bytes;
            }
            let _ = s.sock.shutdown(Shutdown::Both);
        }
        (cpu, bytes)
    };

    // Abort before the guest was stunned: it never stopped running here.
    macro_rules! abort_running {
        ($err:expr) => {{
            guest.set_throttle(0);
            guest.memory().stop_dirty_log();
            if let Some(s) = senders.first() {
                let _ = s.tx.send(Cmd::Message(
                    [&[wire::ABORT][..], b"source aborted"].concat(),
                ));
            }
            let (cpu, bytes) = shutdown(senders, false);
            run.stats.seal_cpu_seconds = cpu.as_secs_f64();
            run.stats.transferred_bytes = bytes;
            if let Some(r) = reader.take() {
                let _ = r.join();
            }
            return Err(run.fail($err));
        }};
    }

    let kind = match guest.memory().start_dirty_log(opts.software_dirty_log) {
        Ok(k) => k,
        Err(e) => abort_running!(MigrationError::Guest(crate::guest::GuestError::Memory(e))),
    };
    run.stats.dirty_log = format!("{kind:?}").to_lowercase();

    let pages = guest.memory().pages();
    let mut to_send = Arc::new(DirtyBitmap::all(pages));
    let mut pass = 0u32;
    let mut throttle = 0u8;

    // Early refusal by the destination (it never sends anything before READY otherwise).
    let check_inbound = |in_rx: &mpsc::Receiver<Inbound>| unsolicited(in_rx, "before switch-over");

    // Runs one pass over `bitmap` on every stream, reporting progress.
    let tick = opts.progress_every.min(Duration::from_millis(50));
    // The last pass's dirty rate and predicted stun, for in-pass progress.
    let carried = std::cell::Cell::new((0.0f64, 0.0f64));
    let run_pass = |pass: u32,
                    bitmap: &Arc<DirtyBitmap>,
                    senders: &[Sender],
                    progress: &mut dyn FnMut(&Progress),
                    phase: Phase,
                    throttle: u8|
     -> Result<(u64, u64, u64), MigrationError> {
        let mut last_progress = Instant::now();
        for s in senders {
            let _ = s.tx.send(Cmd::Pass {
                pass,
                pages: bitmap.clone(),
            });
        }
        let (mut pages, mut zero, mut bytes) = (0, 0, 0);
        let mut left = senders.len();
        let total = bitmap.count() as u64 * PAGE_SIZE as u64;
        let base = live.bytes.load(Ordering::Relaxed);
        let pass_start = Instant::now();
        while left > 0 {
            match rep_rx.recv_timeout(tick) {
                Ok(Report::PassDone {
                    pages: p,
                    zero: z,
                    bytes: b,
                }) => {
                    pages += p;
                    zero += z;
                    bytes += b;
                    left -= 1;
                }
                Ok(Report::Error { stream, error }) => {
                    return Err(why_broken(
                        MigrationError::Stream {
                            stream,
                            source: error,
                        },
                        &in_rx,
                    ));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // The destination may have given up (FAILED on stream 0).
                    if let Some(e) = check_inbound(&in_rx) {
                        return Err(e);
                    }
                    if last_progress.elapsed() < opts.progress_every {
                        continue;
                    }
                    last_progress = Instant::now();
                    let sent = live.bytes.load(Ordering::Relaxed) - base;
                    let rate = sent as f64 / pass_start.elapsed().as_secs_f64().max(1e-3);
                    let (dirty_rate, expected) = carried.get();
                    let remaining = total.saturating_sub(sent);
                    progress(&Progress {
                        phase,
                        pass,
                        elapsed_seconds: start.elapsed().as_secs_f64(),
                        transferred_bytes: live.bytes.load(Ordering::Relaxed),
                        total_bytes: mem_bytes,
                        remaining_bytes: remaining,
                        throttle_percent: throttle,
                        transfer_rate: rate,
                        dirty_rate,
                        pass_bytes: sent.min(total),
                        pass_total_bytes: total,
                        expected_downtime_seconds: expected,
                        eta_seconds: crate::stats::eta(remaining, rate, dirty_rate),
                    });
                    if let Some(c) = &opts.cancel
                        && c.load(Ordering::Relaxed)
                        && phase == Phase::PreCopy
                    {
                        return Err(MigrationError::Cancelled("by request".into()));
                    }
                    if start.elapsed() > spec.limits.max_time && phase == Phase::PreCopy {
                        return Err(MigrationError::GaveUp {
                            passes: pass,
                            seconds: start.elapsed().as_secs_f64(),
                            remaining: total.saturating_sub(sent),
                        });
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(MigrationError::Stream {
                        stream: 0,
                        source: ProtocolError::Malformed("sender threads vanished"),
                    });
                }
            }
        }
        Ok((pages, zero, bytes))
    };

    let mut next_dirty = DirtyBitmap::new(pages);
    // The pass that first fitted the downtime limit (while they still fit).
    let mut first_fit: Option<u32> = None;
    loop {
        let t0 = Instant::now();
        let (sent, zero, bytes) =
            match run_pass(pass, &to_send, &senders, progress, Phase::PreCopy, throttle) {
                Ok(v) => v,
                Err(e) => abort_running!(e),
            };
        let secs = t0.elapsed().as_secs_f64().max(1e-6);
        if let Err(e) = guest.memory().collect_dirty(&mut next_dirty) {
            abort_running!(MigrationError::Guest(crate::guest::GuestError::Memory(e)));
        }
        if let Some(e) = check_inbound(&in_rx) {
            abort_running!(e);
        }
        let dirtied = next_dirty.count() as u64;
        let transfer_rate = bytes as f64 / secs;
        let dirty_rate = (dirtied * PAGE_SIZE as u64) as f64 / secs;
        // What the stun would cost: the dirty pages at the measured rate.
        let expected = (dirtied * PAGE_SIZE as u64) as f64 / transfer_rate.max(1.0);
        run.stats.normal_pages += sent - zero;
        run.stats.zero_pages += zero;
        run.stats.pass_history.push(PassStats {
            pass,
            pages: sent,
            zero_pages: zero,
            bytes,
            seconds: secs,
            dirtied_pages: dirtied,
            dirty_rate,
            transfer_rate,
            expected_downtime_seconds: expected,
            throttle_percent: throttle,
            stunned: false,
        });
        run.stats.dirty_rate = dirty_rate;
        run.stats.transfer_rate = transfer_rate;
        run.stats.remaining_bytes = dirtied * PAGE_SIZE as u64;
        tracing::info!(migration = %spec.id, pass, pages = sent, zero, bytes, seconds = secs,
            dirty_rate_mb_s = dirty_rate / 1e6, transfer_rate_mb_s = transfer_rate / 1e6,
            expected_downtime_ms = expected * 1e3, throttle, "migration: pass");
        carried.set((dirty_rate, expected));
        progress(&Progress {
            phase: Phase::PreCopy,
            pass,
            elapsed_seconds: start.elapsed().as_secs_f64(),
            transferred_bytes: live.bytes.load(Ordering::Relaxed),
            total_bytes: mem_bytes,
            remaining_bytes: run.stats.remaining_bytes,
            dirty_rate,
            transfer_rate,
            throttle_percent: throttle,
            pass_bytes: bytes,
            pass_total_bytes: bytes,
            expected_downtime_seconds: expected,
            eta_seconds: crate::stats::eta(run.stats.remaining_bytes, transfer_rate, dirty_rate),
        });
        let limit = limits.downtime_limit(spec.limits.downtime_limit);
        run.stats.downtime_limit_seconds = limit.as_secs_f64();
        run.stats.bandwidth_limit = limits.bandwidth();
        first_fit = (expected <= limit.as_secs_f64()).then(|| first_fit.unwrap_or(pass));
        let out_of_time = start.elapsed() > spec.limits.max_time;
        let next = converge::next(&PassEnd {
            sent,
            dirtied,
            expected_seconds: expected,
            limit_seconds: limit.as_secs_f64(),
            fitted_passes: first_fit.map(|f| pass - f),
            out_of_time,
        });
        pass += 1;
        if let Some(c) = &opts.cancel
            && c.load(Ordering::Relaxed)
        {
            abort_running!(MigrationError::Cancelled("by request".into()));
        }
        match next {
            Next::SwitchOver => break,
            Next::Shrink => {
                tracing::info!(migration = %spec.id, pass, dirtied, expected_downtime_ms = expected * 1e3,
                    "migration: fits the downtime limit, one more pass to shrink the stun");
            }
            Next::Converge if out_of_time => {
                let e = MigrationError::GaveUp {
                    passes: pass,
                    seconds: start.elapsed().as_secs_f64(),
                    remaining: run.stats.remaining_bytes,
                };
                abort_running!(e);
            }
            // SDPS: the guest dirtied more than half of what the link carried.
            Next::Converge if (dirtied * PAGE_SIZE as u64) as f64 > 0.5 * bytes as f64 => {
                throttle = if throttle == 0 {
                    spec.limits.throttle_initial
                } else {
                    throttle
                        .saturating_add(spec.limits.throttle_step)
                        .min(spec.limits.throttle_max)
                };
                guest.set_throttle(throttle);
                run.stats.throttle_max_percent = run.stats.throttle_max_percent.max(throttle);
                tracing::info!(migration = %spec.id, throttle, "migration: not converging, throttling the guest (SDPS)");
            }
            Next::Converge => {}
        }
        to_send = Arc::new(std::mem::replace(&mut next_dirty, DirtyBitmap::new(pages)));
    }
    run.stats.throttle_percent = throttle;

    // What the senders handed to their sockets may still be in flight or
    // queued at the destination (megabytes on a fast or long path). Stun
    // once the destination has the last pass in memory, so the stun pays
    // for the final dirty set, not for that backlog; the guest keeps
    // running (and the dirty log counting) meanwhile.
    let drain = Instant::now();
    let drain_deadline = drain + spec.limits.switchover_timeout;
    while live.passed.load(Ordering::Relaxed) < pass {
        if let Some(e) = check_inbound(&in_rx) {
            abort_running!(e);
        }
        if let Ok(Report::Error { stream, error }) = rep_rx.try_recv() {
            abort_running!(why_broken(
                MigrationError::Stream {
                    stream,
                    source: error,
                },
                &in_rx,
            ));
        }
        if Instant::now() >= drain_deadline {
            tracing::warn!(migration = %spec.id, pass, "migration: the destination never confirmed the last pass; stunning anyway");
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    run.stats.drain_seconds = drain.elapsed().as_secs_f64();

    // Switch-over.
    tracing::info!(migration = %spec.id, remaining_bytes = run.stats.remaining_bytes, "migration: switch-over, stunning the guest");
    let stun = Instant::now();
    if let Err(e) = guest.pause() {
        abort_running!(MigrationError::Guest(e));
    }
    // From here until GO, a failure resumes the guest here.
    macro_rules! abort_stunned {
        ($err:expr) => {{
            let r = guest.resume();
            tracing::warn!(migration = %spec.id, resumed = r.is_ok(), "migration: switch-over failed, guest resumed on the source");
            abort_running!($err)
        }};
    }
    if let Err(e) = guest.memory().collect_dirty(&mut next_dirty) {
        abort_stunned!(MigrationError::Guest(crate::guest::GuestError::Memory(e)));
    }
    // The dirty log stays armed through the stun: tearing it down walks
    // every page table entry of the guest (some 30 ms per GiB), which is
    // stun time that grows with memory. It goes after the switch-over, or
    // with the abort that resumes the guest here.
    let final_set = Arc::new(std::mem::replace(&mut next_dirty, DirtyBitmap::new(pages)));
    run.stats.stun.pause_seconds = stun.elapsed().as_secs_f64();
    progress(&Progress {
        phase: Phase::Switchover,
        pass,
        elapsed_seconds: start.elapsed().as_secs_f64(),
        transferred_bytes: live.bytes.load(Ordering::Relaxed),
        total_bytes: mem_bytes,
        remaining_bytes: final_set.count() as u64 * PAGE_SIZE as u64,
        throttle_percent: throttle,
        ..Default::default()
    });
    let stunned_from = live.bytes.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let (sent, zero, bytes) = match run_pass(
        pass,
        &final_set,
        &senders,
        progress,
        Phase::Switchover,
        throttle,
    ) {
        Ok(v) => v,
        Err(e) => abort_stunned!(e),
    };
    run.stats.normal_pages += sent - zero;
    run.stats.zero_pages += zero;
    let secs = t0.elapsed().as_secs_f64().max(1e-6);
    run.stats.pass_history.push(PassStats {
        pass,
        pages: sent,
        zero_pages: zero,
        bytes,
        seconds: secs,
        transfer_rate: bytes as f64 / secs,
        throttle_percent: throttle,
        stunned: true,
        ..Default::default()
    });
    run.stats.passes = pass + 1;
    guest.set_throttle(0);
    let state = match guest.save_state() {
        Ok(s) => s,
        Err(e) => abort_stunned!(MigrationError::Guest(e)),
    };
    run.stats.device_state_bytes = state.len() as u64;
    for s in &senders {
        let _ = s.tx.send(Cmd::Done);
    }
    for chunk in wire::state_chunks(&state, max_record) {
        let _ = senders[0].tx.send(Cmd::Message(chunk));
    }
    let digest = match spec.limits.verify_memory {
        MemoryCheck::Off => None,
        // The senders have recorded every page of the final pass.
        MemoryCheck::Pages => live.digests.as_ref().map(PageDigests::summary),
        // SAFETY: the guest is paused and the final pass is sent: nothing
        // writes its memory until it resumes here or is released.
        MemoryCheck::Full => Some(unsafe { guest.memory().digest_quiescent(2) }),
    };
    if let Some(d) = digest {
        let _ = senders[0].tx.send(Cmd::Message(
            [&[wire::DIGEST][..], &d.to_be_bytes()].concat(),
        ));
    }
    let _ = senders[0].tx.send(Cmd::Message(vec![wire::PREPARE]));
    let prepared = Instant::now();
    run.stats.stun.final_pass_seconds =
        (prepared - stun).as_secs_f64() - run.stats.stun.pause_seconds;

    // READY, or the switch-over fails and the guest resumes here.
    let deadline = Instant::now() + spec.limits.switchover_timeout;
    let ready = loop {
        if let Some(e) = sender_broke(&rep_rx, &in_rx) {
            break Err(e);
        }
        match in_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Inbound::Msg(m)) if m.first() == Some(&wire::READY) => break Ok(()),
            Ok(Inbound::Msg(m)) if m.first() == Some(&wire::FAILED) => {
                break Err(MigrationError::Destination(
                    String::from_utf8_lossy(&m[1..]).into_owned(),
                ));
            }
            Ok(Inbound::Msg(_)) => {
                break Err(MigrationError::Destination(
                    "unexpected message during switch-over".into(),
                ));
            }
            Ok(Inbound::Closed(e)) => {
                break Err(MigrationError::Stream {
                    stream: 0,
                    source: e,
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => {
                break Err(MigrationError::SwitchoverTimeout(
                    spec.limits.switchover_timeout,
                ));
            }
        }
    };
    if let Err(e) = ready {
        abort_stunned!(e);
    }
    if let Some(c) = &opts.commit {
        let go =
            crate::commit::await_go(&**c, &spec.id, 2 * spec.limits.switchover_timeout, || {
                if let Some(e) = sender_broke(&rep_rx, &in_rx) {
                    return Err(e);
                }
                unsolicited(&in_rx, "while waiting for GO").map_or(Ok(()), Err)
            });
        if let Err(e) = go {
            abort_stunned!(e);
        }
    }
    run.stats.stun.ready_seconds = prepared.elapsed().as_secs_f64();
    if let Err(e) = journal_release(opts, spec) {
        abort_stunned!(e);
    }
    // Committed: the source will never run this guest again unless the
    // destination says it discarded it.
    let _ = senders[0].tx.send(Cmd::Message(vec![wire::GO]));
    tracing::info!(migration = %spec.id, "migration: destination ready, sent GO");
    let resumed = loop {
        match in_rx.recv_timeout(spec.limits.switchover_timeout) {
            Ok(Inbound::Msg(m)) if m.first() == Some(&wire::RESUMED) => break Ok(true),
            Ok(Inbound::Msg(m)) if m.first() == Some(&wire::FAILED) => break Ok(false),
            Ok(Inbound::Msg(_)) => continue,
            Ok(Inbound::Closed(e)) => break Err(report(&e).to_string()),
            Err(_) => break Err("no answer to GO".to_string()),
        }
    };
    let resumed = match resumed {
        Ok(r) => r,
        Err(why) => {
            tracing::warn!(migration = %spec.id, why = %why, "migration: lost the destination after GO, asking what it did");
            match query_outcome(spec, schedule.as_ref(), opts) {
                Ok(Some(r)) => r,
                Ok(None) => unreachable!("query_outcome only returns decided outcomes"),
                Err(e) => {
                    guest.memory().stop_dirty_log();
                    let (cpu, bytes) = shutdown(senders, false);
                    run.stats.seal_cpu_seconds = cpu.as_secs_f64();
                    run.stats.transferred_bytes = bytes;
                    return Err(run.fail(MigrationError::InDoubt(format!(
                        "{why}; outcome query: {e}"
                    ))));
                }
            }
        }
    };
    if !resumed {
        journal_reclaim(opts, spec);
        abort_stunned!(MigrationError::Destination(
            "the destination discarded the guest after GO".into()
        ));
    }
    run.stats.set_downtime(stun.elapsed().as_secs_f64());
    run.stats.stun.commit_seconds = run.stats.downtime_seconds
        - run.stats.stun.pause_seconds
        - run.stats.stun.final_pass_seconds
        - run.stats.stun.ready_seconds;
    run.stats.stunned_bytes = live.bytes.load(Ordering::Relaxed) - stunned_from;
    guest.release();
    guest.memory().stop_dirty_log();
    let (cpu, bytes) = shutdown(senders, true);
    if let Some(r) = reader.take() {
        let _ = r.join();
    }
    run.stats.seal_cpu_seconds = cpu.as_secs_f64();
    run.stats.transferred_bytes = bytes;
    run.stats.remaining_bytes = 0;
    run.stats.result = MigrationResult::Completed;
    run.stats.total_seconds = start.elapsed().as_secs_f64();
    // The destination refuses to become READY on a digest mismatch.
    run.stats.memory_identical = match (spec.limits.verify_memory, &live.digests) {
        (MemoryCheck::Off, _) => None,
        // What was sent arrived. Whether the dirty log missed a write shows
        // only against this (released, so frozen) memory: checked here,
        // after the stun.
        (MemoryCheck::Pages, Some(d)) => {
            let differ = guest.memory().pages_not_matching(d);
            if !differ.is_empty() {
                let why = format!(
                    "{} page(s) of the source's memory (the first: {}) differ from what was sent: the dirty log missed writes, and the guest on {} may be corrupt",
                    differ.len(),
                    differ[0],
                    spec.destination.host
                );
                tracing::error!(migration = %spec.id, pages = differ.len(), "migration: {why}");
                run.stats.note = Some(why);
            }
            Some(differ.is_empty())
        }
        (MemoryCheck::Pages, None) => None,
        (MemoryCheck::Full, _) => Some(true),
    };
    tracing::info!(migration = %spec.id, total_s = run.stats.total_seconds, downtime_ms = run.stats.downtime_seconds * 1e3,
                setup_s = run.stats.setup_seconds, bytes = run.stats.transferred_bytes, zero_pages = run.stats.zero_pages,
        passes = run.stats.passes, seal_cpu_s = run.stats.seal_cpu_seconds, "migration: completed");
    progress(&Progress {
        phase: Phase::Completed,
        pass,
        elapsed_seconds: run.stats.total_seconds,
        transferred_bytes: bytes,
        total_bytes: mem_bytes,
        remaining_bytes: 0,
        dirty_rate: run.stats.dirty_rate,
        transfer_rate: run.stats.transfer_rate,
        throttle_percent: 0,
        eta_seconds: Some(0.0),
        ..Default::default()
    });
    Ok(run.stats)
}
