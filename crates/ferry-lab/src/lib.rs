//! ferry-lab: the lab, where ferry is measured and shown.
//!
//! - [`lab`]: namespace topologies, clusters of real daemons, experiments
//!   (the paper's figures), benchmarks against iperf3 and QEMU.
//! - [`demo`]: `ferry demo`: a cluster on loopback and one migration.
//! - [`report`]: figures (SVG) for experiments and benchmarks.

pub mod demo;
pub mod lab;
pub mod report;

// The layers below, under the names these modules use.
use ferry_control::{certs, client, control, coordinator, host};
use ferry_core::{clock, config, machine};
use ferry_dataplane::{dataplane, router};
use ferry_engine as engine;
use ferry_engine::guest;
use ferry_protocol as protocol;
use ferry_qemu as qemu;
use ferry_sys::{net, netlink, netns};
