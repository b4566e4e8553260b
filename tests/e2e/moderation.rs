//! Moderation: recall, mutes, bans, room settings, pre-moderation and the
//! audit log, as admins, authors and muted users see them.

use danmaku::config::AuthConfig;
use danmaku::guard::auth::{mint, Claims, Role};
use reqwest::Method;
use serde_json::{json, Value};

use crate::server::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// The config of a server whose admins hold tokens from [`admin`].
pub(crate) fn config() -> String {
    format!("[auth]\nhs256_secret = \"{SECRET}\"\n")
}

fn token(user: &str, role: Role) -> String {
    let auth = AuthConfig {
        hs256_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = Claims {
        sub: user.into(),
        name: None,
        role,
        rooms: None,
        exp,
    };
    mint(&auth, &claims).unwrap()
}

/// An admin's token.
pub(crate) fn admin() -> String {
    token("mod", Role::Admin)
}

pub(crate) fn user(name: &str) -> String {
    token(name, Role::Viewer)
}

/// One request with an optional bearer token and JSON body; the status
/// and the JSON answer (`null` when there is none).
pub(crate) async fn call(
    server: &Server,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http().request(method, format!("{}{path}", server.url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Sends `text` to `room` as the token's user.
async fn send_as(server: &Server, room: &str, token: &str, text: &str) -> (u16, Value) {
    let path = format!("/api/v1/rooms/{room}/danmaku");
    call(
        server,
        Method::POST,
        &path,
        Some(token),
        Some(json!({ "text": text })),
    )
    .await
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn recall_hides_a_danmaku_for_watchers_and_removes_it_from_history() {
    let dir = tempfile::tempdir().unwrap();
    // Alice sends more than a user's burst: this is about recall, not limits.
    let config = format!("{}{EXEMPT_LOOPBACK}", config());
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let (alice, bob, admin) = (user("alice"), user("bob"), admin());
    let (mut ws, _) = watch(&server, "r", None).await;
    let mut sse = open_sse(&server, "r", None).await;
    for text in ["one", "two", "three"] {
        assert_eq!(send_as(&server, "r", &alice, text).await.0, 201);
    }
    assert_eq!(ids(&collect_danmaku(&mut ws, 3).await), vec![1, 2, 3]);

    // Someone else may not recall alice's danmaku; an admin and alice may.
    let (status, body) = call(
        &server,
        Method::DELETE,
        "/api/v1/rooms/r/danmaku/2",
        Some(&bob),
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    let (status, _) = call(
        &server,
        Method::DELETE,
        "/api/v1/rooms/r/danmaku/2",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        next_of(&mut ws, "delete").await,
        json!({"type": "delete", "ids": [2]})
    );
    let (status, _) = call(
        &server,
        Method::DELETE,
        "/api/v1/rooms/r/danmaku/3",
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(next_of(&mut ws, "delete").await["ids"], json!([3]));
    // SSE viewers get a `delete` event with the same JSON.
    let mut seen = String::new();
    while !seen.contains(r#"{"type":"delete","ids":[3]}"#) {
        let chunk = tokio::time::timeout(WAIT, sse.chunk())
            .await
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk.expect("stream ended")).unwrap());
    }
    assert!(
        seen.contains("event: delete\ndata: {\"type\":\"delete\",\"ids\":[2]}\n\n"),
        "{seen}"
    );
    let (status, body) = call(
        &server,
        Method::DELETE,
        "/api/v1/rooms/r/danmaku/3",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (404, "not_found"));

    let (_, history) = get_json(&server, "/api/v1/rooms/r/danmaku?after=0").await;
    assert_eq!(ids(history["items"].as_array().unwrap()), vec![1]);

    // Resuming across the recalled ids: no `lagged`, nothing missing.
    let (mut resumed, _) = watch(&server, "r", Some(1)).await;
    assert_eq!(send_as(&server, "r", &alice, "four").await.0, 201);
    assert_eq!(ids(&collect_danmaku(&mut resumed, 1).await), vec![4]);

    let (status, log) = call(
        &server,
        Method::GET,
        "/api/v1/admin/audit",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let actions: Vec<(&str, &str, &str)> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![("self_recall", "alice", "3"), ("recall", "mod", "2")]
    );
    server.stop();
}

#[tokio::test]
async fn admin_routes_need_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(&config()));
    let bob = user("bob");
    for (method, path) in [
        (Method::GET, "/api/v1/admin/audit"),
        (Method::GET, "/api/v1/admin/bans"),
        (Method::POST, "/api/v1/admin/mutes"),
        (Method::PATCH, "/api/v1/admin/rooms/r"),
        (Method::GET, "/api/v1/admin/rooms/r/held"),
    ] {
        let (status, body) = call(&server, method.clone(), path, None, None).await;
        assert_eq!((status, code(&body)), (401, "unauthorized"), "{path}");
        let (status, body) = call(&server, method.clone(), path, Some("not.a.token"), None).await;
        assert_eq!((status, code(&body)), (401, "unauthorized"), "{path}");
        let (status, body) = call(&server, method, path, Some(&bob), None).await;
        assert_eq!((status, code(&body)), (403, "forbidden"), "{path}");
    }
    server.stop();
}

#[tokio::test]
async fn mutes_refuse_sends_until_lifted_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, Some(&config()));
    let (bob, admin) = (user("bob"), admin());
    let (status, mute) = call(
        &server,
        Method::POST,
        "/api/v1/admin/rooms/r/mutes",
        Some(&admin),
        Some(json!({"user": "bob", "seconds": 600})),
    )
    .await;
    assert_eq!((status, mute["user"].as_str()), (201, Some("bob")));
    let (status, body) = send_as(&server, "r", &bob, "hi").await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("muted until"));
    assert_eq!(send_as(&server, "elsewhere", &bob, "hi").await.0, 201);
    let (_, list) = call(
        &server,
        Method::GET,
        "/api/v1/admin/rooms/r/mutes",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(list["items"][0]["user"], "bob");
    let (status, _) = call(
        &server,
        Method::DELETE,
        "/api/v1/admin/rooms/r/mutes/bob",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(send_as(&server, "r", &bob, "back").await.0, 201);

    // Everywhere, and across a restart.
    let (status, _) = call(
        &server,
        Method::POST,
        "/api/v1/admin/mutes",
        Some(&admin),
        Some(json!({"user": "bob", "seconds": 600})),
    )
    .await;
    assert_eq!(status, 201);
    server.stop();
    let server = Server::start(&data, Some(&config()));
    let (status, body) = send_as(&server, "elsewhere", &bob, "hi").await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    let (_, list) = call(
        &server,
        Method::GET,
        "/api/v1/admin/mutes",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (status, _) = call(
        &server,
        Method::DELETE,
        "/api/v1/admin/mutes/bob",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(send_as(&server, "elsewhere", &bob, "hi").await.0, 201);
    let (status, _) = call(
        &server,
        Method::DELETE,
        "/api/v1/admin/mutes/bob",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 404);
    server.stop();
}

#[tokio::test]
async fn a_banned_address_may_neither_send_nor_watch() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(&config()));
    let admin = admin();
    // Bans apply to every address, loopback included (unlike rate limits).
    let (status, ban) = call(
        &server,
        Method::POST,
        "/api/v1/admin/bans",
        Some(&admin),
        Some(json!({"ip": "127.0.0.1"})),
    )
    .await;
    assert_eq!((status, &ban["until"]), (201, &Value::Null));
    let (status, body) = post(&server, "r", json!({"text": "hi"})).await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    let ws = tokio_tungstenite::connect_async(format!("ws://{}/ws?room=r", server.addr)).await;
    match ws {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!("want 403, got {other:?}"),
    }
    let (status, body) = get_json(&server, "/api/v1/rooms/r/stream").await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    let (_, list) = call(
        &server,
        Method::GET,
        "/api/v1/admin/bans",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(list["items"][0]["ip"], "127.0.0.1");

    let (status, _) = call(
        &server,
        Method::DELETE,
        "/api/v1/admin/bans/127.0.0.1",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(post(&server, "r", json!({"text": "hi"})).await.0, 201);
    watch(&server, "r", None).await;
    server.stop();
}

#[tokio::test]
async fn closed_rooms_and_slow_mode() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(&config()));
    let (bob, admin) = (user("bob"), admin());
    let patch = |body: Value| {
        let (server, admin) = (&server, &admin);
        async move {
            call(
                server,
                Method::PATCH,
                "/api/v1/admin/rooms/r",
                Some(admin),
                Some(body),
            )
            .await
        }
    };
    let (status, settings) = patch(json!({"closed": true})).await;
    assert_eq!(status, 200);
    assert_eq!(
        settings,
        json!({"room": "r", "closed": true, "slow_mode_s": 0, "premod": false, "version": 1})
    );
    let (status, body) = send_as(&server, "r", &bob, "hi").await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("room closed"));
    // Viewers may still watch a closed room.
    watch(&server, "r", None).await;
    patch(json!({"closed": false, "slow_mode_s": 60})).await;
    assert_eq!(send_as(&server, "r", &bob, "first").await.0, 201);
    let res = http()
        .post(format!("{}/api/v1/rooms/r/danmaku", server.url()))
        .bearer_auth(&bob)
        .json(&json!({"text": "second"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(code(&body), "rate_limited");
    // Admins are exempt from slow mode.
    assert_eq!(send_as(&server, "r", &admin, "a1").await.0, 201);
    assert_eq!(send_as(&server, "r", &admin, "a2").await.0, 201);
    let (_, got) = call(
        &server,
        Method::GET,
        "/api/v1/admin/rooms/r",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(
        (got["closed"].as_bool(), got["slow_mode_s"].as_u64()),
        (Some(false), Some(60))
    );
    server.stop();
}

/// A server on `data` whose room `wall` is pre-moderated by `admin`.
async fn premoderated_wall(data: &std::path::Path, admin: &str) -> Server {
    let server = Server::start(data, Some(&config()));
    let (status, _) = call(
        &server,
        Method::PATCH,
        "/api/v1/admin/rooms/wall",
        Some(admin),
        Some(json!({"premod": true})),
    )
    .await;
    assert_eq!(status, 200);
    server
}

/// A GET as the token's user: the status and the JSON answer.
pub(crate) async fn get_as(server: &Server, token: &str, path: &str) -> (u16, Value) {
    call(server, Method::GET, path, Some(token), None).await
}

/// The actions of an audit log page, newest first.
fn actions(log: &Value) -> Vec<&str> {
    let items = log["items"].as_array().unwrap();
    items
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn premoderation_holds_sends_until_approved() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (bob, admin) = (user("bob"), admin());
    let server = premoderated_wall(&data, &admin).await;

    let (status, held) = send_as(&server, "wall", &bob, "please show me").await;
    assert_eq!(status, 202);
    let first = held["held"].as_u64().unwrap();
    // Over a WebSocket, a held send is answered with `held`, not `ack`.
    let (mut sender, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?room=wall&token={bob}", server.addr))
            .await
            .unwrap();
    next_of(&mut sender, "hello").await;
    send_ws(
        &mut sender,
        json!({"type": "send", "ref": 7, "text": "spam"}),
    )
    .await;
    let answer = next_of(&mut sender, "held").await;
    assert_eq!(answer["ref"], 7);
    let second = answer["held"].as_u64().unwrap();
    drop(sender);

    // Held sends and the room's settings survive a restart.
    server.stop();
    let server = Server::start(&data, Some(&config()));
    let (mut viewer, _) = watch(&server, "wall", None).await;
    let (_, list) = call(
        &server,
        Method::GET,
        "/api/v1/admin/rooms/wall/held",
        Some(&admin),
        None,
    )
    .await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(
        (items[0]["user"].as_str(), items[0]["text"].as_str()),
        (Some("bob"), Some("please show me"))
    );
    let (_, history) = get_json(&server, "/api/v1/rooms/wall/danmaku").await;
    assert!(
        history["items"].as_array().unwrap().is_empty(),
        "held sends are not stored"
    );

    let path = format!("/api/v1/admin/rooms/wall/held/{first}/approve");
    let (status, stored) = call(&server, Method::POST, &path, Some(&admin), None).await;
    assert_eq!(
        (status, stored["user"].as_str(), stored["id"].as_u64()),
        (201, Some("bob"), Some(1))
    );
    let path = format!("/api/v1/admin/rooms/wall/held/{second}/reject");
    assert_eq!(
        call(&server, Method::POST, &path, Some(&admin), None)
            .await
            .0,
        204
    );
    assert_eq!(
        call(&server, Method::POST, &path, Some(&admin), None)
            .await
            .0,
        404
    );
    // Admins are not held; the viewer gets the approved send, then this,
    // and never the rejected one.
    assert_eq!(
        send_as(&server, "wall", &admin, "from the stage").await.0,
        201
    );
    let got = collect_danmaku(&mut viewer, 2).await;
    let texts: Vec<&str> = got.iter().map(|d| d["text"].as_str().unwrap()).collect();
    assert_eq!(texts, vec!["please show me", "from the stage"]);

    let (_, log) = call(
        &server,
        Method::GET,
        "/api/v1/admin/audit?limit=3",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(actions(&log), vec!["reject", "approve", "room"]);
    let before = log["items"][1]["id"].as_u64().unwrap();
    let (_, older) = call(
        &server,
        Method::GET,
        &format!("/api/v1/admin/audit?before={before}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(older["items"][0]["action"], "room");
    assert_eq!(older["items"][0]["detail"], json!({"premod": true}));
    server.stop();
}

/// Runs `sql` on a server's database over a connection of its own.
fn sql(data: &std::path::Path, sql: &str) {
    rusqlite::Connection::open(data.join("danmaku.sqlite3"))
        .unwrap()
        .execute_batch(sql)
        .unwrap();
}

#[tokio::test]
async fn an_approval_stores_the_send_once_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (bob, admin) = (user("bob"), admin());
    let server = premoderated_wall(&data, &admin).await;
    let (_, held) = send_as(&server, "wall", &bob, "once").await;
    let hid = held["held"].as_u64().unwrap();
    let (mut viewer, _) = watch(&server, "wall", None).await;
    let approve = format!("/api/v1/admin/rooms/wall/held/{hid}/approve");
    let list = || get_as(&server, &admin, "/api/v1/admin/rooms/wall/held");

    // The danmaku insert fails inside the approving transaction: nothing
    // is stored, and the send is still held.
    sql(
        &data,
        "CREATE TRIGGER fail BEFORE INSERT ON danmaku \
         BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
    );
    let (status, body) = call(&server, Method::POST, &approve, Some(&admin), None).await;
    assert_eq!((status, code(&body)), (500, "internal"));
    assert_eq!(list().await.1["items"][0]["held"].as_u64(), Some(hid));
    sql(&data, "DROP TRIGGER fail;");

    // Two admins approve at once: one stores it, the other is told it is gone.
    let (a, b) = tokio::join!(
        call(&server, Method::POST, &approve, Some(&admin), None),
        call(&server, Method::POST, &approve, Some(&admin), None),
    );
    let mut answers = [(a.0, code(&a.1).to_owned()), (b.0, code(&b.1).to_owned())];
    answers.sort();
    assert_eq!(answers, [(201, String::new()), (404, "not_found".into())]);
    let got = collect_danmaku(&mut viewer, 1).await;
    assert_eq!(
        (ids(&got), got[0]["text"].as_str()),
        (vec![1], Some("once"))
    );

    // After a restart: stored once, no longer held, one approval audited.
    server.stop();
    let server = Server::start(&data, Some(&config()));
    let list = get_as(&server, &admin, "/api/v1/admin/rooms/wall/held");
    assert_eq!(list.await.1["items"], json!([]));
    let (_, history) = get_json(&server, "/api/v1/rooms/wall/danmaku").await;
    assert_eq!(ids(history["items"].as_array().unwrap()), vec![1]);
    let (_, log) = get_as(&server, &admin, "/api/v1/admin/audit").await;
    assert_eq!(actions(&log), vec!["approve", "room"]);
    assert_eq!(log["items"][0]["detail"], json!({"id": 1, "user": "bob"}));
    server.stop();
}

#[tokio::test]
async fn the_admin_cli_moderates() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cli.toml");
    std::fs::write(&cfg, config()).unwrap();
    let server = Server::start(&dir.path().join("data"), Some(&config()));
    let minted = run_cli(&[
        "token",
        "--user",
        "ops",
        "--role",
        "admin",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(minted.status.success());
    let admin = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let url = server.url();
    let cli = |args: &[&str]| {
        let mut all = vec!["admin", "--url", &url, "--token", &admin];
        all.extend_from_slice(args);
        run_cli_json(&all)
    };
    assert_eq!(send_as(&server, "r", &user("bob"), "hi").await.0, 201);
    assert_eq!(cli(&["recall", "r", "1"]), json!({"ok": true}));
    assert_eq!(cli(&["mute", "--room", "r", "bob", "60"])["user"], "bob");
    assert_eq!(cli(&["mutes", "--room", "r"])["items"][0]["user"], "bob");
    assert_eq!(cli(&["unmute", "--room", "r", "bob"]), json!({"ok": true}));
    assert_eq!(cli(&["ban", "192.0.2.7", "60"])["ip"], "192.0.2.7");
    assert_eq!(cli(&["unban", "192.0.2.7"]), json!({"ok": true}));
    let room = cli(&["room", "r", "--close", "--slow", "5", "--premod", "on"]);
    assert_eq!(
        room,
        json!({"room": "r", "closed": true, "slow_mode_s": 5, "premod": true, "version": 1})
    );
    assert_eq!(cli(&["room", "r"])["closed"], true);
    assert_eq!(cli(&["held", "r"])["items"], json!([]));
    let audit = cli(&["audit", "--limit", "1"]);
    assert_eq!(audit["items"][0]["action"], "room");
    // A refusal is an error with the server's code.
    let out = run_cli(&["admin", "--url", &url, "--token", &user("bob"), "bans"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
    server.stop();
}
