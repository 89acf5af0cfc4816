//! Method dispatch: decode, validate, authorise, act, answer. Every failure is a status with
//! an `Error` message; nothing a client sends can take the node down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::limits::{MAX_PAYLOAD, NONCE_LEN};
use ferry_proto::qpq::v1 as pb;
use ferry_proto::types::{
    Ack, AuthProof, BatchEnqueue, DeviceId, Enqueue, FetchHybridKeys, FetchWait, HybridKeyLookup,
    IdentityKey, MailboxAddr, MailboxRead, MessageId, SessionToken, UploadHybridKey, resolve_ttl,
};
use ferry_proto::{Method, ProtoError, PushEvent, Status, decode_message};
use ferry_store::{NewMessage, StoreError, StoredMessage};
use prost::Message;

use crate::auth::{self, CHALLENGE_TTL};
use crate::conn::{ConnState, PushDecision};
use crate::metrics::{add, inc};
use crate::state::{SESSION_TTL, State};

/// Payload bytes of envelopes in one response at most: the frame limit minus room for the
/// per-envelope fields of up to `MAX_FETCH_LIMIT` envelopes.
const MAX_RESPONSE_PAYLOAD: usize = MAX_PAYLOAD - 128 * 1024;

/// An answer: a status and its protobuf payload.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: Status,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn ok(msg: &impl Message) -> Self {
        Self {
            status: Status::Ok,
            body: msg.encode_to_vec(),
        }
    }

    pub(crate) fn err(status: Status, message: impl Into<String>) -> Self {
        Self::retry(status, message, Duration::ZERO)
    }

    pub(crate) fn retry(status: Status, message: impl Into<String>, after: Duration) -> Self {
        Self {
            status,
            body: pb::Error {
                message: message.into(),
                retry_after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            }
            .encode_to_vec(),
        }
    }
}

impl From<ProtoError> for Reply {
    fn from(e: ProtoError) -> Self {
        match e {
            ProtoError::PayloadTooLarge { .. } => {
                Reply::err(Status::PayloadTooLarge, e.to_string())
            }
            other => Reply::err(Status::BadRequest, other.to_string()),
        }
    }
}

fn store_error(state: &State, e: &StoreError) -> Reply {
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

macro_rules! store {
    ($state:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return store_error($state, &e),
        }
    };
}

fn decode<M: Message + Default>(payload: &[u8]) -> Result<M, ProtoError> {
    decode_message(payload)
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
        Method::AuthResponse => return auth_response(state, conn, payload),
        Method::ResumeSession => return resume(state, conn, payload),
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
        Method::Fetch => fetch(state, conn, me, payload),
        Method::FetchWait => fetch_wait(state, conn, me, payload).await,
        Method::Peek => peek(state, me, payload),
        Method::Ack => ack(state, me, payload).await,
        Method::UploadHybridKey => upload_hybrid_key(state, me, payload).await,
        Method::FetchHybridKey => fetch_hybrid_key(state, payload),
        Method::FetchHybridKeys => fetch_hybrid_keys(state, payload),
        other => Reply::err(
            Status::UnknownMethod,
            format!("{other} is not implemented by this node"),
        ),
    }
}

fn health(state: &State) -> Reply {
    let depth = state.store.depth().unwrap_or(0);
    Reply::ok(&pb::HealthResponse {
        status: if state.is_draining() {
            "draining"
        } else {
            "ok"
        }
        .into(),
        uptime_secs: state.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").into(),
        queue_depth: depth,
        node_id: state.node_id.clone(),
        mesh_node_id: Vec::new(),
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

fn auth_response(state: &Arc<State>, conn: &Arc<ConnState>, payload: &[u8]) -> Reply {
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
    conn.set_identity(proof.identity);
    state.register(proof.identity, conn);
    state.new_session(proof.identity, SessionToken(token), Instant::now());
    inc(&state.metrics.c.auth_success);
    tracing::debug!(identity = %proof.identity.fingerprint(), "authenticated");
    Reply::ok(&pb::AuthResponseResponse {
        session_token: token.to_vec(),
        expires_in_secs: SESSION_TTL.as_secs(),
    })
}

fn resume(state: &Arc<State>, conn: &Arc<ConnState>, payload: &[u8]) -> Reply {
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
            conn.set_identity(id);
            state.register(id, conn);
            inc(&state.metrics.c.auth_success);
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

fn new_message(
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
        None => MessageId::from_array(
            random::<16>()
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
fn announce(state: &Arc<State>, mailbox: &MailboxAddr, seq: u64) {
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

async fn enqueue(state: &Arc<State>, me: IdentityKey, payload: &[u8]) -> Reply {
    let req: pb::EnqueueRequest = tri!(decode(payload));
    let e = tri!(Enqueue::try_from(req));
    let bytes = e.payload.len() as u64;
    let msg = match new_message(
        state,
        me,
        e.mailbox,
        e.payload,
        e.ttl_secs,
        e.message_id,
        e.sealed_sender,
    ) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let mailbox = msg.mailbox;
    let done = store!(state, state.store.enqueue(msg).await);
    inc(&state.metrics.c.enqueue);
    if done.duplicate {
        inc(&state.metrics.c.enqueue_duplicate);
    } else {
        add(&state.metrics.c.enqueue_bytes, bytes);
        announce(state, &mailbox, done.seq);
    }
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
        None => random::<16>().map(MessageId::from_array),
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
    let mailboxes: Vec<MailboxAddr> = msgs.iter().map(|m| m.mailbox).collect();
    let bytes = b.payload.len() as u64;
    let done = store!(state, state.store.enqueue_batch(msgs).await);
    let mut seqs = Vec::with_capacity(done.len());
    let mut duplicates = Vec::with_capacity(done.len());
    for (mailbox, d) in mailboxes.iter().zip(&done) {
        inc(&state.metrics.c.enqueue);
        if d.duplicate {
            inc(&state.metrics.c.enqueue_duplicate);
        } else {
            add(&state.metrics.c.enqueue_bytes, bytes);
            announce(state, mailbox, d.seq);
        }
        seqs.push(d.seq);
        duplicates.push(d.duplicate);
    }
    Reply::ok(&pb::BatchEnqueueResponse { seqs, duplicates })
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

/// Reads after the connection's delivery cursor and advances it.
fn fetch_after_cursor(
    state: &State,
    conn: &ConnState,
    read: &MailboxRead,
) -> Result<Vec<pb::Envelope>, StoreError> {
    conn.with_cursor(&read.mailbox, |cursor| {
        let msgs = state.store.fetch(
            &read.mailbox,
            cursor,
            read.limit,
            MAX_RESPONSE_PAYLOAD,
            crate::now_ms(),
        )?;
        let next = msgs.last().map(|m| m.seq).unwrap_or(cursor);
        Ok((msgs.into_iter().map(envelope).collect(), next))
    })
}

fn fetch(state: &State, conn: &ConnState, me: IdentityKey, payload: &[u8]) -> Reply {
    let req: pb::FetchRequest = tri!(decode(payload));
    let read = tri!(MailboxRead::try_from(req));
    if let Err(r) = owner_check(me, &read.mailbox) {
        return r;
    }
    let payloads = store!(state, fetch_after_cursor(state, conn, &read));
    inc(&state.metrics.c.fetch);
    Reply::ok(&pb::FetchResponse { payloads })
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
    let result = loop {
        // Register interest before looking, so an enqueue in between is not missed.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let drain = state.drain.notified();
        tokio::pin!(drain);
        drain.as_mut().enable();
        match fetch_after_cursor(state, conn, &w.read) {
            Err(e) => break Err(e),
            Ok(found) if !found.is_empty() => break Ok(found),
            Ok(empty) if state.is_draining() || tokio::time::Instant::now() >= deadline => {
                break Ok(empty);
            }
            Ok(_) => {}
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = &mut drain => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    };
    conn.long_poll_ended(&w.read.mailbox);
    state.release_waiter(&w.read.mailbox, notify);
    let payloads = store!(state, result);
    inc(&state.metrics.c.fetch_wait);
    Reply::ok(&pb::FetchWaitResponse { payloads })
}

fn peek(state: &State, me: IdentityKey, payload: &[u8]) -> Reply {
    let req: pb::PeekRequest = tri!(decode(payload));
    let read = tri!(MailboxRead::try_from(req));
    if let Err(r) = owner_check(me, &read.mailbox) {
        return r;
    }
    let msgs = store!(
        state,
        state.store.fetch(
            &read.mailbox,
            0,
            read.limit,
            MAX_RESPONSE_PAYLOAD,
            crate::now_ms()
        )
    );
    inc(&state.metrics.c.peek);
    Reply::ok(&pb::PeekResponse {
        payloads: msgs.into_iter().map(envelope).collect(),
    })
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
