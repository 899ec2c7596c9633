//! Per-key token buckets: the per-caller request rate limit and the limit on failed password checks.

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

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.capacity);
        bucket.updated = now;
    }

    /// Takes one token for `key`.
    pub fn take(&self, key: &str) -> Admission {
        self.take_at(key, Instant::now())
    }

    fn take_at(&self, key: &str, now: Instant) -> Admission {
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
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Admission::Allowed {
                remaining: bucket.tokens as u64,
            }
        } else {
            Admission::Limited {
                retry_after: Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second),
            }
        }
    }

    /// Whether `key` has a token left, without taking it.
    pub fn has_token(&self, key: &str) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match buckets.get_mut(key) {
            Some(bucket) => {
                self.refill(bucket, Instant::now());
                bucket.tokens >= 1.0
            }
            None => true,
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
            assert_eq!(limiter.take_at("a", t0), Admission::Allowed { remaining });
        }
        match limiter.take_at("a", t0) {
            Admission::Limited { retry_after } => assert_eq!(retry_after, Duration::from_millis(500)),
            other => panic!("expected a limit, got {other:?}"),
        }
        assert!(
            matches!(limiter.take_at("b", t0), Admission::Allowed { .. }),
            "keys are independent"
        );
        assert!(matches!(
            limiter.take_at("a", t0 + Duration::from_millis(500)),
            Admission::Allowed { .. }
        ));
    }
}
