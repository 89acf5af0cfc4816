//! One hub under load: `--edges` edges in this process, each a real mesh driver with its own
//! redb store and its own federation endpoint, dial a running hub (a separate `ferry node`
//! process, so its memory is its own). One user is at home on each edge; every edge sends to
//! the user of the next edge, so every bundle crosses the hub. Reported: edges connected, the
//! hub's RSS before, with the edges idle, and at its peak, and bundles relayed per second from
//! the first hand-off until the last delivery.
//!
//! `scripts/bench-hub.sh` starts the hub with the edges' ids on its allow list
//! (`ferry-bench hub-ids`) and runs this.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ed25519_dalek::{Signer, SigningKey};
use ferry_client::loadgen;
use ferry_mesh::core::{Config, PeerSource};
use ferry_mesh::driver::federation::Federation;
use ferry_mesh::driver::quic_transport::{QuicTransport, identify};
use ferry_mesh::driver::{MeshEvent, MeshHandle, Transport};
use ferry_mesh::wire::Claim;
use ferry_proto::transcript::presence_transcript;
use ferry_proto::types::{HybridPublicKey, IdentityKey, MailboxAddr, MessageId, NodeId};
use ferry_store::{BundleRecord, CustodyStore, Store, StoreConfig};
use tokio::sync::mpsc;

/// The node key of synthetic edge `i` (deterministic, so the hub's allow list can be written
/// before the run).
pub(crate) fn edge_secret(i: usize) -> [u8; 32] {
    let mut s = [0x5e; 32];
    s[..8].copy_from_slice(b"benchedg");
    s[24..].copy_from_slice(&(i as u64).to_be_bytes());
    s
}

pub(crate) fn node_of(secret: &[u8; 32]) -> NodeId {
    NodeId::from_array(SigningKey::from_bytes(secret).verifying_key().to_bytes())
}

/// Prints the node ids of `edges` synthetic edges, one per line.
pub(crate) fn ids(edges: usize) {
    for i in 0..edges {
        print_line(&node_of(&edge_secret(i)).to_string());
    }
}

#[allow(clippy::print_stdout)]
fn print_line(s: &str) {
    println!("{s}");
}

struct Edge {
    mesh: MeshHandle,
    user: IdentityKey,
    delivered: mpsc::UnboundedReceiver<MeshEvent>,
}

async fn start_edge(
    i: usize,
    dir: &std::path::Path,
    hub: NodeId,
    hub_addr: SocketAddr,
) -> anyhow::Result<Edge> {
    let secret = edge_secret(i);
    let cfg = StoreConfig {
        cache_bytes: 256 * 1024,
        ..StoreConfig::default()
    };
    let path = dir.join(format!("edge-{i}.redb"));
    let store = tokio::task::spawn_blocking(move || Store::open(path, cfg)).await??;
    let lo: SocketAddr = "127.0.0.1:0".parse()?;
    let mesh_t: Arc<dyn Transport> = Arc::new(QuicTransport::bind(secret, lo)?);
    let fed = Federation::new(mesh_t, QuicTransport::bind(secret, lo)?, [], false);
    fed.add_hub(hub);
    let transport: Arc<dyn Transport> = Arc::new(fed);
    let mut core = Config::new(transport.node_id());
    core.seed = ferry_mesh::driver::random_seed();
    let (mesh, delivered) = MeshHandle::start(
        core,
        Arc::new(store) as Arc<dyn CustodyStore>,
        transport,
        16,
    )
    .await?;
    mesh.discovered(hub, &[hub_addr], PeerSource::Static);
    // One user at home here: a claim signed by the user's own key.
    let user_key = SigningKey::from_bytes(&{
        let mut u = secret;
        u[0] ^= 0xff;
        u
    });
    let user = IdentityKey::from_array(user_key.verifying_key().to_bytes());
    let hybrid = HybridPublicKey::from_parts(&[7; 32], &[7; 1184]);
    let node = mesh.node_id();
    let ts = ferry_client::now_ms();
    let claim = Claim {
        user,
        node,
        timestamp_ms: ts,
        signature: user_key
            .sign(&presence_transcript(&user, &node, ts, &hybrid))
            .to_bytes(),
        hybrid,
    };
    mesh.attach(claim).await?;
    Ok(Edge {
        mesh,
        user,
        delivered,
    })
}

async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !f() {
        anyhow::ensure!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Runs the benchmark and prints one JSON object.
pub(crate) async fn run(
    hub_addr: SocketAddr,
    hub_pid: Option<u32>,
    edges: usize,
    messages: u64,
    size: usize,
    in_flight: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(edges >= 2, "--edges must be at least 2");
    let dir = tempfile::tempdir()?;
    let hub = identify(edge_secret(0), hub_addr)
        .await
        .context("identifying the hub")?;
    let rss_base = hub_pid.and_then(loadgen::rss_kib).map(|r| r.0);
    let t_link = Instant::now();
    let mut all = Vec::with_capacity(edges);
    for i in 0..edges {
        all.push(start_edge(i, dir.path(), hub, hub_addr).await?);
    }
    until(
        "every edge linked to the hub",
        Duration::from_secs(120),
        || {
            all.iter()
                .all(|e| e.mesh.peers().iter().any(|p| p.node == hub && p.linked))
        },
    )
    .await?;
    let link_ms = t_link.elapsed().as_millis() as u64;
    // Every edge must know where the next edge's user is at home.
    until("presence through the hub", Duration::from_secs(120), || {
        (0..edges).all(|i| all[i].mesh.is_remote(&all[(i + 1) % edges].user))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = hub_pid.and_then(loadgen::rss_kib).map(|r| r.0);

    let per_edge = messages / edges as u64;
    let total = per_edge * edges as u64;
    let start = Instant::now();
    let mut senders = Vec::new();
    for (i, e) in all.iter().enumerate() {
        let mesh = e.mesh.clone();
        let to = all[(i + 1) % edges].user;
        senders.push(tokio::spawn(async move {
            let sem = Arc::new(tokio::sync::Semaphore::new(in_flight));
            let mut tasks = Vec::new();
            for n in 0..per_edge {
                let permit = Arc::clone(&sem).acquire_owned().await?;
                let mesh = mesh.clone();
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                id[8..].copy_from_slice(&n.to_be_bytes());
                let now = ferry_client::now_ms();
                let rec = BundleRecord {
                    mailbox: MailboxAddr::default_for(to),
                    message_id: MessageId::from_array(id),
                    sender: None,
                    received_at_ms: now,
                    expires_at_ms: now + 3_600_000,
                    hop_count: 0,
                    hop_limit: 16,
                    from: None,
                    payload: vec![0xab; size],
                };
                tasks.push(tokio::spawn(async move {
                    let r = mesh.enqueue_remote(rec).await;
                    drop(permit);
                    r
                }));
            }
            for t in tasks {
                t.await??;
            }
            anyhow::Ok(())
        }));
    }
    let mut peak = rss_idle.unwrap_or(0);
    let mut delivered = 0u64;
    let mut last = Instant::now();
    while delivered < total {
        for e in &mut all {
            while let Ok(ev) = e.delivered.try_recv() {
                if let MeshEvent::Delivered(list) = ev {
                    delivered += list.len() as u64;
                    last = Instant::now();
                }
            }
        }
        if let Some((rss, _)) = hub_pid.and_then(loadgen::rss_kib) {
            peak = peak.max(rss);
        }
        anyhow::ensure!(
            last.elapsed() < Duration::from_secs(60),
            "no delivery for 60 s: {delivered} of {total}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    for s in senders {
        s.await??;
    }
    let hwm = hub_pid.and_then(loadgen::rss_kib).map(|r| r.1);
    let v = serde_json::json!({
        "edges": edges,
        "edges_linked_ms": link_ms,
        "messages": total,
        "size": size,
        "in_flight_per_edge": in_flight,
        "seconds": elapsed.as_secs_f64(),
        "relayed_per_sec": (total as f64 / elapsed.as_secs_f64()).round(),
        "hub_rss_kib_before_edges": rss_base,
        "hub_rss_kib_edges_idle": rss_idle,
        "hub_rss_kib_peak_sampled": peak,
        "hub_rss_kib_hwm": hwm,
    });
    crate::print_json(&v);
    for e in all {
        e.mesh.shutdown().await;
    }
    Ok(())
}
