//! Chooses and opens a node's backends from its configuration: the store
//! (`store.url`), the bus and presence (`bus.url`).

use std::sync::Arc;

use super::StartError;
use crate::bus::{Bus, EventSink, MemoryBroker, MemoryBus, NatsBus, RedisBus};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::presence::{MemoryPresence, NatsPresence, Presence, RedisPresence};
use crate::store::{CommitListener, ModerationStore, PostgresStore, SqliteStore, Store};

/// A store as both of its traits.
pub struct Stores {
    /// History.
    pub store: Arc<dyn Store>,
    /// Moderation's durable state.
    pub ledger: Arc<dyn ModerationStore>,
}

fn both<S: Store + ModerationStore>(store: S) -> Stores {
    let store = Arc::new(store);
    Stores {
        store: store.clone(),
        ledger: store,
    }
}

/// Opens the store `config.store.url` names, or the embedded one.
pub async fn open_store(
    config: &Config,
    metrics: Arc<Metrics>,
    listener: CommitListener,
) -> Result<Stores, StartError> {
    match &config.store.url {
        None => Ok(both(SqliteStore::open(
            &config.data,
            &config.store,
            metrics,
            listener,
        )?)),
        Some(url) => Ok(both(
            PostgresStore::open(url, &config.store, metrics, listener).await?,
        )),
    }
}

/// The bus and presence `config.bus.url` names, or the in-process ones.
pub struct Broker {
    /// Carries events between nodes.
    pub bus: Arc<dyn Bus>,
    /// Counts viewers across nodes.
    pub presence: Arc<dyn Presence>,
}

/// Connects to the broker `config.bus.url` names, or makes the in-process
/// one. An unreachable broker at start is an error: a node that cannot
/// hear the others would serve stale rooms without saying so.
pub async fn connect_broker(
    config: &Config,
    sink: Arc<dyn EventSink>,
) -> Result<Broker, StartError> {
    let ns = config.bus.namespace.as_str();
    match config.bus.url.as_deref() {
        None => Ok(Broker {
            bus: Arc::new(MemoryBus::connect(MemoryBroker::new(), sink)),
            presence: Arc::new(MemoryPresence::new()),
        }),
        Some(url) if url.starts_with("redis://") => Ok(Broker {
            bus: Arc::new(RedisBus::connect(url, ns, sink).await?),
            presence: Arc::new(RedisPresence::connect(url, ns).await?),
        }),
        Some(url) => Ok(Broker {
            bus: Arc::new(NatsBus::connect(url, ns, sink).await?),
            presence: Arc::new(NatsPresence::connect(url, ns).await?),
        }),
    }
}
