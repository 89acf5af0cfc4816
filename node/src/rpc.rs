//! Method dispatch: decode, validate, authorise, act, answer. Every failure is a status with
//! an `Error` message; nothing a client sends can take the node down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_mesh::core::BroadcastDropped;
use ferry_mesh::driver::{MeshError, MeshHandle};
use ferry_mesh::wire::Claim;
use ferry_proto::frame::ResponseHeader;
use ferry_proto::limits::{
    MAX_BROADCAST_PAYLOAD, MAX_PAYLOAD, NONCE_LEN, RESPONSE_HEADER_LEN, TOPIC_LEN,
};
use ferry_proto::qpq::v1 as pb;
use ferry_proto::types::{
    Ack, AuthProof, BatchEnqueue, DeviceId, Enqueue, EnqueueMany, FetchHybridKeys, FetchWait,
    HybridKeyLookup, HybridPublicKey, IdentityKey, MailboxAddr, MailboxRead, MessageId, NodeId,
    SessionToken, UploadHybridKey, resolve_ttl,
};
use ferry_proto::{Bounded, Method, ProtoError, PushEvent, Status, decode_bounded};
use ferry_store::{BundleRecord, CustodyOutcome, NewMessage, StoreError, StoredMessage};
use prost::Message;

use crate::auth::{self, CHALLENGE_TTL};
use crate::budget::{BytePool, Held, Refusal};
use crate::conn::{ConnState, PushDecision};
use crate::metrics::{Limit, add, inc};
use crate::state::{SESSION_TTL, State};

/// An answer: a status and its protobuf payload, encoded behind room for the frame header so
/// that the frame goes out without another copy. A read's answer also holds its bytes of the
/// node's answer pool until QUIC has them acknowledged.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: Status,
    frame: Vec<u8>,
    hold: Option<Held>,
}

impl Reply {
    pub(crate) fn ok(msg: &impl Message) -> Self {
        Self::encoded(Status::Ok, msg)
    }

    fn encoded(status: Status, msg: &impl Message) -> Self {
        let mut frame = Vec::with_capacity(RESPONSE_HEADER_LEN + msg.encoded_len());
        frame.resize(RESPONSE_HEADER_LEN, 0);
        msg.encode_raw(&mut frame);
        Self {
            status,
            frame,
            hold: None,
        }
    }

    pub(crate) fn err(status: Status, message: impl Into<String>) -> Self {
        Self::retry(status, message, Duration::ZERO)
    }

    pub(crate) fn retry(status: Status, message: impl Into<String>, after: Duration) -> Self {
        Self::encoded(
            status,
            &pb::Error {
                message: message.into(),
                retry_after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            },
        )
    }

    /// The protobuf payload.
    pub(crate) fn body(&self) -> &[u8] {
        self.frame.get(RESPONSE_HEADER_LEN..).unwrap_or_default()
    }

    /// The whole frame's length.
    pub(crate) fn frame_len(&self) -> usize {
        self.frame.len()
    }

    /// The response frame for `request_id`, and what it holds of the answer pool. A payload
    /// over the frame limit (a bug: reads are bounded below it) becomes an Internal error.
    pub(crate) fn into_frame(mut self, request_id: u32) -> (Vec<u8>, Option<Held>) {
        let len = self.frame.len() - RESPONSE_HEADER_LEN;
        let Ok(declared_len) = u32::try_from(len)
            .map_err(drop)
            .and_then(|l| if len <= MAX_PAYLOAD { Ok(l) } else { Err(()) })
        else {
            tracing::error!(len, "answer over the frame limit");
            return Reply::err(Status::Internal, "answer too large").into_frame(request_id);
        };
        let header = ResponseHeader {
            status: self.status as u8,
            request_id,
            declared_len,
        }
        .to_bytes();
        if let Some(h) = self.frame.get_mut(..RESPONSE_HEADER_LEN) {
            h.copy_from_slice(&header);
        }
        (self.frame, self.hold.take())
    }

    /// Prefixes the error message with `ctx` (which item of a batch failed, say).
    pub(crate) fn context(self, ctx: &str) -> Self {
        match pb::Error::decode(self.body()) {
            Ok(mut e) if self.status != Status::Ok => {
                e.message = format!("{ctx}: {}", e.message);
                Self::encoded(self.status, &e)
            }
            _ => self,
        }
    }
}

impl From<ProtoError> for Reply {
    fn from(e: ProtoError) -> Self {
        let status = match e.innermost() {
            ProtoError::PayloadTooLarge { .. } | ProtoError::BatchTooLarge { .. } => {
                Status::PayloadTooLarge
            }
            _ => Status::BadRequest,
        };
        Reply::err(status, e.to_string())
    }
}

pub(crate) fn store_error(state: &State, e: &StoreError) -> Reply {
    match e {
        StoreError::QuotaExceeded { .. } | StoreError::DiskFull(_) => {
            inc(&state.metrics.c.resource_exhausted);
            Reply::retry(
                Status::ResourceExhausted,
                e.to_string(),
                Duration::from_secs(60),
            )
        }
        StoreError::Busy(_) => Reply::retry(
            Status::Unavailable,
            e.to_string(),
            Duration::from_millis(100),
        ),
        StoreError::Unavailable | StoreError::Closed => {
            Reply::retry(Status::Unavailable, e.to_string(), Duration::from_secs(1))
        }
        StoreError::Expired => Reply::err(Status::BadRequest, e.to_string()),
        other => {
            tracing::error!(error = %other, "store error");
            Reply::err(Status::Internal, "storage error; see the node's log")
        }
    }
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Reply::from(e),
        }
    };
}
pub(crate) use tri;

/// Returns the error reply of a `Result<_, Reply>`.
macro_rules! tri_reply {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}
pub(crate) use tri_reply;

macro_rules! store {
    ($state:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return store_error($state, &e),
        }
    };
}

/// Decodes a request; repeated fields are counted against their limits first (see
/// [`ferry_proto::bounded`]), so a request costs memory in proportion to what it may hold.
pub(crate) fn decode<M: Bounded>(payload: &[u8]) -> Result<M, ProtoError> {
    decode_bounded(payload)
}

fn random<const N: usize>() -> Option<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).ok()?;
    Some(b)
}

fn envelope(m: StoredMessage) -> pb::Envelope {
    pb::Envelope {
        seq: m.seq,
        data: m.payload,
        sender_key: m.sender.map(|s| s.as_bytes().to_vec()).unwrap_or_default(),
        message_id: m.message_id.as_bytes().to_vec(),
        enqueued_at_ms: m.enqueued_at_ms,
    }
}

/// Answers one request.
pub(crate) async fn dispatch(
    state: &Arc<State>,
    conn: &Arc<ConnState>,
    method_id: u16,
    payload: &[u8],
) -> Reply {
    let Some(method) = Method::from_id(method_id) else {
        return Reply::err(
            Status::UnknownMethod,
            format!("method id {method_id} is not registered"),
        );
    };
    match method {
        Method::Health => return health(state),
        Method::AuthChallenge => return challenge(conn, payload),
        Method::AuthResponse => return auth_response(state, conn, payload).await,
        Method::ResumeSession => return resume(state, conn, payload).await,
        _ => {}
    }
    let Some(me) = conn.identity() else {
        return Reply::err(
            Status::Unauthorized,
            format!(
                "{method} needs an authenticated connection: call AuthChallenge (104) and AuthResponse (105) first"
            ),
        );
    };
    match method {
        Method::Enqueue => enqueue(state, me, payload).await,
        Method::BatchEnqueue => batch_enqueue(state, me, payload).await,
        Method::EnqueueMany => enqueue_many(state, me, payload).await,
        Method::Fetch => fetch(state, conn, me, payload).await,
        Method::FetchWait => fetch_wait(state, conn, me, payload).await,
        Method::Peek => peek(state, conn, me, payload).await,
        Method::Ack => ack(state, me, payload).await,
        Method::UploadHybridKey => upload_hybrid_key(state, me, payload).await,
        Method::FetchHybridKey => fetch_hybrid_key(state, payload),
        Method::FetchHybridKeys => fetch_hybrid_keys(state, payload),
        Method::Attach => attach(state, me, payload).await,
        Method::BroadcastPublish => broadcast_publish(state, payload),
        Method::BroadcastFetch => broadcast_fetch(state, conn, payload).await,
        Method::RelayEnqueue
        | Method::RelayBatchEnqueue
        | Method::ProxyFetchKeyPackage
        | Method::ProxyFetchHybridKey
        | Method::ProxyResolveUser
        | Method::FederationHealth => crate::federation::dispatch(state, me, method, payload).await,
        other => Reply::err(
            Status::UnknownMethod,
            format!("{other} is not implemented by this node"),
        ),
    }
}

/// Health (802). `status` is `ok`; `draining` (shutting down); `disk full` (reads and
/// acknowledgements are served, new messages refused until the disk has room); or
/// `unavailable` while the store cannot be read (its queue depth is then unknown and given
/// as 0). `/healthz` answers the same words.
fn health(state: &State) -> Reply {
    let depth = state.store.depth();
    Reply::ok(&pb::HealthResponse {
        status: crate::health_status(state, depth.is_ok()).into(),
        uptime_secs: state.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").into(),
        queue_depth: depth.unwrap_or(0),
        node_id: state.node_id.to_hex(),
        mesh_node_id: state
            .mesh
            .as_ref()
            .map(|m| m.node_id().as_bytes().to_vec())
            .unwrap_or_default(),
    })
}

fn challenge(conn: &ConnState, payload: &[u8]) -> Reply {
    let req: pb::AuthChallengeRequest = tri!(decode(payload));
    if !req.identity_key.is_empty() {
        tri!(IdentityKey::from_field(&req.identity_key, "identity_key"));
    }
    let Some(nonce) = random::<NONCE_LEN>() else {
        return Reply::err(Status::Internal, "random number generator failed");
    };
    conn.set_challenge(nonce, Instant::now() + CHALLENGE_TTL);
    Reply::ok(&pb::AuthChallengeResponse {
        nonce: nonce.to_vec(),
        expires_in_ms: u64::try_from(CHALLENGE_TTL.as_millis()).unwrap_or(u64::MAX),
    })
}

async fn auth_response(state: &Arc<State>, conn: &Arc<ConnState>, payload: &[u8]) -> Reply {
    let req: pb::AuthResponseRequest = tri!(decode(payload));
    let proof = match AuthProof::try_from(req) {
        Ok(p) => p,
        Err(e) => {
            // A malformed answer still uses up the challenge.
            conn.take_challenge();
            inc(&state.metrics.c.auth_failure);
            return Reply::from(e);
        }
    };
    if let Some(current) = conn.identity()
        && current != proof.identity
    {
        return Reply::err(
            Status::Forbidden,
            format!("this connection is already authenticated as {current}"),
        );
    }
    if let Err(f) = auth::verify(conn, &proof, Instant::now()) {
        inc(&state.metrics.c.auth_failure);
        tracing::info!(identity = %proof.identity.fingerprint(), reason = %f, "authentication refused");
        return Reply::err(Status::Unauthorized, f.to_string());
    }
    let Some(token) = random::<32>() else {
        return Reply::err(Status::Internal, "random number generator failed");
    };
    let first = conn.set_identity(proof.identity);
    state.register(proof.identity, conn);
    state.new_session(proof.identity, SessionToken(token), Instant::now());
    inc(&state.metrics.c.auth_success);
    tracing::debug!(identity = %proof.identity.fingerprint(), "authenticated");
    if first {
        user_connected(state, proof.identity).await;
    }
    Reply::ok(&pb::AuthResponseResponse {
        session_token: token.to_vec(),
        expires_in_secs: SESSION_TTL.as_secs(),
    })
}

/// A user is here now: the mesh delivers their mail here, and what waited in custody for them
/// is moved into their mailbox before the answer, so their next Fetch sees it.
async fn user_connected(state: &Arc<State>, id: IdentityKey) {
    if let Some(mesh) = &state.mesh {
        mesh.user_connected(id);
        if let Err(e) = mesh.deliver_waiting(id).await {
            // It stays in custody; the mesh delivers it on its next pass.
            tracing::warn!(error = %e, "delivering held messages failed");
        }
    }
}

async fn resume(state: &Arc<State>, conn: &Arc<ConnState>, payload: &[u8]) -> Reply {
    let req: pb::ResumeSessionRequest = tri!(decode(payload));
    let token = tri!(SessionToken::try_from(req));
    match state.resume_session(&token, Instant::now()) {
        Some(id) => {
            if let Some(current) = conn.identity()
                && current != id
            {
                return Reply::err(
                    Status::Forbidden,
                    format!("this connection is already authenticated as {current}"),
                );
            }
            let first = conn.set_identity(id);
            state.register(id, conn);
            inc(&state.metrics.c.auth_success);
            if first {
                user_connected(state, id).await;
            }
            Reply::ok(&pb::ResumeSessionResponse {
                identity_key: id.as_bytes().to_vec(),
            })
        }
        None => {
            inc(&state.metrics.c.auth_failure);
            Reply::err(Status::Unauthorized, "unknown or expired session token")
        }
    }
}

pub(crate) fn new_message(
    state: &State,
    me: IdentityKey,
    mailbox: MailboxAddr,
    payload: Vec<u8>,
    ttl_secs: u32,
    message_id: Option<MessageId>,
    sealed: bool,
) -> Result<NewMessage, Reply> {
    let ttl = resolve_ttl(ttl_secs, state.cfg.default_ttl_secs, state.cfg.max_ttl_secs)?;
    let message_id = match message_id {
        Some(id) => id,
        None => MessageId::time_ordered(
            crate::now_ms(),
            random::<10>()
                .ok_or_else(|| Reply::err(Status::Internal, "random number generator failed"))?,
        ),
    };
    let now = crate::now_ms();
    Ok(NewMessage {
        mailbox,
        message_id,
        sender: (!sealed).then_some(me),
        payload,
        enqueued_at_ms: now,
        expires_at_ms: now.saturating_add(u64::from(ttl) * 1000),
    })
}

/// Wakes long polls and pushes `NewMessage` to the recipient's connections.
pub(crate) fn announce(state: &Arc<State>, mailbox: &MailboxAddr, seq: u64) {
    state.notify(mailbox);
    for conn in state.connections_of(&mailbox.recipient) {
        match conn.push_decision(mailbox, seq) {
            PushDecision::Covered => continue,
            PushDecision::Skip => {
                inc(&state.metrics.c.push_skipped);
                continue;
            }
            PushDecision::Send => {}
        }
        let state = Arc::clone(state);
        let mailbox = *mailbox;
        tokio::spawn(async move {
            // One push stream at a time per mailbox; messages that arrive meanwhile are
            // announced by one more push carrying the newest seq.
            let mut next = Some(seq);
            while let Some(seq) = next {
                if push_new_message(&conn, &mailbox, seq).await {
                    inc(&state.metrics.c.push_sent);
                }
                next = conn.push_done(&mailbox);
            }
        });
    }
}

async fn push_new_message(conn: &ConnState, mailbox: &MailboxAddr, seq: u64) -> bool {
    let event = pb::NewMessage {
        recipient_key: mailbox.recipient.as_bytes().to_vec(),
        channel_id: mailbox.channel.as_bytes().to_vec(),
        device_id: mailbox.device.as_bytes().to_vec(),
        seq,
    };
    let Ok(frame) = ferry_proto::frame::encode_push_msg(PushEvent::NewMessage as u16, &event)
    else {
        return false;
    };
    async {
        let mut s = conn.quic.open_uni().await.ok()?;
        s.write_all(&frame).await.ok()?;
        s.finish().ok()
    }
    .await
    .is_some()
}

/// Hands a message for a user whose mailbox is not here to the mesh: durable in custody when
/// this returns, then routed hop by hop. Returns whether it was a duplicate.
///
/// `from` is the node that relayed it (federation), counted against that node's quota.
pub(crate) async fn to_mesh(
    state: &State,
    mesh: &MeshHandle,
    msg: NewMessage,
    from: Option<NodeId>,
) -> Result<bool, Reply> {
    let bytes = msg.payload.len() as u64;
    let rec = BundleRecord {
        mailbox: msg.mailbox,
        message_id: msg.message_id,
        sender: msg.sender,
        received_at_ms: msg.enqueued_at_ms,
        expires_at_ms: msg.expires_at_ms,
        hop_count: 0,
        hop_limit: state.cfg.mesh.hop_limit,
        from: from.map(|n| *n.as_bytes()),
        payload: msg.payload,
    };
    let outcome = mesh
        .enqueue_remote(rec)
        .await
        .map_err(|e| store_error(state, &e))?;
    inc(&state.metrics.c.enqueue);
    match outcome {
        CustodyOutcome::Stored | CustodyOutcome::Delivered(_) => {
            inc(&state.metrics.c.enqueue_mesh);
            add(&state.metrics.c.enqueue_bytes, bytes);
            Ok(false)
        }
        CustodyOutcome::Duplicate => {
            inc(&state.metrics.c.enqueue_duplicate);
            Ok(true)
        }
        CustodyOutcome::Expired => Err(Reply::err(Status::BadRequest, "message already expired")),
        CustodyOutcome::Full => {
            inc(&state.metrics.c.resource_exhausted);
            Err(Reply::retry(
                Status::ResourceExhausted,
                "this node's custody for the mesh is full",
                Duration::from_secs(60),
            ))
        }
    }
}

/// Stores a message in a mailbox here (durable on return), counts it, and wakes the
/// recipient's long polls and pushes.
pub(crate) async fn enqueue_local(
    state: &Arc<State>,
    msg: NewMessage,
) -> Result<ferry_store::Enqueued, Reply> {
    let mailbox = msg.mailbox;
    let bytes = msg.payload.len() as u64;
    let done = state
        .store
        .enqueue(msg)
        .await
        .map_err(|e| store_error(state, &e))?;
    inc(&state.metrics.c.enqueue);
    if done.duplicate {
        inc(&state.metrics.c.enqueue_duplicate);
    } else {
        add(&state.metrics.c.enqueue_bytes, bytes);
        announce(state, &mailbox, done.seq);
    }
    Ok(done)
}

/// The message an Enqueue from `me` asks to store.
fn enqueued_message(state: &State, me: IdentityKey, e: Enqueue) -> Result<NewMessage, Reply> {
    new_message(
        state,
        me,
        e.mailbox,
        e.payload,
        e.ttl_secs,
        e.message_id,
        e.sealed_sender,
    )
}

async fn enqueue(state: &Arc<State>, me: IdentityKey, payload: &[u8]) -> Reply {
    let req: pb::EnqueueRequest = tri!(decode(payload));
    let e = tri!(Enqueue::try_from(req));
    let msg = tri_reply!(enqueued_message(state, me, e));
    if let Some(mesh) = &state.mesh
        && mesh.is_remote(&msg.mailbox.recipient)
    {
        return match to_mesh(state, mesh, msg, None).await {
            Ok(duplicate) => Reply::ok(&pb::EnqueueResponse {
                seq: 0,
                delivery_proof: Vec::new(),
                duplicate,
            }),
            Err(r) => r,
        };
    }
    let done = tri_reply!(enqueue_local(state, msg).await);
    Reply::ok(&pb::EnqueueResponse {
        seq: done.seq,
        delivery_proof: Vec::new(),
        duplicate: done.duplicate,
    })
}

async fn batch_enqueue(state: &Arc<State>, me: IdentityKey, payload: &[u8]) -> Reply {
    let req: pb::BatchEnqueueRequest = tri!(decode(payload));
    let b = tri!(BatchEnqueue::try_from(req));
    let mut msgs = Vec::with_capacity(b.recipients.len());
    // One id for the whole batch: without one, a retry could not be recognised.
    let id = match b.message_id {
        Some(id) => Some(id),
        None => random::<10>().map(|r| MessageId::time_ordered(crate::now_ms(), r)),
    };
    for r in &b.recipients {
        let mailbox = MailboxAddr {
            recipient: *r,
            channel: b.channel,
            device: DeviceId::DEFAULT,
        };
        match new_message(
            state,
            me,
            mailbox,
            b.payload.clone(),
            b.ttl_secs,
            id,
            b.sealed_sender,
        ) {
            Ok(m) => msgs.push(m),
            Err(r) => return r,
        }
    }
    let stored = tri_reply!(store_many(state, msgs).await);
    let (seqs, duplicates) = stored.into_iter().unzip();
    Reply::ok(&pb::BatchEnqueueResponse { seqs, duplicates })
}

/// EnqueueMany (812, Ferry): several Enqueues in one request and one durable commit. Every
/// message is validated before any is stored; a bad one fails the request, named by its index.
async fn enqueue_many(state: &Arc<State>, me: IdentityKey, payload: &[u8]) -> Reply {
    let req: pb::EnqueueManyRequest = tri!(decode(payload));
    let many = tri!(EnqueueMany::try_from(req));
    let mut msgs = Vec::with_capacity(many.messages.len());
    for (i, e) in many.messages.into_iter().enumerate() {
        match enqueued_message(state, me, e) {
            Ok(msg) => msgs.push(msg),
            Err(r) => return r.context(&format!("messages[{i}]")),
        }
    }
    let stored = tri_reply!(store_many(state, msgs).await);
    Reply::ok(&pb::EnqueueManyResponse {
        results: stored
            .into_iter()
            .map(|(seq, duplicate)| pb::EnqueueResponse {
                seq,
                delivery_proof: Vec::new(),
                duplicate,
            })
            .collect(),
    })
}

/// Stores validated messages where they belong: those for mailboxes elsewhere in the mesh
/// one by one into custody, the rest here in one durable commit. Answers `(seq, duplicate)`
/// per message in input order (seq 0 for messages handed to the mesh), and wakes each local
/// mailbox once, at its highest new seq.
async fn store_many(state: &Arc<State>, msgs: Vec<NewMessage>) -> Result<Vec<(u64, bool)>, Reply> {
    let mut out = vec![(0u64, false); msgs.len()];
    let mut local = Vec::with_capacity(msgs.len());
    let mut local_at = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.into_iter().enumerate() {
        match &state.mesh {
            Some(mesh) if mesh.is_remote(&m.mailbox.recipient) => {
                let duplicate = to_mesh(state, mesh, m, None).await?;
                if let Some(o) = out.get_mut(i) {
                    o.1 = duplicate;
                }
            }
            _ => {
                local_at.push(i);
                local.push(m);
            }
        }
    }
    if local.is_empty() {
        return Ok(out);
    }
    let sizes: Vec<(MailboxAddr, u64)> = local
        .iter()
        .map(|m| (m.mailbox, m.payload.len() as u64))
        .collect();
    let done = state
        .store
        .enqueue_batch(local)
        .await
        .map_err(|e| store_error(state, &e))?;
    // A BatchEnqueue has up to 256 mailboxes: a map, not a search per message.
    let mut wake: HashMap<MailboxAddr, u64> = HashMap::new();
    for (((mailbox, bytes), d), i) in sizes.iter().zip(&done).zip(local_at) {
        inc(&state.metrics.c.enqueue);
        if d.duplicate {
            inc(&state.metrics.c.enqueue_duplicate);
        } else {
            add(&state.metrics.c.enqueue_bytes, *bytes);
            let top = wake.entry(*mailbox).or_insert(d.seq);
            *top = (*top).max(d.seq);
        }
        if let Some(o) = out.get_mut(i) {
            *o = (d.seq, d.duplicate);
        }
    }
    for (mailbox, seq) in &wake {
        announce(state, mailbox, *seq);
    }
    Ok(out)
}

fn owner_check(me: IdentityKey, mailbox: &MailboxAddr) -> Result<(), Reply> {
    if mailbox.recipient == me {
        Ok(())
    } else {
        Err(Reply::err(
            Status::Forbidden,
            "only the owner of a mailbox may read or acknowledge it",
        ))
    }
}

/// The largest answer frame.
const MAX_ANSWER: usize = MAX_PAYLOAD + RESPONSE_HEADER_LEN;
/// Answer bytes a read takes first: answers up to this size (a Fetch of 1,024 small messages)
/// never wait behind larger ones. A larger answer is read again under a larger hold.
const FIRST_ANSWER: usize = 1024 * 1024;
/// How long a read waits for room in the node's answer pool.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Payload bytes an answer frame of `frame` bytes leaves room for, beside the envelopes' own
/// fields (up to about 90 bytes each, `MAX_FETCH_LIMIT` of them at most).
fn payload_room(frame: usize) -> usize {
    frame.saturating_sub(frame / 8 + RESPONSE_HEADER_LEN)
}

/// What a read found.
pub(crate) enum Read {
    /// The answer, no larger than the bytes the read was given.
    Answer(Reply),
    /// Nothing to answer yet (a long poll waits; other reads answer empty).
    Nothing,
    /// An answer that needs this many bytes: the read changed nothing (no cursor moved).
    Needs(usize),
}

/// Runs a read under the node's answer pool: the bytes of its answer are taken from the
/// client address's share and the pool before the read, which is told how large its answer
/// may be (`read(frame_bytes)`), and held, trimmed to the answer, until QUIC has it
/// acknowledged. A client that does not read its answers therefore holds at most its share,
/// and the node at most the pool. First up to [`FIRST_ANSWER`]; an answer that needs more (a
/// message larger than that) is read again with what it needs, from the part of the pool that
/// large answers may use.
pub(crate) async fn read_answer(
    state: &State,
    conn: &ConnState,
    mut read: impl FnMut(usize) -> Result<Read, Reply>,
) -> Result<Option<Reply>, Reply> {
    let ip = conn.remote.ip();
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    let pool = &state.answers;
    let (mut min, mut want, mut large) = (BytePool::SMALL, FIRST_ANSWER, false);
    for _ in 0..4 {
        let mut held = match pool.take(ip, min, want, large, deadline).await {
            Ok(h) => h,
            Err(Refusal::Share) => {
                state.metrics.refused(Limit::AnswerBytesPerAddress);
                return Err(Reply::retry(
                    Status::RateLimited,
                    format!(
                        "answers not yet read by your address hold {} bytes, its share of \
                         this node's {}; read them (or close the connections that asked)",
                        pool.held_by(ip),
                        pool.total()
                    ),
                    Duration::from_secs(1),
                ));
            }
            Err(Refusal::Busy) => {
                state.metrics.refused(Limit::Busy);
                return Err(Reply::retry(
                    Status::Unavailable,
                    "this node holds as many unread answers as it may; try again",
                    Duration::from_secs(1),
                ));
            }
        };
        match read(held.len())? {
            Read::Answer(mut reply) => {
                held.shrink_to(reply.frame_len());
                reply.hold = Some(held);
                return Ok(Some(reply));
            }
            Read::Nothing => return Ok(None),
            Read::Needs(n) => {
                (min, want, large) = (n, n.max(MAX_ANSWER), true);
            }
        }
    }
    Err(Reply::retry(
        Status::Unavailable,
        "the mailbox changed while it was read; try again",
        Duration::from_millis(100),
    ))
}

/// A read's answer if it fits in `frame` bytes, or how many it needs.
fn fitted(reply: Reply, frame: usize) -> Read {
    if reply.frame_len() <= frame {
        Read::Answer(reply)
    } else {
        Read::Needs(reply.frame_len())
    }
}

/// Reads after the connection's delivery cursor, within `frame` bytes of answer, and advances
/// the cursor only when the answer fits.
fn fetch_after_cursor(
    state: &State,
    conn: &ConnState,
    read: &MailboxRead,
    frame: usize,
    answer: impl Fn(Vec<pb::Envelope>) -> Reply,
) -> Result<Read, Reply> {
    conn.with_cursor(&read.mailbox, |cursor| {
        let msgs = state
            .store
            .fetch(
                &read.mailbox,
                cursor,
                read.limit,
                payload_room(frame),
                crate::now_ms(),
            )
            .map_err(|e| store_error(state, &e))?;
        let Some(next) = msgs.last().map(|m| m.seq) else {
            return Ok((Read::Nothing, cursor));
        };
        match fitted(answer(msgs.into_iter().map(envelope).collect()), frame) {
            Read::Answer(r) => Ok((Read::Answer(r), next)),
            other => Ok((other, cursor)),
        }
    })
}

fn fetch_answer(payloads: Vec<pb::Envelope>) -> Reply {
    Reply::ok(&pb::FetchResponse { payloads })
}

async fn fetch(state: &State, conn: &ConnState, me: IdentityKey, payload: &[u8]) -> Reply {
    let req: pb::FetchRequest = tri!(decode(payload));
    let read = tri!(MailboxRead::try_from(req));
    if let Err(r) = owner_check(me, &read.mailbox) {
        return r;
    }
    let found = read_answer(state, conn, |frame| {
        fetch_after_cursor(state, conn, &read, frame, fetch_answer)
    })
    .await;
    let reply = tri_reply!(found).unwrap_or_else(|| fetch_answer(Vec::new()));
    inc(&state.metrics.c.fetch);
    reply
}

fn fetch_wait_answer(payloads: Vec<pb::Envelope>) -> Reply {
    Reply::ok(&pb::FetchWaitResponse { payloads })
}

async fn fetch_wait(
    state: &Arc<State>,
    conn: &ConnState,
    me: IdentityKey,
    payload: &[u8],
) -> Reply {
    let req: pb::FetchWaitRequest = tri!(decode(payload));
    let w = tri!(FetchWait::try_from(req));
    if let Err(r) = owner_check(me, &w.read.mailbox) {
        return r;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(w.timeout_ms);
    let notify = state.waiter(&w.read.mailbox);
    conn.long_poll_started(&w.read.mailbox);
    let closed = conn.quic.closed();
    tokio::pin!(closed);
    let result = loop {
        // Register interest before looking, so an enqueue in between is not missed.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let drain = state.drain.notified();
        tokio::pin!(drain);
        drain.as_mut().enable();
        let found = read_answer(state, conn, |frame| {
            fetch_after_cursor(state, conn, &w.read, frame, fetch_wait_answer)
        })
        .await;
        match found {
            Err(r) => break Err(r),
            Ok(Some(reply)) => break Ok(reply),
            Ok(None) if state.is_draining() || tokio::time::Instant::now() >= deadline => {
                break Ok(fetch_wait_answer(Vec::new()));
            }
            Ok(None) => {}
        }
        // Nothing is held while waiting: a long poll costs its stream and this future.
        tokio::select! {
            _ = &mut notified => {}
            _ = &mut drain => {}
            _ = tokio::time::sleep_until(deadline) => {}
            // The client is gone: end now, not when the poll would have timed out.
            _ = &mut closed => break Ok(fetch_wait_answer(Vec::new())),
        }
    };
    conn.long_poll_ended(&w.read.mailbox);
    state.release_waiter(&w.read.mailbox, notify);
    let reply = tri_reply!(result);
    inc(&state.metrics.c.fetch_wait);
    reply
}

async fn peek(state: &State, conn: &ConnState, me: IdentityKey, payload: &[u8]) -> Reply {
    let req: pb::PeekRequest = tri!(decode(payload));
    let read = tri!(MailboxRead::try_from(req));
    if let Err(r) = owner_check(me, &read.mailbox) {
        return r;
    }
    let answer = |payloads| Reply::ok(&pb::PeekResponse { payloads });
    let found = read_answer(state, conn, |frame| {
        let msgs = state
            .store
            .fetch(
                &read.mailbox,
                0,
                read.limit,
                payload_room(frame),
                crate::now_ms(),
            )
            .map_err(|e| store_error(state, &e))?;
        if msgs.is_empty() {
            return Ok(Read::Nothing);
        }
        Ok(fitted(
            answer(msgs.into_iter().map(envelope).collect()),
            frame,
        ))
    })
    .await;
    let reply = tri_reply!(found).unwrap_or_else(|| answer(Vec::new()));
    inc(&state.metrics.c.peek);
    reply
}

async fn ack(state: &State, me: IdentityKey, payload: &[u8]) -> Reply {
    let req: pb::AckRequest = tri!(decode(payload));
    let a = tri!(Ack::try_from(req));
    if let Err(r) = owner_check(me, &a.mailbox) {
        return r;
    }
    store!(state, state.store.ack(a.mailbox, a.seq_up_to).await);
    inc(&state.metrics.c.ack);
    Reply::ok(&pb::AckResponse {})
}

async fn upload_hybrid_key(state: &State, me: IdentityKey, payload: &[u8]) -> Reply {
    let req: pb::UploadHybridKeyRequest = tri!(decode(payload));
    let u = tri!(UploadHybridKey::try_from(req));
    if u.identity != me {
        return Reply::err(
            Status::Forbidden,
            "a connection may only upload the hybrid key of its own identity",
        );
    }
    store!(state, state.store.put_hybrid_key(u.identity, u.key).await);
    Reply::ok(&pb::UploadHybridKeyResponse {})
}

fn fetch_hybrid_key(state: &State, payload: &[u8]) -> Reply {
    let req: pb::FetchHybridKeyRequest = tri!(decode(payload));
    let lookup = tri!(HybridKeyLookup::try_from(req));
    match store!(state, state.store.hybrid_key(&lookup)) {
        Some((id, key)) => Reply::ok(&pb::FetchHybridKeyResponse {
            hybrid_public_key: key.as_bytes().to_vec(),
            identity_key: id.as_bytes().to_vec(),
        }),
        None => Reply::err(Status::NotFound, "no hybrid key stored for that identity"),
    }
}

fn fetch_hybrid_keys(state: &State, payload: &[u8]) -> Reply {
    let req: pb::FetchHybridKeysRequest = tri!(decode(payload));
    let f = tri!(FetchHybridKeys::try_from(req));
    let keys = store!(state, state.store.hybrid_keys(&f.identities));
    Reply::ok(&pb::FetchHybridKeysResponse {
        keys: keys
            .into_iter()
            .map(|k| k.map(|k| k.as_bytes().to_vec()).unwrap_or_default())
            .collect(),
    })
}

fn no_mesh() -> Reply {
    Reply::err(
        Status::Unavailable,
        "this node runs without a mesh (mesh.enabled = false)",
    )
}

async fn attach(state: &Arc<State>, me: IdentityKey, payload: &[u8]) -> Reply {
    let req: pb::AttachRequest = tri!(decode(payload));
    let Some(mesh) = &state.mesh else {
        return no_mesh();
    };
    let node = tri!(NodeId::from_field(&req.node_id, "node_id"));
    if node != mesh.node_id() {
        return Reply::err(
            Status::BadRequest,
            format!(
                "the claim names node {node}, but this node is {} (HealthResponse.mesh_node_id)",
                mesh.node_id()
            ),
        );
    }
    let hybrid = tri!(HybridPublicKey::from_field(
        &req.hybrid_public_key,
        "hybrid_public_key"
    ));
    let Ok(signature) = <[u8; 64]>::try_from(req.signature.as_slice()) else {
        return Reply::err(
            Status::BadRequest,
            format!("signature: expected 64 bytes, got {}", req.signature.len()),
        );
    };
    let claim = Claim {
        user: me,
        node,
        timestamp_ms: req.timestamp_ms,
        hybrid,
        signature,
    };
    // Where the user was at home until now: mail left there follows them here.
    let moved_from = mesh
        .presence_of(&me)
        .map(|(home, _)| home)
        .filter(|home| *home != node);
    match mesh.attach(claim).await {
        Ok(delivered) => {
            inc(&state.metrics.c.attach);
            Reply::ok(&pb::AttachResponse {
                delivered,
                moved_from: moved_from
                    .map(|n| n.as_bytes().to_vec())
                    .unwrap_or_default(),
            })
        }
        Err(MeshError::ClaimRefused) => Reply::err(
            Status::Unauthorized,
            "presence claim refused: the signature does not verify for this connection's identity, or a newer claim is known (use the current time)",
        ),
        Err(MeshError::Store(e)) => store_error(state, &e),
        Err(e) => {
            tracing::error!(error = %e, "attach failed");
            Reply::err(Status::Internal, "attach failed; see the node's log")
        }
    }
}

fn topic_of(bytes: &[u8]) -> Result<[u8; TOPIC_LEN], Reply> {
    <[u8; TOPIC_LEN]>::try_from(bytes).map_err(|_| {
        Reply::err(
            Status::BadRequest,
            format!("topic: expected {TOPIC_LEN} bytes, got {}", bytes.len()),
        )
    })
}

fn broadcast_publish(state: &State, payload: &[u8]) -> Reply {
    let req: pb::BroadcastPublishRequest = tri!(decode(payload));
    let Some(mesh) = &state.mesh else {
        return no_mesh();
    };
    let topic = match topic_of(&req.topic) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if req.payload.is_empty() || req.payload.len() > MAX_BROADCAST_PAYLOAD {
        return Reply::err(
            Status::PayloadTooLarge,
            format!(
                "broadcast payload: {} bytes, allowed 1 to {MAX_BROADCAST_PAYLOAD}",
                req.payload.len()
            ),
        );
    }
    let message_id = tri!(MessageId::from_field(&req.message_id, "message_id"));
    let hops = u8::try_from(req.hop_limit).unwrap_or(u8::MAX);
    let lifetime_ms = u64::from(state.cfg.default_ttl_secs) * 1000;
    match mesh.publish(topic, message_id, hops, lifetime_ms, req.payload) {
        Ok(_) => {
            inc(&state.metrics.c.broadcast_published);
            Reply::ok(&pb::BroadcastPublishResponse { duplicate: false })
        }
        Err(BroadcastDropped::Duplicate) => {
            Reply::ok(&pb::BroadcastPublishResponse { duplicate: true })
        }
        Err(BroadcastDropped::RateLimited) => Reply::retry(
            Status::RateLimited,
            "this topic is over its broadcast rate; back off",
            Duration::from_secs(1),
        ),
        Err(BroadcastDropped::Expired) => Reply::err(Status::BadRequest, "no lifetime"),
    }
}

async fn broadcast_fetch(state: &Arc<State>, conn: &ConnState, payload: &[u8]) -> Reply {
    let req: pb::BroadcastFetchRequest = tri!(decode(payload));
    let Some(mesh) = &state.mesh else {
        return no_mesh();
    };
    let topic = match topic_of(&req.topic) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let limit = if req.limit == 0 {
        64
    } else {
        req.limit.min(256)
    } as usize;
    let timeout = Duration::from_millis(req.timeout_ms.min(ferry_proto::limits::MAX_FETCH_WAIT_MS));
    let deadline = tokio::time::Instant::now() + timeout;
    let answer = |messages| Reply::ok(&pb::BroadcastFetchResponse { messages });
    let closed = conn.quic.closed();
    tokio::pin!(closed);
    loop {
        let notified = state.broadcast.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let drain = state.drain.notified();
        tokio::pin!(drain);
        drain.as_mut().enable();
        // Broadcasts are at most 64 KiB each and 256 of them fit a frame: no larger hold needed.
        let found = read_answer(state, conn, |frame| {
            let kept = mesh.broadcasts(&topic, req.after_seq);
            if kept.is_empty() {
                return Ok(Read::Nothing);
            }
            let now_wall = crate::now_ms();
            let core_now = mesh.clock_ms();
            let mut bytes = 0usize;
            let room = payload_room(frame);
            let messages = kept
                .into_iter()
                .take(limit)
                .take_while(|k| {
                    bytes += k.payload.len();
                    bytes <= room
                })
                .map(|k| pb::BroadcastEnvelope {
                    seq: k.seq,
                    payload: k.payload,
                    message_id: k.message_id.as_bytes().to_vec(),
                    received_at_ms: now_wall.saturating_sub(core_now.saturating_sub(k.received_ms)),
                })
                .collect::<Vec<_>>();
            if messages.is_empty() {
                return Ok(Read::Needs(MAX_BROADCAST_PAYLOAD + 1024));
            }
            Ok(fitted(answer(messages), frame))
        })
        .await;
        match tri_reply!(found) {
            Some(reply) => return reply,
            None if state.is_draining() || tokio::time::Instant::now() >= deadline => {
                return answer(Vec::new());
            }
            None => {}
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = &mut drain => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = &mut closed => return answer(Vec::new()),
        }
    }
}
