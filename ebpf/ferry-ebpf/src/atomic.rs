//! BPF v3 atomic instructions as inline assembly: rustc's BPF target has
//! no atomic read-modify-write in `core`, and bpf-linker generates for the
//! "generic" CPU, where LLVM refuses a used XADD result. The kernel (5.12+)
//! accepts these on map values.

/// *p += v, returning the old value.
#[inline(always)]
pub unsafe fn fetch_add(p: *mut u64, v: u64) -> u64 {
    let mut v = v;
    // SAFETY: the caller passes a valid, 8-byte aligned map value pointer.
    unsafe {
        core::arch::asm!("{v} = atomic_fetch_add((u64 *)({p} + 0), {v})", p = in(reg) p, v = inout(reg) v)
    };
    v
}

/// If *p == old then *p = new; returns the value *p had.
#[inline(always)]
pub unsafe fn cmpxchg(p: *mut u64, old: u64, new: u64) -> u64 {
    let mut r0 = old;
    // SAFETY: as above; cmpxchg compares with and returns through r0.
    unsafe {
        core::arch::asm!("r0 = cmpxchg_64({p} + 0, r0, {n})", p = in(reg) p, n = in(reg) new, inout("r0") r0)
    };
    r0
}
