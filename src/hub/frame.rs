//! A frame: what the hub puts in a room's ring, encoded once for everyone.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;

use crate::danmaku::Danmaku;
use crate::protocol::bilibili::{self, Ver};
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

/// How a Bilibili-protocol viewer takes frames: in the compression its
/// `protover` asked for, over WebSocket (`/sub`, each frame one binary
/// message) or raw TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BiliWire {
    /// The version the viewer's commands are packed in; [`Ver::Control`]
    /// packs as [`Ver::Plain`].
    pub ver: Ver,
    /// Each frame is a WebSocket binary message, not raw bytes.
    pub websocket: bool,
}

impl BiliWire {
    /// The wire's slot among a frame's Bilibili encodings.
    fn slot(self) -> usize {
        let packing = match self.ver {
            Ver::Plain | Ver::Control => 0,
            Ver::Zlib => 1,
            Ver::Brotli => 2,
        };
        packing * 2 + usize::from(self.websocket)
    }
}

/// The Bilibili encodings a frame may need: three packings, each raw or as
/// a WebSocket message.
const BILI_SLOTS: usize = 6;

/// One message for every viewer of a room. The WebSocket bytes are a whole
/// frame (header included), built when the frame is made; the SSE and
/// Bilibili bytes are built by the first viewer that needs them, once per
/// encoding. Viewers get references to the same bytes, never copies.
#[derive(Debug)]
pub struct Frame {
    kind: FrameKind,
    ws: Bytes,
    sse: OnceLock<Bytes>,
    bili: [OnceLock<Bytes>; BILI_SLOTS],
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
            bili: Default::default(),
            committed_at,
        }
    }

    /// A frame announcing the room's viewer count.
    pub fn online(count: usize) -> Frame {
        Frame {
            kind: FrameKind::Online { count },
            ws: encode_ws(&ServerMessage::Online { count }),
            sse: OnceLock::new(),
            bili: Default::default(),
            committed_at: Instant::now(),
        }
    }

    /// A frame telling players to hide recalled danmaku.
    pub fn delete(ids: Vec<u64>) -> Frame {
        Frame {
            ws: encode_ws(&ServerMessage::Delete { ids: &ids }),
            kind: FrameKind::Delete { ids },
            sse: OnceLock::new(),
            bili: Default::default(),
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

impl Frame {
    /// The frame's bytes for a Bilibili viewer on `wire`: its danmaku as
    /// `DANMU_MSG`s, its count as `ONLINE_RANK_COUNT`, its recall as
    /// `DANMAKU_RECALL`, packed once per wire for the whole room. Empty when
    /// the frame holds nothing for such a viewer (every danmaku thinned):
    /// write nothing then, since an empty body is not a packet.
    pub fn bilibili(&self, wire: BiliWire) -> &Bytes {
        if wire.websocket {
            // The raw packets behind a header: compressed once for both
            // wires.
            return self.bili[wire.slot()].get_or_init(|| {
                let raw = self.bilibili(BiliWire {
                    websocket: false,
                    ..wire
                });
                if raw.is_empty() {
                    return Bytes::new();
                }
                websocket::frame(websocket::Opcode::Binary, raw)
            });
        }
        self.bili[wire.slot()].get_or_init(|| {
            let commands: Vec<Vec<u8>> = match &self.kind {
                FrameKind::Danmaku { items, .. } => items.iter().map(bilibili::danmu_msg).collect(),
                FrameKind::Online { count } => vec![bilibili::online_command(*count as u64)],
                FrameKind::Delete { ids } => vec![bilibili::recall_command(ids)],
            };
            if commands.is_empty() {
                return Bytes::new();
            }
            bilibili::encode_batch(wire.ver, &commands)
        })
    }
}

/// A server message as one whole WebSocket text frame.
pub fn encode_ws(message: &ServerMessage<'_>) -> Bytes {
    websocket::frame_with(websocket::Opcode::Text, |buf| message.write_json(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wires() -> impl Iterator<Item = BiliWire> {
        [Ver::Plain, Ver::Control, Ver::Zlib, Ver::Brotli]
            .into_iter()
            .flat_map(|ver| [false, true].map(|websocket| BiliWire { ver, websocket }))
    }

    /// The commands a Bilibili client reads out of raw (TCP) bytes
    /// (`unpack` inflates compressed packets).
    fn commands(raw: &[u8]) -> Vec<serde_json::Value> {
        bilibili::unpack(raw)
            .unwrap()
            .into_iter()
            .map(|p| serde_json::from_slice(&p.body).unwrap())
            .collect()
    }

    #[test]
    fn a_frame_is_packed_once_per_bilibili_wire_and_reads_back() {
        let items = vec![Danmaku::sample("r", 1), Danmaku::sample("r", 2)];
        let frame = Frame::danmaku(items.clone(), (1, 2), 0, Instant::now());
        for wire in wires() {
            let bytes = frame.bilibili(wire);
            // Shared: the second viewer of this wire gets the same bytes.
            assert_eq!(bytes.as_ptr(), frame.bilibili(wire).as_ptr());
            let raw = if wire.websocket {
                // One unmasked binary message, its payload the raw bytes.
                assert_eq!(bytes[0], 0x82, "{wire:?}");
                frame.bilibili(BiliWire {
                    websocket: false,
                    ..wire
                })
            } else {
                bytes
            };
            let got = commands(raw);
            assert_eq!(got.len(), 2, "{wire:?}");
            for (c, d) in got.iter().zip(&items) {
                assert_eq!(c["cmd"], "DANMU_MSG");
                assert_eq!(c["info"][1], d.text.as_str());
            }
            // Packed as the viewer asked: one compressed packet, or plain ones.
            let outer = bilibili::Header::read(raw).unwrap();
            let expected = match wire.ver {
                Ver::Plain | Ver::Control => Ver::Plain,
                v => v,
            };
            assert_eq!(outer.ver, expected.code(), "{wire:?}");
            if expected != Ver::Plain {
                assert_eq!(outer.packet_len as usize, raw.len(), "{wire:?}: one packet");
            }
        }
    }

    #[test]
    fn control_frames_become_commands_clients_ignore_and_empty_frames_nothing() {
        let online = Frame::online(7);
        let wire = BiliWire {
            ver: Ver::Brotli,
            websocket: false,
        };
        let got = commands(online.bilibili(wire));
        assert_eq!(got[0]["cmd"], "ONLINE_RANK_COUNT");
        assert_eq!(got[0]["data"]["count"], 7);
        let recall = Frame::delete(vec![3, 4]);
        let got = commands(recall.bilibili(wire));
        assert_eq!(got[0]["cmd"], "DANMAKU_RECALL");
        assert_eq!(got[0]["data"]["ids"], serde_json::json!([3, 4]));
        // Density control left nothing of ids 5..=9: nothing to write.
        let thinned = Frame::danmaku(Vec::new(), (5, 9), 0, Instant::now());
        for wire in wires() {
            assert!(thinned.bilibili(wire).is_empty(), "{wire:?}");
        }
    }
}
