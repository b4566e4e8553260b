//! Content rules: characters a danmaku may not contain ([`check_text`]), the
//! sensitive-word list ([`WordFilter`], hot-reloaded by [`FilterHandle`]) and
//! the flood guard against one user repeating a text ([`FloodGuard`]).
//!
//! The word filter and the flood guard compare texts in a folded form, so
//! that `ＢＡＤ`, `Bad` and `b\u{200B}ad` are all `bad`: full-width ASCII
//! becomes ASCII, letters become lower case, and invisible characters are
//! dropped.

mod flood;
mod words;

pub use flood::FloodGuard;
pub use words::{FilterError, FilterHandle, WordFilter};

use crate::error::{ApiError, ErrorCode};

/// Refuses a text with a character that breaks the one-line display of a
/// danmaku or disguises what it says, as `invalid_field`: it is malformed
/// input, not content to moderate.
///
/// Refused: every control character (C0, DEL and C1, so tab and newline
/// too: a danmaku is one line), the line and paragraph separators U+2028
/// and U+2029, and the bidirectional embeddings, overrides and isolates
/// U+202A–U+202E and U+2066–U+2069. Those open a state that a renderer
/// carries past the end of the text, into the name or the next danmaku
/// drawn after it, and they can make text display in an order other than
/// the one it is stored and filtered in.
///
/// Kept: the bidirectional marks U+200E, U+200F and U+061C (they open no
/// state and right-to-left writers use them), and the zero-width joiner
/// and variation selectors that emoji sequences need. The folding behind
/// the word filter ignores them, so they cannot hide a word.
pub fn check_text(text: &str) -> Result<(), ApiError> {
    let Some(c) = text.chars().find(|&c| is_refused(c)) else {
        return Ok(());
    };
    let what = if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
        "a control character or line break (a danmaku is one line)"
    } else {
        "a bidirectional embedding, override or isolate"
    };
    Err(ApiError::new(
        ErrorCode::InvalidField,
        format!("text contains U+{:04X}, {what}", u32::from(c)),
    ))
}

fn is_refused(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// Characters that display as nothing and so could be slipped inside a
/// word to hide it from the filter: zero-width space, joiners and marks,
/// word joiner and invisible operators, BOM, variation selectors, soft
/// hyphen, combining grapheme joiner, Arabic letter mark, Mongolian vowel
/// separator.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}'
            | '\u{2060}'..='\u{2064}'
            | '\u{FEFF}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{180E}'
    )
}

/// The folded form of one character: full-width ASCII (U+FF01–U+FF5E) and
/// the ideographic space become their ASCII forms, then Unicode lower case
/// (which may be several characters: `İ` is `i` and a combining dot), and
/// invisible characters become nothing.
fn fold(c: char) -> impl Iterator<Item = char> {
    let c = match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(u32::from(c) - 0xFEE0).unwrap_or(c),
        '\u{3000}' => ' ',
        _ => c,
    };
    let keep = !is_invisible(c);
    c.to_lowercase().filter(move |_| keep)
}

/// Whether `c` folds to itself, so that a text made only of such
/// characters can be searched as it is, without a folded copy.
fn folds_to_itself(c: char) -> bool {
    if c.is_ascii() {
        return !c.is_ascii_uppercase();
    }
    let mut lower = c.to_lowercase();
    !is_invisible(c)
        && !matches!(c, '\u{FF01}'..='\u{FF5E}' | '\u{3000}')
        && lower.next() == Some(c)
        && lower.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_refused() {
        for ok in [
            "hello 弾幕",
            "emoji 👩\u{200D}💻 and ❤\u{FE0F}",
            "RTL \u{200F}שלום\u{200E}",
            "tag 🏴\u{E0067}\u{E0062}\u{E007F}",
        ] {
            assert!(check_text(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "a\nb",
            "a\tb",
            "\u{7}",
            "\u{7F}",
            "\u{85}",
            "a\u{2028}b",
            "evil\u{202E}txt.exe",
            "\u{2067}x",
            "\u{202A}x\u{202C}",
        ] {
            let e = check_text(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidField, "{bad:?}");
            assert!(e.message.contains("U+"), "{}", e.message);
        }
    }

    #[test]
    fn folding_ignores_width_case_and_invisible_characters() {
        let fold_str = |s: &str| s.chars().flat_map(fold).collect::<String>();
        assert_eq!(fold_str("ＢａＤ\u{3000}Word"), "bad word");
        assert_eq!(fold_str("b\u{200B}a\u{FE0F}d"), "bad");
        assert_eq!(fold_str("İ"), "i\u{307}");
        assert_eq!(fold_str("ΣΑΣ"), "σασ");
        for c in ['a', '1', '弾', 'ß', '😀'] {
            assert!(folds_to_itself(c), "{c}");
        }
        for c in ['A', 'Ａ', '\u{3000}', 'İ', '\u{200B}', 'Σ'] {
            assert!(!folds_to_itself(c), "{c}");
        }
    }
}
