//! One WebSocket connection: a single task that reads commands, writes
//! frames, and keeps time.
//!
//! Its life is one [`State`], which only moves forward: open → closing →
//! close queued → done. Everything the connection holds while idle is a
//! socket, a feed cursor, a few counters and one timer; a read buffer
//! exists only while a client frame is half-read.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::super::outbox::{linger, Outbox};
use crate::error::ApiError;
use crate::guard::Sender;
use crate::hub::{encode_ws, DirectSink, Frame};
use crate::metrics::{GaugeGuard, TransportLabel};
use crate::node::{Delivery, Feed, Joined, Node, Sent};
use crate::protocol::frames::{ClientMessage, Reference, ServerMessage};
use crate::protocol::websocket::{self, close_code, Decoded, Decoder, FrameError, Message, Opcode};

/// How much a read may bring in at once.
const READ_CHUNK: usize = 4096;

/// Just the `ref` of a command that failed to parse as a whole.
#[derive(serde::Deserialize)]
struct RefOnly {
    #[serde(rename = "ref")]
    reference: Option<Reference>,
}

type Ack =
    Pin<Box<dyn std::future::Future<Output = (Option<Reference>, Result<Sent, ApiError>)> + Send>>;

/// Where a connection is in its life. It only moves forward, and the task
/// ends after the last state:
///
/// - `Open` → `Closing`: [`Connection::close`] (a bad frame, the client's
///   close or EOF, the idle timeout, a slow consumer, shutdown). The first
///   reason wins; later ones are ignored.
/// - `Closing` → `CloseQueued`: once every send in flight is answered, the
///   close frame goes into the outbox.
/// - `CloseQueued` → done: the outbox is written; the task shuts its side
///   and lingers. A write timeout or a socket error ends the task from any
///   state, without a close frame.
#[derive(Debug)]
enum State {
    /// Reading commands and taking the room's frames.
    Open,
    /// Reading nothing more and taking nothing more from the room. The
    /// close frame is held back until every send in flight is answered,
    /// since nothing may follow a close frame.
    Closing {
        /// The close frame, to be queued.
        frame: Bytes,
    },
    /// The close frame is in the outbox: once it is written, the
    /// connection is done.
    CloseQueued,
}

/// A WebSocket viewer (and sender).
pub struct Connection {
    node: Arc<Node>,
    /// Shared with the room's flusher, which writes to it while the feed is
    /// parked (see `hub::seat`).
    stream: Arc<TcpStream>,
    room: String,
    sender: Sender,
    /// Bytes of a client frame not yet complete; empty (unallocated) when idle.
    inbuf: BytesMut,
    decoder: Decoder,
    outbox: Outbox,
    feed: Feed,
    /// Sends waiting for the store, answered in order.
    acks: FuturesOrdered<Ack>,
    state: State,
    last_heard: Instant,
    last_ping: Instant,
    hello: Option<Bytes>,
}

/// The socket as the room's flusher sees it.
struct Socket(Arc<TcpStream>);

impl DirectSink for Socket {
    fn bytes<'f>(&self, frame: &'f Frame) -> &'f Bytes {
        frame.ws()
    }

    fn try_write(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
}

impl Connection {
    /// A connection for a client that has joined `room`.
    pub fn new(
        node: Arc<Node>,
        stream: TcpStream,
        read_buf: Bytes,
        room: String,
        sender: Sender,
        joined: Joined,
    ) -> Connection {
        let hello = encode_ws(&ServerMessage::Hello {
            room: &room,
            last_id: joined.last_id,
            online: joined.online,
        });
        let now = Instant::now();
        let stream = Arc::new(stream);
        joined.feed.attach(Arc::new(Socket(stream.clone())));
        Connection {
            decoder: Decoder::new(node.config.limits.max_ws_message_bytes),
            node,
            stream,
            room,
            sender,
            inbuf: BytesMut::from(&read_buf[..]),
            outbox: Outbox::default(),
            feed: joined.feed,
            acks: FuturesOrdered::new(),
            state: State::Open,
            last_heard: now,
            last_ping: now,
            hello: Some(hello),
        }
    }

    /// Runs the connection until it closes.
    pub async fn run(mut self) {
        let metrics = self.node.metrics.clone();
        let _conn = GaugeGuard::new(
            &metrics
                .connections
                .get_or_create(&TransportLabel { transport: "ws" }),
        );
        let _task = GaugeGuard::new(&metrics.tasks);
        match self.serve().await {
            Ok(()) => linger(&self.stream).await,
            Err(e) => tracing::debug!(
                error = %e,
                room = %self.room,
                client = %self.sender.ip,
                "websocket connection ended"
            ),
        }
    }

    async fn serve(&mut self) -> io::Result<()> {
        let cfg = &self.node.config;
        let ping_every = Duration::from_secs(cfg.connection.ping_interval_s);
        let idle_timeout = Duration::from_secs(cfg.connection.idle_timeout_s);
        let write_timeout = Duration::from_secs(cfg.connection.write_timeout_s);
        let max_queued = cfg.fanout.max_queued_bytes;
        let max_in_flight = cfg.limits.max_in_flight;
        let going_away = self.node.going_away().clone();
        // Registered once, not on every turn of the loop: with thousands of
        // viewers woken per flush, re-registering is measurable.
        let going = going_away.cancelled();
        tokio::pin!(going);
        let timer: Sleep = tokio::time::sleep(ping_every);
        tokio::pin!(timer);

        if let Some(hello) = self.hello.take() {
            self.queue(hello);
        }
        self.handle_input()?;
        loop {
            if self.is_open() {
                self.pull_ready(max_queued);
            }
            self.queue_close_frame();
            self.write()?;
            let close_queued = matches!(self.state, State::CloseQueued);
            if self.outbox.is_empty() && close_queued {
                return Ok(());
            }
            if self.outbox.is_empty() && self.is_open() {
                // Nothing to write and level with the room: the flusher
                // writes the next frames itself, and this task sleeps.
                self.feed.park();
            }
            let deadline = self.deadline(ping_every, idle_timeout, write_timeout);
            // Checked here as well as in the select, so that a socket that is
            // always readable cannot starve the timeouts.
            if Instant::now() >= deadline {
                self.on_timer(ping_every, idle_timeout, write_timeout)?;
                continue;
            }
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            // Room frames fill the outbox only up to `max_queued`; the room
            // above that is for answers to the client (acks, pongs, errors).
            // Reading stops when those pile up unread too, so a client that
            // floods pings without reading cannot grow the outbox.
            let open = self.is_open();
            let reading =
                open && self.acks.len() < max_in_flight && self.outbox.bytes() < 2 * max_queued;
            let taking = open && self.outbox.bytes() < max_queued;
            let writing = !self.outbox.is_empty();
            tokio::select! {
                biased;
                _ = &mut going, if open => {
                    // The store is closed, so every send in flight has its
                    // answer: deliver those first, so that no client misses
                    // the ack of a danmaku that was stored.
                    while let Some(Some((reference, result))) = self.acks.next().now_or_never() {
                        self.answer(reference.as_ref(), result);
                    }
                    // Then what was published before shutdown.
                    self.take_back();
                    self.pull_ready(usize::MAX);
                    self.close(close_code::GOING_AWAY, "server shutting down, reconnect");
                }
                ready = self.stream.writable(), if writing => ready?,
                ready = self.stream.readable(), if reading => {
                    ready?;
                    self.read()?;
                }
                Some((reference, result)) = self.acks.next(), if !self.acks.is_empty() && !close_queued => {
                    self.answer(reference.as_ref(), result);
                    // Commands held back while too many sends were in flight.
                    self.handle_input()?;
                }
                delivery = self.feed.next(), if taking => match delivery {
                    Ok(d) => self.deliver(d),
                    Err(e) => {
                        tracing::warn!(error = %e, "feed failed");
                        self.close(close_code::INTERNAL_ERROR, "internal error");
                    }
                },
                _ = &mut timer => self.on_timer(ping_every, idle_timeout, write_timeout)?,
            }
        }
    }

    /// Moves every delivery that is ready into the outbox, up to `limit` bytes.
    fn pull_ready(&mut self, limit: usize) {
        while self.outbox.bytes() < limit {
            match self.feed.try_next() {
                Some(d) => self.deliver(d),
                None => break,
            }
        }
    }

    fn deliver(&mut self, d: Delivery) {
        let slow = self.feed.account(&d);
        let frame = match d {
            Delivery::Shared(frame) => frame.ws().clone(),
            Delivery::Own(items) => encode_ws(&ServerMessage::danmaku(&items)),
            Delivery::Lagged { dropped } => encode_ws(&ServerMessage::Lagged { dropped }),
            Delivery::HandedBack { leftover } => {
                leftover.into_iter().for_each(|b| self.outbox.push(b));
                return;
            }
        };
        self.outbox.push(frame);
        if slow {
            self.close(close_code::POLICY_VIOLATION, "slow consumer");
        }
    }

    /// Queues a frame of the connection's own (not the room's). The task
    /// takes the viewer back from the flusher first: two writers must never
    /// interleave their frames on one socket.
    fn queue(&mut self, frame: Bytes) {
        self.take_back();
        self.outbox.push(frame);
    }

    /// Ends parking, keeping what the flusher left half-written in front.
    fn take_back(&mut self) {
        for b in self.feed.unpark() {
            self.outbox.push(b);
        }
    }

    fn write(&mut self) -> io::Result<()> {
        self.outbox.write_to(&self.stream)
    }

    fn read(&mut self) -> io::Result<()> {
        if self.inbuf.capacity() - self.inbuf.len() < READ_CHUNK / 2 {
            self.inbuf.reserve(READ_CHUNK);
        }
        match self.stream.try_read_buf(&mut self.inbuf) {
            Ok(0) => {
                // The client closed its half: answer what it sent, then
                // stop (closing reads nothing more).
                self.close(close_code::NORMAL, "");
            }
            Ok(_) => {
                self.last_heard = Instant::now();
                self.handle_input()?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Decodes and handles every complete client frame in the read buffer,
    /// stopping while too many sends are in flight.
    fn handle_input(&mut self) -> io::Result<()> {
        let max_in_flight = self.node.config.limits.max_in_flight;
        while self.is_open() && self.acks.len() < max_in_flight && !self.inbuf.is_empty() {
            match self.decoder.decode(&self.inbuf) {
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Fragment { consumed }) => self.inbuf.advance(consumed),
                Ok(Decoded::Message { message, consumed }) => {
                    self.inbuf.advance(consumed);
                    self.on_message(message);
                }
                Err(e) => self.on_frame_error(e),
            }
        }
        if self.inbuf.is_empty() {
            // No half-read frame: hold no buffer while idle.
            self.inbuf = BytesMut::new();
        }
        Ok(())
    }

    fn on_frame_error(&mut self, e: FrameError) {
        tracing::debug!(error = %e, client = %self.sender.ip, "closing websocket on a bad frame");
        self.inbuf.clear();
        self.close(e.close_code(), &e.to_string());
    }

    fn on_message(&mut self, message: Message) {
        match message {
            Message::Text(text) => self.on_command(&text),
            Message::Binary(_) => self.close(
                close_code::UNSUPPORTED_DATA,
                "binary messages are not supported",
            ),
            Message::Ping(payload) => self.queue(websocket::frame(Opcode::Pong, &payload)),
            Message::Pong => {}
            Message::Close(_) => self.close(close_code::NORMAL, ""),
        }
    }

    fn on_command(&mut self, text: &str) {
        match ClientMessage::parse(text.as_bytes()) {
            Ok(ClientMessage::Ping) => self.queue(encode_ws(&ServerMessage::Pong)),
            Ok(ClientMessage::Send { reference, send }) => {
                let node = self.node.clone();
                let room = self.room.clone();
                let sender = self.sender.clone();
                self.acks.push_back(Box::pin(async move {
                    let result = node.send(&room, &sender, send).await;
                    (reference, result)
                }));
            }
            Err(e) => {
                let e = ApiError::from(e);
                self.node.metrics.reject(e.code);
                // Echo the ref of a malformed command, if it has a readable one.
                let reference = serde_json::from_str::<RefOnly>(text)
                    .ok()
                    .and_then(|r| r.reference);
                self.answer(reference.as_ref(), Err(e));
            }
        }
    }

    fn answer(&mut self, reference: Option<&Reference>, result: Result<Sent, ApiError>) {
        let frame = match &result {
            Ok(Sent::Stored(d)) => encode_ws(&ServerMessage::Ack {
                reference,
                id: d.id,
                ts: d.ts,
            }),
            Ok(Sent::Held(h)) => encode_ws(&ServerMessage::Held {
                reference,
                held: h.held,
            }),
            Err(error) => encode_ws(&ServerMessage::Error { reference, error }),
        };
        self.queue(frame);
    }

    /// Reading commands and taking the room's frames: not closing yet.
    fn is_open(&self) -> bool {
        matches!(self.state, State::Open)
    }

    /// Starts closing: the close frame goes out once every send in flight is
    /// answered, and the connection ends once it is written.
    fn close(&mut self, code: u16, reason: &str) {
        if self.is_open() {
            self.state = State::Closing {
                frame: websocket::close_frame(code, reason),
            };
        }
    }

    /// Queues the held close frame (`Closing` → `CloseQueued`) once no send
    /// waits for its answer any more.
    fn queue_close_frame(&mut self) {
        let frame = match &self.state {
            State::Closing { frame } if self.acks.is_empty() => frame.clone(),
            _ => return,
        };
        self.state = State::CloseQueued;
        self.queue(frame);
    }

    fn deadline(&self, ping_every: Duration, idle: Duration, write_timeout: Duration) -> Instant {
        let deadline = (self.last_ping + ping_every).min(self.last_heard + idle);
        self.outbox
            .stall_deadline(write_timeout)
            .map_or(deadline, |stalled| deadline.min(stalled))
    }

    fn on_timer(
        &mut self,
        ping_every: Duration,
        idle: Duration,
        write_timeout: Duration,
    ) -> io::Result<()> {
        let now = Instant::now();
        if self.outbox.stalled_out(write_timeout) {
            // The socket took nothing for the whole timeout: a close frame
            // could not get through either.
            self.node.metrics.slow_disconnects.inc();
            return Err(io::Error::new(io::ErrorKind::TimedOut, "write timeout"));
        }
        if now >= self.last_heard + idle {
            self.close(close_code::POLICY_VIOLATION, "idle timeout");
            self.last_heard = now;
        } else if now >= self.last_ping + ping_every {
            if self.is_open() {
                self.queue(websocket::frame(Opcode::Ping, b""));
            }
            self.last_ping = now;
        }
        Ok(())
    }
}
