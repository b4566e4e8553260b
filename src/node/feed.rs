//! A viewer's feed: the room's live frames, preceded by the history it
//! missed, with no gap and no duplicate.
//!
//! The hub only knows the present; the store knows the past. The feed joins
//! them by id: it joins the room first (so nothing committed from then on
//! can be missed), then reads the store after the client's last id, then
//! passes live frames through, skipping or trimming those it already sent.
//! Both transports (WebSocket and SSE) use it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::FanoutConfig;
use crate::danmaku::Danmaku;
use crate::hub::{DirectSink, Frame, Received, Viewer};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Danmaku read from the store per catch-up query.
const PAGE: usize = 500;

type PendingRead = Pin<Box<dyn Future<Output = Result<Vec<Danmaku>, StoreError>> + Send>>;

/// What a viewer is sent next.
#[derive(Debug)]
pub enum Delivery {
    /// A frame shared with the whole room: send its bytes as they are.
    Shared(Arc<Frame>),
    /// Danmaku only this viewer needs (catch-up): encode them for it.
    Own(Vec<Danmaku>),
    /// This many danmaku were skipped because the viewer was too slow.
    Lagged {
        /// How many danmaku the viewer lost.
        dropped: u64,
    },
    /// The room's flusher handed a parked viewer back ([`Feed::park`]):
    /// these bytes, the end of what it was writing, go before anything else.
    HandedBack {
        /// The unwritten bytes, in order (already counted as delivered).
        leftover: Vec<Bytes>,
    },
}

/// A viewer's position in its room.
pub struct Feed {
    viewer: Viewer,
    store: Arc<dyn Store>,
    /// The newest id sent to the viewer, or skipped for it: everything up to
    /// here is settled, and a frame that starts later leaves a gap.
    cursor: u64,
    /// Resuming after `since`: gaps are filled from the store, and a gap
    /// the store has nothing for (recalled ids) is stepped over. Cleared
    /// once the feed is level with the live frames; after that a gap means
    /// the viewer was too slow, and is reported, not filled.
    catching_up: bool,
    /// The first history read has not reached the end yet.
    backlog: bool,
    /// A frame taken from the ring but not yet delivered, kept across a
    /// store read so that cancelling `next` loses nothing.
    held: Option<Arc<Frame>>,
    /// A store read in progress. Kept across cancellations of `next`, so
    /// that a viewer whose `select!` picks another branch resumes the same
    /// query instead of starting it again.
    reading: Option<PendingRead>,
    metrics: Arc<Metrics>,
    lags: LagCounter,
    /// The room's flusher writes for the viewer (see [`Feed::park`]).
    parked: bool,
}

/// Counts a viewer's lags to tell a hiccup from a viewer that cannot keep up.
struct LagCounter {
    max: u32,
    window: Duration,
    count: u32,
    since: Instant,
}

impl LagCounter {
    /// Records a lag; true when the viewer should be disconnected.
    fn lagged(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.since) > self.window {
            self.count = 0;
            self.since = now;
        }
        self.count += 1;
        self.count > self.max
    }
}

enum Placed {
    Deliver(Delivery),
    Skip,
    NeedsStore(Arc<Frame>),
}

impl Feed {
    /// A feed of live frames, preceded by every stored danmaku after `since`
    /// when given. `last_id` is the room's newest id when the viewer joined:
    /// without `since`, the feed starts after it.
    pub fn new(
        viewer: Viewer,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        fanout: &FanoutConfig,
        since: Option<u64>,
        last_id: u64,
    ) -> Feed {
        Feed {
            viewer,
            store,
            // A `since` from the future (another deployment, a typo) would
            // make the feed skip everything: read it as "up to now".
            cursor: since.map_or(last_id, |s| s.min(last_id)),
            catching_up: since.is_some(),
            backlog: since.is_some(),
            held: None,
            reading: None,
            metrics,
            lags: LagCounter {
                max: fanout.max_lags,
                window: Duration::from_secs(fanout.lag_window_s),
                count: 0,
                since: Instant::now(),
            },
            parked: false,
        }
    }

    /// Counts a delivery the transport is about to send in the metrics, and
    /// applies the slow-consumer rule: true when the viewer has lagged more
    /// than `max_lags` times within `lag_window_s` and must be disconnected.
    /// Both transports call it, so both count and judge alike.
    pub fn account(&mut self, delivery: &Delivery) -> bool {
        let m = &self.metrics;
        match delivery {
            Delivery::Shared(frame) => {
                m.deliveries.inc_by(frame.items().len() as u64);
                if self.viewer.sampled() && !frame.items().is_empty() {
                    m.fanout_seconds
                        .observe(frame.committed_at.elapsed().as_secs_f64());
                }
                false
            }
            Delivery::Own(items) => {
                m.deliveries.inc_by(items.len() as u64);
                false
            }
            Delivery::HandedBack { .. } => false,
            Delivery::Lagged { dropped } => {
                m.lags.inc();
                m.dropped.inc_by(*dropped);
                let slow = self.lags.lagged();
                if slow {
                    m.slow_disconnects.inc();
                }
                slow
            }
        }
    }

    /// The viewer's place in the hub.
    pub fn viewer(&self) -> &Viewer {
        &self.viewer
    }

    /// Lets the room's flusher write to `sink` while the feed is parked.
    pub fn attach(&self, sink: Arc<dyn DirectSink>) {
        self.viewer.attach(sink);
    }

    /// Hands the viewer to the room's flusher, which then writes each new
    /// frame straight to the attached sink, if the feed is level with the
    /// room (no history to read, nothing held, nothing waiting in the
    /// ring, and no frame still to come that holds an id at or below the
    /// cursor: the flusher does not skip). Returns whether it did; while
    /// parked, the owner writes nothing until [`Feed::unpark`].
    pub fn park(&mut self) -> bool {
        if !self.parked
            && !self.backlog
            && !self.catching_up
            && self.held.is_none()
            && self.reading.is_none()
        {
            self.parked = self.viewer.park(self.cursor);
        }
        self.parked
    }

    /// Whether the flusher writes for the viewer.
    pub fn is_parked(&self) -> bool {
        self.parked
    }

    /// Takes the viewer back from the flusher. Returns the bytes the flusher
    /// could not finish writing: the owner writes them before anything else.
    pub fn unpark(&mut self) -> Vec<Bytes> {
        if !self.parked {
            return Vec::new();
        }
        self.parked = false;
        let back = self.viewer.unpark();
        if let Some(id) = back.last_id {
            self.cursor = self.cursor.max(id);
        }
        back.leftover
    }

    /// The next delivery. Cancel-safe: its state changes only as it returns.
    /// While parked, waits for the flusher to hand the viewer back.
    pub async fn next(&mut self) -> Result<Delivery, StoreError> {
        if self.parked {
            self.viewer.handed_back().await;
            let leftover = self.unpark();
            return Ok(Delivery::HandedBack { leftover });
        }
        loop {
            if self.backlog {
                let page = self.read_after_cursor().await?;
                self.backlog = page.len() == PAGE;
                if let Some(d) = self.advance_own(page) {
                    return Ok(d);
                }
                continue;
            }
            let frame = match self.held.take() {
                Some(f) => f,
                // A lag shows up as a gap in the ids of the next frame.
                None => match self.viewer.recv().await {
                    Received::Frame(f) => f,
                    Received::Lagged(_) => continue,
                },
            };
            match self.place(frame) {
                Placed::Deliver(d) => return Ok(d),
                Placed::Skip => {}
                Placed::NeedsStore(frame) => {
                    self.held = Some(frame);
                    let page = self.read_after_cursor().await?;
                    if let Some(d) = self.advance_own(page) {
                        return Ok(d);
                    }
                    // The store commits every id before the hub sees it, so
                    // a store with nothing between the cursor and a live
                    // frame means those ids were recalled (and maybe the
                    // frame's own, whose `delete` follows in the ring): no
                    // danmaku was lost, so step over them without a lag.
                    let (first, _) = self
                        .held
                        .as_ref()
                        .and_then(|f| f.id_range())
                        .expect("only a held danmaku frame needs the store");
                    self.cursor = first - 1;
                }
            }
        }
    }

    /// The next delivery if one is ready without waiting; `None` when the
    /// ring is empty or the next step needs the store ([`Feed::next`]).
    pub fn try_next(&mut self) -> Option<Delivery> {
        if self.parked || self.backlog || (self.held.is_some() && self.catching_up) {
            return None;
        }
        loop {
            let frame = match self.held.take() {
                // Held after a reported lag: ready to go.
                Some(f) => f,
                None => match self.viewer.try_recv()? {
                    Received::Frame(f) => f,
                    Received::Lagged(_) => continue,
                },
            };
            match self.place(frame) {
                Placed::Deliver(d) => return Some(d),
                Placed::Skip => {}
                Placed::NeedsStore(f) => {
                    self.held = Some(f);
                    return None;
                }
            }
        }
    }

    /// The page after the cursor, resuming a read a cancelled `next` left.
    async fn read_after_cursor(&mut self) -> Result<Vec<Danmaku>, StoreError> {
        let read = self.reading.get_or_insert_with(|| {
            let (store, room, after) = (
                self.store.clone(),
                self.viewer.room().name().to_owned(),
                self.cursor,
            );
            Box::pin(async move { store.after(&room, after, PAGE).await })
        });
        let page = read.await;
        self.reading = None;
        page
    }

    /// The id after which this feed starts (or has reached): what an SSE
    /// client should send back as `Last-Event-ID` if it reconnects now.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Decides what a live frame means for this viewer.
    fn place(&mut self, frame: Arc<Frame>) -> Placed {
        let Some((first, last)) = frame.id_range() else {
            return Placed::Deliver(Delivery::Shared(frame));
        };
        let cursor = self.cursor;
        if last <= cursor {
            return Placed::Skip;
        }
        if first > cursor + 1 {
            if self.catching_up {
                return Placed::NeedsStore(frame);
            }
            return Placed::Deliver(self.report_gap(frame));
        }
        self.catching_up = false;
        self.cursor = last;
        if first == cursor + 1 {
            Placed::Deliver(Delivery::Shared(frame))
        } else {
            // The front of the frame was already sent from the store.
            let rest = frame
                .items()
                .iter()
                .filter(|d| d.id > cursor)
                .cloned()
                .collect();
            Placed::Deliver(Delivery::Own(rest))
        }
    }

    /// Reports the ids missing before `frame` as dropped, and holds the
    /// frame to be delivered next.
    fn report_gap(&mut self, frame: Arc<Frame>) -> Delivery {
        let (first, _) = frame.id_range().expect("only danmaku frames leave gaps");
        let dropped = first - 1 - self.cursor;
        self.cursor = first - 1;
        self.held = Some(frame);
        Delivery::Lagged { dropped }
    }

    fn advance_own(&mut self, page: Vec<Danmaku>) -> Option<Delivery> {
        self.cursor = page.last()?.id;
        Some(Delivery::Own(page))
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::danmaku::NewDanmaku;
    use crate::hub::Hub;
    use crate::store::Density;

    /// A store whose danmaku after id 1 were all recalled.
    struct Recalled;

    #[async_trait]
    impl Store for Recalled {
        async fn append(&self, _: NewDanmaku) -> Result<Danmaku, StoreError> {
            Err(StoreError::Closed)
        }
        async fn append_many(&self, _: Vec<NewDanmaku>) -> Result<Vec<Danmaku>, StoreError> {
            Err(StoreError::Closed)
        }
        async fn after(&self, _: &str, _: u64, _: usize) -> Result<Vec<Danmaku>, StoreError> {
            Ok(Vec::new())
        }
        async fn by_video_time(
            &self,
            _: &str,
            _: f64,
            _: f64,
            _: usize,
        ) -> Result<Vec<Danmaku>, StoreError> {
            Ok(Vec::new())
        }
        async fn density(&self, _: &str, _: f64, _: usize) -> Result<Density, StoreError> {
            Ok(Density::default())
        }
        async fn get(&self, _: &str, _: u64) -> Result<Option<Danmaku>, StoreError> {
            Ok(None)
        }
        async fn last_id(&self, _: &str) -> Result<u64, StoreError> {
            Ok(3)
        }
        fn is_full(&self) -> bool {
            false
        }
        async fn close(&self) {}
    }

    fn danmaku(id: u64) -> Danmaku {
        Danmaku::sample("r", id)
    }

    #[tokio::test]
    async fn resuming_steps_over_recalled_ids_without_a_lag() {
        let fanout = FanoutConfig::default();
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(fanout, Duration::from_millis(100), metrics.clone());
        let viewer = hub.join("r");
        viewer.room().seed_last_id(3);
        // Resumes after 1; 2 and 3 were recalled, and so was 4 by the time
        // the feed asks the store about the live frame that carries it.
        let mut feed = Feed::new(viewer, Arc::new(Recalled), metrics, &fanout, Some(1), 3);
        hub.deliver(&[danmaku(4)]);
        let next = tokio::time::timeout(Duration::from_secs(5), feed.next())
            .await
            .expect("a delivery")
            .unwrap();
        match next {
            Delivery::Shared(frame) => assert_eq!(frame.id_range(), Some((4, 4))),
            other => panic!("want the live frame, got {other:?}"),
        }
        assert_eq!(feed.cursor(), 4);
    }
}
