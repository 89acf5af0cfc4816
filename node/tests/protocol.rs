//! The client protocol against a real node over QUIC on loopback.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ferry_client::{BatchOptions, Batcher, PushEvent, message};
use ferry_proto::qpq::v1 as pb;
use ferry_proto::types::{HybridKeyLookup, MessageId};
use ferry_proto::{Method, Status};

#[tokio::test]
async fn health_needs_no_authentication() {
    let n = start().await;
    let c = n.client().await;
    let h = c.health().await.unwrap();
    assert_eq!(h.status, "ok");
    assert_eq!(h.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(h.queue_depth, 0);
    // One id: the node key's, whether or not the mesh runs (the same as the mesh's).
    assert_eq!(h.node_id, n.node.node_id.to_hex());
    assert_eq!(n.node.mesh_node_id, Some(n.node.node_id));
    assert_eq!(c.node_fingerprint(), n.node.cert_fingerprint);
    n.node.stop().await;
}

#[tokio::test]
async fn two_people_exchange_end_to_end_encrypted_messages() {
    let n = start().await;
    let (alice_c, alice) = n.user().await;
    let (bob_c, bob) = n.user().await;
    let id = MessageId::from_array([7; 16]);
    let (to, r) = alice_c
        .send_text(
            &alice,
            &HybridKeyLookup::Fingerprint(bob.fingerprint()),
            "hi bob",
            3600,
            id,
        )
        .await
        .unwrap();
    assert_eq!(to, bob.public_key());
    assert!(!r.duplicate);
    let envs = bob_c.fetch(&mailbox(&bob), 10).await.unwrap();
    assert_eq!(envs.len(), 1);
    let e = &envs[0];
    assert_eq!(
        e.sender_key,
        alice.public_key().as_bytes().to_vec(),
        "node stamps the sender"
    );
    assert_eq!(e.message_id, id.as_bytes().to_vec());
    assert!(e.enqueued_at_ms > 0);
    assert!(
        !e.data.windows(6).any(|w| w == b"hi bob"),
        "the node stores only ciphertext"
    );
    let stamped = ferry_proto::types::IdentityKey::from_field(&e.sender_key, "s").unwrap();
    let opened = message::open(&bob, &e.data, Some(&stamped)).unwrap();
    assert_eq!(opened.text, "hi bob");
    assert_eq!(opened.sender, alice.public_key());
    n.node.stop().await;
}

#[tokio::test]
async fn enqueue_is_idempotent_by_message_id() {
    let n = start().await;
    let (a, _alice) = n.user().await;
    let (_b, bob) = n.user().await;
    let r1 = a
        .enqueue(&enqueue_req(&bob, b"one", Some([1; 16])))
        .await
        .unwrap();
    let r2 = a
        .enqueue(&enqueue_req(&bob, b"two", Some([2; 16])))
        .await
        .unwrap();
    let again = a
        .enqueue(&enqueue_req(&bob, b"one", Some([1; 16])))
        .await
        .unwrap();
    assert_eq!((r1.seq, r2.seq), (1, 2));
    assert!(again.duplicate);
    assert_eq!(again.seq, r1.seq);
    assert_eq!(a.health().await.unwrap().queue_depth, 2);
    n.node.stop().await;
}

#[tokio::test]
async fn fetch_advances_peek_does_not_and_unacked_is_redelivered() {
    let n = start().await;
    let (a, _alice) = n.user().await;
    let (b, bob) = n.user().await;
    for i in 0..5u8 {
        a.enqueue(&enqueue_req(&bob, &[i], None)).await.unwrap();
    }
    let mb = mailbox(&bob);
    assert_eq!(seqs(&b.fetch(&mb, 2).await.unwrap()), vec![1, 2]);
    assert_eq!(seqs(&b.fetch(&mb, 2).await.unwrap()), vec![3, 4]);
    assert_eq!(
        seqs(&b.peek(&mb, 10).await.unwrap()),
        vec![1, 2, 3, 4, 5],
        "peek reads from the ack cursor"
    );
    assert_eq!(seqs(&b.fetch(&mb, 10).await.unwrap()), vec![5]);
    assert!(b.fetch(&mb, 10).await.unwrap().is_empty());
    b.ack(&mb, 3).await.unwrap();
    assert_eq!(seqs(&b.peek(&mb, 10).await.unwrap()), vec![4, 5]);
    // A new connection starts from the ack cursor: 4 and 5 were fetched but not acked.
    let b2 = n.client().await;
    b2.authenticate(&bob).await.unwrap();
    assert_eq!(seqs(&b2.fetch(&mb, 10).await.unwrap()), vec![4, 5]);
    b2.ack(&mb, 5).await.unwrap();
    assert!(b2.peek(&mb, 10).await.unwrap().is_empty());
    assert_eq!(b2.health().await.unwrap().queue_depth, 0);
    n.node.stop().await;
}

#[tokio::test]
async fn fetch_wait_wakes_on_enqueue_and_times_out_empty() {
    let n = start().await;
    let (a, _alice) = n.user().await;
    let (b, bob) = n.user().await;
    let mb = mailbox(&bob);
    let t = Instant::now();
    assert!(
        b.fetch_wait(&mb, 10, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(t.elapsed() >= Duration::from_millis(250));
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let got = b
            .fetch_wait(&mb, 10, Duration::from_secs(20))
            .await
            .unwrap();
        (got, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.enqueue(&enqueue_req(&bob, b"wake", None)).await.unwrap();
    let (got, waited) = waiter.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"wake");
    assert!(
        waited < Duration::from_secs(10),
        "woken by the enqueue, not the timeout: {waited:?}"
    );
    n.node.stop().await;
}

#[tokio::test]
async fn connected_recipient_gets_a_new_message_push() {
    let n = start().await;
    let (a, _alice) = n.user().await;
    let (b, bob) = n.user().await;
    let mut pushes = b.push_events().unwrap();
    let r = a.enqueue(&enqueue_req(&bob, b"ping", None)).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), pushes.recv())
        .await
        .unwrap()
        .unwrap();
    match ev {
        PushEvent::NewMessage(m) => {
            assert_eq!(m.recipient_key, bob.public_key().as_bytes().to_vec());
            assert_eq!(m.seq, r.seq);
        }
        other => panic!("{other:?}"),
    }
    n.node.stop().await;
}

#[tokio::test]
async fn batch_enqueue_fans_out() {
    let n = start().await;
    let (a, _alice) = n.user().await;
    let (b, bob) = n.user().await;
    let (c, carol) = n.user().await;
    let req = pb::BatchEnqueueRequest {
        recipient_keys: vec![
            bob.public_key().as_bytes().to_vec(),
            carol.public_key().as_bytes().to_vec(),
        ],
        payload: b"to all".to_vec(),
        channel_id: vec![],
        ttl_secs: 60,
        message_id: vec![9; 16],
        sealed_sender: false,
    };
    let r = a.batch_enqueue(&req).await.unwrap();
    assert_eq!(r.seqs, vec![1, 1]);
    assert_eq!(r.duplicates, vec![false, false]);
    let r = a.batch_enqueue(&req).await.unwrap();
    assert_eq!(r.duplicates, vec![true, true]);
    assert_eq!(
        b.fetch(&mailbox(&bob), 10).await.unwrap()[0].data,
        b"to all"
    );
    assert_eq!(c.fetch(&mailbox(&carol), 10).await.unwrap().len(), 1);
    n.node.stop().await;
}

#[tokio::test]
async fn enqueue_many_stores_several_messages_in_order_in_one_request() {
    let n = start().await;
    let (a, _alice) = n.user().await;
    let (b, bob) = n.user().await;
    let (c, carol) = n.user().await;
    let req = pb::EnqueueManyRequest {
        messages: vec![
            enqueue_req(&bob, b"one", Some([1; 16])),
            enqueue_req(&carol, b"to carol", Some([2; 16])),
            enqueue_req(&bob, b"two", None),
            // The same id again in the same request: stored once.
            enqueue_req(&bob, b"one again", Some([1; 16])),
            enqueue_req(&bob, b"three", Some([3; 16])),
        ],
    };
    let r = a.enqueue_many(&req).await.unwrap();
    let got: Vec<(u64, bool)> = r.results.iter().map(|e| (e.seq, e.duplicate)).collect();
    assert_eq!(
        got,
        vec![(1, false), (1, false), (2, false), (1, true), (3, false)]
    );
    let inbox = b.fetch(&mailbox(&bob), 10).await.unwrap();
    let payloads: Vec<&[u8]> = inbox.iter().map(|e| e.data.as_slice()).collect();
    assert_eq!(payloads, vec![&b"one"[..], b"two", b"three"]);
    assert_eq!(c.fetch(&mailbox(&carol), 10).await.unwrap().len(), 1);
    // A retry of the whole request stores only the message that had no id: the node gave it a
    // random one, so its retry cannot be recognised (clients that retry give ids).
    let again = a.enqueue_many(&req).await.unwrap();
    let dups: Vec<bool> = again.results.iter().map(|e| e.duplicate).collect();
    assert_eq!(dups, vec![true, true, false, true, true]);
    n.node.stop().await;
}

#[tokio::test]
async fn enqueue_many_refuses_a_bad_message_by_index_and_stores_none() {
    let n = start().await;
    let (a, _alice) = n.user().await;
    let (_b, bob) = n.user().await;
    let mut bad = enqueue_req(&bob, b"bad", None);
    bad.recipient_key.truncate(31);
    let req = pb::EnqueueManyRequest {
        messages: vec![enqueue_req(&bob, b"good", Some([1; 16])), bad],
    };
    let e = a.enqueue_many(&req).await.unwrap_err();
    assert_eq!(e.status_code(), Some(Status::BadRequest));
    assert!(e.to_string().contains("messages[1]: recipient_key"), "{e}");
    let e = a
        .enqueue_many(&pb::EnqueueManyRequest { messages: vec![] })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("messages must not be empty"), "{e}");
    let many = (0..257u32)
        .map(|i| enqueue_req(&bob, &i.to_be_bytes(), None))
        .collect();
    let e = a
        .enqueue_many(&pb::EnqueueManyRequest { messages: many })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("257 entries, at most 256"), "{e}");
    // A message over the stored-message limit keeps its own status, inside a frame that fits.
    let big = enqueue_req(
        &bob,
        &vec![0; ferry_proto::limits::MAX_MESSAGE_LEN + 1],
        None,
    );
    let e = a
        .enqueue_many(&pb::EnqueueManyRequest {
            messages: vec![big],
        })
        .await
        .unwrap_err();
    assert_eq!(e.status_code(), Some(Status::PayloadTooLarge), "{e}");
    assert!(e.to_string().contains("messages[0]: payload of"), "{e}");
    assert_eq!(a.health().await.unwrap().queue_depth, 0, "nothing stored");
    // Not authenticated: refused like Enqueue.
    let anon = n.client().await;
    let e = anon
        .enqueue_many(&pb::EnqueueManyRequest {
            messages: vec![enqueue_req(&bob, b"x", None)],
        })
        .await
        .unwrap_err();
    assert_eq!(e.status_code(), Some(Status::Unauthorized));
    // The node keeps serving the same connection.
    assert_eq!(
        a.enqueue_many(&pb::EnqueueManyRequest {
            messages: vec![enqueue_req(&bob, b"good", Some([1; 16]))],
        })
        .await
        .unwrap()
        .results[0]
            .seq,
        1
    );
    n.node.stop().await;
}

#[tokio::test]
async fn batcher_coalesces_concurrent_sends_and_answers_each_message() {
    let n = start_with(|c| c.metrics = Some("127.0.0.1:0".into())).await;
    let (a, _alice) = n.user().await;
    let (b, bob) = n.user().await;
    let batcher = Batcher::new(Arc::new(a), BatchOptions::default());
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..300u32 {
        let mut req = enqueue_req(&bob, &i.to_be_bytes(), None);
        if i == 150 {
            req.recipient_key.truncate(31);
        }
        let batcher = batcher.clone();
        sends.spawn(async move { (i, batcher.enqueue(req).await) });
    }
    let mut ok = 0;
    while let Some(r) = sends.join_next().await {
        match r.unwrap() {
            (150, Err(e)) => assert_eq!(e.status_code(), Some(Status::BadRequest), "{e}"),
            (i, Ok(resp)) if i != 150 => {
                assert!(!resp.duplicate && resp.seq > 0);
                ok += 1;
            }
            (i, other) => panic!("message {i}: {other:?}"),
        }
    }
    assert_eq!(ok, 299);
    // Every good message stored once, the bad one not at all.
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let got = b.fetch(&mailbox(&bob), 1024).await.unwrap();
        let Some(last) = got.last().map(|e| e.seq) else {
            break;
        };
        for e in &got {
            assert!(seen.insert(e.data.clone()), "shown twice");
        }
        b.ack(&mailbox(&bob), last).await.unwrap();
    }
    assert_eq!(seen.len(), 299);
    assert!(!seen.contains(150u32.to_be_bytes().as_slice()));
    // Fewer requests than messages: most went out as EnqueueMany.
    let m = http_get(n.node.metrics_addr.unwrap(), "/metrics").await;
    let count = |line: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let many = count("requests_total{method=\"EnqueueMany\",status=\"Ok\"}");
    let plain = count("requests_total{method=\"Enqueue\",status=\"Ok\"}");
    assert!(many > 0, "no EnqueueMany in\n{m}");
    // The batch holding the bad message was refused whole, and its messages were sent again
    // one by one (the test runtime has one thread: the 300 sends queue before the first batch).
    let refused = count("requests_total{method=\"EnqueueMany\",status=\"BadRequest\"}");
    assert_eq!(refused, 1, "{m}");
    assert!(
        plain >= 63,
        "{plain} plain Enqueues after the refused batch"
    );
    assert!(
        many + plain < 150,
        "{many} EnqueueMany and {plain} Enqueue for 300 messages"
    );
    n.node.stop().await;
}

#[tokio::test]
async fn hybrid_keys_by_key_fingerprint_and_batch() {
    let n = start().await;
    let (a, alice) = n.user().await;
    let (_b, bob) = n.user().await;
    let stranger = ferry_client::Identity::generate().unwrap();
    let (id, key) = a
        .fetch_hybrid_key(&HybridKeyLookup::Identity(bob.public_key()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((id, key), (bob.public_key(), bob.hybrid_public_key()));
    assert!(
        a.fetch_hybrid_key(&HybridKeyLookup::Fingerprint(stranger.fingerprint()))
            .await
            .unwrap()
            .is_none()
    );
    let keys = a
        .fetch_hybrid_keys(&[bob.public_key(), stranger.public_key(), alice.public_key()])
        .await
        .unwrap();
    assert_eq!(
        keys,
        vec![
            Some(bob.hybrid_public_key()),
            None,
            Some(alice.hybrid_public_key())
        ]
    );
    n.node.stop().await;
}

#[tokio::test]
async fn sealed_sender_leaves_no_sender_stamp() {
    let n = start().await;
    let (a, _alice) = n.user().await;
    let (b, bob) = n.user().await;
    let mut req = enqueue_req(&bob, b"anon", None);
    req.sealed_sender = true;
    a.enqueue(&req).await.unwrap();
    let e = &b.fetch(&mailbox(&bob), 1).await.unwrap()[0];
    assert!(e.sender_key.is_empty());
    n.node.stop().await;
}

#[tokio::test]
async fn session_token_resumes_on_a_new_connection() {
    let n = start().await;
    let id = ferry_client::Identity::generate().unwrap();
    let c1 = n.client().await;
    let token = c1.authenticate(&id).await.unwrap();
    let c2 = n.client().await;
    assert_eq!(c2.resume(&token).await.unwrap(), id.public_key());
    assert!(c2.peek(&mailbox(&id), 1).await.unwrap().is_empty());
    let c3 = n.client().await;
    let bad = ferry_proto::types::SessionToken([0; 32]);
    assert_eq!(
        c3.resume(&bad).await.unwrap_err().status_code(),
        Some(Status::Unauthorized)
    );
    n.node.stop().await;
}

#[tokio::test]
async fn messages_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let node = ferry_node::start(cfg.clone()).await.unwrap();
    let fp = node.cert_fingerprint;
    let opts = ferry_client::ConnectOptions::with_trust(ferry_client::Trust::Pinned(fp));
    let alice = ferry_client::Identity::generate().unwrap();
    let bob = ferry_client::Identity::generate().unwrap();
    let c = ferry_client::Client::connect(&node.local_addr.to_string(), &opts)
        .await
        .unwrap();
    c.authenticate(&alice).await.unwrap();
    for i in 0..10u8 {
        c.enqueue(&enqueue_req(&bob, &[i], Some([i; 16])))
            .await
            .unwrap();
    }
    c.close().await;
    node.stop().await;
    let node = ferry_node::start(cfg).await.unwrap();
    assert_eq!(
        node.cert_fingerprint, fp,
        "the certificate is kept across restarts"
    );
    let c = ferry_client::Client::connect(&node.local_addr.to_string(), &opts)
        .await
        .unwrap();
    c.authenticate(&bob).await.unwrap();
    let got = c.fetch(&mailbox(&bob), 100).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.data[0]).collect::<Vec<_>>(),
        (0..10).collect::<Vec<u8>>()
    );
    node.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_with_a_retry_hint() {
    let n = start_with(|c| c.set_rate_limit(5)).await;
    let c = n.client().await;
    let mut limited = None;
    for _ in 0..30 {
        match c.health().await {
            Ok(_) => {}
            Err(e) => {
                limited = Some(e);
                break;
            }
        }
    }
    let e = limited.expect("30 requests at once exceed a burst of 10");
    assert_eq!(e.status_code(), Some(Status::RateLimited));
    match e {
        ferry_client::ClientError::Status { retry_after_ms, .. } => assert!(retry_after_ms > 0),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(c.health().await.is_ok(), "tokens refill");
    n.node.stop().await;
}

#[tokio::test]
async fn metrics_and_healthz_over_http() {
    let n = start_with(|c| c.metrics = Some("127.0.0.1:0".into())).await;
    let (a, _alice) = n.user().await;
    let (b, bob) = n.user().await;
    a.enqueue(&enqueue_req(&bob, b"x", None)).await.unwrap();
    let addr = n.node.metrics_addr.unwrap();
    let get = |path: &'static str| http_get(addr, path);
    let m = get("/metrics").await;
    for name in [
        "enqueue_total 1",
        "enqueue_bytes_total 1",
        "fetch_total",
        "fetch_wait_total",
        "rate_limit_hit_total 0",
        "delivery_queue_depth 1",
        "store_commits_total",
        "store_bytes_written_total",
        "store_fsyncs_total",
        "store_checkpoints_total",
        "store_replayed_records_total 0",
        "store_commit_seconds_bucket",
        "auth_login_success_total 2",
        "requests_total{method=\"Enqueue\",status=\"Ok\"} 1",
    ] {
        assert!(m.contains(name), "missing {name} in\n{m}");
    }
    // Delivered: the message leaves a dedup record, which counts against the budget.
    let got = b
        .fetch_wait(&mailbox(&bob), 10, Duration::from_secs(5))
        .await
        .unwrap();
    b.ack(&mailbox(&bob), got[0].seq).await.unwrap();
    let m = get("/metrics").await;
    for name in [
        "delivery_queue_depth 0",
        "store_dedup_records 1",
        "store_used_bytes 100",
        "store_dedup_forgotten_total 0",
    ] {
        assert!(m.contains(name), "missing {name} in\n{m}");
    }
    assert!(get("/healthz").await.contains("\r\n\r\nok"));
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    let _ = Method::Health;
    n.node.stop().await;
}

#[tokio::test]
async fn shutdown_wakes_long_polls_and_finishes_in_flight_requests() {
    let n = start().await;
    let (b, bob) = n.user().await;
    let mb = mailbox(&bob);
    let poll = tokio::spawn(async move { b.fetch_wait(&mb, 10, Duration::from_secs(50)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    n.node.stop().await;
    let r = poll.await.unwrap();
    assert!(r.map(|v| v.is_empty()).unwrap_or(true));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "drain did not wait for the long poll: {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn no_push_while_a_long_poll_is_pending() {
    let n = start().await;
    let (a, _alice) = n.user().await;
    let (b, bob) = n.user().await;
    let mut pushes = b.push_events().unwrap();
    let b = std::sync::Arc::new(b);
    let mb = mailbox(&bob);
    let poll = {
        let b = std::sync::Arc::clone(&b);
        tokio::spawn(async move { b.fetch_wait(&mb, 10, Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.enqueue(&enqueue_req(&bob, b"polled", None))
        .await
        .unwrap();
    assert_eq!(poll.await.unwrap().unwrap()[0].data, b"polled");
    // The long poll carried it; a push would have arrived by now.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), pushes.recv())
            .await
            .is_err(),
        "a push was sent although a long poll was pending"
    );
    n.node.stop().await;
}

#[tokio::test]
async fn pushes_are_coalesced_and_end_with_the_newest_seq() {
    let n = start().await;
    let (a, _alice) = n.user().await;
    let (b, bob) = n.user().await;
    let mut pushes = b.push_events().unwrap();
    let a = std::sync::Arc::new(a);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..50u8 {
        let a = std::sync::Arc::clone(&a);
        let req = enqueue_req(&bob, &[i], None);
        set.spawn(async move { a.enqueue(&req).await.unwrap() });
    }
    while set.join_next().await.is_some() {}
    let mut seqs = Vec::new();
    while let Ok(Some(PushEvent::NewMessage(m))) =
        tokio::time::timeout(Duration::from_millis(500), pushes.recv()).await
    {
        seqs.push(m.seq);
    }
    assert!(!seqs.is_empty() && seqs.len() <= 50, "{seqs:?}");
    assert_eq!(
        seqs.iter().max(),
        Some(&50),
        "the newest message is always announced: {seqs:?}"
    );
    n.node.stop().await;
}

#[tokio::test]
async fn a_full_receive_buffer_is_counted_and_the_node_keeps_serving() {
    // The smallest receive buffer there is (the kernel rounds 1 byte up to its minimum): a
    // burst of datagrams overflows it, /metrics counts the drops on the node's port, and
    // clients are still served.
    let n = start_with(|c| {
        c.metrics = Some("127.0.0.1:0".into());
        c.udp_receive_buffer = 1;
    })
    .await;
    let metrics = n.node.metrics_addr.unwrap();
    let row = format!(
        "udp_receive_drops_total{{port=\"{}\"}} ",
        n.node.local_addr.port()
    );
    let drops = |m: &str| -> u64 {
        let line = m.lines().find(|l| l.starts_with(&row));
        let line = line.unwrap_or_else(|| panic!("no {row} in\n{m}"));
        line[row.len()..].trim().parse().unwrap()
    };
    assert_eq!(drops(&http_get(metrics, "/metrics").await), 0);
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let junk = [0u8; 1200];
    let mut dropped = 0;
    for _ in 0..50 {
        // The node reads on this test's (single) thread, so nothing is read during a burst.
        for _ in 0..100 {
            let _ = sender.send_to(&junk, n.node.local_addr);
        }
        dropped = drops(&http_get(metrics, "/metrics").await);
        if dropped > 0 {
            break;
        }
    }
    assert!(dropped > 0, "no drops counted");
    let (a, _) = n.user().await;
    let (_, bob) = n.user().await;
    a.enqueue(&enqueue_req(&bob, b"still here", None))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_released_by_one_commit_share_packets() {
    // 64 Enqueues in flight on one connection (what a qpq client sending one Enqueue per
    // message does), answered by a few group commits: the node's answers travel a few to a
    // packet, not a packet each. Two workers, like a router: with a task per stream, tokio
    // ran quinn's driver after each answer and the client got 64 datagrams or more.
    let n = start().await;
    let (a, _) = n.user().await;
    let (_, bob) = n.user().await;
    let reqs: Vec<pb::EnqueueRequest> = (0..64)
        .map(|i| enqueue_req(&bob, format!("m{i}").as_bytes(), None))
        .collect();
    let before = a.connection().stats().udp_rx.datagrams;
    let answers = futures::future::join_all(reqs.iter().map(|r| a.enqueue(r))).await;
    let got = a.connection().stats().udp_rx.datagrams - before;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert!(got <= 40, "{got} datagrams for 64 answers");
}
