//! The node's moderation actions: recall, mutes, bans, room settings and
//! held sends. The node checks who asks and what they name; the moderation
//! service ([`Moderator`](crate::moderation::Moderator)) runs each action
//! (durable write with its audit entry, live state, the other nodes). A
//! recall's `delete` frame to this node's viewers is the node's, since
//! only it knows the hub.

use std::net::IpAddr;

use super::Node;
use crate::danmaku::Danmaku;
use crate::error::{ApiError, ErrorCode};
use crate::guard::{self, Admin, Sender};
use crate::moderation::{no_danmaku, AuditEntry, Ban, Held, Mute, RoomPatch, RoomSettings};

impl Node {
    /// Recalls a danmaku: deletes it from history and tells the room's
    /// viewers, here and on the other nodes, to hide it. Admins may recall
    /// any danmaku; its author only for a while
    /// ([`SELF_RECALL_MS`](crate::moderation::SELF_RECALL_MS)).
    pub async fn recall(&self, actor: &Sender, room: &str, id: u64) -> Result<(), ApiError> {
        guard::check_room(room)?;
        let d = self.store.get(room, id).await?.ok_or_else(no_danmaku)?;
        self.moderator
            .recall(actor.user(), actor.identity.is_admin(), &d)
            .await?;
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
        self.moderator.mute(admin.user(), room, user, seconds).await
    }

    /// Lifts a mute of `user` in `room` (or everywhere); `not_found` if
    /// the shared store holds no such mute.
    pub async fn unmute(
        &self,
        admin: &Admin,
        room: Option<&str>,
        user: &str,
    ) -> Result<(), ApiError> {
        self.moderator.unmute(admin.user(), room, user).await
    }

    /// The active mutes of one room (`Some`) or the global ones (`None`).
    pub fn mutes(&self, _admin: &Admin, room: Option<&str>) -> Vec<Mute> {
        self.moderator.live().mutes(room)
    }

    /// Bans an address for `seconds`, or for good without.
    pub async fn ban(
        &self,
        admin: &Admin,
        ip: IpAddr,
        seconds: Option<u64>,
    ) -> Result<Ban, ApiError> {
        self.moderator.ban(admin.user(), ip, seconds).await
    }

    /// Lifts a ban; `not_found` if the address has no active ban.
    pub async fn unban(&self, admin: &Admin, ip: IpAddr) -> Result<(), ApiError> {
        self.moderator.unban(admin.user(), ip).await
    }

    /// The active bans.
    pub fn bans(&self, _admin: &Admin) -> Vec<Ban> {
        self.moderator.live().bans()
    }

    /// A room's settings (the defaults if it has none).
    pub fn room_settings(&self, _admin: &Admin, room: &str) -> RoomSettings {
        self.moderator.live().room(room)
    }

    /// Changes the fields of a room's settings that `patch` names; returns
    /// the settings as stored after it (with their version).
    pub async fn set_room(
        &self,
        admin: &Admin,
        room: &str,
        patch: RoomPatch,
    ) -> Result<RoomSettings, ApiError> {
        guard::check_room(room)?;
        self.moderator.set_room(admin.user(), room, patch).await
    }

    /// Approves a held send: stores and delivers it under its original
    /// sender's user and name, like any committed send.
    pub async fn approve(&self, admin: &Admin, room: &str, held: u64) -> Result<Danmaku, ApiError> {
        guard::check_room(room)?;
        self.moderator.approve(admin.user(), room, held).await
    }

    /// Rejects a held send: it is dropped.
    pub async fn reject(&self, admin: &Admin, room: &str, held: u64) -> Result<(), ApiError> {
        guard::check_room(room)?;
        self.moderator.reject(admin.user(), room, held).await
    }

    /// The sends `room` holds, oldest first.
    pub fn held(&self, _admin: &Admin, room: &str) -> Result<Vec<Held>, ApiError> {
        guard::check_room(room)?;
        Ok(self.moderator.held(room))
    }

    /// The audit log, newest first: up to `limit` entries below `before`.
    pub async fn audit(
        &self,
        _admin: &Admin,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<AuditEntry>, ApiError> {
        self.moderator.audit(limit, before).await
    }
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
