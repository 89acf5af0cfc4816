//! `ferry send`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ferry_proto::types::{Fingerprint, HybridKeyLookup, IdentityKey};

use super::{NodeFlags, login, out};

#[derive(clap::Args, Debug)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    node: NodeFlags,
    /// Your identity file [default: $XDG_CONFIG_HOME/ferry/identity.json].
    #[arg(long = "id", env = "FERRY_ID")]
    id: Option<PathBuf>,
    /// Recipient: a public key (64 hex characters) or a fingerprint (`SHA256:...`).
    #[arg(long)]
    to: String,
    /// How long the network keeps the message if undelivered, e.g. `1h`, `3d` [default: node's, 7 days].
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// The message; `-` sends each line of standard input as its own message, over one
    /// connection.
    text: String,
}

fn recipient(to: &str) -> anyhow::Result<HybridKeyLookup> {
    if to.trim().starts_with(Fingerprint::PREFIX) {
        Ok(HybridKeyLookup::Fingerprint(to.parse().context("--to")?))
    } else {
        Ok(HybridKeyLookup::Identity(
            to.parse::<IdentityKey>().context(
                "--to must be a public key (64 hex characters) or a fingerprint (SHA256:...)",
            )?,
        ))
    }
}

pub(crate) async fn run(args: SendArgs) -> anyhow::Result<()> {
    let to = recipient(&args.to)?;
    let ttl_secs = match args.ttl {
        None => 0,
        Some(d) => u32::try_from(d.as_secs().max(1)).context("--ttl is too long")?,
    };
    let id = super::load_identity(&crate::identity_path(args.id.clone()))?;
    let mut client = None;
    if args.text == "-" {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading standard input")?;
            send_one(&args, &id, &to, ttl_secs, &line, &mut client).await?;
        }
    } else {
        send_one(&args, &id, &to, ttl_secs, &args.text, &mut client).await?;
    }
    if let Some(c) = client {
        c.close().await;
    }
    Ok(())
}

/// Sends one message, reconnecting and retrying (with the same message id) when the failure
/// is retryable.
async fn send_one(
    args: &SendArgs,
    id: &ferry_client::Identity,
    to: &HybridKeyLookup,
    ttl_secs: u32,
    text: &str,
    client: &mut Option<ferry_client::Client>,
) -> anyhow::Result<()> {
    let message_id = ferry_client::new_message_id()?;
    // Retrying with the same message id is safe: the node stores it once.
    let mut attempt = 0;
    let (recipient, resp) = loop {
        attempt += 1;
        let result = async {
            if client.is_none() {
                *client = Some(login(&args.node, id).await?);
            }
            let Some(c) = client.as_ref() else {
                anyhow::bail!("not connected");
            };
            c.send_text(id, to, text, ttl_secs, message_id)
                .await
                .map_err(anyhow::Error::from)
        }
        .await;
        match result {
            Ok(r) => break r,
            Err(e) if attempt < 3 && is_retryable(&e) => {
                tracing::warn!(error = %e, attempt, "send failed; retrying with the same message id");
                if let Some(c) = client.take() {
                    c.close().await;
                }
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    };
    if args.json {
        out(&serde_json::json!({
            "id": message_id.to_string(),
            "to": recipient.to_hex(),
            "seq": resp.seq,
            "duplicate": resp.duplicate,
            "sent_at_ms": ferry_client::now_ms(),
        })
        .to_string());
    } else if resp.duplicate {
        out(&format!(
            "already stored earlier: {message_id} (seq {})",
            resp.seq
        ));
    } else if resp.seq == 0 {
        out(&format!(
            "sent {message_id} to {} (in custody, on its way through the mesh)",
            recipient.fingerprint(),
        ));
    } else {
        out(&format!(
            "sent {message_id} to {} (seq {})",
            recipient.fingerprint(),
            resp.seq
        ));
    }
    Ok(())
}

fn is_retryable(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<ferry_client::ClientError>())
        .any(ferry_client::ClientError::is_retryable)
}
