//! Presence within one process: the reports are a map.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Counts, Presence, PresenceError};

/// Reports of the nodes of one process, with their expiry.
#[derive(Default)]
pub struct MemoryPresence {
    reports: Mutex<HashMap<String, (Counts, Instant)>>,
}

impl MemoryPresence {
    /// No reports yet.
    pub fn new() -> MemoryPresence {
        MemoryPresence::default()
    }

    fn reports(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Counts, Instant)>> {
        self.reports.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn report(
        &self,
        node: &str,
        counts: &Counts,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let expires = Instant::now() + ttl;
        self.reports()
            .insert(node.to_owned(), (counts.clone(), expires));
        Ok(())
    }

    async fn nodes(&self) -> Result<HashMap<String, Counts>, PresenceError> {
        let now = Instant::now();
        let mut reports = self.reports();
        reports.retain(|_, (_, expires)| *expires > now);
        Ok(reports
            .iter()
            .map(|(node, (counts, _))| (node.clone(), counts.clone()))
            .collect())
    }

    async fn leave(&self, node: &str) -> Result<(), PresenceError> {
        self.reports().remove(node);
        Ok(())
    }
}
