//! A room: its ring of recent frames, its pending danmaku, its viewers'
//! seats and its flusher.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::density::Density;
use super::frame::Frame;
use super::ring::{Ring, Slot};
use super::seat::{Seat, Viewer, Written};
use crate::config::FanoutConfig;
use crate::danmaku::Danmaku;
use crate::metrics::Metrics;

/// Rough JSON size of a danmaku beyond its text, for the frame-size trigger.
const ITEM_OVERHEAD: usize = 160;

/// Seats one task of a flusher's pass writes to: a pass over a big room is
/// split into tasks of this many, which the runtime spreads over its
/// threads, so that a hot room's writes use every core.
const PASS_CHUNK: usize = 1024;

/// One viewer in this many observes the fan-out latency histogram: it is
/// a distribution, and observing it for every viewer of a 10,000-viewer
/// room would take a lock 10,000 times per frame.
const LATENCY_SAMPLE: u64 = 16;

/// Viewers so far, to pick the sampled ones.
static VIEWERS: AtomicU64 = AtomicU64::new(0);

/// A room's shared state. Viewers hold it through a [`Viewer`].
pub struct Room {
    name: Arc<str>,
    /// The room's ring: the last `ring_frames` frames. Each viewer's place
    /// is a number into it, so a room costs O(ring) memory and each viewer
    /// O(1), however far behind it is.
    ring: Mutex<Ring>,
    seats: Mutex<Seats>,
    state: Mutex<RoomState>,
    /// Wakes the flusher: danmaku arrived, or the viewer count changed.
    wake: Notify,
}

/// The viewers' seats, and the list a flusher's pass walks.
struct Seats {
    all: Vec<Arc<Seat>>,
    /// `all` as of the last pass; rebuilt when viewers came or went.
    snapshot: Option<Arc<[Arc<Seat>]>>,
}

struct RoomState {
    pending: Vec<Danmaku>,
    pending_bytes: usize,
    /// When the oldest pending danmaku was committed.
    pending_since: Option<Instant>,
    viewers: usize,
    /// The viewer count last announced in an `online` frame.
    announced: usize,
    /// The newest id this room has seen, if any since the hub made it.
    last_id: Option<u64>,
    rate: RateMeter,
    density: Density,
    last_activity: Instant,
    /// Set when the hub forgets the room; a flusher that sees it exits.
    removed: bool,
}

/// A room's figures, for the rooms API.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RoomStats {
    /// The room name.
    pub room: String,
    /// Viewers connected to this node.
    pub online: usize,
    /// The newest id, if the hub has seen one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_id: Option<u64>,
    /// Danmaku per second over the last ten seconds.
    pub rate_per_s: f64,
}

impl Room {
    pub(super) fn new(name: &str, ring_frames: usize) -> Room {
        Room {
            name: name.into(),
            ring: Mutex::new(Ring::new(ring_frames)),
            seats: Mutex::new(Seats {
                all: Vec::new(),
                snapshot: None,
            }),
            state: Mutex::new(RoomState {
                pending: Vec::new(),
                pending_bytes: 0,
                pending_since: None,
                viewers: 0,
                announced: 0,
                last_id: None,
                rate: RateMeter::default(),
                density: Density::default(),
                last_activity: Instant::now(),
                removed: false,
            }),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, RoomState> {
        // A panic while holding the lock cannot leave the state half-updated
        // in a way that matters more than losing the room, so go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The room name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues committed danmaku for the next frame.
    pub(super) fn push(&self, items: &[Danmaku], committed_at: Instant) {
        let mut s = self.state();
        s.pending.extend_from_slice(items);
        s.pending_bytes += items
            .iter()
            .map(|d| d.text.len() + ITEM_OVERHEAD)
            .sum::<usize>();
        s.pending_since.get_or_insert(committed_at);
        if let Some(last) = items.last() {
            s.last_id = Some(s.last_id.map_or(last.id, |l| l.max(last.id)));
        }
        s.rate.add(items.len() as u32);
        s.last_activity = Instant::now();
        drop(s);
        self.wake.notify_one();
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn seats(&self) -> MutexGuard<'_, Seats> {
        self.seats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the ring holds at `seq`.
    pub(super) fn ring_get(&self, seq: u64) -> Slot {
        self.ring().get(seq)
    }

    /// The number the next frame will get.
    pub(super) fn ring_end(&self) -> u64 {
        self.ring().end()
    }

    /// Registers a viewer; called with the hub's shard locked so the room
    /// cannot be forgotten in between.
    pub(super) fn join(self: &Arc<Self>) -> Viewer {
        self.state().viewers += 1;
        let sampled = VIEWERS
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(LATENCY_SAMPLE);
        // The seat is listed and its place read under the seats lock: a
        // frame published before is not the viewer's; one published after
        // finds the seat in its pass.
        let mut seats = self.seats();
        let seat = Arc::new(Seat::new(self.ring_end(), sampled));
        seats.all.push(seat.clone());
        seats.snapshot = None;
        drop(seats);
        self.wake.notify_one();
        Viewer::new(self.clone(), seat)
    }

    pub(super) fn leave(&self) {
        let mut s = self.state();
        s.viewers -= 1;
        s.last_activity = Instant::now();
        drop(s);
        self.seats().snapshot = None;
        self.wake.notify_one();
    }

    /// The seats a pass walks, without those whose viewers left.
    fn seat_list(&self) -> Arc<[Arc<Seat>]> {
        let mut seats = self.seats();
        if let Some(list) = &seats.snapshot {
            return list.clone();
        }
        seats.all.retain(|s| !s.gone.load(Ordering::Relaxed));
        let list: Arc<[Arc<Seat>]> = seats.all.iter().cloned().collect();
        seats.snapshot = Some(list.clone());
        list
    }

    /// The room's figures now.
    pub fn stats(&self) -> RoomStats {
        let mut s = self.state();
        RoomStats {
            room: self.name.to_string(),
            online: s.viewers,
            last_id: s.last_id,
            rate_per_s: s.rate.per_second(),
        }
    }

    /// Remembers the room's newest id as the store knows it, for a room the
    /// hub made before any danmaku passed through it.
    pub fn seed_last_id(&self, id: u64) {
        let mut s = self.state();
        s.last_id = Some(s.last_id.map_or(id, |l| l.max(id)));
    }

    /// Forgets the room if nobody watches it and nothing happened for
    /// `idle`. Called with the hub's shard locked.
    pub(super) fn retire_if_idle(&self, idle: Duration) -> bool {
        let mut s = self.state();
        let retire = s.viewers == 0 && s.pending.is_empty() && s.last_activity.elapsed() >= idle;
        s.removed |= retire;
        retire
    }

    /// Encodes what is pending, in frames of at most `max_frame_bytes`, and
    /// puts them in the ring; returns the first frame's number and the
    /// frames, for the pass that delivers them. Encoding happens under the
    /// room lock so that two flushes can never publish out of id order.
    /// With density control on, a hot room's frames keep only what its
    /// viewers can read; each frame still stands for its whole id range.
    pub(super) fn flush(&self, config: &FanoutConfig, metrics: &Metrics) -> Option<Published> {
        let max_frame_bytes = config.max_frame_bytes;
        let mut s = self.state();
        let committed_at = s.pending_since.take()?;
        let mut items = std::mem::take(&mut s.pending);
        s.pending_bytes = 0;
        // Pending danmaku are contiguous: the frames cover this whole range.
        let (first, last) = (items.first()?.id, items.last()?.id);
        if config.density_control {
            let (kept, thinned) = s.density.thin(items, config.density_max_per_s);
            metrics.thinned.inc_by(thinned);
            items = kept;
        }
        let mut frames = Vec::new();
        let mut next = first;
        loop {
            let mut bytes = 0;
            let split = items
                .iter()
                .position(|d| {
                    bytes += d.text.len() + ITEM_OVERHEAD;
                    bytes > max_frame_bytes
                })
                .map_or(items.len(), |i| i.max(1));
            let rest = items.split_off(split);
            // The last frame stands for the rest of the range, kept or not.
            let end = rest.first().map_or(last, |d| d.id - 1);
            metrics.frames.inc();
            frames.push(Arc::new(Frame::danmaku(items, (next, end), committed_at)));
            next = end + 1;
            items = rest;
            if items.is_empty() {
                break;
            }
        }
        Some(self.publish(frames))
    }

    /// Puts an `online` frame in the ring if the count changed.
    fn announce(&self) -> Option<Published> {
        let mut s = self.state();
        if s.viewers == s.announced {
            return None;
        }
        s.announced = s.viewers;
        Some(self.publish(vec![Arc::new(Frame::online(s.viewers))]))
    }

    /// Puts a `delete` frame in the ring at once, not waiting for the
    /// flusher: a recall is rare, and players should hide the danmaku now.
    /// A concurrent flush's pass may then meet seats out of step; those are
    /// handed back to their tasks, which read the ring in order.
    pub(super) fn recall(&self, ids: Vec<u64>) -> Published {
        let _s = self.state();
        self.publish(vec![Arc::new(Frame::delete(ids))])
    }

    /// Appends frames to the ring. Called with the room state locked, which
    /// orders publications.
    fn publish(&self, frames: Vec<Arc<Frame>>) -> Published {
        let mut ring = self.ring();
        let first = ring.end();
        for f in &frames {
            ring.push(f.clone());
        }
        Published {
            first,
            frames: frames.into(),
        }
    }

    /// Delivers published frames: written straight to every parked viewer's
    /// socket, and waking every viewer whose task waits for the ring. A big
    /// room's pass is split into tasks that run on every runtime thread.
    pub(super) async fn pass(self: &Arc<Self>, published: Published, metrics: &Arc<Metrics>) {
        let seats = self.seat_list();
        let started = Instant::now();
        if seats.len() <= PASS_CHUNK {
            serve_seats(&seats, &published, metrics);
            metrics
                .pass_seconds
                .observe(started.elapsed().as_secs_f64());
            return;
        }
        let published = Arc::new(published);
        let mut tasks = tokio::task::JoinSet::new();
        for start in (0..seats.len()).step_by(PASS_CHUNK) {
            let (seats, published, metrics) = (seats.clone(), published.clone(), metrics.clone());
            tasks.spawn(async move {
                let end = (start + PASS_CHUNK).min(seats.len());
                serve_seats(&seats[start..end], &published, &metrics);
            });
        }
        while tasks.join_next().await.is_some() {}
        metrics
            .pass_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Delivers published frames without splitting the pass (at shutdown).
    pub(super) fn pass_now(&self, published: &Published, metrics: &Metrics) {
        serve_seats(&self.seat_list(), published, metrics);
    }

    /// Runs until the room is forgotten: waits for danmaku, coalesces them
    /// for at most the window, and publishes; announces the viewer count at
    /// most once per `online_interval_ms`.
    pub(super) async fn run_flusher(
        self: Arc<Self>,
        config: FanoutConfig,
        metrics: Arc<Metrics>,
        retire: impl Fn(&Arc<Room>) -> bool,
    ) {
        let online_every = Duration::from_millis(config.online_interval_ms);
        let idle = Duration::from_secs(config.room_idle_s);
        // So that the first danmaku of a quiet room goes out at once.
        let mut last_flush = Instant::now() - config.window(usize::MAX);
        let mut last_online = Instant::now() - online_every;
        loop {
            let (pending_bytes, oldest, online_due, removed, window) = {
                let s = self.state();
                (
                    s.pending_bytes,
                    s.pending_since,
                    s.viewers != s.announced,
                    s.removed,
                    config.window(s.viewers),
                )
            };
            if removed {
                return;
            }
            let now = Instant::now();
            let mut next_wake: Option<Instant> = None;
            if oldest.is_some() {
                let due = last_flush + window;
                if now >= due || pending_bytes >= config.max_frame_bytes {
                    last_flush = now;
                    if let Some(published) = self.flush(&config, &metrics) {
                        // The next flush waits for this pass: what arrives
                        // meanwhile goes out together in the next frame.
                        self.pass(published, &metrics).await;
                    }
                    continue;
                }
                next_wake = Some(due);
            }
            if online_due {
                let due = last_online + online_every;
                if now >= due {
                    if let Some(published) = self.announce() {
                        last_online = now;
                        self.pass(published, &metrics).await;
                    }
                    continue;
                }
                next_wake = Some(next_wake.map_or(due, |w| w.min(due)));
            }
            let deadline = next_wake.unwrap_or(now + idle.max(Duration::from_secs(1)));
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if next_wake.is_none() && retire(&self) {
                        return;
                    }
                }
            }
        }
    }
}

/// Frames just put in a room's ring, for the pass that delivers them.
pub(super) struct Published {
    /// The number of the first frame.
    first: u64,
    frames: Arc<[Arc<Frame>]>,
}

/// One task's share of a pass: offers the frames to each seat, and counts
/// what was written in one go.
fn serve_seats(seats: &[Arc<Seat>], published: &Published, metrics: &Metrics) {
    let frames = &published.frames;
    let items: usize = frames.iter().map(|f| f.items().len()).sum();
    let committed_at = frames
        .iter()
        .find(|f| !f.items().is_empty())
        .map(|f| f.committed_at);
    let mut written = 0u64;
    for seat in seats {
        if seat.gone.load(Ordering::Relaxed) {
            continue;
        }
        match seat.offer(published.first, frames) {
            Written::No => {}
            Written::HandedBack { progressed } => written += u64::from(progressed),
            Written::All => {
                written += 1;
                if let (true, Some(at)) = (seat.sampled, committed_at) {
                    metrics.fanout_seconds.observe(at.elapsed().as_secs_f64());
                }
            }
        }
    }
    metrics.deliveries.inc_by(written * items as u64);
}

/// Danmaku per second over a sliding ten-second window.
#[derive(Default)]
struct RateMeter {
    /// Counts per second, indexed by second modulo the window.
    counts: [u32; 10],
    /// The unix second of the newest bucket.
    second: u64,
}

impl RateMeter {
    fn now_second() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn roll(&mut self) {
        let now = Self::now_second();
        let elapsed = now.saturating_sub(self.second);
        for i in 1..=elapsed.min(self.counts.len() as u64) {
            self.counts[((self.second + i) % self.counts.len() as u64) as usize] = 0;
        }
        self.second = now;
    }

    fn add(&mut self, n: u32) {
        self.roll();
        let slot = (self.second % self.counts.len() as u64) as usize;
        self.counts[slot] = self.counts[slot].saturating_add(n);
    }

    fn per_second(&mut self) -> f64 {
        self.roll();
        f64::from(self.counts.iter().sum::<u32>()) / self.counts.len() as f64
    }
}
