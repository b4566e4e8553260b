//! The hub: the room registry and the fan-out to viewers.
//!
//! The hub receives committed batches from this node's store and from the
//! bus, releases each watched room's danmaku strictly in id order (holding
//! back those that come early, and asking its node to read a gap from the
//! store when one outlives `cluster.reorder_ms`), coalesces them for a
//! short window, encodes them once per room per flush, and
//! puts the frame in the room's ring. The room's passes then write the same
//! bytes straight to every idle viewer's socket, through a sink the
//! transport provides, and wake the viewers that are busy, which take the
//! frame from the ring themselves. The hub never touches storage, never
//! knows a wire protocol, and never parses or serialises anything per
//! viewer.

mod density;
mod frame;
mod reorder;
mod ring;
mod room;
mod seat;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::config::FanoutConfig;
use crate::danmaku::Danmaku;
use crate::metrics::Metrics;

pub use frame::{encode_ws, BiliWire, Frame, FrameKind};
use room::PassThreads;
pub use room::{Room, RoomStats};
pub use seat::{DirectSink, Received, Unparked, Viewer};

/// Shards of the room map: enough that the store's writer and joining
/// viewers rarely wait on one another.
const SHARDS: usize = 16;

/// Rooms whose catch-up read ([`Hub::catch_up_all`]) may be out at once:
/// after a broker outage a node with thousands of rooms must not queue
/// thousands of store reads ahead of a joining viewer's.
const CATCH_UP_READS: usize = 32;

/// What the hub asks of its node. The hub never touches storage or the
/// broker; when it needs either, it says so here.
pub trait HubEvents: Send + Sync + 'static {
    /// Room `room`, watched on this node, misses ids after `after`, its
    /// newest released id: a danmaku held back for one has waited
    /// `cluster.reorder_ms`, its held-back buffer is full, a viewer joined
    /// with a newer id from the store, or it catches up
    /// ([`Hub::catch_up_all`]). Asked once; again only if the gap is still
    /// there a window later, then two, … up to 5 s, so a read that fails
    /// needs no retry of its own. Read the store's newest id, ask
    /// [`Hub::read_from`] where to start, read what the store holds after
    /// that and hand it to [`Hub::fill`], with `upto` the store's newest
    /// id also when nothing is new (that answers a catch-up). Called from
    /// the room's flusher with no lock held; must not block.
    fn gap(&self, room: &str, after: u64);

    /// The hub forgot `room` (no viewers, idle): the node stops hearing it.
    /// Called with the room's shard locked, so that a viewer joining the
    /// room anew (which makes it again) comes after it. Must not block and
    /// must not call the hub.
    fn retired(&self, room: &str);
}

/// The room registry.
pub struct Hub {
    shards: Vec<Mutex<HashMap<Arc<str>, Arc<Room>>>>,
    config: FanoutConfig,
    /// How long a room holds a danmaku back for the ids before it.
    reorder: Duration,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    pass_threads: Arc<PassThreads>,
    /// Permits for rooms' catch-up reads, [`CATCH_UP_READS`] of them.
    catch_ups: Arc<Semaphore>,
    events: OnceLock<Weak<dyn HubEvents>>,
}

impl Hub {
    /// A hub whose room flushers run on the current Tokio runtime, and
    /// whose rooms hold a danmaku back for at most `reorder`
    /// (`cluster.reorder_ms`) waiting for the ids before it.
    pub fn new(config: FanoutConfig, reorder: Duration, metrics: Arc<Metrics>) -> Arc<Hub> {
        Arc::new(Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            config,
            reorder,
            metrics,
            runtime: tokio::runtime::Handle::current(),
            pass_threads: Arc::new(PassThreads::new()),
            catch_ups: Arc::new(Semaphore::new(CATCH_UP_READS)),
            events: OnceLock::new(),
        })
    }

    /// What the node asked to be told, while it lives.
    fn events(&self) -> Option<Arc<dyn HubEvents>> {
        self.events.get().and_then(Weak::upgrade)
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
            let room = Arc::new(Room::new(name, &self.config, self.reorder));
            self.metrics.rooms.inc();
            let (hub, asker) = (Arc::downgrade(self), Arc::downgrade(self));
            self.runtime.spawn(room.clone().run_flusher(
                self.config,
                self.metrics.clone(),
                self.pass_threads.clone(),
                self.catch_ups.clone(),
                move |room| hub.upgrade().is_none_or(|hub| hub.retire(room)),
                move |room, after| {
                    if let Some(events) = asker.upgrade().and_then(|hub| hub.events()) {
                        events.gap(room, after);
                    }
                },
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
            if let Some(events) = self.events() {
                events.retired(room.name());
            }
            true
        } else {
            false
        }
    }

    /// Joins `room` as a viewer. Its `hello` takes the room's figures from
    /// [`Room::greet`].
    pub fn join(self: &Arc<Self>, room: &str) -> Viewer {
        let mut shard = self.shard(room);
        self.room_in(&mut shard, room).join()
    }

    /// The figures of one room, if the hub holds it.
    pub fn stats(&self, room: &str) -> Option<RoomStats> {
        self.shard(room).get(room).map(|r| r.stats())
    }

    /// The figures of the rooms the hub holds whose names pass `keep`
    /// (rooms with viewers here or recent sends). Only those rooms are
    /// locked for their figures.
    pub fn figures(&self, keep: impl Fn(&str) -> bool) -> Vec<RoomStats> {
        self.rooms_where(keep).iter().map(|r| r.stats()).collect()
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
    pub fn set_events(&self, events: Weak<dyn HubEvents>) {
        let _ = self.events.set(events);
    }

    /// Where the node should read a gap of `room` asked after `after`
    /// ([`HubEvents::gap`]), the store's newest id being `newest`: after
    /// the room's newest released id. When that is further behind `newest`
    /// than the room's ring holds (`ring_frames` frames), the room first
    /// skips ahead, so that hours of danmaku are neither read nor pushed:
    /// its viewers see the ids skipped as lost (`lagged`), as for any
    /// viewer that fell behind. None: the hub no longer holds the room, or
    /// nobody on this node watches it (nobody needs the read).
    pub fn read_from(&self, room: &str, after: u64, newest: u64) -> Option<u64> {
        let room = self.shard(room).get(room).cloned()?;
        room.read_from(after, newest)
    }

    /// Hands `room` what the store holds after `after`, up to and including
    /// `upto`: `items`, ascending (the answer to [`HubEvents::gap`]). An id
    /// in `(after, upto]` missing from `items` was recalled: the room steps
    /// over it, and releases what it held back behind it. A fill that
    /// starts at or before the room's newest released id and reaches it
    /// answers a catch-up, even with nothing new (`upto` equal to it). A
    /// room the hub no longer holds has nobody to tell.
    pub fn fill(&self, room: &str, after: u64, upto: u64, items: &[Danmaku]) {
        // With the shard locked, like `deliver`: a room retired meanwhile
        // and made anew does not get another room's fill.
        if let Some(room) = self.shard(room).get(room) {
            room.fill(after, upto, items);
        }
    }

    /// The other nodes' viewer counts, by room (a room left out has none
    /// elsewhere). Each room's `online` is its own viewers plus these; a
    /// change is announced like a local one. Rooms the hub does not hold
    /// are not made.
    pub fn set_remote_online(&self, remote: &HashMap<String, u64>) {
        for room in self.rooms_where(|_| true) {
            let count = remote.get(room.name()).copied().unwrap_or(0);
            room.set_remote(usize::try_from(count).unwrap_or(usize::MAX));
        }
    }

    /// This node's own viewers, by room (rooms without any left out).
    pub fn local_online(&self) -> HashMap<String, u64> {
        self.figures(|_| true)
            .into_iter()
            .filter(|s| s.online_local > 0)
            .map(|s| (s.room, s.online_local as u64))
            .collect()
    }

    /// Makes every room watched on this node catch up from the store: the
    /// broker was away, and whatever it carried meanwhile may be lost. Each
    /// such room opens a gap after its newest released id that stays open
    /// (asked again with the usual backoff, should the read fail) until
    /// [`Hub::fill`] brings the store's word, and at most 32 rooms' asks
    /// are out at once. Returns at once; calling it again while rooms are
    /// still catching up costs nothing more.
    pub fn catch_up_all(&self) {
        for room in self.rooms_where(|_| true) {
            room.catch_up();
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
    /// Takes a committed batch, ascending by id within each room, from
    /// this node's store (in id order) or the broker (in any order,
    /// repeated or with ids missing: each room releases in id order). Never
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::reorder::ITEM_OVERHEAD;
    use super::*;

    /// A node that records what the hub asks of it, and hands the asks to
    /// `answers` when set.
    #[derive(Default)]
    struct Recorder {
        gaps: Mutex<Vec<(String, u64, Instant)>>,
        retired: Mutex<Vec<String>>,
        answers: Mutex<Option<tokio::sync::mpsc::UnboundedSender<(String, u64)>>>,
        /// Asks not answered yet, and the most there ever were.
        out: AtomicUsize,
        most_out: AtomicUsize,
    }

    impl HubEvents for Recorder {
        fn gap(&self, room: &str, after: u64) {
            let mut gaps = self.gaps.lock().unwrap();
            gaps.push((room.to_owned(), after, Instant::now()));
            let out = self.out.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_out.fetch_max(out, Ordering::SeqCst);
            if let Some(answers) = &*self.answers.lock().unwrap() {
                answers.send((room.to_owned(), after)).unwrap();
            }
        }

        fn retired(&self, room: &str) {
            self.retired.lock().unwrap().push(room.to_owned());
        }
    }

    impl Recorder {
        fn gaps(&self) -> Vec<(String, u64)> {
            let gaps = self.gaps.lock().unwrap();
            gaps.iter().map(|(r, a, _)| (r.clone(), *a)).collect()
        }
    }

    /// A hub whose rooms hold danmaku back for `reorder`, announcing counts
    /// every 20 ms, and the node it tells.
    fn hub(reorder: Duration) -> (Arc<Hub>, Arc<Recorder>) {
        let config = FanoutConfig {
            online_interval_ms: 20,
            ..FanoutConfig::default()
        };
        let hub = Hub::new(config, reorder, Arc::new(Metrics::new()));
        let recorder = Arc::new(Recorder::default());
        let events: Arc<dyn HubEvents> = recorder.clone();
        hub.set_events(Arc::downgrade(&events));
        (hub, recorder)
    }

    fn d(room: &str, id: u64) -> Danmaku {
        Danmaku::sample(room, id)
    }

    fn batch(room: &str, ids: &[u64]) -> Vec<Danmaku> {
        ids.iter().map(|&id| d(room, id)).collect()
    }

    /// The next frame the viewer gets (within 5 s).
    async fn next_frame(viewer: &mut Viewer) -> Arc<Frame> {
        match tokio::time::timeout(Duration::from_secs(5), viewer.recv()).await {
            Ok(Received::Frame(f)) => f,
            Ok(Received::Lagged(n)) => panic!("lagged {n} frames"),
            Err(_) => panic!("no frame within 5 s"),
        }
    }

    /// The danmaku frames a viewer gets until one stands for `last`,
    /// checking that each starts right after the one before (so a feed
    /// level with the room reports no loss).
    async fn danmaku_until(viewer: &mut Viewer, after: u64, last: u64) -> Vec<Arc<Frame>> {
        let mut frames = Vec::new();
        let mut reached = after;
        while reached < last {
            let frame = next_frame(viewer).await;
            if let Some((first, end)) = frame.id_range() {
                assert_eq!(first, reached + 1, "frames follow on: {frames:?} {frame:?}");
                reached = end;
                frames.push(frame);
            }
        }
        frames
    }

    fn ids(frames: &[Arc<Frame>]) -> Vec<u64> {
        frames
            .iter()
            .flat_map(|f| f.items().iter().map(|d| d.id))
            .collect()
    }

    /// The next `online` count the viewer is told (within 5 s).
    async fn next_online(viewer: &mut Viewer) -> usize {
        loop {
            if let FrameKind::Online { count } = next_frame(viewer).await.kind() {
                return *count;
            }
        }
    }

    #[tokio::test]
    async fn batches_out_of_order_are_released_in_id_order_once() {
        let (hub, recorder) = hub(Duration::from_secs(10));
        let mut viewer = hub.join("ooo");
        viewer.room().seed_last_id(0);
        for run in [&[1][..], &[3, 4], &[2], &[2, 3], &[6], &[5], &[1, 2, 3]] {
            hub.deliver(&batch("ooo", run));
        }
        let frames = danmaku_until(&mut viewer, 0, 6).await;
        assert_eq!(ids(&frames), [1, 2, 3, 4, 5, 6]);
        assert_eq!(hub.stats("ooo").unwrap().last_id, Some(6));
        assert!(recorder.gaps().is_empty(), "nothing was missing long");
    }

    #[tokio::test]
    async fn a_duplicate_batch_is_dropped() {
        let (hub, _) = hub(Duration::from_secs(10));
        let mut viewer = hub.join("dup");
        viewer.room().seed_last_id(0);
        hub.deliver(&batch("dup", &[1, 2]));
        let frames = danmaku_until(&mut viewer, 0, 2).await;
        hub.deliver(&batch("dup", &[1, 2]));
        hub.deliver(&batch("dup", &[2]));
        hub.deliver(&batch("dup", &[3]));
        let more = danmaku_until(&mut viewer, 2, 3).await;
        assert_eq!(ids(&frames), [1, 2]);
        assert_eq!(ids(&more), [3], "1 and 2 not again");
    }

    #[tokio::test]
    async fn a_missing_id_asks_for_the_gap_once_and_a_fill_with_a_recall_releases_the_rest() {
        let reorder = Duration::from_millis(300);
        let (hub, recorder) = hub(reorder);
        let mut viewer = hub.join("gap");
        viewer.room().seed_last_id(0);
        hub.deliver(&batch("gap", &[1]));
        assert_eq!(ids(&danmaku_until(&mut viewer, 0, 1).await), [1]);
        let held_at = Instant::now();
        hub.deliver(&batch("gap", &[3]));
        hub.deliver(&batch("gap", &[4]));
        tokio::time::sleep(reorder / 3).await;
        hub.deliver(&batch("gap", &[5]));
        assert!(recorder.gaps().is_empty(), "asked before the window");
        while let Some(got) = viewer.try_recv() {
            assert!(
                matches!(&got, Received::Frame(f) if f.id_range().is_none()),
                "3 to 5 wait for 2, got {got:?}"
            );
        }

        while recorder.gaps().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let asked_at = recorder.gaps.lock().unwrap()[0].2;
        assert!(asked_at >= held_at + reorder, "asked after the window");
        assert_eq!(recorder.gaps(), [("gap".to_owned(), 1)]);
        // The store holds 3 and 4 after 1: 2 was recalled.
        hub.fill("gap", 1, 4, &batch("gap", &[3, 4]));
        let frames = danmaku_until(&mut viewer, 1, 5).await;
        assert_eq!(ids(&frames), [3, 4, 5]);
        assert!(
            frames
                .iter()
                .all(|f| !String::from_utf8_lossy(f.ws()).contains("thinned")),
            "a recalled id is not thinned"
        );
        tokio::time::sleep(reorder * 2).await;
        assert_eq!(recorder.gaps().len(), 1, "the gap is filled: asked once");
        assert_eq!(hub.stats("gap").unwrap().last_id, Some(5));
    }

    #[tokio::test]
    async fn a_seed_starts_an_empty_room_jumps_an_unwatched_one_and_asks_for_a_watched_one() {
        let (hub, recorder) = hub(Duration::from_secs(10));

        let mut first = hub.join("seed");
        first.room().seed_last_id(5);
        assert_eq!(hub.stats("seed").unwrap().last_id, Some(5));
        hub.deliver(&batch("seed", &[6]));
        assert_eq!(ids(&danmaku_until(&mut first, 5, 6).await), [6]);

        // A viewer joins a room nobody else watches, with a newer id from
        // the store: the room starts there.
        drop(first);
        let mut first = hub.join("seed");
        first.room().seed_last_id(9);
        assert_eq!(hub.stats("seed").unwrap().last_id, Some(9));
        hub.deliver(&batch("seed", &[10]));
        let frames = danmaku_until(&mut first, 9, 10).await;
        assert_eq!(ids(&frames), [10]);

        // Watched by another: no jump, the room asks at once for 11 to 13.
        let second = hub.join("seed");
        second.room().seed_last_id(13);
        assert_eq!(hub.stats("seed").unwrap().last_id, Some(10));
        let asked = Instant::now();
        while recorder.gaps().is_empty() {
            assert!(asked.elapsed() < Duration::from_secs(5), "not asked");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(recorder.gaps(), [("seed".to_owned(), 10)]);
        hub.fill("seed", 10, 13, &batch("seed", &[11, 12, 13]));
        let frames = danmaku_until(&mut first, 10, 13).await;
        assert_eq!(ids(&frames), [11, 12, 13], "the first viewer misses none");
        assert_eq!(hub.stats("seed").unwrap().last_id, Some(13));
    }

    /// Waits (at most 5 s) until `recorder` was asked `n` times.
    async fn asked(recorder: &Recorder, n: usize) -> Vec<(String, u64, Instant)> {
        let started = Instant::now();
        loop {
            let gaps = recorder.gaps.lock().unwrap().clone();
            if gaps.len() >= n {
                return gaps;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "asked {gaps:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether the viewer has a danmaku frame waiting.
    fn has_danmaku(viewer: &mut Viewer) -> bool {
        std::iter::from_fn(|| viewer.try_recv())
            .any(|got| !matches!(&got, Received::Frame(f) if f.id_range().is_none()))
    }

    #[tokio::test]
    async fn a_room_with_nothing_released_holds_what_comes_until_its_seed() {
        let (hub, recorder) = hub(Duration::from_secs(10));
        let mut viewer = hub.join("start");
        // Another node's 103 overtakes 101 and 102, all before the store's
        // newest id (100) is read for the viewer.
        for id in [103, 101, 102] {
            hub.deliver(&batch("start", &[id]));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!has_danmaku(&mut viewer), "nothing before the seed");
        assert_eq!(hub.stats("start").unwrap().last_id, None);
        viewer.room().seed_last_id(100);
        // From 101 on, frame after frame: the feed (at 100) sees no lag.
        let frames = danmaku_until(&mut viewer, 100, 103).await;
        assert_eq!(ids(&frames), [101, 102, 103]);
        hub.deliver(&batch("start", &[101, 102]));
        hub.deliver(&batch("start", &[104]));
        assert_eq!(ids(&danmaku_until(&mut viewer, 103, 104).await), [104]);
        assert!(recorder.gaps().is_empty(), "nothing was missing");
    }

    #[tokio::test]
    async fn a_room_with_no_seed_starts_at_the_lowest_id_after_its_window() {
        let reorder = Duration::from_millis(200);
        let (hub, _) = hub(reorder);
        let mut viewer = hub.join("noseed");
        let sent = Instant::now();
        hub.deliver(&batch("noseed", &[8]));
        hub.deliver(&batch("noseed", &[7]));
        let frames = danmaku_until(&mut viewer, 6, 8).await;
        assert_eq!(ids(&frames), [7, 8]);
        assert!(sent.elapsed() >= reorder, "held for the window");
        assert_eq!(hub.stats("noseed").unwrap().last_id, Some(8));
    }

    #[tokio::test]
    async fn a_room_without_viewers_releases_at_once_and_never_asks_for_a_gap() {
        let reorder = Duration::from_millis(50);
        let (hub, recorder) = hub(reorder);
        // This node's own sends, with other nodes' ids in between.
        for id in [5, 9, 12] {
            hub.deliver(&batch("own", &[id]));
            assert_eq!(hub.stats("own").unwrap().last_id, Some(id));
        }
        hub.catch_up_all();
        // A watched room whose viewer leaves hands on what it held back.
        let viewer = hub.join("left");
        viewer.room().seed_last_id(0);
        hub.deliver(&batch("left", &[1, 3]));
        assert_eq!(hub.stats("left").unwrap().last_id, Some(1));
        drop(viewer);
        assert_eq!(hub.stats("left").unwrap().last_id, Some(3));
        tokio::time::sleep(reorder * 4).await;
        assert!(recorder.gaps().is_empty(), "asked {:?}", recorder.gaps());

        // A viewer who joins later starts at the store's newest id.
        let mut viewer = hub.join("own");
        viewer.room().seed_last_id(20);
        hub.deliver(&batch("own", &[21]));
        assert_eq!(ids(&danmaku_until(&mut viewer, 20, 21).await), [21]);
    }

    #[tokio::test]
    async fn a_recall_that_overtakes_its_danmaku_keeps_it_from_viewers_without_a_lag() {
        let (hub, recorder) = hub(Duration::from_secs(10));
        let mut viewer = hub.join("recall");
        viewer.room().seed_last_id(0);
        hub.deliver(&batch("recall", &[1]));
        assert_eq!(ids(&danmaku_until(&mut viewer, 0, 1).await), [1]);
        // 3 is held back for 2 when its recall comes; 5's recall comes
        // before 5 itself.
        hub.deliver(&batch("recall", &[3]));
        hub.recall("recall", vec![3]);
        hub.recall("recall", vec![5]);
        for id in [2, 5, 3, 4, 6] {
            hub.deliver(&batch("recall", &[id]));
        }
        let (mut reached, mut got, mut deleted) = (1, Vec::new(), Vec::<u64>::new());
        while reached < 6 {
            let frame = next_frame(&mut viewer).await;
            match frame.kind() {
                FrameKind::Danmaku { items, first, last } => {
                    assert_eq!(*first, reached + 1, "no lag: {frame:?}");
                    let ws = String::from_utf8_lossy(frame.ws()).into_owned();
                    assert!(!ws.contains("thinned"), "not thinned: {ws}");
                    got.extend(items.iter().map(|d| d.id));
                    reached = *last;
                }
                FrameKind::Delete { ids } => deleted.extend(ids),
                FrameKind::Online { .. } => {}
            }
        }
        assert_eq!(got, [2, 4, 6], "3 and 5 never shown");
        assert_eq!(deleted, [3, 5], "still told to hide them");
        assert!(recorder.gaps().is_empty(), "nothing missing");
    }

    #[tokio::test]
    async fn a_catch_up_whose_read_fails_is_asked_again_until_the_store_answers() {
        let reorder = Duration::from_millis(100);
        let (hub, recorder) = hub(reorder);
        let viewer = hub.join("catch");
        viewer.room().seed_last_id(5);
        hub.deliver(&batch("unwatched", &[1]));
        hub.catch_up_all();
        let first = asked(&recorder, 1).await;
        // The store failed: nobody answers, and the room asks again.
        let again = asked(&recorder, 2).await;
        assert_eq!(
            recorder.gaps(),
            [("catch".to_owned(), 5), ("catch".to_owned(), 5)]
        );
        assert!(again[1].2 >= first[0].2 + reorder, "after the window");
        // The store answers: nothing new after 5.
        hub.fill("catch", 5, 5, &[]);
        tokio::time::sleep(reorder * 5).await;
        assert_eq!(recorder.gaps().len(), 2, "answered: asked no more");
    }

    #[tokio::test]
    async fn a_gap_longer_than_the_ring_holds_is_read_from_near_the_newest_id() {
        let (hub, _) = hub(Duration::from_secs(10));
        let mut viewer = hub.join("far");
        viewer.room().seed_last_id(10);
        hub.deliver(&batch("far", &[11]));
        assert_eq!(ids(&danmaku_until(&mut viewer, 10, 11).await), [11]);
        let config = FanoutConfig::default();
        let ring = (config.ring_frames * (config.max_frame_bytes / ITEM_OVERHEAD)) as u64;
        assert_eq!(hub.read_from("far", 11, 500), Some(11), "within the ring");
        let newest = 1_000_000;
        let from = hub.read_from("far", 11, newest).unwrap();
        assert_eq!(from, newest - ring, "skipped ahead");
        hub.fill("far", from, from + 1, &batch("far", &[from + 1]));
        // The next frame starts after the ids skipped: the feed reports
        // them lost.
        let frames = danmaku_until(&mut viewer, from, from + 1).await;
        assert_eq!(ids(&frames), [from + 1]);

        hub.deliver(&batch("unwatched", &[1]));
        assert_eq!(
            hub.read_from("unwatched", 0, newest),
            None,
            "nobody needs it"
        );
        assert_eq!(hub.read_from("unknown", 0, newest), None);
    }

    #[tokio::test]
    async fn a_thousand_rooms_catch_up_with_at_most_32_reads_out_at_once() {
        let (hub, recorder) = hub(Duration::from_secs(5));
        let (answers, mut asks) = tokio::sync::mpsc::unbounded_channel();
        *recorder.answers.lock().unwrap() = Some(answers);
        let viewers: Vec<Viewer> = (0..1_000)
            .map(|i| {
                let viewer = hub.join(&format!("many-{i}"));
                viewer.room().seed_last_id(1);
                viewer
            })
            .collect();
        hub.catch_up_all();
        // The store answers each read 2 ms later, with nothing new.
        let mut answered = std::collections::HashSet::new();
        while answered.len() < viewers.len() {
            let (room, after) = tokio::time::timeout(Duration::from_secs(10), asks.recv())
                .await
                .expect("every room asks")
                .unwrap();
            answered.insert(room.clone());
            let (hub, recorder) = (hub.clone(), recorder.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                recorder.out.fetch_sub(1, Ordering::SeqCst);
                hub.fill(&room, after, after, &[]);
            });
        }
        let most = recorder.most_out.load(Ordering::SeqCst);
        assert!(
            (2..=CATCH_UP_READS).contains(&most),
            "{most} reads out at once"
        );
    }

    #[tokio::test]
    async fn remote_viewers_count_in_the_stats_and_the_online_frames() {
        let (hub, _) = hub(Duration::from_millis(100));
        let mut viewer = hub.join("far");
        assert_eq!(next_online(&mut viewer).await, 1);
        let remote = HashMap::from([("far".to_owned(), 3), ("elsewhere".to_owned(), 7)]);
        hub.set_remote_online(&remote);
        let stats = hub.stats("far").unwrap();
        assert_eq!((stats.online, stats.online_local), (4, 1));
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(
            (json["online"].as_u64(), json["online_local"].as_u64()),
            (Some(4), Some(1))
        );
        assert_eq!(next_online(&mut viewer).await, 4);
        assert_eq!(hub.local_online(), HashMap::from([("far".to_owned(), 1)]));
        assert!(hub.stats("elsewhere").is_none(), "not made by presence");
        assert_eq!(hub.figures(|room| room == "far")[0].online, 4);

        // Gone elsewhere: announced too.
        hub.set_remote_online(&HashMap::new());
        assert_eq!(next_online(&mut viewer).await, 1);
    }

    #[tokio::test]
    async fn a_viewer_greeted_with_a_count_that_moved_back_is_told_the_current_one() {
        let config = FanoutConfig {
            online_interval_ms: 300,
            ..FanoutConfig::default()
        };
        let hub = Hub::new(config, Duration::from_millis(100), Arc::new(Metrics::new()));
        let mut six: Vec<Viewer> = (0..6).map(|_| hub.join("greet")).collect();
        let mut told = 0;
        while told != 6 {
            told = next_online(&mut six[0]).await;
        }
        // Within one announce interval: 6 → 4, a viewer joins and is
        // greeted with 5, another joins: 6 again, as announced.
        six.truncate(4);
        let mut greeted = hub.join("greet");
        assert_eq!(greeted.room().greet().online, 5);
        let _sixth = hub.join("greet");
        assert_eq!(hub.stats("greet").unwrap().online, 6);
        assert_eq!(next_online(&mut greeted).await, 6, "told the count now");
    }

    #[tokio::test]
    async fn a_retired_room_is_told_to_the_node() {
        let config = FanoutConfig {
            room_idle_s: 0,
            ..FanoutConfig::default()
        };
        let hub = Hub::new(config, Duration::from_millis(100), Arc::new(Metrics::new()));
        let recorder = Arc::new(Recorder::default());
        let events: Arc<dyn HubEvents> = recorder.clone();
        hub.set_events(Arc::downgrade(&events));
        drop(hub.join("bye"));
        let started = Instant::now();
        while hub.stats("bye").is_some() {
            assert!(started.elapsed() < Duration::from_secs(5), "not retired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*recorder.retired.lock().unwrap(), ["bye"]);
        // A fill for a room the hub no longer holds makes nothing.
        hub.fill("bye", 0, 3, &batch("bye", &[1, 2, 3]));
        assert!(hub.stats("bye").is_none());
    }
}
