//! The relay: between this node's hub and the bus.
//!
//! Outbound, it takes every batch the store commits (on the store's
//! writer), hands it to the local hub at once, and queues it for the bus,
//! with recalls and moderation changes; one task publishes the queue in
//! order. The queue is bounded and never waited on: when the broker is slow
//! or away, new events are dropped and counted, because the store holds
//! everything and the other nodes fill their gaps from it (at their next
//! gap, after a reconnection, or at the latest at the 30-second catch-up). So a
//! wedged broker never holds up a commit, an acknowledgement or a room.
//!
//! Inbound, it is the bus's [`EventSink`]: committed batches go to the hub
//! (which reorders them by id), recalls to the hub, moderation changes to
//! the moderation service (which also reloads when the broker returns).
//! It is also the hub's [`HubEvents`]: it reads a gap from the store, and
//! it subscribes to a room's topic while the room has viewers here and
//! unsubscribes when the hub retires it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::bus::{Bus, Envelope, Event, EventSink};
use crate::danmaku::Danmaku;
use crate::hub::{Hub, HubEvents};
use crate::metrics::Metrics;
use crate::store::Store;

/// Events waiting for the broker. Past this, new events are dropped (and
/// counted): the other nodes read what they miss from the store.
const OUTBOX: usize = 65_536;

/// The most danmaku one gap read takes from the store; a longer gap is
/// read in several.
const GAP_READ: usize = 1_000;

/// How soon a failed subscription is asked for again.
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(1);

/// When every room catches up a second time after the broker came back:
/// longer than the brokers' longest reconnection backoff (2 s) and a
/// connect, so that what other nodes could not publish before their own
/// reconnection is read too.
const CATCH_UP_AGAIN: Duration = Duration::from_secs(5);

/// How often every room catches up from the store regardless.
const SAFETY_CATCH_UP: Duration = Duration::from_secs(30);

/// Where the relay hands moderation: this node's moderation service.
pub struct ModerationSink {
    /// Applies another node's moderation event to this node's live state.
    pub apply: Box<dyn Fn(&Event) + Send + Sync>,
    /// The broker came back: moderation events may have been lost
    /// meanwhile, so the durable state is read again. Must not block.
    pub reconnected: Box<dyn Fn() + Send + Sync>,
}

/// This node's side of the bus.
pub struct Relay {
    node_id: String,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    outbox: mpsc::Sender<Envelope>,
    /// Events queued or being published: 0 once the bus has had a go at
    /// everything announced.
    unpublished: Arc<AtomicUsize>,
    parts: OnceLock<Parts>,
    /// Rooms whose topic this node wants to hear: those with viewers here
    /// since the hub last retired them.
    subscribed: Mutex<HashSet<String>>,
    /// Rooms whose subscription should change, to `follow_interest`, with
    /// whom to tell once a subscription took effect.
    interest: mpsc::UnboundedSender<(String, Option<oneshot::Sender<()>>)>,
    runtime: tokio::runtime::Handle,
    /// Itself, for the tasks it spawns.
    myself: std::sync::Weak<Relay>,
}

/// What the relay needs that is made after it.
struct Parts {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    moderation: ModerationSink,
}

impl Relay {
    /// A relay for `hub`, and the receiver of its outbound queue, which
    /// [`Relay::attach`] hands to the publishing task.
    pub fn new(node_id: String, hub: Arc<Hub>, metrics: Arc<Metrics>) -> (Arc<Relay>, Outbox) {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let (interest, changes) = mpsc::unbounded_channel();
        let relay = Arc::new_cyclic(|myself| Relay {
            interest,
            myself: myself.clone(),
            node_id,
            hub,
            metrics,
            outbox: tx,
            unpublished: Arc::new(AtomicUsize::new(0)),
            parts: OnceLock::new(),
            subscribed: Mutex::new(HashSet::new()),
            runtime: tokio::runtime::Handle::current(),
        });
        let events: Arc<dyn HubEvents> = relay.clone();
        relay.hub.set_events(Arc::downgrade(&events));
        relay.runtime.spawn(relay.clone().follow_interest(changes));
        relay
            .runtime
            .spawn(Relay::catch_up_now_and_then(Arc::downgrade(&relay)));
        (relay, Outbox(rx))
    }

    /// Gives the relay its store and bus, and starts publishing.
    pub fn attach(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        moderation: ModerationSink,
        outbox: Outbox,
    ) {
        let publisher = bus.clone();
        let metrics = self.metrics.clone();
        let unpublished = self.unpublished.clone();
        if self
            .parts
            .set(Parts {
                store,
                bus,
                moderation,
            })
            .is_err()
        {
            return;
        }
        self.runtime
            .spawn(publish(outbox.0, publisher, metrics, unpublished));
    }

    /// The store's commit listener: to the local hub now, to the bus soon
    /// (one event per room of the batch, ascending).
    pub fn committed(&self, batch: &[Danmaku]) {
        self.hub.deliver(batch);
        if self.solo() {
            return;
        }
        // A group commit may hold hundreds of rooms: index them by name.
        let mut runs: Vec<Vec<Danmaku>> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for d in batch {
            let at = *index.entry(d.room.as_str()).or_insert_with(|| {
                runs.push(Vec::new());
                runs.len() - 1
            });
            runs[at].push(d.clone());
        }
        for danmaku in runs {
            self.announce(Event::Committed { danmaku });
        }
    }

    /// Queues `event` for the other nodes; drops it (counted) if the queue
    /// is full.
    pub fn announce(&self, event: Event) {
        let envelope = Envelope {
            origin: self.node_id.clone(),
            event,
        };
        self.unpublished.fetch_add(1, Ordering::SeqCst);
        if self.outbox.try_send(envelope).is_err() {
            self.unpublished.fetch_sub(1, Ordering::SeqCst);
            self.metrics.bus_dropped.inc();
        }
    }

    /// Waits until every event announced so far has been offered to the
    /// broker, or `deadline` passes: at shutdown, so that the other nodes
    /// hear of the last sends now rather than at their next gap.
    pub async fn flush(&self, deadline: tokio::time::Instant) {
        while self.unpublished.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Makes sure this node hears `room`'s events, for a viewer that just
    /// joined it. When the room is new to this node (not heard until now),
    /// returns a receiver that resolves once the subscription took effect
    /// (or failed): the viewer's newest id must then come from the store,
    /// read after that, so that whatever is committed later arrives over
    /// the broker.
    ///
    /// The subscription is made by one task, in order with the
    /// unsubscriptions of retired rooms. What was committed before it took
    /// effect is the store's: the joining viewer reads the newest id after
    /// it, and the room starts there.
    pub fn serve(&self, room: &str) -> Option<oneshot::Receiver<()>> {
        if !self.lock_subscribed().insert(room.to_owned()) {
            return None;
        }
        let (done, subscribed) = oneshot::channel();
        let _ = self.interest.send((room.to_owned(), Some(done)));
        Some(subscribed)
    }

    /// Runs the subscription changes in the order they were asked for,
    /// each against the wanted state at the time it runs. A subscription
    /// that fails is asked for again a second later, for as long as the
    /// room is wanted (the broker may have been away).
    async fn follow_interest(
        self: Arc<Self>,
        mut changes: mpsc::UnboundedReceiver<(String, Option<oneshot::Sender<()>>)>,
    ) {
        while let Some((room, done)) = changes.recv().await {
            let Some(parts) = self.parts.get() else {
                continue;
            };
            let wanted = self.lock_subscribed().contains(&room);
            let result = if wanted {
                parts.bus.subscribe(&room).await
            } else {
                parts.bus.unsubscribe(&room).await
            };
            if let Some(done) = done {
                let _ = done.send(());
            }
            if let Err(e) = &result {
                tracing::debug!(room, wanted, error = %e, "cannot change a subscription; asking again");
                if wanted {
                    let again = self.interest.clone();
                    let room = room.clone();
                    self.runtime.spawn(async move {
                        tokio::time::sleep(SUBSCRIBE_RETRY).await;
                        let _ = again.send((room, None));
                    });
                }
            }
        }
    }

    /// Whether this node is alone on its bus (the in-process bus of a
    /// single server): nobody else commits, so nothing to catch up on, and
    /// nobody to tell.
    pub fn solo(&self) -> bool {
        self.parts.get().is_none_or(|p| p.bus.alone())
    }

    /// Catches every room up from the store now, and again after
    /// `CATCH_UP_AGAIN`: the other nodes reconnect to the broker at their
    /// own pace, and what they sent before they were back was lost on it.
    fn catch_up_twice(self: &Arc<Self>) {
        self.hub.catch_up_all();
        let hub = self.hub.clone();
        self.runtime.spawn(async move {
            tokio::time::sleep(CATCH_UP_AGAIN).await;
            hub.catch_up_all();
        });
    }

    /// Catches every room up from the store every `SAFETY_CATCH_UP`, for
    /// as long as the relay lives: an event the broker lost without
    /// anyone's connection breaking (a publish that timed out, a full
    /// queue) is then seen within that time even in a room that gets no
    /// more danmaku. A room with nothing new costs one read of its newest
    /// id.
    async fn catch_up_now_and_then(relay: std::sync::Weak<Relay>) {
        let mut tick = tokio::time::interval(SAFETY_CATCH_UP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(relay) = relay.upgrade() else {
                return;
            };
            if !relay.solo() {
                relay.hub.catch_up_all();
            }
        }
    }

    fn lock_subscribed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.subscribed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `room`'s danmaku after `after` from the store, and hands them
    /// to the hub, until the store has no more.
    async fn fill(&self, room: String, mut after: u64) {
        let Some(parts) = self.parts.get() else {
            return;
        };
        loop {
            // The newest id first: every id up to it is committed, so one
            // the page then lacks was recalled, and the hub may step over
            // it (a gap of recalled ids only would otherwise never close).
            // The room says where to read from: it may skip ahead past what
            // its ring holds, or need nothing (no viewers here any more).
            let read = async {
                let newest = parts.store.last_id(&room).await?;
                let Some(from) = self.hub.read_from(&room, after, newest) else {
                    return Ok(None);
                };
                let page = if newest > from {
                    parts.store.after(&room, from, GAP_READ).await?
                } else {
                    Vec::new()
                };
                Ok::<_, crate::store::StoreError>(Some((from, newest, page)))
            };
            match read.await {
                Ok(None) => return,
                Ok(Some((from, newest, items))) => {
                    let full = items.len() == GAP_READ;
                    let last = items.last().map_or(from, |d| d.id);
                    let upto = if full { last } else { last.max(newest) }.max(from);
                    if !items.is_empty() {
                        self.metrics.gap_fills.inc();
                    }
                    // Also when nothing is new: the store's word answers a
                    // catch-up.
                    self.hub.fill(&room, from, upto, &items);
                    if !full {
                        return;
                    }
                    after = upto;
                }
                Err(e) => {
                    tracing::debug!(room, error = %e, "cannot read a gap from the store; the room asks again");
                    return;
                }
            }
        }
    }
}

impl HubEvents for Relay {
    fn gap(&self, room: &str, after: u64) {
        let Some(relay) = self.myself.upgrade() else {
            return;
        };
        let room = room.to_owned();
        self.runtime
            .spawn(async move { relay.fill(room, after).await });
    }

    fn retired(&self, room: &str) {
        if self.lock_subscribed().remove(room) {
            let _ = self.interest.send((room.to_owned(), None));
        }
    }
}

impl EventSink for Relay {
    fn receive(&self, envelope: Envelope) {
        if envelope.origin == self.node_id {
            return;
        }
        self.metrics.bus_received.inc();
        match envelope.event {
            Event::Committed { danmaku } => {
                if let Some(first) = danmaku.first() {
                    // Clocks of different machines: a negative lag is 0.
                    let lag_ms = (crate::danmaku::now_ms() - first.ts).max(0);
                    self.metrics.bus_lag_seconds.observe(lag_ms as f64 / 1000.0);
                }
                self.hub.deliver(&danmaku);
            }
            Event::Recalled { room, ids } => self.hub.recall(&room, ids),
            other => {
                if let Some(parts) = self.parts.get() {
                    (parts.moderation.apply)(&other);
                }
            }
        }
    }

    fn reconnected(&self) {
        self.metrics.bus_reconnects.inc();
        tracing::info!("broker back: catching every room up from the store");
        if let Some(relay) = self.myself.upgrade() {
            relay.catch_up_twice();
        }
        if let Some(parts) = self.parts.get() {
            (parts.moderation.reconnected)();
        }
    }
}

/// The receiving end of the relay's outbound queue.
pub struct Outbox(mpsc::Receiver<Envelope>);

/// Publishes the queue in order until the relay is gone.
async fn publish(
    mut queue: mpsc::Receiver<Envelope>,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    unpublished: Arc<AtomicUsize>,
) {
    while let Some(envelope) = queue.recv().await {
        let result = bus.publish(&envelope).await;
        unpublished.fetch_sub(1, Ordering::SeqCst);
        match result {
            Ok(()) => {
                metrics.bus_published.inc();
            }
            Err(e) => {
                metrics.bus_publish_failures.inc();
                tracing::debug!(error = %e, "publish failed; other nodes read it from the store");
            }
        }
    }
}
