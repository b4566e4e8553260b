//! The in-process bus: one process's nodes share a [`MemoryBroker`].
//!
//! A single server has one node, so its broker has no one else to tell.
//! Several nodes in one process (tests) share one broker, which delivers
//! each event to the other nodes subscribed to its topic, synchronously.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Bus, BusError, Envelope, EventSink, Topic};

/// Nodes of one process and their subscriptions.
#[derive(Default)]
pub struct MemoryBroker {
    nodes: Mutex<Vec<Member>>,
}

struct Member {
    id: usize,
    sink: Arc<dyn EventSink>,
    rooms: HashSet<String>,
}

impl MemoryBroker {
    /// A broker with no nodes.
    pub fn new() -> Arc<MemoryBroker> {
        Arc::new(MemoryBroker::default())
    }

    fn members(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One node's connection to a [`MemoryBroker`].
pub struct MemoryBus {
    broker: Arc<MemoryBroker>,
    id: usize,
}

impl MemoryBus {
    /// Connects a node whose events go to `sink` to `broker`.
    pub fn connect(broker: Arc<MemoryBroker>, sink: Arc<dyn EventSink>) -> MemoryBus {
        let mut members = broker.members();
        let id = members.iter().map(|m| m.id + 1).max().unwrap_or(0);
        members.push(Member {
            id,
            sink,
            rooms: HashSet::new(),
        });
        drop(members);
        MemoryBus { broker, id }
    }
}

impl Drop for MemoryBus {
    fn drop(&mut self) {
        self.broker.members().retain(|m| m.id != self.id);
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError> {
        let topic = envelope.event.topic();
        let sinks: Vec<Arc<dyn EventSink>> = self
            .broker
            .members()
            .iter()
            .filter(|m| m.id != self.id)
            .filter(|m| match &topic {
                Topic::Global => true,
                Topic::Room(room) => m.rooms.contains(room),
            })
            .map(|m| m.sink.clone())
            .collect();
        for sink in sinks {
            sink.receive(envelope.clone());
        }
        Ok(())
    }

    async fn subscribe(&self, room: &str) -> Result<(), BusError> {
        self.with_rooms(|rooms| {
            rooms.insert(room.to_owned());
        });
        Ok(())
    }

    async fn unsubscribe(&self, room: &str) -> Result<(), BusError> {
        self.with_rooms(|rooms| {
            rooms.remove(room);
        });
        Ok(())
    }

    fn degraded(&self) -> Option<String> {
        None
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn alone(&self) -> bool {
        self.broker.members().len() <= 1
    }
}

impl MemoryBus {
    fn with_rooms(&self, f: impl FnOnce(&mut HashSet<String>)) {
        if let Some(m) = self.broker.members().iter_mut().find(|m| m.id == self.id) {
            f(&mut m.rooms);
        }
    }
}
