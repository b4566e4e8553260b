//! The Bilibili live protocol's transports (docs/bilibili.md): the
//! WebSocket `GET /sub`, always served, and a raw TCP listener when
//! `bilibili.tcp_listen` is set. Both carry the same packets
//! (`protocol::bilibili`) and are served by one connection state machine
//! (`connection`), parameterised by its framing.
//!
//! Clients here only authenticate and keep alive: the room comes from
//! their first packet, not from the URL, so `/sub` answers its `101` to
//! any valid handshake and the connection joins the room after it. Their
//! sends go through the HTTP API.

mod connection;

use std::future::Future;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::net::TcpListener;

use super::accept::{accept, tune};
use super::client::ClientAddr;
use super::upgrade::Upgrade;
use super::App;
use connection::{Connection, Framing};

/// Answers a WebSocket handshake at `/sub` and starts the Bilibili
/// connection's task, which then waits for the client's auth packet.
pub(super) async fn sub(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    mut req: Request,
) -> Response {
    let upgrade = match Upgrade::check(&app, &mut req) {
        Ok(upgrade) => upgrade,
        Err(e) => return e.into_response(),
    };
    let node = app.node.clone();
    upgrade.spawn(&app, move |stream, read_buf| {
        let framing = Framing::websocket(&node);
        Connection::new(node, stream, read_buf, client, framing).run()
    })
}

/// Serves Bilibili clients on the raw TCP `listener` until `shutdown`
/// resolves. Connections are admitted under the same caps as the HTTP
/// listener's; one over a cap is closed at once (this port has no way to
/// say why). Each connection is a task shutdown waits for: on "going
/// away" it writes what it has queued, then closes.
pub async fn serve_tcp(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>) {
    accept(&app, listener, shutdown, |stream, peer, admitted| {
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(e) => return app.node.metrics.reject(e.code),
        };
        tune(&stream, &app.node.config);
        let node = app.node.clone();
        app.tasks.spawn(async move {
            // Counted under the connection caps until the connection ends.
            let _admitted = admitted;
            // No proxy can forward a client's address on a raw socket: the
            // peer is the client every per-address rule applies to.
            Connection::new(node, stream, Bytes::new(), peer.ip(), Framing::Tcp)
                .run()
                .await;
        });
    })
    .await;
}
