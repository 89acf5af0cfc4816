//! Ferry through the client library: Enqueue (answered after the fsync'd group commit) or,
//! with `--batch`, the library's `Batcher` (EnqueueMany, answered per message after the same
//! commit), FetchWait and Ack. Payloads are opaque bytes: the node never looks inside, and sealing
//! them would measure the benchmark's CPU, not the node.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_client::loadgen::{self, Sender};
use ferry_client::{Client, ConnectOptions, Identity, Trust};
use ferry_proto::qpq::v1 as pb;
use ferry_proto::types::MailboxAddr;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Semaphore;

use crate::stats::{Outcome, Recorder};
use crate::{Target, Workload};

struct Conn {
    endpoint: quinn::Endpoint,
    opts: ConnectOptions,
    addr: String,
}

impl Conn {
    async fn new(t: &Target) -> anyhow::Result<Self> {
        let sock = tokio::net::lookup_host(&t.addr)
            .await?
            .next()
            .context("resolving --addr")?;
        // Trust on first use, kept in the state directory: a restarted node keeps its
        // certificate, so the crash runs reconnect to the same one.
        let opts = ConnectOptions::with_trust(Trust::KnownNodes(t.state_dir.join("known_nodes")));
        Ok(Self {
            endpoint: Client::endpoint_for(&sock)?,
            opts,
            addr: t.addr.clone(),
        })
    }

    async fn login(&self, id: &Identity) -> anyhow::Result<Client> {
        let c = Client::connect_on(&self.endpoint, &self.addr, &self.opts).await?;
        c.authenticate(id).await?;
        Ok(c)
    }
}

/// The consumer's identity, kept in the state directory (the crash runs need it twice).
fn consumer_identity(dir: &Path, fresh: bool) -> anyhow::Result<Identity> {
    let path = dir.join("ferry-consumer.json");
    if !fresh && path.exists() {
        return Ok(Identity::load(&path)?);
    }
    let id = Identity::generate()?;
    // A fresh run starts with an empty mailbox: a new identity replaces the kept one.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    }
    id.save(&path)?;
    Ok(id)
}

async fn produce(
    c: Sender,
    recipient: Vec<u8>,
    ids: std::ops::Range<u64>,
    size: usize,
    in_flight: usize,
    random_ids: bool,
    rec: Arc<Recorder>,
) -> anyhow::Result<()> {
    // Like the NATS driver: the window is polled in this task (no task per message), so the
    // load generator spends on its own bookkeeping what it spends for the other systems.
    let mut pending = FuturesUnordered::new();
    for n in ids {
        while pending.len() >= in_flight {
            if let Some(r) = pending.next().await {
                r?;
            }
        }
        let req = pb::EnqueueRequest {
            recipient_key: recipient.clone(),
            payload: loadgen::stamp(n, size),
            channel_id: vec![],
            ttl_secs: 3600,
            message_id: if random_ids {
                loadgen::random_message_id()?
            } else {
                loadgen::message_id(n)
            },
            sealed_sender: false,
            device_id: vec![],
        };
        let c = c.clone();
        let rec = Arc::clone(&rec);
        pending.push(async move {
            let t = Instant::now();
            c.enqueue(req).await?;
            rec.acked(t.elapsed());
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(())
}

/// Long-polls the mailbox, records, acknowledges; until complete or idle.
async fn consume(
    c: Arc<Client>,
    mailbox: MailboxAddr,
    rec: Arc<Recorder>,
    idle: Duration,
) -> anyhow::Result<()> {
    let mut acks = tokio::task::JoinSet::new();
    let start = Instant::now();
    while !rec.complete() {
        let last = rec.last_receive().unwrap_or(start).max(start);
        let left = idle.saturating_sub(last.elapsed());
        if left.is_zero() {
            break;
        }
        let batch = c
            .fetch_wait(&mailbox, 1024, left.min(Duration::from_secs(5)))
            .await?;
        for env in &batch {
            rec.received(&env.data);
        }
        if let Some(last) = batch.last().map(|e| e.seq) {
            let c = Arc::clone(&c);
            acks.spawn(async move { c.ack(&mailbox, last).await });
            while acks.len() > 4 {
                let _ = acks.join_next().await;
            }
        }
    }
    while let Some(r) = acks.join_next().await {
        r??;
    }
    Ok(())
}

pub(crate) async fn run(t: &Target, w: &Workload, rec: Arc<Recorder>) -> anyhow::Result<Outcome> {
    let conn = Conn::new(t).await?;
    let me = consumer_identity(&t.state_dir, true)?;
    let consumer = Arc::new(conn.login(&me).await?);
    let mailbox = MailboxAddr::default_for(me.public_key());
    let mut producers = Vec::with_capacity(w.producers);
    for _ in 0..w.producers {
        producers.push(Arc::new(conn.login(&Identity::generate()?).await?));
    }
    let start = Instant::now();
    let consumer_task = tokio::spawn(consume(
        Arc::clone(&consumer),
        mailbox,
        Arc::clone(&rec),
        w.idle_timeout,
    ));
    let sent = w
        .produce_all(start, |i, ids| {
            produce(
                Sender::new(&producers[i], t.batch),
                me.public_key().as_bytes().to_vec(),
                ids,
                w.size,
                w.in_flight,
                t.random_ids,
                Arc::clone(&rec),
            )
        })
        .await?;
    consumer_task.await??;
    let outcome = rec.outcome(start, sent);
    for p in producers {
        if let Ok(p) = Arc::try_unwrap(p) {
            p.close().await;
        }
    }
    if let Ok(c) = Arc::try_unwrap(consumer) {
        c.close().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.endpoint.wait_idle()).await;
    Ok(outcome)
}

/// Idle authenticated connections.
pub(crate) async fn idle(t: &Target, clients: usize) -> anyhow::Result<IdleClients> {
    let conn = Conn::new(t).await?;
    let limit = Arc::new(Semaphore::new(32));
    let mut set = tokio::task::JoinSet::new();
    let conn = Arc::new(conn);
    for _ in 0..clients {
        let permit = Arc::clone(&limit).acquire_owned().await?;
        let conn = Arc::clone(&conn);
        set.spawn(async move {
            let r = conn.login(&Identity::generate()?).await;
            drop(permit);
            r
        });
    }
    let mut held = Vec::with_capacity(clients);
    while let Some(r) = set.join_next().await {
        held.push(r??);
    }
    Ok(IdleClients {
        held,
        _endpoint: conn,
    })
}

/// Connections held open; closed when dropped.
pub(crate) struct IdleClients {
    held: Vec<Client>,
    /// Keeps the endpoint (and its socket) alive as long as the connections.
    _endpoint: Arc<Conn>,
}

impl Drop for IdleClients {
    fn drop(&mut self) {
        for c in &self.held {
            c.connection().close(0u32.into(), b"bye");
        }
    }
}

/// Enqueues `n` messages to the (kept) consumer identity and returns how many were
/// acknowledged.
pub(crate) async fn crash_publish(t: &Target, n: u64, size: usize) -> anyhow::Result<u64> {
    let conn = Conn::new(t).await?;
    let me = consumer_identity(&t.state_dir, true)?;
    let producer = Arc::new(conn.login(&Identity::generate()?).await?);
    let rec = Arc::new(Recorder::new(n));
    produce(
        Sender::new(&producer, t.batch),
        me.public_key().as_bytes().to_vec(),
        0..n,
        size,
        64,
        t.random_ids,
        Arc::clone(&rec),
    )
    .await?;
    let acked = rec.acked_count();
    if let Ok(p) = Arc::try_unwrap(producer) {
        p.close().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.endpoint.wait_idle()).await;
    Ok(acked)
}

/// Reads what the restarted node still has for the consumer.
pub(crate) async fn crash_drain(
    t: &Target,
    rec: Arc<Recorder>,
    idle: Duration,
) -> anyhow::Result<()> {
    let conn = Conn::new(t).await?;
    let me = consumer_identity(&t.state_dir, false)?;
    let consumer = Arc::new(conn.login(&me).await?);
    consume(
        Arc::clone(&consumer),
        MailboxAddr::default_for(me.public_key()),
        rec,
        idle,
    )
    .await?;
    if let Ok(c) = Arc::try_unwrap(consumer) {
        c.close().await;
    }
    Ok(())
}
