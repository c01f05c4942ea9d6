//! Byte sizes in YAML: "1GiB", "512MiB", "64KiB", "10GB", or a plain number.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::unit::{UnitError, UnitProblem};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, UnitError> {
        let bad = |problem| UnitError::new("size", s, problem);
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| bad(UnitProblem::Expected("a number and a unit like 512MiB")))?;
        let mul: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            u => {
                return Err(bad(UnitProblem::UnknownUnit {
                    unit: u.to_string(),
                    units: "B, KiB, MiB, GiB, TiB, kB, MB, GB, TB",
                }));
            }
        };
        n.checked_mul(mul)
            .map(ByteSize)
            .ok_or_else(|| bad(UnitProblem::OutOfRange("(at most 16 EiB)")))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, m) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if b >= m && b.is_multiple_of(m) {
                return write!(f, "{}{unit}", b / m);
            }
        }
        write!(f, "{b}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("1GiB").unwrap().0, 1 << 30);
        assert_eq!(ByteSize::parse("512MiB").unwrap().0, 512 << 20);
        assert_eq!(ByteSize::parse("10GB").unwrap().0, 10_000_000_000);
        assert_eq!(ByteSize::parse("4096").unwrap().0, 4096);
        assert!(ByteSize::parse("1 parsec").is_err());
        assert_eq!(
            ByteSize::parse("99999999999TiB").unwrap_err().problem,
            UnitProblem::OutOfRange("(at most 16 EiB)")
        );
        assert_eq!(ByteSize(3 << 30).to_string(), "3GiB");
    }
}
