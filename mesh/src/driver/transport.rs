//! What the driver needs from a link transport: authenticated connections to node ids, and
//! unidirectional streams on them. iroh provides it in the full build; plain QUIC in the lite.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use ferry_proto::types::NodeId;
use tokio::io::{AsyncRead, AsyncWrite};

/// Keep-alive on mesh links: a live link hears its peer at least every second, so that the
/// core's liveness (a link silent for 2.5 s is suspect and routed around, for 6 s dead) can
/// tell a vanished far end (power cut, radio out of range, restarted node) within seconds.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A mesh link with nothing heard for this long is closed by QUIC itself (the core closes a
/// silent link sooner).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A boxed, sendable future.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A stream to write frames to.
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;
/// A stream to read frames from.
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// An incoming connection's handshake; the driver runs each on its own task, so a slow
/// handshake does not hold up the others.
pub type Incoming = BoxFut<'static, Result<Box<dyn Link>, TransportError>>;

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Binding the endpoint failed.
    #[error("cannot bind the mesh endpoint: {0}")]
    Bind(String),
    /// A dial failed.
    #[error("cannot connect to {peer:?}: {reason}")]
    Connect {
        /// The peer.
        peer: NodeId,
        /// Why.
        reason: String,
    },
    /// The connection closed or a stream failed.
    #[error("link: {0}")]
    Link(String),
}

/// One authenticated connection to a peer node.
pub trait Link: Send + Sync + 'static {
    /// The peer, as authenticated by the handshake.
    fn peer(&self) -> NodeId;
    /// The peer's address, if known.
    fn remote_addr(&self) -> Option<SocketAddr>;
    /// Opens our sending stream.
    fn open_uni(&self) -> BoxFut<'_, Result<Writer, TransportError>>;
    /// Accepts the peer's sending stream.
    fn accept_uni(&self) -> BoxFut<'_, Result<Reader, TransportError>>;
    /// Current round-trip estimate.
    fn rtt(&self) -> Duration;
    /// A count that changes whenever the connection receives packets from the peer on the
    /// path its data takes (datagrams received): the driver reports a change to the core as
    /// the link hearing its peer.
    fn heard(&self) -> u64;
    /// Closes the connection.
    fn close(&self, reason: &str);
    /// Resolves when the connection is closed.
    fn closed(&self) -> BoxFut<'_, ()>;
}

/// A link transport.
pub trait Transport: Send + Sync + 'static {
    /// Our node id.
    fn node_id(&self) -> NodeId;
    /// Where we listen.
    fn local_addrs(&self) -> Vec<SocketAddr>;
    /// Dials a peer at the given addresses.
    fn connect(
        &self,
        peer: NodeId,
        addrs: Vec<SocketAddr>,
    ) -> BoxFut<'_, Result<Box<dyn Link>, TransportError>>;
    /// The next incoming connection; `None` when the endpoint is closed.
    fn accept(&self) -> BoxFut<'_, Option<Incoming>>;
    /// Closes the endpoint.
    fn close(&self) -> BoxFut<'_, ()>;
}
