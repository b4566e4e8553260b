//! Real players in a real browser: DPlayer (its v3 backend at `/dplayer/`)
//! and ArtPlayer with its danmuku plugin (our bilibili XML export), each in
//! Debian's Chromium driven by playwright-core (`tests/clients/players.mjs`),
//! on a page of another origin, as on a site that embeds a player.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::server::*;

/// A text that would be markup if a player inserted it as HTML.
const MARKUP: &str = "<img src=x onerror=alert(1)>";

/// `players.mjs` with its page site up, waiting for the server's URL.
struct Players {
    child: Child,
    /// The page site's origin, `http://127.0.0.1:PORT`: a port the site
    /// bound itself, so no other process can take it between a pick and a
    /// bind.
    origin: String,
}

impl Players {
    /// Starts `node players.mjs ARGS…` and reads the origin it prints.
    fn open(args: &[&str]) -> Players {
        let mut child = Command::new("node")
            .arg("players.mjs")
            .args(args)
            .current_dir(clients_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node (Node.js 20 is needed): {e}"));
        let mut line = String::new();
        // The script prints nothing more before it has the server's URL,
        // so this reader buffers nothing past the line.
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let first: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let Some(origin) = first["origin"].as_str().map(str::to_owned) else {
            drop(child.stdin.take());
            let out = child.wait_with_output().unwrap();
            panic!(
                "players.mjs printed no origin ({line:?}):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        Players { child, origin }
    }

    /// Points the players at `server`, waits for them, and returns the
    /// report they printed.
    fn run(mut self, server: &Server) -> Value {
        let mut stdin = self.child.stdin.take().unwrap();
        writeln!(stdin, "{}", server.url()).unwrap();
        drop(stdin);
        let out = self.child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "players.mjs failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "players.mjs printed no report ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

#[tokio::test]
async fn dplayer_loads_history_sends_and_shows_markup_as_text() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let players = Players::open(&["dplayer", "film", "sent from DPlayer"]);
    let config = format!(
        "{EXEMPT_LOOPBACK}[http]\ncors_write_origins = [\"{}\"]\n",
        players.origin
    );
    let server = Server::start(&dir.path().join("data"), Some(&config));
    for (text, vt) in [
        ("hello from the past", 1.0),
        (MARKUP, 2.0),
        ("弹幕 🎉", 3.0),
    ] {
        let (status, body) = post(&server, "film", json!({"text": text, "vt": vt})).await;
        assert_eq!(status, 201, "{body}");
    }

    let report = players.run(&server);

    // DPlayer read the room's history through /dplayer/v3/ (cross-origin).
    let loaded = report["loaded"].as_array().unwrap();
    assert_eq!(loaded.len(), 3, "{report}");
    // Its own send box posted through the guard: stored like any send.
    assert_eq!(report["sent"], json!(true), "{report}");
    let stored = texts(&server, "film").await;
    assert!(
        stored.iter().any(|t| t == "sent from DPlayer"),
        "{stored:?}"
    );
    // DPlayer puts the text in with innerHTML: the markup shows as text,
    // no element is made, nothing runs.
    let drawn = report["drawn"].as_array().unwrap();
    let markup = drawn
        .iter()
        .find(|d| d["text"] == MARKUP)
        .unwrap_or_else(|| panic!("the markup danmaku is drawn as its text: {report}"));
    assert_eq!(markup["imgs"], 0, "{report}");
    assert!(drawn.iter().any(|d| d["text"] == "弹幕 🎉"), "{report}");
    assert_eq!(report["alerts"], json!([]), "{report}");
}

#[tokio::test]
async fn artplayer_shows_the_xml_export_at_each_danmakus_time() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(EXEMPT_LOOPBACK));
    let timed = [
        ("scrolls at one", 1.0, "scroll"),
        ("top at two and a half", 2.5, "top"),
        (MARKUP, 3.5, "bottom"),
    ];
    for (text, vt, mode) in timed {
        let (status, body) = post(
            &server,
            "clip",
            json!({"text": text, "vt": vt, "mode": mode}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }

    let report = Players::open(&["artplayer", "clip"]).run(&server);

    // When each danmaku first appeared, by the video's clock.
    let mut first: HashMap<&str, f64> = HashMap::new();
    for shown in report["shown"].as_array().unwrap() {
        let text = shown["text"].as_str().unwrap();
        first.entry(text).or_insert(shown["at"].as_f64().unwrap());
    }
    for (text, vt, _) in timed {
        let at = first
            .get(text)
            .unwrap_or_else(|| panic!("{text:?} was never shown: {report}"));
        assert!(
            (at - vt).abs() <= 0.6,
            "{text:?} at {at} s, its time is {vt} s"
        );
    }
}
