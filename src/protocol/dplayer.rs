//! DPlayer's danmaku backend API, version 3, as DPlayer 1.27 speaks it.
//!
//! DPlayer reads `GET {api}v3/?id=ID[&max=N]` and posts a new danmaku as
//! JSON to `{api}v3/`. Its default backend (`api.js`) treats an answer
//! whose `code` is not 0 as an error and shows its `msg`; a GET's `data` is
//! a list of `[time, type, color, author, text]` arrays.
//!
//! DPlayer 1.27 draws a loaded danmaku by assigning its text to an
//! element's `innerHTML` (`danmaku.js`, `draw`), unescaped: a danmaku
//! whose text is markup would become markup in every viewer's page. So
//! [`read_answer`] HTML-escapes the text (`& < > " '`), and the browser
//! turns the entities back into the characters the sender typed. DPlayer
//! does the same to a danmaku it draws as its user sends it. The `author`
//! is not drawn, and is sent as it is.
//!
//! The answers are built here; their HTTP status is the route's choice.
//! Note that DPlayer's backend uses axios, which treats any status outside
//! 2xx as a failed request: DPlayer then shows its own generic message,
//! not our `msg`.

use serde::Serialize;
use serde_json::Value;

use crate::danmaku::{Color, Danmaku, Mode};
use crate::guard::SendRequest;

/// DPlayer's type for one of our modes: 0 right to left, 1 top, 2 bottom.
/// DPlayer has no left-to-right danmaku, so reverse scrolls the usual way.
pub fn dplayer_type(mode: Mode) -> u8 {
    match mode {
        Mode::Scroll | Mode::Reverse => 0,
        Mode::Top => 1,
        Mode::Bottom => 2,
    }
}

/// `text` with `& < > " '` replaced by HTML character references, so that
/// inserted as HTML it reads as the same text and never as markup.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One danmaku as DPlayer lists it: `[time, type, color, author, text]`.
#[derive(Serialize)]
struct Item<'a>(f64, u8, u32, &'a str, String);

impl<'a> From<&'a Danmaku> for Item<'a> {
    fn from(d: &'a Danmaku) -> Item<'a> {
        let author = if d.name.is_empty() { &d.user } else { &d.name };
        Item(
            d.vt.filter(|vt| vt.is_finite()).unwrap_or(0.0),
            dplayer_type(d.mode),
            d.color.0 & 0xff_ff_ff,
            author,
            html_escape(&d.text),
        )
    }
}

/// A successful answer: `{"code":0,"data":…}`.
#[derive(Serialize)]
struct Success<T> {
    code: u8,
    data: T,
}

fn success(data: impl Serialize) -> Vec<u8> {
    serde_json::to_vec(&Success { code: 0, data }).expect("an answer always serialises")
}

/// The answer to a GET: `{"code":0,"data":[[time, type, color, author,
/// text], …]}` with `items` in the order given. A danmaku without a video
/// time is at 0.
pub fn read_answer(items: &[Danmaku]) -> Vec<u8> {
    success(items.iter().map(Item::from).collect::<Vec<_>>())
}

/// The answer to a POST that was taken: `{"code":0,"data":[…]}` with the
/// danmaku as a GET would list it, or `"data":null` when it was held for
/// moderation. DPlayer only checks the `code`.
pub fn post_answer(stored: Option<&Danmaku>) -> Vec<u8> {
    success(stored.map(Item::from))
}

/// The answer to a refused request: `{"code":1,"msg":"…"}` (DPlayer shows
/// the `msg`), with `error`, the refusal as other routes give it, beside.
pub fn error_answer(message: &str, error: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "code": 1, "msg": message, "error": error }))
        .expect("a JSON value always serialises")
}

/// A danmaku as DPlayer posts it, checked for shape: what the guard then
/// checks like any send.
#[derive(Debug)]
pub struct DplayerPost {
    /// The room: DPlayer's `id`.
    pub room: String,
    /// DPlayer's `token`, which the route reads like a bilibili client's
    /// `key`: a JWT is verified, anything else makes a guest.
    pub token: Option<String>,
    /// The send: `text`; `type` as the mode; `color` as `#rrggbb`; `time`
    /// as the video time; `author` as the name.
    pub send: SendRequest,
}

/// Why a DPlayer POST was refused, naming the field.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PostError {
    /// The body is not a JSON object.
    #[error("the body is not a JSON object: {0}")]
    Json(String),
    /// A field is missing or has the wrong type or value.
    #[error("{field} {problem}")]
    Field {
        /// The field, as DPlayer names it.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

fn field(field: &'static str, problem: &'static str) -> PostError {
    PostError::Field { field, problem }
}

/// Reads DPlayer's POST body: `{"id", "author", "time", "text", "color",
/// "type", "token"}`. DPlayer 1.27 sends `color` and `type` as integers
/// and `time` as the video's current time; older versions sent the colour
/// as `#rrggbb` or `#rgb` and the type as `right`, `top` or `bottom`, and
/// both are read. Only `id` and `text` are required; a missing or `null`
/// optional field takes the send's default. Unknown fields are ignored.
pub fn parse_post(body: &[u8]) -> Result<DplayerPost, PostError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| PostError::Json(e.to_string()))?;
    let Value::Object(mut map) = value else {
        return Err(PostError::Json("expected an object".into()));
    };
    let mut take = |name: &str| map.remove(name).filter(|v| !v.is_null());
    let room = match take("id") {
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        None => return Err(field("id", "is required")),
        Some(_) => return Err(field("id", "must be a string or a non-negative integer")),
    };
    let text = match take("text") {
        Some(Value::String(s)) => s,
        None => return Err(field("text", "is required")),
        Some(_) => return Err(field("text", "must be a string")),
    };
    let vt = match take("time") {
        None => None,
        Some(v) => Some(
            v.as_f64()
                .ok_or(field("time", "must be a number of seconds"))?,
        ),
    };
    let color = match take("color") {
        None => None,
        Some(v) => Some(parse_color(&v).ok_or(field(
            "color",
            "must be an integer from 0 to 16777215, or #rrggbb",
        ))?),
    };
    let mode = match take("type") {
        None => None,
        Some(v) => Some(parse_type(&v).ok_or(field(
            "type",
            "must be 0 (right to left), 1 (top) or 2 (bottom)",
        ))?),
    };
    let name = optional_string(take("author"), "author")?;
    let token = optional_string(take("token"), "token")?;
    Ok(DplayerPost {
        room,
        token,
        send: SendRequest {
            text,
            mode: mode.map(|m| m.as_str().to_owned()),
            color: color.map(|c| c.to_string()),
            size: None,
            vt,
            name,
        },
    })
}

fn optional_string(v: Option<Value>, name: &'static str) -> Result<Option<String>, PostError> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(field(name, "must be a string")),
    }
}

/// A colour as DPlayer sends it: an integer, or (older versions) `#rrggbb`
/// or `#rgb`.
fn parse_color(v: &Value) -> Option<Color> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .filter(|&c| c <= 0xff_ff_ff)
            .and_then(|c| u32::try_from(c).ok())
            .map(Color),
        Value::String(s) => {
            let hex = s.strip_prefix('#')?;
            if hex.len() == 3 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                let doubled: String = hex.chars().flat_map(|c| [c, c]).collect();
                u32::from_str_radix(&doubled, 16).ok().map(Color)
            } else {
                Color::parse(s)
            }
        }
        _ => None,
    }
}

/// A type as DPlayer sends it: 0, 1 or 2, or (older versions) `right`,
/// `top` or `bottom`.
fn parse_type(v: &Value) -> Option<Mode> {
    match v {
        Value::Number(n) => match n.as_u64()? {
            0 => Some(Mode::Scroll),
            1 => Some(Mode::Top),
            2 => Some(Mode::Bottom),
            _ => None,
        },
        Value::String(s) => match s.as_str() {
            "right" => Some(Mode::Scroll),
            "top" => Some(Mode::Top),
            "bottom" => Some(Mode::Bottom),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn danmaku(text: &str, mode: Mode, vt: Option<f64>) -> Danmaku {
        Danmaku {
            id: 3,
            room: "r".into(),
            user: "u1".into(),
            name: "Alice".into(),
            text: text.into(),
            mode,
            color: Color(0xff0000),
            size: 25,
            ts: 1,
            vt,
            priority: false,
        }
    }

    #[test]
    fn lists_danmaku_as_dplayer_reads_them() {
        let items = [
            danmaku("a", Mode::Scroll, Some(1.5)),
            danmaku("b", Mode::Top, None),
            danmaku("c", Mode::Bottom, Some(0.25)),
            danmaku("d", Mode::Reverse, Some(2.0)),
        ];
        let v: Value = serde_json::from_slice(&read_answer(&items)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": 0, "data": [
                [1.5, 0, 16711680, "Alice", "a"],
                [0.0, 1, 16711680, "Alice", "b"],
                [0.25, 2, 16711680, "Alice", "c"],
                [2.0, 0, 16711680, "Alice", "d"],
            ]})
        );
        let empty: Value = serde_json::from_slice(&read_answer(&[])).unwrap();
        assert_eq!(empty, serde_json::json!({"code": 0, "data": []}));
    }

    #[test]
    fn text_can_never_become_markup() {
        let d = danmaku(
            "<img src=x onerror=alert(1)> & \"q\" 'a'",
            Mode::Scroll,
            None,
        );
        let v: Value = serde_json::from_slice(&read_answer(&[d])).unwrap();
        let text = v["data"][0][4].as_str().unwrap();
        assert_eq!(
            text,
            "&lt;img src=x onerror=alert(1)&gt; &amp; &quot;q&quot; &#39;a&#39;"
        );
        assert!(!text.contains(['<', '>', '"', '\'']));
        assert_eq!(html_escape("plain 中文 😀"), "plain 中文 😀");
    }

    #[test]
    fn post_and_error_answers() {
        let d = danmaku("x", Mode::Top, Some(4.0));
        let ok: Value = serde_json::from_slice(&post_answer(Some(&d))).unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"code": 0, "data": [4.0, 1, 16711680, "Alice", "x"]})
        );
        let held: Value = serde_json::from_slice(&post_answer(None)).unwrap();
        assert_eq!(held, serde_json::json!({"code": 0, "data": null}));
        let err: Value =
            serde_json::from_slice(&error_answer("text is \"empty\"", &"details")).unwrap();
        assert_eq!(
            err,
            serde_json::json!({"code": 1, "msg": "text is \"empty\"", "error": "details"})
        );
    }

    #[test]
    fn reads_what_dplayer_posts() {
        // DPlayer 1.27's own body (JSON.stringify drops an undefined token).
        let body = br#"{"id":"lobby","author":"DIYgod","time":12.345,"text":"hi","color":16646914,"type":1}"#;
        let post = parse_post(body).unwrap();
        assert_eq!(post.room, "lobby");
        assert_eq!(post.token, None);
        assert_eq!(post.send.text, "hi");
        assert_eq!(post.send.mode.as_deref(), Some("top"));
        assert_eq!(post.send.color.as_deref(), Some("#fe0302"));
        assert_eq!(post.send.vt, Some(12.345));
        assert_eq!(post.send.name.as_deref(), Some("DIYgod"));
        assert_eq!(post.send.size, None);

        let older =
            br##"{"id":42,"text":"x","color":"#fff","type":"bottom","token":"t","time":0}"##;
        let post = parse_post(older).unwrap();
        assert_eq!(post.room, "42");
        assert_eq!(post.token.as_deref(), Some("t"));
        assert_eq!(post.send.mode.as_deref(), Some("bottom"));
        assert_eq!(post.send.color.as_deref(), Some("#ffffff"));
        assert_eq!(post.send.vt, Some(0.0));

        let bare = parse_post(br#"{"id":"r","text":"x","color":null,"unknown":[1]}"#).unwrap();
        assert_eq!(
            (bare.send.mode, bare.send.color, bare.send.vt),
            (None, None, None)
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: [(&[u8], &str); 14] = [
            (b"not json", "the body is not a JSON object"),
            (b"[1,2]", "the body is not a JSON object"),
            (br#"{"text":"x"}"#, "id is required"),
            (br#"{"id":true,"text":"x"}"#, "id must be"),
            (br#"{"id":-1,"text":"x"}"#, "id must be"),
            (br#"{"id":"r"}"#, "text is required"),
            (br#"{"id":"r","text":5}"#, "text must be a string"),
            (br#"{"id":"r","text":"x","time":"soon"}"#, "time must be"),
            (
                br#"{"id":"r","text":"x","color":16777216}"#,
                "color must be",
            ),
            (br#"{"id":"r","text":"x","color":-1}"#, "color must be"),
            (br#"{"id":"r","text":"x","color":"red"}"#, "color must be"),
            (br#"{"id":"r","text":"x","type":3}"#, "type must be"),
            (br#"{"id":"r","text":"x","type":"left"}"#, "type must be"),
            (
                br#"{"id":"r","text":"x","author":{}}"#,
                "author must be a string",
            ),
        ];
        for (body, expected) in cases {
            let err = parse_post(body).unwrap_err().to_string();
            assert!(
                err.starts_with(expected),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            parse_post(br#"{"id":"r","text":"x","token":1}"#).unwrap_err(),
            PostError::Field {
                field: "token",
                problem: "must be a string"
            }
        );
    }
}
