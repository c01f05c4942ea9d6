//! Link-layer building blocks: MAC addresses, frame builders, AF_PACKET and
//! ICMP sockets. Used by the announcer, the lab and the tests.

pub mod announce;
pub mod frame;
pub mod icmp;
pub mod packet_socket;

pub use ferry_core::{BadCidr, MacAddr, parse_cidr};

pub use packet_socket::PacketSocket;

/// The result of a non-blocking read(2)/recv(2): the length read, `None`
/// when nothing was waiting, or the error.
pub fn nonblocking_len(n: isize) -> std::io::Result<Option<usize>> {
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(n as usize))
}
