//! Prometheus metrics, all named `danmaku_*`, rendered at `GET /metrics`.
//!
//! One [`Metrics`] value is created per node and shared by reference; each
//! metric is a cheap atomic (histograms take a short lock), so the hot path
//! only updates them once per write, never once per danmaku per viewer.

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
    pub send_ack_seconds: Histogram,
    /// Seconds from commit to a frame being handed to a viewer's socket (queued
    /// for the non-blocking write that follows at once), observed on one
    /// viewer in 16 so that a big room does not take this lock per viewer.
    pub fanout_seconds: Histogram,
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

fn latency_buckets() -> Histogram {
    // 50 µs .. ~13 s, doubling.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
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
            deliveries: Counter::default(),
            frames: Counter::default(),
            dropped: Counter::default(),
            lags: Counter::default(),
            slow_disconnects: Counter::default(),
            http_timeouts: Family::default(),
            send_ack_seconds: latency_buckets(),
            fanout_seconds: latency_buckets(),
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
            m.send_ack_seconds.clone(),
        );
        registry.register(
            "fanout_seconds",
            "Seconds from commit to a frame being handed to a viewer's socket (1 viewer in 16)",
            m.fanout_seconds.clone(),
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
