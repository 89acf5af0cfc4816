//! Database files written by released schema versions must open, read back unchanged, and take
//! new writes. One fixture per schema version; `FERRY_WRITE_FIXTURE=1` rewrites the current one
//! (do that only when introducing a new schema version, and keep the old files).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ferry_proto::types::{HybridKeyLookup, HybridPublicKey};
use ferry_store::{BundleRecord, QuotaScope, Store, StoreConfig, StoreError};
use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition, TableHandle};

/// The schema version this build writes.
const CURRENT: u32 = 3;
const CURRENT_U64: u64 = CURRENT as u64;
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// The messages table, read only for its length.
const MESSAGES_LEN: TableDefinition<'_, (u64, u64), &[u8]> = TableDefinition::new("messages");

fn fixture(version: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(format!("schema-v{version}.redb"))
}

/// What every fixture holds: mailbox(1) with messages 3..=5 (1 and 2 acknowledged), one
/// message on a channel of user 2's laptop, a hybrid key of user 1; from schema 2 on also a
/// bundle in custody. Messages 1..=5 went in one by one, so in schema 3 they are five runs.
fn write_current(path: &Path) {
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
    s.custody_put(bundle(), false, T0).wait().unwrap();
    s.close();
}

fn bundle() -> BundleRecord {
    BundleRecord {
        mailbox: mailbox(3),
        message_id: mid(77),
        sender: None,
        received_at_ms: T0,
        expires_at_ms: T0 + 1000 * 24 * HOUR,
        hop_count: 1,
        hop_limit: 16,
        from: Some([7; 32]),
        payload: b"in transit".to_vec(),
    }
}

/// A copy of fixture `version` in a temp dir (the committed file is never written to).
fn open_copy(version: u32, config: StoreConfig) -> (tempfile::TempDir, PathBuf, Store) {
    let path = fixture(version);
    if version == CURRENT && std::env::var_os("FERRY_WRITE_FIXTURE").is_some() {
        write_current(&path);
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(format!("v{version}.redb"));
    std::fs::copy(&path, &copy)
        .unwrap_or_else(|e| panic!("fixture schema-v{version}.redb is committed: {e}"));
    let s = Store::open(&copy, config).unwrap();
    (dir, copy, s)
}

/// Payload plus the store's per-message overhead of 128 bytes.
fn cost(payload: &[u8]) -> u64 {
    payload.len() as u64 + 128
}

fn check_reads_and_writes(s: &Store) {
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
    // What is stored is counted when the file opens (in schema 1 it was read from rows).
    let st = s.stats().unwrap();
    assert_eq!(st.messages, 4);
    assert_eq!(st.bytes, 3 * cost(b"message 3") + cost(b"on a channel"));
    assert!(s.has_mail(&user(1)).unwrap());
    assert!(s.has_mail(&user(2)).unwrap());
    assert!(!s.has_mail(&user(4)).unwrap());
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

#[test]
fn schema_v1_fixture_opens_reads_and_migrates() {
    let (_dir, copy, s) = open_copy(1, StoreConfig::default());
    check_reads_and_writes(&s);
    s.close();
    // The migration dropped schema 1's counter rows and table, and says so in the version.
    let db = redb::Database::open(&copy).unwrap();
    let rtx = db.begin_read().unwrap();
    let meta = rtx.open_table(META).unwrap();
    assert_eq!(
        meta.get("schema_version").unwrap().unwrap().value(),
        CURRENT_U64
    );
    for key in [
        "stored_messages",
        "stored_bytes",
        "custody_bundles",
        "custody_bytes",
    ] {
        assert!(meta.get(key).unwrap().is_none(), "{key} is still there");
    }
    let tables = table_names(&rtx);
    assert!(tables.iter().all(|t| t != "recipients"), "{tables:?}");
    assert_expiry_in_runs(&rtx);
}

fn table_names(rtx: &redb::ReadTransaction) -> Vec<String> {
    rtx.list_tables()
        .unwrap()
        .map(|t| t.name().to_string())
        .collect()
}

/// The file holds schema 3's `expiry_runs` and no longer schema 2's per-message `expiry`.
fn assert_expiry_in_runs(rtx: &redb::ReadTransaction) {
    let tables = table_names(rtx);
    assert!(tables.iter().all(|t| t != "expiry"), "{tables:?}");
    assert!(tables.iter().any(|t| t == "expiry_runs"), "{tables:?}");
}

/// Schema 2's expiry entries, converted into runs, still expire what they stood for: the
/// messages, and the dedup records of the acknowledged ones.
#[test]
fn migrated_expiry_entries_still_expire() {
    for version in [1, 2] {
        let (_dir, copy, s) = open_copy(version, StoreConfig::default());
        let st = s.stats().unwrap();
        assert_eq!((st.messages, st.dedup_records), (4, 2), "v{version}");
        // From schema 2 on, the bundle in custody expires too.
        let expired = if version == 1 { 4 } else { 5 };
        assert_eq!(
            s.sweep(T0 + 1001 * 24 * HOUR).wait().unwrap(),
            expired,
            "v{version}"
        );
        let st = s.stats().unwrap();
        assert_eq!((st.messages, st.dedup_records), (0, 0), "v{version}");
        // Message 1's dedup record is gone with its expiry entry: the id is new again.
        assert!(
            !s.enqueue(msg(mailbox(1), 1, b"x", T0 + 1001 * 24 * HOUR, HOUR))
                .wait()
                .unwrap()
                .duplicate,
            "v{version}"
        );
        s.close();
        let db = redb::Database::open(&copy).unwrap();
        assert_expiry_in_runs(&db.begin_read().unwrap());
    }
}

#[test]
fn schema_v2_and_v3_fixtures_open_and_read() {
    for version in [2, CURRENT] {
        let (_dir, _copy, s) = open_copy(version, StoreConfig::default());
        let st = s.stats().unwrap();
        assert_eq!(st.custody_bundles, 1);
        assert_eq!(st.custody_bytes, cost(b"in transit"));
        assert_eq!(s.custody_get(&bundle().digest()).unwrap(), Some(bundle()));
        check_reads_and_writes(&s);
    }
}

/// The per-recipient counts that quotas use are rebuilt from the file, migrated or not.
#[test]
fn recipient_quotas_hold_across_open() {
    for version in [1, 2, CURRENT] {
        let config = StoreConfig {
            max_recipient_messages: 3,
            ..StoreConfig::default()
        };
        let (_dir, _copy, s) = open_copy(version, config);
        // user 1 already has 3 messages stored; user 2 has 1.
        let err = s
            .enqueue(msg(mailbox(1), 6, b"x", T0, HOUR))
            .wait()
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::QuotaExceeded {
                    scope: QuotaScope::RecipientMessages,
                    ..
                }
            ),
            "v{version}: {err:?}"
        );
        assert!(
            !s.enqueue(msg(mailbox(2), 6, b"x", T0, HOUR))
                .wait()
                .unwrap()
                .duplicate
        );
        s.ack(mailbox(1), 3).wait().unwrap();
        assert_eq!(
            s.enqueue(msg(mailbox(1), 6, b"x", T0, HOUR))
                .wait()
                .unwrap()
                .seq,
            6,
            "v{version}: acknowledging freed the recipient's quota"
        );
    }
}

#[test]
fn a_newer_schema_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("v3.redb");
    std::fs::copy(fixture(CURRENT), &copy).unwrap();
    {
        let db = redb::Database::open(&copy).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", CURRENT_U64 + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(&copy, StoreConfig::default()).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, supported } if found == CURRENT_U64 + 1 && supported == CURRENT_U64),
        "{err:?}"
    );
    let db = redb::Database::open(&copy).unwrap();
    let rtx = db.begin_read().unwrap();
    assert_eq!(rtx.open_table(MESSAGES_LEN).unwrap().len().unwrap(), 4);
}
