//! Loopback throughput of the record layer with 1, 2 and 4 streams,
//! plaintext and encrypted with each backend, and the CPU cost of
//! encryption converted to cores per 10 Gb/s (the paper's unit).
//!
//! Each stream copies a 256 KiB batch of "pages" into its record (as the
//! engine does), seals and writes it; the receiver reads, opens, and copies
//! the plaintext out (as the destination writes guest memory). Prints a
//! table and writes target/bench/protocol.json.

use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use ferry::protocol::{
    Backend, KeySchedule, MigrationId, MigrationKey, Side,
    record::{Record, RecordReader, RecordWriter},
    stream_crypto,
};
use serde::Serialize;

const RECORD: usize = 256 * 1024;
const GB: f64 = 1e9;
/// 10 Gb/s in bytes per second.
const TEN_GBPS: f64 = 1.25e9;

#[derive(Serialize, Clone)]
struct Row {
    streams: usize,
    transport: String,
    /// Link rate the senders were paced to (None: as fast as loopback goes).
    paced_gbit_per_s: Option<f64>,
    bytes: u64,
    seconds: f64,
    gbit_per_s: f64,
    /// CPU seconds spent sealing / opening, per GB of payload.
    seal_cpu_s_per_gb: f64,
    open_cpu_s_per_gb: f64,
    /// Cores the encryption of 10 Gb/s costs the source and the destination.
    source_cores_per_10gbps: f64,
    destination_cores_per_10gbps: f64,
    /// Whole-process CPU seconds per second: both ends, copies, TCP.
    process_cores: f64,
}

fn process_cpu() -> f64 {
    // SAFETY: zeroed rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Copies word by word, as the engine copies guest pages (and unlike
/// glibc's memcpy, whose `rep movsb` is slow on some machines).
fn copy_words(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
        d.copy_from_slice(&u64::from_ne_bytes(s.try_into().unwrap()).to_ne_bytes());
    }
}

fn send(
    i: u16,
    sock: TcpStream,
    ks: Option<&KeySchedule>,
    b: Backend,
    records: u64,
    pace: Option<f64>,
) -> Duration {
    let (tx, _) = stream_crypto(ks, b, i, Side::Source);
    let mut w = RecordWriter::new(sock, tx, RECORD);
    let pages = vec![0x5au8; RECORD];
    let start = Instant::now();
    for r in 0..records {
        copy_words(w.payload_mut(), &pages);
        w.send(RECORD).unwrap();
        if let Some(bytes_per_s) = pace {
            let due = Duration::from_secs_f64((r + 1) as f64 * RECORD as f64 / bytes_per_s);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    w.finish().unwrap();
    w.seal_cpu
}

fn receive(i: u16, sock: TcpStream, ks: Option<&KeySchedule>, b: Backend) -> (Duration, u64) {
    let (_, rx) = stream_crypto(ks, b, i, Side::Destination);
    let mut r = RecordReader::new(sock, rx, RECORD, None);
    let mut memory = vec![0u8; RECORD];
    let mut n = 0u64;
    loop {
        match r.read_record().unwrap() {
            Record::Data(d) => {
                copy_words(&mut memory[..d.len()], d);
                n += d.len() as u64;
            }
            Record::End => return (r.open_cpu, n),
        }
    }
}

fn run(streams: usize, backend: Option<Backend>, total: u64, pace_gbps: Option<f64>) -> Row {
    let pace = pace_gbps.map(|g| g * 1e9 / 8.0 / streams as f64);
    let id = MigrationId([3; 16]);
    let ks = backend.map(|_| KeySchedule::new(&MigrationKey::from_bytes([9; 32]), 1, &id));
    let b = backend.unwrap_or_default();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let records = total / streams as u64 / RECORD as u64;
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let (seal, open, bytes) = std::thread::scope(|s| {
        let ks = ks.as_ref();
        let mut tx = Vec::new();
        let mut rx = Vec::new();
        for i in 0..streams as u16 {
            let client = TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().unwrap();
            tx.push(s.spawn(move || send(i, client, ks, b, records, pace)));
            rx.push(s.spawn(move || receive(i, server, ks, b)));
        }
        let seal: Duration = tx.into_iter().map(|h| h.join().unwrap()).sum();
        let (open, bytes) = rx
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((Duration::ZERO, 0), |(o, n), (a, m)| (o + a, n + m));
        (seal, open, bytes)
    });
    let secs = t0.elapsed().as_secs_f64();
    let cpu = process_cpu() - cpu0;
    let gb = bytes as f64 / GB;
    let seal_gb = seal.as_secs_f64() / gb;
    let open_gb = open.as_secs_f64() / gb;
    Row {
        streams,
        transport: backend
            .map(|b| format!("aes-256-gcm ({})", b.name()))
            .unwrap_or_else(|| "plaintext".into()),
        paced_gbit_per_s: pace_gbps,
        bytes,
        seconds: secs,
        gbit_per_s: bytes as f64 * 8.0 / secs / GB,
        seal_cpu_s_per_gb: seal_gb,
        open_cpu_s_per_gb: open_gb,
        source_cores_per_10gbps: seal_gb * TEN_GBPS / GB,
        destination_cores_per_10gbps: open_gb * TEN_GBPS / GB,
        process_cores: cpu / secs,
    }
}

/// The median run of three (by throughput): one run on a 2-core machine is
/// at the mercy of the scheduler.
fn median(streams: usize, backend: Option<Backend>, total: u64, pace: Option<f64>) -> Row {
    let mut runs: Vec<Row> = (0..3).map(|_| run(streams, backend, total, pace)).collect();
    runs.sort_by(|a, b| a.gbit_per_s.total_cmp(&b.gbit_per_s));
    runs.swap_remove(1)
}

fn print(r: &Row) {
    println!(
        "{:>7}  {:<24} {:>6} {:>9.2} {:>11.2} {:>12.4} {:>12.4} {:>13.3} {:>13.3} {:>9.2}",
        r.streams,
        r.transport,
        r.paced_gbit_per_s
            .map(|g| format!("{g}"))
            .unwrap_or_else(|| "-".into()),
        r.bytes as f64 / (1u64 << 30) as f64,
        r.gbit_per_s,
        r.seal_cpu_s_per_gb,
        r.open_cpu_s_per_gb,
        r.source_cores_per_10gbps,
        r.destination_cores_per_10gbps,
        r.process_cores
    );
}

const TRANSPORTS: [Option<Backend>; 4] = [
    None,
    Some(Backend::AwsLc),
    Some(Backend::Ring),
    Some(Backend::RustCrypto),
];

fn main() {
    // `cargo bench` passes --bench; a quick smoke run passes --quick.
    let quick = std::env::args().any(|a| a == "--quick");
    let size: u64 = if quick { 64 << 20 } else { 2 << 30 };
    let machine = ferry::lab::machine::Machine::probe();
    println!("{machine}");
    let mut rows = Vec::new();
    println!(
        "{:>7}  {:<24} {:>6} {:>9} {:>11} {:>12} {:>12} {:>13} {:>13} {:>9}",
        "streams",
        "transport",
        "paced",
        "GiB",
        "Gbit/s",
        "seal s/GB",
        "open s/GB",
        "src cores*",
        "dst cores*",
        "cpu"
    );
    for streams in [1usize, 2, 4] {
        for backend in TRANSPORTS {
            // The portable backend is much slower: less data.
            let total = if backend == Some(Backend::RustCrypto) {
                size / 4
            } else {
                size
            };
            let r = median(streams, backend, total, None);
            print(&r);
            rows.push(r);
        }
    }
    // The paper's scenario: a 10 Gb/s link, where the link is the limit.
    for backend in TRANSPORTS {
        let r = median(2, backend, size, Some(10.0));
        print(&r);
        rows.push(r);
    }
    println!(
        "* cores per 10 Gb/s spent on AES-256-GCM: the paper's figure is < 1 (source) and < 0.5 (destination)"
    );
    println!(
        "  cpu: process CPU seconds per second; both ends run on this 2-core machine, so unpaced"
    );
    println!(
        "  encrypted loopback is CPU-bound: it competes with TCP copies for the same two cores"
    );
    println!();
    let find = |streams: usize, b: &str, paced: bool| {
        rows.iter()
            .find(|r| {
                r.streams == streams
                    && r.transport.contains(b)
                    && r.paced_gbit_per_s.is_some() == paced
            })
            .unwrap()
    };
    for (streams, paced) in [(1, false), (2, false), (4, false), (2, true)] {
        let plain = find(streams, "plaintext", paced);
        for b in ["aws-lc-rs", "ring", "aes-gcm)"] {
            let enc = find(streams, b, paced);
            println!(
                "{streams} stream(s){}: encrypted with {:<10} reaches {:>3.0}% of plaintext throughput ({:.2} vs {:.2} Gbit/s)",
                if paced { ", 10 Gb/s link" } else { "" },
                b.trim_end_matches(')'),
                enc.gbit_per_s / plain.gbit_per_s * 100.0,
                enc.gbit_per_s,
                plain.gbit_per_s
            );
        }
    }
    let avg = |b: &str| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r.transport.contains(b) && r.paced_gbit_per_s.is_none())
            .map(|r| r.seal_cpu_s_per_gb)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (aws, ring, rc) = (avg("aws-lc-rs"), avg("ring"), avg("aes-gcm)"));
    println!(
        "sealing CPU per GB: aes-gcm / aws-lc-rs = {:.1}x, aes-gcm / ring = {:.1}x, aws-lc-rs / ring = {:.1}x",
        rc / aws,
        rc / ring,
        aws / ring
    );
    println!(
        "Backend::Fastest picks {} on this machine",
        Backend::fastest().name()
    );
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("protocol.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "machine": machine, "rows": rows }))
            .unwrap(),
    )
    .unwrap();
    println!("wrote {}", out.join("protocol.json").display());
}
