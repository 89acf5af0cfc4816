//! Tables and record encodings. Schema version 3.
//!
//! ```text
//! meta           &str                                    -> u64
//! mailboxes      addr bytes                              -> (mailbox_id, last_seq)
//! mailbox_addrs  mailbox_id                              -> addr bytes
//! messages       (mailbox_id, seq)                       -> message record
//! dedup          (message_id, mailbox_id)                -> (seq, expires_at_ms)
//! expiry_runs    (expires_at_ms, mailbox_id, first_seq)  -> message_id * n
//! hybrid_keys    identity key                            -> hybrid public key
//! fingerprints   SHA-256(identity key)                   -> identity key
//! ```
//!
//! Version 2 keeps what is stored (messages and bytes, per recipient and in all, and the same
//! for custody) in memory instead of in `recipients` and `meta` rows that every commit had to
//! rewrite; they are counted from `messages` and `custody` when the file opens. Version 1
//! files are migrated on open: `recipients` and the counter rows are dropped.
//!
//! Version 3 indexes expiry by runs: one `expiry_runs` entry stands for the messages
//! `first_seq, first_seq + 1, …` of one mailbox that expire at the same millisecond, and holds
//! their ids in that order (see [`ExpiryRun`]). A group commit mostly stores a run of messages
//! to one mailbox within the same millisecond, so this is one B-tree insert per run instead of
//! one per message (it cost as much as the dedup insert). Version 2's `expiry` table, one
//! entry per message, is converted into runs on open.
//!
//! An expiry entry outlives the acknowledgement of its message: it is what finally removes the
//! dedup entry, so a late retry of an acknowledged message is still recognised. These dedup
//! records count against the node-wide byte budget ([`DEDUP_RECORD_COST`] each); when space is
//! short the oldest are dropped before their TTL, and a retry older than that is stored again.

use ferry_proto::limits::MESSAGE_ID_LEN;
use ferry_proto::types::{ChannelId, DeviceId, IdentityKey, MailboxAddr, MessageId};
use redb::TableDefinition;

use crate::StoreError;

/// Schema version this build writes.
pub(crate) const SCHEMA_VERSION: u64 = 3;

pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
pub(crate) const MAILBOXES: TableDefinition<'_, &[u8], (u64, u64)> =
    TableDefinition::new("mailboxes");
pub(crate) const MAILBOX_ADDRS: TableDefinition<'_, u64, &[u8]> =
    TableDefinition::new("mailbox_addrs");
pub(crate) const MESSAGES: TableDefinition<'_, (u64, u64), &[u8]> =
    TableDefinition::new("messages");
pub(crate) const DEDUP: TableDefinition<'_, (&[u8; MESSAGE_ID_LEN], u64), (u64, u64)> =
    TableDefinition::new("dedup");
pub(crate) const EXPIRY: TableDefinition<'_, (u64, u64, u64), &[u8]> =
    TableDefinition::new("expiry_runs");
/// Schemas 1 and 2: (expires_at_ms, mailbox_id, seq) -> message_id, one entry per message.
/// Converted into [`EXPIRY`] runs by the migration to version 3.
pub(crate) const V2_EXPIRY: TableDefinition<'_, (u64, u64, u64), &[u8; MESSAGE_ID_LEN]> =
    TableDefinition::new("expiry");
/// Schema 1 only: (messages, bytes) per recipient. Dropped by the migration to version 2.
pub(crate) const V1_RECIPIENTS: TableDefinition<'_, &[u8; 32], (u64, u64)> =
    TableDefinition::new("recipients");
pub(crate) const HYBRID_KEYS: TableDefinition<'_, &[u8; 32], &[u8]> =
    TableDefinition::new("hybrid_keys");
pub(crate) const FINGERPRINTS: TableDefinition<'_, &[u8; 32], &[u8; 32]> =
    TableDefinition::new("fingerprints");
/// Bundles in custody (mesh transit): digest -> custody record.
pub(crate) const CUSTODY: TableDefinition<'_, &[u8; 16], &[u8]> = TableDefinition::new("custody");
/// (recipient, digest) -> (): custody by recipient.
pub(crate) const CUSTODY_BY_RECIPIENT: TableDefinition<'_, (&[u8; 32], &[u8; 16]), ()> =
    TableDefinition::new("custody_by_recipient");
/// (expires_at_ms, digest) -> (): custody by expiry.
pub(crate) const CUSTODY_EXPIRY: TableDefinition<'_, (u64, &[u8; 16]), ()> =
    TableDefinition::new("custody_expiry");

/// The `EXPIRY` keys due at `now_ms`: what a sweep then removes.
pub(crate) fn expiry_due(now_ms: u64) -> std::ops::RangeToInclusive<(u64, u64, u64)> {
    ..=(now_ms, u64::MAX, u64::MAX)
}

/// Message ids one [`ExpiryRun`] holds at most (a 2 KiB value, well inside a 4 KiB page).
pub(crate) const MAX_RUN: usize = 128;

/// An `expiry_runs` entry: the messages `first_seq..first_seq + ids.len()` of `mailbox_id`,
/// all expiring at `expires_at_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExpiryRun {
    pub(crate) expires_at_ms: u64,
    pub(crate) mailbox_id: u64,
    pub(crate) first_seq: u64,
    pub(crate) ids: Vec<[u8; MESSAGE_ID_LEN]>,
}

impl ExpiryRun {
    /// A run of the one message `seq` of `mailbox_id` with `id`.
    pub(crate) fn start(
        expires_at_ms: u64,
        mailbox_id: u64,
        seq: u64,
        id: [u8; MESSAGE_ID_LEN],
    ) -> Self {
        Self {
            expires_at_ms,
            mailbox_id,
            first_seq: seq,
            ids: vec![id],
        }
    }

    pub(crate) fn key(&self) -> (u64, u64, u64) {
        (self.expires_at_ms, self.mailbox_id, self.first_seq)
    }

    /// The value: the ids, concatenated.
    pub(crate) fn encode_ids(&self) -> Vec<u8> {
        self.ids.concat()
    }

    /// Whether message `seq` of `mailbox_id`, expiring at `expires_at_ms`, continues this run.
    pub(crate) fn continued_by(&self, expires_at_ms: u64, mailbox_id: u64, seq: u64) -> bool {
        self.expires_at_ms == expires_at_ms
            && self.mailbox_id == mailbox_id
            && self.ids.len() < MAX_RUN
            && self.first_seq.checked_add(self.ids.len() as u64) == Some(seq)
    }

    /// The run stored under `key` with value `ids`.
    pub(crate) fn decode(key: (u64, u64, u64), ids: &[u8]) -> Result<Self, StoreError> {
        let (expires_at_ms, mailbox_id, first_seq) = key;
        let (chunks, rest) = ids.as_chunks::<MESSAGE_ID_LEN>();
        if chunks.is_empty() || !rest.is_empty() {
            return Err(StoreError::Corrupt {
                table: "expiry_runs",
                reason: "a run's value is not a whole number of message ids",
            });
        }
        Ok(Self {
            expires_at_ms,
            mailbox_id,
            first_seq,
            ids: chunks.to_vec(),
        })
    }

    /// How many ids the stored value `ids` holds (what [`ExpiryRun::decode`] would return).
    pub(crate) fn len_of(ids: &[u8]) -> u64 {
        (ids.len() / MESSAGE_ID_LEN) as u64
    }

    /// The (seq, id) of each message in the run. (Saturating: a damaged key near `u64::MAX`
    /// must not panic.)
    pub(crate) fn entries(&self) -> impl Iterator<Item = (u64, [u8; MESSAGE_ID_LEN])> + '_ {
        (0u64..)
            .zip(&self.ids)
            .map(|(i, id)| (self.first_seq.saturating_add(i), *id))
    }

    /// What is left of the run without the messages `drop` picks: its contiguous pieces.
    pub(crate) fn without(&self, mut drop: impl FnMut(u64) -> bool) -> Vec<ExpiryRun> {
        let mut pieces: Vec<ExpiryRun> = Vec::new();
        for (seq, id) in self.entries() {
            if drop(seq) {
                continue;
            }
            match pieces.last_mut() {
                Some(p) if p.continued_by(self.expires_at_ms, self.mailbox_id, seq) => {
                    p.ids.push(id);
                }
                _ => pieces.push(ExpiryRun::start(
                    self.expires_at_ms,
                    self.mailbox_id,
                    seq,
                    id,
                )),
            }
        }
        pieces
    }
}

/// The `CUSTODY_BY_RECIPIENT` keys of `recipient`'s bundles.
pub(crate) fn custody_of_recipient(
    recipient: &[u8; 32],
) -> std::ops::RangeInclusive<(&[u8; 32], &'static [u8; 16])> {
    (recipient, &[0; 16])..=(recipient, &[0xff; 16])
}

/// The `CUSTODY_EXPIRY` keys due at `now_ms`.
pub(crate) fn custody_due(now_ms: u64) -> std::ops::RangeToInclusive<(u64, &'static [u8; 16])> {
    ..=(now_ms, &[0xff; 16])
}
/// user -> timestamp_ms (8 bytes BE) || the user's presence claim as the mesh encodes it.
pub(crate) const PRESENCE: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("presence");

pub(crate) const META_SCHEMA: &str = "schema_version";
pub(crate) const META_NEXT_MAILBOX: &str = "next_mailbox_id";
pub(crate) const META_EXPIRED: &str = "expired_total";
/// Dedup records of messages no longer stored that were dropped before their TTL for space.
pub(crate) const META_DEDUP_FORGOTTEN: &str = "dedup_forgotten_total";
/// The generation of the last write-ahead log record (or durable batch) this file holds;
/// replay applies the records after it.
pub(crate) const META_WAL_APPLIED: &str = "wal_applied_gen";
/// Schema 1 only: counters of what is stored, dropped by the migration to version 2.
pub(crate) const V1_META_COUNTERS: [&str; 4] = [
    "stored_messages",
    "stored_bytes",
    "custody_bundles",
    "custody_bytes",
];

/// Accounting overhead per stored message on top of its payload: keys, indexes and the record
/// header. Quotas count `payload + MESSAGE_OVERHEAD`.
pub(crate) const MESSAGE_OVERHEAD: u64 = 128;

/// What the dedup record of a message no longer stored counts against the node-wide budget:
/// its `dedup` and `expiry` entries (80 bytes of keys and values) as they sit in redb's
/// leaves. Measured: 200,000 records take 82 bytes each with time-ordered ids and 99 with
/// random ones (their dedup leaves split half full).
pub(crate) const DEDUP_RECORD_COST: u64 = 100;

/// What a stored message or bundle with `payload_len` bytes of payload counts against quotas.
pub(crate) fn cost(payload_len: usize) -> u64 {
    payload_len as u64 + MESSAGE_OVERHEAD
}

/// Encodes a mailbox address: recipient(32) | channel_len u8 | channel | device_len u8 | device.
pub(crate) fn encode_addr(addr: &MailboxAddr) -> Vec<u8> {
    let channel = addr.channel.as_bytes();
    let device = addr.device.as_bytes();
    let mut out = Vec::with_capacity(34 + channel.len() + device.len());
    out.extend_from_slice(addr.recipient.as_bytes());
    out.push(u8::try_from(channel.len()).unwrap_or(0));
    out.extend_from_slice(channel);
    out.push(u8::try_from(device.len()).unwrap_or(0));
    out.extend_from_slice(device);
    out
}

fn corrupt(reason: &'static str) -> StoreError {
    StoreError::Corrupt {
        table: "mailbox_addrs",
        reason,
    }
}

/// Decodes [`encode_addr`]'s output.
pub(crate) fn decode_addr(b: &[u8]) -> Result<MailboxAddr, StoreError> {
    let (recipient, rest) = b
        .split_first_chunk::<32>()
        .ok_or_else(|| corrupt("short recipient"))?;
    let (&clen, rest) = rest
        .split_first()
        .ok_or_else(|| corrupt("no channel length"))?;
    let (channel, rest) = rest
        .split_at_checked(usize::from(clen))
        .ok_or_else(|| corrupt("short channel"))?;
    let (&dlen, rest) = rest
        .split_first()
        .ok_or_else(|| corrupt("no device length"))?;
    let (device, rest) = rest
        .split_at_checked(usize::from(dlen))
        .ok_or_else(|| corrupt("short device"))?;
    if !rest.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(MailboxAddr {
        recipient: IdentityKey::from_array(*recipient),
        channel: ChannelId::from_field(channel, "channel").map_err(|_| corrupt("bad channel"))?,
        device: DeviceId::from_field(device, "device").map_err(|_| corrupt("bad device"))?,
    })
}

const RECORD_V1: u8 = 1;
const FLAG_SENDER: u8 = 1;
/// version | enqueued_at_ms | expires_at_ms | message_id | flags
const RECORD_HEADER: usize = 1 + 8 + 8 + MESSAGE_ID_LEN + 1;

/// A message as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub(crate) enqueued_at_ms: u64,
    pub(crate) expires_at_ms: u64,
    pub(crate) message_id: MessageId,
    pub(crate) sender: Option<IdentityKey>,
    pub(crate) payload: &'a [u8],
}

impl Record<'_> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let sender_len = if self.sender.is_some() { 32 } else { 0 };
        let mut out = Vec::with_capacity(RECORD_HEADER + sender_len + self.payload.len());
        out.push(RECORD_V1);
        out.extend_from_slice(&self.enqueued_at_ms.to_be_bytes());
        out.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        out.extend_from_slice(self.message_id.as_bytes());
        match &self.sender {
            Some(s) => {
                out.push(FLAG_SENDER);
                out.extend_from_slice(s.as_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(self.payload);
        out
    }
}

fn bad_record(reason: &'static str) -> StoreError {
    StoreError::Corrupt {
        table: "messages",
        reason,
    }
}

/// Decodes a stored message record.
pub(crate) fn decode_record(b: &[u8]) -> Result<Record<'_>, StoreError> {
    let (&version, rest) = b.split_first().ok_or_else(|| bad_record("empty"))?;
    if version != RECORD_V1 {
        return Err(bad_record("unknown record version"));
    }
    let (enq, rest) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| bad_record("short header"))?;
    let (exp, rest) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| bad_record("short header"))?;
    let (id, rest) = rest
        .split_first_chunk::<MESSAGE_ID_LEN>()
        .ok_or_else(|| bad_record("short header"))?;
    let (&flags, rest) = rest
        .split_first()
        .ok_or_else(|| bad_record("short header"))?;
    let (sender, payload) = if flags & FLAG_SENDER != 0 {
        let (s, p) = rest
            .split_first_chunk::<32>()
            .ok_or_else(|| bad_record("short sender"))?;
        (Some(IdentityKey::from_array(*s)), p)
    } else {
        (None, rest)
    };
    Ok(Record {
        enqueued_at_ms: u64::from_be_bytes(*enq),
        expires_at_ms: u64::from_be_bytes(*exp),
        message_id: MessageId::from_array(*id),
        sender,
        payload,
    })
}

/// Payload length of an encoded record (parsed in place; the payload is not copied).
pub(crate) fn record_payload_len(b: &[u8]) -> Result<usize, StoreError> {
    decode_record(b).map(|r| r.payload.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip_and_hostile_bytes() {
        let r = Record {
            enqueued_at_ms: 1,
            expires_at_ms: 2,
            message_id: MessageId::from_array([3; 16]),
            sender: Some(IdentityKey::from_array([4; 32])),
            payload: b"hello",
        };
        let enc = r.encode();
        assert_eq!(decode_record(&enc).unwrap(), r);
        for cut in 0..enc.len() - 5 {
            assert!(decode_record(&enc[..cut]).is_err(), "cut at {cut}");
        }
        let mut v2 = enc.clone();
        v2[0] = 2;
        assert!(decode_record(&v2).is_err());
    }

    #[test]
    fn addr_roundtrip_and_hostile_bytes() {
        let a = MailboxAddr {
            recipient: IdentityKey::from_array([9; 32]),
            channel: ChannelId::from_array([1; 16]),
            device: DeviceId::from_field(b"phone", "d").unwrap(),
        };
        let enc = encode_addr(&a);
        assert_eq!(decode_addr(&enc).unwrap(), a);
        for cut in 0..enc.len() {
            assert!(decode_addr(&enc[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = enc.clone();
        long.push(0);
        assert!(decode_addr(&long).is_err());
    }

    #[test]
    fn expiry_runs_round_trip_split_and_refuse_hostile_values() {
        let run = ExpiryRun {
            expires_at_ms: 9,
            mailbox_id: 2,
            first_seq: 10,
            ids: (1..=5u8).map(|i| [i; 16]).collect(),
        };
        let bytes = run.encode_ids();
        assert_eq!(ExpiryRun::len_of(&bytes), 5);
        assert_eq!(ExpiryRun::decode(run.key(), &bytes).unwrap(), run);
        assert!(run.continued_by(9, 2, 15));
        assert!(!run.continued_by(9, 2, 16));
        assert!(!run.continued_by(10, 2, 15));
        assert!(!run.continued_by(9, 3, 15));
        // Dropping seqs 10 and 12 leaves 11, and 13..=14.
        let pieces = run.without(|s| s == 10 || s == 12);
        let shape: Vec<_> = pieces
            .iter()
            .map(|p| (p.first_seq, p.ids.clone()))
            .collect();
        assert_eq!(
            shape,
            vec![(11, vec![[2; 16]]), (13, vec![[4; 16], [5; 16]])]
        );
        assert!(run.without(|_| true).is_empty());
        assert_eq!(run.without(|_| false), vec![run.clone()]);
        for hostile in [&[][..], &[1; 15][..], &[1; 33][..]] {
            assert!(matches!(
                ExpiryRun::decode((1, 1, 1), hostile),
                Err(StoreError::Corrupt {
                    table: "expiry_runs",
                    ..
                })
            ));
        }
        let full = ExpiryRun {
            ids: vec![[0; 16]; MAX_RUN],
            ..run
        };
        assert!(!full.continued_by(9, 2, 10 + MAX_RUN as u64));
        // A damaged key at the end of the seq space neither panics nor wraps around.
        let last = ExpiryRun {
            first_seq: u64::MAX,
            ids: vec![[1; 16], [2; 16]],
            ..full
        };
        assert_eq!(last.entries().count(), 2);
        assert!(last.entries().all(|(s, _)| s == u64::MAX));
        assert_eq!(last.without(|_| false).len(), 2);
    }
}
