//! Rebuild the programs whenever the bpf-linker binary changes: cargo cannot
//! see that dependency, and a stale object linked by an old bpf-linker is
//! hard to diagnose.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => println!("cargo:warning=bpf-linker not found ({e}); run `cargo xtask setup`"),
    }
}
