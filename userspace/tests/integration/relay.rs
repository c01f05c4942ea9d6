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

/// What the destination says on stream 0 up to and including READY on an
/// encrypted migration: its 32-byte server hello, then READY (one byte) as a
/// record (16-byte header, 16-byte tag). A limit here lets READY through and
/// stops what follows (RESUMED or FAILED).
pub const HELLO_AND_READY: u64 = 32 + 16 + 1 + 16;

#[derive(Default)]
struct Ctl {
    stop: AtomicBool,
    /// (source side, destination side) of every connection.
    socks: Mutex<Vec<(TcpStream, TcpStream)>>,
    /// (migration stream, byte offset in the source-to-destination direction)
    flip: Mutex<Option<(u16, u64)>>,
    flipped: AtomicBool,
    /// (stream index, bytes, action): after that many destination-to-source
    /// bytes on the connection carrying that migration stream.
    reverse_limit: Mutex<Option<(u16, u64, AfterLimit)>>,
    /// A connection reached the reverse limit.
    reached: AtomicBool,
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

    /// Once the destination has sent `bytes` on migration stream `stream`,
    /// `action` happens to that connection.
    pub fn after_reverse_bytes(&self, stream: u16, bytes: u64, action: AfterLimit) {
        *self.ctl.reverse_limit.lock().unwrap() = Some((stream, bytes, action));
    }

    /// Whether a connection has reached the limit of [`Relay::after_reverse_bytes`].
    pub fn limit_reached(&self) -> bool {
        self.ctl.reached.load(Ordering::SeqCst)
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
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
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
            && let Some((stream, limit, action)) = *ctl.reverse_limit.lock().unwrap()
            && *state.stream.lock().unwrap() == Some(stream)
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
