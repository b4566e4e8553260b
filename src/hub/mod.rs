//! The hub: the room registry and the fan-out to viewers.
//!
//! The hub receives committed batches from the bus, coalesces each room's
//! danmaku for a short window, encodes them once per room per flush, and
//! puts the frame in the room's ring. The room's passes then write the same
//! bytes straight to every idle viewer's socket, through a sink the
//! transport provides, and wake the viewers that are busy, which take the
//! frame from the ring themselves. The hub never touches storage, never
//! knows a wire protocol, and never parses or serialises anything per
//! viewer.

mod density;
mod frame;
mod ring;
mod room;
mod seat;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::FanoutConfig;
use crate::danmaku::Danmaku;
use crate::metrics::Metrics;

pub use frame::{encode_ws, Frame, FrameKind};
use room::PassThreads;
pub use room::{Room, RoomStats};
pub use seat::{DirectSink, Received, Unparked, Viewer};

/// Shards of the room map: enough that the store's writer and joining
/// viewers rarely wait on one another.
const SHARDS: usize = 16;

/// The order of a page of rooms ([`Hub::page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomOrder {
    /// Ascending by name, starting after this name (from the first without).
    ByName {
        /// The last name of the page before.
        after: Option<String>,
    },
    /// Most viewers first (then by name), skipping the first `skip` rooms.
    /// Counts change between pages, so pages may overlap or miss a room.
    ByOnline {
        /// Rooms of the pages before.
        skip: usize,
    },
}

/// What the hub asks of its node. The hub never touches storage or the
/// broker; when it needs either, it says so here.
pub trait HubEvents: Send + Sync + 'static {
    /// Room `room` holds danmaku back for a missing id after `after` and
    /// has waited `cluster.reorder_ms` for it (or the node asked it to
    /// catch up): read what the store holds after `after` and hand it to
    /// [`Hub::fill`]. Must not block.
    fn gap(&self, room: &str, after: u64);

    /// The hub forgot `room` (no viewers, idle): the node stops hearing it.
    fn retired(&self, room: &str);
}

/// The room registry.
pub struct Hub {
    shards: Vec<Mutex<HashMap<Arc<str>, Arc<Room>>>>,
    config: FanoutConfig,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    pass_threads: Arc<PassThreads>,
    events: std::sync::OnceLock<std::sync::Weak<dyn HubEvents>>,
}

impl Hub {
    /// A hub whose room flushers run on the current Tokio runtime.
    pub fn new(config: FanoutConfig, metrics: Arc<Metrics>) -> Arc<Hub> {
        Arc::new(Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            config,
            metrics,
            runtime: tokio::runtime::Handle::current(),
            pass_threads: Arc::new(PassThreads::new()),
            events: std::sync::OnceLock::new(),
        })
    }

    fn shard(&self, room: &str) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Room>>> {
        // FNV-1a over the name: cheap and good enough to spread rooms.
        let h = room.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        self.shards[(h % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The room, made (with its flusher) if the hub does not hold it yet.
    fn room_in<'a>(
        self: &Arc<Self>,
        shard: &'a mut HashMap<Arc<str>, Arc<Room>>,
        name: &str,
    ) -> &'a Arc<Room> {
        if !shard.contains_key(name) {
            let room = Arc::new(Room::new(name, self.config.ring_frames));
            self.metrics.rooms.inc();
            let hub = Arc::downgrade(self);
            self.runtime.spawn(room.clone().run_flusher(
                self.config,
                self.metrics.clone(),
                self.pass_threads.clone(),
                move |room| hub.upgrade().is_none_or(|hub| hub.retire(room)),
            ));
            shard.insert(room.name().into(), room);
        }
        &shard[name]
    }

    fn retire(&self, room: &Arc<Room>) -> bool {
        let mut shard = self.shard(room.name());
        let idle = Duration::from_secs(self.config.room_idle_s);
        if room.retire_if_idle(idle) {
            shard.remove(room.name());
            self.metrics.rooms.dec();
            if let Some(events) = self.events.get().and_then(std::sync::Weak::upgrade) {
                events.retired(room.name());
            }
            true
        } else {
            false
        }
    }

    /// Joins `room` as a viewer.
    pub fn join(self: &Arc<Self>, room: &str) -> Viewer {
        let mut shard = self.shard(room);
        self.room_in(&mut shard, room).join()
    }

    /// The figures of one room, if the hub holds it.
    pub fn stats(&self, room: &str) -> Option<RoomStats> {
        self.shard(room).get(room).map(|r| r.stats())
    }

    /// One page of the rooms the hub holds, at most `limit` of them in
    /// `order`, and whether more follow it.
    ///
    /// By name, a page holds the rooms whose names follow `after`, so
    /// paging by the last name returned lists every room held throughout
    /// exactly once, however rooms come and go meanwhile. Only the page's
    /// rooms are locked for their figures.
    pub fn page(&self, order: &RoomOrder, limit: usize) -> (Vec<RoomStats>, bool) {
        match order {
            RoomOrder::ByName { after } => {
                let mut rooms = self.rooms_where(|name| after.as_deref().is_none_or(|a| name > a));
                let more = rooms.len() > limit;
                if more {
                    rooms.select_nth_unstable_by(limit, |a, b| a.name().cmp(b.name()));
                    rooms.truncate(limit);
                }
                rooms.sort_unstable_by(|a, b| a.name().cmp(b.name()));
                (rooms.iter().map(|r| r.stats()).collect(), more)
            }
            RoomOrder::ByOnline { skip } => {
                let mut stats: Vec<RoomStats> = self
                    .rooms_where(|_| true)
                    .iter()
                    .map(|r| r.stats())
                    .collect();
                stats.sort_by(|a, b| b.online.cmp(&a.online).then_with(|| a.room.cmp(&b.room)));
                let more = stats.len() > skip.saturating_add(limit);
                let page = stats.into_iter().skip(*skip).take(limit).collect();
                (page, more)
            }
        }
    }

    /// The rooms whose names pass `keep`, each shard locked in turn.
    fn rooms_where(&self, keep: impl Fn(&str) -> bool) -> Vec<Arc<Room>> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .filter(|(name, _)| keep(name))
                    .map(|(_, room)| room.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Tells the hub what to call when a room needs the store or retires.
    /// Set once, right after the hub is made; before it, gaps are not
    /// filled and retirements are not told.
    pub fn set_events(&self, events: std::sync::Weak<dyn HubEvents>) {
        let _ = self.events.set(events);
    }

    /// Hands `room` what the store holds after `after`, up to and including
    /// `upto`: `items`, ascending. An id in `(after, upto]` missing from
    /// `items` was recalled: the room steps over it.
    pub fn fill(self: &Arc<Self>, room: &str, after: u64, upto: u64, items: &[Danmaku]) {
        // Stub until the hub reorders: deliver what is new.
        let _ = (room, after, upto);
        self.deliver(items);
    }

    /// The other nodes' viewer counts, by room (a room left out has none
    /// elsewhere). Each room's `online` is its own viewers plus these.
    pub fn set_remote_online(&self, remote: &std::collections::HashMap<String, u64>) {
        let _ = remote;
    }

    /// This node's own viewers, by room (rooms without any left out).
    pub fn local_online(&self) -> std::collections::HashMap<String, u64> {
        self.rooms_where(|_| true)
            .iter()
            .map(|r| r.stats())
            .filter(|s| s.online > 0)
            .map(|s| (s.room, s.online as u64))
            .collect()
    }

    /// Asks every room to catch up from the store ([`HubEvents::gap`]
    /// after its newest released id): the broker was away, and whatever it
    /// carried meanwhile may be lost.
    pub fn catch_up_all(&self) {
        let Some(events) = self.events.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        for room in self.rooms_where(|_| true) {
            if let Some(last) = room.stats().last_id {
                events.gap(room.name(), last);
            }
        }
    }

    /// Tells the viewers of `room` to hide recalled danmaku. A room the
    /// hub does not hold has no viewers to tell.
    pub fn recall(&self, room: &str, ids: Vec<u64>) {
        let Some(room) = self.shard(room).get(room).cloned() else {
            return;
        };
        room.recall(ids);
    }

    /// Publishes everything pending in every room now, without waiting for
    /// the coalescing window. Used at shutdown, after the store has handed
    /// over its last batch.
    pub fn flush_all(&self) {
        for shard in &self.shards {
            let rooms: Vec<Arc<Room>> = shard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect();
            for room in rooms {
                room.flush(&self.config, &self.metrics);
                room.pass_now(&self.config, &self.metrics);
            }
        }
    }
}

impl Hub {
    /// Takes a committed batch, ascending by id within each room. Never
    /// blocks: it is called on the store's writer or a broker's reader.
    pub fn deliver(self: &Arc<Self>, batch: &[Danmaku]) {
        let committed_at = Instant::now();
        // A batch is ascending by id within each room but may mix rooms:
        // hand each room its run, in order.
        let mut start = 0;
        while start < batch.len() {
            let room = &batch[start].room;
            let end = batch[start..]
                .iter()
                .position(|d| &d.room != room)
                .map_or(batch.len(), |n| start + n);
            // Pushed with the shard locked, so the room cannot be retired
            // between being found and receiving the batch.
            let mut shard = self.shard(room);
            self.room_in(&mut shard, room)
                .push(&batch[start..end], committed_at);
            start = end;
        }
    }
}
