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
    if args.json {
        out(&serde_json::json!({
            "node": args.node.node,
            "status": h.status,
            "uptime_secs": h.uptime_secs,
            "version": h.version,
            "queue_depth": h.queue_depth,
            "node_id": h.node_id,
            "fingerprint": fp.to_string(),
            "mesh_node_id": data_encoding::HEXLOWER.encode(&h.mesh_node_id),
        })
        .to_string());
    } else {
        out(&format!("node:        {} ({})", args.node.node, h.node_id));
        out(&format!("status:      {}", h.status));
        out(&format!("version:     {}", h.version));
        out(&format!(
            "uptime:      {}",
            humantime::format_duration(std::time::Duration::from_secs(h.uptime_secs))
        ));
        out(&format!("queue depth: {} messages", h.queue_depth));
        out(&format!("certificate: {fp}"));
        if h.mesh_node_id.is_empty() {
            out("mesh:        off");
        } else {
            out(&format!(
                "mesh id:     {}",
                data_encoding::HEXLOWER.encode(&h.mesh_node_id)
            ));
        }
    }
    client.close().await;
    Ok(())
}
