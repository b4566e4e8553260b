//! A lean WebSocket viewer for the load generator.
//!
//! It reads server frames (unmasked) straight from a `TcpStream` and scans
//! danmaku frames for `{"id":` and the sender's timestamp instead of parsing
//! the JSON, so that thousands of viewers cost the generator little CPU.
//! With [`Protocol::Bilibili`] it speaks the Bilibili live protocol at
//! `/sub` instead, and looks its brotli messages up in a memo ([`super::bili`]).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use memchr::memmem::{self, Finder};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use super::progress::Counters;
use super::report::latency_histogram;

/// The text prefix a bench sender puts before its send time (µs).
pub const STAMP: &str = "bench ";
/// How the stamp appears in a danmaku's JSON.
const STAMP_KEY: &[u8] = b"\"text\":\"bench ";

/// Microseconds since the unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Connections the bench opens from one source address: under the
/// server's default `connection.max_connections_per_ip` (500), so that a
/// server whose limits bind loopback too takes them all.
const PER_SOURCE: usize = 250;

/// The source address for connection `i`: spread over 127.0.0.2.. so that
/// no one source runs out of ephemeral ports or its address's caps.
pub fn source_ip(i: usize) -> Ipv4Addr {
    let n = i / PER_SOURCE;
    Ipv4Addr::new(127, 0, (n / 250) as u8, 2 + (n % 250) as u8)
}

/// How long a connection and its WebSocket handshake may take: a node
/// that accepts but never answers must not hold a run forever.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The wire a viewer speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Our JSON WebSocket protocol at `/ws`.
    #[default]
    Json,
    /// Bilibili's live protocol at `/sub`, brotli-compressed (protover 3).
    /// Rooms must then be numbers (`/sub` names a room by its `roomid`).
    Bilibili,
}

impl Protocol {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::Bilibili => "bilibili",
        }
    }
}

/// The request target of a JSON WebSocket viewer of `query` (a room, and
/// any more of the query string), with the bench's token.
pub fn ws_target(query: &str) -> String {
    format!("/ws?room={query}{}", super::token_query())
}

/// Opens a TCP connection from `source` and completes the WebSocket
/// handshake for `target` (path and query); returns the stream and
/// whatever followed the response.
pub async fn handshake(
    addr: SocketAddr,
    source: Ipv4Addr,
    target: &str,
    small_buffer: bool,
) -> io::Result<(TcpStream, BytesMut)> {
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake_untimed(addr, source, target, small_buffer),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "WebSocket handshake timed out"))?
}

async fn handshake_untimed(
    addr: SocketAddr,
    source: Ipv4Addr,
    target: &str,
    small_buffer: bool,
) -> io::Result<(TcpStream, BytesMut)> {
    let socket = TcpSocket::new_v4()?;
    if small_buffer {
        socket.set_recv_buffer_size(4096)?;
    }
    socket.bind(SocketAddr::from((source, 0)))?;
    let mut stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: YmVuY2htYXJrLWtleS0xMg==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(end) = memmem::find(&buf, b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                if buf.starts_with(b"HTTP/1.1 429") {
                    super::note_rate_limited();
                }
                return Err(io::Error::other(
                    String::from_utf8_lossy(&buf[..end]).into_owned(),
                ));
            }
            buf.advance(end + 4);
            return Ok((stream, buf));
        }
    }
}

/// What one viewer saw.
#[derive(Default)]
pub struct Seen {
    /// Danmaku received.
    pub received: u64,
    /// Ids never received (gaps, and the tail it did not reach).
    pub lost: u64,
    /// Ids received more than once.
    pub duplicated: u64,
    /// Lagged frames.
    pub lagged: u64,
    /// Danmaku the server's density control left out of frames.
    pub thinned: u64,
    /// Bytes read off the socket after the handshake: frames, headers and
    /// all, what the viewer cost the wire.
    pub wire_bytes: u64,
    /// Send-to-receipt latencies, µs (sampled viewers only), not yet
    /// shared with the counters.
    latency: Option<Histogram<u64>>,
    /// The next id expected; 0 until the hello frame says where to start.
    next_id: u64,
}

/// A connected viewer.
pub struct Viewer {
    stream: TcpStream,
    buf: BytesMut,
    seen: Seen,
    /// Pause between reads, to play a viewer that cannot keep up.
    pause: Option<std::time::Duration>,
    /// Bytes the next read may take: small while frames are small (an
    /// idle viewer of a 130,000-connection run holds only this), doubled
    /// up to `MAX_READ` whenever a read fills it.
    read_size: usize,
    /// When a Bilibili viewer sends its next heartbeat (none on JSON).
    next_beat: Option<tokio::time::Instant>,
}

/// How often a Bilibili viewer sends a heartbeat, as real clients do (the
/// server closes one silent for 70 s).
const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The first read size of a viewer that keeps up, and of a slow one.
const FIRST_READ: usize = 4096;
/// A slow viewer's reads stay this small.
const SLOW_READ: usize = 2048;
/// The largest read size.
const MAX_READ: usize = 64 * 1024;

/// The searchers of the keys scanned for in every frame, built once:
/// building one per lookup showed in the generator's profile.
struct Keys {
    id: Finder<'static>,
    stamp: Finder<'static>,
    items: Finder<'static>,
    thinned: Finder<'static>,
    last: Finder<'static>,
    last_id: Finder<'static>,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    id: Finder::new(br#"{"id":"#),
    stamp: Finder::new(STAMP_KEY),
    items: Finder::new(br#""items":"#),
    thinned: Finder::new(br#""thinned":"#),
    last: Finder::new(br#""last":"#),
    last_id: Finder::new(br#""last_id":"#),
});

/// Finds `key` in `hay` from `from` and parses the digits after it.
fn number_after(hay: &[u8], key: &Finder<'_>, from: usize) -> Option<(u64, usize)> {
    let at = from + key.find(&hay[from..])? + key.needle().len();
    let digits = hay[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let n = hay[at..at + digits]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some((n, at + digits))
}

impl Seen {
    /// Counts danmaku `id` received: in order, after a gap (the ids
    /// skipped are lost), or again (a duplicate). Before the first id is
    /// known (no hello frame said where to start), any id starts the count.
    pub(super) fn tally(&mut self, id: u64) {
        self.received += 1;
        if self.next_id == 0 || id == self.next_id {
            self.next_id = id + 1;
        } else if id > self.next_id {
            self.lost += id - self.next_id;
            self.next_id = id + 1;
        } else {
            self.duplicated += 1;
        }
    }

    /// Whether this viewer measures latency.
    pub(super) fn sampling(&self) -> bool {
        self.latency.is_some()
    }

    /// Records one latency: received at `now`, sent at `sent` (µs since the
    /// epoch, the sender's stamp). Nothing on a viewer that does not sample.
    pub(super) fn sample(&mut self, now: u64, sent: u64) {
        if let Some(h) = self.latency.as_mut() {
            let _ = h.record(now.saturating_sub(sent).max(1));
        }
    }

    /// Tallies one text frame from the server.
    fn scan(&mut self, payload: &[u8]) {
        if payload.starts_with(br#"{"type":"danmaku""#) {
            // Density control names what it left out before the items: the
            // ids it skipped are thinned, not lost.
            let keys = &*KEYS;
            let head = &payload[..keys.items.find(payload).unwrap_or(0)];
            let thinned = number_after(head, &keys.thinned, 0).map(|(n, _)| n);
            let last = number_after(head, &keys.last, 0).map(|(n, _)| n);
            let now = self.sampling().then(now_micros);
            let mut pos = 0;
            while let Some((id, after)) = number_after(payload, &keys.id, pos) {
                pos = after;
                self.tally(id);
                if let Some(now) = now {
                    if let Some((sent, _)) = number_after(payload, &keys.stamp, pos) {
                        self.sample(now, sent);
                    }
                }
            }
            if let Some(n) = thinned {
                if let Some(last) = last.filter(|&l| self.next_id != 0 && l >= self.next_id) {
                    self.lost += last + 1 - self.next_id;
                    self.next_id = last + 1;
                }
                self.lost = self.lost.saturating_sub(n);
                self.thinned += n;
            }
        } else if payload.starts_with(br#"{"type":"hello""#) {
            if let Some((last, _)) = number_after(payload, &KEYS.last_id, 0) {
                self.next_id = last + 1;
            }
        } else if payload.starts_with(br#"{"type":"lagged""#) {
            self.lagged += 1;
        }
    }
}

impl Viewer {
    /// Connects a viewer to `room` over `protocol`; a Bilibili viewer is
    /// connected once its auth is answered, so that it is in the room.
    pub async fn connect(
        addr: SocketAddr,
        source: Ipv4Addr,
        room: &str,
        protocol: Protocol,
        sample: bool,
        slow: bool,
    ) -> io::Result<Viewer> {
        let (stream, buf, next_beat) = match protocol {
            Protocol::Json => {
                let (stream, buf) = handshake(addr, source, &ws_target(room), slow).await?;
                (stream, buf, None)
            }
            Protocol::Bilibili => {
                let roomid = room.parse().map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("room {room:?} is not a number, which /sub needs"),
                    )
                })?;
                let (mut stream, mut buf) = handshake(addr, source, "/sub", slow).await?;
                tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    super::bili::join(&mut stream, &mut buf, roomid),
                )
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "auth reply timed out"))??;
                let next_beat = tokio::time::Instant::now() + HEARTBEAT_EVERY;
                (stream, buf, Some(next_beat))
            }
        };
        // A slow viewer reads a little every 50 ms through a tiny receive
        // buffer, so that it falls behind any real rate.
        let pause = slow.then_some(std::time::Duration::from_millis(50));
        Ok(Viewer {
            stream,
            buf,
            pause,
            read_size: if slow { SLOW_READ } else { FIRST_READ },
            next_beat,
            seen: Seen {
                latency: sample.then(latency_histogram),
                ..Seen::default()
            },
        })
    }

    /// Counts from id `last + 1`: what a hello frame says on the JSON
    /// wire, for a wire without one.
    pub fn start_after(&mut self, last: u64) {
        self.seen.next_id = last + 1;
    }

    /// Reads until `last_id` holds a final id and the viewer has reached it,
    /// or the channel closes; returns what it saw.
    pub async fn run(
        mut self,
        counters: Arc<Counters>,
        last_delivery: Arc<AtomicU64>,
        mut last_id: watch::Receiver<Option<u64>>,
    ) -> Seen {
        let mut shared_at = now_micros();
        loop {
            if let Some(last) = *last_id.borrow() {
                if self.seen.next_id > last {
                    break;
                }
            }
            if let Some(pause) = self.pause {
                tokio::time::sleep(pause).await;
            }
            let chunk = self.read_size;
            self.buf.reserve(chunk);
            let mut limited = (&mut self.stream).take(chunk as u64);
            let next_beat = self.next_beat;
            let beat = async move {
                match next_beat {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let read = tokio::select! {
                r = limited.read_buf(&mut self.buf) => r,
                changed = last_id.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
                () = beat => {
                    self.next_beat = next_beat.map(|at| at + HEARTBEAT_EVERY);
                    if self.stream.write_all(&super::bili::heartbeat_frame()).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.seen.wire_bytes += n as u64;
                    if n == chunk && self.pause.is_none() {
                        self.read_size = (chunk * 2).min(MAX_READ);
                    }
                }
            }
            let before = self.seen.received;
            if self.parse_frames().await.is_err() {
                break;
            }
            let got = self.seen.received - before;
            if got > 0 {
                let now = now_micros();
                counters.delivered.fetch_add(got, Ordering::Relaxed);
                last_delivery.fetch_max(now, Ordering::Relaxed);
                // Share latencies about once a second, for the live p99.
                if let Some(h) = self
                    .seen
                    .latency
                    .as_mut()
                    .filter(|_| now > shared_at + 1_000_000)
                {
                    counters.record(h);
                    h.reset();
                    shared_at = now;
                }
            }
        }
        if let Some(last) = *last_id.borrow() {
            self.seen.lost += (last + 1).saturating_sub(self.seen.next_id.max(1));
        }
        if let Some(h) = &self.seen.latency {
            counters.record(h);
        }
        self.seen
    }

    async fn parse_frames(&mut self) -> io::Result<()> {
        while let Some((opcode, header, len)) = frame_at(&self.buf) {
            let payload = &self.buf[header..header + len];
            match opcode {
                0x1 => self.seen.scan(payload),
                0x2 => super::bili::scan(&mut self.seen, payload),
                0x8 => return Err(io::ErrorKind::ConnectionAborted.into()),
                0x9 => {
                    let pong = masked_frame(0xA, payload);
                    self.stream.write_all(&pong).await?;
                }
                _ => {}
            }
            self.buf.advance(header + len);
        }
        Ok(())
    }
}

/// The WebSocket frame at the front of `buf`, once it is whole: its
/// opcode, header length and payload length. A masked frame's payload is
/// read as it is: only the bench masks, and with an all-zero mask.
pub fn frame_at(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    let (len, header) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(b)).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    let header: usize = header + if second & 0x80 != 0 { 4 } else { 0 };
    (buf.len() >= header.checked_add(len)?).then_some((first & 0x0f, header, len))
}

/// A final client frame of `opcode` carrying `payload`, masked (as clients
/// must) with an all-zero mask, so that the payload goes as it is.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => match u16::try_from(n) {
            Ok(n) => {
                out.push(0x80 | 126);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Err(_) => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        },
    }
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
impl Seen {
    /// A viewer that samples latency, for the tests of other modules.
    pub(super) fn sampling_for_test() -> Seen {
        Seen {
            latency: Some(latency_histogram()),
            ..Seen::default()
        }
    }

    /// The least latency recorded, µs.
    pub(super) fn latency_min_for_test(&self) -> u64 {
        self.latency.as_ref().map_or(0, Histogram::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(ids: &[u64], stamp: u64) -> Vec<u8> {
        let items: Vec<String> = ids
            .iter()
            .map(|id| format!(r##"{{"id":{id},"room":"r","user":"u","name":"n","text":"{STAMP}{stamp}","mode":"scroll","color":"#ffffff","size":25,"ts":1}}"##))
            .collect();
        format!(r#"{{"type":"danmaku","items":[{}]}}"#, items.join(",")).into_bytes()
    }

    #[test]
    fn counts_ids_gaps_repeats_and_lag_notices() {
        let mut seen = Seen {
            latency: Some(latency_histogram()),
            ..Seen::default()
        };
        seen.scan(br#"{"type":"hello","room":"r","last_id":4,"online":1}"#);
        let sent = now_micros() - 2_000;
        seen.scan(&batch(&[5, 6], sent));
        seen.scan(br#"{"type":"lagged","dropped":3}"#);
        seen.scan(&batch(&[10], sent));
        seen.scan(&batch(&[10, 11], sent));
        assert_eq!(
            (seen.received, seen.lost, seen.duplicated, seen.lagged),
            (5, 3, 1, 1)
        );
        assert_eq!(seen.next_id, 12);
        let h = seen.latency.unwrap();
        assert_eq!(h.len(), 5);
        assert!(h.min() >= 2_000, "latency from the stamp in the text");
    }

    #[test]
    fn thinned_ids_are_not_lost() {
        let mut seen = Seen::default();
        seen.scan(br#"{"type":"hello","room":"r","last_id":0,"online":1}"#);
        seen.scan(&batch(&[1, 2], 1));
        // Ids 3..=8 stood for by this frame; 4, 5, 7, 8 left out.
        let mut thinned = batch(&[3, 6], 1);
        thinned.splice(18..18, br#""thinned":4,"last":8,"#.iter().copied());
        seen.scan(&thinned);
        seen.scan(&batch(&[9], 1));
        assert_eq!(
            (seen.received, seen.lost, seen.thinned, seen.next_id),
            (5, 0, 4, 10)
        );
        // A real gap is still a loss.
        seen.scan(&batch(&[12], 1));
        assert_eq!(seen.lost, 2);
    }

    #[test]
    fn text_that_looks_like_an_id_is_not_counted() {
        // A quote inside a danmaku's text is escaped, so it cannot start `{"id":`.
        let mut seen = Seen::default();
        seen.scan(br#"{"type":"danmaku","items":[{"id":1,"text":"{\"id\":99}"}]}"#);
        assert_eq!((seen.received, seen.next_id), (1, 2));
    }
}
