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

/// Sends `count` echo requests of `payload` bytes to `dst`, one every
/// `interval`, and waits up to `timeout` after the last for replies.
pub fn ping(
    dst: Ipv4Addr,
    count: u32,
    payload: usize,
    interval: Duration,
    timeout: Duration,
) -> io::Result<PingStats> {
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
            let mut pkt = vec![0u8; 8 + payload];
            pkt[0] = 8; // echo request
            pkt[4..6].copy_from_slice(&ident.to_be_bytes());
            pkt[6..8].copy_from_slice(&(next as u16).to_be_bytes());
            for (i, b) in pkt[8..].iter_mut().enumerate() {
                *b = i as u8;
            }
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
            sent_at[next as usize] = Some(Instant::now());
            // SAFETY: valid buffer and sockaddr_in.
            let n = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sin as *const libc::sockaddr_in).cast(),
                    mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
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
        // SAFETY: valid buffer.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        let got = Instant::now();
        if n < 20 {
            continue;
        }
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        let n = n as usize;
        if n < ihl + 8 || buf[ihl] != 0 {
            continue; // not an echo reply
        }
        let id = u16::from_be_bytes([buf[ihl + 4], buf[ihl + 5]]);
        let seq = u16::from_be_bytes([buf[ihl + 6], buf[ihl + 7]]) as usize;
        if id != ident || seq >= sent_at.len() {
            continue;
        }
        if let Some(t) = sent_at[seq].take() {
            stats.received += 1;
            stats.rtts.push(got - t);
        }
    }
    Ok(stats)
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
