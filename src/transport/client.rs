//! The client behind each request, derived once, before any handler runs.
//!
//! [`derive`] wraps every route: it asks the guard who the client is (the
//! TCP peer, or the client a trusted reverse proxy forwards) and puts the
//! answer in the request as a [`ClientAddr`], which handlers take as an
//! extractor. Guest ids, rate limits, the flood guard, bans and
//! `limits.exempt_ips` all see that address, never the proxy's.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::App;
use crate::error::{ApiError, ErrorCode};
use crate::guard::Admitted;

/// The client's address: what every per-address rule applies to.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

/// A forwarded client's place under the per-address connection cap. The
/// response holds it until its body ends (an SSE stream's whole life); a
/// WebSocket takes a clone for its own.
#[derive(Clone)]
pub struct ClientPlace {
    _held: Arc<Admitted>,
}

/// Derives the request's client and, for a client behind a trusted proxy,
/// holds its per-address place for as long as the response lasts. Over that
/// address's cap: 503 `too_many_connections`, like a direct connection
/// over it at accept (the proxy's connection itself stays open).
pub async fn derive(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let (client, place) = match app.node.guard.admit_request(peer.ip(), req.headers()) {
        Ok(admitted) => admitted,
        Err(e) => {
            app.node.metrics.reject(e.code);
            return e.into_response();
        }
    };
    req.extensions_mut().insert(ClientAddr(client));
    let Some(place) = place.map(|p| ClientPlace { _held: Arc::new(p) }) else {
        return next.run(req).await;
    };
    req.extensions_mut().insert(place.clone());
    next.run(req).await.map(|body| {
        // The closure owns the place, so it is given back when the body
        // (the whole SSE stream, for one) is done or dropped.
        Body::new(body.map_frame(move |frame| {
            let _held = &place;
            frame
        }))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Only a route outside `derive` could miss it: a bug, not the client's.
        parts
            .extensions
            .get::<ClientAddr>()
            .copied()
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "client address not derived"))
    }
}
