//! HTTP deadlines: a connection that waits for a request, dribbles its
//! headers or never finishes its body is closed, on every route, while
//! SSE streams and WebSockets live on and a normal sender is not slowed.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server::*;

/// What a stalled connection saw: everything the server sent, and how
/// long after the start its end (EOF or reset) came.
struct Ending {
    answer: String,
    after: Duration,
}

/// Reads until the server closes the connection (EOF or reset), failing
/// once `within` has passed since `started`.
async fn wait_closed(
    stream: &mut (impl AsyncRead + Unpin),
    started: Instant,
    within: Duration,
) -> Ending {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {within:?}; got {:?}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    Ending {
        answer: String::from_utf8_lossy(&answer).into_owned(),
        after: started.elapsed(),
    }
}

/// Sends `request` (nothing, if empty) on a new connection and waits for
/// the server to close it.
async fn stall(addr: &str, request: &str, within: Duration) -> Ending {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    stream.write_all(request.as_bytes()).await.unwrap();
    wait_closed(&mut stream, started, within).await
}

/// A request head on `path` announcing a body that will not all come.
fn head(method: &str, path: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n")
}

/// The slow bodies of the issue, on a send.
#[derive(Clone, Copy, Debug)]
enum SlowBody {
    /// `Content-Length: 4000` and no body.
    NoBody,
    /// `Transfer-Encoding: chunked` and no chunk.
    NoChunk,
    /// `Content-Length: 4000`, `first` bytes, then one byte per `every`.
    Trickle { first: usize, every: Duration },
}

/// Opens a send with a slow body, keeps it slow, and waits for the server
/// to close the connection.
async fn slow_body(addr: &str, kind: SlowBody, within: Duration) -> Ending {
    let framing = match kind {
        SlowBody::NoChunk => "Transfer-Encoding: chunked\r\n",
        _ => "Content-Length: 4000\r\n",
    };
    let path = "/api/v1/rooms/a/danmaku";
    let stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(head("POST", path, framing).as_bytes())
        .await
        .unwrap();
    let trickle = async {
        let SlowBody::Trickle { first, every } = kind else {
            return std::future::pending().await;
        };
        // A failed write means the server is gone: the read side sees it.
        let _ = write.write_all(&vec![b' '; first]).await;
        loop {
            tokio::time::sleep(every).await;
            let _ = write.write_all(b" ").await;
        }
    };
    tokio::select! {
        ending = wait_closed(&mut read, started, within) => ending,
        _ = trickle => unreachable!(),
    }
}

/// The `phase` count of `danmaku_http_timeouts_total`.
async fn cuts(server: &Server, phase: &str) -> f64 {
    let name = format!("danmaku_http_timeouts_total{{phase=\"{phase}\"}}");
    metric(server, &name).await.unwrap_or(0.0)
}

const SECRET: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test]
async fn a_body_that_does_not_come_is_answered_408_and_closed_on_every_route() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[auth]\nhs256_secret = \"{SECRET}\"\n[connection]\nbody_timeout_s = 2\nkeepalive_timeout_s = 30\n"
    );
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let admin = token(
        SECRET,
        json!({"sub": "mod", "role": "admin", "exp": now() + 3600}),
    );
    let auth = format!("Authorization: Bearer {admin}\r\nContent-Length: 4000\r\n");
    let admin_request = head("POST", "/api/v1/admin/mutes", &auth);
    let within = Duration::from_secs(6);
    let trickle = SlowBody::Trickle {
        first: 1,
        every: Duration::from_millis(300),
    };
    let (no_body, no_chunk, trickled, admin_route) = tokio::join!(
        slow_body(&server.addr, SlowBody::NoBody, within),
        slow_body(&server.addr, SlowBody::NoChunk, within),
        slow_body(&server.addr, trickle, within),
        stall(&server.addr, &admin_request, within),
    );
    for (what, ending) in [
        ("no body", no_body),
        ("no chunk", no_chunk),
        ("trickle", trickled),
        ("admin route", admin_route),
    ] {
        let a = &ending.answer;
        assert!(a.starts_with("HTTP/1.1 408 "), "{what}: {a}");
        assert!(a.contains("\"code\":\"request_timeout\""), "{what}: {a}");
        assert!(a.contains("connection: close"), "{what}: {a}");
        // body_timeout_s, not earlier, and closed right after the answer.
        let after = ending.after;
        assert!(after >= Duration::from_millis(1900), "{what}: {after:?}");
        assert!(after < Duration::from_secs(4), "{what}: {after:?}");
    }
    assert_eq!(cuts(&server, "body").await, 4.0);

    // A route that never reads its body answers and closes at once: the
    // unread body does not hold the connection.
    let get = head("GET", "/healthz", "Content-Length: 4000\r\n");
    let unauthorized = head("POST", "/api/v1/admin/mutes", "Content-Length: 4000\r\n");
    for request in [get, unauthorized] {
        let ending = stall(&server.addr, &request, within).await;
        assert!(ending.after < Duration::from_secs(1), "{:?}", ending.after);
        assert!(ending.answer.starts_with("HTTP/1.1 "), "{}", ending.answer);
    }
    server.stop();
}

#[tokio::test]
async fn a_body_below_the_minimum_rate_is_cut_after_the_grace() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let config = "[connection]\nbody_timeout_s = 60\nbody_min_rate_bytes_per_s = 1000\n";
    let server = Server::start(&dir.path().join("data"), Some(config));
    // 500 bytes at once buy 0.5 s past the 5 s grace; a byte per 100 ms
    // then buys 1 ms each, so the rate, not the 60 s total, cuts it.
    let trickle = SlowBody::Trickle {
        first: 500,
        every: Duration::from_millis(100),
    };
    let ending = slow_body(&server.addr, trickle, Duration::from_secs(15)).await;
    assert!(
        ending.answer.starts_with("HTTP/1.1 408 "),
        "{}",
        ending.answer
    );
    let after = ending.after;
    assert!(after >= Duration::from_millis(5400), "{after:?}");
    assert!(after < Duration::from_secs(9), "{after:?}");
    server.stop();
}

#[tokio::test]
async fn idle_connections_and_dribbled_headers_are_closed() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let config = "[connection]\nkeepalive_timeout_s = 1\nheader_timeout_s = 2\n";
    let server = Server::start(&dir.path().join("data"), Some(config));
    let within = Duration::from_secs(6);
    let (silent, after_request, partial_head) = tokio::join!(
        // Connects and sends nothing.
        stall(&server.addr, "", within),
        // One keep-alive request, then nothing.
        stall(
            &server.addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            within
        ),
        // Half a request head: the header deadline runs from its first byte.
        stall(&server.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n", within),
    );
    let secs = |e: &Ending| e.after.as_secs_f64();
    assert!((0.9..2.5).contains(&secs(&silent)), "{:?}", silent.after);
    assert!(
        after_request.answer.starts_with("HTTP/1.1 200 "),
        "{}",
        after_request.answer
    );
    assert!(
        (0.9..2.5).contains(&secs(&after_request)),
        "{:?}",
        after_request.after
    );
    assert!(
        (1.9..3.5).contains(&secs(&partial_head)),
        "{:?}",
        partial_head.after
    );
    assert_eq!(cuts(&server, "idle").await, 2.0);
    assert_eq!(cuts(&server, "head").await, 1.0);
    server.stop();
}

#[tokio::test]
async fn sse_streams_and_websockets_outlive_the_request_deadlines() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        "[connection]\nkeepalive_timeout_s = 1\nheader_timeout_s = 1\nbody_timeout_s = 1\n";
    let server = Server::start(&dir.path().join("data"), Some(config));
    let (mut ws, _) = watch(&server, "r", None).await;
    let mut sse = open_sse(&server, "r", None).await;
    // Well past every deadline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, sent) = post(&server, "r", json!({"text": "still here"})).await;
    assert_eq!(status, 201);
    let got = collect_danmaku(&mut ws, 1).await;
    assert_eq!(got[0]["id"], sent["id"]);
    let mut text = String::new();
    while !text.contains("still here") {
        let chunk = tokio::time::timeout(WAIT, sse.chunk())
            .await
            .expect("the SSE stream went quiet")
            .unwrap()
            .expect("the SSE stream ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    server.stop();
}

#[tokio::test]
async fn a_hundred_slow_bodies_are_closed_within_30_s_while_a_sender_keeps_up() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    // Default deadlines. Loopback is exempted explicitly so that the
    // sender is not rate-limited whatever the default.
    let config = EXEMPT_LOOPBACK;
    let server = Server::start(&dir.path().join("data"), Some(config));
    let within = Duration::from_secs(30);
    let kinds = [
        SlowBody::NoBody,
        SlowBody::NoChunk,
        SlowBody::Trickle {
            first: 1,
            every: Duration::from_secs(10),
        },
    ];
    // Tasks, so that they run (and time their ends) while the sender waits.
    let spawn_all =
        |n: usize, stall_one: &dyn Fn(String, usize) -> tokio::task::JoinHandle<Ending>| {
            futures_util::future::try_join_all((0..n).map(|i| stall_one(server.addr.clone(), i)))
        };
    let slow = spawn_all(100, &|addr, i| {
        tokio::spawn(async move { slow_body(&addr, kinds[i % 3], within).await })
    });
    // And keep-alive connections that make one request, then wait.
    let idle = spawn_all(10, &|addr, _| {
        tokio::spawn(async move {
            stall(&addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", within).await
        })
    });
    let stalled = tokio::spawn(async move {
        tokio::try_join!(slow, idle).expect("a stalled connection stayed open")
    });
    tokio::pin!(stalled);

    let sender = reqwest::Client::new();
    let url = format!("{}/api/v1/rooms/calm/danmaku", server.url());
    let mut latencies = Vec::new();
    let (slow, idle) = loop {
        let started = Instant::now();
        let res = sender
            .post(&url)
            .json(&json!({"text": format!("n{}", latencies.len())}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        latencies.push(started.elapsed());
        tokio::select! {
            done = &mut stalled => break done.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    };
    // Every stalled connection was closed within the 30 s (wait_closed
    // fails otherwise) and, being a body, got its 408.
    for ending in &slow {
        assert!(
            ending.answer.starts_with("HTTP/1.1 408 "),
            "{}",
            ending.answer
        );
    }
    let slowest = slow.iter().chain(&idle).map(|e| e.after).max().unwrap();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "110 stalled connections closed, the last after {slowest:?}; {} sends, p99 {p99:?}",
        latencies.len()
    );
    assert!(p99 < Duration::from_millis(100), "p99 send latency {p99:?}");
    assert_eq!(cuts(&server, "body").await, 100.0);
    assert_eq!(cuts(&server, "idle").await, 10.0);
    server.stop();
}

/// hyper lets go of a response body once its last chunk is queued, not
/// once it is sent: a big answer read slowly but steadily must not meet the
/// keep-alive deadline halfway (the idle time counts from the last byte
/// written).
#[tokio::test]
async fn a_big_answer_read_slowly_is_not_cut_by_the_keepalive_deadline() {
    let _turn = take_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[connection]\nkeepalive_timeout_s = 1\n{EXEMPT_LOOPBACK}");
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let text = "弹".repeat(100);
    let client = http();
    for _ in 0..1000 {
        let res = client
            .post(format!("{}/api/v1/rooms/big/danmaku", server.url()))
            .json(&json!({ "text": text }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }

    // A small receive buffer, read 4 KiB every 20 ms (about 200 KB/s): the
    // ~400 KB answer takes about two seconds to arrive, twice the deadline.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr.parse().unwrap()).await.unwrap();
    let request = "GET /api/v1/rooms/big/danmaku?limit=1000 HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let body_len = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the answer stalled")
            .unwrap_or(0);
        assert!(n > 0, "closed after {} bytes", answer.len());
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("a content-length")
                .parse()
                .unwrap();
            if answer.len() >= end + 4 + length {
                break length;
            }
        }
    };
    assert!(body_len > 300_000, "the answer is big: {body_len} bytes");
    assert!(
        started.elapsed() > Duration::from_millis(1500),
        "it was read slowly: {:?}",
        started.elapsed()
    );
    server.stop();
}
