//! Byte strings that get signed. Both sides build them here, so they cannot drift apart.

use crate::limits::NONCE_LEN;
use crate::types::{HybridPublicKey, IdentityKey, MessageId, NodeId};
use sha2::{Digest, Sha256};

/// Domain separator of the connection authentication transcript (method 105).
pub const AUTH_DOMAIN: &[u8] = b"ferry/qpq/auth/v1";
/// TLS 1.3 exporter label whose output binds the auth signature to one connection.
pub const AUTH_EXPORTER_LABEL: &[u8] = b"EXPORTER-ferry-qpq-auth";
/// Length of the exporter output used in the transcript.
pub const AUTH_EXPORTER_LEN: usize = 32;
/// Length of the auth transcript.
pub const AUTH_TRANSCRIPT_LEN: usize = AUTH_DOMAIN.len() + 1 + AUTH_EXPORTER_LEN + NONCE_LEN + 32;

/// The bytes a client signs to prove its identity key on one connection:
/// `AUTH_DOMAIN || 0x00 || exporter || nonce || identity_key`.
pub fn auth_transcript(
    exporter: &[u8; AUTH_EXPORTER_LEN],
    nonce: &[u8; NONCE_LEN],
    identity: &IdentityKey,
) -> [u8; AUTH_TRANSCRIPT_LEN] {
    let mut out = [0u8; AUTH_TRANSCRIPT_LEN];
    let parts: [&[u8]; 5] = [AUTH_DOMAIN, &[0], exporter, nonce, identity.as_bytes()];
    let mut at = 0;
    for part in parts {
        if let Some(dst) = out.get_mut(at..at + part.len()) {
            dst.copy_from_slice(part);
        }
        at += part.len();
    }
    out
}

/// Domain separator of the end-to-end message signature.
pub const E2E_DOMAIN: &[u8] = b"ferry/e2e/v1/message";
/// Body kind of a text message in the e2e transcript.
pub const E2E_BODY_TEXT: u8 = 1;

/// The bytes a sender signs inside an end-to-end message (see `ferry/e2e/v1/message.proto`).
pub fn e2e_transcript(
    sender: &IdentityKey,
    recipient: &IdentityKey,
    message_id: &MessageId,
    sent_at_ms: u64,
    body_kind: u8,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(E2E_DOMAIN.len() + 1 + 32 + 32 + 16 + 8 + 1 + 4 + body.len());
    out.extend_from_slice(E2E_DOMAIN);
    out.push(0);
    out.extend_from_slice(sender.as_bytes());
    out.extend_from_slice(recipient.as_bytes());
    out.extend_from_slice(message_id.as_bytes());
    out.extend_from_slice(&sent_at_ms.to_be_bytes());
    out.push(body_kind);
    // Bodies are bounded by the frame limit, far below u32::MAX.
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Domain separator of presence claims.
pub const PRESENCE_DOMAIN: &[u8] = b"ferry/mesh/presence/v1";

/// The bytes a user signs to claim attachment at a node (Attach, and mesh presence):
/// `PRESENCE_DOMAIN || 0x00 || user || node || timestamp_ms (BE) || SHA-256(hybrid key)`.
pub fn presence_transcript(
    user: &IdentityKey,
    node: &NodeId,
    timestamp_ms: u64,
    hybrid: &HybridPublicKey,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(PRESENCE_DOMAIN.len() + 1 + 32 + 32 + 8 + 32);
    out.extend_from_slice(PRESENCE_DOMAIN);
    out.push(0);
    out.extend_from_slice(user.as_bytes());
    out.extend_from_slice(node.as_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&Sha256::digest(hybrid.as_bytes()));
    out
}
