//! Where users are: signed presence claims, newest (by the user's clock) wins.
//!
//! A claim is only accepted with a valid Ed25519 signature by the user it names, so no node
//! can draw someone else's mail to itself; a replayed old claim loses to the newer one.

use crate::det::{Keyed, Map};
use ed25519_dalek::{Signature, VerifyingKey};
use ferry_proto::transcript::presence_transcript;
use ferry_proto::types::{HybridPublicKey, IdentityKey, NodeId};

use crate::wire::Claim;

/// Why a claim was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The signature does not verify for the user it names.
    BadSignature,
    /// We already have this claim or a newer one.
    Stale,
    /// The table is full and the claim is older than everything in it.
    Full,
}

/// Verifies a claim's signature.
pub fn verify(c: &Claim) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(c.user.as_bytes()) else {
        return false;
    };
    let t = presence_transcript(&c.user, &c.node, c.timestamp_ms, &c.hybrid);
    key.verify_strict(&t, &Signature::from_bytes(&c.signature))
        .is_ok()
}

#[derive(Debug)]
pub(crate) struct PresenceTable {
    claims: Map<IdentityKey, Claim>,
    cap: usize,
}

impl PresenceTable {
    pub(crate) fn new(cap: usize, keyed: Keyed) -> Self {
        Self {
            claims: keyed.map(),
            cap: cap.max(1),
        }
    }

    /// Takes a claim if it verifies and is newer than what we have; returns the previous home.
    pub(crate) fn offer(&mut self, c: Claim, verified: bool) -> Result<Option<NodeId>, Refusal> {
        if let Some(old) = self.claims.get(&c.user)
            && old.timestamp_ms >= c.timestamp_ms
        {
            return Err(Refusal::Stale);
        }
        if !verified && !verify(&c) {
            return Err(Refusal::BadSignature);
        }
        if !self.claims.contains_key(&c.user) && self.claims.len() >= self.cap {
            let oldest = self
                .claims
                .values()
                .min_by_key(|x| x.timestamp_ms)
                .map(|x| (x.user, x.timestamp_ms));
            match oldest {
                Some((u, t)) if t < c.timestamp_ms => {
                    self.claims.remove(&u);
                }
                _ => return Err(Refusal::Full),
            }
        }
        let prev = self.claims.insert(c.user, c).map(|o| o.node);
        Ok(prev)
    }

    pub(crate) fn home(&self, user: &IdentityKey) -> Option<NodeId> {
        self.claims.get(user).map(|c| c.node)
    }

    pub(crate) fn get(&self, user: &IdentityKey) -> Option<&Claim> {
        self.claims.get(user)
    }

    pub(crate) fn hybrid_key(&self, user: &IdentityKey) -> Option<&HybridPublicKey> {
        self.claims.get(user).map(|c| &c.hybrid)
    }

    pub(crate) fn stamps(&self) -> Vec<(IdentityKey, u64)> {
        self.claims
            .values()
            .map(|c| (c.user, c.timestamp_ms))
            .collect()
    }

    pub(crate) fn timestamp(&self, user: &IdentityKey) -> Option<u64> {
        self.claims.get(user).map(|c| c.timestamp_ms)
    }

    pub(crate) fn len(&self) -> usize {
        self.claims.len()
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Claim> {
        self.claims.values()
    }
}
