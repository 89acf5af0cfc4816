//! Federation in process, over real QUIC on loopback: two edges reach each other only through
//! a hub; the hub holds mail while an edge is away (up to its per-edge quota) and delivers it
//! when the edge returns; edges off the allow list, hubs with the wrong key and malformed
//! frames are refused; and the qpq federation methods (900-905) answer what they must.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{config, mailbox, until};
use ed25519_dalek::SigningKey;
use ferry_client::{Client, ConnectOptions, Identity, Trust, message};
use ferry_mesh::driver::Transport;
use ferry_mesh::driver::quic_transport::QuicTransport;
use ferry_node::{NodeConfig, Role, RunningNode, StaticPeer};
use ferry_proto::qpq::v1 as pb;
use ferry_proto::types::{HybridKeyLookup, MessageId, NodeId};
use ferry_proto::{Method, Status};
use tokio::io::AsyncWriteExt;

fn node_id(secret: [u8; 32]) -> NodeId {
    NodeId::from_array(SigningKey::from_bytes(&secret).verifying_key().to_bytes())
}

/// Starts a node in `dir` with the node key `secret` (written before the start, so a hub's
/// allow list can name it).
async fn start_in(dir: &Path, secret: [u8; 32], f: impl FnOnce(&mut NodeConfig)) -> RunningNode {
    std::fs::write(dir.join("node.key"), secret).unwrap();
    let mut cfg = config(dir);
    cfg.metrics = Some("127.0.0.1:0".into());
    f(&mut cfg);
    ferry_node::start(cfg).await.unwrap()
}

fn hub_cfg(allow: Vec<NodeId>, quota: usize) -> impl FnOnce(&mut NodeConfig) {
    move |c| {
        c.role = Role::Hub;
        c.federation.listen = "127.0.0.1:0".into();
        c.federation.allow = allow;
        c.federation.per_edge_quota = quota;
    }
}

fn edge_of(hub: &RunningNode, pin: Option<NodeId>) -> impl FnOnce(&mut NodeConfig) {
    let peer = StaticPeer {
        node: Some(pin.unwrap_or_else(|| hub.mesh_node_id.unwrap())),
        addr: hub.federation_addrs[0].to_string(),
    };
    move |c| c.federation.hubs = vec![peer]
}

async fn client(n: &RunningNode) -> Client {
    let opts = ConnectOptions::with_trust(Trust::Pinned(n.cert_fingerprint));
    Client::connect(&n.local_addr.to_string(), &opts)
        .await
        .unwrap()
}

async fn login(n: &RunningNode, id: &Identity) -> Client {
    let c = client(n).await;
    c.authenticate(id).await.unwrap();
    c.attach(id).await.unwrap();
    c
}

/// A counter or gauge from the node's `/metrics`.
async fn metric(n: &RunningNode, name: &str) -> u64 {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(n.metrics_addr.unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn mid(round: u8, n: u16) -> MessageId {
    let mut b = [round; 16];
    b[..2].copy_from_slice(&n.to_be_bytes());
    MessageId::from_array(b)
}

/// Fetches (and acks) until `want` distinct texts arrived; fails on a duplicate.
async fn receive(c: &Client, who: &Identity, want: usize) -> HashSet<String> {
    let mb = mailbox(who);
    let mut seen = HashSet::new();
    let start = Instant::now();
    while seen.len() < want {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only {} of {want} arrived",
            seen.len()
        );
        let got = c
            .fetch_wait(&mb, 100, Duration::from_secs(2))
            .await
            .unwrap();
        for e in &got {
            let text = message::open(who, &e.data, None).unwrap().text;
            assert!(seen.insert(text.clone()), "{text} delivered twice");
        }
        if let Some(last) = got.last() {
            c.ack(&mb, last.seq).await.unwrap();
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshes_reach_each_other_through_a_hub_that_holds_mail_while_an_edge_is_away() {
    let (hk, k1, k2) = ([0x10; 32], [0x11; 32], [0x12; 32]);
    let (hd, d1, d2) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let hub = start_in(hd.path(), hk, hub_cfg(vec![node_id(k1), node_id(k2)], 25)).await;
    let e1 = start_in(d1.path(), k1, edge_of(&hub, None)).await;
    let e2 = start_in(d2.path(), k2, edge_of(&hub, None)).await;
    let (alice, bob) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let a = login(&e1, &alice).await;
    let b = login(&e2, &bob).await;
    let bob_key = HybridKeyLookup::Identity(bob.public_key());
    until(
        "bob's presence at E1, through the hub",
        Duration::from_secs(20),
        || async { a.fetch_hybrid_key(&bob_key).await.unwrap().is_some() },
    )
    .await;
    for n in 0..20 {
        let (_, r) = a
            .send_text(&alice, &bob_key, &format!("one {n}"), 0, mid(1, n))
            .await
            .unwrap();
        assert_eq!(r.seq, 0, "handed to the mesh");
    }
    assert_eq!(receive(&b, &bob, 20).await.len(), 20);
    drop(b);

    // Mesh 2 goes away. What Alice sends now waits at the hub, up to E1's quota of 25.
    e2.stop().await;
    until(
        "the hub notices E2 left",
        Duration::from_secs(20),
        || async { metric(&hub, "mesh_links").await == 1 },
    )
    .await;
    for n in 0..30 {
        a.send_text(&alice, &bob_key, &format!("two {n}"), 0, mid(2, n))
            .await
            .unwrap();
    }
    until(
        "the hub holds 25 and refuses the rest",
        Duration::from_secs(20),
        || async {
            metric(&hub, "mesh_custody_bundles").await == 25
                && metric(&hub, "mesh_refused_peer_quota_total").await >= 5
        },
    )
    .await;
    // The FederationHealth of the hub says the same.
    let caller = Identity::from_seeds(&k1, &[1; 32], &[1; 64]);
    let fc = client(&hub).await;
    fc.authenticate(&caller).await.unwrap();
    let auth = pb::FederationAuth {
        origin_domain: "mesh1.example".into(),
        origin_node: node_id(k1).as_bytes().to_vec(),
    };
    let h: pb::FederationHealthResponse = fc
        .call(
            Method::FederationHealth,
            &pb::FederationHealthRequest {
                auth: Some(auth.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(h.role, "hub");
    assert_eq!(h.custody_bundles, 25);
    assert!(h.refused_quota >= 5);
    assert_eq!(h.linked_nodes, vec![node_id(k1).as_bytes().to_vec()]);

    // Mesh 2 returns: everything arrives once (the five refused after E1's retry).
    let e2 = start_in(d2.path(), k2, edge_of(&hub, None)).await;
    let b = client(&e2).await;
    b.authenticate(&bob).await.unwrap();
    let got = receive(&b, &bob, 30).await;
    assert!((0..30).all(|n| got.contains(&format!("two {n}"))));
    until(
        "the hub's custody drains",
        Duration::from_secs(20),
        || async { metric(&hub, "mesh_custody_bundles").await == 0 },
    )
    .await;
    // Nothing more comes: no duplicates were waiting anywhere.
    let more = b
        .fetch_wait(&mailbox(&bob), 100, Duration::from_millis(1500))
        .await
        .unwrap();
    assert!(more.is_empty(), "{} extra", more.len());
    for n in [e1, e2, hub] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_off_the_allow_list_and_hubs_with_the_wrong_key_get_no_link() {
    let hd = tempfile::tempdir().unwrap();
    let allowed = [0x21; 32];
    let hub = start_in(hd.path(), [0x20; 32], hub_cfg(vec![node_id(allowed)], 100)).await;
    // Not on the allow list: the hub refuses it, logs it and counts it; the edge backs off.
    let d = tempfile::tempdir().unwrap();
    let stranger = start_in(d.path(), [0x22; 32], edge_of(&hub, None)).await;
    until(
        "the hub refuses the stranger",
        Duration::from_secs(20),
        || async { metric(&hub, "federation_links_refused_total").await >= 1 },
    )
    .await;
    // Nor can it come in through the hub's mesh port instead.
    let hub_mesh = StaticPeer {
        node: hub.mesh_node_id,
        addr: hub.mesh_addrs[0].to_string(),
    };
    let d4 = tempfile::tempdir().unwrap();
    let sideways = start_in(d4.path(), [0x23; 32], move |c| {
        c.mesh.peers = vec![hub_mesh]
    })
    .await;
    until(
        "the hub refuses it on the mesh port too",
        Duration::from_secs(20),
        || async { metric(&hub, "federation_links_refused_total").await >= 2 },
    )
    .await;
    // An edge that expects another key at the hub's address does not accept the hub's
    // certificate: the handshake fails on the edge's side.
    let d2 = tempfile::tempdir().unwrap();
    let wrong = node_id([0x99; 32]);
    let fooled = start_in(d2.path(), allowed, edge_of(&hub, Some(wrong))).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metric(&hub, "mesh_links").await, 0);
    assert_eq!(metric(&stranger, "mesh_links_up_total").await, 0);
    assert_eq!(metric(&sideways, "mesh_links").await, 0);
    assert_eq!(metric(&fooled, "mesh_links_up_total").await, 0);
    // The hub kept serving: the allowed edge, pinned right, links.
    fooled.stop().await;
    let d3 = tempfile::tempdir().unwrap();
    let good = start_in(d3.path(), allowed, edge_of(&hub, None)).await;
    until(
        "the allowed edge links",
        Duration::from_secs(20),
        || async { metric(&good, "mesh_links").await == 1 },
    )
    .await;
    for n in [stranger, sideways, good, hub] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_federation_frames_drop_only_their_sender() {
    let hd = tempfile::tempdir().unwrap();
    let (bad1, bad2, good) = ([0x31; 32], [0x32; 32], [0x33; 32]);
    let hub = start_in(
        hd.path(),
        [0x30; 32],
        hub_cfg(vec![node_id(bad1), node_id(bad2), node_id(good)], 100),
    )
    .await;
    let hub_id = hub.mesh_node_id.unwrap();
    let frames: [(&[u8; 32], Vec<u8>); 2] = [
        // A length that fits, and bytes that are no link message.
        (&bad1, [&7u32.to_be_bytes()[..], b"garbage"].concat()),
        // A length far over the frame limit.
        (&bad2, u32::MAX.to_be_bytes().to_vec()),
    ];
    for (i, (key, frame)) in frames.into_iter().enumerate() {
        let t = QuicTransport::bind(*key, "127.0.0.1:0".parse().unwrap()).unwrap();
        let link = t
            .connect(hub_id, vec![hub.federation_addrs[0]])
            .await
            .unwrap();
        let mut w = link.open_uni().await.unwrap();
        w.write_all(&frame).await.unwrap();
        w.flush().await.unwrap();
        until(
            "the hub drops the sender",
            Duration::from_secs(10),
            || async { metric(&hub, "mesh_malformed_total").await == i as u64 + 1 },
        )
        .await;
        link.closed().await;
        t.close().await;
    }
    let d = tempfile::tempdir().unwrap();
    let edge = start_in(d.path(), good, edge_of(&hub, None)).await;
    until(
        "a well-behaved edge still links",
        Duration::from_secs(20),
        || async { metric(&hub, "mesh_links").await == 1 },
    )
    .await;
    edge.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_methods_answer_allowed_nodes_only() {
    let hd = tempfile::tempdir().unwrap();
    let origin = [0x41; 32];
    let hub = start_in(hd.path(), [0x40; 32], hub_cfg(vec![node_id(origin)], 100)).await;
    let auth = pb::FederationAuth {
        origin_domain: "mesh1.example".into(),
        origin_node: node_id(origin).as_bytes().to_vec(),
    };
    let health = |auth: Option<pb::FederationAuth>| pb::FederationHealthRequest { auth };
    let status_of = |r: Result<pb::FederationHealthResponse, ferry_client::ClientError>| match r {
        Err(ferry_client::ClientError::Status { status, .. }) => status,
        Err(e) => panic!("{e}"),
        Ok(_) => Status::Ok,
    };
    // Unauthenticated, and authenticated as a user who is no node on the allow list.
    let c = client(&hub).await;
    let r = c
        .call(Method::FederationHealth, &health(Some(auth.clone())))
        .await;
    assert_eq!(status_of(r), Status::Unauthorized);
    c.authenticate(&Identity::generate().unwrap())
        .await
        .unwrap();
    let r = c
        .call(Method::FederationHealth, &health(Some(auth.clone())))
        .await;
    assert_eq!(status_of(r), Status::Forbidden);
    // The allowed node, naming itself, another node, or nobody.
    let c = client(&hub).await;
    c.authenticate(&Identity::from_seeds(&origin, &[2; 32], &[2; 64]))
        .await
        .unwrap();
    let h: pb::FederationHealthResponse = c
        .call(Method::FederationHealth, &health(Some(auth.clone())))
        .await
        .unwrap();
    assert_eq!(h.status, "ok");
    assert_eq!(h.hub_node, hub.mesh_node_id.unwrap().as_bytes().to_vec());
    let mut other = auth.clone();
    other.origin_node = vec![9; 32];
    let r = c.call(Method::FederationHealth, &health(Some(other))).await;
    assert_eq!(status_of(r), Status::Forbidden);
    let r = c.call(Method::FederationHealth, &health(None)).await;
    assert_eq!(status_of(r), Status::BadRequest);
    // Malformed payloads are BadRequest, and the connection keeps working.
    for m in [
        Method::RelayEnqueue,
        Method::RelayBatchEnqueue,
        Method::ProxyResolveUser,
    ] {
        let (st, _) = c.call_raw(m.id(), b"\xff\xff\xff").await.unwrap();
        assert_eq!(st, Status::BadRequest, "{m}");
    }

    // A user at home on the hub: resolved, their key proxied, relayed mail delivered.
    let carol = Identity::generate().unwrap();
    let carol_c = login(&hub, &carol).await;
    let r: pb::ProxyResolveUserResponse = c
        .call(
            Method::ProxyResolveUser,
            &pb::ProxyResolveUserRequest {
                auth: Some(auth.clone()),
                identity_key: Vec::new(),
                fingerprint: carol.fingerprint().as_bytes().to_vec(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.identity_key, carol.public_key().as_bytes().to_vec());
    assert_eq!(r.home_node, hub.mesh_node_id.unwrap().as_bytes().to_vec());
    assert!(r.reachable);
    let k: pb::ProxyFetchHybridKeyResponse = c
        .call(
            Method::ProxyFetchHybridKey,
            &pb::ProxyFetchHybridKeyRequest {
                auth: Some(auth.clone()),
                identity_key: carol.public_key().as_bytes().to_vec(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        k.hybrid_public_key,
        carol.hybrid_public_key().as_bytes().to_vec()
    );
    let (st, _) = c
        .call_raw(
            Method::ProxyFetchKeyPackage.id(),
            &prost::Message::encode_to_vec(&pb::ProxyFetchKeyPackageRequest {
                auth: Some(auth.clone()),
                identity_key: carol.public_key().as_bytes().to_vec(),
            }),
        )
        .await
        .unwrap();
    assert_eq!(st, Status::NotFound);
    let relay = |id: u8| pb::RelayMessage {
        recipient_key: carol.public_key().as_bytes().to_vec(),
        payload: vec![id; 64],
        channel_id: Vec::new(),
        device_id: Vec::new(),
        message_id: vec![id; 16],
        ttl_secs: 0,
        sender_key: Vec::new(),
    };
    let req = |m| pb::RelayEnqueueRequest {
        auth: Some(auth.clone()),
        message: Some(m),
    };
    let r: pb::RelayEnqueueResponse = c.call(Method::RelayEnqueue, &req(relay(1))).await.unwrap();
    assert!(r.delivered && !r.duplicate);
    let r: pb::RelayEnqueueResponse = c.call(Method::RelayEnqueue, &req(relay(1))).await.unwrap();
    assert!(r.duplicate, "a retry is recognised");
    let mut no_id = relay(2);
    no_id.message_id.clear();
    let (st, _) = c
        .call_raw(
            Method::RelayEnqueue.id(),
            &prost::Message::encode_to_vec(&req(no_id)),
        )
        .await
        .unwrap();
    assert_eq!(st, Status::BadRequest);
    let batch = |n: u8| pb::RelayBatchEnqueueRequest {
        auth: Some(auth.clone()),
        messages: (0..n).map(|i| relay(10 + i % 200)).collect(),
    };
    let r: pb::RelayBatchEnqueueResponse =
        c.call(Method::RelayBatchEnqueue, &batch(3)).await.unwrap();
    assert_eq!(r.duplicates, vec![false; 3]);
    let big = pb::RelayBatchEnqueueRequest {
        auth: Some(auth.clone()),
        messages: (0..257u16).map(|_| relay(250)).collect(),
    };
    let (st, _) = c
        .call_raw(
            Method::RelayBatchEnqueue.id(),
            &prost::Message::encode_to_vec(&big),
        )
        .await
        .unwrap();
    assert_eq!(st, Status::BadRequest);
    let got = carol_c.fetch(&mailbox(&carol), 100).await.unwrap();
    assert_eq!(
        got.len(),
        4,
        "one relayed message and a batch of three, once each"
    );
    assert_eq!(metric(&hub, "federation_relayed_total").await, 5);

    // An edge does not serve federation methods.
    let ed = tempfile::tempdir().unwrap();
    let edge = start_in(ed.path(), [0x42; 32], |_| {}).await;
    let e = client(&edge).await;
    e.authenticate(&Identity::from_seeds(&origin, &[3; 32], &[3; 64]))
        .await
        .unwrap();
    let r = e.call(Method::FederationHealth, &health(Some(auth))).await;
    assert_eq!(status_of(r), Status::UnknownMethod);
    edge.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_peer_and_carry_mail_between_their_edges() {
    let (ka, kb, k1, k2) = ([0x50; 32], [0x51; 32], [0x52; 32], [0x53; 32]);
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    // Hub B admits hub A; hub A dials B as its peer hub.
    let hub_b = start_in(
        dirs[1].path(),
        kb,
        hub_cfg(vec![node_id(k2), node_id(ka)], 100),
    )
    .await;
    let peer_b = StaticPeer {
        node: Some(hub_b.mesh_node_id.unwrap()),
        addr: hub_b.federation_addrs[0].to_string(),
    };
    let hub_a = start_in(dirs[0].path(), ka, move |c| {
        hub_cfg(vec![node_id(k1), node_id(kb)], 100)(c);
        c.federation.hubs = vec![peer_b];
    })
    .await;
    let e1 = start_in(dirs[2].path(), k1, edge_of(&hub_a, None)).await;
    let e2 = start_in(dirs[3].path(), k2, edge_of(&hub_b, None)).await;
    let (alice, bob) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let a = login(&e1, &alice).await;
    let b = login(&e2, &bob).await;
    let bob_key = HybridKeyLookup::Identity(bob.public_key());
    until(
        "bob's presence at E1, over two hubs",
        Duration::from_secs(20),
        || async { a.fetch_hybrid_key(&bob_key).await.unwrap().is_some() },
    )
    .await;
    for n in 0..10 {
        a.send_text(&alice, &bob_key, &format!("via two hubs {n}"), 0, mid(3, n))
            .await
            .unwrap();
    }
    assert_eq!(receive(&b, &bob, 10).await.len(), 10);
    for n in [e1, e2, hub_a, hub_b] {
        n.stop().await;
    }
}

#[tokio::test]
async fn federation_without_the_mesh_is_refused_at_start() {
    for hub in [true, false] {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = config(d.path());
        cfg.mesh.enabled = false;
        if hub {
            cfg.role = Role::Hub;
        } else {
            cfg.federation.hubs = vec!["127.0.0.1:7001".parse().unwrap()];
        }
        let err = ferry_node::start(cfg).await.unwrap_err().to_string();
        assert!(err.contains("needs the mesh"), "{err}");
    }
}
