//! Helpers shared by Ferry's load generators (`ferry bench` and `ferry-bench`), so that both
//! stamp messages, compute percentiles and read a server's memory and CPU time the same way.
//! Behind the `loadgen` feature: nothing a client application needs.

use std::collections::BTreeMap;

/// Unix time in nanoseconds: the send stamp (producer and consumer share this clock).
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A benchmark message: its id and send time (big-endian), then zeros up to `size` (at least
/// 16 bytes).
pub fn stamp(id: u64, size: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(size.max(16));
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&unix_nanos().to_be_bytes());
    p.resize(size.max(16), 0);
    p
}

/// A message id unique across runs and time-ordered, like the client library's: the time now
/// (ns), then `n`, big-endian.
pub fn message_id(n: u64) -> Vec<u8> {
    let mut id = Vec::with_capacity(16);
    id.extend_from_slice(&unix_nanos().to_be_bytes());
    id.extend_from_slice(&n.to_be_bytes());
    id
}

/// A random message id, like those of a qpq client that does not make time-ordered ones (the
/// node's dedup index then rewrites a random page per message; docs/benchmarks.md).
pub fn random_message_id() -> Result<Vec<u8>, crate::ClientError> {
    Ok(crate::random::<16>()?.to_vec())
}

/// The id and send time of a [`stamp`]ed message; `None` if it is too short to be one.
pub fn read_stamp(p: &[u8]) -> Option<(u64, u64)> {
    let id = u64::from_be_bytes(p.get(..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(p.get(8..16)?.try_into().ok()?);
    Some((id, sent))
}

/// The `p` quantile (0.0–1.0, nearest rank) of sorted microseconds, in milliseconds; 0 when
/// there are none.
pub fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
    sorted_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

/// VmRSS and VmHWM (peak) of a process, in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Bytes a process has caused to be written to storage since it started (`write_bytes` in
/// `/proc/<pid>/io`): what wears out a router's flash. A page written again after an fsync
/// counts again; one rewritten before the kernel wrote it back counts once.
pub fn disk_written_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Linux reports `utime` and `stime` in `USER_HZ` ticks, which is 100 on every architecture
/// Ferry builds for (x86_64, aarch64, arm, mips): 10 ms each.
const USER_HZ: u64 = 100;

/// CPU time a process has used since it started, all its threads together and the threads
/// that already ended included (`utime` + `stime` of `/proc/<pid>/stat`), in microseconds; at
/// a resolution of 10 ms.
fn cpu_time_us(pid: u32) -> Option<u64> {
    stat_cpu_us(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// [`cpu_time_us`] of each of a process's threads now running, summed by thread name (`comm`):
/// which part of a server the CPU went to (a tokio runtime's workers share one name). Threads
/// that already ended, or end while this reads, are not in it.
fn thread_cpu_time_us(pid: u32) -> Option<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let (Some(name), Some(us)) = (stat_name(&stat), stat_cpu_us(&stat)) {
            *out.entry(name.to_owned()).or_insert(0) += us;
        }
    }
    Some(out)
}

/// CPU time used so far by a server (in all and by thread name) and by the calling process,
/// read together; two of them give the CPU a run cost per message.
#[derive(Clone, Debug, Default)]
pub struct CpuSnapshot {
    server: Option<u64>,
    server_threads: Option<BTreeMap<String, u64>>,
    own: Option<u64>,
}

/// What a run cost per message, in microseconds of CPU (10 ms resolution over the run).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuPerMessage {
    /// The server, all its threads.
    pub server: Option<f64>,
    /// The server by thread name, for the names that ran through the run and used any CPU.
    pub server_threads: Vec<(String, f64)>,
    /// The calling process: the load generator itself.
    pub own: Option<f64>,
}

impl CpuSnapshot {
    /// Reads the server's figures (if `server_pid` is given) and this process's.
    pub fn read(server_pid: Option<u32>) -> Self {
        Self {
            server: server_pid.and_then(cpu_time_us),
            server_threads: server_pid.and_then(thread_cpu_time_us),
            own: cpu_time_us(std::process::id()),
        }
    }

    /// The CPU spent between `before` and this snapshot, per message of `messages`.
    pub fn per_message_since(&self, before: &Self, messages: u64) -> CpuPerMessage {
        let per = |b: Option<u64>, a: Option<u64>| {
            Some(a?.saturating_sub(b?) as f64 / messages.max(1) as f64)
        };
        let server_threads = match (&before.server_threads, &self.server_threads) {
            (Some(b), Some(a)) => a
                .iter()
                .filter_map(|(name, us)| {
                    Some((name.clone(), per(b.get(name).copied(), Some(*us))?))
                })
                .filter(|(_, us)| *us > 0.0)
                .collect(),
            _ => Vec::new(),
        };
        CpuPerMessage {
            server: per(before.server, self.server),
            server_threads,
            own: per(before.own, self.own),
        }
    }
}

/// The command name of a `/proc/<pid>/stat` line: between the first `(` and the last `)`.
fn stat_name(stat: &str) -> Option<&str> {
    stat.get(stat.find('(')? + 1..stat.rfind(')')?)
}

/// `utime` + `stime` (fields 14 and 15) of a `/proc/<pid>/stat` line, in microseconds. The
/// command name (field 2) may hold spaces and parentheses, so the fields are counted from the
/// last `)`.
fn stat_cpu_us(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    // After the name: state is field 3, so utime (14) is the 12th field of `rest`.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)?.checked_mul(1_000_000 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        // A real line's shape: pid (comm) state ppid ... utime stime ...
        let line = "4242 (ferry (x) 1) S 1 4242 4242 0 -1 4194560 731 0 0 0 123 45 0 0 20 0 \
                    3 0 171 12345678 2222 18446744073709551615";
        assert_eq!(stat_cpu_us(line), Some((123 + 45) * 10_000));
        assert_eq!(stat_name(line), Some("ferry (x) 1"));
        assert_eq!(stat_cpu_us("4242 (ferry) S 1 2 3"), None);
        assert_eq!(stat_cpu_us("no name here"), None);
        assert_eq!(
            stat_cpu_us("1 (x) S 1 1 1 0 -1 0 0 0 0 0 notanumber 45 0"),
            None
        );
        // The test process reads its own lines.
        assert!(cpu_time_us(std::process::id()).is_some());
        let threads = thread_cpu_time_us(std::process::id()).unwrap();
        assert!(!threads.is_empty());
    }

    #[test]
    fn cpu_per_message_is_the_difference_over_the_messages() {
        let snap = |server, threads: &[(&str, u64)], own| CpuSnapshot {
            server,
            server_threads: Some(threads.iter().map(|(n, t)| (n.to_string(), *t)).collect()),
            own,
        };
        let before = snap(
            Some(1_000_000),
            &[("writer", 400_000), ("idle", 10_000)],
            Some(5),
        );
        let after = snap(
            Some(3_000_000),
            &[("writer", 1_400_000), ("idle", 10_000), ("new", 50_000)],
            Some(500_005),
        );
        assert_eq!(
            after.per_message_since(&before, 100_000),
            CpuPerMessage {
                server: Some(20.0),
                // A thread that did nothing, and one that started during the run, are left out.
                server_threads: vec![("writer".to_string(), 10.0)],
                own: Some(5.0),
            }
        );
        // Without a server pid only the load generator's own figure remains.
        let none = CpuSnapshot::read(None);
        let cost = CpuSnapshot::read(None).per_message_since(&none, 0);
        assert_eq!((cost.server, cost.server_threads.len()), (None, 0));
        assert!(cost.own.is_some());
    }

    #[test]
    fn stamp_round_trips_and_short_input_is_refused() {
        let before = unix_nanos();
        let p = stamp(42, 256);
        assert_eq!(p.len(), 256);
        let (id, sent) = read_stamp(&p).unwrap();
        assert_eq!(id, 42);
        assert!(sent >= before && sent <= unix_nanos());
        assert_eq!(stamp(1, 3).len(), 16);
        assert_eq!(read_stamp(&p[..15]), None);
        let (a, b) = (message_id(7), message_id(7));
        assert_eq!((a.len(), &a[8..]), (16, &7u64.to_be_bytes()[..]));
        assert!(b[..8] >= a[..8]);
    }

    #[test]
    fn percentiles_are_nearest_rank_in_ms() {
        let us: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&us, 0.5), 51.0);
        assert_eq!(percentile_ms(&us, 0.99), 99.0);
        assert_eq!(percentile_ms(&us, 1.0), 100.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn reads_own_memory() {
        let (rss, peak) = rss_kib(std::process::id()).unwrap();
        assert!(rss > 0 && peak >= rss);
        assert_eq!(rss_kib(u32::MAX), None);
    }

    #[test]
    fn reads_own_disk_writes() {
        let before = disk_written_bytes(std::process::id()).unwrap();
        assert!(disk_written_bytes(std::process::id()).unwrap() >= before);
        assert_eq!(disk_written_bytes(u32::MAX), None);
    }
}

/// How a load generator's producer sends: one Enqueue (200) per message, or through a
/// [`crate::Batcher`] (EnqueueMany, 812), each message answered on its own either way.
#[derive(Clone, Debug)]
pub enum Sender {
    /// One request per message.
    Plain(std::sync::Arc<crate::Client>),
    /// Messages waiting on the connection go out together.
    Batched(crate::Batcher),
}

impl Sender {
    /// A sender over `client`; `batch` picks the [`crate::Batcher`] with its default options.
    /// Needs a tokio runtime when batching.
    pub fn new(client: &std::sync::Arc<crate::Client>, batch: bool) -> Self {
        if batch {
            Sender::Batched(crate::Batcher::new(
                std::sync::Arc::clone(client),
                crate::BatchOptions::default(),
            ))
        } else {
            Sender::Plain(std::sync::Arc::clone(client))
        }
    }

    /// Sends one message; resolves when the node answered for it.
    pub async fn enqueue(
        &self,
        req: ferry_proto::qpq::v1::EnqueueRequest,
    ) -> Result<ferry_proto::qpq::v1::EnqueueResponse, crate::ClientError> {
        match self {
            Sender::Plain(c) => c.enqueue(&req).await,
            Sender::Batched(b) => b.enqueue(req).await,
        }
    }
}
