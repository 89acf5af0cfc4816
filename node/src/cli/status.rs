//! `ferry status`.

use super::{NodeFlags, out};

#[derive(clap::Args, Debug)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    node: NodeFlags,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.node.connect().await?;
    let h = client.health().await?;
    let fp = client.node_fingerprint();
    // One id: the node key's, 64 hex digits; its short form is the first 12.
    let node_id = h.node_id.clone();
    let short = node_id.get(..12).unwrap_or(&node_id);
    let mesh = !h.mesh_node_id.is_empty();
    if args.json {
        out(&serde_json::json!({
            "node": args.node.node,
            "status": h.status,
            "uptime_secs": h.uptime_secs,
            "version": h.version,
            "queue_depth": h.queue_depth,
            "node_id": node_id,
            "mesh": mesh,
            // The same id ("" without the mesh), kept for scripts written before it was the
            // only one.
            "mesh_node_id": data_encoding::HEXLOWER.encode(&h.mesh_node_id),
            "fingerprint": fp.to_string(),
        })
        .to_string())?;
    } else {
        out(&format!("node:        {} ({short})", args.node.node))?;
        out(&format!("node id:     {node_id}"))?;
        out(&format!("status:      {}", h.status))?;
        out(&format!("version:     {}", h.version))?;
        out(&format!(
            "uptime:      {}",
            humantime::format_duration(std::time::Duration::from_secs(h.uptime_secs))
        ))?;
        out(&format!("queue depth: {} messages", h.queue_depth))?;
        out(&format!("certificate: {fp}"))?;
        out(&format!("mesh:        {}", if mesh { "on" } else { "off" }))?;
    }
    client.close().await;
    Ok(())
}

#[derive(clap::Args, Debug)]
pub(crate) struct ForgetArgs {
    /// The node as you wrote it to connect (`host:port`), as in the known-nodes file.
    node: String,
    /// Known-nodes file [default: $XDG_CONFIG_HOME/ferry/known_nodes].
    #[arg(long, env = "FERRY_KNOWN_NODES")]
    known_nodes: Option<std::path::PathBuf>,
}

/// `ferry forget`: drops a node's pinned certificate (like `ssh-keygen -R`), for a node that
/// was reinstalled on purpose; the next connection pins the one it presents.
pub(crate) fn forget(args: ForgetArgs) -> anyhow::Result<()> {
    let path = args
        .known_nodes
        .unwrap_or_else(ferry_client::Trust::default_known_nodes);
    match ferry_client::trust::KnownNodes::forget(&path, &args.node)? {
        Some(fp) => out(&format!(
            "forgot {} ({fp}) in {}; the next connection pins the certificate it finds",
            args.node,
            path.display()
        )),
        None => anyhow::bail!(
            "{} has no pinned certificate in {}",
            args.node,
            path.display()
        ),
    }
}
