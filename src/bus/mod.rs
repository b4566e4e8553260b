//! The bus: carries committed danmaku from the store to every node's hub.
//!
//! On one node the bus is a function call ([`MemoryBus`]). Across nodes a
//! broker backend (Redis, NATS: later issues) publishes each committed batch
//! and every node's hub subscribes. Ids are assigned by the store before a
//! batch reaches the bus, so the bus only has to keep each room's batches in
//! order; it never assigns or rewrites ids.

pub mod memory;

use std::sync::Arc;

use crate::danmaku::Danmaku;

pub use memory::MemoryBus;

/// Where the bus delivers: a node's hub.
pub trait BatchSink: Send + Sync + 'static {
    /// Takes a committed batch, ascending by id within each room. Must not
    /// block: it is called on the store's writer or a broker's reader.
    fn deliver(&self, batch: &[Danmaku]);
}

/// Publishes committed batches to every subscribed node.
pub trait Bus: Send + Sync + 'static {
    /// Publishes a committed batch. Called in commit order.
    fn publish(&self, batch: &[Danmaku]);

    /// Makes `sink` receive every batch published from now on.
    fn subscribe(&self, sink: Arc<dyn BatchSink>);
}
