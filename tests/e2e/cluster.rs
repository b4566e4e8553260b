//! A cluster: several real `danmaku` processes sharing rooms over a real
//! PostgreSQL and a real broker (Redis, or NATS), with faults injected by
//! stopping the services and killing nodes.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::moderation::{admin, call, config as auth_config, user};
use crate::server::{
    collect_danmaku, get_json, http, ids, next_of, open_sse, post, read_sse, watch, Server, Ws,
    EXEMPT_LOOPBACK, WAIT,
};
use crate::services::{unique, Broker, BrokerKind, Database, Postgres};

/// Nodes sharing one store and one broker.
struct Cluster {
    nodes: Vec<Option<Server>>,
    _dirs: Vec<TempDir>,
    store: String,
    bus: String,
    namespace: String,
    extra: String,
}

impl Cluster {
    /// Starts `n` nodes on `store` and `bus`, in a namespace of their own,
    /// with loopback exempt from the rate limits.
    fn start(n: usize, store: &str, bus: &str) -> Cluster {
        Cluster::start_with(n, store, bus, EXEMPT_LOOPBACK)
    }

    /// Starts `n` nodes whose config also holds `extra` (sections other
    /// than `[store]`, `[bus]`, `[cluster]`, `[auth]`).
    fn start_with(n: usize, store: &str, bus: &str, extra: &str) -> Cluster {
        let mut cluster = Cluster {
            nodes: Vec::new(),
            _dirs: Vec::new(),
            store: store.to_owned(),
            bus: bus.to_owned(),
            namespace: format!("t{}", unique()),
            extra: extra.to_owned(),
        };
        for _ in 0..n {
            cluster.add();
        }
        cluster
    }

    /// Starts one more node; returns its index.
    fn add(&mut self) -> usize {
        let i = self.nodes.len();
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "{}{}[store]\nurl = \"{}\"\n[bus]\nurl = \"{}\"\nnamespace = \"{}\"\n\
             [cluster]\nnode_id = \"{}-n{i}\"\n",
            auth_config(),
            self.extra,
            self.store,
            self.bus,
            self.namespace,
            self.namespace,
        );
        self.nodes
            .push(Some(Server::start(&dir.path().join("data"), Some(&config))));
        self._dirs.push(dir);
        i
    }

    fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// SIGKILLs node `i`.
    fn kill(&mut self, i: usize) {
        self.nodes[i].take().expect("node is running").kill();
    }
}

/// `/healthz` of a node.
async fn health(server: &Server) -> Value {
    let res = http()
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Waits until `check` holds, polling; fails after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(()) => return,
            Err(last) => assert!(
                started.elapsed() < within,
                "{what}: not within {within:?}; last: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `n` danmaku to `room`, spread round-robin over `nodes`, `conc` at
/// a time; returns the acknowledged ids.
async fn spread_sends(nodes: &[&Server], room: &str, n: usize, conc: usize) -> Vec<u64> {
    let mut acked = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(conc) {
        let answers = join_all(chunk.iter().map(|i| {
            let node = nodes[i % nodes.len()];
            async move { post(node, room, json!({ "text": format!("m{i}") })).await }
        }))
        .await;
        for (status, body) in answers {
            assert_eq!(status, 201, "{body}");
            acked.push(body["id"].as_u64().unwrap());
        }
    }
    acked.sort_unstable();
    acked
}

/// Every node's viewers get every danmaku of a room exactly once, in id
/// order, with ids contiguous, when sends are spread over every node; a
/// node started afterwards resumes from the start.
async fn one_room_many_nodes(kind: BrokerKind) {
    let db = Database::shared();
    let mut cluster = Cluster::start(3, &db.url(), &kind.shared());
    let room = format!("hot-{}", unique());
    let mut viewers: Vec<Ws> = Vec::new();
    for i in 0..3 {
        for _ in 0..2 {
            viewers.push(watch(cluster.node(i), &room, None).await.0);
        }
    }
    let nodes: Vec<&Server> = (0..3).map(|i| cluster.node(i)).collect();
    let acked = spread_sends(&nodes, &room, 300, 30).await;
    assert_eq!(
        acked,
        (1..=300).collect::<Vec<u64>>(),
        "ids contiguous from 1"
    );
    for (v, ws) in viewers.iter_mut().enumerate() {
        let got = ids(&collect_danmaku(ws, 300).await);
        assert_eq!(got, acked, "viewer {v} (node {})", v / 2);
    }
    // A node that was not up when they were sent serves the whole history,
    // by SSE resume from the start.
    let late = cluster.add();
    let mut sse = open_sse(cluster.node(late), &room, Some(0)).await;
    let resumed: Vec<u64> = read_sse(&mut sse, 300).await.iter().map(|e| e.0).collect();
    assert_eq!(resumed, acked);
}

#[tokio::test]
async fn three_nodes_share_a_room_over_postgres_and_redis() {
    one_room_many_nodes(BrokerKind::Redis).await;
}

#[tokio::test]
async fn three_nodes_share_a_room_over_postgres_and_nats() {
    one_room_many_nodes(BrokerKind::Nats).await;
}

/// The online count of `room` as node `server` reports it.
async fn online(server: &Server, room: &str) -> (u64, u64) {
    let res = http()
        .get(format!("{}/api/v1/rooms/{room}", server.url()))
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    (
        v["online"].as_u64().unwrap_or(0),
        v["online_local"].as_u64().unwrap_or(0),
    )
}

/// Presence: every node counts every node's viewers; a killed node's
/// viewers leave the counts within 15 s, and the viewers are told.
#[tokio::test]
async fn online_counts_the_whole_cluster_and_forgets_a_dead_node() {
    let db = Database::shared();
    let mut cluster = Cluster::start(3, &db.url(), &BrokerKind::Redis.shared());
    let room = format!("count-{}", unique());
    let mut viewers = Vec::new();
    for (i, n) in [2, 3, 4].into_iter().enumerate() {
        for _ in 0..n {
            viewers.push((i, watch(cluster.node(i), &room, None).await.0));
        }
    }
    for i in 0..3 {
        let node = cluster.node(i);
        let local = [2, 3, 4][i];
        eventually(Duration::from_secs(10), "cluster-wide count", || async {
            match online(node, &room).await {
                (9, l) if l == local => Ok(()),
                other => Err(format!("node {i}: {other:?}")),
            }
        })
        .await;
    }
    let killed = Instant::now();
    cluster.kill(2);
    viewers.retain(|(i, _)| *i != 2);
    for i in 0..2 {
        let node = cluster.node(i);
        eventually(
            Duration::from_secs(15),
            "dead node leaves the count",
            || async {
                match online(node, &room).await {
                    (5, _) => Ok(()),
                    other => Err(format!("node {i}: {other:?}")),
                }
            },
        )
        .await;
    }
    assert!(killed.elapsed() < Duration::from_secs(15));
    // Every remaining viewer ends up told 5.
    for (i, ws) in &mut viewers {
        let mut last = 0;
        while last != 5 {
            last = next_of(ws, "online").await["count"].as_u64().unwrap();
        }
        assert_eq!(last, 5, "viewer on node {i}");
    }
}

/// A mute, a recall and an approval on one node hold on the others.
#[tokio::test]
async fn moderation_on_one_node_takes_effect_on_the_others() {
    let db = Database::shared();
    let cluster = Cluster::start(3, &db.url(), &BrokerKind::Redis.shared());
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let room = format!("mod-{}", unique());
    let admin = admin();
    let (mut on_b, _) = watch(b, &room, None).await;
    let (mut on_c, _) = watch(c, &room, None).await;

    // Recall on A: the viewers on B and C are told.
    let (_, sent) = post(b, &room, json!({ "text": "oops" })).await;
    let id = sent["id"].as_u64().unwrap();
    collect_danmaku(&mut on_b, 1).await;
    collect_danmaku(&mut on_c, 1).await;
    let path = format!("/api/v1/rooms/{room}/danmaku/{id}");
    let (status, body) = call(a, Method::DELETE, &path, Some(&admin), None).await;
    assert_eq!(status, 204, "{body}");
    for ws in [&mut on_b, &mut on_c] {
        let delete = next_of(ws, "delete").await;
        assert_eq!(delete["ids"], json!([id]));
    }

    // A mute made on A refuses the user's sends on C within a second.
    let carol = user("carol");
    let send_path = format!("/api/v1/rooms/{room}/danmaku");
    let carol_sends = || {
        call(
            c,
            Method::POST,
            &send_path,
            Some(&carol),
            Some(json!({ "text": "still here" })),
        )
    };
    let (status, first) = carol_sends().await;
    assert_eq!(status, 201, "{first}");
    let path = format!("/api/v1/admin/rooms/{room}/mutes");
    let mute = json!({ "user": "carol", "seconds": 600 });
    let (status, body) = call(a, Method::POST, &path, Some(&admin), Some(mute)).await;
    assert_eq!(status, 201, "{body}");
    let muted_at = Instant::now();
    eventually(Duration::from_secs(1), "mute seen on C", || async {
        match carol_sends().await {
            (403, _) => Ok(()),
            (s, b) => Err(format!("{s} {b}")),
        }
    })
    .await;
    assert!(muted_at.elapsed() <= Duration::from_secs(1));

    // Pre-moderation set on A; a send through B is held; C approves it;
    // every node's viewers get it.
    let settings = json!({ "premod": true });
    let path = format!("/api/v1/admin/rooms/{room}");
    let (status, body) = call(a, Method::PATCH, &path, Some(&admin), Some(settings)).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, held) = call(
        b,
        Method::POST,
        &format!("/api/v1/rooms/{room}/danmaku"),
        Some(&user("author")),
        Some(json!({ "text": "needs a look" })),
    )
    .await;
    assert_eq!(status, 202, "{held}");
    let held_id = held["held"].as_u64().unwrap();
    let approve = format!("/api/v1/admin/rooms/{room}/held/{held_id}/approve");
    // The held send reaches C's queue over the bus; approve it there.
    let started = Instant::now();
    let approved = loop {
        let answer = call(c, Method::POST, &approve, Some(&admin), None).await;
        if answer.0 != 404 || started.elapsed() > Duration::from_secs(2) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(approved.0, 201, "{approved:?}");
    for ws in [&mut on_b, &mut on_c] {
        // Carol's sends that passed before the mute reached C, then the
        // approved one, once.
        let mut texts = Vec::new();
        while texts.last().map(String::as_str) != Some("needs a look") {
            for d in collect_danmaku(ws, 1).await {
                texts.push(d["text"].as_str().unwrap_or_default().to_owned());
            }
        }
        assert!(
            texts
                .iter()
                .all(|t| t == "still here" || t == "needs a look"),
            "{texts:?}"
        );
        assert_eq!(texts.iter().filter(|t| *t == "needs a look").count(), 1);
    }
    drop(db);
}

/// Admins on two nodes patch different fields of one room at the same
/// moment, round after round: both patches hold, and every node shows
/// both within a second.
#[tokio::test]
async fn room_patches_made_at_once_on_two_nodes_both_hold() {
    let db = Database::shared();
    let cluster = Cluster::start(2, &db.url(), &BrokerKind::Redis.shared());
    let (a, b) = (cluster.node(0), cluster.node(1));
    let room = format!("patch-{}", unique());
    let admin = admin();
    let path = format!("/api/v1/admin/rooms/{room}");
    let patch = |node, body| call(node, Method::PATCH, &path, Some(&admin), Some(body));
    for round in 1..=5u64 {
        let premod = round % 2 == 1;
        let ((status_a, on_a), (status_b, on_b)) = tokio::join!(
            patch(a, json!({ "slow_mode_s": round })),
            patch(b, json!({ "premod": premod })),
        );
        assert_eq!((status_a, status_b), (200, 200), "{on_a} {on_b}");
        let patched = Instant::now();
        for (i, node) in [a, b].into_iter().enumerate() {
            eventually(Duration::from_secs(1), "both patches shown", || async {
                let (_, got) = call(node, Method::GET, &path, Some(&admin), None).await;
                let shown = (
                    got["slow_mode_s"].as_u64(),
                    got["premod"].as_bool(),
                    got["version"].as_u64(),
                );
                if shown == (Some(round), Some(premod), Some(2 * round)) {
                    Ok(())
                } else {
                    Err(format!("round {round}, node {i}: {got}"))
                }
            })
            .await;
        }
        assert!(patched.elapsed() <= Duration::from_secs(1));
    }
    drop(db);
}

/// The broker dies mid-stream: sends keep being acknowledged, `/healthz`
/// says degraded, and once it returns the other nodes' viewers catch up
/// from the store within 10 s although nothing more is sent.
async fn broker_restart(kind: BrokerKind) {
    let db = Database::shared();
    let mut broker = Broker::start(kind);
    let cluster = Cluster::start(2, &db.url(), &broker.url());
    let (a, b) = (cluster.node(0), cluster.node(1));
    let room = format!("bus-{}", unique());
    let (mut on_a, _) = watch(a, &room, None).await;
    let (mut on_b, _) = watch(b, &room, None).await;
    let before = spread_sends(&[a], &room, 20, 5).await;
    assert_eq!(ids(&collect_danmaku(&mut on_b, 20).await), before);

    broker.halt();
    let during = spread_sends(&[a, b], &room, 40, 5).await;
    assert_eq!(
        during,
        (21..=60).collect::<Vec<u64>>(),
        "stored and acknowledged"
    );
    eventually(Duration::from_secs(5), "degraded while away", || async {
        let h = health(a).await;
        match h["status"].as_str() {
            Some("degraded") if h["reason"].as_str().unwrap_or("").starts_with("bus") => Ok(()),
            _ => Err(h.to_string()),
        }
    })
    .await;

    broker.resume();
    let back = Instant::now();
    // A has not been read yet; B was read up to 20.
    for (ws, from) in [(&mut on_a, 1u64), (&mut on_b, 21)] {
        let got = ids(&collect_danmaku(ws, 61 - from as usize).await);
        assert_eq!(got, (from..=60).collect::<Vec<u64>>());
    }
    assert!(
        back.elapsed() < Duration::from_secs(10),
        "caught up in {:?}",
        back.elapsed()
    );
    eventually(Duration::from_secs(5), "ok again", || async {
        match health(b).await["status"].as_str() {
            Some("ok") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let reconnects = crate::server::metric(a, "danmaku_bus_reconnects_total").await;
    assert!(reconnects.unwrap_or(0.0) >= 1.0, "{reconnects:?}");
}

#[tokio::test]
async fn a_redis_restart_loses_nothing() {
    broker_restart(BrokerKind::Redis).await;
}

#[tokio::test]
async fn a_nats_restart_loses_nothing() {
    broker_restart(BrokerKind::Nats).await;
}

/// PostgreSQL stops mid-stream: sends get 503 `store_unavailable` with
/// `Retry-After`, viewers stay, and after it returns every acknowledged
/// send is there and was delivered.
#[tokio::test]
async fn a_postgres_restart_refuses_sends_then_recovers_losing_nothing() {
    let pg = Postgres::start();
    let db = Database::create(&pg.url());
    let cluster = Cluster::start(2, &db.url(), &BrokerKind::Redis.shared());
    let (a, b) = (cluster.node(0), cluster.node(1));
    let room = format!("pg-{}", unique());
    let (mut on_b, _) = watch(b, &room, None).await;
    let mut acked = spread_sends(&[a, b], &room, 20, 4).await;

    pg.halt();
    let mut refused = 0;
    for i in 0..10 {
        let res = http()
            .post(format!("{}/api/v1/rooms/{room}/danmaku", a.url()))
            .json(&json!({ "text": format!("while down {i}") }))
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            201 => acked.push(res.json::<Value>().await.unwrap()["id"].as_u64().unwrap()),
            503 => {
                assert!(res.headers().contains_key("retry-after"));
                let body: Value = res.json().await.unwrap();
                assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
                refused += 1;
            }
            other => panic!("status {other}"),
        }
    }
    assert!(
        refused > 0,
        "PostgreSQL was down: some send must be refused"
    );

    pg.resume();
    eventually(Duration::from_secs(15), "sends taken again", || async {
        match post(a, &room, json!({ "text": "back" })).await {
            (201, body) => {
                let _ = body;
                Ok(())
            }
            (s, body) => Err(format!("{s} {body}")),
        }
    })
    .await;
    let (_, hist) = crate::server::get_json(
        a,
        &format!("/api/v1/rooms/{room}/danmaku?after=0&limit=1000"),
    )
    .await;
    let stored = ids(hist["items"].as_array().unwrap());
    for id in &acked {
        assert!(
            stored.contains(id),
            "acknowledged id {id} is missing from {stored:?}"
        );
    }
    // The viewer on B, connected throughout, got every stored danmaku.
    let got = ids(&collect_danmaku(&mut on_b, stored.len()).await);
    assert_eq!(got, stored);
}

/// A node is SIGKILLed: its viewers reconnect to another node with
/// `since` and miss nothing.
#[tokio::test]
async fn viewers_of_a_killed_node_resume_on_another() {
    let db = Database::shared();
    let mut cluster = Cluster::start(2, &db.url(), &BrokerKind::Nats.shared());
    let room = format!("kill-{}", unique());
    let (mut on_a, _) = watch(cluster.node(0), &room, None).await;
    let first = spread_sends(&[cluster.node(1)], &room, 30, 5).await;
    let seen = ids(&collect_danmaku(&mut on_a, 30).await);
    assert_eq!(seen, first);
    cluster.kill(0);
    let more = spread_sends(&[cluster.node(1)], &room, 30, 5).await;
    let (mut again, hello) = watch(cluster.node(1), &room, Some(*seen.last().unwrap())).await;
    assert_eq!(hello["last_id"], 60, "{hello}");
    assert_eq!(ids(&collect_danmaku(&mut again, 30).await), more);
    let _ = WAIT;
}

/// With Redis, a user's send bucket holds across nodes: spreading sends
/// over three nodes gives no more than the burst, and every refusal says
/// when to come back.
#[tokio::test]
async fn a_users_send_limit_holds_across_nodes_over_redis() {
    let db = Database::shared();
    let limits = "[limits]\nsend_burst = 3\nsend_per_second = 0.1\n";
    let cluster = Cluster::start_with(3, &db.url(), &BrokerKind::Redis.shared(), limits);
    let room = format!("limit-{}", unique());
    let dave = user(&format!("dave-{}", unique()));
    let path = format!("/api/v1/rooms/{room}/danmaku");
    let mut passed = 0;
    for i in 0..9 {
        let node = cluster.node(i % 3);
        let body = json!({ "text": format!("try {i}") });
        let res = http()
            .post(format!("{}{path}", node.url()))
            .bearer_auth(&dave)
            .json(&body)
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            201 => passed += 1,
            429 => {
                let wait: u64 = res.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(wait >= 1, "Retry-After {wait}");
            }
            other => panic!("status {other}"),
        }
    }
    assert_eq!(passed, 3, "the burst of 3, once, over three nodes");
    let fallbacks = crate::server::metric(cluster.node(0), "danmaku_limits_fallbacks_total").await;
    assert_eq!(fallbacks, Some(0.0), "Redis answered every check");
}

/// With Redis, a room's slow mode and the flood guard hold across nodes
/// too: a user's second send, or repeat, is refused on whichever node it
/// lands, with the wait for the interval or the window.
#[tokio::test]
async fn slow_mode_and_the_flood_guard_hold_across_nodes_over_redis() {
    let db = Database::shared();
    // Send buckets big enough not to be what refuses.
    let config = "[limits]\nsend_burst = 100\n[filter]\nflood_window_s = 60\nflood_repeats = 1\n";
    let cluster = Cluster::start_with(3, &db.url(), &BrokerKind::Redis.shared(), config);
    let send = |node: usize, room: &str, token: &str, text: &str| {
        let path = format!("/api/v1/rooms/{room}/danmaku");
        let body = json!({ "text": text });
        let (node, token) = (cluster.node(node), token.to_owned());
        async move { call(node, Method::POST, &path, Some(&token), Some(body)).await }
    };

    let slow = format!("slow-{}", unique());
    let patch = json!({ "slow_mode_s": 30 });
    let path = format!("/api/v1/admin/rooms/{slow}");
    let (status, _) = call(
        cluster.node(0),
        Method::PATCH,
        &path,
        Some(&admin()),
        Some(patch),
    )
    .await;
    assert_eq!(status, 200);
    let frank = user(&format!("frank-{}", unique()));
    // The setting reaches every node within a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(send(1, &slow, &frank, "first").await.0, 201);
    for node in [2, 0, 1] {
        let (status, body) = send(node, &slow, &frank, &format!("again on {node}")).await;
        assert_eq!(status, 429, "node {node}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("slow mode"), "{body}");
        let wait = body["error"]["retry_after_s"].as_u64().unwrap();
        assert!((1..=30).contains(&wait), "{body}");
    }

    let room = format!("flood-{}", unique());
    let erin = user(&format!("erin-{}", unique()));
    assert_eq!(send(0, &room, &erin, "buy now").await.0, 201);
    for node in [1, 2] {
        let (status, body) = send(node, &room, &erin, "BUY  NOW").await;
        assert_eq!(status, 429, "a repeat on node {node}: {body}");
    }
    assert_eq!(send(2, &room, &erin, "something else").await.0, 201);
    let fallbacks = crate::server::metric(cluster.node(0), "danmaku_limits_fallbacks_total").await;
    assert_eq!(fallbacks, Some(0.0), "Redis answered every check");
}

/// An unreachable store or broker at start: one line naming the setting
/// and the address (never the password), exit 1.
#[test]
fn an_unreachable_backend_at_start_is_one_clear_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for (flag, url, names) in [
        (
            "--store-url",
            "postgres://postgres:secret@127.0.0.1:1/x",
            "store.url postgres://127.0.0.1:1/x",
        ),
        (
            "--bus-url",
            "redis://:secret@127.0.0.1:1",
            "bus.url redis://127.0.0.1:1",
        ),
        (
            "--bus-url",
            "nats://127.0.0.1:1",
            "bus.url nats://127.0.0.1:1",
        ),
    ] {
        let out = crate::server::run_cli(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data,
            flag,
            url,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(names) && err.contains("127.0.0.1:1"), "{err}");
        assert!(!err.contains("secret"), "the password is shown: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// Every room of `GET /api/v1/rooms?sort=...` on `server`, one room a page
/// (following `next_cursor`), as (room, online, online_local).
async fn listed_rooms(server: &Server, sort: &str) -> Result<Vec<(String, u64, u64)>, String> {
    let mut rooms = Vec::new();
    let mut query = format!("sort={sort}&limit=1");
    loop {
        let (status, page) = get_json(server, &format!("/api/v1/rooms?{query}")).await;
        if status != 200 {
            return Err(format!("{status}: {page}"));
        }
        let got = page["rooms"].as_array().ok_or(format!("{page}"))?;
        rooms.extend(got.iter().map(|r| {
            (
                r["room"].as_str().unwrap_or_default().to_owned(),
                r["online"].as_u64().unwrap_or(0),
                r["online_local"].as_u64().unwrap_or(0),
            )
        }));
        match page["next_cursor"].as_str() {
            Some(cursor) if rooms.len() <= 10 => {
                query = format!("sort={sort}&limit=1&cursor={cursor}")
            }
            Some(_) => return Err(format!("no end: {rooms:?}")),
            None => return Ok(rooms),
        }
    }
}

/// Every node lists the cluster's rooms, with their viewers here and
/// elsewhere, page by page in either order; a room whose last viewer (on
/// another node) left drops out of the list.
#[tokio::test]
async fn every_node_lists_the_rooms_watched_on_any_node() {
    let db = Database::shared();
    let cluster = Cluster::start(2, &db.url(), &BrokerKind::Redis.shared());
    let (a, b) = (cluster.node(0), cluster.node(1));
    let id = unique();
    let (x, y) = (format!("list-x-{id}"), format!("list-y-{id}"));
    let (_on_a, _) = watch(a, &x, None).await;
    let (on_b, _) = watch(b, &y, None).await;
    for (node, name, x_local, y_local) in [(a, "A", 1, 0), (b, "B", 0, 1)] {
        let want = vec![(x.clone(), 1, x_local), (y.clone(), 1, y_local)];
        for sort in ["name", "online"] {
            eventually(Duration::from_secs(10), "the cluster's rooms", || async {
                match listed_rooms(node, sort).await? {
                    rooms if rooms == want => Ok(()),
                    other => Err(format!("node {name}, sort={sort}: {other:?}")),
                }
            })
            .await;
        }
    }
    drop(on_b);
    let want = vec![(x.clone(), 1, 1)];
    eventually(Duration::from_secs(15), "the room left", || async {
        match listed_rooms(a, "name").await? {
            rooms if rooms == want => Ok(()),
            other => Err(format!("node A: {other:?}")),
        }
    })
    .await;
    assert_eq!(listed_rooms(a, "online").await.unwrap(), want);
}
