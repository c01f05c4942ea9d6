//! The Grafana dashboards and provisioning in dashboards/: valid JSON,
//! unique uids, every panel and query on the datasource variable (not
//! ${DS_...} inputs, which provisioning never fills), every metric they
//! name declared by ferry's code. The system test `prometheus` then runs
//! every expression against a real Prometheus scraping real daemons.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(root().join("dashboards")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&p).unwrap();
            let j: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not valid JSON: {e}", p.display()));
            assert!(
                !text.contains("${DS_"),
                "{}: uses a ${{DS_...}} input",
                p.display()
            );
            v.push((p.file_name().unwrap().to_string_lossy().into_owned(), j));
        }
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Every `"ferry_..."` metric name in the libraries' sources (the `ferry`
/// crate and the layers under it in crates/).
fn declared_metrics() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for part in text.split("\"ferry_").skip(1) {
                    let name: String = part
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if part[name.len()..].starts_with('"') {
                        out.insert(format!("ferry_{name}"));
                    }
                }
            }
        }
    }
    let mut s = BTreeSet::new();
    walk(&root().join("userspace/src"), &mut s);
    walk(&root().join("crates"), &mut s);
    s
}

#[test]
fn dashboards_are_valid_unique_and_on_the_datasource_variable() {
    let ds = dashboards();
    let titles: Vec<&str> = ds.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        titles,
        [
            "ferry-migrations.json",
            "ferry-network.json",
            "ferry-overview.json"
        ]
    );
    let mut uids = BTreeSet::new();
    let declared = declared_metrics();
    for (name, d) in &ds {
        let uid = d["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no uid"));
        assert!(uids.insert(uid.to_string()), "{name}: uid {uid} used twice");
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{name}: no datasource variable"
        );
        let mut ids = BTreeSet::new();
        let mut queries = 0;
        for p in d["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap_or("?");
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{name}: panel id twice"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{name}: panel {title:?} is not on the datasource variable"
            );
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}: panel {title:?} has no query");
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{name}: {title:?}");
                let expr = t["expr"].as_str().unwrap();
                queries += 1;
                for m in expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("ferry_"))
                {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| m.strip_suffix(s))
                        .filter(|b| declared.contains(*b))
                        .unwrap_or(m);
                    assert!(
                        declared.contains(base),
                        "{name}: panel {title:?} names {m}, which ferry does not declare"
                    );
                }
            }
        }
        assert!(queries >= 8, "{name}: only {queries} queries");
    }
}

#[test]
fn provisioning_points_at_the_dashboards_and_a_prometheus() {
    let read = |p: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(root().join("dashboards/provisioning").join(p)).unwrap();
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let ds = read("datasources/ferry.yaml");
    assert_eq!(ds["apiVersion"], 1);
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    let dash = read("dashboards/ferry.yaml");
    assert_eq!(dash["providers"][0]["type"], "file");
    assert!(dash["providers"][0]["options"]["path"].as_str().is_some());
}
