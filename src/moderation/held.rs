//! Sends held for pre-moderation, per room, until approved or rejected.
//!
//! The store keeps them durably (table `held`, which also numbers them);
//! this is the in-memory index the admin API lists and takes from, loaded
//! at start-up. Each room's queue is bounded, so a flood into a
//! pre-moderated room costs at most about [`MAX_HELD_PER_ROOM`] sends of
//! memory and disk.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::danmaku::NewDanmaku;
use crate::error::{ApiError, ErrorCode};

/// The most sends one room holds; past it, sends are refused with
/// `held_queue_full`.
pub const MAX_HELD_PER_ROOM: usize = 1000;

/// A held send.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// Its held id, given by the store and never reused.
    pub held: u64,
    /// When it was held, in ms since the Unix epoch.
    pub ts: i64,
    /// The send as the guard passed it (sender's user and name included).
    #[serde(flatten)]
    pub danmaku: NewDanmaku,
}

/// Every room's held sends, oldest first.
#[derive(Default)]
pub struct HeldQueues {
    rooms: Mutex<HashMap<String, VecDeque<Held>>>,
}

impl HeldQueues {
    /// The queues of the sends the store holds (ascending by held id).
    pub fn new(held: Vec<Held>) -> HeldQueues {
        let queues = HeldQueues::default();
        for h in held {
            queues.insert(h);
        }
        queues
    }

    /// Refuses a send to `room` when its queue is full. Checked before the
    /// store writes the send, so concurrent holds may overshoot the bound by
    /// the number in flight.
    pub fn check_room(&self, room: &str) -> Result<(), ApiError> {
        if self.lock().get(room).map_or(0, VecDeque::len) >= MAX_HELD_PER_ROOM {
            return Err(ApiError::new(
                ErrorCode::HeldQueueFull,
                format!("this room already holds {MAX_HELD_PER_ROOM} sends for moderation"),
            ));
        }
        Ok(())
    }

    /// Adds a send the store now holds.
    pub fn insert(&self, held: Held) {
        self.lock()
            .entry(held.danmaku.room.clone())
            .or_default()
            .push_back(held);
    }

    /// A room's held sends, oldest first.
    pub fn list(&self, room: &str) -> Vec<Held> {
        self.lock()
            .get(room)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes a held send out of its room's queue.
    pub fn take(&self, room: &str, held: u64) -> Option<Held> {
        let mut rooms = self.lock();
        let queue = rooms.get_mut(room)?;
        let at = queue.iter().position(|h| h.held == held)?;
        let taken = queue.remove(at);
        if queue.is_empty() {
            rooms.remove(room);
        }
        taken
    }

    /// Puts a taken send back in its place (its approval or rejection
    /// failed to commit), so the queue stays oldest first.
    pub fn restore(&self, held: Held) {
        let mut rooms = self.lock();
        let queue = rooms.entry(held.danmaku.room.clone()).or_default();
        let at = queue.partition_point(|h| h.held < held.held);
        queue.insert(at, held);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Held>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::danmaku::{Color, Mode};

    fn held(id: u64) -> Held {
        Held {
            held: id,
            ts: 0,
            danmaku: NewDanmaku {
                room: "r".into(),
                user: "u".into(),
                name: "n".into(),
                text: id.to_string(),
                mode: Mode::Scroll,
                color: Color(0),
                size: 25,
                vt: None,
                priority: false,
            },
        }
    }

    #[test]
    fn a_restored_send_goes_back_in_its_place() {
        let queues = HeldQueues::new((1..=3).map(held).collect());
        let taken = queues.take("r", 2).unwrap();
        assert!(queues.take("r", 2).is_none(), "taken once");
        queues.restore(taken);
        let ids: Vec<u64> = queues.list("r").iter().map(|h| h.held).collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }
}
