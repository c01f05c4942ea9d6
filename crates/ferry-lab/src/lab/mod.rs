//! The lab: network namespaces wired as sites, hosts, routers and links on
//! one machine. The integration tests, `ferry demo` and `ferry lab` all
//! build their networks with [`Topology`].

pub mod cluster;
pub mod counters;
mod counters_config;
pub mod dataplane_bench;
pub mod error;
pub mod experiment;
pub mod iperf;
pub mod machine;
pub mod migration_bench;
pub mod qemu;
pub mod qemu_bench;
pub mod topology;
pub mod wan_bench;

pub use counters_config::CountersConfig;
pub use topology::{Topology, TopologyError};

pub use error::LabError;
