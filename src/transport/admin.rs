//! Moderation routes: recall (authors and admins) and `/api/v1/admin/…`
//! (admins only: 401 `unauthorized` without a valid token, 403 `forbidden`
//! for another role, through the `Admin` extractor). docs/protocol.md
//! lists them; [`router`](super::router) mounts them.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::body::read_json;
use super::params::{path_id, AuditQuery, Query, RoomName, StatsQuery};
use super::App;
use crate::error::{ApiError, ErrorCode};
use crate::guard::{Admin, Sender};
use crate::moderation::RoomPatch;

type Answer = Result<Response, ApiError>;

/// A JSON request body, within the server's body limit.
async fn body<T: DeserializeOwned>(app: &App, body: Body) -> Result<T, ApiError> {
    read_json(body, app.node.config.limits.max_body_bytes).await
}

fn no_content() -> Answer {
    Ok(StatusCode::NO_CONTENT.into_response())
}

// Each handler takes the caller (`Admin`, or `Sender` for a recall) after
// the room and path, so that a bad room is `invalid_room` whoever asks, and
// before the body, which is not read for a caller who may not.

/// Recalls a danmaku: its author, or an admin.
pub(super) async fn recall(
    State(app): State<App>,
    RoomName(room): RoomName,
    Path((_, id)): Path<(String, String)>,
    actor: Sender,
) -> Answer {
    app.node.recall(&actor, &room, path_id("id", &id)?).await?;
    no_content()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    user: String,
    seconds: u64,
}

/// Mutes a user everywhere.
pub(super) async fn mute_global(State(app): State<App>, admin: Admin, b: Body) -> Answer {
    mute(app, admin, None, b).await
}

/// Mutes a user in one room.
pub(super) async fn mute_in_room(
    State(app): State<App>,
    RoomName(room): RoomName,
    admin: Admin,
    b: Body,
) -> Answer {
    mute(app, admin, Some(room), b).await
}

async fn mute(app: App, admin: Admin, room: Option<String>, b: Body) -> Answer {
    let req: MuteBody = body(&app, b).await?;
    if req.seconds == 0 {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "seconds must be at least 1",
        ));
    }
    let mute = app
        .node
        .mute(&admin, room.as_deref(), &req.user, req.seconds)
        .await?;
    Ok((StatusCode::CREATED, Json(mute)).into_response())
}

/// Lifts a user's global mute.
pub(super) async fn unmute_global(
    State(app): State<App>,
    Path(user): Path<String>,
    admin: Admin,
) -> Answer {
    app.node.unmute(&admin, None, &user).await?;
    no_content()
}

/// Lifts a user's mute in one room.
pub(super) async fn unmute_in_room(
    State(app): State<App>,
    RoomName(room): RoomName,
    Path((_, user)): Path<(String, String)>,
    admin: Admin,
) -> Answer {
    app.node.unmute(&admin, Some(&room), &user).await?;
    no_content()
}

/// Lists the global mutes.
pub(super) async fn global_mutes(State(app): State<App>, admin: Admin) -> Answer {
    let items = app.node.mutes(&admin, None);
    Ok(Json(json!({ "items": items })).into_response())
}

/// Lists one room's mutes.
pub(super) async fn room_mutes(
    State(app): State<App>,
    RoomName(room): RoomName,
    admin: Admin,
) -> Answer {
    let items = app.node.mutes(&admin, Some(&room));
    Ok(Json(json!({ "room": room, "items": items })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanBody {
    ip: IpAddr,
    seconds: Option<u64>,
}

/// Bans an address, for a while or for good.
pub(super) async fn ban(State(app): State<App>, admin: Admin, b: Body) -> Answer {
    let req: BanBody = body(&app, b).await?;
    if req.seconds == Some(0) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "seconds must be at least 1 (leave it out for a permanent ban)",
        ));
    }
    let ban = app.node.ban(&admin, req.ip, req.seconds).await?;
    Ok((StatusCode::CREATED, Json(ban)).into_response())
}

/// Lifts a ban.
pub(super) async fn unban(State(app): State<App>, Path(ip): Path<String>, admin: Admin) -> Answer {
    let ip = ip
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::InvalidField, "not an IP address"))?;
    app.node.unban(&admin, ip).await?;
    no_content()
}

/// Lists the bans.
pub(super) async fn bans(State(app): State<App>, admin: Admin) -> Answer {
    let items = app.node.bans(&admin);
    Ok(Json(json!({ "items": items })).into_response())
}

/// A room's settings.
pub(super) async fn room(State(app): State<App>, RoomName(room): RoomName, admin: Admin) -> Answer {
    Ok(Json(app.node.room_settings(&admin, &room)).into_response())
}

/// Changes a room's settings.
pub(super) async fn patch_room(
    State(app): State<App>,
    RoomName(room): RoomName,
    admin: Admin,
    b: Body,
) -> Answer {
    let patch: RoomPatch = body(&app, b).await?;
    Ok(Json(app.node.set_room(&admin, &room, patch).await?).into_response())
}

/// Lists a room's held sends.
pub(super) async fn held(State(app): State<App>, RoomName(room): RoomName, admin: Admin) -> Answer {
    let items = app.node.held(&admin, &room)?;
    Ok(Json(json!({ "room": room, "items": items })).into_response())
}

/// Approves a held send: it is stored and delivered.
pub(super) async fn approve(
    State(app): State<App>,
    RoomName(room): RoomName,
    Path((_, held)): Path<(String, String)>,
    admin: Admin,
) -> Answer {
    let stored = app
        .node
        .approve(&admin, &room, path_id("held id", &held)?)
        .await?;
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

/// Rejects a held send.
pub(super) async fn reject(
    State(app): State<App>,
    RoomName(room): RoomName,
    Path((_, held)): Path<(String, String)>,
    admin: Admin,
) -> Answer {
    app.node
        .reject(&admin, &room, path_id("held id", &held)?)
        .await?;
    no_content()
}

/// A page of the audit log, newest first.
pub(super) async fn audit(
    State(app): State<App>,
    admin: Admin,
    Query(q): Query<AuditQuery>,
) -> Answer {
    let (limit, before) = q.check()?;
    let items = app.node.audit(&admin, limit, before).await?;
    Ok(Json(json!({ "items": items })).into_response())
}

/// The admin dashboard's live figures: the node's samples after `after`
/// and its busiest rooms (docs/protocol.md, "Live stats").
pub(super) async fn stats(
    State(app): State<App>,
    admin: Admin,
    Query(q): Query<StatsQuery>,
) -> Answer {
    Ok(Json(app.node.stats(&admin, q.after)).into_response())
}
