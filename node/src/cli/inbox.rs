//! `ferry inbox`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ferry_client::message;
use ferry_client::seen::SeenLog;
use ferry_proto::types::{IdentityKey, MailboxAddr, MessageId};

use super::{NodeFlags, login, out, rfc3339};

#[derive(clap::Args, Debug)]
pub(crate) struct InboxArgs {
    #[command(flatten)]
    node: NodeFlags,
    /// Your identity file [default: $XDG_CONFIG_HOME/ferry/identity.json].
    #[arg(long = "id", env = "FERRY_ID")]
    id: Option<PathBuf>,
    /// Keep waiting for new messages (reconnects if the node goes away).
    #[arg(long)]
    follow: bool,
    /// One JSON object per line: `{"id", "from", "sent_at", "text", ...}`.
    #[arg(long)]
    json: bool,
}

const PAGE: u32 = 64;
const WAIT: Duration = Duration::from_secs(25);

pub(crate) async fn run(args: InboxArgs) -> anyhow::Result<()> {
    let path = crate::identity_path(args.id.clone());
    let id = super::load_identity(&path)?;
    let mut seen =
        SeenLog::open(&path.with_extension("seen")).context("opening the seen-messages journal")?;
    let mut backoff = FIRST_RETRY;
    loop {
        let mut connected = false;
        match session(&args, &id, &mut seen, &mut connected).await {
            Ok(()) => return Ok(()),
            Err(e) if args.follow => {
                if connected {
                    backoff = FIRST_RETRY;
                }
                tracing::warn!(error = %format!("{e:#}"), "connection lost; reconnecting in {:?}", backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(LAST_RETRY);
            }
            Err(e) => return Err(e),
        }
    }
}

/// `--follow` retries a lost node after this, doubling while it stays away...
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// ... up to this (a power-cycled router is back within a retry or two of booting).
const LAST_RETRY: Duration = Duration::from_secs(5);

async fn session(
    args: &InboxArgs,
    id: &ferry_client::Identity,
    seen: &mut SeenLog,
    connected: &mut bool,
) -> anyhow::Result<()> {
    let client = login(&args.node, id).await?;
    *connected = true;
    let mailbox = MailboxAddr::default_for(id.public_key());
    loop {
        let batch = if args.follow {
            client.fetch_wait(&mailbox, PAGE, WAIT).await?
        } else {
            client.fetch(&mailbox, PAGE).await?
        };
        let Some(last) = batch.last().map(|e| e.seq) else {
            if args.follow {
                continue;
            }
            client.close().await;
            return Ok(());
        };
        for env in &batch {
            show(args, id, seen, env)?;
        }
        // Everything shown (or recorded as unreadable) is acknowledged and deleted.
        client.ack(&mailbox, last).await?;
    }
}

fn show(
    args: &InboxArgs,
    id: &ferry_client::Identity,
    seen: &mut SeenLog,
    env: &ferry_proto::qpq::v1::Envelope,
) -> anyhow::Result<()> {
    let stamped = IdentityKey::from_field(&env.sender_key, "sender_key").ok();
    let node_id = MessageId::from_field(&env.message_id, "message_id").ok();
    match message::open(id, &env.data, stamped.as_ref()) {
        Ok(m) => {
            if seen.contains(&m.message_id) {
                tracing::warn!(id = %m.message_id, "duplicate delivery suppressed: already shown");
                return Ok(());
            }
            // Recorded before it is shown: a crash after this never shows it twice.
            seen.record(m.message_id)?;
            if args.json {
                out(&serde_json::json!({
                    "id": m.message_id.to_string(),
                    "from": m.sender.to_hex(),
                    "from_fingerprint": m.sender.fingerprint().to_string(),
                    "sent_at": rfc3339(m.sent_at_ms),
                    "sent_at_ms": m.sent_at_ms,
                    "text": m.text,
                    "seq": env.seq,
                    "received_at_ms": ferry_client::now_ms(),
                })
                .to_string());
            } else {
                out(&format!(
                    "{}  {}  {}",
                    rfc3339(m.sent_at_ms),
                    m.sender.fingerprint(),
                    m.text
                ));
            }
        }
        Err(e) => {
            if let Some(nid) = node_id {
                if seen.contains(&nid) {
                    return Ok(());
                }
                seen.record(nid)?;
            }
            tracing::warn!(seq = env.seq, error = %e, "a message could not be opened; it is acknowledged and dropped");
        }
    }
    Ok(())
}
