//! Files that must survive a crash at any moment.

use std::{io::Write, path::Path};

/// Replaces `file` with `bytes` so that a crash leaves either the old or the
/// new contents, never a mix: a temporary file beside it, fsync, rename,
/// fsync of the directory.
pub fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    sync_dir_of(file)
}

/// Makes a file's creation or rename in its directory durable.
pub fn sync_dir_of(file: &Path) -> std::io::Result<()> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => std::fs::File::open(".")?.sync_all(),
    }
}
