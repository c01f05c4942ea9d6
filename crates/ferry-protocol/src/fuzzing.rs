//! Entry points for fuzzing the parsers that face the network: what the
//! cargo-fuzz targets in userspace/fuzz call, and what a unit test drives
//! over a deterministic corpus so that CI exercises them too. They must
//! never panic, allocate without bound, or accept what they should refuse.

use std::{io::Cursor, sync::Arc};

use super::{
    Backend, KeySchedule, MigrationId, MigrationKey, Side, Transport,
    handshake::{
        CLIENT_HELLO_LEN, ClientHello, Expectation, StreamPurpose, StreamRegistry, server_handshake,
    },
    record::{Record, RecordReader, RecordWriter},
    stream_crypto,
};

const MAX: usize = 64 * 1024;
const ID: MigrationId = MigrationId([0x42; 16]);

fn schedule() -> KeySchedule {
    KeySchedule::new(&MigrationKey::from_bytes([0x17; 32]), 5, &ID)
}

/// Reads records from `data` as a stream, first as plaintext, then as an
/// encrypted stream (so that forged records meet the authentication check).
pub fn record_stream(data: &[u8]) {
    for encrypted in [false, true] {
        let ks = encrypted.then(schedule);
        let (_, rx) = stream_crypto(ks.as_ref(), Backend::RustCrypto, 0, Side::Destination);
        let mut r = RecordReader::new(Cursor::new(data), rx, MAX, None);
        // At most one record per header's worth of input: bounded.
        for _ in 0..=data.len() / 16 {
            match r.read_record() {
                Ok(Record::Data(d)) => assert!(d.len() <= MAX),
                Ok(Record::End) | Err(_) => break,
            }
        }
    }
}

/// A well-formed encrypted stream to mutate: the fuzzer's seed.
pub fn record_seed() -> Vec<u8> {
    let ks = schedule();
    let (tx, _) = stream_crypto(Some(&ks), Backend::RustCrypto, 0, Side::Source);
    let mut w = RecordWriter::new(Vec::new(), tx, MAX);
    w.send_bytes(b"page data").unwrap();
    w.send_bytes(&[7; 300]).unwrap();
    w.finish().unwrap();
    w.get_ref().clone()
}

struct One(Expectation);

impl StreamRegistry for One {
    fn expect(&self, id: &MigrationId) -> Option<Expectation> {
        (*id == ID).then(|| self.0.clone())
    }
    fn claim(&self, _: &MigrationId, _: u16, _: StreamPurpose) -> bool {
        true
    }
}

/// Runs the destination's side of the handshake on `data` (the bytes a
/// client sent), for a known migration, plaintext and encrypted.
pub fn handshake(data: &[u8]) {
    if data.len() >= CLIENT_HELLO_LEN {
        let b: &[u8; CLIENT_HELLO_LEN] =
            data[..CLIENT_HELLO_LEN].try_into().expect("length checked");
        // What decodes must encode back to the bytes it came from: the tags
        // are computed over the encoding.
        if let Ok(h) = ClientHello::decode(b) {
            assert_eq!(&h.encode(), b);
        }
    }
    for transport in [Transport::Plaintext, Transport::Aes256Gcm] {
        let reg = One(Expectation {
            transport,
            schedule: transport.encrypted().then(|| Arc::new(schedule())),
            streams: 4,
        });
        let mut io = Duplex {
            input: Cursor::new(data),
            output: Vec::new(),
        };
        let accepted = server_handshake(&mut io, &reg, Backend::RustCrypto, None);
        if let Ok(a) = accepted {
            // Only a hello with the right tag can be accepted when encrypted.
            assert!(a.stream < 4 || a.purpose == StreamPurpose::OutcomeQuery);
        }
    }
}

/// A hello to mutate: the fuzzer's seed.
pub fn handshake_seed() -> Vec<u8> {
    let ks = schedule();
    let mut io = Duplex {
        input: Cursor::new(&[][..]),
        output: Vec::new(),
    };
    let hello = ClientHello::new(ID, Transport::Aes256Gcm, 1, 4, StreamPurpose::Migration);
    let _ = super::handshake::client_handshake(&mut io, hello, Some(&ks), Backend::RustCrypto);
    io.output
}

struct Duplex<'a> {
    input: Cursor<&'a [u8]>,
    output: Vec<u8>,
}

impl std::io::Read for Duplex<'_> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(b)
    }
}

impl std::io::Write for Duplex<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.output.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic mutations of the seeds plus random inputs: the same
    /// kind of input the fuzzer makes, enough to catch a panic in CI.
    fn corpus(seed: &[u8], n: usize) -> Vec<Vec<u8>> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut out = vec![seed.to_vec(), Vec::new()];
        for i in 0..n {
            let mut v = seed.to_vec();
            match i % 4 {
                0 => {
                    let at = next() as usize % v.len().max(1);
                    if !v.is_empty() {
                        v[at] ^= 1 << (next() % 8);
                    }
                }
                1 => v.truncate(next() as usize % (v.len() + 1)),
                2 => {
                    let at = next() as usize % (v.len() + 1);
                    v.splice(at..at, (0..next() % 40).map(|_| next() as u8));
                }
                _ => v = (0..next() % 200).map(|_| next() as u8).collect(),
            }
            out.push(v);
        }
        out
    }

    #[test]
    fn record_parser_survives_mutations() {
        let seed = record_seed();
        // The seed itself is accepted in full.
        let (_, rx) = stream_crypto(Some(&schedule()), Backend::RustCrypto, 0, Side::Destination);
        let mut r = RecordReader::new(Cursor::new(&seed[..]), rx, MAX, None);
        assert_eq!(r.read_record().unwrap(), Record::Data(b"page data"));
        for input in corpus(&seed, 4000) {
            record_stream(&input);
        }
    }

    #[test]
    fn handshake_survives_mutations() {
        let seed = handshake_seed();
        assert_eq!(seed.len(), CLIENT_HELLO_LEN);
        let reg = One(Expectation {
            transport: Transport::Aes256Gcm,
            schedule: Some(Arc::new(schedule())),
            streams: 4,
        });
        let mut io = Duplex {
            input: Cursor::new(&seed[..]),
            output: Vec::new(),
        };
        assert!(
            server_handshake(&mut io, &reg, Backend::RustCrypto, None).is_ok(),
            "the seed is a valid hello"
        );
        let mut accepted = 0;
        for input in corpus(&seed, 4000) {
            handshake(&input);
            let mut io = Duplex {
                input: Cursor::new(&input[..]),
                output: Vec::new(),
            };
            if server_handshake(&mut io, &reg, Backend::RustCrypto, None).is_ok() {
                accepted += 1;
                // Anything accepted under encryption carries the seed's authenticated prefix.
                assert_eq!(&input[..48], &seed[..48]);
            }
        }
        assert!(
            accepted >= 1,
            "some mutations leave the hello intact (appended bytes)"
        );
    }
}
