//! The guard end to end: tokens on every transport, token buckets, the word
//! filter (with hot reload) and the flood guard.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::server::*;

const SECRET: &str = "an-e2e-test-secret-of-32-bytes-or-more";

fn user_token(sub: &str) -> String {
    token(
        SECRET,
        json!({"sub": sub, "name": "Alice", "role": "viewer", "exp": now() + 600}),
    )
}

/// POSTs a danmaku with an optional bearer token; status, Retry-After, body.
async fn post_as(
    server: &Server,
    room: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Option<u64>, Value) {
    let mut req = http()
        .post(format!("{}/api/v1/rooms/{room}/danmaku", server.url()))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry, res.json().await.unwrap())
}

#[tokio::test]
async fn tokens_are_verified_on_every_transport() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[auth]\nhs256_secret = \"{SECRET}\"\nanonymous_send = false\nanonymous_watch = true\n"
    );
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let text = json!({"text": "hello"});

    let (status, _, body) = post_as(&server, "r", None, text.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );

    let forged = token(
        "some-other-secret-that-is-long-enough!!",
        json!({"sub": "mallory", "role": "admin", "exp": now() + 600}),
    );
    let expired = token(SECRET, json!({"sub": "alice", "exp": now() - 3600}));
    // `alg: none`, the oldest trick: header {"alg":"none"}, no signature.
    let none = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            json!({"sub": "mallory", "role": "admin", "exp": now() + 600}).to_string()
        )
    );
    let hs512 = encode(
        &Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": "alice", "exp": now() + 600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    for bad in [&forged, &expired, &none, &hs512, &"not.a.token".to_owned()] {
        let (status, _, body) = post_as(&server, "r", Some(bad), text.clone()).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{bad}: {body}"
        );
        assert_eq!(
            ws_status(&server, &format!("room=r&token={bad}"), &[]).await,
            401
        );
        let sse = http()
            .get(format!(
                "{}/api/v1/rooms/r/stream?token={bad}",
                server.url()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(sse.status().as_u16(), 401);
    }

    // A valid token sends under its own user id and name.
    let alice = user_token("alice");
    let (status, _, body) = post_as(
        &server,
        "r",
        Some(&alice),
        json!({"text": "hi", "name": "Bob"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["user"].as_str(), body["name"].as_str()),
        (Some("alice"), Some("Alice"))
    );

    // Over a WebSocket, the token from the query; watching needs none.
    let (mut guest, _) = watch(&server, "r", None).await;
    let url = format!("ws://{}/ws?room=r&token={alice}", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    send_ws(
        &mut ws,
        json!({"type": "send", "ref": 1, "text": "over ws"}),
    )
    .await;
    let ack = next_of(&mut ws, "ack").await;
    assert_eq!(ack["ref"], 1, "{ack}");
    let seen = next_of(&mut guest, "danmaku").await;
    assert_eq!(seen["items"][0]["user"], "alice");
    // A guest's send over the WebSocket is refused the same way.
    send_ws(
        &mut guest,
        json!({"type": "send", "ref": 2, "text": "anon"}),
    )
    .await;
    let err = next_of(&mut guest, "error").await;
    assert_eq!(
        (err["ref"].as_i64(), err["error"]["code"].as_str()),
        (Some(2), Some("unauthorized"))
    );

    // A token limited to some rooms is refused elsewhere.
    let events = token(
        SECRET,
        json!({"sub": "carol", "rooms": ["event-*"], "exp": now() + 600}),
    );
    assert_eq!(
        ws_status(&server, &format!("room=event-1&token={events}"), &[]).await,
        101
    );
    assert_eq!(
        ws_status(&server, &format!("room=lobby&token={events}"), &[]).await,
        403
    );
    let (status, _, body) = post_as(&server, "lobby", Some(&events), text).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let _ = ws.close(None).await;
}

#[tokio::test]
async fn watching_can_require_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[auth]\nhs256_secret = \"{SECRET}\"\nanonymous_watch = false\n");
    let server = Server::start(&dir.path().join("data"), Some(&config));
    assert_eq!(ws_status(&server, "room=r", &[]).await, 401);
    let alice = user_token("alice");
    assert_eq!(
        ws_status(&server, &format!("room=r&token={alice}"), &[]).await,
        101
    );
}

#[tokio::test]
async fn send_buckets_refuse_then_refill() {
    let dir = tempfile::tempdir().unwrap();
    // Nobody is exempt by default: loopback is limited like anyone.
    let config = "[limits]\nsend_burst = 2\nsend_per_second = 2\n";
    let server = Server::start(&dir.path().join("data"), Some(config));
    for i in 0..2 {
        let (status, _, body) = post_as(&server, "r", None, json!({"text": format!("t{i}")})).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, retry, body) = post_as(&server, "r", None, json!({"text": "t2"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    let retry = retry.expect("a Retry-After header");
    assert!(retry >= 1);
    assert_eq!(body["error"]["retry_after_s"], retry);

    // Over a WebSocket the same bucket answers with an error frame.
    let (mut ws, _) = watch(&server, "r", None).await;
    send_ws(&mut ws, json!({"type": "send", "ref": "w", "text": "t3"})).await;
    let err = next_of(&mut ws, "error").await;
    assert_eq!(err["error"]["code"], "rate_limited", "{err}");

    // Waiting as told refills the bucket.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (status, _, body) = post_as(&server, "r", None, json!({"text": "t4"})).await;
    assert_eq!(status, 201, "{body}");
    assert!(metric(&server, "danmaku_rejected_total{code=\"rate_limited\"}").await >= Some(2.0));
}

#[tokio::test]
async fn the_word_list_is_reloaded_when_its_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "# words\nbadword\n").unwrap();
    let config = format!(
        "[filter]\nwords_file = {:?}\nreload_interval_ms = 100\n",
        words.display().to_string()
    );
    let server = Server::start(&dir.path().join("data"), Some(&config));
    for text in ["a BadWord here", "ｂａｄｗｏｒｄ"] {
        let (status, _, body) = post_as(&server, "r", None, json!({"text": text})).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("blocked_content")),
            "{text}"
        );
    }
    let (status, _, _) = post_as(&server, "r", None, json!({"text": "newword"})).await;
    assert_eq!(status, 201);

    std::fs::write(&words, "newword\n").unwrap();
    let started = Instant::now();
    loop {
        let (status, _, _) = post_as(&server, "r", None, json!({"text": "newword again"})).await;
        if status == 400 {
            break;
        }
        assert!(started.elapsed() < WAIT, "the new list never took effect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, _) = post_as(&server, "r", None, json!({"text": "badword is fine now"})).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn mask_mode_stores_the_masked_text() {
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "spoiler\n").unwrap();
    let config = format!(
        "[filter]\nwords_file = {:?}\naction = \"mask\"\n",
        words.display().to_string()
    );
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let (mut ws, _) = watch(&server, "r", None).await;
    let (status, _, body) = post_as(&server, "r", None, json!({"text": "no SPOILER please"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["text"], "no ******* please");
    let seen = next_of(&mut ws, "danmaku").await;
    assert_eq!(seen["items"][0]["text"], "no ******* please");
}

#[tokio::test]
async fn repeats_and_hidden_characters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[limits]\nsend_burst = 100\nsend_per_second = 100\n";
    let server = Server::start(&dir.path().join("data"), Some(config));
    let (status, _, _) = post_as(&server, "r", None, json!({"text": "same"})).await;
    assert_eq!(status, 201);
    let (status, retry, body) = post_as(&server, "r", None, json!({"text": "SAME"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    assert!(retry.is_some());
    let (status, _, _) = post_as(&server, "r", None, json!({"text": "different"})).await;
    assert_eq!(status, 201);
    for text in ["two\nlines", "tab\there", "evil\u{202E}txt.exe", "nul\u{0}"] {
        let (status, _, body) = post_as(&server, "r", None, json!({"text": text})).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_field")),
            "{text:?}"
        );
    }
}

#[tokio::test]
async fn a_refused_token_leaves_other_viewers_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[auth]\nhs256_secret = \"{SECRET}\"\n");
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let (mut viewer, _) = watch(&server, "r", None).await;
    for _ in 0..20 {
        assert_eq!(ws_status(&server, "room=r&token=garbage", &[]).await, 401);
    }
    let (status, _, _) = post_as(&server, "r", None, json!({"text": "still here"})).await;
    assert_eq!(status, 201);
    assert_eq!(
        next_of(&mut viewer, "danmaku").await["items"][0]["text"],
        "still here"
    );
    viewer.send(Message::Close(None)).await.unwrap();
}
