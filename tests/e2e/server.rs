//! Test harness: the real `danmaku` binary on an ephemeral port, and real
//! WebSocket and HTTP clients.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// A `[limits]` section that exempts this machine's clients (loopback) from
/// the rate limits, the flood guard and the per-address connection cap, as
/// the bench's own server does. Nobody is exempt by default, so a test that
/// sends faster than a person, and is not about the limits, says so by
/// starting its server with this (appended to a config that has no
/// `[limits]` section of its own).
pub const EXEMPT_LOOPBACK: &str = "[limits]\nexempt_ips = [\"127.0.0.0/8\", \"::1/128\"]\n";

/// A running server process.
pub struct Server {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The lines of the start banner, `danmaku listening on …` to `  data …`.
    banner: Vec<String>,
}

impl Server {
    /// Starts a server on an ephemeral port with `data` as its data dir and
    /// an optional config file text.
    pub fn start(data: &Path, config: Option<&str>) -> Server {
        Server::start_at(data, config, "127.0.0.1:0")
    }

    /// As [`Server::start`], listening on `listen` (a restart on the
    /// address a stopped server had: clients reconnect to the same URL).
    pub fn start_at(data: &Path, config: Option<&str>, listen: &str) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_danmaku"));
        cmd.args(["serve", "--listen", listen, "--data"])
            .arg(data)
            // DANMAKU_TEST_LOG=debug shows the server's logs when a test fails.
            .env(
                "RUST_LOG",
                std::env::var("DANMAKU_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(text) = config {
            let path = data.with_extension("toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd.spawn().expect("start danmaku");
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        // The banner ends with its `  data` line; what it says (the
        // addresses actually bound) is kept, so that a test asks the
        // server where it listens instead of guessing a free port.
        let mut banner = Vec::new();
        loop {
            let mut line = String::new();
            let read = reader.read_line(&mut line).unwrap();
            assert!(read > 0, "the server exited before its banner: {banner:?}");
            let line = line.trim_end().to_owned();
            let last = line.starts_with("  data ");
            banner.push(line);
            if last {
                break;
            }
        }
        // Keep reading the rest, as a terminal would.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let addr = banner[0]
            .strip_prefix("danmaku listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {:?}", banner[0]))
            .to_owned();
        Server {
            child: Some(child),
            addr,
            banner,
        }
    }

    /// The address of the Bilibili TCP listener, from the banner's
    /// `  bilibili   ws://…/sub, tcp ADDR` line (`None` without one).
    pub fn bilibili_tcp(&self) -> Option<String> {
        self.banner
            .iter()
            .find(|l| l.trim_start().starts_with("bilibili "))?
            .split_once(", tcp ")
            .map(|(_, at)| at.to_owned())
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's process id (for its `/proc` entries).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        let pid = self.pid();
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit; returns its exit code and how long it took.
    pub fn wait_exit(&mut self) -> (Option<i32>, Duration) {
        let started = Instant::now();
        let mut child = self.child.take().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            if started.elapsed() > WAIT {
                child.kill().unwrap();
                panic!("server did not exit within {WAIT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the process dies at once, as in a crash or power cut
    /// (minus the disk). Waits until it is gone.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then asserts a clean exit (code 0) within a few seconds.
    pub fn stop(mut self) {
        self.terminate();
        let (code, took) = self.wait_exit();
        assert_eq!(code, Some(0), "exit code");
        assert!(took < Duration::from_secs(6), "shutdown took {took:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A client that opens a new connection per request, so that its idle
/// keep-alive connections never show in the server's task gauge.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// POSTs a danmaku; returns the status and the JSON answer.
pub async fn post(server: &Server, room: &str, body: Value) -> (u16, Value) {
    let res = http()
        .post(format!("{}/api/v1/rooms/{room}/danmaku", server.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// GETs a JSON document.
pub async fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let res = http()
        .get(format!("{}{path}", server.url()))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// The texts of a room's history (its first 1,000 danmaku), in id order.
pub async fn texts(server: &Server, room: &str) -> Vec<String> {
    let (_, h) = get_json(server, &format!("/api/v1/rooms/{room}/danmaku?limit=1000")).await;
    h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["text"].as_str().unwrap().to_owned())
        .collect()
}

/// GETs a text document.
pub async fn get_text(server: &Server, path: &str) -> String {
    let res = http()
        .get(format!("{}{path}", server.url()))
        .send()
        .await
        .unwrap();
    res.text().await.unwrap()
}

/// The value of a metric line (`name` includes labels), if present.
pub async fn metric(server: &Server, name: &str) -> Option<f64> {
    get_text(server, "/metrics")
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls a metric until it has `want` or the wait runs out.
pub async fn wait_metric(server: &Server, name: &str, want: f64) {
    let started = Instant::now();
    loop {
        let got = metric(server, name).await.unwrap_or(0.0);
        if got == want {
            return;
        }
        assert!(started.elapsed() < WAIT, "{name} stayed {got}, want {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebSocket client.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects a viewer and reads its `hello` frame.
pub async fn watch(server: &Server, room: &str, since: Option<u64>) -> (Ws, Value) {
    let mut url = format!("ws://{}/ws?room={room}", server.addr);
    if let Some(s) = since {
        url.push_str(&format!("&since={s}"));
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("ws connect");
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    (ws, hello)
}

/// The next JSON text frame (pings are answered by the client library).
pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("connection ended")
            .expect("websocket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

/// The next frame of a given type, skipping others (e.g. `online`).
pub async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == kind {
            return v;
        }
    }
}

/// Reads danmaku frames until `n` danmaku have arrived; returns them.
/// Panics on a `lagged` frame.
pub async fn collect_danmaku(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = next_json(ws).await;
        match v["type"].as_str() {
            Some("danmaku") => out.extend(v["items"].as_array().unwrap().iter().cloned()),
            Some("lagged") => panic!("unexpected lag: {v}"),
            _ => {}
        }
    }
    out
}

/// The ids of danmaku values.
pub fn ids(items: &[Value]) -> Vec<u64> {
    items.iter().map(|d| d["id"].as_u64().unwrap()).collect()
}

/// Opens an SSE stream of `room`, resuming after `last_event_id` if given.
pub async fn open_sse(
    server: &Server,
    room: &str,
    last_event_id: Option<u64>,
) -> reqwest::Response {
    let mut req = http().get(format!("{}/api/v1/rooms/{room}/stream", server.url()));
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    res
}

/// Reads `n` danmaku events: (event id, text), checking the id line
/// matches the danmaku inside.
pub async fn read_sse(res: &mut reqwest::Response, n: usize) -> Vec<(u64, String)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(WAIT, res.chunk())
            .await
            .expect("timed out waiting for SSE")
            .unwrap()
            .expect("stream ended");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let field = |name: &str| {
                event
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(str::to_owned))
            };
            if field("event: ").as_deref() == Some("danmaku") {
                let id: u64 = field("id: ").unwrap().parse().unwrap();
                let data: serde_json::Value =
                    serde_json::from_str(&field("data: ").unwrap()).unwrap();
                assert_eq!(data["id"], id);
                out.push((id, data["text"].as_str().unwrap().to_owned()));
            }
        }
    }
    out
}

/// Sends a JSON command over a WebSocket.
pub async fn send_ws(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// Waits for the connection to close; returns the close code.
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for close")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Writes a raw HTTP request on `stream` and reads the response head,
/// leaving the body unread.
pub async fn raw_request(stream: &mut TcpStream, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Completes a WebSocket handshake for `room` by hand on `stream`; what the
/// test then does with the socket (read nothing, flood) is its own.
pub async fn raw_ws_handshake(stream: &mut TcpStream, addr: &str, room: &str) {
    let request = format!(
        "GET /ws?room={room} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let head = raw_request(stream, &request).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

/// Runs the `danmaku` binary with `args` and waits for it.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_danmaku"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs the binary, asserts it succeeded, and parses its stdout as one JSON value.
pub fn run_cli_json(args: &[&str]) -> serde_json::Value {
    let out = run_cli(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The HTTP status a WebSocket handshake with `query` (and optional extra
/// request headers) is answered with: 101 when it is accepted.
pub async fn ws_status(server: &Server, query: &str, headers: &[(&str, &str)]) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/ws?{query}", server.addr)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes());
        req.headers_mut().insert(name.unwrap(), v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
    }
}

/// Seconds since the Unix epoch, for token expiries.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token with these claims, signed with `secret`.
pub fn token(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// `tests/clients`, where the real npm clients and players and their
/// driver scripts live. Fails, never skips, when they are not installed.
pub fn clients_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    assert!(
        dir.join("node_modules/bilibili-live-ws").is_dir()
            && dir.join("node_modules/playwright-core").is_dir(),
        "the real clients are not installed: run `bash tests/clients/install.sh` once"
    );
    dir
}

/// The machine's turn: held by the tests that load it hardest (a
/// Chromium, dozens of senders) and by those that measure time, so that
/// no two of them run at once. A deadline measured while a browser takes
/// both cores would measure the browser.
/// (A tokio mutex: its guard lives across awaits, and a test that panics
/// holding it does not poison it for the others.)
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for [`TURN`] and holds it until the guard is dropped.
pub async fn take_turn() -> tokio::sync::MutexGuard<'static, ()> {
    TURN.lock().await
}

/// Runs `node SCRIPT ARGS…` in [`clients_dir`] and returns its stdout;
/// panics with its stderr if it fails.
pub fn node_client(script: &str, args: &[&str]) -> Vec<u8> {
    let dir = clients_dir();
    let out = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node (Node.js 20 is needed): {e}"));
    assert!(
        out.status.success(),
        "node {script} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
