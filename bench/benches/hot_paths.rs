//! Micro-benchmarks of the hot paths: qpq frame encode/decode, a durable store enqueue (one
//! group commit) and 64 concurrent ones (one commit for all), opening a store that holds
//! 100,000 messages (it counts them), hybrid envelope seal/open, and routing decisions in the
//! mesh core. `cargo bench -p ferry-bench --bench hot_paths`.

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ferry_client::{Identity, envelope};
use ferry_mesh::core::{Config, Mesh};
use ferry_mesh::wire::{Hello, LinkMsg, RouteEntry};
use ferry_proto::frame;
use ferry_proto::limits::{MAX_MESSAGE_LEN, MESH_PROTOCOL_VERSION};
use ferry_proto::method::ids::ENQUEUE;
use ferry_proto::qpq::v1 as pb;
use ferry_proto::types::{IdentityKey, MailboxAddr, MessageId, NodeId};
use ferry_store::{NewMessage, Store, StoreConfig};
use prost::Message;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn frames(c: &mut Criterion) {
    let req = pb::EnqueueRequest {
        recipient_key: vec![7; 32],
        payload: vec![0x5a; 256],
        channel_id: vec![],
        ttl_secs: 3600,
        message_id: vec![1; 16],
        sealed_sender: false,
        device_id: vec![],
    };
    let bytes = frame::encode_request_msg(ENQUEUE, 1, &req).expect("encodes");
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode Enqueue (256 B payload)", |b| {
        b.iter(|| frame::encode_request_msg(ENQUEUE, 1, black_box(&req)))
    });
    g.bench_function("decode Enqueue (256 B payload)", |b| {
        b.iter(|| {
            let f = frame::decode_request(black_box(&bytes)).expect("decodes");
            pb::EnqueueRequest::decode(f.payload).expect("decodes")
        })
    });
    g.finish();
}

fn store(c: &mut Criterion) {
    // On disk (the benchmark machine's /var/tmp), never tmpfs: the fsync is the point.
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench-store")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    // Quotas out of the way: this measures commits, not refusals.
    let config = StoreConfig {
        max_total_bytes: u64::MAX,
        max_recipient_messages: u64::MAX,
        max_recipient_bytes: u64::MAX,
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path().join("bench.redb"), config).expect("opens");
    let mailbox = MailboxAddr::default_for(IdentityKey::from_array([3; 32]));
    let mut n = 0u64;
    let mut message = move || {
        n += 1;
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&n.to_be_bytes());
        let now = now_ms();
        NewMessage {
            mailbox,
            message_id: MessageId::from_array(id),
            sender: None,
            payload: vec![0x5a; 256],
            enqueued_at_ms: now,
            expires_at_ms: now + 3_600_000,
        }
    };
    let mut g = c.benchmark_group("store");
    g.sample_size(30);
    g.throughput(Throughput::Elements(1));
    g.bench_function("enqueue 1, durable (one group commit)", |b| {
        b.iter_batched(
            &mut message,
            |m| store.enqueue(m).wait().expect("stored"),
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("enqueue 64 concurrently, durable (group commit)", |b| {
        b.iter_batched(
            || (0..64).map(|_| message()).collect::<Vec<_>>(),
            |ms| {
                let pending: Vec<_> = ms.into_iter().map(|m| store.enqueue(m)).collect();
                for p in pending {
                    p.wait().expect("stored");
                }
            },
            BatchSize::SmallInput,
        )
    });
    // Fan-in as the node sees it: EnqueueMany sets from several connections at once, the
    // consumer acknowledging what is stored. The writer's work per message, mostly.
    g.throughput(Throughput::Elements(8 * 64));
    g.bench_function(
        "enqueue 8 sets of 64 concurrently (EnqueueMany), then ack them",
        |b| {
            b.iter_batched(
                || {
                    (0..8)
                        .map(|_| (0..64).map(|_| message()).collect::<Vec<_>>())
                        .collect::<Vec<_>>()
                },
                |sets| {
                    let pending: Vec<_> =
                        sets.into_iter().map(|s| store.enqueue_batch(s)).collect();
                    let mut last = 0;
                    for p in pending {
                        last = last.max(
                            p.wait()
                                .expect("stored")
                                .iter()
                                .map(|e| e.seq)
                                .max()
                                .unwrap_or(0),
                        );
                    }
                    store.ack(mailbox, last).wait().expect("acked")
                },
                BatchSize::SmallInput,
            )
        },
    );
    g.finish();
}

/// Opening counts what is stored (schema 2 keeps quota counts in memory): the cost of a
/// restart with a full store. The file is in the page cache here; on a router, add reading it
/// from flash once.
fn store_open(c: &mut Criterion) {
    const MESSAGES: u64 = 100_000;
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench-open")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    let path = dir.path().join("full.redb");
    let store = Store::open(&path, StoreConfig::default()).expect("opens");
    let now = now_ms();
    let mut n = 0u64;
    while n < MESSAGES {
        let batch: Vec<NewMessage> = (0..1024.min(MESSAGES - n))
            .map(|i| {
                let k = n + i;
                let mut id = [0u8; 16];
                id[8..].copy_from_slice(&k.to_be_bytes());
                NewMessage {
                    // 100 recipients with 1,000 messages each.
                    mailbox: MailboxAddr::default_for(IdentityKey::from_array(
                        [(k % 100) as u8; 32],
                    )),
                    message_id: MessageId::from_array(id),
                    sender: None,
                    payload: vec![0x5a; 256],
                    enqueued_at_ms: now,
                    expires_at_ms: now + 86_400_000,
                }
            })
            .collect();
        n += batch.len() as u64;
        store.enqueue_batch(batch).wait().expect("stored");
    }
    store.close();
    let mut g = c.benchmark_group("store");
    g.sample_size(10);
    g.throughput(Throughput::Elements(MESSAGES));
    g.bench_function("open a store holding 100,000 messages (counts them)", |b| {
        b.iter(|| {
            let s = Store::open(&path, StoreConfig::default()).expect("opens");
            assert_eq!(s.depth().expect("depth"), MESSAGES);
            s.close();
        })
    });
    g.finish();
}

fn envelopes(c: &mut Criterion) {
    let me = Identity::generate().expect("identity");
    let hybrid = me.hybrid_public_key();
    let text = vec![0x41u8; 256];
    let sealed = envelope::seal(&hybrid, &text).expect("seals");
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(1));
    g.bench_function("seal 256 B (X25519 + ML-KEM-768)", |b| {
        b.iter(|| envelope::seal(black_box(&hybrid), black_box(&text)))
    });
    g.bench_function("open 256 B (X25519 + ML-KEM-768)", |b| {
        b.iter(|| envelope::open(black_box(&me), black_box(&sealed)))
    });
    g.finish();
}

fn node(i: u32) -> NodeId {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&i.to_be_bytes());
    b[31] = 0xee;
    NodeId::from_array(b)
}

fn hello(node: NodeId) -> LinkMsg {
    LinkMsg::Hello(Hello {
        version: MESH_PROTOCOL_VERSION,
        node_id: node,
        client_port: 0,
        client_cert_fingerprint: Vec::new(),
        max_bundle_bytes: MAX_MESSAGE_LEN as u32,
        role: "edge".into(),
    })
}

fn routing(c: &mut Criterion) {
    const DESTS: u32 = 1000;
    let me = NodeId::from_array([1; 32]);
    let (a, b) = (NodeId::from_array([2; 32]), NodeId::from_array([3; 32]));
    let mut cfg = Config::new(me);
    cfg.max_nodes = 4096;
    let mut mesh = Mesh::new(cfg, 0);
    for p in [a, b] {
        mesh.handle_link_up(0, p, None);
        mesh.handle_message(0, p, hello(p));
    }
    let table = |seqno: u32, metric: u16| {
        LinkMsg::Routes(
            (0..DESTS)
                .map(|i| RouteEntry {
                    hub: false,
                    node: node(i),
                    seqno,
                    metric,
                })
                .collect(),
        )
    };
    mesh.handle_message(1, a, table(1, 3));
    mesh.handle_message(1, b, table(1, 4));
    while mesh.poll_output().is_some() {}
    let mut g = c.benchmark_group("routing");
    g.throughput(Throughput::Elements(u64::from(DESTS)));
    g.bench_function("next hop for 1,000 destinations", |bch| {
        bch.iter(|| {
            (0..DESTS)
                .filter(|i| mesh.next_hop(&node(*i)).is_some())
                .count()
        })
    });
    let mut seqno = 1;
    g.bench_function(
        "route update for 1,000 destinations (new seqno, switch next hop)",
        |bch| {
            bch.iter(|| {
                seqno += 1;
                let (from, metric) = if seqno % 2 == 0 { (b, 2) } else { (a, 2) };
                mesh.handle_message(u64::from(seqno), from, table(seqno, metric));
                while mesh.poll_output().is_some() {}
            })
        },
    );
    g.finish();
}

criterion_group!(benches, frames, store, store_open, envelopes, routing);
criterion_main!(benches);
