//! The video player page (`/v/{room}?src=VIDEO_URL`) in Chromium, playing a
//! WAV file the script makes: danmaku at their video time through play and
//! seek, history fetched window by window, a send at the current moment,
//! live danmaku shown once, the density graph, and a missing or bad video.

use std::collections::HashMap;

use futures_util::future::join_all;
use serde_json::{json, Value};

use super::{page_script, Conversation};
use crate::server::*;

const MARKUP: &str = "<img src=x onerror=alert(1)>";

/// Posts each `(text, vt)` to `room` at once; returns their ids in order.
async fn seed(server: &Server, room: &str, danmaku: &[(String, f64)]) -> Vec<u64> {
    let posts = danmaku.iter().map(|(text, vt)| {
        post(
            server,
            room,
            json!({"text": text, "name": text, "vt": vt, "mode": "scroll"}),
        )
    });
    join_all(posts)
        .await
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, 201, "{body}");
            body["id"].as_u64().unwrap()
        })
        .collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// What the page saw of danmaku `id` (see `watchStage` in player.mjs).
fn seen(report: &Value, id: u64) -> Option<&Value> {
    report.get(id.to_string()).filter(|v| !v.is_null())
}

#[tokio::test]
async fn the_player_shows_danmaku_at_their_video_time_and_loads_history_in_windows() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    // Pages of 7: the busiest second (15 danmaku) takes several, and the
    // page finds the server's limit by itself.
    let config = format!("{EXEMPT_LOOPBACK}max_history = 7\n");
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let mut timed: Vec<(String, f64)> = vec![
        (MARKUP.to_owned(), 2.0),
        ("four".to_owned(), 4.0),
        ("five".to_owned(), 5.0),
        ("seven".to_owned(), 7.0),
        ("ten a".to_owned(), 10.2),
        ("ten b".to_owned(), 10.4),
        ("ten c".to_owned(), 10.6),
        ("late".to_owned(), 45.0),
        ("far".to_owned(), 95.0),
        // Far past the end of the 120 s video: the density graph counts
        // only up to the end, or it would need 16,667 buckets of 1.2 s.
        ("beyond the end".to_owned(), 20000.0),
    ];
    timed.extend((0..15).map(|i| (format!("peak {i}"), 40.2 + f64::from(i) * 0.01)));
    let ids = seed(&server, "film", &timed).await;
    let id = |text: &str| ids[timed.iter().position(|(t, _)| t == text).unwrap()];
    let vt_of: HashMap<String, f64> = ids
        .iter()
        .zip(&timed)
        .map(|(id, (_, vt))| (id.to_string(), *vt))
        .collect();

    let mut script = Conversation::start("player.mjs", &["play", &server.url(), "film"]);
    let phase = script.next();
    assert_eq!(phase["phase"], "live", "{phase}");
    let ahead_vt = f(&phase["t"]) + 2.0;
    let (_, plain) = post(&server, "film", json!({"text": "live plain"})).await;
    let (_, ahead) = post(
        &server,
        "film",
        json!({"text": "live ahead", "vt": ahead_vt}),
    )
    .await;
    script.say(&format!(
        "{} {} {ahead_vt}",
        plain["id"].as_u64().unwrap(),
        ahead["id"].as_u64().unwrap()
    ));
    let r = script.report();

    assert_eq!(
        r["problems"],
        json!({"errors": [], "dialogs": [], "csp": []})
    );
    assert_eq!(r["stageImgs"], 0, "markup in a danmaku made an element");
    assert_eq!(r["unnamed"], json!([]), "every control has a name");
    assert!(
        (f(&r["duration"]) - 120.0).abs() < 0.01,
        "{}",
        r["duration"]
    );

    // Playing from 0: nothing before its time, each at its time.
    let start = &r["fromStart"];
    for (key, seen) in start.as_object().unwrap() {
        if let Some(vt) = vt_of.get(key) {
            assert!(
                f(&seen["t"]) >= *vt,
                "{} showed at {} before its vt {vt}",
                seen["text"],
                seen["t"]
            );
        }
    }
    for (text, vt) in [("five", 5.0), ("seven", 7.0), ("four", 4.0), (MARKUP, 2.0)] {
        let seen = seen(start, id(text)).unwrap_or_else(|| panic!("{text} never showed: {start}"));
        assert!(
            f(&seen["t"]) < vt + 0.3,
            "{text} (vt {vt}) showed late, at {}",
            seen["t"]
        );
        assert_eq!(seen["text"], text, "shown as text");
    }

    // After a seek to 5.5: the vt 5.0 one mid-flight (half a second of its
    // eight in), not the vt 7.0 one, nor vt 4.0 (more than a second old).
    let after = &r["afterSeek"]["seen"];
    let five =
        seen(after, id("five")).unwrap_or_else(|| panic!("five not shown after the seek: {after}"));
    let (x, w) = (f(&five["x"]), f(&five["w"]));
    assert!(
        x > w * 0.8 && x < w * 0.97,
        "five at x {x} of {w}: not half a second into its flight"
    );
    assert!(
        seen(after, id("seven")).is_none(),
        "seven showed at {}",
        r["afterSeek"]["t"]
    );
    assert!(
        seen(after, id("four")).is_none(),
        "four is too old to catch up"
    );

    // A hidden tab shows nothing; back again at 11.45 s (video paused
    // while hidden) it is as after a seek there: only "ten c" (vt 10.6,
    // within the last second) mid-flight, none of what passed meanwhile,
    // and the stage stands still, as the video does.
    let hidden = &r["hidden"];
    for text in ["ten a", "ten b", "ten c"] {
        assert!(
            seen(&hidden["whileHidden"], id(text)).is_none(),
            "{text} was drawn in a hidden tab: {hidden}"
        );
    }
    let back_t = f(&hidden["back"]["t"]);
    assert!((11.4..11.6).contains(&back_t), "back at {back_t}");
    let back = hidden["back"]["stage"].as_array().unwrap();
    let ids_back: Vec<&str> = back.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids_back, [id("ten c").to_string()], "{hidden}");
    let (x, stage) = (f(&back[0]["x"]), f(&back[0]["stage"]));
    assert!(
        x > stage * 0.7 && x < stage * 0.95,
        "ten c at x {x} of {stage}: not about a second into its flight"
    );
    assert_eq!(
        hidden["later"], hidden["back"]["stage"],
        "paused video, moving danmaku"
    );

    // History comes in windows of 30 s: never all at once, the next only
    // as the playhead nears it (10 s before), and never the far one.
    for req in r["requests"].as_array().unwrap() {
        let from: f64 = req["from"].as_str().unwrap().parse().unwrap();
        let to: f64 = req["to"]
            .as_str()
            .expect("every request has an end")
            .parse()
            .unwrap();
        assert!(to - from <= 30.0 && to > from, "{req}");
        assert!(from < 90.0, "the window at 95 s was never near: {req}");
    }
    let from_of = |req: &Value| req["from"].as_str().unwrap().parse::<f64>().unwrap();
    assert!(r["requestsBeforeLate"]
        .as_array()
        .unwrap()
        .iter()
        .all(|q| from_of(q) < 30.0));
    let late = r["requestsAt21"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| from_of(q) == 30.0)
        .expect("the window from 30 s was fetched by 21 s");
    let at = f(&late["t"]);
    assert!(
        (19.9..20.8).contains(&at),
        "the window from 30 s was fetched at {at}"
    );
    assert!(
        r["requests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["limit"] == "7"),
        "the page found the server's page size"
    );
    // Window 0, dropped while the playhead was at 70 s, is fetched again.
    assert!(
        r["requestsAfterSeekBack"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| from_of(q) == 0.0),
        "{}",
        r["requestsAfterSeekBack"]
    );

    // Every one of the busiest second's danmaku showed, over three pages.
    for i in 0..15 {
        let text = format!("peak {i}");
        let seen = seen(&r["peak"], id(&text)).unwrap_or_else(|| panic!("{text} never showed"));
        assert!(f(&seen["t"]) >= 40.2 + f64::from(i) * 0.01);
    }

    // Paused, nothing moves; at twice the speed, a danmaku is as far into
    // its 8 s of video time as the playhead is past its vt.
    assert_eq!(r["paused"]["before"], r["paused"]["after"]);
    assert!(!r["paused"]["before"].as_array().unwrap().is_empty());
    let fast = r["doubleSpeed"].as_array().unwrap();
    assert!(!fast.is_empty());
    for dm in fast {
        let vt = vt_of[dm["id"].as_str().unwrap()];
        let (t, stage, w) = (f(&dm["t"]), f(&dm["stage"]), f(&dm["w"]));
        let want = stage - (stage + w) * (t - vt) / 8.0;
        assert!(
            (f(&dm["x"]) - want).abs() < 0.03 * stage,
            "at {t} the vt {vt} danmaku is at {} of {stage}, not {want}",
            dm["x"]
        );
    }

    // The player's send is stored at the moment it was sent, and shown as own.
    let send = &r["send"];
    assert!(send["msg"].as_str().unwrap().starts_with("Sent"), "{send}");
    assert_eq!(send["own"]["text"], "sent from the player");
    let sent_id: u64 = send["own"]["id"].as_str().unwrap().parse().unwrap();
    let (_, history) = get_json(
        &server,
        &format!("/api/v1/rooms/film/danmaku?after={}&limit=1", sent_id - 1),
    )
    .await;
    let stored = &history["items"][0];
    assert_eq!(stored["text"], "sent from the player");
    let vt = f(&stored["vt"]);
    let sent_at = f(&send["sentAt"]);
    assert!(
        vt >= sent_at && vt < sent_at + 0.5,
        "stored vt {vt}, sent at {sent_at}"
    );

    // Live danmaku show at once; one with a vt ahead is not shown again at it.
    assert_eq!(r["live"]["plain"]["text"], "live plain");
    assert!(f(&r["live"]["aheadFirst"]["t"]) < ahead_vt);
    assert_eq!(r["live"]["ahead"]["episodes"], 1, "{}", r["live"]);
    assert_eq!(r["live"]["ahead"]["max"], 1, "{}", r["live"]);

    // The density graph: the busiest bucket (39.6 to 40.8 s) is the tallest bar.
    let bucket_s = f(&r["bucketS"]);
    // 1.2 s: a hundredth of the video, `to=120` keeping "beyond the end"
    // out (2.4 would be the page's retry after the server refused).
    assert!((bucket_s - 1.2).abs() < 1e-9, "{bucket_s}");
    let bars = r["bars"].as_array().unwrap();
    let tallest = bars
        .iter()
        .max_by(|a, b| f(&a["height"]).total_cmp(&f(&b["height"])))
        .unwrap();
    assert_eq!(tallest["bucket"], 33, "{bars:?}");
    assert_eq!(tallest["count"], 15);
    for bar in bars {
        if bar != tallest {
            assert!(f(&bar["height"]) < f(&tallest["height"]) / 2.0, "{bar}");
        }
    }
    let ten = bars
        .iter()
        .find(|b| b["bucket"] == 8)
        .expect("10.2 to 10.6 s");
    assert_eq!(ten["count"], 3);
    // A click on it seeks to its start; the keyboard moves a bucket at a time.
    assert!(
        (f(&r["clicked"]["t"]) - 33.0 * 1.2).abs() < 0.05,
        "{}",
        r["clicked"]
    );
    assert!(
        (f(&r["keyboard"]["afterRight"]) - 1.2).abs() < 0.05,
        "{}",
        r["keyboard"]
    );
    server.stop();
}

#[tokio::test]
async fn a_missing_or_bad_video_is_told_in_words() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let r = page_script("player.mjs", &["nosrc", &server.url(), "film"]);
    for (case, words) in [
        ("missing", "?src="),
        ("notHttp", "not an http or https link"),
        ("notFound", "could not be played"),
    ] {
        let report = &r[case];
        assert!(
            report["message"].as_str().unwrap().contains(words),
            "{case}: {report}"
        );
        assert_eq!(report["visible"], true, "{case}");
        assert_eq!(
            report["problems"],
            json!({"errors": [], "dialogs": [], "csp": []}),
            "{case}"
        );
    }
    server.stop();
}
