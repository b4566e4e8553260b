//! A WebSocket command (the text of a client message) on arbitrary bytes:
//! `ClientMessage::parse` and its error as the client sees it, then for a
//! `send` the guard's `check_send` with the default limits, then the answer
//! frame the server would write. It must never panic, and:
//!
//! - a refusal carries one of the codes parsing and the guard use;
//! - an accepted send holds to the limits (text 1..=100 characters and not
//!   blank, size 12..=64, a finite video time within 30 days, a printable
//!   name);
//! - the `ack` / `error` frame, with the client's `ref` echoed, is JSON.

#![no_main]

use danmaku::config::Limits;
use danmaku::danmaku::Danmaku;
use danmaku::error::{ApiError, ErrorCode};
use danmaku::guard::{self, Sender};
use danmaku::protocol::frames::{ClientMessage, ServerMessage};
use libfuzzer_sys::fuzz_target;

fn answer_is_json(message: &ServerMessage<'_>) {
    let mut out = Vec::new();
    message.write_json(&mut out);
    serde_json::from_slice::<serde_json::Value>(&out).expect("the server wrote invalid JSON");
}

fn check_refusal(e: &ApiError, known: &[ErrorCode]) {
    assert!(known.contains(&e.code), "unexpected code {:?}: {e}", e.code);
    assert!(e.retry_after_s.is_none());
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let sender = Sender::guest(std::net::IpAddr::from([192, 0, 2, 1]));
    match ClientMessage::parse(data).map_err(ApiError::from) {
        Err(e) => {
            check_refusal(
                &e,
                &[
                    ErrorCode::InvalidJson,
                    ErrorCode::InvalidField,
                    ErrorCode::UnsupportedCommand,
                ],
            );
            answer_is_json(&ServerMessage::Error {
                reference: None,
                error: &e,
            });
        }
        Ok(ClientMessage::Ping) => answer_is_json(&ServerMessage::Pong),
        Ok(ClientMessage::Send { reference, send }) => {
            // Whatever the guard's filter would say of the text, it must
            // not panic on it.
            let _ = guard::filter::check_text(&send.text);
            match guard::check_send(&limits, "lobby", &sender.identity, send) {
                Err(e) => {
                    check_refusal(
                        &e,
                        &[
                            ErrorCode::EmptyText,
                            ErrorCode::TextTooLong,
                            ErrorCode::InvalidField,
                        ],
                    );
                    answer_is_json(&ServerMessage::Error {
                        reference: reference.as_ref(),
                        error: &e,
                    });
                }
                Ok(new) => {
                    let chars = new.text.chars().count();
                    assert!(
                        chars <= limits.max_text_chars,
                        "{chars} characters accepted"
                    );
                    assert!(!new.text.trim().is_empty(), "blank text accepted");
                    assert!(guard::SIZE_RANGE.contains(&new.size));
                    if let Some(vt) = new.vt {
                        assert!(vt.is_finite() && (0.0..=guard::MAX_VIDEO_TIME).contains(&vt));
                    }
                    let name_chars = new.name.chars().count();
                    assert!((1..=limits.max_name_chars).contains(&name_chars));
                    assert!(!new.name.chars().any(char::is_control));
                    assert_eq!(new.name.trim(), new.name);
                    answer_is_json(&ServerMessage::Ack {
                        reference: reference.as_ref(),
                        id: 1,
                        ts: 0,
                    });
                    // The danmaku as viewers receive it reads back the same.
                    let stored = Danmaku::stored(new, 1, 1_700_000_000_000);
                    let mut out = Vec::new();
                    ServerMessage::danmaku(std::slice::from_ref(&stored)).write_json(&mut out);
                    let v: serde_json::Value =
                        serde_json::from_slice(&out).expect("danmaku frame is JSON");
                    let back: Danmaku = serde_json::from_value(v["items"][0].clone())
                        .expect("a danmaku reads back");
                    assert_eq!(
                        (&back.text, &back.name, back.mode, back.color, back.size),
                        (
                            &stored.text,
                            &stored.name,
                            stored.mode,
                            stored.color,
                            stored.size
                        )
                    );
                    assert_eq!(back.vt.is_some(), stored.vt.is_some());
                }
            }
        }
    }
});
