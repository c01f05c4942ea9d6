//! `ferry lab demo-repeat`: the demo, run again and again while busy threads
//! load every core, counting the runs that fail. Races between a reply and
//! the state it reports show under load and almost never on an idle
//! machine, so this is how a fix for one is measured (not in CI: it is
//! slow, and a loaded CI machine is exactly what it makes).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use serde::Serialize;

use super::DemoConfig;
use crate::{demo, lab::machine::Machine};

/// Threads that spin until dropped: the "CPU hog".
struct Hogs {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Hogs {
    fn start(n: usize) -> std::io::Result<Hogs> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let s = stop.clone();
            threads.push(std::thread::Builder::new().name(format!("hog-{i}")).spawn(
                move || {
                    let mut x = 0u64;
                    while !s.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005) + 1);
                    }
                },
            )?);
        }
        Ok(Hogs { stop, threads })
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub run: u32,
    pub ok: bool,
    pub seconds: f64,
    pub total_seconds: Option<f64>,
    pub downtime_seconds: Option<f64>,
    /// The 1-minute load average when the run ended.
    pub load: f64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub hogs: usize,
    pub runs: Vec<Run>,
    pub failures: usize,
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Runs the demo `runs` times with `hogs` spinning threads, printing a line
/// per run as it ends.
pub async fn run(cfg: &DemoConfig, runs: u32, hogs: usize) -> crate::lab::error::Result<Report> {
    let machine = Machine::probe();
    eprintln!("{machine}");
    eprintln!("running the demo {runs} times with {hogs} spinning threads");
    let _hogs = Hogs::start(hogs)?;
    let mut out = Vec::new();
    for i in 1..=runs {
        let t = Instant::now();
        let r = demo::migration::run(cfg, true).await;
        let run = match r {
            Ok(s) => Run {
                run: i,
                ok: true,
                seconds: t.elapsed().as_secs_f64(),
                total_seconds: Some(s.total_seconds),
                downtime_seconds: Some(s.downtime_seconds),
                load: load1(),
                error: None,
            },
            Err(e) => Run {
                run: i,
                ok: false,
                seconds: t.elapsed().as_secs_f64(),
                total_seconds: None,
                downtime_seconds: None,
                load: load1(),
                error: Some(ferry_core::error::report(&e).to_string()),
            },
        };
        eprintln!(
            "run {i:>3}/{runs}: {} in {:.1} s, load {:.1}{}",
            if run.ok { "ok" } else { "FAILED" },
            run.seconds,
            run.load,
            run.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        out.push(run);
    }
    let failures = out.iter().filter(|r| !r.ok).count();
    Ok(Report {
        machine,
        hogs,
        runs: out,
        failures,
    })
}

/// The table `ferry lab demo-repeat` prints.
pub fn render(r: &Report) -> String {
    let mut s = format!(
        "{}\n{:>4}  {:<7} {:>9} {:>10} {:>12} {:>6}  error\n",
        r.machine, "run", "result", "wall s", "total s", "downtime ms", "load"
    );
    let opt = |v: Option<f64>, k: f64| v.map_or("-".to_string(), |x| format!("{:.2}", x * k));
    for x in &r.runs {
        s.push_str(&format!(
            "{:>4}  {:<7} {:>9.2} {:>10} {:>12} {:>6.1}  {}\n",
            x.run,
            if x.ok { "ok" } else { "failed" },
            x.seconds,
            opt(x.total_seconds, 1.0),
            opt(x.downtime_seconds, 1e3),
            x.load,
            x.error.as_deref().unwrap_or("")
        ));
    }
    s.push_str(&format!(
        "{} of {} runs failed with {} spinning threads\n",
        r.failures,
        r.runs.len(),
        r.hogs
    ));
    s
}
