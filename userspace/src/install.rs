//! `ferry install`: puts this binary (debug info split off), its systemd
//! units, example configurations, a man page per subcommand and shell
//! completions where a Linux system looks for them, under `--root` (a
//! package's staging tree, or `/`).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// The units, with `@BINDIR@` and `@SYSCONFDIR@` still to fill in.
const UNITS: &[(&str, &str)] = &[
    (
        "ferry-coordinator.service",
        include_str!("../../dist/systemd/ferry-coordinator.service"),
    ),
    (
        "ferry-host.service",
        include_str!("../../dist/systemd/ferry-host.service"),
    ),
    (
        "ferry-router.service",
        include_str!("../../dist/systemd/ferry-router.service"),
    ),
];

/// The configurations the units start from (`/etc/ferry/NAME`), from the
/// examples in config/.
const CONFIGS: &[(&str, &str)] = &[
    (
        "coordinator.yaml",
        include_str!("../../config/coordinator.yaml"),
    ),
    ("host.yaml", include_str!("../../config/host-a.yaml")),
    ("router.yaml", include_str!("../../config/router.yaml")),
];

const LICENSES: &[(&str, &str)] = &[
    ("LICENSE-APACHE", include_str!("../../LICENSE-APACHE")),
    ("LICENSE-MIT", include_str!("../../LICENSE-MIT")),
];

pub struct Layout {
    /// Everything goes under this directory (`/` for the running system).
    pub root: PathBuf,
    /// `/usr/local` or `/usr`: bin, share and lib go under it.
    pub prefix: PathBuf,
    /// Where configurations go: `/etc` (under `root`).
    pub sysconfdir: PathBuf,
}

impl Layout {
    /// `path` (absolute on the target system) under the root.
    fn at(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    fn bindir(&self) -> PathBuf {
        self.prefix.join("bin")
    }

    /// systemd's unit directory: a distribution package's
    /// (`/usr/lib/systemd/system`) for `/usr`, the administrator's
    /// (`/etc/systemd/system`) for `/usr/local`, and the prefix's own
    /// `lib/systemd/system` for any other (`/opt/ferry`, say), to link from
    /// there with `systemctl link`.
    fn unitdir(&self) -> PathBuf {
        if self.prefix == Path::new("/usr") {
            PathBuf::from("/usr/lib/systemd/system")
        } else if self.prefix == Path::new("/usr/local") {
            PathBuf::from("/etc/systemd/system")
        } else {
            self.prefix.join("lib/systemd/system")
        }
    }
}

/// One installed file and what it is, for the listing `ferry install` prints.
pub struct Installed {
    pub path: PathBuf,
    pub what: &'static str,
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut f =
        std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?} (binutils is needed to split debug info)", cmd))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Installs `exe` and everything around it; returns what it wrote.
pub fn install(cli: clap::Command, exe: &Path, layout: &Layout) -> Result<Vec<Installed>> {
    let mut done = Vec::new();
    let mut put = |path: PathBuf, what| done.push(Installed { path, what });

    // The binary without its debug info, which goes beside it in the place
    // gdb looks (/usr/lib/debug + the binary's path + .debug), linked by
    // a .gnu_debuglink section: the release build keeps line tables for
    // backtraces, which are most of its size.
    let bin = layout.at(&layout.bindir().join("ferry"));
    let debug = layout.at(&layout
        .prefix
        .join("lib/debug")
        .join(
            layout
                .bindir()
                .strip_prefix("/")
                .unwrap_or(&layout.bindir()),
        )
        .join("ferry.debug"));
    for d in [bin.parent(), debug.parent()].into_iter().flatten() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(exe)
        .arg(&debug))?;
    // Written beside and renamed: a running `ferry` (this one, say) is not
    // overwritten in place.
    let tmp = bin.with_extension("new");
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(format!("--add-gnu-debuglink={}", debug.display()))
        .arg(exe)
        .arg(&tmp))?;
    std::fs::rename(&tmp, &bin).with_context(|| format!("installing {}", bin.display()))?;
    put(bin, "the binary, debug info split off");
    put(debug, "its debug info");

    let bindir = layout.bindir().display().to_string();
    let sysconfdir = layout.sysconfdir.display().to_string();
    for (name, text) in UNITS {
        let unit = text
            .replace("@BINDIR@", &bindir)
            .replace("@SYSCONFDIR@", &sysconfdir);
        let p = layout.at(&layout.unitdir().join(name));
        write(&p, unit.as_bytes(), 0o644)?;
        put(p, "a systemd unit");
    }

    // Configurations are the operator's once written: never overwritten.
    let etc = layout.at(&layout.sysconfdir.join("ferry"));
    for (name, text) in CONFIGS {
        let p = etc.join(name);
        if p.exists() {
            put(p, "a configuration (kept: it was there)");
            continue;
        }
        write(&p, text.as_bytes(), 0o640)?;
        put(p, "an example configuration");
    }

    let man = layout.at(&layout.prefix.join("share/man/man1"));
    for (name, page) in man_pages(cli.clone())? {
        let p = man.join(format!("{name}.1"));
        write(&p, &page, 0o644)?;
        put(p, "a man page");
    }

    let share = layout.at(&layout.prefix.join("share"));
    for (shell, dir, file) in [
        (
            clap_complete::Shell::Bash,
            "bash-completion/completions",
            "ferry",
        ),
        (clap_complete::Shell::Zsh, "zsh/site-functions", "_ferry"),
        (
            clap_complete::Shell::Fish,
            "fish/vendor_completions.d",
            "ferry.fish",
        ),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cli.clone(), "ferry", &mut buf);
        let p = share.join(dir).join(file);
        write(&p, &buf, 0o644)?;
        put(p, "shell completions");
    }

    let doc = layout.at(&layout.prefix.join("share/doc/ferry"));
    for (name, text) in LICENSES {
        let p = doc.join(name);
        write(&p, text.as_bytes(), 0o644)?;
        put(p, "a licence");
    }
    let p = doc.join("configuration.md");
    write(&p, ferry::config_reference::markdown().as_bytes(), 0o644)?;
    put(p, "the configuration reference");
    // For an editor's YAML language server:
    // `# yaml-language-server: $schema=/usr/local/share/ferry/schemas/host.json`.
    let schemas = layout.at(&layout.prefix.join("share/ferry/schemas"));
    for kind in ferry::config_check::Kind::ALL {
        let p = schemas.join(format!("{}.json", kind.prefix()));
        let json = serde_json::to_string_pretty(&kind.schema())?;
        write(&p, json.as_bytes(), 0o644)?;
        put(p, "a configuration schema");
    }
    Ok(done)
}

/// `ferry.1` and one page per subcommand, at every depth: `ferry-migrate`,
/// `ferry-lab-run`, ... (hidden ones left out).
pub fn man_pages(cli: clap::Command) -> Result<Vec<(String, Vec<u8>)>> {
    fn walk(
        cmd: clap::Command,
        name: String,
        bin: String,
        out: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        let cmd = cmd.name(name.clone()).bin_name(bin.clone());
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut page)
            .with_context(|| format!("rendering the man page of {name}"))?;
        out.push((name.clone(), page));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() == "help" {
                continue;
            }
            walk(
                sub.clone(),
                format!("{name}-{}", sub.get_name()),
                format!("{bin} {}", sub.get_name()),
                out,
            )?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    let mut cli = cli;
    cli.build();
    walk(cli, "ferry".into(), "ferry".into(), &mut out)?;
    Ok(out)
}
