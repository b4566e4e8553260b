//! The WebSocket client-frame decoder on arbitrary bytes, fed as a stream.
//!
//! Input: byte 0 picks the message limit, byte 1 seeds the chunk sizes, the
//! rest is the stream. The stream is decoded three ways, the way the server's
//! connection loop does it (append what arrived, decode while a whole frame is
//! there, drop what was consumed): all at once, one byte at a time, and in
//! pseudo-random chunks. It must never panic, and:
//!
//! - `consumed` is at least a masked header (6 bytes) and at most the buffer;
//! - a text or binary message is at most the limit, a ping payload at most
//!   125 bytes;
//! - a fragment leaves the decoder mid-message, a whole message does not;
//! - where the stream is split does not change what is decoded.

#![no_main]

use danmaku::protocol::websocket::{Decoded, Decoder, FrameError, Message};
use libfuzzer_sys::fuzz_target;

/// Message limits to try; the server's default (4096) most often.
const MAXES: [usize; 8] = [4096, 4096, 256, 1024, 125, 16, 0, 70_000];

#[derive(Debug, PartialEq)]
enum Event {
    Fragment(usize),
    Message(Message, usize),
    Error(FrameError),
}

/// Decodes `stream` delivered in chunks of the sizes `next_chunk` returns.
fn decode_stream(max: usize, stream: &[u8], mut next_chunk: impl FnMut() -> usize) -> Vec<Event> {
    let mut decoder = Decoder::new(max);
    let mut inbuf: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = next_chunk().clamp(1, rest.len());
        inbuf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match decoder.decode(&inbuf) {
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Fragment { consumed }) => {
                    check_consumed(consumed, inbuf.len());
                    assert!(decoder.is_mid_message(), "a fragment holds a message");
                    inbuf.drain(..consumed);
                    events.push(Event::Fragment(consumed));
                }
                Ok(Decoded::Message { message, consumed }) => {
                    check_consumed(consumed, inbuf.len());
                    check_message(max, &message, &decoder);
                    inbuf.drain(..consumed);
                    events.push(Event::Message(message, consumed));
                }
                Err(e) => {
                    // The connection closes on an error: nothing after it
                    // is read.
                    let _ = e.close_code();
                    events.push(Event::Error(e));
                    return events;
                }
            }
        }
    }
    events
}

fn check_consumed(consumed: usize, len: usize) {
    assert!(
        consumed >= 6,
        "a masked frame is at least 6 bytes, got {consumed}"
    );
    assert!(
        consumed <= len,
        "consumed {consumed} of a {len}-byte buffer"
    );
}

fn check_message(max: usize, message: &Message, decoder: &Decoder) {
    match message {
        Message::Text(t) => {
            assert!(t.len() <= max, "text of {} bytes over {max}", t.len());
            assert!(!decoder.is_mid_message());
        }
        Message::Binary(b) => {
            assert!(b.len() <= max, "binary of {} bytes over {max}", b.len());
            assert!(!decoder.is_mid_message());
        }
        Message::Ping(p) => assert!(p.len() <= 125, "ping of {} bytes", p.len()),
        Message::Pong | Message::Close(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let [max_pick, seed, stream @ ..] = data else {
        return;
    };
    let max = MAXES[usize::from(*max_pick) % MAXES.len()];

    let whole = decode_stream(max, stream, || usize::MAX);
    let bytewise = decode_stream(max, stream, || 1);
    assert_eq!(
        whole, bytewise,
        "byte-at-a-time delivery changed the result"
    );

    // xorshift32, seeded from byte 1: chunks of 1 to 64 bytes.
    let mut state = u32::from(*seed) | 0x9e37_7900;
    let chunked = decode_stream(max, stream, || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 64) as usize + 1
    });
    assert_eq!(whole, chunked, "chunked delivery changed the result");
});
