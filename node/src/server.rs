//! The QUIC server: endpoint, accept loop, per-stream framing, background sweep, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::frame::RequestHeader;
use ferry_proto::limits::ALPN_QPQ;
use ferry_proto::types::{Fingerprint, NodeId};
use ferry_proto::{Method, Status};
use ferry_store::Store;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use portable_atomic::Ordering;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::budget::{BytePool, Held};
use crate::conn::ConnState;
use crate::metrics::{CommitHook, Limit, Metrics, inc};
use crate::rpc::{self, Reply};
use crate::state::State;
use crate::{NodeConfig, NodeError, cert};

/// How long a client has to complete the QUIC handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send the 10-byte request header once it opened a stream.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to deliver the request body once the header arrived.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A request body of which nothing arrives for this long is given up.
const BODY_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at which new ones must prove their address first (a QUIC Retry),
/// so that spoofed sources cost nothing.
const PENDING_HANDSHAKES_BEFORE_RETRY: u64 = 64;
/// Application error codes the node closes connections with.
mod close {
    /// Not authenticated within `auth_timeout`.
    pub(super) const AUTH_TIMEOUT: u32 = 0x101;
    /// More connections from the client's address than `max_connections_per_address`.
    pub(super) const ADDRESS_LIMIT: u32 = 0x102;
    /// The client did not read its answers.
    pub(super) const NOT_READING: u32 = 0x103;
}

/// A started node.
#[derive(Debug)]
pub struct RunningNode {
    /// Where the client protocol listens.
    pub local_addr: SocketAddr,
    /// Where `/metrics` listens, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// SHA-256 of the node certificate, which clients pin.
    pub cert_fingerprint: Fingerprint,
    /// The node's id (its node key), with or without the mesh.
    pub node_id: NodeId,
    /// Whether the certificate was made by this start.
    pub cert_created: bool,
    /// The mesh node id, unless the mesh is off.
    pub mesh_node_id: Option<NodeId>,
    /// Where mesh links listen.
    pub mesh_addrs: Vec<SocketAddr>,
    /// Where federation links listen (a hub's `[federation] listen`; an edge's dialling port).
    pub federation_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningNode {
    /// Asks the node to stop: no new connections, in-flight requests finish (up to the
    /// drain timeout), the store commits what is queued and closes.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the node has stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Shuts down and waits.
    pub async fn stop(self) {
        self.shutdown();
        self.wait().await;
    }
}

fn server_config(cfg: &NodeConfig, c: cert::NodeCert) -> Result<quinn::ServerConfig, NodeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![c.cert], c.key)?;
    tls.alpn_protocols = vec![ALPN_QPQ.to_vec()];
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|_| {
        NodeError::Tls(rustls::Error::General(
            "no TLS 1.3 cipher suite for QUIC".into(),
        ))
    })?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(
            cfg.max_streams_per_connection
                .min(crate::conn::INITIAL_STREAMS)
                .into(),
        )
        .max_concurrent_uni_streams(0u32.into())
        // What a connection may have in flight that nobody has read or acknowledged yet. The
        // node reads request bodies as they arrive (counted against the body pool) and holds
        // answers until they are acknowledged (the answer pool), so these bound QUIC's own
        // buffers only for the moment between; they are flow-control windows, not limits on
        // sizes: a 4 MiB request passes through a 1 MiB stream window.
        .receive_window((2u32 * 1024 * 1024).into())
        .stream_receive_window((1024u32 * 1024).into())
        .send_window(2 * 1024 * 1024)
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(300))
                .map_err(|_| NodeError::Tls(rustls::Error::General("idle timeout".into())))?,
        ));
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// Binds a UDP socket for the QUIC endpoint `what` with the configured receive buffer, and
/// says what it got: at info, or as a warning when the system capped it.
pub(crate) fn bind_udp(
    what: &'static str,
    addr: SocketAddr,
    asked: usize,
) -> std::io::Result<ferry_client::net::BoundUdp> {
    let b = ferry_client::net::bind_udp(addr, asked)?;
    if asked > 0 && b.capped(asked) {
        tracing::warn!(
            socket = what,
            asked,
            got = b.recv_buffer,
            "UDP receive buffer capped by the system; bursts will be dropped and resent \
             (raise net.core.rmem_max, or run with CAP_NET_ADMIN)"
        );
    } else {
        tracing::info!(socket = what, bytes = b.recv_buffer, "UDP receive buffer");
    }
    Ok(b)
}

fn bind_endpoint(
    listen: &str,
    server: quinn::ServerConfig,
    endpoint: &quinn::EndpointConfig,
    recv_buffer: usize,
) -> Result<quinn::Endpoint, NodeError> {
    let mut last = None;
    for addr in crate::config::listen_addrs("listen", listen)? {
        let bound = bind_udp("client", addr, recv_buffer)
            .and_then(|b| b.endpoint(endpoint.clone(), Some(server.clone())));
        match bound {
            Ok(e) => return Ok(e),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "bind failed");
                last = Some(e);
            }
        }
    }
    Err(NodeError::Bind {
        addr: listen.to_string(),
        source: last.unwrap_or_else(|| std::io::Error::other("no address to bind")),
    })
}

/// Starts a node: opens the store, makes or loads the certificate, binds the listeners.
pub async fn start(cfg: NodeConfig) -> Result<RunningNode, NodeError> {
    cfg.validate().map_err(NodeError::Mesh)?;
    let dir = cfg.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| NodeError::Io {
        path: dir.clone(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    let (node_cert, cert_created) = cert::load_or_create(&dir)?;
    let fingerprint = node_cert.fingerprint;
    // The node key: the node's one id (its public half), in logs, `ferry status` and the mesh.
    let secret = ferry_mesh::driver::load_or_create_key(&cfg.mesh_key_path())
        .map_err(|e| NodeError::Mesh(e.to_string()))?;
    let node_id = NodeId::from_array(
        ed25519_dalek::SigningKey::from_bytes(&secret)
            .verifying_key()
            .to_bytes(),
    );
    let node_span = tracing::info_span!("node", id = %node_id.short());
    let metrics = Metrics::new();
    let store_cfg = cfg.store.clone();
    let db_path = cfg.db_path();
    let hook = Arc::new(CommitHook(Arc::clone(&metrics)));
    let store = tokio::task::spawn_blocking(move || {
        Store::open_with_observer(db_path, store_cfg, Some(hook))
    })
    .await
    .map_err(|_| NodeError::Io {
        path: dir.clone(),
        source: std::io::Error::other("store open task failed"),
    })??;
    // Keyed by the certificate's key, which the node keeps: after a restart (kill -9, a power
    // cut) the first packet a client sends on its old connection is answered with a reset it
    // accepts, and it reconnects at once instead of waiting out its idle timeout.
    let endpoint_cfg = ferry_mesh::driver::quic_transport::endpoint_config(
        &[
            b"ferry client endpoint v1".as_slice(),
            node_cert.key.secret_der(),
        ]
        .concat(),
    );
    let server = server_config(&cfg, node_cert)?;
    let endpoint = node_span
        .in_scope(|| bind_endpoint(&cfg.listen, server, &endpoint_cfg, cfg.udp_receive_buffer))?;
    let local_addr = endpoint.local_addr().map_err(|source| NodeError::Bind {
        addr: cfg.listen.clone(),
        source,
    })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let peers_kick = Arc::new(tokio::sync::Notify::new());
    let mesh = if cfg.mesh.enabled {
        let started = crate::mesh::start(
            &cfg,
            secret,
            store.clone(),
            local_addr,
            fingerprint,
            Arc::clone(&peers_kick),
            stop_rx.clone(),
        )
        .instrument(node_span.clone())
        .await?;
        Some(started)
    } else {
        None
    };
    let handle = mesh.as_ref().map(|m| m.handle.clone());
    let federation = mesh.as_ref().and_then(|m| m.federation.clone());
    let federation_addrs = federation
        .as_ref()
        .map(|f| f.federation_addrs())
        .unwrap_or_default();
    let registry = Arc::new(crate::metrics::registry(
        &metrics,
        &store,
        handle.clone(),
        federation.clone(),
    ));
    let state = Arc::new(State::new(
        store,
        cfg.clone(),
        metrics,
        (node_id, fingerprint),
        crate::state::Links {
            mesh: handle.clone(),
            federation,
            peers_kick,
        },
    ));
    let mut discovery = None;
    if let Some(m) = mesh {
        tokio::spawn(
            mesh_events(Arc::clone(&state), m.events, stop_rx.clone())
                .instrument(node_span.clone()),
        );
        discovery = m.discovery;
    }
    #[cfg(unix)]
    {
        let admin = crate::admin::bind(&cfg.admin_socket_path())?;
        tokio::spawn(
            crate::admin::serve(admin, Arc::clone(&state), stop_rx.clone())
                .instrument(node_span.clone()),
        );
    }
    let metrics_addr = match &cfg.metrics {
        Some(m) => {
            let listener =
                tokio::net::TcpListener::bind(m)
                    .await
                    .map_err(|source| NodeError::Bind {
                        addr: m.clone(),
                        source,
                    })?;
            let addr = listener.local_addr().ok();
            tokio::spawn(
                crate::http::serve(listener, Arc::clone(&state), registry, stop_rx.clone())
                    .instrument(node_span.clone()),
            );
            addr
        }
        None => None,
    };
    {
        let _e = node_span.enter();
        if cert_created {
            tracing::info!(fingerprint = %fingerprint, dir = %dir.display(), "generated a self-signed certificate");
        }
        tracing::info!(addr = %local_addr, fingerprint = %fingerprint, node = %node_id, "accepting QUIC connections (ALPN qpq)");
        if let Some(m) = metrics_addr {
            tracing::info!(addr = %m, "serving /metrics and /healthz");
        }
    }
    tokio::spawn(sweeper(Arc::clone(&state), stop_rx.clone()).instrument(node_span.clone()));
    let task = tokio::spawn(
        async move {
            // mDNS stops announcing only at the end of this block, after the mesh shut down.
            let _discovery = discovery;
            run(endpoint, state, stop_rx).await;
        }
        .instrument(node_span),
    );
    Ok(RunningNode {
        local_addr,
        metrics_addr,
        cert_fingerprint: fingerprint,
        node_id,
        cert_created,
        mesh_node_id: handle.as_ref().map(|m| m.node_id()),
        mesh_addrs: handle.as_ref().map(|m| m.local_addrs()).unwrap_or_default(),
        federation_addrs,
        stop: stop_tx,
        task,
    })
}

/// Turns mesh deliveries into long-poll wake-ups and pushes.
async fn mesh_events(
    state: Arc<State>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<ferry_mesh::driver::MeshEvent>,
    mut stop: watch::Receiver<bool>,
) {
    use ferry_mesh::driver::MeshEvent;
    loop {
        let ev = tokio::select! {
            e = events.recv() => e,
            _ = stop.changed() => return,
        };
        match ev {
            Some(MeshEvent::Delivered(list)) => {
                for (mailbox, seq) in list {
                    rpc::announce(&state, &mailbox, seq);
                }
            }
            Some(MeshEvent::Broadcast { .. }) => state.broadcast.notify_waiters(),
            None => return,
        }
    }
}

async fn sweeper(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(state.cfg.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match state.store.sweep(crate::now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "removed expired messages"),
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
        }
    }
}

async fn run(endpoint: quinn::Endpoint, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = stop.changed() => break,
        };
        let Some(incoming) = incoming else { break };
        let open = state.open_conns.load(Ordering::Acquire);
        if open >= state.cfg.max_connections as u64 {
            inc(&state.metrics.c.connections_refused);
            tracing::warn!(limit = state.cfg.max_connections, peer = %incoming.remote_address(), "connection limit reached; refusing");
            incoming.refuse();
            continue;
        }
        let ip = incoming.remote_address().ip();
        let validated = incoming.remote_address_validated();
        // Many handshakes under way: a new one proves its address first. A Retry costs the
        // node nothing and a spoofed source never answers it.
        if !validated
            && state.handshaking.load(Ordering::Acquire) >= PENDING_HANDSHAKES_BEFORE_RETRY
            && incoming.may_retry()
        {
            let _ = incoming.retry();
            continue;
        }
        // New connections per address and second: an address without a token left is asked
        // to prove itself (a Retry, which costs nothing), and refused once it has.
        if let Some(l) = &state.handshakes
            && !l.has_token(ip, Instant::now())
        {
            if !validated && incoming.may_retry() {
                let _ = incoming.retry();
            } else {
                state.metrics.refused(Limit::ConnectionRate);
                tracing::debug!(peer = %incoming.remote_address(), "connection rate of the address exceeded; refusing");
                incoming.refuse();
            }
            continue;
        }
        let state = Arc::clone(&state);
        tokio::spawn(
            async move {
                let id = state.next_conn.fetch_add(1, Ordering::Relaxed);
                let span = tracing::debug_span!("conn", id, peer = %incoming.remote_address());
                serve_connection(state, incoming, id).instrument(span).await;
            }
            .in_current_span(),
        );
    }
    shutdown(&endpoint, &state).await;
}

async fn shutdown(endpoint: &quinn::Endpoint, state: &Arc<State>) {
    tracing::info!("shutdown signal received: draining");
    state.draining.store(true, Ordering::Release);
    state.drain.notify_waiters();
    endpoint.set_server_config(None);
    let all = u32::try_from(state.cfg.max_inflight_requests).unwrap_or(u32::MAX);
    let polls = u32::try_from(state.cfg.max_long_polls).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(state.cfg.drain_timeout, async {
        let requests = state.inflight.acquire_many(all).await;
        let long_polls = state.long_polls.acquire_many(polls).await;
        (requests, long_polls)
    })
    .await;
    match drained {
        Ok(_) => tracing::info!("in-flight requests finished"),
        Err(_) => {
            tracing::warn!(timeout = ?state.cfg.drain_timeout, "drain timeout; closing with requests in flight")
        }
    }
    endpoint.close(0u32.into(), b"node shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    if let Some(mesh) = &state.mesh {
        mesh.shutdown().await;
    }
    #[cfg(unix)]
    let _ = std::fs::remove_file(state.cfg.admin_socket_path());
    let store = state.store.clone();
    let _ = tokio::task::spawn_blocking(move || store.close()).await;
    tracing::info!("stopped");
}

async fn serve_connection(state: Arc<State>, incoming: quinn::Incoming, id: u64) {
    state.handshaking.fetch_add(1, Ordering::AcqRel);
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await;
    state.handshaking.fetch_sub(1, Ordering::AcqRel);
    let quic = match handshake {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("handshake timed out");
            return;
        }
    };
    // Counted once the handshake proved the address (a spoofed one cannot take anyone's slots
    // or rate).
    let ip = quic.remote_address().ip();
    if let Some(l) = &state.handshakes
        && l.check(ip, Instant::now()).is_err()
    {
        state.metrics.refused(Limit::ConnectionRate);
        let reason = format!(
            "too many new connections from your address (at most {}/s)",
            state.cfg.connection_rate
        );
        quic.close(close::ADDRESS_LIMIT.into(), reason.as_bytes());
        return;
    }
    let Some(_slot) = state.conns_by_address.take(ip, 1) else {
        state.metrics.refused(Limit::ConnectionsPerAddress);
        tracing::debug!(
            limit = state.cfg.max_connections_per_address,
            "too many connections from this address; closing"
        );
        let reason = format!(
            "too many connections from your address (at most {})",
            state.cfg.max_connections_per_address
        );
        quic.close(close::ADDRESS_LIMIT.into(), reason.as_bytes());
        return;
    };
    inc(&state.metrics.c.connections);
    state
        .metrics
        .c
        .open_connections
        .fetch_add(1, Ordering::Relaxed);
    state.open_conns.fetch_add(1, Ordering::AcqRel);
    let conn = Arc::new(ConnState::new(id, quic.clone()));
    tracing::debug!("connected");
    // The connection's streams are polled here, in its one task, not each in a task of its
    // own. When a group commit answers many of its requests at once, they all write their
    // answers in one poll of this task, and quinn's driver (woken by the first write) runs
    // after it: one packet carries them all. With a task per stream, tokio ran the woken
    // driver right after each answer's task (its LIFO slot), and every answer took a packet
    // of its own (docs/benchmarks.md, "one packet per answer no more").
    //
    // Boxed: the set keeps a stub of its future type, which unboxed would be a whole request
    // future per connection (3.3 MiB over 1,000 idle connections).
    let mut streams: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
    // A connection that has not authenticated by then is closed: an unauthenticated one may
    // only ask for Health and authenticate, which takes a round trip or two.
    let auth_deadline = tokio::time::sleep(state.cfg.auth_timeout);
    tokio::pin!(auth_deadline);
    let mut auth_checked = false;
    loop {
        tokio::select! {
            accepted = quic.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    conn.stream_opened(state.cfg.max_streams_per_connection);
                    streams.push(Box::pin(serve_stream(Arc::clone(&state), Arc::clone(&conn), send, recv)));
                }
                Err(e) => {
                    tracing::debug!(reason = %e, "connection closed");
                    break;
                }
            },
            Some(()) = streams.next(), if !streams.is_empty() => {}
            () = &mut auth_deadline, if !auth_checked => {
                auth_checked = true;
                if conn.identity().is_none() {
                    state.metrics.refused(Limit::AuthTimeout);
                    tracing::debug!("not authenticated in time; closing");
                    let reason = format!(
                        "not authenticated within {} s",
                        state.cfg.auth_timeout.as_secs()
                    );
                    quic.close(close::AUTH_TIMEOUT.into(), reason.as_bytes());
                }
            }
        }
    }
    // Requests still in flight finish (their store operations complete and their permits are
    // returned) even though their answers can no longer be sent; long polls end at once.
    while streams.next().await.is_some() {}
    if let Some(identity) = conn.identity() {
        state.unregister(&identity, conn.id);
        if let Some(mesh) = &state.mesh {
            mesh.user_disconnected(identity);
        }
    }
    state.open_conns.fetch_sub(1, Ordering::AcqRel);
    state
        .metrics
        .c
        .open_connections
        .fetch_sub(1, Ordering::Relaxed);
}

/// One request stream, start to end.
async fn serve_stream(
    state: Arc<State>,
    conn: Arc<ConnState>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    handle_stream(&state, &conn, send, recv).await;
    conn.stream_closed();
}

/// Writes the answer. Its bytes of the answer pool (a read's) are held until the client's QUIC
/// stack acknowledged them. A client that takes nothing of it for `answer_timeout` (grants no
/// flow-control credit) does not read: the connection is closed.
async fn respond(
    conn: &ConnState,
    state: &State,
    send: &mut quinn::SendStream,
    request_id: u32,
    reply: Reply,
) {
    let (frame, hold) = reply.into_frame(request_id);
    let mut chunk = [bytes::Bytes::from(frame)];
    while chunk.iter().any(|c| !c.is_empty()) {
        match tokio::time::timeout(state.cfg.answer_timeout, send.write_chunks(&mut chunk)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                state.metrics.refused(Limit::AnswerStalled);
                tracing::debug!("answer not read; closing the connection");
                let _ = send.reset(close::NOT_READING.into());
                let reason = format!(
                    "answers not read for {} s",
                    state.cfg.answer_timeout.as_secs()
                );
                conn.quic
                    .close(close::NOT_READING.into(), reason.as_bytes());
                return;
            }
        }
    }
    let _ = send.finish();
    if let Some(hold) = hold {
        // Until acknowledged (or the stream is stopped or the connection lost), QUIC keeps
        // the bytes for retransmission: they stay counted.
        let _ = tokio::time::timeout(state.cfg.answer_timeout, send.stopped()).await;
        drop(hold);
    }
}

/// A request body, with its bytes of the body pool.
struct Body {
    bytes: Vec<u8>,
    _held: Held,
}

/// Reads a body of `len` bytes, counting what arrives (and what the buffer takes) against the
/// body pool: against the address's share, refused at once when it is used up, and the node's
/// pool, refused at once when it is full (waiting would leave the bytes in QUIC's buffers
/// instead). A body of which nothing arrives for [`BODY_STALL_TIMEOUT`], or that is not
/// complete within [`REQUEST_READ_TIMEOUT`], is given up.
async fn read_body(
    state: &State,
    conn: &ConnState,
    recv: &mut quinn::RecvStream,
    len: usize,
) -> Result<Body, Reply> {
    let pool = &state.bodies;
    let ip = conn.remote.ip();
    let mut held = pool.empty(ip, len > BytePool::SMALL);
    let mut bytes: Vec<u8> = Vec::new();
    let deadline = tokio::time::Instant::now() + REQUEST_READ_TIMEOUT;
    while bytes.len() < len {
        let stall = (tokio::time::Instant::now() + BODY_STALL_TIMEOUT).min(deadline);
        let chunk =
            match tokio::time::timeout_at(stall, recv.read_chunk(len - bytes.len(), true)).await {
                Ok(Ok(Some(c))) => c.bytes,
                Ok(Ok(None) | Err(_)) => {
                    return Err(Reply::err(
                        Status::BadRequest,
                        format!(
                            "truncated frame: payload declared {len} bytes, got {}",
                            bytes.len()
                        ),
                    ));
                }
                Err(_) => {
                    state.metrics.refused(Limit::BodyStalled);
                    return Err(Reply::err(
                        Status::DeadlineExceeded,
                        format!(
                            "request not received in time: {} of {len} bytes",
                            bytes.len()
                        ),
                    ));
                }
            };
        let need = bytes.len() + chunk.len();
        if need > bytes.capacity() {
            // The buffer doubles (to the declared length); what it takes is what is counted.
            let cap = need.max(bytes.capacity() * 2).max(4096).min(len);
            let more = cap - held.len();
            if !pool.try_grow(&mut held, more) {
                let share = pool.held_by(ip) + more > pool.per_address();
                let reply = if share {
                    state.metrics.refused(Limit::BodyBytesPerAddress);
                    Reply::retry(
                        Status::RateLimited,
                        format!(
                            "too many request bytes in flight from your address (its share is {} bytes)",
                            pool.per_address()
                        ),
                        Duration::from_secs(1),
                    )
                } else {
                    state.metrics.refused(Limit::Busy);
                    Reply::retry(
                        Status::Unavailable,
                        "this node is receiving as many request bytes as it may; try again",
                        Duration::from_secs(1),
                    )
                };
                return Err(reply);
            }
            bytes.reserve_exact(cap - bytes.len());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Body { bytes, _held: held })
}

/// What a request holds while it is served: a request slot, or a long-poll slot.
enum Slot {
    Request {
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
    LongPoll {
        _permit: tokio::sync::OwnedSemaphorePermit,
        _share: crate::budget::Share,
        conn: Arc<ConnState>,
    },
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Slot::LongPoll { conn, .. } = self {
            conn.leave_long_poll();
        }
    }
}

/// Takes a long-poll slot: one of the connection's, of the address's share and of the node's;
/// refused at once when any is used up.
fn long_poll_slot(state: &State, conn: &Arc<ConnState>) -> Result<Slot, Reply> {
    let refuse = |what: String| {
        state.metrics.refused(Limit::LongPolls);
        Reply::retry(Status::RateLimited, what, Duration::from_secs(1))
    };
    if !conn.enter_long_poll() {
        return Err(refuse(format!(
            "too many long polls on this connection (at most {})",
            crate::conn::MAX_LONG_POLLS
        )));
    }
    let Some(share) = state.long_polls_by_address.take(conn.remote.ip(), 1) else {
        conn.leave_long_poll();
        return Err(refuse(format!(
            "too many long polls from your address (at most {})",
            state.long_polls_by_address.cap()
        )));
    };
    let Ok(permit) = Arc::clone(&state.long_polls).try_acquire_owned() else {
        conn.leave_long_poll();
        return Err(refuse(
            "this node has as many long polls waiting as it may; try again".into(),
        ));
    };
    Ok(Slot::LongPoll {
        _permit: permit,
        _share: share,
        conn: Arc::clone(conn),
    })
}

/// Answers a request that is refused before it is served; `stop`: also tell the client to
/// stop sending its body (QUIC drops what arrives of it instead of buffering it).
#[allow(clippy::too_many_arguments)]
async fn refuse(
    state: &State,
    conn: &ConnState,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    rid: u32,
    method: Option<Method>,
    reply: Reply,
    stop: bool,
) {
    state.metrics.request(method, false, reply.status);
    if stop {
        let _ = recv.stop(0u32.into());
    }
    respond(conn, state, send, rid, reply).await;
}

async fn handle_stream(
    state: &Arc<State>,
    conn: &Arc<ConnState>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    // The header costs nothing to wait for: no permit or buffer is held meanwhile.
    let mut hdr = [0u8; RequestHeader::LEN];
    let read = tokio::time::timeout(HEADER_READ_TIMEOUT, recv.read_exact(&mut hdr)).await;
    match read {
        Ok(Ok(())) => {}
        Ok(Err(quinn::ReadExactError::FinishedEarly(got))) => {
            state.metrics.request(None, true, Status::BadRequest);
            let reply = Reply::err(
                Status::BadRequest,
                format!("truncated frame: {got} of 10 header bytes"),
            );
            respond(conn, state, &mut send, 0, reply).await;
            return;
        }
        Ok(Err(_)) | Err(_) => return,
    }
    let header = RequestHeader::from_bytes(&hdr);
    let rid = header.request_id;
    let method = Method::from_id(header.method_id);
    let ip = conn.remote.ip();
    macro_rules! refuse {
        ($reply:expr, stop) => {{
            refuse(state, conn, &mut send, &mut recv, rid, method, $reply, true).await;
            return;
        }};
        ($reply:expr) => {{
            refuse(
                state, conn, &mut send, &mut recv, rid, method, $reply, false,
            )
            .await;
            return;
        }};
    }
    let len = match header.payload_len() {
        Ok(l) => l,
        Err(e) => refuse!(Reply::err(Status::PayloadTooLarge, e.to_string()), stop),
    };
    if let Some(limiter) = &state.limiter
        && let Err(wait) = limiter.check(ip, Instant::now())
    {
        inc(&state.metrics.c.rate_limit_hit);
        refuse!(
            Reply::retry(Status::RateLimited, "rate limit exceeded; back off", wait),
            stop
        );
    }
    // This address's share of the requests in flight: refused, not queued, when used up.
    let Some(in_flight) = state.inflight_by_address.take(ip, 1) else {
        state.metrics.refused(Limit::RequestsPerAddress);
        refuse!(
            Reply::retry(
                Status::RateLimited,
                format!(
                    "too many requests in flight from your address (at most {})",
                    state.inflight_by_address.cap()
                ),
                Duration::from_secs(1),
            ),
            stop
        );
    };
    let body = match read_body(state, conn, &mut recv, len).await {
        Ok(b) => b,
        Err(reply) => refuse!(reply, stop),
    };
    // Long polls wait in slots of their own; everything else shares the node's pool of
    // requests in flight (each brief: a store operation).
    let slot = if matches!(method, Some(Method::FetchWait | Method::BroadcastFetch)) {
        match long_poll_slot(state, conn) {
            // A waiting long poll counts as one, not as a request in flight.
            Ok(s) => {
                drop(in_flight);
                s
            }
            Err(reply) => refuse!(reply),
        }
    } else {
        match Arc::clone(&state.inflight).acquire_owned().await {
            Ok(p) => Slot::Request { _permit: p },
            Err(_) => return,
        }
    };
    let reply = rpc::dispatch(state, conn, header.method_id, &body.bytes).await;
    // Served: what remains is sending the answer, which holds its own bytes.
    drop((body, slot));
    state.metrics.request(method, false, reply.status);
    if reply.status != Status::Ok {
        tracing::debug!(
            method = method.map(Method::name).unwrap_or("unknown"),
            status = %reply.status,
            "request refused"
        );
    }
    respond(conn, state, &mut send, rid, reply).await;
}
