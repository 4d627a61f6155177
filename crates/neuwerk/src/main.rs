//! `neuwerk`: a DNS-aware egress firewall with an eBPF dataplane.
//!
//! The binary only parses the command line: `run` wires the parts (run.rs),
//! `policy check` validates files, `status` and `monitor` talk to a running
//! node's admin API.

mod admin;
mod check;
mod ifaddrs;
mod observe;
mod reload;
mod run;
mod sysctl;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use neuwerk_core::config::{Config, LogFormat, LoggingConfig};
use neuwerk_mgmt::{ApiTarget, ClientError, MonitorFilter};

/// mimalloc: the DNS path allocates per query; in the benchmark's profile
/// allocation fell from about 12% of the daemon's CPU (glibc) to about 4%.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for this process. mimalloc advises them on
/// its arenas, and under the usual `defrag=madvise` setting a page fault
/// there allocates a 2 MiB page on the spot, compacting memory first if it
/// must: stalls of milliseconds on the DNS path while learned state grows.
/// In the DNS benchmark (5k qps, every name new) P99.9 was 5-18 ms with
/// them and 2.5-3 ms without. Best effort: a kernel without the call just
/// keeps its default.
fn disable_huge_pages() {
    // SAFETY: prctl with integer arguments only; touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        eprintln!(
            "neuwerk: cannot turn transparent huge pages off: {}",
            std::io::Error::last_os_error()
        );
    }
}

const DEFAULT_CONFIG: &str = "/etc/neuwerk/config.yaml";

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
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Take the programs off the interfaces and remove every pin: the node
    /// stops filtering. Stopping the daemon (SIGTERM, a crash) leaves them
    /// enforcing; this is the explicit way to stop for good.
    Detach {
        /// The config file (its interfaces and `dataplane.pin_dir`).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Policy file tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Summary of a running node: networks, rules, grants, counters.
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the API's JSON instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Live stream of decisions: drops, DNS answers and denials, grants.
    Monitor {
        #[command(flatten)]
        api: ApiArgs,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only this network.
        #[arg(long)]
        network: Option<String>,
        /// Only this verdict or result: dropped, audit_allowed, denied,
        /// allowed, servfail, filtered, audit_filtered, added, expired,
        /// revoked.
        #[arg(long)]
        verdict: Option<String>,
        /// Only events involving this address.
        #[arg(long)]
        address: Option<IpAddr>,
        /// Only this kind: packet, dns, filtered, grant.
        #[arg(long)]
        kind: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file: a summary and, per network, the ranges DNS
    /// answers never grant when valid; file:line:column when not.
    Check {
        /// The policy file.
        file: PathBuf,
    },
}

/// How `status` and `monitor` find the admin API.
#[derive(Args)]
struct ApiArgs {
    /// Read `management.listen` and the token from this config file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The API's base URL (e.g. http://127.0.0.1:3000); overrides --config.
    #[arg(long)]
    api: Option<String>,
    /// Bearer token; overrides the config's (also NEUWERK_TOKEN).
    #[arg(long, env = "NEUWERK_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ApiArgs {
    fn target(&self) -> Result<ApiTarget, ClientError> {
        let mut target = match &self.api {
            Some(url) => ApiTarget::from_url(url, None)?,
            None => ApiTarget::from_config(&self.config)?,
        };
        if self.token.is_some() {
            target.token = self.token.clone();
        }
        Ok(target)
    }
}

fn main() -> ExitCode {
    disable_huge_pages();
    match Cli::parse().command {
        Command::Run { config } => run(&config),
        Command::Detach { config } => detach(&config),
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => match neuwerk_core::policy::load_policy_file(&file) {
            Ok(policy) => {
                print!("{}", check::report(&file.display().to_string(), &policy));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Status { api, json } => client(&api, |t, out| neuwerk_mgmt::status(t, json, out)),
        Command::Monitor {
            api,
            json,
            network,
            verdict,
            address,
            kind,
        } => {
            let filter = MonitorFilter {
                network,
                verdict,
                address,
                kind,
            };
            client(&api, |t, out| neuwerk_mgmt::monitor(t, &filter, json, out))
        }
    }
}

fn run(config: &Path) -> ExitCode {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("neuwerk: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config.logging);
    match run::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("neuwerk: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn detach(config: &Path) -> ExitCode {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("neuwerk: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pins = neuwerk_datapath::pins::PinLayout::new(&config.dataplane.pin_dir);
    match neuwerk_datapath::pins::detach(&pins) {
        Ok(d) if d.links == 0 && d.map_dirs == 0 => {
            println!("nothing pinned at {}", pins.dir().display());
            ExitCode::SUCCESS
        }
        Ok(d) => {
            println!(
                "detached: {} program link(s) and {} map set(s) removed from {}; the node no \
                 longer filters",
                d.links,
                d.map_dirs,
                pins.dir().display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("neuwerk: detaching {}: {e}", pins.dir().display());
            ExitCode::FAILURE
        }
    }
}

/// Runs a client command against the API; a closed stdout (`| head`) is a
/// normal end.
fn client(
    api: &ApiArgs,
    f: impl FnOnce(&ApiTarget, &mut std::io::StdoutLock<'_>) -> Result<(), ClientError>,
) -> ExitCode {
    let result = api
        .target()
        .and_then(|t| f(&t, &mut std::io::stdout().lock()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("neuwerk: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr as `logging` says (text, or one JSON object per line);
/// the filter from RUST_LOG when set, else `logging.level`, else info.
fn init_logging(logging: &LoggingConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&logging.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match logging.format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}
