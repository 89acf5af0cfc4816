//! Conversions from transport structs into validated domain types.

use ferry_proto::ProtoError;
use ferry_proto::limits::{
    DEFAULT_FETCH_LIMIT, DEFAULT_TTL_SECS, MAX_FETCH_LIMIT, MAX_MESSAGE_LEN,
};
use ferry_proto::qpq::v1 as pb;
use ferry_proto::types::{
    AuthProof, BatchEnqueue, ChannelId, Enqueue, EnqueueMany, FetchHybridKeys, FetchWait,
    Fingerprint, HybridKeyLookup, IdentityKey, MailboxRead, MessageId, UploadHybridKey,
    resolve_ttl,
};

fn enqueue() -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        recipient_key: vec![7; 32],
        payload: b"x".to_vec(),
        ..Default::default()
    }
}

#[test]
fn enqueue_validation() {
    let e = Enqueue::try_from(enqueue()).unwrap();
    assert_eq!(e.mailbox.channel, ChannelId::DEFAULT);
    assert!(e.message_id.is_none());

    for (len, ok) in [(0, false), (31, false), (32, true), (33, false)] {
        let r = pb::EnqueueRequest {
            recipient_key: vec![1; len],
            ..enqueue()
        };
        assert_eq!(Enqueue::try_from(r).is_ok(), ok, "recipient of {len}");
    }
    for (len, ok) in [(0, true), (15, false), (16, true), (17, false)] {
        let r = pb::EnqueueRequest {
            channel_id: vec![1; len],
            ..enqueue()
        };
        assert_eq!(Enqueue::try_from(r).is_ok(), ok, "channel of {len}");
        let r = pb::EnqueueRequest {
            message_id: vec![1; len],
            ..enqueue()
        };
        assert_eq!(Enqueue::try_from(r).is_ok(), ok, "message id of {len}");
    }
    let r = pb::EnqueueRequest {
        device_id: vec![1; 33],
        ..enqueue()
    };
    assert!(matches!(
        Enqueue::try_from(r),
        Err(ProtoError::BadLength {
            field: "device_id",
            ..
        })
    ));
    let r = pb::EnqueueRequest {
        payload: vec![],
        ..enqueue()
    };
    assert!(matches!(
        Enqueue::try_from(r),
        Err(ProtoError::Empty { field: "payload" })
    ));
    let r = pb::EnqueueRequest {
        payload: vec![0; MAX_MESSAGE_LEN + 1],
        ..enqueue()
    };
    assert!(matches!(
        Enqueue::try_from(r),
        Err(ProtoError::PayloadTooLarge { .. })
    ));
}

#[test]
fn ttl_policy() {
    assert_eq!(
        resolve_ttl(0, DEFAULT_TTL_SECS, 30 * 86400).unwrap(),
        DEFAULT_TTL_SECS
    );
    assert_eq!(resolve_ttl(0, DEFAULT_TTL_SECS, 3600).unwrap(), 3600);
    assert_eq!(resolve_ttl(60, DEFAULT_TTL_SECS, 3600).unwrap(), 60);
    assert_eq!(resolve_ttl(3600, DEFAULT_TTL_SECS, 3600).unwrap(), 3600);
    let err = resolve_ttl(3601, DEFAULT_TTL_SECS, 3600).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ttl_secs 3601 exceeds this node's maximum of 3600 seconds"
    );
}

#[test]
fn reads_resolve_limits() {
    let r = MailboxRead::try_from(pb::FetchRequest {
        recipient_key: vec![1; 32],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.limit, DEFAULT_FETCH_LIMIT);
    let r = MailboxRead::try_from(pb::PeekRequest {
        recipient_key: vec![1; 32],
        limit: u32::MAX,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.limit, MAX_FETCH_LIMIT);
    let w = FetchWait::try_from(pb::FetchWaitRequest {
        recipient_key: vec![1; 32],
        timeout_ms: u64::MAX,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(w.timeout_ms, 60_000);
}

#[test]
fn enqueue_many_checks_every_message_and_names_the_bad_one() {
    let mut big = enqueue();
    big.payload = vec![0; MAX_MESSAGE_LEN + 1];
    let mut short_key = enqueue();
    short_key.recipient_key.truncate(31);
    let ok = EnqueueMany::try_from(pb::EnqueueManyRequest {
        messages: vec![enqueue(), enqueue()],
    })
    .unwrap();
    assert_eq!(ok.messages.len(), 2);
    let e = EnqueueMany::try_from(pb::EnqueueManyRequest {
        messages: vec![enqueue(), enqueue(), short_key],
    })
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("messages[2]: recipient_key must be 32 bytes"),
        "{e}"
    );
    let e = EnqueueMany::try_from(pb::EnqueueManyRequest {
        messages: vec![big],
    })
    .unwrap_err();
    assert!(matches!(e, ProtoError::Item { index: 0, .. }), "{e}");
    assert!(matches!(e.innermost(), ProtoError::PayloadTooLarge { .. }));
    assert!(matches!(
        EnqueueMany::try_from(pb::EnqueueManyRequest { messages: vec![] }),
        Err(ProtoError::Empty { field: "messages" })
    ));
    assert!(matches!(
        EnqueueMany::try_from(pb::EnqueueManyRequest {
            messages: vec![enqueue(); 257],
        }),
        Err(ProtoError::TooMany {
            max: 256,
            got: 257,
            ..
        })
    ));
}

#[test]
fn batch_and_key_limits() {
    let b = pb::BatchEnqueueRequest {
        recipient_keys: vec![vec![1; 32]; 257],
        payload: vec![1],
        ..Default::default()
    };
    assert!(matches!(
        BatchEnqueue::try_from(b),
        Err(ProtoError::TooMany {
            max: 256,
            got: 257,
            ..
        })
    ));
    let b = pb::BatchEnqueueRequest {
        recipient_keys: vec![],
        payload: vec![1],
        ..Default::default()
    };
    assert!(BatchEnqueue::try_from(b).is_err());
    let k = pb::FetchHybridKeysRequest {
        identity_keys: vec![vec![1; 32], vec![1; 31]],
    };
    assert!(FetchHybridKeys::try_from(k).is_err());
    let up = pb::UploadHybridKeyRequest {
        identity_key: vec![1; 32],
        hybrid_public_key: vec![0; 1215],
    };
    assert!(matches!(
        UploadHybridKey::try_from(up),
        Err(ProtoError::BadLength {
            field: "hybrid_public_key",
            got: 1215,
            ..
        })
    ));
    let up = pb::UploadHybridKeyRequest {
        identity_key: vec![1; 32],
        hybrid_public_key: vec![0; 1216],
    };
    assert!(UploadHybridKey::try_from(up).is_ok());
}

#[test]
fn hybrid_key_lookup_by_identity_or_fingerprint() {
    let id = IdentityKey::from_array([3; 32]);
    let l = HybridKeyLookup::try_from(pb::FetchHybridKeyRequest {
        identity_key: id.as_bytes().to_vec(),
        fingerprint: vec![],
    })
    .unwrap();
    assert_eq!(l, HybridKeyLookup::Identity(id));
    let l = HybridKeyLookup::try_from(pb::FetchHybridKeyRequest {
        identity_key: vec![],
        fingerprint: id.fingerprint().as_bytes().to_vec(),
    })
    .unwrap();
    assert_eq!(l, HybridKeyLookup::Fingerprint(id.fingerprint()));
    assert!(HybridKeyLookup::try_from(pb::FetchHybridKeyRequest::default()).is_err());
}

#[test]
fn auth_proof_lengths() {
    assert!(
        AuthProof::try_from(pb::AuthResponseRequest {
            identity_key: vec![1; 32],
            signature: vec![1; 63],
        })
        .is_err()
    );
    assert!(
        AuthProof::try_from(pb::AuthResponseRequest {
            identity_key: vec![1; 32],
            signature: vec![1; 64],
        })
        .is_ok()
    );
}

#[test]
fn textual_forms() {
    let id = IdentityKey::from_array([0xab; 32]);
    let s = id.to_string();
    assert_eq!(s, "ab".repeat(32));
    assert_eq!(s.parse::<IdentityKey>().unwrap(), id);
    assert_eq!(s.to_uppercase().parse::<IdentityKey>().unwrap(), id);
    assert!("abc".parse::<IdentityKey>().is_err());
    assert!("zz".repeat(32).parse::<IdentityKey>().is_err());
    let fp = id.fingerprint();
    let t = fp.to_string();
    assert!(t.starts_with("SHA256:"), "{t}");
    assert_eq!(t.len(), 7 + 43);
    assert_eq!(t.parse::<Fingerprint>().unwrap(), fp);
    assert!("SHA256:xx".parse::<Fingerprint>().is_err());
    assert!(s.parse::<Fingerprint>().is_err());
    // Known answer: SHA-256 of 32 bytes of 0xab.
    assert_eq!(
        hex::encode(fp.as_bytes()),
        "9a2db2e23f1504cd056606553ac049c5e718e8f9ce9233876df1a7a1821af885"
    );
}

#[test]
fn time_ordered_message_ids() {
    let ms = 0x0193_4a5b_6c7d_u64;
    let id = MessageId::time_ordered(ms, [0xff; 10]);
    let b = id.as_bytes();
    assert_eq!(b[..6], ms.to_be_bytes()[2..]);
    assert_eq!(b[6] >> 4, 7, "UUID version 7");
    assert_eq!(b[8] >> 6, 0b10, "RFC 9562 variant");
    assert_eq!(b[9..], [0xff; 7]);
    // Random bits never carry into the time or the version and variant bits.
    let zero = MessageId::time_ordered(ms, [0; 10]);
    assert_eq!(zero.as_bytes()[..6], b[..6]);
    assert_eq!(zero.as_bytes()[6], 0x70);
    assert_eq!(zero.as_bytes()[8], 0x80);
    // Later ids sort after earlier ones, whatever their random part.
    assert!(MessageId::time_ordered(ms + 1, [0; 10]) > id);
    // Only 48 bits of time: later times wrap rather than spill into the version.
    let far = MessageId::time_ordered(u64::MAX, [0; 10]);
    assert_eq!(far.as_bytes()[..6], [0xff; 6]);
    assert_eq!(far.as_bytes()[6], 0x70);
}
