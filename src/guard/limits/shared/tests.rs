//! Two nodes' shared limits on one Redis: the machine's shared one
//! (127.0.0.1:6379, a namespace per test), or a throwaway `redis-server`
//! that a test stops and starts again.

use super::*;
use crate::testing::{free_port, namespace, Throwaway};

/// The machine's shared Redis.
const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

/// Small bursts, and every other limit out of the way.
fn limits() -> Limits {
    Limits {
        send_burst: 3,
        send_per_second: 1.0,
        ip_send_burst: 1000,
        ip_send_per_second: 1000.0,
        room_send_burst: 1000,
        room_send_per_second: 1000.0,
        ..Limits::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// What one node holds: the shared limits, its own buckets, its counter.
struct Node {
    shared: SharedLimits,
    local: RateLimits,
    fallbacks: Counter,
}

impl Node {
    async fn start(url: &str, ns: &str, limits: &Limits) -> Node {
        let fallbacks = Counter::default();
        let shared = SharedLimits::connect(url, ns, limits, fallbacks.clone())
            .await
            .unwrap_or_else(|e| {
                panic!("Redis at {url} is not reachable: start it (redis-server): {e}")
            });
        Node {
            shared,
            local: RateLimits::new(limits),
            fallbacks,
        }
    }

    async fn send(&self, user: &str, addr: &str, room: &str) -> Result<(), RetryAfter> {
        self.shared
            .check_send(user, ip(addr), room, &self.local)
            .await
    }
}

/// Two nodes on the shared Redis, in a namespace of their own.
async fn two_nodes(test: &str, limits: &Limits) -> (Node, Node) {
    let ns = namespace(test);
    (
        Node::start(SHARED_REDIS, &ns, limits).await,
        Node::start(SHARED_REDIS, &ns, limits).await,
    )
}

#[tokio::test]
async fn two_nodes_share_a_users_burst_and_its_refill() {
    let (a, b) = two_nodes("user", &limits()).await;
    async fn send(n: &Node) -> Result<(), RetryAfter> {
        n.send("u", "10.0.0.1", "r").await
    }
    // Burst 3 in all, however the sends are spread.
    send(&a).await.unwrap();
    send(&b).await.unwrap();
    send(&a).await.unwrap();
    for n in [&a, &b, &a, &b] {
        let refused = send(n).await.unwrap_err();
        assert!(refused.secs() >= 1);
        // 1 per second: the next token is at most 1 s away.
        assert!(refused.0 > Duration::ZERO && refused.0 <= Duration::from_secs(1));
    }
    // Refilled at the rate: one token when the wait is over, no more.
    let wait = send(&a).await.unwrap_err().0;
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    send(&b).await.unwrap();
    assert!(send(&a).await.is_err(), "one token per second, no more");
    // Another user has its own bucket.
    b.send("v", "10.0.0.1", "r").await.unwrap();
    assert_eq!(a.fallbacks.get() + b.fallbacks.get(), 0);
}

#[tokio::test]
async fn two_nodes_share_an_addresss_bucket_keyed_by_ipv4_or_ipv6_slash_64() {
    let l = Limits {
        ip_send_burst: 2,
        ip_send_per_second: 0.01,
        ..limits()
    };
    let (a, b) = two_nodes("ip", &l).await;
    a.send("u1", "2001:db8::1", "r").await.unwrap();
    b.send("u2", "2001:db8::2:3", "r").await.unwrap();
    let refused = a.send("u3", "2001:db8::ffff", "r").await.unwrap_err();
    assert!(
        refused.secs() > 90,
        "the address's bucket, refilling slowly"
    );
    assert!(b.send("u4", "2001:db8::4", "r").await.is_err());
    b.send("u5", "2001:db8:0:1::1", "r").await.unwrap();
    // An IPv4-mapped address counts as its IPv4 address.
    b.send("u6", "192.0.2.1", "r").await.unwrap();
    a.send("u7", "::ffff:192.0.2.1", "r").await.unwrap();
    assert!(b.send("u8", "192.0.2.1", "r").await.is_err());
}

#[tokio::test]
async fn two_nodes_share_a_rooms_bucket() {
    let l = Limits {
        room_send_burst: 2,
        room_send_per_second: 0.01,
        ..limits()
    };
    let (a, b) = two_nodes("room", &l).await;
    a.send("u1", "10.0.0.1", "r").await.unwrap();
    b.send("u2", "10.0.0.2", "r").await.unwrap();
    assert!(a.send("u3", "10.0.0.3", "r").await.unwrap_err().secs() > 90);
    assert!(b.send("u4", "10.0.0.4", "r").await.is_err());
    b.send("u5", "10.0.0.5", "other").await.unwrap();
}

#[tokio::test]
async fn a_refused_send_spends_the_tokens_of_the_buckets_checked_before() {
    let l = Limits {
        send_burst: 1,
        send_per_second: 0.01,
        ip_send_burst: 3,
        ip_send_per_second: 0.01,
        room_send_burst: 2,
        room_send_per_second: 0.01,
        ..limits()
    };
    let (a, b) = two_nodes("order", &l).await;
    let addr = "10.0.0.1";
    a.send("u", addr, "r").await.unwrap();
    // Refused by its own bucket: spends nothing of the address or room.
    for _ in 0..10 {
        assert!(b.send("u", addr, "r").await.is_err());
    }
    b.send("v", addr, "r").await.unwrap();
    // Refused by the room: w's own token and the address's are spent.
    assert!(a.send("w", addr, "r").await.is_err());
    assert!(
        b.send("w", "10.0.0.9", "other").await.is_err(),
        "w's only token went"
    );
    assert!(
        a.send("x", addr, "other").await.is_err(),
        "the address's third token went too"
    );
}

#[tokio::test]
async fn an_idle_key_expires_once_its_bucket_is_full() {
    let l = Limits {
        send_burst: 3,
        send_per_second: 20.0,
        ..limits()
    };
    let ns = namespace("expiry");
    let a = Node::start(SHARED_REDIS, &ns, &l).await;
    a.send("u", "10.0.0.1", "r").await.unwrap();
    let mut redis = Client::open(SHARED_REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{ns}:limit:user:u");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    // One token spent at 20 per second: full again within 50 ms.
    assert!((1..=50).contains(&ttl), "{ttl}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let left: u32 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// Sends as `user` from `n`, and checks the answer came within the timeout
/// and was not a refusal for want of Redis.
#[tokio::test]
async fn two_nodes_share_slow_mode() {
    let (a, b) = two_nodes("slow", &limits()).await;
    let every = Duration::from_millis(1500);
    async fn slow(n: &Node, user: &str) -> Result<(), RetryAfter> {
        let every = Duration::from_millis(1500);
        n.shared.check_slow_mode("r", user, every).await.unwrap()
    }
    slow(&a, "u").await.unwrap();
    // The same user's next send, on either node, waits out the interval.
    for n in [&b, &a] {
        let left = slow(n, "u").await.unwrap_err();
        assert!(left.0 > Duration::ZERO && left.0 <= every, "{left:?}");
    }
    // Another user, or the same user in another room, is not held up.
    slow(&b, "v").await.unwrap();
    a.shared
        .check_slow_mode("elsewhere", "u", every)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(every).await;
    slow(&b, "u").await.unwrap();
    assert_eq!(a.fallbacks.get() + b.fallbacks.get(), 0);
}

#[tokio::test]
async fn two_nodes_share_the_flood_guard() {
    let (a, b) = two_nodes("flood", &limits()).await;
    let window = Duration::from_millis(1500);
    let hello = crate::guard::filter::FloodGuard::fingerprint("hello");
    let other = crate::guard::filter::FloodGuard::fingerprint("other");
    async fn flood(n: &Node, user: &str, text: u64) -> Result<(), RetryAfter> {
        let window = Duration::from_millis(1500);
        n.shared.check_flood(user, text, window, 2).await.unwrap()
    }
    // Two sends of a text in the window, wherever they go; the third waits
    // for the window's end.
    flood(&a, "u", hello).await.unwrap();
    flood(&b, "u", hello).await.unwrap();
    let left = flood(&a, "u", hello).await.unwrap_err();
    assert!(left.0 > Duration::ZERO && left.0 <= window, "{left:?}");
    assert!(flood(&b, "u", hello).await.is_err());
    // Another text, or another user, is not a repeat.
    flood(&b, "u", other).await.unwrap();
    flood(&a, "v", hello).await.unwrap();
    tokio::time::sleep(window).await;
    flood(&b, "u", hello).await.unwrap();
    assert_eq!(a.fallbacks.get() + b.fallbacks.get(), 0);
}

#[tokio::test]
async fn slow_mode_without_redis_is_left_to_the_node() {
    let mut redis = Throwaway::redis().await;
    let url = format!("redis://127.0.0.1:{}", redis.port());
    let a = Node::start(&url, &namespace("slow-down"), &limits()).await;
    redis.kill();
    let answer = a
        .shared
        .check_slow_mode("r", "u", Duration::from_secs(5))
        .await;
    assert!(answer.is_none(), "asks the node's own clock instead");
    assert_eq!(a.fallbacks.get(), 1);
}

async fn send_in_time(n: &Node, user: &str) -> Result<(), RetryAfter> {
    let started = Instant::now();
    let answer = n.send(user, "10.0.0.1", "r").await;
    let took = started.elapsed();
    assert!(
        took < CALL_TIMEOUT + Duration::from_millis(250),
        "a send waited {took:?} for Redis"
    );
    answer
}

/// Sends until `n` answers from Redis again (its fallback counter stays
/// put), within 10 s.
async fn until_shared_again(n: &Node, probe: &str) {
    let started = Instant::now();
    loop {
        let before = n.fallbacks.get();
        let _ = send_in_time(n, probe).await;
        if n.fallbacks.get() == before {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the shared limits did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three passes in all across both nodes, then refusals, all from Redis.
async fn shared_burst_holds(a: &Node, b: &Node, user: &str) {
    let fallbacks = a.fallbacks.get() + b.fallbacks.get();
    for n in [a, b, a] {
        send_in_time(n, user).await.unwrap();
    }
    for n in [b, a] {
        assert!(send_in_time(n, user).await.is_err());
    }
    assert_eq!(a.fallbacks.get() + b.fallbacks.get(), fallbacks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_to_local_limits_in_time_and_ends_when_it_is_back() {
    let mut redis = Throwaway::redis().await;
    let url = format!("redis://127.0.0.1:{}", redis.port());
    let ns = namespace("outage");
    let a = Node::start(&url, &ns, &limits()).await;
    let b = Node::start(&url, &ns, &limits()).await;
    shared_burst_holds(&a, &b, "before").await;

    // A Redis that hangs: the first send waits the timeout at most, and
    // passes under the local limits.
    redis.freeze(true);
    send_in_time(&a, "hung").await.unwrap();
    assert_eq!(a.fallbacks.get(), 1);
    // Until the next probe, sends do not wait for Redis at all.
    let started = Instant::now();
    send_in_time(&a, "hung").await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(50));
    redis.freeze(false);
    until_shared_again(&a, "probe-a1").await;

    // A Redis that is gone: each node is held to its own local limits,
    // burst 3 apiece, never refused for want of Redis.
    redis.kill();
    for n in [&a, &b] {
        let before = n.fallbacks.get();
        for _ in 0..3 {
            send_in_time(n, "down").await.unwrap();
        }
        let refused = send_in_time(n, "down").await.unwrap_err();
        assert!(refused.secs() >= 1);
        assert_eq!(n.fallbacks.get(), before + 4);
    }

    // Back: the limits are shared again (the restarted Redis has lost the
    // script too, which EVALSHA's fallback sends again).
    redis.launch().await;
    until_shared_again(&a, "probe-a2").await;
    until_shared_again(&b, "probe-b2").await;
    shared_burst_holds(&a, &b, "after").await;
}

#[tokio::test]
async fn an_unreachable_redis_at_start_is_a_clear_error() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let error = SharedLimits::connect(&url, "x", &limits(), Counter::default())
        .await
        .err()
        .expect("nothing listens there");
    assert!(started.elapsed() < Duration::from_secs(5));
    let message = error.to_string();
    assert!(message.contains("Redis (bus.url)"), "{message}");
}

#[tokio::test]
async fn without_a_redis_bus_limits_stay_per_node() {
    let mut config = Config::default();
    let none = SharedLimits::from_config(&config, Counter::default()).await;
    assert!(none.unwrap().is_none());
    config.bus.url = Some("nats://127.0.0.1:4222".into());
    let nats = SharedLimits::from_config(&config, Counter::default()).await;
    assert!(nats.unwrap().is_none());
}

#[test]
fn an_outage_is_reported_once_and_probed_once_a_second() {
    let health = Health::new();
    assert!(health.should_ask() && !health.answered(), "up: no news");
    assert!(health.failed(), "the outage starts");
    assert!(!health.failed(), "and is reported once");
    assert!(!health.should_ask(), "no probe before a second has passed");
    health
        .skip_until_ms
        .store(health.now_ms(), std::sync::atomic::Ordering::Relaxed);
    assert!(health.should_ask(), "one probe when it is due");
    assert!(!health.should_ask(), "only one");
    assert!(health.answered(), "the outage ends");
    assert!(!health.answered() && health.should_ask());
}
