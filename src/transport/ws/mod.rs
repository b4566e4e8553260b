//! The WebSocket transport: `GET /ws?room=R[&since=ID]`.
//!
//! The handshake is answered through hyper's upgrade mechanism; after it the
//! raw `TcpStream` is taken back from hyper so that the connection can write
//! the hub's pre-encoded frames with vectored, non-blocking writes and keep
//! no read buffer while idle.

mod connection;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};

use super::caller::identify;
use super::client::ClientAddr;
use super::params::{Query, WsQuery};
use super::upgrade::Upgrade;
use super::App;
use crate::error::ApiError;

pub use connection::Connection;

/// Answers a WebSocket handshake and starts the connection's task.
pub(super) async fn upgrade(
    State(app): State<App>,
    ClientAddr(client): ClientAddr,
    // Taken as a result: a bad handshake or origin is answered before a
    // bad query.
    query: Result<Query<WsQuery>, ApiError>,
    mut req: Request,
) -> Response {
    // Read before any await: the request body is not Sync, so the future
    // must not hold a reference to the request across one.
    let upgrade = Upgrade::check(&app, &mut req);
    let headers = req.headers().clone();
    let result = async {
        let upgrade = upgrade?;
        let Query(q) = query?;
        let room = q.room()?.to_owned();
        let sender = identify(&app, q.token.as_deref(), &headers, client)?;
        // Joined before answering, so a bad room, a refused token or a
        // closing store is an HTTP error, and nothing published after the
        // 101 can be missed.
        let since = q.since.map(|id| id.0);
        let joined = app.node.watch(&room, &sender, since).await?;
        Ok::<_, ApiError>((upgrade, room, sender, joined))
    }
    .await;
    let (upgrade, room, sender, joined) = match result {
        Ok(ok) => ok,
        Err(e) => return e.into_response(),
    };
    let node = app.node.clone();
    upgrade.spawn(&app, move |stream, read_buf| {
        Connection::new(node, stream, read_buf, room, sender, joined).run()
    })
}
