//! The Ferry node: the qpq v2 client protocol over QUIC in front of durable mailboxes.
//!
//! What it does: listens for QUIC connections with ALPN `qpq` (a self-signed certificate made
//! on first start and kept in the data directory), authenticates each connection with an
//! Ed25519 challenge, serves the delivery and key methods from a [`ferry_store::Store`], pushes
//! `NewMessage` events to connected recipients, limits request rates per IP, exports
//! Prometheus metrics over HTTP, and shuts down gracefully.
//!
//! What it does not do: parse command lines or install a tracing subscriber (the `ferry`
//! binary does), or see any plaintext: payloads are opaque, sealed by clients.
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

#[cfg(unix)]
pub mod admin;
mod auth;
mod budget;
mod cert;
pub mod config;
mod conn;
mod error;
mod federation;
mod http;
mod mesh;
mod metrics;
mod ratelimit;
mod rpc;
mod server;
mod state;
mod udp_drops;

pub use config::{FileConfig, MeshConfig, NodeConfig, Role, StaticPeer};
pub use error::NodeError;
pub use server::{RunningNode, start};

/// The node's health in a word, for Health (802) and `/healthz`: `ok`, `draining`,
/// `disk full` or `unavailable` (the store cannot be read).
pub(crate) fn health_status(state: &state::State, readable: bool) -> &'static str {
    if state.is_draining() {
        "draining"
    } else if !readable {
        "unavailable"
    } else if state.store.disk_full() {
        "disk full"
    } else {
        "ok"
    }
}

/// Current unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
