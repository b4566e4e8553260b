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
//! Every one passes the suite in `conformance.rs`.

#[cfg(test)]
pub(crate) mod conformance;
pub mod memory;
pub mod nats;
pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use memory::MemoryPresence;
pub use nats::NatsPresence;
pub use redis::RedisPresence;

/// One node's viewer count per room (rooms with none are left out).
pub type Counts = HashMap<String, u64>;

/// Why presence could not be reported or read.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PresenceError {
    /// The backend cannot be reached right now.
    #[error("presence is unavailable: {0}")]
    Unavailable(String),
    /// The backend's address or namespace cannot be used (at connect).
    #[error("presence is misconfigured: {0}")]
    Config(String),
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

/// How long one report, read or leave may take. A node reports every 2 s
/// by default: a call that hangs longer would only hold up the next one,
/// so an unreachable broker is reported as unavailable instead.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long connecting to a broker at start may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one backend call, or gives up after [`CALL_TIMEOUT`]; `broker`
/// names the broker in the error ("Redis at 10.0.0.5:6379").
async fn bounded<T>(
    broker: &str,
    call: impl Future<Output = Result<T, PresenceError>>,
) -> Result<T, PresenceError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(PresenceError::Unavailable(format!(
                "{broker} did not answer within {CALL_TIMEOUT:?}"
            )))
        })
}

/// A report as the brokers store it: JSON `{"room": count, ...}`.
fn encode(counts: &Counts) -> Vec<u8> {
    serde_json::to_vec(counts).expect("a map of strings to integers always serialises")
}

/// A stored report, or `None` (logged) if another writer left something
/// that is not one: one bad value must not hide every other node's counts.
fn decode(node: &str, value: &[u8]) -> Option<Counts> {
    match serde_json::from_slice(value) {
        Ok(counts) => Some(counts),
        Err(e) => {
            tracing::warn!(node, error = %e, "presence: ignoring a report that is not JSON counts");
            None
        }
    }
}
