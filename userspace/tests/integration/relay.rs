//! A TCP relay between a migration's source and destination that can cut
//! every connection or flip one byte, to play the broken or hostile network.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

/// The destination's server hello on an encrypted migration's stream.
const SERVER_HELLO: u64 = 32;
/// The length field of an encrypted READY record: one byte and the tag.
/// Nothing else the destination says is that short.
const READY_RECORD_LENGTH: u32 = 1 + 16;

#[derive(Default)]
struct Ctl {
    stop: AtomicBool,
    /// (source side, destination side) of every connection.
    socks: Mutex<Vec<(TcpStream, TcpStream)>>,
    /// (migration stream, byte offset in the source-to-destination direction)
    flip: Mutex<Option<(u16, u64)>>,
    flipped: AtomicBool,
    /// (stream index, action): after the destination's READY on the
    /// connection carrying that migration stream, this happens.
    reverse_limit: Mutex<Option<(u16, AfterLimit)>>,
    /// A connection reached the reverse limit.
    reached: AtomicBool,
    /// Source-to-destination bytes per second per connection (0: unpaced).
    pace: std::sync::atomic::AtomicU64,
}

/// What happens to a connection's destination-to-source direction at its limit.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AfterLimit {
    /// The connection dies; nothing the source sends afterwards arrives.
    Cut,
    /// Destination-to-source bytes vanish; the other direction still works.
    BlackHole,
    /// Both directions go silent (the connection stays open): nothing the
    /// source sends afterwards arrives, and nothing more comes back.
    Freeze,
}

/// What the relay learned of one connection: the migration stream it
/// carries, read from the client hello (bytes 10..12 after "FERRYMIG").
#[derive(Default)]
struct Conn {
    stream: Mutex<Option<u16>>,
    /// Source-to-destination bytes vanish from here on.
    frozen: AtomicBool,
}

pub struct Relay {
    addr: SocketAddr,
    ctl: Arc<Ctl>,
}

impl Relay {
    pub fn new(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ctl = Arc::new(Ctl::default());
        let c = ctl.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if c.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(down) = conn else { continue };
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                c.socks
                    .lock()
                    .unwrap()
                    .push((down.try_clone().unwrap(), up.try_clone().unwrap()));
                let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                let (c1, c2) = (c.clone(), c.clone());
                let conn = Arc::new(Conn::default());
                let k2 = conn.clone();
                std::thread::spawn(move || pump(down, up, c1, conn, false));
                std::thread::spawn(move || pump(u2, d2, c2, k2, true));
            }
        });
        Relay { addr, ctl }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Breaks every connection now, as a dead host or a pulled cable would:
    /// the source's sides first, so that nothing the destination says once
    /// it notices one broken stream can reach the source on another.
    pub fn cut(&self) {
        let socks = self.ctl.socks.lock().unwrap();
        for (down, _) in socks.iter() {
            let _ = down.shutdown(Shutdown::Both);
        }
        for (_, up) in socks.iter() {
            let _ = up.shutdown(Shutdown::Both);
        }
    }

    /// Flips one bit of byte `offset` (counted from the connection's first
    /// byte) sent by the source on migration stream `stream`. By stream, not
    /// by connection: the streams connect in no fixed order.
    pub fn flip_byte(&self, stream: u16, offset: u64) {
        *self.ctl.flip.lock().unwrap() = Some((stream, offset));
    }

    /// Once the destination has sent READY on migration stream `stream`,
    /// `action` happens to that connection: what came before READY (PASSED
    /// confirmations) and READY itself get through, what follows (RESUMED
    /// or FAILED) meets the action. READY is found by the record headers'
    /// lengths, which travel in the clear.
    pub fn after_ready(&self, stream: u16, action: AfterLimit) {
        *self.ctl.reverse_limit.lock().unwrap() = Some((stream, action));
    }

    /// Whether a connection has reached the limit of [`Relay::after_ready`].
    pub fn limit_reached(&self) -> bool {
        self.ctl.reached.load(Ordering::SeqCst)
    }

    /// Carries at most `bytes_per_second` from source to destination on
    /// each connection: a slow link, whose sockets hold a backlog.
    pub fn pace(&self, bytes_per_second: u64) {
        self.ctl.pace.store(bytes_per_second, Ordering::SeqCst);
    }

    pub fn flipped(&self) -> bool {
        self.ctl.flipped.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.ctl.stop.store(true, Ordering::Relaxed);
        self.cut();
        let _ = TcpStream::connect(self.addr);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, ctl: Arc<Ctl>, state: Arc<Conn>, reverse: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    let mut head = Vec::new();
    let start = std::time::Instant::now();
    // Destination to source: where the next record header starts, its
    // bytes so far, and where READY ends once seen.
    let (mut record_at, mut header, mut ready_end) = (SERVER_HELLO, Vec::new(), None::<u64>);
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if reverse && ready_end.is_none() {
            for (i, &b) in buf[..n].iter().enumerate() {
                if offset + (i as u64) < record_at {
                    continue;
                }
                header.push(b);
                if header.len() == 16 {
                    let len = u32::from_be_bytes(header[4..8].try_into().unwrap());
                    if len == READY_RECORD_LENGTH && ready_end.is_none() {
                        ready_end = Some(record_at + 16 + u64::from(len));
                    }
                    record_at += 16 + u64::from(len);
                    header.clear();
                }
            }
        }
        if !reverse && head.len() < 12 {
            head.extend_from_slice(&buf[..n.min(12 - head.len())]);
            if head.len() == 12 && &head[..8] == b"FERRYMIG" {
                *state.stream.lock().unwrap() = Some(u16::from_be_bytes([head[10], head[11]]));
            }
        }
        let mut n = n;
        if !reverse && state.frozen.load(Ordering::SeqCst) {
            continue;
        }
        if reverse
            && let Some((stream, action)) = *ctl.reverse_limit.lock().unwrap()
            && *state.stream.lock().unwrap() == Some(stream)
            && let Some(limit) = ready_end
            && offset + n as u64 >= limit
        {
            if offset >= limit {
                continue; // black-holed
            }
            n = (limit - offset) as usize;
            offset = limit;
            if action == AfterLimit::Freeze {
                state.frozen.store(true, Ordering::SeqCst);
            }
            if action == AfterLimit::Cut {
                // Close the destination's side first, so that nothing the
                // source sends after this last delivery can get through.
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.write_all(&buf[..n]);
                ctl.reached.store(true, Ordering::SeqCst);
                break;
            }
            if to.write_all(&buf[..n]).is_err() {
                return;
            }
            ctl.reached.store(true, Ordering::SeqCst);
            continue;
        } else if !reverse
            && let Some((stream, at)) = *ctl.flip.lock().unwrap()
            && *state.stream.lock().unwrap() == Some(stream)
            && at >= offset
            && at < offset + n as u64
            && !ctl.flipped.swap(true, Ordering::SeqCst)
        {
            buf[(at - offset) as usize] ^= 0x01;
        }
        offset += n as u64;
        let pace = ctl.pace.load(Ordering::Relaxed);
        if !reverse && pace > 0 {
            let due = std::time::Duration::from_secs_f64(offset as f64 / pace as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            // `to` is gone, but what it sent before it went may still be on
            // its way back through the other pump: a TCP peer still gets
            // the data that came before a reset. That pump ends both sides
            // when it has delivered it.
            return;
        }
    }
    // Like one TCP connection end to end: when one side is gone, both are.
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
