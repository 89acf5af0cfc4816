//! A real full disk: the store runs on a 4 MiB tmpfs (in a private mount namespace, so the
//! host is untouched) that fills up. Writes must fail with `DiskFull` and store nothing;
//! everything stored before stays readable; acknowledgements and expiry go on (they free
//! space, with the reserve's room); a restart on the full disk serves reads; and once space
//! is freed the store takes writes again by itself.
//!
//! Needs root (for the mount namespace), which CI has. Without root it says so and skips.

#![allow(clippy::print_stdout)] // the child talks to its parent over stdout

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use ferry_store::{Store, StoreConfig, StoreError};

/// Waits (up to `secs`) until `f` holds.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 20 {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[test]
fn disk_full_child() {
    let Ok(dir) = std::env::var("FERRY_DISK_FULL_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    let config = || StoreConfig {
        max_total_bytes: u64::MAX / 2,
        max_recipient_bytes: u64::MAX / 2,
        max_recipient_messages: u64::MAX / 2,
        checkpoint_bytes: 256 * 1024,
        reserve_bytes: 512 * 1024,
        ..StoreConfig::default()
    };
    let store = Store::open(dir.join("full.redb"), config()).unwrap();
    assert!(!store.disk_full());
    // Messages that expire in a second, for the sweep to remove while the disk is full.
    for id in 0..20 {
        store
            .enqueue(msg(mailbox(3), 1_000_000 + id, &[7; 2000], T0, 1_000))
            .wait()
            .unwrap();
    }
    // Ballast we can delete later to free space.
    std::fs::write(dir.join("ballast"), vec![0u8; 1024 * 1024]).unwrap();
    let mut acked = Vec::new();
    let mut id = 0u64;
    let err = loop {
        id += 1;
        match store
            .enqueue(msg(mailbox(1), id, &[id as u8; 2000], T0, HOUR))
            .wait()
        {
            Ok(e) => acked.push((id, e.seq)),
            Err(e) => break e,
        }
        assert!(id < 100_000, "the disk never filled");
    };
    println!("DISKFULL after {} messages: {err}", acked.len());
    assert!(
        matches!(err, StoreError::DiskFull(_)),
        "expected DiskFull, got {err:?}"
    );
    assert!(err.is_exhausted());
    assert!(store.disk_full());
    // While the disk is full: new messages are refused at once...
    for _ in 0..10 {
        id += 1;
        let e = store
            .enqueue(msg(mailbox(1), id, &[id as u8; 2000], T0, HOUR))
            .wait()
            .unwrap_err();
        assert!(matches!(e, StoreError::DiskFull(_)), "{e:?}");
    }
    // ... reads work, and see everything acknowledged ...
    let read = |store: &Store| -> Vec<(u64, u64)> {
        store
            .fetch(&mailbox(1), 0, u32::MAX, usize::MAX, T0)
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m.payload, vec![m.payload[0]; 2000]);
                (
                    u64::from_be_bytes(m.message_id.as_bytes()[8..].try_into().unwrap()),
                    m.seq,
                )
            })
            .collect()
    };
    assert_eq!(read(&store), acked, "stored messages changed");
    // ... acknowledgements are taken ...
    let (half_id, half_seq) = acked[acked.len() / 2];
    store.ack(mailbox(1), half_seq).wait().unwrap();
    acked.retain(|(i, _)| *i > half_id);
    assert_eq!(read(&store), acked);
    // ... and expiry removes what is due.
    let expired = store.sweep(T0 + 2_000).wait().unwrap();
    assert_eq!(expired, 20);
    println!("DISKFULL reads, an ack and a sweep of {expired} served while full");
    // A restart on the full disk serves reads and acknowledgements.
    store.close();
    let store = Store::open(dir.join("full.redb"), config()).unwrap();
    assert!(store.disk_full(), "still full");
    assert_eq!(read(&store), acked);
    let (q_id, q_seq) = acked[acked.len() / 4];
    store.ack(mailbox(1), q_seq).wait().unwrap();
    acked.retain(|(i, _)| *i > q_id);
    assert_eq!(read(&store), acked);
    println!("DISKFULL reopened on the full disk: reads and an ack served");
    // Space comes back: the store takes writes again by itself, with no write needed to
    // notice, and reads never stopped.
    std::fs::remove_file(dir.join("ballast")).unwrap();
    assert!(
        eventually(10, || !store.disk_full()),
        "still refusing writes"
    );
    assert_eq!(read(&store), acked);
    id += 1;
    store
        .enqueue(msg(mailbox(2), id, b"after", T0, HOUR))
        .wait()
        .unwrap();
    // The counts quotas use include no write of a failed commit.
    assert_eq!(store.stats().unwrap().messages, acked.len() as u64 + 1);
    store.close();
    // And it all survives a clean reopen.
    let store = Store::open(dir.join("full.redb"), config()).unwrap();
    assert_eq!(read(&store), acked);
    println!("DISKFULL-OK {}", acked.len());
}

#[test]
fn disk_full_refuses_cleanly_and_recovers() {
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("SKIPPED: the disk-full test needs root for a private tmpfs mount");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "mount -t tmpfs -o size=4m ferry-test '{dir}' && exec '{exe}' disk_full_child --exact --nocapture --test-threads 1",
        dir = dir.path().display(),
        exe = exe.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("FERRY_DISK_FULL_DIR", dir.path())
        .output()
        .expect("unshare (util-linux) is needed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("DISKFULL-OK"),
        "child did not finish:\n{stdout}\n{stderr}"
    );
    eprintln!(
        "{}",
        stdout
            .lines()
            .filter(|l| l.contains("DISKFULL"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
