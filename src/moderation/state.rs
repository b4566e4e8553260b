//! The live moderation state: what the guard asks on every send and stream.
//!
//! Reads dominate (every send checks a ban, two mute keys and its room's
//! settings), so the maps sit behind `RwLock`s; admin changes are rare.
//! Only the [`Moderator`](super::Moderator) changes it, so that every
//! change is durable first and reaches the other nodes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use super::{Ban, Mute, RoomSettings, Snapshot};
use crate::danmaku::now_ms;
use crate::error::{ApiError, ErrorCode};

/// What becomes of a send that passed every check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Store and deliver it.
    Publish,
    /// Hold it for a moderator (the room is pre-moderated).
    Hold,
}

/// Mutes, bans, room settings and the slow-mode clock.
pub struct Moderation {
    /// `(room or None for everywhere, user) → until (ms)`.
    mutes: RwLock<HashMap<(Option<String>, String), i64>>,
    /// `address → until (ms)`, `None`: permanent.
    bans: RwLock<HashMap<IpAddr, Option<i64>>>,
    rooms: RwLock<HashMap<String, RoomSettings>>,
    /// `(room, user) →` the last send slow mode let through.
    last_send: Mutex<HashMap<(String, String), Instant>>,
    /// The most `last_send` remembers; past it, new keys pass unremembered
    /// (fail open, like the rate limiters), until a sweep makes room.
    max_keys: usize,
}

impl Moderation {
    /// The state as loaded from the store (its held sends aside).
    pub(super) fn new(snapshot: Snapshot, max_keys: usize) -> Moderation {
        let state = Moderation {
            mutes: RwLock::default(),
            bans: RwLock::default(),
            rooms: RwLock::default(),
            last_send: Mutex::new(HashMap::new()),
            max_keys,
        };
        state.replace(snapshot);
        state
    }

    /// Replaces the mutes, bans and room settings with `snapshot`'s (a
    /// reload). The slow-mode clock stays: it is this node's own.
    pub(super) fn replace(&self, snapshot: Snapshot) {
        *write(&self.mutes) = snapshot
            .mutes
            .into_iter()
            .map(|m| ((m.room, m.user), m.until))
            .collect();
        *write(&self.bans) = snapshot.bans.into_iter().map(|b| (b.ip, b.until)).collect();
        *write(&self.rooms) = snapshot
            .rooms
            .into_iter()
            .map(|r| (r.room.clone(), r))
            .collect();
    }

    /// Refuses a banned address (sends and streams alike).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        let now = now_ms();
        match read(&self.bans).get(&ip) {
            Some(None) => Err(forbidden("this address is banned".into())),
            Some(Some(until)) if *until > now => Err(forbidden(format!(
                "this address is banned for another {} s",
                secs_until(*until, now)
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses a muted user, or any non-admin in a closed room.
    pub fn check_sender(&self, room: &str, user: &str, admin: bool) -> Result<(), ApiError> {
        let now = now_ms();
        {
            let mutes = read(&self.mutes);
            let here = mutes.get(&(Some(room.to_owned()), user.to_owned()));
            let everywhere = mutes.get(&(None, user.to_owned()));
            if let Some(until) = here
                .into_iter()
                .chain(everywhere)
                .filter(|u| **u > now)
                .max()
            {
                return Err(forbidden(format!(
                    "muted until {until} (ms since the Unix epoch), {} s from now",
                    secs_until(*until, now)
                )));
            }
        }
        if !admin && self.room(room).closed {
            return Err(forbidden("room closed: it takes no sends for now".into()));
        }
        Ok(())
    }

    /// Slow mode: refuses a user's second send within the room's interval,
    /// else remembers this one. Not asked for admins.
    pub fn check_slow_mode(&self, room: &str, user: &str) -> Result<(), ApiError> {
        let every = self.room(room).slow_mode_s;
        if every == 0 {
            return Ok(());
        }
        let every = Duration::from_secs(u64::from(every));
        let now = Instant::now();
        let mut last = self.last_send.lock().unwrap_or_else(|e| e.into_inner());
        let key = (room.to_owned(), user.to_owned());
        if let Some(at) = last.get(&key) {
            let wait = every.saturating_sub(now.duration_since(*at));
            if !wait.is_zero() {
                return Err(slow_mode_refused(every, wait));
            }
        }
        if last.len() < self.max_keys || last.contains_key(&key) {
            last.insert(key, now);
        }
        Ok(())
    }

    /// Whether a send that passed every check is published or held.
    pub fn verdict(&self, room: &str, admin: bool) -> Verdict {
        if !admin && self.room(room).premod {
            Verdict::Hold
        } else {
            Verdict::Publish
        }
    }

    /// A room's settings (the defaults if it has none).
    pub fn room(&self, room: &str) -> RoomSettings {
        read(&self.rooms)
            .get(room)
            .cloned()
            .unwrap_or_else(|| RoomSettings {
                room: room.to_owned(),
                ..RoomSettings::default()
            })
    }

    /// Takes a room's settings as the store last stored them, unless
    /// those held here are as new (same or higher version): announcements
    /// may arrive late, twice or out of order, and must never move the
    /// room back to older settings.
    pub(super) fn set_room(&self, settings: RoomSettings) {
        let mut rooms = write(&self.rooms);
        let held = rooms.get(&settings.room).map_or(0, |r| r.version);
        if settings.version > held {
            rooms.insert(settings.room.clone(), settings);
        }
    }

    /// Adds or replaces a mute.
    pub(super) fn mute(&self, mute: Mute) {
        write(&self.mutes).insert((mute.room, mute.user), mute.until);
    }

    /// Lifts a mute.
    pub(super) fn unmute(&self, room: Option<&str>, user: &str) {
        write(&self.mutes).remove(&(room.map(str::to_owned), user.to_owned()));
    }

    /// The active mutes of one room (`Some`) or the global ones (`None`).
    pub fn mutes(&self, room: Option<&str>) -> Vec<Mute> {
        let now = now_ms();
        let mut list: Vec<Mute> = read(&self.mutes)
            .iter()
            .filter(|((r, _), until)| r.as_deref() == room && **until > now)
            .map(|((r, user), until)| Mute {
                room: r.clone(),
                user: user.clone(),
                until: *until,
            })
            .collect();
        list.sort_by(|a, b| a.user.cmp(&b.user));
        list
    }

    /// Adds or replaces a ban.
    pub(super) fn ban(&self, ban: Ban) {
        write(&self.bans).insert(ban.ip, ban.until);
    }

    /// Lifts a ban.
    pub(super) fn unban(&self, ip: IpAddr) {
        write(&self.bans).remove(&ip);
    }

    /// The active bans.
    pub fn bans(&self) -> Vec<Ban> {
        let now = now_ms();
        let mut list: Vec<Ban> = read(&self.bans)
            .iter()
            .filter(|(_, until)| until.is_none_or(|u| u > now))
            .map(|(ip, until)| Ban {
                ip: *ip,
                until: *until,
            })
            .collect();
        list.sort_by_key(|b| b.ip);
        list
    }

    /// Forgets expired mutes and bans, and slow-mode times that no longer
    /// hold anyone back. O(entries): run off the runtime's workers.
    pub(super) fn sweep(&self) {
        let now = now_ms();
        write(&self.mutes).retain(|_, until| *until > now);
        write(&self.bans).retain(|_, until| until.is_none_or(|u| u > now));
        let rooms = read(&self.rooms);
        self.last_send
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(room, _), at| {
                let every = rooms.get(room).map_or(0, |r| r.slow_mode_s);
                at.elapsed() < Duration::from_secs(u64::from(every))
            });
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

/// Whole seconds from `now` to `until`, rounded up.
fn secs_until(until: i64, now: i64) -> i64 {
    (until - now + 999) / 1000
}

// A panic while holding one of these locks leaves a map that is still
// whole (every change is one insert or remove), so go on with it.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// Slow mode's refusal of a send `wait` before the room's interval of
/// `every` has passed since the user's last one (on this node, or on any
/// node when the cluster shares its limits in Redis).
pub fn slow_mode_refused(every: Duration, wait: Duration) -> ApiError {
    let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    ApiError::new(
        ErrorCode::RateLimited,
        format!("slow mode: one send per {} s in this room", every.as_secs()),
    )
    .with_retry_after(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> Moderation {
        Moderation::new(Snapshot::default(), 10)
    }

    #[test]
    fn mutes_apply_per_room_or_everywhere_and_expire() {
        let m = state();
        let later = now_ms() + 60_000;
        m.mute(Mute {
            room: Some("a".into()),
            user: "u".into(),
            until: later,
        });
        assert_eq!(
            m.check_sender("a", "u", false).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert!(m.check_sender("b", "u", false).is_ok());
        m.mute(Mute {
            room: None,
            user: "v".into(),
            until: later,
        });
        assert!(m.check_sender("b", "v", true).is_err(), "admins too");
        m.mute(Mute {
            room: None,
            user: "w".into(),
            until: now_ms() - 1,
        });
        assert!(m.check_sender("b", "w", false).is_ok(), "expired");
        assert_eq!(m.mutes(None).len(), 1);
        m.unmute(Some("a"), "u");
        assert!(m.check_sender("a", "u", false).is_ok());
    }

    #[test]
    fn closed_rooms_slow_mode_and_premod() {
        let m = state();
        m.set_room(RoomSettings {
            room: "r".into(),
            closed: true,
            slow_mode_s: 30,
            premod: true,
            version: 1,
        });
        assert!(m.check_sender("r", "u", false).is_err());
        assert!(m.check_sender("r", "u", true).is_ok());
        assert!(m.check_slow_mode("r", "u").is_ok());
        let e = m.check_slow_mode("r", "u").unwrap_err();
        assert_eq!(
            (e.code, e.retry_after_s),
            (ErrorCode::RateLimited, Some(30))
        );
        assert!(m.check_slow_mode("r", "other").is_ok());
        assert!(m.check_slow_mode("elsewhere", "u").is_ok());
        assert_eq!(m.verdict("r", false), Verdict::Hold);
        assert_eq!(m.verdict("r", true), Verdict::Publish);
        assert_eq!(m.verdict("elsewhere", false), Verdict::Publish);
    }

    #[test]
    fn bans_permanent_or_timed() {
        let m = state();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        m.ban(Ban { ip, until: None });
        assert!(m.check_ip(ip).is_err());
        assert!(m.check_ip("10.0.0.2".parse().unwrap()).is_ok());
        m.ban(Ban {
            ip,
            until: Some(now_ms() - 5),
        });
        assert!(m.check_ip(ip).is_ok(), "expired");
        assert!(m.bans().is_empty());
        m.ban(Ban { ip, until: None });
        m.unban(ip);
        assert!(m.check_ip(ip).is_ok());
    }
}
