//! `cargo xtask setup`: installs what ferry needs on a fresh Debian machine,
//! idempotently. When everything is present it only runs a few queries.
//!
//! - the nightly toolchain's rust-src (eBPF programs are built with build-std)
//! - bpf-linker, built against the same LLVM major version as the nightly's
//!   rustc (Debian's llvm-N-dev), since it links rustc's bitcode
//! - Debian packages the tests use as real peers; QEMU from the backports
//!   suite, whose source entry is derived from the machine's own Debian entry

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Result, run};

/// bpf-linker release known to work with the aya family ferry pins.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages from the distribution's own suites.
const PACKAGES: &[&str] = &[
    "libzstd-dev",
    "zlib1g-dev",
    "iperf3",
    "arping",
    "tcpdump",
    "bpftool",
    "prometheus",
    "busybox-static",
    "cpio",
    "iproute2",
    // systemd-analyze checks the units `ferry install` writes; objcopy
    // (binutils) splits the installed binary's debug info.
    "systemd",
    "binutils",
    // The coordinators' shared store: the tests start their own etcd
    // members on loopback; etcd-client's crate builds its gRPC code with protoc,
    // which needs the well-known types (google/protobuf/*.proto, a
    // recommendation of protobuf-compiler's that --no-install-recommends skips).
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
];

fn output(cmd: &mut Command) -> Option<String> {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn installed_version(pkg: &str) -> Option<String> {
    let out = output(Command::new("dpkg-query").args(["-W", "-f=${Status}\t${Version}", pkg]))?;
    let (status, version) = out.split_once('\t')?;
    (status == "install ok installed").then(|| version.to_string())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}

/// LLVM major version of the nightly rustc ("LLVM version: 22.1.4" -> 22).
fn nightly_llvm_major() -> Result<u32> {
    let vv = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))
        .ok_or("cannot run the nightly rustc (rustup run nightly rustc -vV)")?;
    vv.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .ok_or_else(|| format!("no LLVM version in `rustc +nightly -vV`:\n{vv}"))
}

fn ensure_nightly() -> Result {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let comps = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !comps.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// The codename of this Debian release (bookworm, ...).
fn codename() -> Result<String> {
    let osr = fs::read_to_string("/etc/os-release").map_err(|e| format!("/etc/os-release: {e}"))?;
    osr.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| "cannot tell the Debian codename from /etc/os-release".into())
}

/// URIs and keyring of the machine's own Debian entry for `codename`, from a
/// deb822 .sources file or a one-line sources.list.
fn debian_source(codename: &str) -> Result<(String, Option<String>)> {
    let mut files: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sources"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    for f in &files {
        let text = fs::read_to_string(f).unwrap_or_default();
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            let suites = field("Suites:").unwrap_or_default();
            if suites.split_whitespace().any(|s| s == codename)
                && let Some(uris) = field("URIs:")
            {
                return Ok((uris, field("Signed-By:")));
            }
        }
    }
    let list = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for l in list.lines() {
        let words: Vec<&str> = l
            .split_whitespace()
            .filter(|w| !w.starts_with('['))
            .collect();
        if words.len() >= 3 && words[0] == "deb" && words[2] == codename {
            return Ok((words[1].to_string(), None));
        }
    }
    Err(format!(
        "no Debian source entry for {codename} in /etc/apt: cannot add {codename}-backports"
    ))
}

const BACKPORTS_FILE: &str = "/etc/apt/sources.list.d/ferry-backports.sources";

/// Adds `<codename>-backports` with the same mirror as the existing entry.
/// Returns true when the file was written (apt-get update needed).
fn ensure_backports(codename: &str) -> Result<bool> {
    let suite = format!("{codename}-backports");
    let existing = fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| {
            d.flatten().any(|e| {
                fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .contains(&suite)
            })
        })
        .unwrap_or(false)
        || fs::read_to_string("/etc/apt/sources.list")
            .unwrap_or_default()
            .contains(&suite);
    if existing {
        return Ok(false);
    }
    let (uris, signed_by) = debian_source(codename)?;
    let mut text = format!("Types: deb\nURIs: {uris}\nSuites: {suite}\nComponents: main\n");
    if let Some(k) = signed_by {
        text.push_str(&format!("Signed-By: {k}\n"));
    }
    fs::write(BACKPORTS_FILE, text).map_err(|e| format!("{BACKPORTS_FILE}: {e}"))?;
    eprintln!("xtask: added {suite} ({uris}) as {BACKPORTS_FILE}");
    Ok(true)
}

fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

fn ensure_packages(llvm: u32) -> Result {
    let llvm_dev = format!("llvm-{llvm}-dev");
    let mut missing: Vec<String> = PACKAGES
        .iter()
        .map(|p| p.to_string())
        .chain([llvm_dev])
        .filter(|p| installed_version(p).is_none())
        .collect();
    // QEMU 10 from backports: bookworm's 7.2 would replace qemu-utils 10 and
    // its multifd crashed guests (see the design brief).
    let qemu_ok = installed_version("qemu-system-x86").is_some_and(|v| {
        let v = v.split_once(':').map_or(v.as_str(), |(_, r)| r);
        v.split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok())
            .is_some_and(|m| m >= 10)
    });
    if missing.is_empty() && qemu_ok {
        return Ok(());
    }
    if !is_root() {
        return Err(format!(
            "missing Debian packages {missing:?}{}; run `cargo xtask setup` as root",
            if qemu_ok {
                ""
            } else {
                " and qemu-system-x86 from backports"
            }
        ));
    }
    let code = codename()?;
    ensure_backports(&code)?;
    run(apt_get().args(["update", "-q"]))?;
    if !missing.is_empty() {
        run(apt_get()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing))?;
    }
    if !qemu_ok {
        let suite = format!("{code}-backports");
        run(apt_get().args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "-t",
            &suite,
            "qemu-system-x86",
        ]))?;
    }
    missing.clear();
    Ok(())
}

/// bpf-linker for the nightly's LLVM. A stamp next to the binary records the
/// version and LLVM it was built with, so a bpf-linker built for another LLVM
/// (a plain `cargo install bpf-linker` wants LLVM 23) is replaced.
fn ensure_bpf_linker(llvm: u32) -> Result {
    let stamp_path = cargo_home().join(".ferry-bpf-linker");
    let want = format!("{BPF_LINKER_VERSION} llvm-{llvm}");
    let have_bin = output(Command::new("bpf-linker").arg("--version")).is_some();
    let stamp = fs::read_to_string(&stamp_path).unwrap_or_default();
    if have_bin && stamp.trim() == want {
        return Ok(());
    }
    let prefix = format!("/usr/lib/llvm-{llvm}");
    if !Path::new(&prefix).exists() {
        return Err(format!("{prefix} is missing: install llvm-{llvm}-dev"));
    }
    run(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "--locked",
                "--force",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm}"),
            ]),
    )?;
    fs::write(&stamp_path, want).map_err(|e| format!("{}: {e}", stamp_path.display()))?;
    Ok(())
}

pub fn setup() -> Result {
    ensure_nightly()?;
    let llvm = nightly_llvm_major()?;
    ensure_packages(llvm)?;
    ensure_bpf_linker(llvm)?;
    crate::test_guest::ensure()?;
    Ok(())
}
