//! The rooms list (`GET /api/v1/rooms`, and the admin dashboard's busiest
//! rooms): the rooms this node's hub holds, with the hub's figures, and the
//! rooms that presence says other nodes' viewers watch, merged and paged.
//! The hub knows nothing of presence; the node, which knows both, merges.

use std::collections::HashSet;

use crate::hub::RoomStats;
use crate::presence::Counts;

/// The order of a page of rooms ([`RoomOrder::page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomOrder {
    /// Ascending by name, starting after this name (from the first without).
    ByName {
        /// The last name of the page before.
        after: Option<String>,
    },
    /// Most viewers first (then by name), skipping the first `skip` rooms.
    /// Counts change between pages, so pages may overlap or miss a room.
    ByOnline {
        /// Rooms of the pages before.
        skip: usize,
    },
}

impl RoomOrder {
    /// Whether a room named `name` may be on the page: by name, only the
    /// rooms after the page before. Lets a caller leave the others out
    /// before it gathers their figures.
    pub fn admits(&self, name: &str) -> bool {
        match self {
            RoomOrder::ByName { after } => after.as_deref().is_none_or(|a| name > a),
            RoomOrder::ByOnline { .. } => true,
        }
    }

    /// One page of `rooms` (each room at most once, in any order): at most
    /// `limit` of them in this order, and whether more follow it.
    ///
    /// By name, a page holds the rooms whose names follow `after`, so
    /// paging by the last name returned lists every room present
    /// throughout exactly once, however rooms come and go meanwhile.
    pub fn page(&self, mut rooms: Vec<RoomStats>, limit: usize) -> (Vec<RoomStats>, bool) {
        rooms.retain(|r| self.admits(&r.room));
        let skip = match self {
            RoomOrder::ByName { .. } => {
                rooms.sort_unstable_by(|a, b| a.room.cmp(&b.room));
                0
            }
            RoomOrder::ByOnline { skip } => {
                rooms.sort_unstable_by(|a, b| {
                    b.online.cmp(&a.online).then_with(|| a.room.cmp(&b.room))
                });
                *skip
            }
        };
        let more = rooms.len() > skip.saturating_add(limit);
        (rooms.into_iter().skip(skip).take(limit).collect(), more)
    }
}

/// The cluster's rooms, each once: `held`, the rooms this node's hub
/// holds, with the hub's figures (their `online` already counts the other
/// nodes' viewers), and every room of `elsewhere` (the other nodes'
/// viewers by room, as presence last read them) that the hub does not hold.
pub fn merge(mut held: Vec<RoomStats>, elsewhere: Counts) -> Vec<RoomStats> {
    let here: HashSet<String> = held.iter().map(|r| r.room.clone()).collect();
    held.extend(
        elsewhere
            .into_iter()
            .filter(|(room, online)| *online > 0 && !here.contains(room))
            .map(|(room, online)| held_elsewhere(room, online)),
    );
    held
}

/// The figures of a room this node's hub does not hold, whose viewers (if
/// any) are on other nodes: `online` of them. This node neither sees its
/// danmaku (`rate_per_s` 0) nor knows its newest id (left out).
pub fn held_elsewhere(room: String, online: u64) -> RoomStats {
    RoomStats {
        room,
        online: usize::try_from(online).unwrap_or(usize::MAX),
        online_local: 0,
        last_id: None,
        rate_per_s: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A room the hub holds: `local` viewers here, `remote` elsewhere.
    fn held(room: &str, local: usize, remote: usize) -> RoomStats {
        RoomStats {
            room: room.to_owned(),
            online: local + remote,
            online_local: local,
            last_id: Some(7),
            rate_per_s: 1.5,
        }
    }

    fn counts(rooms: &[(&str, u64)]) -> Counts {
        rooms.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect()
    }

    fn names(rooms: &[RoomStats]) -> Vec<&str> {
        rooms.iter().map(|r| r.room.as_str()).collect()
    }

    fn by_name(after: Option<&str>) -> RoomOrder {
        RoomOrder::ByName {
            after: after.map(str::to_owned),
        }
    }

    #[test]
    fn a_room_watched_only_elsewhere_is_listed_once_with_its_remote_viewers() {
        let rooms = merge(vec![held("here", 1, 0)], counts(&[("there", 3)]));
        let (page, more) = by_name(None).page(rooms, 10);
        assert!(!more);
        assert_eq!(names(&page), ["here", "there"]);
        assert_eq!(page[1], held_elsewhere("there".to_owned(), 3));
        let json = serde_json::to_value(&page[1]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"room": "there", "online": 3, "online_local": 0, "rate_per_s": 0.0}),
            "no last_id"
        );
    }

    #[test]
    fn a_room_held_here_and_watched_elsewhere_is_listed_once_with_the_hubs_figures() {
        let rooms = merge(
            vec![held("both", 1, 2), held("sends-only", 0, 4)],
            counts(&[("both", 2), ("sends-only", 4), ("gone", 0)]),
        );
        assert_eq!(rooms, [held("both", 1, 2), held("sends-only", 0, 4)]);
    }

    #[test]
    fn by_name_pages_follow_the_last_name_over_the_merged_rooms() {
        let hub = || vec![held("b", 1, 0), held("d", 2, 1), held("f", 1, 0)];
        let elsewhere = || counts(&[("a", 1), ("c", 5), ("d", 1), ("e", 2)]);
        let (first, more) = by_name(None).page(merge(hub(), elsewhere()), 2);
        assert_eq!((names(&first), more), (vec!["a", "b"], true));
        // Between pages "c" (elsewhere) goes and "bb" (here, before the
        // cursor) and "cc" (elsewhere, after it) come: each room once.
        let mut hub_now = hub();
        hub_now.push(held("bb", 1, 0));
        let mut elsewhere_now = elsewhere();
        elsewhere_now.remove("c");
        elsewhere_now.insert("cc".to_owned(), 1);
        let (second, more) = by_name(Some("b")).page(merge(hub_now.clone(), elsewhere_now), 2);
        assert_eq!((names(&second), more), (vec!["bb", "cc"], true));
        assert_eq!(second[0], held("bb", 1, 0));
        let (third, more) = by_name(Some("cc")).page(merge(hub_now, counts(&[("e", 2)])), 2);
        assert_eq!((names(&third), more), (vec!["d", "e"], true));
        assert_eq!(third[0], held("d", 2, 1), "the hub's figures");
        let (last, more) = by_name(Some("e")).page(merge(hub(), elsewhere()), 2);
        assert_eq!((names(&last), more), (vec!["f"], false));
    }

    #[test]
    fn by_online_the_busiest_come_first_here_or_elsewhere_then_by_name() {
        let rooms = || {
            merge(
                vec![held("quiet", 1, 0), held("shared", 2, 3)],
                counts(&[("far", 9), ("shared", 3), ("b", 1), ("a", 1)]),
            )
        };
        let (first, more) = RoomOrder::ByOnline { skip: 0 }.page(rooms(), 3);
        assert_eq!((names(&first), more), (vec!["far", "shared", "a"], true));
        assert_eq!(first[1].online_local, 2);
        let (rest, more) = RoomOrder::ByOnline { skip: 3 }.page(rooms(), 3);
        assert_eq!((names(&rest), more), (vec!["b", "quiet"], false));
        let (all, more) = RoomOrder::ByOnline { skip: 0 }.page(rooms(), usize::MAX);
        assert_eq!((all.len(), more), (5, false));
    }
}
