//! What the store holds, counted in memory.
//!
//! Quotas need, in every enqueue, the messages and bytes stored for the recipient and in all.
//! Schema 1 kept those counts in `recipients` and `meta` rows, which cost every commit two more
//! B-tree leaves and their table roots (a tenth of the bytes written per message one-to-one).
//! Schema 2 keeps them here instead: counted from `messages` and `custody` when the database
//! opens, and changed by the writer only after a transaction has committed, so they always
//! describe what is on disk.

use std::collections::HashMap;

use ferry_proto::types::IdentityKey;
use redb::{Database, ReadableDatabase, ReadableTable};

use crate::StoreError;
use crate::custody;
use crate::schema::{self, CUSTODY, EXPIRY, MAILBOX_ADDRS, MESSAGES};

/// Node-wide counts of what is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Messages in all mailboxes.
    pub(crate) messages: u64,
    /// Their accounted bytes (payload plus the per-message overhead).
    pub(crate) bytes: u64,
    /// Bundles in custody.
    pub(crate) custody_count: u64,
    /// Their accounted bytes.
    pub(crate) custody_bytes: u64,
    /// Messages in the expiry index's runs: every stored message, and every message no longer
    /// stored (acknowledged, or evicted into custody) whose dedup entry is kept until its TTL.
    pub(crate) expiry_entries: u64,
}

impl Totals {
    /// Dedup records kept for messages that are no longer stored.
    pub(crate) fn dedup_records(&self) -> u64 {
        self.expiry_entries.saturating_sub(self.messages)
    }

    /// Accounted bytes of stored messages and bundles in custody: what making room never drops.
    pub(crate) fn live_bytes(&self) -> u64 {
        self.bytes.saturating_add(self.custody_bytes)
    }

    /// What counts against the node-wide byte budget: stored messages, bundles in custody,
    /// and the dedup records kept for messages no longer stored.
    pub(crate) fn used_bytes(&self) -> u64 {
        self.live_bytes().saturating_add(
            self.dedup_records()
                .saturating_mul(schema::DEDUP_RECORD_COST),
        )
    }
}

/// Counts of what is stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) totals: Totals,
    /// (messages, bytes) of each recipient that has messages stored; never a zero entry.
    pub(crate) recipients: HashMap<IdentityKey, (u64, u64)>,
}

/// What one transaction changed: the new totals and the recipients whose counts it touched.
#[derive(Debug)]
pub(crate) struct UsageChange {
    pub(crate) totals: Totals,
    pub(crate) recipients: Vec<(IdentityKey, (u64, u64))>,
}

impl Usage {
    /// Counts what `db` holds. A record that does not decode is counted at its full size and
    /// logged rather than refused, so one bad record cannot keep the node from starting (it
    /// is reported again, as `Corrupt`, when it is read).
    pub(crate) fn scan(db: &Database) -> Result<Self, StoreError> {
        let rtx = db.begin_read()?;
        let mut recipient_of = HashMap::new();
        for item in rtx.open_table(MAILBOX_ADDRS)?.iter()? {
            let (id, addr) = item?;
            match schema::decode_addr(addr.value()) {
                Ok(a) => {
                    recipient_of.insert(id.value(), a.recipient);
                }
                Err(e) => {
                    tracing::warn!(mailbox = id.value(), error = %e, "unreadable mailbox address")
                }
            }
        }
        let mut usage = Usage::default();
        let mut unreadable = 0u64;
        for item in rtx.open_table(MESSAGES)?.iter()? {
            let (key, record) = item?;
            let (mailbox, _) = key.value();
            let payload_len = match schema::decode_record(record.value()) {
                Ok(r) => r.payload.len(),
                Err(_) => {
                    unreadable += 1;
                    record.value().len()
                }
            };
            let c = schema::cost(payload_len);
            usage.totals.messages += 1;
            usage.totals.bytes += c;
            match recipient_of.get(&mailbox) {
                Some(r) => {
                    let e = usage.recipients.entry(*r).or_default();
                    e.0 += 1;
                    e.1 += c;
                }
                None => unreadable += 1,
            }
        }
        for item in rtx.open_table(CUSTODY)?.iter()? {
            let (_, record) = item?;
            let payload_len = match custody::decode(record.value()) {
                Ok(r) => r.payload.len(),
                Err(_) => {
                    unreadable += 1;
                    record.value().len()
                }
            };
            usage.totals.custody_count += 1;
            usage.totals.custody_bytes += schema::cost(payload_len);
        }
        for item in rtx.open_table(EXPIRY)?.iter()? {
            let (_, ids) = item?;
            usage.totals.expiry_entries += schema::ExpiryRun::len_of(ids.value());
        }
        if unreadable > 0 {
            tracing::warn!(
                records = unreadable,
                "stored records that do not decode or belong to no mailbox; counted at full size"
            );
        }
        Ok(usage)
    }

    /// Applies a committed transaction's changes.
    pub(crate) fn apply(&mut self, change: UsageChange) {
        self.totals = change.totals;
        for (recipient, (n, b)) in change.recipients {
            if n == 0 {
                self.recipients.remove(&recipient);
            } else {
                self.recipients.insert(recipient, (n, b));
            }
        }
    }

    /// (messages, bytes) stored for `recipient`.
    pub(crate) fn of(&self, recipient: &IdentityKey) -> (u64, u64) {
        self.recipients.get(recipient).copied().unwrap_or((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::StoreConfig;
    use crate::backend::IoCounters;
    use crate::schema::MAILBOXES;
    use crate::store::open_database;

    /// A record that does not decode is counted at its full size and does not stop the open.
    #[test]
    fn scan_counts_unreadable_records_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.redb");
        let db = open_database(
            &path,
            &StoreConfig::default(),
            &Arc::new(IoCounters::default()),
        )
        .unwrap();
        let addr = schema::encode_addr(&ferry_proto::types::MailboxAddr {
            recipient: IdentityKey::from_array([1; 32]),
            channel: ferry_proto::types::ChannelId::from_field(b"", "channel").unwrap(),
            device: ferry_proto::types::DeviceId::from_field(b"", "device").unwrap(),
        });
        let good = schema::Record {
            enqueued_at_ms: 1,
            expires_at_ms: 2,
            message_id: ferry_proto::types::MessageId::from_array([3; 16]),
            sender: None,
            payload: b"hello",
        }
        .encode();
        let txn = db.begin_write().unwrap();
        {
            txn.open_table(MAILBOXES)
                .unwrap()
                .insert(addr.as_slice(), (1, 3))
                .unwrap();
            txn.open_table(MAILBOX_ADDRS)
                .unwrap()
                .insert(1, addr.as_slice())
                .unwrap();
            let mut m = txn.open_table(MESSAGES).unwrap();
            m.insert((1, 1), good.as_slice()).unwrap();
            m.insert((1, 2), [9u8; 10].as_slice()).unwrap();
            // A message of a mailbox that has no address.
            m.insert((7, 1), good.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        let u = Usage::scan(&db).unwrap();
        assert_eq!(u.totals.messages, 3);
        assert_eq!(u.totals.bytes, 2 * schema::cost(5) + schema::cost(10));
        assert_eq!(
            u.of(&IdentityKey::from_array([1; 32])),
            (2, schema::cost(5) + schema::cost(10))
        );
        assert_eq!(u.recipients.len(), 1);
    }

    #[test]
    fn apply_drops_recipients_with_nothing_stored() {
        let r = IdentityKey::from_array([1; 32]);
        let mut u = Usage::default();
        let change = |n, b| UsageChange {
            totals: Totals {
                messages: n,
                bytes: b,
                ..Totals::default()
            },
            recipients: vec![(r, (n, b))],
        };
        u.apply(change(2, 300));
        assert_eq!(u.of(&r), (2, 300));
        u.apply(change(0, 0));
        assert!(u.recipients.is_empty());
    }
}
