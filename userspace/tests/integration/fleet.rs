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

use crate::control::{guest, rt};

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three etcd members, each its own process, stopped and removed on drop.
struct Etcd {
    dir: PathBuf,
    members: Vec<(u16, u16, Option<Child>)>,
}

impl Etcd {
    fn start(dir: &Path) -> Etcd {
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

    fn endpoints(&self) -> Vec<String> {
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

#[test]
fn coordinators_on_etcd_elect_one_leader_fail_over_fence_the_deposed_and_need_quorum() {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("skipped: no etcd on this machine (`cargo xtask setup` installs etcd-server)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ferry-fleet-{}", std::process::id()));
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
