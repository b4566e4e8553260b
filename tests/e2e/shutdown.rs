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
