//! A room's log of recent frames, numbered so that each viewer's place in
//! it is one integer.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::frame::Frame;

/// At most the last `capacity` frames of a room (fewer once the room has
/// released those every viewer took). Frame numbers (sequence numbers)
/// start at 0 and never repeat; the ring holds `first..end()`.
pub(super) struct Ring {
    frames: VecDeque<Arc<Frame>>,
    /// The sequence number of `frames[0]`.
    first: u64,
    capacity: usize,
    /// The newest danmaku id of any frame pushed so far (0: none yet).
    /// Frames are pushed in id order, so every later danmaku frame starts
    /// above it.
    last_id: u64,
}

/// What a viewer finds at its place in the ring.
pub(super) enum Slot {
    /// The frame at that place.
    Frame(Arc<Frame>),
    /// Nothing yet: the viewer is level with the room.
    Empty,
    /// The ring has moved past the place; the oldest frame it still holds
    /// has this number.
    Gone {
        /// The oldest sequence number still held.
        oldest: u64,
    },
}

impl Ring {
    pub(super) fn new(capacity: usize) -> Ring {
        Ring {
            frames: VecDeque::with_capacity(capacity.min(64)),
            first: 0,
            capacity: capacity.max(1),
            last_id: 0,
        }
    }

    /// The sequence number the next frame will get.
    pub(super) fn end(&self) -> u64 {
        self.first + self.frames.len() as u64
    }

    /// The newest danmaku id pushed so far (0: none yet).
    pub(super) fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Appends a frame, dropping the oldest when full; returns its number.
    pub(super) fn push(&mut self, frame: Arc<Frame>) -> u64 {
        if let Some((_, last)) = frame.id_range() {
            self.last_id = self.last_id.max(last);
        }
        if self.frames.len() == self.capacity {
            self.frames.pop_front();
            self.first += 1;
        }
        self.frames.push_back(frame);
        self.end() - 1
    }

    /// Forgets the frames before `seq`: no viewer needs them any more.
    pub(super) fn release_before(&mut self, seq: u64) {
        while self.first < seq && self.frames.pop_front().is_some() {
            self.first += 1;
        }
    }

    /// The frame numbered `seq`.
    pub(super) fn get(&self, seq: u64) -> Slot {
        if seq < self.first {
            return Slot::Gone { oldest: self.first };
        }
        match self.frames.get((seq - self.first) as usize) {
            Some(f) => Slot::Frame(f.clone()),
            None => Slot::Empty,
        }
    }
}

/// A pass's copy of the newest frames of a ring. Thousands of seats at the
/// same place then cost one ring lock, not one each.
#[derive(Default)]
pub(super) struct Tail {
    /// The sequence number of `frames[0]`.
    first: u64,
    frames: Vec<Arc<Frame>>,
}

impl Tail {
    /// The frames from `seq` on. Refreshed from `ring` when this copy does
    /// not reach `end` (the ring's end as last published). `Err(oldest)`
    /// when the ring has already dropped `seq`.
    pub(super) fn from(
        &mut self,
        seq: u64,
        end: u64,
        ring: &Mutex<Ring>,
    ) -> Result<&[Arc<Frame>], u64> {
        let held = self.first + self.frames.len() as u64;
        if seq < self.first || held < end {
            let ring = ring.lock().unwrap_or_else(|e| e.into_inner());
            if seq < ring.first {
                return Err(ring.first);
            }
            let skip = (seq - ring.first) as usize;
            self.first = seq;
            self.frames.clear();
            self.frames.extend(ring.frames.iter().skip(skip).cloned());
        }
        let skip = (seq - self.first) as usize;
        Ok(self.frames.get(skip..).unwrap_or_default())
    }

    /// The frames numbered `range`, which [`Tail::from`] returned last.
    pub(super) fn get(&self, range: Range<u64>) -> &[Arc<Frame>] {
        let start = (range.start - self.first) as usize;
        &self.frames[start..start + (range.end - range.start) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Arc<Frame> {
        Arc::new(Frame::online(n))
    }

    #[test]
    fn numbers_frames_and_forgets_the_oldest() {
        let mut ring = Ring::new(2);
        assert!(matches!(ring.get(0), Slot::Empty));
        assert_eq!(ring.push(frame(1)), 0);
        assert_eq!(ring.push(frame(2)), 1);
        assert_eq!(ring.push(frame(3)), 2);
        assert_eq!(ring.end(), 3);
        assert!(matches!(ring.get(0), Slot::Gone { oldest: 1 }));
        assert!(matches!(ring.get(2), Slot::Frame(_)));
        assert!(matches!(ring.get(3), Slot::Empty));
        ring.release_before(2);
        assert!(matches!(ring.get(1), Slot::Gone { oldest: 2 }));
        assert!(matches!(ring.get(2), Slot::Frame(_)));
        ring.release_before(10);
        assert_eq!(ring.end(), 3, "numbers go on where they were");
        assert!(matches!(ring.get(3), Slot::Empty));
    }

    #[test]
    fn a_tail_follows_the_ring_and_reports_what_it_dropped() {
        let ring = Mutex::new(Ring::new(3));
        let mut tail = Tail::default();
        assert_eq!(tail.from(0, 0, &ring).unwrap().len(), 0);
        for n in 0..2 {
            ring.lock().unwrap().push(frame(n));
        }
        assert_eq!(tail.from(0, 2, &ring).unwrap().len(), 2);
        assert_eq!(tail.from(1, 2, &ring).unwrap().len(), 1);
        for n in 2..5 {
            ring.lock().unwrap().push(frame(n));
        }
        // Frames 0 and 1 are gone from the ring; 2..5 remain.
        assert_eq!(tail.from(1, 5, &ring).unwrap_err(), 2);
        let frames = tail.from(3, 5, &ring).unwrap();
        assert_eq!(frames.len(), 2);
        assert!(Arc::ptr_eq(
            &tail.get(4..5)[0],
            &ring.lock().unwrap().frames[2]
        ));
    }
}
