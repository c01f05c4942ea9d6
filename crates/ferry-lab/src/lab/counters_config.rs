//! `ferry lab counters`: the data-plane demonstration's settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Invalid, Validate, deserialize_duration, serialize_duration};

/// The data-plane demo: two throwaway namespaces joined by a veth pair, ferry's
/// counters on both ends, tagged and untagged traffic across.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CountersConfig {
    /// How long traffic runs.
    #[serde(
        default = "default_duration",
        deserialize_with = "deserialize_duration",
        serialize_with = "serialize_duration"
    )]
    #[schemars(with = "ferry_core::config::DurationText")]
    pub duration: Duration,
    /// Frames sent per VLAN per second.
    #[serde(default = "default_rate")]
    pub rate: u32,
    /// 802.1Q VLANs to send on.
    #[serde(default = "default_vlans")]
    pub vlans: Vec<u16>,
    /// 802.1ad service VLAN and the 802.1Q VLAN inside it (None: no QinQ traffic).
    #[serde(default = "default_qinq")]
    pub qinq: Option<QinQ>,
    /// How often the live table is redrawn.
    #[serde(
        default = "default_refresh",
        deserialize_with = "deserialize_duration",
        serialize_with = "serialize_duration"
    )]
    #[schemars(with = "ferry_core::config::DurationText")]
    pub refresh: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QinQ {
    /// The 802.1ad service VLAN.
    pub outer: u16,
    /// The 802.1Q VLAN inside it.
    pub inner: u16,
}

fn default_duration() -> Duration {
    Duration::from_secs(3)
}
fn default_rate() -> u32 {
    20
}
fn default_vlans() -> Vec<u16> {
    vec![100, 200]
}
fn default_qinq() -> Option<QinQ> {
    Some(QinQ {
        outer: 300,
        inner: 10,
    })
}
fn default_refresh() -> Duration {
    Duration::from_millis(500)
}

impl Default for CountersConfig {
    fn default() -> Self {
        Self {
            duration: default_duration(),
            rate: default_rate(),
            vlans: default_vlans(),
            qinq: default_qinq(),
            refresh: default_refresh(),
        }
    }
}

/// 802.1Q VLAN ids 0 and 4095 are reserved.
pub fn check_vlan(field: &str, vid: u16) -> Result<(), Invalid> {
    if (1..=4094).contains(&vid) {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!("VLAN id {vid} is out of range 1..=4094"),
        ))
    }
}

impl Validate for CountersConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.duration.is_zero() || self.duration > Duration::from_secs(3600) {
            return Err(Invalid::new("duration", "must be between 1ns and 1h"));
        }
        if !(1..=10_000).contains(&self.rate) {
            return Err(Invalid::new(
                "rate",
                format!("{} frames/s is out of range 1..=10000", self.rate),
            ));
        }
        for (i, v) in self.vlans.iter().enumerate() {
            check_vlan(&format!("vlans[{i}]"), *v)?;
        }
        if let Some(q) = self.qinq {
            check_vlan("qinq.outer", q.outer)?;
            check_vlan("qinq.inner", q.inner)?;
        }
        if self.refresh < Duration::from_millis(10) {
            return Err(Invalid::new("refresh", "must be at least 10ms"));
        }
        Ok(())
    }
}
