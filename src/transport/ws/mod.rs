//! The WebSocket transport: `GET /ws?room=R[&since=ID]`.
//!
//! The handshake is answered through hyper's upgrade mechanism; after it the
//! raw `TcpStream` is taken back from hyper so that the connection can write
//! the hub's pre-encoded frames with vectored, non-blocking writes and keep
//! no read buffer while idle.

mod connection;
mod outbox;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::caller::identify;
use super::client::{ClientAddr, ClientPlace};
use super::params::{Query, WsQuery};
use super::timed_io::TimedStream;
use super::App;
use crate::error::{ApiError, ErrorCode};
use crate::guard::Admitted;

pub use connection::Connection;

/// Answers a WebSocket handshake and starts the connection's task.
pub(super) async fn upgrade(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    // Taken as a result: a bad handshake or origin is answered before a
    // bad query.
    query: Result<Query<WsQuery>, ApiError>,
    mut req: Request,
) -> Response {
    // Read before any await: the request body is not Sync, so the future
    // must not hold a reference to the request across one.
    let handshake = check_handshake(req.headers());
    let headers = req.headers().clone();
    let admitted = req.extensions().get::<Arc<Admitted>>().cloned();
    let place = req.extensions().get::<ClientPlace>().cloned();
    let result = async {
        let key = handshake?;
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        app.node
            .guard
            .check_origin(origin)
            .inspect_err(|e| app.node.metrics.reject(e.code))?;
        let Query(q) = query?;
        let room = q.room()?.to_owned();
        let sender = identify(&app, q.token.as_deref(), &headers, client)?;
        // Joined before answering, so a bad room, a refused token or a
        // closing store is an HTTP error, and nothing published after the
        // 101 can be missed.
        let since = q.since.map(|id| id.0);
        let joined = app.node.watch(&room, &sender, since).await?;
        Ok::<_, ApiError>((key, room, sender, joined))
    }
    .await;
    let (key, room, sender, joined) = match result {
        Ok(ok) => ok,
        Err(e) => return e.into_response(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let node = app.node.clone();
    app.tasks.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(error = %e, "websocket upgrade failed"),
        };
        // The server gives hyper a `TimedStream`, so this only fails if that
        // ever changes; then the connection is refused, not mangled.
        let parts = match upgraded.downcast::<TimedStream>() {
            Ok(p) => p,
            Err(_) => return tracing::error!("upgraded connection is not a TcpStream"),
        };
        let stream = parts.io.into_inner();
        // Counted under the connection caps until the WebSocket ends: the
        // connection's place, and a forwarded client's.
        let _admitted = (admitted, place);
        Connection::new(node, stream, parts.read_buf, room, sender, joined)
            .run()
            .await;
    });
    let mut res = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header"),
    );
    res
}

/// Checks the RFC 6455 handshake headers and returns the client's key.
fn check_handshake(headers: &HeaderMap) -> Result<String, ApiError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(ApiError::new(
            ErrorCode::UpgradeRequired,
            "this endpoint speaks WebSocket: send Upgrade: websocket",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(ApiError::new(
            ErrorCode::UpgradeRequired,
            "Sec-WebSocket-Version must be 13",
        ));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .filter(|k| k.len() == 24)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::new(ErrorCode::UpgradeRequired, "missing Sec-WebSocket-Key"))
}
