//! What a misbehaving or broken neighbour can send, fed to the sans-IO core: each is refused
//! with a counter, costs the sender (not the node), and leaves the node working.

mod common;

use common::*;
use ferry_mesh::core::{Output, PeerSource, Stored};
use ferry_mesh::wire::{self, AckOutcome, LinkMsg, PeerRecord, RouteEntry};
use ferry_proto::limits::MAX_MESSAGE_LEN;
use ferry_proto::types::NodeId;

#[test]
fn garbage_drops_and_penalises_the_peer_and_the_node_keeps_serving() {
    // Bytes that are not a link message do not decode, whatever they are.
    for junk in [
        &b""[..],
        b"\xff\xff\xff",
        b"\x0a\x05hello",
        &[0x42; 300][..],
    ] {
        assert!(wire::decode(junk).is_err(), "{junk:?}");
    }
    let mut m = node(|_| {}, &[EVIL, GOOD]);
    // The driver reports the decode failure; the core drops the peer.
    m.handle_malformed(1_000, EVIL);
    let outs = drain(&mut m);
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Disconnect { peer, .. } if *peer == EVIL))
    );
    assert_eq!(m.stats().malformed, 1);
    assert!(!m.neighbours().contains(&EVIL));
    // Penalised: not taken back for a while, then welcome again.
    assert!(!m.handle_link_up(2_000, EVIL, None));
    assert!(m.handle_link_up(1_000 + 61_000, EVIL, None));
    // Anything but Hello first is malformed too, and so is a Hello naming another node.
    let mut m = node(|_| {}, &[GOOD]);
    assert!(m.handle_link_up(0, EVIL, None));
    m.handle_message(10, EVIL, LinkMsg::Offer(vec![]));
    assert_eq!(m.stats().malformed, 1);
    assert!(m.handle_link_up(0, NodeId::from_array([4; 32]), None));
    m.handle_message(10, NodeId::from_array([4; 32]), hello(GOOD));
    assert_eq!(m.stats().malformed, 2);
    // The good neighbour is still linked.
    assert_eq!(m.neighbours(), vec![GOOD]);
}

#[test]
fn lists_of_empty_entries_are_refused_before_they_are_decoded() {
    // A frame of 2,000,000 empty route entries (4 MB on the wire) inside one RouteUpdate
    // (LinkMessage field 2): counted and refused, not decoded into 2,000,000 structs first.
    let entries = [0x0a, 0x00].repeat(2_000_000);
    let mut frame = vec![0x12];
    let mut len = entries.len();
    while len >= 0x80 {
        frame.push(u8::try_from(len & 0x7f).unwrap() | 0x80);
        len >>= 7;
    }
    frame.push(u8::try_from(len).unwrap());
    frame.extend_from_slice(&entries);
    let e = wire::decode(&frame).unwrap_err();
    assert!(
        e.to_string()
            .contains("routes has 2000000 entries, at most 4096"),
        "{e}"
    );
    // Peer addresses count over all the peers of an exchange (LinkMessage field 11).
    let peer = [0x12, 0x00].repeat(9); // one PeerRecord with nine empty addresses
    let mut px = Vec::new();
    for _ in 0..64 {
        px.push(0x0a);
        px.push(u8::try_from(peer.len()).unwrap());
        px.extend_from_slice(&peer);
    }
    let mut frame = vec![0x5a, 0x80 | u8::try_from(px.len() & 0x7f).unwrap()];
    frame.push(u8::try_from(px.len() >> 7).unwrap());
    frame.extend_from_slice(&px);
    let e = wire::decode(&frame).unwrap_err();
    assert!(e.to_string().contains("addrs has 576 entries"), "{e}");
}

#[test]
fn presence_signed_by_the_wrong_key_is_refused() {
    let mut m = node(|_| {}, &[EVIL]);
    let alice = user(10);
    let mallory = user(11);
    // Mallory signs a claim that puts Alice's mail at Mallory's node.
    let forged = claim(&mallory, id_of(&alice), EVIL, 5_000);
    m.handle_message(100, EVIL, LinkMsg::Presence(vec![forged]));
    let outs = drain(&mut m);
    assert_eq!(m.stats().presence_bad_signature, 1);
    assert!(m.home(&id_of(&alice)).is_none());
    assert!(!outs.iter().any(|o| matches!(o, Output::StorePresence(_))));
    // A claim altered after signing fails the same way.
    let mut bent = claim(&alice, id_of(&alice), EVIL, 5_000);
    bent.timestamp_ms += 1;
    m.handle_message(100, EVIL, LinkMsg::Presence(vec![bent]));
    assert_eq!(m.stats().presence_bad_signature, 2);
    // Alice's real claim is taken.
    let real = claim(&alice, id_of(&alice), EVIL, 5_000);
    m.handle_message(100, EVIL, LinkMsg::Presence(vec![real]));
    assert_eq!(m.home(&id_of(&alice)), Some(EVIL));
    // And an older one replayed afterwards is stale.
    let old = claim(&alice, id_of(&alice), GOOD, 4_000);
    m.handle_message(100, EVIL, LinkMsg::Presence(vec![old]));
    assert_eq!(m.stats().presence_stale, 1);
    assert_eq!(m.home(&id_of(&alice)), Some(EVIL));
}

#[test]
fn replayed_old_route_seqnos_do_not_move_routes() {
    let far = NodeId::from_array([9; 32]);
    let mut m = node(|_| {}, &[EVIL, GOOD]);
    let route = |seqno, metric| {
        LinkMsg::Routes(vec![RouteEntry {
            node: far,
            seqno,
            metric,
            hub: false,
        }])
    };
    let mut now = 100;
    m.handle_message(now, GOOD, route(7, 2));
    assert_eq!(m.next_hop(&far), Some(GOOD));
    // The node announces the route it took (a triggered update), which fixes its feasibility
    // distance at seqno 7.
    let outs = settle(&mut m, &mut now);
    assert!(outs.iter().any(|o| matches!(o, Output::Send { msg: LinkMsg::Routes(r), .. } if r.iter().any(|e| e.node == far && e.seqno == 7))));
    // An old seqno with a better metric is a replay (or a loop in the making): infeasible.
    m.handle_message(now, EVIL, route(3, 1));
    assert_eq!(m.next_hop(&far), Some(GOOD));
    // The same neighbour replaying its own older update is ignored too.
    m.handle_message(now, GOOD, route(5, 1));
    let r = m.routes().into_iter().find(|r| r.dest == far).unwrap();
    assert_eq!((r.seqno, r.next_hop, r.metric), (7, GOOD, 3));
}

#[test]
fn oversized_and_expired_bundles_are_refused_without_storing() {
    // Over the wire limit: the frame does not decode.
    let big = bundle(1, id_of(&user(20)), 60_000, MAX_MESSAGE_LEN + 1);
    let bytes = wire::encode(LinkMsg::Bundle(big));
    assert!(wire::decode(&bytes).is_err());
    // Over this node's limit, expired, past the hop limit: acked, never stored.
    let mut m = node(|c| c.max_bundle_bytes = 1_000, &[EVIL]);
    let mut now = 100;
    let bob = id_of(&user(21));
    m.handle_message(now, EVIL, LinkMsg::Bundle(bundle(2, bob, 60_000, 1_001)));
    m.handle_message(now, EVIL, LinkMsg::Bundle(bundle(3, bob, 0, 10)));
    let mut hops = bundle(4, bob, 60_000, 10);
    hops.hop_count = 16;
    m.handle_message(now, EVIL, LinkMsg::Bundle(hops));
    let outs = settle(&mut m, &mut now);
    assert!(!outs.iter().any(|o| matches!(o, Output::StoreBundle { .. })));
    assert_eq!(
        acks_to(&outs, EVIL),
        vec![
            AckOutcome::Refused,
            AckOutcome::Expired,
            AckOutcome::Expired
        ]
    );
    assert_eq!(m.stats().expired, 1);
    assert_eq!(m.stats().hop_limit_drops, 1);
    assert_eq!(m.custody_size(), (0, 0));
}

#[test]
fn a_peer_sending_endless_bundles_hits_its_quota() {
    let mut m = node(|c| c.max_custody_per_peer = 10, &[EVIL, GOOD]);
    let bob = id_of(&user(30));
    let mut now = 100;
    for n in 0..25 {
        m.handle_message(now, EVIL, LinkMsg::Bundle(bundle(n, bob, 600_000, 100)));
    }
    let outs = drain(&mut m);
    let stores: Vec<_> = outs
        .iter()
        .filter_map(|o| match o {
            Output::StoreBundle { from, meta, .. } => Some((*from, *meta)),
            _ => None,
        })
        .collect();
    assert_eq!(stores.len(), 10, "the quota admits ten from one neighbour");
    for (from, meta) in stores {
        m.handle_stored(from, meta, Stored::Custody);
    }
    let mut acks = acks_to(&outs, EVIL);
    acks.extend(acks_to(&settle(&mut m, &mut now), EVIL));
    assert_eq!(
        acks.iter().filter(|a| **a == AckOutcome::Accepted).count(),
        10
    );
    assert_eq!(
        acks.iter().filter(|a| **a == AckOutcome::Refused).count(),
        15
    );
    assert_eq!(m.stats().refused, 15);
    assert_eq!(
        m.stats().refused_peer_quota,
        15,
        "counted as over the peer's share"
    );
    // Another neighbour is not affected by EVIL's quota.
    m.handle_message(now, GOOD, LinkMsg::Bundle(bundle(100, bob, 600_000, 100)));
    assert!(
        drain(&mut m)
            .iter()
            .any(|o| matches!(o, Output::StoreBundle { from, .. } if *from == GOOD))
    );
}

#[test]
fn a_peer_flooding_the_peer_table_gets_its_share_only() {
    let mut m = node(
        |c| {
            c.max_peers = 64;
            c.max_peers_per_source = 8;
        },
        &[EVIL],
    );
    m.handle_discovered(
        0,
        GOOD,
        &["10.0.0.3:5002".parse().unwrap()],
        PeerSource::Static,
    );
    for round in 0..20u8 {
        let records = (0..64u8)
            .map(|i| PeerRecord {
                node: NodeId::from_array([
                    100 + (round % 100),
                    i,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                ]),
                addrs: vec![format!("10.1.{round}.{i}:5002").parse().unwrap()],
                age_ms: 0,
            })
            .collect();
        m.handle_message(u64::from(round) * 10, EVIL, LinkMsg::Peers(records));
    }
    let peers = m.peers(1_000);
    let by_evil = peers
        .iter()
        .filter(|p| p.exchanged_by == Some(EVIL))
        .count();
    assert!(by_evil <= 8, "{by_evil} peers from one neighbour");
    assert!(peers.len() <= 64);
    assert!(m.stats().peers_refused > 0);
    // The configured peer is still there.
    assert!(peers.iter().any(|p| p.node == GOOD && p.configured));
}
