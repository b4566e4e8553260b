//! `soak`: a long mixed run that watches the server's memory and open files.
//!
//! What a node meets over hours, in minutes: a hot room whose viewers stay
//! and whose senders keep a steady rate, and around it constant churn:
//! WebSocket viewers of quieter rooms that come and go (some closing
//! cleanly, some reset), resumes with `since`, SSE streams that reconnect
//! with `Last-Event-ID`, sends to the quiet rooms and history reads. Every
//! few seconds it reads the server's RSS and open files from /proc. The
//! report says whether the hot room's viewers lost or repeated anything,
//! how RSS moved after warm-up, and the files the server held before the
//! load and after it ended: a leak shows as a slope, a bounded cache as a
//! plateau.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::cluster::{Cluster, Layout};
use super::post_danmaku as post;
use super::progress::{Counters, Progress};
use super::report::Report;
use super::viewer::{handshake, now_micros, source_ip, ws_target, Protocol, Seen, Viewer, STAMP};

/// The hot room.
const HOT: &str = "soak-hot";
/// Hot viewers connected at once while the run starts.
const CONNECT_CONCURRENCY: usize = 256;
/// Hot viewers whose latencies are measured: one in this many.
const SAMPLE_EVERY_NTH: usize = 10;
/// How long the hot viewers may take to receive the last danmaku.
const DRAIN: Duration = Duration::from_secs(10);
/// After the load, time for the server to close what the bench left (a
/// WebSocket lingers up to 2 s for its client's close) before the last count.
const SETTLE: Duration = Duration::from_secs(4);

/// What to run: the options of `danmaku bench soak`.
#[derive(Debug, clap::Args)]
pub struct Plan {
    /// Seconds of load.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Viewers of the hot room, connected for the whole run.
    #[arg(long, default_value_t = 2000)]
    viewers: usize,
    /// Danmaku per second to the hot room, in total.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// HTTP senders sharing the rate.
    #[arg(long, default_value_t = 10)]
    senders: usize,
    /// Churning clients, each with one connection or request at a time.
    #[arg(long, default_value_t = 300)]
    churn: usize,
    /// Quiet rooms the churning clients visit.
    #[arg(long, default_value_t = 50)]
    rooms: usize,
    /// Seconds of warm-up before RSS growth is counted (default: a fifth
    /// of the duration).
    #[arg(long)]
    warmup: Option<f64>,
    /// Seconds between two readings of the server's RSS and open files.
    #[arg(long, default_value_t = 5.0)]
    sample_every: f64,
}

/// One reading of the server.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// Resident memory, bytes.
    pub rss_bytes: Option<u64>,
    /// Open file descriptors (sockets, database files, the rest).
    pub fds: Option<u64>,
    /// Connections the bench held open.
    pub connections: u64,
}

/// The figures only a soak has.
#[derive(Debug, Serialize)]
pub struct SoakFigures {
    /// RSS at the end of warm-up, bytes.
    pub rss_warm_bytes: Option<u64>,
    /// RSS at the end of the load, bytes.
    pub rss_end_bytes: Option<u64>,
    /// End minus warm-up: what a leak would show as.
    pub rss_growth_after_warmup_bytes: Option<i64>,
    /// The highest RSS sampled, bytes.
    pub rss_peak_bytes: Option<u64>,
    /// RSS once the load ended and its connections closed, bytes.
    pub rss_after_bytes: Option<u64>,
    /// Open files before the first connection.
    pub fds_before: Option<u64>,
    /// The most open files sampled.
    pub fds_peak: Option<u64>,
    /// Open files once the load ended and its connections closed.
    pub fds_after: Option<u64>,
    /// Connections and requests the churning clients made.
    pub churned: u64,
    /// The readings, every `sample_every` seconds.
    pub samples: Vec<Sample>,
}

/// Runs the plan and reports.
pub async fn run(cluster: &Cluster, plan: Plan) -> anyhow::Result<Report> {
    let counters = Arc::new(Counters::default());
    let _progress = Progress::start("soak", counters.clone());
    let layout = cluster.layout();
    let read = |t_s: f64, counters: &Counters| Sample {
        t_s,
        rss_bytes: cluster.rss_bytes(),
        fds: cluster.open_fds(),
        connections: counters.connected.load(Ordering::Relaxed),
    };
    let before = read(0.0, &counters);

    // The hot room's viewers stay for the whole run.
    let mut hot = Vec::with_capacity(plan.viewers);
    let mut errors = 0u64;
    let indices: Vec<usize> = (0..plan.viewers).collect();
    for chunk in indices.chunks(CONNECT_CONCURRENCY) {
        let attempts = chunk.iter().map(|&i| {
            let sample = i % SAMPLE_EVERY_NTH == 0;
            Viewer::connect(
                layout.viewer(HOT, i),
                source_ip(i),
                HOT,
                Protocol::Json,
                sample,
                false,
            )
        });
        for result in futures_util::future::join_all(attempts).await {
            match result {
                Ok(v) => {
                    counters.connected.fetch_add(1, Ordering::Relaxed);
                    hot.push(v);
                }
                Err(e) => {
                    errors += 1;
                    tracing::warn!(error = %e, "hot viewer failed to connect");
                }
            }
        }
    }
    let last_delivery = Arc::new(AtomicU64::new(0));
    let (final_id, _) = watch::channel(None);
    let hot: Vec<_> = hot
        .into_iter()
        .map(|v| {
            tokio::spawn(v.run(
                counters.clone(),
                last_delivery.clone(),
                final_id.subscribe(),
            ))
        })
        .collect();

    let cpu_before = cluster.cpu_seconds();
    let started = Instant::now();
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(plan.duration);
    let http = reqwest::Client::builder()
        .timeout(super::HTTP_TIMEOUT)
        .build()?;
    let hot_last = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..plan.senders)
        .map(|s| {
            let period = Duration::from_secs_f64(plan.senders as f64 / plan.rate);
            let node = layout.sender(s);
            let (http, url) = (
                http.clone(),
                format!("http://{node}/api/v1/rooms/{HOT}/danmaku"),
            );
            let (counters, hot_last) = (counters.clone(), hot_last.clone());
            // Out of phase with one another, as real senders are.
            let first =
                tokio::time::Instant::now() + period.mul_f64(s as f64 / plan.senders as f64);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(first, period);
                let mut failed = 0u64;
                while tick.tick().await < until {
                    let text = format!("{STAMP}{}", now_micros());
                    match post(&http, &url, &text).await {
                        Some(id) => {
                            hot_last.fetch_max(id, Ordering::Relaxed);
                            counters.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        None => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    let churned = Arc::new(AtomicU64::new(0));
    let churners: Vec<_> = (0..plan.churn)
        .map(|slot| {
            let churner = Churner {
                layout: layout.clone(),
                slot,
                http: http.clone(),
                source: source_ip(plan.viewers + slot),
                rooms: plan.rooms.max(1),
                rng: 0x9e37_79b9_7f4a_7c15 ^ (slot as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9),
                last_event_id: 0,
            };
            tokio::spawn(churner.run(until, counters.clone(), churned.clone()))
        })
        .collect();

    // Sample until the load ends.
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(plan.sample_every.max(0.1)));
    while tick.tick().await < until {
        let sample = read(started.elapsed().as_secs_f64(), &counters);
        eprintln!(
            "[soak {:>5.0}s] rss {:>7.1} MiB  fds {:>6}  connections {:>6}",
            sample.t_s,
            sample.rss_bytes.map_or(f64::NAN, mib),
            sample.fds.map_or(-1, |n| n as i64),
            sample.connections,
        );
        samples.push(sample);
    }
    let end = read(started.elapsed().as_secs_f64(), &counters);
    samples.push(end);
    for s in senders {
        errors += s.await?;
    }
    for c in churners {
        errors += c.await?;
    }
    let cpu_after = cluster.cpu_seconds();

    // The hot viewers wait for the last acknowledged id, then leave.
    final_id.send_replace(Some(hot_last.load(Ordering::Relaxed)));
    let drained = tokio::time::timeout(DRAIN, futures_util::future::join_all(hot)).await;
    drop(final_id);
    let Ok(results) = drained else {
        anyhow::bail!("hot viewers did not receive everything within {DRAIN:?} after the load");
    };
    let seen: Vec<Seen> = results.into_iter().collect::<Result<_, _>>()?;
    let total = |count: fn(&Seen) -> u64| seen.iter().map(count).sum::<u64>();
    // The client's idle keep-alive connections are the bench's, not the
    // server's: close them before the last count.
    drop(http);
    tokio::time::sleep(SETTLE).await;
    let after = read(started.elapsed().as_secs_f64(), &counters);

    let warm = samples
        .iter()
        .find(|s| s.t_s >= plan.warmup.unwrap_or(plan.duration / 5.0))
        .or(samples.last())
        .and_then(|s| s.rss_bytes);
    let figures = SoakFigures {
        rss_warm_bytes: warm,
        rss_end_bytes: end.rss_bytes,
        rss_growth_after_warmup_bytes: end.rss_bytes.zip(warm).map(|(e, w)| e as i64 - w as i64),
        rss_peak_bytes: samples.iter().filter_map(|s| s.rss_bytes).max(),
        rss_after_bytes: after.rss_bytes,
        fds_before: before.fds,
        fds_peak: samples.iter().filter_map(|s| s.fds).max(),
        fds_after: after.fds,
        churned: churned.load(Ordering::Relaxed),
        samples,
    };
    let mut report = Report {
        scenario: "soak",
        viewers: Some(plan.viewers),
        rooms: Some(plan.rooms + 1),
        connections: Some(plan.viewers + plan.churn),
        offered_per_s: Some(plan.rate),
        sent: Some(counters.sent.load(Ordering::Relaxed)),
        delivered_per_s: Some(total(|s| s.received) as f64 / plan.duration),
        lost: Some(total(|s| s.lost)),
        duplicated: Some(total(|s| s.duplicated)),
        lagged: Some(total(|s| s.lagged)),
        errors: Some(errors),
        server_rss_bytes: end.rss_bytes,
        server_cpu_s: cpu_after.zip(cpu_before).map(|(a, b)| a - b),
        elapsed_s: Some(end.t_s),
        soak: Some(figures),
        ..Report::default()
    };
    if let Some(h) = counters.latency.lock().expect("latency lock").as_ref() {
        report.set_latency(h);
    }
    Ok(report)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One churning client: one connection or request after another, of a
/// kind and length picked at random, until the load ends.
struct Churner {
    /// The nodes, and where this client's viewers and requests go.
    layout: Layout,
    /// This client's number: its turn among the nodes.
    slot: usize,
    http: reqwest::Client,
    source: std::net::Ipv4Addr,
    rooms: usize,
    /// xorshift64 state: cheap, and the same run for the same slot.
    rng: u64,
    /// The newest SSE event id this client saw, to reconnect from.
    last_event_id: u64,
}

impl Churner {
    fn next(&mut self, below: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % below.max(1)
    }

    /// Runs until `until`; returns the failures (connections refused,
    /// requests answered with an error).
    async fn run(
        mut self,
        until: tokio::time::Instant,
        counters: Arc<Counters>,
        churned: Arc<AtomicU64>,
    ) -> u64 {
        let mut failed = 0u64;
        while tokio::time::Instant::now() < until {
            let room = format!("soak-{}", self.next(self.rooms as u64));
            // Viewers go where the placement puts the room's; sends and
            // reads are dealt over the nodes like the other senders'.
            let viewer_node = self.layout.viewer(&room, self.slot);
            let node = self.layout.sender(self.slot);
            // Between 0.2 and 3 s, cut short by the end of the load.
            let stay = Duration::from_millis(200 + self.next(2800));
            let stay = stay.min(until.saturating_duration_since(tokio::time::Instant::now()));
            // One in three connections ends with a reset, not a close.
            let abrupt = self.next(3) == 0;
            churned.fetch_add(1, Ordering::Relaxed);
            let ok = match self.next(20) {
                // WebSocket viewers: a few of them in the hot room, a
                // quarter of the others resuming (the store reads history
                // for them). `handshake` puts the room into the query as it
                // is, so it carries `since` too.
                0..=9 => {
                    let (node, query) = match self.next(40) {
                        0..=3 => (self.layout.viewer(HOT, self.slot), HOT.to_owned()),
                        4..=12 => (viewer_node, format!("{room}&since={}", self.next(50))),
                        _ => (viewer_node, room),
                    };
                    self.websocket(node, &query, stay, abrupt, &counters).await
                }
                10..=14 => self.sse(viewer_node, &room, stay, abrupt, &counters).await,
                15..=17 => {
                    let url = format!("http://{node}/api/v1/rooms/{room}/danmaku");
                    post(&self.http, &url, "churn").await.is_some()
                }
                _ => {
                    let after = self.next(100);
                    let url = format!("http://{node}/api/v1/rooms/{room}/danmaku?after={after}");
                    self.http
                        .get(url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            };
            failed += u64::from(!ok);
        }
        failed
    }

    /// A WebSocket viewer of `query` for `stay`, then a close or a reset.
    async fn websocket(
        &mut self,
        node: SocketAddr,
        query: &str,
        stay: Duration,
        abrupt: bool,
        c: &Counters,
    ) -> bool {
        let Ok((mut stream, _)) = handshake(node, self.source, &ws_target(query), false).await
        else {
            return false;
        };
        c.connected.fetch_add(1, Ordering::Relaxed);
        discard_for(&mut stream, stay).await;
        if !abrupt {
            // A masked close frame (code 1000, zero mask), as a browser sends.
            let _ = stream
                .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
                .await;
        }
        leave(stream, abrupt);
        c.connected.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// An SSE stream of `room` from the last event id this client saw.
    async fn sse(
        &mut self,
        node: SocketAddr,
        room: &str,
        stay: Duration,
        abrupt: bool,
        c: &Counters,
    ) -> bool {
        let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
            return false;
        };
        if socket.bind(SocketAddr::from((self.source, 0))).is_err() {
            return false;
        }
        let Ok(mut stream) = socket.connect(node).await else {
            return false;
        };
        // A reconnect resumes where the last stream of this client ended.
        let resume = match self.last_event_id {
            0 => String::new(),
            id => format!("Last-Event-ID: {id}\r\n"),
        };
        let request = format!(
            "GET /api/v1/rooms/{room}/stream HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\
             {resume}{}\r\n",
            node,
            super::token_header()
        );
        if stream.write_all(request.as_bytes()).await.is_err() {
            return false;
        }
        c.connected.fetch_add(1, Ordering::Relaxed);
        let seen = discard_for(&mut stream, stay).await;
        // The newest `id:` line read, to resume from next time.
        let text = String::from_utf8_lossy(&seen);
        let ok = text.starts_with("HTTP/1.1 200");
        if let Some(id) = text
            .lines()
            .filter_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
            .filter_map(|id| id.trim().parse().ok())
            .next_back()
        {
            self.last_event_id = id;
        }
        leave(stream, abrupt);
        c.connected.fetch_sub(1, Ordering::Relaxed);
        ok
    }
}

/// Reads and discards for `stay`; returns the start and the end of what
/// it read (the response head, and the newest events).
async fn discard_for(stream: &mut TcpStream, stay: Duration) -> Vec<u8> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut kept = Vec::new();
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if kept.len() < 512 {
                        kept.extend_from_slice(&buf[..n.min(512)]);
                    } else {
                        // Keep the head and the newest chunk.
                        kept.truncate(512);
                        kept.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(stay, read_all).await;
    kept
}

/// Ends a connection: a reset (`SO_LINGER` 0, as a crashed client or a
/// dropped network does) or an orderly close.
fn leave(stream: TcpStream, abrupt: bool) {
    if abrupt {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
    drop(stream);
}
