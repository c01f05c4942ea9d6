//! Announcing a guest at its new port after a switch-over, as QEMU and ESXi
//! do: RARP frames (and, where the guest's address is known, gratuitous
//! ARP) on a schedule, so that switches learn the MAC's new port before the
//! guest's own traffic would teach them.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    MacAddr, PacketSocket,
    frame::{VlanTag, gratuitous_arp, rarp_announce},
};
use crate::config::{deserialize_duration, serialize_duration};

/// When the rounds go out: the first at once, then `initial` later, each
/// further gap `step` longer than the one before, at most `max` (QEMU's
/// announce-initial, -step, -max and -rounds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Announcements sent in all.
    #[serde(default = "rounds")]
    pub rounds: u32,
    /// The gap after the first.
    #[serde(
        default = "initial",
        deserialize_with = "deserialize_duration",
        serialize_with = "serialize_duration"
    )]
    #[schemars(with = "ferry_core::config::DurationText")]
    pub initial: Duration,
    /// How much longer each further gap is than the one before.
    #[serde(
        default = "step",
        deserialize_with = "deserialize_duration",
        serialize_with = "serialize_duration"
    )]
    #[schemars(with = "ferry_core::config::DurationText")]
    pub step: Duration,
    /// The longest gap.
    #[serde(
        default = "max",
        deserialize_with = "deserialize_duration",
        serialize_with = "serialize_duration"
    )]
    #[schemars(with = "ferry_core::config::DurationText")]
    pub max: Duration,
}

fn rounds() -> u32 {
    5
}
fn initial() -> Duration {
    Duration::from_millis(50)
}
fn step() -> Duration {
    Duration::from_millis(100)
}
fn max() -> Duration {
    Duration::from_millis(550)
}

impl Default for Schedule {
    /// QEMU's: 5 rounds at 0, 50, 200, 450 and 800 ms.
    fn default() -> Self {
        Self {
            rounds: rounds(),
            initial: initial(),
            step: step(),
            max: max(),
        }
    }
}

impl Schedule {
    /// Offsets of the rounds from the first.
    pub fn offsets(&self) -> Vec<Duration> {
        let mut out = Vec::with_capacity(self.rounds as usize);
        let (mut at, mut gap) = (Duration::ZERO, self.initial);
        for _ in 0..self.rounds {
            out.push(at);
            at += gap.min(self.max);
            gap += self.step;
        }
        out
    }
}

/// Who to announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub mac: MacAddr,
    pub ipv4: Option<Ipv4Addr>,
    /// VLAN tags of the guest network, outermost first (none: untagged).
    pub tags: Vec<VlanTag>,
}

impl Announcement {
    /// The frames of one round: a RARP, and a gratuitous ARP when the
    /// address is known.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        let mut f = vec![rarp_announce(self.mac, &self.tags)];
        if let Some(ip) = self.ipv4 {
            f.push(gratuitous_arp(self.mac, ip, &self.tags));
        }
        f
    }
}

/// Sends every round of `schedule` on `sock`; returns the frames sent.
/// Blocks for the length of the schedule (0.8 s by default).
pub fn announce(
    sock: &PacketSocket,
    a: &Announcement,
    schedule: &Schedule,
) -> std::io::Result<usize> {
    let frames = a.frames();
    let start = Instant::now();
    let mut sent = 0;
    for at in schedule.offsets() {
        if let Some(wait) = (start + at).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for f in &frames {
            sock.send(f)?;
            sent += 1;
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_qemus_schedule() {
        let ms: Vec<u128> = Schedule::default()
            .offsets()
            .iter()
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(ms, [0, 50, 200, 450, 800]);
        let capped = Schedule {
            rounds: 7,
            max: Duration::from_millis(300),
            ..Default::default()
        };
        let ms: Vec<u128> = capped.offsets().iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 50, 200, 450, 750, 1050, 1350]);
    }

    #[test]
    fn a_round_is_rarp_and_gratuitous_arp() {
        let mut a = Announcement {
            mac: MacAddr::local(3),
            ipv4: None,
            tags: vec![],
        };
        assert_eq!(a.frames().len(), 1);
        a.ipv4 = Some(Ipv4Addr::new(10, 0, 0, 3));
        let f = a.frames();
        assert_eq!(
            (&f[0][12..14], &f[1][12..14]),
            (&[0x80, 0x35][..], &[0x08, 0x06][..])
        );
    }
}
