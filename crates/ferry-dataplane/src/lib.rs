//! ferry-dataplane: what runs in the kernel's packet path, and its twins.
//!
//! - [`dataplane`]: the embedded eBPF object (built by this crate's
//!   `build.rs` with aya-build), its loader and map readers.
//! - [`router`]: `ferry router`: classification, HTB shaping and the
//!   announcement watch on a router in the migration path.
//! - [`wan`]: the router's delay lines: per-class delay, jitter, loss and
//!   rate for long-distance experiments.
//!
//! The only crate that needs the nightly toolchain and bpf-linker.

pub mod dataplane;
pub mod router;
pub mod wan;

// The layers below, under the names these modules use.
use ferry_core::{clock, config};
use ferry_metrics as metrics;
use ferry_sys::{net, netlink, netns};
