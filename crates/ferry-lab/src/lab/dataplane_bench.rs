//! `ferry lab bench-dataplane`: what ferry's eBPF programs cost. Per packet,
//! by BPF_PROG_TEST_RUN with repeat (the kernel times the runs); and as
//! forwarding throughput of a router namespace without ferry, with TCX
//! classification, and with XDP classification at ingress.

use ferry_common::names::program;
use std::sync::Arc;

use crate::lab::error::{Context, Result};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use serde::Serialize;

use crate::{
    config,
    dataplane::Dataplane,
    lab::{Topology, iperf},
    net::{MacAddr, frame::ethernet},
    netns::Netns,
    router::{Router, RouterConfig},
};

#[derive(Debug, Serialize)]
pub struct ProgramCost {
    pub program: String,
    pub case: String,
    pub ns_per_packet: f64,
}

#[derive(Debug, Serialize)]
pub struct Forwarding {
    pub setup: String,
    pub gbit_per_second: f64,
    pub ratio_to_plain: f64,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub costs: Vec<ProgramCost>,
    pub forwarding: Vec<Forwarding>,
}

const REPEAT: u32 = 1_000_000;

/// 16 rules that a TCP frame to port 5201 matches only at the last.
fn rules_yaml(last_only: bool) -> String {
    let mut y = String::from("name: bench\ninterfaces: [{name: lo}]\nclasses:\n");
    if last_only {
        for i in 0..15 {
            y.push_str(&format!(
                "- {{name: c{i}, id: {}, matches: [{{protocol: udp, dst_port: '{}'}}]}}\n",
                i + 1,
                1000 + i
            ));
        }
    }
    y.push_str("- {name: iperf, id: 30, matches: [{protocol: tcp, dst: 10.0.0.0/8, dst_port: '5201'}]}\n- {name: rest, id: 31}\n");
    y
}

fn tcp_frame() -> Vec<u8> {
    let mut ip = vec![
        0x45,
        0,
        0,
        40 + 60,
        0,
        0,
        0x40,
        0,
        64,
        6,
        0,
        0,
        10,
        0,
        0,
        1,
        10,
        0,
        0,
        2,
    ];
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[12] = 0x50;
    ip.extend_from_slice(&tcp);
    ip.extend_from_slice(&[0u8; 60]);
    ethernet(MacAddr::local(2), MacAddr::local(1), &[], 0x0800, &ip)
}

fn cost_of(dp: &mut Dataplane, program: &str, frame: &[u8]) -> Result<f64> {
    let prog = dp
        .ebpf_mut()
        .program_mut(program)
        .with_context(|| format!("no program {program}"))?;
    let opts = || TestRunOptions {
        data_in: Some(frame),
        repeat: REPEAT,
        ..TestRunOptions::new()
    };
    let r = if let Ok(p) = <&mut SchedClassifier>::try_from(&mut *prog) {
        if p.fd().is_err() {
            p.load()?;
        }
        p.test_run(opts())?
    } else {
        let p: &mut Xdp = prog.try_into()?;
        if p.fd().is_err() {
            p.load()?;
        }
        p.test_run(opts())?
    };
    // The kernel reports the mean duration of one run.
    Ok(r.duration.as_nanos() as f64)
}

fn costs() -> Result<Vec<ProgramCost>> {
    let frame = tcp_frame();
    let mut out = Vec::new();
    for (case, last_only) in [("first rule matches", false), ("16th rule matches", true)] {
        let cfg: RouterConfig = config::from_str(&rules_yaml(last_only), "bench.yaml")?;
        let mut dp = Dataplane::load(None)?;
        let (rules, default) = cfg.compile()?;
        dp.set_rules(&rules, default)?;
        for p in [
            program::CLASSIFY_INGRESS,
            program::CLASSIFY_XDP,
            program::CLASSIFY_EGRESS,
        ] {
            out.push(ProgramCost {
                program: p.into(),
                case: case.into(),
                ns_per_packet: cost_of(&mut dp, p, &frame)?,
            });
        }
    }
    let mut dp = Dataplane::load(None)?;
    dp.set_migration_vlan(100, 4, 10)?;
    for (p, case) in [
        (program::VLAN_COUNT_INGRESS, "untagged TCP"),
        (program::MIG_TAG_EGRESS, "not a migration stream"),
        (program::WATCH_INGRESS, "data from a known MAC"),
    ] {
        out.push(ProgramCost {
            program: p.into(),
            case: case.into(),
            ns_per_packet: cost_of(&mut dp, p, &frame)?,
        });
    }
    Ok(out)
}

/// One TCP flow a -> b, in Gbit/s.
fn iperf(a: &Netns, b: &Netns, secs: u32) -> Result<f64> {
    let _server = iperf::servers(b, &[5201])?;
    let r = iperf::report(iperf::client(a, "10.6.2.1", 5201, secs, &[])?)?;
    Ok(iperf::goodput_bps(&r)? / 1e9)
}

fn forwarding(secs: u32, progress: &dyn Fn(&str)) -> Result<Vec<Forwarding>> {
    let mut t = Topology::new("fb");
    let (a, r, b) = t.routed()?;
    let mut out = Vec::new();
    progress("forwarding: plain router");
    let plain = iperf(&a, &b, secs)?;
    out.push(Forwarding {
        setup: "plain router".into(),
        gbit_per_second: plain,
        ratio_to_plain: 1.0,
    });

    progress("forwarding: ferry router, TCX classification both ways on both interfaces");
    let y = rules_yaml(true).replace(
        "interfaces: [{name: lo}]",
        "interfaces: [{name: ra}, {name: rb}]",
    );
    let cfg: RouterConfig = config::from_str(&y, "bench.yaml")?;
    let router = Router::start(cfg, Some(r.clone()))?;
    let tcx = iperf(&a, &b, secs)?;
    out.push(Forwarding {
        setup: "ferry router (TCX, 16 rules)".into(),
        gbit_per_second: tcx,
        ratio_to_plain: tcx / plain,
    });
    router.stop()?;

    progress("forwarding: XDP classification at ra (native on veth)");
    let mut dp = Dataplane::load(Some(Arc::clone(&r)))?;
    let cfg: RouterConfig = config::from_str(&rules_yaml(true), "bench.yaml")?;
    let (rules, default) = cfg.compile()?;
    dp.set_rules(&rules, default)?;
    dp.attach_xdp(program::CLASSIFY_XDP, "ra", true)?;
    let xdp = iperf(&a, &b, secs)?;
    out.push(Forwarding {
        setup: "XDP classify at ingress (native, veth)".into(),
        gbit_per_second: xdp,
        ratio_to_plain: xdp / plain,
    });
    drop(dp);
    Ok(out)
}

pub fn run(secs: u32, progress: &dyn Fn(&str)) -> Result<Results> {
    progress("per-packet cost: BPF_PROG_TEST_RUN, 1,000,000 runs each");
    let costs = costs()?;
    let forwarding = forwarding(secs, progress)?;
    Ok(Results { costs, forwarding })
}

impl Results {
    pub fn table(&self) -> String {
        let mut s = String::from("\nPer-packet cost (BPF_PROG_TEST_RUN, 134-byte TCP frame):\n");
        s.push_str(&format!(
            "  {:<20} {:<24} {:>10}\n",
            "program", "case", "ns/packet"
        ));
        for c in &self.costs {
            s.push_str(&format!(
                "  {:<20} {:<24} {:>10.1}\n",
                c.program, c.case, c.ns_per_packet
            ));
        }
        s.push_str("\nForwarding through a router namespace (iperf3 TCP, one flow):\n");
        s.push_str(&format!(
            "  {:<40} {:>10} {:>8}\n",
            "setup", "Gbit/s", "ratio"
        ));
        for f in &self.forwarding {
            s.push_str(&format!(
                "  {:<40} {:>10.2} {:>8.2}\n",
                f.setup, f.gbit_per_second, f.ratio_to_plain
            ));
        }
        s
    }
}
