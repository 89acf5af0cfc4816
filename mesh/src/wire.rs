//! Link messages as validated domain types, converted from and to the `ferry.mesh.v1` protobuf
//! at the boundary. Every list a peer sends is bounded here.

use ferry_proto::ProtoError;
use ferry_proto::bounded::RepeatedLimit;
use ferry_proto::limits::{MAX_BROADCAST_PAYLOAD, MAX_MESSAGE_LEN, TOPIC_LEN};
use ferry_proto::mesh::v1 as pb;
use ferry_proto::types::{
    BundleDigest, ChannelId, DeviceId, HybridPublicKey, IdentityKey, MessageId, NodeId,
};

/// Route entries in one update at most.
pub const MAX_ROUTES_PER_UPDATE: usize = 4096;
/// Presence claims in one batch at most.
pub const MAX_PRESENCE_PER_BATCH: usize = 256;
/// Presence stamps or wanted users in one summary at most.
pub const MAX_PRESENCE_STAMPS: usize = 8192;
/// Digests in one offer, want or ack at most.
pub const MAX_DIGESTS: usize = 1024;
/// Peer records in one exchange at most.
pub const MAX_PEERS_PER_EXCHANGE: usize = 64;
/// Addresses per peer record at most.
pub const MAX_ADDRS_PER_PEER: usize = 8;
/// Route metric meaning "unreachable".
pub const INFINITY: u16 = 0xFFFF;

/// First message of each side of a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version.
    pub version: u32,
    /// The sender's node key.
    pub node_id: NodeId,
    /// qpq client port (0 = none).
    pub client_port: u16,
    /// SHA-256 of its client certificate (empty = none).
    pub client_cert_fingerprint: Vec<u8>,
    /// Largest bundle payload it accepts.
    pub max_bundle_bytes: u32,
    /// "edge" or "hub".
    pub role: String,
}

/// One distance-vector route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination node.
    pub node: NodeId,
    /// Origin's sequence number.
    pub seqno: u32,
    /// Metric as advertised (hop count; [`INFINITY`] retracts).
    pub metric: u16,
    /// The destination is a federation hub: the default route leads to the nearest one.
    pub hub: bool,
}

/// A user's signed presence claim, not yet verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The user.
    pub user: IdentityKey,
    /// The node the user attached to.
    pub node: NodeId,
    /// The user's clock when attaching.
    pub timestamp_ms: u64,
    /// The user's hybrid public key.
    pub hybrid: HybridPublicKey,
    /// Ed25519 signature by `user` over the presence transcript.
    pub signature: [u8; 64],
}

/// A message in transit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// End-to-end message id.
    pub message_id: MessageId,
    /// Recipient.
    pub recipient: IdentityKey,
    /// Channel of the recipient's mailbox.
    pub channel: ChannelId,
    /// Device queue of the recipient's mailbox.
    pub device: DeviceId,
    /// Remaining lifetime when sent.
    pub lifetime_ms: u64,
    /// Hops taken so far.
    pub hop_count: u8,
    /// Hops allowed.
    pub hop_limit: u8,
    /// Sender stamped by the first node (None = sealed).
    pub sender: Option<IdentityKey>,
    /// Opaque payload.
    pub payload: Vec<u8>,
}

impl Bundle {
    /// The bundle's digest.
    pub fn digest(&self) -> BundleDigest {
        BundleDigest::of(&self.message_id, &self.recipient)
    }
}

/// What a receiver did with a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AckOutcome {
    /// Durable at the receiver.
    Accepted,
    /// Already there (or delivered).
    Duplicate,
    /// Dropped: expired or over its hop limit.
    Expired,
    /// No room now; keep it and retry later.
    Refused,
}

/// A peer record from peer exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer.
    pub node: NodeId,
    /// Its mesh addresses.
    pub addrs: Vec<std::net::SocketAddr>,
    /// Since the sender last had a link to it.
    pub age_ms: u64,
}

/// A topic broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastMsg {
    /// Topic id.
    pub topic: [u8; TOPIC_LEN],
    /// Dedup key.
    pub message_id: MessageId,
    /// Hops taken.
    pub hop_count: u8,
    /// Hops allowed.
    pub hop_limit: u8,
    /// Remaining lifetime.
    pub lifetime_ms: u64,
    /// Sealed payload.
    pub payload: Vec<u8>,
}

/// A validated link message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkMsg {
    /// See [`Hello`].
    Hello(Hello),
    /// Distance-vector routes.
    Routes(Vec<RouteEntry>),
    /// Ask for a route to `node` with at least `seqno`.
    SeqnoRequest {
        /// Destination.
        node: NodeId,
        /// Wanted sequence number.
        seqno: u32,
        /// Remaining relay hops.
        hop_count: u8,
    },
    /// Presence claims.
    Presence(Vec<Claim>),
    /// What the sender knows about presence.
    PresenceSummary(Vec<(IdentityKey, u64)>),
    /// Claims the sender wants.
    PresenceWant(Vec<IdentityKey>),
    /// Bundles the sender would hand over.
    Offer(Vec<BundleDigest>),
    /// Offered bundles the receiver wants.
    Want(Vec<BundleDigest>),
    /// A bundle.
    Bundle(Bundle),
    /// Custody acknowledgements.
    Ack(Vec<(BundleDigest, AckOutcome)>),
    /// Peer exchange.
    Peers(Vec<PeerRecord>),
    /// Topic broadcast.
    Broadcast(BroadcastMsg),
}

impl LinkMsg {
    /// Name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            LinkMsg::Hello(_) => "hello",
            LinkMsg::Routes(_) => "routes",
            LinkMsg::SeqnoRequest { .. } => "seqno_request",
            LinkMsg::Presence(_) => "presence",
            LinkMsg::PresenceSummary(_) => "presence_summary",
            LinkMsg::PresenceWant(_) => "presence_want",
            LinkMsg::Offer(_) => "offer",
            LinkMsg::Want(_) => "want",
            LinkMsg::Bundle(_) => "bundle",
            LinkMsg::Ack(_) => "ack",
            LinkMsg::Peers(_) => "peers",
            LinkMsg::Broadcast(_) => "broadcast",
        }
    }
}

fn bounded<T>(v: &[T], field: &'static str, max: usize) -> Result<(), ProtoError> {
    if v.len() > max {
        Err(ProtoError::TooMany {
            field,
            max,
            got: v.len(),
        })
    } else {
        Ok(())
    }
}

fn small(v: u32, field: &'static str) -> Result<u8, ProtoError> {
    u8::try_from(v).map_err(|_| ProtoError::BadLength {
        field,
        expected: "at most 255",
        got: usize::try_from(v).unwrap_or(usize::MAX),
    })
}

fn digests(v: &[Vec<u8>], field: &'static str) -> Result<Vec<BundleDigest>, ProtoError> {
    bounded(v, field, MAX_DIGESTS)?;
    v.iter()
        .map(|d| BundleDigest::from_field(d, field))
        .collect()
}

fn topic(b: &[u8]) -> Result<[u8; TOPIC_LEN], ProtoError> {
    <[u8; TOPIC_LEN]>::try_from(b).map_err(|_| ProtoError::BadLength {
        field: "topic",
        expected: "32 bytes",
        got: b.len(),
    })
}

impl TryFrom<pb::Presence> for Claim {
    type Error = ProtoError;
    fn try_from(p: pb::Presence) -> Result<Self, Self::Error> {
        Ok(Claim {
            user: IdentityKey::from_field(&p.user_key, "user_key")?,
            node: NodeId::from_field(&p.node_id, "node_id")?,
            timestamp_ms: p.timestamp_ms,
            hybrid: HybridPublicKey::from_field(&p.hybrid_public_key, "hybrid_public_key")?,
            signature: <[u8; 64]>::try_from(p.signature.as_slice()).map_err(|_| {
                ProtoError::BadLength {
                    field: "signature",
                    expected: "64 bytes",
                    got: p.signature.len(),
                }
            })?,
        })
    }
}

impl From<&Claim> for pb::Presence {
    fn from(c: &Claim) -> Self {
        pb::Presence {
            user_key: c.user.as_bytes().to_vec(),
            node_id: c.node.as_bytes().to_vec(),
            timestamp_ms: c.timestamp_ms,
            hybrid_public_key: c.hybrid.as_bytes().to_vec(),
            signature: c.signature.to_vec(),
        }
    }
}

impl TryFrom<pb::Bundle> for Bundle {
    type Error = ProtoError;
    fn try_from(b: pb::Bundle) -> Result<Self, Self::Error> {
        if b.payload.is_empty() {
            return Err(ProtoError::Empty { field: "payload" });
        }
        if b.payload.len() > MAX_MESSAGE_LEN {
            return Err(ProtoError::PayloadTooLarge {
                len: b.payload.len() as u64,
                max: MAX_MESSAGE_LEN as u64,
            });
        }
        Ok(Bundle {
            message_id: MessageId::from_field(&b.message_id, "message_id")?,
            recipient: IdentityKey::from_field(&b.recipient_key, "recipient_key")?,
            channel: ChannelId::from_field(&b.channel_id, "channel_id")?,
            device: DeviceId::from_field(&b.device_id, "device_id")?,
            lifetime_ms: b.lifetime_ms,
            hop_count: small(b.hop_count, "hop_count")?,
            hop_limit: small(b.hop_limit, "hop_limit")?,
            sender: if b.sender_key.is_empty() {
                None
            } else {
                Some(IdentityKey::from_field(&b.sender_key, "sender_key")?)
            },
            payload: b.payload,
        })
    }
}

impl From<Bundle> for pb::Bundle {
    fn from(b: Bundle) -> Self {
        pb::Bundle {
            message_id: b.message_id.as_bytes().to_vec(),
            recipient_key: b.recipient.as_bytes().to_vec(),
            channel_id: b.channel.as_bytes().to_vec(),
            device_id: b.device.as_bytes().to_vec(),
            lifetime_ms: b.lifetime_ms,
            hop_count: u32::from(b.hop_count),
            hop_limit: u32::from(b.hop_limit),
            sender_key: b.sender.map(|s| s.as_bytes().to_vec()).unwrap_or_default(),
            payload: b.payload,
        }
    }
}

impl TryFrom<pb::LinkMessage> for LinkMsg {
    type Error = ProtoError;
    fn try_from(m: pb::LinkMessage) -> Result<Self, Self::Error> {
        use pb::link_message::Body;
        let Some(body) = m.body else {
            return Err(ProtoError::Empty { field: "body" });
        };
        Ok(match body {
            Body::Hello(h) => LinkMsg::Hello(Hello {
                version: h.version,
                node_id: NodeId::from_field(&h.node_id, "node_id")?,
                client_port: u16::try_from(h.client_port).map_err(|_| ProtoError::BadLength {
                    field: "client_port",
                    expected: "a port",
                    got: 0,
                })?,
                client_cert_fingerprint: {
                    if h.client_cert_fingerprint.len() > 32 {
                        return Err(ProtoError::BadLength {
                            field: "client_cert_fingerprint",
                            expected: "empty or 32 bytes",
                            got: h.client_cert_fingerprint.len(),
                        });
                    }
                    h.client_cert_fingerprint
                },
                max_bundle_bytes: h.max_bundle_bytes,
                role: h.role.chars().take(16).collect(),
            }),
            Body::RouteUpdate(r) => {
                bounded(&r.routes, "routes", MAX_ROUTES_PER_UPDATE)?;
                LinkMsg::Routes(
                    r.routes
                        .iter()
                        .map(|e| {
                            Ok(RouteEntry {
                                node: NodeId::from_field(&e.node_id, "node_id")?,
                                seqno: e.seqno,
                                metric: u16::try_from(e.metric).unwrap_or(INFINITY),
                                hub: e.hub,
                            })
                        })
                        .collect::<Result<_, ProtoError>>()?,
                )
            }
            Body::SeqnoRequest(r) => LinkMsg::SeqnoRequest {
                node: NodeId::from_field(&r.node_id, "node_id")?,
                seqno: r.seqno,
                hop_count: small(r.hop_count, "hop_count")?,
            },
            Body::Presence(p) => {
                bounded(&p.claims, "claims", MAX_PRESENCE_PER_BATCH)?;
                LinkMsg::Presence(
                    p.claims
                        .into_iter()
                        .map(Claim::try_from)
                        .collect::<Result<_, _>>()?,
                )
            }
            Body::PresenceSummary(s) => {
                bounded(&s.stamps, "stamps", MAX_PRESENCE_STAMPS)?;
                LinkMsg::PresenceSummary(
                    s.stamps
                        .iter()
                        .map(|st| {
                            Ok((
                                IdentityKey::from_field(&st.user_key, "user_key")?,
                                st.timestamp_ms,
                            ))
                        })
                        .collect::<Result<_, ProtoError>>()?,
                )
            }
            Body::PresenceWant(w) => {
                bounded(&w.user_keys, "user_keys", MAX_PRESENCE_STAMPS)?;
                LinkMsg::PresenceWant(
                    w.user_keys
                        .iter()
                        .map(|k| IdentityKey::from_field(k, "user_keys"))
                        .collect::<Result<_, _>>()?,
                )
            }
            Body::Offer(o) => LinkMsg::Offer(digests(&o.digests, "digests")?),
            Body::Want(w) => LinkMsg::Want(digests(&w.digests, "digests")?),
            Body::Bundle(b) => LinkMsg::Bundle(Bundle::try_from(b)?),
            Body::CustodyAck(a) => {
                bounded(&a.entries, "entries", MAX_DIGESTS)?;
                LinkMsg::Ack(
                    a.entries
                        .iter()
                        .map(|e| {
                            let outcome = match pb::AckOutcome::try_from(e.outcome) {
                                Ok(pb::AckOutcome::Accepted) => AckOutcome::Accepted,
                                Ok(pb::AckOutcome::Duplicate) => AckOutcome::Duplicate,
                                Ok(pb::AckOutcome::Expired) => AckOutcome::Expired,
                                // Unknown outcomes are the safe choice: keep the bundle.
                                Ok(pb::AckOutcome::Refused) | Err(_) => AckOutcome::Refused,
                            };
                            Ok((BundleDigest::from_field(&e.digest, "digest")?, outcome))
                        })
                        .collect::<Result<_, ProtoError>>()?,
                )
            }
            Body::PeerExchange(p) => {
                bounded(&p.peers, "peers", MAX_PEERS_PER_EXCHANGE)?;
                LinkMsg::Peers(
                    p.peers
                        .iter()
                        .map(|r| {
                            bounded(&r.addrs, "addrs", MAX_ADDRS_PER_PEER)?;
                            Ok(PeerRecord {
                                node: NodeId::from_field(&r.node_id, "node_id")?,
                                // Unparseable addresses are skipped, not fatal.
                                addrs: r.addrs.iter().filter_map(|a| a.parse().ok()).collect(),
                                age_ms: r.age_ms,
                            })
                        })
                        .collect::<Result<_, ProtoError>>()?,
                )
            }
            Body::Broadcast(b) => {
                if b.payload.len() > MAX_BROADCAST_PAYLOAD {
                    return Err(ProtoError::PayloadTooLarge {
                        len: b.payload.len() as u64,
                        max: MAX_BROADCAST_PAYLOAD as u64,
                    });
                }
                LinkMsg::Broadcast(BroadcastMsg {
                    topic: topic(&b.topic)?,
                    message_id: MessageId::from_field(&b.message_id, "message_id")?,
                    hop_count: small(b.hop_count, "hop_count")?,
                    hop_limit: small(b.hop_limit, "hop_limit")?,
                    lifetime_ms: b.lifetime_ms,
                    payload: b.payload,
                })
            }
        })
    }
}

impl From<LinkMsg> for pb::LinkMessage {
    fn from(m: LinkMsg) -> Self {
        use pb::link_message::Body;
        let dig = |v: Vec<BundleDigest>| v.iter().map(|d| d.as_bytes().to_vec()).collect();
        let body = match m {
            LinkMsg::Hello(h) => Body::Hello(pb::Hello {
                version: h.version,
                node_id: h.node_id.as_bytes().to_vec(),
                client_port: u32::from(h.client_port),
                client_cert_fingerprint: h.client_cert_fingerprint,
                max_bundle_bytes: h.max_bundle_bytes,
                role: h.role,
            }),
            LinkMsg::Routes(r) => Body::RouteUpdate(pb::RouteUpdate {
                routes: r
                    .iter()
                    .map(|e| pb::RouteEntry {
                        node_id: e.node.as_bytes().to_vec(),
                        seqno: e.seqno,
                        metric: u32::from(e.metric),
                        hub: e.hub,
                    })
                    .collect(),
            }),
            LinkMsg::SeqnoRequest {
                node,
                seqno,
                hop_count,
            } => Body::SeqnoRequest(pb::SeqnoRequest {
                node_id: node.as_bytes().to_vec(),
                seqno,
                hop_count: u32::from(hop_count),
            }),
            LinkMsg::Presence(c) => Body::Presence(pb::PresenceBatch {
                claims: c.iter().map(pb::Presence::from).collect(),
            }),
            LinkMsg::PresenceSummary(s) => Body::PresenceSummary(pb::PresenceSummary {
                stamps: s
                    .iter()
                    .map(|(u, t)| pb::PresenceStamp {
                        user_key: u.as_bytes().to_vec(),
                        timestamp_ms: *t,
                    })
                    .collect(),
            }),
            LinkMsg::PresenceWant(w) => Body::PresenceWant(pb::PresenceWant {
                user_keys: w.iter().map(|u| u.as_bytes().to_vec()).collect(),
            }),
            LinkMsg::Offer(d) => Body::Offer(pb::Offer { digests: dig(d) }),
            LinkMsg::Want(d) => Body::Want(pb::Want { digests: dig(d) }),
            LinkMsg::Bundle(b) => Body::Bundle(b.into()),
            LinkMsg::Ack(a) => Body::CustodyAck(pb::CustodyAck {
                entries: a
                    .iter()
                    .map(|(d, o)| pb::AckEntry {
                        digest: d.as_bytes().to_vec(),
                        outcome: match o {
                            AckOutcome::Accepted => pb::AckOutcome::Accepted,
                            AckOutcome::Duplicate => pb::AckOutcome::Duplicate,
                            AckOutcome::Expired => pb::AckOutcome::Expired,
                            AckOutcome::Refused => pb::AckOutcome::Refused,
                        } as i32,
                    })
                    .collect(),
            }),
            LinkMsg::Peers(p) => Body::PeerExchange(pb::PeerExchange {
                peers: p
                    .iter()
                    .map(|r| pb::PeerRecord {
                        node_id: r.node.as_bytes().to_vec(),
                        addrs: r.addrs.iter().map(|a| a.to_string()).collect(),
                        age_ms: r.age_ms,
                    })
                    .collect(),
            }),
            LinkMsg::Broadcast(b) => Body::Broadcast(pb::Broadcast {
                topic: b.topic.to_vec(),
                message_id: b.message_id.as_bytes().to_vec(),
                hop_count: u32::from(b.hop_count),
                hop_limit: u32::from(b.hop_limit),
                lifetime_ms: b.lifetime_ms,
                payload: b.payload,
            }),
        };
        pb::LinkMessage { body: Some(body) }
    }
}

/// The repeated fields of a link message, counted before it is decoded (a frame of empty
/// entries would otherwise cost a hundred times its size before the checks below refuse it).
const LIMITS: &[RepeatedLimit] = &[
    RepeatedLimit {
        path: &[2, 1],
        max: MAX_ROUTES_PER_UPDATE,
        field: "routes",
    },
    RepeatedLimit {
        path: &[4, 1],
        max: MAX_PRESENCE_PER_BATCH,
        field: "claims",
    },
    RepeatedLimit {
        path: &[5, 1],
        max: MAX_PRESENCE_STAMPS,
        field: "stamps",
    },
    RepeatedLimit {
        path: &[6, 1],
        max: MAX_PRESENCE_STAMPS,
        field: "user_keys",
    },
    RepeatedLimit {
        path: &[7, 1],
        max: MAX_DIGESTS,
        field: "digests",
    },
    RepeatedLimit {
        path: &[8, 1],
        max: MAX_DIGESTS,
        field: "digests",
    },
    RepeatedLimit {
        path: &[10, 1],
        max: MAX_DIGESTS,
        field: "entries",
    },
    RepeatedLimit {
        path: &[11, 1],
        max: MAX_PEERS_PER_EXCHANGE,
        field: "peers",
    },
    RepeatedLimit {
        path: &[11, 1, 2],
        max: MAX_PEERS_PER_EXCHANGE * MAX_ADDRS_PER_PEER,
        field: "addrs",
    },
];

/// Decodes a link frame's protobuf into a validated message.
pub fn decode(buf: &[u8]) -> Result<LinkMsg, ProtoError> {
    ferry_proto::bounded::check(buf, LIMITS)?;
    LinkMsg::try_from(ferry_proto::decode_message::<pb::LinkMessage>(buf)?)
}

/// Encodes a message for a link frame (without the length prefix).
pub fn encode(msg: LinkMsg) -> Vec<u8> {
    use prost::Message;
    pb::LinkMessage::from(msg).encode_to_vec()
}
