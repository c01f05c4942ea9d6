//! The `ferry` command: one subcommand per role.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferry::config::{self, DemoConfig};

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
    /// Run ferry's main job on built-in defaults in throwaway network namespaces.
    Demo {
        /// YAML settings (see config/demo.yaml); built-in defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate configuration files; the kind is taken from the file name.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("ferry: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo { config } => {
            let cfg = match config {
                Some(path) => config::load::<DemoConfig>(&path)?,
                None => DemoConfig::default(),
            };
            ferry::demo::dataplane::run(&cfg).context("data-plane demo")?;
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { files },
        } => {
            let mut failed = 0;
            for f in &files {
                match config::check(f) {
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
    }
}
