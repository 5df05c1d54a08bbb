//! `omnifold`: the one binary. `serve` runs ingest and gRPC; `produce`,
//! `replay`, `dump`, `profile get`, `points ...` and `topics create` are the
//! tools around it.

mod audiences;
mod audit;
mod client;
mod config;
mod data;
mod demo;
mod keys;
mod logging;
mod ops;
mod produce;
mod render;
mod serve;
mod snapshot;
mod tools;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::Config;

/// The fold and the server allocate many small strings and collections;
/// mimalloc spends far less time on them than glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "omnifold", version, about = "Unified customer profiles and loyalty from retail event streams")]
struct Cli {
    /// Configuration file (TOML). `OMNIFOLD_SECTION__KEY` variables override it.
    #[arg(long, short, global = true, env = "OMNIFOLD_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides kafka.brokers).
    #[arg(long, global = true, env = "OMNIFOLD_BROKERS")]
    brokers: Option<String>,
    /// More log output (-v info, -vv debug). RUST_LOG takes precedence.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log as JSON lines (for log shippers).
    #[arg(long, global = true, env = "OMNIFOLD_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest events and serve gRPC until SIGINT/SIGTERM.
    Serve {
        /// gRPC listen address (overrides server.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Store directory (overrides store.path).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Prometheus metrics listen address (overrides server.metrics_listen).
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Send events to the events topic.
    Produce(produce::ProduceArgs),
    /// Read profiles over gRPC.
    Profile {
        #[command(subcommand)]
        command: tools::ProfileCommand,
    },
    /// Rebuild a store from the events topic, from the beginning.
    Replay(data::ReplayArgs),
    /// Check a store against the log: rebuild to the same offsets, report every member that differs.
    Verify(data::VerifyArgs),
    /// Write a store as canonical, sorted JSON lines (or one digest per partition).
    Dump(data::DumpArgs),
    /// Inspect the dead-letter topic and replay dead letters after a fix.
    Dlq {
        #[command(subcommand)]
        command: data::DlqCommand,
    },
    /// Audiences: list, get, members; create, update, delete (over gRPC).
    Audiences {
        /// gRPC address of a running `omnifold serve`.
        #[arg(long, global = true, default_value = tools::DEFAULT_SERVER, env = "OMNIFOLD_SERVER")]
        server: String,
        /// Print the proto JSON instead of a summary.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: audiences::AudienceCommand,
    },
    /// Points: balance, ledger, benefits, redeem, adjust (over gRPC).
    Points {
        /// gRPC address of a running `omnifold serve`.
        #[arg(long, default_value = tools::DEFAULT_SERVER, env = "OMNIFOLD_SERVER")]
        server: String,
        /// Print the proto JSON instead of a summary.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: tools::PointsCommand,
    },
    /// Make a running instance serve from a store rebuilt by `replay`, caught up first.
    Switch {
        /// gRPC address of a running `omnifold serve`.
        #[arg(long, default_value = tools::DEFAULT_SERVER, env = "OMNIFOLD_SERVER")]
        server: String,
        /// The rebuilt store (on the instance's machine).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Every partition's owner, epoch, applied offset and health, as an instance sees it (over gRPC).
    Status {
        /// gRPC address of a running `omnifold serve`.
        #[arg(long, default_value = tools::DEFAULT_SERVER, env = "OMNIFOLD_SERVER")]
        server: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reports for finance: `report liability` (over gRPC).
    Report {
        /// gRPC address of a running `omnifold serve`.
        #[arg(long, default_value = tools::DEFAULT_SERVER, env = "OMNIFOLD_SERVER")]
        server: String,
        #[command(subcommand)]
        command: tools::ReportCommand,
    },
    /// Partition snapshots: `snapshot take` (over gRPC), `snapshot list` (from the snapshot store).
    Snapshot {
        #[command(subcommand)]
        command: snapshot::SnapshotCommand,
    },
    /// Erase a member (the right to erasure): a job, answered DONE or PENDING (ask again with the same id).
    Erase {
        /// Member id, anonymous id, or an identifier as TYPE:value (e.g. PHONE:+8613800000000).
        member: String,
        /// The erasure job's id, e.g. the data-subject request's; asking again with it never erases twice.
        #[arg(long)]
        request_id: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// gRPC address of a running `omnifold serve`.
        #[arg(long, default_value = tools::DEFAULT_SERVER, env = "OMNIFOLD_SERVER")]
        server: String,
    },
    /// The audit trail: every admin and loyalty-write call, who made it and how it ended.
    Audit(audit::AuditArgs),
    /// Everything stored about one member, as JSON, to a file readable by
    /// its owner only (the right of access; needs admin and profile:pii).
    Export {
        /// Member id, anonymous id, or an identifier as TYPE:value (e.g. PHONE:+8613800000000).
        member: String,
        /// The file to write (`-`: stdout).
        #[arg(long)]
        out: PathBuf,
        /// gRPC address of a running `omnifold serve`.
        #[arg(long, default_value = tools::DEFAULT_SERVER, env = "OMNIFOLD_SERVER")]
        server: String,
    },
    /// Print a new random secret for `kafka.internal_secret`.
    Secret,
    /// API keys for callers: `keys new`, `keys list`.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// The configuration: `config check FILE` validates a file (with the
    /// `OMNIFOLD_*` overrides) and prints the effective configuration,
    /// secrets hidden.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage the topics omnifold uses.
    Topics {
        #[command(subcommand)]
        command: tools::TopicsCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate FILE with the environment's overrides; print the result as TOML, secrets hidden.
    Check { file: PathBuf },
}

/// `config check`: the file as `serve` would take it.
fn config_command(command: ConfigCommand, env: &BTreeMap<String, String>) -> Result<()> {
    match command {
        ConfigCommand::Check { file } => {
            let config = Config::load(Some(&file), env)?;
            print!("{}", config::redacted(&config)?);
            eprintln!("{} is valid", file.display());
            Ok(())
        }
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let command = match cli.command {
        Command::Config { command } => {
            let _logs = logging::init(cli.verbose, cli.log_json, None)?;
            return config_command(command, &env);
        }
        other => other,
    };
    let mut config = Config::load(cli.config.as_deref(), &env)?;
    // Flushes exported spans when `run` returns.
    let _tracing = logging::init(cli.verbose, cli.log_json, Some(&config.telemetry))?;
    if let Some(b) = cli.brokers {
        config.kafka.brokers = b;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match command {
        Command::Serve { listen, data_dir, metrics_listen } => {
            if let Some(l) = listen {
                config.server.listen = l;
            }
            if let Some(d) = data_dir {
                config.store.path = d;
            }
            if let Some(m) = metrics_listen {
                config.server.metrics_listen = m;
            }
            let config = config.validate()?;
            runtime.block_on(serve::serve(config))
        }
        Command::Produce(args) => produce::run(&config, args),
        Command::Profile { command } => runtime.block_on(tools::profile(command)),
        Command::Replay(args) => data::replay(&config, args),
        Command::Dump(args) => data::dump(&config, args),
        Command::Verify(args) => data::verify(&config, args),
        Command::Dlq { command } => data::dlq(&config, command),
        Command::Audiences { server, json, command } => runtime.block_on(audiences::run(server, json, command)),
        Command::Points { server, json, command } => {
            let out = tools::Output { json, currency: config.fold.program_currency.clone() };
            runtime.block_on(tools::points(server, out, command))
        }
        Command::Switch { server, data_dir } => runtime.block_on(tools::switch(server, data_dir)),
        Command::Report { server, command } => runtime.block_on(tools::report(server, command)),
        Command::Status { server, json } => runtime.block_on(tools::status(server, json)),
        Command::Topics { command } => runtime.block_on(tools::topics(&config, command)),
        Command::Snapshot { command } => snapshot::run(&config, &runtime, command),
        Command::Keys { command } => keys::run(command),
        Command::Config { command } => config_command(command, &env),
        Command::Audit(args) => audit::run(&config, &args),
        Command::Erase { member, request_id, reason, server } => {
            runtime.block_on(tools::erase(server, member, request_id, reason))
        }
        Command::Export { member, out, server } => runtime.block_on(tools::export(server, member, out)),
        Command::Secret => {
            let bytes: [u8; 32] = rand::random();
            println!("{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
            Ok(())
        }
    }
}
