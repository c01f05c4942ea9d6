//! ferry-control: the control plane.
//!
//! - [`control`]: mutual TLS and the JSON messages between coordinator,
//!   hosts and clients; [`certs`] makes their certificates.
//! - [`coordinator`]: `ferry coordinator`: hands out migration specs (a key
//!   per migration), decides the commit, keeps the history.
//! - [`host`]: `ferry host`: runs guests, migrates them, keeps the journal
//!   of what it owns, released and received.
//! - [`client`]: what `ferry migrate` / `status` speak, and the progress.

pub mod certs;
pub mod client;
pub mod control;
pub mod coordinator;
pub mod host;
mod state;

pub use state::{ServeError, StateError};

// The layers below, under the names these modules use.
use ferry_core::{config, machine};
use ferry_dataplane::dataplane;
use ferry_engine as engine;
use ferry_engine::guest;
use ferry_metrics as metrics;
use ferry_protocol as protocol;
use ferry_qemu as qemu;
use ferry_sys::{net, netlink};

/// Crate version and the git revision it was built from (`ferry
/// --version`, and what a host reports of itself).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("FERRY_GIT_REV"), ")");
