//! Per-connection state: who it is, its delivery cursors, and its push budget.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use ferry_proto::types::{IdentityKey, MailboxAddr, Nonce};
use portable_atomic::{AtomicU32, Ordering};

/// Mailboxes a connection keeps delivery cursors for; past this the least recently created
/// cursor is dropped, which only means those messages are delivered again (never lost).
pub(crate) const MAX_CURSORS: usize = 64;
/// Mailboxes of one connection with a push in flight at once; pushes for further mailboxes
/// are skipped (they are hints: FetchWait and Fetch still deliver).
pub(crate) const MAX_PUSHES_IN_FLIGHT: usize = 32;
/// Concurrent request streams a new connection is granted. quinn keeps per-connection state
/// for every stream it permits, so idle clients get a small window; a connection that uses
/// three quarters of it is raised to the configured maximum (see [`ConnState::stream_opened`]).
pub(crate) const INITIAL_STREAMS: u32 = 16;
/// Long polls (FetchWait, BroadcastFetch) one connection may have waiting at once; a client
/// follows a few mailboxes and topics, not dozens.
pub(crate) const MAX_LONG_POLLS: u32 = 8;

#[derive(Debug, Default)]
struct Auth {
    identity: Option<IdentityKey>,
    challenge: Option<(Nonce, Instant)>,
}

/// Push bookkeeping of one connection: which mailboxes have a push in flight (and the newest
/// seq that arrived meanwhile), and which have a FetchWait pending (those need no push).
#[derive(Debug, Default)]
struct Pushes {
    in_flight: HashMap<MailboxAddr, Option<u64>>,
    long_polls: HashMap<MailboxAddr, u32>,
}

/// What to do about a new message for a connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushDecision {
    /// Open a push stream now.
    Send,
    /// Nothing: a long poll will see it, or the push in flight will be followed by another.
    Covered,
    /// Too many pushes in flight on this connection.
    Skip,
}

#[derive(Debug, Default)]
struct Cursors {
    map: HashMap<MailboxAddr, (u64, u64)>,
    next_age: u64,
}

/// One client connection.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(crate) id: u64,
    pub(crate) remote: SocketAddr,
    pub(crate) quic: quinn::Connection,
    auth: Mutex<Auth>,
    cursors: Mutex<Cursors>,
    pushes: Mutex<Pushes>,
    streams: AtomicU32,
    raised: portable_atomic::AtomicBool,
    long_polls: AtomicU32,
}

impl ConnState {
    pub(crate) fn new(id: u64, quic: quinn::Connection) -> Self {
        Self {
            id,
            remote: quic.remote_address(),
            quic,
            auth: Mutex::new(Auth::default()),
            cursors: Mutex::new(Cursors::default()),
            pushes: Mutex::new(Pushes::default()),
            streams: AtomicU32::new(0),
            raised: portable_atomic::AtomicBool::new(false),
            long_polls: AtomicU32::new(0),
        }
    }

    /// Counts an accepted request stream; the first time a connection has three quarters of
    /// its initial window in use, the window is raised to `max` (once, for good).
    pub(crate) fn stream_opened(&self, max: u32) {
        let open = self.streams.fetch_add(1, Ordering::AcqRel) + 1;
        if open >= INITIAL_STREAMS * 3 / 4
            && max > INITIAL_STREAMS
            && !self.raised.swap(true, Ordering::AcqRel)
        {
            self.quic.set_max_concurrent_bi_streams(max.into());
        }
    }

    /// Takes one of the connection's long-poll slots; false when all are taken.
    pub(crate) fn enter_long_poll(&self) -> bool {
        self.long_polls
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_LONG_POLLS).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a long-poll slot back.
    pub(crate) fn leave_long_poll(&self) {
        self.long_polls.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts a finished request stream.
    pub(crate) fn stream_closed(&self) {
        self.streams.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn identity(&self) -> Option<IdentityKey> {
        self.auth.lock().ok().and_then(|a| a.identity)
    }

    /// Binds the connection to `id`; true the first time (an identity never changes).
    pub(crate) fn set_identity(&self, id: IdentityKey) -> bool {
        match self.auth.lock() {
            Ok(mut a) => {
                a.challenge = None;
                a.identity.replace(id).is_none()
            }
            Err(_) => false,
        }
    }

    /// Stores a fresh challenge, replacing any earlier one.
    pub(crate) fn set_challenge(&self, nonce: Nonce, expires: Instant) {
        if let Ok(mut a) = self.auth.lock() {
            a.challenge = Some((nonce, expires));
        }
    }

    /// Takes the pending challenge: it can be answered once, right or wrong.
    pub(crate) fn take_challenge(&self) -> Option<(Nonce, Instant)> {
        self.auth.lock().ok().and_then(|mut a| a.challenge.take())
    }

    /// Runs `f` with the delivery cursor of `mailbox` (0 when none), and stores the cursor it
    /// returns. The lock is held for the duration, so concurrent Fetches on one connection
    /// never hand out the same messages twice.
    pub(crate) fn with_cursor<T, E>(
        &self,
        mailbox: &MailboxAddr,
        f: impl FnOnce(u64) -> Result<(T, u64), E>,
    ) -> Result<T, E> {
        let mut guard = match self.cursors.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let current = guard.map.get(mailbox).map(|(c, _)| *c).unwrap_or(0);
        let (out, next) = f(current)?;
        if next != current {
            if !guard.map.contains_key(mailbox) && guard.map.len() >= MAX_CURSORS {
                let oldest = guard
                    .map
                    .iter()
                    .min_by_key(|(_, (_, age))| *age)
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    guard.map.remove(&k);
                }
            }
            guard.next_age += 1;
            let age = guard.next_age;
            guard.map.insert(*mailbox, (next, age));
        }
        Ok(out)
    }

    fn pushes(&self) -> std::sync::MutexGuard<'_, Pushes> {
        match self.pushes.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Decides whether message `seq` of `mailbox` needs a push stream on this connection.
    pub(crate) fn push_decision(&self, mailbox: &MailboxAddr, seq: u64) -> PushDecision {
        let mut p = self.pushes();
        if p.long_polls.get(mailbox).is_some_and(|n| *n > 0) {
            return PushDecision::Covered;
        }
        if let Some(latest) = p.in_flight.get_mut(mailbox) {
            *latest = Some(latest.map_or(seq, |l| l.max(seq)));
            return PushDecision::Covered;
        }
        if p.in_flight.len() >= MAX_PUSHES_IN_FLIGHT {
            return PushDecision::Skip;
        }
        p.in_flight.insert(*mailbox, None);
        PushDecision::Send
    }

    /// Ends the push in flight for `mailbox`; returns the newest seq that arrived meanwhile,
    /// which the caller pushes next (the slot stays taken until then).
    pub(crate) fn push_done(&self, mailbox: &MailboxAddr) -> Option<u64> {
        let mut p = self.pushes();
        match p.in_flight.get_mut(mailbox) {
            Some(latest) => match latest.take() {
                Some(next) => Some(next),
                None => {
                    p.in_flight.remove(mailbox);
                    None
                }
            },
            None => None,
        }
    }

    /// Marks a FetchWait on `mailbox` as pending (pushes for it are unnecessary meanwhile).
    pub(crate) fn long_poll_started(&self, mailbox: &MailboxAddr) {
        *self.pushes().long_polls.entry(*mailbox).or_insert(0) += 1;
    }

    pub(crate) fn long_poll_ended(&self, mailbox: &MailboxAddr) {
        let mut p = self.pushes();
        if let Some(n) = p.long_polls.get_mut(mailbox) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                p.long_polls.remove(mailbox);
            }
        }
    }
}
