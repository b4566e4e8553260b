//! The Bilibili packet decoder and auth parser on arbitrary bytes, fed as a
//! stream.
//!
//! Input: byte 0 picks the packet limit, byte 1 seeds the chunk sizes, the
//! rest is the stream. The stream is decoded three ways, the way a
//! connection's read loop does it (hand over what arrived, take packets
//! while there are whole ones): all at once, one byte at a time, and in
//! pseudo-random chunks. It must never panic, and:
//!
//! - where the stream is split does not change what is decoded;
//! - every packet is within the limit, and re-encoding the packets gives
//!   back exactly the bytes they were read from;
//! - `Ok(None)` comes only once the input handed over is used up;
//! - the auth parser takes every packet's body (and the whole stream) and
//!   an accepted auth names a version 0 to 3;
//! - `unpack`, which also inflates zlib and brotli bodies, takes the stream
//!   without a panic, and inflates no body past its limit.

#![no_main]

use danmaku::protocol::bilibili::{self, Auth, Decoder, Packet, PacketError};
use libfuzzer_sys::fuzz_target;

/// Packet limits to try; the server's default most often.
const MAXES: [usize; 6] = [
    bilibili::DEFAULT_MAX_PACKET,
    bilibili::DEFAULT_MAX_PACKET,
    16,
    17,
    300,
    0,
];

#[derive(Debug, PartialEq)]
struct Decoded {
    packets: Vec<Packet>,
    /// Bytes the packets were read from.
    consumed: usize,
    error: Option<PacketError>,
}

/// Decodes `stream` delivered in chunks of the sizes `next_chunk` returns.
fn decode_stream(max: usize, stream: &[u8], mut next_chunk: impl FnMut() -> usize) -> Decoded {
    let mut decoder = Decoder::new(max);
    let mut out = Decoded {
        packets: Vec::new(),
        consumed: 0,
        error: None,
    };
    let mut rest = stream;
    while !rest.is_empty() {
        let n = next_chunk().clamp(1, rest.len());
        let mut piece = &rest[..n];
        rest = &rest[n..];
        loop {
            match decoder.decode(&mut piece) {
                Ok(Some(packet)) => {
                    let len = bilibili::HEADER_LEN + packet.body.len();
                    assert!(len <= max, "a packet of {len} bytes over {max}");
                    out.consumed += len;
                    out.packets.push(packet);
                }
                Ok(None) => {
                    assert!(piece.is_empty(), "None with input left");
                    break;
                }
                Err(e) => {
                    // The connection closes on an error: nothing after it
                    // is read.
                    out.error = Some(e);
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [max_pick, seed, stream @ ..] = data else {
        return;
    };
    let max = MAXES[usize::from(*max_pick) % MAXES.len()];

    let whole = decode_stream(max, stream, || usize::MAX);
    let re_encoded: Vec<u8> = whole
        .packets
        .iter()
        .flat_map(|p| p.encode().to_vec())
        .collect();
    assert_eq!(
        re_encoded,
        stream[..whole.consumed],
        "packets re-encode to other bytes"
    );

    let bytewise = decode_stream(max, stream, || 1);
    assert_eq!(whole, bytewise, "byte-at-a-time delivery changed the result");

    // xorshift32, seeded from byte 1: chunks of 1 to 64 bytes.
    let mut state = u32::from(*seed) | 0x9e37_7900;
    let chunked = decode_stream(max, stream, || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 64) as usize + 1
    });
    assert_eq!(whole, chunked, "chunked delivery changed the result");

    for body in whole
        .packets
        .iter()
        .map(|p| &p.body[..])
        .chain(std::iter::once(stream))
    {
        if let Ok(auth) = Auth::parse(body) {
            assert!(auth.protover.code() <= 3);
        }
    }

    if let Ok(packets) = bilibili::unpack(stream) {
        for p in packets {
            assert!(p.body.len() <= bilibili::MAX_INFLATED);
        }
    }
});
