//! Shared test helpers.

use std::time::{Duration, Instant};

/// True when the tests can create namespaces and load eBPF programs. Prints
/// why a test is skipped otherwise; on ferry's machines and CI (root) it runs.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        println!(
            "SKIP {test}: needs root (CAP_SYS_ADMIN for namespaces, CAP_BPF/CAP_NET_ADMIN for eBPF)"
        );
    }
    root
}

/// Polls `f` until it returns Some, at most `timeout`, every 10 ms.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Held by tests that load the machine (iperf3 floods) or measure time
/// (delay lines), so that neither runs beside the other: the test harness
/// runs tests on parallel threads.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
