//! The peer table: every node we know how to reach, from whatever told us. Bounded, with an
//! eviction rule and a cap on how many entries any one neighbour may introduce.

use std::net::SocketAddr;

use crate::det::{Keyed, Map};
use ferry_proto::types::NodeId;

use crate::wire::MAX_ADDRS_PER_PEER;

/// How we learned about a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerSource {
    /// mDNS on a local link.
    Mdns,
    /// The configuration.
    Static,
    /// Peer exchange, from this neighbour.
    Exchange(NodeId),
    /// It connected to us.
    Inbound,
    /// A neighbour before this node restarted (remembered across restarts): dialled at once,
    /// so that a restarted node relinks at once, whether or not its neighbours know how to
    /// reach it.
    Restored,
}

/// A peer as shown by `ferry peers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    /// The peer.
    pub node: NodeId,
    /// Its addresses.
    pub addrs: Vec<SocketAddr>,
    /// Learned by mDNS.
    pub mdns: bool,
    /// Configured.
    pub configured: bool,
    /// Learned by peer exchange from this neighbour.
    pub exchanged_by: Option<NodeId>,
    /// A link is up.
    pub linked: bool,
    /// Milliseconds since last seen (link or discovery).
    pub age_ms: u64,
    /// Failed dials in a row.
    pub failures: u32,
    /// A neighbour before this node restarted.
    pub restored: bool,
    /// Why the last dial failed, while it has not linked since.
    pub last_error: Option<String>,
    /// The link is up but has heard nothing for a while: routes avoid it where they can.
    pub suspect: bool,
    /// Milliseconds since the link last heard the peer (links whose driver reports it).
    pub heard_ms_ago: Option<u64>,
}

#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) mdns: bool,
    pub(crate) configured: bool,
    pub(crate) exchanged_by: Option<NodeId>,
    pub(crate) first_seen_ms: u64,
    pub(crate) last_seen_ms: u64,
    pub(crate) linked: bool,
    pub(crate) dialing_since: Option<u64>,
    pub(crate) next_dial_ms: u64,
    pub(crate) failures: u32,
    pub(crate) penalty_until_ms: u64,
    pub(crate) restored: bool,
    pub(crate) last_error: Option<String>,
}

/// Why a peer was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AddRefused {
    /// The table is full of peers that may not be evicted.
    Full,
    /// The introducing neighbour already introduced its share.
    SourceCap,
}

#[derive(Debug)]
pub(crate) struct PeerTable {
    me: NodeId,
    map: Map<NodeId, Peer>,
    cap: usize,
    per_source_cap: usize,
}

impl PeerTable {
    pub(crate) fn new(me: NodeId, cap: usize, per_source_cap: usize, keyed: Keyed) -> Self {
        Self {
            me,
            map: keyed.map(),
            cap: cap.max(1),
            per_source_cap: per_source_cap.max(1),
        }
    }

    fn merge_addrs(into: &mut Vec<SocketAddr>, from: &[SocketAddr]) {
        for a in from {
            if !into.contains(a) {
                into.insert(0, *a);
            }
        }
        into.truncate(MAX_ADDRS_PER_PEER);
    }

    /// Adds or refreshes a peer.
    pub(crate) fn add(
        &mut self,
        id: NodeId,
        addrs: &[SocketAddr],
        source: PeerSource,
        now_ms: u64,
    ) -> Result<(), AddRefused> {
        if id == self.me {
            return Ok(());
        }
        if let Some(p) = self.map.get_mut(&id) {
            // An exchanged record never overrides what we saw ourselves.
            if !matches!(source, PeerSource::Exchange(_)) || (!p.mdns && !p.configured) {
                Self::merge_addrs(&mut p.addrs, addrs);
            }
            match source {
                PeerSource::Mdns => p.mdns = true,
                PeerSource::Static => p.configured = true,
                PeerSource::Restored => p.restored = true,
                PeerSource::Exchange(_) | PeerSource::Inbound => {}
            }
            if !matches!(source, PeerSource::Exchange(_)) {
                p.last_seen_ms = now_ms;
            }
            return Ok(());
        }
        if let PeerSource::Exchange(via) = source {
            let introduced = self
                .map
                .values()
                .filter(|p| p.exchanged_by == Some(via))
                .count();
            if introduced >= self.per_source_cap {
                return Err(AddRefused::SourceCap);
            }
        }
        if self.map.len() >= self.cap {
            // Evict the stalest peer that is neither linked nor configured.
            let victim = self
                .map
                .iter()
                .filter(|(_, p)| !p.linked && !p.configured)
                .min_by_key(|(k, p)| (p.last_seen_ms, **k))
                .map(|(k, _)| *k);
            match victim {
                Some(v) => {
                    self.map.remove(&v);
                }
                None => return Err(AddRefused::Full),
            }
        }
        let mut p = Peer {
            addrs: Vec::new(),
            mdns: source == PeerSource::Mdns,
            configured: source == PeerSource::Static,
            exchanged_by: match source {
                PeerSource::Exchange(v) => Some(v),
                _ => None,
            },
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            linked: false,
            dialing_since: None,
            next_dial_ms: now_ms,
            failures: 0,
            penalty_until_ms: 0,
            restored: source == PeerSource::Restored,
            last_error: None,
        };
        Self::merge_addrs(&mut p.addrs, addrs);
        self.map.insert(id, p);
        Ok(())
    }

    pub(crate) fn get(&self, id: &NodeId) -> Option<&Peer> {
        self.map.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &NodeId) -> Option<&mut Peer> {
        self.map.get_mut(id)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&NodeId, &Peer)> {
        self.map.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&NodeId, &mut Peer)> {
        self.map.iter_mut()
    }

    /// Forgets peers nobody has seen for `max_age_ms` (except configured and linked ones).
    pub(crate) fn expire(&mut self, now_ms: u64, max_age_ms: u64) {
        self.map.retain(|_, p| {
            p.linked || p.configured || now_ms.saturating_sub(p.last_seen_ms) <= max_age_ms
        });
    }

    pub(crate) fn view(&self, now_ms: u64) -> Vec<PeerView> {
        let mut v: Vec<PeerView> = self
            .map
            .iter()
            .map(|(k, p)| PeerView {
                node: *k,
                addrs: p.addrs.clone(),
                mdns: p.mdns,
                configured: p.configured,
                exchanged_by: p.exchanged_by,
                linked: p.linked,
                age_ms: now_ms.saturating_sub(p.last_seen_ms),
                failures: p.failures,
                restored: p.restored,
                last_error: p.last_error.clone(),
                suspect: false,
                heard_ms_ago: None,
            })
            .collect();
        v.sort_by_key(|p| (!p.linked, p.node));
        v
    }
}
