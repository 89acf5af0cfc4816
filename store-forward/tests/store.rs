//! Behaviour of the store, one property per test.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_proto::types::{HybridKeyLookup, HybridPublicKey};
use ferry_store::{CommitObserver, QuotaScope, Store, StoreConfig, StoreError};

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path().join("ferry.redb"), StoreConfig::default()).unwrap()
}

fn all(store: &Store, mb: &ferry_proto::types::MailboxAddr, now: u64) -> Vec<(u64, Vec<u8>)> {
    store
        .fetch(mb, 0, 10_000, usize::MAX, now)
        .unwrap()
        .into_iter()
        .map(|m| (m.seq, m.payload))
        .collect()
}

/// The seqs `all` returns.
fn seqs(store: &Store, mb: &ferry_proto::types::MailboxAddr, now: u64) -> Vec<u64> {
    all(store, mb, now).into_iter().map(|m| m.0).collect()
}

#[test]
fn enqueue_assigns_monotonic_seqs_per_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = s
        .enqueue(msg(mailbox(1), 1, b"a", T0, HOUR))
        .wait()
        .unwrap();
    let b = s
        .enqueue(msg(mailbox(1), 2, b"b", T0, HOUR))
        .wait()
        .unwrap();
    let c = s
        .enqueue(msg(mailbox(2), 3, b"c", T0, HOUR))
        .wait()
        .unwrap();
    let d = s
        .enqueue(msg(mailbox_on(1, 9, b"phone"), 4, b"d", T0, HOUR))
        .wait()
        .unwrap();
    assert_eq!((a.seq, b.seq, c.seq, d.seq), (1, 2, 1, 1));
    assert!(!a.duplicate && !b.duplicate);
    assert_eq!(
        all(&s, &mailbox(1), T0),
        vec![(1, b"a".to_vec()), (2, b"b".to_vec())]
    );
    assert_eq!(
        all(&s, &mailbox_on(1, 9, b"phone"), T0),
        vec![(1, b"d".to_vec())]
    );
    let m = &s.fetch(&mailbox(1), 0, 1, usize::MAX, T0).unwrap()[0];
    assert_eq!(m.message_id, mid(1));
    assert_eq!(m.sender, Some(user(200)));
    assert_eq!(m.enqueued_at_ms, T0);
    assert_eq!(m.expires_at_ms, T0 + HOUR);
}

#[test]
fn retry_returns_first_seq_and_stores_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let first = s
        .enqueue(msg(mailbox(1), 7, b"x", T0, HOUR))
        .wait()
        .unwrap();
    s.enqueue(msg(mailbox(1), 8, b"y", T0, HOUR))
        .wait()
        .unwrap();
    let again = s
        .enqueue(msg(mailbox(1), 7, b"different payload", T0 + 5, HOUR))
        .wait()
        .unwrap();
    assert_eq!(again.seq, first.seq);
    assert!(again.duplicate);
    assert_eq!(all(&s, &mailbox(1), T0).len(), 2);
    assert_eq!(s.depth().unwrap(), 2);
    // The same id to another mailbox is a different message.
    let other = s
        .enqueue(msg(mailbox(2), 7, b"x", T0, HOUR))
        .wait()
        .unwrap();
    assert!(!other.duplicate);
}

#[test]
fn dedup_survives_ack_until_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let e = s
        .enqueue(msg(mailbox(1), 1, b"x", T0, HOUR))
        .wait()
        .unwrap();
    assert_eq!(s.ack(mailbox(1), e.seq).wait().unwrap(), 1);
    assert!(all(&s, &mailbox(1), T0).is_empty());
    // A late retry of an acknowledged message is not stored again.
    let retry = s
        .enqueue(msg(mailbox(1), 1, b"x", T0 + 10, HOUR))
        .wait()
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.seq, e.seq);
    assert!(all(&s, &mailbox(1), T0).is_empty());
    // After expiry the id is forgotten and a new message with it is accepted.
    assert_eq!(s.sweep(T0 + HOUR).wait().unwrap(), 0);
    let later = s
        .enqueue(msg(mailbox(1), 1, b"x", T0 + 2 * HOUR, HOUR))
        .wait()
        .unwrap();
    assert!(!later.duplicate);
    assert_eq!(later.seq, 2, "seqs are never reused");
}

#[test]
fn fetch_after_cursor_limit_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    for i in 1..=10u64 {
        s.enqueue(msg(mailbox(1), i, &[i as u8; 100], T0, HOUR))
            .wait()
            .unwrap();
    }
    let page = s.fetch(&mailbox(1), 3, 4, usize::MAX, T0).unwrap();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    let page = s.fetch(&mailbox(1), 0, 100, 250, T0).unwrap();
    assert_eq!(page.len(), 2, "byte budget bounds a page");
    let page = s.fetch(&mailbox(1), 0, 100, 10, T0).unwrap();
    assert_eq!(page.len(), 1, "at least one message even over the budget");
    assert!(
        s.fetch(&mailbox(1), 10, 100, usize::MAX, T0)
            .unwrap()
            .is_empty()
    );
    assert!(
        s.fetch(&mailbox(9), 0, 100, usize::MAX, T0)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn ack_deletes_up_to_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    for i in 1..=5u64 {
        s.enqueue(msg(mailbox(1), i, b"p", T0, HOUR))
            .wait()
            .unwrap();
    }
    assert_eq!(s.ack(mailbox(1), 3).wait().unwrap(), 3);
    assert_eq!(s.ack(mailbox(1), 3).wait().unwrap(), 0);
    assert_eq!(s.ack(mailbox(2), 3).wait().unwrap(), 0);
    assert_eq!(seqs(&s, &mailbox(1), T0), vec![4, 5]);
    assert_eq!(s.ack(mailbox(1), u64::MAX).wait().unwrap(), 2);
    assert_eq!(s.depth().unwrap(), 0);
    let st = s.stats().unwrap();
    assert_eq!((st.messages, st.bytes), (0, 0));
}

/// The expiry index's runs in the file at `path`: (mailbox id, first seq, messages).
fn expiry_runs(path: &std::path::Path) -> Vec<(u64, u64, usize)> {
    use redb::{ReadableDatabase, ReadableTable};
    const RUNS: redb::TableDefinition<'_, (u64, u64, u64), &[u8]> =
        redb::TableDefinition::new("expiry_runs");
    let db = redb::Database::open(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let table = rtx.open_table(RUNS).unwrap();
    table
        .iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            let (_, mb, first) = k.value();
            (mb, first, v.value().len() / 16)
        })
        .collect()
}

/// A batch to a mailbox is one entry of the expiry index; sweeping it in small steps, and
/// expiring one of its messages on the spot, leave what is left of it in the index.
#[test]
fn a_batch_is_one_expiry_run_and_expires_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.redb");
    let cfg = StoreConfig {
        sweep_batch: 3,
        ..StoreConfig::default()
    };
    let s = Store::open(&path, cfg.clone()).unwrap();
    // Mailboxes 1 and 2 alternate: each one's seqs are still consecutive.
    let batch = (1..=12)
        .map(|i| msg(mailbox(1 + (i % 2 == 0) as u8), i, b"m", T0, HOUR))
        .collect();
    s.enqueue_batch(batch).wait().unwrap();
    s.close();
    drop(s);
    assert_eq!(expiry_runs(&path), vec![(1, 1, 6), (2, 1, 6)]);

    let s = Store::open(&path, cfg.clone()).unwrap();
    assert_eq!(s.ack(mailbox(1), 3).wait().unwrap(), 3);
    assert_eq!(s.stats().unwrap().dedup_records, 3);
    // Past expiry, id 7 (mailbox 1's seq 4) comes again: its old entry expires on the spot,
    // and the id is stored anew.
    let later = T0 + HOUR;
    let again = s
        .enqueue(msg(mailbox(1), 7, b"again", later, HOUR))
        .wait()
        .unwrap();
    assert_eq!((again.seq, again.duplicate), (7, false));
    let st = s.stats().unwrap();
    assert_eq!((st.messages, st.dedup_records), (9, 3));
    // Three entries per sweep: the acknowledged seqs 1..=3 of mailbox 1 first.
    assert_eq!(s.sweep(later).wait().unwrap(), 0);
    let st = s.stats().unwrap();
    assert_eq!((st.messages, st.dedup_records), (9, 0));
    let mut swept = 0;
    for _ in 0..5 {
        swept += s.sweep(later).wait().unwrap();
    }
    assert_eq!(swept, 8);
    let st = s.stats().unwrap();
    assert_eq!((st.messages, st.dedup_records, st.expired_total), (1, 0, 9));
    assert_eq!(all(&s, &mailbox(1), later), vec![(7, b"again".to_vec())]);
    // Its dedup record is the new one.
    assert!(
        s.enqueue(msg(mailbox(1), 7, b"x", later, HOUR))
            .wait()
            .unwrap()
            .duplicate
    );
    s.close();
    drop(s);
    assert_eq!(expiry_runs(&path), vec![(1, 7, 1)]);
}

#[test]
fn expired_messages_are_never_delivered_and_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.enqueue(msg(mailbox(1), 1, b"short", T0, 1_000))
        .wait()
        .unwrap();
    s.enqueue(msg(mailbox(1), 2, b"long", T0, HOUR))
        .wait()
        .unwrap();
    assert_eq!(all(&s, &mailbox(1), T0).len(), 2);
    // Past expiry, before any sweep: not delivered.
    assert_eq!(
        all(&s, &mailbox(1), T0 + 1_000),
        vec![(2, b"long".to_vec())]
    );
    assert_eq!(s.sweep(T0 + 1_000).wait().unwrap(), 1);
    let st = s.stats().unwrap();
    assert_eq!(st.messages, 1);
    assert_eq!(st.expired_total, 1);
    assert!(matches!(
        s.enqueue(msg(mailbox(1), 3, b"x", T0, 0)).wait(),
        Err(StoreError::Expired)
    ));
}

#[test]
fn quotas_refuse_without_harming_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        max_total_bytes: 10 * (100 + 128),
        max_recipient_messages: 4,
        max_recipient_bytes: 3 * (200 + 128),
        ..StoreConfig::default()
    };
    let s = Store::open(dir.path().join("q.redb"), cfg).unwrap();
    for i in 1..=4u64 {
        s.enqueue(msg(mailbox(1), i, &[1; 100], T0, HOUR))
            .wait()
            .unwrap();
    }
    match s.enqueue(msg(mailbox(1), 5, &[1; 100], T0, HOUR)).wait() {
        Err(StoreError::QuotaExceeded {
            scope: QuotaScope::RecipientMessages,
            limit: 4,
        }) => {}
        other => panic!("{other:?}"),
    }
    // A retry of a stored message still answers, quota or not.
    assert!(
        s.enqueue(msg(mailbox(1), 4, &[1; 100], T0, HOUR))
            .wait()
            .unwrap()
            .duplicate
    );
    // Per-recipient bytes.
    s.enqueue(msg(mailbox(2), 10, &[2; 200], T0, HOUR))
        .wait()
        .unwrap();
    s.enqueue(msg(mailbox(2), 11, &[2; 200], T0, HOUR))
        .wait()
        .unwrap();
    s.enqueue(msg(mailbox(2), 12, &[2; 200], T0, HOUR))
        .wait()
        .unwrap();
    assert!(matches!(
        s.enqueue(msg(mailbox(2), 13, &[2; 1], T0, HOUR)).wait(),
        Err(StoreError::QuotaExceeded {
            scope: QuotaScope::RecipientBytes,
            ..
        })
    ));
    // Global budget.
    let mut n = 20;
    let err = loop {
        n += 1;
        match s
            .enqueue(msg(mailbox(n as u8), n, &[3; 100], T0, HOUR))
            .wait()
        {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(matches!(
        err,
        StoreError::QuotaExceeded {
            scope: QuotaScope::GlobalBytes,
            ..
        }
    ));
    assert!(err.is_exhausted());
    // Nothing stored was harmed.
    assert_eq!(all(&s, &mailbox(1), T0).len(), 4);
    assert_eq!(all(&s, &mailbox(2), T0).len(), 3);
    // Acknowledging frees room.
    s.ack(mailbox(1), 4).wait().unwrap();
    s.enqueue(msg(mailbox(1), 5, &[1; 100], T0, HOUR))
        .wait()
        .unwrap();
}

#[test]
fn expired_data_goes_first_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        max_total_bytes: 3 * (100 + 128),
        ..StoreConfig::default()
    };
    let s = Store::open(dir.path().join("q.redb"), cfg).unwrap();
    for i in 1..=3u64 {
        s.enqueue(msg(mailbox(1), i, &[1; 100], T0, 1_000))
            .wait()
            .unwrap();
    }
    // Full, but all of it has expired by now: the enqueue sweeps and succeeds.
    let e = s
        .enqueue(msg(mailbox(2), 9, &[1; 100], T0 + 2_000, HOUR))
        .wait()
        .unwrap();
    assert_eq!(e.seq, 1);
    let st = s.stats().unwrap();
    assert_eq!((st.messages, st.expired_total), (1, 3));
}

/// Delivered messages leave dedup records behind for their TTL (a late retry is still
/// recognised). They count against `max_total_bytes`, so the file stays bounded on a router
/// that relays far more than it holds: when space is short, the oldest records go first, and
/// stored messages never do.
#[test]
fn dedup_records_of_delivered_messages_stay_within_the_budget() {
    const RECORD: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.redb");
    let cfg = StoreConfig {
        max_total_bytes: 20 * (100 + 128),
        ..StoreConfig::default()
    };
    let s = Store::open(&path, cfg.clone()).unwrap();
    // Ten messages nobody fetches: they must survive everything below.
    for i in 0..10u64 {
        s.enqueue(msg(mailbox(2), 10_000 + i, &[2; 100], T0, HOUR))
            .wait()
            .unwrap();
    }
    // Two hundred delivered messages: far more records than the budget holds.
    for i in 1..=200u64 {
        let e = s
            .enqueue(msg(mailbox(1), i, &[1; 100], T0 + i, HOUR))
            .wait()
            .unwrap();
        assert!(!e.duplicate);
        assert_eq!(s.ack(mailbox(1), e.seq).wait().unwrap(), 1);
        let st = s.stats().unwrap();
        assert!(
            st.used_bytes <= cfg.max_total_bytes,
            "message {i}: {} used",
            st.used_bytes
        );
        assert_eq!(st.used_bytes, st.bytes + st.dedup_records * RECORD);
    }
    let st = s.stats().unwrap();
    assert_eq!(st.messages, 10);
    assert!(st.dedup_records > 0);
    assert_eq!(st.dedup_records + st.dedup_forgotten_total, 200);
    // The newest delivered message is still recognised; the oldest was forgotten, so its
    // retry is stored again.
    assert!(
        s.enqueue(msg(mailbox(1), 200, &[1; 100], T0 + 300, HOUR))
            .wait()
            .unwrap()
            .duplicate
    );
    let again = s
        .enqueue(msg(mailbox(1), 1, &[1; 100], T0 + 300, HOUR))
        .wait()
        .unwrap();
    assert!(!again.duplicate);
    assert_eq!(all(&s, &mailbox(2), T0 + 300).len(), 10);
    // The counts are the file's: the same after a reopen.
    let before = s.stats().unwrap();
    s.close();
    drop(s);
    let s = Store::open(&path, cfg.clone()).unwrap();
    let after = s.stats().unwrap();
    assert_eq!(
        (after.messages, after.dedup_records, after.used_bytes),
        (before.messages, before.dedup_records, before.used_bytes)
    );
    assert_eq!(after.dedup_forgotten_total, before.dedup_forgotten_total);
    // Stored messages alone still fill the budget: then the store refuses, whatever it has
    // dropped, and keeps what it holds.
    let mut refused = None;
    for i in 0..40u64 {
        match s
            .enqueue(msg(mailbox(3), 20_000 + i, &[3; 100], T0 + 400, HOUR))
            .wait()
        {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert!(matches!(
        refused,
        Some(StoreError::QuotaExceeded {
            scope: QuotaScope::GlobalBytes,
            ..
        })
    ));
    let st = s.stats().unwrap();
    assert!(st.used_bytes <= cfg.max_total_bytes);
    assert_eq!(all(&s, &mailbox(2), T0 + 400).len(), 10);
}

/// Records dropped for room are the ones that expire soonest, and only as many as needed
/// (with a thirty-second of the budget to spare); a message too large for the budget even
/// without them drops none.
#[test]
fn only_as_many_dedup_records_as_needed_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        max_total_bytes: 3_200,
        ..StoreConfig::default()
    };
    let s = Store::open(dir.path().join("n.redb"), cfg).unwrap();
    // 30 delivered: 3,000 of the 3,200 bytes in dedup records.
    for i in 1..=30u64 {
        let e = s
            .enqueue(msg(mailbox(1), i, &[1; 10], T0, HOUR + i))
            .wait()
            .unwrap();
        s.ack(mailbox(1), e.seq).wait().unwrap();
    }
    let st = s.stats().unwrap();
    assert_eq!((st.dedup_records, st.used_bytes), (30, 3_000));
    // Too large even with every record dropped: refused, nothing dropped.
    let big = s
        .enqueue(msg(mailbox(2), 100, &[0; 3_100], T0, HOUR))
        .wait();
    assert!(matches!(big, Err(StoreError::QuotaExceeded { .. })));
    assert_eq!(s.stats().unwrap().dedup_records, 30);
    // 372 bytes needed, 200 free: (3,000 + 372 + 100 - 3,200) / 100, rounded up, = 3 go.
    s.enqueue(msg(mailbox(2), 101, &[0; 244], T0, HOUR))
        .wait()
        .unwrap();
    let st = s.stats().unwrap();
    assert_eq!((st.dedup_records, st.dedup_forgotten_total), (27, 3));
    // Duplicates first: storing a forgotten one again takes room of its own.
    for (id, remembered) in [(4, true), (30, true), (3, false)] {
        let e = s
            .enqueue(msg(mailbox(1), id, &[1; 10], T0 + 1, HOUR))
            .wait()
            .unwrap();
        assert_eq!(e.duplicate, remembered, "id {id}");
    }
}

/// Looking for dedup records to drop skips stored messages, `sweep_batch` of them at most per
/// transaction: past that the store refuses (and keeps everything) rather than scan on.
#[test]
fn looking_for_dedup_records_to_drop_is_bounded() {
    for (sweep_batch, fits) in [(5, false), (20, true)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            // Ten stored, five records and one more small message.
            max_total_bytes: 10 * (10 + 128) + 5 * 100 + (10 + 128),
            sweep_batch,
            ..StoreConfig::default()
        };
        let s = Store::open(dir.path().join("b.redb"), cfg).unwrap();
        // Ten stored messages that expire first, then five delivered ones.
        for i in 0..10u64 {
            s.enqueue(msg(mailbox(2), 100 + i, &[2; 10], T0, HOUR))
                .wait()
                .unwrap();
        }
        for i in 1..=5u64 {
            let e = s
                .enqueue(msg(mailbox(1), i, &[1; 10], T0, 2 * HOUR))
                .wait()
                .unwrap();
            s.ack(mailbox(1), e.seq).wait().unwrap();
        }
        assert_eq!(s.stats().unwrap().dedup_records, 5);
        // A larger one needs two records dropped, behind the ten stored messages.
        let r = s.enqueue(msg(mailbox(3), 200, &[3; 60], T0, HOUR)).wait();
        assert_eq!(r.is_ok(), fits, "sweep_batch {sweep_batch}: {r:?}");
        let st = s.stats().unwrap();
        assert_eq!(st.dedup_forgotten_total > 0, fits);
        assert_eq!(st.messages, if fits { 11 } else { 10 });
    }
}

#[test]
fn batch_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        max_recipient_messages: 2,
        ..StoreConfig::default()
    };
    let s = Store::open(dir.path().join("b.redb"), cfg).unwrap();
    s.enqueue(msg(mailbox(3), 1, b"a", T0, HOUR))
        .wait()
        .unwrap();
    s.enqueue(msg(mailbox(3), 2, b"b", T0, HOUR))
        .wait()
        .unwrap();
    let batch = |id| {
        vec![
            msg(mailbox(1), id, b"x", T0, HOUR),
            msg(mailbox(3), id, b"x", T0, HOUR),
        ]
    };
    assert!(matches!(
        s.enqueue_batch(batch(10)).wait(),
        Err(StoreError::QuotaExceeded { .. })
    ));
    assert!(all(&s, &mailbox(1), T0).is_empty(), "no partial batch");
    s.ack(mailbox(3), 2).wait().unwrap();
    let r = s.enqueue_batch(batch(10)).wait().unwrap();
    assert_eq!(
        r.iter().map(|e| (e.seq, e.duplicate)).collect::<Vec<_>>(),
        vec![(1, false), (3, false)]
    );
    let r = s.enqueue_batch(batch(10)).wait().unwrap();
    assert!(r.iter().all(|e| e.duplicate));
}

#[test]
fn one_message_sent_many_times_at_once_is_stored_once() {
    // Submitted without waiting, so many of them share a group commit: each lone Enqueue
    // must see the ones before it in the same transaction, and so must a set repeating an id.
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let pending: Vec<_> = (0..32)
        .map(|_| s.enqueue(msg(mailbox(7), 77, b"once", T0, HOUR)))
        .collect();
    let batch = s.enqueue_batch(vec![
        msg(mailbox(7), 77, b"once", T0, HOUR),
        msg(mailbox(7), 78, b"twice", T0, HOUR),
        msg(mailbox(7), 78, b"twice", T0, HOUR),
    ]);
    let mut r: Vec<_> = pending.into_iter().map(|p| p.wait().unwrap()).collect();
    r.extend(batch.wait().unwrap());
    assert_eq!(r.iter().filter(|e| !e.duplicate).count(), 2);
    assert!(r[..33].iter().all(|e| e.seq == 1), "{r:?}");
    assert_eq!((r[33].seq, r[33].duplicate, r[34].seq), (2, false, 2));
    assert_eq!(
        all(&s, &mailbox(7), T0),
        vec![(1, b"once".to_vec()), (2, b"twice".to_vec())]
    );
}

#[test]
fn a_set_that_outlives_its_own_earlier_message_expires_it() {
    // Each message of a set carries its own times (the node gives a set one "now"; the
    // library does not insist). The second message meets the first one's dedup entry
    // expired, before the set's messages are written: the first must be written and then
    // expired, not left behind uncounted.
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let r = s
        .enqueue_batch(vec![
            msg(mailbox(8), 80, b"first", T0, 1_000),
            msg(mailbox(8), 81, b"other", T0, HOUR),
            msg(mailbox(8), 80, b"again", T0 + 2_000, HOUR),
        ])
        .wait()
        .unwrap();
    assert_eq!(
        r.iter().map(|e| (e.seq, e.duplicate)).collect::<Vec<_>>(),
        vec![(1, false), (2, false), (3, false)]
    );
    assert_eq!(
        all(&s, &mailbox(8), T0 + 2_000),
        vec![(2, b"other".to_vec()), (3, b"again".to_vec())]
    );
    let st = s.stats().unwrap();
    assert_eq!((st.messages, st.expired_total), (2, 1));
    s.close();
    let s = open(&dir);
    assert_eq!(s.stats().unwrap().messages, 2);
    assert_eq!(
        all(&s, &mailbox(8), T0 + 2_000),
        vec![(2, b"other".to_vec()), (3, b"again".to_vec())]
    );
}

/// Sets every mailbox row's last seq to `last_seq`, as a damaged file might have it.
fn set_last_seq(path: &std::path::Path, last_seq: u64) {
    use redb::ReadableTable;
    const MAILBOXES: redb::TableDefinition<'_, &[u8], (u64, u64)> =
        redb::TableDefinition::new("mailboxes");
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(MAILBOXES).unwrap();
        let rows: Vec<(Vec<u8>, u64)> = t
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().to_vec(), v.value().0)
            })
            .collect();
        for (k, id) in rows {
            t.insert(k.as_slice(), (id, last_seq)).unwrap();
        }
    }
    txn.commit().unwrap();
}

#[test]
fn a_mailbox_row_behind_its_messages_does_not_stop_a_set() {
    // A damaged file: the mailbox's last seq is behind messages it holds. A set's messages
    // go in through one cursor, which refuses keys already there; the writer then replaces
    // them, as a lone message's insert always did, instead of failing the set.
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let set = |first: u64| {
        (first..first + 3)
            .map(|i| msg(mailbox(9), i, b"p", T0, HOUR))
            .collect()
    };
    s.enqueue_batch(set(1)).wait().unwrap();
    s.close();
    set_last_seq(&dir.path().join("ferry.redb"), 1);
    let s = open(&dir);
    let r = s.enqueue_batch(set(10)).wait().unwrap();
    assert_eq!(r.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3, 4]);
    assert_eq!(seqs(&s, &mailbox(9), T0), vec![1, 2, 3, 4]);
}

/// A store whose mailbox 10 holds one message and a damaged row: its last seq is the largest
/// there is.
fn mailbox_10_at_the_last_seq(dir: &tempfile::TempDir) -> Store {
    let s = open(dir);
    s.enqueue(msg(mailbox(10), 1, b"p", T0, HOUR))
        .wait()
        .unwrap();
    s.close();
    set_last_seq(&dir.path().join("ferry.redb"), u64::MAX);
    open(dir)
}

fn assert_corrupt_mailbox<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    assert!(
        matches!(
            r,
            Err(StoreError::Corrupt {
                table: "mailboxes",
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn a_mailbox_row_at_the_last_seq_refuses_instead_of_wrapping() {
    // Only a damaged row can be at the end of the seq space: its enqueues fail as corrupt
    // (no panic, no seq 0), and the commits after them go on.
    let dir = tempfile::tempdir().unwrap();
    let s = mailbox_10_at_the_last_seq(&dir);
    assert_corrupt_mailbox(
        s.enqueue_batch(vec![msg(mailbox(10), 2, b"p", T0, HOUR)])
            .wait(),
    );
    assert_corrupt_mailbox(s.enqueue(msg(mailbox(10), 3, b"p", T0, HOUR)).wait());
    assert_eq!(
        s.enqueue(msg(mailbox(11), 4, b"p", T0, HOUR))
            .wait()
            .unwrap()
            .seq,
        1
    );
    assert_eq!(all(&s, &mailbox(10), T0).len(), 1);
}

#[test]
fn a_message_at_the_last_seq_expires_and_leaves_nothing_due() {
    // A damaged row put a mailbox one short of the end of the seq space, so its next message
    // takes seq u64::MAX. Its expiry must take it out of the expiry index like any other:
    // an entry left there would be due forever, and every sweep (once a minute) would commit
    // to the flash for nothing.
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.enqueue(msg(mailbox(10), 1, b"p", T0, HOUR))
        .wait()
        .unwrap();
    s.close();
    set_last_seq(&dir.path().join("ferry.redb"), u64::MAX - 1);
    let s = open(&dir);
    let last = s
        .enqueue(msg(mailbox(10), 2, b"p", T0, HOUR))
        .wait()
        .unwrap();
    assert_eq!(last.seq, u64::MAX);
    assert_eq!(s.sweep(T0 + 2 * HOUR).wait().unwrap(), 2);
    assert_eq!(s.stats().unwrap().oldest_enqueued_ms, None);
    let commits = s.writer_stats().commits;
    assert_eq!(s.sweep(T0 + 3 * HOUR).wait().unwrap(), 0);
    assert_eq!(
        s.writer_stats().commits,
        commits,
        "a sweep with nothing due committed"
    );
}

#[test]
fn a_damaged_row_fails_its_own_operation_not_the_commit_it_shared() {
    // The damaged mailbox's enqueue fails its group commit; the operations that shared it
    // are committed again one at a time, and only the damaged one is refused.
    let dir = tempfile::tempdir().unwrap();
    let s = mailbox_10_at_the_last_seq(&dir);
    let mut sent = 0u64;
    let mut shared = false;
    for round in 0..20u64 {
        let before = s.writer_stats();
        // Queued without waiting: while the writer commits the first, the rest wait and go
        // into group commits together, the damaged mailbox's enqueue among them.
        let mut good = Vec::new();
        let mut bad = None;
        for i in 0..64u64 {
            if i == 32 {
                bad = Some(s.enqueue(msg(mailbox(10), 1_000 + round, b"p", T0, HOUR)));
            }
            sent += 1;
            good.push(s.enqueue(msg(mailbox(11), 100 + sent, b"q", T0, HOUR)));
        }
        assert_corrupt_mailbox(bad.unwrap().wait());
        for p in good {
            p.wait().unwrap();
        }
        // Two failed commits: the group commit it shared, then its own.
        if s.writer_stats().failed_commits - before.failed_commits == 2 {
            shared = true;
            break;
        }
    }
    assert!(shared, "the damaged enqueue never shared a group commit");
    assert_eq!(seqs(&s, &mailbox(11), T0), (1..=sent).collect::<Vec<_>>());
    assert_eq!(all(&s, &mailbox(10), T0).len(), 1);
}

#[test]
fn hybrid_keys_by_identity_and_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let key = HybridPublicKey::from_field(&[7u8; 1216], "k").unwrap();
    assert!(
        s.hybrid_key(&HybridKeyLookup::Identity(user(1)))
            .unwrap()
            .is_none()
    );
    s.put_hybrid_key(user(1), key.clone()).wait().unwrap();
    let (id, k) = s
        .hybrid_key(&HybridKeyLookup::Fingerprint(user(1).fingerprint()))
        .unwrap()
        .unwrap();
    assert_eq!((id, k), (user(1), key.clone()));
    let key2 = HybridPublicKey::from_field(&[8u8; 1216], "k").unwrap();
    s.put_hybrid_key(user(1), key2.clone()).wait().unwrap();
    let got = s.hybrid_keys(&[user(2), user(1)]).unwrap();
    assert_eq!(got, vec![None, Some(key2)]);
}

#[test]
fn everything_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    {
        let s = Store::open(&path, StoreConfig::default()).unwrap();
        for i in 1..=3u64 {
            s.enqueue(msg(mailbox(1), i, b"p", T0, HOUR))
                .wait()
                .unwrap();
        }
        s.ack(mailbox(1), 1).wait().unwrap();
        s.close();
    }
    let s = Store::open(&path, StoreConfig::default()).unwrap();
    assert_eq!(seqs(&s, &mailbox(1), T0), vec![2, 3]);
    assert!(
        s.enqueue(msg(mailbox(1), 1, b"p", T0, HOUR))
            .wait()
            .unwrap()
            .duplicate
    );
    assert_eq!(
        s.enqueue(msg(mailbox(1), 4, b"p", T0, HOUR))
            .wait()
            .unwrap()
            .seq,
        4
    );
}

#[test]
fn closed_store_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.close();
    assert!(matches!(
        s.enqueue(msg(mailbox(1), 1, b"p", T0, HOUR)).wait(),
        Err(StoreError::Closed)
    ));
}

#[derive(Default)]
struct Count(std::sync::Mutex<Vec<usize>>);
impl CommitObserver for Count {
    fn committed(&self, ops: usize, _elapsed: Duration, ok: bool) {
        assert!(ok);
        self.0.lock().unwrap().push(ops);
    }
}

#[test]
fn concurrent_writers_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let obs = Arc::new(Count::default());
    let s = Store::open_with_observer(
        dir.path().join("g.redb"),
        StoreConfig::default(),
        Some(obs.clone()),
    )
    .unwrap();
    let threads = 16u64;
    let per = 50u64;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let s = s.clone();
            scope.spawn(move || {
                // Submit a window of writes before waiting, as the node does.
                let pending: Vec<_> = (0..per)
                    .map(|i| s.enqueue(msg(mailbox(t as u8), t * 1000 + i, b"p", T0, HOUR)))
                    .collect();
                for p in pending {
                    p.wait().unwrap();
                }
            });
        }
    });
    let w = s.writer_stats();
    assert_eq!(w.ops, threads * per);
    assert!(w.commits < w.ops / 4, "group commit batches writes: {w:?}");
    assert!(w.max_batch > 1);
    assert!(w.syncs >= w.commits, "every commit is fsync'd: {w:?}");
    assert!(w.bytes_written > 0);
    let seen = obs.0.lock().unwrap();
    assert_eq!(seen.iter().sum::<usize>() as u64, threads * per);
    for t in 0..threads {
        assert_eq!(all(&s, &mailbox(t as u8), T0).len() as u64, per);
    }
}

#[test]
fn close_releases_the_file_for_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.redb");
    let first = Store::open(&path, StoreConfig::default()).unwrap();
    first
        .enqueue(msg(mailbox(1), 1, b"p", T0, HOUR))
        .wait()
        .unwrap();
    first.close();
    // `first` is still alive here, yet the file is free.
    let second = Store::open(&path, StoreConfig::default()).unwrap();
    assert_eq!(second.depth().unwrap(), 1);
    assert!(matches!(first.depth(), Err(StoreError::Closed)));
}

#[test]
fn a_full_writer_queue_refuses_with_busy_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        dir.path().join("busy.redb"),
        StoreConfig {
            queue_capacity: 1,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    // Submitting takes microseconds, a durable commit far longer: most of these find the
    // queue full.
    let pending: Vec<_> = (0..500u64)
        .map(|i| s.enqueue(msg(mailbox(1), i, b"p", T0, HOUR)))
        .collect();
    let mut ok = 0u64;
    let mut busy = 0u64;
    for p in pending {
        match p.wait() {
            Ok(_) => ok += 1,
            Err(e @ StoreError::Busy(1)) => {
                assert!(e.is_transient());
                busy += 1;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(busy > 0 && ok > 0, "ok {ok}, busy {busy}");
    assert_eq!(s.writer_stats().busy, busy);
    assert_eq!(
        s.depth().unwrap(),
        ok,
        "every accepted write is stored, no refused one is"
    );
    // Once drained, the queue accepts again.
    s.enqueue(msg(mailbox(1), 10_000, b"p", T0, HOUR))
        .wait()
        .unwrap();
}

/// While messages flow, an acknowledgement alone waits for the next operation and shares its
/// commit (and fsync); once they stop, it is committed at once.
#[test]
fn an_ack_while_messages_flow_shares_the_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        ack_linger: Duration::from_secs(5),
        ..StoreConfig::default()
    };
    let s = Store::open(dir.path().join("a.redb"), cfg).unwrap();
    for i in 1..=3u64 {
        s.enqueue(msg(mailbox(1), i, b"p", T0, HOUR))
            .wait()
            .unwrap();
    }
    let before = s.writer_stats();
    let ack = s.ack(mailbox(1), 2);
    std::thread::sleep(Duration::from_millis(50));
    let next = s.enqueue(msg(mailbox(2), 1, b"q", T0, HOUR));
    assert_eq!(ack.wait().unwrap(), 2);
    next.wait().unwrap();
    let w = s.writer_stats();
    assert_eq!(
        w.commits - before.commits,
        1,
        "the ack and the enqueue after it share one commit: {w:?}"
    );
    // Nothing enqueued for longer than a moment: an ack alone does not wait.
    std::thread::sleep(Duration::from_millis(50));
    let started = std::time::Instant::now();
    assert_eq!(s.ack(mailbox(1), 3).wait().unwrap(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "an ack with no producer waited {:?}",
        started.elapsed()
    );
    assert_eq!(s.writer_stats().commits, w.commits + 1);
    assert_eq!(all(&s, &mailbox(1), T0), vec![]);
    assert_eq!(s.depth().unwrap(), 1);
}

#[test]
fn the_write_ahead_log_is_checkpointed_when_idle_and_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.redb");
    let wal = dir.path().join("w.redb-wal");
    let cfg = StoreConfig {
        checkpoint_idle: Duration::from_millis(50),
        ..StoreConfig::default()
    };
    let s = Store::open(&path, cfg.clone()).unwrap();
    // Preallocated, so that an fsync of the log never has a size change to journal.
    let prealloc = std::fs::metadata(&wal).unwrap().len();
    assert!(prealloc > cfg.checkpoint_bytes, "log file {prealloc} bytes");
    for i in 1..=5u64 {
        s.enqueue(msg(mailbox(1), i, b"p", T0, HOUR))
            .wait()
            .unwrap();
    }
    s.ack(mailbox(1), 2).wait().unwrap();
    let w = s.writer_stats();
    assert_eq!(w.commits, 6, "{w:?}");
    assert_eq!(
        w.checkpoints, 0,
        "enqueues and acks go through the log: {w:?}"
    );
    // Idle: the writer checkpoints by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.writer_stats().checkpoints == 0 {
        assert!(std::time::Instant::now() < deadline, "no idle checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A sweep with nothing due answers without a commit: an idle node writes nothing.
    let w = s.writer_stats();
    assert_eq!(s.sweep(T0).wait().unwrap(), 0);
    assert_eq!(s.writer_stats().commits, w.commits);
    // Anything else is a durable commit of its own: here a sweep that finds a message.
    s.enqueue(msg(mailbox(2), 1, b"short", T0, 1_000))
        .wait()
        .unwrap();
    assert_eq!(s.sweep(T0 + 1_000).wait().unwrap(), 1);
    assert_eq!(s.writer_stats().checkpoints, 2);
    s.enqueue(msg(mailbox(1), 6, b"p", T0, HOUR))
        .wait()
        .unwrap();
    s.close();
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), prealloc);
    // A clean close leaves nothing to replay.
    let s = Store::open(&path, cfg).unwrap();
    assert_eq!(s.writer_stats().replayed_records, 0);
    assert_eq!(seqs(&s, &mailbox(1), T0), vec![3, 4, 5, 6]);
}

#[test]
fn a_checkpoint_after_an_empty_log_writes_what_it_would_without_the_log() {
    // A relay's custody commits and a key publication are checkpoints while the log is
    // empty; recording the log's generation would add a meta page and its tree to each.
    let dir = tempfile::tempdir().unwrap();
    let written = |name: &str, wal: bool| {
        let s = Store::open(
            dir.path().join(name),
            StoreConfig {
                wal,
                ..StoreConfig::default()
            },
        )
        .unwrap();
        let mut deltas = Vec::new();
        for k in 1..=3u8 {
            let before = s.writer_stats().bytes_written;
            let key = HybridPublicKey::from_field(&[k; 1216], "k").unwrap();
            s.put_hybrid_key(user(k), key).wait().unwrap();
            deltas.push(s.writer_stats().bytes_written - before);
        }
        deltas
    };
    let with_log = written("on.redb", true);
    assert_eq!(with_log, written("off.redb", false));
    assert!(with_log.iter().all(|&b| b > 0), "{with_log:?}");
}

#[test]
fn without_the_log_every_batch_is_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.redb");
    let s = Store::open(
        &path,
        StoreConfig {
            wal: false,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    for i in 1..=3u64 {
        s.enqueue(msg(mailbox(1), i, b"p", T0, HOUR))
            .wait()
            .unwrap();
    }
    let w = s.writer_stats();
    assert_eq!((w.commits, w.checkpoints), (3, 3), "{w:?}");
    assert!(!dir.path().join("n.redb-wal").exists());
    s.close();
}

#[test]
fn acks_go_to_the_log_past_the_checkpoint_size_only_while_it_holds_records() {
    // A tiny checkpoint size: the log holds one batch, then the next one checkpoints.
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        dir.path().join("a.redb"),
        StoreConfig {
            checkpoint_bytes: 1,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    s.enqueue(msg(mailbox(1), 1, b"p", T0, HOUR))
        .wait()
        .unwrap();
    assert_eq!(s.writer_stats().checkpoints, 0);
    // Past the size: an ack still goes to the log (it fits in the file's space)...
    s.ack(mailbox(1), 1).wait().unwrap();
    assert_eq!(s.writer_stats().checkpoints, 0);
    // ...an enqueue checkpoints.
    s.enqueue(msg(mailbox(1), 2, b"p", T0, HOUR))
        .wait()
        .unwrap();
    assert_eq!(s.writer_stats().checkpoints, 1);
    assert_eq!(all(&s, &mailbox(1), T0), vec![(2, b"p".to_vec())]);
    s.close();
}
