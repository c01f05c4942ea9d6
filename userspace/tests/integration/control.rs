//! Coordinator and hosts over mutual TLS: migrations, refusals before any
//! memory moves, authorization, cross-coordinator moves, and the key.

use std::{sync::Arc, time::Duration};

use ferry::{
    config::ByteSize,
    control::{Client, ControlError, Request, Response, Role, TlsFiles, wire::MigrateOptions},
    coordinator::{CoordinatorRef, request_migration},
    engine::MigrationResult,
    guest::{RunState, WorkloadSpec},
    host::GuestConfig,
    lab::cluster::{Cluster, ClusterSpec, HostSpec},
    protocol::{EncryptionMode, Limits, MigrationKey, Transport},
};

use crate::logcapture::capture;

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) fn guest(name: &str, memory: u64, mode: EncryptionMode) -> GuestConfig {
    GuestConfig {
        name: name.into(),
        kind: Default::default(),
        qemu: None,
        memory: ByteSize(memory),
        vcpus: 1,
        encryption: mode,
        workload: WorkloadSpec::KeyValue {
            gets_per_second: 5_000,
            sets_per_second: 5_000,
        },
        prefill: true,
        nic: None,
    }
}

pub(crate) fn host(
    name: &str,
    coord: &str,
    encryption: bool,
    capacity: u64,
    guests: Vec<GuestConfig>,
) -> HostSpec {
    HostSpec {
        name: name.into(),
        coordinator: coord.into(),
        encryption,
        capacity: ByteSize(capacity),
        backend: Default::default(),
        guests,
        network: None,
    }
}

fn two_hosts(b_encrypts: bool, b_capacity: u64, mode: EncryptionMode) -> ClusterSpec {
    ClusterSpec {
        coordinators: vec!["c1".into()],
        hosts: vec![
            host(
                "host-a",
                "c1",
                true,
                256 << 20,
                vec![guest("g1", 32 << 20, mode)],
            ),
            host("host-b", "c1", b_encrypts, b_capacity, vec![]),
        ],
        defaults: Default::default(),
        scheduler: Default::default(),
    }
}

async fn migrate(
    c: &Cluster,
    coord: &str,
    guest: &str,
    to: &str,
) -> Result<Box<ferry::engine::MigrationStats>, ControlError> {
    let opts = MigrateOptions {
        streams: Some(2),
        ..Default::default()
    };
    request_migration(
        &c.client,
        &c.coordinator(coord),
        guest,
        None,
        to,
        opts,
        |_| {},
    )
    .await
}

async fn status(c: &Cluster, coord: &str) -> Vec<ferry::control::wire::MigrationRecord> {
    let r = c.coordinator(coord);
    match c
        .client
        .call(
            &r.name,
            r.addr,
            &Request::Status { id: None },
            Duration::from_secs(10),
        )
        .await
        .unwrap()
    {
        Response::Status { migrations } => migrations,
        other => panic!("{other:?}"),
    }
}

/// `--streams 0` asks for the coordinator's default, as `defaults.streams:
/// 0` does in its YAML; before, it reached the spec and was refused.
#[test]
fn zero_streams_from_a_client_means_the_coordinators_default() {
    rt().block_on(async {
        let mut spec = two_hosts(true, 256 << 20, EncryptionMode::Opportunistic);
        spec.defaults.streams = 3;
        let c = Cluster::start(spec, None).await.unwrap();
        let opts = MigrateOptions {
            streams: Some(0),
            ..Default::default()
        };
        let stats = request_migration(
            &c.client,
            &c.coordinator("c1"),
            "g1",
            None,
            "host-b",
            opts,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(
            stats.result,
            MigrationResult::Completed,
            "{:?}",
            stats.error
        );
        assert_eq!(
            stats.streams, 3,
            "expected the coordinator's default of 3 streams"
        );
        drop(c);
    });
}

#[test]
fn coordinator_moves_a_guest_encrypted_and_reports_it() {
    rt().block_on(async {
        let c = Cluster::start(
            two_hosts(true, 256 << 20, EncryptionMode::Opportunistic),
            None,
        )
        .await
        .unwrap();
        let mut events = Vec::new();
        let opts = MigrateOptions {
            streams: Some(2),
            ..Default::default()
        };
        let stats = request_migration(
            &c.client,
            &c.coordinator("c1"),
            "g1",
            None,
            "host-b",
            opts,
            |r| {
                events.push(match r {
                    Response::Accepted { .. } => "accepted",
                    Response::Progress(_) => "progress",
                    _ => "other",
                })
            },
        )
        .await
        .unwrap();
        assert_eq!(
            stats.result,
            MigrationResult::Completed,
            "{:?}",
            stats.error
        );
        assert_eq!(stats.transport, Transport::Aes256Gcm);
        assert_eq!(
            (stats.source.as_str(), stats.destination.as_str()),
            ("host-a", "host-b")
        );
        assert_eq!(events.first(), Some(&"accepted"));
        assert!(events.contains(&"progress"));
        assert!(
            c.host("host-a").guest("g1").is_none(),
            "host-a let go of g1"
        );
        let moved = c.host("host-b").guest("g1").expect("g1 runs on host-b");
        assert_eq!(moved.run_state(), RunState::Running);
        let recs = status(&c, "c1").await;
        assert_eq!(recs.len(), 1);
        assert_eq!(
            recs[0].state,
            ferry::control::wire::MigrationState::Completed
        );
        assert_eq!(recs[0].stats.as_ref().unwrap().id, stats.id);
        // And back again: the destination is a full host now.
        let back = migrate(&c, "c1", "g1", "host-a").await.unwrap();
        assert_eq!(back.result, MigrationResult::Completed);
        assert!(c.host("host-a").guest("g1").is_some());
    });
}

#[test]
fn required_encryption_to_a_host_that_cannot_is_refused_before_memory_moves() {
    rt().block_on(async {
        let c = Cluster::start(two_hosts(false, 256 << 20, EncryptionMode::Required), None)
            .await
            .unwrap();
        let free_before = free(&c, "host-b").await;
        let err = migrate(&c, "c1", "g1", "host-b")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("guest g1 requires encrypted migration, but host-b cannot encrypt"),
            "{err}"
        );
        assert!(err.contains("before any memory moved"), "{err}");
        assert_eq!(
            c.host("host-a").guest("g1").unwrap().run_state(),
            RunState::Running
        );
        assert_eq!(
            free(&c, "host-b").await,
            free_before,
            "nothing was reserved on host-b"
        );
        assert!(
            status(&c, "c1").await.is_empty(),
            "no spec was ever created"
        );
    });
}

async fn free(c: &Cluster, host: &str) -> u64 {
    let r = c.coordinator("c1");
    let Response::Hosts { hosts, .. } = c
        .client
        .call(&r.name, r.addr, &Request::Hosts, Duration::from_secs(10))
        .await
        .unwrap()
    else {
        panic!()
    };
    hosts
        .into_iter()
        .find(|h| h.name == host)
        .unwrap()
        .capabilities
        .unwrap()
        .memory_free
}

#[test]
fn opportunistic_to_a_host_that_cannot_encrypt_goes_in_the_clear() {
    rt().block_on(async {
        let c = Cluster::start(
            two_hosts(false, 256 << 20, EncryptionMode::Opportunistic),
            None,
        )
        .await
        .unwrap();
        let stats = migrate(&c, "c1", "g1", "host-b").await.unwrap();
        assert_eq!(stats.result, MigrationResult::Completed);
        assert_eq!(stats.transport, Transport::Plaintext);
        assert_eq!(stats.mode, EncryptionMode::Opportunistic);
    });
}

#[test]
fn destination_without_enough_memory_refuses_the_spec() {
    rt().block_on(async {
        let c = Cluster::start(
            two_hosts(true, 16 << 20, EncryptionMode::Opportunistic),
            None,
        )
        .await
        .unwrap();
        let err = migrate(&c, "c1", "g1", "host-b")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not enough memory on host-b for guest g1: it needs 32MiB, 16MiB is free"),
            "{err}"
        );
        let g = c.host("host-a").guest("g1").unwrap();
        assert_eq!(g.run_state(), RunState::Running);
        let recs = status(&c, "c1").await;
        assert_eq!(recs[0].state, ferry::control::wire::MigrationState::Failed);
        assert!(
            recs[0]
                .error
                .as_deref()
                .unwrap()
                .contains("not enough memory")
        );
    });
}

#[test]
fn unknown_guests_and_hosts_are_clear_errors() {
    rt().block_on(async {
        let c = Cluster::start(
            two_hosts(true, 256 << 20, EncryptionMode::Opportunistic),
            None,
        )
        .await
        .unwrap();
        let err = migrate(&c, "c1", "nope", "host-b")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no host of c1 runs a guest named nope"),
            "{err}"
        );
        let err = migrate(&c, "c1", "g1", "host-z")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("c1 manages no host named host-z"), "{err}");
        let err = migrate(&c, "c1", "g1", "host-a")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("already runs on host-a"), "{err}");
        let err = migrate(&c, "c1", "g1", "host-b@c9")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no peer coordinator named c9"), "{err}");
    });
}

#[test]
fn an_unreachable_coordinator_is_a_clear_error() {
    rt().block_on(async {
        let c = Cluster::start(
            two_hosts(true, 256 << 20, EncryptionMode::Opportunistic),
            None,
        )
        .await
        .unwrap();
        // A port nobody listens on: bound but never listening, and held for
        // the whole test so a concurrent test cannot be given it.
        let hold = tokio::net::TcpSocket::new_v4().unwrap();
        hold.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let dead = hold.local_addr().unwrap();
        let coord = CoordinatorRef {
            name: "c1".into(),
            addr: dead,
        };
        let err = request_migration(
            &c.client,
            &coord,
            "g1",
            None,
            "host-b",
            Default::default(),
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ControlError::Connect { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("connecting to c1 at {dead}")),
            "{err}"
        );
        assert_eq!(
            c.host("host-a").guest("g1").unwrap().run_state(),
            RunState::Running
        );
        drop(hold);
    });
}

#[test]
fn only_the_right_roles_get_in() {
    rt().block_on(async {
        let c = Cluster::start(
            two_hosts(true, 256 << 20, EncryptionMode::Opportunistic),
            None,
        )
        .await
        .unwrap();
        // A host's certificate on the coordinator's client API.
        ferry::certs::issue(
            c.tls_dir(),
            &[
                (Role::Host, "rogue-host".into()),
                (Role::Client, "stranger".into()),
            ],
        )
        .unwrap();
        let as_host = Client::new(&TlsFiles::in_dir(c.tls_dir(), "rogue-host")).unwrap();
        let coord = c.coordinator("c1");
        let err = as_host
            .call(
                &coord.name,
                coord.addr,
                &Request::Hosts,
                Duration::from_secs(5),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("host rogue-host may not use the client API"),
            "{err}"
        );
        // A client not in the coordinator's list.
        let stranger = Client::new(&TlsFiles::in_dir(c.tls_dir(), "stranger")).unwrap();
        let err = stranger
            .call(
                &coord.name,
                coord.addr,
                &Request::Hosts,
                Duration::from_secs(5),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("client stranger is not in c1's clients list"),
            "{err}"
        );
        // A client on a host's control API.
        let h = c.host("host-a").config().control;
        let err = c
            .client
            .call("host-a", h, &Request::Capabilities, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("may not use a host's control API: coordinators only"),
            "{err}"
        );
        // A certificate from another CA does not get past TLS.
        let other = std::env::temp_dir().join(format!("ferry-other-ca-{}", std::process::id()));
        ferry::certs::issue(&other, &[(Role::Client, "admin".into())]).unwrap();
        let foreign = Client::new(&TlsFiles::in_dir(&other, "admin")).unwrap();
        let err = foreign
            .call(
                &coord.name,
                coord.addr,
                &Request::Hosts,
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, ControlError::Tls { .. } | ControlError::Wire { .. }),
            "{err}"
        );
        std::fs::remove_dir_all(other).unwrap();
    });
}

#[test]
fn cross_coordinator_move_hands_the_spec_over_tls() {
    rt().block_on(async {
        let spec = ClusterSpec {
            coordinators: vec!["c1".into(), "c2".into()],
            hosts: vec![
                host(
                    "host-a",
                    "c1",
                    true,
                    256 << 20,
                    vec![guest("g1", 32 << 20, EncryptionMode::Required)],
                ),
                host("host-b", "c2", true, 256 << 20, vec![]),
            ],
            defaults: Default::default(),
            scheduler: Default::default(),
        };
        let c = Cluster::start(spec, None).await.unwrap();
        // c1 does not manage host-b: it must go through c2.
        let err = migrate(&c, "c1", "g1", "host-b")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("c1 manages no host named host-b"), "{err}");
        let stats = migrate(&c, "c1", "g1", "host-b@c2").await.unwrap();
        assert_eq!(
            stats.result,
            MigrationResult::Completed,
            "{:?}",
            stats.error
        );
        assert_eq!(stats.transport, Transport::Aes256Gcm);
        assert!(c.host("host-b").guest("g1").is_some());
        // Both coordinators know how it went.
        let c1 = status(&c, "c1").await;
        assert_eq!(c1[0].destination, "host-b@c2");
        let c2 = status(&c, "c2").await;
        assert_eq!(c2.len(), 1);
        assert_eq!(c2[0].id, stats.id);
        assert_eq!(c2[0].source, "host-a@c1");
    });
}

#[test]
fn the_key_never_appears_in_logs_errors_or_status() {
    // A known key, so that we can look for it.
    let key_bytes = [
        0xa7u8, 0x3c, 0x51, 0xe9, 0x08, 0xd2, 0x6f, 0xb4, 0x19, 0x85, 0xce, 0x2a, 0x77, 0xf0, 0x43,
        0x9d, 0x12, 0x6b, 0xe8, 0x34, 0xc5, 0x0f, 0x99, 0x5e, 0xa1, 0x28, 0xdd, 0x73, 0x4c, 0xb6,
        0x0a, 0xf1,
    ];
    let ks: ferry::coordinator::KeySource = Arc::new(move || MigrationKey::from_bytes(key_bytes));
    let (outputs, logs) = capture(|| {
        rt().block_on(async {
            let c = Cluster::start(
                two_hosts(true, 256 << 20, EncryptionMode::Required),
                Some(ks.clone()),
            )
            .await
            .unwrap();
            let stats = migrate(&c, "c1", "g1", "host-b").await.unwrap();
            assert_eq!(stats.result, MigrationResult::Completed);
            assert_eq!(stats.transport, Transport::Aes256Gcm);
            // A failing one too: its errors travel back to the client.
            let opts = MigrateOptions {
                streams: Some(1),
                limits: Some(Limits {
                    max_record: 1,
                    ..Limits::default()
                }),
                ..Default::default()
            };
            let err = request_migration(
                &c.client,
                &c.coordinator("c1"),
                "g1",
                None,
                "host-a",
                opts,
                |_| {},
            )
            .await
            .unwrap_err();
            let recs = status(&c, "c1").await;
            vec![
                serde_json::to_string(&stats).unwrap(),
                err.to_string(),
                serde_json::to_string(&recs).unwrap(),
            ]
        })
    });
    assert!(
        logs.contains("migration: spec created") && logs.contains("migration: pass"),
        "the capture saw the daemons"
    );
    let forms = [
        hex::encode(key_bytes),
        hex::encode_upper(key_bytes),
        format!("{key_bytes:?}"),
        base64(&key_bytes),
        hex::encode(&key_bytes[..8]),
    ];
    for text in outputs.iter().chain(std::iter::once(&logs)) {
        for f in &forms {
            assert!(!text.contains(f.as_str()), "the key appears in output: {f}");
        }
        assert!(
            !text.as_bytes().windows(32).any(|w| w == key_bytes),
            "raw key bytes in output"
        );
    }
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            }
        }
    }
    s
}

#[test]
fn destination_already_running_the_guest_refuses_the_spec() {
    rt().block_on(async {
        // host-b runs its own g1: a second g1 cannot arrive there.
        let spec = ClusterSpec {
            coordinators: vec!["c1".into()],
            hosts: vec![
                host(
                    "host-a",
                    "c1",
                    true,
                    256 << 20,
                    vec![guest("g1", 32 << 20, EncryptionMode::Opportunistic)],
                ),
                host(
                    "host-b",
                    "c1",
                    true,
                    256 << 20,
                    vec![guest("g1", 16 << 20, EncryptionMode::Opportunistic)],
                ),
            ],
            defaults: Default::default(),
            scheduler: Default::default(),
        };
        let c = Cluster::start(spec, None).await.unwrap();
        let opts = MigrateOptions {
            streams: Some(1),
            ..Default::default()
        };
        let err = request_migration(
            &c.client,
            &c.coordinator("c1"),
            "g1",
            Some("host-a".into()),
            "host-b",
            opts,
            |_| {},
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("the destination refused the migration")
                && err.contains("guest g1 already exists on host-b"),
            "{err}"
        );
        assert_eq!(
            c.host("host-a").guest("g1").unwrap().run_state(),
            RunState::Running
        );
        assert_eq!(
            c.host("host-b").guest("g1").unwrap().memory().len(),
            16 << 20,
            "host-b's own g1 is untouched"
        );
    });
}

async fn migrate_with_mode(
    c: &Cluster,
    guest: &str,
    to: &str,
    mode: Option<EncryptionMode>,
) -> Result<Box<ferry::engine::MigrationStats>, ControlError> {
    let opts = MigrateOptions {
        streams: Some(2),
        mode,
        ..Default::default()
    };
    request_migration(
        &c.client,
        &c.coordinator("c1"),
        guest,
        None,
        to,
        opts,
        |_| {},
    )
    .await
}

/// The encryption setting `host` reports for `guest`.
async fn setting_on(c: &Cluster, host: &str, guest: &str) -> Option<EncryptionMode> {
    let r = c.coordinator("c1");
    let Response::Hosts { hosts, .. } = c
        .client
        .call(&r.name, r.addr, &Request::Hosts, Duration::from_secs(10))
        .await
        .unwrap()
    else {
        panic!()
    };
    hosts
        .into_iter()
        .find(|h| h.name == host)?
        .capabilities?
        .guests
        .into_iter()
        .find(|g| g.info.name == guest)
        .map(|g| g.encryption)
}

#[test]
fn a_client_can_raise_a_guests_encryption_but_never_lower_it() {
    use EncryptionMode::*;
    rt().block_on(async {
        // A Required guest asked to move in the clear: refused, untouched.
        let c = Cluster::start(two_hosts(true, 256 << 20, Required), None)
            .await
            .unwrap();
        for lower in [Disabled, Opportunistic] {
            let err = migrate_with_mode(&c, "g1", "host-b", Some(lower))
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    "guest g1 is set to encryption required: a migration may ask for more ({lower} is less)"
                )),
                "--mode {lower}: {err}"
            );
        }
        assert!(status(&c, "c1").await.is_empty(), "no spec was created");
        assert_eq!(setting_on(&c, "host-a", "g1").await, Some(Required));
        assert_eq!(setting_on(&c, "host-b", "g1").await, None);
        let stats = migrate_with_mode(&c, "g1", "host-b", None).await.unwrap();
        assert_eq!(
            (stats.result, stats.mode, stats.transport),
            (MigrationResult::Completed, Required, Transport::Aes256Gcm)
        );
        drop(c);

        // An Opportunistic guest moved with --mode required: encrypted, and
        // it arrives still Opportunistic (the request does not stick).
        let c = Cluster::start(two_hosts(true, 256 << 20, Opportunistic), None)
            .await
            .unwrap();
        let stats = migrate_with_mode(&c, "g1", "host-b", Some(Required))
            .await
            .unwrap();
        assert_eq!(
            (stats.result, stats.mode, stats.transport),
            (MigrationResult::Completed, Required, Transport::Aes256Gcm)
        );
        assert_eq!(setting_on(&c, "host-b", "g1").await, Some(Opportunistic));
        let back = migrate_with_mode(&c, "g1", "host-a", None).await.unwrap();
        assert_eq!((back.result, back.mode), (MigrationResult::Completed, Opportunistic));
        assert_eq!(setting_on(&c, "host-a", "g1").await, Some(Opportunistic));
    });
}

#[test]
fn a_migration_asked_with_a_zero_downtime_limit_is_refused_before_memory_moves() {
    rt().block_on(async {
        let c = Cluster::start(
            two_hosts(true, 256 << 20, EncryptionMode::Opportunistic),
            None,
        )
        .await
        .unwrap();
        let opts = MigrateOptions {
            limits: Some(Limits {
                downtime_limit: Duration::ZERO,
                // Bounds the run should the refusal ever go missing.
                max_time: Duration::from_secs(5),
                ..Limits::default()
            }),
            ..Default::default()
        };
        let err = request_migration(
            &c.client,
            &c.coordinator("c1"),
            "g1",
            None,
            "host-b",
            opts,
            |_| {},
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("limits.downtime_limit: must be more than 0"),
            "{err}"
        );
        assert!(
            status(&c, "c1").await.is_empty(),
            "no spec left the coordinator"
        );
        assert_eq!(
            c.host("host-a").guest("g1").unwrap().run_state(),
            RunState::Running
        );
    });
}

#[test]
fn a_malformed_request_or_unknown_operation_gets_an_error_reply() {
    rt().block_on(async {
        let c = Cluster::start(
            two_hosts(true, 256 << 20, EncryptionMode::Opportunistic),
            None,
        )
        .await
        .unwrap();
        let coord = c.coordinator("c1");
        for (what, msg, want) in [
            (
                "an unknown operation",
                serde_json::json!({ "op": "frobnicate" }),
                "bad request: malformed message: unknown variant `frobnicate`",
            ),
            (
                "a message that is no request",
                serde_json::json!("hosts"),
                "bad request: malformed message: invalid type: string",
            ),
            (
                "a request missing its fields",
                serde_json::json!({ "op": "migrate" }),
                "bad request: malformed message: missing field `guest`",
            ),
        ] {
            let err = c
                .client
                .call(&coord.name, coord.addr, &msg, Duration::from_secs(5))
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{what}: expected {want:?} in {err:?}");
        }
        // The coordinator still serves well-formed requests.
        assert!(status(&c, "c1").await.is_empty());
    });
}
