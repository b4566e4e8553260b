//! The client behind each request, derived once, before any handler runs.
//!
//! The accept loop hands every request to [`route`]: it asks the guard who
//! the client is (the TCP peer, or the client a trusted reverse proxy
//! forwards) and puts the answer in the request as a [`ClientAddr`], which
//! handlers take as an extractor. Guest ids, rate limits, the flood guard, bans and
//! `limits.exempt_ips` all see that address, never the proxy's.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::error::{ApiError, ErrorCode};
use crate::guard::Admitted;
use crate::node::Node;

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

/// Routes one request: derives its client first and, for a client behind a
/// trusted proxy, holds its per-address place for as long as the response
/// lasts. Over that address's cap: 503 `too_many_connections`, like a
/// direct connection over it at accept (the proxy's connection itself
/// stays open).
pub fn route<B>(
    node: &Node,
    router: Router,
    peer: IpAddr,
    mut req: Request<B>,
) -> impl Future<Output = Result<Response, Infallible>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let admitted = node
        .guard
        .admit_request(peer, req.headers())
        .inspect_err(|e| node.metrics.reject(e.code));
    async move {
        let (client, place) = match admitted {
            Ok(admitted) => admitted,
            Err(e) => return Ok(e.into_response()),
        };
        req.extensions_mut().insert(ClientAddr(client));
        let Some(place) = place.map(|p| ClientPlace { _held: Arc::new(p) }) else {
            return router.oneshot(req).await;
        };
        req.extensions_mut().insert(place.clone());
        let response = router.oneshot(req).await?;
        Ok(response.map(|body| {
            // The closure owns the place, so it is given back when the body
            // (the whole SSE stream, for one) is done or dropped.
            Body::new(body.map_frame(move |frame| {
                let _held = &place;
                frame
            }))
        }))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Only a request that bypassed `route` could miss it: a bug, not
        // the client's.
        parts
            .extensions
            .get::<ClientAddr>()
            .copied()
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "client address not derived"))
    }
}
