//! The `ferry` command: one subcommand per role.

use ferry_core::error::report;
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// Every freed heap block is wiped first: key material that passed through
/// buffers ferry does not own (rustls's record and plaintext buffers, a
/// Vec that grew) does not outlive them in free memory.
#[global_allocator]
static ALLOC: secmem_alloc::zeroizing_alloc::ZeroizeAlloc<std::alloc::System> =
    secmem_alloc::zeroizing_alloc::ZeroizeAlloc::new(std::alloc::System);

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};

mod install;
use ferry::{
    config, config_check,
    control::{Client, Role, TlsFiles, wire::MigrateOptions},
    coordinator::{Coordinator, CoordinatorRef, request_migration},
    demo::DemoConfig,
    host::Host,
    lab::CountersConfig,
    protocol::{EncryptionMode, Limits},
};

#[derive(Parser)]
#[command(
    name = "ferry",
    version = ferry::VERSION,
    about = "eBPF-assisted, network-aware live migration of virtual machines",
    long_about = "ferry moves running virtual machines between Linux hosts over an encrypted \
                  protocol, and runs eBPF programs on the hosts and routers in the path that put \
                  migration traffic on its own VLAN, shape it, and measure how the network \
                  converges after the move."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run ferry's main job on built-in defaults: a coordinator and two hosts
    /// on loopback, a 1 GiB guest under a 50/50 GET/SET workload migrated encrypted.
    Demo {
        /// YAML settings (see config/demo.yaml); built-in defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Which guest moves: ferry's synthetic one, or the QEMU test guest
        /// (built by `cargo xtask setup`) under real QEMU.
        #[arg(long, value_enum)]
        guest: Option<ferry::host::config::GuestKind>,
    },
    /// Run the coordinator (vCenter's role): hands out migration specs.
    Coordinator {
        /// Its YAML (see config/coordinator.yaml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a host (ESXi's role): runs guests, migrates them.
    Host {
        /// Its YAML (see config/host-a.yaml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a router in the migration path: eBPF classification, HTB shaping,
    /// announcement watch, /metrics. SIGHUP re-reads the configuration and
    /// applies it live.
    Router {
        /// Its YAML (see config/router.yaml); SIGHUP re-reads it.
        #[arg(long)]
        config: PathBuf,
        /// Remove what a pinned router left (pins, HTB trees) and exit.
        #[arg(long)]
        remove: bool,
        /// Print the programs, pins, qdiscs and classes it would create
        /// (handles as `tc class show` prints them) and exit, touching
        /// nothing.
        #[arg(long, conflicts_with = "remove")]
        dry_run: bool,
    },
    /// Make a certificate authority and certificates for a lab.
    Certs {
        /// Directory to write to (an existing CA there is reused).
        #[arg(long)]
        out: PathBuf,
        /// A coordinator's certificate (server and client), by its name;
        /// repeat for several.
        #[arg(long = "coordinator", value_name = "NAME")]
        coordinators: Vec<String>,
        /// A host's certificate, by its name; repeat for several.
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// A client's certificate (for `ferry migrate`, `status`, ...),
        /// by its name; repeat for several.
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
    },
    /// Ask the coordinator to move a guest, with live progress.
    Migrate(MigrateArgs),
    /// Stop a migration before its switch-over; the guest stays on its
    /// source, running. Waits until the migration has ended.
    Cancel {
        /// The migration's id, or enough of its first digits to name one
        /// (see `ferry status`).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change a running migration's bandwidth cap or downtime limit, as
    /// `virsh migrate-setspeed` / `migrate-setmaxdowntime`. It takes effect
    /// at once: the next records sent, the next pass's convergence test.
    MigrateSet {
        /// The migration's id, or enough of its first digits to name one
        /// (see `ferry status`).
        id: String,
        /// The new cap across all streams, e.g. 1Gbit or 200MiB/s;
        /// `unlimited` lifts it.
        #[arg(long, value_parser = parse_bandwidth)]
        max_bandwidth: Option<u64>,
        /// The new downtime limit, e.g. 500ms: it switches over once the
        /// predicted stun fits this.
        #[arg(long, value_parser = parse_duration)]
        downtime_limit: Option<Duration>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show migrations the coordinator knows.
    Status {
        /// One migration in detail: its id, or enough of its first digits.
        id: Option<String>,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show the coordinator's hosts and their guests.
    Hosts {
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// End the doubt over a guest: paused on its source after a switch-over
    /// whose outcome the source could not learn, or listed on two hosts.
    /// Resumes the paused copy only when the destination, asked, never ran
    /// the guest; drops a copy only when the guest runs elsewhere.
    Resolve {
        /// The guest in doubt, by name.
        guest: String,
        /// When several hosts run the guest: the host whose copy stays (the
        /// others are discarded).
        #[arg(long, value_name = "HOST")]
        keep: Option<String>,
        /// Resume the paused copy even though the destination cannot be
        /// asked (or says it resumed a guest it no longer runs). Only when
        /// you know the guest does not run there.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Put a host in maintenance: cordon it (no migration goes to it) and
    /// move every guest off it, each to a host with the memory and, for a
    /// guest whose encryption is required, that can encrypt, within the
    /// scheduler's limits. Exits non-zero if a guest is left on it. The
    /// host stays cordoned until `ferry uncordon`.
    Drain {
        /// The host to empty.
        host: String,
        /// Cap each migration's rate, e.g. 1Gbit (default: the
        /// coordinator's scheduler.bandwidth, if any).
        #[arg(long, value_parser = |s: &str| ferry::config::Rate::parse(s))]
        max_bandwidth: Option<ferry::config::Rate>,
        /// Print the outcome as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Let migrations go to a host cordoned by `ferry drain` again.
    Uncordon {
        /// The host.
        host: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Install this binary (debug info split off), systemd units for the
    /// coordinator, host and router, example configurations, man pages and
    /// shell completions. `cargo xtask install` builds and runs it.
    Install {
        /// Everything goes under this directory: `/` for this system, or a
        /// package's staging tree.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// bin, share and lib go under it. The units go to
        /// /usr/lib/systemd/system for `/usr` (a package), to
        /// /etc/systemd/system for `/usr/local`, and under the prefix's
        /// lib/systemd/system for any other.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Where the ferry/ configuration directory goes.
        #[arg(long, default_value = "/etc")]
        sysconfdir: PathBuf,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Lab experiments in network namespaces on this machine.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
}

impl Command {
    /// Whether it is a client of a coordinator (it has `--coordinator`).
    fn talks_to_a_coordinator(&self) -> bool {
        matches!(
            self,
            Command::Migrate { .. }
                | Command::Cancel { .. }
                | Command::MigrateSet { .. }
                | Command::Status { .. }
                | Command::Hosts { .. }
                | Command::Resolve { .. }
                | Command::Drain { .. }
                | Command::Uncordon { .. }
        )
    }
}

#[derive(Args)]
struct MigrateArgs {
    /// The guest to move, by name (see `ferry hosts`).
    guest: String,
    /// Destination host: NAME, or NAME@COORDINATOR for another coordinator's host.
    #[arg(long)]
    to: String,
    /// Source host (default: wherever the guest runs).
    #[arg(long)]
    from: Option<String>,
    /// Encryption: required, opportunistic (encrypt where both hosts
    /// can) or disabled. Default: the guest's own setting.
    #[arg(long, value_parser = mode_parser())]
    mode: Option<EncryptionMode>,
    /// Parallel migration streams, 1-64; 0 (or unset): the coordinator's
    /// default, which in turn may be automatic (one per core, at most 8).
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..=64))]
    streams: Option<u16>,
    /// Switch over once the predicted stun fits this, e.g. 300ms.
    #[arg(long, value_parser = parse_duration)]
    downtime_limit: Option<Duration>,
    /// How the destination's memory is checked against the source's:
    /// off, pages (the default: page digests kept as pages move,
    /// compared at stun) or full (all of memory hashed in the stun).
    #[arg(long, value_parser = |s: &str| ferry::protocol::MemoryCheck::parse(s))]
    verify_memory: Option<ferry::protocol::MemoryCheck>,
    /// How long each side waits for the other's word at the switch-over
    /// (bounds the stun when one is lost), e.g. 10s. Default 30s.
    #[arg(long, value_parser = parse_duration)]
    switchover_timeout: Option<Duration>,
    /// Cap the migration's rate across all streams, e.g. 1Gbit or
    /// 200MiB/s, as `virsh migrate --bandwidth`. Unset: as fast as the
    /// path goes.
    #[arg(long, value_parser = |s: &str| ferry::config::Rate::parse(s))]
    max_bandwidth: Option<ferry::config::Rate>,
    /// On Ctrl-C, cancel the migration without asking (the guest stays
    /// on its source). Without it, Ctrl-C asks on a terminal, and
    /// elsewhere leaves the migration running.
    #[arg(long)]
    cancel_on_interrupt: bool,
    /// Print the final statistics as JSON on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
struct Conn {
    /// The coordinator, as NAME@ADDRESS.
    #[arg(
        long,
        env = "FERRY_COORDINATOR",
        default_value = "coordinator@127.0.0.1:7400"
    )]
    coordinator: String,
    /// Directory with ca.pem, NAME.pem and NAME-key.pem (see `ferry certs`).
    #[arg(long, env = "FERRY_TLS_DIR", default_value = "certs")]
    tls_dir: PathBuf,
    /// Which client certificate to use.
    #[arg(long = "as", env = "FERRY_CLIENT", default_value = "admin")]
    client: String,
}

impl Conn {
    fn open(&self) -> Result<(Client, CoordinatorRef)> {
        let (name, addr) = self.coordinator.split_once('@').with_context(|| {
            format!(
                "--coordinator {:?}: expected NAME@ADDRESS",
                self.coordinator
            )
        })?;
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("--coordinator {:?}: bad address", self.coordinator))?;
        let client = Client::new(&TlsFiles::in_dir(&self.tls_dir, &self.client))
            .with_context(|| format!("client {}'s TLS files", self.client))?;
        let given = CoordinatorRef {
            name: name.into(),
            addr,
        };
        let coord = follow_leader(&client, given);
        Ok((client, coord))
    }
}

/// The coordinator that leads `given`'s site: a follower names it, and the
/// CLI asks it instead (saying so on stderr). Anything else (`given`
/// leads, no leader now, no answer) keeps `given`, whose own answer then
/// says what is wrong.
fn follow_leader(client: &Client, given: CoordinatorRef) -> CoordinatorRef {
    let asked = runtime().ok().and_then(|rt| {
        rt.block_on(client.call(
            &given.name,
            given.addr,
            &ferry::control::Request::Leader,
            Duration::from_secs(10),
        ))
        .ok()
    });
    let Some(ferry::control::Response::Leader {
        leader: Some(leader),
    }) = asked
    else {
        return given;
    };
    match leader.split_once('@') {
        Some((name, addr)) if name != given.name => match addr.parse() {
            Ok(addr) => {
                eprintln!(
                    "ferry: {} does not lead its site; asking the leader, {name} at {addr}",
                    given.name
                );
                CoordinatorRef {
                    name: name.to_string(),
                    addr,
                }
            }
            Err(_) => given,
        },
        _ => given,
    }
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate configuration files and the TLS files they name.
    Check {
        /// The files; each one's kind is told by its top-level keys.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Check only the files themselves, not the TLS files they name.
        #[arg(long)]
        syntax_only: bool,
    },
    /// Print the configuration reference (Markdown): every key of every
    /// kind of file, its type, default and an example.
    Reference,
    /// Print a kind's JSON Schema (for an editor's YAML language server).
    Schema {
        /// demo, coordinator, host, counters, experiment or router.
        #[arg(value_parser = parse_kind)]
        kind: config_check::Kind,
    },
}

fn parse_kind(s: &str) -> Result<config_check::Kind, String> {
    config_check::Kind::ALL
        .iter()
        .copied()
        .find(|k| k.prefix() == s)
        .ok_or_else(|| {
            let names: Vec<_> = config_check::Kind::ALL.iter().map(|k| k.prefix()).collect();
            format!("unknown kind {s:?}: one of {}", names.join(", "))
        })
}

#[derive(Subcommand)]
enum LabCommand {
    /// eBPF VLAN counters on a veth pair between two throwaway namespaces.
    Counters {
        /// Its YAML (see config/lab/); built-in defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// What the eBPF programs cost: ns per packet (BPF_PROG_TEST_RUN) and
    /// forwarding throughput with and without ferry (iperf3).
    BenchDataplane {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 4)]
        seconds: u32,
        /// Where the JSON goes.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Benchmark the router's WAN delay line: packet rate, throughput and
    /// the cores it used; added-delay error at p50 and p99.
    BenchWan {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 4)]
        seconds: u32,
        /// Where the JSON and SVG go.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Benchmark QEMU migrations four ways, interleaved: QEMU plain TCP,
    /// QEMU's TLS, ferry Disabled, ferry encrypted; 1 and 4 channels.
    BenchQemu {
        /// Runs of each case.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Guest memory, MiB.
        #[arg(long, default_value_t = 512)]
        memory_mib: u64,
        /// MiB of it the guest fills with random bytes before the move.
        #[arg(long, default_value_t = 256)]
        touched_mib: u32,
        /// Where the JSON and SVG go.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Benchmark ferry's engine on its synthetic guest at growing sizes,
    /// idle and busy, against QEMU's own TCP and TLS with a guest of the
    /// same size, interleaved: time per GiB, downtime, CPU, memory.
    BenchMigration {
        /// Runs of each case.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Guest sizes, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "256MiB,1GiB,4GiB",
              value_parser = |s: &str| ferry::config::ByteSize::parse(s))]
        sizes: Vec<ferry::config::ByteSize>,
        /// QEMU moves the sizes up to this (its guest boots under TCG here).
        #[arg(long, default_value = "1GiB", value_parser = |s: &str| ferry::config::ByteSize::parse(s))]
        qemu_up_to: ferry::config::ByteSize,
        /// Where the JSON and SVG go.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Run the demo again and again while spinning threads load every
    /// core, and count the runs that fail (races show under load).
    DemoRepeat {
        /// How many demo runs.
        #[arg(long, default_value_t = 30)]
        runs: u32,
        /// Spinning threads (default: two per core).
        #[arg(long)]
        hogs: Option<usize>,
        /// Demo settings (see config/demo.yaml); built-in defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the JSON goes.
        #[arg(long, default_value = "target/lab")]
        out: PathBuf,
    },
    /// Print what this machine is (CPU, features, the AEAD backend that
    /// `fastest` picks), as benchmarks print it with their figures.
    Machine {
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run an experiment (config/lab/experiment-*.yaml): table, JSON, SVG.
    Run {
        /// The experiment's YAML.
        file: PathBuf,
        /// Where the JSON and SVG go.
        #[arg(long, default_value = "target/lab")]
        out: PathBuf,
    },
}

/// `--mode`: the protocol's modes by their YAML names (the protocol itself
/// knows nothing of the command line).
fn mode_parser() -> impl clap::builder::TypedValueParser<Value = EncryptionMode> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["disabled", "opportunistic", "required"])
        .map(|s| serde_yaml::from_str::<EncryptionMode>(&s).expect("a listed mode is a mode"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let v = serde_yaml::Value::String(s.to_string());
    config::deserialize_duration(v).map_err(|e| report(&e).to_string())
}

fn main() {
    let cli = Cli::parse();
    // Daemons log their phases; interactive commands show progress instead.
    let daemon = matches!(
        cli.command,
        Command::Coordinator { .. } | Command::Host { .. } | Command::Router { .. }
    );
    let default = if daemon { "warn,ferry=info" } else { "warn" };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| default.into());
    // Colour only for a person at a terminal: a log file, a pipe or the
    // journal gets plain text (and NO_COLOR is honoured).
    let colour = {
        use std::io::IsTerminal;
        std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    let client = cli.command.talks_to_a_coordinator();
    if let Err(e) = run(cli) {
        eprintln!("ferry: error: {e:#}");
        if let Some(hint) = remedy(&e, client) {
            eprintln!("ferry: hint: {hint}");
        }
        std::process::exit(1);
    }
}

/// A daemon's TLS files, loaded and checked.
fn server_tls(
    files: &TlsFiles,
    config: &std::path::Path,
) -> Result<std::sync::Arc<rustls::ServerConfig>> {
    ferry::control::tls::server_config(files).with_context(|| format!("{}: tls", config.display()))
}

/// What to do about an error, where ferry knows the usual fix: the error
/// itself says what failed and why; this says how to go on.
fn remedy(e: &anyhow::Error, client: bool) -> Option<String> {
    use ferry::control::{ControlError, tls::TlsError};
    for cause in e.chain() {
        match cause.downcast_ref::<ControlError>() {
            Some(ControlError::Connect { addr, .. }) if client => {
                return Some(format!(
                    "is `ferry coordinator` running at {addr}? --coordinator NAME@ADDRESS \
                     (or FERRY_COORDINATOR) names the one to ask"
                ));
            }
            Some(ControlError::Tls { .. }) => {
                return Some(
                    "both sides need certificates from the same CA: `ferry certs` makes them"
                        .into(),
                );
            }
            _ => {}
        }
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
        {
            return Some(
                "another process listens on that address (`ss -ltnp` shows which): \
                 stop it, or give this one another address in its configuration"
                    .into(),
            );
        }
        // A ControlError wraps a TlsError transparently: it is not a cause
        // of its own in the chain.
        let tls = cause
            .downcast_ref::<TlsError>()
            .or(match cause.downcast_ref() {
                Some(ControlError::TlsSetup(t)) => Some(t),
                _ => None,
            });
        if let Some(TlsError::File { .. }) = tls {
            return Some(if client {
                "`ferry certs --out DIR --client NAME` makes a CA and a client certificate; \
                 --tls-dir (FERRY_TLS_DIR) says where they are, --as which one to use"
                    .into()
            } else {
                "`ferry certs --out DIR --host NAME` (or --coordinator NAME) makes them; \
                 relative paths under tls: are from the configuration file's directory"
                    .into()
            });
        }
    }
    None
}

async fn run_router(cfg: ferry::router::RouterConfig, path: PathBuf) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let metrics_cfg = cfg.metrics.clone();
    let mut router = ferry::router::Router::start(cfg, None)
        .with_context(|| format!("starting the router of {}", path.display()))?;
    let _server = ferry::metrics::http::serve_daemon(
        &router.config().name,
        ferry::metrics::http::Build {
            role: "router",
            version: ferry::VERSION,
        },
        metrics_cfg.as_ref(),
        ferry::router::DEFAULT_METRICS,
        router.metrics.registry.clone(),
    )
    .await?;
    let (mut hup, mut term, mut int) = (
        signal(SignalKind::hangup())?,
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let applied = config::load::<ferry::router::RouterConfig>(&path)
                    .map_err(anyhow::Error::from)
                    .and_then(|c| router.apply(c).map_err(anyhow::Error::from));
                if let Err(e) = applied {
                    tracing::error!(error = %format!("{e:#}"), "configuration not applied; the previous one stays");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    router.stop()?;
    Ok(())
}

/// The first 12 digits of a migration id: enough to name it to `ferry
/// status` and `ferry cancel`.
fn short(id: &ferry::protocol::MigrationId) -> String {
    id.to_string()[..12].to_string()
}

async fn status(
    client: &Client,
    coord: &CoordinatorRef,
    id: Option<ferry::protocol::MigrationId>,
) -> Result<Vec<ferry::control::wire::MigrationRecord>> {
    let r = client
        .call(
            &coord.name,
            coord.addr,
            &ferry::control::Request::Status { id },
            Duration::from_secs(30),
        )
        .await
        .context("cannot get the coordinator's migrations")?;
    match r {
        ferry::control::Response::Status { migrations } => Ok(migrations),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// `--max-bandwidth` of `ferry migrate-set`: a rate, or `unlimited` (0).
fn parse_bandwidth(s: &str) -> Result<u64, String> {
    if s.trim().eq_ignore_ascii_case("unlimited") {
        return Ok(0);
    }
    let r = ferry::config::Rate::parse(s)
        .map_err(|e| e.to_string())?
        .bytes_per_second();
    if r == 0 {
        return Err(format!(
            "{s:?} is no rate: give more than 0, or `unlimited`"
        ));
    }
    Ok(r)
}

/// `ferry migrate-set`: names the migration from an abbreviated id and
/// asks the coordinator to change its limits.
async fn migrate_set(
    client: &Client,
    coord: &CoordinatorRef,
    prefix: &str,
    change: ferry::protocol::LimitChange,
) -> Result<()> {
    let all = status(client, coord, None).await?;
    let id = ferry::client::find_by_prefix(&all, prefix)?.id;
    let r = client
        .call(
            &coord.name,
            coord.addr,
            &ferry::control::Request::SetLimits { id, change },
            Duration::from_secs(30),
        )
        .await
        .context("cannot change the migration's limits")?;
    match r {
        ferry::control::Response::Resolved { message } => {
            println!("{message}");
            Ok(())
        }
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// How long `ferry cancel` waits for the migration to end: a cancel is
/// honoured between the engine's steps, and a switch-over already begun
/// runs to its end, which its timeout bounds.
const CANCEL_WAIT: Duration = Duration::from_secs(120);

/// `ferry cancel`: names the migration from an abbreviated id, asks the
/// coordinator to cancel it, and waits until it has ended.
async fn cancel(client: &Client, coord: &CoordinatorRef, prefix: &str) -> Result<()> {
    use ferry::control::wire::MigrationState;
    let all = status(client, coord, None).await?;
    let rec = ferry::client::find_by_prefix(&all, prefix)?;
    let id = rec.id;
    let r = client
        .call(
            &coord.name,
            coord.addr,
            &ferry::control::Request::Cancel { id },
            Duration::from_secs(30),
        )
        .await
        .context("cannot cancel")?;
    if let ferry::control::Response::Resolved { message } = r {
        eprintln!("{message}");
    }
    let until = std::time::Instant::now() + CANCEL_WAIT;
    loop {
        let r = status(client, coord, Some(id)).await?;
        let Some(r) = r.into_iter().next() else {
            bail!("the coordinator no longer lists migration {id}")
        };
        match r.state {
            MigrationState::Queued | MigrationState::Preparing | MigrationState::Running => {}
            MigrationState::Cancelled => {
                println!(
                    "migration {} cancelled: {} stays on {}, running",
                    short(&id),
                    r.guest,
                    r.source
                );
                return Ok(());
            }
            MigrationState::Completed => bail!(
                "too late: migration {} completed before the cancel took effect (its switch-over had begun); {} runs on {}",
                short(&id),
                r.guest,
                r.destination
            ),
            MigrationState::Failed | MigrationState::Interrupted => bail!(
                "migration {} ended before the cancel took effect: {}",
                short(&id),
                r.error
                    .unwrap_or_else(|| format!("{:?}", r.state).to_lowercase())
            ),
        }
        if std::time::Instant::now() > until {
            bail!(
                "migration {} still runs {} s after the cancel: see `ferry status {}`",
                short(&id),
                CANCEL_WAIT.as_secs(),
                short(&id)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `ferry drain`: the plan, each guest as it is done with, and the end.
async fn drain(
    client: &Client,
    coord: &CoordinatorRef,
    host: &str,
    options: MigrateOptions,
    quiet: bool,
) -> Result<ferry::control::Response> {
    use ferry::control::Response;
    let req = ferry::control::Request::Drain {
        host: host.to_string(),
        options,
    };
    let mut x = client
        .open(&coord.name, coord.addr, &req)
        .await
        .with_context(|| format!("cannot drain {host}"))?;
    loop {
        let r = x
            .next_within(ferry::control::CLIENT_SILENCE)
            .await
            .with_context(|| format!("cannot drain {host}"))?;
        match r {
            Response::DrainPlan {
                moves, unplaced, ..
            } if !quiet => {
                eprintln!(
                    "draining {host}: {} guests to move{}",
                    moves.len(),
                    if unplaced.is_empty() {
                        String::new()
                    } else {
                        format!(", {} that no host can take", unplaced.len())
                    }
                );
                for m in &moves {
                    eprintln!("  {} -> {}", m.guest, m.destination);
                }
                for u in &unplaced {
                    eprintln!("  {} stays: {}", u.guest, u.reason);
                }
            }
            Response::DrainMoved(o) if !quiet => match &o.error {
                None if o.completed => eprintln!("  moved {} to {}", o.guest, o.destination),
                e => eprintln!(
                    "  {} not moved to {}: {}",
                    o.guest,
                    o.destination,
                    e.as_deref().unwrap_or("it failed")
                ),
            },
            r @ Response::Drained { .. } => return Ok(r),
            _ => {}
        }
    }
}

/// How `ferry migrate` ended.
enum Watched {
    /// The migration ended; `interrupted`: after Ctrl-C asked to cancel it.
    Ended {
        stats: Box<ferry::engine::MigrationStats>,
        interrupted: bool,
    },
    /// Ctrl-C, and the user chose to leave it running.
    Detached { id: ferry::protocol::MigrationId },
}

/// `ferry migrate` with live progress. Ctrl-C cancels (with
/// `--cancel-on-interrupt`, or when the user says so at the prompt), or
/// leaves the migration running.
async fn migrate_watching_ctrl_c(
    client: &Client,
    coord: &CoordinatorRef,
    guest: &str,
    from: Option<String>,
    to: &str,
    options: MigrateOptions,
    cancel_on_interrupt: bool,
) -> Result<Watched> {
    use std::{cell::RefCell, io::IsTerminal, rc::Rc};
    let view = Rc::new(RefCell::new(ferry::client::ProgressView::new(false)));
    let accepted: Rc<RefCell<Option<ferry::protocol::MigrationId>>> = Rc::default();
    let (v, a) = (view.clone(), accepted.clone());
    let run = request_migration(client, coord, guest, from, to, options, move |r| {
        if let ferry::control::Response::Accepted { id, .. }
        | ferry::control::Response::Queued { id, .. } = r
        {
            *a.borrow_mut() = Some(*id);
        }
        v.borrow_mut().update(r);
    });
    let mut run = std::pin::pin!(run);
    let mut interrupted = false;
    let stats = loop {
        tokio::select! {
            r = &mut run => break r,
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                let Some(id) = *accepted.borrow() else {
                    // Not accepted yet: nothing runs that could be left behind.
                    view.borrow_mut().finish();
                    eprintln!("ferry: interrupted before the coordinator accepted the migration");
                    std::process::exit(130);
                };
                let cancel = if cancel_on_interrupt {
                    true
                } else if std::io::stdin().is_terminal() {
                    view.borrow_mut().suspend(|| eprint!(
                        "\nCancel migration {}? The guest stays on its source. [y/N] ", short(&id)));
                    let answer = tokio::task::spawn_blocking(|| {
                        let mut line = String::new();
                        std::io::stdin().read_line(&mut line).map(|_| line)
                    });
                    tokio::select! {
                        a = answer => matches!(a, Ok(Ok(l)) if l.trim().eq_ignore_ascii_case("y") || l.trim().eq_ignore_ascii_case("yes")),
                        // A second Ctrl-C at the prompt: leave it running.
                        _ = tokio::signal::ctrl_c() => false,
                    }
                } else {
                    false
                };
                if !cancel {
                    view.borrow_mut().finish();
                    return Ok(Watched::Detached { id });
                }
                interrupted = true;
                let r = client
                    .call(&coord.name, coord.addr, &ferry::control::Request::Cancel { id }, Duration::from_secs(30))
                    .await
                    .context("cannot cancel")?;
                if let ferry::control::Response::Resolved { message } = r {
                    view.borrow_mut().suspend(|| eprintln!("{message}"));
                }
            }
        }
    };
    view.borrow_mut().finish();
    Ok(Watched::Ended {
        stats: stats?,
        interrupted,
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo {
            config,
            json,
            guest,
        } => cmd_demo(config, json, guest),
        Command::Coordinator { config } => cmd_coordinator(config),
        Command::Host { config } => cmd_host(config),
        Command::Router {
            config,
            remove,
            dry_run,
        } => cmd_router(config, remove, dry_run),
        Command::Certs {
            out,
            coordinators,
            hosts,
            clients,
        } => cmd_certs(out, coordinators, hosts, clients),
        Command::Migrate(args) => cmd_migrate(args),
        Command::MigrateSet {
            id,
            max_bandwidth,
            downtime_limit,
            conn,
        } => cmd_migrate_set(id, max_bandwidth, downtime_limit, conn),
        Command::Cancel { id, conn } => cmd_cancel(id, conn),
        Command::Status { id, json, conn } => cmd_status(id, json, conn),
        Command::Hosts { json, conn } => cmd_hosts(json, conn),
        Command::Drain {
            host,
            max_bandwidth,
            json,
            conn,
        } => cmd_drain(host, max_bandwidth, json, conn),
        Command::Uncordon { host, conn } => cmd_uncordon(host, conn),
        Command::Resolve {
            guest,
            keep,
            force,
            conn,
        } => cmd_resolve(guest, keep, force, conn),
        Command::Install {
            root,
            prefix,
            sysconfdir,
        } => cmd_install(root, prefix, sysconfdir),
        Command::Config { command } => match command {
            ConfigCommand::Check { files, syntax_only } => cmd_config_check(files, syntax_only),
            ConfigCommand::Reference => cmd_config_reference(),
            ConfigCommand::Schema { kind } => cmd_config_schema(kind),
        },
        Command::Lab { command } => match command {
            LabCommand::Counters { config } => cmd_lab_counters(config),
            LabCommand::DemoRepeat {
                runs,
                hogs,
                config: path,
                out,
            } => cmd_lab_demo_repeat(runs, hogs, path, out),
            LabCommand::Machine { json } => cmd_lab_machine(json),
            LabCommand::BenchDataplane { seconds, out } => cmd_lab_bench_dataplane(seconds, out),
            LabCommand::BenchQemu {
                runs,
                memory_mib,
                touched_mib,
                out,
            } => cmd_lab_bench_qemu(runs, memory_mib, touched_mib, out),
            LabCommand::BenchMigration {
                runs,
                sizes,
                qemu_up_to,
                out,
            } => cmd_lab_bench_migration(runs, sizes, qemu_up_to, out),
            LabCommand::BenchWan { seconds, out } => cmd_lab_bench_wan(seconds, out),
            LabCommand::Run { file, out } => cmd_lab_run(file, out),
        },
    }
}

fn cmd_demo(
    config: Option<PathBuf>,
    json: bool,
    guest: Option<ferry::host::config::GuestKind>,
) -> Result<()> {
    let mut cfg = match config {
        Some(path) => config::load::<DemoConfig>(&path)?,
        None => DemoConfig::default(),
    };
    if let Some(g) = guest {
        cfg.guest_kind = g;
    }
    let summary = runtime()?.block_on(ferry::demo::migration::run(&cfg, json))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", ferry::demo::migration::render(&summary));
    }
    Ok(())
}

fn cmd_coordinator(config: PathBuf) -> Result<()> {
    let cfg = Coordinator::load_config(&config)?;
    let tls = server_tls(&cfg.tls, &config)?;
    let c = Coordinator::new(cfg)?;
    Ok(runtime()?.block_on(c.serve(tls))?)
}

fn cmd_host(config: PathBuf) -> Result<()> {
    let cfg = Host::load_config(&config)?;
    // Before the guests boot: a missing certificate is found at once.
    let tls = server_tls(&cfg.tls, &config)?;
    let rt = runtime()?;
    let h = Host::start(cfg)?;
    Ok(rt.block_on(h.serve(tls))?)
}

fn cmd_router(config: PathBuf, remove: bool, dry_run: bool) -> Result<()> {
    let cfg: ferry::router::RouterConfig = config::load(&config)?;
    if dry_run {
        print!(
            "{}",
            ferry::router::Router::plan(&cfg).with_context(|| format!("{}", config.display()))?
        );
        return Ok(());
    }
    if remove {
        ferry::router::Router::remove(&cfg, None)?;
        println!("removed what router {} left", cfg.name);
        return Ok(());
    }
    runtime()?.block_on(run_router(cfg, config))
}

fn cmd_certs(
    out: PathBuf,
    coordinators: Vec<String>,
    hosts: Vec<String>,
    clients: Vec<String>,
) -> Result<()> {
    let who: Vec<(Role, String)> = coordinators
        .into_iter()
        .map(|n| (Role::Coordinator, n))
        .chain(hosts.into_iter().map(|n| (Role::Host, n)))
        .chain(clients.into_iter().map(|n| (Role::Client, n)))
        .collect();
    if who.is_empty() {
        bail!("name at least one --coordinator, --host or --client");
    }
    for f in ferry::certs::issue(&out, &who)? {
        println!("{}", f.display());
    }
    Ok(())
}

fn cmd_migrate(args: MigrateArgs) -> Result<()> {
    let MigrateArgs {
        guest,
        to,
        from,
        mode,
        streams,
        downtime_limit,
        verify_memory,
        switchover_timeout,
        max_bandwidth,
        cancel_on_interrupt,
        json,
        conn,
    } = args;
    let (client, coord) = conn.open()?;
    let given = downtime_limit.is_some()
        || verify_memory.is_some()
        || switchover_timeout.is_some()
        || max_bandwidth.is_some();
    let limits = given.then(|| Limits {
        downtime_limit: downtime_limit.unwrap_or(Limits::default().downtime_limit),
        verify_memory: verify_memory.unwrap_or_default(),
        switchover_timeout: switchover_timeout.unwrap_or(Limits::default().switchover_timeout),
        bandwidth: max_bandwidth.map(|r| r.bytes_per_second()),
        ..Limits::default()
    });
    let options = MigrateOptions {
        mode,
        streams,
        limits,
    };
    let rt = runtime()?;
    let ended = rt.block_on(migrate_watching_ctrl_c(
        &client,
        &coord,
        &guest,
        from,
        &to,
        options,
        cancel_on_interrupt,
    ))?;
    let (stats, interrupted) = match ended {
        Watched::Ended { stats, interrupted } => (stats, interrupted),
        Watched::Detached { id } => {
            eprintln!(
                "ferry: migration {id} goes on: `ferry status {}` follows it, `ferry cancel {}` cancels it",
                short(&id),
                short(&id)
            );
            std::process::exit(130);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", ferry::client::summary(&stats));
    }
    if interrupted && stats.result != ferry::engine::MigrationResult::Completed {
        eprintln!(
            "ferry: migration {} cancelled: {} stays on {}",
            short(&stats.id),
            stats.guest,
            stats.source
        );
        std::process::exit(130);
    }
    if stats.error.is_some() {
        bail!(
            "migration failed: {}",
            stats.error.clone().unwrap_or_default()
        );
    }
    Ok(())
}

fn cmd_migrate_set(
    id: String,
    max_bandwidth: Option<u64>,
    downtime_limit: Option<Duration>,
    conn: Conn,
) -> Result<()> {
    let change = ferry::protocol::LimitChange {
        bandwidth: max_bandwidth,
        downtime_limit_us: downtime_limit.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
    };
    if change.is_empty() {
        bail!("nothing to change: give --max-bandwidth or --downtime-limit (or both)");
    }
    let (client, coord) = conn.open()?;
    runtime()?.block_on(migrate_set(&client, &coord, &id, change))
}

fn cmd_cancel(id: String, conn: Conn) -> Result<()> {
    let (client, coord) = conn.open()?;
    runtime()?.block_on(cancel(&client, &coord, &id))
}

fn cmd_status(id: Option<String>, json: bool, conn: Conn) -> Result<()> {
    let (client, coord) = conn.open()?;
    let mut migrations = runtime()?.block_on(status(&client, &coord, None))?;
    if let Some(prefix) = id {
        let one = ferry::client::find_by_prefix(&migrations, &prefix)?.clone();
        if json {
            println!("{}", serde_json::to_string_pretty(&one)?);
        } else {
            print!("{}", ferry::client::job_info(&one));
        }
        return Ok(());
    }
    migrations.sort_by_key(|r| r.started_unix_ms);
    if json {
        println!("{}", serde_json::to_string_pretty(&migrations)?);
    } else {
        print!("{}", ferry::client::status_table(&migrations));
    }
    Ok(())
}

fn cmd_hosts(json: bool, conn: Conn) -> Result<()> {
    let (client, coord) = conn.open()?;
    let r = runtime()?.block_on(client.call(
        &coord.name,
        coord.addr,
        &ferry::control::Request::Hosts,
        Duration::from_secs(60),
    ))?;
    let ferry::control::Response::Hosts { hosts, duplicates } = r else {
        bail!("unexpected answer: {r:?}")
    };
    for d in &duplicates {
        eprintln!(
            "warning: guest {} is listed on {}: keep one with `ferry resolve {} --keep HOST`",
            d.guest,
            d.hosts.join(" and "),
            d.guest
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&hosts)?);
    } else {
        for h in hosts {
            match h.capabilities {
                Some(c) => {
                    println!(
                        "{}: encryption {}, {} free of {}, migration on {}{}",
                        h.name,
                        if c.encryption { "yes" } else { "no" },
                        config::ByteSize(c.memory_free),
                        config::ByteSize(c.memory_capacity),
                        c.migration,
                        if h.cordoned {
                            " (cordoned: `ferry uncordon` lets guests come back)"
                        } else {
                            ""
                        }
                    );
                    for g in c.guests {
                        println!(
                            "  {} ({}, {} vCPUs, {}, encryption {})",
                            g.info.name,
                            config::ByteSize(g.info.memory),
                            g.info.vcpus,
                            g.info.state,
                            g.encryption
                        );
                    }
                }
                None => {
                    println!("{}: unreachable: {}", h.name, h.error.unwrap_or_default())
                }
            }
        }
    }
    Ok(())
}

fn cmd_drain(
    host: String,
    max_bandwidth: Option<ferry::config::Rate>,
    json: bool,
    conn: Conn,
) -> Result<()> {
    let (client, coord) = conn.open()?;
    let options = MigrateOptions {
        limits: max_bandwidth.map(|r| Limits {
            bandwidth: Some(r.bytes_per_second()),
            ..Limits::default()
        }),
        ..MigrateOptions::default()
    };
    let r = runtime()?.block_on(drain(&client, &coord, &host, options, json))?;
    let ferry::control::Response::Drained {
        host,
        outcomes,
        unplaced,
        remaining,
    } = r
    else {
        bail!("unexpected answer: {r:?}")
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "host": host, "outcomes": outcomes, "unplaced": unplaced, "remaining": remaining,
            }))?
        );
    } else {
        print!("{}", ferry::client::drain_table(&outcomes, &unplaced));
    }
    if !remaining.is_empty() {
        bail!(
            "{host} still runs {}: it stays cordoned; see above why, then `ferry drain {host}` again",
            remaining.join(", ")
        );
    }
    eprintln!(
        "ferry: {host} is drained and cordoned: `ferry uncordon {host}` lets guests come back"
    );
    Ok(())
}

fn cmd_uncordon(host: String, conn: Conn) -> Result<()> {
    let (client, coord) = conn.open()?;
    let r = runtime()?
        .block_on(client.call(
            &coord.name,
            coord.addr,
            &ferry::control::Request::Uncordon { host },
            Duration::from_secs(30),
        ))
        .context("cannot uncordon")?;
    match r {
        ferry::control::Response::Resolved { message } => {
            println!("{message}");
            Ok(())
        }
        other => bail!("unexpected answer: {other:?}"),
    }
}

fn cmd_resolve(guest: String, keep: Option<String>, force: bool, conn: Conn) -> Result<()> {
    let (client, coord) = conn.open()?;
    let r = runtime()?
        .block_on(client.call(
            &coord.name,
            coord.addr,
            &ferry::control::Request::Resolve { guest, keep, force },
            Duration::from_secs(60),
        ))
        .context("cannot resolve")?;
    match r {
        ferry::control::Response::Resolved { message } => {
            println!("{message}");
            Ok(())
        }
        other => bail!("unexpected answer: {other:?}"),
    }
}

fn cmd_install(root: PathBuf, prefix: PathBuf, sysconfdir: PathBuf) -> Result<()> {
    for (flag, p) in [("--prefix", &prefix), ("--sysconfdir", &sysconfdir)] {
        if !p.is_absolute() {
            bail!(
                "{flag} {}: must be an absolute path on the target system",
                p.display()
            );
        }
    }
    let exe = std::env::current_exe().context("cannot find this binary to install it")?;
    let layout = install::Layout {
        root,
        prefix,
        sysconfdir,
    };
    let before = std::fs::metadata(&exe).map(|m| m.len()).unwrap_or(0);
    for f in install::install(Cli::command(), &exe, &layout)? {
        println!("{:<60} {}", f.path.display(), f.what);
    }
    let bin = layout.root.join(
        layout
            .prefix
            .strip_prefix("/")
            .unwrap_or(&layout.prefix)
            .join("bin/ferry"),
    );
    let after = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "ferry: installed; the binary is {:.1} MB (this build {:.1} MB). Next: `ferry certs --out {}/ferry/certs ...`, edit the YAML files, then `systemctl daemon-reload && systemctl enable --now ferry-host`",
        after as f64 / 1e6,
        before as f64 / 1e6,
        layout.sysconfdir.display()
    );
    Ok(())
}

fn cmd_config_check(files: Vec<PathBuf>, syntax_only: bool) -> Result<()> {
    let mut failed = 0;
    for f in &files {
        let checked = config_check::check(f)
            .map_err(|e| report(&e).to_string())
            .and_then(|kind| {
                if !syntax_only {
                    config_check::check_files(kind, f)?;
                }
                Ok(kind)
            });
        match checked {
            Ok(kind) => println!("{}: ok ({kind:?})", f.display()),
            Err(e) => {
                eprintln!("{e}");
                failed += 1;
            }
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} configuration files are invalid",
        files.len()
    );
    Ok(())
}

fn cmd_config_reference() -> Result<()> {
    print!("{}", ferry::config_reference::markdown());
    Ok(())
}

fn cmd_config_schema(kind: config_check::Kind) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(&kind.schema())?);
    Ok(())
}

fn cmd_lab_counters(config: Option<PathBuf>) -> Result<()> {
    let cfg = match config {
        Some(path) => config::load::<CountersConfig>(&path)?,
        None => CountersConfig::default(),
    };
    ferry::lab::counters::run(&cfg).context("data-plane demo")?;
    Ok(())
}

fn cmd_lab_demo_repeat(
    runs: u32,
    hogs: Option<usize>,
    path: Option<PathBuf>,
    out: PathBuf,
) -> Result<()> {
    let cfg = match path {
        Some(path) => config::load::<DemoConfig>(&path)?,
        None => DemoConfig::default(),
    };
    let hogs =
        hogs.unwrap_or_else(|| 2 * std::thread::available_parallelism().map_or(1, |n| n.get()));
    let report = runtime()?.block_on(ferry::demo::repeat::run(&cfg, runs, hogs))?;
    print!("{}", ferry::demo::repeat::render(&report));
    std::fs::create_dir_all(&out)?;
    let path = out.join("demo-repeat.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", path.display());
    if report.failures > 0 {
        bail!("{} of {runs} demo runs failed", report.failures);
    }
    Ok(())
}

fn cmd_lab_machine(json: bool) -> Result<()> {
    let m = ferry::lab::machine::Machine::probe();
    if json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        println!("{m}");
    }
    Ok(())
}

/// A bench's figure: its file name and how to draw it.
type Figure<'a, R> = (&'a str, &'a dyn Fn(&R) -> String);

/// A bench's run: the machine it runs on first, timestamped progress on
/// stderr, then its table on stdout and its JSON (and, when `figure` names
/// one, its SVG) written into `out`.
fn bench<R: serde::Serialize>(
    out: &std::path::Path,
    json: &str,
    run: impl FnOnce(&dyn Fn(&str)) -> Result<R, ferry::lab::LabError>,
    table: impl FnOnce(&R) -> String,
    figure: Option<Figure<'_, R>>,
) -> Result<()> {
    eprintln!("{}", ferry::lab::machine::Machine::probe());
    let t0 = std::time::Instant::now();
    let r = run(&|p| eprintln!("[{:6.1}s] {p}", t0.elapsed().as_secs_f64()))?;
    print!("{}", table(&r));
    std::fs::create_dir_all(out)?;
    let path = out.join(json);
    std::fs::write(&path, serde_json::to_string_pretty(&r)?)?;
    match figure {
        Some((name, chart)) => {
            let svg = out.join(name);
            std::fs::write(&svg, chart(&r))?;
            println!("wrote {} and {}", path.display(), svg.display());
        }
        None => println!("wrote {}", path.display()),
    }
    Ok(())
}

fn cmd_lab_bench_dataplane(seconds: u32, out: PathBuf) -> Result<()> {
    bench(
        &out,
        "dataplane.json",
        |p| ferry::lab::dataplane_bench::run(seconds, p),
        |r| r.table(),
        None,
    )
}

fn cmd_lab_bench_qemu(runs: usize, memory_mib: u64, touched_mib: u32, out: PathBuf) -> Result<()> {
    if runs == 0 || touched_mib as u64 >= memory_mib {
        anyhow::bail!("--runs must be at least 1 and --touched-mib below --memory-mib");
    }
    bench(
        &out,
        "qemu.json",
        |p| ferry::lab::qemu_bench::run(runs, memory_mib, touched_mib, p),
        |r| r.table(),
        Some(("qemu.svg", &ferry::lab::qemu_bench::Results::chart)),
    )
}

fn cmd_lab_bench_migration(
    runs: usize,
    sizes: Vec<ferry::config::ByteSize>,
    qemu_up_to: ferry::config::ByteSize,
    out: PathBuf,
) -> Result<()> {
    if runs == 0 || sizes.is_empty() {
        anyhow::bail!("--runs must be at least 1 and --sizes name at least one size");
    }
    if let Some(bad) = sizes
        .iter()
        .find(|s| s.0 < 64 << 20 || !s.0.is_multiple_of(1 << 20))
    {
        anyhow::bail!("--sizes: {bad} is not a whole number of MiB of at least 64MiB");
    }
    let sizes: Vec<u64> = sizes.iter().map(|s| s.0).collect();
    bench(
        &out,
        "migration.json",
        |p| ferry::lab::migration_bench::run(runs, &sizes, qemu_up_to.0, p),
        |r| r.table(),
        Some((
            "migration.svg",
            &ferry::lab::migration_bench::Results::chart,
        )),
    )
}

fn cmd_lab_bench_wan(seconds: u32, out: PathBuf) -> Result<()> {
    bench(
        &out,
        "wan.json",
        |p| ferry::lab::wan_bench::run(seconds, p),
        |r| r.table(),
        Some((
            "wan-delay-error.svg",
            &ferry::lab::wan_bench::Results::chart,
        )),
    )
}

fn cmd_lab_run(file: PathBuf, out: PathBuf) -> Result<()> {
    let cfg: ferry::lab::experiment::ExperimentConfig = config::load(&file)?;
    eprintln!("{}", ferry::lab::machine::Machine::probe());
    let t0 = std::time::Instant::now();
    let results = ferry::lab::experiment::run(&cfg, |p| {
        eprintln!("[{:6.1}s] {p}", t0.elapsed().as_secs_f64())
    })?;
    print!("{}", results.table());
    for f in results.write(&out)? {
        println!("wrote {}", f.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option and argument of every subcommand says what it is in
    /// `--help` (and so in the man pages).
    #[test]
    fn every_option_in_every_help_has_a_description() {
        fn walk(cmd: &clap::Command, path: String, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !builtin && a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for s in cmd.get_subcommands() {
                if s.get_about().is_none() && s.get_name() != "help" {
                    missing.push(format!("{path} {} (the subcommand)", s.get_name()));
                }
                walk(s, format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "ferry".into(), &mut missing);
        assert!(
            missing.is_empty(),
            "no help text for:\n{}",
            missing.join("\n")
        );
    }
}
