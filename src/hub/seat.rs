//! A viewer's seat in a room: its place in the ring, and the way the room
//! reaches it.
//!
//! A viewer is in one of two modes. Awake, its own task takes frames from
//! the ring ([`Viewer::recv`]) and writes them. Parked, its task has nothing
//! to write and is level with the room; then the room's flusher writes each
//! new frame straight to the viewer's socket through its [`DirectSink`], and
//! the task sleeps. Waking 10,000 tasks per frame costs as much as the
//! writes themselves; writing from where the frame is costs only the writes.
//! The flusher hands the seat back (wakes the task) as soon as a socket
//! would block, so a slow viewer is handled by its own task, with its own
//! queue, exactly as before.

use std::io::IoSlice;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, Bytes};
use tokio::sync::Notify;

use super::frame::Frame;
use super::ring::{Slot, Tail};
use super::room::Room;

/// Frames one direct write takes at most.
const MAX_SLICES: usize = 64;

/// A socket the room's flusher may write to while its viewer is parked.
/// The transport implements it; the hub only hands it frames.
pub trait DirectSink: Send + Sync {
    /// The bytes of `frame` this sink's protocol sends.
    fn bytes<'f>(&self, frame: &'f Frame) -> &'f Bytes;

    /// Writes as much of `bufs` as the socket takes now, without blocking.
    fn try_write(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize>;
}

/// A viewer's shared state: written by its own task and by the flusher.
pub(super) struct Seat {
    state: Mutex<SeatState>,
    /// Wakes the viewer's task: a frame arrived while it waited, or the
    /// flusher handed a parked viewer back.
    wake: Notify,
    /// The viewer left; the room drops the seat at its next pass.
    pub(super) gone: AtomicBool,
    /// This viewer observes the fan-out latency histogram (a sample).
    pub(super) sampled: bool,
}

struct SeatState {
    /// The sequence number of the next frame the viewer needs.
    next: u64,
    /// The flusher writes for the viewer.
    parked: bool,
    /// The viewer's task waits for the ring; wake it on the next frame.
    waiting: bool,
    /// The unwritten end of what the flusher was writing when the socket
    /// filled up: the viewer's task writes it before anything else.
    leftover: Vec<Bytes>,
    /// The newest danmaku id the flusher wrote for the viewer.
    last_id: Option<u64>,
    /// Where the flusher writes. Dropped when the viewer leaves, so that a
    /// pass still holding the seat does not keep the socket open.
    sink: Option<Arc<dyn DirectSink>>,
}

impl Seat {
    pub(super) fn new(next: u64, sampled: bool) -> Seat {
        Seat {
            state: Mutex::new(SeatState {
                next,
                parked: false,
                waiting: false,
                leftover: Vec::new(),
                last_id: None,
                sink: None,
            }),
            wake: Notify::new(),
            gone: AtomicBool::new(false),
            sampled,
        }
    }

    fn state(&self) -> MutexGuard<'_, SeatState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by a flusher's pass: writes what the ring holds past the
    /// viewer's place to a parked viewer's socket, or wakes a viewer whose
    /// task waits. Returns the frames taken for the viewer (written, or
    /// left over for its task to finish), as numbers into `tail`. Lowers
    /// `needed` to the oldest frame the viewer still needed when served.
    pub(super) fn serve(
        &self,
        room: &Room,
        tail: &mut Tail,
        needed: &mut u64,
    ) -> Option<Range<u64>> {
        let mut s = self.state();
        *needed = (*needed).min(s.next);
        let end = room.ring_end();
        if s.next >= end {
            return None;
        }
        if !s.parked {
            if s.waiting {
                s.waiting = false;
                drop(s);
                self.wake.notify_one();
            }
            return None;
        }
        let Some(sink) = s.sink.clone() else {
            // The viewer left while this pass held its seat.
            self.hand_back(s);
            return None;
        };
        let Ok(frames) = tail.from(s.next, end, room.ring_lock()) else {
            // Behind the ring: the viewer's task tells it what it lost.
            self.hand_back(s);
            return None;
        };
        let frames = &frames[..frames.len().min(MAX_SLICES)];
        let more = room.ring_end() > s.next + frames.len() as u64;
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        for (slot, frame) in slices.iter_mut().zip(frames) {
            *slot = IoSlice::new(sink.bytes(frame));
        }
        let slices = &slices[..frames.len()];
        let total: usize = slices.iter().map(|s| s.len()).sum();
        // Frames with nothing for this wire (a Bilibili viewer's share of a
        // frame density control emptied) are taken without a write: a
        // zero-length write would read as a full socket and wake the task.
        let written = if total == 0 {
            0
        } else {
            match sink.try_write(slices) {
                // Full (or broken): the task finds out which on its own write.
                Ok(0) | Err(_) => {
                    self.hand_back(s);
                    return None;
                }
                Ok(w) => w,
            }
        };
        if written < total {
            // Keep the rest, in order, for the viewer's task.
            let mut skip = written;
            for frame in frames {
                let mut b = sink.bytes(frame).clone();
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                b.advance(skip);
                skip = 0;
                s.leftover.push(b);
            }
        }
        let taken = s.next..s.next + frames.len() as u64;
        s.next = taken.end;
        if let Some(id) = frames.iter().rev().find_map(|f| f.id_range()).map(|r| r.1) {
            s.last_id = Some(id);
        }
        if written < total || more {
            self.hand_back(s);
        }
        Some(taken)
    }

    /// Gives a parked viewer back to its task.
    fn hand_back(&self, mut s: MutexGuard<'_, SeatState>) {
        s.parked = false;
        drop(s);
        self.wake.notify_one();
    }
}

/// A viewer's place in a room. Dropping it leaves the room.
pub struct Viewer {
    room: Arc<Room>,
    seat: Arc<Seat>,
}

/// What a viewer's place in the ring holds.
#[derive(Debug)]
pub enum Received {
    /// The next frame.
    Frame(Arc<Frame>),
    /// The viewer fell behind the ring by this many frames, which are gone.
    Lagged(u64),
}

/// What a parked viewer's task takes back when it wakes.
pub struct Unparked {
    /// Bytes the flusher could not finish writing: they go first.
    pub leftover: Vec<Bytes>,
    /// The newest danmaku id the flusher wrote while the viewer was parked.
    pub last_id: Option<u64>,
}

impl Viewer {
    pub(super) fn new(room: Arc<Room>, seat: Arc<Seat>) -> Viewer {
        Viewer { room, seat }
    }

    /// The room watched.
    pub fn room(&self) -> &Arc<Room> {
        &self.room
    }

    /// Whether this viewer observes the fan-out latency histogram.
    pub fn sampled(&self) -> bool {
        self.seat.sampled
    }

    /// Lets the room's flusher write to `sink` while the viewer is parked.
    pub fn attach(&self, sink: Arc<dyn DirectSink>) {
        self.seat.state().sink = Some(sink);
    }

    fn take(&self, s: &mut SeatState) -> Option<Received> {
        match self.room.ring_get(s.next) {
            Slot::Frame(f) => {
                s.next += 1;
                Some(Received::Frame(f))
            }
            Slot::Empty => None,
            Slot::Gone { oldest } => {
                let lost = oldest - s.next;
                s.next = oldest;
                Some(Received::Lagged(lost))
            }
        }
    }

    /// Waits for the next frame. Cancel-safe. Not for a parked viewer.
    pub async fn recv(&mut self) -> Received {
        loop {
            let notified = self.seat.wake.notified();
            {
                let mut s = self.seat.state();
                debug_assert!(!s.parked);
                if let Some(r) = self.take(&mut s) {
                    s.waiting = false;
                    return r;
                }
                // Set before the ring is read again by the flusher's pass,
                // which clears it and wakes this task.
                s.waiting = true;
            }
            notified.await;
        }
    }

    /// The next frame if one is ready.
    pub fn try_recv(&mut self) -> Option<Received> {
        let mut s = self.seat.state();
        self.take(&mut s)
    }

    /// Parks the viewer if it is level with the room and can be written to
    /// directly; returns whether it did. Its task must then write nothing
    /// until [`Viewer::unpark`].
    ///
    /// `settled` is the newest id the viewer has, or was told it has (its
    /// feed's cursor). Level means level in ids as well as in the ring: the
    /// ring must already hold a frame up to `settled`. A viewer joins with
    /// the room's newest id, which may still be pending, its frame not yet
    /// made; that frame then comes after the seat's place, and only the
    /// viewer's own feed knows to skip it. The flusher writes whole frames
    /// blindly, so the viewer stays awake until that frame has gone by.
    pub fn park(&mut self, settled: u64) -> bool {
        let mut s = self.seat.state();
        if s.sink.is_none() || !self.room.is_level(s.next, settled) {
            return false;
        }
        s.parked = true;
        s.waiting = false;
        true
    }

    /// Waits until the flusher hands a parked viewer back. Cancel-safe.
    pub async fn handed_back(&self) {
        loop {
            let notified = self.seat.wake.notified();
            if !self.seat.state().parked {
                return;
            }
            notified.await;
        }
    }

    /// Takes the viewer back from the flusher, so that its task may write.
    pub fn unpark(&mut self) -> Unparked {
        let mut s = self.seat.state();
        s.parked = false;
        Unparked {
            leftover: std::mem::take(&mut s.leftover),
            last_id: s.last_id.take(),
        }
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.seat.gone.store(true, Ordering::Relaxed);
        self.seat.state().sink = None;
        self.room.leave();
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;
    use crate::config::FanoutConfig;
    use crate::danmaku::Danmaku;
    use crate::metrics::Metrics;

    /// A socket that takes `room` more bytes, then would block. On its
    /// first write it runs `on_write` (to act during a pass).
    struct Socket {
        room: Mutex<usize>,
        got: Mutex<Vec<u8>>,
        on_write: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl Socket {
        fn open() -> Arc<Socket> {
            Arc::new(Socket {
                room: Mutex::new(usize::MAX),
                got: Mutex::new(Vec::new()),
                on_write: Mutex::new(None),
            })
        }

        /// The danmaku ids in the frames written so far.
        fn ids(&self) -> Vec<u64> {
            let got = self.got.lock().unwrap();
            let text = String::from_utf8_lossy(&got);
            text.match_indices(r#"{"id":"#)
                .map(|(at, key)| {
                    let digits = text[at + key.len()..]
                        .split(|c: char| !c.is_ascii_digit())
                        .next()
                        .unwrap();
                    digits.parse().unwrap()
                })
                .collect()
        }
    }

    impl DirectSink for Socket {
        fn bytes<'f>(&self, frame: &'f Frame) -> &'f Bytes {
            frame.ws()
        }

        fn try_write(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if let Some(act) = self.on_write.lock().unwrap().take() {
                act();
            }
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(*room - n);
                self.got.lock().unwrap().extend_from_slice(&b[..take]);
                n += take;
            }
            *room -= n;
            Ok(n)
        }
    }

    fn danmaku(id: u64) -> Danmaku {
        Danmaku::sample("r", id)
    }

    /// A room of 8 frames, whose viewers start after id 0.
    fn room() -> Arc<Room> {
        let config = FanoutConfig {
            ring_frames: 8,
            ..FanoutConfig::default()
        };
        Arc::new(Room::new(
            "r",
            &config,
            std::time::Duration::from_millis(100),
        ))
    }

    /// A sink for which danmaku frames hold nothing (a Bilibili viewer's
    /// share of a frame density control emptied): only control frames
    /// have bytes. Any write counts as one.
    struct Picky {
        writes: Mutex<usize>,
    }

    impl DirectSink for Picky {
        fn bytes<'f>(&self, frame: &'f Frame) -> &'f Bytes {
            static NOTHING: Bytes = Bytes::new();
            match frame.kind() {
                crate::hub::FrameKind::Danmaku { .. } => &NOTHING,
                _ => frame.ws(),
            }
        }

        fn try_write(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            *self.writes.lock().unwrap() += 1;
            Ok(bufs.iter().map(|b| b.len()).sum())
        }
    }

    #[test]
    fn a_frame_with_nothing_for_the_viewer_is_taken_without_a_write_or_a_wake_up() {
        let room = room();
        let mut viewer = room.join();
        room.seed_last_id(0);
        let sink = Arc::new(Picky {
            writes: Mutex::new(0),
        });
        viewer.attach(sink.clone());
        assert!(viewer.park(0));
        let metrics = Metrics::new();
        room.push(&[danmaku(1)], Instant::now());
        assert!(room.flush(&FanoutConfig::default(), &metrics));
        room.pass_now(&FanoutConfig::default(), &metrics);
        assert_eq!(*sink.writes.lock().unwrap(), 0, "nothing to write");
        // Still parked, past the frame: its task was not woken for it.
        let back = viewer.unpark();
        assert_eq!(back.last_id, Some(1));
        assert!(back.leftover.is_empty());
    }

    #[test]
    fn a_parked_viewer_is_written_to_and_handed_back_with_the_rest_in_order() {
        let room = room();
        let mut viewer = room.join();
        room.seed_last_id(0);
        let socket = Socket::open();
        viewer.attach(socket.clone());
        assert!(viewer.park(0));
        let metrics = Metrics::new();

        room.push(&[danmaku(1)], Instant::now());
        assert!(room.flush(&FanoutConfig::default(), &metrics));
        room.pass_now(&FanoutConfig::default(), &metrics);
        let first = socket.got.lock().unwrap().clone();
        assert!(!first.is_empty(), "written while parked");

        // Room for only 5 more bytes: the frame is cut, the seat handed back.
        *socket.room.lock().unwrap() = 5;
        room.push(&[danmaku(2)], Instant::now());
        assert!(room.flush(&FanoutConfig::default(), &metrics));
        room.pass_now(&FanoutConfig::default(), &metrics);
        let back = viewer.unpark();
        assert_eq!(back.last_id, Some(2));
        let mut whole = socket.got.lock().unwrap()[first.len()..].to_vec();
        for b in back.leftover {
            whole.extend_from_slice(&b);
        }
        let frame = room.ring_get(1);
        let Slot::Frame(frame) = frame else {
            panic!("frame 1 is in the ring")
        };
        assert_eq!(
            whole,
            frame.ws().to_vec(),
            "written part + leftover = the frame"
        );

        // No longer parked: the next frame waits in the ring for the task.
        room.push(&[danmaku(3)], Instant::now());
        assert!(room.flush(&FanoutConfig::default(), &metrics));
        room.pass_now(&FanoutConfig::default(), &metrics);
        assert!(matches!(viewer.try_recv(), Some(Received::Frame(_))));
    }

    #[test]
    fn a_viewer_told_of_a_pending_danmaku_parks_only_once_its_frame_has_gone_by() {
        let room = room();
        let metrics = Metrics::new();
        let config = FanoutConfig::default();
        // Danmaku 1 is committed and pending, its frame not made yet: a
        // viewer joining now is told last_id 1, and its place in the ring
        // is before the frame that will carry it.
        room.push(&[danmaku(1)], Instant::now());
        let mut viewer = room.join();
        let socket = Socket::open();
        viewer.attach(socket.clone());
        assert!(!viewer.park(1), "level in the ring, not in ids");

        assert!(room.flush(&config, &metrics));
        room.pass_now(&config, &metrics);
        assert!(socket.ids().is_empty(), "the flusher wrote nothing for it");
        // Its own task takes the frame (and its feed skips it).
        assert!(matches!(viewer.try_recv(), Some(Received::Frame(_))));
        assert!(viewer.park(1), "level now");

        room.push(&[danmaku(2)], Instant::now());
        assert!(room.flush(&config, &metrics));
        room.pass_now(&config, &metrics);
        assert_eq!(socket.ids(), [2]);
    }

    #[test]
    fn a_frame_published_during_a_pass_reaches_the_seats_it_has_yet_to_visit() {
        let room = room();
        let metrics = Arc::new(Metrics::new());
        let config = FanoutConfig::default();
        let (mut first, mut second) = (room.join(), room.join());
        room.seed_last_id(0);
        let (a, b) = (Socket::open(), Socket::open());
        first.attach(a.clone());
        second.attach(b.clone());
        assert!(first.park(0) && second.park(0));

        // While the pass writes to the first seat, danmaku 2 is published.
        let (r, m) = (room.clone(), metrics.clone());
        *a.on_write.lock().unwrap() = Some(Box::new(move || {
            r.push(&[danmaku(2)], Instant::now());
            assert!(r.flush(&config, &m));
        }));
        room.push(&[danmaku(1)], Instant::now());
        assert!(room.flush(&config, &metrics));
        room.pass_now(&config, &metrics);

        assert_eq!(a.ids(), [1], "visited before danmaku 2 existed");
        assert_eq!(b.ids(), [1, 2], "the same pass brought both");
        // The next pass brings the first seat level.
        room.pass_now(&config, &metrics);
        assert_eq!(a.ids(), [1, 2]);
        assert_eq!(b.ids(), [1, 2], "nothing twice");
    }

    #[tokio::test]
    async fn after_a_pass_the_ring_keeps_only_what_a_viewer_still_needs() {
        let room = room();
        let metrics = Arc::new(Metrics::new());
        let config = FanoutConfig::default();
        let threads = Arc::new(crate::hub::room::PassThreads::new());
        let (mut ahead, mut behind) = (room.join(), room.join());
        room.seed_last_id(0);
        for id in 1..=3 {
            room.push(&[danmaku(id)], Instant::now());
            assert!(room.flush(&config, &metrics));
        }
        for _ in 0..3 {
            assert!(matches!(ahead.try_recv(), Some(Received::Frame(_))));
        }
        assert!(matches!(behind.try_recv(), Some(Received::Frame(_))));

        let pass = || room.clone().pass(config, metrics.clone(), threads.clone());
        pass().await;
        assert!(matches!(room.ring_get(0), Slot::Gone { oldest: 1 }));
        assert!(matches!(behind.try_recv(), Some(Received::Frame(_))));
        assert!(matches!(behind.try_recv(), Some(Received::Frame(_))));
        assert!(behind.try_recv().is_none(), "nothing lost to the release");

        pass().await;
        assert!(matches!(room.ring_get(2), Slot::Gone { oldest: 3 }));
        assert_eq!(room.ring_end(), 3);
    }
}
