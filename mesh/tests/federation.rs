//! Federation in the sans-IO core: hubs advertise themselves, mail with no route to its
//! recipient's home goes to the nearest hub, hubs hold it until a route appears, nothing is
//! bounced back, and hub links carry no mesh addresses.

mod common;

use common::*;
use ed25519_dalek::SigningKey;
use ferry_mesh::core::{Mesh, Output, ROLE_HUB, Stored};
use ferry_mesh::wire::{LinkMsg, PeerRecord, RouteEntry};
use ferry_proto::types::{IdentityKey, NodeId};

const HUB: NodeId = NodeId::from_array([40; 32]);
/// The home of the recipient, in another mesh.
const FAR: NodeId = NodeId::from_array([41; 32]);
/// The edge of the other mesh.
const EDGE2: NodeId = NodeId::from_array([42; 32]);

fn route(node: NodeId, seqno: u32, metric: u16, hub: bool) -> LinkMsg {
    LinkMsg::Routes(vec![RouteEntry {
        node,
        seqno,
        metric,
        hub,
    }])
}

/// Links `m` to HUB: link up, the hub's Hello, and its route marked as a hub's.
fn link_hub(m: &mut Mesh) {
    assert!(m.handle_link_up(0, HUB, None));
    m.handle_message(0, HUB, hello_as(HUB, ROLE_HUB));
    m.handle_message(0, HUB, route(HUB, 1, 0, true));
}

/// `from` tells `m` that `user` is at home at FAR (in another mesh, no route known).
fn home_is_far(m: &mut Mesh, from: NodeId, user: &SigningKey) {
    m.handle_message(
        0,
        from,
        LinkMsg::Presence(vec![claim(user, id_of(user), FAR, 1_000)]),
    );
}

/// Offers the core made, as (to, count).
fn offers(outs: &[Output]) -> Vec<(NodeId, usize)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send {
                to,
                msg: LinkMsg::Offer(d),
            } => Some((*to, d.len())),
            _ => None,
        })
        .collect()
}

/// Feeds `n` bundles for `to` from `from` and stores them all.
fn take_bundles(m: &mut Mesh, from: NodeId, to: IdentityKey, n: u32, now: u64) {
    for i in 0..n {
        m.handle_message(now, from, LinkMsg::Bundle(bundle(i, to, 600_000, 100)));
    }
    let stores: Vec<_> = drain(m)
        .into_iter()
        .filter_map(|o| match o {
            Output::StoreBundle { from, meta, .. } => Some((from, meta)),
            _ => None,
        })
        .collect();
    assert_eq!(stores.len(), n as usize);
    for (from, meta) in stores {
        m.handle_stored(from, meta, Stored::Custody);
    }
}

#[test]
fn a_hub_advertises_itself_as_one() {
    for (role, flagged) in [(ROLE_HUB, true), ("edge", false)] {
        let mut m = node(|c| c.role = role.into(), &[]);
        assert!(m.handle_link_up(0, GOOD, None));
        m.handle_message(0, GOOD, hello(GOOD));
        let outs = drain(&mut m);
        // The route dump for a new neighbour marks our own route as a hub's, or not.
        assert!(
            outs.iter()
                .any(|o| matches!(o, Output::Send { msg: LinkMsg::Routes(r), .. }
            if r.iter().any(|e| e.node == ME && e.hub == flagged)))
        );
    }
}

#[test]
fn mail_with_no_route_goes_to_the_nearest_hub() {
    // ME is an edge: a mesh neighbour GOOD, and a hub link.
    let mut m = node(|_| {}, &[GOOD]);
    link_hub(&mut m);
    let bob = user(50);
    // Bob is at home in another mesh that is offline: his claim is known, no route to FAR.
    home_is_far(&mut m, HUB, &bob);
    assert!(m.next_hop(&FAR).is_none());
    drain(&mut m);
    let mut now = 100;
    take_bundles(&mut m, GOOD, id_of(&bob), 3, now);
    let outs = settle(&mut m, &mut now);
    assert_eq!(offers(&outs), vec![(HUB, 3)], "default route to the hub");
}

#[test]
fn a_node_two_hops_from_the_hub_follows_the_default_route_too() {
    // ME has no hub link; GOOD is the edge with the uplink and relays the hub's route.
    let mut m = node(|_| {}, &[GOOD]);
    m.handle_message(0, GOOD, route(HUB, 1, 1, true));
    let bob = user(51);
    home_is_far(&mut m, GOOD, &bob);
    drain(&mut m);
    let mut now = 100;
    // A local client's message (custody added by the node) for Bob.
    m.handle_message(
        now,
        GOOD,
        LinkMsg::Bundle(bundle(9, id_of(&bob), 600_000, 10)),
    );
    drain(&mut m);
    let outs = settle(&mut m, &mut now);
    // It came from GOOD, which is also the way to the hub: not bounced back by default.
    assert!(offers(&outs).is_empty(), "{:?}", offers(&outs));
    // Mail that did not come from the hub's direction goes there.
    let mut m2 = node(|_| {}, &[GOOD, EVIL]);
    m2.handle_message(0, GOOD, route(HUB, 1, 1, true));
    home_is_far(&mut m2, GOOD, &bob);
    drain(&mut m2);
    take_bundles(&mut m2, EVIL, id_of(&bob), 2, now);
    let outs = settle(&mut m2, &mut now);
    assert_eq!(offers(&outs), vec![(GOOD, 2)]);
}

#[test]
fn a_hub_holds_mail_until_the_home_mesh_returns() {
    let mut hub = node(|c| c.role = ROLE_HUB.into(), &[GOOD, EDGE2]);
    // Another hub is known too: a hub never forwards by default, even to a hub.
    hub.handle_message(0, GOOD, route(HUB, 1, 0, true));
    let bob = user(52);
    home_is_far(&mut hub, EDGE2, &bob);
    drain(&mut hub);
    let mut now = 100;
    take_bundles(&mut hub, GOOD, id_of(&bob), 4, now);
    let outs = settle(&mut hub, &mut now);
    assert!(offers(&outs).is_empty(), "held: {:?}", offers(&outs));
    assert_eq!(hub.custody_size().0, 4);
    // Mesh 2 comes back: EDGE2 announces a route to Bob's home.
    hub.handle_message(now, EDGE2, route(FAR, 1, 1, false));
    let outs = settle(&mut hub, &mut now);
    assert_eq!(offers(&outs), vec![(EDGE2, 4)]);
}

#[test]
fn the_hub_does_not_send_mail_back_to_the_edge_it_came_from() {
    // An edge receives mail from its hub for a user whose home it cannot reach: it keeps it
    // (the hub had no better route), rather than bouncing it back.
    let mut m = node(|_| {}, &[]);
    link_hub(&mut m);
    let bob = user(53);
    home_is_far(&mut m, HUB, &bob);
    drain(&mut m);
    let mut now = 100;
    take_bundles(&mut m, HUB, id_of(&bob), 2, now);
    let outs = settle(&mut m, &mut now);
    assert!(offers(&outs).is_empty());
}

#[test]
fn a_hub_claiming_users_it_cannot_prove_gets_no_mail() {
    // The hub says Alice is at home behind it, but the claim is not signed by Alice.
    let mut m = node(|_| {}, &[GOOD]);
    link_hub(&mut m);
    let alice = user(54);
    let hub_key = user(40);
    let forged = claim(&hub_key, id_of(&alice), HUB, 9_000);
    m.handle_message(0, HUB, LinkMsg::Presence(vec![forged]));
    assert_eq!(m.stats().presence_bad_signature, 1);
    assert!(m.home(&id_of(&alice)).is_none());
    assert!(
        !m.is_remote(&id_of(&alice)),
        "Alice's mail stays in a mailbox here"
    );
}

#[test]
fn hub_links_carry_no_mesh_addresses() {
    let mut m = node(|_| {}, &[GOOD]);
    assert!(m.handle_link_up(0, HUB, None));
    m.handle_message(0, HUB, hello_as(HUB, ROLE_HUB));
    let mut now = 0;
    // Peer exchange over the hub link is ignored...
    let stranger = NodeId::from_array([77; 32]);
    m.handle_message(
        now,
        HUB,
        LinkMsg::Peers(vec![PeerRecord {
            node: stranger,
            addrs: vec!["10.9.9.9:4433".parse().unwrap()],
            age_ms: 0,
        }]),
    );
    assert!(!m.peers(now).iter().any(|p| p.node == stranger));
    // ...and none is sent to it, even after the exchange interval.
    for _ in 0..5 {
        now += 70_000;
        m.handle_timeout(now);
        let outs = drain(&mut m);
        assert!(
            !outs
                .iter()
                .any(|o| matches!(o, Output::Send { to, msg: LinkMsg::Peers(_) } if *to == HUB)),
            "peer exchange sent to the hub"
        );
    }
}

#[test]
fn reconnect_abandons_a_dial_stuck_on_the_old_uplink() {
    let mut m = node(|_| {}, &[]);
    let addr: std::net::SocketAddr = "192.0.2.1:7001".parse().unwrap();
    m.handle_discovered(0, HUB, &[addr], ferry_mesh::core::PeerSource::Static);
    let dials = |outs: &[Output]| {
        outs.iter()
            .filter(|o| matches!(o, Output::Connect { peer, .. } if *peer == HUB))
            .count()
    };
    assert_eq!(dials(&drain(&mut m)), 1);
    // The dial hangs (the uplink is down); nothing redials it meanwhile.
    m.handle_timeout(2_000);
    assert_eq!(dials(&drain(&mut m)), 0);
    // The WAN comes up: `ferry reconnect` dials again at once.
    m.handle_reconnect(3_000);
    assert_eq!(dials(&drain(&mut m)), 1);
}
