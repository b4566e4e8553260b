//! `danmaku bench`: the load generator and benchmark scenarios.
//!
//! Each scenario starts a fresh release server of its own (this same
//! binary, a temporary data directory, its PID known so that RSS and CPU
//! can be read from /proc) unless `--url` names a running one. Viewers are
//! lean hand-written WebSocket readers ([`viewer`]): they scan frames for
//! ids and send times instead of parsing JSON, so that on a 2-core machine
//! the generator is not what limits the figures.

mod connect;
mod fanout;
mod ingest;
mod progress;
mod report;
mod soak;
mod target;
mod viewer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Subcommand};

pub use report::Report;

/// Options of `danmaku bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
    /// Benchmark a running server at this URL instead of starting one
    /// (then server RSS and CPU are reported as null). It limits the bench
    /// like any client unless given a `service` token (--token).
    #[arg(long, global = true)]
    url: Option<String>,
    /// Print one JSON object on stdout at the end instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    /// Config file for the server the bench starts, used as is. Without
    /// it, that server exempts loopback from its limits
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

/// The token from `--token`, set once before a scenario starts; every
/// connection the bench opens reads it.
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// `&token=…` for a WebSocket URL's query, or nothing.
fn token_query() -> String {
    TOKEN
        .get()
        .map_or_else(String::new, |t| format!("&token={t}"))
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
        /// The room.
        #[arg(long, default_value = "bench")]
        room: String,
        /// Of the viewers, this many read too slowly on purpose: they should
        /// be reported as lagged (and their losses counted), never silently.
        #[arg(long, default_value_t = 0)]
        slow_viewers: usize,
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
    /// N idle WebSocket connections: connect rate and server memory per connection.
    Connect {
        /// Connections (at most about 19,000 within a 20,000 open-files limit).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
}

/// Runs a scenario and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(token) = args.token {
        let _ = TOKEN.set(token);
    }
    let target = target::Target::start(args.url.as_deref(), args.server_config.as_deref()).await?;
    let addr: SocketAddr = target.addr;
    let report = match args.scenario {
        Scenario::Fanout {
            viewers,
            senders,
            rate,
            duration,
            room,
            slow_viewers,
        } => {
            let mut plan =
                fanout::Plan::new("fanout", vec![room], viewers, senders, rate, duration);
            plan.slow_viewers = slow_viewers;
            fanout::run(&target, addr, plan).await?
        }
        Scenario::Rooms {
            rooms,
            viewers_per_room,
            rate_per_room,
            duration,
        } => {
            let names = (0..rooms).map(|i| format!("bench-{i}")).collect();
            let senders = rooms.clamp(1, 16);
            let plan = fanout::Plan::new(
                "rooms",
                names,
                viewers_per_room,
                senders,
                rate_per_room * rooms as f64,
                duration,
            );
            fanout::run(&target, addr, plan).await?
        }
        Scenario::Ingest {
            concurrency,
            duration,
        } => ingest::run(&target, addr, concurrency, duration).await?,
        Scenario::Connect { connections } => connect::run(&target, addr, connections).await?,
        Scenario::Soak(plan) => soak::run(&target, addr, plan).await?,
    };
    target.stop().await;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.summary());
    }
    if RATE_LIMITED.load(Ordering::Relaxed) {
        // Only a --server-config can take the bench's exemption away from
        // a server it starts.
        let who = if args.url.is_none() && args.server_config.is_some() {
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
