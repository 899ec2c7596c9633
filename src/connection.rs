//! What one client connection may hold: its account of undelivered response bytes and their deadlines, the
//! watchdog verdict that drops a connection whose client stopped reading or closes one left idle, the budget
//! that makes new requests wait while their connection holds too much, and accept-error pacing.
//!
//! hyper's HTTP/2 server stops polling a response body while the stream has no send window, so a deadline inside
//! the body would never fire for a client that stops reading; the deadline is therefore watched from the
//! connection's own task, which drops the whole connection (and with it every stream and buffered byte).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::gate::PeerAddr;

/// Largest piece of a response handed to hyper at once. hyper takes the next piece only once the previous one
/// found send window, so the bytes still held here are the bytes the client has not taken.
const SLICE_BYTES: usize = 16 * 1024;
/// A fresh connection guesses its next answer at this fraction of its budget: it runs this many calls at once
/// before its first answers teach it how large its answers are (each smaller answer halves the guess).
const INITIAL_SHARE: usize = 32;
/// A connection may hold at most this many budgets undelivered; an answer that would pass it is not kept (its
/// stream is reset). Calls admitted together before any answer arrived can otherwise all turn out large.
const CEILING_BUDGETS: usize = 2;

/// Why the watchdog wants a connection gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No request in flight for the idle timeout: close gracefully.
    Idle,
    /// A response was still undelivered past its deadline: drop the connection.
    Expired,
}

/// One connection's account.
pub struct Account {
    budget: usize,
    state: Mutex<State>,
    /// Wakes the connection's watchdog (a single waiter; `notify_one` keeps a permit, so no wake-up is lost).
    watchdog: Notify,
    /// Wakes requests waiting for budget.
    freed: Notify,
}

struct State {
    /// Response bytes taken from handlers and not yet handed to the client's stream.
    held: usize,
    /// Calls admitted whose answers have not arrived yet.
    admitted: usize,
    /// The expected size of the next answer: jumps to a larger answer at once, halves towards smaller ones.
    estimate: usize,
    /// Deadlines of undelivered chunks, with an id each to tell equal instants apart.
    deadlines: BTreeSet<(Instant, u64)>,
    next_id: u64,
    /// Requests in flight (from their headers until their response body ends).
    active: usize,
    idle_since: Instant,
}

impl Account {
    /// An account for a new connection that may hold `budget` undelivered response bytes.
    pub fn new(budget: usize) -> Arc<Account> {
        let budget = budget.max(1);
        Arc::new(Account {
            budget,
            state: Mutex::new(State {
                held: 0,
                admitted: 0,
                estimate: (budget / INITIAL_SHARE).max(1),
                deadlines: BTreeSet::new(),
                next_id: 0,
                active: 0,
                idle_since: Instant::now(),
            }),
            watchdog: Notify::new(),
            freed: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned lock still holds consistent counts.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Response bytes the connection holds undelivered.
    pub fn held_bytes(&self) -> usize {
        self.state().held
    }

    fn begin(self: &Arc<Self>) -> Active {
        self.state().active += 1;
        Active(self.clone())
    }

    /// Counts an answer's chunk as held until `release`; `None` when it would take the connection past its
    /// ceiling (a connection holding nothing always takes one).
    fn charge(&self, bytes: usize, deadline: Instant) -> Option<u64> {
        let mut state = self.state();
        if state.held > 0 && state.held.saturating_add(bytes) > self.budget.saturating_mul(CEILING_BUDGETS) {
            return None;
        }
        state.held += bytes;
        state.estimate = if bytes >= state.estimate {
            bytes
        } else {
            (state.estimate + bytes) / 2
        }
        .max(1);
        let id = state.next_id;
        state.next_id += 1;
        let earliest = state.deadlines.first().is_none_or(|first| deadline < first.0);
        state.deadlines.insert((deadline, id));
        drop(state);
        if earliest {
            self.watchdog.notify_one();
        }
        Some(id)
    }

    fn release(&self, id: u64, deadline: Instant, bytes: usize) {
        let mut state = self.state();
        state.held = state.held.saturating_sub(bytes);
        state.deadlines.remove(&(deadline, id));
        drop(state);
        self.freed.notify_waiters();
    }

    /// Room for one more call: the bytes held plus the expected answers of the admitted calls and this one fit
    /// the budget. With nothing admitted a call runs whenever less than the budget is held, so each connection
    /// always makes progress; what calls admitted together turn out to hold is capped by the ceiling.
    fn try_admit(&self) -> bool {
        let mut state = self.state();
        if state.held >= self.budget {
            return false;
        }
        let expected = state
            .held
            .saturating_add(state.estimate.saturating_mul(state.admitted + 1));
        if state.admitted > 0 && expected > self.budget {
            return false;
        }
        state.admitted += 1;
        true
    }

    fn unadmit(&self) {
        let mut state = self.state();
        state.admitted = state.admitted.saturating_sub(1);
        drop(state);
        self.freed.notify_waiters();
    }

    /// Resolves when the connection should go: a response undelivered past its deadline, or (with
    /// `idle_timeout`) no request in flight for that long.
    pub async fn verdict(&self, idle_timeout: Option<Duration>) -> Verdict {
        loop {
            let now = Instant::now();
            let wake = {
                let state = self.state();
                let deadline = state.deadlines.first().map(|d| d.0);
                if deadline.is_some_and(|d| d <= now) {
                    return Verdict::Expired;
                }
                let idle_at = idle_timeout
                    .filter(|_| state.active == 0)
                    .map(|timeout| state.idle_since + timeout);
                if idle_at.is_some_and(|at| at <= now) {
                    return Verdict::Idle;
                }
                match (deadline, idle_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            match wake {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.watchdog.notified() => {}
                    }
                }
                None => self.watchdog.notified().await,
            }
        }
    }
}

/// A request in flight; the connection is idle when none is.
struct Active(Arc<Account>);

impl Drop for Active {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.active = state.active.saturating_sub(1);
        let idle = state.active == 0;
        if idle {
            state.idle_since = Instant::now();
        }
        drop(state);
        if idle {
            self.0.watchdog.notify_one();
        }
    }
}

/// A request's claim on its connection's response budget, found in the request's extensions.
#[derive(Clone)]
pub struct Budget(Arc<Slot>);

struct Slot {
    account: Arc<Account>,
    /// Admitted and its answer not yet arrived.
    admitted: AtomicBool,
}

impl Budget {
    fn new(account: Arc<Account>) -> Budget {
        Budget(Arc::new(Slot {
            account,
            admitted: AtomicBool::new(false),
        }))
    }

    /// Waits until the connection has room for this call's answer. Callers bound the wait by the request's
    /// deadline.
    pub async fn admit(&self) {
        loop {
            let notified = self.0.account.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.0.account.try_admit() {
                self.0.admitted.store(true, Ordering::Release);
                return;
            }
            notified.await;
        }
    }

    /// The answer has arrived (and is now counted as held bytes), or there is none.
    fn settle(&self) {
        if self.0.admitted.swap(false, Ordering::AcqRel) {
            self.0.account.unadmit();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if *self.admitted.get_mut() {
            self.account.unadmit();
        }
    }
}

/// The per-connection service: tags each request with its peer and budget and counts its response body in the
/// connection's account.
#[derive(Clone)]
pub struct Tracked {
    pub router: axum::Router,
    pub account: Arc<Account>,
    pub peer: SocketAddr,
    pub request_timeout: Duration,
}

impl tower::Service<http::Request<hyper::body::Incoming>> for Tracked {
    type Response = http::Response<AccountedBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<hyper::body::Incoming>) -> Self::Future {
        let deadline = Instant::now() + self.request_timeout;
        let active = self.account.begin();
        let budget = Budget::new(self.account.clone());
        request.extensions_mut().insert(PeerAddr(self.peer));
        request.extensions_mut().insert(budget.clone());
        let call = self.router.clone().oneshot(request.map(axum::body::Body::new));
        let request_timeout = self.request_timeout;
        Box::pin(async move {
            let response = match call.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|inner| AccountedBody {
                inner,
                pending: Bytes::new(),
                charged: None,
                first: true,
                deadline,
                request_timeout,
                budget,
                _active: active,
            }))
        })
    }
}

/// A response body counted in its connection's account while it holds bytes the client has not taken, and
/// handed to hyper in slices.
pub struct AccountedBody {
    inner: axum::body::Body,
    /// The rest of the current chunk.
    pending: Bytes,
    /// The current chunk's entry in the account: id, deadline, bytes.
    charged: Option<(u64, Instant, usize)>,
    first: bool,
    /// Request start plus the request timeout: the first chunk must be delivered by then.
    deadline: Instant,
    request_timeout: Duration,
    budget: Budget,
    _active: Active,
}

impl AccountedBody {
    fn release(&mut self) {
        if let Some((id, deadline, bytes)) = self.charged.take() {
            self.budget.0.account.release(id, deadline, bytes);
        }
    }

    fn next_slice(&mut self) -> Frame<Bytes> {
        let n = self.pending.len().min(SLICE_BYTES);
        Frame::data(self.pending.split_to(n))
    }
}

impl Body for AccountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if !this.pending.is_empty() {
            return Poll::Ready(Some(Ok(this.next_slice())));
        }
        // Asked for more: the client's stream has taken the whole previous chunk.
        this.release();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        let frame = match frame {
            Some(Ok(frame)) => frame,
            other => {
                this.budget.settle();
                return Poll::Ready(other);
            }
        };
        let data = match frame.into_data() {
            Ok(data) if !data.is_empty() => data,
            Ok(empty) => return Poll::Ready(Some(Ok(Frame::data(empty)))),
            Err(frame) => return Poll::Ready(Some(Ok(frame))),
        };
        // A unary answer must reach the client within the request's time; each later message of a stream gets
        // the request timeout from when it was produced.
        let deadline = if this.first {
            this.deadline
        } else {
            this.deadline.max(Instant::now() + this.request_timeout)
        };
        this.first = false;
        let bytes = data.len();
        let charged = this.budget.0.account.charge(bytes, deadline);
        this.budget.settle();
        let Some(id) = charged else {
            // Dropping the chunk frees it now; the error makes hyper reset the stream (HTTP/2) or close the
            // connection (HTTP/1.1).
            tracing::warn!(
                bytes,
                "refusing an answer: its connection holds too many undelivered response bytes"
            );
            return Poll::Ready(Some(Err(axum::Error::new(
                "the connection holds too many undelivered response bytes",
            ))));
        };
        this.charged = Some((id, deadline, bytes));
        this.pending = data;
        Poll::Ready(Some(Ok(this.next_slice())))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(pending));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(pending));
        }
        hint
    }
}

impl Drop for AccountedBody {
    fn drop(&mut self) {
        self.release();
    }
}

/// Raises the soft open-file limit to the hard one, so the connection cap rather than EMFILE bounds clients.
/// Returns the limit in force.
pub fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            None
        }
    }
}

/// Paces the accept loop after errors (EMFILE and the like): the delay doubles up to a second and each error
/// storm is logged at most once a second, with the count of those not logged.
#[derive(Default)]
pub struct AcceptPacing {
    delay: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptPacing {
    const FIRST: Duration = Duration::from_millis(10);
    const MOST: Duration = Duration::from_secs(1);

    /// Records a failed accept and returns how long to wait before the next one.
    pub fn failed(&mut self, error: &std::io::Error) -> Duration {
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            tracing::warn!(error = %error, not_logged = self.unlogged, "accept failed; backing off");
            self.last_logged = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MOST);
        self.delay
    }

    pub fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_keeps_held_bytes_near_the_budget() {
        let budget = 8 * 1024 * 1024;
        let account = Account::new(budget);
        // Fresh: calls of the initial estimate each, as many as fit the budget.
        let admitted = (0..1000).take_while(|_| account.try_admit()).count();
        assert_eq!(admitted, INITIAL_SHARE);
        // One large answer arrives: nothing more fits until it is delivered.
        let deadline = Instant::now() + Duration::from_secs(30);
        let id = account
            .charge(budget, deadline)
            .expect("an empty connection takes any answer");
        account.unadmit();
        assert!(!account.try_admit());
        // Answers of calls admitted earlier fill it up to the ceiling, and no further.
        let second = account.charge(budget, deadline).expect("up to the ceiling");
        assert!(account.charge(1, deadline).is_none(), "past the ceiling");
        account.release(second, deadline, budget);
        account.release(id, deadline, budget);
        for _ in 1..admitted {
            account.unadmit();
        }
        assert!(account.try_admit(), "with nothing held or admitted a call always runs");
    }

    #[test]
    fn small_answers_open_the_connection_to_many_calls() {
        let account = Account::new(8 * 1024 * 1024);
        let deadline = Instant::now() + Duration::from_secs(30);
        for _ in 0..20 {
            let id = account.charge(1000, deadline).expect("room");
            account.release(id, deadline, 1000);
        }
        let admitted = (0..1000).take_while(|_| account.try_admit()).count();
        assert!(admitted > 256, "{admitted}");
    }

    #[test]
    fn accept_errors_back_off_to_a_second() {
        let mut pacing = AcceptPacing::default();
        let error = std::io::Error::other("too many open files");
        let delays: Vec<Duration> = (0..10).map(|_| pacing.failed(&error)).collect();
        assert_eq!(delays[0], AcceptPacing::FIRST);
        assert_eq!(delays[9], AcceptPacing::MOST);
        pacing.succeeded();
        assert_eq!(pacing.failed(&error), AcceptPacing::FIRST);
    }
}
