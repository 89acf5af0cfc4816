//! Database files written by released schema versions must open, read back unchanged, and take
//! new writes. One fixture per schema version; `FERRY_WRITE_FIXTURE=1` rewrites the current one
//! (do that only when introducing a new schema version, and keep the old file).

mod common;

use std::path::PathBuf;

use common::*;
use ferry_proto::types::{HybridKeyLookup, HybridPublicKey};
use ferry_store::{Store, StoreConfig};

fn fixture(version: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(format!("schema-v{version}.redb"))
}

fn write_v1(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    let s = Store::open(path, StoreConfig::default()).unwrap();
    for i in 1..=5u64 {
        s.enqueue(msg(
            mailbox(1),
            i,
            format!("message {i}").as_bytes(),
            T0,
            1000 * 24 * HOUR,
        ))
        .wait()
        .unwrap();
    }
    s.enqueue(msg(
        mailbox_on(2, 7, b"laptop"),
        9,
        b"on a channel",
        T0,
        1000 * 24 * HOUR,
    ))
    .wait()
    .unwrap();
    s.ack(mailbox(1), 2).wait().unwrap();
    s.put_hybrid_key(
        user(1),
        HybridPublicKey::from_field(&[5; 1216], "k").unwrap(),
    )
    .wait()
    .unwrap();
    s.close();
}

#[test]
fn schema_v1_fixture_opens_and_reads() {
    let path = fixture(1);
    if std::env::var_os("FERRY_WRITE_FIXTURE").is_some() {
        write_v1(&path);
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("v1.redb");
    std::fs::copy(&path, &copy).expect("fixture schema-v1.redb is committed");
    let s = Store::open(&copy, StoreConfig::default()).unwrap();
    let got: Vec<(u64, Vec<u8>)> = s
        .fetch(&mailbox(1), 0, 100, usize::MAX, T0)
        .unwrap()
        .into_iter()
        .map(|m| (m.seq, m.payload))
        .collect();
    assert_eq!(
        got,
        (3..=5u64)
            .map(|i| (i, format!("message {i}").into_bytes()))
            .collect::<Vec<_>>()
    );
    let ch = s
        .fetch(&mailbox_on(2, 7, b"laptop"), 0, 100, usize::MAX, T0)
        .unwrap();
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].payload, b"on a channel");
    assert_eq!(ch[0].sender, Some(user(200)));
    assert!(
        s.hybrid_key(&HybridKeyLookup::Identity(user(1)))
            .unwrap()
            .is_some()
    );
    assert!(
        s.enqueue(msg(mailbox(1), 1, b"x", T0, HOUR))
            .wait()
            .unwrap()
            .duplicate
    );
    assert_eq!(
        s.enqueue(msg(mailbox(1), 6, b"x", T0, HOUR))
            .wait()
            .unwrap()
            .seq,
        6
    );
    assert_eq!(s.stats().unwrap().messages, 5);
}
