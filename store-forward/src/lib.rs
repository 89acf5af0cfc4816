//! Ferry's durable store: mailboxes on redb.
//!
//! What it does: keeps per-(recipient, channel, device) FIFO mailboxes with monotonic
//! sequence numbers in one redb file; makes enqueue idempotent by message id until the
//! message expires; expires messages; enforces a global byte budget and per-recipient limits;
//! keeps the hybrid public keys of users. All writes go through one writer thread that
//! batches whatever is queued into a single transaction — group commit — and answers each
//! operation only once that batch is durable: through the write-ahead log (a batch of
//! enqueues and acks, fsynced by a second thread while the writer applies the next batch),
//! or by a durable redb commit (everything else, and the checkpoints that empty the log).
//!
//! What it does not do: networking, authentication, delivery cursors of connections (those
//! belong to the node), or any async runtime. Writes return a [`Pending`] that can be waited
//! on synchronously or awaited; reads run on the caller's thread, in the newest durable
//! snapshot.
//!
//! Invariants:
//! - A write operation's result is sent only after the transaction containing it committed
//!   with `Durability::Immediate`, or committed without it and its write-ahead log record was
//!   fsynced; or after it failed and nothing of it was acknowledged.
//! - Readers see only durable batches: a batch whose log record is not yet synced is
//!   invisible to them.
//! - The log's records after the generation a durable commit recorded are replayed on open,
//!   in order, each as its own batch, so each operation has the outcome it was answered with.
//! - `(message_id, mailbox)` maps to exactly one seq until the message's expiry: a retry never
//!   stores a second copy.
//! - Quota refusals are decided before anything of the operation is written.
//! - The counts quotas use (messages and bytes, per recipient and in all) live in memory; they
//!   are rebuilt from the tables on open and change only after a commit succeeded.
//! - Nothing read from disk is trusted: a record that does not decode is a [`StoreError`],
//!   never a panic.
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

mod backend;
mod config;
mod custody;
mod custody_store;
mod error;
mod pending;
mod reserve;
mod schema;
mod store;
mod usage;
mod wal;
mod writer;

pub use config::StoreConfig;
pub use custody::{BundleRecord, CustodyEntry, CustodyOutcome, DeliverReport, Delivery};
pub use custody_store::{CustodyStore, StoreFuture};
pub use error::{QuotaScope, StoreError};
pub use pending::Pending;
pub use store::{
    CommitObserver, Enqueued, NewMessage, Store, StoreStats, StoredMessage, WriterStats,
};
