//! `ferry broadcast` and `ferry subscribe`: topics named and keyed by a passphrase; nodes flood
//! sealed posts and keep the last few per topic for late joiners.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ferry_client::topic::Topic;
use ferry_proto::types::MessageId;

use super::{NodeFlags, json_line, out, rfc3339, terminal_safe};

#[derive(clap::Args, Debug)]
pub(crate) struct BroadcastArgs {
    #[command(flatten)]
    node: NodeFlags,
    /// Your identity file [default: $XDG_CONFIG_HOME/ferry/identity.json].
    #[arg(long = "id", env = "FERRY_ID")]
    id: Option<PathBuf>,
    /// The topic's passphrase (everyone who knows it can read and post).
    #[arg(long, env = "FERRY_TOPIC")]
    topic: String,
    /// Hops the post may travel [default: 8].
    #[arg(long, default_value_t = 0)]
    hops: u8,
    /// The text.
    text: String,
}

#[derive(clap::Args, Debug)]
pub(crate) struct SubscribeArgs {
    #[command(flatten)]
    node: NodeFlags,
    /// Your identity file [default: $XDG_CONFIG_HOME/ferry/identity.json].
    #[arg(long = "id", env = "FERRY_ID")]
    id: Option<PathBuf>,
    /// The topic's passphrase.
    #[arg(long, env = "FERRY_TOPIC")]
    topic: String,
    /// Keep waiting for new posts.
    #[arg(long)]
    follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn publish(args: BroadcastArgs) -> anyhow::Result<()> {
    let id = super::load_identity(&crate::identity_path(args.id))?;
    let topic = Topic::from_passphrase(&args.topic);
    let msg = ferry_client::new_message_id()?;
    let sealed = topic.seal(&id, &msg, ferry_client::now_ms(), &args.text)?;
    let client = args.node.connect().await?;
    client
        .authenticate(&id)
        .await
        .context("authenticating with the node")?;
    let dup = client
        .broadcast_publish(&topic.id(), &msg, sealed, args.hops)
        .await?;
    client.close().await;
    out(&if dup {
        format!("already posted: {msg}")
    } else {
        format!("posted {msg}")
    })?;
    Ok(())
}

pub(crate) async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let id = super::load_identity(&crate::identity_path(args.id.clone()))?;
    let topic = Topic::from_passphrase(&args.topic);
    let client = args.node.connect().await?;
    client
        .authenticate(&id)
        .await
        .context("authenticating with the node")?;
    let mut after = 0;
    loop {
        let wait = if args.follow {
            Duration::from_secs(25)
        } else {
            Duration::ZERO
        };
        let batch = client.broadcast_fetch(&topic.id(), after, wait).await?;
        for m in &batch {
            after = after.max(m.seq);
            let Ok(mid) = MessageId::from_field(&m.message_id, "message_id") else {
                continue;
            };
            match topic.open(&mid, &m.payload) {
                Ok(p) if args.json => out(&json_line(&serde_json::json!({
                    "id": mid.to_string(),
                    "from": p.sender.to_hex(),
                    "from_fingerprint": p.sender.fingerprint().to_string(),
                    "sent_at": rfc3339(p.sent_at_ms),
                    "sent_at_ms": p.sent_at_ms,
                    "text": p.text,
                })))?,
                Ok(p) => out(&format!(
                    "{}  {}  {}",
                    rfc3339(p.sent_at_ms),
                    p.sender.fingerprint(),
                    terminal_safe(&p.text)
                ))?,
                Err(e) => tracing::warn!(seq = m.seq, error = %e, "a post could not be opened"),
            }
        }
        if batch.is_empty() && !args.follow {
            break;
        }
    }
    client.close().await;
    Ok(())
}
