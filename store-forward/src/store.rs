use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_proto::types::{
    BundleDigest, Fingerprint, HybridKeyLookup, HybridPublicKey, IdentityKey, MailboxAddr,
    MessageId,
};
use portable_atomic::{AtomicU64, Ordering};
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
};

use crate::backend::{CountingBackend, IoCounters};
use crate::custody::{self, BundleRecord, CustodyEntry, CustodyOutcome, DeliverReport};
use crate::schema::{
    self, CUSTODY, CUSTODY_BY_RECIPIENT, CUSTODY_EXPIRY, EXPIRY, ExpiryRun, FINGERPRINTS,
    HYBRID_KEYS, MAILBOXES, MESSAGES, META, META_DEDUP_FORGOTTEN, META_EXPIRED, META_SCHEMA,
    PRESENCE, SCHEMA_VERSION, V1_META_COUNTERS, V1_RECIPIENTS, V2_EXPIRY,
};
use crate::usage::Usage;
use crate::wal;
use crate::writer::{self, Job, WriteOp};
use crate::{Pending, StoreConfig, StoreError};

/// A message to store.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// Target mailbox.
    pub mailbox: MailboxAddr,
    /// Idempotency key; deduplicated per mailbox until `expires_at_ms`.
    pub message_id: MessageId,
    /// The authenticated sender, unless sealed.
    pub sender: Option<IdentityKey>,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// Acceptance time, unix milliseconds (the store's notion of "now" for this write).
    pub enqueued_at_ms: u64,
    /// Absolute expiry, unix milliseconds; must be after `enqueued_at_ms`.
    pub expires_at_ms: u64,
}

impl NewMessage {
    /// The message as the writer takes it, encoded on the calling thread.
    pub(crate) fn prepare(&self) -> Prepared {
        Prepared::new(
            self.mailbox,
            &schema::Record {
                enqueued_at_ms: self.enqueued_at_ms,
                expires_at_ms: self.expires_at_ms,
                message_id: self.message_id,
                sender: self.sender,
                payload: &self.payload,
            },
        )
    }
}

/// A message as the writer takes it: its mailbox address and record encoded once, by the
/// thread that submits it, for the tables and the write-ahead log alike. The writer, which
/// every commit waits on, only copies them.
#[derive(Clone, Debug)]
pub(crate) struct Prepared {
    pub(crate) mailbox: MailboxAddr,
    /// `mailbox` as the `mailboxes` table keys it.
    pub(crate) addr: Vec<u8>,
    pub(crate) message_id: MessageId,
    pub(crate) enqueued_at_ms: u64,
    pub(crate) expires_at_ms: u64,
    pub(crate) payload_len: usize,
    /// The value of the `messages` table.
    pub(crate) record: Vec<u8>,
}

impl Prepared {
    pub(crate) fn new(mailbox: MailboxAddr, r: &schema::Record<'_>) -> Self {
        Self {
            mailbox,
            addr: schema::encode_addr(&mailbox),
            message_id: r.message_id,
            enqueued_at_ms: r.enqueued_at_ms,
            expires_at_ms: r.expires_at_ms,
            payload_len: r.payload.len(),
            record: r.encode(),
        }
    }

    /// A message as the log holds it: the encoded address and record, checked and copied.
    pub(crate) fn decode(addr: &[u8], record: &[u8]) -> Result<Self, StoreError> {
        let r = schema::decode_record(record)?;
        Ok(Self {
            mailbox: schema::decode_addr(addr)?,
            addr: addr.to_vec(),
            message_id: r.message_id,
            enqueued_at_ms: r.enqueued_at_ms,
            expires_at_ms: r.expires_at_ms,
            payload_len: r.payload.len(),
            record: record.to_vec(),
        })
    }
}

/// The result of an enqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enqueued {
    /// The message's sequence number in its mailbox.
    pub seq: u64,
    /// True when the message id was already stored (or acknowledged) in this mailbox; `seq`
    /// is then the first one assigned and nothing new was stored.
    pub duplicate: bool,
}

/// A message read from a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// Sequence number in the mailbox.
    pub seq: u64,
    /// Idempotency key.
    pub message_id: MessageId,
    /// The sender the node recorded, if not sealed.
    pub sender: Option<IdentityKey>,
    /// Acceptance time, unix milliseconds.
    pub enqueued_at_ms: u64,
    /// Absolute expiry, unix milliseconds.
    pub expires_at_ms: u64,
    /// Opaque payload.
    pub payload: Vec<u8>,
}

/// Counters of the writer since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Group commits: batches applied and made durable, through the write-ahead log or by a
    /// durable database commit.
    pub commits: u64,
    /// Durable database commits (each also empties the write-ahead log); with the log off,
    /// every commit.
    pub checkpoints: u64,
    /// Operations answered from committed transactions.
    pub ops: u64,
    /// Transactions that failed; none of their operations was stored. One that failed on a
    /// damaged row (`Corrupt`) is followed by a commit per operation, so that only the
    /// operations meeting the damage fail.
    pub failed_commits: u64,
    /// Largest number of operations in one commit.
    pub max_batch: u64,
    /// Total time spent committing, nanoseconds.
    pub commit_nanos: u64,
    /// Operations refused because the writer queue was full.
    pub busy: u64,
    /// Bytes handed to the file (what wears flash).
    pub bytes_written: u64,
    /// fsync calls.
    pub syncs: u64,
    /// Times the database was reopened after an IO failure.
    pub reopens: u64,
    /// Write-ahead log records applied again when the file was opened (after a crash or a
    /// failed fsync; a clean close leaves none).
    pub replayed_records: u64,
}

/// A snapshot of what the store holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Messages stored in all mailboxes.
    pub messages: u64,
    /// Accounted bytes of those messages.
    pub bytes: u64,
    /// Mailboxes ever created.
    pub mailboxes: u64,
    /// Messages removed by expiry since the database was created.
    pub expired_total: u64,
    /// Acceptance time of the oldest pending expiry entry's message, if any.
    pub oldest_enqueued_ms: Option<u64>,
    /// Size of the database file.
    pub file_bytes: u64,
    /// Bundles in custody (mesh transit).
    pub custody_bundles: u64,
    /// Accounted bytes of bundles in custody.
    pub custody_bytes: u64,
    /// Dedup records kept for messages no longer stored (acknowledged, or evicted into
    /// custody), so that a late retry is still recognised until the message's TTL.
    pub dedup_records: u64,
    /// Dedup records dropped before their TTL to make room, since the database was created.
    pub dedup_forgotten_total: u64,
    /// What counts against `max_total_bytes`: `bytes`, `custody_bytes`, and each dedup
    /// record at a fixed 100 bytes (what it takes in the file).
    pub used_bytes: u64,
    /// Writer counters since open.
    pub writer: WriterStats,
}

/// Hook called after every group commit, before its operations are answered, for metrics.
/// Runs on the writer thread, on the acknowledgement path: keep it cheap.
pub trait CommitObserver: Send + Sync + 'static {
    /// `ops` operations were committed (or failed, `ok == false`) in `elapsed`.
    fn committed(&self, ops: usize, elapsed: Duration, ok: bool);
}

#[derive(Debug, Default)]
pub(crate) struct WriterCounters {
    pub(crate) commits: AtomicU64,
    pub(crate) ops: AtomicU64,
    pub(crate) failed_commits: AtomicU64,
    pub(crate) max_batch: AtomicU64,
    pub(crate) commit_nanos: AtomicU64,
    pub(crate) busy: AtomicU64,
    pub(crate) reopens: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) replayed_records: AtomicU64,
}

pub(crate) enum Outcome {
    Enqueued(Enqueued),
    Batch(Vec<Enqueued>),
    Acked(u64),
    Swept(u64),
    Custody(CustodyOutcome),
    Delivered(DeliverReport),
    Evicted(Vec<CustodyEntry>),
    Count(u64),
    Done,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outcome")
    }
}

pub(crate) struct Shared {
    /// `None` while the database is being reopened after an IO failure.
    pub(crate) db: RwLock<Option<Arc<Database>>>,
    /// What the database holds, as of its last commit. Changed only by the writer, after a
    /// commit and before anyone is answered.
    pub(crate) usage: RwLock<Usage>,
    pub(crate) path: PathBuf,
    pub(crate) config: StoreConfig,
    pub(crate) io: Arc<IoCounters>,
    pub(crate) counters: WriterCounters,
    pub(crate) observer: Option<Arc<dyn CommitObserver>>,
    pub(crate) closed: portable_atomic::AtomicBool,
    /// Operations submitted and not yet taken by the writer. The channel itself is unbounded
    /// (a bounded std channel would allocate and touch every slot up front); this count is
    /// what bounds it.
    pub(crate) queued: portable_atomic::AtomicUsize,
    /// What readers see: a read transaction of the newest batch that is durable (its log
    /// record synced, or committed durably), with that batch's generation. A logged batch is
    /// in the database before its fsync; readers never see it until then.
    pub(crate) snapshot: RwLock<Option<(u64, Arc<ReadTransaction>)>>,
    /// Set by the syncer when fsyncing the log failed; the writer reopens the database.
    pub(crate) wal_broken: portable_atomic::AtomicBool,
    /// The disk is full: writes that take space are refused at once; reads, acknowledgements
    /// and expiry go on. Cleared once a commit succeeded and the reserve could be made again.
    pub(crate) disk_full: portable_atomic::AtomicBool,
    /// Counts reopens: a snapshot taken before one is never published after it.
    pub(crate) epoch: AtomicU64,
    /// Whether the writer is reopening the file right now; readers wait for it (briefly)
    /// instead of failing while the snapshot is gone.
    pub(crate) reopening: Mutex<bool>,
    pub(crate) reopened: Condvar,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("path", &self.path).finish()
    }
}

/// A handle to the store. Cheap to clone; the writer thread stops when [`Store::close`] is
/// called or the last handle is dropped.
#[derive(Clone, Debug)]
pub struct Store {
    shared: Arc<Shared>,
    tx: Sender<Job>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::from_io(path, e)
}

/// Applies the macro `$m` to every table read transactions may open (all made when a file is
/// prepared).
macro_rules! every_table {
    ($m:ident) => {
        $m!(
            MAILBOXES,
            schema::MAILBOX_ADDRS,
            MESSAGES,
            schema::DEDUP,
            EXPIRY,
            HYBRID_KEYS,
            FINGERPRINTS,
            CUSTODY,
            CUSTODY_BY_RECIPIENT,
            CUSTODY_EXPIRY,
            PRESENCE
        )
    };
}

/// Opens the database file, creating it when there is none. Writes nothing to a file whose
/// schema and tables are up to date, so a node restarted on a full disk still opens (and
/// serves reads).
pub(crate) fn open_database(
    path: &Path,
    config: &StoreConfig,
    io: &Arc<IoCounters>,
) -> Result<Database, StoreError> {
    if !path.exists() {
        create_database(path, config, io)?;
    }
    let db = open_file(path, config, io)?;
    if up_to_date(&db)? {
        return Ok(db);
    }
    prepare_schema(db, path)
}

fn open_file(
    path: &Path,
    config: &StoreConfig,
    io: &Arc<IoCounters>,
) -> Result<Database, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    let backend = CountingBackend::new(file, Arc::clone(io))?;
    Ok(Database::builder()
        .set_cache_size(config.cache_bytes)
        .create_with_backend(backend)?)
}

/// Makes a new database file whole beside its name, then renames it into place: a first start
/// killed part way leaves no half-made file that redb would refuse ("not a redb database").
fn create_database(
    path: &Path,
    config: &StoreConfig,
    io: &Arc<IoCounters>,
) -> Result<(), StoreError> {
    let mut staged = path.as_os_str().to_owned();
    staged.push(".new");
    let staged = PathBuf::from(staged);
    match std::fs::remove_file(&staged) {
        Ok(()) => {
            tracing::info!(path = %staged.display(), "removed a database file left half made by an interrupted first start")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&staged, e)),
    }
    drop(prepare_schema(open_file(&staged, config, io)?, &staged)?);
    std::fs::File::open(&staged)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(&staged, e))?;
    std::fs::rename(&staged, path).map_err(|e| io_err(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

/// Whether the file is at the current schema with every table made (a read only).
fn up_to_date(db: &Database) -> Result<bool, StoreError> {
    let rtx = db.begin_read()?;
    let schema = match rtx.open_table(META) {
        Ok(t) => t.get(META_SCHEMA)?.map(|v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if schema != Some(SCHEMA_VERSION) {
        return Ok(false);
    }
    use redb::TableHandle;
    macro_rules! names {
        ($($t:expr),+) => { [$( $t.name() ),+] };
    }
    let tables = every_table!(names);
    let have: std::collections::HashSet<String> =
        rtx.list_tables()?.map(|t| t.name().to_string()).collect();
    Ok(tables.iter().all(|t| have.contains(*t)))
}

/// Brings a file to the current schema (migrating older ones) and makes every table, in one
/// durable write transaction.
fn prepare_schema(db: Database, path: &Path) -> Result<Database, StoreError> {
    let txn = db.begin_write()?;
    {
        let found = txn.open_table(META)?.get(META_SCHEMA)?.map(|v| v.value());
        match found {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooNew {
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            Some(SCHEMA_VERSION) => {}
            Some(v @ (1 | 2)) => {
                if v == 1 {
                    // Version 1 counted what is stored in rows that every commit rewrote;
                    // version 2 counts it in memory when the file opens.
                    txn.delete_table(V1_RECIPIENTS)?;
                    let mut meta = txn.open_table(META)?;
                    for key in V1_META_COUNTERS {
                        meta.remove(key)?;
                    }
                }
                // Version 2 indexed expiry one entry per message; version 3 by runs.
                let runs = expiry_into_runs(&txn)?;
                txn.open_table(META)?.insert(META_SCHEMA, SCHEMA_VERSION)?;
                tracing::info!(path = %path.display(), runs, "database migrated from schema {v} to {SCHEMA_VERSION}");
            }
            Some(_) => {
                return Err(StoreError::Corrupt {
                    table: "meta",
                    reason: "unknown schema version",
                });
            }
            None => {
                txn.open_table(META)?.insert(META_SCHEMA, SCHEMA_VERSION)?;
            }
        }
        // Create every table, so read transactions never meet a missing one.
        macro_rules! create {
            ($($t:expr),+) => { $( txn.open_table($t)?; )+ };
        }
        every_table!(create);
    }
    txn.commit()?;
    Ok(db)
}

/// Schema 2 to 3: the per-message `expiry` table becomes `expiry_runs` (consecutive messages
/// of one mailbox expiring at the same millisecond make one run); returns the runs written.
fn expiry_into_runs(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let mut runs = txn.open_table(EXPIRY)?;
    let mut written = 0u64;
    {
        let old = txn.open_table(V2_EXPIRY)?;
        let mut run: Option<ExpiryRun> = None;
        for item in old.iter()? {
            let (k, id) = item?;
            let (exp, mailbox_id, seq) = k.value();
            match run.as_mut() {
                Some(r) if r.continued_by(exp, mailbox_id, seq) => r.ids.push(*id.value()),
                _ => {
                    if let Some(done) = run.take() {
                        runs.insert(done.key(), done.encode_ids().as_slice())?;
                        written += 1;
                    }
                    run = Some(ExpiryRun::start(exp, mailbox_id, seq, *id.value()));
                }
            }
        }
        if let Some(done) = run {
            runs.insert(done.key(), done.encode_ids().as_slice())?;
            written += 1;
        }
    }
    txn.delete_table(V2_EXPIRY)?;
    Ok(written)
}

/// Opens the database file, counts what it holds, and replays the write-ahead log into it:
/// durably, which empties the log; or, when the disk has no room for what the log holds, into
/// redb's memory only, keeping the log as the durable copy, so that the node still serves
/// reads and acknowledgements free room for the next checkpoint.
fn recover(
    path: &Path,
    config: &StoreConfig,
    io: &Arc<IoCounters>,
) -> Result<Recovered, StoreError> {
    let wal_path = wal::path_for(path);
    let data = wal::read(&wal_path).map_err(|e| io_err(&wal_path, e))?;
    let db = open_database(path, config, io)?;
    let applied = writer::applied_gen(&db)?;
    let (records, end) = wal::parse(&data, applied)?;
    drop(data);
    let usage = RwLock::new(Usage::scan(&db)?);
    let Some(last_gen) = records.last().map(|r| r.gen_) else {
        return Ok(Recovered {
            db,
            usage: usage.into_inner().unwrap_or_else(PoisonError::into_inner),
            last_gen: applied,
            replayed: 0,
            log_end: 0,
        });
    };
    let replayed = records.len() as u64;
    let (db, usage, log_end) = match writer::replay(
        &db,
        config,
        &usage,
        &records,
        Durability::Immediate,
    ) {
        Ok(()) => (db, usage, 0),
        Err(StoreError::DiskFull(e)) => {
            tracing::warn!(error = %e, records = replayed, "no room on the disk to checkpoint the write-ahead log; it stays the durable copy of its records until acknowledgements or freed space make room");
            // redb refuses a handle after an IO error: open the file again.
            drop(db);
            let db = open_database(path, config, io)?;
            let usage = RwLock::new(Usage::scan(&db)?);
            writer::replay(&db, config, &usage, &records, Durability::None)?;
            (db, usage, end)
        }
        Err(e) => return Err(e),
    };
    Ok(Recovered {
        db,
        usage: usage.into_inner().unwrap_or_else(PoisonError::into_inner),
        last_gen,
        replayed,
        log_end,
    })
}

/// A database opened and brought up to date with its write-ahead log.
struct Recovered {
    db: Database,
    usage: Usage,
    /// The last log generation the database holds.
    last_gen: u64,
    /// Log records replayed.
    replayed: u64,
    /// Where the records end that the log must keep (replayed into memory only); 0 when the
    /// log can start over.
    log_end: u64,
}

impl Store {
    /// Opens (or creates) the database file at `path` and starts the writer thread.
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<Self, StoreError> {
        Self::open_with_observer(path, config, None)
    }

    /// Like [`Store::open`], with a hook called after every commit.
    pub fn open_with_observer(
        path: impl AsRef<Path>,
        config: StoreConfig,
        observer: Option<Arc<dyn CommitObserver>>,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        let io = Arc::new(IoCounters::default());
        let rec = recover(&path, &config, &io)?;
        let (db, last_gen, log_end) = (rec.db, rec.last_gen, rec.log_end);
        let snapshot = (last_gen, Arc::new(db.begin_read()?));
        let counters = WriterCounters::default();
        counters
            .replayed_records
            .store(rec.replayed, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(Arc::new(db))),
            usage: RwLock::new(rec.usage),
            path,
            config,
            io,
            counters,
            observer,
            closed: portable_atomic::AtomicBool::new(false),
            queued: portable_atomic::AtomicUsize::new(0),
            snapshot: RwLock::new(Some(snapshot)),
            wal_broken: portable_atomic::AtomicBool::new(false),
            disk_full: portable_atomic::AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            reopening: Mutex::new(false),
            reopened: Condvar::new(),
        });
        let handle = writer::start(&shared, rx, last_gen, log_end)?;
        Ok(Self {
            shared,
            tx,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The configuration in force.
    pub fn config(&self) -> &StoreConfig {
        &self.shared.config
    }

    fn submit<T>(&self, op: WriteOp, map: fn(Outcome) -> Result<T, StoreError>) -> Pending<T> {
        let (reply, rx) = oneshot::channel();
        let capacity = self.shared.config.queue_capacity.max(1);
        if self.shared.queued.fetch_add(1, Ordering::AcqRel) >= capacity {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            self.shared.counters.busy.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(Err(StoreError::Busy(capacity)));
        } else if let Err(mpsc::SendError(job)) = self.tx.send(Job { op, reply }) {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            let _ = job.reply.send(Err(StoreError::Closed));
        }
        Pending::new(rx, map)
    }

    /// Stores a message durably, or returns the first result for a repeated message id.
    pub fn enqueue(&self, message: NewMessage) -> Pending<Enqueued> {
        self.submit(WriteOp::Enqueue(message.prepare()), |o| match o {
            Outcome::Enqueued(e) => Ok(e),
            _ => Err(StoreError::Closed),
        })
    }

    /// Stores several messages in one all-or-nothing operation (BatchEnqueue). Results are in
    /// input order.
    pub fn enqueue_batch(&self, messages: Vec<NewMessage>) -> Pending<Vec<Enqueued>> {
        self.submit(
            WriteOp::EnqueueBatch(messages.iter().map(NewMessage::prepare).collect()),
            |o| match o {
                Outcome::Batch(v) => Ok(v),
                _ => Err(StoreError::Closed),
            },
        )
    }

    /// Deletes every message of `mailbox` with `seq <= seq_up_to`; returns how many.
    pub fn ack(&self, mailbox: MailboxAddr, seq_up_to: u64) -> Pending<u64> {
        self.submit(WriteOp::Ack { mailbox, seq_up_to }, |o| match o {
            Outcome::Acked(n) => Ok(n),
            _ => Err(StoreError::Closed),
        })
    }

    /// Stores (replacing) the hybrid public key of an identity.
    pub fn put_hybrid_key(&self, identity: IdentityKey, key: HybridPublicKey) -> Pending<()> {
        self.submit(WriteOp::PutHybridKey { identity, key }, |o| match o {
            Outcome::Done => Ok(()),
            _ => Err(StoreError::Closed),
        })
    }

    /// Removes what expired at or before `now_ms` (at most `sweep_batch` entries per call);
    /// returns the number of expired messages removed. When nothing is due it answers 0
    /// without a commit, so an idle node does not write to its flash once a minute.
    pub fn sweep(&self, now_ms: u64) -> Pending<u64> {
        let map = |o| match o {
            Outcome::Swept(n) => Ok(n),
            _ => Err(StoreError::Closed),
        };
        if let Ok(false) = self.anything_due(now_ms) {
            let (reply, rx) = oneshot::channel();
            let _ = reply.send(Ok(Outcome::Swept(0)));
            return Pending::new(rx, map);
        }
        self.submit(WriteOp::Sweep { now_ms }, map)
    }

    /// Whether a sweep at `now_ms` would find an expired message, dedup entry or bundle, as
    /// far as the published snapshot shows (what it does not show yet, the next sweep finds).
    fn anything_due(&self, now_ms: u64) -> Result<bool, StoreError> {
        let rtx = self.read()?;
        let expiry = rtx.open_table(EXPIRY)?;
        if expiry.range(schema::expiry_due(now_ms))?.next().is_some() {
            return Ok(true);
        }
        let custody = rtx.open_table(CUSTODY_EXPIRY)?;
        Ok(custody.range(schema::custody_due(now_ms))?.next().is_some())
    }

    /// Puts a bundle into custody, or with `deliver_local` straight into its mailbox here.
    pub fn custody_put(
        &self,
        record: BundleRecord,
        deliver_local: bool,
        now_ms: u64,
    ) -> Pending<CustodyOutcome> {
        self.submit(
            WriteOp::CustodyPut {
                record,
                deliver_local,
                now_ms,
            },
            |o| match o {
                Outcome::Custody(c) => Ok(c),
                _ => Err(StoreError::Closed),
            },
        )
    }

    /// Deletes bundles from custody (the next hop has them); returns how many were there.
    pub fn custody_delete(&self, digests: Vec<BundleDigest>) -> Pending<u64> {
        self.submit(WriteOp::CustodyDelete(digests), |o| match o {
            Outcome::Count(n) => Ok(n),
            _ => Err(StoreError::Closed),
        })
    }

    /// Moves bundles from custody into their mailboxes here.
    pub fn custody_deliver(
        &self,
        digests: Vec<BundleDigest>,
        now_ms: u64,
    ) -> Pending<DeliverReport> {
        self.submit(WriteOp::CustodyDeliver { digests, now_ms }, |o| match o {
            Outcome::Delivered(r) => Ok(r),
            _ => Err(StoreError::Closed),
        })
    }

    /// Moves every bundle in custody for `recipient` into their mailboxes here.
    pub fn custody_deliver_recipient(
        &self,
        recipient: IdentityKey,
        now_ms: u64,
    ) -> Pending<DeliverReport> {
        self.submit(
            WriteOp::CustodyDeliverRecipient { recipient, now_ms },
            |o| match o {
                Outcome::Delivered(r) => Ok(r),
                _ => Err(StoreError::Closed),
            },
        )
    }

    /// Turns `recipient`'s mailboxes here into custody bundles (their home moved away).
    pub fn evict(
        &self,
        recipient: IdentityKey,
        now_ms: u64,
        hop_limit: u8,
    ) -> Pending<Vec<CustodyEntry>> {
        self.submit(
            WriteOp::Evict {
                recipient,
                now_ms,
                hop_limit,
            },
            |o| match o {
                Outcome::Evicted(v) => Ok(v),
                _ => Err(StoreError::Closed),
            },
        )
    }

    /// Stores a user's presence claim (opaque to the store) if newer than the one kept, and
    /// their hybrid key with it. Resolves to whether it was newer.
    pub fn put_presence(
        &self,
        user: IdentityKey,
        timestamp_ms: u64,
        claim: Vec<u8>,
        hybrid: HybridPublicKey,
    ) -> Pending<bool> {
        self.submit(
            WriteOp::PutPresence {
                user,
                timestamp_ms,
                claim,
                hybrid,
            },
            |o| match o {
                Outcome::Count(n) => Ok(n > 0),
                _ => Err(StoreError::Closed),
            },
        )
    }

    /// Stores a small named counter (for example the mesh's route seqno).
    pub fn put_meta(&self, key: &'static str, value: u64) -> Pending<()> {
        self.submit(WriteOp::PutMeta { key, value }, |o| match o {
            Outcome::Done => Ok(()),
            _ => Err(StoreError::Closed),
        })
    }

    /// Stops accepting writes, commits what is queued, joins the writer, and releases the
    /// database file (so it can be opened again, by this process or another). Reads after
    /// `close` fail with [`StoreError::Closed`].
    pub fn close(&self) {
        let (reply, rx) = oneshot::channel();
        // Counted like any operation (the writer uncounts everything it takes), but never
        // refused for capacity.
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if self
            .tx
            .send(Job {
                op: WriteOp::Shutdown,
                reply,
            })
            .is_ok()
        {
            let _ = rx.recv();
        } else {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        }
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
        self.shared.closed.store(true, Ordering::Release);
        if let Ok(mut slot) = self.shared.snapshot.write() {
            slot.take();
        }
        if let Ok(mut slot) = self.shared.db.write() {
            slot.take();
        }
    }

    /// The newest durable state, for reading. While the writer reopens the file after an
    /// IO error (tens of milliseconds, replay included) this waits for it, up to a second;
    /// when the file cannot be opened it fails at once with [`StoreError::Unavailable`].
    fn read(&self) -> Result<Arc<ReadTransaction>, StoreError> {
        let sh = &self.shared;
        let current = || {
            if sh.closed.load(Ordering::Acquire) {
                return Err(StoreError::Closed);
            }
            Ok(sh
                .snapshot
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(|(_, rtx)| Arc::clone(rtx)))
        };
        if let Some(rtx) = current()? {
            return Ok(rtx);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut reopening = sh.reopening.lock().unwrap_or_else(PoisonError::into_inner);
        while *reopening {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            reopening = sh
                .reopened
                .wait_timeout(reopening, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(reopening);
        current()?.ok_or(StoreError::Unavailable)
    }

    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.shared
            .db
            .read()
            .ok()
            .and_then(|g| g.clone())
            .ok_or(StoreError::Unavailable)
    }

    /// Messages of `mailbox` with `seq > after_seq`, in order, at most `limit` of them and at
    /// most about `max_bytes` of payload (at least one message if any). Expired messages are
    /// skipped: they are never delivered, even before the sweep removes them.
    pub fn fetch(
        &self,
        mailbox: &MailboxAddr,
        after_seq: u64,
        limit: u32,
        max_bytes: usize,
        now_ms: u64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let rtx = self.read()?;
        let mailboxes = rtx.open_table(MAILBOXES)?;
        let Some(entry) = mailboxes.get(schema::encode_addr(mailbox).as_slice())? else {
            return Ok(Vec::new());
        };
        let (id, _) = entry.value();
        let messages = rtx.open_table(MESSAGES)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let start = after_seq.saturating_add(1);
        for item in messages.range((id, start)..=(id, u64::MAX))? {
            if out.len() >= limit as usize {
                break;
            }
            let (k, v) = item?;
            let (_, seq) = k.value();
            let r = schema::decode_record(v.value())?;
            if r.expires_at_ms <= now_ms {
                continue;
            }
            if !out.is_empty() && bytes + r.payload.len() > max_bytes {
                break;
            }
            bytes += r.payload.len();
            out.push(StoredMessage {
                seq,
                message_id: r.message_id,
                sender: r.sender,
                enqueued_at_ms: r.enqueued_at_ms,
                expires_at_ms: r.expires_at_ms,
                payload: r.payload.to_vec(),
            });
        }
        Ok(out)
    }

    /// The hybrid key of an identity, looked up by key or fingerprint.
    pub fn hybrid_key(
        &self,
        lookup: &HybridKeyLookup,
    ) -> Result<Option<(IdentityKey, HybridPublicKey)>, StoreError> {
        let rtx = self.read()?;
        let identity = match lookup {
            HybridKeyLookup::Identity(id) => *id,
            HybridKeyLookup::Fingerprint(fp) => {
                let fps = rtx.open_table(FINGERPRINTS)?;
                match fps.get(fp.as_bytes())? {
                    Some(v) => IdentityKey::from_array(*v.value()),
                    None => return Ok(None),
                }
            }
        };
        let keys = rtx.open_table(HYBRID_KEYS)?;
        let found = keys.get(identity.as_bytes())?;
        match found {
            Some(v) => {
                let key = HybridPublicKey::from_field(v.value(), "hybrid_keys").map_err(|_| {
                    StoreError::Corrupt {
                        table: "hybrid_keys",
                        reason: "wrong key length",
                    }
                })?;
                Ok(Some((identity, key)))
            }
            None => Ok(None),
        }
    }

    /// Hybrid keys of several identities, in order; `None` where missing.
    pub fn hybrid_keys(
        &self,
        identities: &[IdentityKey],
    ) -> Result<Vec<Option<HybridPublicKey>>, StoreError> {
        let rtx = self.read()?;
        let keys = rtx.open_table(HYBRID_KEYS)?;
        identities
            .iter()
            .map(|id| {
                keys.get(id.as_bytes())?
                    .map(|v| {
                        HybridPublicKey::from_field(v.value(), "hybrid_keys").map_err(|_| {
                            StoreError::Corrupt {
                                table: "hybrid_keys",
                                reason: "wrong key length",
                            }
                        })
                    })
                    .transpose()
            })
            .collect()
    }

    /// Fingerprint-to-identity lookup without fetching the key.
    pub fn identity_by_fingerprint(
        &self,
        fp: &Fingerprint,
    ) -> Result<Option<IdentityKey>, StoreError> {
        Ok(self
            .hybrid_key(&HybridKeyLookup::Fingerprint(*fp))?
            .map(|(id, _)| id))
    }

    /// A bundle in custody.
    pub fn custody_get(&self, digest: &BundleDigest) -> Result<Option<BundleRecord>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(CUSTODY)?;
        let found = t.get(digest.as_bytes())?;
        found.map(|v| custody::decode(v.value())).transpose()
    }

    /// Whether `recipient` has messages in a mailbox here.
    pub fn has_mail(&self, recipient: &IdentityKey) -> Result<bool, StoreError> {
        self.db()?;
        Ok(self.usage().of(recipient).0 > 0)
    }

    /// The in-memory counts of what is stored (never poisoned: plain numbers).
    fn usage(&self) -> std::sync::RwLockReadGuard<'_, Usage> {
        self.shared
            .usage
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether any bundle in custody is for `recipient` (a read; no write when there is none).
    pub fn custody_waiting(&self, recipient: &IdentityKey) -> Result<bool, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(CUSTODY_BY_RECIPIENT)?;
        let mut range = t.range(schema::custody_of_recipient(recipient.as_bytes()))?;
        Ok(range.next().transpose()?.is_some())
    }

    /// Everything in custody, in digest order.
    pub fn custody_list(&self) -> Result<Vec<CustodyEntry>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(CUSTODY)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (_, v) = item?;
            out.push(custody::decode(v.value())?.summary());
        }
        Ok(out)
    }

    /// Every stored presence claim (as the mesh encoded it).
    pub fn presence_all(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(PRESENCE)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (_, v) = item?;
            if let Some(claim) = v.value().get(8..) {
                out.push(claim.to_vec());
            }
        }
        Ok(out)
    }

    /// A small named counter.
    pub fn meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value()))
    }

    /// Whether the disk is full: new messages are refused with [`StoreError::DiskFull`] while
    /// reads, acknowledgements and expiry go on (see [`StoreConfig::reserve_bytes`]).
    pub fn disk_full(&self) -> bool {
        self.shared.disk_full.load(Ordering::Acquire)
    }

    /// Messages stored in all mailboxes (cheap: one counter in memory).
    pub fn depth(&self) -> Result<u64, StoreError> {
        self.db()?;
        Ok(self.usage().totals.messages)
    }

    /// Writer counters only (no database access).
    pub fn writer_stats(&self) -> WriterStats {
        let c = &self.shared.counters;
        WriterStats {
            commits: c.commits.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            ops: c.ops.load(Ordering::Relaxed),
            failed_commits: c.failed_commits.load(Ordering::Relaxed),
            max_batch: c.max_batch.load(Ordering::Relaxed),
            commit_nanos: c.commit_nanos.load(Ordering::Relaxed),
            busy: c.busy.load(Ordering::Relaxed),
            bytes_written: self.shared.io.bytes_written.load(Ordering::Relaxed),
            syncs: self.shared.io.syncs.load(Ordering::Relaxed),
            reopens: c.reopens.load(Ordering::Relaxed),
            replayed_records: c.replayed_records.load(Ordering::Relaxed),
        }
    }

    /// A snapshot of counts, bytes and writer counters.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let rtx = self.read()?;
        let meta = rtx.open_table(META)?;
        let get = |k: &str| -> Result<u64, StoreError> {
            Ok(meta.get(k)?.map(|v| v.value()).unwrap_or(0))
        };
        let mailboxes = rtx.open_table(MAILBOXES)?.len()?;
        // The oldest stored message: the smallest enqueue time among mailbox heads would need
        // a scan; the expiry index gives the soonest-expiring entry, close enough for a view.
        let expiry = rtx.open_table(EXPIRY)?;
        let messages = rtx.open_table(MESSAGES)?;
        let mut oldest = None;
        if let Some(first) = expiry.first()? {
            let (_, mb, seq) = first.0.value();
            if let Some(v) = messages.get((mb, seq))? {
                oldest = Some(schema::decode_record(v.value())?.enqueued_at_ms);
            }
        }
        let file_bytes = std::fs::metadata(&self.shared.path)
            .map(|m| m.len())
            .unwrap_or(0);
        let totals = self.usage().totals;
        Ok(StoreStats {
            messages: totals.messages,
            bytes: totals.bytes,
            mailboxes,
            expired_total: get(META_EXPIRED)?,
            oldest_enqueued_ms: oldest,
            file_bytes,
            custody_bundles: totals.custody_count,
            custody_bytes: totals.custody_bytes,
            dedup_records: totals.dedup_records(),
            dedup_forgotten_total: get(META_DEDUP_FORGOTTEN)?,
            used_bytes: totals.used_bytes(),
            writer: self.writer_stats(),
        })
    }
}

impl Shared {
    /// Drops the poisoned database and opens the file again. Waits briefly for readers to let
    /// go of the old handle; on failure the store stays unavailable until the next attempt.
    /// Returns the database, the last log generation it holds, and where the records end
    /// that the log must keep (see [`Recovered`]).
    pub(crate) fn reopen(&self) -> Result<(Arc<Database>, u64, u64), StoreError> {
        *self
            .reopening
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        let result = self.reopen_inner();
        *self
            .reopening
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
        self.reopened.notify_all();
        result
    }

    /// Compacts the database file: moves pages down over the free ones and gives the end of
    /// the file back to the disk. Acknowledgements and expiry free pages inside the file, which
    /// keeps its size; on a full disk this is what returns their space. Readers wait for it
    /// (as for a reopen); it needs no new space. Returns whether it compacted anything.
    pub(crate) fn compact(&self) -> Result<bool, StoreError> {
        *self
            .reopening
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        let result = self.compact_inner();
        *self
            .reopening
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
        self.reopened.notify_all();
        result
    }

    fn compact_inner(&self) -> Result<bool, StoreError> {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let mut snap = self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let last_gen = snap.take().map_or(0, |(g, _)| g);
        let mut slot = self.db.write().map_err(|_| StoreError::Unavailable)?;
        let Some(mut shared_db) = slot.take() else {
            return Err(StoreError::Unavailable);
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut db = loop {
            match Arc::try_unwrap(shared_db) {
                Ok(db) => break db,
                Err(d) if Instant::now() < deadline => {
                    shared_db = d;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(d) => {
                    // A reader still holds it: not now.
                    *slot = Some(d);
                    drop(slot);
                    drop(snap);
                    let epoch = self.epoch.load(Ordering::Acquire);
                    if let Some(db) = self.current_db() {
                        self.publish(epoch, last_gen, db.begin_read().ok().map(Arc::new));
                    }
                    return Ok(false);
                }
            }
        };
        let compacted = db.compact();
        let db = Arc::new(db);
        *slot = Some(Arc::clone(&db));
        drop(slot);
        // The same contents, moved: readers see them again at the same generation.
        *snap = Some((last_gen, Arc::new(db.begin_read()?)));
        drop(snap);
        match compacted {
            Ok(done) => Ok(done),
            Err(e) => {
                tracing::debug!(error = %e, "compacting the database failed");
                Ok(false)
            }
        }
    }

    fn reopen_inner(&self) -> Result<(Arc<Database>, u64, u64), StoreError> {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut snap) = self.snapshot.write() {
            snap.take();
        }
        let mut slot = self.db.write().map_err(|_| StoreError::Unavailable)?;
        if let Some(old) = slot.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut old = Some(old);
            while let Some(o) = old.take() {
                match Arc::try_unwrap(o) {
                    Ok(db) => drop(db),
                    Err(o) if Instant::now() < deadline => {
                        old = Some(o);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(o) => {
                        // A reader still holds it; it closes when that reader finishes.
                        drop(o);
                        return Err(StoreError::Unavailable);
                    }
                }
            }
        }
        let rec = recover(&self.path, &self.config, &self.io)?;
        let (db, last_gen, log_end) = (Arc::new(rec.db), rec.last_gen, rec.log_end);
        self.counters
            .replayed_records
            .fetch_add(rec.replayed, Ordering::Relaxed);
        *self.usage.write().unwrap_or_else(PoisonError::into_inner) = rec.usage;
        self.counters.reopens.fetch_add(1, Ordering::Relaxed);
        *slot = Some(Arc::clone(&db));
        let epoch = self.epoch.load(Ordering::Acquire);
        self.publish(epoch, last_gen, db.begin_read().ok().map(Arc::new));
        tracing::info!(path = %self.path.display(), "database reopened after an IO failure");
        Ok((db, last_gen, log_end))
    }

    /// Shows readers the state of batch `gen_`, unless they already see a newer one or the
    /// file was reopened since the snapshot was taken (in `epoch`).
    pub(crate) fn publish(&self, epoch: u64, gen_: u64, snapshot: Option<Arc<ReadTransaction>>) {
        let Some(rtx) = snapshot else { return };
        let mut slot = self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if slot.as_ref().is_none_or(|(g, _)| *g < gen_) {
            *slot = Some((gen_, rtx));
        }
    }

    pub(crate) fn current_db(&self) -> Option<Arc<Database>> {
        self.db.read().ok().and_then(|g| g.clone())
    }
}
