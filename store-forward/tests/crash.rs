//! Crash safety, proven: a child process writes under load and is SIGKILLed at a random
//! moment; the parent reopens the file and checks that every write the child saw acknowledged
//! is there exactly once, with the seq it was given, and that nothing else appeared.
//!
//! The child is this same test binary, re-run with `FERRY_CRASH_CHILD` set. It prints a line
//! only after the operation's durable commit returned:
//!   `ACK <mailbox> <id> <seq>`    an enqueue committed
//!   `DUP <mailbox> <id> <seq>`    a retry of an earlier id was recognised
//!   `DELSTART <mailbox> <up_to>`  printed *before* an ack is submitted (it may then commit
//!                                 or not; the parent treats those seqs as possibly deleted)
//!
//! The cycles take turns with three configurations: the default (batches of enqueues and acks
//! through the write-ahead log, checkpointed every 1 MiB), a 16 KiB checkpoint (so that kills
//! also land during and just after checkpoints), and the log off (every batch a durable
//! commit). A killed child with the log on leaves records that the next open replays.
//!
//! `FERRY_CRASH_CYCLES` sets the number of kill cycles (default 25).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use ferry_store::{Store, StoreConfig};

const MAILBOXES: u8 = 4;
const THREADS: u64 = 6;

/// The store configuration of a cycle.
fn config(cycle: u64) -> StoreConfig {
    match cycle % 3 {
        0 => StoreConfig::default(),
        1 => StoreConfig {
            checkpoint_bytes: 16 * 1024,
            ..StoreConfig::default()
        },
        _ => StoreConfig {
            wal: false,
            ..StoreConfig::default()
        },
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

/// Child mode: write forever (until killed).
#[test]
fn crash_child() {
    let Ok(path) = std::env::var("FERRY_CRASH_CHILD") else {
        return;
    };
    let cycle: u64 = std::env::var("FERRY_CRASH_CYCLE").unwrap().parse().unwrap();
    let retry: Vec<(u8, u64)> = std::env::var("FERRY_CRASH_RETRY")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (mb, id) = s.split_once(':').unwrap();
            (mb.parse().unwrap(), id.parse().unwrap())
        })
        .collect();
    let store = Store::open(&path, config(cycle)).unwrap();
    let out = Mutex::new(std::io::stdout());
    let line = |s: String| {
        let mut o = out.lock().unwrap();
        o.write_all(s.as_bytes()).unwrap();
        o.flush().unwrap();
    };
    line("READY\n".into());
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let store = store.clone();
            let retry = retry.clone();
            let line = &line;
            scope.spawn(move || {
                let mut n = 0u64;
                loop {
                    // Keep a window in flight, like a busy node.
                    let mut window = Vec::new();
                    for _ in 0..16 {
                        n += 1;
                        let mb = ((t + n) % MAILBOXES as u64) as u8;
                        let id = (cycle << 40) | (t << 32) | n;
                        let len = (rand_u64() % 600) as usize + 1;
                        let p = vec![(id % 251) as u8; len];
                        window.push((
                            mb,
                            id,
                            store.enqueue(msg(mailbox(mb), id, &p, T0, 1000 * HOUR)),
                        ));
                    }
                    for (mb, id, p) in window {
                        let e = p.wait().unwrap();
                        assert!(!e.duplicate);
                        line(format!("ACK {mb} {id} {}\n", e.seq));
                    }
                    if t == 0 && n.is_multiple_of(160) {
                        for (mb, id) in &retry {
                            let e = store
                                .enqueue(msg(mailbox(*mb), *id, b"retry", T0, 1000 * HOUR))
                                .wait()
                                .unwrap();
                            line(format!(
                                "{} {mb} {id} {}\n",
                                if e.duplicate { "DUP" } else { "NEW" },
                                e.seq
                            ));
                        }
                    }
                    if t == 1 && n.is_multiple_of(96) {
                        let mb = (n % MAILBOXES as u64) as u8;
                        let up_to = rand_u64() % 40;
                        line(format!("DELSTART {mb} {up_to}\n"));
                        store.ack(mailbox(mb), up_to).wait().unwrap();
                    }
                }
            });
        }
    });
}

#[derive(Default)]
struct Expect {
    /// (mailbox, id) -> seq of every acknowledged enqueue.
    acked: HashMap<(u8, u64), u64>,
    /// mailbox -> highest seq an ack may have deleted up to.
    maybe_deleted: BTreeMap<u8, u64>,
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let cycles: u64 = std::env::var("FERRY_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let seed = rand_u64();
    eprintln!("crash test seed {seed:#x}, {cycles} cycles");
    let mut expect = Expect::default();
    let mut total_acked = 0usize;
    let mut dups_checked = 0usize;
    let mut replayed = 0u64;
    for cycle in 1..=cycles {
        // Retry a few ids acknowledged in earlier cycles: they must come back as duplicates.
        let retry: Vec<String> = expect
            .acked
            .keys()
            .take(3)
            .map(|(mb, id)| format!("{mb}:{id}"))
            .collect();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_child",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("FERRY_CRASH_CHILD", &path)
            .env("FERRY_CRASH_CYCLE", cycle.to_string())
            .env("FERRY_CRASH_RETRY", retry.join(","))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if l.ends_with("READY") {
                    let _ = ready_tx.send(());
                }
                lines.push(l);
            }
            lines
        });
        // Kill at a random moment after the child is writing.
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("child did not start writing");
        let delay = Duration::from_millis(30 + (seed.rotate_left(cycle as u32) % 400));
        let started = Instant::now();
        std::thread::sleep(delay);
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "child must have been killed");
        let lines = reader.join().unwrap();
        assert!(
            lines.iter().any(|l| l.ends_with("READY")),
            "child never started: {:?}",
            lines.iter().take(5).collect::<Vec<_>>()
        );
        for l in &lines {
            let parts: Vec<&str> = l.split(' ').collect();
            match parts.as_slice() {
                ["ACK", mb, id, seq] => {
                    let key = (mb.parse().unwrap(), id.parse().unwrap());
                    assert!(
                        expect.acked.insert(key, seq.parse().unwrap()).is_none(),
                        "id acked twice: {l}"
                    );
                    total_acked += 1;
                }
                ["DUP", mb, id, seq] => {
                    let key = (mb.parse().unwrap(), id.parse().unwrap());
                    assert_eq!(
                        expect.acked.get(&key),
                        Some(&seq.parse().unwrap()),
                        "retry got another seq: {l}"
                    );
                    dups_checked += 1;
                }
                ["NEW", ..] => panic!("a retried id was stored again: {l}"),
                ["DELSTART", mb, up_to] => {
                    let e = expect.maybe_deleted.entry(mb.parse().unwrap()).or_default();
                    *e = (*e).max(up_to.parse().unwrap());
                }
                _ => {}
            }
        }
        // Reopen (this runs redb's crash recovery and replays the log) and check.
        let store = Store::open(&path, config(cycle)).unwrap();
        let replayed_now = store.writer_stats().replayed_records;
        replayed += replayed_now;
        let mut seen: HashMap<(u8, u64), u64> = HashMap::new();
        for mb in 0..MAILBOXES {
            for m in store
                .fetch(&mailbox(mb), 0, u32::MAX, usize::MAX, T0)
                .unwrap()
            {
                let id = u64::from_be_bytes(m.message_id.as_bytes()[8..].try_into().unwrap());
                assert!(
                    seen.insert((mb, id), m.seq).is_none(),
                    "message {id} stored twice in mailbox {mb}"
                );
                assert_eq!(
                    m.payload.first().copied(),
                    Some((id % 251) as u8),
                    "payload of {id} damaged"
                );
            }
        }
        for ((mb, id), seq) in &expect.acked {
            let deletable = expect.maybe_deleted.get(mb).is_some_and(|d| seq <= d);
            match seen.get(&(*mb, *id)) {
                Some(s) => assert_eq!(s, seq, "message {id} has another seq after the crash"),
                None => assert!(
                    deletable,
                    "acknowledged message {id} (mailbox {mb}, seq {seq}) lost in cycle {cycle}"
                ),
            }
        }
        let st = store.stats().unwrap();
        assert_eq!(
            st.messages,
            seen.len() as u64,
            "counters agree with contents"
        );
        store.close();
        eprintln!(
            "cycle {cycle}: killed after {:?}, {} lines, {} stored, {} acknowledged so far, {replayed_now} log records replayed",
            started.elapsed(),
            lines.len(),
            seen.len(),
            total_acked
        );
    }
    assert!(total_acked > 0, "the child never got a write acknowledged");
    if cycles >= 3 {
        assert!(
            replayed > 0,
            "no kill left the write-ahead log anything to replay"
        );
    }
    eprintln!(
        "{cycles} kill cycles, {total_acked} acknowledged writes checked, {dups_checked} retries recognised, {replayed} log records replayed"
    );
}
