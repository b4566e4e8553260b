//! Bilibili's live-room binary protocol (the "broadcast" protocol of
//! `/sub` and the TCP port), so the tools people already run against
//! Bilibili (npm `bilibili-live-ws`, Python `blivedm`, overlays, bots) work
//! against a room here by changing only an address.
//!
//! Pure encoding and decoding; the WebSocket and TCP transports and the hub
//! build on it.
//!
//! # Packets
//!
//! Every packet, both ways, is a 16-byte big-endian [`Header`] and a body:
//!
//! | bytes | field | |
//! |---|---|---|
//! | 0..4 | packet length (u32) | header included |
//! | 4..6 | header length (u16) | always 16 |
//! | 6..8 | version (u16) | [`Ver`]: how the body is encoded |
//! | 8..12 | operation (u32) | [`Op`] |
//! | 12..16 | sequence (u32) | clients send 1; not interpreted |
//!
//! A client opens with [`Op::Auth`] (JSON body, [`Auth`]), is answered with
//! [`auth_reply`], then sends [`Op::Heartbeat`] about every 30 s and is
//! answered with [`heartbeat_reply`] holding the room's online count.
//! Everything else the server says is [`Op::Message`]: JSON commands
//! (`{"cmd":…}`), batched by [`encode_batch`] in the compression the client
//! asked for with `protover` (3 brotli, 2 zlib, 0 or 1 none).
//!
//! # What transports must know
//!
//! - **A heartbeat reply is a WebSocket message of its own.** `blivedm`
//!   reads only the first header of a message whose first packet is a
//!   heartbeat reply and drops the rest, so it must never share a message
//!   with commands.
//! - **Never send an empty version-0 body.** `bilibili-live-ws` parses every
//!   version-0 body as JSON; an empty batch is empty bytes, not a packet.
//! - Client packets are read with [`Decoder`], which holds at most one
//!   packet of at most its limit; an error (see [`PacketError`]) closes the
//!   connection. An unknown operation is not a decode error: the transport
//!   decides (ignoring it is what Bilibili does).
//!
//! # Our messages as commands
//!
//! - A danmaku is a `DANMU_MSG` ([`danmu_msg`]) shaped like Bilibili's, with
//!   every index the popular parsers read present and of the right type
//!   (the function documents each slot).
//! - The online count is `ONLINE_RANK_COUNT` ([`online_command`]):
//!   Bilibili's own per-room viewer-count push, `{"count":N,…}`, which
//!   `blive-message-listener` reads as `data.count` and other clients ignore.
//! - A recall is our own `DANMAKU_RECALL` ([`recall_command`]). Bilibili's
//!   `RECALL_DANMU_MSG` exists, but `bilibili-live-ws` routes every command
//!   whose name *contains* `DANMU_MSG` to its `DANMU_MSG` event, whose
//!   listeners index `info` (absent in a recall) and throw;
//!   `tiny-bilibili-ws` (under `blive-message-listener`) does the same. A
//!   name without `DANMU_MSG` is ignored
//!   by every client that does not know it, and a client that wants to hide
//!   recalled danmaku finds their ids in `data.ids`, the same numbers as
//!   `info[0][5]` of the `DANMU_MSG`s.
//!
//! # User ids
//!
//! Bilibili users are numbers; ours are strings. [`user_id`] derives a
//! stable number (the same on every node and version) small enough for
//! JavaScript to read exactly, and [`user_hash`] the `midHash` Bilibili
//! shows instead of the number in public places.

use std::io::{Read, Write};

use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::danmaku::{Danmaku, Mode};

/// The length of every packet header.
pub const HEADER_LEN: usize = 16;

/// The default limit on a client packet, header included. Clients send only
/// auth (a few hundred bytes; a JWT key makes it about 1 KiB) and
/// heartbeats, so this is generous.
pub const DEFAULT_MAX_PACKET: usize = 64 * 1024;

/// The most [`unpack`] inflates a compressed body to: a bomb stops here.
pub const MAX_INFLATED: usize = 16 * 1024 * 1024;

/// The sequence number of the server's replies (what Bilibili sends).
const REPLY_SEQ: u32 = 1;
/// The sequence number of the server's message packets.
const MESSAGE_SEQ: u32 = 0;

/// Brotli quality and window (log2 bytes) for protover-3 batches. The
/// encoder runs once per frame per room, not per viewer, but on every
/// frame. Quality 5 with a small window: higher qualities and larger
/// windows buy little on batches of a few KB (a frame's worth of danmaku)
/// and cost the encoder more per frame. The fan-out with Bilibili viewers
/// costs the server the same CPU as with JSON ones (BENCHMARKS.md).
const BROTLI_QUALITY: i32 = 5;
/// See [`BROTLI_QUALITY`].
const BROTLI_LGWIN: i32 = 18;
/// zlib level for protover-2 batches (only older clients ask for zlib):
/// the same batch is 1066 B in about 0.2 ms at 6, 1214 B at 1 for hardly
/// less time.
const ZLIB_LEVEL: u32 = 6;

/// The operation of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Client → server: keep-alive, about every 30 s.
    Heartbeat = 2,
    /// Server → client: answers a heartbeat with the online count.
    HeartbeatReply = 3,
    /// Server → client: commands (`{"cmd":…}` JSON).
    Message = 5,
    /// Client → server: the first packet, naming the room ([`Auth`]).
    Auth = 7,
    /// Server → client: the auth was accepted.
    AuthReply = 8,
}

impl Op {
    /// The operation's number on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The operation a number stands for, if it is one this protocol uses.
    pub fn from_code(code: u32) -> Option<Op> {
        Some(match code {
            2 => Op::Heartbeat,
            3 => Op::HeartbeatReply,
            5 => Op::Message,
            7 => Op::Auth,
            8 => Op::AuthReply,
            _ => return None,
        })
    }
}

/// The protocol version of a packet: how its body is encoded. A client's
/// `protover` names the version it wants commands in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Ver {
    /// Plain JSON.
    #[default]
    Plain = 0,
    /// The raw body of heartbeats, auth and their replies.
    Control = 1,
    /// zlib-compressed packets (version 0 inside).
    Zlib = 2,
    /// brotli-compressed packets (version 0 inside).
    Brotli = 3,
}

impl Ver {
    /// The version's number on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The version a number stands for, if it is one.
    pub fn from_code(code: u16) -> Option<Ver> {
        Some(match code {
            0 => Ver::Plain,
            1 => Ver::Control,
            2 => Ver::Zlib,
            3 => Ver::Brotli,
            _ => return None,
        })
    }
}

/// A packet header as it is on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The whole packet's length, header included.
    pub packet_len: u32,
    /// The header's length: 16.
    pub header_len: u16,
    /// The protocol version ([`Ver`]).
    pub ver: u16,
    /// The operation ([`Op`]).
    pub op: u32,
    /// The sequence number.
    pub seq: u32,
}

impl Header {
    /// Reads the header at the front of `buf`; `None` when fewer than 16
    /// bytes are there. Nothing is checked.
    pub fn read(buf: &[u8]) -> Option<Header> {
        let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header {
            packet_len: u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
            header_len: u16::from_be_bytes([h[4], h[5]]),
            ver: u16::from_be_bytes([h[6], h[7]]),
            op: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
            seq: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
        })
    }

    /// The 16 bytes of the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&self.packet_len.to_be_bytes());
        h[4..6].copy_from_slice(&self.header_len.to_be_bytes());
        h[6..8].copy_from_slice(&self.ver.to_be_bytes());
        h[8..12].copy_from_slice(&self.op.to_be_bytes());
        h[12..16].copy_from_slice(&self.seq.to_be_bytes());
        h
    }

    /// The header of a packet with a body of `body_len` bytes.
    ///
    /// # Panics
    ///
    /// If the packet would be 4 GiB or more, which its length field cannot
    /// hold: only the server encodes, and its batches are far smaller.
    fn for_body(ver: u16, op: u32, seq: u32, body_len: usize) -> Header {
        let packet_len = u32::try_from(body_len + HEADER_LEN)
            .expect("a packet is shorter than 4 GiB (server batches are small)");
        Header {
            packet_len,
            header_len: HEADER_LEN as u16,
            ver,
            op,
            seq,
        }
    }

    /// Refuses a header whose lengths cannot be right, or whose packet is
    /// over `max` bytes.
    fn check(&self, max: usize) -> Result<(), PacketError> {
        if usize::from(self.header_len) != HEADER_LEN {
            return Err(PacketError::HeaderLen(self.header_len));
        }
        if (self.packet_len as usize) < HEADER_LEN {
            return Err(PacketError::TooShort(self.packet_len));
        }
        if self.packet_len as usize > max {
            return Err(PacketError::TooBig {
                len: self.packet_len,
                max,
            });
        }
        Ok(())
    }
}

/// One packet: its header's fields that are not lengths, and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The protocol version ([`Ver`]).
    pub ver: u16,
    /// The operation ([`Op`]).
    pub op: u32,
    /// The sequence number.
    pub seq: u32,
    /// The body.
    pub body: Bytes,
}

impl Packet {
    /// The operation, if it is one this protocol uses.
    pub fn op(&self) -> Option<Op> {
        Op::from_code(self.op)
    }

    /// The packet's bytes.
    pub fn encode(&self) -> Bytes {
        encode_packet(self.ver, self.op, self.seq, &self.body)
    }
}

/// Why bytes cannot be read as packets (or an auth body as [`Auth`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The header length field is not 16.
    #[error("header length {0}, not 16")]
    HeaderLen(u16),
    /// The packet length is shorter than the header.
    #[error("packet length {0} is shorter than the 16-byte header")]
    TooShort(u32),
    /// The packet is over the limit.
    #[error("packet of {len} bytes over the limit of {max}")]
    TooBig {
        /// The announced packet length.
        len: u32,
        /// The limit.
        max: usize,
    },
    /// The bytes end inside a packet ([`unpack`] only: it reads whole
    /// messages).
    #[error("the bytes end inside a packet")]
    Truncated,
    /// A compressed body does not decompress ([`unpack`] only).
    #[error("a compressed body is corrupt")]
    Corrupt,
    /// A compressed body decompresses to more than [`MAX_INFLATED`]
    /// ([`unpack`] only).
    #[error("a compressed body inflates to more than {0} bytes")]
    Inflated(usize),
    /// The auth body is not a valid [`Auth`].
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Reads client packets from a byte stream delivered in pieces of any size.
///
/// It holds at most one packet, and never more bytes than the limit: a
/// header announcing a packet over the limit is refused as soon as its 16
/// bytes are in, before any of the body is buffered, and the buffer grows
/// with the bytes that actually arrive, not with the length announced.
#[derive(Debug)]
pub struct Decoder {
    max_packet: usize,
    /// The front of a packet not yet whole (at least its header once the
    /// header has passed the checks).
    partial: Vec<u8>,
}

impl Decoder {
    /// A decoder that refuses packets over `max_packet` bytes (header
    /// included; [`DEFAULT_MAX_PACKET`] suits client packets).
    pub fn new(max_packet: usize) -> Decoder {
        Decoder {
            max_packet,
            partial: Vec::new(),
        }
    }

    /// Whether part of a packet is buffered (and so a stream that ends now
    /// ends inside a packet).
    pub fn is_mid_packet(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Takes bytes off the front of `input` until a packet is whole, and
    /// returns it; `Ok(None)` when `input` is used up first (the part read
    /// is kept for the next call). Call it again while it returns a packet:
    /// what follows the packet is left in `input`.
    ///
    /// After an error the stream cannot be read further (every later call
    /// fails the same way); the connection should close.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Packet>, PacketError> {
        if self.partial.is_empty() {
            // The common case, a whole packet in the input, costs no copy
            // into the buffer.
            if let Some(header) = Header::read(input) {
                header.check(self.max_packet)?;
                let len = header.packet_len as usize;
                if let Some(packet) = input.get(..len) {
                    *input = &input[len..];
                    return Ok(Some(packet_of(
                        &header,
                        Bytes::copy_from_slice(&packet[HEADER_LEN..]),
                    )));
                }
            }
        }
        if self.partial.len() < HEADER_LEN {
            let take = (HEADER_LEN - self.partial.len()).min(input.len());
            self.partial.extend_from_slice(&input[..take]);
            *input = &input[take..];
        }
        let Some(header) = Header::read(&self.partial) else {
            return Ok(None);
        };
        header.check(self.max_packet)?;
        let len = header.packet_len as usize;
        let take = (len - self.partial.len()).min(input.len());
        if take > 0 {
            // Grow by doubling (amortised), but never past the packet.
            let want = (self.partial.len() + take)
                .max(self.partial.capacity() * 2)
                .min(len);
            self.partial
                .reserve_exact(want.saturating_sub(self.partial.len()));
            self.partial.extend_from_slice(&input[..take]);
            *input = &input[take..];
        }
        if self.partial.len() < len {
            return Ok(None);
        }
        let whole = Bytes::from(std::mem::take(&mut self.partial));
        Ok(Some(packet_of(&header, whole.slice(HEADER_LEN..))))
    }
}

fn packet_of(header: &Header, body: Bytes) -> Packet {
    Packet {
        ver: header.ver,
        op: header.op,
        seq: header.seq,
        body,
    }
}

/// Appends one packet to `out`.
///
/// # Panics
///
/// If the packet would be 4 GiB or more (see [`Header`]).
pub fn write_packet(out: &mut Vec<u8>, ver: u16, op: u32, seq: u32, body: &[u8]) {
    out.extend_from_slice(&Header::for_body(ver, op, seq, body.len()).to_bytes());
    out.extend_from_slice(body);
}

/// One packet's bytes.
pub fn encode_packet(ver: u16, op: u32, seq: u32, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    write_packet(&mut out, ver, op, seq, body);
    Bytes::from(out)
}

/// Why an auth body was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The body is not UTF-8.
    #[error("auth body is not UTF-8")]
    NotUtf8,
    /// The body is not a JSON object.
    #[error("auth body is not a JSON object")]
    NotJson,
    /// There is no `roomid` (or it is `null`).
    #[error("auth has no roomid")]
    MissingRoom,
    /// `roomid` is not a non-negative integer (or a string of one).
    #[error("roomid must be a non-negative integer")]
    BadRoom,
    /// `uid` is not a non-negative integer (or a string of one).
    #[error("uid must be a non-negative integer")]
    BadUid,
    /// `protover` is not 0, 1, 2 or 3.
    #[error("protover must be 0, 1, 2 or 3")]
    BadProtover,
    /// `key` is not a string.
    #[error("key must be a string")]
    BadKey,
}

/// The body of a client's auth packet.
///
/// Real clients send `{"uid":0,"roomid":N,"protover":3,"platform":"web",
/// "type":2,"key":"…"}` (`buvid` and `clientver` too, from some). Numbers
/// may also come as strings of digits; fields this server does not use are
/// ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    /// The room: our room named by this number (plus any configured prefix).
    pub roomid: u64,
    /// The Bilibili user id the client claims (0 when absent: a guest).
    /// Not trusted: identity comes from `key`.
    pub uid: u64,
    /// The version commands are sent in. Absent: plain, as Bilibili
    /// served clients from before compression, which did not send it.
    pub protover: Ver,
    /// Bilibili's token, or our JWT ([`None`] when absent or `null`).
    pub key: Option<String>,
}

impl Auth {
    /// Parses an auth packet's body.
    pub fn parse(body: &[u8]) -> Result<Auth, AuthError> {
        let text = std::str::from_utf8(body).map_err(|_| AuthError::NotUtf8)?;
        let mut fields: serde_json::Map<String, Value> =
            serde_json::from_str(text).map_err(|_| AuthError::NotJson)?;
        let roomid = match fields.remove("roomid") {
            None | Some(Value::Null) => return Err(AuthError::MissingRoom),
            Some(v) => whole_number(&v).ok_or(AuthError::BadRoom)?,
        };
        let uid = match fields.remove("uid") {
            None | Some(Value::Null) => 0,
            Some(v) => whole_number(&v).ok_or(AuthError::BadUid)?,
        };
        let protover = match fields.remove("protover") {
            None | Some(Value::Null) => Ver::default(),
            Some(v) => whole_number(&v)
                .and_then(|n| u16::try_from(n).ok())
                .and_then(Ver::from_code)
                .ok_or(AuthError::BadProtover)?,
        };
        let key = match fields.remove("key") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(AuthError::BadKey),
        };
        Ok(Auth {
            roomid,
            uid,
            protover,
            key,
        })
    }
}

/// A JSON non-negative integer, or a string of ASCII digits holding one.
fn whole_number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
}

/// The answer to an accepted auth: op 8, version 1, `{"code":0}`.
pub fn auth_reply() -> Bytes {
    encode_packet(
        Ver::Control.code(),
        Op::AuthReply.code(),
        REPLY_SEQ,
        br#"{"code":0}"#,
    )
}

/// The answer to a heartbeat: op 3, version 1, the online count as a
/// 4-byte big-endian body (clients read exactly 4 bytes).
pub fn heartbeat_reply(online: u32) -> Bytes {
    encode_packet(
        Ver::Control.code(),
        Op::HeartbeatReply.code(),
        REPLY_SEQ,
        &online.to_be_bytes(),
    )
}

/// The largest integer a JavaScript number holds exactly (2^53 − 1).
const JS_MAX_SAFE: u64 = (1 << 53) - 1;

/// The Bilibili user id (`uid`, `info[2][0]`) of one of our users: the
/// first 8 bytes of the SHA-256 of the user id's UTF-8, big-endian, kept
/// to their low 53 bits.
///
/// Stable (the same on every node, for ever: changing it would make every
/// user someone else to the clients that remember uids), spread evenly,
/// and at most 2^53 − 1 so that JavaScript reads it exactly. 0, Bilibili's
/// "not logged in", comes out only by a 1-in-2^53 chance.
pub fn user_id(our_user_id: &str) -> u64 {
    let digest = Sha256::digest(our_user_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) & JS_MAX_SAFE
}

/// The user hash of a Bilibili uid (`info[0][7]`, and the `midHash` or
/// `userhash` of Bilibili's danmaku files): the CRC-32 (IEEE) of the uid
/// in decimal, in lower-case hex without leading zeros, exactly as
/// Bilibili computes it, so tools that look a hash up find the
/// [`user_id`] it stands for.
pub fn user_hash(uid: u64) -> String {
    format!("{:x}", crc32fast::hash(uid.to_string().as_bytes()))
}

/// The `midHash` of one of our users, as Bilibili's files and segments
/// carry it: [`user_hash`] of the user's [`user_id`], so the XML export,
/// the protobuf segments and the live `DANMU_MSG`s name a user alike.
pub fn member_hash(user: &str) -> String {
    user_hash(user_id(user))
}

/// Bilibili's number for a mode (`info[0][1]`, and `mode` in its files).
pub fn mode_code(mode: Mode) -> u8 {
    match mode {
        Mode::Scroll => 1,
        Mode::Bottom => 4,
        Mode::Top => 5,
        Mode::Reverse => 6,
    }
}

/// The `DANMU_MSG` command of a danmaku.
///
/// `info` has the 18 slots Bilibili sends today; these are filled from the
/// danmaku, the rest hold the empty or zero value of their type, so clients
/// that index them (`blivedm` reads `info[16][0]` and `info[0][15]`,
/// `blive-message-listener` parses `info[0][15].extra` as JSON) do not fail:
///
/// - `info[0]`: `[0, mode, size, colour, ts (ms), id, 0, user hash, 0, 0, 0,
///   "", 0, "{}", "{}", {mode info}, {activity}, 0]`. Slot 5 is Bilibili's
///   `rnd`, which clients use to tell danmaku apart: ours is the danmaku id
///   (exact in JavaScript below 2^53). The mode info (slot 15) is
///   `{"mode":0,"show_player_type":0,"extra":"{}"}`: `extra` must be a
///   string of JSON, which clients parse. Bilibili also puts the sender
///   in it (`user.base.name`), because it masks the name in `info[2]`
///   for guests; ours is never masked, so clients that look there first
///   find it in `info[2]` as they do for Bilibili's older messages, and
///   every danmaku is some 40 bytes lighter (a tenth of its compressed
///   size).
/// - `info[1]`: the text. `info[2]`: `[uid, name, 0, 0, 0, 10000, 1, ""]`.
/// - `info[3]` medal `[]`; `info[4]` level `[0, 0, 0, ">50000", 0]`;
///   `info[5]` title `["", ""]`; `info[6]` 0; `info[7]` guard 0;
///   `info[8]` null; `info[9]` `{"ts": seconds, "ct": ""}`; then
///   `0, 0, null, null, 0, 0, [0], null` (`info[16]` is the wealth level).
pub fn danmu_msg(d: &Danmaku) -> Vec<u8> {
    let uid = user_id(&d.user);
    let mut out = Vec::with_capacity(360 + 2 * (d.text.len() + d.name.len()));
    out.extend_from_slice(br#"{"cmd":"DANMU_MSG","info":[[0,"#);
    write_num(&mut out, mode_code(d.mode));
    out.push(b',');
    write_num(&mut out, d.size);
    out.push(b',');
    write_num(&mut out, d.color.0 & 0xff_ff_ff);
    out.push(b',');
    write_num(&mut out, d.ts);
    out.push(b',');
    write_num(&mut out, d.id);
    out.extend_from_slice(b",0,\"");
    out.extend_from_slice(user_hash(uid).as_bytes());
    out.extend_from_slice(
        br#"",0,0,0,"",0,"{}","{}",{"mode":0,"show_player_type":0,"extra":"{}"},{"activity_identity":"","activity_source":0,"not_show":0},0],"#,
    );
    write_str(&mut out, &d.text);
    out.extend_from_slice(b",[");
    write_num(&mut out, uid);
    out.push(b',');
    write_str(&mut out, &d.name);
    out.extend_from_slice(br#",0,0,0,10000,1,""],[],[0,0,0,">50000",0],["",""],0,0,null,{"ts":"#);
    write_num(&mut out, d.ts.div_euclid(1000));
    out.extend_from_slice(br#","ct":""},0,0,null,null,0,0,[0],null]}"#);
    out
}

/// The `ONLINE_RANK_COUNT` command: the room's viewer count, in the fields
/// Bilibili sends (`count` and `online_count`, with their text forms).
pub fn online_command(count: u64) -> Vec<u8> {
    format!(
        r#"{{"cmd":"ONLINE_RANK_COUNT","data":{{"count":{count},"count_text":"{count}","online_count":{count},"online_count_text":"{count}"}}}}"#
    )
    .into_bytes()
}

/// The `DANMAKU_RECALL` command (ours; the module doc tells why not
/// Bilibili's): `{"cmd":"DANMAKU_RECALL","data":{"ids":[…]}}`, the ids
/// being those of the `DANMU_MSG`s (`info[0][5]`).
pub fn recall_command(ids: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + 8 * ids.len());
    out.extend_from_slice(br#"{"cmd":"DANMAKU_RECALL","data":{"ids":["#);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_num(&mut out, *id);
    }
    out.extend_from_slice(b"]}}");
    out
}

fn write_num(out: &mut Vec<u8>, n: impl std::fmt::Display) {
    write!(out, "{n}").expect("formatting into a Vec cannot fail");
}

/// Appends `s` as a JSON string.
fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("a string always serialises into a Vec");
}

/// Appends the packets carrying `commands` in version `ver` to `out`
/// (nothing for no commands); see [`encode_batch`].
pub fn write_batch<C: AsRef<[u8]>>(out: &mut Vec<u8>, ver: Ver, commands: &[C]) {
    if commands.is_empty() {
        return;
    }
    let plain_len: usize = commands.iter().map(|c| HEADER_LEN + c.as_ref().len()).sum();
    let mut plain = Vec::with_capacity(plain_len);
    for c in commands {
        write_packet(
            &mut plain,
            Ver::Plain.code(),
            Op::Message.code(),
            MESSAGE_SEQ,
            c.as_ref(),
        );
    }
    let start = out.len();
    match ver {
        Ver::Plain | Ver::Control => {
            out.extend_from_slice(&plain);
            return;
        }
        Ver::Zlib => {
            out.extend_from_slice(&[0; HEADER_LEN]);
            let mut z =
                flate2::write::ZlibEncoder::new(&mut *out, flate2::Compression::new(ZLIB_LEVEL));
            z.write_all(&plain)
                .and_then(|()| z.try_finish())
                .expect("compressing into a Vec cannot fail");
        }
        Ver::Brotli => {
            out.extend_from_slice(&[0; HEADER_LEN]);
            let params = brotli::enc::BrotliEncoderParams {
                quality: BROTLI_QUALITY,
                lgwin: BROTLI_LGWIN,
                size_hint: plain.len(),
                ..Default::default()
            };
            brotli::BrotliCompress(&mut plain.as_slice(), out, &params)
                .expect("reading a slice and writing a Vec cannot fail");
        }
    }
    let header = Header::for_body(
        ver.code(),
        Op::Message.code(),
        MESSAGE_SEQ,
        out.len() - start - HEADER_LEN,
    );
    out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
}

/// The bytes that carry `commands` (each a JSON command such as
/// [`danmu_msg`]) to a client of version `ver`: for [`Ver::Zlib`] and
/// [`Ver::Brotli`] one packet of that version whose body is the compressed
/// version-0 packets, one per command; for [`Ver::Plain`] and
/// [`Ver::Control`] those version-0 packets as they are. Empty for no
/// commands. The hub encodes a frame once per room and version, and every
/// viewer of that version shares the bytes.
///
/// Brotli makes a busy room's batch at least 3× smaller than its JSON
/// frame (`compressed_batches_are_several_times_smaller_than_json`).
pub fn encode_batch<C: AsRef<[u8]>>(ver: Ver, commands: &[C]) -> Bytes {
    let mut out = Vec::new();
    write_batch(&mut out, ver, commands);
    Bytes::from(out)
}

/// Splits server → client bytes (a WebSocket message, or a TCP read of
/// whole packets) into packets, inflating version 2 and 3 message packets
/// into the packets they hold (one level: what is inside is returned as it
/// is). For tests and the bench's Bilibili viewer.
pub fn unpack(bytes: &[u8]) -> Result<Vec<Packet>, PacketError> {
    let mut out = Vec::new();
    for packet in split(bytes)? {
        let inflated = match (Ver::from_code(packet.ver), packet.op()) {
            (Some(Ver::Zlib), Some(Op::Message)) => {
                inflate(flate2::read::ZlibDecoder::new(&packet.body[..]))?
            }
            (Some(Ver::Brotli), Some(Op::Message)) => {
                inflate(brotli::Decompressor::new(&packet.body[..], 4096))?
            }
            _ => {
                out.push(packet);
                continue;
            }
        };
        out.extend(split(&inflated)?);
    }
    Ok(out)
}

/// The whole packets `bytes` is made of.
fn split(bytes: &[u8]) -> Result<Vec<Packet>, PacketError> {
    let mut decoder = Decoder::new(u32::MAX as usize);
    let mut rest = bytes;
    let mut out = Vec::new();
    while let Some(packet) = decoder.decode(&mut rest)? {
        out.push(packet);
    }
    if decoder.is_mid_packet() {
        return Err(PacketError::Truncated);
    }
    Ok(out)
}

/// Everything `reader` decompresses to, up to [`MAX_INFLATED`] bytes.
fn inflate(reader: impl Read) -> Result<Vec<u8>, PacketError> {
    let mut out = Vec::new();
    reader
        .take(MAX_INFLATED as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| PacketError::Corrupt)?;
    if out.len() > MAX_INFLATED {
        return Err(PacketError::Inflated(MAX_INFLATED));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::danmaku::Color;

    /// Every packet `bytes` decodes to, fed in chunks of `chunk` bytes.
    fn decode_chunked(max: usize, bytes: &[u8], chunk: usize) -> Result<Vec<Packet>, PacketError> {
        let mut d = Decoder::new(max);
        let mut out = Vec::new();
        for mut piece in bytes.chunks(chunk) {
            while let Some(p) = d.decode(&mut piece)? {
                out.push(p);
            }
            assert!(
                piece.is_empty(),
                "decode returns None only when input is used up"
            );
            assert!(d.partial.capacity() <= max.max(HEADER_LEN));
        }
        Ok(out)
    }

    #[test]
    fn header_round_trips() {
        let h = Header {
            packet_len: 0x0102_0304,
            header_len: 16,
            ver: 3,
            op: 0xdead_beef,
            seq: 7,
        };
        assert_eq!(Header::read(&h.to_bytes()), Some(h));
        assert_eq!(Header::read(&h.to_bytes()[..15]), None);
        let p = encode_packet(1, 7, 1, b"{}");
        assert_eq!(
            Header::read(&p),
            Some(Header {
                packet_len: 18,
                header_len: 16,
                ver: 1,
                op: 7,
                seq: 1
            })
        );
        for code in 0..12 {
            if let Some(op) = Op::from_code(code) {
                assert_eq!(op.code(), code);
            }
        }
        for code in 0..5 {
            assert_eq!(
                Ver::from_code(code).map(Ver::code),
                (code < 4).then_some(code)
            );
        }
    }

    #[test]
    fn decodes_a_stream_however_it_is_split() {
        let packets = vec![
            Packet {
                ver: 1,
                op: 7,
                seq: 1,
                body: Bytes::from_static(br#"{"roomid":1}"#),
            },
            Packet {
                ver: 1,
                op: 2,
                seq: 2,
                body: Bytes::new(),
            },
            // An unknown operation is a packet like any other.
            Packet {
                ver: 9,
                op: 99,
                seq: 3,
                body: Bytes::from(vec![0xff; 300]),
            },
        ];
        let bytes: Vec<u8> = packets.iter().flat_map(|p| p.encode().to_vec()).collect();
        for chunk in [1, 2, 15, 16, 17, 100, bytes.len()] {
            assert_eq!(
                decode_chunked(4096, &bytes, chunk),
                Ok(packets.clone()),
                "{chunk}"
            );
        }
        // Every proper prefix of one packet is incomplete.
        let one = packets[2].encode();
        for cut in 0..one.len() {
            let mut d = Decoder::new(4096);
            let mut input = &one[..cut];
            assert_eq!(d.decode(&mut input), Ok(None));
            assert_eq!(d.is_mid_packet(), cut > 0);
        }
    }

    #[test]
    fn refuses_bad_headers_before_the_body_arrives() {
        let mut wrong_header = encode_packet(1, 2, 1, b"").to_vec();
        wrong_header[5] = 20;
        let mut short = encode_packet(1, 2, 1, b"").to_vec();
        short[3] = 15;
        let big = Header::for_body(1, 7, 1, 5000).to_bytes();
        let huge = Header::for_body(1, 7, 1, u32::MAX as usize - 16).to_bytes();
        let cases: [(&[u8], PacketError); 4] = [
            (&wrong_header, PacketError::HeaderLen(20)),
            (&short, PacketError::TooShort(15)),
            (
                &big,
                PacketError::TooBig {
                    len: 5016,
                    max: 4096,
                },
            ),
            (
                &huge,
                PacketError::TooBig {
                    len: u32::MAX,
                    max: 4096,
                },
            ),
        ];
        for (bytes, err) in cases {
            for chunk in [1, 16] {
                assert_eq!(decode_chunked(4096, bytes, chunk), Err(err.clone()));
            }
        }
        // A packet of exactly the limit passes.
        let exact = encode_packet(1, 7, 1, &[b'x'; 4096 - 16]);
        assert_eq!(decode_chunked(4096, &exact, 1000).map(|p| p.len()), Ok(1));
    }

    #[test]
    fn auth_reads_what_real_clients_send() {
        // bilibili-live-ws's default join.
        let a = Auth::parse(br#"{"uid":0,"roomid":23058,"protover":2,"platform":"web","type":2}"#);
        assert_eq!(
            a,
            Ok(Auth {
                roomid: 23058,
                uid: 0,
                protover: Ver::Zlib,
                key: None
            })
        );
        // blivedm's, with a key and buvid; numbers as strings.
        let a = Auth::parse(
            br#"{"uid":"160148624","roomid":"22608112","protover":3,"platform":"web","type":2,"buvid":"x","key":"0vpTHW=="}"#,
        );
        assert_eq!(
            a,
            Ok(Auth {
                roomid: 22_608_112,
                uid: 160_148_624,
                protover: Ver::Brotli,
                key: Some("0vpTHW==".into())
            })
        );
        // Only roomid is required.
        assert_eq!(
            Auth::parse(br#" {"roomid":5,"key":null,"uid":null} "#),
            Ok(Auth {
                roomid: 5,
                uid: 0,
                protover: Ver::Plain,
                key: None
            })
        );
        assert_eq!(
            Auth::parse(br#"{"roomid":18446744073709551615,"protover":"1"}"#)
                .map(|a| (a.roomid, a.protover)),
            Ok((u64::MAX, Ver::Control))
        );
    }

    #[test]
    fn auth_refusals_are_typed() {
        let cases: [(&[u8], AuthError); 17] = [
            (b"\xff{}", AuthError::NotUtf8),
            (b"", AuthError::NotJson),
            (b"[object Object]", AuthError::NotJson),
            (br#"[1,2,3]"#, AuthError::NotJson),
            (br#"{"roomid":1"#, AuthError::NotJson),
            (br#"{}"#, AuthError::MissingRoom),
            (br#"{"roomid":null}"#, AuthError::MissingRoom),
            (br#"{"roomid":-1}"#, AuthError::BadRoom),
            (br#"{"roomid":1.5}"#, AuthError::BadRoom),
            (br#"{"roomid":"1e3"}"#, AuthError::BadRoom),
            (br#"{"roomid":""}"#, AuthError::BadRoom),
            (br#"{"roomid":"18446744073709551616"}"#, AuthError::BadRoom),
            (br#"{"roomid":[1]}"#, AuthError::BadRoom),
            (br#"{"roomid":1,"uid":"+3"}"#, AuthError::BadUid),
            (br#"{"roomid":1,"protover":4}"#, AuthError::BadProtover),
            (br#"{"roomid":1,"protover":65538}"#, AuthError::BadProtover),
            (br#"{"roomid":1,"key":7}"#, AuthError::BadKey),
        ];
        for (body, err) in cases {
            assert_eq!(
                Auth::parse(body),
                Err(err.clone()),
                "{}",
                String::from_utf8_lossy(body)
            );
            // Both kinds of error meet in PacketError for the transport.
            assert_eq!(PacketError::from(err.clone()).to_string(), err.to_string());
        }
    }

    #[test]
    fn replies_are_byte_exact() {
        // The bytes Bilibili sends (bilibili-API-collect's captures).
        let mut auth = vec![0, 0, 0, 0x1a, 0, 0x10, 0, 1, 0, 0, 0, 8, 0, 0, 0, 1];
        auth.extend_from_slice(br#"{"code":0}"#);
        assert_eq!(auth_reply(), auth);
        assert_eq!(
            heartbeat_reply(5251),
            [0, 0, 0, 0x14, 0, 0x10, 0, 1, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0x14, 0x83][..]
        );
    }

    /// A danmaku with text and a name that need escaping.
    fn tricky() -> Danmaku {
        let mut d = Danmaku::sample("r", 42);
        d.user = "alice@example".into();
        d.name = "Al \"ice\" 爱丽丝".into();
        d.text = "弹幕 \"quoted\" \\ </script>\n[doge]".into();
        d.mode = Mode::Top;
        d.color = Color(0x12_34_56);
        d.size = 36;
        d.ts = 1_700_000_123_456;
        d
    }

    #[test]
    fn danmu_msg_has_every_slot_clients_read() {
        let d = tricky();
        let v: Value = serde_json::from_slice(&danmu_msg(&d)).unwrap();
        assert_eq!(v["cmd"], "DANMU_MSG");
        let info = v["info"].as_array().unwrap();
        assert_eq!(info.len(), 18);
        let uid = user_id("alice@example");
        let i0 = info[0].as_array().unwrap();
        assert_eq!(i0.len(), 18);
        assert_eq!(i0[0], 0);
        assert_eq!(i0[1], 5, "top is bilibili's mode 5");
        assert_eq!(i0[2], 36);
        assert_eq!(i0[3], 0x12_34_56);
        assert_eq!(i0[4], 1_700_000_123_456_i64);
        assert_eq!(i0[5], 42, "rnd carries the id");
        assert_eq!(i0[7], user_hash(uid));
        assert_eq!(i0[9], 0, "not a lottery danmaku");
        assert_eq!(i0[10], 0);
        assert_eq!(i0[11], "");
        assert_eq!(i0[12], 0, "a text danmaku");
        assert_eq!(i0[13], "{}");
        assert_eq!(i0[14], "{}");
        let mode_info = &i0[15];
        let extra: Value = serde_json::from_str(mode_info["extra"].as_str().unwrap()).unwrap();
        assert!(extra.is_object() && extra["emots"].is_null());
        // blivedm reads the face here inside a try.
        assert!(mode_info["user"].is_null());
        assert!(i0[16].is_object());
        assert_eq!(info[1], d.text.as_str());
        let user = info[2].as_array().unwrap();
        assert_eq!(user.len(), 8);
        assert_eq!(user[0], uid);
        assert_eq!(user[1], d.name.as_str());
        assert_eq!(
            &user[2..],
            &serde_json::json!([0, 0, 0, 10000, 1, ""])
                .as_array()
                .unwrap()[..]
        );
        assert_eq!(info[3], serde_json::json!([]), "no medal");
        assert_eq!(info[4], serde_json::json!([0, 0, 0, ">50000", 0]));
        assert_eq!(info[5], serde_json::json!(["", ""]));
        assert_eq!(info[6], 0);
        assert_eq!(info[7], 0, "no guard");
        assert!(info[8].is_null());
        assert_eq!(info[9], serde_json::json!({"ts": 1_700_000_123, "ct": ""}));
        assert_eq!(info[16], serde_json::json!([0]), "wealth level");
        // Every mode maps to bilibili's number.
        for (mode, code) in [
            (Mode::Scroll, 1),
            (Mode::Bottom, 4),
            (Mode::Top, 5),
            (Mode::Reverse, 6),
        ] {
            let d = Danmaku {
                mode,
                ..Danmaku::sample("r", 1)
            };
            let v: Value = serde_json::from_slice(&danmu_msg(&d)).unwrap();
            assert_eq!(v["info"][0][1], code);
        }
    }

    #[test]
    fn control_commands_have_bilibilis_shape() {
        let v: Value = serde_json::from_slice(&online_command(1234)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cmd": "ONLINE_RANK_COUNT", "data": {
                "count": 1234, "count_text": "1234",
                "online_count": 1234, "online_count_text": "1234"}})
        );
        let v: Value = serde_json::from_slice(&recall_command(&[3, 9])).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cmd": "DANMAKU_RECALL", "data": {"ids": [3, 9]}})
        );
        assert!(!v["cmd"].as_str().unwrap().contains("DANMU_MSG"));
        let v: Value = serde_json::from_slice(&recall_command(&[])).unwrap();
        assert_eq!(v["data"]["ids"], serde_json::json!([]));
    }

    #[test]
    fn batches_carry_their_commands_in_each_version() {
        let commands: Vec<Vec<u8>> = (1..=20)
            .map(|id| danmu_msg(&Danmaku::sample("r", id)))
            .chain([online_command(7), recall_command(&[1])])
            .collect();
        let expected: Vec<Packet> = commands
            .iter()
            .map(|c| Packet {
                ver: 0,
                op: 5,
                seq: 0,
                body: Bytes::from(c.clone()),
            })
            .collect();
        for ver in [Ver::Plain, Ver::Control, Ver::Zlib, Ver::Brotli] {
            let bytes = encode_batch(ver, &commands);
            assert_eq!(unpack(&bytes), Ok(expected.clone()), "{ver:?}");
            let outer = split(&bytes).unwrap();
            match ver {
                Ver::Zlib | Ver::Brotli => {
                    assert_eq!(outer.len(), 1, "one packet for the whole batch");
                    assert_eq!((outer[0].ver, outer[0].op), (ver.code(), 5));
                    assert!(bytes.len() < expected.len() * 100, "compressed");
                }
                Ver::Plain | Ver::Control => assert_eq!(outer, expected),
            }
            assert!(encode_batch::<Vec<u8>>(ver, &[]).is_empty());
        }
        // Appending keeps what the buffer held.
        let mut out = b"head".to_vec();
        write_batch(&mut out, Ver::Brotli, &commands);
        assert_eq!(&out[..4], b"head");
        assert_eq!(unpack(&out[4..]), Ok(expected));
    }

    #[test]
    fn unpack_refuses_broken_and_bombed_bodies() {
        let whole = encode_batch(Ver::Plain, &[online_command(1)]);
        assert_eq!(
            unpack(&whole[..whole.len() - 1]),
            Err(PacketError::Truncated)
        );
        assert_eq!(unpack(&whole[..3]), Err(PacketError::Truncated));
        for ver in [2, 3] {
            let garbage = encode_packet(ver, 5, 0, b"not compressed at all");
            assert_eq!(unpack(&garbage), Err(PacketError::Corrupt), "{ver}");
        }
        // Inside a compressed body, the same framing rules hold.
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&[0; 20]).unwrap();
        let zeros = encode_packet(2, 5, 0, &z.finish().unwrap());
        assert_eq!(unpack(&zeros), Err(PacketError::HeaderLen(0)));
        // A bomb stops at the limit.
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        for _ in 0..=MAX_INFLATED / 65_536 {
            z.write_all(&[0; 65_536]).unwrap();
        }
        let bomb = encode_packet(2, 5, 0, &z.finish().unwrap());
        assert!(bomb.len() < 100_000);
        assert_eq!(unpack(&bomb), Err(PacketError::Inflated(MAX_INFLATED)));
    }

    #[test]
    fn user_ids_are_stable_and_exact_in_javascript() {
        // Pinned: changing the derivation would make every user someone
        // else to clients that remember uids. SHA-256("alice") starts
        // 2bd806c97f0e00af; its low 53 bits:
        assert_eq!(user_id("alice"), 0x18_06c9_7f0e_00af);
        assert_eq!(user_id("alice"), user_id("alice"));
        assert_ne!(user_id("alice"), user_id("bob"));
        for u in ["", "guest-1", "长名字", &"x".repeat(1000)] {
            assert!(user_id(u) <= JS_MAX_SAFE, "{u}");
        }
        // Bilibili's midHash: CRC-32 of the decimal uid, no leading zeros.
        assert_eq!(user_hash(1), "83dcefb7");
        let small = (0..100_000u64)
            .find(|&uid| crc32fast::hash(uid.to_string().as_bytes()) < 0x1000_0000)
            .unwrap();
        let h = user_hash(small);
        assert!(h.len() < 8 && !h.starts_with('0'), "{h}");
        assert_eq!(
            u32::from_str_radix(&h, 16).unwrap(),
            crc32fast::hash(small.to_string().as_bytes())
        );
    }
}

/// What a batch weighs on the wire against our JSON frame (the issue's
/// target: brotli at least 3× smaller). Sizes only: encode time is a
/// benchmark's business (BENCHMARKS.md, "Bilibili protocol": the same
/// server CPU for both protocols).
#[cfg(test)]
mod measure {
    use super::*;
    use crate::danmaku::{Color, Danmaku};
    use crate::protocol::frames::ServerMessage;
    use crate::protocol::websocket;

    /// 20 danmaku as a busy room sends them: short texts, mostly CJK, from
    /// different users.
    fn batch() -> Vec<Danmaku> {
        let texts = [
            "哈哈哈哈哈哈",
            "前方高能",
            "666666",
            "这个操作太秀了吧",
            "awsl",
            "主播加油！",
            "草",
            "2333333",
            "好听好听好听",
            "来了来了",
        ];
        (0..20u64)
            .map(|i| Danmaku {
                id: 1_000_000 + i,
                room: "22608112".into(),
                user: format!("user-{}", 48_213 + i * 7919),
                name: format!("观众{}", 100 + i * 37),
                text: texts[(i as usize * 7) % texts.len()].into(),
                mode: Mode::ALL[(i % 7 == 0) as usize],
                color: if i % 5 == 0 {
                    Color(0xfe_e1_1e)
                } else {
                    Color::WHITE
                },
                size: 25,
                ts: 1_700_000_000_000 + i as i64 * 37,
                vt: None,
                priority: false,
            })
            .collect()
    }

    /// 20 danmaku as `danmaku bench` sends them: one guest (the bench's
    /// senders share an address), texts of a stamp and a microsecond clock.
    fn bench_batch() -> Vec<Danmaku> {
        (0..20u64)
            .map(|i| Danmaku {
                id: 1_000_000 + i,
                room: "bench-0".into(),
                user: "guest-7f3e2a91c0".into(),
                name: "guest".into(),
                text: format!("bench {}", 1_700_000_000_123_456 + i * 3_331),
                mode: Mode::Scroll,
                color: Color::WHITE,
                size: 25,
                ts: 1_700_000_000_000 + i as i64 * 3,
                vt: None,
                priority: false,
            })
            .collect()
    }

    /// The JSON WebSocket frame of `items`, and their frame for `ver`.
    fn sizes(items: &[Danmaku], ver: Ver) -> (usize, usize) {
        let json = crate::hub::encode_ws(&ServerMessage::danmaku(items));
        let commands: Vec<Vec<u8>> = items.iter().map(danmu_msg).collect();
        let frame = websocket::frame(websocket::Opcode::Binary, &encode_batch(ver, &commands));
        (json.len(), frame.len())
    }

    #[test]
    fn compressed_batches_are_several_times_smaller_than_json() {
        for (name, items, brotli_at_least) in
            [("busy room", batch(), 3.0), ("bench", bench_batch(), 3.0)]
        {
            let (json, brotli) = sizes(&items, Ver::Brotli);
            let (_, zlib) = sizes(&items, Ver::Zlib);
            let (_, plain) = sizes(&items, Ver::Plain);
            let ratio = json as f64 / brotli as f64;
            assert!(
                ratio >= brotli_at_least,
                "{name}: brotli {brotli} B vs JSON {json} B"
            );
            assert!(
                brotli <= zlib && zlib < plain,
                "{name}: {brotli} / {zlib} / {plain}"
            );
        }
    }
}
