//! `ingest`: HTTP POST sends, each acknowledged only once durable.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::progress::{Counters, Progress};
use super::report::{latency_histogram, Report};
use super::target::Target;

/// Runs `concurrency` closed-loop senders for `duration` seconds.
pub async fn run(
    target: &Target,
    addr: SocketAddr,
    concurrency: usize,
    duration: f64,
) -> anyhow::Result<Report> {
    let counters = Arc::new(Counters::default());
    let _progress = Progress::start("ingest", counters.clone());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let url = format!("http://{addr}/api/v1/rooms/ingest/danmaku");
    let cpu_before = target.cpu_seconds();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(duration);
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let (client, url, counters) = (client.clone(), url.clone(), counters.clone());
            tokio::spawn(async move {
                let mut latency = latency_histogram();
                let (mut ok, mut errors) = (0u64, 0u64);
                let body = format!(r#"{{"text":"ingest {i}"}}"#);
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let res = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match res {
                        Ok(r) if r.status() == 201 => {
                            let _ = r.bytes().await;
                            let _ = latency.record(sent.elapsed().as_micros().max(1) as u64);
                            ok += 1;
                            counters.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => errors += 1,
                    }
                }
                counters.record(&latency);
                (ok, errors)
            })
        })
        .collect();
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (o, e) = t.await?;
        ok += o;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut report = Report {
        scenario: "ingest",
        connections: Some(concurrency),
        sent: Some(ok),
        acked_per_s: Some(ok as f64 / elapsed),
        errors: Some(errors),
        elapsed_s: Some(elapsed),
        server_rss_bytes: target.rss_bytes(),
        server_cpu_s: target.cpu_seconds().zip(cpu_before).map(|(a, b)| a - b),
        ..Report::default()
    };
    if let Some(h) = counters.latency.lock().expect("latency lock").as_ref() {
        report.set_latency(h);
    }
    Ok(report)
}
