//! What the mesh (and so a hub) needs from storage, as a trait: custody of bundles for other
//! nodes, signed presence claims, and a few counters. [`Store`] (redb, on this machine) is the
//! implementation every node uses. A fleet of hubs behind one UDP load balancer would share a
//! distributed database through another implementation; `docs/scaling.md` has the plan.
//!
//! The contract an implementation must keep (the redb one does, and its tests check it):
//!
//! - A write resolves only when it is durable: a custody acknowledgement upstream is sent after
//!   [`CustodyStore::custody_put`] resolved, and the sender deletes its copy on that ack.
//! - `custody_put` is idempotent on the bundle digest, and reports a bundle already delivered
//!   (its message id seen in the recipient's mailbox) as a duplicate, until it expires.
//! - `custody_deliver*` moves bundles into mailboxes and out of custody in one atomic step.
//! - Quotas and expiry apply as for any message; a full store refuses, never drops.

use std::future::Future;
use std::pin::Pin;

use ferry_proto::types::{BundleDigest, HybridPublicKey, IdentityKey};

use crate::{BundleRecord, CustodyEntry, CustodyOutcome, DeliverReport, StoreError};

/// A write in progress: resolves once it is durable.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// Storage for the mesh driver: custody, presence and the route seqno.
pub trait CustodyStore: Send + Sync + 'static {
    /// A persisted counter (the route seqno).
    fn meta(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Persists a counter.
    fn put_meta(&self, key: &'static str, value: u64) -> StoreFuture<()>;
    /// Every stored presence claim (encoded `ferry.mesh.v1.Presence`).
    fn presence_all(&self) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Stores a user's newest presence claim and hybrid key; false if an equal or newer one
    /// was stored already.
    fn put_presence(
        &self,
        user: IdentityKey,
        timestamp_ms: u64,
        claim: Vec<u8>,
        hybrid: HybridPublicKey,
    ) -> StoreFuture<bool>;
    /// Summaries of every bundle in custody (read at start).
    fn custody_list(&self) -> Result<Vec<CustodyEntry>, StoreError>;
    /// One bundle in custody.
    fn custody_get(&self, digest: &BundleDigest) -> Result<Option<BundleRecord>, StoreError>;
    /// Takes custody of a bundle (or, with `deliver_local`, puts it straight into the
    /// recipient's mailbox here). The write is submitted when this is called, not when the
    /// future is first polled, and writes are applied in the order they were submitted: the
    /// mesh relies on both to keep bundles in the order they arrived.
    fn custody_put(
        &self,
        record: BundleRecord,
        deliver_local: bool,
        now_ms: u64,
    ) -> StoreFuture<CustodyOutcome>;
    /// Drops bundles the next hop has taken custody of (or that expired).
    fn custody_delete(&self, digests: Vec<BundleDigest>) -> StoreFuture<u64>;
    /// Moves bundles into local mailboxes.
    fn custody_deliver(
        &self,
        digests: Vec<BundleDigest>,
        now_ms: u64,
    ) -> StoreFuture<DeliverReport>;
    /// Moves every bundle for `recipient` into their mailbox here.
    fn custody_deliver_recipient(
        &self,
        recipient: IdentityKey,
        now_ms: u64,
    ) -> StoreFuture<DeliverReport>;
    /// Whether bundles for `recipient` wait in custody.
    fn custody_waiting(&self, recipient: &IdentityKey) -> Result<bool, StoreError>;
    /// Whether `recipient` has a mailbox with messages here.
    fn has_mail(&self, recipient: &IdentityKey) -> Result<bool, StoreError>;
    /// Turns `recipient`'s mailbox here into custody bundles (they moved to another node).
    fn evict(
        &self,
        recipient: IdentityKey,
        now_ms: u64,
        hop_limit: u8,
    ) -> StoreFuture<Vec<CustodyEntry>>;
}

impl CustodyStore for crate::Store {
    fn meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        crate::Store::meta(self, key)
    }

    fn put_meta(&self, key: &'static str, value: u64) -> StoreFuture<()> {
        Box::pin(crate::Store::put_meta(self, key, value))
    }

    fn presence_all(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        crate::Store::presence_all(self)
    }

    fn put_presence(
        &self,
        user: IdentityKey,
        timestamp_ms: u64,
        claim: Vec<u8>,
        hybrid: HybridPublicKey,
    ) -> StoreFuture<bool> {
        Box::pin(crate::Store::put_presence(
            self,
            user,
            timestamp_ms,
            claim,
            hybrid,
        ))
    }

    fn custody_list(&self) -> Result<Vec<CustodyEntry>, StoreError> {
        crate::Store::custody_list(self)
    }

    fn custody_get(&self, digest: &BundleDigest) -> Result<Option<BundleRecord>, StoreError> {
        crate::Store::custody_get(self, digest)
    }

    fn custody_put(
        &self,
        record: BundleRecord,
        deliver_local: bool,
        now_ms: u64,
    ) -> StoreFuture<CustodyOutcome> {
        Box::pin(crate::Store::custody_put(
            self,
            record,
            deliver_local,
            now_ms,
        ))
    }

    fn custody_delete(&self, digests: Vec<BundleDigest>) -> StoreFuture<u64> {
        Box::pin(crate::Store::custody_delete(self, digests))
    }

    fn custody_deliver(
        &self,
        digests: Vec<BundleDigest>,
        now_ms: u64,
    ) -> StoreFuture<DeliverReport> {
        Box::pin(crate::Store::custody_deliver(self, digests, now_ms))
    }

    fn custody_deliver_recipient(
        &self,
        recipient: IdentityKey,
        now_ms: u64,
    ) -> StoreFuture<DeliverReport> {
        Box::pin(crate::Store::custody_deliver_recipient(
            self, recipient, now_ms,
        ))
    }

    fn custody_waiting(&self, recipient: &IdentityKey) -> Result<bool, StoreError> {
        crate::Store::custody_waiting(self, recipient)
    }

    fn has_mail(&self, recipient: &IdentityKey) -> Result<bool, StoreError> {
        crate::Store::has_mail(self, recipient)
    }

    fn evict(
        &self,
        recipient: IdentityKey,
        now_ms: u64,
        hop_limit: u8,
    ) -> StoreFuture<Vec<CustodyEntry>> {
        Box::pin(crate::Store::evict(self, recipient, now_ms, hop_limit))
    }
}
