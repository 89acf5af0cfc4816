//! `ferry-bench attack`: the attacks of a hostile client on a router's open Wi-Fi, one at a
//! time against a running node, while a well-behaved client at another address measures what
//! they cost everyone else: its round-trip latency (enqueue a message to itself, fetch it,
//! acknowledge it) without any attack and during each, its errors, and the node's memory.
//!
//! Attackers take their source addresses from 127.0.0.2 on (the node sees each as another
//! host); the well-behaved client is 127.0.0.1. The node keeps its default limits, so what is
//! measured is what an operator gets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_client::{Client, ConnectOptions, Identity, Trust};
use ferry_proto::Method;
use ferry_proto::frame::{RequestHeader, encode_request};
use ferry_proto::qpq::v1 as pb;
use ferry_proto::types::{Fingerprint, MailboxAddr};
use prost::Message;
use tokio::sync::watch;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct AttackArgs {
    /// The node's client address (on loopback: attackers use other 127.0.0.0/8 addresses).
    #[arg(long, default_value = "127.0.0.1:5001")]
    node: String,
    /// The node's certificate fingerprint (`ferry status` prints it).
    #[arg(long)]
    pin: String,
    /// The node's process id, to read its memory from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Seconds each attack runs (and the baseline).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Run only these attacks (comma-separated names).
    #[arg(long)]
    only: Option<String>,
}

/// What one phase showed.
struct Phase {
    name: &'static str,
    what: &'static str,
    victim: Latencies,
    rss_peak: Option<u64>,
    attack: Counts,
}

#[derive(Default)]
struct Latencies {
    ms: Vec<f64>,
    errors: u64,
}

impl Latencies {
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i.min(v.len() - 1)]
    }
}

/// What the attacker saw.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    refused: AtomicU64,
}

fn opts(pin: Fingerprint) -> ConnectOptions {
    ConnectOptions::with_trust(Trust::Pinned(pin))
}

/// A client from `ip` (its own endpoint, kept with it).
async fn client_from(node: &str, pin: Fingerprint, ip: [u8; 4]) -> anyhow::Result<Client> {
    let bind = SocketAddr::from((ip, 0));
    let endpoint = quinn::Endpoint::client(bind)?;
    Ok(Client::connect_on(&endpoint, node, &opts(pin)).await?)
}

async fn user_from(
    node: &str,
    pin: Fingerprint,
    ip: [u8; 4],
) -> anyhow::Result<(Client, Identity)> {
    let c = client_from(node, pin, ip).await?;
    let id = Identity::generate()?;
    c.authenticate(&id).await?;
    Ok((c, id))
}

fn enqueue_req(to: &Identity, payload: Vec<u8>) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        recipient_key: to.public_key().as_bytes().to_vec(),
        payload,
        ..Default::default()
    }
}

/// The well-behaved client: every 100 ms, enqueue 100 bytes to itself, fetch, acknowledge
/// (30 requests a second, within the node's default rate limit of 50 per address).
async fn victim(node: &str, pin: Fingerprint, until: Instant) -> Latencies {
    let mut out = Latencies::default();
    let mut conn: Option<(Client, Identity)> = None;
    while Instant::now() < until {
        let t = Instant::now();
        let round = async {
            if conn.is_none() {
                conn = Some(user_from(node, pin, [127, 0, 0, 1]).await?);
            }
            let Some((c, id)) = conn.as_ref() else {
                anyhow::bail!("not connected");
            };
            c.enqueue(&enqueue_req(id, vec![7; 100])).await?;
            let mb = MailboxAddr::default_for(id.public_key());
            let got = c.fetch(&mb, 64).await?;
            if let Some(last) = got.last() {
                c.ack(&mb, last.seq).await?;
            }
            anyhow::Ok(())
        }
        .await;
        match round {
            Ok(()) => out.ms.push(t.elapsed().as_secs_f64() * 1000.0),
            Err(_) => {
                out.errors += 1;
                conn = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(100).saturating_sub(t.elapsed())).await;
    }
    out
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sends raw bytes on a new stream, reads the answer's status (or nothing).
async fn raw(c: &Client, frame: &[u8]) -> Option<u8> {
    let (mut s, mut r) = c.connection().open_bi().await.ok()?;
    s.write_all(frame).await.ok()?;
    let _ = s.finish();
    let mut hdr = [0u8; 9];
    r.read_exact(&mut hdr).await.ok()?;
    Some(hdr[0])
}

type Stop = watch::Receiver<bool>;

/// Runs `f` in `n` copies until stopped.
fn spawn_many<F, Fut>(n: usize, stop: &Stop, f: F) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(usize, Stop) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    (0..n).map(|i| tokio::spawn(f(i, stop.clone()))).collect()
}

fn stopped(stop: &Stop) -> bool {
    *stop.borrow()
}

/// One BatchEnqueue frame of 256 recipients and a payload filling the 4 MiB frame.
fn batch_frame() -> Vec<u8> {
    let recipients: Vec<Vec<u8>> = (0..256u16)
        .map(|i| {
            let mut k = [1u8; 32];
            k[..2].copy_from_slice(&i.to_be_bytes());
            k.to_vec()
        })
        .collect();
    let req = pb::BatchEnqueueRequest {
        recipient_keys: recipients,
        payload: vec![9; 4 * 1024 * 1024 - 16 * 1024],
        ..Default::default()
    };
    encode_request(Method::BatchEnqueue.id(), 1, &req.encode_to_vec()).unwrap_or_default()
}

/// An EnqueueMany of 2,097,150 empty entries: a frame just under 4 MiB.
fn repeated_frame() -> Vec<u8> {
    let body = [0x0a, 0x00].repeat(2_097_150);
    encode_request(Method::EnqueueMany.id(), 1, &body).unwrap_or_default()
}

async fn attack_frames(
    node: String,
    pin: Fingerprint,
    ip: [u8; 4],
    frame: Arc<Vec<u8>>,
    counts: Arc<Counts>,
    stop: Stop,
) {
    while !stopped(&stop) {
        let Ok((c, _)) = user_from(&node, pin, ip).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !stopped(&stop) {
            counts.sent.fetch_add(1, Ordering::Relaxed);
            match raw(&c, &frame).await {
                Some(0) => {}
                Some(_) => {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                }
                None => break,
            }
        }
    }
}

/// Stores a 3.8 MiB message to itself, then asks for it on 64 streams and reads nothing.
async fn attack_unread(
    node: String,
    pin: Fingerprint,
    ip: [u8; 4],
    counts: Arc<Counts>,
    mut stop: Stop,
) {
    while !stopped(&stop) {
        let Ok((c, id)) = user_from(&node, pin, ip).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if c.enqueue(&enqueue_req(&id, vec![3; 3_800_000]))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let peek = pb::PeekRequest {
            recipient_key: id.public_key().as_bytes().to_vec(),
            limit: 1,
            ..Default::default()
        };
        let frame = encode_request(Method::Peek.id(), 1, &peek.encode_to_vec()).unwrap_or_default();
        let mut held = Vec::new();
        for _ in 0..64 {
            let Ok((mut s, r)) = c.connection().open_bi().await else {
                break;
            };
            counts.sent.fetch_add(1, Ordering::Relaxed);
            if s.write_all(&frame).await.is_err() {
                break;
            }
            let _ = s.finish();
            held.push((s, r));
        }
        tokio::select! {
            _ = c.connection().closed() => { counts.refused.fetch_add(1, Ordering::Relaxed); }
            _ = stop.changed() => {}
        }
        drop(held);
    }
}

/// 16 long polls of a minute on a connection, renewed as they end.
async fn attack_long_polls(
    node: String,
    pin: Fingerprint,
    ip: [u8; 4],
    counts: Arc<Counts>,
    stop: Stop,
) {
    while !stopped(&stop) {
        let Ok((c, id)) = user_from(&node, pin, ip).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let c = Arc::new(c);
        let mb = MailboxAddr::default_for(id.public_key());
        let polls: Vec<_> = (0..16)
            .map(|_| {
                let (c, counts, stop) = (Arc::clone(&c), Arc::clone(&counts), stop.clone());
                tokio::spawn(async move {
                    while !stopped(&stop) {
                        counts.sent.fetch_add(1, Ordering::Relaxed);
                        match c.fetch_wait(&mb, 1, Duration::from_secs(60)).await {
                            Ok(_) => {}
                            Err(e) if e.status_code().is_some() => {
                                counts.refused.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        for p in polls {
            let _ = p.await;
        }
    }
}

/// Streams that declare a 4 MiB body and send a byte a second.
async fn attack_slow_bodies(
    node: String,
    pin: Fingerprint,
    ip: [u8; 4],
    counts: Arc<Counts>,
    stop: Stop,
) {
    while !stopped(&stop) {
        let Ok((c, _)) = user_from(&node, pin, ip).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let header = RequestHeader {
            method_id: Method::Enqueue.id(),
            request_id: 1,
            declared_len: 4 * 1024 * 1024,
        }
        .to_bytes();
        let mut streams = Vec::new();
        for _ in 0..8 {
            if let Ok((mut s, r)) = c.connection().open_bi().await
                && s.write_all(&header).await.is_ok()
            {
                counts.sent.fetch_add(1, Ordering::Relaxed);
                streams.push((s, r));
            }
        }
        while !stopped(&stop) && !streams.is_empty() {
            let mut alive = Vec::new();
            for (mut s, r) in streams {
                if s.write_all(&[0]).await.is_ok() {
                    alive.push((s, r));
                } else {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            streams = alive;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Connections as fast as the node takes them, kept open and never authenticated.
async fn attack_connections(
    node: String,
    pin: Fingerprint,
    ip: [u8; 4],
    counts: Arc<Counts>,
    stop: Stop,
) {
    let mut held = Vec::new();
    let Ok(endpoint) = quinn::Endpoint::client(SocketAddr::from((ip, 0))) else {
        return;
    };
    while !stopped(&stop) && held.len() < 4096 {
        counts.sent.fetch_add(1, Ordering::Relaxed);
        match Client::connect_on(&endpoint, &node, &opts(pin)).await {
            Ok(c) => held.push(c),
            Err(_) => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let mut stop = stop;
    let _ = stop.changed().await;
    let refused_later = held
        .iter()
        .filter(|c| c.connection().close_reason().is_some())
        .count();
    counts
        .refused
        .fetch_add(refused_later as u64, Ordering::Relaxed);
}

/// The attacks, each with the addresses it uses.
const ATTACKS: [(&str, &str); 6] = [
    (
        "batch",
        "BatchEnqueue: 256 recipients x 4 MiB payload, 4 streams from 1 address",
    ),
    (
        "repeated",
        "EnqueueMany of 2,097,150 empty entries, 4 streams from 1 address",
    ),
    (
        "unread",
        "4 connections from 1 address: 64 Peeks of a 3.8 MiB message each, never read",
    ),
    (
        "long-polls",
        "3 addresses x 16 connections x 16 FetchWaits of 60 s",
    ),
    (
        "slow-bodies",
        "4 addresses x 8 streams declaring 4 MiB, sending 1 byte/s",
    ),
    (
        "connections",
        "1 address opening unauthenticated connections as fast as it may, up to 4096",
    ),
];

fn start(
    name: &str,
    node: &str,
    pin: Fingerprint,
    counts: &Arc<Counts>,
    stop: &Stop,
) -> Vec<tokio::task::JoinHandle<()>> {
    let node = node.to_string();
    let c = Arc::clone(counts);
    match name {
        "batch" | "repeated" => {
            let frame = Arc::new(if name == "batch" {
                batch_frame()
            } else {
                repeated_frame()
            });
            spawn_many(4, stop, move |_, s| {
                attack_frames(
                    node.clone(),
                    pin,
                    [127, 0, 0, 2],
                    Arc::clone(&frame),
                    Arc::clone(&c),
                    s,
                )
            })
        }
        "unread" => spawn_many(4, stop, move |_, s| {
            attack_unread(node.clone(), pin, [127, 0, 0, 3], Arc::clone(&c), s)
        }),
        "long-polls" => spawn_many(48, stop, move |i, s| {
            let ip = [127, 0, 0, 4 + (i % 3) as u8];
            attack_long_polls(node.clone(), pin, ip, Arc::clone(&c), s)
        }),
        "slow-bodies" => spawn_many(4, stop, move |i, s| {
            attack_slow_bodies(
                node.clone(),
                pin,
                [127, 0, 0, 7 + i as u8],
                Arc::clone(&c),
                s,
            )
        }),
        "connections" => spawn_many(1, stop, move |_, s| {
            attack_connections(node.clone(), pin, [127, 0, 0, 11], Arc::clone(&c), s)
        }),
        _ => Vec::new(),
    }
}

async fn phase(a: &AttackArgs, pin: Fingerprint, name: &'static str, what: &'static str) -> Phase {
    let (stop_tx, stop) = watch::channel(false);
    let counts = Arc::new(Counts::default());
    let tasks = start(name, &a.node, pin, &counts, &stop);
    let until = Instant::now() + Duration::from_secs(a.seconds);
    let sampler = a.pid.map(|pid| {
        tokio::spawn(async move {
            let mut peak = 0;
            while Instant::now() < until {
                peak = peak.max(rss_bytes(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    });
    // The attack gets a head start of a second, as it would in life.
    if !tasks.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let v = victim(&a.node, pin, until).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        t.abort();
    }
    let rss_peak = match sampler {
        Some(s) => s.await.ok(),
        None => None,
    };
    let attack = Counts {
        sent: AtomicU64::new(counts.sent.load(Ordering::Relaxed)),
        refused: AtomicU64::new(counts.refused.load(Ordering::Relaxed)),
    };
    // Let the node let go of what the attack held.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Phase {
        name,
        what,
        victim: v,
        rss_peak,
        attack,
    }
}

pub(crate) async fn run(a: AttackArgs) -> anyhow::Result<()> {
    let pin: Fingerprint = a.pin.parse()?;
    let only: Option<Vec<&str>> = a.only.as_deref().map(|o| o.split(',').collect());
    let idle_rss = a.pid.and_then(rss_bytes);
    let mut phases = vec![phase(&a, pin, "none", "no attack").await];
    for (name, what) in ATTACKS {
        if only.as_ref().is_some_and(|o| !o.contains(&name)) {
            continue;
        }
        eprintln!("attack: {name}");
        phases.push(phase(&a, pin, name, what).await);
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    crate::print_json(&serde_json::json!({
        "idle_rss_mib": idle_rss.map(mib),
        "phases": phases.iter().map(|p| serde_json::json!({
            "attack": p.name,
            "what": p.what,
            "victim_rounds": p.victim.ms.len(),
            "victim_errors": p.victim.errors,
            "victim_p50_ms": p.victim.pct(0.5),
            "victim_p99_ms": p.victim.pct(0.99),
            "victim_max_ms": p.victim.pct(1.0),
            "node_rss_peak_mib": p.rss_peak.map(mib),
            "attack_requests": p.attack.sent.load(Ordering::Relaxed),
            "attack_refused": p.attack.refused.load(Ordering::Relaxed),
        })).collect::<Vec<_>>(),
    }));
    Ok(())
}
