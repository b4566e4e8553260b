//! Joining mid-stream: a WebSocket viewer that joins without `since` is
//! told the room's newest id in `hello.last_id`, and must then receive
//! exactly the danmaku after it, however busy the room is at the moment of
//! the join.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::server::*;

const ROOMS: usize = 10;
const SENDERS: usize = 8;
const VIEWERS: usize = 3000;
/// Viewers connected at once: each holds a socket in this process and in
/// the server, well under the 20,000 open files a process may have.
const AT_ONCE: usize = 150;

/// What one viewer saw.
struct Seen {
    /// Danmaku received.
    danmaku: u64,
    /// The first contract breach, described.
    wrong: Option<String>,
}

/// Joins `room` without `since`, reads for `stay`, and checks every
/// danmaku against the contract: ids strictly increasing and contiguous
/// from `hello.last_id + 1`, except where a `lagged` says how many were
/// skipped.
async fn view(addr: &str, room: &str, stay: Duration) -> Seen {
    let url = format!("ws://{addr}/ws?room={room}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("ws connect");
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    let last_id = hello["last_id"].as_u64().expect("hello.last_id");
    let mut seen = Seen {
        danmaku: 0,
        wrong: None,
    };
    let mut expected = last_id + 1;
    let until = tokio::time::Instant::now() + stay;
    while let Ok(msg) = tokio::time::timeout_at(until, ws.next()).await {
        let text = match msg.expect("connection ended").expect("websocket error") {
            Message::Text(t) => t,
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        match v["type"].as_str() {
            Some("danmaku") => {
                for item in v["items"].as_array().unwrap() {
                    let id = item["id"].as_u64().unwrap();
                    if id != expected && seen.wrong.is_none() {
                        seen.wrong = Some(format!(
                            "room {room}: hello.last_id {last_id}, expected id {expected}, got {id} \
                             (after {} danmaku)",
                            seen.danmaku
                        ));
                    }
                    expected = expected.max(id + 1);
                    seen.danmaku += 1;
                }
            }
            Some("lagged") => expected += v["dropped"].as_u64().unwrap(),
            _ => {}
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_viewers_joining_a_send_storm_get_exactly_the_ids_after_hello() {
    let dir = tempfile::tempdir().unwrap();
    // Loopback is exempt from the send limits, so the storm is not refused.
    // `writes_per_s` gives these rooms of a dozen viewers the coalescing
    // window of a room of a thousand (10 ms): danmaku then wait in the room
    // before their frame exists, which is the moment a join can fall into.
    let config = format!("{EXEMPT_LOOPBACK}[fanout]\nwrites_per_s = 1000\n");
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let url = server.url();
    let started = Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (url, stop, sent) = (url.clone(), stop.clone(), sent.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut i = s;
                while !stop.load(Ordering::Relaxed) {
                    let res = client
                        .post(format!("{url}/api/v1/rooms/storm{}/danmaku", i % ROOMS))
                        .json(&json!({"text": format!("s{s}-{i}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 201);
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();

    // Viewers join one after another while the storm runs, each staying a
    // different while (60 to 340 ms), so joins land at every point of a
    // room's coalescing window.
    let slots = Arc::new(Semaphore::new(AT_ONCE));
    let mut viewers = Vec::with_capacity(VIEWERS);
    for n in 0..VIEWERS {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let addr = server.addr.clone();
        let stay = Duration::from_millis(60 + (n as u64 * 37) % 280);
        viewers.push(tokio::spawn(async move {
            let seen = view(&addr, &format!("storm{}", n % ROOMS), stay).await;
            drop(permit);
            seen
        }));
    }
    let mut wrong = Vec::new();
    let (mut danmaku, mut fed) = (0, 0);
    for v in viewers {
        let seen = v.await.unwrap();
        danmaku += seen.danmaku;
        fed += usize::from(seen.danmaku > 0);
        wrong.extend(seen.wrong);
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let took = started.elapsed();
    eprintln!(
        "{VIEWERS} viewers over {ROOMS} rooms in {took:?}: {} sent, {danmaku} received, \
         {fed} viewers fed, {} broke the contract",
        sent.load(Ordering::Relaxed),
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "{} of {VIEWERS} viewers broke the contract, e.g.:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );
    // The storm really ran under the joins: most viewers saw danmaku.
    assert!(
        fed > VIEWERS * 3 / 4,
        "only {fed} of {VIEWERS} viewers got a danmaku"
    );
    server.stop();
}
