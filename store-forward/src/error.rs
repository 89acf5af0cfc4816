use std::sync::Arc;

use thiserror::Error;

/// What a quota refusal was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaScope {
    /// The node-wide byte budget.
    GlobalBytes,
    /// The per-recipient message count.
    RecipientMessages,
    /// The per-recipient byte budget.
    RecipientBytes,
}

impl std::fmt::Display for QuotaScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QuotaScope::GlobalBytes => "node storage budget",
            QuotaScope::RecipientMessages => "recipient message limit",
            QuotaScope::RecipientBytes => "recipient byte limit",
        })
    }
}

/// Errors of the store. Cloneable, because one failed group commit answers many operations.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A quota would be exceeded; nothing was stored.
    #[error("{scope} reached ({limit} allowed); nothing was stored")]
    QuotaExceeded {
        /// Which limit.
        scope: QuotaScope,
        /// The configured limit (bytes or messages).
        limit: u64,
    },
    /// The disk (or the file size limit) is full; nothing of this operation was stored.
    #[error("storage is full; nothing was stored: {0}")]
    DiskFull(Arc<std::io::Error>),
    /// The message's expiry is not after its acceptance time.
    #[error("message already expired")]
    Expired,
    /// The writer's queue is full; retry later.
    #[error("store is busy: {0} operations queued")]
    Busy(usize),
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
    /// The database is being reopened after an IO failure; retry later.
    #[error("storage temporarily unavailable after an IO error")]
    Unavailable,
    /// A record on disk did not decode.
    #[error("corrupt record in table {table}: {reason}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
    /// The database was written by a newer Ferry.
    #[error(
        "database schema version {found} is newer than this build supports ({supported}): a \
         newer Ferry wrote it; run that version, or a copy of the file made before the upgrade"
    )]
    SchemaTooNew {
        /// Version in the file.
        found: u64,
        /// Version this build writes.
        supported: u64,
    },
    /// A file-system error outside redb (creating the directory, for example).
    #[error("io error on {path}: {source}")]
    Io {
        /// The path involved.
        path: std::path::PathBuf,
        /// The error.
        source: Arc<std::io::Error>,
    },
    /// An error from redb.
    #[error("database error: {0}")]
    Db(Arc<redb::Error>),
}

impl StoreError {
    /// True for errors after which the same operation may succeed later unchanged.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Busy(_) | StoreError::Unavailable | StoreError::DiskFull(_)
        )
    }

    /// True for "no room": quotas and a full disk.
    pub fn is_exhausted(&self) -> bool {
        matches!(
            self,
            StoreError::QuotaExceeded { .. } | StoreError::DiskFull(_)
        )
    }
}

impl StoreError {
    /// A file-system error on `path`: [`StoreError::DiskFull`] when the disk is full.
    pub(crate) fn from_io(path: &std::path::Path, e: std::io::Error) -> Self {
        if io_is_full(&e) {
            StoreError::DiskFull(Arc::new(e))
        } else {
            StoreError::Io {
                path: path.to_path_buf(),
                source: Arc::new(e),
            }
        }
    }
}

fn io_is_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::StorageFull | ErrorKind::FileTooLarge | ErrorKind::QuotaExceeded
    )
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Io(io) if io_is_full(&io) => StoreError::DiskFull(Arc::new(io)),
            redb::Error::PreviousIo => StoreError::Unavailable,
            other => StoreError::Db(Arc::new(other)),
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::from(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
