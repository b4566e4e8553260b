//! SIGKILL: a crash loses nothing acknowledged, ids stay contiguous and
//! continue after a restart, and viewers that resume (WebSocket `since=`,
//! SSE `Last-Event-ID`) across crashes get every id exactly once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::server::*;

/// These tests send fast from loopback: exempt it from the limits.
const CONFIG: &str = EXEMPT_LOOPBACK;

/// A room's whole history, by pages: id → text.
async fn stored(url: &str, room: &str) -> BTreeMap<u64, String> {
    let mut all = BTreeMap::new();
    loop {
        let after = all.keys().next_back().copied().unwrap_or(0);
        let page: Value = http()
            .get(format!(
                "{url}/api/v1/rooms/{room}/danmaku?after={after}&limit=1000"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = page["items"].as_array().unwrap();
        for d in items {
            all.insert(
                d["id"].as_u64().unwrap(),
                d["text"].as_str().unwrap().into(),
            );
        }
        if items.len() < 1000 {
            return all;
        }
    }
}

/// POSTs `text` to `room` on `client`: the stored id if it was acknowledged
/// (201); `None` if the server could not be reached or did not answer.
/// Any other answer fails the test.
async fn try_send(client: &reqwest::Client, url: &str, room: &str, text: &str) -> Option<u64> {
    let res = client
        .post(format!("{url}/api/v1/rooms/{room}/danmaku"))
        .json(&json!({ "text": text }))
        .send()
        .await
        .ok()?;
    let status = res.status().as_u16();
    let body: Value = res.json().await.ok()?;
    assert_eq!(status, 201, "{body}");
    Some(body["id"].as_u64().unwrap())
}

#[tokio::test]
async fn sigkill_under_32_senders_three_times_loses_nothing_acknowledged() {
    let _turn = take_turn().await;
    const SENDERS: usize = 32;
    const ROOMS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Every acknowledged send of every round: (room, id) → text.
    let mut acked: BTreeMap<(String, u64), String> = BTreeMap::new();
    let mut server = Server::start(&data, Some(CONFIG));
    for round in 0..3 {
        let url = server.url();
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let url = url.clone();
                tokio::spawn(async move {
                    // Keep-alive connections: as many sends in flight as
                    // senders, all the time.
                    let client = reqwest::Client::new();
                    let room = format!("k{}", s % ROOMS);
                    let mut mine = Vec::new();
                    for n in 0.. {
                        let text = format!("r{round}-s{s}-{n}");
                        match try_send(&client, &url, &room, &text).await {
                            Some(id) => mine.push(((room.clone(), id), text)),
                            None => break,
                        }
                    }
                    mine
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.kill();
        let before = acked.len();
        for s in senders {
            for (key, text) in s.await.unwrap() {
                assert!(acked.insert(key.clone(), text).is_none(), "{key:?} twice");
            }
        }
        let this_round = acked.len() - before;
        assert!(this_round > 100, "round {round}: only {this_round} sends");

        server = Server::start(&data, Some(CONFIG));
        let url = server.url();
        for k in 0..ROOMS {
            let room = format!("k{k}");
            let history = stored(&url, &room).await;
            let n = history.len() as u64;
            // Contiguous: 1..=N, no hole (nothing is recalled here). Sends
            // that were in flight at the kill may be stored, unacknowledged.
            assert_eq!(history.keys().next_back().copied().unwrap_or(0), n);
            for ((r, id), text) in acked.range((room.clone(), 0)..=(room.clone(), u64::MAX)) {
                assert_eq!(history.get(id), Some(text), "{r} #{id} lost");
            }
            let text = format!("after round {round}");
            let id = try_send(&reqwest::Client::new(), &url, &room, &text).await;
            assert_eq!(id, Some(n + 1), "{room}: the next id");
            acked.insert((room, n + 1), text);
        }
        eprintln!(
            "round {round}: {this_round} acknowledged before SIGKILL, {} in all, 0 lost",
            acked.len()
        );
    }
    server.stop();
}

/// What a resuming viewer saw: every danmaku id, in arrival order.
type Seen = Arc<Mutex<Vec<u64>>>;

/// The server's address of the moment, which changes at each restart.
type Addr = Arc<Mutex<String>>;

/// A WebSocket viewer of `room` that reconnects with `since` = the last id
/// it saw whenever its connection ends, until it has seen `target`.
async fn ws_viewer(addr: Addr, room: &str, seen: Seen, target: Arc<AtomicU64>) {
    let mut last = 0;
    while last < target.load(Ordering::SeqCst) {
        let url = format!("ws://{}/ws?room={room}&since={last}", addr.lock().unwrap());
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        while last < target.load(Ordering::SeqCst) {
            let frame = match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<Value>(&t).unwrap(),
                Ok(Some(Ok(_))) => continue,
                // Closed or reset: the server is gone; resume on the next.
                Ok(_) => break,
            };
            assert_ne!(frame["type"], "lagged", "{frame}");
            if frame["type"] == "danmaku" {
                let got = ids(frame["items"].as_array().unwrap());
                last = *got.last().unwrap();
                seen.lock().unwrap().extend(got);
            }
        }
    }
}

/// An SSE viewer of `room` that reconnects with `Last-Event-ID` = the last
/// id it saw whenever its stream ends, until it has seen `target`.
async fn sse_viewer(addr: Addr, room: &str, seen: Seen, target: Arc<AtomicU64>) {
    let mut last = 0;
    while last < target.load(Ordering::SeqCst) {
        let url = format!("http://{}/api/v1/rooms/{room}/stream", addr.lock().unwrap());
        let res = http()
            .get(url)
            .header("Last-Event-ID", last.to_string())
            .send()
            .await;
        let Ok(mut res) = res else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut buf = String::new();
        while last < target.load(Ordering::SeqCst) {
            let chunk = match tokio::time::timeout(Duration::from_millis(200), res.chunk()).await {
                Err(_) => continue,
                Ok(Ok(Some(chunk))) => chunk,
                Ok(_) => break,
            };
            buf.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                assert!(!event.contains("event: lagged"), "{event}");
                if event.contains("event: danmaku\n") {
                    let id = event.lines().find_map(|l| l.strip_prefix("id: ")).unwrap();
                    last = id.parse().unwrap();
                    seen.lock().unwrap().push(last);
                }
            }
        }
    }
}

#[tokio::test]
async fn resuming_viewers_get_every_id_exactly_once_across_two_kills() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, Some(CONFIG));
    let addr: Addr = Arc::new(Mutex::new(server.addr.clone()));
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let (ws_seen, sse_seen): (Seen, Seen) = Default::default();
    let ws = tokio::spawn(ws_viewer(
        addr.clone(),
        "live",
        ws_seen.clone(),
        target.clone(),
    ));
    let sse = tokio::spawn(sse_viewer(
        addr.clone(),
        "live",
        sse_seen.clone(),
        target.clone(),
    ));
    // Two senders keep sending through both kills, to whichever server is
    // up; a send cut by a kill may or may not have been stored.
    let sending = Arc::new(AtomicBool::new(true));
    let senders: Vec<_> = (0..2)
        .map(|s| {
            let (addr, sending) = (addr.clone(), sending.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut acked = 0;
                for n in 0.. {
                    if !sending.load(Ordering::SeqCst) {
                        break;
                    }
                    let url = format!("http://{}", addr.lock().unwrap());
                    match try_send(&client, &url, "live", &format!("s{s}-{n}")).await {
                        Some(_) => acked += 1,
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                acked
            })
        })
        .collect();

    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        server.kill();
        server = Server::start(&data, Some(CONFIG));
        *addr.lock().unwrap() = server.addr.clone();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    sending.store(false, Ordering::SeqCst);
    let mut acked = 0;
    for s in senders {
        acked += s.await.unwrap();
    }
    let (_, room) = get_json(&server, "/api/v1/rooms/live").await;
    let last = room["last_id"].as_u64().unwrap();
    assert!(last >= acked, "{acked} acknowledged, last id {last}");
    assert_eq!(stored(&server.url(), "live").await.len() as u64, last);
    target.store(last, Ordering::SeqCst);
    let started = Instant::now();
    for viewer in [ws, sse] {
        tokio::time::timeout(WAIT, viewer)
            .await
            .expect("a viewer did not catch up")
            .unwrap();
    }
    let want: Vec<u64> = (1..=last).collect();
    assert_eq!(*ws_seen.lock().unwrap(), want, "WebSocket viewer");
    assert_eq!(*sse_seen.lock().unwrap(), want, "SSE viewer");
    eprintln!(
        "{acked} acknowledged, {last} stored, both viewers saw each once \
         (caught up {:?} after the last send)",
        started.elapsed()
    );
    server.stop();
}
