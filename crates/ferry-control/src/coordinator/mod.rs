//! `ferry coordinator`: the inventory of hosts, and per migration the spec:
//! a fresh 256-bit key and 64-bit nonce, the resolved transport, streams and
//! limits, handed to the source and destination over mutual TLS (or, for a
//! host of another coordinator, to that coordinator). The key lives in the
//! coordinator only until both ends have it; it is wiped when dropped.

pub mod config;
pub mod drain;
pub mod history;
mod refusal;
pub mod scheduler;
pub mod store;

use ferry_core::error::report;
use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

pub use config::CoordinatorConfig;
use history::History;
pub use refusal::Refusal;
use scheduler::{Place, Scheduler, Slot};

use crate::{
    control::{
        self, CALL_TIMEOUT, CLIENT_SILENCE, Client, ControlError, Identity, Request, Responder,
        Response, Role, SOURCE_SILENCE,
        wire::{
            Capabilities, DrainMove, DrainOutcome, DrainUnplaced, Duplicate, HostStatus,
            IncomingOutcome, MigrateOptions, MigrationRecord, MigrationState, SettleAction,
            SwitchDecision,
        },
    },
    engine::{MigrationResult, MigrationStats},
    guest::RunState,
    metrics::migration::{MigrationMetrics, Role as MetricsRole},
    protocol::{
        LimitChange, MigrationId, MigrationKey, MigrationSpec,
        spec::{Endpoint, ModeError, migration_mode, resolve_transport},
    },
};

/// How often, and how many times, a restarted coordinator looks where the
/// guests of interrupted migrations ended (10 minutes in all).
const SETTLE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
const SETTLE_ROUNDS: usize = 300;
/// How often the coordinator looks at its hosts for a guest listed twice.
const DUPLICATE_WATCH: std::time::Duration = std::time::Duration::from_secs(10);

/// Where migration keys come from: the OS CSPRNG, or a test's fixed source.
pub type KeySource = Arc<dyn Fn() -> MigrationKey + Send + Sync>;

pub struct Coordinator {
    cfg: CoordinatorConfig,
    client: Client,
    history: History,
    key_source: KeySource,
    pub migration_metrics: MigrationMetrics,
    /// Guests listed on more than one host, at the last look.
    duplicates: prometheus::IntGauge,
    /// The duplicates already reported, so each is logged once.
    reported: std::sync::Mutex<Vec<Duplicate>>,
    /// Migrations `ferry cancel` asked to stop, until they end.
    cancels: std::sync::Mutex<std::collections::HashSet<MigrationId>>,
    /// The queue: how many migrations run at once.
    scheduler: Scheduler,
    /// Each guest being moved (queued or running), by the migration moving it.
    moving: std::sync::Mutex<std::collections::HashMap<String, MigrationId>>,
    /// Hosts in maintenance (`ferry drain`): no migration goes to them.
    cordons: Cordons,
    /// The leader's epoch, the journal and guest ownership (set at once for
    /// the embedded store, once connected for etcd).
    store: tokio::sync::OnceCell<store::Store>,
    /// The epoch of this coordinator's last lead (0: never led). Kept when
    /// the lead is lost, so what it still sends carries the old epoch and
    /// hosts that saw a newer one refuse it.
    epoch: std::sync::atomic::AtomicU64,
    leading: std::sync::atomic::AtomicBool,
    /// Itself, for tasks spawned from `&self` (set when it starts serving).
    me: std::sync::OnceLock<std::sync::Weak<Self>>,
    /// Migrations the lead's recovery took over: asked for again if their
    /// guest ends back on its source.
    retry: std::sync::Mutex<std::collections::HashSet<MigrationId>>,
    /// Everything this coordinator's /metrics serves.
    pub metrics: prometheus::Registry,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where /metrics listens when the configuration does not say.
pub const DEFAULT_METRICS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9471);

/// Why a coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot set up the coordinator's TLS client")]
    Tls(#[from] control::ControlError),
    #[error("cannot open the coordinator's history")]
    History(#[from] history::HistoryError),
    #[error("cannot read the coordinator's state")]
    State(#[from] crate::state::StateError),
    #[error("cannot open the coordinator's store")]
    Store(#[from] store::StoreError),
    #[error("cannot register the coordinator's metrics")]
    Metrics(#[from] prometheus::Error),
}

fn registry(m: &MigrationMetrics) -> prometheus::Result<prometheus::Registry> {
    let reg = prometheus::Registry::new();
    m.register_coordinator(&reg)?;
    Ok(reg)
}

/// Each host in `hosts` that lists `guest`, with its copy.
fn copies_of<'a>(
    hosts: &'a [HostStatus],
    guest: &str,
) -> Vec<(&'a str, &'a control::wire::HostedGuest)> {
    hosts
        .iter()
        .flat_map(|h| {
            h.capabilities
                .iter()
                .flat_map(|c| &c.guests)
                .filter(|g| g.info.name == guest)
                .map(move |g| (h.name.as_str(), g))
        })
        .collect()
}

/// A migration as planned: the guest, both ends and how it travels.
struct Plan {
    guest: control::wire::HostedGuest,
    src_name: String,
    src_caps: Capabilities,
    dst_host: String,
    /// The destination's coordinator, when it is not this one.
    peer: Option<String>,
    dst_label: String,
    dst_caps: Capabilities,
    mode: crate::protocol::EncryptionMode,
    transport: crate::protocol::Transport,
}

/// Where a migration's events go: the client that asked, or nowhere (a
/// drain's migrations report through the drain).
struct Events<'a>(Option<&'a mut Responder>);

impl Events<'_> {
    /// A client that went away does not stop the migration.
    async fn send(&mut self, r: &Response) {
        if let Some(resp) = self.0.as_mut() {
            let _ = resp.send(r).await;
        }
    }
}

/// A guest claimed by a migration; released when it ends, however it ends.
struct GuestClaim<'a> {
    coordinator: &'a Coordinator,
    guest: String,
}

impl Drop for GuestClaim<'_> {
    fn drop(&mut self) {
        self.coordinator
            .moving
            .lock()
            .expect("moving")
            .remove(&self.guest);
    }
}

/// The cordoned hosts, kept in `cordoned.json` in the state directory so a
/// host in maintenance stays so across a restart.
struct Cordons {
    file: Option<std::path::PathBuf>,
    hosts: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Cordons {
    fn open(dir: Option<&Path>) -> Result<Cordons, crate::state::StateError> {
        let file = dir.map(|d| d.join("cordoned.json"));
        let hosts = crate::state::read_json_or_default(
            file.as_deref(),
            "a list of host names is expected; move it away to uncordon every host",
        )?;
        Ok(Cordons {
            file,
            hosts: std::sync::Mutex::new(hosts),
        })
    }

    fn contains(&self, host: &str) -> bool {
        self.hosts.lock().expect("cordons").contains(host)
    }

    /// Adds or removes `host`; whether that changed anything. Written
    /// before it is answered: a drain's cordon survives a crash.
    fn set(&self, host: &str, cordoned: bool) -> Result<bool, Refusal> {
        let mut hosts = self.hosts.lock().expect("cordons");
        let changed = if cordoned {
            hosts.insert(host.to_string())
        } else {
            hosts.remove(host)
        };
        if changed && let Some(f) = &self.file {
            let json = serde_json::to_vec_pretty(&*hosts).expect("names serialise");
            ferry_core::fs::write_atomically(f, &json).map_err(|source| Refusal::SaveCordon {
                path: f.clone(),
                source,
            })?;
        }
        Ok(changed)
    }
}

impl Coordinator {
    pub fn new(cfg: CoordinatorConfig) -> Result<Arc<Self>, StartError> {
        Self::with_key_source(cfg, Arc::new(MigrationKey::generate))
    }

    /// Replaces the key source (tests that must know the key to look for it).
    pub fn with_key_source(
        cfg: CoordinatorConfig,
        key_source: KeySource,
    ) -> Result<Arc<Self>, StartError> {
        let client = Client::new(&cfg.tls)?;
        let history = match &cfg.state_dir {
            Some(dir) => History::open(dir)?,
            None => History::in_memory(),
        };
        let migration_metrics = MigrationMetrics::new(&[MetricsRole::Coordinator])?;
        let metrics = registry(&migration_metrics)?;
        let duplicates = prometheus::IntGauge::new(
            "ferry_coordinator_duplicate_guests",
            "Guests that more than one host lists as its own, none of them migrating it (see `ferry resolve`)",
        )?;
        metrics.register(Box::new(duplicates.clone()))?;
        let queue_gauges = (
            prometheus::IntGauge::new(
                "ferry_coordinator_migrations_running",
                "Migrations the scheduler let start that have not ended",
            )?,
            prometheus::IntGauge::new(
                "ferry_coordinator_migrations_queued",
                "Migrations waiting for the scheduler's limits (scheduler.max_running, max_outgoing_per_host, max_incoming_per_host)",
            )?,
        );
        for g in [&queue_gauges.0, &queue_gauges.1] {
            metrics.register(Box::new(g.clone()))?;
        }
        let cordons = Cordons::open(cfg.state_dir.as_deref())?;
        let store = tokio::sync::OnceCell::new();
        if cfg.store == store::StoreConfig::Embedded {
            // Opened here so that a damaged file stops the start.
            let s = store::Store::embedded(cfg.state_dir.as_deref(), &cfg.name)?;
            let _ = store.set(s);
        }
        Ok(Arc::new(Self {
            store,
            epoch: Default::default(),
            leading: Default::default(),
            me: Default::default(),
            retry: Default::default(),
            scheduler: Scheduler::new(cfg.scheduler.clone(), Some(queue_gauges)),
            moving: Default::default(),
            cordons,
            cfg,
            client,
            history,
            key_source,
            migration_metrics,
            duplicates,
            reported: std::sync::Mutex::new(Vec::new()),
            cancels: std::sync::Mutex::new(Default::default()),
            metrics,
        }))
    }

    /// A migration that failed before it started: the spec never left.
    fn refuse(&self, e: impl std::fmt::Display) -> Response {
        self.migration_metrics.refused();
        Response::error(e)
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    fn is_cordoned(&self, host: &str) -> bool {
        self.cordons.contains(host)
    }

    pub fn load_config(path: &Path) -> Result<CoordinatorConfig, crate::config::ConfigError> {
        let mut cfg: CoordinatorConfig = crate::config::load(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.tls = cfg.tls.relative_to(base);
        cfg.store = std::mem::take(&mut cfg.store).relative_to(base);
        cfg.state_dir = Some(crate::config::state_dir_for(
            path,
            cfg.state_dir.take(),
            &cfg.name,
        ));
        Ok(cfg)
    }

    pub fn records(&self) -> Vec<MigrationRecord> {
        self.history.all()
    }

    fn record(&self, r: MigrationRecord) {
        self.history.add(r);
    }

    fn update(&self, id: &MigrationId, f: impl FnOnce(&mut MigrationRecord)) {
        self.history.update(id, f);
    }

    fn host_entry(&self, name: &str) -> Result<&config::HostEntry, Refusal> {
        self.cfg
            .hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| Refusal::NoHost {
                coordinator: self.cfg.name.clone(),
                host: name.to_string(),
            })
    }

    fn peer_entry(&self, name: &str) -> Result<&config::PeerEntry, Refusal> {
        self.cfg
            .peers
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Refusal::NoPeer {
                coordinator: self.cfg.name.clone(),
                peer: name.to_string(),
            })
    }

    /// A host's capabilities, its own word ANDed with our configuration.
    async fn host_caps(&self, name: &str) -> Result<Capabilities, Refusal> {
        let entry = self.host_entry(name)?;
        match self
            .client
            .call(
                name,
                entry.control,
                &self.fence(Request::Capabilities),
                CALL_TIMEOUT,
            )
            .await
        {
            Ok(Response::Capabilities(mut c)) => {
                c.encryption &= entry.encryption;
                Ok(*c)
            }
            Ok(other) => Err(Refusal::Answered {
                who: format!("host {name}"),
                answer: format!("{other:?}"),
            }),
            Err(source) => Err(Refusal::Unreachable {
                host: name.to_string(),
                source,
            }),
        }
    }

    async fn peer_caps(&self, peer: &str, host: &str) -> Result<Capabilities, Refusal> {
        let p = self.peer_entry(peer)?;
        let req = Request::PeerCapabilities {
            host: host.to_string(),
        };
        match self.client.call(peer, p.address, &req, CALL_TIMEOUT).await {
            Ok(Response::Capabilities(c)) => Ok(*c),
            Ok(other) => Err(Refusal::Answered {
                who: format!("coordinator {peer}"),
                answer: format!("{other:?}"),
            }),
            Err(source) => Err(Refusal::Peer {
                peer: peer.to_string(),
                source,
            }),
        }
    }

    /// The host that runs `guest`.
    async fn find_guest(&self, guest: &str) -> Result<(String, Capabilities), Refusal> {
        for h in &self.cfg.hosts {
            if let Ok(c) = self.host_caps(&h.name).await
                && c.guests.iter().any(|g| g.info.name == guest)
            {
                return Ok((h.name.clone(), c));
            }
        }
        Err(Refusal::GuestNowhere {
            coordinator: self.cfg.name.clone(),
            guest: guest.to_string(),
        })
    }

    /// What a migration of `guest` to `destination` would be, as things
    /// stand: every refusal that needs no memory to move happens here.
    async fn plan(
        &self,
        guest: &str,
        source: Option<&str>,
        destination: &str,
        opts: &MigrateOptions,
    ) -> Result<Plan, Refusal> {
        let (src_name, src_caps) = match source {
            Some(s) => (s.to_string(), self.host_caps(s).await?),
            None => self.find_guest(guest).await?,
        };
        let Some(g) = src_caps.guests.iter().find(|g| g.info.name == guest) else {
            return Err(Refusal::NoGuest {
                host: src_name,
                guest: guest.to_string(),
            });
        };
        let (dst_host, peer) = match destination.split_once('@') {
            Some((h, c)) if c != self.cfg.name => (h.to_string(), Some(c.to_string())),
            Some((h, _)) => (h.to_string(), None),
            None => (destination.to_string(), None),
        };
        if peer.is_none() && dst_host == src_name {
            return Err(Refusal::AlreadyThere {
                guest: guest.to_string(),
                host: dst_host,
            });
        }
        if peer.is_none() && self.is_cordoned(&dst_host) {
            return Err(Refusal::Cordoned(dst_host));
        }
        let dst_caps = match &peer {
            None => self.host_caps(&dst_host).await?,
            Some(p) => self.peer_caps(p, &dst_host).await?,
        };
        let dst_label = match &peer {
            Some(p) => format!("{dst_host}@{p}"),
            None => dst_host.clone(),
        };
        let refused = |e: ModeError| {
            tracing::warn!(coordinator = %self.cfg.name, guest = %guest, "migration refused: {e}", e = report(&e));
            Refusal::Mode(e)
        };
        let mode = migration_mode(guest, g.encryption, opts.mode).map_err(refused)?;
        let transport = resolve_transport(
            guest,
            mode,
            (&src_name, src_caps.encryption),
            (&dst_label, dst_caps.encryption),
        )
        .map_err(refused)?;
        Ok(Plan {
            guest: g.clone(),
            src_name,
            src_caps,
            dst_host,
            peer,
            dst_label,
            dst_caps,
            mode,
            transport,
        })
    }

    /// A migration, from the request to its end: planned (refused at once
    /// if it cannot be), queued until the scheduler's limits let it start
    /// (planned again then: the world moved on while it waited), then run.
    async fn migrate(
        self: &Arc<Self>,
        guest: String,
        source: Option<String>,
        destination: String,
        opts: MigrateOptions,
        events: &mut Events<'_>,
    ) -> Response {
        let asked = match self.asked(&opts) {
            Ok(a) => a,
            Err(e) => return self.refuse(report(&e)),
        };
        let plan = match self
            .plan(&guest, source.as_deref(), &destination, &opts)
            .await
        {
            Ok(p) => p,
            Err(e) => return self.refuse(report(&e)),
        };
        let id = MigrationId::generate();
        let _busy = match self.take_guest(&guest, id) {
            Ok(b) => b,
            Err(e) => return self.refuse(e),
        };
        self.record(MigrationRecord {
            id,
            guest: guest.clone(),
            source: plan.src_name.clone(),
            destination: plan.dst_label.clone(),
            mode: plan.mode,
            transport: plan.transport,
            state: MigrationState::Queued,
            started_unix_ms: unix_ms(),
            progress: None,
            stats: None,
            error: None,
            waiting: None,
        });
        if let Err(e) = self.journal(&id, store::Phase::Requested).await {
            let msg = format!(
                "cannot record the migration in the store: {e}: nothing moved",
                e = report(&e)
            );
            self.end_unstarted(&id, MigrationState::Failed, &msg).await;
            return self.refuse(msg);
        }
        let ticket = self.scheduler.enter(Slot {
            id,
            source: plan.src_name.clone(),
            destination: plan.dst_label.clone(),
        });
        let mut told = None;
        loop {
            match ticket.wait(control::HEARTBEAT).await {
                Place::Running => break,
                Place::Waiting { position, behind } => {
                    if self.cancel_requested(&id) {
                        drop(ticket);
                        let msg = "cancelled: by request, while queued (nothing moved)".to_string();
                        self.end_unstarted(&id, MigrationState::Cancelled, &msg)
                            .await;
                        return Response::error(msg);
                    }
                    let now = (position, behind.to_string());
                    if told.as_ref() == Some(&now) {
                        events.send(&Response::Heartbeat).await;
                        continue;
                    }
                    tracing::info!(coordinator = %self.cfg.name, migration = %id, guest = %guest, position, "migration queued: {behind}");
                    events
                        .send(&Response::Queued {
                            id,
                            position,
                            reason: now.1.clone(),
                        })
                        .await;
                    told = Some(now);
                }
                Place::Gone => unreachable!("a ticket stays in the queue until dropped"),
            }
        }
        let plan = if told.is_none() {
            plan
        } else {
            match self
                .plan(&guest, Some(&plan.src_name), &destination, &opts)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    let msg = format!("refused when its turn came: {e}", e = report(&e));
                    self.end_unstarted(&id, MigrationState::Failed, &msg).await;
                    self.migration_metrics.refused();
                    return Response::error(msg);
                }
            }
        };
        let answer = self.run(plan, id, asked, events).await;
        drop(ticket);
        self.close_journal(&id).await;
        answer
    }

    /// The limits and streams a request asks for, the coordinator's
    /// defaults (and the scheduler's bandwidth) filling in what it does
    /// not say; refused here, before it queues, if they cannot work.
    fn asked(&self, opts: &MigrateOptions) -> Result<(crate::protocol::Limits, u16), Refusal> {
        let mut limits = opts
            .limits
            .clone()
            .unwrap_or_else(|| self.cfg.defaults.limits.clone());
        if limits.bandwidth.is_none() {
            limits.bandwidth = self.cfg.scheduler.bandwidth.map(|r| r.bytes_per_second());
        }
        limits.check().map_err(|i| Refusal::Limits {
            field: i.field,
            message: i.message,
        })?;
        // 0 asks for the default, as `defaults.streams: 0` does in YAML.
        let streams = opts
            .streams
            .filter(|n| *n > 0)
            .unwrap_or_else(|| self.cfg.defaults.streams());
        if streams > 64 {
            return Err(Refusal::Streams(streams));
        }
        Ok((limits, streams))
    }

    /// Claims `guest` for migration `id`: one migration of a guest at a time.
    fn take_guest(&self, guest: &str, id: MigrationId) -> Result<GuestClaim<'_>, Refusal> {
        let mut busy = self.moving.lock().expect("moving");
        if let Some(other) = busy.get(guest) {
            return Err(Refusal::Busy {
                guest: guest.to_string(),
                other: *other,
            });
        }
        busy.insert(guest.to_string(), id);
        Ok(GuestClaim {
            coordinator: self,
            guest: guest.to_string(),
        })
    }

    /// Ends a migration that never started (cancelled or refused in the queue).
    async fn end_unstarted(&self, id: &MigrationId, state: MigrationState, msg: &str) {
        tracing::info!(coordinator = %self.cfg.name, migration = %id, "{msg}");
        self.cancels.lock().expect("cancels").remove(id);
        self.update(id, |r| {
            r.state = state;
            r.error = Some(msg.to_string());
        });
        self.close_journal(id).await;
    }

    /// The journal record of migration `id` (from its history record) at `phase`.
    fn entry(&self, id: &MigrationId, phase: store::Phase) -> Option<store::Entry> {
        let r = self.history.get(id)?;
        Some(store::Entry {
            id: *id,
            guest: r.guest,
            source: r.source,
            destination: r.destination,
            phase,
            epoch: self.epoch(),
            coordinator: self.cfg.name.clone(),
            updated_unix_ms: unix_ms(),
            note: None,
        })
    }

    /// Records migration `id` at `phase`, fenced on this coordinator's lead.
    async fn journal(&self, id: &MigrationId, phase: store::Phase) -> Result<(), Refusal> {
        let (Some(store), Some(entry)) = (self.store.get(), self.entry(id, phase)) else {
            return Err(Refusal::NoStore);
        };
        Ok(store.record(&entry).await?)
    }

    /// [`Self::journal`] where the migration goes on whatever the store
    /// says: a failure is logged, and the next leader settles the record.
    async fn journal_or_warn(&self, id: &MigrationId, phase: store::Phase) {
        if let Err(e) = self.journal(id, phase).await {
            tracing::warn!(coordinator = %self.cfg.name, migration = %id, phase = ?phase,
                "cannot journal the migration's phase (the next leader settles it): {e}", e = report(&e));
        }
    }

    /// Closes migration `id`'s journal record from its history record's
    /// end: completed, the guest's owner becomes its destination in the
    /// same transaction; anything else, aborted.
    async fn close_journal(&self, id: &MigrationId) {
        let Some(r) = self.history.get(id) else {
            return;
        };
        // Whichever way it ended, the owner had been one end or the other.
        let (phase, owner) = match r.state {
            MigrationState::Completed => (store::Phase::Done, &r.destination),
            MigrationState::Failed | MigrationState::Cancelled => {
                (store::Phase::Aborted, &r.source)
            }
            _ => return,
        };
        let (Some(store), Some(mut entry)) = (self.store.get(), self.entry(id, phase)) else {
            return;
        };
        entry.note = r.error.clone();
        let swap = store::OwnerSwap {
            guest: &r.guest,
            from: &[&r.source, &r.destination],
            to: owner,
        };
        if let Err(e) = store.commit(&entry, Some(swap)).await {
            tracing::warn!(coordinator = %self.cfg.name, migration = %id,
                "cannot close the migration's journal record (the next leader settles it): {e}", e = report(&e));
        }
    }

    /// GO as one transaction: the journal says go and the guest's owner
    /// becomes its destination (swapped from its source); only then is the
    /// source told to send GO. Without the store's word (no quorum, a new
    /// leader) the decision is to resume the guest on its source.
    async fn commit_go(&self, id: &MigrationId) -> SwitchDecision {
        let abort = |reason: String| SwitchDecision::Abort { reason };
        let (Some(store), Some(entry), Some(r)) = (
            self.store.get(),
            self.entry(id, store::Phase::Go),
            self.history.get(id),
        ) else {
            return abort(format!("{} has no store or record of it", self.cfg.name));
        };
        if !self.leads() {
            return abort(format!("{} no longer leads the site", self.cfg.name));
        }
        let swap = store::OwnerSwap {
            guest: &r.guest,
            from: &[&r.source],
            to: &r.destination,
        };
        match store.commit(&entry, Some(swap)).await {
            Ok(()) => {
                tracing::info!(coordinator = %self.cfg.name, migration = %id, guest = %r.guest,
                    owner = %r.destination, "migration: GO recorded, the guest's owner is its destination");
                SwitchDecision::Go
            }
            Err(e) => {
                let reason = format!("the store did not record GO: {e}", e = report(&e));
                tracing::warn!(coordinator = %self.cfg.name, migration = %id, "{reason}; the guest resumes on its source");
                abort(reason)
            }
        }
    }

    /// Tells `source` the decision on its outgoing migration `id`.
    async fn decide(
        &self,
        source: &str,
        id: MigrationId,
        decision: SwitchDecision,
    ) -> Result<(), Refusal> {
        let entry = self.host_entry(source)?;
        self.client
            .call(
                source,
                entry.control,
                &self.fence(Request::Decide { id, decision }),
                CALL_TIMEOUT,
            )
            .await
            .map(drop)
            .map_err(Refusal::Call)
    }

    /// The epoch of this coordinator's last lead (0: never led).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn leads(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `r` as this coordinator sends it to a host: with its site and epoch
    /// once it has led.
    fn fence(&self, r: Request) -> Request {
        match (self.store.get(), self.epoch()) {
            (Some(s), epoch) if epoch > 0 => Request::Fenced {
                site: s.site().to_string(),
                epoch,
                request: Box::new(r),
            },
            _ => r,
        }
    }

    /// The spec of a planned migration: a fresh key (when encrypted) and nonce.
    fn spec_of(
        &self,
        plan: &Plan,
        id: MigrationId,
        (limits, streams): (crate::protocol::Limits, u16),
    ) -> MigrationSpec {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).expect("the OS random source failed");
        MigrationSpec {
            id,
            guest: plan.guest.info.name.clone(),
            memory: plan.guest.info.memory,
            source: Endpoint {
                host: plan.src_name.clone(),
                migration: plan.src_caps.migration,
            },
            destination: Endpoint {
                host: plan.dst_host.clone(),
                migration: plan.dst_caps.migration,
            },
            mode: plan.mode,
            setting: plan.guest.encryption,
            transport: plan.transport,
            key: plan.transport.encrypted().then(|| (self.key_source)()),
            nonce: u64::from_be_bytes(nonce),
            streams,
            limits,
            machine: plan.guest.info.machine.clone(),
        }
    }

    /// Runs a planned migration that the scheduler let start: spec, the
    /// destination prepared, then the source started and followed.
    async fn run(
        self: &Arc<Self>,
        plan: Plan,
        id: MigrationId,
        settings: (crate::protocol::Limits, u16),
        events: &mut Events<'_>,
    ) -> Response {
        let spec = self.spec_of(&plan, id, settings);
        let Plan {
            guest: g,
            src_name,
            dst_host,
            peer,
            dst_label,
            mode,
            transport,
            ..
        } = plan;
        let guest = g.info.name.clone();
        if let Err(e) = spec.check() {
            self.end_unstarted(&id, MigrationState::Failed, &e.to_string())
                .await;
            return self.refuse(e);
        }
        tracing::info!(coordinator = %self.cfg.name, migration = %id, guest = %guest, source = %src_name,
            destination = %dst_label, mode = %mode, transport = %transport, streams = spec.streams, "migration: spec created");
        self.migration_metrics.started(MetricsRole::Coordinator);
        self.update(&id, |r| {
            r.state = MigrationState::Preparing;
            r.mode = mode;
            r.transport = transport;
            r.destination = dst_label.clone();
        });
        events
            .send(&Response::Accepted {
                id,
                transport,
                source: src_name.clone(),
                destination: dst_label.clone(),
            })
            .await;

        if let Err(e) = self.journal(&id, store::Phase::SpecIssued).await {
            drop(spec);
            let msg = format!("cannot record the migration in the store: {e}: nothing moved");
            self.end_unstarted(&id, MigrationState::Failed, &msg).await;
            self.migration_metrics.refused();
            return Response::error(msg);
        }
        // The destination first: it refuses (memory, duplicate guest, ...)
        // before any memory moves.
        let prepared = self
            .prepare_destination(&spec, &dst_host, peer.as_deref(), &dst_label)
            .await;
        if let Err(e) = prepared {
            let msg = format!("the destination refused the migration: {e}", e = report(&e));
            self.update(&id, |r| {
                r.state = MigrationState::Failed;
                r.error = Some(msg.clone());
            });
            return Response::error(msg);
        }

        if self.cancel_requested(&id) {
            drop(spec);
            let _ = self
                .abort_destination(&id, &dst_host, peer.as_deref())
                .await;
            let msg = "cancelled: by request, before the source started".to_string();
            self.update(&id, |r| {
                r.state = MigrationState::Cancelled;
                r.error = Some(msg.clone());
            });
            self.cancels.lock().expect("cancels").remove(&id);
            return Response::error(msg);
        }

        // Then the source. After this request is written the coordinator has
        // no further use for the key: the spec is dropped (and wiped) here.
        let src_entry = self.host_entry(&src_name).expect("checked by host_caps");
        let exchange = self
            .client
            .open(
                &src_name,
                src_entry.control,
                &self.fence(Request::StartOutgoing { spec }),
            )
            .await;
        let followed = match exchange {
            Ok(mut x) => {
                self.update(&id, |r| r.state = MigrationState::Running);
                self.journal_or_warn(&id, store::Phase::Streaming).await;
                self.follow_source(id, &src_name, &mut x, events).await
            }
            Err(e) => Err(Refusal::StartSource(e)),
        };
        match followed {
            Ok(stats) => {
                self.finished(id, &guest, &dst_host, peer.as_deref(), stats)
                    .await
            }
            Err(why) => {
                let why = report(&why).to_string();
                self.lost(&id, &dst_host, peer.as_deref(), why).await
            }
        }
    }

    /// Hands the spec to the destination (through its coordinator when it
    /// is another's); Ok once it is prepared.
    async fn prepare_destination(
        &self,
        spec: &MigrationSpec,
        dst_host: &str,
        peer: Option<&str>,
        dst_label: &str,
    ) -> Result<(), ControlError> {
        let prepared = match peer {
            None => {
                let entry = self.host_entry(dst_host).expect("checked by host_caps");
                self.client
                    .call(
                        dst_host,
                        entry.control,
                        &self.fence(Request::PrepareIncoming { spec: spec.clone() }),
                        CALL_TIMEOUT,
                    )
                    .await
            }
            Some(p) => {
                let addr = self.peer_entry(p).expect("checked by peer_caps").address;
                let req = Request::PeerPrepare {
                    host: dst_host.to_string(),
                    spec: spec.clone(),
                };
                self.client.call(p, addr, &req, CALL_TIMEOUT).await
            }
        };
        match prepared? {
            Response::Prepared { .. } => Ok(()),
            other => Err(ControlError::Unexpected {
                name: dst_label.to_string(),
                what: format!("{other:?}"),
            }),
        }
    }

    /// Follows the source's stream until it reports the end: relays its
    /// progress, records READY, and takes the GO decision when it asks.
    /// Err: why contact with it was lost.
    async fn follow_source(
        &self,
        id: MigrationId,
        src_name: &str,
        exchange: &mut control::Exchange,
        events: &mut Events<'_>,
    ) -> Result<Box<MigrationStats>, Refusal> {
        let mut stunned = false;
        loop {
            let Ok(next) = tokio::time::timeout(SOURCE_SILENCE, exchange.next()).await else {
                return Err(Refusal::Silent {
                    host: src_name.to_string(),
                    secs: SOURCE_SILENCE.as_secs(),
                });
            };
            match next {
                Ok(Response::Progress(p)) => {
                    if p.phase == crate::engine::Phase::Switchover && !stunned {
                        stunned = true;
                        self.journal_or_warn(&id, store::Phase::Ready).await;
                        failpoint("coordinator-at-ready");
                    }
                    self.history.progress(&id, p.clone());
                    events.send(&Response::Progress(p)).await;
                }
                Ok(Response::Heartbeat) => {
                    events.send(&Response::Heartbeat).await;
                }
                Ok(Response::AwaitingGo) => {
                    failpoint("coordinator-awaiting-go");
                    let decision = self.commit_go(&id).await;
                    if decision == SwitchDecision::Go {
                        failpoint("coordinator-after-go");
                    }
                    if let Err(e) = self.decide(src_name, id, decision).await {
                        // The source gives up with its destination; the
                        // outcome then comes on this connection as any.
                        tracing::warn!(coordinator = %self.cfg.name, migration = %id,
                            "cannot tell the source {src_name} the decision: {e}", e = report(&e));
                    }
                }
                Ok(Response::Finished(s)) => return Ok(s),
                Ok(other) => {
                    return Err(Refusal::Answered {
                        who: format!("source {src_name}"),
                        answer: format!("{other:?}"),
                    });
                }
                Err(source) => {
                    return Err(Refusal::LostContact {
                        host: src_name.to_string(),
                        source,
                    });
                }
            }
        }
    }

    /// The source reported the end: record it, make sure a failed
    /// migration left nothing at the destination, tell a peer coordinator.
    async fn finished(
        &self,
        id: MigrationId,
        guest: &str,
        dst_host: &str,
        peer: Option<&str>,
        stats: Box<MigrationStats>,
    ) -> Response {
        let ok = stats.result == MigrationResult::Completed;
        let cancelled = self.cancels.lock().expect("cancels").remove(&id);
        self.update(&id, |r| {
            r.state = if ok {
                MigrationState::Completed
            } else if cancelled {
                MigrationState::Cancelled
            } else {
                MigrationState::Failed
            };
            r.error = stats.error.clone();
            r.stats = Some(stats.clone());
        });
        if !ok
            && let Some(IncomingOutcome::Resumed) =
                self.abort_destination(&id, dst_host, peer).await
        {
            // Should not happen: the engine's commit rules out two copies.
            tracing::error!(coordinator = %self.cfg.name, migration = %id, guest = %guest,
                "the source reported failure, but the destination {dst_host} resumed the guest: check both hosts");
        }
        if let Some(p) = peer
            && let Ok(pe) = self.peer_entry(p)
        {
            let _ = self
                .client
                .call(
                    p,
                    pe.address,
                    &Request::PeerFinished {
                        id,
                        result: stats.clone(),
                    },
                    CALL_TIMEOUT,
                )
                .await;
        }
        tracing::info!(coordinator = %self.cfg.name, migration = %id, result = ?stats.result,
            total_s = stats.total_seconds, downtime_ms = stats.downtime_seconds * 1e3, "migration: finished");
        self.migration_metrics
            .ended(MetricsRole::Coordinator, stats.mode, ok);
        Response::Finished(stats)
    }

    fn cancel_requested(&self, id: &MigrationId) -> bool {
        self.cancels.lock().expect("cancels").contains(id)
    }

    /// The migration `id` if it has not ended, or why not.
    fn unended(&self, id: MigrationId, what: &'static str) -> Result<MigrationRecord, Refusal> {
        let Some(r) = self.history.get(&id) else {
            return Err(Refusal::NoMigration {
                coordinator: self.cfg.name.clone(),
                id,
            });
        };
        if !matches!(
            r.state,
            MigrationState::Queued | MigrationState::Preparing | MigrationState::Running
        ) {
            return Err(Refusal::Ended {
                id,
                state: serde_json::to_value(r.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                guest: r.guest,
                what,
            });
        }
        Ok(r)
    }

    /// `ferry migrate-set`: tells the source to change migration `id`'s
    /// limits as it runs.
    async fn set_limits(&self, id: MigrationId, change: LimitChange) -> Result<String, Refusal> {
        change.check()?;
        let r = self.unended(id, "nothing to change")?;
        // Told even while preparing: the source keeps the word for the
        // migration's start.
        let entry = self.host_entry(&r.source)?;
        self.client
            .call(
                &r.source,
                entry.control,
                &self.fence(Request::SetOutgoingLimits { id, change }),
                CALL_TIMEOUT,
            )
            .await
            .map_err(|e| match e {
                ControlError::Remote { .. } => Refusal::SourceSaid(e),
                source => Refusal::CannotReach {
                    host: format!("the source {}", r.source),
                    source,
                },
            })?;
        tracing::info!(coordinator = %self.cfg.name, migration = %id, guest = %r.guest,
            bandwidth = ?change.bandwidth, downtime_limit_us = ?change.downtime_limit_us, "limits changed");
        Ok(format!("migration {id} of {}: {change}", r.guest))
    }

    /// `ferry cancel`: tells the source to stop migration `id` before its
    /// switch-over. The source's answer to the migration itself says
    /// whether it was in time.
    async fn cancel(&self, id: MigrationId) -> Result<String, Refusal> {
        let r = self.unended(id, "nothing to cancel")?;
        self.cancels.lock().expect("cancels").insert(id);
        if r.state == MigrationState::Queued {
            // Its queue wait sees the word; no host has heard of it yet.
            self.scheduler.poke();
            tracing::info!(coordinator = %self.cfg.name, migration = %id, guest = %r.guest, "cancel requested while queued");
            return Ok(format!(
                "cancelling migration {id}: it was queued and will not start; {} stays on {}",
                r.guest, r.source
            ));
        }
        // Told even while preparing: the source may be about to start it,
        // and keeps the word for when it does.
        let entry = self.host_entry(&r.source)?;
        self.client
            .call(
                &r.source,
                entry.control,
                &self.fence(Request::CancelOutgoing { id }),
                CALL_TIMEOUT,
            )
            .await
            .map_err(|source| Refusal::CannotReach {
                host: format!("the source {}", r.source),
                source,
            })?;
        tracing::info!(coordinator = %self.cfg.name, migration = %id, guest = %r.guest, "cancel requested");
        Ok(format!(
            "cancelling migration {id}: {} stays on {} unless its switch-over has begun",
            r.guest, r.source
        ))
    }

    /// Cancels the destination's side and returns what it decided (None:
    /// not asked, a peer coordinator's host, or unreachable).
    async fn abort_destination(
        &self,
        id: &MigrationId,
        host: &str,
        peer: Option<&str>,
    ) -> Option<IncomingOutcome> {
        if peer.is_some() {
            return None;
        }
        let e = self.host_entry(host).ok()?;
        match self
            .client
            .call(
                host,
                e.control,
                &self.fence(Request::AbortIncoming { id: *id }),
                CALL_TIMEOUT,
            )
            .await
        {
            Ok(Response::Outcome { outcome }) => Some(outcome),
            Ok(other) => {
                tracing::warn!(coordinator = %self.cfg.name, migration = %id, "destination {host} answered the abort with {other:?}");
                None
            }
            Err(e) => {
                tracing::warn!(coordinator = %self.cfg.name, migration = %id, "cannot abort on destination {host}: {e}", e = report(&e));
                None
            }
        }
    }

    /// The source is gone or mute. What happened to the guest is the
    /// destination's word: if it resumed the guest (GO arrived before the
    /// source died), the migration completed, and is recorded so.
    async fn lost(&self, id: &MigrationId, dst: &str, peer: Option<&str>, msg: String) -> Response {
        tracing::warn!(coordinator = %self.cfg.name, migration = %id, "{msg}");
        self.cancels.lock().expect("cancels").remove(id);
        let record = self.history.get(id);
        let mode = record.as_ref().map(|r| r.mode).unwrap_or_default();
        let outcome = self.abort_destination(id, dst, peer).await;
        if let (Some(IncomingOutcome::Resumed), Some(r)) = (outcome, record) {
            let note = format!(
                "{msg}, after the switch-over: the destination {dst} had resumed the guest, so it runs there; the source's figures are lost"
            );
            tracing::warn!(coordinator = %self.cfg.name, migration = %id, guest = %r.guest,
                "migration completed, but {note}");
            let mut stats = MigrationStats::begin(
                *id,
                &r.guest,
                &r.source,
                &r.destination,
                r.mode,
                r.transport,
            );
            stats.result = MigrationResult::Completed;
            stats.note = Some(note);
            stats.total_seconds = unix_ms().saturating_sub(r.started_unix_ms) as f64 / 1e3;
            if let Some(p) = &r.progress {
                stats.transferred_bytes = p.transferred_bytes;
                stats.total_bytes = p.total_bytes;
            }
            self.update(id, |rec| {
                rec.state = MigrationState::Completed;
                rec.error = None;
                rec.stats = Some(Box::new(stats.clone()));
            });
            self.migration_metrics
                .ended(MetricsRole::Coordinator, mode, true);
            return Response::Finished(Box::new(stats));
        }
        self.migration_metrics
            .ended(MetricsRole::Coordinator, mode, false);
        self.update(id, |r| {
            r.state = MigrationState::Failed;
            r.error = Some(msg.clone());
        });
        Response::error(msg)
    }

    /// Migrations the last run did not see end: their outcome is where the
    /// guest runs now, once no host is still moving it (a source goes on
    /// without its coordinator). Looked at every few seconds for a while;
    /// one that neither host lists (a host down, or the guest gone) stays
    /// interrupted, for the operator.
    async fn settle_interrupted(self: Arc<Self>) {
        for _ in 0..SETTLE_ROUNDS {
            let open = self.history.interrupted();
            if open.is_empty() {
                return;
            }
            for r in open {
                self.settle_one(&r).await;
            }
            tokio::time::sleep(SETTLE_EVERY).await;
        }
    }

    async fn settle_one(&self, r: &MigrationRecord) {
        // Per host: unreachable (None), or whether it lists the guest and,
        // if so, whether it is still moving it.
        let look = |caps: Result<Capabilities, Refusal>| {
            caps.ok().map(|c| {
                c.guests
                    .iter()
                    .find(|g| g.info.name == r.guest)
                    .map(|g| g.migrating || g.info.state == RunState::Paused)
            })
        };
        let src = look(self.host_caps(&r.source).await);
        let dst = if r.destination.contains('@') {
            Some(None) // another coordinator's host: not ours to ask
        } else {
            look(self.host_caps(&r.destination).await)
        };
        let (state, error) = match (src, dst) {
            (Some(None), Some(Some(_))) => (MigrationState::Completed, None),
            (Some(Some(false)), Some(None)) => (
                MigrationState::Failed,
                Some(format!(
                    "interrupted by a coordinator restart; the guest stayed on {}",
                    r.source
                )),
            ),
            (Some(Some(false)), Some(Some(_))) => {
                tracing::error!(coordinator = %self.cfg.name, migration = %r.id, guest = %r.guest,
                    "the guest is listed on both {} and {}: check both hosts", r.source, r.destination);
                return;
            }
            _ => return, // still moving, or a host to hear from
        };
        tracing::info!(coordinator = %self.cfg.name, migration = %r.id, guest = %r.guest, state = ?state,
            "interrupted migration settled from where the guest runs");
        self.history.update(&r.id, |rec| {
            rec.state = state;
            rec.error = error;
        });
        self.close_journal(&r.id).await;
        let retry = self.retry.lock().expect("retry").remove(&r.id);
        if retry && state == MigrationState::Failed && self.leads() {
            tracing::info!(coordinator = %self.cfg.name, migration = %r.id, guest = %r.guest,
                "asking again for the migration the last leader left unfinished");
            let (me, r) = (self.clone_arc(), r.clone());
            tokio::spawn(async move {
                let answer = me
                    .migrate(
                        r.guest.clone(),
                        Some(r.source.clone()),
                        r.destination.clone(),
                        MigrateOptions::default(),
                        &mut Events(None),
                    )
                    .await;
                if let Response::Error { message } = answer {
                    tracing::warn!(coordinator = %me.cfg.name, guest = %r.guest, "the retry of migration {} was refused: {message}", r.id);
                }
            });
        }
    }

    fn clone_arc(&self) -> Arc<Self> {
        self.me
            .get()
            .and_then(std::sync::Weak::upgrade)
            .expect("a serving coordinator knows itself")
    }

    /// Leads the site for as long as this process lives: waits its turn,
    /// takes over what the last leader left (recovery), serves until the
    /// lead is lost (its lease lapsed: no quorum, or cut off), and
    /// campaigns again.
    async fn lead_forever(self: Arc<Self>) {
        if self.leads() {
            // Embedded: led since the start, for good.
            return std::future::pending().await;
        }
        let store = loop {
            if let Some(s) = self.store.get() {
                break s;
            }
            let listen = self.cfg.listen;
            match store::Store::open(
                &self.cfg.store,
                self.cfg.state_dir.as_deref(),
                &self.cfg.name,
                listen,
            )
            .await
            {
                Ok(s) => {
                    let _ = self.store.set(s);
                }
                Err(e) => {
                    store::warn(
                        &self.cfg.name,
                        "cannot open the store, trying again in 2 s",
                        &e,
                    );
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            }
        };
        loop {
            match store.lead().await {
                Ok(lead) => {
                    self.clone().took_lead(lead).await;
                    let lost = store.lost().await;
                    self.leading
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                    tracing::error!(coordinator = %self.cfg.name, site = %store.site(), epoch = lead.epoch,
                        "coordinator lost the lead: {e}; campaigning again", e = report(&lost));
                }
                Err(e) => {
                    store::warn(
                        &self.cfg.name,
                        "cannot lead the site yet, trying again in 2 s",
                        &e,
                    );
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            }
        }
    }

    /// Starts acting as the site's leader at `lead`'s epoch.
    async fn took_lead(self: Arc<Self>, lead: store::Lead) {
        self.epoch
            .store(lead.epoch, std::sync::atomic::Ordering::SeqCst);
        self.leading
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(store) = self.store.get() {
            tracing::info!(coordinator = %self.cfg.name, site = %store.site(), store = store.kind(),
                epoch = lead.epoch, "coordinator leads the site");
        }
        self.recover().await;
    }

    /// What a new leader does first with the journal's open records: each
    /// is followed as an interrupted migration until the hosts show where
    /// its guest runs, and one that had not reached its READY is aborted
    /// (its source never stopped the guest; the key is gone with the last
    /// leader) and asked again once the guest is back on its source.
    async fn recover(self: Arc<Self>) {
        let Some(store) = self.store.get() else {
            return;
        };
        let open = match store.open_entries().await {
            Ok(v) => v,
            Err(e) => {
                store::warn(&self.cfg.name, "cannot read the journal", &e);
                Vec::new()
            }
        };
        for e in open {
            let before_ready = matches!(
                e.phase,
                store::Phase::Requested | store::Phase::SpecIssued | store::Phase::Streaming
            );
            tracing::warn!(coordinator = %self.cfg.name, migration = %e.id, guest = %e.guest, phase = ?e.phase,
                leader = %e.coordinator, epoch = e.epoch, "taking over a migration the last leader left open");
            match self.history.get(&e.id) {
                Some(r) if r.state == MigrationState::Interrupted => {}
                Some(_) if e.phase == store::Phase::Requested => {
                    // Never started: nothing to look for.
                    self.close_journal(&e.id).await;
                    continue;
                }
                Some(_) => self.update(&e.id, |r| r.state = MigrationState::Interrupted),
                None => self.record(MigrationRecord {
                    id: e.id,
                    guest: e.guest.clone(),
                    source: e.source.clone(),
                    destination: e.destination.clone(),
                    mode: Default::default(),
                    transport: crate::protocol::Transport::Plaintext,
                    state: MigrationState::Interrupted,
                    started_unix_ms: e.updated_unix_ms,
                    progress: None,
                    stats: None,
                    error: Some(format!(
                        "its leader {} (epoch {}) stopped during it, at {:?}",
                        e.coordinator, e.epoch, e.phase
                    )),
                    waiting: None,
                }),
            }
            // Whatever happens next, one that ends with its guest on the
            // source is asked for again.
            self.retry.lock().expect("retry").insert(e.id);
            if !before_ready {
                // Stunned at its source, waiting for a decision: GO if the
                // store takes it (the key is not needed for that), at GO
                // the same word again. The source resumes the guest itself
                // if its destination gave up meanwhile.
                let decision = match e.phase {
                    store::Phase::Go => SwitchDecision::Go,
                    _ => self.commit_go(&e.id).await,
                };
                tracing::info!(coordinator = %self.cfg.name, migration = %e.id, decision = ?decision,
                    "deciding the switch-over the last leader left");
                if let Err(err) = self.decide(&e.source, e.id, decision).await {
                    tracing::warn!(coordinator = %self.cfg.name, migration = %e.id,
                        "the source {} took no decision (it finished on its own, or is down): {err}", e.source);
                }
            } else {
                if let Ok(h) = self.host_entry(&e.source) {
                    let req = self.fence(Request::CancelOutgoing { id: e.id });
                    if let Err(err) = self
                        .client
                        .call(&e.source, h.control, &req, CALL_TIMEOUT)
                        .await
                    {
                        tracing::warn!(coordinator = %self.cfg.name, migration = %e.id,
                            "cannot tell the source {} to abort: {err}", e.source, err = report(&err));
                    }
                }
                if e.phase == store::Phase::SpecIssued {
                    // The destination may hold memory for it and nothing more.
                    let _ = self
                        .abort_destination(
                            &e.id,
                            &e.destination,
                            e.destination.contains('@').then_some("peer"),
                        )
                        .await;
                }
            }
        }
        tokio::spawn(self.clone().settle_interrupted());
    }

    /// Every host's status, in configuration order.
    async fn inventory(&self) -> Vec<HostStatus> {
        let mut hosts = Vec::new();
        for h in &self.cfg.hosts {
            hosts.push(match self.host_caps(&h.name).await {
                Ok(c) => HostStatus {
                    name: h.name.clone(),
                    reachable: true,
                    error: None,
                    capabilities: Some(c),
                    cordoned: self.is_cordoned(&h.name),
                },
                Err(e) => HostStatus {
                    name: h.name.clone(),
                    reachable: false,
                    error: Some(report(&e).to_string()),
                    capabilities: None,
                    cordoned: self.is_cordoned(&h.name),
                },
            });
        }
        hosts
    }

    /// Counts the guests in `hosts` listed by more than one host and logs
    /// each new one. A guest being migrated is not a duplicate: the source
    /// lists it (migrating) until it has released it.
    fn note_duplicates(&self, hosts: &[HostStatus]) -> Vec<Duplicate> {
        let mut by_guest: std::collections::BTreeMap<&str, (Vec<String>, bool)> =
            Default::default();
        for h in hosts {
            for g in h.capabilities.iter().flat_map(|c| &c.guests) {
                let e = by_guest.entry(&g.info.name).or_default();
                e.0.push(h.name.clone());
                e.1 |= g.migrating;
            }
        }
        let dups: Vec<Duplicate> = by_guest
            .into_iter()
            .filter(|(_, (hosts, moving))| hosts.len() > 1 && !moving)
            .map(|(g, (hosts, _))| Duplicate {
                guest: g.to_string(),
                hosts,
            })
            .collect();
        self.duplicates.set(dups.len() as i64);
        let mut reported = self.reported.lock().expect("reported");
        for d in &dups {
            if !reported.contains(d) {
                tracing::error!(coordinator = %self.cfg.name, guest = %d.guest, hosts = ?d.hosts,
                    "guest {} is listed on {}: two copies; keep one with `ferry resolve {} --keep HOST`",
                    d.guest, d.hosts.join(" and "), d.guest);
            }
        }
        *reported = dups.clone();
        dups
    }

    /// Looks at the hosts every few seconds for guests listed twice.
    async fn watch_duplicates(self: Arc<Self>) {
        if self.cfg.hosts.len() < 2 {
            return;
        }
        loop {
            tokio::time::sleep(DUPLICATE_WATCH).await;
            let hosts = self.inventory().await;
            let dups = self.note_duplicates(&hosts);
            for d in &dups {
                self.discard_stale_boot(&hosts, d).await;
            }
        }
    }

    /// A host that lost its journal boots a configured guest afresh though
    /// the guest had migrated away: when every other copy was booted from
    /// configuration and exactly one arrived in the last completed
    /// migration of that guest on record, that one is the guest and the
    /// fresh boots are discarded. Any other duplicate waits for
    /// `ferry resolve`.
    async fn discard_stale_boot(&self, hosts: &[HostStatus], dup: &Duplicate) {
        let copies = copies_of(hosts, &dup.guest);
        let Some(last) = self
            .history
            .all()
            .into_iter()
            .find(|r| r.guest == dup.guest && r.state == MigrationState::Completed)
        else {
            return;
        };
        let (moved, fresh): (Vec<_>, Vec<_>) =
            copies.iter().partition(|(_, g)| g.arrived.is_some());
        let [(owner, g)] = moved.as_slice() else {
            return;
        };
        let running = |g: &control::wire::HostedGuest| g.info.state == RunState::Running;
        if g.arrived != Some(last.id)
            || *owner != last.destination
            || !running(g)
            || !fresh.iter().all(|(_, g)| running(g))
        {
            return;
        }
        for (h, _) in fresh {
            let action = SettleAction::Discard {
                runs_on: owner.to_string(),
                migration: None,
            };
            match self.settle_on(h, &dup.guest, action).await {
                Ok(()) => {
                    tracing::warn!(coordinator = %self.cfg.name, guest = %dup.guest, host = %h,
                    runs_on = %owner, migration = %last.id,
                    "discarded a copy booted from configuration: the guest moved to {owner} in migration {}", last.id)
                }
                Err(e) => {
                    tracing::error!(coordinator = %self.cfg.name, guest = %dup.guest, host = %h,
                    error = %e, "could not discard a copy booted from configuration")
                }
            }
        }
    }

    async fn settle_on(
        &self,
        host: &str,
        guest: &str,
        action: SettleAction,
    ) -> Result<(), Refusal> {
        let e = self.host_entry(host)?;
        let req = Request::SettleGuest {
            guest: guest.to_string(),
            action,
        };
        match self
            .client
            .call(host, e.control, &self.fence(req), CALL_TIMEOUT)
            .await
        {
            Ok(Response::Ok) => Ok(()),
            Ok(other) => Err(Refusal::Answered {
                who: host.to_string(),
                answer: format!("{other:?}"),
            }),
            Err(e @ ControlError::Remote { .. }) => Err(Refusal::Call(e)),
            Err(source) => Err(Refusal::CannotReach {
                host: host.to_string(),
                source,
            }),
        }
    }

    /// `ferry resolve GUEST`: ends the doubt over a guest left paused by a
    /// switch-over whose outcome its source could not learn, or over a
    /// guest two hosts list, from what the hosts say. It resumes a paused
    /// copy only when it can prove the other side never ran the guest (the
    /// destination, asked, discarded it or never had it, and lists no copy)
    /// and drops a copy only when the guest runs elsewhere; otherwise it
    /// refuses and says why (`force` resumes a paused copy anyway).
    async fn resolve(
        &self,
        guest: &str,
        keep: Option<&str>,
        force: bool,
    ) -> Result<String, Refusal> {
        let hosts = self.inventory().await;
        let unreachable: Vec<&str> = hosts
            .iter()
            .filter(|h| !h.reachable)
            .map(|h| h.name.as_str())
            .collect();
        let copies = copies_of(&hosts, guest);
        if let Some((h, _)) = copies.iter().find(|(_, g)| g.migrating) {
            return Err(Refusal::StillMigrating {
                guest: guest.to_string(),
                host: h.to_string(),
            });
        }
        let in_state = |state: RunState| -> Vec<&str> {
            copies
                .iter()
                .filter(|(_, g)| g.info.state == state)
                .map(|(h, _)| *h)
                .collect()
        };
        let (running, paused) = (in_state(RunState::Running), in_state(RunState::Paused));
        let unreachable_note = if unreachable.is_empty() {
            String::new()
        } else {
            format!(" (unreachable: {})", unreachable.join(", "))
        };
        if let Some(keep) = keep {
            return self.resolve_keeping(guest, keep, &copies, &paused).await;
        }
        match (running.as_slice(), paused.as_slice()) {
            ([], []) => Err(Refusal::Unlisted {
                guest: guest.to_string(),
                unreachable: unreachable_note,
            }),
            ([h], []) => Ok(format!("{guest} runs on {h} only: nothing to resolve")),
            ([dst], [src]) => self.resolve_both(guest, dst, src).await,
            ([], [src]) => {
                let ask_first = !unreachable.is_empty() && !force;
                self.resolve_paused(guest, src, force, ask_first, &unreachable_note)
                    .await
            }
            _ => Err(Refusal::ListedTwice {
                guest: guest.to_string(),
                listed: copies
                    .iter()
                    .map(|(h, g)| format!("{h} ({})", g.info.state))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The migration that left a paused copy of `guest` on `src`, newest first.
    fn in_doubt(&self, guest: &str, src: &str) -> Option<MigrationRecord> {
        self.history
            .all()
            .into_iter()
            .find(|r| r.guest == guest && r.source == src)
    }

    /// `ferry resolve --keep`: every other copy discarded, the kept one
    /// resumed if paused.
    async fn resolve_keeping(
        &self,
        guest: &str,
        keep: &str,
        copies: &[(&str, &control::wire::HostedGuest)],
        paused: &[&str],
    ) -> Result<String, Refusal> {
        if copies.len() < 2 {
            return Err(Refusal::KeepOne {
                guest: guest.to_string(),
                on: copies.first().map_or("none", |c| c.0).to_string(),
            });
        }
        if !copies.iter().any(|(h, _)| *h == keep) {
            return Err(Refusal::KeepUnlisted {
                keep: keep.to_string(),
                guest: guest.to_string(),
            });
        }
        let mut dropped = Vec::new();
        for (h, _) in copies.iter().filter(|(h, _)| *h != keep) {
            self.settle_on(
                h,
                guest,
                SettleAction::Discard {
                    runs_on: keep.to_string(),
                    migration: None,
                },
            )
            .await?;
            dropped.push(*h);
        }
        if paused.contains(&keep) {
            self.settle_on(keep, guest, SettleAction::Resume { migration: None })
                .await?;
        }
        Ok(format!(
            "kept {guest} on {keep}; discarded the copy on {}",
            dropped.join(", ")
        ))
    }

    /// Running on `dst`, paused on `src`: the destination resumed it and
    /// the source never heard. The destination's word decides.
    async fn resolve_both(&self, guest: &str, dst: &str, src: &str) -> Result<String, Refusal> {
        let rec = self.in_doubt(guest, src).filter(|r| r.destination == dst);
        let Some(rec) = rec else {
            return Err(Refusal::BothUnrecorded {
                guest: guest.to_string(),
                dst: dst.to_string(),
                src: src.to_string(),
            });
        };
        match self.abort_destination(&rec.id, dst, None).await {
            Some(IncomingOutcome::Resumed) => {
                self.settle_on(
                    src,
                    guest,
                    SettleAction::Discard {
                        runs_on: dst.to_string(),
                        migration: Some(rec.id),
                    },
                )
                .await?;
                let msg = format!(
                    "{dst} resumed {guest} in migration {}: it runs there; discarded the paused copy on {src}",
                    rec.id
                );
                self.close_record(&rec.id, true, &msg);
                Ok(msg)
            }
            other => Err(Refusal::BothAnswered {
                guest: guest.to_string(),
                dst: dst.to_string(),
                src: src.to_string(),
                answer: format!("{other:?}"),
                id: rec.id,
            }),
        }
    }

    /// Paused on `src` alone: resumed there when the destination on record
    /// never ran it (or `force`). `ask_first`: a host that might run it is
    /// unreachable, so a guest with no record is not resumed blindly.
    async fn resolve_paused(
        &self,
        guest: &str,
        src: &str,
        force: bool,
        ask_first: bool,
        unreachable_note: &str,
    ) -> Result<String, Refusal> {
        let resume = |why: String, id: Option<MigrationId>| async move {
            self.settle_on(src, guest, SettleAction::Resume { migration: id })
                .await?;
            let msg = format!("{why}: resumed {guest} on {src}");
            if let Some(id) = id {
                self.close_record(&id, false, &msg);
            }
            Ok::<String, Refusal>(msg)
        };
        let Some(rec) = self.in_doubt(guest, src) else {
            if !ask_first {
                return resume(
                    format!("no other host lists {guest}{}", unreachable_note),
                    None,
                )
                .await;
            }
            return Err(Refusal::PausedUnrecorded {
                guest: guest.to_string(),
                src: src.to_string(),
                unreachable: unreachable_note.to_string(),
            });
        };
        let dst = rec.destination.as_str();
        let peer = dst.contains('@');
        let outcome = if peer {
            None
        } else {
            self.abort_destination(&rec.id, dst, None).await
        };
        match outcome {
            Some(IncomingOutcome::Discarded { reason }) => {
                resume(format!("{dst} discarded its copy ({reason})"), Some(rec.id)).await
            }
            Some(IncomingOutcome::Unknown) => {
                resume(
                    format!(
                        "{dst} never had {guest} ready (it has no record of migration {})",
                        rec.id
                    ),
                    Some(rec.id),
                )
                .await
            }
            Some(IncomingOutcome::Pending) => Err(Refusal::Deciding {
                dst: dst.to_string(),
                id: rec.id,
            }),
            Some(IncomingOutcome::Resumed) if force => {
                resume(
                    format!("forced: {dst} had resumed {guest} but no longer runs it"),
                    Some(rec.id),
                )
                .await
            }
            Some(IncomingOutcome::Resumed) => Err(Refusal::ResumedGone {
                dst: dst.to_string(),
                guest: guest.to_string(),
                id: rec.id,
                src: src.to_string(),
            }),
            None if force => {
                resume(format!("forced: {dst} could not be asked"), Some(rec.id)).await
            }
            None => Err(Refusal::CannotAsk {
                dst: dst.to_string(),
                guest: guest.to_string(),
                id: rec.id,
            }),
        }
    }

    /// Records how `resolve` ended a migration in doubt.
    fn close_record(&self, id: &MigrationId, completed: bool, how: &str) {
        self.history.update(id, |r| {
            r.state = if completed {
                MigrationState::Completed
            } else {
                MigrationState::Failed
            };
            let was = r.error.take();
            r.error = (!completed).then(|| match was {
                Some(w) => format!("{w}; resolved: {how}"),
                None => format!("resolved: {how}"),
            });
            if let Some(s) = r.stats.as_mut() {
                s.note = Some(format!("resolved: {how}"));
                if completed {
                    s.result = MigrationResult::Completed;
                    s.error = None;
                }
            }
        });
    }

    /// `ferry drain HOST`: cordons the host, then moves each of its guests
    /// to a host that can take it, every move through the scheduler (so
    /// within its limits), and answers with each outcome and what the host
    /// still runs. The host stays cordoned until `ferry uncordon`.
    async fn drain(
        self: &Arc<Self>,
        host: String,
        opts: MigrateOptions,
        resp: &mut Responder,
    ) -> Response {
        if let Err(e) = self.host_entry(&host) {
            return Response::error(report(&e));
        }
        if let Err(e) = self.cordons.set(&host, true) {
            return Response::error(report(&e));
        }
        tracing::warn!(coordinator = %self.cfg.name, host = %host, "host cordoned: draining it");
        let (moves, unplaced) = match self.drain_plan(&host).await {
            Ok(plan) => plan,
            Err(e) => return Response::error(report(&e)),
        };
        tracing::info!(coordinator = %self.cfg.name, host = %host, moves = moves.len(), unplaced = unplaced.len(), "drain planned");
        let _ = resp
            .send(&Response::DrainPlan {
                host: host.clone(),
                moves: moves.clone(),
                unplaced: unplaced.clone(),
            })
            .await;
        let mut running = tokio::task::JoinSet::new();
        for m in &moves {
            let (me, m, opts, from) = (self.clone(), m.clone(), opts.clone(), host.clone());
            running.spawn(async move { me.drain_move(m, from, opts).await });
        }
        let mut outcomes = Vec::new();
        loop {
            match tokio::time::timeout(control::HEARTBEAT, running.join_next()).await {
                Err(_) => {
                    let _ = resp.send(&Response::Heartbeat).await;
                }
                Ok(None) => break,
                Ok(Some(Ok(o))) => {
                    let _ = resp.send(&Response::DrainMoved(o.clone())).await;
                    outcomes.push(o);
                }
                Ok(Some(Err(e))) => {
                    tracing::error!(coordinator = %self.cfg.name, host = %host, "a drain's migration task failed: {e}");
                }
            }
        }
        let remaining = match self.host_caps(&host).await {
            Ok(c) => c.guests.into_iter().map(|g| g.info.name).collect(),
            Err(e) => vec![format!("(cannot tell: {e})", e = report(&e))],
        };
        tracing::info!(coordinator = %self.cfg.name, host = %host, moved = outcomes.iter().filter(|o| o.completed).count(),
            remaining = remaining.len(), "drain ended");
        Response::Drained {
            host,
            outcomes,
            unplaced,
            remaining,
        }
    }

    /// Where each guest of `host` goes (the other reachable, uncordoned
    /// hosts, biggest guests first), and the guests that cannot go, with why.
    async fn drain_plan(
        &self,
        host: &str,
    ) -> Result<(Vec<DrainMove>, Vec<DrainUnplaced>), Refusal> {
        let hosts = self.inventory().await;
        let Some(src) = hosts
            .iter()
            .find(|h| h.name == host)
            .and_then(|h| h.capabilities.clone())
        else {
            return Err(Refusal::DrainUnreachable(host.to_string()));
        };
        let candidates: Vec<drain::Candidate> = hosts
            .iter()
            .filter(|h| h.name != host && !h.cordoned)
            .filter_map(|h| {
                h.capabilities.as_ref().map(|c| drain::Candidate {
                    name: h.name.clone(),
                    memory_free: c.memory_free,
                    encryption: c.encryption,
                })
            })
            .collect();
        let (busy, leaving): (Vec<_>, Vec<_>) = src.guests.iter().partition(|g| g.migrating);
        let leaving: Vec<drain::Leaving> = leaving
            .iter()
            .map(|g| drain::Leaving {
                name: g.info.name.clone(),
                memory: g.info.memory,
                encryption: g.encryption,
            })
            .collect();
        let mut moves = Vec::new();
        let mut unplaced: Vec<DrainUnplaced> = busy
            .iter()
            .map(|g| DrainUnplaced {
                guest: g.info.name.clone(),
                reason: "a migration of it is under way".into(),
            })
            .collect();
        for (guest, to) in drain::place(&leaving, src.encryption, &candidates) {
            match to {
                Ok(destination) => moves.push(DrainMove { guest, destination }),
                Err(why) => unplaced.push(DrainUnplaced {
                    guest,
                    reason: why.to_string(),
                }),
            }
        }
        Ok((moves, unplaced))
    }

    /// One move of a drain, run as any migration is.
    async fn drain_move(
        self: Arc<Self>,
        m: DrainMove,
        from: String,
        opts: MigrateOptions,
    ) -> DrainOutcome {
        let r = self
            .migrate(
                m.guest.clone(),
                Some(from),
                m.destination.clone(),
                opts,
                &mut Events(None),
            )
            .await;
        let (migration, completed, error) = match r {
            Response::Finished(s) => (
                Some(s.id),
                s.result == MigrationResult::Completed,
                s.error.clone(),
            ),
            Response::Error { message } => (None, false, Some(message)),
            other => (None, false, Some(format!("unexpected: {other:?}"))),
        };
        DrainOutcome {
            guest: m.guest,
            destination: m.destination,
            migration,
            completed,
            error,
        }
    }

    /// `ferry uncordon HOST`: migrations may go to it again.
    fn uncordon(&self, host: &str) -> Result<String, Refusal> {
        self.host_entry(host)?;
        Ok(if self.cordons.set(host, false)? {
            tracing::info!(coordinator = %self.cfg.name, host = %host, "host uncordoned");
            format!("{host} takes guests again")
        } else {
            format!("{host} was not cordoned")
        })
    }

    fn allowed(&self, who: &Identity, req: &Request) -> Result<(), Refusal> {
        let peer_op = matches!(
            req,
            Request::PeerCapabilities { .. }
                | Request::PeerPrepare { .. }
                | Request::PeerFinished { .. }
        );
        if peer_op {
            if who.role != Role::Coordinator || self.peer_entry(&who.name).is_err() {
                return Err(Refusal::NotPeer {
                    who: who.to_string(),
                    coordinator: self.cfg.name.clone(),
                });
            }
            return Ok(());
        }
        if !matches!(
            req,
            Request::Migrate { .. }
                | Request::Status { .. }
                | Request::Hosts
                | Request::Resolve { .. }
                | Request::Cancel { .. }
                | Request::SetLimits { .. }
                | Request::Drain { .. }
                | Request::Uncordon { .. }
                | Request::Leader
        ) {
            return Err(Refusal::NotAnswered(req.op()));
        }
        if who.role != Role::Client {
            return Err(Refusal::NotClient(who.to_string()));
        }
        if !self.cfg.clients.is_empty() && !self.cfg.clients.contains(&who.name) {
            return Err(Refusal::NotListed {
                client: who.name.clone(),
                coordinator: self.cfg.name.clone(),
            });
        }
        Ok(())
    }

    /// `ferry status`: every migration on record (or the one asked for),
    /// each queued one with its place in line and why it waits.
    fn status(&self, id: Option<MigrationId>) -> Response {
        let mut migrations = self.records();
        let waiting = self.scheduler.waiting();
        for r in migrations
            .iter_mut()
            .filter(|r| r.state == MigrationState::Queued)
        {
            r.waiting = waiting
                .iter()
                .find(|(w, ..)| *w == r.id)
                .map(|(_, position, why)| format!("{} in line: {why}", ordinal(*position)));
        }
        if let Some(id) = id {
            migrations.retain(|r| r.id == id);
            if migrations.is_empty() {
                return Response::error(format!("no migration {id}"));
            }
        }
        Response::Status { migrations }
    }

    /// A peer coordinator's migration into one of our hosts: the spec is
    /// forwarded to the host and not kept here.
    async fn peer_prepare(&self, host: String, spec: MigrationSpec) -> Response {
        let e = match self.host_entry(&host) {
            Ok(e) => e,
            Err(e) => return Response::error(report(&e)),
        };
        let r = self
            .client
            .call(
                &host,
                e.control,
                &self.fence(Request::PrepareIncoming { spec }),
                CALL_TIMEOUT,
            )
            .await;
        match r {
            Ok(r @ Response::Prepared { .. }) => r,
            Ok(other) => Response::error(format!("host {host} answered {other:?}")),
            Err(e) => Response::error(e),
        }
    }

    /// A peer coordinator's migration out of its host into one of ours
    /// ended: it goes on record here too.
    fn peer_finished(
        &self,
        who: &Identity,
        id: MigrationId,
        result: Box<MigrationStats>,
    ) -> Response {
        self.record(MigrationRecord {
            id,
            guest: result.guest.clone(),
            source: format!("{}@{}", result.source, who.name),
            destination: result.destination.clone(),
            mode: result.mode,
            transport: result.transport,
            state: if result.result == MigrationResult::Completed {
                MigrationState::Completed
            } else {
                MigrationState::Failed
            },
            started_unix_ms: unix_ms(),
            progress: None,
            error: result.error.clone(),
            stats: Some(result),
            waiting: None,
        });
        Response::Ok
    }

    async fn handle(self: Arc<Self>, who: Identity, req: Request, mut resp: Responder) {
        if let Err(e) = self.allowed(&who, &req) {
            tracing::warn!(coordinator = %self.cfg.name, peer = %who, "refused: {}", report(&e));
            let _ = resp.send(&Response::error(report(&e))).await;
            return;
        }
        if let Request::Leader = req {
            let leader = self.leader().await;
            let _ = resp.send(&Response::Leader { leader }).await;
            return;
        }
        if !self.leads() {
            let e = self.not_leading().await;
            let _ = resp.send(&Response::error(e)).await;
            return;
        }
        let answer = match req {
            Request::Migrate {
                guest,
                source,
                destination,
                options,
            } => {
                self.migrate(
                    guest,
                    source,
                    destination,
                    options,
                    &mut Events(Some(&mut resp)),
                )
                .await
            }
            Request::Drain { host, options } => self.drain(host, options, &mut resp).await,
            Request::Uncordon { host } => match self.uncordon(&host) {
                Ok(message) => Response::Resolved { message },
                Err(e) => Response::error(report(&e)),
            },
            Request::Status { id } => self.status(id),
            Request::Hosts => {
                let hosts = self.inventory().await;
                let duplicates = self.note_duplicates(&hosts);
                Response::Hosts { hosts, duplicates }
            }
            Request::SetLimits { id, change } => match self.set_limits(id, change).await {
                Ok(message) => Response::Resolved { message },
                Err(e) => {
                    tracing::warn!(coordinator = %self.cfg.name, migration = %id, "cannot change limits: {e}", e = report(&e));
                    Response::error(report(&e))
                }
            },
            Request::Cancel { id } => match self.cancel(id).await {
                Ok(message) => Response::Resolved { message },
                Err(e) => {
                    tracing::warn!(coordinator = %self.cfg.name, migration = %id, "cannot cancel: {e}", e = report(&e));
                    Response::error(report(&e))
                }
            },
            Request::Resolve { guest, keep, force } => {
                match self.resolve(&guest, keep.as_deref(), force).await {
                    Ok(message) => {
                        tracing::warn!(coordinator = %self.cfg.name, guest = %guest, "resolved: {message}");
                        Response::Resolved { message }
                    }
                    Err(e) => {
                        tracing::warn!(coordinator = %self.cfg.name, guest = %guest, "cannot resolve: {e}", e = report(&e));
                        Response::error(report(&e))
                    }
                }
            }
            Request::PeerCapabilities { host } => match self.host_caps(&host).await {
                Ok(c) => Response::Capabilities(Box::new(c)),
                Err(e) => Response::error(report(&e)),
            },
            Request::PeerPrepare { host, spec } => self.peer_prepare(host, spec).await,
            Request::PeerFinished { id, result } => self.peer_finished(&who, id, result),
            other => Response::error(format!("a coordinator does not answer {}", other.op())),
        };
        let _ = resp.send(&answer).await;
    }

    /// Serves the client and peer API, and /metrics, until the task is
    /// dropped.
    /// `tls` comes from [`control::tls::server_config`], loaded by the caller
    /// before anything starts, so that a missing certificate is found first.
    pub async fn serve(
        self: Arc<Self>,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<(), crate::ServeError> {
        let _metrics = crate::metrics::http::serve_daemon(
            &self.cfg.name,
            crate::metrics::http::Build {
                role: "coordinator",
                version: crate::VERSION,
            },
            self.cfg.metrics.as_ref(),
            DEFAULT_METRICS,
            self.metrics.clone(),
        )
        .await?;
        let listener = tokio::net::TcpListener::bind(self.cfg.listen)
            .await
            .map_err(|source| crate::ServeError::Listen {
                what: "coordinator API",
                addr: self.cfg.listen,
                source,
            })?;
        self.serve_on(listener, tls).await;
        Ok(())
    }

    /// Serves on an already bound listener.
    pub async fn serve_on(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) {
        tracing::info!(coordinator = %self.cfg.name, listen = ?listener.local_addr().ok(), hosts = self.cfg.hosts.len(),
            history = self.history.all().len(), "coordinator ready");
        let _ = self.me.set(Arc::downgrade(&self));
        // The embedded store leads at once: before the API opens, so that
        // no client of a lone coordinator is ever told to wait.
        if let Some(store) = self.store.get()
            && store.kind() == "embedded"
        {
            match store.lead().await {
                Ok(lead) => self.clone().took_lead(lead).await,
                Err(e) => store::warn(&self.cfg.name, "cannot raise the epoch", &e),
            }
        }
        tokio::spawn(self.clone().watch_duplicates());
        let me = self.clone();
        // Followers serve too: they point clients at the leader.
        let api = control::serve(
            listener,
            tls,
            Arc::new(move |who, req, resp| Box::pin(me.clone().handle(who, req, resp))),
        );
        tokio::join!(api, self.lead_forever());
    }

    /// A follower's answer: who leads, and how to reach it.
    /// The site's leader as NAME@ADDRESS: this coordinator when it leads,
    /// else whom the store names (none while it cannot say).
    async fn leader(&self) -> Option<String> {
        if self.leads() {
            return Some(format!("{}@{}", self.cfg.name, self.cfg.listen));
        }
        match self.store.get() {
            Some(s) => s.leader().await.ok().flatten(),
            None => None,
        }
    }

    async fn not_leading(&self) -> String {
        let site = self
            .store
            .get()
            .map(|s| s.site().to_string())
            .unwrap_or_default();
        match self.store.get().map(|s| s.leader()) {
            Some(f) => match f.await {
                Ok(Some(leader)) => format!(
                    "{} does not lead site {site}: {leader} does (use --coordinator {leader})",
                    self.cfg.name
                ),
                Ok(None) => {
                    format!("no coordinator leads site {site} now: try again in a few seconds")
                }
                Err(e) => format!(
                    "{} does not lead site {site}, and the store cannot say who does: {e}",
                    self.cfg.name,
                    e = report(&e)
                ),
            },
            None => format!(
                "{} has not reached its store yet: try again in a few seconds",
                self.cfg.name
            ),
        }
    }
}

/// A crash on purpose at `name`, when FERRY_FAILPOINT names it: the tests
/// kill a coordinator at an exact step of a migration this way (as etcd's
/// gofail does). The variable is read once.
fn failpoint(name: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = POINT.get_or_init(|| std::env::var("FERRY_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        tracing::error!("failpoint {name}: aborting the process, as FERRY_FAILPOINT asked");
        std::process::abort();
    }
}

/// "1st", "2nd", "3rd", "4th", ... "11th", "21st".
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// What a client needs to talk to a coordinator.
#[derive(Clone)]
pub struct CoordinatorRef {
    pub name: String,
    pub addr: SocketAddr,
}

/// `ferry migrate`: asks the coordinator to move `guest`, calling `progress`
/// for every update, and returns the final statistics.
pub async fn request_migration(
    client: &Client,
    coord: &CoordinatorRef,
    guest: &str,
    source: Option<String>,
    destination: &str,
    options: MigrateOptions,
    mut on: impl FnMut(&Response),
) -> Result<Box<MigrationStats>, ControlError> {
    let req = Request::Migrate {
        guest: guest.to_string(),
        source,
        destination: destination.to_string(),
        options,
    };
    let mut x = client.open(&coord.name, coord.addr, &req).await?;
    loop {
        // Progress or a heartbeat comes at least every few seconds; a
        // coordinator silent for longer than it can legitimately be is gone.
        let r = x.next_within(CLIENT_SILENCE).await?;
        match r {
            Response::Finished(s) => return Ok(s),
            other => on(&other),
        }
    }
}
