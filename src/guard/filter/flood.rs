//! The flood guard: one user sending the same text again and again.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::fold;
use crate::config::FilterConfig;
use crate::guard::limits::store::KeyBudget;
use crate::guard::limits::RetryAfter;

/// Distinct texts remembered per user. A flooder cycling through more
/// texts than this is spread thin enough for the rate limits to handle.
const SLOTS: usize = 4;

/// Refuses a user's send when the same text (folded, white space ignored)
/// was already sent `flood_repeats` times within `flood_window_s`, counted
/// from the first of them. The refusal is a [`RetryAfter`] for the rest of
/// that window, reported as `rate_limited`: the text itself is fine, only
/// its repetition is not, and the client learns when it may send it again.
///
/// It remembers the last 4 (`SLOTS`) distinct texts of each user as 64-bit
/// hashes, in a map bounded like the rate limiters' (`max_users`, fail
/// open when full, early sweep) and swept of idle users by
/// [`FloodGuard::sweep`].
///
/// Check it after the rate limits: it records each text it passes, so a
/// send it passes but a later check refuses would make the client's retry
/// of the same text look like a repeat.
#[derive(Debug)]
pub struct FloodGuard {
    window: Duration,
    repeats: u32,
    users: DashMap<u64, Recent>,
    budget: KeyBudget,
    /// Randomly seeded, so a client cannot make two texts collide on purpose.
    hasher: std::hash::RandomState,
}

impl FloodGuard {
    /// The guard of the `[filter]` section, remembering at most `max_users`
    /// users (`limits.max_limiter_keys`), or None if `flood_window_s` is 0.
    pub fn new(cfg: &FilterConfig, max_users: usize) -> Option<FloodGuard> {
        (cfg.flood_window_s > 0).then(|| FloodGuard {
            window: Duration::from_secs(cfg.flood_window_s),
            repeats: cfg.flood_repeats.max(1),
            users: DashMap::new(),
            budget: KeyBudget::new(max_users),
            hasher: std::hash::RandomState::new(),
        })
    }

    /// Records `user` sending `text`, or refuses it as a repeat.
    pub fn check(&self, user: &str, text: &str) -> Result<(), RetryAfter> {
        self.check_at(user, text, Instant::now())
    }

    fn check_at(&self, user: &str, text: &str, now: Instant) -> Result<(), RetryAfter> {
        let user = self.hasher.hash_one(user);
        let text = self.text_hash(text);
        if let Some(mut recent) = self.users.get_mut(&user) {
            return recent.check(text, now, self.window, self.repeats);
        }
        if !self.budget.admit() {
            if self.budget.claim_early_sweep() {
                self.retain_at(now);
            }
            return Ok(());
        }
        let mut recent = self.users.entry(user).or_insert_with(|| Recent::new(now));
        recent.check(text, now, self.window, self.repeats)
    }

    fn text_hash(&self, text: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        for c in folded(text) {
            h.write_u32(c.into());
        }
        h.finish()
    }

    /// How long a text's repeats are counted, from its first send.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// How many sends of one text a window allows.
    pub fn repeats(&self) -> u32 {
        self.repeats
    }

    /// The text as the nodes of a cluster know it when they share the flood
    /// guard in Redis: a 64-bit FNV-1a hash of its folded characters (white
    /// space ignored), the same on every node and every build. Unlike the
    /// node's own hash it is not seeded, so a client can make two of its
    /// texts collide; that only refuses its own sends, as the key holds
    /// the user too.
    pub fn fingerprint(text: &str) -> u64 {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0100_0000_01b3;
        folded(text)
            .flat_map(|c| u32::from(c).to_le_bytes())
            .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
    }

    /// Forgets users whose remembered texts are all out of the window, and
    /// gives the memory back. Call it with the rate limits' sweep.
    pub fn sweep(&self) {
        if self.budget.take_overflowed() {
            tracing::warn!("flood guard was full (limits.max_limiter_keys); new users passed");
        }
        self.retain_at(Instant::now());
        self.users.shrink_to_fit();
    }

    fn retain_at(&self, now: Instant) {
        self.users
            .retain(|_, r| r.slots.iter().any(|s| s.live(now, self.window)));
        self.budget.swept(self.users.len());
    }
}

/// `text` as the guard compares it: folded, white space left out.
fn folded(text: &str) -> impl Iterator<Item = char> + '_ {
    text.chars().flat_map(fold).filter(|c| !c.is_whitespace())
}

/// The last few distinct texts of one user.
#[derive(Debug)]
struct Recent {
    slots: [Slot; SLOTS],
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    text: u64,
    /// Sends of the text in its window; 0: the slot is empty.
    count: u32,
    /// The start of the window: the first send of the text.
    since: Instant,
}

impl Slot {
    fn live(&self, now: Instant, window: Duration) -> bool {
        self.count > 0 && now.saturating_duration_since(self.since) < window
    }
}

impl Recent {
    fn new(now: Instant) -> Recent {
        let empty = Slot {
            text: 0,
            count: 0,
            since: now,
        };
        Recent {
            slots: [empty; SLOTS],
        }
    }

    fn check(
        &mut self,
        text: u64,
        now: Instant,
        window: Duration,
        repeats: u32,
    ) -> Result<(), RetryAfter> {
        if let Some(s) = self
            .slots
            .iter_mut()
            .find(|s| s.text == text && s.live(now, window))
        {
            if s.count >= repeats {
                let elapsed = now.saturating_duration_since(s.since);
                return Err(RetryAfter(window.saturating_sub(elapsed)));
            }
            s.count += 1;
            return Ok(());
        }
        // A free slot (empty or out of its window) if any, else the oldest.
        let slot = self
            .slots
            .iter_mut()
            .min_by_key(|s| s.live(now, window).then_some(s.since))
            .expect("SLOTS > 0");
        *slot = Slot {
            text,
            count: 1,
            since: now,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(window_s: u64, repeats: u32, max_users: usize) -> FloodGuard {
        let cfg = FilterConfig {
            flood_window_s: window_s,
            flood_repeats: repeats,
            ..FilterConfig::default()
        };
        FloodGuard::new(&cfg, max_users).unwrap()
    }

    #[test]
    fn a_repeat_within_the_window_is_refused_until_it_ends() {
        let g = guard(10, 1, 100);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        g.check_at("u", "hello", at(0)).unwrap();
        let refused = g.check_at("u", "ＨＥＬＬＯ ", at(3)).unwrap_err();
        assert_eq!(refused, RetryAfter(Duration::from_secs(7)));
        g.check_at("u", "other", at(3)).unwrap();
        g.check_at("v", "hello", at(3)).unwrap();
        assert!(g.check_at("u", "hel lo", at(9)).is_err());
        g.check_at("u", "hello", at(10)).unwrap();
        assert!(g.check_at("u", "hello", at(11)).is_err(), "a new window");
    }

    #[test]
    fn repeats_allows_that_many_sends_per_window() {
        let g = guard(10, 3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            g.check_at("u", "gg", t0).unwrap();
        }
        assert!(g.check_at("u", "gg", t0).is_err());
    }

    #[test]
    fn only_the_last_few_texts_are_remembered() {
        let g = guard(10, 1, 100);
        let t0 = Instant::now();
        for (i, text) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            g.check_at("u", text, t0 + Duration::from_millis(i as u64))
                .unwrap();
        }
        // "a", the oldest, made room for "e".
        g.check_at("u", "a", t0 + Duration::from_millis(10))
            .unwrap();
        assert!(g
            .check_at("u", "e", t0 + Duration::from_millis(10))
            .is_err());
    }

    #[test]
    fn idle_users_are_swept_and_the_map_is_bounded() {
        let g = guard(10, 1, 100);
        let t0 = Instant::now();
        for i in 0..150 {
            g.check_at(&format!("user{i}"), "hi", t0).unwrap();
        }
        assert_eq!(g.users.len(), 100, "the rest passed unremembered");
        assert!(g.check_at("user0", "hi", t0).is_err());
        assert!(g.check_at("user149", "hi", t0).is_ok(), "fail open");
        g.retain_at(t0 + Duration::from_secs(5));
        assert_eq!(g.users.len(), 100, "still in their window");
        g.retain_at(t0 + Duration::from_secs(10));
        assert_eq!(g.users.len(), 0);
        g.check_at("user149", "hi", t0 + Duration::from_secs(10))
            .unwrap();
        assert!(g
            .check_at("user149", "hi", t0 + Duration::from_secs(10))
            .is_err());
    }

    #[test]
    fn the_fingerprint_is_fixed_and_folds_like_the_guard() {
        assert_eq!(
            FloodGuard::fingerprint("hello"),
            FloodGuard::fingerprint("ＨＥＬ ＬＯ")
        );
        assert_ne!(
            FloodGuard::fingerprint("hello"),
            FloodGuard::fingerprint("hallo")
        );
        // Every node of every build agrees: FNV-1a of the folded text.
        assert_eq!(FloodGuard::fingerprint(""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn a_zero_window_is_no_flood_guard() {
        let cfg = FilterConfig {
            flood_window_s: 0,
            ..FilterConfig::default()
        };
        assert!(FloodGuard::new(&cfg, 10).is_none());
    }
}
