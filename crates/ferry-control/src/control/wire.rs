//! The control protocol: JSON messages, one per line, over mutual TLS. A
//! connection carries one request and then the responses to it (several
//! for a migration's progress), the last one final.
//!
//! Requests can carry a migration key (a host's PrepareIncoming and
//! StartOutgoing): lines are read into and written from buffers that are
//! wiped after use. (TLS's own record buffers are beyond our reach.)

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::{
    engine::{DestinationStats, MigrationStats, Progress},
    guest::GuestInfo,
    protocol::{EncryptionMode, LimitChange, Limits, MigrationId, MigrationSpec, Transport},
};

/// The longest line either side accepts.
pub const MAX_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the connection failed")]
    Io(#[from] std::io::Error),
    #[error("message longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("the peer closed the connection")]
    Closed,
    #[error("malformed message: {0}")]
    Json(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Reads newline-terminated messages into a buffer that is wiped as it is consumed.
pub struct LineReader<R> {
    inner: R,
    buf: Zeroizing<Vec<u8>>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Zeroizing::new(Vec::with_capacity(4096)),
        }
    }

    /// The next message, parsed.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<T, WireError> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let parsed = serde_json::from_slice(&self.buf[..nl])
                    .map_err(|e| WireError::Json(e.to_string()));
                // Wipe the consumed line before shifting the rest down.
                self.buf[..=nl].iter_mut().for_each(|b| *b = 0);
                self.buf.drain(..=nl);
                return parsed;
            }
            if self.buf.len() > MAX_LINE {
                return Err(WireError::TooLong);
            }
            let mut chunk = Zeroizing::new([0u8; 4096]);
            let n = self.inner.read(&mut chunk[..]).await?;
            if n == 0 {
                return Err(WireError::Closed);
            }
            // Reserve first so that extending never reallocates and leaves
            // an unwiped copy behind.
            if self.buf.capacity() < self.buf.len() + n {
                let mut bigger = Zeroizing::new(Vec::with_capacity((self.buf.len() + n) * 2));
                bigger.extend_from_slice(&self.buf);
                self.buf = bigger;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes one message and a newline, from a buffer wiped afterwards.
pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), WireError> {
    let mut line =
        Zeroizing::new(serde_json::to_vec(msg).map_err(|e| WireError::Json(e.to_string()))?);
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await?;
    Ok(())
}

/// Per-request overrides a client may ask for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateOptions {
    pub mode: Option<EncryptionMode>,
    pub streams: Option<u16>,
    pub limits: Option<Limits>,
}

/// Everything a connection can ask for.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    // client -> coordinator
    Migrate {
        guest: String,
        source: Option<String>,
        destination: String,
        options: MigrateOptions,
    },
    Status {
        id: Option<MigrationId>,
    },
    Hosts,
    /// Decides a guest left paused by a switch-over in doubt, or listed on
    /// more than one host, from what the hosts say (see `ferry resolve`).
    Resolve {
        guest: String,
        /// The host whose copy stays, when several hosts run the guest.
        #[serde(default)]
        keep: Option<String>,
        /// Resume the source's copy even when the destination cannot be
        /// asked, or said it resumed a guest it no longer runs.
        #[serde(default)]
        force: bool,
    },
    /// Stops a migration before its switch-over; the guest stays on its
    /// source, running (`ferry cancel`). Answered once the source has the
    /// word; the migration's own connection then ends it as cancelled.
    Cancel {
        id: MigrationId,
    },
    /// Changes a running migration's bandwidth cap and downtime limit
    /// (`ferry migrate-set`). Answered once the source has the word.
    SetLimits {
        id: MigrationId,
        change: LimitChange,
    },
    /// Moves every guest off `host` within the scheduler's limits and
    /// cordons it: no migration goes to it until [`Request::Uncordon`]
    /// (`ferry drain`, maintenance mode).
    Drain {
        host: String,
        options: MigrateOptions,
    },
    /// Lets migrations go to a cordoned host again (`ferry uncordon`).
    Uncordon {
        host: String,
    },
    /// Which coordinator leads the site: answered by followers too, so a
    /// client given any coordinator of the site finds the one that acts.
    Leader,
    // coordinator -> host
    /// A coordinator's request with the epoch of its lead of `site`: a
    /// host refuses an epoch lower than the highest it has seen of the
    /// site, so a deposed leader cannot act.
    Fenced {
        site: String,
        epoch: u64,
        request: Box<Request>,
    },
    Capabilities,
    PrepareIncoming {
        spec: MigrationSpec,
    },
    StartOutgoing {
        spec: MigrationSpec,
    },
    AbortIncoming {
        id: MigrationId,
    },
    /// Resumes a paused guest here, or drops this host's copy of one that
    /// runs elsewhere (a coordinator's `resolve`).
    SettleGuest {
        guest: String,
        action: SettleAction,
    },
    /// Cancels this host's outgoing migration `id` if it has not reached
    /// its switch-over (one asked for before it starts is cancelled at its
    /// start).
    CancelOutgoing {
        id: MigrationId,
    },
    /// The coordinator's decision on this host's outgoing migration `id`,
    /// whose destination is (or is about to be) READY: GO once the store
    /// has recorded it with the guest's new owner, or resume the guest
    /// here. The first decision stands; the same one again is no change.
    Decide {
        id: MigrationId,
        decision: SwitchDecision,
    },
    /// Changes this host's outgoing migration `id`'s limits (one changed
    /// before it starts takes effect at its start).
    SetOutgoingLimits {
        id: MigrationId,
        change: LimitChange,
    },
    // coordinator -> coordinator
    PeerCapabilities {
        host: String,
    },
    PeerPrepare {
        host: String,
        spec: MigrationSpec,
    },
    PeerFinished {
        id: MigrationId,
        result: Box<MigrationStats>,
    },
}

impl Request {
    /// The operation's name, as it travels in `op`.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Migrate { .. } => "migrate",
            Request::Status { .. } => "status",
            Request::Hosts => "hosts",
            Request::Resolve { .. } => "resolve",
            Request::Cancel { .. } => "cancel",
            Request::CancelOutgoing { .. } => "cancel-outgoing",
            Request::Decide { .. } => "decide",
            Request::SetLimits { .. } => "set-limits",
            Request::Drain { .. } => "drain",
            Request::Uncordon { .. } => "uncordon",
            Request::Leader => "leader",
            Request::SetOutgoingLimits { .. } => "set-outgoing-limits",
            Request::SettleGuest { .. } => "settle-guest",
            Request::Fenced { .. } => "fenced",
            Request::Capabilities => "capabilities",
            Request::PrepareIncoming { .. } => "prepare-incoming",
            Request::StartOutgoing { .. } => "start-outgoing",
            Request::AbortIncoming { .. } => "abort-incoming",
            Request::PeerCapabilities { .. } => "peer-capabilities",
            Request::PeerPrepare { .. } => "peer-prepare",
            Request::PeerFinished { .. } => "peer-finished",
        }
    }
}

/// A coordinator's word on a migration at READY.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum SwitchDecision {
    Go,
    Abort { reason: String },
}

/// What a host does with its copy of a guest when told to settle it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
pub enum SettleAction {
    /// Run the paused copy here again: the other side never ran it.
    Resume { migration: Option<MigrationId> },
    /// Drop the copy here: the guest runs on `runs_on`.
    Discard {
        runs_on: String,
        migration: Option<MigrationId>,
    },
}

/// A guest that more than one host lists (none of them moving it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duplicate {
    pub guest: String,
    pub hosts: Vec<String>,
}

/// What a host can do and holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    pub host: String,
    pub version: String,
    /// Whether this host can run AES-256-GCM migration streams.
    pub encryption: bool,
    pub migration: SocketAddr,
    pub memory_capacity: u64,
    pub memory_free: u64,
    pub guests: Vec<HostedGuest>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostedGuest {
    pub info: GuestInfo,
    pub encryption: EncryptionMode,
    /// An outgoing migration of this guest is under way.
    #[serde(default)]
    pub migrating: bool,
    /// The migration that brought it to this host; none when the host
    /// booted it from its own configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrived: Option<MigrationId>,
}

/// A migration as the coordinator tracks it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationRecord {
    pub id: MigrationId,
    pub guest: String,
    pub source: String,
    pub destination: String,
    pub mode: EncryptionMode,
    pub transport: Transport,
    pub state: MigrationState,
    pub started_unix_ms: u64,
    pub progress: Option<Progress>,
    pub stats: Option<Box<MigrationStats>>,
    pub error: Option<String>,
    /// Queued: its place in line and what it waits for (filled in when
    /// asked, not stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationState {
    /// Waiting for the scheduler's limits to let it start.
    Queued,
    Preparing,
    Running,
    Completed,
    Failed,
    /// Stopped by `ferry cancel` before its switch-over: the guest stayed
    /// on its source.
    Cancelled,
    /// The coordinator restarted while it was under way, and could not yet
    /// tell from the hosts where the guest ended.
    Interrupted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    pub name: String,
    pub reachable: bool,
    pub error: Option<String>,
    pub capabilities: Option<Capabilities>,
    /// Cordoned (`ferry drain`): no migration goes to it.
    #[serde(default)]
    pub cordoned: bool,
}

/// Everything a connection can answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Response {
    Ok,
    Error {
        message: String,
    },
    Capabilities(Box<Capabilities>),
    /// A migration was accepted; progress follows on this connection.
    Accepted {
        id: MigrationId,
        transport: Transport,
        source: String,
        destination: String,
    },
    /// The migration waits for the scheduler: `position` in line (1: next),
    /// `reason` the limit it waits on. Sent again when either changes;
    /// [`Response::Accepted`] follows when it starts.
    Queued {
        id: MigrationId,
        position: usize,
        reason: String,
    },
    Progress(Progress),
    /// Nothing new, but alive: sent on a migration's connection when nothing
    /// else was for [`super::HEARTBEAT`].
    Heartbeat,
    /// On a source's StartOutgoing connection: the destination is READY
    /// and the source waits for the coordinator's [`Request::Decide`].
    AwaitingGo,
    Finished(Box<MigrationStats>),
    /// The destination accepted a spec (PeerPrepare's answer: where to connect).
    Prepared {
        migration: SocketAddr,
    },
    Incoming(Box<DestinationStats>),
    /// AbortIncoming's answer: what the destination decided, once decided.
    Outcome {
        outcome: IncomingOutcome,
    },
    Status {
        migrations: Vec<MigrationRecord>,
    },
    /// The site's leader as NAME@ADDRESS (its client API), or none while
    /// an election is under way.
    Leader {
        leader: Option<String>,
    },
    Hosts {
        hosts: Vec<HostStatus>,
        /// Guests listed on more than one host: run `ferry resolve`.
        #[serde(default)]
        duplicates: Vec<Duplicate>,
    },
    /// What `resolve` or `cancel` did.
    Resolved {
        message: String,
    },
    /// Where a drain sends each guest of its host, and the guests no host
    /// can take.
    DrainPlan {
        host: String,
        moves: Vec<DrainMove>,
        unplaced: Vec<DrainUnplaced>,
    },
    /// One guest of a drain is done with (moved, or not).
    DrainMoved(DrainOutcome),
    /// The drain's end: every guest's outcome, and what the host still
    /// runs (empty: drained).
    Drained {
        host: String,
        outcomes: Vec<DrainOutcome>,
        unplaced: Vec<DrainUnplaced>,
        remaining: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainMove {
    pub guest: String,
    pub destination: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainUnplaced {
    pub guest: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrainOutcome {
    pub guest: String,
    pub destination: String,
    pub migration: Option<MigrationId>,
    pub completed: bool,
    pub error: Option<String>,
}

/// What became of an incoming migration, as its destination reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum IncomingOutcome {
    /// The guest runs here: the switch-over happened, whatever the source says.
    Resumed,
    /// This host dropped its copy.
    Discarded { reason: String },
    /// Not decided within the wait (the destination is still on its way).
    Pending,
    /// This host knows nothing of the migration.
    Unknown,
}

impl Response {
    pub fn error(e: impl std::fmt::Display) -> Response {
        Response::Error {
            message: e.to_string(),
        }
    }
}
