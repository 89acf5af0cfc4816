//! Mosquitto through rumqttc: QoS 1 publishes (sent when PUBACKed), one consumer with a
//! persistent session (`clean_session = false`) subscribed at QoS 1.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_client::loadgen;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::stats::{self, Outcome, Recorder};
use crate::{Target, Workload};

const TOPIC: &str = "ferry-bench/q";
const CONSUMER: &str = "ferry-bench-consumer";

fn options(t: &Target, id: &str, clean: bool, inflight: usize) -> anyhow::Result<MqttOptions> {
    let (host, port) = t
        .addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .context("--addr must be host:port")?;
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(clean)
        .set_inflight(u16::try_from(inflight).unwrap_or(u16::MAX))
        .set_max_packet_size(1 << 20, 1 << 20);
    Ok(o)
}

/// Polls until the connection is acknowledged.
async fn connected(el: &mut EventLoop) -> anyhow::Result<()> {
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await? {
            return Ok(());
        }
    }
}

/// Sends DISCONNECT and polls until it is out.
async fn disconnect(client: &AsyncClient, el: &mut EventLoop) {
    if client.disconnect().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Drops whatever session the consumer had from an earlier run.
async fn reset_consumer(t: &Target) -> anyhow::Result<()> {
    let (client, mut el) = AsyncClient::new(options(t, CONSUMER, true, 64)?, 16);
    connected(&mut el).await?;
    disconnect(&client, &mut el).await;
    Ok(())
}

/// The consumer: persistent session, subscribed at QoS 1; messages go to the recorder
/// (rumqttc PUBACKs each one as it arrives).
async fn consumer(
    t: &Target,
    rec: Arc<Recorder>,
    subscribe: bool,
) -> anyhow::Result<(AsyncClient, JoinHandle<anyhow::Result<EventLoop>>)> {
    let (client, mut el) = AsyncClient::new(options(t, CONSUMER, false, 1024)?, 1024);
    if subscribe {
        client.subscribe(TOPIC, QoS::AtLeastOnce).await?;
        loop {
            match el.poll().await? {
                Event::Incoming(Packet::SubAck(_)) => break,
                Event::Incoming(Packet::Publish(p)) => rec.received(&p.payload),
                _ => {}
            }
        }
    } else {
        connected(&mut el).await?;
    }
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await? {
                Event::Incoming(Packet::Publish(p)) => rec.received(&p.payload),
                Event::Outgoing(Outgoing::Disconnect) => return Ok(el),
                _ => {}
            }
        }
    });
    Ok((client, task))
}

async fn stop_consumer(client: AsyncClient, task: JoinHandle<anyhow::Result<EventLoop>>) {
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

type Calls = Arc<Mutex<VecDeque<(Instant, OwnedSemaphorePermit)>>>;

/// One producer: QoS 1 publishes with a window; a publish counts when its PUBACK arrives.
async fn produce(
    t: Target,
    name: String,
    ids: std::ops::Range<u64>,
    size: usize,
    in_flight: usize,
    rec: Arc<Recorder>,
) -> anyhow::Result<()> {
    let count = ids.end - ids.start;
    let (client, mut el) = AsyncClient::new(options(&t, &name, true, in_flight)?, in_flight * 2);
    connected(&mut el).await?;
    let window = Arc::new(Semaphore::new(in_flight));
    let calls: Calls = Arc::new(Mutex::new(VecDeque::with_capacity(in_flight * 2)));
    // The event loop: rumqttc numbers publishes in the order they are handed to it, so the
    // n-th outgoing PUBLISH is the n-th call.
    let poller = {
        let calls = Arc::clone(&calls);
        let rec = Arc::clone(&rec);
        tokio::spawn(async move {
            let mut pending: HashMap<u16, (Instant, OwnedSemaphorePermit)> = HashMap::new();
            let mut acked = 0u64;
            while acked < count {
                match el.poll().await? {
                    Event::Outgoing(Outgoing::Publish(pkid)) => {
                        let call = calls
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .pop_front()
                            .context("a PUBLISH went out that was never called")?;
                        pending.insert(pkid, call);
                    }
                    Event::Incoming(Packet::PubAck(a)) => {
                        if let Some((t, permit)) = pending.remove(&a.pkid) {
                            rec.acked(t.elapsed());
                            acked += 1;
                            drop(permit);
                        }
                    }
                    _ => {}
                }
            }
            Ok::<_, anyhow::Error>(el)
        })
    };
    for n in ids {
        let permit = Arc::clone(&window).acquire_owned().await?;
        calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((Instant::now(), permit));
        client
            .publish(TOPIC, QoS::AtLeastOnce, false, loadgen::stamp(n, size))
            .await?;
    }
    let mut el = poller.await??;
    disconnect(&client, &mut el).await;
    Ok(())
}

pub(crate) async fn run(t: &Target, w: &Workload, rec: Arc<Recorder>) -> anyhow::Result<Outcome> {
    reset_consumer(t).await?;
    let (client, task) = consumer(t, Arc::clone(&rec), true).await?;
    let start = Instant::now();
    let sent = w
        .produce_all(start, |i, ids| {
            produce(
                t.clone(),
                format!("ferry-bench-p{i}-{}", std::process::id()),
                ids,
                w.size,
                w.in_flight,
                Arc::clone(&rec),
            )
        })
        .await?;
    stats::wait_complete(&rec, start, w.idle_timeout).await;
    let outcome = rec.outcome(start, sent);
    stop_consumer(client, task).await;
    Ok(outcome)
}

/// Idle connected clients, each with its event loop polled (keepalive).
pub(crate) async fn idle(t: &Target, clients: usize) -> anyhow::Result<IdleClients> {
    let mut held = Vec::with_capacity(clients);
    for i in 0..clients {
        let (client, mut el) = AsyncClient::new(
            options(
                t,
                &format!("ferry-bench-idle{i}-{}", std::process::id()),
                true,
                16,
            )?,
            16,
        );
        connected(&mut el).await?;
        let task = tokio::spawn(async move { while el.poll().await.is_ok() {} });
        held.push((client, task));
    }
    Ok(IdleClients(held))
}

/// Clients held open; aborted when dropped.
pub(crate) struct IdleClients(Vec<(AsyncClient, JoinHandle<()>)>);

impl Drop for IdleClients {
    fn drop(&mut self) {
        for (_, task) in &self.0 {
            task.abort();
        }
    }
}

/// The consumer's persistent session subscribes and goes away; then `n` QoS 1 messages are
/// published (and PUBACKed) for it to find later.
pub(crate) async fn crash_publish(t: &Target, n: u64, size: usize) -> anyhow::Result<u64> {
    reset_consumer(t).await?;
    let sink = Arc::new(Recorder::new(0));
    let (client, task) = consumer(t, sink, true).await?;
    stop_consumer(client, task).await;
    let rec = Arc::new(Recorder::new(n));
    produce(
        t.clone(),
        format!("ferry-bench-crash-{}", std::process::id()),
        0..n,
        size,
        64,
        Arc::clone(&rec),
    )
    .await?;
    Ok(rec.acked_count())
}

/// Reconnects the consumer's persistent session and counts what the broker still has.
pub(crate) async fn crash_drain(
    t: &Target,
    rec: Arc<Recorder>,
    idle: Duration,
) -> anyhow::Result<()> {
    let (client, task) = consumer(t, Arc::clone(&rec), false).await?;
    stats::wait_complete(&rec, Instant::now(), idle).await;
    stop_consumer(client, task).await;
    Ok(())
}
