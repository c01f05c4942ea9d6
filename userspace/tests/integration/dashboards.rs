//! The Grafana dashboards and provisioning in dashboards/: valid JSON,
//! unique uids, every panel and query on the datasource variable (not
//! ${DS_...} inputs, which provisioning never fills), every metric they
//! name declared by ferry's code; for a fleet, `job` and `instance`
//! variables that filter every selector, per-device series told apart by
//! instance, each series in the unit its metric's name says, whole counts,
//! the downtime limit drawn, and migrations marked as annotations. The
//! system test `prometheus` then runs every expression against a real
//! Prometheus scraping real daemons.

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
    let mut files = Vec::new();
    crate::errors::rust_files(&root().join("userspace/src"), &mut files);
    crate::errors::rust_files(&root().join("crates"), &mut files);
    let mut s = BTreeSet::new();
    for p in files {
        let text = std::fs::read_to_string(&p).unwrap();
        for part in text.split("\"ferry_").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if part[name.len()..].starts_with('"') {
                s.insert(format!("ferry_{name}"));
            }
        }
    }
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

/// The filter every selector of every query starts with.
const FILTER: &str = r#"{job=~"$job",instance=~"$instance""#;

/// The metric names (and `up`) a PromQL expression selects.
fn selectors(expr: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        if word(b[i]) && (i == 0 || !word(b[i - 1])) {
            let start = i;
            while i < b.len() && word(b[i]) {
                i += 1;
            }
            let w = &expr[start..i];
            if w.starts_with("ferry_") || w.starts_with("process_") || w == "up" {
                out.push((i, w));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The unit a query's result has, from its metric's name (Prometheus's
/// naming conventions) and what the query does to it; "count" is a whole
/// number ("short" with no decimals).
fn expected_unit(expr: &str) -> &'static str {
    if expr.contains(") / sum(") {
        return "percentunit";
    }
    let m = selectors(expr).first().map(|s| s.1).unwrap_or("up");
    let rate = expr.contains("rate(");
    let bits = expr.trim_end().ends_with("* 8");
    let per_second = |bytes: bool| match (bytes, bits) {
        (true, true) => "bps",
        (true, false) => "Bps",
        _ => "cps",
    };
    if let Some(base) = m.strip_suffix("_bucket") {
        return if base.ends_with("_seconds") {
            "s"
        } else {
            "short"
        };
    }
    if m.ends_with("_total") {
        if !rate {
            return "count";
        }
        if m.ends_with("_seconds_total") {
            return "suffix: cores";
        }
        if m.ends_with("_bytes_total") {
            return per_second(true);
        }
        if ["packets", "drops", "frames"].iter().any(|k| m.contains(k)) {
            return "pps";
        }
        return per_second(false);
    }
    if m.ends_with("_bytes_per_second") {
        return per_second(true);
    }
    if m.ends_with("_seconds") {
        return "s";
    }
    if m.ends_with("_bytes") {
        return "bytes";
    }
    if m.ends_with("_ratio") {
        return "percentunit";
    }
    "short"
}

/// A field property of a query's series: its panel's override by refId,
/// else the panel's default.
fn field<'a>(panel: &'a serde_json::Value, ref_id: &str, id: &str) -> &'a serde_json::Value {
    let overridden = panel["fieldConfig"]["overrides"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["matcher"]["id"] == "byFrameRefID" && o["matcher"]["options"] == ref_id)
        .flat_map(|o| o["properties"].as_array().into_iter().flatten())
        .find(|p| p["id"] == id);
    match overridden {
        Some(p) => &p["value"],
        None => &panel["fieldConfig"]["defaults"][id],
    }
}

/// Every query's selectors start with the job and instance filter.
fn assert_filtered(what: &str, expr: &str) {
    let sel = selectors(expr);
    assert!(!sel.is_empty(), "{what}: {expr} selects no metric");
    for (end, m) in sel {
        assert!(
            expr[end..].starts_with(FILTER),
            "{what}: {m} in {expr} is not filtered on the job and instance variables \
             (its selector should start {FILTER})"
        );
    }
}

#[test]
fn dashboards_serve_a_fleet_in_the_right_units() {
    let limit = ferry::protocol::Limits::default()
        .downtime_limit
        .as_secs_f64();
    for (name, d) in dashboards() {
        let vars = d["templating"]["list"].as_array().unwrap();
        for (var, query) in [
            ("job", r#"label_values(up{job=~"ferry.*"}, job)"#),
            ("instance", r#"label_values(up{job=~"$job"}, instance)"#),
        ] {
            let v = vars
                .iter()
                .find(|v| v["name"] == var)
                .unwrap_or_else(|| panic!("{name}: no {var} variable"));
            assert_eq!(v["type"], "query", "{name}: ${var}");
            assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}: ${var}");
            assert_eq!(v["query"]["query"], query, "{name}: ${var}");
            assert_eq!(v["multi"], true, "{name}: ${var} is not multi-select");
            assert_eq!(v["includeAll"], true, "{name}: ${var} has no All");
            assert!(
                v["allValue"].is_string(),
                "{name}: ${var}: All has no regex"
            );
        }
        let anns = d["annotations"]["list"].as_array().unwrap();
        assert!(!anns.is_empty(), "{name}: no annotations");
        for a in anns {
            let what = format!("{name}: annotation {}", a["name"]);
            assert_eq!(a["datasource"]["uid"], "${datasource}", "{what}");
            assert_filtered(&what, a["expr"].as_str().unwrap());
        }
        let mut downtime_limit = false;
        for p in d["panels"].as_array().unwrap() {
            if p["type"] == "row" {
                continue;
            }
            let title = p["title"].as_str().unwrap();
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                let ref_id = t["refId"].as_str().unwrap();
                let what = format!("{name}: panel {title:?} query {ref_id}");
                assert_filtered(&what, expr);
                let legend = t["legendFormat"].as_str().unwrap_or("");
                // A per-device series carries its device's name.
                if legend.contains("{{interface}}") || expr.contains("interface,") {
                    assert!(
                        legend.contains("{{instance}}"),
                        "{what}: per-interface series without {{{{instance}}}} in {legend:?}"
                    );
                }
                for by in expr.split("by (").skip(1) {
                    let labels = &by[..by.find(')').unwrap()];
                    if labels.contains("interface") {
                        assert!(
                            labels.contains("instance"),
                            "{what}: `by ({labels})` adds up the interfaces of every device"
                        );
                    }
                }
                let unit = field(p, ref_id, "unit");
                match expected_unit(expr) {
                    "count" => {
                        assert_eq!(unit, "short", "{what}: {expr} counts, not in {unit}");
                        assert_eq!(
                            field(p, ref_id, "decimals"),
                            0,
                            "{what}: {expr} counts, so it shows no decimals"
                        );
                    }
                    u => assert_eq!(unit, u, "{what}: {expr} should show in {u}, not {unit}"),
                }
                downtime_limit |= expr.contains("ferry_migration_downtime_limit_seconds");
            }
            if title.starts_with("Downtime") && p["type"] == "stat" {
                let steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}: {title:?} has no thresholds"));
                assert!(
                    steps.iter().any(|s| s["value"].as_f64() == Some(limit)),
                    "{name}: {title:?} has no threshold at the default limit {limit} s"
                );
            }
        }
        if name == "ferry-migrations.json" {
            assert!(downtime_limit, "{name}: the downtime limit is not drawn");
            let marks: Vec<&str> = anns.iter().filter_map(|a| a["name"].as_str()).collect();
            assert_eq!(
                marks,
                ["Migration starts", "Switch-overs", "Migration ends"],
                "{name}: a migration's start, switch-over and end are not all marked"
            );
        }
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
