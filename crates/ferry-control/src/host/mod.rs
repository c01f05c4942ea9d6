//! `ferry host`: runs guests, accepts specs from coordinators, and is the
//! source or destination of migrations.

pub mod config;
pub mod journal;
pub mod network;

use ferry_core::error::report;
use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

pub use config::{GuestConfig, HostConfig};
use journal::{Decision, FileJournal, GuestFact};

use crate::{
    control::{
        self, Identity, Request, Responder, Response, Role,
        wire::{Capabilities, HostedGuest, IncomingOutcome},
    },
    engine::Hosted,
    engine::{self, DestinationEvent, IncomingRegistry, MigrationListener, SourceOptions},
    guest::{Guest, RunState, SyntheticConfig, SyntheticGuest},
    metrics::{
        ProtocolMetrics,
        migration::{MigrationMetrics, Role as MetricsRole},
    },
    protocol::{EncryptionMode, MigrationId, MigrationSpec},
};

/// How long an abort waits for the destination's decision to settle.
const ABORT_SETTLE: Duration = Duration::from_secs(3);

/// The tap interface of `guest`'s NIC on `host`: unique per host (two hosts
/// may share a namespace in a lab) and within IFNAMSIZ.
fn tap_name(host: &str, guest: &str) -> String {
    let h = format!("{host}/{guest}")
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
    format!("fq{:08x}", h as u32)
}

/// Why this host refused a request, or failed it; the coordinator hears the
/// message with its causes.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0} may not use a host's control API: coordinators only")]
    NotCoordinator(String),
    #[error("coordinator {coordinator} is not in {host}'s coordinators list")]
    NotListed { coordinator: String, host: String },
    #[error(
        "{host} refuses a request of site {site} at epoch {epoch}: it has seen epoch {highest}, so the sender was deposed as leader"
    )]
    Deposed {
        host: String,
        site: String,
        epoch: u64,
        highest: u64,
    },
    #[error("{host} cannot keep epoch {epoch} of site {site} in {}", path.display())]
    KeepEpoch {
        host: String,
        site: String,
        epoch: u64,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the spec's destination is {spec}, this is {host}")]
    NotDestination { spec: String, host: String },
    #[error("{0} cannot encrypt migrations")]
    CannotEncrypt(String),
    #[error("the spec's source is {spec}, this is {host}")]
    NotSource { spec: String, host: String },
    #[error("guest {0} is already migrating")]
    AlreadyMigrating(String),
    #[error("guest {guest} is {state}")]
    NotRunning { guest: String, state: RunState },
    #[error("guest {guest} already exists on {host}")]
    GuestExists { guest: String, host: String },
    #[error("not enough memory on {host} for guest {guest}: it needs {needs}, {free} is free")]
    Memory {
        host: String,
        guest: String,
        needs: crate::config::ByteSize,
        free: crate::config::ByteSize,
    },
    #[error("the incoming guest")]
    Guest(#[source] engine::guest::GuestError),
    #[error(transparent)]
    Prepare(#[from] engine::PrepareError),
    #[error("{host} cannot start guest {guest}: {field}: {message}")]
    Machine {
        host: String,
        guest: String,
        field: String,
        message: String,
    },
    #[error("starting the QEMU twin of {guest}")]
    Twin {
        guest: String,
        #[source]
        source: crate::qemu::QemuError,
    },
    #[error("the twin of {guest}'s NIC")]
    TwinNic {
        guest: String,
        #[source]
        source: crate::netlink::NetlinkError,
    },
    #[error("no outgoing migration {id} runs on {host}: it ended, or never started here")]
    NoOutgoing { id: MigrationId, host: String },
    #[error("migration {id} was already decided: {decision}")]
    Decided { id: MigrationId, decision: String },
    #[error("no guest {guest} on {host}")]
    NoGuest { guest: String, host: String },
    #[error("guest {guest} is migrating from {host}")]
    Migrating { guest: String, host: String },
    #[error("guest {guest} is {state} on {host}, not paused")]
    NotPaused {
        guest: String,
        state: RunState,
        host: String,
    },
    #[error("cannot record it in the journal")]
    Journal(#[source] std::io::Error),
    #[error("resuming {guest}")]
    Resume {
        guest: String,
        #[source]
        source: engine::guest::GuestError,
    },
}

/// Why a host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the migration listener on {addr}")]
    Listener {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the host's networks")]
    Network(#[from] network::NetworkError),
    #[error("cannot open the host's journal")]
    Journal(#[from] journal::JournalError),
    #[error("cannot read the host's state")]
    State(#[from] crate::state::StateError),
    #[error("{}: {}", .0.field, .0.message)]
    Machine(crate::config::Invalid),
    #[error("cannot adopt QEMU guest {guest} (guests[{index}].qemu.adopt.qmp)")]
    Adopt {
        guest: String,
        index: usize,
        #[source]
        source: crate::qemu::QemuError,
    },
    #[error("cannot start QEMU guest {guest}")]
    Qemu {
        guest: String,
        #[source]
        source: crate::qemu::QemuError,
    },
    #[error("cannot put guest {guest}'s NIC {tap} on the network")]
    Nic {
        guest: String,
        tap: String,
        #[source]
        source: crate::netlink::NetlinkError,
    },
    #[error("cannot boot guest {guest}")]
    Boot {
        guest: String,
        #[source]
        source: crate::guest::GuestError,
    },
    #[error("cannot register the host's metrics")]
    Metrics(#[from] prometheus::Error),
}

/// Puts a QEMU guest's tap on the host's guest bridge, up.
fn attach_tap(cfg: &HostConfig, tap: &str) -> Result<(), crate::netlink::NetlinkError> {
    let mut nl = crate::netlink::Netlink::open()?;
    if let Some(br) = cfg.network.as_ref().and_then(|n| n.guest_bridge.as_deref()) {
        nl.set_master(tap, br)?;
    }
    nl.set_up(tap)
}

/// QEMU guests in the state directory that the configuration does not name:
/// guests that arrived before a restart (adopted, running), and twins of an
/// incoming migration the restart interrupted (ended if still loading; kept
/// paused, for an operator, if they had loaded everything).
fn adopt_arrivals(
    cfg: &HostConfig,
    journal: Option<&FileJournal>,
    guests: &mut BTreeMap<String, Entry>,
) {
    let Ok(entries) = std::fs::read_dir(cfg.state_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        if guests.contains_key(&name) || cfg.guests.iter().any(|g| g.name == name) {
            continue;
        }
        let Some(g) = crate::qemu::QemuGuest::adopt(&dir) else {
            continue;
        };
        let encryption = std::fs::read_to_string(dir.join("encryption"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(EncryptionMode::Required);
        let g: Arc<dyn crate::engine::channels::ChannelGuest> = Arc::new(g);
        // The journal knows what was decided before the restart: a twin
        // that had loaded everything and was told GO runs; one that never
        // heard GO is discarded (the source resumes its copy).
        let decided = journal.and_then(|j| j.last_incoming(&name));
        match (&decided, g.run_state()) {
            (Some((id, Decision::Ready)), RunState::Paused | RunState::Incoming) => {
                tracing::warn!(host = %cfg.name, guest = %name, migration = %id,
                    "ending the twin of an incoming migration whose GO never took effect before the restart");
                g.release();
                if let Some(j) = journal {
                    let _ = crate::engine::Journal::write(
                        j,
                        crate::engine::journal::Entry::Discarded {
                            id: *id,
                            guest: &name,
                            reason: journal::STOPPED_AFTER_READY,
                        },
                    );
                }
                continue;
            }
            (Some((id, Decision::Resumed)), RunState::Paused) => {
                tracing::warn!(host = %cfg.name, guest = %name, migration = %id,
                    "resuming a QEMU guest whose GO was recorded before the restart");
                if let Err(e) = g.resume() {
                    tracing::error!(host = %cfg.name, guest = %name, error = %report(&e), "resuming it failed");
                }
            }
            _ => {}
        }
        match g.run_state() {
            RunState::Incoming => {
                tracing::warn!(host = %cfg.name, guest = %name, "ending the twin of an incoming migration interrupted by a restart");
                g.release();
                continue;
            }
            RunState::Running => {
                tracing::info!(host = %cfg.name, guest = %name, "adopted a QEMU guest that arrived before the restart");
            }
            state => {
                tracing::warn!(host = %cfg.name, guest = %name, %state,
                    "a QEMU guest left {state} by a switch-over the restart interrupted: it stays so until an operator decides");
            }
        }
        guests.insert(
            name,
            Entry {
                guest: Hosted::Channels(g),
                encryption,
                busy: false,
                arrived: decided.as_ref().map(|(id, _)| *id),
            },
        );
    }
}

/// Where /metrics listens when the configuration does not say.
pub const DEFAULT_METRICS: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9472);

struct Entry {
    guest: Hosted,
    encryption: EncryptionMode,
    /// An outgoing migration is running.
    busy: bool,
    /// The migration that brought the guest here; none for one booted from
    /// this host's configuration.
    arrived: Option<MigrationId>,
}

impl Entry {
    /// A guest released to its destination is no longer this host's, from
    /// the moment of release (its entry goes once the migration has wound
    /// down): no reader sees it here after it resumed there.
    fn owned(&self) -> bool {
        self.guest.run_state() != RunState::Released
    }
}

/// An incoming migration's claim on this host.
struct Reservation {
    memory: u64,
    /// The migration's mode (its metrics label).
    mode: EncryptionMode,
    /// The guest's own setting, which it keeps here.
    setting: EncryptionMode,
}

struct Inventory {
    guests: BTreeMap<String, Entry>,
    /// Memory promised to incoming migrations, by guest name.
    reserved: BTreeMap<String, Reservation>,
}

/// What the coordinator may change about one outgoing migration while it
/// runs: its cancel flag and its limits, and whether it runs here yet (a
/// cancel or a change may arrive just before its start, and is kept for it).
#[derive(Default)]
struct Controls {
    cancel: Arc<std::sync::atomic::AtomicBool>,
    limits: Arc<engine::LiveLimits>,
    /// The coordinator's GO or abort, waited for at READY.
    decision: Arc<engine::DecisionSlot>,
    running: bool,
}

/// What an outgoing migration tells its StartOutgoing connection.
enum Outgoing {
    Progress(engine::Progress),
    AwaitingGo,
}

impl Outgoing {
    fn into_response(self) -> Response {
        match self {
            Outgoing::Progress(p) => Response::Progress(p),
            Outgoing::AwaitingGo => Response::AwaitingGo,
        }
    }
}

/// The coordinator decides GO: READY is announced on the StartOutgoing
/// connection, and the decision comes as a [`Request::Decide`].
struct CoordinatorCommit {
    decision: Arc<engine::DecisionSlot>,
    tx: tokio::sync::mpsc::UnboundedSender<Outgoing>,
}

impl engine::Commit for CoordinatorCommit {
    fn ready(&self) {
        let _ = self.tx.send(Outgoing::AwaitingGo);
    }

    fn decision(&self, wait: Duration) -> Option<engine::Decision> {
        self.decision.wait(wait)
    }
}

/// Words for migrations that never started here are forgotten past this
/// many (a coordinator that asks for nothing real cannot grow the map).
const EARLY_CONTROLS: usize = 64;

/// A running host.
pub struct Host {
    cfg: HostConfig,
    inventory: Mutex<Inventory>,
    registry: Arc<IncomingRegistry>,
    listener: MigrationListener,
    journal: Option<Arc<FileJournal>>,
    /// Outgoing migrations' controls, by id: set by the coordinator's
    /// `CancelOutgoing` and `SetOutgoingLimits`, read by the engine as it
    /// goes.
    controls: Mutex<BTreeMap<MigrationId, Controls>>,
    pub protocol_metrics: ProtocolMetrics,
    pub migration_metrics: MigrationMetrics,
    /// Everything this host's /metrics serves.
    pub metrics: prometheus::Registry,
    pub network: Option<network::HostNet>,
    /// The highest epoch seen of each coordinator site's leader.
    epochs: Epochs,
}

/// The highest leader epoch seen per site, in `epochs.json` in the state
/// directory (written before the request that raised it is served), so a
/// restarted host still refuses a deposed leader.
struct Epochs {
    file: Option<std::path::PathBuf>,
    seen: Mutex<BTreeMap<String, u64>>,
}

impl Epochs {
    fn open(dir: Option<&Path>) -> Result<Epochs, crate::state::StateError> {
        let file = dir.map(|d| d.join("epochs.json"));
        let seen = crate::state::read_json_or_default(
            file.as_deref(),
            "move it away: the next leader's requests set it again",
        )?;
        Ok(Epochs {
            file,
            seen: Mutex::new(seen),
        })
    }

    /// Lets a request of `site`'s leader at `epoch` through, or says why not.
    fn admit(&self, site: &str, epoch: u64, host: &str) -> Result<(), Refusal> {
        let mut seen = self.seen.lock().expect("epochs");
        let highest = seen.get(site).copied().unwrap_or(0);
        if epoch < highest {
            return Err(Refusal::Deposed {
                host: host.to_string(),
                site: site.to_string(),
                epoch,
                highest,
            });
        }
        if epoch > highest {
            seen.insert(site.to_string(), epoch);
            if let Some(f) = &self.file {
                let json = serde_json::to_vec_pretty(&*seen).expect("epochs serialise");
                ferry_core::fs::write_atomically(f, &json).map_err(|source| {
                    Refusal::KeepEpoch {
                        host: host.to_string(),
                        site: site.to_string(),
                        epoch,
                        path: f.clone(),
                        source,
                    }
                })?;
            }
            tracing::info!(host = %host, site = %site, epoch, "a new coordinator leader epoch");
        }
        Ok(())
    }
}

/// Boots or adopts configured guest `g` (the `i`-th): None when this host
/// must not run it (it migrated away, or a QEMU paused in doubt is kept).
fn start_guest(
    cfg: &HostConfig,
    i: usize,
    g: &config::GuestConfig,
    journal: Option<&Arc<FileJournal>>,
) -> Result<Option<Entry>, StartError> {
    let machine = g.machine();
    if let Some(machine) = &machine {
        let field = format!("guests[{i}].qemu");
        machine.check_files(&field).map_err(StartError::Machine)?;
    }
    if let Some(j) = journal
        && let Some(GuestFact::Released { migration, to }) = j.released(&g.name)
    {
        // Released at GO: a QEMU still here, paused, is the copy of
        // a switch-over in doubt (for `ferry resolve`).
        use crate::engine::channels::ChannelGuest;
        let in_doubt = machine
            .as_ref()
            .and_then(|_| crate::qemu::QemuGuest::adopt(&cfg.state_dir().join(&g.name)))
            .filter(|q| q.run_state() == RunState::Paused);
        match in_doubt {
            Some(q) => {
                tracing::warn!(host = %cfg.name, guest = %g.name, %migration, destination = %to,
                        "adopted the paused QEMU of a switch-over in doubt: it stays paused until `ferry resolve {}`", g.name);
                return Ok(Some(Entry {
                    guest: Hosted::Channels(Arc::new(q)),
                    encryption: g.encryption,
                    busy: false,
                    arrived: None,
                }));
            }
            None => {
                tracing::warn!(host = %cfg.name, guest = %g.name, %migration, destination = %to,
                        journal = %j.path().display(), "guest migrated away from this host: not starting it")
            }
        }
        return Ok(None);
    }
    if let Some(machine) = machine {
        let dir = cfg.state_dir().join(&g.name);
        if crate::qemu::QemuGuest::released_here(&dir) {
            tracing::warn!(host = %cfg.name, guest = %g.name, dir = %dir.display(),
                    "guest migrated away from this host: not starting it (remove {}/released to boot it here again)",
                    dir.display());
            return Ok(None);
        }
        let tap = tap_name(&cfg.name, &g.name);
        let guest =
            crate::qemu::QemuGuest::launch_or_adopt(&g.name, &machine, &dir, Some(&tap), g.adopt())
                .map_err(|source| match g.adopt() {
                    Some(_) => StartError::Adopt {
                        guest: g.name.clone(),
                        index: i,
                        source,
                    },
                    None => StartError::Qemu {
                        guest: g.name.clone(),
                        source,
                    },
                })?;
        // An adopted QEMU's NIC is on the network its owner gave it;
        // a tap of ferry's (a guest that came back) joins the bridge.
        if machine.nic.is_some() && guest.owns_tap() {
            attach_tap(cfg, &tap).map_err(|source| StartError::Nic {
                guest: g.name.clone(),
                tap: tap.clone(),
                source,
            })?;
        }
        tracing::info!(host = %cfg.name, guest = %g.name, memory = g.memory.0, vcpus = g.vcpus,
                pid = ?guest.pid(), "QEMU guest running");
        return Ok(Some(Entry {
            guest: Hosted::Channels(Arc::new(guest)),
            encryption: g.encryption,
            busy: false,
            arrived: None,
        }));
    }
    let sc = SyntheticConfig {
        memory: g.memory.0,
        vcpus: g.vcpus,
        workload: g.workload.clone(),
        prefill: g.prefill,
        seed: 0x5eed + i as u64,
    };
    let guest = SyntheticGuest::boot(&g.name, &sc).map_err(|source| StartError::Boot {
        guest: g.name.clone(),
        source,
    })?;
    guest.set_nic(g.nic);
    tracing::info!(host = %cfg.name, guest = %g.name, memory = g.memory.0, vcpus = g.vcpus, "guest booted");
    Ok(Some(Entry {
        guest: Hosted::Pages(guest),
        encryption: g.encryption,
        busy: false,
        arrived: None,
    }))
}

impl Host {
    /// Boots the configured guests and opens the migration listener.
    pub fn start(cfg: HostConfig) -> Result<Arc<Host>, StartError> {
        Self::build(cfg, ProtocolMetrics::new())
    }

    fn build(cfg: HostConfig, metrics: ProtocolMetrics) -> Result<Arc<Host>, StartError> {
        // The registry reports back to the host, which owns the registry:
        // a weak reference, filled in once the host exists.
        let weak_slot: Arc<Mutex<std::sync::Weak<Host>>> =
            Arc::new(Mutex::new(std::sync::Weak::new()));
        let slot = weak_slot.clone();
        let registry = IncomingRegistry::new(
            cfg.backend,
            Some(metrics.clone()),
            engine::DEFAULT_SWITCHOVER_TIMEOUT,
            move |ev| {
                let h = slot.lock().expect("host slot").upgrade();
                if let Some(h) = h {
                    h.on_incoming(ev)
                }
            },
        );
        let listener =
            MigrationListener::bind(cfg.migration, registry.clone()).map_err(|source| {
                StartError::Listener {
                    addr: cfg.migration,
                    source,
                }
            })?;
        let network = match &cfg.network {
            Some(n) => Some(network::HostNet::start(
                n,
                cfg.advertise.unwrap_or(listener.local_addr()),
            )?),
            None => None,
        };
        let journal = match &cfg.state_dir {
            Some(d) => Some(Arc::new(FileJournal::open(d)?)),
            None => None,
        };
        let epochs = Epochs::open(cfg.state_dir.as_deref())?;
        let mut guests = BTreeMap::new();
        for (i, g) in cfg.guests.iter().enumerate() {
            if let Some(entry) = start_guest(&cfg, i, g, journal.as_ref())? {
                guests.insert(g.name.clone(), entry);
            }
        }
        adopt_arrivals(&cfg, journal.as_deref(), &mut guests);
        if let Some(j) = &journal {
            for (name, fact) in j.received() {
                if guests.contains_key(&name) {
                    continue;
                }
                if let GuestFact::Received { migration, from } = fact {
                    // Synthetic guests live in the host process's memory.
                    tracing::error!(host = %cfg.name, guest = %name, %migration, source = %from,
                        "a guest that had arrived here was lost when this host's process ended (synthetic guests live in it)");
                }
            }
            registry.set_journal(j.clone());
        }
        let migration_metrics =
            MigrationMetrics::new(&[MetricsRole::Source, MetricsRole::Destination])?;
        let reg = prometheus::Registry::new();
        metrics.register(&reg)?;
        migration_metrics.register_host(&reg)?;
        let host = Arc::new(Host {
            cfg,
            inventory: Mutex::new(Inventory {
                guests,
                reserved: BTreeMap::new(),
            }),
            registry,
            listener,
            journal,
            epochs,
            controls: Mutex::new(BTreeMap::new()),
            protocol_metrics: metrics,
            migration_metrics,
            metrics: reg,
            network,
        });
        *weak_slot.lock().expect("host slot") = Arc::downgrade(&host);
        Ok(host)
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    /// Where this host's migration listener really listens.
    pub fn migration_addr(&self) -> std::net::SocketAddr {
        self.cfg.advertise.unwrap_or(self.listener.local_addr())
    }

    pub fn guest(&self, name: &str) -> Option<Arc<dyn Guest>> {
        self.inventory
            .lock()
            .expect("inventory")
            .guests
            .get(name)
            .filter(|e| e.owned())
            .and_then(|e| e.guest.pages().cloned())
    }

    /// A guest of either kind this host owns.
    pub fn hosted(&self, name: &str) -> Option<Hosted> {
        self.inventory
            .lock()
            .expect("inventory")
            .guests
            .get(name)
            .filter(|e| e.owned())
            .map(|e| e.guest.clone())
    }

    /// The guests this host is sending away now (set before the source
    /// starts, cleared before it answers that it finished).
    pub fn sending(&self) -> Vec<String> {
        let inv = self.inventory.lock().expect("inventory");
        inv.guests
            .iter()
            .filter(|(_, e)| e.owned() && e.busy)
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn guest_names(&self) -> Vec<String> {
        self.inventory
            .lock()
            .expect("inventory")
            .guests
            .iter()
            .filter(|(_, e)| e.owned())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn on_incoming(&self, ev: DestinationEvent) {
        let mut inv = self.inventory.lock().expect("inventory");
        match ev {
            DestinationEvent::Resumed { id, guest, stats } => {
                let name = guest.name().to_string();
                // Every arrival was reserved; were it not, the strongest
                // setting is the safe one to assume.
                let (mode, setting) = inv
                    .reserved
                    .remove(&name)
                    .map_or((EncryptionMode::Required, EncryptionMode::Required), |r| {
                        (r.mode, r.setting)
                    });
                self.migration_metrics.destination_finished(mode, &stats);
                tracing::info!(host = %self.cfg.name, guest = %name, pages = stats.pages, "guest arrived and runs here");
                if let (Some(net), Some(nic)) = (&self.network, guest.info().nic) {
                    net.announce(&name, nic);
                }
                inv.guests.insert(
                    name,
                    Entry {
                        guest,
                        encryption: setting,
                        busy: false,
                        arrived: Some(id),
                    },
                );
            }
            DestinationEvent::Aborted { guest, reason, .. } => {
                if let Some(r) = inv.reserved.remove(&guest) {
                    self.migration_metrics
                        .ended(MetricsRole::Destination, r.mode, false);
                }
                tracing::warn!(host = %self.cfg.name, guest = %guest, reason = %reason, "incoming guest discarded");
            }
        }
    }

    fn capabilities(&self) -> Capabilities {
        let inv = self.inventory.lock().expect("inventory");
        let used: u64 = inv
            .guests
            .values()
            .map(|e| e.guest.memory_bytes())
            .sum::<u64>()
            + inv.reserved.values().map(|r| r.memory).sum::<u64>();
        Capabilities {
            host: self.cfg.name.clone(),
            version: crate::VERSION.to_string(),
            encryption: self.cfg.encryption,
            migration: self.migration_addr(),
            memory_capacity: self.cfg.memory_capacity.0,
            memory_free: self.cfg.memory_capacity.0.saturating_sub(used),
            guests: inv
                .guests
                .values()
                .filter(|e| e.owned())
                .map(|e| HostedGuest {
                    info: e.guest.info(),
                    encryption: e.encryption,
                    migrating: e.busy,
                    arrived: e.arrived,
                })
                .collect(),
        }
    }

    /// Accepts an incoming migration: every refusal happens here, before any
    /// memory moves.
    fn prepare_incoming(&self, spec: &MigrationSpec) -> Result<(), Refusal> {
        let host = || self.cfg.name.clone();
        if spec.destination.host != self.cfg.name {
            return Err(Refusal::NotDestination {
                spec: spec.destination.host.clone(),
                host: host(),
            });
        }
        if spec.transport.encrypted() && !self.cfg.encryption {
            return Err(Refusal::CannotEncrypt(host()));
        }
        let mut inv = self.inventory.lock().expect("inventory");
        if inv.guests.contains_key(&spec.guest) || inv.reserved.contains_key(&spec.guest) {
            return Err(Refusal::GuestExists {
                guest: spec.guest.clone(),
                host: host(),
            });
        }
        let used: u64 = inv
            .guests
            .values()
            .map(|e| e.guest.memory_bytes())
            .sum::<u64>()
            + inv.reserved.values().map(|r| r.memory).sum::<u64>();
        let free = self.cfg.memory_capacity.0.saturating_sub(used);
        if spec.memory > free {
            return Err(Refusal::Memory {
                host: host(),
                guest: spec.guest.clone(),
                needs: crate::config::ByteSize(spec.memory),
                free: crate::config::ByteSize(free),
            });
        }
        inv.reserved.insert(
            spec.guest.clone(),
            Reservation {
                memory: spec.memory,
                mode: spec.mode,
                setting: spec.setting,
            },
        );
        drop(inv);
        let prepared = match &spec.machine {
            None => SyntheticGuest::incoming(&spec.guest, spec.memory)
                .map_err(Refusal::Guest)
                .and_then(|g| Ok(self.registry.prepare(spec, g)?)),
            Some(machine) => self.prepare_twin(spec, machine),
        };
        if let Err(e) = prepared {
            self.inventory
                .lock()
                .expect("inventory")
                .reserved
                .remove(&spec.guest);
            return Err(e);
        }
        self.migration_metrics.started(MetricsRole::Destination);
        Ok(())
    }

    /// Starts the QEMU twin of an incoming guest, paused, waiting for its
    /// channels; discards it again if the registry refuses the spec.
    fn prepare_twin(
        &self,
        spec: &MigrationSpec,
        machine: &crate::machine::QemuMachine,
    ) -> Result<(), Refusal> {
        machine
            .validate("the spec's machine")
            .map_err(|e| Refusal::Machine {
                host: self.cfg.name.clone(),
                guest: spec.guest.clone(),
                field: e.field,
                message: e.message,
            })?;
        let dir = self.cfg.state_dir().join(&spec.guest);
        let tap = tap_name(&self.cfg.name, &spec.guest);
        let twin = crate::qemu::QemuGuest::launch(&spec.guest, machine, &dir, true, Some(&tap))
            .map_err(|source| Refusal::Twin {
                guest: spec.guest.clone(),
                source,
            })?;
        if machine.nic.is_some()
            && let Err(e) = attach_tap(&self.cfg, &tap)
        {
            use crate::engine::channels::ChannelGuest;
            twin.release();
            return Err(Refusal::TwinNic {
                guest: spec.guest.clone(),
                source: e,
            });
        }
        // The guest's own setting, for the host that adopts it after a restart.
        let _ = std::fs::write(
            dir.join("encryption"),
            serde_json::to_string(&spec.setting).expect("a mode serialises"),
        );
        let twin: Arc<dyn crate::engine::channels::ChannelGuest> = Arc::new(twin);
        Ok(self
            .registry
            .prepare_channels(spec, twin.clone())
            .inspect_err(|_| twin.release())?)
    }

    /// Runs an outgoing migration, sending progress to `resp`.
    async fn start_outgoing(
        self: &Arc<Self>,
        spec: MigrationSpec,
        resp: &mut Responder,
    ) -> Response {
        let guest = match self.claim_outgoing(&spec) {
            Ok(g) => g,
            Err(e) => return Response::error(report(&e)),
        };
        if let Some(net) = &self.network {
            net.add_peer(spec.destination.migration);
        }
        let id = spec.id;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let opts = self.source_options(id, &tx);
        let name = spec.guest.clone();
        let mode = spec.mode;
        let mm = self.migration_metrics.clone();
        mm.started(MetricsRole::Source);
        mm.sending(spec.limits.downtime_limit);
        let job = tokio::task::spawn_blocking(move || {
            let mut report = |p: &engine::Progress| {
                mm.progress(p);
                let _ = tx.send(Outgoing::Progress(p.clone()));
            };
            let r = match guest {
                Hosted::Pages(g) => engine::migrate_out(g, &spec, &opts, &mut report),
                Hosted::Channels(g) => engine::channels::migrate_out(g, &spec, &opts, &mut report),
            };
            // The spec, and with it the key, is dropped (and wiped) here.
            drop(spec);
            r
        });
        let mut job = std::pin::pin!(job);
        let mut beat = tokio::time::interval(control::HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sent = std::time::Instant::now();
        let result = loop {
            tokio::select! {
                Some(ev) = rx.recv() => {
                    let _ = resp.send(&ev.into_response()).await;
                    last_sent = std::time::Instant::now();
                }
                _ = beat.tick() => {
                    // The engine is quiet (a long pass, the switch-over):
                    // the coordinator still hears this host is alive.
                    if last_sent.elapsed() >= control::HEARTBEAT {
                        let _ = resp.send(&Response::Heartbeat).await;
                        last_sent = std::time::Instant::now();
                    }
                }
                r = &mut job => break r,
            }
        };
        while let Ok(ev) = rx.try_recv() {
            let _ = resp.send(&ev.into_response()).await;
        }
        self.controls.lock().expect("controls").remove(&id);
        self.outgoing_ended(&name, mode, result)
    }

    /// The guest a spec moves out, marked busy, once every check passed.
    fn claim_outgoing(&self, spec: &MigrationSpec) -> Result<Hosted, Refusal> {
        let host = || self.cfg.name.clone();
        if spec.source.host != self.cfg.name {
            return Err(Refusal::NotSource {
                spec: spec.source.host.clone(),
                host: host(),
            });
        }
        if spec.transport.encrypted() && !self.cfg.encryption {
            return Err(Refusal::CannotEncrypt(host()));
        }
        let mut inv = self.inventory.lock().expect("inventory");
        let Some(e) = inv.guests.get_mut(&spec.guest) else {
            return Err(Refusal::NoGuest {
                guest: spec.guest.clone(),
                host: host(),
            });
        };
        if e.busy {
            return Err(Refusal::AlreadyMigrating(spec.guest.clone()));
        }
        let state = e.guest.run_state();
        if state != RunState::Running {
            return Err(Refusal::NotRunning {
                guest: spec.guest.clone(),
                state,
            });
        }
        e.busy = true;
        Ok(e.guest.clone())
    }

    /// The engine's options for outgoing migration `id`: the coordinator's
    /// decision, cancel and limits (kept in `controls`, where requests for
    /// it find them), this host's backend, metrics and journal.
    fn source_options(
        &self,
        id: MigrationId,
        tx: &tokio::sync::mpsc::UnboundedSender<Outgoing>,
    ) -> SourceOptions {
        let (cancel, limits, decision) = {
            let mut c = self.controls.lock().expect("controls");
            let e = c.entry(id).or_default();
            e.running = true;
            (e.cancel.clone(), e.limits.clone(), e.decision.clone())
        };
        SourceOptions {
            commit: Some(Arc::new(CoordinatorCommit {
                decision,
                tx: tx.clone(),
            })),
            cancel: Some(cancel),
            limits: Some(limits),
            backend: self.cfg.backend,
            metrics: Some(self.protocol_metrics.clone()),
            software_dirty_log: self.cfg.software_dirty_log,
            journal: self
                .journal
                .clone()
                .map(|j| j as Arc<dyn crate::engine::Journal>),
            ..Default::default()
        }
    }

    /// The end of an outgoing migration: the guest gone from here, or
    /// free to move again; the figures to the coordinator.
    fn outgoing_ended(
        &self,
        name: &str,
        mode: crate::protocol::EncryptionMode,
        result: Result<
            Result<engine::MigrationStats, engine::source::Failed>,
            tokio::task::JoinError,
        >,
    ) -> Response {
        let mut inv = self.inventory.lock().expect("inventory");
        match result {
            Ok(Ok(stats)) => {
                inv.guests.remove(name);
                self.migration_metrics.source_finished(&stats);
                Response::Finished(Box::new(stats))
            }
            Ok(Err(failed)) => {
                if let Some(e) = inv.guests.get_mut(name) {
                    e.busy = false;
                }
                let mut stats = failed.stats;
                stats.error = Some(report(&failed.error).to_string());
                self.migration_metrics.source_finished(&stats);
                Response::Finished(stats)
            }
            Err(join) => {
                if let Some(e) = inv.guests.get_mut(name) {
                    e.busy = false;
                }
                self.migration_metrics
                    .ended(MetricsRole::Source, mode, false);
                Response::error(format!("migration task failed: {join}"))
            }
        }
    }

    fn allowed(&self, who: &Identity) -> Result<(), Refusal> {
        if who.role != Role::Coordinator {
            return Err(Refusal::NotCoordinator(who.to_string()));
        }
        if !self.cfg.coordinators.is_empty() && !self.cfg.coordinators.contains(&who.name) {
            return Err(Refusal::NotListed {
                coordinator: who.name.clone(),
                host: self.cfg.name.clone(),
            });
        }
        Ok(())
    }

    async fn handle(self: Arc<Self>, who: Identity, req: Request, mut resp: Responder) {
        if let Err(e) = self.allowed(&who) {
            tracing::warn!(host = %self.cfg.name, peer = %who, "refused: {}", report(&e));
            let _ = resp.send(&Response::error(report(&e))).await;
            return;
        }
        let req = match req {
            Request::Fenced {
                site,
                epoch,
                request,
            } if !matches!(*request, Request::Fenced { .. }) => {
                if let Err(e) = self.epochs.admit(&site, epoch, &self.cfg.name) {
                    tracing::warn!(host = %self.cfg.name, peer = %who, "refused: {}", report(&e));
                    let _ = resp.send(&Response::error(report(&e))).await;
                    return;
                }
                *request
            }
            r => r,
        };
        let answer = match req {
            Request::Capabilities => Response::Capabilities(Box::new(self.capabilities())),
            Request::PrepareIncoming { spec } => {
                let r = self.prepare_incoming(&spec);
                drop(spec);
                match r {
                    Ok(()) => Response::Prepared {
                        migration: self.migration_addr(),
                    },
                    Err(e) => {
                        tracing::warn!(host = %self.cfg.name, "refused an incoming migration: {}", report(&e));
                        Response::error(report(&e))
                    }
                }
            }
            Request::StartOutgoing { spec } => self.start_outgoing(spec, &mut resp).await,
            Request::SettleGuest { guest, action } => match self.settle_guest(&guest, &action) {
                Ok(()) => Response::Ok,
                Err(e) => {
                    tracing::warn!(host = %self.cfg.name, guest = %guest, "refused to settle: {}", report(&e));
                    Response::error(report(&e))
                }
            },
            Request::CancelOutgoing { id } => {
                self.cancel_outgoing(id);
                Response::Ok
            }
            Request::Decide { id, decision } => match self.decide(id, decision) {
                Ok(()) => Response::Ok,
                Err(e) => {
                    tracing::warn!(host = %self.cfg.name, migration = %id, "refused a decision: {}", report(&e));
                    Response::error(report(&e))
                }
            },
            Request::SetOutgoingLimits { id, change } => match change.check() {
                Ok(()) => {
                    self.set_outgoing_limits(id, &change);
                    Response::Ok
                }
                Err(e) => Response::error(e),
            },
            Request::AbortIncoming { id } => {
                self.registry.abort(&id, "cancelled by the coordinator");
                Response::Outcome {
                    outcome: self.settled_outcome(&id).await,
                }
            }
            other => Response::error(format!("a host does not answer {}", other.op())),
        };
        let _ = resp.send(&answer).await;
    }

    /// Raises migration `id`'s cancel flag; the engine honours it only
    /// before the switch-over, so a late cancel changes nothing.
    fn cancel_outgoing(&self, id: MigrationId) {
        self.with_controls(id, |e| {
            tracing::info!(host = %self.cfg.name, migration = %id,
                running = e.running, "cancel requested");
            e.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }

    /// Takes the coordinator's decision on outgoing migration `id`, kept
    /// for its READY if it comes before. An abort also cancels it, so one
    /// not yet stunned stops at once.
    fn decide(&self, id: MigrationId, d: control::wire::SwitchDecision) -> Result<(), Refusal> {
        let c = self.controls.lock().expect("controls");
        let Some(e) = c.get(&id).filter(|e| e.running) else {
            return Err(Refusal::NoOutgoing {
                id,
                host: self.cfg.name.clone(),
            });
        };
        let d = match d {
            control::wire::SwitchDecision::Go => engine::Decision::Go,
            control::wire::SwitchDecision::Abort { reason } => {
                e.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                engine::Decision::Abort(reason)
            }
        };
        tracing::info!(host = %self.cfg.name, migration = %id, decision = ?d, "the coordinator decided");
        e.decision.decide(d).map_err(|old| Refusal::Decided {
            id,
            decision: format!("{old:?}"),
        })
    }

    /// Changes migration `id`'s limits; the engine reads them as it goes
    /// (a device model is told at its next poll).
    fn set_outgoing_limits(&self, id: MigrationId, change: &crate::protocol::LimitChange) {
        self.with_controls(id, |e| {
            tracing::info!(host = %self.cfg.name, migration = %id, running = e.running,
                bandwidth = ?change.bandwidth, downtime_limit_us = ?change.downtime_limit_us,
                "limits changed");
            e.limits.apply(change);
        });
    }

    fn with_controls(&self, id: MigrationId, f: impl FnOnce(&mut Controls)) {
        let mut c = self.controls.lock().expect("controls");
        if !c.contains_key(&id) && c.len() >= EARLY_CONTROLS {
            c.retain(|_, e| e.running);
        }
        f(c.entry(id).or_default());
    }

    /// Resumes a guest left paused here, or drops this host's copy of one
    /// that runs elsewhere, as a coordinator's `resolve` decided; journaled
    /// first, so a restart honours it.
    fn settle_guest(
        &self,
        name: &str,
        action: &control::wire::SettleAction,
    ) -> Result<(), Refusal> {
        use control::wire::SettleAction;
        let guest = || name.to_string();
        let host = || self.cfg.name.clone();
        let mut inv = self.inventory.lock().expect("inventory");
        let Some(e) = inv.guests.get(name).filter(|e| e.owned()) else {
            return Err(Refusal::NoGuest {
                guest: guest(),
                host: host(),
            });
        };
        if e.busy {
            return Err(Refusal::Migrating {
                guest: guest(),
                host: host(),
            });
        }
        let journal = |entry| {
            self.journal.as_ref().map_or(Ok(()), |j| {
                crate::engine::Journal::write(&**j, entry).map_err(Refusal::Journal)
            })
        };
        match action {
            SettleAction::Resume { migration } => {
                let state = e.guest.run_state();
                if state != RunState::Paused {
                    return Err(Refusal::NotPaused {
                        guest: guest(),
                        state,
                        host: host(),
                    });
                }
                if let Some(id) = migration {
                    journal(crate::engine::journal::Entry::Reclaimed {
                        id: *id,
                        guest: name,
                    })?;
                }
                e.guest.resume().map_err(|source| Refusal::Resume {
                    guest: guest(),
                    source,
                })?;
                tracing::warn!(host = %self.cfg.name, guest = %name, "guest resumed here by a coordinator's resolve");
            }
            SettleAction::Discard { runs_on, migration } => {
                journal(crate::engine::journal::Entry::Released {
                    id: migration.unwrap_or_else(MigrationId::generate),
                    guest: name,
                    destination: runs_on,
                })?;
                e.guest.release();
                inv.guests.remove(name);
                tracing::warn!(host = %self.cfg.name, guest = %name, runs_on = %runs_on,
                    "this host's copy of the guest discarded by a coordinator's resolve");
            }
        }
        Ok(())
    }

    /// The decision on an incoming migration, waiting a little for one that
    /// is being taken: an abort that lost the race to GO leaves the guest
    /// resumed here, and the coordinator must hear that, not "aborted".
    async fn settled_outcome(&self, id: &MigrationId) -> IncomingOutcome {
        let deadline = tokio::time::Instant::now() + ABORT_SETTLE;
        loop {
            let o = match self.registry.outcome(id) {
                None => return IncomingOutcome::Unknown,
                Some(engine::Outcome::Resumed) => return IncomingOutcome::Resumed,
                Some(engine::Outcome::Aborted(reason)) => {
                    return IncomingOutcome::Discarded { reason };
                }
                Some(engine::Outcome::Pending) => IncomingOutcome::Pending,
            };
            if tokio::time::Instant::now() >= deadline {
                return o;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Serves the control API and /metrics until the task is dropped.
    /// `tls` comes from [`control::tls::server_config`], loaded by the caller
    /// before anything starts, so that a missing certificate is found first.
    pub async fn serve(
        self: Arc<Self>,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<(), crate::ServeError> {
        let _metrics = crate::metrics::http::serve_daemon(
            &self.cfg.name,
            crate::metrics::http::Build {
                role: "host",
                version: crate::VERSION,
            },
            self.cfg.metrics.as_ref(),
            DEFAULT_METRICS,
            self.metrics.clone(),
        )
        .await?;
        let listener = tokio::net::TcpListener::bind(self.cfg.control)
            .await
            .map_err(|source| crate::ServeError::Listen {
                what: "control API",
                addr: self.cfg.control,
                source,
            })?;
        self.serve_on(listener, tls).await;
        Ok(())
    }

    /// Serves the control API on an already bound listener.
    pub async fn serve_on(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) {
        tracing::info!(host = %self.cfg.name, control = ?listener.local_addr().ok(), migration = %self.migration_addr(), "host ready");
        let me = self.clone();
        control::serve(
            listener,
            tls,
            Arc::new(move |who, req, resp| Box::pin(me.clone().handle(who, req, resp))),
        )
        .await;
    }

    /// Loads `path` with TLS paths relative to its directory.
    pub fn load_config(path: &Path) -> Result<HostConfig, crate::config::ConfigError> {
        let mut cfg: HostConfig = crate::config::load(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.tls = cfg.tls.relative_to(base);
        cfg.state_dir = Some(crate::config::state_dir_for(
            path,
            cfg.state_dir.take(),
            &cfg.name,
        ));
        Ok(cfg)
    }
}
