//! The server side of RFC 6455 framing.
//!
//! Written by hand because fan-out needs what a general WebSocket library
//! hides: a server frame is unmasked, so a whole frame (header and payload)
//! can be built once and the same bytes written to every viewer. Reading is
//! the easy, small half: client frames are at most a few KiB (the configured
//! message limit), so a decoder that needs the whole frame in memory is fine.

use bytes::Bytes;

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// Continues a fragmented message.
    Continuation = 0x0,
    /// A UTF-8 text message.
    Text = 0x1,
    /// A binary message.
    Binary = 0x2,
    /// Closes the connection.
    Close = 0x8,
    /// Asks for a pong.
    Ping = 0x9,
    /// Answers a ping.
    Pong = 0xA,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Close codes the server uses (RFC 6455 §7.4.1).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown): reconnect, elsewhere or later.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the framing rules.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The client sent a kind of message the server does not take (binary).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The client broke a policy: it stayed too slow or too silent.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message was larger than the configured limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server failed (its store did not answer).
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// A complete message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping with its payload, to be echoed in a pong.
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// The client closes, with its close code if it gave one.
    Close(Option<u16>),
}

/// Why a client's bytes cannot be read as WebSocket frames.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame or message exceeds the limit.
    #[error("message larger than {0} bytes")]
    TooBig(usize),
    /// The framing rules are broken.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message is not UTF-8.
    #[error("text message is not valid UTF-8")]
    BadUtf8,
}

impl FrameError {
    /// The close code that answers this error.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooBig(_) => close_code::MESSAGE_TOO_BIG,
            FrameError::Protocol(_) => close_code::PROTOCOL_ERROR,
            FrameError::BadUtf8 => close_code::INVALID_PAYLOAD,
        }
    }
}

/// Decodes client frames into messages, reassembling fragments.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// The opcode and payload of a fragmented message being reassembled.
    fragments: Option<(Opcode, Vec<u8>)>,
}

/// What one call to [`Decoder::decode`] found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Not a whole frame yet: read more.
    Incomplete,
    /// A frame of `consumed` bytes that completed no message (a fragment).
    Fragment {
        /// Bytes to drop from the front of the buffer.
        consumed: usize,
    },
    /// A complete message, from a frame of `consumed` bytes.
    Message {
        /// The message.
        message: Message,
        /// Bytes to drop from the front of the buffer.
        consumed: usize,
    },
}

impl Decoder {
    /// A decoder that refuses messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            fragments: None,
        }
    }

    /// Whether a fragmented message is half-read (and so holds memory).
    pub fn is_mid_message(&self) -> bool {
        self.fragments.is_some()
    }

    /// Decodes the frame at the front of `buf`.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Decoded, FrameError> {
        if buf.len() < 2 {
            return Ok(Decoded::Incomplete);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        let opcode = Opcode::from_bits(b0 & 0x0f).ok_or(FrameError::Protocol("unknown opcode"))?;
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        let (len, mut pos) = match b1 & 0x7f {
            126 if buf.len() < 4 => return Ok(Decoded::Incomplete),
            126 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() < 10 => return Ok(Decoded::Incomplete),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                if b[0] & 0x80 != 0 {
                    return Err(FrameError::Protocol("64-bit length with the top bit set"));
                }
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        if opcode.is_control() && (len > 125 || !fin) {
            return Err(FrameError::Protocol(
                "control frames must be short and whole",
            ));
        }
        let held = self.fragments.as_ref().map_or(0, |(_, p)| p.len()) as u64;
        // Checked before the payload arrives, so a huge announced length
        // costs nothing: the connection closes instead of buffering it.
        // `len > max - held`, not `held + len > max`: an announced length
        // near 2^63 must not wrap around and pass.
        if !opcode.is_control() && len > (self.max_message as u64).saturating_sub(held) {
            return Err(FrameError::TooBig(self.max_message));
        }
        let len = len as usize;
        if buf.len() < pos + 4 + len {
            return Ok(Decoded::Incomplete);
        }
        let mask = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        let mut payload = buf[pos..pos + len].to_vec();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
        let consumed = pos + len;
        let message = match opcode {
            Opcode::Ping => Message::Ping(payload),
            Opcode::Pong => Message::Pong,
            Opcode::Close => Message::Close(close_payload(&payload)?),
            Opcode::Text | Opcode::Binary if self.fragments.is_some() => {
                return Err(FrameError::Protocol("new message inside a fragmented one"));
            }
            Opcode::Text | Opcode::Binary if !fin => {
                self.fragments = Some((opcode, payload));
                return Ok(Decoded::Fragment { consumed });
            }
            Opcode::Text | Opcode::Binary => data_message(opcode, payload)?,
            Opcode::Continuation => {
                let (first, held) = self
                    .fragments
                    .as_mut()
                    .ok_or(FrameError::Protocol("continuation without a message"))?;
                held.extend_from_slice(&payload);
                if !fin {
                    return Ok(Decoded::Fragment { consumed });
                }
                let first = *first;
                let (_, whole) = self.fragments.take().expect("checked above");
                data_message(first, whole)?
            }
        };
        Ok(Decoded::Message { message, consumed })
    }
}

fn data_message(opcode: Opcode, payload: Vec<u8>) -> Result<Message, FrameError> {
    if opcode == Opcode::Text {
        String::from_utf8(payload)
            .map(Message::Text)
            .map_err(|_| FrameError::BadUtf8)
    } else {
        Ok(Message::Binary(payload))
    }
}

fn close_payload(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("close payload of one byte")),
        [a, b, reason @ ..] => {
            std::str::from_utf8(reason).map_err(|_| FrameError::BadUtf8)?;
            Ok(Some(u16::from_be_bytes([*a, *b])))
        }
    }
}

/// Room for the longest server frame header (no mask).
const MAX_HEADER: usize = 10;

/// Builds a whole unmasked frame, letting `write` append the payload.
///
/// The payload is written after a reserved header gap and the header is put
/// in front of it afterwards, so the frame costs one allocation and no copy.
pub fn frame_with(opcode: Opcode, write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut buf = Vec::with_capacity(128);
    buf.resize(MAX_HEADER, 0);
    write(&mut buf);
    let len = buf.len() - MAX_HEADER;
    let mut header = [0u8; MAX_HEADER];
    header[0] = 0x80 | opcode as u8;
    let header_len = if len < 126 {
        header[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        header[1] = 126;
        header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    let start = MAX_HEADER - header_len;
    buf[start..MAX_HEADER].copy_from_slice(&header[..header_len]);
    Bytes::from(buf).slice(start..)
}

/// A frame with the given payload.
pub fn frame(opcode: Opcode, payload: &[u8]) -> Bytes {
    frame_with(opcode, |b| b.extend_from_slice(payload))
}

/// A close frame with a code and a short reason.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    // Control payloads are at most 125 bytes: the code takes two.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    frame_with(Opcode::Close, |b| {
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(&reason.as_bytes()[..end]);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn decode_all(d: &mut Decoder, mut buf: &[u8]) -> Result<Vec<Message>, FrameError> {
        let mut out = Vec::new();
        loop {
            match d.decode(buf)? {
                Decoded::Incomplete => return Ok(out),
                Decoded::Fragment { consumed } => buf = &buf[consumed..],
                Decoded::Message { message, consumed } => {
                    out.push(message);
                    buf = &buf[consumed..];
                }
            }
        }
    }

    #[test]
    fn decodes_text_ping_close_and_lengths() {
        let mut d = Decoder::new(100_000);
        let long = "x".repeat(300);
        let longer = "y".repeat(70_000);
        let mut bytes = client_frame(true, 1, b"hello");
        bytes.extend(client_frame(true, 9, b"p"));
        bytes.extend(client_frame(true, 1, long.as_bytes()));
        bytes.extend(client_frame(true, 1, longer.as_bytes()));
        bytes.extend(client_frame(true, 8, &[0x03, 0xe8]));
        let msgs = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(
            msgs,
            vec![
                Message::Text("hello".into()),
                Message::Ping(b"p".to_vec()),
                Message::Text(long),
                Message::Text(longer),
                Message::Close(Some(1000)),
            ]
        );
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete() {
        let bytes = client_frame(true, 1, &[b'a'; 200]);
        for cut in 0..bytes.len() {
            assert_eq!(
                Decoder::new(4096).decode(&bytes[..cut]),
                Ok(Decoded::Incomplete)
            );
        }
    }

    #[test]
    fn reassembles_fragments_with_interleaved_ping() {
        let mut d = Decoder::new(4096);
        let mut bytes = client_frame(false, 1, "弹".as_bytes());
        bytes.extend(client_frame(true, 9, b""));
        bytes.extend(client_frame(true, 0, "幕".as_bytes()));
        let msgs = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(
            msgs,
            vec![Message::Ping(vec![]), Message::Text("弹幕".into())]
        );
        assert!(!d.is_mid_message());
    }

    #[test]
    fn refuses_oversized_before_the_payload_arrives() {
        let bytes = client_frame(true, 1, &[b'a'; 5000]);
        assert_eq!(
            Decoder::new(4096).decode(&bytes[..4]),
            Err(FrameError::TooBig(4096))
        );
        // Fragments count together against the limit.
        let mut d = Decoder::new(4096);
        let mut two = client_frame(false, 1, &[b'a'; 3000]);
        two.extend(client_frame(true, 0, &[b'a'; 3000]));
        assert_eq!(decode_all(&mut d, &two), Err(FrameError::TooBig(4096)));
    }

    #[test]
    fn huge_announced_lengths_cannot_wrap_the_limit() {
        let mut d = Decoder::new(4096);
        let first = client_frame(false, 1, &[b'a'; 100]);
        assert!(matches!(d.decode(&first), Ok(Decoded::Fragment { .. })));
        // A continuation announcing 2^63 - 50 bytes (held + len would wrap
        // in u64 arithmetic only with the top bit; both must be refused).
        for len in [(1u64 << 63) - 50, u64::MAX - 50] {
            let mut cont = vec![0x80, 0x80 | 127];
            cont.extend_from_slice(&len.to_be_bytes());
            cont.extend_from_slice(&[0, 0, 0, 0]);
            assert!(d.decode(&cont).is_err(), "{len}");
        }
    }

    #[test]
    fn rejects_broken_framing() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (
                vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'],
                close_code::PROTOCOL_ERROR,
            ), // unmasked
            (client_frame(true, 0x3, b""), close_code::PROTOCOL_ERROR), // opcode
            (client_frame(true, 0x0, b"x"), close_code::PROTOCOL_ERROR), // lone continuation
            (client_frame(false, 0x9, b""), close_code::PROTOCOL_ERROR), // fragmented ping
            (
                client_frame(true, 1, &[0xff, 0xfe]),
                close_code::INVALID_PAYLOAD,
            ),
            (
                {
                    let mut f = client_frame(true, 1, b"x");
                    f[0] |= 0x40;
                    f
                },
                close_code::PROTOCOL_ERROR,
            ),
        ];
        for (bytes, code) in cases {
            let err = Decoder::new(4096).decode(&bytes).unwrap_err();
            assert_eq!(err.close_code(), code, "{err}");
        }
    }

    #[test]
    fn encodes_every_header_length() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let payload = vec![b'z'; len];
            let f = frame(Opcode::Text, &payload);
            let header_len = f.len() - len;
            assert_eq!(
                header_len,
                match len {
                    0..=125 => 2,
                    126..=65_535 => 4,
                    _ => 10,
                }
            );
            assert_eq!(f[0], 0x81);
            assert_eq!(&f[header_len..], &payload[..]);
        }
        let c = close_frame(1001, &"é".repeat(100));
        assert_eq!(c[0], 0x88);
        assert!(c[1] <= 125);
        assert!(std::str::from_utf8(&c[4..]).is_ok());
    }
}
