//! `danmaku send` and `danmaku tail` against a running server.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

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
