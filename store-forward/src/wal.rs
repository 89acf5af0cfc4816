//! The write-ahead log in front of redb.
//!
//! A batch made only of Enqueue, EnqueueBatch and Ack operations is applied to redb in a
//! non-durable commit (no fsync; its pages stay in redb's write buffer), and its operations are
//! appended to this log. A second thread, the syncer, `fdatasync`s the log and only then answers
//! the operations, so the writer applies the next batch while the disk syncs the last one.
//! Every other batch, and any batch once the log has grown past
//! [`crate::StoreConfig::checkpoint_bytes`], is a durable redb commit: it records the
//! generation it covers in `meta` (if the log holds records; otherwise every record in the file
//! is older than the one recorded already) and empties the log.
//!
//! On open, the records after that generation are applied again, in order, each in the state
//! the one before it left, which is the state it was first applied to; so each operation has the
//! same outcome as when it was answered.
//!
//! A record: `body_len u32 LE | crc32 u32 LE (of gen and body) | gen u64 LE | body`. The body is
//! `op count u32`, then each operation: `4` Enqueue (one message), `5` EnqueueBatch (`count
//! u32`, messages), `3` Ack (`addr`, `seq_up_to u64`). A message is `addr_len u16 | addr |
//! record_len u32 | record` with the mailbox address and message record as the tables store
//! them. An enqueue answered as stored is written as `4` or `5`, one that was refused as `1` or
//! `2` (what every enqueue was before the distinction). Every record starts with `6`, the
//! limits its operations were applied under (`max_total_bytes`, `max_recipient_messages`,
//! `max_recipient_bytes`, `sweep_batch`, each u64; 33 bytes). Replay applies every operation
//! under the limits it was first applied under (those of the moment for a record from before
//! `6`), so an enqueue refused then is refused again even if an operator raised the limits
//! before the restart, and the seqs stay those that were answered. An enqueue marked stored
//! that the limits refuse anyway (a record from before `6`, and limits lowered since) is
//! applied again without quota checks, so that an acknowledged message is never dropped.
//! Replay stops at the first record that is short, fails its checksum, or does not follow the
//! previous generation: only the tail after the last fsync can be torn.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ferry_proto::types::MailboxAddr;

use crate::schema;
use crate::store::Prepared;
use crate::writer::WriteOp;
use crate::{StoreConfig, StoreError};

const HEADER: usize = 4 + 4 + 8;
/// An Enqueue that was refused (or, in logs from before the distinction, either).
const OP_ENQUEUE_REFUSED: u8 = 1;
/// An EnqueueBatch that was refused (or either, in older logs).
const OP_ENQUEUE_BATCH_REFUSED: u8 = 2;
const OP_ACK: u8 = 3;
/// An Enqueue that was answered as stored.
const OP_ENQUEUE: u8 = 4;
/// An EnqueueBatch that was answered as stored.
const OP_ENQUEUE_BATCH: u8 = 5;
/// The limits the record's operations were applied under; first in every record.
const OP_LIMITS: u8 = 6;

/// The settings that decide an operation's outcome: a replay must apply the log's operations
/// under the ones they were first applied under, or a refused enqueue could be stored (and
/// the seqs after it shift) on a restart with raised limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    max_total_bytes: u64,
    max_recipient_messages: u64,
    max_recipient_bytes: u64,
    sweep_batch: u64,
}

impl Limits {
    pub(crate) fn of(cfg: &StoreConfig) -> Self {
        Self {
            max_total_bytes: cfg.max_total_bytes,
            max_recipient_messages: cfg.max_recipient_messages,
            max_recipient_bytes: cfg.max_recipient_bytes,
            sweep_batch: u64::try_from(cfg.sweep_batch).unwrap_or(u64::MAX),
        }
    }

    /// The fields in the order the log writes them.
    fn fields(&self) -> [u64; 4] {
        [
            self.max_total_bytes,
            self.max_recipient_messages,
            self.max_recipient_bytes,
            self.sweep_batch,
        ]
    }

    fn from_fields(
        [
            max_total_bytes,
            max_recipient_messages,
            max_recipient_bytes,
            sweep_batch,
        ]: [u64; 4],
    ) -> Self {
        Self {
            max_total_bytes,
            max_recipient_messages,
            max_recipient_bytes,
            sweep_batch,
        }
    }

    /// `cfg` with these limits.
    pub(crate) fn applied_to(&self, cfg: &StoreConfig) -> StoreConfig {
        StoreConfig {
            max_total_bytes: self.max_total_bytes,
            max_recipient_messages: self.max_recipient_messages,
            max_recipient_bytes: self.max_recipient_bytes,
            sweep_batch: usize::try_from(self.sweep_batch).unwrap_or(usize::MAX),
            ..cfg.clone()
        }
    }
}

/// The log's path: the database's, with `-wal` appended.
pub(crate) fn path_for(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// Whether an operation can go through the log (else its batch is a durable commit).
pub(crate) fn loggable(op: &WriteOp) -> bool {
    matches!(
        op,
        WriteOp::Enqueue(_) | WriteOp::EnqueueBatch(_) | WriteOp::Ack { .. }
    )
}

/// CRC-32 (IEEE), over several slices. `crc32fast` uses the CPU's carry-less multiply or
/// CRC instructions where there are any (x86_64, most aarch64), and a slice-by-16 table
/// elsewhere: the log checksums every byte the store writes, so a byte-at-a-time table loop
/// was 8% of the writer's time.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for part in parts {
        h.update(part);
    }
    h.finalize()
}

fn put_message(out: &mut Vec<u8>, m: &Prepared) {
    put_encoded_addr(out, &m.addr);
    out.extend_from_slice(&u32::try_from(m.record.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&m.record);
}

fn put_addr(out: &mut Vec<u8>, addr: &MailboxAddr) {
    put_encoded_addr(out, &schema::encode_addr(addr));
}

fn put_encoded_addr(out: &mut Vec<u8>, addr: &[u8]) {
    out.extend_from_slice(&u16::try_from(addr.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(addr);
}

/// Encodes the loggable operations of a batch as one record of generation `gen`, each with
/// whether it was answered with success, after `limits` if given. A refused enqueue is written
/// too: replay applies it again for what it did on the way (sweeping, forgetting dedup records
/// to make room), so that the operations after it meet the state they met.
pub(crate) fn encode<'a>(
    gen_: u64,
    limits: Option<&Limits>,
    ops: impl Iterator<Item = (&'a WriteOp, bool)>,
) -> Vec<u8> {
    let mut out = vec![0u8; HEADER];
    out.extend_from_slice(&[0; 4]);
    let mut count = 0u32;
    if let Some(l) = limits {
        out.push(OP_LIMITS);
        for v in l.fields() {
            out.extend_from_slice(&v.to_le_bytes());
        }
        count += 1;
    }
    for (op, ok) in ops {
        match op {
            WriteOp::Enqueue(m) => {
                out.push(if ok { OP_ENQUEUE } else { OP_ENQUEUE_REFUSED });
                put_message(&mut out, m);
            }
            WriteOp::EnqueueBatch(ms) => {
                out.push(if ok {
                    OP_ENQUEUE_BATCH
                } else {
                    OP_ENQUEUE_BATCH_REFUSED
                });
                out.extend_from_slice(&u32::try_from(ms.len()).unwrap_or(0).to_le_bytes());
                for m in ms {
                    put_message(&mut out, m);
                }
            }
            WriteOp::Ack { mailbox, seq_up_to } => {
                out.push(OP_ACK);
                put_addr(&mut out, mailbox);
                out.extend_from_slice(&seq_up_to.to_le_bytes());
            }
            // Never in a logged batch (see `loggable`); nothing is written for it.
            _ => continue,
        }
        count += 1;
    }
    let body_len = u32::try_from(out.len() - HEADER).unwrap_or(u32::MAX);
    if let Some(c) = out.get_mut(HEADER..HEADER + 4) {
        c.copy_from_slice(&count.to_le_bytes());
    }
    let gen_bytes = gen_.to_le_bytes();
    let crc = crc32(&[&gen_bytes, out.get(HEADER..).unwrap_or(&[])]);
    let header = [body_len.to_le_bytes(), crc.to_le_bytes()]
        .concat()
        .into_iter()
        .chain(gen_bytes);
    for (slot, b) in out.iter_mut().zip(header) {
        *slot = b;
    }
    out
}

fn bad(reason: &'static str) -> StoreError {
    StoreError::Corrupt {
        table: "wal",
        reason,
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or_else(|| bad("short operation"))?;
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }
    fn u16(&mut self) -> Result<u16, StoreError> {
        let b = self.take(2)?.first_chunk::<2>().copied().unwrap_or([0; 2]);
        Ok(u16::from_le_bytes(b))
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        let b = self.take(4)?.first_chunk::<4>().copied().unwrap_or([0; 4]);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        let b = self.take(8)?.first_chunk::<8>().copied().unwrap_or([0; 8]);
        Ok(u64::from_le_bytes(b))
    }
    /// An encoded mailbox address, as `put_encoded_addr` frames it.
    fn addr_bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }
    fn addr(&mut self) -> Result<MailboxAddr, StoreError> {
        schema::decode_addr(self.addr_bytes()?)
    }
    fn message(&mut self) -> Result<Prepared, StoreError> {
        let addr = self.addr_bytes()?;
        let len = self.u32()?;
        Prepared::decode(addr, self.take(len as usize)?)
    }
}

fn decode_body(gen_: u64, body: &[u8]) -> Result<Record, StoreError> {
    let mut r = Reader(body);
    let count = r.u32()?;
    let mut limits = None;
    let mut ops = Vec::new();
    for i in 0..count {
        let tag = r.u8()?;
        let op = match tag {
            OP_LIMITS if i == 0 => {
                let mut fields = [0u64; 4];
                for f in &mut fields {
                    *f = r.u64()?;
                }
                limits = Some(Limits::from_fields(fields));
                continue;
            }
            OP_LIMITS => return Err(bad("limits after operations")),
            OP_ENQUEUE | OP_ENQUEUE_REFUSED => WriteOp::Enqueue(r.message()?),
            OP_ENQUEUE_BATCH | OP_ENQUEUE_BATCH_REFUSED => {
                let n = r.u32()?;
                let mut ms = Vec::new();
                for _ in 0..n {
                    ms.push(r.message()?);
                }
                WriteOp::EnqueueBatch(ms)
            }
            OP_ACK => WriteOp::Ack {
                mailbox: r.addr()?,
                seq_up_to: r.u64()?,
            },
            _ => return Err(bad("unknown operation")),
        };
        ops.push(Logged {
            op,
            stored: matches!(tag, OP_ENQUEUE | OP_ENQUEUE_BATCH),
        });
    }
    if !r.0.is_empty() {
        return Err(bad("trailing bytes in a record"));
    }
    Ok(Record { gen_, limits, ops })
}

/// The records of a log after generation `applied`, in order, up to the first torn or stale
/// one, and the offset just past the last of them (0 if none). A record whose checksum holds
/// but that does not decode is corruption, not a torn tail.
pub(crate) type Records = Vec<Record>;

/// A record read back from the log.
pub(crate) struct Record {
    pub(crate) gen_: u64,
    /// The limits its operations were applied under (`None` in a log from before they were
    /// written).
    pub(crate) limits: Option<Limits>,
    pub(crate) ops: Vec<Logged>,
}

/// An operation read back from the log.
pub(crate) struct Logged {
    pub(crate) op: WriteOp,
    /// An enqueue that was answered as stored: if the limits refuse it on replay (a record
    /// without its limits, and limits lowered since), it is applied again without them.
    pub(crate) stored: bool,
}

pub(crate) fn parse(data: &[u8], applied: u64) -> Result<(Records, u64), StoreError> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut last = applied;
    let mut end = 0;
    while let Some((header, after)) = rest.split_first_chunk::<HEADER>() {
        let [l0, l1, l2, l3, c0, c1, c2, c3, gen_bytes @ ..] = *header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        let Some((body, next)) = after.split_at_checked(len) else {
            break;
        };
        if crc32(&[&gen_bytes, body]) != u32::from_le_bytes([c0, c1, c2, c3]) {
            break;
        }
        let gen_ = u64::from_le_bytes(gen_bytes);
        if gen_ <= last {
            if out.is_empty() && gen_ <= applied {
                // Already in the database (a checkpoint's truncation not yet on disk).
                rest = next;
                continue;
            }
            break;
        }
        out.push(decode_body(gen_, body)?);
        last = gen_;
        rest = next;
        end = data.len() - rest.len();
    }
    Ok((out, end as u64))
}

/// Reads the whole log at `path` (empty if it does not exist).
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, std::io::Error> {
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut data)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(data)
}

/// The log as the writer writes it: records from the start of the file, which is kept at
/// (at least) its preallocated size. Bytes past the last record are zeros or an older cycle's
/// records, which [`parse`] stops at; so the file's size never changes while it is in use, and
/// `fdatasync` has only the records' blocks to write, no size to journal.
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    /// Where the next record goes: the bytes of records since the last checkpoint.
    pos: u64,
    /// The file's size: records up to it need no new space on the disk.
    capacity: u64,
}

impl Wal {
    /// Opens (creating) the log; what it holds was replayed already. Fills it with zeros to
    /// `prealloc` bytes if shorter (on failure, a full disk say, it grows as records come).
    /// `pos` is where the records replay kept end (0 when replay emptied the log).
    pub(crate) fn open(path: &Path, prealloc: u64, pos: u64) -> Result<Self, std::io::Error> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < prealloc {
            let zeros = vec![0u8; 64 * 1024];
            let mut at = len;
            let filled = (|| {
                file.seek(SeekFrom::Start(len))?;
                while at < prealloc {
                    let n =
                        usize::try_from(prealloc - at).map_or(zeros.len(), |n| n.min(zeros.len()));
                    file.write_all(zeros.get(..n).unwrap_or(&zeros))?;
                    at += n as u64;
                }
                file.sync_all()
            })();
            if let Err(e) = filled {
                tracing::warn!(error = %e, path = %path.display(), "preallocating the write-ahead log failed; it grows as it is written");
                let _ = file.set_len(len);
            }
        }
        let capacity = file.metadata()?.len();
        Ok(Self {
            file,
            pos,
            capacity,
        })
    }

    /// Whether `n` more bytes fit in the space the file already has.
    pub(crate) fn fits(&self, n: usize) -> bool {
        self.pos.saturating_add(n as u64) <= self.capacity
    }

    /// A second handle on the same file, for the syncer.
    pub(crate) fn sync_handle(&self) -> Result<File, std::io::Error> {
        self.file.try_clone()
    }

    /// Bytes of records since the last checkpoint.
    pub(crate) fn len(&self) -> u64 {
        self.pos
    }

    /// Writes a record after the last (no fsync: the syncer does that). A record written only
    /// in part is a torn tail that replay stops at; the next one overwrites it.
    pub(crate) fn append(&mut self, record: &[u8]) -> Result<(), std::io::Error> {
        self.file.write_all_at(record, self.pos)?;
        self.pos += record.len() as u64;
        self.capacity = self.capacity.max(self.pos);
        Ok(())
    }

    /// Takes back the records written from `at` on (a batch whose commit failed): zeros
    /// where the first began, so that replay ends before it, and the next record goes there.
    pub(crate) fn retract(&mut self, at: u64) -> Result<(), std::io::Error> {
        self.pos = at;
        self.file.write_all_at(&[0u8; HEADER], at)
    }

    /// Starts the log over once a durable commit holds everything in it. The records stay in
    /// the file until overwritten: replay skips them by generation.
    pub(crate) fn rewind(&mut self) {
        self.pos = 0;
    }

    /// Continues after the records a replay kept (see [`Wal::open`]).
    pub(crate) fn set_pos(&mut self, pos: u64) {
        self.pos = pos;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewMessage;
    use ferry_proto::types::{ChannelId, DeviceId, IdentityKey, MessageId};

    fn msg(n: u8, payload: &[u8]) -> NewMessage {
        NewMessage {
            mailbox: MailboxAddr {
                recipient: IdentityKey::from_array([n; 32]),
                channel: ChannelId::from_array([n; 16]),
                device: DeviceId::from_field(b"phone", "d").unwrap(),
            },
            message_id: MessageId::from_array([n; 16]),
            sender: n
                .is_multiple_of(2)
                .then(|| IdentityKey::from_array([9; 32])),
            payload: payload.to_vec(),
            enqueued_at_ms: 1_000 + u64::from(n),
            expires_at_ms: 9_000 + u64::from(n),
        }
    }

    fn ops() -> Vec<WriteOp> {
        vec![
            WriteOp::Enqueue(msg(1, b"one").prepare()),
            WriteOp::EnqueueBatch(vec![msg(2, b"").prepare(), msg(3, &[7; 300]).prepare()]),
            WriteOp::Ack {
                mailbox: msg(4, b"").mailbox,
                seq_up_to: 77,
            },
        ]
    }

    pub(super) fn stored(ops: &[WriteOp]) -> impl Iterator<Item = (&WriteOp, bool)> {
        ops.iter().map(|op| (op, true))
    }

    /// A record with its checksum made to match after its bytes were changed.
    pub(super) fn reseal(record: &mut [u8], gen_: u64) {
        let crc = crc32(&[&gen_.to_le_bytes(), record.get(HEADER..).unwrap_or(&[])]);
        record[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    fn summary<'a>(ops: impl IntoIterator<Item = &'a WriteOp>) -> Vec<String> {
        ops.into_iter()
            .map(|op| match op {
                WriteOp::Enqueue(m) => format!("e {m:?}"),
                WriteOp::EnqueueBatch(ms) => format!("b {ms:?}"),
                WriteOp::Ack { mailbox, seq_up_to } => format!("a {mailbox:?} {seq_up_to}"),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn records_round_trip_in_order() {
        let mut log = encode(5, None, stored(&ops()));
        log.extend(encode(7, None, stored(&ops()[..1])));
        let (got, end) = parse(&log, 0).unwrap();
        assert_eq!(end, log.len() as u64);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].gen_, 5);
        assert_eq!(summary(got[0].ops.iter().map(|l| &l.op)), summary(&ops()));
        assert!(
            got[0]
                .ops
                .iter()
                .all(|l| l.stored != matches!(l.op, WriteOp::Ack { .. }))
        );
        assert_eq!(got[1].gen_, 7);
        assert_eq!(
            summary(got[1].ops.iter().map(|l| &l.op)),
            summary(&ops()[..1])
        );
    }

    #[test]
    fn refused_enqueues_are_written_and_marked() {
        let ops = ops();
        let answered = ops.iter().zip([false, true, true]);
        let (got, _) = parse(&encode(5, None, answered), 0).unwrap();
        assert_eq!(summary(got[0].ops.iter().map(|l| &l.op)), summary(&ops));
        let stored: Vec<_> = got[0].ops.iter().map(|l| l.stored).collect();
        assert_eq!(stored, [false, true, false]);
    }

    #[test]
    fn limits_lead_a_record_and_nowhere_else() {
        let limits = Limits::of(&StoreConfig {
            max_total_bytes: 1,
            max_recipient_messages: 2,
            max_recipient_bytes: 3,
            sweep_batch: 4,
            ..StoreConfig::default()
        });
        let (got, _) = parse(&encode(5, Some(&limits), stored(&ops())), 0).unwrap();
        assert_eq!(got[0].limits, Some(limits));
        assert_eq!(summary(got[0].ops.iter().map(|l| &l.op)), summary(&ops()));
        assert_eq!(
            parse(&encode(5, None, stored(&ops())), 0).unwrap().0[0].limits,
            None
        );
        // Limits after an operation: the record checks but does not decode.
        let first = encode(3, None, stored(&ops()[2..]));
        let mut record = encode(3, Some(&limits), stored(&ops()[2..]));
        let op_len = first.len() - HEADER - 4;
        let body = HEADER + 4;
        record[body..].rotate_left(33);
        assert_eq!(record.len() - body, op_len + 33);
        reseal(&mut record, 3);
        assert!(matches!(
            parse(&record, 0),
            Err(StoreError::Corrupt {
                table: "wal",
                reason: "limits after operations"
            })
        ));
    }

    #[test]
    fn replay_skips_applied_and_stops_at_a_torn_tail() {
        let mut log = encode(5, None, stored(&ops()));
        log.extend(encode(6, None, stored(&ops())));
        let whole = log.len();
        log.extend(encode(7, None, stored(&ops())));
        // Records up to 5 are in the database already.
        assert_eq!(parse(&log, 5).unwrap().0.len(), 2);
        // Every cut inside the last record leaves the first two.
        for cut in whole..log.len() {
            let (got, end) = parse(&log[..cut], 0).unwrap();
            assert_eq!(
                got.iter().map(|r| r.gen_).collect::<Vec<_>>(),
                [5, 6],
                "cut {cut}"
            );
            assert_eq!(end, whole as u64);
        }
        // A flipped bit in the last record's body ends the log before it.
        let mut flipped = log.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(parse(&flipped, 0).unwrap().0.len(), 2);
        // A stale record after a newer one (an old log's leftovers) ends it too.
        let mut stale = encode(9, None, stored(&ops()));
        stale.extend(encode(8, None, stored(&ops())));
        assert_eq!(parse(&stale, 0).unwrap().0.len(), 1);
        // Zeros (the preallocated rest of the file) end it.
        let mut zeros = encode(3, None, stored(&ops()));
        zeros.extend([0u8; 100]);
        assert_eq!(parse(&zeros, 0).unwrap().0.len(), 1);
        // Records the database already holds are skipped: nothing to replay or keep.
        let (none, end) = parse(&log, 7).unwrap();
        assert!(none.is_empty());
        assert_eq!(end, 0);
    }

    #[test]
    fn a_record_that_checks_but_does_not_decode_is_corruption() {
        let mut record = encode(3, None, stored(&ops()));
        // An unknown operation tag, with the checksum made to match.
        record[HEADER + 4] = 99;
        reseal(&mut record, 3);
        assert!(matches!(
            parse(&record, 0),
            Err(StoreError::Corrupt { table: "wal", .. })
        ));
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }
}

/// Replay from a real file: records after the generation the database holds are applied once,
/// a torn tail is ignored, a record that checks but does not decode refuses the open.
#[cfg(test)]
mod replay_tests {
    use super::*;
    use crate::store::NewMessage;
    use crate::{Store, StoreConfig};
    use ferry_proto::types::{ChannelId, DeviceId, IdentityKey, MessageId};
    use redb::{Database, ReadableDatabase};
    use tests::{reseal, stored};

    fn message(id: u8) -> NewMessage {
        NewMessage {
            mailbox: MailboxAddr {
                recipient: IdentityKey::from_array([1; 32]),
                channel: ChannelId::from_array([0; 16]),
                device: DeviceId::from_field(b"", "d").unwrap_or_else(|_| unreachable!()),
            },
            message_id: MessageId::from_array([id; 16]),
            sender: None,
            payload: vec![id; 10],
            enqueued_at_ms: 1_000,
            expires_at_ms: 1_000_000,
        }
    }

    fn applied(path: &Path) -> u64 {
        let db = Database::open(path).unwrap();
        let rtx = db.begin_read().unwrap();
        let meta = rtx.open_table(crate::schema::META).unwrap();
        let got = meta
            .get(crate::schema::META_WAL_APPLIED)
            .unwrap()
            .map(|v| v.value());
        got.unwrap()
    }

    fn ids(store: &Store) -> Vec<(u64, u8)> {
        store
            .fetch(&message(0).mailbox, 0, 100, usize::MAX, 1_000)
            .unwrap()
            .iter()
            .map(|m| (m.seq, m.message_id.as_bytes()[0]))
            .collect()
    }

    /// A store holding message 1, closed cleanly: its path and the generation it holds.
    fn one_message_stored(dir: &tempfile::TempDir) -> (PathBuf, u64) {
        let path = dir.path().join("r.redb");
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        store.enqueue(message(1)).wait().unwrap();
        store.close();
        let g = applied(&path);
        (path, g)
    }

    #[test]
    fn a_log_written_before_a_crash_is_replayed_once() {
        let dir = tempfile::tempdir().unwrap();
        let (path, g) = one_message_stored(&dir);
        // What a crash leaves: two records the database does not hold (the second a retry of
        // the message stored before, and an ack of it), then a torn third.
        let mut log = encode(
            g + 1,
            None,
            stored(&[
                WriteOp::Enqueue(message(2).prepare()),
                WriteOp::EnqueueBatch(vec![message(3).prepare(), message(1).prepare()]),
            ]),
        );
        log.extend(encode(
            g + 2,
            None,
            stored(&[WriteOp::Ack {
                mailbox: message(0).mailbox,
                seq_up_to: 1,
            }]),
        ));
        let torn = encode(
            g + 3,
            None,
            stored(&[WriteOp::Enqueue(message(4).prepare())]),
        );
        log.extend(&torn[..torn.len() - 3]);
        std::fs::write(path_for(&path), &log).unwrap();

        let store = Store::open(&path, StoreConfig::default()).unwrap();
        assert_eq!(store.writer_stats().replayed_records, 2);
        assert_eq!(ids(&store), [(2, 2), (3, 3)]);
        // The retry was a duplicate then, and is one now.
        assert!(store.enqueue(message(1)).wait().unwrap().duplicate);
        assert_eq!(store.enqueue(message(4)).wait().unwrap().seq, 4);
        store.close();
        // Replayed once: the records are in the database now.
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        assert_eq!(store.writer_stats().replayed_records, 0);
        assert_eq!(ids(&store), [(2, 2), (3, 3), (4, 4)]);
        store.close();

        // A record whose checksum holds but whose operation is unknown: corruption.
        let g = applied(&path);
        let mut bad = encode(
            g + 1,
            None,
            stored(&[WriteOp::Enqueue(message(5).prepare())]),
        );
        if let Some(op) = bad.get_mut(HEADER + 4) {
            *op = 77;
        }
        reseal(&mut bad, g + 1);
        std::fs::write(path_for(&path), &bad).unwrap();
        let err = Store::open(&path, StoreConfig::default()).unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt { table: "wal", .. }),
            "{err}"
        );
    }

    #[test]
    fn an_acknowledged_enqueue_is_replayed_whatever_the_quotas_are_now() {
        let dir = tempfile::tempdir().unwrap();
        let (path, g) = one_message_stored(&dir);
        // A crash left two acknowledged enqueues in the log; then the operator lowered the
        // recipient's quota to one message before the restart.
        let log = encode(
            g + 1,
            None,
            stored(&[
                WriteOp::Enqueue(message(2).prepare()),
                WriteOp::EnqueueBatch(vec![message(3).prepare()]),
            ]),
        );
        std::fs::write(path_for(&path), &log).unwrap();
        let tight = StoreConfig {
            max_recipient_messages: 1,
            ..StoreConfig::default()
        };
        let store = Store::open(&path, tight.clone()).unwrap();
        assert_eq!(store.writer_stats().replayed_records, 1);
        assert_eq!(ids(&store), [(1, 1), (2, 2), (3, 3)]);
        // New messages meet the new limit.
        assert!(matches!(
            store.enqueue(message(4)).wait(),
            Err(StoreError::QuotaExceeded { .. })
        ));
        store.close();

        // An enqueue that was refused, or one from a log before the distinction (tags 1 and
        // 2), is replayed under the limits of the moment.
        let g = applied(&path);
        let mut old = encode(
            g + 1,
            None,
            stored(&[WriteOp::Enqueue(message(5).prepare())]),
        );
        old[HEADER + 4] = OP_ENQUEUE_REFUSED;
        reseal(&mut old, g + 1);
        std::fs::write(path_for(&path), &old).unwrap();
        let store = Store::open(&path, tight).unwrap();
        assert_eq!(store.writer_stats().replayed_records, 1);
        assert_eq!(ids(&store), [(1, 1), (2, 2), (3, 3)]);
        store.close();
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        assert_eq!(store.writer_stats().replayed_records, 0);
        assert_eq!(ids(&store), [(1, 1), (2, 2), (3, 3)]);
    }

    #[test]
    fn a_refused_enqueue_stays_refused_when_the_limits_were_raised() {
        let dir = tempfile::tempdir().unwrap();
        let (path, g) = one_message_stored(&dir);
        // Under a quota of one message: 2 refused (the mailbox is full), the ack of 1 makes
        // room, 3 stored as seq 2. Then a crash, and the operator raises the quota.
        let tight = StoreConfig {
            max_recipient_messages: 1,
            ..StoreConfig::default()
        };
        let ops = [
            WriteOp::Enqueue(message(2).prepare()),
            WriteOp::Ack {
                mailbox: message(0).mailbox,
                seq_up_to: 1,
            },
            WriteOp::Enqueue(message(3).prepare()),
        ];
        let log = encode(
            g + 1,
            Some(&Limits::of(&tight)),
            ops.iter().zip([false, false, true]),
        );
        std::fs::write(path_for(&path), &log).unwrap();
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        assert_eq!(store.writer_stats().replayed_records, 1);
        // 2 is not stored, and 3 keeps the seq it was answered with.
        assert_eq!(ids(&store), [(2, 3)]);
        assert_eq!(store.enqueue(message(2)).wait().unwrap().seq, 3);
    }

    #[test]
    fn the_writer_logs_its_limits_in_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.redb");
        let cfg = StoreConfig {
            max_recipient_messages: 1,
            checkpoint_idle: std::time::Duration::from_secs(3600),
            ..StoreConfig::default()
        };
        let store = Store::open(&path, cfg.clone()).unwrap();
        store.enqueue(message(1)).wait().unwrap();
        assert!(matches!(
            store.enqueue(message(2)).wait(),
            Err(StoreError::QuotaExceeded { .. })
        ));
        let (records, _) = parse(&read(&path_for(&path)).unwrap(), 0).unwrap();
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.limits == Some(Limits::of(&cfg))));
        assert_eq!(
            records
                .iter()
                .flat_map(|r| r.ops.iter().map(|l| l.stored))
                .collect::<Vec<_>>(),
            [true, false]
        );
        store.close();
    }
}
