//! Where a coordinator keeps what must outlive it: who leads the site (and
//! since when: the epoch every request to a host carries), a journal record
//! per migration (never the key), and which host owns each guest.
//!
//! - `embedded` (the default): this process alone, on its state directory.
//!   The epoch is a counter raised at every start, so a restarted
//!   coordinator fences off whatever its previous run left talking to hosts.
//! - `etcd`: coordinators of one site campaign for a lease-backed leader
//!   key (etcd's election API); the leader's epoch is that key's create
//!   revision, and every write is a transaction that holds only while the
//!   key still exists with that revision. A deposed leader's writes fail,
//!   and hosts refuse its requests once they have seen a newer epoch.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use etcd_client::{Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use ferry_core::error::report;
use serde::{Deserialize, Serialize};

use crate::{config::Invalid, control::TlsFiles, protocol::MigrationId};

/// `store:` in the coordinator's YAML.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StoreConfig {
    /// This coordinator alone, its state on local disk (`state_dir`).
    #[default]
    Embedded,
    /// Several coordinators of one site on an etcd cluster, one leading.
    Etcd(EtcdConfig),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// The etcd members' client URLs.
    #[schemars(example = &["http://127.0.0.1:2379"])]
    pub endpoints: Vec<String>,
    /// The site's name: its coordinators share it, and its keys live under
    /// /ferry/SITE/.
    #[schemars(example = &"lab")]
    pub site: String,
    /// Client TLS for https endpoints (etcd's CA, a client certificate and
    /// key); relative paths are from the file's directory.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// How long the leader's lease lives without renewal: a dead leader is
    /// replaced after about this long.
    #[serde(
        default = "default_ttl",
        deserialize_with = "ferry_core::config::deserialize_duration",
        serialize_with = "ferry_core::config::serialize_duration"
    )]
    #[schemars(with = "ferry_core::config::DurationText")]
    pub lease_ttl: Duration,
}

fn default_ttl() -> Duration {
    Duration::from_secs(5)
}

impl StoreConfig {
    pub fn check(&self) -> Result<(), Invalid> {
        let StoreConfig::Etcd(e) = self else {
            return Ok(());
        };
        if e.endpoints.is_empty() {
            return Err(Invalid::new("endpoints", "name at least one etcd member"));
        }
        for (i, u) in e.endpoints.iter().enumerate() {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(Invalid::new(
                    format!("endpoints[{i}]"),
                    format!("{u:?} is not an http:// or https:// URL"),
                ));
            }
        }
        crate::config::check_name("site", &e.site)?;
        if e.lease_ttl < Duration::from_secs(2) || e.lease_ttl > Duration::from_secs(3600) {
            return Err(Invalid::new(
                "lease_ttl",
                format!("{:?} is out of range 2s..=1h", e.lease_ttl),
            ));
        }
        Ok(())
    }

    pub fn relative_to(self, base: &Path) -> StoreConfig {
        match self {
            StoreConfig::Etcd(mut e) => {
                e.tls = e.tls.map(|t| t.relative_to(base));
                StoreConfig::Etcd(e)
            }
            other => other,
        }
    }
}

/// A guest's owner swapped: `to` becomes its owner only while the store
/// names one of `from` (or none: a guest that never moved).
#[derive(Clone, Copy, Debug)]
pub struct OwnerSwap<'a> {
    pub guest: &'a str,
    pub from: &'a [&'a str],
    pub to: &'a str,
}

impl OwnerSwap<'_> {
    fn check(&self, now: Option<&str>) -> Result<(), StoreError> {
        match now {
            Some(o) if !self.from.contains(&o) => Err(StoreError::OwnerChanged {
                guest: self.guest.to_string(),
                owner: o.to_string(),
                expected: self.from.join(" or "),
            }),
            _ => Ok(()),
        }
    }
}

/// Where a migration is, as the journal records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Asked for (queued or about to be planned).
    Requested,
    /// The spec went to the destination.
    SpecIssued,
    /// The source is moving memory.
    Streaming,
    /// The source stunned the guest: its switch-over is under way.
    Ready,
    /// GO decided: the guest's owner is its destination, which is told to
    /// resume (through the source) only after this is recorded.
    Go,
    /// Ended with the guest on the destination (the owner says so).
    Done,
    /// Ended with the guest on its source.
    Aborted,
}

impl Phase {
    pub fn closed(self) -> bool {
        matches!(self, Phase::Done | Phase::Aborted)
    }
}

/// A migration's journal record (never its key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: MigrationId,
    pub guest: String,
    pub source: String,
    pub destination: String,
    pub phase: Phase,
    /// The epoch of the leader that wrote it.
    pub epoch: u64,
    /// The coordinator that wrote it.
    pub coordinator: String,
    pub updated_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach etcd at {endpoints}")]
    Connect {
        endpoints: String,
        source: etcd_client::Error,
    },
    #[error("etcd refused or timed out on {what} (no quorum, or unreachable)")]
    Etcd {
        what: &'static str,
        source: etcd_client::Error,
    },
    #[error(
        "this coordinator no longer leads the site (epoch {epoch}): a newer leader took over, or its lease lapsed"
    )]
    Deposed { epoch: u64 },
    #[error("this coordinator does not lead the site yet")]
    NotLeading,
    #[error("cannot read {path}")]
    ReadTls {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot keep {path}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid (move it away to start afresh)")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "guest {guest}'s owner in the store is {owner}, not {expected}: another migration or leader changed it"
    )]
    OwnerChanged {
        guest: String,
        owner: String,
        expected: String,
    },
    #[error("a journal record in etcd under {key} is not valid")]
    Record {
        key: String,
        source: serde_json::Error,
    },
}

/// This coordinator's lead of its site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lead {
    pub epoch: u64,
}

pub struct Store {
    site: String,
    inner: Inner,
}

enum Inner {
    Embedded(Embedded),
    Etcd(Box<Etcd>),
}

struct Embedded {
    dir: Option<PathBuf>,
    journal: Mutex<Vec<Entry>>,
    owners: Mutex<std::collections::BTreeMap<String, String>>,
    epoch: Mutex<Option<u64>>,
}

struct Etcd {
    client: etcd_client::Client,
    prefix: String,
    ttl: Duration,
    /// Who we are, as the leader key's value says: NAME@ADDRESS.
    me: String,
    /// The leader key and its create revision (the epoch), once leading.
    lead: Mutex<Option<(Vec<u8>, i64, i64)>>,
}

const JOURNAL: &str = "journal.json";
const OWNERS: &str = "owners.json";
const EPOCH: &str = "epoch";

fn read_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> Result<T, StoreError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| StoreError::Parse {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(StoreError::File {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write_json<T: Serialize>(dir: &Option<PathBuf>, name: &str, v: &T) -> Result<(), StoreError> {
    let Some(dir) = dir else { return Ok(()) };
    let path = dir.join(name);
    let json = serde_json::to_vec_pretty(v).expect("store records serialise");
    ferry_core::fs::write_atomically(&path, &json)
        .map_err(|source| StoreError::File { path, source })
}

impl Store {
    /// Opens the store: `state_dir` for the embedded one; for etcd, a
    /// connection (the site is only joined by [`Store::lead`]).
    pub async fn open(
        cfg: &StoreConfig,
        state_dir: Option<&Path>,
        name: &str,
        listen: SocketAddr,
    ) -> Result<Store, StoreError> {
        match cfg {
            StoreConfig::Embedded => Self::embedded(state_dir, name),
            StoreConfig::Etcd(e) => {
                let mut opts = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(5))
                    .with_keep_alive(Duration::from_secs(2), Duration::from_secs(4))
                    .with_require_leader(true);
                if let Some(t) = &e.tls {
                    let read = |p: &Path| {
                        std::fs::read(p).map_err(|source| StoreError::ReadTls {
                            path: p.to_path_buf(),
                            source,
                        })
                    };
                    let tls = etcd_client::TlsOptions::new()
                        .ca_certificate(etcd_client::Certificate::from_pem(read(&t.ca)?))
                        .identity(etcd_client::Identity::from_pem(
                            read(&t.cert)?,
                            read(&t.key)?,
                        ));
                    opts = opts.with_tls(tls);
                }
                let client = etcd_client::Client::connect(&e.endpoints, Some(opts))
                    .await
                    .map_err(|source| StoreError::Connect {
                        endpoints: e.endpoints.join(","),
                        source,
                    })?;
                Ok(Store {
                    site: e.site.clone(),
                    inner: Inner::Etcd(Box::new(Etcd {
                        client,
                        prefix: format!("/ferry/{}/", e.site),
                        ttl: e.lease_ttl,
                        me: format!("{name}@{listen}"),
                        lead: Mutex::new(None),
                    })),
                })
            }
        }
    }

    /// The embedded store, on `state_dir` (in memory without one).
    pub fn embedded(state_dir: Option<&Path>, name: &str) -> Result<Store, StoreError> {
        let dir = state_dir.map(Path::to_path_buf);
        let (journal, owners) = match &dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|source| StoreError::File {
                    path: d.clone(),
                    source,
                })?;
                (read_json(&d.join(JOURNAL))?, read_json(&d.join(OWNERS))?)
            }
            None => Default::default(),
        };
        Ok(Store {
            site: name.to_string(),
            inner: Inner::Embedded(Embedded {
                dir,
                journal: Mutex::new(journal),
                owners: Mutex::new(owners),
                epoch: Mutex::new(None),
            }),
        })
    }

    /// The site's name, which travels with the epoch.
    pub fn site(&self) -> &str {
        &self.site
    }

    pub fn kind(&self) -> &'static str {
        match self.inner {
            Inner::Embedded(_) => "embedded",
            Inner::Etcd(_) => "etcd",
        }
    }

    /// Returns once this coordinator leads the site. The embedded store
    /// leads at once, with the epoch after its last run's; etcd waits its
    /// turn in the election.
    pub async fn lead(&self) -> Result<Lead, StoreError> {
        match &self.inner {
            Inner::Embedded(s) => {
                let last: u64 = match &s.dir {
                    Some(d) => read_json::<Option<u64>>(&d.join(EPOCH))?.unwrap_or(0),
                    // Memory only (labs, tests): later than any earlier run's.
                    None => super::unix_ms(),
                };
                let epoch = last + 1;
                write_json(&s.dir, EPOCH, &epoch)?;
                *s.epoch.lock().expect("epoch") = Some(epoch);
                Ok(Lead { epoch })
            }
            Inner::Etcd(e) => e.lead().await,
        }
    }

    /// A future that completes when this coordinator's lead ends (its
    /// lease lapsed: etcd unreachable or without quorum for longer than
    /// the lease). Never, for the embedded store.
    pub async fn lost(&self) -> StoreError {
        match &self.inner {
            Inner::Embedded(_) => std::future::pending().await,
            Inner::Etcd(e) => e.keep_alive().await,
        }
    }

    /// Who leads the site now, as NAME@ADDRESS.
    pub async fn leader(&self) -> Result<Option<String>, StoreError> {
        match &self.inner {
            Inner::Embedded(_) => Ok(None),
            Inner::Etcd(e) => e.leader().await,
        }
    }

    /// Writes `entry`, fenced on this coordinator's lead.
    pub async fn record(&self, entry: &Entry) -> Result<(), StoreError> {
        self.commit(entry, None).await
    }

    /// Writes `entry` and, in the same transaction, swaps the guest's
    /// owner: GO (or the migration's end) and the guest's home are one fact.
    pub async fn commit(
        &self,
        entry: &Entry,
        owner: Option<OwnerSwap<'_>>,
    ) -> Result<(), StoreError> {
        match &self.inner {
            Inner::Embedded(s) => {
                if s.epoch.lock().expect("epoch").is_none() {
                    return Err(StoreError::NotLeading);
                }
                if let Some(w) = &owner {
                    w.check(
                        s.owners
                            .lock()
                            .expect("owners")
                            .get(w.guest)
                            .map(String::as_str),
                    )?;
                }
                {
                    let mut j = s.journal.lock().expect("journal");
                    match j.iter_mut().find(|x| x.id == entry.id) {
                        Some(x) => *x = entry.clone(),
                        None => j.push(entry.clone()),
                    }
                    // Closed records are history's business, not the journal's.
                    j.retain(|x| !x.phase.closed());
                    write_json(&s.dir, JOURNAL, &*j)?;
                }
                if let Some(w) = owner {
                    let mut o = s.owners.lock().expect("owners");
                    o.insert(w.guest.to_string(), w.to.to_string());
                    write_json(&s.dir, OWNERS, &*o)?;
                }
                Ok(())
            }
            Inner::Etcd(e) => e.commit(entry, owner).await,
        }
    }

    /// The migrations whose journal record is still open.
    pub async fn open_entries(&self) -> Result<Vec<Entry>, StoreError> {
        match &self.inner {
            Inner::Embedded(s) => Ok(s.journal.lock().expect("journal").clone()),
            Inner::Etcd(e) => e.open_entries().await,
        }
    }

    /// The host the store says owns `guest`.
    pub async fn owner(&self, guest: &str) -> Result<Option<String>, StoreError> {
        match &self.inner {
            Inner::Embedded(s) => Ok(s.owners.lock().expect("owners").get(guest).cloned()),
            Inner::Etcd(e) => e.owner(guest).await,
        }
    }

    /// Records a host's last-seen capabilities (the site's inventory).
    pub async fn inventory(&self, host: &str, caps: &impl Serialize) -> Result<(), StoreError> {
        match &self.inner {
            Inner::Embedded(_) => Ok(()),
            Inner::Etcd(e) => e.put_fenced(&format!("hosts/{host}"), caps).await,
        }
    }
}

impl Etcd {
    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    fn election(&self) -> String {
        self.key("leader")
    }

    async fn lead(&self) -> Result<Lead, StoreError> {
        let mut c = self.client.clone();
        let ttl = self.ttl.as_secs().max(2) as i64;
        let lease = c
            .lease_grant(ttl, None)
            .await
            .map_err(|source| StoreError::Etcd {
                what: "a lease",
                source,
            })?;
        // Blocks until every earlier candidate's key is gone; the lease is
        // renewed meanwhile, or the candidate's key would lapse in line.
        let won = tokio::select! {
            won = c.campaign(self.election(), self.me.clone(), lease.id()) => {
                won.map_err(|source| StoreError::Etcd {
                    what: "the election",
                    source,
                })?
            }
            () = self.renew(lease.id()) => return Err(StoreError::NotLeading),
        };
        let key = won.leader().ok_or(StoreError::NotLeading)?;
        let epoch = key.rev();
        *self.lead.lock().expect("lead") = Some((key.key().to_vec(), epoch, lease.id()));
        Ok(Lead {
            epoch: epoch as u64,
        })
    }

    /// Returns when this coordinator's lead ends (its lease could not be
    /// renewed for a whole lease's life).
    async fn keep_alive(&self) -> StoreError {
        let Some((_, epoch, lease)) = self.lead.lock().expect("lead").clone() else {
            return StoreError::NotLeading;
        };
        self.renew(lease).await;
        *self.lead.lock().expect("lead") = None;
        StoreError::Deposed {
            epoch: epoch as u64,
        }
    }

    /// Renews `lease` a third of its life at a time; returns when it could
    /// not for a whole life (then it is gone, or soon will be).
    async fn renew(&self, lease: i64) {
        let mut c = self.client.clone();
        let mut stream = c.lease_keep_alive(lease).await.ok();
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            let ok = match stream.as_mut() {
                Some((keeper, answers)) => async {
                    keeper.keep_alive().await.ok()?;
                    let a = tokio::time::timeout(self.ttl / 3, answers.message())
                        .await
                        .ok()?
                        .ok()??;
                    (a.ttl() > 0).then_some(())
                }
                .await
                .is_some(),
                None => false,
            };
            if ok {
                renewed = tokio::time::Instant::now();
            } else if renewed.elapsed() >= self.ttl {
                return;
            } else {
                // Re-open the stream: a member may have gone away.
                stream = c.lease_keep_alive(lease).await.ok();
            }
        }
    }

    async fn leader(&self) -> Result<Option<String>, StoreError> {
        let mut c = self.client.clone();
        match c.leader(self.election()).await {
            Ok(r) => Ok(r
                .kv()
                .and_then(|kv| kv.value_str().ok())
                .map(str::to_string)),
            // etcd answers "election: no leader" as an error.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("no leader") => Ok(None),
            Err(source) => Err(StoreError::Etcd {
                what: "who leads",
                source,
            }),
        }
    }

    fn fence(&self) -> Result<(Compare, u64), StoreError> {
        let lead = self.lead.lock().expect("lead").clone();
        let (key, rev, _) = lead.ok_or(StoreError::NotLeading)?;
        Ok((
            Compare::create_revision(key, CompareOp::Equal, rev),
            rev as u64,
        ))
    }

    /// Runs `ops` if this coordinator still leads and, when `owner` is
    /// given, that guest's owner has not changed since it was read (its
    /// key's mod revision, 0 when it has none).
    async fn txn(
        &self,
        ops: Vec<TxnOp>,
        owner: Option<(&OwnerSwap<'_>, i64)>,
        what: &'static str,
    ) -> Result<(), StoreError> {
        let (fence, epoch) = self.fence()?;
        let mut when = vec![fence];
        if let Some((w, rev)) = owner {
            when.push(Compare::mod_revision(
                self.key(&format!("owner/{}", w.guest)),
                CompareOp::Equal,
                rev,
            ));
        }
        let mut c = self.client.clone();
        let r = c
            .txn(Txn::new().when(when).and_then(ops))
            .await
            .map_err(|source| StoreError::Etcd { what, source })?;
        if !r.succeeded() {
            if let Some((w, rev)) = owner {
                let (now, now_rev) = self.owner_at(w.guest).await?;
                if now_rev != rev {
                    return Err(StoreError::OwnerChanged {
                        guest: w.guest.to_string(),
                        owner: now.unwrap_or_else(|| "nobody".into()),
                        expected: w.from.join(" or "),
                    });
                }
            }
            *self.lead.lock().expect("lead") = None;
            return Err(StoreError::Deposed { epoch });
        }
        Ok(())
    }

    async fn put_fenced(&self, key: &str, v: &impl Serialize) -> Result<(), StoreError> {
        let json = serde_json::to_vec(v).expect("store records serialise");
        self.txn(vec![TxnOp::put(self.key(key), json, None)], None, "a write")
            .await
    }

    /// A guest's owner and its key's mod revision (0: none recorded).
    async fn owner_at(&self, guest: &str) -> Result<(Option<String>, i64), StoreError> {
        let mut c = self.client.clone();
        let r = c
            .get(self.key(&format!("owner/{guest}")), None)
            .await
            .map_err(|source| StoreError::Etcd {
                what: "a guest's owner",
                source,
            })?;
        Ok(match r.kvs().first() {
            Some(kv) => (
                Some(String::from_utf8_lossy(kv.value()).into_owned()),
                kv.mod_revision(),
            ),
            None => (None, 0),
        })
    }

    async fn commit(&self, entry: &Entry, owner: Option<OwnerSwap<'_>>) -> Result<(), StoreError> {
        let key = self.key(&format!("journal/{}", entry.id));
        let mut ops = vec![if entry.phase.closed() {
            // Closed: into the history, out of the open journal.
            TxnOp::delete(key, None)
        } else {
            TxnOp::put(
                key,
                serde_json::to_vec(entry).expect("entries serialise"),
                None,
            )
        }];
        if entry.phase.closed() {
            ops.push(TxnOp::put(
                self.key(&format!("history/{}", entry.id)),
                serde_json::to_vec(entry).expect("entries serialise"),
                None,
            ));
        }
        let seen = match &owner {
            Some(w) => {
                let (now, rev) = self.owner_at(w.guest).await?;
                w.check(now.as_deref())?;
                ops.push(TxnOp::put(
                    self.key(&format!("owner/{}", w.guest)),
                    w.to,
                    None,
                ));
                Some((w, rev))
            }
            None => None,
        };
        self.txn(ops, seen, "the journal").await
    }

    async fn open_entries(&self) -> Result<Vec<Entry>, StoreError> {
        let mut c = self.client.clone();
        let prefix = self.key("journal/");
        let r = c
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|source| StoreError::Etcd {
                what: "the journal",
                source,
            })?;
        r.kvs()
            .iter()
            .map(|kv| {
                serde_json::from_slice(kv.value()).map_err(|source| StoreError::Record {
                    key: kv.key_str().unwrap_or("?").to_string(),
                    source,
                })
            })
            .collect()
    }

    async fn owner(&self, guest: &str) -> Result<Option<String>, StoreError> {
        Ok(self.owner_at(guest).await?.0)
    }
}

/// Logs a store failure once per call site, without failing the caller.
pub fn warn(coordinator: &str, what: &str, e: &StoreError) {
    tracing::warn!(coordinator = %coordinator, "{what}: {e}", e = report(e));
}
