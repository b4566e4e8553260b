//! Integer edges: ids, limits and durations at and past what the store can
//! hold are answered correctly or refused with `400`, never wrapped.

use reqwest::Method;
use serde_json::{json, Value};

use crate::server::*;

/// 2^63: one past the largest id, which once wrapped to a negative `after`
/// and returned the room's history from id 1.
const PAST_MAX: &str = "9223372036854775808";
const U64_MAX: &str = "18446744073709551615";

#[tokio::test]
async fn ids_past_the_largest_are_refused_never_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    for text in ["one", "two", "three"] {
        assert_eq!(post(&server, "r", json!({ "text": text })).await.0, 201);
    }
    let history = |query: String| {
        let server = &server;
        async move { get_json(server, &format!("/api/v1/rooms/r/danmaku?{query}")).await }
    };
    for after in [
        PAST_MAX,
        U64_MAX,
        "18446744073709551616",
        "-1",
        "1.5",
        "1e3",
    ] {
        let (status, body) = history(format!("after={after}")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_query")),
            "after={after}: {body}"
        );
    }
    // The largest id there can be: nothing follows it.
    let (status, body) = history("after=9223372036854775807".into()).await;
    assert_eq!((status, &body["items"]), (200, &json!([])));
    let (_, body) = history("after=2".into()).await;
    assert_eq!(ids(body["items"].as_array().unwrap()), [3]);
    for limit in ["0", "1001", U64_MAX, "-1", "2.0"] {
        let (status, _) = history(format!("limit={limit}")).await;
        assert_eq!(status, 400, "limit={limit}");
    }
    for (from, to) in [("1e400", "2"), ("0", "NaN"), ("-inf", "1"), ("5", "-5")] {
        let (status, _) = history(format!("from={from}&to={to}")).await;
        assert_eq!(status, 400, "from={from}&to={to}");
    }
    let (status, _) = history("from=-1e308&to=inf".into()).await;
    assert_eq!(status, 200);

    // Resuming past the largest id: SSE and WebSocket alike.
    for since in [PAST_MAX, U64_MAX] {
        let (status, body) =
            get_json(&server, &format!("/api/v1/rooms/r/stream?since={since}")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_query")),
            "{body}"
        );
        let res = http()
            .get(format!("{}/api/v1/rooms/r/stream", server.url()))
            .header("Last-Event-ID", since)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "Last-Event-ID: {since}");
        assert_eq!(
            ws_status(&server, &format!("room=r&since={since}"), &[]).await,
            400
        );
    }
    // A since at the largest id, above the room's newest, means "from now".
    let (_, hello) = watch(&server, "r", Some(i64::MAX as u64)).await;
    assert_eq!(hello["last_id"], 3);

    // A recall of an id past the largest is a bad id, not a wrapped one.
    for id in [PAST_MAX, U64_MAX, "-1"] {
        let res = http()
            .request(
                Method::DELETE,
                format!("{}/api/v1/rooms/r/danmaku/{id}", server.url()),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "recall {id}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_field");
    }
    // Nothing was lost or changed on the way.
    let (_, body) = history("after=0".into()).await;
    assert_eq!(ids(body["items"].as_array().unwrap()), [1, 2, 3]);
    server.stop();
}
