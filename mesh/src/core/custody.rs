//! The bundles this node holds in custody, by digest and by recipient. Payloads stay on disk;
//! the core keeps only what it needs to route them.

use crate::det::{Keyed, Map, Set};
use ferry_proto::types::{BundleDigest, IdentityKey, MessageId, NodeId};

/// What the core knows about a bundle in custody.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BundleMeta {
    /// Digest.
    pub digest: BundleDigest,
    /// Recipient.
    pub recipient: IdentityKey,
    /// When it expires, on the core's clock.
    pub deadline_ms: u64,
    /// Payload bytes.
    pub size: u32,
    /// The node that handed it to us (None: a local client).
    pub from: Option<NodeId>,
    /// Hops taken so far.
    pub hop_count: u8,
    /// Hops allowed.
    pub hop_limit: u8,
    /// Where it goes among its recipient's bundles: its message id as a number, which from
    /// senders that make time-ordered ids (qpq's UUIDv7 layout, as Ferry's client does, one
    /// after the other within a millisecond) is the order they were sent in. Bundles are
    /// offered and delivered in this order, so one sender's messages held in the mesh reach
    /// the recipient in the order sent.
    pub order: u128,
}

/// The order key of a message id (see [`BundleMeta::order`]).
pub fn order_of(id: &MessageId) -> u128 {
    u128::from_be_bytes(*id.as_bytes())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Waiting for a route (or for its turn).
    Pending,
    /// Offered to a neighbour, waiting for Want or Ack.
    Offered(NodeId),
    /// Sent to a neighbour, waiting for its custody Ack.
    Sending(NodeId, u64),
    /// Being moved into a local mailbox.
    Delivering,
    /// Refused downstream: not before this time.
    Retry(u64),
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) meta: BundleMeta,
    pub(crate) state: State,
}

#[derive(Debug)]
pub(crate) struct Custody {
    keyed: Keyed,
    entries: Map<BundleDigest, Entry>,
    by_recipient: Map<IdentityKey, Set<BundleDigest>>,
    bytes: u64,
    /// Bundles offered or sent to each neighbour (kept in step with the states).
    in_flight: Map<NodeId, usize>,
    /// Bundles handed to us by each neighbour.
    from: Map<NodeId, usize>,
}

fn flight_peer(s: State) -> Option<NodeId> {
    match s {
        State::Offered(p) | State::Sending(p, _) => Some(p),
        _ => None,
    }
}

fn bump(m: &mut Map<NodeId, usize>, k: Option<NodeId>, up: bool) {
    let Some(k) = k else { return };
    if up {
        *m.entry(k).or_insert(0) += 1;
    } else if let Some(n) = m.get_mut(&k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            m.remove(&k);
        }
    }
}

impl Custody {
    pub(crate) fn new(keyed: Keyed) -> Self {
        Self {
            keyed,
            entries: keyed.map(),
            by_recipient: keyed.map(),
            bytes: 0,
            in_flight: keyed.map(),
            from: keyed.map(),
        }
    }

    pub(crate) fn insert(&mut self, meta: BundleMeta) -> bool {
        if self.entries.contains_key(&meta.digest) {
            return false;
        }
        let keyed = self.keyed;
        self.by_recipient
            .entry(meta.recipient)
            .or_insert_with(|| keyed.set())
            .insert(meta.digest);
        self.bytes += u64::from(meta.size);
        bump(&mut self.from, meta.from, true);
        self.entries.insert(
            meta.digest,
            Entry {
                meta,
                state: State::Pending,
            },
        );
        true
    }

    pub(crate) fn remove(&mut self, d: &BundleDigest) -> Option<Entry> {
        let e = self.entries.remove(d)?;
        if let Some(set) = self.by_recipient.get_mut(&e.meta.recipient) {
            set.remove(d);
            if set.is_empty() {
                self.by_recipient.remove(&e.meta.recipient);
            }
        }
        self.bytes = self.bytes.saturating_sub(u64::from(e.meta.size));
        bump(&mut self.from, e.meta.from, false);
        bump(&mut self.in_flight, flight_peer(e.state), false);
        Some(e)
    }

    pub(crate) fn get(&self, d: &BundleDigest) -> Option<&Entry> {
        self.entries.get(d)
    }

    pub(crate) fn set_state(&mut self, d: &BundleDigest, s: State) {
        if let Some(e) = self.entries.get_mut(d) {
            bump(&mut self.in_flight, flight_peer(e.state), false);
            bump(&mut self.in_flight, flight_peer(s), true);
            e.state = s;
        }
    }

    pub(crate) fn contains(&self, d: &BundleDigest) -> bool {
        self.entries.contains_key(d)
    }

    pub(crate) fn recipients(&self) -> Vec<IdentityKey> {
        self.by_recipient.keys().copied().collect()
    }

    pub(crate) fn of_recipient(&self, r: &IdentityKey) -> Vec<BundleDigest> {
        let mut v: Vec<BundleDigest> = self
            .by_recipient
            .get(r)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        // In the order sent (then by digest: deterministic, for the simulator's replays).
        v.sort_by_key(|d| (self.entries.get(d).map_or(0, |e| e.meta.order), *d));
        v
    }

    /// Digests in the order their messages were sent (see [`BundleMeta::order`]).
    pub(crate) fn sort(&self, v: &mut [BundleDigest]) {
        v.sort_by_key(|d| (self.entries.get(d).map_or(0, |e| e.meta.order), *d));
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&BundleDigest, &Entry)> {
        self.entries.iter()
    }

    /// Bundles in custody handed over by `peer`.
    pub(crate) fn count_from(&self, peer: &NodeId) -> usize {
        self.from.get(peer).copied().unwrap_or(0)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Entries whose state is in flight to `peer`.
    pub(crate) fn in_flight_to(&self, peer: &NodeId) -> usize {
        self.in_flight.get(peer).copied().unwrap_or(0)
    }

    /// Puts everything in flight to `peer` back to pending (its link went down).
    pub(crate) fn release(&mut self, peer: &NodeId) -> Vec<IdentityKey> {
        if self.in_flight_to(peer) == 0 {
            return Vec::new();
        }
        let mut touched = Vec::new();
        for e in self.entries.values_mut() {
            if flight_peer(e.state) == Some(*peer) {
                e.state = State::Pending;
                touched.push(e.meta.recipient);
            }
        }
        self.in_flight.remove(peer);
        touched
    }
}
