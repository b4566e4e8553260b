//! A room: its ring of recent frames, its pending danmaku and its flusher.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, Notify};

use super::frame::Frame;
use crate::config::FanoutConfig;
use crate::danmaku::Danmaku;
use crate::metrics::Metrics;

/// Rough JSON size of a danmaku beyond its text, for the frame-size trigger.
const ITEM_OVERHEAD: usize = 160;

/// A room's shared state. Viewers hold it through a [`Viewer`].
pub struct Room {
    name: Arc<str>,
    /// The room's ring: the last `ring_frames` frames. Each viewer's
    /// receiver is a cursor into it, so a room costs O(ring) memory and each
    /// viewer O(1), however far behind it is.
    ring: broadcast::Sender<Arc<Frame>>,
    state: Mutex<RoomState>,
    /// Wakes the flusher: danmaku arrived, or the viewer count changed.
    wake: Notify,
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
            ring: broadcast::channel(ring_frames).0,
            state: Mutex::new(RoomState {
                pending: Vec::new(),
                pending_bytes: 0,
                pending_since: None,
                viewers: 0,
                announced: 0,
                last_id: None,
                rate: RateMeter::default(),
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

    /// Registers a viewer; called with the hub's shard locked so the room
    /// cannot be forgotten in between.
    pub(super) fn join(self: &Arc<Self>) -> Viewer {
        let mut s = self.state();
        s.viewers += 1;
        let rx = self.ring.subscribe();
        drop(s);
        self.wake.notify_one();
        Viewer {
            room: self.clone(),
            rx,
        }
    }

    fn leave(&self) {
        let mut s = self.state();
        s.viewers -= 1;
        s.last_activity = Instant::now();
        drop(s);
        self.wake.notify_one();
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

    /// Encodes and publishes what is pending, in frames of at most
    /// `max_frame_bytes`. Encoding happens under the room lock so that two
    /// flushes can never publish out of id order.
    pub(super) fn flush(&self, max_frame_bytes: usize, metrics: &Metrics) {
        let mut s = self.state();
        let Some(committed_at) = s.pending_since.take() else {
            return;
        };
        let mut items = std::mem::take(&mut s.pending);
        s.pending_bytes = 0;
        while !items.is_empty() {
            let mut bytes = 0;
            let split = items
                .iter()
                .position(|d| {
                    bytes += d.text.len() + ITEM_OVERHEAD;
                    bytes > max_frame_bytes
                })
                .map_or(items.len(), |i| i.max(1));
            let rest = items.split_off(split);
            metrics.frames.inc();
            // No receivers is fine: nobody watches right now.
            let _ = self
                .ring
                .send(Arc::new(Frame::danmaku(items, committed_at)));
            items = rest;
        }
    }

    /// Publishes an `online` frame if the count changed; returns whether it did.
    fn announce(&self) -> bool {
        let mut s = self.state();
        if s.viewers == s.announced {
            return false;
        }
        s.announced = s.viewers;
        let _ = self.ring.send(Arc::new(Frame::online(s.viewers)));
        true
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
        let window = config.coalesce();
        let online_every = Duration::from_millis(config.online_interval_ms);
        let idle = Duration::from_secs(config.room_idle_s);
        // So that the first danmaku of a quiet room goes out at once.
        let mut last_flush = Instant::now() - window;
        let mut last_online = Instant::now() - online_every;
        loop {
            let (pending_bytes, oldest, online_due, removed) = {
                let s = self.state();
                (
                    s.pending_bytes,
                    s.pending_since,
                    s.viewers != s.announced,
                    s.removed,
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
                    self.flush(config.max_frame_bytes, &metrics);
                    last_flush = now;
                    continue;
                }
                next_wake = Some(due);
            }
            if online_due {
                let due = last_online + online_every;
                if now >= due {
                    if self.announce() {
                        last_online = now;
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

/// A viewer's place in a room: a cursor into the ring. Dropping it leaves
/// the room.
pub struct Viewer {
    room: Arc<Room>,
    rx: broadcast::Receiver<Arc<Frame>>,
}

/// What a viewer's receiver found.
#[derive(Debug)]
pub enum Received {
    /// The next frame.
    Frame(Arc<Frame>),
    /// The viewer fell behind the ring by this many frames, which are gone.
    Lagged(u64),
}

impl Viewer {
    /// The room watched.
    pub fn room(&self) -> &Arc<Room> {
        &self.room
    }

    /// Waits for the next frame. Cancel-safe.
    pub async fn recv(&mut self) -> Received {
        loop {
            match self.rx.recv().await {
                Ok(f) => return Received::Frame(f),
                Err(broadcast::error::RecvError::Lagged(n)) => return Received::Lagged(n),
                // The room owns the sender and the viewer owns the room, so
                // the ring cannot close while the viewer exists.
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }

    /// The next frame if one is ready.
    pub fn try_recv(&mut self) -> Option<Received> {
        match self.rx.try_recv() {
            Ok(f) => Some(Received::Frame(f)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Received::Lagged(n)),
            Err(_) => None,
        }
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.room.leave();
    }
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
