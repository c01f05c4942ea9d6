//! ferry watched by a real Prometheus: the coordinator, two hosts and a
//! router run as `ferry` processes in namespaces (a -- r -- b), Prometheus
//! scrapes all four, a guest migrates from a to b through the router's
//! shaped, delayed migration class, the guest's MAC moves ports and is
//! announced; then every expression of every panel of every dashboard in
//! dashboards/ is queried and must return data (and none once the job
//! variable names no job), every metric the dashboards name must be one
//! Prometheus scraped from ferry, the job and instance variables must list
//! the daemons, and each annotation must mark the migration.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use ferry::{
    certs,
    control::Role,
    lab::Topology,
    net::{
        MacAddr, PacketSocket,
        frame::{ethernet, gratuitous_arp},
    },
    netns::Netns,
};

use crate::common::{exclusive, privileged};

const GUEST_MAC: &str = "52:54:00:fe:77:01";

/// Children killed (and reaped) when dropped, their logs kept for failures.
struct Daemons {
    kids: Vec<(String, Child)>,
    dir: PathBuf,
}

impl Daemons {
    fn spawn(&mut self, ns: &Netns, name: &str, program: &str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = ns
            .command(program)
            .args(args)
            .current_dir(&self.dir)
            .env("FERRY_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        self.kids.push((name.to_string(), child));
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for (n, _) in &self.kids {
            let t = std::fs::read_to_string(self.dir.join(format!("{n}.log"))).unwrap_or_default();
            let tail: Vec<&str> = t.lines().rev().take(15).collect();
            s.push_str(&format!("--- {n}\n"));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for (_, c) in &mut self.kids {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The body of GET `path` from `addr` in namespace `ns`. HTTP/1.0: the
/// server closes when done and sends no chunks.
fn http10_get(ns: &Netns, addr: &str, path: &str) -> std::io::Result<String> {
    ns.run(|| {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default())
    })
}

/// GET from Prometheus, from namespace `r`.
fn prom_get(r: &Netns, path: &str) -> serde_json::Value {
    let body = http10_get(r, "127.0.0.1:9090", path).unwrap_or_default();
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

fn query(r: &Netns, expr: &str) -> serde_json::Value {
    prom_get(r, &format!("/api/v1/query?query={}", percent_encode(expr)))
}

/// Grafana's built-in interval variables, as a dashboard would send them,
/// with `$job` and `$instance` on All (their `allValue` regexes).
fn grafana_vars(dash: &serde_json::Value, expr: &str) -> String {
    let all = |name: &str| variable(dash, name)["allValue"].as_str().unwrap_or(".*");
    with_vars(expr, all("job"), all("instance"))
}

/// The dashboard's variable `name` (null if it has none).
fn variable<'a>(dash: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or(&serde_json::Value::Null)
}

fn with_vars(expr: &str, job: &str, instance: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$__range", "10m")
        .replace("$__interval", "5s")
        .replace("$job", job)
        .replace("$instance", instance)
}

/// What a `label_values(SELECTOR, LABEL)` variable lists, asked of
/// Prometheus as Grafana asks it (the series API's label values).
fn label_values(r: &Netns, query: &str, job: &str) -> BTreeSet<String> {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a label_values query: {query}"));
    let (selector, label) = inner.rsplit_once(',').unwrap();
    let selector = selector.replace("$job", job);
    let v = prom_get(
        r,
        &format!(
            "/api/v1/label/{}/values?match[]={}",
            label.trim(),
            percent_encode(&selector)
        ),
    );
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{query}: {v}"))
        .iter()
        .filter_map(|x| x.as_str().map(String::from))
        .collect()
}

fn dashboards() -> Vec<(PathBuf, serde_json::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let j = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p, j)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(v.len() >= 3, "dashboards/ has {} dashboards", v.len());
    v
}

/// A frame from the guest's MAC on `ifname` of `ns`: a gratuitous ARP (or,
/// with `data`, a plain IPv4 frame).
fn from_guest(ns: &Netns, ifname: &str, data: bool) {
    let mac: MacAddr = GUEST_MAC.parse().unwrap();
    ns.run(|| {
        let s = PacketSocket::bind(ifname).unwrap();
        let f = if data {
            let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
            ip.extend_from_slice(&[10, 6, 2, 50, 10, 6, 2, 2]);
            ip.extend_from_slice(&[0x13, 0x88, 0x13, 0x88, 0, 8, 0, 0]);
            ethernet(MacAddr([0xff; 6]), mac, &[], 0x0800, &ip)
        } else {
            gratuitous_arp(mac, "10.6.2.50".parse().unwrap(), &[])
        };
        s.send(&f).unwrap();
    });
}

#[test]
fn prometheus_scrapes_every_daemon_and_every_dashboard_panel_has_data() {
    if !privileged("prometheus_scrapes_every_daemon_and_every_dashboard_panel_has_data") {
        return;
    }
    let _x = exclusive();
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let mut t = Topology::new("fp");
    let (a, r, b) = t.routed().unwrap();
    let dir = std::env::temp_dir().join(format!("ferry-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = Daemons {
        kids: Vec::new(),
        dir: dir.clone(),
    };
    certs::issue(
        &dir.join("certs"),
        &[
            (Role::Coordinator, "coordinator".into()),
            (Role::Host, "host-a".into()),
            (Role::Host, "host-b".into()),
            (Role::Client, "admin".into()),
        ],
    )
    .unwrap();
    let tls = |n: &str| {
        format!("tls: {{ca: certs/ca.pem, cert: certs/{n}.pem, key: certs/{n}-key.pem}}\n")
    };
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    write(
        "host-a.yaml",
        format!(
            "name: host-a\ncontrol: 10.6.1.1:7501\nmigration: 10.6.1.1:7601\n{}encryption: true\n\
             memory_capacity: 512MiB\ncoordinators: [coordinator]\n\
             guests:\n- name: web\n  memory: 64MiB\n  vcpus: 1\n  encryption: required\n  \
             workload: {{kind: key-value, gets_per_second: 5000, sets_per_second: 5000}}\n  \
             nic: {{mac: \"{GUEST_MAC}\", ipv4: 10.6.2.50}}\n\
             metrics: {{listen: \"10.6.1.1:9472\"}}\nstate_dir: host-a-state\n",
            tls("host-a")
        ),
    );
    write(
        "host-b.yaml",
        format!(
            "name: host-b\ncontrol: 10.6.2.1:7502\nmigration: 10.6.2.1:7602\n{}encryption: true\n\
             memory_capacity: 512MiB\ncoordinators: [coordinator]\n\
             network: {{guest_interface: vb}}\nmetrics: {{listen: \"10.6.2.1:9472\"}}\nstate_dir: host-b-state\n",
            tls("host-b")
        ),
    );
    write(
        "coordinator.yaml",
        format!(
            "name: coordinator\nlisten: 127.0.0.1:7400\n{}hosts:\n\
             - {{name: host-a, control: \"10.6.1.1:7501\", encryption: true}}\n\
             - {{name: host-b, control: \"10.6.2.1:7502\", encryption: true}}\n\
             clients: [admin]\ndefaults: {{streams: 2}}\nmetrics: {{listen: \"127.0.0.1:9471\"}}\nstate_dir: coordinator-state\n",
            tls("coordinator")
        ),
    );
    // Migration streams to b are shaped to 400 Mbit/s and cross a 1 ms
    // delay line; the watch on both ports sees the guest's MAC move.
    write(
        "router-r.yaml",
        "name: r\ninterfaces:\n- {name: ra, watch: true}\n- {name: rb, watch: true, wan: true, shape: {rate: 1Gbit}}\n\
         classes:\n\
         - {name: migration, id: 10, matches: [{protocol: tcp, dst_port: '7601-7602'}, {protocol: tcp, src_port: '7601-7602'}], rate: 400Mbit, ceil: 400Mbit, wan: {delay: 1ms}}\n\
         - {name: default, id: 20, rate: 100Mbit}\n\
         watch: {burst_gap: 1s}\nmetrics: {listen: \"127.0.0.1:9473\"}\n"
            .into(),
    );
    write(
        "prometheus.yml",
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n\
         - {job_name: ferry-coordinator, static_configs: [{targets: ['127.0.0.1:9471']}]}\n\
         - {job_name: ferry-host, static_configs: [{targets: ['10.6.1.1:9472', '10.6.2.1:9472']}]}\n\
         - {job_name: ferry-router, static_configs: [{targets: ['127.0.0.1:9473']}]}\n"
            .into(),
    );
    d.spawn(
        &r,
        "router",
        ferry,
        &["router", "--config", "router-r.yaml"],
    );
    d.spawn(&a, "host-a", ferry, &["host", "--config", "host-a.yaml"]);
    d.spawn(&b, "host-b", ferry, &["host", "--config", "host-b.yaml"]);
    d.spawn(
        &r,
        "coordinator",
        ferry,
        &["coordinator", "--config", "coordinator.yaml"],
    );
    d.spawn(
        &r,
        "prometheus",
        "prometheus",
        &[
            "--config.file=prometheus.yml",
            "--storage.tsdb.path=tsdb",
            "--web.listen-address=127.0.0.1:9090",
        ],
    );

    // All four targets up before anything happens, so every event is seen.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query(&r, "up == 1");
        let n = up["data"]["result"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0);
        if n == 4 {
            break;
        }
        assert!(
            Instant::now() < end,
            "targets up: {n} of 4\n{up}\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // The guest's MAC is first seen behind ra (its old host's side).
    from_guest(&a, "va", false);
    std::thread::sleep(Duration::from_millis(100));
    let out = r
        .command(ferry)
        .current_dir(&dir)
        .args([
            "migrate",
            "web",
            "--to",
            "host-b",
            "--json",
            "--coordinator",
            "coordinator@127.0.0.1:7400",
            "--tls-dir",
            "certs",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "migrate: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.logs()
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["result"], "completed", "{stats}");
    // host-b announces the guest on vb; then the guest speaks there.
    std::thread::sleep(Duration::from_millis(300));
    from_guest(&b, "vb", true);
    // The burst ends 1 s after its last frame (0.8 s in); a few scrapes more.
    std::thread::sleep(Duration::from_secs(4));

    let names: BTreeSet<String> = prom_get(&r, "/api/v1/label/__name__/values")["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let mut checked = 0;
    let mut empty = Vec::new();
    for (path, dash) in dashboards() {
        for p in dash["panels"].as_array().unwrap() {
            for tgt in p["targets"].as_array().into_iter().flatten() {
                let expr = tgt["expr"].as_str().unwrap();
                for m in expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("ferry_"))
                {
                    assert!(
                        names.contains(m),
                        "{}: panel {:?} names {m}, which ferry did not export",
                        path.display(),
                        p["title"]
                    );
                }
                let v = query(&r, &grafana_vars(&dash, expr));
                // No job of that name: the filter leaves nothing.
                let none = query(&r, &with_vars(expr, "no-such-job", ".+"));
                assert!(
                    none["status"] == "success"
                        && none["data"]["result"]
                            .as_array()
                            .is_some_and(|a| a.is_empty()),
                    "{} / {:?}: {expr} with $job = no-such-job still has data: {none}",
                    path.display(),
                    p["title"]
                );
                let finite = v["data"]["result"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s["value"][1].as_str())
                    .filter_map(|x| x.parse::<f64>().ok())
                    .any(f64::is_finite);
                checked += 1;
                if v["status"] != "success" || !finite {
                    empty.push(format!(
                        "{} / {:?}: {expr} -> {v}",
                        path.file_name().unwrap().to_string_lossy(),
                        p["title"]
                    ));
                }
            }
        }
    }
    // The variables list the daemons Prometheus scrapes; each annotation,
    // evaluated over the last minutes as Grafana does, marks the migration.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (path, dash) in dashboards() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let var = |n: &str| {
            variable(&dash, n)["query"]["query"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no ${n} variable"))
        };
        let jobs = label_values(&r, var("job"), "");
        assert_eq!(
            jobs,
            ["ferry-coordinator", "ferry-host", "ferry-router"]
                .map(String::from)
                .into(),
            "{name}: $job"
        );
        let hosts = label_values(&r, var("instance"), "ferry-host");
        assert_eq!(
            hosts,
            ["10.6.1.1:9472", "10.6.2.1:9472"].map(String::from).into(),
            "{name}: $instance for job ferry-host"
        );
        for a in dash["annotations"]["list"].as_array().unwrap() {
            let expr = grafana_vars(&dash, a["expr"].as_str().unwrap());
            let v = prom_get(
                &r,
                &format!(
                    "/api/v1/query_range?query={}&start={}&end={now}&step=1",
                    percent_encode(&expr),
                    now - 120
                ),
            );
            let series = v["data"]["result"].as_array().cloned().unwrap_or_default();
            assert!(
                !series.is_empty(),
                "{name}: annotation {} marks nothing: {expr} -> {v}",
                a["name"]
            );
        }
    }

    assert!(
        empty.is_empty(),
        "{} of {checked} panel expressions returned no data:\n{}\n{}",
        empty.len(),
        empty.join("\n"),
        d.logs()
    );
    eprintln!(
        "{checked} panel expressions, each with data; {} metric names scraped",
        names.len()
    );

    // promtool's lint of each daemon's exposition: naming conventions
    // (_total counters, base units), help texts, metric types.
    for target in [
        "127.0.0.1:9471",
        "10.6.1.1:9472",
        "10.6.2.1:9472",
        "127.0.0.1:9473",
    ] {
        let text = http10_get(&r, target, "/metrics").unwrap();
        assert!(text.contains("# TYPE ferry_"), "{target}: {text}");
        let mut lint = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        lint.stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = lint.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics on {target}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/prometheus.yml");
    let out = std::process::Command::new("promtool")
        .args(["check", "config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A few figures, to see the data is the migration's own.
    let one = |e: &str| -> f64 {
        query(&r, e)["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|x| x.parse().ok())
            .unwrap_or(f64::NAN)
    };
    assert_eq!(
        one(r#"sum(ferry_migrations_total{role="source",result="completed",mode="required"})"#),
        1.0
    );
    assert_eq!(
        one(r#"sum(ferry_migrations_total{role="destination",result="completed"})"#),
        1.0
    );
    assert_eq!(
        one(r#"sum(ferry_migrations_total{role="coordinator",result="completed"})"#),
        1.0
    );
    assert!(
        one("sum(ferry_migration_transferred_bytes_total{role=\"source\"})") > 32.0 * 1048576.0
    );
    assert!(one("sum(ferry_wan_bytes_total)") > 32.0 * 1048576.0);
    assert_eq!(one("sum(ferry_mac_moves_total)"), 1.0);
    assert!(one("sum(ferry_migration_crypto_cpu_seconds_total)") > 0.0);
    // host-a sent the migration under the default limit; host-b sent none.
    assert_eq!(
        one(r#"ferry_migration_downtime_limit_seconds{instance="10.6.1.1:9472"}"#),
        ferry::protocol::Limits::default()
            .downtime_limit
            .as_secs_f64()
    );
    assert_eq!(
        one(r#"ferry_migration_downtime_limit_seconds{instance="10.6.2.1:9472"}"#),
        0.0
    );
    let _keep: Arc<Netns> = a;
}
