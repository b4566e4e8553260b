//! A frame: what the hub puts in a room's ring, encoded once for everyone.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;

use crate::danmaku::Danmaku;
use crate::protocol::frames::ServerMessage;
use crate::protocol::{sse, websocket};

/// What a frame carries.
#[derive(Debug)]
pub enum FrameKind {
    /// A batch of danmaku standing for the ids `first..=last`: all of them,
    /// or what density control kept of them.
    Danmaku {
        /// The batch, ascending by id.
        items: Vec<Danmaku>,
        /// The first id the frame stands for.
        first: u64,
        /// The last id the frame stands for.
        last: u64,
    },
    /// The room's viewer count.
    Online {
        /// Viewers in the room.
        count: usize,
    },
    /// Danmaku recalled by their author or a moderator: players hide them.
    Delete {
        /// The recalled ids.
        ids: Vec<u64>,
    },
}

/// One message for every viewer of a room. The WebSocket bytes are a whole
/// frame (header included), built when the frame is made; the SSE bytes are
/// built by the first SSE viewer that needs them. Viewers get references to
/// the same bytes, never copies.
#[derive(Debug)]
pub struct Frame {
    kind: FrameKind,
    ws: Bytes,
    sse: OnceLock<Bytes>,
    /// When the oldest danmaku in the frame was committed (for fan-out latency).
    pub committed_at: Instant,
}

impl Frame {
    /// A frame for the ids `first..=last`, of which `items` were kept (all
    /// of them unless density control thinned the frame) and `recalled`
    /// are no longer stored (the room stepped over them): neither is
    /// counted as thinned.
    pub fn danmaku(
        items: Vec<Danmaku>,
        (first, last): (u64, u64),
        recalled: u64,
        committed_at: Instant,
    ) -> Frame {
        debug_assert!(items.iter().all(|d| (first..=last).contains(&d.id)));
        let thinned = (last - first + 1)
            .saturating_sub(items.len() as u64)
            .saturating_sub(recalled);
        let ws = encode_ws(&ServerMessage::Danmaku {
            thinned,
            last: (thinned > 0).then_some(last),
            items: &items,
        });
        Frame {
            kind: FrameKind::Danmaku { items, first, last },
            ws,
            sse: OnceLock::new(),
            committed_at,
        }
    }

    /// A frame announcing the room's viewer count.
    pub fn online(count: usize) -> Frame {
        Frame {
            kind: FrameKind::Online { count },
            ws: encode_ws(&ServerMessage::Online { count }),
            sse: OnceLock::new(),
            committed_at: Instant::now(),
        }
    }

    /// A frame telling players to hide recalled danmaku.
    pub fn delete(ids: Vec<u64>) -> Frame {
        Frame {
            ws: encode_ws(&ServerMessage::Delete { ids: &ids }),
            kind: FrameKind::Delete { ids },
            sse: OnceLock::new(),
            committed_at: Instant::now(),
        }
    }

    /// What the frame carries.
    pub fn kind(&self) -> &FrameKind {
        &self.kind
    }

    /// The danmaku in the frame (empty for control frames).
    pub fn items(&self) -> &[Danmaku] {
        match &self.kind {
            FrameKind::Danmaku { items, .. } => items,
            FrameKind::Online { .. } | FrameKind::Delete { .. } => &[],
        }
    }

    /// The first and last id a danmaku frame stands for.
    pub fn id_range(&self) -> Option<(u64, u64)> {
        match self.kind {
            FrameKind::Danmaku { first, last, .. } => Some((first, last)),
            FrameKind::Online { .. } | FrameKind::Delete { .. } => None,
        }
    }

    /// The complete WebSocket frame.
    pub fn ws(&self) -> &Bytes {
        &self.ws
    }

    /// The SSE events of the frame.
    pub fn sse(&self) -> &Bytes {
        self.sse.get_or_init(|| match &self.kind {
            FrameKind::Danmaku { items, .. } => sse::danmaku_events(items),
            FrameKind::Online { count } => {
                sse::message_event("online", &ServerMessage::Online { count: *count })
            }
            FrameKind::Delete { ids } => {
                sse::message_event("delete", &ServerMessage::Delete { ids })
            }
        })
    }
}

/// A server message as one whole WebSocket text frame.
pub fn encode_ws(message: &ServerMessage<'_>) -> Bytes {
    websocket::frame_with(websocket::Opcode::Text, |buf| message.write_json(buf))
}
