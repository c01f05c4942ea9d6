//! AES-256-GCM behind one trait, with interchangeable backends: the
//! portable, pure-Rust `aes-gcm` crate, and two assembly ones, aws-lc-rs and
//! ring. They produce identical output (known-answer and cross-backend tests
//! below), so either side of a migration may use any of them.
//!
//! Which is fastest depends on the CPU: aws-lc has a VAES/AVX-512 path (the
//! brief's Zen 5 seals 12.6 GB/s with it) but falls back to AES-NI/AVX
//! without AVX-512, while ring has a VAES/AVX2 path. [`Backend::Fastest`], the
//! default, measures them once per process and uses the winner.

use std::fmt;

use aes_gcm::{AeadInOut, KeyInit};
use serde::{Deserialize, Serialize};

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// An AES-256-GCM implementation.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Whichever of the assembly backends seals fastest on this CPU,
    /// measured once per process.
    #[default]
    Fastest,
    /// aws-lc-rs (AWS-LC): VAES/AVX-512 where available, else AES-NI/AVX.
    AwsLc,
    /// ring: VAES/AVX2 where available, else AES-NI/AVX.
    Ring,
    /// The pure-Rust `aes-gcm` crate: portable.
    RustCrypto,
}

impl Backend {
    /// The concrete backends (Fastest is a choice among them).
    pub const ALL: [Backend; 3] = [Backend::AwsLc, Backend::Ring, Backend::RustCrypto];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Fastest => Backend::fastest().name(),
            Backend::AwsLc => "aws-lc-rs",
            Backend::Ring => "ring",
            Backend::RustCrypto => "aes-gcm",
        }
    }

    /// The concrete backend this choice stands for.
    pub fn resolve(self) -> Backend {
        match self {
            Backend::Fastest => Backend::fastest(),
            b => b,
        }
    }

    /// The assembly backend that seals 256 KiB records fastest here: each
    /// seals a few records, best of several rounds, once per process (a few
    /// milliseconds).
    pub fn fastest() -> Backend {
        static CHOICE: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();
        *CHOICE.get_or_init(|| {
            let mut buf = vec![0x5au8; 256 * 1024];
            let key = [0x11u8; KEY_LEN];
            let time = |b: Backend, buf: &mut [u8]| {
                let c = b.cipher(&key);
                (0..5)
                    .map(|i| {
                        let t = std::time::Instant::now();
                        for _ in 0..4 {
                            std::hint::black_box(c.seal(&[i; NONCE_LEN], b"calibration", buf));
                        }
                        t.elapsed()
                    })
                    .min()
                    .expect("five rounds")
            };
            let aws = time(Backend::AwsLc, &mut buf);
            let ring = time(Backend::Ring, &mut buf);
            let pick = if ring < aws {
                Backend::Ring
            } else {
                Backend::AwsLc
            };
            tracing::debug!(
                aws_lc_us = aws.as_micros() as u64,
                ring_us = ring.as_micros() as u64,
                pick = pick.name(),
                "AES-GCM backend calibration"
            );
            pick
        })
    }

    /// A cipher for `key`. The key bytes are copied into the backend's own
    /// key schedule, which every backend wipes when dropped.
    pub fn cipher(self, key: &[u8; KEY_LEN]) -> Box<dyn Aead> {
        match self {
            Backend::Fastest => Backend::fastest().cipher(key),
            Backend::Ring => {
                let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
                    .expect("AES-256-GCM accepts any 32-byte key");
                Box::new(RingGcm(std::mem::ManuallyDrop::new(Box::new(
                    ring::aead::LessSafeKey::new(unbound),
                ))))
            }
            Backend::AwsLc => {
                let unbound = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, key)
                    .expect("AES-256-GCM accepts any 32-byte key");
                Box::new(AwsLcGcm(aws_lc_rs::aead::LessSafeKey::new(unbound)))
            }
            Backend::RustCrypto => {
                Box::new(RustCryptoGcm(Box::new(aes_gcm::Aes256Gcm::new(key.into()))))
            }
        }
    }
}

#[cfg(test)]
#[test]
fn fastest_is_one_of_the_assembly_backends() {
    let f = Backend::fastest();
    assert!(matches!(f, Backend::AwsLc | Backend::Ring));
    assert_eq!(Backend::Fastest.resolve(), f);
    assert_eq!(Backend::Fastest.cipher(&[1; 32]).backend(), f);
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Authentication failed: wrong key, or ciphertext, tag, nonce or associated
/// data altered. AES-GCM cannot tell which, and neither can we.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AES-GCM authentication failed")]
pub struct OpenError;

/// AES-256-GCM with explicit nonces, in place, tag kept separate so that a
/// record's header, payload and tag sit in one contiguous buffer.
pub trait Aead: Send + Sync {
    /// Encrypts `in_out` in place and returns the tag.
    fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN];
    /// Decrypts `in_out` in place if `tag` authenticates it with `aad`.
    /// On failure `in_out` holds garbage and must be discarded.
    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), OpenError>;
    fn backend(&self) -> Backend;
}

struct AwsLcGcm(aws_lc_rs::aead::LessSafeKey);

impl Aead for AwsLcGcm {
    fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(*nonce);
        let tag = self
            .0
            .seal_in_place_separate_tag(n, aws_lc_rs::aead::Aad::from(aad), in_out)
            .expect("GCM seals up to 64 GiB; records are bounded far below");
        tag.as_ref().try_into().expect("GCM tags are 16 bytes")
    }

    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), OpenError> {
        let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(*nonce);
        self.0
            .open_in_place_separate_tag(n, aws_lc_rs::aead::Aad::from(aad), tag, in_out)
            .map(drop)
            .map_err(|_| OpenError)
    }

    fn backend(&self) -> Backend {
        Backend::AwsLc
    }
}

/// ring keeps its expanded key inline and does not wipe it: ferry keeps it
/// in its own allocation and wipes that before freeing it.
struct RingGcm(std::mem::ManuallyDrop<Box<ring::aead::LessSafeKey>>);

impl Drop for RingGcm {
    fn drop(&mut self) {
        // SAFETY: the Box is taken exactly once, here. After drop_in_place
        // (ring's key holds no resources) the bytes are wiped and the
        // allocation freed with the layout Box used.
        unsafe {
            let p = Box::into_raw(std::mem::ManuallyDrop::take(&mut self.0));
            std::ptr::drop_in_place(p);
            zeroize::zeroize_flat_type(p);
            std::alloc::dealloc(
                p.cast(),
                std::alloc::Layout::new::<ring::aead::LessSafeKey>(),
            );
        }
    }
}

impl Aead for RingGcm {
    fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let n = ring::aead::Nonce::assume_unique_for_key(*nonce);
        let tag = self
            .0
            .seal_in_place_separate_tag(n, ring::aead::Aad::from(aad), in_out)
            .expect("GCM seals up to 64 GiB; records are bounded far below");
        tag.as_ref().try_into().expect("GCM tags are 16 bytes")
    }

    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), OpenError> {
        let n = ring::aead::Nonce::assume_unique_for_key(*nonce);
        let tag = ring::aead::Tag::from(*tag);
        self.0
            .open_in_place_separate_tag(n, ring::aead::Aad::from(aad), tag, in_out, 0..)
            .map(drop)
            .map_err(|_| OpenError)
    }

    fn backend(&self) -> Backend {
        Backend::Ring
    }
}

// Boxed: the expanded key schedule and GHASH tables are large.
struct RustCryptoGcm(Box<aes_gcm::Aes256Gcm>);

impl Aead for RustCryptoGcm {
    fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .encrypt_inout_detached(nonce.into(), aad, in_out.into())
            .expect("GCM seals up to 64 GiB; records are bounded far below");
        tag.into()
    }

    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), OpenError> {
        self.0
            .decrypt_inout_detached(nonce.into(), aad, in_out.into(), tag.into())
            .map_err(|_| OpenError)
    }

    fn backend(&self) -> Backend {
        Backend::RustCrypto
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Vector {
        key: &'static str,
        iv: &'static str,
        pt: &'static str,
        aad: &'static str,
        ct: &'static str,
        tag: &'static str,
    }

    /// AES-256, 96-bit IVs (the only IV length ferry uses), 128-bit tags.
    /// First NIST CAVP gcmEncryptExtIV256.rsp (Count 0 of the groups
    /// PTlen/AADlen = 0/0, 0/128, 128/0, 408/160, 104/0), then test cases
    /// 13-16 of McGrew & Viega's GCM specification, which SP 800-38D adopted.
    const VECTORS: &[Vector] = &[
        Vector {
            key: "b52c505a37d78eda5dd34f20c22540ea1b58963cf8e5bf8ffa85f9f2492505b4",
            iv: "516c33929df5a3284ff463d7",
            pt: "",
            aad: "",
            ct: "",
            tag: "bdc1ac884d332457a1d2664f168c76f0",
        },
        Vector {
            key: "78dc4e0aaf52d935c3c01eea57428f00ca1fd475f5da86a49c8dd73d68c8e223",
            iv: "d79cf22d504cc793c3fb6c8a",
            pt: "",
            aad: "b96baa8c1c75a671bfb2d08d06be5f36",
            ct: "",
            tag: "3e5d486aa2e30b22e040b85723a06e76",
        },
        Vector {
            key: "31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22",
            iv: "0d18e06c7c725ac9e362e1ce",
            pt: "2db5168e932556f8089a0622981d017d",
            aad: "",
            ct: "fa4362189661d163fcd6a56d8bf0405a",
            tag: "d636ac1bbedd5cc3ee727dc2ab4a9489",
        },
        Vector {
            key: "24501ad384e473963d476edcfe08205237acfd49b5b8f33857f8114e863fec7f",
            iv: "9ff18563b978ec281b3f2794",
            pt: "27f348f9cdc0c5bd5e66b1ccb63ad920ff2219d14e8d631b3872265cf117ee86757accb158bd9abb3868fdc0d0b074b5f01b2c",
            aad: "adb5ec720ccf9898500028bf34afccbcaca126ef",
            ct: "eb7cb754c824e8d96f7c6d9b76c7d26fb874ffbf1d65c6f64a698d839b0b06145dae82057ad55994cf59ad7f67c0fa5e85fab8",
            tag: "bc95c532fecc594c36d1550286a7a3f0",
        },
        Vector {
            key: "82c4f12eeec3b2d3d157b0f992d292b237478d2cecc1d5f161389b97f999057a",
            iv: "7b40b20f5f397177990ef2d1",
            pt: "982a296ee1cd7086afad976945",
            aad: "",
            ct: "ec8e05a0471d6b43a59ca5335f",
            tag: "113ddeafc62373cac2f5951bb9165249",
        },
        Vector {
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            iv: "000000000000000000000000",
            pt: "",
            aad: "",
            ct: "",
            tag: "530f8afbc74536b9a963b4f1c4cb738b",
        },
        Vector {
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            iv: "000000000000000000000000",
            pt: "00000000000000000000000000000000",
            aad: "",
            ct: "cea7403d4d606b6e074ec5d3baf39d18",
            tag: "d0d1c8a799996bf0265b98b5d48ab919",
        },
        Vector {
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            iv: "cafebabefacedbaddecaf888",
            pt: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
            aad: "",
            ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
            tag: "b094dac5d93471bdec1a502270e3cc6c",
        },
        Vector {
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            iv: "cafebabefacedbaddecaf888",
            pt: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            tag: "76fc6ece0f4e1768cddf8853bb2d551b",
        },
    ];

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn known_answers_seal_and_open_on_both_backends() {
        for backend in Backend::ALL {
            for (i, v) in VECTORS.iter().enumerate() {
                let key: [u8; 32] = h(v.key).try_into().unwrap();
                let iv: [u8; 12] = h(v.iv).try_into().unwrap();
                let c = backend.cipher(&key);
                let mut buf = h(v.pt);
                let tag = c.seal(&iv, &h(v.aad), &mut buf);
                assert_eq!(hex::encode(&buf), v.ct, "{backend} vector {i} ciphertext");
                assert_eq!(hex::encode(tag), v.tag, "{backend} vector {i} tag");
                c.open(&iv, &h(v.aad), &mut buf, &tag).unwrap();
                assert_eq!(hex::encode(&buf), v.pt, "{backend} vector {i} round trip");
            }
        }
    }

    #[test]
    fn known_answers_reject_altered_inputs() {
        for backend in Backend::ALL {
            let v = &VECTORS[3]; // has plaintext and AAD
            let key: [u8; 32] = h(v.key).try_into().unwrap();
            let iv: [u8; 12] = h(v.iv).try_into().unwrap();
            let c = backend.cipher(&key);
            let tag: [u8; 16] = h(v.tag).try_into().unwrap();
            let mut ct = h(v.ct);
            ct[7] ^= 1;
            assert_eq!(
                c.open(&iv, &h(v.aad), &mut ct, &tag),
                Err(OpenError),
                "{backend} altered ct"
            );
            let mut aad = h(v.aad);
            aad[0] ^= 0x80;
            assert_eq!(
                c.open(&iv, &aad, &mut h(v.ct), &tag),
                Err(OpenError),
                "{backend} altered aad"
            );
            let mut iv2 = iv;
            iv2[11] ^= 1;
            assert_eq!(
                c.open(&iv2, &h(v.aad), &mut h(v.ct), &tag),
                Err(OpenError),
                "{backend} altered iv"
            );
            let mut key2 = key;
            key2[0] ^= 1;
            let wrong = backend.cipher(&key2);
            assert_eq!(
                wrong.open(&iv, &h(v.aad), &mut h(v.ct), &tag),
                Err(OpenError),
                "{backend} wrong key"
            );
        }
    }

    #[test]
    fn backends_interoperate() {
        // One seals, the other opens, over sizes that cross block and record boundaries.
        let key = [0x5au8; 32];
        for len in [0usize, 1, 15, 16, 17, 255, 4096, 65536 + 3, 262144] {
            for (sealer, opener) in [
                (Backend::AwsLc, Backend::RustCrypto),
                (Backend::RustCrypto, Backend::AwsLc),
            ] {
                let pt: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
                let nonce = [len as u8; 12];
                let aad = b"ferry record header";
                let mut buf = pt.clone();
                let tag = sealer.cipher(&key).seal(&nonce, aad, &mut buf);
                let mut buf2 = pt.clone();
                assert_eq!(
                    tag,
                    opener.cipher(&key).seal(&nonce, aad, &mut buf2),
                    "{len}: tags differ"
                );
                assert_eq!(buf, buf2, "{len}: ciphertexts differ");
                opener
                    .cipher(&key)
                    .open(&nonce, aad, &mut buf, &tag)
                    .unwrap();
                assert_eq!(buf, pt, "{len}: {sealer} -> {opener}");
            }
        }
    }
}
