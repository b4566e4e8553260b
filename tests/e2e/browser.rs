//! Real players in a real browser: DPlayer (its v3 backend at `/dplayer/`)
//! and ArtPlayer with its danmuku plugin (our bilibili XML export), each in
//! Debian's Chromium driven by playwright-core (`tests/clients/players.mjs`),
//! on a page of another origin, as on a site that embeds a player.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::server::*;
use crate::web::Conversation;

/// A text that would be markup if a player inserted it as HTML.
const MARKUP: &str = "<img src=x onerror=alert(1)>";

/// Starts `players.mjs` with `args` and returns it with the origin of its
/// page site: a port the site bound itself, so that no other process can
/// take it between a pick and a bind. The script then waits for the
/// server's URL.
fn start_players(args: &[&str]) -> (Conversation, String) {
    let mut players = Conversation::client("players.mjs", args);
    let first = players.next();
    let origin = first["origin"]
        .as_str()
        .unwrap_or_else(|| panic!("players.mjs printed no origin: {first}"))
        .to_owned();
    (players, origin)
}

/// Points `players` at `server`, waits for them, and returns their report.
fn run(mut players: Conversation, server: &Server) -> Value {
    players.say(&server.url());
    players.report()
}

#[tokio::test]
async fn dplayer_loads_history_sends_and_shows_markup_as_text() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let (players, origin) = start_players(&["dplayer", "film", "sent from DPlayer"]);
    let config = format!("{EXEMPT_LOOPBACK}[http]\ncors_write_origins = [\"{origin}\"]\n");
    let server = Server::start(&dir.path().join("data"), Some(&config));
    for (text, vt) in [
        ("hello from the past", 1.0),
        (MARKUP, 2.0),
        ("弹幕 🎉", 3.0),
    ] {
        let (status, body) = post(&server, "film", json!({"text": text, "vt": vt})).await;
        assert_eq!(status, 201, "{body}");
    }

    let report = run(players, &server);

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

    let (players, _) = start_players(&["artplayer", "clip"]);
    let report = run(players, &server);

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
