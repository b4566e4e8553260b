//! A connection's outbound queue: whole frames, written with vectored,
//! non-blocking writes; and how a connection ends once its last frame is
//! written ([`linger`]). The WebSocket and Bilibili connections share both.
//!
//! Shared frames are `Bytes` clones of the hub's one encoding, so queueing
//! a frame for a viewer copies a pointer, not the payload. The queue is
//! bounded by the connection, which stops taking frames from its room's
//! ring once `bytes()` reaches its limit.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The most slices one write takes: Linux's IOV_MAX is 1024, and a few
/// dozen frames already fill a socket buffer.
const MAX_SLICES: usize = 64;

/// What a queued frame costs besides its bytes: its slot, and the
/// allocation behind a small control frame (a pong, a heartbeat reply).
/// Charged so that a client that sends tiny pings and never reads cannot
/// queue far more memory than the limit on queued bytes says.
const FRAME_OVERHEAD: usize = 128;

/// Frames waiting for the socket.
#[derive(Default)]
pub struct Outbox {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// Since when queued bytes have been waiting with no write progress.
    stalled_since: Option<Instant>,
}

impl Outbox {
    /// Queues a whole frame.
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len() + FRAME_OVERHEAD;
        self.frames.push_back(frame);
    }

    /// Bytes waiting, each frame charged [`FRAME_OVERHEAD`] more.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// When a write timeout of `write_timeout` runs out for what waits
    /// now, if the socket has stopped taking it.
    pub fn stall_deadline(&self, write_timeout: Duration) -> Option<Instant> {
        self.stalled_since.map(|since| since + write_timeout)
    }

    /// Whether the socket has taken nothing for `write_timeout` while
    /// bytes waited: the client is gone or will not read.
    pub fn stalled_out(&self, write_timeout: Duration) -> bool {
        self.stall_deadline(write_timeout)
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Writes as much as the socket takes without blocking, and notes when
    /// the socket stops taking what waits ([`stalled_out`](Self::stalled_out)).
    pub fn write_to(&mut self, stream: &TcpStream) -> io::Result<()> {
        let wrote = self.write_now(stream)?;
        self.stalled_since = match self.stalled_since {
            _ if self.frames.is_empty() => None,
            _ if wrote > 0 => Some(Instant::now()),
            None => Some(Instant::now()),
            waiting => waiting,
        };
        Ok(())
    }

    /// Writes as much as the socket takes without blocking. Returns the
    /// bytes written; `Ok(0)` with frames left means the socket is full.
    fn write_now(&mut self, stream: &TcpStream) -> io::Result<usize> {
        let mut total = 0;
        while !self.frames.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = self.frames.len().min(MAX_SLICES);
            for (slot, frame) in slices.iter_mut().zip(&self.frames) {
                *slot = IoSlice::new(frame);
            }
            match stream.try_write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    self.consume(written);
                    total += written;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.frames.is_empty() && self.frames.capacity() > 16 {
            // Give back what a burst grew; a few slots stay for the next frame.
            self.frames = VecDeque::new();
        }
        Ok(total)
    }

    fn consume(&mut self, mut written: usize) {
        self.bytes -= written;
        while let Some(front) = self.frames.front_mut() {
            if written >= front.len() {
                written -= front.len();
                self.frames.pop_front();
                self.bytes -= FRAME_OVERHEAD;
            } else {
                // Only this viewer's view of the shared bytes moves.
                front.advance(written);
                break;
            }
        }
    }
}

/// How long a closed connection keeps reading (and discarding) before the
/// socket is dropped, so that unread client bytes do not make the kernel
/// reset the connection and destroy the close frame in flight.
const LINGER: Duration = Duration::from_secs(2);

/// After the last bytes (a close frame) are written: ends our side, then
/// reads and discards until the client closes too (or `LINGER` passes).
pub async fn linger(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    let mut scratch = [0u8; 512];
    let drain = async {
        loop {
            if stream.readable().await.is_err() {
                break;
            }
            match stream.try_read(&mut scratch) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
