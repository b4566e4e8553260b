//! A room's release order: committed danmaku reach a room from this node's
//! store (in id order) and from the broker (other nodes' commits, in any
//! order, repeated or missing); viewers get them strictly in id order.
//!
//! Each room keeps the highest id it has handed on (`released`). The next
//! id goes on at once; a later one is held back until the ids before it
//! come, or, after `cluster.reorder_ms`, the room asks its node to read the
//! gap from the store. What the store lacks in a gap it read was recalled,
//! and the room steps over it. The store's path (every id in order) costs a
//! comparison or two and allocates nothing beyond the pending list.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::danmaku::Danmaku;

/// Rough JSON size of a danmaku beyond its text, for the frame-size trigger
/// and the bound on what a room holds back.
pub(super) const ITEM_OVERHEAD: usize = 160;

/// A room holds back at most this many danmaku: past it, it asks for the
/// gap to be filled at once, and forgets what does not fit (the store has
/// it, and the fill brings it).
const MAX_HELD: usize = 10_000;

/// ... or this many bytes of them (by [`size`]).
const MAX_HELD_BYTES: usize = 4 << 20;

/// A gap the store did not fill is asked about again after the window,
/// then after twice that, and so on up to this (or the window, if longer):
/// a store that is down, or a gap whose newest ids were recalled, must not
/// be asked ten times a second for as long as it lasts.
const MAX_GAP_RETRY: Duration = Duration::from_secs(5);

fn size(d: &Danmaku) -> usize {
    d.text.len() + ITEM_OVERHEAD
}

/// Released danmaku not yet in a frame.
pub(super) struct Pending {
    /// Ascending by id.
    pub(super) items: Vec<Danmaku>,
    /// Their size, by [`size`].
    pub(super) bytes: usize,
    /// When the oldest of them reached the hub (for fan-out latency).
    pub(super) since: Option<Instant>,
    /// The last id the room's frames stood for: the next frame starts
    /// after it, so it also stands for ids stepped over since.
    pub(super) after: u64,
    /// Ids stepped over because the store no longer has them (recalled),
    /// as inclusive ranges after `after`: frames stand for them without
    /// counting them as thinned. Empty (and unallocated) but for fills.
    pub(super) recalled: Vec<(u64, u64)>,
}

impl Pending {
    pub(super) fn new() -> Pending {
        Pending {
            items: Vec::new(),
            bytes: 0,
            since: None,
            after: 0,
            recalled: Vec::new(),
        }
    }

    fn extend(&mut self, items: &[Danmaku], at: Instant) {
        self.items.extend_from_slice(items);
        self.bytes += items.iter().map(size).sum::<usize>();
        self.since.get_or_insert(at);
    }

    fn add(&mut self, d: Danmaku, at: Instant) {
        self.bytes += size(&d);
        self.items.push(d);
        self.since.get_or_insert(at);
    }
}

/// How many ids of `ranges` (inclusive) fall in `first..=last`.
pub(super) fn count_within(ranges: &[(u64, u64)], first: u64, last: u64) -> u64 {
    ranges
        .iter()
        .map(|&(a, b)| (b.min(last) + 1).saturating_sub(a.max(first)))
        .sum()
}

/// A gap in a room's ids: something later than `released + 1` is known.
struct Gap {
    /// The highest id known to exist: held back, forgotten for want of
    /// space, or the store's newest at a viewer's join.
    upto: u64,
    /// When to ask the node to fill it.
    due: Instant,
    /// Asks made since the room last moved on, for the backoff.
    asks: u32,
}

/// A room's release order.
pub(super) struct Reorder {
    /// `cluster.reorder_ms`.
    window: Duration,
    /// The highest id handed on to viewers (none yet: the first id the
    /// room sees, or the store's newest at a join, is the start).
    released: Option<u64>,
    /// Ids past `released + 1` waiting for those before them, with when
    /// each arrived.
    held: BTreeMap<u64, (Danmaku, Instant)>,
    /// The size of `held`, by [`size`].
    held_bytes: usize,
    gap: Option<Gap>,
}

impl Reorder {
    pub(super) fn new(window: Duration) -> Reorder {
        Reorder {
            window,
            released: None,
            held: BTreeMap::new(),
            held_bytes: 0,
            gap: None,
        }
    }

    /// The highest id handed on to viewers.
    pub(super) fn released(&self) -> Option<u64> {
        self.released
    }

    /// Takes a run of committed danmaku, ascending by id, that reached the
    /// hub at `at`; releases into `out` what now follows in order.
    pub(super) fn push(&mut self, items: &[Danmaku], at: Instant, out: &mut Pending) {
        let (Some(first), Some(last)) = (items.first(), items.last()) else {
            return;
        };
        let before = self.released;
        let next = before.map_or(first.id, |r| r.saturating_add(1));
        // The store's path: the run is the very next ids, in order.
        if first.id == next && last.id.wrapping_sub(first.id) == items.len() as u64 - 1 {
            if before.is_none() {
                out.after = first.id.saturating_sub(1);
            }
            out.extend(items, at);
            self.released = Some(last.id);
            if self.gap.is_some() {
                self.moved_on(before, out);
            }
            return;
        }
        for d in items {
            self.take(d, at, out);
        }
        self.moved_on(before, out);
    }

    /// One danmaku off the in-order path.
    fn take(&mut self, d: &Danmaku, at: Instant, out: &mut Pending) {
        let Some(released) = self.released else {
            out.after = d.id.saturating_sub(1);
            out.add(d.clone(), at);
            self.released = Some(d.id);
            return;
        };
        if d.id <= released {
            return; // Heard already (from the store and the broker, say).
        }
        if d.id == released + 1 {
            out.add(d.clone(), at);
            self.released = Some(d.id);
            self.release_held(out);
            return;
        }
        let window = self.window;
        let gap = self.gap.get_or_insert(Gap {
            upto: d.id,
            due: at + window,
            asks: 0,
        });
        gap.upto = gap.upto.max(d.id);
        if self.held.contains_key(&d.id) {
            return;
        }
        if self.held.len() >= MAX_HELD || self.held_bytes >= MAX_HELD_BYTES {
            // Full: the fill brings this one too. Ask now, unless a fill
            // asked for is still to come.
            if gap.asks == 0 {
                gap.due = gap.due.min(at);
            }
            return;
        }
        self.held_bytes += size(d);
        self.held.insert(d.id, (d.clone(), at));
    }

    /// Releases the held danmaku that now follow `released`, and forgets
    /// those at or below it.
    fn release_held(&mut self, out: &mut Pending) {
        let Some(mut released) = self.released else {
            return;
        };
        while let Some(entry) = self.held.first_entry() {
            let id = *entry.key();
            if id > released + 1 {
                break;
            }
            let (d, at) = entry.remove();
            self.held_bytes -= size(&d);
            if id == released + 1 {
                out.add(d, at);
                released = id;
            }
        }
        self.released = Some(released);
    }

    /// After `released` may have moved on from `before`: releases what
    /// follows, closes the gap if it is filled, and otherwise gives the
    /// first id still held its own full window before the room asks.
    fn moved_on(&mut self, before: Option<u64>, out: &mut Pending) {
        self.release_held(out);
        let Some(gap) = &mut self.gap else {
            return;
        };
        let released = self.released.unwrap_or(0);
        if released >= gap.upto {
            self.gap = None;
            return;
        }
        if self.released != before {
            gap.asks = 0;
            if let Some((_, (_, arrived))) = self.held.first_key_value() {
                gap.due = gap.due.max(*arrived + self.window);
            }
        }
    }

    /// What the store holds after `after`, up to and including `upto`:
    /// `items`, ascending. An id in that range missing from `items` was
    /// recalled, and is stepped over.
    pub(super) fn fill(
        &mut self,
        after: u64,
        upto: u64,
        items: &[Danmaku],
        at: Instant,
        out: &mut Pending,
    ) {
        let released = match self.released {
            Some(r) => r,
            None => {
                out.after = after;
                *self.released.insert(after)
            }
        };
        let before = Some(released);
        if after > released || upto <= released {
            // Not the store's word on what follows `released` (it starts
            // later, or brings nothing new): take its danmaku like any.
            for d in items {
                self.take(d, at, out);
            }
            self.moved_on(before, out);
            return;
        }
        let mut last = released;
        for d in items {
            if d.id <= last || d.id > upto {
                continue;
            }
            if d.id > last + 1 {
                out.recalled.push((last + 1, d.id - 1));
            }
            out.add(d.clone(), at);
            last = d.id;
        }
        if upto > last {
            out.recalled.push((last + 1, upto));
        }
        self.released = Some(upto);
        self.moved_on(before, out);
    }

    /// The store's newest id `id`, read for a viewer that just joined.
    /// With nothing released yet, the room starts there. Past what it
    /// released, a room watched by others asks for the ids between (they
    /// must see them) and one watched by nobody else starts there.
    pub(super) fn seed(&mut self, id: u64, watched: bool, at: Instant, out: &mut Pending) {
        let Some(released) = self.released else {
            out.after = id;
            self.released = Some(id);
            return;
        };
        if id <= released {
            return;
        }
        if watched {
            let gap = self.gap.get_or_insert(Gap {
                upto: id,
                due: at,
                asks: 0,
            });
            gap.upto = gap.upto.max(id);
            if gap.asks == 0 {
                gap.due = gap.due.min(at);
            }
            return;
        }
        if out.items.is_empty() {
            // No frame need stand for the ids skipped.
            out.after = id;
        }
        self.released = Some(id);
        self.moved_on(Some(released), out);
    }

    /// For the flusher at `now`: the id after which to ask the node to
    /// fill a gap, if that is due (remembered: the next ask comes only if
    /// the gap is still there a window later, then two, …), and when to
    /// look again.
    pub(super) fn poll_gap(&mut self, now: Instant) -> (Option<u64>, Option<Instant>) {
        let Some(gap) = &mut self.gap else {
            return (None, None);
        };
        if now < gap.due {
            return (None, Some(gap.due));
        }
        let wait = self
            .window
            .saturating_mul(1 << gap.asks.min(16))
            .min(MAX_GAP_RETRY.max(self.window));
        gap.asks += 1;
        gap.due = now + wait;
        (self.released, Some(gap.due))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: u64) -> Danmaku {
        let new = crate::danmaku::NewDanmaku {
            room: "r".into(),
            user: "u".into(),
            name: "n".into(),
            text: format!("text {id}"),
            mode: Default::default(),
            color: crate::danmaku::Color::WHITE,
            size: 25,
            vt: None,
            priority: false,
        };
        Danmaku::stored(new, id, 0)
    }

    fn ids(out: &Pending) -> Vec<u64> {
        out.items.iter().map(|d| d.id).collect()
    }

    const WINDOW: Duration = Duration::from_millis(100);

    #[test]
    fn releases_in_id_order_once_whatever_the_arrival_order() {
        let (mut order, mut out, at) = (Reorder::new(WINDOW), Pending::new(), Instant::now());
        order.push(&[d(1)], at, &mut out);
        order.push(&[d(4), d(5)], at, &mut out);
        assert_eq!(ids(&out), [1], "4 and 5 wait for 2 and 3");
        order.push(&[d(3)], at, &mut out);
        order.push(&[d(1), d(2)], at, &mut out);
        order.push(&[d(3), d(4)], at, &mut out);
        order.push(&[d(6)], at, &mut out);
        assert_eq!(ids(&out), [1, 2, 3, 4, 5, 6]);
        assert_eq!(order.released(), Some(6));
        assert_eq!(order.poll_gap(at + WINDOW), (None, None), "no gap left");
        assert_eq!(order.held_bytes, 0);
    }

    #[test]
    fn asks_once_per_window_and_backs_off_while_the_gap_stays() {
        let (mut order, mut out, at) = (Reorder::new(WINDOW), Pending::new(), Instant::now());
        order.push(&[d(1)], at, &mut out);
        order.push(&[d(3)], at, &mut out);
        assert_eq!(order.poll_gap(at), (None, Some(at + WINDOW)));
        let now = at + WINDOW;
        assert_eq!(order.poll_gap(now), (Some(1), Some(now + WINDOW)));
        // More arrivals do not bring the ask forward.
        order.push(&[d(4)], now, &mut out);
        assert_eq!(order.poll_gap(now), (None, Some(now + WINDOW)));
        let again = now + WINDOW;
        assert_eq!(order.poll_gap(again), (Some(1), Some(again + 2 * WINDOW)));
        // The fill: 2 was recalled.
        order.fill(1, 3, &[d(3)], again, &mut out);
        assert_eq!(ids(&out), [1, 3, 4]);
        assert_eq!(out.recalled, [(2, 2)]);
        assert_eq!(order.poll_gap(again + MAX_GAP_RETRY), (None, None));
    }

    #[test]
    fn a_full_buffer_asks_at_once_and_the_fill_brings_what_it_forgot() {
        let (mut order, mut out, at) = (Reorder::new(WINDOW), Pending::new(), Instant::now());
        order.push(&[d(1)], at, &mut out);
        let later: Vec<Danmaku> = (3..=MAX_HELD as u64 + 3).map(d).collect();
        order.push(&later, at, &mut out);
        assert_eq!(order.held.len(), MAX_HELD);
        assert_eq!(order.poll_gap(at).0, Some(1), "asked before the window");
        let all: Vec<Danmaku> = (2..=MAX_HELD as u64 + 3).map(d).collect();
        order.fill(1, MAX_HELD as u64 + 3, &all, at, &mut out);
        assert_eq!(ids(&out), (1..=MAX_HELD as u64 + 3).collect::<Vec<_>>());
        assert!(order.held.is_empty() && order.held_bytes == 0);
    }

    #[test]
    fn a_seed_starts_an_empty_room_jumps_an_unwatched_one_and_asks_for_a_watched_one() {
        let (mut order, mut out, at) = (Reorder::new(WINDOW), Pending::new(), Instant::now());
        order.seed(5, true, at, &mut out);
        assert_eq!(order.released(), Some(5));
        order.seed(3, true, at, &mut out);
        assert_eq!(order.released(), Some(5), "never back");

        order.seed(9, true, at, &mut out);
        assert_eq!(order.released(), Some(5), "watched: no jump");
        assert_eq!(order.poll_gap(at).0, Some(5), "asked at once");

        let mut alone = Reorder::new(WINDOW);
        alone.seed(5, false, at, &mut out);
        alone.push(&[d(8)], at, &mut out);
        alone.seed(9, false, at, &mut out);
        assert_eq!(alone.released(), Some(9));
        assert!(alone.held.is_empty(), "8 is behind the start");
        alone.push(&[d(10)], at, &mut out);
        assert_eq!(alone.released(), Some(10));
    }

    #[test]
    fn a_fill_that_does_not_start_at_the_released_id_steps_over_nothing() {
        let (mut order, mut out, at) = (Reorder::new(WINDOW), Pending::new(), Instant::now());
        order.push(&[d(1)], at, &mut out);
        order.fill(3, 5, &[d(5)], at, &mut out);
        assert_eq!(order.released(), Some(1), "2 and 3 are not known gone");
        order.fill(1, 4, &[d(2), d(4)], at, &mut out);
        assert_eq!(ids(&out), [1, 2, 4, 5]);
        assert_eq!(out.recalled, [(3, 3)]);
    }

    #[test]
    fn counts_recalled_ids_within_a_range() {
        let holes = [(2, 3), (7, 9)];
        assert_eq!(count_within(&holes, 1, 10), 5);
        assert_eq!(count_within(&holes, 3, 8), 3);
        assert_eq!(count_within(&holes, 4, 6), 0);
    }
}
