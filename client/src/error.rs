use std::path::PathBuf;

use ferry_proto::types::Fingerprint;
use ferry_proto::{Method, ProtoError, Status};
use thiserror::Error;

/// Everything that can go wrong on the client side.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Could not set up or reach the QUIC endpoint.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Where we tried to go.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// No QUIC handshake completed within the connect timeout: nothing answers at that
    /// address (or a firewall drops its UDP).
    #[error("no QUIC handshake with {addr} within {} ms", waited.as_millis())]
    NoAnswer {
        /// Where we tried to go.
        addr: String,
        /// How long we waited.
        waited: std::time::Duration,
    },
    /// The node presented a different certificate than the one pinned for it.
    #[error(
        "the certificate of node {node} has changed: expected {expected}, got {presented}. \
         If the node was reinstalled on purpose, run `ferry forget {node}` (or remove its line \
         from {known_nodes}) and connect again"
    )]
    CertificateChanged {
        /// The node, as written in the known-nodes file.
        node: String,
        /// The pinned fingerprint.
        expected: Fingerprint,
        /// What the node presented.
        presented: Fingerprint,
        /// The known-nodes file.
        known_nodes: PathBuf,
    },
    /// The node does not match a fingerprint given explicitly.
    #[error("node certificate {presented} does not match the pinned {expected}")]
    PinMismatch {
        /// The expected fingerprint.
        expected: Fingerprint,
        /// What the node presented.
        presented: Fingerprint,
    },
    /// The QUIC connection failed or closed.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A stream failed.
    #[error("stream error: {0}")]
    Stream(String),
    /// The node did not answer in time; the connection was closed.
    #[error("{method}: no answer from the node within {after:?}")]
    Timeout {
        /// The method called.
        method: String,
        /// How long the client waited.
        after: std::time::Duration,
    },
    /// The node answered with a non-Ok status.
    #[error("{method} failed: {status}: {message}")]
    Status {
        /// The method called.
        method: String,
        /// The status.
        status: Status,
        /// The node's explanation.
        message: String,
        /// When a retry may succeed, if the node said.
        retry_after_ms: u64,
    },
    /// A frame or message from the node did not decode.
    #[error("bad response from node: {0}")]
    Proto(#[from] ProtoError),
    /// A request could not be sent as it is (larger than a frame may be, say).
    #[error("cannot send this request: {0}")]
    Request(ProtoError),
    /// The identity file is missing, unreadable or malformed.
    #[error("identity file {path}: {reason}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The known-nodes file is malformed.
    #[error("known-nodes file {path}: {reason}")]
    KnownNodes {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A hybrid envelope could not be opened: not for us, damaged, or forged.
    #[error("cannot open message: {0}")]
    Open(&'static str),
    /// A message's signature or binding did not verify.
    #[error("message not authentic: {0}")]
    NotAuthentic(&'static str),
    /// The recipient has no hybrid key on this node.
    #[error(
        "no key found for {0} on this node or in the mesh (the recipient must connect to a node once first)"
    )]
    UnknownRecipient(String),
    /// A broadcast post could not be sealed or opened.
    #[error("{0}")]
    Broadcast(String),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// TLS could not be configured.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
}

impl ClientError {
    pub(crate) fn status(method: Method, status: Status, body: &[u8]) -> Self {
        let err =
            ferry_proto::decode_message::<ferry_proto::qpq::v1::Error>(body).unwrap_or_default();
        ClientError::Status {
            method: method.name().to_string(),
            status,
            message: if err.message.is_empty() {
                status.name().to_string()
            } else {
                err.message
            },
            retry_after_ms: err.retry_after_ms,
        }
    }

    /// The status, if the node answered with one.
    pub fn status_code(&self) -> Option<Status> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when retrying the same call later may succeed (connection trouble, overload).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connection(_)
            | ClientError::Stream(_)
            | ClientError::Connect { .. }
            | ClientError::NoAnswer { .. }
            | ClientError::Timeout { .. } => true,
            ClientError::Status { status, .. } => matches!(
                status,
                Status::RateLimited | Status::Unavailable | Status::DeadlineExceeded
            ),
            _ => false,
        }
    }
}
