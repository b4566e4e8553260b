//! `ingest`: HTTP POST sends, each acknowledged only once durable.
//!
//! Each sender is a plain HTTP/1.1 keep-alive connection written by hand
//! (one request at a time, like a browser tab): a general-purpose client
//! costs more CPU per request than the server's whole path, and would make
//! the generator the limit on a 2-core machine.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::cluster::Cluster;
use super::progress::{Counters, Progress};
use super::report::{latency_histogram, Report};

/// The room every sender posts to.
const ROOM: &str = "ingest";

/// Runs `concurrency` closed-loop senders for `duration` seconds.
pub async fn run(cluster: &Cluster, concurrency: usize, duration: f64) -> anyhow::Result<Report> {
    let counters = Arc::new(Counters::default());
    let _progress = Progress::start("ingest", counters.clone());
    let cpu_before = cluster.cpu_seconds();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(duration);
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let counters = counters.clone();
            let addr = cluster.layout().sender(i);
            tokio::spawn(async move {
                let mut latency = latency_histogram();
                let (mut ok, mut errors) = (0u64, 0u64);
                let body = format!(r#"{{"text":"ingest {i}"}}"#);
                let request = format!(
                    "POST /api/v1/rooms/{ROOM}/danmaku HTTP/1.1\r\nHost: {addr}\r\n{}\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    super::token_header(),
                    body.len()
                );
                let mut conn: Option<(TcpStream, BytesMut)> = None;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    match post(&mut conn, addr, request.as_bytes()).await {
                        Ok(201) => {
                            let _ = latency.record(sent.elapsed().as_micros().max(1) as u64);
                            ok += 1;
                            counters.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(status) => {
                            if status == 429 {
                                super::note_rate_limited();
                            }
                            errors += 1;
                        }
                        Err(_) => {
                            errors += 1;
                            conn = None;
                        }
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
        server_rss_bytes: cluster.rss_bytes(),
        server_cpu_s: cluster.cpu_seconds().zip(cpu_before).map(|(a, b)| a - b),
        ..Report::default()
    };
    if let Some(h) = counters.latency.lock().expect("latency lock").as_ref() {
        report.set_latency(h);
    }
    Ok(report)
}

/// Sends one request on the kept-alive connection (opening it if needed)
/// and returns the response status once the whole response is read.
async fn post(
    conn: &mut Option<(TcpStream, BytesMut)>,
    addr: SocketAddr,
    request: &[u8],
) -> io::Result<u16> {
    if conn.is_none() {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        *conn = Some((stream, BytesMut::with_capacity(4096)));
    }
    let (stream, buf) = conn.as_mut().expect("opened above");
    stream.write_all(request).await?;
    loop {
        if let Some(end) = memmem::find(buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(io::Error::other)?;
            let status = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| io::Error::other("bad status line"))?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .ok_or_else(|| io::Error::other("no content-length"))?;
            if buf.len() >= end + 4 + length {
                buf.advance(end + 4 + length);
                return Ok(status);
            }
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}
