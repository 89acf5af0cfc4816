//! Bundles in custody: messages in transit through the mesh, held durably until the next hop
//! has them, and the moves between custody and mailboxes (delivery to a user at home here; a
//! user's mail following them elsewhere).

use ferry_proto::types::{BundleDigest, IdentityKey, MailboxAddr, MessageId};

use crate::StoreError;
use crate::schema;
use crate::store::Prepared;

/// A bundle as stored in custody.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleRecord {
    /// Target mailbox (recipient, channel, device).
    pub mailbox: MailboxAddr,
    /// End-to-end message id.
    pub message_id: MessageId,
    /// Sender stamped by the first node (None = sealed).
    pub sender: Option<IdentityKey>,
    /// When this node accepted it, unix ms.
    pub received_at_ms: u64,
    /// Absolute expiry on this node's clock, unix ms.
    pub expires_at_ms: u64,
    /// Hops taken so far.
    pub hop_count: u8,
    /// Hops allowed.
    pub hop_limit: u8,
    /// The node that handed it over (None: a local client, or an evicted mailbox).
    pub from: Option<[u8; 32]>,
    /// Opaque payload.
    pub payload: Vec<u8>,
}

impl BundleRecord {
    /// The bundle's digest.
    pub fn digest(&self) -> BundleDigest {
        BundleDigest::of(&self.message_id, &self.mailbox.recipient)
    }

    /// Its summary.
    pub fn summary(&self) -> CustodyEntry {
        CustodyEntry {
            digest: self.digest(),
            recipient: self.mailbox.recipient,
            message_id: self.message_id,
            expires_at_ms: self.expires_at_ms,
            size: u32::try_from(self.payload.len()).unwrap_or(u32::MAX),
            from: self.from,
            hop_count: self.hop_count,
            hop_limit: self.hop_limit,
        }
    }

    /// The bundle as a message of its mailbox, received at `now_ms`.
    pub(crate) fn prepare(&self, now_ms: u64) -> Prepared {
        Prepared::new(
            self.mailbox,
            &schema::Record {
                enqueued_at_ms: now_ms,
                expires_at_ms: self.expires_at_ms,
                message_id: self.message_id,
                sender: self.sender,
                payload: &self.payload,
            },
        )
    }
}

/// What the mesh core needs to know of a bundle in custody.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CustodyEntry {
    /// Digest.
    pub digest: BundleDigest,
    /// Recipient.
    pub recipient: IdentityKey,
    /// The message id (time-ordered from senders that follow qpq: the order they sent in).
    pub message_id: MessageId,
    /// Absolute expiry, unix ms (this node's clock).
    pub expires_at_ms: u64,
    /// Payload bytes.
    pub size: u32,
    /// Who handed it over.
    pub from: Option<[u8; 32]>,
    /// Hops taken so far.
    pub hop_count: u8,
    /// Hops allowed.
    pub hop_limit: u8,
}

/// The result of putting a bundle into custody (or straight into a mailbox).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CustodyOutcome {
    /// Stored in custody.
    Stored,
    /// Stored in the recipient's mailbox here, with this seq.
    Delivered(u64),
    /// Already in custody, or already delivered to a mailbox here: nothing stored.
    Duplicate,
    /// Expired before it could be stored.
    Expired,
    /// No room (quota or disk): nothing stored.
    Full,
}

/// A bundle moved from custody into a mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The bundle.
    pub digest: BundleDigest,
    /// Where it went.
    pub mailbox: MailboxAddr,
    /// Its seq there; `None` when the mailbox already had it (dedup).
    pub seq: Option<u64>,
}

/// The outcome of moving bundles to mailboxes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliverReport {
    /// Moved (or found already delivered).
    pub delivered: Vec<Delivery>,
    /// Still in custody: their mailbox is over its quota, retry later.
    pub refused: Vec<BundleDigest>,
    /// Not in custody (already moved, deleted or expired).
    pub missing: Vec<BundleDigest>,
}

const CUSTODY_V1: u8 = 1;
const F_SENDER: u8 = 1;
const F_FROM: u8 = 2;

fn bad(reason: &'static str) -> StoreError {
    StoreError::Corrupt {
        table: "custody",
        reason,
    }
}

pub(crate) fn encode(r: &BundleRecord) -> Vec<u8> {
    let addr = schema::encode_addr(&r.mailbox);
    let mut out =
        Vec::with_capacity(1 + 1 + addr.len() + 16 + 1 + 64 + 8 + 8 + 2 + r.payload.len());
    out.push(CUSTODY_V1);
    out.push(u8::try_from(addr.len()).unwrap_or(0));
    out.extend_from_slice(&addr);
    out.extend_from_slice(r.message_id.as_bytes());
    let flags =
        if r.sender.is_some() { F_SENDER } else { 0 } | if r.from.is_some() { F_FROM } else { 0 };
    out.push(flags);
    if let Some(s) = &r.sender {
        out.extend_from_slice(s.as_bytes());
    }
    if let Some(f) = &r.from {
        out.extend_from_slice(f);
    }
    out.extend_from_slice(&r.received_at_ms.to_be_bytes());
    out.extend_from_slice(&r.expires_at_ms.to_be_bytes());
    out.push(r.hop_count);
    out.push(r.hop_limit);
    out.extend_from_slice(&r.payload);
    out
}

pub(crate) fn decode(b: &[u8]) -> Result<BundleRecord, StoreError> {
    let (&v, rest) = b.split_first().ok_or_else(|| bad("empty"))?;
    if v != CUSTODY_V1 {
        return Err(bad("unknown record version"));
    }
    let (&alen, rest) = rest.split_first().ok_or_else(|| bad("short"))?;
    let (addr, rest) = rest
        .split_at_checked(usize::from(alen))
        .ok_or_else(|| bad("short address"))?;
    let mailbox = schema::decode_addr(addr)?;
    let (mid, rest) = rest
        .split_first_chunk::<16>()
        .ok_or_else(|| bad("short id"))?;
    let (&flags, mut rest) = rest.split_first().ok_or_else(|| bad("short flags"))?;
    let take32 = |rest: &mut &[u8]| -> Result<[u8; 32], StoreError> {
        let (k, r) = rest
            .split_first_chunk::<32>()
            .ok_or_else(|| bad("short key"))?;
        *rest = r;
        Ok(*k)
    };
    let sender = if flags & F_SENDER != 0 {
        Some(IdentityKey::from_array(take32(&mut rest)?))
    } else {
        None
    };
    let from = if flags & F_FROM != 0 {
        Some(take32(&mut rest)?)
    } else {
        None
    };
    let (rcv, rest) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| bad("short time"))?;
    let (exp, rest) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| bad("short time"))?;
    let (&hop_count, rest) = rest.split_first().ok_or_else(|| bad("short hops"))?;
    let (&hop_limit, payload) = rest.split_first().ok_or_else(|| bad("short hops"))?;
    Ok(BundleRecord {
        mailbox,
        message_id: MessageId::from_array(*mid),
        sender,
        received_at_ms: u64::from_be_bytes(*rcv),
        expires_at_ms: u64::from_be_bytes(*exp),
        hop_count,
        hop_limit,
        from,
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::types::{ChannelId, DeviceId};

    #[test]
    fn roundtrip_and_truncation() {
        let r = BundleRecord {
            mailbox: MailboxAddr {
                recipient: IdentityKey::from_array([1; 32]),
                channel: ChannelId::from_array([2; 16]),
                device: DeviceId::from_field(b"dev", "d").unwrap(),
            },
            message_id: MessageId::from_array([3; 16]),
            sender: Some(IdentityKey::from_array([4; 32])),
            received_at_ms: 5,
            expires_at_ms: 6,
            hop_count: 7,
            hop_limit: 8,
            from: Some([9; 32]),
            payload: b"payload".to_vec(),
        };
        let enc = encode(&r);
        assert_eq!(decode(&enc).unwrap(), r);
        for cut in 0..enc.len() - 7 {
            assert!(decode(&enc[..cut]).is_err(), "cut {cut}");
        }
        let plain = BundleRecord {
            sender: None,
            from: None,
            ..r
        };
        assert_eq!(decode(&encode(&plain)).unwrap(), plain);
    }
}
