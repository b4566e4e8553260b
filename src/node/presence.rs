//! The node's presence loop: reports this node's viewer counts and reads
//! every other node's, so that each room's `online` counts the cluster.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::hub::Hub;
use crate::presence::{Counts, Presence};

/// The other nodes' viewer counts as last read, and whether reading works.
#[derive(Default)]
pub struct Elsewhere {
    state: Mutex<ElsewhereState>,
}

#[derive(Default)]
struct ElsewhereState {
    /// Viewers on other live nodes, by room.
    remote: Counts,
    /// Why presence could not be reported or read, while it cannot.
    failing: Option<String>,
}

impl Elsewhere {
    fn state(&self) -> std::sync::MutexGuard<'_, ElsewhereState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Viewers of `room` on the other nodes.
    pub fn remote(&self, room: &str) -> u64 {
        self.state().remote.get(room).copied().unwrap_or(0)
    }

    /// Viewers on the other nodes of each room whose name passes `keep`
    /// (rooms without any left out).
    pub fn remote_where(&self, keep: impl Fn(&str) -> bool) -> Counts {
        let state = self.state();
        state
            .remote
            .iter()
            .filter(|(room, n)| **n > 0 && keep(room))
            .map(|(room, n)| (room.clone(), *n))
            .collect()
    }

    /// Viewers of every room on the other nodes.
    pub fn remote_total(&self) -> u64 {
        self.state().remote.values().sum()
    }

    /// Why presence is failing, if it is.
    pub fn failing(&self) -> Option<String> {
        self.state().failing.clone()
    }
}

/// Reports and reads every `interval` until the node is dropped, keeping
/// each report for `ttl`.
pub fn start(
    presence: Arc<dyn Presence>,
    hub: std::sync::Weak<Hub>,
    node_id: String,
    interval: Duration,
    ttl: Duration,
    elsewhere: Arc<Elsewhere>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(hub) = hub.upgrade() else {
                return;
            };
            let local = hub.local_online();
            let result = match presence.report(&node_id, &local, ttl).await {
                Ok(()) => presence.nodes().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(nodes) => {
                    let remote = sum_others(&nodes, &node_id);
                    hub.set_remote_online(&remote);
                    let mut state = elsewhere.state();
                    if state.failing.take().is_some() {
                        tracing::info!("presence is back");
                    }
                    state.remote = remote;
                }
                Err(e) => {
                    let mut state = elsewhere.state();
                    if state.failing.is_none() {
                        tracing::warn!(error = %e, "presence unavailable: counting this node's viewers only");
                    }
                    state.failing = Some(e.to_string());
                }
            }
        }
    });
}

/// Every room's viewers on the nodes other than `me`.
fn sum_others(nodes: &HashMap<String, Counts>, me: &str) -> Counts {
    let mut sum = Counts::new();
    for (_, counts) in nodes.iter().filter(|(node, _)| node.as_str() != me) {
        for (room, n) in counts {
            *sum.entry(room.clone()).or_default() += n;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_counts_every_other_node_and_not_this_one() {
        let nodes: HashMap<String, Counts> = [
            ("a", vec![("r", 2), ("s", 1)]),
            ("b", vec![("r", 3)]),
            ("me", vec![("r", 100)]),
        ]
        .into_iter()
        .map(|(n, c)| {
            (
                n.to_owned(),
                c.into_iter().map(|(r, k)| (r.to_owned(), k)).collect(),
            )
        })
        .collect();
        let sum = sum_others(&nodes, "me");
        assert_eq!(sum["r"], 5);
        assert_eq!(sum["s"], 1);
    }
}
