//! A small synchronous rtnetlink client on top of `netlink-packet-route`.
//!
//! A netlink socket belongs to the network namespace it was created in, for
//! its whole life. [`Netlink::open`] uses the calling thread's namespace;
//! `Netns::netlink` (in the namespace module, a layer above) opens one
//! inside a given namespace, which can then be used from any thread.

mod addr;
mod link;
pub mod tc;

use ferry_core::error::report;
use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

pub use addr::Neighbour;
pub use link::{LinkInfo, MacAddr};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket")]
    Io(#[from] io::Error),
    #[error("{op}")]
    Kernel {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("{op}: cannot decode the kernel's reply: {detail}")]
    Decode { op: String, detail: String },
    #[error("no interface named {0:?}")]
    NoSuchLink(String),
    #[error("invalid interface name {0:?} (1 to 15 bytes, no '/', ':' or whitespace)")]
    BadName(String),
}

impl NetlinkError {
    /// The errno the kernel answered with, if it was the kernel that refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

/// A connected rtnetlink socket.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Extended acks carry the kernel's own explanation of a refusal.
        let _ = socket.set_ext_ack(true);
        Ok(Self {
            socket,
            seq: 1,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends one request and collects the replies: for a dump every message
    /// until NLMSG_DONE, otherwise until the kernel's ACK.
    pub(crate) fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let len = nl.buffer_len();
        let mut out = vec![0; len];
        nl.serialize(&mut out);
        self.socket.send(&out, 0)?;

        let mut replies = Vec::new();
        // Bounded: the kernel ends every request with an ACK, an error or DONE;
        // the bound only guards against a socket shared by mistake.
        for _ in 0..1_000_000 {
            let n = self.recv()?;
            let mut off = 0;
            while off < n {
                let bytes = &self.buf[off..n];
                let msg =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
                        NetlinkError::Decode {
                            op: op.to_string(),
                            detail: report(&e).to_string(),
                        }
                    })?;
                let mlen = msg.header.length as usize;
                if mlen == 0 {
                    break;
                }
                off += (mlen + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(NetlinkError::Kernel {
                                op: op.to_string(),
                                source: io::Error::from_raw_os_error(-code.get()),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    _ => {}
                }
            }
        }
        Err(NetlinkError::Decode {
            op: op.to_string(),
            detail: "no end of reply".into(),
        })
    }

    fn recv(&mut self) -> Result<usize> {
        loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
