//! Errors turned into text: a message and its causes, each said once.
//!
//! ferry's error types follow one rule: a variant's message says what failed
//! and its `source` says why, never both. Printing only the top message then
//! loses the why, so every place that turns an error into text (a log line, a
//! reason sent to a peer, an error string) prints it with [`report`], which
//! walks the sources as anyhow's `{:#}` does at the binary's edge.

use std::{error::Error, fmt};

/// Deeper chains than this are cut short: a cycle of sources (a bug, but one
/// a peer's error type could have) must not hang a log line.
const MAX_DEPTH: usize = 32;

/// An error and its causes, displayed as `what: why: deeper why`.
#[derive(Clone, Copy)]
pub struct Report<'a>(&'a (dyn Error + 'static));

/// Displays `e` followed by each of its sources, joined by ": ".
pub fn report<'a>(e: &'a (dyn Error + 'static)) -> Report<'a> {
    Report(e)
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        for _ in 0..MAX_DEPTH {
            let Some(c) = cause else { return Ok(()) };
            write!(f, ": {c}")?;
            cause = c.source();
        }
        if cause.is_some() {
            f.write_str(": ...")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The first phrase a `: `-joined message says twice, if any: the symptom of
/// a message that also prints its source ("reading x: denied: denied").
/// Tests use it on every error they see.
pub fn repeated_phrase(message: &str) -> Option<String> {
    let parts: Vec<&str> = message.split(": ").collect();
    for (i, a) in parts.iter().enumerate() {
        // Short phrases ("tls", a port) may honestly recur; a cause is longer.
        if a.len() < 8 {
            continue;
        }
        if parts[i + 1..].iter().any(|b| b == a) {
            return Some(a.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the journal")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_report_says_each_cause_once_in_order() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(report(&e).to_string(), "reading the journal: disk on fire");
        assert_eq!(repeated_phrase(&report(&e).to_string()), None);
    }

    #[test]
    fn a_message_that_prints_its_source_is_caught() {
        let m = "host-b: connecting to host-b at 127.0.0.2:9500: Connection refused (os error 111): Connection refused (os error 111)";
        assert_eq!(
            repeated_phrase(m).as_deref(),
            Some("Connection refused (os error 111)")
        );
        assert_eq!(repeated_phrase("tls: cert: tls: key"), None);
    }
}
