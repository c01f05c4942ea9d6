//! A host's networks: migration streams tagged onto the migration VLAN by
//! ferry's eBPF programs, and guests announced where they land.

use ferry_core::error::report;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use super::config::HostNetwork;
use crate::{
    dataplane::Dataplane,
    guest::Nic,
    net::{
        PacketSocket,
        announce::{Announcement, Schedule, announce},
    },
};

/// Why a host's networks could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "tagging migration streams needs the listener's address: bind `migration` (or set `advertise`) to a specific address, not {0}"
    )]
    Unspecified(SocketAddr),
    #[error("cannot load the migration VLAN programs")]
    Load(#[source] crate::dataplane::DataplaneError),
    #[error("cannot tag migration streams on {interface} (VLAN {vlan})")]
    Tagging {
        interface: String,
        vlan: u16,
        #[source]
        source: crate::dataplane::DataplaneError,
    },
    #[error("cannot open guest network interface {interface}")]
    GuestInterface {
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

/// Opened at start, in the host's namespace: everything later (tokio
/// workers, announcer threads) uses these handles, wherever it runs.
pub struct HostNet {
    tagging: Option<Mutex<Dataplane>>,
    guest_socket: Option<Arc<PacketSocket>>,
    schedule: Schedule,
}

impl HostNet {
    /// `listener`: where this host accepts migration streams.
    pub fn start(cfg: &HostNetwork, listener: SocketAddr) -> Result<Self, NetworkError> {
        let tagging = match (&cfg.migration_interface, cfg.migration_vlan) {
            (Some(ifname), Some(v)) => {
                if listener.ip().is_unspecified() {
                    return Err(NetworkError::Unspecified(listener));
                }
                let mut dp = Dataplane::load(None).map_err(NetworkError::Load)?;
                dp.set_migration_vlan(v.vlan, v.pcp, v.dscp)
                    .and_then(|()| dp.attach_migration_tagging(ifname))
                    .and_then(|()| dp.add_migration_endpoint(listener))
                    .map_err(|source| NetworkError::Tagging {
                        interface: ifname.clone(),
                        vlan: v.vlan,
                        source,
                    })?;
                tracing::info!(interface = %ifname, vlan = v.vlan, pcp = v.pcp, dscp = v.dscp, "migration streams tagged");
                Some(Mutex::new(dp))
            }
            _ => None,
        };
        let guest_socket = match &cfg.guest_interface {
            Some(ifname) => {
                let socket =
                    PacketSocket::bind(ifname).map_err(|source| NetworkError::GuestInterface {
                        interface: ifname.clone(),
                        source,
                    })?;
                Some(Arc::new(socket))
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
