//! A room: its ring of recent frames, its pending danmaku, its viewers'
//! seats and its flusher.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::density::Density;
use super::frame::Frame;
use super::reorder::{count_within, Pending, Reorder, ITEM_OVERHEAD};
use super::ring::{Ring, Slot, Tail};
use super::seat::{Seat, Viewer};
use crate::config::FanoutConfig;
use crate::danmaku::Danmaku;
use crate::metrics::Metrics;

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
    /// Wakes the flusher: danmaku arrived, a gap opened, or the viewer
    /// count changed.
    wake: Notify,
}

/// The viewers' seats, and the list a flusher's pass walks.
struct Seats {
    all: Vec<Arc<Seat>>,
    /// `all` as of the last pass; rebuilt when viewers came or went.
    snapshot: Option<Arc<[Arc<Seat>]>>,
}

struct RoomState {
    /// Released danmaku waiting for the next frame.
    pending: Pending,
    /// Which ids the room has released, and those it holds back.
    order: Reorder,
    /// When the pending danmaku were last published; none yet: at once.
    last_flush: Option<Instant>,
    /// Viewers on this node.
    viewers: usize,
    /// Viewers on the other nodes, as presence last said.
    remote: usize,
    /// The count last announced in an `online` frame.
    announced: usize,
    /// The lowest and highest counts viewers were greeted with (their
    /// `hello`) since that announcement: every viewer must end up told the
    /// current count, also one greeted with a count that came back since.
    greeted: Option<(usize, usize)>,
    rate: RateMeter,
    density: Density,
    last_activity: Instant,
    /// Set when the hub forgets the room; a flusher that sees it exits.
    removed: bool,
    /// One of the hub's catch-up permits, held from the room's first
    /// catch-up ask until the store answers it.
    catch_up: Option<OwnedSemaphorePermit>,
}

/// A room's figures, for the rooms API.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RoomStats {
    /// The room name.
    pub room: String,
    /// Viewers in the cluster: this node's and, as presence last said, the
    /// other nodes'.
    pub online: usize,
    /// Viewers connected to this node.
    pub online_local: usize,
    /// The newest id the room has handed to its viewers, if any yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_id: Option<u64>,
    /// Danmaku per second over the last ten seconds.
    pub rate_per_s: f64,
}

impl RoomState {
    /// Runs `op` on the release order and the pending list, and counts
    /// what it released in the rate (a duplicate or a held danmaku is not
    /// news).
    fn reorder<R>(&mut self, op: impl FnOnce(&mut Reorder, &mut Pending) -> R) -> R {
        let before = self.pending.items.len();
        let result = op(&mut self.order, &mut self.pending);
        let released = self.pending.items.len().saturating_sub(before);
        self.rate.add(u32::try_from(released).unwrap_or(u32::MAX));
        result
    }

    /// Viewers in the cluster.
    fn online(&self) -> usize {
        self.viewers.saturating_add(self.remote)
    }

    /// Whether some viewer may not know the current count: it differs from
    /// the last announcement, or from a count a viewer was greeted with
    /// since (6 announced, then 5 at a viewer's hello, then 6 again: that
    /// viewer was told 5 and nobody else was told anything).
    fn online_due(&self) -> bool {
        let now = self.online();
        now != self.announced || self.greeted.is_some_and(|(lo, hi)| lo != now || hi != now)
    }
}

impl Room {
    /// A room of at most `config.ring_frames` frames that holds a danmaku
    /// back for at most `reorder` waiting for the ids before it, and skips
    /// ahead past a gap longer than its ring holds.
    pub(super) fn new(name: &str, config: &FanoutConfig, reorder: Duration) -> Room {
        // An upper bound on the ids the ring holds: frames of danmaku with
        // no text at all.
        let per_frame = (config.max_frame_bytes / ITEM_OVERHEAD).max(1);
        let span = u64::try_from(config.ring_frames.saturating_mul(per_frame)).unwrap_or(u64::MAX);
        Room {
            name: name.into(),
            ring: Mutex::new(Ring::new(config.ring_frames)),
            ring_end: AtomicU64::new(0),
            seats: Mutex::new(Seats {
                all: Vec::new(),
                snapshot: None,
            }),
            state: Mutex::new(RoomState {
                pending: Pending::new(),
                order: Reorder::new(reorder, span),
                last_flush: None,
                viewers: 0,
                remote: 0,
                announced: 0,
                greeted: None,
                rate: RateMeter::default(),
                density: Density::default(),
                last_activity: Instant::now(),
                removed: false,
                catch_up: None,
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

    /// Takes a run of committed danmaku, ascending by id, that reached the
    /// hub at `committed_at`: those that follow what the room released go
    /// to the next frame, later ones wait for the ids before them, and ids
    /// already released are dropped.
    pub(super) fn push(&self, items: &[Danmaku], committed_at: Instant) {
        let mut s = self.state();
        s.reorder(|order, pending| order.push(items, committed_at, pending));
        s.last_activity = Instant::now();
        self.wake.notify_one();
    }

    /// What the store holds after `after`, up to and including `upto`:
    /// `items`, ascending. Ids in that range it lacks were recalled: the
    /// room steps over them, and releases what it held back behind them.
    pub(super) fn fill(&self, after: u64, upto: u64, items: &[Danmaku]) {
        let now = Instant::now();
        self.state()
            .reorder(|order, pending| order.fill(after, upto, items, now, pending));
        self.wake.notify_one();
    }

    /// Where a gap read asked after `after` should start, the store's
    /// newest id being `newest` (the room may skip ahead first); none if
    /// nobody watches the room here any more (nobody needs the read).
    pub(super) fn read_from(&self, after: u64, newest: u64) -> Option<u64> {
        let mut s = self.state();
        if s.viewers == 0 {
            return None;
        }
        let from = s.reorder(|order, pending| order.read_from(after, newest, pending));
        drop(s);
        self.wake.notify_one();
        Some(from)
    }

    /// Makes the room hear from the store what follows what it released
    /// (if it has viewers here): asked by its flusher, with one of the
    /// hub's catch-up permits, and again until the store answers.
    pub(super) fn catch_up(&self) {
        self.state().order.catch_up(Instant::now());
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
    /// cannot be forgotten in between. Its `hello` takes the room's figures
    /// from [`Room::greet`].
    pub(super) fn join(self: &Arc<Self>) -> Viewer {
        let mut s = self.state();
        s.viewers += 1;
        if s.viewers == 1 {
            s.reorder(|order, pending| order.set_watched(true, pending));
        }
        drop(s);
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
        if s.viewers == 0 {
            // Nobody here waits for missing ids: what is held goes on now.
            s.reorder(|order, pending| order.set_watched(false, pending));
            s.catch_up = None;
        }
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
        Self::figures(&self.name, &mut self.state())
    }

    fn figures(name: &str, s: &mut RoomState) -> RoomStats {
        RoomStats {
            room: name.to_owned(),
            online: s.online(),
            online_local: s.viewers,
            last_id: s.order.released(),
            rate_per_s: s.rate.per_second(),
        }
    }

    /// The room's figures for a viewer's `hello`. The room remembers the
    /// count it was greeted with, and announces the current count if that
    /// one differs (even if the count came back to what it last announced).
    pub fn greet(&self) -> RoomStats {
        let mut s = self.state();
        let online = s.online();
        s.greeted = Some(s.greeted.map_or((online, online), |(lo, hi)| {
            (lo.min(online), hi.max(online))
        }));
        let stats = Self::figures(&self.name, &mut s);
        drop(s);
        self.wake.notify_one();
        stats
    }

    /// The room's newest id as the store knows it, read for a viewer that
    /// just joined (and is counted). A room that has released nothing yet
    /// holds what reaches it until this comes (or its reorder window
    /// passes), then starts there and releases what follows. Past what it
    /// released, a room that others here watch asks its node for the ids
    /// between (they must not miss them); one that only this viewer
    /// watches starts there.
    pub fn seed_last_id(&self, id: u64) {
        let now = Instant::now();
        let mut s = self.state();
        let shared = s.viewers > 1;
        s.reorder(|order, pending| order.seed(id, shared, now, pending));
        drop(s);
        self.wake.notify_one();
    }

    /// The viewers of this room on the other nodes. A change is announced
    /// like a local one.
    pub(super) fn set_remote(&self, remote: usize) {
        let mut s = self.state();
        if s.remote != remote {
            s.remote = remote;
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Forgets the room if nobody watches it and nothing happened for
    /// `idle`. Called with the hub's shard locked.
    pub(super) fn retire_if_idle(&self, idle: Duration) -> bool {
        let mut s = self.state();
        let retire =
            s.viewers == 0 && s.pending.items.is_empty() && s.last_activity.elapsed() >= idle;
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
        let Some(committed_at) = s.pending.since.take() else {
            return false;
        };
        let mut items = std::mem::take(&mut s.pending.items);
        s.pending.bytes = 0;
        // The frames stand for every id after the last frame's up to the
        // newest released: those released, and those stepped over.
        let (Some(first), Some(last)) = (items.first(), items.last()) else {
            return false;
        };
        let recalled = std::mem::take(&mut s.pending.recalled);
        let first = s.pending.after.saturating_add(1).min(first.id);
        let last = s.order.released().unwrap_or(last.id).max(last.id);
        s.pending.after = last;
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
            let gone = count_within(&recalled, next, end);
            frames.push(Arc::new(Frame::danmaku(
                items,
                (next, end),
                gone,
                committed_at,
            )));
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
        s.pending.since?;
        let now = Instant::now();
        let due = s
            .last_flush
            .map_or(now, |last| last + config.window(s.viewers));
        if now < due && s.pending.bytes < config.max_frame_bytes {
            return Some(due);
        }
        s.last_flush = Some(now);
        drop(s);
        self.flush(config, metrics);
        None
    }

    /// Puts an `online` frame in the ring if some viewer may not know the
    /// count ([`RoomState::online_due`]).
    fn announce(&self) -> bool {
        let mut s = self.state();
        if !s.online_due() {
            return false;
        }
        s.announced = s.online();
        s.greeted = None;
        self.publish(vec![Arc::new(Frame::online(s.announced))]);
        true
    }

    /// Danmaku `ids` were recalled: those not yet in a frame never will
    /// be (pending, held back, or not heard yet: the recall may come from
    /// another node before the commit), and a `delete` frame goes in the
    /// ring at once, not waiting for the coalescing window, for viewers
    /// that were shown one already: a recall is rare, and players should
    /// hide the danmaku now. The flusher's next pass delivers it.
    pub(super) fn recall(&self, ids: Vec<u64>) {
        let now = Instant::now();
        let mut s = self.state();
        s.reorder(|order, pending| order.recall(&ids, now, pending));
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
    /// most once per `online_interval_ms`; asks `gap(room, released)` when
    /// a danmaku held back for a missing id has waited `cluster.reorder_ms`
    /// (a catch-up only with one of the `catch_ups` permits, so that a node
    /// with thousands of rooms does not queue thousands of store reads at
    /// once); and keeps one pass running while the ring holds frames some
    /// seat has not been offered.
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
        catch_ups: Arc<Semaphore>,
        retire: impl Fn(&Arc<Room>) -> bool,
        gap: impl Fn(&str, u64),
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
            let (online_due, removed, (ask, gap_wake), wants_permit) = {
                let mut s = self.state();
                // A catch-up asks only with a permit, kept until the store
                // answered it.
                if !s.order.catching_up() {
                    s.catch_up = None;
                } else if s.catch_up.is_none() {
                    s.catch_up = catch_ups.clone().try_acquire_owned().ok();
                }
                let wants_permit = s.order.catching_up() && s.catch_up.is_none();
                let gap = if wants_permit {
                    (None, None)
                } else {
                    let now = Instant::now();
                    s.reorder(|order, pending| order.poll_gap(now, pending))
                };
                (s.online_due(), s.removed, gap, wants_permit)
            };
            if removed {
                return;
            }
            if let Some(after) = ask {
                gap(&self.name, after);
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
            // A gap's next ask wakes the flusher too, but does not keep an
            // unwatched room from retiring: nobody here needs those ids.
            let deadline = [next_wake, gap_wake]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + idle.max(Duration::from_secs(1)));
            tokio::select! {
                _ = self.wake.notified() => {}
                permit = async { catch_ups.clone().acquire_owned().await }, if wants_permit => {
                    if let Ok(permit) = permit {
                        self.state().catch_up = Some(permit);
                    }
                }
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
