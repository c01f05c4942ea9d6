//! Link and class rates in YAML: "50Mbit", "1Gbit", "800kbit", "1.5Gbit",
//! or bytes per second as "10MB/s", "64KiB/s". Kept in bytes per second.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::unit::{UnitError, UnitProblem};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Rate(pub u64);

impl Rate {
    pub fn bytes_per_second(self) -> u64 {
        self.0
    }

    pub fn parse(s: &str) -> Result<Self, UnitError> {
        let bad = |problem| UnitError::new("rate", s, problem);
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| bad(UnitProblem::Expected("a number and a unit like 50Mbit")))?;
        let bytes_per_s = match unit.trim() {
            "bit" | "bps" => n / 8.0,
            "kbit" | "Kbit" => n * 1e3 / 8.0,
            "Mbit" => n * 1e6 / 8.0,
            "Gbit" => n * 1e9 / 8.0,
            "B/s" => n,
            "kB/s" | "KB/s" => n * 1e3,
            "MB/s" => n * 1e6,
            "GB/s" => n * 1e9,
            "KiB/s" => n * 1024.0,
            "MiB/s" => n * 1048576.0,
            "GiB/s" => n * 1073741824.0,
            u => {
                return Err(bad(UnitProblem::UnknownUnit {
                    unit: u.to_string(),
                    units: "bit, kbit, Mbit, Gbit, B/s, kB/s, MB/s, GB/s, KiB/s, MiB/s, GiB/s",
                }));
            }
        };
        if !(1.0..=1e13).contains(&bytes_per_s) {
            return Err(bad(UnitProblem::OutOfRange("(1 B/s to 80 Tbit/s)")));
        }
        Ok(Rate(bytes_per_s.round() as u64))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.0 * 8;
        for (unit, m) in [
            ("Gbit", 1_000_000_000u64),
            ("Mbit", 1_000_000),
            ("kbit", 1_000),
        ] {
            if bits >= m && bits.is_multiple_of(m) {
                return write!(f, "{}{unit}", bits / m);
            }
        }
        write!(f, "{}B/s", self.0)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Rate::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bits_and_bytes() {
        assert_eq!(Rate::parse("50Mbit").unwrap().0, 6_250_000);
        assert_eq!(Rate::parse("1Gbit").unwrap().0, 125_000_000);
        assert_eq!(Rate::parse("1.5Gbit").unwrap().0, 187_500_000);
        assert_eq!(Rate::parse("10MB/s").unwrap().0, 10_000_000);
        assert!(Rate::parse("fast").is_err());
        assert!(matches!(
            Rate::parse("5 furlongs").unwrap_err().problem,
            UnitProblem::UnknownUnit { .. }
        ));
        assert_eq!(Rate(6_250_000).to_string(), "50Mbit");
        assert_eq!(
            Rate::parse(&Rate(125_000_000).to_string()).unwrap().0,
            125_000_000
        );
    }
}
