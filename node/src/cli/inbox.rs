//! `ferry inbox`: prints your messages and acknowledges them.
//!
//! A message is acknowledged (deleted at the node) only once it was written out: to a terminal
//! or a file when the write succeeded, to a pipe once the next program read it. It is recorded
//! in the seen-messages journal right after it is written, so it is shown once even if the
//! acknowledgement is lost. When the reader goes away (`ferry inbox | head -2`) or the user
//! presses Ctrl-C, the command ends quietly and what was not written stays at the node for next
//! time. (A process killed between writing a line and recording it may show that message once
//! more; none is ever lost.)
//!
//! Order: one sender's messages are shown in the order they were sent (the signed send time,
//! then the time-ordered message id), also when they arrive out of order, as mail held in the
//! mesh can: each page is sorted before it is shown, and without `--follow` every page waiting
//! is fetched first.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ferry_client::message::{self, Opened};
use ferry_client::seen::SeenLog;
use ferry_client::{Client, ClientError};
use ferry_proto::qpq::v1::Envelope;
use ferry_proto::types::{IdentityKey, MailboxAddr, MessageId};

use super::{NodeFlags, OutputClosed, json_line, login, rfc3339, show_line, terminal_safe};

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
    /// Show at most this many messages (the rest stay at the node).
    #[arg(long, short = 'n')]
    count: Option<u64>,
}

const PAGE: u32 = 64;
/// Messages fetched before any is shown, without `--follow` (so that they can be put in order).
const GATHER: usize = 4096;
const WAIT: Duration = Duration::from_secs(25);
/// How long a first look waits for mail that follows a user who moved here (the node cannot
/// tell whether any was left at the old home, so one who left none waits this long).
const FOLLOWING: Duration = Duration::from_secs(5);
/// Mail following a user arrives within this of the message before it.
const SETTLE: Duration = Duration::from_millis(500);

/// `--follow` retries a lost node after this, doubling while it stays away...
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// ... up to this (a power-cycled router is back within a retry or two of booting).
const LAST_RETRY: Duration = Duration::from_secs(5);

pub(crate) async fn run(args: InboxArgs) -> anyhow::Result<()> {
    let path = crate::identity_path(args.id.clone());
    let id = super::load_identity(&path)?;
    let mut seen =
        SeenLog::open(&path.with_extension("seen")).context("opening the seen-messages journal")?;
    let mut shown = 0u64;
    let mut backoff = FIRST_RETRY;
    let mut ctrl_c = super::interrupts()?;
    loop {
        let mut connected = false;
        let result = session(
            &args,
            &id,
            &mut seen,
            &mut shown,
            &mut connected,
            &mut ctrl_c,
        )
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is::<OutputClosed>() => return Err(e),
            Err(e) if args.follow && (retryable(&e) || NodeFlags::is_no_node(&e)) => {
                if connected {
                    backoff = FIRST_RETRY;
                }
                tracing::warn!(error = %format!("{e:#}"), "connection lost; reconnecting in {:?}", backoff);
                if or_interrupt(tokio::time::sleep(backoff), &mut ctrl_c)
                    .await
                    .is_none()
                {
                    return Ok(());
                }
                backoff = (backoff * 2).min(LAST_RETRY);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether trying again later may work: the node went away, not a refused certificate, a
/// wrong identity or a local file that cannot be written.
fn retryable(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<ClientError>())
        .any(ClientError::is_retryable)
}

/// Awaits `f`, or Ctrl-C, whichever comes first (then `None`).
async fn or_interrupt<T>(
    f: impl std::future::Future<Output = T>,
    ctrl_c: &mut tokio::signal::unix::Signal,
) -> Option<T> {
    tokio::select! {
        v = f => Some(v),
        _ = ctrl_c.recv() => None,
    }
}

/// One connection's worth. Ctrl-C is taken wherever it waits (connecting, fetching, waiting
/// for mail), never between writing a message out and recording and acknowledging it.
async fn session(
    args: &InboxArgs,
    id: &ferry_client::Identity,
    seen: &mut SeenLog,
    shown: &mut u64,
    connected: &mut bool,
    ctrl_c: &mut tokio::signal::unix::Signal,
) -> anyhow::Result<()> {
    let Some(logged_in) = or_interrupt(login(&args.node, id), ctrl_c).await else {
        return Ok(());
    };
    let (client, attached) = logged_in?;
    *connected = true;
    let mailbox = MailboxAddr::default_for(id.public_key());
    let mut first = true;
    loop {
        let left = args.count.map(|c| c.saturating_sub(*shown));
        if left == Some(0) {
            client.close().await;
            return Ok(());
        }
        let fetched = if args.follow {
            or_interrupt(client.fetch_wait(&mailbox, PAGE, WAIT), ctrl_c)
                .await
                .map(|b| b.map_err(anyhow::Error::from))
        } else {
            or_interrupt(gather(&client, &mailbox), ctrl_c).await
        };
        let Some(fetched) = fetched else {
            client.close().await;
            return Ok(());
        };
        let mut batch = fetched?;
        if batch.is_empty()
            && first
            && !args.follow
            && let Some(from) = attached.moved_from
        {
            // A user who moved here: the mail left at the old home is on its way.
            tracing::warn!(
                "your mail may be following you from node {}; waiting up to {} s for it",
                from.short(),
                FOLLOWING.as_secs()
            );
            let Some(followed) = or_interrupt(following(&client, &mailbox), ctrl_c).await else {
                client.close().await;
                return Ok(());
            };
            batch = followed?;
        }
        first = false;
        if batch.is_empty() {
            if args.follow {
                continue;
            }
            client.close().await;
            return Ok(());
        }
        let done = show_batch(args, id, seen, batch, shown).await;
        // Acknowledged: every message up to the highest seq below which all were shown (or
        // recorded as unreadable). The rest come again next time; the journal knows which of
        // them were shown.
        if let Some(upto) = done.acked_upto {
            client.ack(&mailbox, upto).await?;
        }
        if let Some(e) = done.stopped {
            client.close().await;
            return Err(e);
        }
        if !args.follow && !done.all {
            // A count reached: the rest stay at the node.
            client.close().await;
            return Ok(());
        }
    }
}

/// Mail following a user who moved here: what comes within [`FOLLOWING`], taken until it
/// pauses (it comes in a burst), so that it is shown in order.
async fn following(client: &Client, mailbox: &MailboxAddr) -> anyhow::Result<Vec<Envelope>> {
    let mut batch = client.fetch_wait(mailbox, PAGE, FOLLOWING).await?;
    while !batch.is_empty() && batch.len() < GATHER {
        let more = client.fetch_wait(mailbox, PAGE, SETTLE).await?;
        if more.is_empty() {
            break;
        }
        batch.extend(more);
    }
    Ok(batch)
}

/// Without `--follow`: everything waiting (up to [`GATHER`] messages), so it can be put in
/// order before any is shown.
async fn gather(client: &Client, mailbox: &MailboxAddr) -> anyhow::Result<Vec<Envelope>> {
    let mut all = Vec::new();
    loop {
        let page = client.fetch(mailbox, PAGE).await?;
        let n = page.len();
        all.extend(page);
        if n == 0 || all.len() >= GATHER {
            return Ok(all);
        }
    }
}

/// What showing a batch did.
struct Done {
    acked_upto: Option<u64>,
    stopped: Option<anyhow::Error>,
    /// Every message of the batch was handled (none left for a count or a closed output).
    all: bool,
}

/// Opens, orders and shows a batch; returns what may be acknowledged.
async fn show_batch(
    args: &InboxArgs,
    id: &ferry_client::Identity,
    seen: &mut SeenLog,
    batch: Vec<Envelope>,
    shown: &mut u64,
) -> Done {
    // Each envelope with what it holds: opened, or not readable.
    let mut items: Vec<(u64, Result<Opened, Option<MessageId>>)> = batch
        .iter()
        .map(|env| {
            let stamped = IdentityKey::from_field(&env.sender_key, "sender_key").ok();
            let opened = message::open(id, &env.data, stamped.as_ref()).map_err(|e| {
                tracing::warn!(seq = env.seq, error = %e, "a message could not be opened; it is acknowledged and dropped");
                MessageId::from_field(&env.message_id, "message_id").ok()
            });
            (env.seq, opened)
        })
        .collect();
    // One sender's messages in the order sent; others interleaved by the time they were sent.
    items.sort_by_key(|(seq, o)| match o {
        Ok(m) => (m.sent_at_ms, *m.message_id.as_bytes(), *seq),
        Err(_) => (0, [0; 16], *seq),
    });
    let mut handled: Vec<u64> = Vec::with_capacity(items.len());
    let mut stopped = None;
    for (seq, item) in items {
        if args.count.is_some_and(|c| *shown >= c) {
            break;
        }
        match item {
            Ok(m) if seen.contains(&m.message_id) => {
                tracing::warn!(id = %m.message_id, "duplicate delivery suppressed: already shown");
            }
            Ok(m) => {
                if let Err(e) = show_line(&line(args, &m, seq)).await {
                    stopped = Some(e);
                    break;
                }
                // Written: recorded, so it is never shown twice.
                if let Err(e) = seen.record(m.message_id) {
                    stopped = Some(e.into());
                    break;
                }
                *shown += 1;
            }
            Err(Some(nid)) => {
                if !seen.contains(&nid)
                    && let Err(e) = seen.record(nid)
                {
                    stopped = Some(e.into());
                    break;
                }
            }
            Err(None) => {}
        }
        handled.push(seq);
    }
    let all = handled.len() == batch.len() && stopped.is_none();
    handled.sort_unstable();
    let mut upto = None;
    for (env, seq) in batch.iter().zip(&handled) {
        if env.seq != *seq {
            break;
        }
        upto = Some(*seq);
    }
    Done {
        acked_upto: upto,
        stopped,
        all,
    }
}

fn line(args: &InboxArgs, m: &Opened, seq: u64) -> String {
    if args.json {
        json_line(&serde_json::json!({
            "id": m.message_id.to_string(),
            "from": m.sender.to_hex(),
            "from_fingerprint": m.sender.fingerprint().to_string(),
            "sent_at": rfc3339(m.sent_at_ms),
            "sent_at_ms": m.sent_at_ms,
            "text": m.text,
            "seq": seq,
            "received_at_ms": ferry_client::now_ms(),
        }))
    } else {
        format!(
            "{}  {}  {}",
            rfc3339(m.sent_at_ms),
            m.sender.fingerprint(),
            terminal_safe(&m.text)
        )
    }
}
