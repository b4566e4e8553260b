//! The SSE transport: `GET /api/v1/rooms/{room}/stream`.
//!
//! For clients without WebSocket (OBS browser sources, curl, EventSource).
//! Each danmaku is an event with its id as the event id, so `Last-Event-ID`
//! resumes exactly where the client stopped.

use std::net::IpAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::caller::identify;
use super::client::ClientAddr;
use super::params::{Query, RoomName, StreamQuery};
use super::App;
use crate::error::ApiError;
use crate::metrics::{GaugeGuard, TransportLabel};
use crate::node::{Delivery, Feed};
use crate::protocol::frames::ServerMessage;
use crate::protocol::sse;

/// Opens an event stream for a room.
pub(super) async fn stream(
    State(app): State<App>,
    RoomName(room): RoomName,
    ClientAddr(client): ClientAddr,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Response {
    match open(app, room, client, q, headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn open(
    app: App,
    room: String,
    client: IpAddr,
    q: StreamQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let since = q.resume_after(headers.get("last-event-id"))?;
    let sender = identify(&app, q.token.as_deref(), &headers, client)?;
    let node = &app.node;
    let joined = node.watch(&room, &sender, since).await?;
    let hello = ServerMessage::Hello {
        room: &room,
        last_id: joined.last_id,
        online: joined.online,
    };
    let mut first = sse::PREAMBLE.to_vec();
    // The hello carries the feed's starting point as its event id, so an
    // EventSource that drops before any danmaku arrives still resumes from
    // where it started instead of from "now".
    first.extend_from_slice(format!("id: {}\n", joined.feed.cursor()).as_bytes());
    first.extend_from_slice(&sse::message_event("hello", &hello));
    let ping = Duration::from_secs(node.config.connection.ping_interval_s);
    let mut ticker = interval_at(Instant::now() + ping, ping);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = Stream {
        first: Some(Bytes::from(first)),
        feed: joined.feed,
        ticker,
        going_away: node.going_away().clone(),
        ended: false,
        _conn: GaugeGuard::new(
            &node
                .metrics
                .connections
                .get_or_create(&TransportLabel { transport: "sse" }),
        ),
    };
    let body = futures_util::stream::unfold(state, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), s))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// One SSE viewer. Dropped, with its gauges, when the client goes.
struct Stream {
    first: Option<Bytes>,
    feed: Feed,
    ticker: Interval,
    going_away: CancellationToken,
    ended: bool,
    /// Counts the viewer. The stream runs inside its HTTP connection's task,
    /// which already counts in the task gauge.
    _conn: GaugeGuard,
}

impl Stream {
    /// The next bytes for the client; `None` ends the response.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.ended {
            return None;
        }
        if let Some(d) = self.feed.try_next() {
            return self.encode(d);
        }
        tokio::select! {
            biased;
            _ = self.going_away.cancelled() => {
                // Deliver what was published before shutdown, then end.
                self.ended = true;
                let mut rest = Vec::new();
                while let Some(d) = self.feed.try_next() {
                    if let Some(b) = self.encode(d) {
                        rest.extend_from_slice(&b);
                    }
                }
                (!rest.is_empty()).then(|| Bytes::from(rest))
            }
            d = self.feed.next() => match d {
                Ok(d) => self.encode(d),
                Err(e) => {
                    tracing::warn!(error = %e, "sse feed failed");
                    None
                }
            },
            _ = self.ticker.tick() => Some(Bytes::from_static(sse::KEEPALIVE)),
        }
    }

    fn encode(&mut self, d: Delivery) -> Option<Bytes> {
        if self.feed.account(&d) {
            // Slow consumer: this lagged event is the last one.
            self.ended = true;
        }
        Some(match d {
            Delivery::Shared(f) => f.sse().clone(),
            Delivery::Own(items) => sse::danmaku_events(&items),
            Delivery::Lagged { dropped } => {
                sse::message_event("lagged", &ServerMessage::Lagged { dropped })
            }
            // SSE feeds attach no sink, so they are never parked.
            Delivery::HandedBack { leftover } => Bytes::from(leftover.concat()),
        })
    }
}
