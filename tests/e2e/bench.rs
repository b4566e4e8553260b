//! `danmaku bench` against a real server: its figures match what happened.

use serde_json::{json, Value};

use crate::server::*;

const SECRET: &str = "a-bench-test-secret-of-32-bytes-or-more";

/// Runs `danmaku bench --url SERVER --json ARGS`: exactly one JSON object on stdout.
fn bench(server: &Server, args: &[&str]) -> Value {
    let url = server.url();
    let mut all = vec!["bench", "--url", &url, "--json"];
    all.extend_from_slice(args);
    run_cli_json(&all)
}

#[tokio::test]
async fn a_short_fanout_reports_exactly_what_was_sent_and_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    // A server it did not start limits it like anyone: it says who it is
    // with a service token, as README tells.
    let config = format!("[auth]\nhs256_secret = \"{SECRET}\"\n");
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let service = token(
        SECRET,
        json!({"sub": "bench", "role": "service", "exp": now() + 3600}),
    );
    let report = bench(
        &server,
        &[
            "--token",
            &service,
            "fanout",
            "--viewers",
            "20",
            "--senders",
            "2",
            "--rate",
            "100",
            "--duration",
            "2",
            "--room",
            "b",
        ],
    );
    let (_, room) = get_json(&server, "/api/v1/rooms/b").await;
    assert_eq!(report["scenario"], "fanout");
    assert_eq!(
        report["sent"], room["last_id"],
        "sent counts every stored danmaku"
    );
    assert!(report["sent"].as_u64().unwrap() >= 150);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert_eq!(report["lagged"], 0);
    assert_eq!(report["viewers"], 20);
    assert!(report["delivered_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["p99_ms"].as_f64().is_some());
    // A server it did not start: its memory and CPU are unknown, not invented.
    assert!(report["server_rss_bytes"].is_null());
    assert!(report["server_cpu_s"].is_null());
    server.stop();
}

#[tokio::test]
async fn a_slow_viewer_shows_up_as_lagged_not_as_silent_loss() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[fanout]\nring_frames = 16\nmax_queued_bytes = 16384\nmax_frame_bytes = 2048\nmax_lags = 1\n{EXEMPT_LOOPBACK}"
    );
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let report = bench(
        &server,
        &[
            "fanout",
            "--viewers",
            "6",
            "--slow-viewers",
            "2",
            "--senders",
            "2",
            "--rate",
            "1000",
            "--duration",
            "3",
        ],
    );
    assert!(report["lagged"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["lost"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["duplicated"], 0);
    server.stop();
}

/// A one-second ingest run: a few hundred sends, far past a user's burst.
const SHORT_INGEST: &[&str] = &["ingest", "--concurrency", "2", "--duration", "1"];

#[tokio::test]
async fn a_bench_the_server_rate_limits_fails_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    // Defaults: loopback is limited like any address, and no token.
    let server = Server::start(&dir.path().join("data"), None);
    let url = server.url();
    let out = run_cli(&[&["bench", "--url", &url, "--json"], SHORT_INGEST].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("rate-limited the bench"), "{stderr}");
    assert!(stderr.contains("--token"), "{stderr}");
    // The report still came, with the refusals counted as errors.
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["errors"].as_u64().unwrap() > 0, "{report}");
    server.stop();
}

#[tokio::test]
async fn the_bench_exempts_the_server_it_starts() {
    // No --url: the bench starts its own server, and must not be limited
    // by it (a burst of 3 sends per user would otherwise end it at once).
    let report = run_cli_json(&[&["bench", "--json"], SHORT_INGEST].concat());
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["sent"].as_u64().unwrap() > 100, "{report}");
    assert!(report["server_rss_bytes"].as_u64().is_some());
}

#[tokio::test]
async fn a_short_soak_samples_the_servers_memory_and_files_and_loses_nothing() {
    // The bench starts its own server here: /proc is readable only for it.
    let report = run_cli_json(&[
        "bench",
        "--json",
        "soak",
        "--duration",
        "3",
        "--viewers",
        "20",
        "--rate",
        "100",
        "--senders",
        "2",
        "--churn",
        "10",
        "--rooms",
        "3",
        "--sample-every",
        "0.5",
    ]);
    assert_eq!(report["scenario"], "soak");
    assert!(report["sent"].as_u64().unwrap() >= 250, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let soak = &report["soak"];
    assert!(soak["churned"].as_u64().unwrap() > 10, "{soak}");
    let samples = soak["samples"].as_array().unwrap();
    assert!(samples.len() >= 5, "{soak}");
    for s in samples {
        assert!(s["rss_bytes"].as_u64().unwrap() > 1 << 20, "{s}");
        assert!(s["fds"].as_u64().unwrap() > 0, "{s}");
    }
    // The viewers' sockets were all open at the peak, and all closed after:
    // what stays is the store's bounded pool of readers (a database and a
    // WAL file each), not one file per read or per viewer.
    let (before, peak, after) = (
        soak["fds_before"].as_u64().unwrap(),
        soak["fds_peak"].as_u64().unwrap(),
        soak["fds_after"].as_u64().unwrap(),
    );
    assert!(peak >= before + 20, "{soak}");
    assert!(after <= before + 8, "{soak}");
}

#[tokio::test]
async fn a_fanout_over_two_nodes_reports_each_node_and_keeps_a_room_on_its_node() {
    // Two nodes without a store or bus URL are two independent servers,
    // not a cluster. Room "hot" hashes to the first node (`--place room`),
    // where the one sender goes too (senders are dealt over the nodes in
    // turn from the first), so the run is still exact, and it shows the
    // bench driving and reading each node.
    let report = run_cli_json(&[
        "bench",
        "--json",
        "--nodes",
        "2",
        "--place",
        "room",
        "fanout",
        "--viewers",
        "10",
        "--senders",
        "1",
        "--rate",
        "50",
        "--duration",
        "1",
        "--room",
        "hot",
    ]);
    assert_eq!(report["nodes"], 2, "{report}");
    assert_eq!(report["store"], "sqlite");
    assert_eq!(report["bus"], "memory");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    assert_eq!(report["sent"], 50, "{report}");
    let nodes = report["per_node"].as_array().unwrap();
    let ids: Vec<&str> = nodes
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["bench-1", "bench-2"]);
    for n in nodes {
        assert!(n["rss_bytes"].as_u64().unwrap() > 1 << 20, "{n}");
        assert!(n["cpu_s"].as_f64().is_some(), "{n}");
        assert!(n["open_files"].as_u64().unwrap() > 0, "{n}");
        assert_eq!(n["bus_received"], 0, "no broker: {n}");
    }
    // The room's node stored and delivered everything, the other nothing.
    let (home, other) = (&nodes[0], &nodes[1]);
    assert_eq!(home["received"], 50, "{home}");
    assert!(home["commits"].as_u64().unwrap() >= 1, "{home}");
    assert!(home["deliveries"].as_u64().unwrap() >= 500, "{home}");
    assert!(home["open_files_peak"].as_u64().unwrap() >= 10, "{home}");
    assert_eq!(other["received"], 0, "{other}");
    assert_eq!(other["deliveries"], 0, "{other}");
    assert_eq!(report["broker_received_per_node"], json!([0, 0]));
    // Nothing heard over a broker: no share to speak of, and no PostgreSQL.
    assert!(report["broker_share_max"].is_null(), "{report}");
    assert!(report["pg_commits_per_s"].is_null(), "{report}");
}

#[tokio::test]
async fn connections_from_two_generator_processes_are_counted_online_and_all_receive() {
    // 200 viewers in 4 rooms held by two child processes, over two
    // independent nodes: idle-0 and idle-2 hash to the first, idle-1 and
    // idle-3 to the second. Then 40 danmaku over HTTP, to the rooms and
    // the nodes in turn: send n goes to room n % 4 on node n % 2, its
    // room's node, so every viewer can receive every one of its room's.
    let report = run_cli_json(&[
        "bench",
        "--json",
        "--nodes",
        "2",
        "--place",
        "room",
        "connect",
        "--connections",
        "200",
        "--rooms",
        "4",
        "--rate",
        "40",
        "--duration",
        "1",
        "--procs",
        "2",
    ]);
    assert_eq!(report["procs"], 2, "{report}");
    assert_eq!(report["connections"], 200, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["online_mismatches"], 0, "{report}");
    assert_eq!(report["sent"], 40, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    // Every viewer received its room's 10 danmaku.
    assert_eq!(report["delivered_per_s"], 2000.0, "{report}");
    assert!(report["p99_ms"].as_f64().is_some(), "{report}");
    let nodes = report["per_node"].as_array().unwrap();
    for n in nodes {
        assert_eq!(n["received"], 20, "two rooms' sends on each node: {n}");
        assert!(n["open_files_peak"].as_u64().unwrap() >= 100, "{n}");
    }
}

#[tokio::test]
async fn bilibili_viewers_lose_nothing_and_read_fewer_bytes_than_json_ones() {
    let dir = tempfile::tempdir().unwrap();
    // A room of a few hundred viewers gets a frame per danmaku at the
    // default writes_per_s; at 1,000 writes/s its frames carry several, as
    // a 10,000-viewer room's do by default, which is where brotli pays.
    let config = format!("[fanout]\nwrites_per_s = 1000\n{EXEMPT_LOOPBACK}");
    let server = Server::start(&dir.path().join("data"), Some(&config));
    let fanout = |protocol: &str| {
        bench(
            &server,
            &[
                "fanout",
                "--protocol",
                protocol,
                "--room",
                "7100",
                "--viewers",
                "300",
                "--senders",
                "4",
                "--rate",
                "300",
                "--duration",
                "3",
            ],
        )
    };
    let bilibili = fanout("bilibili");
    assert_eq!(bilibili["protocol"], "bilibili");
    assert_eq!(bilibili["errors"], 0, "{bilibili}");
    assert_eq!(bilibili["lost"], 0, "{bilibili}");
    assert_eq!(bilibili["duplicated"], 0, "{bilibili}");
    assert_eq!(bilibili["viewers"], 300);
    let sent = bilibili["sent"].as_f64().unwrap();
    assert!(sent >= 800.0, "{bilibili}");
    // Every viewer received every danmaku.
    let delivered = bilibili["delivered_per_s"].as_f64().unwrap() * 3.0;
    assert_eq!(delivered.round(), sent * 300.0, "{bilibili}");
    assert!(
        bilibili["p99_ms"].as_f64().is_some(),
        "latency from the stamps"
    );

    let json = fanout("json");
    assert_eq!(json["protocol"], "json");
    assert_eq!(json["lost"], 0, "{json}");
    let (b, j) = (
        bilibili["wire_bytes_per_danmaku"].as_f64().unwrap(),
        json["wire_bytes_per_danmaku"].as_f64().unwrap(),
    );
    assert!(b > 0.0 && b < j, "bilibili {b} B/danmaku, json {j}");

    // The room has history now, which Bilibili viewers are not sent: they
    // count from the room's newest id, and nothing before it is lost.
    let again = fanout("bilibili");
    assert_eq!(
        (&again["lost"], &again["errors"]),
        (&json!(0), &json!(0)),
        "{again}"
    );
    assert!(again["delivered_per_s"].as_f64().unwrap() > 0.0);
    server.stop();

    // /sub names rooms by number: another room is refused before any
    // node starts.
    let out = run_cli(&[
        "bench",
        "fanout",
        "--protocol",
        "bilibili",
        "--room",
        "hall",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("numeric --room"));
}
