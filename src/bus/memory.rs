//! The in-process bus: publishing is a direct call into the local hub.

use std::sync::{Arc, RwLock};

use super::{BatchSink, Bus};
use crate::danmaku::Danmaku;

/// A bus for a single node: no broker, no copy, no extra hop.
#[derive(Default)]
pub struct MemoryBus {
    sinks: RwLock<Vec<Arc<dyn BatchSink>>>,
}

impl MemoryBus {
    /// A bus with no subscribers yet.
    pub fn new() -> MemoryBus {
        MemoryBus::default()
    }
}

impl Bus for MemoryBus {
    fn publish(&self, batch: &[Danmaku]) {
        for sink in self.sinks.read().expect("bus lock").iter() {
            sink.deliver(batch);
        }
    }

    fn subscribe(&self, sink: Arc<dyn BatchSink>) {
        self.sinks.write().expect("bus lock").push(sink);
    }
}
