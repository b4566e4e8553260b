//! Moderation: mutes, address bans, room settings (closed, slow mode,
//! pre-moderation), held sends and the audit log.
//!
//! The types here are what the store persists, the admin API shows and
//! the bus carries. [`Moderator`] (`service.rs`) is the service that owns
//! the moderation of a node: the live state the guard consults on every
//! send and stream ([`Moderation`], `state.rs`), the sends pre-moderation
//! holds back (`held.rs`) and the durable ledger. It records each change
//! with its audit entry in one store transaction, so the log never misses
//! an action, then makes it take effect and announces it to the other
//! nodes.

mod held;
mod service;
mod state;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use held::{Held, MAX_HELD_PER_ROOM};
pub use service::{no_danmaku, Announce, Moderator, RELOAD_EVERY, SELF_RECALL_MS};
pub use state::{slow_mode_refused, Moderation, Verdict};

/// A user who may not send: in one room, or everywhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mute {
    /// The room, or `None` for every room.
    pub room: Option<String>,
    /// The muted user id.
    pub user: String,
    /// When the mute ends, in ms since the Unix epoch.
    pub until: i64,
}

/// An address that may neither send nor open a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// The banned address.
    pub ip: IpAddr,
    /// When the ban ends, in ms since the Unix epoch; `None`: never.
    pub until: Option<i64>,
}

/// A room's moderation settings. The default is an open room without slow
/// mode or pre-moderation, at version 0 (never changed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSettings {
    /// The room.
    pub room: String,
    /// Sends are refused; viewers may still watch.
    pub closed: bool,
    /// One send per user per this many seconds (0: off); admins are exempt.
    pub slow_mode_s: u32,
    /// Non-admin sends are held until an admin approves them.
    pub premod: bool,
    /// How many changes the store has applied to the room's settings:
    /// each bumps it by one, so a node keeps the settings with the higher
    /// version, whatever order their announcements arrive in. (Absent in
    /// what older nodes sent: 0.)
    #[serde(default)]
    pub version: u64,
}

/// A partial update of [`RoomSettings`]: absent fields stay as they are.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoomPatch {
    /// New `closed`, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed: Option<bool>,
    /// New `slow_mode_s`, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_mode_s: Option<u32>,
    /// New `premod`, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub premod: Option<bool>,
}

/// One admin (or author) action, as the audit log keeps it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEntry {
    /// The entry's id, ascending with time (0 until stored).
    pub id: u64,
    /// When, in ms since the Unix epoch.
    pub ts: i64,
    /// The user id who acted.
    pub actor: String,
    /// What was done: `recall`, `self_recall`, `mute`, `unmute`, `ban`,
    /// `unban`, `room`, `approve` or `reject`.
    pub action: String,
    /// The room concerned, if any.
    pub room: Option<String>,
    /// What the action was about: a danmaku id, a user, an address, a held id.
    pub target: Option<String>,
    /// The action's parameters.
    pub detail: serde_json::Value,
}

/// A change of durable state that goes with an audit entry (and crosses
/// the bus to the other nodes once it took effect). A room's settings are
/// not one: the store patches them itself
/// ([`ModerationStore::set_room`](crate::store::ModerationStore::set_room)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// Drop a rejected held send. (An approval is one transaction of its
    /// own: `ModerationStore::approve`.)
    Reject {
        /// Its held id.
        held: u64,
    },
    /// Delete a stored danmaku.
    Recall {
        /// Its room.
        room: String,
        /// Its id.
        id: u64,
    },
    /// Add or replace a mute.
    Mute(Mute),
    /// Lift a mute.
    Unmute {
        /// Its room, or `None` for a mute everywhere.
        room: Option<String>,
        /// The user.
        user: String,
    },
    /// Add or replace a ban.
    Ban(Ban),
    /// Lift a ban.
    Unban(IpAddr),
}

/// The durable moderation state, as loaded at start-up (unexpired only).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Active mutes.
    pub mutes: Vec<Mute>,
    /// Active bans.
    pub bans: Vec<Ban>,
    /// Rooms with settings.
    pub rooms: Vec<RoomSettings>,
    /// Held sends, ascending by held id.
    pub held: Vec<Held>,
}
