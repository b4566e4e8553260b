//! The viewers of a run, in this process or spread over child load
//! generator processes.
//!
//! One process may open about 19,000 connections within a 20,000
//! open-files limit. For more, the bench runs itself again as K children
//! (`danmaku bench shard`, hidden), each holding a share of the viewers.
//! A child reads its order (one JSON line) on stdin, prints progress lines
//! and then `ready` on stdout once its share is connected, reads the last id
//! of every room on stdin when sending is over, and prints what its viewers
//! saw (`done`). The parent adds the shares up. Viewer `i` is the same
//! viewer (room, node, source address, sampling) in whichever process
//! holds it.

use std::net::SocketAddr;
use std::ops::Range;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::cluster::Layout;
use super::progress::Counters;
use super::report::latency_histogram;
use super::viewer::{source_ip, Protocol, Seen, Viewer};

/// Viewers whose every danmaku's latency is measured (the others only
/// check ids): enough for stable percentiles, few enough to stay cheap.
const SAMPLED_VIEWERS: usize = 200;
/// How long viewers may take to receive the last danmaku after sending ends.
pub const DRAIN: Duration = Duration::from_secs(10);
/// How long a child may take to exit once it has reported.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Who watches: rooms, viewers, and how they connect.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Crowd {
    /// The nodes, and how viewers are placed on them.
    pub layout: Layout,
    /// The rooms; viewer `i` watches room `i % rooms`.
    pub rooms: Vec<String>,
    /// Viewers in all.
    pub viewers: usize,
    /// Viewers `0..slow_viewers` read too slowly on purpose.
    pub slow_viewers: usize,
    /// Handshakes in flight at once, per process.
    pub concurrency: usize,
    /// The wire the viewers speak.
    pub protocol: Protocol,
    /// Each room's newest id before the run, for viewers whose wire has no
    /// hello frame to say where to start counting (Bilibili's); empty when
    /// the wire says.
    pub start_ids: Vec<u64>,
}

impl Crowd {
    fn room(&self, i: usize) -> usize {
        i % self.rooms.len()
    }

    fn slow(&self, i: usize) -> bool {
        i < self.slow_viewers
    }

    /// Latency is sampled on viewers that keep up.
    fn sampled(&self, i: usize) -> bool {
        !self.slow(i) && i.is_multiple_of(self.viewers.div_ceil(SAMPLED_VIEWERS).max(1))
    }

    /// The node of viewer `i`: it is its room's `i / rooms`-th viewer.
    fn node(&self, i: usize) -> SocketAddr {
        self.layout
            .viewer(&self.rooms[self.room(i)], i / self.rooms.len())
    }
}

/// What viewers saw, summed.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Danmaku received.
    pub received: u64,
    /// Ids never received.
    pub lost: u64,
    /// Ids received more than once.
    pub duplicated: u64,
    /// Lagged frames.
    pub lagged: u64,
    /// Danmaku density control left out.
    pub thinned: u64,
    /// Bytes the viewers read, frames and headers included.
    pub wire_bytes: u64,
    /// When the last danmaku was received, µs since the epoch.
    pub last_delivery_us: u64,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.received += other.received;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.lagged += other.lagged;
        self.thinned += other.thinned;
        self.wire_bytes += other.wire_bytes;
        self.last_delivery_us = self.last_delivery_us.max(other.last_delivery_us);
    }
}

/// The viewers of a run, connected.
pub struct Audience {
    inner: Inner,
    /// Viewers connected, per room.
    pub connected: Vec<u64>,
    /// Viewers that failed to connect.
    pub errors: u64,
}

enum Inner {
    Local(Local),
    Procs(Vec<Shard>),
}

impl Audience {
    /// Connects every viewer of `crowd`, in this process (`procs` 1) or
    /// in `procs` child processes; returns once all are connected. Viewers
    /// read from the moment they are all connected.
    pub async fn gather(
        crowd: &Crowd,
        procs: usize,
        counters: &Arc<Counters>,
    ) -> anyhow::Result<Audience> {
        if procs <= 1 {
            let (local, joined) = connect(crowd, 0..crowd.viewers, counters).await;
            return Ok(Audience {
                inner: Inner::Local(local),
                connected: joined.connected,
                errors: joined.errors,
            });
        }
        let procs = procs.min(crowd.viewers.max(1));
        let mut shards = Vec::with_capacity(procs);
        for p in 0..procs {
            let share = crowd.viewers * p / procs..crowd.viewers * (p + 1) / procs;
            shards.push(Shard::spawn(p, crowd, share, counters.clone()).await?);
        }
        let mut connected = vec![0; crowd.rooms.len()];
        let mut errors = 0;
        for shard in &mut shards {
            let joined = shard.ready().await?;
            for (all, n) in connected.iter_mut().zip(joined.connected) {
                *all += n;
            }
            errors += joined.errors;
        }
        Ok(Audience {
            inner: Inner::Procs(shards),
            connected,
            errors,
        })
    }

    /// Viewers connected in all.
    pub fn total(&self) -> usize {
        self.connected.iter().sum::<u64>() as usize
    }

    /// Tells every viewer the last id of its room (`last_ids[room]`), waits
    /// until each has reached it or `DRAIN` has passed, and sums what they
    /// saw; their latencies go to `counters`.
    pub async fn finish(self, last_ids: &[u64], counters: &Counters) -> anyhow::Result<Totals> {
        match self.inner {
            Inner::Local(local) => local.finish(last_ids).await,
            Inner::Procs(shards) => {
                let ends = shards.into_iter().map(|s| s.finish(last_ids, counters));
                let mut totals = Totals::default();
                for t in futures_util::future::try_join_all(ends).await? {
                    totals.add(&t);
                }
                Ok(totals)
            }
        }
    }
}

/// Viewers held by this process.
struct Local {
    tasks: Vec<JoinHandle<Seen>>,
    last_ids: Vec<watch::Sender<Option<u64>>>,
    last_delivery: Arc<AtomicU64>,
}

/// What connecting a share of the viewers came to.
#[derive(Debug, Serialize, Deserialize)]
struct Joined {
    connected: Vec<u64>,
    errors: u64,
}

/// Connects viewers `range` of `crowd` in this process, then sets them reading.
async fn connect(crowd: &Crowd, range: Range<usize>, counters: &Arc<Counters>) -> (Local, Joined) {
    let mut joined = Joined {
        connected: vec![0; crowd.rooms.len()],
        errors: 0,
    };
    let mut viewers = Vec::with_capacity(range.len());
    for chunk in range.collect::<Vec<_>>().chunks(crowd.concurrency.max(1)) {
        let attempts = chunk.iter().map(|&i| {
            let room = crowd.room(i);
            let viewer = Viewer::connect(
                crowd.node(i),
                source_ip(i),
                &crowd.rooms[room],
                crowd.protocol,
                crowd.sampled(i),
                crowd.slow(i),
            );
            async move { (room, viewer.await) }
        });
        for (room, result) in futures_util::future::join_all(attempts).await {
            match result {
                Ok(mut v) => {
                    if let Some(&last) = crowd.start_ids.get(room) {
                        v.start_after(last);
                    }
                    counters.connected.fetch_add(1, Ordering::Relaxed);
                    joined.connected[room] += 1;
                    viewers.push((room, v));
                }
                Err(e) => {
                    joined.errors += 1;
                    tracing::warn!(error = %e, "viewer failed to connect");
                }
            }
        }
    }
    let last_ids: Vec<_> = crowd.rooms.iter().map(|_| watch::channel(None).0).collect();
    let last_delivery = Arc::new(AtomicU64::new(0));
    let tasks = viewers
        .into_iter()
        .map(|(room, v)| {
            tokio::spawn(v.run(
                counters.clone(),
                last_delivery.clone(),
                last_ids[room].subscribe(),
            ))
        })
        .collect();
    let local = Local {
        tasks,
        last_ids,
        last_delivery,
    };
    (local, joined)
}

impl Local {
    async fn finish(self, last_ids: &[u64]) -> anyhow::Result<Totals> {
        for (room, &last) in self.last_ids.iter().zip(last_ids) {
            let _ = room.send(Some(last));
        }
        let drained = tokio::time::timeout(DRAIN, futures_util::future::join_all(self.tasks)).await;
        let Ok(results) = drained else {
            bail!("viewers did not receive everything within {DRAIN:?} after sending ended");
        };
        let mut totals = Totals {
            last_delivery_us: self.last_delivery.load(Ordering::Relaxed),
            ..Totals::default()
        };
        for seen in results {
            let seen = seen?;
            totals.add(&Totals {
                received: seen.received,
                lost: seen.lost,
                duplicated: seen.duplicated,
                lagged: seen.lagged,
                thinned: seen.thinned,
                wire_bytes: seen.wire_bytes,
                last_delivery_us: 0,
            });
        }
        Ok(totals)
    }
}

/// A child's order: its share of the viewers.
#[derive(Serialize, Deserialize)]
struct Order {
    crowd: Crowd,
    from: usize,
    to: usize,
}

/// The parent's word once sending is over: each room's last id.
#[derive(Serialize, Deserialize)]
struct LastIds {
    last_ids: Vec<u64>,
}

/// A child's lines on stdout.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Said {
    /// Every second: its counters so far.
    Progress { connected: u64, delivered: u64 },
    /// Its share is connected.
    Ready { joined: Joined, rate_limited: bool },
    /// What its viewers saw, and their latencies as (µs, count) pairs.
    Done {
        totals: Totals,
        latency: Vec<(u64, u64)>,
        rate_limited: bool,
    },
    /// It could not finish.
    Failed { error: String },
}

/// A child load generator process.
struct Shard {
    index: usize,
    child: Child,
    stdin: ChildStdin,
    said: mpsc::UnboundedReceiver<Said>,
}

impl Shard {
    /// Starts child `index` with viewers `share`; its progress goes to `counters`.
    async fn spawn(
        index: usize,
        crowd: &Crowd,
        share: Range<usize>,
        counters: Arc<Counters>,
    ) -> anyhow::Result<Shard> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["bench", "shard"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // In the environment, not the arguments, which any user can read.
        match super::TOKEN.get() {
            Some(token) => cmd.env("DANMAKU_TOKEN", token),
            None => cmd.env_remove("DANMAKU_TOKEN"),
        };
        let mut child = cmd
            .spawn()
            .context("cannot start a load generator process")?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        let order = Order {
            crowd: crowd.clone(),
            from: share.start,
            to: share.end,
        };
        write_line(&mut stdin, &order).await?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, said) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let (mut connected, mut delivered) = (0, 0);
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str(&line) {
                    Ok(Said::Progress {
                        connected: c,
                        delivered: d,
                    }) => {
                        let add = c.saturating_sub(connected);
                        counters.connected.fetch_add(add, Ordering::Relaxed);
                        let add = d.saturating_sub(delivered);
                        counters.delivered.fetch_add(add, Ordering::Relaxed);
                        (connected, delivered) = (c, d);
                    }
                    Ok(said) => {
                        if tx.send(said).is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, line, "unexpected generator output"),
                }
            }
        });
        Ok(Shard {
            index,
            child,
            stdin,
            said,
        })
    }

    /// Waits until the child has connected its share.
    async fn ready(&mut self) -> anyhow::Result<Joined> {
        match self.said.recv().await {
            Some(Said::Ready {
                joined,
                rate_limited,
            }) => {
                if rate_limited {
                    super::note_rate_limited();
                }
                Ok(joined)
            }
            other => bail!(self.unexpected(other)),
        }
    }

    /// Hands the child the last ids and collects what its viewers saw.
    async fn finish(mut self, last_ids: &[u64], counters: &Counters) -> anyhow::Result<Totals> {
        let last_ids = LastIds {
            last_ids: last_ids.to_vec(),
        };
        write_line(&mut self.stdin, &last_ids).await?;
        let said = self.said.recv().await;
        let Some(Said::Done {
            totals,
            latency,
            rate_limited,
        }) = said
        else {
            bail!(self.unexpected(said));
        };
        if rate_limited {
            super::note_rate_limited();
        }
        if !latency.is_empty() {
            let mut h = latency_histogram();
            for (value, count) in latency {
                h.record_n(value, count)?;
            }
            counters.record(&h);
        }
        let _ = tokio::time::timeout(EXIT_WAIT, self.child.wait()).await;
        Ok(totals)
    }

    /// The error for a line that is not the one expected.
    fn unexpected(&self, said: Option<Said>) -> String {
        let p = self.index;
        match said {
            None => format!("load generator process {p} ended early (its error is above)"),
            Some(Said::Failed { error }) => format!("load generator process {p}: {error}"),
            Some(_) => format!("load generator process {p} answered out of turn"),
        }
    }
}

/// Writes one JSON line.
async fn write_line<T: Serialize>(to: &mut ChildStdin, value: &T) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    to.write_all(&line)
        .await
        .context("a load generator process is gone")?;
    Ok(())
}

/// Prints one JSON line on stdout, the parent's pipe.
fn say(said: &Said) {
    // println! takes stdout's lock for the whole line: lines never interleave.
    println!(
        "{}",
        serde_json::to_string(said).expect("a line serialises")
    );
}

/// How often a child reports its counters.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// `danmaku bench shard`: runs as a child of the bench, with its order on stdin.
pub async fn serve_shard() -> anyhow::Result<()> {
    let mut lines = stdin_lines();
    let order = lines.recv().await.context("no order on stdin")?;
    let order: Order = serde_json::from_str(&order).context("a bad order on stdin")?;
    let counters = Arc::new(Counters::default());
    let progress = tokio::spawn({
        let counters = counters.clone();
        async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tick.tick().await;
                say(&Said::Progress {
                    connected: counters.connected.load(Ordering::Relaxed),
                    delivered: counters.delivered.load(Ordering::Relaxed),
                });
            }
        }
    });
    let (local, joined) = connect(&order.crowd, order.from..order.to, &counters).await;
    say(&Said::Ready {
        joined,
        rate_limited: super::rate_limited(),
    });
    let Some(line) = lines.recv().await else {
        bail!("the bench ended before sending did");
    };
    let last_ids: LastIds = serde_json::from_str(&line).context("bad last ids on stdin")?;
    let result = local.finish(&last_ids.last_ids).await;
    progress.abort();
    say(&match result {
        Ok(totals) => Said::Done {
            totals,
            latency: counters
                .latency
                .lock()
                .expect("latency lock")
                .as_ref()
                .map(pairs)
                .unwrap_or_default(),
            rate_limited: super::rate_limited(),
        },
        Err(e) => Said::Failed {
            error: format!("{e:#}"),
        },
    });
    Ok(())
}

/// The lines of stdin, read on a thread of their own (blocking reads: the
/// runtime is built without tokio's stdin).
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A histogram as (value, count) pairs, one per recorded bucket.
fn pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::cluster::Place;

    #[test]
    fn latencies_survive_the_trip_between_processes() {
        let mut h = latency_histogram();
        for v in [120, 950, 951, 20_000, 20_001, 3_000_000] {
            h.record(v).unwrap();
        }
        let mut back = latency_histogram();
        for (v, n) in pairs(&h) {
            back.record_n(v, n).unwrap();
        }
        assert_eq!(back.len(), h.len());
        for q in [0.5, 0.9, 0.99, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q), "{q}");
        }
    }

    #[test]
    fn a_viewer_is_the_same_in_every_share() {
        let crowd = Crowd {
            layout: Layout {
                addrs: vec![
                    SocketAddr::from(([127, 0, 0, 1], 1)),
                    SocketAddr::from(([127, 0, 0, 1], 2)),
                ],
                place: Place::RoundRobin,
            },
            rooms: vec!["a".into(), "b".into(), "c".into()],
            viewers: 1000,
            slow_viewers: 2,
            concurrency: 1,
            protocol: Protocol::Bilibili,
            start_ids: vec![0, 4, 9],
        };
        // Room i % 3, its viewers dealt over both nodes, 200 sampled ones
        // among those that keep up.
        assert_eq!((crowd.room(4), crowd.room(5)), (1, 2));
        assert_ne!(crowd.node(0), crowd.node(3), "room a's 1st and 2nd viewers");
        assert_eq!(crowd.node(0), crowd.node(6));
        let sampled = (0..1000).filter(|&i| crowd.sampled(i)).count();
        assert_eq!(sampled, 199, "viewer 0 is slow, so not sampled");
        // The order a child reads is the crowd it was given.
        let order = Order {
            crowd,
            from: 500,
            to: 1000,
        };
        let back: Order = serde_json::from_str(&serde_json::to_string(&order).unwrap()).unwrap();
        assert_eq!(back.crowd.node(7), order.crowd.node(7));
        assert_eq!(back.from..back.to, 500..1000);
    }
}
