//! Router classification: ordered rules map frames to classes; per-class
//! counters, HTB class handles and token-bucket policers.

/// Most rules a router evaluates (in order, first match wins).
pub const MAX_RULES: u32 = 64;
/// Class ids are 1..MAX_CLASSES; 0 means "no class".
pub const MAX_CLASSES: u32 = 64;

/// `Rule::flags`: which fields a rule matches on.
pub mod m {
    pub const TAG: u16 = 1 << 0;
    pub const VLAN: u16 = 1 << 1;
    pub const DSCP: u16 = 1 << 2;
    pub const PROTO: u16 = 1 << 3;
    pub const FAMILY: u16 = 1 << 4;
    pub const SRC: u16 = 1 << 5;
    pub const DST: u16 = 1 << 6;
    pub const SPORT: u16 = 1 << 7;
    pub const DPORT: u16 = 1 << 8;
    pub const INNER_VLAN: u16 = 1 << 9;
}

/// One classification rule. Addresses are four big-endian-loaded u32 words
/// (IPv4 in the first word), pre-masked by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub class: u16,
    pub flags: u16,
    pub tag: u8,
    pub dscp: u8,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub vlan: u16,
    pub inner_vlan: u16,
    pub sport_lo: u16,
    pub sport_hi: u16,
    pub dport_lo: u16,
    pub dport_hi: u16,
    pub src_net: [u32; 4],
    pub src_mask: [u32; 4],
    pub dst_net: [u32; 4],
    pub dst_mask: [u32; 4],
}

/// Index 0 of `ROUTER_SETTINGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterSettings {
    pub rule_count: u32,
    /// Class of frames no rule matches (0: none).
    pub default_class: u16,
    pub _pad: u16,
}

/// Per class, indexed by class id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassEntry {
    /// skb->priority for HTB: major << 16 | minor (0: leave it alone).
    pub priority: u32,
    pub _pad: u32,
    /// Token-bucket policer: bytes per second (0: no policer) and burst bytes.
    pub police_rate: u64,
    pub police_burst: u64,
}

/// Policer state, indexed by class id; shared by all CPUs, updated with
/// atomic instructions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicerState {
    pub tokens: i64,
    pub last_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassKey {
    pub ifindex: u32,
    pub class: u16,
    /// A `Direction` as u8.
    pub direction: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCounter {
    pub packets: u64,
    pub bytes: u64,
    /// Dropped by the class's policer.
    pub drops: u64,
}

const _: () = assert!(core::mem::size_of::<Rule>() == 84);
const _: () = assert!(core::mem::size_of::<ClassKey>() == 8);
const _: () = assert!(core::mem::size_of::<RouterSettings>() == 8);
const _: () = assert!(core::mem::size_of::<ClassEntry>() == 24);
const _: () = assert!(core::mem::size_of::<PolicerState>() == 16);
const _: () = assert!(core::mem::size_of::<ClassCounter>() == 24);

#[cfg(feature = "user")]
crate::user_pod!(
    Rule,
    RouterSettings,
    ClassEntry,
    PolicerState,
    ClassKey,
    ClassCounter
);
