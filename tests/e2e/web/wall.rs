//! Browser tests of the event wall (`/wall/{room}`) and its phone send page
//! (`/m/{room}`), driven by `tests/clients/pages/wall.mjs`: the QR code is
//! read from a screenshot with zbarimg, as a phone's camera would.

use serde_json::{json, Value};

use super::{across_a_restart, page_script};
use crate::server::*;

/// No page errors, no dialogs, no CSP violations; but the browser's log
/// of each refused send (`expected`: its statuses) is no error of the page.
fn assert_clean(problems: &Value, what: &str, expected: &[u16]) {
    let refused: Vec<String> = expected
        .iter()
        .map(|status| format!("status of {status} "))
        .collect();
    for kind in ["errors", "dialogs", "csp"] {
        let unexpected: Vec<&Value> = problems[kind]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                !refused
                    .iter()
                    .any(|r| p.as_str().unwrap().contains(r.as_str()))
            })
            .collect();
        assert!(unexpected.is_empty(), "{what} {kind}: {problems}");
    }
}

/// Whether two `{left, top, right, bottom}` boxes overlap.
fn overlap(a: &Value, b: &Value) -> bool {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap();
    f(a, "left") < f(b, "right")
        && f(b, "left") < f(a, "right")
        && f(a, "top") < f(b, "bottom")
        && f(b, "top") < f(a, "bottom")
}

#[tokio::test]
async fn a_phone_that_scans_the_walls_qr_code_sends_to_the_wall() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(EXEMPT_LOOPBACK));
    let r = page_script("wall.mjs", &["flow", &server.url(), "hall"]);

    // The code is the phone page on the address the wall was loaded from,
    // and the same address is written under it.
    let phone_url = format!("{}/m/hall", server.url());
    assert_eq!(r["qr"]["decoded"], phone_url, "{r}");
    assert_eq!(r["qr"]["text"], phone_url);
    assert!(r["qr"]["alt"].as_str().unwrap().contains(&phone_url), "{r}");
    // Full screen with no scrollbars, and the code hides no danmaku lane.
    assert_eq!(r["qr"]["overflow"]["x"], false, "{r}");
    assert_eq!(r["qr"]["overflow"]["y"], false, "{r}");
    assert!(!overlap(&r["qr"]["qrBox"], &r["qr"]["stageBox"]), "{r}");
    assert!(r["qr"]["qrBox"]["bottom"].as_f64().unwrap() > 500.0, "{r}");

    // A 360 px phone: no sideways scrolling, a big Send button.
    let layout = &r["phone"]["layout"];
    assert!(
        layout["scrollWidth"].as_f64() <= layout["innerWidth"].as_f64(),
        "{r}"
    );
    assert_eq!(layout["innerWidth"], 360);
    assert_eq!(layout["label"], "Send");
    // The comment box is named "danmaku", exactly (phoneSend finds it so).
    assert_eq!(layout["field"], "danmaku", "{r}");
    assert!(layout["send"]["height"].as_f64().unwrap() >= 44.0, "{r}");

    // Sent, said so, the field cleared; on the wall in its colour, with
    // the nickname.
    let sent = &r["phone"]["sent"];
    assert!(
        sent["status"].as_str().unwrap().starts_with("Sent ✓"),
        "{r}"
    );
    assert_eq!(sent["left"], "");
    assert_eq!(r["wall"]["shown"]["name"], "Ana");
    assert_eq!(r["wall"]["shown"]["text"], "hello from a phone 你好 🎉");
    assert_eq!(r["wall"]["colour"], "rgb(254, 3, 2)");
    assert!(
        r["wall"]["topClass"].as_str().unwrap().contains("dm-top"),
        "{r}"
    );
    assert_eq!(r["wall"]["state"], "live");
    let stored = texts(&server, "hall").await;
    assert_eq!(stored[0], "hello from a phone 你好 🎉");

    // The online count: the wall alone, still alone with a phone that
    // only sends, two with a second viewer, one again when it leaves.
    assert_eq!(r["online"]["alone"], "1");
    assert_eq!(r["online"]["withPhone"], "1");
    assert_eq!(r["online"]["two"], "2");
    assert_eq!(r["online"]["back"], "1");
    assert_clean(&r["problems"]["wall"], "wall", &[]);
    assert_clean(&r["problems"]["phone"], "phone", &[]);
    server.stop();
}

#[tokio::test]
async fn the_phone_page_says_in_words_why_a_danmaku_was_refused() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "forbiddenword\n").unwrap();
    // Default rate limits: nobody is exempt.
    let config = format!("[filter]\nwords_file = {words:?}\n");
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let r = page_script("wall.mjs", &["refuse", &server.url(), "hall"]);

    let blocked = &r["blocked"];
    assert!(
        blocked["status"].as_str().unwrap().contains("blocked word"),
        "{r}"
    );
    assert!(blocked["kind"].as_str().unwrap().contains("err"), "{r}");
    // A refusal keeps the text, to fix and send again.
    assert_eq!(blocked["left"], "this has a forbiddenword in it");
    assert_eq!(r["empty"]["status"], "Type something first.");

    // Sending faster than a person may: refused, with the wait in seconds.
    let fast = r["fast"].as_array().unwrap();
    let last = fast.last().unwrap();
    assert!(fast.len() > 1, "{r}");
    assert!(
        fast[..fast.len() - 1]
            .iter()
            .all(|a| a["status"].as_str().unwrap().starts_with("Sent ✓")),
        "{r}"
    );
    let words = last["status"].as_str().unwrap();
    assert!(words.contains("too fast"), "{r}");
    assert!(
        words.contains("Try again in") && words.contains("second"),
        "{r}"
    );
    assert_eq!(last["left"], format!("quick {}", fast.len() - 1));

    assert_eq!(r["nameAfterReload"], "Bo");
    assert_eq!(r["overflow"], false);
    assert_clean(&r["problems"], "phone", &[400, 429]);
    // Only what was sent ✓ is stored.
    assert_eq!(texts(&server, "hall").await.len(), fast.len() - 1);
    server.stop();
}

#[tokio::test]
async fn markup_in_a_danmaku_a_nickname_or_the_title_is_shown_as_text() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(EXEMPT_LOOPBACK));
    let r = page_script("wall.mjs", &["xss", &server.url(), "hall"]);
    let payload = "<img src=x onerror=alert(1)>";
    assert!(
        r["sent"]["status"].as_str().unwrap().starts_with("Sent ✓"),
        "{r}"
    );
    assert_eq!(r["shown"]["name"], payload);
    assert_eq!(r["shown"]["text"], payload);
    assert_eq!(r["imgsInStage"], 0, "{r}");
    assert_eq!(r["title"], payload);
    assert_eq!(r["titleVisible"], true);
    assert_eq!(r["qrHidden"], true, "?qr=0 hides the code: {r}");
    assert_clean(&r["problems"], "wall", &[]);
    assert_clean(&r["phoneProblems"], "phone", &[]);
    server.stop();
}

#[tokio::test]
async fn behind_a_proxy_the_qr_code_names_the_public_url() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let config = "[web]\npublic_url = \"https://live.example\"\n";
    let server = Server::start(&dir.path().join("data"), Some(config));
    let r = page_script("wall.mjs", &["qr", &server.url(), "hall"]);
    assert_eq!(r["decoded"], "https://live.example/m/hall", "{r}");
    assert_eq!(r["text"], "https://live.example/m/hall");
    assert_clean(&r["problems"], "wall", &[]);
    server.stop();
}

#[tokio::test]
async fn the_wall_reconnects_after_a_restart_and_shows_what_was_sent_meanwhile() {
    let _turn = take_turn().await;
    let during = [
        "while the wall was away 1",
        "while the wall was away 2",
        "while the wall was away 3",
    ];
    let (r, want) = across_a_restart("wall.mjs", "hall", &during).await;

    // The wall said so, then was live again.
    let states = r["states"].as_array().unwrap();
    assert!(
        states.iter().any(|s| s
            .as_str()
            .unwrap()
            .starts_with("connection lost, reconnecting")),
        "{r}"
    );
    assert_eq!(states.last().unwrap(), "live", "{r}");
    // Each danmaku drawn once, in order.
    assert_eq!(r["drawn"], json!(want), "{r}");
    // The browser logs each refused reconnect; nothing else went wrong.
    let errors = r["problems"]["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .all(|e| e.as_str().unwrap().contains("WebSocket connection")),
        "{r}"
    );
    assert_eq!(r["problems"]["dialogs"], json!([]));
    assert_eq!(r["problems"]["csp"], json!([]));
}
