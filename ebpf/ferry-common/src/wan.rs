//! The WAN delay line's steering: which (interface, class) egress frames go
//! to a delay line, and the mark that says a frame already went through one.

/// skb->mark of frames the delay line sends back out: the egress program
/// lets them through (once) instead of steering them again.
pub const DELAYED_MARK: u32 = 0xfe77_0d1a;

/// Most (interface, class) pairs with a delay line.
pub const MAX_LINES: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LineKey {
    /// The interface whose egress is delayed.
    pub ifindex: u32,
    pub class: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineEntry {
    /// The tap the delay line reads from.
    pub tap_ifindex: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC ns until which the delay line is known alive; the
    /// daemon refreshes it. Past it (a crashed or stopped daemon whose
    /// pinned programs stay) frames pass undelayed rather than vanish into
    /// a tap nobody reads.
    pub alive_until_ns: u64,
}

const _: () = assert!(core::mem::size_of::<LineKey>() == 8);
const _: () = assert!(core::mem::size_of::<LineEntry>() == 16);

#[cfg(feature = "user")]
crate::user_pod!(LineKey, LineEntry);
