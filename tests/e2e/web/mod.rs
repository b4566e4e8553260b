//! The web front (docs/web.md): how the pages and their files are served,
//! and, one module per page, each page in Debian's Chromium driven by
//! playwright-core (`tests/clients/pages/*.mjs`).

mod admin;
mod live;
mod overlay;
mod player;
mod wall;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;

use crate::server::*;

/// Runs `tests/clients/pages/SCRIPT` with `args` and returns the JSON
/// report it printed.
pub fn page_script(script: &str, args: &[&str]) -> Value {
    let out = node_client(&format!("pages/{script}"), args);
    serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!(
            "{script} printed no report ({e}): {}",
            String::from_utf8_lossy(&out)
        )
    })
}

/// A page script the test talks with while it runs
/// (`tests/clients/pages/SCRIPT`): it prints a JSON line when it wants
/// the test to act (restart the server, post live danmaku), reads the
/// test's answer on stdin, and ends with its report.
pub struct Conversation {
    script: String,
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Conversation {
    /// Starts `node pages/SCRIPT ARGS…`.
    pub fn start(script: &str, args: &[&str]) -> Conversation {
        Conversation::client(&format!("pages/{script}"), args)
    }

    /// Starts `node PATH ARGS…`, PATH being under `tests/clients`.
    pub fn client(path: &str, args: &[&str]) -> Conversation {
        let mut child = Command::new("node")
            .arg(path)
            .args(args)
            .current_dir(clients_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (Node.js 20) runs");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Conversation {
            script: path.to_owned(),
            child,
            stdin,
            lines,
        }
    }

    /// The next JSON line the script prints.
    pub fn next(&mut self) -> Value {
        let line = self
            .lines
            .next()
            .unwrap_or_else(|| panic!("{} ended early (see its stderr)", self.script))
            .unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Sends the script one line.
    pub fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }

    /// The script's last line, its report, once it has ended well.
    pub fn report(mut self) -> Value {
        let report = self.next();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{} failed: {status}", self.script);
        report
    }
}

impl Drop for Conversation {
    /// A test that failed half-way does not leave node and Chromium behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs SCRIPT's `restart` scenario on ROOM: once the page is live, one
/// danmaku is sent, the server stops and comes back on the same address
/// and data, and `during` are sent while the page still waits to
/// reconnect (so only `since` can bring them). The page is then told every
/// text sent, in order, and waits to show them; returns its report and
/// those texts.
pub async fn across_a_restart(script: &str, room: &str, during: &[&str]) -> (Value, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, Some(EXEMPT_LOOPBACK));
    let addr = server.addr.clone();
    let mut page = Conversation::start(script, &["restart", &server.url(), room]);
    assert_eq!(page.next(), serde_json::json!({"live": true}));
    let mut sent = vec!["before the restart".to_owned()];
    let (status, body) = post(&server, room, serde_json::json!({"text": sent[0]})).await;
    assert_eq!(status, 201, "{body}");
    server.stop();
    let server = Server::start_at(&data, Some(EXEMPT_LOOPBACK), &addr);
    for text in during {
        let (status, body) = post(&server, room, serde_json::json!({ "text": text })).await;
        assert_eq!(status, 201, "{body}");
        sent.push((*text).to_owned());
    }
    page.say(&sent.join("\t"));
    let report = page.report();
    server.stop();
    (report, sent)
}

/// Every page route, with a valid room where it takes one.
const PAGES: [&str; 8] = [
    "/",
    "/r/lobby",
    "/v/film",
    "/overlay/stream",
    "/wall/hall",
    "/m/hall",
    "/admin",
    "/r/a.b:c-d_e",
];

#[tokio::test]
async fn every_page_forbids_inline_script_and_names_only_hashed_assets() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    for path in PAGES {
        let res = http()
            .get(format!("{}{path}", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let h = res.headers().clone();
        assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self';"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        let framing = if path == "/admin" {
            "frame-ancestors 'none'"
        } else {
            "frame-ancestors *"
        };
        assert!(csp.contains(framing), "{path}: {csp}");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["cache-control"], "no-cache");
        let page = res.text().await.unwrap();
        // Nothing a policy without 'unsafe-inline' would block, so that the
        // pages work as they are tested: no inline script, handler or style.
        for forbidden in [
            "<script>",
            " style=",
            " onclick=",
            " onload=",
            "javascript:",
            "<style",
        ] {
            assert!(!page.contains(forbidden), "{path} has {forbidden}");
        }
        for reference in page.split("\"/assets/").skip(1) {
            let name = reference.split('"').next().unwrap();
            // `render.0123456789.js`: a ten-digit hash before the extension.
            let hash = name.rsplit('.').nth(1).unwrap_or("");
            assert!(
                hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
                "{path} names {name}, not a hashed asset"
            );
            let res = http()
                .get(format!("{}/assets/{name}", server.url()))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{name}");
            assert_eq!(
                res.headers()["cache-control"],
                "public, max-age=31536000, immutable"
            );
        }
        // No page loads anything from another site.
        assert!(
            !page.contains("src=\"http") && !page.contains("href=\"http"),
            "{path}"
        );
    }
    assert_eq!(get_json(&server, "/r/bad%20room").await.0, 400);
    assert_eq!(get_json(&server, "/assets/nothing.js").await.0, 404);
    server.stop();
}

#[tokio::test]
async fn assets_are_compressed_and_revalidated() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let url = format!("{}/assets/danmaku.css", server.url());
    let plain = http().get(&url).send().await.unwrap();
    assert_eq!(plain.headers()["cache-control"], "no-cache");
    let etag = plain.headers()["etag"].clone();
    let body = plain.bytes().await.unwrap();
    let again = http()
        .get(&url)
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag);
    // Every asset of some size goes out compressed to a client that
    // takes brotli, and smaller than it is.
    let mut compressed = 0;
    for path in PAGES {
        let page = get_text(&server, path).await;
        for reference in page.split("\"/assets/").skip(1) {
            let name = reference.split('"').next().unwrap();
            let url = format!("{}/assets/{name}", server.url());
            let size = http()
                .get(&url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len();
            if size < 4096 {
                continue;
            }
            let res = http()
                .get(&url)
                .header("accept-encoding", "gzip, br")
                .send()
                .await
                .unwrap();
            assert_eq!(res.headers()["content-encoding"], "br", "{name}");
            assert_eq!(res.headers()["vary"], "accept-encoding", "{name}");
            assert!(res.bytes().await.unwrap().len() < size * 9 / 10, "{name}");
            compressed += 1;
        }
    }
    assert!(compressed > 0, "no asset was big enough to compress");
    assert!(!body.is_empty());
    server.stop();
}

#[tokio::test]
async fn the_walls_phone_address_is_the_public_url_or_the_host_it_was_loaded_from() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let (status, body) = get_json(&server, "/wall/hall/phone").await;
    assert_eq!(status, 200);
    let host = server.url().trim_start_matches("http://").to_owned();
    assert_eq!(body["url"], format!("http://{host}/m/hall"));
    let svg = http()
        .get(format!("{}/wall/hall/qr.svg", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    assert!(svg.text().await.unwrap().contains("<svg"));
    server.stop();

    let dir = tempfile::tempdir().unwrap();
    let config = "[web]\npublic_url = \"https://live.example/\"\n";
    let server = Server::start(&dir.path().join("data"), Some(config));
    let (_, body) = get_json(&server, "/wall/hall/phone").await;
    assert_eq!(body["url"], "https://live.example/m/hall");
    server.stop();
}
