//! Errors say each cause once: what failed, then why, never "X: Y: X: Y".

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use ferry_core::error::repeated_phrase;
use syn::visit::Visit;

/// Every `.rs` file under `dir`, recursively (bounded by the tree's depth).
pub(crate) fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Finds `#[derive(...Error)]` types whose `#[error("...")]` message also
/// interpolates the field that is their `source`: anyhow's `{:#}` (and
/// ferry's `report`) prints the source after the message, so it would be
/// said twice.
struct SourceInMessage<'a> {
    file: &'a Path,
    found: Vec<String>,
}

fn derives_error(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("derive") && {
            let mut yes = false;
            let _ = a.parse_nested_meta(|m| {
                yes |= m.path.segments.last().is_some_and(|s| s.ident == "Error");
                Ok(())
            });
            yes
        }
    })
}

/// The `#[error(...)]` attribute's tokens, if any.
fn error_attr(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find(|a| a.path().is_ident("error")).map(|a| {
        a.meta
            .require_list()
            .map(|l| l.tokens.to_string())
            .unwrap_or_default()
    })
}

/// The names by which a message can refer to the source field: `source` or
/// `0`, as `{source}` / `{0}` in the string or `.source` / `.0` in its args.
fn source_field(fields: &syn::Fields) -> Option<String> {
    for (i, f) in fields.iter().enumerate() {
        let marked = f
            .attrs
            .iter()
            .any(|a| a.path().is_ident("source") || a.path().is_ident("from"));
        let name = f.ident.as_ref().map(|i| i.to_string());
        if marked || name.as_deref() == Some("source") {
            return Some(name.unwrap_or_else(|| i.to_string()));
        }
    }
    None
}

fn says_its_source(message: &str, field: &str) -> bool {
    if message.trim() == "transparent" {
        return false;
    }
    let in_string =
        message.contains(&format!("{{{field}}}")) || message.contains(&format!("{{{field}:"));
    // Extra format arguments come after the string literal: `.0`, `. source`.
    let args = message.rsplit_once('"').map_or("", |(_, a)| a);
    let in_args = args.contains(&format!(". {field}")) || args.contains(&format!(".{field}"));
    in_string || in_args
}

impl SourceInMessage<'_> {
    fn check(&mut self, what: String, attrs: &[syn::Attribute], fields: &syn::Fields) {
        if let (Some(msg), Some(field)) = (error_attr(attrs), source_field(fields))
            && says_its_source(&msg, &field)
        {
            self.found
                .push(format!("{}: {what}: #[error({msg})]", self.file.display()));
        }
    }
}

impl<'ast> Visit<'ast> for SourceInMessage<'_> {
    fn visit_item_enum(&mut self, e: &'ast syn::ItemEnum) {
        if derives_error(&e.attrs) {
            for v in &e.variants {
                self.check(format!("{}::{}", e.ident, v.ident), &v.attrs, &v.fields);
            }
        }
        syn::visit::visit_item_enum(self, e);
    }

    fn visit_item_struct(&mut self, s: &'ast syn::ItemStruct) {
        if derives_error(&s.attrs) {
            self.check(s.ident.to_string(), &s.attrs, &s.fields);
        }
        syn::visit::visit_item_struct(self, s);
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The rule every error type keeps, checked over all of ferry's source.
#[test]
fn no_error_message_repeats_its_source() {
    let root = workspace();
    let mut files = Vec::new();
    for dir in ["crates", "userspace/src", "xtask/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut found = Vec::new();
    let mut types = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        types += text.matches("thiserror::Error").count();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut v = SourceInMessage {
            file,
            found: Vec::new(),
        };
        v.visit_file(&ast);
        found.append(&mut v.found);
    }
    assert!(
        types > 10,
        "found only {types} error types: is the walk right?"
    );
    assert!(
        found.is_empty(),
        "these messages print their source, which the source then says again \
         (say what failed in the message, why in the source):\n{}",
        found.join("\n")
    );
}

/// Runs `ferry ARGS` and returns its stderr, which must be a failure.
fn ferry_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "ferry {args:?} succeeded: {stderr}");
    stderr
}

fn once(stderr: &str) {
    for line in stderr.lines() {
        assert_eq!(repeated_phrase(line), None, "a cause said twice in: {line}");
    }
}

/// A TCP port that refuses connections: bound but never listening, and
/// held by the caller so that no concurrent test is given it.
fn refusing_port() -> (tokio::runtime::Runtime, tokio::net::TcpSocket, u16) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sock = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        s
    });
    let port = sock.local_addr().unwrap().port();
    (rt, sock, port)
}

/// What people meet first, through the binary: each error says what
/// failed and where, each cause once, and how to go on.
#[test]
fn the_cli_says_what_failed_where_and_what_to_do_once() {
    let dir = tempfile_dir("errors");
    let missing = dir.join("nothing-here.yaml");
    let e = ferry_fails(&["config", "check", missing.to_str().unwrap()]);
    once(&e);
    assert!(
        e.contains(&format!(
            "{}: cannot read: No such file or directory",
            missing.display()
        )),
        "{e}"
    );

    // A client without certificates: which files, and how to make them.
    let nocerts = dir.join("no-certs");
    let e = ferry_fails(&["status", "--tls-dir", nocerts.to_str().unwrap()]);
    once(&e);
    assert!(
        e.contains(&format!(
            "client admin's TLS files: {}: No such file or directory",
            nocerts.join("admin.pem").display()
        )),
        "{e}"
    );
    assert!(
        e.contains("hint: `ferry certs --out DIR --client NAME`"),
        "{e}"
    );

    // With certificates, a coordinator that is not there.
    let certs = dir.join("certs");
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "certs",
            "--out",
            certs.to_str().unwrap(),
            "--client",
            "admin",
        ])
        .args(["--host", "host-a", "--coordinator", "coordinator"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_rt, _held, port) = refusing_port();
    let at = format!("coordinator@127.0.0.1:{port}");
    let e = ferry_fails(&[
        "status",
        "--tls-dir",
        certs.to_str().unwrap(),
        "--coordinator",
        &at,
    ]);
    once(&e);
    assert!(
        e.contains(&format!(
            "connecting to coordinator at 127.0.0.1:{port}: Connection refused"
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "hint: is `ferry coordinator` running at 127.0.0.1:{port}?"
        )),
        "{e}"
    );

    // A daemon whose configuration names certificates that are not there
    // says so before it boots anything, with the file that names them.
    let daemons = dir.join("daemons");
    std::fs::create_dir(&daemons).unwrap();
    for (kind, example) in [("host", "host-a.yaml"), ("coordinator", "coordinator.yaml")] {
        let cfg = daemons.join(example);
        std::fs::copy(workspace().join("config").join(example), &cfg).unwrap();
        let e = ferry_fails(&[kind, "--config", cfg.to_str().unwrap()]);
        once(&e);
        assert!(
            e.contains(&format!(
                "{}: tls: {}: No such file or directory",
                cfg.display(),
                daemons.join("certs/ca.pem").display()
            )),
            "{e}"
        );
        assert!(
            e.contains("hint: `ferry certs --out DIR --host NAME`"),
            "{e}"
        );
        assert!(
            !e.contains("guest booted"),
            "{kind} booted guests first: {e}"
        );
    }
    // A host whose migration address is taken: which address, and how to
    // find who holds it. (Its certificates are there: `dir/certs`.)
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap();
    let cfg = dir.join("host-a.yaml");
    let yaml = std::fs::read_to_string(workspace().join("config/host-a.yaml")).unwrap();
    let yaml = yaml
        .lines()
        .map(|l| match l.split_once(':').map(|(k, _)| k) {
            Some("migration") => format!("migration: {at}"),
            Some("state_dir") => format!("state_dir: {}", dir.join("state").display()),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&cfg, yaml).unwrap();
    let e = ferry_fails(&["host", "--config", cfg.to_str().unwrap()]);
    once(&e);
    assert!(
        e.contains(&format!(
            "migration listener on {at}: Address already in use"
        )),
        "{e}"
    );
    assert!(
        e.contains("hint: another process listens on that address"),
        "{e}"
    );
    assert!(
        !e.contains("guest booted"),
        "the host booted guests first: {e}"
    );
    drop(taken);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fresh directory under the system's temporary one, for one test.
fn tempfile_dir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
