//! What `ferry migrate`, `ferry status` and `ferry demo` show: a live
//! progress bar, a summary table, and JSON for scripts.

use std::{
    fmt::Write as _,
    io::IsTerminal,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{
    config::ByteSize,
    control::wire::{MigrationRecord, Response},
    engine::{MigrationStats, Phase, Progress},
};

/// "12.3 s", or why there is no estimate.
fn eta(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) if s.is_finite() => format!("{s:.1} s"),
        _ => "none (the guest dirties as fast as the link carries)".into(),
    }
}

fn rate(bytes_per_s: f64) -> String {
    if bytes_per_s >= 1e9 {
        format!("{:.2} GB/s", bytes_per_s / 1e9)
    } else {
        format!("{:.0} MB/s", bytes_per_s / 1e6)
    }
}

fn bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// Shows a migration's progress: a bar on a terminal, a line a second otherwise.
pub struct ProgressView {
    bar: Option<ProgressBar>,
    last_line: Instant,
    quiet: bool,
}

impl ProgressView {
    /// `quiet`: nothing at all (for --json on a pipe).
    pub fn new(quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Self {
            bar,
            last_line: Instant::now() - Duration::from_secs(10),
            quiet,
        }
    }

    fn describe(p: &Progress) -> String {
        let phase = match p.phase {
            Phase::Setup => "setup".to_string(),
            Phase::PreCopy => format!("pass {}", p.pass),
            Phase::Switchover => "switch-over".to_string(),
            Phase::Completed => "completed".to_string(),
            Phase::Failed => "failed".to_string(),
        };
        let mut t = format!(
            "{phase} | dirty {} | xfer {} | throttle {}% | remaining {}",
            rate(p.dirty_rate),
            rate(p.transfer_rate),
            p.throttle_percent,
            bytes(p.remaining_bytes)
        );
        if p.phase == Phase::PreCopy {
            let _ = write!(
                t,
                " | stun ~{:.0} ms | ETA {}",
                p.expected_downtime_seconds * 1e3,
                eta(p.eta_seconds)
            );
        }
        t
    }

    pub fn update(&mut self, r: &Response) {
        if self.quiet {
            return;
        }
        match r {
            Response::Accepted {
                id,
                transport,
                source,
                destination,
            } => {
                let line = format!("migration {id}: {source} -> {destination}, {transport}");
                match &self.bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Response::Queued {
                id,
                position,
                reason,
            } => {
                let line =
                    format!("migration {id}: queued, {position} in line: waiting for {reason}");
                match &self.bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Response::Progress(p) => match &self.bar {
                Some(b) => {
                    // The bar is this pass's (it starts again with each
                    // pass, never backwards within one); the total so far
                    // is in the text. A device model does not say how far
                    // into a pass it is: then it is the guest's memory.
                    let (pos, len) = if p.pass_total_bytes > 0 {
                        (p.pass_bytes, p.pass_total_bytes)
                    } else {
                        (
                            p.total_bytes.saturating_sub(p.remaining_bytes),
                            p.total_bytes,
                        )
                    };
                    b.set_length(len.max(1));
                    b.set_position(pos.min(len));
                    b.set_message(format!(
                        "{} in all | {}",
                        bytes(p.transferred_bytes),
                        Self::describe(p)
                    ));
                }
                None => {
                    if self.last_line.elapsed() >= Duration::from_secs(1)
                        || p.phase != Phase::PreCopy
                    {
                        eprintln!(
                            "[{:6.1}s] {} {}",
                            p.elapsed_seconds,
                            bytes(p.transferred_bytes),
                            Self::describe(p)
                        );
                        self.last_line = Instant::now();
                    }
                }
            },
            _ => {}
        }
    }

    /// Runs `f` (a prompt, a message) with the bar hidden.
    pub fn suspend(&self, f: impl FnOnce()) {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// The summary table printed at the end of a migration.
pub fn summary(s: &MigrationStats) -> String {
    let mut t = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(t, "  {k:<24} {v}");
    };
    row("migration", s.id.to_string());
    row(
        "guest",
        format!("{} ({})", s.guest, ByteSize(s.total_bytes)),
    );
    row("route", format!("{} -> {}", s.source, s.destination));
    row(
        "result",
        format!("{:?}", s.result).to_lowercase()
            + if s.downtime_over_limit {
                ", the downtime over its limit"
            } else {
                ""
            }
            + &s.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
    );
    if let Some(n) = &s.note {
        row("note", n.clone());
    }
    row(
        "mode / transport",
        format!(
            "{} / {} ({} streams, {})",
            s.mode, s.transport, s.streams, s.backend
        ),
    );
    row("total time", format!("{:.3} s", s.total_seconds));
    row("setup time", format!("{:.3} s", s.setup_seconds));
    row(
        "downtime",
        format!(
            "{:.1} ms (limit {:.0} ms){}",
            s.downtime_seconds * 1e3,
            s.downtime_limit_seconds * 1e3,
            if s.downtime_over_limit {
                ": OVER THE LIMIT"
            } else {
                ""
            }
        ),
    );
    row(
        "transferred",
        format!("{} on the wire", bytes(s.transferred_bytes)),
    );
    row(
        "pages",
        format!("{} normal, {} zero", s.normal_pages, s.zero_pages),
    );
    row(
        "passes",
        format!("{} (dirty log: {})", s.passes, s.dirty_log),
    );
    row("last transfer rate", rate(s.transfer_rate));
    row("last dirty rate", rate(s.dirty_rate));
    row("throttle (max)", format!("{}%", s.throttle_max_percent));
    row(
        "sent while stunned",
        format!(
            "{} (device state {} B)",
            bytes(s.stunned_bytes),
            s.device_state_bytes
        ),
    );
    row("sealing CPU", format!("{:.3} s", s.seal_cpu_seconds));
    row(
        "memory identical",
        match s.memory_identical {
            Some(true) => "yes (digests at stun and resume match)".into(),
            Some(false) => "NO".into(),
            None if s.dirty_log == "device-model" => "checked by the device model".into(),
            None => "not verified".into(),
        },
    );
    // A device model's migration has no per-pass record of ferry's.
    if s.pass_history.is_empty() {
        return t;
    }
    let _ = writeln!(
        t,
        "\n  {:>4} {:>9} {:>8} {:>10} {:>8} {:>11} {:>11} {:>9} {:>8}",
        "pass", "pages", "zero", "MiB", "secs", "xfer MB/s", "dirty MB/s", "throttle", "stunned"
    );
    for p in &s.pass_history {
        let _ = writeln!(
            t,
            "  {:>4} {:>9} {:>8} {:>10.1} {:>8.3} {:>11.0} {:>11.0} {:>8}% {:>8}",
            p.pass,
            p.pages,
            p.zero_pages,
            p.bytes as f64 / (1u64 << 20) as f64,
            p.seconds,
            p.transfer_rate / 1e6,
            p.dirty_rate / 1e6,
            p.throttle_percent,
            if p.stunned { "yes" } else { "" }
        );
    }
    t
}

/// `ferry drain`'s outcome: one line per guest.
pub fn drain_table(
    outcomes: &[crate::control::wire::DrainOutcome],
    unplaced: &[crate::control::wire::DrainUnplaced],
) -> String {
    let mut t = format!(
        "{:<16} {:<14} {:<32} {:<10} {}\n",
        "guest", "destination", "migration", "result", "why"
    );
    for o in outcomes {
        let _ = writeln!(
            t,
            "{:<16} {:<14} {:<32} {:<10} {}",
            o.guest,
            o.destination,
            o.migration
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            if o.completed { "moved" } else { "not moved" },
            o.error.as_deref().unwrap_or("")
        );
    }
    for u in unplaced {
        let _ = writeln!(
            t,
            "{:<16} {:<14} {:<32} {:<10} {}",
            u.guest, "-", "-", "stays", u.reason
        );
    }
    t
}

/// `ferry status`: one line per migration.
pub fn status_table(recs: &[MigrationRecord]) -> String {
    let mut t = format!(
        "{:<32} {:<12} {:<10} {:<14} {:<12} {:<10} {:>9} {:>10}\n",
        "id", "guest", "source", "destination", "transport", "state", "total s", "downtime"
    );
    for r in recs {
        let (total, down) = r
            .stats
            .as_ref()
            .map(|s| {
                (
                    format!("{:.2}", s.total_seconds),
                    format!("{:.1} ms", s.downtime_seconds * 1e3),
                )
            })
            .or_else(|| {
                // Under way: how long so far, and where it is.
                r.progress.as_ref().map(|p| {
                    let at = match p.phase {
                        Phase::PreCopy => format!("pass {}", p.pass),
                        Phase::Switchover => "stun".into(),
                        other => format!("{other:?}").to_lowercase(),
                    };
                    (format!("{:.1}...", p.elapsed_seconds), at)
                })
            })
            .unwrap_or_else(|| ("-".into(), "-".into()));
        let _ = writeln!(
            t,
            "{:<32} {:<12} {:<10} {:<14} {:<12} {:<10} {:>9} {:>10}",
            r.id.to_string(),
            r.guest,
            r.source,
            r.destination,
            r.transport.to_string(),
            format!("{:?}", r.state).to_lowercase(),
            total,
            down
        );
        if let Some(w) = &r.waiting {
            let _ = writeln!(t, "  {w}");
        }
    }
    t
}

/// `ferry status ID`: one migration in detail, as `virsh domjobinfo` shows
/// a job (running) or `--completed` (ended).
pub fn job_info(r: &MigrationRecord) -> String {
    let mut t = String::new();
    let state = serde_json::to_value(r.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let _ = writeln!(t, "  {:<24} {state}", "state");
    if let Some(w) = &r.waiting {
        let _ = writeln!(t, "  {:<24} {w}", "waiting");
    }
    if let Some(s) = &r.stats {
        t.push_str(&summary(s));
        return t;
    }
    let mut row = |k: &str, v: String| {
        let _ = writeln!(t, "  {k:<24} {v}");
    };
    row("migration", r.id.to_string());
    row("guest", r.guest.clone());
    row("route", format!("{} -> {}", r.source, r.destination));
    row("transport", r.transport.to_string());
    if let Some(p) = &r.progress {
        row("phase", ProgressView::describe(p));
        row("elapsed", format!("{:.1} s", p.elapsed_seconds));
        row(
            "transferred",
            format!("{} of {}", bytes(p.transferred_bytes), bytes(p.total_bytes)),
        );
        row("remaining", bytes(p.remaining_bytes));
        row("transfer rate", rate(p.transfer_rate));
        row("dirty rate", rate(p.dirty_rate));
        row("throttle", format!("{}%", p.throttle_percent));
        if p.pass_total_bytes > 0 {
            row(
                "this pass",
                format!("{} of {}", bytes(p.pass_bytes), bytes(p.pass_total_bytes)),
            );
        }
        row(
            "expected downtime",
            format!("{:.1} ms", p.expected_downtime_seconds * 1e3),
        );
        row("time remaining", eta(p.eta_seconds));
    }
    if let Some(e) = &r.error {
        row("error", e.clone());
    }
    t
}

/// Why an abbreviated migration id names no one migration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("{0:?} is not a migration id: expected hex digits, as `ferry status` lists them")]
    NotHex(String),
    #[error("no migration id starts with {0} (`ferry status` lists them)")]
    NoMatch(String),
    #[error("{prefix} names {count} migrations ({which}): give more digits")]
    Ambiguous {
        prefix: String,
        count: usize,
        which: String,
    },
}

/// The one migration whose id starts with `prefix` (ids may be abbreviated,
/// as git's are), or why there is none.
pub fn find_by_prefix<'a>(
    recs: &'a [MigrationRecord],
    prefix: &str,
) -> Result<&'a MigrationRecord, PrefixError> {
    let p = prefix.trim().to_ascii_lowercase();
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PrefixError::NotHex(prefix.to_string()));
    }
    let hits: Vec<&MigrationRecord> = recs
        .iter()
        .filter(|r| r.id.to_string().starts_with(&p))
        .collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(PrefixError::NoMatch(p)),
        many => Err(PrefixError::Ambiguous {
            count: many.len(),
            which: many
                .iter()
                .map(|r| format!("{} of {}", &r.id.to_string()[..12], r.guest))
                .collect::<Vec<_>>()
                .join(", "),
            prefix: p,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::wire::MigrationState;

    fn rec(id: &str, guest: &str) -> MigrationRecord {
        MigrationRecord {
            id: id.parse().unwrap(),
            guest: guest.into(),
            source: "a".into(),
            destination: "b".into(),
            mode: Default::default(),
            transport: crate::protocol::Transport::Plaintext,
            state: MigrationState::Running,
            started_unix_ms: 0,
            progress: None,
            stats: None,
            error: None,
            waiting: None,
        }
    }

    #[test]
    fn an_abbreviated_id_names_one_migration_or_says_why_not() {
        let recs = [
            rec("0123456789abcdef0123456789abcdef", "g1"),
            rec("0123ffff89abcdef0123456789abcdef", "g2"),
            rec("fedcba9876543210fedcba9876543210", "g3"),
        ];
        assert_eq!(find_by_prefix(&recs, "fed").unwrap().guest, "g3");
        assert_eq!(find_by_prefix(&recs, "01234").unwrap().guest, "g1");
        assert_eq!(find_by_prefix(&recs, "0123F").unwrap().guest, "g2");
        let full = "0123456789abcdef0123456789abcdef";
        assert_eq!(find_by_prefix(&recs, full).unwrap().guest, "g1");
        let e = find_by_prefix(&recs, "0123").unwrap_err().to_string();
        assert!(
            e.contains("names 2 migrations") && e.contains("of g1") && e.contains("of g2"),
            "{e}"
        );
        let e = find_by_prefix(&recs, "abc").unwrap_err().to_string();
        assert!(e.contains("no migration id starts with abc"), "{e}");
        let e = find_by_prefix(&recs, "g1").unwrap_err().to_string();
        assert!(e.contains("not a migration id"), "{e}");
        assert!(find_by_prefix(&recs, "").is_err());
    }
}
