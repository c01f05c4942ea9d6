//! Guest memory: an anonymous mapping split into 4 KiB pages, with a dirty
//! log.
//!
//! vCPU threads and the migration engine touch the same memory at the same
//! time, as in every VMM. Accesses go through relaxed atomic 64-bit words
//! (plain moves on x86-64), so those races are well defined; the dirty log
//! makes the final copy, taken while the guest is paused, consistent.
//!
//! Dirty logging uses the kernel when it can: userfaultfd write-protection
//! in asynchronous mode marks a page written on its first write, in the
//! kernel, without a round trip to userspace, and the PAGEMAP_SCAN ioctl
//! reads and re-arms the marks for a range in one call (Linux 6.7+). Where
//! that is missing, a software bitmap updated by [`GuestMemory::store`] does
//! the same job.

use ferry_core::error::report;
use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    ptr::NonNull,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

pub const PAGE_SIZE: usize = 4096;
const WORDS_PER_PAGE: usize = PAGE_SIZE / 8;

/// One bit per page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyBitmap {
    bits: Vec<u64>,
    pages: usize,
}

impl DirtyBitmap {
    pub fn new(pages: usize) -> Self {
        Self {
            bits: vec![0; pages.div_ceil(64)],
            pages,
        }
    }

    pub fn all(pages: usize) -> Self {
        let mut b = Self::new(pages);
        b.set_range(0, pages);
        b
    }

    pub fn pages(&self) -> usize {
        self.pages
    }

    pub fn set(&mut self, page: usize) {
        self.bits[page / 64] |= 1 << (page % 64);
    }

    pub fn get(&self, page: usize) -> bool {
        self.bits[page / 64] & (1 << (page % 64)) != 0
    }

    pub fn set_range(&mut self, start: usize, end: usize) {
        let end = end.min(self.pages);
        let mut p = start;
        while p < end {
            if p.is_multiple_of(64) && p + 64 <= end {
                self.bits[p / 64] = u64::MAX;
                p += 64;
            } else {
                self.set(p);
                p += 1;
            }
        }
    }

    pub fn clear(&mut self) {
        self.bits.iter_mut().for_each(|w| *w = 0);
    }

    pub fn count(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Merges `other` into self.
    pub fn or(&mut self, other: &DirtyBitmap) {
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= *b;
        }
    }

    /// The set pages in `[start, end)`, in order.
    pub fn iter_range(&self, start: usize, end: usize) -> impl Iterator<Item = usize> + '_ {
        let end = end.min(self.pages);
        (start..end).filter(move |&p| self.get(p))
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.bits.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(i * 64 + b)
            })
        })
    }
}

/// One 64-bit digest (xxh3) per page, kept as pages are sent or received,
/// so that checking a migration's memory at the stun costs 8 bytes per
/// page instead of reading all of it.
pub struct PageDigests(Vec<AtomicU64>);

impl PageDigests {
    pub fn new(pages: usize) -> Self {
        Self((0..pages).map(|_| AtomicU64::new(0)).collect())
    }

    fn of(data: &[u8], zero: bool) -> u64 {
        static ZERO: std::sync::LazyLock<u64> =
            std::sync::LazyLock::new(|| xxhash_rust::xxh3::xxh3_64(&[0u8; PAGE_SIZE]));
        if zero {
            *ZERO
        } else {
            xxhash_rust::xxh3::xxh3_64(&data[..PAGE_SIZE])
        }
    }

    /// Page `page` now holds `data` (all zeros when `zero`: `data` is then
    /// not read).
    pub fn record(&self, page: usize, data: &[u8], zero: bool) {
        self.0[page].store(Self::of(data, zero), Ordering::Relaxed);
    }

    /// A digest of every page's digest, in page order.
    pub fn summary(&self) -> u128 {
        // In blocks: one hasher update per 8-byte digest cost some 5 ms
        // of stun per million pages.
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut block = [0u8; 8 * 1024];
        for chunk in self.0.chunks(block.len() / 8) {
            for (b, d) in block.chunks_exact_mut(8).zip(chunk) {
                b.copy_from_slice(&d.load(Ordering::Relaxed).to_le_bytes());
            }
            h.update(&block[..chunk.len() * 8]);
        }
        h.digest128()
    }
}

/// Which mechanism tracks writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirtyLogKind {
    /// userfaultfd async write-protect + PAGEMAP_SCAN.
    Kernel,
    /// Writers mark a bitmap.
    Software,
}

// Linux UAPI (6.7+) not yet in the libc crate's headers for this target.
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFD_API: u64 = 0xaa;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}
#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}
#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}
const IOC_RW: u64 = 3;
const UFFDIO_API: u64 = ioc(IOC_RW, 0xaa, 0x3f, std::mem::size_of::<UffdioApi>() as u64);
const UFFDIO_REGISTER: u64 = ioc(
    IOC_RW,
    0xaa,
    0x00,
    std::mem::size_of::<UffdioRegister>() as u64,
);
const UFFDIO_WRITEPROTECT: u64 = ioc(
    IOC_RW,
    0xaa,
    0x06,
    std::mem::size_of::<UffdioWriteprotect>() as u64,
);
const PAGEMAP_SCAN: u64 = ioc(
    IOC_RW,
    b'f' as u64,
    16,
    std::mem::size_of::<PmScanArg>() as u64,
);

/// The kernel dirty log of one mapping.
struct KernelLog {
    uffd: OwnedFd,
    pagemap: File,
    regions: Vec<PageRegion>,
}

impl KernelLog {
    fn new(base: u64, len: u64) -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor.
        let uffd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
            ioctls: 0,
        };
        // SAFETY: valid pointer to a correctly sized struct.
        if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reg = UffdioRegister {
            range: UffdioRange { start: base, len },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: as above.
        if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let pagemap = File::open("/proc/self/pagemap")?;
        let log = KernelLog {
            uffd,
            pagemap,
            regions: vec![PageRegion::default(); 4096],
        };
        log.protect(base, len)?;
        Ok(log)
    }

    fn protect(&self, base: u64, len: u64) -> io::Result<()> {
        let mut wp = UffdioWriteprotect {
            range: UffdioRange { start: base, len },
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        // SAFETY: valid pointer to a correctly sized struct.
        if unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_WRITEPROTECT, &mut wp) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Adds pages written since the last scan to `out` and re-protects them.
    fn collect(&mut self, base: u64, len: u64, out: &mut DirtyBitmap) -> io::Result<()> {
        let end = base + len;
        let mut start = base;
        // Each call returns at most `regions.len()` runs; continue from walk_end.
        while start < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                start,
                end,
                walk_end: 0,
                vec: self.regions.as_mut_ptr() as u64,
                vec_len: self.regions.len() as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: PAGE_IS_WRITTEN,
                category_anyof_mask: 0,
                return_mask: PAGE_IS_WRITTEN,
            };
            // SAFETY: arg and the regions buffer are valid for the call.
            let n = unsafe { libc::ioctl(self.pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            for r in &self.regions[..n as usize] {
                let first = ((r.start - base) / PAGE_SIZE as u64) as usize;
                let last = ((r.end - base) / PAGE_SIZE as u64) as usize;
                out.set_range(first, last);
            }
            if arg.walk_end <= start {
                break;
            }
            start = arg.walk_end;
        }
        Ok(())
    }
}

enum Log {
    Off,
    Kernel(KernelLog),
    Software,
}

/// A guest's memory.
pub struct GuestMemory {
    base: NonNull<u8>,
    len: usize,
    log: Mutex<Log>,
    /// The software log; also used by [`GuestMemory::store`] when active.
    soft: Vec<AtomicU64>,
    soft_on: std::sync::atomic::AtomicBool,
}

// SAFETY: the mapping is owned by this value and only reached through
// atomic word accesses or while the guest is stopped.
unsafe impl Send for GuestMemory {}
// SAFETY: as above.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Maps `bytes` (a multiple of 4 KiB) of zeroed anonymous memory.
    pub fn new(bytes: u64) -> io::Result<Self> {
        if bytes == 0 || !bytes.is_multiple_of(PAGE_SIZE as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("guest memory {bytes} is not a positive multiple of 4 KiB"),
            ));
        }
        let len = usize::try_from(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "guest memory too large"))?;
        // SAFETY: anonymous private mapping; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // 4 KiB pages: a huge page would be dirtied (and resent) whole.
        // SAFETY: the range was just mapped.
        unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
        let pages = len / PAGE_SIZE;
        Ok(Self {
            base: NonNull::new(p.cast()).expect("mmap returned non-null"),
            len,
            log: Mutex::new(Log::Off),
            soft: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            soft_on: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn len(&self) -> u64 {
        self.len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        assert!(index < self.len / 8, "guest word {index} out of range");
        // SAFETY: in bounds, 8-byte aligned (mmap is page aligned), and the
        // mapping lives as long as self.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().cast::<u64>().add(index)) }
    }

    /// Reads 64-bit word `index` (a guest load).
    pub fn load(&self, index: usize) -> u64 {
        self.word(index).load(Ordering::Relaxed)
    }

    /// Writes 64-bit word `index` (a guest store).
    pub fn store(&self, index: usize, value: u64) {
        self.word(index).store(value, Ordering::Relaxed);
        if self.soft_on.load(Ordering::Relaxed) {
            let page = index / WORDS_PER_PAGE;
            self.soft[page / 64].fetch_or(1 << (page % 64), Ordering::Relaxed);
        }
    }

    /// Copies page `page` into `dst` and tells whether it was all zeros.
    pub fn read_page(&self, page: usize, dst: &mut [u8]) -> bool {
        assert!(page < self.pages() && dst.len() >= PAGE_SIZE);
        let first = page * WORDS_PER_PAGE;
        let mut acc = 0u64;
        for (i, chunk) in dst[..PAGE_SIZE].chunks_exact_mut(8).enumerate() {
            let w = self.word(first + i).load(Ordering::Relaxed);
            acc |= w;
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        acc == 0
    }

    /// Whether page `page` is all zeros.
    pub fn page_is_zero(&self, page: usize) -> bool {
        let first = page * WORDS_PER_PAGE;
        (0..WORDS_PER_PAGE).all(|i| self.word(first + i).load(Ordering::Relaxed) == 0)
    }

    /// Overwrites page `page` with `src` (destination side, guest not running).
    pub fn write_page(&self, page: usize, src: &[u8]) {
        assert!(page < self.pages() && src.len() == PAGE_SIZE);
        let first = page * WORDS_PER_PAGE;
        for (i, chunk) in src.chunks_exact(8).enumerate() {
            self.word(first + i).store(
                u64::from_ne_bytes(chunk.try_into().expect("8 bytes")),
                Ordering::Relaxed,
            );
        }
    }

    /// Makes page `page` all zeros.
    pub fn zero_page(&self, page: usize) {
        let first = page * WORDS_PER_PAGE;
        for i in 0..WORDS_PER_PAGE {
            self.word(first + i).store(0, Ordering::Relaxed);
        }
    }

    /// Starts tracking writes (everything is clean from now on). Uses the
    /// kernel log unless `prefer_software` or the kernel lacks it.
    pub fn start_dirty_log(&self, prefer_software: bool) -> io::Result<DirtyLogKind> {
        let mut log = self.log.lock().expect("dirty log lock");
        if !prefer_software {
            match KernelLog::new(self.base.as_ptr() as u64, self.len as u64) {
                Ok(k) => {
                    *log = Log::Kernel(k);
                    return Ok(DirtyLogKind::Kernel);
                }
                Err(e) => {
                    tracing::warn!(error = %report(&e), "kernel dirty log unavailable (userfaultfd write-protect async, Linux 6.7+); using the software log")
                }
            }
        }
        for w in &self.soft {
            w.store(0, Ordering::Relaxed);
        }
        self.soft_on.store(true, Ordering::SeqCst);
        *log = Log::Software;
        Ok(DirtyLogKind::Software)
    }

    /// Adds the pages written since the last call to `out` and starts a new round.
    pub fn collect_dirty(&self, out: &mut DirtyBitmap) -> io::Result<()> {
        let mut log = self.log.lock().expect("dirty log lock");
        match &mut *log {
            Log::Off => Err(io::Error::other("dirty log is not running")),
            Log::Kernel(k) => k.collect(self.base.as_ptr() as u64, self.len as u64, out),
            Log::Software => {
                for (i, w) in self.soft.iter().enumerate() {
                    let bits = w.swap(0, Ordering::Relaxed);
                    if bits != 0 {
                        for b in 0..64 {
                            if bits & (1 << b) != 0 && i * 64 + b < out.pages() {
                                out.set(i * 64 + b);
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Stops tracking writes.
    pub fn stop_dirty_log(&self) {
        self.soft_on.store(false, Ordering::SeqCst);
        // Dropping the userfaultfd unregisters the range and lifts the protection.
        *self.log.lock().expect("dirty log lock") = Log::Off;
    }

    /// The pages whose contents are not what `digests` recorded, in order.
    /// Reads through atomic loads; meaningful while nothing writes.
    pub fn pages_not_matching(&self, digests: &PageDigests) -> Vec<usize> {
        let mut buf = [0u8; PAGE_SIZE];
        (0..self.pages())
            .filter(|&p| {
                let zero = self.read_page(p, &mut buf);
                PageDigests::of(&buf, zero) != digests.0[p].load(Ordering::Relaxed)
            })
            .collect()
    }

    /// A digest of every page: xxh3-128 of each 16 MiB chunk, then of the
    /// chunk digests in order, so the result does not depend on `threads`.
    /// Reads through atomic loads: safe while the guest runs (the result is
    /// then of no particular instant).
    pub fn digest(&self, threads: usize) -> u128 {
        self.digest_chunks(threads, |chunk| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            let mut buf = [0u8; PAGE_SIZE];
            for p in chunk {
                self.read_page(p, &mut buf);
                h.update(&buf);
            }
            h.digest128()
        })
    }

    /// The same digest as [`Self::digest`], hashing the mapping in place:
    /// about twice as fast, which matters because verification happens while
    /// the guest is stunned.
    ///
    /// # Safety
    /// No thread may write this memory during the call: the guest is paused,
    /// or has not started and no stream writes pages any more.
    pub unsafe fn digest_quiescent(&self, threads: usize) -> u128 {
        // SAFETY: the caller guarantees no concurrent writes; the mapping is
        // valid for len bytes while self lives.
        let bytes = unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) };
        self.digest_chunks(threads, |chunk| {
            xxhash_rust::xxh3::xxh3_128(&bytes[chunk.start * PAGE_SIZE..chunk.end * PAGE_SIZE])
        })
    }

    fn digest_chunks(
        &self,
        threads: usize,
        hash: impl Fn(std::ops::Range<usize>) -> u128 + Sync,
    ) -> u128 {
        const CHUNK: usize = 4096; // pages
        let pages = self.pages();
        let chunks = pages.div_ceil(CHUNK);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut digests = vec![0u128; chunks];
        let parts: Vec<Vec<(usize, u128)>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads.clamp(1, 16))
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let c = next.fetch_add(1, Ordering::Relaxed);
                            if c >= chunks {
                                return out;
                            }
                            out.push((c, hash(c * CHUNK..((c + 1) * CHUNK).min(pages))));
                        }
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("digest thread"))
                .collect()
        });
        for (c, d) in parts.into_iter().flatten() {
            digests[c] = d;
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for d in digests {
            h.update(&d.to_le_bytes());
        }
        h.digest128()
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        *self.log.get_mut().expect("dirty log lock") = Log::Off;
        // SAFETY: unmapping the mapping created in new(); no references remain.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_ranges_and_iteration() {
        let mut b = DirtyBitmap::new(200);
        b.set_range(3, 130);
        b.set(199);
        assert_eq!(b.count(), 128);
        assert_eq!(
            b.iter().collect::<Vec<_>>(),
            (3..130).chain([199]).collect::<Vec<_>>()
        );
        assert_eq!(b.iter_range(120, 200).count(), 11);
        assert_eq!(DirtyBitmap::all(70).count(), 70);
    }

    fn dirty_log_tracks_exactly(prefer_software: bool) {
        let m = GuestMemory::new(64 * PAGE_SIZE as u64).unwrap();
        for p in 0..64 {
            m.store(p * WORDS_PER_PAGE, 1);
        }
        let kind = m.start_dirty_log(prefer_software).unwrap();
        if !prefer_software {
            assert_eq!(
                kind,
                DirtyLogKind::Kernel,
                "this kernel has userfaultfd async write-protect"
            );
        }
        let mut d = DirtyBitmap::new(64);
        m.collect_dirty(&mut d).unwrap();
        assert_eq!(d.count(), 0, "{kind:?}: nothing written since start");
        for p in [0usize, 5, 6, 63] {
            m.store(p * WORDS_PER_PAGE + 3, 7);
        }
        // Reads never dirty a page.
        assert_eq!(m.load(10 * WORDS_PER_PAGE), 1);
        m.collect_dirty(&mut d).unwrap();
        assert_eq!(d.iter().collect::<Vec<_>>(), vec![0, 5, 6, 63], "{kind:?}");
        let mut again = DirtyBitmap::new(64);
        m.collect_dirty(&mut again).unwrap();
        assert_eq!(again.count(), 0, "{kind:?}: collecting re-arms the log");
        m.store(5 * WORDS_PER_PAGE, 9);
        m.collect_dirty(&mut again).unwrap();
        assert_eq!(again.iter().collect::<Vec<_>>(), vec![5], "{kind:?}");
        m.stop_dirty_log();
        m.store(7 * WORDS_PER_PAGE, 1);
        assert!(m.collect_dirty(&mut again).is_err());
    }

    #[test]
    fn kernel_dirty_log_tracks_exactly() {
        dirty_log_tracks_exactly(false);
    }

    #[test]
    fn software_dirty_log_tracks_exactly() {
        dirty_log_tracks_exactly(true);
    }

    #[test]
    fn pages_copy_zero_check_and_digest() {
        let a = GuestMemory::new(16 * PAGE_SIZE as u64).unwrap();
        let b = GuestMemory::new(16 * PAGE_SIZE as u64).unwrap();
        assert!(a.page_is_zero(3));
        a.store(3 * WORDS_PER_PAGE + 100, 0xdead_beef);
        assert!(!a.page_is_zero(3));
        let mut buf = [0u8; PAGE_SIZE];
        assert!(!a.read_page(3, &mut buf));
        assert!(a.read_page(4, &mut buf));
        assert_ne!(a.digest(2), b.digest(3));
        a.read_page(3, &mut buf);
        b.write_page(3, &buf);
        assert_eq!(
            a.digest(2),
            b.digest(3),
            "digest independent of thread count"
        );
        b.zero_page(3);
        assert!(b.page_is_zero(3));
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(GuestMemory::new(0).is_err());
        assert!(GuestMemory::new(4097).is_err());
    }
}
