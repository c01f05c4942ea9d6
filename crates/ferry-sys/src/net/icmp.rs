//! A minimal ICMP echo client (raw socket, needs CAP_NET_RAW), so that tests
//! and the demo measure round trips without depending on an external `ping`.

use std::{
    io, mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

/// Result of a series of echo requests.
#[derive(Clone, Debug, Default)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
    /// Round-trip time of each reply, in the order received.
    pub rtts: Vec<Duration>,
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A raw ICMP socket whose replies the kernel timestamps.
fn icmp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh valid descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // The kernel stamps each reply as it arrives, so a round trip does not
    // include how late this thread was scheduled to read it (a loaded
    // machine otherwise adds milliseconds to some samples).
    let on: libc::c_int = 1;
    // SAFETY: valid fd and option value of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            std::ptr::from_ref::<libc::c_int>(&on).cast(),
            mem::size_of::<libc::c_int>() as u32,
        )
    };
    Ok(fd)
}

/// Echo request `seq` of `ident`, with `payload` bytes.
fn echo_request(ident: u16, seq: u16, payload: usize) -> Vec<u8> {
    let mut pkt = vec![0u8; 8 + payload];
    pkt[0] = 8; // echo request
    pkt[4..6].copy_from_slice(&ident.to_be_bytes());
    pkt[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in pkt[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let c = checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    pkt
}

fn send_to(fd: &OwnedFd, pkt: &[u8], sin: &libc::sockaddr_in) -> io::Result<()> {
    // SAFETY: valid buffer and sockaddr_in.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            std::ptr::from_ref::<libc::sockaddr_in>(sin).cast(),
            mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The (identifier, sequence) of an echo reply in the IPv4 packet `p`.
fn echo_reply(p: &[u8]) -> Option<(u16, usize)> {
    if p.len() < 20 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if p.len() < ihl + 8 || p[ihl] != 0 {
        return None; // not an echo reply
    }
    let id = u16::from_be_bytes([p[ihl + 4], p[ihl + 5]]);
    let seq = u16::from_be_bytes([p[ihl + 6], p[ihl + 7]]) as usize;
    Some((id, seq))
}

/// Sends `count` echo requests of `payload` bytes to `dst`, one every
/// `interval`, and waits up to `timeout` after the last for replies.
pub fn ping(
    dst: Ipv4Addr,
    count: u32,
    payload: usize,
    interval: Duration,
    timeout: Duration,
) -> io::Result<PingStats> {
    let fd = icmp_socket()?;
    // SAFETY: zeroed sockaddr_in is valid; fields set below.
    let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
    sin.sin_family = libc::AF_INET as u16;
    sin.sin_addr.s_addr = u32::from(dst).to_be();

    let ident = (std::process::id() as u16) ^ (fastrand_u16());
    let mut stats = PingStats::default();
    let mut sent_at = vec![None; count as usize];
    let mut buf = [0u8; 65536];
    let start = Instant::now();
    let deadline_for = |i: u32| start + interval * i;
    let end = start + interval * count.saturating_sub(1) + timeout;
    let mut next = 0u32;
    loop {
        let now = Instant::now();
        if next < count && now >= deadline_for(next) {
            let pkt = echo_request(ident, next as u16, payload);
            sent_at[next as usize] = Some((Instant::now(), realtime_ns()));
            send_to(&fd, &pkt, &sin)?;
            stats.sent += 1;
            next += 1;
            continue;
        }
        if now >= end || stats.received == count {
            break;
        }
        let wake = if next < count {
            deadline_for(next).min(end)
        } else {
            end
        };
        let wait = wake.saturating_duration_since(now);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, wait.as_millis().clamp(1, 60_000) as i32) };
        if r <= 0 {
            continue;
        }
        let (n, stamped) = recv_stamped(fd.as_raw_fd(), &mut buf);
        let got = Instant::now();
        let Some((id, seq)) = usize::try_from(n).ok().and_then(|n| echo_reply(&buf[..n])) else {
            continue;
        };
        if id != ident || seq >= sent_at.len() {
            continue;
        }
        if let Some((t, t_ns)) = sent_at[seq].take() {
            stats.received += 1;
            stats.rtts.push(match stamped {
                Some(rx_ns) if rx_ns >= t_ns => Duration::from_nanos(rx_ns - t_ns),
                _ => got - t,
            });
        }
    }
    Ok(stats)
}

/// CLOCK_REALTIME in nanoseconds: the clock of SO_TIMESTAMPNS.
fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One datagram without blocking, and the kernel's receive time
/// (CLOCK_REALTIME ns) when it gave one.
fn recv_stamped(fd: i32, buf: &mut [u8]) -> (isize, Option<u64>) {
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; its pointers are set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control);
    // SAFETY: msg points at live buffers of the sizes it states.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return (n, None);
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* walk stays within msg_controllen, which the kernel
    // set to what it wrote into `control`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    (n, stamp)
}

/// A little entropy for the echo identifier, so concurrent pingers in one
/// process do not take each other's replies.
fn fastrand_u16() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u16)
        .unwrap_or(0);
    NEXT.fetch_add(0x9e37, Ordering::Relaxed) ^ t
}

#[cfg(test)]
mod tests {
    use super::checksum;

    #[test]
    fn rfc1071_checksum() {
        // Example from RFC 1071 section 3: sum of these words is ddf2, complement 220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), 0x220d);
    }
}
