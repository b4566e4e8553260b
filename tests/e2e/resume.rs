//! `since=` replays what a viewer missed: no gap, no duplicate, also across
//! a restart and while new danmaku keep arriving.

use serde_json::json;

use crate::server::*;

#[tokio::test]
async fn since_resumes_without_gap_or_duplicate_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, Some(EXEMPT_LOOPBACK));
    for i in 1..=5 {
        assert_eq!(
            post(&server, "r", json!({"text": format!("m{i}")})).await.0,
            201
        );
    }
    let (mut ws, hello) = watch(&server, "r", Some(2)).await;
    assert_eq!(hello["last_id"], 5);
    assert_eq!(ids(&collect_danmaku(&mut ws, 3).await), vec![3, 4, 5]);
    drop(ws);
    server.stop();

    // Same data dir: ids continue, never reused, and history is all there.
    let server = Server::start(&data, Some(EXEMPT_LOOPBACK));
    let (_, room) = get_json(&server, "/api/v1/rooms/r").await;
    assert_eq!(room["last_id"], 5);
    let (mut live, _) = watch(&server, "r", Some(5)).await;
    for i in 6..=8 {
        let (_, d) = post(&server, "r", json!({"text": format!("m{i}")})).await;
        assert_eq!(d["id"], i);
    }
    assert_eq!(ids(&collect_danmaku(&mut live, 3).await), vec![6, 7, 8]);
    let (mut all, _) = watch(&server, "r", Some(0)).await;
    let got = collect_danmaku(&mut all, 8).await;
    assert_eq!(ids(&got), (1..=8).collect::<Vec<_>>());
    assert_eq!(got[0]["text"], "m1");
    // A `since` beyond the newest id means "from now on".
    let (mut ahead, _) = watch(&server, "r", Some(1000)).await;
    post(&server, "r", json!({"text": "m9"})).await;
    assert_eq!(ids(&collect_danmaku(&mut ahead, 1).await), vec![9]);
    server.stop();
}

#[tokio::test]
async fn resuming_while_sends_keep_arriving_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(EXEMPT_LOOPBACK));
    const TOTAL: u64 = 1500;
    let url = server.url();
    // Two senders keep sending while viewers join with since=0 at
    // different moments: each must see 1..=TOTAL exactly once, in order.
    let senders: Vec<_> = (0..2)
        .map(|s| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for i in 0..TOTAL / 2 {
                    let res = client
                        .post(format!("{url}/api/v1/rooms/busy/danmaku"))
                        .json(&json!({"text": format!("s{s}-{i}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 201);
                }
            })
        })
        .collect();
    let mut viewers = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        viewers.push(watch(&server, "busy", Some(0)).await.0);
    }
    for s in senders {
        s.await.unwrap();
    }
    for mut v in viewers {
        let got = collect_danmaku(&mut v, TOTAL as usize).await;
        assert_eq!(ids(&got), (1..=TOTAL).collect::<Vec<_>>());
    }
    server.stop();
}
