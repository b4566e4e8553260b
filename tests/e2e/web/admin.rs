//! The admin dashboard (`/admin`) in Chromium: sign-in, live charts, the
//! held queue approved from the keyboard, recall and mute reaching a live
//! room page, and the admin token kept out of every address.

use reqwest::Method;
use serde_json::{json, Value};

use super::page_script;
use crate::moderation::{admin, call, config};
use crate::server::*;

const MARKUP: &str = "<img src=x onerror=alert(1)>";

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn an_admin_moderates_a_live_room_from_the_dashboard() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!("{}{EXEMPT_LOOPBACK}", config());
    let server = Server::start(&dir.path().join("data"), Some(&cfg));
    let token = admin();
    let room = "stage";

    // A pre-moderated room holding two guest sends, one of them markup.
    let path = format!("/api/v1/admin/rooms/{room}");
    let (status, _) = call(
        &server,
        Method::PATCH,
        &path,
        Some(&token),
        Some(json!({"premod": true})),
    )
    .await;
    assert_eq!(status, 200);
    for (text, name) in [("held hello", "alice"), (MARKUP, MARKUP)] {
        let (status, held) = post(&server, room, json!({"text": text, "name": name})).await;
        assert_eq!(status, 202, "{held}");
    }

    // The screenshot goes to the temporary folder; DANMAKU_SCREENSHOTS=1
    // puts it in docs/img/admin.png instead, to refresh the docs' picture.
    let shot = if std::env::var_os("DANMAKU_SCREENSHOTS").is_some() {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img/admin.png")
    } else {
        dir.path().join("admin.png")
    };
    let report = page_script(
        "admin.mjs",
        &[&server.url(), &token, room, shot.to_str().unwrap()],
    );
    assert!(report["failure"].is_null(), "{report:#}");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a screenshot of the dashboard");

    // A wrong token is refused in words; the form stays and nothing is kept.
    let wrong = &report["wrong"];
    assert!(
        wrong["message"]
            .as_str()
            .unwrap()
            .starts_with("unauthorized"),
        "{wrong}"
    );
    assert_eq!(wrong["signinVisible"], true);
    assert_eq!(wrong["dashVisible"], false);
    assert_eq!(wrong["stored"], 0);
    assert_eq!(report["storedInSession"], true);
    assert_eq!(report["inLocalStorage"], 0);

    // The held sends, shown as text, approved with j / a / k / a.
    assert_eq!(report["roomName"], room);
    assert_eq!(strings(&report["heldTexts"]), ["held hello", MARKUP]);
    assert_eq!(strings(&report["heldNames"]), ["alice", MARKUP]);
    assert_eq!(report["selectedAfterJ"], MARKUP);
    let recent = strings(&report["roomPageRecent"]);
    assert!(recent.iter().any(|t| t == "held hello"), "{recent:?}");
    assert!(recent.iter().any(|t| t == MARKUP), "{recent:?}");
    assert!(strings(&report["streamNames"]).contains(&MARKUP.to_owned()));

    // The recall took it off the room page, and off the history.
    assert_eq!(report["recalledGone"], true);
    assert_eq!(report["recalledStruck"], "held hello");
    assert_eq!(texts(&server, room).await, [MARKUP]);

    // The muted guest is told so in words, and the server holds the mute.
    let user = report["mutedUser"].as_str().unwrap();
    assert!(user.starts_with("guest-"), "{user}");
    let words = report["mutedWords"].as_str().unwrap();
    assert!(words.starts_with("You are muted"), "{words}");
    let (_, mutes) = call(
        &server,
        Method::GET,
        &format!("{path}/mutes"),
        Some(&token),
        None,
    )
    .await;
    let until = mutes["items"][0]["until"].as_u64().unwrap();
    let left = (until / 1000).saturating_sub(now());
    assert!((3500..=3600).contains(&left), "a mute of an hour: {mutes}");
    // The line's Ban: the same user, kept out of every room for an hour.
    let ban = report["banMsg"].as_str().unwrap();
    assert!(ban.contains(user) && ban.contains("everywhere"), "{ban}");
    let (_, global) = call(
        &server,
        Method::GET,
        "/api/v1/admin/mutes",
        Some(&token),
        None,
    )
    .await;
    let until = global["items"][0]["until"].as_u64().unwrap();
    assert_eq!(global["items"][0]["user"], user, "{global}");
    let left = (until / 1000).saturating_sub(now());
    assert!((3500..=3600).contains(&left), "a ban of an hour: {global}");
    let (_, settings) = call(&server, Method::GET, &path, Some(&token), None).await;
    assert_eq!(settings["premod"], false);
    let actions = strings(&report["auditActions"]);
    for action in ["mute", "room", "recall", "approve"] {
        assert!(actions.contains(&action.to_owned()), "{actions:?}");
    }

    // Markup as a room name is refused as text; no markup became an element.
    assert_eq!(
        report["badRoom"],
        format!("not a valid room name: {MARKUP}")
    );
    assert_eq!(report["imgs"], 0);
    assert_eq!(report["viewerImgs"], 0);
    assert_eq!(report["afterSignOut"], 0);

    // The token never left the Authorization header.
    assert_eq!(report["tokenInUrl"], json!([]), "{report:#}");
    assert!(!strings(&report["urls"]).is_empty());
    // Neither page broke the policy, ran injected script or threw. The
    // admin's one failed load is the wrong token's 401; the room page may
    // miss only its favicon (it names none).
    for (side, allowed) in [
        ("problems", "status of 401"),
        ("viewerProblems", "status of 404"),
    ] {
        let p = &report[side];
        assert_eq!(p["csp"], json!([]), "{side}: {p}");
        assert_eq!(p["dialogs"], json!([]), "{side}: {p}");
        let errors = strings(&p["errors"]);
        assert!(errors.len() <= 1, "{side}: {p}");
        assert!(errors.iter().all(|e| e.contains(allowed)), "{side}: {p}");
    }
    // Charts drawn from the stats endpoint, polled about once a second.
    assert!(report["canvases"].as_u64().unwrap() >= 4, "{report:#}");
    assert!(report["statsPolls"].as_u64().unwrap() >= 3, "{report:#}");
    assert_eq!(report["statsAfter"], true, "{report:#}");
    let inked = report["inked"].as_array().unwrap();
    assert_eq!(inked.len(), 4, "{report:#}");
    assert!(
        inked.iter().all(|n| n.as_u64().unwrap() > 500),
        "every server chart drew: {inked:?}"
    );
    // Another node answering: its name shown, the charts restarted from
    // its samples (asked again at once without `after`).
    let before = report["nodeBefore"].as_str().unwrap();
    assert!(before.starts_with("node "), "{before}");
    let after_switch = strings(&report["afterSwitch"]);
    assert!(
        after_switch.iter().any(|q| q.is_empty()),
        "no poll without `after` once another node answered: {after_switch:?}"
    );
    let switched = report["statsMsgSwitched"].as_str().unwrap();
    assert!(switched.contains("from node other-node"), "{switched}");
    // Signed out and back in mid-poll: one loop of a poll every 1.8 s
    // (answers held 800 ms), about 3 in 6 s; two loops would make 6.
    let polls = report["pollsIn6s"].as_u64().unwrap();
    assert!((2..=4).contains(&polls), "{polls} stats polls in 6 s");
    server.stop();
}
