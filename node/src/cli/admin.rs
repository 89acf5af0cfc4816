//! `ferry peers`, `ferry routes`, `ferry presence`, `ferry store`, `ferry reconnect`: views of the node running
//! on this machine, through its admin socket.

use std::path::PathBuf;

use anyhow::Context;
use ferry_node::{FileConfig, NodeConfig};
use serde_json::Value;

use super::{out, rfc3339};

#[derive(clap::Args, Debug)]
pub(crate) struct AdminArgs {
    /// The node's config file (to find its data directory).
    #[arg(long, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// The node's data directory [default: ./ferry-data].
    #[arg(long, env = "FERRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The admin socket [default: <data dir>/ferry.sock].
    #[arg(long, env = "FERRY_ADMIN_SOCKET")]
    admin_socket: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// `ferry peers`: also the peers only heard of from neighbours (peer exchange), which
    /// this node has not linked to.
    #[arg(long)]
    all: bool,
}

fn socket(args: &AdminArgs) -> anyhow::Result<PathBuf> {
    if let Some(s) = &args.admin_socket {
        return Ok(s.clone());
    }
    let mut cfg = match &args.config {
        Some(p) => NodeConfig::from_file(&FileConfig::load(p)?).map_err(anyhow::Error::msg)?,
        None => NodeConfig::default(),
    };
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    Ok(cfg.admin_socket_path())
}

fn call(args: &AdminArgs, command: &str) -> anyhow::Result<Value> {
    let path = socket(args)?;
    let v = ferry_node::admin::call(&path, command).with_context(|| {
        format!(
            "no node answers on {} (is `ferry node` running with this data directory? try --data-dir or --admin-socket)",
            path.display()
        )
    })?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        anyhow::bail!("{e}");
    }
    Ok(v)
}

fn short(v: &Value) -> String {
    v.as_str()
        .map(|s| s.chars().take(12).collect())
        .unwrap_or_else(|| "-".into())
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

pub(crate) fn peers(args: AdminArgs) -> anyhow::Result<()> {
    let v = call(&args, "peers")?;
    if args.json {
        out(&v.to_string())?;
        return Ok(());
    }
    let all = list(&v);
    // Peers only heard of by exchange, never linked: a neighbour's view, often at addresses
    // this node cannot reach.
    let hearsay = |p: &&Value| {
        p["exchanged_by"].is_string()
            && p["linked"].as_bool() != Some(true)
            && p["configured"].as_bool() != Some(true)
            && p["mdns"].as_bool() != Some(true)
            && p["restored"].as_bool() != Some(true)
    };
    let rows: Vec<&Value> = all.iter().filter(|p| args.all || !hearsay(p)).collect();
    out(&format!(
        "{:<12}  {:<7}  {:<16}  {:>8}  {:>5}  addresses",
        "node", "link", "source", "seen", "fails"
    ))?;
    for p in &rows {
        let source = if p["hub"].as_bool() == Some(true) {
            "hub".to_string()
        } else if p["configured"].as_bool() == Some(true) {
            "static".to_string()
        } else if p["mdns"].as_bool() == Some(true) {
            "mdns".to_string()
        } else if p["restored"].as_bool() == Some(true) {
            "restored".to_string()
        } else if p["exchanged_by"].is_string() {
            format!("via {}", short(&p["exchanged_by"]))
        } else {
            "incoming".to_string()
        };
        let link = match (p["linked"].as_bool(), p["suspect"].as_bool()) {
            (Some(true), Some(true)) => "silent",
            (Some(true), _) => "up",
            _ => "-",
        };
        let addrs: Vec<&str> = list(&p["addrs"]).iter().filter_map(Value::as_str).collect();
        out(&format!(
            "{:<12}  {:<7}  {:<16}  {:>7}s  {:>5}  {}",
            short(&p["node_id"]),
            link,
            source,
            p["age_ms"].as_u64().unwrap_or(0) / 1000,
            p["failures"].as_u64().unwrap_or(0),
            addrs.join(" ")
        ))?;
        if let Some(why) = p["last_error"].as_str() {
            // The reason can hold what the peer said when it closed: shown escaped.
            out(&format!(
                "{:<12}  last dial failed: {}",
                "",
                super::terminal_safe(why)
            ))?;
        }
    }
    let hidden = all.len() - rows.len();
    if hidden > 0 {
        out(&format!(
            "{} peers ({hidden} more only heard of from neighbours: --all)",
            rows.len()
        ))?;
    } else {
        out(&format!("{} peers", rows.len()))?;
    }
    Ok(())
}

pub(crate) fn routes(args: AdminArgs) -> anyhow::Result<()> {
    let v = call(&args, "routes")?;
    if args.json {
        out(&v.to_string())?;
        return Ok(());
    }
    let rows = list(&v);
    out(&format!(
        "{:<12}  {:<12}  {:>6}  {:>8}",
        "node", "next hop", "metric", "seqno"
    ))?;
    for r in rows {
        out(&format!(
            "{:<12}  {:<12}  {:>6}  {:>8}",
            short(&r["node_id"]),
            short(&r["next_hop"]),
            r["metric"].as_u64().unwrap_or(0),
            r["seqno"].as_u64().unwrap_or(0),
        ))?;
    }
    out(&format!("{} routes", rows.len()))?;
    Ok(())
}

pub(crate) fn presence(args: AdminArgs) -> anyhow::Result<()> {
    let v = call(&args, "presence")?;
    if args.json {
        out(&v.to_string())?;
        return Ok(());
    }
    let rows = list(&v);
    out(&format!("{:<52}  {:<12}  attached", "user", "node"))?;
    for p in rows {
        out(&format!(
            "{:<52}  {:<12}  {}",
            p["user"].as_str().unwrap_or("-"),
            short(&p["node_id"]),
            p["timestamp_ms"].as_u64().map(rfc3339).unwrap_or_default(),
        ))?;
    }
    out(&format!("{} users", rows.len()))?;
    Ok(())
}

pub(crate) fn store(args: AdminArgs) -> anyhow::Result<()> {
    let v = call(&args, "store")?;
    if args.json {
        out(&v.to_string())?;
        return Ok(());
    }
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    out(&format!(
        "messages:    {} in {} mailboxes ({} bytes)",
        n("messages"),
        n("mailboxes"),
        n("bytes")
    ))?;
    out(&format!(
        "oldest:      {}",
        v["oldest_enqueued_ms"]
            .as_u64()
            .map(rfc3339)
            .unwrap_or_else(|| "-".into())
    ))?;
    out(&format!(
        "in custody:  {} bundles ({} bytes) for the mesh",
        n("custody_bundles"),
        n("custody_bytes")
    ))?;
    out(&format!(
        "expired:     {} since the database was created",
        n("expired_total")
    ))?;
    out(&format!(
        "dedup:       {} records kept for delivered messages, {} dropped early for room",
        n("dedup_records"),
        n("dedup_forgotten_total")
    ))?;
    out(&format!(
        "budget:      {} of {} bytes used (max_total_bytes)",
        n("used_bytes"),
        n("max_total_bytes")
    ))?;
    out(&format!("database:    {} bytes on disk", n("file_bytes")))?;
    out(&format!(
        "writes:      {} commits ({} checkpoints), {} fsyncs, {} bytes written since start",
        n("commits"),
        n("checkpoints"),
        n("fsyncs"),
        n("bytes_written")
    ))?;
    Ok(())
}

pub(crate) fn reconnect(args: AdminArgs) -> anyhow::Result<()> {
    let v = call(&args, "reconnect")?;
    if args.json {
        out(&v.to_string())?;
    } else {
        out("redialling known peers")?;
    }
    Ok(())
}
