//! Links over iroh, set up to work with no internet: no relay servers, no DNS or pkarr address
//! lookup; the addresses of peers come from Ferry's own discovery.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_proto::limits::ALPN_MESH;
use ferry_proto::types::NodeId;
use iroh::endpoint::{
    Connection, IdleTimeout, NetReportConfig, PathId, PortmapperConfig, QuicTransportConfig,
    RelayMode, presets,
};
use iroh::{Endpoint, EndpointAddr, SecretKey, TransportAddr};

use super::transport::{
    BoxFut, IDLE_TIMEOUT, Incoming, KEEP_ALIVE, Link, Reader, Transport, TransportError, Writer,
};

/// An iroh endpoint speaking the mesh ALPN.
#[derive(Debug, Clone)]
pub struct IrohTransport {
    endpoint: Endpoint,
    me: NodeId,
}

impl IrohTransport {
    /// Binds on `addr` with the node's secret key: an IPv4 address binds only IPv4, a specific
    /// IPv6 address only IPv6, and `[::]:port` both families on the same port (discovery
    /// announces one port for all addresses).
    pub async fn bind(secret: [u8; 32], addr: SocketAddr) -> Result<Self, TransportError> {
        let key = SecretKey::from_bytes(&secret);
        let me = NodeId::from_array(*key.public().as_bytes());
        let bind_err = |e: &dyn std::fmt::Display| TransportError::Bind(format!("{addr}: {e}"));
        let idle = IdleTimeout::try_from(IDLE_TIMEOUT).map_err(|e| bind_err(&e))?;
        let quic = QuicTransportConfig::builder()
            .keep_alive_interval(KEEP_ALIVE)
            .max_idle_timeout(Some(idle))
            .default_path_keep_alive_interval(KEEP_ALIVE)
            .default_path_max_idle_timeout(IDLE_TIMEOUT)
            .build();
        // Nothing here talks to anyone but the peers Ferry dials: no relays, no address
        // lookup services, no port mapping, no net-report probes.
        let mut builder = Endpoint::builder(presets::Minimal)
            .secret_key(key)
            .alpns(vec![ALPN_MESH.to_vec()])
            .relay_mode(RelayMode::Disabled)
            .clear_address_lookup()
            .portmapper_config(PortmapperConfig::Disabled)
            .net_report_config(NetReportConfig::minimal())
            .transport_config(quic)
            .clear_ip_transports();
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            builder = builder
                .bind_addr(SocketAddr::from(([0, 0, 0, 0], addr.port())))
                .map_err(|e| bind_err(&e))?;
        }
        let endpoint = builder
            .bind_addr(addr)
            .map_err(|e| bind_err(&e))?
            .bind()
            .await
            .map_err(|e| bind_err(&e))?;
        Ok(Self { endpoint, me })
    }
}

fn node_of(id: iroh::EndpointId) -> NodeId {
    NodeId::from_array(*id.as_bytes())
}

struct IrohLink {
    conn: Connection,
    peer: NodeId,
    addr: Option<SocketAddr>,
}

impl Link for IrohLink {
    fn peer(&self) -> NodeId {
        self.peer
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    fn open_uni(&self) -> BoxFut<'_, Result<Writer, TransportError>> {
        Box::pin(async move {
            let s = self
                .conn
                .open_uni()
                .await
                .map_err(|e| TransportError::Link(e.to_string()))?;
            Ok(Box::new(s) as Writer)
        })
    }

    fn accept_uni(&self) -> BoxFut<'_, Result<Reader, TransportError>> {
        Box::pin(async move {
            let s = self
                .conn
                .accept_uni()
                .await
                .map_err(|e| TransportError::Link(e.to_string()))?;
            Ok(Box::new(s) as Reader)
        })
    }

    fn rtt(&self) -> Duration {
        // The path the data takes: iroh may open others and switch.
        let selected = self
            .conn
            .paths()
            .iter()
            .find(|p| p.is_selected())
            .map(|p| p.rtt());
        selected
            .or_else(|| self.conn.rtt(PathId::ZERO))
            .unwrap_or(Duration::from_millis(50))
    }

    fn heard(&self) -> u64 {
        // What arrives on the selected path, with its id: a link whose data path went dark
        // while another path still hears keep-alives is silent where it matters.
        let selected = self.conn.paths().iter().find(|p| p.is_selected()).map(|p| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            p.id().hash(&mut h);
            h.finish() ^ p.stats().udp_rx.datagrams
        });
        selected.unwrap_or_else(|| self.conn.stats().udp_rx.datagrams)
    }

    fn close(&self, reason: &str) {
        self.conn.close(0u32.into(), reason.as_bytes());
    }

    fn closed(&self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let _ = self.conn.closed().await;
        })
    }
}

impl Transport for IrohTransport {
    fn node_id(&self) -> NodeId {
        self.me
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        self.endpoint.bound_sockets()
    }

    fn connect(
        &self,
        peer: NodeId,
        addrs: Vec<SocketAddr>,
    ) -> BoxFut<'_, Result<Box<dyn Link>, TransportError>> {
        Box::pin(async move {
            let err = |reason: String| TransportError::Connect { peer, reason };
            let pk =
                iroh::PublicKey::from_bytes(peer.as_bytes()).map_err(|e| err(e.to_string()))?;
            let first = addrs.first().copied();
            let target = EndpointAddr::from_parts(pk, addrs.into_iter().map(TransportAddr::Ip));
            let conn = self
                .endpoint
                .connect(target, ALPN_MESH)
                .await
                .map_err(|e| err(e.to_string()))?;
            Ok(Box::new(IrohLink {
                peer: node_of(conn.remote_id()),
                addr: first,
                conn,
            }) as Box<dyn Link>)
        })
    }

    fn accept(&self) -> BoxFut<'_, Option<Incoming>> {
        Box::pin(async move {
            let incoming = self.endpoint.accept().await?;
            let remote = incoming.remote_addr();
            let handshake: Incoming = Box::pin(async move {
                let conn = match tokio::time::timeout(Duration::from_secs(10), incoming).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return Err(TransportError::Link(e.to_string())),
                    Err(_) => return Err(TransportError::Link("handshake timed out".into())),
                };
                if conn.alpn() != ALPN_MESH {
                    conn.close(0u32.into(), b"wrong ALPN");
                    return Err(TransportError::Link("wrong ALPN".into()));
                }
                let peer = node_of(conn.remote_id());
                // The peer's mesh port: iroh dials from the socket it listens on.
                let addr = match remote {
                    iroh::endpoint::IncomingAddr::Ip(a) => Some(a),
                    _ => None,
                };
                Ok(Box::new(IrohLink { peer, addr, conn }) as Box<dyn Link>)
            });
            Some(handshake)
        })
    }

    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(async move { self.endpoint.close().await })
    }
}
