//! Per-key token buckets: the per-caller request rate limit (which passwords to hash also pay into), the limit
//! on failed password checks and the limit on unique-value conflicts a self-service caller is told about.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many keys a limiter tracks before it forgets idle ones; bounds memory against callers that rotate keys
/// (addresses, subjects).
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The outcome of taking a token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    Allowed {
        remaining: u64,
    },
    /// Refused; a token will be available after this long.
    Limited {
        retry_after: Duration,
    },
}

/// Token buckets of `capacity` tokens refilled at `per_second`, one per key.
pub struct RateLimiter {
    capacity: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_second: f64, capacity: u32) -> RateLimiter {
        RateLimiter {
            capacity: f64::from(capacity.max(1)),
            per_second: per_second.max(f64::MIN_POSITIVE),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity as u64
    }

    /// How long an empty bucket takes to fill.
    pub fn refill_time(&self) -> Duration {
        wait(self.capacity / self.per_second)
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.capacity);
        bucket.updated = now;
    }

    /// Takes one token for `key`.
    pub fn take(&self, key: &str) -> Admission {
        self.take_n_at(key, 1, Instant::now())
    }

    /// Takes `n` tokens for `key`, all or none: work that costs `n` is paid in full before it starts. When `n`
    /// is more than the capacity the bucket can never pay; the wait given is then the time to fill it.
    pub fn take_n(&self, key: &str, n: u32) -> Admission {
        self.take_n_at(key, n, Instant::now())
    }

    fn take_n_at(&self, key: &str, n: u32, now: Instant) -> Admission {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            // Full buckets carry no state worth keeping.
            let (capacity, per_second) = (self.capacity, self.per_second);
            buckets.retain(|_, b| {
                let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
                b.tokens + elapsed * per_second < capacity
            });
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.capacity,
            updated: now,
        });
        self.refill(bucket, now);
        let cost = f64::from(n);
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            Admission::Allowed {
                remaining: bucket.tokens as u64,
            }
        } else {
            let missing = cost.min(self.capacity) - bucket.tokens;
            Admission::Limited {
                retry_after: wait(missing.max(0.0) / self.per_second),
            }
        }
    }

    /// Takes one token for `key` as a reservation that goes back to the bucket unless it is
    /// [spent](Reservation::spend): an attempt is counted before its outcome is known (so concurrent attempts
    /// cannot all pass a check made before any of them failed), and only the outcomes that count keep it.
    /// `Err` holds how long until a token is free.
    pub fn reserve(&self, key: &str) -> Result<Reservation<'_>, Duration> {
        match self.take(key) {
            Admission::Allowed { .. } => Ok(Reservation {
                limiter: self,
                key: key.to_owned(),
                spent: false,
            }),
            Admission::Limited { retry_after } => Err(retry_after),
        }
    }

    /// Puts one token back (never above the capacity).
    fn give_back(&self, key: &str) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.get_mut(key) {
            self.refill(bucket, Instant::now());
            bucket.tokens = (bucket.tokens + 1.0).min(self.capacity);
        }
    }
}

/// `seconds` as a wait; a rate so low that the wait overflows is a wait of about a century.
fn wait(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds).unwrap_or(Duration::from_secs(u64::from(u32::MAX)))
}

/// The key of a caller's request budget: the per-caller rate limit spends it per request, and work that costs
/// more than a request (a password to hash) spends more of it.
pub fn caller_key(subject: &str) -> String {
    format!("sub:{subject}")
}

/// One token taken by [`RateLimiter::reserve`]; dropping it gives the token back, [`Reservation::spend`]
/// keeps it taken. A call that is cancelled (deadline, client gone) drops it: what it never learned is not
/// counted.
pub struct Reservation<'a> {
    limiter: &'a RateLimiter,
    key: String,
    spent: bool,
}

impl Reservation<'_> {
    /// Counts the attempt for good.
    pub fn spend(mut self) {
        self.spent = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.spent {
            self.limiter.give_back(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_up_to_capacity_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for remaining in [2, 1, 0] {
            assert_eq!(limiter.take_n_at("a", 1, t0), Admission::Allowed { remaining });
        }
        match limiter.take_n_at("a", 1, t0) {
            Admission::Limited { retry_after } => assert_eq!(retry_after, Duration::from_millis(500)),
            other => panic!("expected a limit, got {other:?}"),
        }
        assert!(
            matches!(limiter.take_n_at("b", 1, t0), Admission::Allowed { .. }),
            "keys are independent"
        );
        assert!(matches!(
            limiter.take_n_at("a", 1, t0 + Duration::from_millis(500)),
            Admission::Allowed { .. }
        ));
    }

    #[test]
    fn several_tokens_are_taken_all_or_none() {
        let limiter = RateLimiter::new(1.0, 5);
        let t0 = Instant::now();
        assert_eq!(limiter.take_n_at("a", 3, t0), Admission::Allowed { remaining: 2 });
        match limiter.take_n_at("a", 3, t0) {
            Admission::Limited { retry_after } => assert_eq!(retry_after, Duration::from_secs(1)),
            other => panic!("expected a limit, got {other:?}"),
        }
        // The refused request took nothing.
        assert_eq!(limiter.take_n_at("a", 2, t0), Admission::Allowed { remaining: 0 });
        // More than the capacity never passes; the wait given is the time to fill the bucket.
        match limiter.take_n_at("b", 6, t0) {
            Admission::Limited { retry_after } => assert_eq!(retry_after, Duration::ZERO),
            other => panic!("expected a limit, got {other:?}"),
        }
    }

    #[test]
    fn reservations_come_back_unless_spent() {
        let limiter = RateLimiter::new(1e-9, 2);
        let first = limiter.reserve("a").expect("a token");
        let second = limiter.reserve("a").expect("a token");
        assert!(limiter.reserve("a").is_err(), "both tokens are out");
        drop(first);
        let third = limiter.reserve("a").expect("the dropped reservation came back");
        third.spend();
        second.spend();
        assert!(limiter.reserve("a").is_err(), "spent tokens stay taken");
    }
}
