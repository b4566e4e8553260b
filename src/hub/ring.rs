//! A room's log of recent frames, numbered so that each viewer's place in
//! it is one integer.

use std::collections::VecDeque;
use std::sync::Arc;

use super::frame::Frame;

/// The last `capacity` frames of a room. Frame numbers (sequence numbers)
/// start at 0 and never repeat; the ring holds `first..end()`.
pub(super) struct Ring {
    frames: VecDeque<Arc<Frame>>,
    /// The sequence number of `frames[0]`.
    first: u64,
    capacity: usize,
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
        }
    }

    /// The sequence number the next frame will get.
    pub(super) fn end(&self) -> u64 {
        self.first + self.frames.len() as u64
    }

    /// Appends a frame, dropping the oldest when full; returns its number.
    pub(super) fn push(&mut self, frame: Arc<Frame>) -> u64 {
        if self.frames.len() == self.capacity {
            self.frames.pop_front();
            self.first += 1;
        }
        self.frames.push_back(frame);
        self.end() - 1
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
    }
}
