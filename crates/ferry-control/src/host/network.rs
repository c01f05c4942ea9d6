//! A host's networks: migration streams tagged onto the migration VLAN by
//! ferry's eBPF programs, and guests announced where they land.

use ferry_core::error::report;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context;

use super::config::HostNetwork;
use crate::{
    dataplane::Dataplane,
    guest::Nic,
    net::{
        PacketSocket,
        announce::{Announcement, Schedule, announce},
    },
};

/// Opened at start, in the host's namespace: everything later (tokio
/// workers, announcer threads) uses these handles, wherever it runs.
pub struct HostNet {
    tagging: Option<Mutex<Dataplane>>,
    guest_socket: Option<Arc<PacketSocket>>,
    schedule: Schedule,
}

impl HostNet {
    /// `listener`: where this host accepts migration streams.
    pub fn start(cfg: &HostNetwork, listener: SocketAddr) -> anyhow::Result<Self> {
        let tagging = match (&cfg.migration_interface, cfg.migration_vlan) {
            (Some(ifname), Some(v)) => {
                anyhow::ensure!(
                    !listener.ip().is_unspecified(),
                    "tagging migration streams needs the listener's address: bind `migration` (or set `advertise`) to a specific address, not {listener}"
                );
                let mut dp =
                    Dataplane::load(None).context("loading the migration VLAN programs")?;
                dp.set_migration_vlan(v.vlan, v.pcp, v.dscp)?;
                dp.attach_migration_tagging(ifname)?;
                dp.add_migration_endpoint(listener)?;
                tracing::info!(interface = %ifname, vlan = v.vlan, pcp = v.pcp, dscp = v.dscp, "migration streams tagged");
                Some(Mutex::new(dp))
            }
            _ => None,
        };
        let guest_socket = match &cfg.guest_interface {
            Some(ifname) => {
                Some(Arc::new(PacketSocket::bind(ifname).with_context(|| {
                    format!("guest network interface {ifname}")
                })?))
            }
            None => None,
        };
        Ok(Self {
            tagging,
            guest_socket,
            schedule: cfg.announce,
        })
    }

    /// Streams to `peer` (a destination's listener) are migration streams.
    pub fn add_peer(&self, peer: SocketAddr) {
        if let Some(dp) = &self.tagging
            && let Err(e) = dp.lock().expect("dataplane").add_migration_endpoint(peer)
        {
            tracing::warn!(peer = %peer, error = %report(&e), "migration streams to this peer go untagged");
        }
    }

    /// Tagged and untagged (popped) packets and bytes so far.
    pub fn tagging_stats(&self) -> Option<ferry_common::migration::MigStats> {
        self.tagging
            .as_ref()
            .and_then(|dp| dp.lock().expect("dataplane").migration_stats().ok())
    }

    /// Announces `nic` on the guest network, in the background.
    pub fn announce(&self, guest: &str, nic: Nic) {
        let Some(sock) = self.guest_socket.clone() else {
            return;
        };
        let (schedule, guest) = (self.schedule, guest.to_string());
        let a = Announcement {
            mac: nic.mac,
            ipv4: nic.ipv4,
            tags: Vec::new(),
        };
        std::thread::spawn(move || match announce(&sock, &a, &schedule) {
            Ok(frames) => {
                tracing::info!(guest = %guest, mac = %a.mac, frames, rounds = schedule.rounds, "guest announced")
            }
            Err(e) => {
                tracing::warn!(guest = %guest, error = %report(&e), "announcing the guest failed")
            }
        });
    }
}
