//! Every file in config/ loads and validates; bad files fail with file,
//! line, column and field.

use std::path::{Path, PathBuf};

use ferry::{
    config::{self, ConfigError},
    config_check,
    demo::DemoConfig,
    lab::CountersConfig,
};

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
        if let Err(e) = config_check::check(f) {
            panic!("{e}");
        }
    }
}

#[test]
fn demo_yamls_hold_the_builtin_defaults() {
    let cfg: DemoConfig = config::load(&config_dir().join("demo.yaml")).unwrap();
    assert_eq!(cfg, DemoConfig::default());
    let cfg: CountersConfig = config::load(&config_dir().join("lab/counters.yaml")).unwrap();
    assert_eq!(cfg, CountersConfig::default());
}

#[test]
fn every_kind_has_an_example() {
    let mut files = Vec::new();
    yaml_files(&config_dir(), &mut files);
    for kind in config_check::Kind::ALL {
        assert!(
            files
                .iter()
                .any(|f| config_check::Kind::of_file(f).ok() == Some(*kind)),
            "no example of {kind:?} in config/"
        );
    }
}

#[test]
fn limits_no_migration_can_run_with_are_refused_with_their_field() {
    let coord = std::fs::read_to_string(config_dir().join("coordinator.yaml")).unwrap();
    let demo = std::fs::read_to_string(config_dir().join("demo.yaml")).unwrap();
    for (from, to, field) in [
        (
            "downtime_limit: 300ms",
            "downtime_limit: 0s",
            "downtime_limit",
        ),
        ("max_time: 10m", "max_time: 0s", "max_time"),
        (
            "downtime_limit: 300ms",
            "downtime_limit: 11m",
            "downtime_limit",
        ),
    ] {
        let err = config::from_str::<ferry::coordinator::CoordinatorConfig>(
            &coord.replace(from, to),
            "coordinator.yaml",
        )
        .unwrap_err()
        .to_string();
        let at = spot(&coord, from);
        assert!(
            err.starts_with(&format!("coordinator.yaml:{at}: defaults.limits.{field}: ")),
            "{to}: {err}"
        );
        let err = config::from_str::<DemoConfig>(&demo.replace(from, to), "demo.yaml")
            .unwrap_err()
            .to_string();
        let at = spot(&demo, from);
        assert!(
            err.starts_with(&format!("demo.yaml:{at}: limits.{field}: ")),
            "{to}: {err}"
        );
    }
    let err = config::from_str::<DemoConfig>(
        &demo.replace("max_record: 262144", "max_record: 1024"),
        "demo.yaml",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        format!(
            "demo.yaml:{}: limits.max_record: 1024 is outside 64KiB..=16MiB",
            spot(&demo, "max_record: 262144")
        )
    );
}

/// `line:column` of `needle` in `text`, 1-based, as errors print them.
fn spot(text: &str, needle: &str) -> String {
    let (i, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in the text"));
    format!("{}:{}", i + 1, line.find(needle).unwrap() + 1)
}

#[test]
fn a_yaml_syntax_error_is_reported_as_such_where_it_is() {
    // An unclosed flow mapping swallows the next line into a value; the
    // error is the syntax, not the strange value the parser made of it.
    let demo = std::fs::read_to_string(config_dir().join("demo.yaml")).unwrap();
    let bad = demo.replacen(
        "workload: { kind: key-value, gets_per_second: 50000, sets_per_second: 50000 }",
        "workload: { kind: idle",
        1,
    );
    assert_ne!(bad, demo);
    let err = config::from_str::<DemoConfig>(&bad, "demo.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("demo.yaml:") && err.contains("did not find expected ',' or '}'"),
        "expected the YAML syntax error, got: {err}"
    );
    assert!(!err.contains("unknown variant"), "{err}");
    assert!(
        !err.contains(" at line "),
        "the location is printed once, in front: {err}"
    );
}

#[test]
fn host_config_errors_name_the_field() {
    let base = std::fs::read_to_string(config_dir().join("host-a.yaml")).unwrap();
    let bad = base.replace("memory_capacity: 4GiB", "memory_capacity: 1GiB");
    let err = config::from_str::<ferry::host::HostConfig>(&bad, "host-a.yaml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "host-a.yaml:{}: memory_capacity: 1GiB is less than the 2GiB its guests need",
            spot(&base, "memory_capacity: 4GiB")
        )
    );
    let bad = base.replace("vcpus: 2", "vcpus: 0");
    let err = config::from_str::<ferry::host::HostConfig>(&bad, "host-a.yaml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "host-a.yaml:{}: guests[0].vcpus: 0 is out of range 1..=64",
            spot(&base, "vcpus: 2")
        )
    );
    let bad = base.replace("kind: idle", "kind: sleepy");
    let err = config::from_str::<ferry::host::HostConfig>(&bad, "host-a.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("host-a.yaml:")
            && err.contains("guests[1].workload")
            && err.contains("sleepy"),
        "{err}"
    );
    let bad = base.replace("encryption: required", "encryption: maybe");
    let err = config::from_str::<ferry::host::HostConfig>(&bad, "host-a.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("guests[1].encryption") && err.contains("maybe"),
        "{err}"
    );
}

#[test]
fn unknown_field_is_reported_with_file_line_and_field() {
    let text = "duration: 2s\nqinq:\n  outer: 300\n  innner: 10\n";
    let err = config::from_str::<CountersConfig>(text, "demo-typo.yaml").unwrap_err();
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
    let err = config::from_str::<CountersConfig>("vlans: [100, lots]\n", "demo.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("demo.yaml:1:"), "{err}");
    assert!(err.contains("vlans[1]"), "{err}");
}

#[test]
fn semantic_errors_name_the_field() {
    let err = config::from_str::<CountersConfig>("vlans: [100, 4095]\n", "demo.yaml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "demo.yaml:1:14: vlans[1]: VLAN id 4095 is out of range 1..=4094"
    );
    let err = config::from_str::<CountersConfig>("duration: 3 fortnights\n", "demo.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("duration") && err.contains("unknown unit"),
        "{err}"
    );
}

#[test]
fn unreadable_and_unknown_files_are_clear() {
    let err = config_check::check(Path::new("/nonexistent/demo.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/nonexistent/demo.yaml: cannot read"),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("ferry-kind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("whatever.yaml");
    std::fs::write(&f, "colour: blue\nsize: 3\n").unwrap();
    let err = config_check::check(&f).unwrap_err().to_string();
    assert!(
        err.contains("cannot tell what kind of config this is: its keys (colour, size) are those of no ferry configuration"),
        "{err}"
    );
    std::fs::write(&f, "").unwrap();
    let err = config_check::check(&f).unwrap_err().to_string();
    assert!(
        err.contains("the file is empty: name it after its kind"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `ferry config check` goes by what a file holds, not by its name: every
/// example under another name is still recognised, a router file named
/// like a host is still a router, and a host file with one misspelt key is
/// checked as a host, so the error names that key and its line.
#[test]
fn a_file_is_known_by_its_content_whatever_its_name() {
    let dir = std::env::temp_dir().join(format!("ferry-content-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    yaml_files(&config_dir(), &mut files);
    for (i, f) in files.iter().enumerate() {
        let by_name = config_check::Kind::of_path(f).unwrap();
        let renamed = dir.join(format!("site-{i}.yaml"));
        std::fs::copy(f, &renamed).unwrap();
        // Relative paths inside (certificates) stay resolvable.
        let kind = config_check::Kind::of_file(&renamed)
            .unwrap_or_else(|e| panic!("{} renamed: {e}", f.display()));
        assert_eq!(
            kind,
            by_name,
            "{} renamed to {}",
            f.display(),
            renamed.display()
        );
    }
    let router = dir.join("host-router.yaml");
    std::fs::copy(config_dir().join("router.yaml"), &router).unwrap();
    assert_eq!(
        config_check::Kind::of_file(&router).unwrap(),
        config_check::Kind::Router
    );
    let text = std::fs::read_to_string(config_dir().join("host-b.yaml"))
        .unwrap()
        .replace("memory_capacity:", "memory_capacty:");
    let host = dir.join("edge-7.yaml");
    std::fs::write(&host, text).unwrap();
    let err = config_check::check(&host).unwrap_err().to_string();
    assert!(
        err.contains("edge-7.yaml:") && err.contains("memory_capacty"),
        "expected the host file's misspelt key named with its place, got: {err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 16: the daemons' default /metrics ports, the example files and the
/// Prometheus scrape configuration say the same thing, so Prometheus
/// configured from dashboards/prometheus.yml scrapes every example daemon.
#[test]
fn metrics_ports_agree_between_code_examples_and_prometheus() {
    use config_check::Kind;
    use std::{collections::BTreeSet, net::SocketAddr};
    let defaults = [
        ("coordinator", ferry::coordinator::DEFAULT_METRICS),
        ("host", ferry::host::DEFAULT_METRICS),
        ("router", ferry::router::DEFAULT_METRICS),
    ];
    let mut files = Vec::new();
    yaml_files(&config_dir(), &mut files);
    // What each example daemon listens on, by role.
    let mut listens: Vec<(&str, SocketAddr, String)> = Vec::new();
    for f in &files {
        let at = f.display().to_string();
        let (role, listen) = match Kind::of_file(f).unwrap() {
            Kind::Coordinator => (
                "coordinator",
                ferry::coordinator::Coordinator::load_config(f)
                    .unwrap()
                    .metrics
                    .map(|m| m.listen),
            ),
            Kind::Host => (
                "host",
                config::load::<ferry::host::config::HostConfig>(f)
                    .unwrap()
                    .metrics
                    .map(|m| m.listen),
            ),
            Kind::Router => (
                "router",
                config::load::<ferry::router::RouterConfig>(f)
                    .unwrap()
                    .metrics
                    .map(|m| m.listen),
            ),
            _ => continue,
        };
        let default = defaults.iter().find(|(r, _)| *r == role).unwrap().1;
        let listen = listen.unwrap_or(default);
        assert_eq!(
            listen.port(),
            default.port(),
            "{at}: a {role}'s /metrics on port {}, but the {role} default (README, prometheus.yml) is {}",
            listen.port(),
            default.port()
        );
        listens.push((role, listen, at));
    }
    assert!(listens.len() >= 3, "examples found: {listens:?}");
    // Every example daemon is a target of its job, and every target is a
    // default or an example's address.
    let prom: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(config_dir().join("../dashboards/prometheus.yml")).unwrap(),
    )
    .unwrap();
    for (role, default) in defaults {
        let job = format!("ferry-{role}");
        let targets: BTreeSet<SocketAddr> = prom["scrape_configs"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|j| j["job_name"].as_str() == Some(&job))
            .flat_map(|j| j["static_configs"].as_sequence().unwrap().iter())
            .flat_map(|s| s["targets"].as_sequence().unwrap().iter())
            .map(|t| t.as_str().unwrap().parse().unwrap())
            .collect();
        assert!(
            targets.contains(&default),
            "{job}: {targets:?} lacks the default {default}"
        );
        for (r, addr, at) in listens.iter().filter(|(r, ..)| *r == role) {
            assert!(
                targets.contains(addr),
                "{at}: the {r}'s /metrics {addr} is not among prometheus.yml's {job} targets {targets:?}"
            );
        }
        for t in &targets {
            assert!(
                *t == default || listens.iter().any(|(r, a, _)| *r == role && a == t),
                "prometheus.yml's {job} target {t} is neither the default nor an example's"
            );
        }
    }
}

/// The line an error names is the field's own, also where the parser's
/// position is elsewhere: a unit is parsed after its text was read, a tagged
/// value (`workload: {kind: ...}`) is buffered, a semantic check runs on the
/// parsed value, a duplicate key is found by the kind detection.
#[test]
fn errors_point_at_the_line_of_the_field() {
    let base = std::fs::read_to_string(config_dir().join("host-a.yaml")).unwrap();
    for (from, to, want) in [
        (
            "memory: 512MiB",
            "memory: 512XiB",
            "guests[1].memory: invalid size",
        ),
        (
            "gets_per_second: 50000",
            "gets_per_second: -5",
            "guests[0].workload.gets_per_second: invalid value: integer `-5`",
        ),
        ("vcpus: 2", "vcpus: 0", "guests[0].vcpus: 0 is out of range"),
        (
            "kind: idle",
            "kind: idel",
            "guests[1].workload.kind: unknown variant `idel`",
        ),
    ] {
        let bad = base.replacen(from, to, 1);
        let err = config::from_str::<ferry::host::HostConfig>(&bad, "host-a.yaml")
            .unwrap_err()
            .to_string();
        // The key's column, or the value's where the value is the subject.
        let line = spot(&bad, to).split(':').next().unwrap().to_string();
        assert!(
            err.starts_with(&format!("host-a.yaml:{line}:")) && err.contains(want),
            "{to}: expected line {line} and {want:?}, got: {err}"
        );
    }
    let dir = std::env::temp_dir().join(format!("ferry-lines-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Told a host by its name, or by its content.
    let twice = base.replacen("name: host-a\n", "name: host-a\nname: again\n", 1);
    for (name, says) in [
        ("host.yaml", "duplicate field `name`"),
        ("mine.yaml", "duplicate entry with key \"name\""),
    ] {
        let file = dir.join(name);
        std::fs::write(&file, &twice).unwrap();
        let err = config_check::check(&file).unwrap_err().to_string();
        assert_eq!(err, format!("{}:3:1: {says}", file.display()));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
