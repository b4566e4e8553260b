//! Request bodies and JSON, read by one set of rules for every route and
//! for WebSocket commands: a body is read up to the server's limit, and
//! JSON that does not parse (`invalid_json`) is told apart from JSON of the
//! wrong shape (`invalid_field`).
//!
//! A leaf: it knows nothing of routes, so that every transport module may
//! use it without importing another.

use axum::body::Body;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::deadlines::BodyTimedOut;
use crate::error::{ApiError, ErrorCode};
use crate::protocol::frames::CommandError;

/// Reads a request body of at most `limit` bytes: over it,
/// `payload_too_large`; out of time, `request_timeout`; any other read
/// failure, `invalid_json`.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
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

/// Reads a JSON request body of at most `limit` bytes and parses it:
/// [`read_body`], then [`parse_json`].
pub async fn read_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    parse_json(&read_body(body, limit).await?)
}

/// Parses a JSON body, telling malformed JSON from bad fields.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(json_error)
}

/// What a client is told of JSON that did not parse: `invalid_field` when
/// it is JSON of the wrong shape, `invalid_json` when it is not JSON.
fn json_error(e: serde_json::Error) -> ApiError {
    if e.is_data() {
        ApiError::new(ErrorCode::InvalidField, e.to_string())
    } else {
        ApiError::new(ErrorCode::InvalidJson, format!("malformed JSON: {e}"))
    }
}

/// A WebSocket command that did not parse, as the client is told: JSON
/// errors as for a body, and a `type` the server does not have as
/// `unsupported_command`.
impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> ApiError {
        match e {
            CommandError::Json(e) => json_error(e),
            CommandError::UnknownType(e) => {
                ApiError::new(ErrorCode::UnsupportedCommand, e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frames::ClientMessage;

    fn code(text: &str) -> ErrorCode {
        ApiError::from(ClientMessage::parse(text.as_bytes()).unwrap_err()).code
    }

    #[test]
    fn commands_and_bodies_fail_with_the_same_codes() {
        assert_eq!(code("{oops"), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"type":"explode"}"#), ErrorCode::UnsupportedCommand);
        assert_eq!(code(r#"{"type":"send"}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"text":"no type"}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"type":7}"#), ErrorCode::InvalidField);
        let body = |b: &str| parse_json::<crate::guard::SendRequest>(b.as_bytes()).unwrap_err();
        assert_eq!(body("{oops").code, ErrorCode::InvalidJson);
        assert_eq!(body("{}").code, ErrorCode::InvalidField);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_whole() {
        let e = read_json::<serde_json::Value>(Body::from("[1,2,3]"), 4)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
        let v: serde_json::Value = read_json(Body::from("[1,2,3]"), 7).await.unwrap();
        assert_eq!(v, serde_json::json!([1, 2, 3]));
    }
}
