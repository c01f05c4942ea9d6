//! Every file in config/ loads and validates; bad files fail with file,
//! line, column and field.

use std::path::{Path, PathBuf};

use ferry::config::{self, ConfigError, DemoConfig};

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

#[test]
fn every_file_in_config_validates() {
    let mut files = Vec::new();
    yaml_files(&config_dir(), &mut files);
    assert!(!files.is_empty(), "config/ has no YAML files");
    for f in &files {
        if let Err(e) = config::check(f) {
            panic!("{e}");
        }
    }
}

#[test]
fn demo_yaml_holds_the_builtin_defaults() {
    let cfg: DemoConfig = config::load(&config_dir().join("demo.yaml")).unwrap();
    assert_eq!(cfg, DemoConfig::default());
}

#[test]
fn unknown_field_is_reported_with_file_line_and_field() {
    let text = "duration: 2s\nqinq:\n  outer: 300\n  innner: 10\n";
    let err = config::from_str::<DemoConfig>(text, "demo-typo.yaml").unwrap_err();
    let msg = err.to_string();
    match &err {
        ConfigError::Parse { line, field, .. } => {
            assert_eq!(*line, Some(4), "{msg}");
            assert_eq!(field, "qinq.innner", "{msg}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    assert!(
        msg.starts_with("demo-typo.yaml:4:3: qinq.innner: unknown field"),
        "{msg}"
    );
    assert!(msg.contains("unknown field `innner`"), "{msg}");
    assert!(msg.contains("expected `outer` or `inner`"), "{msg}");
}

#[test]
fn wrong_type_names_the_field() {
    let err = config::from_str::<DemoConfig>("vlans: [100, lots]\n", "demo.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("demo.yaml:1:"), "{err}");
    assert!(err.contains("vlans[1]"), "{err}");
}

#[test]
fn semantic_errors_name_the_field() {
    let err = config::from_str::<DemoConfig>("vlans: [100, 4095]\n", "demo.yaml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "demo.yaml: vlans[1]: VLAN id 4095 is out of range 1..=4094"
    );
    let err = config::from_str::<DemoConfig>("duration: 3 fortnights\n", "demo.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("duration") && err.contains("unknown unit"),
        "{err}"
    );
}

#[test]
fn unreadable_and_unknown_files_are_clear() {
    let err = config::check(Path::new("/nonexistent/demo.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/nonexistent/demo.yaml: cannot read"),
        "{err}"
    );
    let err = config::check(Path::new("/tmp/whatever.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("file names must match"), "{err}");
}
