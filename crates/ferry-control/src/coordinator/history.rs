//! The coordinator's migration history: what `ferry status` lists. Kept in
//! memory and, with a state directory, in `migrations.json` there, rewritten
//! atomically (temporary file, fsync, rename, fsync of the directory) on
//! every change of a migration's state, so a restarted coordinator still
//! knows what it did. Progress updates stay in memory: they change every
//! few hundred milliseconds and are worth nothing after a restart.

use ferry_core::error::report;
use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use crate::{
    control::wire::{MigrationRecord, MigrationState},
    engine::Progress,
    protocol::MigrationId,
};

/// How many migrations the history remembers.
pub const HISTORY: usize = 1000;
const FILE: &str = "migrations.json";

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot create the state directory {path}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the migration history {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the migration history {path} is not valid (move it away to start with an empty history)"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

pub struct History {
    file: Option<PathBuf>,
    records: Mutex<Vec<MigrationRecord>>,
    /// Serialises snapshot-and-write, so the file only ever moves forward.
    writing: Mutex<()>,
}

impl History {
    /// Memory only.
    pub fn in_memory() -> History {
        History {
            file: None,
            records: Mutex::new(Vec::new()),
            writing: Mutex::new(()),
        }
    }

    /// The history kept in `dir`, as the last run left it. A migration that
    /// was under way then is marked interrupted: this coordinator no longer
    /// follows it (see [`History::interrupted`]).
    pub fn open(dir: &Path) -> Result<History, HistoryError> {
        std::fs::create_dir_all(dir).map_err(|source| HistoryError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let file = dir.join(FILE);
        let mut records: Vec<MigrationRecord> = match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| HistoryError::Parse {
                path: file.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(HistoryError::Read { path: file, source }),
        };
        for r in &mut records {
            if r.state == MigrationState::Queued {
                r.state = MigrationState::Failed;
                r.error = Some(
                    "the coordinator stopped while this migration was queued: it never started (ask again)"
                        .into(),
                );
            }
            if matches!(r.state, MigrationState::Preparing | MigrationState::Running) {
                r.state = MigrationState::Interrupted;
                r.error = Some("the coordinator stopped during this migration".into());
            }
        }
        records.truncate(HISTORY);
        Ok(History {
            file: Some(file),
            records: Mutex::new(records),
            writing: Mutex::new(()),
        })
    }

    /// Newest first.
    pub fn all(&self) -> Vec<MigrationRecord> {
        self.records.lock().expect("history").clone()
    }

    pub fn get(&self, id: &MigrationId) -> Option<MigrationRecord> {
        self.records
            .lock()
            .expect("history")
            .iter()
            .find(|r| r.id == *id)
            .cloned()
    }

    /// Migrations the last run did not see end.
    pub fn interrupted(&self) -> Vec<MigrationRecord> {
        self.records
            .lock()
            .expect("history")
            .iter()
            .filter(|r| r.state == MigrationState::Interrupted)
            .cloned()
            .collect()
    }

    pub fn add(&self, r: MigrationRecord) {
        {
            let mut recs = self.records.lock().expect("history");
            recs.insert(0, r);
            recs.truncate(HISTORY);
        }
        self.save();
    }

    pub fn update(&self, id: &MigrationId, f: impl FnOnce(&mut MigrationRecord)) {
        if self.change(id, f) {
            self.save();
        }
    }

    pub fn progress(&self, id: &MigrationId, p: Progress) {
        self.change(id, |r| r.progress = Some(p));
    }

    fn change(&self, id: &MigrationId, f: impl FnOnce(&mut MigrationRecord)) -> bool {
        let mut recs = self.records.lock().expect("history");
        match recs.iter_mut().find(|r| r.id == *id) {
            Some(r) => {
                f(r);
                true
            }
            None => false,
        }
    }

    /// Writes the file. A failure is logged, not fatal: the migration itself
    /// goes on, and the next change tries again.
    fn save(&self) {
        let Some(file) = &self.file else { return };
        let _w = self.writing.lock().expect("history writer");
        let json = {
            let recs = self.records.lock().expect("history");
            serde_json::to_vec_pretty(&*recs).expect("records serialise")
        };
        if let Err(e) = ferry_core::fs::write_atomically(file, &json) {
            tracing::warn!(file = %file.display(), error = %report(&e), "cannot save the migration history");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_history_is_refused_with_its_path_and_what_to_do() {
        let dir = std::env::temp_dir().join(format!("ferry-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE), b"[{\"id\": ").unwrap();
        let e = History::open(&dir)
            .err()
            .expect("a truncated file is refused");
        let msg = e.to_string();
        assert!(
            msg.contains("migrations.json") && msg.contains("move it away"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
