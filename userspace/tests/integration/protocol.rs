//! The encrypted protocol on real loopback sockets: a clean stream, and each
//! way a stream can be attacked or broken, with its typed error and its
//! metrics counter.

use std::{
    collections::HashSet,
    io::Write,
    net::{Shutdown, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use ferry::{
    metrics::ProtocolMetrics,
    protocol::{
        Backend, KeySchedule, MigrationId, MigrationKey, ProtocolError, Side, Transport,
        handshake::{
            ClientHello, Expectation, HelloStatus, StreamPurpose, StreamRegistry, client_handshake,
            server_handshake,
        },
        record::{Record, RecordReader, RecordWriter},
        stream_crypto,
    },
};

const MAX: usize = 64 * 1024;

struct Registry {
    id: MigrationId,
    exp: Expectation,
    claimed: Mutex<HashSet<u16>>,
}

impl StreamRegistry for Registry {
    fn expect(&self, id: &MigrationId) -> Option<Expectation> {
        (*id == self.id).then(|| self.exp.clone())
    }
    fn claim(&self, _id: &MigrationId, stream: u16, _purpose: StreamPurpose) -> bool {
        self.claimed.lock().unwrap().insert(stream)
    }
}

struct Setup {
    id: MigrationId,
    transport: Transport,
    schedule: Option<Arc<KeySchedule>>,
}

impl Setup {
    fn encrypted(key: u8) -> Self {
        let id = MigrationId([7; 16]);
        let ks = KeySchedule::new(&MigrationKey::from_bytes([key; 32]), 99, &id);
        Setup {
            id,
            transport: Transport::Aes256Gcm,
            schedule: Some(Arc::new(ks)),
        }
    }
    fn plaintext() -> Self {
        Setup {
            id: MigrationId([7; 16]),
            transport: Transport::Plaintext,
            schedule: None,
        }
    }
    fn registry(&self) -> Registry {
        Registry {
            id: self.id,
            exp: Expectation {
                transport: self.transport,
                schedule: self.schedule.clone(),
                streams: 2,
            },
            claimed: Mutex::new(HashSet::new()),
        }
    }
}

/// Each record of a stream as separate byte strings, sealed by `sender`.
fn records(sender: &Setup, payloads: &[&[u8]], end: bool) -> Vec<Vec<u8>> {
    let (tx, _) = stream_crypto(sender.schedule.as_deref(), Backend::AwsLc, 0, Side::Source);
    let mut w = RecordWriter::new(Vec::new(), tx, MAX);
    let mut out = Vec::new();
    let mut last = 0;
    for p in payloads {
        w.send_bytes(p).unwrap();
        out.push(w.get_ref()[last..].to_vec());
        last = w.get_ref().len();
    }
    if end {
        w.finish().unwrap();
        out.push(w.get_ref()[last..].to_vec());
    }
    out
}

struct Outcome {
    server: Result<Vec<Vec<u8>>, ProtocolError>,
    client: Result<(), ProtocolError>,
    metrics: ProtocolMetrics,
}

/// A destination on a real loopback socket that accepts one stream and reads
/// records until the end or an error; the source handshakes as `client`
/// (None: skip the handshake) and writes `wire` raw.
fn exchange(dest: &Setup, client: Option<(&Setup, u16, u16)>, wire: Vec<u8>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = ProtocolMetrics::new();
    let registry = dest.registry();
    let m = metrics.clone();
    let server = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let (mut sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let acc = server_handshake(&mut sock, &registry, Backend::AwsLc, Some(&m))?;
            let (_, rx) = stream_crypto(
                acc.expectation.schedule.as_deref(),
                Backend::RustCrypto,
                acc.stream,
                Side::Destination,
            );
            let mut r = RecordReader::new(sock, rx, MAX, Some(m.clone()));
            let mut got = Vec::new();
            // Bounded: the source sends a handful of records.
            for _ in 0..64 {
                match r.read_record()? {
                    Record::Data(d) => got.push(d.to_vec()),
                    Record::End => return Ok(got),
                }
            }
            panic!("too many records");
        });
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let client_result = match client {
            Some((c, stream, streams)) => client_handshake(
                &mut sock,
                ClientHello::new(c.id, c.transport, stream, streams, StreamPurpose::Migration),
                c.schedule.as_deref(),
                Backend::AwsLc,
            ),
            None => Ok(()),
        };
        if client_result.is_ok() {
            let _ = sock.write_all(&wire);
        }
        let _ = sock.shutdown(Shutdown::Write);
        let server = h.join().unwrap();
        (server, client_result)
    });
    Outcome {
        server: server.0,
        client: server.1,
        metrics,
    }
}

fn only_rejection(o: &Outcome, reason: &str) {
    for r in ProtocolError::REASONS {
        let want = u64::from(*r == reason);
        assert_eq!(
            o.metrics.rejected(r),
            want,
            "ferry_protocol_rejections_total{{reason={r}}}"
        );
    }
}

const PAYLOADS: &[&[u8]] = &[b"first record", b"second record", &[0xab; 40000], b"fourth"];

#[test]
fn clean_encrypted_stream_delivers_every_record() {
    let s = Setup::encrypted(1);
    let o = exchange(&s, Some((&s, 0, 2)), records(&s, PAYLOADS, true).concat());
    o.client.unwrap();
    let got = o.server.unwrap();
    assert_eq!(got, PAYLOADS.iter().map(|p| p.to_vec()).collect::<Vec<_>>());
    for r in ProtocolError::REASONS {
        assert_eq!(o.metrics.rejected(r), 0);
    }
}

#[test]
fn ciphertext_on_the_wire_does_not_contain_the_plaintext() {
    let s = Setup::encrypted(1);
    let wire = records(&s, &[b"a very recognisable guest page"], true).concat();
    assert!(!wire.windows(12).any(|w| w == b"recognisable"));
    let p = Setup::plaintext();
    let wire = records(&p, &[b"a very recognisable guest page"], true).concat();
    assert!(wire.windows(12).any(|w| w == b"recognisable"));
}

#[test]
fn clean_plaintext_stream_delivers_every_record() {
    let s = Setup::plaintext();
    let o = exchange(&s, Some((&s, 1, 2)), records(&s, PAYLOADS, true).concat());
    o.client.unwrap();
    assert_eq!(o.server.unwrap().len(), PAYLOADS.len());
}

#[test]
fn wrong_key_fails_the_handshake() {
    let dest = Setup::encrypted(1);
    let src = Setup::encrypted(2);
    let o = exchange(&dest, Some((&src, 0, 2)), Vec::new());
    assert!(
        matches!(o.server, Err(ProtocolError::HandshakeAuth { .. })),
        "{:?}",
        o.server.err()
    );
    assert!(
        matches!(
            o.client,
            Err(ProtocolError::Refused(HelloStatus::AuthFailed))
        ),
        "{:?}",
        o.client
    );
    only_rejection(&o, "handshake_auth");
}

#[test]
fn records_under_a_wrong_key_fail_authentication() {
    let dest = Setup::encrypted(1);
    let o = exchange(
        &dest,
        Some((&dest, 0, 2)),
        records(&Setup::encrypted(2), PAYLOADS, true).concat(),
    );
    assert!(
        matches!(o.server, Err(ProtocolError::Decrypt { counter: 0 })),
        "{:?}",
        o.server.err()
    );
    only_rejection(&o, "decrypt");
}

#[test]
fn altered_ciphertext_is_detected() {
    let s = Setup::encrypted(1);
    let mut recs = records(&s, PAYLOADS, true);
    recs[1][20] ^= 0x01; // a payload byte of record 1
    let o = exchange(&s, Some((&s, 0, 2)), recs.concat());
    assert!(
        matches!(o.server, Err(ProtocolError::Decrypt { counter: 1 })),
        "{:?}",
        o.server.err()
    );
    only_rejection(&o, "decrypt");
}

#[test]
fn altered_header_is_detected() {
    let s = Setup::encrypted(1);
    // The reserved field, then the counter: both are authenticated.
    for (byte, counter) in [(2usize, 2u64), (15, 3)] {
        let mut recs = records(&s, PAYLOADS, true);
        recs[2][byte] ^= 0x01;
        let o = exchange(&s, Some((&s, 0, 2)), recs.concat());
        assert!(
            matches!(o.server, Err(ProtocolError::Decrypt { counter: c }) if c == counter),
            "{:?}",
            o.server.err()
        );
        only_rejection(&o, "decrypt");
    }
}

#[test]
fn replayed_record_is_detected() {
    let s = Setup::encrypted(1);
    let recs = records(&s, PAYLOADS, true);
    let wire = [
        recs[0].clone(),
        recs[1].clone(),
        recs[1].clone(),
        recs[2].clone(),
    ]
    .concat();
    let o = exchange(&s, Some((&s, 0, 2)), wire);
    assert!(
        matches!(
            o.server,
            Err(ProtocolError::Replay {
                expected: 2,
                got: 1
            })
        ),
        "{:?}",
        o.server.err()
    );
    only_rejection(&o, "replay");
}

#[test]
fn reordered_records_are_detected() {
    let s = Setup::encrypted(1);
    let recs = records(&s, PAYLOADS, true);
    let wire = [
        recs[0].clone(),
        recs[2].clone(),
        recs[1].clone(),
        recs[3].clone(),
    ]
    .concat();
    let o = exchange(&s, Some((&s, 0, 2)), wire);
    assert!(
        matches!(
            o.server,
            Err(ProtocolError::OutOfOrder {
                expected: 1,
                got: 2
            })
        ),
        "{:?}",
        o.server.err()
    );
    only_rejection(&o, "out_of_order");
}

#[test]
fn dropped_record_is_detected() {
    let s = Setup::encrypted(1);
    let recs = records(&s, PAYLOADS, true);
    let wire = [
        recs[0].clone(),
        recs[1].clone(),
        recs[3].clone(),
        recs[4].clone(),
    ]
    .concat();
    let o = exchange(&s, Some((&s, 0, 2)), wire);
    assert!(
        matches!(
            o.server,
            Err(ProtocolError::OutOfOrder {
                expected: 2,
                got: 3
            })
        ),
        "{:?}",
        o.server.err()
    );
    only_rejection(&o, "out_of_order");
}

#[test]
fn truncated_stream_is_detected() {
    let s = Setup::encrypted(1);
    // Without the end-of-stream record, at a record boundary...
    let o = exchange(&s, Some((&s, 0, 2)), records(&s, PAYLOADS, false).concat());
    assert!(
        matches!(o.server, Err(ProtocolError::Truncated { records: 4 })),
        "{:?}",
        o.server.err()
    );
    only_rejection(&o, "truncated");
    // ...and in the middle of a record.
    let mut wire = records(&s, PAYLOADS, true).concat();
    wire.truncate(wire.len() - 40);
    let o = exchange(&s, Some((&s, 0, 2)), wire);
    assert!(
        matches!(o.server, Err(ProtocolError::Truncated { records: 3 })),
        "{:?}",
        o.server.err()
    );
}

#[test]
fn plaintext_stream_still_detects_truncation_and_order() {
    let s = Setup::plaintext();
    let recs = records(&s, PAYLOADS, true);
    let o = exchange(
        &s,
        Some((&s, 0, 2)),
        [recs[0].clone(), recs[2].clone()].concat(),
    );
    assert!(
        matches!(
            o.server,
            Err(ProtocolError::OutOfOrder {
                expected: 1,
                got: 2
            })
        ),
        "{:?}",
        o.server.err()
    );
}

#[test]
fn a_corrupted_plaintext_record_fails_its_checksum() {
    let s = Setup::plaintext();
    // A payload bit, a header bit (the reserved field) and a checksum bit:
    // each corrupts record 1 or 2, and none passes as data.
    for (record, byte, counter) in [(1usize, 20usize, 1u64), (2, 2, 2), (1, 16 + 13, 1)] {
        let mut recs = records(&s, PAYLOADS, true);
        recs[record][byte] ^= 0x10;
        let o = exchange(&s, Some((&s, 0, 2)), recs.concat());
        assert!(
            matches!(o.server, Err(ProtocolError::Checksum { counter: c }) if c == counter),
            "record {record} byte {byte} flipped: expected a checksum error on record {counter}, got {:?}",
            o.server
        );
        only_rejection(&o, "checksum");
    }
}

#[test]
fn length_beyond_the_limit_is_refused_before_reading() {
    let s = Setup::encrypted(1);
    let mut rec = records(&s, &[b"x"], true).remove(0);
    rec[4..8].copy_from_slice(&((MAX + 16 + 1) as u32).to_be_bytes());
    // Nothing follows the forged header: the reader must not wait for 64 KiB.
    let o = exchange(&s, Some((&s, 0, 2)), rec[..16].to_vec());
    assert!(
        matches!(o.server, Err(ProtocolError::TooLong { length, limit }) if length == (MAX + 17) as u32 && limit == (MAX + 16) as u32),
        "{:?}",
        o.server.err()
    );
    only_rejection(&o, "length");
}

#[test]
fn garbage_instead_of_a_handshake_is_refused() {
    let s = Setup::encrypted(1);
    let mut garbage = b"GET / HTTP/1.1\r\nHost: ferry\r\n\r\n".to_vec();
    garbage.resize(64, b' ');
    let o = exchange(&s, None, garbage);
    assert!(
        matches!(&o.server, Err(ProtocolError::NotFerry(first)) if first == "474554202f204854"),
        "{:?}",
        o.server.err()
    );
    only_rejection(&o, "garbage_handshake");
}

#[test]
fn handshake_for_an_unknown_migration_is_refused() {
    let dest = Setup::encrypted(1);
    let mut other = Setup::encrypted(1);
    other.id = MigrationId([8; 16]);
    let o = exchange(&dest, Some((&other, 0, 2)), Vec::new());
    assert!(
        matches!(o.server, Err(ProtocolError::UnknownMigration(id)) if id == MigrationId([8; 16])),
        "{:?}",
        o.server.err()
    );
    assert!(
        matches!(
            o.client,
            Err(ProtocolError::Refused(HelloStatus::UnknownMigration))
        ),
        "{:?}",
        o.client
    );
    only_rejection(&o, "unknown_migration");
}

#[test]
fn a_stream_cannot_be_talked_down_to_plaintext() {
    // The coordinator said AES-256-GCM; someone in the middle rewrites the
    // hello to plaintext (or a confused source asks for it).
    let dest = Setup::encrypted(1);
    let o = exchange(&dest, Some((&Setup::plaintext(), 0, 2)), Vec::new());
    assert!(
        matches!(
            o.server,
            Err(ProtocolError::ModeMismatch {
                expected: Transport::Aes256Gcm,
                got: Transport::Plaintext,
                ..
            })
        ),
        "{:?}",
        o.server.err()
    );
    assert!(matches!(
        o.client,
        Err(ProtocolError::Refused(HelloStatus::ModeMismatch))
    ));
    only_rejection(&o, "mode_mismatch");
}

#[test]
fn stream_index_outside_the_spec_is_refused() {
    let s = Setup::encrypted(1);
    let o = exchange(&s, Some((&s, 5, 2)), Vec::new());
    assert!(
        matches!(
            o.server,
            Err(ProtocolError::BadStream {
                index: 5,
                count: 2,
                ..
            })
        ),
        "{:?}",
        o.server.err()
    );
    only_rejection(&o, "bad_stream");
}

#[test]
fn a_silent_peer_is_a_named_and_counted_timeout_not_os_error_11() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let metrics = ProtocolMetrics::new();
    let mut r = RecordReader::new(sock, None, 64 * 1024, Some(metrics.clone()));
    let e = r.read_record().expect_err("nothing was sent");
    let msg = e.to_string();
    assert!(
        matches!(e, ProtocolError::Stalled)
            && msg.starts_with("timed out")
            && !msg.contains("os error"),
        "expected a named timeout, got {msg:?}"
    );
    assert_eq!(metrics.rejected("timeout"), 1);
    assert_eq!(metrics.rejected("io"), 0);
}
