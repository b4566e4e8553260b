//! `danmaku send` and `danmaku tail` against a running server.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::server::*;

#[tokio::test]
async fn send_and_tail_work_against_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let bin = env!("CARGO_BIN_EXE_danmaku");
    let url = server.url();
    let stored = run_cli_json(&[
        "send",
        "--url",
        &url,
        "--room",
        "cli",
        "--mode",
        "bottom",
        "hello from the cli",
    ]);
    assert_eq!(
        (stored["id"].as_u64(), stored["mode"].as_str()),
        (Some(1), Some("bottom"))
    );

    let bad = run_cli(&["send", "--url", &url, "--room", "cli", &"x".repeat(101)]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("text_too_long"));

    let mut tail = Command::new(bin)
        .args([
            "tail",
            "--url",
            &server.url(),
            "--room",
            "cli",
            "--since",
            "0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let first = tokio::task::spawn_blocking(move || {
        let l = lines.next().unwrap().unwrap();
        (l, lines)
    });
    let (line, mut lines) = tokio::time::timeout(WAIT, first).await.unwrap().unwrap();
    assert_eq!(line, "#1 guest: hello from the cli");
    post(&server, "cli", json!({"text": "live one", "name": "bob"})).await;
    let next = tokio::task::spawn_blocking(move || lines.next().unwrap().unwrap());
    assert_eq!(
        tokio::time::timeout(WAIT, next).await.unwrap().unwrap(),
        "#2 bob: live one"
    );
    tail.kill().unwrap();
    tail.wait().unwrap();
    server.stop();
}

/// A value out of its range stops `serve` at start-up, before it listens,
/// with an error that names the key and its range: no panic, no server.
#[test]
fn serve_refuses_an_out_of_range_config() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[fanout]\ncoalesce_ms = 1000000000000000\n",
            "invalid config: fanout.coalesce_ms must be between 0 and 10000",
        ),
        // Once accepted, and then a panic in the rate limiter's arithmetic.
        (
            "[limits]\nsend_burst = 4294967295\nsend_per_second = 0.001\n",
            "invalid config: limits.send_burst must be between 0 and 1000000",
        ),
    ];
    for (i, (text, expected)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_danmaku"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > WAIT {
                child.kill().unwrap();
                panic!("danmaku serve is running with {text:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
