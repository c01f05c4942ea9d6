//! Durations in YAML as human-readable strings: "300ms", "2s", "1m30s", "150us".

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

use super::unit::{UnitError, UnitProblem};

const UNITS: &str = "ns, us, ms, s, m, h";

pub fn parse(input: &str) -> Result<Duration, UnitError> {
    let bad = |problem| UnitError::new("duration", input, problem);
    let s = input.trim();
    if s.is_empty() {
        return Err(bad(UnitProblem::Empty));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return Err(bad(UnitProblem::Expected("a number before the unit")));
        }
        let value: f64 = rest[..num_end]
            .parse()
            .map_err(|_| bad(UnitProblem::Expected("a number like 300ms or 1m30s")))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(bad(UnitProblem::MissingUnit { units: UNITS }));
            }
            u => {
                return Err(bad(UnitProblem::UnknownUnit {
                    unit: u.to_string(),
                    units: UNITS,
                }));
            }
        };
        total += Duration::from_secs_f64(value * secs);
    }
    Ok(total)
}

pub fn format(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        "0s".into()
    } else if ns.is_multiple_of(1_000_000_000) {
        format!("{}s", ns / 1_000_000_000)
    } else if ns.is_multiple_of(1_000_000) {
        format!("{}ms", ns / 1_000_000)
    } else if ns.is_multiple_of(1_000) {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

pub fn deserialize_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

pub fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("150us").unwrap(), Duration::from_micros(150));
        assert_eq!(parse("0.5ms").unwrap(), Duration::from_micros(500));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse(" ").unwrap_err().problem, UnitProblem::Empty);
        assert!(matches!(
            parse("10").unwrap_err().problem,
            UnitProblem::MissingUnit { .. }
        ));
        let e = parse("10 parsecs").unwrap_err();
        assert!(matches!(&e.problem, UnitProblem::UnknownUnit { unit, .. } if unit == " parsecs"));
        assert_eq!(
            e.to_string(),
            r#"invalid duration "10 parsecs": unknown unit " parsecs" (ns, us, ms, s, m, h)"#
        );
        assert!(matches!(
            parse("ms").unwrap_err().problem,
            UnitProblem::Expected(_)
        ));
    }

    #[test]
    fn round_trips() {
        for d in [
            Duration::from_millis(300),
            Duration::from_secs(5),
            Duration::from_micros(7),
            Duration::ZERO,
        ] {
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }
}
