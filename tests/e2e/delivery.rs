//! Sends reach every viewer, over HTTP and WebSocket, in id order.

use serde_json::json;

use crate::server::*;

#[tokio::test]
async fn two_viewers_receive_http_and_ws_sends_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(EXEMPT_LOOPBACK));
    let (mut a, hello) = watch(&server, "live:1", None).await;
    assert_eq!(hello["last_id"], 0);
    let (mut b, _) = watch(&server, "live:1", None).await;

    let (status, stored) = post(
        &server,
        "live:1",
        json!({"text": "over http", "mode": "top", "color": "#00FF00", "vt": 12.5}),
    )
    .await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["id"], 1);
    assert_eq!(stored["color"], "#00ff00");
    assert_eq!(stored["room"], "live:1");

    send_ws(
        &mut a,
        json!({"type": "send", "ref": "r1", "text": "over ws", "name": "alice", "size": 36}),
    )
    .await;
    // The sender reads its ack among the danmaku frames.
    let (mut ack, mut got_a) = (None, Vec::new());
    while ack.is_none() || got_a.len() < 2 {
        let v = next_json(&mut a).await;
        match v["type"].as_str() {
            Some("ack") => ack = Some(v),
            Some("danmaku") => got_a.extend(v["items"].as_array().unwrap().iter().cloned()),
            _ => {}
        }
    }
    let ack = ack.unwrap();
    assert_eq!(ack["ref"], "r1");
    assert_eq!(ack["id"], 2);
    let got_b = collect_danmaku(&mut b, 2).await;
    for got in [got_a, got_b] {
        assert_eq!(ids(&got), vec![1, 2]);
        assert_eq!(got[0]["text"], "over http");
        assert_eq!(got[0]["mode"], "top");
        assert_eq!(got[0]["vt"], 12.5);
        assert_eq!(got[1]["text"], "over ws");
        assert_eq!(got[1]["name"], "alice");
        assert_eq!(got[1]["size"], 36);
        assert!(got[1].get("vt").is_none());
    }

    // Many concurrent senders: ids stay contiguous and strictly increasing.
    let sends: Vec<_> = (0..100)
        .map(|i| {
            let url = server.url();
            tokio::spawn(async move {
                http()
                    .post(format!("{url}/api/v1/rooms/live:1/danmaku"))
                    .json(&json!({"text": format!("n{i}")}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for s in sends {
        assert_eq!(s.await.unwrap(), 201);
    }
    for viewer in [&mut a, &mut b] {
        let got = collect_danmaku(viewer, 100).await;
        assert_eq!(ids(&got), (3..=102).collect::<Vec<_>>());
    }

    // Another room is not disturbed.
    let (status, other) = post(&server, "other", json!({"text": "elsewhere"})).await;
    assert_eq!((status, other["id"].as_u64()), (201, Some(1)));

    // Application-level ping.
    send_ws(&mut b, json!({"type": "ping"})).await;
    assert_eq!(next_of(&mut b, "pong").await, json!({"type": "pong"}));

    // Viewers count themselves and the stats see it.
    let (_, stats) = get_json(&server, "/api/v1/rooms/live:1").await;
    assert_eq!(stats["online"], 2);
    assert_eq!(stats["last_id"], 102);
    assert!(stats["rate_per_s"].as_f64().unwrap() > 0.0);
    let (_, rooms) = get_json(&server, "/api/v1/rooms").await;
    assert_eq!(rooms["rooms"][0]["room"], "live:1");

    drop((a, b));
    // No connection or task outlives its client (the one left is the
    // request that reads the metrics).
    wait_metric(&server, "danmaku_connections{transport=\"ws\"}", 0.0).await;
    wait_metric(&server, "danmaku_tasks", 1.0).await;
    assert_eq!(metric(&server, "danmaku_received_total").await, Some(103.0));
    assert!(metric(&server, "danmaku_deliveries_total").await.unwrap() >= 204.0);
    server.stop();
}

#[tokio::test]
async fn sse_delivers_each_danmaku_with_its_id_and_resumes_from_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(EXEMPT_LOOPBACK));
    let mut sse = http()
        .get(format!("{}/api/v1/rooms/obs/stream", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    // The hello carries the starting point as its event id, so an
    // EventSource that drops before any danmaku resumes from there.
    let first = tokio::time::timeout(WAIT, sse.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = String::from_utf8(first.to_vec()).unwrap();
    assert!(first.contains("id: 0\nevent: hello\n"), "{first}");
    for text in ["one", "two"] {
        assert_eq!(post(&server, "obs", json!({"text": text})).await.0, 201);
    }
    let events = read_sse(&mut sse, 2).await;
    assert_eq!(events, vec![(1, "one".to_owned()), (2, "two".to_owned())]);
    drop(sse);

    // An EventSource reconnecting with Last-Event-ID gets only what it missed.
    assert_eq!(post(&server, "obs", json!({"text": "three"})).await.0, 201);
    let mut again = http()
        .get(format!("{}/api/v1/rooms/obs/stream", server.url()))
        .header("Last-Event-ID", "1")
        .send()
        .await
        .unwrap();
    let events = read_sse(&mut again, 2).await;
    assert_eq!(events, vec![(2, "two".to_owned()), (3, "three".to_owned())]);
    drop(again);
    wait_metric(&server, "danmaku_connections{transport=\"sse\"}", 0.0).await;
    wait_metric(&server, "danmaku_tasks", 1.0).await;
    server.stop();
}

#[tokio::test]
async fn history_by_id_and_video_time_and_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(EXEMPT_LOOPBACK));
    for (i, vt) in [5.0, 1.0, 3.0, 9.0].iter().enumerate() {
        let (status, _) = post(&server, "vod", json!({"text": format!("t{i}"), "vt": vt})).await;
        assert_eq!(status, 201);
    }
    post(&server, "vod", json!({"text": "no vt"})).await;
    let (_, h) = get_json(&server, "/api/v1/rooms/vod/danmaku?after=2&limit=2").await;
    assert_eq!(ids(h["items"].as_array().unwrap()), vec![3, 4]);
    let (_, h) = get_json(&server, "/api/v1/rooms/vod/danmaku?from=2&to=6").await;
    let vts: Vec<f64> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["vt"].as_f64().unwrap())
        .collect();
    assert_eq!(vts, vec![3.0, 5.0]);
    let (status, err) = get_json(&server, "/api/v1/rooms/vod/danmaku?limit=0").await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
    let (status, err) = get_json(&server, "/api/v1/rooms/vod/danmaku?after=x").await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
    let (status, health) = get_json(&server, "/healthz").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));

    let page = get_text(&server, "/").await;
    assert!(page.contains("<title>danmaku"), "the page is served at /");
    let metrics = get_text(&server, "/metrics").await;
    for name in [
        "danmaku_send_ack_seconds_bucket",
        "danmaku_store_commit_seconds_bucket",
        "danmaku_fanout_seconds_bucket",
        "danmaku_rooms ",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    server.stop();
}
