//! Connection lifecycle and hygiene: answers before the close frame,
//! clients that flood without reading or dribble their handshake, the
//! connection caps and the Origin allow-list.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use crate::server::*;

#[tokio::test]
async fn a_client_that_closes_still_gets_every_ack_before_the_close_frame() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(EXEMPT_LOOPBACK));
    let (mut ws, _) = watch(&server, "r", None).await;
    for i in 0..20 {
        send_ws(
            &mut ws,
            json!({"type": "send", "ref": i, "text": format!("t{i}")}),
        )
        .await;
    }
    ws.close(None).await.unwrap();
    let mut acks = Vec::new();
    let code = loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no close frame");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "ack" {
                    acks.push(v["ref"].as_u64().unwrap());
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(
        acks,
        (0..20).collect::<Vec<_>>(),
        "every send answered, in order"
    );
    assert_eq!(code, Some(1000));
    server.stop();
}

#[tokio::test]
async fn a_ping_flood_that_never_reads_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        Some("[connection]\nwrite_timeout_s = 2\n"),
    );
    // A small receive buffer, so that the unread pongs fill it in a
    // fraction of a second rather than after megabytes of autotuning: the
    // test measures the server's cut-off, not the kernel's buffers.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr.parse().unwrap()).await.unwrap();
    raw_ws_handshake(&mut stream, &server.addr, "flood").await;
    // Masked ping frames (zero mask), a thousand per write, as fast as the
    // socket takes them, without ever reading the pongs.
    let pings = [0x89u8, 0x80, 0, 0, 0, 0].repeat(1000);
    let flood = async { while stream.write_all(&pings).await.is_ok() {} };
    let cut = tokio::time::timeout(Duration::from_secs(30), flood).await;
    assert!(cut.is_ok(), "the server never cut the flooding connection");
    // The server stopped reading once the unread pongs piled up, and then
    // cut the connection for making no write progress.
    wait_metric(&server, "danmaku_connections{transport=\"ws\"}", 0.0).await;
    let (status, _) = get_json(&server, "/healthz").await;
    assert_eq!(status, 200);
    server.stop();
}

#[tokio::test]
async fn connections_are_capped_per_address_and_places_come_back() {
    let dir = tempfile::tempdir().unwrap();
    // Loopback is capped like any address by default.
    let config = "[connection]\nmax_connections_per_ip = 2\n";
    let server = Server::start(&dir.path().join("data"), Some(config));
    let (a, _) = watch(&server, "r", None).await;
    let (_b, _) = watch(&server, "r", None).await;
    assert_eq!(ws_status(&server, "room=r", &[]).await, 503);
    let res = http().get(format!("{}/healthz", server.url())).send().await;
    // Plain HTTP is capped alike (the refusal may also show as a reset).
    if let Ok(res) = res {
        assert_eq!(res.status().as_u16(), 503);
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "too_many_connections");
    }
    drop(a);
    let started = std::time::Instant::now();
    while ws_status(&server, "room=r", &[]).await != 101 {
        assert!(
            started.elapsed() < WAIT,
            "the closed connection's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn only_allowed_origins_may_open_a_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[connection]\nallowed_origins = [\"https://live.example\"]\n";
    let server = Server::start(&dir.path().join("data"), Some(config));
    let evil = [("origin", "https://evil.example")];
    let good = [("origin", "https://live.example")];
    assert_eq!(ws_status(&server, "room=r", &evil).await, 403);
    assert_eq!(ws_status(&server, "room=r", &good).await, 101);
    // Not a browser: no Origin, no check.
    assert_eq!(ws_status(&server, "room=r", &[]).await, 101);
}

#[tokio::test]
async fn a_handshake_dribbled_byte_by_byte_is_cut_off() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let config = "[connection]\nheader_timeout_s = 1\n";
    let server = Server::start(&dir.path().join("data"), Some(config));
    let mut stream = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let request = b"GET /ws?room=r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";
    let started = std::time::Instant::now();
    let mut cut = false;
    for b in request.iter().cycle() {
        if stream.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Err(_) => {}
        }
        assert!(started.elapsed() < WAIT, "still connected");
    }
    assert!(cut);
    // It took the header timeout, not the whole request, to cut it off.
    assert!(started.elapsed() < Duration::from_secs(5));
}
