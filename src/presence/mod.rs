//! Presence: how many viewers each node has in each room, cluster-wide.
//!
//! Every node reports its own counts (the rooms where it has viewers) every
//! few seconds with a time to live, and reads every live node's report. A
//! node that stops reporting (killed, cut off) drops out of every count
//! when its report expires. A room's online count is the node's own live
//! count plus the other live nodes' reported counts.
//!
//! Backends live beside this trait, next to the bus they share a broker
//! with: `memory.rs` (one process), `redis.rs`, `nats.rs` (a KV bucket).

pub mod memory;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use memory::MemoryPresence;

/// One node's viewer count per room (rooms with none are left out).
pub type Counts = HashMap<String, u64>;

/// Why presence could not be reported or read.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PresenceError {
    /// The backend cannot be reached right now.
    #[error("presence is unavailable: {0}")]
    Unavailable(String),
}

/// The cluster's viewer counts.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Replaces `node`'s report with `counts`, kept for `ttl` unless
    /// reported again.
    async fn report(&self, node: &str, counts: &Counts, ttl: Duration)
        -> Result<(), PresenceError>;

    /// Every node's unexpired report, by node id.
    async fn nodes(&self) -> Result<HashMap<String, Counts>, PresenceError>;

    /// Removes `node`'s report at once (a clean shutdown).
    async fn leave(&self, node: &str) -> Result<(), PresenceError>;
}

/// A shared presence backend.
pub type SharedPresence = Arc<dyn Presence>;
