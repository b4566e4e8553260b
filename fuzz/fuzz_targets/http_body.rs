//! A REST send body on arbitrary bytes: `parse_json::<SendRequest>`, the
//! guard's `check_send`, and the content rules: `check_text` and the word
//! filter in both its modes. It must never panic, and:
//!
//! - a refusal carries one of the codes parsing and the guard use;
//! - an accepted send holds to the text limit;
//! - `check_text` refuses exactly the texts with a control character, a
//!   line or paragraph separator, or a bidirectional embedding, override or
//!   isolate;
//! - masking keeps the number of characters, changes only characters into
//!   `*`, and leaves no listed word: the reject filter with the same list
//!   passes the masked text;
//! - the mask filter changes a text exactly when the reject filter refuses
//!   it.
//!
//! The texts checked are the body's `text` when it parses, else the body
//! itself read as UTF-8 (lossily), so the filter gets arbitrary text either
//! way.
//!
//! The same bytes are a DPlayer POST body (`dplayer::parse_post`, then
//! the guard's `check_send` on the room and send it names, as its route
//! does): the body is refused as JSON exactly when it is not a JSON
//! object; what the parser accepts has a colour of at most `0xffffff`, one
//! of DPlayer's three modes and a finite time; what the guard then accepts
//! has a non-empty room of the grammar, a non-empty text as sent and a
//! colour of at most `0xffffff`.
//!
//! The same bytes, read as a query string, go through every route's query
//! type (`transport::params`: history, stream, WebSocket, audit, rooms
//! list), as a `Last-Event-ID` header and as a path id. A refusal is
//! `invalid_query` (`invalid_room` for the WebSocket's room, `invalid_field`
//! for a path id); what is accepted is in range: every id at most
//! `MAX_ID`, every limit between 1 and its maximum, a video-time range with
//! a finite start not past its end, a room of the grammar, and a rooms
//! cursor this server made, which names the page it was made for.

#![no_main]

use std::borrow::Cow;
use std::sync::LazyLock;

use danmaku::config::{FilterAction, Limits};
use danmaku::danmaku::{Color, MAX_ID};
use danmaku::error::ErrorCode;
use danmaku::guard::filter::{check_text, WordFilter};
use danmaku::guard::{self, SendRequest, Sender};
use danmaku::node::RoomOrder;
use danmaku::protocol::dplayer::{self, PostError};
use danmaku::transport::body::parse_json;
use danmaku::transport::params::{
    next_cursor, parse_query, path_id, AuditQuery, DensityQuery, HistoryQuery, HistoryRange,
    RoomsQuery, StatsQuery, StreamQuery, WsQuery, MAX_AUDIT_PAGE, MAX_DENSITY_BUCKETS,
    MAX_DENSITY_BUCKET_S, MAX_ROOMS_PAGE, MIN_DENSITY_BUCKET_S,
};
use libfuzzer_sys::fuzz_target;

/// Words with upper case, full width, CJK, a multi-character lower case
/// (`İ` is `i` + U+0307), overlaps (`ab`, `bc`) and a phrase. None has a
/// `*`, which masking writes.
const WORDS: &str = "# comment\nbad\n  Bad Word \nＷＯＲＤ\n坏\ni\u{307}x\n\u{307}\nab\nbc\nσας\n";

static REJECT: LazyLock<WordFilter> =
    LazyLock::new(|| WordFilter::new(WORDS, FilterAction::Reject).unwrap());
static MASK: LazyLock<WordFilter> =
    LazyLock::new(|| WordFilter::new(WORDS, FilterAction::Mask).unwrap());

fn refused_by_check_text(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

fn content_rules(text: &str) {
    let refused = check_text(text);
    assert_eq!(
        refused.is_err(),
        text.chars().any(refused_by_check_text),
        "check_text on {text:?}"
    );
    if let Err(e) = refused {
        assert_eq!(e.code, ErrorCode::InvalidField);
    }

    let rejected = match REJECT.apply(text) {
        Ok(out) => {
            assert!(
                matches!(out, Cow::Borrowed(t) if t == text),
                "reject mode changed text"
            );
            false
        }
        Err(e) => {
            assert_eq!(e.code, ErrorCode::BlockedContent);
            true
        }
    };
    let masked = MASK.apply(text).expect("mask mode never refuses");
    assert_eq!(
        masked.chars().count(),
        text.chars().count(),
        "masking changed the length of {text:?} into {masked:?}"
    );
    for (a, b) in text.chars().zip(masked.chars()) {
        assert!(a == b || b == '*', "masking turned {a:?} into {b:?}");
    }
    assert_eq!(
        rejected,
        masked != text,
        "reject and mask disagree on {text:?} (masked: {masked:?})"
    );
    assert!(
        REJECT.apply(&masked).is_ok(),
        "a listed word survives masking: {text:?} -> {masked:?}"
    );
}

/// Asserts that a refusal carries `code`.
fn refused<T>(result: Result<T, danmaku::error::ApiError>, code: ErrorCode) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            assert_eq!(e.code, code, "{e}");
            None
        }
    }
}

/// Every route's query type on `query`.
fn query_strings(query: &str) {
    let max_history = Limits::default().max_history;
    let history = refused(
        parse_query::<HistoryQuery>(Some(query)),
        ErrorCode::InvalidQuery,
    );
    if let Some((range, limit)) =
        history.and_then(|q| refused(q.check(max_history), ErrorCode::InvalidQuery))
    {
        assert!((1..=max_history).contains(&limit), "history limit {limit}");
        match range {
            HistoryRange::After(after) => assert!(after <= MAX_ID, "after {after}"),
            HistoryRange::VideoTime { from, to } => {
                assert!(from.is_finite() && from <= to, "from {from} to {to}")
            }
        }
    }

    if let Some(q) = refused(
        parse_query::<StreamQuery>(Some(query)),
        ErrorCode::InvalidQuery,
    ) {
        assert!(q.since.is_none_or(|id| id.0 <= MAX_ID));
        // The same text as the browser's resume header.
        if let Ok(header) = axum::http::HeaderValue::from_str(query) {
            if let Some(Some(id)) = refused(q.resume_after(Some(&header)), ErrorCode::InvalidQuery)
            {
                assert!(id <= MAX_ID && query.trim().trim_start_matches('+').parse() == Ok(id));
            }
        }
    }

    if let Some(q) = refused(parse_query::<WsQuery>(Some(query)), ErrorCode::InvalidQuery) {
        assert!(q.since.is_none_or(|id| id.0 <= MAX_ID));
        if let Some(room) = refused(q.room(), ErrorCode::InvalidRoom) {
            assert!(guard::check_room(room).is_ok());
        }
    }

    let audit = refused(
        parse_query::<AuditQuery>(Some(query)),
        ErrorCode::InvalidQuery,
    );
    if let Some((limit, before)) = audit.and_then(|q| refused(q.check(), ErrorCode::InvalidQuery)) {
        assert!((1..=MAX_AUDIT_PAGE).contains(&limit));
        assert!(before.is_none_or(|b| b <= MAX_ID));
    }

    let density = refused(
        parse_query::<DensityQuery>(Some(query)),
        ErrorCode::InvalidQuery,
    );
    if let Some(range) = density.and_then(|q| refused(q.check(), ErrorCode::InvalidQuery)) {
        assert!((MIN_DENSITY_BUCKET_S..=MAX_DENSITY_BUCKET_S).contains(&range.bucket_s));
        assert!(range.buckets.is_none_or(|b| b <= MAX_DENSITY_BUCKETS));
    }
    let _ = refused(
        parse_query::<StatsQuery>(Some(query)),
        ErrorCode::InvalidQuery,
    );

    let rooms = refused(
        parse_query::<RoomsQuery>(Some(query)),
        ErrorCode::InvalidQuery,
    );
    if let Some((order, limit)) = rooms.and_then(|q| refused(q.check(), ErrorCode::InvalidQuery)) {
        assert!((1..=MAX_ROOMS_PAGE).contains(&limit));
        if let RoomOrder::ByName { after: Some(after) } = &order {
            assert!(guard::check_room(after).is_ok(), "cursor after {after:?}");
            // The cursor of the page that ends there names that room again.
            let again = format!("cursor={}", next_cursor(&order, after, limit));
            let (order2, _) = parse_query::<RoomsQuery>(Some(&again))
                .and_then(|q| q.check())
                .expect("a cursor this server made");
            assert_eq!(order2, order);
        }
    }

    if let Some(id) = refused(path_id("id", query), ErrorCode::InvalidField) {
        assert!(id <= MAX_ID && query.trim_start_matches('+').parse() == Ok(id));
    }
}

/// `data` as DPlayer's POST body, through the parser and the guard.
fn dplayer_post(data: &[u8], limits: &Limits, sender: &Sender) {
    let is_object = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(data).is_ok();
    let post = match dplayer::parse_post(data) {
        Ok(post) => post,
        Err(e) => {
            assert_eq!(matches!(e, PostError::Json(_)), !is_object, "{e}");
            return;
        }
    };
    assert!(is_object, "accepted a body that is no JSON object");
    let send = &post.send;
    if let Some(c) = &send.color {
        let color = Color::parse(c).unwrap_or_else(|| panic!("the parser's colour {c:?}"));
        assert!(color.0 <= 0xff_ff_ff, "{c:?}");
    }
    if let Some(m) = &send.mode {
        assert!(matches!(m.as_str(), "scroll" | "top" | "bottom"), "mode {m:?}");
    }
    assert!(send.vt.is_none_or(f64::is_finite), "time {:?}", send.vt);
    let text = send.text.clone();
    match guard::check_send(limits, &post.room, &sender.identity, post.send) {
        Ok(new) => {
            assert!(!post.room.is_empty() && guard::check_room(&post.room).is_ok());
            assert_eq!(new.room, post.room);
            assert_eq!(new.text, text, "the guard changed the text");
            assert!(!new.text.trim().is_empty());
            assert!(new.color.0 <= 0xff_ff_ff);
        }
        Err(e) => assert!(
            matches!(
                e.code,
                ErrorCode::EmptyText
                    | ErrorCode::TextTooLong
                    | ErrorCode::InvalidField
                    | ErrorCode::InvalidRoom
            ),
            "{e}"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    query_strings(&String::from_utf8_lossy(data));
    let limits = Limits::default();
    let sender = Sender::guest(std::net::IpAddr::from([192, 0, 2, 1]));
    dplayer_post(data, &limits, &sender);
    match parse_json::<SendRequest>(data) {
        Err(e) => {
            assert!(
                matches!(e.code, ErrorCode::InvalidJson | ErrorCode::InvalidField),
                "{e}"
            );
            content_rules(&String::from_utf8_lossy(data));
        }
        Ok(req) => {
            content_rules(&req.text);
            if let Some(name) = &req.name {
                content_rules(name);
            }
            let text = req.text.clone();
            match guard::check_send(&limits, "lobby", &sender.identity, req) {
                Ok(new) => {
                    assert_eq!(new.text, text, "the guard changed the text");
                    assert!(new.text.chars().count() <= limits.max_text_chars);
                    assert!(!new.text.trim().is_empty());
                }
                Err(e) => assert!(
                    matches!(
                        e.code,
                        ErrorCode::EmptyText | ErrorCode::TextTooLong | ErrorCode::InvalidField
                    ),
                    "{e}"
                ),
            }
        }
    }
});
