//! AES-256-GCM seal and open of one 256 KiB record, per backend, against a
//! 256 KiB memcpy (glibc's, which is `rep movsb` at this size: slow on some
//! machines, see the README). `cargo xtask bench` prints the ratios.

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferry::protocol::Backend;

const RECORD: usize = 256 * 1024;

fn aead(c: &mut Criterion) {
    let key = [0x42u8; 32];
    let nonce = [7u8; 12];
    let aad = [1u8; 16];
    let mut g = c.benchmark_group("aead-256k");
    g.throughput(Throughput::Bytes(RECORD as u64));
    for backend in Backend::ALL {
        let cipher = backend.cipher(&key);
        let mut buf = vec![0x5au8; RECORD];
        g.bench_function(BenchmarkId::new("seal", backend.name()), |b| {
            b.iter(|| std::hint::black_box(cipher.seal(&nonce, &aad, &mut buf)))
        });
        let mut sealed = vec![0x5au8; RECORD];
        let tag = cipher.seal(&nonce, &aad, &mut sealed);
        // A fresh copy of the ciphertext per iteration, made outside the timing.
        g.bench_function(BenchmarkId::new("open", backend.name()), |b| {
            b.iter_batched_ref(
                || sealed.clone(),
                |work| cipher.open(&nonce, &aad, work, &tag).unwrap(),
                BatchSize::LargeInput,
            )
        });
    }
    let src = vec![0x5au8; RECORD];
    let mut dst = vec![0u8; RECORD];
    g.bench_function(BenchmarkId::new("memcpy", "std"), |b| {
        b.iter(|| {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
        })
    });
    g.finish();
}

criterion_group!(benches, aead);
criterion_main!(benches);
