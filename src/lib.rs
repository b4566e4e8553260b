//! danmaku: a real-time danmaku (bullet comment) server.
//!
//! A send enters through a transport, passes the guard, is made durable by
//! the store (which assigns its per-room id), crosses the bus, and reaches
//! the hub, which encodes it once per room and shares the bytes with every
//! viewer. ARCHITECTURE.md tells the whole path.
//!
//! # Layout
//!
//! - [`danmaku`]: the danmaku type shared by every layer.
//! - [`protocol`]: wire formats: the JSON messages, WebSocket framing, SSE.
//! - [`guard`]: validation at the edge: room names, send content.
//! - [`moderation`]: mutes, bans, room settings, held sends, the audit log.
//! - [`store`]: the `Store` trait and its backends (`sqlite`: embedded).
//! - [`bus`]: the `Bus` trait, its `Event`s and its backends (memory, Redis, NATS).
//! - [`presence`]: cluster-wide viewer counts beside the bus.
//! - [`hub`]: rooms, coalescing, encode-once fan-out.
//! - [`node`]: owns the parts of one server; a viewer's feed.
//! - [`transport`]: the HTTP server, REST routes, WebSocket and SSE.
//! - [`cli`]: the `danmaku` command: `serve`, `send`, `tail`, `bench`.
//! - [`bench`]: the load generator behind `danmaku bench`.
//! - [`config`], [`metrics`], [`error`]: what every part shares.

pub mod bench;
pub mod bus;
pub mod cli;
pub mod config;
pub mod danmaku;
pub mod error;
pub mod guard;
pub mod hub;
pub mod metrics;
pub mod moderation;
pub mod node;
pub mod presence;
pub mod protocol;
pub mod store;
#[cfg(test)]
mod testing;
pub mod transport;
