//! Migration keys and the key schedule that turns the coordinator's
//! (key, nonce) into independent keys per stream and direction.
//!
//! From the spec's 256-bit key K and 64-bit nonce N, with migration id I:
//!
//! ```text
//! PRK            = HKDF-Extract(salt = "ferry/1" || I || N, ikm = K)
//! record key     = HKDF-Expand(PRK, "ferry/1 record key" || stream || dir, 32)
//! record IV      = HKDF-Expand(PRK, "ferry/1 record iv"  || stream || dir, 12)
//! hello key, IV  = the same with "ferry/1 hello key" / "ferry/1 hello iv" and the role
//! record nonce   = record IV XOR (0x00000000 || counter as u64 big-endian)
//! ```
//!
//! Every (stream, direction) and every hello has its own key; within one,
//! the counter never repeats (a writer stops long before 2^64), so no
//! (key, nonce) pair is ever used twice.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::{
    aead::{KEY_LEN, NONCE_LEN},
    spec::MigrationId,
};

/// A migration's 256-bit key. Never printed (Debug is redacted), wiped on
/// drop. It lives in one heap block that never moves: moving the key (into
/// a spec, a request, a future) copies a pointer, not the key, so no stale
/// copy is left behind on a stack or in a moved-from value.
#[derive(Clone, PartialEq, Eq)]
pub struct MigrationKey(Box<[u8; KEY_LEN]>);

impl Drop for MigrationKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl MigrationKey {
    /// A fresh key from the operating system's CSPRNG, written in place.
    pub fn generate() -> Self {
        let mut k = Box::new([0u8; KEY_LEN]);
        getrandom::fill(&mut k[..]).expect("the OS random source failed");
        MigrationKey(k)
    }

    /// A key from `bytes`, which are wiped.
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
        let mut k = Box::new([0u8; KEY_LEN]);
        k.copy_from_slice(&bytes);
        bytes.zeroize();
        MigrationKey(k)
    }

    /// A key from 64 hex digits, decoded in place (no copy on the stack).
    pub fn from_hex(hex_digits: &str) -> Option<Self> {
        let mut k = MigrationKey(Box::new([0u8; KEY_LEN]));
        hex::decode_to_slice(hex_digits, &mut k.0[..]).ok()?;
        Some(k)
    }

    /// The raw key, for the key schedule and for the spec's wire encoding only.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for MigrationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MigrationKey(<redacted>)")
    }
}

/// Which way a stream's records flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    SourceToDestination = 1,
    DestinationToSource = 2,
}

/// Who speaks a hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client = 1,
    Server = 2,
}

/// Key material for one direction of one stream, or for one hello.
pub struct Keys {
    pub key: Zeroizing<[u8; KEY_LEN]>,
    pub iv: [u8; NONCE_LEN],
}

/// The expanded secret of one migration.
pub struct KeySchedule {
    hkdf: Hkdf<Sha256>,
}

impl KeySchedule {
    pub fn new(key: &MigrationKey, nonce: u64, id: &MigrationId) -> Self {
        let mut salt = Vec::with_capacity(7 + 16 + 8);
        salt.extend_from_slice(b"ferry/1");
        salt.extend_from_slice(&id.0);
        salt.extend_from_slice(&nonce.to_be_bytes());
        Self {
            hkdf: Hkdf::<Sha256>::new(Some(&salt), key.expose()),
        }
    }

    fn expand(&self, label: &[u8], stream: u16, tag: u8, out: &mut [u8]) {
        let mut info = Vec::with_capacity(label.len() + 3);
        info.extend_from_slice(label);
        info.extend_from_slice(&stream.to_be_bytes());
        info.push(tag);
        self.hkdf
            .expand(&info, out)
            .expect("HKDF-SHA256 output length is valid");
    }

    fn keys(&self, key_label: &[u8], iv_label: &[u8], stream: u16, tag: u8) -> Keys {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        self.expand(key_label, stream, tag, key.as_mut());
        let mut iv = [0u8; NONCE_LEN];
        self.expand(iv_label, stream, tag, &mut iv);
        Keys { key, iv }
    }

    /// Keys for the records of `stream` flowing in direction `dir`.
    pub fn record(&self, stream: u16, dir: Direction) -> Keys {
        self.keys(
            b"ferry/1 record key",
            b"ferry/1 record iv",
            stream,
            dir as u8,
        )
    }

    /// Keys for the hello that `role` sends on `stream`.
    pub fn hello(&self, stream: u16, role: Role) -> Keys {
        self.keys(
            b"ferry/1 hello key",
            b"ferry/1 hello iv",
            stream,
            role as u8,
        )
    }
}

/// The nonce of record number `counter` under `iv`.
pub fn record_nonce(iv: &[u8; NONCE_LEN], counter: u64) -> [u8; NONCE_LEN] {
    let mut n = *iv;
    for (b, c) in n[4..].iter_mut().zip(counter.to_be_bytes()) {
        *b ^= c;
    }
    n
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_stream_direction_and_hello_gets_distinct_keys() {
        let ks = KeySchedule::new(
            &MigrationKey::from_bytes([7; 32]),
            42,
            &MigrationId([1; 16]),
        );
        let mut keys = HashSet::new();
        let mut ivs = HashSet::new();
        for s in 0..8u16 {
            for k in [
                ks.record(s, Direction::SourceToDestination),
                ks.record(s, Direction::DestinationToSource),
                ks.hello(s, Role::Client),
                ks.hello(s, Role::Server),
            ] {
                assert!(keys.insert(*k.key), "duplicate key");
                assert!(ivs.insert(k.iv), "duplicate iv");
            }
        }
        assert_eq!(keys.len(), 32);
    }

    #[test]
    fn nonce_and_id_change_everything() {
        let key = MigrationKey::from_bytes([7; 32]);
        let a = ks_key(&KeySchedule::new(&key, 1, &MigrationId([1; 16])));
        let b = ks_key(&KeySchedule::new(&key, 2, &MigrationId([1; 16])));
        let c = ks_key(&KeySchedule::new(&key, 1, &MigrationId([2; 16])));
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    fn ks_key(ks: &KeySchedule) -> [u8; 32] {
        *ks.record(0, Direction::SourceToDestination).key
    }

    #[test]
    fn counter_is_xored_into_the_low_eight_bytes() {
        let iv = [0xffu8; 12];
        let n = record_nonce(&iv, 1);
        assert_eq!(
            n,
            [
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe
            ]
        );
        assert_ne!(record_nonce(&iv, 1 << 40), record_nonce(&iv, 1));
    }

    #[test]
    fn key_debug_is_redacted() {
        let k = MigrationKey::from_bytes([0xab; 32]);
        let s = format!("{k:?}");
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
    }
}
