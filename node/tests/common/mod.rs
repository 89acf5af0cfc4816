//! Helpers: a real node on loopback in a temporary data directory, and clients pinned to it.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use ferry_client::{Client, ConnectOptions, Identity, Trust};
use ferry_node::{NodeConfig, RunningNode};
use ferry_proto::qpq::v1 as pb;
use ferry_proto::types::MailboxAddr;

pub struct TestNode {
    pub node: RunningNode,
    pub dir: tempfile::TempDir,
    pub addr: String,
}

pub fn config(dir: &std::path::Path) -> NodeConfig {
    let mut cfg = NodeConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".into(),
        drain_timeout: Duration::from_secs(5),
        ..NodeConfig::default()
    };
    cfg.set_rate_limit(0);
    // Tests run in parallel on one machine: mesh on loopback, random port, no multicast.
    cfg.mesh.listen = "127.0.0.1:0".into();
    cfg.mesh.mdns = false;
    cfg
}

pub async fn start() -> TestNode {
    start_with(|_| {}).await
}

pub async fn start_with(f: impl FnOnce(&mut NodeConfig)) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    f(&mut cfg);
    let node = ferry_node::start(cfg).await.unwrap();
    let addr = node.local_addr.to_string();
    TestNode { node, dir, addr }
}

impl TestNode {
    /// The node's admin socket.
    pub fn node_admin(&self) -> std::path::PathBuf {
        self.dir.path().join("ferry.sock")
    }

    pub fn opts(&self) -> ConnectOptions {
        ConnectOptions::with_trust(Trust::Pinned(self.node.cert_fingerprint))
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.addr, &self.opts()).await.unwrap()
    }

    /// A new identity, authenticated, with its hybrid key published.
    pub async fn user(&self) -> (Client, Identity) {
        let id = Identity::generate().unwrap();
        let c = self.client().await;
        c.authenticate(&id).await.unwrap();
        c.upload_hybrid_key(&id).await.unwrap();
        (c, id)
    }
}

pub fn mailbox(id: &Identity) -> MailboxAddr {
    MailboxAddr::default_for(id.public_key())
}

pub fn enqueue_req(
    to: &Identity,
    payload: &[u8],
    message_id: Option<[u8; 16]>,
) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        recipient_key: to.public_key().as_bytes().to_vec(),
        payload: payload.to_vec(),
        channel_id: vec![],
        ttl_secs: 0,
        message_id: message_id.map(|m| m.to_vec()).unwrap_or_default(),
        sealed_sender: false,
        device_id: vec![],
    }
}

pub fn seqs(envs: &[pb::Envelope]) -> Vec<u64> {
    envs.iter().map(|e| e.seq).collect()
}

/// Polls `f` every 50 ms until it holds; fails the test after `timeout`.
pub async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> F,
) {
    let start = std::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` over plain HTTP/1.1; the whole response, headers included.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
