//! `cargo xtask bench`: every benchmark, with tables, ratios and plots, in
//! target/bench.

use std::{fs, path::Path, process::Command};

use crate::{Result, cargo, root, run};

/// The mean time of a criterion benchmark, in nanoseconds, from its
/// estimates.json (criterion's own file; parsed by hand to keep xtask free
/// of dependencies).
fn criterion_mean_ns(dir: &Path) -> Option<f64> {
    let text = fs::read_to_string(dir.join("new/estimates.json")).ok()?;
    let mean = &text[text.find("\"mean\"")?..];
    let pe = &mean[mean.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = pe.find([',', '}'])?;
    pe[..end].trim().parse().ok()
}

fn aead_table() -> Result {
    let base = root().join("target/criterion/aead-256k");
    let record = 256.0 * 1024.0;
    let mut rows = Vec::new();
    for op in ["seal", "open", "memcpy"] {
        let Ok(dir) = fs::read_dir(base.join(op)) else {
            continue;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "report" {
                continue;
            }
            if let Some(ns) = criterion_mean_ns(&e.path()) {
                rows.push((op, name, record / ns)); // bytes per ns = GB/s
            }
        }
    }
    rows.sort_by(|a, b| a.0.cmp(b.0).then(b.2.total_cmp(&a.2)));
    println!("\nAES-256-GCM on one core, 256 KiB records (criterion means):");
    println!("  {:<8} {:<12} {:>10}", "op", "backend", "GB/s");
    for (op, name, gbs) in &rows {
        println!("  {op:<8} {name:<12} {gbs:>10.2}");
    }
    let get = |op: &str, n: &str| rows.iter().find(|r| r.0 == op && r.1 == n).map(|r| r.2);
    for op in ["seal", "open"] {
        if let (Some(a), Some(r), Some(p)) =
            (get(op, "aws-lc-rs"), get(op, "ring"), get(op, "aes-gcm"))
        {
            println!(
                "  {op}: aws-lc-rs {:.1}x aes-gcm, ring {:.1}x aes-gcm, ring {:.2}x aws-lc-rs",
                a / p,
                r / p,
                r / a
            );
        }
    }
    Ok(())
}

pub fn bench() -> Result {
    let out = root().join("target/bench");
    fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    // Figures differ between machines (AVX-512 or not above all): say which
    // one these come from, first.
    run(cargo().args(["build", "--release", "--package", "ferry", "--bin", "ferry"]))?;
    let ferry = root().join("target/release/ferry");
    run(Command::new(&ferry).args(["lab", "machine"]))?;
    run(cargo().args([
        "bench",
        "--package",
        "ferry",
        "--bench",
        "aead",
        "--",
        "--warm-up-time",
        "1",
        "--measurement-time",
        "3",
    ]))?;
    aead_table()?;
    run(cargo().args(["bench", "--package", "ferry", "--bench", "protocol"]))?;
    run(Command::new(&ferry)
        .args(["lab", "bench-dataplane", "--out"])
        .arg(&out))?;
    run(Command::new(&ferry)
        .args(["lab", "bench-wan", "--out"])
        .arg(&out))?;
    run(Command::new(&ferry)
        .args(["lab", "bench-qemu", "--out"])
        .arg(&out))?;
    run(Command::new(&ferry)
        .args(["lab", "bench-migration", "--out"])
        .arg(&out))?;
    for exp in ["experiment-figure4", "experiment-figure5"] {
        run(Command::new(&ferry)
            .args(["lab", "run"])
            .arg(format!("config/lab/{exp}.yaml"))
            .arg("--out")
            .arg(&out))?;
    }
    println!("\nresults in {}:", out.display());
    if let Ok(d) = fs::read_dir(&out) {
        let mut files: Vec<_> = d
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        for f in files {
            println!("  {f}");
        }
    }
    Ok(())
}
