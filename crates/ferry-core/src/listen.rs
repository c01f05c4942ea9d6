//! What a listener does after a failed accept.
//!
//! When the process is out of file descriptors (EMFILE), the system is
//! (ENFILE) or buffers are short (ENOBUFS, ENOMEM), the pending connection
//! stays queued and the listening socket stays readable: retrying at once
//! spins a core on failed `accept4` calls and starves everything else. A
//! listener waits a little after each failure instead, and says so at most
//! once a second.

use crate::error::report;
use std::time::{Duration, Instant};

/// How long a listener pauses after a failed accept.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Counts a listener's failed accepts and rate-limits the warning.
#[derive(Debug)]
pub struct AcceptFailures {
    what: &'static str,
    failed: u64,
    warned: Option<Instant>,
}

impl AcceptFailures {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            failed: 0,
            warned: None,
        }
    }

    /// Records a failed accept; returns how long to wait before the next.
    pub fn failed(&mut self, error: &std::io::Error) -> Duration {
        self.failed += 1;
        if self
            .warned
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.warned = Some(Instant::now());
            tracing::warn!(listener = self.what, error = %report(error), failed = self.failed,
                "accept failed; pausing the listener");
        }
        ACCEPT_BACKOFF
    }

    /// Failed accepts so far.
    pub fn count(&self) -> u64 {
        self.failed
    }
}

/// A cap on the connections a listener holds that have not proved who they
/// are yet (or, for /metrics, on all of them). Without one, a flood of idle
/// connections takes a thread or a task and a file descriptor each, until
/// the process cannot accept the connections that matter: its coordinator's.
/// Over the cap a new connection is closed at once.
#[derive(Clone, Debug)]
pub struct Gate {
    what: &'static str,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    cap: usize,
    refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Holds one place under a [`Gate`] until dropped.
#[derive(Debug)]
pub struct Pass(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Pass {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Gate {
    pub fn new(what: &'static str, cap: usize) -> Self {
        Self {
            what,
            open: Default::default(),
            cap,
            refused: Default::default(),
        }
    }

    /// A place, or None (counted, and warned about at most once per 1000).
    pub fn enter(&self) -> Option<Pass> {
        use std::sync::atomic::Ordering;
        let n = self.open.fetch_add(1, Ordering::AcqRel);
        if n >= self.cap {
            self.open.fetch_sub(1, Ordering::AcqRel);
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if refused % 1000 == 1 {
                tracing::warn!(
                    listener = self.what,
                    cap = self.cap,
                    refused,
                    "too many connections waiting; closing new ones until some end"
                );
            }
            return None;
        }
        Some(Pass(self.open.clone()))
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Places held now.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_holds_at_most_its_cap_and_frees_places_on_drop() {
        let g = Gate::new("test", 2);
        let a = g.enter().expect("first");
        let _b = g.enter().expect("second");
        assert!(g.enter().is_none(), "a third is over the cap");
        assert_eq!((g.open(), g.refused()), (2, 1));
        drop(a);
        assert!(g.enter().is_some(), "a freed place is usable again");
    }
}
