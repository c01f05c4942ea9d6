//! The destination side: a listener for migration streams, the specs it has
//! accepted, and one controller per incoming migration.
//!
//! Pages go from each stream's records straight into guest memory. The
//! controller waits for DONE on every stream (with the page and batch counts
//! the source sent, checked against what arrived), the device state and
//! PREPARE; it verifies, loads and answers READY; on GO it resumes the guest
//! and answers RESUMED. The decision to resume or discard is taken once,
//! and kept for outcome queries from the source.
//!
//! Ownership changes in one order that everyone observes: the decision is
//! taken, the host is handed the guest (or told it is gone), and only then
//! is the outcome published, to the source's stream (RESUMED, FAILED) and to
//! its outcome queries. Whoever hears that the guest resumed here finds it
//! in this host's inventory.

use ferry_core::error::report;
use std::{
    collections::{HashMap, HashSet},
    io,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    QUERY_STREAM_BASE,
    stats::DestinationStats,
    wire::{Answer, Message, StateAssembler},
};
use crate::{
    channels::{
        ChannelGuest, ChannelStatus,
        relay::{self, RelayError, SharedWriter},
        source::PrivateDir,
    },
    guest::{Guest, GuestError, PageDigests},
    hosted::Hosted,
    journal::{Entry, Journal},
};
use ferry_protocol::{
    Backend, KeySchedule, MemoryCheck, MigrationId, MigrationSpec, ProtocolMetrics, Side,
    SpecError, Transport,
    handshake::{Accepted, Expectation, StreamPurpose, StreamRegistry, server_handshake},
    record::{Record, RecordReader, RecordWriter},
    stream_crypto,
};

pub use crate::journal::Outcome;

/// Reported to the host when an incoming migration ends.
pub enum DestinationEvent {
    Resumed {
        id: MigrationId,
        guest: Hosted,
        stats: DestinationStats,
    },
    Aborted {
        id: MigrationId,
        guest: String,
        reason: String,
    },
}

type EventSink = Arc<dyn Fn(DestinationEvent) + Send + Sync>;

enum Event {
    Writer(SharedWriter),
    Control(Vec<u8>),
    /// DONE arrived: the stream's pages are all in (ok) or some are missing.
    StreamDone {
        stream: u16,
        ok: Result<(), Discard>,
        bytes: u64,
        pages: u64,
        zero: u64,
        open_cpu: Duration,
    },
    StreamEnd {
        stream: u16,
    },
    /// A stream's part of a pass is in memory (PASS_END arrived).
    PassEnd {
        stream: u16,
        pass: u32,
    },
    StreamFailed {
        error: String,
    },
}

struct Incoming {
    id: MigrationId,
    guest: Hosted,
    /// The source host's name (for the journal).
    source: String,
    /// A device model's incoming socket, in a private directory (channels only).
    channel_socket: Option<(PathBuf, PrivateDir)>,
    /// Channel bytes received (channels only).
    channel_bytes: AtomicU64,
    transport: Transport,
    schedule: Option<Arc<KeySchedule>>,
    streams: u16,
    max_record: usize,
    verify: MemoryCheck,
    /// What each page received holds (memory check `pages`).
    digests: Option<PageDigests>,
    claimed: Mutex<HashSet<u16>>,
    events: Mutex<mpsc::Sender<Event>>,
    /// Set once, by the one decision to resume or discard.
    decided: AtomicBool,
    /// What queries see: set once the decision's effect is visible to the
    /// host (it owns the guest, or has dropped it), not before.
    outcome: Mutex<Outcome>,
}

impl Incoming {
    /// Takes the one decision; false if it was already taken.
    fn decide(&self) -> bool {
        !self.decided.swap(true, Ordering::AcqRel)
    }

    fn decided(&self) -> bool {
        self.decided.load(Ordering::Acquire)
    }

    /// Makes the decision, already taken and carried out, visible.
    fn publish(&self, o: Outcome) {
        *self.outcome.lock().expect("outcome") = o;
    }

    fn send(&self, e: Event) {
        let _ = self.events.lock().expect("events").send(e);
    }
}

/// What is kept of a decided migration, to answer the source's outcome
/// queries: not the guest (whose memory belongs to the host, or is gone).
struct Decided {
    outcome: Outcome,
    transport: Transport,
    schedule: Option<Arc<KeySchedule>>,
    streams: u16,
    claimed: Mutex<HashSet<u16>>,
    at: Instant,
}

/// The migrations this host has accepted specs for.
pub struct IncomingRegistry {
    migrations: Mutex<HashMap<MigrationId, Arc<Incoming>>>,
    decided: Mutex<HashMap<MigrationId, Arc<Decided>>>,
    backend: Backend,
    metrics: Option<ProtocolMetrics>,
    events: EventSink,
    switchover_timeout: Duration,
    /// Where READY and the decision are made durable (a host's journal).
    journal: std::sync::OnceLock<Arc<dyn Journal>>,
}

/// How long a decided migration is kept for outcome queries.
const KEEP_DECIDED: Duration = Duration::from_secs(600);

impl IncomingRegistry {
    pub fn new(
        backend: Backend,
        metrics: Option<ProtocolMetrics>,
        switchover_timeout: Duration,
        events: impl Fn(DestinationEvent) + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            migrations: Mutex::new(HashMap::new()),
            decided: Mutex::new(HashMap::new()),
            backend,
            metrics,
            events: Arc::new(events),
            switchover_timeout,
            journal: std::sync::OnceLock::new(),
        })
    }

    /// Makes READY and each decision durable in `journal` before they are
    /// sent, and answers outcome queries from it for migrations this
    /// process never saw (it restarted). Set once, before any migration.
    pub fn set_journal(&self, journal: Arc<dyn Journal>) {
        let _ = self.journal.set(journal);
    }

    /// Accepts `spec` with `guest` (an incoming guest of the spec's size) as
    /// its target. The spec's key is turned into the key schedule here and
    /// not kept.
    pub fn prepare(
        self: &Arc<Self>,
        spec: &MigrationSpec,
        guest: Arc<dyn Guest>,
    ) -> Result<(), PrepareError> {
        spec.check()?;
        if guest.memory().len() != spec.memory || spec.machine.is_some() {
            return Err(PrepareError::Memory {
                guest: guest.memory().len(),
                spec: spec.memory,
                carried_by: if spec.machine.is_some() {
                    "carried by a device model"
                } else {
                    "moved by ferry"
                },
            });
        }
        self.register(spec, Hosted::Pages(guest), None)
    }

    /// Accepts `spec` for a device-model guest: `guest` is the twin, started
    /// to receive (paused), which is told here where its channels arrive.
    pub fn prepare_channels(
        self: &Arc<Self>,
        spec: &MigrationSpec,
        guest: Arc<dyn ChannelGuest>,
    ) -> Result<(), PrepareError> {
        spec.check()?;
        if spec.machine.is_none() || guest.memory_bytes() != spec.memory {
            return Err(PrepareError::Machine {
                id: spec.id,
                bytes: guest.memory_bytes(),
            });
        }
        let dir = PrivateDir::new("ferry-in").map_err(PrepareError::SocketDir)?;
        let socket = dir.path().join("channels.sock");
        guest
            .accept_migration(&socket, spec.streams)
            .map_err(PrepareError::DeviceModel)?;
        self.register(spec, Hosted::Channels(guest), Some((socket, dir)))
    }

    fn register(
        self: &Arc<Self>,
        spec: &MigrationSpec,
        guest: Hosted,
        channel_socket: Option<(PathBuf, PrivateDir)>,
    ) -> Result<(), PrepareError> {
        self.decided
            .lock()
            .expect("decided")
            .retain(|_, d| d.at.elapsed() < KEEP_DECIDED);
        let mut map = self.migrations.lock().expect("registry");
        if map.contains_key(&spec.id)
            || self.decided.lock().expect("decided").contains_key(&spec.id)
        {
            return Err(PrepareError::Known(spec.id));
        }
        let (tx, rx) = mpsc::channel();
        let digests = match &guest {
            Hosted::Pages(g) if spec.limits.verify_memory == MemoryCheck::Pages => {
                Some(PageDigests::new(g.memory().pages()))
            }
            _ => None,
        };
        let inc = Arc::new(Incoming {
            id: spec.id,
            guest,
            source: spec.source.host.clone(),
            channel_socket,
            channel_bytes: AtomicU64::new(0),
            transport: spec.transport,
            schedule: spec
                .key
                .as_ref()
                .map(|k| Arc::new(KeySchedule::new(k, spec.nonce, &spec.id))),
            streams: spec.streams,
            max_record: spec.limits.max_record as usize,
            verify: spec.limits.verify_memory,
            digests,
            claimed: Mutex::new(HashSet::new()),
            events: Mutex::new(tx),
            decided: AtomicBool::new(false),
            outcome: Mutex::new(Outcome::Pending),
        });
        map.insert(spec.id, inc.clone());
        drop(map);
        // The whole migration must end within its time limit plus a switch-over.
        let deadline = Instant::now() + spec.limits.max_time + 2 * spec.limits.switchover_timeout;
        let (sink, timeout, registry) = (
            self.events.clone(),
            spec.limits.switchover_timeout,
            self.clone(),
        );
        let journal = self.journal.get().cloned();
        std::thread::Builder::new()
            .name(format!("mig-dst-{}", &spec.id.to_string()[..8]))
            .spawn(move || {
                let id = inc.id;
                Controller::new(inc, sink, journal, deadline, timeout).run(rx);
                registry.settle(&id);
            })
            .map_err(PrepareError::Controller)?;
        tracing::info!(migration = %spec.id, guest = %spec.guest, source = %spec.source.host,
            transport = %spec.transport, streams = spec.streams, "incoming migration prepared");
        Ok(())
    }

    pub fn outcome(&self, id: &MigrationId) -> Option<Outcome> {
        if let Some(m) = self.migrations.lock().expect("registry").get(id) {
            return Some(m.outcome.lock().expect("outcome").clone());
        }
        if let Some(d) = self.decided.lock().expect("decided").get(id) {
            return Some(d.outcome.clone());
        }
        self.journal.get().and_then(|j| j.outcome(id))
    }

    /// Moves a migration whose controller has finished into the decided
    /// table, dropping the registry's hold on its guest.
    fn settle(&self, id: &MigrationId) {
        let Some(inc) = self.migrations.lock().expect("registry").remove(id) else {
            return;
        };
        let outcome = inc.outcome.lock().expect("outcome").clone();
        let d = Decided {
            outcome,
            transport: inc.transport,
            schedule: inc.schedule.clone(),
            streams: inc.streams,
            claimed: Mutex::new(inc.claimed.lock().expect("claimed").clone()),
            at: Instant::now(),
        };
        self.decided
            .lock()
            .expect("decided")
            .insert(*id, Arc::new(d));
    }

    /// Migrations for which this registry still holds a guest.
    pub fn pending(&self) -> usize {
        self.migrations.lock().expect("registry").len()
    }

    /// Cancels a pending incoming migration (the coordinator gave up on it).
    pub fn abort(&self, id: &MigrationId, reason: &str) {
        if let Some(m) = self.migrations.lock().expect("registry").get(id) {
            m.send(Event::Control(
                Message::Abort {
                    reason: reason.into(),
                }
                .encode(),
            ));
        }
    }

    fn get(&self, id: &MigrationId) -> Option<Arc<Incoming>> {
        self.migrations.lock().expect("registry").get(id).cloned()
    }
}

impl StreamRegistry for IncomingRegistry {
    fn expect(&self, id: &MigrationId) -> Option<Expectation> {
        if let Some(m) = self.get(id) {
            return Some(Expectation {
                transport: m.transport,
                schedule: m.schedule.clone(),
                streams: m.streams,
            });
        }
        let d = self.decided.lock().expect("decided").get(id).cloned()?;
        Some(Expectation {
            transport: d.transport,
            schedule: d.schedule.clone(),
            streams: d.streams,
        })
    }

    fn claim(&self, id: &MigrationId, stream: u16, purpose: StreamPurpose) -> bool {
        let query = purpose == StreamPurpose::OutcomeQuery;
        // Queries use their own index range; data streams only while pending.
        if query != (stream >= QUERY_STREAM_BASE) {
            return false;
        }
        if let Some(m) = self.get(id) {
            if !query && m.decided() {
                return false;
            }
            return m.claimed.lock().expect("claimed").insert(stream);
        }
        let Some(d) = self.decided.lock().expect("decided").get(id).cloned() else {
            return false;
        };
        query && d.claimed.lock().expect("claimed").insert(stream)
    }
}

/// Accepts migration streams on a TCP address.
pub struct MigrationListener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// The listening socket, shut down to wake the accept loop.
    wake: TcpListener,
    handle: Option<JoinHandle<()>>,
}

impl MigrationListener {
    pub fn bind(addr: SocketAddr, registry: Arc<IncomingRegistry>) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let wake = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("mig-listen".into())
            .spawn(move || {
                let mut failures = ferry_core::listen::AcceptFailures::new("migration");
                let gate = ferry_core::listen::Gate::new("migration", HANDSHAKES_WAITING);
                for conn in listener.incoming() {
                    if s.load(Ordering::Relaxed) {
                        return;
                    }
                    let sock = match conn {
                        Ok(sock) => sock,
                        Err(e) => {
                            std::thread::sleep(failures.failed(&e));
                            continue;
                        }
                    };
                    // Closed at once over the cap: no thread for it.
                    let Some(pass) = gate.enter() else {
                        if let Some(m) = &registry.metrics {
                            m.reject(&ferry_protocol::ProtocolError::Overloaded);
                        }
                        continue;
                    };
                    let r = registry.clone();
                    let _ = std::thread::Builder::new()
                        .name("mig-dst-stream".into())
                        .spawn(move || serve_stream(sock, &r, pass));
                }
            })?;
        Ok(Self {
            addr,
            stop,
            wake,
            handle: Some(handle),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MigrationListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Shutting the listening socket down makes the blocked accept fail
        // at once. (Connecting to ourselves to wake it hangs this drop when
        // that connection cannot get through.)
        // SAFETY: a valid socket fd owned by self.wake.
        unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&self.wake), libc::SHUT_RDWR) };
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Streams that may wait in their handshake at once: more than any set of
/// migrations opens (64 streams each), few enough that a flood of idle
/// connections cannot take a thread each.
const HANDSHAKES_WAITING: usize = 256;

fn serve_stream(mut sock: TcpStream, registry: &IncomingRegistry, pass: ferry_core::listen::Pass) {
    let peer = sock.peer_addr().ok();
    sock.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let handshake = server_handshake(
        &mut sock,
        registry,
        registry.backend,
        registry.metrics.as_ref(),
    );
    // Authenticated (or refused): its place is free for the next.
    drop(pass);
    let acc = match handshake {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(peer = ?peer, error = %report(&e), "refused a migration stream");
            let _ = sock.shutdown(Shutdown::Both);
            return;
        }
    };
    sock.set_nodelay(true).ok();
    if acc.purpose == StreamPurpose::OutcomeQuery {
        answer_query(sock, &acc, registry);
        return;
    }
    let Some(inc) = registry.get(&acc.id) else {
        return;
    };
    // A silent peer (a dead host, a black-holing middlebox) ends the stream
    // instead of blocking it for ever.
    sock.set_read_timeout(Some(registry.switchover_timeout))
        .ok();
    sock.set_write_timeout(Some(registry.switchover_timeout))
        .ok();
    if inc.channel_socket.is_some() {
        receive_channel(sock, &acc, inc, registry);
    } else {
        receive(sock, &acc, &inc, registry);
    }
}

/// One stream of a device model's migration: relayed both ways between the
/// source and the twin's incoming socket, connected at the first bytes.
fn receive_channel(
    sock: TcpStream,
    acc: &Accepted,
    inc: Arc<Incoming>,
    registry: &IncomingRegistry,
) {
    let stream = acc.stream;
    let fail = |error: String| inc.send(Event::StreamFailed { error });
    let (Some((socket, _)), Ok(wsock)) = (&inc.channel_socket, sock.try_clone()) else {
        return fail(format!("stream {stream}: cannot clone the socket"));
    };
    let (tx, rx) = stream_crypto(
        inc.schedule.as_deref(),
        registry.backend,
        stream,
        Side::Destination,
    );
    let writer: SharedWriter = Arc::new(Mutex::new(RecordWriter::new(wsock, tx, inc.max_record)));
    if stream == 0 {
        inc.send(Event::Writer(writer.clone()));
    }
    let mut r = RecordReader::new(sock, rx, inc.max_record, registry.metrics.clone());
    let connect = || {
        let c = std::os::unix::net::UnixStream::connect(socket)?;
        let out = c.try_clone()?;
        let (w, inc, max) = (writer.clone(), inc.clone(), inc.max_record);
        std::thread::Builder::new()
            .name(format!("mig-dst-out-{stream}"))
            .spawn(move || {
                let unused = AtomicU64::new(0);
                if let Err(e) = relay::outward(out, &w, max, &unused)
                    && !inc.decided()
                {
                    inc.send(Event::StreamFailed {
                        error: format!("stream {stream}: {}", describe(&e)),
                    });
                }
            })?;
        Ok(c)
    };
    let result = relay::inward(
        &mut r,
        connect,
        |m| {
            if stream == 0 {
                inc.send(Event::Control(m.to_vec()));
            } else {
                inc.send(Event::StreamFailed {
                    error: format!("stream {stream}: unexpected message"),
                });
            }
        },
        &inc.channel_bytes,
    );
    inc.send(Event::StreamEnd { stream });
    if let Err(e) = result {
        if !inc.decided() {
            tracing::warn!(migration = %inc.id, stream, error = %describe(&e), "migration stream failed");
        }
        fail(format!("stream {stream}: {}", describe(&e)));
    }
}

/// A relay error as one line: the protocol's own words for a stream error.
fn describe(e: &RelayError) -> String {
    match e {
        RelayError::Stream(p) => p.to_string(),
        RelayError::Channel(io) => format!("the device model's channel: {io}"),
    }
}

fn answer_query(sock: TcpStream, acc: &Accepted, registry: &IncomingRegistry) {
    let schedule = acc.expectation.schedule.as_deref();
    let (tx, rx) = stream_crypto(schedule, registry.backend, acc.stream, Side::Destination);
    let Ok(wsock) = sock.try_clone() else { return };
    let mut r = RecordReader::new(sock, rx, 64, registry.metrics.clone());
    let asked =
        matches!(r.read_record(), Ok(Record::Data(d)) if Message::decode(d) == Ok(Message::Query));
    if !asked {
        return;
    }
    let answer = match registry.outcome(&acc.id) {
        None | Some(Outcome::Pending) => Answer::Unknown,
        Some(Outcome::Resumed) => Answer::Resumed,
        Some(Outcome::Aborted(_)) => Answer::Aborted,
    };
    let mut w = RecordWriter::new(wsock, tx, 64);
    let _ = w.send_bytes(&Message::Outcome(answer).encode());
    let _ = w.finish();
}

fn receive(sock: TcpStream, acc: &Accepted, inc: &Incoming, registry: &IncomingRegistry) {
    let stream = acc.stream;
    let (tx, rx) = stream_crypto(
        inc.schedule.as_deref(),
        registry.backend,
        stream,
        Side::Destination,
    );
    if stream == 0 {
        match sock.try_clone() {
            Ok(w) => inc.send(Event::Writer(Arc::new(Mutex::new(RecordWriter::new(
                w,
                tx,
                inc.max_record,
            ))))),
            Err(e) => {
                inc.send(Event::StreamFailed {
                    error: report(&e).to_string(),
                });
                return;
            }
        }
    }
    let Some(guest) = inc.guest.pages() else {
        return;
    };
    let mem = guest.memory();
    let pages_total = mem.pages();
    let mut r = RecordReader::new(sock, rx, inc.max_record, registry.metrics.clone());
    let (mut pages, mut zero, mut batches) = (0u64, 0u64, 0u64);
    let mut last_pass: Option<u32> = None;
    let fail = |error: String| inc.send(Event::StreamFailed { error });
    loop {
        match r.read_record() {
            Ok(Record::Data(m)) => match Message::decode(m) {
                Ok(Message::Pages(batch)) => {
                    if let Err(e) = batch.check(pages_total) {
                        return fail(format!("stream {stream}: {e}"));
                    }
                    for (p, data) in batch.pages() {
                        let p = p as usize;
                        if super::stream_of(p, inc.streams as usize) != stream as usize {
                            return fail(format!(
                                "stream {stream}: page {p} belongs to another stream"
                            ));
                        }
                        match data {
                            Some(d) => mem.write_page(p, d),
                            None => {
                                mem.zero_page(p);
                                zero += 1;
                            }
                        }
                        if let Some(digests) = &inc.digests {
                            digests.record(p, data.unwrap_or_default(), data.is_none());
                        }
                        pages += 1;
                    }
                    batches += 1;
                }
                Ok(Message::PassEnd { pass }) if last_pass.is_none_or(|l| pass > l) => {
                    last_pass = Some(pass);
                    inc.send(Event::PassEnd { stream, pass });
                }
                Ok(Message::PassEnd { pass }) => {
                    return fail(format!(
                        "stream {stream}: PASS_END {pass} after PASS_END {}",
                        last_pass.unwrap_or_default()
                    ));
                }
                Ok(Message::Done {
                    pages: p,
                    batches: b,
                }) => {
                    let ok = if p == pages && b == batches {
                        Ok(())
                    } else {
                        Err(Discard(format!(
                            "stream {stream}: the source sent {p} pages in {b} batches, {pages} pages in {batches} batches arrived"
                        )))
                    };
                    inc.send(Event::StreamDone {
                        stream,
                        ok,
                        bytes: r.wire_bytes,
                        pages,
                        zero,
                        open_cpu: r.open_cpu,
                    });
                }
                Ok(_) if stream == 0 => inc.send(Event::Control(m.to_vec())),
                Ok(other) => {
                    return fail(format!(
                        "stream {stream}: unexpected message {}",
                        other.name()
                    ));
                }
                Err(e) => return fail(format!("stream {stream}: {e}")),
            },
            Ok(Record::End) => {
                inc.send(Event::StreamEnd { stream });
                return;
            }
            Err(e) => {
                if !inc.decided() {
                    tracing::warn!(migration = %inc.id, stream, error = %report(&e), reason = e.reason(), "migration stream failed");
                }
                inc.send(Event::StreamEnd { stream });
                return fail(format!("stream {stream}: {e}", e = report(&e)));
            }
        }
    }
}

/// Why an incoming migration is discarded: FAILED's reason, told to the
/// source, the host and the log.
struct Discard(String);

/// Why a host cannot take an incoming migration.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(
        "incoming guest has {guest} bytes of ferry-moved memory, the spec says {spec} ({carried_by})"
    )]
    Memory {
        guest: u64,
        spec: u64,
        carried_by: &'static str,
    },
    #[error("spec {id} does not describe the incoming machine ({bytes} bytes)")]
    Machine { id: MigrationId, bytes: u64 },
    #[error("a private directory for the incoming socket")]
    SocketDir(#[source] std::io::Error),
    #[error("the incoming device model")]
    DeviceModel(#[source] GuestError),
    #[error("migration {0} is already known here")]
    Known(MigrationId),
    #[error("cannot start the migration controller")]
    Controller(#[source] std::io::Error),
}

impl<T: Into<String>> From<T> for Discard {
    fn from(why: T) -> Self {
        Discard(why.into())
    }
}

/// Where an incoming migration stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Pages, device state or channel bytes still arriving.
    Receiving,
    /// PREPARE arrived at `since`: everything is sent. Verify and load once
    /// every stream is DONE (pages) or the device model has it all.
    Prepared { since: Instant },
    /// READY sent at `since`: GO must come within the switch-over timeout.
    Ready { since: Instant },
}

/// The controller of one incoming migration: it owns everything the
/// receivers report, and takes the guest from [`Stage::Receiving`] to
/// READY, then resumes it on GO or discards it.
struct Controller {
    inc: Arc<Incoming>,
    sink: EventSink,
    journal: Option<Arc<dyn Journal>>,
    /// The whole migration's end, and the switch-over's bound after READY.
    deadline: Instant,
    timeout: Duration,
    name: String,
    stage: Stage,
    /// Stream 0's sending side, once its receiver has it.
    writer: Option<SharedWriter>,
    channels: Option<Arc<dyn ChannelGuest>>,
    /// Streams whose DONE matched what arrived.
    done: HashSet<u16>,
    /// Streams whose receiver has returned.
    ended: HashSet<u16>,
    state: StateAssembler,
    digest: Option<u128>,
    stats: DestinationStats,
    /// The last pass each stream has delivered, and the last one confirmed
    /// to the source (every stream has it).
    stream_passes: Vec<Option<u32>>,
    confirmed: Option<u32>,
    /// READY is in the journal: a discard from here on is recorded too.
    ready_journaled: bool,
}

impl Controller {
    fn new(
        inc: Arc<Incoming>,
        sink: EventSink,
        journal: Option<Arc<dyn Journal>>,
        deadline: Instant,
        timeout: Duration,
    ) -> Self {
        let channels = match &inc.guest {
            Hosted::Channels(g) => Some(g.clone()),
            Hosted::Pages(_) => None,
        };
        Controller {
            name: inc.guest.name().to_string(),
            stream_passes: vec![None; inc.streams as usize],
            inc,
            sink,
            journal,
            deadline,
            timeout,
            stage: Stage::Receiving,
            writer: None,
            channels,
            done: HashSet::new(),
            ended: HashSet::new(),
            state: StateAssembler::default(),
            digest: None,
            stats: DestinationStats::default(),
            confirmed: None,
            ready_journaled: false,
        }
    }

    fn journaled(&self, e: Entry<'_>) -> io::Result<()> {
        self.journal.as_ref().map_or(Ok(()), |j| j.write(e))
    }

    /// Runs until the migration is decided and every stream's receiver
    /// has reported.
    fn run(mut self, rx: mpsc::Receiver<Event>) {
        loop {
            let now = Instant::now();
            let limit = match self.stage {
                // After READY, GO must come in time; before, the source may be slow.
                Stage::Ready { since } => self.deadline.min(since + self.timeout),
                _ => self.deadline,
            };
            if now >= limit {
                let why = match self.stage {
                    Stage::Ready { .. } => "no GO from the source in time",
                    _ => "the migration did not finish in time",
                };
                return self.abort(why.into());
            }
            // A device model is watched as it loads: a failure ends it
            // early, and its completion (with PREPARE) makes READY.
            let wait = match (&self.channels, self.stage) {
                // Everything is sent: READY as soon as the twin has loaded
                // it (each interval here is stun time).
                (Some(_), Stage::Prepared { .. } | Stage::Ready { .. }) => {
                    (limit - now).min(Duration::from_millis(2))
                }
                (Some(_), Stage::Receiving) => (limit - now).min(Duration::from_millis(50)),
                (None, _) => limit - now,
            };
            let ev = match rx.recv_timeout(wait) {
                Ok(e) => Some(e),
                Err(mpsc::RecvTimeoutError::Timeout) if self.channels.is_some() => None,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return self.abort("registry dropped".into());
                }
            };
            if self.inc.decided() {
                // Decided: only collect the receivers' statistics.
                if let Some(Event::StreamEnd { stream, .. }) = ev {
                    self.ended.insert(stream);
                }
                if self.ended.len() >= self.inc.streams as usize {
                    return;
                }
                continue;
            }
            let step = self.step(ev);
            match step {
                Ok(true) => {}
                Ok(false) => return,
                Err(Discard(why)) => return self.abort(why),
            }
        }
    }

    /// Handles `ev` (none: a device model's poll interval passed), then
    /// what the stage asks for. False: the decision was taken elsewhere.
    fn step(&mut self, ev: Option<Event>) -> Result<bool, Discard> {
        if let Some(ev) = ev
            && !self.on_event(ev)?
        {
            return Ok(false);
        }
        match (self.stage, self.channels.clone()) {
            (Stage::Prepared { since }, _) => self.try_ready(since)?,
            // A device model that fails while loading ends it early.
            (Stage::Receiving, Some(g)) => {
                self.channels_loaded(&*g)?;
            }
            (Stage::Receiving, None) | (Stage::Ready { .. }, _) => {}
        }
        Ok(true)
    }

    /// False: the decision was taken elsewhere, stop.
    fn on_event(&mut self, ev: Event) -> Result<bool, Discard> {
        match ev {
            Event::Writer(w) => self.writer = Some(w),
            Event::StreamDone {
                stream,
                ok,
                bytes,
                pages,
                zero,
                open_cpu,
            } => {
                ok?;
                self.done.insert(stream);
                self.stats.received_bytes += bytes;
                self.stats.pages += pages;
                self.stats.zero_pages += zero;
                self.stats.open_cpu_seconds += open_cpu.as_secs_f64();
            }
            Event::StreamEnd { stream } => {
                self.ended.insert(stream);
            }
            Event::PassEnd { stream, pass } => self.pass_end(stream, pass)?,
            Event::StreamFailed { error } => return Err(error.into()),
            Event::Control(m) => match Message::decode(&m) {
                Ok(m) => return self.on_control(m),
                Err(e) => return Err(format!("unreadable control message: {e}").into()),
            },
        }
        Ok(true)
    }

    /// Confirms a pass to the source once every stream has delivered it.
    fn pass_end(&mut self, stream: u16, pass: u32) -> Result<(), Discard> {
        if let Some(s) = self.stream_passes.get_mut(stream as usize) {
            *s = Some(pass);
        }
        let all = self.stream_passes.iter().copied().min().flatten();
        if let Some(pass) = all
            && all > self.confirmed
            && self.writer.is_some()
        {
            self.confirmed = all;
            self.send(&Message::Passed { pass })
                .map_err(|e| format!("sending PASSED: {e}", e = report(&e)))?;
        }
        Ok(())
    }

    fn on_control(&mut self, m: Message<'_>) -> Result<bool, Discard> {
        match (m, self.stage) {
            (
                Message::State {
                    offset,
                    total,
                    chunk,
                },
                _,
            ) => self
                .state
                .push(offset, total, chunk)
                .map_err(|e| format!("device state: {e}"))?,
            (Message::Digest(d), _) => self.digest = Some(d),
            (Message::Prepare, Stage::Receiving) => {
                self.stage = Stage::Prepared {
                    since: Instant::now(),
                }
            }
            (Message::Abort { reason }, _) => {
                return Err(format!("the source aborted: {reason}").into());
            }
            (Message::Go, Stage::Ready { .. }) => return self.resume(),
            _ => return Err("unexpected control message".into()),
        }
        Ok(true)
    }

    /// GO: durable, decided, resumed, handed to the host, then RESUMED.
    fn resume(&mut self) -> Result<bool, Discard> {
        let inc = self.inc.clone();
        // Durable before the guest runs: a restart from here on knows it
        // resumed here.
        self.journaled(Entry::Resumed {
            id: inc.id,
            guest: &self.name,
            source: &inc.source,
        })
        .map_err(|e| {
            format!(
                "cannot record the resume in the journal: {e}",
                e = report(&e)
            )
        })?;
        if !inc.decide() {
            return Ok(false);
        }
        if let Err(e) = inc.guest.resume() {
            // Decided already: the source will release its copy.
            tracing::error!(migration = %inc.id, error = %report(&e), "resume after GO failed");
        }
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let stats = &self.stats;
        tracing::info!(migration = %inc.id, guest = %self.name, received_bytes = stats.received_bytes,
            pages = stats.pages, zero_pages = stats.zero_pages, open_cpu_s = stats.open_cpu_seconds,
            verify_s = stats.verify_seconds, "incoming migration: guest resumed here");
        // The host owns the guest before anyone hears it resumed.
        (self.sink)(DestinationEvent::Resumed {
            id: inc.id,
            guest: inc.guest.clone(),
            stats: self.stats.clone(),
        });
        inc.publish(Outcome::Resumed);
        if let Some(w) = &self.writer {
            let mut w = w.lock().expect("writer");
            let _ = w.send_bytes(&Message::Resumed { unix_ns }.encode());
            let _ = w.finish();
        }
        Ok(true)
    }

    /// Prepared: READY once everything is verified and loaded.
    fn try_ready(&mut self, prepared: Instant) -> Result<(), Discard> {
        if self.writer.is_none() {
            return Ok(());
        }
        let loaded = match self.channels.clone() {
            Some(g) => self.channels_loaded(&*g)?,
            None => self.pages_loaded()?,
        };
        if !loaded {
            return Ok(());
        }
        self.stats.verify_seconds = prepared.elapsed().as_secs_f64();
        if self.channels.is_some() {
            self.stats.received_bytes = self.inc.channel_bytes.load(Ordering::Relaxed);
        }
        // Durable before it is sent: a restarted destination then answers
        // "discarded" for a migration it had loaded but not resumed.
        self.journaled(Entry::Ready {
            id: self.inc.id,
            guest: &self.name,
            source: &self.inc.source,
        })
        .map_err(|e| format!("cannot record READY in the journal: {e}", e = report(&e)))?;
        self.ready_journaled = true;
        self.send(&Message::Ready)
            .map_err(|e| format!("sending READY: {e}", e = report(&e)))?;
        self.stage = Stage::Ready {
            since: Instant::now(),
        };
        Ok(())
    }

    /// Whether the device model has loaded everything; a failure discards.
    fn channels_loaded(&self, g: &dyn ChannelGuest) -> Result<bool, Discard> {
        match g.progress().map(|p| p.status) {
            Ok(Some(ChannelStatus::Completed)) => Ok(true),
            Ok(Some(ChannelStatus::Failed(why))) => {
                Err(format!("the incoming device model failed: {why}").into())
            }
            Err(e) => Err(format!("the incoming device model: {e}", e = report(&e)).into()),
            _ => Ok(false),
        }
    }

    /// Every stream DONE: checks the memory digest and loads the device
    /// state. False while streams are still to finish.
    fn pages_loaded(&mut self) -> Result<bool, Discard> {
        if self.done.len() != self.inc.streams as usize {
            return Ok(false);
        }
        let Some(guest) = self.inc.guest.pages() else {
            return Ok(false);
        };
        let Some(ds) = self.state.complete() else {
            return Err("PREPARE before the whole device state".into());
        };
        if self.inc.verify != MemoryCheck::Off {
            let Some(want) = self.digest else {
                return Err("memory verification was asked for but no digest arrived".into());
            };
            let got = match &self.inc.digests {
                // Every stream has delivered DONE after its last page.
                Some(d) => d.summary(),
                // SAFETY: every stream is DONE and the guest has not
                // started: nothing writes its memory.
                None => unsafe { guest.memory().digest_quiescent(2) },
            };
            self.stats.memory_identical = Some(got == want);
            if got != want {
                let what = if self.inc.digests.is_some() {
                    "the pages received differ from the pages sent (page digest mismatch)"
                } else {
                    "guest memory differs from the source's at stun (digest mismatch)"
                };
                return Err(what.into());
            }
        }
        guest
            .restore_state(ds)
            .map_err(|e| format!("loading device state: {e}", e = report(&e)))?;
        Ok(true)
    }

    /// Sends `m` on stream 0 (whose writer the caller checked is there).
    fn send(&self, m: &Message<'_>) -> io::Result<()> {
        self.writer
            .as_ref()
            .expect("stream 0 is writable")
            .lock()
            .expect("writer")
            .send_bytes(&m.encode())
    }

    /// Discard, tell the host, then say so: a source that hears FAILED (or
    /// asks) finds the destination already free of the guest.
    fn abort(self, reason: String) {
        let inc = &self.inc;
        if !inc.decide() {
            return;
        }
        tracing::warn!(migration = %inc.id, guest = %self.name, reason = %reason, "incoming migration aborted, guest discarded");
        inc.guest.release();
        if self.ready_journaled
            && let Err(e) = self.journaled(Entry::Discarded {
                id: inc.id,
                guest: &self.name,
                reason: &reason,
            })
        {
            // READY without a decision reads as discarded after a restart.
            tracing::warn!(migration = %inc.id, error = %report(&e), "cannot record the discard in the journal");
        }
        (self.sink)(DestinationEvent::Aborted {
            id: inc.id,
            guest: self.name.clone(),
            reason: reason.clone(),
        });
        inc.publish(Outcome::Aborted(reason.clone()));
        if let Some(w) = &self.writer {
            let mut w = w.lock().expect("writer");
            let _ = w.send_bytes(
                &Message::Failed {
                    reason: reason.into(),
                }
                .encode(),
            );
            let _ = w.get_ref().shutdown(Shutdown::Both);
        }
    }
}
