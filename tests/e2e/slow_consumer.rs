//! Viewers that cannot keep up lose the oldest frames, are told so, and are
//! disconnected; a fast viewer in the same room receives everything.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::server::*;

const CONFIG: &str = "
[fanout]
coalesce_ms = 5
max_frame_bytes = 2048
ring_frames = 64
max_queued_bytes = 65536
max_lags = 1

[connection]
write_timeout_s = 2
";

/// A TCP connection with a tiny receive buffer, so that not reading backs
/// up into the server quickly.
async fn small_buffer_socket(addr: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

/// Opens a WebSocket and never reads from it.
async fn stalled_viewer(addr: &str, room: &str) -> TcpStream {
    let mut stream = small_buffer_socket(addr).await;
    let request = format!(
        "GET /ws?room={room} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// A viewer that reads, but slowly; returns what it saw and its close code.
async fn slow_reader(
    addr: String,
    room: &str,
) -> tokio::task::JoinHandle<(Vec<Value>, Option<u16>)> {
    let stream = small_buffer_socket(&addr).await;
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/ws?room={room}"), stream)
            .await
            .unwrap();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            match tokio::time::timeout(WAIT * 4, ws.next())
                .await
                .expect("slow reader waited too long")
            {
                Some(Ok(Message::Text(t))) => seen.push(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(f))) => return (seen, f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (seen, None),
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_viewers_lag_and_are_cut_off_while_a_fast_one_gets_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(CONFIG));
    let (mut fast, _) = watch(&server, "hot", None).await;
    let _stalled = stalled_viewer(&server.addr, "hot").await;
    let slow = slow_reader(server.addr.clone(), "hot").await;
    let (mut sender, _) = watch(&server, "hot", None).await;

    const TOTAL: usize = 3000;
    let text = "弹".repeat(90);
    let reader = tokio::spawn(async move {
        let got = collect_danmaku(&mut fast, TOTAL).await;
        (fast, got)
    });
    // The sender is a viewer too: it must keep reading (its acks among the
    // room's frames), or it would be cut off as a slow consumer itself.
    let mut acked = 0;
    for i in 0..TOTAL {
        send_ws(&mut sender, json!({"type": "send", "ref": i, "text": text})).await;
        if i % 32 == 31 {
            // Stay within the in-flight limit by reading acks as we go.
            while next_json(&mut sender).await["type"] != "ack" {}
            acked += 1;
        }
    }
    while acked < TOTAL {
        if next_json(&mut sender).await["type"] == "ack" {
            acked += 1;
        }
    }
    let (mut fast, got) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ids(&got),
        (1..=TOTAL as u64).collect::<Vec<_>>(),
        "the fast viewer lost nothing"
    );

    // The slow reader was told it lagged, then closed as a slow consumer.
    let (seen, code) = slow.await.unwrap();
    let dropped: u64 = seen
        .iter()
        .filter(|v| v["type"] == "lagged")
        .map(|v| v["dropped"].as_u64().unwrap())
        .sum();
    assert!(dropped > 0, "the slow reader saw no lagged frame");
    assert_eq!(code, Some(1008));
    // What it did receive is in order, and every hole in the ids was
    // announced by a lagged frame just before it.
    let (mut prev, mut announced) = (0, 0);
    for v in &seen {
        match v["type"].as_str() {
            Some("lagged") => announced += v["dropped"].as_u64().unwrap(),
            Some("danmaku") => {
                let batch = ids(v["items"].as_array().unwrap());
                assert_eq!(
                    batch[0],
                    prev + 1 + announced,
                    "hole not announced before {batch:?}"
                );
                assert!(batch.windows(2).all(|w| w[1] == w[0] + 1));
                prev = *batch.last().unwrap();
                announced = 0;
            }
            _ => {}
        }
    }

    // The stalled viewer made no write progress and was cut: the fast
    // viewer and the sender remain.
    wait_metric(&server, "danmaku_connections{transport=\"ws\"}", 2.0).await;
    assert!(
        metric(&server, "danmaku_slow_disconnects_total")
            .await
            .unwrap()
            >= 2.0
    );
    assert!(metric(&server, "danmaku_dropped_total").await.unwrap() >= dropped as f64);

    // The fast viewer is still live.
    post(&server, "hot", json!({"text": "still flowing"})).await;
    let last = collect_danmaku(&mut fast, 1).await;
    assert_eq!(ids(&last), vec![TOTAL as u64 + 1]);
    server.stop();
}
