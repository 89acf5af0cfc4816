//! `ferry`: run a node, or talk to one.

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
    #[cfg(feature = "client")]
    Id(cli::id::IdCommand),
    /// Send an end-to-end encrypted message.
    #[cfg(feature = "client")]
    Send(cli::send::SendArgs),
    /// Print (and acknowledge) the messages waiting for you.
    #[cfg(feature = "client")]
    Inbox(cli::inbox::InboxArgs),
    /// Show a node's health.
    Status(cli::status::StatusArgs),
    /// Forget a node's pinned certificate (it was reinstalled on purpose).
    Forget(cli::status::ForgetArgs),
    /// List the mesh peers of the node running here (admin socket).
    #[cfg(unix)]
    Peers(cli::admin::AdminArgs),
    /// Show the mesh route table of the node running here.
    #[cfg(unix)]
    Routes(cli::admin::AdminArgs),
    /// Show which users the node running here can reach, and at which node.
    #[cfg(unix)]
    Presence(cli::admin::AdminArgs),
    /// Show what the node running here stores: mailboxes, custody, database.
    #[cfg(unix)]
    Store(cli::admin::AdminArgs),
    /// Ask the node running here to redial its mesh peers now (after the uplink came back).
    #[cfg(unix)]
    Reconnect(cli::admin::AdminArgs),
    /// Post to a broadcast topic (named and keyed by a passphrase).
    #[cfg(feature = "client")]
    Broadcast(cli::broadcast::BroadcastArgs),
    /// Print a broadcast topic's posts.
    #[cfg(feature = "client")]
    Subscribe(cli::broadcast::SubscribeArgs),
    /// Load-test a node (throughput, latency, memory).
    #[cfg(feature = "bench")]
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Node(n) => cli::node::run(n, args.log),
        #[cfg(feature = "client")]
        Command::Id(c) => cli::id::run(c),
        #[cfg(feature = "client")]
        Command::Send(s) => cli::with_runtime(args.log, cli::send::run(s)),
        #[cfg(feature = "client")]
        Command::Inbox(i) => cli::with_runtime(args.log, cli::inbox::run(i)),
        Command::Status(s) => cli::with_runtime(args.log, cli::status::run(s)),
        Command::Forget(f) => cli::status::forget(f),
        #[cfg(unix)]
        Command::Peers(a) => cli::admin::peers(a),
        #[cfg(unix)]
        Command::Routes(a) => cli::admin::routes(a),
        #[cfg(unix)]
        Command::Presence(a) => cli::admin::presence(a),
        #[cfg(unix)]
        Command::Store(a) => cli::admin::store(a),
        #[cfg(unix)]
        Command::Reconnect(a) => cli::admin::reconnect(a),
        #[cfg(feature = "client")]
        Command::Broadcast(b) => cli::with_runtime(args.log, cli::broadcast::publish(b)),
        #[cfg(feature = "client")]
        Command::Subscribe(s) => cli::with_runtime(args.log, cli::broadcast::subscribe(s)),
        #[cfg(feature = "bench")]
        Command::Bench(b) => cli::with_runtime(args.log, cli::bench::run(b)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of standard output went away (`ferry inbox | head -2`): it has what it
        // wanted; nothing more to say.
        Err(e) if e.is::<cli::OutputClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `a: b: c`, leaving out a cause whose text its parent
/// already ends with (errors like `store: {0}` show their source in their own text).
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(feature = "client")]
/// The identity file to use: the flag, or the default under the XDG config directory.
fn identity_path(flag: Option<std::path::PathBuf>) -> std::path::PathBuf {
    flag.unwrap_or_else(ferry_client::Identity::default_path)
}

#[cfg(test)]
mod tests {
    use super::report;

    #[test]
    fn report_names_each_cause_once() {
        let e = anyhow::Error::new(ferry_node::NodeError::Store(
            ferry_store::StoreError::SchemaTooNew {
                found: 3,
                supported: 2,
            },
        ))
        .context("starting the node");
        let r = report(&e);
        assert!(
            r.starts_with("starting the node: store: database schema version 3 is newer"),
            "{r}"
        );
        assert_eq!(r.matches("schema version").count(), 1, "{r}");
        let plain = anyhow::anyhow!("outer").context("top");
        assert_eq!(report(&plain), "top: outer");
    }
}
