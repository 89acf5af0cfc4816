//! The `Batcher` against a qpq server without EnqueueMany: a minimal server on loopback that
//! answers Enqueue (200) and `UnknownMethod` to everything else, as another qpq v2 server or
//! an older Ferry node would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_client::{BatchOptions, Batcher, Client, ConnectOptions, Trust};
use ferry_proto::frame::{RequestHeader, encode_response, encode_response_msg};
use ferry_proto::limits::ALPN_QPQ;
use ferry_proto::qpq::v1 as pb;
use ferry_proto::types::Fingerprint;
use ferry_proto::{Method, Status};

#[derive(Default)]
struct Seen {
    enqueue: AtomicU64,
    enqueue_many: AtomicU64,
}

/// Starts the server; returns its address and certificate fingerprint.
fn plain_qpq_server(seen: Arc<Seen>) -> (quinn::Endpoint, Fingerprint) {
    let certified = rcgen::generate_simple_self_signed(vec!["ferry.node".to_string()]).unwrap();
    let cert = certified.cert.der().to_vec();
    let key = certified.signing_key.serialize_der();
    let fingerprint = Fingerprint::of(&cert);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )
        .unwrap();
    tls.alpn_protocols = vec![ALPN_QPQ.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let accept = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let conn = incoming.await.unwrap();
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let seen = Arc::clone(&seen);
                    tokio::spawn(async move {
                        let mut hdr = [0u8; RequestHeader::LEN];
                        recv.read_exact(&mut hdr).await.unwrap();
                        let h = RequestHeader::from_bytes(&hdr);
                        let mut body = vec![0u8; h.payload_len().unwrap()];
                        recv.read_exact(&mut body).await.unwrap();
                        let frame = if h.method_id == Method::Enqueue.id() {
                            let n = seen.enqueue.fetch_add(1, Ordering::Relaxed) + 1;
                            let resp = pb::EnqueueResponse {
                                seq: n,
                                delivery_proof: vec![],
                                duplicate: false,
                            };
                            encode_response_msg(Status::Ok, h.request_id, &resp).unwrap()
                        } else {
                            if h.method_id == Method::EnqueueMany.id() {
                                seen.enqueue_many.fetch_add(1, Ordering::Relaxed);
                            }
                            encode_response(Status::UnknownMethod, h.request_id, &[]).unwrap()
                        };
                        send.write_all(&frame).await.unwrap();
                        send.finish().unwrap();
                    });
                }
            });
        }
    });
    (endpoint, fingerprint)
}

#[tokio::test]
async fn batcher_falls_back_to_enqueue_on_a_server_without_enqueue_many() {
    let seen = Arc::new(Seen::default());
    let (server, fp) = plain_qpq_server(Arc::clone(&seen));
    let addr = server.local_addr().unwrap().to_string();
    let client = Client::connect(&addr, &ConnectOptions::with_trust(Trust::Pinned(fp)))
        .await
        .unwrap();
    let batcher = Batcher::new(Arc::new(client), BatchOptions::default());
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let req = pb::EnqueueRequest {
            recipient_key: vec![7; 32],
            payload: i.to_be_bytes().to_vec(),
            ..Default::default()
        };
        let batcher = batcher.clone();
        sends.spawn(async move { batcher.enqueue(req).await });
    }
    let mut seqs = Vec::new();
    while let Some(r) = sends.join_next().await {
        seqs.push(r.unwrap().unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>(), "each answered once");
    assert_eq!(seen.enqueue.load(Ordering::Relaxed), 200);
    // Only batches sent before the first refusal came back were tried as EnqueueMany:
    // at most one per batch slot.
    let tried = seen.enqueue_many.load(Ordering::Relaxed);
    assert!(
        (1..=4).contains(&tried),
        "{tried} EnqueueMany requests against a server without it"
    );
    // Later sends go straight to Enqueue.
    let r = batcher
        .enqueue(pb::EnqueueRequest {
            recipient_key: vec![7; 32],
            payload: b"later".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.seq, 201);
    assert_eq!(seen.enqueue_many.load(Ordering::Relaxed), tried);
}
