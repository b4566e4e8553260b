//! Server-Sent Events encoding (the HTML standard's `text/event-stream`).
//!
//! Each danmaku is its own event whose id is the danmaku id, so a browser's
//! `EventSource` resumes with `Last-Event-ID` by itself. JSON from serde never
//! contains a raw newline, so every `data:` fits on one line.

use bytes::Bytes;

use super::frames::ServerMessage;
use crate::danmaku::Danmaku;

/// The events for a batch of danmaku: `id: N`, `event: danmaku`, `data: {…}`.
pub fn danmaku_events(items: &[Danmaku]) -> Bytes {
    let mut out = Vec::with_capacity(items.len() * 256);
    for d in items {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(d.id.to_string().as_bytes());
        out.extend_from_slice(b"\nevent: danmaku\ndata: ");
        serde_json::to_writer(&mut out, d).expect("a danmaku always serialises");
        out.extend_from_slice(b"\n\n");
    }
    Bytes::from(out)
}

/// A control event (`hello`, `online`, `lagged`) whose data is the same JSON
/// the WebSocket transport sends.
pub fn message_event(name: &str, message: &ServerMessage<'_>) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    message.write_json(&mut out);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The stream's first bytes: how long a client waits before reconnecting.
pub const PREAMBLE: &[u8] = b"retry: 2000\n\n";

/// A comment line that keeps proxies from closing an idle stream.
pub const KEEPALIVE: &[u8] = b": ping\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::danmaku::{Color, Mode};

    #[test]
    fn one_event_per_danmaku_with_its_id() {
        let d = |id| Danmaku {
            id,
            room: "r".into(),
            user: "u".into(),
            name: "n".into(),
            text: "line\nbreak".into(),
            mode: Mode::Top,
            color: Color(0xff0000),
            size: 25,
            ts: 1,
            vt: None,
            priority: false,
        };
        let out = danmaku_events(&[d(4), d(5)]);
        let text = std::str::from_utf8(&out).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 2);
        assert!(events[0].starts_with("id: 4\nevent: danmaku\ndata: {"));
        assert!(events[1].starts_with("id: 5\n"));
        assert_eq!(events[0].lines().count(), 3, "data stays on one line");
    }
}
