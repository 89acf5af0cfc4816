//! What one client can make the node hold, and how much the node holds at most.
//!
//! Everything a client can make the node keep (connections, requests in flight, long polls,
//! request bytes, answer bytes) is counted against a node-wide pool and against the share of
//! the client's address, so that one address (one host, or the hosts behind one NAT) cannot
//! take a pool from everyone else. A used-up share refuses at once, with a retry hint; a
//! used-up pool makes a request wait, up to a deadline. The figures, with their defaults, are
//! in `docs/limits.md`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Units held per address, each address capped. Addresses holding nothing take no room.
#[derive(Debug)]
pub(crate) struct Shares {
    cap: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl Shares {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The most one address may hold.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Takes `n` units for `ip`; `None` when that would pass its cap.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr, n: usize) -> Option<Share> {
        self.take_up_to(ip, n, n)
    }

    /// Takes as much of `want` as `ip` has left, but at least `min`; `None` when it has less.
    pub(crate) fn take_up_to(
        self: &Arc<Self>,
        ip: IpAddr,
        min: usize,
        want: usize,
    ) -> Option<Share> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let used = held.get(&ip).copied().unwrap_or(0);
        let left = self.cap.saturating_sub(used);
        if left < min {
            return None;
        }
        let n = want.min(left);
        if n > 0 {
            *held.entry(ip).or_insert(0) += n;
        }
        Some(Share {
            shares: Arc::clone(self),
            ip,
            n,
        })
    }

    /// What `ip` holds now.
    pub(crate) fn held(&self, ip: IpAddr) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }

    fn grow(&self, ip: IpAddr, more: usize) -> bool {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let used = held.entry(ip).or_insert(0);
        if used.saturating_add(more) > self.cap {
            if *used == 0 {
                held.remove(&ip);
            }
            return false;
        }
        *used += more;
        true
    }

    fn give_back(&self, ip: IpAddr, n: usize) {
        if n == 0 {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(used) = held.get_mut(&ip) {
            *used = used.saturating_sub(n);
            if *used == 0 {
                held.remove(&ip);
            }
        }
    }
}

/// Units of one address's share; given back on drop.
#[derive(Debug)]
pub(crate) struct Share {
    shares: Arc<Shares>,
    ip: IpAddr,
    n: usize,
}

impl Share {
    pub(crate) fn units(&self) -> usize {
        self.n
    }

    /// Takes `more` units too, unless that passes the address's cap.
    pub(crate) fn grow(&mut self, more: usize) -> bool {
        let ok = self.shares.grow(self.ip, more);
        if ok {
            self.n += more;
        }
        ok
    }

    /// Gives back all but `n` units.
    pub(crate) fn shrink_to(&mut self, n: usize) {
        if n < self.n {
            self.shares.give_back(self.ip, self.n - n);
            self.n = n;
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.shares.give_back(self.ip, self.n);
    }
}

/// Why bytes of a pool were not granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The client's address holds its share.
    Share,
    /// The node-wide pool stayed used up until the deadline.
    Busy,
}

/// A node-wide pool of bytes with a share per address. Bytes of requests that may be large
/// (more than [`BytePool::SMALL`]) come from a part of the pool only, so that a few large
/// requests never hold back the small ones (a chat line, an acknowledgement).
#[derive(Debug)]
pub(crate) struct BytePool {
    all: Arc<Semaphore>,
    large: Arc<Semaphore>,
    shares: Arc<Shares>,
    total: usize,
}

/// Bytes held of a [`BytePool`]; given back on drop.
#[derive(Debug)]
pub(crate) struct Held {
    share: Share,
    all: Option<OwnedSemaphorePermit>,
    /// Whether the bytes count against the large requests' part too, and its permits.
    large: Option<Option<OwnedSemaphorePermit>>,
}

/// Permits of both semaphores, taken together.
type Permits = (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>);

impl BytePool {
    /// What counts as small: never waits behind large requests.
    pub(crate) const SMALL: usize = 64 * 1024;

    /// A pool of `total` bytes (at least `min_share`), each address holding at most a quarter
    /// of it but never less than `min_share`, and large requests at most three quarters.
    pub(crate) fn new(total: usize, min_share: usize) -> Self {
        let total = total.clamp(min_share, Semaphore::MAX_PERMITS);
        Self {
            all: Arc::new(Semaphore::new(total)),
            large: Arc::new(Semaphore::new(total - total / 4)),
            shares: Shares::new((total / 4).max(min_share)),
            total,
        }
    }

    /// The whole pool.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// What one address may hold.
    pub(crate) fn per_address(&self) -> usize {
        self.shares.cap()
    }

    /// What `ip` holds now.
    pub(crate) fn held_by(&self, ip: IpAddr) -> usize {
        self.shares.held(ip)
    }

    /// Nothing yet: a holder to [`BytePool::grow`] as bytes arrive. `large`: its bytes count
    /// against the part of the pool that large requests may use.
    pub(crate) fn empty(&self, ip: IpAddr, large: bool) -> Held {
        Held {
            share: Share {
                shares: Arc::clone(&self.shares),
                ip,
                n: 0,
            },
            all: None,
            large: large.then_some(None),
        }
    }

    /// Takes as much of `want` as the address's share and the pool have now, and at least
    /// `min` (which must be above 0): the share refuses at once when it has less than `min`
    /// left; the pool is waited for, until `deadline`. `large`: the bytes count against the
    /// part of the pool that large requests may use.
    pub(crate) async fn take(
        &self,
        ip: IpAddr,
        min: usize,
        want: usize,
        large: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Held, Refusal> {
        let mut held = self.empty(ip, large);
        let Some(share) = self.shares.take_up_to(ip, min, want.max(min)) else {
            return Err(Refusal::Share);
        };
        held.share = share;
        let mut free = self.all.available_permits();
        if large {
            free = free.min(self.large.available_permits());
        }
        let now = free.clamp(min, held.share.units());
        let permits = match self.try_both(now, large) {
            Some(p) => p,
            None => self.wait(min, large, deadline).await?,
        };
        let granted = permits.0.num_permits();
        held.add(permits);
        held.share.shrink_to(granted);
        Ok(held)
    }

    fn try_both(&self, n: usize, large: bool) -> Option<Permits> {
        let l = if large {
            Some(try_permits(&self.large, n)?)
        } else {
            None
        };
        Some((try_permits(&self.all, n)?, l))
    }

    async fn wait(
        &self,
        n: usize,
        large: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Permits, Refusal> {
        let n32 = u32::try_from(n).map_err(|_| Refusal::Busy)?;
        let acquire = async {
            let l = if large {
                let l = Arc::clone(&self.large).acquire_many_owned(n32).await;
                Some(l.map_err(|_| Refusal::Busy)?)
            } else {
                None
            };
            let a = Arc::clone(&self.all).acquire_many_owned(n32).await;
            Ok((a.map_err(|_| Refusal::Busy)?, l))
        };
        tokio::time::timeout_at(deadline, acquire)
            .await
            .unwrap_or(Err(Refusal::Busy))
    }

    /// Adds `more` bytes to `held` if the share and the pool have them now.
    pub(crate) fn try_grow(&self, held: &mut Held, more: usize) -> bool {
        if more == 0 {
            return true;
        }
        if !held.share.grow(more) {
            return false;
        }
        match self.try_both(more, held.large.is_some()) {
            Some(p) => {
                held.add(p);
                true
            }
            None => {
                let n = held.share.units() - more;
                held.share.shrink_to(n);
                false
            }
        }
    }
}

impl Held {
    /// Bytes held.
    pub(crate) fn len(&self) -> usize {
        self.all
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    fn add(&mut self, (all, large): Permits) {
        match &mut self.all {
            Some(mine) => mine.merge(all),
            None => self.all = Some(all),
        }
        if let (Some(slot), Some(l)) = (self.large.as_mut(), large) {
            match slot {
                Some(mine) => mine.merge(l),
                None => *slot = Some(l),
            }
        }
    }

    /// Gives back all but `n` bytes.
    pub(crate) fn shrink_to(&mut self, n: usize) {
        let held = self.len();
        if n >= held {
            return;
        }
        let extra = held - n;
        if let Some(all) = self.all.as_mut() {
            drop(all.split(extra));
        }
        if let Some(Some(l)) = self.large.as_mut() {
            drop(l.split(extra.min(l.num_permits())));
        }
        self.share.shrink_to(n);
    }
}

fn try_permits(s: &Arc<Semaphore>, n: usize) -> Option<OwnedSemaphorePermit> {
    Arc::clone(s)
        .try_acquire_many_owned(u32::try_from(n).ok()?)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn shares_are_capped_per_address_and_given_back() {
        let s = Shares::new(3);
        let a = s.take(ip(1), 2).unwrap();
        assert!(s.take(ip(1), 2).is_none());
        let b = s.take(ip(2), 3).unwrap();
        assert_eq!(s.take_up_to(ip(1), 1, 5).unwrap().units(), 1);
        assert_eq!(s.held(ip(1)), 2, "the temporary one was given back");
        drop((a, b));
        assert_eq!((s.held(ip(1)), s.held(ip(2))), (0, 0));
        assert!(s.held.lock().unwrap().is_empty(), "no room taken");
    }

    #[tokio::test]
    async fn a_pool_grants_what_it_has_and_keeps_room_for_small_requests() {
        let p = BytePool::new(400, 10);
        assert_eq!(p.per_address(), 100);
        let far = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        // One address gets its share, not more.
        let a = p.take(ip(1), 10, 1_000, true, far).await.unwrap();
        assert_eq!(a.len(), 100);
        assert_eq!(
            p.take(ip(1), 10, 10, false, far).await.unwrap_err(),
            Refusal::Share
        );
        // Large requests stop at three quarters of the pool...
        let b = p.take(ip(2), 10, 100, true, far).await.unwrap();
        let c = p.take(ip(3), 10, 100, true, far).await.unwrap();
        assert_eq!(
            p.take(ip(4), 10, 100, true, far).await.unwrap_err(),
            Refusal::Busy
        );
        // ... and small ones still get the rest.
        let d = p.take(ip(5), 10, 100, false, far).await.unwrap();
        assert_eq!(d.len(), 100);
        drop((a, b, c, d));
        let mut e = p.empty(ip(1), false);
        assert_eq!(e.len(), 0);
        assert!(p.try_grow(&mut e, 60));
        assert!(p.try_grow(&mut e, 40));
        assert!(!p.try_grow(&mut e, 1), "past the share");
        e.shrink_to(10);
        assert_eq!((e.len(), p.held_by(ip(1))), (10, 10));
    }
}
