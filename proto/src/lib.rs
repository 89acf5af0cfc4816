//! Ferry's wire formats.
//!
//! This crate owns what crosses a wire: the quicproquo (qpq) v2 client framing (request,
//! response and push frames, status codes, method IDs), the `qpq.v1` protobuf messages, the
//! `ferry.e2e.v1` end-to-end message, the transcripts that get signed, the size limits, and the
//! validated domain types that protobuf transport structs are converted into at the boundary.
//!
//! It does no IO and holds no keys. Every decoder here takes hostile input: it returns a
//! [`ProtoError`], never panics, and never allocates more than the declared limits allow.
//!
//! The generated prost code under `src/gen/` is committed (no build needs `protoc`); the test
//! `generated_code_is_fresh` fails when it no longer matches the `.proto` files.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod bounded;
mod error;
pub mod frame;
#[doc(hidden)]
pub mod harness;
pub mod limits;
pub mod method;
pub mod status;
pub mod transcript;
pub mod types;

pub use bounded::{Bounded, decode_bounded};
pub use error::ProtoError;
pub use method::{Method, PushEvent};
pub use status::Status;

/// Generated `qpq.v1` protobuf transport types. Convert them into [`types`] before use.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod qpq {
    /// Package `qpq.v1`.
    pub mod v1 {
        include!("gen/qpq.v1.rs");
    }
}

/// Generated `ferry.mesh.v1` types: the link protocol between nodes.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod mesh {
    /// Package `ferry.mesh.v1`.
    pub mod v1 {
        include!("gen/ferry.mesh.v1.rs");
    }
}

/// Generated `ferry.e2e.v1` types: the plaintext clients seal end to end.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod e2e {
    /// Package `ferry.e2e.v1`.
    pub mod v1 {
        include!("gen/ferry.e2e.v1.rs");
    }
}

/// Decodes a protobuf message from an untrusted buffer.
///
/// The caller has already bounded `buf` to [`limits::MAX_PAYLOAD`]; prost itself bounds
/// nesting depth, so decoding allocates at most in proportion to `buf`.
pub fn decode_message<M: prost::Message + Default>(buf: &[u8]) -> Result<M, ProtoError> {
    M::decode(buf).map_err(ProtoError::Decode)
}
