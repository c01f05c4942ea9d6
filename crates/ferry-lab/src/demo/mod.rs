//! `ferry demo`: ferry's main job on its built-in defaults.

mod config;
pub mod migration;
pub mod repeat;

pub use config::{DemoConfig, DemoGuest};
