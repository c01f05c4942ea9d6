//! AF_PACKET raw sockets: send hand-made frames, receive every frame of an interface.

use std::{
    ffi::CString,
    io, mem,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    time::Duration,
};

/// Index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {name:?}"),
        ))
    } else {
        Ok(idx)
    }
}

/// A raw packet socket bound to one interface (of the namespace it was created in).
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl PacketSocket {
    /// Opens a socket on interface `name` that sends raw frames and receives
    /// every frame the interface sees.
    pub fn bind(name: &str) -> io::Result<Self> {
        Self::open(name, (libc::ETH_P_ALL as u16).to_be())
    }

    /// Opens a socket that only sends on interface `name`: protocol 0
    /// receives nothing, so the kernel copies no frames to it.
    pub fn sender(name: &str) -> io::Result<Self> {
        Self::open(name, 0)
    }

    fn open(name: &str, proto: u16) -> io::Result<Self> {
        let ifindex = ifindex(name)?;
        // SAFETY: plain socket(2) call; the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh, valid descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll of the given size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref::<libc::sockaddr_ll>(&sll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, ifindex })
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Sets the mark (skb->mark) of every frame this socket sends.
    pub fn set_mark(&self, mark: u32) -> io::Result<()> {
        self.setsockopt(libc::SO_MARK, mark as libc::c_int)
    }

    /// Frames sent start with a struct virtio_net_hdr (GSO, checksum
    /// offload), as a tap with IFF_VNET_HDR reads them.
    pub fn set_vnet_hdr(&self) -> io::Result<()> {
        let on: libc::c_int = 1;
        // SAFETY: valid socket and option value.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                std::ptr::from_ref::<libc::c_int>(&on).cast(),
                mem::size_of::<libc::c_int>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Asks for a send buffer of `bytes` (beyond rmem/wmem_max: needs root).
    pub fn set_send_buffer(&self, bytes: usize) -> io::Result<()> {
        self.setsockopt(
            libc::SO_SNDBUFFORCE,
            bytes.min(i32::MAX as usize) as libc::c_int,
        )
    }

    fn setsockopt(&self, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
        // SAFETY: v is a valid c_int for the option.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                std::ptr::from_ref::<libc::c_int>(&v).cast(),
                mem::size_of::<libc::c_int>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends one complete frame (from the destination MAC on, without FCS).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is a valid buffer of frame.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != frame.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
        }
        Ok(())
    }

    /// Receives one frame, waiting at most `timeout`. `Ok(None)` on timeout.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if r == 0 {
            return Ok(None);
        }
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        super::nonblocking_len(n)
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
