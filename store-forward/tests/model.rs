//! Model-based property test: random operation sequences against the store and against a
//! plain in-memory model of the documented semantics; every answer and every count must agree.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use ferry_store::{QuotaScope, Store, StoreConfig, StoreError};
use proptest::prelude::*;

const OVERHEAD: u64 = 128;
/// What a dedup record of a message no longer stored counts against the node-wide budget.
const DEDUP_RECORD: u64 = 100;

#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        mb: u8,
        id: u64,
        len: usize,
        ttl: u64,
    },
    Batch {
        mbs: Vec<u8>,
        id: u64,
        len: usize,
        ttl: u64,
    },
    /// `n` messages with ids `id..id + n` to one mailbox in one batch: one expiry run.
    Run {
        mb: u8,
        id: u64,
        n: u64,
        len: usize,
        ttl: u64,
    },
    Ack {
        mb: u8,
        up_to: u64,
    },
    Fetch {
        mb: u8,
        after: u64,
        limit: u32,
    },
    Advance {
        ms: u64,
    },
    Sweep,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, 0u64..8, 1usize..200, 1u64..5).prop_map(|(mb, id, len, ttl)| Op::Enqueue { mb, id, len, ttl: ttl * 1000 }),
        1 => (proptest::collection::vec(0u8..3, 1..4), 0u64..8, 1usize..200, 1u64..5).prop_map(|(mbs, id, len, ttl)| Op::Batch { mbs, id, len, ttl: ttl * 1000 }),
        2 => (0u8..3, 0u64..8, 2u64..5, 1usize..100, 1u64..5).prop_map(|(mb, id, n, len, ttl)| Op::Run { mb, id, n, len, ttl: ttl * 1000 }),
        2 => (0u8..3, 0u64..12).prop_map(|(mb, up_to)| Op::Ack { mb, up_to }),
        3 => (0u8..3, 0u64..12, 1u32..6).prop_map(|(mb, after, limit)| Op::Fetch { mb, after, limit }),
        2 => (0u64..3000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Sweep),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Debug)]
struct Msg {
    id: u64,
    payload: Vec<u8>,
    exp: u64,
}

#[derive(Default)]
struct Mailbox {
    last_seq: u64,
    msgs: BTreeMap<u64, Msg>,
}

struct Model {
    now: u64,
    cfg: StoreConfig,
    boxes: HashMap<u8, Mailbox>,
    /// (id, mailbox) -> (seq, expiry); live while expiry > now.
    dedup: HashMap<(u64, u8), (u64, u64)>,
    /// The store's mailbox ids: given out in the order mailboxes first store a message.
    mailbox_ids: HashMap<u8, u64>,
}

impl Model {
    fn stored(&self) -> (u64, u64) {
        let mut n = 0;
        let mut b = 0;
        for m in self.boxes.values().flat_map(|mb| mb.msgs.values()) {
            n += 1;
            b += m.payload.len() as u64 + OVERHEAD;
        }
        (n, b)
    }

    /// Dedup entries whose message is no longer stored (acknowledged).
    fn dedup_records(&self) -> Vec<(u64, u64, u64, (u64, u8))> {
        let mut out: Vec<_> = self
            .dedup
            .iter()
            .filter(|((_, mb), (seq, _))| {
                !self.boxes.get(mb).is_some_and(|b| b.msgs.contains_key(seq))
            })
            .map(|(k, (seq, exp))| (*exp, self.mailbox_ids[&k.1], *seq, *k))
            .collect();
        out.sort();
        out
    }

    /// What counts against `max_total_bytes`.
    fn used(&self) -> u64 {
        self.stored().1 + self.dedup_records().len() as u64 * DEDUP_RECORD
    }

    /// Drops the dedup records expiring soonest until `need` bytes and a thirty-second of the
    /// budget fit, if dropping them can make `need` fit at all.
    fn forget(&mut self, need: u64) {
        let max = self.cfg.max_total_bytes;
        if self.used() + need <= max || self.stored().1 + need > max {
            return;
        }
        let excess = (self.used() + need + max / 32).saturating_sub(max);
        for (_, _, _, key) in self
            .dedup_records()
            .into_iter()
            .take(excess.div_ceil(DEDUP_RECORD) as usize)
        {
            self.dedup.remove(&key);
        }
    }

    fn usage(&self, mb: u8) -> (u64, u64) {
        let msgs = self
            .boxes
            .get(&mb)
            .map(|m| m.msgs.values().collect::<Vec<_>>())
            .unwrap_or_default();
        (
            msgs.len() as u64,
            msgs.iter().map(|m| m.payload.len() as u64 + OVERHEAD).sum(),
        )
    }

    fn sweep(&mut self) -> u64 {
        let now = self.now;
        let mut n = 0;
        for mb in self.boxes.values_mut() {
            let before = mb.msgs.len();
            mb.msgs.retain(|_, m| m.exp > now);
            n += (before - mb.msgs.len()) as u64;
        }
        self.dedup.retain(|_, (_, exp)| *exp > now);
        n
    }

    fn live_dup(&mut self, id: u64, mb: u8) -> Option<u64> {
        match self.dedup.get(&(id, mb)).copied() {
            Some((seq, exp)) if exp > self.now => Some(seq),
            Some((seq, _)) => {
                // Expired entry met on the way: the store expires it on the spot.
                self.dedup.remove(&(id, mb));
                if let Some(b) = self.boxes.get_mut(&mb) {
                    b.msgs.remove(&seq);
                }
                None
            }
            None => None,
        }
    }

    fn over(&self, total: u64, per: &HashMap<u8, (u64, u64)>) -> Option<QuotaScope> {
        let mut over = None;
        if self.used() + total > self.cfg.max_total_bytes {
            over = Some(QuotaScope::GlobalBytes);
        }
        for (mb, (n, b)) in per {
            let (un, ub) = self.usage(*mb);
            if un + n > self.cfg.max_recipient_messages {
                over = over.or(Some(QuotaScope::RecipientMessages));
            } else if ub + b > self.cfg.max_recipient_bytes {
                over = over.or(Some(QuotaScope::RecipientBytes));
            }
        }
        over
    }

    fn enqueue_all(
        &mut self,
        items: &[(u8, u64, Vec<u8>, u64)],
    ) -> Result<Vec<(u64, bool)>, QuotaScope> {
        let mut total = 0;
        let mut per: HashMap<u8, (u64, u64)> = HashMap::new();
        // Duplicates are decided before room is made: a message recognised here is answered
        // as a duplicate even if making room then drops its dedup record.
        let mut dups = Vec::with_capacity(items.len());
        for (mb, id, p, _) in items {
            let dup = self.live_dup(*id, *mb);
            dups.push(dup);
            if dup.is_some() {
                continue;
            }
            let c = p.len() as u64 + OVERHEAD;
            total += c;
            let e = per.entry(*mb).or_default();
            e.0 += 1;
            e.1 += c;
        }
        if total > 0 && self.over(total, &per).is_some() {
            self.sweep();
            self.forget(total);
            if let Some(scope) = self.over(total, &per) {
                return Err(scope);
            }
        }
        let mut out = Vec::new();
        for ((mb, id, p, exp), dup) in items.iter().zip(dups) {
            // Only an earlier message of this set can have stored the same id since.
            if let Some(seq) = dup.or_else(|| self.live_dup(*id, *mb)) {
                out.push((seq, true));
                continue;
            }
            let next_id = self.mailbox_ids.len() as u64 + 1;
            self.mailbox_ids.entry(*mb).or_insert(next_id);
            let b = self.boxes.entry(*mb).or_default();
            b.last_seq += 1;
            let seq = b.last_seq;
            b.msgs.insert(
                seq,
                Msg {
                    id: *id,
                    payload: p.clone(),
                    exp: *exp,
                },
            );
            self.dedup.insert((*id, *mb), (seq, *exp));
            out.push((seq, false));
        }
        Ok(out)
    }
}

fn payload(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id as usize * 31 + i) as u8).collect()
}

/// Enqueues `items` (mailbox, id, payload, expires at) as one batch, to the store and the model.
fn enqueue_batch(
    store: &Store,
    m: &mut Model,
    items: &[(u8, u64, Vec<u8>, u64)],
) -> Result<(), TestCaseError> {
    let got = store
        .enqueue_batch(
            items
                .iter()
                .map(|(mb, id, p, exp)| msg(mailbox(*mb), *id, p, m.now, exp - m.now))
                .collect(),
        )
        .wait();
    let want = m.enqueue_all(items);
    match (got, want) {
        (Ok(e), Ok(v)) => prop_assert_eq!(
            e.iter().map(|e| (e.seq, e.duplicate)).collect::<Vec<_>>(),
            v
        ),
        (Err(StoreError::QuotaExceeded { scope, .. }), Err(w)) => prop_assert_eq!(scope, w),
        (g, w) => prop_assert!(false, "batch: store {:?} model {:?}", g, w),
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.redb");
    let cfg = StoreConfig {
        max_total_bytes: 9 * (100 + OVERHEAD),
        max_recipient_messages: 4,
        max_recipient_bytes: 4 * (150 + OVERHEAD),
        ..StoreConfig::default()
    };
    let mut store = Store::open(&path, cfg.clone()).unwrap();
    let mut m = Model {
        now: T0,
        cfg: cfg.clone(),
        boxes: HashMap::new(),
        dedup: HashMap::new(),
        mailbox_ids: HashMap::new(),
    };
    for op in ops {
        match op {
            Op::Enqueue { mb, id, len, ttl } => {
                let p = payload(id, len);
                let got = store.enqueue(msg(mailbox(mb), id, &p, m.now, ttl)).wait();
                let want = m.enqueue_all(&[(mb, id, p, m.now + ttl)]);
                match (got, want) {
                    (Ok(e), Ok(v)) => prop_assert_eq!((e.seq, e.duplicate), v[0]),
                    (Err(StoreError::QuotaExceeded { scope, .. }), Err(w)) => {
                        prop_assert_eq!(scope, w)
                    }
                    (g, w) => prop_assert!(false, "enqueue: store {:?} model {:?}", g, w),
                }
            }
            Op::Batch { mbs, id, len, ttl } => {
                let p = payload(id, len);
                let items: Vec<_> = mbs
                    .iter()
                    .map(|mb| (*mb, id, p.clone(), m.now + ttl))
                    .collect();
                enqueue_batch(&store, &mut m, &items)?;
            }
            Op::Run {
                mb,
                id,
                n,
                len,
                ttl,
            } => {
                let items: Vec<_> = (id..id + n)
                    .map(|i| (mb, i, payload(i, len), m.now + ttl))
                    .collect();
                enqueue_batch(&store, &mut m, &items)?;
            }
            Op::Ack { mb, up_to } => {
                let got = store.ack(mailbox(mb), up_to).wait().unwrap();
                let b = m.boxes.entry(mb).or_default();
                let before = b.msgs.len();
                b.msgs.retain(|s, _| *s > up_to);
                prop_assert_eq!(got, (before - b.msgs.len()) as u64);
            }
            Op::Fetch { mb, after, limit } => {
                let got: Vec<_> = store
                    .fetch(&mailbox(mb), after, limit, usize::MAX, m.now)
                    .unwrap()
                    .into_iter()
                    .map(|s| (s.seq, s.message_id, s.payload))
                    .collect();
                let want: Vec<_> = m
                    .boxes
                    .get(&mb)
                    .map(|b| {
                        b.msgs
                            .range(after + 1..)
                            .filter(|(_, v)| v.exp > m.now)
                            .take(limit as usize)
                            .map(|(s, v)| (*s, mid(v.id), v.payload.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                prop_assert_eq!(got, want);
            }
            Op::Advance { ms } => m.now += ms,
            Op::Sweep => {
                let got = store.sweep(m.now).wait().unwrap();
                prop_assert_eq!(got, m.sweep());
            }
            Op::Reopen => {
                store.close();
                drop(store);
                store = Store::open(&path, cfg.clone()).unwrap();
            }
        }
        let st = store.stats().unwrap();
        prop_assert_eq!((st.messages, st.bytes), m.stored());
        prop_assert_eq!(st.dedup_records, m.dedup_records().len() as u64);
        prop_assert_eq!(st.used_bytes, m.used());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
