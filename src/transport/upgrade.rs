//! The WebSocket handshake every WebSocket route (`/ws`, the Bilibili
//! `/sub`) checks and answers alike: RFC 6455 headers, the `Origin`, the
//! `101`, and taking the raw socket back from hyper afterwards, so that a
//! connection can write pre-encoded frames with vectored, non-blocking
//! writes.

use std::future::Future;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::client::ClientPlace;
use super::timed_io::TimedStream;
use super::App;
use crate::error::{ApiError, ErrorCode};
use crate::guard::Admitted;

/// An accepted WebSocket handshake, before its `101`: what every WebSocket
/// route (`/ws`, the Bilibili `/sub`) checks and does alike.
pub struct Upgrade {
    /// The client's `Sec-WebSocket-Key`.
    key: String,
    on_upgrade: hyper::upgrade::OnUpgrade,
    /// The connection's place under the connection caps, and a forwarded
    /// client's, held until the WebSocket ends.
    places: (Option<Arc<Admitted>>, Option<ClientPlace>),
}

impl Upgrade {
    /// Checks the RFC 6455 handshake headers and the `Origin`, and takes
    /// the upgrade out of the request. Synchronous, so that a handler
    /// holds no reference to the request across an await.
    pub fn check(app: &App, req: &mut Request) -> Result<Upgrade, ApiError> {
        let key = check_handshake(req.headers())?;
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok());
        app.node
            .guard
            .check_origin(origin)
            .inspect_err(|e| app.node.metrics.reject(e.code))?;
        let places = (
            req.extensions().get::<Arc<Admitted>>().cloned(),
            req.extensions().get::<ClientPlace>().cloned(),
        );
        Ok(Upgrade {
            key,
            on_upgrade: hyper::upgrade::on(req),
            places,
        })
    }

    /// Answers `101 Switching Protocols` and, once hyper hands the
    /// connection over, runs `serve` on the raw socket and the bytes
    /// already read past the handshake, as a task shutdown waits for.
    pub fn spawn<F, Fut>(self, app: &App, serve: F) -> Response
    where
        F: FnOnce(TcpStream, Bytes) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let Upgrade {
            key,
            on_upgrade,
            places,
        } = self;
        app.tasks.spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => return tracing::debug!(error = %e, "websocket upgrade failed"),
            };
            // The server gives hyper a `TimedStream`, so this only fails if
            // that ever changes; then the connection is refused, not mangled.
            let parts = match upgraded.downcast::<TimedStream>() {
                Ok(p) => p,
                Err(_) => return tracing::error!("upgraded connection is not a TcpStream"),
            };
            // Counted under the connection caps until the WebSocket ends:
            // the connection's place, and a forwarded client's.
            let _places = places;
            serve(parts.io.into_inner(), parts.read_buf).await;
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
