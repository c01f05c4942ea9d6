//! Unprivileged integration tests: real sockets on loopback, real files.

mod config_files;
mod engine;
mod protocol;
mod relay;
