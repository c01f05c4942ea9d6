//! `ferry demo`: ferry's main job on its built-in defaults.

pub mod migration;
pub mod repeat;
