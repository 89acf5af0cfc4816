//! `ferry-bench`: one workload, one driver per system — Ferry (qpq v2 through the client
//! library), Mosquitto (MQTT QoS 1, persistent session, rumqttc) and NATS JetStream (file
//! stream, durable pull consumer with explicit acks, async-nats).
//!
//! Every message is `--size` bytes and carries its id and its send time. A message counts as
//! sent when the server acknowledged it (Ferry: the Enqueue answer, after the fsync'd
//! commit; MQTT: PUBACK; JetStream: the publish ack) and as delivered when the single
//! consumer got it (and acknowledged it to the server). Each run prints one JSON object:
//! throughput, publish-ack and end-to-end latency percentiles, lost and duplicated ids, and
//! the server's RSS. `scripts/bench-peers.sh` runs the systems interleaved and makes the
//! table.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ferry_client::loadgen;

mod attack;
mod ferry;
mod hub;
mod mqtt;
mod nats;
mod stats;

use stats::{Outcome, Recorder};

#[derive(Parser, Debug)]
#[command(name = "ferry-bench", about = "Ferry vs Mosquitto vs NATS JetStream")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Producers to one consumer: throughput, latency, lost and duplicated messages.
    Run(RunArgs),
    /// Hold idle connected clients and report the server's RSS.
    Idle(IdleArgs),
    /// Publish acknowledged messages for a consumer that is not reading (then kill -9 the server).
    CrashPublish(CrashArgs),
    /// After the server restarted: count how many of those messages it still delivers.
    CrashDrain(CrashArgs),
    /// The node ids of the synthetic edges of `hub`, for the hub's allow list.
    HubIds {
        /// Edges.
        #[arg(long, default_value_t = 50)]
        edges: usize,
    },
    /// One hub under load: edges in this process relay bundles to each other through it.
    Hub(HubArgs),
    /// Hostile clients against a running Ferry node, one attack at a time, while a
    /// well-behaved client measures its latency (see `scripts/bench-attacks.sh`).
    Attack(attack::AttackArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct HubArgs {
    /// The hub's federation address.
    #[arg(long)]
    hub: std::net::SocketAddr,
    /// The hub's process id, to read its memory use from /proc.
    #[arg(long)]
    hub_pid: Option<u32>,
    /// Edges (each with its own store and federation endpoint).
    #[arg(long, default_value_t = 50)]
    edges: usize,
    /// Messages in all (each crosses the hub once).
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Hand-offs in flight per edge.
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
}

/// The system under test.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum System {
    Ferry,
    Mqtt,
    Nats,
}

#[derive(clap::Args, Debug, Clone)]
struct Target {
    /// Which system.
    #[arg(long)]
    system: System,
    /// The server, `host:port`.
    #[arg(long)]
    addr: String,
    /// The server's process id, to read its memory use and disk writes from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A label for the output (e.g. `mosquitto max_queued_messages=0`).
    #[arg(long)]
    label: Option<String>,
    /// Directory for state kept between runs (Ferry: the consumer identity and the pinned
    /// certificate).
    #[arg(long, default_value = "target/bench-state")]
    state_dir: PathBuf,
    /// Ferry only: send through the client library's `Batcher`, which coalesces the messages
    /// waiting on a connection into EnqueueMany (812) requests, one stream and one commit each.
    #[arg(long)]
    batch: bool,
    /// Ferry only: random message ids, as from a client that does not make time-ordered ones
    /// (by default they are time-ordered, like the client library's).
    #[arg(long)]
    random_ids: bool,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    target: Target,
    /// Messages in the run.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Message size in bytes (at least 16: id and send time).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Messages in flight per producer (sent, not yet acknowledged by the server).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Producers, each on its own connection.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// The consumer gives up after this long without a message (the rest count as lost).
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    idle_timeout: Duration,
}

#[derive(clap::Args, Debug, Clone)]
struct IdleArgs {
    #[command(flatten)]
    target: Target,
    /// Idle clients to connect.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
}

#[derive(clap::Args, Debug, Clone)]
struct CrashArgs {
    #[command(flatten)]
    target: Target,
    /// Messages to publish (and expect back).
    #[arg(long, default_value_t = 1000)]
    messages: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let n = s.strip_suffix('s').unwrap_or(s);
    n.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

/// What a run is handed: the shape of the workload.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    pub(crate) messages: u64,
    pub(crate) size: usize,
    pub(crate) in_flight: usize,
    pub(crate) producers: usize,
    pub(crate) idle_timeout: Duration,
}

impl Workload {
    /// The id range of producer `i`.
    pub(crate) fn range(&self, i: usize) -> std::ops::Range<u64> {
        let per = self.messages / self.producers as u64;
        let first = i as u64 * per;
        let last = if i + 1 == self.producers {
            self.messages
        } else {
            first + per
        };
        first..last
    }

    /// Spawns one producer per id range (`producer(i, ids)`), waits for all of them and
    /// returns how long they took since `start`.
    pub(crate) async fn produce_all<F, Fut>(
        &self,
        start: std::time::Instant,
        mut producer: F,
    ) -> anyhow::Result<Duration>
    where
        F: FnMut(usize, std::ops::Range<u64>) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let tasks: Vec<_> = (0..self.producers)
            .map(|i| tokio::spawn(producer(i, self.range(i))))
            .collect();
        for task in tasks {
            task.await??;
        }
        Ok(start.elapsed())
    }
}

#[allow(clippy::print_stdout)]
pub(crate) fn print_json(v: &serde_json::Value) {
    println!("{v}");
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Some(t) = args.command.target() {
        t.check()?;
    }
    rt.block_on(async move {
        match args.command {
            Command::Run(a) => run(a).await,
            Command::Idle(a) => idle(a).await,
            Command::CrashPublish(a) => crash_publish(a).await,
            Command::CrashDrain(a) => crash_drain(a).await,
            Command::HubIds { edges } => {
                hub::ids(edges);
                Ok(())
            }
            Command::Attack(a) => attack::run(a).await,
            Command::Hub(a) => {
                hub::run(a.hub, a.hub_pid, a.edges, a.messages, a.size, a.in_flight).await
            }
        }
    })
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.size >= 16, "--size must be at least 16");
    anyhow::ensure!(
        a.producers >= 1 && a.in_flight >= 1 && a.messages >= a.producers as u64,
        "--producers and --in-flight must be at least 1, --messages at least --producers"
    );
    std::fs::create_dir_all(&a.target.state_dir)?;
    let w = Workload {
        messages: a.messages,
        size: a.size,
        in_flight: a.in_flight,
        producers: a.producers,
        idle_timeout: a.idle_timeout,
    };
    let rss_before = a.target.server_pid.and_then(loadgen::rss_kib);
    let written_before = a.target.server_pid.and_then(loadgen::disk_written_bytes);
    let cpu_before = loadgen::CpuSnapshot::read(a.target.server_pid);
    let rec = Arc::new(Recorder::new(w.messages));
    let outcome: Outcome = match a.target.system {
        System::Ferry => ferry::run(&a.target, &w, rec).await?,
        System::Mqtt => mqtt::run(&a.target, &w, rec).await?,
        System::Nats => nats::run(&a.target, &w, rec).await?,
    };
    let rss_after = a.target.server_pid.and_then(loadgen::rss_kib);
    let written_after = a.target.server_pid.and_then(loadgen::disk_written_bytes);
    let cpu =
        loadgen::CpuSnapshot::read(a.target.server_pid).per_message_since(&cpu_before, w.messages);
    let mut v = outcome.to_json(&w);
    v["system"] = system_name(&a.target).into();
    v["workload"] = if w.producers == 1 {
        "one-to-one".into()
    } else {
        format!("fan-in {}", w.producers).into()
    };
    if let Some((rss, _)) = rss_before {
        v["server_rss_before_kib"] = rss.into();
    }
    if let Some((rss, hwm)) = rss_after {
        v["server_rss_after_kib"] = rss.into();
        v["server_peak_rss_kib"] = hwm.into();
    }
    if let (Some(before), Some(after)) = (written_before, written_after) {
        // What the run cost the server's disk (flash wear), producers' and consumer's alike.
        let written = after.saturating_sub(before);
        v["server_disk_written_bytes"] = written.into();
        v["server_disk_bytes_per_message"] = (written as f64 / w.messages as f64).round().into();
    }
    // CPU per message, at 10 ms resolution over the run: where two shared cores go. The load
    // generator's figure includes connecting and its consumer; the server's, everything it
    // did during the run; by thread name (Ferry: `ferry-store-wri`, the store's writer, and
    // `ferry-worker`, the tokio runtime), the threads that ran through the run.
    let tenth = |us: f64| (us * 10.0).round() / 10.0;
    if let Some(us) = cpu.server {
        v["server_cpu_us_per_message"] = tenth(us).into();
    }
    if let Some(us) = cpu.own {
        v["loadgen_cpu_us_per_message"] = tenth(us).into();
    }
    if a.target.server_pid.is_some() {
        let by_thread: serde_json::Map<_, _> = cpu
            .server_threads
            .into_iter()
            .map(|(name, us)| (name, tenth(us).into()))
            .collect();
        v["server_threads_cpu_us_per_message"] = by_thread.into();
    }
    print_json(&v);
    Ok(())
}

impl Command {
    /// The system a command drives, if it drives one through [`Target`].
    fn target(&self) -> Option<&Target> {
        match self {
            Command::Run(a) => Some(&a.target),
            Command::Idle(a) => Some(&a.target),
            Command::CrashPublish(a) | Command::CrashDrain(a) => Some(&a.target),
            Command::HubIds { .. } | Command::Hub(_) | Command::Attack(_) => None,
        }
    }
}

impl Target {
    /// Refuses options that do not apply to the chosen system instead of ignoring them.
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.batch || self.system == System::Ferry,
            "--batch applies to --system ferry only (MQTT and NATS clients pipeline on their own)"
        );
        anyhow::ensure!(
            !self.random_ids || self.system == System::Ferry,
            "--random-ids applies to --system ferry only (MQTT and NATS have no message ids)"
        );
        Ok(())
    }
}

fn system_name(t: &Target) -> String {
    t.label.clone().unwrap_or_else(|| {
        match t.system {
            System::Ferry => "ferry",
            System::Mqtt => "mosquitto",
            System::Nats => "nats-jetstream",
        }
        .to_string()
    })
}

async fn idle(a: IdleArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.target.state_dir)?;
    let before = a.target.server_pid.and_then(loadgen::rss_kib);
    let held: Box<dyn std::any::Any> = match a.target.system {
        System::Ferry => Box::new(ferry::idle(&a.target, a.clients).await?),
        System::Mqtt => Box::new(mqtt::idle(&a.target, a.clients).await?),
        System::Nats => Box::new(nats::idle(&a.target, a.clients).await?),
    };
    // Let the server settle (handshake buffers freed, timers idle).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = a.target.server_pid.and_then(loadgen::rss_kib);
    drop(held);
    let mut v = serde_json::json!({
        "system": system_name(&a.target),
        "workload": format!("idle {}", a.clients),
        "clients": a.clients,
    });
    if let Some((rss, _)) = before {
        v["server_rss_idle_kib"] = rss.into();
    }
    if let Some((rss, hwm)) = during {
        v["server_rss_with_clients_kib"] = rss.into();
        v["server_peak_rss_kib"] = hwm.into();
    }
    print_json(&v);
    Ok(())
}

async fn crash_publish(a: CrashArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.target.state_dir)?;
    let acked = match a.target.system {
        System::Ferry => ferry::crash_publish(&a.target, a.messages, a.size).await?,
        System::Mqtt => mqtt::crash_publish(&a.target, a.messages, a.size).await?,
        System::Nats => nats::crash_publish(&a.target, a.messages, a.size).await?,
    };
    print_json(&serde_json::json!({
        "system": system_name(&a.target),
        "workload": "crash",
        "acknowledged": acked,
    }));
    Ok(())
}

async fn crash_drain(a: CrashArgs) -> anyhow::Result<()> {
    let rec = Arc::new(Recorder::new(a.messages));
    let idle = Duration::from_secs(5);
    match a.target.system {
        System::Ferry => ferry::crash_drain(&a.target, Arc::clone(&rec), idle).await?,
        System::Mqtt => mqtt::crash_drain(&a.target, Arc::clone(&rec), idle).await?,
        System::Nats => nats::crash_drain(&a.target, Arc::clone(&rec), idle).await?,
    }
    let (received, duplicated) = rec.counts();
    print_json(&serde_json::json!({
        "system": system_name(&a.target),
        "workload": "crash",
        "kept": received,
        "of": a.messages,
        "duplicated": duplicated,
    }));
    Ok(())
}
