//! The node's moderation actions: recall, mutes, bans, room settings and
//! held sends. Each changes the guard's live state and records the change
//! with its audit entry in one store transaction.
//!
//! The durable write goes first and the live state follows, so that a
//! failed write leaves nothing in effect that a restart would undo.

use std::net::IpAddr;

use serde_json::json;

use super::Node;
use crate::danmaku::{now_ms, Danmaku};
use crate::error::{ApiError, ErrorCode};
use crate::guard::{self, Admin, Sender};
use crate::moderation::{AuditEntry, Ban, Change, Held, Mute, RoomPatch, RoomSettings};
use crate::store::StoreError;

/// How long an author may recall their own danmaku, from its `ts`.
pub const SELF_RECALL_MS: i64 = 120_000;

impl Node {
    /// Recalls a danmaku: deletes it from history and tells the room's
    /// viewers to hide it. Admins may recall any danmaku; its author (the
    /// same user id, guests included) only within [`SELF_RECALL_MS`].
    pub async fn recall(&self, actor: &Sender, room: &str, id: u64) -> Result<(), ApiError> {
        guard::check_room(room)?;
        let d = self.store.get(room, id).await?.ok_or_else(no_danmaku)?;
        let action = if actor.identity.is_admin() {
            "recall"
        } else if d.user == actor.user() && now_ms() - d.ts <= SELF_RECALL_MS {
            "self_recall"
        } else if d.user == actor.user() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "an author may recall a danmaku only within 120 s of sending it",
            ));
        } else {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "only its author or an admin may recall a danmaku",
            ));
        };
        let entry = entry(
            actor.user(),
            action,
            Some(room),
            id.to_string(),
            json!({ "user": d.user, "text": d.text }),
        );
        let change = Change::Recall {
            room: room.to_owned(),
            id,
        };
        // Someone else recalled it meanwhile.
        if !self.ledger.record(change, entry).await? {
            return Err(no_danmaku());
        }
        self.hub.recall(room, vec![id]);
        Ok(())
    }

    /// Mutes `user` in `room` (or everywhere) for `seconds`.
    pub async fn mute(
        &self,
        admin: &Admin,
        room: Option<&str>,
        user: &str,
        seconds: u64,
    ) -> Result<Mute, ApiError> {
        if let Some(room) = room {
            guard::check_room(room)?;
        }
        check_user(user)?;
        let mute = Mute {
            room: room.map(str::to_owned),
            user: user.to_owned(),
            until: until(seconds),
        };
        let detail = json!({ "seconds": seconds, "until": mute.until });
        let entry = entry(admin.user(), "mute", room, user.to_owned(), detail);
        self.ledger
            .record(Change::Mute(mute.clone()), entry)
            .await?;
        self.guard.moderation().mute(mute.clone());
        Ok(mute)
    }

    /// Lifts a mute of `user` in `room` (or everywhere); `not_found` if
    /// there is no such active mute.
    pub async fn unmute(
        &self,
        admin: &Admin,
        room: Option<&str>,
        user: &str,
    ) -> Result<(), ApiError> {
        if !self
            .guard
            .moderation()
            .mutes(room)
            .iter()
            .any(|m| m.user == user)
        {
            return Err(ApiError::new(ErrorCode::NotFound, "no such active mute"));
        }
        let entry = entry(admin.user(), "unmute", room, user.to_owned(), json!({}));
        let change = Change::Unmute {
            room: room.map(str::to_owned),
            user: user.to_owned(),
        };
        self.ledger.record(change, entry).await?;
        self.guard.moderation().unmute(room, user);
        Ok(())
    }

    /// Bans an address for `seconds`, or for good without.
    pub async fn ban(
        &self,
        admin: &Admin,
        ip: IpAddr,
        seconds: Option<u64>,
    ) -> Result<Ban, ApiError> {
        let ban = Ban {
            ip,
            until: seconds.map(until),
        };
        let detail = json!({ "seconds": seconds, "until": ban.until });
        let entry = entry(admin.user(), "ban", None, ip.to_string(), detail);
        self.ledger.record(Change::Ban(ban.clone()), entry).await?;
        self.guard.moderation().ban(ban.clone());
        Ok(ban)
    }

    /// Lifts a ban; `not_found` if the address has no active ban.
    pub async fn unban(&self, admin: &Admin, ip: IpAddr) -> Result<(), ApiError> {
        if !self.guard.moderation().bans().iter().any(|b| b.ip == ip) {
            return Err(ApiError::new(ErrorCode::NotFound, "no such active ban"));
        }
        let entry = entry(admin.user(), "unban", None, ip.to_string(), json!({}));
        self.ledger.record(Change::Unban(ip), entry).await?;
        self.guard.moderation().unban(ip);
        Ok(())
    }

    /// Changes a room's settings; returns them as they now are.
    pub async fn set_room(
        &self,
        admin: &Admin,
        room: &str,
        patch: RoomPatch,
    ) -> Result<RoomSettings, ApiError> {
        guard::check_room(room)?;
        let settings = self.guard.moderation().room(room).patched(&patch);
        let detail = serde_json::to_value(&patch).unwrap_or_default();
        let entry = entry(admin.user(), "room", Some(room), room.to_owned(), detail);
        self.ledger
            .record(Change::Room(settings.clone()), entry)
            .await?;
        self.guard.moderation().set_room(settings.clone());
        Ok(settings)
    }

    /// Approves a held send: stores and delivers it under its original
    /// sender's user and name. One store transaction removes the held send,
    /// stores the danmaku and writes the audit entry; the danmaku is then
    /// published like any committed send.
    pub async fn approve(&self, admin: &Admin, room: &str, held: u64) -> Result<Danmaku, ApiError> {
        let taken = self.take_held(room, held)?;
        let (actor, room) = (admin.user().to_owned(), room.to_owned());
        let audit = Box::new(move |d: &Danmaku| {
            let detail = json!({ "id": d.id, "user": d.user });
            entry(&actor, "approve", Some(&room), held.to_string(), detail)
        });
        let approved = self
            .ledger
            .approve(held, taken.danmaku.clone(), audit)
            .await;
        self.settle_held(taken, approved)
    }

    /// Rejects a held send: it is dropped.
    pub async fn reject(&self, admin: &Admin, room: &str, held: u64) -> Result<(), ApiError> {
        let taken = self.take_held(room, held)?;
        let detail = json!({ "user": taken.danmaku.user, "text": taken.danmaku.text });
        let entry = entry(admin.user(), "reject", Some(room), held.to_string(), detail);
        let rejected = self.ledger.record(Change::Reject { held }, entry).await;
        self.settle_held(taken, rejected.map(|found| found.then_some(())))
    }

    /// The sends `room` holds, oldest first.
    pub fn held(&self, _admin: &Admin, room: &str) -> Result<Vec<Held>, ApiError> {
        guard::check_room(room)?;
        Ok(self.guard.held().list(room))
    }

    /// The audit log, newest first: up to `limit` entries below `before`.
    pub async fn audit(
        &self,
        _admin: &Admin,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<AuditEntry>, ApiError> {
        Ok(self.ledger.audit(limit, before).await?)
    }

    fn take_held(&self, room: &str, held: u64) -> Result<Held, ApiError> {
        guard::check_room(room)?;
        self.guard.held().take(room, held).ok_or_else(no_held)
    }

    /// The answer to an approval or rejection of `taken`: `None` means the
    /// store no longer held it (someone else settled it); on an error
    /// nothing was written, so it is held again.
    fn settle_held<T>(
        &self,
        taken: Held,
        outcome: Result<Option<T>, StoreError>,
    ) -> Result<T, ApiError> {
        match outcome {
            Ok(Some(done)) => Ok(done),
            Ok(None) => Err(no_held()),
            Err(e) => {
                self.guard.held().restore(taken);
                Err(e.into())
            }
        }
    }
}

fn no_held() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such held send in this room")
}

fn no_danmaku() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such danmaku in this room")
}

/// A user id to mute: what a token's `sub` or a guest id may be.
fn check_user(user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.chars().count() > 64 || user.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "user must be 1 to 64 printable characters",
        ));
    }
    Ok(())
}

/// `seconds` from now, in ms since the epoch (saturating: "for ever").
fn until(seconds: u64) -> i64 {
    let ms = i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    now_ms().saturating_add(ms)
}

fn entry(
    actor: &str,
    action: &str,
    room: Option<&str>,
    target: String,
    detail: serde_json::Value,
) -> AuditEntry {
    AuditEntry {
        id: 0,
        ts: now_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        room: room.map(str::to_owned),
        target: Some(target),
        detail,
    }
}

/// Applies a moderation event another node announced to this node's live
/// state: the change is already durable (the other node wrote it first).
pub(super) fn apply_remote(guard: &crate::guard::Guard, event: &crate::bus::Event) {
    use crate::bus::Event;
    match event {
        Event::Moderated { change } => match change {
            Change::Mute(mute) => guard.moderation().mute(mute.clone()),
            Change::Unmute { room, user } => guard.moderation().unmute(room.as_deref(), user),
            Change::Ban(ban) => guard.moderation().ban(ban.clone()),
            Change::Unban(ip) => guard.moderation().unban(*ip),
            Change::Room(settings) => guard.moderation().set_room(settings.clone()),
            Change::Recall { .. } | Change::Reject { .. } => {}
        },
        Event::Held { held } => guard.held().insert(held.clone()),
        Event::Settled { room, held } => {
            guard.held().take(room, *held);
        }
        Event::Committed { .. } | Event::Recalled { .. } => {}
    }
}
