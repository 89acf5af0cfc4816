//! A deterministic simulator of many nodes running the real [`Mesh`] core.
//!
//! A [`Scenario`] is generated from a seed: a random connected topology with per-link latency
//! and loss, and a timeline of link churn, partitions, node crashes, user moves and messages.
//! [`run`] plays it with Ferry's core on every node, a simulated durable store per node
//! (writes complete after a simulated fsync; a crash loses writes not yet complete, nothing
//! else), and users who attach, move, send and fetch like the CLI does (a client-side seen set,
//! as `ferry inbox` keeps). [`run_flooding`] plays the same scenario with epidemic flooding,
//! the baseline transmissions are compared against.
//!
//! Everything runs on a virtual clock from one seed, so any failure replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};

use crate::det::{Map, Set};
use ed25519_dalek::{Signer, SigningKey};
use ferry_proto::transcript::presence_transcript;
use ferry_proto::types::{
    BundleDigest, ChannelId, DeviceId, HybridPublicKey, IdentityKey, MessageId, NodeId,
};

use crate::core::{BundleMeta, Config, Mesh, Output, PeerSource, Stored};
use crate::wire::{self, Bundle, Claim, LinkMsg};

/// Deterministic pseudo-randomness (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0xD1B5_4A32_D192_ED03)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Parameters of a generated scenario.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of everything.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Links beyond a random spanning tree.
    pub extra_links: usize,
    /// Users (each starts at a random node).
    pub users: usize,
    /// Messages sent during the chaos phase.
    pub messages: usize,
    /// Length of the chaos phase (churn, partitions, crashes, moves, sends).
    pub chaos_ms: u64,
    /// Length of the quiet phase after everything is healed.
    pub settle_ms: u64,
    /// One-way link latency range.
    pub latency_ms: (u64, u64),
    /// Highest per-link packet loss (each link draws its own in `[0, max]`).
    pub max_loss: f64,
    /// Link failures during the chaos phase.
    pub link_flaps: usize,
    /// Partitions during the chaos phase.
    pub partitions: usize,
    /// Node crashes during the chaos phase.
    pub crashes: usize,
    /// User moves during the chaos phase.
    pub moves: usize,
    /// TTL of ordinary messages (long enough to survive the scenario).
    pub ttl_ms: u64,
    /// Share of messages with a short TTL (they test that nothing is delivered late).
    pub short_ttl_share: f64,
    /// TTL of those.
    pub short_ttl_ms: u64,
    /// Simulated fsync.
    pub store_latency_ms: u64,
    /// How often users fetch.
    pub fetch_interval_ms: u64,
}

impl SimConfig {
    /// A moderate scenario for property tests.
    pub fn small(seed: u64) -> Self {
        Self {
            seed,
            nodes: 16,
            extra_links: 8,
            users: 10,
            messages: 120,
            chaos_ms: 90_000,
            settle_ms: 120_000,
            latency_ms: (2, 40),
            max_loss: 0.05,
            link_flaps: 10,
            partitions: 2,
            crashes: 3,
            moves: 5,
            ttl_ms: 3_600_000,
            short_ttl_share: 0.1,
            short_ttl_ms: 15_000,
            store_latency_ms: 2,
            fetch_interval_ms: 1_000,
        }
    }

    /// A quiet scenario (no churn): for comparing transmissions with shortest paths.
    pub fn quiet(seed: u64, nodes: usize) -> Self {
        Self {
            nodes,
            extra_links: nodes / 2,
            users: (nodes / 2).max(2),
            messages: nodes * 10,
            link_flaps: 0,
            partitions: 0,
            crashes: 0,
            moves: 0,
            short_ttl_share: 0.0,
            max_loss: 0.02,
            ..Self::small(seed)
        }
    }
}

/// One event of a scenario's timeline.
#[derive(Clone, Debug)]
pub enum ScenarioEvent {
    /// A link fails, and both ends are told at once (their drivers saw the connection close).
    LinkDown(usize),
    /// A link stops carrying anything, and nobody is told: its ends find out by hearing
    /// nothing (a radio out of range, a cable pulled). [`ScenarioEvent::LinkUp`] restores it.
    LinkSilent(usize),
    /// A link recovers.
    LinkUp(usize),
    /// A node crashes; its neighbours' drivers see the links close.
    Crash(usize),
    /// A node loses power: its neighbours are not told, their links to it go silent.
    CrashSilent(usize),
    /// A node restarts and rediscovers its neighbours (mDNS).
    Restart(usize),
    /// A node restarts without discovery: it knows its neighbours only from before the
    /// restart (they have it as a static peer, say).
    RestartAlone(usize),
    /// A user attaches at a node.
    Attach {
        /// User index.
        user: usize,
        /// Node index.
        node: usize,
    },
    /// A user sends a message.
    Send {
        /// Sender.
        from: usize,
        /// Recipient.
        to: usize,
        /// TTL.
        ttl_ms: u64,
        /// Message number.
        n: u64,
    },
    /// The chaos phase ends: everything heals.
    HealAll,
}

/// A link of the topology.
#[derive(Clone, Copy, Debug)]
pub struct SimLink {
    /// One end.
    pub a: usize,
    /// Other end.
    pub b: usize,
    /// One-way latency.
    pub latency_ms: u64,
    /// Packet loss.
    pub loss: f64,
}

/// A generated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Its parameters.
    pub cfg: SimConfig,
    /// Links.
    pub links: Vec<SimLink>,
    /// Timeline, sorted by time.
    pub events: Vec<(u64, ScenarioEvent)>,
}

impl Scenario {
    /// Generates the scenario of `cfg.seed`.
    pub fn generate(cfg: SimConfig) -> Self {
        let mut rng = Rng::new(cfg.seed);
        let n = cfg.nodes.max(2);
        let mut links = Vec::new();
        let mut have = Set::default();
        let mut add = |a: usize, b: usize, rng: &mut Rng, links: &mut Vec<SimLink>| {
            let key = (a.min(b), a.max(b));
            if a == b || !have.insert(key) {
                return;
            }
            links.push(SimLink {
                a: key.0,
                b: key.1,
                latency_ms: rng.range(cfg.latency_ms.0, cfg.latency_ms.1),
                loss: rng.unit() * cfg.max_loss,
            });
        };
        // A random spanning tree (connected), then extra links.
        for i in 1..n {
            let j = rng.below(i as u64) as usize;
            add(i, j, &mut rng, &mut links);
        }
        for _ in 0..cfg.extra_links {
            let a = rng.below(n as u64) as usize;
            let b = rng.below(n as u64) as usize;
            add(a, b, &mut rng, &mut links);
        }
        let mut events = Vec::new();
        for u in 0..cfg.users {
            let node = rng.below(n as u64) as usize;
            events.push((
                100 + rng.below(2_000),
                ScenarioEvent::Attach { user: u, node },
            ));
        }
        let chaos = cfg.chaos_ms.max(10_000);
        for _ in 0..cfg.link_flaps {
            let l = rng.below(links.len() as u64) as usize;
            let at = rng.range(5_000, chaos - 5_000);
            events.push((at, ScenarioEvent::LinkDown(l)));
            events.push((at + rng.range(1_000, 20_000), ScenarioEvent::LinkUp(l)));
        }
        for _ in 0..cfg.partitions {
            // Cut every link crossing a random split of the nodes.
            let pivot = rng.below(n as u64) as usize;
            let radius = rng.range(1, 3);
            let side = bfs_region(n, &links, pivot, radius as usize);
            let at = rng.range(5_000, chaos - 5_000);
            let until = at + rng.range(10_000, 40_000);
            for (i, l) in links.iter().enumerate() {
                if side.contains(&l.a) != side.contains(&l.b) {
                    events.push((at, ScenarioEvent::LinkDown(i)));
                    events.push((until, ScenarioEvent::LinkUp(i)));
                }
            }
        }
        for _ in 0..cfg.crashes {
            let node = rng.below(n as u64) as usize;
            let at = rng.range(5_000, chaos - 5_000);
            events.push((at, ScenarioEvent::Crash(node)));
            events.push((at + rng.range(2_000, 15_000), ScenarioEvent::Restart(node)));
        }
        for _ in 0..cfg.moves {
            let user = rng.below(cfg.users as u64) as usize;
            let node = rng.below(n as u64) as usize;
            events.push((
                rng.range(5_000, chaos),
                ScenarioEvent::Attach { user, node },
            ));
        }
        for m in 0..cfg.messages {
            let from = rng.below(cfg.users as u64) as usize;
            let mut to = rng.below(cfg.users as u64) as usize;
            if to == from {
                to = (to + 1) % cfg.users.max(2);
            }
            let ttl_ms = if rng.unit() < cfg.short_ttl_share {
                cfg.short_ttl_ms
            } else {
                cfg.ttl_ms
            };
            events.push((
                rng.range(3_000, chaos),
                ScenarioEvent::Send {
                    from,
                    to,
                    ttl_ms,
                    n: m as u64,
                },
            ));
        }
        events.push((chaos, ScenarioEvent::HealAll));
        events.sort_by_key(|(t, _)| *t);
        Self { cfg, links, events }
    }

    fn neighbours(&self) -> Vec<Vec<(usize, usize)>> {
        let mut adj = vec![Vec::new(); self.cfg.nodes.max(2)];
        for (i, l) in self.links.iter().enumerate() {
            adj[l.a].push((l.b, i));
            adj[l.b].push((l.a, i));
        }
        adj
    }

    /// Hops between two nodes in the full topology.
    pub fn distance(&self, from: usize, to: usize) -> u64 {
        let adj = self.neighbours();
        let mut dist = vec![u64::MAX; adj.len()];
        let mut q = VecDeque::new();
        dist[from] = 0;
        q.push_back(from);
        while let Some(x) = q.pop_front() {
            for (y, _) in &adj[x] {
                if dist[*y] == u64::MAX {
                    dist[*y] = dist[x] + 1;
                    q.push_back(*y);
                }
            }
        }
        dist[to]
    }
}

fn bfs_region(n: usize, links: &[SimLink], start: usize, radius: usize) -> Set<usize> {
    let mut adj = vec![Vec::new(); n];
    for l in links {
        adj[l.a].push(l.b);
        adj[l.b].push(l.a);
    }
    let mut seen: Set<usize> = Set::default();
    seen.insert(start);
    let mut frontier = vec![start];
    for _ in 0..radius {
        let mut next = Vec::new();
        for x in frontier {
            for y in &adj[x] {
                if seen.insert(*y) {
                    next.push(*y);
                }
            }
        }
        frontier = next;
    }
    seen
}

/// What a run showed.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Messages users tried to send.
    pub sent: u64,
    /// Messages the node acknowledged to the sender (durable).
    pub acknowledged: u64,
    /// Acknowledged messages with the ordinary (long) TTL.
    pub acknowledged_long: u64,
    /// Of those, shown to their recipient.
    pub delivered_long: u64,
    /// Short-TTL messages shown (in time).
    pub delivered_short: u64,
    /// Messages shown more than once (must be 0).
    pub shown_twice: u64,
    /// Messages shown after their expiry (must be 0).
    pub shown_after_expiry: u64,
    /// Copies fetched that the client had already seen (node-level duplicates the client's
    /// seen set absorbed).
    pub duplicate_fetches: u64,
    /// Acknowledged long-TTL messages never shown (must be 0).
    pub lost: Vec<u64>,
    /// Median time from send to shown.
    pub median_latency_ms: u64,
    /// Every shown message: (message number, sent at, time from send to shown).
    pub shown: Vec<(u64, u64, u64)>,
    /// Bundle transmissions on links.
    pub bundle_transmissions: u64,
    /// Sum over shown messages of shortest-path hops from sending node to fetching node.
    pub shortest_path_hops: u64,
    /// Link messages of all kinds.
    pub link_messages: u64,
    /// Crashes played.
    pub crashes: u64,
    /// Link messages by kind.
    pub by_kind: BTreeMap<&'static str, u64>,
}

impl Report {
    /// Shown / acknowledged, for long-TTL messages.
    pub fn delivery_ratio(&self) -> f64 {
        if self.acknowledged_long == 0 {
            1.0
        } else {
            self.delivered_long as f64 / self.acknowledged_long as f64
        }
    }

    /// Bundle transmissions per shown message.
    pub fn transmissions_per_delivered(&self) -> f64 {
        let shown = (self.delivered_long + self.delivered_short).max(1);
        self.bundle_transmissions as f64 / shown as f64
    }

    /// Bundle transmissions over the shortest-path total.
    pub fn stretch(&self) -> f64 {
        self.bundle_transmissions as f64 / self.shortest_path_hops.max(1) as f64
    }
}

// ----- the simulated store ------------------------------------------------------------------

#[derive(Clone, Debug)]
struct StoredBundle {
    bundle: Bundle,
    deadline: u64,
    from: Option<NodeId>,
}

#[derive(Clone, Debug)]
struct Mail {
    message_id: MessageId,
    n: u64,
    deadline: u64,
    sent_at: u64,
    origin: usize,
    payload: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
struct Durable {
    custody: BTreeMap<BundleDigest, StoredBundle>,
    mailboxes: Map<IdentityKey, BTreeMap<u64, Mail>>,
    next_seq: Map<IdentityKey, u64>,
    /// (message id, user) -> expiry: a mailbox never takes a message twice.
    dedup: Map<(MessageId, IdentityKey), u64>,
    presence: Map<IdentityKey, Claim>,
    seqno: u32,
    peers: Vec<(NodeId, Vec<SocketAddr>)>,
}

impl Durable {
    fn mailbox_insert(&mut self, user: IdentityKey, mail: Mail, now: u64) -> bool {
        let key = (mail.message_id, user);
        if self.dedup.get(&key).is_some_and(|exp| *exp > now) {
            return false;
        }
        self.dedup.insert(key, mail.deadline);
        let seq = self.next_seq.entry(user).or_insert(0);
        *seq += 1;
        self.mailboxes.entry(user).or_default().insert(*seq, mail);
        true
    }
}

/// Payload layout in the simulation: message number, send time, origin node, then padding.
fn payload(n: u64, sent_at: u64, origin: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&n.to_be_bytes());
    p.extend_from_slice(&sent_at.to_be_bytes());
    p.extend_from_slice(&(origin as u64).to_be_bytes());
    p.resize(64, 0);
    p
}

fn unpayload(p: &[u8]) -> (u64, u64, usize) {
    let get = |i: usize| {
        p.get(i * 8..i * 8 + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0)
    };
    (get(0), get(1), get(2) as usize)
}

// ----- the event loop -----------------------------------------------------------------------

#[derive(Debug)]
enum Ev {
    Scenario(usize),
    Timer(usize),
    Deliver {
        to: usize,
        from: usize,
        epoch: u64,
        bytes: Vec<u8>,
    },
    LinkUp {
        a: usize,
        b: usize,
        epoch: u64,
    },
    DialFailed {
        node: usize,
        peer: usize,
        incarnation: u64,
    },
    WriteDone {
        node: usize,
        incarnation: u64,
        op: Box<Write>,
    },
    Fetch(usize),
}

#[derive(Debug)]
enum Write {
    Received {
        from: NodeId,
        bundle: Bundle,
        meta: BundleMeta,
        local: bool,
    },
    ClientMessage {
        user: usize,
        to: IdentityKey,
        mail: Mail,
        local: bool,
        digest: BundleDigest,
    },
    Delete(Vec<BundleDigest>),
    Deliver(Vec<BundleDigest>),
    Evict(IdentityKey),
    Presence(Claim),
    Seqno(u32),
    Peers(Vec<(NodeId, Vec<SocketAddr>)>),
    Ack {
        user: IdentityKey,
        upto: u64,
    },
}

struct Node {
    id: NodeId,
    mesh: Option<Mesh>,
    durable: Durable,
    incarnation: u64,
    timer_at: Option<u64>,
}

struct User {
    key: SigningKey,
    ident: IdentityKey,
    node: Option<usize>,
    seen: Set<MessageId>,
}

/// Per-message truth kept by the harness.
#[derive(Clone, Debug)]
struct Sent {
    deadline: u64,
    long: bool,
    acked: bool,
    shown: u32,
}

/// A frame a silent link holds: to, from, the link's epoch, the frame.
type Held = (usize, usize, u64, Vec<u8>);

struct World<'a> {
    sc: &'a Scenario,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Ev>>,
    nodes: Vec<Node>,
    users: Vec<User>,
    link_up: Vec<bool>,
    /// Mesh links (a < b) -> epoch; absent when not linked.
    mesh_links: Map<(usize, usize), u64>,
    next_epoch: u64,
    /// Last delivery time per directed edge (streams deliver in order).
    last_delivery: Map<(usize, usize), u64>,
    /// Frames sent on silent links, per link, in order: delivered when it carries again.
    held: Map<usize, Vec<Held>>,
    link_of: Map<(usize, usize), usize>,
    by_id: Map<NodeId, usize>,
    sent: Map<u64, Sent>,
    /// Per message number: link delay beyond the RTT its hops were charged (retransmissions).
    excess: Map<u64, u64>,
    rng: Rng,
    report: Report,
    latencies: Vec<u64>,
    healed: bool,
}

fn node_id(i: usize) -> NodeId {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    b[8] = 0xfe;
    NodeId::from_array(b)
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i as u32), 5002))
}

fn config(id: NodeId, seed: u64, seqno: u32) -> Config {
    let mut c = Config::new(id);
    c.seed = seed;
    c.initial_seqno = seqno;
    c
}

impl<'a> World<'a> {
    fn new(sc: &'a Scenario) -> Self {
        let n = sc.cfg.nodes.max(2);
        let mut link_of = Map::default();
        for (i, l) in sc.links.iter().enumerate() {
            link_of.insert((l.a, l.b), i);
            link_of.insert((l.b, l.a), i);
        }
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                id: node_id(i),
                mesh: Some(Mesh::new(config(node_id(i), sc.cfg.seed ^ i as u64, 1), 0)),
                durable: Durable::default(),
                incarnation: 0,
                timer_at: None,
            })
            .collect();
        let by_id = nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
        let users = (0..sc.cfg.users)
            .map(|u| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(u as u64 ^ sc.cfg.seed).to_be_bytes());
                seed[31] = 0x55;
                let key = SigningKey::from_bytes(&seed);
                let ident = IdentityKey::from_array(key.verifying_key().to_bytes());
                User {
                    key,
                    ident,
                    node: None,
                    seen: Set::default(),
                }
            })
            .collect();
        let mut w = Self {
            sc,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            nodes,
            users,
            link_up: vec![true; sc.links.len()],
            mesh_links: Map::default(),
            next_epoch: 1,
            last_delivery: Map::default(),
            held: Map::default(),
            link_of,
            by_id,
            sent: Map::default(),
            excess: Map::default(),
            rng: Rng::new(sc.cfg.seed ^ 0xabcd),
            report: Report::default(),
            latencies: Vec::new(),
            healed: false,
        };
        for (i, (t, _)) in sc.events.iter().enumerate() {
            w.schedule(*t, Ev::Scenario(i));
        }
        for i in 0..n {
            w.discover_neighbours(i);
            w.arm(i);
        }
        for u in 0..sc.cfg.users {
            let t = 500 + w.rng.below(sc.cfg.fetch_interval_ms);
            w.schedule(t, Ev::Fetch(u));
        }
        w.pump_all();
        w
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue
            .push(Reverse((at, self.seq, self.events.len() - 1)));
    }

    fn arm(&mut self, i: usize) {
        let Some(t) = self.nodes[i].mesh.as_ref().map(Mesh::poll_timeout) else {
            return;
        };
        if self.nodes[i].timer_at.is_some_and(|x| x <= t) {
            return;
        }
        self.nodes[i].timer_at = Some(t);
        self.schedule(t, Ev::Timer(i));
    }

    fn alive(&self, i: usize) -> bool {
        self.nodes[i].mesh.is_some()
    }

    fn discover_neighbours(&mut self, i: usize) {
        let now = self.now;
        let neigh: Vec<usize> = self
            .sc
            .links
            .iter()
            .filter_map(|l| {
                if l.a == i {
                    Some(l.b)
                } else if l.b == i {
                    Some(l.a)
                } else {
                    None
                }
            })
            .collect();
        for j in neigh {
            let id = self.nodes[j].id;
            if let Some(m) = self.nodes[i].mesh.as_mut() {
                m.handle_discovered(now, id, &[addr(j)], PeerSource::Mdns);
            }
        }
    }

    fn delay(&mut self, link: usize) -> u64 {
        let l = self.sc.links[link];
        let mut d = l.latency_ms;
        // Loss shows as retransmissions on a reliable stream.
        while self.rng.unit() < l.loss {
            d += 2 * l.latency_ms + 10;
        }
        d
    }

    fn write(&mut self, node: usize, op: Write) {
        let at = self.now + self.sc.cfg.store_latency_ms;
        let incarnation = self.nodes[node].incarnation;
        self.schedule(
            at,
            Ev::WriteDone {
                node,
                incarnation,
                op: Box::new(op),
            },
        );
    }

    fn link_down_mesh(&mut self, a: usize, b: usize) {
        let key = (a.min(b), a.max(b));
        if self.mesh_links.remove(&key).is_none() {
            return;
        }
        let now = self.now;
        let (ia, ib) = (self.nodes[a].id, self.nodes[b].id);
        if let Some(m) = self.nodes[a].mesh.as_mut() {
            m.handle_link_down(now, ib);
        }
        if let Some(m) = self.nodes[b].mesh.as_mut() {
            m.handle_link_down(now, ia);
        }
    }

    /// Carries out a node's outputs.
    fn pump(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].mesh.as_mut().and_then(Mesh::poll_output) {
            self.output(i, out);
        }
        self.arm(i);
    }

    fn pump_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.pump(i);
        }
    }

    fn send_msg(&mut self, from: usize, to_id: NodeId, msg: LinkMsg) {
        let Some(&to) = self.by_id.get(&to_id) else {
            return;
        };
        let key = (from.min(to), from.max(to));
        let Some(&epoch) = self.mesh_links.get(&key) else {
            return;
        };
        let Some(&link) = self.link_of.get(&(from, to)) else {
            return;
        };
        self.report.link_messages += 1;
        *self.report.by_kind.entry(msg.kind()).or_insert(0) += 1;
        let d = self.delay(link);
        if let LinkMsg::Bundle(b) = &msg {
            self.report.bundle_transmissions += 1;
            // The driver charged the link's RTT; a retransmission can take longer than that.
            let charged = 2 * self.sc.links[link].latency_ms;
            let (n, _, _) = unpayload(&b.payload);
            *self.excess.entry(n).or_insert(0) += d.saturating_sub(charged);
        }
        let bytes = wire::encode(msg);
        if !self.link_up[link] {
            // A silent link: the stream holds it, and delivers it once the link carries again
            // (QUIC retransmits) unless the link is closed first.
            self.held
                .entry(link)
                .or_default()
                .push((to, from, epoch, bytes));
            return;
        }
        let at = (self.now + d).max(self.last_delivery.get(&(from, to)).copied().unwrap_or(0));
        self.last_delivery.insert((from, to), at);
        self.schedule(
            at,
            Ev::Deliver {
                to,
                from,
                epoch,
                bytes,
            },
        );
    }

    fn output(&mut self, i: usize, out: Output) {
        let now = self.now;
        match out {
            Output::Send { to, msg } => self.send_msg(i, to, msg),
            Output::SendBundle { to, digest } => {
                let Some(sb) = self.nodes[i].durable.custody.get(&digest).cloned() else {
                    panic!("node {i} asked to send a bundle it does not hold");
                };
                let mut b = sb.bundle;
                // What is left, minus the link's round-trip time: the transit is charged to
                // the message, as a real driver does with QUIC's RTT estimate.
                let rtt = self
                    .by_id
                    .get(&to)
                    .and_then(|j| self.link_of.get(&(i, *j)))
                    .map(|l| 2 * self.sc.links[*l].latency_ms)
                    .unwrap_or(0);
                b.lifetime_ms = sb.deadline.saturating_sub(now).saturating_sub(rtt);
                self.send_msg(i, to, LinkMsg::Bundle(b));
            }
            Output::StoreBundle {
                from,
                bundle,
                meta,
                deliver_local,
            } => self.write(
                i,
                Write::Received {
                    from,
                    bundle,
                    meta,
                    local: deliver_local,
                },
            ),
            Output::DeleteBundles(d) => self.write(i, Write::Delete(d)),
            Output::DeliverLocal(d) => self.write(i, Write::Deliver(d)),
            Output::EvictUser(u) => self.write(i, Write::Evict(u)),
            Output::StorePresence(c) => self.write(i, Write::Presence(c)),
            Output::PersistSeqno(s) => self.write(i, Write::Seqno(s)),
            Output::PersistPeers(p) => self.write(i, Write::Peers(p)),
            Output::Connect { peer, .. } => {
                let Some(&j) = self.by_id.get(&peer) else {
                    return;
                };
                let link = self.link_of.get(&(i, j)).copied();
                let key = (i.min(j), i.max(j));
                let ok = link.is_some_and(|l| self.link_up[l]) && self.alive(j);
                if ok && !self.mesh_links.contains_key(&key) {
                    let lat = self.sc.links[link.unwrap_or(0)].latency_ms;
                    let epoch = self.next_epoch;
                    self.next_epoch += 1;
                    self.schedule(now + 3 * lat, Ev::LinkUp { a: i, b: j, epoch });
                } else if !ok {
                    let incarnation = self.nodes[i].incarnation;
                    self.schedule(
                        now + 1_000,
                        Ev::DialFailed {
                            node: i,
                            peer: j,
                            incarnation,
                        },
                    );
                }
            }
            Output::Disconnect { peer, .. } => {
                if let Some(&j) = self.by_id.get(&peer) {
                    self.link_down_mesh(i, j);
                }
            }
            Output::Broadcasted { .. } => {}
        }
    }

    fn apply_write(&mut self, i: usize, op: Write) {
        let now = self.now;
        let me = self.nodes[i].id;
        match op {
            Write::Received {
                from,
                bundle,
                meta,
                local,
            } => {
                let outcome = if meta.deadline_ms <= now {
                    Stored::Expired
                } else if local {
                    let (n, sent_at, origin) = unpayload(&bundle.payload);
                    let mail = Mail {
                        message_id: bundle.message_id,
                        n,
                        deadline: meta.deadline_ms,
                        sent_at,
                        origin,
                        payload: bundle.payload.clone(),
                    };
                    if self.nodes[i]
                        .durable
                        .mailbox_insert(bundle.recipient, mail, now)
                    {
                        Stored::Delivered
                    } else {
                        Stored::Duplicate
                    }
                } else {
                    match self.nodes[i].durable.custody.entry(meta.digest) {
                        std::collections::btree_map::Entry::Occupied(_) => Stored::Duplicate,
                        std::collections::btree_map::Entry::Vacant(v) => {
                            v.insert(StoredBundle {
                                bundle,
                                deadline: meta.deadline_ms,
                                from: Some(from),
                            });
                            Stored::Custody
                        }
                    }
                };
                if let Some(m) = self.nodes[i].mesh.as_mut() {
                    m.handle_stored(from, meta, outcome);
                }
            }
            Write::ClientMessage {
                user,
                to,
                mail,
                local,
                digest,
            } => {
                let n = mail.n;
                if local {
                    self.nodes[i].durable.mailbox_insert(to, mail, now);
                } else {
                    let meta = BundleMeta {
                        digest,
                        recipient: to,
                        deadline_ms: mail.deadline,
                        size: mail.payload.len() as u32,
                        from: None,
                        hop_count: 0,
                        hop_limit: ferry_proto::limits::DEFAULT_HOP_LIMIT,
                        order: crate::core::order_of(&mail.message_id),
                    };
                    self.nodes[i].durable.custody.insert(
                        digest,
                        StoredBundle {
                            bundle: Bundle {
                                message_id: mail.message_id,
                                recipient: to,
                                channel: ChannelId::DEFAULT,
                                device: DeviceId::DEFAULT,
                                lifetime_ms: 0,
                                hop_count: 0,
                                hop_limit: ferry_proto::limits::DEFAULT_HOP_LIMIT,
                                sender: Some(self.users[user].ident),
                                payload: mail.payload.clone(),
                            },
                            deadline: mail.deadline,
                            from: None,
                        },
                    );
                    if let Some(m) = self.nodes[i].mesh.as_mut() {
                        m.handle_custody_added(vec![meta]);
                    }
                }
                if let Some(s) = self.sent.get_mut(&n) {
                    s.acked = true;
                }
            }
            Write::Delete(ds) => {
                for d in ds {
                    self.nodes[i].durable.custody.remove(&d);
                }
            }
            Write::Deliver(ds) => {
                for d in &ds {
                    let Some(sb) = self.nodes[i].durable.custody.remove(d) else {
                        continue;
                    };
                    if sb.deadline <= now {
                        continue;
                    }
                    let (n, sent_at, origin) = unpayload(&sb.bundle.payload);
                    let mail = Mail {
                        message_id: sb.bundle.message_id,
                        n,
                        deadline: sb.deadline,
                        sent_at,
                        origin,
                        payload: sb.bundle.payload,
                    };
                    self.nodes[i]
                        .durable
                        .mailbox_insert(sb.bundle.recipient, mail, now);
                }
                if let Some(m) = self.nodes[i].mesh.as_mut() {
                    m.handle_delivered(&ds);
                }
            }
            Write::Evict(user) => {
                let mail = self.nodes[i]
                    .durable
                    .mailboxes
                    .remove(&user)
                    .unwrap_or_default();
                let mut metas = Vec::new();
                for (_, m) in mail {
                    // The mailbox gives it up, so it may come back here later.
                    self.nodes[i].durable.dedup.remove(&(m.message_id, user));
                    let digest = BundleDigest::of(&m.message_id, &user);
                    metas.push(BundleMeta {
                        digest,
                        recipient: user,
                        deadline_ms: m.deadline,
                        size: m.payload.len() as u32,
                        from: None,
                        hop_count: 0,
                        hop_limit: ferry_proto::limits::DEFAULT_HOP_LIMIT,
                        order: crate::core::order_of(&m.message_id),
                    });
                    self.nodes[i].durable.custody.insert(
                        digest,
                        StoredBundle {
                            bundle: Bundle {
                                message_id: m.message_id,
                                recipient: user,
                                channel: ChannelId::DEFAULT,
                                device: DeviceId::DEFAULT,
                                lifetime_ms: 0,
                                hop_count: 0,
                                hop_limit: ferry_proto::limits::DEFAULT_HOP_LIMIT,
                                sender: None,
                                payload: m.payload,
                            },
                            deadline: m.deadline,
                            from: None,
                        },
                    );
                }
                if let Some(m) = self.nodes[i].mesh.as_mut() {
                    m.handle_custody_added(metas);
                }
            }
            Write::Presence(c) => {
                let newer = self.nodes[i]
                    .durable
                    .presence
                    .get(&c.user)
                    .is_none_or(|old| old.timestamp_ms < c.timestamp_ms);
                if newer {
                    self.nodes[i].durable.presence.insert(c.user, c);
                }
            }
            Write::Seqno(s) => self.nodes[i].durable.seqno = self.nodes[i].durable.seqno.max(s),
            Write::Peers(p) => self.nodes[i].durable.peers = p,
            Write::Ack { user, upto } => {
                if let Some(mb) = self.nodes[i].durable.mailboxes.get_mut(&user) {
                    mb.retain(|seq, _| *seq > upto);
                }
            }
        }
        let _ = me;
    }

    fn claim(&self, user: usize, node: usize) -> Claim {
        let u = &self.users[user];
        let hybrid = HybridPublicKey::from_field(&[user as u8; 1216], "k")
            .unwrap_or_else(|_| unreachable!("fixed length"));
        let ts = self.now + 1;
        let t = presence_transcript(&u.ident, &self.nodes[node].id, ts, &hybrid);
        Claim {
            user: u.ident,
            node: self.nodes[node].id,
            timestamp_ms: ts,
            hybrid,
            signature: u.key.sign(&t).to_bytes(),
        }
    }

    fn scenario_event(&mut self, k: usize) {
        let now = self.now;
        let ev = self.sc.events[k].1.clone();
        match ev {
            ScenarioEvent::LinkDown(l) => {
                if self.healed {
                    return;
                }
                self.link_up[l] = false;
                let (a, b) = (self.sc.links[l].a, self.sc.links[l].b);
                self.link_down_mesh(a, b);
            }
            ScenarioEvent::LinkSilent(l) => {
                if !self.healed {
                    self.link_up[l] = false;
                }
            }
            ScenarioEvent::LinkUp(l) => {
                self.link_up[l] = true;
                self.release_held(l);
            }
            ScenarioEvent::CrashSilent(n) => {
                if self.healed || !self.alive(n) {
                    return;
                }
                self.report.crashes += 1;
                // The transport's state goes with the process: the neighbours keep their
                // links until they notice the silence.
                self.mesh_links.retain(|(a, b), _| *a != n && *b != n);
                self.nodes[n].mesh = None;
                self.nodes[n].incarnation += 1;
                self.nodes[n].timer_at = None;
            }
            ScenarioEvent::RestartAlone(n) => self.restart(n, false),
            ScenarioEvent::Crash(n) => {
                if self.healed || !self.alive(n) {
                    return;
                }
                self.report.crashes += 1;
                let neigh: Vec<usize> = self
                    .mesh_links
                    .keys()
                    .filter_map(|(a, b)| {
                        if *a == n {
                            Some(*b)
                        } else if *b == n {
                            Some(*a)
                        } else {
                            None
                        }
                    })
                    .collect();
                for j in neigh {
                    self.link_down_mesh(n, j);
                }
                // Everything not durable is gone: the core, and writes in flight.
                self.nodes[n].mesh = None;
                self.nodes[n].incarnation += 1;
                self.nodes[n].timer_at = None;
            }
            ScenarioEvent::Restart(n) => self.restart(n, true),
            ScenarioEvent::Attach { user, node } => {
                if !self.alive(node) {
                    return;
                }
                if let Some(old) = self.users[user].node.replace(node)
                    && let Some(m) = self.nodes[old].mesh.as_mut()
                {
                    m.handle_user_disconnected(self.users[user].ident);
                }
                let claim = self.claim(user, node);
                let ident = self.users[user].ident;
                if let Some(m) = self.nodes[node].mesh.as_mut() {
                    m.handle_local_claim(now, claim);
                    m.handle_user_connected(ident);
                }
            }
            ScenarioEvent::Send {
                from,
                to,
                ttl_ms,
                n,
            } => {
                self.report.sent += 1;
                let Some(node) = self.users[from].node.filter(|x| self.alive(*x)) else {
                    return;
                };
                let recipient = self.users[to].ident;
                let mut mid = [0u8; 16];
                mid[..8].copy_from_slice(&n.to_be_bytes());
                mid[8..].copy_from_slice(&self.sc.cfg.seed.to_be_bytes());
                let message_id = MessageId::from_array(mid);
                let local = self.nodes[node]
                    .mesh
                    .as_ref()
                    .is_some_and(|m| m.is_local(&recipient));
                let mail = Mail {
                    message_id,
                    n,
                    deadline: now + ttl_ms,
                    sent_at: now,
                    origin: node,
                    payload: payload(n, now, node),
                };
                self.sent.insert(
                    n,
                    Sent {
                        deadline: now + ttl_ms,
                        long: ttl_ms == self.sc.cfg.ttl_ms,
                        acked: false,
                        shown: 0,
                    },
                );
                let digest = BundleDigest::of(&message_id, &recipient);
                self.write(
                    node,
                    Write::ClientMessage {
                        user: from,
                        to: recipient,
                        mail,
                        local,
                        digest,
                    },
                );
            }
            ScenarioEvent::HealAll => {
                self.healed = true;
                for l in 0..self.link_up.len() {
                    self.link_up[l] = true;
                    self.release_held(l);
                }
                for n in 0..self.nodes.len() {
                    if !self.alive(n) {
                        self.restart(n, true);
                    }
                }
                // Nodes redial what they know (their backoffs would get there too, slower).
                for n in 0..self.nodes.len() {
                    self.discover_neighbours(n);
                }
            }
        }
        self.pump_all();
    }

    fn restart(&mut self, n: usize, discover: bool) {
        if self.alive(n) {
            return;
        }
        let now = self.now;
        let d = &self.nodes[n].durable;
        let mut mesh = Mesh::new(
            config(
                self.nodes[n].id,
                self.sc.cfg.seed ^ n as u64 ^ now,
                d.seqno.saturating_add(1),
            ),
            now,
        );
        mesh.handle_restored_claims(d.presence.values().cloned().collect());
        let metas: Vec<BundleMeta> = d
            .custody
            .iter()
            .map(|(k, sb)| BundleMeta {
                digest: *k,
                recipient: sb.bundle.recipient,
                deadline_ms: sb.deadline,
                size: sb.bundle.payload.len() as u32,
                from: sb.from,
                hop_count: sb.bundle.hop_count,
                hop_limit: sb.bundle.hop_limit,
                order: crate::core::order_of(&sb.bundle.message_id),
            })
            .collect();
        mesh.handle_custody_added(metas);
        self.nodes[n].mesh = Some(mesh);
        for u in 0..self.users.len() {
            if self.users[u].node == Some(n) {
                let ident = self.users[u].ident;
                if let Some(m) = self.nodes[n].mesh.as_mut() {
                    m.handle_user_connected(ident);
                }
            }
        }
        let peers = self.nodes[n].durable.peers.clone();
        if let Some(m) = self.nodes[n].mesh.as_mut() {
            m.handle_restored_peers(now, peers);
        }
        if discover {
            self.discover_neighbours(n);
        }
        self.pump(n);
    }

    /// Delivers what a link held while it was silent, in order, once it carries again.
    fn release_held(&mut self, l: usize) {
        let latency = self.sc.links[l].latency_ms;
        for (to, from, epoch, bytes) in self.held.remove(&l).unwrap_or_default() {
            let at =
                (self.now + latency).max(self.last_delivery.get(&(from, to)).copied().unwrap_or(0));
            self.last_delivery.insert((from, to), at);
            self.schedule(
                at,
                Ev::Deliver {
                    to,
                    from,
                    epoch,
                    bytes,
                },
            );
        }
    }

    /// What each of node `i`'s links hears: every link that carries and whose far end runs
    /// (keep-alives flow both ways every second; the driver reports four times a second).
    fn hear(&mut self, i: usize) {
        let now = self.now;
        let heard: Vec<NodeId> = self
            .mesh_links
            .keys()
            .filter_map(|(a, b)| {
                let j = if *a == i {
                    *b
                } else if *b == i {
                    *a
                } else {
                    return None;
                };
                let carries = self.link_of.get(&(i, j)).is_some_and(|l| self.link_up[*l]);
                (carries && self.alive(j)).then(|| self.nodes[j].id)
            })
            .collect();
        if let Some(m) = self.nodes[i].mesh.as_mut() {
            for peer in heard {
                m.handle_link_heard(now, peer);
            }
        }
    }

    fn fetch(&mut self, u: usize) {
        let now = self.now;
        let next = now + self.sc.cfg.fetch_interval_ms;
        self.schedule(next, Ev::Fetch(u));
        let Some(n) = self.users[u].node.filter(|x| self.alive(*x)) else {
            return;
        };
        let ident = self.users[u].ident;
        let mail: Vec<(u64, Mail)> = self.nodes[n]
            .durable
            .mailboxes
            .get(&ident)
            .map(|m| {
                m.iter()
                    .filter(|(_, x)| x.deadline > now)
                    .map(|(k, v)| (*k, v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let Some(upto) = mail.last().map(|(k, _)| *k) else {
            return;
        };
        for (_, m) in mail {
            if !self.users[u].seen.insert(m.message_id) {
                self.report.duplicate_fetches += 1;
                continue;
            }
            let Some(s) = self.sent.get_mut(&m.n) else {
                continue;
            };
            s.shown += 1;
            if s.shown > 1 {
                self.report.shown_twice += 1;
            }
            // Expiry against the true clock; only retransmission delay beyond the RTT charged
            // at each hop can make a message outlive its TTL, by no more than that delay.
            let allowance = self.excess.get(&m.n).copied().unwrap_or(0);
            if s.deadline + allowance <= now {
                self.report.shown_after_expiry += 1;
            }
            if s.long {
                self.report.delivered_long += 1;
            } else {
                self.report.delivered_short += 1;
            }
            self.latencies.push(now.saturating_sub(m.sent_at));
            self.report
                .shown
                .push((m.n, m.sent_at, now.saturating_sub(m.sent_at)));
            self.report.shortest_path_hops += self.sc.distance(m.origin, n);
        }
        self.write(n, Write::Ack { user: ident, upto });
    }

    fn run(mut self) -> Report {
        let end = self.sc.cfg.chaos_ms + self.sc.cfg.settle_ms;
        while let Some(Reverse((t, _, k))) = self.queue.pop() {
            if t > end {
                break;
            }
            self.now = t;
            let Some(ev) = self.events.get_mut(k).and_then(Option::take) else {
                continue;
            };
            match ev {
                Ev::Scenario(k) => self.scenario_event(k),
                Ev::Timer(i) => {
                    if self.nodes[i].timer_at == Some(t) {
                        self.nodes[i].timer_at = None;
                        self.hear(i);
                        if let Some(m) = self.nodes[i].mesh.as_mut() {
                            m.handle_timeout(t);
                        }
                        self.pump(i);
                    }
                }
                Ev::Deliver {
                    to,
                    from,
                    epoch,
                    bytes,
                } => {
                    let key = (to.min(from), to.max(from));
                    if self.mesh_links.get(&key) != Some(&epoch) {
                        continue;
                    }
                    let from_id = self.nodes[from].id;
                    let msg = wire::decode(&bytes);
                    if let Some(m) = self.nodes[to].mesh.as_mut() {
                        match msg {
                            Ok(msg) => m.handle_message(t, from_id, msg),
                            Err(_) => m.handle_malformed(t, from_id),
                        }
                    }
                    self.pump(to);
                }
                Ev::LinkUp { a, b, epoch } => {
                    let key = (a.min(b), a.max(b));
                    let link = self.link_of.get(&(a, b)).copied();
                    if self.mesh_links.contains_key(&key)
                        || !link.is_some_and(|l| self.link_up[l])
                        || !self.alive(a)
                        || !self.alive(b)
                    {
                        if let Some(m) = self.nodes[a].mesh.as_mut() {
                            m.handle_dial_failed(t, node_id(b), "no link");
                        }
                        self.pump(a);
                        continue;
                    }
                    self.mesh_links.insert(key, epoch);
                    let (ia, ib) = (self.nodes[a].id, self.nodes[b].id);
                    // An end that still has a link to the other (its far end restarted and
                    // it has not noticed) drops it for the new one, as the driver does.
                    for (x, y) in [(a, ib), (b, ia)] {
                        if let Some(m) = self.nodes[x].mesh.as_mut()
                            && m.neighbours().contains(&y)
                        {
                            m.handle_link_down(t, y);
                        }
                    }
                    let ok_a = self.nodes[a]
                        .mesh
                        .as_mut()
                        .is_some_and(|m| m.handle_link_up(t, ib, Some(addr(b))));
                    let ok_b = self.nodes[b]
                        .mesh
                        .as_mut()
                        .is_some_and(|m| m.handle_link_up(t, ia, Some(addr(a))));
                    if !(ok_a && ok_b) {
                        self.link_down_mesh(a, b);
                    }
                    self.pump(a);
                    self.pump(b);
                }
                Ev::DialFailed {
                    node,
                    peer,
                    incarnation,
                } => {
                    if self.nodes[node].incarnation != incarnation {
                        continue;
                    }
                    let pid = self.nodes[peer].id;
                    if let Some(m) = self.nodes[node].mesh.as_mut() {
                        m.handle_dial_failed(t, pid, "unreachable");
                    }
                    self.pump(node);
                }
                Ev::WriteDone {
                    node,
                    incarnation,
                    op,
                } => {
                    // A crash in between lost the write.
                    if self.nodes[node].incarnation != incarnation || !self.alive(node) {
                        continue;
                    }
                    self.apply_write(node, *op);
                    self.pump(node);
                }
                Ev::Fetch(u) => self.fetch(u),
            }
        }
        for (n, s) in &self.sent {
            if s.acked {
                self.report.acknowledged += 1;
                if s.long {
                    self.report.acknowledged_long += 1;
                    if s.shown == 0 {
                        self.report.lost.push(*n);
                    }
                }
            }
        }
        self.report.lost.sort_unstable();
        self.latencies.sort_unstable();
        self.report.median_latency_ms = self
            .latencies
            .get(self.latencies.len() / 2)
            .copied()
            .unwrap_or(0);
        self.report
    }
}

/// Plays a scenario with Ferry's core on every node.
pub fn run(sc: &Scenario) -> Report {
    World::new(sc).run()
}

/// What epidemic flooding cost on a scenario.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodReport {
    /// Message transmissions.
    pub transmissions: u64,
    /// Messages that reached their recipient's node.
    pub delivered: u64,
}

impl FloodReport {
    /// Transmissions per delivered message.
    pub fn per_delivered(&self) -> f64 {
        self.transmissions as f64 / self.delivered.max(1) as f64
    }
}

/// Plays the same scenario with epidemic flooding: every node copies every message it lacks
/// from every neighbour it has a link to (summary vectors on contact, forwarding on receipt),
/// the DTN baseline without routing.
pub fn run_flooding(sc: &Scenario) -> FloodReport {
    let n = sc.cfg.nodes.max(2);
    let mut up = vec![true; sc.links.len()];
    let mut alive = vec![true; n];
    let mut have: Vec<Set<u64>> = vec![Set::default(); n];
    let mut user_at: Vec<Option<usize>> = vec![None; sc.cfg.users];
    let mut target: Map<u64, usize> = Map::default();
    let mut delivered: Set<u64> = Set::default();
    let mut report = FloodReport::default();
    let adj = sc.neighbours();
    // Copies spread at once over live links (flooding forwards on receipt, and exchanges
    // summary vectors on contact), so after each event only nodes that gained something, or a
    // link, need to be looked at again.
    let mut work: VecDeque<usize> = VecDeque::new();
    for (_, ev) in &sc.events {
        match ev {
            ScenarioEvent::LinkDown(l) | ScenarioEvent::LinkSilent(l) => up[*l] = false,
            ScenarioEvent::LinkUp(l) => {
                up[*l] = true;
                work.push_back(sc.links[*l].a);
                work.push_back(sc.links[*l].b);
            }
            ScenarioEvent::Crash(x) | ScenarioEvent::CrashSilent(x) => alive[*x] = false,
            ScenarioEvent::Restart(x) | ScenarioEvent::RestartAlone(x) => {
                alive[*x] = true;
                work.push_back(*x);
                work.extend(adj[*x].iter().map(|(y, _)| *y));
            }
            ScenarioEvent::Attach { user, node } => user_at[*user] = Some(*node),
            ScenarioEvent::Send { from, to, n: m, .. } => {
                if let Some(x) = user_at[*from].filter(|x| alive[*x]) {
                    have[x].insert(*m);
                    target.insert(*m, *to);
                    work.push_back(x);
                }
            }
            ScenarioEvent::HealAll => {
                up.iter_mut().for_each(|u| *u = true);
                alive.iter_mut().for_each(|a| *a = true);
                work.extend(0..n);
            }
        }
        while let Some(x) = work.pop_front() {
            if !alive[x] {
                continue;
            }
            for (y, l) in &adj[x] {
                if !up[*l] || !alive[*y] {
                    continue;
                }
                let missing: Vec<u64> = have[x]
                    .iter()
                    .filter(|m| !have[*y].contains(*m))
                    .copied()
                    .collect();
                if !missing.is_empty() {
                    report.transmissions += missing.len() as u64;
                    have[*y].extend(missing);
                    work.push_back(*y);
                }
            }
        }
        for (m, to) in &target {
            if let Some(x) = user_at[*to]
                && have[x].contains(m)
            {
                delivered.insert(*m);
            }
        }
    }
    report.delivered = delivered.len() as u64;
    report
}
