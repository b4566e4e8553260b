//! The admin dashboard's live figures (`GET /api/v1/admin/stats`): rates,
//! viewers and latencies sampled every second, as JSON, for admins only.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::moderation::{admin, call, config, user};
use crate::server::*;

/// Whether a sample saw danmaku sent, acknowledged and delivered.
fn busy(s: &Value) -> bool {
    s["received_per_s"].as_f64() > Some(0.0)
        && s["deliveries_per_s"].as_f64() > Some(0.0)
        && s["send_ack_ms"]["p99"].is_number()
        && s["fanout_ms"]["p99"].is_number()
}

#[tokio::test]
async fn the_dashboard_sees_each_second_of_sends_deliveries_and_latency() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        Some(&format!("{}{EXEMPT_LOOPBACK}", config())),
    );
    let admin = admin();

    // Admins only.
    let (status, v) = call(&server, Method::GET, "/api/v1/admin/stats", None, None).await;
    assert_eq!((status, &v["error"]["code"]), (401, &json!("unauthorized")));
    let viewer = user("alice");
    let (status, _) = call(
        &server,
        Method::GET,
        "/api/v1/admin/stats",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, v) = call(
        &server,
        Method::GET,
        "/api/v1/admin/stats?after=soon",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("invalid_query"))
    );

    // The first viewer of the process is one whose fan-out latency is
    // observed (one in 16 is).
    let (mut ws, _) = watch(&server, "live", None).await;
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let (status, d) = post(&server, "live", json!({ "text": format!("hi {sent}") })).await;
        assert_eq!(status, 201, "{d}");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(collect_danmaku(&mut ws, sent).await.len(), sent);

    // A second that held sends shows them, their deliveries and latencies.
    let deadline = Instant::now() + WAIT;
    let report = loop {
        let (status, report) = call(
            &server,
            Method::GET,
            "/api/v1/admin/stats",
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(status, 200, "{report}");
        if report["samples"].as_array().unwrap().iter().any(busy) {
            break report;
        }
        assert!(Instant::now() < deadline, "no busy second in {report}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(report["interval_s"], 1);
    assert!(report["node_id"].is_string(), "{report}");
    let samples = report["samples"].as_array().unwrap();
    assert!(samples.len() >= 2, "one a second: {report}");
    let busiest = samples.iter().find(|s| busy(s)).unwrap();
    let ack = &busiest["send_ack_ms"];
    let (p50, p99) = (ack["p50"].as_f64().unwrap(), ack["p99"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99 && p99 < 5000.0, "{busiest}");
    assert_eq!(busiest["online"], 1, "{busiest}");
    assert_eq!(busiest["online_cluster"], 1, "{busiest}");
    assert_eq!(busiest["rejected_per_s"], 0.0, "{busiest}");
    // Ascending by time.
    let times: Vec<i64> = samples.iter().map(|s| s["t"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");

    let rooms = report["rooms"].as_array().unwrap();
    let live = rooms
        .iter()
        .find(|r| r["room"] == "live")
        .expect("the room");
    assert_eq!(
        (&live["online"], &live["online_local"]),
        (&json!(1), &json!(1))
    );
    assert!(live["rate_per_s"].as_f64().unwrap() > 0.0, "{live}");
    assert_eq!(live["last_id"], sent as u64);

    // `after` the newest sample: only those taken since.
    let last = *times.last().unwrap();
    let (_, newer) = call(
        &server,
        Method::GET,
        &format!("/api/v1/admin/stats?after={last}"),
        Some(&admin),
        None,
    )
    .await;
    let newer = newer["samples"].as_array().unwrap();
    assert!(newer.len() < samples.len(), "{newer:?}");
    assert!(newer.iter().all(|s| s["t"].as_i64().unwrap() > last));
}
