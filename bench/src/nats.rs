//! NATS JetStream through async-nats: a file-backed stream, publishes that count when the
//! server's publish ack arrives, and one durable pull consumer with explicit acks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use ferry_client::loadgen;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::stats::{Outcome, Recorder};
use crate::{Target, Workload};

const STREAM: &str = "FERRYBENCH";
const SUBJECT: &str = "ferrybench.q";
const DURABLE: &str = "ferry-bench-consumer";

async fn context(t: &Target) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::connect(t.addr.as_str()).await?;
    Ok(jetstream::new(client))
}

/// A new, empty file-backed stream and its durable consumer.
async fn fresh(js: &jetstream::Context) -> anyhow::Result<consumer::PullConsumer> {
    let _ = js.delete_stream(STREAM).await;
    let stream = js
        .create_stream(stream::Config {
            name: STREAM.to_string(),
            subjects: vec![SUBJECT.to_string()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    durable(&stream).await
}

async fn durable(stream: &stream::Stream) -> anyhow::Result<consumer::PullConsumer> {
    Ok(stream
        .get_or_create_consumer(
            DURABLE,
            consumer::pull::Config {
                durable_name: Some(DURABLE.to_string()),
                ack_policy: consumer::AckPolicy::Explicit,
                // The default (1,000) would make the consumer, not the server, the limit.
                max_ack_pending: 100_000,
                ..Default::default()
            },
        )
        .await?)
}

async fn produce(
    t: Target,
    ids: std::ops::Range<u64>,
    size: usize,
    in_flight: usize,
    rec: Arc<Recorder>,
) -> anyhow::Result<()> {
    let js = context(&t).await?;
    let mut pending = FuturesUnordered::new();
    for n in ids {
        while pending.len() >= in_flight {
            if let Some(r) = pending.next().await {
                r?;
            }
        }
        let started = Instant::now();
        let ack = js.publish(SUBJECT, loadgen::stamp(n, size).into()).await?;
        let rec = Arc::clone(&rec);
        pending.push(async move {
            ack.await?;
            rec.acked(started.elapsed());
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(())
}

/// Pulls, records and acks (explicit ack per message) until complete or idle.
async fn consume(
    consumer: consumer::PullConsumer,
    rec: Arc<Recorder>,
    idle: Duration,
) -> anyhow::Result<()> {
    let mut messages = consumer.messages().await?;
    let start = Instant::now();
    while !rec.complete() {
        let last = rec.last_receive().unwrap_or(start).max(start);
        let left = idle.saturating_sub(last.elapsed());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, messages.next()).await {
            Ok(Some(Ok(m))) => {
                rec.received(&m.payload);
                m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
            }
            Ok(Some(Err(e))) => anyhow::bail!("consumer: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(())
}

pub(crate) async fn run(t: &Target, w: &Workload, rec: Arc<Recorder>) -> anyhow::Result<Outcome> {
    let js = context(t).await?;
    let durable = fresh(&js).await?;
    let start = Instant::now();
    let consumer_task = tokio::spawn(consume(durable, Arc::clone(&rec), w.idle_timeout));
    let sent = w
        .produce_all(start, |_, ids| {
            produce(t.clone(), ids, w.size, w.in_flight, Arc::clone(&rec))
        })
        .await?;
    consumer_task.await??;
    Ok(rec.outcome(start, sent))
}

/// Idle connected clients.
pub(crate) async fn idle(t: &Target, clients: usize) -> anyhow::Result<Vec<async_nats::Client>> {
    let mut held = Vec::with_capacity(clients);
    for _ in 0..clients {
        held.push(async_nats::connect(t.addr.as_str()).await?);
    }
    Ok(held)
}

/// A fresh stream and durable consumer; `n` acknowledged publishes for it.
pub(crate) async fn crash_publish(t: &Target, n: u64, size: usize) -> anyhow::Result<u64> {
    let js = context(t).await?;
    fresh(&js).await?;
    let rec = Arc::new(Recorder::new(n));
    produce(t.clone(), 0..n, size, 64, Arc::clone(&rec)).await?;
    Ok(rec.acked_count())
}

/// Reads what the restarted server still has for the durable consumer.
pub(crate) async fn crash_drain(
    t: &Target,
    rec: Arc<Recorder>,
    idle: Duration,
) -> anyhow::Result<()> {
    let js = context(t).await?;
    let stream = js.get_stream(STREAM).await?;
    consume(durable(&stream).await?, rec, idle).await
}
