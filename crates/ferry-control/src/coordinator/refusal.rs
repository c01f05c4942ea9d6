//! Why a coordinator refused a request or could not carry it out. The
//! client hears the message with its causes (`report`); every refusal that
//! needs no memory to move happens before any does.

use std::path::PathBuf;

use crate::{
    control::ControlError,
    protocol::{MigrationId, SpecError, spec::ModeError},
};

use super::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    // Who may ask what.
    #[error("{who} is not a peer coordinator of {coordinator}")]
    NotPeer { who: String, coordinator: String },
    #[error("a coordinator does not answer {0}")]
    NotAnswered(&'static str),
    #[error("{0} may not use the client API")]
    NotClient(String),
    #[error("client {client} is not in {coordinator}'s clients list")]
    NotListed { client: String, coordinator: String },

    // Names this coordinator does not know.
    #[error("{coordinator} manages no host named {host}")]
    NoHost { coordinator: String, host: String },
    #[error("{coordinator} has no peer coordinator named {peer}")]
    NoPeer { coordinator: String, peer: String },
    #[error("{coordinator} knows no migration {id}")]
    NoMigration {
        coordinator: String,
        id: MigrationId,
    },
    #[error("migration {id} of {guest} has ended ({state}): {what}")]
    Ended {
        id: MigrationId,
        guest: String,
        state: String,
        what: &'static str,
    },

    // Talking to hosts and peers.
    /// `who` says what it is: "host a", "coordinator b", "source a".
    #[error("{who} answered {answer}")]
    Answered { who: String, answer: String },
    #[error("host {host} is unreachable")]
    Unreachable {
        host: String,
        #[source]
        source: ControlError,
    },
    #[error("coordinator {peer}")]
    Peer {
        peer: String,
        #[source]
        source: ControlError,
    },
    /// `host` as the message names it: "a", "the source a".
    #[error("cannot reach {host}")]
    CannotReach {
        host: String,
        #[source]
        source: ControlError,
    },
    /// The host's own refusal, passed on as it said it.
    #[error(transparent)]
    Call(ControlError),
    /// The source's own refusal of a limit change.
    #[error("the source {0}")]
    SourceSaid(ControlError),

    // Planning a migration.
    #[error("no host of {coordinator} runs a guest named {guest}")]
    GuestNowhere { coordinator: String, guest: String },
    #[error("host {host} has no guest named {guest}")]
    NoGuest { host: String, guest: String },
    #[error("guest {guest} already runs on {host}")]
    AlreadyThere { guest: String, host: String },
    #[error(
        "host {0} is cordoned for maintenance (`ferry drain`): it takes no guests until `ferry uncordon {0}`"
    )]
    Cordoned(String),
    #[error(transparent)]
    Mode(#[from] ModeError),
    #[error("limits.{field}: {message}")]
    Limits { field: String, message: String },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{0} streams: at most 64")]
    Streams(u16),
    #[error(
        "guest {guest} is already being moved by migration {other}: wait for it to end (`ferry status {other}`) or cancel it"
    )]
    Busy { guest: String, other: MigrationId },

    // The journal and the cordons.
    #[error(
        "cannot drain {0}: it is unreachable (it stays cordoned: bring it back and drain it again, or `ferry uncordon {0}`)"
    )]
    DrainUnreachable(String),
    #[error("this coordinator has no store yet")]
    NoStore,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot save the cordon in {}", path.display())]
    SaveCordon {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // Following the source.
    #[error("cannot start the source")]
    StartSource(#[source] ControlError),
    #[error(
        "source {host} said nothing for {secs}s (no progress, no heartbeat): frozen, overloaded or cut off"
    )]
    Silent { host: String, secs: u64 },
    #[error("lost contact with {host}")]
    LostContact {
        host: String,
        #[source]
        source: ControlError,
    },

    // `ferry resolve`.
    #[error("{guest} is migrating from {host}: wait for that migration to end")]
    StillMigrating { guest: String, host: String },
    #[error("no reachable host lists {guest}{unreachable}")]
    Unlisted { guest: String, unreachable: String },
    #[error("{guest} is listed on {listed}: keep one with --keep HOST")]
    ListedTwice { guest: String, listed: String },
    #[error("--keep is for a guest listed on several hosts; {guest} is listed on {on}")]
    KeepOne { guest: String, on: String },
    #[error("{keep} does not list {guest}")]
    KeepUnlisted { keep: String, guest: String },
    #[error(
        "{guest} runs on {dst} and is paused on {src}, and no migration from {src} to {dst} is on record: keep one with --keep HOST"
    )]
    BothUnrecorded {
        guest: String,
        dst: String,
        src: String,
    },
    #[error(
        "{guest} runs on {dst} and is paused on {src}, but {dst} answers {answer} for migration {id}: keep one with --keep HOST"
    )]
    BothAnswered {
        guest: String,
        dst: String,
        src: String,
        answer: String,
        id: MigrationId,
    },
    #[error(
        "{guest} is paused on {src} and no migration of it is on record; a host that might run it cannot be asked{unreachable}: bring it back, or add --force"
    )]
    PausedUnrecorded {
        guest: String,
        src: String,
        unreachable: String,
    },
    #[error("{dst} is still deciding on migration {id}: try again in a few seconds")]
    Deciding { dst: String, id: MigrationId },
    #[error(
        "{dst} resumed {guest} in migration {id} but no longer lists it (lost when its process ended, or moved on): the copy paused on {src} is older than what ran on {dst}; add --force to resume it anyway"
    )]
    ResumedGone {
        dst: String,
        guest: String,
        id: MigrationId,
        src: String,
    },
    #[error(
        "cannot ask {dst} whether it resumed {guest} (migration {id}): bring {dst} back and run this again, or, if {dst} is gone for good and {guest} does not run there, add --force"
    )]
    CannotAsk {
        dst: String,
        guest: String,
        id: MigrationId,
    },
}
