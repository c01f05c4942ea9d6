//! The test guest QEMU migrations use: Debian's cloud kernel and a busybox
//! initramfs whose init (`guest/init`) checks its own memory and says so on
//! the serial console. Built into `target/test-guest/` from Debian packages;
//! rebuilt only when the kernel package or the init script changes.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{Result, root, run};

pub fn dir() -> PathBuf {
    root().join("target/test-guest")
}

fn stdout(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The versioned kernel package the cloud metapackage points at.
fn kernel_package() -> Result<String> {
    let deps = stdout(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| "linux-image-cloud-amd64 depends on no linux-image package".into())
}

pub fn ensure() -> Result {
    let out = dir();
    let init = root().join("guest/init");
    let script = fs::read(&init).map_err(|e| format!("{}: {e}", init.display()))?;
    let package = match kernel_package() {
        Ok(p) => p,
        Err(_) => {
            // No package lists yet (a fresh machine).
            run(Command::new("apt-get").args(["update", "-q"]))?;
            kernel_package()?
        }
    };
    let stamp = format!("{package}\n{:016x}\n", fnv(&script));
    if fs::read_to_string(out.join("STAMP")).ok().as_deref() == Some(&stamp)
        && out.join("vmlinuz").is_file()
        && out.join("initrd.gz").is_file()
    {
        return Ok(());
    }
    eprintln!("xtask: building the test guest ({package} + busybox initramfs)");
    let work = root().join("target/test-guest.work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(e)?;
    // `run` works in the workspace root; the download goes to `work`.
    stdout(
        Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&work),
    )?;
    let deb = fs::read_dir(&work)
        .map_err(e)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download left no .deb")?;
    let kroot = work.join("kernel");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&kroot))?;
    let vmlinuz = fs::read_dir(kroot.join("boot"))
        .map_err(e)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or("the kernel package has no /boot/vmlinuz-*")?;
    fs::create_dir_all(&out).map_err(e)?;
    fs::copy(&vmlinuz, out.join("vmlinuz")).map_err(e)?;
    build_initrd(&work.join("initrd"), &script, &out.join("initrd.gz"))?;
    fs::write(out.join("STAMP"), stamp).map_err(e)?;
    let _ = fs::remove_dir_all(&work);
    eprintln!("xtask: test guest in {}", out.display());
    Ok(())
}

fn build_initrd(tree: &Path, init: &[u8], out: &Path) -> Result {
    use std::os::unix::fs::PermissionsExt;
    for d in ["bin", "proc", "sys", "dev", "mnt"] {
        fs::create_dir_all(tree.join(d)).map_err(e)?;
    }
    // busybox-static: the initramfs has no libraries.
    fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .map_err(|e| format!("/bin/busybox (busybox-static): {e}"))
        .map_err(e)?;
    fs::write(tree.join("init"), init).map_err(e)?;
    fs::set_permissions(tree.join("init"), fs::Permissions::from_mode(0o755)).map_err(e)?;
    let list = stdout(Command::new("find").arg(".").current_dir(tree))?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(tree)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(e)?;
    let mut stdin = cpio.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(list.as_bytes())
    });
    let gz = Command::new("gzip")
        .arg("-9")
        .stdin(cpio.stdout.take().expect("piped"))
        .output()
        .map_err(e)?;
    writer.join().expect("writer").map_err(e)?;
    if !cpio.wait().map_err(e)?.success() || !gz.status.success() {
        return Err("cpio | gzip failed".into());
    }
    fs::write(out, gz.stdout).map_err(e)?;
    Ok(())
}

fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

/// FNV-1a: a stamp of the init script, not a security measure.
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}
