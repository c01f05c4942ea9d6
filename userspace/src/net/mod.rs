//! Link-layer building blocks: MAC addresses, frame builders, AF_PACKET and
//! ICMP sockets. Used by the announcer, the lab and the tests.

pub mod announce;
pub mod frame;
pub mod icmp;
mod mac;
pub mod packet_socket;

pub use mac::MacAddr;
pub use packet_socket::PacketSocket;
