//! The bus: carries what one node did to the other nodes that serve the
//! same rooms.
//!
//! The store is the truth and the bus is the fast path. A node hands its
//! own committed batches to its own hub directly (before acknowledging
//! them), and publishes them, with recalls and moderation changes, as
//! [`Event`]s for the other nodes. A node subscribes to a room's topic when
//! it starts serving the room's viewers and unsubscribes when the room
//! retires, so it hears only what it serves; the global topic (moderation)
//! is always subscribed. A broker may lose, repeat or reorder events, and
//! may be away for a while: ids are contiguous per room, so a hub notices a
//! gap and fills it from the store, and [`EventSink::reconnected`] tells the
//! node to catch up on everything it serves.
//!
//! Backends live beside this trait: `memory.rs` (one process), `redis.rs`
//! (Redis pub/sub) and `nats.rs` (NATS). The bus never assigns or rewrites
//! ids.

#[cfg(test)]
pub(crate) mod conformance;
pub mod memory;
pub mod nats;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::danmaku::Danmaku;
use crate::moderation::{Change, Held, RoomSettings};

pub use memory::{MemoryBroker, MemoryBus};
pub use nats::NatsBus;
pub use redis::RedisBus;

/// Where an event is published.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// One room's events: heard by the nodes that serve the room.
    Room(String),
    /// Events about every room: heard by every node.
    Global,
}

/// What one node tells the others.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A committed run of one room's danmaku, ascending by id.
    Committed {
        /// The danmaku, all of one room. Each keeps its `priority` (sent by
        /// an admin) across the broker, so that density control on the
        /// other nodes never thins an admin's danmaku either.
        #[serde(with = "flagged")]
        danmaku: Vec<Danmaku>,
    },
    /// Danmaku deleted from a room's history.
    Recalled {
        /// The room.
        room: String,
        /// The recalled ids.
        ids: Vec<u64>,
    },
    /// A moderation change that took effect (durably) on the origin node.
    Moderated {
        /// The change.
        change: Change,
    },
    /// A room's settings as the store holds them after a change made on
    /// the origin node; a node takes them only if their version is newer
    /// than that of the settings it holds.
    RoomSet {
        /// The settings, with their version.
        settings: RoomSettings,
    },
    /// A send held for pre-moderation on the origin node.
    Held {
        /// The held send.
        held: Held,
    },
    /// A held send was approved or rejected on the origin node.
    Settled {
        /// Its room.
        room: String,
        /// Its held id.
        held: u64,
    },
}

impl Event {
    /// The topic the event is published on.
    pub fn topic(&self) -> Topic {
        match self {
            Event::Committed { danmaku } => {
                Topic::Room(danmaku.first().map_or_else(String::new, |d| d.room.clone()))
            }
            Event::Recalled { room, .. } => Topic::Room(room.clone()),
            Event::Moderated { .. }
            | Event::RoomSet { .. }
            | Event::Held { .. }
            | Event::Settled { .. } => Topic::Global,
        }
    }
}

/// An event and the node it comes from (a node ignores its own).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The publishing node's id (`cluster.node_id`).
    pub origin: String,
    /// What happened.
    pub event: Event,
}

/// Where a bus delivers what it hears: the node.
pub trait EventSink: Send + Sync + 'static {
    /// An event from another node (or, for some brokers, this one's echo).
    /// Must not block: called on the broker's reader.
    fn receive(&self, envelope: Envelope);

    /// The broker connection came back after being lost: events published
    /// meanwhile may be lost, so the node catches up from the store.
    fn reconnected(&self);
}

/// Why the bus could not do what was asked.
#[derive(Clone, Debug, thiserror::Error)]
pub enum BusError {
    /// The broker cannot be reached right now (the bus keeps reconnecting).
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    /// The URL or the broker's answer at start-up was not usable.
    #[error("bad bus setup: {0}")]
    Setup(String),
}

/// Publishes events to the other nodes and subscribes to rooms' topics.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `envelope` on its event's topic. Never waits long: a
    /// broker that does not answer within a short timeout is an error.
    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError>;

    /// Starts delivering the events of `room` to the sink. Idempotent.
    async fn subscribe(&self, room: &str) -> Result<(), BusError>;

    /// Stops delivering the events of `room`. Idempotent.
    async fn unsubscribe(&self, room: &str) -> Result<(), BusError>;

    /// Why the bus is degraded (its broker is away), if it is.
    fn degraded(&self) -> Option<String>;

    /// The backend's name for logs and `/healthz`: `memory`, `redis`, `nats`.
    fn kind(&self) -> &'static str;

    /// Whether no other node can hear this bus (the in-process bus of a
    /// single server): the node then has nobody to tell and nobody else's
    /// commits to catch up on. A broker is never alone: nodes may join it
    /// at any time.
    fn alone(&self) -> bool {
        false
    }
}

/// A committed danmaku on the broker's wire: [`Danmaku`]'s own fields and
/// its `priority`, which viewers never see and history does not keep.
mod flagged {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::danmaku::Danmaku;

    #[derive(Serialize)]
    struct Out<'a> {
        #[serde(flatten)]
        danmaku: &'a Danmaku,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        priority: bool,
    }

    #[derive(Deserialize)]
    struct In {
        #[serde(flatten)]
        danmaku: Danmaku,
        #[serde(default)]
        priority: bool,
    }

    pub fn serialize<S: Serializer>(danmaku: &[Danmaku], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(danmaku.iter().map(|d| Out {
            danmaku: d,
            priority: d.priority,
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Danmaku>, D::Error> {
        let wire = Vec::<In>::deserialize(d)?;
        Ok(wire
            .into_iter()
            .map(
                |In {
                     mut danmaku,
                     priority,
                 }| {
                    danmaku.priority = priority;
                    danmaku
                },
            )
            .collect())
    }
}

/// A shared bus.
pub type SharedBus = Arc<dyn Bus>;

/// How long a broker backend waits before its `attempt`th reconnection
/// (1-based): 100 ms, doubling, at most 2 s, so that a broker restart is
/// noticed within about 2 s without hammering a broker that stays away.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.saturating_sub(1).min(5)))
        .min(MAX_BACKOFF)
}

/// The longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The longest a publish, a subscription change or a reconnection attempt
/// waits for the broker before it is an error.
const BROKER_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest `connect` waits for the broker at start-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `url` as it may appear in logs and errors: without a user or password.
fn shown(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => url.to_owned(),
        },
        None => url
            .rsplit_once('@')
            .map_or(url, |(_, host)| host)
            .to_owned(),
    }
}
