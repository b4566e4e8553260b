//! A room: its ring of recent frames, its pending danmaku, its viewers'
//! seats and its flusher.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use super::density::Density;
use super::frame::Frame;
use super::ring::{Ring, Slot, Tail};
use super::seat::{Seat, Viewer};
use crate::config::FanoutConfig;
use crate::danmaku::Danmaku;
use crate::metrics::Metrics;

/// Rough JSON size of a danmaku beyond its text, for the frame-size trigger.
const ITEM_OVERHEAD: usize = 160;

/// A pass over at most this many seats (about a millisecond of writes)
/// runs on the flusher's task. A bigger one runs on blocking threads, one
/// part per core: tens of milliseconds of writes on a runtime thread would
/// hold up every socket, timer and acknowledgement queued behind them,
/// while the kernel time-slices a thread of its own.
const INLINE_PASS_SEATS: usize = 128;

/// The threads that write big rooms' passes, shared by every room: one per
/// core, however many rooms are hot at once.
pub(super) struct PassThreads {
    permits: Semaphore,
    cores: usize,
}

impl PassThreads {
    pub(super) fn new() -> PassThreads {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        PassThreads {
            permits: Semaphore::new(cores),
            cores,
        }
    }
}

/// A pass checks whether the room's pending danmaku are due after this many
/// seats (about half a millisecond of writes).
const FLUSH_CHECK_SEATS: usize = 64;

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
    /// The ring's end (the number the next frame gets), readable without
    /// its lock: a pass reads it at every seat.
    ring_end: AtomicU64,
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
    /// When the pending danmaku were last published; none yet: at once.
    last_flush: Option<Instant>,
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
            ring_end: AtomicU64::new(0),
            seats: Mutex::new(Seats {
                all: Vec::new(),
                snapshot: None,
            }),
            state: Mutex::new(RoomState {
                pending: Vec::new(),
                pending_bytes: 0,
                pending_since: None,
                last_flush: None,
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

    /// The ring, for a pass's [`Tail`] to copy from.
    pub(super) fn ring_lock(&self) -> &Mutex<Ring> {
        &self.ring
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
        self.ring_end.load(Ordering::SeqCst)
    }

    /// Whether a viewer whose next frame is number `next`, and who has
    /// every danmaku up to id `settled`, has nothing left to take: `next`
    /// is the ring's end, and no frame still to come can hold an id at or
    /// below `settled`. Both are read under the ring's lock, which orders
    /// publications, so a frame pushed after this answer starts above both.
    pub(super) fn is_level(&self, next: u64, settled: u64) -> bool {
        let ring = self.ring();
        next == ring.end() && ring.last_id() >= settled
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
    /// puts them in the ring, for the next pass to deliver; returns whether
    /// there was anything. Encoding happens under the room lock so that two
    /// flushes can never publish out of id order.
    /// With density control on, a hot room's frames keep only what its
    /// viewers can read; each frame still stands for its whole id range.
    pub(super) fn flush(&self, config: &FanoutConfig, metrics: &Metrics) -> bool {
        let max_frame_bytes = config.max_frame_bytes;
        let mut s = self.state();
        let Some(committed_at) = s.pending_since.take() else {
            return false;
        };
        let mut items = std::mem::take(&mut s.pending);
        s.pending_bytes = 0;
        // Pending danmaku are contiguous: the frames cover this whole range.
        let (Some(first), Some(last)) = (items.first(), items.last()) else {
            return false;
        };
        let (first, last) = (first.id, last.id);
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
        self.publish(frames);
        true
    }

    /// Publishes the pending danmaku if they are due: the room's window has
    /// passed since the last flush, or they fill a frame. Otherwise returns
    /// when they will be due (none: nothing is pending, or it was just
    /// published). Both the flusher and a running pass call it, so a hot
    /// room's frames keep coming while a long pass holds the runtime.
    pub(super) fn flush_when_due(
        &self,
        config: &FanoutConfig,
        metrics: &Metrics,
    ) -> Option<Instant> {
        let mut s = self.state();
        s.pending_since?;
        let now = Instant::now();
        let due = s
            .last_flush
            .map_or(now, |last| last + config.window(s.viewers));
        if now < due && s.pending_bytes < config.max_frame_bytes {
            return Some(due);
        }
        s.last_flush = Some(now);
        drop(s);
        self.flush(config, metrics);
        None
    }

    /// Puts an `online` frame in the ring if the count changed.
    fn announce(&self) -> bool {
        let mut s = self.state();
        if s.viewers == s.announced {
            return false;
        }
        s.announced = s.viewers;
        self.publish(vec![Arc::new(Frame::online(s.viewers))]);
        true
    }

    /// Puts a `delete` frame in the ring at once, not waiting for the
    /// coalescing window: a recall is rare, and players should hide the
    /// danmaku now. The flusher's next pass delivers it.
    pub(super) fn recall(&self, ids: Vec<u64>) {
        let s = self.state();
        self.publish(vec![Arc::new(Frame::delete(ids))]);
        drop(s);
        self.wake.notify_one();
    }

    /// Appends frames to the ring. Called with the room state locked, which
    /// orders publications.
    fn publish(&self, frames: Vec<Arc<Frame>>) {
        let mut ring = self.ring();
        for f in frames {
            ring.push(f);
        }
        self.ring_end.store(ring.end(), Ordering::SeqCst);
    }

    /// Delivers what the ring holds past each seat's place: written straight
    /// to every parked viewer's socket, and waking every viewer whose task
    /// waits for the ring. Each seat gets what the ring holds when the pass
    /// reaches it, so a frame published during a pass still reaches the
    /// seats the pass has not reached yet. Afterwards the ring forgets the
    /// frames every viewer has taken: a room's history is the store's to
    /// keep, and 2,000 quiet rooms holding 256 frames each came to hundreds
    /// of megabytes.
    pub(super) async fn pass(
        self: Arc<Self>,
        config: FanoutConfig,
        metrics: Arc<Metrics>,
        threads: Arc<PassThreads>,
    ) {
        // Read before the seats: a viewer that joins after this pass took
        // its list starts at this end or later.
        let end = self.ring_end();
        let seats = self.seat_list();
        let started = Instant::now();
        let mut needed = end;
        if seats.len() <= INLINE_PASS_SEATS {
            needed = needed.min(serve_seats(&self, &seats, &config, &metrics));
        } else {
            let parts = threads.cores.min(seats.len().div_ceil(INLINE_PASS_SEATS));
            // One permit per part: no more parts write than there are cores.
            let Ok(_permits) = threads.permits.acquire_many(parts as u32).await else {
                return;
            };
            let part = seats.len().div_ceil(parts);
            let mut tasks = tokio::task::JoinSet::new();
            for start in (0..seats.len()).step_by(part) {
                let (room, seats, metrics) = (self.clone(), seats.clone(), metrics.clone());
                tasks.spawn_blocking(move || {
                    let end = (start + part).min(seats.len());
                    serve_seats(&room, &seats[start..end], &config, &metrics)
                });
            }
            while let Some(part_needed) = tasks.join_next().await {
                // A part that panicked reports nothing: keep every frame.
                needed = needed.min(part_needed.unwrap_or(0));
            }
        }
        self.ring().release_before(needed);
        metrics
            .pass_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// A whole pass on this thread, not waiting for the flusher (at
    /// shutdown).
    pub(super) fn pass_now(&self, config: &FanoutConfig, metrics: &Metrics) {
        serve_seats(self, &self.seat_list(), config, metrics);
    }

    /// Runs until the room is forgotten: waits for danmaku, coalesces them
    /// for at most the window, and publishes; announces the viewer count at
    /// most once per `online_interval_ms`; and keeps one pass running while
    /// the ring holds frames some seat has not been offered.
    ///
    /// Flushes do not wait for the pass: a pass over 10,000 viewers takes
    /// tens of milliseconds, and a frame published meanwhile reaches the
    /// seats that pass has yet to visit, and the others in the next pass.
    /// A danmaku then waits at most one pass for any viewer, not two.
    pub(super) async fn run_flusher(
        self: Arc<Self>,
        config: FanoutConfig,
        metrics: Arc<Metrics>,
        threads: Arc<PassThreads>,
        retire: impl Fn(&Arc<Room>) -> bool,
    ) {
        let online_every = Duration::from_millis(config.online_interval_ms);
        let idle = Duration::from_secs(config.room_idle_s);
        // The first announcement is due at once. Checked: on some platforms
        // an Instant cannot go back past boot (then it waits one interval).
        let mut last_online = Instant::now()
            .checked_sub(online_every)
            .unwrap_or_else(Instant::now);
        // The running pass, and the ring's end when it started: every seat
        // it visits gets at least everything before that.
        let mut pass: Option<tokio::task::JoinHandle<()>> = None;
        let mut passed_to = self.ring_end();
        loop {
            let (online_due, removed) = {
                let s = self.state();
                (s.viewers != s.announced, s.removed)
            };
            if removed {
                return;
            }
            let mut next_wake = self.flush_when_due(&config, &metrics);
            let now = Instant::now();
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
            if pass.is_none() && self.ring_end() > passed_to {
                passed_to = self.ring_end();
                pass = Some(tokio::spawn(self.clone().pass(
                    config,
                    metrics.clone(),
                    threads.clone(),
                )));
            }
            let deadline = next_wake.unwrap_or(now + idle.max(Duration::from_secs(1)));
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = async { pass.as_mut().expect("checked").await }, if pass.is_some() => {
                    pass = None;
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if next_wake.is_none() && pass.is_none() && retire(&self) {
                        return;
                    }
                }
            }
        }
    }
}

/// One task's share of a pass: serves each seat, and counts the danmaku
/// taken for viewers in one go. Publishes the room's pending danmaku when
/// they fall due on the way: waiting for the flusher's turn on a busy
/// runtime would hold them until the pass ends. Returns the oldest frame
/// any of these viewers still needed.
fn serve_seats(room: &Room, seats: &[Arc<Seat>], config: &FanoutConfig, metrics: &Metrics) -> u64 {
    let mut tail = Tail::default();
    let mut delivered = 0u64;
    let mut needed = u64::MAX;
    for (i, seat) in seats.iter().enumerate() {
        if i % FLUSH_CHECK_SEATS == FLUSH_CHECK_SEATS - 1 {
            room.flush_when_due(config, metrics);
        }
        if seat.gone.load(Ordering::Relaxed) {
            continue;
        }
        let Some(taken) = seat.serve(room, &mut tail, &mut needed) else {
            continue;
        };
        for frame in tail.get(taken) {
            delivered += frame.items().len() as u64;
            if seat.sampled && !frame.items().is_empty() {
                let latency = frame.committed_at.elapsed().as_secs_f64();
                metrics.fanout_seconds.observe(latency);
            }
        }
    }
    metrics.deliveries.inc_by(delivered);
    needed
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
