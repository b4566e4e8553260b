//! `fanout` and `rooms`: viewers in rooms, senders over WebSocket, and what
//! every viewer received: throughput, latency, losses and duplicates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

use super::audience::{Audience, Crowd, DRAIN};
use super::cluster::Cluster;
use super::progress::{Counters, Progress};
use super::report::Report;
use super::viewer::{now_micros, Protocol, STAMP};

/// Connections opened at once while connecting viewers.
const CONNECT_CONCURRENCY: usize = 256;

/// What to run.
pub struct Plan {
    scenario: &'static str,
    rooms: Vec<String>,
    viewers_per_room: usize,
    senders_per_room: usize,
    total_rate: f64,
    duration: Duration,
    /// Viewers that read too slowly on purpose (they should show up as lagged).
    pub slow_viewers: usize,
    /// Load generator processes holding the viewers (1: this one).
    pub procs: usize,
    /// The wire the viewers speak.
    pub protocol: Protocol,
}

impl Plan {
    /// `senders` in total, spread over the rooms (at least one per room).
    pub fn new(
        scenario: &'static str,
        rooms: Vec<String>,
        viewers_per_room: usize,
        senders: usize,
        total_rate: f64,
        duration: f64,
    ) -> Plan {
        let senders_per_room = (senders / rooms.len()).max(1);
        Plan {
            scenario,
            rooms,
            viewers_per_room,
            senders_per_room,
            total_rate,
            duration: Duration::from_secs_f64(duration),
            slow_viewers: 0,
            procs: 1,
            protocol: Protocol::Json,
        }
    }
}

/// Runs the plan and reports.
pub async fn run(cluster: &Cluster, plan: Plan) -> anyhow::Result<Report> {
    let counters = Arc::new(Counters::default());
    let _progress = Progress::start(plan.scenario, counters.clone());
    let rooms = plan.rooms.len();
    let viewers = rooms * plan.viewers_per_room;

    // Bilibili viewers are not told where their room's ids start: the
    // room's newest id before anything is sent is where they count from.
    let mut start_ids = Vec::new();
    if plan.protocol == Protocol::Bilibili {
        for room in &plan.rooms {
            start_ids.push(last_id(cluster, room).await?);
        }
    }
    // Viewers first, so that every danmaku sent has all its viewers.
    let connect_started = Instant::now();
    let crowd = Crowd {
        layout: cluster.layout().clone(),
        rooms: plan.rooms.clone(),
        viewers,
        slow_viewers: plan.slow_viewers,
        concurrency: CONNECT_CONCURRENCY,
        protocol: plan.protocol,
        start_ids,
    };
    let audience = Audience::gather(&crowd, plan.procs, &counters).await?;
    let connect_s = connect_started.elapsed().as_secs_f64();
    let mut errors = audience.errors;

    let cpu_before = cluster.cpu_seconds();
    // Time for every sender to connect before the first send.
    let sending_starts = tokio::time::Instant::now() + Duration::from_secs(1);
    let send_started = sending_starts.into_std();
    let senders = rooms * plan.senders_per_room;
    let rate_per_sender = plan.total_rate / senders as f64;
    let last_ids: Arc<Vec<AtomicU64>> = Arc::new((0..rooms).map(|_| AtomicU64::new(0)).collect());
    let mut sender_tasks = Vec::with_capacity(senders);
    for s in 0..senders {
        let room = s % rooms;
        let node = cluster.layout().sender(s);
        let url = format!(
            "ws://{node}/ws?room={}{}",
            plan.rooms[room],
            super::token_query()
        );
        let (counters, last_ids) = (counters.clone(), last_ids.clone());
        // Senders tick out of phase with one another, as real ones do: in
        // step, thousands of them would arrive as one burst per period.
        let pace = Pace {
            start: sending_starts,
            phase: s as f64 / senders as f64,
            rate: rate_per_sender,
            duration: plan.duration,
        };
        sender_tasks.push(tokio::spawn(async move {
            send(url, pace, counters, &last_ids[room]).await
        }));
    }
    let mut sent = 0;
    let mut late = Duration::ZERO;
    for t in sender_tasks {
        match t.await? {
            Ok(done) => {
                sent += done.acked;
                late = late.max(done.late);
            }
            Err(e) => {
                errors += 1;
                tracing::warn!(error = %e, "sender failed");
            }
        }
    }
    // The planned window, or longer if a sender fell behind it.
    let sending_s = (plan.duration + late).as_secs_f64();
    // Tell each room's viewers the last id to wait for: ids are the
    // room's across the cluster, so it holds whichever node a viewer is on.
    let last_ids: Vec<u64> = last_ids.iter().map(|l| l.load(Ordering::Relaxed)).collect();
    let seen = audience.finish(&last_ids, &counters).await?;
    let cpu_after = cluster.cpu_seconds();

    let start = now_micros() - send_started.elapsed().as_micros() as u64;
    let elapsed = (seen.last_delivery_us.saturating_sub(start) as f64 / 1e6).max(sending_s);
    let mut report = Report {
        scenario: plan.scenario,
        viewers: Some(viewers),
        rooms: Some(rooms),
        offered_per_s: Some(plan.total_rate),
        sent: Some(sent),
        connect_s: Some(connect_s),
        server_rss_bytes: cluster.rss_bytes(),
        server_cpu_s: cpu_after.zip(cpu_before).map(|(a, b)| a - b),
        // Per second of the window the load was offered in: the rate the
        // server kept up with. How late the receipts came is the latency's
        // to tell, and `sending_s` shows whether the senders kept their pace.
        delivered_per_s: Some(seen.received as f64 / plan.duration.as_secs_f64()),
        sending_s: Some(sending_s),
        elapsed_s: Some(elapsed),
        lost: Some(seen.lost),
        duplicated: Some(seen.duplicated),
        lagged: Some(seen.lagged),
        thinned: Some(seen.thinned),
        errors: Some(errors),
        procs: Some(plan.procs),
        protocol: Some(plan.protocol.name()),
        wire_bytes_per_danmaku: (seen.received > 0)
            .then(|| seen.wire_bytes as f64 / seen.received as f64),
        ..Report::default()
    };
    if let Some(h) = counters.latency.lock().expect("latency lock").as_ref() {
        report.set_latency(h);
    }
    Ok(report)
}

/// The newest id of `room` (0 for a room without danmaku), as a node says.
async fn last_id(cluster: &Cluster, room: &str) -> anyhow::Result<u64> {
    let node = cluster.layout().sender(0);
    let mut req = cluster
        .http()
        .get(format!("http://{node}/api/v1/rooms/{room}"))
        .timeout(super::HTTP_TIMEOUT);
    if let Some(token) = super::TOKEN.get() {
        req = req.bearer_auth(token);
    }
    let res = req.send().await?.error_for_status()?;
    let body: serde_json::Value = res.json().await?;
    body["last_id"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("room {room}: no last_id in {body}"))
}

/// When and how fast one sender sends.
struct Pace {
    /// When sending starts, for all senders.
    start: tokio::time::Instant,
    /// This sender's offset into the period, 0 to 1.
    phase: f64,
    /// Sends per second.
    rate: f64,
    /// How long it sends.
    duration: Duration,
}

/// Sends `rate × duration` danmaku at `rate` per second; returns how many
/// were acknowledged and when the last was sent, and raises `last_id` to
/// the newest acknowledged id.
async fn send(
    url: String,
    pace: Pace,
    counters: Arc<Counters>,
    last_id: &AtomicU64,
) -> anyhow::Result<Sent> {
    let (ws, _) = tokio_tungstenite::connect_async(&url).await?;
    let (mut sink, mut stream) = ws.split();
    let period = Duration::from_secs_f64(1.0 / pace.rate);
    let first = pace.start + period.mul_f64(pace.phase);
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    // Exactly rate × duration sends, the last one period before the end.
    let planned = (pace.rate * pace.duration.as_secs_f64()).round().max(1.0) as u64;
    let mut sent = 0u64;
    let mut acked = 0u64;
    let planned_last = first.into_std() + period.mul_f64((planned - 1) as f64);
    let mut last_send = Instant::now();
    while sent < planned {
        tokio::select! {
            _ = tick.tick() => {
                let text = format!(r#"{{"type":"send","text":"{STAMP}{}"}}"#, now_micros());
                sink.send(Message::text(text)).await?;
                last_send = Instant::now();
                sent += 1;
            }
            msg = stream.next() => acked += on_answer(msg, &counters, last_id)?,
        }
    }
    // Collect the answers still in flight.
    let wait = tokio::time::sleep(DRAIN);
    tokio::pin!(wait);
    while acked < sent {
        tokio::select! {
            msg = stream.next() => acked += on_answer(msg, &counters, last_id)?,
            _ = &mut wait => break,
        }
    }
    let _ = sink.close().await;
    Ok(Sent {
        acked,
        late: last_send.saturating_duration_since(planned_last),
    })
}

/// What one sender did.
struct Sent {
    /// Sends acknowledged.
    acked: u64,
    /// How much later than planned it made its last send.
    late: Duration,
}

/// Counts an `ack` (1) among the frames a sender receives.
fn on_answer(
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    counters: &Counters,
    last_id: &AtomicU64,
) -> anyhow::Result<u64> {
    let msg = msg.ok_or_else(|| anyhow::anyhow!("sender connection closed"))??;
    let Message::Text(text) = msg else {
        return Ok(0);
    };
    if !text.starts_with(r#"{"type":"ack""#) {
        if text.starts_with(r#"{"type":"error""#) {
            if text.contains(r#""code":"rate_limited""#) {
                super::note_rate_limited();
            }
            anyhow::bail!("send refused: {text}");
        }
        return Ok(0);
    }
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let id = v["id"].as_u64().unwrap_or(0);
    last_id.fetch_max(id, Ordering::Relaxed);
    counters.sent.fetch_add(1, Ordering::Relaxed);
    Ok(1)
}
