//! Fuzz harnesses, shared by the cargo-fuzz targets in `proto/fuzz/` and by the test that
//! replays the committed seed corpus on stable Rust. Each must return for any input.

use crate::frame::{decode_push, decode_request, decode_response};
use crate::qpq::v1 as pb;
use crate::types::{
    Ack, AuthProof, BatchEnqueue, Enqueue, EnqueueMany, FetchHybridKeys, FetchWait,
    HybridKeyLookup, MailboxRead, SessionToken, UploadHybridKey,
};
use crate::{Method, decode_message};

/// Decodes `data` as each frame kind, and a request's payload as its method's message.
pub fn frames(data: &[u8]) {
    if let Ok(f) = decode_request(data)
        && let Some(m) = Method::from_id(f.header.method_id)
    {
        request_payload(m, f.payload);
    }
    if let Ok(f) = decode_response(data) {
        let _ = f.header.status();
    }
    let _ = decode_push(data);
}

/// The first byte picks a method; the rest is decoded and validated as its request.
pub fn messages(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let methods = Method::ALL;
    if let Some(m) = methods.get(usize::from(selector) % methods.len()) {
        request_payload(*m, rest);
    }
    let _ = decode_message::<pb::FetchResponse>(rest);
    let _ = decode_message::<pb::NewMessage>(rest);
    let _ = decode_message::<crate::e2e::v1::Message>(rest);
}

fn request_payload(method: Method, payload: &[u8]) {
    fn conv<M, T>(payload: &[u8])
    where
        M: prost::Message + Default,
        T: TryFrom<M>,
    {
        if let Ok(m) = decode_message::<M>(payload) {
            let _ = T::try_from(m);
        }
    }
    match method {
        Method::Enqueue => conv::<pb::EnqueueRequest, Enqueue>(payload),
        Method::BatchEnqueue => conv::<pb::BatchEnqueueRequest, BatchEnqueue>(payload),
        Method::EnqueueMany => conv::<pb::EnqueueManyRequest, EnqueueMany>(payload),
        Method::Fetch => conv::<pb::FetchRequest, MailboxRead>(payload),
        Method::Peek => conv::<pb::PeekRequest, MailboxRead>(payload),
        Method::FetchWait => conv::<pb::FetchWaitRequest, FetchWait>(payload),
        Method::Ack => conv::<pb::AckRequest, Ack>(payload),
        Method::UploadHybridKey => conv::<pb::UploadHybridKeyRequest, UploadHybridKey>(payload),
        Method::FetchHybridKey => conv::<pb::FetchHybridKeyRequest, HybridKeyLookup>(payload),
        Method::FetchHybridKeys => conv::<pb::FetchHybridKeysRequest, FetchHybridKeys>(payload),
        Method::AuthResponse => conv::<pb::AuthResponseRequest, AuthProof>(payload),
        Method::ResumeSession => conv::<pb::ResumeSessionRequest, SessionToken>(payload),
        _ => {
            let _ = decode_message::<pb::HealthRequest>(payload);
        }
    }
}
