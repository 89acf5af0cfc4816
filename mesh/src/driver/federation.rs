//! Federation links: the mesh link protocol between edges and hubs, on a second QUIC endpoint.
//!
//! A hub listens on its federation port (UDP 7001) with the same raw-public-key mutual TLS as
//! mesh links, so the certificate each side presents *is* its node id, and admits only nodes
//! on its allow list. An edge dials its hubs from an ephemeral port of its own. Everything
//! above the handshake (Hello, routes, presence, custody) is the mesh protocol, unchanged.
//!
//! [`Federation`] joins the mesh transport and the federation endpoint into one
//! [`Transport`] for the driver: dials to hubs go out on the federation endpoint, everything
//! else on the mesh transport, and incoming connections of both arrive through one `accept`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_proto::types::NodeId;
use portable_atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

use super::quic_transport::QuicTransport;
use super::transport::{BoxFut, Incoming, Link, Reader, Transport, TransportError, Writer};

/// How long a dialled hub has to admit us (send its Hello) after the handshake.
const ADMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may use the federation endpoint, and how many were turned away.
#[derive(Debug)]
struct Gate {
    me: NodeId,
    /// Nodes admitted on the federation port: the allow list plus the hubs we dial.
    allow: Mutex<HashSet<NodeId>>,
    /// Hubs: dialled on the federation endpoint.
    hubs: Mutex<HashSet<NodeId>>,
    refused: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Gate {
    fn admits(&self, node: &NodeId) -> bool {
        lock(&self.allow).contains(node)
    }

    /// The handshake, then the allow list: a node not on it is told why and closed.
    fn check(self: &Arc<Self>, handshake: Incoming) -> Incoming {
        let gate = Arc::clone(self);
        Box::pin(async move {
            let link = handshake.await?;
            let peer = link.peer();
            if gate.admits(&peer) {
                return Ok(link);
            }
            gate.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                node = %peer,
                addr = ?link.remote_addr(),
                "refused a federation link: node not on the allow list ([federation] allow)"
            );
            link.close(&format!(
                "refused: node {peer} is not on the allow list of hub {}",
                gate.me
            ));
            Err(TransportError::Link(format!(
                "federation link from {peer} refused: not on the allow list"
            )))
        })
    }
}

/// The mesh transport and the federation endpoint, as one transport.
pub struct Federation {
    mesh: Arc<dyn Transport>,
    fed: Arc<QuicTransport>,
    gate: Arc<Gate>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("node", &self.gate.me)
            .field("federation_addr", &self.federation_addrs())
            .finish()
    }
}

impl Federation {
    /// Joins `mesh` and `fed` (bound with the same node key). `allow` is the hub's allow list
    /// (empty on an edge); hubs added with [`Federation::add_hub`] are admitted too. With
    /// `guard_mesh` (a hub), links arriving on the mesh transport must be allowed as well, so
    /// the mesh port is no way around the allow list.
    pub fn new(
        mesh: Arc<dyn Transport>,
        fed: QuicTransport,
        allow: impl IntoIterator<Item = NodeId>,
        guard_mesh: bool,
    ) -> Self {
        let me = mesh.node_id();
        let fed = Arc::new(fed);
        let gate = Arc::new(Gate {
            me,
            allow: Mutex::new(allow.into_iter().collect()),
            hubs: Mutex::new(HashSet::new()),
            refused: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(64);
        let from_mesh = {
            let mesh = Arc::clone(&mesh);
            let gate = Arc::clone(&gate);
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(i) = mesh.accept().await {
                    let i = if guard_mesh { gate.check(i) } else { i };
                    if tx.send(i).await.is_err() {
                        return;
                    }
                }
            })
        };
        let from_fed = {
            let fed = Arc::clone(&fed);
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                while let Some(handshake) = fed.accept().await {
                    if tx.send(gate.check(handshake)).await.is_err() {
                        return;
                    }
                }
            })
        };
        Self {
            mesh,
            fed,
            gate,
            incoming: tokio::sync::Mutex::new(rx),
            forwarders: vec![from_mesh, from_fed],
        }
    }

    /// Marks `node` as a hub: dialled on the federation endpoint, and admitted on it.
    pub fn add_hub(&self, node: NodeId) {
        lock(&self.gate.hubs).insert(node);
        lock(&self.gate.allow).insert(node);
    }

    /// Whether `node` is one of our hubs.
    pub fn is_hub(&self, node: &NodeId) -> bool {
        lock(&self.gate.hubs).contains(node)
    }

    /// Where the federation endpoint listens.
    pub fn federation_addrs(&self) -> Vec<SocketAddr> {
        self.fed.local_addrs()
    }

    /// Federation handshakes refused because the node was not on the allow list.
    pub fn refused(&self) -> u64 {
        self.gate.refused.load(Ordering::Relaxed)
    }

    async fn dial_hub(
        &self,
        peer: NodeId,
        addrs: Vec<SocketAddr>,
    ) -> Result<Box<dyn Link>, TransportError> {
        let link = self.fed.connect(peer, addrs).await?;
        // A hub that admits us opens its stream with Hello at once; one that does not closes
        // the connection with its reason. Treating that as a failed dial keeps the backoff.
        match tokio::time::timeout(ADMIT_TIMEOUT, link.accept_uni()).await {
            Ok(Ok(first)) => Ok(Box::new(Admitted {
                link,
                first: Mutex::new(Some(first)),
            })),
            Ok(Err(e)) => {
                tracing::warn!(
                    hub = %peer,
                    error = %e,
                    me = %self.gate.me,
                    "the hub did not admit this node; if it was refused, ask the hub's operator to add this node id to [federation] allow"
                );
                Err(TransportError::Connect {
                    peer,
                    reason: format!("not admitted: {e}"),
                })
            }
            Err(_) => {
                link.close("no Hello");
                Err(TransportError::Connect {
                    peer,
                    reason: "the hub sent no Hello".into(),
                })
            }
        }
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        for f in &self.forwarders {
            f.abort();
        }
    }
}

/// A hub link whose first stream was read to see that the hub admitted us.
struct Admitted {
    link: Box<dyn Link>,
    first: Mutex<Option<Reader>>,
}

impl Link for Admitted {
    fn peer(&self) -> NodeId {
        self.link.peer()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.link.remote_addr()
    }

    fn open_uni(&self) -> BoxFut<'_, Result<Writer, TransportError>> {
        self.link.open_uni()
    }

    fn accept_uni(&self) -> BoxFut<'_, Result<Reader, TransportError>> {
        match lock(&self.first).take() {
            Some(r) => Box::pin(async move { Ok(r) }),
            None => self.link.accept_uni(),
        }
    }

    fn rtt(&self) -> Duration {
        self.link.rtt()
    }

    fn heard(&self) -> u64 {
        self.link.heard()
    }

    fn close(&self, reason: &str) {
        self.link.close(reason)
    }

    fn closed(&self) -> BoxFut<'_, ()> {
        self.link.closed()
    }
}

impl Transport for Federation {
    fn node_id(&self) -> NodeId {
        self.gate.me
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        self.mesh.local_addrs()
    }

    fn connect(
        &self,
        peer: NodeId,
        addrs: Vec<SocketAddr>,
    ) -> BoxFut<'_, Result<Box<dyn Link>, TransportError>> {
        if self.is_hub(&peer) {
            Box::pin(self.dial_hub(peer, addrs))
        } else {
            self.mesh.connect(peer, addrs)
        }
    }

    fn accept(&self) -> BoxFut<'_, Option<Incoming>> {
        Box::pin(async move { self.incoming.lock().await.recv().await })
    }

    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            for f in &self.forwarders {
                f.abort();
            }
            self.mesh.close().await;
            self.fed.close().await;
        })
    }
}
