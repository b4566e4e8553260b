//! HTTP routes: the REST API, health, metrics and the page.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::client::ClientAddr;
use super::{admin, sse, ws, App};
use crate::danmaku::Danmaku;
use crate::error::{ApiError, ErrorCode};
use crate::guard::auth::bearer;
use crate::guard::{self, SendRequest};
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

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
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

#[derive(Serialize)]
struct Rooms {
    rooms: Vec<crate::hub::RoomStats>,
}

async fn list_rooms(State(app): State<App>) -> Json<Rooms> {
    Json(Rooms {
        rooms: app.node.rooms(),
    })
}

async fn room_stats(State(app): State<App>, Path(room): Path<String>) -> Response {
    match app.node.room(&room).await {
        Ok(stats) => Json(stats).into_response(),
        Err(e) => e.into_response(),
    }
}

/// POST a danmaku: 201 with the stored danmaku once it is durable, or 202
/// with the held send in a pre-moderated room.
async fn send(
    State(app): State<App>,
    Path(room): Path<String>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = app.node.config.limits.max_body_bytes;
    let parsed = async {
        guard::check_room(&room)?;
        let sender = app.node.identify(bearer(&headers), client)?;
        let bytes = read_body(body, limit).await?;
        Ok::<_, ApiError>((sender, parse_json::<SendRequest>(&bytes)?))
    }
    .await;
    let result = match parsed {
        // The node counts the refusals of its own checks.
        Ok((sender, req)) => app.node.send(&room, &sender, req).await,
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
        if e.into_inner().is::<http_body_util::LengthLimitError>() {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body over {limit} bytes"),
            )
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

#[derive(Deserialize)]
struct HistoryQuery {
    after: Option<u64>,
    from: Option<f64>,
    to: Option<f64>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct History {
    room: String,
    items: Vec<Danmaku>,
}

/// History by id (`after`) or by video time (`from`/`to`).
async fn history(
    State(app): State<App>,
    Path(room): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))?;
        let max = app.node.config.limits.max_history;
        let limit = q.limit.unwrap_or(100);
        if limit == 0 || limit > max {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("limit must be between 1 and {max}"),
            ));
        }
        let items = if q.from.is_some() || q.to.is_some() {
            if q.after.is_some() {
                return Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    "use either after or from/to, not both",
                ));
            }
            let from = q.from.unwrap_or(0.0);
            let to = q.to.unwrap_or(f64::MAX);
            if !from.is_finite() || to.is_nan() || from > to {
                return Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    "from must not exceed to",
                ));
            }
            app.node
                .history_by_video_time(&room, from, to, limit)
                .await?
        } else {
            app.node
                .history_after(&room, q.after.unwrap_or(0), limit)
                .await?
        };
        Ok(History {
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
