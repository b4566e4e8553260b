//! Deadlines for every phase of an HTTP exchange: waiting for a request,
//! reading its headers, reading its body.
//!
//! hyper (1.12) has one read timer, `header_read_timeout`, which starts as
//! soon as a connection is idle and so bounds "idle, then headers" as one;
//! it has nothing for a body, and a handler that awaits a body that never
//! comes awaits forever (a `Content-Length: 4000` with no body held its
//! connection, and its place under `max_connections`, for good). An error
//! answer alone would not help either: it leaves the socket open.
//!
//! So each connection's task keeps the deadlines itself. A [`Clock`] holds
//! the connection's phase, reported by the pieces that see it: the stream's
//! reads ([`Clock::on_read`], from `timed_io.rs`), the service starting a
//! request, the request body's progress ([`RequestBody`]) and the response
//! body's end ([`ResponseBody`]). [`Clock::expired`] sleeps until the
//! phase's deadline, and the connection task (`server.rs`) then drops
//! hyper's connection future, which closes the socket whatever the handler
//! is doing. A body deadline first fails the body, so that a handler
//! reading it answers 408 `request_timeout` before the close.
//!
//! The phase's deadline, in order:
//!
//! - **idle**: no request in progress and no byte of the next one (also
//!   before the first request): `keepalive_timeout_s` from the last byte
//!   of the last response written to the socket (or the accept);
//! - **head**: a byte of the next request has arrived, its headers have
//!   not: `header_timeout_s` from that byte;
//! - **body**: the headers are in and the body is not all read:
//!   `body_timeout_s` from the headers, and earlier if the body falls below
//!   `body_min_rate_bytes_per_s` on average, counted after a grace of
//!   [`BODY_RATE_GRACE`] (a first write, TCP slow start, one retransmit);
//! - **busy**: the body is read (or dropped unread, after which hyper reads
//!   no more of it and closes the connection after the response) and the
//!   response is being made or streamed: no read deadline. A stalled
//!   response write is the write timeout's business, and an SSE stream may
//!   last for hours.
//!
//! A WebSocket upgrade takes the socket out of hyper after its 101, and its
//! own ping and idle timers rule from then on.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::ConnectionConfig;

/// How long a body may send nothing before its minimum rate is checked.
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(5);

/// The deadlines of one server, from `[connection]`.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    keepalive: Duration,
    header: Duration,
    body: Duration,
    /// Bytes per second; 0: no minimum.
    body_min_rate: u64,
}

impl Deadlines {
    /// The deadlines `config` sets.
    pub fn new(config: &ConnectionConfig) -> Deadlines {
        Deadlines {
            keepalive: Duration::from_secs(config.keepalive_timeout_s),
            header: Duration::from_secs(config.header_timeout_s),
            body: Duration::from_secs(config.body_timeout_s),
            body_min_rate: config.body_min_rate_bytes_per_s,
        }
    }
}

/// The phase whose deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// No request came within `keepalive_timeout_s`.
    Idle,
    /// The request headers did not arrive within `header_timeout_s`.
    Head,
    /// The request body did not arrive in time, or too slowly.
    Body,
}

impl Cut {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Cut::Idle => "idle",
            Cut::Head => "head",
            Cut::Body => "body",
        }
    }
}

/// The error a request body returns once its deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

impl BodyTimedOut {
    /// Whether `error`, or an error it wraps, is a body deadline.
    pub fn caused(error: &(dyn StdError + 'static)) -> bool {
        std::iter::successors(Some(error), |&e| e.source()).any(|e| e.is::<BodyTimedOut>())
    }
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Idle {
        since: Instant,
        first_byte: Option<Instant>,
    },
    Body {
        head_at: Instant,
        received: u64,
    },
    Busy,
}

struct State {
    phase: Phase,
    /// Which request the phase belongs to, so that a body that outlives
    /// its request cannot move the next one's phase.
    request: u64,
    /// Set once the body deadline has passed.
    body_expired: bool,
    /// The task waiting on the body, woken when its deadline passes.
    body_waker: Option<Waker>,
}

/// One connection's phase and deadlines.
pub struct Clock {
    deadlines: Deadlines,
    state: Mutex<State>,
    /// Wakes [`Clock::expired`] when the deadline may have moved earlier.
    changed: Notify,
}

impl Clock {
    /// The clock of a connection accepted now: idle.
    pub fn new(deadlines: Deadlines) -> Arc<Clock> {
        Arc::new(Clock {
            deadlines,
            state: Mutex::new(State {
                phase: Phase::Idle {
                    since: Instant::now(),
                    first_byte: None,
                },
                request: 0,
                body_expired: false,
                body_waker: None,
            }),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A read from the socket completed: if the connection was idle, the
    /// next request's headers have begun.
    pub fn on_read(&self) {
        let mut state = self.state();
        if let Phase::Idle {
            first_byte: first_byte @ None,
            ..
        } = &mut state.phase
        {
            *first_byte = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// A write to the socket took bytes: an idle connection's keep-alive
    /// time counts from its last byte out. hyper lets go of a response body
    /// once its last chunk is queued, not once it is sent, so a big answer
    /// read slowly but steadily would otherwise meet the idle deadline
    /// halfway. (The deadline only moves later, so nothing need be woken.)
    pub fn on_write(&self) {
        if let Phase::Idle {
            since,
            first_byte: None,
        } = &mut self.state().phase
        {
            *since = Instant::now();
        }
    }

    /// hyper parsed a request's headers: starts its body phase (or its
    /// busy phase, without a body) and wraps the body to report progress.
    pub fn start_request(
        self: &Arc<Self>,
        req: hyper::Request<Incoming>,
    ) -> hyper::Request<RequestBody> {
        let has_body = !req.body().is_end_stream();
        let request = {
            let mut state = self.state();
            state.request += 1;
            state.body_expired = false;
            state.phase = if has_body {
                Phase::Body {
                    head_at: Instant::now(),
                    received: 0,
                }
            } else {
                Phase::Busy
            };
            state.request
        };
        self.changed.notify_one();
        req.map(|inner| RequestBody {
            inner,
            clock: self.clone(),
            request,
            done: !has_body,
        })
    }

    /// Wraps a response's body so that its end makes the connection idle.
    pub fn track_response(
        self: &Arc<Self>,
        res: hyper::Response<axum::body::Body>,
    ) -> hyper::Response<ResponseBody> {
        let request = self.state().request;
        res.map(|inner| ResponseBody {
            inner,
            clock: self.clone(),
            request,
        })
    }

    /// Resolves with the phase whose deadline passed. Cancel-safe.
    pub async fn expired(&self) -> Cut {
        loop {
            // Taken before reading the deadline: a change after the read
            // leaves a permit, so it is not missed.
            let changed = self.changed.notified();
            let next = self.deadline();
            match next {
                Some((at, cut)) if at <= Instant::now() => return cut,
                Some((at, _)) => tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = changed => {}
                },
                None => changed.await,
            }
        }
    }

    /// Fails the request body, waking a handler that waits on it, so that
    /// it can answer 408 before the connection closes.
    pub fn expire_body(&self) {
        let waker = {
            let mut state = self.state();
            state.body_expired = true;
            state.body_waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The current phase's deadline, if it has one.
    fn deadline(&self) -> Option<(Instant, Cut)> {
        let d = &self.deadlines;
        match self.state().phase {
            Phase::Idle {
                since,
                first_byte: None,
            } => Some((since + d.keepalive, Cut::Idle)),
            Phase::Idle {
                first_byte: Some(at),
                ..
            } => Some((at + d.header, Cut::Head)),
            Phase::Body { head_at, received } => {
                // `received` bytes at the minimum rate buy this long past
                // the grace; the total deadline caps it either way.
                let allowed = match d.body_min_rate {
                    0 => d.body,
                    rate => {
                        let earned = Duration::from_millis(received.saturating_mul(1000) / rate);
                        d.body.min(BODY_RATE_GRACE.saturating_add(earned))
                    }
                };
                Some((head_at + allowed, Cut::Body))
            }
            Phase::Busy => None,
        }
    }

    /// Applies `change` to the phase if it still belongs to `request`.
    fn update(&self, request: u64, change: impl FnOnce(&mut Phase)) {
        let mut state = self.state();
        if state.request == request {
            change(&mut state.phase);
        }
    }
}

/// A request body that reports its progress to the connection's [`Clock`]
/// and fails with [`BodyTimedOut`] once the clock says so.
pub struct RequestBody {
    inner: Incoming,
    clock: Arc<Clock>,
    request: u64,
    /// All read, or failed: the body phase is over.
    done: bool,
}

impl RequestBody {
    /// Ends the body phase: read whole, failed, or dropped unread.
    fn finish(&mut self) {
        if !std::mem::replace(&mut self.done, true) {
            self.clock.update(self.request, |phase| {
                if matches!(phase, Phase::Body { .. }) {
                    *phase = Phase::Busy;
                }
            });
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.clock.state().body_expired {
            self.finish();
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    self.clock.update(self.request, |phase| {
                        if let Phase::Body { received, .. } = phase {
                            *received += n;
                        }
                    });
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                // Checked again under the lock that stores the waker, so
                // that an expiry between the two checks still wakes us.
                let mut state = self.clock.state();
                if state.body_expired {
                    drop(state);
                    self.finish();
                    return Poll::Ready(Some(Err(BodyTimedOut.into())));
                }
                state.body_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // Dropped unread: hyper reads no more of it (it drains what is
        // already there, or closes the connection after the response).
        self.finish();
    }
}

/// A response body whose end (hyper drops it once written, or once the
/// connection ends) makes the connection idle again.
pub struct ResponseBody {
    inner: axum::body::Body,
    clock: Arc<Clock>,
    request: u64,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.clock.update(self.request, |phase| {
            *phase = Phase::Idle {
                since: Instant::now(),
                first_byte: None,
            }
        });
        self.clock.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn clock(body_min_rate: u64) -> Arc<Clock> {
        Clock::new(Deadlines {
            keepalive: 300 * MS,
            header: 200 * MS,
            body: Duration::from_secs(60),
            body_min_rate,
        })
    }

    fn in_body(clock: &Clock, received: u64) -> Instant {
        let head_at = Instant::now();
        clock.state().phase = Phase::Body { head_at, received };
        head_at
    }

    #[tokio::test]
    async fn idle_then_a_first_byte_starts_the_header_deadline() {
        let clock = clock(256);
        let Some((idle_until, Cut::Idle)) = clock.deadline() else {
            panic!("a new connection is idle");
        };
        tokio::time::sleep(50 * MS).await;
        let first_byte = Instant::now();
        clock.on_read();
        // Later bytes do not push it back.
        tokio::time::sleep(50 * MS).await;
        clock.on_read();
        let Some((head_until, Cut::Head)) = clock.deadline() else {
            panic!("a byte starts the head");
        };
        assert!(head_until >= first_byte + 200 * MS && head_until < idle_until);
        assert_eq!(clock.expired().await, Cut::Head);
        assert!(Instant::now() >= head_until);
    }

    #[test]
    fn a_body_earns_time_at_the_minimum_rate_up_to_the_total() {
        let clock = clock(1000);
        // 500 bytes at 1000 B/s buy 0.5 s past the grace.
        let head_at = in_body(&clock, 500);
        let by_rate = head_at + BODY_RATE_GRACE + 500 * MS;
        assert_eq!(clock.deadline(), Some((by_rate, Cut::Body)));
        // A body that keeps up is held to the total, even at u64::MAX.
        let head_at = in_body(&clock, u64::MAX);
        let total = head_at + Duration::from_secs(60);
        assert_eq!(clock.deadline(), Some((total, Cut::Body)));
        // No minimum: the total alone.
        let clock = self::clock(0);
        let head_at = in_body(&clock, 0);
        let total = head_at + Duration::from_secs(60);
        assert_eq!(clock.deadline(), Some((total, Cut::Body)));
    }

    #[tokio::test]
    async fn busy_has_no_deadline_until_the_response_ends() {
        let clock = clock(0);
        clock.state().phase = Phase::Busy;
        assert_eq!(clock.deadline(), None);
        // Busy has no deadline: the watchdog waits until the phase changes,
        // here the response ending.
        let expired = clock.expired();
        tokio::pin!(expired);
        assert!(tokio::time::timeout(400 * MS, expired.as_mut())
            .await
            .is_err());
        let request = clock.state().request;
        clock.update(request, |phase| {
            *phase = Phase::Idle {
                since: Instant::now(),
                first_byte: None,
            }
        });
        clock.changed.notify_one();
        let cut = tokio::time::timeout(Duration::from_secs(5), expired).await;
        assert_eq!(cut.expect("the idle deadline passes"), Cut::Idle);
    }
}
