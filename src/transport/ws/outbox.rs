//! A connection's outbound queue: whole frames, written with vectored,
//! non-blocking writes.
//!
//! Shared frames are `Bytes` clones of the hub's one encoding, so queueing
//! a frame for a viewer copies a pointer, not the payload. The queue is
//! bounded by the connection, which stops taking frames from its room's
//! ring once `bytes()` reaches its limit.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;

/// The most slices one write takes: Linux's IOV_MAX is 1024, and a few
/// dozen frames already fill a socket buffer.
const MAX_SLICES: usize = 64;

/// Frames waiting for the socket.
#[derive(Default)]
pub struct Outbox {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl Outbox {
    /// Queues a whole frame.
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Writes as much as the socket takes without blocking. Returns the
    /// bytes written; `Ok(0)` with frames left means the socket is full.
    pub fn write_to(&mut self, stream: &TcpStream) -> io::Result<usize> {
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
        while written > 0 {
            let front = self.frames.front_mut().expect("wrote more than was queued");
            if written >= front.len() {
                written -= front.len();
                self.frames.pop_front();
            } else {
                // Only this viewer's view of the shared bytes moves.
                front.advance(written);
                written = 0;
            }
        }
    }
}
