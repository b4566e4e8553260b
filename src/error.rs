//! Errors as clients see them: a stable code, an HTTP status and a message.
//!
//! Every layer reports its own typed error; the edge turns it into an
//! [`ApiError`], which renders as `{"error":{"code":"...","message":"..."}}`
//! over HTTP and as an `error` frame over a WebSocket.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The stable error codes of the public API (documented in docs/protocol.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body or frame is not the JSON the endpoint expects.
    InvalidJson,
    /// The room name does not match `[A-Za-z0-9_.:-]{1,64}`.
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
    /// The WebSocket frame type or command is not part of the protocol.
    UnsupportedCommand,
    /// A WebSocket endpoint was called without a valid WebSocket handshake.
    UpgradeRequired,
    /// No such route.
    NotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// No valid token was given where one is needed, or the token is
    /// invalid (expired, badly signed, wrong algorithm, bad claims).
    Unauthorized,
    /// The identity is known but may not do this (e.g. enter this room).
    Forbidden,
    /// Too many requests or sends; slow down and retry later.
    RateLimited,
    /// The text was refused by the content filter.
    BlockedContent,
    /// The server is shutting down; retry on another node or later.
    ShuttingDown,
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
            ErrorCode::UnsupportedCommand => "unsupported_command",
            ErrorCode::UpgradeRequired => "upgrade_required",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BlockedContent => "blocked_content",
            ErrorCode::ShuttingDown => "shutting_down",
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
            | ErrorCode::BlockedContent => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
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
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
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
        (status, axum::Json(Envelope { error: &self })).into_response()
    }
}
