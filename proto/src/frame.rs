//! qpq v2 frames. All integers are big-endian.
//!
//! ```text
//! Request  (client->server, bidi): [method_id u16][request_id u32][payload_len u32][protobuf]
//! Response (server->client, bidi): [status u8][request_id u32][payload_len u32][protobuf]
//! Push     (server->client, uni):  [event_type u16][payload_len u32][protobuf]
//! ```
//!
//! Headers parse from exactly their length and never fail: a reader learns the method and
//! request id even of a frame that is too large, so it can answer `PayloadTooLarge` on the
//! same stream. [`RequestHeader::payload_len`] and its siblings apply the limit.

use crate::ProtoError;
use crate::limits::{MAX_PAYLOAD, PUSH_HEADER_LEN, REQUEST_HEADER_LEN, RESPONSE_HEADER_LEN};
use crate::status::Status;

/// Header of a request frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// Method id (see [`crate::Method`]); unknown ids are kept as they came.
    pub method_id: u16,
    /// Client-chosen correlation id, echoed in the response.
    pub request_id: u32,
    /// Declared payload length, not yet checked against the limit.
    pub declared_len: u32,
}

/// Header of a response frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    /// Raw status byte; see [`ResponseHeader::status`].
    pub status: u8,
    /// The request id being answered.
    pub request_id: u32,
    /// Declared payload length, not yet checked against the limit.
    pub declared_len: u32,
}

/// Header of a push frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushHeader {
    /// Event type (see [`crate::PushEvent`]).
    pub event_type: u16,
    /// Declared payload length, not yet checked against the limit.
    pub declared_len: u32,
}

fn checked(len: u32) -> Result<usize, ProtoError> {
    let len_usize = usize::try_from(len).map_err(|_| ProtoError::PayloadTooLarge {
        len: u64::from(len),
        max: MAX_PAYLOAD as u64,
    })?;
    if len_usize > MAX_PAYLOAD {
        return Err(ProtoError::PayloadTooLarge {
            len: u64::from(len),
            max: MAX_PAYLOAD as u64,
        });
    }
    Ok(len_usize)
}

fn length_of(payload: &[u8]) -> Result<u32, ProtoError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(ProtoError::PayloadTooLarge {
            len: payload.len() as u64,
            max: MAX_PAYLOAD as u64,
        });
    }
    // MAX_PAYLOAD fits in u32, so this cannot fail after the check above.
    u32::try_from(payload.len()).map_err(|_| ProtoError::PayloadTooLarge {
        len: payload.len() as u64,
        max: MAX_PAYLOAD as u64,
    })
}

fn split<const N: usize>(buf: &[u8]) -> Result<(&[u8; N], &[u8]), ProtoError> {
    match buf.split_first_chunk::<N>() {
        Some(parts) => Ok(parts),
        None => Err(ProtoError::Truncated {
            needed: N,
            got: buf.len(),
        }),
    }
}

impl RequestHeader {
    /// Header length in bytes.
    pub const LEN: usize = REQUEST_HEADER_LEN;

    /// Reads a header from its ten bytes.
    pub fn from_bytes(b: &[u8; REQUEST_HEADER_LEN]) -> Self {
        let [m0, m1, r0, r1, r2, r3, l0, l1, l2, l3] = *b;
        Self {
            method_id: u16::from_be_bytes([m0, m1]),
            request_id: u32::from_be_bytes([r0, r1, r2, r3]),
            declared_len: u32::from_be_bytes([l0, l1, l2, l3]),
        }
    }

    /// Writes the header.
    pub fn to_bytes(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        let (m, rest) = out.split_at_mut(2);
        m.copy_from_slice(&self.method_id.to_be_bytes());
        let (r, l) = rest.split_at_mut(4);
        r.copy_from_slice(&self.request_id.to_be_bytes());
        l.copy_from_slice(&self.declared_len.to_be_bytes());
        out
    }

    /// The declared payload length, or `PayloadTooLarge` if it exceeds [`MAX_PAYLOAD`].
    pub fn payload_len(&self) -> Result<usize, ProtoError> {
        checked(self.declared_len)
    }
}

impl ResponseHeader {
    /// Header length in bytes.
    pub const LEN: usize = RESPONSE_HEADER_LEN;

    /// Reads a header from its nine bytes.
    pub fn from_bytes(b: &[u8; RESPONSE_HEADER_LEN]) -> Self {
        let [s, r0, r1, r2, r3, l0, l1, l2, l3] = *b;
        Self {
            status: s,
            request_id: u32::from_be_bytes([r0, r1, r2, r3]),
            declared_len: u32::from_be_bytes([l0, l1, l2, l3]),
        }
    }

    /// Writes the header.
    pub fn to_bytes(&self) -> [u8; RESPONSE_HEADER_LEN] {
        let mut out = [0u8; RESPONSE_HEADER_LEN];
        let (s, rest) = out.split_at_mut(1);
        s.copy_from_slice(&[self.status]);
        let (r, l) = rest.split_at_mut(4);
        r.copy_from_slice(&self.request_id.to_be_bytes());
        l.copy_from_slice(&self.declared_len.to_be_bytes());
        out
    }

    /// The status, or `UnknownStatus` for a code this crate does not know.
    pub fn status(&self) -> Result<Status, ProtoError> {
        Status::from_u8(self.status).ok_or(ProtoError::UnknownStatus(self.status))
    }

    /// The declared payload length, or `PayloadTooLarge` if it exceeds [`MAX_PAYLOAD`].
    pub fn payload_len(&self) -> Result<usize, ProtoError> {
        checked(self.declared_len)
    }
}

impl PushHeader {
    /// Header length in bytes.
    pub const LEN: usize = PUSH_HEADER_LEN;

    /// Reads a header from its six bytes.
    pub fn from_bytes(b: &[u8; PUSH_HEADER_LEN]) -> Self {
        let [e0, e1, l0, l1, l2, l3] = *b;
        Self {
            event_type: u16::from_be_bytes([e0, e1]),
            declared_len: u32::from_be_bytes([l0, l1, l2, l3]),
        }
    }

    /// Writes the header.
    pub fn to_bytes(&self) -> [u8; PUSH_HEADER_LEN] {
        let mut out = [0u8; PUSH_HEADER_LEN];
        let (e, l) = out.split_at_mut(2);
        e.copy_from_slice(&self.event_type.to_be_bytes());
        l.copy_from_slice(&self.declared_len.to_be_bytes());
        out
    }

    /// The declared payload length, or `PayloadTooLarge` if it exceeds [`MAX_PAYLOAD`].
    pub fn payload_len(&self) -> Result<usize, ProtoError> {
        checked(self.declared_len)
    }
}

/// A complete request frame borrowed from a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestFrame<'a> {
    /// The header.
    pub header: RequestHeader,
    /// The protobuf payload.
    pub payload: &'a [u8],
}

/// A complete response frame borrowed from a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseFrame<'a> {
    /// The header.
    pub header: ResponseHeader,
    /// The protobuf payload (often empty on errors).
    pub payload: &'a [u8],
}

/// A complete push frame borrowed from a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushFrame<'a> {
    /// The header.
    pub header: PushHeader,
    /// The protobuf payload.
    pub payload: &'a [u8],
}

fn body(rest: &[u8], len: usize, header_len: usize) -> Result<&[u8], ProtoError> {
    match rest.split_at_checked(len) {
        Some((payload, [])) => Ok(payload),
        Some((_, extra)) => Err(ProtoError::TrailingBytes { extra: extra.len() }),
        None => Err(ProtoError::Truncated {
            needed: header_len + len,
            got: header_len + rest.len(),
        }),
    }
}

/// Decodes exactly one request frame occupying all of `buf`.
pub fn decode_request(buf: &[u8]) -> Result<RequestFrame<'_>, ProtoError> {
    let (h, rest) = split::<REQUEST_HEADER_LEN>(buf)?;
    let header = RequestHeader::from_bytes(h);
    let len = header.payload_len()?;
    Ok(RequestFrame {
        header,
        payload: body(rest, len, REQUEST_HEADER_LEN)?,
    })
}

/// Decodes exactly one response frame occupying all of `buf`.
pub fn decode_response(buf: &[u8]) -> Result<ResponseFrame<'_>, ProtoError> {
    let (h, rest) = split::<RESPONSE_HEADER_LEN>(buf)?;
    let header = ResponseHeader::from_bytes(h);
    let len = header.payload_len()?;
    Ok(ResponseFrame {
        header,
        payload: body(rest, len, RESPONSE_HEADER_LEN)?,
    })
}

/// Decodes exactly one push frame occupying all of `buf`.
pub fn decode_push(buf: &[u8]) -> Result<PushFrame<'_>, ProtoError> {
    let (h, rest) = split::<PUSH_HEADER_LEN>(buf)?;
    let header = PushHeader::from_bytes(h);
    let len = header.payload_len()?;
    Ok(PushFrame {
        header,
        payload: body(rest, len, PUSH_HEADER_LEN)?,
    })
}

fn with_message<M: prost::Message>(header: &[u8], msg: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + msg.encoded_len());
    out.extend_from_slice(header);
    // Encoding into a Vec grows it as needed and cannot fail.
    msg.encode_raw(&mut out);
    out
}

fn message_len<M: prost::Message>(msg: &M) -> Result<u32, ProtoError> {
    let len = msg.encoded_len();
    if len > MAX_PAYLOAD {
        return Err(ProtoError::PayloadTooLarge {
            len: len as u64,
            max: MAX_PAYLOAD as u64,
        });
    }
    u32::try_from(len).map_err(|_| ProtoError::PayloadTooLarge {
        len: len as u64,
        max: MAX_PAYLOAD as u64,
    })
}

/// Encodes a request frame around raw payload bytes.
pub fn encode_request(
    method_id: u16,
    request_id: u32,
    payload: &[u8],
) -> Result<Vec<u8>, ProtoError> {
    let header = RequestHeader {
        method_id,
        request_id,
        declared_len: length_of(payload)?,
    };
    let mut out = Vec::with_capacity(REQUEST_HEADER_LEN + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Encodes a request frame around a protobuf message.
pub fn encode_request_msg<M: prost::Message>(
    method_id: u16,
    request_id: u32,
    msg: &M,
) -> Result<Vec<u8>, ProtoError> {
    let header = RequestHeader {
        method_id,
        request_id,
        declared_len: message_len(msg)?,
    };
    Ok(with_message(&header.to_bytes(), msg))
}

/// Encodes a response frame around raw payload bytes.
pub fn encode_response(
    status: Status,
    request_id: u32,
    payload: &[u8],
) -> Result<Vec<u8>, ProtoError> {
    let header = ResponseHeader {
        status: status as u8,
        request_id,
        declared_len: length_of(payload)?,
    };
    let mut out = Vec::with_capacity(RESPONSE_HEADER_LEN + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Encodes a response frame around a protobuf message.
pub fn encode_response_msg<M: prost::Message>(
    status: Status,
    request_id: u32,
    msg: &M,
) -> Result<Vec<u8>, ProtoError> {
    let header = ResponseHeader {
        status: status as u8,
        request_id,
        declared_len: message_len(msg)?,
    };
    Ok(with_message(&header.to_bytes(), msg))
}

/// Encodes a push frame around a protobuf message.
pub fn encode_push_msg<M: prost::Message>(event_type: u16, msg: &M) -> Result<Vec<u8>, ProtoError> {
    let header = PushHeader {
        event_type,
        declared_len: message_len(msg)?,
    };
    Ok(with_message(&header.to_bytes(), msg))
}

/// Encodes a push frame around raw payload bytes.
pub fn encode_push(event_type: u16, payload: &[u8]) -> Result<Vec<u8>, ProtoError> {
    let header = PushHeader {
        event_type,
        declared_len: length_of(payload)?,
    };
    let mut out = Vec::with_capacity(PUSH_HEADER_LEN + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}
