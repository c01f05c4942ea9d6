//! Small JSON files a daemon keeps in its state directory.

use std::path::Path;

use anyhow::Context;

/// `file`'s JSON, or `T::default()` when there is no file (or no state
/// directory); `remedy` says what to do with one that is not valid.
pub(crate) fn read_json_or_default<T: serde::de::DeserializeOwned + Default>(
    file: Option<&Path>,
    remedy: &str,
) -> anyhow::Result<T> {
    let Some(f) = file else {
        return Ok(T::default());
    };
    match std::fs::read(f) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("{} is not valid ({remedy})", f.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", f.display())),
    }
}
