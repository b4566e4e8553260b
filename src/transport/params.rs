//! The parameters of every route, read and checked where they enter: the
//! room in the path, ids in the path, and the query strings. Every route
//! reads them by the same rules, which docs/protocol.md states ("Room
//! names", "Query parameters"):
//!
//! - A path segment is percent-decoded once, then checked. A room name is
//!   then held to [`check_room`], whose characters never need encoding, so
//!   `%6Cobby` is `lobby`, while `%2F`, `%2E%2E` and a second level of
//!   encoding (`%252E`) decode to something the grammar refuses.
//! - An id is a decimal integer from 0 to [`MAX_ID`]. Anything else, a
//!   larger one included, is refused with `400`: no id can be larger, and a
//!   larger one once wrapped into the store's signed integers.
//! - A `limit` lies between 1 and a documented maximum.
//!
//! The query types are public so that the fuzz target parses exactly what
//! the routes parse.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use crate::danmaku::MAX_ID;
use crate::error::{ApiError, ErrorCode};
use crate::guard::check_room;
use crate::node::RoomOrder;

/// The rooms one `GET /api/v1/rooms` lists when it names no `limit`.
pub const DEFAULT_ROOMS_PAGE: usize = 100;
/// The most rooms one `GET /api/v1/rooms` lists.
pub const MAX_ROOMS_PAGE: usize = 1000;
/// The audit entries one request lists when it names no `limit`.
pub const DEFAULT_AUDIT_PAGE: usize = 100;
/// The most audit entries one request lists.
pub const MAX_AUDIT_PAGE: usize = 1000;
/// The danmaku one history request returns when it names no `limit`.
pub const DEFAULT_HISTORY_PAGE: usize = 100;

/// The bucket of `GET /api/v1/rooms/{room}/density` when it names none,
/// in seconds of video time.
pub const DEFAULT_DENSITY_BUCKET_S: f64 = 10.0;
/// The smallest bucket of a density, in seconds.
pub const MIN_DENSITY_BUCKET_S: f64 = 0.1;
/// The largest bucket of a density, in seconds (an hour).
pub const MAX_DENSITY_BUCKET_S: f64 = 3600.0;
/// The most buckets one density holds: a video longer than this many
/// buckets needs a larger bucket (a 3-hour video in buckets of 1.08 s).
pub const MAX_DENSITY_BUCKETS: usize = 10_000;

/// The room named by a route's `{room}` segment, percent-decoded and held
/// to the room grammar: `400 invalid_room` otherwise, before the handler
/// runs, whatever else the route takes.
#[derive(Debug)]
pub struct RoomName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RoomName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let invalid = || ApiError::new(ErrorCode::InvalidRoom, "the room name is not valid UTF-8");
        // axum decodes each segment once; a segment that is not UTF-8 once
        // decoded cannot be a room.
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|_| invalid())?;
        let room = params
            .into_iter()
            .find_map(|(key, value)| (key == "room").then_some(value))
            .ok_or_else(invalid)?;
        check_room(&room)?;
        Ok(RoomName(room))
    }
}

/// An id a client names: from 0 to [`MAX_ID`], checked, never cast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Id(pub u64);

impl Id {
    /// Reads an id from text, as a path segment or header carries it.
    pub fn parse(text: &str) -> Option<Id> {
        text.parse::<u64>().ok().filter(|&id| id <= MAX_ID).map(Id)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = u64::deserialize(d)?;
        if id > MAX_ID {
            return Err(D::Error::custom(format!(
                "an id is at most {MAX_ID}, not {id}"
            )));
        }
        Ok(Id(id))
    }
}

/// An id in a path segment (a recall's danmaku, a held send): `400
/// invalid_field` unless it is an [`Id`].
pub fn path_id(what: &str, text: &str) -> Result<u64, ApiError> {
    Id::parse(text).map(|Id(id)| id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidField,
            format!("{what} must be a whole number from 0 to {MAX_ID}"),
        )
    })
}

/// Parses a query string (`None`: there was none) into `T`: `400
/// invalid_query` if a parameter does not parse or is out of its type's
/// range. The one mapping of a query's parse errors, which [`Query`]
/// applies for every route.
pub fn parse_query<T: DeserializeOwned>(query: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::new(ErrorCode::InvalidQuery, format!("invalid query: {e}")))
}

/// A route's query string, parsed into its query type by [`parse_query`]:
/// `400 invalid_query` before the handler runs unless it parses. The
/// type's own `check` is the handler's to call.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parse_query(parts.uri.query()).map(Query)
    }
}

fn invalid_query(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, message)
}

/// A `limit` parameter: `default` when absent, else `1..=max`.
fn limit(given: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match given.unwrap_or(default) {
        n @ 1.. if n <= max => Ok(n),
        _ => Err(invalid_query(format!("limit must be between 1 and {max}"))),
    }
}

/// `GET /api/v1/rooms/{room}/danmaku`.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    /// By id: danmaku after this one.
    pub after: Option<Id>,
    /// By video time: from this many seconds (inclusive).
    pub from: Option<f64>,
    /// By video time: to this many seconds (exclusive).
    pub to: Option<f64>,
    /// At most this many.
    pub limit: Option<usize>,
}

/// What a history request asks the store for, checked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HistoryRange {
    /// Danmaku with an id above `after`, ascending.
    After(u64),
    /// Danmaku whose video time lies in `[from, to)`.
    VideoTime {
        /// Inclusive start, finite.
        from: f64,
        /// Exclusive end, at least `from` (may be infinite).
        to: f64,
    },
}

impl HistoryQuery {
    /// The range and limit asked for, with `limit` in
    /// `1..=max_history`.
    pub fn check(&self, max_history: usize) -> Result<(HistoryRange, usize), ApiError> {
        let limit = limit(self.limit, DEFAULT_HISTORY_PAGE, max_history)?;
        if self.from.is_none() && self.to.is_none() {
            return Ok((
                HistoryRange::After(self.after.map_or(0, |Id(id)| id)),
                limit,
            ));
        }
        if self.after.is_some() {
            return Err(invalid_query("use either after or from/to, not both"));
        }
        let from = self.from.unwrap_or(0.0);
        let to = self.to.unwrap_or(f64::INFINITY);
        if !from.is_finite() || to.is_nan() || from > to {
            return Err(invalid_query(
                "from must be a finite number of seconds, at most to",
            ));
        }
        Ok((HistoryRange::VideoTime { from, to }, limit))
    }
}

/// `GET /api/v1/rooms/{room}/density`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DensityQuery {
    /// Seconds of video time per bucket.
    pub bucket: Option<f64>,
    /// The video's length in seconds: only the buckets before it are
    /// counted, so a danmaku placed past the end cannot spoil the bar.
    pub to: Option<f64>,
}

/// What a density request asks for, checked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DensityRange {
    /// Seconds per bucket, from [`MIN_DENSITY_BUCKET_S`] to
    /// [`MAX_DENSITY_BUCKET_S`].
    pub bucket_s: f64,
    /// With `to`: the buckets that cover `[0, to)`, danmaku past them
    /// left out. Without: `None`, every danmaku counted.
    pub buckets: Option<usize>,
}

impl DensityQuery {
    /// The bucket ([`DEFAULT_DENSITY_BUCKET_S`] when absent) and, with
    /// `to` (above 0, at most [`MAX_VT`](crate::guard::MAX_VIDEO_TIME)), the
    /// buckets before it: at most [`MAX_DENSITY_BUCKETS`].
    pub fn check(&self) -> Result<DensityRange, ApiError> {
        let bucket_s = match self.bucket.unwrap_or(DEFAULT_DENSITY_BUCKET_S) {
            // NaN is in no range.
            s if (MIN_DENSITY_BUCKET_S..=MAX_DENSITY_BUCKET_S).contains(&s) => s,
            _ => {
                return Err(invalid_query(format!(
                    "bucket must be a number of seconds from {MIN_DENSITY_BUCKET_S} \
                     to {MAX_DENSITY_BUCKET_S}"
                )))
            }
        };
        let buckets = match self.to {
            None => None,
            Some(to) if to > 0.0 && to <= crate::guard::MAX_VIDEO_TIME => {
                // At most MAX_VT / MIN_DENSITY_BUCKET_S: far inside usize.
                let buckets = (to / bucket_s).ceil() as usize;
                if buckets > MAX_DENSITY_BUCKETS {
                    return Err(too_many_buckets(bucket_s));
                }
                Some(buckets)
            }
            Some(_) => {
                return Err(invalid_query(format!(
                    "to must be a number of seconds above 0, at most {}",
                    crate::guard::MAX_VIDEO_TIME
                )))
            }
        };
        Ok(DensityRange { bucket_s, buckets })
    }
}

/// The answer when a room's danmaku span more than
/// [`MAX_DENSITY_BUCKETS`] buckets of `bucket_s`: `400 invalid_query`.
pub fn too_many_buckets(bucket_s: f64) -> ApiError {
    invalid_query(format!(
        "the room's danmaku span more than {MAX_DENSITY_BUCKETS} buckets of {bucket_s} s: \
         ask for a larger bucket"
    ))
}

/// `GET /api/v1/admin/stats`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Only the samples taken after this time (Unix milliseconds): a
    /// dashboard passes the `t` of the last sample it has.
    #[serde(default)]
    pub after: i64,
}

/// `GET /api/v1/rooms/{room}/stream`.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// Resume after this id.
    pub since: Option<Id>,
    /// An `EventSource` cannot set headers: its token comes here.
    pub token: Option<String>,
}

impl StreamQuery {
    /// Where the stream resumes: the browser's own `Last-Event-ID` wins
    /// over `since`. Both are ids.
    pub fn resume_after(
        &self,
        last_event_id: Option<&HeaderValue>,
    ) -> Result<Option<u64>, ApiError> {
        match last_event_id {
            None => Ok(self.since.map(|Id(id)| id)),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| Id::parse(s.trim()))
                .map(|Id(id)| Some(id))
                .ok_or_else(|| {
                    invalid_query(format!(
                        "Last-Event-ID must be a danmaku id, from 0 to {MAX_ID}"
                    ))
                }),
        }
    }
}

/// `GET /ws`.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    /// The room, decoded once from the query; checked by
    /// [`WsQuery::room`].
    room: String,
    /// Resume after this id.
    pub since: Option<Id>,
    /// A browser's WebSocket cannot set headers: its token comes here.
    pub token: Option<String>,
}

impl WsQuery {
    /// The room, held to the room grammar like a path's.
    pub fn room(&self) -> Result<&str, ApiError> {
        check_room(&self.room)?;
        Ok(&self.room)
    }
}

/// `GET /api/v1/admin/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// At most this many entries.
    pub limit: Option<usize>,
    /// Entries with an id below this one.
    pub before: Option<Id>,
}

impl AuditQuery {
    /// The limit, in `1..=MAX_AUDIT_PAGE`, and `before`.
    pub fn check(&self) -> Result<(usize, Option<u64>), ApiError> {
        let limit = limit(self.limit, DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE)?;
        Ok((limit, self.before.map(|Id(id)| id)))
    }
}

/// How `GET /api/v1/rooms` sorts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomSort {
    /// By name; following `next_cursor` lists every room exactly once.
    #[default]
    Name,
    /// Busiest first; no exactly-once promise across pages.
    Online,
}

/// `GET /api/v1/rooms`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsQuery {
    /// At most this many rooms.
    pub limit: Option<usize>,
    /// The `next_cursor` of the page before.
    pub cursor: Option<String>,
    /// The order.
    #[serde(default)]
    pub sort: RoomSort,
}

/// What a cursor holds, before it is made opaque: where the next page
/// starts, in the order that made it.
const NAME_CURSOR: &str = "name:";
const ONLINE_CURSOR: &str = "online:";

impl RoomsQuery {
    /// The order (starting where the cursor says) and the limit, in
    /// `1..=MAX_ROOMS_PAGE`. A cursor that this server did not make for
    /// this sort is `invalid_query`.
    pub fn check(&self) -> Result<(RoomOrder, usize), ApiError> {
        let limit = limit(self.limit, DEFAULT_ROOMS_PAGE, MAX_ROOMS_PAGE)?;
        let Some(cursor) = &self.cursor else {
            let order = match self.sort {
                RoomSort::Name => RoomOrder::ByName { after: None },
                RoomSort::Online => RoomOrder::ByOnline { skip: 0 },
            };
            return Ok((order, limit));
        };
        let bad = || invalid_query("cursor is not a next_cursor of this listing's sort");
        let plain = URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?;
        let order = match self.sort {
            RoomSort::Name => {
                let after = plain.strip_prefix(NAME_CURSOR).ok_or_else(bad)?;
                check_room(after).map_err(|_| bad())?;
                RoomOrder::ByName {
                    after: Some(after.to_owned()),
                }
            }
            RoomSort::Online => RoomOrder::ByOnline {
                skip: plain
                    .strip_prefix(ONLINE_CURSOR)
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(bad)?,
            },
        };
        Ok((order, limit))
    }
}

/// The cursor of the page after one that ended at `last_room` (by name) or
/// held rooms up to `skip` (by online count).
pub fn next_cursor(order: &RoomOrder, last_room: &str, page_len: usize) -> String {
    let plain = match order {
        RoomOrder::ByName { .. } => format!("{NAME_CURSOR}{last_room}"),
        RoomOrder::ByOnline { skip } => format!("{ONLINE_CURSOR}{}", skip + page_len),
    };
    URL_SAFE_NO_PAD.encode(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stop_at_the_largest_the_store_holds() {
        assert_eq!(Id::parse("0"), Some(Id(0)));
        assert_eq!(Id::parse("9223372036854775807"), Some(Id(MAX_ID)));
        for bad in [
            "9223372036854775808",
            "18446744073709551615",
            "-1",
            "1.5",
            "",
            " 1",
        ] {
            assert_eq!(Id::parse(bad), None, "{bad}");
        }
        let q: Result<HistoryQuery, _> = parse_query(Some("after=9223372036854775808"));
        assert_eq!(q.unwrap_err().code, ErrorCode::InvalidQuery);
    }

    #[test]
    fn a_density_bucket_lies_within_its_bounds() {
        let range = |q: &str| parse_query::<DensityQuery>(Some(q)).and_then(|q| q.check());
        let bucket = |q: &str| range(q).map(|r| r.bucket_s);
        assert_eq!(bucket("").unwrap(), DEFAULT_DENSITY_BUCKET_S);
        assert_eq!(bucket("bucket=0.1").unwrap(), 0.1);
        assert_eq!(bucket("bucket=3600").unwrap(), 3600.0);
        assert_eq!(bucket("bucket=2.5").unwrap(), 2.5);
        // `to` covers [0, to) with whole buckets, at most 10,000 of them.
        assert_eq!(range("bucket=2.5").unwrap().buckets, None);
        assert_eq!(range("bucket=2&to=181").unwrap().buckets, Some(91));
        assert_eq!(range("bucket=0.1&to=1000").unwrap().buckets, Some(10_000));
        for junk in [
            "bucket=0.1&to=1000.1",
            "to=0",
            "to=-1",
            "to=NaN",
            "to=2592001",
        ] {
            assert_eq!(
                range(junk).unwrap_err().code,
                ErrorCode::InvalidQuery,
                "{junk}"
            );
        }
        for junk in [
            "bucket=0",
            "bucket=0.09",
            "bucket=3600.5",
            "bucket=-5",
            "bucket=NaN",
            "bucket=inf",
            "bucket=",
            "bucket=ten",
            "buckets=5",
        ] {
            assert_eq!(
                bucket(junk).unwrap_err().code,
                ErrorCode::InvalidQuery,
                "{junk}"
            );
        }
    }

    #[test]
    fn cursors_round_trip_and_belong_to_their_sort() {
        let by_name = RoomOrder::ByName { after: None };
        let cursor = next_cursor(&by_name, "live:1", 100);
        let q: RoomsQuery = parse_query(Some(&format!("cursor={cursor}&limit=5"))).unwrap();
        assert_eq!(
            q.check().unwrap(),
            (
                RoomOrder::ByName {
                    after: Some("live:1".into())
                },
                5
            )
        );
        let online: RoomsQuery =
            parse_query(Some(&format!("cursor={cursor}&sort=online"))).unwrap();
        assert_eq!(online.check().unwrap_err().code, ErrorCode::InvalidQuery);
        let skip = next_cursor(&RoomOrder::ByOnline { skip: 100 }, "x", 100);
        let q: RoomsQuery = parse_query(Some(&format!("cursor={skip}&sort=online"))).unwrap();
        assert_eq!(q.check().unwrap().0, RoomOrder::ByOnline { skip: 200 });
        for junk in [
            "cursor=%%%",
            "cursor=bmFtZTouLg",
            "limit=0",
            "limit=1001",
            "limit=x",
        ] {
            let err = parse_query::<RoomsQuery>(Some(junk)).and_then(|q| q.check());
            assert_eq!(err.unwrap_err().code, ErrorCode::InvalidQuery, "{junk}");
        }
    }
}
