//! `ferry router` configuration, and its compilation into the rules and
//! classes the eBPF classifier reads.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use ferry_common::{
    classify::{MAX_CLASSES, MAX_RULES, Rule, m},
    counters::TagKind,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::{
        ByteSize, Invalid, Rate, Validate, check_name, deserialize_duration, serialize_duration,
    },
    metrics::http::MetricsListen,
    net::parse_cidr,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// The router's name: its metrics' `router` label.
    pub name: String,
    /// The interfaces it attaches its eBPF programs to.
    pub interfaces: Vec<RouterInterface>,
    /// In order: a frame belongs to the first class one of whose matches it
    /// meets; a class without matches takes everything else.
    pub classes: Vec<ClassConfig>,
    /// How announcements are grouped into bursts.
    #[serde(default)]
    pub watch: WatchConfig,
    #[serde(default)]
    pub metrics: Option<MetricsListen>,
    /// A bpffs directory where maps and program links are pinned, so that
    /// classification and shaping survive a restart of the daemon.
    #[serde(default)]
    pub pin_dir: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouterInterface {
    /// The interface's name (as `ip link` shows it).
    pub name: String,
    /// Classify and count frames in both directions.
    #[serde(default = "yes")]
    pub classify: bool,
    /// Watch arriving frames for announcements and MAC moves.
    #[serde(default)]
    pub watch: bool,
    /// Shape what leaves this interface with an HTB tree of the classes.
    #[serde(default)]
    pub shape: Option<Shape>,
    /// A WAN port: frames of classes with `wan` settings leave it through a
    /// delay line.
    #[serde(default)]
    pub wan: bool,
    /// Take this interface even though the machine's default route leaves
    /// through it. Without it the router refuses: a wrong class or rate
    /// there cuts the machine off (see `ferry router --dry-run` first).
    #[serde(default)]
    pub allow_default_route: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    /// The link's rate: the HTB root.
    pub rate: Rate,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    /// The class's name: its metrics' `class` label.
    pub name: String,
    /// 1..=63; the HTB class on shaped interfaces is 1:(256 + id), which
    /// `tc class show` prints in hexadecimal (id 10 is `1:10a`).
    pub id: u16,
    #[serde(default)]
    pub matches: Vec<Match>,
    /// Guaranteed rate on shaped interfaces (default: a fair share).
    #[serde(default)]
    pub rate: Option<Rate>,
    /// Most it may borrow up to (default: the link rate).
    #[serde(default)]
    pub ceil: Option<Rate>,
    /// HTB priority: lower is served first when classes borrow.
    #[serde(default)]
    pub prio: u32,
    /// An eBPF token-bucket policer: drops above `rate` (any interface).
    #[serde(default)]
    pub police: Option<Police>,
    /// Delay, jitter, loss and rate for this class's frames leaving the
    /// interfaces marked `wan: true`.
    #[serde(default)]
    pub wan: Option<crate::wan::WanConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Police {
    /// The rate it lets through.
    pub rate: Rate,
    /// The bucket's depth: how much may pass at once above the rate.
    pub burst: ByteSize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Tag {
    #[serde(rename = "untagged")]
    Untagged,
    #[serde(rename = "802.1q")]
    Dot1Q,
    #[serde(rename = "802.1ad")]
    Dot1Ad,
}

/// One match: every field given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// The frame's outermost tag.
    #[schemars(example = &"802.1q")]
    #[serde(default)]
    pub tag: Option<Tag>,
    /// The VLAN id of the outer tag.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// The VLAN id of the inner tag (802.1ad frames).
    #[schemars(example = 10)]
    #[serde(default)]
    pub inner_vlan: Option<u16>,
    /// The IP header's DSCP, 0..=63.
    #[serde(default)]
    pub dscp: Option<u8>,
    /// tcp, udp, icmp, icmpv6, or a protocol number.
    #[serde(default)]
    pub protocol: Option<String>,
    #[schemars(example = &"10.1.0.0/24")]
    /// "10.0.0.0/8", "fd00::/64", or an address.
    #[serde(default)]
    pub src: Option<String>,
    /// The destination address or network, as `src`.
    #[serde(default)]
    pub dst: Option<String>,
    /// "5201" or "5000-5100".
    #[serde(default)]
    pub src_port: Option<String>,
    /// The destination port or range, as `src_port`.
    #[serde(default)]
    pub dst_port: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// Announcements of one MAC further apart than this start a new burst.
    #[serde(
        default = "burst_gap",
        deserialize_with = "deserialize_duration",
        serialize_with = "serialize_duration"
    )]
    #[schemars(with = "ferry_core::config::DurationText")]
    pub burst_gap: Duration,
}

fn burst_gap() -> Duration {
    Duration::from_secs(2)
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            burst_gap: burst_gap(),
        }
    }
}

/// HTB handles of the tree ferry builds on a shaped interface.
pub const HTB_MAJOR: u16 = 1;
pub const HTB_ROOT_MINOR: u16 = 1;
pub fn htb_minor(class: u16) -> u16 {
    0x100 + class
}

/// Why one `matches` entry of a class cannot become a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    #[error("{0:?}: expected a port or a range like 5000-5100")]
    Ports(String),
    #[error("unknown protocol {0:?}: tcp, udp, icmp, icmpv6 or a number")]
    Protocol(String),
    #[error("{0:?} is not an address or prefix")]
    Address(String),
    #[error(transparent)]
    Prefix(#[from] crate::net::BadCidr),
    #[error("{field} {value} is out of range {range}")]
    OutOfRange {
        field: &'static str,
        value: u16,
        range: &'static str,
    },
    #[error("src and dst are of different address families")]
    Families,
}

fn ports(s: &str) -> Result<(u16, u16), MatchError> {
    let bad = || MatchError::Ports(s.to_string());
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        ),
        None => {
            let p = s.trim().parse().map_err(|_| bad())?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn protocol(s: &str) -> Result<u8, MatchError> {
    Ok(match s {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "icmpv6" => 58,
        n => n.parse().map_err(|_| MatchError::Protocol(n.to_string()))?,
    })
}

/// (words, mask words, family) of an address or prefix.
fn net(s: &str) -> Result<([u32; 4], [u32; 4], u8), MatchError> {
    let (ip, prefix) = if s.contains('/') {
        parse_cidr(s)?
    } else {
        let ip: IpAddr = s.parse().map_err(|_| MatchError::Address(s.to_string()))?;
        (ip, if ip.is_ipv4() { 32 } else { 128 })
    };
    let (words, family) = crate::dataplane::migration::ip_words(ip);
    let bits = u32::from(prefix);
    let mut mask = [0u32; 4];
    for (i, m) in mask.iter_mut().enumerate() {
        let start = i as u32 * 32;
        *m = if bits >= start + 32 {
            u32::MAX
        } else if bits > start {
            u32::MAX << (32 - (bits - start))
        } else {
            0
        };
    }
    let netw = [
        words[0] & mask[0],
        words[1] & mask[1],
        words[2] & mask[2],
        words[3] & mask[3],
    ];
    Ok((netw, mask, family))
}

fn compile_match(class: u16, mt: &Match) -> Result<Rule, MatchError> {
    let range = |field, value, range| MatchError::OutOfRange {
        field,
        value,
        range,
    };
    let mut r = Rule {
        class,
        sport_hi: u16::MAX,
        dport_hi: u16::MAX,
        ..Default::default()
    };
    if let Some(t) = mt.tag {
        r.flags |= m::TAG;
        r.tag = match t {
            Tag::Untagged => TagKind::Untagged,
            Tag::Dot1Q => TagKind::Dot1Q,
            Tag::Dot1Ad => TagKind::Dot1Ad,
        } as u8;
    }
    if let Some(v) = mt.vlan {
        if !(1..=4094).contains(&v) {
            return Err(range("vlan", v, "1..=4094"));
        }
        r.flags |= m::VLAN;
        r.vlan = v;
    }
    if let Some(v) = mt.inner_vlan {
        if !(1..=4094).contains(&v) {
            return Err(range("inner_vlan", v, "1..=4094"));
        }
        r.flags |= m::INNER_VLAN;
        r.inner_vlan = v;
    }
    if let Some(d) = mt.dscp {
        if d > 63 {
            return Err(range("dscp", d.into(), "0..=63"));
        }
        r.flags |= m::DSCP;
        r.dscp = d;
    }
    if let Some(p) = &mt.protocol {
        r.flags |= m::PROTO;
        r.proto = protocol(p)?;
    }
    let mut family = None;
    for (s, flag, is_src) in [(&mt.src, m::SRC, true), (&mt.dst, m::DST, false)] {
        if let Some(s) = s {
            let (n, mask, fam) = net(s)?;
            if family.is_some_and(|f| f != fam) {
                return Err(MatchError::Families);
            }
            family = Some(fam);
            r.flags |= flag | m::FAMILY;
            r.family = fam;
            if is_src {
                (r.src_net, r.src_mask) = (n, mask);
            } else {
                (r.dst_net, r.dst_mask) = (n, mask);
            }
        }
    }
    if let Some(p) = &mt.src_port {
        r.flags |= m::SPORT;
        (r.sport_lo, r.sport_hi) = ports(p)?;
    }
    if let Some(p) = &mt.dst_port {
        r.flags |= m::DPORT;
        (r.dport_lo, r.dport_hi) = ports(p)?;
    }
    Ok(r)
}

impl RouterConfig {
    /// The rules (in order) and the default class.
    pub fn compile(&self) -> Result<(Vec<Rule>, u16), Invalid> {
        let mut rules = Vec::new();
        let mut default = 0;
        for (i, c) in self.classes.iter().enumerate() {
            if c.matches.is_empty() {
                default = c.id;
                continue;
            }
            for (j, mt) in c.matches.iter().enumerate() {
                rules.push(
                    compile_match(c.id, mt)
                        .map_err(|e| Invalid::new(format!("classes[{i}].matches[{j}]"), e))?,
                );
            }
        }
        if rules.len() > MAX_RULES as usize {
            return Err(Invalid::new(
                "classes",
                format!("{} matches in all; at most {MAX_RULES}", rules.len()),
            ));
        }
        Ok((rules, default))
    }

    pub fn class(&self, id: u16) -> Option<&ClassConfig> {
        self.classes.iter().find(|c| c.id == id)
    }
}

impl Validate for RouterConfig {
    fn validate(&self) -> Result<(), Invalid> {
        check_name("name", &self.name)?;
        if self.interfaces.is_empty() {
            return Err(Invalid::new("interfaces", "at least one interface"));
        }
        let mut ids = std::collections::HashSet::new();
        let mut defaults = 0;
        for (i, c) in self.classes.iter().enumerate() {
            check_name(&format!("classes[{i}].name"), &c.name)?;
            if c.id == 0 || u32::from(c.id) >= MAX_CLASSES {
                return Err(Invalid::new(
                    format!("classes[{i}].id"),
                    format!("{} is out of range 1..={}", c.id, MAX_CLASSES - 1),
                ));
            }
            if !ids.insert(c.id) {
                return Err(Invalid::new(
                    format!("classes[{i}].id"),
                    format!("class id {} is used twice", c.id),
                ));
            }
            if c.matches.is_empty() {
                defaults += 1;
            }
            if let Some(w) = &c.wan {
                w.validate(&format!("classes[{i}].wan"))?;
            }
            if let (Some(r), Some(ce)) = (c.rate, c.ceil)
                && ce < r
            {
                return Err(Invalid::new(
                    format!("classes[{i}].ceil"),
                    format!("{ce} is below the rate {r}"),
                ));
            }
        }
        if defaults > 1 {
            return Err(Invalid::new(
                "classes",
                "only one class may be without matches (the default)",
            ));
        }
        for (i, ifc) in self.interfaces.iter().enumerate() {
            if ifc.name.is_empty() || ifc.name.len() >= 16 {
                return Err(Invalid::new(
                    format!("interfaces[{i}].name"),
                    "1 to 15 characters",
                ));
            }
            if ifc.wan && !ifc.classify {
                return Err(Invalid::new(
                    format!("interfaces[{i}].wan"),
                    "a WAN port needs classify: true (its egress program steers the delayed classes)",
                ));
            }
            if ifc.shape.is_some() && defaults == 0 {
                return Err(Invalid::new(
                    format!("interfaces[{i}].shape"),
                    "shaping needs a default class (one without matches)",
                ));
            }
        }
        self.compile().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_become_masks() {
        let (n, mask, f) = net("10.1.2.3/16").unwrap();
        assert_eq!((n[0], mask[0], f), (0x0a01_0000, 0xffff_0000, 4));
        let (n, mask, f) = net("fd00:1:2:3::/56").unwrap();
        assert_eq!(f, 6);
        assert_eq!(mask, [u32::MAX, 0xffff_ff00, 0, 0]);
        assert_eq!(n[1], 0x0002_0000);
        assert_eq!(net("10.0.0.9").unwrap().1, [u32::MAX, 0, 0, 0]);
        assert!(net("banana/8").is_err());
    }

    #[test]
    fn compiles_matches_in_order() {
        let cfg: RouterConfig = crate::config::from_str(
            "name: r\ninterfaces: [{name: eth0}]\nclasses:\n\
             - {name: migration, id: 10, matches: [{vlan: 100}, {dscp: 10, protocol: tcp}]}\n\
             - {name: iperf, id: 11, matches: [{dst_port: 5201-5202, dst: 10.0.0.0/8}]}\n\
             - {name: rest, id: 20}\n",
            "router.yaml",
        )
        .unwrap();
        let (rules, default) = cfg.compile().unwrap();
        assert_eq!(default, 20);
        assert_eq!(rules.len(), 3);
        assert_eq!(
            (rules[0].class, rules[0].flags, rules[0].vlan),
            (10, m::VLAN, 100)
        );
        assert_eq!(
            (rules[1].flags, rules[1].dscp, rules[1].proto),
            (m::DSCP | m::PROTO, 10, 6)
        );
        assert_eq!(
            (rules[2].dport_lo, rules[2].dport_hi, rules[2].family),
            (5201, 5202, 4)
        );
    }

    #[test]
    fn bad_classes_are_refused_with_their_field() {
        let err = crate::config::from_str::<RouterConfig>(
            "name: r\ninterfaces: [{name: eth0}]\nclasses: [{name: a, id: 1, matches: [{vlan: 5000}]}]\n",
            "router.yaml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "router.yaml:3:38: classes[0].matches[0]: vlan 5000 is out of range 1..=4094"
        );
        let err = crate::config::from_str::<RouterConfig>(
            "name: r\ninterfaces: [{name: eth0, shape: {rate: 1Gbit}}]\nclasses: [{name: a, id: 1, matches: [{vlan: 5}]}]\n",
            "router.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("shaping needs a default class"), "{err}");
        assert!(ports("9-3").is_err() && protocol("sctpx").is_err());
    }
}
