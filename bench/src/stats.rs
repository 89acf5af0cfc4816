//! Payloads, the recorder shared by producers and the consumer, and the figures of a run.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_client::loadgen::{percentile_ms, read_stamp, unix_nanos};

use crate::Workload;

#[derive(Debug, Default)]
struct Inner {
    acks_us: Vec<u64>,
    e2e_us: Vec<u64>,
    seen: HashSet<u64>,
    duplicated: u64,
    foreign: u64,
    last_receive: Option<Instant>,
}

/// Collects what producers and the consumer observe.
#[derive(Debug)]
pub(crate) struct Recorder {
    expected: u64,
    inner: Mutex<Inner>,
}

impl Recorder {
    pub(crate) fn new(expected: u64) -> Self {
        let n = usize::try_from(expected).unwrap_or(0);
        Self {
            expected,
            inner: Mutex::new(Inner {
                acks_us: Vec::with_capacity(n),
                e2e_us: Vec::with_capacity(n),
                seen: HashSet::with_capacity(n),
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A publish was acknowledged by the server after `d`.
    pub(crate) fn acked(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.lock().acks_us.push(us);
    }

    /// The consumer got `payload`.
    pub(crate) fn received(&self, payload: &[u8]) {
        let now = unix_nanos();
        let mut g = self.lock();
        g.last_receive = Some(Instant::now());
        match read_stamp(payload) {
            Some((id, sent)) if id < self.expected => {
                if g.seen.insert(id) {
                    g.e2e_us.push(now.saturating_sub(sent) / 1000);
                } else {
                    g.duplicated += 1;
                }
            }
            _ => g.foreign += 1,
        }
    }

    /// Publishes acknowledged so far.
    pub(crate) fn acked_count(&self) -> u64 {
        self.lock().acks_us.len() as u64
    }

    /// Distinct expected ids received so far.
    pub(crate) fn distinct(&self) -> u64 {
        self.lock().seen.len() as u64
    }

    /// Whether every expected id has arrived.
    pub(crate) fn complete(&self) -> bool {
        self.distinct() >= self.expected
    }

    /// (distinct received, duplicated).
    pub(crate) fn counts(&self) -> (u64, u64) {
        let g = self.lock();
        (g.seen.len() as u64, g.duplicated)
    }

    /// When the consumer last got a message.
    pub(crate) fn last_receive(&self) -> Option<Instant> {
        self.lock().last_receive
    }

    /// The figures of a run that started at `start` and whose producers finished after
    /// `sent`.
    pub(crate) fn outcome(&self, start: Instant, sent: Duration) -> Outcome {
        let mut g = self.lock();
        g.acks_us.sort_unstable();
        g.e2e_us.sort_unstable();
        Outcome {
            acked: g.acks_us.len() as u64,
            sent,
            delivered: g
                .last_receive
                .map(|t| t.saturating_duration_since(start))
                .unwrap_or_default(),
            received: g.seen.len() as u64,
            duplicated: g.duplicated,
            foreign: g.foreign,
            ack: percentiles(&g.acks_us),
            e2e: percentiles(&g.e2e_us),
        }
    }
}

/// (p50, p99) in milliseconds.
fn percentiles(sorted: &[u64]) -> (f64, f64) {
    (percentile_ms(sorted, 0.50), percentile_ms(sorted, 0.99))
}

/// What a run measured.
#[derive(Debug)]
pub(crate) struct Outcome {
    acked: u64,
    sent: Duration,
    delivered: Duration,
    received: u64,
    duplicated: u64,
    foreign: u64,
    ack: (f64, f64),
    e2e: (f64, f64),
}

impl Outcome {
    pub(crate) fn to_json(&self, w: &Workload) -> serde_json::Value {
        let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
        serde_json::json!({
            "messages": w.messages,
            "size": w.size,
            "in_flight": w.in_flight,
            "producers": w.producers,
            "acknowledged": self.acked,
            "throughput": rate(self.acked, self.sent).round(),
            "delivered_throughput": rate(self.received, self.delivered).round(),
            "publish_ack_p50_ms": self.ack.0,
            "publish_ack_p99_ms": self.ack.1,
            "e2e_p50_ms": self.e2e.0,
            "e2e_p99_ms": self.e2e.1,
            "received": self.received,
            "lost": w.messages.saturating_sub(self.received),
            "duplicated": self.duplicated,
            "foreign": self.foreign,
        })
    }
}

/// Waits until the recorder is complete, or nothing arrived for `idle` (counting from
/// `since` until the first message).
pub(crate) async fn wait_complete(rec: &Recorder, since: Instant, idle: Duration) {
    loop {
        if rec.complete() {
            return;
        }
        let last = rec.last_receive().unwrap_or(since).max(since);
        if last.elapsed() >= idle {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
