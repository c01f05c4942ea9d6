//! Privileged integration tests: real namespaces, real eBPF programs, real
//! frames. Every test makes its own namespaces (removed on drop, panics
//! included) and sends traffic only inside them.

mod common;
mod harness;
mod host_network;
mod prometheus;
mod qemu_network;

mod router;
mod vlan_counters;
mod wan;
