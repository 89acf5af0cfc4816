//! The qpq federation methods (900-905) on a hub.
//!
//! Mesh links between edges and hubs carry bundles, routes and presence by themselves; these
//! methods let other software (a qpq server, a bridge, an operator's script) hand messages to a
//! hub and ask it what it knows. The caller authenticates the connection with 104/105 using its
//! node key, must be on the hub's `[federation] allow` list, and names the same node in every
//! request's `FederationAuth`. Fields are documented in `proto/qpq/v1/federation.proto`.

use std::sync::Arc;

use ferry_mesh::driver::MeshHandle;
use ferry_proto::limits::MAX_RELAY_BATCH;
use ferry_proto::qpq::v1 as pb;
use ferry_proto::types::{Enqueue, Fingerprint, HybridKeyLookup, IdentityKey, NodeId};
use ferry_proto::{Method, Status};

use crate::config::Role;
use crate::metrics::inc;
use crate::rpc::{Reply, decode, new_message, store_error, to_mesh, tri, tri_reply};
use crate::state::State;

/// Answers a federation method for the authenticated identity `me`.
pub(crate) async fn dispatch(
    state: &Arc<State>,
    me: IdentityKey,
    method: Method,
    payload: &[u8],
) -> Reply {
    if state.cfg.role != Role::Hub {
        return Reply::err(
            Status::UnknownMethod,
            format!("{method} is served by hubs (role = \"hub\"); this node is an edge"),
        );
    }
    let origin = NodeId::from_array(*me.as_bytes());
    if !state.cfg.federation.allow.contains(&origin) {
        tracing::warn!(node = %origin, %method, "federation call refused: node not on the allow list");
        return Reply::err(
            Status::Forbidden,
            format!("node {origin} is not on this hub's [federation] allow list"),
        );
    }
    match method {
        Method::RelayEnqueue => relay_enqueue(state, origin, payload).await,
        Method::RelayBatchEnqueue => relay_batch(state, origin, payload).await,
        Method::ProxyFetchKeyPackage => {
            let req: pb::ProxyFetchKeyPackageRequest = tri!(decode(payload));
            tri_reply!(check_auth(req.auth.as_ref(), origin));
            Reply::err(
                Status::NotFound,
                "Ferry nodes keep no MLS KeyPackages (300/301 are not served); use hybrid keys (903)",
            )
        }
        Method::ProxyFetchHybridKey => hybrid_key(state, origin, payload),
        Method::ProxyResolveUser => resolve_user(state, origin, payload),
        Method::FederationHealth => health(state, origin, payload),
        other => Reply::err(
            Status::UnknownMethod,
            format!("{other} is not a federation method"),
        ),
    }
}

/// The FederationAuth must be present and name the node the connection authenticated as.
fn check_auth(auth: Option<&pb::FederationAuth>, origin: NodeId) -> Result<(), Reply> {
    let Some(auth) = auth else {
        return Err(Reply::err(
            Status::BadRequest,
            "auth (FederationAuth) is required",
        ));
    };
    if auth.origin_domain.len() > 253 {
        return Err(Reply::err(
            Status::BadRequest,
            "auth.origin_domain is longer than 253 bytes",
        ));
    }
    let named = NodeId::from_field(&auth.origin_node, "auth.origin_node").map_err(Reply::from)?;
    if named != origin {
        return Err(Reply::err(
            Status::Forbidden,
            format!(
                "auth.origin_node names {named}, but this connection authenticated as {origin}"
            ),
        ));
    }
    Ok(())
}

fn mesh(state: &State) -> Result<&MeshHandle, Reply> {
    state
        .mesh
        .as_ref()
        .ok_or_else(|| Reply::err(Status::Unavailable, "this hub runs without a mesh"))
}

/// Takes one relayed message: into custody when the recipient is at home elsewhere, else into
/// the mailbox here (where it waits, and follows the user once they attach somewhere).
/// Returns (duplicate, delivered here).
async fn relay_one(
    state: &Arc<State>,
    origin: NodeId,
    m: pb::RelayMessage,
) -> Result<(bool, bool), Reply> {
    let mesh = mesh(state)?;
    if m.message_id.is_empty() {
        return Err(Reply::err(
            Status::BadRequest,
            "message.message_id is required (16 bytes): it makes relaying idempotent",
        ));
    }
    let sender = if m.sender_key.is_empty() {
        None
    } else {
        Some(IdentityKey::from_field(&m.sender_key, "message.sender_key").map_err(Reply::from)?)
    };
    let e = Enqueue::try_from(pb::EnqueueRequest {
        recipient_key: m.recipient_key,
        payload: m.payload,
        channel_id: m.channel_id,
        ttl_secs: m.ttl_secs,
        message_id: m.message_id,
        sealed_sender: sender.is_none(),
        device_id: m.device_id,
    })
    .map_err(Reply::from)?;
    let stamp = sender.unwrap_or(IdentityKey::from_array(*origin.as_bytes()));
    let msg = new_message(
        state,
        stamp,
        e.mailbox,
        e.payload,
        e.ttl_secs,
        e.message_id,
        sender.is_none(),
    )?;
    if mesh.is_remote(&msg.mailbox.recipient) {
        if mesh.custody_from(&origin) >= state.cfg.federation.per_edge_quota {
            inc(&state.metrics.c.federation_relay_refused_quota);
            return Err(Reply::retry(
                Status::ResourceExhausted,
                format!(
                    "node {origin} has its quota ({}) of bundles in this hub's custody",
                    state.cfg.federation.per_edge_quota
                ),
                std::time::Duration::from_secs(60),
            ));
        }
        let dup = to_mesh(state, mesh, msg, Some(origin)).await?;
        inc(&state.metrics.c.federation_relayed);
        return Ok((dup, false));
    }
    let done = crate::rpc::enqueue_local(state, msg).await?;
    inc(&state.metrics.c.federation_relayed);
    Ok((done.duplicate, true))
}

async fn relay_enqueue(state: &Arc<State>, origin: NodeId, payload: &[u8]) -> Reply {
    let req: pb::RelayEnqueueRequest = tri!(decode(payload));
    tri_reply!(check_auth(req.auth.as_ref(), origin));
    let Some(m) = req.message else {
        return Reply::err(Status::BadRequest, "message is required");
    };
    match relay_one(state, origin, m).await {
        Ok((duplicate, delivered)) => Reply::ok(&pb::RelayEnqueueResponse {
            duplicate,
            delivered,
        }),
        Err(r) => r,
    }
}

async fn relay_batch(state: &Arc<State>, origin: NodeId, payload: &[u8]) -> Reply {
    let req: pb::RelayBatchEnqueueRequest = tri!(decode(payload));
    tri_reply!(check_auth(req.auth.as_ref(), origin));
    if req.messages.len() > MAX_RELAY_BATCH {
        return Reply::err(
            Status::BadRequest,
            format!(
                "{} messages in one batch; at most {MAX_RELAY_BATCH}",
                req.messages.len()
            ),
        );
    }
    // Each message is durable before the next is taken; a failure answers with what failed,
    // and the caller retries the whole batch (message ids make the retry idempotent).
    let mut duplicates = Vec::with_capacity(req.messages.len());
    let mut delivered = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        match relay_one(state, origin, m).await {
            Ok((dup, here)) => {
                duplicates.push(dup);
                delivered.push(here);
            }
            Err(r) => return r.context(&format!("messages[{i}]")),
        }
    }
    Reply::ok(&pb::RelayBatchEnqueueResponse {
        duplicates,
        delivered,
    })
}

fn hybrid_key(state: &State, origin: NodeId, payload: &[u8]) -> Reply {
    let req: pb::ProxyFetchHybridKeyRequest = tri!(decode(payload));
    tri_reply!(check_auth(req.auth.as_ref(), origin));
    let id = tri!(IdentityKey::from_field(&req.identity_key, "identity_key"));
    match state.store.hybrid_key(&HybridKeyLookup::Identity(id)) {
        Ok(Some((_, key))) => Reply::ok(&pb::ProxyFetchHybridKeyResponse {
            hybrid_public_key: key.as_bytes().to_vec(),
        }),
        Ok(None) => Reply::err(
            Status::NotFound,
            "no presence claim or hybrid key known for that identity",
        ),
        Err(e) => store_error(state, &e),
    }
}

fn resolve_user(state: &State, origin: NodeId, payload: &[u8]) -> Reply {
    let req: pb::ProxyResolveUserRequest = tri!(decode(payload));
    tri_reply!(check_auth(req.auth.as_ref(), origin));
    let mesh = match mesh(state) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let user = if !req.identity_key.is_empty() {
        tri!(IdentityKey::from_field(&req.identity_key, "identity_key"))
    } else if !req.fingerprint.is_empty() {
        let fp = tri!(Fingerprint::from_field(&req.fingerprint, "fingerprint"));
        match mesh
            .presence()
            .into_iter()
            .find(|(u, _, _)| u.fingerprint() == fp)
        {
            Some((u, _, _)) => u,
            None => return Reply::err(Status::NotFound, "no user with that fingerprint is known"),
        }
    } else {
        return Reply::err(
            Status::BadRequest,
            "identity_key or fingerprint is required",
        );
    };
    let Some((home, ts)) = mesh.presence_of(&user) else {
        return Reply::err(Status::NotFound, "no presence claim known for that user");
    };
    let route = mesh.routes().into_iter().find(|r| r.dest == home);
    let reachable = home == mesh.node_id() || route.is_some();
    Reply::ok(&pb::ProxyResolveUserResponse {
        identity_key: user.as_bytes().to_vec(),
        home_node: home.as_bytes().to_vec(),
        claim_timestamp_ms: ts,
        reachable,
        metric: route.map(|r| u32::from(r.metric)).unwrap_or(0),
    })
}

fn health(state: &State, origin: NodeId, payload: &[u8]) -> Reply {
    let req: pb::FederationHealthRequest = tri!(decode(payload));
    tri_reply!(check_auth(req.auth.as_ref(), origin));
    let mesh = match mesh(state) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let sizes = mesh.sizes();
    let linked: Vec<Vec<u8>> = mesh
        .peers()
        .into_iter()
        .filter(|p| p.linked)
        .map(|p| p.node.as_bytes().to_vec())
        .collect();
    let refused_quota = mesh.stats().refused_peer_quota.saturating_add(
        state
            .metrics
            .c
            .federation_relay_refused_quota
            .load(portable_atomic::Ordering::Relaxed),
    );
    Reply::ok(&pb::FederationHealthResponse {
        status: if state.is_draining() {
            "draining"
        } else {
            "ok"
        }
        .into(),
        hub_node: mesh.node_id().as_bytes().to_vec(),
        role: state.cfg.role.as_str().into(),
        uptime_secs: state.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").into(),
        links: u32::try_from(sizes.links).unwrap_or(u32::MAX),
        linked_nodes: linked,
        custody_bundles: sizes.custody as u64,
        custody_bytes: sizes.custody_bytes,
        refused_links: state.federation.as_ref().map(|f| f.refused()).unwrap_or(0),
        refused_quota,
    })
}
