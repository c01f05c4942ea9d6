//! ferry-sys: the Linux plumbing under ferry's data and control planes.
//!
//! - [`netns`]: network namespaces: made, entered for a closure, removed.
//! - [`netlink`]: rtnetlink with netlink-packet-route (links, addresses,
//!   routes, neighbours, qdiscs and classes), never by shelling out.
//! - [`net`]: frames, AF_PACKET and ICMP sockets, gratuitous ARP / RARP.
//!
//! It depends on ferry-core (and the shared eBPF types) only.

pub mod net;
pub mod netlink;
pub mod netns;

// The vocabulary below, under the names these modules use.
use ferry_core::config;
