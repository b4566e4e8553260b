//! The node: owns the parts of one server and the paths between them.
//!
//! Transports call the node; the node runs a send through the guard and the
//! store, and a subscription through the hub and the store. It is the only
//! place that knows all of them, so the parts stay ignorant of each other.

mod backends;
mod feed;
mod memory;
mod moderate;
mod presence;
mod relay;
mod rooms;
mod stats;

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusError};
use crate::config::Config;
use crate::danmaku::{now_ms, Danmaku, NewDanmaku};
use crate::error::{ApiError, ErrorCode};
use crate::guard::{self, Admin, Guard, GuardSetupError, SendRequest, Sender};
use crate::hub::{Hub, RoomStats};
use crate::metrics::Metrics;
use crate::moderation::{AuditEntry, Held, Moderator, Verdict};
use crate::presence::Presence;
use crate::store::{Density, ModerationStore, Store, StoreError};

pub use feed::{Delivery, Feed};
pub use memory::limit_arenas;
pub use rooms::RoomOrder;
pub use stats::{Percentiles, Report, Sample};

/// One running server's parts.
pub struct Node {
    /// The configuration it was started with.
    pub config: Config,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Identity, limits and content rules.
    pub guard: Arc<Guard>,
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    /// Mutes, bans, room settings, held sends and the audit log.
    moderator: Arc<Moderator>,
    /// The audit log, for the actions that change no moderation state.
    ledger: Arc<dyn ModerationStore>,
    /// This node's id in the cluster (`cluster.node_id`).
    node_id: String,
    /// Between the hub and the other nodes.
    relay: Arc<relay::Relay>,
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
    /// The other nodes' viewers.
    elsewhere: Arc<presence::Elsewhere>,
    /// The last five minutes, second by second, for the admin dashboard.
    stats: Arc<stats::Stats>,
    /// Cancelled when viewers should be told to go: after the last
    /// acknowledged danmaku has been published to the hub.
    going_away: CancellationToken,
}

/// What became of a send the guard let through.
#[derive(Debug)]
pub enum Sent {
    /// Stored (durable and handed to the hub).
    Stored(Danmaku),
    /// Held for a moderator: the room is pre-moderated.
    Held(Held),
}

/// What an import stored: how many danmaku, and the first and last id.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Danmaku stored.
    pub count: usize,
    /// The first id, if any was stored.
    pub first_id: Option<u64>,
    /// The last id, if any was stored.
    pub last_id: Option<u64>,
}

impl Imported {
    /// Counts a stored chunk, ascending by id.
    fn add(&mut self, stored: &[Danmaku]) {
        self.count += stored.len();
        self.first_id = self.first_id.or(stored.first().map(|d| d.id));
        self.last_id = stored.last().map(|d| d.id).or(self.last_id);
    }
}

/// What a new viewer learns when it joins.
pub struct Joined {
    /// Its feed.
    pub feed: Feed,
    /// The room's newest id.
    pub last_id: u64,
    /// Viewers in the room, itself included.
    pub online: usize,
}

/// The `Retry-After` of `store_full`: space returns by an operator's hand,
/// so retrying sooner only adds refused requests (the store itself notices
/// space within a second).
const STORE_FULL_RETRY_AFTER_S: u64 = 5;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => {
                ApiError::new(ErrorCode::ShuttingDown, "the server is shutting down")
            }
            StoreError::Unavailable(cause) => {
                tracing::debug!(error = %cause, "store unavailable");
                ApiError::new(
                    ErrorCode::StoreUnavailable,
                    "the database is unavailable; nothing was stored",
                )
                .with_retry_after(STORE_UNAVAILABLE_RETRY_AFTER_S)
            }
            // The store logs when the disk fills and when it has space again.
            StoreError::Full(_) => ApiError::new(
                ErrorCode::StoreFull,
                "the server's disk is full; nothing was stored",
            )
            .with_retry_after(STORE_FULL_RETRY_AFTER_S),
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::new(ErrorCode::Internal, "the store failed; nothing was stored")
            }
        }
    }
}

/// The longest a viewer waits at join for its room's subscription on the
/// broker.
const SUBSCRIBE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The `Retry-After` of `store_unavailable`: a database restart takes
/// seconds, and the store reconnects by itself.
const STORE_UNAVAILABLE_RETRY_AFTER_S: u64 = 2;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened. (The cause is the source, which the
    /// CLI prints after this, so it is not repeated here.)
    #[error("store")]
    Store(#[from] StoreError),
    /// The guard's keys or word list could not be loaded.
    #[error(transparent)]
    Guard(#[from] GuardSetupError),
    /// The broker could not be reached or set up.
    #[error("bus.url")]
    Bus(#[from] BusError),
    /// Presence could not be reached or set up on the broker.
    #[error("bus.url (presence)")]
    Presence(#[from] crate::presence::PresenceError),
}

impl Node {
    /// Opens the backends the configuration names (the embedded store and
    /// the in-process bus by default), wires store → relay → hub, loads the
    /// moderation service from the store (and relays its changes), builds
    /// the guard on it and starts reporting presence. Must be called inside
    /// a Tokio runtime.
    pub async fn start(config: Config) -> Result<Arc<Node>, StartError> {
        let node_id = node_id(&config);
        let metrics = Arc::new(Metrics::for_node(&node_id));
        let hub = Hub::new(
            config.fanout,
            std::time::Duration::from_millis(config.cluster.reorder_ms),
            metrics.clone(),
        );
        let (relay, outbox) = relay::Relay::new(node_id.clone(), hub.clone(), metrics.clone());
        let committed = relay.clone();
        let stores = backends::open_store(
            &config,
            metrics.clone(),
            Box::new(move |batch| committed.committed(batch)),
        )
        .await?;
        let broker = backends::connect_broker(&config, relay.clone()).await?;
        let announcer = relay.clone();
        let ledger = stores.ledger.clone();
        let moderator = Arc::new(
            Moderator::load(
                stores.ledger,
                config.limits.max_limiter_keys,
                Box::new(move |event| announcer.announce(event)),
            )
            .await?,
        );
        moderator.start_background();
        let shared_limits = guard::limits::shared::SharedLimits::from_config(
            &config,
            metrics.limits_fallbacks.clone(),
        )
        .await
        .map_err(GuardSetupError::from)?;
        let guard = Arc::new(Guard::new(&config, moderator.clone(), shared_limits)?);
        guard.start_background(std::time::Duration::from_millis(
            config.filter.reload_interval_ms,
        ));
        // Weak: the relay may outlive the node, and the service (with its
        // reload task) should end with the node.
        let (applier, reloader) = (Arc::downgrade(&moderator), Arc::downgrade(&moderator));
        relay.attach(
            stores.store.clone(),
            broker.bus.clone(),
            relay::ModerationSink {
                apply: Box::new(move |event| {
                    if let Some(moderator) = applier.upgrade() {
                        moderator.apply(event);
                    }
                }),
                reconnected: Box::new(move || {
                    if let Some(moderator) = reloader.upgrade() {
                        moderator.reload_soon();
                    }
                }),
            },
            outbox,
        );
        let elsewhere = Arc::new(presence::Elsewhere::default());
        presence::start(
            broker.presence.clone(),
            Arc::downgrade(&hub),
            node_id.clone(),
            std::time::Duration::from_millis(config.cluster.presence_interval_ms),
            std::time::Duration::from_secs(config.cluster.presence_ttl_s),
            elsewhere.clone(),
        );
        let stats = stats::Stats::start(metrics.clone(), &hub, elsewhere.clone());
        memory::start_trimming();
        tracing::info!(
            node_id,
            store = if config.store.url.is_some() {
                "postgres"
            } else {
                "sqlite"
            },
            bus = broker.bus.kind(),
            "node started"
        );
        Ok(Arc::new(Node {
            config,
            metrics,
            guard,
            hub,
            store: stores.store,
            moderator,
            ledger,
            node_id,
            relay,
            bus: broker.bus,
            presence: broker.presence,
            elsewhere,
            stats,
            going_away: CancellationToken::new(),
        }))
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The sender behind a request's token (or a guest without one).
    pub fn identify(&self, token: Option<&str>, ip: std::net::IpAddr) -> Result<Sender, ApiError> {
        self.guard
            .identify(token, ip)
            .inspect_err(|e| self.metrics.reject(e.code))
    }

    /// The sender behind a `key` as the ecosystem's clients send one (a
    /// bilibili client's `key`, DPlayer's `token`): those clients always
    /// send some value, usually not ours, so a value shaped like a JWT
    /// (three dot-separated base64url parts) is verified, and refused if
    /// invalid, while any other value is ignored and the caller is a guest.
    pub fn identify_key(
        &self,
        key: Option<&str>,
        ip: std::net::IpAddr,
    ) -> Result<Sender, ApiError> {
        self.identify(key.filter(|k| jwt_shaped(k)), ip)
    }

    /// Runs a send through the guard, then durably stores it, or holds it
    /// for a moderator when the room is pre-moderated.
    pub async fn send(
        &self,
        room: &str,
        sender: &Sender,
        req: SendRequest,
    ) -> Result<Sent, ApiError> {
        let started = Instant::now();
        let result = match self.guard.check_send(room, sender, req).await {
            Ok((new, Verdict::Publish)) => self
                .store
                .append(new)
                .await
                .map(Sent::Stored)
                .map_err(ApiError::from),
            Ok((new, Verdict::Hold)) => self.moderator.hold(new).await.map(Sent::Held),
            Err(e) => Err(e),
        };
        match &result {
            Ok(Sent::Stored(_)) => self
                .metrics
                .send_ack_seconds
                .observe(started.elapsed().as_secs_f64()),
            Ok(Sent::Held(_)) => {}
            Err(e) => self.metrics.reject(e.code),
        }
        result
    }

    /// Admits `sender` to `room` as a viewer; with `since`, the feed first
    /// replays every stored danmaku after that id.
    pub async fn watch(
        &self,
        room: &str,
        sender: &Sender,
        since: Option<u64>,
    ) -> Result<Joined, ApiError> {
        if let Err(e) = self.guard.admit_viewer(sender, room) {
            self.metrics.reject(e.code);
            return Err(e);
        }
        let viewer = self.hub.join(room);
        // A room new to this node may have a stale newest id (from this
        // node's own sends only): the store then says what is newest, read
        // once the node hears the room, so that whatever is committed after
        // the read comes over the broker. A broker that is away holds the
        // viewer up for `SUBSCRIBE_WAIT` at most (the room catches up from
        // the store when it returns).
        let subscribing = self.relay.serve(room);
        let fresh = subscribing.is_some() && !self.relay.solo();
        if let Some(subscribed) = subscribing.filter(|_| fresh) {
            let _ = tokio::time::timeout(SUBSCRIBE_WAIT, subscribed).await;
        }
        let stats = viewer.room().greet();
        // The store is the authority on the newest id; the hub hears of a
        // commit just after it. Ask the store when the hub does not know,
        // and whenever a client resumes, so that an id the client read from
        // the store is never taken for one from the future.
        let last_id = match (stats.last_id, since) {
            (Some(id), None) if !fresh => id,
            (hub, _) => {
                let stored = self.store.last_id(room).await?;
                viewer.room().seed_last_id(stored);
                // Another viewer joining at the same moment may have read a
                // newer id and started the room there: this one starts there
                // too, since the room hands on nothing below its start.
                let started = viewer.room().stats().last_id;
                hub.into_iter().chain(started).fold(stored, u64::max)
            }
        };
        Ok(Joined {
            feed: Feed::new(
                viewer,
                self.store.clone(),
                self.metrics.clone(),
                &self.config.fanout,
                since,
                last_id,
            ),
            last_id,
            online: stats.online,
        })
    }

    /// Danmaku of `room` after an id, ascending.
    pub async fn history_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Danmaku>, ApiError> {
        guard::check_room(room)?;
        Ok(self.store.after(room, after, limit).await?)
    }

    /// The newest danmaku of `room`: those among its newest `n` ids (fewer
    /// when some were recalled), ascending.
    pub async fn newest(&self, room: &str, n: usize) -> Result<Vec<Danmaku>, ApiError> {
        guard::check_room(room)?;
        let last = self.store.last_id(room).await?;
        let after = last.saturating_sub(u64::try_from(n).unwrap_or(u64::MAX));
        Ok(self.store.after(room, after, n).await?)
    }

    /// The newest id of `room` (0 if it has none), from the store.
    pub async fn last_id(&self, room: &str) -> Result<u64, ApiError> {
        guard::check_room(room)?;
        Ok(self.store.last_id(room).await?)
    }

    /// Stores an import into `room` for `admin`: `news` in their order, in
    /// chunks of at most `store.max_batch` (each one [`Store::append_many`]:
    /// one commit, reaching viewers like any committed danmaku), then one
    /// audit entry `import` with the counts (`dropped`: entries of the file
    /// left out). If the store fails part way, the chunks committed before
    /// stay: the audit entry and the error both say how far it got, so that
    /// nobody imports the file again blind. Keeps no more than one chunk of
    /// stored danmaku at a time.
    pub async fn import(
        &self,
        admin: &Admin,
        room: &str,
        news: Vec<NewDanmaku>,
        dropped: usize,
    ) -> Result<Imported, ApiError> {
        guard::check_room(room)?;
        let mut done = Imported::default();
        let mut failure = None;
        let mut news = news.into_iter().peekable();
        let chunk_len = self.config.store.max_batch.max(1);
        while news.peek().is_some() {
            let chunk: Vec<NewDanmaku> = news.by_ref().take(chunk_len).collect();
            match self.store.append_many(chunk).await {
                Ok(stored) => done.add(&stored),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let entry = AuditEntry {
            id: 0,
            ts: now_ms(),
            actor: admin.user().to_owned(),
            action: "import".to_owned(),
            room: Some(room.to_owned()),
            target: None,
            detail: serde_json::json!({
                "imported": done.count,
                "dropped": dropped,
                "first_id": done.first_id,
                "last_id": done.last_id,
                "failed": failure.as_ref().map(|e| e.to_string()),
            }),
        };
        let noted = self.ledger.note(entry).await;
        if let Some(e) = failure {
            tracing::error!(error = %e, room, imported = done.count, "import stopped part way");
            let mut err = ApiError::from(e);
            err.message = format!(
                "import stopped after {} danmaku (ids {:?} to {:?}, kept): {}",
                done.count, done.first_id, done.last_id, err.message
            );
            return Err(err);
        }
        noted?;
        Ok(done)
    }

    /// Danmaku of `room` by video time in `[from, to)`.
    pub async fn history_by_video_time(
        &self,
        room: &str,
        from: f64,
        to: f64,
        limit: usize,
    ) -> Result<Vec<Danmaku>, ApiError> {
        guard::check_room(room)?;
        Ok(self.store.by_video_time(room, from, to, limit).await?)
    }

    /// How many danmaku of `room` lie in each bucket of `bucket_s` seconds
    /// of video time, counted by the store (see [`Store::density`]).
    pub async fn density(
        &self,
        room: &str,
        bucket_s: f64,
        max_buckets: usize,
    ) -> Result<Density, ApiError> {
        guard::check_room(room)?;
        Ok(self.store.density(room, bucket_s, max_buckets).await?)
    }

    /// The figures of one room (also one the hub does not hold right now).
    pub async fn room(&self, room: &str) -> Result<RoomStats, ApiError> {
        guard::check_room(room)?;
        let mut stats = self
            .hub
            .stats(room)
            .unwrap_or_else(|| rooms::held_elsewhere(room.to_owned(), self.elsewhere.remote(room)));
        if stats.last_id.is_none() {
            stats.last_id = Some(self.store.last_id(room).await?);
        }
        Ok(stats)
    }

    /// One page of the cluster's active rooms, and whether more follow: the
    /// rooms this node's hub holds (with viewers here or recent sends),
    /// with the hub's figures, and the rooms with viewers on other nodes
    /// only, as presence last read them (`online_local` 0, `rate_per_s` 0:
    /// this node does not hear their danmaku, and no `last_id`). One node:
    /// the rooms the hub holds.
    pub fn rooms(&self, order: &RoomOrder, limit: usize) -> (Vec<RoomStats>, bool) {
        let admits = |room: &str| order.admits(room);
        let held = self.hub.figures(admits);
        order.page(
            rooms::merge(held, self.elsewhere.remote_where(admits)),
            limit,
        )
    }

    /// The admin dashboard's figures: the samples taken after `after`
    /// (Unix milliseconds) and the cluster's busiest rooms ([`Node::rooms`]:
    /// a room with no viewers here counts no rate).
    pub fn stats(&self, _admin: &Admin, after: i64) -> Report {
        let (rooms, _) = self.rooms(&RoomOrder::ByOnline { skip: 0 }, usize::MAX);
        Report {
            node_id: self.node_id.clone(),
            interval_s: stats::INTERVAL.as_secs(),
            samples: self.stats.since(after),
            rooms: stats::busiest(rooms, stats::BUSIEST_ROOMS),
        }
    }

    /// Why the node serves only part of its API, if it does: `store_full`
    /// while the store's disk is full (reads and viewers are served, sends
    /// are refused with that code); `bus_unavailable` while the broker is
    /// away (sends are stored and acknowledged, other nodes' viewers catch
    /// up when it returns); `presence_unavailable` while the counts of the
    /// other nodes cannot be read.
    pub fn degraded(&self) -> Option<String> {
        if self.store.is_full() {
            return Some(ErrorCode::StoreFull.as_str().to_owned());
        }
        if let Some(why) = self.bus.degraded() {
            return Some(format!("bus_unavailable: {why}"));
        }
        self.elsewhere
            .failing()
            .map(|why| format!("presence_unavailable: {why}"))
    }

    /// Resolves when viewers should finish and close ("going away").
    pub fn going_away(&self) -> &CancellationToken {
        &self.going_away
    }

    /// The last steps of shutdown: commit and publish every acknowledged
    /// send, then tell viewers to finish their queues and close.
    pub async fn drain(&self) {
        // Leave the counts now; a presence backend that is away costs at
        // most half a second here (the report then expires by itself).
        let leave = self.presence.leave(&self.node_id);
        match tokio::time::timeout(std::time::Duration::from_millis(500), leave).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot leave presence; the report expires"),
            Err(_) => tracing::debug!("presence did not answer; the report expires"),
        }
        self.store.close().await;
        self.hub.flush_all();
        self.going_away.cancel();
        // The other nodes' viewers hear of the last sends now rather than
        // at their room's next gap; a broker that is away does not hold
        // shutdown up for long.
        self.relay
            .flush(tokio::time::Instant::now() + std::time::Duration::from_secs(1))
            .await;
    }
}

/// Whether `key` is shaped like a JWT: three non-empty base64url parts
/// separated by dots. Bilibili's own keys are plain base64, without dots.
fn jwt_shaped(key: &str) -> bool {
    let parts: Vec<&str> = key.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `cluster.node_id`, or the host name and the listening port.
fn node_id(config: &Config) -> String {
    config.cluster.node_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("{host}:{}", config.listen.port())
    })
}

#[cfg(test)]
mod tests {
    use super::jwt_shaped;

    #[test]
    fn only_three_base64url_parts_look_like_a_jwt() {
        assert!(jwt_shaped("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln-_0"));
        for key in [
            "",
            "guest",
            "a.b",
            "a..c",
            "a.b.c.d",
            "a.b.c d",
            "a.b=.c",
            "秘.密.钥",
        ] {
            assert!(!jwt_shaped(key), "{key:?}");
        }
    }
}
