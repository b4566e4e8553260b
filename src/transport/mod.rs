//! Transports: the wire between clients and the node. Only this layer
//! knows about sockets and HTTP.
//!
//! - `server` accepts TCP connections and serves HTTP/1.1 on them, each
//!   stream wrapped by `timed_io` so that a write stuck for the write
//!   timeout fails, and each exchange phase (idle, head, body) bounded by
//!   `deadlines`; `client` derives each request's client address (behind a
//!   trusted reverse proxy, the forwarded one).
//! - [`router`], here, names every route of the server, each served by one
//!   route module: `http` (REST, health, metrics), `web` (the pages, their
//!   assets and the wall's QR code), `ws` and `sse`
//!   (feeds to viewers), `bilibili` (Bilibili live clients at `/sub`, and
//!   its raw TCP listener), `admin` (moderation), `players` (DPlayer,
//!   bilibili XML and segments, and the CORS of the routes players use).
//! - The route modules read their input through leaves they share:
//!   `params` (the room, ids and query string of every route), `body`
//!   (request bodies and JSON, and the codes of a command that does not
//!   parse) and `caller` (the `Sender` and `Admin` extractors, from the
//!   token and client address). A route module imports no other route
//!   module, and only this one imports them.

pub mod accept;
pub mod admin;
pub mod bilibili;
pub mod body;
pub mod caller;
pub mod client;
pub mod deadlines;
pub mod http;
pub mod outbox;
pub mod params;
pub mod players;
pub mod server;
pub mod sse;
pub mod timed_io;
pub mod upgrade;
pub mod web;
pub mod ws;

use std::sync::Arc;

use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use tokio_util::task::TaskTracker;

use crate::error::{ApiError, ErrorCode};
use crate::node::Node;

/// What every handler needs: the node, and the tracker that shutdown waits
/// on for connections that outlive their HTTP request (WebSocket, SSE).
#[derive(Clone)]
pub struct App {
    /// The node.
    pub node: Arc<Node>,
    /// Tasks shutdown waits for.
    pub tasks: TaskTracker,
}

/// Every route of the server (docs/protocol.md lists them), with the
/// 404 and 405 answers for the rest.
pub fn router(app: App) -> Router {
    // The routes players call from other origins answer CORS, preflight
    // included (an `OPTIONS` the method router must know to run the layer).
    let cors_layer = from_fn_with_state(app.clone(), players::cors);
    let cors = |route: MethodRouter<App>| route.options(players::options).layer(cors_layer.clone());
    Router::new()
        // The pages (docs/web.md) and their files.
        .route("/", get(web::home))
        .route("/r/{room}", get(web::live))
        .route("/v/{room}", get(web::player))
        .route("/overlay/{room}", get(web::overlay))
        .route("/wall/{room}", get(web::wall))
        .route("/wall/{room}/phone", get(web::phone_url))
        .route("/wall/{room}/qr.svg", get(web::qr_code))
        .route("/m/{room}", get(web::phone))
        .route("/admin", get(web::admin))
        .route("/assets/{*file}", get(web::asset))
        // Health and metrics.
        .route("/healthz", get(http::healthz))
        .route("/metrics", get(http::metrics))
        // Viewers.
        .route("/ws", get(ws::upgrade))
        .route("/sub", get(bilibili::sub))
        .route("/api/v1/rooms/{room}/stream", get(sse::stream))
        // Rooms, history and sends.
        .route("/api/v1/rooms", get(http::list_rooms))
        .route("/api/v1/rooms/{room}", get(http::room_stats))
        .route(
            "/api/v1/rooms/{room}/danmaku",
            cors(get(http::history).post(http::send)),
        )
        .route("/api/v1/rooms/{room}/density", cors(get(http::density)))
        // Players and formats (docs/players.md).
        .route(
            "/dplayer/v3/",
            cors(get(players::dplayer_read).post(players::dplayer_send)),
        )
        .route(
            "/api/v1/rooms/{room}/danmaku.xml",
            cors(get(players::export_xml)),
        )
        .route("/api/v1/rooms/{room}/import", post(players::import))
        .route("/x/v2/dm/web/seg.so", cors(get(players::segment)))
        // Moderation: recall (authors and admins), then admins only.
        .route("/api/v1/rooms/{room}/danmaku/{id}", delete(admin::recall))
        .route(
            "/api/v1/admin/mutes",
            get(admin::global_mutes).post(admin::mute_global),
        )
        .route("/api/v1/admin/mutes/{user}", delete(admin::unmute_global))
        .route(
            "/api/v1/admin/rooms/{room}",
            get(admin::room).patch(admin::patch_room),
        )
        .route(
            "/api/v1/admin/rooms/{room}/mutes",
            get(admin::room_mutes).post(admin::mute_in_room),
        )
        .route(
            "/api/v1/admin/rooms/{room}/mutes/{user}",
            delete(admin::unmute_in_room),
        )
        .route("/api/v1/admin/rooms/{room}/held", get(admin::held))
        .route(
            "/api/v1/admin/rooms/{room}/held/{held}/approve",
            post(admin::approve),
        )
        .route(
            "/api/v1/admin/rooms/{room}/held/{held}/reject",
            post(admin::reject),
        )
        .route("/api/v1/admin/bans", get(admin::bans).post(admin::ban))
        .route("/api/v1/admin/bans/{ip}", delete(admin::unban))
        .route("/api/v1/admin/audit", get(admin::audit))
        .route("/api/v1/admin/stats", get(admin::stats))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .with_state(app)
}
