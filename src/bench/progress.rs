//! Live progress: one status line per second on stderr.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Counters the scenario's tasks update and the status line reads.
#[derive(Default)]
pub struct Counters {
    /// Connections open.
    pub connected: AtomicU64,
    /// Danmaku sent (acknowledged).
    pub sent: AtomicU64,
    /// Danmaku received by viewers.
    pub delivered: AtomicU64,
    /// Latencies so far, µs.
    pub latency: Mutex<Option<Histogram<u64>>>,
}

impl Counters {
    /// Records latencies from a viewer or sender.
    pub fn record(&self, h: &Histogram<u64>) {
        let mut shared = self.latency.lock().expect("latency lock");
        match shared.as_mut() {
            Some(all) => {
                let _ = all.add(h);
            }
            None => *shared = Some(h.clone()),
        }
    }

    fn p99_ms(&self) -> Option<f64> {
        let shared = self.latency.lock().expect("latency lock");
        shared
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0)
    }
}

/// Prints the status line every second until dropped.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts printing `label` and the counters.
    pub fn start(label: &'static str, counters: Arc<Counters>) -> Progress {
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let delivered = counters.delivered.load(Ordering::Relaxed);
                let p99 = counters
                    .p99_ms()
                    .map_or("-".into(), |p| format!("{p:.1}ms"));
                eprintln!(
                    "[{label} {:>4.0}s] connected {:>6}  sent {:>8}  delivered/s {:>10}  p99 {p99}",
                    started.elapsed().as_secs_f64(),
                    counters.connected.load(Ordering::Relaxed),
                    counters.sent.load(Ordering::Relaxed),
                    delivered - last,
                );
                last = delivered;
            }
        });
        Progress { task }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}
