//! Accepting TCP connections under the connection caps, for every
//! listener of the server: HTTP (`server`) and the Bilibili TCP port
//! (`bilibili`).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::App;
use crate::config::Config;
use crate::error::ApiError;
use crate::guard::Admitted;

/// Accepts connections on `listener` until `shutdown` resolves, and hands
/// each to `serve` with its place under the connection caps
/// ([`Guard::admit_connection`](crate::guard::Guard::admit_connection)),
/// or the error that refuses it. Every listener of the server (HTTP, the
/// Bilibili TCP port) accepts through here, so all count alike under one
/// set of caps. The listener is dropped (no longer accepting) on return.
pub async fn accept(
    app: &App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    mut serve: impl FnMut(TcpStream, SocketAddr, Result<Admitted, ApiError>),
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let admitted = app.node.guard.admit_connection(peer.ip());
                    serve(stream, peer, admitted);
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Sets up a newly accepted socket: no Nagle delay (frames are written
/// whole), and the kernel send buffer capped at
/// `connection.send_buffer_bytes`.
pub fn tune(stream: &TcpStream, config: &Config) {
    let _ = stream.set_nodelay(true);
    let send_buffer = config.connection.send_buffer_bytes;
    if send_buffer > 0 {
        // Bounds the kernel memory a stalled client can pin, and makes it
        // lag (and be cut off) instead of silently buffering megabytes.
        let _ = socket2::SockRef::from(stream).set_send_buffer_size(send_buffer);
    }
}
