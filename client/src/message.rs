//! End-to-end messages: a signed `ferry.e2e.v1.Message` sealed in a hybrid envelope. The node
//! stores only the sealed bytes.

use ed25519_dalek::{Signature, VerifyingKey};
use ferry_proto::e2e::v1 as e2e;
use ferry_proto::transcript::{E2E_BODY_TEXT, e2e_transcript};
use ferry_proto::types::{HybridPublicKey, IdentityKey, MessageId};
use prost::Message as _;

use crate::{ClientError, Identity, envelope};

/// A message after opening and verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The verified sender.
    pub sender: IdentityKey,
    /// The idempotency key the sender used.
    pub message_id: MessageId,
    /// When the sender wrote it (the sender's clock), unix milliseconds.
    pub sent_at_ms: u64,
    /// The text.
    pub text: String,
}

/// Builds, signs and seals a text message from `me` to `recipient`.
pub fn seal_text(
    me: &Identity,
    recipient: &IdentityKey,
    recipient_hybrid: &HybridPublicKey,
    message_id: &MessageId,
    sent_at_ms: u64,
    text: &str,
) -> Result<Vec<u8>, ClientError> {
    let sender = me.public_key();
    let transcript = e2e_transcript(
        &sender,
        recipient,
        message_id,
        sent_at_ms,
        E2E_BODY_TEXT,
        text.as_bytes(),
    );
    let msg = e2e::Message {
        sender_key: sender.as_bytes().to_vec(),
        recipient_key: recipient.as_bytes().to_vec(),
        message_id: message_id.as_bytes().to_vec(),
        sent_at_ms,
        body: Some(e2e::message::Body::Text(text.to_string())),
        signature: me.sign(&transcript).to_vec(),
    };
    envelope::seal(recipient_hybrid, &msg.encode_to_vec())
}

/// Opens a sealed message addressed to `me` and verifies its signature and addressing.
///
/// `stamped_sender` is the sender the node recorded (absent for sealed sender); when present it
/// must match the signed sender.
pub fn open(
    me: &Identity,
    sealed: &[u8],
    stamped_sender: Option<&IdentityKey>,
) -> Result<Opened, ClientError> {
    let plain = envelope::open(me, sealed)?;
    let msg = ferry_proto::decode_message::<e2e::Message>(&plain)?;
    let sender = IdentityKey::from_field(&msg.sender_key, "sender_key")?;
    let recipient = IdentityKey::from_field(&msg.recipient_key, "recipient_key")?;
    let message_id = MessageId::from_field(&msg.message_id, "message_id")?;
    if recipient != me.public_key() {
        return Err(ClientError::NotAuthentic("addressed to someone else"));
    }
    if let Some(stamped) = stamped_sender
        && *stamped != sender
    {
        return Err(ClientError::NotAuthentic(
            "the node's sender stamp differs from the signed sender",
        ));
    }
    let text = match msg.body {
        Some(e2e::message::Body::Text(t)) => t,
        None => return Err(ClientError::NotAuthentic("message has no body")),
    };
    let sig: [u8; 64] = msg
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| ClientError::NotAuthentic("signature is not 64 bytes"))?;
    let key = VerifyingKey::from_bytes(sender.as_bytes())
        .map_err(|_| ClientError::NotAuthentic("sender key is not a valid Ed25519 key"))?;
    let transcript = e2e_transcript(
        &sender,
        &recipient,
        &message_id,
        msg.sent_at_ms,
        E2E_BODY_TEXT,
        text.as_bytes(),
    );
    key.verify_strict(&transcript, &Signature::from_bytes(&sig))
        .map_err(|_| ClientError::NotAuthentic("bad signature"))?;
    Ok(Opened {
        sender,
        message_id,
        sent_at_ms: msg.sent_at_ms,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_forgeries() {
        let alice = Identity::generate().unwrap();
        let bob = Identity::generate().unwrap();
        let mallory = Identity::generate().unwrap();
        let id = MessageId::from_array([1; 16]);
        let sealed = seal_text(
            &alice,
            &bob.public_key(),
            &bob.hybrid_public_key(),
            &id,
            42,
            "hi",
        )
        .unwrap();
        let o = open(&bob, &sealed, Some(&alice.public_key())).unwrap();
        assert_eq!(o.sender, alice.public_key());
        assert_eq!(
            (o.sent_at_ms, o.text.as_str(), o.message_id),
            (42, "hi", id)
        );
        assert!(open(&bob, &sealed, None).is_ok());
        // The node claims someone else sent it.
        assert!(matches!(
            open(&bob, &sealed, Some(&mallory.public_key())),
            Err(ClientError::NotAuthentic(_))
        ));
        // Mallory seals a message claiming to be Alice.
        let forged = {
            let t = e2e_transcript(
                &alice.public_key(),
                &bob.public_key(),
                &id,
                1,
                E2E_BODY_TEXT,
                b"pay me",
            );
            let msg = e2e::Message {
                sender_key: alice.public_key().as_bytes().to_vec(),
                recipient_key: bob.public_key().as_bytes().to_vec(),
                message_id: id.as_bytes().to_vec(),
                sent_at_ms: 1,
                body: Some(e2e::message::Body::Text("pay me".into())),
                signature: mallory.sign(&t).to_vec(),
            };
            envelope::seal(&bob.hybrid_public_key(), &msg.encode_to_vec()).unwrap()
        };
        assert!(matches!(
            open(&bob, &forged, None),
            Err(ClientError::NotAuthentic("bad signature"))
        ));
        // A message for Carol re-sealed to Bob is refused.
        let carol = Identity::generate().unwrap();
        let for_carol = seal_text(
            &alice,
            &carol.public_key(),
            &bob.hybrid_public_key(),
            &id,
            1,
            "x",
        )
        .unwrap();
        assert!(matches!(
            open(&bob, &for_carol, None),
            Err(ClientError::NotAuthentic(_))
        ));
    }
}
