//! Host side: which TCP endpoints are migration streams, and the VLAN,
//! priority and DSCP they are put on.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigSettings {
    pub vlan: u16,
    /// 802.1p priority code point, 0..=7.
    pub pcp: u8,
    /// DSCP, 0..=63.
    pub dscp: u8,
    pub enabled: u8,
    pub _pad: [u8; 3],
}

/// An (address, TCP port) that makes a flow a migration stream when it is
/// either end of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: [u32; 4],
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigStats {
    pub tagged_packets: u64,
    pub tagged_bytes: u64,
    pub untagged_packets: u64,
    pub untagged_bytes: u64,
}

const _: () = assert!(core::mem::size_of::<MigSettings>() == 8);
const _: () = assert!(core::mem::size_of::<Endpoint>() == 20);
const _: () = assert!(core::mem::size_of::<MigStats>() == 32);

#[cfg(feature = "user")]
crate::user_pod!(MigSettings, Endpoint, MigStats);
