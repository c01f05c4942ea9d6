//! `cargo xtask <task>`: ferry's development tasks.
//!
//! setup   install what building and testing need (idempotent, fast when done)
//! test    setup, then the whole test suite
//! demo    setup, then `ferry demo` (arguments after `--` go to ferry)
//! install setup, build, then `ferry install` (arguments after `--` go to it)
//! bench   benchmarks: AEAD backends, protocol throughput, the paper's figures
//! fuzz    cargo-fuzz on the record parser and the handshake
//! clippy  clippy -D warnings on userspace and on the eBPF programs
//! ci      what .ci/run runs after setup: fmt --check, clippy, test

mod bench;
mod setup;
mod test_guest;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

pub type Result<T = ()> = std::result::Result<T, String>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command in the workspace root, echoing it, failing on non-zero exit.
pub fn run(cmd: &mut Command) -> Result {
    let shown = format!("{cmd:?}").replace('"', "");
    eprintln!("xtask: $ {shown}");
    let status = cmd
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed: {status}"))
    }
}

fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn timed(name: &str, f: impl FnOnce() -> Result) -> Result {
    let t = Instant::now();
    let r = f();
    eprintln!("xtask: {name} took {:.1}s", t.elapsed().as_secs_f64());
    r
}

/// Host-side packages: the eBPF crate builds only for the BPF target (through
/// crates/ferry-dataplane/build.rs), so it is left out of host builds, tests and lints.
const HOST: [&str; 3] = ["--workspace", "--exclude", "ferry-ebpf"];

fn test(args: &[String]) -> Result {
    timed("setup", setup::setup)?;
    timed("build", || {
        run(cargo()
            .arg("build")
            .args(HOST)
            .args(["--all-targets", "--release"]))
    })?;
    timed("tests", || {
        run(cargo()
            .arg("test")
            .args(HOST)
            .args(["--release", "--no-fail-fast"])
            .args(args))
    })
}

/// Coverage-guided fuzzing of the network-facing parsers (cargo-fuzz,
/// nightly, AddressSanitizer), `seconds` per target (default 60).
fn fuzz(args: &[String]) -> Result {
    let seconds: u64 = args
        .first()
        .map(|s| {
            s.parse()
                .map_err(|_| format!("fuzz: {s:?} is not a number of seconds"))
        })
        .transpose()?
        .unwrap_or(60);
    if Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        run(cargo().args(["install", "--locked", "cargo-fuzz"]))?;
    }
    run(cargo().args([
        "run",
        "--release",
        "--package",
        "ferry-protocol",
        "--example",
        "fuzz_seeds",
        "--",
        "userspace/fuzz/corpus",
    ]))?;
    for target in ["record", "handshake"] {
        run(Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "fuzz",
                "run",
                "--fuzz-dir",
                "userspace/fuzz",
                target,
            ])
            .arg(format!("userspace/fuzz/corpus/{target}"))
            .args(["--", &format!("-max_total_time={seconds}"), "-max_len=4096"]))?;
    }
    Ok(())
}

fn clippy() -> Result {
    run(cargo().arg("clippy").args(HOST).args([
        "--all-targets",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate only builds for the BPF target, with the nightly toolchain.
    run(Command::new("rustup").args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        "ferry-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((t, r)) => (t.as_str(), r),
        None => ("help", &[][..]),
    };
    let rest: Vec<String> = rest
        .iter()
        .filter(|a| a.as_str() != "--")
        .cloned()
        .collect();
    let result = match task {
        "setup" => timed("setup", setup::setup),
        "test" => test(&rest),
        "demo" => setup::setup().and_then(|()| {
            run(cargo()
                .args(["run", "--release", "--package", "ferry", "--", "demo"])
                .args(&rest))
        }),
        "install" => setup::setup().and_then(|()| {
            // The release build, then the binary installs itself (and its
            // units, configs, man pages, completions): `ferry install --help`.
            run(cargo()
                .args(["run", "--release", "--package", "ferry", "--", "install"])
                .args(&rest))
        }),
        "clippy" => clippy(),
        "bench" => setup::setup().and_then(|()| timed("bench", bench::bench)),
        "fuzz" => setup::setup().and_then(|()| timed("fuzz", || fuzz(&rest))),
        "ci" => timed("ci", || {
            run(cargo().args(["fmt", "--all", "--", "--check"]))?;
            clippy()?;
            test(&[])
        }),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n  setup   install toolchain pieces and packages (idempotent)\n  \
                 test    setup + the whole test suite\n  demo    setup + `ferry demo`\n  \
                 install setup + build + `ferry install` (to /usr/local; -- --root DIR for a tree)\n  \
                                  bench   setup + benchmarks (tables, JSON, SVG in target/bench)\n  \
                 fuzz    [SECONDS] cargo-fuzz on the record parser and the handshake\n  \
                 clippy  clippy -D warnings, userspace and eBPF\n  ci      fmt --check + clippy + test"
            );
            return if task == "help" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}
