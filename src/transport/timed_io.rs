//! A TCP stream whose writes fail once they make no progress for a while,
//! and whose reads tell the connection's deadline clock that bytes came.
//!
//! hyper has no write timeout, so an HTTP response (an SSE stream above
//! all) to a client that stopped reading would wait forever. Wrapping the
//! stream makes such a write fail after `connection.write_timeout_s`, which
//! ends the connection and frees the viewer. The reads feed
//! [`Clock::on_read`]: the first byte after an idle spell starts the header
//! deadline (see `deadlines.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::deadlines::Clock;

/// A stream that fails a write stuck for longer than its timeout.
pub struct TimedStream {
    inner: TokioIo<TcpStream>,
    timeout: Duration,
    /// Running while a write is pending; allocated only then.
    stalled: Option<Pin<Box<Sleep>>>,
    /// The connection's deadlines, told of every completed read.
    clock: Arc<Clock>,
}

impl TimedStream {
    /// Wraps `stream`, whose reads are reported to `clock`.
    pub fn new(stream: TcpStream, timeout: Duration, clock: Arc<Clock>) -> TimedStream {
        TimedStream {
            inner: TokioIo::new(stream),
            timeout,
            stalled: None,
            clock,
        }
    }

    /// The TCP stream back (after a WebSocket upgrade).
    pub fn into_inner(self) -> TcpStream {
        self.inner.into_inner()
    }

    /// Turns a pending write into an error once it has pended too long.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client took no data for the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    /// A write's result, after telling the clock that bytes went out.
    fn wrote(
        &mut self,
        result: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(1..)) = result {
            self.clock.on_write();
        }
        self.progressed(result, cx)
    }
}

impl Read for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        // An end of file counts too; the connection ends anyway then.
        if let Poll::Ready(Ok(())) = result {
            self.clock.on_read();
        }
        result
    }
}

impl Write for TimedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
