//! The single writer: group commit.
//!
//! The loop blocks for one operation, then takes whatever else is already queued (no waiting
//! for more: while one commit is in fsync, the next batch queues up by itself), applies all of
//! it in one write transaction, commits it, and only then answers every operation. A batch of
//! Enqueue, EnqueueBatch and Ack goes through the write-ahead log (see [`crate::wal`]): the
//! commit is non-durable, the log is fsynced by the syncer thread, which answers; anything else
//! is a durable commit that also makes the log's earlier batches durable.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_proto::types::{BundleDigest, HybridPublicKey, IdentityKey, MailboxAddr};
use portable_atomic::Ordering;
use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, Value, WriteTransaction,
};

use crate::custody::{self, BundleRecord, CustodyEntry, CustodyOutcome, DeliverReport, Delivery};
use crate::reserve::Reserve;
use crate::schema::{
    self, CUSTODY, CUSTODY_BY_RECIPIENT, CUSTODY_EXPIRY, DEDUP, DEDUP_RECORD_COST, EXPIRY,
    ExpiryRun, FINGERPRINTS, HYBRID_KEYS, MAILBOX_ADDRS, MAILBOXES, MESSAGES, META,
    META_DEDUP_FORGOTTEN, META_EXPIRED, META_NEXT_MAILBOX, META_WAL_APPLIED, PRESENCE, cost,
};
use crate::store::{Enqueued, Outcome, Prepared, Shared};
use crate::usage::{Totals, Usage, UsageChange};
use crate::wal::{self, Wal};
use crate::{QuotaScope, StoreConfig, StoreError};

pub(crate) enum WriteOp {
    Enqueue(Prepared),
    EnqueueBatch(Vec<Prepared>),
    Ack {
        mailbox: MailboxAddr,
        seq_up_to: u64,
    },
    PutHybridKey {
        identity: IdentityKey,
        key: HybridPublicKey,
    },
    Sweep {
        now_ms: u64,
    },
    CustodyPut {
        record: BundleRecord,
        deliver_local: bool,
        now_ms: u64,
    },
    CustodyDelete(Vec<BundleDigest>),
    CustodyDeliver {
        digests: Vec<BundleDigest>,
        now_ms: u64,
    },
    CustodyDeliverRecipient {
        recipient: IdentityKey,
        now_ms: u64,
    },
    Evict {
        recipient: IdentityKey,
        now_ms: u64,
        hop_limit: u8,
    },
    PutPresence {
        user: IdentityKey,
        timestamp_ms: u64,
        claim: Vec<u8>,
        hybrid: HybridPublicKey,
    },
    PutMeta {
        key: &'static str,
        value: u64,
    },
    Shutdown,
}

impl WriteOp {
    fn payload_bytes(&self) -> usize {
        match self {
            WriteOp::Enqueue(m) => m.payload_len,
            WriteOp::EnqueueBatch(v) => v.iter().map(|m| m.payload_len).sum(),
            WriteOp::CustodyPut { record, .. } => record.payload.len(),
            _ => 0,
        }
    }
}

pub(crate) struct Job {
    pub(crate) op: WriteOp,
    pub(crate) reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// Why an operation did not apply.
enum ApplyError {
    /// Refused before anything of it was written; the rest of the batch proceeds.
    Refused(StoreError),
    /// The transaction is unusable; the whole batch fails.
    Fatal(StoreError),
}

impl<E: Into<StoreError>> From<E> for ApplyError {
    fn from(e: E) -> Self {
        ApplyError::Fatal(e.into())
    }
}

/// A batch the writer applied and logged, waiting for the log's fsync to be answered.
struct SyncJob {
    epoch: u64,
    gen_: u64,
    snapshot: Option<Arc<ReadTransaction>>,
    replies: Vec<(Reply, Result<Outcome, StoreError>)>,
}

type Reply = oneshot::Sender<Result<Outcome, StoreError>>;

/// The write-ahead log and its syncer thread.
struct Log {
    wal: Wal,
    tx: Option<Sender<SyncJob>>,
    syncer: Option<JoinHandle<()>>,
}

impl Drop for Log {
    fn drop(&mut self) {
        // The syncer answers what it still holds, then ends.
        self.tx.take();
        if let Some(h) = self.syncer.take() {
            let _ = h.join();
        }
    }
}

impl Log {
    fn start(shared: &Arc<Shared>, pos: u64) -> Result<Self, StoreError> {
        let path = wal::path_for(&shared.path);
        let io = |e| StoreError::from_io(&path, e);
        // Room past the checkpoint size: on a full disk, acknowledgements go on being logged
        // there (some thousands of them) between the commits that free space.
        let spare = (shared.config.checkpoint_bytes / 4).max(256 * 1024);
        let prealloc = shared.config.checkpoint_bytes.saturating_add(spare);
        let wal = Wal::open(&path, prealloc, pos).map_err(io)?;
        let file = wal.sync_handle().map_err(io)?;
        let (tx, rx) = mpsc::channel();
        let syncer_shared = Arc::clone(shared);
        let syncer = std::thread::Builder::new()
            .name("ferry-store-sync".into())
            .spawn(move || sync_loop(&syncer_shared, &file, &rx))
            .map_err(io)?;
        Ok(Self {
            wal,
            tx: Some(tx),
            syncer: Some(syncer),
        })
    }
}

/// The syncer: one `fdatasync` for every batch logged since the last, then their answers.
fn sync_loop(shared: &Shared, file: &File, rx: &Receiver<SyncJob>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(job) = rx.try_recv() {
            jobs.push(job);
        }
        // After a failed fsync the kernel may have dropped the pages it could not write, so a
        // later fsync that succeeds proves nothing about them: fail everything until the
        // writer has reopened the database and replayed the log.
        let synced = if shared.wal_broken.load(Ordering::Acquire) {
            Err(StoreError::Unavailable)
        } else {
            shared.io.syncs.fetch_add(1, Ordering::Relaxed);
            file.sync_data()
                .map_err(|e| StoreError::from_io(&wal::path_for(&shared.path), e))
        };
        match synced {
            Ok(()) => {
                if let Some(last) = jobs.iter().rev().find(|j| j.snapshot.is_some()) {
                    shared.publish(last.epoch, last.gen_, last.snapshot.clone());
                }
                for job in jobs {
                    for (reply, outcome) in job.replies {
                        let _ = reply.send(outcome);
                    }
                }
            }
            Err(e) => {
                if !shared.wal_broken.swap(true, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "syncing the write-ahead log failed; its batches are refused until the database is reopened");
                }
                shared
                    .counters
                    .failed_commits
                    .fetch_add(jobs.len() as u64, Ordering::Relaxed);
                for job in jobs {
                    for (reply, _) in job.replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// The writer's own state across batches.
struct Writer {
    log: Option<Log>,
    /// Generation of the next batch; every batch, logged or durable, takes one.
    next_gen: u64,
    /// Room kept on the disk for a commit that frees space on a full disk.
    reserve: Reserve,
    /// While the disk is full, how long from one attempt to commit what frees space (and
    /// take writes again) to the next; doubles (to [`RECOVER_MAX`]) while attempts fail. The
    /// disk's free space is looked at every [`RECOVER_POLL`] meanwhile, and an attempt made
    /// at once when the reserve fits again.
    recover_wait: Duration,
    next_attempt: Instant,
    /// When the disk's free space was last looked at.
    last_poll: Instant,
}

/// The first wait before a full disk is tried again.
const RECOVER_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between attempts on a full disk.
const RECOVER_MAX: Duration = Duration::from_secs(30);
/// How often a full disk's free space is looked at.
const RECOVER_POLL: Duration = Duration::from_millis(250);

/// Whether an operation frees space (or takes none): these go on while the disk is full.
fn frees_space(op: &WriteOp) -> bool {
    matches!(
        op,
        WriteOp::Ack { .. } | WriteOp::Sweep { .. } | WriteOp::CustodyDelete(_) | WriteOp::Shutdown
    )
}

/// What operations that take space are answered while the disk is full.
fn disk_full_error() -> StoreError {
    StoreError::DiskFull(Arc::new(std::io::Error::new(
        std::io::ErrorKind::StorageFull,
        "the disk is full; reads, acknowledgements and expiry go on, and writes resume once it \
         has room again",
    )))
}

impl Writer {
    /// Makes the reserve if it is missing. On a full disk the store goes into its disk-full
    /// state; when the reserve can be made, it leaves it. Returns whether the reserve is there.
    fn keep_reserve(&mut self, shared: &Shared) -> bool {
        if self.reserve.present() {
            if shared.disk_full.swap(false, Ordering::AcqRel) {
                tracing::info!("the disk has room again; taking new messages");
            }
            return true;
        }
        match self.reserve.make() {
            Ok(()) => {
                if shared.disk_full.swap(false, Ordering::AcqRel) {
                    tracing::info!("the disk has room again; taking new messages");
                }
                self.recover_wait = RECOVER_FIRST;
                true
            }
            Err(e) => {
                self.disk_is_full(shared, &e);
                false
            }
        }
    }

    fn disk_is_full(&mut self, shared: &Shared, e: &dyn std::fmt::Display) {
        if !shared.disk_full.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %e, "the disk is full: new messages are refused; reads, acknowledgements and expiry go on");
            self.recover_wait = RECOVER_FIRST;
            self.next_attempt = Instant::now() + RECOVER_FIRST;
        }
    }
}

/// Opens the write-ahead log (unless it is off and holds nothing to keep) and starts the
/// writer thread. `last_gen` is the last log generation the database holds; `log_end` where
/// the records end that a replay kept in the log (0: the log starts over).
pub(crate) fn start(
    shared: &Arc<Shared>,
    rx: Receiver<Job>,
    last_gen: u64,
    log_end: u64,
) -> Result<JoinHandle<()>, StoreError> {
    let log = if shared.config.wal || log_end > 0 {
        Some(Log::start(shared, log_end)?)
    } else {
        None
    };
    let mut w = Writer {
        log,
        next_gen: last_gen + 1,
        reserve: Reserve::new(&shared.path, shared.config.reserve_bytes),
        recover_wait: RECOVER_FIRST,
        next_attempt: Instant::now(),
        last_poll: Instant::now(),
    };
    // On a full disk the store opens in its disk-full state: reads and acknowledgements work,
    // new messages wait for room.
    w.keep_reserve(shared);
    let shared = Arc::clone(shared);
    let path = shared.path.clone();
    std::thread::Builder::new()
        .name("ferry-store-writer".into())
        .spawn(move || run(&shared, &rx, w))
        .map_err(|e| StoreError::from_io(&path, e))
}

/// Messages are flowing while an enqueue was taken into a batch this recently; only then does
/// a batch of acknowledgements alone wait up to [`StoreConfig::ack_linger`] for one more
/// operation, to share its commit and fsync. One-to-one, a consumer's ack and its producer's
/// next batch reach the writer within tens of microseconds of each other, and the ack would
/// otherwise cost that batch a commit to wait behind and the disk an fsync of its own. A
/// consumer draining a backlog with no producer never waits.
const FLOWING: Duration = Duration::from_millis(5);

/// Takes what is queued into `batch`, within the batch limits; returns its payload bytes.
fn fill(rx: &Receiver<Job>, cfg: &StoreConfig, batch: &mut Vec<Job>, mut bytes: usize) -> usize {
    while batch.len() < cfg.max_batch_ops && bytes < cfg.max_batch_bytes {
        match rx.try_recv() {
            Ok(job) => {
                bytes += job.op.payload_bytes();
                batch.push(job);
            }
            Err(_) => break,
        }
    }
    bytes
}

fn is_enqueue(op: &WriteOp) -> bool {
    matches!(op, WriteOp::Enqueue(_) | WriteOp::EnqueueBatch(_))
}

fn run(shared: &Arc<Shared>, rx: &Receiver<Job>, mut w: Writer) {
    let cfg = &shared.config;
    let mut batch: Vec<Job> = Vec::with_capacity(cfg.max_batch_ops);
    let mut stopping = false;
    // Doubles (to a minute, or checkpoint_idle if longer) while idle checkpoints fail, on a
    // full disk say.
    let mut idle_wait = cfg.checkpoint_idle;
    let mut last_enqueue: Option<Instant> = None;
    while !stopping {
        let logged_bytes = w.log.as_ref().map_or(0, |l| l.wal.len());
        if shared.disk_full.load(Ordering::Acquire) {
            // Operations as they come (those that take space are refused at once), and every
            // RECOVER_POLL, however busy, a look at whether the disk has room again.
            let wait = RECOVER_POLL.saturating_sub(w.last_poll.elapsed());
            match rx.recv_timeout(wait) {
                Ok(job) => {
                    batch.push(job);
                    let bytes = batch.iter().map(|j| j.op.payload_bytes()).sum();
                    fill(rx, cfg, &mut batch, bytes);
                    shared.queued.fetch_sub(batch.len(), Ordering::AcqRel);
                    if let Some(pos) = batch.iter().position(|j| matches!(j.op, WriteOp::Shutdown))
                    {
                        stopping = true;
                        for late in batch.drain(pos + 1..) {
                            let _ = late.reply.send(Err(StoreError::Closed));
                        }
                    }
                    commit_batch(shared, &mut batch, &mut w);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if !stopping && w.last_poll.elapsed() >= RECOVER_POLL {
                w.last_poll = Instant::now();
                if w.reserve.fits() || w.last_poll >= w.next_attempt {
                    recover(shared, &mut batch, &mut w);
                }
            }
            continue;
        }
        let first = if logged_bytes > 0 {
            match rx.recv_timeout(idle_wait) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    // Idle with a log: commit the database so the log can go.
                    idle_wait = if commit_batch(shared, &mut batch, &mut w) {
                        cfg.checkpoint_idle
                    } else {
                        idle_wait
                            .saturating_mul(2)
                            .min(Duration::from_secs(60))
                            .max(cfg.checkpoint_idle)
                    };
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            let Ok(first) = rx.recv() else { break };
            first
        };
        let bytes = first.op.payload_bytes();
        batch.push(first);
        let bytes = fill(rx, cfg, &mut batch, bytes);
        if !cfg.ack_linger.is_zero()
            && last_enqueue.is_some_and(|t| t.elapsed() < FLOWING)
            && batch.iter().all(|j| matches!(j.op, WriteOp::Ack { .. }))
            && let Ok(job) = rx.recv_timeout(cfg.ack_linger)
        {
            let bytes = bytes + job.op.payload_bytes();
            batch.push(job);
            fill(rx, cfg, &mut batch, bytes);
        }
        if batch.iter().any(|j| is_enqueue(&j.op)) {
            last_enqueue = Some(Instant::now());
        }
        shared.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        // Everything queued before a shutdown is still committed; nothing after it is taken.
        if let Some(pos) = batch.iter().position(|j| matches!(j.op, WriteOp::Shutdown)) {
            stopping = true;
            for late in batch.drain(pos + 1..) {
                let _ = late.reply.send(Err(StoreError::Closed));
            }
        }
        if commit_batch(shared, &mut batch, &mut w) {
            idle_wait = cfg.checkpoint_idle;
        }
    }
    // Operations queued after shutdown are refused by the dropped receiver; dropping the log
    // lets the syncer answer what it holds.
}

/// On a full disk: gives the reserve up and commits, so that what the log holds becomes
/// durable, the pages acknowledgements and expiry freed become free in the file (redb trims
/// free pages at its end), and the reserve can be made again, which ends the disk-full state.
fn recover(shared: &Arc<Shared>, batch: &mut Vec<Job>, w: &mut Writer) {
    let released = w.reserve.release();
    let committed = commit_batch(shared, batch, w);
    let mut room = committed && w.keep_reserve(shared);
    if committed && !room {
        // What acknowledgements and expiry freed is free inside the file, which keeps its
        // size: compacting it gives that space back to the disk.
        let compacted = shared.compact();
        tracing::debug!(?compacted, "disk full: compacted the database");
        room = matches!(compacted, Ok(true)) && w.keep_reserve(shared);
    }
    tracing::debug!(
        released,
        committed,
        room,
        "disk full: committed what frees space"
    );
    if !room {
        w.recover_wait = w.recover_wait.saturating_mul(2).min(RECOVER_MAX);
        w.next_attempt = Instant::now() + w.recover_wait;
    }
}

/// Reopens the database (replaying the log), after an IO failure or a failed log fsync.
fn reopen(shared: &Shared, w: &mut Writer) -> Result<Arc<Database>, StoreError> {
    let (db, last_gen, log_end) = shared.reopen()?;
    w.next_gen = w.next_gen.max(last_gen + 1);
    if let Some(log) = &mut w.log {
        log.wal.set_pos(log_end);
    }
    shared.wal_broken.store(false, Ordering::Release);
    Ok(db)
}

/// Applies, commits and answers (or hands to the syncer) a batch; returns whether it committed.
/// While the disk is full, operations that take space are answered at once and only the
/// rest is committed (a durable commit first gives the reserve up, to have room).
fn commit_batch(shared: &Arc<Shared>, batch: &mut Vec<Job>, w: &mut Writer) -> bool {
    let disk_full = shared.disk_full.load(Ordering::Acquire);
    if disk_full && !batch.is_empty() {
        let (go_on, refused): (Vec<Job>, Vec<Job>) =
            batch.drain(..).partition(|j| frees_space(&j.op));
        for job in refused {
            let _ = job.reply.send(Err(disk_full_error()));
        }
        *batch = go_on;
        if batch.is_empty() {
            return true;
        }
    }
    let started = Instant::now();
    let ops = batch.len();
    let db = match shared.current_db() {
        Some(_) if shared.wal_broken.load(Ordering::Acquire) => reopen(shared, w),
        Some(db) => Ok(db),
        None => reopen(shared, w),
    };
    let gen_ = w.next_gen;
    w.next_gen += 1;
    let cfg = &shared.config;
    // A batch goes to the log while the log is below `checkpoint_bytes`; a batch of acks
    // only, also beyond that while the log holds records and it fits in the file's space:
    // after a checkpoint failed on a full disk, acknowledging is what frees room for the next.
    // (The record itself is written once the batch is applied: it marks the refused enqueues.)
    let loggable = !batch.is_empty() && batch.iter().all(|j| wal::loggable(&j.op));
    let logged = match &w.log {
        Some(log) if loggable => {
            (cfg.wal && log.wal.len() < cfg.checkpoint_bytes)
                || (log.wal.len() > 0
                    && batch.iter().all(|j| matches!(j.op, WriteOp::Ack { .. }))
                    && log.wal.fits(
                        wal::encode(
                            gen_,
                            Some(&wal::Limits::of(cfg)),
                            batch.iter().map(|j| (&j.op, true)),
                        )
                        .len(),
                    ))
        }
        _ => false,
    };
    let durability = if logged {
        Durability::None
    } else {
        if disk_full {
            w.reserve.release();
        }
        Durability::Immediate
    };
    // The generation the database holds the log up to: written by every logged batch (redb
    // may persist a non-durable commit), and by a checkpoint while the log holds records. A
    // checkpoint after an empty log leaves it: every record still in the file is older, and
    // an idle node's commits stay a header write instead of a meta page and its tree.
    let record_gen = w
        .log
        .as_ref()
        .filter(|l| logged || l.wal.len() > 0)
        .map(|_| gen_);
    let epoch = shared.epoch.load(Ordering::Acquire);
    // Whether redb refuses the handle now (a failed commit); a failure before the commit
    // (writing the log record) leaves it usable.
    let mut poisoned = true;
    let result = db.and_then(|db| {
        let to_log = match &mut w.log {
            Some(log) if logged => Some((&mut log.wal, gen_)),
            _ => None,
        };
        let outcomes =
            apply_all(&db, shared, batch, durability, record_gen, to_log).map_err(|f| {
                poisoned = f.poisoned;
                f.error
            })?;
        if let Some(log) = &mut w.log
            && !logged
        {
            log.wal.rewind();
        }
        Ok((outcomes, db.begin_read().ok().map(Arc::new)))
    });
    let ok = result.is_ok();
    let elapsed = started.elapsed();
    // Counters and the observer (metrics) see a commit before anyone is answered, so a
    // client that got its acknowledgement never reads figures that do not include it yet.
    if let Some(obs) = shared.observer.as_ref().filter(|_| ops > 0) {
        obs.committed(ops, elapsed, ok);
    }
    let c = &shared.counters;
    match result {
        Ok((outcomes, snapshot)) => {
            c.commits.fetch_add(1, Ordering::Relaxed);
            if !logged {
                c.checkpoints.fetch_add(1, Ordering::Relaxed);
                // A durable commit on a full disk freed what it could: room again?
                if disk_full {
                    w.keep_reserve(shared);
                }
            }
            c.ops.fetch_add(ops as u64, Ordering::Relaxed);
            c.max_batch.fetch_max(ops as u64, Ordering::Relaxed);
            c.commit_nanos.fetch_add(
                u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            let replies: Vec<_> = batch.drain(..).map(|j| j.reply).zip(outcomes).collect();
            match w.log.as_ref().and_then(|l| l.tx.as_ref()) {
                Some(tx) if logged => {
                    let job = SyncJob {
                        epoch,
                        gen_,
                        snapshot,
                        replies,
                    };
                    if let Err(mpsc::SendError(job)) = tx.send(job) {
                        for (reply, _) in job.replies {
                            let _ = reply.send(Err(StoreError::Closed));
                        }
                    }
                }
                _ => {
                    shared.publish(epoch, gen_, snapshot);
                    for (reply, outcome) in replies {
                        let _ = reply.send(outcome);
                    }
                }
            }
            true
        }
        Err(e @ StoreError::Corrupt { .. }) if batch.len() > 1 => {
            // A damaged row fails the operation that reads it, and with it the transaction.
            // Nothing of the batch was stored; the operations that shared it had nothing to do
            // with the row, so each is committed again on its own: only the ones that meet
            // damage fail. Costs a commit per operation, on a damaged file only.
            c.failed_commits.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, ops, "group commit failed on a damaged row; committing its operations one at a time");
            let mut all_ok = true;
            for job in std::mem::take(batch) {
                all_ok &= commit_batch(shared, &mut vec![job], w);
            }
            all_ok
        }
        Err(e) => {
            c.failed_commits.fetch_add(1, Ordering::Relaxed);
            if matches!(e, StoreError::DiskFull(_)) {
                tracing::debug!(error = %e, ops, "group commit failed on a full disk");
                w.disk_is_full(shared, &e);
            } else {
                tracing::warn!(error = %e, ops, "group commit failed; nothing of it was stored");
            }
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(e.clone()));
            }
            // redb refuses all further use of a handle after an IO error in a commit; open
            // the file again so the node recovers once the cause (a full disk, say) is gone.
            // That rolls the database back to its last durable commit and replays the log.
            if poisoned
                && matches!(
                    e,
                    StoreError::DiskFull(_) | StoreError::Unavailable | StoreError::Db(_)
                )
                && let Err(re) = reopen(shared, w)
            {
                tracing::warn!(error = %re, "reopening the database failed; will retry");
            }
            false
        }
    }
}

type Outcomes = Vec<Result<Outcome, StoreError>>;

/// Applies and commits a batch; the in-memory usage follows only once the commit succeeded.
/// With `record_gen`, the transaction records that it holds the log up to that generation.
/// With `log`, the batch's record (of that generation) is written to the log before the commit,
/// and taken back if the commit fails: a batch is in the log only if it is in the database.
/// Why a batch failed, and whether the database handle is still usable.
struct Failure {
    error: StoreError,
    /// A commit failed (redb refuses the handle from now on), or something before it.
    poisoned: bool,
}

impl<E: Into<StoreError>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            error: e.into(),
            poisoned: true,
        }
    }
}

fn apply_all(
    db: &Database,
    shared: &Shared,
    batch: &[Job],
    durability: Durability,
    record_gen: Option<u64>,
    log: Option<(&mut Wal, u64)>,
) -> Result<Outcomes, Failure> {
    let cfg = &shared.config;
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let change = {
        let mut t = Tables::open(&txn, &shared.usage)?;
        for job in batch {
            match apply(&mut t, cfg, &job.op) {
                Ok(o) => outcomes.push(Ok(o)),
                Err(ApplyError::Refused(e)) => outcomes.push(Err(e)),
                Err(ApplyError::Fatal(e)) => return Err(e.into()),
            }
        }
        if let Some(g) = record_gen {
            t.meta_table.insert(META_WAL_APPLIED, g)?;
        }
        t.flush()?
    };
    let wal_err = |e| StoreError::from_io(&wal::path_for(&shared.path), e);
    match log {
        Some((wal, gen_)) => {
            let record = wal::encode(
                gen_,
                Some(&wal::Limits::of(cfg)),
                batch.iter().zip(&outcomes).map(|(j, o)| (&j.op, o.is_ok())),
            );
            let at = wal.len();
            // The transaction is dropped (aborted) on failure: the handle stays usable.
            wal.append(&record).map_err(|e| Failure {
                error: wal_err(e),
                poisoned: false,
            })?;
            if let Err(e) = txn.commit() {
                if let Err(re) = wal.retract(at) {
                    tracing::warn!(error = %re, "taking a record back from the write-ahead log failed; a replay may store the batch that failed");
                }
                return Err(e.into());
            }
            shared
                .io
                .bytes_written
                .fetch_add(record.len() as u64, Ordering::Relaxed);
        }
        None => txn.commit()?,
    }
    shared
        .usage
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .apply(change);
    Ok(outcomes)
}

/// The last log generation a database holds (0 for a new file or one from before the log).
pub(crate) fn applied_gen(db: &Database) -> Result<u64, StoreError> {
    let rtx = db.begin_read()?;
    let meta = rtx.open_table(META)?;
    Ok(meta.get(META_WAL_APPLIED)?.map(|v| v.value()).unwrap_or(0))
}

/// Applies log records (those after the generation the database holds, see [`wal::parse`]),
/// each as its own batch in the state the one before left, in one transaction with
/// `durability`, and records the last one's generation.
pub(crate) fn replay(
    db: &Database,
    cfg: &StoreConfig,
    usage: &RwLock<Usage>,
    records: &wal::Records,
    durability: Durability,
) -> Result<(), StoreError> {
    let Some(last) = records.last().map(|r| r.gen_) else {
        return Ok(());
    };
    // Every operation is applied as it first was, under the limits it was first applied under
    // (those of the moment for a record from before the log carried them), so that it has the
    // outcome it was answered with: a refused enqueue is not stored by raised limits, nor do
    // the seqs after it move. An enqueue answered as stored that the limits refuse all the same
    // (an old record, and limits lowered before the restart) is applied again without quota
    // checks: its sender was told it is safe.
    let unlimited = StoreConfig {
        max_total_bytes: u64::MAX,
        max_recipient_bytes: u64::MAX,
        max_recipient_messages: u64::MAX,
        ..cfg.clone()
    };
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    let mut ops = 0usize;
    for record in records {
        let then = record.limits.map(|l| l.applied_to(cfg));
        let limits = then.as_ref().unwrap_or(cfg);
        let change = {
            let mut t = Tables::open(&txn, usage)?;
            for logged in &record.ops {
                let outcome = match apply(&mut t, limits, &logged.op) {
                    Err(ApplyError::Refused(_)) if logged.stored => {
                        apply(&mut t, &unlimited, &logged.op)
                    }
                    outcome => outcome,
                };
                match outcome {
                    Ok(_) | Err(ApplyError::Refused(_)) => {}
                    Err(ApplyError::Fatal(e)) => return Err(e),
                }
                ops += 1;
            }
            t.flush()?
        };
        usage
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(change);
    }
    txn.open_table(META)?.insert(META_WAL_APPLIED, last)?;
    txn.commit()?;
    tracing::info!(
        records = records.len(),
        ops,
        through_gen = last,
        durable = matches!(durability, Durability::Immediate),
        "replayed the write-ahead log"
    );
    Ok(())
}

fn apply(t: &mut Tables<'_>, cfg: &StoreConfig, op: &WriteOp) -> Result<Outcome, ApplyError> {
    match op {
        WriteOp::Enqueue(m) => {
            let mut v = t.enqueue_all(cfg, std::slice::from_ref(m))?;
            match v.pop() {
                Some(e) => Ok(Outcome::Enqueued(e)),
                None => Err(ApplyError::Fatal(StoreError::Closed)),
            }
        }
        WriteOp::EnqueueBatch(ms) => Ok(Outcome::Batch(t.enqueue_all(cfg, ms)?)),
        WriteOp::Ack { mailbox, seq_up_to } => Ok(Outcome::Acked(t.ack(mailbox, *seq_up_to)?)),
        WriteOp::PutHybridKey { identity, key } => {
            t.hybrid()?
                .insert(identity.as_bytes(), key.as_bytes().as_slice())?;
            t.fingerprints()?
                .insert(identity.fingerprint().as_bytes(), identity.as_bytes())?;
            Ok(Outcome::Done)
        }
        WriteOp::Sweep { now_ms } => Ok(Outcome::Swept(t.sweep(*now_ms, cfg.sweep_batch)?)),
        WriteOp::CustodyPut {
            record,
            deliver_local,
            now_ms,
        } => Ok(Outcome::Custody(t.custody_put(
            cfg,
            record,
            *deliver_local,
            *now_ms,
        )?)),
        WriteOp::CustodyDelete(digests) => {
            let mut n = 0;
            for d in digests {
                if t.custody_remove(d)?.is_some() {
                    n += 1;
                }
            }
            Ok(Outcome::Count(n))
        }
        WriteOp::CustodyDeliver { digests, now_ms } => Ok(Outcome::Delivered(
            t.custody_deliver(cfg, digests, *now_ms)?,
        )),
        WriteOp::CustodyDeliverRecipient { recipient, now_ms } => {
            let digests = t.custody_of(recipient)?;
            Ok(Outcome::Delivered(
                t.custody_deliver(cfg, &digests, *now_ms)?,
            ))
        }
        WriteOp::Evict {
            recipient,
            now_ms,
            hop_limit,
        } => Ok(Outcome::Evicted(t.evict(recipient, *now_ms, *hop_limit)?)),
        WriteOp::PutPresence {
            user,
            timestamp_ms,
            claim,
            hybrid,
        } => {
            let newer = t
                .presence()?
                .get(user.as_bytes())?
                .map(|v| {
                    v.value()
                        .first_chunk::<8>()
                        .map(|b| u64::from_be_bytes(*b))
                        .unwrap_or(0)
                })
                .is_none_or(|old| old < *timestamp_ms);
            if newer {
                let mut v = Vec::with_capacity(8 + claim.len());
                v.extend_from_slice(&timestamp_ms.to_be_bytes());
                v.extend_from_slice(claim);
                t.presence()?.insert(user.as_bytes(), v.as_slice())?;
                t.hybrid()?
                    .insert(user.as_bytes(), hybrid.as_bytes().as_slice())?;
                t.fingerprints()?
                    .insert(user.fingerprint().as_bytes(), user.as_bytes())?;
            }
            Ok(Outcome::Count(u64::from(newer)))
        }
        WriteOp::PutMeta { key, value } => {
            t.meta_table.insert(*key, *value)?;
            Ok(Outcome::Done)
        }
        WriteOp::Shutdown => Ok(Outcome::Done),
    }
}

/// Node-wide counters, read at the start of a transaction. `next_mailbox` and `expired` are
/// rows of `meta`, written at its end when `dirty`; `totals` are in-memory [`Usage`],
/// changed once the transaction has committed.
struct Meta {
    totals: Totals,
    next_mailbox: u64,
    expired: u64,
    dedup_forgotten: u64,
    dirty: bool,
}

/// A row cached for the length of one transaction and written once at its end.
struct Cached<T> {
    value: T,
    dirty: bool,
}

/// Mailboxes with a run of their own open in one transaction at most; past that, the open
/// runs are written out (a batch to this many recipients gains nothing from runs anyway).
const MAX_OPEN_RUNS: usize = 64;

/// `custody_by_recipient` in a write transaction.
type ByRecipient<'t> = Table<'t, (&'static [u8; 32], &'static [u8; 16]), ()>;

/// The table in `slot`, opened in `txn` the first time it is asked for.
fn on_first_use<'s, 't, K: Key + 'static, V: Value + 'static>(
    txn: &'t WriteTransaction,
    slot: &'s mut Option<Table<'t, K, V>>,
    def: TableDefinition<'static, K, V>,
) -> Result<&'s mut Table<'t, K, V>, StoreError> {
    Ok(match slot {
        Some(t) => t,
        None => slot.insert(txn.open_table(def)?),
    })
}

/// The seq after a mailbox's last one. Only a damaged row can have used them all up; that
/// fails the batch instead of wrapping to 0 or panicking.
fn next_seq(last_seq: u64) -> Result<u64, StoreError> {
    last_seq.checked_add(1).ok_or(StoreError::Corrupt {
        table: "mailboxes",
        reason: "a mailbox's last seq is the largest there is",
    })
}

/// A message to write: mailbox id, seq, record.
type NewRow<'m> = (u64, u64, &'m [u8]);

pub(crate) struct Tables<'t> {
    meta_table: Table<'t, &'static str, u64>,
    meta: Meta,
    /// Mailbox rows (id, last seq) touched in this transaction, by encoded address. A batch
    /// mostly writes to a few mailboxes; this turns a get and a put per message into one
    /// get and one put per mailbox.
    mailbox_rows: HashMap<Vec<u8>, Cached<(u64, u64)>>,
    /// Recipient usage (messages, bytes) touched in this transaction.
    usage_rows: HashMap<IdentityKey, Cached<(u64, u64)>>,
    /// Usage as of the last commit, where recipients not yet touched are looked up.
    committed_usage: &'t RwLock<Usage>,
    /// Recipient of each mailbox id looked up in this transaction (read-only rows).
    recipient_of: HashMap<u64, IdentityKey>,
    mailboxes: Table<'t, &'static [u8], (u64, u64)>,
    addrs: Table<'t, u64, &'static [u8]>,
    messages: Table<'t, (u64, u64), &'static [u8]>,
    dedup: Table<'t, (&'static [u8; 16], u64), (u64, u64)>,
    /// Runs of messages, see [`ExpiryRun`]. Whatever reads it first writes out `runs`
    /// ([`Tables::write_runs`]).
    expiry: Table<'t, (u64, u64, u64), &'static [u8]>,
    /// The runs of the messages stored in this transaction, at most one per mailbox, not yet
    /// in `expiry`: a message that continues one is added to it in memory.
    runs: Vec<ExpiryRun>,
    /// Tables that enqueues and acks never touch are opened on first use: redb checks each
    /// table's types when it is opened and looks its root up again at commit, which for six
    /// unused tables was about a tenth of a commit of 64 messages.
    txn: &'t WriteTransaction,
    hybrid: Option<Table<'t, &'static [u8; 32], &'static [u8]>>,
    fingerprints: Option<Table<'t, &'static [u8; 32], &'static [u8; 32]>>,
    custody: Option<Table<'t, &'static [u8; 16], &'static [u8]>>,
    custody_by_recipient: Option<ByRecipient<'t>>,
    custody_expiry: Option<Table<'t, (u64, &'static [u8; 16]), ()>>,
    presence: Option<Table<'t, &'static [u8; 32], &'static [u8]>>,
    swept_this_txn: bool,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction, usage: &'t RwLock<Usage>) -> Result<Self, StoreError> {
        let meta_table = txn.open_table(META)?;
        let get = |k: &str| -> Result<u64, StoreError> {
            Ok(meta_table.get(k)?.map(|v| v.value()).unwrap_or(0))
        };
        let meta = {
            let totals = usage.read().unwrap_or_else(PoisonError::into_inner).totals;
            Meta {
                totals,
                next_mailbox: get(META_NEXT_MAILBOX)?.max(1),
                expired: get(META_EXPIRED)?,
                dedup_forgotten: get(META_DEDUP_FORGOTTEN)?,
                dirty: false,
            }
        };
        Ok(Self {
            meta_table,
            meta,
            mailboxes: txn.open_table(MAILBOXES)?,
            addrs: txn.open_table(MAILBOX_ADDRS)?,
            messages: txn.open_table(MESSAGES)?,
            dedup: txn.open_table(DEDUP)?,
            expiry: txn.open_table(EXPIRY)?,
            runs: Vec::new(),
            txn,
            hybrid: None,
            fingerprints: None,
            custody: None,
            custody_by_recipient: None,
            custody_expiry: None,
            presence: None,
            swept_this_txn: false,
            mailbox_rows: HashMap::new(),
            usage_rows: HashMap::new(),
            committed_usage: usage,
            recipient_of: HashMap::new(),
        })
    }

    fn hybrid(&mut self) -> Result<&mut Table<'t, &'static [u8; 32], &'static [u8]>, StoreError> {
        on_first_use(self.txn, &mut self.hybrid, HYBRID_KEYS)
    }

    fn fingerprints(
        &mut self,
    ) -> Result<&mut Table<'t, &'static [u8; 32], &'static [u8; 32]>, StoreError> {
        on_first_use(self.txn, &mut self.fingerprints, FINGERPRINTS)
    }

    fn custody(&mut self) -> Result<&mut Table<'t, &'static [u8; 16], &'static [u8]>, StoreError> {
        on_first_use(self.txn, &mut self.custody, CUSTODY)
    }

    fn custody_by_recipient(&mut self) -> Result<&mut ByRecipient<'t>, StoreError> {
        on_first_use(
            self.txn,
            &mut self.custody_by_recipient,
            CUSTODY_BY_RECIPIENT,
        )
    }

    fn custody_expiry(
        &mut self,
    ) -> Result<&mut Table<'t, (u64, &'static [u8; 16]), ()>, StoreError> {
        on_first_use(self.txn, &mut self.custody_expiry, CUSTODY_EXPIRY)
    }

    fn presence(&mut self) -> Result<&mut Table<'t, &'static [u8; 32], &'static [u8]>, StoreError> {
        on_first_use(self.txn, &mut self.presence, PRESENCE)
    }

    /// Writes the rows cached during the transaction; returns the usage it leaves, for
    /// [`Usage::apply`] once it has committed.
    fn flush(&mut self) -> Result<UsageChange, StoreError> {
        self.write_runs()?;
        for (addr, row) in self.mailbox_rows.drain() {
            if row.dirty {
                self.mailboxes.insert(addr.as_slice(), row.value)?;
            }
        }
        if self.meta.dirty {
            self.meta_table
                .insert(META_NEXT_MAILBOX, self.meta.next_mailbox)?;
            self.meta_table.insert(META_EXPIRED, self.meta.expired)?;
            self.meta_table
                .insert(META_DEDUP_FORGOTTEN, self.meta.dedup_forgotten)?;
        }
        Ok(UsageChange {
            totals: self.meta.totals,
            recipients: self
                .usage_rows
                .drain()
                .filter(|(_, row)| row.dirty)
                .map(|(r, row)| (r, row.value))
                .collect(),
        })
    }

    /// The (id, last seq) row of a mailbox, through the transaction's cache.
    fn mailbox(&mut self, addr_bytes: &[u8]) -> Result<Option<(u64, u64)>, StoreError> {
        if let Some(row) = self.mailbox_rows.get(addr_bytes) {
            return Ok(Some(row.value));
        }
        let found = self.mailboxes.get(addr_bytes)?.map(|v| v.value());
        if let Some(value) = found {
            self.mailbox_rows.insert(
                addr_bytes.to_vec(),
                Cached {
                    value,
                    dirty: false,
                },
            );
        }
        Ok(found)
    }

    /// The (id, last seq) of the mailbox at `addr_bytes`, which is given an id first if it
    /// has none yet.
    fn mailbox_or_new(
        &mut self,
        addr_bytes: &[u8],
        recipient: &IdentityKey,
    ) -> Result<(u64, u64), StoreError> {
        if let Some(v) = self.mailbox(addr_bytes)? {
            return Ok(v);
        }
        let id = self.meta.next_mailbox;
        self.meta.next_mailbox += 1;
        self.meta.dirty = true;
        self.addrs.insert(id, addr_bytes)?;
        self.recipient_of.insert(id, *recipient);
        Ok((id, 0))
    }

    fn set_mailbox(&mut self, addr_bytes: &[u8], value: (u64, u64)) {
        match self.mailbox_rows.get_mut(addr_bytes) {
            Some(row) => {
                row.value = value;
                row.dirty = true;
            }
            None => {
                self.mailbox_rows
                    .insert(addr_bytes.to_vec(), Cached { value, dirty: true });
            }
        }
    }

    /// A recipient's (messages, bytes), through the transaction's cache.
    fn usage(&mut self, recipient: &IdentityKey) -> Result<(u64, u64), StoreError> {
        if let Some(row) = self.usage_rows.get(recipient) {
            return Ok(row.value);
        }
        let value = self
            .committed_usage
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .of(recipient);
        self.usage_rows.insert(
            *recipient,
            Cached {
                value,
                dirty: false,
            },
        );
        Ok(value)
    }

    fn set_usage(&mut self, recipient: IdentityKey, value: (u64, u64)) {
        self.usage_rows
            .insert(recipient, Cached { value, dirty: true });
    }

    fn recipient_of(&mut self, mailbox_id: u64) -> Result<IdentityKey, StoreError> {
        if let Some(r) = self.recipient_of.get(&mailbox_id) {
            return Ok(*r);
        }
        let recipient = match self.addrs.get(mailbox_id)? {
            Some(a) => schema::decode_addr(a.value())?.recipient,
            None => {
                return Err(StoreError::Corrupt {
                    table: "mailbox_addrs",
                    reason: "message of an unknown mailbox",
                });
            }
        };
        self.recipient_of.insert(mailbox_id, recipient);
        Ok(recipient)
    }

    /// Removes one message from the accounting of its recipient and the node.
    fn uncount(&mut self, mailbox_id: u64, payload_len: usize) -> Result<(), StoreError> {
        let recipient = self.recipient_of(mailbox_id)?;
        let c = cost(payload_len);
        let (n, b) = self.usage(&recipient)?;
        self.set_usage(recipient, (n.saturating_sub(1), b.saturating_sub(c)));
        self.meta.totals.messages = self.meta.totals.messages.saturating_sub(1);
        self.meta.totals.bytes = self.meta.totals.bytes.saturating_sub(c);
        Ok(())
    }

    /// Notes in the expiry index that message `seq` of `mailbox_id` with `id` expires at
    /// `expires_at_ms`: it continues that mailbox's run in this transaction or starts one.
    fn note_expiry(
        &mut self,
        expires_at_ms: u64,
        mailbox_id: u64,
        seq: u64,
        id: [u8; 16],
    ) -> Result<(), StoreError> {
        self.meta.totals.expiry_entries += 1;
        let open = self.runs.iter().position(|r| r.mailbox_id == mailbox_id);
        if let Some(i) = open {
            if let Some(run) = self
                .runs
                .get_mut(i)
                .filter(|r| r.continued_by(expires_at_ms, mailbox_id, seq))
            {
                run.ids.push(id);
                return Ok(());
            }
            let done = self.runs.swap_remove(i);
            self.expiry
                .insert(done.key(), done.encode_ids().as_slice())?;
        } else if self.runs.len() >= MAX_OPEN_RUNS {
            self.write_runs()?;
        }
        self.runs
            .push(ExpiryRun::start(expires_at_ms, mailbox_id, seq, id));
        Ok(())
    }

    /// Writes the runs of this transaction into the expiry index.
    fn write_runs(&mut self) -> Result<(), StoreError> {
        for run in self.runs.drain(..) {
            self.expiry.insert(run.key(), run.encode_ids().as_slice())?;
        }
        Ok(())
    }

    /// Replaces the stored run `run` by what is left of it without the messages `drop` picks;
    /// returns how many it dropped.
    fn shrink_run(
        &mut self,
        run: &ExpiryRun,
        drop: impl FnMut(u64) -> bool,
    ) -> Result<u64, StoreError> {
        let pieces = run.without(drop);
        let left: usize = pieces.iter().map(|p| p.ids.len()).sum();
        let dropped = run.ids.len().saturating_sub(left) as u64;
        if dropped == 0 {
            return Ok(0);
        }
        self.expiry.remove(run.key())?;
        for p in pieces {
            self.expiry.insert(p.key(), p.encode_ids().as_slice())?;
        }
        self.meta.totals.expiry_entries = self.meta.totals.expiry_entries.saturating_sub(dropped);
        Ok(dropped)
    }

    /// Removes message `seq` of `mailbox_id` from its run in the expiry index, if it is there.
    fn remove_from_runs(
        &mut self,
        expires_at: u64,
        mailbox_id: u64,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.write_runs()?;
        let found = self
            .expiry
            .range((expires_at, mailbox_id, 0)..=(expires_at, mailbox_id, seq))?
            .next_back()
            .transpose()?
            .map(|(k, v)| ExpiryRun::decode(k.value(), v.value()))
            .transpose()?;
        if let Some(run) = found {
            self.shrink_run(&run, |s| s == seq)?;
        }
        Ok(())
    }

    /// Removes the dedup entry of `message_id` in `mailbox_id` if it still stands for `seq`
    /// (the id may have been stored again since, under a newer seq).
    fn remove_dedup(
        &mut self,
        mailbox_id: u64,
        seq: u64,
        message_id: &[u8; 16],
    ) -> Result<(), StoreError> {
        let dedup_matches = self
            .dedup
            .get((message_id, mailbox_id))?
            .is_some_and(|v| v.value().0 == seq);
        if dedup_matches {
            self.dedup.remove((message_id, mailbox_id))?;
        }
        Ok(())
    }

    /// Removes the dedup entry of an expired message and the message itself if still stored,
    /// but not its expiry entry; returns whether the message was stored.
    fn expire_message(
        &mut self,
        mailbox_id: u64,
        seq: u64,
        message_id: &[u8; 16],
    ) -> Result<bool, StoreError> {
        self.remove_dedup(mailbox_id, seq, message_id)?;
        self.expire_stored(mailbox_id, seq)
    }

    /// Removes message `seq` of `mailbox_id` as expired if it is still stored; returns whether
    /// it was.
    fn expire_stored(&mut self, mailbox_id: u64, seq: u64) -> Result<bool, StoreError> {
        let removed = self
            .messages
            .remove((mailbox_id, seq))?
            .map(|v| schema::record_payload_len(v.value()))
            .transpose()?;
        match removed {
            Some(len) => {
                self.uncount(mailbox_id, len)?;
                self.meta.expired += 1;
                self.meta.dirty = true;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Removes an expiry entry, its dedup entry, and its message if still stored.
    fn expire_entry(
        &mut self,
        expires_at: u64,
        mailbox_id: u64,
        seq: u64,
        message_id: [u8; 16],
    ) -> Result<bool, StoreError> {
        self.remove_from_runs(expires_at, mailbox_id, seq)?;
        self.expire_message(mailbox_id, seq, &message_id)
    }

    /// Expires up to `limit` entries due at or before `now_ms`; returns messages removed.
    fn sweep(&mut self, now_ms: u64, limit: usize) -> Result<u64, StoreError> {
        self.write_runs()?;
        // Whole runs, and of the last one only as many messages as `limit` leaves.
        let mut due = Vec::new();
        let mut taken = 0usize;
        for item in self.expiry.range(schema::expiry_due(now_ms))? {
            if taken >= limit {
                break;
            }
            let (k, v) = item?;
            let run = ExpiryRun::decode(k.value(), v.value())?;
            let n = run.ids.len().min(limit - taken);
            taken += n;
            due.push((run, n));
        }
        let mut removed = 0;
        for (run, n) in due {
            for (seq, id) in run.entries().take(n) {
                if self.expire_message(run.mailbox_id, seq, &id)? {
                    removed += 1;
                }
            }
            // The last seq swept, inclusive: `first + n` would saturate at the end of the
            // seq space and leave a run at `u64::MAX` due forever.
            let last = run.first_seq.saturating_add((n as u64).saturating_sub(1));
            self.shrink_run(&run, |s| s <= last)?;
        }
        let mut due_custody = Vec::new();
        for item in self.custody_expiry()?.range(schema::custody_due(now_ms))? {
            if due_custody.len() >= limit {
                break;
            }
            let (k, _) = item?;
            due_custody.push(*k.value().1);
        }
        for d in due_custody {
            if self.custody_remove(&BundleDigest::from_array(d))?.is_some() {
                self.meta.expired += 1;
                self.meta.dirty = true;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Whether `need` more bytes fit the node-wide budget.
    fn fits(&self, cfg: &StoreConfig, need: u64) -> bool {
        self.meta.totals.used_bytes().saturating_add(need) <= cfg.max_total_bytes
    }

    /// Makes room when space is short. Expired data goes first (swept once per transaction).
    /// If `need` bytes still do not fit the node-wide budget but would without dedup records,
    /// the oldest dedup records of messages no longer stored are dropped until they do, with a
    /// thirty-second of the budget to spare so that a full store does not do this on every
    /// commit. Stored messages and bundles are never dropped for space.
    fn make_room(&mut self, cfg: &StoreConfig, now_ms: u64, need: u64) -> Result<(), StoreError> {
        if !self.swept_this_txn {
            self.swept_this_txn = true;
            self.sweep(now_ms, cfg.sweep_batch)?;
        }
        let t = &self.meta.totals;
        if !self.fits(cfg, need) && t.live_bytes().saturating_add(need) <= cfg.max_total_bytes {
            let excess = t
                .used_bytes()
                .saturating_add(need)
                .saturating_add(cfg.max_total_bytes / 32)
                .saturating_sub(cfg.max_total_bytes);
            self.forget_dedup_records(excess.div_ceil(DEDUP_RECORD_COST), cfg.sweep_batch)?;
        }
        Ok(())
    }

    /// Drops up to `count` dedup records of messages no longer stored, those expiring soonest
    /// first. Entries of stored messages are skipped, `skip_limit` of them at most, which
    /// bounds the work when the oldest entries are messages nobody fetches. A retry of such
    /// a message is stored again.
    fn forget_dedup_records(&mut self, count: u64, skip_limit: usize) -> Result<(), StoreError> {
        let count = count.min(self.meta.totals.dedup_records());
        if count == 0 {
            return Ok(());
        }
        let limit = usize::try_from(count)
            .unwrap_or(usize::MAX)
            .saturating_add(skip_limit);
        self.write_runs()?;
        // Each run looked at, with the seqs of its messages to forget.
        let mut victims: Vec<(ExpiryRun, Vec<u64>)> = Vec::new();
        let (mut seen, mut picked) = (0usize, 0u64);
        for item in self.expiry.iter()? {
            let (k, v) = item?;
            let run = ExpiryRun::decode(k.value(), v.value())?;
            let mut seqs = Vec::new();
            for (seq, _) in run.entries() {
                if seen >= limit || picked >= count {
                    break;
                }
                seen += 1;
                if self.messages.get((run.mailbox_id, seq))?.is_some() {
                    continue;
                }
                seqs.push(seq);
                picked += 1;
            }
            if !seqs.is_empty() {
                victims.push((run, seqs));
            }
            if seen >= limit || picked >= count {
                break;
            }
        }
        for (run, seqs) in victims {
            // `seqs` is ascending.
            let picked = |s: &u64| seqs.binary_search(s).is_ok();
            for (seq, id) in run.entries().filter(|(s, _)| picked(s)) {
                self.remove_dedup(run.mailbox_id, seq, &id)?;
            }
            let dropped = self.shrink_run(&run, |s| picked(&s))?;
            self.meta.dedup_forgotten += dropped;
            self.meta.dirty = true;
        }
        Ok(())
    }

    fn check_quota(
        &mut self,
        cfg: &StoreConfig,
        now_ms: u64,
        total: u64,
        per_recipient: &HashMap<IdentityKey, (u64, u64)>,
    ) -> Result<(), ApplyError> {
        let refuse = |scope, limit| {
            Err(ApplyError::Refused(StoreError::QuotaExceeded {
                scope,
                limit,
            }))
        };
        for attempt in 0..2 {
            match self.over_quota(cfg, total, per_recipient)? {
                None => return Ok(()),
                Some((scope, limit)) if attempt == 1 => return refuse(scope, limit),
                Some(_) => self.make_room(cfg, now_ms, total)?,
            }
        }
        Ok(())
    }

    /// The quota that `total` more bytes, `per_recipient` (messages, bytes) more for each
    /// recipient, would exceed as things stand, and its limit.
    fn over_quota(
        &mut self,
        cfg: &StoreConfig,
        total: u64,
        per_recipient: &HashMap<IdentityKey, (u64, u64)>,
    ) -> Result<Option<(QuotaScope, u64)>, StoreError> {
        let mut over = None;
        if !self.fits(cfg, total) {
            over = Some((QuotaScope::GlobalBytes, cfg.max_total_bytes));
        }
        for (r, (n, b)) in per_recipient {
            let (un, ub) = self.usage(r)?;
            if un.saturating_add(*n) > cfg.max_recipient_messages {
                over = over.or(Some((
                    QuotaScope::RecipientMessages,
                    cfg.max_recipient_messages,
                )));
            } else if ub.saturating_add(*b) > cfg.max_recipient_bytes {
                over = over.or(Some((QuotaScope::RecipientBytes, cfg.max_recipient_bytes)));
            }
        }
        Ok(over)
    }

    /// Looks up a live dedup entry; an expired one is expired on the spot.
    fn live_duplicate(&mut self, m: &Prepared, mailbox_id: u64) -> Result<Option<u64>, StoreError> {
        let key = (m.message_id.as_bytes(), mailbox_id);
        let Some((seq, exp)) = self.dedup.get(key)?.map(|v| v.value()) else {
            return Ok(None);
        };
        if exp > m.enqueued_at_ms {
            return Ok(Some(seq));
        }
        self.expire_entry(exp, mailbox_id, seq, *m.message_id.as_bytes())?;
        Ok(None)
    }

    /// All-or-nothing: quotas are checked for the whole set before anything is written.
    fn enqueue_all(
        &mut self,
        cfg: &StoreConfig,
        ms: &[Prepared],
    ) -> Result<Vec<Enqueued>, ApplyError> {
        // Mostly the whole set fits even if none of it is a duplicate. Then each message's
        // dedup entry is written straight away and the entry it replaces, if any, decides:
        // one B-tree descent per message instead of a lookup before the quota check and an
        // insert after it.
        let mut total = 0u64;
        let mut per_recipient: HashMap<IdentityKey, (u64, u64)> = HashMap::new();
        for m in ms {
            if m.expires_at_ms <= m.enqueued_at_ms {
                return Err(ApplyError::Refused(StoreError::Expired));
            }
            let c = cost(m.payload_len);
            total += c;
            let e = per_recipient.entry(m.mailbox.recipient).or_default();
            e.0 += 1;
            e.1 += c;
        }
        if self.over_quota(cfg, total, &per_recipient)?.is_none() {
            let mut out = Vec::with_capacity(ms.len());
            let mut new = Vec::with_capacity(ms.len());
            for m in ms {
                out.push(self.insert_unchecked(m, &mut new)?);
            }
            self.put_messages(&mut new)?;
            return Ok(out);
        }
        self.enqueue_all_checked(cfg, ms)
    }

    /// [`Tables::enqueue_all`] when the set may not fit: duplicates are looked up first, so
    /// that they neither count against the quotas nor are refused with the rest.
    fn enqueue_all_checked(
        &mut self,
        cfg: &StoreConfig,
        ms: &[Prepared],
    ) -> Result<Vec<Enqueued>, ApplyError> {
        let mut total = 0u64;
        let mut per_recipient: HashMap<IdentityKey, (u64, u64)> = HashMap::new();
        let mut now_ms = 0;
        // For each message, what the quota pass found in the store, and whether the same id
        // went to the same mailbox earlier in this set: only such a repeat is
        // looked up in the dedup table again when it is stored. A duplicate found here is
        // answered as one even if making room below drops its dedup record.
        let mut found = Vec::with_capacity(ms.len());
        let mut earlier = HashSet::with_capacity(if ms.len() > 1 { ms.len() } else { 0 });
        for m in ms {
            if m.expires_at_ms <= m.enqueued_at_ms {
                return Err(ApplyError::Refused(StoreError::Expired));
            }
            now_ms = now_ms.max(m.enqueued_at_ms);
            let dup = match self.mailbox(&m.addr)? {
                Some((id, _)) => self.live_duplicate(m, id)?,
                None => None,
            };
            let repeat = ms.len() > 1 && !earlier.insert((&m.mailbox, m.message_id));
            found.push((dup, repeat));
            if dup.is_some() {
                continue;
            }
            let c = cost(m.payload_len);
            total += c;
            let e = per_recipient.entry(m.mailbox.recipient).or_default();
            e.0 += 1;
            e.1 += c;
        }
        if total > 0 {
            self.check_quota(cfg, now_ms, total, &per_recipient)?;
        }
        let mut out = Vec::with_capacity(ms.len());
        for (m, (dup, repeat)) in ms.iter().zip(found) {
            out.push(match dup {
                Some(seq) => Enqueued {
                    seq,
                    duplicate: true,
                },
                None => self.insert(m, repeat)?,
            });
        }
        Ok(out)
    }

    /// Stores `m` (its mailbox encoded as `addr`), known not to be a live duplicate in the
    /// store before this set; with `recheck`, an earlier message of the same set had the same
    /// id and mailbox and may have stored it already.
    fn insert(&mut self, m: &Prepared, recheck: bool) -> Result<Enqueued, StoreError> {
        let (id, last_seq) = self.mailbox_or_new(&m.addr, &m.mailbox.recipient)?;
        if recheck && let Some(seq) = self.live_duplicate(m, id)? {
            return Ok(Enqueued {
                seq,
                duplicate: true,
            });
        }
        let seq = next_seq(last_seq)?;
        self.dedup
            .insert((m.message_id.as_bytes(), id), (seq, m.expires_at_ms))?;
        self.store_message(m, id, seq)
    }

    /// Stores `m` unless its id is a live duplicate in its mailbox, which the quotas were not
    /// checked against: its dedup entry is written first, and one it replaced that is still
    /// live is put back and answered as the duplicate; one that expired is expired on the spot.
    /// The message itself is added to `new`, for [`Tables::put_messages`] to write.
    fn insert_unchecked<'m>(
        &mut self,
        m: &'m Prepared,
        new: &mut Vec<NewRow<'m>>,
    ) -> Result<Enqueued, StoreError> {
        let (id, last_seq) = self.mailbox_or_new(&m.addr, &m.mailbox.recipient)?;
        let seq = next_seq(last_seq)?;
        let key = (m.message_id.as_bytes(), id);
        let replaced = self
            .dedup
            .insert(key, (seq, m.expires_at_ms))?
            .map(|v| v.value());
        if let Some((old_seq, old_exp)) = replaced {
            if old_exp > m.enqueued_at_ms {
                self.dedup.insert(key, (old_seq, old_exp))?;
                return Ok(Enqueued {
                    seq: old_seq,
                    duplicate: true,
                });
            }
            // Its dedup entry is replaced already; the rest of it goes as in a sweep, once
            // the messages before this one are written (it may be one of them).
            self.put_messages(new)?;
            self.remove_from_runs(old_exp, id, old_seq)?;
            self.expire_stored(id, old_seq)?;
        }
        new.push((id, seq, m.record.as_slice()));
        self.count_message(m, id, seq)
    }

    /// Writes (and empties) `new`. Consecutive seqs of one mailbox, which follow everything
    /// it holds, go in through one cursor: redb builds each leaf once for the run, instead of
    /// descending the tree and shifting the leaf's values for every message.
    fn put_messages(&mut self, new: &mut Vec<NewRow<'_>>) -> Result<(), StoreError> {
        let mut rest = new.as_slice();
        while let Some(&(id, first, _)) = rest.first() {
            let len = rest
                .iter()
                .enumerate()
                .take_while(|&(k, &(i, seq, _))| {
                    i == id && u64::try_from(k).ok().and_then(|k| first.checked_add(k)) == Some(seq)
                })
                .count();
            let (run, tail) = rest.split_at(len);
            rest = tail;
            let mut done = 0;
            if run.len() > 1 {
                let mut cursor = self
                    .messages
                    .lower_bound_mut(std::ops::Bound::Included((id, first)))?;
                for &(_, seq, record) in run {
                    match cursor.insert_before((id, seq), record) {
                        Ok(()) => done += 1,
                        // A key already there (a mailbox row behind its messages, on a
                        // damaged file): the plain insert below replaces it, as it would
                        // have for a lone message.
                        Err(redb::CursorError::UnorderedKey) => break,
                        Err(e) => return Err(redb::Error::from(e).into()),
                    }
                }
                cursor.close()?;
            }
            for &(_, seq, record) in run.get(done..).unwrap_or_default() {
                self.messages.insert((id, seq), record)?;
            }
        }
        new.clear();
        Ok(())
    }

    /// Writes `m` as message `seq` of mailbox `id`, whose dedup entry is written, and counts
    /// it.
    fn store_message(&mut self, m: &Prepared, id: u64, seq: u64) -> Result<Enqueued, StoreError> {
        self.messages.insert((id, seq), m.record.as_slice())?;
        self.count_message(m, id, seq)
    }

    /// Counts `m` as message `seq` of mailbox `id`: the mailbox's last seq, the expiry run,
    /// the usage.
    fn count_message(&mut self, m: &Prepared, id: u64, seq: u64) -> Result<Enqueued, StoreError> {
        self.set_mailbox(&m.addr, (id, seq));
        self.note_expiry(m.expires_at_ms, id, seq, *m.message_id.as_bytes())?;
        let c = cost(m.payload_len);
        let (n, b) = self.usage(&m.mailbox.recipient)?;
        self.set_usage(m.mailbox.recipient, (n + 1, b + c));
        self.meta.totals.messages += 1;
        self.meta.totals.bytes += c;
        Ok(Enqueued {
            seq,
            duplicate: false,
        })
    }

    fn custody_insert(&mut self, r: &BundleRecord) -> Result<(), StoreError> {
        let d = *r.digest().as_bytes();
        self.custody()?.insert(&d, custody::encode(r).as_slice())?;
        self.custody_by_recipient()?
            .insert((r.mailbox.recipient.as_bytes(), &d), ())?;
        self.custody_expiry()?.insert((r.expires_at_ms, &d), ())?;
        self.meta.totals.custody_count += 1;
        self.meta.totals.custody_bytes += cost(r.payload.len());
        Ok(())
    }

    fn custody_remove(&mut self, d: &BundleDigest) -> Result<Option<BundleRecord>, StoreError> {
        let Some(raw) = self.custody()?.remove(d.as_bytes())? else {
            return Ok(None);
        };
        let r = custody::decode(raw.value())?;
        drop(raw);
        self.custody_by_recipient()?
            .remove((r.mailbox.recipient.as_bytes(), d.as_bytes()))?;
        self.custody_expiry()?
            .remove((r.expires_at_ms, d.as_bytes()))?;
        self.meta.totals.custody_count = self.meta.totals.custody_count.saturating_sub(1);
        self.meta.totals.custody_bytes = self
            .meta
            .totals
            .custody_bytes
            .saturating_sub(cost(r.payload.len()));
        Ok(Some(r))
    }

    fn custody_of(&mut self, recipient: &IdentityKey) -> Result<Vec<BundleDigest>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .custody_by_recipient()?
            .range(schema::custody_of_recipient(recipient.as_bytes()))?
        {
            let (k, _) = item?;
            out.push(BundleDigest::from_array(*k.value().1));
        }
        Ok(out)
    }

    /// Whether a mailbox here already took this message (and keeps its dedup entry).
    fn delivered_here(&mut self, r: &BundleRecord, now_ms: u64) -> Result<bool, StoreError> {
        let addr = schema::encode_addr(&r.mailbox);
        let Some((id, _)) = self.mailbox(&addr)? else {
            return Ok(false);
        };
        Ok(self
            .dedup
            .get((r.message_id.as_bytes(), id))?
            .is_some_and(|v| v.value().1 > now_ms))
    }

    fn custody_put(
        &mut self,
        cfg: &StoreConfig,
        r: &BundleRecord,
        deliver_local: bool,
        now_ms: u64,
    ) -> Result<CustodyOutcome, ApplyError> {
        if r.expires_at_ms <= now_ms {
            return Ok(CustodyOutcome::Expired);
        }
        if deliver_local {
            let m = r.prepare(now_ms);
            return match self.enqueue_all(cfg, std::slice::from_ref(&m)) {
                Ok(v) => Ok(match v.first() {
                    Some(e) if !e.duplicate => CustodyOutcome::Delivered(e.seq),
                    _ => CustodyOutcome::Duplicate,
                }),
                Err(ApplyError::Refused(_)) => Ok(CustodyOutcome::Full),
                Err(e) => Err(e),
            };
        }
        if self.custody()?.get(r.digest().as_bytes())?.is_some()
            || self.delivered_here(r, now_ms)?
        {
            return Ok(CustodyOutcome::Duplicate);
        }
        let c = cost(r.payload.len());
        if !self.fits(cfg, c) {
            self.make_room(cfg, now_ms, c)?;
            if !self.fits(cfg, c) {
                return Ok(CustodyOutcome::Full);
            }
        }
        self.custody_insert(r)?;
        Ok(CustodyOutcome::Stored)
    }

    /// Moves bundles from custody into their mailboxes.
    fn custody_deliver(
        &mut self,
        cfg: &StoreConfig,
        digests: &[BundleDigest],
        now_ms: u64,
    ) -> Result<DeliverReport, ApplyError> {
        let mut report = DeliverReport::default();
        let mut records = Vec::with_capacity(digests.len());
        for d in digests {
            match self.custody_remove(d)? {
                Some(r) => records.push((*d, r)),
                None => report.missing.push(*d),
            }
        }
        // Into the mailbox in the order sent (message ids are time-ordered), whatever order
        // they were held in: one sender's messages get their seqs in the order they were sent.
        records.sort_by_key(|(d, r)| (*r.message_id.as_bytes(), *d));
        for (d, r) in records {
            let d = &d;
            if r.expires_at_ms <= now_ms {
                self.meta.expired += 1;
                report.missing.push(*d);
                continue;
            }
            let m = r.prepare(now_ms);
            match self.enqueue_all(cfg, std::slice::from_ref(&m)) {
                Ok(v) => report.delivered.push(Delivery {
                    digest: *d,
                    mailbox: r.mailbox,
                    seq: v.first().filter(|e| !e.duplicate).map(|e| e.seq),
                }),
                Err(ApplyError::Refused(_)) => {
                    self.custody_insert(&r)?;
                    report.refused.push(*d);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// Turns every message in `recipient`'s mailboxes here into a custody bundle, forgetting
    /// their dedup entries (the messages may come back here later).
    fn evict(
        &mut self,
        recipient: &IdentityKey,
        now_ms: u64,
        hop_limit: u8,
    ) -> Result<Vec<CustodyEntry>, StoreError> {
        let prefix = recipient.as_bytes();
        let mut boxes = Vec::new();
        for item in self.mailboxes.range(prefix.as_slice()..)? {
            let (k, v) = item?;
            if !k.value().starts_with(prefix) {
                break;
            }
            boxes.push((schema::decode_addr(k.value())?, v.value().0));
        }
        let mut out = Vec::new();
        for (addr, id) in boxes {
            let mut taken = Vec::new();
            for item in self
                .messages
                .extract_from_if((id, 0)..=(id, u64::MAX), |_, _| true)?
            {
                let (k, v) = item?;
                let rec = schema::decode_record(v.value())?;
                taken.push((
                    k.value().1,
                    rec.message_id,
                    rec.sender,
                    rec.expires_at_ms,
                    rec.payload.to_vec(),
                ));
            }
            for (seq, message_id, sender, expires_at_ms, payload) in taken {
                let key = (message_id.as_bytes(), id);
                if self.dedup.get(key)?.is_some_and(|v| v.value().0 == seq) {
                    self.dedup.remove(key)?;
                }
                self.uncount(id, payload.len())?;
                if expires_at_ms <= now_ms {
                    continue;
                }
                let r = BundleRecord {
                    mailbox: addr,
                    message_id,
                    sender,
                    received_at_ms: now_ms,
                    expires_at_ms,
                    hop_count: 0,
                    hop_limit,
                    from: None,
                    payload,
                };
                if self.custody()?.get(r.digest().as_bytes())?.is_none() {
                    self.custody_insert(&r)?;
                    out.push(r.summary());
                }
            }
        }
        Ok(out)
    }

    fn ack(&mut self, mailbox: &MailboxAddr, seq_up_to: u64) -> Result<u64, StoreError> {
        let addr = schema::encode_addr(mailbox);
        let Some((id, _)) = self.mailbox(&addr)? else {
            return Ok(0);
        };
        let mut lens = Vec::new();
        for item in self
            .messages
            .extract_from_if((id, 0)..=(id, seq_up_to), |_, _| true)?
        {
            let (_, v) = item?;
            lens.push(schema::record_payload_len(v.value())?);
        }
        for len in &lens {
            self.uncount(id, *len)?;
        }
        Ok(lens.len() as u64)
    }
}
