//! Nodes in a mesh, in process, over real links on loopback: clients at different nodes
//! message each other end to end, broadcasts reach subscribers two hops away, Attach refuses
//! what it must, and the admin socket answers.

mod common;

use std::time::{Duration, Instant};

use common::{TestNode, mailbox, start_with, until};
use ferry_client::topic::Topic;
use ferry_client::{Client, Identity, message};
use ferry_node::StaticPeer;
use ferry_proto::qpq::v1 as pb;
use ferry_proto::transcript::presence_transcript;
use ferry_proto::types::{HybridKeyLookup, MessageId, NodeId};
use ferry_proto::{Method, Status};

/// A node configured with static peers: by `<id>@addr`, or by address only (`with_id` false;
/// the id is then learned from the handshake).
async fn node_peering(peers: &[&TestNode], with_id: bool) -> TestNode {
    let peers: Vec<StaticPeer> = peers
        .iter()
        .map(|p| StaticPeer {
            node: with_id.then(|| p.node.mesh_node_id.unwrap()),
            addr: p.node.mesh_addrs[0].to_string(),
        })
        .collect();
    start_with(move |c| c.mesh.peers = peers).await
}

/// A line A - B - C; C knows B by address only.
async fn line() -> (TestNode, TestNode, TestNode) {
    let a = node_peering(&[], true).await;
    let b = node_peering(&[&a], true).await;
    let c = node_peering(&[&b], false).await;
    (a, b, c)
}

async fn login(n: &TestNode, id: &Identity) -> Client {
    let c = n.client().await;
    c.authenticate(id).await.unwrap();
    c.attach(id).await.unwrap();
    c
}

fn mid(n: u8) -> MessageId {
    MessageId::from_array([n; 16])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_two_hops_apart_message_each_other() {
    let (a, _b, c) = line().await;
    let alice = Identity::generate().unwrap();
    let bob = Identity::generate().unwrap();
    let bob_c = login(&c, &bob).await;
    let alice_a = login(&a, &alice).await;
    // Bob's key reaches A with his presence.
    let bob_key = HybridKeyLookup::Identity(bob.public_key());
    until("bob's key at A", Duration::from_secs(20), || async {
        alice_a.fetch_hybrid_key(&bob_key).await.unwrap().is_some()
    })
    .await;
    // Bob waits in a long poll; the message arrives through the mesh and wakes it.
    let waiter = {
        let mb = mailbox(&bob);
        tokio::spawn(async move {
            let got = bob_c
                .fetch_wait(&mb, 10, Duration::from_secs(20))
                .await
                .unwrap();
            (bob_c, got)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, resp) = alice_a
        .send_text(&alice, &bob_key, "over two hops", 0, mid(1))
        .await
        .unwrap();
    assert_eq!(resp.seq, 0, "handed to the mesh, not a local mailbox");
    assert!(!resp.duplicate);
    let (bob_c, got) = waiter.await.unwrap();
    assert_eq!(got.len(), 1);
    let opened = message::open(&bob, &got[0].data, None).unwrap();
    assert_eq!(opened.text, "over two hops");
    assert_eq!(opened.sender, alice.public_key());
    // Bob answers; Alice's key came to C the same way.
    let alice_key = HybridKeyLookup::Identity(alice.public_key());
    until("alice's key at C", Duration::from_secs(20), || async {
        bob_c.fetch_hybrid_key(&alice_key).await.unwrap().is_some()
    })
    .await;
    bob_c
        .send_text(&bob, &alice_key, "heard you", 0, mid(2))
        .await
        .unwrap();
    let mb = mailbox(&alice);
    let got = alice_a
        .fetch_wait(&mb, 10, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        message::open(&alice, &got[0].data, None).unwrap().text,
        "heard you"
    );
    // Health names the mesh node.
    let h = alice_a.health().await.unwrap();
    assert_eq!(
        h.mesh_node_id,
        a.node.mesh_node_id.unwrap().as_bytes().to_vec()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_to_users_here_and_elsewhere_reaches_all_of_them() {
    let (a, _b, c) = line().await;
    let alice = Identity::generate().unwrap();
    let bob = Identity::generate().unwrap();
    let carol = Identity::generate().unwrap();
    let bob_c = login(&c, &bob).await;
    let carol_a = login(&a, &carol).await;
    let alice_a = login(&a, &alice).await;
    until("bob's presence at A", Duration::from_secs(20), || async {
        alice_a
            .fetch_hybrid_key(&HybridKeyLookup::Identity(bob.public_key()))
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let req = pb::BatchEnqueueRequest {
        recipient_keys: vec![
            bob.public_key().as_bytes().to_vec(),
            carol.public_key().as_bytes().to_vec(),
        ],
        payload: b"opaque to the nodes".to_vec(),
        channel_id: vec![],
        ttl_secs: 0,
        message_id: vec![7; 16],
        sealed_sender: false,
    };
    let r: pb::BatchEnqueueResponse = alice_a.call(Method::BatchEnqueue, &req).await.unwrap();
    assert_eq!(r.seqs[0], 0, "bob's goes through the mesh");
    assert!(r.seqs[1] > 0, "carol's lands in her mailbox here");
    assert_eq!(r.duplicates, vec![false, false]);
    for (client, who) in [(&bob_c, &bob), (&carol_a, &carol)] {
        let got = client
            .fetch_wait(&mailbox(who), 10, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, b"opaque to the nodes");
    }
    // EnqueueMany takes the same split: bob's through the mesh, carol's here, in order.
    let many = pb::EnqueueManyRequest {
        messages: [(&bob, 1u8), (&carol, 2), (&bob, 3)]
            .into_iter()
            .map(|(to, i)| pb::EnqueueRequest {
                recipient_key: to.public_key().as_bytes().to_vec(),
                payload: vec![i],
                channel_id: vec![],
                ttl_secs: 0,
                message_id: vec![i; 16],
                sealed_sender: false,
                device_id: vec![],
            })
            .collect(),
    };
    let r = alice_a.enqueue_many(&many).await.unwrap();
    let seqs: Vec<u64> = r.results.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![0, 2, 0], "mesh, carol's second message, mesh");
    let mut bobs = Vec::new();
    while bobs.len() < 2 {
        let got = bob_c
            .fetch_wait(&mailbox(&bob), 10, Duration::from_secs(20))
            .await
            .unwrap();
        assert!(!got.is_empty(), "bob's EnqueueMany messages did not arrive");
        bobs.extend(got.iter().filter(|e| e.seq > 1).map(|e| e.data.clone()));
        if let Some(last) = got.last() {
            bob_c.ack(&mailbox(&bob), last.seq).await.unwrap();
        }
    }
    bobs.sort();
    assert_eq!(bobs, vec![vec![1u8], vec![3]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_waits_for_a_user_and_follows_them_when_they_move() {
    let (a, b, c) = line().await;
    let alice = Identity::generate().unwrap();
    let bob = Identity::generate().unwrap();
    // Bob attaches at C once, then goes away.
    login(&c, &bob).await.close().await;
    let alice_a = login(&a, &alice).await;
    let bob_key = HybridKeyLookup::Identity(bob.public_key());
    until("bob's key at A", Duration::from_secs(20), || async {
        alice_a.fetch_hybrid_key(&bob_key).await.unwrap().is_some()
    })
    .await;
    for n in 0..5 {
        alice_a
            .send_text(&alice, &bob_key, &format!("m{n}"), 0, mid(10 + n))
            .await
            .unwrap();
    }
    // The mail sits in C's mailbox; Bob now shows up at B instead.
    let stats = |n: &TestNode| ferry_node::admin::call(&n.node_admin(), "store").unwrap();
    until("mail at C", Duration::from_secs(20), || async {
        stats(&c)["messages"].as_u64() == Some(5)
    })
    .await;
    // Bob's first `ferry inbox` at B: B knows his mail is at C (his last home), says so, and
    // waits for it rather than printing nothing; it comes out in the order Alice sent it.
    let cfg = tempfile::tempdir().unwrap();
    let bob_file = cfg.path().join("bob.json");
    bob.save(&bob_file).unwrap();
    let inbox = |cfg: std::path::PathBuf, bob_file: std::path::PathBuf, addr: String| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
                .env("XDG_CONFIG_HOME", cfg)
                .args(["inbox", "--node", &addr, "--json", "--id"])
                .arg(bob_file)
                .output()
                .unwrap()
        })
    };
    let texts = |out: &std::process::Output| -> Vec<String> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].to_string())
            .collect()
    };
    let first = inbox(cfg.path().to_path_buf(), bob_file.clone(), b.addr.clone())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    let c_id = c.node.mesh_node_id.unwrap().short();
    assert!(
        stderr.contains("following you from node") && stderr.contains(&c_id),
        "{stderr}"
    );
    let mut shown = texts(&first);
    assert!(!shown.is_empty(), "the first inbox at B showed nothing");
    // Whatever a loaded machine held up past the first look comes with the next.
    let deadline = Instant::now() + Duration::from_secs(20);
    while shown.len() < 5 && Instant::now() < deadline {
        let more = inbox(cfg.path().to_path_buf(), bob_file.clone(), b.addr.clone())
            .await
            .unwrap();
        shown.extend(texts(&more));
    }
    assert_eq!(
        shown,
        [r#""m0""#, r#""m1""#, r#""m2""#, r#""m3""#, r#""m4""#]
    );
    until("C gave the mail up", Duration::from_secs(20), || async {
        stats(&c)["messages"].as_u64() == Some(0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_subscribers_two_hops_away() {
    let (a, _b, c) = line().await;
    let alice = Identity::generate().unwrap();
    let topic = Topic::from_passphrase("the ferry leaves at noon");
    // Topics need an authenticated connection (any identity), not an Attach.
    let sub = c.client().await;
    sub.authenticate(&Identity::generate().unwrap())
        .await
        .unwrap();
    let pub_ = a.client().await;
    pub_.authenticate(&alice).await.unwrap();
    // Wait for the line to be up (routes to both ends at C).
    until("routes at C", Duration::from_secs(20), || async {
        ferry_node::admin::call(&c.node_admin(), "routes")
            .unwrap()
            .as_array()
            .is_some_and(|r| r.len() >= 3)
    })
    .await;
    let id = mid(40);
    let sealed = topic.seal(&alice, &id, 7, "storm warning").unwrap();
    assert!(
        !pub_
            .broadcast_publish(&topic.id(), &id, sealed.clone(), 0)
            .await
            .unwrap()
    );
    // A repeat is recognised.
    assert!(
        pub_.broadcast_publish(&topic.id(), &id, sealed, 0)
            .await
            .unwrap()
    );
    let got = sub
        .broadcast_fetch(&topic.id(), 0, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let post = topic
        .open(
            &MessageId::from_field(&got[0].message_id, "id").unwrap(),
            &got[0].payload,
        )
        .unwrap();
    assert_eq!(post.text, "storm warning");
    assert_eq!(post.sender, alice.public_key());
    // Nothing after the cursor: the long poll times out empty.
    let none = sub
        .broadcast_fetch(&topic.id(), got[0].seq, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(none.is_empty());
    // Bad topic and oversize payload are refused with clear statuses.
    let (st, _) = pub_
        .call_raw(
            Method::BroadcastPublish.id(),
            &prost::Message::encode_to_vec(&pb::BroadcastPublishRequest {
                topic: vec![1; 5],
                payload: vec![1],
                message_id: vec![2; 16],
                hop_limit: 0,
            }),
        )
        .await
        .unwrap();
    assert_eq!(st, Status::BadRequest);
    let (st, _) = pub_
        .call_raw(
            Method::BroadcastPublish.id(),
            &prost::Message::encode_to_vec(&pb::BroadcastPublishRequest {
                topic: vec![1; 32],
                payload: vec![1; 64 * 1024 + 1],
                message_id: vec![2; 16],
                hop_limit: 0,
            }),
        )
        .await
        .unwrap();
    assert_eq!(st, Status::PayloadTooLarge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_refuses_bad_claims_and_the_node_keeps_serving() {
    let a = node_peering(&[], true).await;
    let me = a.node.mesh_node_id.unwrap();
    let id = Identity::generate().unwrap();
    let c = a.client().await;
    // Not authenticated.
    let req = |node: NodeId, ts: u64, sig: Vec<u8>| pb::AttachRequest {
        node_id: node.as_bytes().to_vec(),
        timestamp_ms: ts,
        hybrid_public_key: id.hybrid_public_key().as_bytes().to_vec(),
        signature: sig,
    };
    let signed = |node: NodeId, ts: u64| {
        id.sign(&presence_transcript(
            &id.public_key(),
            &node,
            ts,
            &id.hybrid_public_key(),
        ))
        .to_vec()
    };
    let call = |r: pb::AttachRequest| {
        let c = &c;
        async move {
            c.call_raw(Method::Attach.id(), &prost::Message::encode_to_vec(&r))
                .await
                .unwrap()
                .0
        }
    };
    assert_eq!(
        call(req(me, 1000, signed(me, 1000))).await,
        Status::Unauthorized
    );
    c.authenticate(&id).await.unwrap();
    // Another node's id.
    let other = NodeId::from_array([5; 32]);
    assert_eq!(
        call(req(other, 1000, signed(other, 1000))).await,
        Status::BadRequest
    );
    // Signed by someone else.
    let mallory = Identity::generate().unwrap();
    let forged = mallory
        .sign(&presence_transcript(
            &id.public_key(),
            &me,
            1000,
            &id.hybrid_public_key(),
        ))
        .to_vec();
    assert_eq!(call(req(me, 1000, forged)).await, Status::Unauthorized);
    // Signature over other fields.
    assert_eq!(
        call(req(me, 1001, signed(me, 1000))).await,
        Status::Unauthorized
    );
    // Short signature.
    assert_eq!(call(req(me, 1000, vec![1; 10])).await, Status::BadRequest);
    // The real one is taken; an older one afterwards is stale.
    assert_eq!(call(req(me, 5000, signed(me, 5000))).await, Status::Ok);
    assert_eq!(
        call(req(me, 4000, signed(me, 4000))).await,
        Status::Unauthorized
    );
    // Still serving.
    assert_eq!(c.health().await.unwrap().status, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_socket_answers_and_refuses_unknown_commands() {
    let (a, b, _c) = line().await;
    let path = b.node_admin();
    until("B linked to both", Duration::from_secs(20), || async {
        ferry_node::admin::call(&path, "peers")
            .unwrap()
            .as_array()
            .is_some_and(|p| p.iter().filter(|p| p["linked"] == true).count() == 2)
    })
    .await;
    let status = ferry_node::admin::call(&path, "status").unwrap();
    assert_eq!(
        status["mesh"]["node_id"],
        b.node.mesh_node_id.unwrap().to_hex()
    );
    let routes = ferry_node::admin::call(&path, "routes").unwrap();
    let to_a = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node_id"] == a.node.mesh_node_id.unwrap().to_hex())
        .expect("a route to A");
    assert_eq!(to_a["metric"], 1);
    let store = ferry_node::admin::call(&path, "store").unwrap();
    for field in [
        "custody_bundles",
        "dedup_records",
        "dedup_forgotten_total",
        "used_bytes",
        "max_total_bytes",
    ] {
        assert!(store[field].is_u64(), "{field} in {store}");
    }
    assert_eq!(
        ferry_node::admin::call(&path, "reconnect").unwrap()["ok"],
        true
    );
    let bad = ferry_node::admin::call(&path, "rm -rf").unwrap();
    assert!(bad["error"].as_str().unwrap().contains("unknown command"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_mesh_still_serves_and_says_so() {
    let a = start_with(|c| c.mesh.enabled = false).await;
    let id = Identity::generate().unwrap();
    let c = a.client().await;
    c.authenticate(&id).await.unwrap();
    // attach() falls back to uploading the key.
    assert_eq!(c.attach(&id).await.unwrap().delivered, 0);
    assert!(c.health().await.unwrap().mesh_node_id.is_empty());
    let (st, _) = c
        .call_raw(
            Method::Attach.id(),
            &prost::Message::encode_to_vec(&pb::AttachRequest::default()),
        )
        .await
        .unwrap();
    assert_eq!(st, Status::Unavailable);
}
