//! `ferry lab bench-wan`: what the WAN delay line can carry and how exactly
//! it delays. Packet rate and throughput through a line (UDP floods of
//! small and large datagrams, a TCP flow) with the CPU its thread used; and
//! the error of the added delay (one-way, measured end to end by
//! timestamped probes) at p50 and p99 for several configured delays.

use std::{net::UdpSocket, sync::Arc, time::Duration};

use crate::lab::error::{Context, LabError, Result};
use serde::Serialize;

use crate::{
    clock::monotonic_ns,
    config,
    lab::{Topology, iperf},
    netns::Netns,
    report::svg::{Chart, LINE_COLORS, Series},
    router::{Router, RouterConfig},
};

#[derive(Debug, Serialize)]
pub struct Carried {
    pub case: String,
    pub packets_per_second: f64,
    pub gbit_per_second: f64,
    /// CPU seconds of the line's thread per second.
    pub line_cores: f64,
    /// The line thread's CPU per frame it carried.
    pub line_us_per_frame: f64,
    pub lost_percent: f64,
}

#[derive(Debug, Serialize)]
pub struct Accuracy {
    pub delay_ms: f64,
    pub samples: usize,
    /// Measured one-way delay less the path's own and the configured delay.
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub carried: Vec<Carried>,
    pub accuracy: Vec<Accuracy>,
}

fn config(delay_ms: f64) -> Result<RouterConfig> {
    Ok(config::from_str(
        &format!(
            "name: bench\ninterfaces: [{{name: ra}}, {{name: rb, wan: true}}]\nclasses:\n\
             - {{name: bench, id: 1, matches: [{{protocol: udp, dst_port: '5201'}}, {{protocol: tcp, dst_port: '5201'}}, {{protocol: udp, dst_port: '9000'}}], wan: {{delay: {}us}}}}\n\
             - {{name: other, id: 2}}\n",
            delay_ms * 1e3
        ),
        "bench.yaml",
    )?)
}

/// CPU time (user + system) of this process's threads named `name`.
fn thread_cpu_seconds(name: &str) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0.0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: state is the 3rd
        // field of the line, utime and stime the 14th and 15th.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            total += (ticks(11) + ticks(12)) / tick;
        }
    }
    total
}

fn carried(a: &Netns, b: &Netns, case: &str, extra: &[&str], secs: u32) -> Result<Carried> {
    let _s = iperf::servers(b, &[5201])?;
    let cpu0 = thread_cpu_seconds("ferry-wan-1");
    let rep = iperf::report(iperf::client(a, "10.6.2.1", 5201, secs, extra)?)?;
    let cpu = thread_cpu_seconds("ferry-wan-1") - cpu0;
    let udp = extra.contains(&"-u");
    let (pps, gbit, lost) = if udp {
        let s = &rep["end"]["sum_received"];
        let s = if s.is_null() { &rep["end"]["sum"] } else { s };
        let secs = s["seconds"].as_f64().context("iperf3 UDP seconds")?;
        let packets = s["packets"].as_f64().context("iperf3 UDP packets")?;
        let lost = s["lost_packets"].as_f64().unwrap_or(0.0);
        let bits = s["bits_per_second"].as_f64().unwrap_or(0.0);
        let sent = rep["end"]["sum_sent"]["packets"]
            .as_f64()
            .unwrap_or(packets);
        (
            (packets - lost) / secs,
            bits / 1e9,
            if sent > 0.0 { 100.0 * lost / sent } else { 0.0 },
        )
    } else {
        let bps = iperf::goodput_bps(&rep)?;
        (bps / 8.0 / 1448.0, bps / 1e9, 0.0)
    };
    Ok(Carried {
        case: case.into(),
        packets_per_second: pps,
        gbit_per_second: gbit,
        // The first second is omitted from iperf3's figures, not from the CPU.
        line_cores: cpu / f64::from(secs + 1),
        line_us_per_frame: if pps > 0.0 {
            cpu / f64::from(secs + 1) / pps * 1e6
        } else {
            f64::NAN
        },
        lost_percent: lost,
    })
}

/// One-way delays (µs) of `n` probes a -> b:`port`, one per millisecond.
fn one_way_us(a: &Netns, b: &Arc<Netns>, port: u16, n: u32) -> Result<Vec<f64>> {
    let rx = b.run(|| UdpSocket::bind(("10.6.2.1", port)))?;
    rx.set_read_timeout(Some(Duration::from_millis(500)))?;
    let recv = std::thread::spawn(move || {
        let (mut v, mut buf) = (Vec::new(), [0u8; 64]);
        while let Ok(len) = rx.recv(&mut buf) {
            let now = monotonic_ns();
            if len >= 8 {
                let sent = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                v.push(now.saturating_sub(sent) as f64 / 1e3);
            }
        }
        v
    });
    a.run(|| -> Result<()> {
        let s = UdpSocket::bind("10.6.1.1:0")?;
        for _ in 0..n {
            s.send_to(&monotonic_ns().to_be_bytes(), ("10.6.2.1", port))?;
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    })?;
    recv.join()
        .map_err(|_| LabError::Panicked("probe receiver"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(secs: u32, progress: &dyn Fn(&str)) -> Result<Results> {
    let mut t = Topology::new("fw");
    let (a, r, b) = t.routed()?;
    for ns in [&a, &b] {
        ns.sysctl("net.ipv4.tcp_rmem", "4096 131072 67108864")?;
        ns.sysctl("net.ipv4.tcp_wmem", "4096 65536 67108864")?;
    }
    let mut router = Router::start(config(10.0)?, Some(r.clone()))?;
    let mut out = Vec::new();
    for (case, extra) in [
        ("UDP 64-byte datagrams", &["-u", "-b", "0", "-l", "64"][..]),
        (
            "UDP 1400-byte datagrams",
            &["-u", "-b", "0", "-l", "1400"][..],
        ),
        (
            "UDP 1400-byte, paced at 200 Mbit/s",
            &["-u", "-b", "200M", "-l", "1400"][..],
        ),
        ("TCP, one flow (super-packets; per segment)", &[][..]),
    ] {
        progress(&format!("carried through a 10 ms line: {case}, {secs} s"));
        out.push(carried(&a, &b, case, extra, secs)?);
    }

    progress("accuracy: the path's own one-way delay (no line)");
    let mut base = one_way_us(&a, &b, 9001, 500)?;
    base.sort_by(f64::total_cmp);
    let base = percentile(&base, 0.5);
    let mut accuracy = Vec::new();
    for delay_ms in [1.0, 25.0, 75.0, 150.0] {
        progress(&format!("accuracy: {delay_ms} ms, 1000 probes"));
        router.apply(config(delay_ms)?)?;
        let mut v: Vec<f64> = one_way_us(&a, &b, 9000, 1000)?
            .into_iter()
            .map(|us| us - base - delay_ms * 1e3)
            .collect();
        v.sort_by(f64::total_cmp);
        accuracy.push(Accuracy {
            delay_ms,
            samples: v.len(),
            p50_us: percentile(&v, 0.5),
            p99_us: percentile(&v, 0.99),
            max_us: v.last().copied().unwrap_or(f64::NAN),
        });
    }
    router.stop()?;
    Ok(Results {
        carried: out,
        accuracy,
    })
}

impl Results {
    pub fn table(&self) -> String {
        let mut s =
            String::from("\nCarried through one delay line (10 ms), sender a -> router -> b:\n");
        s.push_str(&format!(
            "  {:<36} {:>12} {:>10} {:>11} {:>10} {:>8}\n",
            "traffic", "packets/s", "Gbit/s", "line cores", "µs/frame", "lost %"
        ));
        for c in &self.carried {
            s.push_str(&format!(
                "  {:<36} {:>12.0} {:>10.3} {:>11.2} {:>10.2} {:>8.2}\n",
                c.case,
                c.packets_per_second,
                c.gbit_per_second,
                c.line_cores,
                c.line_us_per_frame,
                c.lost_percent
            ));
        }
        s.push_str("\nAdded-delay error (one-way, end to end, less the path's own delay):\n");
        s.push_str(&format!(
            "  {:>10} {:>8} {:>10} {:>10} {:>10}\n",
            "delay ms", "probes", "p50 µs", "p99 µs", "max µs"
        ));
        for a in &self.accuracy {
            s.push_str(&format!(
                "  {:>10} {:>8} {:>10.1} {:>10.1} {:>10.1}\n",
                a.delay_ms, a.samples, a.p50_us, a.p99_us, a.max_us
            ));
        }
        s
    }

    pub fn chart(&self) -> String {
        Chart {
            title: "WAN delay line: added-delay error by configured delay".into(),
            categories: self
                .accuracy
                .iter()
                .map(|a| format!("{} ms", a.delay_ms))
                .collect(),
            bars: vec![
                Series {
                    name: "p50 error (µs)".into(),
                    values: self.accuracy.iter().map(|a| a.p50_us).collect(),
                    color: crate::report::svg::COLORS[0],
                },
                Series {
                    name: "p99 error (µs)".into(),
                    values: self.accuracy.iter().map(|a| a.p99_us).collect(),
                    color: crate::report::svg::COLORS[1],
                },
            ],
            bar_axis: "error (µs)".into(),
            lines: vec![Series {
                name: "max error (µs)".into(),
                values: self.accuracy.iter().map(|a| a.max_us).collect(),
                color: LINE_COLORS[0],
            }],
            line_axis: "max error (µs)".into(),
        }
        .render()
    }
}
