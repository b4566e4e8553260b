//! Transports: the wire between clients and the node.
//!
//! `server` accepts TCP connections and serves HTTP/1.1 on them, each
//! stream wrapped by `timed_io` so that a write stuck for the write timeout
//! fails, and each exchange phase (idle, head, body) bounded by
//! `deadlines`; `http` routes requests (REST, health, metrics, the page);
//! `ws` and `sse` carry feeds to viewers; `admin` holds the moderation
//! routes; `params` reads and checks every route's room, ids and query
//! string; `client` derives each request's client address (behind a
//! trusted reverse proxy, the forwarded one). Only this layer knows about
//! sockets and HTTP.

pub mod admin;
pub mod client;
pub mod deadlines;
pub mod http;
pub mod params;
pub mod server;
pub mod sse;
pub mod timed_io;
pub mod ws;

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::node::Node;

/// What every handler needs: the node, and the tracker that shutdown waits
/// on for connections that outlive their HTTP request (WebSocket, SSE).
#[derive(Clone)]
pub struct App {
    /// The node.
    pub node: Arc<Node>,
    /// Tasks shutdown waits for.
    pub tasks: TaskTracker,
}
