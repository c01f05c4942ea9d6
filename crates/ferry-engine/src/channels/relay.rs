//! The two pumps of one channel: device-model socket to stream records
//! (outward) and stream records to device-model socket (inward).

use std::{
    io::{self, Read, Write},
    net::{Shutdown, TcpStream},
    os::unix::net::UnixStream,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use ferry_protocol::{
    ProtocolError,
    record::{Record, RecordReader, RecordWriter},
};

use crate::wire::{self, Message};

/// A stream's sending side, shared by its pump and (on stream 0) the
/// engine's control messages.
pub type SharedWriter = Arc<Mutex<RecordWriter<TcpStream>>>;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the device model's channel")]
    Channel(#[source] io::Error),
    #[error("the migration stream")]
    Stream(#[source] ProtocolError),
}

/// Relays what the device model writes on `from` into DATA records on `to`
/// until it closes its side, then sends CHANNEL_END. Counts payload bytes.
pub fn outward(
    mut from: UnixStream,
    to: &SharedWriter,
    max_record: usize,
    counted: &AtomicU64,
) -> Result<(), RelayError> {
    let mut buf = vec![0u8; max_record];
    buf[..1].copy_from_slice(&wire::DATA_HEADER);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&from);
    loop {
        let mut n = match from.read(&mut buf[1..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RelayError::Channel(e)),
        };
        // Whatever else is already waiting goes into the same record, up to
        // a full one, without waiting for more: fewer, larger records cost
        // fewer system calls and seals, and add no delay.
        while n > 0 && n + 1 < buf.len() {
            let rest = &mut buf[n + 1..];
            // SAFETY: `rest` is a live, writable buffer of rest.len() bytes
            // and `fd` belongs to `from`, which outlives the call.
            let r =
                unsafe { libc::recv(fd, rest.as_mut_ptr().cast(), rest.len(), libc::MSG_DONTWAIT) };
            // Nothing more now, the end, or an error: the next blocking
            // read reports the last two.
            if r <= 0 {
                break;
            }
            n += r as usize;
        }
        let mut w = to.lock().expect("stream writer");
        if n == 0 {
            return w
                .send_bytes(&Message::ChannelEnd.encode())
                .map_err(|e| RelayError::Stream(ProtocolError::from(e)));
        }
        w.send_bytes(&buf[..n + 1])
            .map_err(|e| RelayError::Stream(ProtocolError::from(e)))?;
        counted.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Relays DATA records from `from` into the device model's channel, which
/// `connect` opens when the first bytes (or the end) arrive: a channel that
/// never carries anything is never opened. Other messages go to `control`.
/// Returns at the stream's authenticated end.
pub fn inward(
    from: &mut RecordReader<TcpStream>,
    mut connect: impl FnMut() -> io::Result<UnixStream>,
    mut control: impl FnMut(&[u8]),
    counted: &AtomicU64,
) -> Result<(), RelayError> {
    let mut channel: Option<UnixStream> = None;
    loop {
        match from.read_record().map_err(RelayError::Stream)? {
            Record::Data(d) => match Message::decode(d) {
                Ok(m @ (Message::Data(_) | Message::ChannelEnd)) => {
                    if channel.is_none() {
                        channel = Some(connect().map_err(RelayError::Channel)?);
                    }
                    let c = channel.as_mut().expect("connected");
                    if let Message::Data(bytes) = m {
                        c.write_all(bytes).map_err(RelayError::Channel)?;
                        counted.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    } else {
                        // The far end closed its side; QEMU sees EOF.
                        let _ = c.shutdown(Shutdown::Write);
                    }
                }
                _ => control(d),
            },
            Record::End => return Ok(()),
        }
    }
}
