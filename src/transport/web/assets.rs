//! The web front's files, embedded in the binary: pages under `web/pages/`,
//! scripts and styles under `web/assets/`.
//!
//! Each asset is served twice: under a name that carries a hash of its
//! content (`render.3f2a9c01b4.js`), cached for a year, and under its plain
//! name, revalidated on every use. Pages name assets by their plain names
//! (`/assets/render.js`); this module rewrites those references to the
//! hashed names once, at first use, so a page always loads the assets it
//! was built with and a new binary never meets a stale cached script.
//! A text file is compressed (brotli or gzip) the first time a client
//! that takes that encoding asks for it, off the async workers, and the
//! result is kept: compressing every file at start would cost each start
//! seconds of CPU, mostly for files nobody asks this process for.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{LazyLock, OnceLock};

use axum::http::{header, HeaderMap, HeaderValue};
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// A file of `web/`, embedded.
struct Source {
    /// Its path under `web/pages/` or `web/assets/`.
    name: &'static str,
    bytes: &'static [u8],
}

/// Embeds files of one folder of `web/`, by path.
macro_rules! embed {
    ($folder:literal: $($name:literal),* $(,)?) => {
        &[$(Source {
            name: $name,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $folder, "/", $name)),
        }),*]
    };
}

/// The pages (docs/web.md names the route of each).
const PAGES: &[Source] = embed!("pages":
    "live.html",
    "player.html",
    "overlay.html",
    "wall.html",
    "phone.html",
    "admin.html",
);

/// Every file under `web/assets/`; one line each.
const ASSETS: &[Source] = embed!("assets":
    "danmaku.css",
    "render.js",
    "client.js",
    "live.js",
    "live.css",
    "overlay.js",
    "overlay.css",
    "wall.js",
    "wall.css",
    "phone.js",
    "phone.css",
    "admin.js",
    "admin.css",
    "vendor/uplot/uPlot.iife.min.js",
    "vendor/uplot/uPlot.min.css",
    "vendor/uplot/LICENSE.txt",
    "player.js",
    "player.css",
);

/// One servable file: its bytes in each encoding, and its headers.
pub struct File {
    content_type: &'static str,
    etag: HeaderValue,
    plain: Bytes,
    /// A text file big enough that compressing it may pay.
    compressible: bool,
    /// Once asked for: the compressed bytes, or `None` when they save
    /// too little to be worth sending.
    gzip: OnceLock<Option<Bytes>>,
    brotli: OnceLock<Option<Bytes>>,
}

/// The encodings a file may be sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// As it is.
    Identity,
    /// `gzip`.
    Gzip,
    /// `br`.
    Brotli,
}

impl Encoding {
    /// The `Content-Encoding` value, if any.
    pub fn header(self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some("gzip"),
            Encoding::Brotli => Some("br"),
        }
    }
}

impl File {
    /// The file's media type.
    pub fn content_type(&self) -> &'static str {
        self.content_type
    }

    /// A strong validator: a hash of the content.
    pub fn etag(&self) -> &HeaderValue {
        &self.etag
    }

    /// The smallest encoding the client accepts, and its bytes.
    pub async fn body_for(&'static self, request: &HeaderMap) -> (Encoding, Bytes) {
        if self.compressible {
            for encoding in [Encoding::Brotli, Encoding::Gzip] {
                let Some(name) = encoding.header() else {
                    continue;
                };
                if accepts_encoding(request, name) {
                    if let Some(bytes) = self.packed(encoding).await {
                        return (encoding, bytes);
                    }
                }
            }
        }
        (Encoding::Identity, self.plain.clone())
    }

    /// The file in `encoding`, compressed on first use on a blocking
    /// thread; `None` when that does not pay.
    async fn packed(&'static self, encoding: Encoding) -> Option<Bytes> {
        let cell = match encoding {
            Encoding::Brotli => &self.brotli,
            Encoding::Gzip => &self.gzip,
            Encoding::Identity => return None,
        };
        if let Some(done) = cell.get() {
            return done.clone();
        }
        let plain = self.plain.clone();
        tokio::task::spawn_blocking(move || {
            cell.get_or_init(|| {
                let packed = match encoding {
                    Encoding::Brotli => brotli(&plain),
                    _ => gzip(&plain),
                };
                ((packed.len() as f64) < plain.len() as f64 * WORTH_IT).then(|| Bytes::from(packed))
            })
            .clone()
        })
        .await
        .ok()
        .flatten()
    }

    /// Whether the request's `If-None-Match` names this content.
    pub fn not_modified(&self, request: &HeaderMap) -> bool {
        request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| {
                let tag = tag.trim();
                tag == "*" || tag.trim_start_matches("W/") == self.etag
            })
    }
}

/// The embedded files, hashed, rewritten and compressed.
pub struct Bundle {
    pages: HashMap<&'static str, File>,
    /// By hashed name (immutable) and by plain name.
    assets: HashMap<String, (File, Immutable)>,
}

/// Whether a name is a content-hashed one, cacheable for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Immutable(pub bool);

impl Bundle {
    /// The page from `web/pages/NAME`, its asset references hashed.
    pub fn page(&self, name: &str) -> Option<&File> {
        self.pages.get(name)
    }

    /// The asset served under `name`, plain or hashed.
    pub fn asset(&self, name: &str) -> Option<(&File, Immutable)> {
        self.assets.get(name).map(|(file, imm)| (file, *imm))
    }
}

/// The bundle, built at first use (the router asks for it at start-up).
pub fn bundle() -> &'static Bundle {
    static BUNDLE: LazyLock<Bundle> = LazyLock::new(build);
    &BUNDLE
}

fn build() -> Bundle {
    let mut assets = HashMap::new();
    let mut references = Vec::new();
    for source in ASSETS {
        let digest = Sha256::digest(source.bytes);
        let hashed = hashed_name(source.name, &digest);
        references.push((
            format!("\"/assets/{}\"", source.name),
            format!("\"/assets/{hashed}\""),
        ));
        let file = || file(source.name, Bytes::from_static(source.bytes));
        assets.insert(hashed, (file(), Immutable(true)));
        assets.insert(source.name.to_owned(), (file(), Immutable(false)));
    }
    let pages = PAGES
        .iter()
        .map(|source| {
            let mut text = String::from_utf8_lossy(source.bytes).into_owned();
            for (plain, hashed) in &references {
                text = text.replace(plain, hashed);
            }
            (source.name, file(source.name, Bytes::from(text)))
        })
        .collect();
    Bundle { pages, assets }
}

/// `render.js` → `render.<10 hex digits>.js`.
fn hashed_name(name: &str, digest: &[u8]) -> String {
    let hash: String = digest[..5].iter().map(|b| format!("{b:02x}")).collect();
    match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
        None => format!("{name}.{hash}"),
    }
}

/// Compressed encodings are kept only when they save at least this share.
const WORTH_IT: f64 = 0.9;

fn file(name: &str, plain: Bytes) -> File {
    let content_type = content_type(name);
    let digest = Sha256::digest(&plain);
    let etag = format!("\"{}\"", hashed_name("", &digest).trim_start_matches('.'));
    let text = !content_type.starts_with("image/png") && !content_type.starts_with("font/");
    File {
        content_type,
        etag: HeaderValue::from_str(&etag).expect("hex is a valid header value"),
        compressible: text && plain.len() > 512,
        plain,
        gzip: OnceLock::new(),
        brotli: OnceLock::new(),
    }
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("woff2") => "font/woff2",
        _ => "text/plain; charset=utf-8",
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

fn brotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        lgwin: 22,
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &bytes[..], &mut out, &params).expect("writing to memory");
    out
}

/// Whether `Accept-Encoding` takes `name` (not with `q=0`).
fn accepts_encoding(request: &HeaderMap, name: &str) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            coding.eq_ignore_ascii_case(name) && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn every_page_names_only_assets_that_exist_and_gets_their_hashed_names() {
        let bundle = bundle();
        for source in PAGES {
            let page = bundle
                .page(source.name)
                .expect("every page is in the bundle");
            let text = std::str::from_utf8(&page.plain).unwrap();
            for reference in text.split("\"/assets/").skip(1) {
                let name = reference.split('"').next().unwrap();
                let (_, immutable) = bundle
                    .asset(name)
                    .unwrap_or_else(|| panic!("{} names a missing asset {name}", source.name));
                assert_eq!(
                    immutable,
                    Immutable(true),
                    "{} names {name} unhashed",
                    source.name
                );
            }
        }
    }

    #[test]
    fn an_asset_is_served_under_its_hashed_and_its_plain_name() {
        let bundle = bundle();
        for source in ASSETS {
            let (plain, immutable) = bundle.asset(source.name).unwrap();
            assert_eq!(immutable, Immutable(false));
            let hashed = hashed_name(source.name, &Sha256::digest(source.bytes));
            let (file, immutable) = bundle.asset(&hashed).unwrap();
            assert_eq!(immutable, Immutable(true));
            assert_eq!(file.etag(), plain.etag());
        }
    }

    #[tokio::test]
    async fn the_client_gets_the_smallest_encoding_it_accepts() {
        let file: &'static File = Box::leak(Box::new(file(
            "a.js",
            Bytes::from("let danmaku = 1;\n".repeat(200)),
        )));
        let (enc, body) = file
            .body_for(&headers(&[("accept-encoding", "gzip, deflate, br")]))
            .await;
        assert_eq!(enc, Encoding::Brotli);
        assert!(body.len() < file.plain.len() / 10);
        let (enc, _) = file
            .body_for(&headers(&[("accept-encoding", "gzip, br;q=0")]))
            .await;
        assert_eq!(enc, Encoding::Gzip);
        let (enc, body) = file.body_for(&headers(&[])).await;
        assert_eq!(enc, Encoding::Identity);
        assert_eq!(body, file.plain);
        // A tiny file is not worth compressing.
        let small: &'static File =
            Box::leak(Box::new(super::file("b.js", Bytes::from_static(b"1"))));
        let (enc, _) = small.body_for(&headers(&[("accept-encoding", "br")])).await;
        assert_eq!(enc, Encoding::Identity);
        // Nor is one that does not shrink: bytes from xorshift.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let noise: &'static File = Box::leak(Box::new(super::file("c.js", Bytes::from(noise))));
        let (enc, _) = noise
            .body_for(&headers(&[("accept-encoding", "br, gzip")]))
            .await;
        assert_eq!(enc, Encoding::Identity);
    }

    #[test]
    fn if_none_match_with_the_etag_is_not_modified() {
        let file = file("a.css", Bytes::from_static(b"body{}"));
        let tag = file.etag().to_str().unwrap().to_owned();
        let mut map = HeaderMap::new();
        map.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&tag).unwrap());
        assert!(file.not_modified(&map));
        let other = headers(&[("if-none-match", "\"0000\"")]);
        assert!(!file.not_modified(&other));
    }
}
