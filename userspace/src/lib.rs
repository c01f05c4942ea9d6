//! ferry: an eBPF-assisted, network-aware live-migration appliance.
//!
//! Modules by concern:
//! - [`control`]: the control plane: mutual TLS and JSON messages between
//!   coordinator, hosts and clients; [`certs`] makes their certificates.
//! - [`coordinator`], [`host`]: the daemons: `ferry coordinator` hands out
//!   migration specs; `ferry host` runs guests and migrates them.
//! - [`config`], [`clock`] (crate `ferry-core`): YAML loading and its
//!   errors, units, names; the monotonic clock. [`config_check`] tells which
//!   file is which kind.
//! - [`netns`], [`netlink`]: network namespaces and rtnetlink (interfaces,
//!   addresses, routes, neighbours, qdiscs).
//! - [`net`]: frames, AF_PACKET and ICMP sockets.
//! - [`protocol`] (crate `ferry-protocol`): the encrypted migration
//!   protocol (AEAD backends, key schedule, records, handshake, the spec).
//! - [`engine`], [`guest`] (crate `ferry-engine`): the live-migration
//!   engine (pre-copy, SDPS, switch-over) and what it migrates: guest memory
//!   with a dirty log, and the synthetic guest with its workloads.
//! - [`metrics`]: Prometheus metric families.
//! - [`dataplane`]: the embedded eBPF object, its loader and map readers.
//! - [`router`]: `ferry router`: classification, shaping and the
//!   announcement watch on a router in the migration path.
//! - [`wan`]: the router's delay lines: per-class delay, jitter, loss and
//!   rate for long-distance experiments.
//! - [`lab`]: namespace topologies for the lab, the demo and the tests.
//! - [`demo`]: `ferry demo`.
//! - [`report`]: figures (SVG) for experiments and benchmarks.

pub mod certs;
pub mod client;
pub mod config_check;
pub mod control;
pub mod coordinator;
pub mod dataplane;
pub mod demo;
pub mod host;
pub mod lab;
pub mod metrics;
pub mod net;
pub mod netlink;
pub mod netns;
pub mod report;
pub mod router;
pub mod wan;

// The layers below, under the names the rest of this crate uses.
pub use ferry_core::{clock, config, machine};
pub use ferry_engine as engine;
pub use ferry_engine::guest;
pub use ferry_protocol as protocol;
pub use ferry_qemu as qemu;

/// `ferry --version`: crate version and the git revision it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("FERRY_GIT_REV"), ")");
