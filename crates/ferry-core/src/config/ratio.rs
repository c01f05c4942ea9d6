//! Probabilities in YAML: "1%", "0.5%", or a fraction like 0.01.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::unit::{UnitError, UnitProblem};

#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Default)]
pub struct Ratio(pub f64);

impl Ratio {
    pub fn parse(s: &str) -> Result<Self, UnitError> {
        let bad = |problem| UnitError::new("ratio", s, problem);
        let t = s.trim();
        let v = match t.strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
            None => t.parse::<f64>(),
        }
        .map_err(|_| {
            bad(UnitProblem::Expected(
                "a percentage like 1.5% or a fraction like 0.015",
            ))
        })?;
        if !(0.0..=1.0).contains(&v) {
            return Err(bad(UnitProblem::OutOfRange("0% to 100%")));
        }
        Ok(Ratio(v))
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0 * 100.0)
    }
}

impl Serialize for Ratio {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(v) => Ratio::parse(&v.to_string()),
            Raw::Text(s) => Ratio::parse(&s),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_and_fractions() {
        assert_eq!(Ratio::parse("1%").unwrap().0, 0.01);
        assert_eq!(Ratio::parse("0.5 %").unwrap().0, 0.005);
        assert_eq!(Ratio::parse("0.25").unwrap().0, 0.25);
        assert!(matches!(
            Ratio::parse("101%").unwrap_err().problem,
            UnitProblem::OutOfRange(_)
        ));
        assert!(Ratio::parse("lots").is_err());
        assert_eq!(Ratio::parse(&Ratio(0.02).to_string()).unwrap().0, 0.02);
    }
}
