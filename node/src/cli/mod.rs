//! Subcommands of the `ferry` binary.

use std::future::Future;

use anyhow::Context;
#[cfg(feature = "client")]
use ferry_client::Identity;
use ferry_client::{Client, ConnectOptions, Trust};
use ferry_proto::types::Fingerprint;

#[cfg(unix)]
pub(crate) mod admin;
#[cfg(feature = "bench")]
pub(crate) mod bench;
#[cfg(feature = "client")]
pub(crate) mod broadcast;
#[cfg(feature = "client")]
pub(crate) mod id;
#[cfg(feature = "client")]
pub(crate) mod inbox;
pub(crate) mod node;
#[cfg(feature = "client")]
pub(crate) mod send;
pub(crate) mod status;

/// Default node address for client commands.
pub(crate) const DEFAULT_NODE: &str = "127.0.0.1:5001";

/// Installs the stderr logger. Library crates only emit; the binary decides where logs go.
pub(crate) fn init_logging(filter: &str) {
    // iroh warns on every link to a lite node (plain QUIC) that its NAT traversal and
    // multipath extensions were not negotiated: expected here, and noise in logread. Unless
    // the filter says otherwise about iroh, only its errors are shown from there.
    let filter = if filter.contains("iroh") {
        filter.to_string()
    } else {
        format!("{filter},iroh::socket::remote_map=error")
    };
    let targets: tracing_subscriber::filter::Targets = filter
        .parse()
        .unwrap_or_else(|_| "info".parse().unwrap_or_default());
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(targets)
        .try_init();
}

/// Runs a client command on a small runtime.
pub(crate) fn with_runtime(
    log: Option<String>,
    fut: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    init_logging(log.as_deref().unwrap_or("warn"));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(fut)
}

/// Connection flags shared by client commands.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct NodeFlags {
    /// The node, `host:port`.
    #[arg(long, env = "FERRY_NODE", default_value = DEFAULT_NODE)]
    pub(crate) node: String,
    /// Trust exactly this certificate fingerprint (`SHA256:...`) instead of the known-nodes file.
    #[arg(long, env = "FERRY_PIN")]
    pub(crate) pin: Option<String>,
    /// Known-nodes file (trust on first use).
    #[arg(long, env = "FERRY_KNOWN_NODES")]
    pub(crate) known_nodes: Option<std::path::PathBuf>,
}

impl NodeFlags {
    pub(crate) fn options(&self) -> anyhow::Result<ConnectOptions> {
        let trust = match &self.pin {
            Some(p) => Trust::Pinned(p.parse::<Fingerprint>().context("--pin")?),
            None => Trust::KnownNodes(
                self.known_nodes
                    .clone()
                    .unwrap_or_else(Trust::default_known_nodes),
            ),
        };
        let mut opts = ConnectOptions::with_trust(trust);
        // A person at a terminal: find out within seconds that the node went away (or was
        // restarted: it resets the old connection on the next keep-alive), not minutes.
        opts.keep_alive = std::time::Duration::from_secs(2);
        opts.idle_timeout = std::time::Duration::from_secs(10);
        Ok(opts)
    }

    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        Client::connect(&self.node, &self.options()?)
            .await
            .map_err(anyhow::Error::from)
    }
}

#[cfg(feature = "client")]
/// Connects, authenticates as `id` and attaches: the node becomes `id`'s home in the mesh
/// and publishes its hybrid key (so others can write to it).
pub(crate) async fn login(flags: &NodeFlags, id: &Identity) -> anyhow::Result<Client> {
    let client = flags.connect().await?;
    client
        .authenticate(id)
        .await
        .context("authenticating with the node")?;
    client
        .attach(id)
        .await
        .context("attaching to the node (publishing your presence and encryption key)")?;
    Ok(client)
}

#[cfg(feature = "client")]
/// Loads the identity, with a hint when it does not exist yet.
pub(crate) fn load_identity(path: &std::path::Path) -> anyhow::Result<Identity> {
    if !path.exists() {
        anyhow::bail!(
            "no identity at {}; create one with `ferry id new`",
            path.display()
        );
    }
    Ok(Identity::load(path)?)
}

/// Writes one line to stdout (the CLI's output channel).
#[allow(clippy::print_stdout)]
pub(crate) fn out(line: &str) {
    println!("{line}");
}

/// Unix milliseconds as RFC 3339 UTC.
pub(crate) fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}
