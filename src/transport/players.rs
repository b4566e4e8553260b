//! The routes video players and their tools speak (docs/players.md):
//! DPlayer's v3 backend, bilibili XML export and import, bilibili's
//! protobuf segments, and the CORS answers that let a player on another
//! origin read them. [`router`](super::router) mounts them; the formats
//! themselves are the pure codecs of `protocol/`.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::body::read_body;
use super::client::ClientAddr;
use super::params::{Query, RoomName};
use super::App;
use crate::danmaku::Danmaku;
use crate::error::{ApiError, ErrorCode};
use crate::guard::{check_room, Admin};
use crate::node::{Node, Sent};
use crate::protocol::bilibili_xml::{self, Dropped, ImportLimits, Imported, XmlWriter};
use crate::protocol::{dplayer, segment};

/// The rows one store read of an XML export takes: one body chunk each.
const EXPORT_PAGE: usize = 1000;

/// The most entries (good or bad) one import may hold. At 64 MiB a file
/// of the shortest `<d>` lines could hold about three million; a million
/// bounds the memory of the parsed import (a few hundred bytes each).
pub const MAX_IMPORT_ITEMS: usize = 1_000_000;

/// The dropped entries an import answer lists (it counts them all).
const DROPPED_LISTED: usize = 100;

/// The user id (and name) imported danmaku are stored under: the file's
/// senders are not users of this server (a bilibili user hash names no
/// one here), and one known id lets a moderator find every import.
pub const IMPORT_USER: &str = "import";

// ---------------------------------------------------------------- DPlayer

/// A DPlayer answer: always `200`, since DPlayer's axios backend turns
/// any other status into its own generic message; a refusal is `code` 1
/// with `msg` `"<our code>: <message>"` and our usual `error` object
/// beside it (and `Retry-After` when it has one).
fn dplayer_answer(result: Result<Vec<u8>, ApiError>) -> Response {
    let json = [(header::CONTENT_TYPE, "application/json")];
    match result {
        Ok(body) => (json, body).into_response(),
        Err(e) => {
            let msg = format!("{}: {}", e.code.as_str(), e.message);
            let mut response = (json, dplayer::error_answer(&msg, &e)).into_response();
            if let Some(seconds) = e.retry_after_s {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        }
    }
}

/// `GET /dplayer/v3/`: DPlayer's query. `max` is lenient because DPlayer
/// sends `max=undefined` when its `maximum` option is not set.
#[derive(Debug, Deserialize)]
pub(super) struct DplayerQuery {
    id: Option<String>,
    max: Option<String>,
}

/// `GET /dplayer/v3/?id=ROOM[&max=N]`: the room's newest `N` danmaku
/// (default and at most `limits.max_history`; a live room wants the
/// newest), in id order, as DPlayer lists them, text HTML-escaped.
pub(super) async fn dplayer_read(
    State(app): State<App>,
    query: Result<Query<DplayerQuery>, ApiError>,
) -> Response {
    let result = async {
        let Query(q) = query?;
        let room = q
            .id
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidQuery, "id (the room) is required"))?;
        check_room(&room)?;
        let most = app.node.config.limits.max_history;
        let max = q
            .max
            .and_then(|m| m.parse::<usize>().ok())
            .filter(|&m| m > 0)
            .map_or(most, |m| m.min(most));
        let items = app.node.newest(&room, max).await?;
        Ok::<_, ApiError>(dplayer::read_answer(&items))
    }
    .await;
    dplayer_answer(result.inspect_err(|e| app.node.metrics.reject(e.code)))
}

/// `POST /dplayer/v3/`: DPlayer's JSON, stored through the guard like any
/// send. The sender is the body's `token` by the key rule
/// ([`Node::identify_key`]); without one, the request's bearer token, or
/// a guest.
pub(super) async fn dplayer_send(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let count = |e: &ApiError| app.node.metrics.reject(e.code);
    let result = async {
        let bytes = read_body(body, app.node.config.limits.max_body_bytes)
            .await
            .inspect_err(count)?;
        let post = dplayer::parse_post(&bytes)
            .map_err(|e| {
                let code = match e {
                    dplayer::PostError::Json(_) => ErrorCode::InvalidJson,
                    dplayer::PostError::Field { .. } => ErrorCode::InvalidField,
                };
                ApiError::new(code, e.to_string())
            })
            .inspect_err(count)?;
        let sender = match post.token.as_deref() {
            Some(token) => app.node.identify_key(Some(token), client)?,
            None => super::caller::identify(&app, None, &headers, client)?,
        };
        match app.node.send(&post.room, &sender, post.send).await? {
            Sent::Stored(d) => Ok(dplayer::post_answer(Some(&d))),
            Sent::Held(_) => Ok(dplayer::post_answer(None)),
        }
    }
    .await;
    dplayer_answer(result)
}

// ------------------------------------------------------------ XML export

/// Where an export stream is.
enum Export {
    /// The header is next.
    Start,
    /// Rows after this id, up to the room's newest id at the start.
    Rows { after: u64 },
    /// The footer has been written.
    Done,
}

/// `GET /api/v1/rooms/{room}/danmaku.xml`: the room's history as bilibili
/// XML, in id order, streamed from the store a page at a time, so that
/// any room exports in constant memory. It holds the danmaku up to the
/// room's newest id when the request came. A store error mid-stream is
/// logged and aborts the body: the client sees a failed, truncated
/// download rather than a file that looks complete.
pub(super) async fn export_xml(State(app): State<App>, RoomName(room): RoomName) -> Response {
    let upto = match app.node.last_id(&room).await {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let writer = XmlWriter::new(upto);
    let node = app.node.clone();
    let stream = futures_util::stream::unfold(Export::Start, move |state| {
        let (node, room) = (node.clone(), room.clone());
        async move { export_step(&node, &room, writer, upto, state).await }
    });
    (
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// The next chunk of an export, and where it is then.
async fn export_step(
    node: &Arc<Node>,
    room: &str,
    writer: XmlWriter,
    upto: u64,
    state: Export,
) -> Option<(Result<Bytes, ApiError>, Export)> {
    let after = match state {
        Export::Done => return None,
        Export::Start => return Some((Ok(writer.header(room).into()), Export::Rows { after: 0 })),
        Export::Rows { after } if after >= upto => {
            return Some((Ok(writer.footer().into()), Export::Done))
        }
        Export::Rows { after } => after,
    };
    match node.history_after(room, after, EXPORT_PAGE).await {
        Ok(page) => {
            let rows: Vec<&Danmaku> = page.iter().take_while(|d| d.id <= upto).collect();
            // A short page is the end of the room: nothing newer is exported.
            let next = match rows.last() {
                Some(last) if page.len() == EXPORT_PAGE => last.id,
                _ => upto,
            };
            let mut chunk = Vec::with_capacity(rows.len() * 96);
            for d in rows {
                chunk.extend_from_slice(&writer.d(d));
            }
            Some((Ok(chunk.into()), Export::Rows { after: next }))
        }
        Err(e) => {
            tracing::error!(room, after, error = %e.message, "XML export cut short by the store");
            Some((Err(e), Export::Done))
        }
    }
}

// ------------------------------------------------------------ import

/// The answer to an import.
#[derive(Serialize)]
struct ImportReport {
    room: String,
    imported: usize,
    first_id: Option<u64>,
    last_id: Option<u64>,
    dropped: usize,
    dropped_lines: Vec<DroppedLine>,
}

/// One entry an import left out, as the answer lists it.
#[derive(Serialize)]
struct DroppedLine {
    line: usize,
    reason: String,
}

impl From<&Dropped> for DroppedLine {
    fn from(d: &Dropped) -> DroppedLine {
        DroppedLine {
            line: d.line,
            reason: d.reason.to_string(),
        }
    }
}

/// The importers, by the body's `Content-Type`.
type Parser = fn(&[u8], &ImportLimits) -> Result<Imported, bilibili_xml::ImportError>;

/// The importer for a `Content-Type` (its parameters ignored):
/// `application/xml` or `text/xml` for bilibili XML,
/// `application/x-ndjson` for our JSON lines; anything else is `415`.
fn importer(headers: &HeaderMap) -> Result<Parser, ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = given.split(';').next().unwrap_or("").trim();
    match essence.to_ascii_lowercase().as_str() {
        "application/xml" | "text/xml" => Ok(bilibili_xml::parse),
        "application/x-ndjson" => Ok(bilibili_xml::parse_ndjson),
        _ => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "Content-Type {given:?} is not imported: send application/xml (bilibili XML) \
                 or application/x-ndjson (JSON lines)"
            ),
        )),
    }
}

/// `POST /api/v1/rooms/{room}/import` (admins): loads a bilibili XML or
/// JSON lines file into the room. A file refused whole is `400
/// invalid_file` and stores nothing; bad entries of a good file are
/// dropped and reported. Accepted danmaku are stored in the file's
/// order under new ids, as user [`IMPORT_USER`], and reach viewers like
/// any committed ones; `201` with the counts.
pub(super) async fn import(
    State(app): State<App>,
    admin: Admin,
    RoomName(room): RoomName,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let parse = importer(&headers)?;
        let limits = &app.node.config.limits;
        let limits = ImportLimits {
            max_bytes: limits.max_import_bytes,
            max_items: MAX_IMPORT_ITEMS,
            max_text_chars: limits.max_text_chars,
        };
        let bytes = read_body(body, limits.max_bytes).await?;
        // Tens of megabytes of parsing: off the async workers.
        let imported = tokio::task::spawn_blocking(move || parse(&bytes, &limits))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| ApiError::new(ErrorCode::InvalidFile, e.to_string()))?;
        let news = imported
            .items
            .into_iter()
            .map(|item| item.into_new(&room, IMPORT_USER, IMPORT_USER))
            .collect();
        let dropped = imported.dropped.len();
        // On a task of its own: a client that hangs up does not cut an
        // import off between two chunks (it runs to its end, and is
        // audited).
        let node = app.node.clone();
        let (admin, into) = (admin.clone(), room.clone());
        let stored = tokio::spawn(async move { node.import(&admin, &into, news, dropped).await })
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))??;
        Ok::<_, ApiError>(ImportReport {
            room: room.clone(),
            imported: stored.count,
            first_id: stored.first_id,
            last_id: stored.last_id,
            dropped,
            dropped_lines: imported
                .dropped
                .iter()
                .take(DROPPED_LISTED)
                .map(DroppedLine::from)
                .collect(),
        })
    }
    .await;
    match result {
        Ok(report) => (StatusCode::CREATED, axum::Json(report)).into_response(),
        Err(e) => {
            app.node.metrics.reject(e.code);
            e.into_response()
        }
    }
}

// ------------------------------------------------------------ segments

/// `GET /x/v2/dm/web/seg.so`: bilibili's query (other parameters real
/// clients send, such as `pid`, are ignored).
#[derive(Debug, Deserialize)]
pub(super) struct SegmentQuery {
    #[serde(rename = "type")]
    kind: Option<u32>,
    oid: Option<String>,
    segment_index: Option<u32>,
}

/// `GET /x/v2/dm/web/seg.so?type=1&oid=ROOM&segment_index=N`: the
/// danmaku of the room whose video time lies in the N-th six-minute
/// segment (at most `limits.max_segment_items`, see [`segment_items`]), as
/// bilibili's protobuf `DmSegMobileReply`.
pub(super) async fn segment(
    State(app): State<App>,
    query: Result<Query<SegmentQuery>, ApiError>,
) -> Response {
    let invalid = |m: &str| ApiError::new(ErrorCode::InvalidQuery, m);
    let result = async {
        let Query(q) = query?;
        if q.kind != Some(1) {
            return Err(invalid("type must be 1 (video danmaku)"));
        }
        let room = q
            .oid
            .filter(|oid| check_room(oid).is_ok())
            .ok_or_else(|| invalid("oid must be a room name"))?;
        let index = q
            .segment_index
            .and_then(NonZeroU32::new)
            .ok_or_else(|| invalid("segment_index must be a whole number from 1"))?;
        let (from, to) = segment::segment_range(index);
        let cap = app.node.config.limits.max_segment_items;
        let items = segment_items(&app.node, &room, from, to, cap).await?;
        Ok(segment::encode_segment(&items))
    }
    .await;
    match result {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => {
            app.node.metrics.reject(e.code);
            e.into_response()
        }
    }
}

/// Rounds of slice reads [`segment_items`] makes at most.
const SEGMENT_ROUNDS: usize = 3;

/// The danmaku of `room` with a video time in `[from, to)`, by video time:
/// all of them when they number at most `cap`; otherwise `cap` of them
/// spread over the window, so that a busy segment still shows danmaku to
/// its end. The cap is then shared evenly among the window's
/// [`segment::SLICES`] slices (each keeps its earliest), and what the
/// quieter slices leave is shared again among those that filled their
/// share, for up to [`SEGMENT_ROUNDS`] rounds. Each round reads at most
/// `cap` rows, which bounds the work of one request; what the last
/// round's quieter slices leave goes unused.
async fn segment_items(
    node: &Node,
    room: &str,
    from: f64,
    to: f64,
    cap: usize,
) -> Result<Vec<Danmaku>, ApiError> {
    let all = node.history_by_video_time(room, from, to, cap + 1).await?;
    if all.len() <= cap {
        return Ok(all);
    }
    let mut limits = segment::split(cap, segment::SLICES);
    let mut got: Vec<Vec<Danmaku>> = (0..segment::SLICES).map(|_| Vec::new()).collect();
    // The slices that filled their share, and so may hold more.
    let mut open: Vec<usize> = (0..segment::SLICES).collect();
    for round in 1..=SEGMENT_ROUNDS {
        for &i in &open {
            if limits[i] > got[i].len() {
                let (a, b) = segment::slice(from, to, i);
                got[i] = node.history_by_video_time(room, a, b, limits[i]).await?;
            }
        }
        open.retain(|&i| got[i].len() == limits[i]);
        let left = cap - got.iter().map(Vec::len).sum::<usize>();
        if left == 0 || open.is_empty() || round == SEGMENT_ROUNDS {
            break;
        }
        for (&i, extra) in open.iter().zip(segment::split(left, open.len())) {
            limits[i] += extra;
        }
    }
    Ok(got.into_iter().flatten().collect())
}

// ------------------------------------------------------------ CORS

/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE_S: u32 = 600;

/// `OPTIONS` on a CORS route: a preflight is answered by [`cors`] before
/// it gets here; any other `OPTIONS` only learns that the route exists.
pub(super) async fn options() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// CORS for the routes players read and write from other origins. A read
/// (`GET`, `HEAD`, or a preflight asking for one) follows
/// `http.cors_allow_origins`, where `*` answers any origin with
/// `Access-Control-Allow-Origin: *`; a write (anything else) only
/// `http.cors_write_origins`, which never holds `*`. An allowed origin is
/// echoed with `Vary: Origin`; any other gets no CORS header, which the
/// browser takes as a refusal. A preflight (`OPTIONS` with
/// `Access-Control-Request-Method`) is answered here, `204`, with the
/// methods and headers of its kind.
pub(super) async fn cors(State(app): State<App>, request: Request, next: Next) -> Response {
    let requested = request
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
    let preflight = request.method() == Method::OPTIONS && requested.is_some();
    let method = requested
        .filter(|_| preflight)
        .unwrap_or_else(|| request.method().clone());
    let read = method == Method::GET || method == Method::HEAD;
    let http = &app.node.config.http;
    let allowed = if read {
        &http.cors_allow_origins
    } else {
        &http.cors_write_origins
    };
    let origin = request.headers().get(header::ORIGIN).cloned();
    // A browser sends a form or a `text/plain` POST to another origin
    // without asking first, and hiding the answer would not undo the
    // write: a write from a page of an origin not allowed is refused
    // before it runs. Our own pages (same origin) and clients that are not
    // browsers (no `Origin`) are not affected.
    if !read && !preflight {
        if let Some(o) = origin
            .as_ref()
            .filter(|o| !same_origin(o, request.headers()))
        {
            if !allowed.iter().any(|a| a.as_bytes() == o.as_bytes()) {
                app.node.metrics.reject(ErrorCode::Forbidden);
                return ApiError::new(
                    ErrorCode::Forbidden,
                    "writes from this page's origin are not allowed (http.cors_write_origins)",
                )
                .into_response();
            }
        }
    }
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    let allow = if read && allowed.iter().any(|o| o == "*") {
        Some(HeaderValue::from_static("*"))
    } else {
        headers.append(header::VARY, HeaderValue::from_static("origin"));
        origin.filter(|o| allowed.iter().any(|a| a.as_bytes() == o.as_bytes()))
    };
    let Some(allow) = allow else {
        return response;
    };
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    if preflight {
        let methods = if read { "GET, HEAD" } else { "POST" };
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(methods),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(PREFLIGHT_MAX_AGE_S),
        );
    } else {
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
    }
    response
}

/// Whether `origin` is the server's own, as the request addressed it
/// (`Host`): a page we served writing back to us.
fn same_origin(origin: &HeaderValue, headers: &HeaderMap) -> bool {
    let (Ok(origin), Some(host)) = (
        origin.to_str(),
        headers.get(header::HOST).and_then(|h| h.to_str().ok()),
    ) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}
