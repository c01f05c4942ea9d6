//! What a synthetic guest's vCPUs do with its memory.

use serde::{Deserialize, Serialize};

use super::memory::{GuestMemory, PAGE_SIZE};

/// A workload, as configured.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum WorkloadSpec {
    /// The vCPUs do nothing (the paper's idle VM, Figure 5).
    #[default]
    Idle,
    /// A Redis-like store in guest memory: 64-byte slots; a GET reads and
    /// checks one, a SET rewrites one, dirtying its page (Table 1's mixes).
    KeyValue {
        /// GETs per second across all vCPUs.
        gets_per_second: u64,
        /// SETs per second across all vCPUs.
        sets_per_second: u64,
    },
    /// Sequential 4 KiB records written at a set rate (the 40 GbE brief's case).
    Stream {
        /// Bytes written per second across all vCPUs.
        #[schemars(example = 104857600)]
        bytes_per_second: u64,
    },
}

impl WorkloadSpec {
    /// Operations per second across all vCPUs.
    pub fn ops_per_second(&self) -> u64 {
        match self {
            WorkloadSpec::Idle => 0,
            WorkloadSpec::KeyValue {
                gets_per_second,
                sets_per_second,
            } => gets_per_second + sets_per_second,
            WorkloadSpec::Stream { bytes_per_second } => bytes_per_second / PAGE_SIZE as u64,
        }
    }
}

/// Slot layout of the key/value store: key, version, checksum, 5 value words.
pub const SLOT_WORDS: usize = 8;

/// The checksum word of (key, version): any torn or stale-mixed slot fails it.
pub fn slot_check(key: u64, version: u64) -> u64 {
    mix(key ^ version.rotate_left(32) ^ 0x6a09_e667_f3bc_c908)
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Writes slot `key` at `version`.
pub fn kv_set(mem: &GuestMemory, key: u64, version: u64) {
    let base = key as usize * SLOT_WORDS;
    mem.store(base, key + 1);
    mem.store(base + 1, version);
    for i in 0..5 {
        mem.store(
            base + 3 + i,
            mix(key
                .wrapping_mul(31)
                .wrapping_add(version)
                .wrapping_add(i as u64)),
        );
    }
    mem.store(base + 2, slot_check(key, version));
}

/// Reads slot `key`: Some(version) if present and intact, Some(0) if empty,
/// None if corrupt.
pub fn kv_get(mem: &GuestMemory, key: u64) -> Option<u64> {
    let base = key as usize * SLOT_WORDS;
    let k = mem.load(base);
    if k == 0 {
        return Some(0);
    }
    let version = mem.load(base + 1);
    if k != key + 1 || mem.load(base + 2) != slot_check(key, version) {
        return None;
    }
    for i in 0..5 {
        if mem.load(base + 3 + i)
            != mix(key
                .wrapping_mul(31)
                .wrapping_add(version)
                .wrapping_add(i as u64))
        {
            return None;
        }
    }
    Some(version)
}

/// xorshift64*: each vCPU's deterministic random stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// One vCPU's architectural state, as far as a synthetic guest has one:
/// it travels with the guest in the device state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    pub rng: u64,
    /// Stream workload: next page to write, relative to the vCPU's share.
    pub cursor: u64,
    /// Guest-time nanoseconds this vCPU has run the workload for.
    pub guest_ns: u64,
    pub gets: u64,
    pub sets: u64,
    pub writes: u64,
    pub get_errors: u64,
}

impl VcpuState {
    pub fn ops(&self) -> u64 {
        self.gets + self.sets + self.writes
    }
}

/// Runs `n` operations of `spec` for vCPU `index` of `vcpus`.
pub fn step(
    spec: &WorkloadSpec,
    mem: &GuestMemory,
    index: usize,
    vcpus: usize,
    st: &mut VcpuState,
    n: u64,
) {
    let mut rng = Rng(st.rng.max(1));
    match spec {
        WorkloadSpec::Idle => {}
        WorkloadSpec::KeyValue {
            gets_per_second,
            sets_per_second,
        } => {
            let slots = mem.len() / (SLOT_WORDS as u64 * 8);
            // Each vCPU owns the keys congruent to its index (like one Redis
            // instance per vCPU), so no two vCPUs touch one slot.
            let mine = slots / vcpus as u64;
            let total = gets_per_second + sets_per_second;
            for _ in 0..n {
                let key = rng.below(mine.max(1)) * vcpus as u64 + index as u64;
                if key >= slots {
                    continue;
                }
                if rng.below(total.max(1)) < *sets_per_second {
                    let v = match kv_get(mem, key) {
                        Some(v) => v + 1,
                        None => 1,
                    };
                    kv_set(mem, key, v);
                    st.sets += 1;
                } else {
                    if kv_get(mem, key).is_none() {
                        st.get_errors += 1;
                    }
                    st.gets += 1;
                }
            }
        }
        WorkloadSpec::Stream { .. } => {
            let pages = mem.pages() as u64;
            let share = pages / vcpus as u64;
            let first = share * index as u64;
            for _ in 0..n {
                let page = first + st.cursor % share.max(1);
                let w0 = page as usize * (PAGE_SIZE / 8);
                let seq = st.writes;
                for w in 0..PAGE_SIZE / 8 {
                    mem.store(
                        w0 + w,
                        seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ w as u64 ^ page,
                    );
                }
                st.cursor += 1;
                st.writes += 1;
            }
        }
    }
    st.rng = rng.0;
}

/// Fills the whole memory the way a guest that has run for a while has:
/// for a key/value guest every slot holds a record (a loaded database);
/// otherwise every page holds non-zero data (the paper's "completely
/// touched" idle VM, so zero-page detection does not help).
pub fn prefill(spec: &WorkloadSpec, mem: &GuestMemory, seed: u64) {
    match spec {
        WorkloadSpec::KeyValue { .. } => {
            let slots = mem.len() / (SLOT_WORDS as u64 * 8);
            for key in 0..slots {
                kv_set(mem, key, 1);
            }
        }
        _ => {
            let mut rng = Rng(seed | 1);
            for w in 0..mem.len() as usize / 8 {
                mem.store(w, rng.next_u64() | 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_slots_detect_corruption() {
        let m = GuestMemory::new(64 * 1024).unwrap();
        assert_eq!(kv_get(&m, 5), Some(0));
        kv_set(&m, 5, 3);
        assert_eq!(kv_get(&m, 5), Some(3));
        m.store(5 * SLOT_WORDS + 4, 0);
        assert_eq!(kv_get(&m, 5), None);
    }

    #[test]
    fn sets_dirty_pages_and_gets_do_not() {
        let m = GuestMemory::new(1 << 20).unwrap();
        prefill(
            &WorkloadSpec::KeyValue {
                gets_per_second: 1,
                sets_per_second: 1,
            },
            &m,
            1,
        );
        m.start_dirty_log(false).unwrap();
        let mut st = VcpuState {
            rng: 42,
            ..Default::default()
        };
        let gets = WorkloadSpec::KeyValue {
            gets_per_second: 1,
            sets_per_second: 0,
        };
        step(&gets, &m, 0, 1, &mut st, 1000);
        let mut d = super::super::memory::DirtyBitmap::new(m.pages());
        m.collect_dirty(&mut d).unwrap();
        assert_eq!((d.count(), st.gets, st.get_errors), (0, 1000, 0));
        let sets = WorkloadSpec::KeyValue {
            gets_per_second: 0,
            sets_per_second: 1,
        };
        step(&sets, &m, 0, 1, &mut st, 50);
        m.collect_dirty(&mut d).unwrap();
        assert!(
            d.count() > 40 && d.count() <= 50,
            "50 random SETs over 256 pages dirtied {}",
            d.count()
        );
    }

    #[test]
    fn stream_writes_pages_in_sequence() {
        let m = GuestMemory::new(64 * PAGE_SIZE as u64).unwrap();
        m.start_dirty_log(true).unwrap();
        let mut st = VcpuState {
            rng: 1,
            ..Default::default()
        };
        step(
            &WorkloadSpec::Stream {
                bytes_per_second: 1,
            },
            &m,
            1,
            2,
            &mut st,
            3,
        );
        let mut d = super::super::memory::DirtyBitmap::new(64);
        m.collect_dirty(&mut d).unwrap();
        assert_eq!(d.iter().collect::<Vec<_>>(), vec![32, 33, 34]);
    }
}
