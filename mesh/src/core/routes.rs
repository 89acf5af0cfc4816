//! Distance-vector routes to nodes, loop-free by Babel's feasibility condition.
//!
//! Each node originates a route to itself with a sequence number only it increases. A node
//! selects, per destination, the lowest-metric route among *feasible* ones: those whose
//! (seqno, metric) is strictly better than the feasibility distance (FD), the best (seqno,
//! metric) this node has itself advertised for that destination. Because a node never selects
//! a route that could pass through itself with a worse metric, no loop can form, even
//! transiently. When no feasible route is left, the node asks the origin for a newer seqno
//! (a seqno request, relayed hop by hop); the new seqno makes routes feasible again.
//!
//! Replayed or stale updates (an old seqno) are never selected; updates are only accepted from
//! current link neighbours.

use crate::det::{Keyed, Map};
use ferry_proto::types::NodeId;

use crate::wire::{INFINITY, RouteEntry};

/// Cost of one link (hop count metric).
pub(crate) const LINK_COST: u16 = 1;
/// Cost of a link that has gone silent (see the core's liveness): high enough that any path
/// up to this many hops longer is preferred, so traffic takes a redundant path while the
/// link may be dead, and finite, so a link that is the only way keeps carrying.
pub(crate) const SUSPECT_COST: u16 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Source {
    seqno: u32,
    /// The metric the neighbour advertised: what feasibility is judged on (RFC 8966 3.5.1).
    advertised: u16,
    /// Metric through this neighbour (advertised + link cost), INFINITY when retracted.
    metric: u16,
    updated_ms: u64,
}

#[derive(Clone, Debug)]
struct Dest {
    sources: Map<NodeId, Source>,
    /// The selected route: (next hop, seqno, metric).
    selected: Option<(NodeId, u32, u16)>,
    /// Feasibility distance: the best (seqno, metric) we advertised.
    fd: Option<(u32, u16)>,
    /// When we last asked for a newer seqno.
    last_request_ms: Option<u64>,
    /// Selection was lost and the retraction not yet advertised.
    retract_pending: bool,
    /// The destination says it is a federation hub.
    hub: bool,
}

/// Whether (seqno, metric) is strictly better than `fd` in Babel's order.
fn better(seqno: u32, metric: u16, fd: Option<(u32, u16)>) -> bool {
    match fd {
        None => true,
        Some((fs, fm)) => seqno > fs || (seqno == fs && metric < fm),
    }
}

/// A route as shown by `ferry routes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteView {
    /// Destination node.
    pub dest: NodeId,
    /// Next hop (the destination itself for a neighbour, ourselves for us).
    pub next_hop: NodeId,
    /// Hops.
    pub metric: u16,
    /// Origin's sequence number.
    pub seqno: u32,
}

/// What a route table operation changed.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Destinations whose selected next hop or reachability changed.
    pub(crate) changed: Vec<NodeId>,
    /// Destinations whose selected route kept its next hop and metric but got a newer seqno
    /// from the origin: an answer to a seqno request, which must travel on at once (Babel
    /// sends it as a triggered update) to reach the node that starved, not one hop per
    /// periodic dump.
    pub(crate) raised: Vec<NodeId>,
    /// Destinations for which a newer seqno from the origin is wanted, and which: routes are
    /// left but none is feasible, or an infeasible one is better than the one selected.
    pub(crate) starved: Vec<(NodeId, u32)>,
}

#[derive(Debug)]
pub(crate) struct Routes {
    me: NodeId,
    /// We are a federation hub (advertised with our own route).
    me_hub: bool,
    my_seqno: u32,
    dests: Map<NodeId, Dest>,
    max_dests: usize,
    /// Link costs other than [`LINK_COST`] (silent links), by neighbour.
    costs: Map<NodeId, u16>,
    keyed: Keyed,
}

impl Routes {
    pub(crate) fn new(
        me: NodeId,
        me_hub: bool,
        seqno: u32,
        max_dests: usize,
        keyed: Keyed,
    ) -> Self {
        Self {
            me,
            me_hub,
            my_seqno: seqno,
            dests: keyed.map(),
            max_dests,
            costs: keyed.map(),
            keyed,
        }
    }

    fn cost(&self, neighbor: &NodeId) -> u16 {
        self.costs.get(neighbor).copied().unwrap_or(LINK_COST)
    }

    /// Sets the cost of the link to `neighbor` and recomputes the routes through it. Only the
    /// metric we compute changes, never what the neighbour advertised, on which feasibility
    /// is judged: raising a cost cannot form a loop (RFC 8966 3.5.1).
    pub(crate) fn set_cost(&mut self, neighbor: NodeId, cost: u16) -> Changes {
        if cost == LINK_COST {
            self.costs.remove(&neighbor);
        } else {
            self.costs.insert(neighbor, cost);
        }
        let mut out = Changes::default();
        let affected: Vec<NodeId> = self
            .dests
            .iter_mut()
            .filter_map(|(k, d)| {
                let s = d.sources.get_mut(&neighbor)?;
                if s.metric != INFINITY {
                    s.metric = s.advertised.saturating_add(cost).min(INFINITY - 1);
                }
                Some(*k)
            })
            .collect();
        for dest in affected {
            self.reselect(dest, &mut out);
        }
        out
    }

    pub(crate) fn my_seqno(&self) -> u32 {
        self.my_seqno
    }

    /// Answers a seqno request for ourselves: raises our seqno to `wanted` if that is more
    /// than we have (Babel: never bump for a request we already satisfy, or many parallel
    /// requests would each send a new wave through the network). Returns the new seqno if it
    /// changed.
    pub(crate) fn raise_seqno(&mut self, wanted: u32) -> Option<u32> {
        if wanted > self.my_seqno {
            self.my_seqno = wanted;
            Some(wanted)
        } else {
            None
        }
    }

    /// The next hop towards `dest`: `me` for ourselves, `None` when unreachable.
    pub(crate) fn next_hop(&self, dest: &NodeId) -> Option<NodeId> {
        if *dest == self.me {
            return Some(self.me);
        }
        self.dests
            .get(dest)
            .and_then(|d| d.selected)
            .map(|(nh, _, _)| nh)
    }

    /// The default route: the next hop towards the nearest reachable hub (fewest hops, then
    /// the smaller node id), `None` when no hub is reachable or we are one.
    pub(crate) fn default_hop(&self) -> Option<NodeId> {
        if self.me_hub {
            return None;
        }
        self.dests
            .iter()
            .filter(|(_, d)| d.hub)
            .filter_map(|(k, d)| d.selected.map(|(nh, _, m)| (m, *k, nh)))
            .min()
            .map(|(_, _, nh)| nh)
    }

    #[cfg(test)]
    pub(crate) fn metric(&self, dest: &NodeId) -> Option<u16> {
        if *dest == self.me {
            return Some(0);
        }
        self.dests
            .get(dest)
            .and_then(|d| d.selected)
            .map(|(_, _, m)| m)
    }

    fn reselect(&mut self, dest: NodeId, out: &mut Changes) {
        let Some(d) = self.dests.get_mut(&dest) else {
            return;
        };
        let prev = d.selected;
        let fd = d.fd;
        let mut best: Option<(NodeId, u32, u16)> = None;
        for (nb, s) in &d.sources {
            if s.metric == INFINITY || !better(s.seqno, s.advertised, fd) {
                continue;
            }
            let take = match best {
                None => true,
                // Lower metric wins; on a tie keep the current next hop (stability), then the
                // lower node id (determinism).
                Some((bn, _, bm)) => {
                    s.metric < bm
                        || (s.metric == bm
                            && (prev.map(|p| p.0) == Some(*nb)
                                || (prev.map(|p| p.0) != Some(bn) && nb < &bn)))
                }
            };
            if take {
                best = Some((*nb, s.seqno, s.metric));
            }
        }
        d.selected = best;
        if prev.map(|p| (p.0, p.2)) != best.map(|b| (b.0, b.2)) {
            out.changed.push(dest);
        } else if let (Some(p), Some(b)) = (prev, best)
            && b.1 > p.1
        {
            out.raised.push(dest);
        }
        if best.is_none() && prev.is_some() {
            d.retract_pending = true;
        }
        // Routes exist but none is feasible, or an infeasible one is better than the one
        // selected (the selected link became costly): ask the origin for a newer seqno, which
        // makes them feasible (RFC 8966 3.8.2.1 and 3.8.2.2).
        let selected_metric = best.map_or(INFINITY, |b| b.2);
        let wanted = d
            .sources
            .values()
            .filter(|s| s.metric != INFINITY && s.metric < selected_metric)
            .filter(|s| !better(s.seqno, s.advertised, fd))
            .map(|s| s.seqno)
            .max();
        if let Some(max_seqno) = wanted {
            let want = fd
                .map(|(s, _)| s.saturating_add(1))
                .unwrap_or(0)
                .max(max_seqno);
            out.starved.push((dest, want));
        }
    }

    /// An update from `neighbor`; returns what changed.
    pub(crate) fn update(
        &mut self,
        now_ms: u64,
        neighbor: NodeId,
        entries: &[RouteEntry],
    ) -> Changes {
        let mut out = Changes::default();
        for e in entries {
            if e.node == self.me {
                continue;
            }
            if !self.dests.contains_key(&e.node) && self.dests.len() >= self.max_dests {
                // Table full: unknown destinations are ignored (counted by the caller).
                continue;
            }
            let metric = if e.metric == INFINITY {
                INFINITY
            } else {
                e.metric
                    .saturating_add(self.cost(&neighbor))
                    .min(INFINITY - 1)
            };
            let keyed = self.keyed;
            let d = self.dests.entry(e.node).or_insert_with(|| Dest {
                sources: keyed.map(),
                selected: None,
                fd: None,
                last_request_ms: None,
                retract_pending: false,
                hub: false,
            });
            if e.metric != INFINITY {
                d.hub = e.hub;
            }
            match d.sources.get(&neighbor) {
                // A replay or reordering: an older seqno from the same neighbour is ignored.
                Some(old) if e.seqno < old.seqno => continue,
                _ => {}
            }
            d.sources.insert(
                neighbor,
                Source {
                    seqno: e.seqno,
                    advertised: e.metric,
                    metric,
                    updated_ms: now_ms,
                },
            );
            self.reselect(e.node, &mut out);
        }
        out
    }

    /// Forgets every route through `neighbor` (its link went down).
    pub(crate) fn neighbor_down(&mut self, neighbor: &NodeId) -> Changes {
        self.costs.remove(neighbor);
        let mut out = Changes::default();
        let affected: Vec<NodeId> = self
            .dests
            .iter_mut()
            .filter_map(|(k, d)| d.sources.remove(neighbor).map(|_| *k))
            .collect();
        for dest in affected {
            self.reselect(dest, &mut out);
        }
        out
    }

    /// Drops sources not refreshed within `hold_ms`, and destinations left without any.
    pub(crate) fn expire(&mut self, now_ms: u64, hold_ms: u64) -> Changes {
        let mut out = Changes::default();
        let mut touched = Vec::new();
        for (k, d) in &mut self.dests {
            let before = d.sources.len();
            d.sources
                .retain(|_, s| now_ms.saturating_sub(s.updated_ms) <= hold_ms);
            if d.sources.len() != before {
                touched.push(*k);
            }
        }
        for dest in touched {
            self.reselect(dest, &mut out);
        }
        self.dests
            .retain(|_, d| !d.sources.is_empty() || d.selected.is_some() || d.retract_pending);
        out
    }

    /// Whether we asked for a newer seqno for `dest` within `interval_ms`; records the request.
    pub(crate) fn should_request(&mut self, dest: &NodeId, now_ms: u64, interval_ms: u64) -> bool {
        let Some(d) = self.dests.get_mut(dest) else {
            return false;
        };
        match d.last_request_ms {
            Some(t) if now_ms.saturating_sub(t) < interval_ms => false,
            _ => {
                d.last_request_ms = Some(now_ms);
                true
            }
        }
    }

    /// The selected route's seqno for `dest`, if any.
    pub(crate) fn selected_seqno(&self, dest: &NodeId) -> Option<u32> {
        if *dest == self.me {
            return Some(self.my_seqno);
        }
        self.dests
            .get(dest)
            .and_then(|d| d.selected)
            .map(|(_, s, _)| s)
    }

    /// What to advertise: our own route, every selected route, and pending retractions.
    /// Advertising updates the feasibility distances.
    pub(crate) fn advertise(&mut self, only: Option<&[NodeId]>) -> Vec<RouteEntry> {
        let mut out = Vec::new();
        let wanted = |n: &NodeId| only.is_none_or(|o| o.contains(n));
        if wanted(&self.me) {
            out.push(RouteEntry {
                node: self.me,
                seqno: self.my_seqno,
                metric: 0,
                hub: self.me_hub,
            });
        }
        for (k, d) in &mut self.dests {
            if !wanted(k) {
                continue;
            }
            match d.selected {
                Some((_, s, m)) => {
                    if better(s, m, d.fd) {
                        d.fd = Some((s, m));
                    }
                    d.retract_pending = false;
                    out.push(RouteEntry {
                        node: *k,
                        seqno: s,
                        metric: m,
                        hub: d.hub,
                    });
                }
                None if d.retract_pending => {
                    d.retract_pending = false;
                    out.push(RouteEntry {
                        node: *k,
                        seqno: d.fd.map(|f| f.0).unwrap_or(0),
                        metric: INFINITY,
                        hub: d.hub,
                    });
                }
                None => {}
            }
        }
        out
    }

    /// The table for `ferry routes`.
    pub(crate) fn view(&self) -> Vec<RouteView> {
        let mut v: Vec<RouteView> = self
            .dests
            .iter()
            .filter_map(|(k, d)| {
                d.selected.map(|(nh, s, m)| RouteView {
                    dest: *k,
                    next_hop: nh,
                    metric: m,
                    seqno: s,
                })
            })
            .collect();
        v.push(RouteView {
            dest: self.me,
            next_hop: self.me,
            metric: 0,
            seqno: self.my_seqno,
        });
        v.sort_by_key(|r| (r.metric, r.dest));
        v
    }

    pub(crate) fn len(&self) -> usize {
        self.dests.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(b: u8) -> NodeId {
        NodeId::from_array([b; 32])
    }

    fn e(node: u8, seqno: u32, metric: u16) -> RouteEntry {
        RouteEntry {
            node: n(node),
            seqno,
            metric,
            hub: false,
        }
    }

    #[test]
    fn selects_the_shortest_feasible_route() {
        let mut r = Routes::new(n(0), false, 1, 100, Keyed::new(1));
        r.update(0, n(1), &[e(9, 5, 3)]);
        assert_eq!(r.next_hop(&n(9)), Some(n(1)));
        assert_eq!(r.metric(&n(9)), Some(4));
        r.advertise(None); // FD(9) = (5, 4)
        r.update(0, n(2), &[e(9, 5, 1)]);
        assert_eq!(r.next_hop(&n(9)), Some(n(2)));
        assert_eq!(r.metric(&n(9)), Some(2));
    }

    #[test]
    fn a_refresh_of_the_selected_route_stays_feasible() {
        let mut r = Routes::new(n(0), false, 1, 100, Keyed::new(1));
        r.update(0, n(1), &[e(9, 5, 1)]);
        r.advertise(None); // FD(9) = (5, 2)
        let ch = r.update(10, n(1), &[e(9, 5, 1)]);
        assert!(ch.changed.is_empty() && ch.starved.is_empty());
        assert_eq!(r.next_hop(&n(9)), Some(n(1)));
    }

    #[test]
    fn infeasible_routes_are_not_selected_and_starvation_asks_for_a_seqno() {
        let mut r = Routes::new(n(0), false, 1, 100, Keyed::new(1));
        r.update(0, n(1), &[e(9, 5, 1)]);
        let adv = r.advertise(None);
        assert!(adv.contains(&e(9, 5, 2)));
        // A worse route with the same seqno through another neighbour (it advertises 2, not
        // less than our FD of 2): it could lead back through us, so it is not feasible.
        r.update(0, n(2), &[e(9, 5, 2)]);
        let ch = r.neighbor_down(&n(1));
        assert_eq!(
            r.next_hop(&n(9)),
            None,
            "same seqno, higher metric: could be a loop"
        );
        assert_eq!(ch.starved, vec![(n(9), 6)]);
        // The origin answers with a newer seqno: feasible again.
        r.update(1, n(2), &[e(9, 6, 4)]);
        assert_eq!(r.next_hop(&n(9)), Some(n(2)));
        // The lost route is retracted in the next advertisement... it was reselected already.
        let adv = r.advertise(None);
        assert!(adv.contains(&e(9, 6, 5)));
    }

    #[test]
    fn replayed_old_seqnos_are_ignored() {
        let mut r = Routes::new(n(0), false, 1, 100, Keyed::new(1));
        r.update(0, n(1), &[e(9, 10, 1)]);
        r.advertise(None);
        let ch = r.update(0, n(1), &[e(9, 3, 0)]);
        assert!(ch.changed.is_empty());
        assert_eq!(r.selected_seqno(&n(9)), Some(10));
        assert_eq!(r.metric(&n(9)), Some(2));
    }

    #[test]
    fn retractions_and_expiry() {
        let mut r = Routes::new(n(0), false, 1, 100, Keyed::new(1));
        r.update(0, n(1), &[e(9, 1, 1)]);
        r.advertise(None);
        r.update(10, n(1), &[e(9, 1, INFINITY)]);
        assert_eq!(r.next_hop(&n(9)), None);
        let adv = r.advertise(None);
        assert!(adv.iter().any(|x| x.node == n(9) && x.metric == INFINITY));
        assert!(
            !r.advertise(None).iter().any(|x| x.node == n(9)),
            "retracted once"
        );
        r.update(20, n(2), &[e(8, 1, 1)]);
        r.expire(1000, 100);
        assert_eq!(r.next_hop(&n(8)), None);
    }

    #[test]
    fn a_newer_seqno_on_the_selected_route_is_reported_as_raised() {
        let mut r = Routes::new(n(0), false, 1, 100, Keyed::new(1));
        r.update(0, n(1), &[e(9, 5, 1)]);
        r.advertise(None);
        let ch = r.update(10, n(1), &[e(9, 6, 1)]);
        assert!(ch.changed.is_empty());
        assert_eq!(ch.raised, vec![n(9)]);
        // A plain refresh is neither.
        let ch = r.update(20, n(1), &[e(9, 6, 1)]);
        assert!(ch.changed.is_empty() && ch.raised.is_empty());
    }

    #[test]
    fn a_costly_link_loses_to_a_longer_path_and_wins_back_when_cheap() {
        let mut r = Routes::new(n(0), false, 1, 100, Keyed::new(1));
        r.update(0, n(1), &[e(9, 5, 0)]);
        r.update(0, n(2), &[e(9, 5, 3)]);
        r.advertise(None); // FD(9) = (5, 1) through n(1)
        assert_eq!(r.next_hop(&n(9)), Some(n(1)));
        // n(2)'s route advertises 3, not below our FD of 1: infeasible until the origin
        // raises its seqno; a costly link still carries meanwhile.
        let ch = r.set_cost(n(1), SUSPECT_COST);
        assert_eq!(r.next_hop(&n(9)), Some(n(1)));
        assert_eq!(r.metric(&n(9)), Some(SUSPECT_COST));
        assert_eq!(ch.changed, vec![n(9)], "the metric changed");
        // The shorter route through n(2) is infeasible: ask the origin for a newer seqno.
        assert_eq!(ch.starved, vec![(n(9), 6)]);
        r.advertise(None);
        r.update(1, n(2), &[e(9, 6, 3)]);
        assert_eq!(
            r.next_hop(&n(9)),
            Some(n(2)),
            "a newer seqno: feasible, shorter"
        );
        r.set_cost(n(1), LINK_COST);
        r.update(2, n(1), &[e(9, 6, 0)]);
        assert_eq!(r.next_hop(&n(9)), Some(n(1)));
        assert_eq!(r.metric(&n(9)), Some(1));
    }

    #[test]
    fn table_is_bounded() {
        let mut r = Routes::new(n(0), false, 1, 2, Keyed::new(1));
        r.update(0, n(1), &[e(5, 1, 1), e(6, 1, 1), e(7, 1, 1)]);
        assert_eq!(r.len(), 2);
    }
}
