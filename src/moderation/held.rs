//! Sends held for pre-moderation, per room, until approved or rejected.
//!
//! The store keeps them durably (table `held`, which also numbers them);
//! this is the in-memory index the admin API lists and takes from, loaded
//! at start-up and reloaded from the store. Each room's queue is bounded,
//! so a flood into a pre-moderated room costs at most about
//! [`MAX_HELD_PER_ROOM`] sends of memory and disk.
//!
//! Holds and settlements also arrive from other nodes, possibly twice or
//! out of order: a held id already present is not added again, and the
//! ids settled lately are remembered, so that a hold heard after its
//! settlement does not come back.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::danmaku::NewDanmaku;
use crate::error::{ApiError, ErrorCode};

/// The most sends one room holds; past it, sends are refused with
/// `held_queue_full`.
pub const MAX_HELD_PER_ROOM: usize = 1000;

/// How many settled held ids are remembered. Held ids are never reused, so
/// any bound is correct; this one outlasts any plausible delay of a hold's
/// event behind its settlement's, for the cost of 8 KiB.
const SETTLED_REMEMBERED: usize = 1024;

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

/// Every room's held sends, ascending by held id (oldest first).
#[derive(Default)]
pub(super) struct HeldQueues {
    inner: Mutex<Queues>,
}

#[derive(Default)]
struct Queues {
    rooms: HashMap<String, VecDeque<Held>>,
    /// The latest settled held ids, oldest first.
    settled: VecDeque<u64>,
}

impl Queues {
    fn insert(&mut self, held: Held) {
        if self.settled.contains(&held.held) {
            return;
        }
        let queue = self.rooms.entry(held.danmaku.room.clone()).or_default();
        let at = queue.partition_point(|h| h.held < held.held);
        if queue.get(at).is_none_or(|h| h.held != held.held) {
            queue.insert(at, held);
        }
    }

    fn take(&mut self, room: &str, held: u64) -> Option<Held> {
        let queue = self.rooms.get_mut(room)?;
        let at = queue.iter().position(|h| h.held == held)?;
        let taken = queue.remove(at);
        if queue.is_empty() {
            self.rooms.remove(room);
        }
        taken
    }
}

impl HeldQueues {
    /// The queues of the sends the store holds.
    pub(super) fn new(held: Vec<Held>) -> HeldQueues {
        let queues = HeldQueues::default();
        queues.replace(held);
        queues
    }

    /// Refuses a send to `room` when its queue is full. Checked before the
    /// store writes the send, so concurrent holds may overshoot the bound by
    /// the number in flight.
    pub(super) fn check_room(&self, room: &str) -> Result<(), ApiError> {
        if self.lock().rooms.get(room).map_or(0, VecDeque::len) >= MAX_HELD_PER_ROOM {
            return Err(ApiError::new(
                ErrorCode::HeldQueueFull,
                format!("this room already holds {MAX_HELD_PER_ROOM} sends for moderation"),
            ));
        }
        Ok(())
    }

    /// Adds a send the store holds, in its place by held id; nothing if it
    /// is already there or was settled lately. Also puts back a send taken
    /// for an approval or rejection that failed to commit.
    pub(super) fn insert(&self, held: Held) {
        self.lock().insert(held);
    }

    /// A room's held sends, oldest first.
    pub(super) fn list(&self, room: &str) -> Vec<Held> {
        self.lock()
            .rooms
            .get(room)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes a held send out of its room's queue, for an approval or a
    /// rejection: so that no other admin here settles it meanwhile.
    pub(super) fn take(&self, room: &str, held: u64) -> Option<Held> {
        self.lock().take(room, held)
    }

    /// Forgets a settled (approved or rejected) send for good: also a hold
    /// of it heard later.
    pub(super) fn settle(&self, room: &str, held: u64) {
        let mut queues = self.lock();
        queues.take(room, held);
        if !queues.settled.contains(&held) {
            if queues.settled.len() == SETTLED_REMEMBERED {
                queues.settled.pop_front();
            }
            queues.settled.push_back(held);
        }
    }

    /// Replaces every queue with the sends the store holds (a reload).
    pub(super) fn replace(&self, held: Vec<Held>) {
        let mut queues = self.lock();
        queues.rooms.clear();
        for h in held {
            queues.insert(h);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        // Every change is one insert or removal: a map a panic interrupted
        // is still whole.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::danmaku::{Color, Mode};

    fn held(room: &str, id: u64) -> Held {
        Held {
            held: id,
            ts: 0,
            danmaku: NewDanmaku {
                room: room.into(),
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

    fn ids(queues: &HeldQueues, room: &str) -> Vec<u64> {
        queues.list(room).iter().map(|h| h.held).collect()
    }

    #[test]
    fn a_restored_send_goes_back_in_its_place() {
        let queues = HeldQueues::new((1..=3).map(|id| held("r", id)).collect());
        let taken = queues.take("r", 2).unwrap();
        assert!(queues.take("r", 2).is_none(), "taken once");
        queues.insert(taken);
        assert_eq!(ids(&queues, "r"), vec![1, 2, 3]);
    }

    #[test]
    fn holds_heard_twice_late_or_after_their_settlement_leave_one_queue() {
        let queues = HeldQueues::default();
        for id in [3, 1, 3, 2, 1] {
            queues.insert(held("r", id));
        }
        assert_eq!(ids(&queues, "r"), vec![1, 2, 3], "once each, in id order");
        queues.settle("r", 2);
        queues.settle("r", 2);
        queues.settle("r", 9);
        queues.insert(held("r", 2));
        queues.insert(held("r", 9));
        assert_eq!(ids(&queues, "r"), vec![1, 3], "settled ids stay out");
        queues.replace(vec![held("s", 4), held("r", 9)]);
        assert_eq!(ids(&queues, "r"), Vec::<u64>::new());
        assert_eq!(ids(&queues, "s"), vec![4]);
    }
}
