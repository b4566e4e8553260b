//! SIGTERM: stop accepting, commit and deliver everything acknowledged,
//! close viewers with 1001 "going away", exit 0 within a few seconds.

use std::collections::BTreeSet;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::server::*;

#[tokio::test]
async fn shutdown_delivers_every_acknowledged_danmaku_then_says_going_away() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, Some(EXEMPT_LOOPBACK));
    let (mut viewer, _) = watch(&server, "show", None).await;
    let (mut sender, _) = watch(&server, "show", None).await;
    for i in 0..300 {
        send_ws(
            &mut sender,
            json!({"type": "send", "ref": i, "text": format!("d{i}")}),
        )
        .await;
    }
    // Terminate once the first send is acknowledged, while the others are
    // still in flight.
    let mut early = Vec::new();
    loop {
        let v = next_json(&mut sender).await;
        let ack = v["type"] == "ack";
        early.push(v);
        if ack {
            break;
        }
    }
    server.terminate();

    let (mut acked, sender_close) = read_until_close(&mut sender).await;
    acked.extend(early);
    let (seen, viewer_close) = read_until_close(&mut viewer).await;
    assert_eq!(sender_close, Some(1001));
    assert_eq!(viewer_close, Some(1001));
    let (code, took) = server.wait_exit();
    assert_eq!(code, Some(0));
    assert!(took < std::time::Duration::from_secs(6), "{took:?}");

    let acked: BTreeSet<u64> = acked
        .iter()
        .filter(|v| v["type"] == "ack")
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    let delivered: BTreeSet<u64> = seen
        .iter()
        .filter(|v| v["type"] == "danmaku")
        .flat_map(|v| {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_u64().unwrap())
        })
        .collect();
    assert!(
        acked.is_subset(&delivered),
        "every acknowledged danmaku reached the viewer"
    );

    // And every acknowledged danmaku is on disk.
    let server = Server::start(&data, Some(EXEMPT_LOOPBACK));
    let (_, history) = get_json(&server, "/api/v1/rooms/show/danmaku?limit=1000").await;
    let stored: BTreeSet<u64> = ids(history["items"].as_array().unwrap())
        .into_iter()
        .collect();
    assert!(acked.is_subset(&stored));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_64_senders_loses_nothing_acknowledged() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Loopback exempted, so that the senders go as fast as the server takes.
    let config = EXEMPT_LOOPBACK;
    let mut server = Server::start(&data, Some(config));
    let rooms: Vec<String> = (0..8).map(|r| format!("r{r}")).collect();
    let mut viewers = Vec::new();
    for room in &rooms {
        viewers.push(watch(&server, room, None).await.0);
    }
    // 64 senders, each with its own keep-alive connection, sending until
    // the server refuses or goes away; each returns what was acknowledged.
    let acked_so_far = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..64)
        .map(|i| {
            let url = format!("{}/api/v1/rooms/{}/danmaku", server.url(), rooms[i % 8]);
            let acked_so_far = acked_so_far.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut acked = Vec::new();
                loop {
                    let text = format!("s{i}-{}", acked.len());
                    let Ok(res) = client
                        .post(&url)
                        .json(&json!({ "text": text }))
                        .send()
                        .await
                    else {
                        break;
                    };
                    if res.status() != 201 {
                        let body: Value = res.json().await.unwrap_or_default();
                        assert_eq!(body["error"]["code"], "shutting_down", "{body}");
                        break;
                    }
                    let Ok(d) = res.json::<Value>().await else {
                        break;
                    };
                    acked.push((
                        d["room"].as_str().unwrap().to_owned(),
                        d["id"].as_u64().unwrap(),
                    ));
                    acked_so_far.fetch_add(1, Ordering::Relaxed);
                }
                acked
            })
        })
        .collect();
    // Terminate in the middle of the storm.
    while acked_so_far.load(Ordering::Relaxed) < 1000 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    server.terminate();
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    for viewer in &mut viewers {
        let (_, code) = read_until_close(viewer).await;
        assert_eq!(code, Some(1001));
    }
    let (code, took) = server.wait_exit();
    assert_eq!(code, Some(0));
    assert!(took < std::time::Duration::from_secs(6), "{took:?}");

    // Every acknowledged danmaku is stored.
    let server = Server::start(&data, Some(config));
    let mut stored = BTreeSet::new();
    for room in &rooms {
        let mut after = 0;
        loop {
            let path = format!("/api/v1/rooms/{room}/danmaku?after={after}&limit=1000");
            let (_, page) = get_json(&server, &path).await;
            let page = ids(page["items"].as_array().unwrap());
            let Some(&last) = page.last() else { break };
            stored.extend(page.into_iter().map(|id| (room.clone(), id)));
            after = last;
        }
    }
    let lost: Vec<_> = acked.iter().filter(|a| !stored.contains(*a)).collect();
    eprintln!(
        "SIGTERM under 64 senders: {} acknowledged, {} stored, exit in {took:?}",
        acked.len(),
        stored.len()
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    server.stop();
}

async fn read_until_close(ws: &mut Ws) -> (Vec<Value>, Option<u16>) {
    let mut frames = Vec::new();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no close within the wait");
        match msg {
            Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(f))) => return (frames, f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("connection broke instead of closing: {e}"),
            None => return (frames, None),
        }
    }
}

/// A script that reads the banner may stop the server at once: the signal
/// must already be handled then, or it would kill the process mid-start
/// (it did, 24 times in 40, before the handlers were installed ahead of
/// the banner).
#[test]
fn sigterm_right_after_the_banner_is_a_clean_stop() {
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        Server::start(&dir.path().join("data"), None).stop();
    }
}
