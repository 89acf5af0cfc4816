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
/// Push streams a connection may have open at once; further pushes are skipped (they are
/// hints: FetchWait and Fetch still deliver).
pub(crate) const MAX_PUSHES_IN_FLIGHT: u32 = 32;

#[derive(Debug, Default)]
struct Auth {
    identity: Option<IdentityKey>,
    challenge: Option<(Nonce, Instant)>,
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
    pushes: AtomicU32,
}

impl ConnState {
    pub(crate) fn new(id: u64, quic: quinn::Connection) -> Self {
        Self {
            id,
            remote: quic.remote_address(),
            quic,
            auth: Mutex::new(Auth::default()),
            cursors: Mutex::new(Cursors::default()),
            pushes: AtomicU32::new(0),
        }
    }

    pub(crate) fn identity(&self) -> Option<IdentityKey> {
        self.auth.lock().ok().and_then(|a| a.identity)
    }

    pub(crate) fn set_identity(&self, id: IdentityKey) {
        if let Ok(mut a) = self.auth.lock() {
            a.identity = Some(id);
            a.challenge = None;
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

    /// Reserves a push slot; `false` when the connection has too many pushes in flight.
    pub(crate) fn try_begin_push(&self) -> bool {
        let prev = self.pushes.fetch_add(1, Ordering::AcqRel);
        if prev >= MAX_PUSHES_IN_FLIGHT {
            self.pushes.fetch_sub(1, Ordering::AcqRel);
            false
        } else {
            true
        }
    }

    pub(crate) fn end_push(&self) {
        self.pushes.fetch_sub(1, Ordering::AcqRel);
    }
}
