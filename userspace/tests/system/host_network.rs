//! `ferry host`'s networks end to end: a real encrypted migration between
//! two hosts whose migration streams ferry tags onto VLAN 100 (and pops on
//! arrival), and the destination announcing the guest's MAC on the guest
//! network, where a router's watch sees one burst.

use std::{net::Ipv4Addr, time::Duration};

use ferry::{
    config::{self, ByteSize},
    control::wire::MigrateOptions,
    coordinator::request_migration,
    dataplane::Dataplane,
    guest::{Nic, WorkloadSpec},
    host::{
        GuestConfig,
        config::{HostNetwork, MigrationVlan},
    },
    lab::{
        Topology,
        cluster::{Cluster, ClusterSpec, HostSpec},
    },
    net::MacAddr,
    protocol::EncryptionMode,
    router::{Router, RouterConfig},
};
use ferry_common::counters::{Direction, TagKind};

use crate::common::{privileged, wait_for};

#[test]
fn migration_streams_ride_the_migration_vlan_and_the_guest_is_announced() {
    if !privileged("migration_streams_ride_the_migration_vlan_and_the_guest_is_announced") {
        return;
    }
    // Both hosts in namespace "dc" (migrating over its loopback), each with a
    // guest-network port on the switch "sw", where the router watches.
    let mut t = Topology::new("ft");
    let dc = t.add_node("dc", false).unwrap();
    let sw = t.add_node("sw", false).unwrap();
    t.link("dc", "ga", "sw", "p1").unwrap();
    t.link("dc", "gb", "sw", "p2").unwrap();
    t.bridge("sw", "br0", &["p1", "p2"]).unwrap();
    let rcfg: RouterConfig = config::from_str(
        "name: sw\ninterfaces: [{name: p1, watch: true}, {name: p2, watch: true}]\nclasses: [{name: all, id: 1}]\n\
         watch: {burst_gap: 1s}\n",
        "router.yaml",
    )
    .unwrap();
    let router = Router::start(rcfg, Some(sw.clone())).unwrap();

    let mac: MacAddr = "52:54:00:ab:cd:01".parse().unwrap();
    let nic = Nic {
        mac,
        ipv4: Some(Ipv4Addr::new(10, 11, 0, 5)),
    };
    let net = |guest_if: &str| HostNetwork {
        migration_interface: Some("lo".into()),
        migration_vlan: Some(MigrationVlan {
            vlan: 100,
            pcp: 4,
            dscp: 10,
        }),
        guest_interface: Some(guest_if.into()),
        guest_bridge: None,
        announce: Default::default(),
    };
    let host = |name: &str, guests, n| HostSpec {
        name: name.into(),
        coordinator: "c1".into(),
        encryption: true,
        capacity: ByteSize(256 << 20),
        backend: Default::default(),
        guests,
        network: Some(n),
    };
    let guest = GuestConfig {
        name: "web".into(),
        kind: Default::default(),
        qemu: None,
        memory: ByteSize(64 << 20),
        vcpus: 1,
        encryption: EncryptionMode::Required,
        workload: WorkloadSpec::KeyValue {
            gets_per_second: 5_000,
            sets_per_second: 5_000,
        },
        prefill: true,
        nic: Some(nic),
    };
    let spec = ClusterSpec {
        coordinators: vec!["c1".into()],
        hosts: vec![
            host("host-a", vec![guest], net("ga")),
            host("host-b", vec![], net("gb")),
        ],
        defaults: Default::default(),
        scheduler: Default::default(),
    };

    // The runtime's threads start inside "dc", so every socket is made there.
    let (stats, (tagged, tagged_bytes), untagged, (vlan100_out, vlan100_in)) = dc
        .run(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let r = rt.block_on(async {
                let c = Cluster::start(spec, None).await.unwrap();
                // Attached after the hosts' programs: at egress it sees the tag.
                let mut counters = Dataplane::load(None).unwrap();
                counters.attach_vlan_counters("lo").unwrap();
                let opts = MigrateOptions {
                    streams: Some(2),
                    ..Default::default()
                };
                // Bounded: streams whose tags are never popped cannot connect,
                // and TCP would retry its SYN for two minutes.
                let stats = tokio::time::timeout(
                    Duration::from_secs(60),
                    request_migration(
                        &c.client,
                        &c.coordinator("c1"),
                        "web",
                        None,
                        "host-b",
                        opts,
                        |_| {},
                    ),
                )
                .await;
                let Ok(stats) = stats else {
                    return Err("the migration did not end within 60 s".to_string());
                };
                let stats = stats.unwrap();
                let sum = |f: fn(&ferry_common::migration::MigStats) -> u64| {
                    ["host-a", "host-b"]
                        .iter()
                        .map(|h| f(&c.host(h).network.as_ref().unwrap().tagging_stats().unwrap()))
                        .sum::<u64>()
                };
                let vlan100 = |dir| -> u64 {
                    counters
                        .vlan_counters()
                        .unwrap()
                        .iter()
                        .filter(|v| v.direction == dir && v.tag == TagKind::Dot1Q && v.vlan == 100)
                        .map(|v| v.packets)
                        .sum()
                };
                let r = (
                    stats,
                    (sum(|s| s.tagged_packets), sum(|s| s.tagged_bytes)),
                    sum(|s| s.untagged_packets),
                    (vlan100(Direction::Egress), vlan100(Direction::Ingress)),
                );
                // The announcer runs 0.8 s after the switch-over; keep the hosts up.
                tokio::time::sleep(Duration::from_millis(1200)).await;
                Ok(r)
            });
            // Dropping a runtime waits for its blocking tasks, and a source stuck
            // connecting is one: give up on it instead.
            rt.shutdown_timeout(Duration::from_secs(2));
            r
        })
        .unwrap();
    assert!(stats.error.is_none(), "{:?}", stats.error);
    assert!(stats.transport.encrypted());
    // 64 MiB went over streams that all rode VLAN 100: the tagger's count,
    // the pops at the far end and an independent VLAN counter agree.
    // Every stream byte rode a tagged packet: the tagged frames carry at
    // least the bytes the streams sent (plus their headers).
    assert!(
        tagged_bytes >= stats.transferred_bytes,
        "tagged {tagged} packets of {tagged_bytes} bytes for {} stream bytes",
        stats.transferred_bytes
    );
    assert_eq!(
        vlan100_out, tagged,
        "the VLAN counters see the same frames leave on VLAN 100"
    );
    // Loopback cannot segment a tagged GSO packet in hardware, so the stack
    // splits some after tagging: at least as many frames arrive as left,
    // every one popped before anything else sees it.
    assert!(untagged >= tagged, "popped {untagged} of {tagged}");
    assert_eq!(vlan100_in, 0, "no tagged frame gets past the pop");
    assert!(
        stats.transferred_bytes > 32 << 20,
        "{}",
        stats.transferred_bytes
    );

    let bursts = wait_for(Duration::from_secs(5), || {
        Some(router.bursts()).filter(|b| !b.is_empty())
    })
    .expect("a burst");
    let p2 = sw.run(|| ferry::net::packet_socket::ifindex("p2")).unwrap();
    assert_eq!(bursts.len(), 1, "{bursts:?}");
    let b = &bursts[0];
    assert_eq!(
        (b.mac, b.ifindex, b.rarp, b.garp),
        (mac, p2, 5, 5),
        "announced by host-b on its guest port"
    );
    router.stop().unwrap();
}
