//! `danmaku bench`: the load generator and benchmark scenarios.
//!
//! Each scenario starts fresh release nodes of its own (this same binary,
//! each with a temporary data directory, their PIDs known so that RSS and
//! CPU can be read from /proc; one node unless `--nodes`), or loads running
//! ones named by `--url` / `--cluster`, and spreads its connections over
//! them (`--place`). Viewers are lean hand-written WebSocket readers
//! ([`viewer`]): they scan frames for ids and send times instead of parsing
//! JSON, so that on a 2-core machine the generator is not what limits the
//! figures (Bilibili viewers, `fanout --protocol bilibili`, look each
//! brotli message up in a per-process memo instead of inflating it:
//! [`bili`]); with `--procs` they are spread over child processes
//! ([`audience`]). The bench speaks only the public protocol, so it loads a
//! cluster exactly as clients would.

mod audience;
mod bili;
mod cluster;
mod connect;
mod database;
mod fanout;
mod ingest;
mod progress;
mod report;
mod soak;
mod target;
mod viewer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Subcommand};

pub use report::Report;
use viewer::Protocol;

/// Options of `danmaku bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
    /// Benchmark a running server at this URL instead of starting one
    /// (then server RSS and CPU are reported as null). Give it once per
    /// node of a cluster: connections are spread over them (--place). It
    /// limits the bench like any client unless given a `service` token
    /// (--token).
    #[arg(long, global = true)]
    url: Vec<String>,
    /// The nodes of a running cluster, comma-separated: the same as one
    /// --url each.
    #[arg(long, global = true, value_delimiter = ',')]
    cluster: Vec<String>,
    /// How viewers are spread over the nodes: each room's dealt over them
    /// in turn, or all of a room's on one node picked by hashing its name
    /// (as a load balancer hashing on the room). Senders are always dealt
    /// over the nodes in turn.
    #[arg(long, global = true, value_enum, default_value_t)]
    place: cluster::Place,
    /// Nodes the bench starts (without --url), ids bench-1…bench-N.
    #[arg(long, global = true, conflicts_with_all = ["url", "cluster"])]
    nodes: Option<usize>,
    /// PostgreSQL URL for the nodes the bench starts: it creates a database
    /// of the run's own on that server (danmaku_bench_PID, with `psql`),
    /// and drops it at the end.
    #[arg(long, global = true, conflicts_with_all = ["url", "cluster"])]
    store_url: Option<String>,
    /// Redis or NATS URL for the nodes the bench starts, passed as is.
    #[arg(long, global = true, conflicts_with_all = ["url", "cluster"])]
    bus_url: Option<String>,
    /// Print one JSON object on stdout at the end instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    /// Config file for the nodes the bench starts, used as is. Without
    /// it, those nodes exempt loopback from their limits
    /// (`limits.exempt_ips`); with it, exempt the bench there or pass a
    /// `service` token (--token), or the limits, not the server, are what
    /// is measured.
    #[arg(long, global = true)]
    server_config: Option<PathBuf>,
    /// A token every bench connection presents (viewers, senders, ingest):
    /// against a server at --url, or one that needs tokens, a `service`
    /// token (`danmaku token --user bench --role service`), which is exempt
    /// from per-user and per-address limits.
    #[arg(long, global = true, env = "DANMAKU_TOKEN")]
    token: Option<String>,
}

/// Set when the server refused the bench for its limits (`rate_limited`,
/// 429): the run then measured the limits, and says so.
static RATE_LIMITED: AtomicBool = AtomicBool::new(false);

/// Notes a refusal for the server's limits.
fn note_rate_limited() {
    RATE_LIMITED.store(true, Ordering::Relaxed);
}

/// Whether the server refused the bench for its limits.
fn rate_limited() -> bool {
    RATE_LIMITED.load(Ordering::Relaxed)
}

/// The token from `--token`, set once before a scenario starts; every
/// connection the bench opens reads it.
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The room of a Bilibili fanout without `--room`: `/sub` names rooms by
/// number only.
const BILIBILI_ROOM: &str = "7100";

/// The room of a fanout: `--room`, or the default for `protocol`; an
/// error if the protocol cannot name it.
fn fanout_room(room: Option<String>, protocol: Protocol) -> anyhow::Result<String> {
    let room = room.unwrap_or_else(|| {
        match protocol {
            Protocol::Json => "bench",
            Protocol::Bilibili => BILIBILI_ROOM,
        }
        .to_owned()
    });
    if protocol == Protocol::Bilibili && room.parse::<u64>().is_err() {
        anyhow::bail!(
            "--protocol bilibili needs a numeric --room, not {room:?} (/sub names rooms by number)"
        );
    }
    Ok(room)
}

/// `&token=…` for a WebSocket URL's query, or nothing.
fn token_query() -> String {
    TOKEN
        .get()
        .map_or_else(String::new, |t| format!("&token={t}"))
}

/// How long one of the bench's HTTP requests may take: a node that never
/// answers must not hold a run forever.
const HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// POSTs a danmaku over HTTP; returns its id, or none if it was not accepted.
async fn post_danmaku(http: &reqwest::Client, url: &str, text: &str) -> Option<u64> {
    let mut req = http
        .post(url)
        .timeout(HTTP_TIMEOUT)
        .json(&serde_json::json!({ "text": text }));
    if let Some(token) = TOKEN.get() {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.ok()?;
    if res.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
        note_rate_limited();
    }
    if !res.status().is_success() {
        return None;
    }
    let body: serde_json::Value = res.json().await.ok()?;
    body["id"].as_u64()
}

/// An `Authorization` header line (with its CRLF), or nothing.
fn token_header() -> String {
    TOKEN
        .get()
        .map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"))
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N viewers in one room, S senders posting R danmaku/s in total over WebSocket.
    ///
    /// With `--protocol bilibili` the viewers speak Bilibili's live protocol
    /// at `/sub` (brotli, protover 3) instead of our JSON WebSocket; the
    /// senders are the same JSON WebSocket senders either way. The report
    /// gives `wire_bytes_per_danmaku` for both, to compare them.
    Fanout {
        /// Viewers (WebSocket connections) in the room.
        #[arg(long, default_value_t = 1000)]
        viewers: usize,
        /// Sending connections.
        #[arg(long, default_value_t = 4)]
        senders: usize,
        /// Danmaku per second in total.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// The room (default `bench`, or `7100` with `--protocol bilibili`,
        /// which needs a number).
        #[arg(long)]
        room: Option<String>,
        /// What the viewers speak: our JSON WebSocket (`/ws`), or
        /// Bilibili's live protocol with brotli (`/sub`, protover 3).
        #[arg(long, value_enum, default_value_t)]
        protocol: Protocol,
        /// Of the viewers, this many read too slowly on purpose: they should
        /// be reported as lagged (and their losses counted), never silently.
        #[arg(long, default_value_t = 0)]
        slow_viewers: usize,
        /// Load generator processes sharing the viewers.
        #[arg(long, default_value_t = 1)]
        procs: usize,
    },
    /// Many rooms with a few viewers each, each room receiving its own rate.
    Rooms {
        /// Rooms.
        #[arg(long, default_value_t = 200)]
        rooms: usize,
        /// Viewers in each room.
        #[arg(long, default_value_t = 5)]
        viewers_per_room: usize,
        /// Danmaku per second sent to each room.
        #[arg(long, default_value_t = 2.0)]
        rate_per_room: f64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Load generator processes sharing the viewers.
        #[arg(long, default_value_t = 1)]
        procs: usize,
    },
    /// HTTP POST sends, acknowledged only when durable.
    Ingest {
        /// Concurrent senders (each waits for its answer before sending again).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// A long mixed run: a hot room's viewers and senders, churning viewers,
    /// resumes, SSE reconnects and history reads around them, with the
    /// server's RSS and open files sampled as it goes.
    Soak(soak::Plan),
    /// N WebSocket connections held open over rooms: connect rate, server
    /// memory per connection, the nodes' online counts, and with --rate a
    /// trickle of danmaku every viewer must receive.
    Connect(connect::Plan),
    /// A child load generator process of the bench (internal).
    #[command(hide = true)]
    Shard,
}

/// Runs a scenario and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(token) = args.token {
        let _ = TOKEN.set(token);
    }
    if let Scenario::Shard = args.scenario {
        return audience::serve_shard().await;
    }
    // A room the viewers cannot name is refused before any node starts.
    if let Scenario::Fanout { room, protocol, .. } = &args.scenario {
        fanout_room(room.clone(), *protocol)?;
    }
    let urls: Vec<String> = args.url.iter().chain(&args.cluster).cloned().collect();
    let cluster = cluster::Cluster::start(cluster::Spec {
        urls: &urls,
        nodes: args.nodes.unwrap_or(1),
        config: args.server_config.as_deref(),
        store_url: args.store_url.as_deref(),
        bus_url: args.bus_url.as_deref(),
        place: args.place,
    })
    .await?;
    let run = cluster.begin().await;
    let mut report = match args.scenario {
        Scenario::Fanout {
            viewers,
            senders,
            rate,
            duration,
            room,
            protocol,
            slow_viewers,
            procs,
        } => {
            let room = fanout_room(room, protocol)?;
            let mut plan =
                fanout::Plan::new("fanout", vec![room], viewers, senders, rate, duration);
            plan.slow_viewers = slow_viewers;
            plan.procs = procs;
            plan.protocol = protocol;
            fanout::run(&cluster, plan).await?
        }
        Scenario::Rooms {
            rooms,
            viewers_per_room,
            rate_per_room,
            duration,
            procs,
        } => {
            let names = (0..rooms).map(|i| format!("bench-{i}")).collect();
            let senders = rooms.clamp(1, 16);
            let mut plan = fanout::Plan::new(
                "rooms",
                names,
                viewers_per_room,
                senders,
                rate_per_room * rooms as f64,
                duration,
            );
            plan.procs = procs;
            fanout::run(&cluster, plan).await?
        }
        Scenario::Ingest {
            concurrency,
            duration,
        } => ingest::run(&cluster, concurrency, duration).await?,
        Scenario::Connect(plan) => connect::run(&cluster, plan).await?,
        Scenario::Soak(plan) => soak::run(&cluster, plan).await?,
        Scenario::Shard => unreachable!("a shard returned above"),
    };
    cluster.finish(run, &mut report).await;
    cluster.stop().await;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.summary());
    }
    if rate_limited() {
        // Only a --server-config can take the bench's exemption away from
        // nodes it starts.
        let who = if urls.is_empty() && args.server_config.is_some() {
            "list 127.0.0.0/8 in that config's limits.exempt_ips, or pass a `service` token with --token"
        } else {
            "pass a `service` token with --token"
        };
        anyhow::bail!(
            "the server rate-limited the bench (429 rate_limited), so these figures measure \
             its limits, not the server: {who} (`danmaku token --user bench --role service`)"
        );
    }
    Ok(())
}
