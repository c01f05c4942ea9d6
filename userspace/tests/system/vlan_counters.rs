//! The VLAN counter programs, attached at TCX ingress and egress on both ends
//! of a veth pair, against crafted frames and real pings: exact counts.

use std::{net::Ipv4Addr, time::Duration};

use ferry::{
    dataplane::{Dataplane, VlanCount},
    lab::Topology,
    net::{
        PacketSocket,
        frame::{VlanTag, ethernet},
        icmp,
    },
};
use ferry_common::counters::{Direction, TagKind};

use crate::common::{privileged, wait_for};

type Row = (Direction, TagKind, u16, u16, u64, u64);

fn rows(counts: &[VlanCount]) -> Vec<Row> {
    let mut v: Vec<Row> = counts
        .iter()
        .map(|c| (c.direction, c.tag, c.vlan, c.inner_vlan, c.packets, c.bytes))
        .collect();
    v.sort();
    v
}

#[test]
fn counts_untagged_8021q_and_8021ad_frames_exactly() {
    if !privileged("counts_untagged_8021q_and_8021ad_frames_exactly") {
        return;
    }
    let mut t = Topology::new("ft");
    let a = t.add_node("a", false).unwrap();
    let b = t.add_node("b", false).unwrap();
    t.link("a", "va", "b", "vb").unwrap();
    t.addr("a", "va", "10.3.0.1/24").unwrap();
    t.addr("b", "vb", "10.3.0.2/24").unwrap();
    let (amac, bmac) = (t.mac("a", "va").unwrap(), t.mac("b", "vb").unwrap());
    // Static neighbours: no ARP, so the only frames are the ones below.
    t.with_netlink("a", |nl| {
        nl.set_neighbour("va", "10.3.0.2".parse().unwrap(), bmac)
    })
    .unwrap();
    t.with_netlink("b", |nl| {
        nl.set_neighbour("vb", "10.3.0.1".parse().unwrap(), amac)
    })
    .unwrap();

    let mut dpa = Dataplane::load(Some(a.clone())).unwrap();
    let mut dpb = Dataplane::load(Some(b.clone())).unwrap();
    let va = dpa.attach_vlan_counters("va").unwrap();
    let vb = dpb.attach_vlan_counters("vb").unwrap();
    assert_eq!(dpa.ifname(va.ifindex), Some("va"));
    assert!(dpa.vlan_counters().unwrap().is_empty(), "nothing sent yet");

    let payload = [0x42u8; 46];
    let frame = |tags: &[VlanTag]| ethernet(bmac, amac, tags, 0x88b5, &payload);
    // Priorities set, so a parser that forgets to mask the PCP bits fails.
    let pcp5 = VlanTag {
        tpid: 0x8100,
        pcp: 5,
        vid: 200,
    };
    let inner_pcp3 = VlanTag {
        tpid: 0x8100,
        pcp: 3,
        vid: 10,
    };
    let plan: Vec<(Vec<u8>, usize)> = vec![
        (frame(&[]), 5),                                 // 60 bytes
        (frame(&[VlanTag::dot1q(100)]), 7),              // 64 bytes
        (frame(&[pcp5]), 3),                             // 64 bytes, priority 5
        (frame(&[VlanTag::dot1ad(300), inner_pcp3]), 4), // 68 bytes, QinQ
    ];
    a.run(|| {
        let sock = PacketSocket::bind("va").unwrap();
        for (f, n) in &plan {
            for _ in 0..*n {
                sock.send(f).unwrap();
            }
        }
    });
    let ping = a
        .run(|| {
            icmp::ping(
                Ipv4Addr::new(10, 3, 0, 2),
                6,
                56,
                Duration::from_millis(5),
                Duration::from_secs(2),
            )
        })
        .unwrap();
    assert_eq!((ping.sent, ping.received), (6, 6));

    use Direction::{Egress, Ingress};
    use TagKind::{Dot1Ad, Dot1Q, Untagged};
    // 6 echo requests and 6 replies of 14 + 20 + 8 + 56 = 98 bytes.
    let sent_by_a: Vec<Row> = vec![
        (Egress, Untagged, 0, 0, 5 + 6, 5 * 60 + 6 * 98),
        (Egress, Dot1Q, 100, 0, 7, 7 * 64),
        (Egress, Dot1Q, 200, 0, 3, 3 * 64),
        (Egress, Dot1Ad, 300, 10, 4, 4 * 68),
    ];
    let mut expect_a = sent_by_a.clone();
    expect_a.push((Ingress, Untagged, 0, 0, 6, 6 * 98));
    expect_a.sort();
    // What a sent arrives at b: the receive path moves the outer tag into skb
    // metadata, and the program must still see the same VLANs and wire bytes.
    let mut expect_b: Vec<Row> = sent_by_a
        .iter()
        .map(|r| (Ingress, r.1, r.2, r.3, r.4, r.5))
        .collect();
    expect_b.push((Egress, Untagged, 0, 0, 6, 6 * 98));
    expect_b.sort();

    let got = wait_for(Duration::from_secs(3), || {
        let ga = rows(&dpa.vlan_counters().unwrap());
        let gb = rows(&dpb.vlan_counters().unwrap());
        (ga == expect_a && gb == expect_b).then_some(())
    });
    if got.is_none() {
        let ga = rows(&dpa.vlan_counters().unwrap());
        let gb = rows(&dpb.vlan_counters().unwrap());
        assert_eq!(ga, expect_a, "counters on a/va");
        assert_eq!(gb, expect_b, "counters on b/vb");
    }
    // Every key names the interface it was counted on.
    assert!(
        dpa.vlan_counters()
            .unwrap()
            .iter()
            .all(|c| c.ifindex == va.ifindex)
    );
    assert!(
        dpb.vlan_counters()
            .unwrap()
            .iter()
            .all(|c| c.ifindex == vb.ifindex)
    );
}
