//! A real full disk: the store runs on a 4 MiB tmpfs (in a private mount namespace, so the
//! host is untouched) that fills up. Writes must fail with `DiskFull` and store nothing,
//! everything stored before stays readable, and once space is freed the store recovers by
//! itself (redb poisons its handle after an IO error; the store reopens the file).
//!
//! Needs root (for the mount namespace), which CI has. Without root it says so and skips.

#![allow(clippy::print_stdout)] // the child talks to its parent over stdout

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use ferry_store::{Store, StoreConfig, StoreError};

#[test]
fn disk_full_child() {
    let Ok(dir) = std::env::var("FERRY_DISK_FULL_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    let store = Store::open(
        dir.join("full.redb"),
        StoreConfig {
            max_total_bytes: u64::MAX / 2,
            max_recipient_bytes: u64::MAX / 2,
            max_recipient_messages: u64::MAX / 2,
            ..StoreConfig::default()
        },
    )
    .unwrap();
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
    // While the disk is full, each write either fails cleanly or (when it fits in pages the
    // failed commit left free) succeeds; either way its answer is the truth.
    let mut refused = 1;
    for _ in 0..10 {
        id += 1;
        match store
            .enqueue(msg(mailbox(1), id, &[id as u8; 2000], T0, HOUR))
            .wait()
        {
            Ok(e) => acked.push((id, e.seq)),
            Err(e) => {
                assert!(
                    e.is_exhausted() || e.is_transient(),
                    "unexpected error {e:?}"
                );
                refused += 1;
            }
        }
    }
    println!("DISKFULL refused {refused} writes while full");
    // Free space; the store must recover without a restart.
    std::fs::remove_file(dir.join("ballast")).unwrap();
    let mut recovered = None;
    for _ in 0..20 {
        id += 1;
        match store
            .enqueue(msg(mailbox(2), id, b"after", T0, HOUR))
            .wait()
        {
            Ok(e) => {
                recovered = Some(e);
                break;
            }
            Err(e) => {
                println!("still failing: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
    assert!(
        recovered.is_some(),
        "store did not recover after space was freed"
    );
    // Everything acknowledged before the disk filled is intact.
    let stored = store
        .fetch(&mailbox(1), 0, u32::MAX, usize::MAX, T0)
        .unwrap();
    let got: Vec<(u64, u64)> = stored
        .iter()
        .map(|m| {
            (
                u64::from_be_bytes(m.message_id.as_bytes()[8..].try_into().unwrap()),
                m.seq,
            )
        })
        .collect();
    assert_eq!(got, acked, "stored messages changed");
    for m in &stored {
        assert_eq!(m.payload, vec![m.payload[0]; 2000]);
    }
    assert!(store.writer_stats().reopens >= 1);
    // The counts quotas use include no write of a failed commit.
    assert_eq!(store.stats().unwrap().messages, acked.len() as u64 + 1);
    store.close();
    // And it all survives a clean reopen.
    let store = Store::open(dir.join("full.redb"), StoreConfig::default()).unwrap();
    assert_eq!(
        store
            .fetch(&mailbox(1), 0, u32::MAX, usize::MAX, T0)
            .unwrap()
            .len(),
        acked.len()
    );
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
