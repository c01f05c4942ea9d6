//! Per-interface, per-direction, per-VLAN packet and byte counters.

/// How a frame was tagged, by its outermost tag.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TagKind {
    Untagged = 0,
    /// IEEE 802.1Q (TPID 0x8100): a customer VLAN.
    Dot1Q = 1,
    /// IEEE 802.1ad (TPID 0x88a8): a service VLAN, usually with an inner 802.1Q tag.
    Dot1Ad = 2,
}

impl TagKind {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Untagged),
            1 => Some(Self::Dot1Q),
            2 => Some(Self::Dot1Ad),
            _ => None,
        }
    }
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

impl Direction {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Ingress),
            1 => Some(Self::Egress),
            _ => None,
        }
    }
}

/// Key of the `VLAN_COUNTERS` per-CPU hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VlanKey {
    pub ifindex: u32,
    /// VLAN id of the outermost tag (0 when untagged).
    pub vlan: u16,
    /// VLAN id of the second tag of a double-tagged frame (0 when absent).
    pub inner_vlan: u16,
    /// A [`TagKind`] as u8.
    pub tag: u8,
    /// A [`Direction`] as u8.
    pub direction: u8,
    pub _pad: [u8; 2],
}

/// Value of the `VLAN_COUNTERS` map, one per CPU; userspace sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    /// Frame bytes as on the wire, without FCS (an offloaded tag counts its 4 bytes).
    pub bytes: u64,
}

/// Capacity of the counters map: interfaces x directions x VLANs seen.
pub const VLAN_COUNTERS_MAX_ENTRIES: u32 = 16384;

const _: () = assert!(core::mem::size_of::<VlanKey>() == 12);
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

#[cfg(feature = "user")]
crate::user_pod!(VlanKey, Counter);
