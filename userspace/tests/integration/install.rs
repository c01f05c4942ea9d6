//! `ferry install` into a fresh directory tree: the binary without its
//! debug info (split off beside it), units systemd accepts, example
//! configurations that check and are never overwritten, a man page per
//! subcommand, completions, licences.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn sections(file: &Path) -> String {
    let (ok, out) = run(Command::new("readelf").arg("-SW").arg(file));
    assert!(ok, "readelf {}: {out}", file.display());
    out
}

/// The subcommands `ferry [PATH] --help` lists under "Commands:".
fn subcommands(path: &[&str]) -> Vec<String> {
    let (ok, help) = run(Command::new(FERRY).args(path).arg("--help"));
    assert!(ok, "{help}");
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A wrapped description goes on further in.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn ferry_install_puts_everything_in_its_place_and_systemd_accepts_the_units() {
    let tree = std::env::temp_dir().join(format!("ferry-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tree);
    let prefix = tree.join("opt");
    let etc = tree.join("etc");
    let install = || {
        let (ok, out) = run(Command::new(FERRY)
            .args(["install", "--root", "/", "--prefix"])
            .arg(&prefix)
            .arg("--sysconfdir")
            .arg(&etc));
        assert!(ok, "ferry install: {out}");
        out
    };
    let listing = install();
    let at = |p: &str| -> PathBuf { prefix.join(p) };

    // The binary runs, and carries no debug info; that is in its .debug
    // file, which its debuglink names.
    let bin = at("bin/ferry");
    let (ok, v) = run(Command::new(&bin).arg("--version"));
    assert!(ok && v.starts_with("ferry "), "{v}");
    let debug = prefix
        .join("lib/debug")
        .join(bin.parent().unwrap().strip_prefix("/").unwrap())
        .join("ferry.debug");
    let (built, installed) = (sections(Path::new(FERRY)), sections(&bin));
    assert!(
        built.contains(".debug_line"),
        "the release build has line tables"
    );
    assert!(
        // (.debug_gdb_scripts is rustc's loaded pretty-printer hint, not
        // debug info.)
        !installed.contains(".debug_line")
            && !installed.contains(".debug_info")
            && installed.contains(".gnu_debuglink"),
        "installed binary's sections:\n{installed}"
    );
    assert!(
        sections(&debug).contains(".debug_line"),
        "{}",
        debug.display()
    );
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&bin) * 2 < size(Path::new(FERRY)),
        "installed {} bytes, built {}",
        size(&bin),
        size(Path::new(FERRY))
    );

    // Units: systemd's own checker says nothing about them (it exits 0 on
    // mere warnings, so its output must be empty too), and they start the
    // installed binary on the installed configurations.
    let units = at("lib/systemd/system");
    for role in ["coordinator", "host", "router"] {
        let unit = units.join(format!("ferry-{role}.service"));
        let text = std::fs::read_to_string(&unit).unwrap();
        let exec = format!(
            "ExecStart={} {role} --config {}",
            bin.display(),
            etc.join(format!("ferry/{role}.yaml")).display()
        );
        assert!(text.contains(&exec), "{}: no {exec:?}", unit.display());
        assert!(text.contains("Restart=on-failure") && text.contains("NoNewPrivileges=yes"));
        if which("systemd-analyze") {
            let (ok, out) = run(Command::new("systemd-analyze")
                .args(["verify", "--man=no"])
                .arg(&unit));
            assert!(
                ok && out.trim().is_empty(),
                "systemd-analyze verify {}:\n{out}",
                unit.display()
            );
        } else {
            eprintln!("systemd-analyze is not installed: the units' syntax is not checked");
        }
    }
    // QEMU guests outlive a restart of their host.
    let host_unit = std::fs::read_to_string(units.join("ferry-host.service")).unwrap();
    assert!(host_unit.contains("\nKillMode=process\n"), "{host_unit}");

    // Configurations check, with the installed binary.
    for name in ["coordinator", "host", "router"] {
        let f = etc.join(format!("ferry/{name}.yaml"));
        let (ok, out) = run(Command::new(&bin)
            .args(["config", "check", "--syntax-only"])
            .arg(&f));
        assert!(ok, "{out}");
    }

    // A man page for ferry and each subcommand, at every depth.
    let man = at("share/man/man1");
    let mut pages = vec!["ferry".to_string()];
    for c in subcommands(&[]) {
        pages.push(format!("ferry-{c}"));
        for sub in subcommands(&[&c]) {
            pages.push(format!("ferry-{c}-{sub}"));
        }
    }
    assert!(pages.len() > 20, "{pages:?}");
    for p in &pages {
        let f = man.join(format!("{p}.1"));
        let text = std::fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("no man page {}: {e}", f.display()));
        assert!(
            text.contains(".TH") && text.contains(".SH NAME"),
            "{}",
            f.display()
        );
    }
    assert!(
        std::fs::read_to_string(man.join("ferry-migrate.1"))
            .unwrap()
            .contains("cancel\\-on\\-interrupt"),
        "ferry-migrate.1 documents its options"
    );

    // Completions know the subcommands.
    for f in [
        "share/bash-completion/completions/ferry",
        "share/zsh/site-functions/_ferry",
        "share/fish/vendor_completions.d/ferry.fish",
    ] {
        let text = std::fs::read_to_string(at(f)).unwrap();
        assert!(text.contains("migrate") && text.contains("cancel"), "{f}");
    }
    for f in ["LICENSE-APACHE", "LICENSE-MIT"] {
        assert!(at(&format!("share/doc/ferry/{f}")).is_file(), "{f}");
    }
    let reference = std::fs::read_to_string(at("share/doc/ferry/configuration.md")).unwrap();
    assert!(
        reference.contains("`network.migration_vlan.vlan`"),
        "the configuration reference lists nested keys"
    );
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(at("share/ferry/schemas/host.json")).unwrap(),
    )
    .unwrap();
    assert!(
        schema["properties"]["memory_capacity"].is_object(),
        "host.json is the host file's schema: {schema}"
    );

    // Installing again keeps what the operator changed.
    let host = etc.join("ferry/host.yaml");
    std::fs::write(&host, "# mine\nname: mine\n").unwrap();
    let again = install();
    assert_eq!(
        std::fs::read_to_string(&host).unwrap(),
        "# mine\nname: mine\n"
    );
    assert!(again.contains("kept: it was there"), "{again}");
    assert!(listing.contains("an example configuration"), "{listing}");
    let _ = std::fs::remove_dir_all(&tree);
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}
