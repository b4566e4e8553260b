//! The bench viewer's Bilibili wire (`--protocol bilibili`): the auth and
//! heartbeat packets it sends at `/sub`, and how it reads the server's
//! binary messages without decompressing each one per viewer.
//!
//! Every viewer of a room receives byte-identical messages (the server
//! packs each frame once per room and version), so the danmaku a
//! compressed body holds are decoded once per process and remembered in a
//! [`Memo`]; a viewer then only walks the WebSocket and packet headers,
//! hashes each body, and looks it up. Without it, 10,000 viewers would
//! each inflate every brotli message, and on a machine the server shares
//! the generator would be what the figures measured.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::viewer::{frame_at, masked_frame, now_micros, Seen, STAMP};
use crate::protocol::bilibili::{self, Header, Op, Ver, HEADER_LEN};

/// The WebSocket opcode of a binary message.
const BINARY: u8 = 0x2;
/// The WebSocket opcode of a close.
const CLOSE: u8 = 0x8;
/// The sequence number clients put in their packets.
const CLIENT_SEQ: u32 = 1;

/// The masked WebSocket message carrying the auth packet for `roomid`, in
/// brotli (protover 3), with the bench's token as the key when it has one.
pub fn auth_frame(roomid: u64) -> Vec<u8> {
    let body = serde_json::json!({
        "uid": 0,
        "roomid": roomid,
        "protover": Ver::Brotli.code(),
        "platform": "web",
        "type": 2,
        "key": super::TOKEN.get(),
    });
    let packet = bilibili::encode_packet(
        Ver::Control.code(),
        Op::Auth.code(),
        CLIENT_SEQ,
        body.to_string().as_bytes(),
    );
    masked_frame(BINARY, &packet)
}

/// The masked WebSocket message carrying a heartbeat packet (its body is
/// what browsers send; the server reads none of it).
pub fn heartbeat_frame() -> Vec<u8> {
    let packet = bilibili::encode_packet(
        Ver::Control.code(),
        Op::Heartbeat.code(),
        CLIENT_SEQ,
        b"[object Object]",
    );
    masked_frame(BINARY, &packet)
}

/// Sends the auth packet for `roomid` and waits for its reply, so that a
/// viewer counts as connected only once it is in the room; what follows
/// the reply stays in `buf`.
pub async fn join(stream: &mut TcpStream, buf: &mut BytesMut, roomid: u64) -> io::Result<()> {
    stream.write_all(&auth_frame(roomid)).await?;
    loop {
        if let Some((opcode, header, len)) = frame_at(buf) {
            let payload = &buf[header..header + len];
            let replied = opcode == BINARY
                && Header::read(payload).is_some_and(|h| h.op == Op::AuthReply.code());
            if opcode == CLOSE {
                // Code (2 bytes), then the server's reason.
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                return Err(io::Error::other(format!("auth refused: {reason}")));
            }
            buf.advance(header + len);
            if replied {
                return Ok(());
            }
            continue;
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Tallies one binary message from the server: the danmaku of each of its
/// message packets, from the memo. Replies (auth, heartbeat) hold none.
pub fn scan(seen: &mut Seen, mut message: &[u8]) {
    let now = seen.sampling().then(now_micros);
    while let Some(h) = Header::read(message) {
        let len = h.packet_len as usize;
        if len < HEADER_LEN || len > message.len() {
            // Not a packet the server would write: the ids it held, if
            // any, show up as lost.
            return;
        }
        if h.op == Op::Message.code() {
            for &(id, sent) in MEMO.danmaku(&message[..len]).iter() {
                seen.tally(id);
                if let (Some(now), Some(sent)) = (now, sent) {
                    seen.sample(now, sent);
                }
            }
        }
        message = &message[len..];
    }
}

/// One `DANMU_MSG` as the bench counts it: its id (`info[0][5]`) and the
/// sender's stamp in its text (`info[1]`), if the text has one.
type Danmu = (u64, Option<u64>);

/// Packets remembered before the memo starts again: a run's messages are
/// read by all their viewers within moments of one another, so a few
/// thousand cover every message in flight many times over.
const MEMO_CAP: usize = 4096;

/// The danmaku of message packets, by packet: decoded once per process.
///
/// A packet is known by a 64-bit hash of its bytes and its length, not by
/// the bytes: hashing costs a fraction of comparing against a stored copy's
/// allocation, and the hash need not resist anyone. Two different packets
/// of the same length and hash, a 1-in-2^64 chance, would only make a
/// viewer miscount one message.
pub struct Memo {
    hasher: foldhash::quality::FixedState,
    known: Mutex<Known>,
}

/// The memo's table: a packet's (hash, length) to its danmaku.
type Known = HashMap<(u64, usize), Arc<[Danmu]>>;

/// The process's memo, shared by all its viewers.
static MEMO: LazyLock<Memo> = LazyLock::new(Memo::new);

impl Memo {
    fn new() -> Memo {
        Memo {
            hasher: foldhash::quality::FixedState::with_seed(0x6461_6e6d_616b_7521),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The danmaku in `packet` (one whole packet, header included).
    pub fn danmaku(&self, packet: &[u8]) -> Arc<[Danmu]> {
        let key = (self.hasher.hash_one(packet), packet.len());
        if let Some(known) = self.lock().get(&key) {
            return known.clone();
        }
        // Decoded outside the lock: the viewers on other threads keep
        // reading meanwhile (at worst one per thread decodes it too).
        let decoded: Arc<[Danmu]> = decode(packet).into();
        let mut known = self.lock();
        if known.len() >= MEMO_CAP {
            // Starting again is cheaper than tracking age, and costs one
            // decode per message in flight.
            known.clear();
        }
        known.insert(key, decoded.clone());
        decoded
    }

    /// Packets remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        // A viewer that panicked holding it left a map that is still whole.
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The `DANMU_MSG`s in a message packet, inflated if compressed; none if
/// it does not decode (its ids are then counted lost).
fn decode(packet: &[u8]) -> Vec<Danmu> {
    let Ok(packets) = bilibili::unpack(packet) else {
        tracing::warn!("a message from the server does not decode");
        return Vec::new();
    };
    packets
        .iter()
        .filter(|p| p.op() == Some(Op::Message) && p.ver == Ver::Plain.code())
        .filter_map(|p| {
            let command: serde_json::Value = serde_json::from_slice(&p.body).ok()?;
            if command["cmd"] != "DANMU_MSG" {
                return None;
            }
            let id = command["info"][0][5].as_u64()?;
            let sent = command["info"][1]
                .as_str()
                .and_then(|text| text.strip_prefix(STAMP))
                .and_then(|stamp| stamp.parse().ok());
            Some((id, sent))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::danmaku::{Color, Danmaku, Mode};

    fn danmaku(id: u64, text: &str) -> Danmaku {
        Danmaku {
            id,
            room: "7100".into(),
            user: "bench".into(),
            name: "bench".into(),
            text: text.into(),
            mode: Mode::Scroll,
            color: Color(0xffffff),
            size: 25,
            ts: 1_700_000_000_000,
            vt: None,
            priority: false,
        }
    }

    /// A brotli message of `ids`, stamped `sent`, with an online count too.
    fn message(ids: &[u64], sent: u64) -> Vec<u8> {
        let mut commands: Vec<Vec<u8>> = ids
            .iter()
            .map(|&id| bilibili::danmu_msg(&danmaku(id, &format!("{STAMP}{sent}"))))
            .collect();
        commands.push(bilibili::online_command(3));
        bilibili::encode_batch(Ver::Brotli, &commands).to_vec()
    }

    #[test]
    fn a_brotli_message_yields_its_ids_and_stamps_once_decoded() {
        let memo = Memo::new();
        let bytes = message(&[7, 8], 123);
        let got = memo.danmaku(&bytes);
        assert_eq!(&got[..], &[(7, Some(123)), (8, Some(123))]);
        assert_eq!(memo.len(), 1);
        // The same bytes again: the same list, nothing new decoded.
        let again = memo.danmaku(&bytes);
        assert!(Arc::ptr_eq(&got, &again));
        assert_eq!(memo.len(), 1);
        // A text without the bench's stamp still counts its id.
        let plain = bilibili::encode_batch(Ver::Brotli, &[bilibili::danmu_msg(&danmaku(9, "hi"))]);
        assert_eq!(&memo.danmaku(&plain)[..], &[(9, None)]);
    }

    #[test]
    fn the_memo_stays_bounded() {
        let memo = Memo::new();
        for id in 1..=(MEMO_CAP as u64 + 10) {
            assert_eq!(memo.danmaku(&message(&[id], 1))[0].0, id);
        }
        assert!(memo.len() <= MEMO_CAP);
    }

    #[test]
    fn a_message_that_does_not_decode_holds_no_danmaku() {
        let memo = Memo::new();
        let corrupt = bilibili::encode_packet(Ver::Brotli.code(), Op::Message.code(), 0, b"junk");
        assert!(memo.danmaku(&corrupt).is_empty());
    }

    #[test]
    fn the_scanner_counts_ids_gaps_and_repeats_across_packets_and_replies() {
        let mut seen = Seen::sampling_for_test();
        let sent = now_micros() - 2_000;
        // A heartbeat reply, then two message packets in one WebSocket message.
        let mut first = bilibili::heartbeat_reply(5).to_vec();
        first.extend_from_slice(&message(&[1, 2], sent));
        first.extend_from_slice(&message(&[3], sent));
        scan(&mut seen, &first);
        scan(&mut seen, &message(&[5], sent));
        scan(&mut seen, &message(&[5, 6], sent));
        assert_eq!(
            (seen.received, seen.lost, seen.duplicated),
            (6, 1, 1),
            "4 is lost, 5 came twice"
        );
        assert!(
            seen.latency_min_for_test() >= 2_000,
            "latency from the stamp"
        );
        // A packet cut short counts nothing, and does not panic.
        let whole = message(&[7], sent);
        scan(&mut seen, &whole[..whole.len() - 1]);
        assert_eq!(seen.received, 6);
    }

    #[test]
    fn the_auth_frame_is_a_masked_binary_auth_packet_for_the_room() {
        let frame = auth_frame(7100);
        let (opcode, header, len) = frame_at(&frame).expect("a whole frame");
        assert_eq!(opcode, BINARY);
        assert_eq!(frame[1] & 0x80, 0x80, "client frames are masked");
        // The zero mask leaves the payload as it is.
        let packets = bilibili::unpack(&frame[header..header + len]).unwrap();
        assert_eq!(packets[0].op(), Some(Op::Auth));
        let auth = bilibili::Auth::parse(&packets[0].body).unwrap();
        assert_eq!((auth.roomid, auth.protover), (7100, Ver::Brotli));
        let beat = heartbeat_frame();
        let (_, header, len) = frame_at(&beat).expect("a whole frame");
        let packets = bilibili::unpack(&beat[header..header + len]).unwrap();
        assert_eq!(packets[0].op(), Some(Op::Heartbeat));
    }
}
