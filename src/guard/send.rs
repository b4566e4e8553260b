//! What a send must be: a valid room, text and fields. Pure checks, with no
//! state: who may send and how often is the [`Guard`](super::Guard)'s part.

use serde::Deserialize;

use super::auth::Identity;
use super::filter::check_text;
use crate::config::Limits;
use crate::danmaku::{Color, Mode, NewDanmaku};
use crate::error::{ApiError, ErrorCode};

/// Font sizes a danmaku may have, in CSS pixels.
pub const SIZE_RANGE: std::ops::RangeInclusive<u16> = 12..=64;
/// The size of a danmaku that names none.
pub const DEFAULT_SIZE: u16 = 25;
/// The display name of a sender who gives none.
pub const DEFAULT_NAME: &str = "guest";
/// The largest video-time offset accepted: 30 days, in seconds.
pub const MAX_VIDEO_TIME: f64 = 30.0 * 24.0 * 3600.0;

/// Checks a room name against `[A-Za-z0-9_.:-]{1,64}`, not made only of
/// dots. This is the whole grammar (docs/protocol.md, "Room names"): every
/// route checks the name it was given, once decoded, here.
///
/// `.`, `..` and `...` would fit the characters, but browsers, URL
/// libraries and proxies resolve dot segments (`/rooms/../danmaku` becomes
/// `/danmaku`, and so do `%2E%2E` and `%2e`), so such a room could be
/// written to by one client and never reached by another.
pub fn check_room(name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        && !name.bytes().all(|b| b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidRoom,
            "room names are 1 to 64 characters of A-Z a-z 0-9 _ . : -, not only dots",
        ))
    }
}

/// A send as a client writes it, over HTTP or WebSocket. Only `text` is
/// required; unknown fields are ignored so that clients may add their own.
#[derive(Debug, Default, Deserialize)]
pub struct SendRequest {
    /// The comment text.
    pub text: String,
    /// `scroll` (default), `top`, `bottom` or `reverse`.
    pub mode: Option<String>,
    /// `#rrggbb`, default `#ffffff`.
    pub color: Option<String>,
    /// Font size in pixels, 12 to 64, default 25.
    pub size: Option<u16>,
    /// Video time offset in seconds.
    pub vt: Option<f64>,
    /// Display name.
    pub name: Option<String>,
}

/// Turns a client's send into a danmaku the store may accept, or says why
/// not. Checks what the send is, not who sends it or how often: those are
/// the [`Guard`](super::Guard)'s. A token's display name wins over the one
/// in the send, so that a signed-in user cannot pose as someone else.
pub fn check_send(
    limits: &Limits,
    room: &str,
    identity: &Identity,
    req: SendRequest,
) -> Result<NewDanmaku, ApiError> {
    check_room(room)?;
    if req.text.trim().is_empty() {
        return Err(ApiError::new(ErrorCode::EmptyText, "text is empty"));
    }
    check_text(&req.text)?;
    let chars = req.text.chars().count();
    if chars > limits.max_text_chars {
        return Err(ApiError::new(
            ErrorCode::TextTooLong,
            format!(
                "text is {chars} characters; the limit is {}",
                limits.max_text_chars
            ),
        ));
    }
    let mode = match req.mode.as_deref() {
        None => Mode::default(),
        Some(m) => Mode::parse(m)
            .ok_or_else(|| invalid_field("mode must be one of scroll, top, bottom, reverse"))?,
    };
    let color = match req.color.as_deref() {
        None => Color::WHITE,
        Some(c) => Color::parse(c).ok_or_else(|| invalid_field("color must be #rrggbb"))?,
    };
    let size = req.size.unwrap_or(DEFAULT_SIZE);
    if !SIZE_RANGE.contains(&size) {
        return Err(invalid_field("size must be between 12 and 64"));
    }
    if let Some(vt) = req.vt {
        if !vt.is_finite() || !(0.0..=MAX_VIDEO_TIME).contains(&vt) {
            return Err(invalid_field(
                "vt must be a number of seconds from 0 to 2592000 (30 days)",
            ));
        }
    }
    let name = match identity.name.clone().or(req.name) {
        None => DEFAULT_NAME.to_owned(),
        Some(n) => {
            let n = n.trim();
            if n.is_empty() || n.chars().count() > limits.max_name_chars || has_control(n) {
                return Err(invalid_field(format!(
                    "name must be 1 to {} printable characters",
                    limits.max_name_chars
                )));
            }
            n.to_owned()
        }
    };
    Ok(NewDanmaku {
        room: room.to_owned(),
        user: identity.user.clone(),
        name,
        text: req.text,
        mode,
        color,
        size,
        vt: req.vt,
        priority: identity.is_admin(),
    })
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn invalid_field(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidField, message)
}

/// A stable guest id for an anonymous sender, derived from its address so the
/// same client keeps the same id across connections and restarts.
pub fn guest_id(addr: std::net::IpAddr) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's RandomState.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let octets = match addr {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    for b in octets {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("guest-{:010x}", hash & 0xff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(text: &str) -> SendRequest {
        SendRequest {
            text: text.into(),
            ..Default::default()
        }
    }

    fn check(req: SendRequest) -> Result<NewDanmaku, ErrorCode> {
        let who = Identity::guest("192.0.2.1".parse().unwrap());
        check_send(&Limits::default(), "room", &who, req).map_err(|e| e.code)
    }

    #[test]
    fn room_names() {
        for ok in [
            "a",
            "live:123",
            "A-b_c.d",
            ".a",
            "..a",
            "a..",
            "-",
            &"x".repeat(64),
        ] {
            assert!(check_room(ok).is_ok(), "{ok}");
        }
        let dots = ".".repeat(64);
        for bad in [
            "",
            "a b",
            "房间",
            "a/b",
            &"x".repeat(65),
            ".",
            "..",
            "...",
            &dots,
        ] {
            assert!(check_room(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_limits_count_characters_not_bytes() {
        assert!(check(send(&"弹".repeat(100))).is_ok());
        assert_eq!(check(send(&"弹".repeat(101))), Err(ErrorCode::TextTooLong));
        assert_eq!(check(send("   ")), Err(ErrorCode::EmptyText));
    }

    #[test]
    fn fields_are_validated_and_defaulted() {
        let d = check(send("hi")).unwrap();
        assert_eq!(
            (d.mode, d.color, d.size, d.name.as_str()),
            (Mode::Scroll, Color::WHITE, 25, "guest")
        );
        let bad = [
            SendRequest {
                mode: Some("sideways".into()),
                ..send("x")
            },
            SendRequest {
                color: Some("red".into()),
                ..send("x")
            },
            SendRequest {
                size: Some(200),
                ..send("x")
            },
            SendRequest {
                vt: Some(-1.0),
                ..send("x")
            },
            SendRequest {
                name: Some("a\u{7}".into()),
                ..send("x")
            },
        ];
        for req in bad {
            assert_eq!(check(req), Err(ErrorCode::InvalidField));
        }
    }

    #[test]
    fn guest_ids_are_stable_and_distinct() {
        let a = guest_id("127.0.0.1".parse().unwrap());
        assert_eq!(a, guest_id("127.0.0.1".parse().unwrap()));
        assert_ne!(a, guest_id("127.0.0.2".parse().unwrap()));
        assert_eq!(a.len(), "guest-".len() + 10);
    }
}
