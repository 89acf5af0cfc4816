//! The mesh as a sans-IO state machine.
//!
//! Inputs are events with the current time (`handle_*`); outputs are queued for the driver
//! (`poll_output`); `poll_timeout` says when to call [`Mesh::handle_timeout`] next. The core never
//! touches sockets, the clock, the disk or a runtime: the daemon's driver and the simulator feed
//! it the same way, so every behaviour the simulator shows is the daemon's.
//!
//! Durability is the driver's: the core asks for a bundle to be stored
//! ([`Output::StoreBundle`]) and acknowledges custody upstream only when the driver reports it
//! durable ([`Mesh::handle_stored`]); it asks for a bundle to be deleted only after the
//! downstream neighbour acknowledged custody.

mod broadcast;
mod custody;
mod peers;
mod presence;
mod routes;

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::det::{Keyed, Map, Set};
use ferry_proto::limits::{
    DEFAULT_BROADCAST_HOPS, MAX_MESSAGE_LEN, MESH_PROTOCOL_VERSION, TOPIC_LEN,
};
use ferry_proto::types::{BundleDigest, IdentityKey, MessageId, NodeId};

pub use broadcast::{Dropped as BroadcastDropped, Kept};
pub use custody::{BundleMeta, order_of};
pub use peers::{PeerSource, PeerView};
pub use presence::verify as verify_claim;
pub use routes::RouteView;

use crate::wire::{
    AckOutcome, BroadcastMsg, Bundle, Claim, Hello, LinkMsg, MAX_DIGESTS, MAX_PEERS_PER_EXCHANGE,
    MAX_PRESENCE_PER_BATCH, MAX_PRESENCE_STAMPS, MAX_ROUTES_PER_UPDATE, PeerRecord,
};
use custody::{Custody, State};
use peers::PeerTable;
use presence::PresenceTable;
use routes::Routes;

/// Failed dials after which a peer known only by exchange is no longer dialled.
const MAX_EXCHANGED_DIALS: u32 = 2;

/// The role of a federation hub (in [`Config::role`] and Hello).
pub const ROLE_HUB: &str = "hub";

/// Tunables of the core. Times are milliseconds on the core's clock.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node.
    pub me: NodeId,
    /// Our route seqno to start from (persisted by the driver across restarts).
    pub initial_seqno: u32,
    /// "edge" or "hub".
    pub role: String,
    /// qpq client port announced in Hello.
    pub client_port: u16,
    /// SHA-256 of the client certificate announced in Hello.
    pub client_cert_fingerprint: Vec<u8>,
    /// Full route dumps to every neighbour this often.
    pub route_update_interval_ms: u64,
    /// A neighbour's route not refreshed for this long is dropped.
    pub route_hold_ms: u64,
    /// Housekeeping tick.
    pub tick_ms: u64,
    /// Destinations in the route table at most.
    pub max_nodes: usize,
    /// Users in the presence table at most.
    pub max_presence: usize,
    /// Peers in the peer table at most.
    pub max_peers: usize,
    /// Peers one neighbour may introduce by exchange at most.
    pub max_peers_per_source: usize,
    /// Bundles offered or sent to one neighbour and not yet acknowledged, at most.
    pub link_window: usize,
    /// Bundles in custody at most (beyond: Refused).
    pub max_custody: usize,
    /// Bundles in custody from one neighbour at most (beyond: Refused).
    pub max_custody_per_peer: usize,
    /// After a Refused ack, wait this long before offering the bundle again.
    pub retry_refused_ms: u64,
    /// A bundle sent and not acknowledged within this is offered again.
    pub ack_timeout_ms: u64,
    /// Wait this long after learning an exchanged peer before dialling it (only if no route).
    pub dial_exchanged_after_ms: u64,
    /// Longest backoff between dials of one peer.
    pub max_dial_backoff_ms: u64,
    /// A peer that sent garbage is not dialled or accepted for this long.
    pub penalty_ms: u64,
    /// Peer exchange to each neighbour this often.
    pub peer_exchange_interval_ms: u64,
    /// Broadcast topics kept at most.
    pub max_topics: usize,
    /// Broadcast messages kept per topic.
    pub keep_per_topic: usize,
    /// Broadcasts accepted per topic per second (burst four times that).
    pub broadcast_rate: u32,
    /// Largest bundle payload accepted.
    pub max_bundle_bytes: u32,
    /// A link that has heard nothing from its peer for this long is suspect: it costs more,
    /// so routes take a redundant path where there is one, and what waited for it is routed
    /// again (see [`Mesh::handle_link_heard`]).
    pub suspect_after_ms: u64,
    /// ... and after this long it is dead: closed, and its peer redialled.
    pub dead_after_ms: u64,
    /// A suspect link is trusted again once it has heard its peer without a gap this long
    /// (a lossy radio link does not flap routes).
    pub recover_after_ms: u64,
    /// Neighbours remembered across restarts (redialled at start) at most.
    pub max_remembered: usize,
    /// Seed of timer jitter and of the keys of every hash table (peers choose the keys, so
    /// the hash must be keyed): random in a daemon, fixed in the simulator for replay.
    pub seed: u64,
}

impl Config {
    /// Defaults for a node.
    pub fn new(me: NodeId) -> Self {
        Self {
            me,
            initial_seqno: 1,
            role: "edge".into(),
            client_port: 0,
            client_cert_fingerprint: Vec::new(),
            route_update_interval_ms: 10_000,
            route_hold_ms: 35_000,
            tick_ms: 250,
            max_nodes: 4096,
            max_presence: 100_000,
            max_peers: 256,
            max_peers_per_source: 32,
            link_window: 512,
            max_custody: 200_000,
            max_custody_per_peer: 50_000,
            retry_refused_ms: 5_000,
            ack_timeout_ms: 60_000,
            dial_exchanged_after_ms: 5_000,
            max_dial_backoff_ms: 60_000,
            penalty_ms: 60_000,
            peer_exchange_interval_ms: 60_000,
            max_topics: 256,
            keep_per_topic: 32,
            broadcast_rate: 10,
            max_bundle_bytes: u32::try_from(MAX_MESSAGE_LEN).unwrap_or(u32::MAX),
            suspect_after_ms: 2_500,
            dead_after_ms: 6_000,
            recover_after_ms: 2_000,
            max_remembered: 64,
            seed: 0x5eed,
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a message on the link to `to`.
    Send {
        /// Neighbour.
        to: NodeId,
        /// Message.
        msg: LinkMsg,
    },
    /// Load the bundle from custody and send it on the link to `to`.
    SendBundle {
        /// Neighbour.
        to: NodeId,
        /// Bundle.
        digest: BundleDigest,
    },
    /// Store a received bundle durably, then call [`Mesh::handle_stored`] with `meta`. With
    /// `deliver_local`, store it straight into the recipient's local mailbox.
    StoreBundle {
        /// Who sent it.
        from: NodeId,
        /// The bundle, hop count already incremented.
        bundle: Bundle,
        /// What to hand back to [`Mesh::handle_stored`] (deadline on the core's clock).
        meta: BundleMeta,
        /// The recipient is at home here.
        deliver_local: bool,
    },
    /// Delete bundles from custody (the next hop has them, or they expired).
    DeleteBundles(Vec<BundleDigest>),
    /// Move bundles from custody into local mailboxes, then call
    /// [`Mesh::handle_delivered`] (or [`Mesh::handle_deliver_failed`]).
    DeliverLocal(Vec<BundleDigest>),
    /// The user's home moved away: turn their local mailbox into custody bundles and give
    /// them back with [`Mesh::handle_custody_added`].
    EvictUser(IdentityKey),
    /// Persist a presence claim (and the user's hybrid key).
    StorePresence(Claim),
    /// Persist our route seqno.
    PersistSeqno(u32),
    /// Persist the neighbours to redial after a restart (give them back with
    /// [`Mesh::handle_restored_peers`]): every one linked lately, with its address.
    PersistPeers(Vec<(NodeId, Vec<SocketAddr>)>),
    /// Dial a peer.
    Connect {
        /// Peer.
        peer: NodeId,
        /// Its addresses.
        addrs: Vec<SocketAddr>,
    },
    /// Close the link to a peer.
    Disconnect {
        /// Peer.
        peer: NodeId,
        /// Why.
        reason: &'static str,
    },
    /// A broadcast was kept for a topic: wake local subscribers.
    Broadcasted {
        /// Topic.
        topic: [u8; TOPIC_LEN],
        /// Its seq in the topic.
        seq: u64,
    },
}

/// Result of storing a received bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// In custody, to be forwarded.
    Custody,
    /// Delivered into a local mailbox.
    Delivered,
    /// Already stored or delivered before.
    Duplicate,
    /// No room.
    Refused,
    /// Expired on arrival.
    Expired,
}

/// How full the core's bounded tables are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Destinations in the route table.
    pub routes: usize,
    /// Users in the presence table.
    pub presence: usize,
    /// Peers in the peer table.
    pub peers: usize,
    /// Links up.
    pub links: usize,
    /// Bundles in custody.
    pub custody: usize,
    /// Payload bytes in custody.
    pub custody_bytes: u64,
}

/// Counters for metrics and the simulator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Links that came up.
    pub links_up: u64,
    /// Bundles sent to neighbours.
    pub bundles_sent: u64,
    /// Bundles received from neighbours.
    pub bundles_received: u64,
    /// Bundles moved into local mailboxes.
    pub delivered_local: u64,
    /// Custody acks received for our bundles.
    pub custody_acks: u64,
    /// Bundles dropped because they expired.
    pub expired: u64,
    /// Bundles dropped at their hop limit.
    pub hop_limit_drops: u64,
    /// Bundles refused (quota or per-peer cap).
    pub refused: u64,
    /// Of those, refused because the sending neighbour had its per-peer share in custody.
    pub refused_peer_quota: u64,
    /// Malformed messages from peers (each drops the link).
    pub malformed: u64,
    /// Peer-table additions refused (full, or a neighbour over its share).
    pub peers_refused: u64,
    /// Presence claims with a bad signature.
    pub presence_bad_signature: u64,
    /// Presence claims older than what we had.
    pub presence_stale: u64,
    /// Route updates received.
    pub route_updates: u64,
    /// Broadcasts kept.
    pub broadcasts: u64,
    /// Broadcasts dropped by a topic's rate limit.
    pub broadcasts_rate_limited: u64,
    /// Messages of any kind sent.
    pub messages_sent: u64,
}

#[derive(Debug)]
struct Link {
    hello: Option<Hello>,
    last_exchange_ms: u64,
    acks: Vec<(BundleDigest, AckOutcome)>,
    presence_out: Vec<Claim>,
    /// What the link hears of its peer, once the driver reports it.
    heard: Option<Heard>,
}

/// A link's liveness: when it last heard its peer (any packet: the driver counts them, so a
/// large bundle in transit on the same stream never hides it), since when without a gap,
/// and whether it is suspect.
#[derive(Clone, Copy, Debug)]
struct Heard {
    last_ms: u64,
    since_ms: u64,
    suspect: bool,
}

/// A silence longer than this between two reports starts a new streak of hearing (links
/// keep alive every second; the driver reports four times a second).
const HEARING_GAP_MS: u64 = 1_500;

/// SplitMix64: small, seedable, good enough for jitter (never for keys).
#[derive(Debug)]
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `base` ± 10%.
    fn around(&mut self, base: u64) -> u64 {
        let span = base / 5;
        if span == 0 {
            return base;
        }
        base - base / 10 + self.next() % span
    }
}

/// The mesh state machine of one node.
#[derive(Debug)]
pub struct Mesh {
    cfg: Config,
    keyed: Keyed,
    jitter: Jitter,
    links: Map<NodeId, Link>,
    routes: Routes,
    presence: PresenceTable,
    custody: Custody,
    /// Bundles received and being stored: digest -> sender.
    storing: Map<BundleDigest, NodeId>,
    /// Bundles being stored, per neighbour (they count against its quota).
    storing_from: Map<NodeId, usize>,
    peers: PeerTable,
    broadcasts: broadcast::Broadcasts,
    /// Users with an authenticated connection here (count of connections).
    connected: Map<IdentityKey, u32>,
    /// Recipients whose pending bundles need routing.
    dirty: Set<IdentityKey>,
    reroute_all: bool,
    /// Route destinations whose change must be advertised.
    triggered: Set<NodeId>,
    /// Seqno requests relayed recently: (node, seqno) -> time.
    relayed_requests: Map<(NodeId, u32), u64>,
    /// Neighbours to redial after a restart, with their addresses, newest last.
    remembered: Vec<(NodeId, Vec<SocketAddr>)>,
    outputs: VecDeque<Output>,
    next_tick_ms: u64,
    next_update_ms: u64,
    stats: Stats,
}

impl Mesh {
    /// A node's core at time `now_ms`.
    pub fn new(cfg: Config, now_ms: u64) -> Self {
        let mut jitter = Jitter(cfg.seed ^ u64::from_le_bytes(first8(cfg.me.as_bytes())));
        let keyed = Keyed::new(cfg.seed);
        let first_update = now_ms + jitter.around(cfg.route_update_interval_ms);
        Self {
            routes: Routes::new(
                cfg.me,
                cfg.role == ROLE_HUB,
                cfg.initial_seqno,
                cfg.max_nodes,
                keyed,
            ),
            presence: PresenceTable::new(cfg.max_presence, keyed),
            peers: PeerTable::new(cfg.me, cfg.max_peers, cfg.max_peers_per_source, keyed),
            broadcasts: broadcast::Broadcasts::new(
                cfg.max_topics,
                cfg.keep_per_topic,
                cfg.broadcast_rate,
                cfg.broadcast_rate.saturating_mul(4),
                keyed,
            ),
            links: keyed.map(),
            custody: Custody::new(keyed),
            storing: keyed.map(),
            storing_from: keyed.map(),
            connected: keyed.map(),
            dirty: keyed.set(),
            reroute_all: false,
            triggered: keyed.set(),
            relayed_requests: keyed.map(),
            remembered: Vec::new(),
            outputs: VecDeque::new(),
            next_tick_ms: now_ms + cfg.tick_ms,
            next_update_ms: first_update,
            stats: Stats::default(),
            jitter,
            keyed,
            cfg,
        }
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.cfg.me
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Table sizes.
    pub fn sizes(&self) -> Sizes {
        Sizes {
            routes: self.routes.len(),
            presence: self.presence.len(),
            peers: self.peers.len(),
            links: self.links.len(),
            custody: self.custody.len(),
            custody_bytes: self.custody.bytes(),
        }
    }

    /// The next output for the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.outputs.is_empty() {
            self.flush();
        }
        self.outputs.pop_front()
    }

    /// When [`Mesh::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> u64 {
        self.next_tick_ms.min(self.next_update_ms)
    }

    // ----- queries (for the node and the CLI) ------------------------------------------------

    /// Whether a recipient's mail belongs in a local mailbox here: their newest presence names
    /// this node, or nobody knows a home for them and they are connected here. The newest
    /// claim is authoritative: a connection left behind when the user moved (a phone that
    /// walked out of range keeps its QUIC connection until the idle timeout) holds no mail.
    pub fn is_local(&self, user: &IdentityKey) -> bool {
        match self.presence.home(user) {
            Some(home) => home == self.cfg.me,
            None => self.connected.contains_key(user),
        }
    }

    /// Whether mail for `user` must travel: their newest presence names another node. A user
    /// nobody has heard of is not remote: their mail waits in a mailbox here and follows them
    /// once they attach somewhere.
    pub fn is_remote(&self, user: &IdentityKey) -> bool {
        self.presence.home(user).is_some_and(|h| h != self.cfg.me)
    }

    /// Where a user's mail goes: their home node, if known.
    pub fn home(&self, user: &IdentityKey) -> Option<NodeId> {
        self.presence.home(user)
    }

    /// A user's home node and the time of their presence claim, if known.
    pub fn presence_of(&self, user: &IdentityKey) -> Option<(NodeId, u64)> {
        let home = self.presence.home(user)?;
        Some((home, self.presence.timestamp(user).unwrap_or(0)))
    }

    /// Bundles in custody here that `peer` handed us (what its per-peer quota counts).
    pub fn custody_from(&self, peer: &NodeId) -> usize {
        self.custody.count_from(peer)
    }

    /// The next hop towards a node.
    pub fn next_hop(&self, node: &NodeId) -> Option<NodeId> {
        self.routes.next_hop(node)
    }

    /// A user's hybrid key, from their presence.
    pub fn hybrid_key(&self, user: &IdentityKey) -> Option<&ferry_proto::types::HybridPublicKey> {
        self.presence.hybrid_key(user)
    }

    /// Neighbours with a link up.
    pub fn neighbours(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.links.keys().copied().collect();
        v.sort();
        v
    }

    /// The route table.
    pub fn routes(&self) -> Vec<RouteView> {
        self.routes.view()
    }

    /// The peer table, with what each link hears.
    pub fn peers(&self, now_ms: u64) -> Vec<PeerView> {
        let mut v = self.peers.view(now_ms);
        for p in &mut v {
            if let Some(h) = self.links.get(&p.node).and_then(|l| l.heard) {
                p.suspect = h.suspect;
                p.heard_ms_ago = Some(now_ms.saturating_sub(h.last_ms));
            }
        }
        v
    }

    /// Users known, with their home node.
    pub fn presence(&self) -> Vec<(IdentityKey, NodeId, u64)> {
        let mut v: Vec<_> = self
            .presence
            .all()
            .map(|c| (c.user, c.node, c.timestamp_ms))
            .collect();
        v.sort();
        v
    }

    /// Bundles and bytes in custody.
    pub fn custody_size(&self) -> (usize, u64) {
        (self.custody.len(), self.custody.bytes())
    }

    /// Kept broadcasts of a topic after `after_seq`.
    pub fn broadcasts(&self, topic: &[u8; TOPIC_LEN], after_seq: u64, now_ms: u64) -> Vec<Kept> {
        self.broadcasts.recent(topic, after_seq, now_ms)
    }

    /// Our route seqno.
    pub fn seqno(&self) -> u32 {
        self.routes.my_seqno()
    }

    // ----- inputs ----------------------------------------------------------------------------

    /// Housekeeping; call at [`Mesh::poll_timeout`].
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if now_ms >= self.next_update_ms {
            self.next_update_ms = now_ms + self.jitter.around(self.cfg.route_update_interval_ms);
            let entries = self.routes.advertise(None);
            self.send_routes_to_all(&entries, None);
        }
        if now_ms >= self.next_tick_ms {
            self.next_tick_ms = now_ms + self.cfg.tick_ms;
            self.tick(now_ms);
        }
    }

    fn tick(&mut self, now_ms: u64) {
        let ch = self.routes.expire(now_ms, self.cfg.route_hold_ms);
        self.apply_route_changes(now_ms, ch);
        self.check_liveness(now_ms);
        self.relayed_requests
            .retain(|_, t| now_ms.saturating_sub(*t) < 5_000);
        // Expired bundles, acks that never came, refused ones whose wait is over.
        let mut expired = Vec::new();
        let mut retry = Vec::new();
        for (d, e) in self.custody.iter() {
            if e.meta.deadline_ms <= now_ms && e.state != State::Delivering {
                expired.push(*d);
                continue;
            }
            match e.state {
                State::Sending(_, since)
                    if now_ms.saturating_sub(since) > self.cfg.ack_timeout_ms =>
                {
                    retry.push(*d)
                }
                State::Retry(until) if now_ms >= until => retry.push(*d),
                _ => {}
            }
        }
        for d in retry {
            if let Some(r) = self.custody.get(&d).map(|e| e.meta.recipient) {
                self.custody.set_state(&d, State::Pending);
                self.dirty.insert(r);
            }
        }
        if !expired.is_empty() {
            expired.sort();
            for d in &expired {
                self.custody.remove(d);
            }
            self.stats.expired += expired.len() as u64;
            self.outputs.push_back(Output::DeleteBundles(expired));
        }
        // Peer exchange and dials.
        let exchange_due: Vec<NodeId> = self
            .links
            .iter()
            .filter(|(_, l)| {
                l.hello.is_some()
                    && now_ms.saturating_sub(l.last_exchange_ms)
                        >= self.cfg.peer_exchange_interval_ms
            })
            .map(|(k, _)| *k)
            .collect();
        for p in exchange_due {
            self.send_peer_exchange(&p, now_ms);
        }
        self.peers.expire(now_ms, 30 * 60_000);
        self.dial(now_ms);
        self.route_pending();
    }

    /// A peer was discovered (mDNS, configuration, or peer exchange).
    pub fn handle_discovered(
        &mut self,
        now_ms: u64,
        peer: NodeId,
        addrs: &[SocketAddr],
        source: PeerSource,
    ) {
        if self.peers.add(peer, addrs, source, now_ms).is_err() {
            self.stats.peers_refused += 1;
        }
        self.dial(now_ms);
    }

    /// Dial every known peer without waiting for backoffs (the uplink or a link came back).
    /// A dial still in progress is abandoned and started afresh: it began while the uplink
    /// was down, and its handshake is retransmitted only after seconds of backoff. (Should it
    /// still complete, the driver keeps one of the two links.)
    pub fn handle_reconnect(&mut self, now_ms: u64) {
        for (_, p) in self.peers.iter_mut() {
            if !p.linked && p.penalty_until_ms <= now_ms {
                p.next_dial_ms = now_ms;
                p.failures = 0;
                p.dialing_since = None;
            }
        }
        self.dial(now_ms);
    }

    /// A dial failed, and why (shown by `ferry peers`).
    pub fn handle_dial_failed(&mut self, now_ms: u64, peer: NodeId, reason: &str) {
        let max = self.cfg.max_dial_backoff_ms;
        let base = {
            let Some(p) = self.peers.get_mut(&peer) else {
                return;
            };
            p.dialing_since = None;
            p.last_error = Some(reason.chars().take(200).collect());
            p.failures = p.failures.saturating_add(1);
            1_000u64.saturating_mul(1 << p.failures.min(16)).min(max)
        };
        let wait = self.jitter.around(base);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.next_dial_ms = now_ms + wait;
        }
    }

    /// A link to `peer` is up (dialled or accepted; the transport authenticated `peer`).
    /// Returns false when the peer is penalised and the link must be closed.
    pub fn handle_link_up(&mut self, now_ms: u64, peer: NodeId, addr: Option<SocketAddr>) -> bool {
        if peer == self.cfg.me {
            return false;
        }
        if let Some(p) = self.peers.get(&peer)
            && p.penalty_until_ms > now_ms
        {
            return false;
        }
        let addrs: Vec<SocketAddr> = addr.into_iter().collect();
        if self
            .peers
            .add(peer, &addrs, PeerSource::Inbound, now_ms)
            .is_err()
        {
            self.stats.peers_refused += 1;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.linked = true;
            p.dialing_since = None;
            p.failures = 0;
            p.last_error = None;
            p.last_seen_ms = now_ms;
        }
        self.stats.links_up += 1;
        self.links.insert(
            peer,
            Link {
                hello: None,
                last_exchange_ms: now_ms,
                acks: Vec::new(),
                presence_out: Vec::new(),
                heard: None,
            },
        );
        if let Some(a) = addr {
            self.remember(peer, a);
        }
        let hello = Hello {
            version: MESH_PROTOCOL_VERSION,
            node_id: self.cfg.me,
            client_port: self.cfg.client_port,
            client_cert_fingerprint: self.cfg.client_cert_fingerprint.clone(),
            max_bundle_bytes: self.cfg.max_bundle_bytes,
            role: self.cfg.role.clone(),
        };
        self.send(peer, LinkMsg::Hello(hello));
        true
    }

    /// The link to `peer` went down.
    pub fn handle_link_down(&mut self, now_ms: u64, peer: NodeId) {
        if self.links.remove(&peer).is_none() {
            return;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.linked = false;
            p.last_seen_ms = now_ms;
            p.next_dial_ms = now_ms + self.jitter.around(1_000);
        }
        for r in self.custody.release(&peer) {
            self.dirty.insert(r);
        }
        let ch = self.routes.neighbor_down(&peer);
        self.apply_route_changes(now_ms, ch);
    }

    /// The link to `peer` heard from it (the driver saw packets arrive since its last report;
    /// it reports a few times a second). From the first report on, the link's silence is
    /// watched: suspect after [`Config::suspect_after_ms`], closed after
    /// [`Config::dead_after_ms`]; a link never reported on (a transport that cannot tell)
    /// is left to its transport's idle timeout.
    pub fn handle_link_heard(&mut self, now_ms: u64, peer: NodeId) {
        let recover = self.cfg.recover_after_ms;
        let Some(l) = self.links.get_mut(&peer) else {
            return;
        };
        let h = l.heard.get_or_insert(Heard {
            last_ms: now_ms,
            since_ms: now_ms,
            suspect: false,
        });
        if now_ms.saturating_sub(h.last_ms) > HEARING_GAP_MS {
            h.since_ms = now_ms;
        }
        h.last_ms = now_ms;
        if h.suspect && now_ms.saturating_sub(h.since_ms) >= recover {
            h.suspect = false;
            let ch = self.routes.set_cost(peer, routes::LINK_COST);
            self.apply_route_changes(now_ms, ch);
            self.reroute_all = true;
        }
    }

    /// Neighbours remembered from before a restart (see [`Output::PersistPeers`]): dialled
    /// at once.
    pub fn handle_restored_peers(&mut self, now_ms: u64, peers: Vec<(NodeId, Vec<SocketAddr>)>) {
        for (peer, addrs) in peers {
            if self
                .peers
                .add(peer, &addrs, PeerSource::Restored, now_ms)
                .is_err()
            {
                self.stats.peers_refused += 1;
                continue;
            }
            if let Some(a) = addrs.first() {
                self.remember(peer, *a);
            }
        }
        self.dial(now_ms);
    }

    /// Keeps `peer` at `addr` among the neighbours to redial after a restart; persisted when
    /// that changes what is kept.
    fn remember(&mut self, peer: NodeId, addr: SocketAddr) {
        if let Some(i) = self.remembered.iter().position(|(p, _)| *p == peer) {
            let same = self
                .remembered
                .get(i)
                .is_some_and(|(_, a)| a.first() == Some(&addr));
            if same {
                return;
            }
            self.remembered.remove(i);
        }
        self.remembered.push((peer, vec![addr]));
        let excess = self
            .remembered
            .len()
            .saturating_sub(self.cfg.max_remembered);
        self.remembered.drain(..excess);
        self.outputs
            .push_back(Output::PersistPeers(self.remembered.clone()));
    }

    /// Marks silent links suspect (costly, and what waited for them routed again) and closes
    /// dead ones.
    fn check_liveness(&mut self, now_ms: u64) {
        let (suspect_after, dead_after) = (self.cfg.suspect_after_ms, self.cfg.dead_after_ms);
        let mut dead = Vec::new();
        let mut suspect = Vec::new();
        for (peer, l) in self.links.iter() {
            let Some(h) = l.heard else { continue };
            let silent = now_ms.saturating_sub(h.last_ms);
            if silent >= dead_after {
                dead.push(*peer);
            } else if silent >= suspect_after && !h.suspect {
                suspect.push(*peer);
            }
        }
        suspect.sort();
        dead.sort();
        for peer in suspect {
            if let Some(h) = self.links.get_mut(&peer).and_then(|l| l.heard.as_mut()) {
                h.suspect = true;
            }
            let ch = self.routes.set_cost(peer, routes::SUSPECT_COST);
            self.apply_route_changes(now_ms, ch);
            self.reroute_all = true;
        }
        for peer in dead {
            self.outputs.push_back(Output::Disconnect {
                peer,
                reason: "heard nothing from the peer",
            });
            self.handle_link_down(now_ms, peer);
        }
    }

    /// Bundles offered or sent on suspect links whose recipients' routes now go elsewhere
    /// are routed again (the suspect neighbour may have them already: the next hop's custody
    /// dedup answers Duplicate, and the recipient sees each message once).
    fn release_from_suspect_links(&mut self) {
        let suspect: Vec<NodeId> = self
            .links
            .iter()
            .filter(|(_, l)| l.heard.is_some_and(|h| h.suspect))
            .map(|(k, _)| *k)
            .collect();
        if suspect.is_empty() {
            return;
        }
        let mut moved = Vec::new();
        for (d, e) in self.custody.iter() {
            let to = match e.state {
                State::Offered(p) | State::Sending(p, _) => p,
                _ => continue,
            };
            if !suspect.contains(&to) {
                continue;
            }
            let next = self
                .presence
                .home(&e.meta.recipient)
                .and_then(|h| self.routes.next_hop(&h));
            if next != Some(to) {
                moved.push((*d, e.meta.recipient));
            }
        }
        moved.sort();
        for (d, r) in moved {
            self.custody.set_state(&d, State::Pending);
            self.dirty.insert(r);
        }
    }

    /// The peer sent something that does not decode: drop the link and keep away for a while.
    pub fn handle_malformed(&mut self, now_ms: u64, peer: NodeId) {
        self.stats.malformed += 1;
        let until = now_ms + self.cfg.penalty_ms;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.penalty_until_ms = until;
            p.next_dial_ms = until;
        }
        self.outputs.push_back(Output::Disconnect {
            peer,
            reason: "malformed message",
        });
        self.handle_link_down(now_ms, peer);
    }

    /// A message from a neighbour.
    pub fn handle_message(&mut self, now_ms: u64, from: NodeId, msg: LinkMsg) {
        let Some(l) = self.links.get(&from) else {
            return;
        };
        if l.heard.is_some() {
            self.handle_link_heard(now_ms, from);
        }
        let hello_seen = self.links.get(&from).is_some_and(|l| l.hello.is_some());
        match msg {
            LinkMsg::Hello(h) => self.on_hello(now_ms, from, h),
            // Nothing but Hello counts before Hello.
            _ if !hello_seen => self.handle_malformed(now_ms, from),
            LinkMsg::Routes(entries) => {
                self.stats.route_updates += 1;
                let ch = self.routes.update(now_ms, from, &entries);
                self.apply_route_changes(now_ms, ch);
            }
            LinkMsg::SeqnoRequest {
                node,
                seqno,
                hop_count,
            } => self.on_seqno_request(now_ms, from, node, seqno, hop_count),
            LinkMsg::Presence(claims) => {
                for c in claims {
                    self.accept_claim(c, Some(from), false);
                }
            }
            LinkMsg::PresenceSummary(stamps) => self.on_presence_summary(from, &stamps),
            LinkMsg::PresenceWant(users) => {
                let claims: Vec<Claim> = users
                    .iter()
                    .filter_map(|u| self.presence.get(u).cloned())
                    .collect();
                for chunk in claims.chunks(MAX_PRESENCE_PER_BATCH) {
                    self.send(from, LinkMsg::Presence(chunk.to_vec()));
                }
            }
            LinkMsg::Offer(digests) => self.on_offer(from, &digests),
            LinkMsg::Want(digests) => self.on_want(now_ms, from, &digests),
            LinkMsg::Bundle(b) => self.on_bundle(now_ms, from, b),
            LinkMsg::Ack(entries) => self.on_ack(now_ms, from, &entries),
            // Mesh addresses mean nothing across a hub link: a hub neither sends nor takes them.
            LinkMsg::Peers(_) if self.hub_link(&from) => {}
            LinkMsg::Peers(records) => {
                for r in records {
                    if self
                        .peers
                        .add(r.node, &r.addrs, PeerSource::Exchange(from), now_ms)
                        .is_err()
                    {
                        self.stats.peers_refused += 1;
                    }
                }
            }
            LinkMsg::Broadcast(b) => {
                let _ = self.on_broadcast(now_ms, Some(from), b);
            }
        }
    }

    /// A user authenticated a connection here.
    pub fn handle_user_connected(&mut self, user: IdentityKey) {
        *self.connected.entry(user).or_insert(0) += 1;
        self.dirty.insert(user);
    }

    /// A user's connection here closed.
    pub fn handle_user_disconnected(&mut self, user: IdentityKey) {
        let gone = match self.connected.get_mut(&user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => true,
            None => false,
        };
        if gone {
            self.connected.remove(&user);
            if let Some(home) = self.presence.home(&user)
                && home != self.cfg.me
            {
                self.outputs.push_back(Output::EvictUser(user));
            }
        }
    }

    /// A local user signed a presence claim (Attach). Returns whether it was taken.
    pub fn handle_local_claim(&mut self, now_ms: u64, claim: Claim) -> bool {
        if claim.node != self.cfg.me {
            return false;
        }
        let _ = now_ms;
        self.accept_claim(claim, None, false)
    }

    /// Claims restored from the store at start (already verified when stored).
    pub fn handle_restored_claims(&mut self, claims: Vec<Claim>) {
        for c in claims {
            let _ = self.presence.offer(c, true);
        }
        self.reroute_all = true;
    }

    /// Bundles put into custody by the driver (a local client's message for a remote user,
    /// a mailbox evicted after its user moved, or custody restored at start).
    pub fn handle_custody_added(&mut self, metas: Vec<BundleMeta>) {
        for m in metas {
            if self.custody.insert(m) {
                self.dirty.insert(m.recipient);
            }
        }
    }

    /// The driver stored (or refused) a bundle received from `from`.
    pub fn handle_stored(&mut self, from: NodeId, meta: BundleMeta, outcome: Stored) {
        if let Some(peer) = self.storing.remove(&meta.digest)
            && let Some(n) = self.storing_from.get_mut(&peer)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.storing_from.remove(&peer);
            }
        }
        let ack = match outcome {
            Stored::Custody => {
                if self.custody.insert(meta) {
                    self.dirty.insert(meta.recipient);
                }
                AckOutcome::Accepted
            }
            Stored::Delivered => {
                self.stats.delivered_local += 1;
                AckOutcome::Accepted
            }
            Stored::Duplicate => AckOutcome::Duplicate,
            Stored::Expired => AckOutcome::Expired,
            Stored::Refused => {
                self.stats.refused += 1;
                AckOutcome::Refused
            }
        };
        if let Some(l) = self.links.get_mut(&from) {
            l.acks.push((meta.digest, ack));
        }
    }

    /// Bundles moved into local mailboxes.
    pub fn handle_delivered(&mut self, digests: &[BundleDigest]) {
        for d in digests {
            if self.custody.remove(d).is_some() {
                self.stats.delivered_local += 1;
            }
        }
    }

    /// Moving bundles into mailboxes failed (a full disk, say): try again later.
    pub fn handle_deliver_failed(&mut self, now_ms: u64, digests: &[BundleDigest]) {
        for d in digests {
            self.custody
                .set_state(d, State::Retry(now_ms + self.cfg.retry_refused_ms));
        }
    }

    /// Publishes a broadcast from a local client; returns its seq, or None if it was a
    /// duplicate or over the topic's rate.
    pub fn handle_local_broadcast(
        &mut self,
        now_ms: u64,
        topic: [u8; TOPIC_LEN],
        message_id: MessageId,
        hop_limit: u8,
        lifetime_ms: u64,
        payload: Vec<u8>,
    ) -> Result<u64, BroadcastDropped> {
        let m = BroadcastMsg {
            topic,
            message_id,
            hop_count: 0,
            hop_limit: if hop_limit == 0 {
                DEFAULT_BROADCAST_HOPS
            } else {
                hop_limit
            },
            lifetime_ms,
            payload,
        };
        self.on_broadcast(now_ms, None, m)
    }

    // ----- message handlers ------------------------------------------------------------------

    fn on_hello(&mut self, now_ms: u64, from: NodeId, h: Hello) {
        if h.version != MESH_PROTOCOL_VERSION || h.node_id != from {
            self.handle_malformed(now_ms, from);
            return;
        }
        let first = match self.links.get_mut(&from) {
            Some(l) => {
                let first = l.hello.is_none();
                l.hello = Some(h);
                first
            }
            None => return,
        };
        if !first {
            return;
        }
        // Everything a new neighbour needs: our routes, a summary of presence, our peers.
        let entries = self.routes.advertise(None);
        self.send_routes(from, &entries);
        let stamps = self.presence.stamps();
        for chunk in stamps.chunks(MAX_PRESENCE_STAMPS) {
            self.send(from, LinkMsg::PresenceSummary(chunk.to_vec()));
        }
        self.send_peer_exchange(&from, now_ms);
        self.reroute_all = true;
    }

    fn on_seqno_request(&mut self, now_ms: u64, from: NodeId, node: NodeId, seqno: u32, hops: u8) {
        if node == self.cfg.me {
            if let Some(s) = self.routes.raise_seqno(seqno) {
                self.outputs.push_back(Output::PersistSeqno(s));
                self.triggered.insert(node);
            } else {
                // Already satisfied: the requester just has not heard our route yet.
                let entries = self.routes.advertise(Some(&[node]));
                self.send_routes(from, &entries);
            }
            return;
        }
        if self
            .routes
            .selected_seqno(&node)
            .is_some_and(|s| s >= seqno)
        {
            let entries = self.routes.advertise(Some(&[node]));
            self.send_routes(from, &entries);
            return;
        }
        if hops <= 1 || self.relayed_requests.contains_key(&(node, seqno)) {
            return;
        }
        self.relayed_requests.insert((node, seqno), now_ms);
        let req = LinkMsg::SeqnoRequest {
            node,
            seqno,
            hop_count: hops - 1,
        };
        match self.routes.next_hop(&node) {
            Some(nh) if nh != from && self.links.contains_key(&nh) => self.send(nh, req),
            _ => {
                let others: Vec<NodeId> =
                    self.links.keys().filter(|k| **k != from).copied().collect();
                for o in others {
                    self.send(o, req.clone());
                }
            }
        }
    }

    fn on_presence_summary(&mut self, from: NodeId, stamps: &[(IdentityKey, u64)]) {
        let mut want = Vec::new();
        let mut push = Vec::new();
        let mut theirs: Map<IdentityKey, u64> = self.keyed.map();
        theirs.extend(stamps.iter().copied());
        for (u, ts) in stamps {
            match self.presence.timestamp(u) {
                Some(mine) if mine >= *ts => {}
                _ => want.push(*u),
            }
        }
        for c in self.presence.all() {
            match theirs.get(&c.user) {
                Some(t) if *t >= c.timestamp_ms => {}
                _ => push.push(c.clone()),
            }
        }
        for chunk in want.chunks(MAX_PRESENCE_STAMPS) {
            self.send(from, LinkMsg::PresenceWant(chunk.to_vec()));
        }
        push.sort_by_key(|c| c.user);
        for chunk in push.chunks(MAX_PRESENCE_PER_BATCH) {
            self.send(from, LinkMsg::Presence(chunk.to_vec()));
        }
    }

    fn accept_claim(&mut self, c: Claim, from: Option<NodeId>, verified: bool) -> bool {
        let user = c.user;
        match self.presence.offer(c.clone(), verified) {
            Ok(prev) => {
                self.outputs.push_back(Output::StorePresence(c.clone()));
                let new_home = c.node;
                // Mail kept here for the user (their home, or nobody knew where they were)
                // follows them to their new home.
                if prev.is_none_or(|p| p == self.cfg.me) && new_home != self.cfg.me {
                    self.outputs.push_back(Output::EvictUser(user));
                }
                self.dirty.insert(user);
                let others: Vec<NodeId> = self
                    .links
                    .keys()
                    .filter(|k| Some(**k) != from)
                    .copied()
                    .collect();
                for o in others {
                    if let Some(l) = self.links.get_mut(&o) {
                        l.presence_out.push(c.clone());
                    }
                }
                true
            }
            Err(presence::Refusal::BadSignature) => {
                self.stats.presence_bad_signature += 1;
                false
            }
            Err(presence::Refusal::Stale) => {
                self.stats.presence_stale += 1;
                false
            }
            Err(presence::Refusal::Full) => false,
        }
    }

    fn on_offer(&mut self, from: NodeId, digests: &[BundleDigest]) {
        let mut want = Vec::new();
        for d in digests {
            if self.custody.contains(d) {
                if let Some(l) = self.links.get_mut(&from) {
                    l.acks.push((*d, AckOutcome::Duplicate));
                }
            } else if !self.storing.contains_key(d) {
                want.push(*d);
            }
        }
        if !want.is_empty() {
            self.send(from, LinkMsg::Want(want));
        }
    }

    fn on_want(&mut self, now_ms: u64, from: NodeId, digests: &[BundleDigest]) {
        for d in digests {
            let offered = self
                .custody
                .get(d)
                .is_some_and(|e| e.state == State::Offered(from));
            if offered {
                self.custody.set_state(d, State::Sending(from, now_ms));
                self.stats.bundles_sent += 1;
                self.stats.messages_sent += 1;
                self.outputs.push_back(Output::SendBundle {
                    to: from,
                    digest: *d,
                });
            }
        }
    }

    fn on_bundle(&mut self, now_ms: u64, from: NodeId, b: Bundle) {
        self.stats.bundles_received += 1;
        let d = b.digest();
        let meta = BundleMeta {
            digest: d,
            recipient: b.recipient,
            deadline_ms: now_ms.saturating_add(b.lifetime_ms),
            size: u32::try_from(b.payload.len()).unwrap_or(u32::MAX),
            from: Some(from),
            hop_count: b.hop_count.saturating_add(1),
            hop_limit: b.hop_limit,
            order: custody::order_of(&b.message_id),
        };
        let refuse = |s: &mut Self, outcome: Stored| s.handle_stored(from, meta, outcome);
        if self.custody.contains(&d) {
            return refuse(self, Stored::Duplicate);
        }
        if self.storing.contains_key(&d) {
            // Its first copy is being stored; that store's result answers.
            return;
        }
        if b.lifetime_ms == 0 || b.hop_count >= b.hop_limit {
            if b.hop_count >= b.hop_limit {
                self.stats.hop_limit_drops += 1;
            } else {
                self.stats.expired += 1;
            }
            return refuse(self, Stored::Expired);
        }
        if b.payload.len() > self.cfg.max_bundle_bytes as usize {
            return refuse(self, Stored::Refused);
        }
        let local = self.is_local(&b.recipient);
        if !local {
            if self.custody.len() + self.storing.len() >= self.cfg.max_custody {
                return refuse(self, Stored::Refused);
            }
            // One neighbour (a flooding edge, on a hub) may fill only its share.
            if self.custody.count_from(&from) + self.storing_from.get(&from).copied().unwrap_or(0)
                >= self.cfg.max_custody_per_peer
            {
                self.stats.refused_peer_quota += 1;
                return refuse(self, Stored::Refused);
            }
        }
        self.storing.insert(d, from);
        *self.storing_from.entry(from).or_insert(0) += 1;
        let mut b = b;
        b.hop_count = b.hop_count.saturating_add(1);
        self.outputs.push_back(Output::StoreBundle {
            from,
            bundle: b,
            meta,
            deliver_local: local,
        });
    }

    fn on_ack(&mut self, now_ms: u64, from: NodeId, entries: &[(BundleDigest, AckOutcome)]) {
        let mut delete = Vec::new();
        for (d, outcome) in entries {
            let ours = self.custody.get(d).is_some_and(
                |e| matches!(e.state, State::Offered(p) | State::Sending(p, _) if p == from),
            );
            if !ours {
                continue;
            }
            match outcome {
                AckOutcome::Accepted | AckOutcome::Duplicate | AckOutcome::Expired => {
                    self.stats.custody_acks += 1;
                    self.custody.remove(d);
                    delete.push(*d);
                }
                AckOutcome::Refused => {
                    self.custody
                        .set_state(d, State::Retry(now_ms + self.cfg.retry_refused_ms));
                }
            }
        }
        if !delete.is_empty() {
            self.outputs.push_back(Output::DeleteBundles(delete));
        }
    }

    fn on_broadcast(
        &mut self,
        now_ms: u64,
        from: Option<NodeId>,
        m: BroadcastMsg,
    ) -> Result<u64, BroadcastDropped> {
        match self.broadcasts.accept(&m, now_ms) {
            Ok(seq) => {
                self.stats.broadcasts += 1;
                self.outputs.push_back(Output::Broadcasted {
                    topic: m.topic,
                    seq,
                });
                if m.hop_count.saturating_add(1) < m.hop_limit {
                    let fwd = BroadcastMsg {
                        hop_count: m.hop_count + 1,
                        ..m
                    };
                    let to: Vec<NodeId> = self
                        .links
                        .iter()
                        .filter(|(k, l)| Some(**k) != from && l.hello.is_some())
                        .map(|(k, _)| *k)
                        .collect();
                    for t in to {
                        self.send(t, LinkMsg::Broadcast(fwd.clone()));
                    }
                }
                Ok(seq)
            }
            Err(e) => {
                if e == BroadcastDropped::RateLimited {
                    self.stats.broadcasts_rate_limited += 1;
                }
                Err(e)
            }
        }
    }

    // ----- routing of bundles ----------------------------------------------------------------

    fn apply_route_changes(&mut self, now_ms: u64, ch: routes::Changes) {
        if !ch.changed.is_empty() {
            self.reroute_all = true;
            self.release_from_suspect_links();
        }
        for d in ch.changed.into_iter().chain(ch.raised) {
            self.triggered.insert(d);
        }
        for (node, seqno) in ch.starved {
            if self.routes.should_request(&node, now_ms, 2_000) {
                let req = LinkMsg::SeqnoRequest {
                    node,
                    seqno,
                    hop_count: 16,
                };
                let all: Vec<NodeId> = self.links.keys().copied().collect();
                for l in all {
                    self.send(l, req.clone());
                }
            }
        }
    }

    fn route_pending(&mut self) {
        let recipients: Vec<IdentityKey> = if self.reroute_all {
            self.reroute_all = false;
            self.dirty.clear();
            self.custody.recipients()
        } else {
            self.dirty.drain().collect()
        };
        if recipients.is_empty() {
            return;
        }
        let mut offers: Map<NodeId, Vec<BundleDigest>> = self.keyed.map();
        let mut local = Vec::new();
        let mut dropped = Vec::new();
        // With no route to a recipient's home, mail goes towards the nearest hub, which holds
        // it until the home's mesh is back (hubs themselves have no default route). Looked up
        // once per pass, and only if some recipient needs it.
        let mut default_hop: Option<Option<NodeId>> = None;
        for r in recipients {
            let is_local = self.is_local(&r);
            let routed = if is_local {
                None
            } else {
                self.presence
                    .home(&r)
                    .and_then(|h| self.routes.next_hop(&h))
                    .filter(|nh| *nh != self.cfg.me)
            };
            let by_default = routed.is_none() && !is_local && self.presence.home(&r).is_some();
            let next = if by_default {
                *default_hop.get_or_insert_with(|| self.routes.default_hop())
            } else {
                routed
            };
            for d in self.custody.of_recipient(&r) {
                let Some(e) = self.custody.get(&d).copied() else {
                    continue;
                };
                if e.state != State::Pending {
                    continue;
                }
                if is_local {
                    self.custody.set_state(&d, State::Delivering);
                    local.push(d);
                    continue;
                }
                let Some(nh) = next else { continue };
                // Never hand a bundle back the way it came by default: the hub it came from
                // knew no better route either, and holds it better than we do.
                if by_default && e.meta.from == Some(nh) {
                    continue;
                }
                if self.links.get(&nh).is_none_or(|l| l.hello.is_none()) {
                    continue;
                }
                if e.meta.hop_count >= e.meta.hop_limit {
                    self.custody.remove(&d);
                    self.stats.hop_limit_drops += 1;
                    dropped.push(d);
                    continue;
                }
                offers.entry(nh).or_default().push(d);
            }
        }
        if !local.is_empty() {
            self.outputs.push_back(Output::DeliverLocal(local));
        }
        if !dropped.is_empty() {
            self.outputs.push_back(Output::DeleteBundles(dropped));
        }
        let mut links: Vec<NodeId> = offers.keys().copied().collect();
        links.sort();
        for nh in links {
            let Some(mut list) = offers.remove(&nh) else {
                continue;
            };
            self.custody.sort(&mut list);
            let room = self
                .cfg
                .link_window
                .saturating_sub(self.custody.in_flight_to(&nh));
            if list.len() > room {
                // The rest waits for acks; keep them dirty so the next tick looks again.
                for d in list.split_off(room) {
                    if let Some(e) = self.custody.get(&d) {
                        self.dirty.insert(e.meta.recipient);
                    }
                }
            }
            for d in &list {
                self.custody.set_state(d, State::Offered(nh));
            }
            for chunk in list.chunks(MAX_DIGESTS) {
                self.send(nh, LinkMsg::Offer(chunk.to_vec()));
            }
        }
    }

    fn dial(&mut self, now_ms: u64) {
        let mut dials = Vec::new();
        for (id, p) in self.peers.iter() {
            if p.linked || p.dialing_since.is_some() || p.addrs.is_empty() {
                continue;
            }
            if now_ms < p.next_dial_ms || now_ms < p.penalty_until_ms {
                continue;
            }
            // A peer we only heard of from a neighbour is tried while it has no route, and
            // given up after two failed dials: its addresses are the neighbour's view, often
            // not reachable from here.
            let wanted = p.mdns
                || p.configured
                || p.restored
                || (p.exchanged_by.is_some()
                    && p.failures < MAX_EXCHANGED_DIALS
                    && self.routes.next_hop(id).is_none()
                    && now_ms.saturating_sub(p.first_seen_ms) >= self.cfg.dial_exchanged_after_ms);
            if wanted {
                dials.push((*id, p.addrs.clone()));
            }
        }
        dials.sort_by_key(|(id, _)| *id);
        for (id, addrs) in dials {
            if let Some(p) = self.peers.get_mut(&id) {
                p.dialing_since = Some(now_ms);
            }
            self.outputs.push_back(Output::Connect { peer: id, addrs });
        }
    }

    // ----- sending ---------------------------------------------------------------------------

    fn send(&mut self, to: NodeId, msg: LinkMsg) {
        self.stats.messages_sent += 1;
        self.outputs.push_back(Output::Send { to, msg });
    }

    fn send_routes(&mut self, to: NodeId, entries: &[crate::wire::RouteEntry]) {
        for chunk in entries.chunks(MAX_ROUTES_PER_UPDATE) {
            self.send(to, LinkMsg::Routes(chunk.to_vec()));
        }
    }

    fn send_routes_to_all(&mut self, entries: &[crate::wire::RouteEntry], except: Option<NodeId>) {
        let to: Vec<NodeId> = self
            .links
            .iter()
            .filter(|(k, l)| l.hello.is_some() && Some(**k) != except)
            .map(|(k, _)| *k)
            .collect();
        for t in to {
            self.send_routes(t, entries);
        }
    }

    /// Whether the link to `peer` is a federation link: we are a hub, or it says it is one.
    fn hub_link(&self, peer: &NodeId) -> bool {
        self.cfg.role == ROLE_HUB
            || self
                .links
                .get(peer)
                .and_then(|l| l.hello.as_ref())
                .is_some_and(|h| h.role == ROLE_HUB)
    }

    fn send_peer_exchange(&mut self, to: &NodeId, now_ms: u64) {
        if self.hub_link(to) {
            if let Some(l) = self.links.get_mut(to) {
                l.last_exchange_ms = now_ms;
            }
            return;
        }
        let mut records: Vec<PeerRecord> = self
            .peers
            .iter()
            .filter(|(k, p)| {
                *k != to && !p.addrs.is_empty() && (p.linked || p.mdns || p.configured)
            })
            .map(|(k, p)| PeerRecord {
                node: *k,
                addrs: p.addrs.clone(),
                age_ms: if p.linked {
                    0
                } else {
                    now_ms.saturating_sub(p.last_seen_ms)
                },
            })
            .collect();
        records.sort_by_key(|r| (r.age_ms, r.node));
        records.truncate(MAX_PEERS_PER_EXCHANGE);
        if let Some(l) = self.links.get_mut(to) {
            l.last_exchange_ms = now_ms;
        }
        if !records.is_empty() {
            self.send(*to, LinkMsg::Peers(records));
        }
    }

    /// Turns accumulated state into messages: triggered route updates, batched acks and
    /// presence floods, and offers for bundles that became routable.
    fn flush(&mut self) {
        if !self.triggered.is_empty() {
            let mut changed: Vec<NodeId> = self.triggered.drain().collect();
            changed.sort();
            let entries = self.routes.advertise(Some(&changed));
            if !entries.is_empty() {
                self.send_routes_to_all(&entries, None);
            }
        }
        let mut ids: Vec<NodeId> = self.links.keys().copied().collect();
        ids.sort();
        for id in ids {
            let (acks, claims) = match self.links.get_mut(&id) {
                Some(l) => (
                    std::mem::take(&mut l.acks),
                    std::mem::take(&mut l.presence_out),
                ),
                None => continue,
            };
            for chunk in acks.chunks(MAX_DIGESTS) {
                self.send(id, LinkMsg::Ack(chunk.to_vec()));
            }
            for chunk in claims.chunks(MAX_PRESENCE_PER_BATCH) {
                self.send(id, LinkMsg::Presence(chunk.to_vec()));
            }
        }
        if (self.reroute_all || !self.dirty.is_empty()) && self.outputs.is_empty() {
            // Routing here, not only in ticks, keeps forwarding latency at the link's.
            self.route_pending();
        }
    }
}

fn first8(b: &[u8; 32]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(b.get(..8).unwrap_or(&[0u8; 8]));
    out
}
