//! A governor state store with a cap on how many keys it remembers.
//!
//! governor's own DashMap store grows by one entry per new key until
//! `retain_recent` runs. Here the keys (addresses, user ids, room names) are
//! chosen by clients, so without a cap an attacker chooses how much memory
//! the server uses. This store counts its keys; once at the cap it judges a
//! new key as a fresh bucket without remembering it (fail open, see
//! docs/security.md), and asks for an early sweep after enough such keys.

use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{NotKeyed, StateStore};

/// How many keys a map may hold, and how many it holds: shared by the rate
/// limiters' stores and the flood guard.
#[derive(Debug)]
pub(crate) struct KeyBudget {
    max: usize,
    /// Approximate: raised at each insert, set to the map's true length by
    /// each sweep. Racing inserts may overshoot `max` by one per thread.
    keys: AtomicUsize,
    /// New keys turned away since the last early sweep.
    turned_away: AtomicUsize,
    /// Whether any key was turned away since the last periodic sweep.
    overflowed: AtomicBool,
}

impl KeyBudget {
    /// A budget of `max` keys (at least 1).
    pub(crate) fn new(max: usize) -> KeyBudget {
        KeyBudget {
            max: max.max(1),
            keys: AtomicUsize::new(0),
            turned_away: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
        }
    }

    /// Whether one more key may be remembered; counts it if so.
    pub(crate) fn admit(&self) -> bool {
        if self.keys.load(Relaxed) < self.max {
            self.keys.fetch_add(1, Relaxed);
            return true;
        }
        self.turned_away.fetch_add(1, Relaxed);
        self.overflowed.store(true, Relaxed);
        false
    }

    /// True for one caller once a quarter of `max` new keys have been turned
    /// away: that caller sweeps at once. A sweep costs O(keys), so paying it
    /// once per `max / 4` refusals keeps its cost per request constant
    /// however long an attack lasts.
    pub(crate) fn claim_early_sweep(&self) -> bool {
        let n = self.turned_away.load(Relaxed);
        n >= (self.max / 4).max(1)
            && self
                .turned_away
                .compare_exchange(n, 0, Relaxed, Relaxed)
                .is_ok()
    }

    /// Records the map's length after a sweep.
    pub(crate) fn swept(&self, len: usize) {
        self.keys.store(len, Relaxed);
    }

    /// Whether keys were turned away since the last call: for a periodic
    /// sweep to log it once, not once per request.
    pub(crate) fn take_overflowed(&self) -> bool {
        self.overflowed.swap(false, Relaxed)
    }
}

/// governor's DashMap store behind a [`KeyBudget`].
pub(crate) struct BoundedStore<K: Hash + Eq + Clone> {
    map: DashMapStateStore<K>,
    budget: Arc<KeyBudget>,
}

impl<K: Hash + Eq + Clone> BoundedStore<K> {
    /// An empty store that shares `budget` with its owner, which needs it to
    /// see when an early sweep is due.
    pub(crate) fn new(budget: Arc<KeyBudget>) -> Self {
        BoundedStore {
            map: DashMapStateStore::default(),
            budget,
        }
    }
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if !self.budget.admit() {
            // Judged as a key never seen, and forgotten at once.
            return f(None).map(|(outcome, _)| outcome);
        }
        let state = self.map.entry(key.clone()).or_default();
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.map, drop_below);
        self.budget.swept(self.map.len());
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_budget_turns_keys_away_and_asks_for_a_sweep_every_quarter() {
        let budget = KeyBudget::new(8);
        assert!((0..8).all(|_| budget.admit()));
        assert!(!budget.admit());
        assert!(!budget.claim_early_sweep(), "1 turned away, 2 needed");
        assert!(!budget.admit());
        assert!(budget.claim_early_sweep());
        assert!(!budget.claim_early_sweep(), "claimed once");
        assert!(budget.take_overflowed());
        assert!(!budget.take_overflowed());
        budget.swept(0);
        assert!(budget.admit());
    }
}
