//! Address/prefix notation, as in YAML files and on the command line.

use std::net::IpAddr;

/// An address/prefix that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {0:?}: expected address/prefix, like 10.0.0.1/24")]
pub struct BadCidr(pub String);

/// Parses "10.0.0.1/24" (or "fd00::1/64").
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), BadCidr> {
    let bad = || BadCidr(s.to_string());
    let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok((ip, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            parse_cidr("10.0.0.1/24").unwrap(),
            ("10.0.0.1".parse().unwrap(), 24)
        );
        assert_eq!(
            parse_cidr("fd00::1/64").unwrap(),
            ("fd00::1".parse().unwrap(), 64)
        );
        for bad in ["10.0.0.1", "10.0.0.1/33", "x/24", "10.0.0.1/"] {
            assert!(matches!(parse_cidr(bad), Err(BadCidr(_))), "{bad}");
        }
    }
}
