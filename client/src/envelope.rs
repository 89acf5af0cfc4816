//! The hybrid envelope: post-quantum end-to-end encryption of one message to one recipient.
//!
//! ```text
//! version 0x01 | ephemeral X25519 public (32) | ML-KEM-768 ciphertext (1088) | AEAD ciphertext
//!
//! ikm   = X25519(eph, recipient_x25519) || ML-KEM-768 shared secret
//! key   = HKDF-SHA256(salt = "ferry/hybrid/v1", ikm,
//!                     info = "ferry/hybrid/v1/key" || SHA-256(recipient hybrid public key))
//! AEAD  = ChaCha20-Poly1305(key, nonce = 0, aad = version || eph || ciphertext)
//! ```
//!
//! Every envelope has a fresh ephemeral X25519 key and a fresh ML-KEM encapsulation, so the
//! derived key is used once and a zero nonce is safe. The header is authenticated as AAD, and
//! the recipient's full public key is bound into the key derivation. Breaking it needs both
//! X25519 and ML-KEM-768 broken.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ferry_proto::types::{Fingerprint, HybridPublicKey};
use hkdf::Hkdf;
use ml_kem::{Decapsulate, Encapsulate, EncapsulationKey, MlKem768, TryKeyInit};
use sha2::Sha256;
use x25519_dalek::{PublicKey as XPublic, StaticSecret};
use zeroize::Zeroizing;

use crate::{ClientError, Identity};

/// Envelope format version 1.
pub const VERSION: u8 = 1;
/// ML-KEM-768 ciphertext length.
pub const MLKEM_CT_LEN: usize = 1088;
/// Bytes an envelope adds to its plaintext.
pub const OVERHEAD: usize = 1 + 32 + MLKEM_CT_LEN + 16;

const SALT: &[u8] = b"ferry/hybrid/v1";
const INFO: &[u8] = b"ferry/hybrid/v1/key";
const HEADER_LEN: usize = 1 + 32 + MLKEM_CT_LEN;

fn derive(x_ss: &[u8], k_ss: &[u8], recipient: &HybridPublicKey) -> Zeroizing<[u8; 32]> {
    let mut ikm = Zeroizing::new(Vec::with_capacity(64));
    ikm.extend_from_slice(x_ss);
    ikm.extend_from_slice(k_ss);
    let mut info = Vec::with_capacity(INFO.len() + 32);
    info.extend_from_slice(INFO);
    info.extend_from_slice(Fingerprint::of(recipient.as_bytes()).as_bytes());
    let hk = Hkdf::<Sha256>::new(Some(SALT), &ikm);
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's output limit.
    let _ = hk.expand(&info, okm.as_mut_slice());
    okm
}

/// Seals `plaintext` to the holder of `recipient`.
pub fn seal(recipient: &HybridPublicKey, plaintext: &[u8]) -> Result<Vec<u8>, ClientError> {
    let their_x = XPublic::from(recipient.x25519());
    let ek = EncapsulationKey::<MlKem768>::new_from_slice(recipient.mlkem768())
        .map_err(|_| ClientError::Open("recipient's ML-KEM key is invalid"))?;
    let eph = StaticSecret::from(*Zeroizing::new(crate::random::<32>()?));
    let eph_pub = XPublic::from(&eph);
    let x_ss = eph.diffie_hellman(&their_x);
    if !x_ss.was_contributory() {
        return Err(ClientError::Open(
            "recipient's X25519 key is a low-order point",
        ));
    }
    let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
    let (ct, k_ss) = ek.encapsulate_with_rng(&mut rng);
    let key = derive(x_ss.as_bytes(), k_ss.as_slice(), recipient);

    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.push(VERSION);
    out.extend_from_slice(eph_pub.as_bytes());
    out.extend_from_slice(ct.as_slice());
    let cipher = ChaCha20Poly1305::new(&Key::from(*key));
    let sealed = cipher
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: plaintext,
                aad: &out,
            },
        )
        .map_err(|_| ClientError::Open("encryption failed"))?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens an envelope sealed to `me`.
pub fn open(me: &Identity, envelope: &[u8]) -> Result<Vec<u8>, ClientError> {
    let (header, body) = envelope
        .split_at_checked(HEADER_LEN)
        .ok_or(ClientError::Open("too short to be an envelope"))?;
    let (&version, rest) = header
        .split_first()
        .ok_or(ClientError::Open("empty envelope"))?;
    if version != VERSION {
        return Err(ClientError::Open("unknown envelope version"));
    }
    let (eph, ct) = rest
        .split_first_chunk::<32>()
        .ok_or(ClientError::Open("truncated header"))?;
    let x_ss = me.x25519().diffie_hellman(&XPublic::from(*eph));
    if !x_ss.was_contributory() {
        return Err(ClientError::Open(
            "sender's ephemeral key is a low-order point",
        ));
    }
    let k_ss = me
        .mlkem()
        .decapsulate_slice(ct)
        .map_err(|_| ClientError::Open("bad ML-KEM ciphertext length"))?;
    let key = derive(x_ss.as_bytes(), k_ss.as_slice(), &me.hybrid_public_key());
    let cipher = ChaCha20Poly1305::new(&Key::from(*key));
    cipher
        .decrypt(
            &Nonce::default(),
            Payload {
                msg: body,
                aad: header,
            },
        )
        .map_err(|_| ClientError::Open("not for this identity, or damaged"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip() {
        let bob = Identity::generate().unwrap();
        let env = seal(&bob.hybrid_public_key(), b"hello bob").unwrap();
        assert_eq!(env.len(), OVERHEAD + 9);
        assert_eq!(env[0], VERSION);
        assert_eq!(open(&bob, &env).unwrap(), b"hello bob");
        // Two seals of the same plaintext differ.
        assert_ne!(env, seal(&bob.hybrid_public_key(), b"hello bob").unwrap());
    }

    #[test]
    fn wrong_recipient_and_tampering_fail() {
        let bob = Identity::generate().unwrap();
        let eve = Identity::generate().unwrap();
        let env = seal(&bob.hybrid_public_key(), b"secret").unwrap();
        assert!(open(&eve, &env).is_err());
        for i in [0, 1, 40, HEADER_LEN - 1, HEADER_LEN, env.len() - 1] {
            let mut t = env.clone();
            t[i] ^= 1;
            assert!(open(&bob, &t).is_err(), "flip at {i} went unnoticed");
        }
        assert!(open(&bob, &env[..env.len() - 1]).is_err());
        assert!(open(&bob, &env[..10]).is_err());
        assert!(open(&bob, &[]).is_err());
    }

    #[test]
    fn low_order_keys_are_refused() {
        let bob = Identity::generate().unwrap();
        let mut bad = bob.hybrid_public_key().as_bytes().to_vec();
        bad[..32].copy_from_slice(&[0u8; 32]);
        let bad = HybridPublicKey::from_field(&bad, "k").unwrap();
        assert!(seal(&bad, b"x").is_err());
        let mut env = seal(&bob.hybrid_public_key(), b"x").unwrap();
        env[1..33].copy_from_slice(&[0u8; 32]);
        assert!(open(&bob, &env).is_err());
    }
}
