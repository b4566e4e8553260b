//! The result of a scenario: one JSON object, and its human summary.

use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::soak::SoakFigures;

/// Every figure a scenario reports; a figure it could not measure is null.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// `fanout`, `rooms`, `ingest`, `soak` or `connect`.
    pub scenario: &'static str,
    /// What the viewers spoke (fanout, rooms): `json` or `bilibili`.
    pub protocol: Option<&'static str>,
    /// Viewers in total.
    pub viewers: Option<usize>,
    /// Rooms.
    pub rooms: Option<usize>,
    /// Connections held open (connect).
    pub connections: Option<usize>,
    /// Danmaku (or requests) per second the load asked for.
    pub offered_per_s: Option<f64>,
    /// Danmaku sent and acknowledged.
    pub sent: Option<u64>,
    /// Acknowledged sends per second (ingest).
    pub acked_per_s: Option<f64>,
    /// Deliveries (danmaku received by viewers) per second of sending: the
    /// rate the server kept up with.
    pub delivered_per_s: Option<f64>,
    /// Bytes the viewers read off their sockets (frames, headers and
    /// compression included) per danmaku they received: what a danmaku
    /// costs the wire in `protocol` (fanout, rooms).
    pub wire_bytes_per_danmaku: Option<f64>,
    /// Latency percentiles, ms: send to receipt (fanout, rooms) or send to
    /// acknowledgement (ingest).
    pub p50_ms: Option<f64>,
    /// 90th percentile.
    pub p90_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// 99.9th percentile.
    pub p999_ms: Option<f64>,
    /// Largest latency seen.
    pub max_ms: Option<f64>,
    /// Danmaku a viewer never received (summed over viewers), including
    /// those announced as dropped by a lagged frame.
    pub lost: Option<u64>,
    /// Danmaku a viewer received more than once.
    pub duplicated: Option<u64>,
    /// Lagged frames received by viewers.
    pub lagged: Option<u64>,
    /// Danmaku the server's density control left out (summed over viewers):
    /// stored, announced in the frame, and not counted as lost.
    pub thinned: Option<u64>,
    /// Seconds until every connection was open.
    pub connect_s: Option<f64>,
    /// Connections opened per second.
    pub connects_per_s: Option<f64>,
    /// Failed connections or requests.
    pub errors: Option<u64>,
    /// Server resident memory at the end, bytes.
    pub server_rss_bytes: Option<u64>,
    /// (RSS with the connections open − RSS before) / connections.
    pub server_rss_per_conn_bytes: Option<f64>,
    /// Server CPU time used during the scenario, seconds.
    pub server_cpu_s: Option<f64>,
    /// Seconds of sending (fanout, rooms): `--duration`, or longer if the
    /// senders fell behind their pace.
    pub sending_s: Option<f64>,
    /// Wall-clock seconds of the measured phase: for fanout and rooms, from
    /// the first send to the last receipt.
    pub elapsed_s: Option<f64>,
    /// Load generator processes (fanout, rooms, connect with `--procs`).
    pub procs: Option<usize>,
    /// Rooms whose `online` count the nodes did not bring to the room's
    /// connections in time (connect).
    pub online_mismatches: Option<u64>,
    /// Nodes under test.
    pub nodes: Option<usize>,
    /// The nodes' store, `sqlite` or `postgres` (null for nodes at `--url`).
    pub store: Option<String>,
    /// The nodes' bus, `memory`, `redis` or `nats` (null for nodes at `--url`).
    pub bus: Option<String>,
    /// Each node's broker messages received during the run, in node order.
    pub broker_received_per_node: Option<Vec<u64>>,
    /// The busiest node's share of all broker messages received (1/nodes
    /// when every node hears as much; null when none were received).
    pub broker_share_max: Option<f64>,
    /// PostgreSQL commits (group commits of every node) per second of
    /// `elapsed_s`, or of the whole run when the scenario has none.
    pub pg_commits_per_s: Option<f64>,
    /// What each node did during the run.
    pub per_node: Option<Vec<NodeFigures>>,
    /// A soak's memory and open-file readings (soak only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakFigures>,
}

/// What one node did during a run: readings of `/proc` for a node the
/// bench started (null otherwise), and rises of its `/metrics` counters.
#[derive(Debug, Default, Serialize)]
pub struct NodeFigures {
    /// Its id, as the bench gave it or its `/healthz` says.
    pub node_id: Option<String>,
    /// Its address.
    pub addr: String,
    /// Resident memory at the end, bytes.
    pub rss_bytes: Option<u64>,
    /// The highest resident memory sampled (every second), bytes.
    pub rss_peak_bytes: Option<u64>,
    /// CPU time used during the run, seconds.
    pub cpu_s: Option<f64>,
    /// Open files at the end.
    pub open_files: Option<u64>,
    /// The most open files sampled.
    pub open_files_peak: Option<u64>,
    /// Broker messages it received (`danmaku_bus_received_total`).
    pub bus_received: Option<u64>,
    /// Broker messages it published (`danmaku_bus_published_total`).
    pub bus_published: Option<u64>,
    /// Its store's group commits (`danmaku_store_batch_size_count`).
    pub commits: Option<u64>,
    /// Danmaku it accepted and stored (`danmaku_received_total`).
    pub received: Option<u64>,
    /// Danmaku it wrote to viewers (`danmaku_deliveries_total`).
    pub deliveries: Option<u64>,
}

/// Microseconds in a histogram value.
const MS: f64 = 1000.0;

impl Report {
    /// Fills the latency fields from a histogram of microseconds.
    pub fn set_latency(&mut self, h: &Histogram<u64>) {
        if h.is_empty() {
            return;
        }
        let q = |p: f64| Some(h.value_at_quantile(p) as f64 / MS);
        self.p50_ms = q(0.50);
        self.p90_ms = q(0.90);
        self.p99_ms = q(0.99);
        self.p999_ms = q(0.999);
        self.max_ms = Some(h.max() as f64 / MS);
    }

    /// A few lines for a person.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let json = serde_json::to_value(self).expect("a report serialises");
        let _ = writeln!(out, "danmaku bench {}", self.scenario);
        let top = json.as_object().expect("an object").iter();
        // A soak's figures read like the others; its series is for --json.
        let soak = json["soak"].as_object().into_iter().flatten();
        for (key, value) in top.chain(soak) {
            if !["scenario", "soak", "samples", "per_node"].contains(&key.as_str())
                && !value.is_null()
            {
                let _ = writeln!(out, "  {key:<30} {value}");
            }
        }
        // One line per node, its known figures only.
        for node in json["per_node"].as_array().into_iter().flatten() {
            let node = node.as_object().expect("an object");
            let id = node["node_id"].as_str().unwrap_or("?");
            let _ = write!(out, "  node {id}");
            let known = node.iter().filter(|(k, v)| *k != "node_id" && !v.is_null());
            for (key, value) in known {
                let _ = write!(
                    out,
                    " {key}={}",
                    value.as_str().map_or(value.to_string(), str::to_owned)
                );
            }
            let _ = writeln!(out);
        }
        out
    }
}

/// A histogram of latencies in microseconds, 1 µs to 100 s.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}
