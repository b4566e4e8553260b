//! `connect`: many WebSocket connections held open, in one process or
//! several; connect rate, the nodes' memory per connection, whether the
//! nodes count every room's viewers, and, with `--rate`, whether a trickle
//! of danmaku reaches every one of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::audience::{Audience, Crowd};
use super::cluster::{Cluster, Layout};
use super::progress::{Counters, Progress};
use super::report::Report;
use super::viewer::{now_micros, Protocol, STAMP};

/// Handshakes in flight at once, per process.
const CONCURRENCY: usize = 512;
/// How long the nodes may take to count every room's viewers (presence
/// reports every 2 s by default).
const ONLINE_WAIT: Duration = Duration::from_secs(15);
/// Room reads in flight at once while checking the counts.
const READS_IN_FLIGHT: usize = 32;

/// What to run: the options of `danmaku bench connect`.
#[derive(Debug, clap::Args)]
pub struct Plan {
    /// Connections (about 19,000 at most per process within a 20,000
    /// open-files limit: beyond that, use --procs).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Rooms the connections are spread over (`idle-0`, `idle-1`, …).
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Danmaku per second in total, sent over HTTP to the rooms in turn
    /// once every connection is open (0: none).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds of sending, with --rate.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Load generator processes sharing the connections.
    #[arg(long, default_value_t = 1)]
    procs: usize,
}

/// Opens the connections, measures, sends the trickle, checks, then closes them.
pub async fn run(cluster: &Cluster, plan: Plan) -> anyhow::Result<Report> {
    if plan.rooms == 0 || plan.procs == 0 {
        anyhow::bail!("--rooms and --procs must be at least 1");
    }
    let counters = Arc::new(Counters::default());
    let _progress = Progress::start("connect", counters.clone());
    // Settle the nodes' allocators before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = cluster.rss_bytes();
    let cpu_before = cluster.cpu_seconds();
    let rooms: Vec<String> = (0..plan.rooms).map(|r| format!("idle-{r}")).collect();
    let crowd = Crowd {
        layout: cluster.layout().clone(),
        rooms: rooms.clone(),
        viewers: plan.connections,
        slow_viewers: 0,
        concurrency: CONCURRENCY,
        protocol: Protocol::Json,
        start_ids: Vec::new(),
    };
    let started = Instant::now();
    let audience = Audience::gather(&crowd, plan.procs, &counters).await?;
    let connect_s = started.elapsed().as_secs_f64();
    // Let the nodes finish their per-connection work (hello frames, online
    // counts) before reading their memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = cluster.rss_bytes();
    let connections = audience.total();
    let connect_errors = audience.errors;
    let mismatches = check_online(cluster, &rooms, &audience.connected).await;

    let trickle = send_trickle(cluster.layout(), cluster.http(), &rooms, &plan, &counters).await;
    let seen = audience.finish(&trickle.last_ids, &counters).await?;
    let mut report = Report {
        scenario: "connect",
        rooms: Some(plan.rooms),
        connections: Some(connections),
        connect_s: Some(connect_s),
        connects_per_s: Some(connections as f64 / connect_s),
        errors: Some(connect_errors + trickle.failed),
        server_rss_bytes: rss_after,
        server_rss_per_conn_bytes: rss_after
            .zip(rss_before)
            .filter(|_| connections > 0)
            .map(|(a, b)| (a as f64 - b as f64) / connections as f64),
        server_cpu_s: cluster.cpu_seconds().zip(cpu_before).map(|(a, b)| a - b),
        online_mismatches: Some(mismatches),
        procs: Some(plan.procs),
        ..Report::default()
    };
    if plan.rate > 0.0 {
        report.offered_per_s = Some(plan.rate);
        report.sent = Some(trickle.acked);
        report.delivered_per_s = Some(seen.received as f64 / plan.duration);
        report.lost = Some(seen.lost);
        report.duplicated = Some(seen.duplicated);
        report.lagged = Some(seen.lagged);
        report.thinned = Some(seen.thinned);
        report.sending_s = Some(trickle.seconds);
        if let Some(h) = counters.latency.lock().expect("latency lock").as_ref() {
            report.set_latency(h);
        }
    }
    Ok(report)
}

/// Counts the rooms whose `online`, as the nodes report it, does not come
/// to the connections the bench holds in them within `ONLINE_WAIT`. Nodes
/// that share their counts (a cluster) each report the room's total;
/// nodes that do not each report their own, and those add up to it. Where
/// nodes also report `online_local` (their own viewers), those must add up
/// to it too.
async fn check_online(cluster: &Cluster, rooms: &[String], connected: &[u64]) -> u64 {
    let deadline = Instant::now() + ONLINE_WAIT;
    let mut pending: Vec<usize> = (0..rooms.len()).collect();
    loop {
        let checks = futures_util::stream::iter(pending.iter().map(|&r| async move {
            let counts = futures_util::future::join_all(
                cluster
                    .layout()
                    .addrs
                    .iter()
                    .map(|addr| online(cluster.http(), *addr, &rooms[r])),
            )
            .await;
            let counts: Option<Vec<Online>> = counts.into_iter().collect();
            let want = connected[r];
            let ok = counts.is_some_and(|c| {
                let shared = c.iter().all(|n| n.online == want);
                let summed = c.iter().map(|n| n.online).sum::<u64>() == want;
                let locals: Option<u64> = c.iter().map(|n| n.local).sum();
                (shared || summed) && locals.is_none_or(|l| l == want)
            });
            (r, ok)
        }))
        .buffer_unordered(READS_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
        pending = checks
            .into_iter()
            .filter_map(|(r, ok)| (!ok).then_some(r))
            .collect();
        if pending.is_empty() || Instant::now() >= deadline {
            if !pending.is_empty() {
                tracing::warn!(rooms = pending.len(), "online counts did not match");
            }
            return pending.len() as u64;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A room's viewer counts as one node reports them.
struct Online {
    /// `online`: the cluster's (or, alone, the node's).
    online: u64,
    /// `online_local`: the node's own, where it says.
    local: Option<u64>,
}

/// Reads a room's counts from one node.
async fn online(http: &reqwest::Client, addr: std::net::SocketAddr, room: &str) -> Option<Online> {
    let mut req = http.get(format!("http://{addr}/api/v1/rooms/{room}"));
    if let Some(token) = super::TOKEN.get() {
        req = req.bearer_auth(token);
    }
    let body: serde_json::Value = req.send().await.ok()?.json().await.ok()?;
    Some(Online {
        online: body["online"].as_u64()?,
        local: body["online_local"].as_u64(),
    })
}

/// What the trickle did.
struct Trickle {
    /// Each room's newest acknowledged id (0 where nothing was sent).
    last_ids: Vec<u64>,
    /// Sends acknowledged.
    acked: u64,
    /// Sends refused or failed.
    failed: u64,
    /// Seconds from the first send to the last answer.
    seconds: f64,
}

/// Sends `rate × duration` danmaku over HTTP to the rooms in turn, and to
/// the nodes in turn.
async fn send_trickle(
    layout: &Layout,
    http: &reqwest::Client,
    rooms: &[String],
    plan: &Plan,
    counters: &Arc<Counters>,
) -> Trickle {
    let last_ids: Arc<Vec<AtomicU64>> = Arc::new(rooms.iter().map(|_| AtomicU64::new(0)).collect());
    let planned = (plan.rate * plan.duration).round() as usize;
    let started = Instant::now();
    let mut sends = Vec::with_capacity(planned);
    if planned > 0 {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.rate));
        for n in 0..planned {
            tick.tick().await;
            let room = n % rooms.len();
            let node = layout.sender(n);
            let url = format!("http://{node}/api/v1/rooms/{}/danmaku", rooms[room]);
            let (http, last_ids, counters) = (http.clone(), last_ids.clone(), counters.clone());
            // Each send on its own, so that a slow answer does not hold
            // back the pace.
            sends.push(tokio::spawn(async move {
                let text = format!("{STAMP}{}", now_micros());
                let id = super::post_danmaku(&http, &url, &text).await;
                if let Some(id) = id {
                    last_ids[room].fetch_max(id, Ordering::Relaxed);
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                }
                id.is_some()
            }));
        }
    }
    let mut acked = 0;
    for s in futures_util::future::join_all(sends).await {
        acked += u64::from(matches!(s, Ok(true)));
    }
    Trickle {
        last_ids: last_ids.iter().map(|l| l.load(Ordering::Relaxed)).collect(),
        acked,
        failed: planned as u64 - acked,
        seconds: started.elapsed().as_secs_f64(),
    }
}
