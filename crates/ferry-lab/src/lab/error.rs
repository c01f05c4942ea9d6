//! The lab's one error: what an experiment, a benchmark or the demo was
//! doing when it failed (`Step`), over the typed error of the layer that
//! failed. The binary adds its own context on top.

use std::{fmt, io};

use crate::{
    config::ConfigError,
    dataplane::DataplaneError,
    engine::{PrepareError, guest::GuestError},
    netlink::NetlinkError,
    netns::NetnsError,
    qemu::{QemuError, Unavailable},
    router::RouterError,
};

pub type Result<T, E = LabError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// What the lab was doing; the source says why it failed.
    #[error("{step}")]
    Step {
        step: String,
        #[source]
        source: Box<LabError>,
    },
    /// A value the lab expected and did not find: a field of a tool's
    /// report, an event, a program.
    #[error("{0}")]
    Missing(String),
    /// What was measured did not behave: a migration failed, a guest did
    /// not boot in time, two counters disagree. Says what was seen.
    #[error("{0}")]
    Unexpected(String),
    /// A thread of the lab's own ended by a panic.
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    #[error("the configuration: {field}: {message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Topology(#[from] crate::lab::topology::TopologyError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Router(#[from] RouterError),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error(transparent)]
    QemuUnavailable(#[from] Unavailable),
    #[error(transparent)]
    Program(#[from] aya::programs::ProgramError),
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
    #[error(transparent)]
    Tls(#[from] crate::control::tls::TlsError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error(transparent)]
    HostStart(#[from] crate::host::StartError),
    #[error(transparent)]
    CoordinatorStart(#[from] crate::coordinator::StartError),
    #[error(transparent)]
    Address(#[from] std::net::AddrParseError),
    #[error("a task of the lab")]
    Join(#[from] tokio::task::JoinError),
    #[error("no word in time")]
    Recv(#[from] std::sync::mpsc::RecvTimeoutError),
}

impl From<crate::config::Invalid> for LabError {
    fn from(i: crate::config::Invalid) -> Self {
        LabError::Invalid {
            field: i.field,
            message: i.message,
        }
    }
}

impl LabError {
    pub(crate) fn unexpected(what: impl fmt::Display) -> Self {
        LabError::Unexpected(what.to_string())
    }
}

/// `.context(step)` on the lab's results and options: the step becomes the
/// message, the error its source.
pub(crate) trait Context<T> {
    fn context(self, step: impl fmt::Display) -> Result<T>;
    fn with_context<S: fmt::Display>(self, step: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<LabError>> Context<T> for std::result::Result<T, E> {
    fn context(self, step: impl fmt::Display) -> Result<T> {
        self.map_err(|e| LabError::Step {
            step: step.to_string(),
            source: Box::new(e.into()),
        })
    }

    fn with_context<S: fmt::Display>(self, step: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| LabError::Step {
            step: step().to_string(),
            source: Box::new(e.into()),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| LabError::Missing(what.to_string()))
    }

    fn with_context<S: fmt::Display>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.ok_or_else(|| LabError::Missing(what().to_string()))
    }
}

/// `bail!` for the lab: returns an [`LabError::Unexpected`].
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::lab::error::LabError::Unexpected(format!($($arg)*)))
    };
}
pub(crate) use bail;
