//! Send limits shared by every node of a cluster, in Redis.
//!
//! With one bucket per node, a user whose sends a load balancer spreads
//! over N nodes gets N times the rate. Here the per-user, per-address and
//! per-room send buckets live in Redis, under
//! `{namespace}:limit:{user|ip|room}:{key}`, and one Lua script checks and
//! spends all three atomically per send. Same GCRA as governor's (see
//! [`GCRA`]), same order, same answers as [`RateLimits::check_send`]: the
//! user's bucket, then the address's (IPv4, or IPv6 /64), then the room's;
//! the first without a token refuses the send, and the buckets before it
//! have spent theirs. So a send refused by its user spends nothing; one
//! refused by its address has spent a token of its user's bucket; one
//! refused by its room, a token of its user's and of its address's.
//!
//! Slow mode (a room's "one send per N s per user") and the flood guard
//! (one user repeating a text) are shared the same way, each a count of
//! sends in a window that starts with the first of them ([`WINDOW`]):
//! `{namespace}:limit:slow:{room}:{user}`, one send per interval, and
//! `{namespace}:limit:flood:{user}:{fingerprint}`, `flood_repeats` sends
//! of one text per flood window.
//!
//! Time is the Redis server's (`TIME` inside the script), because the
//! nodes' clocks may differ. A key expires (`SET … PX`) once its bucket is
//! full again, when forgetting it changes no answer, so idle keys vanish by
//! themselves: no sweep, no key cap.
//!
//! When Redis does not answer within [`CALL_TIMEOUT`], the send is checked
//! by the node's own buckets instead (fail open to local limits: a Redis
//! outage must neither refuse sends nor hold them up), counted in
//! `danmaku_limits_fallbacks_total` and logged once per outage. During an
//! outage one send per [`PROBE_EVERY`] asks Redis again; the others go
//! straight to the local buckets, so an outage costs no send more than one
//! timeout.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, Script};

use super::{ip_key, period, RateLimits, RetryAfter};
use crate::config::{Config, Limits};

/// The longest a send waits for Redis before it is checked locally.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// How often, during an outage, a send asks Redis whether it is back.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The script: for each key in order, its emission interval `T` and
/// tolerance `TAU` in ARGV (microseconds). Returns `{0, 0}` when every
/// bucket had a token (all spent), or `{i, wait}` when the i-th refused
/// (the ones before it spent theirs, it and the ones after it did not),
/// `wait` being the microseconds until it has a token.
///
/// GCRA as governor does it: a bucket is its theoretical arrival time
/// `tat`; a send at `now` passes if `now >= tat - TAU`, and then sets
/// `tat = max(tat, now) + T`. A missing key is a full bucket. The key
/// expires when `tat` is reached, which is when the bucket is full again.
/// Times are kept as integers of microseconds, written with `%.0f` because
/// Lua 5.1's default formatting would round them to 14 digits.
const GCRA: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
for i, key in ipairs(KEYS) do
  local t = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then
    tat = now
  end
  if now < tat - tau then
    return {i, tat - tau - now}
  end
  tat = tat + t
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
end
return {0, 0}
";

/// Slow mode's and the flood guard's script: counts a send in the window
/// of `KEYS[1]` (`ARGV[1]` ms from the first send counted in it); past
/// `ARGV[2]` sends, returns the milliseconds the window has left (at least
/// 1), else 0. A refused send neither lengthens the window nor matters
/// once it ends.
const WINDOW: &str = r"
local sent = redis.call('INCR', KEYS[1])
if sent == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
if sent <= tonumber(ARGV[2]) then
  return 0
end
local left = redis.call('PTTL', KEYS[1])
if left < 1 then
  return 1
end
return left
";

/// Why the shared limits could not be set up at start.
#[derive(Debug, thiserror::Error)]
#[error("cannot use Redis (bus.url) for the shared send limits: {0}")]
pub struct SharedLimitsError(#[from] RedisError);

/// One send bucket's parameters, in the script's units.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Microseconds per token.
    t_us: u64,
    /// Microseconds of tolerance: `t_us` times one less than the burst.
    tau_us: u64,
}

impl Bucket {
    /// The bucket of `burst` at once refilled at `per_second`, or none when
    /// that limit is off: the same quota as the local limiter's.
    fn new(burst: u32, per_second: f64) -> Option<Bucket> {
        let t_us = u64::try_from(period(per_second)?.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        Some(Bucket {
            t_us,
            tau_us: t_us.saturating_mul(u64::from(burst.max(1) - 1)),
        })
    }
}

/// Whether Redis answered lately: during an outage, when to ask it again.
#[derive(Debug)]
struct Health {
    epoch: Instant,
    /// Milliseconds after `epoch` until which sends skip Redis; 0 while it
    /// answers.
    skip_until_ms: AtomicU64,
}

impl Health {
    fn new() -> Health {
        Health {
            epoch: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
        }
    }

    /// Now, in milliseconds after `epoch`, at least 1 (0 means "up").
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Whether this send should ask Redis: always while it answers; during
    /// an outage, one send per [`PROBE_EVERY`] (the one that wins the race
    /// to move the next probe on).
    fn should_ask(&self) -> bool {
        let until = self.skip_until_ms.load(Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= until
            && self
                .skip_until_ms
                .compare_exchange(until, now + probe_ms(), Relaxed, Relaxed)
                .is_ok()
    }

    /// Records an answer; true if it ends an outage.
    fn answered(&self) -> bool {
        // A load first: while Redis is up, no send writes the shared line.
        self.skip_until_ms.load(Relaxed) != 0 && self.skip_until_ms.swap(0, Relaxed) != 0
    }

    /// Records a failure; true if it starts an outage.
    fn failed(&self) -> bool {
        self.skip_until_ms.swap(self.now_ms() + probe_ms(), Relaxed) == 0
    }
}

/// `d` in whole milliseconds, at least 1 (a `PX` of 0 is an error).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn probe_ms() -> u64 {
    PROBE_EVERY.as_millis() as u64
}

/// The per-user, per-address and per-room send limits of a cluster, kept in
/// Redis. Cheap to share behind the guard's `Arc`; every node of the
/// cluster builds its own from the same configuration.
pub struct SharedLimits {
    conn: ConnectionManager,
    script: Script,
    window: Script,
    /// `{namespace}:limit:`.
    prefix: String,
    user: Option<Bucket>,
    ip: Option<Bucket>,
    room: Option<Bucket>,
    /// Sends checked locally because Redis did not answer.
    fallbacks: Counter,
    health: Health,
}

impl SharedLimits {
    /// The shared limits when `bus.url` is a Redis URL (`None` otherwise:
    /// with NATS or no bus, limits stay per node). `fallbacks` counts the
    /// sends checked locally during outages.
    pub async fn from_config(
        config: &Config,
        fallbacks: Counter,
    ) -> Result<Option<SharedLimits>, SharedLimitsError> {
        match config.bus.url.as_deref() {
            Some(url) if url.starts_with("redis://") => {
                let shared =
                    SharedLimits::connect(url, &config.bus.namespace, &config.limits, fallbacks);
                Ok(Some(shared.await?))
            }
            _ => Ok(None),
        }
    }

    /// Connects to the Redis at `url` and loads the script, with the send
    /// limits of `limits` under `namespace`. Fails if Redis cannot be
    /// reached now; later outages fall back to local limits instead.
    pub async fn connect(
        url: &str,
        namespace: &str,
        limits: &Limits,
        fallbacks: Counter,
    ) -> Result<SharedLimits, SharedLimitsError> {
        // Reconnection is quick and short: sends probe Redis once a second
        // during an outage, and each probe, not a long backoff, decides
        // when the shared limits are back.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(PROBE_EVERY);
        let mut conn = ConnectionManager::new_with_config(Client::open(url)?, config).await?;
        let script = Script::new(GCRA);
        let window = Script::new(WINDOW);
        // Loaded now so that a server that cannot run them fails the start.
        // After a Redis restart has flushed them, EVALSHA answers NOSCRIPT
        // and the script is sent again (`invoke_async` does both).
        script.prepare_invoke().load_async(&mut conn).await?;
        window.prepare_invoke().load_async(&mut conn).await?;
        Ok(SharedLimits {
            conn,
            script,
            window,
            prefix: format!("{namespace}:limit:"),
            user: Bucket::new(limits.send_burst, limits.send_per_second),
            ip: Bucket::new(limits.ip_send_burst, limits.ip_send_per_second),
            room: Bucket::new(limits.room_send_burst, limits.room_send_per_second),
            fallbacks,
            health: Health::new(),
        })
    }

    /// Takes a send token from the user's, the address's and the room's
    /// shared buckets (see the module's doc for which a refused send
    /// spent), or, when Redis does not answer in time, from `local`'s.
    pub async fn check_send(
        &self,
        user: &str,
        ip: IpAddr,
        room: &str,
        local: &RateLimits,
    ) -> Result<(), RetryAfter> {
        match self.answer(self.ask(user, ip, room)).await {
            Some(answer) => answer,
            None => local.check_send(user, ip, room),
        }
    }

    /// Slow mode across the cluster: lets `user`'s send to `room` through
    /// and starts an interval of `every` if none is running, else says how
    /// long it has left. `None` when Redis does not answer in time: the
    /// caller then asks the node's own slow-mode clock.
    pub async fn check_slow_mode(
        &self,
        room: &str,
        user: &str,
        every: Duration,
    ) -> Option<Result<(), RetryAfter>> {
        let key = format!("{}slow:{room}:{user}", self.prefix);
        self.answer(self.count_in_window(key, every, 1)).await
    }

    /// The flood guard across the cluster: counts `user`'s send of the
    /// text with `fingerprint` ([`FloodGuard::fingerprint`]) in its window
    /// of `window`, refusing it past `repeats` sends. `None` when Redis
    /// does not answer in time: the caller then asks the node's own guard.
    ///
    /// [`FloodGuard::fingerprint`]: crate::guard::filter::FloodGuard::fingerprint
    pub async fn check_flood(
        &self,
        user: &str,
        fingerprint: u64,
        window: Duration,
        repeats: u32,
    ) -> Option<Result<(), RetryAfter>> {
        let key = format!("{}flood:{user}:{fingerprint:016x}", self.prefix);
        self.answer(self.count_in_window(key, window, repeats))
            .await
    }

    /// Counts a send under `key` in its window of `window` ([`WINDOW`]):
    /// through if it is one of the first `allowed`, else refused until the
    /// window ends.
    async fn count_in_window(
        &self,
        key: String,
        window: Duration,
        allowed: u32,
    ) -> Result<Result<(), RetryAfter>, RedisError> {
        let mut call = self.window.prepare_invoke();
        call.key(key).arg(millis(window)).arg(allowed);
        let mut conn = self.conn.clone();
        let left_ms: u64 = call.invoke_async(&mut conn).await?;
        Ok(match left_ms {
            0 => Ok(()),
            left => Err(RetryAfter(Duration::from_millis(left))),
        })
    }

    /// Redis's answer to `ask`, or `None` (counted as a fallback) when it
    /// failed, did not come within [`CALL_TIMEOUT`], or Redis is in an
    /// outage and this is not the send that probes it.
    async fn answer<T>(
        &self,
        ask: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Option<T> {
        if self.health.should_ask() {
            let failure = match tokio::time::timeout(CALL_TIMEOUT, ask).await {
                Ok(Ok(answer)) => {
                    if self.health.answered() {
                        tracing::info!("Redis answers again: send limits are shared again");
                    }
                    return Some(answer);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} ms", CALL_TIMEOUT.as_millis()),
            };
            if self.health.failed() {
                tracing::warn!(
                    error = failure,
                    "Redis is unreachable: send limits are per node until it answers"
                );
            }
        }
        self.fallbacks.inc();
        None
    }

    /// Runs the script on the send's buckets.
    async fn ask(
        &self,
        user: &str,
        ip: IpAddr,
        room: &str,
    ) -> Result<Result<(), RetryAfter>, RedisError> {
        let ip = ip_key(ip).to_string();
        let mut call = self.script.prepare_invoke();
        let mut any = false;
        for (bucket, kind, key) in [
            (self.user, "user", user),
            (self.ip, "ip", ip.as_str()),
            (self.room, "room", room),
        ] {
            if let Some(b) = bucket {
                call.key(format!("{}{kind}:{key}", self.prefix))
                    .arg(b.t_us)
                    .arg(b.tau_us);
                any = true;
            }
        }
        if !any {
            return Ok(Ok(()));
        }
        let mut conn = self.conn.clone();
        let (refused, wait_us): (u32, u64) = call.invoke_async(&mut conn).await?;
        Ok(match refused {
            0 => Ok(()),
            _ => Err(RetryAfter(Duration::from_micros(wait_us))),
        })
    }
}

#[cfg(test)]
mod tests;
