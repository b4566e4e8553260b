//! `danmaku bench` against a real server: its figures match what happened.

use serde_json::Value;

use crate::server::*;

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
    let server = Server::start(&dir.path().join("data"), None);
    let report = bench(
        &server,
        &[
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
    let config = "[fanout]\nring_frames = 16\nmax_queued_bytes = 16384\nmax_frame_bytes = 2048\nmax_lags = 1\n";
    let server = Server::start(&dir.path().join("data"), Some(config));
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
