//! Which configuration file is which kind, told by its content (its
//! top-level keys against each kind's fields, which serde gives): what
//! `ferry config check` and the config tests use. It knows every role's
//! config type, so it sits above them all; the config module itself (loading,
//! errors, units) knows none of them.

use ferry_core::error::report;
use std::path::Path;

use crate::{
    config::{ConfigError, load},
    coordinator::CoordinatorConfig,
    demo::DemoConfig,
    host::HostConfig,
    lab::{CountersConfig, experiment::ExperimentConfig},
    router::RouterConfig,
};

/// The kinds of config file ferry reads. Used by `ferry config check` and
/// the config tests.
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

    /// The kind of `path`, from its file name alone.
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

    /// Every kind's name, as files are named after them.
    fn names() -> String {
        let names: Vec<_> = Self::ALL.iter().map(|k| k.prefix()).collect();
        names.join(", ")
    }

    /// The top-level keys a file of this kind may have, from its type.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Kind::Demo => fields::<DemoConfig>(),
            Kind::Coordinator => fields::<CoordinatorConfig>(),
            Kind::Host => fields::<HostConfig>(),
            Kind::LabCounters => fields::<CountersConfig>(),
            Kind::Experiment => fields::<ExperimentConfig>(),
            Kind::Router => fields::<RouterConfig>(),
        }
    }

    /// The kind of the file at `path`, from what it holds: the kinds that
    /// know every one of its top-level keys, the one sharing most of them
    /// first; a tie (or a file with no keys) goes to the kind its name
    /// starts with. A file no kind knows whole is taken as the kind that
    /// knows most of its keys, so that loading it names the strange one.
    pub fn of_file(path: &Path) -> Result<Kind, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            origin: path.display().to_string(),
            source,
        })?;
        Self::of_text(path, &text)
    }

    /// The kind of `text`, read from `path`: as [`Kind::of_file`] tells it.
    pub fn of_text(path: &Path, text: &str) -> Result<Kind, ConfigError> {
        let origin = path.display().to_string();
        let by_name = Self::of_path(path).ok();
        let keys = match serde_yaml::from_str::<serde_yaml::Value>(text) {
            Ok(serde_yaml::Value::Mapping(m)) => m
                .keys()
                .map(|k| {
                    k.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("{k:?}"))
                })
                .collect(),
            Ok(serde_yaml::Value::Null) => Vec::new(),
            // Loading as the kind its name says reports where it breaks.
            _ if by_name.is_some() => return Ok(by_name.expect("checked")),
            Ok(_) => {
                return Err(ConfigError::UnknownKind {
                    origin,
                    message: "it is not a mapping of keys, as every ferry configuration is".into(),
                });
            }
            // Not YAML: where and why, as a loader would say it.
            Err(e) => return Err(crate::config::yaml_error(text, &origin, &e)),
        };
        let known = |k: Kind| {
            keys.iter()
                .filter(|key| k.fields().contains(&key.as_str()))
                .count()
        };
        let whole: Vec<Kind> = Self::ALL
            .iter()
            .copied()
            .filter(|k| known(*k) == keys.len())
            .collect();
        let best = |among: &[Kind]| -> Vec<Kind> {
            let top = among.iter().map(|k| known(*k)).max().unwrap_or(0);
            among.iter().copied().filter(|k| known(*k) == top).collect()
        };
        let candidates = if whole.is_empty() {
            best(Self::ALL)
        } else {
            best(&whole)
        };
        if (keys.is_empty() || candidates.len() > 1)
            && let Some(k) = by_name.filter(|k| candidates.contains(k))
        {
            return Ok(k);
        }
        match candidates.as_slice() {
            [k] if known(*k) > 0 => Ok(*k),
            _ if keys.is_empty() => Err(ConfigError::UnknownKind {
                origin,
                message: format!(
                    "the file is empty: name it after its kind (one of {})*.yaml",
                    Self::names()
                ),
            }),
            _ if candidates.iter().all(|k| known(*k) == 0) => Err(ConfigError::UnknownKind {
                origin,
                message: format!(
                    "its keys ({}) are those of no ferry configuration ({})",
                    keys.join(", "),
                    Self::names()
                ),
            }),
            _ => Err(ConfigError::UnknownKind {
                origin,
                message: format!(
                    "its keys ({}) fit a {} file alike: name it after its kind ({}*.yaml)",
                    keys.join(", "),
                    candidates
                        .iter()
                        .map(|k| k.prefix())
                        .collect::<Vec<_>>()
                        .join(" or a "),
                    candidates
                        .iter()
                        .map(|k| k.prefix())
                        .collect::<Vec<_>>()
                        .join("*.yaml or ")
                ),
            }),
        }
    }

    /// The JSON Schema of this kind's files, from its config type: what the
    /// configuration reference is rendered from, and what an editor's YAML
    /// language server can check a file against.
    pub fn schema(self) -> schemars::Schema {
        match self {
            Kind::Demo => schemars::schema_for!(DemoConfig),
            Kind::Coordinator => schemars::schema_for!(CoordinatorConfig),
            Kind::Host => schemars::schema_for!(HostConfig),
            Kind::LabCounters => schemars::schema_for!(CountersConfig),
            Kind::Experiment => schemars::schema_for!(ExperimentConfig),
            Kind::Router => schemars::schema_for!(RouterConfig),
        }
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
                .map_err(|e| report(&e).to_string())?
                .tls
        }
        Kind::Host => {
            crate::host::Host::load_config(path)
                .map_err(|e| report(&e).to_string())?
                .tls
        }
        _ => return Ok(()),
    };
    crate::control::tls::server_config(&tls).map(drop).map_err(|e| {
        format!(
            "{}: tls: {e} (create the files with `ferry certs`, or fix the paths: relative ones are from the file's directory)",
            path.display()
        , e = report(&e))
    })
}

/// Validates `path` as whatever kind its content says it is.
pub fn check(path: &Path) -> Result<Kind, ConfigError> {
    let kind = Kind::of_file(path)?;
    kind.check(path)?;
    Ok(kind)
}

/// The fields of a struct that derives `Deserialize`, which serde hands
/// the deserializer: this one asks for them and stops.
fn fields<'de, T: serde::Deserialize<'de>>() -> &'static [&'static str] {
    match T::deserialize(Introspect) {
        Err(Stop(Some(f))) => f,
        _ => &[],
    }
}

#[derive(Debug)]
struct Stop(Option<&'static [&'static str]>);

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("introspection only")
    }
}

impl std::error::Error for Stop {}

impl serde::de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop(None)
    }
}

struct Introspect;

impl<'de> serde::Deserializer<'de> for Introspect {
    type Error = Stop;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop(None))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        Err(Stop(Some(fields)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn every_kind_knows_its_fields() {
        for k in Kind::ALL {
            assert!(
                !k.fields().is_empty(),
                "{k:?}: serde gave no fields (its config type no longer derives a plain struct?)"
            );
        }
        assert!(Kind::Host.fields().contains(&"migration"));
        assert!(Kind::Router.fields().contains(&"interfaces"));
    }
}
