//! YAML configuration: loading with precise errors, and the config types.
//!
//! Every config struct rejects unknown fields, so a typo is an error and not
//! a silently ignored setting. Errors name the file, the line and column, and
//! the path of the field (`interfaces[1].vlan`).

mod duration;
mod rate;
mod ratio;
mod size;

use std::{fmt, path::Path};

use serde::de::DeserializeOwned;

pub use duration::{deserialize_duration, serialize_duration};
pub use rate::Rate;
pub use ratio::Ratio;
pub use size::ByteSize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: cannot read: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}{}: {}{message}", at(*line, *column), field_prefix(field))]
    Parse {
        origin: String,
        line: Option<usize>,
        column: Option<usize>,
        field: String,
        message: String,
    },
    #[error("{origin}: {field}: {message}")]
    Invalid {
        origin: String,
        field: String,
        message: String,
    },
    #[error("{origin}: cannot tell what kind of config this is: {message}")]
    UnknownKind { origin: String, message: String },
}

fn at(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() || field == "." {
        String::new()
    } else {
        format!("{field}: ")
    }
}

/// A semantic problem found after parsing: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl fmt::Display) -> Self {
        Self {
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// The same problem, in a field nested under `parent`.
    pub fn within(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}.{}", self.field),
            message: self.message,
        }
    }
}

/// Checks that parsing alone cannot express (ranges, cross-references).
pub trait Validate {
    fn validate(&self) -> Result<(), Invalid>;
}

/// Whether `n` may name a host, guest, coordinator or class: it appears in
/// certificates, metrics labels and file names.
pub fn is_valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Checks the name in `field` (see [`is_valid_name`]).
pub fn check_name(field: &str, n: &str) -> Result<(), Invalid> {
    if is_valid_name(n) {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!("{n:?}: use 1-63 letters, digits, '-' or '.'"),
        ))
    }
}

/// Parses `text` (named `origin` in errors) into `T` and validates it.
pub fn from_str<T: DeserializeOwned + Validate>(
    text: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let loc = inner.location();
        let message = strip_path(&strip_location(&inner.to_string()), &field);
        ConfigError::Parse {
            origin: origin.to_string(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            field,
            message,
        }
    })?;
    value.validate().map_err(|i| ConfigError::Invalid {
        origin: origin.to_string(),
        field: i.field,
        message: i.message,
    })?;
    Ok(value)
}

/// yaml_serde appends " at line X column Y" to its messages; we print the
/// location in front instead, compiler style.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// yaml_serde also starts some messages with the path ("qinq: unknown
/// field"); the path is printed once, from serde_path_to_error.
fn strip_path(msg: &str, field: &str) -> String {
    match msg.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') && field.starts_with(head) => rest.to_string(),
        _ => msg.to_string(),
    }
}

/// Reads, parses and validates the YAML file at `path`.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        origin: origin.clone(),
        source,
    })?;
    from_str(&text, &origin)
}
