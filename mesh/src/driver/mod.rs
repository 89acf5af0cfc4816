//! The daemon side of the mesh: runs the sans-IO [`Mesh`] core on tokio with a real store,
//! real links and discovery.
//!
//! One task owns the timing: it drains the core's outputs, carries them out (link frames,
//! durable store operations, dials), and sleeps until the core's next timeout or a kick. Link
//! readers, store completions and the node feed the core under a mutex and kick the task.
//! Custody is acknowledged upstream only after the store's durable commit returned.

pub mod transport;

#[cfg(feature = "quic")]
pub mod federation;
#[cfg(feature = "iroh")]
pub mod iroh_transport;
#[cfg(feature = "mdns")]
pub mod mdns;
#[cfg(feature = "quic")]
pub mod quic_transport;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_proto::limits::{MAX_LINK_FRAME, TOPIC_LEN};
use ferry_proto::types::{BundleDigest, IdentityKey, MailboxAddr, MessageId, NodeId};
use ferry_store::{BundleRecord, CustodyEntry, CustodyOutcome, CustodyStore, StoreError};
use portable_atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, watch};

use crate::core::{
    BroadcastDropped, BundleMeta, Config, Kept, Mesh, Output, PeerSource, PeerView, RouteView,
    Sizes, Stats, Stored,
};
use crate::wire::{self, Bundle, Claim};
pub use transport::{Incoming, Link, Transport, TransportError};

/// Frames queued for one link at most; a link that cannot keep up is closed.
const LINK_QUEUE: usize = 4096;
/// How often each link is asked whether it heard its peer (for the core's liveness).
const HEARING_INTERVAL: Duration = Duration::from_millis(250);

/// Settings of the driver itself.
#[derive(Clone, Debug)]
pub struct Options {
    /// Hop limit of bundles made here.
    pub hop_limit: u8,
    /// Where the neighbours to redial after a restart are kept (one line per neighbour:
    /// node id, address); none: not kept.
    pub peers_file: Option<std::path::PathBuf>,
}
/// How long a dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Something the node must react to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshEvent {
    /// Messages arrived in local mailboxes: wake long polls and push.
    Delivered(Vec<(MailboxAddr, u64)>),
    /// A broadcast was kept for a topic.
    Broadcast {
        /// Topic.
        topic: [u8; TOPIC_LEN],
        /// Its seq.
        seq: u64,
    },
}

/// Errors of the mesh driver.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The node key file is unusable.
    #[error("mesh key {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A presence claim was refused (bad signature, stale, or not for this node).
    #[error("presence claim refused")]
    ClaimRefused,
}

/// Loads the node's Ed25519 secret key (32 bytes, mode 0600) from `path`, creating it on first
/// start. The node id is its public key.
pub fn load_or_create_key(path: &Path) -> Result<[u8; 32], MeshError> {
    let err = |reason: String| MeshError::Key {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(path) {
        Ok(b) => <[u8; 32]>::try_from(b.as_slice()).map_err(|_| {
            err(format!(
                "expected 32 bytes, found {} (restore it, or delete it to make a new node id)",
                b.len()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            let tmp = path.with_extension("tmp");
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(|e| err(e.to_string()))?;
            f.write_all(&key).map_err(|e| err(e.to_string()))?;
            f.sync_all().map_err(|e| err(e.to_string()))?;
            std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// A random seed for the core's jitter and hash keys.
pub fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    // Without randomness the seed is only less unpredictable, never unsafe to run with.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

struct LinkSlot {
    id: u64,
    link: Arc<dyn Link>,
    tx: mpsc::Sender<Vec<u8>>,
    dialer: NodeId,
    since: Instant,
}

/// Two links to one peer set up within this window are a simultaneous dial (both ends keep
/// the one dialled by the smaller node id); a link arriving later replaces the old one, whose
/// far end is gone (the peer restarted, or its side timed out first). Short: a restarted
/// peer redials within about a second, and its new link must not be taken for a duplicate.
const DIAL_RACE_WINDOW: Duration = Duration::from_millis(500);

struct Inner {
    core: Mutex<Mesh>,
    kick: Notify,
    start: Instant,
    store: Arc<dyn CustodyStore>,
    transport: Arc<dyn Transport>,
    links: Mutex<HashMap<NodeId, LinkSlot>>,
    next_link: AtomicU64,
    events: mpsc::UnboundedSender<MeshEvent>,
    stop: watch::Sender<bool>,
    hop_limit: u8,
    peers_file: Option<std::path::PathBuf>,
    /// Received bundles being stored, in the order they arrived (see [`stored_loop`]).
    stored: mpsc::UnboundedSender<StoredJob>,
    /// Bundles to read and send, in the order the core sent them (see [`send_loop`]).
    sends: mpsc::UnboundedSender<(NodeId, BundleDigest)>,
    /// Snapshots of the neighbours handed out for writing, and a lock held while one is
    /// written (writes run on blocking threads: one at a time, and never an older one after
    /// a newer).
    peers_written: AtomicU64,
    peers_writing: std::sync::Mutex<()>,
    mdns_garbage: AtomicU64,
    /// The caller's span at start (the node's, with its id): every task logs inside it.
    span: tracing::Span,
}

/// A received bundle whose storing was asked for; its outcome goes to the core.
struct StoredJob {
    put: ferry_store::StoreFuture<CustodyOutcome>,
    from: NodeId,
    meta: BundleMeta,
    mailbox: MailboxAddr,
}

/// A running mesh. Cheap to clone.
#[derive(Clone)]
pub struct MeshHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MeshHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshHandle")
            .field("node", &self.node_id())
            .finish()
    }
}

/// Converts a store custody entry to the core's metadata (deadline on the core's clock).
fn meta_of(e: &CustodyEntry, now_core: u64, now_wall: u64) -> BundleMeta {
    BundleMeta {
        digest: e.digest,
        recipient: e.recipient,
        deadline_ms: now_core.saturating_add(e.expires_at_ms.saturating_sub(now_wall)),
        size: e.size,
        from: e.from.map(NodeId::from_array),
        hop_count: e.hop_count,
        hop_limit: e.hop_limit,
        order: crate::core::order_of(&e.message_id),
    }
}

/// Encodes a claim for the store.
fn encode_claim(c: &Claim) -> Vec<u8> {
    use prost::Message;
    ferry_proto::mesh::v1::Presence::from(c).encode_to_vec()
}

fn decode_claim(b: &[u8]) -> Option<Claim> {
    let p = ferry_proto::decode_message::<ferry_proto::mesh::v1::Presence>(b).ok()?;
    Claim::try_from(p).ok()
}

impl MeshHandle {
    /// Starts the mesh on `transport`, restoring custody, presence and the route seqno from
    /// `store` (on a node, the redb [`ferry_store::Store`]). `cfg.me` is taken from the
    /// transport.
    pub async fn start(
        cfg: Config,
        store: Arc<dyn CustodyStore>,
        transport: Arc<dyn Transport>,
        hop_limit: u8,
    ) -> Result<(MeshHandle, mpsc::UnboundedReceiver<MeshEvent>), MeshError> {
        let opts = Options {
            hop_limit,
            peers_file: None,
        };
        Self::start_with(cfg, store, transport, opts).await
    }

    /// [`MeshHandle::start`] with the driver's [`Options`]: with a peers file, the neighbours
    /// it names are redialled at once (this node restarted; some of them may know it only as
    /// a static peer of theirs, and wait for it).
    pub async fn start_with(
        mut cfg: Config,
        store: Arc<dyn CustodyStore>,
        transport: Arc<dyn Transport>,
        opts: Options,
    ) -> Result<(MeshHandle, mpsc::UnboundedReceiver<MeshEvent>), MeshError> {
        cfg.me = transport.node_id();
        let seqno = store.meta("mesh_seqno")?.unwrap_or(0).saturating_add(1);
        cfg.initial_seqno = u32::try_from(seqno).unwrap_or(u32::MAX);
        store.put_meta("mesh_seqno", seqno).await?;
        let start = Instant::now();
        let mut mesh = Mesh::new(cfg, 0);
        let claims: Vec<Claim> = store
            .presence_all()?
            .iter()
            .filter_map(|b| decode_claim(b))
            .collect();
        mesh.handle_restored_claims(claims);
        let now_wall = wall_ms();
        let metas = store
            .custody_list()?
            .iter()
            .map(|e| meta_of(e, 0, now_wall))
            .collect();
        mesh.handle_custody_added(metas);
        if let Some(path) = &opts.peers_file {
            mesh.handle_restored_peers(0, read_peers(path));
        }
        let (events, rx) = mpsc::unbounded_channel();
        let (stored, stored_rx) = mpsc::unbounded_channel();
        let (sends, sends_rx) = mpsc::unbounded_channel();
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            core: Mutex::new(mesh),
            kick: Notify::new(),
            start,
            store,
            transport,
            links: Mutex::new(HashMap::new()),
            next_link: AtomicU64::new(1),
            events,
            stop,
            hop_limit: opts.hop_limit,
            peers_file: opts.peers_file,
            stored,
            sends,
            peers_written: AtomicU64::new(0),
            peers_writing: std::sync::Mutex::new(()),
            mdns_garbage: AtomicU64::new(0),
            span: tracing::Span::current(),
        });
        let h = MeshHandle { inner };
        h.spawn(run(h.clone(), h.inner.stop.subscribe()));
        h.spawn(stored_loop(h.clone(), stored_rx, h.inner.stop.subscribe()));
        h.spawn(send_loop(h.clone(), sends_rx, h.inner.stop.subscribe()));
        h.spawn(accept_loop(h.clone(), h.inner.stop.subscribe()));
        h.spawn(hearing_loop(h.clone(), h.inner.stop.subscribe()));
        Ok((h, rx))
    }

    /// Spawns a task inside the mesh's span.
    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        tokio::spawn(tracing::Instrument::instrument(
            fut,
            self.inner.span.clone(),
        ));
    }

    fn now(&self) -> u64 {
        u64::try_from(self.inner.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The core's clock: milliseconds since the mesh started (times in [`Kept`] use it).
    pub fn clock_ms(&self) -> u64 {
        self.now()
    }

    fn core(&self) -> MutexGuard<'_, Mesh> {
        match self.inner.core.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Runs `f` on the core, then wakes the driver to carry out the outputs.
    fn with_core<R>(&self, f: impl FnOnce(&mut Mesh, u64) -> R) -> R {
        let now = self.now();
        let r = f(&mut self.core(), now);
        self.inner.kick.notify_one();
        r
    }

    /// This node.
    pub fn node_id(&self) -> NodeId {
        self.inner.transport.node_id()
    }

    /// Where the mesh endpoint listens.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner.transport.local_addrs()
    }

    /// Whether mail for `user` must go through the mesh (see [`Mesh::is_remote`]).
    pub fn is_remote(&self, user: &IdentityKey) -> bool {
        self.core().is_remote(user)
    }

    /// Puts a local client's message for a remote recipient into custody (durably) and lets
    /// the core route it.
    pub async fn enqueue_remote(&self, rec: BundleRecord) -> Result<CustodyOutcome, StoreError> {
        let entry = rec.summary();
        let outcome = self.inner.store.custody_put(rec, false, wall_ms()).await?;
        if outcome == CustodyOutcome::Stored {
            let now_wall = wall_ms();
            self.with_core(|m, now| m.handle_custody_added(vec![meta_of(&entry, now, now_wall)]));
        }
        Ok(outcome)
    }

    /// A local user's presence claim: taken by the core, stored durably, and whatever waited
    /// in custody for the user moved into their mailbox. Returns the messages delivered.
    pub async fn attach(&self, claim: Claim) -> Result<u64, MeshError> {
        let user = claim.user;
        if !self.with_core(|m, now| m.handle_local_claim(now, claim.clone())) {
            return Err(MeshError::ClaimRefused);
        }
        self.inner
            .store
            .put_presence(
                user,
                claim.timestamp_ms,
                encode_claim(&claim),
                claim.hybrid.clone(),
            )
            .await?;
        self.deliver_waiting(user).await
    }

    /// Moves what waits in custody for `user` into their mailbox here.
    pub async fn deliver_waiting(&self, user: IdentityKey) -> Result<u64, MeshError> {
        if !self.inner.store.custody_waiting(&user)? {
            return Ok(0);
        }
        let rep = self
            .inner
            .store
            .custody_deliver_recipient(user, wall_ms())
            .await?;
        let done: Vec<BundleDigest> = rep.delivered.iter().map(|d| d.digest).collect();
        let delivered: Vec<(MailboxAddr, u64)> = rep
            .delivered
            .iter()
            .filter_map(|d| d.seq.map(|s| (d.mailbox, s)))
            .collect();
        let n = delivered.len() as u64;
        self.with_core(|m, now| {
            m.handle_delivered(&done);
            m.handle_delivered(&rep.missing);
            m.handle_deliver_failed(now, &rep.refused);
        });
        if !delivered.is_empty() {
            let _ = self.inner.events.send(MeshEvent::Delivered(delivered));
        }
        Ok(n)
    }

    /// A user authenticated a connection here.
    pub fn user_connected(&self, user: IdentityKey) {
        self.with_core(|m, _| m.handle_user_connected(user));
    }

    /// A user's connection here closed.
    pub fn user_disconnected(&self, user: IdentityKey) {
        self.with_core(|m, _| m.handle_user_disconnected(user));
    }

    /// A peer was discovered (mDNS, configuration).
    pub fn discovered(&self, peer: NodeId, addrs: &[SocketAddr], source: PeerSource) {
        self.with_core(|m, now| m.handle_discovered(now, peer, addrs, source));
    }

    /// Redials every known peer now (the uplink came back, say).
    pub fn reconnect(&self) {
        self.with_core(|m, now| m.handle_reconnect(now));
    }

    /// Publishes a local broadcast; returns its seq in the topic here.
    pub fn publish(
        &self,
        topic: [u8; TOPIC_LEN],
        message_id: MessageId,
        hop_limit: u8,
        lifetime_ms: u64,
        payload: Vec<u8>,
    ) -> Result<u64, BroadcastDropped> {
        self.with_core(|m, now| {
            m.handle_local_broadcast(now, topic, message_id, hop_limit, lifetime_ms, payload)
        })
    }

    /// Kept broadcasts of a topic after `after_seq`.
    pub fn broadcasts(&self, topic: &[u8; TOPIC_LEN], after_seq: u64) -> Vec<Kept> {
        let now = self.now();
        self.core().broadcasts(topic, after_seq, now)
    }

    /// A user's home node and presence-claim time, if known.
    pub fn presence_of(&self, user: &IdentityKey) -> Option<(NodeId, u64)> {
        self.core().presence_of(user)
    }

    /// Bundles in custody that `peer` handed us.
    pub fn custody_from(&self, peer: &NodeId) -> usize {
        self.core().custody_from(peer)
    }

    /// The route table.
    pub fn routes(&self) -> Vec<RouteView> {
        self.core().routes()
    }

    /// The peer table.
    pub fn peers(&self) -> Vec<PeerView> {
        let now = self.now();
        self.core().peers(now)
    }

    /// Users known, with their home node and presence timestamp.
    pub fn presence(&self) -> Vec<(IdentityKey, NodeId, u64)> {
        self.core().presence()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.core().stats()
    }

    /// Table sizes.
    pub fn sizes(&self) -> Sizes {
        self.core().sizes()
    }

    /// mDNS records that did not parse.
    pub fn mdns_garbage(&self) -> u64 {
        self.inner.mdns_garbage.load(Ordering::Relaxed)
    }

    #[cfg(feature = "mdns")]
    pub(crate) fn count_mdns_garbage(&self) {
        self.inner.mdns_garbage.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops the driver, closes links and the endpoint.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let slots: Vec<Arc<dyn Link>> = self.links().drain().map(|(_, s)| s.link).collect();
        for l in slots {
            l.close("node shutting down");
        }
        self.inner.transport.close().await;
    }

    fn links(&self) -> MutexGuard<'_, HashMap<NodeId, LinkSlot>> {
        match self.inner.links.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn send_frame(&self, to: &NodeId, body: Vec<u8>) {
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        frame.extend_from_slice(&body);
        let overloaded = {
            let links = self.links();
            match links.get(to) {
                Some(slot) => match slot.tx.try_send(frame) {
                    Ok(()) => None,
                    Err(mpsc::error::TrySendError::Full(_)) => Some(slot.id),
                    Err(mpsc::error::TrySendError::Closed(_)) => None,
                },
                None => None,
            }
        };
        if let Some(id) = overloaded {
            tracing::warn!(peer = %to.short(), "link cannot keep up; closing it");
            self.link_lost(*to, id);
        }
    }

    /// A dial failed: the core backs off; a peer the operator configured (a static peer, a
    /// hub) is worth a warning with the reason, which `ferry peers` shows too.
    fn dial_failed(&self, peer: NodeId, reason: &str) {
        let configured = self.with_core(|m, now| {
            m.handle_dial_failed(now, peer, reason);
            m.peers(now).iter().any(|p| p.node == peer && p.configured)
        });
        if configured {
            tracing::warn!(peer = %peer.short(), reason, "cannot link to a configured peer; trying again later");
        } else {
            tracing::debug!(peer = %peer.short(), reason, "dial failed");
        }
    }

    fn link_lost(&self, peer: NodeId, id: u64) {
        let slot = {
            let mut links = self.links();
            match links.get(&peer) {
                Some(s) if s.id == id => links.remove(&peer),
                _ => None,
            }
        };
        if let Some(s) = slot {
            s.link.close("link lost");
            tracing::info!(peer = %peer.short(), "mesh link down");
            self.with_core(|m, now| m.handle_link_down(now, peer));
        }
    }

    async fn register(&self, link: Box<dyn Link>, dialer: NodeId) {
        let link: Arc<dyn Link> = Arc::from(link);
        let me = self.node_id();
        let peer = link.peer();
        if peer == me {
            link.close("that is me");
            return;
        }
        // A simultaneous dial: both sides keep the connection dialled by the smaller node id.
        let preferred = me.min(peer);
        let replaced = {
            let links = self.links();
            match links.get(&peer) {
                Some(old)
                    if old.since.elapsed() < DIAL_RACE_WINDOW
                        && (old.dialer == preferred || dialer != preferred) =>
                {
                    drop(links);
                    link.close("duplicate link");
                    return;
                }
                Some(old) => Some(old.id),
                None => None,
            }
        };
        if let Some(old) = replaced {
            self.link_lost(peer, old);
        }
        let writer = match link.open_uni().await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(peer = %peer.short(), error = %e, "opening the link stream failed");
                link.close("stream");
                return;
            }
        };
        let id = self.inner.next_link.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        {
            let mut links = self.links();
            if links.contains_key(&peer) {
                // Another link won the race while we opened the stream.
                link.close("duplicate link");
                return;
            }
            links.insert(
                peer,
                LinkSlot {
                    id,
                    link: Arc::clone(&link),
                    tx,
                    dialer,
                    since: Instant::now(),
                },
            );
        }
        let addr = link.remote_addr();
        if !self.with_core(|m, now| m.handle_link_up(now, peer, addr)) {
            self.link_lost(peer, id);
            return;
        }
        tracing::info!(peer = %peer.short(), ?addr, dialled = (dialer == me), "mesh link up");
        self.spawn(write_loop(self.clone(), peer, id, writer, rx));
        self.spawn(read_loop(self.clone(), peer, id, link));
    }

    fn dispatch(&self, out: Output) {
        let store = &self.inner.store;
        match out {
            Output::Send { to, msg } => self.send_frame(&to, wire::encode(msg)),
            Output::SendBundle { to, digest } => {
                // Read and queued by one task, in the order the core sends them (the order
                // they were sent in): tasks of their own would run in any order.
                let _ = self.inner.sends.send((to, digest));
            }
            Output::StoreBundle {
                from,
                bundle,
                meta,
                deliver_local,
            } => {
                let now_wall = wall_ms();
                let mailbox = MailboxAddr {
                    recipient: bundle.recipient,
                    channel: bundle.channel,
                    device: bundle.device,
                };
                let rec = BundleRecord {
                    mailbox,
                    message_id: bundle.message_id,
                    sender: bundle.sender,
                    received_at_ms: now_wall,
                    expires_at_ms: now_wall.saturating_add(bundle.lifetime_ms),
                    hop_count: bundle.hop_count,
                    hop_limit: bundle.hop_limit,
                    from: Some(*from.as_bytes()),
                    payload: bundle.payload,
                };
                // Submitted here, in the order the bundles arrived (the order sent), and their
                // outcomes taken in that order by one task (stored_loop): tasks of their own
                // would run in any order, and the core forwards a bundle once it is stored.
                let put = store.custody_put(rec, deliver_local, now_wall);
                let _ = self.inner.stored.send(StoredJob {
                    put,
                    from,
                    meta,
                    mailbox,
                });
            }
            Output::DeleteBundles(ds) => {
                let p = store.custody_delete(ds);
                self.spawn(async move {
                    if let Err(e) = p.await {
                        tracing::warn!(error = %e, "deleting forwarded bundles failed");
                    }
                });
            }
            Output::DeliverLocal(ds) => {
                let h = self.clone();
                let p = store.custody_deliver(ds.clone(), wall_ms());
                self.spawn(async move {
                    match p.await {
                        Ok(rep) => {
                            let done: Vec<BundleDigest> =
                                rep.delivered.iter().map(|d| d.digest).collect();
                            let delivered: Vec<(MailboxAddr, u64)> = rep
                                .delivered
                                .iter()
                                .filter_map(|d| d.seq.map(|s| (d.mailbox, s)))
                                .collect();
                            h.with_core(|m, now| {
                                m.handle_delivered(&done);
                                m.handle_delivered(&rep.missing);
                                m.handle_deliver_failed(now, &rep.refused);
                            });
                            if !delivered.is_empty() {
                                let _ = h.inner.events.send(MeshEvent::Delivered(delivered));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "delivering bundles failed; retrying later");
                            h.with_core(|m, now| m.handle_deliver_failed(now, &ds));
                        }
                    }
                });
            }
            Output::EvictUser(user) => {
                // Most claims are for users with no mail here: a read spares the write.
                if let Ok(false) = store.has_mail(&user) {
                    return;
                }
                let h = self.clone();
                let p = store.evict(user, wall_ms(), self.inner.hop_limit);
                self.spawn(async move {
                    match p.await {
                        Ok(entries) => {
                            let now_wall = wall_ms();
                            if !entries.is_empty() {
                                tracing::info!(user = %user.fingerprint().short(), moved = entries.len(), "mail follows its user");
                            }
                            h.with_core(|m, now| {
                                m.handle_custody_added(
                                    entries.iter().map(|e| meta_of(e, now, now_wall)).collect(),
                                )
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "moving a mailbox into custody failed")
                        }
                    }
                });
            }
            Output::StorePresence(c) => {
                let p =
                    store.put_presence(c.user, c.timestamp_ms, encode_claim(&c), c.hybrid.clone());
                self.spawn(async move {
                    if let Err(e) = p.await {
                        tracing::warn!(error = %e, "storing a presence claim failed");
                    }
                });
            }
            Output::PersistPeers(peers) => {
                if let Some(path) = self.inner.peers_file.clone() {
                    let snapshot = self.inner.peers_written.fetch_add(1, Ordering::AcqRel) + 1;
                    let h = self.clone();
                    self.spawn(async move {
                        let written = tokio::task::spawn_blocking(move || {
                            let _one_at_a_time = h
                                .inner
                                .peers_writing
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            // A newer snapshot is (or was) written by its own task.
                            if h.inner.peers_written.load(Ordering::Acquire) != snapshot {
                                return Ok(());
                            }
                            write_peers(&path, &peers)
                        })
                        .await;
                        if let Ok(Err(e)) = written {
                            tracing::warn!(error = %e, "keeping the neighbours for a restart failed");
                        }
                    });
                }
            }
            Output::PersistSeqno(s) => {
                let p = store.put_meta("mesh_seqno", u64::from(s));
                self.spawn(async move {
                    let _ = p.await;
                });
            }
            Output::Connect { peer, addrs } => {
                let h = self.clone();
                self.spawn(async move {
                    let me = h.node_id();
                    match tokio::time::timeout(DIAL_TIMEOUT, h.inner.transport.connect(peer, addrs))
                        .await
                    {
                        Ok(Ok(link)) => h.register(link, me).await,
                        Ok(Err(e)) => h.dial_failed(peer, &e.to_string()),
                        Err(_) => h.dial_failed(peer, "no answer (timed out)"),
                    }
                });
            }
            Output::Disconnect { peer, reason } => {
                tracing::info!(peer = %peer.short(), reason, "closing mesh link");
                let id = self.links().get(&peer).map(|s| s.id);
                if let Some(id) = id {
                    self.link_lost(peer, id);
                }
            }
            Output::Broadcasted { topic, seq } => {
                let _ = self.inner.events.send(MeshEvent::Broadcast { topic, seq });
            }
        }
    }
}

async fn run(h: MeshHandle, mut stop: watch::Receiver<bool>) {
    loop {
        let (outputs, next) = {
            let mut core = h.core();
            let mut v = Vec::new();
            while let Some(o) = core.poll_output() {
                v.push(o);
            }
            (v, core.poll_timeout())
        };
        for o in outputs {
            h.dispatch(o);
        }
        let wait = Duration::from_millis(next.saturating_sub(h.now()));
        tokio::select! {
            _ = h.inner.kick.notified() => {}
            _ = tokio::time::sleep(wait) => {
                let now = h.now();
                h.core().handle_timeout(now);
            }
            _ = stop.changed() => return,
        }
    }
}

/// Reads each bundle the core sends (from flash, on a blocking thread: it can be megabytes)
/// and queues it on its link, one after the other, so that a link carries one sender's
/// bundles in the order the core sent them, and the core's loop never waits for flash.
async fn send_loop(
    h: MeshHandle,
    mut sends: mpsc::UnboundedReceiver<(NodeId, BundleDigest)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let next = tokio::select! {
            n = sends.recv() => n,
            _ = stop.changed() => return,
        };
        let Some((to, digest)) = next else { return };
        let store = Arc::clone(&h.inner.store);
        let rec = match tokio::task::spawn_blocking(move || store.custody_get(&digest)).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading a bundle to send failed");
                continue;
            }
            Err(_) => return,
        };
        let rtt = h.links().get(&to).map(|s| s.link.rtt()).unwrap_or_default();
        let lifetime = rec
            .expires_at_ms
            .saturating_sub(wall_ms())
            .saturating_sub(u64::try_from(rtt.as_millis()).unwrap_or(0));
        let b = Bundle {
            message_id: rec.message_id,
            recipient: rec.mailbox.recipient,
            channel: rec.mailbox.channel,
            device: rec.mailbox.device,
            lifetime_ms: lifetime,
            hop_count: rec.hop_count,
            hop_limit: rec.hop_limit,
            sender: rec.sender,
            payload: rec.payload,
        };
        h.send_frame(&to, wire::encode(wire::LinkMsg::Bundle(b)));
    }
}

/// Tells the core how the storing of each received bundle went, in the order the bundles
/// arrived: it forwards them (or answers their sender) in that order, so one sender's
/// messages leave this node in the order they came.
async fn stored_loop(
    h: MeshHandle,
    mut jobs: mpsc::UnboundedReceiver<StoredJob>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let job = tokio::select! {
            j = jobs.recv() => j,
            _ = stop.changed() => return,
        };
        let Some(job) = job else { return };
        let stored = match job.put.await {
            Ok(CustodyOutcome::Stored) => Stored::Custody,
            Ok(CustodyOutcome::Delivered(seq)) => {
                let _ = h
                    .inner
                    .events
                    .send(MeshEvent::Delivered(vec![(job.mailbox, seq)]));
                Stored::Delivered
            }
            Ok(CustodyOutcome::Duplicate) => Stored::Duplicate,
            Ok(CustodyOutcome::Expired) => Stored::Expired,
            Ok(CustodyOutcome::Full) => Stored::Refused,
            Err(e) => {
                tracing::warn!(error = %e, "storing a received bundle failed");
                Stored::Refused
            }
        };
        h.with_core(|m, _| m.handle_stored(job.from, job.meta, stored));
    }
}

/// Tells the core which links heard their peer since the last look (a change in what the
/// transport counts as received), four times a second.
async fn hearing_loop(h: MeshHandle, mut stop: watch::Receiver<bool>) {
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut tick = tokio::time::interval(HEARING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let links: Vec<(NodeId, u64, Arc<dyn Link>)> = h
            .links()
            .iter()
            .map(|(p, s)| (*p, s.id, Arc::clone(&s.link)))
            .collect();
        let mut heard = Vec::new();
        let mut seen = HashMap::with_capacity(links.len());
        for (peer, id, link) in links {
            let now = link.heard();
            if last.get(&id) != Some(&now) {
                heard.push(peer);
            }
            seen.insert(id, now);
        }
        last = seen;
        if !heard.is_empty() {
            h.with_core(|m, now| {
                for p in heard {
                    m.handle_link_heard(now, p);
                }
            });
        }
    }
}

/// The neighbours kept for a restart (lines of `<node id> <address>`); what does not parse is
/// skipped.
fn read_peers(path: &Path) -> Vec<(NodeId, Vec<SocketAddr>)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let (id, addr) = l.split_once(' ')?;
            Some((id.parse().ok()?, vec![addr.trim().parse().ok()?]))
        })
        .collect()
}

/// Writes the neighbours kept for a restart, whole or not at all (written beside, synced,
/// renamed).
fn write_peers(path: &Path, peers: &[(NodeId, Vec<SocketAddr>)]) -> std::io::Result<()> {
    let mut text = String::new();
    for (id, addrs) in peers {
        if let Some(a) = addrs.first() {
            text.push_str(&format!("{} {a}\n", id.to_hex()));
        }
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

async fn accept_loop(h: MeshHandle, mut stop: watch::Receiver<bool>) {
    loop {
        let next = tokio::select! {
            n = h.inner.transport.accept() => n,
            _ = stop.changed() => return,
        };
        let Some(handshake) = next else { return };
        let h2 = h.clone();
        h.spawn(async move {
            match handshake.await {
                Ok(link) => {
                    let dialer = link.peer();
                    h2.register(link, dialer).await;
                }
                Err(e) => tracing::debug!(error = %e, "incoming mesh connection failed"),
            }
        });
    }
}

async fn write_loop(
    h: MeshHandle,
    peer: NodeId,
    id: u64,
    mut w: transport::Writer,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    while let Some(frame) = rx.recv().await {
        if w.write_all(&frame).await.is_err() {
            break;
        }
    }
    h.link_lost(peer, id);
}

async fn read_loop(h: MeshHandle, peer: NodeId, id: u64, link: Arc<dyn Link>) {
    let mut r = match link.accept_uni().await {
        Ok(r) => r,
        Err(_) => {
            h.link_lost(peer, id);
            return;
        }
    };
    loop {
        let mut len = [0u8; 4];
        if r.read_exact(&mut len).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_LINK_FRAME {
            tracing::warn!(peer = %peer.short(), len, "oversized link frame; dropping the peer");
            h.with_core(|m, now| m.handle_malformed(now, peer));
            break;
        }
        // Read as it arrives: a declared length allocates nothing ahead.
        let mut buf = Vec::with_capacity(len.min(64 * 1024));
        if (&mut r)
            .take(len as u64)
            .read_to_end(&mut buf)
            .await
            .is_err()
            || buf.len() != len
        {
            break;
        }
        match wire::decode(&buf) {
            Ok(msg) => h.with_core(|m, now| m.handle_message(now, peer, msg)),
            Err(e) => {
                tracing::warn!(peer = %peer.short(), error = %e, "malformed link message; dropping the peer");
                h.with_core(|m, now| m.handle_malformed(now, peer));
                break;
            }
        }
    }
    h.link_lost(peer, id);
}
