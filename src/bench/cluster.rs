//! The nodes a scenario runs against, how connections are placed on
//! them, and what each node did during the run.
//!
//! The bench is a client of the public protocol only: it learns what a
//! node did from its `/healthz`, `/metrics` and, for nodes it started,
//! `/proc`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::database::Database;
use super::report::{NodeFigures, Report};
use super::target::{self, Launch, NodeCounters, Target};

/// How viewers are spread over the nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Place {
    /// Each room's viewers are dealt over the nodes in turn, as a load
    /// balancer spreading connections does.
    #[default]
    RoundRobin,
    /// All of a room's viewers go to one node, picked by hashing the
    /// room's name, as a load balancer hashing on the room does.
    Room,
}

/// The nodes' addresses and the placement: everything a load generator
/// (this process or a child) needs to pick a connection's node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Layout {
    /// One address per node.
    pub addrs: Vec<SocketAddr>,
    /// How connections are placed.
    pub place: Place,
}

impl Layout {
    /// The node of the `k`-th viewer of `room`.
    pub fn viewer(&self, room: &str, k: usize) -> SocketAddr {
        let n = self.addrs.len() as u64;
        let home = fnv1a(room.as_bytes()) % n;
        let i = match self.place {
            Place::RoundRobin => (home + k as u64 % n) % n,
            Place::Room => home,
        };
        self.addrs[i as usize]
    }

    /// The node of the `k`-th sender (or request): senders are dealt over
    /// the nodes in turn whatever the placement, so that with `room` the
    /// danmaku of a room mostly reach its viewers' node over the broker,
    /// which is what that placement is there to measure.
    pub fn sender(&self, k: usize) -> SocketAddr {
        self.addrs[k % self.addrs.len()]
    }
}

/// FNV-1a, 64 bits: a stable hash (the same in every process and build),
/// which is what a room's node must be.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What to run against: the global options of `danmaku bench`.
pub struct Spec<'a> {
    /// Running nodes (`--url`, `--cluster`).
    pub urls: &'a [String],
    /// Nodes to start when `urls` is empty.
    pub nodes: usize,
    /// `--server-config` of the nodes the bench starts.
    pub config: Option<&'a Path>,
    /// `--store-url` of the nodes the bench starts.
    pub store_url: Option<&'a str>,
    /// `--bus-url` of the nodes the bench starts.
    pub bus_url: Option<&'a str>,
    /// `--place`.
    pub place: Place,
}

/// The nodes under test.
pub struct Cluster {
    // Declared before the database: on an early exit the nodes are killed
    // before their database is dropped.
    nodes: Vec<Target>,
    layout: Layout,
    store: Option<String>,
    bus: Option<String>,
    http: reqwest::Client,
    _database: Option<Database>,
}

/// A node's readings at the start of a run.
struct Reading {
    counters: Option<NodeCounters>,
    cpu_s: Option<f64>,
}

/// A run in progress: the readings it started from, and the highest RSS
/// and open files sampled since.
pub struct Run {
    before: Vec<Reading>,
    started: Instant,
    peaks: Arc<Vec<Peak>>,
    sampler: tokio::task::JoinHandle<()>,
}

/// The highest readings of one node.
#[derive(Default)]
struct Peak {
    rss: AtomicU64,
    fds: AtomicU64,
}

/// How often the nodes' RSS and open files are sampled for their peaks.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

impl Cluster {
    /// Resolves the running nodes, or starts `spec.nodes` of this binary
    /// (ids `bench-1`…, with a fresh database when the store is PostgreSQL).
    pub async fn start(spec: Spec<'_>) -> anyhow::Result<Cluster> {
        let http = reqwest::Client::builder()
            .timeout(super::HTTP_TIMEOUT)
            .build()?;
        if !spec.urls.is_empty() {
            let mut nodes = spec
                .urls
                .iter()
                .map(|u| Target::at(u))
                .collect::<anyhow::Result<Vec<_>>>()?;
            for node in &mut nodes {
                node.node_id = node.healthz_node_id(&http).await;
            }
            // What a running node stores in and talks over is not visible
            // to a client: unknown rather than guessed.
            return Ok(Cluster::new(nodes, spec.place, None, None, http, None));
        }
        if spec.nodes == 0 {
            bail!("--nodes must be at least 1");
        }
        let store = store_kind(spec.store_url);
        let database = match spec.store_url {
            Some(url) if store == "postgres" => Some(Database::create(url)?),
            _ => None,
        };
        let store_url = database.as_ref().map(|d| d.url.as_str()).or(spec.store_url);
        let launches = (1..=spec.nodes).map(|i| {
            Target::launch(Launch {
                config: spec.config,
                colocated: spec.nodes,
                store_url,
                bus_url: spec.bus_url,
                node_id: format!("bench-{i}"),
            })
        });
        let nodes = futures_util::future::try_join_all(launches).await?;
        Ok(Cluster::new(
            nodes,
            spec.place,
            Some(store),
            Some(bus_kind(spec.bus_url)),
            http,
            database,
        ))
    }

    fn new(
        nodes: Vec<Target>,
        place: Place,
        store: Option<String>,
        bus: Option<String>,
        http: reqwest::Client,
        database: Option<Database>,
    ) -> Cluster {
        let layout = Layout {
            addrs: nodes.iter().map(|n| n.addr).collect(),
            place,
        };
        Cluster {
            nodes,
            layout,
            store,
            bus,
            http,
            _database: database,
        }
    }

    /// Where connections go.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A client for the bench's own HTTP requests.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The nodes' resident memory, summed (null unless the bench started them all).
    pub fn rss_bytes(&self) -> Option<u64> {
        self.nodes.iter().map(Target::rss_bytes).sum()
    }

    /// The nodes' open files, summed.
    pub fn open_fds(&self) -> Option<u64> {
        self.nodes.iter().map(Target::open_fds).sum()
    }

    /// The nodes' CPU time so far, seconds, summed.
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.nodes.iter().map(Target::cpu_seconds).sum()
    }

    /// Reads every node's counters, and starts sampling their peaks.
    pub async fn begin(&self) -> Run {
        let before = futures_util::future::join_all(self.nodes.iter().map(|n| async {
            Reading {
                counters: n.counters(&self.http).await,
                cpu_s: n.cpu_seconds(),
            }
        }))
        .await;
        let peaks: Arc<Vec<Peak>> = Arc::new(self.nodes.iter().map(|_| Peak::default()).collect());
        let pids: Vec<Option<u32>> = self.nodes.iter().map(Target::pid).collect();
        let sampler = tokio::spawn({
            let peaks = peaks.clone();
            async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    tick.tick().await;
                    sample_peaks(&pids, &peaks);
                }
            }
        });
        Run {
            before,
            started: Instant::now(),
            peaks,
            sampler,
        }
    }

    /// Adds what each node did during `run` to the report, and the cluster's
    /// totals.
    pub async fn finish(&self, run: Run, report: &mut Report) {
        run.sampler.abort();
        let pids: Vec<Option<u32>> = self.nodes.iter().map(Target::pid).collect();
        sample_peaks(&pids, &run.peaks);
        let run_s = run.started.elapsed().as_secs_f64();
        let mut per_node = Vec::with_capacity(self.nodes.len());
        for ((node, before), peak) in self.nodes.iter().zip(&run.before).zip(run.peaks.iter()) {
            let after = node.counters(&self.http).await;
            let delta = after
                .zip(before.counters)
                .map(|(a, b)| a.since(&b))
                .unwrap_or_default();
            let known = |v: u64| node.pid().map(|_| v);
            per_node.push(NodeFigures {
                node_id: node.node_id.clone(),
                addr: node.addr.to_string(),
                rss_bytes: node.rss_bytes(),
                rss_peak_bytes: known(peak.rss.load(Ordering::Relaxed)),
                cpu_s: node.cpu_seconds().zip(before.cpu_s).map(|(a, b)| a - b),
                open_files: node.open_fds(),
                open_files_peak: known(peak.fds.load(Ordering::Relaxed)),
                bus_received: delta.bus_received,
                bus_published: delta.bus_published,
                commits: delta.commits,
                received: delta.received,
                deliveries: delta.deliveries,
            });
        }
        report.nodes = Some(self.nodes.len());
        report.store.clone_from(&self.store);
        report.bus.clone_from(&self.bus);
        let heard: Option<Vec<u64>> = per_node.iter().map(|n| n.bus_received).collect();
        report.broker_share_max = heard.as_ref().and_then(|h| {
            let total: u64 = h.iter().sum();
            (total > 0).then(|| *h.iter().max().unwrap_or(&0) as f64 / total as f64)
        });
        report.broker_received_per_node = heard;
        if self.store.as_deref() == Some("postgres") {
            let commits: Option<u64> = per_node.iter().map(|n| n.commits).sum();
            // Per second of the phase the scenario measured, when it has one.
            let seconds = report.elapsed_s.unwrap_or(run_s);
            report.pg_commits_per_s = commits.map(|c| c as f64 / seconds);
        }
        report.per_node = Some(per_node);
    }

    /// Stops the nodes the bench started (SIGTERM, all at once), then drops
    /// the run's database.
    pub async fn stop(self) {
        futures_util::future::join_all(self.nodes.into_iter().map(Target::stop)).await;
    }
}

/// Raises each node's peaks to its current RSS and open files.
fn sample_peaks(pids: &[Option<u32>], peaks: &[Peak]) {
    for (pid, peak) in pids.iter().zip(peaks) {
        if let Some(pid) = pid {
            if let Some(rss) = target::rss_bytes(*pid) {
                peak.rss.fetch_max(rss, Ordering::Relaxed);
            }
            if let Some(fds) = target::open_fds(*pid) {
                peak.fds.fetch_max(fds, Ordering::Relaxed);
            }
        }
    }
}

/// `sqlite` without a store URL, `postgres` for a PostgreSQL one, else
/// the URL's scheme.
fn store_kind(url: Option<&str>) -> String {
    match url.map(scheme) {
        None => "sqlite".into(),
        Some("postgres" | "postgresql") => "postgres".into(),
        Some(other) => other.into(),
    }
}

/// `memory` without a bus URL, `redis` or `nats` for theirs, else the
/// URL's scheme.
fn bus_kind(url: Option<&str>) -> String {
    match url.map(scheme) {
        None => "memory".into(),
        Some("redis" | "rediss") => "redis".into(),
        Some(other) => other.into(),
    }
}

fn scheme(url: &str) -> &str {
    url.split_once("://").map_or(url, |(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(place: Place, n: usize) -> Layout {
        Layout {
            addrs: (0..n)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16)))
                .collect(),
            place,
        }
    }

    #[test]
    fn round_robin_deals_each_rooms_viewers_over_every_node() {
        let l = layout(Place::RoundRobin, 3);
        for room in ["a", "b", "bench-17"] {
            let mut counts = std::collections::HashMap::new();
            for k in 0..30 {
                *counts.entry(l.viewer(room, k)).or_insert(0) += 1;
            }
            assert_eq!(counts.len(), 3, "{room}: {counts:?}");
            assert!(counts.values().all(|&c| c == 10), "{room}: {counts:?}");
        }
    }

    #[test]
    fn room_placement_keeps_a_room_on_one_node_and_spreads_rooms() {
        let l = layout(Place::Room, 4);
        let homes: std::collections::HashSet<_> = (0..40)
            .map(|r| {
                let room = format!("bench-{r}");
                let home = l.viewer(&room, 0);
                assert!((1..50).all(|k| l.viewer(&room, k) == home), "{room}");
                home
            })
            .collect();
        assert_eq!(homes.len(), 4, "40 rooms land on every node");
        // Senders are dealt over the nodes in turn all the same.
        let senders: Vec<_> = (0..8).map(|k| l.sender(k)).collect();
        assert_eq!(senders[..4], l.addrs[..]);
        assert_eq!(senders[4..], l.addrs[..]);
        // Stable across processes and builds (a child generator agrees):
        // FNV-1a's published test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn kinds_come_from_the_urls() {
        assert_eq!(store_kind(None), "sqlite");
        assert_eq!(store_kind(Some("postgresql://h/d")), "postgres");
        assert_eq!(bus_kind(None), "memory");
        assert_eq!(bus_kind(Some("redis://127.0.0.1:6379")), "redis");
        assert_eq!(bus_kind(Some("nats://127.0.0.1:4222")), "nats");
    }
}
