//! Who is calling: the sender behind a request's token, and the admin
//! check, as extractors, so that no handler repeats them.
//!
//! A request's token is its `Authorization: Bearer` header. A browser's
//! `EventSource` and WebSocket cannot set headers, so the stream and
//! WebSocket routes also take one from their query (`token=`), which wins
//! ([`identify`]). Without a token the caller is a guest, known by its
//! client address ([`ClientAddr`]).

use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;

use super::client::ClientAddr;
use super::App;
use crate::error::ApiError;
use crate::guard::auth::bearer;
use crate::guard::{Admin, Sender};

/// The sender behind `query_token`, else the bearer token in `headers`,
/// else a guest at `client`. An invalid token is `401 unauthorized` (and
/// counted by the node), not a guest.
pub fn identify(
    app: &App,
    query_token: Option<&str>,
    headers: &HeaderMap,
    client: IpAddr,
) -> Result<Sender, ApiError> {
    app.node
        .identify(query_token.or_else(|| bearer(headers)), client)
}

/// The sender behind the request's bearer token, or a guest.
impl FromRequestParts<App> for Sender {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Sender, ApiError> {
        let ClientAddr(client) = ClientAddr::from_request_parts(parts, app).await?;
        identify(app, None, &parts.headers, client)
    }
}

/// The caller, who must be an admin: without a valid token, `401
/// unauthorized`; with another role, `403 forbidden`.
impl FromRequestParts<App> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Admin, ApiError> {
        let sender = Sender::from_request_parts(parts, app).await?;
        app.node.guard.admin(sender)
    }
}
