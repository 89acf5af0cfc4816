//! Broadcast topics: a passphrase names a topic and keys it. Nodes carry a 32-byte topic id
//! and sealed bytes; they learn neither the passphrase nor the text.
//!
//! - topic id = HKDF-SHA256(salt "ferry/topic/v1", passphrase, info "id")
//! - key      = HKDF-SHA256(salt "ferry/topic/v1", passphrase, info "key")
//! - payload  = nonce (12) || ChaCha20-Poly1305(key, nonce, plaintext, aad = id || message id)
//! - plaintext = 0x01 || sender key (32) || signature (64) || sent_at_ms (u64 BE) || text
//! - signature = Ed25519 by the sender over
//!   "ferry/broadcast/v1" || 0x00 || id || message id || sent_at_ms (u64 BE) || text
//!
//! Anyone who knows the passphrase can read and post; the signature says which identity
//! posted. A guessable passphrase can be found by trying candidates against a captured
//! message, so use a long one for anything private.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{Signature, VerifyingKey};
use ferry_proto::limits::{MAX_BROADCAST_PAYLOAD, TOPIC_LEN};
use ferry_proto::types::{IdentityKey, MessageId};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{ClientError, Identity};

const SALT: &[u8] = b"ferry/topic/v1";
const DOMAIN: &[u8] = b"ferry/broadcast/v1";
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const HEADER: usize = 1 + 32 + 64 + 8;
/// Tag and nonce overhead of a sealed post.
const OVERHEAD: usize = NONCE_LEN + 16;
/// Longest text a post can carry.
pub const MAX_TEXT: usize = MAX_BROADCAST_PAYLOAD - OVERHEAD - HEADER;

/// A topic, derived from its passphrase.
pub struct Topic {
    id: [u8; TOPIC_LEN],
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic")
            .field("id", &data_encoding::HEXLOWER.encode(&self.id))
            .finish_non_exhaustive()
    }
}

/// A post after opening and verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Post {
    /// Who signed it.
    pub sender: IdentityKey,
    /// The sender's clock when posting, unix milliseconds.
    pub sent_at_ms: u64,
    /// The text.
    pub text: String,
}

fn signed_bytes(id: &[u8; TOPIC_LEN], msg: &MessageId, at: u64, text: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(DOMAIN.len() + 1 + TOPIC_LEN + 16 + 8 + text.len());
    t.extend_from_slice(DOMAIN);
    t.push(0);
    t.extend_from_slice(id);
    t.extend_from_slice(msg.as_bytes());
    t.extend_from_slice(&at.to_be_bytes());
    t.extend_from_slice(text);
    t
}

fn bad(reason: &str) -> ClientError {
    ClientError::Broadcast(format!("broadcast: {reason}"))
}

impl Topic {
    /// The topic a passphrase names.
    pub fn from_passphrase(passphrase: &str) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(SALT), passphrase.as_bytes());
        let mut id = [0u8; TOPIC_LEN];
        let mut key = Zeroizing::new([0u8; 32]);
        // 32-byte outputs are far below HKDF's limit; these cannot fail.
        let _ = hk.expand(b"id", &mut id);
        let _ = hk.expand(b"key", key.as_mut());
        Self { id, key }
    }

    /// The id nodes see.
    pub fn id(&self) -> [u8; TOPIC_LEN] {
        self.id
    }

    fn aad(&self, msg: &MessageId) -> [u8; TOPIC_LEN + 16] {
        let mut a = [0u8; TOPIC_LEN + 16];
        a[..TOPIC_LEN].copy_from_slice(&self.id);
        a[TOPIC_LEN..].copy_from_slice(msg.as_bytes());
        a
    }

    /// Signs and seals a post.
    pub fn seal(
        &self,
        me: &Identity,
        msg: &MessageId,
        sent_at_ms: u64,
        text: &str,
    ) -> Result<Vec<u8>, ClientError> {
        if text.len() > MAX_TEXT {
            return Err(bad(&format!(
                "text of {} bytes; at most {MAX_TEXT}",
                text.len()
            )));
        }
        let sig = me.sign(&signed_bytes(&self.id, msg, sent_at_ms, text.as_bytes()));
        let mut plain = Zeroizing::new(Vec::with_capacity(HEADER + text.len()));
        plain.push(VERSION);
        plain.extend_from_slice(me.public_key().as_bytes());
        plain.extend_from_slice(&sig);
        plain.extend_from_slice(&sent_at_ms.to_be_bytes());
        plain.extend_from_slice(text.as_bytes());
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| bad(&e.to_string()))?;
        let aad = self.aad(msg);
        let ct = ChaCha20Poly1305::new(&Key::from(*self.key))
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| bad("encryption failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens and verifies a post of this topic.
    pub fn open(&self, msg: &MessageId, sealed: &[u8]) -> Result<Post, ClientError> {
        let (nonce, ct) = sealed
            .split_at_checked(NONCE_LEN)
            .ok_or_else(|| bad("too short"))?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| bad("too short"))?;
        let aad = self.aad(msg);
        let plain = Zeroizing::new(
            ChaCha20Poly1305::new(&Key::from(*self.key))
                .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad: &aad })
                .map_err(|_| bad("does not open with this topic's key"))?,
        );
        let (head, text) = plain
            .split_at_checked(HEADER)
            .ok_or_else(|| bad("truncated"))?;
        let (version, rest) = head.split_first().ok_or_else(|| bad("truncated"))?;
        if *version != VERSION {
            return Err(bad(&format!("unknown version {version}")));
        }
        let (sender, rest) = rest.split_at_checked(32).ok_or_else(|| bad("truncated"))?;
        let (sig, at) = rest.split_at_checked(64).ok_or_else(|| bad("truncated"))?;
        let sender = IdentityKey::from_field(sender, "sender")?;
        let at = u64::from_be_bytes(at.try_into().map_err(|_| bad("truncated"))?);
        let sig = Signature::from_slice(sig).map_err(|_| bad("malformed signature"))?;
        VerifyingKey::from_bytes(sender.as_bytes())
            .and_then(|k| k.verify_strict(&signed_bytes(&self.id, msg, at, text), &sig))
            .map_err(|_| bad("signature does not verify"))?;
        let text = String::from_utf8(text.to_vec()).map_err(|_| bad("text is not UTF-8"))?;
        Ok(Post {
            sender,
            sent_at_ms: at,
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_refusals() {
        let me = Identity::generate().unwrap();
        let t = Topic::from_passphrase("river crossing at dawn");
        let other = Topic::from_passphrase("river crossing at dusk");
        assert_ne!(t.id(), other.id());
        assert_eq!(
            t.id(),
            Topic::from_passphrase("river crossing at dawn").id()
        );
        let id = MessageId::from_array([3; 16]);
        let sealed = t.seal(&me, &id, 42, "bridge is open").unwrap();
        let p = t.open(&id, &sealed).unwrap();
        assert_eq!(p.text, "bridge is open");
        assert_eq!(p.sender, me.public_key());
        assert_eq!(p.sent_at_ms, 42);
        // Wrong topic, wrong message id, flipped bits, truncation: clear errors.
        assert!(other.open(&id, &sealed).is_err());
        assert!(t.open(&MessageId::from_array([4; 16]), &sealed).is_err());
        let mut bent = sealed.clone();
        bent[20] ^= 1;
        assert!(t.open(&id, &bent).is_err());
        assert!(t.open(&id, &sealed[..5]).is_err());
        assert!(t.seal(&me, &id, 1, &"x".repeat(MAX_TEXT + 1)).is_err());
        assert!(t.seal(&me, &id, 1, &"x".repeat(MAX_TEXT)).unwrap().len() <= MAX_BROADCAST_PAYLOAD);
    }
}
