//! One server under test: a node the bench starts, or one at `--url`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Linux reports CPU time in clock ticks of 1/100 s (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// One node a scenario runs against.
pub struct Target {
    /// Its address.
    pub addr: SocketAddr,
    /// The id the bench gave it (a node at `--url` says its own in `/healthz`).
    pub node_id: Option<String>,
    child: Option<Child>,
    /// Keeps the temporary directory (data, and the bench's config) until
    /// the server stops.
    _data: Option<tempfile::TempDir>,
}

/// The config of a server the bench starts without `--server-config`: the
/// bench's own connections (from 127.0.0.0/8) skip the rate limits and the
/// per-address connection cap, which nobody skips by default, so that the
/// figures measure the server.
const EXEMPT_LOOPBACK: &str = "[limits]\nexempt_ips = [\"127.0.0.0/8\", \"::1/128\"]\n";

/// The longest coalescing window of nodes sharing one machine: long
/// enough for a big room's window to follow a node's share of the write
/// budget (the default 20 ms would cap it).
const COLOCATED_COALESCE_MS: u64 = 100;

/// The bench's own config for one of `nodes` nodes it starts on this one
/// machine: [`EXEMPT_LOOPBACK`], and when several share the machine, the
/// fan-out settings docs/cluster.md gives for co-located nodes (each
/// node's share of the machine's write budget, and room for the window
/// that share makes), as `deploy/cluster/node-*.toml` do.
fn own_config(nodes: usize) -> String {
    let mut config = EXEMPT_LOOPBACK.to_owned();
    if nodes > 1 {
        let budget = crate::config::FanoutConfig::default().writes_per_s;
        config.push_str(&format!(
            "[fanout]\ncoalesce_ms = {}\nwrites_per_s = {}\n",
            COLOCATED_COALESCE_MS,
            budget / nodes as u64
        ));
    }
    config
}

/// How the bench starts a node of its own.
pub struct Launch<'a> {
    /// `--server-config`, used as is; without it, the bench's own
    /// ([`own_config`]).
    pub config: Option<&'a Path>,
    /// How many nodes the bench starts on this machine, this one included.
    pub colocated: usize,
    /// `--store-url`, passed through (already naming the run's database).
    pub store_url: Option<&'a str>,
    /// `--bus-url`, passed through.
    pub bus_url: Option<&'a str>,
    /// The node's id.
    pub node_id: String,
}

impl Target {
    /// A running server at `url` (`http://HOST:PORT`).
    pub fn at(url: &str) -> anyhow::Result<Target> {
        let host = url.trim_start_matches("http://").trim_end_matches('/');
        let addr = host
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        Ok(Target {
            addr,
            node_id: None,
            child: None,
            _data: None,
        })
    }

    /// Starts a server (this binary) on an ephemeral port of 127.0.0.1
    /// with a temporary data directory.
    pub async fn launch(launch: Launch<'_>) -> anyhow::Result<Target> {
        let data = tempfile::tempdir()?;
        let config = match launch.config {
            Some(config) => config.to_owned(),
            None => {
                let own = data.path().join("bench.toml");
                std::fs::write(&own, own_config(launch.colocated))?;
                own
            }
        };
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data.path().join("data"))
            .arg("--config")
            .arg(config)
            .args(["--node-id", &launch.node_id])
            // The bench's flags, not its environment, say what its nodes
            // use: the report names the store and the bus from them.
            .env_remove("DANMAKU_STORE_URL")
            .env_remove("DANMAKU_BUS_URL")
            .env_remove("DANMAKU_NODE_ID")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(url) = launch.store_url {
            cmd.args(["--store-url", url]);
        }
        if let Some(url) = launch.bus_url {
            cmd.args(["--bus-url", url]);
        }
        let id = &launch.node_id;
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start node {id}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let Some(first) = lines.next_line().await? else {
            bail!("node {id} did not start (its error is above)");
        };
        let Some(addr) = first.strip_prefix("danmaku listening on http://") else {
            bail!("node {id}: unexpected server output: {first}");
        };
        let addr = addr.parse()?;
        // Drain the rest of its stdout so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Target {
            addr,
            node_id: Some(launch.node_id),
            child: Some(child),
            _data: Some(data),
        })
    }

    /// The process id of a server the bench started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref()?.id()
    }

    /// The server's resident memory, bytes (null for a server at `--url`).
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_bytes(self.pid()?)
    }

    /// The server's open file descriptors (null for a server at `--url`).
    pub fn open_fds(&self) -> Option<u64> {
        open_fds(self.pid()?)
    }

    /// The server's CPU time so far (user + system), seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 11 and 12 here.
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / TICKS_PER_SECOND)
    }

    /// The node's id as its `/healthz` says.
    pub async fn healthz_node_id(&self, http: &reqwest::Client) -> Option<String> {
        let url = format!("http://{}/healthz", self.addr);
        let body: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
        body["node_id"].as_str().map(str::to_owned)
    }

    /// The node's counters from `/metrics`; none if it does not answer.
    pub async fn counters(&self, http: &reqwest::Client) -> Option<NodeCounters> {
        let url = format!("http://{}/metrics", self.addr);
        let res = http.get(url).send().await.ok()?;
        if !res.status().is_success() {
            return None;
        }
        Some(NodeCounters::parse(&res.text().await.ok()?))
    }

    /// Stops a server the bench started (SIGTERM, then waits).
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await;
        }
    }
}

/// Resident memory of process `pid`, bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> Option<u64> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(fds.count() as u64)
}

/// The counters of a node's `/metrics` the bench reports; a counter the
/// node does not export is none.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeCounters {
    /// `danmaku_bus_received_total`: events heard from other nodes.
    pub bus_received: Option<u64>,
    /// `danmaku_bus_published_total`: events published to the broker.
    pub bus_published: Option<u64>,
    /// `danmaku_store_batch_size_count`: group commits.
    pub commits: Option<u64>,
    /// `danmaku_received_total`: danmaku accepted and stored.
    pub received: Option<u64>,
    /// `danmaku_deliveries_total`: danmaku written to viewers.
    pub deliveries: Option<u64>,
}

impl NodeCounters {
    /// Reads the counters from Prometheus text.
    fn parse(text: &str) -> NodeCounters {
        let mut c = NodeCounters::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.split_once(' ') else {
                continue;
            };
            let slot = match name {
                "danmaku_bus_received_total" => &mut c.bus_received,
                "danmaku_bus_published_total" => &mut c.bus_published,
                "danmaku_store_batch_size_count" => &mut c.commits,
                "danmaku_received_total" => &mut c.received,
                "danmaku_deliveries_total" => &mut c.deliveries,
                _ => continue,
            };
            // Counters are integers, though the text format allows floats.
            *slot = value.trim().parse::<f64>().ok().map(|v| v as u64);
        }
        c
    }

    /// What each counter rose by since `before` (none where either is unknown).
    pub fn since(&self, before: &NodeCounters) -> NodeCounters {
        let d = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| a.saturating_sub(b));
        NodeCounters {
            bus_received: d(self.bus_received, before.bus_received),
            bus_published: d(self.bus_published, before.bus_published),
            commits: d(self.commits, before.commits),
            received: d(self.received, before.received),
            deliveries: d(self.deliveries, before.deliveries),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters_it_reports_from_prometheus_text() {
        let text = "# HELP danmaku_received Danmaku accepted and stored.\n\
                    # TYPE danmaku_received counter\n\
                    danmaku_received_total 12\n\
                    danmaku_deliveries_total 3400\n\
                    danmaku_store_batch_size_sum 12.0\n\
                    danmaku_store_batch_size_count 5\n\
                    danmaku_store_batch_size_bucket{le=\"1.0\"} 2\n\
                    danmaku_bus_published_total 5\n\
                    danmaku_bus_received_total 7\n";
        let c = NodeCounters::parse(text);
        assert_eq!(
            c,
            NodeCounters {
                bus_received: Some(7),
                bus_published: Some(5),
                commits: Some(5),
                received: Some(12),
                deliveries: Some(3400),
            }
        );
        let later = NodeCounters {
            received: Some(20),
            ..c
        };
        let d = later.since(&c);
        assert_eq!((d.received, d.commits), (Some(8), Some(0)));
        // A node without a bus exports no bus counters: unknown, not zero.
        let old = NodeCounters::parse("danmaku_received_total 1\n");
        assert_eq!(old.bus_received, None);
        assert_eq!(later.since(&old).bus_received, None);
    }

    #[test]
    fn nodes_sharing_the_machine_share_its_write_budget() {
        let alone = crate::config::Config::from_toml(&own_config(1)).unwrap();
        let default = crate::config::FanoutConfig::default();
        assert_eq!(alone.fanout.writes_per_s, default.writes_per_s);
        assert_eq!(alone.fanout.coalesce_ms, default.coalesce_ms);
        assert!(!alone.limits.exempt_ips.is_empty());
        let three = crate::config::Config::from_toml(&own_config(3)).unwrap();
        three.validate().unwrap();
        assert_eq!(three.fanout.writes_per_s, default.writes_per_s / 3);
        assert_eq!(three.fanout.coalesce_ms, COLOCATED_COALESCE_MS);
        // A 3,000-viewer room on each node gets a ~90 ms window, no longer
        // capped at the single node's 20 ms.
        let window = three.fanout.window(3000);
        assert!(window > std::time::Duration::from_millis(80), "{window:?}");
        assert_eq!(three.limits.exempt_ips, alone.limits.exempt_ips);
    }
}
