//! The file importers on arbitrary bytes: `bilibili_xml::parse` (bilibili
//! XML) and `bilibili_xml::parse_ndjson` (our JSON lines), with small
//! limits. They must never panic, and:
//!
//! - a refusal of the whole file is one of the documented errors (the type
//!   says so), and a file over the byte limit is always refused;
//! - what is accepted holds to the rules of a send: text not blank, within
//!   the character limit and passing `check_text`; size in range; a video
//!   time finite and within 30 days; good and dropped entries together at
//!   most the item limit;
//! - what the XML importer accepts, exported again and imported again,
//!   reads back with the same mode, size, colour and text: the export can
//!   carry whatever the import lets in.

#![no_main]

use danmaku::danmaku::Danmaku;
use danmaku::guard;
use danmaku::protocol::bilibili_xml::{self, ImportLimits, Imported, XmlWriter};
use libfuzzer_sys::fuzz_target;

const LIMITS: ImportLimits = ImportLimits {
    max_bytes: 64 * 1024,
    max_items: 64,
    max_text_chars: 100,
};

fn check(got: &Imported) {
    assert!(got.items.len() + got.dropped.len() <= LIMITS.max_items);
    for d in &got.items {
        assert!(!d.text.trim().is_empty(), "blank text accepted");
        assert!(d.text.chars().count() <= LIMITS.max_text_chars);
        assert!(guard::filter::check_text(&d.text).is_ok());
        assert!(guard::SIZE_RANGE.contains(&d.size));
        assert!(d.color.0 <= 0xff_ff_ff);
        if let Some(vt) = d.vt {
            assert!(vt.is_finite() && (0.0..=guard::MAX_VIDEO_TIME).contains(&vt));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for parse in [bilibili_xml::parse, bilibili_xml::parse_ndjson] {
        match parse(data, &LIMITS) {
            Ok(got) => check(&got),
            Err(e) => {
                // Every refusal explains itself.
                assert!(!e.to_string().is_empty());
            }
        }
    }
    let tight = ImportLimits {
        max_bytes: data.len().saturating_sub(1),
        ..LIMITS
    };
    if !data.is_empty() {
        assert!(bilibili_xml::parse(data, &tight).is_err());
    }

    let Ok(got) = bilibili_xml::parse(data, &LIMITS) else {
        return;
    };
    let writer = XmlWriter::new(0);
    let mut file = writer.header("fuzz");
    for (i, item) in got.items.iter().enumerate() {
        let new = item.clone().into_new("fuzz", "user", "name");
        file.extend(writer.d(&Danmaku::stored(new, i as u64 + 1, 0)));
    }
    file.extend(writer.footer());
    let again = bilibili_xml::parse(
        &file,
        &ImportLimits {
            max_bytes: usize::MAX,
            ..LIMITS
        },
    )
    .expect("our own export reads back");
    assert!(again.dropped.is_empty(), "{:?}", again.dropped);
    assert_eq!(again.items.len(), got.items.len());
    for (a, b) in got.items.iter().zip(&again.items) {
        assert_eq!(
            (a.mode, a.size, a.color, &a.text),
            (b.mode, b.size, b.color, &b.text)
        );
    }
});
