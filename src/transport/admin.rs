//! Moderation routes: recall (authors and admins) and `/api/v1/admin/…`
//! (admins only: 401 `unauthorized` without a valid token, 403 `forbidden`
//! for another role). docs/protocol.md lists them.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::client::ClientAddr;
use super::http::{parse_json, read_body};
use super::params::{parse_query, path_id, AuditQuery, RoomName};
use super::App;
use crate::error::{ApiError, ErrorCode};
use crate::guard::auth::bearer;
use crate::guard::Admin;
use crate::moderation::RoomPatch;

type Answer = Result<Response, ApiError>;

/// The moderation routes, merged into the main router.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/api/v1/rooms/{room}/danmaku/{id}", delete(recall))
        .route("/api/v1/admin/mutes", get(global_mutes).post(mute_global))
        .route("/api/v1/admin/mutes/{user}", delete(unmute_global))
        .route("/api/v1/admin/rooms/{room}", get(room).patch(patch_room))
        .route(
            "/api/v1/admin/rooms/{room}/mutes",
            get(room_mutes).post(mute_in_room),
        )
        .route(
            "/api/v1/admin/rooms/{room}/mutes/{user}",
            delete(unmute_in_room),
        )
        .route("/api/v1/admin/rooms/{room}/held", get(held))
        .route(
            "/api/v1/admin/rooms/{room}/held/{held}/approve",
            post(approve),
        )
        .route(
            "/api/v1/admin/rooms/{room}/held/{held}/reject",
            post(reject),
        )
        .route("/api/v1/admin/bans", get(bans).post(ban))
        .route("/api/v1/admin/bans/{ip}", delete(unban))
        .route("/api/v1/admin/audit", get(audit))
}

/// The caller, who must be an admin.
fn admin(app: &App, headers: &HeaderMap, client: IpAddr) -> Result<Admin, ApiError> {
    let sender = app.node.identify(bearer(headers), client)?;
    app.node.guard.admin(sender)
}

/// A JSON request body, within the server's body limit.
async fn body<T: DeserializeOwned>(app: &App, body: Body) -> Result<T, ApiError> {
    parse_json(&read_body(body, app.node.config.limits.max_body_bytes).await?)
}

fn no_content() -> Answer {
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn recall(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RoomName(room): RoomName,
    Path((_, id)): Path<(String, String)>,
) -> Answer {
    let actor = app.node.identify(bearer(&headers), client)?;
    app.node.recall(&actor, &room, path_id("id", &id)?).await?;
    no_content()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    user: String,
    seconds: u64,
}

async fn mute_global(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    b: Body,
) -> Answer {
    mute(app, headers, client, None, b).await
}

async fn mute_in_room(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RoomName(room): RoomName,
    b: Body,
) -> Answer {
    mute(app, headers, client, Some(room), b).await
}

async fn mute(
    app: App,
    headers: HeaderMap,
    client: IpAddr,
    room: Option<String>,
    b: Body,
) -> Answer {
    let admin = admin(&app, &headers, client)?;
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

async fn unmute_global(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Answer {
    let admin = admin(&app, &headers, client)?;
    app.node.unmute(&admin, None, &user).await?;
    no_content()
}

async fn unmute_in_room(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RoomName(room): RoomName,
    Path((_, user)): Path<(String, String)>,
) -> Answer {
    let admin = admin(&app, &headers, client)?;
    app.node.unmute(&admin, Some(&room), &user).await?;
    no_content()
}

async fn global_mutes(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
) -> Answer {
    let admin = admin(&app, &headers, client)?;
    let items = app.node.mutes(&admin, None);
    Ok(Json(json!({ "items": items })).into_response())
}

async fn room_mutes(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RoomName(room): RoomName,
) -> Answer {
    let admin = admin(&app, &headers, client)?;
    let items = app.node.mutes(&admin, Some(&room));
    Ok(Json(json!({ "room": room, "items": items })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanBody {
    ip: IpAddr,
    seconds: Option<u64>,
}

async fn ban(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    b: Body,
) -> Answer {
    let admin = admin(&app, &headers, client)?;
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

async fn unban(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Path(ip): Path<String>,
) -> Answer {
    let admin = admin(&app, &headers, client)?;
    let ip = ip
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::InvalidField, "not an IP address"))?;
    app.node.unban(&admin, ip).await?;
    no_content()
}

async fn bans(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
) -> Answer {
    let admin = admin(&app, &headers, client)?;
    let items = app.node.bans(&admin);
    Ok(Json(json!({ "items": items })).into_response())
}

async fn room(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RoomName(room): RoomName,
) -> Answer {
    let admin = admin(&app, &headers, client)?;
    Ok(Json(app.node.room_settings(&admin, &room)).into_response())
}

async fn patch_room(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RoomName(room): RoomName,
    b: Body,
) -> Answer {
    let admin = admin(&app, &headers, client)?;
    let patch: RoomPatch = body(&app, b).await?;
    Ok(Json(app.node.set_room(&admin, &room, patch).await?).into_response())
}

async fn held(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RoomName(room): RoomName,
) -> Answer {
    let admin = admin(&app, &headers, client)?;
    let items = app.node.held(&admin, &room)?;
    Ok(Json(json!({ "room": room, "items": items })).into_response())
}

async fn approve(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RoomName(room): RoomName,
    Path((_, held)): Path<(String, String)>,
) -> Answer {
    let admin = admin(&app, &headers, client)?;
    let stored = app
        .node
        .approve(&admin, &room, path_id("held id", &held)?)
        .await?;
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

async fn reject(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RoomName(room): RoomName,
    Path((_, held)): Path<(String, String)>,
) -> Answer {
    let admin = admin(&app, &headers, client)?;
    app.node
        .reject(&admin, &room, path_id("held id", &held)?)
        .await?;
    no_content()
}

async fn audit(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Answer {
    let admin = admin(&app, &headers, client)?;
    let (limit, before) = parse_query::<AuditQuery>(query.as_deref())?.check()?;
    let items = app.node.audit(&admin, limit, before).await?;
    Ok(Json(json!({ "items": items })).into_response())
}
