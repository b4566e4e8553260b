//! The one suite every presence backend passes: `suite!(backend)` in a
//! backend's tests makes one test per check. Each check works in a
//! namespace of its own (a Redis key prefix, a NATS bucket), so that tests
//! running at once on one broker never see each other's nodes.
//!
//! Also the broker-restart and unreachable-broker checks, for the backends
//! that talk to a server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Counts, MemoryPresence, Presence, PresenceError};
use crate::testing::{free_port, namespace, Throwaway};

/// A backend under test.
#[async_trait]
pub(crate) trait Backend: Sync {
    /// A node's handle on the cluster `namespace`: handles opened with one
    /// namespace see the same reports, as nodes of one cluster do.
    async fn open(&self, namespace: &str) -> Arc<dyn Presence>;

    /// Removes what a check left on the broker beyond its nodes' reports
    /// (which every check removes with `leave`).
    async fn clean(&self, _namespace: &str) {}
}

/// A backend that talks to a broker server, as its tests see it; every
/// one is a [`Backend`] on the machine's shared broker.
#[async_trait]
pub(crate) trait Broker: Send + Sync {
    /// The backend's presence.
    type Presence: Presence;
    /// The scheme of its URLs ("redis").
    const SCHEME: &'static str;
    /// The port of the machine's shared broker.
    const PORT: u16;
    /// How to start the shared broker, for the message when it is missing.
    const START: &'static str;
    /// How long connecting may take to fail when nothing listens.
    const REFUSED_WITHIN: Duration;

    /// Connects to the broker at `url` for the cluster `namespace`.
    async fn connect(url: &str, namespace: &str) -> Result<Self::Presence, PresenceError>;

    /// Starts a broker server of the test's own.
    async fn server() -> Throwaway;

    /// Removes what `presence`'s cluster left on the broker beyond its
    /// nodes' reports.
    async fn clean(_presence: &Self::Presence) {}
}

/// Connects to the broker at `url`; panics, saying how to start it, if it
/// cannot.
async fn connected<B: Broker>(url: &str, namespace: &str) -> B::Presence {
    B::connect(url, namespace)
        .await
        .unwrap_or_else(|e| panic!("{e}: start {}", B::START))
}

fn shared_url<B: Broker>() -> String {
    format!("{}://127.0.0.1:{}", B::SCHEME, B::PORT)
}

#[async_trait]
impl<B: Broker> Backend for B {
    async fn open(&self, namespace: &str) -> Arc<dyn Presence> {
        Arc::new(connected::<B>(&shared_url::<B>(), namespace).await)
    }

    async fn clean(&self, namespace: &str) {
        B::clean(&connected::<B>(&shared_url::<B>(), namespace).await).await;
    }
}

/// The tests of a [`Broker`] backend beyond the suite: a restart of a
/// broker of its own, and a broker that is not there.
macro_rules! broker_suite {
    ($broker:ty) => {
        #[tokio::test]
        async fn comes_back_after_the_server_restarts() {
            $crate::presence::conformance::comes_back_after_a_restart::<$broker>().await;
        }

        #[tokio::test]
        async fn an_unreachable_server_fails_connect_naming_it() {
            $crate::presence::conformance::unreachable_is_named::<$broker>().await;
        }
    };
}
pub(crate) use broker_suite;

/// One test per check of the suite for `$backend`, an expression giving a
/// [`Backend`].
macro_rules! suite {
    ($backend:expr) => {
        #[tokio::test]
        async fn conformance_two_nodes_read_both() {
            $crate::presence::conformance::two_nodes_read_both(&$backend).await;
        }

        #[tokio::test]
        async fn conformance_a_report_replaces_the_last() {
            $crate::presence::conformance::a_report_replaces_the_last(&$backend).await;
        }

        #[tokio::test]
        async fn conformance_leave_removes_a_node_at_once() {
            $crate::presence::conformance::leave_removes_a_node_at_once(&$backend).await;
        }

        #[tokio::test]
        async fn conformance_a_silent_node_drops_out_after_its_ttl() {
            $crate::presence::conformance::a_silent_node_drops_out_after_its_ttl(&$backend).await;
        }

        #[tokio::test]
        async fn conformance_a_report_s_ttl_replaces_the_last() {
            $crate::presence::conformance::a_report_s_ttl_replaces_the_last(&$backend).await;
        }

        #[tokio::test]
        async fn conformance_many_rooms_read_back_exactly() {
            $crate::presence::conformance::many_rooms_read_back_exactly(&$backend).await;
        }
    };
}
pub(crate) use suite;

/// A TTL no check waits out.
const TTL: Duration = Duration::from_secs(30);

/// The TTL of the expiry check: short, to keep the test short.
const SHORT_TTL: Duration = Duration::from_secs(2);

fn counts(pairs: &[(&str, u64)]) -> Counts {
    pairs
        .iter()
        .map(|&(room, n)| (room.to_owned(), n))
        .collect()
}

async fn nodes(presence: &dyn Presence) -> HashMap<String, Counts> {
    presence.nodes().await.expect("nodes")
}

async fn report(presence: &dyn Presence, node: &str, counts: &Counts, ttl: Duration) {
    presence.report(node, counts, ttl).await.expect("report");
}

/// Leaves every node in `nodes` and cleans the namespace.
async fn finish(backend: &impl Backend, ns: &str, presence: &dyn Presence, nodes: &[&str]) {
    for node in nodes {
        presence.leave(node).await.expect("leave");
    }
    backend.clean(ns).await;
}

/// Two nodes report; each reads both reports, and a cluster in another
/// namespace reads neither.
pub(crate) async fn two_nodes_read_both(backend: &impl Backend) {
    let ns = namespace("both");
    let (a, b) = (backend.open(&ns).await, backend.open(&ns).await);
    let of_a = counts(&[("lobby", 2), ("弹幕 \"quoted\"", 1)]);
    let of_b = counts(&[("lobby", 3)]);
    report(&*a, "a:7100", &of_a, TTL).await;
    report(&*b, "b:7100", &of_b, TTL).await;
    let want: HashMap<String, Counts> = [("a:7100".to_owned(), of_a), ("b:7100".to_owned(), of_b)]
        .into_iter()
        .collect();
    assert_eq!(nodes(&*a).await, want);
    assert_eq!(nodes(&*b).await, want);

    let elsewhere = namespace("elsewhere");
    assert_eq!(
        nodes(&*backend.open(&elsewhere).await).await,
        HashMap::new()
    );
    backend.clean(&elsewhere).await;
    finish(backend, &ns, &*a, &["a:7100", "b:7100"]).await;
}

/// A report replaces the node's previous one whole: a room that went to no
/// viewers is gone, and a node with no viewers at all is still listed.
pub(crate) async fn a_report_replaces_the_last(backend: &impl Backend) {
    let ns = namespace("replace");
    let (a, b) = (backend.open(&ns).await, backend.open(&ns).await);
    report(&*a, "a", &counts(&[("r", 2), ("s", 1)]), TTL).await;
    report(&*a, "a", &counts(&[("r", 5)]), TTL).await;
    assert_eq!(nodes(&*b).await["a"], counts(&[("r", 5)]));
    report(&*a, "a", &Counts::new(), TTL).await;
    assert_eq!(nodes(&*b).await["a"], Counts::new());
    finish(backend, &ns, &*a, &["a"]).await;
}

/// `leave` removes a node at once, for every reader; leaving again, or
/// leaving a node that never reported, is not an error.
pub(crate) async fn leave_removes_a_node_at_once(backend: &impl Backend) {
    let ns = namespace("leave");
    let (a, b) = (backend.open(&ns).await, backend.open(&ns).await);
    report(&*a, "a", &counts(&[("r", 1)]), TTL).await;
    report(&*b, "b", &counts(&[("r", 2)]), TTL).await;
    a.leave("a").await.expect("leave");
    let left = nodes(&*b).await;
    assert_eq!(left.keys().collect::<Vec<_>>(), ["b"]);
    a.leave("a").await.expect("leave twice");
    a.leave("never-reported").await.expect("leave a stranger");
    finish(backend, &ns, &*b, &["b"]).await;
}

/// A node that stops reporting drops out once its TTL has passed (not
/// before), while a node that keeps reporting stays.
pub(crate) async fn a_silent_node_drops_out_after_its_ttl(backend: &impl Backend) {
    let ns = namespace("expiry");
    let (a, b) = (backend.open(&ns).await, backend.open(&ns).await);
    let reported = Instant::now();
    report(&*a, "silent", &counts(&[("r", 1)]), SHORT_TTL).await;
    loop {
        report(&*b, "alive", &counts(&[("r", 2)]), SHORT_TTL).await;
        let now = nodes(&*b).await;
        let elapsed = reported.elapsed();
        assert!(now.contains_key("alive"), "the reporting node is missing");
        if !now.contains_key("silent") {
            // The broker timed the report from when it stored it, a little
            // after `reported`.
            assert!(
                elapsed >= SHORT_TTL - Duration::from_millis(200),
                "the silent node dropped out after {elapsed:?}, before its TTL ({SHORT_TTL:?})"
            );
            break;
        }
        assert!(
            elapsed < SHORT_TTL + Duration::from_secs(2),
            "the silent node is still there {elapsed:?} after its report ({SHORT_TTL:?} TTL)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    finish(backend, &ns, &*b, &["alive"]).await;
}

/// A report's TTL replaces the last one's: a node reported for long, then
/// for a short TTL (its configuration changed), drops out after the short
/// one.
pub(crate) async fn a_report_s_ttl_replaces_the_last(backend: &impl Backend) {
    let ns = namespace("new-ttl");
    let (a, b) = (backend.open(&ns).await, backend.open(&ns).await);
    report(&*a, "a", &counts(&[("r", 1)]), TTL).await;
    let reported = Instant::now();
    report(&*a, "a", &counts(&[("r", 1)]), SHORT_TTL).await;
    while nodes(&*b).await.contains_key("a") {
        assert!(
            reported.elapsed() < SHORT_TTL + Duration::from_secs(2),
            "the node is still there {:?} after a report with a {SHORT_TTL:?} TTL",
            reported.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    finish(backend, &ns, &*a, &[]).await;
}

/// Three nodes with 2,000 rooms each read back exactly, and every room's
/// viewers sum right across them.
pub(crate) async fn many_rooms_read_back_exactly(backend: &impl Backend) {
    const NODES: u64 = 3;
    const ROOMS: u64 = 2_000;
    let ns = namespace("many");
    let mut handles = Vec::new();
    let mut want = HashMap::new();
    for i in 0..NODES {
        let node = format!("node-{i}:7100");
        let of_node: Counts = (0..ROOMS)
            .map(|k| (format!("room-{k}"), k % 97 + i + 1))
            .collect();
        want.insert(node.clone(), of_node);
        handles.push((node, backend.open(&ns).await));
    }
    futures_util::future::join_all(
        handles
            .iter()
            .map(|(node, presence)| presence.report(node, &want[node], TTL)),
    )
    .await
    .into_iter()
    .collect::<Result<(), _>>()
    .expect("report");
    for (_, presence) in &handles {
        let read = nodes(&**presence).await;
        assert!(read == want, "a node read other reports than were made");
        let mut sums = Counts::new();
        for (room, n) in read.values().flatten() {
            *sums.entry(room.clone()).or_default() += n;
        }
        assert_eq!(sums.len() as u64, ROOMS);
        for k in 0..ROOMS {
            assert_eq!(sums[&format!("room-{k}")], NODES * (k % 97 + 1) + 3);
        }
    }
    let names: Vec<&str> = handles.iter().map(|(node, _)| node.as_str()).collect();
    finish(backend, &ns, &*handles[0].1, &names).await;
}

/// With `server` killed, `presence` fails fast, as unavailable; once the
/// server is back on the same port, it works again by itself.
pub(crate) async fn recovers_after_broker_restart(server: &mut Throwaway, presence: &dyn Presence) {
    let of_node = counts(&[("r", 4)]);
    report(presence, "n:1", &of_node, TTL).await;
    assert_eq!(nodes(presence).await["n:1"], of_node);

    server.kill();
    let fast = Duration::from_secs(3);
    for _ in 0..2 {
        let started = Instant::now();
        let result = presence.report("n:1", &of_node, TTL).await;
        assert!(
            matches!(result, Err(PresenceError::Unavailable(_))),
            "report with the broker down: {result:?}"
        );
        assert!(
            started.elapsed() < fast,
            "report took {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let result = presence.nodes().await;
        assert!(
            matches!(result, Err(PresenceError::Unavailable(_))),
            "nodes with the broker down: {result:?}"
        );
        assert!(
            started.elapsed() < fast,
            "nodes took {:?}",
            started.elapsed()
        );
    }

    server.restart().await;
    let restarted = Instant::now();
    loop {
        let result = match presence.report("n:1", &of_node, TTL).await {
            Ok(()) => presence.nodes().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(now) if now.get("n:1") == Some(&of_node) => break,
            other if restarted.elapsed() > Duration::from_secs(12) => {
                panic!("still failing 12 s after the broker came back: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// [`recovers_after_broker_restart`] on a broker of the test's own.
pub(crate) async fn comes_back_after_a_restart<B: Broker>() {
    let mut server = B::server().await;
    let url = format!("{}://127.0.0.1:{}", B::SCHEME, server.port());
    let presence = connected::<B>(&url, "restart").await;
    recovers_after_broker_restart(&mut server, &presence).await;
}

/// Connecting where nothing listens fails within the backend's
/// [`Broker::REFUSED_WITHIN`], naming the address.
pub(crate) async fn unreachable_is_named<B: Broker>() {
    let address = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let result = B::connect(&format!("{}://{address}", B::SCHEME), "x").await;
    let Err(e) = result else {
        panic!("connected to {address}, where nothing listens");
    };
    assert!(
        started.elapsed() < B::REFUSED_WITHIN,
        "took {:?} to fail",
        started.elapsed()
    );
    let message = e.to_string();
    assert!(message.contains(&address), "{message}");
}

/// The in-process backend: one map per namespace.
#[derive(Default)]
struct Memory(Mutex<HashMap<String, Arc<MemoryPresence>>>);

#[async_trait]
impl Backend for Memory {
    async fn open(&self, namespace: &str) -> Arc<dyn Presence> {
        let mut clusters = self.0.lock().expect("not poisoned");
        clusters.entry(namespace.to_owned()).or_default().clone()
    }
}

mod memory {
    use super::Memory;

    suite!(Memory::default());
}
