//! A tap device: the delay line's intake. The egress program redirects a
//! delayed class's frames to the tap; what a tap transmits, its file
//! descriptor reads, one whole frame per read, behind a virtio-net header
//! (`VNET_HDR` bytes) that carries GSO and checksum offload: with offload
//! on, a TCP flow's 64 KiB super-packets cross the line whole, and a packet
//! socket with PACKET_VNET_HDR sends them on the same way.

use ferry_core::error::report;
use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

/// Bytes of struct virtio_net_hdr in front of every frame.
pub const VNET_HDR: usize = 10;

/// struct ifreq as TUNSETIFF reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Creates tap `name` in the calling thread's namespace, non-blocking.
    /// The device lives as long as this descriptor.
    pub fn create(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tap name {name:?}: 1 to 15 characters"),
            ));
        }
        let path = CString::new("/dev/net/tun").expect("no NUL");
        // SAFETY: valid path; the fd is owned below.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("/dev/net/tun: {e}", e = report(&e)),
            ));
        }
        // SAFETY: fresh valid descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            // No packet-information header; a virtio-net header instead.
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: req is a valid ifreq-sized buffer for TUNSETIFF.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("creating tap {name}: {e}", e = report(&e)),
            ));
        }
        Ok(Self {
            fd,
            name: name.to_string(),
        })
    }

    /// With `gso`, the kernel hands over checksum-offloaded TCP
    /// super-packets; without, it segments and checksums them first, so
    /// every read is one frame as it goes on the wire.
    pub fn set_offload(&self, gso: bool) -> io::Result<()> {
        let f: libc::c_uint = if gso {
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        } else {
            0
        };
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETOFFLOAD, f as libc::c_ulong) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// One frame into `buf`; `Ok(None)` when none is waiting.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        crate::net::nonblocking_len(n)
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
