//! The admin socket: a Unix socket (mode 0600, in the data directory by default) that answers
//! one command per connection with one JSON document. `ferry peers`, `ferry routes`,
//! `ferry store`, `ferry status --local` and `ferry reconnect` (which the OpenWrt init script
//! calls when the WAN comes up) talk to it; so can scripts (`socat - UNIX:ferry.sock`).
//!
//! Commands: `status`, `peers`, `routes`, `presence`, `store`, `reconnect`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::NodeError;
use crate::state::State;

/// Longest command line accepted.
const MAX_COMMAND: usize = 64;

/// Binds the socket, replacing a stale file left by a node that died, refusing if another
/// node answers on it.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, NodeError> {
    use std::os::unix::fs::PermissionsExt;
    // Its directory may be one that only a service manager makes (`/run/ferry-hub`): made
    // here too, private, so the node runs the same by hand.
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .map_err(|source| NodeError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    if path.exists() {
        if StdUnixStream::connect(path).is_ok() {
            return Err(NodeError::Bind {
                addr: path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another node is running with this admin socket",
                ),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path).map_err(|source| NodeError::Bind {
        addr: path.display().to_string(),
        source,
    })?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(l)
}

pub(crate) async fn serve(l: UnixListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = l.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(r.take(MAX_COMMAND as u64));
            let read = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
            let reply = match read {
                Ok(Ok(_)) => answer(&state, line.trim()).await,
                _ => json!({"error": "no command received"}),
            };
            let mut out = reply.to_string();
            out.push('\n');
            let _ = w.write_all(out.as_bytes()).await;
            let _ = w.shutdown().await;
        });
    }
}

fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

async fn answer(state: &State, cmd: &str) -> Value {
    let mesh = state.mesh.as_ref();
    match cmd {
        "status" => {
            let sizes = mesh.map(|m| m.sizes());
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "node_id": state.node_id.to_hex(),
                "certificate": state.fingerprint.to_string(),
                "uptime_secs": state.started.elapsed().as_secs(),
                "draining": state.is_draining(),
                "mesh": mesh.map(|m| json!({
                    "node_id": m.node_id().to_hex(),
                    "transport": crate::mesh::TRANSPORT,
                    "listen": m.local_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "links": sizes.as_ref().map(|s| s.links),
                    "peers": sizes.as_ref().map(|s| s.peers),
                    "routes": sizes.as_ref().map(|s| s.routes),
                    "presence": sizes.as_ref().map(|s| s.presence),
                    "custody": sizes.as_ref().map(|s| s.custody),
                })),
                "federation": state.federation.as_ref().map(|f| json!({
                    "role": state.cfg.role.as_str(),
                    "listen": f.federation_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "hubs": state.cfg.federation.hubs.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                    "allow": state.cfg.federation.allow.len(),
                    "refused_links": f.refused(),
                })),
            })
        }
        "peers" => match mesh {
            Some(m) => Value::Array(
                m.peers()
                    .into_iter()
                    .map(|p| {
                        json!({
                            "node_id": p.node.to_hex(),
                            "addrs": p.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                            "linked": p.linked,
                            "hub": state.federation.as_ref().is_some_and(|f| f.is_hub(&p.node)),
                            "mdns": p.mdns,
                            "configured": p.configured,
                            "exchanged_by": p.exchanged_by.map(|n| n.to_hex()),
                            "restored": p.restored,
                            "age_ms": p.age_ms,
                            "failures": p.failures,
                            "last_error": p.last_error,
                            "suspect": p.suspect,
                            "heard_ms_ago": p.heard_ms_ago,
                        })
                    })
                    .collect(),
            ),
            None => json!({"error": "this node runs without a mesh"}),
        },
        "routes" => match mesh {
            Some(m) => Value::Array(
                m.routes()
                    .into_iter()
                    .map(|r| {
                        json!({
                            "node_id": r.dest.to_hex(),
                            "next_hop": r.next_hop.to_hex(),
                            "metric": r.metric,
                            "seqno": r.seqno,
                        })
                    })
                    .collect(),
            ),
            None => json!({"error": "this node runs without a mesh"}),
        },
        "presence" => match mesh {
            Some(m) => Value::Array(
                m.presence()
                    .into_iter()
                    .map(|(u, n, ts)| {
                        json!({
                            "user": u.fingerprint().to_string(),
                            "identity_key": hex(u.as_bytes()),
                            "node_id": n.to_hex(),
                            "timestamp_ms": ts,
                        })
                    })
                    .collect(),
            ),
            None => json!({"error": "this node runs without a mesh"}),
        },
        "store" => match state.store.stats() {
            Ok(s) => json!({
                "messages": s.messages,
                "bytes": s.bytes,
                "mailboxes": s.mailboxes,
                "oldest_enqueued_ms": s.oldest_enqueued_ms,
                "expired_total": s.expired_total,
                "custody_bundles": s.custody_bundles,
                "custody_bytes": s.custody_bytes,
                "dedup_records": s.dedup_records,
                "dedup_forgotten_total": s.dedup_forgotten_total,
                "used_bytes": s.used_bytes,
                "max_total_bytes": state.store.config().max_total_bytes,
                "file_bytes": s.file_bytes,
                "commits": s.writer.commits,
                "checkpoints": s.writer.checkpoints,
                "bytes_written": s.writer.bytes_written,
                "fsyncs": s.writer.syncs,
            }),
            Err(e) => json!({"error": e.to_string()}),
        },
        "reconnect" => match mesh {
            Some(m) => {
                // Every resolver task (static peers, hubs) wakes; a busy one finds the permit.
                state.peers_kick.notify_waiters();
                state.peers_kick.notify_one();
                m.reconnect();
                tracing::info!("reconnect requested: redialling known peers");
                json!({"ok": true})
            }
            None => json!({"error": "this node runs without a mesh"}),
        },
        other => json!({
            "error": format!("unknown command {other:?}; known: status, peers, routes, presence, store, reconnect")
        }),
    }
}

/// Sends one command to a running node's admin socket and returns its JSON answer.
pub fn call(path: &Path, command: &str) -> std::io::Result<Value> {
    let mut s = StdUnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(command.as_bytes())?;
    s.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
