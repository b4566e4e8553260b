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
//!
//! Only a room watched on this node reorders: one without viewers here
//! hands on what it gets at once (nobody would wait for it, and asking the
//! store for other nodes' ids, room after room, would cost thousands of
//! queries a second). A watched room that has released nothing holds
//! everything until the store's newest id (the seed) says where it starts.

use std::collections::{BTreeMap, BTreeSet};
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

/// Recalled ids not heard yet that a room remembers (the newest): a recall
/// may overtake its danmaku, which is then stepped over when it comes.
const MAX_RECALLED: usize = 1_024;

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
    /// Ids stepped over because they were recalled, as inclusive ranges
    /// after `after`: frames stand for them without counting them as
    /// thinned. Empty (and unallocated) but for fills and recalls.
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

    /// Records `first..=last` as recalled, merged with the range before.
    fn step_over(&mut self, first: u64, last: u64) {
        match self.recalled.last_mut() {
            Some((_, end)) if *end + 1 == first => *end = last,
            _ => self.recalled.push((first, last)),
        }
    }

    /// Takes danmaku `id` back if no frame has taken it yet (it was
    /// recalled): the next frame stands for it as recalled.
    fn withdraw(&mut self, id: u64) {
        let Ok(i) = self.items.binary_search_by_key(&id, |d| d.id) else {
            return;
        };
        let d = self.items.remove(i);
        self.bytes -= size(&d);
        self.recalled.push((id, id));
        if self.items.is_empty() {
            // Nothing to publish: the next frame stands for the id.
            self.since = None;
        }
    }

    /// Forgets everything pending: the next frame starts after `to`, so
    /// viewers see the ids up to it as lost (a skip ahead).
    fn skip_to(&mut self, to: u64) {
        self.items.clear();
        self.bytes = 0;
        self.since = None;
        self.recalled.clear();
        self.after = to;
    }
}

/// How many ids of `ranges` (inclusive) fall in `first..=last`.
pub(super) fn count_within(ranges: &[(u64, u64)], first: u64, last: u64) -> u64 {
    ranges
        .iter()
        .map(|&(a, b)| (b.min(last) + 1).saturating_sub(a.max(first)))
        .sum()
}

/// A gap in a room's ids: something later than `released + 1` is known,
/// or the room must hear from the store (a catch-up).
struct Gap {
    /// The highest id known to exist: held back, forgotten for want of
    /// space, recalled, or the store's newest at a viewer's join.
    upto: u64,
    /// When to ask the node to fill it (in a room with no start yet: when
    /// to stop waiting for the seed).
    due: Instant,
    /// Asks made since the room last moved on, for the backoff.
    asks: u32,
    /// A catch-up: open until the store has had its say on what follows
    /// `released` (a fill that starts at or before it and reaches it),
    /// even if nothing is known to be missing.
    catch_up: bool,
}

/// A room's release order.
pub(super) struct Reorder {
    /// `cluster.reorder_ms`.
    window: Duration,
    /// At most this many ids are released from one gap: past it, the room
    /// skips ahead to the newest `span` ids (more than its ring holds: its
    /// viewers would lose them anyway).
    span: u64,
    /// Whether the room has viewers on this node: only then does it
    /// reorder and ask for gaps.
    watched: bool,
    /// The highest id handed on to viewers (none yet: a watched room
    /// holds what comes until the store's newest id seeds it, or a window
    /// passes; an unwatched one starts at the first id it sees).
    released: Option<u64>,
    /// Ids past `released + 1` waiting for those before them, with when
    /// each arrived.
    held: BTreeMap<u64, (Danmaku, Instant)>,
    /// The size of `held`, by [`size`].
    held_bytes: usize,
    gap: Option<Gap>,
    /// Recalled ids above `released`, not heard yet or held no more: the
    /// room steps over them. At most [`MAX_RECALLED`], never `released + 1`
    /// in a watched room (it is stepped over at once).
    recalled: BTreeSet<u64>,
}

impl Reorder {
    /// The release order of a room nobody on this node watches yet, which
    /// holds a danmaku back for at most `window` and releases at most
    /// `span` ids from one gap.
    pub(super) fn new(window: Duration, span: u64) -> Reorder {
        Reorder {
            window,
            span,
            watched: false,
            released: None,
            held: BTreeMap::new(),
            held_bytes: 0,
            gap: None,
            recalled: BTreeSet::new(),
        }
    }

    /// The highest id handed on to viewers.
    pub(super) fn released(&self) -> Option<u64> {
        self.released
    }

    /// The room has viewers on this node (`watched`) or none any more. A
    /// room nobody watches hands on what it holds back at once, forgets
    /// its gap, and from then on releases what comes as it comes.
    pub(super) fn set_watched(&mut self, watched: bool, out: &mut Pending) {
        if self.watched == watched {
            return;
        }
        self.watched = watched;
        if watched {
            // A watched room never waits for an id it knows was recalled.
            self.advance(out);
            return;
        }
        self.gap = None;
        self.held_bytes = 0;
        for (_, (d, at)) in std::mem::take(&mut self.held) {
            self.release_now(&d, at, out);
        }
    }

    /// Takes a run of committed danmaku, ascending by id, that reached the
    /// hub at `at`; releases into `out` what now follows in order.
    pub(super) fn push(&mut self, items: &[Danmaku], at: Instant, out: &mut Pending) {
        let (Some(first), Some(last)) = (items.first(), items.last()) else {
            return;
        };
        let before = self.released;
        // The store's path: the run is the very next ids, in order.
        if let Some(released) = before {
            if first.id == released.saturating_add(1)
                && last.id.wrapping_sub(first.id) == items.len() as u64 - 1
                && self.recalled.is_empty()
            {
                out.extend(items, at);
                self.released = Some(last.id);
                if self.gap.is_some() {
                    self.moved_on(before, out);
                }
                return;
            }
        }
        if !self.watched {
            for d in items {
                self.release_now(d, at, out);
            }
            return;
        }
        for d in items {
            self.take(d, at, out);
        }
        self.moved_on(before, out);
    }

    /// One danmaku in a room nobody here watches: released at once unless
    /// it is old, and `released` moves to it (the ids it skips are nobody's
    /// concern: a viewer who joins later starts at the store's newest).
    fn release_now(&mut self, d: &Danmaku, at: Instant, out: &mut Pending) {
        if self.released.is_some_and(|r| d.id <= r) {
            return;
        }
        if self.released.is_none() {
            out.after = d.id.saturating_sub(1);
        }
        self.released = Some(d.id);
        let mut recalled = false;
        while let Some(&id) = self.recalled.first() {
            if id > d.id {
                break;
            }
            self.recalled.pop_first();
            recalled |= id == d.id;
        }
        if recalled {
            out.step_over(d.id, d.id);
        } else {
            out.add(d.clone(), at);
        }
    }

    /// One danmaku off the in-order path, in a watched room.
    fn take(&mut self, d: &Danmaku, at: Instant, out: &mut Pending) {
        if let Some(released) = self.released {
            if d.id <= released {
                return; // Heard already (from the store and the broker, say).
            }
            if d.id == released + 1 {
                out.add(d.clone(), at);
                self.released = Some(d.id);
                self.advance(out);
                return;
            }
        }
        // Later than the next id, or the room has no start yet.
        let window = self.window;
        let gap = self.gap.get_or_insert(Gap {
            upto: d.id,
            due: at + window,
            asks: 0,
            catch_up: false,
        });
        gap.upto = gap.upto.max(d.id);
        if self.held.contains_key(&d.id) || self.recalled.contains(&d.id) {
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

    /// Releases the held danmaku that now follow `released`, steps over
    /// the recalled ids that do, and forgets both at or below it.
    fn advance(&mut self, out: &mut Pending) {
        let Some(mut released) = self.released else {
            return;
        };
        loop {
            let next = released + 1;
            if let Some(entry) = self.held.first_entry() {
                let id = *entry.key();
                if id <= next {
                    let (d, at) = entry.remove();
                    self.held_bytes -= size(&d);
                    if id == next {
                        out.add(d, at);
                        released = id;
                    }
                    continue;
                }
            }
            match self.recalled.first() {
                Some(&id) if id <= next => {
                    self.recalled.pop_first();
                    if id == next {
                        out.step_over(id, id);
                        released = id;
                    }
                }
                _ => break,
            }
        }
        self.released = Some(released);
    }

    /// After `released` may have moved on from `before`: releases what
    /// follows, closes the gap if it is filled (and is no catch-up still
    /// waiting for the store), and otherwise gives the first id still held
    /// its own full window before the room asks.
    fn moved_on(&mut self, before: Option<u64>, out: &mut Pending) {
        self.advance(out);
        let (Some(gap), Some(released)) = (&mut self.gap, self.released) else {
            return;
        };
        if released >= gap.upto && !gap.catch_up {
            self.gap = None;
            return;
        }
        // Progress into the gap asks soon again; a catch-up with nothing
        // known missing keeps its backoff (a store that is down stays so
        // however many danmaku the broker brings).
        if self.released != before && released < gap.upto {
            gap.asks = 0;
            if let Some((_, (_, arrived))) = self.held.first_key_value() {
                gap.due = gap.due.max(*arrived + self.window);
            }
        }
    }

    /// What the store holds after `after`, up to and including `upto`:
    /// `items`, ascending. An id in that range missing from `items` was
    /// recalled, and is stepped over. A fill that reaches past `released`
    /// by more than `span` ids skips ahead: only the newest `span` ids are
    /// released, and the next frame starts after those skipped.
    pub(super) fn fill(
        &mut self,
        after: u64,
        upto: u64,
        items: &[Danmaku],
        at: Instant,
        out: &mut Pending,
    ) {
        if !self.watched {
            for d in items {
                self.release_now(d, at, out);
            }
            return;
        }
        let Some(mut released) = self.released else {
            // No start yet: held like any, until the seed.
            for d in items {
                self.take(d, at, out);
            }
            return;
        };
        let before = Some(released);
        if after <= released && released <= upto {
            // The store's word on what follows `released`: a catch-up is
            // answered, even by a fill that brings nothing new.
            if let Some(gap) = &mut self.gap {
                gap.catch_up = false;
            }
        }
        if after > released || upto <= released {
            // Not the store's word on what follows `released` (it starts
            // later, or brings nothing new): take its danmaku like any.
            for d in items {
                self.take(d, at, out);
            }
            self.moved_on(before, out);
            return;
        }
        if upto - released > self.span {
            released = upto - self.span;
            self.skip_to(released, out);
        }
        let mut last = released;
        for d in items {
            if d.id <= last || d.id > upto || self.recalled.contains(&d.id) {
                continue;
            }
            if d.id > last + 1 {
                out.step_over(last + 1, d.id - 1);
            }
            out.add(d.clone(), at);
            last = d.id;
        }
        if upto > last {
            out.step_over(last + 1, upto);
        }
        self.released = Some(upto);
        self.moved_on(before, out);
    }

    /// Where to read a gap asked after `after` when the store's newest id
    /// is `newest`: from `released` (or `after`, if later). When more than
    /// `span` ids lie between, the room first skips ahead to `newest -
    /// span` (its viewers see the ids skipped as lost, and may read them
    /// from the store), so hours of danmaku are neither read nor pushed.
    pub(super) fn read_from(&mut self, after: u64, newest: u64, out: &mut Pending) -> u64 {
        let Some(released) = self.released else {
            return after;
        };
        let from = after.max(released);
        if newest.saturating_sub(from) <= self.span {
            return from;
        }
        let to = newest - self.span;
        self.skip_to(to, out);
        self.moved_on(Some(released), out);
        to
    }

    /// Starts over after `to`: what is pending is dropped too, so that the
    /// next frame starts after `to` and viewers see a loss, not a thinning.
    fn skip_to(&mut self, to: u64, out: &mut Pending) {
        out.skip_to(to);
        self.released = Some(to);
    }

    /// The store's newest id `id`, read for a viewer that just joined.
    /// With nothing released yet, the room starts there and releases what
    /// it held that follows. Past what it released, a room watched by
    /// others here (`shared`) asks for the ids between (they must see
    /// them) and one watched by nobody else starts there.
    pub(super) fn seed(&mut self, id: u64, shared: bool, at: Instant, out: &mut Pending) {
        let Some(released) = self.released else {
            out.after = id;
            self.released = Some(id);
            self.moved_on(None, out);
            return;
        };
        if id <= released {
            return;
        }
        if shared && self.watched {
            let gap = self.gap.get_or_insert(Gap {
                upto: id,
                due: at,
                asks: 0,
                catch_up: false,
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
        if let Some(gap) = &mut self.gap {
            // Nobody here needs what the store held before `id`.
            gap.catch_up = false;
        }
        self.moved_on(Some(released), out);
    }

    /// Danmaku `ids` were recalled. One still pending is taken back, one
    /// held back is forgotten, and one not heard yet is remembered (the
    /// newest [`MAX_RECALLED`]), so that none of them reaches a viewer
    /// afterwards: each is stepped over like an id the store lacks.
    pub(super) fn recall(&mut self, ids: &[u64], at: Instant, out: &mut Pending) {
        let before = self.released;
        for &id in ids {
            if self.released.is_some_and(|r| id <= r) {
                out.withdraw(id);
                continue;
            }
            if let Some((d, _)) = self.held.remove(&id) {
                self.held_bytes -= size(&d);
            }
            self.recalled.insert(id);
            if self.recalled.len() > MAX_RECALLED {
                self.recalled.pop_first();
            }
            if self.watched && self.released.is_some() {
                // It was committed: the ids before it are due too.
                let window = self.window;
                let gap = self.gap.get_or_insert(Gap {
                    upto: id,
                    due: at + window,
                    asks: 0,
                    catch_up: false,
                });
                gap.upto = gap.upto.max(id);
            }
        }
        if self.watched {
            self.moved_on(before, out);
        }
    }

    /// Makes the room hear from the store what follows `released` (the
    /// broker was away): a gap that stays open, asked again with the
    /// usual backoff, until a fill reaches `released`, even one that
    /// brings nothing. Only a watched room with a start catches up.
    pub(super) fn catch_up(&mut self, at: Instant) {
        let (true, Some(released)) = (self.watched, self.released) else {
            return;
        };
        let gap = self.gap.get_or_insert(Gap {
            upto: released,
            due: at,
            asks: 0,
            catch_up: false,
        });
        gap.catch_up = true;
        if gap.asks == 0 {
            gap.due = gap.due.min(at);
        }
    }

    /// Whether the room waits for the store's word on a catch-up.
    pub(super) fn catching_up(&self) -> bool {
        self.gap.as_ref().is_some_and(|g| g.catch_up)
    }

    /// For the flusher at `now`: the id after which to ask the node to
    /// fill a gap, if that is due (remembered: the next ask comes only if
    /// the gap is still there a window later, then two, …), and when to
    /// look again. A watched room that has held danmaku for a window with
    /// no seed starts before the lowest of them (into `out`), then asks
    /// for what it still misses.
    pub(super) fn poll_gap(
        &mut self,
        now: Instant,
        out: &mut Pending,
    ) -> (Option<u64>, Option<Instant>) {
        let Some(gap) = &self.gap else {
            return (None, None);
        };
        if now < gap.due {
            return (None, Some(gap.due));
        }
        if self.released.is_none() {
            let lowest = [self.held.keys().next(), self.recalled.first()]
                .into_iter()
                .flatten()
                .min()
                .copied()
                .unwrap_or(gap.upto);
            let start = lowest.saturating_sub(1);
            out.after = start;
            self.released = Some(start);
            self.moved_on(None, out);
            return self.poll_gap(now, out);
        }
        let window = self.window;
        let released = self.released;
        let Some(gap) = &mut self.gap else {
            return (None, None);
        };
        let wait = window
            .saturating_mul(1 << gap.asks.min(16))
            .min(MAX_GAP_RETRY.max(window));
        gap.asks += 1;
        gap.due = now + wait;
        (released, Some(gap.due))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: u64) -> Danmaku {
        Danmaku::sample("r", id)
    }

    fn ids(out: &Pending) -> Vec<u64> {
        out.items.iter().map(|d| d.id).collect()
    }

    const WINDOW: Duration = Duration::from_millis(100);

    /// A watched room's order, with nothing released yet.
    fn watched(span: u64) -> (Reorder, Pending) {
        let (mut order, mut out) = (Reorder::new(WINDOW, span), Pending::new());
        order.set_watched(true, &mut out);
        (order, out)
    }

    /// A watched room's order, seeded at 0.
    fn started(at: Instant) -> (Reorder, Pending) {
        let (mut order, mut out) = watched(u64::MAX);
        order.seed(0, false, at, &mut out);
        (order, out)
    }

    #[test]
    fn releases_in_id_order_once_whatever_the_arrival_order() {
        let at = Instant::now();
        let (mut order, mut out) = started(at);
        order.push(&[d(1)], at, &mut out);
        order.push(&[d(4), d(5)], at, &mut out);
        assert_eq!(ids(&out), [1], "4 and 5 wait for 2 and 3");
        order.push(&[d(3)], at, &mut out);
        order.push(&[d(1), d(2)], at, &mut out);
        order.push(&[d(3), d(4)], at, &mut out);
        order.push(&[d(6)], at, &mut out);
        assert_eq!(ids(&out), [1, 2, 3, 4, 5, 6]);
        assert_eq!(order.released(), Some(6));
        assert_eq!(order.poll_gap(at + WINDOW, &mut out), (None, None));
        assert_eq!(order.held_bytes, 0);
    }

    #[test]
    fn asks_once_per_window_and_backs_off_while_the_gap_stays() {
        let at = Instant::now();
        let (mut order, mut out) = started(at);
        order.push(&[d(1)], at, &mut out);
        order.push(&[d(3)], at, &mut out);
        assert_eq!(order.poll_gap(at, &mut out), (None, Some(at + WINDOW)));
        let now = at + WINDOW;
        assert_eq!(order.poll_gap(now, &mut out), (Some(1), Some(now + WINDOW)));
        // More arrivals do not bring the ask forward.
        order.push(&[d(4)], now, &mut out);
        assert_eq!(order.poll_gap(now, &mut out), (None, Some(now + WINDOW)));
        let again = now + WINDOW;
        let asked = order.poll_gap(again, &mut out);
        assert_eq!(asked, (Some(1), Some(again + 2 * WINDOW)));
        // The fill: 2 was recalled.
        order.fill(1, 3, &[d(3)], again, &mut out);
        assert_eq!(ids(&out), [1, 3, 4]);
        assert_eq!(out.recalled, [(2, 2)]);
        let later = again + MAX_GAP_RETRY;
        assert_eq!(order.poll_gap(later, &mut out), (None, None));
    }

    #[test]
    fn a_full_buffer_asks_at_once_and_the_fill_brings_what_it_forgot() {
        let at = Instant::now();
        let (mut order, mut out) = started(at);
        order.push(&[d(1)], at, &mut out);
        let later: Vec<Danmaku> = (3..=MAX_HELD as u64 + 3).map(d).collect();
        order.push(&later, at, &mut out);
        assert_eq!(order.held.len(), MAX_HELD);
        let asked = order.poll_gap(at, &mut out).0;
        assert_eq!(asked, Some(1), "asked before the window");
        let all: Vec<Danmaku> = (2..=MAX_HELD as u64 + 3).map(d).collect();
        order.fill(1, MAX_HELD as u64 + 3, &all, at, &mut out);
        assert_eq!(ids(&out), (1..=MAX_HELD as u64 + 3).collect::<Vec<_>>());
        assert!(order.held.is_empty() && order.held_bytes == 0);
    }

    #[test]
    fn a_seed_starts_an_empty_room_jumps_an_unwatched_one_and_asks_for_a_watched_one() {
        let at = Instant::now();
        let (mut order, mut out) = watched(u64::MAX);
        order.seed(5, true, at, &mut out);
        assert_eq!(order.released(), Some(5));
        order.seed(3, true, at, &mut out);
        assert_eq!(order.released(), Some(5), "never back");

        order.seed(9, true, at, &mut out);
        assert_eq!(order.released(), Some(5), "watched: no jump");
        assert_eq!(order.poll_gap(at, &mut out).0, Some(5), "asked at once");

        let (mut alone, mut out) = watched(u64::MAX);
        alone.seed(5, false, at, &mut out);
        alone.push(&[d(8)], at, &mut out);
        alone.seed(9, false, at, &mut out);
        assert_eq!(alone.released(), Some(9));
        assert!(alone.held.is_empty(), "8 is behind the start");
        alone.push(&[d(10)], at, &mut out);
        assert_eq!(alone.released(), Some(10));
    }

    #[test]
    fn an_unseeded_room_holds_what_comes_until_the_seed_says_where_it_starts() {
        let at = Instant::now();
        let (mut order, mut out) = watched(u64::MAX);
        order.push(&[d(103)], at, &mut out);
        order.push(&[d(99), d(101)], at, &mut out);
        order.push(&[d(102)], at, &mut out);
        assert!(out.items.is_empty(), "nothing before the seed");
        assert_eq!(order.released(), None);
        order.seed(100, false, at, &mut out);
        assert_eq!(ids(&out), [101, 102, 103], "99 is behind the start");
        assert_eq!(out.after, 100);
        assert_eq!(order.released(), Some(103));
        assert_eq!(order.poll_gap(at + WINDOW, &mut out), (None, None));
        assert!(order.held.is_empty() && order.held_bytes == 0);
    }

    #[test]
    fn an_unseeded_room_starts_at_the_lowest_id_held_after_a_window() {
        let at = Instant::now();
        let (mut order, mut out) = watched(u64::MAX);
        order.push(&[d(9)], at, &mut out);
        order.push(&[d(7)], at, &mut out);
        assert_eq!(order.poll_gap(at, &mut out), (None, Some(at + WINDOW)));
        // No seed within the window: the room starts before 7, and asks
        // at once for 8 (9 has waited its window too).
        let now = at + WINDOW;
        assert_eq!(order.poll_gap(now, &mut out), (Some(7), Some(now + WINDOW)));
        assert_eq!((ids(&out), out.after), (vec![7], 6));
        order.push(&[d(8)], now, &mut out);
        assert_eq!(ids(&out), [7, 8, 9]);
        // A late seed below the start changes nothing.
        order.seed(5, false, now, &mut out);
        assert_eq!(order.released(), Some(9));
    }

    #[test]
    fn a_room_nobody_watches_releases_at_once_and_never_asks() {
        let at = Instant::now();
        let (mut order, mut out) = (Reorder::new(WINDOW, u64::MAX), Pending::new());
        order.push(&[d(5)], at, &mut out);
        order.push(&[d(9)], at, &mut out);
        order.push(&[d(12)], at, &mut out);
        order.push(&[d(7)], at, &mut out);
        assert_eq!(ids(&out), [5, 9, 12], "7 comes too late");
        assert_eq!((order.released(), out.after), (Some(12), 4));
        let later = at + 10 * WINDOW;
        assert_eq!(order.poll_gap(later, &mut out), (None, None));
        order.fill(12, 20, &[d(14)], later, &mut out);
        order.catch_up(later);
        assert_eq!(order.poll_gap(later, &mut out), (None, None));

        // A watched room whose viewers leave hands on what it held.
        let (mut order, mut out) = started(at);
        order.push(&[d(1), d(3)], at, &mut out);
        order.push(&[d(6)], at, &mut out);
        order.set_watched(false, &mut out);
        assert_eq!(ids(&out), [1, 3, 6]);
        assert_eq!(order.poll_gap(later, &mut out), (None, None));
        // Watched again: it reorders from there.
        order.set_watched(true, &mut out);
        order.push(&[d(8)], later, &mut out);
        assert_eq!(order.released(), Some(6));
    }

    #[test]
    fn a_recalled_id_never_reaches_viewers_whether_held_pending_or_unheard() {
        let at = Instant::now();
        let (mut order, mut out) = started(at);
        order.push(&[d(1), d(2)], at, &mut out);
        // Pending: taken back, and the frame stands for it as recalled.
        order.recall(&[1], at, &mut out);
        assert_eq!((ids(&out), out.recalled.clone()), (vec![2], vec![(1, 1)]));

        // Held back: forgotten, and stepped over when 3 comes.
        order.push(&[d(4)], at, &mut out);
        order.recall(&[4], at, &mut out);
        order.push(&[d(3)], at, &mut out);
        order.push(&[d(4)], at, &mut out);
        assert_eq!(ids(&out), [2, 3]);
        assert_eq!(order.released(), Some(4));

        // Not heard yet: 6 is stepped over when 5 comes, and dropped when
        // it comes itself; the recall of 5, the next id, is stepped over
        // at once.
        order.recall(&[6], at, &mut out);
        order.push(&[d(6)], at, &mut out);
        order.push(&[d(5)], at, &mut out);
        order.recall(&[7], at, &mut out);
        order.push(&[d(7), d(8)], at, &mut out);
        assert_eq!(ids(&out), [2, 3, 5, 8]);
        assert_eq!(out.recalled, [(1, 1), (4, 4), (6, 7)]);
        assert_eq!(count_within(&out.recalled, 1, 8), 4);
        let later = at + 10 * WINDOW;
        assert_eq!(
            order.poll_gap(later, &mut out),
            (None, None),
            "nothing missing"
        );
        assert!(order.recalled.is_empty() && order.held.is_empty());

        // A fill read before the recall does not bring it back.
        order.recall(&[10], at, &mut out);
        order.fill(8, 11, &[d(9), d(10), d(11)], at, &mut out);
        assert_eq!(ids(&out)[4..], [9, 11]);

        // Remembered recalls are bounded.
        for id in 100..100 + 2 * MAX_RECALLED as u64 {
            order.recall(&[id], at, &mut out);
        }
        assert_eq!(order.recalled.len(), MAX_RECALLED);
    }

    #[test]
    fn a_catch_up_stays_open_until_the_store_answers_even_with_nothing() {
        let at = Instant::now();
        let (mut order, mut out) = started(at);
        order.push(&[d(1)], at, &mut out);
        order.catch_up(at);
        assert!(order.catching_up());
        assert_eq!(order.poll_gap(at, &mut out), (Some(1), Some(at + WINDOW)));
        // The read failed: asked again a window later.
        let now = at + WINDOW;
        assert_eq!(order.poll_gap(now, &mut out).0, Some(1));
        // Newer danmaku do not answer it (nor reset its backoff), a fill
        // that starts later neither.
        order.push(&[d(2)], now, &mut out);
        order.fill(5, 6, &[], now, &mut out);
        assert!(order.catching_up());
        let (ask, next) = order.poll_gap(now + WINDOW, &mut out);
        assert_eq!((ask, next), (None, Some(now + 2 * WINDOW)));
        let third = now + 2 * WINDOW;
        let asked = order.poll_gap(third, &mut out);
        assert_eq!(asked, (Some(2), Some(third + 4 * WINDOW)), "backing off");
        // The store's word, with nothing new.
        order.fill(1, 2, &[], now, &mut out);
        assert!(!order.catching_up());
        assert_eq!(order.poll_gap(now + MAX_GAP_RETRY, &mut out), (None, None));
    }

    #[test]
    fn a_fill_beyond_what_the_ring_holds_skips_ahead() {
        let at = Instant::now();
        let (mut order, mut out) = watched(10);
        order.seed(0, false, at, &mut out);
        order.push(&[d(1)], at, &mut out);
        let all: Vec<Danmaku> = (2..=100).map(d).collect();
        order.fill(1, 100, &all, at, &mut out);
        assert_eq!(ids(&out), (91..=100).collect::<Vec<_>>());
        assert_eq!(out.after, 90, "the next frame starts after the skip");
        // Asked to read a long gap: the room skips ahead before the read.
        order.push(&[d(1_000)], at, &mut out);
        assert_eq!(order.read_from(100, 5_000, &mut out), 4_990);
        assert_eq!(order.released(), Some(4_990));
        assert!(out.items.is_empty() && order.held.is_empty());
        assert_eq!(order.read_from(4_990, 5_000, &mut out), 4_990);
    }

    #[test]
    fn a_fill_that_does_not_start_at_the_released_id_steps_over_nothing() {
        let at = Instant::now();
        let (mut order, mut out) = started(at);
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
