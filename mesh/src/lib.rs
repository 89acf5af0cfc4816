//! Ferry's mesh.
//!
//! What it does: the routing and custody logic of a node as a sans-IO state machine
//! ([`core::Mesh`]): a loop-free distance-vector table of nodes, signed presence claims that
//! map users to their home node, custody transfer of bundles hop by hop (a bundle is deleted
//! only after the next hop says it is durable there), anti-entropy when links come up, peer
//! exchange, and topic broadcasts. The link protocol (`ferry.mesh.v1`) is validated in
//! [`wire`]. With the `sim` feature, [`sim`] runs many cores on a virtual clock with seeded
//! latency, loss, churn, partitions and crashes.
//!
//! What it does not do: IO. No sockets, clock, disk or runtime: the node's driver (and the
//! simulator) feed the core events and carry out its outputs.
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

pub mod core;
mod det;
// The simulator is a test harness: a broken invariant must stop it loudly.
#[cfg(feature = "sim")]
#[allow(
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod sim;
pub mod wire;

#[cfg(feature = "driver")]
pub mod driver;

pub use crate::core::{BundleMeta, Config, Mesh, Output, PeerSource, Sizes, Stats, Stored};
