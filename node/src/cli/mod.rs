//! Subcommands of the `ferry` binary.

use std::future::Future;

use anyhow::Context;
#[cfg(feature = "client")]
use ferry_client::Identity;
use ferry_client::{Client, ConnectOptions, Trust};
use ferry_proto::types::Fingerprint;

#[cfg(unix)]
pub(crate) mod admin;
#[cfg(feature = "bench")]
pub(crate) mod bench;
#[cfg(feature = "client")]
pub(crate) mod broadcast;
#[cfg(feature = "client")]
pub(crate) mod id;
#[cfg(feature = "client")]
pub(crate) mod inbox;
pub(crate) mod node;
#[cfg(feature = "client")]
pub(crate) mod send;
pub(crate) mod status;

/// Default node address for client commands.
pub(crate) const DEFAULT_NODE: &str = "127.0.0.1:5001";

/// Installs the stderr logger. Library crates only emit; the binary decides where logs go.
pub(crate) fn init_logging(filter: &str) {
    // iroh warns on every link to a lite node (plain QUIC) that its NAT traversal and
    // multipath extensions were not negotiated: expected here, and noise in logread. Unless
    // the filter says otherwise about iroh, only its errors are shown from there.
    let filter = if filter.contains("iroh") {
        filter.to_string()
    } else {
        format!("{filter},iroh::socket::remote_map=error")
    };
    let targets: tracing_subscriber::filter::Targets = filter
        .parse()
        .unwrap_or_else(|_| "info".parse().unwrap_or_default());
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(targets)
        .try_init();
}

/// Runs a client command on a small runtime.
pub(crate) fn with_runtime(
    log: Option<String>,
    fut: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    init_logging(log.as_deref().unwrap_or("warn"));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(fut)
}

/// Connection flags shared by client commands.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct NodeFlags {
    /// The node, `host:port`.
    #[arg(long, env = "FERRY_NODE", default_value = DEFAULT_NODE)]
    pub(crate) node: String,
    /// Trust exactly this certificate fingerprint (`SHA256:...`) instead of the known-nodes file.
    #[arg(long, env = "FERRY_PIN")]
    pub(crate) pin: Option<String>,
    /// Known-nodes file (trust on first use).
    #[arg(long, env = "FERRY_KNOWN_NODES")]
    pub(crate) known_nodes: Option<std::path::PathBuf>,
}

impl NodeFlags {
    pub(crate) fn options(&self) -> anyhow::Result<ConnectOptions> {
        let trust = match &self.pin {
            Some(p) => Trust::Pinned(p.parse::<Fingerprint>().context("--pin")?),
            None => Trust::KnownNodes(
                self.known_nodes
                    .clone()
                    .unwrap_or_else(Trust::default_known_nodes),
            ),
        };
        let mut opts = ConnectOptions::with_trust(trust);
        // A person at a terminal: find out within seconds that no node answers, or that the
        // node went away (or was restarted: it resets the old connection on the next
        // keep-alive), not minutes.
        opts.connect_timeout = CONNECT_TIMEOUT;
        // The node's per-address rate (`ferry send -` of many lines, several commands at
        // once): go at its pace instead of failing half-way.
        opts.pace_rate_limits = Some(std::time::Duration::from_secs(120));
        opts.keep_alive = std::time::Duration::from_secs(2);
        opts.idle_timeout = std::time::Duration::from_secs(10);
        Ok(opts)
    }

    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        Client::connect(&self.node, &self.options()?)
            .await
            .map_err(|e| match e {
                ferry_client::ClientError::NoAnswer { waited, .. } => anyhow::Error::new(NoNode {
                    node: self.node.clone(),
                    waited,
                }),
                e => anyhow::Error::from(e),
            })
    }
}

/// How long a command waits for a node's handshake: on a LAN or a mesh it takes milliseconds.
pub(crate) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// No node answered the handshake.
#[derive(Debug, thiserror::Error)]
#[error(
    "no Ferry node answers at {node} (no QUIC handshake within {} s): is `ferry node` running \
     there, and is its UDP port open? (--node or FERRY_NODE to use another)",
    .waited.as_secs_f32()
)]
pub(crate) struct NoNode {
    node: String,
    waited: std::time::Duration,
}

#[cfg(feature = "client")]
impl NodeFlags {
    /// Whether `e` is a node that does not answer (not worth retrying at once).
    pub(crate) fn is_no_node(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.is::<NoNode>())
    }
}

#[cfg(feature = "client")]
/// Connects, authenticates as `id` and attaches: the node becomes `id`'s home in the mesh
/// and publishes its hybrid key (so others can write to it).
pub(crate) async fn login(
    flags: &NodeFlags,
    id: &Identity,
) -> anyhow::Result<(Client, ferry_client::Attached)> {
    let client = flags.connect().await?;
    client
        .authenticate(id)
        .await
        .context("authenticating with the node")?;
    let attached = client
        .attach(id)
        .await
        .context("attaching to the node (publishing your presence and encryption key)")?;
    Ok((client, attached))
}

/// SIGINT (Ctrl-C) as a stream, installed at once: from then on Ctrl-C no longer kills the
/// program in the middle of something; it is seen where the program waits.
#[cfg(feature = "client")]
pub(crate) fn interrupts() -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the Ctrl-C handler")
}

#[cfg(feature = "client")]
/// Loads the identity, with a hint when it does not exist yet.
pub(crate) fn load_identity(path: &std::path::Path) -> anyhow::Result<Identity> {
    if !path.exists() {
        anyhow::bail!(
            "no identity at {}; create one with `ferry id new`",
            path.display()
        );
    }
    Ok(Identity::load(path)?)
}

/// Standard output was closed by its reader (`ferry inbox | head -2`): the command ends
/// quietly, and what could not be written is neither recorded nor acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub(crate) struct OutputClosed;

/// Writes one line to stdout (the CLI's output channel) and flushes it. A closed pipe is
/// [`OutputClosed`], which `main` turns into a quiet exit.
pub(crate) fn out(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o
        .write_all(line.as_bytes())
        .and_then(|()| o.write_all(b"\n"))
        .and_then(|()| o.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(OutputClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// Writes a message's line and returns once its reader has it: on a pipe, once the reader
/// took everything written (or [`OutputClosed`] if it went away with the line unread), so
/// that what is acknowledged is what the next program actually read. A terminal or a file
/// has it once written.
#[cfg(feature = "client")]
pub(crate) async fn show_line(line: &str) -> anyhow::Result<()> {
    out(line)?;
    let stdout = rustix::stdio::stdout();
    let is_pipe = rustix::fs::fstat(stdout).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo
    });
    if !is_pipe {
        return Ok(());
    }
    loop {
        let unread = rustix::io::ioctl_fionread(stdout).unwrap_or(0);
        let mut fds = [rustix::event::PollFd::new(
            &stdout,
            rustix::event::PollFlags::empty(),
        )];
        let gone = rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default()))
            .is_ok_and(|n| n > 0)
            && fds[0]
                .revents()
                .intersects(rustix::event::PollFlags::ERR | rustix::event::PollFlags::HUP);
        match (unread, gone) {
            (0, _) => return Ok(()),
            (_, true) => return Err(OutputClosed.into()),
            _ => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
        }
    }
}

/// Text a sender wrote, made safe for a terminal: control characters (escape sequences that
/// clear the screen or set the window title, carriage returns that overwrite a line) and
/// Unicode's direction overrides are shown as `\u{..}` escapes; a newline starts a
/// continuation line marked `  | `, so no line of a message can pass for a line of the
/// program's own (another message's header, say). Tabs stay.
pub(crate) fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\n  | "),
            '\t' => out.push('\t'),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Characters no sender's text may put on a terminal as they are: C0 and C1 controls, DEL,
/// and the bidirectional overrides and isolates that make text read backwards.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}'
        )
}

/// JSON for a line of output, with the characters a terminal would act on escaped even where
/// JSON allows them raw (DEL, C1 controls, direction overrides): `ferry inbox --json` is
/// often read on a terminal too.
#[cfg(feature = "client")]
pub(crate) fn json_line(v: &serde_json::Value) -> String {
    let text = v.to_string();
    if !text.chars().any(needs_escape) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if needs_escape(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Unix milliseconds as RFC 3339 UTC. A time a sender chose that humantime cannot format (the
/// year 10000 and on) is shown as the raw milliseconds instead of failing.
pub(crate) fn rfc3339(ms: u64) -> String {
    use std::fmt::Write;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let mut s = String::new();
    match write!(s, "{}", humantime::format_rfc3339_millis(t)) {
        Ok(()) => s,
        Err(_) => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_senders_text_cannot_drive_the_terminal_or_forge_a_line() {
        let forged = "hi\n2026-12-07T10:00:00.000Z  SHA256:boss  pay him";
        assert_eq!(
            terminal_safe(forged),
            "hi\n  | 2026-12-07T10:00:00.000Z  SHA256:boss  pay him"
        );
        assert_eq!(
            terminal_safe("\x1b[2J\x1b]0;pwned\x07x"),
            "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}x"
        );
        assert_eq!(
            terminal_safe("a\rb\u{9b}c\u{202e}d\te"),
            "a\\u{d}b\\u{9b}c\\u{202e}d\te"
        );
        assert_eq!(terminal_safe("ok: ünïcode ✓"), "ok: ünïcode ✓");
    }

    #[cfg(feature = "client")]
    #[test]
    fn json_lines_escape_what_a_terminal_acts_on() {
        let j = json_line(&serde_json::json!({"text": "a\u{7f}\u{9b}\u{202e}\u{1b}b"}));
        assert_eq!(j, r#"{"text":"a\u007f\u009b\u202e\u001bb"}"#);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&j).unwrap()["text"],
            "a\u{7f}\u{9b}\u{202e}\u{1b}b"
        );
    }

    #[test]
    fn far_future_times_do_not_fail() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(u64::MAX), format!("{}ms", u64::MAX));
    }
}
