//! `ferry bench`: load generator for a running node.
//!
//! Messages are 256-byte opaque payloads (by default) carrying a sequence number and the send
//! time, enqueued through the client library with a window of requests in flight per sender;
//! a message counts as sent when its Enqueue is answered, which the node does only after the
//! durable commit. With `--batch` the senders go through the client library's `Batcher`
//! (EnqueueMany, 812): each message is still answered on its own, after the same commit. One consumer long-polls the recipient's mailbox and acknowledges what it
//! got. Payloads are not end-to-end encrypted here: this measures the node, and sealing would
//! measure the benchmark's own CPU.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_client::loadgen::{
    CpuPerMessage, CpuSnapshot, Sender, message_id, percentile_ms, read_stamp, rss_kib, stamp,
    unix_nanos,
};
use ferry_client::{Client, ConnectOptions, Identity};
use ferry_proto::qpq::v1 as pb;
use ferry_proto::types::MailboxAddr;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{Semaphore, mpsc};

use super::{NodeFlags, out};

#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    node: NodeFlags,
    /// Messages per run.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Payload size in bytes (at least 16).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Requests in flight per sender.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Concurrent senders (each its own connection and identity).
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Also hold this many idle authenticated connections and report the node's RSS.
    #[arg(long, default_value_t = 0)]
    idle_connections: usize,
    /// The node's process id, to read its memory use and CPU time from /proc.
    #[arg(long)]
    node_pid: Option<u32>,
    /// The node's data directory, to measure the fsync ceiling of its disk.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Skip the throughput run (with --idle-connections: memory only).
    #[arg(long)]
    no_throughput: bool,
    /// Send through the client library's `Batcher`: the messages waiting on a connection go
    /// out as one EnqueueMany (812) request.
    #[arg(long)]
    batch: bool,
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Prints the CPU per message a run cost: where the node's time goes (on a router, the figure
/// that says how much traffic its CPU can carry) and what this load generator took.
fn report_cpu(cpu: &CpuPerMessage) -> anyhow::Result<()> {
    if let Some(us) = cpu.server {
        let parts: Vec<String> = cpu
            .server_threads
            .iter()
            .map(|(name, us)| format!("{name} {us:.1}"))
            .collect();
        out(&format!(
            "  node CPU per message:       {us:.1} µs{}",
            if parts.is_empty() {
                String::new()
            } else {
                format!(" ({})", parts.join(", "))
            }
        ))?;
    }
    if let Some(us) = cpu.own {
        out(&format!(
            "  load generator CPU:         {us:.1} µs per message"
        ))?;
    }
    Ok(())
}

/// Median latency of a 4 KiB append + fdatasync in `dir`: what one durable commit costs at least.
fn fsync_median(dir: &std::path::Path) -> anyhow::Result<Duration> {
    use std::io::Write;
    let path = dir.join(".ferry-bench-fsync");
    let mut f = std::fs::File::create(&path).with_context(|| path.display().to_string())?;
    let block = [0u8; 4096];
    let mut times = Vec::with_capacity(300);
    for _ in 0..300 {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        times.push(t.elapsed());
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    times.sort();
    Ok(times.get(times.len() / 2).copied().unwrap_or_default())
}

async fn login(
    endpoint: &quinn::Endpoint,
    flags: &NodeFlags,
    opts: &ConnectOptions,
) -> anyhow::Result<(Client, Identity)> {
    let id = Identity::generate()?;
    let c = Client::connect_on(endpoint, &flags.node, opts).await?;
    c.authenticate(&id).await?;
    Ok((c, id))
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let result = load(args).await;
    // A node with its default limits refuses a load generator's rate from one address: say
    // how to run one for benchmarks.
    let limited = result.as_ref().err().is_some_and(|e| {
        e.chain()
            .filter_map(|c| c.downcast_ref::<ferry_client::ClientError>())
            .any(|c| match c {
                ferry_client::ClientError::Status { status, .. } => {
                    *status == ferry_proto::Status::RateLimited
                }
                // A connection refused over a per-address limit is closed with the reason.
                ferry_client::ClientError::Connection(
                    quinn::ConnectionError::ApplicationClosed(close),
                ) => String::from_utf8_lossy(&close.reason).contains("too many"),
                _ => false,
            })
    });
    if limited {
        return result.context(
            "the node limits what one address may do (requests and connections a second, \
             connections at once): benchmark a node started with `--rate-limit 0` and, for many \
             clients, `connection_rate = 0` and a higher `max_connections_per_address` in its \
             config (as scripts/bench-node.sh does)",
        );
    }
    result
}

async fn load(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.size >= 16, "--size must be at least 16 bytes");
    anyhow::ensure!(
        args.senders >= 1 && args.in_flight >= 1,
        "--senders and --in-flight must be at least 1"
    );
    let opts = args.node.options()?;
    let addr = tokio::net::lookup_host(&args.node.node)
        .await?
        .next()
        .context("node address")?;
    let endpoint = Client::endpoint_for(&addr)?;
    if let Some(pid) = args.node_pid
        && let Some((rss, _)) = rss_kib(pid)
    {
        out(&format!("node RSS before this run: {}", mib(rss)))?;
    }
    if !args.no_throughput {
        throughput(&args, &endpoint, &opts).await?;
    }
    if args.idle_connections > 0 {
        idle(&args, &endpoint, &opts).await?;
    }
    if let Some(pid) = args.node_pid
        && let Some((rss, hwm)) = rss_kib(pid)
    {
        out(&format!(
            "node RSS now: {}   peak (VmHWM): {}",
            mib(rss),
            mib(hwm)
        ))?;
    }
    Ok(())
}

async fn throughput(
    args: &BenchArgs,
    endpoint: &quinn::Endpoint,
    opts: &ConnectOptions,
) -> anyhow::Result<()> {
    let (consumer, recipient) = login(endpoint, &args.node, opts).await?;
    let consumer = Arc::new(consumer);
    let mailbox = MailboxAddr::default_for(recipient.public_key());
    // Drain anything left from an earlier run of this identity (none: it is new).
    let mut senders = Vec::with_capacity(args.senders);
    for _ in 0..args.senders {
        senders.push(Arc::new(login(endpoint, &args.node, opts).await?.0));
    }
    let total = args.messages;
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<u64>();
    // Consumer: long-poll, record end-to-end latency, acknowledge without waiting.
    let consumer_task = {
        let consumer = Arc::clone(&consumer);
        tokio::spawn(async move {
            let mut seen = HashSet::with_capacity(total as usize);
            let mut dups = 0u64;
            let mut e2e = Vec::with_capacity(total as usize);
            let mut acks = tokio::task::JoinSet::new();
            while (seen.len() as u64) < total {
                let batch = match consumer
                    .fetch_wait(&mailbox, 1024, Duration::from_secs(10))
                    .await
                {
                    Ok(b) => b,
                    Err(e) => return Err(anyhow::anyhow!("consumer: {e}")),
                };
                if batch.is_empty() {
                    return Err(anyhow::anyhow!(
                        "consumer waited 10 s without a message ({} of {total} received)",
                        seen.len()
                    ));
                }
                let now = unix_nanos();
                for env in &batch {
                    let (n, sent) = read_stamp(&env.data).unwrap_or((u64::MAX, 0));
                    if !seen.insert(n) {
                        dups += 1;
                    }
                    e2e.push(now.saturating_sub(sent) / 1000);
                }
                if let Some(last) = batch.last().map(|e| e.seq) {
                    let c = Arc::clone(&consumer);
                    acks.spawn(async move { c.ack(&mailbox, last).await });
                    while acks.len() > 4 {
                        let _ = acks.join_next().await;
                    }
                }
            }
            while acks.join_next().await.is_some() {}
            Ok::<_, anyhow::Error>((seen.len() as u64, dups, e2e, Instant::now()))
        })
    };
    let payload_size = args.size;
    let cpu_before = CpuSnapshot::read(args.node_pid);
    let start = Instant::now();
    let mut tasks = Vec::new();
    let per_sender = total / args.senders as u64;
    for (i, sender) in senders.iter().enumerate() {
        let first = i as u64 * per_sender;
        let count = if i + 1 == args.senders {
            total - first
        } else {
            per_sender
        };
        let sender = Sender::new(sender, args.batch);
        let in_flight = args.in_flight;
        let lat_tx = lat_tx.clone();
        let recipient_key = recipient.public_key().as_bytes().to_vec();
        tasks.push(tokio::spawn(async move {
            // The window is polled in this task, as `ferry-bench` does: a task per message
            // would make the load generator, which shares the cores with the node, the
            // costlier side.
            let mut inflight = FuturesUnordered::new();
            for n in first..first + count {
                while inflight.len() >= in_flight {
                    if let Some(done) = inflight.next().await {
                        done?;
                    }
                }
                let req = pb::EnqueueRequest {
                    recipient_key: recipient_key.clone(),
                    payload: stamp(n, payload_size),
                    channel_id: vec![],
                    ttl_secs: 3600,
                    message_id: message_id(n),
                    sealed_sender: false,
                    device_id: vec![],
                };
                let sender = sender.clone();
                let lat_tx = lat_tx.clone();
                inflight.push(async move {
                    let t = Instant::now();
                    let r = sender.enqueue(req).await;
                    let _ = lat_tx.send(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                    r.map(|_| ())
                });
            }
            while let Some(done) = inflight.next().await {
                done?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    drop(lat_tx);
    for t in tasks {
        t.await??;
    }
    let sent_elapsed = start.elapsed();
    let (received, dups, mut e2e, done_at) = consumer_task.await??;
    let cpu = CpuSnapshot::read(args.node_pid).per_message_since(&cpu_before, total);
    let mut ack_lat = Vec::with_capacity(total as usize);
    while let Some(l) = lat_rx.recv().await {
        ack_lat.push(l);
    }
    ack_lat.sort_unstable();
    e2e.sort_unstable();
    let e2e_elapsed = done_at.duration_since(start);
    let rate = total as f64 / sent_elapsed.as_secs_f64();
    out(&format!(
        "{} sender(s) -> 1 recipient, {} messages of {} B, {} in flight per sender{}",
        args.senders,
        total,
        args.size,
        args.in_flight,
        if args.batch {
            ", through the Batcher (EnqueueMany)"
        } else {
            ""
        }
    ))?;
    out(&format!(
        "  durable enqueue throughput: {rate:.0} msg/s ({:.2} s)",
        sent_elapsed.as_secs_f64()
    ))?;
    out(&format!(
        "  end-to-end throughput:      {:.0} msg/s (consumer had all after {:.2} s)",
        total as f64 / e2e_elapsed.as_secs_f64(),
        e2e_elapsed.as_secs_f64()
    ))?;
    out(&format!(
        "  enqueue->ack latency:       p50 {:.2} ms  p99 {:.2} ms",
        percentile_ms(&ack_lat, 0.50),
        percentile_ms(&ack_lat, 0.99)
    ))?;
    out(&format!(
        "  end-to-end latency:         p50 {:.2} ms  p99 {:.2} ms",
        percentile_ms(&e2e, 0.50),
        percentile_ms(&e2e, 0.99)
    ))?;
    out(&format!(
        "  received {received}/{total}, lost {}, duplicated {dups}",
        total - received
    ))?;
    report_cpu(&cpu)?;
    if let Some(dir) = &args.data_dir {
        let f = fsync_median(dir)?;
        let window = (args.in_flight * args.senders) as f64;
        out(&format!(
            "  fsync ceiling:              median fsync {:.3} ms on the node's disk -> {:.0} msg/s with {} in flight (one commit per fsync)",
            f.as_secs_f64() * 1000.0,
            window / f.as_secs_f64().max(1e-9),
            window
        ))?;
    }
    for s in senders {
        if let Ok(s) = Arc::try_unwrap(s) {
            s.close().await;
        }
    }
    if let Ok(c) = Arc::try_unwrap(consumer) {
        c.close().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
    anyhow::ensure!(
        received == total && dups == 0,
        "lost or duplicated messages"
    );
    Ok(())
}

async fn idle(
    args: &BenchArgs,
    endpoint: &quinn::Endpoint,
    opts: &ConnectOptions,
) -> anyhow::Result<()> {
    let before = args.node_pid.and_then(rss_kib);
    let mut held = Vec::with_capacity(args.idle_connections);
    let start = Instant::now();
    let limit = Arc::new(Semaphore::new(32));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..args.idle_connections {
        let permit = Arc::clone(&limit).acquire_owned().await?;
        let endpoint = endpoint.clone();
        let flags = args.node.clone();
        let opts = opts.clone();
        set.spawn(async move {
            let r = login(&endpoint, &flags, &opts).await;
            drop(permit);
            r.map(|(c, _)| c)
        });
    }
    while let Some(r) = set.join_next().await {
        held.push(r??);
    }
    // Let the node settle (handshake buffers freed, timers idle).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = args.node_pid.and_then(rss_kib);
    out(&format!(
        "{} idle authenticated connections opened in {:.2} s",
        held.len(),
        start.elapsed().as_secs_f64()
    ))?;
    if let (Some((b, _)), Some((d, _))) = (before, during) {
        out(&format!(
            "  node RSS with them: {} (was {} before; {:.1} KiB per connection)",
            mib(d),
            mib(b),
            (d.saturating_sub(b)) as f64 / held.len().max(1) as f64
        ))?;
    }
    // Close in small batches: a thousand CONNECTION_CLOSE packets at once overflow the
    // node's UDP receive buffer, and QUIC does not retransmit a close, so those connections
    // would linger on the node until its idle timeout.
    for chunk in held.chunks(50) {
        for c in chunk {
            c.connection().close(0u32.into(), b"bye");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
    // Make sure the close frames leave before this process exits; otherwise the node keeps
    // the connections until its idle timeout.
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
    Ok(())
}
