//! Errors as clients see them: a stable code, an HTTP status and a message.
//!
//! Every layer reports its own typed error; the edge turns it into an
//! [`ApiError`], which renders as `{"error":{"code":"...","message":"..."}}`
//! over HTTP and as an `error` frame over a WebSocket. A rate-limited error
//! (and `store_full`) also carries `"retry_after_s"`, and over HTTP a
//! `Retry-After` header.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The stable error codes of the public API (documented in docs/protocol.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body or frame is not the JSON the endpoint expects.
    InvalidJson,
    /// The room name does not match `[A-Za-z0-9_.:-]{1,64}`, or is only dots.
    InvalidRoom,
    /// The text is empty or only white space.
    EmptyText,
    /// The text is longer than the configured limit (in characters).
    TextTooLong,
    /// A field other than the text has an invalid value.
    InvalidField,
    /// A query parameter is missing or invalid.
    InvalidQuery,
    /// The request body is larger than the configured limit.
    PayloadTooLarge,
    /// The request body's `Content-Type` is not one the route reads.
    UnsupportedMediaType,
    /// An uploaded file was refused whole (not well-formed, a DTD, too
    /// deep, not UTF-8, too many entries): nothing of it was stored.
    InvalidFile,
    /// The request body did not arrive in time (`connection.body_timeout_s`,
    /// `body_min_rate_bytes_per_s`); the connection is closed after this.
    RequestTimeout,
    /// The WebSocket frame type or command is not part of the protocol.
    UnsupportedCommand,
    /// A WebSocket endpoint was called without a valid WebSocket handshake.
    UpgradeRequired,
    /// No such route.
    NotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The server is shutting down; retry on another node or later.
    ShuttingDown,
    /// The server, or the client's address, holds as many connections as
    /// it may (`connection.max_connections`, `max_connections_per_ip`).
    TooManyConnections,
    /// A rate limit or the flood guard refused the request; the error says
    /// how many seconds to wait (`retry_after_s`, and `Retry-After` over HTTP).
    RateLimited,
    /// The text matched the sensitive-word list. Which word is not said, so
    /// that the list cannot be probed one word at a time.
    BlockedContent,
    /// The caller is known but may not do this: muted, banned, the room is
    /// closed, or the role or token does not allow it.
    Forbidden,
    /// No valid token was given where one is needed, or the token is
    /// invalid (expired, badly signed, wrong algorithm, bad claims).
    Unauthorized,
    /// The room's pre-moderation queue is full; nothing was held. Retry
    /// once moderators have caught up.
    HeldQueueFull,
    /// The disk holding the store is full: nothing was stored. Reads and
    /// viewers are still served; retry after `retry_after_s`.
    StoreFull,
    /// The database cannot be reached right now (a cluster's PostgreSQL is
    /// down or restarting): nothing was stored; retry after the wait.
    StoreUnavailable,
    /// The store failed; nothing was acknowledged.
    Internal,
}

impl ErrorCode {
    /// The wire name of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::EmptyText => "empty_text",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::InvalidFile => "invalid_file",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::UnsupportedCommand => "unsupported_command",
            ErrorCode::UpgradeRequired => "upgrade_required",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BlockedContent => "blocked_content",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::HeldQueueFull => "held_queue_full",
            ErrorCode::StoreFull => "store_full",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidJson
            | ErrorCode::InvalidRoom
            | ErrorCode::EmptyText
            | ErrorCode::TextTooLong
            | ErrorCode::InvalidField
            | ErrorCode::InvalidQuery
            | ErrorCode::UnsupportedCommand
            | ErrorCode::InvalidFile
            | ErrorCode::BlockedContent => StatusCode::BAD_REQUEST,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::ShuttingDown | ErrorCode::TooManyConnections | ErrorCode::HeldQueueFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // 507, not 503: the cause is this node's disk, not load or a
            // shutdown, and it says so to a client or proxy that only
            // reads the status.
            ErrorCode::StoreFull => StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error the client receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    /// The stable code.
    pub code: ErrorCode,
    /// A human explanation; not meant to be matched on.
    pub message: String,
    /// Whole seconds to wait before trying again, for `rate_limited` and
    /// `store_full`. It is in the JSON (only when set) as well as in the
    /// HTTP `Retry-After` header, because a WebSocket client has no header
    /// to read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// The same error, telling the client to wait `seconds` before retrying.
    pub fn with_retry_after(self, seconds: u64) -> ApiError {
        ApiError {
            retry_after_s: Some(seconds),
            ..self
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a ApiError,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let mut response = (status, axum::Json(Envelope { error: &self })).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.code == ErrorCode::RequestTimeout {
            // The server closes the connection after this answer (the rest
            // of the body is never read): say so.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn render(e: ApiError) -> (StatusCode, Option<String>, String) {
        let response = e.into_response();
        let status = response.status();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, retry, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn retry_after_is_a_header_and_a_field_only_when_set() {
        let (status, retry, body) =
            render(ApiError::new(ErrorCode::RateLimited, "slow down").with_retry_after(3)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry.as_deref(), Some("3"));
        assert_eq!(
            body,
            r#"{"error":{"code":"rate_limited","message":"slow down","retry_after_s":3}}"#
        );

        let (status, retry, body) = render(ApiError::new(ErrorCode::BlockedContent, "no")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(retry, None);
        assert_eq!(
            body,
            r#"{"error":{"code":"blocked_content","message":"no"}}"#
        );
    }
}
