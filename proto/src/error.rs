use thiserror::Error;

/// Everything that can be wrong with bytes that arrived from a peer.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// Fewer bytes arrived than the frame header or a field needs.
    #[error("truncated frame: needed {needed} bytes, got {got}")]
    Truncated {
        /// Bytes the frame declared or its header needs.
        needed: usize,
        /// Bytes that were present.
        got: usize,
    },
    /// A frame declared a payload longer than the protocol allows.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Declared length.
        len: u64,
        /// The limit that applies.
        max: u64,
    },
    /// Bytes were left over after a complete frame.
    #[error("{extra} unexpected bytes after the frame")]
    TrailingBytes {
        /// Count of extra bytes.
        extra: usize,
    },
    /// The protobuf payload did not decode.
    #[error("malformed protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A response carried a status code this crate does not know.
    #[error("unknown status code {0}")]
    UnknownStatus(u8),
    /// A field had the wrong length.
    #[error("{field} must be {expected}, got {got} bytes")]
    BadLength {
        /// Protobuf field name.
        field: &'static str,
        /// What the field must be, in words.
        expected: &'static str,
        /// Length received.
        got: usize,
    },
    /// A field that must be present was empty.
    #[error("{field} must not be empty")]
    Empty {
        /// Protobuf field name.
        field: &'static str,
    },
    /// One entry of a repeated field is invalid.
    #[error("{field}[{index}]: {source}")]
    Item {
        /// Protobuf field name of the repeated field.
        field: &'static str,
        /// Which entry, from 0.
        index: usize,
        /// What is wrong with it.
        source: Box<ProtoError>,
    },
    /// A repeated field had too many entries.
    #[error("{field} has {got} entries, at most {max} allowed")]
    TooMany {
        /// Protobuf field name.
        field: &'static str,
        /// The limit.
        max: usize,
        /// Count received.
        got: usize,
    },
    /// A BatchEnqueue whose payload, stored once per recipient, adds up to more than one
    /// request may store.
    #[error(
        "{recipients} recipients x {payload} bytes = {total} bytes to store, more than the \
         {max} bytes one BatchEnqueue may store; send fewer recipients per request"
    )]
    BatchTooLarge {
        /// Recipients in the request.
        recipients: usize,
        /// Payload bytes.
        payload: usize,
        /// What storing it for every recipient takes.
        total: u64,
        /// The limit ([`crate::limits::MAX_BATCH_STORED_BYTES`]).
        max: u64,
    },
    /// A TTL above what this node keeps.
    #[error("ttl_secs {got} exceeds this node's maximum of {max} seconds")]
    TtlTooLong {
        /// Requested TTL in seconds.
        got: u32,
        /// The node's maximum.
        max: u32,
    },
    /// A textual key, fingerprint or id did not parse.
    #[error("cannot parse {what}: {reason}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// Why it failed.
        reason: &'static str,
    },
}

impl ProtoError {
    /// What is wrong at the bottom: for an [`ProtoError::Item`], the entry's own error.
    pub fn innermost(&self) -> &ProtoError {
        match self {
            ProtoError::Item { source, .. } => source.innermost(),
            other => other,
        }
    }
}
