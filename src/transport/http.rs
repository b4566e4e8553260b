//! HTTP routes: the REST API (rooms, history, sends), health and metrics.
//! [`router`](super::router) mounts them.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::body::read_json;
use super::params::{
    next_cursor, too_many_buckets, DensityQuery, DensityRange, HistoryQuery, HistoryRange, Query,
    RoomName, RoomsQuery, MAX_DENSITY_BUCKETS,
};
use super::App;
use crate::danmaku::Danmaku;
use crate::error::ApiError;
use crate::guard::{SendRequest, Sender};
use crate::node::Sent;

/// 200 whenever the process serves HTTP; the body says whether the node
/// is degraded (it still serves reads and viewers then), and why.
pub(super) async fn healthz(State(app): State<App>) -> Json<serde_json::Value> {
    Json(match app.node.degraded() {
        None => serde_json::json!({ "status": "ok", "node_id": app.node.node_id() }),
        Some(reason) => serde_json::json!({
            "status": "degraded",
            "reason": reason,
            "node_id": app.node.node_id(),
        }),
    })
}

/// The Prometheus metrics.
pub(super) async fn metrics(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.node.metrics.render(),
    )
        .into_response()
}

/// A page of `GET /api/v1/rooms`.
#[derive(Serialize)]
struct Rooms {
    rooms: Vec<crate::hub::RoomStats>,
    /// The `cursor` of the next page; `None` on the last one.
    next_cursor: Option<String>,
}

/// `GET /api/v1/rooms`: a page of rooms, in the order asked for.
pub(super) async fn list_rooms(State(app): State<App>, Query(q): Query<RoomsQuery>) -> Response {
    match q.check() {
        Ok((order, limit)) => {
            let (rooms, more) = app.node.rooms(&order, limit);
            let next_cursor = match rooms.last() {
                Some(last) if more => Some(next_cursor(&order, &last.room, rooms.len())),
                _ => None,
            };
            Json(Rooms { rooms, next_cursor }).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /api/v1/rooms/{room}`: one room's figures.
pub(super) async fn room_stats(State(app): State<App>, RoomName(room): RoomName) -> Response {
    match app.node.room(&room).await {
        Ok(stats) => Json(stats).into_response(),
        Err(e) => e.into_response(),
    }
}

/// POST a danmaku: 201 with the stored danmaku once it is durable, or 202
/// with the held send in a pre-moderated room.
pub(super) async fn send(
    State(app): State<App>,
    room: Result<RoomName, ApiError>,
    sender: Result<Sender, ApiError>,
    body: Body,
) -> Response {
    let limit = app.node.config.limits.max_body_bytes;
    // Every refusal is counted once: the room and the body here, the
    // token by `Node::identify`, and the node's own checks by `Node::send`.
    let count = |e: &ApiError| app.node.metrics.reject(e.code);
    let result = async {
        let RoomName(room) = room.inspect_err(count)?;
        let sender = sender?;
        let req = read_json::<SendRequest>(body, limit)
            .await
            .inspect_err(count)?;
        app.node.send(&room, &sender, req).await
    }
    .await;
    match result {
        Ok(Sent::Stored(d)) => (StatusCode::CREATED, Json(d)).into_response(),
        // Pre-moderated room: accepted, but neither stored nor delivered.
        Ok(Sent::Held(h)) => (StatusCode::ACCEPTED, Json(h)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Serialize)]
struct History {
    room: String,
    items: Vec<Danmaku>,
}

/// History by id (`after`) or by video time (`from`/`to`).
pub(super) async fn history(
    State(app): State<App>,
    RoomName(room): RoomName,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let result = async {
        let items = match q.check(app.node.config.limits.max_history)? {
            (HistoryRange::After(after), limit) => {
                app.node.history_after(&room, after, limit).await?
            }
            (HistoryRange::VideoTime { from, to }, limit) => {
                app.node
                    .history_by_video_time(&room, from, to, limit)
                    .await?
            }
        };
        Ok::<_, ApiError>(History {
            room: room.clone(),
            items,
        })
    }
    .await;
    match result {
        Ok(h) => Json(h).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The answer of `GET /api/v1/rooms/{room}/density`.
#[derive(Serialize)]
struct DensityAnswer {
    room: String,
    bucket_s: f64,
    /// `counts[i]`: danmaku with a video time in `[i * bucket_s, (i + 1) *
    /// bucket_s)`, up to the last bucket that holds any.
    counts: Vec<u64>,
}

/// A room's danmaku counted per bucket of video time (a player's
/// "high-energy" bar), computed by the store.
pub(super) async fn density(
    State(app): State<App>,
    RoomName(room): RoomName,
    Query(q): Query<DensityQuery>,
) -> Response {
    let result = async {
        let DensityRange { bucket_s, buckets } = q.check()?;
        let cap = buckets.unwrap_or(MAX_DENSITY_BUCKETS);
        let density = app.node.density(&room, bucket_s, cap).await?;
        // Without `to`, a partial bar would look whole: refuse it instead.
        // With it, what lies past the video's end is not asked for.
        if density.beyond > 0 && buckets.is_none() {
            return Err(too_many_buckets(bucket_s));
        }
        Ok::<_, ApiError>(DensityAnswer {
            room: room.clone(),
            bucket_s,
            counts: density.counts,
        })
    }
    .await;
    match result {
        Ok(d) => Json(d).into_response(),
        Err(e) => e.into_response(),
    }
}
