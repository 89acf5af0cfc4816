//! Starting the mesh beside the client protocol: the node key, the link transport (iroh in the
//! full build, plain QUIC in the lite one; the two interoperate), static peers, mDNS, and the
//! task that turns mesh deliveries into pushes.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use ferry_mesh::core::{Config, PeerSource};
use ferry_mesh::driver::{self, MeshEvent, MeshHandle, Transport};
use ferry_proto::types::Fingerprint;
use ferry_store::Store;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::config::StaticPeer;
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
}

fn mesh_err(e: impl std::fmt::Display) -> NodeError {
    NodeError::Mesh(e.to_string())
}

fn listen_addrs(listen: &str) -> Result<Vec<SocketAddr>, NodeError> {
    let addr: SocketAddr = listen.parse().map_err(|_| NodeError::Address {
        field: "mesh.listen",
        value: listen.to_string(),
    })?;
    let mut out = vec![addr];
    if addr.ip().is_unspecified() && addr.is_ipv6() {
        out.push(SocketAddr::from(([0, 0, 0, 0], addr.port())));
    }
    Ok(out)
}

async fn bind(cfg: &NodeConfig, secret: [u8; 32]) -> Result<Arc<dyn Transport>, NodeError> {
    let mut last = None;
    for addr in listen_addrs(&cfg.mesh.listen)? {
        #[cfg(feature = "iroh")]
        let bound = driver::iroh_transport::IrohTransport::bind(secret, addr)
            .await
            .map(|t| Arc::new(t) as Arc<dyn Transport>);
        #[cfg(not(feature = "iroh"))]
        let bound = driver::quic_transport::QuicTransport::bind(secret, addr)
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

/// Resolves `host:port` of static peers (names too) and hands them to the mesh. Unresolvable
/// ones are logged and retried on the next `ferry reconnect`.
pub(crate) async fn add_static_peers(mesh: &MeshHandle, peers: &[StaticPeer]) {
    for p in peers {
        let addr = p.addr.clone();
        let resolved = tokio::task::spawn_blocking(move || {
            addr.to_socket_addrs().map(|a| a.collect::<Vec<_>>())
        })
        .await;
        match resolved {
            Ok(Ok(addrs)) if !addrs.is_empty() => {
                mesh.discovered(p.node, &addrs, PeerSource::Static);
            }
            Ok(Ok(_)) => tracing::warn!(peer = %p.addr, "static peer resolved to no address"),
            Ok(Err(e)) => tracing::warn!(peer = %p.addr, error = %e, "cannot resolve static peer"),
            Err(_) => {}
        }
    }
}

/// Starts the mesh on the node's store.
pub(crate) async fn start(
    cfg: &NodeConfig,
    store: Store,
    client_addr: SocketAddr,
    fingerprint: Fingerprint,
) -> Result<Started, NodeError> {
    let secret = driver::load_or_create_key(&cfg.mesh_key_path()).map_err(mesh_err)?;
    let transport = bind(cfg, secret).await?;
    let mut core = Config::new(transport.node_id());
    core.seed = driver::random_seed();
    core.client_port = client_addr.port();
    core.client_cert_fingerprint = fingerprint.as_bytes().to_vec();
    core.max_custody = cfg.mesh.max_custody;
    core.max_peers = cfg.mesh.max_peers;
    let (handle, events) = MeshHandle::start(core, store, transport, cfg.mesh.hop_limit)
        .await
        .map_err(mesh_err)?;
    tracing::info!(
        node = %handle.node_id(),
        addrs = ?handle.local_addrs(),
        transport = TRANSPORT,
        "mesh links listening (ALPN ferry/mesh/1)"
    );
    add_static_peers(&handle, &cfg.mesh.peers).await;
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
    })
}
