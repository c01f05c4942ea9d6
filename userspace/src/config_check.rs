//! Which configuration file is which kind, told by its file name: what
//! `ferry config check` and the config tests use. It knows every role's
//! config type, so it sits above them all; the config module itself (loading,
//! errors, units) knows none of them.

use std::path::Path;

use crate::{
    config::{ConfigError, load},
    coordinator::CoordinatorConfig,
    demo::DemoConfig,
    host::HostConfig,
    lab::{CountersConfig, experiment::ExperimentConfig},
    router::RouterConfig,
};

/// The kinds of config file ferry reads, told apart by file name prefix.
/// Used by `ferry config check` and the config tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Demo,
    Coordinator,
    Host,
    LabCounters,
    Experiment,
    Router,
}

impl Kind {
    pub const ALL: &'static [Kind] = &[
        Kind::Demo,
        Kind::Coordinator,
        Kind::Host,
        Kind::LabCounters,
        Kind::Experiment,
        Kind::Router,
    ];

    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Demo => "demo",
            Kind::Coordinator => "coordinator",
            Kind::Host => "host",
            Kind::LabCounters => "counters",
            Kind::Experiment => "experiment",
            Kind::Router => "router",
        }
    }

    /// The kind of `path`, from its file name.
    pub fn of_path(path: &Path) -> Result<Kind, ConfigError> {
        let origin = path.display().to_string();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            return Err(ConfigError::UnknownKind {
                origin,
                message: "not a .yaml file".into(),
            });
        }
        Self::ALL
            .iter()
            .copied()
            .find(|k| name.starts_with(k.prefix()))
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL
                    .iter()
                    .map(|k| format!("{}*.yaml", k.prefix()))
                    .collect();
                ConfigError::UnknownKind {
                    origin,
                    message: format!("file names must match one of {}", names.join(", ")),
                }
            })
    }

    /// Loads and validates `path` as this kind, discarding the result.
    pub fn check(self, path: &Path) -> Result<(), ConfigError> {
        match self {
            Kind::Demo => load::<DemoConfig>(path).map(drop),
            Kind::Coordinator => load::<CoordinatorConfig>(path).map(drop),
            Kind::Host => load::<HostConfig>(path).map(drop),
            Kind::LabCounters => load::<CountersConfig>(path).map(drop),
            Kind::Experiment => load::<ExperimentConfig>(path).map(drop),
            Kind::Router => load::<RouterConfig>(path).map(drop),
        }
    }
}

/// The files a valid configuration names, checked as its daemon would load
/// them: the TLS CA, certificate and key of a coordinator or host (relative
/// paths from the file's directory). What is wrong, or nothing.
pub fn check_files(kind: Kind, path: &Path) -> Result<(), String> {
    let tls = match kind {
        Kind::Coordinator => {
            crate::coordinator::Coordinator::load_config(path)
                .map_err(|e| e.to_string())?
                .tls
        }
        Kind::Host => {
            crate::host::Host::load_config(path)
                .map_err(|e| e.to_string())?
                .tls
        }
        _ => return Ok(()),
    };
    crate::control::tls::server_config(&tls).map(drop).map_err(|e| {
        format!(
            "{}: tls: {e} (create the files with `ferry certs`, or fix the paths: relative ones are from the file's directory)",
            path.display()
        )
    })
}

/// Validates `path` as whatever kind its name says it is.
pub fn check(path: &Path) -> Result<Kind, ConfigError> {
    let kind = Kind::of_path(path)?;
    kind.check(path)?;
    Ok(kind)
}
