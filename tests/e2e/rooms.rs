//! Room names every client can reach, and the paginated rooms list.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::moderation::{self, admin};
use crate::server::*;

/// One request written byte for byte, so that no client library resolves
/// dot segments or re-encodes the path first (reqwest, like browsers,
/// turns `/rooms/%2E%2E/danmaku` into `/danmaku`). The status and the JSON
/// body (`null` if none).
async fn raw(server: &Server, method: &str, target: &str, extra: &str, body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(&server.addr).await.unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("no answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn rooms_of_only_dots_are_invalid_on_every_route_however_encoded() {
    let dir = tempfile::tempdir().unwrap();
    let config = moderation::config();
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let auth = format!("Authorization: Bearer {}\r\n", admin());
    let send = r#"{"text":"x"}"#;
    // Every route that takes a room, as (method, path with {r}, body).
    let routes = [
        ("GET", "/api/v1/rooms/{r}", ""),
        ("GET", "/api/v1/rooms/{r}/danmaku", ""),
        ("POST", "/api/v1/rooms/{r}/danmaku", send),
        ("GET", "/api/v1/rooms/{r}/stream", ""),
        ("DELETE", "/api/v1/rooms/{r}/danmaku/1", ""),
        ("GET", "/api/v1/admin/rooms/{r}", ""),
        ("PATCH", "/api/v1/admin/rooms/{r}", r#"{"closed":true}"#),
        ("GET", "/api/v1/admin/rooms/{r}/mutes", ""),
        (
            "POST",
            "/api/v1/admin/rooms/{r}/mutes",
            r#"{"user":"u","seconds":60}"#,
        ),
        ("DELETE", "/api/v1/admin/rooms/{r}/mutes/u", ""),
        ("GET", "/api/v1/admin/rooms/{r}/held", ""),
        ("POST", "/api/v1/admin/rooms/{r}/held/1/approve", ""),
        ("POST", "/api/v1/admin/rooms/{r}/held/1/reject", ""),
    ];
    // Dots, plain and encoded; then a slash, a second level of encoding,
    // a space and bytes that are not UTF-8.
    let names = [
        ".",
        "..",
        "...",
        "%2E",
        "%2e",
        "%2E%2E",
        "%2e%2e",
        ".%2E",
        "%2E.",
        "%2e%2E%2e",
        "a%2Fb",
        "%252E%252E",
        "a%20b",
        "%FF",
    ];
    for (method, path, body) in routes {
        for name in names {
            let target = path.replace("{r}", name);
            let (status, answer) = raw(&server, method, &target, &auth, body).await;
            assert_eq!(
                (status, answer["error"]["code"].as_str()),
                (400, Some("invalid_room")),
                "{method} {target}: {answer}"
            );
        }
    }
    // The WebSocket's room comes in the query, decoded once the same way.
    for room in ["..", "%2E", "%2e%2e", "a%2Fb"] {
        let status = ws_status(&server, &format!("room={room}"), &[]).await;
        assert_eq!(status, 400, "ws room={room}");
    }
    // A room with dots and something else is an ordinary room, and an
    // encoded letter is the letter.
    let (status, stored) = raw(&server, "POST", "/api/v1/rooms/..a/danmaku", "", send).await;
    assert_eq!(status, 201, "{stored}");
    let (status, history) = raw(&server, "GET", "/api/v1/rooms/%2E.%61/danmaku", "", "").await;
    assert_eq!((status, history["room"].as_str()), (200, Some("..a")));
    assert_eq!(history["items"].as_array().unwrap().len(), 1);
    server.stop();
}

/// The list of every room, page by page, following `next_cursor`.
async fn all_pages(server: &Server, query: &str, pause: Duration) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => format!("/api/v1/rooms?{query}"),
            Some(c) => format!("/api/v1/rooms?{query}&cursor={c}"),
        };
        let (status, page) = get_json(server, &path).await;
        assert_eq!(status, 200, "{page}");
        let names: Vec<String> = page["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["room"].as_str().unwrap().to_owned())
            .collect();
        pages.push(names);
        match &page["next_cursor"] {
            Value::Null => return pages,
            Value::String(c) => cursor = Some(c.clone()),
            other => panic!("next_cursor is {other}"),
        }
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test]
async fn the_rooms_list_pages_by_name_listing_each_room_once_while_rooms_come_and_go() {
    let dir = tempfile::tempdir().unwrap();
    // Rooms without viewers retire as soon as they are idle, so the rooms
    // sent to below come and go while the list is paged.
    let config = format!(
        "{EXEMPT_LOOPBACK}[fanout]\nroom_idle_s = 0\n[connection]\nmax_connections_per_ip = 1000\n"
    );
    let server = Server::start(&dir.path().join("data"), Some(&config));
    // 250 rooms that stay: each has a viewer.
    let steady: Vec<String> = (0..250).map(|i| format!("room-{i:03}")).collect();
    let mut viewers = Vec::new();
    for room in &steady {
        viewers.push(watch(&server, room, None).await.0);
    }
    // One room busier than the rest, for sort=online.
    let mut busy = Vec::new();
    for _ in 0..3 {
        busy.push(watch(&server, "room-200", None).await.0);
    }

    let pages = all_pages(&server, "limit=100", Duration::ZERO).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [100, 100, 50]
    );
    assert_eq!(pages.concat(), steady);

    // Now page slowly while other rooms, named between the steady ones,
    // are made by sends and retire again.
    let churn = {
        let url = server.url();
        tokio::spawn(async move {
            let client = http();
            let mut made = 0u32;
            let until = tokio::time::Instant::now() + Duration::from_secs(4);
            while tokio::time::Instant::now() < until {
                let room = format!("room-{:03}-churn-{made}", made % 250);
                let res = client
                    .post(format!("{url}/api/v1/rooms/{room}/danmaku"))
                    .json(&json!({"text": "passing through"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
                made += 7;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            made / 7
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pages = all_pages(&server, "limit=30", Duration::from_millis(300)).await;
    let made = churn.await.unwrap();
    let listed = pages.concat();
    let sorted: Vec<&String> = listed.iter().collect::<BTreeSet<_>>().into_iter().collect();
    assert_eq!(
        listed.iter().collect::<Vec<_>>(),
        sorted,
        "pages are in name order with no room twice"
    );
    let steady_listed: Vec<&String> = listed.iter().filter(|r| !r.contains("churn")).collect();
    assert_eq!(
        steady_listed,
        steady.iter().collect::<Vec<_>>(),
        "every steady room exactly once"
    );
    let churn_listed = listed.len() - steady.len();
    assert!(made > 20, "the churn made only {made} rooms");
    assert!(
        churn_listed > 0 && churn_listed < made as usize,
        "{churn_listed} of {made} passing rooms were listed: they should come and go"
    );

    // Busiest first; offsets page on in that order. The passing rooms
    // retire first, so that the count holds still.
    wait_metric(&server, "danmaku_rooms", 250.0).await;
    let (_, top) = get_json(&server, "/api/v1/rooms?sort=online&limit=2").await;
    assert_eq!(top["rooms"][0]["room"], "room-200", "{top}");
    assert_eq!(top["rooms"][0]["online"], 4);
    assert_eq!(top["rooms"][1]["room"], "room-000", "then by name: {top}");
    let online_pages = all_pages(&server, "sort=online&limit=100", Duration::ZERO).await;
    let online: Vec<String> = online_pages.concat();
    assert_eq!(online.len(), 250, "{online:?}");
    assert_eq!(online[0], "room-200");
    assert_eq!(
        online.iter().collect::<BTreeSet<_>>().len(),
        250,
        "no room twice while nothing changes"
    );
    drop((viewers, busy));
    server.stop();
}

#[tokio::test]
async fn the_rooms_list_refuses_bad_limits_and_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let (_viewer, _) = watch(&server, "a", None).await;
    let (status, page) = get_json(&server, "/api/v1/rooms").await;
    assert_eq!(status, 200);
    assert_eq!(page["rooms"][0]["room"], "a");
    assert_eq!(page["next_cursor"], Value::Null);
    let (_, by_name) = get_json(&server, "/api/v1/rooms?limit=1000").await;
    assert_eq!(by_name["rooms"].as_array().unwrap().len(), 1);
    let name_cursor = {
        let (_, b) = watch(&server, "b", None).await;
        let (_, page) = get_json(&server, "/api/v1/rooms?limit=1").await;
        drop(b);
        page["next_cursor"].as_str().unwrap().to_owned()
    };
    for query in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=junk",
        "limit=18446744073709551616",
        "cursor=",
        "cursor=not-a-cursor!",
        "cursor=bmFtZTouLg",
        "sort=loudest",
        "page=2",
        &format!("sort=online&cursor={name_cursor}"),
    ] {
        let (status, answer) = get_json(&server, &format!("/api/v1/rooms?{query}")).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some("invalid_query")),
            "{query}: {answer}"
        );
    }
    server.stop();
}
