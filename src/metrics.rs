//! Prometheus metrics, all named `danmaku_*`, rendered at `GET /metrics`.
//!
//! One [`Metrics`] value is created per node and shared by reference; each
//! metric is a cheap atomic (histograms take a short lock), so the hot path
//! only updates them once per write, never once per danmaku per viewer.
//!
//! The two latencies the admin dashboard charts are [`Latency`]s: a
//! Prometheus histogram that also keeps bucket counts of its own, which the
//! node's stats sampler reads (prometheus_client exposes none).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The transport label of connection metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `ws`, `sse`, `bilibili_ws` (`/sub`) or `bilibili_tcp`.
    pub transport: &'static str,
}

/// The code label of rejected sends.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The error code (see docs/protocol.md).
    pub code: &'static str,
}

/// The phase label of HTTP connections cut by a deadline.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// `idle`, `head` or `body`.
    pub phase: &'static str,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Open viewer connections, by transport.
    pub connections: Family<TransportLabel, Gauge>,
    /// Live per-connection tasks (HTTP, WebSocket, SSE); returns to zero when
    /// every client has gone.
    pub tasks: Gauge,
    /// Rooms the hub currently holds.
    pub rooms: Gauge,
    /// Danmaku accepted and stored.
    pub received: Counter,
    /// Sends and commands refused, by error code.
    pub rejected: Family<CodeLabel, Counter>,
    /// Every refusal of `rejected`, whatever its code: the family has no
    /// total to read.
    rejected_total: AtomicU64,
    /// Danmaku written to viewers (one per danmaku per viewer).
    pub deliveries: Counter,
    /// Frames the hub encoded (each shared by all viewers of a room).
    pub frames: Counter,
    /// Danmaku skipped for viewers that lagged.
    pub dropped: Counter,
    /// Times a viewer lagged behind its room's ring.
    pub lags: Counter,
    /// Viewers disconnected as slow consumers.
    pub slow_disconnects: Counter,
    /// HTTP connections closed by a request deadline, by the phase that
    /// ran out of time.
    pub http_timeouts: Family<PhaseLabel, Counter>,
    /// Seconds from receiving a send to acknowledging it (includes commit).
    pub send_ack_seconds: Latency,
    /// Seconds from commit to a frame being handed to a viewer's socket (queued
    /// for the non-blocking write that follows at once), observed on one
    /// viewer in 16 so that a big room does not take this lock per viewer.
    pub fanout_seconds: Latency,
    /// Danmaku density control left out of hot rooms' frames (stored, not
    /// sent live).
    pub thinned: Counter,
    /// Seconds one flusher pass over a room's viewers takes (direct writes
    /// to parked viewers, wake-ups for the others): in a big room, the
    /// floor under its fan-out latency.
    pub pass_seconds: Histogram,
    /// Seconds one group commit takes.
    pub store_commit_seconds: Histogram,
    /// Sends per group commit.
    pub store_batch_size: Histogram,
    /// 1 while the store cannot write because its disk is full (sends get
    /// `store_full`), else 0.
    pub store_full: Gauge,
    /// Writes refused because the disk was full: each send of a failed
    /// group commit, each hold, moderation change or approval.
    pub store_full_writes: Counter,
    /// Events published to the broker.
    pub bus_published: Counter,
    /// Events the broker refused or did not take in time (the other nodes
    /// read what they miss from the store).
    pub bus_publish_failures: Counter,
    /// Events dropped before publishing because the broker fell behind.
    pub bus_dropped: Counter,
    /// Events received from other nodes over the broker.
    pub bus_received: Counter,
    /// Seconds from another node's commit (its clock) to this node hearing
    /// the batch over the broker: the broker's share of a remote
    /// danmaku's latency.
    pub bus_lag_seconds: Histogram,
    /// Times the broker connection came back after being lost.
    pub bus_reconnects: Counter,
    /// Reads of missing ids from the store (gaps the broker left).
    pub gap_fills: Counter,
    /// Sends whose rate limits were checked by this node's own buckets
    /// because the shared ones in Redis did not answer in time.
    pub limits_fallbacks: Counter,
}

/// The upper bounds of every latency histogram's buckets: 50 µs .. ~13 s,
/// doubling.
fn latency_bounds() -> Vec<f64> {
    exponential_buckets(0.000_05, 2.0, 19).collect()
}

fn latency_buckets() -> Histogram {
    Histogram::new(latency_bounds())
}

/// A latency histogram whose bucket counts can be read back: each
/// observation goes to the Prometheus histogram and adds one to a counter
/// of its own bucket (one atomic add), so that the distribution over any
/// interval is the difference of two [`Latency::snapshot`]s.
pub struct Latency {
    histogram: Histogram,
    /// The buckets' upper bounds (inclusive, as Prometheus's `le`),
    /// ascending; a last bucket without bound follows them.
    bounds: Vec<f64>,
    /// Observations so far in each bucket (not summed across buckets):
    /// `bounds.len() + 1` of them.
    counts: Box<[AtomicU64]>,
}

/// A [`Latency`]'s bucket counts at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencySnapshot(Vec<u64>);

impl Latency {
    /// A latency with buckets up to these bounds, ascending.
    pub fn new(bounds: Vec<f64>) -> Latency {
        Latency {
            histogram: Histogram::new(bounds.iter().copied()),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            bounds,
        }
    }

    /// Records one latency, in seconds.
    pub fn observe(&self, seconds: f64) {
        self.histogram.observe(seconds);
        // The first bucket whose bound holds it (NaN: the first).
        let bucket = self.bounds.partition_point(|&bound| bound < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The bucket counts now.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot(
            self.counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        )
    }

    /// The `q`-quantile (0 to 1), in seconds, of the latencies observed
    /// between snapshots `earlier` and `later`; `None` if there were none.
    /// As Prometheus's `histogram_quantile`: linear within the bucket the
    /// rank falls in, and the largest bound for the unbounded last bucket.
    pub fn quantile(
        &self,
        earlier: &LatencySnapshot,
        later: &LatencySnapshot,
        q: f64,
    ) -> Option<f64> {
        let counts: Vec<u64> = later
            .0
            .iter()
            .zip(earlier.0.iter().chain(std::iter::repeat(&0)))
            .map(|(l, e)| l.saturating_sub(*e))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &n) in counts.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let Some(&upper) = self.bounds.get(i) else {
                    return Some(lower);
                };
                let within = (rank - below as f64).max(0.0) / n as f64;
                return Some(lower + (upper - lower) * within);
            }
            below += n;
        }
        // Unreachable with a rank of at most the total; the largest bound.
        self.bounds.last().copied()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        Metrics::with_registry(Registry::with_prefix("danmaku"))
    }

    /// Creates and registers every metric, and `danmaku_node_info` with
    /// the node's id as its label (always 1): the usual way to name the
    /// process a scrape came from without a label on every series.
    pub fn for_node(node_id: &str) -> Metrics {
        let mut registry = Registry::with_prefix("danmaku");
        let info = Family::<NodeLabel, Gauge>::default();
        info.get_or_create(&NodeLabel {
            node_id: node_id.to_owned(),
        })
        .set(1);
        registry.register("node_info", "This node's id (always 1)", info);
        Metrics::with_registry(registry)
    }

    fn with_registry(mut registry: Registry) -> Metrics {
        let m = Metrics {
            connections: Family::default(),
            tasks: Gauge::default(),
            rooms: Gauge::default(),
            received: Counter::default(),
            rejected: Family::default(),
            rejected_total: AtomicU64::new(0),
            deliveries: Counter::default(),
            frames: Counter::default(),
            dropped: Counter::default(),
            lags: Counter::default(),
            slow_disconnects: Counter::default(),
            http_timeouts: Family::default(),
            send_ack_seconds: Latency::new(latency_bounds()),
            fanout_seconds: Latency::new(latency_bounds()),
            pass_seconds: latency_buckets(),
            bus_lag_seconds: latency_buckets(),
            thinned: Counter::default(),
            store_commit_seconds: latency_buckets(),
            store_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            store_full: Gauge::default(),
            store_full_writes: Counter::default(),
            bus_published: Counter::default(),
            bus_publish_failures: Counter::default(),
            bus_dropped: Counter::default(),
            bus_received: Counter::default(),
            bus_reconnects: Counter::default(),
            gap_fills: Counter::default(),
            limits_fallbacks: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open viewer connections",
            m.connections.clone(),
        );
        registry.register("tasks", "Live per-connection tasks", m.tasks.clone());
        registry.register("rooms", "Rooms held by the hub", m.rooms.clone());
        registry.register(
            "received",
            "Danmaku accepted and stored",
            m.received.clone(),
        );
        registry.register(
            "rejected",
            "Sends and commands refused, by error code",
            m.rejected.clone(),
        );
        registry.register(
            "deliveries",
            "Danmaku written to viewers",
            m.deliveries.clone(),
        );
        registry.register("frames", "Frames encoded by the hub", m.frames.clone());
        registry.register(
            "dropped",
            "Danmaku skipped for lagging viewers",
            m.dropped.clone(),
        );
        registry.register(
            "lags",
            "Times a viewer lagged behind its room",
            m.lags.clone(),
        );
        registry.register(
            "slow_disconnects",
            "Viewers disconnected as slow consumers",
            m.slow_disconnects.clone(),
        );
        registry.register(
            "http_timeouts",
            "HTTP connections closed by a deadline, by phase (idle, head, body)",
            m.http_timeouts.clone(),
        );
        registry.register(
            "send_ack_seconds",
            "Seconds from receiving a send to acknowledging it",
            m.send_ack_seconds.histogram.clone(),
        );
        registry.register(
            "fanout_seconds",
            "Seconds from commit to a frame being handed to a viewer's socket (1 viewer in 16)",
            m.fanout_seconds.histogram.clone(),
        );
        registry.register(
            "thinned",
            "Danmaku left out of hot rooms' frames by density control (still stored)",
            m.thinned.clone(),
        );
        registry.register(
            "pass_seconds",
            "Seconds per flusher pass over a room's viewers",
            m.pass_seconds.clone(),
        );
        registry.register(
            "bus_lag_seconds",
            "Seconds from another node's commit (its clock) to hearing it over the broker",
            m.bus_lag_seconds.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Seconds per group commit",
            m.store_commit_seconds.clone(),
        );
        registry.register(
            "store_batch_size",
            "Sends per group commit",
            m.store_batch_size.clone(),
        );
        registry.register(
            "store_full",
            "1 while the store cannot write because its disk is full",
            m.store_full.clone(),
        );
        registry.register(
            "store_full_writes",
            "Writes refused because the disk was full",
            m.store_full_writes.clone(),
        );
        for (name, help, counter) in [
            (
                "bus_published",
                "Events published to the broker",
                &m.bus_published,
            ),
            (
                "bus_publish_failures",
                "Events the broker refused or did not take in time",
                &m.bus_publish_failures,
            ),
            (
                "bus_dropped",
                "Events dropped before publishing because the broker fell behind",
                &m.bus_dropped,
            ),
            (
                "bus_received",
                "Events received from other nodes over the broker",
                &m.bus_received,
            ),
            (
                "bus_reconnects",
                "Times the broker connection came back after being lost",
                &m.bus_reconnects,
            ),
            (
                "gap_fills",
                "Reads of ids the broker did not bring, from the store",
                &m.gap_fills,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "limits_fallbacks",
            "Sends rate-limited by this node's own buckets because Redis did not answer in time",
            m.limits_fallbacks.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Counts a refused send.
    pub fn reject(&self, code: crate::error::ErrorCode) {
        self.rejected
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
        self.rejected_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals so far, of every code.
    pub fn rejected_total(&self) -> u64 {
        self.rejected_total.load(Ordering::Relaxed)
    }
}

/// The label of `danmaku_node_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node_id: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Holds a gauge up while alive: the way a task counts itself, so that the
/// count comes down on every exit path, panics included.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// Increments `gauge` until the guard drops.
    pub fn new(gauge: &Gauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: Option<f64>, want: f64) {
        let got = got.expect("a quantile");
        assert!((got - want).abs() < 1e-9, "got {got}, want {want}");
    }

    #[test]
    fn quantiles_cover_only_what_was_observed_between_two_snapshots() {
        let latency = Latency::new(vec![1.0, 2.0, 4.0, 8.0]);
        let start = latency.snapshot();
        assert_eq!(latency.quantile(&start, &latency.snapshot(), 0.5), None);
        for _ in 0..100 {
            latency.observe(0.5);
        }
        let first = latency.snapshot();
        // All in (0, 1]: the rank's share of the bucket.
        close(latency.quantile(&start, &first, 0.5), 0.5);
        close(latency.quantile(&start, &first, 0.9), 0.9);

        // The next interval: 10 in (2, 4], nothing of the 100 before.
        for _ in 0..10 {
            latency.observe(3.0);
        }
        let second = latency.snapshot();
        close(latency.quantile(&first, &second, 0.5), 3.0);
        close(latency.quantile(&first, &second, 0.99), 3.98);
        // Both intervals: 100 of 110 below 1 s, so p90 is still there.
        close(latency.quantile(&start, &second, 0.9), 0.99);
        close(
            latency.quantile(&start, &second, 0.95),
            2.0 + 2.0 * 4.5 / 10.0,
        );
        assert_eq!(latency.quantile(&second, &latency.snapshot(), 0.99), None);
    }

    #[test]
    fn a_bound_holds_its_own_value_and_the_last_bucket_has_none() {
        let latency = Latency::new(vec![1.0, 2.0]);
        let start = latency.snapshot();
        latency.observe(1.0);
        // `le` is inclusive: 1.0 lies in (0, 1].
        close(latency.quantile(&start, &latency.snapshot(), 1.0), 1.0);
        let before = latency.snapshot();
        latency.observe(100.0);
        latency.observe(f64::INFINITY);
        // Beyond the last bound, the quantile is that bound.
        close(latency.quantile(&before, &latency.snapshot(), 0.5), 2.0);
    }

    #[test]
    fn the_latencies_still_render_as_prometheus_histograms() {
        let metrics = Metrics::new();
        metrics.send_ack_seconds.observe(0.003);
        metrics.fanout_seconds.observe(0.001);
        let text = metrics.render();
        assert!(
            text.contains("danmaku_send_ack_seconds_bucket{le=\"0.0032\"} 1"),
            "{text}"
        );
        assert!(text.contains("danmaku_send_ack_seconds_count 1"), "{text}");
        assert!(text.contains("danmaku_fanout_seconds_count 1"), "{text}");
    }
}
