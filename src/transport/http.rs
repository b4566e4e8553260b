//! HTTP routes: the REST API, health, metrics and the page.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::client::ClientAddr;
use super::deadlines::BodyTimedOut;
use super::params::{next_cursor, parse_query, HistoryQuery, HistoryRange, RoomName, RoomsQuery};
use super::{admin, sse, ws, App};
use crate::danmaku::Danmaku;
use crate::error::{ApiError, ErrorCode};
use crate::guard::auth::bearer;
use crate::guard::SendRequest;
use crate::node::Sent;

/// The page at `/`, served from the binary.
const INDEX_HTML: &str = include_str!("../../web/index.html");

/// Every route of the server.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/ws", get(ws::upgrade))
        .route("/api/v1/rooms", get(list_rooms))
        .route("/api/v1/rooms/{room}", get(room_stats))
        .route("/api/v1/rooms/{room}/danmaku", get(history).post(send))
        .route("/api/v1/rooms/{room}/stream", get(sse::stream))
        .merge(admin::routes())
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .with_state(app)
}

/// 200 whenever the process serves HTTP; the body says whether the node
/// is degraded (it still serves reads and viewers then), and why.
async fn healthz(State(app): State<App>) -> Json<serde_json::Value> {
    Json(match app.node.degraded() {
        None => serde_json::json!({ "status": "ok", "node_id": app.node.node_id() }),
        Some(reason) => serde_json::json!({
            "status": "degraded",
            "reason": reason,
            "node_id": app.node.node_id(),
        }),
    })
}

async fn metrics(State(app): State<App>) -> Response {
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

async fn list_rooms(State(app): State<App>, RawQuery(query): RawQuery) -> Response {
    let result = parse_query::<RoomsQuery>(query.as_deref())
        .and_then(|q| q.check())
        .map(|(order, limit)| {
            let (rooms, more) = app.node.rooms(&order, limit);
            let next_cursor = match rooms.last() {
                Some(last) if more => Some(next_cursor(&order, &last.room, rooms.len())),
                _ => None,
            };
            Rooms { rooms, next_cursor }
        });
    match result {
        Ok(page) => Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn room_stats(State(app): State<App>, RoomName(room): RoomName) -> Response {
    match app.node.room(&room).await {
        Ok(stats) => Json(stats).into_response(),
        Err(e) => e.into_response(),
    }
}

/// POST a danmaku: 201 with the stored danmaku once it is durable, or 202
/// with the held send in a pre-moderated room.
async fn send(
    State(app): State<App>,
    room: Result<RoomName, ApiError>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = app.node.config.limits.max_body_bytes;
    let parsed = async {
        let RoomName(room) = room?;
        let sender = app.node.identify(bearer(&headers), client)?;
        let bytes = read_body(body, limit).await?;
        Ok::<_, ApiError>((room, sender, parse_json::<SendRequest>(&bytes)?))
    }
    .await;
    let result = match parsed {
        // The node counts the refusals of its own checks.
        Ok((room, sender, req)) => app.node.send(&room, &sender, req).await,
        Err(e) => {
            app.node.metrics.reject(e.code);
            Err(e)
        }
    };
    match result {
        Ok(Sent::Stored(d)) => (StatusCode::CREATED, Json(d)).into_response(),
        // Pre-moderated room: accepted, but neither stored nor delivered.
        Ok(Sent::Held(h)) => (StatusCode::ACCEPTED, Json(h)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Reads a request body of at most `limit` bytes.
pub(super) async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let e = e.into_inner();
        if e.is::<http_body_util::LengthLimitError>() {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body over {limit} bytes"),
            )
        } else if BodyTimedOut::caused(&*e) {
            // The connection closes once this answer is out.
            ApiError::new(ErrorCode::RequestTimeout, e.to_string())
        } else {
            ApiError::new(ErrorCode::InvalidJson, "the request body could not be read")
        }
    })
}

/// Parses a JSON body or command, telling malformed JSON from bad fields.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        if e.is_data() {
            ApiError::new(ErrorCode::InvalidField, e.to_string())
        } else {
            ApiError::new(ErrorCode::InvalidJson, format!("malformed JSON: {e}"))
        }
    })
}

#[derive(Serialize)]
struct History {
    room: String,
    items: Vec<Danmaku>,
}

/// History by id (`after`) or by video time (`from`/`to`).
async fn history(
    State(app): State<App>,
    RoomName(room): RoomName,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let q: HistoryQuery = parse_query(query.as_deref())?;
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
