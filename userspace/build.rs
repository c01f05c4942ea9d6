//! Builds ferry's eBPF programs (ebpf/ferry-ebpf) with the nightly toolchain and
//! bpf-linker, and records the git revision for `ferry --version`.
use std::process::Command;

fn main() -> anyhow::Result<()> {
    // ferry-common is compiled into the programs too; aya-build only watches
    // the program crate itself.
    println!("cargo:rerun-if-changed=../ebpf/ferry-common");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ferry-ebpf",
            root_dir: "../ebpf/ferry-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;

    let rev = Command::new("git")
        .args(["describe", "--always", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FERRY_GIT_REV={rev}");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    Ok(())
}
