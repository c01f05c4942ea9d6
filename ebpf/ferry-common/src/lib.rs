//! Types shared between ferry's eBPF programs and its userspace loader.
//!
//! Every type here is `#[repr(C)]`, has explicit padding fields (the kernel
//! hashes map keys byte by byte, so padding must be deterministic) and a layout
//! asserted at compile time, because the two sides are compiled by different
//! compilers for different targets.
#![no_std]

pub mod classify;
pub mod counters;
pub mod migration;
pub mod wan;
pub mod watch;

/// The names of the object's maps and programs, as userspace looks them up.
/// The eBPF crate's statics and functions carry these names (its attributes
/// take no constants); a test of the data plane parses the built object and
/// finds each name here, and nothing else, in it.
pub mod names {
    pub mod map {
        pub const VLAN_COUNTERS: &str = "VLAN_COUNTERS";
        pub const MAC_TABLE: &str = "MAC_TABLE";
        pub const WATCH_EVENTS: &str = "WATCH_EVENTS";
        pub const MIG_SETTINGS: &str = "MIG_SETTINGS";
        pub const MIG_ENDPOINTS: &str = "MIG_ENDPOINTS";
        pub const MIG_STATS: &str = "MIG_STATS";
        pub const RULES: &str = "RULES";
        pub const ROUTER_SETTINGS: &str = "ROUTER_SETTINGS";
        pub const CLASSES: &str = "CLASSES";
        pub const POLICERS: &str = "POLICERS";
        pub const CLASS_COUNTERS: &str = "CLASS_COUNTERS";
        pub const WAN_LINES: &str = "WAN_LINES";
        pub const ALL: &[&str] = &[
            VLAN_COUNTERS,
            MAC_TABLE,
            WATCH_EVENTS,
            MIG_SETTINGS,
            MIG_ENDPOINTS,
            MIG_STATS,
            RULES,
            ROUTER_SETTINGS,
            CLASSES,
            POLICERS,
            CLASS_COUNTERS,
            WAN_LINES,
        ];
    }

    pub mod program {
        pub const VLAN_COUNT_INGRESS: &str = "vlan_count_ingress";
        pub const VLAN_COUNT_EGRESS: &str = "vlan_count_egress";
        pub const WATCH_INGRESS: &str = "watch_ingress";
        pub const MIG_TAG_EGRESS: &str = "mig_tag_egress";
        pub const MIG_UNTAG_INGRESS: &str = "mig_untag_ingress";
        pub const CLASSIFY_INGRESS: &str = "classify_ingress";
        pub const CLASSIFY_EGRESS: &str = "classify_egress";
        pub const CLASSIFY_XDP: &str = "classify_xdp";
        pub const ALL: &[&str] = &[
            VLAN_COUNT_INGRESS,
            VLAN_COUNT_EGRESS,
            WATCH_INGRESS,
            MIG_TAG_EGRESS,
            MIG_UNTAG_INGRESS,
            CLASSIFY_INGRESS,
            CLASSIFY_EGRESS,
            CLASSIFY_XDP,
        ];
    }
}

/// Ethertypes the programs recognise.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const RARP: u16 = 0x8035;
    pub const VLAN_8021Q: u16 = 0x8100;
    pub const VLAN_8021AD: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
}

/// IP protocol numbers the programs recognise.
pub mod ipproto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// Implements `aya::Pod` for the listed types on the userspace side.
#[cfg(feature = "user")]
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: #[repr(C)], Copy, only integer fields and explicit padding.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
#[cfg(feature = "user")]
pub(crate) use user_pod;
