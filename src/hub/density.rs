//! Hot-room density control: a room's viewers are sent at most what a
//! person can read, while everything accepted is still stored.
//!
//! Past a few dozen danmaku a second a screen is a smear; sending more only
//! costs bandwidth and the viewers' CPU. When a flush holds more than the
//! room's allowance, the flusher thins it: danmaku from admins (priority)
//! are always kept, repeated texts go first, then an evenly spaced share of
//! the rest. The frame still covers every id it stood for (its `last` and
//! `thinned` fields), so a viewer never takes thinning for loss.

use std::collections::HashSet;
use std::time::Instant;

use crate::danmaku::Danmaku;

/// A room's reading allowance: `max_per_s` danmaku a second, saved up for at
/// most one second.
pub(super) struct Density {
    credit: f64,
    at: Instant,
}

impl Default for Density {
    /// A full allowance (whatever the rate turns out to be).
    fn default() -> Density {
        Density {
            credit: f64::INFINITY,
            at: Instant::now(),
        }
    }
}

impl Density {
    /// Keeps what the allowance covers; returns the kept danmaku (in id
    /// order) and how many were thinned.
    pub(super) fn thin(&mut self, items: Vec<Danmaku>, max_per_s: u32) -> (Vec<Danmaku>, u64) {
        let rate = f64::from(max_per_s);
        let now = Instant::now();
        self.credit = (self.credit + rate * now.duration_since(self.at).as_secs_f64()).min(rate);
        self.at = now;
        let allowance = self.credit.max(0.0).floor() as usize;
        if items.len() <= allowance {
            self.credit -= items.len() as f64;
            return (items, 0);
        }
        let total = items.len();
        // Priority first, then first occurrences of a text, then repeats.
        let mut seen = HashSet::new();
        let mut rank: Vec<(u8, usize)> = items
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let class = if d.priority {
                    0
                } else if seen.insert(d.text.to_lowercase()) {
                    1
                } else {
                    2
                };
                (class, i)
            })
            .collect();
        let priority = rank.iter().filter(|(c, _)| *c == 0).count();
        let budget = allowance.max(priority);
        rank.sort_by_key(|&(class, _)| class);
        let mut keep = vec![false; total];
        for &(_, i) in &rank[..priority] {
            keep[i] = true;
        }
        // Within the class that does not fit whole, an evenly spaced share,
        // so a burst is sampled across its length rather than cut short.
        let mut room = budget - priority;
        for class in [1u8, 2] {
            let members: Vec<usize> = rank
                .iter()
                .filter(|(c, _)| *c == class)
                .map(|&(_, i)| i)
                .collect();
            let take = room.min(members.len());
            for k in 0..take {
                keep[members[k * members.len() / take]] = true;
            }
            room -= take;
        }
        self.credit -= budget as f64;
        let kept: Vec<Danmaku> = items
            .into_iter()
            .zip(keep)
            .filter_map(|(d, k)| k.then_some(d))
            .collect();
        let thinned = (total - kept.len()) as u64;
        (kept, thinned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::danmaku::{Color, NewDanmaku};

    fn d(id: u64, text: &str, priority: bool) -> Danmaku {
        Danmaku::stored(
            NewDanmaku {
                room: "r".into(),
                user: "u".into(),
                name: "n".into(),
                text: text.into(),
                mode: Default::default(),
                color: Color::WHITE,
                size: 25,
                vt: None,
                priority,
            },
            id,
            0,
        )
    }

    #[test]
    fn under_the_allowance_nothing_is_thinned() {
        let mut density = Density::default();
        let items: Vec<_> = (1..=10).map(|i| d(i, &format!("t{i}"), false)).collect();
        assert_eq!(density.thin(items, 50).1, 0);
    }

    #[test]
    fn priority_is_kept_and_repeats_go_first() {
        let mut density = Density::default();
        let mut items: Vec<_> = (1..=20).map(|i| d(i, "888", false)).collect();
        items.push(d(21, "welcome everyone", true));
        items.extend((22..=25).map(|i| d(i, &format!("unique {i}"), false)));
        let (kept, thinned) = density.thin(items, 5);
        assert_eq!(kept.len() + thinned as usize, 25);
        assert_eq!(kept.len(), 5);
        assert!(kept.iter().any(|d| d.priority), "the admin's message stays");
        assert_eq!(
            kept.iter().filter(|d| d.text == "888").count(),
            1,
            "one of the repeats"
        );
        assert!(kept.windows(2).all(|w| w[0].id < w[1].id), "in id order");
        // The allowance is spent: the next burst keeps only priority.
        let (kept, _) = density.thin(vec![d(26, "x", false), d(27, "y", true)], 5);
        assert_eq!(kept.iter().map(|d| d.id).collect::<Vec<_>>(), vec![27]);
    }
}
