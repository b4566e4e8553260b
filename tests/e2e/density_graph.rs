//! A video's danmaku density over its time line (`GET
//! /api/v1/rooms/{room}/density`), the data of a player's "high-energy"
//! bar: counted per bucket of video time, bounded, and refused clearly.

use serde_json::{json, Value};

use crate::server::*;

/// Sends one danmaku to `room` at video time `vt` (none: a live danmaku).
async fn send_at(server: &Server, room: &str, i: usize, vt: Option<f64>) {
    let mut body = json!({ "text": format!("moment {i}") });
    if let Some(vt) = vt {
        body["vt"] = json!(vt);
    }
    let (status, answer) = post(server, room, body).await;
    assert_eq!(status, 201, "{answer}");
}

fn counts(v: &Value) -> Vec<u64> {
    v["counts"]
        .as_array()
        .unwrap_or_else(|| panic!("no counts in {v}"))
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn density_counts_danmaku_per_bucket_of_video_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(EXEMPT_LOOPBACK));
    let vts = [
        Some(0.5),
        Some(3.0),
        Some(9.99),
        None,
        Some(10.0),
        Some(25.0),
        Some(25.5),
    ];
    for (i, vt) in vts.into_iter().enumerate() {
        send_at(&server, "film", i, vt).await;
    }
    send_at(&server, "other", 99, Some(1.0)).await;

    // The default bucket is 10 s: [0, 10), [10, 20), [20, 30).
    let (status, v) = get_json(&server, "/api/v1/rooms/film/density").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["room"], "film");
    assert_eq!(v["bucket_s"], 10.0);
    assert_eq!(counts(&v), vec![3, 1, 2], "the live danmaku is not counted");

    let (status, v) = get_json(&server, "/api/v1/rooms/film/density?bucket=5").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["bucket_s"], 5.0);
    assert_eq!(counts(&v), vec![2, 1, 1, 0, 0, 2]);

    let (_, v) = get_json(&server, "/api/v1/rooms/film/density?bucket=0.5").await;
    let fine = counts(&v);
    assert_eq!(fine.len(), 52, "25.5 s is in bucket 51");
    let hit: Vec<usize> = (0..fine.len()).filter(|&i| fine[i] > 0).collect();
    assert_eq!(hit, vec![1, 6, 19, 20, 50, 51], "{fine:?}");
    assert!(fine.iter().all(|&c| c <= 1));

    // A room without danmaku (or never used) has an empty bar.
    let (status, v) = get_json(&server, "/api/v1/rooms/silent/density").await;
    assert_eq!((status, counts(&v)), (200, vec![]));

    // Players on other origins may read it, like history.
    let res = http()
        .get(format!("{}/api/v1/rooms/film/density", server.url()))
        .header("Origin", "https://player.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "*",
        "{:?}",
        res.headers()
    );
}

#[tokio::test]
async fn density_refuses_bad_buckets_and_too_many_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(EXEMPT_LOOPBACK));
    // 2,000 s into the video: 20,000 buckets of 0.1 s, past the cap.
    send_at(&server, "long", 0, Some(2000.0)).await;
    send_at(&server, "long", 1, Some(1.0)).await;

    for query in [
        "bucket=0",
        "bucket=0.05",
        "bucket=3601",
        "bucket=-1",
        "bucket=NaN",
        "bucket=inf",
        "bucket=ten",
        "bucket=",
        "size=5",
        "to=0",
        "to=-3",
        "to=NaN",
        "to=2592001",
        // 2,000 buckets of 0.1 s fit; 20,001 do not.
        "bucket=0.1&to=2000.01",
    ] {
        let (status, v) = get_json(&server, &format!("/api/v1/rooms/long/density?{query}")).await;
        assert_eq!(status, 400, "{query}: {v}");
        assert_eq!(v["error"]["code"], "invalid_query", "{query}: {v}");
    }

    let (status, v) = get_json(&server, "/api/v1/rooms/long/density?bucket=0.1").await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_query");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("larger bucket"), "{message}");

    // One second per bucket is 2,001 buckets: within the cap.
    let (status, v) = get_json(&server, "/api/v1/rooms/long/density?bucket=1").await;
    assert_eq!(status, 200, "{v}");
    let counts = counts(&v);
    assert_eq!(counts.len(), 2001);
    assert_eq!((counts[1], counts[2000], counts.iter().sum()), (1, 1, 2));

    // A player passes its video's length: the danmaku at 2,000 s lies past
    // a 3-minute video and no longer spoils its bar, even in small buckets.
    let (status, v) = get_json(&server, "/api/v1/rooms/long/density?bucket=0.1&to=180").await;
    assert_eq!(status, 200, "{v}");
    let short = self::counts(&v);
    assert_eq!(short.len(), 11, "up to the last bucket that holds any");
    assert_eq!((short[10], short.iter().sum()), (1, 1));

    let (status, v) = get_json(&server, "/api/v1/rooms/bad%2Froom/density").await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_room");
    let res = http()
        .post(format!("{}/api/v1/rooms/long/density", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 405);
}
