//! Every bad input gets a clear error, loses nothing, and leaves the node (and usually the
//! connection) serving. Raw frames are written straight onto QUIC streams.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_client::{Client, ClientError, Identity};
use ferry_proto::frame::{RequestHeader, ResponseHeader, encode_request};
use ferry_proto::limits::{MAX_MESSAGE_LEN, MAX_PAYLOAD};
use ferry_proto::qpq::v1 as pb;
use ferry_proto::transcript::auth_transcript;
use ferry_proto::{Method, Status};
use prost::Message;

/// Writes raw bytes as one request stream and reads the response.
async fn raw(c: &Client, bytes: &[u8]) -> (Status, u32, String) {
    let (mut send, mut recv) = c.connection().open_bi().await.unwrap();
    // The node may stop the stream after an oversized header; the write error is expected then.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let mut hdr = [0u8; ResponseHeader::LEN];
    recv.read_exact(&mut hdr)
        .await
        .expect("a response, not a reset");
    let h = ResponseHeader::from_bytes(&hdr);
    let mut body = vec![0u8; h.payload_len().unwrap()];
    recv.read_exact(&mut body).await.unwrap();
    let msg = pb::Error::decode(&body[..])
        .map(|e| e.message)
        .unwrap_or_default();
    (h.status().unwrap(), h.request_id, msg)
}

fn status(e: ClientError) -> Status {
    e.status_code()
        .unwrap_or_else(|| panic!("expected a status, got {e}"))
}

#[tokio::test]
async fn oversized_frame_is_refused_and_the_connection_survives() {
    let n = start().await;
    let c = n.client().await;
    let mut frame = RequestHeader {
        method_id: Method::Enqueue.id(),
        request_id: 77,
        declared_len: (MAX_PAYLOAD + 1) as u32,
    }
    .to_bytes()
    .to_vec();
    frame.extend_from_slice(&vec![0u8; 64 * 1024]);
    let (st, rid, msg) = raw(&c, &frame).await;
    assert_eq!((st, rid), (Status::PayloadTooLarge, 77));
    assert!(msg.contains("exceeds the limit of 4194304"), "{msg}");
    // Same connection, still serving.
    assert_eq!(c.health().await.unwrap().status, "ok");
    // A frame within the limit whose message payload is over the stored-message limit.
    let (ca, _alice) = n.user().await;
    let bob = Identity::generate().unwrap();
    let e = ca
        .enqueue(&enqueue_req(&bob, &vec![1u8; MAX_MESSAGE_LEN + 1], None))
        .await
        .unwrap_err();
    assert_eq!(status(e), Status::PayloadTooLarge);
    // A big message that fits goes through and comes back whole.
    let big = vec![42u8; 3 * 1024 * 1024];
    ca.enqueue(&enqueue_req(&bob, &big, None)).await.unwrap();
    let cb = n.client().await;
    cb.authenticate(&bob).await.unwrap();
    assert_eq!(cb.fetch(&mailbox(&bob), 10).await.unwrap()[0].data, big);
    n.node.stop().await;
}

#[tokio::test]
async fn truncated_frames_and_garbage_protobuf_are_bad_requests() {
    let n = start().await;
    let c = n.client().await;
    // Header says 100 bytes, 50 arrive, then the stream ends.
    let mut f = RequestHeader {
        method_id: Method::Health.id(),
        request_id: 5,
        declared_len: 100,
    }
    .to_bytes()
    .to_vec();
    f.extend_from_slice(&[0u8; 50]);
    let (st, rid, msg) = raw(&c, &f).await;
    assert_eq!((st, rid), (Status::BadRequest, 5));
    assert!(msg.contains("truncated"), "{msg}");
    // Not even a whole header.
    let (st, _, msg) = raw(&c, &[0, 200, 0, 0]).await;
    assert_eq!(st, Status::BadRequest);
    assert!(msg.contains("header"), "{msg}");
    // A whole frame whose protobuf is garbage.
    let (ca, _) = n.user().await;
    let (st, _, msg) = raw(
        &ca,
        &encode_request(Method::Enqueue.id(), 9, &[0xff; 20]).unwrap(),
    )
    .await;
    assert_eq!(st, Status::BadRequest);
    assert!(msg.contains("protobuf"), "{msg}");
    assert_eq!(c.health().await.unwrap().status, "ok");
    n.node.stop().await;
}

#[tokio::test]
async fn unknown_methods_are_answered_not_reset() {
    let n = start().await;
    let (c, _) = n.user().await;
    for id in [
        999u16,
        0,
        65535,
        Method::UploadKeyPackage.id(),
        Method::RelayEnqueue.id(),
    ] {
        let (st, rid, msg) = raw(&c, &encode_request(id, 31, &[]).unwrap()).await;
        assert_eq!((st, rid), (Status::UnknownMethod, 31), "method {id}: {msg}");
    }
    assert_eq!(c.health().await.unwrap().status, "ok");
    n.node.stop().await;
}

#[tokio::test]
async fn calls_before_authentication_are_unauthorized() {
    let n = start().await;
    let c = n.client().await;
    let bob = Identity::generate().unwrap();
    assert_eq!(
        status(c.enqueue(&enqueue_req(&bob, b"x", None)).await.unwrap_err()),
        Status::Unauthorized
    );
    assert_eq!(
        status(c.fetch(&mailbox(&bob), 1).await.unwrap_err()),
        Status::Unauthorized
    );
    assert_eq!(
        status(c.upload_hybrid_key(&bob).await.unwrap_err()),
        Status::Unauthorized
    );
    assert_eq!(
        status(c.fetch_hybrid_keys(&[bob.public_key()]).await.unwrap_err()),
        Status::Unauthorized
    );
    // Nothing was stored.
    assert_eq!(c.health().await.unwrap().queue_depth, 0);
    n.node.stop().await;
}

#[tokio::test]
async fn someone_elses_mailbox_is_forbidden() {
    let n = start().await;
    let (a, alice) = n.user().await;
    let (_b, bob) = n.user().await;
    a.enqueue(&enqueue_req(&bob, b"for bob only", None))
        .await
        .unwrap();
    let mb = mailbox(&bob);
    assert_eq!(
        status(a.fetch(&mb, 10).await.unwrap_err()),
        Status::Forbidden
    );
    assert_eq!(
        status(a.peek(&mb, 10).await.unwrap_err()),
        Status::Forbidden
    );
    assert_eq!(
        status(
            a.fetch_wait(&mb, 10, Duration::from_millis(10))
                .await
                .unwrap_err()
        ),
        Status::Forbidden
    );
    assert_eq!(
        status(a.ack(&mb, 100).await.unwrap_err()),
        Status::Forbidden
    );
    // Nor may Alice publish a key in Bob's name.
    let e = a
        .call::<_, pb::UploadHybridKeyResponse>(
            Method::UploadHybridKey,
            &pb::UploadHybridKeyRequest {
                identity_key: bob.public_key().as_bytes().to_vec(),
                hybrid_public_key: alice.hybrid_public_key().as_bytes().to_vec(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(status(e), Status::Forbidden);
    assert_eq!(
        a.health().await.unwrap().queue_depth,
        1,
        "the attempted ack deleted nothing"
    );
    n.node.stop().await;
}

async fn challenge(c: &Client, id: &Identity) -> [u8; 32] {
    let r: pb::AuthChallengeResponse = c
        .call(
            Method::AuthChallenge,
            &pb::AuthChallengeRequest {
                identity_key: id.public_key().as_bytes().to_vec(),
            },
        )
        .await
        .unwrap();
    r.nonce.try_into().unwrap()
}

async fn respond(
    c: &Client,
    id: &Identity,
    sig: [u8; 64],
) -> Result<pb::AuthResponseResponse, ClientError> {
    c.call(
        Method::AuthResponse,
        &pb::AuthResponseRequest {
            identity_key: id.public_key().as_bytes().to_vec(),
            signature: sig.to_vec(),
        },
    )
    .await
}

#[tokio::test]
async fn replayed_relayed_and_missigned_challenge_responses_fail() {
    let n = start().await;
    let alice = Identity::generate().unwrap();
    let mallory = Identity::generate().unwrap();

    // No challenge asked for.
    let c = n.client().await;
    assert_eq!(
        status(respond(&c, &alice, [0; 64]).await.unwrap_err()),
        Status::Unauthorized
    );

    // Signed by the wrong key.
    let nonce = challenge(&c, &alice).await;
    let t = auth_transcript(&c.exporter().unwrap(), &nonce, &alice.public_key());
    assert_eq!(
        status(respond(&c, &alice, mallory.sign(&t)).await.unwrap_err()),
        Status::Unauthorized
    );
    // The failed attempt used the nonce up: the right signature over it is refused now.
    assert_eq!(
        status(respond(&c, &alice, alice.sign(&t)).await.unwrap_err()),
        Status::Unauthorized
    );

    // A correct proof works once; replaying it on the same connection does not.
    let nonce = challenge(&c, &alice).await;
    let t = auth_transcript(&c.exporter().unwrap(), &nonce, &alice.public_key());
    respond(&c, &alice, alice.sign(&t)).await.unwrap();
    assert_eq!(
        status(respond(&c, &alice, alice.sign(&t)).await.unwrap_err()),
        Status::Unauthorized
    );

    // Relayed: a signature made for another connection's TLS session does not verify here.
    let victim = n.client().await;
    let attacker = n.client().await;
    let nonce = challenge(&attacker, &alice).await;
    let relayed = auth_transcript(&victim.exporter().unwrap(), &nonce, &alice.public_key());
    assert_eq!(
        status(
            respond(&attacker, &alice, alice.sign(&relayed))
                .await
                .unwrap_err()
        ),
        Status::Unauthorized
    );
    assert_eq!(
        status(attacker.fetch(&mailbox(&alice), 1).await.unwrap_err()),
        Status::Unauthorized,
        "the connection stays unauthenticated"
    );

    // An identity key that is not a curve point.
    let d = n.client().await;
    let _ = challenge(&d, &alice).await;
    let e = d
        .call::<_, pb::AuthResponseResponse>(
            Method::AuthResponse,
            &pb::AuthResponseRequest {
                identity_key: vec![0xff; 32],
                signature: vec![0; 64],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(status(e), Status::Unauthorized);
    n.node.stop().await;
}

#[tokio::test]
async fn keys_of_the_wrong_length_are_bad_requests() {
    let n = start().await;
    let (a, alice) = n.user().await;
    let bob = Identity::generate().unwrap();
    let mut r = enqueue_req(&bob, b"x", None);
    r.recipient_key.pop();
    let e = a.enqueue(&r).await.unwrap_err();
    assert!(
        e.to_string().contains("recipient_key must be 32 bytes"),
        "{e}"
    );
    assert_eq!(status(e), Status::BadRequest);
    let mut r = enqueue_req(&bob, b"x", None);
    r.message_id = vec![1; 15];
    assert_eq!(status(a.enqueue(&r).await.unwrap_err()), Status::BadRequest);
    let mut r = enqueue_req(&bob, b"x", None);
    r.channel_id = vec![1; 17];
    assert_eq!(status(a.enqueue(&r).await.unwrap_err()), Status::BadRequest);
    let e = a
        .call::<_, pb::UploadHybridKeyResponse>(
            Method::UploadHybridKey,
            &pb::UploadHybridKeyRequest {
                identity_key: alice.public_key().as_bytes().to_vec(),
                hybrid_public_key: vec![0; 1215],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(status(e), Status::BadRequest);
    let e = a
        .call::<_, pb::FetchHybridKeysResponse>(
            Method::FetchHybridKeys,
            &pb::FetchHybridKeysRequest {
                identity_keys: vec![vec![1; 32], vec![2; 33]],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(status(e), Status::BadRequest);
    let c = n.client().await;
    let e = c
        .call::<_, pb::AuthResponseResponse>(
            Method::AuthResponse,
            &pb::AuthResponseRequest {
                identity_key: alice.public_key().as_bytes().to_vec(),
                signature: vec![0; 63],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(status(e), Status::BadRequest);
    assert_eq!(a.health().await.unwrap().queue_depth, 0);
    n.node.stop().await;
}

#[tokio::test]
async fn ttl_above_the_maximum_is_refused_with_the_limit() {
    let n = start_with(|c| c.max_ttl_secs = 3600).await;
    let (a, _) = n.user().await;
    let bob = Identity::generate().unwrap();
    let mut r = enqueue_req(&bob, b"x", None);
    r.ttl_secs = 3601;
    let e = a.enqueue(&r).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("exceeds this node's maximum of 3600"),
        "{e}"
    );
    assert_eq!(status(e), Status::BadRequest);
    r.ttl_secs = 3600;
    a.enqueue(&r).await.unwrap();
    n.node.stop().await;
}

#[tokio::test]
async fn full_quota_is_resource_exhausted_and_harms_nothing() {
    let n = start_with(|c| {
        c.store.max_recipient_messages = 3;
        c.store.max_total_bytes = 10 * 1024;
    })
    .await;
    let (a, _) = n.user().await;
    let (b, bob) = n.user().await;
    for i in 0..3u8 {
        a.enqueue(&enqueue_req(&bob, &[i; 100], None))
            .await
            .unwrap();
    }
    let e = a
        .enqueue(&enqueue_req(&bob, &[9; 100], None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("recipient message limit"), "{e}");
    match &e {
        ClientError::Status { retry_after_ms, .. } => assert!(*retry_after_ms > 0),
        _ => unreachable!(),
    }
    assert_eq!(status(e), Status::ResourceExhausted);
    // The global budget too.
    let carol = Identity::generate().unwrap();
    let e = a
        .enqueue(&enqueue_req(&carol, &[1; 20_000], None))
        .await
        .unwrap_err();
    assert_eq!(status(e), Status::ResourceExhausted);
    let got = b.fetch(&mailbox(&bob), 10).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.data[0]).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    b.ack(&mailbox(&bob), 3).await.unwrap();
    a.enqueue(&enqueue_req(&bob, &[9; 100], None))
        .await
        .unwrap();
    n.node.stop().await;
}

#[tokio::test]
async fn thousands_of_streams_are_bounded_and_others_are_still_served() {
    let n = start().await;
    let (hog, hog_id) = n.user().await;
    let hog = std::sync::Arc::new(hog);
    let mb = mailbox(&hog_id);
    let mut tasks = Vec::new();
    for _ in 0..3000 {
        let hog = std::sync::Arc::clone(&hog);
        tasks.push(tokio::spawn(async move {
            hog.fetch_wait(&mb, 1, Duration::from_millis(300)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Another client is served promptly while the hog's streams are answered.
    let other = n.client().await;
    let t = Instant::now();
    other.health().await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "health took {:?}",
        t.elapsed()
    );
    // Every stream is answered: the connection's eight long polls wait and time out, the
    // rest are refused at once.
    let (mut waited, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => waited += 1,
            Err(e) => {
                assert_eq!(status(e), Status::RateLimited);
                refused += 1;
            }
        }
    }
    assert!(waited >= 8, "{waited} waited");
    assert_eq!(waited + refused, 3000);
    n.node.stop().await;
}

#[tokio::test]
async fn stalled_requests_from_one_address_do_not_starve_another() {
    let n = start_with(|c| c.max_request_bytes_in_flight = 16 * 1024 * 1024).await;
    let attacker = n.client().await;
    let mut held = Vec::new();
    // Half a header on many streams holds nothing.
    for _ in 0..40 {
        let (mut s, r) = attacker.connection().open_bi().await.unwrap();
        s.write_all(&[0, 200, 0, 0, 0]).await.unwrap();
        held.push((s, r));
    }
    // Neither do bodies declared but never sent: only what arrives is counted.
    let header = |rid| {
        RequestHeader {
            method_id: Method::Enqueue.id(),
            request_id: rid,
            declared_len: 1024 * 1024,
        }
        .to_bytes()
    };
    for rid in 0..16 {
        let (mut s, r) = attacker.connection().open_bi().await.unwrap();
        s.write_all(&header(rid)).await.unwrap();
        s.write_all(&[0; 10]).await.unwrap();
        held.push((s, r));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A client from another address is served promptly, writes included; and so is the
    // attacker's own next request.
    let addr: std::net::SocketAddr = n.addr.parse().unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();
    let victim = Client::connect_on(&endpoint, &n.addr, &n.opts())
        .await
        .unwrap();
    assert_eq!(victim.connection().remote_address(), addr);
    let id = Identity::generate().unwrap();
    let t = Instant::now();
    victim.authenticate(&id).await.unwrap();
    victim
        .enqueue(&enqueue_req(&id, &[1u8; 1024], None))
        .await
        .unwrap();
    attacker.authenticate(&id).await.unwrap();
    attacker
        .enqueue(&enqueue_req(&id, &[2u8; 1024], None))
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "victim waited {:?}",
        t.elapsed()
    );
    drop(held);
    n.node.stop().await;
}
