//! `connect`: many idle WebSocket connections; connect rate and the
//! server's memory per connection.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::progress::{Counters, Progress};
use super::report::Report;
use super::target::Target;
use super::viewer::{handshake, source_ip};

/// Handshakes in flight at once.
const CONCURRENCY: usize = 512;

/// Opens `n` idle connections, measures, then closes them.
pub async fn run(target: &Target, addr: SocketAddr, n: usize) -> anyhow::Result<Report> {
    let counters = Arc::new(Counters::default());
    let _progress = Progress::start("connect", counters.clone());
    // Settle the server's allocator before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = target.rss_bytes();
    let cpu_before = target.cpu_seconds();
    let started = Instant::now();
    let mut open = Vec::with_capacity(n);
    let mut errors = 0u64;
    for chunk in (0..n).collect::<Vec<_>>().chunks(CONCURRENCY) {
        let attempts = chunk
            .iter()
            .map(|&i| handshake(addr, source_ip(i), "idle", false));
        for result in futures_util::future::join_all(attempts).await {
            match result {
                Ok(conn) => {
                    counters.connected.fetch_add(1, Ordering::Relaxed);
                    open.push(conn);
                }
                Err(e) => {
                    errors += 1;
                    tracing::warn!(error = %e, "connection failed");
                }
            }
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    // Let the server finish its per-connection work (hello frames, online
    // counts) before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = target.rss_bytes();
    let connections = open.len();
    let report = Report {
        scenario: "connect",
        connections: Some(connections),
        connect_s: Some(connect_s),
        connects_per_s: Some(connections as f64 / connect_s),
        errors: Some(errors),
        server_rss_bytes: rss_after,
        server_rss_per_conn_bytes: rss_after
            .zip(rss_before)
            .filter(|_| connections > 0)
            .map(|(a, b)| (a as f64 - b as f64) / connections as f64),
        server_cpu_s: target.cpu_seconds().zip(cpu_before).map(|(a, b)| a - b),
        ..Report::default()
    };
    drop(open);
    Ok(report)
}
