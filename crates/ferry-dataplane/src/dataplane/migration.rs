//! The host's migration tagging: settings, endpoints, statistics.

use ferry_common::names::{map, program};
use std::net::{IpAddr, SocketAddr};

use aya::{
    maps::{Array, HashMap, PerCpuArray},
    programs::TcAttachType,
};
use ferry_common::migration::{Endpoint, MigSettings, MigStats};

use super::{Dataplane, Result, map_err};

/// The map key of a TCP endpoint: addresses as big-endian words, IPv4 in
/// the first word, as the programs load them.
pub fn endpoint(a: SocketAddr) -> Endpoint {
    let (addr, family) = ip_words(a.ip());
    Endpoint {
        addr,
        port: a.port(),
        family,
        _pad: 0,
    }
}

/// An address as the programs load it: four big-endian words, IPv4 in the
/// first, and its family (4 or 6).
pub fn ip_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(v4) => ([u32::from(v4), 0, 0, 0], 4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], 6)
        }
    }
}

impl Dataplane {
    /// Tags migration streams leaving `ifname` and untags them arriving.
    pub fn attach_migration_tagging(&mut self, ifname: &str) -> Result<()> {
        self.attach_tc(program::MIG_TAG_EGRESS, ifname, TcAttachType::Egress)?;
        self.attach_tc(program::MIG_UNTAG_INGRESS, ifname, TcAttachType::Ingress)?;
        Ok(())
    }

    pub fn set_migration_vlan(&mut self, vlan: u16, pcp: u8, dscp: u8) -> Result<()> {
        let mut a: Array<_, MigSettings> = Array::try_from(self.map_mut(map::MIG_SETTINGS)?)
            .map_err(map_err(map::MIG_SETTINGS))?;
        a.set(
            0,
            MigSettings {
                vlan,
                pcp,
                dscp,
                enabled: 1,
                _pad: [0; 3],
            },
            0,
        )
        .map_err(map_err(map::MIG_SETTINGS))
    }

    /// Flows with `ep` at either end are migration streams.
    pub fn add_migration_endpoint(&mut self, ep: SocketAddr) -> Result<()> {
        let mut m: HashMap<_, Endpoint, u8> = HashMap::try_from(self.map_mut(map::MIG_ENDPOINTS)?)
            .map_err(map_err(map::MIG_ENDPOINTS))?;
        m.insert(endpoint(ep), 1, 0)
            .map_err(map_err(map::MIG_ENDPOINTS))
    }

    pub fn remove_migration_endpoint(&mut self, ep: SocketAddr) -> Result<()> {
        let mut m: HashMap<_, Endpoint, u8> = HashMap::try_from(self.map_mut(map::MIG_ENDPOINTS)?)
            .map_err(map_err(map::MIG_ENDPOINTS))?;
        match m.remove(&endpoint(ep)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(map::MIG_ENDPOINTS)(e)),
        }
    }

    pub fn migration_stats(&self) -> Result<MigStats> {
        let a: PerCpuArray<_, MigStats> =
            PerCpuArray::try_from(self.map(map::MIG_STATS)?).map_err(map_err(map::MIG_STATS))?;
        let v = a.get(&0, 0).map_err(map_err(map::MIG_STATS))?;
        Ok(v.iter().fold(MigStats::default(), |a, s| MigStats {
            tagged_packets: a.tagged_packets + s.tagged_packets,
            tagged_bytes: a.tagged_bytes + s.tagged_bytes,
            untagged_packets: a.untagged_packets + s.untagged_packets,
            untagged_bytes: a.untagged_bytes + s.untagged_bytes,
        }))
    }
}
