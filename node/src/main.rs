//! `ferry`: run a node, or talk to one.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Offline-first messaging node for routers and community mesh networks"
)]
struct Args {
    /// Log filter for stderr, e.g. `info` or `info,ferry_node=debug`.
    #[arg(long, global = true, env = "FERRY_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node.
    Node(cli::node::NodeArgs),
    /// Create or show your identity.
    #[command(subcommand)]
    Id(cli::id::IdCommand),
    /// Send an end-to-end encrypted message.
    Send(cli::send::SendArgs),
    /// Print (and acknowledge) the messages waiting for you.
    Inbox(cli::inbox::InboxArgs),
    /// Show a node's health.
    Status(cli::status::StatusArgs),
    /// Load-test a node (throughput, latency, memory).
    #[cfg(feature = "bench")]
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Node(n) => cli::node::run(n, args.log),
        Command::Id(c) => cli::id::run(c),
        Command::Send(s) => cli::with_runtime(args.log, cli::send::run(s)),
        Command::Inbox(i) => cli::with_runtime(args.log, cli::inbox::run(i)),
        Command::Status(s) => cli::with_runtime(args.log, cli::status::run(s)),
        #[cfg(feature = "bench")]
        Command::Bench(b) => cli::with_runtime(args.log, cli::bench::run(b)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The identity file to use: the flag, or the default under the XDG config directory.
fn identity_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(ferry_client::Identity::default_path)
}
