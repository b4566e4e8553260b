//! The JSON messages of the danmaku protocol (docs/protocol.md).
//!
//! Server → client messages are written straight into byte buffers with
//! serde, never through an intermediate `serde_json::Value`, because the hub
//! encodes one per room per flush on the hot path.

use std::borrow::Cow;

use serde::de::value::{Error as ValueError, StrDeserializer};
use serde::de::IntoDeserializer;
use serde::{Deserialize, Serialize};

use crate::danmaku::Danmaku;
use crate::error::ApiError;
use crate::guard::SendRequest;

/// A message a WebSocket client sends: a JSON object whose `type` names
/// the command.
#[derive(Debug)]
pub enum ClientMessage {
    /// Send a danmaku to the connection's room.
    Send {
        /// An opaque tag the server echoes in the `ack` or `error` frame.
        reference: Option<Reference>,
        /// The danmaku.
        send: SendRequest,
    },
    /// Application-level ping; answered with `{"type":"pong"}`.
    Ping,
}

/// Why a client's command did not parse.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Not JSON ([`serde_json::Error::is_data`] is false), or JSON of the
    /// wrong shape: no `type`, or a command without its fields.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A JSON object whose `type` names no command of this protocol.
    #[error("{0}")]
    UnknownType(ValueError),
}

/// The commands, by their `type`: the one list of them, which
/// [`ClientMessage::parse`] dispatches on.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Send,
    Ping,
}

/// A command's `type`, read on its own before the rest; every other field
/// is skipped.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

/// The fields of a `send` command (its `type` is ignored here).
#[derive(Deserialize)]
struct SendCommand {
    #[serde(rename = "ref", default)]
    reference: Option<Reference>,
    #[serde(flatten)]
    send: SendRequest,
}

impl ClientMessage {
    /// Parses the text of a command. The `type` is read first, so that an
    /// unknown one is its own error rather than a message to be matched.
    pub fn parse(bytes: &[u8]) -> Result<ClientMessage, CommandError> {
        let head: Head<'_> = serde_json::from_slice(bytes)?;
        let kind: StrDeserializer<'_, ValueError> = head.kind.as_ref().into_deserializer();
        match Kind::deserialize(kind).map_err(CommandError::UnknownType)? {
            Kind::Send => {
                let SendCommand { reference, send } = serde_json::from_slice(bytes)?;
                Ok(ClientMessage::Send { reference, send })
            }
            Kind::Ping => Ok(ClientMessage::Ping),
        }
    }
}

/// A client's tag for a send: a string or a number, echoed verbatim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reference {
    /// A string tag.
    Text(String),
    /// A numeric tag.
    Number(serde_json::Number),
}

/// A message the server sends (both WebSocket frames and SSE `data:` lines).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage<'a> {
    /// First frame on a new connection.
    Hello {
        /// The room watched.
        room: &'a str,
        /// The newest id of the room when the client joined (0: none yet).
        last_id: u64,
        /// Viewers in the room.
        online: usize,
    },
    /// A batch of danmaku, ascending by id.
    Danmaku {
        /// Danmaku left out by density control (0: none; then not sent).
        #[serde(skip_serializing_if = "is_zero")]
        thinned: u64,
        /// The last id the frame stands for, when density control left it
        /// out: the next frame starts after it.
        #[serde(skip_serializing_if = "Option::is_none")]
        last: Option<u64>,
        /// The danmaku.
        items: &'a [Danmaku],
    },
    /// The room's viewer count changed.
    Online {
        /// Viewers in the room.
        count: usize,
    },
    /// Danmaku were recalled: hide them.
    Delete {
        /// The recalled ids.
        ids: &'a [u64],
    },
    /// The client was too slow and this many danmaku were skipped for it.
    Lagged {
        /// How many danmaku it lost.
        dropped: u64,
    },
    /// A send was stored under this id.
    Ack {
        /// The client's tag, if it gave one.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Reference>,
        /// The stored danmaku's id.
        id: u64,
        /// The stored danmaku's server time.
        ts: i64,
    },
    /// A send was held for a moderator: not stored, not delivered (yet).
    Held {
        /// The client's tag, if it gave one.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Reference>,
        /// The held id, which a moderator approves or rejects.
        held: u64,
    },
    /// A command failed.
    Error {
        /// The client's tag, if the error answers a send that had one.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Reference>,
        /// What went wrong.
        error: &'a ApiError,
    },
    /// Answer to a client's `ping`.
    Pong,
}

impl<'a> ServerMessage<'a> {
    /// A frame of danmaku, nothing left out.
    pub fn danmaku(items: &'a [Danmaku]) -> ServerMessage<'a> {
        ServerMessage::Danmaku {
            thinned: 0,
            last: None,
            items,
        }
    }

    /// Appends the JSON of the message to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Serialising these types into a Vec cannot fail: every field is a
        // plain string, number or a type with an infallible Serialize.
        serde_json::to_writer(out, self).expect("server messages always serialise");
    }
}

/// Whether a count is zero (then it is not sent).
fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_command_parses_with_optional_fields_and_ref() {
        let m = ClientMessage::parse(
            br##"{"type":"send","ref":7,"text":"hi","mode":"top","color":"#ff0000","extra":1}"##,
        )
        .unwrap();
        match m {
            ClientMessage::Send { reference, send } => {
                assert_eq!(reference, Some(Reference::Number(7.into())));
                assert_eq!(send.text, "hi");
                assert_eq!(send.mode.as_deref(), Some("top"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ClientMessage::parse(br#"{"ref":1,"type":"ping"}"#).unwrap(),
            ClientMessage::Ping
        ));
        assert!(matches!(
            ClientMessage::parse(br#"{"type":"send"}"#),
            Err(CommandError::Json(e)) if e.is_data()
        ));
        assert!(matches!(
            ClientMessage::parse(br#"{"type":"send""#),
            Err(CommandError::Json(e)) if !e.is_data()
        ));
    }

    #[test]
    fn an_unknown_type_is_its_own_error() {
        // Escaped, so the type is read into an owned string.
        match ClientMessage::parse(br#"{"text":"hi","type":"n\u0075ke"}"#) {
            Err(CommandError::UnknownType(e)) => {
                assert_eq!(
                    e.to_string(),
                    "unknown variant `nuke`, expected `send` or `ping`"
                )
            }
            other => panic!("{other:?}"),
        }
        // Not a string, or absent: the wrong shape, not an unknown command.
        for wrong in [&br#"{"type":1}"#[..], br#"{"text":"hi"}"#, b"[]"] {
            assert!(
                matches!(ClientMessage::parse(wrong), Err(CommandError::Json(_))),
                "{}",
                String::from_utf8_lossy(wrong)
            );
        }
    }

    #[test]
    fn ack_omits_missing_ref() {
        let mut out = Vec::new();
        ServerMessage::Ack {
            reference: None,
            id: 3,
            ts: 9,
        }
        .write_json(&mut out);
        assert_eq!(out, br#"{"type":"ack","id":3,"ts":9}"#);
    }
}
