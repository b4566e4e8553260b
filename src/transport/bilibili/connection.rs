//! One Bilibili live connection, over WebSocket (`/sub`) or raw TCP: a
//! single task that reads packets, writes the room's frames, and keeps
//! time.
//!
//! Its life is one [`State`], which only moves forward: authenticating →
//! streaming → closing → done. The two wires differ only in their
//! [`Framing`]: how client bytes become packets (WebSocket frames first, or
//! nothing), how a packet of our own is wrapped, and whether a close says
//! why.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::super::outbox::{linger, Outbox};
use crate::danmaku::Danmaku;
use crate::error::ApiError;
use crate::hub::{BiliWire, DirectSink, Frame};
use crate::metrics::{GaugeGuard, TransportLabel};
use crate::node::{Delivery, Feed, Node};
use crate::protocol::bilibili::{self, Auth, Op, Packet, PacketError};
use crate::protocol::websocket::{self, close_code, Decoded, Message, Opcode};

/// How much a read may bring in at once.
const READ_CHUNK: usize = 4096;

/// How client bytes become packets, and how ours go out.
pub(super) enum Framing {
    /// `/sub`: each packet travels as a binary WebSocket message (masked
    /// client frames, pings answered, a close frame with a code and a
    /// reason at the end).
    WebSocket(websocket::Decoder),
    /// The raw TCP port: packets back to back; a close is just the end of
    /// the stream.
    Tcp,
}

impl Framing {
    /// The WebSocket framing, its messages limited to the packet limit
    /// (clients send one packet per message).
    pub(super) fn websocket(node: &Node) -> Framing {
        Framing::WebSocket(websocket::Decoder::new(
            node.config.bilibili.max_packet_bytes,
        ))
    }

    fn is_websocket(&self) -> bool {
        matches!(self, Framing::WebSocket(_))
    }

    /// The `transport` label of the connections gauge.
    fn label(&self) -> &'static str {
        match self {
            Framing::WebSocket(_) => "bilibili_ws",
            Framing::Tcp => "bilibili_tcp",
        }
    }

    /// Packet bytes of our own (a reply, a catch-up batch) as they go on
    /// this wire: a WebSocket message of their own, or as they are.
    fn message(&self, write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
        match self {
            Framing::WebSocket(_) => websocket::frame_with(Opcode::Binary, write),
            Framing::Tcp => {
                let mut out = Vec::new();
                write(&mut out);
                Bytes::from(out)
            }
        }
    }

    /// What ends the stream: a close frame, or nothing on TCP.
    fn close_frame(&self, code: u16, reason: &str) -> Option<Bytes> {
        self.is_websocket()
            .then(|| websocket::close_frame(code, reason))
    }
}

/// Where a connection is in its life. It only moves forward, and the task
/// ends after the last state:
///
/// - `Authenticating` → `Streaming`: the first packet is an auth that
///   names a room the client may watch; it is answered before any frame.
/// - any → `Closing` ([`Connection::close`]): anything else first, a
///   refused auth, a bad packet or frame, the client's close or EOF, the
///   auth or idle timeout, a slow consumer, shutdown. The first reason
///   wins. The room is left at once.
/// - `Closing` → done: the outbox (with the close frame, on a WebSocket)
///   is written; the task shuts its side and lingers. A write timeout or a
///   socket error ends the task from any state.
enum State {
    /// Waiting for the auth packet until `until` (`auth_timeout_s` after
    /// the connection opened).
    Authenticating {
        /// When the client has waited too long.
        until: Instant,
    },
    /// In the room: heartbeats answered, the room's frames written.
    Streaming(Box<Streaming>),
    /// Reading nothing more and taking nothing more from the room.
    Closing,
}

/// A viewer in its room.
struct Streaming {
    feed: Feed,
    /// How its frames are packed: compression and framing.
    wire: BiliWire,
    room: String,
}

/// A Bilibili live viewer.
pub(super) struct Connection {
    node: Arc<Node>,
    /// Shared with the room's flusher, which writes to it while the feed is
    /// parked (see `hub::seat`).
    stream: Arc<TcpStream>,
    /// The client's address: the TCP peer, or the forwarded client of a
    /// WebSocket behind a trusted proxy.
    client: IpAddr,
    framing: Framing,
    /// Client bytes not yet taken as a whole WebSocket frame (TCP bytes go
    /// straight to `packets`); empty (unallocated) when idle.
    inbuf: BytesMut,
    packets: bilibili::Decoder,
    outbox: Outbox,
    state: State,
    /// When the last whole packet arrived.
    last_heard: Instant,
}

/// The socket as the room's flusher sees it: the frame's packing for this
/// viewer's wire.
struct Socket {
    stream: Arc<TcpStream>,
    wire: BiliWire,
}

impl DirectSink for Socket {
    fn bytes<'f>(&self, frame: &'f Frame) -> &'f Bytes {
        frame.bilibili(self.wire)
    }

    fn try_write(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.stream.try_write_vectored(bufs)
    }
}

/// Why a connection ends, as a WebSocket close frame says it.
struct Close {
    code: u16,
    reason: String,
}

impl Close {
    fn policy(reason: impl Into<String>) -> Close {
        Close {
            code: close_code::POLICY_VIOLATION,
            reason: reason.into(),
        }
    }
}

impl From<PacketError> for Close {
    fn from(e: PacketError) -> Close {
        let code = match e {
            PacketError::TooBig { .. } => close_code::MESSAGE_TOO_BIG,
            _ => close_code::PROTOCOL_ERROR,
        };
        Close {
            code,
            reason: e.to_string(),
        }
    }
}

impl From<ApiError> for Close {
    fn from(e: ApiError) -> Close {
        Close::policy(format!("{}: {}", e.code.as_str(), e.message))
    }
}

impl Connection {
    /// A connection that has just opened; `read_buf` holds what the client
    /// sent past the WebSocket handshake.
    pub(super) fn new(
        node: Arc<Node>,
        stream: TcpStream,
        read_buf: Bytes,
        client: IpAddr,
        framing: Framing,
    ) -> Connection {
        let now = Instant::now();
        let until = now + Duration::from_secs(node.config.bilibili.auth_timeout_s);
        Connection {
            packets: bilibili::Decoder::new(node.config.bilibili.max_packet_bytes),
            node,
            stream: Arc::new(stream),
            client,
            framing,
            inbuf: BytesMut::from(&read_buf[..]),
            outbox: Outbox::default(),
            state: State::Authenticating { until },
            last_heard: now,
        }
    }

    /// Runs the connection until it closes.
    pub(super) async fn run(mut self) {
        let metrics = self.node.metrics.clone();
        let _conn = GaugeGuard::new(&metrics.connections.get_or_create(&TransportLabel {
            transport: self.framing.label(),
        }));
        let _task = GaugeGuard::new(&metrics.tasks);
        match self.serve().await {
            Ok(()) => linger(&self.stream).await,
            Err(e) => tracing::debug!(
                error = %e,
                client = %self.client,
                transport = self.framing.label(),
                "bilibili connection ended"
            ),
        }
    }

    async fn serve(&mut self) -> io::Result<()> {
        let cfg = &self.node.config;
        let idle = Duration::from_secs(cfg.bilibili.idle_timeout_s);
        let write_timeout = Duration::from_secs(cfg.connection.write_timeout_s);
        let max_queued = cfg.fanout.max_queued_bytes;
        let going_away = self.node.going_away().clone();
        let going = going_away.cancelled();
        tokio::pin!(going);
        let timer: Sleep = tokio::time::sleep(idle);
        tokio::pin!(timer);

        self.handle_input().await;
        loop {
            self.pull_ready(max_queued);
            self.write()?;
            if self.outbox.is_empty() {
                match &mut self.state {
                    State::Closing => return Ok(()),
                    // Nothing to write and level with the room: the flusher
                    // writes the next frames itself, and this task sleeps.
                    State::Streaming(s) => {
                        s.feed.park();
                    }
                    State::Authenticating { .. } => {}
                }
            }
            let deadline = self.deadline(idle, write_timeout);
            // Checked here as well as in the select, so that a socket that
            // is always readable cannot starve the timeouts.
            if Instant::now() >= deadline {
                self.on_timer(idle, write_timeout)?;
                continue;
            }
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            // Room frames fill the outbox only up to `max_queued`; above
            // that is room for heartbeat replies. Reading stops when those
            // pile up unread too, so a client that beats without reading
            // cannot grow the outbox.
            let closing = matches!(self.state, State::Closing);
            let reading = !closing && self.outbox.bytes() < 2 * max_queued;
            let taking =
                matches!(self.state, State::Streaming(_)) && self.outbox.bytes() < max_queued;
            let writing = !self.outbox.is_empty();
            tokio::select! {
                biased;
                _ = &mut going, if !closing => {
                    // What was published before shutdown goes first.
                    self.take_back();
                    self.pull_ready(usize::MAX);
                    self.close(Close {
                        code: close_code::GOING_AWAY,
                        reason: "server shutting down, reconnect".into(),
                    });
                }
                ready = self.stream.writable(), if writing => ready?,
                ready = self.stream.readable(), if reading => {
                    ready?;
                    self.read().await?;
                }
                delivery = next_delivery(&mut self.state), if taking => match delivery {
                    Ok(d) => self.deliver(d),
                    Err(e) => {
                        tracing::warn!(error = %e, "feed failed");
                        self.close(Close {
                            code: close_code::INTERNAL_ERROR,
                            reason: "internal error".into(),
                        });
                    }
                },
                _ = &mut timer => self.on_timer(idle, write_timeout)?,
            }
        }
    }

    async fn read(&mut self) -> io::Result<()> {
        if self.inbuf.capacity() - self.inbuf.len() < READ_CHUNK / 2 {
            self.inbuf.reserve(READ_CHUNK);
        }
        match self.stream.try_read_buf(&mut self.inbuf) {
            // The client closed its half: nothing more will come.
            Ok(0) => self.close(Close {
                code: close_code::NORMAL,
                reason: String::new(),
            }),
            Ok(_) => self.handle_input().await,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Takes every whole packet out of the bytes read, and handles each.
    async fn handle_input(&mut self) {
        while !matches!(self.state, State::Closing) && !self.inbuf.is_empty() {
            match self.next_packets() {
                Ok(Some(packets)) => {
                    for packet in packets {
                        self.on_packet(packet).await;
                    }
                }
                Ok(None) => break,
                Err(close) => {
                    tracing::debug!(
                        reason = %close.reason,
                        client = %self.client,
                        "closing a bilibili connection"
                    );
                    self.close(close);
                }
            }
        }
        if self.inbuf.is_empty() {
            // No half-read frame: hold no buffer while idle.
            self.inbuf = BytesMut::new();
        }
    }

    /// The packets completed by the front of the read buffer (TCP: all of
    /// it; WebSocket: its next frame), which it consumes; `None` when it
    /// holds no whole WebSocket frame yet.
    fn next_packets(&mut self) -> Result<Option<Vec<Packet>>, Close> {
        let decoder = match &mut self.framing {
            Framing::Tcp => {
                let bytes = std::mem::take(&mut self.inbuf);
                return Ok(Some(decode_packets(&mut self.packets, &bytes)?));
            }
            Framing::WebSocket(decoder) => decoder,
        };
        let decoded = decoder.decode(&self.inbuf).map_err(|e| Close {
            code: e.close_code(),
            reason: e.to_string(),
        })?;
        let (message, consumed) = match decoded {
            Decoded::Incomplete => return Ok(None),
            Decoded::Fragment { consumed } => {
                self.inbuf.advance(consumed);
                return Ok(Some(Vec::new()));
            }
            Decoded::Message { message, consumed } => (message, consumed),
        };
        self.inbuf.advance(consumed);
        match message {
            Message::Binary(bytes) => Ok(Some(decode_packets(&mut self.packets, &bytes)?)),
            Message::Text(_) => Err(Close {
                code: close_code::UNSUPPORTED_DATA,
                reason: "send packets as binary messages".into(),
            }),
            Message::Ping(payload) => {
                self.queue(websocket::frame(Opcode::Pong, &payload));
                Ok(Some(Vec::new()))
            }
            Message::Pong => Ok(Some(Vec::new())),
            Message::Close(_) => Err(Close {
                code: close_code::NORMAL,
                reason: String::new(),
            }),
        }
    }

    async fn on_packet(&mut self, packet: Packet) {
        self.last_heard = Instant::now();
        match (&self.state, packet.op()) {
            (State::Closing, _) => {}
            (State::Authenticating { .. }, Some(Op::Auth)) => match self.join(&packet.body).await {
                Ok(streaming) => self.stream_to(streaming),
                Err(close) => self.close(close),
            },
            (State::Authenticating { .. }, _) => {
                self.close(Close::policy("the first packet must be auth (operation 7)"))
            }
            (State::Streaming(_), Some(Op::Heartbeat)) => self.heartbeat(),
            // Unknown operations, and a second auth, are ignored, as
            // Bilibili's own servers do.
            (State::Streaming(_), _) => {}
        }
    }

    /// Reads an auth packet and joins its room as its key's sender. Takes
    /// `&mut self` though it changes nothing: the connection is `Send` but
    /// not `Sync` (its feed), and this future holds it across an await.
    async fn join(&mut self, body: &[u8]) -> Result<Streaming, Close> {
        let auth = Auth::parse(body).map_err(|e| Close::policy(e.to_string()))?;
        let room = format!("{}{}", self.node.config.bilibili.room_prefix, auth.roomid);
        // Real clients always send Bilibili's own key, which means nothing
        // here: only a key shaped like one of our tokens is one.
        let sender = self.node.identify_key(auth.key.as_deref(), self.client)?;
        let joined = self.node.watch(&room, &sender, None).await?;
        let wire = BiliWire {
            ver: auth.protover,
            websocket: self.framing.is_websocket(),
        };
        Ok(Streaming {
            feed: joined.feed,
            wire,
            room,
        })
    }

    /// Enters the room: the auth reply goes out before any of its frames.
    fn stream_to(&mut self, streaming: Streaming) {
        streaming.feed.attach(Arc::new(Socket {
            stream: self.stream.clone(),
            wire: streaming.wire,
        }));
        let reply = bilibili::auth_reply();
        self.outbox
            .push(self.framing.message(|b| b.extend_from_slice(&reply)));
        self.state = State::Streaming(Box::new(streaming));
    }

    /// Answers a heartbeat with the room's viewers across the cluster, in a
    /// message of its own (see the codec's "What transports must know").
    fn heartbeat(&mut self) {
        let State::Streaming(s) = &self.state else {
            return;
        };
        let online = s.feed.viewer().room().stats().online;
        let reply = bilibili::heartbeat_reply(u32::try_from(online).unwrap_or(u32::MAX));
        let message = self.framing.message(|b| b.extend_from_slice(&reply));
        self.queue(message);
    }

    /// Moves every delivery that is ready into the outbox, up to `limit` bytes.
    fn pull_ready(&mut self, limit: usize) {
        while self.outbox.bytes() < limit {
            let State::Streaming(s) = &mut self.state else {
                return;
            };
            match s.feed.try_next() {
                Some(d) => self.deliver(d),
                None => return,
            }
        }
    }

    fn deliver(&mut self, d: Delivery) {
        let State::Streaming(s) = &mut self.state else {
            return;
        };
        let slow = s.feed.account(&d);
        match d {
            // Empty when the frame holds nothing for Bilibili clients.
            Delivery::Shared(frame) => {
                let bytes = frame.bilibili(s.wire);
                if !bytes.is_empty() {
                    self.outbox.push(bytes.clone());
                }
            }
            Delivery::Own(items) => {
                let wire = s.wire;
                if let Some(bytes) = self.own_batch(wire, &items) {
                    self.outbox.push(bytes);
                }
            }
            // Bilibili has no word for it: the viewer just misses them
            // (counted in the metrics by `account`).
            Delivery::Lagged { .. } => {}
            Delivery::HandedBack { leftover } => {
                leftover.into_iter().for_each(|b| self.outbox.push(b));
            }
        }
        if slow {
            self.close(Close::policy("slow consumer"));
        }
    }

    /// Danmaku only this viewer needs (catch-up), packed for its wire;
    /// `None` for none (an empty batch is not a packet).
    fn own_batch(&self, wire: BiliWire, items: &[Danmaku]) -> Option<Bytes> {
        let commands: Vec<Vec<u8>> = items.iter().map(bilibili::danmu_msg).collect();
        (!commands.is_empty()).then(|| {
            self.framing
                .message(|b| bilibili::write_batch(b, wire.ver, &commands))
        })
    }

    /// Queues bytes of the connection's own (not the room's). The task
    /// takes the viewer back from the flusher first: two writers must never
    /// interleave their bytes on one socket.
    fn queue(&mut self, bytes: Bytes) {
        self.take_back();
        self.outbox.push(bytes);
    }

    /// Ends parking, keeping what the flusher left half-written in front.
    fn take_back(&mut self) {
        if let State::Streaming(s) = &mut self.state {
            for b in s.feed.unpark() {
                self.outbox.push(b);
            }
        }
    }

    /// Starts closing: leaves the room, and queues the close frame (on a
    /// WebSocket) after whatever is queued. The first reason wins.
    fn close(&mut self, close: Close) {
        if matches!(self.state, State::Closing) {
            return;
        }
        self.take_back();
        if let State::Streaming(s) = &self.state {
            tracing::debug!(room = %s.room, client = %self.client, reason = %close.reason, "bilibili viewer leaves");
        }
        self.state = State::Closing;
        self.inbuf = BytesMut::new();
        if let Some(frame) = self.framing.close_frame(close.code, &close.reason) {
            self.outbox.push(frame);
        }
    }

    fn write(&mut self) -> io::Result<()> {
        self.outbox.write_to(&self.stream)
    }

    fn deadline(&self, idle: Duration, write_timeout: Duration) -> Instant {
        let deadline = match &self.state {
            State::Authenticating { until } => *until,
            State::Streaming(_) => self.last_heard + idle,
            // Only the write timeout is left to wait for.
            State::Closing => Instant::now() + write_timeout,
        };
        self.outbox
            .stall_deadline(write_timeout)
            .map_or(deadline, |stalled| deadline.min(stalled))
    }

    fn on_timer(&mut self, idle: Duration, write_timeout: Duration) -> io::Result<()> {
        let now = Instant::now();
        if self.outbox.stalled_out(write_timeout) {
            // The socket took nothing for the whole timeout: a close frame
            // could not get through either.
            self.node.metrics.slow_disconnects.inc();
            return Err(io::Error::new(io::ErrorKind::TimedOut, "write timeout"));
        }
        match &self.state {
            State::Authenticating { until } if now >= *until => {
                self.close(Close::policy("no auth packet in time"));
            }
            State::Streaming(_) if now >= self.last_heard + idle => {
                self.close(Close::policy("idle timeout: no heartbeat"));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The next delivery of a streaming connection's feed (never, in another
/// state). A free function so that `select!` borrows only the state.
async fn next_delivery(state: &mut State) -> Result<Delivery, crate::store::StoreError> {
    match state {
        State::Streaming(s) => s.feed.next().await,
        _ => std::future::pending().await,
    }
}

/// Every packet `bytes` completes (the decoder keeps a partial one).
fn decode_packets(
    decoder: &mut bilibili::Decoder,
    mut bytes: &[u8],
) -> Result<Vec<Packet>, PacketError> {
    let mut packets = Vec::new();
    while let Some(packet) = decoder.decode(&mut bytes)? {
        packets.push(packet);
    }
    Ok(packets)
}
