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
    net::{Shutdown, TcpStream},
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
    wire::{self, Answer, Message},
};
use crate::{
    converge::{self, Next, PassEnd},
    guest::{DirtyBitmap, Guest, PAGE_SIZE, PageDigests},
    limits::{LiveLimits, Pacer},
};
use ferry_protocol::{
    Backend, KeySchedule, MemoryCheck, MigrationSpec, ProtocolError, ProtocolMetrics, Side,
    handshake::{ClientHello, StreamPurpose, client_handshake},
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

/// One stream's sending end, on its own thread: its share of each pass's
/// pages (chunks `stream`, `stream + streams`, ...) in PAGES records,
/// paced to its share of the bandwidth, and the control messages it is
/// handed, in order.
struct StreamSender {
    stream: u16,
    streams: usize,
    w: RecordWriter<TcpStream>,
    guest: Arc<dyn Guest>,
    live: Arc<Live>,
    limits: Arc<LiveLimits>,
    pacer: Pacer,
    per_batch: usize,
    /// Pages and batches sent over all passes, for DONE.
    total_pages: u64,
    total_batches: u64,
}

impl StreamSender {
    /// Serves `rx` until Finish, or until a send fails (reported).
    fn run(mut self, rx: mpsc::Receiver<Cmd>, reports: mpsc::Sender<Report>) -> SenderEnd {
        let stream = self.stream;
        let fail = |e: std::io::Error| Report::Error {
            stream,
            error: ProtocolError::from(e),
        };
        while let Ok(cmd) = rx.recv() {
            let sent = match cmd {
                Cmd::Pass { pass, pages } => {
                    let before = self.w.wire_bytes;
                    self.pass(pass, &pages).map(|(pages, zero)| {
                        let _ = reports.send(Report::PassDone {
                            pages,
                            zero,
                            bytes: self.w.wire_bytes - before,
                        });
                    })
                }
                Cmd::Message(m) => self.message(&m),
                Cmd::Done => {
                    let done = Message::Done {
                        pages: self.total_pages,
                        batches: self.total_batches,
                    };
                    self.w.send_bytes(&done.encode())
                }
                Cmd::Finish => {
                    let _ = self.w.finish();
                    break;
                }
            };
            if let Err(e) = sent {
                let _ = reports.send(fail(e));
                break;
            }
        }
        SenderEnd {
            seal_cpu: self.w.seal_cpu,
            wire_bytes: self.w.wire_bytes,
        }
    }

    /// This stream's pages of `pages` for `pass`, then PASS_END: the pages
    /// sent and how many of them were zero.
    fn pass(&mut self, pass: u32, pages: &DirtyBitmap) -> std::io::Result<(u64, u64)> {
        let (mut sent, mut zero) = (0u64, 0u64);
        let result = self.batches(pass, pages, &mut sent, &mut zero);
        self.total_pages += sent;
        result?;
        self.message(&Message::PassEnd { pass }.encode())?;
        Ok((sent, zero))
    }

    fn batches(
        &mut self,
        pass: u32,
        pages: &DirtyBitmap,
        sent: &mut u64,
        zero: &mut u64,
    ) -> std::io::Result<()> {
        let mem = self.guest.memory();
        let chunks = pages.pages().div_ceil(CHUNK_PAGES);
        let mut chunk = self.stream as usize;
        let mut pending = pages.iter_range(0, 0).peekable(); // empty
        loop {
            let mut b = wire::BatchBuilder::new(self.w.payload_mut(), pass, self.per_batch);
            while !b.is_full() {
                if pending.peek().is_none() {
                    if chunk >= chunks {
                        break;
                    }
                    pending = pages
                        .iter_range(chunk * CHUNK_PAGES, (chunk + 1) * CHUNK_PAGES)
                        .peekable();
                    chunk += self.streams;
                    continue;
                }
                let p = pending.next().expect("peeked");
                let fill = |buf: &mut [u8]| {
                    let zero = mem.read_page(p, buf);
                    if let Some(d) = &self.live.digests {
                        d.record(p, buf, zero);
                    }
                    zero
                };
                if b.push(p as u32, fill) {
                    *zero += 1;
                }
                *sent += 1;
            }
            if b.is_empty() {
                return Ok(());
            }
            let len = b.finish();
            let wb = self.w.wire_bytes;
            self.w.send(len)?;
            self.total_batches += 1;
            self.live
                .bytes
                .fetch_add(self.w.wire_bytes - wb, Ordering::Relaxed);
            let wait = self
                .pacer
                .delay(self.w.wire_bytes, self.limits.bandwidth(), self.streams);
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
    }

    /// One encoded control message, counted in the live byte total.
    fn message(&mut self, m: &[u8]) -> std::io::Result<()> {
        let wb = self.w.wire_bytes;
        self.w.send_bytes(m)?;
        self.live
            .bytes
            .fetch_add(self.w.wire_bytes - wb, Ordering::Relaxed);
        Ok(())
    }
}

/// Messages from the destination on stream 0, or why they stopped.
enum Inbound {
    Ready,
    Failed(String),
    Resumed,
    /// A message out of turn, or one that does not decode: what it was.
    Unexpected(String),
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
                let inbound = match Message::decode(d) {
                    Ok(Message::Passed { pass }) => {
                        live.passed
                            .fetch_max(pass.saturating_add(1), Ordering::Relaxed);
                        continue;
                    }
                    Ok(Message::Ready) => Inbound::Ready,
                    Ok(Message::Failed { reason }) => Inbound::Failed(reason.into_owned()),
                    Ok(Message::Resumed { .. }) => Inbound::Resumed,
                    Ok(m) => Inbound::Unexpected(m.name().into()),
                    Err(e) => Inbound::Unexpected(e.to_string()),
                };
                if tx.send(inbound).is_err() {
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

/// Opens and handshakes stream `index` to the spec's destination.
pub(crate) fn open_stream(
    spec: &MigrationSpec,
    schedule: Option<&KeySchedule>,
    opts: &SourceOptions,
    index: u16,
    purpose: StreamPurpose,
) -> Result<TcpStream, MigrationError> {
    let addr = spec.destination.migration;
    let mut s = TcpStream::connect_timeout(&addr, opts.connect_timeout).map_err(|source| {
        MigrationError::Connect {
            stream: index,
            addr,
            source,
        }
    })?;
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(opts.connect_timeout)).ok();
    let hello = ClientHello::new(spec.id, spec.transport, index, spec.streams, purpose);
    client_handshake(&mut s, hello, schedule, opts.backend).map_err(|source| {
        MigrationError::Stream {
            stream: index,
            source,
        }
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
                s.spawn(move || open_stream(spec, schedule, opts, i, StreamPurpose::Migration))
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

/// What a destination did with a guest after GO, as it says when asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decided {
    Resumed,
    Discarded,
}

/// Why an outcome query got no decided answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueryError {
    #[error("the destination has not decided yet")]
    Undecided,
    #[error("the query stream")]
    Stream(#[source] MigrationError),
    #[error("the query stream")]
    Protocol(#[source] ProtocolError),
    #[error("the destination's answer")]
    Answer(#[source] crate::wire::WireError),
    #[error("{0} in answer to an outcome query")]
    Unexpected(&'static str),
    #[error("the outcome query's stream ended unanswered")]
    Unanswered,
}

/// Asks the destination what became of the migration, over a fresh,
/// authenticated query stream, a few times while it has not decided.
pub(crate) fn query_outcome(
    spec: &MigrationSpec,
    schedule: Option<&KeySchedule>,
    opts: &SourceOptions,
) -> Result<Decided, QueryError> {
    let ask = |index: u16| -> Result<Answer, QueryError> {
        let s = open_stream(spec, schedule, opts, index, StreamPurpose::OutcomeQuery)
            .map_err(QueryError::Stream)?;
        s.set_read_timeout(Some(opts.connect_timeout)).ok();
        let (tx, rx) = stream_crypto(schedule, opts.backend, index, Side::Source);
        let ws = s
            .try_clone()
            .map_err(|e| QueryError::Protocol(ProtocolError::Io(e)))?;
        let mut w = RecordWriter::new(ws, tx, 64);
        w.send_bytes(&Message::Query.encode())
            .map_err(|e| QueryError::Protocol(ProtocolError::Io(e)))?;
        let mut r = RecordReader::new(s, rx, 64, opts.metrics.clone());
        let Record::Data(d) = r.read_record().map_err(QueryError::Protocol)? else {
            return Err(QueryError::Unanswered);
        };
        match Message::decode(d).map_err(QueryError::Answer)? {
            Message::Outcome(a) => Ok(a),
            m => Err(QueryError::Unexpected(m.name())),
        }
    };
    let mut last = QueryError::Undecided;
    for attempt in 0..8u16 {
        match ask(QUERY_STREAM_BASE + attempt) {
            Ok(Answer::Resumed) => return Ok(Decided::Resumed),
            Ok(Answer::Aborted) => return Ok(Decided::Discarded),
            // Not decided yet: ask again shortly.
            Ok(Answer::Unknown) => last = QueryError::Undecided,
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
            Ok(Inbound::Failed(reason)) => return MigrationError::Destination(reason),
            Ok(Inbound::Closed(_)) | Err(_) => return broken,
            Ok(_) => continue,
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
        Ok(Inbound::Failed(reason)) => Some(MigrationError::Destination(reason)),
        Ok(Inbound::Ready | Inbound::Resumed) => Some(MigrationError::Destination(format!(
            "unexpected message {when}"
        ))),
        Ok(Inbound::Unexpected(what)) => Some(MigrationError::Destination(format!(
            "unexpected message {when}: {what}"
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

/// The source's state machine: each state is one function of [`Outgoing`]
/// that does its work and names the next. Where the guest is follows from
/// the state: running here before [`Step::FinalPass`], paused here from it
/// until GO is sent in [`Step::Commit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// One pre-copy pass while the guest runs; then another, or the drain.
    PreCopy,
    /// Until the destination has the last pre-copy pass in memory.
    Drain,
    /// Pause the guest.
    Stun,
    /// The final dirty set, the device state, the digest and PREPARE.
    FinalPass,
    /// Until the destination has verified and loaded it all (READY).
    AwaitReady,
    /// Under a coordinator: until it decides GO.
    AwaitGo,
    /// Release durably, send GO, learn that the guest resumed there.
    Commit,
    Completed,
}

impl Step {
    fn guest_paused(self) -> bool {
        matches!(
            self,
            Step::FinalPass | Step::AwaitReady | Step::AwaitGo | Step::Commit
        )
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
    let mut out = Outgoing::setup(guest, spec, opts, progress)?;
    let mut step = Step::PreCopy;
    loop {
        let next = match step {
            Step::PreCopy => out.pre_copy(),
            Step::Drain => out.drain(),
            Step::Stun => out.stun(),
            Step::FinalPass => out.final_pass(),
            Step::AwaitReady => out.await_ready(),
            Step::AwaitGo => out.await_go(),
            Step::Commit => out.commit(),
            Step::Completed => return Ok(out.complete()),
        };
        step = match next {
            Ok(next) => next,
            Err(e) => return Err(out.fail(step, e)),
        };
    }
}

/// One outgoing migration of a page guest, from its streams' setup on.
struct Outgoing<'a> {
    guest: Arc<dyn Guest>,
    spec: &'a MigrationSpec,
    opts: &'a SourceOptions,
    progress: &'a mut dyn FnMut(&Progress),
    run: Run<'a>,
    schedule: Option<KeySchedule>,
    limits: Arc<LiveLimits>,
    mem_bytes: u64,
    senders: Vec<Sender>,
    reader: Option<JoinHandle<()>>,
    rep_rx: mpsc::Receiver<Report>,
    in_rx: mpsc::Receiver<Inbound>,
    live: Arc<Live>,
    /// The pass being sent (pre-copy), then the final one.
    pass: u32,
    throttle: u8,
    /// What the next pass sends, and what the dirty log collects meanwhile.
    to_send: Arc<DirtyBitmap>,
    next_dirty: DirtyBitmap,
    /// The pass that first fitted the downtime limit (while they still fit).
    first_fit: Option<u32>,
    /// The last pass's dirty rate and predicted stun, for in-pass progress.
    carried: (f64, f64),
    /// When the guest was paused, and when everything was sent.
    stunned_at: Option<Instant>,
    prepared_at: Option<Instant>,
    stunned_from: u64,
}

impl<'a> Outgoing<'a> {
    /// Checks the spec, opens every stream and starts the senders, the
    /// reader of stream 0 and the dirty log.
    fn setup(
        guest: Arc<dyn Guest>,
        spec: &'a MigrationSpec,
        opts: &'a SourceOptions,
        progress: &'a mut dyn FnMut(&Progress),
    ) -> Result<Self, Failed> {
        let mem_bytes = guest.memory().len();
        let run = Run::new(spec, opts, mem_bytes);
        if let Err(e) = spec.check() {
            return Err(run.fail(MigrationError::Spec(e)));
        }
        if mem_bytes != spec.memory {
            return Err(run.fail(MigrationError::SpecMemory {
                guest: mem_bytes,
                spec: spec.memory,
            }));
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
                    StreamSender {
                        stream: i as u16,
                        streams,
                        w: RecordWriter::new(ws, tx_crypto, max_record),
                        guest: g,
                        live: l,
                        limits: bw,
                        pacer: Pacer::new(),
                        per_batch: wire::pages_per_batch(max_record),
                        total_pages: 0,
                        total_batches: 0,
                    }
                    .run(rx, r)
                })
                .expect("spawn sender");
            senders.push(Sender { tx, sock, handle });
        }
        let pages = guest.memory().pages();
        let mut out = Outgoing {
            guest,
            spec,
            opts,
            progress,
            run,
            schedule,
            limits,
            mem_bytes,
            senders,
            reader,
            rep_rx,
            in_rx,
            live,
            pass: 0,
            throttle: 0,
            to_send: Arc::new(DirtyBitmap::all(pages)),
            next_dirty: DirtyBitmap::new(pages),
            first_fit: None,
            carried: (0.0, 0.0),
            stunned_at: None,
            prepared_at: None,
            stunned_from: 0,
        };
        out.run.stats.setup_seconds = out.run.start.elapsed().as_secs_f64();
        tracing::info!(migration = %spec.id, setup_s = out.run.stats.setup_seconds, streams, "migration: streams up");
        match out.guest.memory().start_dirty_log(opts.software_dirty_log) {
            Ok(kind) => out.run.stats.dirty_log = format!("{kind:?}").to_lowercase(),
            Err(e) => {
                let e = MigrationError::Guest(crate::guest::GuestError::Memory(e));
                return Err(out.fail(Step::PreCopy, e));
            }
        }
        Ok(out)
    }

    fn elapsed(&self) -> f64 {
        self.run.start.elapsed().as_secs_f64()
    }

    fn cancelled(&self) -> bool {
        self.opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// The destination refusing early (it sends nothing else before READY).
    fn check_inbound(&self) -> Result<(), MigrationError> {
        unsolicited(&self.in_rx, "before switch-over").map_or(Ok(()), Err)
    }

    /// Sends `bitmap` as pass `self.pass` on every stream and waits until
    /// each has sent its part, reporting progress. Returns pages, zero
    /// pages and bytes sent.
    fn run_pass(
        &mut self,
        bitmap: &Arc<DirtyBitmap>,
        phase: Phase,
    ) -> Result<(u64, u64, u64), MigrationError> {
        let tick = self.opts.progress_every.min(Duration::from_millis(50));
        let mut last_progress = Instant::now();
        for s in &self.senders {
            let _ = s.tx.send(Cmd::Pass {
                pass: self.pass,
                pages: bitmap.clone(),
            });
        }
        let (mut pages, mut zero, mut bytes) = (0, 0, 0);
        let mut left = self.senders.len();
        let total = bitmap.count() as u64 * PAGE_SIZE as u64;
        let base = self.live.bytes.load(Ordering::Relaxed);
        let pass_start = Instant::now();
        while left > 0 {
            match self.rep_rx.recv_timeout(tick) {
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
                        &self.in_rx,
                    ));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // The destination may have given up (FAILED on stream 0).
                    self.check_inbound()?;
                    if last_progress.elapsed() < self.opts.progress_every {
                        continue;
                    }
                    last_progress = Instant::now();
                    let sent = self.live.bytes.load(Ordering::Relaxed) - base;
                    let rate = sent as f64 / pass_start.elapsed().as_secs_f64().max(1e-3);
                    let (dirty_rate, expected) = self.carried;
                    let remaining = total.saturating_sub(sent);
                    let elapsed_seconds = self.elapsed();
                    (self.progress)(&Progress {
                        phase,
                        pass: self.pass,
                        elapsed_seconds,
                        transferred_bytes: self.live.bytes.load(Ordering::Relaxed),
                        total_bytes: self.mem_bytes,
                        remaining_bytes: remaining,
                        throttle_percent: self.throttle,
                        transfer_rate: rate,
                        dirty_rate,
                        pass_bytes: sent.min(total),
                        pass_total_bytes: total,
                        expected_downtime_seconds: expected,
                        eta_seconds: crate::stats::eta(remaining, rate, dirty_rate),
                    });
                    if phase != Phase::PreCopy {
                        continue;
                    }
                    if self.cancelled() {
                        return Err(MigrationError::Cancelled("by request".into()));
                    }
                    if self.run.start.elapsed() > self.spec.limits.max_time {
                        return Err(MigrationError::GaveUp {
                            passes: self.pass,
                            seconds: self.elapsed(),
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
    }

    /// One pass while the guest runs, then what the convergence rule says:
    /// another (throttling the guest if it outruns the link), or stop.
    fn pre_copy(&mut self) -> Result<Step, MigrationError> {
        let (spec, pass, throttle) = (self.spec, self.pass, self.throttle);
        let t0 = Instant::now();
        let to_send = self.to_send.clone();
        let (sent, zero, bytes) = self.run_pass(&to_send, Phase::PreCopy)?;
        let secs = t0.elapsed().as_secs_f64().max(1e-6);
        self.guest
            .memory()
            .collect_dirty(&mut self.next_dirty)
            .map_err(|e| MigrationError::Guest(crate::guest::GuestError::Memory(e)))?;
        self.check_inbound()?;
        let dirtied = self.next_dirty.count() as u64;
        let transfer_rate = bytes as f64 / secs;
        let dirty_rate = (dirtied * PAGE_SIZE as u64) as f64 / secs;
        // What the stun would cost: the dirty pages at the measured rate.
        let expected = (dirtied * PAGE_SIZE as u64) as f64 / transfer_rate.max(1.0);
        let stats = &mut self.run.stats;
        stats.normal_pages += sent - zero;
        stats.zero_pages += zero;
        stats.pass_history.push(PassStats {
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
        stats.dirty_rate = dirty_rate;
        stats.transfer_rate = transfer_rate;
        stats.remaining_bytes = dirtied * PAGE_SIZE as u64;
        let remaining = stats.remaining_bytes;
        tracing::info!(migration = %spec.id, pass, pages = sent, zero, bytes, seconds = secs,
            dirty_rate_mb_s = dirty_rate / 1e6, transfer_rate_mb_s = transfer_rate / 1e6,
            expected_downtime_ms = expected * 1e3, throttle, "migration: pass");
        self.carried = (dirty_rate, expected);
        (self.progress)(&Progress {
            phase: Phase::PreCopy,
            pass,
            elapsed_seconds: self.run.start.elapsed().as_secs_f64(),
            transferred_bytes: self.live.bytes.load(Ordering::Relaxed),
            total_bytes: self.mem_bytes,
            remaining_bytes: remaining,
            dirty_rate,
            transfer_rate,
            throttle_percent: throttle,
            pass_bytes: bytes,
            pass_total_bytes: bytes,
            expected_downtime_seconds: expected,
            eta_seconds: crate::stats::eta(remaining, transfer_rate, dirty_rate),
        });
        let limit = self.limits.downtime_limit(spec.limits.downtime_limit);
        self.run.stats.downtime_limit_seconds = limit.as_secs_f64();
        self.run.stats.bandwidth_limit = self.limits.bandwidth();
        self.first_fit = (expected <= limit.as_secs_f64()).then(|| self.first_fit.unwrap_or(pass));
        let out_of_time = self.run.start.elapsed() > spec.limits.max_time;
        let next = converge::next(&PassEnd {
            sent,
            dirtied,
            expected_seconds: expected,
            limit_seconds: limit.as_secs_f64(),
            fitted_passes: self.first_fit.map(|f| pass - f),
            out_of_time,
        });
        self.pass += 1;
        if self.cancelled() {
            return Err(MigrationError::Cancelled("by request".into()));
        }
        match next {
            Next::SwitchOver => {
                self.run.stats.throttle_percent = self.throttle;
                return Ok(Step::Drain);
            }
            Next::Shrink => {
                tracing::info!(migration = %spec.id, pass = self.pass, dirtied, expected_downtime_ms = expected * 1e3,
                    "migration: fits the downtime limit, one more pass to shrink the stun");
            }
            Next::Converge if out_of_time => {
                return Err(MigrationError::GaveUp {
                    passes: self.pass,
                    seconds: self.elapsed(),
                    remaining,
                });
            }
            // SDPS: the guest dirtied more than half of what the link carried.
            Next::Converge if (dirtied * PAGE_SIZE as u64) as f64 > 0.5 * bytes as f64 => {
                self.throttle = if throttle == 0 {
                    spec.limits.throttle_initial
                } else {
                    throttle
                        .saturating_add(spec.limits.throttle_step)
                        .min(spec.limits.throttle_max)
                };
                self.guest.set_throttle(self.throttle);
                self.run.stats.throttle_max_percent =
                    self.run.stats.throttle_max_percent.max(self.throttle);
                tracing::info!(migration = %spec.id, throttle = self.throttle, "migration: not converging, throttling the guest (SDPS)");
            }
            Next::Converge => {}
        }
        let pages = self.guest.memory().pages();
        self.to_send = Arc::new(std::mem::replace(
            &mut self.next_dirty,
            DirtyBitmap::new(pages),
        ));
        Ok(Step::PreCopy)
    }

    /// What the senders handed to their sockets may still be in flight or
    /// queued at the destination (megabytes on a fast or long path). Stun
    /// once the destination has the last pass in memory, so the stun pays
    /// for the final dirty set, not for that backlog; the guest keeps
    /// running (and the dirty log counting) meanwhile.
    fn drain(&mut self) -> Result<Step, MigrationError> {
        let drain = Instant::now();
        let deadline = drain + self.spec.limits.switchover_timeout;
        while self.live.passed.load(Ordering::Relaxed) < self.pass {
            self.check_inbound()?;
            if let Ok(Report::Error { stream, error }) = self.rep_rx.try_recv() {
                return Err(why_broken(
                    MigrationError::Stream {
                        stream,
                        source: error,
                    },
                    &self.in_rx,
                ));
            }
            if Instant::now() >= deadline {
                tracing::warn!(migration = %self.spec.id, pass = self.pass, "migration: the destination never confirmed the last pass; stunning anyway");
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        self.run.stats.drain_seconds = drain.elapsed().as_secs_f64();
        Ok(Step::Stun)
    }

    fn stun(&mut self) -> Result<Step, MigrationError> {
        tracing::info!(migration = %self.spec.id, remaining_bytes = self.run.stats.remaining_bytes, "migration: switch-over, stunning the guest");
        self.stunned_at = Some(Instant::now());
        self.guest.pause().map_err(MigrationError::Guest)?;
        Ok(Step::FinalPass)
    }

    /// The guest is paused: the last dirty pages, its device state, the
    /// memory digest, then PREPARE.
    fn final_pass(&mut self) -> Result<Step, MigrationError> {
        let stun = self.stunned_at.expect("stunned");
        let pages = self.guest.memory().pages();
        self.guest
            .memory()
            .collect_dirty(&mut self.next_dirty)
            .map_err(|e| MigrationError::Guest(crate::guest::GuestError::Memory(e)))?;
        // The dirty log stays armed through the stun: tearing it down walks
        // every page table entry of the guest (some 30 ms per GiB), which is
        // stun time that grows with memory. It goes after the switch-over, or
        // with the abort that resumes the guest here.
        let final_set = Arc::new(std::mem::replace(
            &mut self.next_dirty,
            DirtyBitmap::new(pages),
        ));
        self.run.stats.stun.pause_seconds = stun.elapsed().as_secs_f64();
        let elapsed_seconds = self.elapsed();
        (self.progress)(&Progress {
            phase: Phase::Switchover,
            pass: self.pass,
            elapsed_seconds,
            transferred_bytes: self.live.bytes.load(Ordering::Relaxed),
            total_bytes: self.mem_bytes,
            remaining_bytes: final_set.count() as u64 * PAGE_SIZE as u64,
            throttle_percent: self.throttle,
            ..Default::default()
        });
        self.stunned_from = self.live.bytes.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let (sent, zero, bytes) = self.run_pass(&final_set, Phase::Switchover)?;
        let stats = &mut self.run.stats;
        stats.normal_pages += sent - zero;
        stats.zero_pages += zero;
        let secs = t0.elapsed().as_secs_f64().max(1e-6);
        stats.pass_history.push(PassStats {
            pass: self.pass,
            pages: sent,
            zero_pages: zero,
            bytes,
            seconds: secs,
            transfer_rate: bytes as f64 / secs,
            throttle_percent: self.throttle,
            stunned: true,
            ..Default::default()
        });
        stats.passes = self.pass + 1;
        self.guest.set_throttle(0);
        let state = self.guest.save_state().map_err(MigrationError::Guest)?;
        self.run.stats.device_state_bytes = state.len() as u64;
        for s in &self.senders {
            let _ = s.tx.send(Cmd::Done);
        }
        let stream0 = &self.senders[0].tx;
        for chunk in wire::state_chunks(&state, self.spec.limits.max_record as usize) {
            let _ = stream0.send(Cmd::Message(chunk));
        }
        let digest = match self.spec.limits.verify_memory {
            MemoryCheck::Off => None,
            // The senders have recorded every page of the final pass.
            MemoryCheck::Pages => self.live.digests.as_ref().map(PageDigests::summary),
            // SAFETY: the guest is paused and the final pass is sent: nothing
            // writes its memory until it resumes here or is released.
            MemoryCheck::Full => Some(unsafe { self.guest.memory().digest_quiescent(2) }),
        };
        if let Some(d) = digest {
            let _ = stream0.send(Cmd::Message(Message::Digest(d).encode()));
        }
        let _ = stream0.send(Cmd::Message(Message::Prepare.encode()));
        let prepared = Instant::now();
        self.prepared_at = Some(prepared);
        self.run.stats.stun.final_pass_seconds =
            (prepared - stun).as_secs_f64() - self.run.stats.stun.pause_seconds;
        Ok(Step::AwaitReady)
    }

    /// READY, or the switch-over fails and the guest resumes here.
    fn await_ready(&mut self) -> Result<Step, MigrationError> {
        let timeout = self.spec.limits.switchover_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = sender_broke(&self.rep_rx, &self.in_rx) {
                return Err(e);
            }
            match self.in_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Inbound::Ready) => break,
                Ok(Inbound::Failed(reason)) => return Err(MigrationError::Destination(reason)),
                Ok(Inbound::Resumed | Inbound::Unexpected(_)) => {
                    return Err(MigrationError::Destination(
                        "unexpected message during switch-over".into(),
                    ));
                }
                Ok(Inbound::Closed(e)) => {
                    return Err(MigrationError::Stream {
                        stream: 0,
                        source: e,
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => return Err(MigrationError::SwitchoverTimeout(timeout)),
            }
        }
        Ok(match self.opts.commit {
            Some(_) => Step::AwaitGo,
            None => Step::Commit,
        })
    }

    /// The coordinator's decision, while the destination holds the guest.
    fn await_go(&mut self) -> Result<Step, MigrationError> {
        let commit = self.opts.commit.as_deref().expect("a coordinator decides");
        let (rep_rx, in_rx) = (&self.rep_rx, &self.in_rx);
        let bound = 2 * self.spec.limits.switchover_timeout;
        crate::commit::await_go(commit, &self.spec.id, bound, || {
            if let Some(e) = sender_broke(rep_rx, in_rx) {
                return Err(e);
            }
            unsolicited(in_rx, "while waiting for GO").map_or(Ok(()), Err)
        })?;
        Ok(Step::Commit)
    }

    /// Releases the guest durably and sends GO; then learns whether it
    /// resumed there (asking if the answer is lost). An unknown answer is
    /// [`MigrationError::InDoubt`].
    fn commit(&mut self) -> Result<Step, MigrationError> {
        let spec = self.spec;
        self.run.stats.stun.ready_seconds =
            self.prepared_at.expect("prepared").elapsed().as_secs_f64();
        journal_release(self.opts, spec)?;
        // Committed: the source will never run this guest again unless the
        // destination says it discarded it.
        let _ = self.senders[0].tx.send(Cmd::Message(Message::Go.encode()));
        tracing::info!(migration = %spec.id, "migration: destination ready, sent GO");
        let answer = loop {
            match self.in_rx.recv_timeout(spec.limits.switchover_timeout) {
                Ok(Inbound::Resumed) => break Ok(Decided::Resumed),
                Ok(Inbound::Failed(_)) => break Ok(Decided::Discarded),
                Ok(Inbound::Ready | Inbound::Unexpected(_)) => continue,
                Ok(Inbound::Closed(e)) => break Err(report(&e).to_string()),
                Err(_) => break Err("no answer to GO".to_string()),
            }
        };
        let decided = match answer {
            Ok(d) => d,
            Err(why) => {
                tracing::warn!(migration = %spec.id, why = %why, "migration: lost the destination after GO, asking what it did");
                query_outcome(spec, self.schedule.as_ref(), self.opts).map_err(|e| {
                    MigrationError::InDoubt(format!("{why}; outcome query: {e}", e = report(&e)))
                })?
            }
        };
        if decided == Decided::Discarded {
            journal_reclaim(self.opts, spec);
            return Err(MigrationError::Destination(
                "the destination discarded the guest after GO".into(),
            ));
        }
        Ok(Step::Completed)
    }

    /// Stops the senders (each says its end, or the socket is cut) and
    /// collects what they sealed and sent.
    fn shutdown(&mut self, graceful: bool) {
        let senders = std::mem::take(&mut self.senders);
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
        self.run.stats.seal_cpu_seconds = cpu.as_secs_f64();
        self.run.stats.transferred_bytes = bytes;
    }

    /// Ends the migration failed in state `at`: the guest runs here again
    /// (resumed if `at` had it paused), the destination is told, the
    /// streams close. In doubt, the guest stays paused and nothing is said.
    fn fail(mut self, at: Step, error: MigrationError) -> Failed {
        if matches!(error, MigrationError::InDoubt(_)) {
            self.guest.memory().stop_dirty_log();
            self.shutdown(false);
            return self.run.fail(error);
        }
        if at.guest_paused() {
            let r = self.guest.resume();
            tracing::warn!(migration = %self.spec.id, resumed = r.is_ok(), "migration: switch-over failed, guest resumed on the source");
        }
        self.guest.set_throttle(0);
        self.guest.memory().stop_dirty_log();
        if let Some(s) = self.senders.first() {
            let abort = Message::Abort {
                reason: "source aborted".into(),
            };
            let _ = s.tx.send(Cmd::Message(abort.encode()));
        }
        self.shutdown(false);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.run.fail(error)
    }

    /// The guest runs on the destination: release it here and report.
    fn complete(mut self) -> MigrationStats {
        let spec = self.spec;
        let stun = self.stunned_at.expect("stunned");
        let stats = &mut self.run.stats;
        stats.set_downtime(stun.elapsed().as_secs_f64());
        stats.stun.commit_seconds = stats.downtime_seconds
            - stats.stun.pause_seconds
            - stats.stun.final_pass_seconds
            - stats.stun.ready_seconds;
        stats.stunned_bytes = self.live.bytes.load(Ordering::Relaxed) - self.stunned_from;
        self.guest.release();
        self.guest.memory().stop_dirty_log();
        self.shutdown(true);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let bytes = self.run.stats.transferred_bytes;
        let stats = &mut self.run.stats;
        stats.remaining_bytes = 0;
        stats.result = MigrationResult::Completed;
        stats.total_seconds = self.run.start.elapsed().as_secs_f64();
        // The destination refuses to become READY on a digest mismatch.
        stats.memory_identical = match (spec.limits.verify_memory, &self.live.digests) {
            (MemoryCheck::Off, _) => None,
            // What was sent arrived. Whether the dirty log missed a write
            // shows only against this (released, so frozen) memory: checked
            // here, after the stun.
            (MemoryCheck::Pages, Some(d)) => {
                let differ = self.guest.memory().pages_not_matching(d);
                if !differ.is_empty() {
                    let why = format!(
                        "{} page(s) of the source's memory (the first: {}) differ from what was sent: the dirty log missed writes, and the guest on {} may be corrupt",
                        differ.len(),
                        differ[0],
                        spec.destination.host
                    );
                    tracing::error!(migration = %spec.id, pages = differ.len(), "migration: {why}");
                    stats.note = Some(why);
                }
                Some(differ.is_empty())
            }
            (MemoryCheck::Pages, None) => None,
            (MemoryCheck::Full, _) => Some(true),
        };
        tracing::info!(migration = %spec.id, total_s = stats.total_seconds, downtime_ms = stats.downtime_seconds * 1e3,
            setup_s = stats.setup_seconds, bytes = stats.transferred_bytes, zero_pages = stats.zero_pages,
            passes = stats.passes, seal_cpu_s = stats.seal_cpu_seconds, "migration: completed");
        (self.progress)(&Progress {
            phase: Phase::Completed,
            pass: self.pass,
            elapsed_seconds: stats.total_seconds,
            transferred_bytes: bytes,
            total_bytes: self.mem_bytes,
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
