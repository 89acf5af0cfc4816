//! `ferry node`.

use std::path::PathBuf;

use anyhow::Context;
use ferry_node::{FileConfig, NodeConfig, StaticPeer};

#[derive(clap::Args, Debug)]
pub(crate) struct NodeArgs {
    /// TOML config file.
    #[arg(long, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (database and certificate) [default: ./ferry-data].
    #[arg(long, env = "FERRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Client protocol address [default: [::]:5001].
    #[arg(long, env = "FERRY_LISTEN")]
    listen: Option<String>,
    /// HTTP address for /metrics and /healthz (off unless set).
    #[arg(long, env = "FERRY_METRICS")]
    metrics: Option<String>,
    /// Requests per second per client IP; 0 turns the limit off [default: 50].
    #[arg(long, env = "FERRY_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// Mesh address (UDP) [default: [::]:5002].
    #[arg(long, env = "FERRY_MESH_LISTEN")]
    mesh_listen: Option<String>,
    /// A static mesh peer: `host:port` (its node id is learned from its handshake) or
    /// `<node id>@host:port` (only that node is accepted there); repeat, or separate with
    /// commas, for more (added to the config file's).
    #[arg(long = "peer", env = "FERRY_PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// Run without the mesh: a standalone node.
    #[arg(long, env = "FERRY_NO_MESH")]
    no_mesh: bool,
    /// Do not announce or browse with mDNS.
    #[arg(long, env = "FERRY_NO_MDNS")]
    no_mdns: bool,
    /// Admin socket [default: <data dir>/ferry.sock].
    #[arg(long, env = "FERRY_ADMIN_SOCKET")]
    admin_socket: Option<PathBuf>,
    /// Check the configuration, print it resolved (JSON) and exit without starting.
    #[arg(long)]
    check_config: bool,
}

pub(crate) fn config(args: &NodeArgs, log: Option<String>) -> anyhow::Result<NodeConfig> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let mut cfg = NodeConfig::from_file(&file).map_err(|e| match &args.config {
        Some(p) => anyhow::anyhow!("config file {}: {e}", p.display()),
        None => anyhow::anyhow!(e),
    })?;
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(l) = &args.listen {
        cfg.listen = l.clone();
    }
    if let Some(m) = &args.metrics {
        cfg.metrics = Some(m.clone()).filter(|m| !m.is_empty());
    }
    if let Some(r) = args.rate_limit {
        cfg.set_rate_limit(r);
    }
    if let Some(l) = log {
        cfg.log = l;
    }
    if let Some(m) = &args.mesh_listen {
        cfg.mesh.listen = m.clone();
    }
    for p in args.peers.iter().filter(|p| !p.trim().is_empty()) {
        cfg.mesh
            .peers
            .push(p.trim().parse::<StaticPeer>().map_err(anyhow::Error::msg)?);
    }
    if args.no_mesh {
        cfg.mesh.enabled = false;
    }
    if args.no_mdns {
        cfg.mesh.mdns = false;
    }
    if let Some(a) = &args.admin_socket {
        cfg.admin_socket = Some(a.clone());
    }
    Ok(cfg)
}

pub(crate) fn run(args: NodeArgs, log: Option<String>) -> anyhow::Result<()> {
    let cfg = config(&args, log)?;
    if args.check_config {
        cfg.validate().map_err(anyhow::Error::msg)?;
        for note in cfg.check_start().map_err(anyhow::Error::msg)? {
            eprintln!("note: {note}");
        }
        super::out(&serde_json::to_string_pretty(&resolved(&cfg))?)?;
        return Ok(());
    }
    super::init_logging(&cfg.log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.worker_threads)
        .thread_name("ferry-worker")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let node = ferry_node::start(cfg).await?;
        wait_for_signal().await?;
        node.stop().await;
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

/// The configuration as the node would run with it, for `--check-config`.
fn resolved(cfg: &NodeConfig) -> serde_json::Value {
    serde_json::json!({
        "data_dir": cfg.data_dir,
        "listen": cfg.listen,
        "admin_socket": cfg.admin_socket_path(),
        "role": cfg.role.as_str(),
        "hubs": cfg.federation.hubs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "federation": {
            "listen": cfg.federation.listen,
            "allow": cfg.federation.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "per_edge_quota": cfg.federation.per_edge_quota,
            "domain": cfg.federation.domain,
        },
        "metrics": cfg.metrics,
        "rate_limit": cfg.rate_limit,
        "log": cfg.log,
        "max_connections": cfg.max_connections,
        "max_connections_per_address": cfg.max_connections_per_address,
        "connection_rate": cfg.connection_rate,
        "auth_timeout_secs": cfg.auth_timeout.as_secs(),
        "answer_timeout_secs": cfg.answer_timeout.as_secs(),
        "max_inflight_requests": cfg.max_inflight_requests,
        "max_long_polls": cfg.max_long_polls,
        "max_request_bytes_in_flight": cfg.max_request_bytes_in_flight,
        "max_response_bytes_in_flight": cfg.max_response_bytes_in_flight,
        "default_ttl_secs": cfg.default_ttl_secs,
        "max_ttl_secs": cfg.max_ttl_secs,
        "worker_threads": cfg.worker_threads,
        "udp_receive_buffer_bytes": cfg.udp_receive_buffer,
        "store": {
            "max_total_bytes": cfg.store.max_total_bytes,
            "max_recipient_messages": cfg.store.max_recipient_messages,
            "max_recipient_bytes": cfg.store.max_recipient_bytes,
            "cache_bytes": cfg.store.cache_bytes,
            "wal": cfg.store.wal,
            "checkpoint_bytes": cfg.store.checkpoint_bytes,
            "reserve_bytes": cfg.store.reserve_bytes,
        },
        "mesh": {
            "enabled": cfg.mesh.enabled,
            "listen": cfg.mesh.listen,
            "mdns": cfg.mesh.mdns,
            "peers": cfg.mesh.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "hop_limit": cfg.mesh.hop_limit,
            "max_custody": cfg.mesh.max_custody,
            "max_peers": cfg.mesh.max_peers,
        },
    })
}
