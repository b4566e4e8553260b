//! Connection lifecycle: answers before the close frame, and clients that
//! flood without reading.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use crate::server::*;

#[tokio::test]
async fn a_client_that_closes_still_gets_every_ack_before_the_close_frame() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
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
    let mut stream = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    raw_ws_handshake(&mut stream, &server.addr, "flood").await;
    // Masked ping frames (zero mask), as fast as the socket takes them,
    // without ever reading the pongs.
    let ping = [0x89u8, 0x80, 0, 0, 0, 0];
    let flood = async { while stream.write_all(&ping).await.is_ok() {} };
    let cut = tokio::time::timeout(Duration::from_secs(30), flood).await;
    assert!(cut.is_ok(), "the server never cut the flooding connection");
    // The server stopped reading once the unread pongs piled up, and then
    // cut the connection for making no write progress.
    wait_metric(&server, "danmaku_connections{transport=\"ws\"}", 0.0).await;
    let (status, _) = get_json(&server, "/healthz").await;
    assert_eq!(status, 200);
    server.stop();
}
