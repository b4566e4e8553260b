//! Property tests of the decoders and checks that take hostile input, against
//! the public API of the `danmaku` library. docs/fuzzing.md tells how they
//! and the fuzz targets divide the work.
//!
//! - The WebSocket decoder: any sequence of valid masked client frames,
//!   fragmented and delivered in arbitrary chunks, decodes to the messages
//!   encoded; an oversized message is refused however it is fragmented.
//! - `check_send`: never panics; an accepted send holds to the limits, a
//!   refused one carries a known code that fits its input.
//! - The word filter in mask mode: the text keeps its length in characters
//!   and no listed word, folded for case and width, survives.
//! - `check_room` accepts exactly `[A-Za-z0-9_.:-]{1,64}` not made only
//!   of dots.
//! - Integer edges: every id, limit, duration and number a client names,
//!   in a query, a header, a path or a JSON body, from 0 through `i64::MAX`
//!   and `u64::MAX` to negative numbers, huge decimals and floats, gets the
//!   right answer or `400`: never history from id 1, never `500`, never a
//!   panic. Through the real router, node and SQLite store.
//! - A room's coalescing window stays between 1 ms and `coalesce_ms` for
//!   any config and viewer count (`writes_per_s = 0` once made every room's
//!   flusher panic).
//! - The client behind a trusted proxy: whatever a client writes in its
//!   forwarding headers, the hop the proxy adds decides; from an untrusted
//!   peer the headers change nothing.

use std::time::Duration;

use danmaku::config::{FanoutConfig, FilterAction, Limits};
use danmaku::danmaku::{Color, Mode};
use danmaku::error::ErrorCode;
use danmaku::guard::filter::WordFilter;
use danmaku::guard::{self, SendRequest, Sender};
use danmaku::protocol::websocket::{Decoded, Decoder, FrameError, Message};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

const CASES: u32 = 256;

// ---------------------------------------------------------------------------
// WebSocket frames
// ---------------------------------------------------------------------------

/// How a frame writes its payload length: the shortest form, or a longer
/// one (RFC 6455 asks for the shortest, but the decoder takes both).
#[derive(Clone, Copy, Debug)]
enum LenForm {
    Minimal,
    Ext16,
    Ext64,
}

/// The encoding choices of one frame.
#[derive(Clone, Copy, Debug)]
struct Enc {
    mask: [u8; 4],
    form: LenForm,
}

/// A masked client frame, as a browser would send it.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], enc: Enc) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let n = payload.len();
    let form = match enc.form {
        LenForm::Minimal if n < 126 => None,
        LenForm::Minimal | LenForm::Ext16 if n <= 0xffff => Some(LenForm::Ext16),
        _ => Some(LenForm::Ext64),
    };
    match form {
        None => out.push(0x80 | n as u8),
        Some(LenForm::Ext16) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        Some(_) => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&enc.mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ enc.mask[i & 3]));
    out
}

#[derive(Clone, Debug)]
enum Control {
    Ping(Vec<u8>, Enc),
    Pong(Vec<u8>, Enc),
}

impl Control {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Control::Ping(p, enc) => out.extend(client_frame(true, 0x9, p, *enc)),
            Control::Pong(p, enc) => out.extend(client_frame(true, 0xA, p, *enc)),
        }
    }

    fn message(&self) -> Message {
        match self {
            Control::Ping(p, _) => Message::Ping(p.clone()),
            Control::Pong(..) => Message::Pong,
        }
    }
}

/// What a data message carries (`Message` itself is not `Clone`).
#[derive(Clone, Debug)]
enum Payload {
    Text(String),
    Binary(Vec<u8>),
}

/// A data message, cut into fragments with control frames between them.
#[derive(Clone, Debug)]
struct Data {
    message: Payload,
    /// Where to cut the payload, each cut with the encoding of the fragment
    /// it starts and the control frames sent just before that fragment.
    cuts: Vec<(Index, Enc, Vec<Control>)>,
    first: Enc,
}

impl Data {
    fn payload(&self) -> (u8, &[u8]) {
        match &self.message {
            Payload::Text(t) => (0x1, t.as_bytes()),
            Payload::Binary(b) => (0x2, b),
        }
    }

    fn message(&self) -> Message {
        match &self.message {
            Payload::Text(t) => Message::Text(t.clone()),
            Payload::Binary(b) => Message::Binary(b.clone()),
        }
    }

    /// Appends the frames; returns the messages they decode to, in order.
    fn encode(&self, out: &mut Vec<u8>) -> Vec<Message> {
        let (opcode, payload) = self.payload();
        let mut cuts: Vec<(usize, Enc, &[Control])> = self
            .cuts
            .iter()
            .map(|(at, enc, controls)| (at.index(payload.len() + 1), *enc, controls.as_slice()))
            .collect();
        cuts.sort_by_key(|c| c.0);
        let mut messages = Vec::new();
        let (mut start, mut opcode, mut enc) = (0, opcode, self.first);
        for (at, next_enc, controls) in cuts {
            // A fragment (possibly empty: RFC 6455 allows it), then the
            // control frames, which may come between fragments.
            out.extend(client_frame(false, opcode, &payload[start..at], enc));
            for c in controls {
                c.encode(out);
                messages.push(c.message());
            }
            (start, opcode, enc) = (at, 0x0, next_enc);
        }
        out.extend(client_frame(true, opcode, &payload[start..], enc));
        messages.push(self.message());
        messages
    }
}

#[derive(Clone, Debug)]
enum Item {
    Data(Data),
    Control(Control),
    /// A close frame: code and reason, or an empty payload.
    Close(Option<(u16, String)>, Enc),
}

fn enc() -> impl Strategy<Value = Enc> {
    let form = prop_oneof![
        4 => Just(LenForm::Minimal),
        1 => Just(LenForm::Ext16),
        1 => Just(LenForm::Ext64),
    ];
    (any::<[u8; 4]>(), form).prop_map(|(mask, form)| Enc { mask, form })
}

fn control() -> impl Strategy<Value = Control> {
    prop_oneof![
        (vec(any::<u8>(), 0..=125), enc()).prop_map(|(p, e)| Control::Ping(p, e)),
        (vec(any::<u8>(), 0..=125), enc()).prop_map(|(p, e)| Control::Pong(p, e)),
    ]
}

/// A data message of at most `max_chars` characters or bytes.
fn data(max_chars: usize) -> impl Strategy<Value = Data> {
    let message = prop_oneof![
        proptest::string::string_regex(&format!("(?s).{{0,{max_chars}}}"))
            .unwrap()
            .prop_map(Payload::Text),
        vec(any::<u8>(), 0..=max_chars).prop_map(Payload::Binary),
    ];
    let cuts = vec((any::<Index>(), enc(), vec(control(), 0..3)), 0..5);
    (message, cuts, enc()).prop_map(|(message, cuts, first)| Data {
        message,
        cuts,
        first,
    })
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        6 => data(200).prop_map(Item::Data),
        2 => control().prop_map(Item::Control),
    ]
}

fn close() -> impl Strategy<Value = Item> {
    let payload = prop_oneof![Just(None), (any::<u16>(), "[a-z 弾]{0,30}").prop_map(Some)];
    (payload, enc()).prop_map(|(p, e)| Item::Close(p, e))
}

/// Encodes a script: the bytes, and the messages they decode to.
fn encode(items: &[Item]) -> (Vec<u8>, Vec<Message>) {
    let mut bytes = Vec::new();
    let mut messages = Vec::new();
    for item in items {
        match item {
            Item::Data(d) => messages.extend(d.encode(&mut bytes)),
            Item::Control(c) => {
                c.encode(&mut bytes);
                messages.push(c.message());
            }
            Item::Close(payload, enc) => {
                let (body, message) = match payload {
                    None => (Vec::new(), Message::Close(None)),
                    Some((code, reason)) => {
                        let mut body = code.to_be_bytes().to_vec();
                        body.extend_from_slice(reason.as_bytes());
                        (body, Message::Close(Some(*code)))
                    }
                };
                bytes.extend(client_frame(true, 0x8, &body, *enc));
                messages.push(message);
            }
        }
    }
    (bytes, messages)
}

/// Feeds `bytes` to a decoder in chunks of the given sizes (cycled), the
/// way the server's read loop does; returns the messages, or the first
/// error, and whether bytes were left over.
fn decode_chunked(
    max: usize,
    bytes: &[u8],
    chunks: &[usize],
) -> (Result<Vec<Message>, FrameError>, usize) {
    let mut decoder = Decoder::new(max);
    let mut inbuf = Vec::new();
    let mut messages = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        inbuf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match decoder.decode(&inbuf) {
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Fragment { consumed }) => {
                    assert!(consumed <= inbuf.len());
                    assert!(decoder.is_mid_message());
                    inbuf.drain(..consumed);
                }
                Ok(Decoded::Message { message, consumed }) => {
                    assert!(consumed <= inbuf.len());
                    inbuf.drain(..consumed);
                    messages.push(message);
                }
                Err(e) => return (Err(e), inbuf.len()),
            }
        }
    }
    assert!(
        !decoder.is_mid_message(),
        "a whole script leaves no fragment"
    );
    (Ok(messages), inbuf.len())
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        1 => Just(vec![usize::MAX]),
        1 => Just(vec![1]),
        4 => vec(1usize..=40, 1..20),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Valid frames, fragmented and interleaved with control frames, then
    /// split at arbitrary points, decode to exactly the messages encoded.
    #[test]
    fn ws_frames_round_trip(
        items in vec(item(), 1..8),
        last in proptest::option::of(close()),
        chunks in chunks(),
    ) {
        let mut items = items;
        items.extend(last);
        let (bytes, expected) = encode(&items);
        let (decoded, left) = decode_chunked(4096, &bytes, &chunks);
        prop_assert_eq!(decoded, Ok(expected));
        prop_assert_eq!(left, 0);
    }

    /// A message over the limit is refused as too big, however it is
    /// fragmented; one within it is decoded.
    #[test]
    fn ws_messages_over_the_limit_are_refused(
        d in data(600),
        max in 0usize..=700,
        chunks in chunks(),
    ) {
        let mut bytes = Vec::new();
        let expected = d.encode(&mut bytes);
        let len = d.payload().1.len();
        let (decoded, _) = decode_chunked(max, &bytes, &chunks);
        if len > max {
            prop_assert_eq!(decoded, Err(FrameError::TooBig(max)));
        } else {
            prop_assert_eq!(decoded, Ok(expected));
        }
    }
}

// ---------------------------------------------------------------------------
// check_send
// ---------------------------------------------------------------------------

fn send_request() -> impl Strategy<Value = SendRequest> {
    let text = prop_oneof!["(?s).{0,130}", "[ \t\u{3000}]{0,4}", "[弾幕a]{95,105}"];
    let mode = proptest::option::of(prop_oneof![
        proptest::sample::select(vec!["scroll", "top", "bottom", "reverse"]).prop_map(String::from),
        ".{0,8}",
    ]);
    let color = proptest::option::of(prop_oneof!["#[0-9a-fA-F]{6}", "#?.{0,8}"]);
    let size = proptest::option::of(prop_oneof![8u16..=70, any::<u16>()]);
    let vt = proptest::option::of(prop_oneof![
        -10.0f64..3_000_000.0,
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
    ]);
    let name = proptest::option::of(prop_oneof!["[a-zA-Z弾 ]{0,40}", "(?s).{0,40}"]);
    (text, mode, color, size, vt, name).prop_map(|(text, mode, color, size, vt, name)| {
        SendRequest {
            text,
            mode,
            color,
            size,
            vt,
            name,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// `check_send` never panics. What it accepts holds to the limits and
    /// keeps what the client sent; what it refuses carries a known code
    /// that fits the input.
    #[test]
    fn check_send_accepts_only_what_fits(
        req in send_request(),
        room in prop_oneof!["[A-Za-z0-9_.:-]{1,64}", "(?s).{0,70}"],
        max_text_chars in 1usize..=200,
        max_name_chars in 1usize..=64,
    ) {
        let limits = Limits { max_text_chars, max_name_chars, ..Limits::default() };
        let sender = Sender::guest("192.0.2.1".parse().unwrap());
        let (text, mode, color, size, vt, name) = (
            req.text.clone(),
            req.mode.clone(),
            req.color.clone(),
            req.size,
            req.vt,
            req.name.clone(),
        );
        let chars = text.chars().count();
        match guard::check_send(&limits, &room, &sender.identity, req) {
            Ok(new) => {
                prop_assert!(guard::check_room(&room).is_ok());
                prop_assert_eq!(&new.room, &room);
                prop_assert_eq!(&new.user, sender.user());
                prop_assert_eq!(&new.text, &text);
                prop_assert!(chars <= max_text_chars);
                prop_assert!(!text.trim().is_empty());
                prop_assert_eq!(Some(new.mode), mode.as_deref().map_or(Some(Mode::Scroll), Mode::parse));
                prop_assert_eq!(Some(new.color), color.as_deref().map_or(Some(Color::WHITE), Color::parse));
                prop_assert_eq!(new.size, size.unwrap_or(guard::DEFAULT_SIZE));
                prop_assert!(guard::SIZE_RANGE.contains(&new.size));
                prop_assert_eq!(new.vt.map(f64::to_bits), vt.map(f64::to_bits));
                if let Some(vt) = new.vt {
                    prop_assert!(vt.is_finite() && (0.0..=guard::MAX_VIDEO_TIME).contains(&vt));
                }
                match name {
                    None => prop_assert_eq!(&new.name, guard::DEFAULT_NAME),
                    Some(name) => {
                        prop_assert_eq!(new.name.as_str(), name.trim());
                        prop_assert!((1..=max_name_chars).contains(&new.name.chars().count()));
                        prop_assert!(!new.name.chars().any(char::is_control));
                    }
                }
            }
            Err(e) => {
                match e.code {
                    ErrorCode::InvalidRoom => prop_assert!(guard::check_room(&room).is_err()),
                    ErrorCode::EmptyText => prop_assert!(text.trim().is_empty()),
                    ErrorCode::TextTooLong => prop_assert!(chars > max_text_chars),
                    ErrorCode::InvalidField => {}
                    other => prop_assert!(false, "unexpected code {:?}: {}", other, e),
                }
                prop_assert!(e.retry_after_s.is_none());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The word filter
// ---------------------------------------------------------------------------

/// The folding the filter documents (src/guard/filter.rs): full-width ASCII
/// and the ideographic space to ASCII, then Unicode lower case, with
/// invisible characters dropped. Restated here so the test does not take
/// the filter's word for it.
fn fold(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap(),
            '\u{3000}' => ' ',
            c => c,
        })
        .filter(|c| {
            !matches!(
                c,
                '\u{200B}'..='\u{200F}'
                    | '\u{2060}'..='\u{2064}'
                    | '\u{FEFF}'
                    | '\u{FE00}'..='\u{FE0F}'
                    | '\u{00AD}'
                    | '\u{034F}'
                    | '\u{061C}'
                    | '\u{180E}'
            )
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// Characters for words and texts: ASCII and full-width letters of both
/// cases, CJK, `İ` (two characters in lower case) and the combining dot it
/// yields, sigma, invisible characters and spaces.
const ALPHABET: &[char] = &[
    'a', 'b', 'c', 'A', 'B', 'ａ', 'Ｂ', 'ｃ', '弾', '幕', 'İ', 'i', '\u{307}', 'Σ', 'σ', 'ς',
    '\u{200B}', '\u{FE0F}', ' ', '\u{3000}', '#',
];

fn word() -> impl Strategy<Value = String> {
    vec(proptest::sample::select(ALPHABET), 1..5).prop_map(|cs| cs.into_iter().collect())
}

fn text() -> impl Strategy<Value = String> {
    // Texts may hold `*` (masking's own character) and others; words never
    // do, or masking could write a listed word.
    let mut chars = ALPHABET.to_vec();
    chars.extend(['*', 'x', '！', '\u{FF0A}']);
    vec(proptest::sample::select(chars), 0..40).prop_map(|cs| cs.into_iter().collect())
}

/// The words of a list as the filter reads it, folded.
fn listed(list: &str) -> Vec<String> {
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(fold)
        .filter(|w| !w.is_empty())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Masking keeps the text's length in characters, turns characters into
    /// `*` only, and leaves no listed word; a text is masked exactly when
    /// the reject mode would refuse it.
    #[test]
    fn word_filter_mask_hides_every_listed_word(
        words in vec(word(), 1..6),
        text in text(),
    ) {
        let list = words.join("\n");
        let mask = WordFilter::new(&list, FilterAction::Mask).unwrap();
        let reject = WordFilter::new(&list, FilterAction::Reject).unwrap();
        let listed = listed(&list);
        let contains_a_word = listed.iter().any(|w| fold(&text).contains(w.as_str()));

        let masked = mask.apply(&text).unwrap();
        prop_assert_eq!(masked.chars().count(), text.chars().count());
        for (a, b) in text.chars().zip(masked.chars()) {
            prop_assert!(a == b || b == '*', "{:?} became {:?}", a, b);
        }
        let folded = fold(&masked);
        for w in &listed {
            prop_assert!(!folded.contains(w.as_str()), "{:?} survives in {:?}", w, masked);
        }
        prop_assert_eq!(masked != text, contains_a_word);

        match reject.apply(&text) {
            Ok(out) => {
                prop_assert!(!contains_a_word);
                prop_assert_eq!(out, text.as_str());
            }
            Err(e) => {
                prop_assert!(contains_a_word);
                prop_assert_eq!(e.code, ErrorCode::BlockedContent);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Room names
// ---------------------------------------------------------------------------

fn room_name_ok(s: &str) -> bool {
    (1..=64).contains(&s.chars().count())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
        && !s.chars().all(|c| c == '.')
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Every name of the pattern is accepted, unless it is only dots.
    #[test]
    fn check_room_accepts_the_pattern(
        name in "[A-Za-z0-9_.:-]{1,64}".prop_filter("only dots", |n| n.bytes().any(|b| b != b'.')),
    ) {
        prop_assert!(guard::check_room(&name).is_ok(), "{:?}", name);
    }

    /// Everything else is refused as `invalid_room`: too long, empty, only
    /// dots (which URLs resolve away), or with one character outside the
    /// set.
    #[test]
    fn check_room_refuses_the_rest(
        name in prop_oneof![
            "[A-Za-z0-9_.:-]{65,100}",
            ("[A-Za-z0-9_.:-]{0,32}", "[^A-Za-z0-9_.:-]", "[A-Za-z0-9_.:-]{0,31}")
                .prop_map(|(a, b, c)| format!("{a}{b}{c}")),
            Just(String::new()),
            "\\.{1,64}",
        ],
    ) {
        let e = guard::check_room(&name).unwrap_err();
        prop_assert_eq!(e.code, ErrorCode::InvalidRoom);
    }

    /// On any string, accepted exactly when it matches the pattern.
    #[test]
    fn check_room_matches_the_pattern_exactly(name in "(?s).{0,70}") {
        prop_assert_eq!(guard::check_room(&name).is_ok(), room_name_ok(&name), "{:?}", name);
    }
}

// ---------------------------------------------------------------------------
// The coalescing window
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Never panics, and stays between 1 ms and the configured cap, down to
    /// 0 writes per second and up to `usize::MAX` viewers (each room's
    /// flusher starts from that one).
    #[test]
    fn fanout_window_stays_within_its_bounds(
        writes_per_s in prop_oneof![0u64..=2, any::<u64>()],
        coalesce_ms in prop_oneof![0u64..=100, any::<u64>()],
        viewers in prop_oneof![Just(usize::MAX), any::<usize>(), 0usize..=100_000],
    ) {
        let config = FanoutConfig { writes_per_s, coalesce_ms, ..FanoutConfig::default() };
        let window = config.window(viewers);
        prop_assert!(window >= Duration::from_millis(1));
        prop_assert!(window <= Duration::from_millis(coalesce_ms.max(1)));
    }
}

// ---------------------------------------------------------------------------
// Integer edges, through the real router, node and store
// ---------------------------------------------------------------------------

mod edges {
    use std::net::IpAddr;
    use std::sync::LazyLock;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::Router;
    use danmaku::config::{Config, Synchronous};
    use danmaku::danmaku::MAX_ID;
    use danmaku::guard::auth::{mint, Claims, Role};
    use danmaku::node::Node;
    use danmaku::transport::client::ClientAddr;
    use danmaku::transport::{router, App};
    use http_body_util::BodyExt;
    use proptest::prelude::*;
    use serde_json::Value;
    use tower::ServiceExt;

    /// The danmaku of the room the history properties read: ids 1 to 3.
    const ROOM: &str = "edge";
    const STORED: u64 = 3;

    /// One server, without its TCP listener: requests go to the router
    /// the listener would hand them to, over a real node and SQLite store.
    struct Harness {
        rt: tokio::runtime::Runtime,
        router: Router,
        admin: String,
    }

    static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap().keep();
        let mut config = Config {
            data: dir.join("data"),
            ..Config::default()
        };
        config.store.synchronous = Synchronous::Normal;
        config.auth.hs256_secret = Some("0123456789abcdef0123456789abcdef".into());
        // The peer every request comes from: not rate limited, so that
        // hundreds of cases are answered on their merits.
        config.limits.exempt_ips = vec!["192.0.2.0/24".parse().unwrap()];
        let claims = Claims {
            sub: "mod".into(),
            name: None,
            role: Role::Admin,
            rooms: None,
            exp: u64::try_from(danmaku::danmaku::now_ms() / 1000).unwrap() + 86_400,
        };
        let admin = mint(&config.auth, &claims).unwrap();
        let node = rt.block_on(Node::start(config)).unwrap();
        let router = router(App {
            node,
            tasks: tokio_util::task::TaskTracker::new(),
        });
        let harness = Harness { rt, router, admin };
        // Sent by the admin, so that a guest may not recall them.
        for text in ["one", "two", "three"] {
            let body = format!(r#"{{"text":"{text}"}}"#);
            let (status, _) = harness.as_admin("POST", "/api/v1/rooms/edge/danmaku", &body);
            assert_eq!(status, 201);
        }
        harness
    });

    impl Harness {
        /// One request as the admin (`auth`) or a guest; the status and the
        /// first chunk of the body (all of it, but for a stream).
        fn call(
            &self,
            method: &str,
            target: &str,
            headers: &[(&str, &str)],
            body: &str,
        ) -> (u16, Vec<u8>) {
            let mut req = Request::builder().method(method).uri(target);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let mut req = req.body(Body::from(body.to_owned())).unwrap();
            // What the accept loop derives for a direct client.
            req.extensions_mut()
                .insert(ClientAddr(IpAddr::from([192, 0, 2, 1])));
            self.rt.block_on(async {
                let res = self.router.clone().oneshot(req).await.unwrap();
                let status = res.status().as_u16();
                let mut body = res.into_body();
                let first = match body.frame().await {
                    Some(Ok(frame)) => frame.into_data().unwrap_or_default().to_vec(),
                    _ => Vec::new(),
                };
                (status, first)
            })
        }

        fn as_admin(&self, method: &str, target: &str, body: &str) -> (u16, Value) {
            let auth = format!("Bearer {}", self.admin);
            let (status, bytes) = self.call(method, target, &[("authorization", &auth)], body);
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        }

        fn as_guest(&self, method: &str, target: &str) -> (u16, Value) {
            let (status, bytes) = self.call(method, target, &[], "");
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        }
    }

    /// Where a client's number goes.
    #[derive(Clone, Copy, Debug)]
    enum Target {
        HistoryAfter,
        HistoryLimit,
        HistoryFrom,
        HistoryTo,
        StreamSince,
        LastEventId,
        WsSince,
        RecallId,
        ApproveId,
        RejectId,
        AuditLimit,
        AuditBefore,
        RoomsLimit,
        MuteSeconds,
        BanSeconds,
        SlowMode,
        SendSize,
        SendVt,
    }

    const TARGETS: [Target; 18] = [
        Target::HistoryAfter,
        Target::HistoryLimit,
        Target::HistoryFrom,
        Target::HistoryTo,
        Target::StreamSince,
        Target::LastEventId,
        Target::WsSince,
        Target::RecallId,
        Target::ApproveId,
        Target::RejectId,
        Target::AuditLimit,
        Target::AuditBefore,
        Target::RoomsLimit,
        Target::MuteSeconds,
        Target::BanSeconds,
        Target::SlowMode,
        Target::SendSize,
        Target::SendVt,
    ];

    /// The numbers at the edges, as a client would write them.
    const EXTREMES: [&str; 24] = [
        "0",
        "1",
        "3",
        "4",
        "64",
        "65",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "-9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999999999999999999999999999",
        "1.5",
        "1.0",
        "1e3",
        "1e400",
        "-0",
        "NaN",
        "inf",
        "",
    ];

    fn extreme() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(&EXTREMES[..]).prop_map(str::to_owned),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            (0..=MAX_ID).prop_map(|n| n.to_string()),
            (MAX_ID..).prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| f.to_string()),
            "-?[0-9]{15,45}",
            "[+-]?[0-9]{1,3}(\\.[0-9]{1,3})?(e[+-]?[0-9]{1,3})?",
        ]
    }

    /// `raw` as the query string's value, percent-encoded.
    fn query(name: &str, raw: &str) -> String {
        serde_urlencoded::to_string([(name, raw)]).unwrap()
    }

    /// An id the store can hold, as the server reads one.
    fn id(raw: &str) -> Option<u64> {
        raw.parse::<u64>().ok().filter(|&n| n <= MAX_ID)
    }

    /// What the JSON body's `raw` number deserialises to as a `T`, as a
    /// well-behaved client library would read it.
    fn json<T: serde::de::DeserializeOwned>(raw: &str) -> Option<T> {
        serde_json::from_str(raw).ok()
    }

    fn code(answer: &Value) -> &str {
        answer["error"]["code"].as_str().unwrap_or("")
    }

    fn item_ids(answer: &Value) -> Vec<u64> {
        answer["items"]
            .as_array()
            .map(|items| items.iter().map(|d| d["id"].as_u64().unwrap()).collect())
            .unwrap_or_default()
    }

    /// Sends `raw` to `target` and checks the answer; `Err` says what was
    /// wrong.
    fn check(target: Target, raw: &str) -> Result<(), String> {
        let h = &*HARNESS;
        let in_path = matches!(
            target,
            Target::RecallId | Target::ApproveId | Target::RejectId
        );
        if in_path && raw.is_empty() {
            // An empty segment is another route, which does not exist.
            let answer = h.as_guest("DELETE", &format!("/api/v1/rooms/{ROOM}/danmaku/"));
            return if answer.0 == 404 {
                Ok(())
            } else {
                Err(format!("empty id: {answer:?}"))
            };
        }
        let history = |q: String| h.as_guest("GET", &format!("/api/v1/rooms/{ROOM}/danmaku?{q}"));
        // A 400 with one of these codes, or the expected success.
        let refused = |(status, answer): &(u16, Value), codes: &[&str]| {
            if *status == 400 && codes.contains(&code(answer)) {
                Ok(())
            } else {
                Err(format!(
                    "{target:?} {raw:?}: want 400 {codes:?}, got {status} {answer}"
                ))
            }
        };
        let got = |cond: bool, what: &dyn std::fmt::Debug| {
            if cond {
                Ok(())
            } else {
                Err(format!("{target:?} {raw:?}: {what:?}"))
            }
        };
        match target {
            Target::HistoryAfter => {
                let answer = history(query("after", raw));
                match id(raw) {
                    // Exactly the ids above it: never history from id 1.
                    Some(after) => got(
                        answer.0 == 200
                            && item_ids(&answer.1) == ((after + 1)..=STORED).collect::<Vec<_>>(),
                        &answer,
                    ),
                    None => refused(&answer, &["invalid_query"]),
                }
            }
            Target::HistoryLimit => {
                let answer = history(query("limit", raw));
                match raw.parse::<usize>() {
                    Ok(n @ 1..=1000) => got(
                        answer.0 == 200 && item_ids(&answer.1).len() == n.min(3),
                        &answer,
                    ),
                    _ => refused(&answer, &["invalid_query"]),
                }
            }
            Target::HistoryFrom | Target::HistoryTo => {
                let q = match target {
                    Target::HistoryFrom => query("from", raw),
                    _ => query("to", raw),
                };
                let answer = history(q);
                let bound = raw.parse::<f64>().ok();
                let ok = match (target, bound) {
                    (Target::HistoryFrom, Some(from)) => from.is_finite(),
                    (Target::HistoryTo, Some(to)) => !to.is_nan() && to >= 0.0,
                    _ => false,
                };
                if ok {
                    // The seeds have no video time: nothing matches.
                    got(answer.0 == 200 && item_ids(&answer.1).is_empty(), &answer)
                } else {
                    refused(&answer, &["invalid_query"])
                }
            }
            Target::StreamSince | Target::LastEventId => {
                let path = format!("/api/v1/rooms/{ROOM}/stream");
                let (status, first) = match target {
                    Target::StreamSince => {
                        h.call("GET", &format!("{path}?{}", query("since", raw)), &[], "")
                    }
                    _ => match axum::http::HeaderValue::from_str(raw) {
                        Ok(_) => h.call("GET", &path, &[("last-event-id", raw)], ""),
                        // Not a header a client could send.
                        Err(_) => return Ok(()),
                    },
                };
                let text = String::from_utf8_lossy(&first).into_owned();
                let resume = match target {
                    Target::LastEventId => id(raw.trim()),
                    _ => id(raw),
                };
                match resume {
                    // Resumes where asked, or from the newest id when asked
                    // past it: its hello carries that starting point.
                    Some(since) => got(
                        status == 200 && text.contains(&format!("id: {}\n", since.min(STORED))),
                        &(status, &text),
                    ),
                    None => refused(
                        &(status, serde_json::from_str(&text).unwrap_or(Value::Null)),
                        &["invalid_query"],
                    ),
                }
            }
            Target::WsSince => {
                let headers = [
                    ("upgrade", "websocket"),
                    ("connection", "upgrade"),
                    ("sec-websocket-version", "13"),
                    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ];
                let (status, body) = h.call(
                    "GET",
                    &format!("/ws?room={ROOM}&{}", query("since", raw)),
                    &headers,
                    "",
                );
                match id(raw) {
                    Some(_) => got(status == 101, &status),
                    None => refused(
                        &(status, serde_json::from_slice(&body).unwrap_or(Value::Null)),
                        &["invalid_query"],
                    ),
                }
            }
            Target::RecallId => {
                let answer = h.as_guest(
                    "DELETE",
                    &format!("/api/v1/rooms/{ROOM}/danmaku/{}", urlencode(raw)),
                );
                match id(raw) {
                    // The guest is not their author: nothing is recalled.
                    Some(1..=STORED) => got(answer.0 == 403, &answer),
                    Some(_) => got(answer.0 == 404, &answer),
                    None => refused(&answer, &["invalid_field"]),
                }
            }
            Target::ApproveId | Target::RejectId => {
                let verb = if matches!(target, Target::ApproveId) {
                    "approve"
                } else {
                    "reject"
                };
                let answer = h.as_admin(
                    "POST",
                    &format!("/api/v1/admin/rooms/{ROOM}/held/{}/{verb}", urlencode(raw)),
                    "",
                );
                match id(raw) {
                    // Nothing is held.
                    Some(_) => got(answer.0 == 404, &answer),
                    None => refused(&answer, &["invalid_field"]),
                }
            }
            Target::AuditLimit | Target::AuditBefore => {
                let q = match target {
                    Target::AuditLimit => query("limit", raw),
                    _ => query("before", raw),
                };
                let answer = h.as_admin("GET", &format!("/api/v1/admin/audit?{q}"), "");
                let ok = match target {
                    Target::AuditLimit => matches!(raw.parse::<usize>(), Ok(1..=1000)),
                    _ => id(raw).is_some(),
                };
                if !ok {
                    return refused(&answer, &["invalid_query"]);
                }
                let before = id(raw).filter(|_| matches!(target, Target::AuditBefore));
                got(
                    answer.0 == 200
                        && item_ids(&answer.1)
                            .iter()
                            .all(|&i| before.is_none_or(|b| i < b)),
                    &answer,
                )
            }
            Target::RoomsLimit => {
                let answer = h.as_guest("GET", &format!("/api/v1/rooms?{}", query("limit", raw)));
                match raw.parse::<usize>() {
                    Ok(1..=1000) => got(answer.0 == 200 && answer.1["rooms"].is_array(), &answer),
                    _ => refused(&answer, &["invalid_query"]),
                }
            }
            Target::MuteSeconds | Target::BanSeconds => {
                let (path, body) = match target {
                    Target::MuteSeconds => (
                        "/api/v1/admin/mutes",
                        format!(r#"{{"user":"someone","seconds":{raw}}}"#),
                    ),
                    _ => (
                        "/api/v1/admin/bans",
                        format!(r#"{{"ip":"198.51.100.7","seconds":{raw}}}"#),
                    ),
                };
                let answer = h.as_admin("POST", path, &body);
                match json::<u64>(raw) {
                    // Saturates at the end of time; never wraps into the past.
                    Some(1..) => got(
                        answer.0 == 201
                            && answer.1["until"]
                                .as_i64()
                                .is_some_and(|u| u > danmaku::danmaku::now_ms()),
                        &answer,
                    ),
                    _ => refused(&answer, &["invalid_field", "invalid_json"]),
                }
            }
            Target::SlowMode => {
                let answer = h.as_admin(
                    "PATCH",
                    "/api/v1/admin/rooms/slow",
                    &format!(r#"{{"slow_mode_s":{raw}}}"#),
                );
                match json::<u32>(raw) {
                    Some(s) => got(answer.0 == 200 && answer.1["slow_mode_s"] == s, &answer),
                    None => refused(&answer, &["invalid_field", "invalid_json"]),
                }
            }
            Target::SendSize | Target::SendVt => {
                let (body, ok) = match target {
                    Target::SendSize => (
                        format!(r#"{{"text":"x","size":{raw}}}"#),
                        json::<u16>(raw).is_some_and(|s| (12..=64).contains(&s)),
                    ),
                    _ => (
                        format!(r#"{{"text":"x","vt":{raw}}}"#),
                        json::<f64>(raw).is_some_and(|v| (0.0..=2_592_000.0).contains(&v)),
                    ),
                };
                let answer = h.as_admin("POST", "/api/v1/rooms/sink/danmaku", &body);
                if ok {
                    got(
                        answer.0 == 201 && answer.1["id"].as_u64().is_some(),
                        &answer,
                    )
                } else {
                    refused(&answer, &["invalid_field", "invalid_json"])
                }
            }
        }
    }

    /// `raw` as one path segment.
    fn urlencode(raw: &str) -> String {
        raw.bytes()
            .map(|b| match b {
                b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'.' | b'-' | b'_' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    /// Every target at every extreme, so that none is left to chance.
    #[test]
    fn integer_edges_at_every_extreme() {
        let mut failures = Vec::new();
        for target in TARGETS {
            for raw in EXTREMES {
                if let Err(e) = check(target, raw) {
                    failures.push(e);
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // Nothing went into the history room on the way.
        let (_, answer) = HARNESS.as_guest("GET", &format!("/api/v1/rooms/{ROOM}/danmaku"));
        assert_eq!(item_ids(&answer), [1, 2, 3]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Any number anywhere: the right answer or `400`.
        #[test]
        fn integer_edges_are_answered_or_refused_never_wrapped(
            target in proptest::sample::select(&TARGETS[..]),
            raw in extreme(),
        ) {
            if let Err(e) = check(target, &raw) {
                prop_assert!(false, "{}", e);
            }
        }
    }

    /// A 500 would have failed every check above; this pins that the harness
    /// itself reaches the store (a broken harness must not pass vacuously).
    #[test]
    fn the_harness_reads_the_real_store() {
        let (status, answer) =
            HARNESS.as_guest("GET", &format!("/api/v1/rooms/{ROOM}/danmaku?after=1"));
        assert_eq!(
            (status, item_ids(&answer)),
            (StatusCode::OK.as_u16(), vec![2, 3])
        );
    }
}

// ---------------------------------------------------------------------------
// The client behind a trusted proxy
// ---------------------------------------------------------------------------

/// What a client may write in a forwarding header before the proxy's own
/// hop: addresses (trusted ones too), junk, separators and quotes.
fn forged_hops() -> impl Strategy<Value = String> {
    let hop = prop_oneof![
        any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string()),
        Just("10.1.2.3".to_owned()),
        Just("127.0.0.1".to_owned()),
        any::<std::net::Ipv6Addr>().prop_map(|a| format!("[{a}]:80")),
        Just("unknown".to_owned()),
        "[ -~]{0,24}",
    ];
    vec(hop, 0..6).prop_map(|hops| hops.join(", "))
}

/// A client address that is not a trusted proxy (not 127.0.0.1, not 10/8).
fn untrusted_client() -> impl Strategy<Value = std::net::IpAddr> {
    any::<std::net::Ipv4Addr>()
        .prop_filter("not trusted", |a| a.octets()[0] != 10 && !a.is_loopback())
        .prop_map(std::net::IpAddr::V4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// A proxy that appends the client it saw (`X-Forwarded-For` on the
    /// same line, `Forwarded` on a line of its own) names that client,
    /// whatever the client wrote before; a peer that is not trusted is the
    /// client, whatever the headers say.
    #[test]
    fn the_proxys_own_hop_decides(
        forged in forged_hops(),
        client in untrusted_client(),
        port in any::<u16>(),
    ) {
        use axum::http::{HeaderMap, HeaderValue};
        let proxies = guard::TrustedProxies::new(vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ]);
        let peer = std::net::IpAddr::from([127, 0, 0, 1]);
        let mut xff = HeaderMap::new();
        let line = format!("{forged}, {client}:{port}");
        xff.insert("x-forwarded-for", HeaderValue::from_str(&line).unwrap());
        prop_assert_eq!(proxies.client(peer, &xff), client);

        let mut fwd = HeaderMap::new();
        fwd.append("forwarded", HeaderValue::from_str(&forged).unwrap());
        let hop = format!("for=\"{client}:{port}\";proto=https");
        fwd.append("forwarded", HeaderValue::from_str(&hop).unwrap());
        prop_assert_eq!(proxies.client(peer, &fwd), client);

        let stranger = std::net::IpAddr::from([192, 0, 2, 1]);
        prop_assert_eq!(proxies.client(stranger, &xff), stranger);
        prop_assert_eq!(proxies.client(stranger, &fwd), stranger);
    }
}

// ---------------------------------------------------------------------------
// bilibili XML and protobuf segments (protocol::bilibili_xml, ::segment)
//
// - Export then import gives back every danmaku's time, mode, size, colour
//   and text, whatever a send may hold; and whatever the text (any
//   characters at all), the export is well-formed XML the importer reads
//   whole, with no numeric character reference.
// - A protobuf segment decodes to the message encoded, and each element to
//   the fields of the danmaku it came from.
// ---------------------------------------------------------------------------

use danmaku::danmaku::Danmaku;
use danmaku::protocol::bilibili_xml::{self, ImportLimits, XmlWriter};
use danmaku::protocol::segment::{self, DanmakuElem, DmSegMobileReply};
use prost::Message as _;

/// Whether a stored text may hold `c` and XML can carry it: what a send
/// may hold (`check_text`), less U+FFFE and U+FFFF, which XML 1.0 cannot
/// carry and the writer drops.
fn storable_in_xml(c: char) -> bool {
    guard::filter::check_text(c.encode_utf8(&mut [0; 4])).is_ok()
        && !matches!(c, '\u{fffe}' | '\u{ffff}')
}

/// A text a send could have: 1 to 100 characters, not blank, and among
/// them XML's specials, emoji and CJK often enough.
fn storable_text() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        4 => any::<char>().prop_filter("storable", |&c| storable_in_xml(c)),
        1 => proptest::sample::select(vec!['&', '<', '>', '"', '\'', ';', '#', ' ', '弾', '😀']),
    ];
    vec(c, 1..=100)
        .prop_map(|cs| cs.into_iter().collect::<String>())
        .prop_filter("not blank", |s| !s.trim().is_empty())
}

fn mode() -> impl Strategy<Value = Mode> {
    proptest::sample::select(Mode::ALL.to_vec())
}

/// A stored danmaku, with `text` as given.
fn stored(text: impl Strategy<Value = String>) -> impl Strategy<Value = Danmaku> {
    (
        (1u64..=danmaku::danmaku::MAX_ID, "(?s).{0,20}", text, mode()),
        (0u32..=0xff_ff_ff, guard::SIZE_RANGE, 0i64..=i64::MAX),
        // Any video time a send may carry: the whole range, times with the
        // five decimals of bilibili's own files, both zeros and the
        // smallest positive f64 (hundreds of decimals).
        proptest::option::of(prop_oneof![
            0.0..=guard::MAX_VIDEO_TIME,
            (0u64..=(guard::MAX_VIDEO_TIME as u64) * 100_000).prop_map(|k| k as f64 / 100_000.0),
            Just(-0.0),
            Just(0.0),
            Just(f64::from_bits(1)),
        ]),
    )
        .prop_map(|((id, user, text, mode), (color, size, ts), vt)| Danmaku {
            id,
            room: "room".into(),
            user,
            name: "name".into(),
            text,
            mode,
            color: Color(color),
            size,
            ts,
            vt,
            priority: false,
        })
}

fn export(items: &[Danmaku]) -> Vec<u8> {
    let writer = XmlWriter::new(items.len() as u64);
    let mut out = writer.header("room");
    for d in items {
        out.extend(writer.d(d));
    }
    out.extend(writer.footer());
    out
}

const IMPORT: ImportLimits = ImportLimits {
    max_bytes: 16 << 20,
    max_items: 1000,
    max_text_chars: 100,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// What the export writes, the import reads back: time exactly (0 for
    /// none), mode, size, colour and text, the second it was sent and the
    /// sender's hash.
    #[test]
    fn xml_round_trips(items in vec(stored(storable_text()), 0..20)) {
        let bytes = export(&items);
        prop_assert!(!bytes.windows(2).any(|w| w == b"&#"));
        let back = bilibili_xml::parse(&bytes, &IMPORT).unwrap();
        prop_assert_eq!(back.dropped, vec![]);
        prop_assert_eq!(back.items.len(), items.len());
        for (d, b) in items.iter().zip(&back.items) {
            prop_assert_eq!(&b.text, &d.text);
            prop_assert_eq!(b.mode, d.mode);
            prop_assert_eq!(b.size, d.size);
            prop_assert_eq!(b.color, d.color);
            // Exactly the same number (a -0 comes back as the 0 it equals).
            prop_assert_eq!(b.vt, Some(d.vt.unwrap_or(0.0)));
            prop_assert_eq!(b.ctime_ms, Some(d.ts.div_euclid(1000) * 1000));
            prop_assert_eq!(b.user_hash.clone(), Some(danmaku::protocol::bilibili::member_hash(&d.user)));
        }
    }

    /// Any text at all, control characters and noncharacters included,
    /// exports as well-formed XML that the importer reads whole: every
    /// `<d>` is either read back or dropped for its text, never a refusal
    /// of the file.
    #[test]
    fn any_text_exports_as_well_formed_xml(
        items in vec(stored("(?s).{0,120}"), 0..10),
        room in "(?s).{0,20}",
    ) {
        let writer = XmlWriter::new(0);
        let mut bytes = writer.header(&room);
        for d in &items {
            bytes.extend(writer.d(d));
        }
        bytes.extend(writer.footer());
        prop_assert!(!bytes.windows(2).any(|w| w == b"&#"));
        let back = bilibili_xml::parse(&bytes, &IMPORT);
        prop_assert!(back.is_ok(), "{:?}", back);
        let back = back.unwrap();
        prop_assert_eq!(back.items.len() + back.dropped.len(), items.len());
    }

    /// A segment decodes to exactly the message encoded.
    #[test]
    fn segment_round_trips(elems in vec(elem(), 0..20)) {
        let reply = DmSegMobileReply { elems };
        let bytes = reply.encode_to_vec();
        prop_assert_eq!(DmSegMobileReply::decode(bytes.as_slice()).unwrap(), reply);
    }

    /// Each element of an encoded segment carries its danmaku's id, time in
    /// milliseconds, mode, size, colour, text and second sent.
    #[test]
    fn segment_elements_carry_their_danmaku(items in vec(stored(storable_text()), 0..20)) {
        let reply = DmSegMobileReply::decode(segment::encode_segment(&items).as_slice()).unwrap();
        prop_assert_eq!(reply.elems.len(), items.len());
        for (d, e) in items.iter().zip(&reply.elems) {
            prop_assert_eq!(e.id, d.id as i64);
            prop_assert_eq!(&e.id_str, &d.id.to_string());
            let ms = d.vt.map_or(0.0, |vt| (vt * 1000.0).round());
            prop_assert_eq!(e.progress, ms.min(f64::from(i32::MAX)) as i32);
            prop_assert_eq!(e.mode, i32::from(danmaku::protocol::bilibili::mode_code(d.mode)));
            prop_assert_eq!(e.fontsize, i32::from(d.size));
            prop_assert_eq!(e.color, d.color.0);
            prop_assert_eq!(&e.content, &d.text);
            prop_assert_eq!(e.ctime, d.ts / 1000);
            prop_assert_eq!(&e.mid_hash, &danmaku::protocol::bilibili::member_hash(&d.user));
        }
    }
}

/// Any `DanmakuElem`, every field arbitrary.
fn elem() -> impl Strategy<Value = DanmakuElem> {
    (
        (
            any::<i64>(),
            any::<i32>(),
            any::<i32>(),
            any::<i32>(),
            any::<u32>(),
        ),
        (
            "(?s).{0,12}",
            "(?s).{0,40}",
            any::<i64>(),
            any::<i32>(),
            "(?s).{0,8}",
        ),
        (any::<i32>(), "[0-9]{0,19}", any::<i32>()),
    )
        .prop_map(
            |(
                (id, progress, mode, fontsize, color),
                (mid_hash, content, ctime, weight, action),
                (pool, id_str, attr),
            )| DanmakuElem {
                id,
                progress,
                mode,
                fontsize,
                color,
                mid_hash,
                content,
                ctime,
                weight,
                action,
                pool,
                id_str,
                attr,
            },
        )
}

// ---------------------------------------------------------------------------
// Bilibili live protocol (protocol::bilibili)
// ---------------------------------------------------------------------------
//
// - Packets: any packets (any version, operation, sequence, body within the
//   limit), concatenated and split at arbitrary points, decode to exactly
//   themselves; a packet over the limit is refused, after the ones before it.
// - Batches: any commands, in each version, unpack to one version-0 op-5
//   packet per command; versions 2 and 3 are one packet on the wire.
// - The decoder on arbitrary bytes: never panics, nothing decoded is over
//   the limit, and where the bytes are split changes nothing.
// - Auth bodies: any combination of the fields real clients send, as
//   numbers or strings, parses to what it says; arbitrary text never panics.
// - DANMU_MSG: valid JSON carrying the text and name for any danmaku.

use danmaku::protocol::bilibili::{self, Auth, AuthError, Packet, PacketError, Ver};

fn bili_packet(max_body: usize) -> impl Strategy<Value = Packet> {
    (
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
        vec(any::<u8>(), 0..=max_body),
    )
        .prop_map(|(ver, op, seq, body)| Packet {
            ver,
            op,
            seq,
            body: body.into(),
        })
}

/// Feeds `bytes` to a bilibili decoder in chunks of the given sizes
/// (cycled); returns the packets and whether part of a packet was left
/// buffered, or the first error.
fn bili_decode_chunked(
    max: usize,
    bytes: &[u8],
    chunks: &[usize],
) -> Result<(Vec<Packet>, bool), PacketError> {
    let mut decoder = bilibili::Decoder::new(max);
    let mut packets = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        let mut piece = &rest[..n];
        rest = &rest[n..];
        loop {
            match decoder.decode(&mut piece) {
                Ok(Some(p)) => {
                    assert!(bilibili::HEADER_LEN + p.body.len() <= max);
                    packets.push(p);
                }
                Ok(None) => break,
                Err(e) => return Err(e),
            }
        }
        assert!(piece.is_empty(), "Ok(None) only once the input is used up");
    }
    Ok((packets, decoder.is_mid_packet()))
}

fn encode_all(packets: &[Packet]) -> Vec<u8> {
    packets.iter().flat_map(|p| p.encode().to_vec()).collect()
}

fn any_ver() -> impl Strategy<Value = Ver> {
    prop_oneof![
        Just(Ver::Plain),
        Just(Ver::Control),
        Just(Ver::Zlib),
        Just(Ver::Brotli)
    ]
}

/// A whole number as real clients write it (a JSON number) or as a string.
fn number_json(n: u64, as_string: bool) -> serde_json::Value {
    if as_string {
        serde_json::Value::String(n.to_string())
    } else {
        n.into()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Packets within the limit, split anywhere, decode to themselves.
    #[test]
    fn bili_packets_round_trip(
        packets in vec(bili_packet(600), 0..8),
        chunks in chunks(),
    ) {
        let bytes = encode_all(&packets);
        let decoded = bili_decode_chunked(bilibili::HEADER_LEN + 600, &bytes, &chunks);
        prop_assert_eq!(decoded, Ok((packets, false)));
    }

    /// The first packet over the limit is refused (as too big, with its
    /// length) however the bytes arrive; the ones before it are decoded.
    #[test]
    fn bili_packets_over_the_limit_are_refused(
        packets in vec(bili_packet(300), 1..6),
        max in 0usize..=320,
        chunks in chunks(),
    ) {
        let bytes = encode_all(&packets);
        let decoded = bili_decode_chunked(max, &bytes, &chunks);
        let fit = packets
            .iter()
            .take_while(|p| bilibili::HEADER_LEN + p.body.len() <= max)
            .count();
        match packets.get(fit) {
            None => prop_assert_eq!(decoded, Ok((packets, false))),
            Some(big) => {
                let len = (bilibili::HEADER_LEN + big.body.len()) as u32;
                prop_assert_eq!(decoded, Err(PacketError::TooBig { len, max }));
            }
        }
    }

    /// Any commands, in any version, come back as one plain message packet
    /// each; a compressed batch is one packet of its version.
    #[test]
    fn bili_batches_round_trip(
        commands in vec(vec(any::<u8>(), 0..200), 0..30),
        ver in any_ver(),
    ) {
        let bytes = bilibili::encode_batch(ver, &commands);
        let expected: Vec<Packet> = commands
            .iter()
            .map(|c| Packet { ver: 0, op: 5, seq: 0, body: c.clone().into() })
            .collect();
        prop_assert_eq!(bilibili::unpack(&bytes), Ok(expected.clone()));
        let (outer, mid) = bili_decode_chunked(usize::MAX, &bytes, &[usize::MAX]).unwrap();
        prop_assert!(!mid);
        match ver {
            _ if commands.is_empty() => prop_assert!(bytes.is_empty()),
            Ver::Zlib | Ver::Brotli => {
                prop_assert_eq!(outer.len(), 1);
                prop_assert_eq!((outer[0].ver, outer[0].op), (ver.code(), 5));
            }
            Ver::Plain | Ver::Control => prop_assert_eq!(outer, expected),
        }
    }

    /// Arbitrary bytes: no panic, and the split points change nothing.
    #[test]
    fn bili_decoder_takes_any_bytes(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..400),
            // Mostly plausible headers, so the body paths are reached.
            (vec(bili_packet(100), 0..4), vec(any::<u8>(), 0..40), any::<Index>())
                .prop_map(|(ps, junk, at)| {
                    let mut b = encode_all(&ps);
                    let at = at.index(b.len() + 1);
                    b.splice(at..at, junk);
                    b
                }),
        ],
        max in 0usize..=200,
        chunks in chunks(),
    ) {
        let whole = bili_decode_chunked(max, &bytes, &[usize::MAX]);
        let split = bili_decode_chunked(max, &bytes, &chunks);
        prop_assert_eq!(whole, split);
        // And unpack, which also inflates, takes them without a panic.
        let _ = bilibili::unpack(&bytes);
    }

    /// An auth body of the fields real clients send parses to its values,
    /// numbers written as numbers or as strings alike.
    #[test]
    fn bili_auth_reads_its_fields(
        roomid in any::<u64>(),
        uid in proptest::option::of(any::<u64>()),
        protover in proptest::option::of(0u64..6),
        key in proptest::option::of(".{0,40}"),
        strings in any::<(bool, bool, bool)>(),
        extra in proptest::option::of(("[a-z]{1,8}", ".{0,10}")),
    ) {
        let mut body = serde_json::Map::new();
        body.insert("roomid".into(), number_json(roomid, strings.0));
        if let Some(uid) = uid {
            body.insert("uid".into(), number_json(uid, strings.1));
        }
        if let Some(p) = protover {
            body.insert("protover".into(), number_json(p, strings.2));
        }
        if let Some(k) = &key {
            body.insert("key".into(), k.clone().into());
        }
        if let Some((name, value)) = extra {
            if !["roomid", "uid", "protover", "key"].contains(&name.as_str()) {
                body.insert(name, value.into());
            }
        }
        let parsed = Auth::parse(serde_json::to_string(&body).unwrap().as_bytes());
        match protover.map(|p| Ver::from_code(p as u16)) {
            Some(None) => prop_assert_eq!(parsed, Err(AuthError::BadProtover)),
            ver => prop_assert_eq!(parsed, Ok(Auth {
                roomid,
                uid: uid.unwrap_or(0),
                protover: ver.flatten().unwrap_or(Ver::Plain),
                key,
            })),
        }
    }

    /// Arbitrary text as an auth body never panics.
    #[test]
    fn bili_auth_takes_any_text(body in prop_oneof![
        ".{0,80}",
        r#"\{"roomid":[-+0-9.e"a-z]{0,24}(,"(uid|protover|key)":[-+0-9.e"a-z\[\]{}]{0,12}){0,3}\}"#,
    ]) {
        let _ = Auth::parse(body.as_bytes());
    }

    /// A DANMU_MSG is valid JSON carrying the danmaku's text and name,
    /// whatever they hold.
    #[test]
    fn bili_danmu_msg_is_json_for_any_danmaku(
        text in ".{0,60}",
        name in ".{0,20}",
        user in ".{0,20}",
        id in any::<u64>(),
        ts in any::<i64>(),
        color in any::<u32>(),
        size in any::<u16>(),
        mode in proptest::sample::select(Mode::ALL.to_vec()),
    ) {
        let d = danmaku::danmaku::Danmaku {
            id, room: "r".into(), user: user.clone(), name: name.clone(), text: text.clone(),
            mode, color: Color(color), size, ts, vt: None, priority: false,
        };
        let v: serde_json::Value = serde_json::from_slice(&bilibili::danmu_msg(&d)).unwrap();
        prop_assert_eq!(&v["info"][1], &serde_json::Value::from(text));
        prop_assert_eq!(&v["info"][2][1], &serde_json::Value::from(name));
        prop_assert_eq!(&v["info"][2][0], &serde_json::Value::from(bilibili::user_id(&user)));
        prop_assert_eq!(&v["info"][0][3], &serde_json::Value::from(color & 0xff_ff_ff));
        prop_assert_eq!(&v["info"][0][5], &serde_json::Value::from(id));
    }
}
