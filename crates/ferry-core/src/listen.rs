//! What a listener does after a failed accept.
//!
//! When the process is out of file descriptors (EMFILE), the system is
//! (ENFILE) or buffers are short (ENOBUFS, ENOMEM), the pending connection
//! stays queued and the listening socket stays readable: retrying at once
//! spins a core on failed `accept4` calls and starves everything else. A
//! listener waits a little after each failure instead, and says so at most
//! once a second.

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
            tracing::warn!(listener = self.what, error = %error, failed = self.failed,
                "accept failed; pausing the listener");
        }
        ACCEPT_BACKOFF
    }

    /// Failed accepts so far.
    pub fn count(&self) -> u64 {
        self.failed
    }
}
