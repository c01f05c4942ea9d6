//! ferry: an eBPF-assisted, network-aware live-migration appliance.
//!
//! This crate is the `ferry` binary (clap, dispatch, output), the
//! integration and system tests, and one namespace over the crates below
//! it, so that tests and tools reach every layer as `ferry::<module>`:
//! - [`config`], [`clock`], [`machine`] (ferry-core): YAML loading and its
//!   errors, units, names; the monotonic clock; a QEMU device model.
//! - [`protocol`] (ferry-protocol): the encrypted migration protocol (AEAD
//!   backends, key schedule, records, handshake, the spec).
//! - [`engine`], [`guest`] (ferry-engine) and [`qemu`] (ferry-qemu): the
//!   live-migration engine and what it migrates.
//! - [`netns`], [`netlink`], [`net`] (ferry-sys): namespaces, rtnetlink,
//!   packet and ICMP sockets.
//! - [`metrics`] (ferry-metrics): Prometheus metric families.
//! - [`dataplane`], [`router`], [`wan`] (ferry-dataplane): the eBPF object
//!   and its loader, `ferry router`, the delay lines.
//! - [`control`], [`certs`], [`coordinator`], [`host`], [`client`]
//!   (ferry-control): the control plane and the daemons.
//! - [`lab`], [`demo`], [`report`] (ferry-lab): topologies, experiments,
//!   benches, `ferry demo`, figures.
//! - [`config_check`], [`config_reference`] (here): which file is which
//!   kind; the configuration reference rendered from the config types.

pub mod config_check;
pub mod config_reference;

pub use ferry_control::{VERSION, certs, client, control, coordinator, host};
pub use ferry_core::{clock, config, machine};
pub use ferry_dataplane::{dataplane, router, wan};
pub use ferry_engine as engine;
pub use ferry_engine::guest;
pub use ferry_lab::{demo, lab, report};
pub use ferry_metrics as metrics;
pub use ferry_protocol as protocol;
pub use ferry_qemu as qemu;
pub use ferry_sys::{net, netlink, netns};
