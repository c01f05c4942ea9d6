//! The namespace harness itself: creation, links, routing, bridging, cleanup.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use ferry::{
    lab::Topology,
    net::icmp,
    netns::{self, Netns},
};

use crate::common::privileged;

#[test]
fn namespaces_are_removed_on_drop_and_on_panic() {
    if !privileged("namespaces_are_removed_on_drop_and_on_panic") {
        return;
    }
    let mut topo = Topology::new("ft");
    let ns = topo.add_node("a", false).unwrap();
    let path = Path::new(netns::NETNS_DIR).join(ns.name());
    assert!(
        path.exists(),
        "{} should exist while the topology lives",
        path.display()
    );
    drop(ns);
    drop(topo);
    assert!(
        !path.exists(),
        "{} should be gone after drop",
        path.display()
    );

    let mut seen = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut topo = Topology::new("ft");
        let ns = topo.add_node("b", false).unwrap();
        seen = Some(Path::new(netns::NETNS_DIR).join(ns.name()));
        panic!("a test failing half-way");
    }));
    assert!(r.is_err());
    let path = seen.unwrap();
    assert!(
        !path.exists(),
        "{} should be gone after a panic",
        path.display()
    );
}

#[test]
fn stale_namespaces_of_dead_processes_are_swept() {
    if !privileged("stale_namespaces_of_dead_processes_are_swept") {
        return;
    }
    // pid_max is at most 2^22, so this pid cannot be alive.
    let name = "ftsweep-4999999-0-x";
    let ns = Netns::create(name).unwrap();
    // Forget it as if the process had been killed before its Drop ran.
    std::mem::forget(ns);
    let path = Path::new(netns::NETNS_DIR).join(name);
    assert!(path.exists());
    assert_eq!(netns::sweep_stale("ftsweep"), 1);
    assert!(!path.exists());
}

#[test]
fn parallel_topologies_use_distinct_names() {
    if !privileged("parallel_topologies_use_distinct_names") {
        return;
    }
    let handles: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let mut t = Topology::new("ft");
                let ns = t.add_node("same", false).unwrap();
                let name = ns.name().to_string();
                // Same interface names in every topology: they live in different namespaces.
                t.add_node("peer", false).unwrap();
                t.link("same", "eth0", "peer", "eth0").unwrap();
                (name, t)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut names: Vec<_> = results.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 4);
}

#[test]
fn routed_and_bridged_pings() {
    if !privileged("routed_and_bridged_pings") {
        return;
    }
    // h1 -- r -- h2, routed; h3 and h4 on a bridge in sw.
    let mut t = Topology::new("ft");
    for n in ["h1", "r", "h2", "sw", "h3", "h4"] {
        t.add_node(n, false).unwrap();
    }
    t.link("h1", "eth0", "r", "left").unwrap();
    t.link("h2", "eth0", "r", "right").unwrap();
    t.addr("h1", "eth0", "10.1.1.2/24").unwrap();
    t.addr("r", "left", "10.1.1.1/24").unwrap();
    t.addr("r", "right", "10.1.2.1/24").unwrap();
    t.addr("h2", "eth0", "10.1.2.2/24").unwrap();
    t.forwarding("r").unwrap();
    t.route("h1", "default", "10.1.1.1".parse().unwrap())
        .unwrap();
    t.route("h2", "10.1.1.0/24", "10.1.2.1".parse().unwrap())
        .unwrap();

    t.link("h3", "eth0", "sw", "p3").unwrap();
    t.link("h4", "eth0", "sw", "p4").unwrap();
    t.bridge("sw", "br0", &["p3", "p4"]).unwrap();
    t.addr("h3", "eth0", "10.2.0.3/24").unwrap();
    t.addr("h4", "eth0", "10.2.0.4/24").unwrap();

    let routes = t.with_netlink("h1", |nl| nl.addresses("eth0")).unwrap();
    assert_eq!(routes, vec![("10.1.1.2".parse().unwrap(), 24)]);
    let sw_ports = t.with_netlink("sw", |nl| nl.links()).unwrap();
    let br = sw_ports.iter().find(|l| l.name == "br0").unwrap();
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    for p in ["p3", "p4"] {
        let l = sw_ports.iter().find(|l| l.name == p).unwrap();
        assert_eq!(l.master, Some(br.index), "{p} should be a port of br0");
        assert!(l.up);
    }

    let ping = |node: &str, dst: Ipv4Addr| {
        t.node(node)
            .unwrap()
            .run(move || {
                icmp::ping(
                    dst,
                    3,
                    56,
                    Duration::from_millis(20),
                    Duration::from_secs(2),
                )
            })
            .unwrap()
    };
    let routed = ping("h1", "10.1.2.2".parse().unwrap());
    assert_eq!(
        (routed.sent, routed.received),
        (3, 3),
        "routed ping through r"
    );
    let bridged = ping("h3", "10.2.0.4".parse().unwrap());
    assert_eq!(
        (bridged.sent, bridged.received),
        (3, 3),
        "bridged ping through sw"
    );
    // Unreachable: h1 has no route to the bridged segment.
    let lost = ping("h1", "10.2.0.4".parse().unwrap());
    assert_eq!(lost.received, 0);

    // The ARP entries learned along the way are visible through netlink.
    let neigh = t.with_netlink("h3", |nl| nl.neighbours(false)).unwrap();
    let h4_mac = t.mac("h4", "eth0").unwrap();
    assert!(
        neigh
            .iter()
            .any(|n| n.ip == "10.2.0.4".parse::<std::net::IpAddr>().unwrap()
                && n.mac == Some(h4_mac))
    );
}
