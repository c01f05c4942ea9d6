//! Unprivileged integration tests: real sockets on loopback, real files.

mod config_files;
mod control;
mod dashboards;
mod engine;
mod errors;
mod fleet;
mod install;
mod layers;
mod logcapture;
mod processes;
mod protocol;
mod qemu;
mod relay;
mod scheduler;
