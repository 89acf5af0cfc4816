//! Size limits and protocol constants. Every bound a peer can push against is named here.

/// Maximum protobuf payload of one frame: 4 MiB.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;
/// Request header: method_id u16, request_id u32, payload_len u32.
pub const REQUEST_HEADER_LEN: usize = 10;
/// Response header: status u8, request_id u32, payload_len u32.
pub const RESPONSE_HEADER_LEN: usize = 9;
/// Push header: event_type u16, payload_len u32.
pub const PUSH_HEADER_LEN: usize = 6;

/// ALPN of the qpq v2 client protocol.
pub const ALPN_QPQ: &[u8] = b"qpq";
/// Default UDP port of the client protocol.
pub const DEFAULT_CLIENT_PORT: u16 = 5001;

/// Ed25519 identity keys (recipient keys) are 32 bytes.
pub const IDENTITY_KEY_LEN: usize = 32;
/// Ed25519 signatures are 64 bytes.
pub const SIGNATURE_LEN: usize = 64;
/// Message ids (idempotency keys) are 16 bytes.
pub const MESSAGE_ID_LEN: usize = 16;
/// Channel ids are 16 bytes; empty means the default channel.
pub const CHANNEL_ID_LEN: usize = 16;
/// Device ids are at most 32 bytes; empty means the default device queue.
pub const MAX_DEVICE_ID_LEN: usize = 32;
/// X25519 public key length.
pub const X25519_PUBLIC_LEN: usize = 32;
/// ML-KEM-768 encapsulation key length (FIPS 203).
pub const MLKEM768_EK_LEN: usize = 1184;
/// Hybrid public key: X25519 public key followed by the ML-KEM-768 encapsulation key.
pub const HYBRID_PUBLIC_KEY_LEN: usize = X25519_PUBLIC_LEN + MLKEM768_EK_LEN;
/// Auth challenge nonces are 32 bytes.
pub const NONCE_LEN: usize = 32;
/// Session tokens are 32 bytes.
pub const SESSION_TOKEN_LEN: usize = 32;
/// SHA-256 fingerprints are 32 bytes.
pub const FINGERPRINT_LEN: usize = 32;

/// Largest message payload a node stores: small enough that one stored message, with its
/// envelope fields, always fits in a single Fetch response frame.
pub const MAX_MESSAGE_LEN: usize = MAX_PAYLOAD - 1024;
/// Recipients of one BatchEnqueue.
pub const MAX_BATCH_RECIPIENTS: usize = 256;
/// Bytes one BatchEnqueue may store: its payload once per recipient. A node holds what it
/// stores in memory while it commits, so one request costs about its own size (a frame is
/// at most [`MAX_PAYLOAD`]), not up to 256 times that.
pub const MAX_BATCH_STORED_BYTES: usize = MAX_PAYLOAD;
/// Messages of one EnqueueMany (Ferry, 812).
pub const MAX_ENQUEUE_MANY: usize = 256;
/// Messages of one RelayBatchEnqueue (901).
pub const MAX_RELAY_BATCH: usize = 256;
/// Keys of one FetchHybridKeys.
pub const MAX_KEYS_PER_FETCH: usize = 256;
/// Envelopes returned by one Fetch/Peek/FetchWait when the request says 0.
pub const DEFAULT_FETCH_LIMIT: u32 = 64;
/// Envelopes returned by one Fetch/Peek/FetchWait at most.
pub const MAX_FETCH_LIMIT: u32 = 1024;
/// Longest FetchWait long-poll a node honours (longer requests are shortened).
pub const MAX_FETCH_WAIT_MS: u64 = 60_000;

/// TTL applied when a request says `ttl_secs = 0`: 7 days.
pub const DEFAULT_TTL_SECS: u32 = 7 * 24 * 3600;
/// Default node maximum TTL: 30 days.
pub const DEFAULT_MAX_TTL_SECS: u32 = 30 * 24 * 3600;

/// ALPN of the mesh link protocol.
pub const ALPN_MESH: &[u8] = b"ferry/mesh/1";
/// Mesh link protocol version spoken by this build.
pub const MESH_PROTOCOL_VERSION: u32 = 1;
/// Default UDP port of mesh links.
pub const DEFAULT_MESH_PORT: u16 = 5002;
/// Largest link frame: a bundle of the largest message plus its fields.
pub const MAX_LINK_FRAME: usize = MAX_PAYLOAD + 64 * 1024;
/// Default hop limit of a bundle.
pub const DEFAULT_HOP_LIMIT: u8 = 16;
/// Largest broadcast payload.
pub const MAX_BROADCAST_PAYLOAD: usize = 64 * 1024;
/// Default hop limit of a broadcast.
pub const DEFAULT_BROADCAST_HOPS: u8 = 8;
/// Broadcast topic ids are 32 bytes.
pub const TOPIC_LEN: usize = 32;
/// Bundle digests are 16 bytes.
pub const DIGEST_LEN: usize = 16;
