//! Bad input gets a clear error with a stable code, never a panic, and never
//! disturbs anyone else.

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::server::*;

async fn post_raw(server: &Server, room: &str, body: &str) -> (u16, Value) {
    let res = http()
        .post(format!("{}/api/v1/rooms/{room}/danmaku", server.url()))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

#[tokio::test]
async fn http_errors_have_stable_codes_and_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let long = "长".repeat(101);
    let long_room = "x".repeat(65);
    let huge = format!(r#"{{"text":"{}"}}"#, "x".repeat(5000));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("r", "{not json".into(), 400, "invalid_json"),
        ("r", "".into(), 400, "invalid_json"),
        ("r", r#"{"mode":"top"}"#.into(), 400, "invalid_field"),
        ("r", r#"{"text":42}"#.into(), 400, "invalid_field"),
        ("bad%20room", r#"{"text":"x"}"#.into(), 400, "invalid_room"),
        (&long_room, r#"{"text":"x"}"#.into(), 400, "invalid_room"),
        ("r", format!(r#"{{"text":"{long}"}}"#), 400, "text_too_long"),
        ("r", r#"{"text":"  "}"#.into(), 400, "empty_text"),
        (
            "r",
            r#"{"text":"x","mode":"diagonal"}"#.into(),
            400,
            "invalid_field",
        ),
        (
            "r",
            r##"{"text":"x","color":"#12345"}"##.into(),
            400,
            "invalid_field",
        ),
        (
            "r",
            r#"{"text":"x","size":1000}"#.into(),
            400,
            "invalid_field",
        ),
        (
            "r",
            r#"{"text":"x","size":-1}"#.into(),
            400,
            "invalid_field",
        ),
        ("r", r#"{"text":"x","vt":-3}"#.into(), 400, "invalid_field"),
        ("r", huge, 413, "payload_too_large"),
    ];
    for (room, body, status, code) in cases {
        let (got_status, got) = post_raw(&server, room, &body).await;
        assert_eq!(
            (got_status, got["error"]["code"].as_str()),
            (status, Some(code)),
            "body {body:.60}: {got}"
        );
        assert!(got["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let (status, got) = get_json(&server, "/api/v1/nothing").await;
    assert_eq!(
        (status, got["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let res = http()
        .delete(format!("{}/api/v1/rooms", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    // A WebSocket endpoint without a handshake, or with a bad room.
    let (status, got) = get_json(&server, "/ws?room=r").await;
    assert_eq!(
        (status, got["error"]["code"].as_str()),
        (426, Some("upgrade_required"))
    );
    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws?room=no%20spaces", server.addr))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(res) => assert_eq!(res.status(), 400),
        other => panic!("{other}"),
    }
    // Exactly 100 characters is fine, and nothing above was stored.
    let (status, d) = post_raw(
        &server,
        "r",
        &format!(r#"{{"text":"{}"}}"#, "长".repeat(100)),
    )
    .await;
    assert_eq!((status, d["id"].as_u64()), (201, Some(1)));
    assert_eq!(
        metric(&server, "danmaku_rejected_total{code=\"invalid_json\"}").await,
        Some(2.0)
    );
    server.stop();
}

#[tokio::test]
async fn websocket_errors_answer_only_the_offender() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let (mut bystander, _) = watch(&server, "r", None).await;
    let (mut ws, _) = watch(&server, "r", None).await;

    // Errors that keep the connection: an error frame, with the ref if any.
    let cases = [
        ("{oops".to_owned(), "invalid_json", None),
        (
            json!({"type": "explode"}).to_string(),
            "unsupported_command",
            None,
        ),
        (
            json!({"type": "send", "ref": 7, "text": "x".repeat(101)}).to_string(),
            "text_too_long",
            Some(json!(7)),
        ),
        (
            json!({"type": "send", "ref": "c", "text": ""}).to_string(),
            "empty_text",
            Some(json!("c")),
        ),
        (
            json!({"type": "send", "text": "x", "color": "blue"}).to_string(),
            "invalid_field",
            None,
        ),
        (
            json!({"type": "send", "ref": "no-text"}).to_string(),
            "invalid_field",
            Some(json!("no-text")),
        ),
    ];
    for (text, code, reference) in cases {
        ws.send(Message::text(text)).await.unwrap();
        let err = next_of(&mut ws, "error").await;
        assert_eq!(err["error"]["code"], code, "{err}");
        assert_eq!(err.get("ref"), reference.as_ref());
    }
    // Still usable.
    send_ws(
        &mut ws,
        json!({"type": "send", "ref": 1, "text": "still here"}),
    )
    .await;
    assert_eq!(next_of(&mut ws, "ack").await["id"], 1);

    // Binary data closes that connection with 1003.
    let (mut binary, _) = watch(&server, "r", None).await;
    binary.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(close_code(&mut binary).await, Some(1003));

    // A message over the 4 KiB limit closes that connection with 1009.
    ws.send(Message::text("x".repeat(5000))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1009));

    // The bystander saw the good danmaku and keeps receiving.
    post(&server, "r", json!({"text": "after the noise"})).await;
    let got = collect_danmaku(&mut bystander, 2).await;
    assert_eq!(ids(&got), vec![1, 2]);
    wait_metric(&server, "danmaku_connections{transport=\"ws\"}", 1.0).await;
    server.stop();
}
