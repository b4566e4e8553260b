//! The danmaku itself: one bullet comment, as stored and as delivered.
//!
//! These types are shared by every layer; they carry no behaviour beyond
//! their own (de)serialisation, so the store, the hub and the transports can
//! agree on one shape without depending on each other.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a danmaku moves across the player.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Right to left across the stage (the classic danmaku).
    #[default]
    Scroll,
    /// Fixed at the top, centred.
    Top,
    /// Fixed at the bottom, centred.
    Bottom,
    /// Left to right.
    Reverse,
}

impl Mode {
    /// Every mode, in the order of their stored codes.
    pub const ALL: [Mode; 4] = [Mode::Scroll, Mode::Top, Mode::Bottom, Mode::Reverse];

    /// Parses the wire name (`scroll`, `top`, `bottom`, `reverse`).
    pub fn parse(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Scroll => "scroll",
            Mode::Top => "top",
            Mode::Bottom => "bottom",
            Mode::Reverse => "reverse",
        }
    }

    /// The small integer the store keeps.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The inverse of [`Mode::code`].
    pub fn from_code(code: u8) -> Option<Mode> {
        Mode::ALL.get(code as usize).copied()
    }
}

/// A 24-bit RGB colour, written `#rrggbb` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Color(pub u32);

impl Color {
    /// White, the default colour of a danmaku.
    pub const WHITE: Color = Color(0xff_ff_ff);

    /// Parses `#rrggbb` (case-insensitive). Nothing else is accepted.
    pub fn parse(s: &str) -> Option<Color> {
        let hex = s.strip_prefix('#')?;
        if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(hex, 16).ok().map(Color)
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:06x}", self.0 & 0xff_ff_ff)
    }
}

impl Serialize for Color {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Color {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Color::parse(&s).ok_or_else(|| serde::de::Error::custom("colour must be #rrggbb"))
    }
}

/// The largest id anything can have: a danmaku, a held send or an audit
/// entry. Ids are stored as SQLite's signed 64-bit integers, so an id above
/// `i64::MAX` can name nothing; the edge refuses one rather than let it wrap.
pub const MAX_ID: u64 = i64::MAX.unsigned_abs();

/// Milliseconds since the Unix epoch: the clock of `ts`, and of when mutes
/// and bans end.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A danmaku that passed the guard and waits for the store to give it an id.
/// Serialised only to show a held send to moderators.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewDanmaku {
    /// The room it is sent to (already validated).
    pub room: String,
    /// The sender's user id.
    pub user: String,
    /// The sender's display name.
    pub name: String,
    /// The comment text (already validated).
    pub text: String,
    /// How it moves.
    pub mode: Mode,
    /// Its colour.
    pub color: Color,
    /// Font size in CSS pixels.
    pub size: u16,
    /// Offset into a recording, in seconds, when pinned to a moment of a video.
    pub vt: Option<f64>,
    /// Sent by an admin: density control never thins it.
    #[serde(skip)]
    pub priority: bool,
}

/// A stored danmaku: what history returns and what viewers receive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Danmaku {
    /// The next integer within its room: contiguous and never reused.
    pub id: u64,
    /// The room it belongs to.
    pub room: String,
    /// The sender's user id.
    pub user: String,
    /// The sender's display name.
    pub name: String,
    /// The comment text.
    pub text: String,
    /// How it moves.
    pub mode: Mode,
    /// Its colour.
    pub color: Color,
    /// Font size in CSS pixels.
    pub size: u16,
    /// Server time when it was stored, unix milliseconds.
    pub ts: i64,
    /// Offset into a recording, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vt: Option<f64>,
    /// Sent by an admin: density control never thins it. Known only on its
    /// way from the store to the hub; not stored, not sent.
    #[serde(skip)]
    pub priority: bool,
}

impl Danmaku {
    /// Gives a validated danmaku its id and server time.
    pub fn stored(new: NewDanmaku, id: u64, ts: i64) -> Danmaku {
        Danmaku {
            id,
            room: new.room,
            user: new.user,
            name: new.name,
            text: new.text,
            mode: new.mode,
            color: new.color,
            size: new.size,
            ts,
            vt: new.vt,
            priority: new.priority,
        }
    }
}

#[cfg(test)]
impl Danmaku {
    /// A stored danmaku of `room` with id `id`, for tests: user `u`, name
    /// `n`, text `text {id}`, the default look.
    pub(crate) fn sample(room: &str, id: u64) -> Danmaku {
        let new = NewDanmaku {
            room: room.into(),
            user: "u".into(),
            name: "n".into(),
            text: format!("text {id}"),
            mode: Mode::default(),
            color: Color::WHITE,
            size: 25,
            vt: None,
            priority: false,
        };
        Danmaku::stored(new, id, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_round_trips_and_rejects_garbage() {
        assert_eq!(Color::parse("#FF0080"), Some(Color(0xff0080)));
        assert_eq!(Color(0xff0080).to_string(), "#ff0080");
        for bad in [
            "ff0080", "#ff008", "#ff00800", "#gg0000", "", "#", "#+f0000",
        ] {
            assert_eq!(Color::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn mode_codes_round_trip() {
        for m in Mode::ALL {
            assert_eq!(Mode::from_code(m.code()), Some(m));
            assert_eq!(Mode::parse(m.as_str()), Some(m));
        }
        assert_eq!(Mode::from_code(9), None);
        assert_eq!(Mode::parse("Scroll"), None);
    }
}
