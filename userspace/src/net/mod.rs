//! Link-layer building blocks: MAC addresses, frame builders, AF_PACKET and
//! ICMP sockets. Used by the announcer, the lab and the tests.

pub mod announce;
pub mod frame;
pub mod icmp;
mod mac;
pub mod packet_socket;

pub use mac::MacAddr;

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
pub use packet_socket::PacketSocket;

/// The result of a non-blocking read(2)/recv(2): the length read, `None`
/// when nothing was waiting, or the error.
pub(crate) fn nonblocking_len(n: isize) -> std::io::Result<Option<usize>> {
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(n as usize))
}

#[cfg(test)]
mod cidr_tests {
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
