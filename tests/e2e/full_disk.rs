//! A full disk: sends are refused at once with 507 `store_full` and
//! `Retry-After`, nothing acknowledged is lost, reads and viewers are
//! served, a restart still starts, and sends are taken again soon after
//! space returns, with ids that continue where they stopped.
//!
//! The data directory is a small tmpfs, mounted for the test (we run as
//! root, here and in CI): a test that cannot mount it fails, it does not
//! skip.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::moderation::{admin, call, config, get_as};
use crate::server::*;

/// A small tmpfs mounted on a new directory, unmounted on drop.
struct Tmpfs {
    /// Holds the mount point; removed once unmounted (fields drop after
    /// `Drop::drop`).
    _base: tempfile::TempDir,
    mount: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let base = tempfile::tempdir().unwrap();
        let mount = base.path().join("data");
        std::fs::create_dir(&mount).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs to mount a small tmpfs as its data directory (run it as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { _base: base, mount }
    }

    /// Fills the filesystem to its last byte with a file; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.mount.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        // Big writes, then small ones for the last partial chunk.
        for chunk in [vec![0u8; 1 << 16], vec![0u8; 512]] {
            loop {
                match file.write_all(&chunk) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(e) => panic!("filling the tmpfs: {e}"),
                }
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // The server was dropped (killed) before this guard.
        let unmounted = Command::new("umount").arg(&self.mount).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            // Still busy (a process not yet reaped): detach it anyway, so
            // no mount outlives the test.
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

/// POSTs a send that must be refused for the full disk; returns how long
/// the answer took.
async fn refused_send(server: &Server, room: &str, text: &str) -> Duration {
    let started = Instant::now();
    let res = http()
        .post(format!("{}/api/v1/rooms/{room}/danmaku", server.url()))
        .json(&json!({ "text": text }))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let status = res.status().as_u16();
    let retry = res.headers().get("retry-after").cloned();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "store_full", "{body}");
    assert_eq!(body["error"]["retry_after_s"], 5, "{body}");
    assert_eq!(retry.expect("a Retry-After header"), "5");
    took
}

/// The `(id, text)` of a room's whole history.
async fn history(server: &Server, room: &str) -> Vec<(u64, String)> {
    let path = format!("/api/v1/rooms/{room}/danmaku?limit=1000");
    let (status, page) = get_json(server, &path).await;
    assert_eq!(status, 200, "{page}");
    texts(page["items"].as_array().unwrap())
}

fn texts(items: &[Value]) -> Vec<(u64, String)> {
    items
        .iter()
        .map(|d| {
            (
                d["id"].as_u64().unwrap(),
                d["text"].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// `/healthz`'s status and reason (its `node_id` aside).
async fn health(server: &Server) -> Value {
    let (status, mut body) = get_json(server, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["node_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{body}"
    );
    body.as_object_mut().map(|o| o.remove("node_id"));
    body
}

/// Reads an SSE stream until its next `: ping` comment, asserting that no
/// danmaku came first: the viewer is still connected and got nothing new.
async fn ping_without_danmaku(sse: &mut reqwest::Response) {
    let mut seen = String::new();
    while !seen.contains(": ping") {
        let chunk = tokio::time::timeout(WAIT, sse.chunk())
            .await
            .expect("no SSE keepalive within the wait")
            .unwrap()
            .expect("the SSE stream ended");
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(!seen.contains("event: danmaku"), "{seen}");
}

#[tokio::test]
async fn a_full_disk_refuses_sends_serves_reads_and_recovers_without_a_restart() {
    let disk = Tmpfs::mount("4m");
    // Loopback sends fast here: exempt it from the limits explicitly. A
    // 1 s keepalive shows that SSE viewers stay connected.
    let config = format!(
        "{}{EXEMPT_LOOPBACK}[connection]\nping_interval_s = 1\n",
        config()
    );
    let admin = admin();
    let server = Server::start(&disk.mount, Some(&config));
    let (status, _) = call(
        &server,
        Method::PATCH,
        "/api/v1/admin/rooms/wall",
        Some(&admin),
        Some(json!({"premod": true})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, held) = post(&server, "wall", json!({"text": "held before"})).await;
    assert_eq!(status, 202, "{held}");
    let held = held["held"].as_u64().unwrap();

    let (mut viewer, _) = watch(&server, "r", None).await;
    let mut sse = open_sse(&server, "r", None).await;
    let mut acked = Vec::new();
    for i in 1..=10 {
        let (status, d) = post(&server, "r", json!({"text": format!("before {i}")})).await;
        assert_eq!(status, 201, "{d}");
        acked.extend(texts(&[d]));
    }
    assert_eq!(texts(&collect_danmaku(&mut viewer, 10).await), acked);
    assert_eq!(read_sse(&mut sse, 10).await, acked);

    let filler = disk.fill();

    // Every send path is refused at once, with the code and a wait.
    let mut took: Vec<Duration> = Vec::new();
    for i in 0..20 {
        took.push(refused_send(&server, "r", &format!("refused {i}")).await);
    }
    took.sort();
    let (median, slowest) = (took[took.len() / 2], took[took.len() - 1]);
    eprintln!("refused sends on a full disk: median {median:?}, slowest {slowest:?}");
    assert!(median < Duration::from_millis(25), "median {median:?}");
    assert!(slowest < Duration::from_millis(500), "slowest {slowest:?}");
    let (mut sender, _) = watch(&server, "r", None).await;
    send_ws(
        &mut sender,
        json!({"type": "send", "ref": 1, "text": "refused over ws"}),
    )
    .await;
    let answer = next_of(&mut sender, "error").await;
    assert_eq!(answer["ref"], 1, "{answer}");
    assert_eq!(answer["error"]["code"], "store_full", "{answer}");
    assert_eq!(answer["error"]["retry_after_s"], 5, "{answer}");
    // A pre-moderated room's send (a hold is a write) and an approval.
    refused_send(&server, "wall", "not held").await;
    let approve = format!("/api/v1/admin/rooms/wall/held/{held}/approve");
    let (status, body) = call(&server, Method::POST, &approve, Some(&admin), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (507, Some("store_full"))
    );
    let (_, list) = get_as(&server, &admin, "/api/v1/admin/rooms/wall/held").await;
    assert_eq!(list["items"][0]["held"], held, "still held: {list}");

    assert_eq!(
        health(&server).await,
        json!({"status": "degraded", "reason": "store_full"})
    );
    assert_eq!(metric(&server, "danmaku_store_full").await, Some(1.0));
    // 20 + 1 sends, the hold and the approval.
    assert_eq!(
        metric(&server, "danmaku_store_full_writes_total").await,
        Some(23.0)
    );
    assert_eq!(
        metric(&server, "danmaku_rejected_total{code=\"store_full\"}").await,
        Some(22.0)
    );
    // Reads are served, and viewers stay connected, with nothing new.
    assert_eq!(history(&server, "r").await, acked);
    send_ws(&mut viewer, json!({"type": "ping"})).await;
    let pong = next_json(&mut viewer).await;
    assert_eq!(pong["type"], "pong", "nothing but the pong: {pong}");
    ping_without_danmaku(&mut sse).await;
    drop((viewer, sse, sender));

    // A restart while the disk is still full starts, degraded, and serves
    // history and resuming viewers.
    server.stop();
    let server = Server::start(&disk.mount, Some(&config));
    assert_eq!(
        health(&server).await,
        json!({"status": "degraded", "reason": "store_full"})
    );
    assert_eq!(history(&server, "r").await, acked);
    let (mut resumed, hello) = watch(&server, "r", Some(5)).await;
    assert_eq!(hello["last_id"], 10);
    assert_eq!(texts(&collect_danmaku(&mut resumed, 5).await), acked[5..]);
    let mut sse = open_sse(&server, "r", Some(7)).await;
    assert_eq!(read_sse(&mut sse, 3).await, acked[7..]);
    refused_send(&server, "r", "still refused").await;

    // Space returns: with no send to find out, the store notices by itself
    // and takes sends again within 10 s, without a restart; ids continue
    // with no gap and no reuse.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    while health(&server).await["status"] != "ok" {
        assert!(
            freed.elapsed() < Duration::from_secs(10),
            "still degraded 10 s after space returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("healthy again {:?} after space returned", freed.elapsed());
    let (status, next) = post(&server, "r", json!({"text": "after"})).await;
    assert_eq!((status, next["id"].as_u64()), (201, Some(11)), "{next}");
    acked.extend(texts(&[next]));
    assert_eq!(metric(&server, "danmaku_store_full").await, Some(0.0));
    assert_eq!(texts(&collect_danmaku(&mut resumed, 1).await), acked[10..]);
    assert_eq!(read_sse(&mut sse, 1).await, acked[10..]);
    let (status, approved) = call(&server, Method::POST, &approve, Some(&admin), None).await;
    assert_eq!((status, approved["id"].as_u64()), (201, Some(1)));
    let (status, d) = post(&server, "r", json!({"text": "after 2"})).await;
    assert_eq!((status, d["id"].as_u64()), (201, Some(12)));
    acked.extend(texts(&[d]));
    assert_eq!(history(&server, "r").await, acked);
    drop((resumed, sse));
    server.stop();
}

/// The two starts a full disk still stops, because there is nothing to
/// serve without space: a database whose shared-memory index must be made
/// again, and a new data directory. Both say why.
#[tokio::test]
async fn a_start_that_must_create_files_on_a_full_disk_fails_and_says_why() {
    let disk = Tmpfs::mount("1m");
    let data = disk.mount.join("old");
    let server = Server::start(&data, None);
    assert_eq!(post(&server, "r", json!({"text": "stored"})).await.0, 201);
    server.stop();
    // The server leaves its log and shared-memory index in place. SQLite
    // rebuilds the index from the database and the log, so deleting it
    // loses nothing; but with no space, it cannot.
    std::fs::remove_file(data.join("danmaku.sqlite3-shm")).expect("the index is kept");
    disk.fill();
    let fresh = disk.mount.join("new");
    for dir in [&data, &fresh] {
        let path = dir.to_str().unwrap();
        let out = run_cli(&["serve", "--listen", "127.0.0.1:0", "--data", path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{stderr}");
        assert!(!out.status.success(), "{path} started on a full disk");
        // SQLite reports the first as an I/O error; its errno says why.
        assert!(stderr.contains("the disk is full"), "{path}: {stderr}");
    }
}
