//! Everything every thread logs, at TRACE, recorded in memory while a test
//! asks for it: the daemons run on runtime threads a per-thread subscriber
//! would miss.

use std::{
    io::Write,
    sync::{
        Mutex, Once,
        atomic::{AtomicBool, Ordering},
    },
};

static RECORDING: AtomicBool = AtomicBool::new(false);
static BUF: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static INIT: Once = Once::new();

struct Sink;

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if RECORDING.load(Ordering::Relaxed) {
            BUF.lock().unwrap().extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts recording; returns what was logged when `f` ends.
pub fn capture<T>(f: impl FnOnce() -> T) -> (T, String) {
    INIT.call_once(|| {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| Sink)
            .with_ansi(false)
            .init();
    });
    BUF.lock().unwrap().clear();
    RECORDING.store(true, Ordering::SeqCst);
    let r = f();
    RECORDING.store(false, Ordering::SeqCst);
    let text = String::from_utf8_lossy(&BUF.lock().unwrap()).into_owned();
    (r, text)
}
