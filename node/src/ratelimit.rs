//! Per-IP token buckets. The table of IPs is bounded; when it is full, idle (refilled)
//! buckets are dropped first, and if none are idle a new IP is limited until room appears.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    cap: usize,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub(crate) fn new(per_sec: u32, burst: u32, cap: usize) -> Self {
        Self {
            rate: f64::from(per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            cap: cap.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` has a token now (without taking it).
    pub(crate) fn has_token(&self, ip: IpAddr, now: Instant) -> bool {
        let Ok(map) = self.buckets.lock() else {
            return true;
        };
        match map.get(&ip) {
            Some((tokens, last)) => {
                let elapsed = now.saturating_duration_since(*last).as_secs_f64();
                (*tokens + elapsed * self.rate).min(self.burst) >= 1.0
            }
            None => map.len() < self.cap || self.burst >= 1.0,
        }
    }

    /// Takes one token for `ip`, or says how long until one is available.
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let Ok(mut map) = self.buckets.lock() else {
            return Ok(());
        };
        if !map.contains_key(&ip) && map.len() >= self.cap {
            let full_after = Duration::from_secs_f64(self.burst / self.rate);
            map.retain(|_, (_, last)| now.saturating_duration_since(*last) < full_after);
            if map.len() >= self.cap {
                return Err(Duration::from_secs(1));
            }
        }
        let (tokens, last) = map.entry(ip).or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let r = RateLimiter::new(10, 20, 100);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..20 {
            assert!(r.check(ip, t0).is_ok());
        }
        let wait = r.check(ip, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(r.check(ip, t0 + Duration::from_millis(100)).is_ok());
        // Another IP has its own bucket.
        assert!(r.check("10.0.0.2".parse().unwrap(), t0).is_ok());
    }

    #[test]
    fn table_is_bounded() {
        let r = RateLimiter::new(10, 20, 2);
        let t0 = Instant::now();
        assert!(r.check("10.0.0.1".parse().unwrap(), t0).is_ok());
        assert!(r.check("10.0.0.2".parse().unwrap(), t0).is_ok());
        assert!(r.check("10.0.0.3".parse().unwrap(), t0).is_err());
        // Once the others are idle long enough to be full again, they make room.
        assert!(
            r.check("10.0.0.3".parse().unwrap(), t0 + Duration::from_secs(3))
                .is_ok()
        );
    }
}
