//! A hostile client beside well-behaved ones: whatever one address does with connections, long
//! polls and slow request bodies, clients at other addresses (and other clients behind the
//! same address) keep being served. Clients take their source address from 127.0.0.0/8, so
//! every test has as many addresses as it needs on loopback.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ferry_client::{Client, ClientError, Identity};
use ferry_proto::frame::{RequestHeader, ResponseHeader};
use ferry_proto::{Method, Status};

/// A client whose connection comes from `ip` (its endpoint lives as long as the client).
async fn client_from(n: &TestNode, ip: &str) -> Result<Client, ClientError> {
    let endpoint = quinn::Endpoint::client(format!("{ip}:0").parse().unwrap()).unwrap();
    Client::connect_on(&endpoint, &n.addr, &n.opts()).await
}

/// An authenticated client from `ip`, with its identity.
async fn user_from(n: &TestNode, ip: &str) -> (Client, Identity) {
    let c = client_from(n, ip).await.unwrap();
    let id = Identity::generate().unwrap();
    c.authenticate(&id).await.unwrap();
    c.upload_hybrid_key(&id).await.unwrap();
    (c, id)
}

fn status(e: &ClientError) -> Option<Status> {
    e.status_code()
}

/// What a well-behaved client at `ip` goes through, each step within `limit`: connect,
/// health, authenticate, enqueue to itself, fetch it back.
async fn served_promptly(n: &TestNode, ip: &str, limit: Duration) {
    let t = Instant::now();
    let c = client_from(n, ip).await.unwrap();
    assert_eq!(c.health().await.unwrap().status, "ok");
    let id = Identity::generate().unwrap();
    c.authenticate(&id).await.unwrap();
    c.enqueue(&enqueue_req(&id, b"hello", None)).await.unwrap();
    let got = c.fetch(&mailbox(&id), 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        t.elapsed() < limit,
        "the client at {ip} waited {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_flood_leaves_everyone_else_served() {
    // A small node: 64 requests in flight, 64 long polls (16 per address).
    let n = start_with(|c| {
        c.max_inflight_requests = 64;
        c.max_long_polls = 64;
    })
    .await;
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let (c, id) = user_from(&n, "127.0.0.2").await;
        attackers.push((Arc::new(c), id));
    }
    // 4 connections x 24 long polls of a minute each, from one address.
    let mut polls = Vec::new();
    for (c, id) in &attackers {
        for _ in 0..24 {
            let c = Arc::clone(c);
            let mb = mailbox(id);
            polls.push(tokio::spawn(async move {
                c.fetch_wait(&mb, 1, Duration::from_secs(60)).await
            }));
        }
    }
    // The ones past a connection's 8 and the address's 16 are refused at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = polls.iter().filter(|p| p.is_finished()).count();
    assert_eq!(
        refused,
        96 - 16,
        "16 long polls wait, the rest were refused"
    );
    for p in polls.iter_mut().filter(|p| p.is_finished()) {
        let e = p.await.unwrap().unwrap_err();
        assert_eq!(status(&e), Some(Status::RateLimited), "{e}");
        assert!(e.to_string().contains("too many long polls"), "{e}");
    }
    // Everyone else, and a neighbour behind the attacker's address, is served.
    served_promptly(&n, "127.0.0.3", Duration::from_secs(2)).await;
    served_promptly(&n, "127.0.0.2", Duration::from_secs(2)).await;
    // The attacker leaves: its long polls end with its connections, at once, and its
    // address may poll again.
    for (c, _) in &attackers {
        c.connection().close(0u32.into(), b"bye");
    }
    drop(attackers);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c, id) = user_from(&n, "127.0.0.2").await;
    let c = Arc::new(c);
    let mut again = Vec::new();
    for _ in 0..8 {
        let c = Arc::clone(&c);
        let mb = mailbox(&id);
        again.push(tokio::spawn(async move {
            c.fetch_wait(&mb, 1, Duration::from_millis(1500)).await
        }));
    }
    for p in again {
        assert!(p.await.unwrap().unwrap().is_empty(), "waited and timed out");
    }
    n.node.stop().await;
}

/// Opens a request stream that declares `declared` body bytes and sends `sent` of them.
async fn partial_body(
    c: &Client,
    declared: usize,
    sent: usize,
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut s, r) = c.connection().open_bi().await.unwrap();
    let header = RequestHeader {
        method_id: Method::Enqueue.id(),
        request_id: 1,
        declared_len: u32::try_from(declared).unwrap(),
    };
    // The node may refuse and stop the stream part way.
    let _ = s.write_all(&header.to_bytes()).await;
    let _ = s.write_all(&vec![0u8; sent]).await;
    (s, r)
}

/// The status of the answer on `r`, if one comes within `wait`.
async fn answer_within(r: &mut quinn::RecvStream, wait: Duration) -> Option<Status> {
    let mut hdr = [0u8; ResponseHeader::LEN];
    match tokio::time::timeout(wait, r.read_exact(&mut hdr)).await {
        Ok(Ok(())) => ResponseHeader::from_bytes(&hdr).status().ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_hold_only_what_they_sent() {
    // The default pool of request bytes: 32 MiB, 8 MiB per address.
    let n = start().await;
    // Two streams each from four addresses declare 4 MiB and send one byte.
    let mut held = Vec::new();
    let mut attackers = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        let (c, _) = user_from(&n, ip).await;
        for _ in 0..2 {
            held.push(partial_body(&c, 4 * 1024 * 1024, 1).await);
        }
        attackers.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Elsewhere, and behind an attacking address, a five-byte enqueue goes through at once.
    served_promptly(&n, "127.0.0.6", Duration::from_secs(2)).await;
    served_promptly(&n, "127.0.0.2", Duration::from_secs(2)).await;
    // An address that really sends more than its share is refused at once, not queued.
    let (c, _) = user_from(&n, "127.0.0.7").await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(partial_body(&c, 4 * 1024 * 1024, 3 * 1024 * 1024).await);
    }
    let mut statuses = Vec::new();
    for (_, r) in &mut streams {
        statuses.extend(answer_within(r, Duration::from_secs(3)).await);
    }
    assert_eq!(
        statuses,
        [Status::RateLimited],
        "the third 3 MiB body passed the 8 MiB share"
    );
    served_promptly(&n, "127.0.0.8", Duration::from_secs(2)).await;
    drop((held, streams, attackers));
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let n = start_with(|c| {
        c.max_connections = 40;
        c.max_connections_per_address = 8;
        c.connection_rate = 0;
        c.auth_timeout = Duration::from_secs(2);
    })
    .await;
    // Twelve unauthenticated connections from one address: eight are kept, four closed.
    let mut conns = Vec::new();
    for _ in 0..12 {
        conns.push(client_from(&n, "127.0.0.2").await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let closed: Vec<String> = conns
        .iter()
        .filter_map(|c| c.connection().close_reason())
        .map(|r| r.to_string())
        .collect();
    assert_eq!(closed.len(), 4, "{closed:?}");
    for reason in closed {
        assert!(
            reason.contains("too many connections from your address (at most 8)"),
            "{reason}"
        );
    }
    // Another address is served.
    served_promptly(&n, "127.0.0.3", Duration::from_secs(2)).await;
    // Connections that never authenticate are closed after auth_timeout, and the address
    // may connect again.
    let t = Instant::now();
    for c in &conns {
        let reason = c.connection().closed().await;
        if !reason.to_string().contains("too many") {
            assert!(
                reason.to_string().contains("not authenticated within 2 s"),
                "{reason}"
            );
        }
    }
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    served_promptly(&n, "127.0.0.2", Duration::from_secs(2)).await;
    n.node.stop().await;

    // New connections from one address are rate limited: a burst of twice the rate, then the
    // rate; other addresses are not affected.
    let n = start_with(|c| {
        c.connection_rate = 2;
        c.max_connections_per_address = 1000;
    })
    .await;
    let mut kept = Vec::new();
    let t = Instant::now();
    for _ in 0..30 {
        if let Ok(c) = client_from(&n, "127.0.0.4").await {
            // Refused after its handshake, or kept.
            if tokio::time::timeout(Duration::from_millis(100), c.connection().closed())
                .await
                .is_err()
            {
                kept.push(c);
            }
        }
    }
    let allowed = 4.0 + 2.0 * t.elapsed().as_secs_f64();
    assert!(
        kept.len() >= 4 && kept.len() as f64 <= allowed + 1.0,
        "{} of 30 kept in {:?}; the burst (4) and the rate (2/s) allow {allowed:.1}",
        kept.len(),
        t.elapsed()
    );
    served_promptly(&n, "127.0.0.5", Duration::from_secs(2)).await;
    let addr: SocketAddr = n.addr.parse().unwrap();
    assert!(addr.ip().is_loopback());
    n.node.stop().await;
}
