//! Builds ferry's eBPF programs (ebpf/ferry-ebpf) with the nightly toolchain
//! and bpf-linker; `dataplane::OBJECT` embeds the result.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

fn main() -> anyhow::Result<()> {
    // Without the feature (the control plane's tests) there is nothing to
    // build, and no nightly toolchain is needed.
    if std::env::var_os("CARGO_FEATURE_EBPF").is_none() {
        return Ok(());
    }
    // ferry-common is compiled into the programs too; aya-build only watches
    // the program crate itself.
    println!("cargo:rerun-if-changed=../../ebpf/ferry-common");
    let quiet = Quiet::start()?;
    let built = aya_build::build_ebpf(
        [aya_build::Package {
            name: "ferry-ebpf",
            root_dir: "../../ebpf/ferry-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    );
    quiet.finish(built.is_err())?;
    built
}

/// aya-build turns every line the nested cargo prints into a
/// `cargo:warning`, so a first build showed some 55 "Compiling ..." warnings.
/// This holds the build script's stdout in a pipe meanwhile and passes on
/// all but cargo's progress lines, which it prints only if the build fails.
struct Quiet {
    saved: OwnedFd,
    filter: std::thread::JoinHandle<Vec<String>>,
}

/// The nested cargo's own progress, as aya-build forwards it.
fn is_progress(line: &str) -> bool {
    let Some(text) = line.strip_prefix("cargo:warning=") else {
        return false;
    };
    let word = text.trim_start().split(' ').next().unwrap_or("");
    matches!(
        word,
        "Compiling"
            | "Finished"
            | "Checking"
            | "Fresh"
            | "Blocking"
            | "Updating"
            | "Locking"
            | "Adding"
            // A fresh machine's first -Zbuild-std fetches std's own deps.
            | "Downloading"
            | "Downloaded"
    )
}

impl Quiet {
    fn start() -> anyhow::Result<Self> {
        std::io::stdout().flush()?;
        let mut fds = [0; 2];
        // SAFETY: a valid array of two fds for pipe(2) to fill.
        let r = unsafe { libc::pipe(fds.as_mut_ptr()) };
        anyhow::ensure!(r == 0, "pipe(2) failed");
        // SAFETY: pipe(2) returned these two fds, owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: dup(2) of our own stdout.
        let saved = unsafe { libc::dup(1) };
        anyhow::ensure!(saved >= 0, "dup(2) of stdout failed");
        // SAFETY: the fd dup(2) just returned, owned by nobody else.
        let saved = unsafe { OwnedFd::from_raw_fd(saved) };
        // SAFETY: both fds are open; fd 1 now writes into the pipe.
        let r = unsafe { libc::dup2(write.as_raw_fd(), 1) };
        anyhow::ensure!(r == 1, "dup2(2) onto stdout failed");
        drop(write); // fd 1 is the pipe's only writer now
        let mut out = File::from(saved.try_clone()?);
        let filter = std::thread::spawn(move || {
            let mut held = Vec::new();
            for line in BufReader::new(File::from(read)).lines() {
                let Ok(line) = line else { break };
                if is_progress(&line) {
                    held.push(line);
                } else {
                    let _ = writeln!(out, "{line}");
                }
            }
            held
        });
        Ok(Self { saved, filter })
    }

    /// Gives stdout back; `failed`: print what was held too.
    fn finish(self, failed: bool) -> anyhow::Result<()> {
        std::io::stdout().flush()?;
        // SAFETY: both fds are open; fd 1 is cargo's again, and the
        // pipe loses its last writer, which ends the filter thread.
        let r = unsafe { libc::dup2(self.saved.as_raw_fd(), 1) };
        anyhow::ensure!(r == 1, "dup2(2) restoring stdout failed");
        let held = self
            .filter
            .join()
            .map_err(|_| anyhow::anyhow!("the stdout filter thread panicked"))?;
        if failed {
            for line in held {
                println!("{line}");
            }
        }
        Ok(())
    }
}
