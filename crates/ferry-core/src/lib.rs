//! ferry-core: the vocabulary every ferry crate shares, and nothing else.
//!
//! - [`config`]: YAML loading with `file:line:col: field: message` errors,
//!   [`config::Validate`], units (durations, sizes, rates, ratios), names.
//! - [`clock`]: the monotonic clock userspace shares with the eBPF programs.
//! - [`MacAddr`], [`parse_cidr`]: link and network addresses.
//! - [`error`]: errors as text, each cause said once.
//! - [`listen`]: what a listener does after a failed accept.
//! - [`fs`]: files written so that a crash leaves them whole.
//! - [`machine`]: a QEMU guest's device model, as hosts and specs carry it.
//!
//! It depends on no other ferry crate; everything else may depend on it.

mod cidr;
pub mod clock;
pub mod config;
pub mod error;
pub mod fs;
pub mod listen;
mod mac;
pub mod machine;

pub use cidr::{BadCidr, parse_cidr};
pub use mac::MacAddr;
