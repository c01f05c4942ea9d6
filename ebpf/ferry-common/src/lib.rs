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
