//! `ferry send`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ferry_proto::types::{Fingerprint, HybridKeyLookup, HybridPublicKey, IdentityKey};

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
    /// Send all of standard input as one message (a paragraph, a letter).
    #[arg(long, conflicts_with = "text")]
    stdin: bool,
    /// The message; `-` sends each line of standard input as its own message, over one
    /// connection.
    #[arg(required_unless_present = "stdin")]
    text: Option<String>,
}

/// The longest text a message may carry: what a node stores (4 MiB less 1 KiB) less the
/// envelope around the text (the hybrid key exchange, the signature, the fields).
const MAX_TEXT: usize = ferry_proto::limits::MAX_MESSAGE_LEN - 4 * 1024;

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

/// The connection, and the recipient's key once looked up (one request per message after).
#[derive(Default)]
struct Session {
    client: Option<ferry_client::Client>,
    recipient: Option<(IdentityKey, HybridPublicKey)>,
}

pub(crate) async fn run(args: SendArgs) -> anyhow::Result<()> {
    let to = recipient(&args.to)?;
    let ttl_secs = match args.ttl {
        None => 0,
        Some(d) => u32::try_from(d.as_secs().max(1)).context("--ttl is too long")?,
    };
    let id = super::load_identity(&crate::identity_path(args.id.clone()))?;
    let mut session = Session::default();
    match args.text.as_deref() {
        Some("-") => {
            use std::io::BufRead;
            for line in std::io::stdin().lock().lines() {
                let line = line.context("reading standard input")?;
                send_one(&args, &id, &to, ttl_secs, &line, &mut session).await?;
            }
        }
        Some(text) => send_one(&args, &id, &to, ttl_secs, text, &mut session).await?,
        None => {
            use std::io::Read;
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input (it must be UTF-8 text)")?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            send_one(&args, &id, &to, ttl_secs, text, &mut session).await?;
        }
    }
    if let Some(c) = session.client {
        c.close().await;
    }
    Ok(())
}

/// Sends one message, reconnecting and retrying (with the same message id) when the failure
/// is retryable, and at the node's pace when it limits the rate.
async fn send_one(
    args: &SendArgs,
    id: &ferry_client::Identity,
    to: &HybridKeyLookup,
    ttl_secs: u32,
    text: &str,
    s: &mut Session,
) -> anyhow::Result<()> {
    if text.len() > MAX_TEXT {
        anyhow::bail!(
            "the message is {} bytes; a message may carry at most {MAX_TEXT} bytes of text",
            text.len()
        );
    }
    let message_id = ferry_client::new_message_id()?;
    // Retrying with the same message id is safe: the node stores it once.
    let mut attempt = 0;
    let (recipient, resp) = loop {
        let result = async {
            if s.client.is_none() {
                s.client = Some(login(&args.node, id).await?.0);
            }
            let Some(c) = s.client.as_ref() else {
                anyhow::bail!("not connected");
            };
            if s.recipient.is_none() {
                s.recipient = Some(c.recipient(to).await?);
            }
            let Some((recipient, hybrid)) = s.recipient.as_ref() else {
                anyhow::bail!("no recipient");
            };
            let resp = c
                .send_text_to(id, recipient, hybrid, text, ttl_secs, message_id)
                .await?;
            anyhow::Ok((*recipient, resp))
        }
        .await;
        let e = match result {
            Ok(r) => break r,
            Err(e) => e,
        };
        if attempt < 2 && is_retryable(&e) && !NodeFlags::is_no_node(&e) {
            // A node that did not answer the handshake is said at once (it took 2 s), not
            // retried for half a minute.
            attempt += 1;
            tracing::warn!(error = %e, attempt, "send failed; retrying with the same message id");
            if let Some(c) = s.client.take() {
                c.close().await;
            }
            tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
        } else {
            return Err(e);
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
        .to_string())?;
    } else if resp.duplicate {
        out(&format!(
            "already stored earlier: {message_id} (seq {})",
            resp.seq
        ))?;
    } else if resp.seq == 0 {
        out(&format!(
            "sent {message_id} to {} (in custody, on its way through the mesh)",
            recipient.fingerprint(),
        ))?;
    } else {
        out(&format!(
            "sent {message_id} to {} (seq {})",
            recipient.fingerprint(),
            resp.seq
        ))?;
    }
    Ok(())
}

fn is_retryable(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<ferry_client::ClientError>())
        .any(ferry_client::ClientError::is_retryable)
}
