//! Sends held for pre-moderation, per room, until approved or rejected.
//!
//! Kept in memory: a restart drops every held send (their senders were
//! told `held`, never `ack`, so nothing acknowledged is lost). Each room's
//! queue is bounded, so a flood into a pre-moderated room costs at most
//! [`MAX_HELD_PER_ROOM`] sends of memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::danmaku::{now_ms, NewDanmaku};
use crate::error::{ApiError, ErrorCode};

/// The most sends one room holds; past it, sends are refused with
/// `held_queue_full`.
pub const MAX_HELD_PER_ROOM: usize = 1000;

/// A held send.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Held {
    /// Its held id, unique in this process.
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
    next: AtomicU64,
    rooms: Mutex<HashMap<String, VecDeque<Held>>>,
}

impl HeldQueues {
    /// Holds a send; refuses it when its room's queue is full.
    pub fn hold(&self, danmaku: NewDanmaku) -> Result<Held, ApiError> {
        let mut rooms = self.lock();
        let queue = rooms.entry(danmaku.room.clone()).or_default();
        if queue.len() >= MAX_HELD_PER_ROOM {
            return Err(ApiError::new(
                ErrorCode::HeldQueueFull,
                format!("this room already holds {MAX_HELD_PER_ROOM} sends for moderation"),
            ));
        }
        let held = Held {
            held: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            ts: now_ms(),
            danmaku,
        };
        queue.push_back(held.clone());
        Ok(held)
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

    /// Puts a taken send back at the front (its approval failed to store).
    pub fn restore(&self, held: Held) {
        self.lock()
            .entry(held.danmaku.room.clone())
            .or_default()
            .push_front(held);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Held>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}
