//! The mesh driver with real stores (redb files) and real links on loopback, over both
//! transports and between them: custody moves hop by hop, users' mail follows them, garbage
//! from a peer costs that peer its link and nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use ferry_mesh::core::{Config, PeerSource};
use ferry_mesh::driver::iroh_transport::IrohTransport;
use ferry_mesh::driver::quic_transport::QuicTransport;
use ferry_mesh::driver::{MeshEvent, MeshHandle, Transport};
use ferry_mesh::wire::Claim;
use ferry_proto::transcript::presence_transcript;
use ferry_proto::types::{
    ChannelId, DeviceId, HybridPublicKey, IdentityKey, MailboxAddr, MessageId, NodeId,
};
use ferry_store::{BundleRecord, CustodyOutcome, Store, StoreConfig};
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Iroh,
    Quic,
}

struct Node {
    mesh: MeshHandle,
    events: UnboundedReceiver<MeshEvent>,
    store: Store,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn key(seed: u8) -> [u8; 32] {
    [seed; 32]
}

async fn node(kind: Kind, seed: u8) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db.redb"), StoreConfig::default()).unwrap();
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let transport: Arc<dyn Transport> = match kind {
        Kind::Iroh => Arc::new(IrohTransport::bind(key(seed), bind).await.unwrap()),
        Kind::Quic => Arc::new(QuicTransport::bind(key(seed), bind).unwrap()),
    };
    let me = transport.node_id();
    let mut cfg = Config::new(me);
    cfg.seed = u64::from(seed);
    let (mesh, events) = MeshHandle::start(cfg, Arc::new(store.clone()), transport, 16)
        .await
        .unwrap();
    let addr = mesh.local_addrs()[0];
    Node {
        mesh,
        events,
        store,
        addr,
        _dir: dir,
    }
}

fn link(a: &Node, b: &Node) {
    a.mesh
        .discovered(b.mesh.node_id(), &[b.addr], PeerSource::Static);
}

struct User {
    key: SigningKey,
}

impl User {
    fn new(seed: u8) -> Self {
        Self {
            key: SigningKey::from_bytes(&[seed; 32]),
        }
    }

    fn id(&self) -> IdentityKey {
        IdentityKey::from_array(self.key.verifying_key().to_bytes())
    }

    fn hybrid(&self) -> HybridPublicKey {
        HybridPublicKey::from_parts(&[self.key.to_bytes()[0]; 32], &[7u8; 1184])
    }

    fn claim(&self, node: NodeId, timestamp_ms: u64) -> Claim {
        let hybrid = self.hybrid();
        let t = presence_transcript(&self.id(), &node, timestamp_ms, &hybrid);
        Claim {
            user: self.id(),
            node,
            timestamp_ms,
            hybrid,
            signature: self.key.sign(&t).to_bytes(),
        }
    }

    fn mailbox(&self) -> MailboxAddr {
        MailboxAddr {
            recipient: self.id(),
            channel: ChannelId::default(),
            device: DeviceId::DEFAULT,
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn record(to: &User, n: u32) -> BundleRecord {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    let now = now_ms();
    BundleRecord {
        mailbox: to.mailbox(),
        message_id: MessageId::from_array(id),
        sender: None,
        received_at_ms: now,
        expires_at_ms: now + 3_600_000,
        hop_count: 0,
        hop_limit: 16,
        from: None,
        payload: n.to_be_bytes().to_vec(),
    }
}

async fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Payloads in the user's mailbox at `n`, in order.
fn inbox(n: &Node, u: &User) -> Vec<u32> {
    n.store
        .fetch(&u.mailbox(), 0, 10_000, usize::MAX, now_ms())
        .unwrap()
        .iter()
        .map(|m| u32::from_be_bytes(m.payload[..4].try_into().unwrap()))
        .collect()
}

async fn line_delivers(kinds: [Kind; 3]) {
    let a = node(kinds[0], 1).await;
    let b = node(kinds[1], 2).await;
    let c = node(kinds[2], 3).await;
    link(&a, &b);
    link(&c, &b);
    let bob = User::new(50);
    c.mesh
        .attach(bob.claim(c.mesh.node_id(), now_ms()))
        .await
        .unwrap();
    until("a route to bob", Duration::from_secs(20), || {
        a.mesh.presence().iter().any(|(u, _, _)| *u == bob.id())
            && !a.mesh.routes().is_empty()
            && a.mesh.routes().len() >= 2
    })
    .await;
    for n in 0..50 {
        assert_eq!(
            a.mesh.enqueue_remote(record(&bob, n)).await.unwrap(),
            CustodyOutcome::Stored
        );
    }
    until("50 messages at C", Duration::from_secs(20), || {
        inbox(&c, &bob).len() >= 50
    })
    .await;
    // A retry after the first was forwarded travels again and is refused by C's mailbox.
    a.mesh.enqueue_remote(record(&bob, 0)).await.unwrap();
    until("the retry refused", Duration::from_secs(20), || {
        a.store.stats().unwrap().custody_bundles == 0
    })
    .await;
    let mut got = inbox(&c, &bob);
    got.sort();
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    // Custody drains along the way once C acknowledged.
    until("custody drained", Duration::from_secs(20), || {
        a.store.stats().unwrap().custody_bundles == 0
            && b.store.stats().unwrap().custody_bundles == 0
    })
    .await;
    for n in [&a, &b, &c] {
        n.mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hops_over_iroh() {
    line_delivers([Kind::Iroh; 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hops_over_plain_quic() {
    line_delivers([Kind::Quic; 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lite_and_full_nodes_interoperate() {
    line_delivers([Kind::Iroh, Kind::Quic, Kind::Iroh]).await;
    line_delivers([Kind::Quic, Kind::Iroh, Kind::Quic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_follows_a_user_who_moves_and_waits_for_one_who_is_unknown() {
    let a = node(Kind::Quic, 11).await;
    let mut b = node(Kind::Quic, 12).await;
    link(&a, &b);
    let carol = User::new(60);
    // Nobody knows carol yet: held in custody at A.
    for n in 0..5 {
        a.mesh.enqueue_remote(record(&carol, n)).await.unwrap();
    }
    // A retry while the first is still held is recognised.
    assert_eq!(
        a.mesh.enqueue_remote(record(&carol, 4)).await.unwrap(),
        CustodyOutcome::Duplicate
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.store.stats().unwrap().custody_bundles, 5);
    // She attaches at B: the held mail goes there.
    b.mesh
        .attach(carol.claim(b.mesh.node_id(), now_ms()))
        .await
        .unwrap();
    until("held mail delivered at B", Duration::from_secs(20), || {
        inbox(&b, &carol).len() == 5
    })
    .await;
    // The node hears of it (to wake long polls and push).
    let ev = tokio::time::timeout(Duration::from_secs(10), b.events.recv())
        .await
        .unwrap();
    assert!(matches!(ev, Some(MeshEvent::Delivered(_))), "{ev:?}");
    // She moves to A (a newer claim). Mail left unread at B follows her.
    a.mesh
        .attach(carol.claim(a.mesh.node_id(), now_ms() + 1))
        .await
        .unwrap();
    until("mail followed carol to A", Duration::from_secs(20), || {
        inbox(&a, &carol).len() == 5 && inbox(&b, &carol).is_empty()
    })
    .await;
    // A stale claim (older timestamp) for B is refused by the core.
    let stale = carol.claim(b.mesh.node_id(), now_ms() - 60_000);
    assert!(b.mesh.attach(stale).await.is_err());
    for n in [&a, &b] {
        n.mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_quic_refuses_a_peer_that_is_not_the_node_dialled() {
    let a = node(Kind::Quic, 21).await;
    let b = node(Kind::Quic, 22).await;
    // Tell A that B's address belongs to some other node id.
    let impostor = NodeId::from_array([9u8; 32]);
    a.mesh.discovered(impostor, &[b.addr], PeerSource::Static);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        a.mesh.peers().iter().all(|p| !p.linked),
        "{:?}",
        a.mesh.peers()
    );
    for n in [&a, &b] {
        n.mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_known_only_by_address_is_identified() {
    use ferry_mesh::driver::quic_transport::identify;
    let a = node(Kind::Iroh, 41).await;
    let b = node(Kind::Quic, 42).await;
    assert_eq!(identify(key(99), a.addr).await.unwrap(), a.mesh.node_id());
    assert_eq!(identify(key(99), b.addr).await.unwrap(), b.mesh.node_id());
    // Nothing listening: a clear error, soon.
    let dead: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let e = tokio::time::timeout(Duration::from_secs(15), identify(key(99), dead))
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
    for n in [&a, &b] {
        n.mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_garbage_is_dropped_and_kept_away_while_others_carry_on() {
    use tokio::io::AsyncWriteExt;
    let a = node(Kind::Iroh, 51).await;
    let b = node(Kind::Quic, 52).await;
    link(&b, &a);
    until("a and b linked", Duration::from_secs(20), || {
        a.mesh.peers().iter().any(|p| p.linked)
    })
    .await;
    let evil = QuicTransport::bind(key(53), "127.0.0.1:0".parse().unwrap()).unwrap();
    // A frame that is not a link message.
    let l = evil.connect(a.mesh.node_id(), vec![a.addr]).await.unwrap();
    let mut w = l.open_uni().await.unwrap();
    w.write_all(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    w.flush().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), l.closed())
        .await
        .expect("the node closes the link");
    assert_eq!(a.mesh.stats().malformed, 1);
    // Coming back right away: the handshake completes, the node closes it again.
    let l = evil.connect(a.mesh.node_id(), vec![a.addr]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), l.closed())
        .await
        .expect("a penalised peer is not taken back");
    // A declared frame length over the limit: dropped before anything is read.
    let evil2 = QuicTransport::bind(key(54), "127.0.0.1:0".parse().unwrap()).unwrap();
    let l = evil2.connect(a.mesh.node_id(), vec![a.addr]).await.unwrap();
    let mut w = l.open_uni().await.unwrap();
    w.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    w.flush().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), l.closed())
        .await
        .expect("the node closes the link");
    assert_eq!(a.mesh.stats().malformed, 2);
    // The good link is untouched and carries mail.
    let dan = User::new(80);
    b.mesh
        .attach(dan.claim(b.mesh.node_id(), now_ms()))
        .await
        .unwrap();
    until("dan's presence at a", Duration::from_secs(20), || {
        a.mesh.is_remote(&dan.id())
    })
    .await;
    a.mesh.enqueue_remote(record(&dan, 1)).await.unwrap();
    until(
        "delivered over the good link",
        Duration::from_secs(20),
        || inbox(&b, &dan) == vec![1],
    )
    .await;
    for n in [&a, &b] {
        n.mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custody_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let dave = User::new(70);
    {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        let t: Arc<dyn Transport> =
            Arc::new(QuicTransport::bind(key(31), "127.0.0.1:0".parse().unwrap()).unwrap());
        let cfg = Config::new(t.node_id());
        let (mesh, _ev) = MeshHandle::start(cfg, Arc::new(store.clone()), t, 16)
            .await
            .unwrap();
        for n in 0..3 {
            mesh.enqueue_remote(record(&dave, n)).await.unwrap();
        }
        mesh.shutdown().await;
        store.close();
    }
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let t: Arc<dyn Transport> =
        Arc::new(QuicTransport::bind(key(31), "127.0.0.1:0".parse().unwrap()).unwrap());
    let me = t.node_id();
    let (mesh, _ev) = MeshHandle::start(Config::new(me), Arc::new(store.clone()), t, 16)
        .await
        .unwrap();
    assert_eq!(mesh.sizes().custody, 3, "{:?}", mesh.sizes());
    mesh.attach(dave.claim(me, now_ms())).await.unwrap();
    let got = store
        .fetch(&dave.mailbox(), 0, 100, usize::MAX, now_ms())
        .unwrap();
    assert_eq!(got.len(), 3);
    mesh.shutdown().await;
}

/// A node that restarts redials its neighbours from before at once, though they never
/// discovered it (it had dialled them; they know it only as an incoming link): over both
/// transports, and from one to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_redials_its_neighbours_from_before() {
    for (ka, kb) in [
        (Kind::Iroh, Kind::Iroh),
        (Kind::Quic, Kind::Quic),
        (Kind::Iroh, Kind::Quic),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let peers_file = dir.path().join("mesh-peers");
        let b = node(kb, 41).await;
        let start = |kind: Kind| {
            let dir = dir.path().to_path_buf();
            let peers_file = peers_file.clone();
            async move {
                let store = Store::open(dir.join("db.redb"), StoreConfig::default()).unwrap();
                let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
                let t: Arc<dyn Transport> = match kind {
                    Kind::Iroh => Arc::new(IrohTransport::bind(key(40), bind).await.unwrap()),
                    Kind::Quic => Arc::new(QuicTransport::bind(key(40), bind).unwrap()),
                };
                let opts = ferry_mesh::driver::Options {
                    hop_limit: 16,
                    peers_file: Some(peers_file),
                };
                let (mesh, _ev) = MeshHandle::start_with(
                    Config::new(t.node_id()),
                    Arc::new(store.clone()),
                    t,
                    opts,
                )
                .await
                .unwrap();
                (mesh, store)
            }
        };
        let (a, store) = start(ka).await;
        let a_id = a.node_id();
        // a dials b; b has a only as an incoming link.
        a.discovered(b.mesh.node_id(), &[b.addr], PeerSource::Static);
        until("linked", Duration::from_secs(10), || {
            b.mesh.peers().iter().any(|p| p.node == a_id && p.linked)
        })
        .await;
        until("kept for a restart", Duration::from_secs(5), || {
            std::fs::read_to_string(&peers_file)
                .is_ok_and(|t| t.contains(&b.mesh.node_id().to_hex()))
        })
        .await;
        a.shutdown().await;
        store.close();
        until("unlinked", Duration::from_secs(15), || {
            !b.mesh.peers().iter().any(|p| p.node == a_id && p.linked)
        })
        .await;
        // Back, with no discovery at all: it redials b from what it kept.
        let t = Instant::now();
        let (a, store) = start(ka).await;
        until("relinked", Duration::from_secs(5), || {
            b.mesh.peers().iter().any(|p| p.node == a_id && p.linked)
        })
        .await;
        eprintln!(
            "{ka:?} -> {kb:?}: relinked {:?} after the restart",
            t.elapsed()
        );
        a.shutdown().await;
        store.close();
        b.mesh.shutdown().await;
    }
}
