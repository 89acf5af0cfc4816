//! Custody: bundles in transit through the mesh, and their moves to and from mailboxes.

mod common;

use common::*;
use ferry_proto::types::{BundleDigest, HybridKeyLookup, HybridPublicKey};
use ferry_store::{BundleRecord, CustodyOutcome, Store, StoreConfig};

fn record(to: u8, id: u64, payload: &[u8], now: u64, ttl: u64) -> BundleRecord {
    BundleRecord {
        mailbox: mailbox(to),
        message_id: mid(id),
        sender: Some(user(200)),
        received_at_ms: now,
        expires_at_ms: now + ttl,
        hop_count: 2,
        hop_limit: 16,
        from: Some([7; 32]),
        payload: payload.to_vec(),
    }
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path().join("c.redb"), StoreConfig::default()).unwrap()
}

#[test]
fn put_get_list_delete() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let r = record(1, 1, b"transit", T0, HOUR);
    let d = r.digest();
    assert_eq!(
        s.custody_put(r.clone(), false, T0).wait().unwrap(),
        CustodyOutcome::Stored
    );
    assert_eq!(
        s.custody_put(r.clone(), false, T0).wait().unwrap(),
        CustodyOutcome::Duplicate
    );
    assert_eq!(s.custody_get(&d).unwrap(), Some(r.clone()));
    let list = s.custody_list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].digest, d);
    assert_eq!(list[0].hop_count, 2);
    let st = s.stats().unwrap();
    assert_eq!(st.custody_bundles, 1);
    assert_eq!(st.messages, 0, "custody is not a mailbox");
    assert_eq!(s.custody_delete(vec![d]).wait().unwrap(), 1);
    assert_eq!(s.custody_get(&d).unwrap(), None);
    assert_eq!(s.stats().unwrap().custody_bundles, 0);
    assert_eq!(
        s.custody_put(record(1, 2, b"x", T0, 0), false, T0)
            .wait()
            .unwrap(),
        CustodyOutcome::Expired
    );
}

#[test]
fn deliver_moves_into_mailboxes_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = record(1, 1, b"a", T0, HOUR);
    let b = record(1, 2, b"b", T0, HOUR);
    s.custody_put(a.clone(), false, T0).wait().unwrap();
    s.custody_put(b.clone(), false, T0).wait().unwrap();
    let rep = s.custody_deliver_recipient(user(1), T0 + 1).wait().unwrap();
    assert_eq!(rep.delivered.len(), 2);
    assert!(rep.delivered.iter().all(|d| d.seq.is_some()));
    let got = s.fetch(&mailbox(1), 0, 10, usize::MAX, T0).unwrap();
    assert_eq!(
        got.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(),
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    assert_eq!(got[0].sender, Some(user(200)));
    assert_eq!(s.stats().unwrap().custody_bundles, 0);
    // The same bundle arriving again is a duplicate of what the mailbox took...
    assert_eq!(
        s.custody_put(a.clone(), false, T0).wait().unwrap(),
        CustodyOutcome::Duplicate
    );
    assert_eq!(
        s.custody_put(a.clone(), true, T0).wait().unwrap(),
        CustodyOutcome::Duplicate
    );
    // ...and delivering digests no longer in custody reports them missing.
    let rep = s.custody_deliver(vec![a.digest()], T0).wait().unwrap();
    assert_eq!(rep.missing, vec![a.digest()]);
}

#[test]
fn deliver_local_goes_straight_to_the_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let r = record(1, 1, b"here", T0, HOUR);
    assert_eq!(
        s.custody_put(r.clone(), true, T0).wait().unwrap(),
        CustodyOutcome::Delivered(1)
    );
    assert_eq!(
        s.fetch(&mailbox(1), 0, 10, usize::MAX, T0).unwrap()[0].payload,
        b"here"
    );
    assert_eq!(s.stats().unwrap().custody_bundles, 0);
}

#[test]
fn a_full_recipient_keeps_its_bundles_in_custody() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        dir.path().join("q.redb"),
        StoreConfig {
            max_recipient_messages: 1,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    s.custody_put(record(1, 1, b"a", T0, HOUR), false, T0)
        .wait()
        .unwrap();
    s.custody_put(record(1, 2, b"b", T0, HOUR), false, T0)
        .wait()
        .unwrap();
    let rep = s.custody_deliver_recipient(user(1), T0).wait().unwrap();
    assert_eq!(rep.delivered.len(), 1);
    assert_eq!(rep.refused.len(), 1);
    assert_eq!(
        s.stats().unwrap().custody_bundles,
        1,
        "the refused one stays in custody"
    );
    // A full disk budget refuses new custody.
    let small = Store::open(
        dir.path().join("small.redb"),
        StoreConfig {
            max_total_bytes: 300,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    assert_eq!(
        small
            .custody_put(record(2, 1, &[0; 100], T0, HOUR), false, T0)
            .wait()
            .unwrap(),
        CustodyOutcome::Stored
    );
    assert_eq!(
        small
            .custody_put(record(2, 2, &[0; 100], T0, HOUR), false, T0)
            .wait()
            .unwrap(),
        CustodyOutcome::Full
    );
}

#[test]
fn evict_turns_a_mailbox_into_custody_and_forgets_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    for i in 1..=3u64 {
        s.enqueue(msg(mailbox(1), i, format!("m{i}").as_bytes(), T0, HOUR))
            .wait()
            .unwrap();
    }
    s.enqueue(msg(
        mailbox_on(1, 9, b"tablet"),
        10,
        b"other device",
        T0,
        HOUR,
    ))
    .wait()
    .unwrap();
    s.enqueue(msg(mailbox(2), 20, b"someone else", T0, HOUR))
        .wait()
        .unwrap();
    let moved = s.evict(user(1), T0 + 5, 16).wait().unwrap();
    assert_eq!(moved.len(), 4);
    assert!(
        moved
            .iter()
            .all(|e| e.recipient == user(1) && e.from.is_none())
    );
    assert!(
        s.fetch(&mailbox(1), 0, 10, usize::MAX, T0)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.fetch(&mailbox(2), 0, 10, usize::MAX, T0).unwrap().len(),
        1,
        "others untouched"
    );
    let st = s.stats().unwrap();
    assert_eq!((st.messages, st.custody_bundles), (1, 4));
    // Each bundle keeps its mailbox, sender and expiry.
    let one = s
        .custody_get(&BundleDigest::of(&mid(10), &user(1)))
        .unwrap()
        .unwrap();
    assert_eq!(one.mailbox, mailbox_on(1, 9, b"tablet"));
    assert_eq!(one.expires_at_ms, T0 + HOUR);
    assert_eq!(one.sender, Some(user(200)));
    // The message may come back to this node later and be taken again.
    let back = record(1, 1, b"m1", T0, HOUR);
    assert_eq!(s.custody_delete(vec![back.digest()]).wait().unwrap(), 1);
    assert!(matches!(
        s.custody_put(back, true, T0 + 10).wait().unwrap(),
        CustodyOutcome::Delivered(_)
    ));
}

#[test]
fn custody_expires_in_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.custody_put(record(1, 1, b"short", T0, 1_000), false, T0)
        .wait()
        .unwrap();
    s.custody_put(record(1, 2, b"long", T0, HOUR), false, T0)
        .wait()
        .unwrap();
    assert_eq!(s.sweep(T0 + 1_000).wait().unwrap(), 1);
    let st = s.stats().unwrap();
    assert_eq!((st.custody_bundles, st.expired_total), (1, 1));
}

#[test]
fn presence_keeps_the_newest_and_publishes_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let k1 = HybridPublicKey::from_field(&[1; 1216], "k").unwrap();
    let k2 = HybridPublicKey::from_field(&[2; 1216], "k").unwrap();
    assert!(
        s.put_presence(user(1), 10, b"claim-10".to_vec(), k1.clone())
            .wait()
            .unwrap()
    );
    assert!(
        !s.put_presence(user(1), 5, b"claim-5".to_vec(), k2.clone())
            .wait()
            .unwrap()
    );
    assert!(
        s.put_presence(user(1), 20, b"claim-20".to_vec(), k2.clone())
            .wait()
            .unwrap()
    );
    assert_eq!(s.presence_all().unwrap(), vec![b"claim-20".to_vec()]);
    let (_, key) = s
        .hybrid_key(&HybridKeyLookup::Identity(user(1)))
        .unwrap()
        .unwrap();
    assert_eq!(key, k2);
    s.put_meta("mesh_seqno", 42).wait().unwrap();
    assert_eq!(s.meta("mesh_seqno").unwrap(), Some(42));
}

#[test]
fn custody_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let r = record(3, 1, b"keep me", T0, HOUR);
    {
        let s = Store::open(&path, StoreConfig::default()).unwrap();
        s.custody_put(r.clone(), false, T0).wait().unwrap();
        s.close();
    }
    let s = Store::open(&path, StoreConfig::default()).unwrap();
    assert_eq!(s.custody_get(&r.digest()).unwrap(), Some(r));
}

/// Runs a future to completion on this thread (the store's writes resolve from its writer
/// thread; no async runtime is needed).
fn block_on<T>(f: ferry_store::StoreFuture<T>) -> T {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = f;
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(r) => return r.unwrap(),
            Poll::Pending => std::thread::park(),
        }
    }
}

/// The contract of `CustodyStore` (what the mesh driver, and so a hub, relies on), checked
/// through the trait only, so that any other implementation can be run against it.
fn custody_store_contract(s: &dyn ferry_store::CustodyStore) {
    // Custody is idempotent on the digest, readable, listed.
    let r = record(3, 1, b"via the hub", T0, HOUR);
    let d = r.digest();
    assert_eq!(
        block_on(s.custody_put(r.clone(), false, T0)),
        CustodyOutcome::Stored
    );
    assert_eq!(
        block_on(s.custody_put(r.clone(), false, T0)),
        CustodyOutcome::Duplicate
    );
    assert_eq!(s.custody_get(&d).unwrap(), Some(r.clone()));
    assert_eq!(s.custody_list().unwrap().len(), 1);
    assert!(s.custody_waiting(&user(3)).unwrap());
    assert!(!s.has_mail(&user(3)).unwrap());
    // Delivery moves it into the mailbox atomically; a second copy is then a duplicate.
    let rep = block_on(s.custody_deliver_recipient(user(3), T0 + 1));
    assert_eq!(rep.delivered.len(), 1);
    assert!(!s.custody_waiting(&user(3)).unwrap());
    assert!(s.has_mail(&user(3)).unwrap());
    assert_eq!(
        block_on(s.custody_put(r, false, T0 + 2)),
        CustodyOutcome::Duplicate
    );
    // The user moved: their mailbox becomes custody bundles again.
    let moved = block_on(s.evict(user(3), T0 + 3, 16));
    assert_eq!(moved.len(), 1);
    assert!(!s.has_mail(&user(3)).unwrap());
    assert_eq!(block_on(s.custody_delete(vec![moved[0].digest])), 1);
    // Expired on arrival is refused, not kept.
    assert_eq!(
        block_on(s.custody_put(record(3, 2, b"x", T0, 0), false, T0)),
        CustodyOutcome::Expired
    );
    // Delivering what is not there reports it missing.
    let gone = BundleDigest::from_array([9; 16]);
    assert_eq!(
        block_on(s.custody_deliver(vec![gone], T0)).missing,
        vec![gone]
    );
    // Presence: the newest claim wins; meta counters persist.
    let h = HybridPublicKey::from_parts(&[1; 32], &[2; 1184]);
    assert!(block_on(s.put_presence(
        user(4),
        10,
        b"claim-10".to_vec(),
        h.clone()
    )));
    assert!(!block_on(s.put_presence(
        user(4),
        9,
        b"claim-9".to_vec(),
        h.clone()
    )));
    assert_eq!(s.presence_all().unwrap(), vec![b"claim-10".to_vec()]);
    block_on(s.put_meta("mesh_seqno", 42));
    assert_eq!(s.meta("mesh_seqno").unwrap(), Some(42));
}

#[test]
fn redb_store_keeps_the_custody_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    custody_store_contract(&s);
    // And it is all still there after a reopen.
    s.close();
    let s = open(&dir);
    assert_eq!(s.meta("mesh_seqno").unwrap(), Some(42));
    assert_eq!(s.presence_all().unwrap().len(), 1);
    assert!(s.custody_list().unwrap().is_empty());
}

/// Dedup records of delivered messages make way for a bundle the same as for a message.
#[test]
fn dedup_records_make_way_for_custody() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        max_total_bytes: 2_000,
        ..StoreConfig::default()
    };
    let s = Store::open(dir.path().join("c.redb"), cfg).unwrap();
    for i in 1..=20u64 {
        let e = s
            .enqueue(msg(mailbox(1), i, b"x", T0, HOUR))
            .wait()
            .unwrap();
        s.ack(mailbox(1), e.seq).wait().unwrap();
    }
    // Nearly full of dedup records (some already made way for the last messages).
    let before = s.stats().unwrap();
    assert_eq!(before.messages, 0);
    assert!(before.used_bytes > 1_800, "{}", before.used_bytes);
    assert_eq!(
        s.custody_put(record(2, 99, &[0; 200], T0, HOUR), false, T0)
            .wait()
            .unwrap(),
        CustodyOutcome::Stored
    );
    let st = s.stats().unwrap();
    assert_eq!(st.custody_bundles, 1);
    assert!(st.dedup_forgotten_total > before.dedup_forgotten_total);
    assert!(st.used_bytes <= 2_000);
    // Larger than the budget holds without any record: full, and nothing dropped.
    let kept = st.dedup_records;
    assert_eq!(
        s.custody_put(record(2, 100, &[0; 1_800], T0, HOUR), false, T0)
            .wait()
            .unwrap(),
        CustodyOutcome::Full
    );
    assert_eq!(s.stats().unwrap().dedup_records, kept);
}
