//! `neuwerk`: a DNS-aware egress firewall with an eBPF dataplane.
//!
//! The binary only parses the command line; `run` wires the parts and
//! `policy` checks files.

mod reload;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "neuwerk",
    version,
    about = "DNS-aware egress firewall with an eBPF dataplane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the firewall in the foreground (SIGHUP reloads the policy).
    Run {
        /// The config file.
        #[arg(long, short, default_value = "/etc/neuwerk/config.yaml")]
        config: PathBuf,
    },
    /// Policy file tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file: a summary when valid, file:line:column when not.
    Check {
        /// The policy file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            // For its logging settings only: `run` loads it again and
            // reports what is wrong with it.
            let logging = neuwerk_core::config::Config::load(&config)
                .map(|c| c.logging)
                .unwrap_or_default();
            init_logging(&logging);
            match run::run(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("neuwerk: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => match neuwerk_core::policy::load_policy_file(&file) {
            Ok(policy) => {
                println!("{}: ok: {}", file.display(), policy.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Logs to stderr as `logging` says (text, or one JSON object per line);
/// the filter from RUST_LOG when set, else `logging.level`, else info.
fn init_logging(logging: &neuwerk_core::config::LoggingConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&logging.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match logging.format {
        neuwerk_core::config::LogFormat::Text => logs.init(),
        neuwerk_core::config::LogFormat::Json => logs.json().init(),
    }
}
