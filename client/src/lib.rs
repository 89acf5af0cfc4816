//! Ferry client library.
//!
//! What it does: connects to a Ferry node (or any qpq v2 server) over QUIC with ALPN `qpq`,
//! pins the node's self-signed certificate (trust on first use, like SSH's `known_hosts`),
//! authenticates the connection with an Ed25519 identity (methods 104/105), calls the delivery
//! and key methods, receives push events, and seals and opens end-to-end encrypted messages
//! (X25519 + ML-KEM-768 → HKDF-SHA256 → ChaCha20-Poly1305, signed by the sender).
//!
//! What it does not do: print, parse command lines, or install a tracing subscriber; the
//! `ferry` binary does that. Nodes only ever see the sealed bytes this crate produces.
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

pub mod batch;
mod client;
pub mod envelope;
mod error;
pub mod identity;
#[cfg(feature = "loadgen")]
pub mod loadgen;
pub mod message;
pub mod net;
pub mod seen;
pub mod topic;
pub mod trust;

pub use batch::{BatchOptions, Batcher};
pub use client::{Attached, Client, ConnectOptions, PushEvent};
pub use error::ClientError;
pub use identity::Identity;
pub use trust::Trust;

/// Current unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A new message id: time-ordered ([`MessageId::time_ordered`]), so the nodes that store it
/// write less flash than for a random one, and greater than every id this process made
/// before: within one millisecond (or after the clock stepped back) it is the last one plus
/// one (RFC 9562, 6.2, method 2), so one sender's messages sort in the order they were made,
/// which is how the mesh and `ferry inbox` put them in order.
pub fn new_message_id() -> Result<ferry_proto::types::MessageId, ClientError> {
    static LAST: std::sync::Mutex<u128> = std::sync::Mutex::new(0);
    let fresh = ferry_proto::types::MessageId::time_ordered(now_ms(), random::<10>()?);
    let fresh = u128::from_be_bytes(*fresh.as_bytes());
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *last = if fresh > *last {
        fresh
    } else {
        last.wrapping_add(1)
    };
    Ok(ferry_proto::types::MessageId::from_array(
        last.to_be_bytes(),
    ))
}

/// Fills a buffer from the operating system's CSPRNG.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], ClientError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|_| ClientError::Random)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn new_message_ids_are_time_ordered_and_distinct() {
        let before = super::now_ms();
        let a = super::new_message_id().unwrap();
        let b = super::new_message_id().unwrap();
        let after = super::now_ms();
        assert_ne!(a, b);
        // Made one after the other, they sort in that order, also within one millisecond.
        let many: Vec<_> = (0..1000)
            .map(|_| super::new_message_id().unwrap())
            .collect();
        assert!(many.windows(2).all(|w| w[0] < w[1]));
        assert!(a < b && b < many[0]);
        for id in [a, b] {
            let mut ms = [0u8; 8];
            ms[2..].copy_from_slice(&id.as_bytes()[..6]);
            let ms = u64::from_be_bytes(ms);
            assert!(
                (before..=after).contains(&ms),
                "{ms} not in {before}..={after}"
            );
            assert_eq!(id.as_bytes()[6] >> 4, 7);
        }
    }
}
