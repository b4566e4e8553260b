//! The accept loop: one task per TCP connection, HTTP/1.1 with upgrades,
//! and graceful shutdown injected as a future.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::accept::{accept, tune};
use super::deadlines::{Clock, Cut, Deadlines};
use super::timed_io::TimedStream;
use super::{client, router, App};
use crate::error::ApiError;
use crate::guard::Admitted;
use crate::metrics::{GaugeGuard, PhaseLabel};

/// Serves `listener` until `shutdown` resolves, then shuts down
/// gracefully: stop accepting, let HTTP requests in flight finish, commit
/// and publish every acknowledged send, let viewers drain and close with
/// "going away", and return once every connection task has ended (or the
/// grace period has passed). Other listeners' connections (the Bilibili
/// TCP port) are tasks of `app.tasks` too, and drain alike.
pub async fn run(app: App, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let router = router(app.clone());
    let stop = CancellationToken::new();
    accept(
        &app,
        listener,
        shutdown,
        |stream, peer, admitted| match admitted {
            Ok(admitted) => {
                let conn = serve_connection(
                    app.clone(),
                    router.clone(),
                    stream,
                    peer,
                    admitted,
                    stop.clone(),
                );
                app.tasks.spawn(conn);
            }
            Err(e) => refuse(&app, stream, e),
        },
    )
    .await;
    tracing::info!("shutting down: no longer accepting connections");
    stop.cancel();
    let grace = Duration::from_secs(app.node.config.connection.shutdown_grace_s);
    let deadline = tokio::time::Instant::now() + grace;
    if tokio::time::timeout_at(deadline, app.node.drain())
        .await
        .is_err()
    {
        tracing::error!("the store did not finish its last commit within the grace period");
        app.node.going_away().cancel();
    }
    app.tasks.close();
    if tokio::time::timeout_at(deadline, app.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = app.tasks.len(),
            "connections still open after the grace period"
        );
    }
}

/// Answers a connection over a cap with its error and closes it, without
/// reading its request: the cap is there so that it costs nothing more.
fn refuse(app: &App, stream: TcpStream, e: ApiError) {
    app.node.metrics.reject(e.code);
    let body = serde_json::json!({ "error": &e }).to_string();
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        e.code.status().as_u16(),
        e.code.status().canonical_reason().unwrap_or(""),
        body.len()
    );
    // Best effort: a fresh socket's buffer takes this at once, or the
    // client gets a reset, which also says "go away".
    let _ = stream.try_write(response.as_bytes());
}

async fn serve_connection(
    app: App,
    router: axum::Router,
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    stop: CancellationToken,
) {
    // Shared with a WebSocket that takes the connection over, so that the
    // place is given back when the last of them ends.
    let admitted = Arc::new(admitted);
    let _task = GaugeGuard::new(&app.node.metrics.tasks);
    tune(&stream, &app.node.config);
    let clock = Clock::new(Deadlines::new(&app.node.config.connection));
    let node = app.node.clone();
    let service = hyper::service::service_fn({
        let clock = clock.clone();
        move |req: hyper::Request<Incoming>| {
            let mut req = clock.start_request(req);
            req.extensions_mut().insert(admitted.clone());
            let routed = client::route(&node, router.clone(), peer.ip(), req);
            let clock = clock.clone();
            async move {
                let res = routed.await?;
                Ok::<_, Infallible>(clock.track_response(res))
            }
        }
    });
    let write_timeout = Duration::from_secs(app.node.config.connection.write_timeout_s);
    // No hyper header_read_timeout: the clock bounds the headers (and the
    // idle time before them, which hyper's timer would count as one).
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(16 * 1024)
        .serve_connection(
            TimedStream::new(stream, write_timeout, clock.clone()),
            service,
        )
        .with_upgrades();
    tokio::pin!(conn);
    let expired = clock.expired();
    tokio::pin!(expired);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => return log_conn_end(result),
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            cut = expired.as_mut() => {
                app.node
                    .metrics
                    .http_timeouts
                    .get_or_create(&PhaseLabel { phase: cut.label() })
                    .inc();
                tracing::debug!(%peer, phase = cut.label(), "http deadline passed: closing");
                if cut == Cut::Body {
                    // A handler waiting on the body now gets an error and
                    // answers 408; hyper then closes the connection itself,
                    // since the body is unread. A handler that is not
                    // reading gets no more than this moment.
                    clock.expire_body();
                    let _ = tokio::time::timeout(ANSWER_GRACE, conn.as_mut()).await;
                }
                // Dropping hyper's connection closes the socket.
                return;
            }
        }
    }
}

/// How long a 408 for a body that ran out of time may take to go out
/// before the connection is closed anyway.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

fn log_conn_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}
