//! Rate limits: keyed token buckets (governor's GCRA) for sends per user,
//! sends per IP address, new connections per IP address, and accepted sends
//! per room.
//!
//! Each check takes a token when it passes, so the order of the checks is
//! the order in which a refused send may still have spent tokens: see
//! [`RateLimits::check_send`].
//!
//! Memory is bounded twice: [`RateLimits::sweep`] forgets idle keys (the
//! owner calls it periodically), and each limiter remembers at most
//! `limits.max_limiter_keys` keys. Past that, a new key passes as a fresh
//! bucket without being remembered (fail open), and once a quarter of the
//! cap has been turned away the limiter sweeps early, on the request path.
//! Failing closed would let whoever fills the table (a botnet, or one
//! client with a large IPv6 block) lock every newcomer out, which is the
//! denial of service the limits are there to prevent; failing open costs
//! only the per-key limit for keys an attacker could replace at will
//! anyway, and the room limit still caps what reaches viewers.
//!
//! These buckets are the node's own. When the bus is Redis, the send
//! buckets are kept there instead, shared by the cluster
//! ([`shared::SharedLimits`]), and these serve while Redis is unreachable.

pub mod shared;
pub(crate) mod store;

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::{Quota, RateLimiter};

use crate::config::Limits;
use crate::error::{ApiError, ErrorCode};
use store::{BoundedStore, KeyBudget};

/// A refusal by a rate limit: how long until the request would pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rate limited; retry in {}s", self.secs())]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// The wait in whole seconds, rounded up and at least 1: the value of
    /// an HTTP `Retry-After` header. Rounding down would send the client
    /// back before its token is there, to be refused again.
    pub fn secs(&self) -> u64 {
        let whole = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        whole.max(1)
    }
}

impl From<RetryAfter> for ApiError {
    fn from(r: RetryAfter) -> ApiError {
        let secs = r.secs();
        ApiError::new(
            ErrorCode::RateLimited,
            format!("too many requests; retry in {secs} s"),
        )
        .with_retry_after(secs)
    }
}

/// One keyed limiter and its key budget.
struct Keyed<K: std::hash::Hash + Eq + Clone, C: Clock> {
    limiter: RateLimiter<K, BoundedStore<K>, C, NoOpMiddleware<C::Instant>>,
    budget: Arc<KeyBudget>,
    /// The limiter's name, for logs.
    name: &'static str,
}

impl<K: std::hash::Hash + Eq + Clone, C: Clock> Keyed<K, C> {
    /// A limiter of `burst` at once refilled at `per_second`, or none when
    /// `per_second` is 0 (that limit is off; see [`period`]).
    fn new(
        name: &'static str,
        burst: u32,
        per_second: f64,
        max_keys: usize,
        clock: C,
    ) -> Option<Self> {
        let quota =
            Quota::with_period(period(per_second)?)?.allow_burst(NonZeroU32::new(burst.max(1))?);
        let budget = Arc::new(KeyBudget::new(max_keys));
        let limiter = RateLimiter::new(quota, BoundedStore::new(budget.clone()), clock);
        Some(Keyed {
            limiter,
            budget,
            name,
        })
    }

    /// Takes a token for `key`, or says how long until there is one.
    fn check(&self, key: &K) -> Result<(), RetryAfter> {
        let result = self
            .limiter
            .check_key(key)
            .map_err(|no| RetryAfter(no.wait_time_from(self.limiter.clock().now())));
        if self.budget.claim_early_sweep() {
            self.limiter.retain_recent();
        }
        result
    }

    /// Forgets idle keys and gives their memory back.
    fn sweep(&self) {
        if self.budget.take_overflowed() {
            tracing::warn!(
                limiter = self.name,
                "rate limiter was full (limits.max_limiter_keys); new keys passed unlimited"
            );
        }
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The time per token at `per_second`, or none when it is 0 (that limit is
/// off). Out-of-range rates, which `Config::validate` refuses, are clamped
/// rather than panicking.
fn period(per_second: f64) -> Option<Duration> {
    if per_second.is_nan() || per_second <= 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        1.0 / per_second.clamp(0.001, 1_000_000.0),
    ))
}

/// Checks `limit` if it is on.
fn check<K: std::hash::Hash + Eq + Clone, C: Clock>(
    limit: &Option<Keyed<K, C>>,
    key: &K,
) -> Result<(), RetryAfter> {
    limit.as_ref().map_or(Ok(()), |l| l.check(key))
}

/// The rate limits of one server, built from the `[limits]` section.
///
/// All methods take `&self` and are cheap enough for every send: a hash,
/// a concurrent-map lookup and an atomic update per limiter, with no
/// allocation for a key already seen. Share it behind an `Arc`.
pub struct RateLimits<C: Clock = MonotonicClock> {
    user_send: Option<Keyed<u64, C>>,
    ip_send: Option<Keyed<IpAddr, C>>,
    connect: Option<Keyed<IpAddr, C>>,
    room_send: Option<Keyed<u64, C>>,
    /// Hashes user ids and room names into fixed-size keys, so a check
    /// allocates nothing and a long id costs no more memory than a short
    /// one. Randomly seeded, so no client can aim for a collision (at 64
    /// bits, accidental ones are negligible).
    hasher: std::hash::RandomState,
}

impl RateLimits {
    /// The limits of `limits`, on the system's monotonic clock.
    pub fn new(limits: &Limits) -> RateLimits {
        RateLimits::with_clock(limits, MonotonicClock)
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    /// The limits of `limits` on a given clock (tests use governor's
    /// `FakeRelativeClock`, to move time without sleeping).
    pub fn with_clock(limits: &Limits, clock: C) -> RateLimits<C> {
        let max = limits.max_limiter_keys;
        let l = limits;
        RateLimits {
            user_send: Keyed::new("send", l.send_burst, l.send_per_second, max, clock.clone()),
            ip_send: Keyed::new(
                "ip_send",
                l.ip_send_burst,
                l.ip_send_per_second,
                max,
                clock.clone(),
            ),
            connect: Keyed::new(
                "connect",
                l.connect_burst,
                l.connect_per_second,
                max,
                clock.clone(),
            ),
            room_send: Keyed::new(
                "room_send",
                l.room_send_burst,
                l.room_send_per_second,
                max,
                clock,
            ),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Takes a send token from the user, then from its IP address, then
    /// from the room; the first that has none refuses the send.
    ///
    /// The order decides whose tokens a refused send still spends, since a
    /// passed check has taken its token. The most specific key goes first:
    /// a user over its limit spends nothing of its address or room, so one
    /// spammer behind a shared NAT cannot drain the address's bucket for
    /// its neighbours, nor anyone the room's. A send refused by its address
    /// or room has spent one token of its user's own bucket; governor has
    /// no way to give it back.
    pub fn check_send(&self, user: &str, ip: IpAddr, room: &str) -> Result<(), RetryAfter> {
        check(&self.user_send, &self.hasher.hash_one(user))?;
        check(&self.ip_send, &ip_key(ip))?;
        self.check_room(room)
    }

    /// Takes a token from the room's bucket.
    fn check_room(&self, room: &str) -> Result<(), RetryAfter> {
        check(&self.room_send, &self.hasher.hash_one(room))
    }

    /// Takes a token for a new long-lived connection (WebSocket or SSE)
    /// from `ip`'s bucket.
    pub fn check_connect(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        check(&self.connect, &ip_key(ip))
    }

    /// Forgets keys whose buckets are full again (idle ones: remembering
    /// them changes no answer) and gives their memory back. Call it every
    /// few seconds (10 s is plenty) from one task; it is O(keys) and takes
    /// each map shard's lock in turn, briefly.
    pub fn sweep(&self) {
        fn sweep<K: std::hash::Hash + Eq + Clone, C: Clock>(l: &Option<Keyed<K, C>>) {
            if let Some(l) = l {
                l.sweep();
            }
        }
        sweep(&self.user_send);
        sweep(&self.ip_send);
        sweep(&self.connect);
        sweep(&self.room_send);
    }
}

/// The key of an address: an IPv4 address (also when written IPv4-mapped
/// IPv6), or an IPv6 address's /64. A single IPv6 subscriber is routinely
/// given a /64 or more, so counting /128s would hand one client 2^64 fresh
/// buckets.
pub(super) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limits() -> Limits {
        Limits {
            send_burst: 3,
            send_per_second: 0.5,
            ip_send_burst: 100,
            ip_send_per_second: 100.0,
            connect_burst: 2,
            connect_per_second: 1.0,
            room_send_burst: 1000,
            room_send_per_second: 1000.0,
            ..Limits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let secs = |d| RetryAfter(d).secs();
        assert_eq!(secs(Duration::ZERO), 1);
        assert_eq!(secs(Duration::from_nanos(1)), 1);
        assert_eq!(secs(Duration::from_secs(2)), 2);
        assert_eq!(secs(Duration::from_millis(2001)), 3);
        let e = ApiError::from(RetryAfter(Duration::from_millis(1500)));
        assert_eq!((e.code, e.retry_after_s), (ErrorCode::RateLimited, Some(2)));
    }

    #[test]
    fn a_burst_is_refused_then_refilled_at_the_rate() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimits::with_clock(&limits(), clock.clone());
        let send = || rl.check_send("u", ip("10.0.0.1"), "r");
        for _ in 0..3 {
            send().unwrap();
        }
        // 0.5 per second: the next token is 2 s away.
        assert_eq!(send(), Err(RetryAfter(Duration::from_secs(2))));
        clock.advance(Duration::from_millis(1999));
        assert_eq!(send().unwrap_err().secs(), 1);
        clock.advance(Duration::from_millis(1));
        send().unwrap();
        assert!(send().is_err(), "one token per 2 s, no more");
        // Another user is not affected.
        rl.check_send("v", ip("10.0.0.1"), "r").unwrap();
    }

    #[test]
    fn a_user_over_its_limit_spends_no_room_tokens() {
        let clock = FakeRelativeClock::default();
        let l = Limits {
            send_burst: 1,
            room_send_burst: 2,
            room_send_per_second: 0.001,
            ..limits()
        };
        let rl = RateLimits::with_clock(&l, clock);
        let a = ip("10.0.0.1");
        rl.check_send("a", a, "r").unwrap();
        for _ in 0..10 {
            assert!(rl.check_send("a", a, "r").is_err());
        }
        rl.check_send("b", a, "r").unwrap();
        let refused = rl.check_send("c", a, "r").unwrap_err();
        assert!(refused.secs() > 100, "the room's bucket, refilling slowly");
        // Another room has its own bucket.
        rl.check_send("d", a, "other").unwrap();
    }

    #[test]
    fn addresses_are_keyed_by_ipv4_or_ipv6_slash_64() {
        let l = Limits {
            ip_send_burst: 1,
            ip_send_per_second: 0.001,
            ..limits()
        };
        let rl = RateLimits::with_clock(&l, FakeRelativeClock::default());
        rl.check_send("a", ip("2001:db8::1"), "r").unwrap();
        assert!(rl.check_send("b", ip("2001:db8::ffff:1:2"), "r").is_err());
        rl.check_send("c", ip("2001:db8:0:1::1"), "r").unwrap();
        rl.check_send("d", ip("192.0.2.1"), "r").unwrap();
        assert!(rl.check_send("e", ip("::ffff:192.0.2.1"), "r").is_err());
        rl.check_connect(ip("192.0.2.1")).unwrap();
        rl.check_connect(ip("::ffff:192.0.2.1")).unwrap();
        assert!(rl.check_connect(ip("192.0.2.1")).is_err());
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let l = Limits {
            send_per_second: 0.0,
            connect_per_second: 0.0,
            ..limits()
        };
        let rl = RateLimits::with_clock(&l, FakeRelativeClock::default());
        for _ in 0..50 {
            rl.check_send("u", ip("10.0.0.1"), "r").unwrap();
            rl.check_connect(ip("10.0.0.1")).unwrap();
        }
    }

    #[test]
    fn a_million_idle_keys_are_swept_away() {
        let clock = FakeRelativeClock::default();
        let l = Limits {
            max_limiter_keys: 2_000_000,
            ..limits()
        };
        let rl = RateLimits::with_clock(&l, clock.clone());
        let connect = rl.connect.as_ref().unwrap();
        for i in 0..1_000_000u32 {
            rl.check_connect(IpAddr::V4(i.into())).unwrap();
        }
        assert_eq!(connect.limiter.len(), 1_000_000);
        rl.sweep();
        assert_eq!(connect.limiter.len(), 1_000_000, "none idle yet");
        // connect: burst 2 at 1/s, so a key is idle 3 s after its use.
        clock.advance(Duration::from_secs(3));
        rl.sweep();
        assert_eq!(connect.limiter.len(), 0);
    }

    #[test]
    fn past_the_key_cap_new_keys_pass_unremembered_until_an_early_sweep() {
        let clock = FakeRelativeClock::default();
        let l = Limits {
            max_limiter_keys: 100,
            ..limits()
        };
        let rl = RateLimits::with_clock(&l, clock.clone());
        let connect = rl.connect.as_ref().unwrap();
        for i in 0..100u32 {
            rl.check_connect(IpAddr::V4(i.into())).unwrap();
        }
        // Full: a new address is let through every time (fail open) and
        // not remembered.
        let newcomer = ip("10.9.9.9");
        for _ in 0..5 {
            rl.check_connect(newcomer).unwrap();
        }
        assert_eq!(connect.limiter.len(), 100);
        // Remembered keys keep their limits.
        rl.check_connect(IpAddr::V4(0u32.into())).unwrap();
        assert!(rl.check_connect(IpAddr::V4(0u32.into())).is_err());
        // Once the keys are idle, the 25th refusal (a quarter of the cap)
        // sweeps them away, and new keys are remembered again.
        clock.advance(Duration::from_secs(10));
        for i in 0..20u32 {
            rl.check_connect(IpAddr::V4((1000 + i).into())).unwrap();
        }
        assert!(connect.limiter.len() <= 1, "{}", connect.limiter.len());
        rl.check_connect(newcomer).unwrap();
        rl.check_connect(newcomer).unwrap();
        assert!(rl.check_connect(newcomer).is_err());
    }
}
