//! `ferry coordinator` configuration.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    config::{Invalid, Validate, check_name},
    control::TlsFiles,
    metrics::http::MetricsListen,
    protocol::{EncryptionMode, Limits},
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// This coordinator's name: its certificate's name, which hosts and
    /// clients check.
    pub name: String,
    /// Client and peer API (mutual TLS).
    pub listen: SocketAddr,
    /// The coordinator's CA, certificate and key (see `ferry certs`);
    /// relative paths are from the file's directory.
    pub tls: TlsFiles,
    /// The hosts this coordinator manages.
    pub hosts: Vec<HostEntry>,
    /// Other coordinators, for cross-coordinator migrations.
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
    /// Client certificate names allowed to migrate; empty: any client of the CA.
    #[serde(default)]
    pub clients: Vec<String>,
    /// What a migration gets when its request does not say.
    #[serde(default)]
    pub defaults: Defaults,
    /// How many migrations run at once; the rest queue.
    #[serde(default)]
    pub scheduler: super::scheduler::SchedulerConfig,
    /// Where the leader's epoch, the migration journal and guest ownership
    /// live: this coordinator's state_dir (embedded, the default), or an
    /// etcd cluster that several coordinators of the site share.
    #[serde(default)]
    pub store: super::store::StoreConfig,
    /// Prometheus /metrics (localhost only unless said otherwise).
    #[serde(default)]
    pub metrics: Option<MetricsListen>,
    /// Where the migration history is kept across restarts. A file loaded
    /// from YAML without it uses /var/lib/ferry/NAME; built in code without
    /// it (labs, tests), the history lives in memory only.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    /// The host's name, as its certificate says.
    pub name: String,
    /// The host's control API.
    pub control: SocketAddr,
    /// Whether the host can encrypt (it must also say so itself).
    #[serde(default = "yes")]
    pub encryption: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// The peer coordinator's name, as its certificate says.
    #[schemars(example = &"coordinator-2")]
    pub name: String,
    /// Its client and peer API.
    #[schemars(example = &"192.0.2.20:7400")]
    pub address: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Used for guests that do not say (hosts report each guest's own).
    #[serde(default)]
    pub mode: EncryptionMode,
    /// Parallel streams per migration; 0: one per CPU core of this machine, at most 8.
    #[serde(default)]
    pub streams: u16,
    #[serde(default)]
    pub limits: Limits,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            mode: EncryptionMode::Opportunistic,
            streams: 0,
            limits: Limits::default(),
        }
    }
}

impl Defaults {
    pub fn streams(&self) -> u16 {
        if self.streams > 0 {
            return self.streams;
        }
        std::thread::available_parallelism()
            .map(|n| n.get().min(8) as u16)
            .unwrap_or(2)
    }
}

impl Validate for CoordinatorConfig {
    fn validate(&self) -> Result<(), Invalid> {
        check_name("name", &self.name)?;
        let mut names = std::collections::HashSet::new();
        for (i, h) in self.hosts.iter().enumerate() {
            check_name(&format!("hosts[{i}].name"), &h.name)?;
            if !names.insert(h.name.as_str()) {
                return Err(Invalid::new(
                    format!("hosts[{i}].name"),
                    format!("host {} is listed twice", h.name),
                ));
            }
        }
        for (i, p) in self.peers.iter().enumerate() {
            check_name(&format!("peers[{i}].name"), &p.name)?;
            if p.name == self.name {
                return Err(Invalid::new(
                    format!("peers[{i}].name"),
                    "a coordinator cannot be its own peer",
                ));
            }
        }
        if self.defaults.streams > 64 {
            return Err(Invalid::new(
                "defaults.streams",
                format!("{} is out of range 0..=64", self.defaults.streams),
            ));
        }
        self.scheduler.check().map_err(|i| i.within("scheduler"))?;
        self.store.check().map_err(|i| i.within("store"))?;
        self.defaults
            .limits
            .check()
            .map_err(|i| i.within("defaults.limits"))
    }
}
