//! The OBS overlay (`/overlay/{room}`, docs/web.md "OBS overlay") in
//! Debian's Chromium, driven by `tests/clients/pages/overlay.mjs`.

use serde_json::{json, Value};

use super::page_script;
use crate::server::*;

/// The texts overlay.mjs sends (modes, a word, a name: see SENDS there).
const ALL: [&str; 6] = [
    "a SECRET word",
    "from the troll",
    "hidden at the top",
    "visible bottom",
    "visible reverse",
    "visible scroll",
];

fn shown(report: &Value) -> Vec<&str> {
    report["shown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect()
}

fn assert_transparent_but_for_danmaku(report: &Value) {
    assert_eq!(report["size"], json!([640, 360]), "{report}");
    // Wherever no danmaku is drawn, the page is see-through...
    let clear = report["alpha"]["clear"].as_array().unwrap();
    assert!(clear.len() >= 3, "{report}");
    assert!(clear.iter().all(|a| a == 0), "{report}");
    // ...and the danmaku themselves are opaque (so the screenshot did catch them).
    let text = report["alpha"]["text"].as_array().unwrap();
    assert!(!text.is_empty(), "{report}");
    assert!(text.iter().all(|a| a.as_u64().unwrap() >= 200), "{report}");
    assert_eq!(report["state"], "live");
    assert_eq!(report["imgs"], 0);
    for key in ["errors", "csp", "dialogs"] {
        assert_eq!(report["problems"][key], json!([]), "{key}: {report}");
    }
}

#[tokio::test]
async fn the_overlay_is_transparent_and_hides_by_mode_word_and_user() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(EXEMPT_LOOPBACK));

    let report = page_script(
        "overlay.mjs",
        &[
            "show",
            &server.url(),
            "stream",
            "hide=top&block=secret&mute=troll",
        ],
    );
    assert_transparent_but_for_danmaku(&report);
    // Top danmaku, a blocked word (any case) and a muted name are never drawn.
    assert_eq!(
        shown(&report),
        ["visible bottom", "visible reverse", "visible scroll"],
        "{report}"
    );

    // Without settings, everything is drawn, the bottom one at the bottom
    // of the 360 px picture.
    let report = page_script("overlay.mjs", &["show", &server.url(), "plain", ""]);
    assert_transparent_but_for_danmaku(&report);
    assert_eq!(shown(&report), ALL, "{report}");
    assert!(report["lowest"].as_f64().unwrap() > 340.0, "{report}");

    // lanes=5 keeps the picture below five lanes clear, bottom danmaku
    // included: 16 px danmaku (a thirtieth of 360) in 20 px lanes.
    let report = page_script("overlay.mjs", &["show", &server.url(), "banded", "lanes=5"]);
    assert_transparent_but_for_danmaku(&report);
    assert_eq!(shown(&report), ALL, "{report}");
    assert!(report["lowest"].as_f64().unwrap() <= 101.0, "{report}");
}

#[tokio::test]
async fn pausing_freezes_danmaku_resuming_goes_on_without_a_jump_and_recalls_vanish() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(EXEMPT_LOOPBACK));
    let report = page_script("overlay.mjs", &["motion", &server.url(), "motion"]);
    let x = |k: &str| report["x"][k].as_f64().unwrap();
    let step = report["step"].as_f64().unwrap();
    // It scrolls leftwards...
    assert!(x("moved") < x("before") - step, "{report}");
    // ...stands still while paused (0.7 s would be some 40 frames of travel)...
    assert_eq!(x("later"), x("paused"), "{report}");
    // ...and goes on from there: a couple of frames' travel (20 allows for a
    // loaded machine), not the paused time's (42 frames).
    let shift = x("paused") - x("resumed");
    assert!(shift > 0.0 && shift <= 20.0 * step, "{report}");
    // A recall takes it off the screen.
    assert_eq!(
        report["recalled"],
        json!({"before": 1, "status": 204, "after": 0}),
        "{report}"
    );
    for key in ["errors", "csp", "dialogs"] {
        assert_eq!(report["problems"][key], json!([]), "{key}: {report}");
    }
}
