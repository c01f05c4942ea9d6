//! Small JSON files a daemon keeps in its state directory, and what
//! stops a daemon from serving.

use std::{net::SocketAddr, path::Path, path::PathBuf};

/// A state file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{} is not valid ({remedy})", path.display())]
    Invalid {
        path: PathBuf,
        remedy: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `file`'s JSON, or `T::default()` when there is no file (or no state
/// directory); `remedy` says what to do with one that is not valid.
pub(crate) fn read_json_or_default<T: serde::de::DeserializeOwned + Default>(
    file: Option<&Path>,
    remedy: &str,
) -> Result<T, StateError> {
    let Some(f) = file else {
        return Ok(T::default());
    };
    match std::fs::read(f) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| StateError::Invalid {
            path: f.to_path_buf(),
            remedy: remedy.to_string(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(StateError::Read {
            path: f.to_path_buf(),
            source,
        }),
    }
}

/// Why a daemon (host or coordinator) stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Metrics(#[from] crate::metrics::http::ServeError),
    #[error("cannot open the {what} on {addr}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
