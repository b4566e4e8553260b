//! The node's live figures for the admin dashboard, as JSON: every second
//! a [`Sample`] of the rates, viewers and latencies of the second before,
//! the last five minutes of them kept in a ring ([`Stats`]).
//!
//! The figures come from the node's [`Metrics`], read twice and
//! subtracted, so the hot paths do nothing for them beyond what they do
//! for Prometheus (the two latencies keep their own bucket counts, one
//! atomic add, see [`Latency`](crate::metrics::Latency)).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::presence::Elsewhere;
use crate::danmaku::now_ms;
use crate::hub::{Hub, RoomStats};
use crate::metrics::{Latency, LatencySnapshot, Metrics};

/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// The samples kept: five minutes of them.
pub const KEPT: usize = 300;
/// The most rooms the dashboard lists.
pub const BUSIEST_ROOMS: usize = 50;

/// Latency percentiles over one interval, in milliseconds; `None` (JSON
/// `null`) when nothing was observed in it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Percentiles {
    /// The median.
    pub p50: Option<f64>,
    /// The 90th percentile.
    pub p90: Option<f64>,
    /// The 99th percentile.
    pub p99: Option<f64>,
}

/// One second of the node, as the dashboard charts it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// When it was taken, Unix milliseconds: the end of its second.
    pub t: i64,
    /// Danmaku stored per second (sends and imports on this node).
    pub received_per_s: f64,
    /// Danmaku written to viewers per second (one per danmaku per viewer).
    pub deliveries_per_s: f64,
    /// Viewers connected to this node.
    pub online: u64,
    /// Viewers of every node: this node's, and the others' as presence
    /// last read them.
    pub online_cluster: u64,
    /// Send to acknowledgement (the commit included).
    pub send_ack_ms: Percentiles,
    /// Commit to a frame handed to a viewer's socket (one viewer in 16).
    pub fanout_ms: Percentiles,
    /// Times a viewer fell behind its room's ring, per second.
    pub lagged_per_s: f64,
    /// Danmaku skipped for those viewers, per second.
    pub dropped_per_s: f64,
    /// Sends and commands refused, per second, whatever the code.
    pub rejected_per_s: f64,
}

/// The metrics' counters at one moment.
struct Reading {
    at: Instant,
    received: u64,
    deliveries: u64,
    lags: u64,
    dropped: u64,
    rejected: u64,
    send_ack: LatencySnapshot,
    fanout: LatencySnapshot,
}

impl Reading {
    fn take(m: &Metrics) -> Reading {
        Reading {
            at: Instant::now(),
            received: m.received.get(),
            deliveries: m.deliveries.get(),
            lags: m.lags.get(),
            dropped: m.dropped.get(),
            rejected: m.rejected_total(),
            send_ack: m.send_ack_seconds.snapshot(),
            fanout: m.fanout_seconds.snapshot(),
        }
    }
}

/// What the node did between `earlier` and `later`, with its viewers now.
fn sample(m: &Metrics, earlier: &Reading, later: &Reading, online: u64, cluster: u64) -> Sample {
    // A tick may come late on a busy runtime: rates are per real second.
    let seconds = later.at.duration_since(earlier.at).as_secs_f64().max(0.001);
    // Rounded: the dashboard shows a few digits, and JSON stays short.
    let rate = |pick: fn(&Reading) -> u64| {
        round(
            pick(later).saturating_sub(pick(earlier)) as f64 / seconds,
            100.0,
        )
    };
    let percentiles = |latency: &Latency, pick: fn(&Reading) -> &LatencySnapshot| {
        let ms = |q| {
            latency
                .quantile(pick(earlier), pick(later), q)
                .map(|s| round(s * 1000.0, 1000.0))
        };
        Percentiles {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
        }
    };
    Sample {
        t: now_ms(),
        received_per_s: rate(|r| r.received),
        deliveries_per_s: rate(|r| r.deliveries),
        online,
        online_cluster: cluster,
        send_ack_ms: percentiles(&m.send_ack_seconds, |r| &r.send_ack),
        fanout_ms: percentiles(&m.fanout_seconds, |r| &r.fanout),
        lagged_per_s: rate(|r| r.lags),
        dropped_per_s: rate(|r| r.dropped),
        rejected_per_s: rate(|r| r.rejected),
    }
}

/// `x` to the nearest `1 / per`.
fn round(x: f64, per: f64) -> f64 {
    (x * per).round() / per
}

/// The last [`KEPT`] samples, oldest first.
#[derive(Default)]
pub struct Stats {
    samples: Mutex<VecDeque<Sample>>,
}

impl Stats {
    /// Starts sampling every [`INTERVAL`] until the returned value (the
    /// node's) or the hub is dropped.
    pub fn start(metrics: Arc<Metrics>, hub: &Arc<Hub>, elsewhere: Arc<Elsewhere>) -> Arc<Stats> {
        let stats = Arc::new(Stats::default());
        let (ring, hub) = (Arc::downgrade(&stats), Arc::downgrade(hub));
        tokio::spawn(run(metrics, hub, elsewhere, ring));
        stats
    }

    /// The samples taken after `after` (Unix milliseconds), oldest first.
    pub fn since(&self, after: i64) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.iter().filter(|s| s.t > after).cloned().collect()
    }

    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }
}

async fn run(metrics: Arc<Metrics>, hub: Weak<Hub>, elsewhere: Arc<Elsewhere>, ring: Weak<Stats>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: the reading the first second starts from.
    tick.tick().await;
    let mut last = Reading::take(&metrics);
    loop {
        tick.tick().await;
        let (Some(ring), Some(hub)) = (ring.upgrade(), hub.upgrade()) else {
            return;
        };
        let now = Reading::take(&metrics);
        let online: u64 = hub.local_online().values().sum();
        let cluster = online.saturating_add(elsewhere.remote_total());
        ring.push(sample(&metrics, &last, &now, online, cluster));
        last = now;
    }
}

/// The busiest of `rooms`, at most `limit`: by rate, then viewers, then
/// name (so that equal rooms keep their places from one call to the next).
pub fn busiest(mut rooms: Vec<RoomStats>, limit: usize) -> Vec<RoomStats> {
    rooms.sort_by(|a, b| {
        b.rate_per_s
            .total_cmp(&a.rate_per_s)
            .then(b.online.cmp(&a.online))
            .then_with(|| a.room.cmp(&b.room))
    });
    rooms.truncate(limit);
    rooms
}

/// The answer of `GET /api/v1/admin/stats`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// This node's id.
    pub node_id: String,
    /// Seconds between samples.
    pub interval_s: u64,
    /// The samples asked for, oldest first.
    pub samples: Vec<Sample>,
    /// The cluster's busiest rooms, at most [`BUSIEST_ROOMS`] (a room with
    /// viewers on other nodes only has no rate here).
    pub rooms: Vec<RoomStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str, rate_per_s: f64, online: usize) -> RoomStats {
        RoomStats {
            room: name.into(),
            online,
            online_local: online,
            last_id: None,
            rate_per_s,
        }
    }

    #[test]
    fn the_busiest_rooms_come_first_by_rate_then_viewers() {
        let rooms = vec![
            room("quiet", 0.0, 3),
            room("b", 2.0, 1),
            room("a", 2.0, 1),
            room("hot", 9.5, 0),
            room("crowd", 2.0, 40),
        ];
        let names: Vec<String> = busiest(rooms.clone(), 10)
            .into_iter()
            .map(|r| r.room)
            .collect();
        assert_eq!(names, ["hot", "crowd", "a", "b", "quiet"]);
        assert_eq!(busiest(rooms, 2).len(), 2);
    }

    #[test]
    fn a_sample_is_the_difference_of_two_readings_per_second() {
        let m = Metrics::new();
        let earlier = Reading::take(&m);
        m.received.inc_by(10);
        m.deliveries.inc_by(40);
        m.dropped.inc_by(6);
        m.lags.inc();
        m.reject(crate::error::ErrorCode::RateLimited);
        m.send_ack_seconds.observe(0.002);
        let mut later = Reading::take(&m);
        later.at = earlier.at + Duration::from_secs(2);
        let s = sample(&m, &earlier, &later, 3, 7);
        assert_eq!(
            (s.received_per_s, s.deliveries_per_s, s.dropped_per_s),
            (5.0, 20.0, 3.0)
        );
        assert_eq!((s.lagged_per_s, s.rejected_per_s), (0.5, 0.5));
        assert_eq!((s.online, s.online_cluster), (3, 7));
        // 2 ms lies in the bucket (1.6 ms, 3.2 ms].
        let p50 = s.send_ack_ms.p50.unwrap();
        assert!((1.6..=3.2).contains(&p50), "{p50}");
        assert_eq!(
            s.fanout_ms,
            Percentiles {
                p50: None,
                p90: None,
                p99: None
            }
        );
    }

    #[test]
    fn the_ring_keeps_five_minutes_and_answers_after_a_time() {
        let stats = Stats::default();
        let m = Metrics::new();
        let r = Reading::take(&m);
        for t in 1..=(KEPT as i64 + 5) {
            stats.push(Sample {
                t,
                ..sample(&m, &r, &r, 0, 0)
            });
        }
        let all = stats.since(0);
        assert_eq!(all.len(), KEPT);
        assert_eq!((all[0].t, all[KEPT - 1].t), (6, KEPT as i64 + 5));
        let newer: Vec<i64> = stats.since(KEPT as i64 + 3).iter().map(|s| s.t).collect();
        assert_eq!(newer, [KEPT as i64 + 4, KEPT as i64 + 5]);
    }
}
