//! Validated domain types. Protobuf structs are transport types only: they are converted into
//! these with `TryFrom` at the boundary, and nothing past the boundary sees unchecked bytes.

use std::fmt;
use std::str::FromStr;

use data_encoding::{BASE64_NOPAD, HEXLOWER_PERMISSIVE};
use sha2::{Digest, Sha256};

use crate::ProtoError;
use crate::limits::{
    CHANNEL_ID_LEN, DEFAULT_FETCH_LIMIT, FINGERPRINT_LEN, HYBRID_PUBLIC_KEY_LEN, IDENTITY_KEY_LEN,
    MAX_BATCH_RECIPIENTS, MAX_BATCH_STORED_BYTES, MAX_DEVICE_ID_LEN, MAX_ENQUEUE_MANY,
    MAX_FETCH_LIMIT, MAX_FETCH_WAIT_MS, MAX_KEYS_PER_FETCH, MAX_MESSAGE_LEN, MESSAGE_ID_LEN,
    MLKEM768_EK_LEN, NONCE_LEN, SESSION_TOKEN_LEN, SIGNATURE_LEN, X25519_PUBLIC_LEN,
};
use crate::qpq::v1 as pb;

fn fixed<const N: usize>(
    bytes: &[u8],
    field: &'static str,
    expected: &'static str,
) -> Result<[u8; N], ProtoError> {
    <[u8; N]>::try_from(bytes).map_err(|_| ProtoError::BadLength {
        field,
        expected,
        got: bytes.len(),
    })
}

/// An Ed25519 public key naming a user: the index of mailboxes and keys. 32 bytes.
///
/// Being an `IdentityKey` says nothing about being a valid curve point; code that verifies
/// signatures checks that itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey([u8; IDENTITY_KEY_LEN]);

impl IdentityKey {
    /// Wraps 32 bytes.
    pub const fn from_array(bytes: [u8; IDENTITY_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Checks the length of a protobuf field.
    pub fn from_field(bytes: &[u8], field: &'static str) -> Result<Self, ProtoError> {
        fixed(bytes, field, "32 bytes (an Ed25519 public key)").map(Self)
    }

    /// The raw key.
    pub fn as_bytes(&self) -> &[u8; IDENTITY_KEY_LEN] {
        &self.0
    }

    /// SHA-256 of the key.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(Sha256::digest(self.0).into())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        HEXLOWER_PERMISSIVE.encode(&self.0)
    }
}

impl fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", self.to_hex())
    }
}

impl FromStr for IdentityKey {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 2 * IDENTITY_KEY_LEN {
            return Err(ProtoError::Parse {
                what: "identity key",
                reason: "expected 64 hex characters",
            });
        }
        let bytes = HEXLOWER_PERMISSIVE
            .decode(s.as_bytes())
            .map_err(|_| ProtoError::Parse {
                what: "identity key",
                reason: "not hexadecimal",
            })?;
        Self::from_field(&bytes, "identity key")
    }
}

/// SHA-256 of an identity key (or of a certificate). Shown as `SHA256:<base64>`, like OpenSSH.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; FINGERPRINT_LEN]);

impl Fingerprint {
    /// Prefix of the textual form.
    pub const PREFIX: &'static str = "SHA256:";

    /// Wraps 32 bytes.
    pub const fn from_array(bytes: [u8; FINGERPRINT_LEN]) -> Self {
        Self(bytes)
    }

    /// SHA-256 of arbitrary bytes (for example a DER certificate).
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Checks the length of a protobuf field.
    pub fn from_field(bytes: &[u8], field: &'static str) -> Result<Self, ProtoError> {
        fixed(bytes, field, "32 bytes (a SHA-256 fingerprint)").map(Self)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; FINGERPRINT_LEN] {
        &self.0
    }

    /// The first 8 bytes as hex: a short id for logs.
    pub fn short(&self) -> String {
        HEXLOWER_PERMISSIVE.encode(self.0.get(..8).unwrap_or(&self.0))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, BASE64_NOPAD.encode(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b64 = s
            .trim()
            .strip_prefix(Self::PREFIX)
            .ok_or(ProtoError::Parse {
                what: "fingerprint",
                reason: "expected SHA256:<base64>",
            })?;
        let bytes = BASE64_NOPAD
            .decode(b64.as_bytes())
            .map_err(|_| ProtoError::Parse {
                what: "fingerprint",
                reason: "not unpadded base64",
            })?;
        Self::from_field(&bytes, "fingerprint")
    }
}

/// A node's mesh identity: its Ed25519 public key (iroh's endpoint id). 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Wraps 32 bytes.
    pub const fn from_array(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Checks the length of a protobuf field.
    pub fn from_field(bytes: &[u8], field: &'static str) -> Result<Self, ProtoError> {
        fixed(bytes, field, "32 bytes (a node key)").map(Self)
    }

    /// The raw key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        HEXLOWER_PERMISSIVE.encode(&self.0)
    }

    /// The first 6 bytes as hex (12 digits): the short form of a node id, the same in logs,
    /// tables and `ferry status`.
    pub fn short(&self) -> String {
        HEXLOWER_PERMISSIVE.encode(self.0.get(..6).unwrap_or(&self.0))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(ProtoError::Parse {
                what: "node id",
                reason: "expected 64 hex characters",
            });
        }
        let bytes = HEXLOWER_PERMISSIVE
            .decode(s.as_bytes())
            .map_err(|_| ProtoError::Parse {
                what: "node id",
                reason: "not hexadecimal",
            })?;
        Self::from_field(&bytes, "node id")
    }
}

/// Identifies a bundle in the mesh: SHA-256(message_id || recipient_key), first 16 bytes.
/// BatchEnqueue gives many recipients one message id, so the id alone is not enough.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BundleDigest([u8; 16]);

impl BundleDigest {
    /// The digest of a message for a recipient.
    pub fn of(message_id: &MessageId, recipient: &IdentityKey) -> Self {
        let mut h = Sha256::new();
        h.update(message_id.as_bytes());
        h.update(recipient.as_bytes());
        let full: [u8; 32] = h.finalize().into();
        let mut d = [0u8; 16];
        d.copy_from_slice(full.get(..16).unwrap_or(&[0u8; 16]));
        Self(d)
    }

    /// Wraps 16 bytes.
    pub const fn from_array(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// Checks the length of a protobuf field.
    pub fn from_field(bytes: &[u8], field: &'static str) -> Result<Self, ProtoError> {
        fixed(bytes, field, "16 bytes (a bundle digest)").map(Self)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for BundleDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Digest({})",
            HEXLOWER_PERMISSIVE.encode(self.0.get(..6).unwrap_or(&self.0))
        )
    }
}

/// The client-chosen idempotency key of a message. 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId([u8; MESSAGE_ID_LEN]);

impl MessageId {
    /// Wraps 16 bytes.
    pub const fn from_array(bytes: [u8; MESSAGE_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// Checks the length of a protobuf field.
    pub fn from_field(bytes: &[u8], field: &'static str) -> Result<Self, ProtoError> {
        fixed(bytes, field, "16 bytes").map(Self)
    }

    /// An optional id: empty means "none given".
    pub fn from_optional_field(
        bytes: &[u8],
        field: &'static str,
    ) -> Result<Option<Self>, ProtoError> {
        if bytes.is_empty() {
            Ok(None)
        } else {
            Self::from_field(bytes, field).map(Some)
        }
    }

    /// The raw id.
    pub fn as_bytes(&self) -> &[u8; MESSAGE_ID_LEN] {
        &self.0
    }

    /// A time-ordered id in the UUIDv7 layout: the unix time in milliseconds (48 bits,
    /// big-endian), the version and variant bits, and 74 bits of `random`. Ids made close in
    /// time sort close together, so a node's dedup index takes a new one near the pages it
    /// just wrote instead of rewriting a random page of its B-tree for each message (see
    /// docs/benchmarks.md). The time is when the id was made, which a node mostly learns anyway
    /// from when the message arrives; a client that must not tell when a message was written
    /// (composed offline long before it is sent, say) can use random ids and costs the nodes
    /// more flash writes.
    pub fn time_ordered(unix_ms: u64, random: [u8; 10]) -> Self {
        let mut b = [0u8; MESSAGE_ID_LEN];
        let ms = (unix_ms & 0xffff_ffff_ffff).to_be_bytes();
        let (time, rest) = b.split_at_mut(6);
        time.copy_from_slice(ms.get(2..).unwrap_or(&[0; 6]));
        let [r0, r1, r2, tail @ ..] = random;
        let (head, last) = rest.split_at_mut(3);
        head.copy_from_slice(&[0x70 | (r0 & 0x0f), r1, 0x80 | (r2 & 0x3f)]);
        last.copy_from_slice(&tail);
        Self(b)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&HEXLOWER_PERMISSIVE.encode(&self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// A channel: the default (empty on the wire) or a 16-byte id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct ChannelId(Option<[u8; CHANNEL_ID_LEN]>);

impl ChannelId {
    /// The default channel.
    pub const DEFAULT: ChannelId = ChannelId(None);

    /// A named channel.
    pub const fn from_array(bytes: [u8; CHANNEL_ID_LEN]) -> Self {
        Self(Some(bytes))
    }

    /// Empty or 16 bytes.
    pub fn from_field(bytes: &[u8], field: &'static str) -> Result<Self, ProtoError> {
        if bytes.is_empty() {
            Ok(Self(None))
        } else {
            fixed(bytes, field, "empty or 16 bytes").map(|b| Self(Some(b)))
        }
    }

    /// The wire form: empty for the default channel.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Some(b) => b,
            None => &[],
        }
    }
}

/// A device queue of a recipient: the default (empty) or up to 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct DeviceId {
    len: u8,
    buf: [u8; MAX_DEVICE_ID_LEN],
}

impl DeviceId {
    /// The default device queue.
    pub const DEFAULT: DeviceId = DeviceId {
        len: 0,
        buf: [0; MAX_DEVICE_ID_LEN],
    };

    /// Empty or up to 32 bytes.
    pub fn from_field(bytes: &[u8], field: &'static str) -> Result<Self, ProtoError> {
        let mut buf = [0u8; MAX_DEVICE_ID_LEN];
        match buf.get_mut(..bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                Ok(Self {
                    len: u8::try_from(bytes.len()).unwrap_or(u8::MAX),
                    buf,
                })
            }
            None => Err(ProtoError::BadLength {
                field,
                expected: "at most 32 bytes",
                got: bytes.len(),
            }),
        }
    }

    /// The wire form: empty for the default queue.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

/// One mailbox: the FIFO of a (recipient, channel, device).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MailboxAddr {
    /// The recipient's identity key.
    pub recipient: IdentityKey,
    /// The channel.
    pub channel: ChannelId,
    /// The device queue.
    pub device: DeviceId,
}

impl MailboxAddr {
    /// The default channel and device queue of a recipient.
    pub fn default_for(recipient: IdentityKey) -> Self {
        Self {
            recipient,
            channel: ChannelId::DEFAULT,
            device: DeviceId::DEFAULT,
        }
    }

    fn from_fields(recipient: &[u8], channel: &[u8], device: &[u8]) -> Result<Self, ProtoError> {
        Ok(Self {
            recipient: IdentityKey::from_field(recipient, "recipient_key")?,
            channel: ChannelId::from_field(channel, "channel_id")?,
            device: DeviceId::from_field(device, "device_id")?,
        })
    }
}

/// A hybrid public key: X25519 (32 bytes) followed by an ML-KEM-768 encapsulation key (1184).
#[derive(Clone, PartialEq, Eq)]
pub struct HybridPublicKey(Box<[u8; HYBRID_PUBLIC_KEY_LEN]>);

impl HybridPublicKey {
    /// Checks the length of a protobuf field.
    pub fn from_field(bytes: &[u8], field: &'static str) -> Result<Self, ProtoError> {
        let boxed: Box<[u8; HYBRID_PUBLIC_KEY_LEN]> = bytes
            .to_vec()
            .into_boxed_slice()
            .try_into()
            .map_err(|_| ProtoError::BadLength {
                field,
                expected: "1216 bytes (X25519 32 + ML-KEM-768 1184)",
                got: bytes.len(),
            })?;
        Ok(Self(boxed))
    }

    /// Joins the two public keys.
    pub fn from_parts(x25519: &[u8; X25519_PUBLIC_LEN], mlkem768: &[u8; MLKEM768_EK_LEN]) -> Self {
        let mut key = Box::new([0u8; HYBRID_PUBLIC_KEY_LEN]);
        let (x, k) = key.split_at_mut(X25519_PUBLIC_LEN);
        x.copy_from_slice(x25519);
        k.copy_from_slice(mlkem768);
        Self(key)
    }

    /// The raw key.
    pub fn as_bytes(&self) -> &[u8; HYBRID_PUBLIC_KEY_LEN] {
        &self.0
    }

    /// The X25519 part.
    pub fn x25519(&self) -> [u8; X25519_PUBLIC_LEN] {
        let (x, _) = self.0.split_at(X25519_PUBLIC_LEN);
        let mut out = [0u8; X25519_PUBLIC_LEN];
        out.copy_from_slice(x);
        out
    }

    /// The ML-KEM-768 encapsulation key part.
    pub fn mlkem768(&self) -> &[u8] {
        let (_, k) = self.0.split_at(X25519_PUBLIC_LEN);
        k
    }
}

impl fmt::Debug for HybridPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HybridPublicKey({})",
            Fingerprint::of(&self.0[..]).short()
        )
    }
}

/// An Ed25519 signature, 64 bytes (not yet verified).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

/// An auth challenge nonce, 32 bytes.
pub type Nonce = [u8; NONCE_LEN];

/// A session token, 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionToken(pub [u8; SESSION_TOKEN_LEN]);

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(..)")
    }
}

/// Resolves a requested TTL: 0 means the node's default (capped at its maximum); above the
/// maximum is an error, so a client never believes in retention it will not get.
/// [`crate::limits::DEFAULT_TTL_SECS`] is the usual default.
pub fn resolve_ttl(
    ttl_secs: u32,
    default_ttl_secs: u32,
    max_ttl_secs: u32,
) -> Result<u32, ProtoError> {
    match ttl_secs {
        0 => Ok(default_ttl_secs.clamp(1, max_ttl_secs.max(1))),
        t if t > max_ttl_secs => Err(ProtoError::TtlTooLong {
            got: t,
            max: max_ttl_secs,
        }),
        t => Ok(t),
    }
}

fn resolve_limit(limit: u32) -> u32 {
    match limit {
        0 => DEFAULT_FETCH_LIMIT,
        l => l.min(MAX_FETCH_LIMIT),
    }
}

fn payload(bytes: Vec<u8>) -> Result<Vec<u8>, ProtoError> {
    if bytes.is_empty() {
        return Err(ProtoError::Empty { field: "payload" });
    }
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(ProtoError::PayloadTooLarge {
            len: bytes.len() as u64,
            max: MAX_MESSAGE_LEN as u64,
        });
    }
    Ok(bytes)
}

/// A validated Enqueue (200). `ttl_secs` is still raw: the node resolves it against its policy.
#[derive(Clone, Debug)]
pub struct Enqueue {
    /// Target mailbox.
    pub mailbox: MailboxAddr,
    /// Opaque payload, 1 byte to [`MAX_MESSAGE_LEN`].
    pub payload: Vec<u8>,
    /// Requested TTL in seconds, 0 = node default.
    pub ttl_secs: u32,
    /// Idempotency key, if the client gave one.
    pub message_id: Option<MessageId>,
    /// Do not record the sender.
    pub sealed_sender: bool,
}

impl TryFrom<pb::EnqueueRequest> for Enqueue {
    type Error = ProtoError;
    fn try_from(r: pb::EnqueueRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            mailbox: MailboxAddr::from_fields(&r.recipient_key, &r.channel_id, &r.device_id)?,
            message_id: MessageId::from_optional_field(&r.message_id, "message_id")?,
            payload: payload(r.payload)?,
            ttl_secs: r.ttl_secs,
            sealed_sender: r.sealed_sender,
        })
    }
}

/// A validated EnqueueMany (812, Ferry): 1..=256 Enqueues, in request order. An invalid one
/// fails the whole request as [`ProtoError::Item`], naming its index.
#[derive(Clone, Debug)]
pub struct EnqueueMany {
    /// The messages, in request order.
    pub messages: Vec<Enqueue>,
}

impl TryFrom<pb::EnqueueManyRequest> for EnqueueMany {
    type Error = ProtoError;
    fn try_from(r: pb::EnqueueManyRequest) -> Result<Self, Self::Error> {
        if r.messages.is_empty() {
            return Err(ProtoError::Empty { field: "messages" });
        }
        if r.messages.len() > MAX_ENQUEUE_MANY {
            return Err(ProtoError::TooMany {
                field: "messages",
                max: MAX_ENQUEUE_MANY,
                got: r.messages.len(),
            });
        }
        let messages = r
            .messages
            .into_iter()
            .enumerate()
            .map(|(index, m)| {
                Enqueue::try_from(m).map_err(|e| ProtoError::Item {
                    field: "messages",
                    index,
                    source: Box::new(e),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { messages })
    }
}

/// A validated BatchEnqueue (205): one payload to 1..=256 recipients (default channel per
/// recipient unless `channel_id` is set; device queues are not addressed by batches).
#[derive(Clone, Debug)]
pub struct BatchEnqueue {
    /// Recipients, in request order.
    pub recipients: Vec<IdentityKey>,
    /// Channel for all recipients.
    pub channel: ChannelId,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// Requested TTL in seconds, 0 = node default.
    pub ttl_secs: u32,
    /// Idempotency key, if given; deduplicated per recipient mailbox.
    pub message_id: Option<MessageId>,
    /// Do not record the sender.
    pub sealed_sender: bool,
}

impl TryFrom<pb::BatchEnqueueRequest> for BatchEnqueue {
    type Error = ProtoError;
    fn try_from(r: pb::BatchEnqueueRequest) -> Result<Self, Self::Error> {
        if r.recipient_keys.is_empty() {
            return Err(ProtoError::Empty {
                field: "recipient_keys",
            });
        }
        if r.recipient_keys.len() > MAX_BATCH_RECIPIENTS {
            return Err(ProtoError::TooMany {
                field: "recipient_keys",
                max: MAX_BATCH_RECIPIENTS,
                got: r.recipient_keys.len(),
            });
        }
        let total = (r.payload.len() as u64).saturating_mul(r.recipient_keys.len() as u64);
        if total > MAX_BATCH_STORED_BYTES as u64 {
            return Err(ProtoError::BatchTooLarge {
                recipients: r.recipient_keys.len(),
                payload: r.payload.len(),
                total,
                max: MAX_BATCH_STORED_BYTES as u64,
            });
        }
        let recipients = r
            .recipient_keys
            .iter()
            .map(|k| IdentityKey::from_field(k, "recipient_keys"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            recipients,
            channel: ChannelId::from_field(&r.channel_id, "channel_id")?,
            message_id: MessageId::from_optional_field(&r.message_id, "message_id")?,
            payload: payload(r.payload)?,
            ttl_secs: r.ttl_secs,
            sealed_sender: r.sealed_sender,
        })
    }
}

/// A validated Fetch (201) or Peek (203).
#[derive(Clone, Copy, Debug)]
pub struct MailboxRead {
    /// Mailbox to read.
    pub mailbox: MailboxAddr,
    /// Envelopes at most (0 on the wire became the default; capped at the maximum).
    pub limit: u32,
}

impl TryFrom<pb::FetchRequest> for MailboxRead {
    type Error = ProtoError;
    fn try_from(r: pb::FetchRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            mailbox: MailboxAddr::from_fields(&r.recipient_key, &r.channel_id, &r.device_id)?,
            limit: resolve_limit(r.limit),
        })
    }
}

impl TryFrom<pb::PeekRequest> for MailboxRead {
    type Error = ProtoError;
    fn try_from(r: pb::PeekRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            mailbox: MailboxAddr::from_fields(&r.recipient_key, &r.channel_id, &r.device_id)?,
            limit: resolve_limit(r.limit),
        })
    }
}

/// A validated FetchWait (202).
#[derive(Clone, Copy, Debug)]
pub struct FetchWait {
    /// What to read.
    pub read: MailboxRead,
    /// How long to wait for a message, capped at [`MAX_FETCH_WAIT_MS`]; 0 = like Fetch.
    pub timeout_ms: u64,
}

impl TryFrom<pb::FetchWaitRequest> for FetchWait {
    type Error = ProtoError;
    fn try_from(r: pb::FetchWaitRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            read: MailboxRead {
                mailbox: MailboxAddr::from_fields(&r.recipient_key, &r.channel_id, &r.device_id)?,
                limit: resolve_limit(r.limit),
            },
            timeout_ms: r.timeout_ms.min(MAX_FETCH_WAIT_MS),
        })
    }
}

/// A validated Ack (204).
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    /// Mailbox to acknowledge in.
    pub mailbox: MailboxAddr,
    /// Every message with `seq <= seq_up_to` is deleted.
    pub seq_up_to: u64,
}

impl TryFrom<pb::AckRequest> for Ack {
    type Error = ProtoError;
    fn try_from(r: pb::AckRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            mailbox: MailboxAddr::from_fields(&r.recipient_key, &r.channel_id, &r.device_id)?,
            seq_up_to: r.seq_up_to,
        })
    }
}

/// A validated UploadHybridKey (302).
#[derive(Clone, Debug)]
pub struct UploadHybridKey {
    /// Owner of the key; must be the connection's identity.
    pub identity: IdentityKey,
    /// The key.
    pub key: HybridPublicKey,
}

impl TryFrom<pb::UploadHybridKeyRequest> for UploadHybridKey {
    type Error = ProtoError;
    fn try_from(r: pb::UploadHybridKeyRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            identity: IdentityKey::from_field(&r.identity_key, "identity_key")?,
            key: HybridPublicKey::from_field(&r.hybrid_public_key, "hybrid_public_key")?,
        })
    }
}

/// A validated FetchHybridKey (303): by identity key, or (Ferry) by fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HybridKeyLookup {
    /// By the identity key.
    Identity(IdentityKey),
    /// By SHA-256 of the identity key.
    Fingerprint(Fingerprint),
}

impl TryFrom<pb::FetchHybridKeyRequest> for HybridKeyLookup {
    type Error = ProtoError;
    fn try_from(r: pb::FetchHybridKeyRequest) -> Result<Self, Self::Error> {
        if !r.identity_key.is_empty() {
            IdentityKey::from_field(&r.identity_key, "identity_key").map(Self::Identity)
        } else if !r.fingerprint.is_empty() {
            Fingerprint::from_field(&r.fingerprint, "fingerprint").map(Self::Fingerprint)
        } else {
            Err(ProtoError::Empty {
                field: "identity_key",
            })
        }
    }
}

/// A validated FetchHybridKeys (304).
#[derive(Clone, Debug)]
pub struct FetchHybridKeys {
    /// Identities, in request order.
    pub identities: Vec<IdentityKey>,
}

impl TryFrom<pb::FetchHybridKeysRequest> for FetchHybridKeys {
    type Error = ProtoError;
    fn try_from(r: pb::FetchHybridKeysRequest) -> Result<Self, Self::Error> {
        if r.identity_keys.len() > MAX_KEYS_PER_FETCH {
            return Err(ProtoError::TooMany {
                field: "identity_keys",
                max: MAX_KEYS_PER_FETCH,
                got: r.identity_keys.len(),
            });
        }
        let identities = r
            .identity_keys
            .iter()
            .map(|k| IdentityKey::from_field(k, "identity_keys"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { identities })
    }
}

/// A validated AuthResponse (105). The signature is not verified here.
#[derive(Clone, Copy, Debug)]
pub struct AuthProof {
    /// The identity being proved.
    pub identity: IdentityKey,
    /// Signature over [`crate::transcript::auth_transcript`].
    pub signature: Signature,
}

impl TryFrom<pb::AuthResponseRequest> for AuthProof {
    type Error = ProtoError;
    fn try_from(r: pb::AuthResponseRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            identity: IdentityKey::from_field(&r.identity_key, "identity_key")?,
            signature: Signature(fixed(&r.signature, "signature", "64 bytes (Ed25519)")?),
        })
    }
}

impl TryFrom<pb::ResumeSessionRequest> for SessionToken {
    type Error = ProtoError;
    fn try_from(r: pb::ResumeSessionRequest) -> Result<Self, Self::Error> {
        fixed(&r.session_token, "session_token", "32 bytes").map(SessionToken)
    }
}
