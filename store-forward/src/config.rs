use std::time::Duration;

use ferry_proto::limits::MAX_MESSAGE_LEN;

/// Limits and tuning of a [`crate::Store`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Node-wide budget of stored message bytes (payload plus a fixed per-message overhead).
    pub max_total_bytes: u64,
    /// Messages one recipient may have stored, over all its channels and devices.
    pub max_recipient_messages: u64,
    /// Bytes one recipient may have stored.
    pub max_recipient_bytes: u64,
    /// redb page cache. Small on routers: the working set is the tail of a few mailboxes.
    pub cache_bytes: usize,
    /// Operations folded into one commit at most.
    pub max_batch_ops: usize,
    /// Payload bytes folded into one commit at most (the first operation always goes in).
    pub max_batch_bytes: usize,
    /// Operations that may wait for the writer before new ones are refused with `Busy`.
    pub queue_capacity: usize,
    /// Expired entries removed per sweep transaction at most.
    pub sweep_batch: usize,
    /// Log batches of Enqueue, EnqueueBatch and Ack to a write-ahead log beside the database
    /// (`<file>-wal`), `fdatasync`ed on a second thread while the writer applies the next
    /// batch, and commit the database itself durably only at checkpoints. Off: every batch is
    /// a durable redb commit, answered after its own fsync.
    pub wal: bool,
    /// Log size at which the next batch is a durable commit (a checkpoint) that empties it.
    /// Bounds the log on disk, the pages redb holds for it, and the replay after a crash.
    pub checkpoint_bytes: u64,
    /// A log with anything in it is checkpointed after the writer was idle this long.
    pub checkpoint_idle: Duration,
    /// While messages are flowing (an enqueue was taken into a batch in the last 5 ms), a
    /// batch of acknowledgements only waits at most this long for one more operation to share
    /// its commit and fsync with. Zero: never wait.
    pub ack_linger: Duration,
    /// Disk space kept in a file beside the database (`<file>-reserve`) and given up when the
    /// disk is full, so that acknowledgements and expiry can still be committed and free
    /// space (see `reserve.rs`). Zero: none (a full disk then frees space only when the
    /// filesystem gets room from elsewhere).
    pub reserve_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_total_bytes: 256 * 1024 * 1024,
            max_recipient_messages: 100_000,
            max_recipient_bytes: 64 * 1024 * 1024,
            cache_bytes: 4 * 1024 * 1024,
            max_batch_ops: 1024,
            max_batch_bytes: 2 * MAX_MESSAGE_LEN,
            queue_capacity: 16 * 1024,
            sweep_batch: 10_000,
            wal: true,
            checkpoint_bytes: 1024 * 1024,
            checkpoint_idle: Duration::from_secs(30),
            ack_linger: Duration::from_micros(250),
            reserve_bytes: 2 * 1024 * 1024,
        }
    }
}
