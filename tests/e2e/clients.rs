//! Real clients of other ecosystems against the real server: npm
//! `bilibili-live-ws` (`LiveWS` at `/sub`, `LiveTCP` at the Bilibili TCP
//! port) driven through tests/clients/bilibili_live.mjs, and hand-built
//! Bilibili packets for the bad input real clients never send.
//!
//! The npm packages come from `bash tests/clients/install.sh`; without
//! them these tests fail (never skip) and say so.

use std::process::Stdio;
use std::time::{Duration, Instant};

use danmaku::protocol::bilibili::{self, Header, Op, Packet, HEADER_LEN};
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio_tungstenite::tungstenite::Message;

use crate::moderation::{admin, call, user};
use crate::server::*;

/// A server with tokens (`moderation::config`), the Bilibili TCP listener
/// on the returned address, loopback exempt from the limits, and `extra`
/// lines in its `[bilibili]` section. The TCP listener takes a port of the
/// kernel's choosing, read back from the banner: a port picked here and
/// bound later could be taken in between.
fn start(dir: &tempfile::TempDir, extra: &str) -> (Server, String) {
    let config = format!(
        "{}{EXEMPT_LOOPBACK}[bilibili]\ntcp_listen = \"127.0.0.1:0\"\n{extra}\n",
        crate::moderation::config()
    );
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let tcp = server
        .bilibili_tcp()
        .expect("the banner names the bilibili tcp listener");
    (server, tcp)
}

/// One `bilibili-live-ws` client (a node process) and the events it prints.
struct Live {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every event read so far, for the "no error" check.
    seen: Vec<Value>,
}

impl Live {
    /// `LiveWS` at `ws://…/sub` (`kind` "ws") or `LiveTCP` at `HOST:PORT`
    /// ("tcp"), for `roomid` with `protover`; waits until it is live.
    async fn open(kind: &str, at: &str, roomid: u64, protover: u16, key: Option<&str>) -> Live {
        let mut cmd = tokio::process::Command::new("node");
        cmd.current_dir(clients_dir())
            .arg("bilibili_live.mjs")
            .args([kind, at, &roomid.to_string(), &protover.to_string()])
            .args(key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("run node (needed by these tests)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut live = Live {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        };
        live.next("live").await;
        live
    }

    /// The next event of `kind`, skipping others (an `error` or `close`
    /// fails the test).
    async fn next(&mut self, kind: &str) -> Value {
        loop {
            let line = tokio::time::timeout(WAIT, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {kind} event within {WAIT:?}; saw {:?}", self.seen))
                .unwrap()
                .unwrap_or_else(|| {
                    panic!("the client exited waiting for {kind}; saw {:?}", self.seen)
                });
            let event: Value = serde_json::from_str(&line).unwrap();
            self.seen.push(event.clone());
            match event["event"].as_str() {
                Some(k) if k == kind => return event,
                Some("error") | Some("close") => panic!("{event} waiting for {kind}"),
                _ => {}
            }
        }
    }

    /// Sends a heartbeat and returns the online count of its reply.
    async fn heartbeat(&mut self) -> u64 {
        self.stdin.write_all(b"heartbeat\n").await.unwrap();
        self.next("heartbeat").await["online"].as_u64().unwrap()
    }

    /// Heartbeats until the online count is `want`.
    async fn wait_online(&mut self, want: u64) {
        let started = Instant::now();
        loop {
            if self.heartbeat().await == want {
                return;
            }
            assert!(started.elapsed() < WAIT, "online never became {want}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Closes stdin, which makes the client close; asserts it never saw an
    /// error.
    async fn close(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
        let errors: Vec<_> = self.seen.iter().filter(|e| e["event"] == "error").collect();
        assert!(errors.is_empty(), "{errors:?}");
    }
}

/// Sends `body` to `room` as `token`'s user; the stored danmaku.
async fn send(server: &Server, room: &str, token: &str, body: Value) -> Value {
    let path = format!("/api/v1/rooms/{room}/danmaku");
    let (status, stored) = call(server, Method::POST, &path, Some(token), Some(body)).await;
    assert_eq!(status, 201, "{stored}");
    stored
}

/// One client of each protover on one transport: live, danmaku with the
/// fields players read, heartbeats counting the room's viewers, and a
/// recall and online changes that break nothing.
async fn live_client_works(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (server, tcp) = start(&dir, "");
    let at = match kind {
        "ws" => format!("ws://{}/sub", server.addr),
        _ => tcp,
    };
    let alice = user("alice");
    for protover in [0u16, 2, 3] {
        let roomid = 100 + u64::from(protover);
        let room = roomid.to_string();
        let mut live = Live::open(kind, &at, roomid, protover, None).await;
        assert!(live.heartbeat().await >= 1, "{kind} protover {protover}");

        let stored = send(
            &server,
            &room,
            &alice,
            json!({"text": format!("你好 {kind} {protover}"), "color": "#ff8000", "mode": "top"}),
        )
        .await;
        let d = live.next("danmu").await;
        let why = format!("{kind} protover {protover}: {d}");
        assert_eq!(d["text"], stored["text"], "{why}");
        assert_eq!(d["color"], 0xff8000, "{why}");
        assert_eq!(d["mode"], 5, "{why}: top is Bilibili's 5");
        assert_eq!(d["uid"], bilibili::user_id("alice"), "{why}");
        assert_eq!(d["name"], stored["name"], "{why}");
        assert_eq!(d["ts"], stored["ts"], "{why}");
        // The slots parsers index beyond those, present with the empty or
        // zero value Bilibili sends for a viewer without them.
        assert_eq!(d["medal"], json!([]), "{why}: no medal");
        assert_eq!(
            (d["level"].clone(), d["levelSlots"].clone()),
            (json!(0), json!(5)),
            "{why}"
        );
        assert_eq!(d["title"], json!(["", ""]), "{why}: no title");
        assert_eq!(d["guard"], 0, "{why}: no guard");
        assert_eq!(d["wealth"], 0, "{why}: info[16][0]");
        assert_eq!(d["extra"], json!({}), "{why}: info[0][15].extra");
        let slots = (&d["slots"], &d["modeSlots"], &d["userSlots"]);
        assert_eq!(slots, (&json!(18), &json!(18), &json!(8)), "{why}");

        // A second viewer (on our own WebSocket) counts in the heartbeat.
        let (other, _) = watch(&server, &room, None).await;
        live.wait_online(2).await;
        drop(other);
        live.wait_online(1).await;

        // A recall reaches the client as a command it ignores; the next
        // danmaku still arrives.
        let id = stored["id"].as_u64().unwrap();
        let path = format!("/api/v1/rooms/{room}/danmaku/{id}");
        let (status, body) = call(&server, Method::DELETE, &path, Some(&admin()), None).await;
        assert!((200..300).contains(&status), "{status} {body}");
        let recall = loop {
            let cmd = live.next("cmd").await;
            if cmd["cmd"] == "DANMAKU_RECALL" {
                break cmd;
            }
        };
        assert_eq!(recall["data"]["data"]["ids"], json!([id]));
        send(&server, &room, &alice, json!({"text": "after the recall"})).await;
        assert_eq!(live.next("danmu").await["text"], "after the recall");
        live.close().await;
    }
    server.stop();
}

#[tokio::test]
async fn bilibili_live_ws_at_sub_gets_danmaku_heartbeats_and_counts() {
    live_client_works("ws").await;
}

#[tokio::test]
async fn bilibili_live_tcp_gets_danmaku_heartbeats_and_counts() {
    live_client_works("tcp").await;
}

/// A hand-built client packet.
fn packet(header_len: u16, op: u32, body: &[u8]) -> Vec<u8> {
    let header = Header {
        packet_len: (HEADER_LEN + body.len()) as u32,
        header_len,
        ver: 1,
        op,
        seq: 1,
    };
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn auth(body: Value) -> Vec<u8> {
    packet(16, Op::Auth.code(), body.to_string().as_bytes())
}

fn heartbeat() -> Vec<u8> {
    packet(16, Op::Heartbeat.code(), b"[object Object]")
}

/// A raw TCP client speaking the Bilibili protocol by hand.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(tcp: &str) -> Raw {
        Raw {
            stream: TcpStream::connect(tcp).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// A client authenticated in `roomid` with protover 0, past its auth
    /// reply.
    async fn joined(tcp: &str, roomid: u64, key: &str) -> Raw {
        let mut raw = Raw::connect(tcp).await;
        raw.write(&auth(
            json!({"uid": 0, "roomid": roomid, "protover": 0, "key": key}),
        ))
        .await;
        let reply = raw.packet().await.expect("an auth reply");
        assert_eq!(reply.op(), Some(Op::AuthReply));
        assert_eq!(&reply.body[..], br#"{"code":0}"#);
        raw
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next whole packet, or `None` once the server has closed.
    async fn packet(&mut self) -> Option<Packet> {
        loop {
            if let Some(h) = Header::read(&self.buf) {
                let len = h.packet_len as usize;
                if self.buf.len() >= len {
                    let bytes: Vec<u8> = self.buf.drain(..len).collect();
                    let mut packets = bilibili::unpack(&bytes).unwrap();
                    assert_eq!(packets.len(), 1, "protover 0: one packet each");
                    return packets.pop();
                }
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("the server neither answered nor closed");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Asserts the server closes the connection (after anything it sent).
    async fn assert_closed(&mut self, why: &str) {
        while let Some(p) = self.packet().await {
            assert_ne!(p.op(), Some(Op::AuthReply), "{why}: accepted");
        }
    }

    /// The online count of a heartbeat's reply (skipping messages).
    async fn heartbeat(&mut self) -> u32 {
        self.write(&heartbeat()).await;
        loop {
            let p = self.packet().await.expect("a heartbeat reply");
            if p.op() == Some(Op::HeartbeatReply) {
                return u32::from_be_bytes(p.body[..4].try_into().unwrap());
            }
        }
    }

    /// The text of the next `DANMU_MSG` (skipping other commands).
    async fn danmu_text(&mut self) -> String {
        loop {
            let p = self.packet().await.expect("a message");
            let cmd: Value = serde_json::from_slice(&p.body).unwrap_or(Value::Null);
            if cmd["cmd"] == "DANMU_MSG" {
                return cmd["info"][1].as_str().unwrap().to_owned();
            }
        }
    }
}

/// Asserts that `witness`, a viewer of room 7, still gets a danmaku and a
/// heartbeat reply after `case`.
async fn still_served(server: &Server, witness: &mut Raw, case: &str) {
    let text = format!("after {case}");
    send(server, "7", &user("alice"), json!({ "text": text })).await;
    assert_eq!(witness.danmu_text().await, text, "{case}");
    assert!(witness.heartbeat().await >= 1, "{case}");
}

#[tokio::test]
async fn bad_bilibili_packets_close_only_their_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (server, tcp) = start(&dir, "max_packet_bytes = 1024\nauth_timeout_s = 1");
    let alice = user("alice");
    // The witness: a viewer of room 7 that must see every case through.
    let mut witness = Raw::joined(&tcp, 7, "a-bilibili-key").await;

    let mut c = Raw::connect(&tcp).await;
    c.write(&heartbeat()).await;
    c.assert_closed("a heartbeat before auth").await;
    still_served(&server, &mut witness, "a packet before auth").await;

    let mut c = Raw::connect(&tcp).await;
    c.write(&packet(20, Op::Auth.code(), br#"{"roomid":7}"#))
        .await;
    c.assert_closed("header length 20").await;
    still_served(&server, &mut witness, "a wrong header length").await;

    let mut c = Raw::connect(&tcp).await;
    let mut big = auth(json!({"roomid": 7, "key": "k".repeat(2000)}));
    big.truncate(600); // the header announces more than the limit
    c.write(&big).await;
    c.assert_closed("a packet over max_packet_bytes").await;
    still_served(&server, &mut witness, "a packet over the limit").await;

    for bad_room in [json!(-1), json!("abc"), json!(1.5), Value::Null] {
        let mut c = Raw::connect(&tcp).await;
        c.write(&auth(json!({"roomid": bad_room, "protover": 0})))
            .await;
        c.assert_closed(&format!("roomid {bad_room}")).await;
    }
    still_served(&server, &mut witness, "bad roomids").await;

    let forged = token(
        "not-the-server-secret-but-32-bytes-long",
        json!({"sub": "mallory", "role": "admin", "exp": now() + 600}),
    );
    let mut c = Raw::connect(&tcp).await;
    c.write(&auth(json!({"roomid": 7, "protover": 0, "key": forged})))
        .await;
    c.assert_closed("a JWT-shaped key with a bad signature")
        .await;
    still_served(&server, &mut witness, "a forged token").await;

    // Silence after connecting: closed after auth_timeout_s.
    let mut c = Raw::connect(&tcp).await;
    let started = Instant::now();
    c.assert_closed("no auth").await;
    assert!(started.elapsed() < Duration::from_secs(5));

    // Any other key is a guest's, who may watch; an unknown operation
    // after auth is ignored.
    let mut guest = Raw::joined(&tcp, 7, "kD3xPq+9/AbC==").await;
    guest.write(&packet(16, 99, b"?")).await;
    assert!(guest.heartbeat().await >= 2);
    still_served(&server, &mut witness, "an unknown operation").await;
    assert_eq!(guest.danmu_text().await, "after an unknown operation");

    // A valid token is its user's.
    let mut alices = Raw::joined(&tcp, 7, &alice).await;
    assert!(alices.heartbeat().await >= 3);

    // Over the WebSocket, the refusal is a close frame that says why.
    let url = format!("ws://{}/sub", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::binary(heartbeat())).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1008));
    still_served(&server, &mut witness, "a WebSocket packet before auth").await;
    server.stop();
}

#[tokio::test]
async fn bilibili_viewers_are_told_on_shutdown_after_their_danmaku() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, tcp) = start(&dir, "");
    let mut raw = Raw::joined(&tcp, 9, "key").await;
    let url = format!("ws://{}/sub", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::binary(auth(json!({"roomid": 9, "protover": 3}))))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap().into_data();
    assert_eq!(Header::read(&reply).unwrap().op, Op::AuthReply.code());
    wait_metric(
        &server,
        "danmaku_connections{transport=\"bilibili_tcp\"}",
        1.0,
    )
    .await;
    wait_metric(
        &server,
        "danmaku_connections{transport=\"bilibili_ws\"}",
        1.0,
    )
    .await;

    send(&server, "9", &user("alice"), json!({"text": "last words"})).await;
    server.terminate();
    assert_eq!(raw.danmu_text().await, "last words");
    raw.assert_closed("shutdown").await;
    // The WebSocket gets the danmaku (brotli), then close 1001.
    let mut texts = Vec::new();
    let code = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Binary(bytes))) => {
                for p in bilibili::unpack(&bytes).unwrap() {
                    let cmd: Value = serde_json::from_slice(&p.body).unwrap_or(Value::Null);
                    if cmd["cmd"] == "DANMU_MSG" {
                        texts.push(cmd["info"][1].clone());
                    }
                }
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(texts, vec![json!("last words")]);
    assert_eq!(code, Some(1001));
    assert_eq!(server.wait_exit().0, Some(0));
}
