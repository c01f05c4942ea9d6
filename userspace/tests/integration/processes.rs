//! The `ferry` binary itself: daemons as real processes, one killed with
//! SIGKILL mid-migration; CLI errors.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ferry::{
    control::{
        Request, Response, Role, TlsFiles,
        wire::{MigrateOptions, MigrationState},
    },
    coordinator::{Coordinator, CoordinatorConfig, config::HostEntry, request_migration},
    engine::{MigrationResult, Phase},
    protocol::Limits,
};

use crate::relay::{AfterLimit, Relay};

pub(crate) const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

pub(crate) struct Daemon(pub(crate) Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on, never one this process handed out
/// before: the kernel may give a just-closed ephemeral port out again, and
/// CI once saw host a's migration port handed to host b too.
pub(crate) fn free_port() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
    panic!("no loopback port not handed out before in 1000 tries");
}

pub(crate) fn wait_listening(addr: SocketAddr) {
    // Generous: a host that launches QEMU first, on two cores shared with
    // the whole suite, once took over 30 s here.
    let end = Instant::now() + Duration::from_secs(90);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < end, "nothing listens on {addr} after 90 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn write_host(
    dir: &Path,
    name: &str,
    control: SocketAddr,
    migration: SocketAddr,
    guests: &str,
) -> PathBuf {
    write_host_with(dir, name, control, migration, guests, "")
}

/// [`write_host`] with `extra` YAML lines appended.
fn write_host_with(
    dir: &Path,
    name: &str,
    control: SocketAddr,
    migration: SocketAddr,
    guests: &str,
    extra: &str,
) -> PathBuf {
    let p = dir.join(format!("host-{name}.yaml"));
    std::fs::write(
        &p,
        format!(
            "{extra}name: {name}\ncontrol: {control}\nmigration: {migration}\n\
             tls: {{ ca: ca.pem, cert: {name}.pem, key: {name}-key.pem }}\n\
                          memory_capacity: 1GiB\ncoordinators: [c1]\nguests: {guests}\n\
             metrics: {{ listen: \"127.0.0.1:{}\" }}\nstate_dir: {}\n",
            free_port().port(),
            dir.join(format!("{name}-state")).display()
        ),
    )
    .unwrap();
    p
}

/// Waits up to `secs` for `needle` in the log at `path`.
async fn wait_log(path: &Path, needle: &str, secs: u64) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(
            Instant::now() < until,
            "{} never said {needle:?} within {secs} s",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Kills a daemon (SIGKILL) and reaps it.
fn kill(d: &mut Daemon) {
    d.0.kill().unwrap();
    d.0.wait().unwrap();
}

pub(crate) fn spawn_host(cfg: &Path, log: &Path) -> Daemon {
    let out = std::fs::File::create(log).unwrap();
    Daemon(
        Command::new(FERRY)
            .args(["host", "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap(),
    )
}

/// A fresh directory for one test, with certificates for coordinator c1,
/// hosts a and b and client admin.
fn site_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    ferry::certs::issue(
        &dir,
        &[
            (Role::Coordinator, "c1".into()),
            (Role::Host, "a".into()),
            (Role::Host, "b".into()),
            (Role::Client, "admin".into()),
        ],
    )
    .unwrap();
    dir
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// What a test talks through: the admin client and coordinator c1.
struct Admin {
    client: ferry::control::Client,
    coord: ferry::coordinator::CoordinatorRef,
}

impl Admin {
    /// Starts c1 (of hosts a and b) in this runtime.
    async fn start(dir: &Path, ca: SocketAddr, cb: SocketAddr) -> Admin {
        let (_, addr) = coordinator_c1(dir, ca, cb).await;
        Admin {
            client: ferry::control::Client::new(&TlsFiles::in_dir(dir, "admin")).unwrap(),
            coord: ferry::coordinator::CoordinatorRef {
                name: "c1".into(),
                addr,
            },
        }
    }

    async fn call(&self, req: &Request) -> Response {
        self.client
            .call("c1", self.coord.addr, req, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{} to c1 at {}: {e}", req.op(), self.coord.addr))
    }

    /// `ferry migrate GUEST --to DEST` with the coordinator's defaults.
    async fn migrate(
        &self,
        guest: &str,
        to: &str,
    ) -> Result<Box<ferry::engine::MigrationStats>, ferry::control::ControlError> {
        request_migration(
            &self.client,
            &self.coord,
            guest,
            None,
            to,
            MigrateOptions::default(),
            |_| {},
        )
        .await
    }

    async fn hosts(&self) -> Vec<ferry::control::wire::HostStatus> {
        match self.call(&Request::Hosts).await {
            Response::Hosts { hosts, .. } => hosts,
            other => panic!("hosts: {other:?}"),
        }
    }

    /// `ferry resolve`: what it did, or why it refused.
    async fn resolve(
        &self,
        guest: &str,
        keep: Option<&str>,
        force: bool,
    ) -> Result<String, String> {
        let req = Request::Resolve {
            guest: guest.into(),
            keep: keep.map(str::to_string),
            force,
        };
        match self
            .client
            .call("c1", self.coord.addr, &req, Duration::from_secs(60))
            .await
        {
            Ok(Response::Resolved { message }) => Ok(message),
            Ok(other) => panic!("resolve {guest}: {other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Guests the coordinator finds listed on more than one host.
    async fn duplicates(&self) -> Vec<ferry::control::wire::Duplicate> {
        match self.call(&Request::Hosts).await {
            Response::Hosts { duplicates, .. } => duplicates,
            other => panic!("hosts: {other:?}"),
        }
    }

    async fn records(&self) -> Vec<ferry::control::wire::MigrationRecord> {
        match self.call(&Request::Status { id: None }).await {
            Response::Status { migrations } => migrations,
            other => panic!("status: {other:?}"),
        }
    }
}

/// [`spawn_host`] with at most `nofile` file descriptors.
fn spawn_host_with_fd_limit(cfg: &Path, log: &Path, nofile: u64) -> Daemon {
    let mut cmd = Command::new(FERRY);
    cmd.args(["host", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    // SAFETY: setrlimit is async-signal-safe; it runs in the child between
    // fork and exec and touches nothing else.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Daemon(cmd.spawn().unwrap())
}

/// Coordinator "c1" of hosts a and b (control ports `ca`, `cb`), serving
/// on a loopback port in this runtime; certificates in `dir`.
async fn coordinator_c1(
    dir: &Path,
    ca: SocketAddr,
    cb: SocketAddr,
) -> (std::sync::Arc<Coordinator>, SocketAddr) {
    coordinator_c1_keyed(dir, ca, cb, None).await
}

/// [`coordinator_c1`] whose migration keys come from `keys`.
async fn coordinator_c1_keyed(
    dir: &Path,
    ca: SocketAddr,
    cb: SocketAddr,
    keys: Option<ferry::coordinator::KeySource>,
) -> (std::sync::Arc<Coordinator>, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let host = |name: &str, control| HostEntry {
        name: name.into(),
        control,
        encryption: true,
    };
    let cc = CoordinatorConfig {
        name: "c1".into(),
        listen: addr,
        tls: TlsFiles::in_dir(dir, "c1"),
        hosts: vec![host("a", ca), host("b", cb)],
        peers: vec![],
        clients: vec![],
        defaults: Default::default(),
        scheduler: Default::default(),
        store: Default::default(),
        metrics: None,
        state_dir: None,
    };
    let tls = ferry::control::tls::server_config(&cc.tls).unwrap();
    let coord = match keys {
        Some(k) => Coordinator::with_key_source(cc, k).unwrap(),
        None => Coordinator::new(cc).unwrap(),
    };
    tokio::spawn(coord.clone().serve_on(listener, tls));
    (coord, addr)
}

/// Where `needle` occurs in the readable, writable memory of process
/// `pid` (heap, stacks, anonymous maps): (mapping, offset) of each hit.
fn find_in_memory(pid: u32, needle: &[u8]) -> Vec<(String, u64)> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut hits = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        let name = line
            .split_whitespace()
            .nth(5)
            .unwrap_or("[anon]")
            .to_string();
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).unwrap(),
            u64::from_str_radix(hi, 16).unwrap(),
        );
        let mut at = lo;
        let mut buf = vec![0u8; 1 << 20];
        while at < hi {
            let n = ((hi - at) as usize).min(buf.len());
            // Guard pages and the like cannot be read: skip them.
            let Ok(got) = mem.read_at(&mut buf[..n], at) else {
                at += n as u64;
                continue;
            };
            if got == 0 {
                break;
            }
            for i in buf[..got]
                .windows(needle.len())
                .enumerate()
                .filter(|(_, w)| *w == needle)
                .map(|(i, _)| i)
            {
                hits.push((name.clone(), at + i as u64));
            }
            // Overlap so a needle across two reads is found.
            at += (got.saturating_sub(needle.len() - 1)).max(1) as u64;
        }
    }
    hits
}

#[test]
fn destination_process_killed_mid_pass_leaves_the_guest_on_the_source() {
    let dir = site_dir("proc");
    let (ca, ma, cb, mb) = (free_port(), free_port(), free_port(), free_port());
    let guests = "[{ name: g1, memory: 256MiB, vcpus: 1, workload: { kind: key-value, gets_per_second: 5000, sets_per_second: 5000 } }]";
    let a = spawn_host(&write_host(&dir, "a", ca, ma, guests), &dir.join("a.log"));
    let mut b = spawn_host(&write_host(&dir, "b", cb, mb, "[]"), &dir.join("b.log"));
    wait_listening(ca);
    wait_listening(cb);

    let rt = runtime();
    rt.block_on(async {
        let (_, addr) = coordinator_c1(&dir, ca, cb).await;
        let client = ferry::control::Client::new(&TlsFiles::in_dir(&dir, "admin")).unwrap();
        let cref = ferry::coordinator::CoordinatorRef {
            name: "c1".into(),
            addr,
        };
        // Slow enough that the first pass is still running when b dies.
        let opts = MigrateOptions {
            streams: Some(2),
            limits: Some(Limits {
                bandwidth: Some(32 << 20),
                ..Limits::default()
            }),
            ..Default::default()
        };
        let mut killed = false;
        let stats = request_migration(&client, &cref, "g1", None, "b", opts, |r| {
            if let Response::Progress(p) = r
                && p.phase == Phase::PreCopy
                && p.transferred_bytes > 16 << 20
                && !killed
            {
                b.0.kill().unwrap(); // SIGKILL
                killed = true;
            }
        })
        .await
        .unwrap();
        assert!(killed, "the destination was killed mid-pass");
        assert_eq!(stats.result, MigrationResult::Failed);
        let err = stats.error.clone().unwrap();
        assert!(err.starts_with("stream "), "{err}");
        // g1 still runs on a; b is gone.
        let Response::Hosts { hosts, .. } = client
            .call("c1", addr, &Request::Hosts, Duration::from_secs(20))
            .await
            .unwrap()
        else {
            panic!()
        };
        let a_caps = hosts
            .iter()
            .find(|h| h.name == "a")
            .unwrap()
            .capabilities
            .clone()
            .unwrap();
        let g1 = a_caps
            .guests
            .iter()
            .find(|g| g.info.name == "g1")
            .expect("g1 is still on a");
        assert_eq!(g1.info.state, ferry::guest::RunState::Running);
        assert!(!hosts.iter().find(|h| h.name == "b").unwrap().reachable);
        // Its workload keeps going: ops advance between two looks.
        let ops = g1.info.ops;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Response::Hosts { hosts, .. } = client
            .call("c1", addr, &Request::Hosts, Duration::from_secs(20))
            .await
            .unwrap()
        else {
            panic!()
        };
        let later = hosts[0]
            .capabilities
            .as_ref()
            .unwrap()
            .guests
            .iter()
            .find(|g| g.info.name == "g1")
            .unwrap()
            .info
            .ops;
        assert!(later > ops, "g1 works on a after the failed move");
    });
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_source_killed_after_go_is_recorded_as_the_completed_migration_it_was() {
    // The destination resumed the guest; the source died before it could
    // report. What happened to the guest is that it moved: the client and
    // the coordinator's record say completed, not failed.
    let dir = site_dir("after-go");
    let (ca, ma, cb, mb) = (free_port(), free_port(), free_port(), free_port());
    // b's migration port is reached through a relay that swallows RESUMED,
    // so the source (alive) would wait for it: the window to kill it in.
    let relay = Relay::new(mb);
    relay.after_ready(0, AfterLimit::BlackHole);
    let guests = "[{ name: g1, memory: 64MiB, vcpus: 1, encryption: required, \
                  workload: { kind: key-value, gets_per_second: 1000, sets_per_second: 1000 } }]";
    let mut a = spawn_host(&write_host(&dir, "a", ca, ma, guests), &dir.join("a.log"));
    let advertise = format!("advertise: {}\n", relay.addr());
    let b_cfg = write_host_with(&dir, "b", cb, mb, "[]", &advertise);
    let _b = spawn_host(&b_cfg, &dir.join("b.log"));
    wait_listening(ca);
    wait_listening(cb);
    runtime().block_on(async {
        let admin = Admin::start(&dir, ca, cb).await;
        let (client, coord) = (admin.client.clone(), admin.coord.clone());
        let moving = tokio::spawn(async move {
            request_migration(&client, &coord, "g1", None, "b", Default::default(), |_| {}).await
        });
        let until = Instant::now() + Duration::from_secs(60);
        let b_log = dir.join("b.log");
        while !std::fs::read_to_string(&b_log)
            .unwrap_or_default()
            .contains("guest resumed here")
        {
            assert!(
                Instant::now() < until && !moving.is_finished(),
                "b never resumed g1 (or the migration ended first: {:?})",
                moving.is_finished()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        a.0.kill().unwrap(); // SIGKILL, while it waits for RESUMED
        let stats = moving
            .await
            .unwrap()
            .expect("the client hears the migration's end, not an error");
        assert_eq!(
            stats.result,
            MigrationResult::Completed,
            "g1 runs on b, so the migration completed: {:?}",
            stats.error
        );
        let note = stats.note.clone().unwrap_or_default();
        assert!(
            note.contains("after the switch-over") && note.contains("runs there"),
            "the note says why the figures are missing: {note:?}"
        );
        let rec = admin.records().await;
        assert_eq!(rec.len(), 1, "{rec:?}");
        assert_eq!(
            rec[0].state,
            ferry::control::wire::MigrationState::Completed,
            "the coordinator's record: {:?}",
            rec[0].error
        );
        let g1 = guest_on(&admin.hosts().await, "b", "g1").expect("g1 is listed on b");
        assert_eq!(g1.state, ferry::guest::RunState::Running);

        // Issue 13.1: a restarted a must not boot g1 from its configuration
        // again. Its journal says it released g1 to b before GO.
        a.0.wait().unwrap();
        let a_cfg = dir.join("host-a.yaml");
        a = spawn_host(&a_cfg, &dir.join("a2.log"));
        wait_listening(ca);
        let hosts = admin.hosts().await;
        assert!(
            guest_on(&hosts, "a", "g1").is_none(),
            "a restarted after GO booted g1 again: it runs on a and on b"
        );
        assert!(guest_on(&hosts, "b", "g1").is_some());
        let log = std::fs::read_to_string(dir.join("a2.log")).unwrap();
        assert!(
            log.contains("guest migrated away from this host: not starting it"),
            "a says why g1 is not started: {log}"
        );
        assert!(admin.duplicates().await.is_empty());

        // Without its journal (a wiped state directory) a boots g1 afresh.
        // The coordinator's record says g1 moved to b, which runs the copy
        // that arrived in that migration: it discards a's fresh boot on its
        // own, and the discard is journaled on a.
        kill(&mut a);
        std::fs::remove_file(dir.join("a-state/journal.jsonl")).unwrap();
        a = spawn_host(&a_cfg, &dir.join("a3.log"));
        wait_listening(ca);
        let until = Instant::now() + Duration::from_secs(40);
        while guest_on(&admin.hosts().await, "a", "g1").is_some() {
            assert!(
                Instant::now() < until,
                "the coordinator never discarded a's fresh boot of g1, which moved to b"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            guest_on(&admin.hosts().await, "b", "g1").map(|g| g.state),
            Some(ferry::guest::RunState::Running),
            "b's copy, the one that moved, still runs"
        );
        let log = std::fs::read_to_string(dir.join("a3.log")).unwrap();
        assert!(
            log.contains("guest booted") && log.contains("discarded by a coordinator"),
            "a booted g1 and then dropped it on the coordinator's word: {log}"
        );
        assert!(admin.duplicates().await.is_empty());
        kill(&mut a);
        a = spawn_host(&a_cfg, &dir.join("a4.log"));
        wait_listening(ca);
        assert!(guest_on(&admin.hosts().await, "a", "g1").is_none());
    });
    drop(a);
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_guest_configured_on_two_hosts_is_reported_and_resolve_keeps_the_named_copy() {
    // Nothing on record says which copy is the guest: the coordinator
    // reports the duplicate, and only an operator's --keep picks one.
    let dir = site_dir("two-configs");
    let (ca, ma, cb, mb) = (free_port(), free_port(), free_port(), free_port());
    let guests = "[{ name: g2, memory: 16MiB, vcpus: 1 }]";
    let a = spawn_host(&write_host(&dir, "a", ca, ma, guests), &dir.join("a.log"));
    let b_cfg = write_host(&dir, "b", cb, mb, guests);
    let mut b = spawn_host(&b_cfg, &dir.join("b.log"));
    wait_listening(ca);
    wait_listening(cb);
    runtime().block_on(async {
        let admin = Admin::start(&dir, ca, cb).await;
        let dups = admin.duplicates().await;
        assert_eq!(dups.len(), 1, "{dups:?}");
        assert_eq!(dups[0].guest, "g2");
        assert_eq!(dups[0].hosts, vec!["a".to_string(), "b".to_string()]);
        let e = admin.resolve("g2", None, false).await.unwrap_err();
        assert!(e.contains("--keep"), "resolve asks which copy to keep: {e}");
        let e = admin.resolve("g2", Some("c"), false).await.unwrap_err();
        assert!(e.contains("c does not list g2"), "{e}");
        let done = admin.resolve("g2", Some("a"), false).await.unwrap();
        assert!(done.contains("kept g2 on a"), "{done}");
        let hosts = admin.hosts().await;
        assert!(guest_on(&hosts, "b", "g2").is_none(), "b's copy is gone");
        assert_eq!(
            guest_on(&hosts, "a", "g2").map(|g| g.state),
            Some(ferry::guest::RunState::Running)
        );
        assert!(admin.duplicates().await.is_empty());
        // The discard is journaled: b does not boot g2 after a restart.
        kill(&mut b);
        b = spawn_host(&b_cfg, &dir.join("b2.log"));
        wait_listening(cb);
        assert!(guest_on(&admin.hosts().await, "b", "g2").is_none());
        assert!(admin.duplicates().await.is_empty());
    });
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_switch_over_cut_by_a_destination_kill_is_resolved_from_what_the_destination_journaled() {
    // Issue 13.2: b killed right after READY, then right after GO. Each
    // time the source cannot learn the outcome and keeps the guest paused;
    // `ferry resolve` asks the restarted b, whose journal remembers what
    // it decided, and acts only on a proof.
    let dir = site_dir("resolve");
    let (ca, ma, cb, mb) = (free_port(), free_port(), free_port(), free_port());
    let relay = Relay::new(mb);
    let guests = "[{ name: g1, memory: 64MiB, vcpus: 1, workload: { kind: key-value, gets_per_second: 1000, sets_per_second: 1000 } }, \
                  { name: g2, memory: 64MiB, vcpus: 1, workload: { kind: key-value, gets_per_second: 1000, sets_per_second: 1000 } }]";
    let _a = spawn_host(&write_host(&dir, "a", ca, ma, guests), &dir.join("a.log"));
    let advertise = format!("advertise: {}\n", relay.addr());
    let b_cfg = write_host_with(&dir, "b", cb, mb, "[]", &advertise);
    let mut b = spawn_host(&b_cfg, &dir.join("b.log"));
    wait_listening(ca);
    wait_listening(cb);
    let opts = MigrateOptions {
        limits: Some(Limits {
            switchover_timeout: Duration::from_secs(2),
            ..Limits::default()
        }),
        ..Default::default()
    };
    runtime().block_on(async {
        let admin = Admin::start(&dir, ca, cb).await;
        let migrate = |guest: &'static str| {
            let (client, coord, opts) = (admin.client.clone(), admin.coord.clone(), opts.clone());
            tokio::spawn(async move {
                request_migration(&client, &coord, guest, None, "b", opts, |_| {}).await
            })
        };
        let state_on = |hosts: &[ferry::control::wire::HostStatus], h: &str, g: &str| {
            guest_on(hosts, h, g).map(|g| g.state)
        };

        // READY reaches a, then the link goes silent (GO never arrives)
        // and b dies.
        relay.after_ready(0, AfterLimit::Freeze);
        let moving = migrate("g1");
        let until = Instant::now() + Duration::from_secs(60);
        while !relay.limit_reached() {
            assert!(
                Instant::now() < until && !moving.is_finished(),
                "READY never passed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        kill(&mut b);
        let stats = moving
            .await
            .unwrap()
            .expect("the migration ends with its figures");
        let err = stats.error.clone().unwrap_or_default();
        assert!(
            stats.result == MigrationResult::Failed && err.contains("ferry resolve"),
            "the source cannot tell and says what to do: {err}"
        );
        let hosts = admin.hosts().await;
        assert_eq!(
            state_on(&hosts, "a", "g1"),
            Some(ferry::guest::RunState::Paused),
            "g1 stays stunned on a, never on two hosts"
        );
        let e = admin.resolve("g1", None, false).await.unwrap_err();
        assert!(
            e.contains("cannot ask b") && e.contains("--force"),
            "with b down, resolve refuses: {e}"
        );
        b = spawn_host(&b_cfg, &dir.join("b2.log"));
        wait_listening(cb);
        let done = admin.resolve("g1", None, false).await.unwrap();
        assert!(
            done.contains("b discarded its copy") && done.contains("resumed g1 on a"),
            "b's journal: READY but no GO, so discarded: {done}"
        );
        let hosts = admin.hosts().await;
        let g1 = guest_on(&hosts, "a", "g1").expect("g1 on a");
        assert_eq!(g1.state, ferry::guest::RunState::Running);
        assert!(guest_on(&hosts, "b", "g1").is_none());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let later = guest_on(&admin.hosts().await, "a", "g1").unwrap().ops;
        assert!(
            later > g1.ops,
            "g1 works on a again ({} then {later} ops)",
            g1.ops
        );
        let rec = admin.records().await;
        let r = rec.iter().find(|r| r.guest == "g1").unwrap();
        assert!(
            r.error.as_deref().unwrap_or("").contains("resolved"),
            "the record says how it ended: {:?}",
            r.error
        );

        // GO reaches b, which resumes g2 and dies before a hears RESUMED.
        // b's journal says resumed: the copy paused on a is stale, and
        // resolve says so instead of resuming it.
        relay.after_ready(0, AfterLimit::BlackHole);
        let moving = migrate("g2");
        wait_log(&dir.join("b2.log"), "guest resumed here", 60).await;
        kill(&mut b);
        let stats = moving
            .await
            .unwrap()
            .expect("the migration ends with its figures");
        assert_eq!(stats.result, MigrationResult::Failed, "{:?}", stats.error);
        assert_eq!(
            state_on(&admin.hosts().await, "a", "g2"),
            Some(ferry::guest::RunState::Paused)
        );
        b = spawn_host(&b_cfg, &dir.join("b3.log"));
        wait_listening(cb);
        let e = admin.resolve("g2", None, false).await.unwrap_err();
        assert!(
            e.contains("b resumed g2") && e.contains("--force"),
            "b's journal says it resumed g2: resolve refuses to resume the stale copy: {e}"
        );
        let b_log = std::fs::read_to_string(dir.join("b3.log")).unwrap();
        assert!(
            b_log.contains("was lost when this host's process ended"),
            "the restarted b says g2 died with it: {b_log}"
        );
        let done = admin.resolve("g2", None, true).await.unwrap();
        assert!(
            done.contains("forced") && done.contains("resumed g2 on a"),
            "{done}"
        );
        assert_eq!(
            state_on(&admin.hosts().await, "a", "g2"),
            Some(ferry::guest::RunState::Running)
        );
    });
    drop(b);
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ferry coordinator` c1 as a process, of hosts a and b, keeping its
/// history in `dir`/c1-state.
fn spawn_coordinator(
    dir: &Path,
    listen: SocketAddr,
    ca: SocketAddr,
    cb: SocketAddr,
    log: &str,
) -> Daemon {
    let cfg = dir.join("c1.yaml");
    std::fs::write(
        &cfg,
        format!(
            "name: c1\nlisten: {listen}\ntls: {{ ca: ca.pem, cert: c1.pem, key: c1-key.pem }}\n\
             hosts:\n  - {{ name: a, control: {ca}, encryption: true }}\n  \
             - {{ name: b, control: {cb}, encryption: true }}\n\
             metrics: {{ listen: \"127.0.0.1:{}\" }}\nstate_dir: c1-state\n",
            free_port().port()
        ),
    )
    .unwrap();
    let out = std::fs::File::create(dir.join(log)).unwrap();
    let d = Daemon(
        Command::new(FERRY)
            .args(["coordinator", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    wait_listening(listen);
    d
}

/// Asks `coordinator` to move `guest` to b with `opts` and SIGKILLs it
/// once `after` bytes have moved, and reaps it. Reaped at once: until it
/// is gone, its listening socket answers a new one's readiness probe, and
/// the new one cannot bind.
async fn move_killing_the_coordinator(
    admin: &Admin,
    coordinator: &mut Daemon,
    guest: &str,
    opts: MigrateOptions,
    after: u64,
) {
    let mut killed = false;
    let r = request_migration(&admin.client, &admin.coord, guest, None, "b", opts, |r| {
        if let Response::Progress(p) = r
            && p.transferred_bytes > after
            && !killed
        {
            coordinator.0.kill().unwrap(); // SIGKILL
            killed = true;
        }
    })
    .await;
    assert!(
        killed && r.is_err(),
        "the coordinator was killed mid-move: {r:?}"
    );
    coordinator.0.wait().unwrap();
}

#[test]
fn a_restarted_coordinator_aborts_the_migration_it_left_before_ready_and_asks_for_it_again() {
    let dir = site_dir("coord-restart");
    let (ca, ma, cb, mb, cl) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let guests = "[{ name: g1, memory: 64MiB, vcpus: 1, \
                  workload: { kind: key-value, gets_per_second: 1000, sets_per_second: 1000 } }, \
                  { name: g2, memory: 32MiB, vcpus: 1, \
                  workload: { kind: key-value, gets_per_second: 1000, sets_per_second: 1000 } }]";
    let _a = spawn_host(&write_host(&dir, "a", ca, ma, guests), &dir.join("a.log"));
    let _b = spawn_host(&write_host(&dir, "b", cb, mb, "[]"), &dir.join("b.log"));
    wait_listening(ca);
    wait_listening(cb);
    let mut c1 = spawn_coordinator(&dir, cl, ca, cb, "c1.log");
    let client = ferry::control::Client::new(&TlsFiles::in_dir(&dir, "admin")).unwrap();
    let coord = ferry::coordinator::CoordinatorRef {
        name: "c1".into(),
        addr: cl,
    };
    let admin = Admin { client, coord };
    runtime().block_on(async {
        // g1 moves; then g2 starts a slow move (4 MiB/s: some 8 s) and the
        // coordinator is killed in its middle. Its host carries on alone.
        let done = admin.migrate("g1", "b").await.unwrap();
        assert_eq!(done.result, MigrationResult::Completed, "{:?}", done.error);
        let slow = MigrateOptions {
            limits: Some(Limits {
                bandwidth: Some(4 << 20),
                ..Limits::default()
            }),
            ..Default::default()
        };
        move_killing_the_coordinator(&admin, &mut c1, "g2", slow, 4 << 20).await;
        c1 = spawn_coordinator(&dir, cl, ca, cb, "c1-restarted.log");
        let recs = admin.records().await;
        let g1 = recs
            .iter()
            .find(|r| r.guest == "g1")
            .expect("g1's migration survives the restart");
        assert_eq!(g1.state, MigrationState::Completed);
        let g2 = recs
            .iter()
            .find(|r| r.guest == "g2")
            .expect("g2's migration survives the restart")
            .id;
        // Its journal record says it had not reached READY: the new run
        // aborts it (the source never stopped g2; the key died with the old
        // run) and, once g2 shows on a again, asks for the move afresh.
        let until = Instant::now() + Duration::from_secs(90);
        let retry = loop {
            let recs = admin.records().await;
            let first = recs.iter().find(|r| r.id == g2).map(|r| r.state);
            let again = recs
                .iter()
                .find(|r| r.guest == "g2" && r.id != g2 && r.state == MigrationState::Completed);
            if let (Some(MigrationState::Failed), Some(again)) = (first, again) {
                break again.clone();
            }
            assert!(
                Instant::now() < until,
                "g2's interrupted migration was never aborted and retried: {:?}",
                recs.iter().filter(|r| r.guest == "g2").collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(retry.stats.is_some(), "the retry ran as any migration does");
        let hosts = admin.hosts().await;
        assert!(guest_on(&hosts, "b", "g2").is_some() && guest_on(&hosts, "a", "g2").is_none());
        // The journal is closed, and the owner is where g2 runs.
        let journal = std::fs::read_to_string(dir.join("c1-state/journal.json")).unwrap();
        assert_eq!(journal.trim(), "[]", "every record closed: {journal}");
        let owners = std::fs::read_to_string(dir.join("c1-state/owners.json")).unwrap();
        assert!(owners.contains("\"g2\": \"b\""), "{owners}");
    });
    drop(c1);
    let _ = std::fs::remove_dir_all(&dir);
}

fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The /metrics address `write_host` gave host `name`.
fn metrics_addr(dir: &Path, name: &str) -> SocketAddr {
    let yaml = std::fs::read_to_string(dir.join(format!("host-{name}.yaml"))).unwrap();
    let at = yaml.find("listen: \"").unwrap() + "listen: \"".len();
    yaml[at..at + yaml[at..].find('"').unwrap()]
        .parse()
        .unwrap()
}

#[test]
fn floods_of_idle_connections_neither_take_a_thread_each_nor_cut_the_coordinator_off() {
    let dir = site_dir("flood");
    let (ca, ma, cb, mb) = (free_port(), free_port(), free_port(), free_port());
    let guests = "[{ name: g1, memory: 32MiB, vcpus: 1, \
                  workload: { kind: key-value, gets_per_second: 1000, sets_per_second: 1000 } }]";
    let _a = spawn_host(&write_host(&dir, "a", ca, ma, guests), &dir.join("a.log"));
    // b runs at the common 1024 descriptor limit.
    let b_cfg = write_host(&dir, "b", cb, mb, "[]");
    let b = spawn_host_with_fd_limit(&b_cfg, &dir.join("b.log"), 1024);
    wait_listening(ca);
    wait_listening(cb);
    let metrics = metrics_addr(&dir, "b");
    wait_listening(metrics);
    let before = threads(b.0.id());
    // 600 idle connections on each of b's migration and metrics ports: more
    // than its descriptors allow for both, were each one held.
    let mut flood = Vec::new();
    for port in [mb, metrics] {
        for _ in 0..600 {
            flood.push(TcpStream::connect(port).unwrap());
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let during = threads(b.0.id());
    assert!(
        during < before + 300,
        "b runs {during} threads under the flood (had {before}): expected at most the \
         handshake cap (256) more, not one per idle connection"
    );
    runtime().block_on(async {
        let admin = Admin::start(&dir, ca, cb).await;
        let hosts = admin.hosts().await;
        let hb = hosts.iter().find(|h| h.name == "b").unwrap();
        assert!(
            hb.reachable,
            "the coordinator lost b under the flood: {:?}",
            hb.error
        );
        drop(flood);
        // The idle ones gone, migrations get through again.
        let until = Instant::now() + Duration::from_secs(60);
        let stats = loop {
            let r = admin.migrate("g1", "b").await.unwrap();
            if r.result == MigrationResult::Completed || Instant::now() > until {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_eq!(
            stats.result,
            MigrationResult::Completed,
            "{:?}",
            stats.error
        );
    });
    let text = http_get(metrics, "/metrics");
    let overload = text
        .lines()
        .find(|l| l.starts_with("ferry_protocol_rejections_total{reason=\"overload\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        overload > 0,
        "refused connections are counted under reason=overload"
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn cli_reports_bad_config_and_usage_clearly() {
    let dir = std::env::temp_dir().join(format!("ferry-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("host-x.yaml");
    std::fs::write(
        &bad,
        "name: x\ncontrol: 127.0.0.1:1\nmigraton: 127.0.0.1:2\n",
    )
    .unwrap();
    let out = Command::new(FERRY)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("host-x.yaml:3:1: migraton: unknown field `migraton`"),
        "{err}"
    );
    // Valid YAML naming TLS files that are not there: refused, naming the
    // file and what to do; --syntax-only passes it.
    let no_tls = dir.join("host-y.yaml");
    std::fs::write(
        &no_tls,
        "name: y\ncontrol: 127.0.0.1:1\nmigration: 127.0.0.1:2\n\
         tls: { ca: nowhere/ca.pem, cert: nowhere/y.pem, key: nowhere/y-key.pem }\n\
         memory_capacity: 1GiB\ncoordinators: [c1]\nguests: []\n",
    )
    .unwrap();
    let out = Command::new(FERRY)
        .args(["config", "check"])
        .arg(&no_tls)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("host-y.yaml: tls: ")
            && err.contains("nowhere/ca.pem")
            && err.contains("ferry certs"),
        "missing TLS files must fail the check: {err}"
    );
    let out = Command::new(FERRY)
        .args(["config", "check", "--syntax-only"])
        .arg(&no_tls)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(FERRY)
        .args(["host", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("ferry: error: "));
    let out = Command::new(FERRY)
        .args(["migrate", "g1", "--to", "b", "--tls-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.pem"),
        "names the missing certificate: {err}"
    );
    let out = Command::new(FERRY).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ferry 0.1.0 ("));
    let out = Command::new(FERRY).arg("--help").output().unwrap();
    for cmd in [
        "demo",
        "coordinator",
        "host",
        "certs",
        "migrate",
        "status",
        "hosts",
        "config",
        "lab",
    ] {
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(cmd),
            "--help lists {cmd}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A guest's operation count as its host reports it to a coordinator.
async fn guest_ops(
    client: &ferry::control::Client,
    host: &str,
    addr: SocketAddr,
    guest: &str,
) -> u64 {
    let Response::Capabilities(caps) = client
        .call(host, addr, &Request::Capabilities, Duration::from_secs(20))
        .await
        .unwrap()
    else {
        panic!("{host} did not answer with its capabilities")
    };
    caps.guests
        .iter()
        .find(|g| g.info.name == guest)
        .unwrap_or_else(|| panic!("{guest} is not on {host}"))
        .info
        .ops
}

#[test]
fn a_guest_keeps_its_rate_after_its_host_was_frozen() {
    // The synthetic guest's pace must not owe the time its host was frozen
    // (SIGSTOP, a loaded machine): the rate limiter once added what it
    // missed to its debt and ran away to millions of ops/s.
    let dir = std::env::temp_dir().join(format!("ferry-stall-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    ferry::certs::issue(
        &dir,
        &[(Role::Coordinator, "c1".into()), (Role::Host, "a".into())],
    )
    .unwrap();
    let (ca, ma) = (free_port(), free_port());
    const RATE: u64 = 2000;
    let guests = format!(
        "[{{ name: g1, memory: 64MiB, vcpus: 2, workload: {{ kind: key-value, gets_per_second: {}, sets_per_second: {} }} }}]",
        RATE / 2,
        RATE / 2
    );
    let a = spawn_host(&write_host(&dir, "a", ca, ma, &guests), &dir.join("a.log"));
    wait_listening(ca);
    let pid = nix::unistd::Pid::from_raw(a.0.id() as i32);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = ferry::control::Client::new(&TlsFiles::in_dir(&dir, "c1")).unwrap();
        for round in 0..4 {
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
            // Measured over 2 s of running: the rate, plus at most the
            // catch-up burst (100 ms per vCPU) and rounding.
            let t0 = Instant::now();
            let before = guest_ops(&client, "a", ca, "g1").await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = guest_ops(&client, "a", ca, "g1").await;
            let secs = t0.elapsed().as_secs_f64();
            let ops = after - before;
            let most = (RATE as f64 * (secs + 0.25)) as u64;
            assert!(
                ops <= most,
                "round {round}: {RATE} ops/s for {secs:.2} s after a 1.5 s freeze: \
                 expected at most {most} ops, the guest ran {ops} ({:.0} ops/s)",
                ops as f64 / secs
            );
            assert!(
                ops > 0,
                "round {round}: the guest runs after its host thawed"
            );
        }
    });
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

/// CPU seconds (user + system) the process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

#[test]
fn a_host_out_of_file_descriptors_waits_instead_of_spinning_and_recovers() {
    let dir = std::env::temp_dir().join(format!("ferry-fds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    ferry::certs::issue(
        &dir,
        &[(Role::Coordinator, "c1".into()), (Role::Host, "a".into())],
    )
    .unwrap();
    let (ca, ma) = (free_port(), free_port());
    let cfg = write_host(&dir, "a", ca, ma, "[]");
    let host = spawn_host_with_fd_limit(&cfg, &dir.join("a.log"), 96);
    wait_listening(ca);
    let pid = host.0.id();
    // More connections than the host has descriptors: it accepts until
    // EMFILE, and the rest wait in the backlog. Each accepted one waits for
    // its TLS handshake (up to 10 s) and is then dropped.
    let hold: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(ca).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(pid) - c0;
    let wall = t0.elapsed().as_secs_f64();
    assert!(
        used < 0.3 * wall,
        "a host out of descriptors used {used:.2} CPU s in {wall:.2} s \
         (expected under {:.2}: a listener spinning on failed accepts uses a core)",
        0.3 * wall
    );
    let log = std::fs::read_to_string(dir.join("a.log")).unwrap();
    assert!(
        log.contains("accept failed; pausing the listener"),
        "the host says why it pauses: {log}"
    );
    drop(hold);
    // Once the held connections are gone, it serves its coordinator again.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = ferry::control::Client::new(&TlsFiles::in_dir(&dir, "c1")).unwrap();
        let mut last = String::new();
        for _ in 0..40 {
            match client
                .call("a", ca, &Request::Capabilities, Duration::from_secs(5))
                .await
            {
                Ok(Response::Capabilities(_)) => return,
                Ok(other) => last = format!("{other:?}"),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("the host did not serve its coordinator again within 20 s: {last}");
    });
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_frozen_source_is_reported_within_the_silence_limit_and_keeps_its_guest() {
    // The source host is frozen (SIGSTOP) mid-pass. Its coordinator hears
    // nothing, not even a heartbeat, and gives up on it within
    // SOURCE_SILENCE instead of waiting for ever; the destination is told
    // to discard; once thawed, the source keeps the guest.
    let dir = site_dir("freeze");
    let (ca, ma, cb, mb) = (free_port(), free_port(), free_port(), free_port());
    let guests = "[{ name: g1, memory: 256MiB, vcpus: 1, workload: { kind: key-value, gets_per_second: 5000, sets_per_second: 5000 } }]";
    let a = spawn_host(&write_host(&dir, "a", ca, ma, guests), &dir.join("a.log"));
    let b = spawn_host(&write_host(&dir, "b", cb, mb, "[]"), &dir.join("b.log"));
    wait_listening(ca);
    wait_listening(cb);
    let pid = nix::unistd::Pid::from_raw(a.0.id() as i32);
    let rt = runtime();
    rt.block_on(async {
        let (coord, addr) = coordinator_c1(&dir, ca, cb).await;
        let client = ferry::control::Client::new(&TlsFiles::in_dir(&dir, "admin")).unwrap();
        let cref = ferry::coordinator::CoordinatorRef {
            name: "c1".into(),
            addr,
        };
        let opts = MigrateOptions {
            streams: Some(2),
            limits: Some(Limits {
                bandwidth: Some(32 << 20),
                ..Limits::default()
            }),
            ..Default::default()
        };
        let mut frozen_at = None;
        // Bounded whatever happens: without the silence limit the client
        // would wait an hour.
        let r = tokio::time::timeout(
            Duration::from_secs(90),
            request_migration(&client, &cref, "g1", None, "b", opts, |r| {
                if let Response::Progress(p) = r
                    && p.phase == Phase::PreCopy
                    && p.transferred_bytes > 16 << 20
                    && frozen_at.is_none()
                {
                    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
                    frozen_at = Some(Instant::now());
                }
            }),
        )
        .await;
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        let frozen_at = frozen_at.expect("the source was frozen mid-pass");
        let r = r.unwrap_or_else(|_| {
            panic!(
                "no answer 90 s into a frozen source (expected an error after {:?})",
                ferry::control::SOURCE_SILENCE
            )
        });
        let waited = frozen_at.elapsed();
        let err = r
            .expect_err("the migration cannot finish with a frozen source")
            .to_string();
        assert!(
            err.contains("source a said nothing for 15s"),
            "expected the error to name the silent source, got: {err}"
        );
        assert!(
            waited < ferry::control::SOURCE_SILENCE + Duration::from_secs(40),
            "answered {waited:?} after the freeze"
        );
        let rec = coord.records();
        assert_eq!(rec[0].state, ferry::control::wire::MigrationState::Failed);
        // Thawed, the source finds the destination gone and keeps the guest.
        let host = ferry::control::Client::new(&TlsFiles::in_dir(&dir, "c1")).unwrap();
        let mut state = None;
        for _ in 0..120 {
            if let Ok(Response::Capabilities(c)) = host
                .call("a", ca, &Request::Capabilities, Duration::from_secs(5))
                .await
            {
                state = c
                    .guests
                    .iter()
                    .find(|g| g.info.name == "g1")
                    .map(|g| g.info.state);
                if state == Some(ferry::guest::RunState::Running) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(
            state,
            Some(ferry::guest::RunState::Running),
            "g1 runs on a again after the thaw"
        );
    });
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where host `host`'s QEMU guest `guest` keeps its files.
fn qemu_dir(dir: &Path, host: &str, guest: &str) -> PathBuf {
    dir.join(format!("{host}-state")).join(guest)
}

fn qemu_pid(dir: &Path, host: &str, guest: &str) -> Option<u32> {
    std::fs::read_to_string(qemu_dir(dir, host, guest).join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Ends the QEMU processes this test's hosts started (they outlive their
/// host on purpose), by their ids, then removes the test's directory.
struct QemuReaper(PathBuf, Vec<&'static str>);

impl Drop for QemuReaper {
    fn drop(&mut self) {
        for host in &self.1 {
            if let Some(pid) = qemu_pid(&self.0, host, "vm1")
                && crate::qemu::alive(pid)
            {
                // SAFETY: a QEMU this test's host started, by its id.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn guest_on(
    hosts: &[ferry::control::wire::HostStatus],
    host: &str,
    guest: &str,
) -> Option<ferry::guest::GuestInfo> {
    hosts
        .iter()
        .find(|h| h.name == host)?
        .capabilities
        .as_ref()?
        .guests
        .iter()
        .find(|g| g.info.name == guest)
        .map(|g| g.info.clone())
}

/// A host's `guests:` with vm1, the QEMU test guest (256 MiB, checking its
/// own memory); `None`, said why, where `cargo xtask setup` did not build it.
fn qemu_vm1_guests() -> Option<String> {
    let machine = match crate::qemu::test_machine(256, 8) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: {why}");
            return None;
        }
    };
    Some(format!(
        "[{{ name: vm1, kind: qemu, memory: 256MiB, vcpus: 1, encryption: required, \
         qemu: {{ kernel: {}, initrd: {}, append: \"{}\", extra_args: [-no-reboot] }} }}]",
        machine.kernel.as_ref().unwrap().display(),
        machine.initrd.as_ref().unwrap().display(),
        machine.append.as_ref().unwrap()
    ))
}

#[test]
fn a_qemu_guest_survives_its_host_restarting_and_moves_between_host_processes() {
    let Some(guests) = qemu_vm1_guests() else {
        return;
    };
    let dir = site_dir("qemu-proc");
    let _reaper = QemuReaper(dir.clone(), vec!["a", "b"]);
    let (ca, ma, cb, mb) = (free_port(), free_port(), free_port(), free_port());
    let a_cfg = write_host(&dir, "a", ca, ma, &guests);
    let a = spawn_host(&a_cfg, &dir.join("a.log"));
    let b_cfg = write_host(&dir, "b", cb, mb, "[]");
    let mut b = Some(spawn_host(&b_cfg, &dir.join("b.log")));
    wait_listening(ca);
    wait_listening(cb);
    let pid = qemu_pid(&dir, "a", "vm1").expect("host a started vm1's QEMU");

    // Host a dies and comes back: the guest neither dies nor doubles.
    drop(a);
    std::thread::sleep(Duration::from_millis(300));
    assert!(crate::qemu::alive(pid), "vm1's QEMU died with its host");
    let mut a = Some(spawn_host(&a_cfg, &dir.join("a2.log")));
    wait_listening(ca);
    assert_eq!(
        qemu_pid(&dir, "a", "vm1"),
        Some(pid),
        "the restarted host started a second QEMU instead of adopting the first"
    );

    let rt = runtime();
    rt.block_on(async {
        let (_, addr) = coordinator_c1(&dir, ca, cb).await;
        let client = ferry::control::Client::new(&TlsFiles::in_dir(&dir, "admin")).unwrap();
        let cref = ferry::coordinator::CoordinatorRef {
            name: "c1".into(),
            addr,
        };
        let hosts = || async {
            let Response::Hosts { hosts, .. } = client
                .call("c1", addr, &Request::Hosts, Duration::from_secs(20))
                .await
                .unwrap()
            else {
                panic!("no host list")
            };
            hosts
        };
        // Booted and checking itself before it moves.
        let until = Instant::now() + Duration::from_secs(60);
        while guest_on(&hosts().await, "a", "vm1").is_none_or(|g| g.ops == 0) {
            assert!(Instant::now() < until, "vm1 never reported a check on a");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (from, to, streams) in [("a", "b", 1u16), ("b", "a", 3)] {
            let opts = MigrateOptions {
                streams: Some(streams),
                ..Default::default()
            };
            let stats = request_migration(&client, &cref, "vm1", None, to, opts, |_| {})
                .await
                .unwrap();
            assert_eq!(
                stats.result,
                MigrationResult::Completed,
                "{from} -> {to}: {:?}",
                stats.error
            );
            assert!(
                stats.transport.encrypted(),
                "a required guest moved in the clear"
            );
            let list = hosts().await;
            assert!(
                guest_on(&list, from, "vm1").is_none(),
                "vm1 still listed on {from}"
            );
            let g = guest_on(&list, to, "vm1").expect("vm1 listed on its new host");
            assert_eq!(g.state, ferry::guest::RunState::Running);
            assert_eq!(g.kind, "qemu");
            // The guest's own checks go on passing where it landed.
            let until = Instant::now() + Duration::from_secs(60);
            loop {
                let g = guest_on(&hosts().await, to, "vm1").expect("vm1 on its host");
                assert_eq!(g.get_errors, 0, "vm1 failed a memory check on {to}");
                if g.ops >= 2 {
                    break;
                }
                assert!(
                    Instant::now() < until,
                    "vm1 passed {} checks on {to} in 60 s",
                    g.ops
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let old = qemu_pid(&dir, from, "vm1");
            let until = Instant::now() + Duration::from_secs(10);
            while old.is_some_and(crate::qemu::alive) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                !old.is_some_and(crate::qemu::alive),
                "the QEMU vm1 left on {from} still runs"
            );
            if from == "b" {
                break;
            }
            // Both hosts restart: a must not boot the guest that left it,
            // b adopts the one that arrived (the same QEMU).
            let arrived = qemu_pid(&dir, "b", "vm1").expect("vm1's pid on b");
            drop((a.take(), b.take()));
            a = Some(spawn_host(&a_cfg, &dir.join("a3.log")));
            b = Some(spawn_host(&b_cfg, &dir.join("b3.log")));
            wait_listening(ca);
            wait_listening(cb);
            let until = Instant::now() + Duration::from_secs(20);
            let list = loop {
                let list = hosts().await;
                if list.iter().all(|h| h.reachable) {
                    break list;
                }
                assert!(
                    Instant::now() < until,
                    "the restarted hosts did not come back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert!(
                guest_on(&list, "a", "vm1").is_none(),
                "host a booted vm1 again after it had moved to b"
            );
            let g = guest_on(&list, "b", "vm1").expect("host b lost vm1 in its restart");
            assert_eq!(g.state, ferry::guest::RunState::Running);
            assert_eq!(
                qemu_pid(&dir, "b", "vm1"),
                Some(arrived),
                "b did not adopt vm1's QEMU"
            );
        }
    });
    drop((a, b));
}

#[test]
fn ferry_demo_moves_the_qemu_test_guest_which_vouches_for_its_memory() {
    if let Err(why) = crate::qemu::test_machine(512, 16) {
        eprintln!("skipped: {why}");
        return;
    }
    // From the repository root, where the demo's default guest paths point.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(FERRY)
        .args(["demo", "--guest", "qemu", "--json"])
        .current_dir(&root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ferry demo --guest qemu failed: {stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["result"], "completed", "{v}");
    assert_eq!(v["guest_kind"], "qemu");
    assert_eq!(
        v["guest_verified"], true,
        "the guest's own checks: {stderr}"
    );
    assert_eq!(v["transport"], "aes-256-gcm");
    assert_eq!(v["memory_bytes"], 512u64 << 20);
    assert!(v["transferred_bytes"].as_u64().unwrap() > 16 << 20, "{v}");
}

#[test]
fn a_qemu_destination_host_killed_mid_pass_leaves_the_guest_on_the_source_and_no_twin() {
    let Some(guests) = qemu_vm1_guests() else {
        return;
    };
    let dir = site_dir("qemu-kill");
    let _reaper = QemuReaper(dir.clone(), vec!["a", "b"]);
    let (ca, ma, cb, mb) = (free_port(), free_port(), free_port(), free_port());
    let _a = spawn_host(&write_host(&dir, "a", ca, ma, &guests), &dir.join("a.log"));
    let b_cfg = write_host(&dir, "b", cb, mb, "[]");
    let mut b = Some(spawn_host(&b_cfg, &dir.join("b.log")));
    wait_listening(ca);
    wait_listening(cb);
    let rt = runtime();
    rt.block_on(async {
        let (_, addr) = coordinator_c1(&dir, ca, cb).await;
        let client = ferry::control::Client::new(&TlsFiles::in_dir(&dir, "admin")).unwrap();
        let cref = ferry::coordinator::CoordinatorRef {
            name: "c1".into(),
            addr,
        };
        let hosts = || async {
            let Response::Hosts { hosts, .. } = client
                .call("c1", addr, &Request::Hosts, Duration::from_secs(20))
                .await
                .unwrap()
            else {
                panic!("no host list")
            };
            hosts
        };
        let until = Instant::now() + Duration::from_secs(60);
        while guest_on(&hosts().await, "a", "vm1").is_none_or(|g| g.ops == 0) {
            assert!(Instant::now() < until, "vm1 never reported a check on a");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // First a cancelled move (issue 14: cancel = migrate_cancel): vm1
        // stays on a, checking itself, and its twin on b ends.
        let slow = MigrateOptions {
            streams: Some(2),
            limits: Some(Limits {
                bandwidth: Some(4 << 20),
                ..Limits::default()
            }),
            ..Default::default()
        };
        let canceller = async {
            let until = Instant::now() + Duration::from_secs(60);
            let rec = loop {
                let Response::Status { migrations } = client
                    .call(
                        "c1",
                        addr,
                        &Request::Status { id: None },
                        Duration::from_secs(20),
                    )
                    .await
                    .unwrap()
                else {
                    panic!("no status")
                };
                if let Some(r) = migrations.into_iter().find(|r| {
                    r.progress
                        .as_ref()
                        .is_some_and(|p| p.transferred_bytes > 2 << 20)
                }) {
                    break r;
                }
                assert!(Instant::now() < until, "the slow move never got going");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let twin = qemu_pid(&dir, "b", "vm1").expect("a twin runs on b mid-pass");
            client
                .call(
                    "c1",
                    addr,
                    &Request::Cancel { id: rec.id },
                    Duration::from_secs(20),
                )
                .await
                .unwrap();
            (rec.id, twin)
        };
        let (cancelled, (id, twin)) = tokio::join!(
            request_migration(&client, &cref, "vm1", None, "b", slow, |_| {}),
            canceller
        );
        let cancelled = cancelled.unwrap();
        assert_eq!(cancelled.result, MigrationResult::Failed);
        assert!(
            cancelled
                .error
                .as_deref()
                .is_some_and(|e| e.contains("cancelled")),
            "{:?}",
            cancelled.error
        );
        let Response::Status { migrations } = client
            .call(
                "c1",
                addr,
                &Request::Status { id: Some(id) },
                Duration::from_secs(20),
            )
            .await
            .unwrap()
        else {
            panic!("no status")
        };
        assert_eq!(migrations[0].state, MigrationState::Cancelled);
        let until = Instant::now() + Duration::from_secs(15);
        while crate::qemu::alive(twin) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !crate::qemu::alive(twin),
            "the cancelled twin (pid {twin}) still runs on b"
        );
        let g = guest_on(&hosts().await, "a", "vm1").expect("vm1 stays on a after the cancel");
        assert_eq!(g.state, ferry::guest::RunState::Running);
        assert!(
            guest_on(&hosts().await, "b", "vm1").is_none(),
            "vm1 listed on b"
        );
        let until = Instant::now() + Duration::from_secs(30);
        while guest_on(&hosts().await, "a", "vm1").unwrap().ops < g.ops + 2 {
            assert!(
                Instant::now() < until,
                "vm1 stopped checking itself on a after the cancel"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(guest_on(&hosts().await, "a", "vm1").unwrap().get_errors, 0);

        // Slow enough that pre-copy still runs when b dies.
        let opts = MigrateOptions {
            streams: Some(2),
            limits: Some(Limits {
                bandwidth: Some(4 << 20),
                ..Limits::default()
            }),
            ..Default::default()
        };
        let mut twin = None;
        let stats = request_migration(&client, &cref, "vm1", None, "b", opts, |r| {
            if let Response::Progress(p) = r
                && p.phase == Phase::PreCopy
                && p.transferred_bytes > 2 << 20
                && twin.is_none()
            {
                twin = qemu_pid(&dir, "b", "vm1");
                drop(b.take()); // SIGKILL
            }
        })
        .await
        .unwrap();
        let twin = twin.expect("b was killed mid-pass, its twin running");
        assert_eq!(stats.result, MigrationResult::Failed, "{:?}", stats.error);
        // The guest runs on a and goes on checking itself.
        let g = guest_on(&hosts().await, "a", "vm1").expect("vm1 is still on a");
        assert_eq!(g.state, ferry::guest::RunState::Running);
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let now = guest_on(&hosts().await, "a", "vm1").expect("vm1 on a");
            assert_eq!(now.get_errors, 0, "vm1 failed a memory check on a");
            if now.ops >= g.ops + 2 {
                break;
            }
            assert!(Instant::now() < until, "vm1 stopped checking itself on a");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Nothing runs for it on b: its twin ended with its channels, or
        // the restarted host ends it.
        b = Some(spawn_host(&b_cfg, &dir.join("b2.log")));
        wait_listening(cb);
        let until = Instant::now() + Duration::from_secs(15);
        while crate::qemu::alive(twin) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !crate::qemu::alive(twin),
            "the twin QEMU (pid {twin}) still runs on b"
        );
        let until = Instant::now() + Duration::from_secs(20);
        let list = loop {
            let list = hosts().await;
            if list.iter().all(|h| h.reachable) {
                break list;
            }
            assert!(Instant::now() < until, "b did not come back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(guest_on(&list, "b", "vm1").is_none(), "vm1 listed on b");
    });
    drop(b);
}

/// Asserts that vm1 moved from a to b: listed on b only, running, passing
/// two more of its own memory checks there within `within`, and that the
/// QEMU it left (`source_qemu`, named `what`) exits within 15 s.
async fn vm1_landed_on_b(admin: &Admin, within: Duration, source_qemu: u32, what: &str) {
    let hosts = admin.hosts().await;
    assert!(
        guest_on(&hosts, "a", "vm1").is_none(),
        "vm1 is still listed on a: {hosts:?}"
    );
    let g = guest_on(&hosts, "b", "vm1").expect("vm1 runs on b");
    assert_eq!(g.state, ferry::guest::RunState::Running);
    let until = Instant::now() + within;
    loop {
        let now = guest_on(&admin.hosts().await, "b", "vm1").expect("vm1 on b");
        assert_eq!(now.get_errors, 0, "vm1 failed a memory check on b");
        if now.ops >= g.ops + 2 {
            break;
        }
        assert!(Instant::now() < until, "vm1 does not check itself on b");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let until = Instant::now() + Duration::from_secs(15);
    while crate::qemu::alive(source_qemu) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !crate::qemu::alive(source_qemu),
        "{what} (pid {source_qemu}) still runs after vm1 moved to b"
    );
}

/// Issue 14: the coordinator gone at GO. It hands out the spec and key and
/// follows the move, but the switch-over is committed between the hosts:
/// killed mid-move, it is unreachable when READY and GO pass, and the QEMU
/// guest still ends on exactly one host, running and checking itself, its
/// source QEMU gone; restarted, the coordinator settles the record from
/// where the guest runs.
#[test]
fn a_qemu_move_whose_coordinator_is_gone_at_go_ends_on_one_host_and_is_settled() {
    let Some(guests) = qemu_vm1_guests() else {
        return;
    };
    let dir = site_dir("qemu-coord");
    let _reaper = QemuReaper(dir.clone(), vec!["a", "b"]);
    let (ca, ma, cb, mb, cl) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _a = spawn_host(&write_host(&dir, "a", ca, ma, &guests), &dir.join("a.log"));
    let _b = spawn_host(&write_host(&dir, "b", cb, mb, "[]"), &dir.join("b.log"));
    wait_listening(ca);
    wait_listening(cb);
    let mut c1 = spawn_coordinator(&dir, cl, ca, cb, "c1.log");
    let admin = Admin {
        client: ferry::control::Client::new(&TlsFiles::in_dir(&dir, "admin")).unwrap(),
        coord: ferry::coordinator::CoordinatorRef {
            name: "c1".into(),
            addr: cl,
        },
    };
    runtime().block_on(async {
        let until = Instant::now() + Duration::from_secs(60);
        while guest_on(&admin.hosts().await, "a", "vm1").is_none_or(|g| g.ops == 0) {
            assert!(Instant::now() < until, "vm1 never reported a check on a");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let source_qemu = qemu_pid(&dir, "a", "vm1").expect("vm1's QEMU runs on a");
        // Slow (4 MiB/s), so the coordinator dies in pre-copy, long before
        // READY and GO.
        let slow = MigrateOptions {
            streams: Some(2),
            limits: Some(Limits {
                bandwidth: Some(4 << 20),
                ..Limits::default()
            }),
            ..Default::default()
        };
        move_killing_the_coordinator(&admin, &mut c1, "vm1", slow, 2 << 20).await;
        // The hosts finish alone; the restarted coordinator learns the end.
        c1 = spawn_coordinator(&dir, cl, ca, cb, "c1-restarted.log");
        let until = Instant::now() + Duration::from_secs(180);
        loop {
            let recs = admin.records().await;
            let rec = recs.iter().find(|r| r.guest == "vm1");
            if rec.is_some_and(|r| r.state == MigrationState::Completed) {
                break;
            }
            assert!(
                Instant::now() < until,
                "vm1's migration was never settled: {rec:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        vm1_landed_on_b(
            &admin,
            Duration::from_secs(30),
            source_qemu,
            "the source QEMU",
        )
        .await;
    });
    drop(c1);
}

#[test]
fn no_migration_key_lingers_in_either_hosts_memory_after_its_migrations() {
    // Issue 13.6: the key travels from the coordinator to both hosts inside
    // a control request over TLS. Once a migration has ended, neither host
    // may keep it anywhere in memory: not the raw key, not its hex text.
    let dir = site_dir("keyscan");
    let (ca, ma, cb, mb) = (free_port(), free_port(), free_port(), free_port());
    let guests =
        "[{ name: g1, memory: 32MiB, vcpus: 1, encryption: required, workload: { kind: idle } }]";
    let a = spawn_host(&write_host(&dir, "a", ca, ma, guests), &dir.join("a.log"));
    let b = spawn_host(&write_host(&dir, "b", cb, mb, "[]"), &dir.join("b.log"));
    wait_listening(ca);
    wait_listening(cb);
    let issued = std::sync::Arc::new(std::sync::Mutex::new(Vec::<[u8; 32]>::new()));
    let keys: ferry::coordinator::KeySource = {
        let issued = issued.clone();
        std::sync::Arc::new(move || {
            let mut k = [0u8; 32];
            getrandom::fill(&mut k).unwrap();
            issued.lock().unwrap().push(k);
            ferry::protocol::MigrationKey::from_bytes(k)
        })
    };
    runtime().block_on(async {
        let (_, addr) = coordinator_c1_keyed(&dir, ca, cb, Some(keys)).await;
        let client = ferry::control::Client::new(&TlsFiles::in_dir(&dir, "admin")).unwrap();
        let coord = ferry::coordinator::CoordinatorRef {
            name: "c1".into(),
            addr,
        };
        for (i, to) in ["b", "a", "b", "a", "b", "a"].iter().enumerate() {
            let s = request_migration(&client, &coord, "g1", None, to, Default::default(), |_| {})
                .await
                .unwrap();
            assert_eq!(
                s.result,
                MigrationResult::Completed,
                "migration {i} to {to}: {:?}",
                s.error
            );
        }
    });
    let issued = issued.lock().unwrap().clone();
    assert_eq!(issued.len(), 6, "one key per migration");
    let mut found = Vec::new();
    for (host, d) in [("a", &a), ("b", &b)] {
        for (i, k) in issued.iter().enumerate() {
            let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
            for (form, needle) in [("raw", &k[..]), ("hex", hex.as_bytes())] {
                for (map, at) in find_in_memory(d.0.id(), needle) {
                    found.push(format!("host {host}: key {i} ({form}) in {map} at {at:#x}"));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "migration keys linger after their migrations ended:\n{}",
        found.join("\n")
    );
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `ferry ARGS --coordinator c1@ADDR --tls-dir DIR --as admin` to its
/// end: (exit code, stdout, stderr).
fn ferry_cli(dir: &Path, coord: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(FERRY)
        .args(args)
        .args(["--coordinator", &format!("c1@{coord}"), "--as", "admin"])
        .arg("--tls-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Starts `ferry migrate g1 --to b --max-bandwidth RATE` and waits until it
/// shows progress in pass 0: the child and the file its stderr goes to.
fn ferry_migrate_started(
    dir: &Path,
    coord: SocketAddr,
    rate: &str,
    extra: &[&str],
) -> (std::process::Child, PathBuf) {
    ferry_migrate_started_with(dir, coord, rate, extra, Stdio::null(), "")
}

/// [`ferry_migrate_started`] with `stdin` (a terminal, say); `tag` keeps
/// its stderr file apart from other runs'.
fn ferry_migrate_started_with(
    dir: &Path,
    coord: SocketAddr,
    rate: &str,
    extra: &[&str],
    stdin: Stdio,
    tag: &str,
) -> (std::process::Child, PathBuf) {
    let errf = dir.join(format!("migrate-{rate}-{}{tag}.err", extra.len()).replace('/', "_"));
    let mut child = Command::new(FERRY)
        .args(["migrate", "g1", "--to", "b", "--max-bandwidth", rate])
        .args(extra)
        .args(["--coordinator", &format!("c1@{coord}"), "--as", "admin"])
        .arg("--tls-dir")
        .arg(dir)
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errf).unwrap())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    // Not a terminal: a progress line a second, once pass 0 moves bytes.
    while !std::fs::read_to_string(&errf)
        .unwrap_or_default()
        .contains("pass 0")
    {
        assert!(
            Instant::now() < until && child.try_wait().unwrap().is_none(),
            "ferry migrate showed no progress: {}",
            std::fs::read_to_string(&errf).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, errf)
}

/// Waits (at most `within`) for a `ferry migrate` started by
/// [`ferry_migrate_started`] to exit: its exit code and stderr.
fn ferry_migrate_ended(
    mut child: std::process::Child,
    errf: &Path,
    within: Duration,
    after: &str,
) -> (i32, String) {
    let until = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ferry migrate still runs {} s after {after}: {}",
                within.as_secs(),
                std::fs::read_to_string(errf).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(errf).unwrap();
    (status.code().unwrap_or(-1), err)
}

/// Starts `ferry migrate g1 --to b` (slowed to 8 MiB/s, so it is still in
/// its first pass seconds later) and sends it SIGINT once it shows
/// progress: its exit code and stderr.
fn ferry_migrate_interrupted(dir: &Path, coord: SocketAddr, extra: &[&str]) -> (i32, String) {
    let (child, errf) = ferry_migrate_started(dir, coord, "8MiB/s", extra);
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    ferry_migrate_ended(child, &errf, Duration::from_secs(90), "Ctrl-C")
}

#[test]
fn ctrl_c_and_ferry_cancel_stop_a_migration_and_the_guest_stays_on_its_source() {
    let dir = site_dir("cancel");
    let (ca, ma, cb, mb, cl) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let guests = "[{ name: g1, memory: 256MiB, vcpus: 1, \
                  workload: { kind: key-value, gets_per_second: 2000, sets_per_second: 2000 } }]";
    let _a = spawn_host(&write_host(&dir, "a", ca, ma, guests), &dir.join("a.log"));
    let _b = spawn_host(&write_host(&dir, "b", cb, mb, "[]"), &dir.join("b.log"));
    wait_listening(ca);
    wait_listening(cb);
    let _c1 = spawn_coordinator(&dir, cl, ca, cb, "c1.log");
    let admin = Admin {
        client: ferry::control::Client::new(&TlsFiles::in_dir(&dir, "admin")).unwrap(),
        coord: ferry::coordinator::CoordinatorRef {
            name: "c1".into(),
            addr: cl,
        },
    };
    let rt = runtime();
    let g1_stays_on_a = |when: &str| {
        rt.block_on(async {
            let hosts = admin.hosts().await;
            let on_a = guest_on(&hosts, "a", "g1")
                .unwrap_or_else(|| panic!("{when}: g1 is not on a: {hosts:?}"));
            assert_eq!(on_a.state, ferry::guest::RunState::Running, "{when}");
            assert!(
                guest_on(&hosts, "b", "g1").is_none(),
                "{when}: g1 is on b too"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            let later = guest_on(&admin.hosts().await, "a", "g1").unwrap();
            assert!(later.ops > on_a.ops, "{when}: g1 does not work on a");
        })
    };
    let records = || rt.block_on(admin.records());

    // 1. Ctrl-C without --cancel-on-interrupt, not on a terminal: ferry
    //    migrate leaves, saying how to follow or cancel; the move goes on.
    let (code, err) = ferry_migrate_interrupted(&dir, cl, &[]);
    assert_eq!(code, 130, "{err}");
    assert!(
        err.contains("goes on") && err.contains("ferry cancel"),
        "{err}"
    );
    let recs = records();
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0].state, MigrationState::Running, "{:?}", recs[0]);
    // `ferry status PREFIX` shows the running job in detail, not `-`.
    let id = recs[0].id.to_string();
    let (code, out, err) = ferry_cli(&dir, cl, &["status", &id[..6]]);
    assert_eq!(code, 0, "{err}");
    assert!(
        [
            "running",
            "pass 0",
            "transferred",
            "this pass",
            "expected downtime",
            "time remaining"
        ]
        .iter()
        .all(|k| out.contains(k))
            && !out.contains("xfer 0 MB/s"),
        "{out}"
    );
    // 2. `ferry cancel` by an abbreviated id stops it.
    let (code, out, err) = ferry_cli(&dir, cl, &["cancel", &id[..6]]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cancelled: g1 stays on a"), "{out}{err}");
    let recs = records();
    assert_eq!(recs[0].state, MigrationState::Cancelled, "{:?}", recs[0]);
    g1_stays_on_a("after ferry cancel");
    // Cancelling it again says it has ended.
    let (code, _, err) = ferry_cli(&dir, cl, &["cancel", &id[..8]]);
    assert_eq!(code, 1);
    assert!(err.contains("has ended (cancelled)"), "{err}");

    // 3. Ctrl-C with --cancel-on-interrupt cancels it there and then.
    let (code, err) = ferry_migrate_interrupted(&dir, cl, &["--cancel-on-interrupt"]);
    assert_eq!(code, 130, "{err}");
    assert!(err.contains("cancelled: g1 stays on a"), "{err}");
    let recs = records();
    assert_eq!(recs.len(), 2);
    assert!(
        recs.iter().all(|r| r.state == MigrationState::Cancelled),
        "{recs:?}"
    );
    g1_stays_on_a("after Ctrl-C");

    // 3b. On a terminal, Ctrl-C asks. "y" cancels; anything else (here
    //     "n") leaves it running, as the answer's default says.
    for (answer, tag) in [("y", "tty-yes"), ("n", "tty-no")] {
        let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
        let (child, errf) =
            ferry_migrate_started_with(&dir, cl, "8MiB/s", &[], Stdio::from(pty.slave), tag);
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        let until = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&errf)
            .unwrap_or_default()
            .contains("[y/N]")
        {
            assert!(
                Instant::now() < until,
                "no question after Ctrl-C on a terminal: {}",
                std::fs::read_to_string(&errf).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut master = std::fs::File::from(pty.master);
        std::io::Write::write_all(&mut master, format!("{answer}\n").as_bytes()).unwrap();
        let (code, err) = ferry_migrate_ended(child, &errf, Duration::from_secs(90), "the answer");
        assert_eq!(code, 130, "{err}");
        assert!(err.contains("Cancel migration"), "{err}");
        let recs = records();
        let last = recs.iter().max_by_key(|r| r.started_unix_ms).unwrap();
        if answer == "y" {
            assert!(err.contains("cancelled: g1 stays on a"), "{err}");
            assert_eq!(last.state, MigrationState::Cancelled, "{last:?}");
        } else {
            assert!(
                err.contains("goes on") && err.contains("ferry cancel"),
                "{err}"
            );
            assert_eq!(last.state, MigrationState::Running, "{last:?}");
            let id = last.id.to_string();
            let (code, out, err) = ferry_cli(&dir, cl, &["cancel", &id[..8]]);
            assert_eq!(code, 0, "{out}{err}");
        }
        g1_stays_on_a(&format!("after answering {answer:?}"));
    }

    // 4. Nothing is left behind: g1 still moves to b. At 1 MiB/s its 256
    //    MiB would take over four minutes; `ferry migrate-set` lifts the cap
    //    while it runs, and it ends within seconds.
    let (code, _, err) = ferry_cli(&dir, cl, &["migrate-set", &id[..6]]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing to change"), "{err}");
    let (code, _, err) = ferry_cli(
        &dir,
        cl,
        &["migrate-set", &id[..6], "--max-bandwidth", "1MiB/s"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("has ended (cancelled)"), "{err}");
    let (child, errf) = ferry_migrate_started(&dir, cl, "1MiB/s", &[]);
    let recs = records();
    let running = recs
        .iter()
        .find(|r| r.state == MigrationState::Running)
        .unwrap_or_else(|| panic!("no running migration: {recs:?}"));
    let id = running.id.to_string();
    let (code, out, err) = ferry_cli(
        &dir,
        cl,
        &[
            "migrate-set",
            &id[..8],
            "--max-bandwidth",
            "unlimited",
            "--downtime-limit",
            "400ms",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("bandwidth no longer capped, downtime limit 400 ms"),
        "{out}"
    );
    let (code, err) =
        ferry_migrate_ended(child, &errf, Duration::from_secs(120), "its cap was lifted");
    assert_eq!(code, 0, "{err}");
    let done = rt.block_on(admin.records());
    let done = done.iter().find(|r| r.id.to_string() == id).unwrap();
    assert_eq!(done.state, MigrationState::Completed, "{done:?}");
    let stats = done.stats.as_ref().expect("stats of a completed migration");
    assert_eq!(stats.downtime_limit_seconds, 0.4, "{stats:?}");
    let hosts = rt.block_on(admin.hosts());
    assert!(guest_on(&hosts, "b", "g1").is_some() && guest_on(&hosts, "a", "g1").is_none());

    // Issue 16: every daemon says what it is and what it costs on /metrics,
    // and its log, written to a file, carries no colour codes.
    let c1_yaml = std::fs::read_to_string(dir.join("c1.yaml")).unwrap();
    let at = c1_yaml.find("listen: \"").unwrap() + "listen: \"".len();
    let c1_metrics: SocketAddr = c1_yaml[at..at + c1_yaml[at..].find('"').unwrap()]
        .parse()
        .unwrap();
    for (role, addr) in [
        ("host", metrics_addr(&dir, "a")),
        ("coordinator", c1_metrics),
    ] {
        let text = http_get(addr, "/metrics");
        let info = format!(
            "ferry_build_info{{role=\"{role}\",version=\"{}\"}} 1",
            ferry::VERSION
        );
        assert!(
            text.contains(&info),
            "{role}'s /metrics lacks {info}:\n{text}"
        );
        for m in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(
                text.contains(&format!("\n{m} ")),
                "{role}'s /metrics lacks {m}"
            );
        }
    }
    for log in ["a.log", "b.log", "c1.log"] {
        let text = std::fs::read_to_string(dir.join(log)).unwrap();
        assert!(text.contains("INFO"), "{log} is empty: {text:?}");
        assert!(
            !text.contains('\x1b'),
            "{log} has colour codes: {:?}",
            &text[..text.len().min(300)]
        );
    }
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A QEMU this test started as an operator would, outside any host: its
/// parent (a thread here) reaps it, and it is killed by its id if the test
/// ends with it still running.
struct OperatorQemu {
    pid: u32,
    reaped: Option<std::thread::JoinHandle<()>>,
}

impl Drop for OperatorQemu {
    fn drop(&mut self) {
        if crate::qemu::alive(self.pid) {
            // SAFETY: the QEMU this test spawned, by its id.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
        if let Some(t) = self.reaped.take() {
            let _ = t.join();
        }
    }
}

/// Waits (bounded) for a daemon that must refuse to start; its log.
fn refused_at_start(mut d: Daemon, log: &Path) -> String {
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = d.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "the host still runs after 60 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(log).unwrap();
    assert!(!status.success(), "the host exited 0: {text}");
    text
}

/// Issue 14: a QEMU ferry did not start, adopted by its QMP socket. An
/// operator starts the test guest with its own QMP socket and serial log
/// and one device more than host a's file says. While another client holds
/// its QMP socket, or with the file's memory unlike the QEMU's, host a
/// refuses to start, saying what and where. Adopted, its move to b is
/// refused before any memory moves, because b's twin lacks that device
/// (QEMU itself would find out only at the switch-over). With the device in
/// the file, a restarted a adopts the same QEMU again and moves it to a
/// twin ferry starts on b, where it checks itself; the operator's QEMU has
/// quit, and a restarted a does not take the guest back.
#[test]
fn a_qemu_started_elsewhere_is_adopted_by_its_qmp_socket_checked_and_moved() {
    let machine = match crate::qemu::test_machine(256, 8) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dir = site_dir("qemu-adopt");
    let _reaper = QemuReaper(dir.clone(), vec!["a", "b"]);
    let own = dir.join("operator");
    std::fs::create_dir_all(&own).unwrap();
    let mut cmd = ferry::qemu::QemuGuest::command("vm1", &machine, &own, false, None);
    cmd.args(["-device", "virtio-rng-pci"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(own.join("stderr")).unwrap());
    let mut child = cmd.spawn().unwrap();
    let operator = OperatorQemu {
        pid: child.id(),
        reaped: Some(std::thread::spawn(move || {
            let _ = child.wait();
        })),
    };
    let qmp = own.join("qmp.sock");
    let until = Instant::now() + Duration::from_secs(30);
    while ferry::qemu::Qmp::connect(&qmp).is_err() {
        assert!(
            Instant::now() < until,
            "the operator's QEMU never answered QMP"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let guests = |memory: &str, extra: &str| {
        format!(
            "[{{ name: vm1, kind: qemu, memory: {memory}, vcpus: 1, encryption: required, \
             qemu: {{ kernel: {}, initrd: {}, append: \"{}\", extra_args: [-no-reboot{extra}], \
             adopt: {{ qmp: {}, serial_log: {} }} }} }}]",
            machine.kernel.as_ref().unwrap().display(),
            machine.initrd.as_ref().unwrap().display(),
            machine.append.as_ref().unwrap(),
            qmp.display(),
            own.join("serial.log").display()
        )
    };
    let (ca, ma, cb, mb) = (free_port(), free_port(), free_port(), free_port());

    // Another client holds the QMP socket: QEMU would not greet ferry.
    let held = ferry::qemu::Qmp::connect(&qmp).unwrap();
    let a_cfg = write_host(&dir, "a", ca, ma, &guests("256MiB", ""));
    let log = refused_at_start(
        spawn_host(&a_cfg, &dir.join("a-busy.log")),
        &dir.join("a-busy.log"),
    );
    for want in [
        "guests[0].qemu.adopt.qmp",
        "did not greet within 5 s",
        "one of its own",
    ] {
        assert!(log.contains(want), "no {want:?} in: {log}");
    }
    drop(held);
    // The file's memory is not the QEMU's.
    let a_cfg = write_host(&dir, "a", ca, ma, &guests("512MiB", ""));
    let log = refused_at_start(
        spawn_host(&a_cfg, &dir.join("a-mem.log")),
        &dir.join("a-mem.log"),
    );
    assert!(
        log.contains("has 256 MiB of memory, the guest's memory says 512 MiB"),
        "{log}"
    );
    // The file gives vm1 a NIC whose MAC the operator's QEMU does not have.
    let with_nic =
        guests("256MiB", "").replace("qemu: {", "nic: { mac: \"52:54:00:00:00:01\" }, qemu: {");
    let a_cfg = write_host(&dir, "a", ca, ma, &with_nic);
    let log = refused_at_start(
        spawn_host(&a_cfg, &dir.join("a-mac.log")),
        &dir.join("a-mac.log"),
    );
    assert!(
        log.contains("has no NIC with MAC 52:54:00:00:00:01, the guest's nic.mac (its NICs: none)"),
        "{log}"
    );
    assert!(
        crate::qemu::alive(operator.pid),
        "a refusal ended the operator's QEMU"
    );

    let a_cfg = write_host(&dir, "a", ca, ma, &guests("256MiB", ""));
    let mut a = Some(spawn_host(&a_cfg, &dir.join("a.log")));
    let _b = spawn_host(&write_host(&dir, "b", cb, mb, "[]"), &dir.join("b.log"));
    wait_listening(ca);
    wait_listening(cb);
    runtime().block_on(async {
        let admin = Admin::start(&dir, ca, cb).await;
        let until = Instant::now() + Duration::from_secs(60);
        while guest_on(&admin.hosts().await, "a", "vm1").is_none_or(|g| g.ops == 0) {
            assert!(
                Instant::now() < until,
                "adopted vm1 never reported a check on a"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let machine_listed = guest_on(&admin.hosts().await, "a", "vm1")
            .and_then(|g| g.machine)
            .expect("vm1's machine");
        assert!(
            machine_listed.machine.starts_with("pc-i440fx-"),
            "`pc` was not resolved to the versioned type a twin must start: {}",
            machine_listed.machine
        );

        // b's twin, started from a's file, lacks the random-number device.
        let refused = admin
            .migrate("vm1", "b")
            .await
            .expect_err("a move to a twin without the source's devices went ahead");
        let refused = refused.to_string();
        for want in ["device model differs", "only the source has", "1af4:"] {
            assert!(refused.contains(want), "no {want:?} in: {refused}");
        }
        let g = guest_on(&admin.hosts().await, "a", "vm1").expect("vm1 stays on a");
        assert_eq!(g.state, ferry::guest::RunState::Running);
        assert!(
            crate::qemu::alive(operator.pid),
            "the refusal ended the source QEMU"
        );
        assert!(
            !qemu_pid(&dir, "b", "vm1").is_some_and(crate::qemu::alive),
            "the refused twin still runs on b"
        );

        // The device in the file: a restarted a adopts the same QEMU again.
        drop(a.take());
        let a_cfg = write_host(
            &dir,
            "a",
            ca,
            ma,
            &guests("256MiB", ", -device, virtio-rng-pci"),
        );
        a = Some(spawn_host(&a_cfg, &dir.join("a2.log")));
        wait_listening(ca);
        let until = Instant::now() + Duration::from_secs(30);
        while guest_on(&admin.hosts().await, "a", "vm1").is_none() {
            assert!(
                Instant::now() < until,
                "the restarted a did not adopt vm1 again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(crate::qemu::alive(operator.pid));
        let stats = admin.migrate("vm1", "b").await.unwrap();
        assert_eq!(
            stats.result,
            MigrationResult::Completed,
            "{:?}",
            stats.error
        );
        vm1_landed_on_b(
            &admin,
            Duration::from_secs(60),
            operator.pid,
            "the operator's QEMU",
        )
        .await;

        // Its QMP socket is gone with it; a restarted a starts, and leaves
        // vm1 where it runs.
        drop(a.take());
        let log = dir.join("a3.log");
        a = Some(spawn_host(&a_cfg, &log));
        wait_listening(ca);
        let until = Instant::now() + Duration::from_secs(20);
        while !admin.hosts().await.iter().all(|h| h.reachable) {
            assert!(Instant::now() < until, "the restarted a did not come back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let hosts = admin.hosts().await;
        assert!(
            guest_on(&hosts, "a", "vm1").is_none(),
            "a took vm1 back: {hosts:?}"
        );
        assert!(guest_on(&hosts, "b", "vm1").is_some());
        wait_log(&log, "migrated away from this host", 5).await;
    });
    drop((a, operator));
}

/// `ferry drain` and `ferry uncordon` as an operator types them, against
/// daemons in their own processes: the host is emptied, the table and the
/// progress say so, the cordon outlives a coordinator restart (a migration
/// to the host is refused, naming the way out), and `uncordon` lifts it.
#[test]
fn ferry_drain_empties_a_host_whose_cordon_survives_a_coordinator_restart() {
    let dir = site_dir("drain-cli");
    let (ca, ma, cb, mb, cl) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let guests = "[{ name: g1, memory: 16MiB, vcpus: 1, \
                  workload: { kind: key-value, gets_per_second: 1000, sets_per_second: 1000 } }, \
                  { name: g2, memory: 16MiB, vcpus: 1, encryption: required, \
                  workload: { kind: key-value, gets_per_second: 1000, sets_per_second: 1000 } }]";
    let _a = spawn_host(&write_host(&dir, "a", ca, ma, guests), &dir.join("a.log"));
    let _b = spawn_host(&write_host(&dir, "b", cb, mb, "[]"), &dir.join("b.log"));
    wait_listening(ca);
    wait_listening(cb);
    let mut c1 = spawn_coordinator(&dir, cl, ca, cb, "c1.log");
    let (code, out, err) = ferry_cli(&dir, cl, &["drain", "a"]);
    assert_eq!(code, 0, "ferry drain a failed: {out}{err}");
    assert!(
        err.contains("draining a: 2 guests to move")
            && err.contains("moved g1 to b")
            && err.contains("moved g2 to b")
            && err.contains("a is drained and cordoned"),
        "{err}"
    );
    for g in ["g1", "g2"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(g) && l.contains(" b ") && l.contains("moved")),
            "the table has {g} moved to b: {out}"
        );
    }
    let (_, hosts, _) = ferry_cli(&dir, cl, &["hosts"]);
    assert!(
        hosts.contains("a: ") && hosts.contains("(cordoned"),
        "{hosts}"
    );

    kill(&mut c1);
    c1 = spawn_coordinator(&dir, cl, ca, cb, "c1-restarted.log");
    let (code, _, err) = ferry_cli(&dir, cl, &["migrate", "g1", "--to", "a"]);
    assert_ne!(
        code, 0,
        "a migration to the cordoned a was let through: {err}"
    );
    assert!(
        err.contains("host a is cordoned") && err.contains("ferry uncordon a"),
        "after the restart a is still cordoned: {err}"
    );
    let (code, out, err) = ferry_cli(&dir, cl, &["uncordon", "a"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("a takes guests again"), "{out}");
    let (code, out, err) = ferry_cli(&dir, cl, &["migrate", "g1", "--to", "a"]);
    assert_eq!(code, 0, "g1 may go back to a: {out}{err}");
    drop(c1);
    let _ = std::fs::remove_dir_all(&dir);
}
