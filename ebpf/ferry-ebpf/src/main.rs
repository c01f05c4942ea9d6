//! ferry's eBPF programs, linked into one object that userspace embeds.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod atomic;
mod classify;
mod migration;
mod packet;
mod parse;
mod tc;
mod vlan_counters;
mod watch;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; there is no unwinding in BPF.
    loop {}
}

/// GPL-compatible, so the programs may call GPL-only helpers (bpf_timer, ...).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
