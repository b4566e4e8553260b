//! The live room page (`/r/{room}`, docs/web.md "Live page") in Debian's
//! Chromium, driven by `tests/clients/pages/live.mjs`.

use serde_json::{json, Value};

use super::{across_a_restart, page_script};
use crate::server::*;

/// A text that would be markup if a page inserted it as HTML.
const MARKUP: &str = "<img src=x onerror=alert(1)>";

/// Asserts the browser had nothing to complain about: no script error, no
/// CSP violation, no dialog (an `alert` from markup run), no `<img>`.
fn assert_clean(page: &Value) {
    for key in ["errors", "csp", "dialogs"] {
        assert_eq!(page[key], json!([]), "{key}: {page}");
    }
    assert_eq!(page["imgs"], 0, "{page}");
}

#[tokio::test]
async fn two_pages_see_each_others_danmaku_own_highlighted_and_markup_as_text() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(EXEMPT_LOOPBACK));
    let report = page_script("live.mjs", &["two", &server.url(), "duo"]);

    for (page, mine) in [("a", "hello from A"), ("b", MARKUP)] {
        let page = &report[page];
        assert_eq!(page["sent"], "Sent.", "{page}");
        assert_clean(page);
        // Both danmaku on this page's stage, its own one (only) highlighted.
        let stage = page["stage"].as_array().unwrap();
        for text in ["hello from A", MARKUP] {
            let drawn = stage
                .iter()
                .find(|d| d["text"] == text)
                .unwrap_or_else(|| panic!("{text:?} not drawn: {page}"));
            assert_eq!(drawn["own"], json!(text == mine), "{page}");
        }
        // The recent list names the senders, markup as text.
        let recent = page["recent"].as_array().unwrap();
        let markup = recent.iter().find(|r| r["text"] == MARKUP).unwrap();
        assert_eq!(markup["who"], MARKUP, "{page}");
        let hello = recent.iter().find(|r| r["text"] == "hello from A").unwrap();
        assert_eq!(hello["who"], "alice", "{page}");
    }
    // Every control can be found by its name; the send button is "Send".
    assert_eq!(report["unnamed"], json!([]), "{report}");
    assert_eq!(report["sendButtons"], 1, "{report}");
    let stored = texts(&server, "duo").await;
    assert_eq!(stored, ["hello from A", MARKUP]);
}

#[tokio::test]
async fn a_room_name_that_is_markup_is_refused_in_words() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let report = page_script("live.mjs", &["badroom", &server.url()]);
    // The server refuses the address; the browser shows its JSON as text.
    assert_eq!(report["status"], 400, "{report}");
    assert!(
        report["shown"].as_str().unwrap().contains("invalid_room"),
        "{report}"
    );
    assert_eq!(report["imgs"], 0, "{report}");
    assert_eq!(report["problems"]["dialogs"], json!([]), "{report}");
    // Typed into the page's room box, it is refused in words.
    assert!(
        report["roomErr"]
            .as_str()
            .unwrap()
            .starts_with("Room names are 1–64 characters"),
        "{report}"
    );
    assert_clean(&report["lobby"]);
}

#[tokio::test]
async fn a_burst_of_100_scrolls_without_two_danmaku_ever_overlapping_even_across_a_resize() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(EXEMPT_LOOPBACK));
    let report = page_script("live.mjs", &["burst", &server.url(), "burst", "100"]);
    assert_eq!(report["stored"], 100, "{report}");
    assert_clean(&report);
    // Half-way the window narrowed: the stage, and so the danmaku's size and
    // the lanes' height, shrank while the first half was still crossing.
    let heights = report["heights"].as_array().unwrap();
    assert!(
        heights[1].as_f64().unwrap() < heights[0].as_f64().unwrap() - 50.0,
        "{report}"
    );
    // Every danmaku's box (scroll, reverse, top and bottom) was checked
    // against every other one's, in each of 360 frames while the burst
    // crossed the stage.
    assert_eq!(report["overlaps"], json!([]), "{report}");
    // The stage filled its lanes (a 540 px stage has 17 of 31 px, a large
    // danmaku takes two), so the check had many pairs to compare...
    let most = report["most"].as_u64().unwrap();
    assert!(most >= 12, "only {most} scrolled at once: {report}");
    // ...and what found no lane in time was counted, not piled up.
    let stats = &report["stats"];
    assert!(stats["overflow"].as_u64().unwrap() > 0, "{report}");
    assert!(stats["onScreen"].as_u64().unwrap() <= 150, "{report}");
}

#[tokio::test]
async fn refusals_are_shown_in_words_a_blocked_word_and_a_rate_limit() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "forbiddenword\n").unwrap();
    // Default rate limits: a guest may send 3 at once, then one per 2 s.
    let config = format!("[filter]\nwords_file = {words:?}\n");
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let report = page_script("live.mjs", &["errors", &server.url(), "strict"]);
    assert_clean(&report);
    assert_eq!(
        report["blocked"], "Your danmaku contains a blocked word. Please rephrase it.",
        "{report}"
    );
    let answers: Vec<&str> = report["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let last = answers.last().unwrap();
    assert!(
        last.starts_with("You're sending too fast. Try again in ")
            && (last.ends_with(" seconds.") || last.ends_with(" 1 second.")),
        "{answers:?}"
    );
    assert!(answers[..answers.len() - 1].iter().all(|a| *a == "Sent."));
}

#[tokio::test]
async fn a_token_in_the_address_signs_in_for_the_tab_and_leaves_the_address_bar() {
    let _turn = take_turn().await;
    const SECRET: &str = "a-live-page-test-secret-of-32-bytes-or-more";
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[auth]\nhs256_secret = \"{SECRET}\"\n");
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let jwt = token(
        SECRET,
        json!({"sub": "alice", "name": "Alice", "exp": now() + 600}),
    );
    let report = page_script("live.mjs", &["token", &server.url(), "signed", &jwt]);
    assert_clean(&report);
    let href = report["href"].as_str().unwrap();
    assert!(href.ends_with("/r/signed?keep=1"), "{href}");
    assert_eq!(report["stored"], jwt.as_str());
    assert_eq!(
        report["local"],
        json!([]),
        "the token is not in localStorage"
    );
    assert_eq!(report["who"], "signed in as alice");
    assert_eq!(report["sent"], "Sent.");
    // Sent as alice, the token's subject, and highlighted as her own.
    let (_, history) = get_json(&server, "/api/v1/rooms/signed/danmaku").await;
    assert_eq!(history["items"][0]["user"], "alice", "{history}");
    assert_eq!(report["stage"][0]["own"], true, "{report}");
}

#[tokio::test]
async fn a_refused_connection_is_shown_in_words_and_retried_once_the_user_acts() {
    let _turn = take_turn().await;
    const SECRET: &str = "a-live-page-test-secret-of-32-bytes-or-more";
    let dir = tempfile::tempdir().unwrap();
    let config =
        format!("{EXEMPT_LOOPBACK}[auth]\nhs256_secret = \"{SECRET}\"\nanonymous_watch = false\n");
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let expired = token(SECRET, json!({"sub": "eve", "exp": now() - 3600}));
    let other = token(
        SECRET,
        json!({"sub": "olga", "rooms": ["elsewhere"], "exp": now() + 600}),
    );
    let good = token(SECRET, json!({"sub": "gus", "exp": now() + 600}));
    let report = page_script(
        "live.mjs",
        &["refused", &server.url(), "guarded", &expired, &other, &good],
    );
    assert_clean(&report);
    let shown = |key: &str, state: &str, words: &str| {
        assert_eq!(report[key]["state"], state, "{key}: {report}");
        assert_eq!(report[key]["text"], words, "{key}: {report}");
    };
    // Without a token the server refuses the handshake: the page says so
    // and stops trying, instead of reconnecting for ever in silence.
    shown(
        "anonymous",
        "refused",
        "Please sign in: this server needs a token to watch.",
    );
    assert_eq!(report["socketsWhileRefused"], 0, "{report}");
    shown(
        "expired",
        "refused",
        "Your sign-in has expired: please sign in again.",
    );
    shown(
        "other",
        "refused",
        "Your token does not admit this room: pick another room or sign in with another token.",
    );
    // Picking the room that token admits, then signing in with a good
    // token, each connect again at once.
    shown("elsewhere", "live", "live");
    shown("good", "live", "live");
    // The probe that told why carried the token in a header, never in its
    // address.
    let probes = report["probes"].as_array().unwrap();
    assert!(probes.len() >= 3, "{report}");
    for probe in probes {
        assert!(
            !probe["url"].as_str().unwrap().contains("token"),
            "{report}"
        );
    }
    assert!(
        probes
            .iter()
            .any(|p| p["auth"] == format!("Bearer {expired}")),
        "{report}"
    );
    server.stop();
}

#[tokio::test]
async fn a_keyboard_user_on_the_room_list_keeps_focus_when_it_refreshes() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(EXEMPT_LOOPBACK));
    let report = page_script("live.mjs", &["roomsfocus", &server.url(), "kbd"]);
    assert_clean(&report);
    let focused = &report["focused"];
    assert_eq!(focused["rebuilt"], true, "{report}");
    assert_eq!(focused["tag"], "BUTTON", "{report}");
    assert_eq!(focused["room"], "kbd", "{report}");
    server.stop();
}

#[tokio::test]
async fn the_page_reconnects_after_a_restart_and_misses_nothing() {
    let _turn = take_turn().await;
    let during = [
        "after the restart 1",
        "after the restart 2",
        "after the restart 3",
    ];
    let (report, want) = across_a_restart("live.mjs", "again", &during).await;
    assert_clean(&report);
    // The page said it was reconnecting, then live again.
    let states = report["states"].as_array().unwrap();
    assert!(states.contains(&json!("reconnecting")), "{report}");
    assert_eq!(states.last().unwrap(), "live", "{report}");
    // Every danmaku once, in id order (the list shows the newest first).
    let recent = report["recent"].as_array().unwrap();
    let mut texts: Vec<&str> = recent.iter().map(|r| r["text"].as_str().unwrap()).collect();
    texts.reverse();
    assert_eq!(texts, want, "{report}");
    let ids: Vec<u64> = recent
        .iter()
        .rev()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}
