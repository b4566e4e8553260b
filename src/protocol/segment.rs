//! bilibili's protobuf danmaku segments, as players fetch them for a
//! recording from `/x/v2/dm/web/seg.so?type=1&oid=…&segment_index=N`.
//!
//! A segment is a `DmSegMobileReply` (package
//! `bilibili.community.service.dm.v1`) holding the `DanmakuElem`s whose
//! video time falls in one 6-minute window; `segment_index` counts the
//! windows from 1. The messages are written by hand with `prost`'s derive
//! macros, with the field numbers of bilibili's `dm.proto`, so the build
//! needs no `protoc`. Fields we have no use for keep their protobuf
//! defaults and so take no bytes on the wire.

use std::num::NonZeroU32;

use prost::Message;

use super::bilibili::{member_hash, mode_code};
use crate::danmaku::Danmaku;

/// The length of a segment, in milliseconds of video: 6 minutes.
pub const SEGMENT_MS: u32 = 6 * 60 * 1000;

/// The weight given to every danmaku. bilibili's players hide a danmaku
/// whose weight is below the viewer's "smart shield" level (1 to 10); ours
/// are not rated, so they get the highest weight and are never hidden that
/// way.
const WEIGHT: i32 = 10;

/// One danmaku of a segment (`DanmakuElem`).
#[derive(Clone, PartialEq, Message)]
pub struct DanmakuElem {
    /// The danmaku's id (bilibili's `dmid`; ours, within the room).
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// When it shows, in milliseconds of video.
    #[prost(int32, tag = "2")]
    pub progress: i32,
    /// bilibili's mode: scroll 1, bottom 4, top 5, reverse 6.
    #[prost(int32, tag = "3")]
    pub mode: i32,
    /// Font size.
    #[prost(int32, tag = "4")]
    pub fontsize: i32,
    /// Colour, RGB.
    #[prost(uint32, tag = "5")]
    pub color: u32,
    /// The sender's hash (`midHash`).
    #[prost(string, tag = "6")]
    pub mid_hash: String,
    /// The text.
    #[prost(string, tag = "7")]
    pub content: String,
    /// When it was sent, unix seconds.
    #[prost(int64, tag = "8")]
    pub ctime: i64,
    /// Rating for the players' smart shield, 1 to 10.
    #[prost(int32, tag = "9")]
    pub weight: i32,
    /// An action for special danmaku; empty for ours.
    #[prost(string, tag = "10")]
    pub action: String,
    /// The pool: 0 normal, 1 subtitles, 2 special.
    #[prost(int32, tag = "11")]
    pub pool: i32,
    /// The id again, as a string (for JavaScript, whose numbers cannot hold
    /// every 64-bit id).
    #[prost(string, tag = "12")]
    pub id_str: String,
    /// Attribute bits (protected, from live, liked); none for ours.
    #[prost(int32, tag = "13")]
    pub attr: i32,
}

/// A segment (`DmSegMobileReply`).
#[derive(Clone, PartialEq, Message)]
pub struct DmSegMobileReply {
    /// Its danmaku.
    #[prost(message, repeated, tag = "1")]
    pub elems: Vec<DanmakuElem>,
}

impl From<&Danmaku> for DanmakuElem {
    fn from(d: &Danmaku) -> DanmakuElem {
        // `as` saturates: a time past i32::MAX ms (24.8 days) shows at the
        // last millisecond a segment can say, and a missing one at 0.
        let progress = d.vt.map_or(0, |vt| (vt * 1000.0).round() as i32);
        DanmakuElem {
            id: i64::try_from(d.id).unwrap_or(i64::MAX),
            progress,
            mode: i32::from(mode_code(d.mode)),
            fontsize: d.size.into(),
            color: d.color.0 & 0xff_ff_ff,
            mid_hash: member_hash(&d.user),
            content: d.text.clone(),
            ctime: d.ts.div_euclid(1000),
            weight: WEIGHT,
            action: String::new(),
            pool: 0,
            id_str: d.id.to_string(),
            attr: 0,
        }
    }
}

/// The video times a segment covers, in seconds: `[start, end)`. Segment 1
/// is `[0, 360)`, segment 2 `[360, 720)`, and so on. There is no segment
/// 0: bilibili counts from 1, and the route refuses 0 when it parses the
/// query.
pub fn segment_range(index: NonZeroU32) -> (f64, f64) {
    let length = f64::from(SEGMENT_MS) / 1000.0;
    let start = f64::from(index.get() - 1) * length;
    (start, start + length)
}

/// How many equal slices of video time a segment's cap is shared among
/// when its window holds more danmaku than the cap: 60 slices of 6 s.
pub const SLICES: usize = 60;

/// The `i`-th of [`SLICES`] equal slices of `[from, to)`, for `i` below
/// `SLICES`. Neighbours share their bound (computed the same way for
/// both), so every time of the window lies in exactly one slice.
pub fn slice(from: f64, to: f64, i: usize) -> (f64, f64) {
    let at = |k: usize| {
        if k >= SLICES {
            to
        } else {
            from + (to - from) * k as f64 / SLICES as f64
        }
    };
    (at(i), at(i + 1))
}

/// `total` split into `parts` whole shares as even as can be: they differ
/// by at most one and add up to `total` (none when `parts` is 0).
pub fn split(total: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|i| total * (i + 1) / parts - total * i / parts)
        .collect()
}

/// The segment holding `items` (the route selects them by video time, in
/// id order), encoded.
pub fn encode_segment(items: &[Danmaku]) -> Vec<u8> {
    DmSegMobileReply {
        elems: items.iter().map(DanmakuElem::from).collect(),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::danmaku::{Color, Mode};

    fn index(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn segments_are_six_minutes_from_one() {
        assert_eq!(segment_range(index(1)), (0.0, 360.0));
        assert_eq!(segment_range(index(2)), (360.0, 720.0));
        assert_eq!(segment_range(index(7200)), (2_591_640.0, 2_592_000.0));
        let (start, end) = segment_range(index(u32::MAX));
        assert!(start.is_finite() && end > start);
    }

    #[test]
    fn a_danmaku_becomes_the_element_players_read() {
        let d = Danmaku {
            id: 7,
            room: "r".into(),
            user: "alice".into(),
            name: "Alice".into(),
            text: "弹幕 <b>".into(),
            mode: Mode::Top,
            color: Color(0xfe0302),
            size: 25,
            ts: 1_700_000_123_999,
            vt: Some(47.8805),
            priority: false,
        };
        let bytes = encode_segment(std::slice::from_ref(&d));
        let reply = DmSegMobileReply::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            reply.elems,
            [DanmakuElem {
                id: 7,
                progress: 47_881,
                mode: 5,
                fontsize: 25,
                color: 0xfe0302,
                mid_hash: member_hash("alice"),
                content: "弹幕 <b>".into(),
                ctime: 1_700_000_123,
                weight: WEIGHT,
                action: String::new(),
                pool: 0,
                id_str: "7".into(),
                attr: 0,
            }]
        );
        // Field 1 of the reply holds the element; the element starts with
        // field 1 (id) as a varint: the layout bilibili's players expect.
        assert_eq!(&bytes[..1], &[0x0a]);
        assert_eq!(&bytes[2..4], &[0x08, 7]);
    }

    #[test]
    fn slices_tile_the_window_and_shares_add_up() {
        let (from, to) = segment_range(index(3));
        assert_eq!(slice(from, to, 0), (720.0, 726.0));
        assert_eq!(slice(from, to, SLICES - 1), (1074.0, 1080.0));
        for i in 1..SLICES {
            assert_eq!(slice(from, to, i - 1).1, slice(from, to, i).0);
        }
        for (total, parts) in [(6000, 60), (10, 60), (61, 60), (0, 3), (7, 1), (5, 0)] {
            let shares = split(total, parts);
            assert_eq!(shares.len(), parts);
            assert_eq!(
                shares.iter().sum::<usize>(),
                if parts == 0 { 0 } else { total }
            );
            let (lo, hi) = (shares.iter().min(), shares.iter().max());
            assert!(hi.zip(lo).is_none_or(|(h, l)| h - l <= 1), "{shares:?}");
        }
    }

    #[test]
    fn times_out_of_range_saturate() {
        let mut d = Danmaku::sample("r", 1);
        d.vt = Some(30.0 * 24.0 * 3600.0);
        assert_eq!(DanmakuElem::from(&d).progress, i32::MAX);
        d.vt = None;
        assert_eq!(DanmakuElem::from(&d).progress, 0);
        assert!(encode_segment(&[]).is_empty());
    }
}
