//! A ferry deployment inside this process, on loopback: certificates in a
//! temporary directory, coordinators and hosts with the real daemons' code
//! paths (mutual TLS, control API, migration listeners). Used by `ferry
//! demo` and the tests.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc};

use crate::lab::error::Context;

use crate::{
    certs,
    config::ByteSize,
    control::{Client, Role, TlsFiles, tls},
    coordinator::{
        Coordinator, CoordinatorConfig, CoordinatorRef, KeySource,
        config::{Defaults, HostEntry, PeerEntry},
    },
    host::{GuestConfig, Host, HostConfig},
    protocol::Backend,
};

/// One host of a cluster.
#[derive(Clone, Debug)]
pub struct HostSpec {
    pub name: String,
    pub coordinator: String,
    pub encryption: bool,
    pub capacity: ByteSize,
    pub backend: Backend,
    pub guests: Vec<GuestConfig>,
    pub network: Option<crate::host::config::HostNetwork>,
}

/// What to start.
#[derive(Clone, Debug, Default)]
pub struct ClusterSpec {
    pub coordinators: Vec<String>,
    pub hosts: Vec<HostSpec>,
    pub defaults: Defaults,
    pub scheduler: crate::coordinator::scheduler::SchedulerConfig,
}

pub struct Cluster {
    dir: PathBuf,
    pub coordinators: BTreeMap<String, (Arc<Coordinator>, SocketAddr)>,
    pub hosts: BTreeMap<String, Arc<Host>>,
    /// A client certified as "admin".
    pub client: Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    /// Starts everything; coordinators are each other's peers.
    pub async fn start(
        spec: ClusterSpec,
        key_source: Option<KeySource>,
    ) -> crate::lab::error::Result<Cluster> {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).expect("the OS random source failed");
        let dir = std::env::temp_dir().join(format!(
            "ferry-cluster-{}-{}",
            std::process::id(),
            u32::from_ne_bytes(b)
        ));
        let mut who: Vec<(Role, String)> = spec
            .coordinators
            .iter()
            .map(|c| (Role::Coordinator, c.clone()))
            .collect();
        who.extend(spec.hosts.iter().map(|h| (Role::Host, h.name.clone())));
        who.push((Role::Client, "admin".into()));
        certs::issue(&dir, &who).context("issuing certificates")?;
        let mut cluster = Cluster {
            dir: dir.clone(),
            coordinators: BTreeMap::new(),
            hosts: BTreeMap::new(),
            client: Client::new(&TlsFiles::in_dir(&dir, "admin"))?,
            tasks: Vec::new(),
        };
        let mut entries: BTreeMap<String, Vec<HostEntry>> = BTreeMap::new();
        for h in &spec.hosts {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let control = listener.local_addr()?;
            let hc = HostConfig {
                name: h.name.clone(),
                control,
                migration: "127.0.0.1:0".parse()?,
                advertise: None,
                tls: TlsFiles::in_dir(&dir, &h.name),
                encryption: h.encryption,
                backend: h.backend,
                memory_capacity: h.capacity,
                coordinators: vec![h.coordinator.clone()],
                guests: h.guests.clone(),
                metrics: None,
                network: h.network.clone(),
                software_dirty_log: false,
                state_dir: Some(dir.join(format!("{}-state", h.name))),
            };
            let host = tokio::task::spawn_blocking(move || Host::start(hc)).await??;
            let tls = tls::server_config(&host.config().tls)?;
            cluster
                .tasks
                .push(tokio::spawn(host.clone().serve_on(listener, tls)));
            entries
                .entry(h.coordinator.clone())
                .or_default()
                .push(HostEntry {
                    name: h.name.clone(),
                    control,
                    encryption: true,
                });
            cluster.hosts.insert(h.name.clone(), host);
        }
        let mut listeners = Vec::new();
        for c in &spec.coordinators {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            listeners.push((c.clone(), l.local_addr()?, l));
        }
        let peers: Vec<PeerEntry> = listeners
            .iter()
            .map(|(n, a, _)| PeerEntry {
                name: n.clone(),
                address: *a,
            })
            .collect();
        for (name, addr, listener) in listeners {
            let cc = CoordinatorConfig {
                name: name.clone(),
                listen: addr,
                tls: TlsFiles::in_dir(&dir, &name),
                hosts: entries.remove(&name).unwrap_or_default(),
                peers: peers.iter().filter(|p| p.name != name).cloned().collect(),
                clients: vec!["admin".into()],
                defaults: spec.defaults.clone(),
                scheduler: spec.scheduler.clone(),
                store: Default::default(),
                metrics: None,
                state_dir: None,
            };
            let tls = tls::server_config(&cc.tls)?;
            let c = match &key_source {
                Some(k) => Coordinator::with_key_source(cc, k.clone())?,
                None => Coordinator::new(cc)?,
            };
            cluster
                .tasks
                .push(tokio::spawn(c.clone().serve_on(listener, tls)));
            cluster.coordinators.insert(name, (c, addr));
        }
        Ok(cluster)
    }

    pub fn coordinator(&self, name: &str) -> CoordinatorRef {
        let (_, addr) = &self.coordinators[name];
        CoordinatorRef {
            name: name.to_string(),
            addr: *addr,
        }
    }

    pub fn host(&self, name: &str) -> &Arc<Host> {
        &self.hosts[name]
    }

    /// Certificates and keys of this cluster (e.g. to make a rogue client).
    pub fn tls_dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
