//! `ferry node`.

use std::path::PathBuf;

use anyhow::Context;
use ferry_node::{FileConfig, NodeConfig};

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
}

pub(crate) fn config(args: &NodeArgs, log: Option<String>) -> anyhow::Result<NodeConfig> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let mut cfg = NodeConfig::from_file(&file);
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
    Ok(cfg)
}

pub(crate) fn run(args: NodeArgs, log: Option<String>) -> anyhow::Result<()> {
    let cfg = config(&args, log)?;
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
