//! Clients behind a reverse proxy: from a peer in
//! `connection.trusted_proxies`, the client is the one its `X-Forwarded-For`
//! or `Forwarded` header names, for every per-address rule; from anyone
//! else those headers change nothing.
//!
//! The "proxy" is this test, connecting from 127.0.0.1 (trusted) and
//! writing the headers a proxy would; the untrusted peer binds 127.0.0.2.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::moderation::{self, admin};
use crate::server::*;

/// The proxy the tests play, and limits that show whose bucket a send hit.
fn config(extra: &str) -> String {
    format!(
        "[connection]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{extra}\n\
         [limits]\nsend_burst = 1\nsend_per_second = 0.001\n\
         ip_send_burst = 1\nip_send_per_second = 0.001\n{}",
        moderation::config()
    )
}

/// A client whose connections come from `source`, one per request.
fn client_from(source: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(source))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// POSTs a danmaku to room `r` with one forwarding header; the status and
/// the JSON answer.
async fn post_as(
    client: &reqwest::Client,
    server: &Server,
    header: (&str, &str),
    text: &str,
) -> (u16, Value) {
    let res = client
        .post(format!("{}/api/v1/rooms/r/danmaku", server.url()))
        .header(header.0, header.1)
        .json(&json!({ "text": text }))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

/// The forwarding header of proxied client `i`: half `X-Forwarded-For`
/// (some with a forged hop the client wrote in front), half `Forwarded`
/// with IPv6 addresses, each in its own /64.
fn forwarded(i: usize) -> (&'static str, String) {
    match i % 3 {
        0 => ("x-forwarded-for", format!("198.51.100.{}", i + 1)),
        1 => ("x-forwarded-for", format!("6.6.6.6, 198.51.100.{}", i + 1)),
        _ => (
            "forwarded",
            format!("for=\"[2001:db8:{i:x}::1]:4711\";proto=https"),
        ),
    }
}

#[tokio::test]
async fn fifty_clients_behind_a_trusted_proxy_get_their_own_ids_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(&config("")));
    let proxy = client_from([127, 0, 0, 1]);
    let mut users = HashSet::new();
    for i in 0..50 {
        let (name, value) = forwarded(i);
        let (status, body) = post_as(&proxy, &server, (name, &value), &format!("first {i}")).await;
        assert_eq!(status, 201, "client {i}'s first send: {body}");
        users.insert(body["user"].as_str().unwrap().to_owned());
    }
    assert_eq!(users.len(), 50, "one guest id per forwarded client");
    for i in 0..50 {
        let (name, value) = forwarded(i);
        let (status, body) = post_as(&proxy, &server, (name, &value), &format!("again {i}")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (429, Some("rate_limited")),
            "client {i}'s second send"
        );
    }

    // The same headers from a peer that is not trusted: one client, one
    // bucket, whatever the headers say.
    let untrusted = client_from([127, 0, 0, 2]);
    let mut accepted = Vec::new();
    for i in 0..50 {
        let (name, value) = forwarded(i);
        let (status, body) = post_as(&untrusted, &server, (name, &value), &format!("u {i}")).await;
        match status {
            201 => accepted.push(body["user"].as_str().unwrap().to_owned()),
            429 => {}
            other => panic!("untrusted send {i}: {other} {body}"),
        }
    }
    assert_eq!(
        accepted.len(),
        1,
        "the untrusted peer's sends share a bucket"
    );
    assert!(!users.contains(&accepted[0]), "and its own guest id");

    // History says the same: 51 danmaku from 51 senders.
    let (_, history) = get_json(&server, "/api/v1/rooms/r/danmaku").await;
    let items = history["items"].as_array().unwrap();
    let senders: HashSet<_> = items.iter().map(|d| d["user"].as_str().unwrap()).collect();
    assert_eq!((items.len(), senders.len()), (51, 51), "{history}");
    server.stop();
}

/// Opens a WebSocket to room `r` through the "proxy" for `client`: the
/// stream, or the HTTP status it was refused with.
async fn watch_as(server: &Server, client: &str) -> Result<Ws, u16> {
    let mut req = format!("ws://{}/ws?room=r", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", client.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
    }
}

/// Opens an SSE stream of room `r` through the "proxy" for `client`.
async fn sse_as(server: &Server, client: &str) -> reqwest::Response {
    client_from([127, 0, 0, 1])
        .get(format!("{}/api/v1/rooms/r/stream", server.url()))
        .header("x-forwarded-for", client)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_ban_of_a_forwarded_address_blocks_that_client_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(&config("")));
    let proxy = client_from([127, 0, 0, 1]);
    let res = proxy
        .post(format!("{}/api/v1/admin/bans", server.url()))
        .header("x-forwarded-for", "203.0.113.50")
        .bearer_auth(admin())
        .json(&json!({ "ip": "198.51.100.7" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let banned = ("x-forwarded-for", "198.51.100.7");
    let (status, body) = post_as(&proxy, &server, banned, "hi").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(watch_as(&server, "198.51.100.7").await.err(), Some(403));
    // Its neighbour behind the same proxy, and the proxy itself, are not.
    let other = ("x-forwarded-for", "198.51.100.8");
    assert_eq!(post_as(&proxy, &server, other, "hi").await.0, 201);
    assert_eq!(post(&server, "r", json!({"text": "direct"})).await.0, 201);
    server.stop();
}

#[tokio::test]
async fn the_per_address_connection_cap_binds_each_forwarded_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        Some(&config("max_connections_per_ip = 2")),
    );
    let a1 = watch_as(&server, "198.51.100.1").await.unwrap();
    let _a2 = watch_as(&server, "198.51.100.1").await.unwrap();
    // The forwarded address is at its cap, on any route...
    assert_eq!(watch_as(&server, "198.51.100.1").await.err(), Some(503));
    let res = sse_as(&server, "198.51.100.1").await;
    assert_eq!(res.status().as_u16(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections");
    // ...while the proxy's own address, holding all of them, is not capped:
    // other clients still come through it.
    let _b1 = watch_as(&server, "198.51.100.2").await.unwrap();
    let _b2 = watch_as(&server, "198.51.100.2").await.unwrap();
    // A closed stream gives its client's place back.
    drop(a1);
    let started = std::time::Instant::now();
    loop {
        match watch_as(&server, "198.51.100.1").await {
            Ok(_) => break,
            Err(status) => assert_eq!(status, 503),
        }
        assert!(
            started.elapsed() < WAIT,
            "the closed WebSocket's place never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // An SSE stream holds its client's place for as long as it is open,
    // not only while its request is answered.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let res = sse_as(&server, "198.51.100.3").await;
        assert_eq!(res.status().as_u16(), 200);
        streams.push(res);
    }
    assert_eq!(watch_as(&server, "198.51.100.3").await.err(), Some(503));
    drop(streams);
    server.stop();
}
