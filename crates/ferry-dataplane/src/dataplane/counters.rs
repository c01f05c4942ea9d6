//! The per-VLAN counters, read from the per-CPU map and summed.

use aya::maps::PerCpuHashMap;
use ferry_common::counters::{Counter, Direction, TagKind, VlanKey};

use super::{Dataplane, DataplaneError, Result};

const MAP: &str = ferry_common::names::map::VLAN_COUNTERS;

/// Traffic of one VLAN on one interface in one direction, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VlanCount {
    pub ifindex: u32,
    pub direction: Direction,
    pub tag: TagKind,
    pub vlan: u16,
    pub inner_vlan: u16,
    pub packets: u64,
    pub bytes: u64,
}

impl Dataplane {
    /// Every counter, sorted by interface, direction, tag and VLAN.
    pub fn vlan_counters(&self) -> Result<Vec<VlanCount>> {
        let map = self.ebpf.map(MAP).ok_or(DataplaneError::MissingMap(MAP))?;
        let map: PerCpuHashMap<_, VlanKey, Counter> =
            PerCpuHashMap::try_from(map).map_err(|e| DataplaneError::Map {
                name: MAP,
                source: Box::new(e),
            })?;
        let mut out = Vec::new();
        for entry in map.iter() {
            let (k, per_cpu) = entry.map_err(|e| DataplaneError::Map {
                name: MAP,
                source: Box::new(e),
            })?;
            let (Some(tag), Some(direction)) =
                (TagKind::from_u8(k.tag), Direction::from_u8(k.direction))
            else {
                continue;
            };
            let (packets, bytes) = per_cpu
                .iter()
                .fold((0u64, 0u64), |(p, b), c| (p + c.packets, b + c.bytes));
            out.push(VlanCount {
                ifindex: k.ifindex,
                direction,
                tag,
                vlan: k.vlan,
                inner_vlan: k.inner_vlan,
                packets,
                bytes,
            });
        }
        out.sort();
        Ok(out)
    }
}

/// Renders counters as an aligned text table.
pub fn summarize(dp: &Dataplane, counts: &[VlanCount]) -> String {
    let mut s = format!(
        "{:<10} {:<8} {:<8} {:>5} {:>5} {:>10} {:>12}\n",
        "interface", "dir", "tag", "vlan", "inner", "packets", "bytes"
    );
    for c in counts {
        let name = dp
            .ifname(c.ifindex)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{}", c.ifindex));
        let dir = match c.direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        let (tag, vlan, inner) = match c.tag {
            TagKind::Untagged => ("none", "-".to_string(), "-".to_string()),
            TagKind::Dot1Q => ("802.1Q", c.vlan.to_string(), opt(c.inner_vlan)),
            TagKind::Dot1Ad => ("802.1ad", c.vlan.to_string(), opt(c.inner_vlan)),
        };
        s.push_str(&format!(
            "{name:<10} {dir:<8} {tag:<8} {vlan:>5} {inner:>5} {:>10} {:>12}\n",
            c.packets, c.bytes
        ));
    }
    s
}

fn opt(v: u16) -> String {
    if v == 0 { "-".into() } else { v.to_string() }
}
