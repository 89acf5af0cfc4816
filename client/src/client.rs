use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use ferry_proto::frame::{PushHeader, ResponseHeader, encode_request};
use ferry_proto::limits::TOPIC_LEN;
use ferry_proto::limits::{ALPN_QPQ, NONCE_LEN};
use ferry_proto::qpq::v1 as pb;
use ferry_proto::transcript::presence_transcript;
use ferry_proto::transcript::{AUTH_EXPORTER_LABEL, AUTH_EXPORTER_LEN, auth_transcript};
use ferry_proto::types::{
    Fingerprint, HybridKeyLookup, HybridPublicKey, IdentityKey, MailboxAddr, MessageId, NodeId,
    SessionToken,
};
use ferry_proto::{Method, PushEvent as PushType, Status};
use std::sync::atomic::AtomicU32;

use prost::Message;
use tokio::sync::mpsc;

use crate::trust::{KnownNodes, PinVerifier};
use crate::{ClientError, Identity, Trust, message};

/// How to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Certificate trust.
    pub trust: Trust,
    /// TLS server name (SNI). Certificates are pinned, so it only has to be well-formed.
    pub server_name: String,
    /// Give up on the handshake after this long.
    pub connect_timeout: Duration,
    /// QUIC keep-alive interval (keeps NAT bindings open on mesh routers, and finds out that
    /// a node restarted: it answers the first packet on the old connection with a reset).
    pub keep_alive: Duration,
    /// A connection that hears nothing from the node for this long is dead (the node is gone
    /// and has not come back). The node's own limit is 300 s; the shorter one applies.
    pub idle_timeout: Duration,
    /// A call whose answer takes longer than this (beyond the wait a long poll asks for)
    /// fails with [`ClientError::Timeout`] and closes the connection: the node is not
    /// answering on it.
    pub request_timeout: Duration,
    /// When the node answers `RateLimited` (its per-address rate), wait as long as it asks
    /// and send the same request again, on the same connection, for up to this long in all;
    /// `None` (the default) returns `RateLimited` at once. Only the refused request is sent
    /// again, so a call of several requests (authentication) makes progress at any rate.
    pub pace_rate_limits: Option<Duration>,
}

impl ConnectOptions {
    /// Trust on first use with the default known-nodes file.
    pub fn tofu() -> Self {
        Self::with_trust(Trust::KnownNodes(Trust::default_known_nodes()))
    }

    /// Options with the given trust and defaults otherwise.
    pub fn with_trust(trust: Trust) -> Self {
        Self {
            trust,
            server_name: "ferry.node".into(),
            connect_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            pace_rate_limits: None,
        }
    }
}

/// A server-initiated event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushEvent {
    /// A message was stored for this connection's identity.
    NewMessage(pb::NewMessage),
    /// An event type this client does not handle.
    Other(u16),
}

/// What an Attach did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attached {
    /// Messages that waited in this node's custody and are now in the mailbox.
    pub delivered: u64,
    /// The user's previous home, when it was another node: mail left there is on its way.
    pub moved_from: Option<NodeId>,
}

/// A connection to a node.
#[derive(Debug)]
pub struct Client {
    endpoint: quinn::Endpoint,
    owns_endpoint: bool,
    conn: quinn::Connection,
    next_request: AtomicU32,
    request_timeout: Duration,
    pace_rate_limits: Option<Duration>,
    /// Whether pacing was said once already.
    paced: std::sync::atomic::AtomicBool,
    node_cert: Fingerprint,
    identity: Mutex<Option<IdentityKey>>,
    push: Mutex<Option<mpsc::Receiver<PushEvent>>>,
}

fn stream_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Stream(e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Client {
    /// A client endpoint (one UDP socket) for the address family of `node`, for use with
    /// [`Client::connect_on`] when one process keeps many connections.
    pub fn endpoint_for(node: &SocketAddr) -> Result<quinn::Endpoint, ClientError> {
        let bind: SocketAddr = if node.is_ipv6() {
            SocketAddr::from(([0u16; 8], 0))
        } else {
            SocketAddr::from(([0u8; 4], 0))
        };
        crate::net::bind_udp(bind, crate::net::DEFAULT_RECV_BUFFER)
            .and_then(|b| b.endpoint(quinn::EndpointConfig::default(), None))
            .map_err(|e| ClientError::Connect {
                addr: node.to_string(),
                reason: e.to_string(),
            })
    }

    async fn resolve(node: &str) -> Result<SocketAddr, ClientError> {
        let connect_err = |reason: String| ClientError::Connect {
            addr: node.to_string(),
            reason,
        };
        tokio::net::lookup_host(node)
            .await
            .map_err(|e| connect_err(e.to_string()))?
            .next()
            .ok_or_else(|| connect_err("no address".into()))
    }

    /// Connects to `node` (`host:port`) and checks its certificate.
    pub async fn connect(node: &str, opts: &ConnectOptions) -> Result<Self, ClientError> {
        let addr = Self::resolve(node).await?;
        let endpoint = Self::endpoint_for(&addr)?;
        let mut c = Self::connect_on(&endpoint, node, opts).await?;
        c.owns_endpoint = true;
        Ok(c)
    }

    /// Connects over an existing endpoint (see [`Client::endpoint_for`]).
    pub async fn connect_on(
        endpoint: &quinn::Endpoint,
        node: &str,
        opts: &ConnectOptions,
    ) -> Result<Self, ClientError> {
        let connect_err = |reason: String| ClientError::Connect {
            addr: node.to_string(),
            reason,
        };
        let addr = Self::resolve(node).await?;
        let (expected, known_nodes) = match &opts.trust {
            Trust::Pinned(fp) => (Some(*fp), None),
            Trust::KnownNodes(path) => (KnownNodes::load(path)?.get(node), Some(path.clone())),
        };
        let provider = provider();
        let verifier = Arc::new(PinVerifier::new(expected, Arc::clone(&provider)));
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN_QPQ.to_vec()];
        let quic_tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| connect_err(e.to_string()))?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(opts.keep_alive))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(opts.idle_timeout)
                    .map_err(|e| connect_err(e.to_string()))?,
            ))
            .max_concurrent_bidi_streams(0u32.into())
            .max_concurrent_uni_streams(64u32.into());
        let mut config = quinn::ClientConfig::new(Arc::new(quic_tls));
        config.transport_config(Arc::new(transport));
        let connecting = endpoint
            .connect_with(config, addr, &opts.server_name)
            .map_err(|e| connect_err(e.to_string()))?;
        let conn = match tokio::time::timeout(opts.connect_timeout, connecting).await {
            Err(_) => {
                return Err(ClientError::NoAnswer {
                    addr: node.to_string(),
                    waited: opts.connect_timeout,
                });
            }
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                // Report a pin mismatch as such, not as a generic TLS failure.
                if let (Some(exp), Some(seen)) = (expected, verifier.seen())
                    && exp != seen
                {
                    return Err(match known_nodes {
                        Some(path) => ClientError::CertificateChanged {
                            node: node.to_string(),
                            expected: exp,
                            presented: seen,
                            known_nodes: path,
                        },
                        None => ClientError::PinMismatch {
                            expected: exp,
                            presented: seen,
                        },
                    });
                }
                return Err(connect_err(e.to_string()));
            }
        };
        let node_cert = verifier
            .seen()
            .ok_or_else(|| connect_err("no certificate seen".into()))?;
        if expected.is_none()
            && let Some(path) = &known_nodes
        {
            match KnownNodes::pin(path, node, &node_cert)? {
                None => {
                    tracing::info!(%node, fingerprint = %node_cert, "new node: certificate pinned");
                }
                Some(pinned) if pinned == node_cert => {}
                // Another connection pinned a different certificate for this node meanwhile.
                Some(pinned) => {
                    conn.close(0u32.into(), b"certificate changed");
                    return Err(ClientError::CertificateChanged {
                        node: node.to_string(),
                        expected: pinned,
                        presented: node_cert,
                        known_nodes: path.clone(),
                    });
                }
            }
        }
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(read_pushes(conn.clone(), tx));
        Ok(Self {
            endpoint: endpoint.clone(),
            owns_endpoint: false,
            conn,
            next_request: AtomicU32::new(1),
            request_timeout: opts.request_timeout,
            pace_rate_limits: opts.pace_rate_limits,
            paced: std::sync::atomic::AtomicBool::new(false),
            node_cert,
            identity: Mutex::new(None),
            push: Mutex::new(Some(rx)),
        })
    }

    /// SHA-256 of the node's certificate.
    pub fn node_fingerprint(&self) -> Fingerprint {
        self.node_cert
    }

    /// The identity this connection authenticated as, if any.
    pub fn identity(&self) -> Option<IdentityKey> {
        self.identity.lock().ok().and_then(|g| *g)
    }

    /// The underlying QUIC connection (for tests that misbehave on purpose).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Push events of this connection; can be taken once.
    pub fn push_events(&self) -> Option<mpsc::Receiver<PushEvent>> {
        self.push.lock().ok().and_then(|mut g| g.take())
    }

    /// Sends one raw request frame payload and returns the status and response payload.
    /// Gives up after the connection's request timeout.
    pub async fn call_raw(
        &self,
        method_id: u16,
        payload: &[u8],
    ) -> Result<(Status, Vec<u8>), ClientError> {
        self.call_raw_within(method_id, payload, self.request_timeout)
            .await
    }

    /// [`Client::call_raw`], giving up after `within`: the node is then not answering on this
    /// connection, which is closed ([`ClientError::Timeout`]).
    pub async fn call_raw_within(
        &self,
        method_id: u16,
        payload: &[u8],
        within: Duration,
    ) -> Result<(Status, Vec<u8>), ClientError> {
        match tokio::time::timeout(within, self.exchange(method_id, payload)).await {
            Ok(r) => r,
            Err(_) => {
                self.conn.close(0u32.into(), b"no answer");
                Err(ClientError::Timeout {
                    method: Method::from_id(method_id)
                        .map_or_else(|| method_id.to_string(), |m| m.name().to_string()),
                    after: within,
                })
            }
        }
    }

    async fn exchange(
        &self,
        method_id: u16,
        payload: &[u8],
    ) -> Result<(Status, Vec<u8>), ClientError> {
        let rid = self
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let frame = encode_request(method_id, rid, payload).map_err(ClientError::Request)?;
        let (mut send, mut recv) = self.conn.open_bi().await?;
        send.write_all(&frame).await.map_err(stream_err)?;
        send.finish().map_err(stream_err)?;
        let mut hdr = [0u8; ResponseHeader::LEN];
        recv.read_exact(&mut hdr).await.map_err(stream_err)?;
        let header = ResponseHeader::from_bytes(&hdr);
        let mut body = vec![0u8; header.payload_len()?];
        recv.read_exact(&mut body).await.map_err(stream_err)?;
        if header.request_id != rid {
            return Err(ClientError::Stream(format!(
                "response for request {} on the stream of request {rid}",
                header.request_id
            )));
        }
        Ok((header.status()?, body))
    }

    /// Calls a method with a protobuf request and decodes the protobuf response.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        method: Method,
        req: &Req,
    ) -> Result<Resp, ClientError> {
        self.call_within(method, req, self.request_timeout).await
    }

    async fn call_within<Req: Message, Resp: Message + Default>(
        &self,
        method: Method,
        req: &Req,
        within: Duration,
    ) -> Result<Resp, ClientError> {
        let payload = req.encode_to_vec();
        let until = self
            .pace_rate_limits
            .map(|d| tokio::time::Instant::now() + d);
        loop {
            let (status, body) = self.call_raw_within(method.id(), &payload, within).await?;
            if status == Status::Ok {
                return Ok(ferry_proto::decode_message(&body)?);
            }
            let err = ClientError::status(method, status, &body);
            if let (
                Some(until),
                ClientError::Status {
                    status: Status::RateLimited,
                    retry_after_ms,
                    ..
                },
            ) = (until, &err)
            {
                let wait = Duration::from_millis((*retry_after_ms).clamp(20, 5_000));
                if tokio::time::Instant::now() + wait < until {
                    if !self.paced.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!(
                            "the node limits how many requests a second it takes from your \
                             address (its rate_limit); going at its pace"
                        );
                    }
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return Err(err);
        }
    }

    /// Health (802).
    pub async fn health(&self) -> Result<pb::HealthResponse, ClientError> {
        self.call(Method::Health, &pb::HealthRequest {}).await
    }

    /// Proves `id` on this connection (104 then 105) and returns a session token.
    pub async fn authenticate(&self, id: &Identity) -> Result<SessionToken, ClientError> {
        let me = id.public_key();
        let ch: pb::AuthChallengeResponse = self
            .call(
                Method::AuthChallenge,
                &pb::AuthChallengeRequest {
                    identity_key: me.as_bytes().to_vec(),
                },
            )
            .await?;
        let nonce: [u8; NONCE_LEN] = ch.nonce.as_slice().try_into().map_err(|_| {
            ClientError::Stream(format!("challenge nonce of {} bytes", ch.nonce.len()))
        })?;
        let exporter = self.exporter()?;
        let sig = id.sign(&auth_transcript(&exporter, &nonce, &me));
        let resp: pb::AuthResponseResponse = self
            .call(
                Method::AuthResponse,
                &pb::AuthResponseRequest {
                    identity_key: me.as_bytes().to_vec(),
                    signature: sig.to_vec(),
                },
            )
            .await?;
        if let Ok(mut g) = self.identity.lock() {
            *g = Some(me);
        }
        let token: [u8; 32] = resp
            .session_token
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Stream("session token is not 32 bytes".into()))?;
        Ok(SessionToken(token))
    }

    /// The TLS exporter value that binds an auth signature to this connection.
    pub fn exporter(&self) -> Result<[u8; AUTH_EXPORTER_LEN], ClientError> {
        let mut out = [0u8; AUTH_EXPORTER_LEN];
        self.conn
            .export_keying_material(&mut out, AUTH_EXPORTER_LABEL, b"")
            .map_err(|_| ClientError::Stream("TLS exporter unavailable".into()))?;
        Ok(out)
    }

    /// Binds this connection to an existing session (106).
    pub async fn resume(&self, token: &SessionToken) -> Result<IdentityKey, ClientError> {
        let r: pb::ResumeSessionResponse = self
            .call(
                Method::ResumeSession,
                &pb::ResumeSessionRequest {
                    session_token: token.0.to_vec(),
                },
            )
            .await?;
        let id = IdentityKey::from_field(&r.identity_key, "identity_key")?;
        if let Ok(mut g) = self.identity.lock() {
            *g = Some(id);
        }
        Ok(id)
    }

    /// Enqueue (200).
    pub async fn enqueue(
        &self,
        req: &pb::EnqueueRequest,
    ) -> Result<pb::EnqueueResponse, ClientError> {
        self.call(Method::Enqueue, req).await
    }

    /// EnqueueMany (812, Ferry): up to 256 Enqueues in one request and one durable commit,
    /// answered in order. Other qpq servers answer `UnknownMethod`; [`crate::Batcher`] falls
    /// back to one Enqueue per message then.
    pub async fn enqueue_many(
        &self,
        req: &pb::EnqueueManyRequest,
    ) -> Result<pb::EnqueueManyResponse, ClientError> {
        self.call(Method::EnqueueMany, req).await
    }

    /// BatchEnqueue (205).
    pub async fn batch_enqueue(
        &self,
        req: &pb::BatchEnqueueRequest,
    ) -> Result<pb::BatchEnqueueResponse, ClientError> {
        self.call(Method::BatchEnqueue, req).await
    }

    fn read_fields(mailbox: &MailboxAddr) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        (
            mailbox.recipient.as_bytes().to_vec(),
            mailbox.channel.as_bytes().to_vec(),
            mailbox.device.as_bytes().to_vec(),
        )
    }

    /// Fetch (201): messages after this connection's delivery cursor.
    pub async fn fetch(
        &self,
        mailbox: &MailboxAddr,
        limit: u32,
    ) -> Result<Vec<pb::Envelope>, ClientError> {
        let (recipient_key, channel_id, device_id) = Self::read_fields(mailbox);
        let r: pb::FetchResponse = self
            .call(
                Method::Fetch,
                &pb::FetchRequest {
                    recipient_key,
                    channel_id,
                    limit,
                    device_id,
                },
            )
            .await?;
        Ok(r.payloads)
    }

    /// FetchWait (202): like fetch, but waits up to `timeout` for a message.
    pub async fn fetch_wait(
        &self,
        mailbox: &MailboxAddr,
        limit: u32,
        timeout: Duration,
    ) -> Result<Vec<pb::Envelope>, ClientError> {
        let (recipient_key, channel_id, device_id) = Self::read_fields(mailbox);
        let req = pb::FetchWaitRequest {
            recipient_key,
            channel_id,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            limit,
            device_id,
        };
        // The node answers within the wait it honours (at most MAX_FETCH_WAIT_MS); past that
        // and the request timeout, it is gone.
        let wait = timeout.min(Duration::from_millis(
            ferry_proto::limits::MAX_FETCH_WAIT_MS,
        ));
        let r: pb::FetchWaitResponse = self
            .call_within(Method::FetchWait, &req, wait + self.request_timeout)
            .await?;
        Ok(r.payloads)
    }

    /// Peek (203): everything not yet acknowledged; moves no cursor.
    pub async fn peek(
        &self,
        mailbox: &MailboxAddr,
        limit: u32,
    ) -> Result<Vec<pb::Envelope>, ClientError> {
        let (recipient_key, channel_id, device_id) = Self::read_fields(mailbox);
        let r: pb::PeekResponse = self
            .call(
                Method::Peek,
                &pb::PeekRequest {
                    recipient_key,
                    channel_id,
                    limit,
                    device_id,
                },
            )
            .await?;
        Ok(r.payloads)
    }

    /// Ack (204): deletes everything up to `seq_up_to`.
    pub async fn ack(&self, mailbox: &MailboxAddr, seq_up_to: u64) -> Result<(), ClientError> {
        let (recipient_key, channel_id, device_id) = Self::read_fields(mailbox);
        let _: pb::AckResponse = self
            .call(
                Method::Ack,
                &pb::AckRequest {
                    recipient_key,
                    channel_id,
                    seq_up_to,
                    device_id,
                },
            )
            .await?;
        Ok(())
    }

    /// UploadHybridKey (302) for the authenticated identity.
    pub async fn upload_hybrid_key(&self, id: &Identity) -> Result<(), ClientError> {
        let _: pb::UploadHybridKeyResponse = self
            .call(
                Method::UploadHybridKey,
                &pb::UploadHybridKeyRequest {
                    identity_key: id.public_key().as_bytes().to_vec(),
                    hybrid_public_key: id.hybrid_public_key().as_bytes().to_vec(),
                },
            )
            .await?;
        Ok(())
    }

    /// Makes this node `id`'s home: on a mesh node, signs a presence claim naming the node
    /// (Attach, 107), so every node routes `id`'s mail here and can encrypt to it, and moves
    /// what waited for `id` into its mailbox; on a node without a mesh (or any plain qpq
    /// server), uploads the hybrid key (302). Returns how many messages that were waiting
    /// here it delivered, and the node `id` was at home at before, if another.
    pub async fn attach(&self, id: &Identity) -> Result<Attached, ClientError> {
        let h = self.health().await?;
        if h.mesh_node_id.is_empty() {
            self.upload_hybrid_key(id).await?;
            return Ok(Attached::default());
        }
        let node = NodeId::from_field(&h.mesh_node_id, "mesh_node_id")?;
        let me = id.public_key();
        let hybrid = id.hybrid_public_key();
        let timestamp_ms = crate::now_ms();
        let sig = id.sign(&presence_transcript(&me, &node, timestamp_ms, &hybrid));
        let r: pb::AttachResponse = self
            .call(
                Method::Attach,
                &pb::AttachRequest {
                    node_id: node.as_bytes().to_vec(),
                    timestamp_ms,
                    hybrid_public_key: hybrid.as_bytes().to_vec(),
                    signature: sig.to_vec(),
                },
            )
            .await?;
        // `moved_from` is a hint: one that does not parse is left out, not a failed login.
        let moved_from = match r.moved_from.as_slice() {
            [] => None,
            b => NodeId::from_field(b, "moved_from")
                .inspect_err(|e| tracing::debug!(error = %e, "ignoring a malformed moved_from"))
                .ok(),
        };
        Ok(Attached {
            delivered: r.delivered,
            moved_from,
        })
    }

    /// BroadcastPublish (810): floods sealed bytes to a topic. Returns whether the node had
    /// already seen this message id.
    pub async fn broadcast_publish(
        &self,
        topic: &[u8; TOPIC_LEN],
        message_id: &MessageId,
        payload: Vec<u8>,
        hop_limit: u8,
    ) -> Result<bool, ClientError> {
        let r: pb::BroadcastPublishResponse = self
            .call(
                Method::BroadcastPublish,
                &pb::BroadcastPublishRequest {
                    topic: topic.to_vec(),
                    payload,
                    message_id: message_id.as_bytes().to_vec(),
                    hop_limit: u32::from(hop_limit),
                },
            )
            .await?;
        Ok(r.duplicate)
    }

    /// BroadcastFetch (811): what the node keeps of a topic after `after_seq`, waiting up to
    /// `timeout` for something new.
    pub async fn broadcast_fetch(
        &self,
        topic: &[u8; TOPIC_LEN],
        after_seq: u64,
        timeout: Duration,
    ) -> Result<Vec<pb::BroadcastEnvelope>, ClientError> {
        let wait = timeout.min(Duration::from_millis(
            ferry_proto::limits::MAX_FETCH_WAIT_MS,
        ));
        let r: pb::BroadcastFetchResponse = self
            .call_within(
                Method::BroadcastFetch,
                &pb::BroadcastFetchRequest {
                    topic: topic.to_vec(),
                    after_seq,
                    limit: 0,
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                },
                wait + self.request_timeout,
            )
            .await?;
        Ok(r.messages)
    }

    /// FetchHybridKey (303) by identity key or fingerprint; `None` if the node has none.
    pub async fn fetch_hybrid_key(
        &self,
        lookup: &HybridKeyLookup,
    ) -> Result<Option<(IdentityKey, HybridPublicKey)>, ClientError> {
        let req = match lookup {
            HybridKeyLookup::Identity(k) => pb::FetchHybridKeyRequest {
                identity_key: k.as_bytes().to_vec(),
                fingerprint: vec![],
            },
            HybridKeyLookup::Fingerprint(f) => pb::FetchHybridKeyRequest {
                identity_key: vec![],
                fingerprint: f.as_bytes().to_vec(),
            },
        };
        match self
            .call::<_, pb::FetchHybridKeyResponse>(Method::FetchHybridKey, &req)
            .await
        {
            Ok(r) => {
                let id = IdentityKey::from_field(&r.identity_key, "identity_key")?;
                let key = HybridPublicKey::from_field(&r.hybrid_public_key, "hybrid_public_key")?;
                if let HybridKeyLookup::Identity(k) = lookup
                    && *k != id
                {
                    return Err(ClientError::Stream(
                        "node returned another identity's key".into(),
                    ));
                }
                if let HybridKeyLookup::Fingerprint(f) = lookup
                    && id.fingerprint() != *f
                {
                    return Err(ClientError::Stream(
                        "node returned a key of another fingerprint".into(),
                    ));
                }
                Ok(Some((id, key)))
            }
            Err(e) if e.status_code() == Some(Status::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// FetchHybridKeys (304): in order; `None` where missing.
    pub async fn fetch_hybrid_keys(
        &self,
        ids: &[IdentityKey],
    ) -> Result<Vec<Option<HybridPublicKey>>, ClientError> {
        let r: pb::FetchHybridKeysResponse = self
            .call(
                Method::FetchHybridKeys,
                &pb::FetchHybridKeysRequest {
                    identity_keys: ids.iter().map(|k| k.as_bytes().to_vec()).collect(),
                },
            )
            .await?;
        r.keys
            .iter()
            .map(|k| {
                if k.is_empty() {
                    Ok(None)
                } else {
                    HybridPublicKey::from_field(k, "keys")
                        .map(Some)
                        .map_err(Into::into)
                }
            })
            .collect()
    }

    /// Seals `text` end to end for `to` and enqueues it. Retrying with the same `message_id`
    /// is safe: the node answers with the first result and `duplicate = true`.
    pub async fn send_text(
        &self,
        me: &Identity,
        to: &HybridKeyLookup,
        text: &str,
        ttl_secs: u32,
        message_id: MessageId,
    ) -> Result<(IdentityKey, pb::EnqueueResponse), ClientError> {
        let (recipient, hybrid) = self.recipient(to).await?;
        let resp = self
            .send_text_to(me, &recipient, &hybrid, text, ttl_secs, message_id)
            .await?;
        Ok((recipient, resp))
    }

    /// A recipient's identity and hybrid key, looked up by key or fingerprint; an error naming
    /// them when the node has no key for them.
    pub async fn recipient(
        &self,
        to: &HybridKeyLookup,
    ) -> Result<(IdentityKey, HybridPublicKey), ClientError> {
        self.fetch_hybrid_key(to).await?.ok_or_else(|| {
            ClientError::UnknownRecipient(match to {
                HybridKeyLookup::Identity(k) => k.to_string(),
                HybridKeyLookup::Fingerprint(f) => f.to_string(),
            })
        })
    }

    /// [`Client::send_text`] to a recipient whose hybrid key is known already (one request, not
    /// two, per message).
    pub async fn send_text_to(
        &self,
        me: &Identity,
        recipient: &IdentityKey,
        hybrid: &HybridPublicKey,
        text: &str,
        ttl_secs: u32,
        message_id: MessageId,
    ) -> Result<pb::EnqueueResponse, ClientError> {
        let sealed = message::seal_text(me, recipient, hybrid, &message_id, crate::now_ms(), text)?;
        let resp = self
            .enqueue(&pb::EnqueueRequest {
                recipient_key: recipient.as_bytes().to_vec(),
                payload: sealed,
                channel_id: vec![],
                ttl_secs,
                message_id: message_id.as_bytes().to_vec(),
                sealed_sender: false,
                device_id: vec![],
            })
            .await?;
        Ok(resp)
    }

    /// Closes the connection politely and waits briefly for the node to hear it.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"bye");
        if self.owns_endpoint {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        }
    }
}

/// Reads push frames from server-opened uni streams until the connection ends.
async fn read_pushes(conn: quinn::Connection, tx: mpsc::Sender<PushEvent>) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut hdr = [0u8; PushHeader::LEN];
            if recv.read_exact(&mut hdr).await.is_err() {
                return;
            }
            let header = PushHeader::from_bytes(&hdr);
            let Ok(len) = header.payload_len() else {
                return;
            };
            let mut body = vec![0u8; len];
            if recv.read_exact(&mut body).await.is_err() {
                return;
            }
            let event = match PushType::from_id(header.event_type) {
                Some(PushType::NewMessage) => {
                    match ferry_proto::decode_message::<pb::NewMessage>(&body) {
                        Ok(m) => PushEvent::NewMessage(m),
                        Err(_) => return,
                    }
                }
                _ => PushEvent::Other(header.event_type),
            };
            // A full queue means nobody is reading; pushes are hints, dropping is safe.
            let _ = tx.try_send(event);
        });
    }
}
