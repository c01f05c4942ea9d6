//! A TCP relay between a migration's source and destination that can cut
//! every connection or flip one byte, to play the broken or hostile network.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

#[derive(Default)]
struct Ctl {
    stop: AtomicBool,
    socks: Mutex<Vec<TcpStream>>,
    /// (connection number, byte offset in the source-to-destination direction)
    flip: Mutex<Option<(usize, u64)>>,
    flipped: AtomicBool,
    conns: AtomicUsize,
    /// (connection number, bytes): after that many destination-to-source
    /// bytes on that connection, the connection dies.
    reverse_limit: Mutex<Option<(usize, u64)>>,
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
                let n = c.conns.fetch_add(1, Ordering::SeqCst);
                {
                    let mut s = c.socks.lock().unwrap();
                    s.push(down.try_clone().unwrap());
                    s.push(up.try_clone().unwrap());
                }
                let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                let (c1, c2) = (c.clone(), c.clone());
                std::thread::spawn(move || pump(down, up, n, c1, false));
                std::thread::spawn(move || pump(u2, d2, n, c2, true));
            }
        });
        Relay { addr, ctl }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Breaks every connection now, as a dead host or a pulled cable would.
    pub fn cut(&self) {
        for s in self.ctl.socks.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Flips one bit of byte `offset` sent by the source on connection `conn`.
    pub fn flip_byte(&self, conn: usize, offset: u64) {
        *self.ctl.flip.lock().unwrap() = Some((conn, offset));
    }

    /// Kills connection `conn` once the destination has sent `bytes` on it.
    pub fn cut_reverse_after(&self, conn: usize, bytes: u64) {
        *self.ctl.reverse_limit.lock().unwrap() = Some((conn, bytes));
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

fn pump(mut from: TcpStream, mut to: TcpStream, conn: usize, ctl: Arc<Ctl>, reverse: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut n = n;
        let mut last = false;
        if reverse {
            if let Some((c, limit)) = *ctl.reverse_limit.lock().unwrap()
                && c == conn
                && offset + n as u64 >= limit
            {
                n = (limit - offset) as usize;
                last = true;
            }
        } else if let Some((c, at)) = *ctl.flip.lock().unwrap()
            && c == conn
            && at >= offset
            && at < offset + n as u64
            && !ctl.flipped.swap(true, Ordering::SeqCst)
        {
            buf[(at - offset) as usize] ^= 0x01;
        }
        offset += n as u64;
        if to.write_all(&buf[..n]).is_err() || last {
            break;
        }
    }
    // Like one TCP connection end to end: when one side is gone, both are.
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
