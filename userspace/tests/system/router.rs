//! `ferry router` in namespaces: classification of crafted frames with exact
//! counts, the eBPF policer, HTB shaping of real TCP flows (iperf3) with a
//! live rate change, shaping that survives a restart, and the announcement
//! watch measuring a MAC move through a bridge.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Child,
    sync::Arc,
    time::Duration,
};

use ferry::{
    config,
    dataplane::classify::ClassCount,
    lab::{Topology, iperf, qemu},
    net::{
        MacAddr, PacketSocket,
        announce::{Announcement, Schedule, announce},
        frame::{VlanTag, ethernet},
        icmp,
    },
    netns::Netns,
    router::{Router, RouterConfig},
};
use ferry_common::counters::Direction;

use crate::common::{exclusive, privileged, wait_for};

fn router_config(yaml: &str) -> RouterConfig {
    config::from_str(yaml, "router.yaml").unwrap()
}

/// An IPv4 packet (no options) around `l4`.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, dscp: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, dscp << 2];
    p.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let mut sum = 0u32;
    for w in p.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p.extend_from_slice(l4);
    p
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(l4);
    p
}

/// A UDP header and payload (checksum left out: the router never checks it).
fn udp(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.resize(8 + payload, 0x5a);
    h
}

/// A TCP SYN header.
fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

/// (interface, direction, class) -> (packets, bytes, drops).
fn by_class(r: &Router, counts: &[ClassCount]) -> Vec<(String, Direction, u16, u64, u64, u64)> {
    let mut v: Vec<_> = counts
        .iter()
        .map(|c| {
            (
                r.ifname(c.ifindex).unwrap_or("?").to_string(),
                c.direction,
                c.class,
                c.packets,
                c.bytes,
                c.drops,
            )
        })
        .collect();
    v.sort();
    v
}

fn metrics_text(r: &Router) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&r.metrics.registry.gather())
        .unwrap()
}

#[test]
fn classifies_every_kind_of_frame_into_its_class_exactly() {
    if !privileged("classifies_every_kind_of_frame_into_its_class_exactly") {
        return;
    }
    let mut t = Topology::new("ft");
    let a = t.add_node("a", false).unwrap();
    let r = t.add_node("r", false).unwrap();
    t.link("a", "va", "r", "ra").unwrap();
    let cfg = router_config(
        "name: r1\ninterfaces: [{name: ra}]\nclasses:\n\
         - {name: migration, id: 10, matches: [{tag: 802.1q, vlan: 100}]}\n\
         - {name: qinq, id: 11, matches: [{tag: 802.1ad, vlan: 300, inner_vlan: 10}]}\n\
         - {name: voice, id: 12, matches: [{dscp: 46}]}\n\
         - {name: iperf, id: 13, matches: [{protocol: tcp, dst: 10.4.0.0/24, dst_port: 5201-5202}]}\n\
         - {name: v6, id: 14, matches: [{protocol: udp, dst: 'fd00:4::/64', src_port: '4000'}]}\n\
         - {name: policed, id: 15, matches: [{protocol: udp, dst_port: '9999'}], police: {rate: 1000B/s, burst: 1000B}}\n\
         - {name: rest, id: 20}\n",
    );
    let router = Router::start(cfg, Some(r.clone())).unwrap();

    // Addressed to nobody on r, so r's stack answers none of them.
    let (dst, src) = (MacAddr::local(0x99), t.mac("a", "va").unwrap());
    let (a4, r4, far4) = (
        Ipv4Addr::new(10, 4, 0, 1),
        Ipv4Addr::new(10, 4, 0, 2),
        Ipv4Addr::new(10, 9, 0, 1),
    );
    let (a6, r6): (Ipv6Addr, Ipv6Addr) =
        ("fd00:4::1".parse().unwrap(), "fd00:4::9".parse().unwrap());
    let q = |vid| VlanTag::dot1q(vid);
    let voice = ipv4(a4, r4, 17, 46, &udp(5000, 7, 20));
    let syn5201 = ipv4(a4, r4, 6, 0, &tcp(40000, 5201));
    let syn5202 = ipv4(a4, r4, 6, 0, &tcp(40000, 5202));
    let far = ipv4(a4, far4, 6, 0, &tcp(40000, 5201));
    let v6hit = ipv6(a6, r6, 17, &udp(4000, 53, 10));
    let v6miss = ipv6(a6, r6, 17, &udp(4001, 53, 10));
    // (frame, copies, class it belongs to)
    let plan: Vec<(Vec<u8>, u64, u16)> = vec![
        (ethernet(dst, src, &[], 0x0800, &voice), 3, 12),
        (ethernet(dst, src, &[], 0x0800, &syn5201), 4, 13),
        // First match wins: VLAN 100 before the port rule, before DSCP.
        (ethernet(dst, src, &[q(100)], 0x0800, &syn5201), 5, 10),
        (ethernet(dst, src, &[q(100)], 0x0800, &voice), 1, 10),
        (
            ethernet(dst, src, &[VlanTag::dot1ad(300), q(10)], 0x0800, &voice),
            2,
            11,
        ),
        // QinQ with another inner VLAN is not "qinq"; its DSCP still counts.
        (
            ethernet(dst, src, &[VlanTag::dot1ad(300), q(11)], 0x0800, &voice),
            1,
            12,
        ),
        // Rules without a tag match through any tag.
        (ethernet(dst, src, &[q(200)], 0x0800, &syn5202), 6, 13),
        (ethernet(dst, src, &[], 0x86dd, &v6hit), 7, 14),
        (ethernet(dst, src, &[], 0x86dd, &v6miss), 1, 20),
        (ethernet(dst, src, &[], 0x0800, &far), 2, 20),
        (ethernet(dst, src, &[], 0x88b5, &[0x42; 46]), 1, 20),
    ];
    a.run(|| {
        let sock = PacketSocket::bind("va").unwrap();
        for (f, n, _) in &plan {
            for _ in 0..*n {
                sock.send(f).unwrap();
            }
        }
    });
    // The policer, at egress: 10 frames of 200 bytes against a 1000-byte
    // bucket refilling at 1000 B/s pass 5 and drop 5.
    let policed = ethernet(
        src,
        t.mac("r", "ra").unwrap(),
        &[],
        0x0800,
        &ipv4(r4, a4, 17, 0, &udp(1, 9999, 200 - 42)),
    );
    assert_eq!(policed.len(), 200);
    let refused = r.run(|| {
        let sock = PacketSocket::bind("ra").unwrap();
        // A frame the egress program drops comes back to the sender as ENOBUFS.
        (0..10)
            .filter(|_| {
                sock.send(&policed)
                    .is_err_and(|e| e.raw_os_error() == Some(libc::ENOBUFS))
            })
            .count()
    });
    assert_eq!(refused, 5, "the policer drops half");

    let mut expect: std::collections::BTreeMap<u16, (u64, u64)> = Default::default();
    for (f, n, class) in &plan {
        let e = expect.entry(*class).or_default();
        e.0 += n;
        e.1 += n * f.len() as u64;
    }
    let mut want: Vec<_> = expect
        .iter()
        .map(|(c, (p, b))| ("ra".to_string(), Direction::Ingress, *c, *p, *b, 0))
        .collect();
    want.push(("ra".to_string(), Direction::Egress, 15, 5, 1000, 5));
    want.sort();
    let got = wait_for(Duration::from_secs(3), || {
        let g = by_class(&router, &router.class_counters().unwrap());
        (g == want).then_some(g)
    });
    assert_eq!(
        got.unwrap_or_else(|| by_class(&router, &router.class_counters().unwrap())),
        want
    );

    let text = metrics_text(&router);
    for line in [
        "ferry_class_packets_total{class=\"iperf\",direction=\"ingress\",interface=\"ra\"} 10",
        "ferry_class_packets_total{class=\"policed\",direction=\"egress\",interface=\"ra\"} 5",
        "ferry_class_policer_drops_total{class=\"policed\",direction=\"egress\",interface=\"ra\"} 5",
        "ferry_class_police_rate_bytes_per_second{class=\"policed\"} 1000",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    router.stop().unwrap();
}

fn routed(t: &mut Topology) -> (Arc<Netns>, Arc<Netns>, Arc<Netns>) {
    t.routed().unwrap()
}

fn iperf_servers(b: &Netns, ports: &[u16]) -> iperf::Servers {
    iperf::servers(b, ports).unwrap()
}

fn iperf_client(a: &Netns, dst: &str, port: u16, secs: u32) -> Child {
    iperf::client(a, dst, port, secs, &[]).unwrap()
}

/// Receiver goodput in Mbit/s.
fn goodput_mbit(c: Child) -> f64 {
    iperf::goodput_bps(&iperf::report(c).unwrap()).unwrap() / 1e6
}

/// TCP goodput is the shaped wire rate less Ethernet, IP and TCP headers
/// (1448 of 1514 bytes): within 10% of the configured rate either way.
fn assert_shaped(goodput: f64, rate_mbit: f64) {
    assert!(
        (goodput - rate_mbit).abs() <= 0.10 * rate_mbit,
        "goodput {goodput:.1} Mbit/s, configured {rate_mbit} Mbit/s"
    );
}

const SHAPED: &str = "interfaces:\n\
     - {name: ra}\n\
     - {name: rb, shape: {rate: 10Gbit}}\n\
     classes:\n\
     - {name: bulk, id: 1, matches: [{protocol: tcp, dst_port: '5201'}], rate: RATE, ceil: RATE, prio: 1}\n\
     - {name: other, id: 2, matches: [{protocol: tcp, dst_port: '5202'}]}\n\
     - {name: default, id: 3}\n";

fn shaped_config(name: &str, rate: &str, pin: Option<&PathBuf>) -> RouterConfig {
    let mut y = format!("name: {name}\n{}", SHAPED.replace("RATE", rate));
    if let Some(p) = pin {
        y.push_str(&format!("pin_dir: {}\n", p.display()));
    }
    router_config(&y)
}

#[test]
fn shapes_a_tcp_flow_to_its_class_rate_and_changes_it_live() {
    if !privileged("shapes_a_tcp_flow_to_its_class_rate_and_changes_it_live") {
        return;
    }
    let _x = exclusive();

    let mut t = Topology::new("ft");
    let (a, r, b) = routed(&mut t);
    let mut router = Router::start(shaped_config("r2", "50Mbit", None), Some(r.clone())).unwrap();
    assert_eq!(
        r.netlink().unwrap().root_qdisc("rb").unwrap().as_deref(),
        Some("htb")
    );
    // `ferry router --dry-run` names the classes as iproute2 shows them:
    // each planned class is in `tc class show`, by handle, with its rate.
    let plan = Router::plan(&shaped_config("r2", "50Mbit", None)).unwrap();
    let out = r
        .command("tc")
        .args(["class", "show", "dev", "rb"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    let planned: Vec<(&str, &str)> = plan
        .lines()
        .filter_map(|l| l.trim().strip_prefix("class htb "))
        .map(|l| {
            let mut w = l.split_whitespace();
            let handle = w.next().unwrap();
            let rate = w.skip_while(|x| *x != "rate").nth(1).unwrap();
            (handle, rate)
        })
        .collect();
    assert_eq!(
        planned.len(),
        4,
        "the root class and three classes:\n{plan}"
    );
    for (handle, rate) in &planned {
        assert!(
            shown
                .lines()
                .any(|l| l.starts_with(&format!("class htb {handle} "))
                    && l.contains(&format!(" rate {rate} "))),
            "planned class {handle} at {rate} is not in `tc class show`:\n{shown}\nplan:\n{plan}"
        );
    }
    let _servers = iperf_servers(&b, &[5201, 5202]);

    // Both at once: the bulk class is held to 50 Mbit/s, the other runs free.
    let bulk = iperf_client(&a, "10.6.2.1", 5201, 4);
    let other = iperf_client(&a, "10.6.2.1", 5202, 4);
    let (bulk, other) = (goodput_mbit(bulk), goodput_mbit(other));
    eprintln!("bulk {bulk:.1} Mbit/s (shaped to 50), other {other:.1} Mbit/s (unshaped)");
    assert_shaped(bulk, 50.0);
    assert!(
        other > 5.0 * 50.0,
        "the unshaped class got only {other:.1} Mbit/s"
    );

    // A live change: maps and HTB class change, no program is reloaded.
    router.apply(shaped_config("r2", "120Mbit", None)).unwrap();
    let bulk = goodput_mbit(iperf_client(&a, "10.6.2.1", 5201, 3));
    eprintln!("bulk after the change {bulk:.1} Mbit/s (shaped to 120)");
    assert_shaped(bulk, 120.0);

    // Egress counters on rb saw the bulk flow in its class.
    let counts = router.class_counters().unwrap();
    let rb = counts.iter().find(|c| {
        router.ifname(c.ifindex) == Some("rb") && c.class == 1 && c.direction == Direction::Egress
    });
    assert!(rb.is_some_and(|c| c.bytes > 40_000_000), "{counts:?}");
    let text = metrics_text(&router);
    assert!(
        text.contains(
            "ferry_class_rate_bytes_per_second{class=\"bulk\",interface=\"rb\"} 15000000"
        ),
        "{text}"
    );
    assert!(
        text.contains("ferry_shaper_overlimits_total{class=\"bulk\",interface=\"rb\"}"),
        "{text}"
    );
    router.stop().unwrap();
    assert_ne!(
        r.netlink().unwrap().root_qdisc("rb").unwrap().as_deref(),
        Some("htb"),
        "an unpinned router removes its HTB tree"
    );
}

/// Issue 16: under `ip netns exec` the process gets a mount namespace of
/// its own with a fresh /sys, so a bpffs ferry mounted at /sys/fs/bpf would
/// vanish with it, and the pins with it. The router says so and stops.
#[test]
fn under_ip_netns_exec_a_pin_dir_in_sys_is_refused_not_lost() {
    if !privileged("under_ip_netns_exec_a_pin_dir_in_sys_is_refused_not_lost") {
        return;
    }
    let _x = exclusive();

    let mut t = Topology::new("ft");
    let (_a, r, _b) = routed(&mut t);
    let pin = test_pin_dir(&t);
    let yaml = std::env::temp_dir().join(format!("ferry-netns-exec-{}.yaml", t.prefix()));
    std::fs::write(
        &yaml,
        format!(
            "name: r5\n{}pin_dir: {}\n",
            SHAPED.replace("RATE", "40Mbit"),
            pin.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            r.name(),
            env!("CARGO_BIN_EXE_ferry"),
            "router",
        ])
        .arg("--config")
        .arg(&yaml)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(30), || child.try_wait().unwrap());
    let _ = std::fs::remove_file(&yaml);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("ferry router ran under ip netns exec, pinning where the pins vanish with it");
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    for want in [
        "mount namespace of its own".to_string(),
        format!("ip netns exec {}", r.name()),
        "leave pin_dir out".to_string(),
    ] {
        assert!(err.contains(&want), "expected {want:?} in: {err}");
    }
    assert!(!pin.exists(), "nothing pinned on the host");
    assert_ne!(
        r.netlink().unwrap().root_qdisc("rb").unwrap().as_deref(),
        Some("htb"),
        "nothing touched in the namespace"
    );
}

#[test]
fn refuses_the_interface_the_default_route_leaves_through_unless_allowed() {
    if !privileged("refuses_the_interface_the_default_route_leaves_through_unless_allowed") {
        return;
    }
    let _x = exclusive();

    let mut t = Topology::new("ft");
    let (_a, r, _b) = routed(&mut t);
    t.route("r", "default", "10.6.2.1".parse().unwrap())
        .unwrap();
    let err = Router::start(shaped_config("r4", "50Mbit", None), Some(r.clone()))
        .err()
        .expect("a router on the default route's interface must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("interfaces[1] (rb)")
            && msg.contains("default route leaves through it")
            && msg.contains("allow_default_route: true"),
        "{msg}"
    );
    // Refused before anything was touched.
    assert_ne!(
        r.netlink().unwrap().root_qdisc("rb").unwrap().as_deref(),
        Some("htb"),
        "a refused router must leave the interface as it was"
    );

    let mut cfg = shaped_config("r4", "50Mbit", None);
    cfg.interfaces[1].allow_default_route = true;
    let router = Router::start(cfg, Some(r.clone())).unwrap();
    assert_eq!(
        r.netlink().unwrap().root_qdisc("rb").unwrap().as_deref(),
        Some("htb")
    );
    router.stop().unwrap();
}

/// A pin directory of this test run's own under /sys/fs/bpf.
fn test_pin_dir(t: &Topology) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/ferry-test-{}-{}",
        std::process::id(),
        t.prefix()
    ))
}

/// Removes a pinned router's leftovers however the test ends.
struct Unpin(RouterConfig, Option<Arc<Netns>>);
impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = Router::remove(&self.0, self.1.clone());
    }
}

#[test]
fn a_restarted_router_keeps_shaping_and_counting() {
    if !privileged("a_restarted_router_keeps_shaping_and_counting") {
        return;
    }
    let _x = exclusive();

    let mut t = Topology::new("ft");
    let (a, r, b) = routed(&mut t);
    let pin = test_pin_dir(&t);
    let cfg = shaped_config("r3", "40Mbit", Some(&pin));
    let _unpin = Unpin(cfg.clone(), Some(r.clone()));
    let _servers = iperf_servers(&b, &[5201]);
    let bulk_bytes = |router: &Router| {
        router
            .class_counters()
            .unwrap()
            .iter()
            .find(|c| {
                router.ifname(c.ifindex) == Some("rb")
                    && c.class == 1
                    && c.direction == Direction::Egress
            })
            .map_or(0, |c| c.bytes)
    };

    let router = Router::start(cfg.clone(), Some(r.clone())).unwrap();
    assert_shaped(goodput_mbit(iperf_client(&a, "10.6.2.1", 5201, 2)), 40.0);
    let before = bulk_bytes(&router);
    router.stop().unwrap();
    assert!(pin.join("CLASS_COUNTERS").exists() && pin.join("link-rb-classify-out").exists());

    // No router process: the pinned program still classifies and the HTB
    // tree still shapes.
    let gap = goodput_mbit(iperf_client(&a, "10.6.2.1", 5201, 2));
    eprintln!("with the router stopped: {gap:.1} Mbit/s (shaped to 40)");
    assert_shaped(gap, 40.0);

    let router = Router::start(cfg.clone(), Some(r.clone())).unwrap();
    let after = bulk_bytes(&router);
    // 2 s at 40 Mbit/s is 10 MB; counted while no router ran.
    assert!(
        after > before + 8_000_000,
        "counters must continue across the restart: {before} then {after}"
    );
    router.stop().unwrap();
    Router::remove(&cfg, Some(r.clone())).unwrap();
    assert!(!pin.exists());
    assert_ne!(
        r.netlink().unwrap().root_qdisc("rb").unwrap().as_deref(),
        Some("htb")
    );
    // Nothing classifies any more: the pins held the links.
    let free = goodput_mbit(iperf_client(&a, "10.6.2.1", 5201, 2));
    assert!(
        free > 200.0,
        "after removal the flow runs free: {free:.1} Mbit/s"
    );
}

#[test]
fn a_guest_mac_moving_between_hosts_is_seen_announced_and_converged() {
    if !privileged("a_guest_mac_moving_between_hosts_is_seen_announced_and_converged") {
        return;
    }
    let mut t = Topology::new("ft");
    let s = t.add_node("sw", false).unwrap();
    let ha = t.add_node("ha", false).unwrap();
    let hb = t.add_node("hb", false).unwrap();
    t.link("ha", "h1", "sw", "p1").unwrap();
    t.link("hb", "h2", "sw", "p2").unwrap();
    t.bridge("sw", "br0", &["p1", "p2"]).unwrap();
    t.addr("sw", "br0", "10.7.0.1/24").unwrap();
    let guest = MacAddr::local(0x77);
    let gip = Ipv4Addr::new(10, 7, 0, 10);
    let cfg = router_config(
        "name: sw\ninterfaces: [{name: p1, watch: true}, {name: p2, watch: true}]\n\
         classes: [{name: all, id: 1}]\nwatch: {burst_gap: 500ms}\n",
    );
    let router = Router::start(cfg, Some(s.clone())).unwrap();

    // The guest runs on host A and talks.
    t.with_netlink("ha", |nl| nl.set_mac("h1", guest)).unwrap();
    t.addr("ha", "h1", "10.7.0.10/24").unwrap();
    let ping = |ns: &Netns| {
        ns.run(|| {
            icmp::ping(
                Ipv4Addr::new(10, 7, 0, 1),
                3,
                56,
                Duration::from_millis(20),
                Duration::from_secs(2),
            )
        })
        .unwrap()
    };
    assert_eq!(ping(&ha).received, 3);
    // Switch-over: A falls silent; B takes the MAC and announces it, as the
    // destination host does after a migration, then the guest talks again.
    t.with_netlink("ha", |nl| nl.set_down("h1")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    t.with_netlink("hb", |nl| nl.set_mac("h2", guest)).unwrap();
    t.addr("hb", "h2", "10.7.0.10/24").unwrap();
    let sent = hb.run(|| {
        let sock = PacketSocket::bind("h2").unwrap();
        announce(
            &sock,
            &Announcement {
                mac: guest,
                ipv4: Some(gip),
                tags: vec![],
            },
            &Schedule::default(),
        )
        .unwrap()
    });
    assert_eq!(sent, 10, "5 rounds of RARP and gratuitous ARP");
    assert_eq!(ping(&hb).received, 3);

    let p2 = s.run(|| ferry::net::packet_socket::ifindex("p2")).unwrap();
    let p1 = s.run(|| ferry::net::packet_socket::ifindex("p1")).unwrap();
    let bursts = wait_for(Duration::from_secs(5), || {
        let b = router.bursts();
        let moves = router.moves();
        (!b.is_empty() && !moves.is_empty()).then_some((b, moves))
    });
    let (bursts, moves) = bursts.expect("a burst and a move within 5 s");
    assert_eq!(bursts.len(), 1, "{bursts:?}");
    let b = &bursts[0];
    assert_eq!(
        (b.mac, b.ifindex, b.frames, b.rarp, b.garp, b.una),
        (guest, p2, 10, 5, 5, 0)
    );
    assert_eq!(moves.len(), 1, "{moves:?}");
    let m = &moves[0];
    assert_eq!((m.mac, m.from_ifindex, m.to_ifindex), (guest, p1, p2));
    let (outage, a2d) = (
        m.outage_seconds.unwrap(),
        m.announce_to_data_seconds.unwrap(),
    );
    eprintln!(
        "burst spread {:.3} s, outage {outage:.3} s, announcement to data {a2d:.3} s",
        b.spread_seconds()
    );
    // Causality, not speed: A was silent for the 200 ms before B spoke, and
    // the data came after the first announcement.
    assert!(
        outage >= 0.2 && a2d > 0.0 && outage > a2d,
        "outage {outage}, announce-to-data {a2d}"
    );

    let text = metrics_text(&router);
    for line in [
        "ferry_announcements_total{interface=\"p2\",kind=\"rarp\"} 5",
        "ferry_announcements_total{interface=\"p2\",kind=\"garp\"} 5",
        "ferry_announcements_total{interface=\"p1\",kind=\"rarp\"} 0",
        "ferry_mac_moves_total{interface=\"p2\"} 1",
        "ferry_announcement_bursts_total{interface=\"p2\"} 1",
        "ferry_reconvergence_outage_seconds_count 1",
        "ferry_announcement_burst_frames_sum 10",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(
        !text.contains(&guest.to_string()),
        "no MAC addresses in metrics"
    );
    let table = router.mac_table().unwrap();
    let e = table
        .iter()
        .find(|(k, _)| k.mac == guest.0)
        .expect("the guest's MAC is in the table")
        .1;
    assert_eq!((e.ifindex, e.moves, e.announcements), (p2, 1, 10));
    router.stop().unwrap();
}

#[test]
fn a_real_qemu_guest_migrated_between_two_qemus_is_announced_in_one_burst() {
    let name = "a_real_qemu_guest_migrated_between_two_qemus_is_announced_in_one_burst";
    if !privileged(name) {
        return;
    }
    if let Err(why) = qemu::available() {
        println!("SKIP {name}: {why}");
        return;
    }
    let mut t = Topology::new("ft");
    let s = t.add_node("sw", false).unwrap();
    let dir =
        std::env::temp_dir().join(format!("ferry-qemu-{}-{}", std::process::id(), t.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
    let spec = |tap, incoming| qemu::VmSpec {
        netns: &s,
        tap,
        mac,
        memory_mib: 64,
        dir: &dir,
        incoming,
    };
    let mut src = qemu::Vm::start(&spec("qa", false)).unwrap();
    let mut dst = qemu::Vm::start(&spec("qb", true)).unwrap();
    t.bridge("sw", "br0", &["qa", "qb"]).unwrap();
    t.with_netlink("sw", |nl| {
        nl.set_up("qa")?;
        nl.set_up("qb")
    })
    .unwrap();
    let cfg = router_config(
        "name: sw\ninterfaces: [{name: qa, watch: true}, {name: qb, watch: true}]\n\
         classes: [{name: all, id: 1}]\nwatch: {burst_gap: 1s}\n",
    );
    let router = Router::start(cfg, Some(s.clone())).unwrap();
    assert_eq!(src.status().unwrap(), "running");
    assert_eq!(dst.status().unwrap(), "inmigrate");

    let info = src
        .migrate_to(&mut dst, &dir, Duration::from_secs(60))
        .unwrap();
    eprintln!(
        "QEMU migration: {} ms total, {} ms downtime, {} bytes",
        info["total-time"], info["downtime"], info["ram"]["transferred"]
    );
    assert_eq!(src.status().unwrap(), "postmigrate");
    let running = wait_for(Duration::from_secs(10), || {
        (dst.status().ok()? == "running").then_some(())
    });
    assert!(running.is_some(), "the destination QEMU runs the guest");

    // QEMU announces the NIC itself (the guest has no driver to do it):
    // 5 RARPs at 0, 50, 200, 450 and 800 ms, all on the new port.
    let bursts = wait_for(Duration::from_secs(10), || {
        Some(router.bursts()).filter(|b| !b.is_empty())
    });
    let bursts = bursts.expect("an announcement burst within 10 s of the switch-over");
    let qb = s.run(|| ferry::net::packet_socket::ifindex("qb")).unwrap();
    assert_eq!(bursts.len(), 1, "{bursts:?}");
    let b = &bursts[0];
    eprintln!(
        "burst: {} frames over {:.3} s",
        b.frames,
        b.spread_seconds()
    );
    assert_eq!(
        (b.mac, b.ifindex, b.frames, b.rarp, b.garp, b.una),
        (mac, qb, 5, 5, 0, 0)
    );
    let text = metrics_text(&router);
    for line in [
        "ferry_announcements_total{interface=\"qb\",kind=\"rarp\"} 5",
        "ferry_announcements_total{interface=\"qa\",kind=\"rarp\"} 0",
        "ferry_announcement_bursts_total{interface=\"qb\"} 1",
        "ferry_announcement_burst_frames_sum 5",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    router.stop().unwrap();
}
