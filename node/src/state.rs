//! State shared by all connections of a node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ferry_proto::types::{Fingerprint, IdentityKey, MailboxAddr, NodeId, SessionToken};
use ferry_store::Store;
use portable_atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::{Notify, Semaphore};

use crate::NodeConfig;
use crate::budget::{BytePool, Shares};
use crate::conn::ConnState;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;

/// Connections per identity that receive pushes (a user's devices); the oldest is dropped.
const MAX_CONNS_PER_IDENTITY: usize = 16;
/// Sessions remembered at most; the one closest to expiry goes first.
const MAX_SESSIONS: usize = 65_536;
/// How long a session token can be resumed.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

pub(crate) struct State {
    pub(crate) store: Store,
    pub(crate) cfg: NodeConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limiter: Option<RateLimiter>,
    pub(crate) started: Instant,
    /// This node: the public half of its node key (`node.key`), with or without the mesh.
    pub(crate) node_id: NodeId,
    /// SHA-256 of its TLS certificate, which clients pin.
    pub(crate) fingerprint: Fingerprint,
    /// The mesh, unless disabled.
    pub(crate) mesh: Option<ferry_mesh::driver::MeshHandle>,
    /// The federation endpoint (hubs, and edges with hubs).
    pub(crate) federation: Option<Arc<ferry_mesh::driver::federation::Federation>>,
    /// Woken when a broadcast is kept, so BroadcastFetch long polls look again.
    pub(crate) broadcast: Notify,
    /// Makes the static-peer task resolve and identify its peers again at once.
    pub(crate) peers_kick: Arc<Notify>,
    pub(crate) draining: AtomicBool,
    /// Woken when draining starts, so long polls return at once.
    pub(crate) drain: Notify,
    /// Bounds RPCs in flight (long polls have their own); shutdown waits until every permit
    /// is back.
    pub(crate) inflight: Arc<Semaphore>,
    /// Requests in flight per client address: a quarter of `inflight`.
    pub(crate) inflight_by_address: Arc<Shares>,
    /// Long polls waiting; shutdown waits for these too.
    pub(crate) long_polls: Arc<Semaphore>,
    /// Long polls per client address: a quarter of `long_polls`.
    pub(crate) long_polls_by_address: Arc<Shares>,
    /// Connections per client address.
    pub(crate) conns_by_address: Arc<Shares>,
    /// New connections per client address and second: looked at when a handshake starts,
    /// taken when it completes (so a spoofed source, which never completes one, cannot use up
    /// an address's rate).
    pub(crate) handshakes: Option<RateLimiter>,
    /// Handshakes under way.
    pub(crate) handshaking: AtomicU64,
    /// Request body bytes buffered, counted as they arrive.
    pub(crate) bodies: BytePool,
    /// Answer bytes held until the client's QUIC stack took them.
    pub(crate) answers: BytePool,
    pub(crate) next_conn: AtomicU64,
    pub(crate) open_conns: AtomicU64,
    registry: Mutex<HashMap<IdentityKey, Vec<Weak<ConnState>>>>,
    waiters: Mutex<HashMap<MailboxAddr, Arc<Notify>>>,
    sessions: Mutex<HashMap<SessionToken, (IdentityKey, Instant)>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("node_id", &self.node_id)
            .finish()
    }
}

/// What a node links with, handed to [`State::new`].
pub(crate) struct Links {
    pub(crate) mesh: Option<ferry_mesh::driver::MeshHandle>,
    pub(crate) federation: Option<Arc<ferry_mesh::driver::federation::Federation>>,
    pub(crate) peers_kick: Arc<Notify>,
}

impl State {
    /// `node_id` and `fingerprint` name this node: its node key and its certificate.
    pub(crate) fn new(
        store: Store,
        cfg: NodeConfig,
        metrics: Arc<Metrics>,
        (node_id, fingerprint): (NodeId, Fingerprint),
        links: Links,
    ) -> Self {
        let Links {
            mesh,
            federation,
            peers_kick,
        } = links;
        let limiter =
            (cfg.rate_limit > 0).then(|| RateLimiter::new(cfg.rate_limit, cfg.rate_burst, 16_384));
        let handshakes = (cfg.connection_rate > 0).then(|| {
            RateLimiter::new(
                cfg.connection_rate,
                cfg.connection_rate.saturating_mul(2),
                16_384,
            )
        });
        // One largest request or answer always fits in an address's share.
        let largest = ferry_proto::limits::MAX_PAYLOAD + 64 * 1024;
        Self {
            inflight: Arc::new(Semaphore::new(cfg.max_inflight_requests)),
            inflight_by_address: Shares::new((cfg.max_inflight_requests / 4).max(1)),
            long_polls: Arc::new(Semaphore::new(cfg.max_long_polls)),
            long_polls_by_address: Shares::new((cfg.max_long_polls / 4).max(1)),
            conns_by_address: Shares::new(cfg.max_connections_per_address.max(1)),
            handshakes,
            handshaking: AtomicU64::new(0),
            bodies: BytePool::new(cfg.max_request_bytes_in_flight, largest),
            answers: BytePool::new(cfg.max_response_bytes_in_flight, largest),
            store,
            limiter,
            metrics,
            started: Instant::now(),
            node_id,
            fingerprint,
            mesh,
            federation,
            broadcast: Notify::new(),
            peers_kick,
            cfg,
            draining: AtomicBool::new(false),
            drain: Notify::new(),
            next_conn: AtomicU64::new(1),
            open_conns: AtomicU64::new(0),
            registry: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Records that `conn` is authenticated as `id`, for pushes.
    pub(crate) fn register(&self, id: IdentityKey, conn: &Arc<ConnState>) {
        let Ok(mut reg) = self.registry.lock() else {
            return;
        };
        let list = reg.entry(id).or_default();
        list.retain(|w| w.strong_count() > 0);
        if list
            .iter()
            .any(|w| w.upgrade().is_some_and(|c| c.id == conn.id))
        {
            return;
        }
        if list.len() >= MAX_CONNS_PER_IDENTITY {
            list.remove(0);
        }
        list.push(Arc::downgrade(conn));
    }

    pub(crate) fn unregister(&self, id: &IdentityKey, conn_id: u64) {
        let Ok(mut reg) = self.registry.lock() else {
            return;
        };
        if let Some(list) = reg.get_mut(id) {
            list.retain(|w| w.upgrade().is_some_and(|c| c.id != conn_id));
            if list.is_empty() {
                reg.remove(id);
            }
        }
    }

    /// Live connections authenticated as `id`.
    pub(crate) fn connections_of(&self, id: &IdentityKey) -> Vec<Arc<ConnState>> {
        let Ok(reg) = self.registry.lock() else {
            return Vec::new();
        };
        reg.get(id)
            .map(|l| l.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }

    /// The notifier FetchWait waits on for `mailbox`. Release it with [`State::release_waiter`].
    pub(crate) fn waiter(&self, mailbox: &MailboxAddr) -> Arc<Notify> {
        match self.waiters.lock() {
            Ok(mut w) => Arc::clone(w.entry(*mailbox).or_default()),
            Err(_) => Arc::new(Notify::new()),
        }
    }

    pub(crate) fn release_waiter(&self, mailbox: &MailboxAddr, n: Arc<Notify>) {
        if let Ok(mut w) = self.waiters.lock() {
            // Ours and the map's are the only references left: nobody else is waiting.
            if Arc::strong_count(&n) <= 2 {
                w.remove(mailbox);
            }
        }
    }

    /// Wakes long polls of `mailbox`.
    pub(crate) fn notify(&self, mailbox: &MailboxAddr) {
        let n = self
            .waiters
            .lock()
            .ok()
            .and_then(|w| w.get(mailbox).cloned());
        if let Some(n) = n {
            n.notify_waiters();
        }
    }

    pub(crate) fn new_session(&self, id: IdentityKey, token: SessionToken, now: Instant) {
        let Ok(mut s) = self.sessions.lock() else {
            return;
        };
        if s.len() >= MAX_SESSIONS {
            s.retain(|_, (_, exp)| *exp > now);
            if s.len() >= MAX_SESSIONS {
                let soonest = s.iter().min_by_key(|(_, (_, exp))| *exp).map(|(k, _)| *k);
                if let Some(k) = soonest {
                    s.remove(&k);
                }
            }
        }
        s.insert(token, (id, now + SESSION_TTL));
    }

    pub(crate) fn resume_session(&self, token: &SessionToken, now: Instant) -> Option<IdentityKey> {
        let mut s = self.sessions.lock().ok()?;
        match s.get(token) {
            Some((id, exp)) if *exp > now => Some(*id),
            Some(_) => {
                s.remove(token);
                None
            }
            None => None,
        }
    }
}
