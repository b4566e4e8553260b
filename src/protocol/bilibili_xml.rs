//! bilibili's XML danmaku format, both ways, and our own JSON lines as an
//! import format beside it.
//!
//! # Export
//!
//! [`XmlWriter`] writes a room's history the way bilibili's `list.so` and
//! `comment.bilibili.com/{cid}.xml` do: the XML declaration, `<i>`, a few
//! header elements, then one `<d p="…">text</d>` per danmaku. It writes a
//! header, each row and a footer as separate byte chunks, so a route can
//! stream a room of a million danmaku in constant memory.
//!
//! The `p` attribute holds eight comma-separated fields, as real exports do:
//!
//! | field | meaning | ours |
//! |-------|---------|------|
//! | 0 | video time, seconds | `vt` in the shortest decimals that read back as the same `f64` (no exponent), `0` when it has none |
//! | 1 | mode | scroll 1, bottom 4, top 5, reverse 6 |
//! | 2 | font size | `size` |
//! | 3 | colour | decimal RGB |
//! | 4 | sent at, unix seconds | `ts / 1000` |
//! | 5 | pool | always 0 (the normal pool) |
//! | 6 | user hash | [`member_hash`] of our user id (as the live protocol's) |
//! | 7 | danmaku id | our id in the room |
//!
//! Text and attribute values are escaped with exactly the five named
//! entities (`&amp; &lt; &gt; &quot; &apos;`), never with numeric
//! references: common consumers (ArtPlayer's danmuku plugin among them)
//! read the file with a regular expression and decode only those five.
//! XML 1.0 cannot carry some characters at all, escaped or not (the C0
//! controls other than tab, newline and carriage return, and U+FFFE and
//! U+FFFF); the writer drops them. A stored text never holds one, since the
//! guard refuses every control character, so this only matters for a
//! room name or a text stored by an older server.
//!
//! # Import
//!
//! [`parse`] reads a bilibili XML file (ours or a real export) and
//! [`parse_ndjson`] our JSON lines (one history item per line). Both check
//! the whole input before anything is stored, and give an [`Imported`]: the
//! danmaku to store in file order, and the entries they dropped, each with
//! its line and reason.
//!
//! A file that is not what it claims to be is refused whole
//! ([`ImportError`]): not UTF-8, over the byte or item limit, or for XML not
//! well-formed, truncated, nested deeper than [`MAX_DEPTH`], rooted
//! elsewhere than `<i>`, or holding a document type declaration. No DTD is
//! ever read and no entity is ever expanded: only the five predefined
//! entities and numeric character references are decoded, and any other
//! entity reference makes the file not well-formed. One bad entry in a good
//! file is only dropped: a `<d>` without a valid `p`, an advanced, code or
//! BAS danmaku (modes 7, 8, 9), an unknown mode, colour or size, a video
//! time out of range, a `<d>` holding elements, or a text that is empty,
//! too long, or holds a character XML cannot carry or a send may not have
//! ([`check_text`]). Every item returned therefore holds to the same field
//! rules as a send, and can be exported again as it is. Elements other than
//! `<d>` directly inside `<i>` are ignored.
//!
//! Real bilibili exports are known to hold control characters in a few
//! texts, which make a file not well-formed; rather than refuse such a file
//! whole, the importer drops only the `<d>` whose text holds one, as it
//! would drop any text a send may not have.

use std::fmt::Write as _;

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use serde::Deserialize;

use super::bilibili::{member_hash, mode_code};
use crate::danmaku::{Color, Danmaku, Mode, NewDanmaku};
use crate::guard::filter::check_text;
use crate::guard::{DEFAULT_SIZE, MAX_VIDEO_TIME, SIZE_RANGE};

/// How deep elements may nest in an imported XML file. A bilibili file
/// needs two levels (`<i>` and `<d>`); the bound stops a file of a million
/// nested elements before the parser keeps a million open names.
pub const MAX_DEPTH: usize = 8;

/// The longest value of a bad field quoted back in a [`DropReason`], in
/// characters, so that the report of a hostile file stays small.
const QUOTE_CHARS: usize = 32;

/// Writes bilibili XML, one chunk at a time: [`header`](Self::header)
/// once, [`d`](Self::d) per danmaku in id order, [`footer`](Self::footer)
/// once. It keeps no state between chunks, so a route may stream rows
/// straight from the store.
#[derive(Clone, Copy, Debug)]
pub struct XmlWriter {
    max_limit: u64,
}

impl XmlWriter {
    /// A writer whose header says `<maxlimit>max_limit</maxlimit>`:
    /// bilibili's size of the video's danmaku pool. Players ignore it; the
    /// export route passes the room's newest id (an upper bound on what
    /// the file holds).
    pub fn new(max_limit: u64) -> XmlWriter {
        XmlWriter { max_limit }
    }

    /// The XML declaration, `<i>` and the header elements, with `room` as
    /// the `<chatid>`. The declaration is followed directly by `<i>`, with
    /// no line break, because some converters (danmaku2ass and its
    /// descendants) recognise a bilibili file by those exact bytes.
    pub fn header(&self, room: &str) -> Vec<u8> {
        let mut out = String::with_capacity(256);
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?><i>\n");
        out.push_str("<chatserver>danmaku</chatserver>\n<chatid>");
        escape_into(&mut out, room);
        let _ = write!(
            out,
            "</chatid>\n<mission>0</mission>\n<maxlimit>{}</maxlimit>\n\
             <state>0</state>\n<real_name>0</real_name>\n<source>k-v</source>\n",
            self.max_limit
        );
        out.into_bytes()
    }

    /// One `<d p="vt,mode,size,color,ctime,pool,userhash,id">text</d>`
    /// line.
    pub fn d(&self, d: &Danmaku) -> Vec<u8> {
        let mut out = String::with_capacity(64 + d.text.len());
        // `Display` writes the shortest decimal form that parses back to
        // the same f64, and never an exponent, which some readers would
        // not take: our own import reads the time back exactly. Adding 0
        // makes a -0 (which a send may carry) the plain `0`.
        let vt = d.vt.filter(|vt| vt.is_finite()).unwrap_or(0.0) + 0.0;
        let _ = write!(
            out,
            "<d p=\"{vt},{},{},{},{},0,{},{}\">",
            i32::from(mode_code(d.mode)),
            d.size,
            d.color.0 & 0xff_ff_ff,
            d.ts.div_euclid(1000),
            member_hash(&d.user),
            d.id,
        );
        escape_into(&mut out, &d.text);
        out.push_str("</d>\n");
        out.into_bytes()
    }

    /// The closing `</i>`.
    pub fn footer(&self) -> Vec<u8> {
        b"</i>\n".to_vec()
    }
}

/// Appends `s` escaped for XML text or an attribute value: the five
/// special characters as their named entities, characters XML 1.0 cannot
/// carry dropped, everything else as it is.
fn escape_into(out: &mut String, s: &str) {
    let mut run = 0;
    for (i, c) in s.char_indices() {
        let replacement = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            '"' => "&quot;",
            '\'' => "&apos;",
            c if !is_xml_char(c) => "",
            _ => continue,
        };
        out.push_str(&s[run..i]);
        out.push_str(replacement);
        run = i + c.len_utf8();
    }
    out.push_str(&s[run..]);
}

/// Whether XML 1.0 can carry `c` (its `Char` production; a Rust `char` is
/// never a surrogate).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        || c >= '\u{10000}'
}

/// The limits of one import, from the server's configuration.
#[derive(Clone, Copy, Debug)]
pub struct ImportLimits {
    /// The largest input, in bytes.
    pub max_bytes: usize,
    /// The most entries (`<d>` elements or non-blank lines, good or bad).
    pub max_items: usize,
    /// The longest text, in characters (`limits.max_text_chars`).
    pub max_text_chars: usize,
}

/// A danmaku read from a file, checked like a send, without a room, a
/// sender or an id: the server gives it those when it stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedDanmaku {
    /// Offset into the video, in seconds. bilibili XML always has one
    /// (a danmaku that had none was exported as 0).
    pub vt: Option<f64>,
    /// How it moves.
    pub mode: Mode,
    /// Its colour.
    pub color: Color,
    /// Font size in CSS pixels, within [`SIZE_RANGE`].
    pub size: u16,
    /// The text, at most the limit's characters, not blank.
    pub text: String,
    /// When it was first sent, unix milliseconds, if the file says.
    pub ctime_ms: Option<i64>,
    /// bilibili's hash of its first sender, if the file has one.
    pub user_hash: Option<String>,
}

impl ImportedDanmaku {
    /// The danmaku to store in `room`, sent by `user` named `name`.
    pub fn into_new(self, room: &str, user: &str, name: &str) -> NewDanmaku {
        NewDanmaku {
            room: room.to_owned(),
            user: user.to_owned(),
            name: name.to_owned(),
            text: self.text,
            mode: self.mode,
            color: self.color,
            size: self.size,
            vt: self.vt,
            priority: false,
        }
    }
}

/// What an import read: the danmaku to store, in file order, and the
/// entries it dropped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imported {
    /// The good entries, in the order of the file.
    pub items: Vec<ImportedDanmaku>,
    /// The bad ones, in the order of the file.
    pub dropped: Vec<Dropped>,
}

/// One entry an import left out.
#[derive(Clone, Debug, PartialEq)]
pub struct Dropped {
    /// Its line in the file, from 1 (for XML, where its `<d>` starts).
    pub line: usize,
    /// Why.
    pub reason: DropReason,
}

/// Why one entry of a good file was left out.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DropReason {
    /// A `<d>` without a `p` attribute.
    #[error("the <d> has no p attribute")]
    MissingP,
    /// A `p` with fewer than the four fields a danmaku needs.
    #[error("p has {0} fields; the first four (time, mode, size, colour) are needed")]
    ShortP(usize),
    /// A field that does not parse or is out of range.
    #[error("{field} is not valid: {value:?}")]
    InvalidField {
        /// The field: `video time`, `mode`, `size` or `color`.
        field: &'static str,
        /// Its value, cut to a few characters.
        value: String,
    },
    /// A bilibili mode with no equivalent here: 7 (advanced, positioned
    /// and animated), 8 (code) or 9 (BAS).
    #[error("mode {0} ({kind} danmaku) has no equivalent here", kind = special_mode_kind(*.0))]
    UnsupportedMode(u8),
    /// A text that is empty or only white space.
    #[error("the text is empty")]
    EmptyText,
    /// A text longer than the limit.
    #[error("the text is longer than {0} characters")]
    TextTooLong(usize),
    /// A text with a character XML 1.0 cannot carry (a C0 control other
    /// than tab, newline and carriage return, U+FFFE or U+FFFF): not
    /// well-formed, but dropped rather than refused whole.
    #[error("the text holds U+{:04X}, which XML cannot carry", u32::from(*.0))]
    NotXml(char),
    /// A text with a character no send may have (see [`check_text`]).
    #[error("{0}")]
    RefusedText(String),
    /// A `<d>` that holds elements rather than only text.
    #[error("the <d> holds other elements")]
    Nested,
    /// A JSON line that is not an object with a string `text` and fields of
    /// the right types.
    #[error("not a danmaku object: {0}")]
    Json(String),
}

/// What bilibili calls its special modes, for [`DropReason::UnsupportedMode`].
fn special_mode_kind(code: u8) -> &'static str {
    match code {
        7 => "advanced",
        8 => "code",
        _ => "BAS",
    }
}

/// Why a whole file was refused: nothing of it may be stored.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ImportError {
    /// The input is larger than the limit.
    #[error("the file is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The input is not UTF-8.
    #[error("the file is not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    /// The XML declaration names another encoding.
    #[error("the XML declares encoding {0:?}; only UTF-8 is read")]
    Encoding(String),
    /// The file has a document type declaration.
    #[error(
        "line {0}: a document type declaration (DTD) is refused; no DTD or entity is ever read"
    )]
    Dtd(usize),
    /// A reference to an entity other than the five predefined ones.
    #[error("line {line}: unknown entity &{name}; (only &amp; &lt; &gt; &quot; &apos; and character references)")]
    UnknownEntity {
        /// Where.
        line: usize,
        /// The entity's name, cut to a few characters.
        name: String,
    },
    /// Elements nest deeper than [`MAX_DEPTH`].
    #[error("line {0}: elements nest deeper than {MAX_DEPTH}")]
    TooDeep(usize),
    /// The root element is not `<i>`.
    #[error("the root element is <{0}>, not <i>: not a bilibili danmaku file")]
    NotBilibili(String),
    /// The file has no root element.
    #[error("the file has no root element")]
    NoRoot,
    /// The file ends before its root element does.
    #[error("the file ends before </i>: it is truncated")]
    Truncated,
    /// Text or an element outside the root element.
    #[error("line {0}: content outside the root element")]
    OutsideRoot(usize),
    /// More entries than the limit.
    #[error("the file has more than {0} danmaku")]
    TooManyItems(usize),
    /// The XML is not well-formed.
    #[error("line {line}: not well-formed XML: {message}")]
    Syntax {
        /// Where.
        line: usize,
        /// What the parser said.
        message: String,
    },
}

/// Reads a bilibili XML file. See the module documentation for what is
/// refused whole and what is only dropped.
pub fn parse(input: &[u8], limits: &ImportLimits) -> Result<Imported, ImportError> {
    let text = utf8_within(input, limits)?;
    let mut reader = Reader::from_str(text);
    let mut lines = Lines::new(text);
    let mut out = Imported::default();
    let mut depth = 0usize;
    let mut root_done = false;
    let mut entries = 0usize;
    // The `<d>` being read, when the parser is inside one.
    let mut open: Option<OpenD> = None;
    loop {
        let at = offset(reader.buffer_position());
        let event = reader.read_event().map_err(|e| ImportError::Syntax {
            line: lines.at(offset(reader.error_position())),
            message: e.to_string(),
        })?;
        match event {
            Event::Decl(decl) => {
                if let Some(Ok(encoding)) = decl.encoding() {
                    if !matches!(encoding.to_ascii_lowercase().as_str(), "utf-8" | "utf8") {
                        return Err(ImportError::Encoding(quote(&encoding)));
                    }
                }
            }
            Event::DocType(_) => return Err(ImportError::Dtd(lines.at(at))),
            Event::Start(_) | Event::Empty(_) if root_done => {
                return Err(ImportError::OutsideRoot(lines.at(at)));
            }
            Event::Start(e) => {
                check_attributes(&e, &mut lines, at)?;
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ImportError::TooDeep(lines.at(at)));
                }
                match (depth, &mut open) {
                    (1, _) => check_root(&e)?,
                    (2, None) if e.name().as_ref() == "d" => {
                        entries += 1;
                        if entries > limits.max_items {
                            return Err(ImportError::TooManyItems(limits.max_items));
                        }
                        open = Some(OpenD::new(&e, lines.at(at), limits.max_text_chars)?);
                    }
                    (_, Some(d)) => d.nested = true,
                    _ => {}
                }
            }
            Event::Empty(e) => {
                check_attributes(&e, &mut lines, at)?;
                match (depth, &mut open) {
                    (0, _) => {
                        check_root(&e)?;
                        root_done = true;
                    }
                    (1, _) if e.name().as_ref() == "d" => {
                        entries += 1;
                        if entries > limits.max_items {
                            return Err(ImportError::TooManyItems(limits.max_items));
                        }
                        let d = OpenD::new(&e, lines.at(at), limits.max_text_chars)?;
                        out.push(d.finish(limits));
                    }
                    (_, Some(d)) => d.nested = true,
                    _ => {}
                }
            }
            Event::End(_) => {
                if depth == 2 {
                    if let Some(d) = open.take() {
                        out.push(d.finish(limits));
                    }
                }
                // Unmatched end tags are refused by the parser itself.
                depth = depth.saturating_sub(1);
                root_done |= depth == 0;
            }
            Event::Text(t) => {
                let t = t.xml10_content();
                if depth == 0 && !t.trim_matches(is_xml_space).is_empty() {
                    return Err(ImportError::OutsideRoot(lines.at(at)));
                }
                if let (2, Some(d)) = (depth, &mut open) {
                    d.push(&t);
                }
            }
            Event::CData(c) => {
                if depth == 0 {
                    return Err(ImportError::OutsideRoot(lines.at(at)));
                }
                if let (2, Some(d)) = (depth, &mut open) {
                    d.push(&c.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                let line = lines.at(at);
                if depth == 0 {
                    return Err(ImportError::OutsideRoot(line));
                }
                let syntax = |e: quick_xml::Error| ImportError::Syntax {
                    line,
                    message: e.to_string(),
                };
                let mut buf = [0; 4];
                let resolved = match r.resolve_char_ref().map_err(syntax)? {
                    Some(c) => &*c.encode_utf8(&mut buf),
                    None => {
                        resolve_predefined_entity(&r).ok_or_else(|| ImportError::UnknownEntity {
                            line,
                            name: quote(&r),
                        })?
                    }
                };
                if let (2, Some(d)) = (depth, &mut open) {
                    d.push(resolved);
                }
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    match (depth, root_done) {
        (0, true) => Ok(out),
        (0, false) => Err(ImportError::NoRoot),
        _ => Err(ImportError::Truncated),
    }
}

/// A line of our JSON lines export: a history item, of which only the
/// fields a danmaku keeps are read (unknown fields are ignored).
#[derive(Deserialize)]
struct JsonLine {
    text: String,
    #[serde(default)]
    vt: Option<f64>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    color: Option<String>,
    #[serde(default)]
    size: Option<i64>,
    #[serde(default)]
    ts: Option<i64>,
}

/// Reads our JSON lines (`application/x-ndjson`): one object per line, as
/// the history API and `danmaku export --format jsonl` write them, with
/// `text` and optionally `vt`, `mode`, `color`, `size` (other fields, such
/// as `id` and `ts`, are read past: the server numbers and dates what it
/// stores). Blank lines are skipped; a line that is not
/// such an object, or whose fields a send could not have, is dropped.
pub fn parse_ndjson(input: &[u8], limits: &ImportLimits) -> Result<Imported, ImportError> {
    let text = utf8_within(input, limits)?;
    let mut out = Imported::default();
    let mut entries = 0usize;
    for (i, line) in text.split('\n').enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        entries += 1;
        if entries > limits.max_items {
            return Err(ImportError::TooManyItems(limits.max_items));
        }
        let item = serde_json::from_str::<JsonLine>(line)
            .map_err(|e| DropReason::Json(e.to_string()))
            .and_then(|l| {
                let mode = match l.mode {
                    None => Mode::default(),
                    Some(m) => Mode::parse(&m).ok_or_else(|| invalid("mode", &m))?,
                };
                let color = match l.color {
                    None => Color::WHITE,
                    Some(c) => Color::parse(&c).ok_or_else(|| invalid("color", &c))?,
                };
                let size = l.size.unwrap_or(DEFAULT_SIZE.into());
                let fields = Fields {
                    vt: l.vt,
                    mode,
                    color,
                    size,
                    ctime_ms: l.ts,
                    user_hash: None,
                };
                fields.check(l.text, limits.max_text_chars)
            });
        out.push(Entry { line: i + 1, item });
    }
    Ok(out)
}

/// The input as UTF-8 without a byte-order mark, if it is within the byte
/// limit.
fn utf8_within<'a>(input: &'a [u8], limits: &ImportLimits) -> Result<&'a str, ImportError> {
    if input.len() > limits.max_bytes {
        return Err(ImportError::TooLarge {
            size: input.len(),
            limit: limits.max_bytes,
        });
    }
    let text = std::str::from_utf8(input).map_err(|e| ImportError::NotUtf8(e.valid_up_to()))?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// A parser position as an index into the input (which fits in memory,
/// so in a `usize`).
fn offset(position: u64) -> usize {
    usize::try_from(position).unwrap_or(usize::MAX)
}

/// XML's white space (the `S` production), the only text allowed outside
/// the root element.
fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Refuses a start tag whose attributes are not well-formed (a missing
/// quote, a repeated name).
fn check_attributes(
    e: &BytesStart<'_>,
    lines: &mut Lines<'_>,
    at: usize,
) -> Result<(), ImportError> {
    for attribute in e.attributes() {
        attribute.map_err(|err| ImportError::Syntax {
            line: lines.at(at),
            message: err.to_string(),
        })?;
    }
    Ok(())
}

/// Refuses a root element other than `<i>`.
fn check_root(e: &BytesStart<'_>) -> Result<(), ImportError> {
    if e.name().as_ref() == "i" {
        Ok(())
    } else {
        Err(ImportError::NotBilibili(quote(e.name().as_ref())))
    }
}

/// Turns byte offsets into line numbers, counting newlines once as the
/// parser moves forward.
struct Lines<'a> {
    input: &'a [u8],
    counted: usize,
    line: usize,
}

impl<'a> Lines<'a> {
    fn new(input: &'a str) -> Lines<'a> {
        Lines {
            input: input.as_bytes(),
            counted: 0,
            line: 1,
        }
    }

    /// The line of byte `offset`. Offsets only move forward, except an
    /// error's, which may lie a little behind: counted from the start then.
    fn at(&mut self, offset: usize) -> usize {
        let offset = offset.min(self.input.len());
        if offset < self.counted {
            return 1 + memchr::memchr_iter(b'\n', &self.input[..offset]).count();
        }
        self.line += memchr::memchr_iter(b'\n', &self.input[self.counted..offset]).count();
        self.counted = offset;
        self.line
    }
}

/// A `<d>` being read: its `p`, and its text so far.
struct OpenD {
    line: usize,
    p: Option<String>,
    text: String,
    /// Characters in `text`. Reading stops one past the limit, so a huge
    /// text costs no more memory than a long one.
    chars: usize,
    max_chars: usize,
    nested: bool,
}

impl OpenD {
    fn new(e: &BytesStart<'_>, line: usize, max_chars: usize) -> Result<OpenD, ImportError> {
        let p = match e.try_get_attribute("p") {
            Ok(Some(p)) => Some(
                p.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .map_err(|err| ImportError::Syntax {
                        line,
                        message: err.to_string(),
                    })?
                    .into_owned(),
            ),
            Ok(None) => None,
            Err(err) => {
                return Err(ImportError::Syntax {
                    line,
                    message: err.to_string(),
                })
            }
        };
        Ok(OpenD {
            line,
            p,
            text: String::new(),
            chars: 0,
            max_chars,
            nested: false,
        })
    }

    fn push(&mut self, s: &str) {
        for c in s.chars() {
            if self.chars > self.max_chars {
                return;
            }
            self.text.push(c);
            self.chars += 1;
        }
    }

    fn finish(self, limits: &ImportLimits) -> Entry {
        let item = if self.nested {
            Err(DropReason::Nested)
        } else if let Some(c) = self.text.chars().find(|&c| !is_xml_char(c)) {
            Err(DropReason::NotXml(c))
        } else {
            match self.p.as_deref().map(parse_p) {
                None => Err(DropReason::MissingP),
                Some(Err(reason)) => Err(reason),
                Some(Ok(fields)) => fields.check(self.text, limits.max_text_chars),
            }
        };
        Entry {
            line: self.line,
            item,
        }
    }
}

/// One entry of a file, read: a danmaku or why not.
struct Entry {
    line: usize,
    item: Result<ImportedDanmaku, DropReason>,
}

impl Imported {
    fn push(&mut self, entry: Entry) {
        match entry.item {
            Ok(item) => self.items.push(item),
            Err(reason) => self.dropped.push(Dropped {
                line: entry.line,
                reason,
            }),
        }
    }
}

/// Every field of an imported danmaku but its text, parsed but not yet
/// checked against the rules of a send.
struct Fields {
    vt: Option<f64>,
    mode: Mode,
    color: Color,
    size: i64,
    ctime_ms: Option<i64>,
    user_hash: Option<String>,
}

impl Fields {
    /// Holds the fields and `text` to the rules of a send.
    fn check(self, text: String, max_chars: usize) -> Result<ImportedDanmaku, DropReason> {
        if let Some(vt) = self.vt {
            if !vt.is_finite() || !(0.0..=MAX_VIDEO_TIME).contains(&vt) {
                return Err(invalid("video time", &vt.to_string()));
            }
        }
        let size = u16::try_from(self.size)
            .ok()
            .filter(|s| SIZE_RANGE.contains(s))
            .ok_or_else(|| invalid("size", &self.size.to_string()))?;
        if text.trim().is_empty() {
            return Err(DropReason::EmptyText);
        }
        if text.chars().count() > max_chars {
            return Err(DropReason::TextTooLong(max_chars));
        }
        check_text(&text).map_err(|e| DropReason::RefusedText(e.message))?;
        Ok(ImportedDanmaku {
            vt: self.vt,
            mode: self.mode,
            color: self.color,
            size,
            text,
            ctime_ms: self.ctime_ms,
            user_hash: self.user_hash,
        })
    }
}

/// Reads a `p` attribute: time, mode, size and colour are needed; the time
/// sent and the user hash are kept when they are there and make sense; the
/// pool, the id and anything after are ignored.
fn parse_p(p: &str) -> Result<Fields, DropReason> {
    let fields: Vec<&str> = p.split(',').take(8).collect();
    let [time, mode, size, color, rest @ ..] = fields.as_slice() else {
        return Err(DropReason::ShortP(fields.len()));
    };
    let vt = time
        .trim()
        .parse::<f64>()
        .map_err(|_| invalid("video time", time))?;
    let mode = match mode.trim().parse::<u8>() {
        Ok(1..=3) => Mode::Scroll,
        Ok(4) => Mode::Bottom,
        Ok(5) => Mode::Top,
        Ok(6) => Mode::Reverse,
        Ok(code @ 7..=9) => return Err(DropReason::UnsupportedMode(code)),
        _ => return Err(invalid("mode", mode)),
    };
    let size = size
        .trim()
        .parse::<i64>()
        .map_err(|_| invalid("size", size))?;
    let color = color
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|&c| c <= 0xff_ff_ff)
        .map(Color)
        .ok_or_else(|| invalid("color", color))?;
    let ctime_ms = rest
        .first()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|s| s.checked_mul(1000));
    let user_hash = rest
        .get(2)
        .map(|h| h.trim())
        .filter(|h| {
            (1..=QUOTE_CHARS).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_alphanumeric())
        })
        .map(str::to_owned);
    Ok(Fields {
        vt: Some(vt),
        mode,
        color,
        size,
        ctime_ms,
        user_hash,
    })
}

/// A field that does not parse or is out of range.
fn invalid(field: &'static str, value: &str) -> DropReason {
    DropReason::InvalidField {
        field,
        value: quote(value),
    }
}

/// At most [`QUOTE_CHARS`] characters of `s`, to quote back in an error.
fn quote(s: &str) -> String {
    s.chars().take(QUOTE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ImportLimits = ImportLimits {
        max_bytes: 1 << 20,
        max_items: 1000,
        max_text_chars: 100,
    };

    fn danmaku(id: u64, text: &str, mode: Mode, vt: Option<f64>) -> Danmaku {
        Danmaku {
            id,
            room: "r".into(),
            user: "alice".into(),
            name: "Alice".into(),
            text: text.into(),
            mode,
            color: Color(0x12ab34),
            size: 36,
            ts: 1_700_000_123_456,
            vt,
            priority: false,
        }
    }

    /// A whole export of `items`, as the route will stream it.
    fn export(items: &[Danmaku]) -> Vec<u8> {
        let w = XmlWriter::new(1000);
        let mut out = w.header("room-1");
        for d in items {
            out.extend(w.d(d));
        }
        out.extend(w.footer());
        out
    }

    fn wrap(body: &str) -> Vec<u8> {
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><i><chatid>1</chatid>{body}</i>")
            .into_bytes()
    }

    #[test]
    fn a_row_has_the_eight_fields_of_a_real_export() {
        let d = danmaku(42, "hi", Mode::Top, Some(12.345678));
        let row = String::from_utf8(XmlWriter::new(1).d(&d)).unwrap();
        let hash = member_hash("alice");
        assert_eq!(
            row,
            format!("<d p=\"12.345678,5,36,1223476,1700000123,0,{hash},42\">hi</d>\n")
        );
        for (vt, written) in [
            (None, "0"),
            (Some(-0.0), "0"),
            (Some(3.0), "3"),
            (Some(0.1 + 0.2), "0.30000000000000004"),
            (Some(1e-7), "0.0000001"),
            (Some(2_592_000.0), "2592000"),
        ] {
            let row =
                String::from_utf8(XmlWriter::new(1).d(&danmaku(1, "x", Mode::Bottom, vt))).unwrap();
            assert!(
                row.starts_with(&format!("<d p=\"{written},4,")),
                "{vt:?}: {row}"
            );
        }
        for (mode, code) in [
            (Mode::Scroll, 1),
            (Mode::Bottom, 4),
            (Mode::Top, 5),
            (Mode::Reverse, 6),
        ] {
            assert_eq!(i32::from(mode_code(mode)), code);
        }
    }

    #[test]
    fn the_header_starts_the_way_converters_probe_for() {
        let header = String::from_utf8(XmlWriter::new(3000).header("a&b")).unwrap();
        assert!(header.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><i>"));
        for element in [
            "<chatid>a&amp;b</chatid>",
            "<mission>0</mission>",
            "<maxlimit>3000</maxlimit>",
            "<state>0</state>",
            "<real_name>0</real_name>",
            "<source>k-v</source>",
        ] {
            assert!(header.contains(element), "{element} in {header}");
        }
    }

    #[test]
    fn escapes_with_the_five_named_entities_only() {
        let d = danmaku(
            1,
            "<img src=x onerror=alert(1)> & \"q\" 'a'",
            Mode::Scroll,
            None,
        );
        let row = String::from_utf8(XmlWriter::new(1).d(&d)).unwrap();
        assert!(row
            .contains(">&lt;img src=x onerror=alert(1)&gt; &amp; &quot;q&quot; &apos;a&apos;</d>"));
        assert!(!row.contains("&#"), "{row}");
    }

    #[test]
    fn drops_characters_xml_cannot_carry() {
        let mut out = String::new();
        escape_into(&mut out, "a\u{0}b\u{1b}c\u{fffe}d\u{ffff}e\tf\ng\u{10000}");
        assert_eq!(out, "abcde\tf\ng\u{10000}");
    }

    #[test]
    fn round_trips_every_mode_and_tricky_text() {
        let texts = [
            "<img src=x onerror=alert(1)>",
            "Tom & Jerry &amp; &lt;",
            "\"double\" 'single'",
            "emoji 😀👍🏽 and ZWJ 👩‍👩‍👧",
            "中文弹幕 テスト 한국어",
            "  spaces kept  ",
            "]]> <![CDATA[ x ]]>",
        ];
        let items: Vec<Danmaku> = texts
            .iter()
            .zip(Mode::ALL.iter().cycle())
            .enumerate()
            .map(|(i, (text, &mode))| danmaku(i as u64 + 1, text, mode, Some(i as f64 * 1.25)))
            .collect();
        let back = parse(&export(&items), &LIMITS).unwrap();
        assert_eq!(back.dropped, vec![]);
        assert_eq!(back.items.len(), items.len());
        for (d, b) in items.iter().zip(&back.items) {
            assert_eq!(b.text, d.text);
            assert_eq!(b.mode, d.mode);
            assert_eq!(b.color, d.color);
            assert_eq!(b.size, d.size);
            assert_eq!(b.vt, d.vt);
            assert_eq!(b.ctime_ms, Some(1_700_000_123_000));
            assert_eq!(b.user_hash.as_deref(), Some(member_hash("alice").as_str()));
        }
    }

    #[test]
    fn reads_the_real_format_sample() {
        let sample = include_bytes!("../../tests/fixtures/bilibili-sample.xml");
        let got = parse(sample, &LIMITS).unwrap();
        let modes: Vec<Mode> = got.items.iter().map(|d| d.mode).collect();
        assert_eq!(
            modes,
            [
                Mode::Scroll,
                Mode::Scroll,
                Mode::Bottom,
                Mode::Top,
                Mode::Reverse,
                Mode::Scroll
            ]
        );
        let first = &got.items[0];
        assert_eq!(first.text, "第一条弹幕，滚动");
        assert_eq!(first.vt, Some(490.191));
        assert_eq!(first.size, 25);
        assert_eq!(first.color, Color(0xffffff));
        assert_eq!(first.ctime_ms, Some(1_584_268_892_000));
        assert_eq!(first.user_hash.as_deref(), Some("a16fe0dd"));
        assert_eq!(got.items[5].text, "a < b & \"c\" 'd' > e");
        let dropped: Vec<(usize, &DropReason)> =
            got.dropped.iter().map(|d| (d.line, &d.reason)).collect();
        assert_eq!(
            dropped,
            [
                (18, &DropReason::UnsupportedMode(7)),
                (19, &DropReason::UnsupportedMode(8)),
            ]
        );
        assert_eq!(
            got.dropped[0].reason.to_string(),
            "mode 7 (advanced danmaku) has no equivalent here"
        );
    }

    #[test]
    fn drops_bad_entries_and_says_why() {
        let input = wrap(concat!(
            "\n<d>no p</d>",
            "\n<d p=\"1,1,25\">short</d>",
            "\n<d p=\"x,1,25,0\">bad time</d>",
            "\n<d p=\"1,0,25,0\">bad mode</d>",
            "\n<d p=\"1,1,25,16777216\">bad colour</d>",
            "\n<d p=\"1,1,99,0\">bad size</d>",
            "\n<d p=\"1,1,25,0\">  </d>",
            "\n<d p=\"1,1,25,0\"/>",
            "\n<d p=\"1,1,25,0\">a\u{1}b</d>",
            "\n<d p=\"1,1,25,0\">line&#10;break</d>",
            "\n<d p=\"1,1,25,0\">a<b>bold</b></d>",
            "\n<d p=\"-1,1,25,0\">negative</d>",
            "\n<d p=\"inf,1,25,0\">infinite</d>",
            "\n<d p=\"1,1,25,0\">a&#xFFFF;b</d>",
            "\n<unknown>ignored</unknown>",
            "\n<d p=\"1,1,25,0\">kept</d>\n",
        ));
        let got = parse(&input, &LIMITS).unwrap();
        assert_eq!(got.items.len(), 1);
        assert_eq!(got.items[0].text, "kept");
        assert_eq!(got.items[0].ctime_ms, None);
        assert_eq!(got.items[0].user_hash, None);
        let reasons: Vec<(usize, String)> = got
            .dropped
            .iter()
            .map(|d| (d.line, d.reason.to_string()))
            .collect();
        let lines: Vec<usize> = reasons.iter().map(|r| r.0).collect();
        assert_eq!(lines, (2..=15).collect::<Vec<_>>());
        assert_eq!(got.dropped[0].reason, DropReason::MissingP);
        assert_eq!(got.dropped[1].reason, DropReason::ShortP(3));
        assert_eq!(got.dropped[2].reason, invalid("video time", "x"));
        assert_eq!(got.dropped[3].reason, invalid("mode", "0"));
        assert_eq!(got.dropped[4].reason, invalid("color", "16777216"));
        assert_eq!(got.dropped[5].reason, invalid("size", "99"));
        assert_eq!(got.dropped[6].reason, DropReason::EmptyText);
        assert_eq!(got.dropped[7].reason, DropReason::EmptyText);
        assert_eq!(got.dropped[8].reason, DropReason::NotXml('\u{1}'));
        assert!(matches!(got.dropped[9].reason, DropReason::RefusedText(_)));
        assert_eq!(got.dropped[10].reason, DropReason::Nested);
        assert_eq!(got.dropped[11].reason, invalid("video time", "-1"));
        assert_eq!(got.dropped[12].reason, invalid("video time", "inf"));
        assert_eq!(got.dropped[13].reason, DropReason::NotXml('\u{ffff}'));
    }

    #[test]
    fn a_text_over_the_limit_is_dropped_without_being_kept_whole() {
        let long = "字".repeat(10_000);
        let input = wrap(&format!("<d p=\"1,1,25,0\">{long}</d>"));
        let got = parse(&input, &LIMITS).unwrap();
        assert_eq!(got.dropped[0].reason, DropReason::TextTooLong(100));
        let exact = "字".repeat(100);
        let input = wrap(&format!("<d p=\"1,1,25,0\">{exact}</d>"));
        assert_eq!(parse(&input, &LIMITS).unwrap().items[0].text, exact);
    }

    #[test]
    fn refuses_bombs_and_non_xml_whole() {
        let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<i><d p="1,1,25,0">&lol3;</d></i>"#;
        assert_eq!(parse(laughs.as_bytes(), &LIMITS), Err(ImportError::Dtd(2)));
        let external = r#"<?xml version="1.0"?><!DOCTYPE i [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><i><d p="1,1,25,0">&xxe;</d></i>"#;
        assert_eq!(
            parse(external.as_bytes(), &LIMITS),
            Err(ImportError::Dtd(1))
        );
        // An entity used without any declaration is not expanded either.
        let undeclared = wrap("<d p=\"1,1,25,0\">&xxe;</d>");
        assert!(matches!(
            parse(&undeclared, &LIMITS),
            Err(ImportError::UnknownEntity { name, .. }) if name == "xxe"
        ));
        let deep = format!("<i>{}{}</i>", "<a>".repeat(100_000), "</a>".repeat(100_000));
        assert_eq!(
            parse(deep.as_bytes(), &LIMITS),
            Err(ImportError::TooDeep(1))
        );
        type Expect = fn(&ImportError) -> bool;
        let cases: [(&[u8], Expect); 9] = [
            (b"not xml at all", |e| {
                matches!(e, ImportError::OutsideRoot(1))
            }),
            (b"", |e| *e == ImportError::NoRoot),
            (b"{\"text\":\"json\"}", |e| {
                matches!(e, ImportError::OutsideRoot(_))
            }),
            (b"<i><d p=\"1,1,25,0\">cut", |e| {
                *e == ImportError::Truncated
            }),
            (b"<i><d p=\"1,1,25", |e| {
                matches!(e, ImportError::Syntax { .. })
            }),
            (b"<i><d p=\"1,1,25,0\">x</e></i>", |e| {
                matches!(e, ImportError::Syntax { .. })
            }),
            (b"<i></i><i></i>", |e| {
                matches!(e, ImportError::OutsideRoot(1))
            }),
            (b"<html><d p=\"1,1,25,0\">x</d></html>", |e| {
                *e == ImportError::NotBilibili("html".into())
            }),
            (b"<i>\xff\xfe</i>", |e| *e == ImportError::NotUtf8(3)),
        ];
        for (input, expected) in cases {
            let got = parse(input, &LIMITS);
            assert!(
                matches!(&got, Err(e) if expected(e)),
                "{:?}: {got:?}",
                String::from_utf8_lossy(input)
            );
        }
        let gbk = b"<?xml version=\"1.0\" encoding=\"GBK\"?><i></i>";
        assert_eq!(
            parse(gbk, &LIMITS),
            Err(ImportError::Encoding("GBK".into()))
        );
        let dup = wrap("<d p=\"1,1,25,0\" p=\"2,1,25,0\">x</d>");
        assert!(matches!(
            parse(&dup, &LIMITS),
            Err(ImportError::Syntax { .. })
        ));
    }

    #[test]
    fn limits_refuse_the_whole_file() {
        let items: Vec<Danmaku> = (1..=3)
            .map(|i| danmaku(i, "x", Mode::Scroll, None))
            .collect();
        let file = export(&items);
        let two = ImportLimits {
            max_items: 2,
            ..LIMITS
        };
        assert_eq!(parse(&file, &two), Err(ImportError::TooManyItems(2)));
        let small = ImportLimits {
            max_bytes: 10,
            ..LIMITS
        };
        assert!(matches!(
            parse(&file, &small),
            Err(ImportError::TooLarge { limit: 10, .. })
        ));
        assert_eq!(parse(&file, &LIMITS).unwrap().items.len(), 3);
    }

    #[test]
    fn an_empty_root_and_a_bom_are_fine() {
        let got = parse(
            "\u{feff}<?xml version=\"1.0\"?>\n<i/>\n".as_bytes(),
            &LIMITS,
        )
        .unwrap();
        assert_eq!(got, Imported::default());
    }

    #[test]
    fn reads_our_json_lines() {
        let input = concat!(
            r##"{"id":1,"room":"r","user":"u","name":"n","text":"first","mode":"top","color":"#ff0000","size":30,"ts":1700000000000,"vt":1.5}"##,
            "\r\n\n",
            r#"{"text":"defaults"}"#,
            "\n",
            r#"{"text":"bad mode","mode":"diagonal"}"#,
            "\n",
            r#"{"text":"bad colour","color":"red"}"#,
            "\n",
            r#"{"text":"bad size","size":200}"#,
            "\n",
            r#"{"text":""}"#,
            "\n",
            "not json\n",
            r#"{"mode":"top"}"#,
            "\n",
        );
        let got = parse_ndjson(input.as_bytes(), &LIMITS).unwrap();
        assert_eq!(
            got.items,
            [
                ImportedDanmaku {
                    vt: Some(1.5),
                    mode: Mode::Top,
                    color: Color(0xff0000),
                    size: 30,
                    text: "first".into(),
                    ctime_ms: Some(1_700_000_000_000),
                    user_hash: None,
                },
                ImportedDanmaku {
                    vt: None,
                    mode: Mode::Scroll,
                    color: Color::WHITE,
                    size: DEFAULT_SIZE,
                    text: "defaults".into(),
                    ctime_ms: None,
                    user_hash: None,
                }
            ]
        );
        let lines: Vec<usize> = got.dropped.iter().map(|d| d.line).collect();
        assert_eq!(lines, [4, 5, 6, 7, 8, 9]);
        assert_eq!(got.dropped[0].reason, invalid("mode", "diagonal"));
        assert_eq!(got.dropped[1].reason, invalid("color", "red"));
        assert_eq!(got.dropped[2].reason, invalid("size", "200"));
        assert_eq!(got.dropped[3].reason, DropReason::EmptyText);
        assert!(matches!(got.dropped[4].reason, DropReason::Json(_)));
        assert!(matches!(got.dropped[5].reason, DropReason::Json(_)));

        assert_eq!(
            parse_ndjson(b"{\"text\":\"\xff\"}", &LIMITS),
            Err(ImportError::NotUtf8(9))
        );
        let one = ImportLimits {
            max_items: 1,
            ..LIMITS
        };
        assert_eq!(
            parse_ndjson(b"{\"text\":\"a\"}\n\n{\"text\":\"b\"}", &one),
            Err(ImportError::TooManyItems(1))
        );
    }

    #[test]
    fn an_import_becomes_a_send_of_the_room() {
        let got = parse(&wrap("<d p=\"2.5,5,18,255\">hello</d>"), &LIMITS).unwrap();
        let new = got.items[0].clone().into_new("lobby", "admin", "Admin");
        assert_eq!(
            (new.room.as_str(), new.user.as_str(), new.name.as_str()),
            ("lobby", "admin", "Admin")
        );
        assert_eq!(
            (new.text.as_str(), new.mode, new.color, new.size, new.vt),
            ("hello", Mode::Top, Color(255), 18, Some(2.5))
        );
        assert!(!new.priority);
    }
}
