//! Writes the fuzzers' seed corpora: a well-formed encrypted stream and a
//! valid hello (`cargo xtask fuzz` runs this first).
fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "userspace/fuzz/corpus".into()),
    );
    for (target, seed) in [
        ("record", ferry_protocol::fuzzing::record_seed()),
        ("handshake", ferry_protocol::fuzzing::handshake_seed()),
    ] {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("seed"), seed)?;
    }
    Ok(())
}
