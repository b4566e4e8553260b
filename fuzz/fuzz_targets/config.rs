//! The config file on arbitrary UTF-8: `Config::from_toml`, then
//! `validate`, then, for a config that passes, what startup builds from it
//! without touching the disk or the network: the rate limiters, the flood
//! guard, the HS256 authenticator, the coalescing windows, a deadline of
//! each duration key. It must never panic: a config `validate` passes must
//! start.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use danmaku::config::Config;
use danmaku::guard::auth::Authenticator;
use danmaku::guard::filter::FloodGuard;
use danmaku::guard::limits::RateLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text) else {
        return;
    };
    if config.validate().is_err() {
        return;
    }

    let limits = RateLimits::new(&config.limits);
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for _ in 0..3 {
        let _ = limits.check_send("u", ip, "lobby");
        let _ = limits.check_connect(ip);
    }
    if let Some(flood) = FloodGuard::new(&config.filter, config.limits.max_limiter_keys) {
        for _ in 0..3 {
            let _ = flood.check("u", "hello");
        }
        flood.sweep();
    }
    limits.sweep();

    let _ = config.filter.reload_interval();
    // Each room's flusher starts from `window(usize::MAX)`, the longest.
    let cap = std::time::Duration::from_millis(config.fanout.coalesce_ms.max(1));
    for viewers in [0, 1, 1_000, 1_000_000, usize::MAX] {
        let window = config.fanout.window(viewers);
        assert!(window >= std::time::Duration::from_millis(1) && window <= cap);
    }

    // Validated durations make deadlines without overflow, as the timers do.
    let now = std::time::Instant::now();
    let (f, c) = (&config.fanout, &config.connection);
    for ms in [f.coalesce_ms, f.online_interval_ms, config.filter.reload_interval_ms] {
        let _ = now + std::time::Duration::from_millis(ms);
    }
    let seconds = [
        f.lag_window_s,
        f.room_idle_s,
        config.filter.flood_window_s,
        c.ping_interval_s,
        c.idle_timeout_s,
        c.write_timeout_s,
        c.header_timeout_s,
        c.shutdown_grace_s,
    ];
    for s in seconds {
        let _ = now + std::time::Duration::from_secs(s);
    }

    // Key files would be read from disk: only the HS256 secret is tried.
    let auth = &config.auth;
    if auth.rs256_public_key_file.is_none() && auth.es256_public_key_file.is_none() {
        Authenticator::from_config(auth).expect("a validated [auth] section builds");
    }
});
