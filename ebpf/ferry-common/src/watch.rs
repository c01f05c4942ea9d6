//! Announcement watch: RARP, gratuitous ARP and unsolicited neighbour
//! advertisements; where each MAC was last seen, and when it moved.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacKey {
    pub mac: [u8; 6],
    pub vlan: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MacEntry {
    pub ifindex: u32,
    /// Set when the MAC moved and no data frame came from it since.
    pub awaiting_data: u32,
    pub first_ns: u64,
    pub last_ns: u64,
    pub announcements: u64,
    pub moves: u64,
}

/// What an event reports.
pub mod event {
    pub const ANNOUNCE: u8 = 1;
    pub const MOVE: u8 = 2;
    pub const FIRST_DATA: u8 = 3;
}

/// Kinds of announcement.
pub mod announce {
    pub const RARP: u8 = 1;
    pub const GARP: u8 = 2;
    /// Unsolicited IPv6 neighbour advertisement.
    pub const UNA: u8 = 3;
}

/// One ring-buffer event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchEvent {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// MOVE: when the MAC was last seen on its old port.
    pub old_last_ns: u64,
    pub ifindex: u32,
    pub old_ifindex: u32,
    pub kind: u8,
    pub announce: u8,
    pub vlan: u16,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// Announced address (IPv4 in the first 4 bytes, or IPv6).
    pub ip: [u8; 16],
}

pub const MAC_TABLE_ENTRIES: u32 = 65536;

const _: () = assert!(core::mem::size_of::<MacEntry>() == 40);
const _: () = assert!(core::mem::size_of::<MacKey>() == 8);
const _: () = assert!(core::mem::size_of::<WatchEvent>() == 56);

#[cfg(feature = "user")]
crate::user_pod!(MacKey, MacEntry, WatchEvent);
