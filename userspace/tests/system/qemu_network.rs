//! A real QEMU guest's move on the network: its migration streams (QEMU's
//! channels in ferry's records) ride VLAN 100, and the twin announces the
//! guest's MAC (QEMU's own RARP burst) only once ferry has committed, on the
//! destination's guest bridge, where a router's watch counts it.

use std::{path::Path, time::Duration};

use ferry::{
    config::{self, ByteSize},
    control::wire::MigrateOptions,
    coordinator::request_migration,
    guest::Nic,
    host::{
        GuestConfig,
        config::{GuestKind, HostNetwork, MigrationVlan, QemuSettings},
    },
    lab::{
        Topology,
        cluster::{Cluster, ClusterSpec, HostSpec},
    },
    net::MacAddr,
    protocol::EncryptionMode,
    router::{Router, RouterConfig},
};

use crate::common::{privileged, wait_for};

#[test]
fn a_qemu_guest_rides_the_migration_vlan_and_announces_itself_after_the_commit() {
    if !privileged("a_qemu_guest_rides_the_migration_vlan_and_announces_itself_after_the_commit") {
        return;
    }
    let guest_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-guest");
    if let Err(why) = ferry::qemu::available() {
        eprintln!("SKIP: {why}");
        return;
    }
    if !guest_dir.join("vmlinuz").is_file() {
        eprintln!(
            "SKIP: no test guest in {} (`cargo xtask setup` builds it)",
            guest_dir.display()
        );
        return;
    }
    // Both hosts in "dc"; each host's guest bridge has a port to switch "sw".
    let mut t = Topology::new("fq");
    let dc = t.add_node("dc", false).unwrap();
    let sw = t.add_node("sw", false).unwrap();
    t.link("dc", "ga", "sw", "p1").unwrap();
    t.link("dc", "gb", "sw", "p2").unwrap();
    t.bridge("dc", "bra", &["ga"]).unwrap();
    t.bridge("dc", "brb", &["gb"]).unwrap();
    t.bridge("sw", "br0", &["p1", "p2"]).unwrap();
    let rcfg: RouterConfig = config::from_str(
        "name: sw\ninterfaces: [{name: p1, watch: true}, {name: p2, watch: true}]\nclasses: [{name: all, id: 1}]\n\
         watch: {burst_gap: 1s}\n",
        "router.yaml",
    )
    .unwrap();
    let router = Router::start(rcfg, Some(sw.clone())).unwrap();

    let mac: MacAddr = "52:54:00:ab:cd:07".parse().unwrap();
    let net = |bridge: &str| HostNetwork {
        migration_interface: Some("lo".into()),
        migration_vlan: Some(MigrationVlan {
            vlan: 100,
            pcp: 4,
            dscp: 10,
        }),
        guest_interface: None,
        guest_bridge: Some(bridge.into()),
        announce: Default::default(),
    };
    let host = |name: &str, guests, n| HostSpec {
        name: name.into(),
        coordinator: "c1".into(),
        encryption: true,
        capacity: ByteSize(512 << 20),
        backend: Default::default(),
        guests,
        network: Some(n),
    };
    let guest = GuestConfig {
        name: "vm1".into(),
        kind: GuestKind::Qemu,
        memory: ByteSize(256 << 20),
        vcpus: 1,
        encryption: EncryptionMode::Required,
        workload: Default::default(),
        qemu: Some(QemuSettings {
            accel: Default::default(),
            machine: "pc".into(),
            kernel: Some(guest_dir.join("vmlinuz")),
            initrd: Some(guest_dir.join("initrd.gz")),
            append: Some(
                "console=ttyS0 quiet panic=-1 ferry.check_mib=16 ferry.dirty_mib_s=4".into(),
            ),
            disk: None,
            extra_args: vec!["-no-reboot".into()],
            adopt: None,
        }),
        prefill: false,
        nic: Some(Nic { mac, ipv4: None }),
    };
    let spec = ClusterSpec {
        coordinators: vec!["c1".into()],
        hosts: vec![
            host("host-a", vec![guest], net("bra")),
            host("host-b", vec![], net("brb")),
        ],
        defaults: Default::default(),
        scheduler: Default::default(),
    };
    let (stats, tagged_bytes, bursts_before_go) = dc.run(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(async {
            let c = Cluster::start(spec, None).await.unwrap();
            let mut before_go = None;
            let opts = MigrateOptions {
                streams: Some(2),
                ..Default::default()
            };
            let stats = tokio::time::timeout(
                Duration::from_secs(120),
                request_migration(
                    &c.client,
                    &c.coordinator("c1"),
                    "vm1",
                    None,
                    "host-b",
                    opts,
                    |r| {
                        // The last look before the commit: nothing announced yet.
                        if let ferry::control::Response::Progress(p) = r
                            && p.phase == ferry::engine::Phase::Switchover
                        {
                            before_go = Some(router.bursts().len());
                        }
                    },
                ),
            )
            .await
            .expect("the migration ended within 120 s")
            .unwrap();
            let tagged = ["host-a", "host-b"]
                .iter()
                .map(|h| {
                    c.host(h)
                        .network
                        .as_ref()
                        .unwrap()
                        .tagging_stats()
                        .unwrap()
                        .tagged_bytes
                })
                .sum::<u64>();
            // Whatever happened, the QEMUs end with the test.
            let moved = c.host("host-b").hosted("vm1");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            for h in ["host-a", "host-b"] {
                if let Some(g) = c.host(h).hosted("vm1") {
                    g.release();
                }
            }
            assert!(moved.is_some(), "vm1 is not on host-b");
            (*stats, tagged, before_go)
        });
        rt.shutdown_timeout(Duration::from_secs(2));
        r
    });
    assert!(stats.error.is_none(), "{:?}", stats.error);
    assert!(stats.transport.encrypted());
    assert!(
        tagged_bytes >= stats.transferred_bytes && stats.transferred_bytes > 1 << 20,
        "tagged {tagged_bytes} bytes for {} stream bytes",
        stats.transferred_bytes
    );
    assert_eq!(
        bursts_before_go,
        Some(0),
        "the twin announced the guest before ferry's commit"
    );
    let bursts = wait_for(Duration::from_secs(5), || {
        Some(router.bursts()).filter(|b| !b.is_empty())
    })
    .expect("a burst");
    let p2 = sw.run(|| ferry::net::packet_socket::ifindex("p2")).unwrap();
    assert_eq!(bursts.len(), 1, "{bursts:?}");
    let b = &bursts[0];
    // One burst of five: had the twin announced when it finished loading
    // (QEMU's default, before the commit), ferry's announce after GO would
    // make it ten.
    assert_eq!(
        (b.mac, b.ifindex, b.rarp, b.garp),
        (mac, p2, 5, 0),
        "QEMU's RARP burst, from host-b's guest bridge"
    );
    router.stop().unwrap();
}
