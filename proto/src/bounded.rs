//! Repeated fields counted before a message is decoded.
//!
//! prost decodes a repeated field entry by entry, allocating a struct for each, before any
//! check on the decoded message can run. An entry can be two bytes on the wire (a key and a
//! zero length) and over a hundred in memory, so a 4 MiB frame of empty entries costs
//! hundreds of MiB before a "too many entries" refusal. [`decode_bounded`] first walks the
//! wire format, without allocating, and counts the entries of every limited field (summed
//! over every occurrence of the messages that hold it, as prost merges them); only a message
//! within its limits is decoded.
//!
//! The walk costs one pass over the buffer per limit. It stops counting inside a buffer that
//! is not valid protobuf, leaving the error to prost's decoder, which then decodes at most the
//! entries counted (the limits hold either way).

use crate::ProtoError;
use crate::limits::{MAX_BATCH_RECIPIENTS, MAX_ENQUEUE_MANY, MAX_KEYS_PER_FETCH, MAX_RELAY_BATCH};
use crate::qpq::v1 as pb;

/// A repeated field with a limit on its number of entries.
#[derive(Clone, Copy, Debug)]
pub struct RepeatedLimit {
    /// Field numbers from the top-level message to the repeated field: every step but the
    /// last names an embedded message (or a `oneof` member that is one).
    pub path: &'static [u32],
    /// Entries allowed at most.
    pub max: usize,
    /// The repeated field's name, for the error.
    pub field: &'static str,
}

/// A message whose repeated fields are counted before it is decoded.
pub trait Bounded: prost::Message + Default {
    /// The limits checked by [`decode_bounded`].
    const LIMITS: &'static [RepeatedLimit];
}

/// Decodes an untrusted message once its repeated fields are known to be within
/// [`Bounded::LIMITS`]; otherwise [`ProtoError::TooMany`], before anything is allocated.
pub fn decode_bounded<M: Bounded>(buf: &[u8]) -> Result<M, ProtoError> {
    check(buf, M::LIMITS)?;
    crate::decode_message(buf)
}

/// Checks `limits` against the undecoded message in `buf`.
pub fn check(buf: &[u8], limits: &[RepeatedLimit]) -> Result<(), ProtoError> {
    for l in limits {
        let got = count(buf, l.path);
        if got > l.max {
            return Err(ProtoError::TooMany {
                field: l.field,
                max: l.max,
                got,
            });
        }
    }
    Ok(())
}

/// Occurrences of the field at `path` in `buf` (0 for an empty path).
pub fn count(buf: &[u8], path: &[u32]) -> usize {
    let Some((&first, rest)) = path.split_first() else {
        return 0;
    };
    let mut n = 0usize;
    let mut r = buf;
    while let Some((field, value, tail)) = next_field(r) {
        r = tail;
        if field != first {
            continue;
        }
        match (rest.is_empty(), value) {
            (true, _) => n = n.saturating_add(1),
            (false, Some(inner)) => n = n.saturating_add(count(inner, rest)),
            // A scalar where an embedded message was expected: prost refuses it.
            (false, None) => {}
        }
    }
    n
}

/// A field split off a buffer: its number, its bytes if length-delimited, and what follows.
type Field<'a> = (u32, Option<&'a [u8]>, &'a [u8]);

/// Splits the next field off `buf`; `None` at the end of the buffer or at anything that is
/// not valid protobuf.
fn next_field(buf: &[u8]) -> Option<Field<'_>> {
    let (key, rest) = varint(buf)?;
    let field = u32::try_from(key >> 3).ok()?;
    match key & 7 {
        0 => varint(rest).map(|(_, tail)| (field, None, tail)),
        1 => rest.get(8..).map(|tail| (field, None, tail)),
        2 => {
            let (len, rest) = varint(rest)?;
            let len = usize::try_from(len).ok()?;
            let value = rest.get(..len)?;
            let tail = rest.get(len..)?;
            Some((field, Some(value), tail))
        }
        5 => rest.get(4..).map(|tail| (field, None, tail)),
        // Groups (3, 4) are not used by proto3, and 6, 7 are not wire types.
        _ => None,
    }
}

fn varint(buf: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, b) in buf.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return buf.get(i + 1..).map(|tail| (v, tail));
        }
    }
    None
}

macro_rules! bounded {
    ($($msg:ty => [$(($path:expr, $max:expr, $field:literal)),* $(,)?]),+ $(,)?) => {
        $(impl Bounded for $msg {
            const LIMITS: &'static [RepeatedLimit] = &[
                $(RepeatedLimit { path: $path, max: $max, field: $field }),*
            ];
        })+
    };
}

// Every request a node decodes, so that none can be decoded unchecked (the node's decoder
// takes only `Bounded` messages). Each limit is checked again on the decoded message (the
// `types` conversions), where the error names the same field.
bounded! {
    pb::HealthRequest => [],
    pb::AuthChallengeRequest => [],
    pb::AuthResponseRequest => [],
    pb::ResumeSessionRequest => [],
    pb::EnqueueRequest => [],
    pb::EnqueueManyRequest => [(&[1], MAX_ENQUEUE_MANY, "messages")],
    pb::BatchEnqueueRequest => [(&[1], MAX_BATCH_RECIPIENTS, "recipient_keys")],
    pb::FetchRequest => [],
    pb::FetchWaitRequest => [],
    pb::PeekRequest => [],
    pb::AckRequest => [],
    pb::UploadHybridKeyRequest => [],
    pb::FetchHybridKeyRequest => [],
    pb::FetchHybridKeysRequest => [(&[1], MAX_KEYS_PER_FETCH, "identity_keys")],
    pb::AttachRequest => [],
    pb::BroadcastPublishRequest => [],
    pb::BroadcastFetchRequest => [],
    pb::RelayEnqueueRequest => [],
    pb::RelayBatchEnqueueRequest => [(&[2], MAX_RELAY_BATCH, "messages")],
    pb::ProxyFetchKeyPackageRequest => [],
    pb::ProxyFetchHybridKeyRequest => [],
    pb::ProxyResolveUserRequest => [],
    pb::FederationHealthRequest => [],
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn counts_top_level_and_nested_entries() {
        let req = pb::EnqueueManyRequest {
            messages: vec![pb::EnqueueRequest::default(); 5],
        };
        let bytes = req.encode_to_vec();
        assert_eq!(count(&bytes, &[1]), 5);
        assert_eq!(count(&bytes, &[2]), 0);
        // Two occurrences of an embedded message are merged by prost: their entries add up.
        let inner = pb::FetchHybridKeysRequest {
            identity_keys: vec![vec![1; 32]; 3],
        }
        .encode_to_vec();
        let mut outer = Vec::new();
        for _ in 0..2 {
            outer.push(0x12); // field 2, length-delimited
            outer.push(u8::try_from(inner.len()).unwrap());
            outer.extend_from_slice(&inner);
        }
        assert_eq!(count(&outer, &[2, 1]), 6);
    }

    #[test]
    fn too_many_entries_are_refused_before_decoding() {
        // 2,000,000 empty entries: 4 MB on the wire.
        let bytes: Vec<u8> = [0x0a, 0x00].repeat(2_000_000);
        let e = decode_bounded::<pb::EnqueueManyRequest>(&bytes).unwrap_err();
        assert!(
            matches!(
                e,
                ProtoError::TooMany {
                    field: "messages",
                    got: 2_000_000,
                    ..
                }
            ),
            "{e}"
        );
        let ok = [0x0a, 0x00].repeat(256);
        assert_eq!(
            decode_bounded::<pb::EnqueueManyRequest>(&ok)
                .unwrap()
                .messages
                .len(),
            256
        );
    }

    #[test]
    fn malformed_input_stops_the_count_and_fails_in_prost() {
        // A length that runs past the end.
        let bytes = [0x0a, 0x05, 0x01];
        assert_eq!(count(&bytes, &[1]), 0);
        assert!(decode_bounded::<pb::EnqueueManyRequest>(&bytes).is_err());
        // An over-long varint.
        let bytes = [0xff; 11];
        assert_eq!(count(&bytes, &[1]), 0);
        assert!(decode_bounded::<pb::EnqueueManyRequest>(&bytes).is_err());
        // A group wire type.
        assert_eq!(count(&[0x0b, 0x0c], &[1]), 0);
    }
}
