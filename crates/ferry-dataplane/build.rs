//! Builds ferry's eBPF programs (ebpf/ferry-ebpf) with the nightly toolchain
//! and bpf-linker; `dataplane::OBJECT` embeds the result.

fn main() -> anyhow::Result<()> {
    // Without the feature (the control plane's tests) there is nothing to
    // build, and no nightly toolchain is needed.
    if std::env::var_os("CARGO_FEATURE_EBPF").is_none() {
        return Ok(());
    }
    // ferry-common is compiled into the programs too; aya-build only watches
    // the program crate itself.
    println!("cargo:rerun-if-changed=../../ebpf/ferry-common");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ferry-ebpf",
            root_dir: "../../ebpf/ferry-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    Ok(())
}
