//! The player routes as players and their tools use them: DPlayer's v3
//! backend, bilibili XML export and import (and biliass reading our
//! export), protobuf segments, CORS, and the import/export CLI.

use danmaku::protocol::bilibili_xml::{self, ImportLimits};
use danmaku::protocol::segment::DmSegMobileReply;
use prost::Message as _;
use reqwest::Method;
use serde_json::{json, Value};

use crate::moderation::{admin, call, config, user};
use crate::server::*;

/// A POST of raw `body` with `content_type` to `path`, as `token`.
async fn post_raw(
    server: &Server,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut req = http()
        .post(format!("{}{path}", server.url()))
        .header("content-type", content_type)
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// An admin's import of `body` (`content_type`) into `room`: status and
/// report.
async fn import(
    server: &Server,
    room: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let path = format!("/api/v1/rooms/{room}/import");
    post_raw(server, &path, Some(&admin()), content_type, body).await
}

/// A DPlayer POST: status and answer.
async fn dplayer_post(server: &Server, body: &str) -> (u16, Value) {
    post_raw(
        server,
        "/dplayer/v3/",
        None,
        "application/json",
        body.to_owned(),
    )
    .await
}

/// The `msg` of a refused DPlayer answer, which must be `code` 1 with our
/// code in the body.
fn refused(answer: &Value, code: &str) {
    assert_eq!(answer["code"], 1, "{answer}");
    assert_eq!(answer["error"]["code"], code, "{answer}");
    let msg = answer["msg"].as_str().unwrap();
    assert!(msg.starts_with(&format!("{code}: ")), "{msg}");
}

/// The room's texts, by id.
async fn last_id(server: &Server, room: &str) -> u64 {
    let (_, stats) = get_json(server, &format!("/api/v1/rooms/{room}")).await;
    stats["last_id"].as_u64().unwrap()
}

#[tokio::test]
async fn dplayer_reads_escaped_and_posts_through_the_guard() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), Some(&config()));

    let evil = "<img src=x onerror=alert(1)>";
    let body = json!({"id": "dp", "author": "me", "time": 12.5, "text": evil,
                      "color": 16711680, "type": 1, "token": "junk-from-dplayer"});
    let (status, answer) = dplayer_post(&server, &body.to_string()).await;
    assert_eq!(
        (status, answer["code"].clone()),
        (200, json!(0)),
        "{answer}"
    );

    // Junk token: a guest. A JWT-shaped bad token: refused.
    let (_, h) = get_json(&server, "/api/v1/rooms/dp/danmaku").await;
    assert!(
        h["items"][0]["user"].as_str().unwrap().starts_with("guest"),
        "{h}"
    );
    let bad = json!({"id": "dp", "text": "x", "token": "aaa.bbb.ccc"});
    let (status, answer) = dplayer_post(&server, &bad.to_string()).await;
    assert_eq!(status, 200);
    refused(&answer, "unauthorized");

    let (status, read) = get_json(&server, "/dplayer/v3/?id=dp&max=undefined").await;
    assert_eq!(status, 200);
    assert_eq!(
        read,
        json!({"code": 0, "data": [[12.5, 1, 16711680, "me",
            "&lt;img src=x onerror=alert(1)&gt;"]]})
    );

    // Muted: refused with our code, still 200.
    let (status, _) = call(
        &server,
        Method::POST,
        "/api/v1/admin/rooms/dp/mutes",
        Some(&admin()),
        Some(json!({"user": "bob", "seconds": 60})),
    )
    .await;
    assert_eq!(status, 201);
    let muted = json!({"id": "dp", "text": "hi", "token": user("bob")});
    let (status, answer) = dplayer_post(&server, &muted.to_string()).await;
    assert_eq!(status, 200);
    refused(&answer, "forbidden");

    // Bad fields and bad JSON name the field or the JSON.
    let (_, answer) = dplayer_post(&server, r#"{"id":"dp","text":"x","type":"sideways"}"#).await;
    refused(&answer, "invalid_field");
    assert!(answer["msg"].as_str().unwrap().contains("type"));
    let (_, answer) = dplayer_post(&server, "{not json").await;
    refused(&answer, "invalid_json");
    let (_, answer) = dplayer_post(&server, r#"{"id":"no room!","text":"x"}"#).await;
    refused(&answer, "invalid_room");
    let (status, answer) = get_json(&server, "/dplayer/v3/?id=bad%20room").await;
    assert_eq!(status, 200);
    refused(&answer, "invalid_room");

    // A guest's burst is 3 sends: the rate limit answers code 1 too.
    let mut limited = None;
    for i in 0..5 {
        let body = json!({"id": "dp", "text": format!("n{i}")});
        let (_, answer) = dplayer_post(&server, &body.to_string()).await;
        if answer["code"] == 1 {
            limited = Some(answer);
            break;
        }
    }
    refused(&limited.expect("rate limited"), "rate_limited");
}

/// A bilibili file holding `body` inside `<i>`.
fn xml(body: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><i>{body}</i>")
}

#[tokio::test]
async fn xml_exports_in_id_order_with_named_entities_and_imports_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), Some(&config()));
    let modes = ["scroll", "top", "bottom", "reverse"];
    for (i, mode) in modes.iter().enumerate() {
        let text = format!("{mode} & <b>\"q\" 'a'</b>");
        let body = json!({"text": text, "mode": mode, "vt": i as f64 + 0.5,
                          "color": "#ff8000", "size": 18 + i});
        let (status, _) = call(
            &server,
            Method::POST,
            "/api/v1/rooms/a/danmaku",
            Some(&admin()),
            Some(body),
        )
        .await;
        assert_eq!(status, 201);
    }
    let res = http()
        .get(format!("{}/api/v1/rooms/a/danmaku.xml", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["content-type"],
        "application/xml; charset=utf-8"
    );
    let exported = res.text().await.unwrap();
    assert!(
        exported.contains("&amp; &lt;b&gt;&quot;q&quot; &apos;a&apos;&lt;/b&gt;"),
        "{exported}"
    );
    assert!(!exported.contains("&#"), "numeric references: {exported}");
    let codes: Vec<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("<d p=\""))
        .map(|p| p.split(',').nth(1).unwrap())
        .collect();
    assert_eq!(
        codes,
        ["1", "5", "4", "6"],
        "every mode mapped, in id order"
    );
    let limits = ImportLimits {
        max_bytes: 1 << 20,
        max_items: 100,
        max_text_chars: 100,
    };
    let parsed = bilibili_xml::parse(exported.as_bytes(), &limits).unwrap();
    assert_eq!(parsed.items.len(), 4);
    assert!(parsed.dropped.is_empty());

    // Imported into another room: the same danmaku under new ids.
    let (status, report) = import(&server, "b", "application/xml", exported.clone()).await;
    assert_eq!(status, 201, "{report}");
    assert_eq!(
        report,
        json!({"room": "b", "imported": 4, "first_id": 1, "last_id": 4,
                              "dropped": 0, "dropped_lines": []})
    );
    let (_, a) = get_json(&server, "/api/v1/rooms/a/danmaku").await;
    let (_, b) = get_json(&server, "/api/v1/rooms/b/danmaku").await;
    for (x, y) in a["items"]
        .as_array()
        .unwrap()
        .iter()
        .zip(b["items"].as_array().unwrap())
    {
        for field in ["text", "vt", "mode", "color", "size"] {
            assert_eq!(x[field], y[field], "{field}");
        }
        assert_eq!(y["user"], "import");
    }
    let (_, audit) = call(
        &server,
        Method::GET,
        "/api/v1/admin/audit",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(audit["items"][0]["action"], "import", "{audit}");
    assert_eq!(audit["items"][0]["detail"]["imported"], 4);

    // JSON lines, with one bad line dropped and reported.
    let ndjson =
        "{\"text\":\"one\",\"vt\":1.0}\n\n{\"text\":\"\"}\n{\"text\":\"two\",\"mode\":\"top\"}\n";
    let (status, report) = import(&server, "c", "application/x-ndjson", ndjson).await;
    assert_eq!(status, 201, "{report}");
    assert_eq!(
        (report["imported"].clone(), report["dropped"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(report["dropped_lines"][0]["line"], 3);
    assert_eq!(texts(&server, "c").await, ["one", "two"]);

    // Bad <d> entries of a good file are dropped.
    let file =
        xml("<d p=\"1,1,25,16777215\">good</d>\n<d>no p</d>\n<d p=\"1,7,25,0\">advanced</d>");
    let (status, report) = import(&server, "c", "text/xml", file).await;
    assert_eq!(status, 201, "{report}");
    assert_eq!(
        (report["imported"].clone(), report["dropped"].clone()),
        (json!(1), json!(2))
    );
}

#[tokio::test]
async fn a_bad_import_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!("{}[limits]\nmax_import_bytes = 4096\n", config());
    let server = Server::start(&dir.path().join("d"), Some(&cfg));
    let (status, _) = post_raw(
        &server,
        "/api/v1/rooms/r/import",
        Some(&admin()),
        "application/xml",
        xml("<d p=\"1,1,25,0\">x</d>"),
    )
    .await;
    assert_eq!(status, 201);
    let laughs = "<?xml version=\"1.0\"?><!DOCTYPE i [<!ENTITY a \"aaaaaaaaaa\">\
        <!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\"><!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;\">]>\
        <i><d p=\"1,1,25,0\">&c;</d></i>";
    let external =
        "<?xml version=\"1.0\"?><!DOCTYPE i [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\
        <i><d p=\"1,1,25,0\">&x;</d></i>";
    let undeclared = xml("<d p=\"1,1,25,0\">&x;</d>");
    let deep = xml(&format!("{}{}", "<a>".repeat(50), "</a>".repeat(50)));
    let truncated = "<?xml version=\"1.0\"?><i><d p=\"1,1,25,0\">cut";
    for (what, file) in [
        ("billion laughs", laughs),
        ("external entity", external),
        ("unknown entity", &undeclared),
        ("deep nesting", &deep),
        ("not XML", "hello, world"),
        ("truncated", truncated),
    ] {
        let (status, answer) = import(&server, "r", "application/xml", file.to_owned()).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_file", "{what}");
        assert_eq!(last_id(&server, "r").await, 1, "{what}: nothing stored");
    }
    let (status, answer) = post_raw(
        &server,
        "/api/v1/rooms/r/import",
        Some(&admin()),
        "application/xml",
        xml(&"<d p=\"1,1,25,0\">x</d>".repeat(300)),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (413, json!("payload_too_large"))
    );
    let (status, answer) = import(&server, "r", "text/plain", "x").await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (415, json!("unsupported_media_type"))
    );
    let (status, _) = post_raw(
        &server,
        "/api/v1/rooms/r/import",
        None,
        "application/xml",
        "x",
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = post_raw(
        &server,
        "/api/v1/rooms/r/import",
        Some(&user("eve")),
        "application/xml",
        "x",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(last_id(&server, "r").await, 1);
}

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// 200,000 danmaku (about 17 MB of XML) export with the server's memory
/// growing by less than 32 MiB: the export streams page by page.
#[tokio::test]
async fn a_large_room_exports_in_bounded_memory() {
    const N: usize = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), Some(&config()));
    let mut file = String::with_capacity(N * 60);
    for i in 0..N {
        file.push_str(&format!(
            "{{\"text\":\"danmaku number {i} of the big room\",\"vt\":{i}}}\n"
        ));
    }
    let (status, report) = import(&server, "big", "application/x-ndjson", file).await;
    assert_eq!(
        (status, report["imported"].clone()),
        (201, json!(N)),
        "{report}"
    );
    let before = rss_kib(server.pid());
    let mut res = http()
        .get(format!("{}/api/v1/rooms/big/danmaku.xml", server.url()))
        .send()
        .await
        .unwrap();
    let (mut lines, mut bytes, mut peak) = (0usize, 0usize, before);
    while let Some(chunk) = res.chunk().await.unwrap() {
        lines += chunk.iter().filter(|&&b| b == b'\n').count();
        bytes += chunk.len();
        peak = peak.max(rss_kib(server.pid()));
    }
    // The header's eight lines, one per danmaku, the footer.
    assert_eq!(lines, N + 9, "{bytes} bytes");
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 32 * 1024,
        "RSS grew by {growth} KiB exporting {bytes} bytes"
    );
}

#[tokio::test]
async fn biliass_converts_our_export_keeping_every_line() {
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/clients-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash tests/clients/install.sh` once",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), Some(&config()));
    let texts = [
        "first & <one>",
        "第二条弹幕",
        "third 'quoted' \"text\"",
        "fourth goes back",
    ];
    let mut file = String::new();
    for (i, t) in texts.iter().enumerate() {
        let mode = ["scroll", "top", "bottom", "reverse"][i];
        file.push_str(&json!({"text": t, "vt": i as f64 * 2.0, "mode": mode}).to_string());
        file.push('\n');
    }
    let (status, _) = import(&server, "v", "application/x-ndjson", file).await;
    assert_eq!(status, 201);
    let exported = get_text(&server, "/api/v1/rooms/v/danmaku.xml").await;
    let path = dir.path().join("v.xml");
    std::fs::write(&path, &exported).unwrap();
    let script = "import biliass,sys\n\
        xml=open(sys.argv[1],encoding='utf-8').read()\n\
        print(biliass.convert_to_ass(xml,1920,1080))";
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ass = String::from_utf8(out.stdout).unwrap();
    let dialogues: Vec<&str> = ass.lines().filter(|l| l.starts_with("Dialogue:")).collect();
    assert_eq!(dialogues.len(), texts.len(), "{ass}");
    for t in ["first", "第二条弹幕", "third", "fourth"] {
        assert!(dialogues.iter().any(|d| d.contains(t)), "{t} in {ass}");
    }
    // The scrolling ones move across the screen: the usual way from its
    // right edge, the reverse (bilibili's mode 6) from its left edge.
    let moves = |t: &str| -> (f64, f64) {
        let line = dialogues.iter().find(|d| d.contains(t)).unwrap();
        let args = line
            .split_once("\\move(")
            .and_then(|(_, rest)| rest.split_once(')'))
            .unwrap_or_else(|| panic!("{t} does not move: {line}"))
            .0;
        let xs: Vec<f64> = args.split(',').map(|a| a.trim().parse().unwrap()).collect();
        (xs[0], xs[2])
    };
    let (from, to) = moves("first");
    assert!(from >= 1920.0 && to < 0.0, "scroll: {from} to {to}");
    let (from, to) = moves("fourth");
    assert!(from < 0.0 && to >= 1920.0, "reverse: {from} to {to}");
}

#[tokio::test]
async fn segments_hold_their_six_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), Some(&config()));
    let file = "{\"text\":\"early\",\"vt\":10}\n{\"text\":\"edge\",\"vt\":360}\n\
                {\"text\":\"late\",\"vt\":719.5,\"mode\":\"top\"}\n{\"text\":\"third\",\"vt\":800}\n";
    let (status, _) = import(&server, "s", "application/x-ndjson", file).await;
    assert_eq!(status, 201);
    let segment = |n: u32| {
        let url = format!(
            "{}/x/v2/dm/web/seg.so?type=1&oid=s&pid=7&segment_index={n}",
            server.url()
        );
        async move {
            let res = http().get(url).send().await.unwrap();
            assert_eq!(res.headers()["content-type"], "application/octet-stream");
            let reply = DmSegMobileReply::decode(res.bytes().await.unwrap()).unwrap();
            reply
                .elems
                .into_iter()
                .map(|e| (e.content, e.progress, e.mode))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(segment(1).await, [("early".to_owned(), 10_000, 1)]);
    assert_eq!(
        segment(2).await,
        [
            ("edge".to_owned(), 360_000, 1),
            ("late".to_owned(), 719_500, 5)
        ]
    );
    assert_eq!(segment(4).await, []);
    for query in [
        "type=2&oid=s&segment_index=1",
        "type=1&oid=s&segment_index=0",
        "type=1&oid=s",
        "type=1&oid=bad%20room&segment_index=1",
    ] {
        let (status, answer) = get_json(&server, &format!("/x/v2/dm/web/seg.so?{query}")).await;
        assert_eq!(
            (status, answer["error"]["code"].clone()),
            (400, json!("invalid_query")),
            "{query}"
        );
    }
}

#[tokio::test]
async fn a_busy_segment_is_thinned_over_its_whole_window() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!("{}[limits]\nmax_segment_items = 120\n", config());
    let server = Server::start(&dir.path().join("d"), Some(&cfg));
    // 240 danmaku in the first 24 s of segment 1 (ten a second), then 60
    // over its last minute (one a second): 300, more than the cap.
    let mut file = String::new();
    let busy = (0..240).map(|i| f64::from(i) / 10.0);
    let late = (300..360).map(f64::from);
    for (i, vt) in busy.chain(late).enumerate() {
        file.push_str(&json!({"text": format!("d{i}"), "vt": vt}).to_string());
        file.push('\n');
    }
    let (status, report) = import(&server, "busy", "application/x-ndjson", file).await;
    assert_eq!((status, report["imported"].clone()), (201, json!(300)));

    let url = format!(
        "{}/x/v2/dm/web/seg.so?type=1&oid=busy&segment_index=1",
        server.url()
    );
    let bytes = http().get(url).send().await.unwrap().bytes().await.unwrap();
    let progress: Vec<i32> = DmSegMobileReply::decode(bytes)
        .unwrap()
        .elems
        .iter()
        .map(|e| e.progress)
        .collect();
    assert_eq!(progress.len(), 120, "the cap, filled: {progress:?}");
    assert!(progress.is_sorted(), "by video time: {progress:?}");
    // The whole window shows: every danmaku of the quiet last minute (60
    // of them, all in slices under their share), and the busy start
    // thinned to the rest, not its first 120 only (which end at 12 s).
    let late: Vec<i32> = progress.iter().copied().filter(|&p| p >= 300_000).collect();
    assert_eq!(late, (300..360).map(|s| s * 1000).collect::<Vec<_>>());
    assert!(
        progress.iter().any(|&p| (18_000..24_000).contains(&p)),
        "the end of the busy start: {progress:?}"
    );
}

/// The CORS headers of a request with `origin`.
async fn cors(
    server: &Server,
    method: Method,
    path: &str,
    origin: &str,
    preflight_for: Option<&str>,
) -> (u16, Option<String>, Option<String>) {
    let mut req = http()
        .request(method, format!("{}{path}", server.url()))
        .header("origin", origin);
    if let Some(m) = preflight_for {
        req = req
            .header("access-control-request-method", m)
            .header("access-control-request-headers", "content-type");
    }
    let res = req.send().await.unwrap();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    (
        res.status().as_u16(),
        header("access-control-allow-origin"),
        header("access-control-allow-methods"),
    )
}

#[tokio::test]
async fn reads_answer_any_origin_and_writes_only_configured_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), None);
    let site = "https://site.example";
    for path in [
        "/api/v1/rooms/r/danmaku.xml",
        "/dplayer/v3/?id=r",
        "/api/v1/rooms/r/danmaku",
        "/x/v2/dm/web/seg.so?type=1&oid=r&segment_index=1",
    ] {
        let (status, allow, methods) =
            cors(&server, Method::OPTIONS, path, site, Some("GET")).await;
        assert_eq!(
            (status, allow.as_deref(), methods.as_deref()),
            (204, Some("*"), Some("GET, HEAD")),
            "{path}"
        );
        let (status, allow, _) = cors(&server, Method::GET, path, site, None).await;
        assert_eq!((status, allow.as_deref()), (200, Some("*")), "{path}");
    }
    for path in ["/dplayer/v3/", "/api/v1/rooms/r/danmaku"] {
        let (status, allow, _) = cors(&server, Method::OPTIONS, path, site, Some("POST")).await;
        assert_eq!((status, allow), (204, None), "{path}: refused by default");
    }
    // A page elsewhere cannot make its visitors send: a form-like POST
    // (text/plain, no preflight) from another origin is refused before it
    // runs, and nothing is stored. Our own page and non-browser clients
    // (no Origin) still send.
    let url = format!("{}/api/v1/rooms/r/danmaku", server.url());
    let own = server.url();
    for (origin, body, want) in [
        (Some(site), r#"{"text":"spam"}"#, 403),
        (Some(own.as_str()), r#"{"text":"from our page"}"#, 201),
        (None, r#"{"text":"from a bot"}"#, 201),
    ] {
        let mut req = http()
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), want, "{origin:?}");
    }
    let res = http()
        .post(format!("{}/dplayer/v3/", server.url()))
        .header("origin", site)
        .header("content-type", "text/plain")
        .body(r#"{"id":"r","author":"x","time":0,"text":"spam","color":16777215,"type":0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    assert_eq!(texts(&server, "r").await, ["from our page", "from a bot"]);
    server.stop();

    let dir = tempfile::tempdir().unwrap();
    let cfg =
        format!("[http]\ncors_allow_origins = [\"{site}\"]\ncors_write_origins = [\"{site}\"]\n");
    let server = Server::start(&dir.path().join("d"), Some(&cfg));
    for path in ["/dplayer/v3/", "/api/v1/rooms/r/danmaku"] {
        let (status, allow, methods) =
            cors(&server, Method::OPTIONS, path, site, Some("POST")).await;
        assert_eq!(
            (status, allow.as_deref(), methods.as_deref()),
            (204, Some(site), Some("POST")),
            "{path}"
        );
        let (_, allow, _) = cors(
            &server,
            Method::OPTIONS,
            path,
            "https://evil.example",
            Some("POST"),
        )
        .await;
        assert_eq!(allow, None, "{path}");
    }
    let res = http()
        .post(format!("{}/api/v1/rooms/r/danmaku", server.url()))
        .header("origin", site)
        .json(&json!({"text": "from the site"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["access-control-allow-origin"], site);
    assert_eq!(res.headers()["vary"], "origin");
    let (_, allow, _) = cors(
        &server,
        Method::GET,
        "/api/v1/rooms/r/danmaku.xml",
        "https://other.example",
        None,
    )
    .await;
    assert_eq!(allow, None, "reads limited to the configured origins");
}

/// Texts, video times, modes, colours and sizes of a room's history.
async fn contents(server: &Server, room: &str) -> Vec<Value> {
    let (_, h) = get_json(server, &format!("/api/v1/rooms/{room}/danmaku?limit=1000")).await;
    h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| json!([d["text"], d["vt"], d["mode"], d["color"], d["size"]]))
        .collect()
}

#[tokio::test]
async fn the_cli_round_trips_xml_and_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), Some(&config()));
    let url = server.url();
    for (i, mode) in ["scroll", "top", "bottom", "reverse"].iter().enumerate() {
        // Times with more decimals than bilibili's files carry: read back
        // exactly all the same.
        let vt = i as f64 * 1.25 + 0.123_456_789;
        let body = json!({"text": format!("{mode} <&> {i}"), "mode": mode, "vt": vt,
                          "color": "#12ab34", "size": 20 + i});
        let (status, _) = call(
            &server,
            Method::POST,
            "/api/v1/rooms/a/danmaku",
            Some(&admin()),
            Some(body),
        )
        .await;
        assert_eq!(status, 201);
    }
    let original = contents(&server, "a").await;
    let admin = admin();
    for (format, ext) in [("xml", "xml"), ("jsonl", "jsonl")] {
        let file = dir.path().join(format!("a.{ext}"));
        let out = run_cli(&[
            "export",
            "--url",
            &url,
            "--room",
            "a",
            "--format",
            format,
            "--out",
            file.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("exported 4 danmaku"));
        let room = format!("b{format}");
        let report = run_cli_json(&[
            "import",
            "--url",
            &url,
            "--token",
            &admin,
            "--room",
            &room,
            file.to_str().unwrap(),
        ]);
        assert_eq!(report["imported"], 4, "{report}");
        assert_eq!(contents(&server, &room).await, original, "{format}");
        let again = dir.path().join(format!("again.{ext}"));
        let out = run_cli(&[
            "export",
            "--url",
            &url,
            "--room",
            &room,
            "--format",
            format,
            "--out",
            again.to_str().unwrap(),
        ]);
        assert!(out.status.success());
        let reimported = format!("c{format}");
        run_cli_json(&[
            "import",
            "--url",
            &url,
            "--token",
            &admin,
            "--room",
            &reimported,
            again.to_str().unwrap(),
        ]);
        assert_eq!(
            contents(&server, &reimported).await,
            original,
            "{format}, twice"
        );
    }
    let bad = dir.path().join("bad.xml");
    std::fs::write(&bad, "<i><d p=\"1,1,25,0\">cut").unwrap();
    let out = run_cli(&[
        "import",
        "--url",
        &url,
        "--token",
        &admin,
        "--room",
        "z",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_file"));
}
