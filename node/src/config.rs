//! Node configuration: defaults, overlaid by a TOML file, overlaid by flags and `FERRY_*`
//! environment variables (the binary resolves those two with clap).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_proto::limits::{
    DEFAULT_CLIENT_PORT, DEFAULT_HOP_LIMIT, DEFAULT_MAX_TTL_SECS, DEFAULT_MESH_PORT,
    DEFAULT_TTL_SECS,
};
use ferry_proto::types::NodeId;
use ferry_store::StoreConfig;
use serde::Deserialize;

use crate::NodeError;

/// The `[store]` table of the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// Node-wide budget of stored message bytes.
    pub max_total_bytes: Option<u64>,
    /// Messages one recipient may have stored.
    pub max_recipient_messages: Option<u64>,
    /// Bytes one recipient may have stored.
    pub max_recipient_bytes: Option<u64>,
    /// redb page cache in bytes.
    pub cache_bytes: Option<usize>,
    /// Enqueues and acks through the write-ahead log (default on).
    pub wal: Option<bool>,
    /// Write-ahead log size that triggers a checkpoint, in bytes.
    pub checkpoint_bytes: Option<u64>,
    /// Disk space kept aside for the commits that free space on a full disk, in bytes
    /// (default: twice `checkpoint_bytes`).
    pub reserve_bytes: Option<u64>,
}

/// The `[mesh]` table of the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSection {
    /// Run the mesh (links to other nodes). Off: a standalone node.
    pub enabled: Option<bool>,
    /// Mesh address, `host:port` (UDP).
    pub listen: Option<String>,
    /// Static peers, `host:port` or `<node id>@host:port`.
    pub peers: Option<Vec<String>>,
    /// Announce and browse with mDNS.
    pub mdns: Option<bool>,
    /// Hops a message may take at most.
    pub hop_limit: Option<u8>,
    /// Bundles held in custody for other nodes at most.
    pub max_custody: Option<usize>,
    /// Peers remembered at most.
    pub max_peers: Option<usize>,
}

/// The `[federation]` table of the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSection {
    /// Hubs this node dials, `host:port` or `<node id>@host:port` (UDP).
    pub hubs: Option<Vec<String>>,
    /// Federation address of a hub, `host:port` (UDP; default `[::]:7001`).
    pub listen: Option<String>,
    /// Node ids a hub admits on its federation port (edges and peer hubs).
    pub allow: Option<Vec<String>>,
    /// Bundles one edge may have in a hub's custody at once.
    pub per_edge_quota: Option<usize>,
    /// This node's domain, sent in FederationAuth (logs only).
    pub domain: Option<String>,
}

/// What a node is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// A router in a mesh (the default).
    #[default]
    Edge,
    /// A server that edges of many meshes connect to.
    Hub,
}

impl Role {
    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Hub => "hub",
        }
    }
}

/// The config file, every key optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory (database, certificate).
    pub data_dir: Option<PathBuf>,
    /// Client protocol address, `host:port`.
    pub listen: Option<String>,
    /// HTTP address for `/metrics` and `/healthz`.
    pub metrics: Option<String>,
    /// Requests per second per client IP; 0 disables the limit.
    pub rate_limit: Option<u32>,
    /// Log filter, like `info` or `info,ferry_node=debug`.
    pub log: Option<String>,
    /// Simultaneous client connections at most.
    pub max_connections: Option<usize>,
    /// Seconds to let in-flight requests finish on shutdown.
    pub drain_timeout_secs: Option<u64>,
    /// Request body bytes buffered at once over all connections.
    pub max_request_bytes_in_flight: Option<usize>,
    /// Answer bytes waiting to be read by clients at once over all connections.
    pub max_response_bytes_in_flight: Option<usize>,
    /// Simultaneous connections from one client address at most.
    pub max_connections_per_address: Option<usize>,
    /// New connections per second from one client address (burst twice that); 0 = off.
    pub connection_rate: Option<u32>,
    /// Seconds a connection may stay unauthenticated.
    pub auth_timeout_secs: Option<u64>,
    /// Seconds an answer may wait for the client to take any of it before the connection is
    /// closed.
    pub answer_timeout_secs: Option<u64>,
    /// Long polls (FetchWait, BroadcastFetch) waiting at once over all connections.
    pub max_long_polls: Option<usize>,
    /// Requests served at once over all connections (long polls apart).
    pub max_inflight_requests: Option<usize>,
    /// TTL for messages that ask for the default (`ttl_secs = 0`).
    pub default_ttl_secs: Option<u32>,
    /// Longest TTL accepted.
    pub max_ttl_secs: Option<u32>,
    /// Tokio worker threads (default: CPU count, at most 4).
    pub worker_threads: Option<usize>,
    /// Receive buffer asked for each QUIC socket (client, federation), bytes; 0 keeps the
    /// system default.
    pub udp_receive_buffer_bytes: Option<usize>,
    /// Store limits.
    pub store: Option<StoreSection>,
    /// The mesh.
    pub mesh: Option<MeshSection>,
    /// Admin socket path (default `ferry.sock` in the data directory).
    pub admin_socket: Option<PathBuf>,
    /// `"edge"` (default) or `"hub"`.
    pub role: Option<String>,
    /// Federation with hubs.
    pub federation: Option<FederationSection>,
}

impl FileConfig {
    /// Reads and parses a TOML config file; unknown keys are errors, so typos are noticed.
    pub fn load(path: &Path) -> Result<Self, NodeError> {
        let text = std::fs::read_to_string(path).map_err(|source| NodeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| NodeError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// A configured peer: where to dial it and, if given, its node id. Without an id the node
/// learns it from the peer's handshake (trust on first use, as for any configured address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticPeer {
    /// Node id, if configured.
    pub node: Option<NodeId>,
    /// `host:port`, resolved when dialled.
    pub addr: String,
}

impl std::fmt::Display for StaticPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.node {
            Some(n) => write!(f, "{n}@{}", self.addr),
            None => f.write_str(&self.addr),
        }
    }
}

impl std::str::FromStr for StaticPeer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (node, addr) = match s.split_once('@') {
            Some((id, addr)) => {
                let node: NodeId = id.parse().map_err(|_| {
                    format!(
                        "static peer {s:?}: {id:?} is not a node id (64 hex digits; `ferry status` prints it)"
                    )
                })?;
                (Some(node), addr)
            }
            None => (None, s),
        };
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => {
                return Err(format!(
                    "static peer {s:?}: expected host:port or <node id>@host:port"
                ));
            }
        }
        Ok(Self {
            node,
            addr: addr.to_string(),
        })
    }
}

/// The default federation port of a hub (UDP).
pub const DEFAULT_FEDERATION_PORT: u16 = 7001;

/// Federation settings.
#[derive(Clone, Debug)]
pub struct FederationConfig {
    /// Hubs to dial (edges, and hubs that peer).
    pub hubs: Vec<StaticPeer>,
    /// Where a hub listens for federation links. An edge dials from an ephemeral port.
    pub listen: String,
    /// Node ids admitted on the federation port (a hub's edges and peer hubs).
    pub allow: Vec<NodeId>,
    /// Bundles one neighbour may have in custody here at once.
    pub per_edge_quota: usize,
    /// Domain named in FederationAuth.
    pub domain: String,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            hubs: Vec::new(),
            listen: format!("[::]:{DEFAULT_FEDERATION_PORT}"),
            allow: Vec::new(),
            per_edge_quota: 50_000,
            domain: String::new(),
        }
    }
}

/// Mesh settings.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// Run the mesh.
    pub enabled: bool,
    /// UDP address of mesh links. The default `[::]:5002` falls back to IPv4.
    pub listen: String,
    /// Static peers.
    pub peers: Vec<StaticPeer>,
    /// mDNS announce and browse (if built in).
    pub mdns: bool,
    /// Hops a message may take.
    pub hop_limit: u8,
    /// Bundles in custody at most.
    pub max_custody: usize,
    /// Peers remembered at most.
    pub max_peers: usize,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: format!("[::]:{DEFAULT_MESH_PORT}"),
            peers: Vec::new(),
            mdns: true,
            hop_limit: DEFAULT_HOP_LIMIT,
            max_custody: 200_000,
            max_peers: 256,
        }
    }
}

/// The resolved configuration of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Client protocol address. The default `[::]:5001` falls back to `0.0.0.0:5001` on hosts
    /// without IPv6.
    pub listen: String,
    /// Metrics HTTP address, if any.
    pub metrics: Option<String>,
    /// Requests per second per IP, 0 = unlimited.
    pub rate_limit: u32,
    /// Requests a client IP may burst above the rate.
    pub rate_burst: u32,
    /// Simultaneous connections at most.
    pub max_connections: usize,
    /// Simultaneous connections from one client address at most.
    pub max_connections_per_address: usize,
    /// New connections per second from one client address (handshakes; burst twice that);
    /// 0 = unlimited.
    pub connection_rate: u32,
    /// How long a connection may stay unauthenticated (Health and the auth methods only)
    /// before it is closed.
    pub auth_timeout: Duration,
    /// How long an answer may wait for the client's QUIC stack to take any of it (to grant
    /// flow-control credit) before the connection is closed: the client does not read.
    pub answer_timeout: Duration,
    /// Long polls (FetchWait, BroadcastFetch) waiting at once in the whole node; each address
    /// may hold a quarter, each connection [`crate::conn::MAX_LONG_POLLS`].
    pub max_long_polls: usize,
    /// Concurrent RPC streams per connection at most.
    pub max_streams_per_connection: u32,
    /// Concurrent RPCs in the whole node at most (beyond that, streams wait).
    pub max_inflight_requests: usize,
    /// Request body bytes the node buffers at once, over all connections. A request takes
    /// its declared length from this budget before its body is read, so slow or malicious
    /// senders cannot make the node buffer more than this.
    pub max_request_bytes_in_flight: usize,
    /// Answer bytes the node holds for clients at once, over all connections (from the read
    /// until the client's QUIC stack took them). Each address may hold a quarter (at least one
    /// largest answer); a read waits for room, so clients that do not read cannot make the
    /// node hold more than this.
    pub max_response_bytes_in_flight: usize,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// TTL applied to `ttl_secs = 0`.
    pub default_ttl_secs: u32,
    /// Longest TTL accepted; longer requests are refused with BadRequest.
    pub max_ttl_secs: u32,
    /// How often expired messages are swept.
    pub sweep_interval: Duration,
    /// Store limits.
    pub store: StoreConfig,
    /// The mesh.
    pub mesh: MeshConfig,
    /// Admin socket (`ferry peers`, `ferry routes`, `ferry store`, `ferry reconnect`); by
    /// default `ferry.sock` in the data directory.
    pub admin_socket: Option<PathBuf>,
    /// What this node is for.
    pub role: Role,
    /// Federation with hubs.
    pub federation: FederationConfig,
    /// Log filter (used by the binary).
    pub log: String,
    /// Tokio worker threads (used by the binary).
    pub worker_threads: usize,
    /// Receive buffer asked for each QUIC socket the node binds (the client listener, the
    /// federation endpoint and, without iroh, the mesh's), bytes; 0 keeps the system
    /// default. Linux's default (212,992 bytes) overflows under bursts from many clients.
    pub udp_receive_buffer: usize,
}

/// The data directory used when none is configured: `./ferry-data`.
pub const DEFAULT_DATA_DIR: &str = "ferry-data";
/// The admin socket's file name in the data directory.
pub const ADMIN_SOCKET: &str = "ferry.sock";

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: format!("[::]:{DEFAULT_CLIENT_PORT}"),
            metrics: None,
            rate_limit: 50,
            rate_burst: 100,
            max_connections: 4096,
            max_connections_per_address: 64,
            connection_rate: 10,
            auth_timeout: Duration::from_secs(20),
            answer_timeout: Duration::from_secs(20),
            max_long_polls: 1024,
            max_streams_per_connection: 64,
            max_inflight_requests: 4096,
            max_request_bytes_in_flight: 32 * 1024 * 1024,
            max_response_bytes_in_flight: 16 * 1024 * 1024,
            drain_timeout: Duration::from_secs(10),
            default_ttl_secs: DEFAULT_TTL_SECS,
            max_ttl_secs: DEFAULT_MAX_TTL_SECS,
            sweep_interval: Duration::from_secs(60),
            store: StoreConfig::default(),
            mesh: MeshConfig::default(),
            admin_socket: None,
            role: Role::Edge,
            federation: FederationConfig::default(),
            log: "info".into(),
            worker_threads: std::thread::available_parallelism()
                .map(|n| n.get().min(4))
                .unwrap_or(2),
            udp_receive_buffer: ferry_client::net::DEFAULT_RECV_BUFFER,
        }
    }
}

impl NodeConfig {
    /// Defaults overlaid with a config file.
    pub fn from_file(file: &FileConfig) -> Result<Self, String> {
        let mut c = Self::default();
        c.apply(file)?;
        Ok(c)
    }

    /// Checks what no single key can: settings that contradict each other, once the file and
    /// the command line are both applied.
    pub fn validate(&self) -> Result<(), String> {
        if !self.mesh.enabled && (self.role == Role::Hub || !self.federation.hubs.is_empty()) {
            return Err(
                "federation (role = \"hub\", or [federation] hubs) carries mail over mesh links: \
                 it needs the mesh ([mesh] enabled = true, no --no-mesh)"
                    .into(),
            );
        }
        Ok(())
    }

    /// What `--check-config` checks beyond [`NodeConfig::validate`], as a start would find
    /// it: every address the node listens on parses and can be bound (one in use passes: the
    /// node running now holds its own), and the data directory is a directory or can be made.
    /// Returns notes for the operator; nothing is left bound or made.
    pub fn check_start(&self) -> Result<Vec<String>, String> {
        let mut notes = Vec::new();
        let mut listeners = vec![("listen", self.listen.as_str(), false)];
        if self.mesh.enabled {
            listeners.push(("mesh.listen", self.mesh.listen.as_str(), false));
        }
        if self.mesh.enabled && self.role == Role::Hub {
            listeners.push(("federation.listen", self.federation.listen.as_str(), false));
        }
        if let Some(m) = &self.metrics {
            listeners.push(("metrics", m.as_str(), true));
        }
        for (field, value, tcp) in listeners {
            if let Some(note) = check_bind(field, value, tcp)? {
                notes.push(note);
            }
        }
        let mut dir = self.data_dir.as_path();
        loop {
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => break,
                Ok(_) => {
                    return Err(format!(
                        "data_dir {}: {} is not a directory",
                        self.data_dir.display(),
                        dir.display()
                    ));
                }
                Err(_) => match dir.parent() {
                    Some(p) if !p.as_os_str().is_empty() => dir = p,
                    _ => break,
                },
            }
        }
        Ok(notes)
    }

    /// Overlays every key the file sets; a malformed value is an error naming it.
    pub fn apply(&mut self, f: &FileConfig) -> Result<(), String> {
        if let Some(v) = &f.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = &f.listen {
            self.listen = v.clone();
        }
        if let Some(v) = &f.metrics {
            self.metrics = Some(v.clone()).filter(|m| !m.is_empty());
        }
        if let Some(v) = f.rate_limit {
            self.set_rate_limit(v);
        }
        if let Some(v) = &f.log {
            self.log = v.clone();
        }
        if let Some(v) = f.max_connections {
            self.max_connections = v;
        }
        if let Some(v) = f.drain_timeout_secs {
            self.drain_timeout = Duration::from_secs(v);
        }
        if let Some(v) = f.max_request_bytes_in_flight {
            self.max_request_bytes_in_flight = v;
        }
        if let Some(v) = f.max_response_bytes_in_flight {
            self.max_response_bytes_in_flight = v;
        }
        if let Some(v) = f.max_connections_per_address {
            if v == 0 {
                return Err("max_connections_per_address must be at least 1".into());
            }
            self.max_connections_per_address = v;
        }
        if let Some(v) = f.connection_rate {
            self.connection_rate = v;
        }
        if let Some(v) = f.auth_timeout_secs {
            if v == 0 {
                return Err("auth_timeout_secs must be at least 1".into());
            }
            self.auth_timeout = Duration::from_secs(v);
        }
        if let Some(v) = f.answer_timeout_secs {
            if v == 0 {
                return Err("answer_timeout_secs must be at least 1".into());
            }
            self.answer_timeout = Duration::from_secs(v);
        }
        if let Some(v) = f.max_long_polls {
            self.max_long_polls = v;
        }
        if let Some(v) = f.max_inflight_requests {
            if v == 0 {
                return Err("max_inflight_requests must be at least 1".into());
            }
            self.max_inflight_requests = v;
        }
        if let Some(v) = f.default_ttl_secs {
            self.default_ttl_secs = v;
        }
        if let Some(v) = f.max_ttl_secs {
            self.max_ttl_secs = v;
        }
        if let Some(v) = &f.admin_socket {
            self.admin_socket = Some(v.clone());
        }
        if let Some(v) = &f.role {
            self.role = match v.as_str() {
                "edge" => Role::Edge,
                "hub" => Role::Hub,
                other => return Err(format!("role = {other:?}: expected \"edge\" or \"hub\"")),
            };
        }
        if let Some(fed) = &f.federation {
            if let Some(hubs) = &fed.hubs {
                self.federation.hubs = hubs
                    .iter()
                    .map(|h| {
                        h.parse::<StaticPeer>()
                            .map_err(|e| format!("federation.hubs: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            if let Some(v) = &fed.listen {
                if v.parse::<std::net::SocketAddr>().is_err() {
                    return Err(format!(
                        "federation.listen: {v:?} is not an address like [::]:7001"
                    ));
                }
                self.federation.listen = v.clone();
            }
            if let Some(v) = &fed.allow {
                self.federation.allow = v
                    .iter()
                    .map(|id| {
                        id.parse::<NodeId>().map_err(|_| {
                            format!(
                                "federation.allow: {id:?} is not a node id (64 hex digits; \
                                 `ferry status` on the edge prints it)"
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
            if let Some(v) = fed.per_edge_quota {
                if v == 0 {
                    return Err("federation.per_edge_quota must be at least 1".into());
                }
                self.federation.per_edge_quota = v;
            }
            if let Some(v) = &fed.domain {
                if v.len() > 253 {
                    return Err("federation.domain is longer than 253 bytes".into());
                }
                self.federation.domain = v.clone();
            }
        }
        if let Some(v) = f.worker_threads {
            self.worker_threads = v.max(1);
        }
        if let Some(v) = f.udp_receive_buffer_bytes {
            self.udp_receive_buffer = v;
        }
        if let Some(s) = &f.store {
            if let Some(v) = s.max_total_bytes {
                self.store.max_total_bytes = v;
            }
            if let Some(v) = s.max_recipient_messages {
                self.store.max_recipient_messages = v;
            }
            if let Some(v) = s.max_recipient_bytes {
                self.store.max_recipient_bytes = v;
            }
            if let Some(v) = s.cache_bytes {
                self.store.cache_bytes = v;
            }
            if let Some(v) = s.wal {
                self.store.wal = v;
            }
            if let Some(v) = s.checkpoint_bytes {
                self.store.checkpoint_bytes = v;
            }
            // The reserve takes what a checkpoint may need: twice the log's size, unless set.
            self.store.reserve_bytes = s
                .reserve_bytes
                .unwrap_or_else(|| self.store.checkpoint_bytes.saturating_mul(2));
        }
        if let Some(m) = &f.mesh {
            if let Some(v) = m.enabled {
                self.mesh.enabled = v;
            }
            if let Some(v) = &m.listen {
                self.mesh.listen = v.clone();
            }
            if let Some(v) = &m.peers {
                self.mesh.peers = v
                    .iter()
                    .map(|p| p.parse())
                    .collect::<Result<Vec<StaticPeer>, String>>()?;
            }
            if let Some(v) = m.mdns {
                self.mesh.mdns = v;
            }
            if let Some(v) = m.hop_limit {
                if v == 0 {
                    return Err("mesh.hop_limit must be at least 1".into());
                }
                self.mesh.hop_limit = v;
            }
            if let Some(v) = m.max_custody {
                self.mesh.max_custody = v;
            }
            if let Some(v) = m.max_peers {
                self.mesh.max_peers = v.max(1);
            }
        }
        Ok(())
    }

    /// Sets the per-IP rate; the burst is twice the rate (at least 10).
    pub fn set_rate_limit(&mut self, per_sec: u32) {
        self.rate_limit = per_sec;
        self.rate_burst = per_sec.saturating_mul(2).max(10);
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("ferry.redb")
    }

    /// The mesh node key (Ed25519, mode 0600): the node id is its public key.
    pub fn mesh_key_path(&self) -> PathBuf {
        self.data_dir.join("node.key")
    }

    /// The admin socket.
    pub fn admin_socket_path(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join(ADMIN_SOCKET))
    }
}

/// A listening address as the node binds it: `field`'s `value` parsed, and for `[::]:port`
/// also `0.0.0.0:port`, tried when the host has no IPv6.
pub(crate) fn listen_addrs(
    field: &'static str,
    value: &str,
) -> Result<Vec<std::net::SocketAddr>, NodeError> {
    let addr: std::net::SocketAddr = value.parse().map_err(|_| NodeError::Address {
        field,
        value: value.to_string(),
    })?;
    let mut out = vec![addr];
    if addr.ip().is_unspecified() && addr.is_ipv6() {
        out.push(std::net::SocketAddr::from(([0, 0, 0, 0], addr.port())));
    }
    Ok(out)
}

/// Binds a listening address for a moment (UDP, or TCP for `metrics`), as a start would.
/// In use (by the node running now, if it is this one) and not on any interface yet (a
/// router whose interface comes up later: procd restarts the node until it does) are notes;
/// anything else is an error.
fn check_bind(field: &'static str, value: &str, tcp: bool) -> Result<Option<String>, String> {
    let tries = listen_addrs(field, value).map_err(|e| e.to_string())?;
    let mut last = None;
    for a in tries {
        let bound = if tcp {
            std::net::TcpListener::bind(a).map(drop)
        } else {
            std::net::UdpSocket::bind(a).map(drop)
        };
        match bound {
            Ok(()) => return Ok(None),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(Some(format!(
            "{field} = {value:?} is in use (by the node running now, if it is this one)"
        ))),
        Some(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Ok(Some(format!(
            "{field} = {value:?}: no interface has this address now; the node will not start \
             until one does"
        ))),
        e => Err(format!(
            "{field} = {value:?}: cannot be bound: {}",
            e.map_or_else(|| "no address".to_string(), |e| e.to_string())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overlays_defaults_and_rejects_unknown_keys() {
        let f: FileConfig = toml::from_str(
            r#"
            data_dir = "/tmp/x"
            listen = "127.0.0.1:7000"
            rate_limit = 0
            max_ttl_secs = 3600
            udp_receive_buffer_bytes = 0
            [store]
            max_total_bytes = 1000000
            wal = false
            checkpoint_bytes = 65536
            "#,
        )
        .unwrap();
        let c = NodeConfig::from_file(&f).unwrap();
        assert!(!c.store.wal);
        assert_eq!(c.store.checkpoint_bytes, 65_536);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.listen, "127.0.0.1:7000");
        assert_eq!(c.rate_limit, 0);
        assert_eq!(c.max_ttl_secs, 3600);
        assert_eq!(c.udp_receive_buffer, 0);
        assert_eq!(
            NodeConfig::default().udp_receive_buffer,
            ferry_client::net::DEFAULT_RECV_BUFFER
        );
        assert_eq!(c.store.max_total_bytes, 1_000_000);
        assert_eq!(c.default_ttl_secs, DEFAULT_TTL_SECS);
        let err = toml::from_str::<FileConfig>("listn = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listn"), "{err}");
    }

    #[test]
    fn check_start_finds_what_a_start_would() {
        let dir = tempfile::tempdir().unwrap();
        let base = || NodeConfig {
            data_dir: dir.path().join("data"),
            listen: "127.0.0.1:0".into(),
            mesh: MeshConfig {
                listen: "127.0.0.1:0".into(),
                ..MeshConfig::default()
            },
            ..NodeConfig::default()
        };
        assert_eq!(base().check_start(), Ok(vec![]));
        let mut c = base();
        c.listen = "[::]:70000".into();
        assert!(
            c.check_start()
                .unwrap_err()
                .contains("listen = \"[::]:70000\"")
        );
        let mut c = base();
        // TEST-NET-1: no interface here has it (unless the host lets anything be bound).
        c.mesh.listen = "192.0.2.1:5002".into();
        let nonlocal = std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind")
            .is_ok_and(|v| v.trim() != "0");
        if !nonlocal {
            let notes = c.check_start().unwrap();
            assert!(notes[0].starts_with("mesh.listen = \"192.0.2.1:5002\": no interface"));
        }
        let mut c = base();
        c.metrics = Some("127.0.0.1".into());
        assert!(c.check_start().unwrap_err().starts_with("metrics"));
        // In use (the running node): passes, with a note.
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut c = base();
        c.listen = held.local_addr().unwrap().to_string();
        let notes = c.check_start().unwrap();
        assert!(notes[0].contains("in use"), "{notes:?}");
        // A data directory under a file.
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let mut c = base();
        c.data_dir = dir.path().join("file/ferry");
        assert!(c.check_start().unwrap_err().contains("is not a directory"));
    }

    #[test]
    fn role_hubs_and_admin_socket_are_checked() {
        let f: FileConfig = toml::from_str(
            "role = \"edge\"\nadmin_socket = \"/var/run/ferry/ferry.sock\"\n[federation]\nhubs = [\"hub.example.org:7001\", \"[2001:db8::1]:7001\"]",
        )
        .unwrap();
        let c = NodeConfig::from_file(&f).unwrap();
        assert_eq!(c.role, Role::Edge);
        let hubs: Vec<String> = c.federation.hubs.iter().map(|h| h.to_string()).collect();
        assert_eq!(hubs, ["hub.example.org:7001", "[2001:db8::1]:7001"]);
        assert_eq!(
            c.admin_socket_path(),
            PathBuf::from("/var/run/ferry/ferry.sock")
        );
        let id = "ab".repeat(32);
        let f: FileConfig = toml::from_str(&format!(
            "role = \"hub\"\n[federation]\nlisten = \"0.0.0.0:7001\"\nallow = [\"{id}\"]\n\
             per_edge_quota = 100\ndomain = \"hub.example.org\"\nhubs = [\"{id}@10.0.0.1:7001\"]"
        ))
        .unwrap();
        let c = NodeConfig::from_file(&f).unwrap();
        assert_eq!(c.role, Role::Hub);
        assert_eq!(c.federation.allow, [id.parse::<NodeId>().unwrap()]);
        assert_eq!(c.federation.per_edge_quota, 100);
        assert_eq!(c.federation.hubs[0].node, Some(id.parse().unwrap()));
        for (bad, says) in [
            ("allow = [\"edge1\"]", "not a node id"),
            ("listen = \"hub:7001\"", "federation.listen"),
            ("per_edge_quota = 0", "at least 1"),
        ] {
            let f: FileConfig = toml::from_str(&format!("[federation]\n{bad}")).unwrap();
            let err = NodeConfig::from_file(&f).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let f: FileConfig = toml::from_str("role = \"relay\"").unwrap();
        let err = NodeConfig::from_file(&f).unwrap_err();
        assert!(err.contains("\"relay\""), "{err}");
        for bad in ["hub.example.org", ":7001", "hub:0", "hub:port"] {
            let f: FileConfig = toml::from_str(&format!("[federation]\nhubs = [{bad:?}]")).unwrap();
            let err = NodeConfig::from_file(&f).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn static_peers_parse_or_say_what_is_wrong() {
        let id = "ab".repeat(32);
        let p: StaticPeer = format!("{id}@10.0.0.2:5002").parse().unwrap();
        assert_eq!(p.addr, "10.0.0.2:5002");
        let p: StaticPeer = format!("{id}@[fd00::1]:5002").parse().unwrap();
        assert_eq!(p.addr, "[fd00::1]:5002");
        let p: StaticPeer = "hub.example.net:5002".parse().unwrap();
        assert_eq!((p.node, p.addr.as_str()), (None, "hub.example.net:5002"));
        for bad in [
            "10.0.0.2".to_string(),
            "@10.0.0.2:5002".to_string(),
            format!("{}@10.0.0.2:5002", &id[..10]),
            format!("{id}@10.0.0.2"),
            format!("{id}@:5002"),
            format!("{id}@host:0"),
        ] {
            assert!(bad.parse::<StaticPeer>().is_err(), "{bad}");
        }
        let f: FileConfig = toml::from_str("[mesh]\npeers = [\"nonsense\"]").unwrap();
        let err = NodeConfig::from_file(&f).unwrap_err();
        assert!(err.contains("nonsense"), "{err}");
    }

    #[test]
    fn federation_without_the_mesh_does_not_validate() {
        for text in [
            "role = \"hub\"\n[mesh]\nenabled = false",
            "[mesh]\nenabled = false\n[federation]\nhubs = [\"hub.example.org:7001\"]",
        ] {
            let f: FileConfig = toml::from_str(text).unwrap();
            let err = NodeConfig::from_file(&f).unwrap().validate().unwrap_err();
            assert!(err.contains("needs the mesh"), "{text}: {err}");
        }
        let f: FileConfig = toml::from_str("role = \"hub\"").unwrap();
        assert_eq!(NodeConfig::from_file(&f).unwrap().validate(), Ok(()));
        assert_eq!(NodeConfig::default().validate(), Ok(()));
    }
}
