//! Coordinators on a real 3-member etcd cluster on loopback: one leads, the
//! other points at it; the leader's death hands the lead over; hosts refuse
//! a deposed leader's epoch; without quorum no migration starts, and after
//! it returns they do again.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use ferry::{
    control::{Client, Request, Role, TlsFiles, tls},
    coordinator::{
        Coordinator, CoordinatorConfig, CoordinatorRef,
        config::HostEntry,
        request_migration,
        store::{EtcdConfig, StoreConfig},
    },
    engine::MigrationResult,
    host::{Host, HostConfig},
    protocol::EncryptionMode,
};

use crate::{
    control::{guest, rt},
    processes::{Daemon, FERRY, free_port, runtime, spawn_host, wait_listening, write_host},
};
use ferry::control::wire::{MigrateOptions, MigrationState};

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three etcd members, each its own process, stopped and removed on drop.
pub(crate) struct Etcd {
    dir: PathBuf,
    members: Vec<(u16, u16, Option<Child>)>,
}

impl Etcd {
    pub(crate) fn start(dir: &Path) -> Etcd {
        let members: Vec<_> = (0..3).map(|_| (port(), port(), None)).collect();
        let mut e = Etcd {
            dir: dir.to_path_buf(),
            members,
        };
        for i in 0..3 {
            e.up(i);
        }
        e
    }

    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|(c, _, _)| format!("http://127.0.0.1:{c}"))
            .collect()
    }

    fn up(&mut self, i: usize) {
        let cluster: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .map(|(j, (_, p, _))| format!("e{j}=http://127.0.0.1:{p}"))
            .collect();
        let (c, p, _) = self.members[i];
        let log = std::fs::File::create(self.dir.join(format!("etcd-{i}.log"))).unwrap();
        let child = Command::new("etcd")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("etcd-{i}")))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{c}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{c}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{p}"),
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "ferry-test",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.members[i].2 = Some(child);
    }

    fn down(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].2.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.down(i);
        }
    }
}

/// A read of the test's own etcd client, asked up to five times 200 ms
/// apart: a connection to a member that was restarted fails its first call.
async fn observed<T, F: Future<Output = Result<T, ferry::coordinator::store::StoreError>>>(
    what: &str,
    mut read: impl FnMut() -> F,
) -> T {
    let mut tries = 0;
    loop {
        match read().await {
            Ok(v) => return v,
            Err(e) if tries < 4 => {
                tries += 1;
                eprintln!(
                    "the observer's read of {what} failed ({}); again",
                    ferry_core::error::report(&e)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!(
                "the observer cannot read {what}: {}",
                ferry_core::error::report(&e)
            ),
        }
    }
}

async fn wait_for(what: &str, secs: u64, mut ok: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok().await {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what} did not happen within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

/// A fresh directory with certificates for coordinators c1 and c2, hosts
/// a and b and client admin.
fn site(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    ferry::certs::issue(
        &dir,
        &[
            (Role::Coordinator, "c1".into()),
            (Role::Coordinator, "c2".into()),
            (Role::Host, "a".into()),
            (Role::Host, "b".into()),
            (Role::Client, "admin".into()),
        ],
    )
    .unwrap();
    dir
}

#[test]
fn coordinators_on_etcd_elect_one_leader_fail_over_fence_the_deposed_and_need_quorum() {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("skipped: no etcd on this machine (`cargo xtask setup` installs etcd-server)");
        return;
    }
    let dir = site("ferry-fleet");
    let mut etcd = Etcd::start(&dir);
    rt().block_on(async {
        let mut entries = Vec::new();
        let mut hosts: Vec<Arc<Host>> = Vec::new();
        for (name, guests) in [("a", vec![guest("g1", 16 << 20, EncryptionMode::Opportunistic)]), ("b", vec![])] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let control = listener.local_addr().unwrap();
            let hc = HostConfig {
                name: name.into(),
                control,
                migration: "127.0.0.1:0".parse().unwrap(),
                advertise: None,
                tls: TlsFiles::in_dir(&dir, name),
                encryption: true,
                backend: Default::default(),
                memory_capacity: ferry::config::ByteSize(256 << 20),
                coordinators: vec!["c1".into(), "c2".into()],
                guests,
                metrics: None,
                network: None,
                software_dirty_log: false,
                state_dir: Some(dir.join(format!("{name}-state"))),
            };
            let host = tokio::task::spawn_blocking(move || Host::start(hc)).await.unwrap().unwrap();
            let t = tls::server_config(&host.config().tls).unwrap();
            tokio::spawn(host.clone().serve_on(listener, t));
            entries.push(HostEntry {
                name: name.into(),
                control,
                encryption: true,
            });
            hosts.push(host);
        }
        let mut coords = Vec::new();
        for name in ["c1", "c2"] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let cc = CoordinatorConfig {
                name: name.into(),
                listen: addr,
                tls: TlsFiles::in_dir(&dir, name),
                hosts: entries.clone(),
                peers: vec![],
                clients: vec![],
                defaults: Default::default(),
                scheduler: Default::default(),
                store: StoreConfig::Etcd(EtcdConfig {
                    endpoints: etcd.endpoints(),
                    site: "lab".into(),
                    tls: None,
                    lease_ttl: Duration::from_secs(2),
                }),
                metrics: None,
                state_dir: Some(dir.join(format!("{name}-state"))),
            };
            let t = tls::server_config(&cc.tls).unwrap();
            let c = Coordinator::new(cc).unwrap();
            let task = tokio::spawn(c.clone().serve_on(listener, t));
            coords.push((c, addr, task));
        }
        let client = Client::new(&TlsFiles::in_dir(&dir, "admin")).unwrap();
        wait_for("one coordinator leading", 60, async || {
            coords.iter().filter(|c| c.0.leads()).count() == 1
        })
        .await;
        let (l, f) = if coords[0].0.leads() { (0, 1) } else { (1, 0) };
        let r = |i: usize| CoordinatorRef {
            name: coords[i].0.name().to_string(),
            addr: coords[i].1,
        };
        // The follower points at the leader.
        let e = client
            .call(&r(f).name, r(f).addr, &Request::Status { id: None }, Duration::from_secs(10))
            .await
            .unwrap_err()
            .to_string();
        let leader = format!("{}@{}", r(l).name, r(l).addr);
        assert!(e.contains("does not lead site lab") && e.contains(&leader), "{e}");
        // The CLI, given the follower, asks the leader and says so.
        let follower = format!("{}@{}", r(f).name, r(f).addr);
        let site_dir = dir.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(FERRY)
                .args(["hosts", "--coordinator", &follower, "--as", "admin", "--tls-dir"])
                .arg(&site_dir)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "ferry hosts via the follower: {stdout}\n{stderr}");
        assert!(
            stderr.contains(&format!("asking the leader, {} at {}", r(l).name, r(l).addr)),
            "{stderr}"
        );
        assert!(stdout.contains("g1"), "the leader's answer lists a's guest: {stdout}");
        let moved = |i: usize, to: &'static str| {
            let (client, coord) = (client.clone(), r(i));
            async move { request_migration(&client, &coord, "g1", None, to, Default::default(), |_| {}).await }
        };
        let s = moved(l, "b").await.unwrap();
        assert_eq!(s.result, MigrationResult::Completed, "{:?}", s.error);
        let old = coords[l].0.epoch();

        // The leader dies (its task, lease renewals with it): the other takes over.
        coords[l].2.abort();
        let failover = wait_for("the follower taking the lead", 60, async || coords[f].0.leads()).await;
        let new = coords[f].0.epoch();
        assert!(new > old, "the new epoch {new} is above the old {old}");
        let accepted = Instant::now();
        let s = moved(f, "a").await.unwrap();
        assert_eq!(s.result, MigrationResult::Completed, "{:?}", s.error);
        eprintln!(
            "failover: {:.1} s from the leader's death to the new lead (lease 2 s); a migration then took {:.2} s",
            failover.as_secs_f64(),
            accepted.elapsed().as_secs_f64()
        );
        // A request at the deposed leader's epoch: refused by a host that saw the new one.
        let c1 = Client::new(&TlsFiles::in_dir(&dir, &r(l).name)).unwrap();
        let fenced = Request::Fenced {
            site: "lab".into(),
            epoch: old,
            request: Box::new(Request::Capabilities),
        };
        let e = c1
            .call("a", entries[0].control, &fenced, Duration::from_secs(10))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("deposed") && e.contains(&format!("epoch {old}")), "{e}");

        // A majority of etcd gone: nothing new starts, and g1 stays put.
        etcd.down(1);
        etcd.down(2);
        let e = tokio::time::timeout(Duration::from_secs(60), moved(f, "b"))
            .await
            .expect("a migration without quorum is refused in bounded time")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("store") || e.contains("does not lead") || e.contains("no coordinator leads"),
            "{e}"
        );
        assert!(hosts[0].guest("g1").is_some(), "g1 stayed on a");
        // Quorum back: migrations start again (after a new campaign if the lease lapsed).
        etcd.up(1);
        etcd.up(2);
        let back = wait_for("a migration accepted after quorum returned", 90, async || {
            matches!(moved(f, "b").await, Ok(s) if s.result == MigrationResult::Completed)
        })
        .await;
        eprintln!("quorum: migrations ran again {:.1} s after the members returned", back.as_secs_f64());
        assert!(hosts[1].guest("g1").is_some(), "g1 moved to b");
    });
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ferry coordinator` `name` as a process on the site's etcd, of hosts a
/// and b, with FERRY_FAILPOINT `failpoint` armed.
fn spawn_etcd_coordinator(
    dir: &Path,
    name: &str,
    listen: std::net::SocketAddr,
    hosts: (std::net::SocketAddr, std::net::SocketAddr),
    endpoints: &[String],
    failpoint: Option<&str>,
    log: &str,
) -> Daemon {
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &cfg,
        format!(
            "name: {name}\nlisten: {listen}\ntls: {{ ca: ca.pem, cert: {name}.pem, key: {name}-key.pem }}\n\
             hosts:\n  - {{ name: a, control: {}, encryption: true }}\n  \
             - {{ name: b, control: {}, encryption: true }}\n\
             store: {{ kind: etcd, endpoints: [{}], site: lab, lease_ttl: 2s }}\n\
             metrics: {{ listen: \"127.0.0.1:{}\" }}\nstate_dir: {name}-state-{log}\n",
            hosts.0,
            hosts.1,
            endpoints.join(", "),
            free_port().port()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(FERRY);
    cmd.args(["coordinator", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}-{log}.log"))).unwrap());
    if let Some(f) = failpoint {
        cmd.env("FERRY_FAILPOINT", f);
    }
    let d = Daemon(cmd.spawn().unwrap());
    wait_listening(listen);
    d
}

/// Asks coordinator `c` for the records it has; Err when it does not lead.
async fn records_of(
    client: &Client,
    c: &CoordinatorRef,
) -> Result<Vec<ferry::control::wire::MigrationRecord>, String> {
    match client
        .call(
            &c.name,
            c.addr,
            &Request::Status { id: None },
            Duration::from_secs(10),
        )
        .await
    {
        Ok(ferry::control::Response::Status { migrations }) => Ok(migrations),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Guest `g` as host `host` (at `addr`) lists it, asked directly with a
/// coordinator's certificate: what the host holds, whoever leads.
async fn on_host(
    c1: &Client,
    host: &str,
    addr: std::net::SocketAddr,
    g: &str,
) -> Option<ferry::guest::GuestInfo> {
    match c1
        .call(host, addr, &Request::Capabilities, Duration::from_secs(20))
        .await
    {
        Ok(ferry::control::Response::Capabilities(c)) => c
            .guests
            .iter()
            .find(|x| x.info.name == g)
            .map(|x| x.info.clone()),
        other => panic!("capabilities of {host}: {other:?}"),
    }
}

#[test]
fn a_leader_killed_while_streaming_at_ready_or_after_go_or_without_quorum_leaves_each_guest_on_one_host_intact()
 {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("skipped: no etcd on this machine (`cargo xtask setup` installs etcd-server)");
        return;
    }
    let dir = site("ferry-fleet-kill");
    let mut etcd = Etcd::start(&dir);
    let kv =
        "vcpus: 1, workload: { kind: key-value, gets_per_second: 2000, sets_per_second: 2000 }";
    let guests = format!(
        "[{{ name: g1, memory: 48MiB, {kv} }}, {{ name: g2, memory: 32MiB, {kv} }}, \
         {{ name: g3, memory: 32MiB, {kv} }}, {{ name: g4, memory: 48MiB, {kv} }}]"
    );
    let (ca, ma, cb, mb) = (free_port(), free_port(), free_port(), free_port());
    let mut daemons = Vec::new();
    for (name, control, migration, guests) in [("a", ca, ma, guests.as_str()), ("b", cb, mb, "[]")]
    {
        let cfg = write_host(&dir, name, control, migration, guests);
        let yaml = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(
            &cfg,
            yaml.replace("coordinators: [c1]", "coordinators: [c1, c2]"),
        )
        .unwrap();
        daemons.push(spawn_host(&cfg, &dir.join(format!("{name}.log"))));
    }
    wait_listening(ca);
    wait_listening(cb);
    let client = Client::new(&TlsFiles::in_dir(&dir, "admin")).unwrap();
    let c1 = Client::new(&TlsFiles::in_dir(&dir, "c1")).unwrap();
    let endpoints = etcd.endpoints();
    let slow = || MigrateOptions {
        limits: Some(ferry::protocol::Limits {
            bandwidth: Some(8 << 20),
            ..Default::default()
        }),
        ..Default::default()
    };
    runtime().block_on(async {
        // Reads the journal and the owners as any etcd client would.
        let observer = ferry::coordinator::store::Store::open(
            &StoreConfig::Etcd(EtcdConfig {
                endpoints: endpoints.clone(),
                site: "lab".into(),
                tls: None,
                lease_ttl: Duration::from_secs(2),
            }),
            None,
            "observer",
            "127.0.0.1:9".parse().unwrap(),
        )
        .await
        .unwrap();
        let mut faults = 0;
        for (round, (g, failpoint)) in [
            ("g1", None),
            ("g2", Some("coordinator-at-ready")),
            ("g3", Some("coordinator-after-go")),
            ("g4", None),
        ]
        .into_iter()
        .enumerate()
        {
            let what = failpoint.unwrap_or(if round == 0 { "killed while streaming" } else { "quorum lost while streaming" });
            let addrs = [free_port(), free_port()];
            let mut coords: Vec<Daemon> = ["c1", "c2"]
                .iter()
                .zip(addrs)
                .map(|(n, l)| {
                    spawn_etcd_coordinator(&dir, n, l, (ca, cb), &endpoints, failpoint, &format!("r{round}"))
                })
                .collect();
            let refs: Vec<CoordinatorRef> = ["c1", "c2"]
                .iter()
                .zip(addrs)
                .map(|(n, addr)| CoordinatorRef { name: n.to_string(), addr })
                .collect();
            let mut leader = None;
            wait_for("one coordinator leading", 60, async || {
                for (i, r) in refs.iter().enumerate() {
                    if records_of(&client, r).await.is_ok() {
                        leader = Some(i);
                        return true;
                    }
                }
                false
            })
            .await;
            let (l, f) = if leader == Some(0) { (0, 1) } else { (1, 0) };
            let started = Instant::now();
            let mut cut = false;
            let mut first = None;
            let r = match round {
                0 => {
                    let c = &mut coords[l];
                    request_migration(&client, &refs[l], g, None, "b", slow(), |r| {
                        if let ferry::control::Response::Accepted { id, .. } = r {
                            first = Some(*id);
                        }
                        if let ferry::control::Response::Progress(p) = r
                            && p.transferred_bytes > 8 << 20
                            && !cut
                        {
                            c.0.kill().unwrap(); // SIGKILL
                            cut = true;
                        }
                    })
                    .await
                }
                3 => {
                    request_migration(&client, &refs[l], g, None, "b", slow(), |r| {
                        if let ferry::control::Response::Accepted { id, .. } = r {
                            first = Some(*id);
                        }
                        if let ferry::control::Response::Progress(p) = r
                            && p.transferred_bytes > 8 << 20
                            && !cut
                        {
                            etcd.down(1);
                            etcd.down(2);
                            cut = true;
                        }
                    })
                    .await
                }
                _ => {
                    request_migration(&client, &refs[l], g, None, "b", Default::default(), |r| {
                        if let ferry::control::Response::Accepted { id, .. } = r {
                            first = Some(*id);
                        }
                    })
                    .await
                }
            };
            faults += 1;
            let first = first.expect("the migration was accepted");
            if round == 3 {
                // Without quorum the leader cannot record GO: the guest
                // resumes on its source, and nothing moves until quorum
                // returns.
                let e = match r {
                    Ok(s) => s.error.clone().unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                assert!(cut, "quorum was lost mid-move");
                assert!(e.contains("not committed") || e.contains("store") || e.contains("lead"), "{e}");
                let on_a = on_host(&c1, "a", ca, g).await;
                assert!(
                    on_a.as_ref().is_some_and(|i| i.state == ferry::guest::RunState::Running),
                    "{g} runs on a after GO was refused: {on_a:?}"
                );
                etcd.up(1);
                etcd.up(2);
            } else {
                assert!(r.is_err(), "round {round}: the leader died during the move: {r:?}");
                let status = coords[l].0.wait().unwrap();
                eprintln!("round {round} ({what}): the leader {} ended: {status}", refs[l].name);
            }
            // The survivor leads, takes over and settles the migration: the
            // guest runs on exactly one host, b (after a retry where its
            // first move was aborted).
            let mut led = None;
            let settle = wait_for(&format!("round {round} ({what}): {g} settled on b"), 120, async || {
                let Ok(recs) = (match round {
                    3 => {
                        // Either may lead once quorum is back.
                        match records_of(&client, &refs[l]).await {
                            Ok(r) => Ok(r),
                            Err(_) => records_of(&client, &refs[f]).await,
                        }
                    }
                    _ => records_of(&client, &refs[f]).await,
                }) else {
                    return false;
                };
                led.get_or_insert(started.elapsed());
                // Stunned at READY or past GO, the migration itself
                // completes; one cut while streaming is aborted and asked
                // for again.
                let done = recs.iter().any(|r| {
                    r.guest == g
                        && r.state == MigrationState::Completed
                        && (r.id == first) == failpoint.is_some()
                });
                if failpoint.is_none() && done {
                    let aborted = recs.iter().find(|r| r.id == first).map(|r| r.state);
                    assert_eq!(aborted, Some(MigrationState::Failed), "{g}'s first move was aborted");
                }
                done && on_host(&c1, "a", ca, g).await.is_none()
                    && on_host(&c1, "b", cb, g)
                        .await
                        .is_some_and(|i| i.state == ferry::guest::RunState::Running)
            })
            .await;
            // Its memory intact: its key-value workload goes on reading
            // what it wrote, without a wrong value.
            let before = on_host(&c1, "b", cb, g).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let after = on_host(&c1, "b", cb, g).await.unwrap();
            assert!(after.ops > before.ops, "{g} runs on b: {} then {} ops", before.ops, after.ops);
            assert_eq!(after.get_errors, 0, "{g}'s reads on b found what it wrote");
            // The journal closed, and the store names b its owner. The
            // observer's own connection may be to a member the round
            // restarted: its first call can be cancelled, so it asks again.
            let open: Vec<_> = observed("the journal", || observer.open_entries())
                .await
                .into_iter()
                .filter(|e| e.guest == g)
                .collect();
            assert!(open.is_empty(), "{g}'s journal records closed: {open:?}");
            assert_eq!(
                observed("the owner", || observer.owner(g)).await.as_deref(),
                Some("b")
            );
            eprintln!(
                "round {round} ({what}): a leader answered {:.1} s after the fault's move began; {g} settled on b {:.1} s after the fault",
                led.unwrap_or_default().as_secs_f64(),
                settle.as_secs_f64()
            );
            drop(coords);
        }
        eprintln!("{faults} faults injected; each guest ended on b alone, running, its reads intact");
    });
    drop(daemons);
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One etcd member that speaks only mutual TLS to its clients, with the
/// site's CA, as an operator sets etcd up; stopped on drop.
struct TlsEtcd {
    child: Child,
    port: u16,
}

impl TlsEtcd {
    fn start(dir: &Path) -> TlsEtcd {
        let (port, peer) = (port(), port());
        let log = std::fs::File::create(dir.join("etcd-tls.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "tls"])
            .arg("--data-dir")
            .arg(dir.join("etcd-tls"))
            .args(["--listen-client-urls", &format!("https://127.0.0.1:{port}")])
            .args([
                "--advertise-client-urls",
                &format!("https://localhost:{port}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &format!("tls=http://127.0.0.1:{peer}")])
            .arg("--cert-file")
            .arg(dir.join("localhost.pem"))
            .arg("--key-file")
            .arg(dir.join("localhost-key.pem"))
            .arg("--trusted-ca-file")
            .arg(dir.join("ca.pem"))
            .arg("--client-cert-auth")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        TlsEtcd { child, port }
    }

    fn endpoint(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The coordinator's store over etcd's client TLS: with the site's CA and a
/// client certificate it leads and journals; without TLS, or with a
/// certificate of another CA, it cannot even join, and says why.
#[test]
fn the_etcd_store_speaks_mutual_tls_and_refuses_without_the_sites_certificates() {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("skipped: no etcd on this machine (`cargo xtask setup` installs etcd-server)");
        return;
    }
    let dir = site("ferry-etcd-tls");
    // etcd's server certificate, from the same CA: its DNS name is the
    // endpoint's host.
    ferry::certs::issue(&dir, &[(Role::Host, "localhost".into())]).unwrap();
    let stranger = dir.join("stranger");
    ferry::certs::issue(&stranger, &[(Role::Coordinator, "c1".into())]).unwrap();
    let etcd = TlsEtcd::start(&dir);
    let cfg = |tls: Option<TlsFiles>| {
        StoreConfig::Etcd(EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            site: "tls".into(),
            tls,
            lease_ttl: Duration::from_secs(2),
        })
    };
    let listen: std::net::SocketAddr = "127.0.0.1:7499".parse().unwrap();
    runtime().block_on(async {
        use ferry::coordinator::store::{Entry, Phase, Store};
        // etcd takes a moment to listen; the first lead is bounded below.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (store, lead) = loop {
            let tried = async {
                let s = Store::open(&cfg(Some(TlsFiles::in_dir(&dir, "c1"))), None, "c1", listen)
                    .await?;
                let l = tokio::time::timeout(Duration::from_secs(10), s.lead())
                    .await
                    .map_err(|_| ferry::coordinator::store::StoreError::NotLeading)??;
                Ok::<_, ferry::coordinator::store::StoreError>((s, l))
            }
            .await;
            match tried {
                Ok(ok) => break ok,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("etcd not ready yet: {}", ferry_core::error::report(&e));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!(
                    "the store did not lead over TLS within 30 s: {}",
                    ferry_core::error::report(&e)
                ),
            }
        };
        assert!(lead.epoch > 0, "epoch {}", lead.epoch);
        let id = ferry::protocol::MigrationId::generate();
        store
            .record(&Entry {
                id,
                guest: "g1".into(),
                source: "a".into(),
                destination: "b".into(),
                phase: Phase::Streaming,
                epoch: lead.epoch,
                coordinator: "c1".into(),
                updated_unix_ms: 1,
                note: None,
            })
            .await
            .unwrap();
        // A second client with the site's certificates reads it back.
        let observer = Store::open(&cfg(Some(TlsFiles::in_dir(&dir, "c2"))), None, "c2", listen)
            .await
            .unwrap();
        let open = observer.open_entries().await.unwrap();
        assert!(
            open.iter()
                .any(|e| e.id == id && e.phase == Phase::Streaming),
            "the journal over TLS: {open:?}"
        );
        assert_eq!(
            observer.leader().await.unwrap().as_deref(),
            Some("c1@127.0.0.1:7499")
        );
        // Without TLS, and with a client certificate the site's CA did not
        // sign (the client trusts etcd; etcd does not trust it): no answer,
        // and an error that says it was etcd.
        let strangers = TlsFiles {
            ca: dir.join("ca.pem"),
            ..TlsFiles::in_dir(&stranger, "c1")
        };
        for (what, tls) in [
            ("no TLS", None),
            ("a client certificate of another CA", Some(strangers)),
        ] {
            let tried = tokio::time::timeout(Duration::from_secs(20), async {
                let s = Store::open(&cfg(tls), None, "intruder", listen).await?;
                s.open_entries().await
            })
            .await
            .unwrap_or_else(|_| panic!("{what}: etcd neither answered nor refused in 20 s"));
            let e = tried.expect_err(what);
            let msg = ferry_core::error::report(&e).to_string();
            assert!(
                msg.contains("etcd") || msg.contains("localhost"),
                "{what}: {msg}"
            );
            eprintln!("{what}: refused: {msg}");
        }
    });
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}
