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
        format!(
            "{phase} | dirty {} | xfer {} | throttle {}% | remaining {}",
            rate(p.dirty_rate),
            rate(p.transfer_rate),
            p.throttle_percent,
            bytes(p.remaining_bytes)
        )
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
            Response::Progress(p) => match &self.bar {
                Some(b) => {
                    b.set_length(p.total_bytes.max(p.transferred_bytes).max(1));
                    b.set_position(p.transferred_bytes);
                    b.set_message(Self::describe(p));
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
            "{:.1} ms (limit {:.0} ms)",
            s.downtime_seconds * 1e3,
            s.downtime_limit_seconds * 1e3
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
    }
    t
}
