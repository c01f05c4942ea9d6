//! What a host holds: a guest of either kind. Above both `guest` and
//! `channels`, which each know only their own kind.

use std::sync::Arc;

use crate::{
    channels::ChannelGuest,
    guest::{Guest, GuestError, GuestInfo, RunState},
};

/// A guest as a host holds it: one the engine moves page by page, or one
/// whose device model moves itself over channels the engine carries.
#[derive(Clone)]
pub enum Hosted {
    Pages(Arc<dyn Guest>),
    Channels(Arc<dyn ChannelGuest>),
}

impl Hosted {
    pub fn name(&self) -> &str {
        match self {
            Hosted::Pages(g) => g.name(),
            Hosted::Channels(g) => g.name(),
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        match self {
            Hosted::Pages(g) => g.memory().len(),
            Hosted::Channels(g) => g.memory_bytes(),
        }
    }

    pub fn run_state(&self) -> RunState {
        match self {
            Hosted::Pages(g) => g.run_state(),
            Hosted::Channels(g) => g.run_state(),
        }
    }

    pub fn info(&self) -> GuestInfo {
        match self {
            Hosted::Pages(g) => g.info(),
            Hosted::Channels(g) => g.info(),
        }
    }

    pub fn resume(&self) -> Result<(), GuestError> {
        match self {
            Hosted::Pages(g) => g.resume(),
            Hosted::Channels(g) => g.resume(),
        }
    }

    pub fn release(&self) {
        match self {
            Hosted::Pages(g) => g.release(),
            Hosted::Channels(g) => g.release(),
        }
    }

    /// The page guest, if this is one.
    pub fn pages(&self) -> Option<&Arc<dyn Guest>> {
        match self {
            Hosted::Pages(g) => Some(g),
            Hosted::Channels(_) => None,
        }
    }
}
