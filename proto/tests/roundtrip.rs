//! Property tests: every frame round-trips, and no input makes a decoder panic.

use ferry_proto::frame::{
    decode_push, decode_request, decode_response, encode_push, encode_request, encode_response,
};
use ferry_proto::qpq::v1 as pb;
use ferry_proto::types::{Enqueue, EnqueueMany, MailboxRead};
use ferry_proto::{Status, decode_message};
use proptest::prelude::*;
use prost::Message;

proptest! {
    #[test]
    fn request_roundtrip(method in any::<u16>(), rid in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let f = encode_request(method, rid, &payload).unwrap();
        let d = decode_request(&f).unwrap();
        prop_assert_eq!(d.header.method_id, method);
        prop_assert_eq!(d.header.request_id, rid);
        prop_assert_eq!(d.payload, &payload[..]);
    }

    #[test]
    fn response_roundtrip(code in 0u8..12, rid in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let status = Status::from_u8(code).unwrap();
        let f = encode_response(status, rid, &payload).unwrap();
        let d = decode_response(&f).unwrap();
        prop_assert_eq!(d.header.status().unwrap(), status);
        prop_assert_eq!(d.header.request_id, rid);
        prop_assert_eq!(d.payload, &payload[..]);
    }

    #[test]
    fn push_roundtrip(event in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let f = encode_push(event, &payload).unwrap();
        let d = decode_push(&f).unwrap();
        prop_assert_eq!(d.header.event_type, event);
        prop_assert_eq!(d.payload, &payload[..]);
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_request(&bytes);
        let _ = decode_response(&bytes);
        let _ = decode_push(&bytes);
        if let Ok(m) = decode_message::<pb::EnqueueRequest>(&bytes) {
            let _ = Enqueue::try_from(m);
        }
        if let Ok(m) = decode_message::<pb::FetchRequest>(&bytes) {
            let _ = MailboxRead::try_from(m);
        }
        let _ = decode_message::<pb::FetchResponse>(&bytes);
        let _ = decode_message::<pb::BatchEnqueueRequest>(&bytes);
        if let Ok(m) = decode_message::<pb::EnqueueManyRequest>(&bytes) {
            let _ = EnqueueMany::try_from(m);
        }
    }

    #[test]
    fn enqueue_message_roundtrip(
        recipient in proptest::collection::vec(any::<u8>(), 32),
        payload in proptest::collection::vec(any::<u8>(), 1..512),
        ttl in any::<u32>(),
        id in proptest::collection::vec(any::<u8>(), 16),
        sealed in any::<bool>(),
    ) {
        let m = pb::EnqueueRequest { recipient_key: recipient.clone(), payload: payload.clone(), channel_id: vec![], ttl_secs: ttl, message_id: id.clone(), sealed_sender: sealed, device_id: vec![] };
        let back = pb::EnqueueRequest::decode(&m.encode_to_vec()[..]).unwrap();
        prop_assert_eq!(&back, &m);
        let e = Enqueue::try_from(back).unwrap();
        prop_assert_eq!(&e.mailbox.recipient.as_bytes()[..], &recipient[..]);
        prop_assert_eq!(e.payload, payload);
        prop_assert_eq!(e.ttl_secs, ttl);
        prop_assert_eq!(e.sealed_sender, sealed);
    }
}
