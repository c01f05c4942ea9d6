//! YAML configuration: loading with precise errors, and the config types.
//!
//! Every config struct rejects unknown fields, so a typo is an error and not
//! a silently ignored setting. Errors name the file, the line and column, and
//! the path of the field (`interfaces[1].vlan`).

mod duration;
mod locate;
mod rate;
mod ratio;
mod schema;
mod size;
mod unit;

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;

pub use duration::{deserialize_duration, serialize_duration};
pub use rate::Rate;
pub use ratio::Ratio;
pub use schema::DurationText;
pub use size::ByteSize;
pub use unit::{UnitError, UnitProblem};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: cannot read")]
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
    #[error("{origin}{}: {field}: {message}", at(*line, *column))]
    Invalid {
        origin: String,
        line: Option<usize>,
        column: Option<usize>,
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
        // A syntax error is the root cause even where typed parsing trips
        // first over what it made of the text (an unclosed `{` makes the
        // next line part of a value: "unknown variant `idle prefill`").
        if let Err(syntax) = serde_yaml::from_str::<serde::de::IgnoredAny>(text) {
            return parse_error(text, origin, String::new(), &syntax);
        }
        let field = e.path().to_string();
        parse_error(text, origin, field, &e.into_inner())
    })?;
    value.validate().map_err(|i| {
        // Found by its path: the parsed value has no positions left.
        let spot = locate::locate(text, &i.field, "").map(|f| f.spot);
        ConfigError::Invalid {
            origin: origin.to_string(),
            line: spot.map(|s| s.line),
            column: spot.map(|s| s.column),
            field: i.field,
            message: i.message,
        }
    })?;
    Ok(value)
}

/// A YAML error of `text` (named `origin`) that no field path leads to, as
/// [`ConfigError::Parse`]: `file:line:col: message`.
pub fn yaml_error(text: &str, origin: &str, e: &serde_yaml::Error) -> ConfigError {
    parse_error(text, origin, String::new(), e)
}

fn parse_error(text: &str, origin: &str, mut field: String, e: &serde_yaml::Error) -> ConfigError {
    let message = strip_path(&strip_location(&e.to_string()), &field);
    let mut spot = e.location().map(|l| locate::Spot {
        line: l.line(),
        column: l.column(),
    });
    // Where the path is known, it is the better guide to the spot than the
    // parser's position (see `locate` for when that is wrong); where a
    // tagged value cut the path short, the value the message names finishes it.
    if (!field.is_empty() || locate::duplicated_key(&message).is_some())
        && let Some(found) = locate::locate(text, &field, &message)
    {
        spot = Some(found.spot);
        if let Some(key) = found.deeper {
            field = format!("{field}.{key}");
        }
    }
    ConfigError::Parse {
        origin: origin.to_string(),
        line: spot.map(|s| s.line),
        column: spot.map(|s| s.column),
        message,
        field,
    }
}

/// yaml_serde puts " at line X column Y" into its messages (a syntax error
/// has two: where, and where the enclosing construct began); we print the
/// location in front instead, compiler style.
fn strip_location(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        // Skip "N column M" (digits, " column ", digits).
        let n = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        let tail = &after[n..];
        match tail.strip_prefix(" column ") {
            Some(t) if n > 0 => {
                let m = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
                rest = &t[m..];
            }
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
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

/// A daemon's state directory, from the `state_dir` its file at `path`
/// named (relative to that file) or, unset, `/var/lib/ferry/NAME`: a daemon
/// started from a file keeps its state across restarts and reboots.
pub fn state_dir_for(path: &Path, configured: Option<PathBuf>, name: &str) -> PathBuf {
    let base = path.parent().unwrap_or(Path::new("."));
    base.join(configured.unwrap_or_else(|| Path::new("/var/lib/ferry").join(name)))
}

#[cfg(test)]
mod tests {
    use super::strip_location;

    #[test]
    fn state_dir_is_relative_to_the_file_or_under_var_lib() {
        use std::path::{Path, PathBuf};
        let f = Path::new("/etc/ferry/host-a.yaml");
        assert_eq!(
            super::state_dir_for(f, None, "host-a"),
            PathBuf::from("/var/lib/ferry/host-a")
        );
        assert_eq!(
            super::state_dir_for(f, Some("state".into()), "host-a"),
            PathBuf::from("/etc/ferry/state")
        );
    }

    #[test]
    fn every_location_leaves_the_message() {
        assert_eq!(
            strip_location(
                "did not find expected ',' or '}' at line 6 column 10, while parsing a flow mapping at line 5 column 13"
            ),
            "did not find expected ',' or '}', while parsing a flow mapping"
        );
        assert_eq!(
            strip_location("unknown field `x` at line 3 column 1"),
            "unknown field `x`"
        );
        // Text that merely looks like it stays.
        assert_eq!(
            strip_location("at line breaks at line x"),
            "at line breaks at line x"
        );
    }
}
