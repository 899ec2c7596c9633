//! The cache of verified bearer tokens: a token whose signature and claims were checked once is recognised by its
//! exact bytes on later calls, so the gate does not re-verify the signature (and re-parse the claims) each time.
//!
//! A hit is still checked against the clock: `exp` and `nbf` are compared on every hit with the verifier's
//! leeway, so a cached token stops working exactly when an uncached one would. The key is the whole token, not
//! a hash of it: two tokens that differ in any byte (another signature, another key) are two keys, and no
//! collision can hand one token's caller to another. Size is bounded by entries and bytes; the oldest entry
//! goes first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::domain::caller::Caller;

/// Most tokens held at once.
pub const MAX_ENTRIES: usize = 4096;
/// Most bytes (tokens plus their callers' strings) held at once: the cache stays a few MiB whatever clients send.
pub const MAX_BYTES: usize = 4 << 20;
/// Longer tokens are verified every time rather than cached: one must not take a large share of the budget.
pub const MAX_TOKEN_BYTES: usize = 4096;

struct Entry {
    caller: Caller,
    exp: u64,
    nbf: Option<u64>,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Box<str>, Entry>,
    /// Insertion order, for eviction; holds exactly the keys of `entries`.
    order: VecDeque<Box<str>>,
    bytes: usize,
}

/// Verified tokens, shared by every connection (the gate holds one verifier).
pub struct TokenCache {
    inner: Mutex<Inner>,
    leeway: u64,
    max_entries: usize,
    max_bytes: usize,
}

impl TokenCache {
    /// A cache whose hits honour `exp`/`nbf` with `leeway` seconds of clock skew, as verification does.
    pub fn new(leeway: u64) -> TokenCache {
        TokenCache::with_bounds(leeway, MAX_ENTRIES, MAX_BYTES)
    }

    pub fn with_bounds(leeway: u64, max_entries: usize, max_bytes: usize) -> TokenCache {
        TokenCache {
            inner: Mutex::new(Inner::default()),
            leeway,
            max_entries: max_entries.max(1),
            max_bytes,
        }
    }

    /// The caller of `token` if it was verified before and is still within its validity at `now` (seconds since
    /// the epoch). A cached token outside its validity is a miss: verification then gives the refusal's reason.
    pub fn get(&self, token: &str, now: u64) -> Option<Caller> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let entry = inner.entries.get(token)?;
        // The same comparisons as verification: expired when exp < now - leeway, early when nbf > now + leeway.
        if entry.exp < now.saturating_sub(self.leeway) {
            return None;
        }
        if entry.nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return None;
        }
        Some(entry.caller.clone())
    }

    /// Remembers a token that has just been verified, with its `exp` and `nbf`.
    pub fn insert(&self, token: &str, caller: &Caller, exp: u64, nbf: Option<u64>) {
        if token.len() > MAX_TOKEN_BYTES {
            return;
        }
        let bytes = token.len() + caller.subject.len() + caller.scopes.iter().map(String::len).sum::<usize>();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.entries.contains_key(token) {
            // Another connection verified it at the same time; its entry is as good.
            return;
        }
        while !inner.order.is_empty()
            && (inner.entries.len() >= self.max_entries || inner.bytes + bytes > self.max_bytes)
        {
            if let Some(oldest) = inner.order.pop_front()
                && let Some(gone) = inner.entries.remove(&oldest)
            {
                inner.bytes -= gone.bytes;
            }
        }
        if bytes > self.max_bytes {
            return;
        }
        let key: Box<str> = token.into();
        inner.order.push_back(key.clone());
        inner.entries.insert(
            key,
            Entry {
                caller: caller.clone(),
                exp,
                nbf,
                bytes,
            },
        );
        inner.bytes += bytes;
    }

    /// (entries, bytes) held now.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (inner.entries.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(sub: &str) -> Caller {
        Caller {
            subject: sub.into(),
            scopes: vec!["users.read".into()],
        }
    }

    #[test]
    fn a_hit_returns_the_same_caller_until_exp_plus_leeway() {
        let cache = TokenCache::new(30);
        cache.insert("a.b.c", &caller("alice"), 1_000, None);
        assert_eq!(cache.get("a.b.c", 900), Some(caller("alice")));
        assert_eq!(cache.get("a.b.c", 1_030), Some(caller("alice")), "within the leeway");
        assert_eq!(cache.get("a.b.c", 1_031), None, "past exp and leeway");
        assert_eq!(cache.get("a.b.c", 5_000), None);
    }

    #[test]
    fn a_hit_before_nbf_is_refused() {
        let cache = TokenCache::new(30);
        cache.insert("a.b.c", &caller("alice"), 10_000, Some(1_000));
        assert_eq!(cache.get("a.b.c", 969), None, "before nbf minus leeway");
        assert_eq!(cache.get("a.b.c", 970), Some(caller("alice")));
    }

    #[test]
    fn only_the_exact_token_is_a_hit() {
        let cache = TokenCache::new(30);
        cache.insert("head.claims.sig1", &caller("alice"), u64::MAX, None);
        assert_eq!(cache.get("head.claims.sig2", 0), None);
        assert_eq!(cache.get("head.claims.sig", 0), None);
        assert_eq!(cache.get("head.claims.sig1 ", 0), None);
    }

    #[test]
    fn the_bounds_hold_and_the_oldest_goes_first() {
        let cache = TokenCache::with_bounds(30, 100, 1 << 20);
        for i in 0..1_000 {
            cache.insert(&format!("token-{i}"), &caller("bob"), u64::MAX, None);
            assert!(cache.size().0 <= 100);
        }
        assert_eq!(cache.get("token-0", 0), None, "evicted");
        assert_eq!(cache.get("token-999", 0), Some(caller("bob")));
        assert_eq!(cache.get("token-900", 0), Some(caller("bob")));
        assert_eq!(cache.get("token-899", 0), None);

        let cache = TokenCache::with_bounds(30, 1_000_000, 10_000);
        let long = "x".repeat(1_000);
        for i in 0..100 {
            cache.insert(&format!("{long}{i}"), &caller("bob"), u64::MAX, None);
            assert!(cache.size().1 <= 10_000);
        }
        assert!(cache.size().0 < 10);
        cache.insert(&"y".repeat(MAX_TOKEN_BYTES + 1), &caller("bob"), u64::MAX, None);
        assert_eq!(
            cache.get(&"y".repeat(MAX_TOKEN_BYTES + 1), 0),
            None,
            "too long to cache"
        );
    }
}
