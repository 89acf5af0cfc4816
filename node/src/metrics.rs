//! Prometheus metrics. Counters are plain 64-bit atomics (portable to 32-bit routers) encoded
//! at scrape time together with figures read from the store; histograms and the per-method
//! request family use prometheus-client's own types.
//!
//! Names follow qpq's (`enqueue_total`, `fetch_total`, `delivery_queue_depth`, ...) so its
//! dashboards and alert rules work unchanged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_mesh::driver::MeshHandle;
use ferry_mesh::driver::federation::Federation;
use ferry_proto::{Method, Status};
use ferry_store::{CommitObserver, Store};
use portable_atomic::{AtomicU64, Ordering};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Counters kept by the node.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) enqueue: AtomicU64,
    pub(crate) enqueue_bytes: AtomicU64,
    pub(crate) enqueue_duplicate: AtomicU64,
    pub(crate) fetch: AtomicU64,
    pub(crate) fetch_wait: AtomicU64,
    pub(crate) peek: AtomicU64,
    pub(crate) ack: AtomicU64,
    pub(crate) rate_limit_hit: AtomicU64,
    pub(crate) auth_success: AtomicU64,
    pub(crate) auth_failure: AtomicU64,
    pub(crate) push_sent: AtomicU64,
    pub(crate) push_skipped: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) open_connections: AtomicU64,
    pub(crate) resource_exhausted: AtomicU64,
    pub(crate) enqueue_mesh: AtomicU64,
    pub(crate) attach: AtomicU64,
    pub(crate) broadcast_published: AtomicU64,
    pub(crate) federation_relayed: AtomicU64,
    pub(crate) federation_relay_refused_quota: AtomicU64,
}

/// A bound on what clients may hold (see `budget.rs` and docs/limits.md); each refusal is
/// counted in `limit_refused_total{limit}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// A new connection from an address that has `max_connections_per_address` open.
    ConnectionsPerAddress,
    /// A new connection from an address over its `connection_rate`.
    ConnectionRate,
    /// A connection closed for not authenticating within `auth_timeout_secs`.
    AuthTimeout,
    /// A request from an address with its share of the requests in flight.
    RequestsPerAddress,
    /// A long poll over the node's, the address's or the connection's count.
    LongPolls,
    /// A request body past its address's share of the body pool.
    BodyBytesPerAddress,
    /// A request body that stopped arriving.
    BodyStalled,
    /// An answer past its address's share of the answer pool.
    AnswerBytesPerAddress,
    /// An answer the node-wide pools could not take in time.
    Busy,
    /// A connection closed for not reading its answers.
    AnswerStalled,
}

impl Limit {
    pub(crate) const ALL: [Limit; 10] = [
        Limit::ConnectionsPerAddress,
        Limit::ConnectionRate,
        Limit::AuthTimeout,
        Limit::RequestsPerAddress,
        Limit::LongPolls,
        Limit::BodyBytesPerAddress,
        Limit::BodyStalled,
        Limit::AnswerBytesPerAddress,
        Limit::Busy,
        Limit::AnswerStalled,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Limit::ConnectionsPerAddress => "connections_per_address",
            Limit::ConnectionRate => "connection_rate",
            Limit::AuthTimeout => "auth_timeout",
            Limit::RequestsPerAddress => "requests_per_address",
            Limit::LongPolls => "long_polls",
            Limit::BodyBytesPerAddress => "body_bytes_per_address",
            Limit::BodyStalled => "body_stalled",
            Limit::AnswerBytesPerAddress => "answer_bytes_per_address",
            Limit::Busy => "busy",
            Limit::AnswerStalled => "answer_stalled",
        }
    }
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Rows of the request table: every known method, then unknown ids, then frames too
/// malformed to name a method.
const METHOD_ROWS: usize = Method::ALL.len() + 2;
const STATUS_COLS: usize = Status::ALL.len();

/// `requests_total{method, status}` as a fixed table of counters: no allocation and no lock
/// per request.
#[derive(Debug)]
pub(crate) struct Requests {
    counts: Vec<AtomicU64>,
}

impl Requests {
    fn new() -> Self {
        Self {
            counts: (0..METHOD_ROWS * STATUS_COLS)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    fn row(method: Option<Method>, malformed: bool) -> usize {
        match method {
            _ if malformed => METHOD_ROWS - 1,
            Some(m) => Method::ALL
                .iter()
                .position(|x| *x == m)
                .unwrap_or(METHOD_ROWS - 2),
            None => METHOD_ROWS - 2,
        }
    }

    fn label(row: usize) -> &'static str {
        match Method::ALL.get(row) {
            Some(m) => m.name(),
            None if row == METHOD_ROWS - 2 => "unknown",
            None => "malformed",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) c: Counters,
    requests: Requests,
    refused: [AtomicU64; Limit::ALL.len()],
    commit_seconds: Histogram,
    commit_ops: Histogram,
    started: Instant,
}

impl Metrics {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            c: Counters::default(),
            requests: Requests::new(),
            refused: Default::default(),
            // 50 µs .. ~3.3 s
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
            // 1 .. 4096 operations
            commit_ops: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            started: Instant::now(),
        })
    }

    /// Counts a refusal by one of the bounds on what clients may hold.
    pub(crate) fn refused(&self, limit: Limit) {
        if let Some(i) = Limit::ALL.iter().position(|l| *l == limit)
            && let Some(c) = self.refused.get(i)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refusals so far by `limit`.
    pub(crate) fn refusals(&self, limit: Limit) -> u64 {
        Limit::ALL
            .iter()
            .position(|l| *l == limit)
            .and_then(|i| self.refused.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts one answered request. `malformed`: no method could be read from the frame.
    pub(crate) fn request(&self, method: Option<Method>, malformed: bool, status: Status) {
        let col = Status::ALL.iter().position(|s| *s == status).unwrap_or(0);
        let i = Requests::row(method, malformed) * STATUS_COLS + col;
        if let Some(c) = self.requests.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Feeds the store's commit timings into the histograms.
#[derive(Debug)]
pub(crate) struct CommitHook(pub(crate) Arc<Metrics>);

impl CommitObserver for CommitHook {
    fn committed(&self, ops: usize, elapsed: Duration, ok: bool) {
        if ok {
            self.0.commit_seconds.observe(elapsed.as_secs_f64());
            self.0.commit_ops.observe(ops as f64);
        }
    }
}

/// Encodes the atomics and the store's figures on every scrape.
#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    store: Store,
    mesh: Option<MeshHandle>,
    federation: Option<Arc<Federation>>,
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let m = ConstCounter::new(v);
    let e = enc.encode_descriptor(name, help, None, m.metric_type())?;
    m.encode(e)
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: i64,
) -> Result<(), std::fmt::Error> {
    let m = ConstGauge::new(v);
    let e = enc.encode_descriptor(name, help, None, m.metric_type())?;
    m.encode(e)
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let c = &self.metrics.c;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        {
            let m = ConstCounter::new(0u64);
            let mut family = enc.encode_descriptor(
                "requests",
                "RPCs answered, by method and status.",
                None,
                m.metric_type(),
            )?;
            for (i, count) in self.metrics.requests.counts.iter().enumerate() {
                let n = count.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let status = Status::ALL
                    .get(i % STATUS_COLS)
                    .map(|s| s.name())
                    .unwrap_or("?");
                let labels = [
                    ("method", Requests::label(i / STATUS_COLS)),
                    ("status", status),
                ];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let m = ConstCounter::new(0u64);
            let mut family = enc.encode_descriptor(
                "limit_refused",
                "Connections closed and requests refused by a bound on what one client may hold (docs/limits.md).",
                None,
                m.metric_type(),
            )?;
            for limit in Limit::ALL {
                ConstCounter::new(self.metrics.refusals(limit))
                    .encode(family.encode_family(&[("limit", limit.name())])?)?;
            }
        }
        let counters: [(&str, &str, &AtomicU64); 20] = [
            (
                "federation_relayed",
                "Messages a hub took from another node with RelayEnqueue/RelayBatchEnqueue.",
                &c.federation_relayed,
            ),
            (
                "federation_relay_refused_quota",
                "Relayed messages refused because the origin node had its per-edge quota in custody.",
                &c.federation_relay_refused_quota,
            ),
            (
                "enqueue",
                "Messages enqueued (stored or recognised as duplicates).",
                &c.enqueue,
            ),
            ("enqueue_bytes", "Payload bytes enqueued.", &c.enqueue_bytes),
            (
                "enqueue_duplicate",
                "Enqueues recognised as retries of a stored message id.",
                &c.enqueue_duplicate,
            ),
            ("fetch", "Fetch calls completed.", &c.fetch),
            (
                "fetch_wait",
                "FetchWait long polls completed.",
                &c.fetch_wait,
            ),
            ("peek", "Peek calls completed.", &c.peek),
            ("ack", "Ack calls completed.", &c.ack),
            (
                "rate_limit_hit",
                "Requests refused by the per-IP rate limit.",
                &c.rate_limit_hit,
            ),
            (
                "auth_login_success",
                "Connections that proved their identity.",
                &c.auth_success,
            ),
            (
                "auth_login_failure",
                "Failed authentication attempts.",
                &c.auth_failure,
            ),
            ("push_sent", "NewMessage push events sent.", &c.push_sent),
            (
                "push_skipped",
                "Push events skipped because a connection had too many in flight.",
                &c.push_skipped,
            ),
            (
                "connections",
                "Client connections accepted.",
                &c.connections,
            ),
            (
                "connections_refused",
                "Client connections refused (limit reached or draining).",
                &c.connections_refused,
            ),
            (
                "resource_exhausted",
                "Writes refused because a quota or the disk was full.",
                &c.resource_exhausted,
            ),
            (
                "enqueue_mesh",
                "Messages for users elsewhere handed to the mesh (custody).",
                &c.enqueue_mesh,
            ),
            (
                "mesh_attach",
                "Presence claims taken from local users (Attach).",
                &c.attach,
            ),
            (
                "broadcast_published",
                "Broadcasts published by local clients.",
                &c.broadcast_published,
            ),
        ];
        for (name, help, v) in counters {
            counter(&mut enc, name, help, get(v))?;
        }
        gauge(
            &mut enc,
            "client_connections",
            "Open client connections.",
            signed(get(&c.open_connections)),
        )?;
        gauge(
            &mut enc,
            "uptime_seconds",
            "Seconds since the node started.",
            signed(self.metrics.started.elapsed().as_secs()),
        )?;
        {
            let m = ConstCounter::new(0u64);
            let mut family = enc.encode_descriptor(
                "udp_receive_drops",
                "Datagrams the kernel dropped for a full receive buffer, by the node's UDP port.",
                None,
                m.metric_type(),
            )?;
            for (port, drops) in crate::udp_drops::by_port() {
                let port = port.to_string();
                ConstCounter::new(drops)
                    .encode(family.encode_family(&[("port", port.as_str())])?)?;
            }
        }
        let w = self.store.writer_stats();
        let store_counters: [(&str, &str, u64); 10] = [
            (
                "store_commits",
                "Durable (fsync'd) group commits, through the write-ahead log or the database.",
                w.commits,
            ),
            (
                "store_checkpoints",
                "Durable database commits (each empties the write-ahead log).",
                w.checkpoints,
            ),
            (
                "store_replayed_records",
                "Write-ahead log records applied again when the database was opened.",
                w.replayed_records,
            ),
            (
                "store_commit_ops",
                "Operations answered from group commits.",
                w.ops,
            ),
            (
                "store_failed_commits",
                "Group commits that failed, storing none of their operations (one that failed on a damaged row is retried an operation at a time).",
                w.failed_commits,
            ),
            (
                "store_bytes_written",
                "Bytes written to the database file and its write-ahead log: what wears flash.",
                w.bytes_written,
            ),
            (
                "store_fsyncs",
                "fsync calls on the database file and its write-ahead log.",
                w.syncs,
            ),
            (
                "store_busy",
                "Writes refused because the writer queue was full.",
                w.busy,
            ),
            (
                "store_reopens",
                "Database reopens after an IO error.",
                w.reopens,
            ),
            (
                "store_commit_nanoseconds",
                "Total time spent in group commits.",
                w.commit_nanos,
            ),
        ];
        for (name, help, v) in store_counters {
            counter(&mut enc, name, help, v)?;
        }
        if let Some(mesh) = &self.mesh {
            encode_mesh(&mut enc, mesh)?;
        }
        if let Some(f) = &self.federation {
            counter(
                &mut enc,
                "federation_links_refused",
                "Federation handshakes refused: the node is not on the allow list.",
                f.refused(),
            )?;
        }
        gauge(
            &mut enc,
            "store_disk_full",
            "1 while the disk is full: new messages are refused, reads, acknowledgements and expiry go on.",
            i64::from(self.store.disk_full()),
        )?;
        if let Ok(s) = self.store.stats() {
            gauge(
                &mut enc,
                "delivery_queue_depth",
                "Messages stored in all mailboxes.",
                signed(s.messages),
            )?;
            gauge(
                &mut enc,
                "store_stored_bytes",
                "Accounted bytes of stored messages (quota units).",
                signed(s.bytes),
            )?;
            gauge(
                &mut enc,
                "store_file_bytes",
                "Size of the database file.",
                signed(s.file_bytes),
            )?;
            gauge(
                &mut enc,
                "store_mailboxes",
                "Mailboxes known to the store.",
                signed(s.mailboxes),
            )?;
            counter(
                &mut enc,
                "store_expired",
                "Messages removed by expiry.",
                s.expired_total,
            )?;
            gauge(
                &mut enc,
                "store_dedup_records",
                "Dedup records kept for messages no longer stored (each counts 100 bytes \
                 against max_total_bytes until its TTL).",
                signed(s.dedup_records),
            )?;
            gauge(
                &mut enc,
                "store_used_bytes",
                "What counts against max_total_bytes: stored messages, bundles in custody \
                 and dedup records.",
                signed(s.used_bytes),
            )?;
            counter(
                &mut enc,
                "store_dedup_forgotten",
                "Dedup records dropped before their TTL to make room (a retry of such a \
                 message is stored again).",
                s.dedup_forgotten_total,
            )?;
        }
        Ok(())
    }
}

fn encode_mesh(enc: &mut DescriptorEncoder<'_>, mesh: &MeshHandle) -> Result<(), std::fmt::Error> {
    let st = mesh.stats();
    let counters: [(&str, &str, u64); 18] = [
        (
            "mesh_refused_peer_quota",
            "Bundles refused because the sending neighbour (on a hub: an edge) had its \
             per-peer quota ([federation] per_edge_quota) in custody.",
            st.refused_peer_quota,
        ),
        ("mesh_links_up", "Mesh links that came up.", st.links_up),
        (
            "mesh_bundles_sent",
            "Bundles sent to neighbours.",
            st.bundles_sent,
        ),
        (
            "mesh_bundles_received",
            "Bundles received from neighbours.",
            st.bundles_received,
        ),
        (
            "mesh_delivered_local",
            "Bundles moved into local mailboxes.",
            st.delivered_local,
        ),
        (
            "mesh_custody_acks",
            "Custody acknowledgements received for our bundles.",
            st.custody_acks,
        ),
        (
            "mesh_expired",
            "Bundles dropped because they expired.",
            st.expired,
        ),
        (
            "mesh_hop_limit_drops",
            "Bundles dropped at their hop limit.",
            st.hop_limit_drops,
        ),
        (
            "mesh_refused",
            "Bundles refused (custody full or a neighbour over its quota).",
            st.refused,
        ),
        (
            "mesh_malformed",
            "Malformed link messages (each drops and penalises the peer).",
            st.malformed,
        ),
        (
            "mesh_peers_refused",
            "Peer-table additions refused (table full or a neighbour over its share).",
            st.peers_refused,
        ),
        (
            "mesh_presence_bad_signature",
            "Presence claims refused for a bad signature.",
            st.presence_bad_signature,
        ),
        (
            "mesh_presence_stale",
            "Presence claims older than the one known.",
            st.presence_stale,
        ),
        (
            "mesh_route_updates",
            "Route updates received.",
            st.route_updates,
        ),
        ("mesh_broadcasts", "Broadcasts kept.", st.broadcasts),
        (
            "mesh_broadcasts_rate_limited",
            "Broadcasts dropped by a topic's rate limit.",
            st.broadcasts_rate_limited,
        ),
        (
            "mesh_messages_sent",
            "Link messages sent.",
            st.messages_sent,
        ),
        (
            "mesh_mdns_garbage",
            "mDNS records that did not parse.",
            mesh.mdns_garbage(),
        ),
    ];
    for (name, help, v) in counters {
        counter(enc, name, help, v)?;
    }
    let sz = mesh.sizes();
    let gauges: [(&str, &str, u64); 6] = [
        ("mesh_links", "Mesh links up.", sz.links as u64),
        ("mesh_peers", "Peers in the peer table.", sz.peers as u64),
        ("mesh_routes", "Nodes in the route table.", sz.routes as u64),
        (
            "mesh_presence",
            "Users in the presence table.",
            sz.presence as u64,
        ),
        (
            "mesh_custody_bundles",
            "Bundles held in custody for the mesh.",
            sz.custody as u64,
        ),
        (
            "mesh_custody_bytes",
            "Payload bytes held in custody.",
            sz.custody_bytes,
        ),
    ];
    for (name, help, v) in gauges {
        gauge(enc, name, help, signed(v))?;
    }
    Ok(())
}

/// The registry served at `/metrics`.
pub(crate) fn registry(
    metrics: &Arc<Metrics>,
    store: &Store,
    mesh: Option<MeshHandle>,
    federation: Option<Arc<Federation>>,
) -> Registry {
    let mut r = Registry::default();
    r.register(
        "store_commit_seconds",
        "Duration of durable group commits.",
        metrics.commit_seconds.clone(),
    );
    r.register(
        "store_commit_batch_ops",
        "Operations per group commit.",
        metrics.commit_ops.clone(),
    );
    r.register_collector(Box::new(Scrape {
        metrics: Arc::clone(metrics),
        store: store.clone(),
        mesh,
        federation,
    }));
    r
}
