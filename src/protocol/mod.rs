//! Wire formats: how danmaku and control messages look on each transport.
//!
//! Everything here is pure encoding and decoding of bytes, with no sockets
//! and no state, so the hub can encode a frame once and every transport can
//! send the same bytes.

pub mod bilibili;
pub mod bilibili_xml;
pub mod dplayer;
pub mod frames;
pub mod segment;
pub mod sse;
pub mod websocket;
