//! Starting the mesh beside the client protocol: the node key, the link transport (iroh in the
//! full build, plain QUIC in the lite one; the two interoperate), static peers, mDNS, and the
//! task that turns mesh deliveries into pushes.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use ferry_mesh::core::{Config, PeerSource, ROLE_HUB};
use ferry_mesh::driver::federation::Federation;
use ferry_mesh::driver::quic_transport::QuicTransport;
use ferry_mesh::driver::{self, MeshEvent, MeshHandle, Transport};
use ferry_proto::types::{Fingerprint, NodeId};
use ferry_store::Store;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::config::{Role, StaticPeer};
use crate::{NodeConfig, NodeError};

/// Which link transport this build uses.
#[cfg(feature = "iroh")]
pub(crate) const TRANSPORT: &str = "iroh";
#[cfg(not(feature = "iroh"))]
pub(crate) const TRANSPORT: &str = "quic";

/// The running mDNS responder (announcing stops when it is dropped).
#[cfg(feature = "mdns")]
pub(crate) type Discovery = driver::mdns::Mdns;
/// Built without mDNS: nothing runs.
#[cfg(not(feature = "mdns"))]
pub(crate) struct Discovery;

/// A started mesh and what keeps it company.
pub(crate) struct Started {
    pub(crate) handle: MeshHandle,
    pub(crate) events: UnboundedReceiver<MeshEvent>,
    pub(crate) discovery: Option<Discovery>,
    /// The federation endpoint, on a hub or an edge with hubs.
    pub(crate) federation: Option<Arc<Federation>>,
}

fn mesh_err(e: impl std::fmt::Display) -> NodeError {
    NodeError::Mesh(e.to_string())
}

async fn bind(cfg: &NodeConfig, secret: [u8; 32]) -> Result<Arc<dyn Transport>, NodeError> {
    let mut last = None;
    for addr in crate::config::listen_addrs("mesh.listen", &cfg.mesh.listen)? {
        #[cfg(feature = "iroh")]
        let bound = driver::iroh_transport::IrohTransport::bind(secret, addr)
            .await
            .map(|t| Arc::new(t) as Arc<dyn Transport>);
        #[cfg(not(feature = "iroh"))]
        let bound = crate::server::bind_udp("mesh", addr, cfg.udp_receive_buffer)
            .map_err(|e| driver::TransportError::Bind(format!("{addr}: {e}")))
            .and_then(|b| driver::quic_transport::QuicTransport::bind_socket(secret, b.socket))
            .map(|t| Arc::new(t) as Arc<dyn Transport>);
        match bound {
            Ok(t) => return Ok(t),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "mesh bind failed");
                last = Some(e);
            }
        }
    }
    Err(NodeError::Bind {
        addr: cfg.mesh.listen.clone(),
        source: std::io::Error::other(
            last.map(|e| e.to_string())
                .unwrap_or_else(|| "no address to bind".into()),
        ),
    })
}

/// Binds the federation endpoint: a hub on `federation.listen`, an edge on an ephemeral port
/// (it only dials out).
fn bind_federation(cfg: &NodeConfig, secret: [u8; 32]) -> Result<QuicTransport, NodeError> {
    let listen = match cfg.role {
        Role::Hub => cfg.federation.listen.clone(),
        Role::Edge => "[::]:0".to_string(),
    };
    let mut last = None;
    for addr in crate::config::listen_addrs("federation.listen", &listen)? {
        let bound = crate::server::bind_udp("federation", addr, cfg.udp_receive_buffer)
            .map_err(|e| driver::TransportError::Bind(format!("{addr}: {e}")))
            .and_then(|b| QuicTransport::bind_socket(secret, b.socket));
        match bound {
            Ok(t) => return Ok(t),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "federation bind failed");
                last = Some(e);
            }
        }
    }
    Err(NodeError::Bind {
        addr: listen,
        source: std::io::Error::other(
            last.map(|e| e.to_string())
                .unwrap_or_else(|| "no address to bind".into()),
        ),
    })
}

/// Resolves `host:port` (names too).
async fn resolve(addr: &str) -> Vec<SocketAddr> {
    let a = addr.to_string();
    match tokio::task::spawn_blocking(move || a.to_socket_addrs().map(|i| i.collect::<Vec<_>>()))
        .await
    {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::warn!(peer = %addr, error = %e, "cannot resolve static peer");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// How often static peers that could not be resolved or identified are tried again.
const STATIC_RETRY: Duration = Duration::from_secs(30);

/// Feeds static peers to the mesh: resolves their names, learns the node id of those given
/// as plain `host:port`, and tries again later for those that did not answer. `kick`
/// (`ferry reconnect`, the WAN coming up) resolves everything afresh at once.
///
/// With `hubs`, the peers are hubs: each is marked as one (dialled on the federation
/// endpoint) before the mesh learns of it.
async fn static_peers(
    mesh: MeshHandle,
    secret: [u8; 32],
    peers: Vec<StaticPeer>,
    hubs: Option<Arc<Federation>>,
    kick: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut learned: Vec<Option<NodeId>> = peers.iter().map(|p| p.node).collect();
    loop {
        let mut pending = false;
        for (p, id) in peers.iter().zip(learned.iter_mut()) {
            let addrs = resolve(&p.addr).await;
            if addrs.is_empty() {
                pending = true;
                continue;
            }
            if id.is_none() {
                for a in &addrs {
                    match driver::quic_transport::identify(secret, *a).await {
                        Ok(n) => {
                            tracing::info!(peer = %p.addr, node = %n, "static peer identified");
                            *id = Some(n);
                            break;
                        }
                        Err(e) => tracing::warn!(
                            peer = %p.addr,
                            error = %e,
                            "static peer does not answer; trying again in 30 s"
                        ),
                    }
                }
            }
            match id {
                Some(n) => {
                    if let Some(f) = &hubs {
                        f.add_hub(*n);
                    }
                    mesh.discovered(*n, &addrs, PeerSource::Static)
                }
                None => pending = true,
            }
        }
        let wait = async {
            if pending {
                tokio::time::sleep(STATIC_RETRY).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = kick.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Starts the mesh on the node's store.
pub(crate) async fn start(
    cfg: &NodeConfig,
    secret: [u8; 32],
    store: Store,
    client_addr: SocketAddr,
    fingerprint: Fingerprint,
    kick: Arc<Notify>,
    stop: watch::Receiver<bool>,
) -> Result<Started, NodeError> {
    let mesh_transport = bind(cfg, secret).await?;
    let (transport, federation): (Arc<dyn Transport>, _) =
        if cfg.role == Role::Hub || !cfg.federation.hubs.is_empty() {
            let fed = bind_federation(cfg, secret)?;
            let f = Arc::new(Federation::new(
                mesh_transport,
                fed,
                cfg.federation.allow.iter().copied(),
                cfg.role == Role::Hub,
            ));
            for h in cfg.federation.hubs.iter().filter_map(|h| h.node) {
                f.add_hub(h);
            }
            (Arc::clone(&f) as Arc<dyn Transport>, Some(f))
        } else {
            (mesh_transport, None)
        };
    let mut core = Config::new(transport.node_id());
    core.seed = driver::random_seed();
    core.client_port = client_addr.port();
    core.client_cert_fingerprint = fingerprint.as_bytes().to_vec();
    core.max_custody = cfg.mesh.max_custody;
    core.max_peers = cfg.mesh.max_peers;
    core.max_custody_per_peer = cfg.federation.per_edge_quota;
    if cfg.role == Role::Hub {
        core.role = ROLE_HUB.into();
    }
    let opts = driver::Options {
        hop_limit: cfg.mesh.hop_limit,
        peers_file: Some(cfg.data_dir.join("mesh-peers")),
    };
    let (handle, events) = MeshHandle::start_with(core, Arc::new(store), transport, opts)
        .await
        .map_err(mesh_err)?;
    tracing::info!(
        node = %handle.node_id(),
        addrs = ?handle.local_addrs(),
        transport = TRANSPORT,
        "mesh links listening (ALPN ferry/mesh/1)"
    );
    if let Some(f) = &federation {
        tracing::info!(
            role = cfg.role.as_str(),
            addrs = ?f.federation_addrs(),
            allow = cfg.federation.allow.len(),
            hubs = cfg.federation.hubs.len(),
            "federation endpoint up (QUIC, mutual TLS with node keys)"
        );
        if cfg.role == Role::Hub && cfg.federation.allow.is_empty() {
            tracing::warn!("this hub's [federation] allow list is empty: it admits no edges");
        }
    }
    if !cfg.mesh.peers.is_empty() {
        tokio::spawn(
            static_peers(
                handle.clone(),
                secret,
                cfg.mesh.peers.clone(),
                None,
                Arc::clone(&kick),
                stop.clone(),
            )
            .in_current_span(),
        );
    }
    if !cfg.federation.hubs.is_empty() {
        tokio::spawn(
            static_peers(
                handle.clone(),
                secret,
                cfg.federation.hubs.clone(),
                federation.clone(),
                Arc::clone(&kick),
                stop,
            )
            .in_current_span(),
        );
    }
    #[cfg(feature = "mdns")]
    let discovery = if cfg.mesh.mdns {
        let port = handle.local_addrs().first().map(|a| a.port()).unwrap_or(0);
        let client = driver::mdns::ClientAnnouncement {
            port: client_addr.port(),
            fingerprint: fingerprint.to_string(),
        };
        match driver::mdns::start(handle.clone(), port, Some(client)) {
            Ok(m) => Some(m),
            Err(e) => {
                // A node without multicast still works through static peers and exchange.
                tracing::warn!(error = %e, "mDNS unavailable; relying on static peers and peer exchange");
                None
            }
        }
    } else {
        None
    };
    #[cfg(not(feature = "mdns"))]
    let discovery = None;
    Ok(Started {
        handle,
        events,
        discovery,
        federation,
    })
}
