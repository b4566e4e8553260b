//! Hot-room density control: a room flooded past what anyone can read is
//! thinned on the way out, the admin's message always gets through, and
//! everything is still stored.

use serde_json::json;

use crate::server::*;

const SECRET: &str = "a-density-test-secret-of-32-bytes-or-more";

#[tokio::test]
async fn a_flooded_room_is_thinned_but_the_admin_is_heard_and_all_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[auth]\nhs256_secret = \"{SECRET}\"\n[fanout]\ndensity_control = true\ndensity_max_per_s = 5\n{EXEMPT_LOOPBACK}"
    );
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let (mut ws, _) = watch(&server, "hot", None).await;

    let sends = (0..60).map(|i| post(&server, "hot", json!({"text": format!("spam {}", i % 3)})));
    for (status, body) in futures_util::future::join_all(sends).await {
        assert_eq!(status, 201, "{body}");
    }
    let admin = token(
        SECRET,
        json!({"sub": "mod", "role": "admin", "exp": now() + 600}),
    );
    let res = http()
        .post(format!("{}/api/v1/rooms/hot/danmaku", server.url()))
        .bearer_auth(&admin)
        .json(&json!({"text": "please keep it civil"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);

    // Every id is accounted for: received, or announced as thinned.
    let (mut received, mut thinned, mut heard_admin) = (0, 0, false);
    while received + thinned < 61 {
        let frame = next_of(&mut ws, "danmaku").await;
        let items = frame["items"].as_array().unwrap();
        received += items.len() as u64;
        thinned += frame["thinned"].as_u64().unwrap_or(0);
        heard_admin |= items.iter().any(|d| d["text"] == "please keep it civil");
    }
    assert_eq!(received + thinned, 61);
    assert!(heard_admin, "the admin's message is never thinned");
    assert!(
        thinned > 0,
        "60 sends at once to a room allowed 5/s were thinned"
    );
    assert_eq!(
        metric(&server, "danmaku_thinned_total").await,
        Some(thinned as f64)
    );
    let (_, history) = get_json(&server, "/api/v1/rooms/hot/danmaku?after=0&limit=100").await;
    assert_eq!(
        history["items"].as_array().unwrap().len(),
        61,
        "everything is stored"
    );
}
