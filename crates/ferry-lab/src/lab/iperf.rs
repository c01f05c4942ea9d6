//! iperf3 in namespaces: servers that go away with their handle, clients
//! whose JSON report is read back.

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::lab::error::{Context, Result, bail};

use crate::netns::Netns;

/// iperf3 servers, killed when this is dropped.
pub struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts an iperf3 server on each port in `ns` and waits (up to 5 s) until
/// each accepts connections.
pub fn servers(ns: &Netns, ports: &[u16]) -> Result<Servers> {
    let mut s = Servers(Vec::new());
    for p in ports {
        s.0.push(
            ns.command("iperf3")
                .args(["-s", "-p", &p.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting iperf3 (is it installed? cargo xtask setup)")?,
        );
    }
    // A probe connection that closes at once costs a server nothing: it goes
    // back to listening.
    for p in ports {
        let end = Instant::now() + Duration::from_secs(5);
        while ns
            .run(|| std::net::TcpStream::connect(("127.0.0.1", *p)))
            .is_err()
        {
            if Instant::now() > end {
                bail!("iperf3 server on port {p} did not start within 5 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(s)
}

/// Starts a client in `ns` to `dst:port` for `secs` seconds (the first
/// omitted), with `extra` arguments, reporting JSON.
pub fn client(ns: &Netns, dst: &str, port: u16, secs: u32, extra: &[&str]) -> Result<Child> {
    ns.command("iperf3")
        .args(["-c", dst, "-p", &port.to_string(), "-t", &secs.to_string()])
        .args(["-O", "1", "-J"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting iperf3 client")
}

/// A finished client's JSON report.
pub fn report(c: Child) -> Result<serde_json::Value> {
    let out = c.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "iperf3 failed: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_str(&text).context("iperf3 JSON")
}

/// Receiver goodput of a TCP client's report, in bits per second.
pub fn goodput_bps(report: &serde_json::Value) -> Result<f64> {
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON without end.sum_received")
}

/// Per-interval throughput of a report, in bits per second.
pub fn intervals_bps(report: &serde_json::Value) -> Vec<f64> {
    report["intervals"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["sum"]["bits_per_second"].as_f64())
                .collect()
        })
        .unwrap_or_default()
}
