//! What a host must still know after it restarts: which guests it gave away
//! and which it took in, at the switch-over's commit points. The engine
//! hands each [`Entry`] to the host's [`Journal`], which makes it durable
//! before the engine sends the message that depends on it:
//!
//! - the source journals [`Entry::Released`] before GO: a source restarted
//!   after GO must not run the guest again (it may run on the destination);
//! - the destination journals [`Entry::Ready`] before READY and
//!   [`Entry::Resumed`] before the guest runs and RESUMED goes out: a
//!   destination restarted after READY still answers the outcome query
//!   (ready but never resumed is discarded, resumed is resumed).
//!
//! A journal that cannot write fails the step, on the safe side: no GO, no
//! READY, or a discard instead of a resume.

use ferry_protocol::MigrationId;

/// One fact at a commit point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    /// Source, before GO: the guest is the destination's unless it discards it.
    Released {
        id: MigrationId,
        guest: &'a str,
        destination: &'a str,
    },
    /// Source: the destination discarded the guest after GO; it runs here again.
    Reclaimed { id: MigrationId, guest: &'a str },
    /// Destination, before READY: loaded here, waiting for GO.
    Ready {
        id: MigrationId,
        guest: &'a str,
        source: &'a str,
    },
    /// Destination, before the guest runs here.
    Resumed {
        id: MigrationId,
        guest: &'a str,
        source: &'a str,
    },
    /// Destination: the incoming copy was dropped.
    Discarded {
        id: MigrationId,
        guest: &'a str,
        reason: &'a str,
    },
}

/// What became of an incoming migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Resumed,
    Aborted(String),
}

/// A host's durable record of its commit points.
pub trait Journal: Send + Sync {
    /// Records `entry`; Ok only once it survives a crash.
    fn write(&self, entry: Entry<'_>) -> std::io::Result<()>;
    /// What this host decided on incoming migration `id`, as the journal
    /// remembers it (from before a restart): None if it never got to READY.
    fn outcome(&self, id: &MigrationId) -> Option<Outcome>;
}
