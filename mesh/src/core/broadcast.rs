//! Topic broadcasts: flooded with dedup, a hop limit and a per-topic rate limit; the last few
//! messages of each topic are kept for late joiners.

use std::collections::VecDeque;

use crate::det::{Keyed, Map, Set};
use ferry_proto::limits::TOPIC_LEN;
use ferry_proto::types::MessageId;

use crate::wire::BroadcastMsg;

/// A kept broadcast message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// This node's sequence number within the topic.
    pub seq: u64,
    /// Dedup key.
    pub message_id: MessageId,
    /// Sealed payload.
    pub payload: Vec<u8>,
    /// When it arrived, on the core's clock.
    pub received_ms: u64,
    /// When it expires, on the core's clock.
    pub deadline_ms: u64,
}

#[derive(Debug)]
struct Topic {
    kept: VecDeque<Kept>,
    next_seq: u64,
    tokens: f64,
    last_ms: u64,
    last_used_ms: u64,
}

/// Why a broadcast was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Already seen (same topic and message id).
    Duplicate,
    /// Over the topic's rate.
    RateLimited,
    /// No lifetime left.
    Expired,
}

#[derive(Debug)]
pub(crate) struct Broadcasts {
    topics: Map<[u8; TOPIC_LEN], Topic>,
    seen: Set<([u8; TOPIC_LEN], MessageId)>,
    seen_order: VecDeque<([u8; TOPIC_LEN], MessageId)>,
    max_topics: usize,
    keep: usize,
    max_seen: usize,
    rate_per_sec: f64,
    burst: f64,
}

impl Broadcasts {
    pub(crate) fn new(
        max_topics: usize,
        keep: usize,
        rate_per_sec: u32,
        burst: u32,
        keyed: Keyed,
    ) -> Self {
        Self {
            topics: keyed.map(),
            seen: keyed.set(),
            seen_order: VecDeque::new(),
            max_topics: max_topics.max(1),
            keep: keep.max(1),
            max_seen: 8192,
            rate_per_sec: f64::from(rate_per_sec.max(1)),
            burst: f64::from(burst.max(1)),
        }
    }

    /// Takes a broadcast (local or from a link); returns the kept copy's seq.
    pub(crate) fn accept(&mut self, m: &BroadcastMsg, now_ms: u64) -> Result<u64, Dropped> {
        let key = (m.topic, m.message_id);
        if self.seen.contains(&key) {
            return Err(Dropped::Duplicate);
        }
        if m.lifetime_ms == 0 {
            return Err(Dropped::Expired);
        }
        if !self.topics.contains_key(&m.topic) && self.topics.len() >= self.max_topics {
            // Evict the least recently used topic.
            if let Some(old) = self
                .topics
                .iter()
                .min_by_key(|(k, t)| (t.last_used_ms, **k))
                .map(|(k, _)| *k)
            {
                self.topics.remove(&old);
            }
        }
        let (rate, burst) = (self.rate_per_sec, self.burst);
        let t = self.topics.entry(m.topic).or_insert(Topic {
            kept: VecDeque::new(),
            next_seq: 1,
            tokens: burst,
            last_ms: now_ms,
            last_used_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(t.last_ms) as f64 / 1000.0;
        t.tokens = (t.tokens + elapsed * rate).min(burst);
        t.last_ms = now_ms;
        if t.tokens < 1.0 {
            return Err(Dropped::RateLimited);
        }
        t.tokens -= 1.0;
        t.last_used_ms = now_ms;
        let seq = t.next_seq;
        t.next_seq += 1;
        t.kept.push_back(Kept {
            seq,
            message_id: m.message_id,
            payload: m.payload.clone(),
            received_ms: now_ms,
            deadline_ms: now_ms.saturating_add(m.lifetime_ms),
        });
        while t.kept.len() > self.keep {
            t.kept.pop_front();
        }
        self.seen.insert(key);
        self.seen_order.push_back(key);
        while self.seen_order.len() > self.max_seen {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        Ok(seq)
    }

    /// Kept messages of a topic after `after_seq`, not expired.
    pub(crate) fn recent(&self, topic: &[u8; TOPIC_LEN], after_seq: u64, now_ms: u64) -> Vec<Kept> {
        self.topics
            .get(topic)
            .map(|t| {
                t.kept
                    .iter()
                    .filter(|k| k.seq > after_seq && k.deadline_ms > now_ms)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}
