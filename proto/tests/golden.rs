//! Golden bytes: the exact encodings of frames and messages are an API. If one of these fails,
//! a client in the field would break.

use ferry_proto::frame::{
    PushHeader, RequestHeader, ResponseHeader, decode_push, decode_request, decode_response,
    encode_push_msg, encode_request, encode_request_msg, encode_response, encode_response_msg,
};
use ferry_proto::limits::MAX_PAYLOAD;
use ferry_proto::method::ids;
use ferry_proto::qpq::v1 as pb;
use ferry_proto::{Method, ProtoError, PushEvent, Status};
use prost::Message;

fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

#[test]
fn request_frame_golden() {
    let f = encode_request(ids::ENQUEUE, 0x0102_0304, b"\x0a\x01\xff").unwrap();
    // method 200 | request id | length 3 | payload
    assert_eq!(
        hex(&f),
        "00c8".to_owned() + "01020304" + "00000003" + "0a01ff"
    );
    let d = decode_request(&f).unwrap();
    assert_eq!(d.header.method_id, 200);
    assert_eq!(d.header.request_id, 0x0102_0304);
    assert_eq!(d.payload, b"\x0a\x01\xff");
}

#[test]
fn response_frame_golden() {
    let f = encode_response(Status::ResourceExhausted, 7, &[]).unwrap();
    assert_eq!(hex(&f), "07".to_owned() + "00000007" + "00000000");
    let f = encode_response(Status::Ok, u32::MAX, b"ab").unwrap();
    assert_eq!(hex(&f), "00ffffffff000000026162");
    let d = decode_response(&f).unwrap();
    assert_eq!(d.header.status().unwrap(), Status::Ok);
    assert_eq!(d.payload, b"ab");
}

#[test]
fn push_frame_golden() {
    let msg = pb::NewMessage {
        recipient_key: vec![0x11; 32],
        channel_id: vec![],
        device_id: vec![],
        seq: 300,
    };
    let f = encode_push_msg(PushEvent::NewMessage as u16, &msg).unwrap();
    let expected_body = "0a20".to_owned() + &"11".repeat(32) + "20ac02";
    assert_eq!(hex(&f), "03e8".to_owned() + "00000025" + &expected_body);
    let d = decode_push(&f).unwrap();
    assert_eq!(d.header.event_type, 1000);
    assert_eq!(pb::NewMessage::decode(d.payload).unwrap(), msg);
}

#[test]
fn header_roundtrip_bytes() {
    let h = RequestHeader {
        method_id: 0xabcd,
        request_id: 1,
        declared_len: 2,
    };
    assert_eq!(hex(&h.to_bytes()), "abcd0000000100000002");
    assert_eq!(RequestHeader::from_bytes(&h.to_bytes()), h);
    let h = ResponseHeader {
        status: 11,
        request_id: 9,
        declared_len: 0,
    };
    assert_eq!(hex(&h.to_bytes()), "0b0000000900000000");
    let h = PushHeader {
        event_type: 1003,
        declared_len: 4,
    };
    assert_eq!(hex(&h.to_bytes()), "03eb00000004");
}

#[test]
fn enqueue_request_golden() {
    let msg = pb::EnqueueRequest {
        recipient_key: vec![0xaa; 32],
        payload: b"hi".to_vec(),
        channel_id: vec![],
        ttl_secs: 3600,
        message_id: vec![0x01; 16],
        sealed_sender: false,
        device_id: vec![],
    };
    let f = encode_request_msg(Method::Enqueue.id(), 42, &msg).unwrap();
    let body =
        "0a20".to_owned() + &"aa".repeat(32) + "12026869" + "20901c" + "2a10" + &"01".repeat(16);
    assert_eq!(hex(&f), format!("00c80000002a{:08x}{body}", body.len() / 2));
}

#[test]
fn documented_field_numbers_golden() {
    // One message of each documented family, every field set, checked against hand-encoded
    // protobuf so that a renumbered field cannot slip through.
    let fetch_wait = pb::FetchWaitRequest {
        recipient_key: vec![1],
        channel_id: vec![2],
        timeout_ms: 3,
        limit: 4,
        device_id: vec![5],
    };
    assert_eq!(
        hex(&fetch_wait.encode_to_vec()),
        "0a0101120102180320042a0105"
    );
    let ack = pb::AckRequest {
        recipient_key: vec![1],
        channel_id: vec![2],
        seq_up_to: 3,
        device_id: vec![4],
    };
    assert_eq!(hex(&ack.encode_to_vec()), "0a01011201021803220104");
    let resp = pb::EnqueueResponse {
        seq: 1,
        delivery_proof: vec![2],
        duplicate: true,
    };
    assert_eq!(hex(&resp.encode_to_vec()), "0801120102".to_owned() + "1801");
    let env = pb::Envelope {
        seq: 1,
        data: vec![2],
        sender_key: vec![3],
        message_id: vec![4],
        enqueued_at_ms: 5,
    };
    assert_eq!(
        hex(&env.encode_to_vec()),
        "08011201021a0103220104".to_owned() + "2805"
    );
    let batch = pb::BatchEnqueueRequest {
        recipient_keys: vec![vec![1], vec![2]],
        payload: vec![3],
        channel_id: vec![4],
        ttl_secs: 5,
        message_id: vec![6],
        sealed_sender: true,
    };
    assert_eq!(
        hex(&batch.encode_to_vec()),
        "0a01010a01021201031a010420052a01063001"
    );
    let up = pb::UploadHybridKeyRequest {
        identity_key: vec![1],
        hybrid_public_key: vec![2],
    };
    assert_eq!(hex(&up.encode_to_vec()), "0a01011201".to_owned() + "02");
    let keys = pb::FetchHybridKeysResponse {
        keys: vec![vec![], vec![9]],
    };
    assert_eq!(hex(&keys.encode_to_vec()), "0a000a0109");
    let login = pb::OpaqueLoginFinishRequest {
        username: "a".into(),
        finalization: vec![2],
        identity_key: vec![3],
    };
    assert_eq!(hex(&login.encode_to_vec()), "0a01611201021a0103");
    let auth = pb::Auth {
        access_token: vec![1],
        device_id: vec![2],
    };
    assert_eq!(hex(&auth.encode_to_vec()), "0a01011201".to_owned() + "02");
    let kp = pb::UploadKeyPackageRequest {
        identity_key: vec![1],
        package: vec![2],
    };
    assert_eq!(hex(&kp.encode_to_vec()), "0a01011201".to_owned() + "02");
    let audit = pb::AuditKeyTransparencyResponse {
        entries: vec![pb::LogEntry {
            index: 1,
            leaf_hash: vec![2],
        }],
        tree_size: 3,
        root: vec![4],
    };
    assert_eq!(
        hex(&audit.encode_to_vec()),
        "0a0508011201021003".to_owned() + "1a0104"
    );
    let attached = pb::AttachResponse {
        delivered: 1,
        moved_from: vec![2],
    };
    assert_eq!(hex(&attached.encode_to_vec()), "0801120102");
}

#[test]
fn method_table_is_complete_and_stable() {
    // 49 documented ids plus Ferry's 104-107 and 810-812.
    assert_eq!(Method::ALL.len(), 56);
    for m in Method::ALL {
        assert_eq!(Method::from_id(m.id()), Some(m), "{m}");
    }
    assert_eq!(Method::from_id(802), Some(Method::Health));
    assert_eq!(Method::from_id(104), Some(Method::AuthChallenge));
    assert_eq!(Method::from_id(105), Some(Method::AuthResponse));
    assert_eq!(Method::from_id(106), Some(Method::ResumeSession));
    assert_eq!(Method::from_id(107), Some(Method::Attach));
    assert_eq!(Method::from_id(810), Some(Method::BroadcastPublish));
    assert_eq!(Method::from_id(811), Some(Method::BroadcastFetch));
    assert_eq!(Method::from_id(812), Some(Method::EnqueueMany));
    assert_eq!(Method::from_id(999), None);
    assert_eq!(ids::FETCH_HYBRID_KEYS, 304);
    assert_eq!(ids::DELETE_ACCOUNT, 950);
    assert_eq!(ids::PUSH_MEMBERSHIP, 1003);
}

#[test]
fn status_codes_are_the_documented_ones() {
    let codes: Vec<(u8, &str)> = Status::ALL.iter().map(|s| (*s as u8, s.name())).collect();
    assert_eq!(
        codes,
        vec![
            (0, "Ok"),
            (1, "BadRequest"),
            (2, "Unauthorized"),
            (3, "Forbidden"),
            (4, "NotFound"),
            (5, "RateLimited"),
            (6, "PayloadTooLarge"),
            (7, "ResourceExhausted"),
            (8, "DeadlineExceeded"),
            (9, "Unavailable"),
            (10, "Internal"),
            (11, "UnknownMethod"),
        ]
    );
    assert!(Status::from_u8(12).is_none());
}

#[test]
fn oversized_frames_are_refused_before_reading_the_body() {
    let mut f = RequestHeader {
        method_id: 200,
        request_id: 5,
        declared_len: (MAX_PAYLOAD + 1) as u32,
    }
    .to_bytes()
    .to_vec();
    f.extend_from_slice(&[0; 16]);
    match decode_request(&f) {
        Err(ProtoError::PayloadTooLarge { len, max }) => {
            assert_eq!(len, MAX_PAYLOAD as u64 + 1);
            assert_eq!(max, MAX_PAYLOAD as u64);
        }
        other => panic!("{other:?}"),
    }
    // Exactly at the limit is fine.
    let h = RequestHeader {
        method_id: 200,
        request_id: 5,
        declared_len: MAX_PAYLOAD as u32,
    };
    assert_eq!(h.payload_len().unwrap(), MAX_PAYLOAD);
    assert!(encode_request(1, 1, &vec![0; MAX_PAYLOAD + 1]).is_err());
}

#[test]
fn truncated_and_trailing_frames() {
    assert!(matches!(
        decode_request(&[0, 200, 0]),
        Err(ProtoError::Truncated { needed: 10, got: 3 })
    ));
    let f = encode_request(200, 1, b"abcd").unwrap();
    assert!(matches!(
        decode_request(&f[..f.len() - 1]),
        Err(ProtoError::Truncated {
            needed: 14,
            got: 13
        })
    ));
    let mut g = f.clone();
    g.push(0);
    assert!(matches!(
        decode_request(&g),
        Err(ProtoError::TrailingBytes { extra: 1 })
    ));
    assert!(decode_response(&[0; 8]).is_err());
    assert!(decode_push(&[0; 5]).is_err());
    let r = encode_response_msg(Status::Ok, 1, &pb::AckResponse {}).unwrap();
    assert_eq!(r.len(), 9);
}
