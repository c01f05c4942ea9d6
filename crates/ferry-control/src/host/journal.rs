//! The host's journal: `journal.jsonl` in its state directory, one JSON
//! line per commit point of a switch-over (see [`crate::engine::journal`]),
//! appended and fsynced before the message that depends on it is sent.
//!
//! It answers the questions a restarted host must get right:
//! - did this guest of my configuration migrate away? Then it is not
//!   booted again ([`FileJournal::released`]);
//! - what did I decide on incoming migration X? READY without a decision
//!   reads as discarded: the guest never ran here ([`Journal::outcome`]).
//!
//! On open it is compacted (the last fact per guest and the newest
//! decisions, rewritten atomically), so it stays small however long the
//! host lives. A crash can tear only the line being appended, which was
//! never acknowledged: it is dropped with a warning.

use ferry_core::error::report;
use std::{
    collections::{BTreeMap, VecDeque},
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

use crate::{
    engine::{
        Outcome,
        journal::{Entry, Journal},
    },
    protocol::MigrationId,
};

const FILE: &str = "journal.jsonl";
/// How many incoming decisions are kept (far more than the outcome queries
/// of migrations still in doubt can need).
const KEEP_INCOMING: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the host journal {path}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the host journal {path} is not valid at line {line} (move it away to start with an empty journal, after checking which guests run where)"
    )]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
}

/// One line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "kebab-case")]
enum Line {
    /// The guest is another host's (`peer`), from GO on.
    Released {
        migration: MigrationId,
        guest: String,
        peer: String,
        at_unix_ms: u64,
    },
    /// The guest runs here again after a release.
    Reclaimed {
        migration: MigrationId,
        guest: String,
        at_unix_ms: u64,
    },
    Ready {
        migration: MigrationId,
        guest: String,
        peer: String,
        at_unix_ms: u64,
    },
    Resumed {
        migration: MigrationId,
        guest: String,
        peer: String,
        at_unix_ms: u64,
    },
    Discarded {
        migration: MigrationId,
        guest: String,
        reason: String,
        at_unix_ms: u64,
    },
}

impl Line {
    fn of(e: Entry<'_>, at_unix_ms: u64) -> Line {
        match e {
            Entry::Released {
                id,
                guest,
                destination,
            } => Line::Released {
                migration: id,
                guest: guest.into(),
                peer: destination.into(),
                at_unix_ms,
            },
            Entry::Reclaimed { id, guest } => Line::Reclaimed {
                migration: id,
                guest: guest.into(),
                at_unix_ms,
            },
            Entry::Ready { id, guest, source } => Line::Ready {
                migration: id,
                guest: guest.into(),
                peer: source.into(),
                at_unix_ms,
            },
            Entry::Resumed { id, guest, source } => Line::Resumed {
                migration: id,
                guest: guest.into(),
                peer: source.into(),
                at_unix_ms,
            },
            Entry::Discarded { id, guest, reason } => Line::Discarded {
                migration: id,
                guest: guest.into(),
                reason: reason.into(),
                at_unix_ms,
            },
        }
    }
}

/// Where a guest that moved stands, by the last line about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestFact {
    /// Released to `to` in `migration`: not this host's.
    Released { migration: MigrationId, to: String },
    /// Arrived from `from` in `migration` and resumed here.
    Received {
        migration: MigrationId,
        from: String,
    },
}

/// What this host decided on an incoming migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// READY was sent; GO never came (or this host stopped first).
    Ready,
    Resumed,
    Discarded(String),
}

#[derive(Default)]
struct State {
    /// The last line about each guest that moved (released, reclaimed or
    /// received).
    guests: BTreeMap<String, Line>,
    /// The last line about each incoming migration, oldest first.
    incoming: VecDeque<(MigrationId, Line)>,
}

impl State {
    fn apply(&mut self, l: Line) {
        match &l {
            Line::Released { guest, .. } | Line::Reclaimed { guest, .. } => {
                self.guests.insert(guest.clone(), l);
            }
            Line::Ready { migration, .. } | Line::Discarded { migration, .. } => {
                self.set_incoming(*migration, l);
            }
            Line::Resumed {
                migration, guest, ..
            } => {
                self.guests.insert(guest.clone(), l.clone());
                self.set_incoming(*migration, l);
            }
        }
    }

    fn set_incoming(&mut self, id: MigrationId, l: Line) {
        self.incoming.retain(|(m, _)| *m != id);
        self.incoming.push_back((id, l));
        while self.incoming.len() > KEEP_INCOMING {
            self.incoming.pop_front();
        }
    }

    /// The lines that say everything this state knows.
    fn lines(&self) -> Vec<&Line> {
        let mut v: Vec<&Line> = self.incoming.iter().map(|(_, l)| l).collect();
        // A guest's resume is already among the incoming lines when it is
        // recent enough to be kept there.
        let rest: Vec<&Line> = self.guests.values().filter(|g| !v.contains(g)).collect();
        // Last, so that replaying them leaves each guest's last fact.
        v.extend(rest);
        v
    }
}

/// What a guest's last line says of where it stands.
fn fact(l: &Line) -> Option<GuestFact> {
    match l {
        Line::Released {
            migration, peer, ..
        } => Some(GuestFact::Released {
            migration: *migration,
            to: peer.clone(),
        }),
        Line::Resumed {
            migration, peer, ..
        } => Some(GuestFact::Received {
            migration: *migration,
            from: peer.clone(),
        }),
        _ => None,
    }
}

/// Why a migration journaled READY without a decision counts as discarded.
pub const STOPPED_AFTER_READY: &str = "this host stopped after READY, before GO took effect";

pub struct FileJournal {
    path: PathBuf,
    inner: Mutex<(File, State)>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl FileJournal {
    /// The journal in `dir` (created), as the last run left it.
    pub fn open(dir: &Path) -> Result<FileJournal, JournalError> {
        let path = dir.join(FILE);
        let open_err = |source| JournalError::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(open_err)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(open_err(e)),
        };
        let mut state = State::default();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Line>(l) {
                Ok(line) => state.apply(line),
                // Only the line being appended when the host died can be
                // torn, and nobody heard of what it said.
                Err(e) if i + 1 == lines.len() && !text.ends_with('\n') => {
                    tracing::warn!(journal = %path.display(), line = i + 1, error = %report(&e),
                        "dropping a torn last line of the host journal");
                }
                Err(source) => {
                    return Err(JournalError::Parse {
                        path: path.clone(),
                        line: i + 1,
                        source,
                    });
                }
            }
        }
        let mut compact = Vec::new();
        for l in state.lines() {
            serde_json::to_writer(&mut compact, l).expect("a journal line serialises");
            compact.push(b'\n');
        }
        ferry_core::fs::write_atomically(&path, &compact).map_err(open_err)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(open_err)?;
        Ok(FileJournal {
            path,
            inner: Mutex::new((file, state)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where `guest` went, if its last move took it away from here.
    pub fn released(&self, guest: &str) -> Option<GuestFact> {
        match self.guest(guest)? {
            f @ GuestFact::Released { .. } => Some(f),
            GuestFact::Received { .. } => None,
        }
    }

    /// The last move of `guest` to or from here.
    pub fn guest(&self, guest: &str) -> Option<GuestFact> {
        self.inner
            .lock()
            .expect("journal")
            .1
            .guests
            .get(guest)
            .and_then(fact)
    }

    /// Guests that arrived here (and have not left since).
    pub fn received(&self) -> Vec<(String, GuestFact)> {
        let g = self.inner.lock().expect("journal");
        g.1.guests
            .iter()
            .filter_map(|(n, l)| match fact(l)? {
                f @ GuestFact::Received { .. } => Some((n.clone(), f)),
                GuestFact::Released { .. } => None,
            })
            .collect()
    }

    /// The newest incoming migration of `guest` and what was decided on it.
    pub fn last_incoming(&self, guest: &str) -> Option<(MigrationId, Decision)> {
        let g = self.inner.lock().expect("journal");
        g.1.incoming.iter().rev().find_map(|(id, l)| {
            let (name, d) = match l {
                Line::Ready { guest, .. } => (guest, Decision::Ready),
                Line::Resumed { guest, .. } => (guest, Decision::Resumed),
                Line::Discarded { guest, reason, .. } => {
                    (guest, Decision::Discarded(reason.clone()))
                }
                _ => return None,
            };
            (name == guest).then_some((*id, d))
        })
    }
}

impl Journal for FileJournal {
    fn write(&self, entry: Entry<'_>) -> std::io::Result<()> {
        let line = Line::of(entry, unix_ms());
        let mut text = serde_json::to_vec(&line).expect("a journal line serialises");
        text.push(b'\n');
        let mut g = self.inner.lock().expect("journal");
        g.0.write_all(&text)?;
        g.0.sync_data()?;
        g.1.apply(line);
        Ok(())
    }

    fn outcome(&self, id: &MigrationId) -> Option<Outcome> {
        let g = self.inner.lock().expect("journal");
        let (_, l) = g.1.incoming.iter().find(|(m, _)| m == id)?;
        Some(match l {
            Line::Resumed { .. } => Outcome::Resumed,
            Line::Discarded { reason, .. } => Outcome::Aborted(reason.clone()),
            // READY went out but no decision was recorded: GO never took
            // effect here, so the guest never ran here.
            _ => Outcome::Aborted(STOPPED_AFTER_READY.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-journal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_reopened_journal_knows_releases_arrivals_and_decisions() {
        let d = dir("reopen");
        let (m1, m2, m3) = (
            MigrationId::generate(),
            MigrationId::generate(),
            MigrationId::generate(),
        );
        {
            let j = FileJournal::open(&d).unwrap();
            j.write(Entry::Released {
                id: m1,
                guest: "vm1",
                destination: "b",
            })
            .unwrap();
            j.write(Entry::Ready {
                id: m2,
                guest: "vm2",
                source: "c",
            })
            .unwrap();
            j.write(Entry::Resumed {
                id: m2,
                guest: "vm2",
                source: "c",
            })
            .unwrap();
            j.write(Entry::Ready {
                id: m3,
                guest: "vm3",
                source: "c",
            })
            .unwrap();
        }
        // A torn append (the host died mid-write) is dropped.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join(FILE))
            .unwrap();
        f.write_all(b"{\"entry\":\"released\",\"migr").unwrap();
        drop(f);
        let j = FileJournal::open(&d).unwrap();
        assert_eq!(
            j.released("vm1"),
            Some(GuestFact::Released {
                migration: m1,
                to: "b".into()
            })
        );
        assert_eq!(j.released("vm2"), None, "vm2 arrived here");
        assert_eq!(j.outcome(&m2), Some(Outcome::Resumed));
        assert!(
            matches!(j.outcome(&m3), Some(Outcome::Aborted(r)) if r.contains("before GO")),
            "READY without a decision is a discard"
        );
        assert_eq!(j.outcome(&MigrationId::generate()), None);
        assert_eq!(j.last_incoming("vm3"), Some((m3, Decision::Ready)));
        j.write(Entry::Reclaimed {
            id: m1,
            guest: "vm1",
        })
        .unwrap();
        drop(j);
        let j = FileJournal::open(&d).unwrap();
        assert_eq!(j.released("vm1"), None, "vm1 came back");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_corrupt_line_inside_the_journal_is_refused_with_where_and_what_to_do() {
        let d = dir("corrupt");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(FILE), "not json\n{}\n").unwrap();
        let msg = FileJournal::open(&d).err().expect("refused").to_string();
        assert!(
            msg.contains("journal.jsonl") && msg.contains("line 1") && msg.contains("move it away"),
            "{msg}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
