//! The coordinator's scheduler and `ferry drain`: migrations queue within
//! the cluster and per-host limits, and a drained host ends empty and
//! cordoned.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::control::rt;
use ferry::{
    config::Rate,
    control::{
        Request, Response,
        wire::{MigrateOptions, MigrationState},
    },
    coordinator::{request_migration, scheduler::SchedulerConfig},
    engine::MigrationResult,
    guest::RunState,
    host::{GuestConfig, Host},
    lab::cluster::{Cluster, ClusterSpec, HostSpec},
    protocol::EncryptionMode,
};

fn host(name: &str, encryption: bool, capacity_mib: u64, guests: Vec<GuestConfig>) -> HostSpec {
    crate::control::host(name, "c1", encryption, capacity_mib << 20, guests)
}

fn guest(name: &str, mib: u64, encryption: EncryptionMode) -> GuestConfig {
    crate::control::guest(name, mib << 20, encryption)
}

/// Asks c1 to move `guest` to `to` with the defaults.
async fn moved(
    c: &Cluster,
    guest: &str,
    to: &str,
) -> Result<Box<ferry::engine::MigrationStats>, ferry::control::ControlError> {
    request_migration(
        &c.client,
        &c.coordinator("c1"),
        guest,
        None,
        to,
        Default::default(),
        |_| {},
    )
    .await
}

/// Coordinator c1 of `hosts`, under `scheduler`.
fn site(hosts: Vec<HostSpec>, scheduler: SchedulerConfig) -> ClusterSpec {
    ClusterSpec {
        coordinators: vec!["c1".into()],
        hosts,
        defaults: Default::default(),
        scheduler,
    }
}

async fn call(c: &Cluster, req: Request) -> Response {
    let r = c.coordinator("c1");
    c.client
        .call(&r.name, r.addr, &req, Duration::from_secs(30))
        .await
        .unwrap()
}

fn gauge(c: &Cluster, name: &str) -> i64 {
    c.coordinators["c1"]
        .0
        .metrics
        .gather()
        .iter()
        .find(|f| f.name() == name)
        .map(|f| f.get_metric()[0].get_gauge().value() as i64)
        .unwrap_or_else(|| panic!("the coordinator exports no {name}"))
}

/// Peaks seen by a thread that looks at every host's outgoing migrations
/// every millisecond: the hosts' own word, not the scheduler's.
#[derive(Debug, Default)]
struct Peaks {
    cluster: usize,
    outgoing: BTreeMap<String, usize>,
    incoming: BTreeMap<String, usize>,
    samples: u64,
}

fn watch(
    hosts: Vec<Arc<Host>>,
    destination: HashMap<String, String>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Peaks> {
    std::thread::spawn(move || {
        let mut p = Peaks::default();
        let until = Instant::now() + Duration::from_secs(300);
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            let mut all = 0;
            let mut incoming: BTreeMap<String, usize> = BTreeMap::new();
            for h in &hosts {
                let sending = h.sending();
                all += sending.len();
                let out = p.outgoing.entry(h.name().to_string()).or_default();
                *out = (*out).max(sending.len());
                for g in sending {
                    *incoming.entry(destination[&g].clone()).or_default() += 1;
                }
            }
            for (h, n) in incoming {
                let e = p.incoming.entry(h).or_default();
                *e = (*e).max(n);
            }
            p.cluster = p.cluster.max(all);
            p.samples += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        p
    })
}

/// 20 migrations asked at once across five hosts, each host sending one
/// to each of the others, under at most 3 running, 1 out and 1 in per host,
/// and a 24 MiB/s cap per migration from the scheduler: all complete, the
/// hosts never see more at once than the limits, most of them queue first
/// (and say so), and each ran under the scheduler's cap.
#[test]
fn twenty_migrations_queued_under_limits_run_without_exceeding_them() {
    rt().block_on(async {
        const HOSTS: usize = 5;
        const CAP: u64 = 24 << 20;
        let mut guests: Vec<Vec<GuestConfig>> = vec![Vec::new(); HOSTS];
        let mut destination = HashMap::new();
        for i in 0..20 {
            let name = format!("g{i:02}");
            guests[i % HOSTS].push(guest(&name, 8, EncryptionMode::Opportunistic));
            // Each host sends to all four others and receives from all four,
            // so no limit implies another.
            destination.insert(name, format!("h{}", (i % HOSTS + 1 + i / HOSTS) % HOSTS));
        }
        let spec = site(
            guests
                .into_iter()
                .enumerate()
                .map(|(i, g)| host(&format!("h{i}"), true, 512, g))
                .collect(),
            SchedulerConfig {
                max_running: 3,
                max_outgoing_per_host: 1,
                max_incoming_per_host: 1,
                bandwidth: Some(Rate(CAP)),
            },
        );
        let c = Cluster::start(spec, None).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = watch(
            c.hosts.values().cloned().collect(),
            destination.clone(),
            stop.clone(),
        );
        let mut runs = tokio::task::JoinSet::new();
        for (g, to) in &destination {
            let (client, coord, g, to) = (
                c.client.clone(),
                c.coordinator("c1"),
                g.clone(),
                to.clone(),
            );
            runs.spawn(async move {
                let mut queued = Vec::new();
                let opts = MigrateOptions {
                    streams: Some(1),
                    ..Default::default()
                };
                let r = request_migration(&client, &coord, &g, None, &to, opts, |r| {
                    if let Response::Queued {
                        position, reason, ..
                    } = r
                    {
                        queued.push((*position, reason.clone()));
                    }
                })
                .await;
                (g, r, queued)
            });
        }
        // While they run: `ferry status` lists the queue, each with its
        // place and what it waits for, and the gauges count it.
        let until = Instant::now() + Duration::from_secs(30);
        let listed = loop {
            let Response::Status { migrations } = call(&c, Request::Status { id: None }).await
            else {
                panic!("status")
            };
            let q: Vec<_> = migrations
                .into_iter()
                .filter(|r| r.state == MigrationState::Queued)
                .collect();
            if q.len() >= 10 || Instant::now() > until {
                break q;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            listed.len() >= 10,
            "expected at least 10 migrations listed as queued early on, saw {}",
            listed.len()
        );
        assert!(
            listed.iter().all(|r| r
                .waiting
                .as_deref()
                .is_some_and(|w| w.contains(" in line: ") && w.contains("scheduler."))),
            "each queued migration says its place and the limit it waits on: {:?}",
            listed.iter().map(|r| &r.waiting).collect::<Vec<_>>()
        );
        assert!(gauge(&c, "ferry_coordinator_migrations_queued") >= 1);

        let mut queued_first = 0;
        while let Some(done) = runs.join_next().await {
            let (g, r, queued) = done.unwrap();
            let stats = r.unwrap_or_else(|e| panic!("{g}: {e}"));
            assert_eq!(stats.result, MigrationResult::Completed, "{g}: {:?}", stats.error);
            assert_eq!(
                stats.bandwidth_limit,
                Some(CAP),
                "{g} ran under the scheduler's bandwidth"
            );
            if let Some((_, reason)) = queued.first() {
                queued_first += 1;
                assert!(reason.contains("scheduler."), "{g}: {reason}");
            }
        }
        stop.store(true, Ordering::Relaxed);
        let peaks = watcher.join().unwrap();
        eprintln!("seen by the hosts: {peaks:?}; {queued_first} of 20 queued first");
        assert!(
            queued_first >= 17,
            "at most 3 can start at once, so at least 17 of 20 must queue first; {queued_first} did"
        );
        assert!(
            peaks.cluster <= 3,
            "the hosts sent {} guests at once, over max_running 3",
            peaks.cluster
        );
        for (dir, seen) in [("leaving", &peaks.outgoing), ("arriving at", &peaks.incoming)] {
            for (h, n) in seen {
                assert!(*n <= 1, "{n} migrations at once {dir} {h}, over the limit of 1: {peaks:?}");
            }
        }
        assert!(
            peaks.cluster >= 2,
            "migrations should have run side by side (the limits let 3); the hosts never saw more than {}",
            peaks.cluster
        );
        for (g, to) in &destination {
            let moved = c.host(to).guest(g).unwrap_or_else(|| panic!("{g} runs on {to}"));
            assert_eq!(moved.run_state(), RunState::Running);
        }
        assert_eq!(gauge(&c, "ferry_coordinator_migrations_queued"), 0);
        assert_eq!(gauge(&c, "ferry_coordinator_migrations_running"), 0);
    });
}

/// A queued migration can be cancelled: it never starts, and its guest
/// stays where it was. A second migration of a guest already being moved is
/// refused, naming the first.
#[test]
fn a_queued_migration_is_cancelled_before_it_starts_and_a_guest_moves_once_at_a_time() {
    rt().block_on(async {
        let spec = site(
            vec![
                host(
                    "a",
                    true,
                    512,
                    vec![
                        guest("first", 16, EncryptionMode::Opportunistic),
                        guest("second", 8, EncryptionMode::Opportunistic),
                    ],
                ),
                host("b", true, 512, vec![]),
            ],
            SchedulerConfig {
                max_running: 1,
                bandwidth: Some(Rate(8 << 20)),
                ..Default::default()
            },
        );
        let c = Cluster::start(spec, None).await.unwrap();
        let (client, coord) = (c.client.clone(), c.coordinator("c1"));
        let (started, mut on_start) = tokio::sync::mpsc::unbounded_channel();
        let first = tokio::spawn(async move {
            request_migration(
                &client,
                &coord,
                "first",
                None,
                "b",
                Default::default(),
                |r| {
                    if let Response::Accepted { .. } = r {
                        let _ = started.send(());
                    }
                },
            )
            .await
        });
        // 16 MiB at 8 MiB/s: it runs for some two seconds from here.
        tokio::time::timeout(Duration::from_secs(30), on_start.recv())
            .await
            .expect("the first migration starts at once")
            .unwrap();
        let (client, coord) = (c.client.clone(), c.coordinator("c1"));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let second = tokio::spawn(async move {
            request_migration(
                &client,
                &coord,
                "second",
                None,
                "b",
                Default::default(),
                |r| {
                    if let Response::Queued { id, .. } = r {
                        let _ = tx.send(*id);
                    }
                },
            )
            .await
        });
        let id = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the second migration is queued behind the first")
            .unwrap();
        // The same guest again, while it is queued: refused.
        let again = moved(&c, "second", "b").await.unwrap_err().to_string();
        assert!(
            again.contains("already being moved by migration") && again.contains(&id.to_string()),
            "{again}"
        );
        let Response::Resolved { message } = call(&c, Request::Cancel { id }).await else {
            panic!("cancel")
        };
        assert!(message.contains("queued and will not start"), "{message}");
        let e = second.await.unwrap().unwrap_err().to_string();
        assert!(e.contains("while queued"), "{e}");
        let s = first.await.unwrap().unwrap();
        assert_eq!(s.result, MigrationResult::Completed, "{:?}", s.error);
        assert!(c.host("a").guest("second").is_some(), "second stayed on a");
        let Response::Status { migrations } = call(&c, Request::Status { id: Some(id) }).await
        else {
            panic!("status")
        };
        assert_eq!(migrations[0].state, MigrationState::Cancelled);
    });
}

/// `ferry drain`: every guest leaves the host, the one whose encryption is
/// required to the host that can encrypt, no host takes more than its
/// memory; the drained host is cordoned (a migration to it is refused,
/// naming the way out) until uncordoned.
#[test]
fn drain_empties_a_host_within_capacity_and_encryption_and_cordons_it() {
    rt().block_on(async {
        let spec = site(
            vec![
                host(
                    "busy",
                    true,
                    512,
                    vec![
                        guest("secret", 32, EncryptionMode::Required),
                        guest("web-1", 48, EncryptionMode::Opportunistic),
                        guest("web-2", 48, EncryptionMode::Opportunistic),
                        guest("batch", 64, EncryptionMode::Disabled),
                    ],
                ),
                // Cannot encrypt: may take anything but the secret, and
                // has the most room when the secret's turn comes (largest
                // guests are placed first: batch, web-1 here, web-2 to
                // crypto); crypto then has exactly the secret's 32 MiB.
                host("plain", false, 176, vec![]),
                host("crypto", true, 80, vec![]),
            ],
            SchedulerConfig {
                max_outgoing_per_host: 2,
                ..Default::default()
            },
        );
        let c = Cluster::start(spec, None).await.unwrap();
        let r = c.coordinator("c1");
        let req = Request::Drain {
            host: "busy".into(),
            options: MigrateOptions {
                streams: Some(1),
                ..Default::default()
            },
        };
        let mut x = c.client.open(&r.name, r.addr, &req).await.unwrap();
        let mut plan = None;
        let mut moved_events = 0;
        let end = loop {
            match x.next_within(Duration::from_secs(120)).await.unwrap() {
                Response::DrainPlan {
                    moves, unplaced, ..
                } => {
                    assert!(unplaced.is_empty(), "{unplaced:?}");
                    plan = Some(moves);
                }
                Response::DrainMoved(_) => moved_events += 1,
                Response::Heartbeat => {}
                end @ Response::Drained { .. } => break end,
                other => panic!("unexpected {other:?}"),
            }
        };
        let Response::Drained {
            outcomes,
            remaining,
            ..
        } = end
        else {
            unreachable!()
        };
        let plan = plan.expect("the plan comes first");
        assert_eq!(plan.len(), 4);
        assert_eq!(moved_events, 4);
        assert!(remaining.is_empty(), "busy still runs {remaining:?}");
        for o in &outcomes {
            assert!(o.completed, "{o:?}");
            let g = c
                .host(&o.destination)
                .guest(&o.guest)
                .unwrap_or_else(|| panic!("{} runs on {}", o.guest, o.destination));
            assert_eq!(g.run_state(), RunState::Running);
        }
        let to = |g: &str| {
            outcomes
                .iter()
                .find(|o| o.guest == g)
                .unwrap()
                .destination
                .clone()
        };
        assert_eq!(
            to("secret"),
            "crypto",
            "the required guest goes where it can be encrypted"
        );
        let Response::Hosts { hosts, .. } = call(&c, Request::Hosts).await else {
            panic!("hosts")
        };
        for h in &hosts {
            let caps = h.capabilities.as_ref().unwrap();
            let used: u64 = caps.guests.iter().map(|g| g.info.memory).sum();
            assert!(
                used <= caps.memory_capacity,
                "{} holds {used} of {}",
                h.name,
                caps.memory_capacity
            );
            assert_eq!(h.cordoned, h.name == "busy", "{}", h.name);
        }
        // Cordoned: nothing goes back until uncordoned.
        let back = moved(&c, "web-1", "busy").await.unwrap_err().to_string();
        assert!(
            back.contains("cordoned") && back.contains("ferry uncordon busy"),
            "{back}"
        );
        let Response::Resolved { message } = call(
            &c,
            Request::Uncordon {
                host: "busy".into(),
            },
        )
        .await
        else {
            panic!("uncordon")
        };
        assert!(message.contains("takes guests again"), "{message}");
        let back = moved(&c, "web-1", "busy").await.unwrap();
        assert_eq!(back.result, MigrationResult::Completed, "{:?}", back.error);
    });
}
