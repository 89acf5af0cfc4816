//! The `ferry` binary as operators and users run it: signals, kill -9, certificate pinning,
//! the command-line client, and a disk that fills up.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry_client::{Client, ClientError, ConnectOptions, Identity, Trust};
use ferry_proto::Status;
use ferry_proto::types::{Fingerprint, MailboxAddr};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

struct NodeProc {
    child: Child,
    addr: String,
    fingerprint: Fingerprint,
    _log: mpsc::Receiver<String>,
}

impl NodeProc {
    // The child is owned by the returned NodeProc, whose Drop kills and waits for it.
    #[allow(clippy::zombie_processes)]
    fn spawn(cmd: &mut Command) -> NodeProc {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferry");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("node did not start in time");
            if line.contains("accepting QUIC connections") {
                let field = |k: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .unwrap()
                        .to_string()
                };
                return NodeProc {
                    addr: field("addr="),
                    fingerprint: field("fingerprint=").parse().unwrap(),
                    child,
                    _log: rx,
                };
            }
        }
    }

    fn start(dir: &Path, listen: &str) -> NodeProc {
        Self::spawn(
            Command::new(FERRY)
                .args([
                    "node",
                    "--listen",
                    listen,
                    "--rate-limit",
                    "0",
                    "--mesh-listen",
                    "127.0.0.1:0",
                    "--no-mdns",
                    "--data-dir",
                ])
                .arg(dir),
        )
    }

    fn opts(&self) -> ConnectOptions {
        ConnectOptions::with_trust(Trust::Pinned(self.fingerprint))
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "node did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A first start killed with SIGKILL at any moment leaves a data directory that the next start
/// opens. Every fsync of the first start is slowed to 30 ms (strace's fault injection), so that
/// kills 0 to 500 ms in land in each step of it: the certificate staged, the key in place but
/// not yet the certificate, the database file half made, the mesh key, the log.
#[test]
fn a_first_start_killed_at_any_moment_starts_the_next_time() {
    use std::os::unix::process::CommandExt;
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("SKIPPED: needs strace (apt install strace) to slow the first start down");
        return;
    }
    let mut states = std::collections::BTreeSet::new();
    for delay_ms in (0..500u64).step_by(10) {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("strace")
            .args(["-f", "-o", "/dev/null", "-e", "trace=fsync,fdatasync"])
            .args(["-e", "inject=fsync,fdatasync:delay_exit=30000", FERRY])
            .args([
                "node",
                "--listen",
                "127.0.0.1:0",
                "--mesh-listen",
                "127.0.0.1:0",
                "--no-mdns",
                "--data-dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // The whole group: strace and the node under it.
        Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", child.id())])
            .status()
            .unwrap();
        child.wait().unwrap();
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        states.insert(files.join(" "));
        let node = std::panic::catch_unwind(|| NodeProc::start(dir.path(), "127.0.0.1:0"));
        assert!(
            node.is_ok(),
            "killed {delay_ms} ms into its first start, leaving {files:?}: the next start failed"
        );
    }
    // The kills met the directory in many states of its making.
    eprintln!("states the kills left: {states:#?}");
    assert!(states.len() >= 5, "{states:#?}");
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProc::start(dir.path(), "127.0.0.1:0");
    let c = Client::connect(&node.addr, &node.opts()).await.unwrap();
    let id = Identity::generate().unwrap();
    c.authenticate(&id).await.unwrap();
    let mb = MailboxAddr::default_for(id.public_key());
    let poll = tokio::spawn(async move { c.fetch_wait(&mb, 1, Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.signal("-TERM");
    let status = node.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
    // The long poll was answered (empty) before the node went away, or the connection closed.
    let _ = poll.await.unwrap();
}

/// A node killed with SIGKILL while clients write: every acknowledged message is there after
/// the restart, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let alice = Identity::generate().unwrap();
    let bob = Identity::generate().unwrap();
    let mut acked: std::collections::HashMap<[u8; 16], u64> = std::collections::HashMap::new();
    let mut addr = "127.0.0.1:0".to_string();
    for cycle in 0..5u8 {
        let node = NodeProc::start(dir.path(), &addr);
        addr = node.addr.clone();
        let c = std::sync::Arc::new(Client::connect(&node.addr, &node.opts()).await.unwrap());
        c.authenticate(&alice).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let writer = {
            let c = std::sync::Arc::clone(&c);
            let to = bob.public_key();
            tokio::spawn(async move {
                let mut n = 0u32;
                let mut set = tokio::task::JoinSet::new();
                loop {
                    while set.len() < 32 {
                        n += 1;
                        let mut id = [cycle; 16];
                        id[12..].copy_from_slice(&n.to_be_bytes());
                        let c = std::sync::Arc::clone(&c);
                        let tx = tx.clone();
                        let req = ferry_proto::qpq::v1::EnqueueRequest {
                            recipient_key: to.as_bytes().to_vec(),
                            payload: id.to_vec(),
                            message_id: id.to_vec(),
                            ..Default::default()
                        };
                        set.spawn(async move {
                            if let Ok(r) = c.enqueue(&req).await {
                                let _ = tx.send((id, r.seq));
                            }
                        });
                    }
                    if set.join_next().await.is_none() {
                        break;
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(150 + 70 * u64::from(cycle))).await;
        node.signal("-KILL");
        drop(node);
        writer.abort();
        let _ = writer.await;
        while let Ok((id, seq)) = rx.try_recv() {
            assert!(acked.insert(id, seq).is_none());
        }
    }
    assert!(
        acked.len() > 100,
        "too few writes acknowledged: {}",
        acked.len()
    );
    let node = NodeProc::start(dir.path(), &addr);
    let c = Client::connect(&node.addr, &node.opts()).await.unwrap();
    c.authenticate(&bob).await.unwrap();
    let mut seen = std::collections::HashMap::new();
    loop {
        let page = c
            .fetch(&MailboxAddr::default_for(bob.public_key()), 1024)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        for e in page {
            let id: [u8; 16] = e.message_id.clone().try_into().unwrap();
            assert_eq!(e.data, id.to_vec(), "payload intact");
            assert!(seen.insert(id, e.seq).is_none(), "message delivered twice");
        }
    }
    for (id, seq) in &acked {
        assert_eq!(
            seen.get(id),
            Some(seq),
            "acknowledged message {id:?} lost or renumbered"
        );
    }
    eprintln!(
        "{} acknowledged messages over 5 kill -9 cycles, all present once ({} stored)",
        acked.len(),
        seen.len()
    );
}

#[tokio::test]
async fn a_changed_certificate_is_refused_with_a_clear_message() {
    let known = tempfile::tempdir().unwrap();
    let known_nodes = known.path().join("known_nodes");
    let trust = ConnectOptions::with_trust(Trust::KnownNodes(known_nodes.clone()));
    let dir1 = tempfile::tempdir().unwrap();
    let node = NodeProc::start(dir1.path(), "127.0.0.1:0");
    let addr = node.addr.clone();
    // Many first connections at once (a program opening several): all get in, and the node
    // is recorded once, in whole lines.
    let many = known.path().join("known_nodes_many");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (addr, trust) = (
            addr.clone(),
            ConnectOptions::with_trust(Trust::KnownNodes(many.clone())),
        );
        set.spawn(async move { Client::connect(&addr, &trust).await });
    }
    while let Some(c) = set.join_next().await {
        c.unwrap().unwrap().close().await;
    }
    assert_eq!(
        std::fs::read_to_string(&many).unwrap(),
        format!("{addr} {}\n", node.fingerprint)
    );
    // First use: pinned.
    Client::connect(&addr, &trust).await.unwrap().close().await;
    let pinned = std::fs::read_to_string(&known_nodes).unwrap();
    assert_eq!(pinned.trim(), format!("{addr} {}", node.fingerprint));
    // Same node again: accepted.
    Client::connect(&addr, &trust).await.unwrap().close().await;
    drop(node);
    // Another node (new certificate) on the same address: refused.
    let dir2 = tempfile::tempdir().unwrap();
    let other = NodeProc::start(dir2.path(), &addr);
    let err = Client::connect(&addr, &trust).await.unwrap_err();
    match &err {
        ClientError::CertificateChanged {
            expected,
            presented,
            ..
        } => {
            assert_ne!(expected, presented);
            assert_eq!(*presented, other.fingerprint);
        }
        e => panic!("expected CertificateChanged, got {e}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("has changed") && text.contains("known_nodes"),
        "{text}"
    );
    // The command line says the same.
    let out = Command::new(FERRY)
        .args(["status", "--node", &addr, "--known-nodes"])
        .arg(&known_nodes)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has changed"));
}

/// `ferry inbox --follow` whose node is killed with SIGKILL and started again (a router that
/// lost power): the restarted node resets the client's old connection on its next keep-alive,
/// and the client reconnects and shows what was sent after the restart within seconds (it hung
/// for five minutes, until its idle timeout).
#[test]
fn inbox_follow_survives_its_node_being_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let node = NodeProc::start(&data, "127.0.0.1:0");
    let addr = node.addr.clone();
    let cfg = dir.path().join("cfg");
    let (a, b) = (cfg.join("alice.json"), cfg.join("bob.json"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    ferry(&cfg, &["id", "new", "--out", a]);
    let bob: serde_json::Value =
        serde_json::from_str(&ferry(&cfg, &["id", "new", "--out", b, "--json"])).unwrap();
    let to = bob["public_key"].as_str().unwrap().to_string();
    let mut follow = Command::new(FERRY)
        .env("XDG_CONFIG_HOME", &cfg)
        .args(["inbox", "--follow", "--json", "--node", &addr, "--id", b])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    ferry(
        &cfg,
        &["send", "--node", &addr, "--id", a, "--to", &to, "before"],
    );
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("first message");
    assert!(line.contains("before"), "{line}");
    // Power cut: SIGKILL, no goodbye on the connection; back on the same port.
    drop(node);
    let node = NodeProc::start(&data, &addr);
    let restarted = Instant::now();
    ferry(
        &cfg,
        &["send", "--node", &addr, "--id", a, "--to", &to, "after"],
    );
    // Within the client's keep-alive (2 s) and a reconnect: well before its idle timeout
    // (10 s), which is all it had without the restarted node's reset.
    let line = rx
        .recv_timeout(Duration::from_secs(8))
        .expect("the follower shows what was sent after the restart");
    assert!(line.contains("after"), "{line}");
    eprintln!("shown {:?} after the restart", restarted.elapsed());
    let _ = follow.kill();
    let _ = follow.wait();
    drop(node);
}

fn ferry(cfg: &Path, args: &[&str]) -> String {
    let out = Command::new(FERRY)
        .env("XDG_CONFIG_HOME", cfg)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_terminal_demo() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("node"), "127.0.0.1:0");
    let cfg = dir.path().join("cfg");
    let alice = cfg.join("alice.json");
    let bob = cfg.join("bob.json");
    let a = alice.to_str().unwrap();
    let b = bob.to_str().unwrap();
    ferry(&cfg, &["id", "new", "--out", a]);
    let bob_id: serde_json::Value =
        serde_json::from_str(&ferry(&cfg, &["id", "new", "--out", b, "--json"])).unwrap();
    let shown: serde_json::Value =
        serde_json::from_str(&ferry(&cfg, &["id", "show", "--id", b, "--json"])).unwrap();
    assert_eq!(shown["public_key"], bob_id["public_key"]);
    assert!(
        shown["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("SHA256:")
    );
    // Bob connects once so his key is published, then follows his inbox.
    assert_eq!(ferry(&cfg, &["inbox", "--node", &node.addr, "--id", b]), "");
    let mut follow = Command::new(FERRY)
        .env("XDG_CONFIG_HOME", &cfg)
        .args([
            "inbox", "--follow", "--json", "--node", &node.addr, "--id", b,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let to = bob_id["fingerprint"].as_str().unwrap();
    let sent = ferry(
        &cfg,
        &[
            "send",
            "--node",
            &node.addr,
            "--id",
            a,
            "--to",
            to,
            "--ttl",
            "1h",
            "hello from alice",
        ],
    );
    assert!(sent.starts_with("sent "), "{sent}");
    let to_key = bob_id["public_key"].as_str().unwrap();
    ferry(
        &cfg,
        &[
            "send", "--node", &node.addr, "--id", a, "--to", to_key, "second",
        ],
    );
    let first: serde_json::Value =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(15)).unwrap()).unwrap();
    let second: serde_json::Value =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(15)).unwrap()).unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(first["text"], "hello from alice");
    assert_eq!(second["text"], "second");
    let alice_key: serde_json::Value =
        serde_json::from_str(&ferry(&cfg, &["id", "show", "--id", a, "--json"])).unwrap();
    assert_eq!(first["from"], alice_key["public_key"]);
    assert!(first["sent_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(first["id"].as_str().unwrap().len(), 32);
    // Shown and acknowledged: nothing left, nothing shown twice.
    assert_eq!(
        ferry(&cfg, &["inbox", "--node", &node.addr, "--id", b, "--json"]),
        ""
    );
    let status: serde_json::Value =
        serde_json::from_str(&ferry(&cfg, &["status", "--node", &node.addr, "--json"])).unwrap();
    assert_eq!(status["status"], "ok");
    assert_eq!(status["queue_depth"], 0);
    assert_eq!(status["fingerprint"], node.fingerprint.to_string());
}

#[tokio::test]
async fn cli_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(FERRY)
        .env("XDG_CONFIG_HOME", dir.path())
        .args(["send", "--to", "nonsense", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--to must be a public key"));
    let out = Command::new(FERRY)
        .env("XDG_CONFIG_HOME", dir.path())
        .args(["inbox"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("ferry id new"));
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "listn = 1\n").unwrap();
    let out = Command::new(FERRY)
        .args(["node", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listn"));
    let out = Command::new(FERRY).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ferry "));
}

/// The node's data directory on an 8 MiB tmpfs (a private mount namespace; needs root, which
/// CI has). Writes are refused with ResourceExhausted once the disk is full, Health says so,
/// stored messages stay readable, and acknowledging frees room without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_resource_exhausted_and_recovers() {
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("SKIPPED: needs root for a private tmpfs mount");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let script = format!(
        "mount -t tmpfs -o size=8m ferry-test '{data}' && exec '{FERRY}' node --log info,ferry_store=debug --listen 127.0.0.1:0 --mesh-listen 127.0.0.1:0 --no-mdns --rate-limit 0 --data-dir '{data}'"
    );
    let node = NodeProc::spawn(Command::new("unshare").args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    // A generous quota, so the disk is what runs out.
    let alice = Identity::generate().unwrap();
    let bob = Identity::generate().unwrap();
    let c = Client::connect(&node.addr, &node.opts()).await.unwrap();
    c.authenticate(&alice).await.unwrap();
    let mut stored = 0u32;
    let full = loop {
        let mut req = common::enqueue_req(&bob, &vec![(stored % 251) as u8; 4096], None);
        req.message_id = (stored as u128).to_be_bytes().to_vec();
        match c.enqueue(&req).await {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 10_000, "the disk never filled");
    };
    assert_eq!(
        full.status_code(),
        Some(Status::ResourceExhausted),
        "{full}"
    );
    assert!(full.to_string().contains("storage is full"), "{full}");
    assert_eq!(c.health().await.unwrap().status, "disk full");
    // Still serving: reads work and nothing stored was harmed.
    let b = Client::connect(&node.addr, &node.opts()).await.unwrap();
    b.authenticate(&bob).await.unwrap();
    let mb = MailboxAddr::default_for(bob.public_key());
    let mut got = 0u32;
    let mut last = 0;
    loop {
        let page = match b.fetch(&mb, 256).await {
            Ok(page) => page,
            Err(e) => panic!(
                "reading back after the disk filled: {e}\nnode log:\n{}",
                node._log.try_iter().collect::<Vec<_>>().join("\n")
            ),
        };
        let Some(l) = page.last() else { break };
        last = l.seq;
        for e in &page {
            assert_eq!(e.data, vec![(got % 251) as u8; 4096]);
            got += 1;
        }
    }
    assert!(got >= stored, "stored {stored}, read back {got}");
    // Acknowledging frees pages inside the file; writes succeed again without a restart.
    b.ack(&mb, last).await.unwrap();
    let mut recovered = false;
    for _ in 0..100 {
        if c.enqueue(&common::enqueue_req(&bob, b"after", None))
            .await
            .is_ok()
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "node did not recover after space was freed\nnode log:\n{}",
        node._log.try_iter().collect::<Vec<_>>().join("\n")
    );
    assert_eq!(c.health().await.unwrap().status, "ok");
    eprintln!(
        "disk full after {stored} messages of 4 KiB; all read back; writes resumed after ack"
    );
}

/// `ferry bench` (what `scripts/bench-node.sh` runs) carries every message exactly once, with
/// plain Enqueues and through the Batcher, from several senders at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_bench_delivers_every_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("node"), "127.0.0.1:0");
    let pin = node.fingerprint.to_string();
    for batch in [false, true] {
        let mut args = vec![
            "bench",
            "--node",
            &node.addr,
            "--pin",
            &pin,
            "--messages",
            "3000",
            "--senders",
            "3",
            "--in-flight",
            "16",
        ];
        if batch {
            args.push("--batch");
        }
        let out = ferry(dir.path(), &args);
        assert!(
            out.contains("received 3000/3000, lost 0, duplicated 0"),
            "batch {batch}: {out}"
        );
    }
}

/// Alice and Bob with identity files in `cfg`; returns their paths and Bob's public key.
fn two_users(cfg: &Path) -> (String, String, String) {
    let (a, b) = (cfg.join("alice.json"), cfg.join("bob.json"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    ferry(cfg, &["id", "new", "--out", a]);
    let bob: serde_json::Value =
        serde_json::from_str(&ferry(cfg, &["id", "new", "--out", b, "--json"])).unwrap();
    (
        a.to_string(),
        b.to_string(),
        bob["public_key"].as_str().unwrap().to_string(),
    )
}

/// `ferry inbox | head -1`: the reader takes one line and goes away. The CLI ends quietly
/// (exit 0, it was a panic and exit 134) and acknowledges only what was read, so the next run
/// shows the other four, in order; none is lost, none shown twice.
#[test]
fn inbox_into_a_reader_that_goes_away_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("node"), "127.0.0.1:0");
    let cfg = dir.path().join("cfg");
    let (a, b, to) = two_users(&cfg);
    let addr = node.addr.as_str();
    ferry(&cfg, &["inbox", "--node", addr, "--id", &b]);
    for n in 1..=5 {
        let text = format!("m{n}");
        ferry(
            &cfg,
            &["send", "--node", addr, "--id", &a, "--to", &to, &text],
        );
    }
    let mut inbox = Command::new(FERRY)
        .env("XDG_CONFIG_HOME", &cfg)
        .args(["inbox", "--node", addr, "--id", &b])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(inbox.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.trim_end().ends_with("  m1"), "{first}");
    // The reader is gone (the pipe's read end closed with the BufReader).
    let out = inbox.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rest: Vec<String> = ferry(&cfg, &["inbox", "--node", addr, "--id", &b])
        .lines()
        .map(|l| l.rsplit("  ").next().unwrap().to_string())
        .collect();
    assert_eq!(rest, ["m2", "m3", "m4", "m5"]);
    // The journal of what was shown is the user's alone, as the identity beside it.
    let seen = Path::new(&b).with_extension("seen");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&seen).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", seen.display());
    assert_eq!(ferry(&cfg, &["inbox", "--node", addr, "--id", &b]), "");
    // --count: two shown, the rest stay.
    for n in 6..=8 {
        let text = format!("m{n}");
        ferry(
            &cfg,
            &["send", "--node", addr, "--id", &a, "--to", &to, &text],
        );
    }
    let two = ferry(&cfg, &["inbox", "--node", addr, "--id", &b, "-n", "2"]);
    assert_eq!(two.lines().count(), 2, "{two}");
    assert!(two.ends_with("m7\n"), "{two}");
    let last = ferry(&cfg, &["inbox", "--node", addr, "--id", &b]);
    assert!(
        last.ends_with("  m8\n") && last.lines().count() == 1,
        "{last}"
    );
}

/// A sender cannot drive the recipient's terminal: escape sequences and direction overrides
/// are shown escaped, and a newline cannot make a line that passes for another message.
#[test]
fn a_senders_control_characters_are_shown_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("node"), "127.0.0.1:0");
    let cfg = dir.path().join("cfg");
    let (a, b, to) = two_users(&cfg);
    let addr = node.addr.as_str();
    ferry(&cfg, &["inbox", "--node", addr, "--id", &b]);
    let nasty = "\x1b[2J\x1b]0;pwned\x07hi\n2026-12-07T10:00:00.000Z  SHA256:boss  pay him\u{202e}";
    ferry(
        &cfg,
        &["send", "--node", addr, "--id", &a, "--to", &to, nasty],
    );
    let shown = ferry(&cfg, &["inbox", "--node", addr, "--id", &b]);
    assert!(
        !shown.contains('\x1b') && !shown.contains('\x07') && !shown.contains('\u{202e}'),
        "{shown:?}"
    );
    assert!(
        shown.contains("\\u{1b}[2J\\u{1b}]0;pwned\\u{7}hi\n  | 2026-12-07T10:00:00.000Z"),
        "{shown}"
    );
    assert_eq!(shown.lines().count(), 2);
}

/// No node at the address: every command says so within the connect timeout (2 s; it was
/// 10 s for `status`, 31 s for `send`), not after minutes of retrying.
#[test]
fn no_node_answering_is_said_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg");
    let (a, b, to) = two_users(&cfg);
    // A UDP port that takes packets and never answers them (no ICMP either).
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = hole.local_addr().unwrap().to_string();
    for args in [
        vec!["status", "--node", &addr],
        vec!["inbox", "--node", &addr, "--id", &b],
        vec!["send", "--node", &addr, "--id", &a, "--to", &to, "hi"],
    ] {
        let started = Instant::now();
        let out = Command::new(FERRY)
            .env("XDG_CONFIG_HOME", &cfg)
            .args(&args)
            .output()
            .unwrap();
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains(&format!("no Ferry node answers at {addr}")),
            "{args:?}: {stderr}"
        );
        // Generous for a loaded machine; the point is seconds, not half a minute.
        assert!(took < Duration::from_secs(8), "{args:?} took {took:?}");
    }
}

/// `ferry inbox --follow` whose node is replaced by another (a new certificate at the same
/// address) exits with the message a single command gives, instead of retrying for ever;
/// `ferry forget` drops the pin so the next command trusts the node it finds.
#[test]
fn inbox_follow_exits_on_a_changed_certificate_and_forget_drops_the_pin() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("one"), "127.0.0.1:0");
    let addr = node.addr.clone();
    let cfg = dir.path().join("cfg");
    let (_, b, _) = two_users(&cfg);
    ferry(&cfg, &["inbox", "--node", &addr, "--id", &b]);
    let mut follow = Command::new(FERRY)
        .env("XDG_CONFIG_HOME", &cfg)
        .args(["inbox", "--follow", "--node", &addr, "--id", &b])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(node);
    let other = NodeProc::start(&dir.path().join("two"), &addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = follow.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = follow.kill();
            panic!("inbox --follow kept retrying a changed certificate");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("has changed") && stderr.contains("ferry forget"),
        "{stderr}"
    );
    let forgot = ferry(&cfg, &["forget", &addr]);
    assert!(forgot.starts_with(&format!("forgot {addr}")), "{forgot}");
    ferry(&cfg, &["inbox", "--node", &addr, "--id", &b]);
    let known = std::fs::read_to_string(cfg.join("ferry/known_nodes")).unwrap();
    assert_eq!(known, format!("{addr} {}\n", other.fingerprint));
    // Forgetting a node never pinned says so.
    let out = Command::new(FERRY)
        .env("XDG_CONFIG_HOME", &cfg)
        .args(["forget", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pinned certificate"));
}

/// `ferry inbox --follow` started while its node is down (a router still booting) keeps
/// trying, and shows what is sent once the node is up (it gave up after the first 2 s
/// without an answer).
#[test]
fn inbox_follow_waits_for_a_node_that_is_not_up_yet() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    // The node's address: taken once to pin its certificate, then the node is stopped.
    let node = NodeProc::start(&data, "127.0.0.1:0");
    let addr = node.addr.clone();
    let cfg = dir.path().join("cfg");
    let (a, b, to) = two_users(&cfg);
    ferry(&cfg, &["inbox", "--node", &addr, "--id", &b]);
    drop(node);
    let mut follow = Command::new(FERRY)
        .env("XDG_CONFIG_HOME", &cfg)
        .args(["inbox", "--follow", "--node", &addr, "--id", &b])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // Two connect timeouts and more.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        follow.try_wait().unwrap().is_none(),
        "inbox --follow gave up on a node that was not up yet"
    );
    let node = NodeProc::start(&data, &addr);
    ferry(
        &cfg,
        &["send", "--node", &addr, "--id", &a, "--to", &to, "booted"],
    );
    let line = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the follower shows what was sent once the node was up");
    assert!(line.ends_with("  booted"), "{line}");
    let _ = follow.kill();
    let _ = follow.wait();
    drop(node);
}

/// The smaller items of issue 27: a paragraph on standard input goes as one message; `send -`
/// keeps to a node's rate limit instead of failing half-way (200 lines against the default
/// limit failed with RateLimited); a message too large to send says so before sending; a
/// static peer that cannot be reached says why in `ferry peers`.
#[test]
fn send_stdin_pacing_too_large_and_dial_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let node = NodeProc::spawn(
        Command::new(FERRY)
            .args([
                "node",
                "--listen",
                "127.0.0.1:0",
                "--rate-limit",
                "5",
                "--mesh-listen",
                "127.0.0.1:0",
                "--no-mdns",
                // Nothing listens there: a static peer that cannot be reached.
                "--peer",
                &format!("{}@127.0.0.1:9", "ab".repeat(32)),
                "--data-dir",
            ])
            .arg(&data),
    );
    let addr = node.addr.as_str();
    let cfg = dir.path().join("cfg");
    let (a, b, to) = two_users(&cfg);
    ferry(&cfg, &["inbox", "--node", addr, "--id", &b]);
    let send = |args: &[&str], stdin: &str| {
        let mut child = Command::new(FERRY)
            .env("XDG_CONFIG_HOME", &cfg)
            .args(["send", "--node", addr, "--id", &a, "--to", &to])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = send(&["--stdin"], "Dear Bob,\nthe boat leaves at six.\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 30 lines at 5 requests a second (bursts of 10): paced, all sent.
    let lines: String = (1..=30).map(|n| format!("line {n}\n")).collect();
    let out = send(&["-"], &lines);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 30);
    assert!(String::from_utf8_lossy(&out.stderr).contains("going at its pace"));
    let shown = ferry(&cfg, &["inbox", "--node", addr, "--id", &b]);
    assert!(
        shown.contains("  Dear Bob,\n  | the boat leaves at six.\n"),
        "{shown}"
    );
    assert_eq!(shown.matches("  line ").count(), 30, "{shown}");
    // Too large: said before anything is sent.
    let out = send(&["--stdin"], &"x".repeat(5 * 1024 * 1024));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a message may carry at most"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The static peer: peers says why it cannot be linked.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(FERRY)
            .args(["peers", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("last dial failed:") {
            break;
        }
        assert!(Instant::now() < deadline, "no dial error shown: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(node);
}
