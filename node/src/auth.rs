//! Connection authentication: the node hands out a single-use nonce (104), the client signs
//! the transcript binding that nonce to this TLS connection (105).

use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, VerifyingKey};
use ferry_proto::transcript::{AUTH_EXPORTER_LABEL, AUTH_EXPORTER_LEN, auth_transcript};
use ferry_proto::types::AuthProof;

use crate::conn::ConnState;

/// How long a challenge nonce stays valid.
pub(crate) const CHALLENGE_TTL: Duration = Duration::from_secs(60);

/// Why a proof was refused. Each is answered `Unauthorized` with this text.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthFailure {
    #[error(
        "no challenge pending on this connection (call AuthChallenge first; each nonce is single-use)"
    )]
    NoChallenge,
    #[error("the challenge expired; ask for a new one")]
    Expired,
    #[error("identity_key is not a valid Ed25519 public key")]
    BadKey,
    #[error("signature does not verify for this identity, nonce and connection")]
    BadSignature,
    #[error("TLS exporter unavailable")]
    Exporter,
}

/// Checks a proof against the pending challenge, consuming the challenge either way.
pub(crate) fn verify(conn: &ConnState, proof: &AuthProof, now: Instant) -> Result<(), AuthFailure> {
    let (nonce, expires) = conn.take_challenge().ok_or(AuthFailure::NoChallenge)?;
    if now >= expires {
        return Err(AuthFailure::Expired);
    }
    let mut exporter = [0u8; AUTH_EXPORTER_LEN];
    conn.quic
        .export_keying_material(&mut exporter, AUTH_EXPORTER_LABEL, b"")
        .map_err(|_| AuthFailure::Exporter)?;
    let key =
        VerifyingKey::from_bytes(proof.identity.as_bytes()).map_err(|_| AuthFailure::BadKey)?;
    let transcript = auth_transcript(&exporter, &nonce, &proof.identity);
    key.verify_strict(&transcript, &Signature::from_bytes(&proof.signature.0))
        .map_err(|_| AuthFailure::BadSignature)
}
