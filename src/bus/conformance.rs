//! The bus conformance suite: what every [`Bus`] backend must do, as seen
//! by the nodes that use it. Each backend's tests run [`run`] with a
//! [`Cluster`] that connects nodes to one broker; the brokers that can be
//! lost also run [`survives_restart`] against a [`Throwaway`] server.
//!
//! A bus may echo a node's own events back to it (the relay ignores its own
//! origin), so every check looks only at events from other nodes.

use std::marker::PhantomData;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::{Bus, BusError, Envelope, Event, EventSink, MemoryBroker, MemoryBus};
use crate::danmaku::{Color, Danmaku, Mode, NewDanmaku};
use crate::moderation::{Ban, Change, Held, Mute, RoomSettings};
use crate::testing::{namespace, Throwaway};

/// How long a check waits for something that should happen.
const PATIENCE: Duration = Duration::from_secs(10);

/// How long a check waits for something that should not happen, after a
/// later event proved the broker delivered everything before it.
const SETTLE: Duration = Duration::from_millis(300);

/// Connects nodes to one broker.
pub(crate) trait Cluster {
    /// A node's bus that delivers what it hears to `sink`.
    async fn bus(&self, sink: Arc<Recorder>) -> Arc<dyn Bus>;
}

/// A bus backend that talks to a broker server, as its tests see it.
pub(crate) trait Backend {
    /// The backend's bus.
    type Bus: Bus;
    /// The broker's name, in messages ("Redis").
    const BROKER: &'static str;
    /// The scheme of its URLs ("redis").
    const SCHEME: &'static str;
    /// The port of the machine's shared broker.
    const PORT: u16;

    /// Connects a node to the broker at `url`, in `namespace`.
    async fn connect(
        url: &str,
        namespace: &str,
        sink: Arc<dyn EventSink>,
    ) -> Result<Self::Bus, BusError>;

    /// Starts a broker server of the test's own.
    async fn server() -> Throwaway;

    /// Publishes each of `payloads`, as they are, on the global topic of
    /// `namespace`, past the bus.
    async fn publish_raw(url: &str, namespace: &str, payloads: &[&[u8]]);

    /// How many received messages `bus` dropped as not envelopes.
    fn undecodable(bus: &Self::Bus) -> u64;
}

/// Nodes of backend `B` on one broker, in a namespace of their own.
pub(crate) struct Nodes<B> {
    url: String,
    namespace: String,
    backend: PhantomData<B>,
}

impl<B: Backend> Nodes<B> {
    /// Nodes on the machine's shared broker.
    pub(crate) fn shared(test: &str) -> Nodes<B> {
        Nodes::at(&format!("127.0.0.1:{}", B::PORT), test)
    }

    fn at(address: &str, test: &str) -> Nodes<B> {
        Nodes {
            url: format!("{}://{address}", B::SCHEME),
            namespace: namespace(test),
            backend: PhantomData,
        }
    }

    /// A broker server of the test's own, and nodes on it.
    pub(crate) async fn throwaway(test: &str) -> (Throwaway, Nodes<B>) {
        let server = B::server().await;
        let nodes = Nodes::at(&format!("127.0.0.1:{}", server.port()), test);
        (server, nodes)
    }

    /// A node's bus; panics, naming the broker, if it cannot connect.
    pub(crate) async fn connect(&self, sink: Arc<Recorder>) -> B::Bus {
        B::connect(&self.url, &self.namespace, sink)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{} at {} is not reachable: start {}-server ({e})",
                    B::BROKER,
                    self.url,
                    B::SCHEME
                )
            })
    }
}

impl<B: Backend> Cluster for Nodes<B> {
    async fn bus(&self, sink: Arc<Recorder>) -> Arc<dyn Bus> {
        Arc::new(self.connect(sink).await)
    }
}

/// The tests every broker-backed bus runs, named in `$backend`'s module:
/// the suite on the shared broker, and a restart and a hang of a broker of
/// its own.
macro_rules! suite {
    ($backend:ty) => {
        #[tokio::test]
        async fn conforms() {
            let nodes = $crate::bus::conformance::Nodes::<$backend>::shared("conforms");
            $crate::bus::conformance::run(&nodes).await;
        }

        #[tokio::test]
        async fn survives_a_restart() {
            let (mut server, nodes) =
                $crate::bus::conformance::Nodes::<$backend>::throwaway("restart").await;
            $crate::bus::conformance::survives_restart(&nodes, &mut server).await;
        }

        #[tokio::test]
        async fn survives_a_hang() {
            let (mut server, nodes) =
                $crate::bus::conformance::Nodes::<$backend>::throwaway("hang").await;
            $crate::bus::conformance::survives_a_hang(&nodes, &mut server).await;
        }

        #[tokio::test]
        async fn drops_what_is_not_an_event() {
            $crate::bus::conformance::drops_what_is_not_an_event::<$backend>().await;
        }

        #[tokio::test]
        async fn unreachable_brokers_fail_clearly_and_quickly() {
            $crate::bus::conformance::unreachable_fails_clearly::<$backend>().await;
        }
    };
}
pub(crate) use suite;

/// Messages on the global topic that are not envelopes are dropped and
/// counted, without degrading the bus; the next event still arrives.
pub(crate) async fn drops_what_is_not_an_event<B: Backend>() {
    let nodes = Nodes::<B>::shared("junk");
    let heard = Arc::new(Recorder::default());
    let bus = nodes.connect(heard.clone()).await;
    B::publish_raw(
        &nodes.url,
        &nodes.namespace,
        &[&b"not json"[..], b"{\"origin\":\"x\"}", b"\xff\xfe"],
    )
    .await;
    let other = nodes.connect(Arc::new(Recorder::default())).await;
    let event = Event::Settled {
        room: "r".into(),
        held: 1,
    };
    other
        .publish(&envelope("other", event.clone()))
        .await
        .expect("publish");
    eventually(
        "the event after the junk arrives",
        Duration::from_secs(5),
        || heard.from("other") == [event.clone()],
    )
    .await;
    assert_eq!(B::undecodable(&bus), 3);
    assert_eq!(bus.degraded(), None);
}

/// Connecting fails within 6 s, naming the broker and not its password,
/// when the broker refuses the connection or never answers.
pub(crate) async fn unreachable_fails_clearly<B: Backend>() {
    let sink = || Arc::new(Recorder::default());
    let scheme = B::SCHEME;
    let e = B::connect(&format!("{scheme}://user:secret@127.0.0.1:1"), "t", sink())
        .await
        .err();
    assert!(
        !format!("{e:?}").contains("secret"),
        "{e:?} shows the password"
    );
    refused(
        "127.0.0.1:1",
        B::connect(&format!("{scheme}://127.0.0.1:1"), "t", sink()),
    )
    .await;
    let (_silent, address) = silent_server().await;
    let e = refused(
        &address,
        B::connect(&format!("{scheme}://{address}"), "t", sink()),
    )
    .await;
    assert!(matches!(e, BusError::Unavailable(_)), "{e:?}");
}

/// A sink that keeps what it is given.
#[derive(Default)]
pub(crate) struct Recorder {
    heard: Mutex<Vec<Envelope>>,
    /// The bus's degradation at each `reconnected` call.
    reconnects: Mutex<Vec<Option<String>>>,
    /// The bus, to read its degradation when it says it is back.
    bus: OnceLock<Weak<dyn Bus>>,
}

impl EventSink for Recorder {
    fn receive(&self, envelope: Envelope) {
        lock(&self.heard).push(envelope);
    }

    fn reconnected(&self) {
        let degraded = self
            .bus
            .get()
            .and_then(Weak::upgrade)
            .and_then(|bus| bus.degraded());
        lock(&self.reconnects).push(degraded);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Recorder {
    /// The events heard from `origin`, in the order heard.
    pub(crate) fn from(&self, origin: &str) -> Vec<Event> {
        lock(&self.heard)
            .iter()
            .filter(|e| e.origin == origin)
            .map(|e| e.event.clone())
            .collect()
    }

    /// Every `reconnected` call so far, with the bus's degradation then.
    pub(crate) fn reconnects(&self) -> Vec<Option<String>> {
        lock(&self.reconnects).clone()
    }
}

/// Waits until `done()` holds; panics saying `what` did not happen.
pub(crate) async fn eventually(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One node: a bus and what it heard.
pub(crate) struct Node {
    name: String,
    bus: Arc<dyn Bus>,
    heard: Arc<Recorder>,
}

impl Node {
    /// Connects a node called `name`.
    pub(crate) async fn join(cluster: &impl Cluster, name: &str) -> Node {
        let heard = Arc::new(Recorder::default());
        let bus = cluster.bus(heard.clone()).await;
        let _ = heard.bus.set(Arc::downgrade(&bus));
        Node {
            name: name.to_owned(),
            bus,
            heard,
        }
    }

    /// Publishes `event` as this node; panics if the bus refuses.
    async fn publish(&self, event: Event) {
        if let Err(e) = self.try_publish(event).await {
            panic!("{} could not publish: {e}", self.name);
        }
    }

    async fn try_publish(&self, event: Event) -> Result<(), BusError> {
        self.bus.publish(&envelope(&self.name, event)).await
    }

    async fn subscribe(&self, room: &str) {
        if let Err(e) = self.bus.subscribe(room).await {
            panic!("{} could not subscribe to {room}: {e}", self.name);
        }
    }

    async fn unsubscribe(&self, room: &str) {
        if let Err(e) = self.bus.unsubscribe(room).await {
            panic!("{} could not unsubscribe from {room}: {e}", self.name);
        }
    }

    /// Waits until this node heard `count` events from `from`.
    async fn hears(&self, from: &Node, count: usize) -> Vec<Event> {
        eventually(
            &format!("{} hears {count} events from {}", self.name, from.name),
            PATIENCE,
            || self.heard.from(&from.name).len() >= count,
        )
        .await;
        self.heard.from(&from.name)
    }

    /// Proves, with a global marker `from` publishes after everything
    /// else, that this node heard nothing more from `from` than `expected`.
    async fn heard_only(&self, from: &Node, expected: &[Event]) {
        let marker = settled(u64::MAX);
        from.publish(marker.clone()).await;
        eventually(
            &format!("{} hears the marker from {}", self.name, from.name),
            PATIENCE,
            || self.heard.from(&from.name).contains(&marker),
        )
        .await;
        tokio::time::sleep(SETTLE).await;
        let heard: Vec<Event> = self
            .heard
            .from(&from.name)
            .into_iter()
            .filter(|e| *e != marker)
            .collect();
        assert_eq!(
            heard, expected,
            "what {} heard from {}",
            self.name, from.name
        );
    }
}

/// A committed danmaku `id` of `room`.
pub(crate) fn committed(room: &str, id: u64) -> Event {
    Event::Committed {
        danmaku: vec![danmaku(room, id)],
    }
}

fn danmaku(room: &str, id: u64) -> Danmaku {
    Danmaku {
        id,
        room: room.to_owned(),
        user: "u-1".to_owned(),
        name: "Ayu 🌸".to_owned(),
        text: format!("comment {id}: \"quoted\" \\ \u{1F600}"),
        mode: Mode::Top,
        color: Color(0x12_34_56),
        size: 25,
        ts: 1_700_000_000_000 + i64::try_from(id).unwrap_or(0),
        vt: id.is_multiple_of(2).then_some(12.5),
        priority: false,
    }
}

/// A global event, distinct per `held`.
fn settled(held: u64) -> Event {
    Event::Settled {
        room: "any".to_owned(),
        held,
    }
}

/// One event of every variant (and every moderation change), in `room`.
fn every_event(room: &str) -> Vec<Event> {
    let changes = [
        Change::Reject { held: 7 },
        Change::Recall {
            room: room.to_owned(),
            id: 3,
        },
        Change::Mute(Mute {
            room: Some(room.to_owned()),
            user: "u-2".to_owned(),
            until: 1_800_000_000_000,
        }),
        Change::Unmute {
            room: None,
            user: "u-2".to_owned(),
        },
        Change::Ban(Ban {
            ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            until: None,
        }),
        Change::Unban(IpAddr::from([192, 0, 2, 7])),
    ];
    let mut events = vec![
        Event::Committed {
            // An admin's danmaku stays one across the broker.
            danmaku: vec![
                danmaku(room, 1),
                Danmaku {
                    priority: true,
                    ..danmaku(room, 2)
                },
            ],
        },
        Event::Recalled {
            room: room.to_owned(),
            ids: vec![1, 2],
        },
        Event::RoomSet {
            settings: RoomSettings {
                room: room.to_owned(),
                closed: true,
                slow_mode_s: 5,
                premod: true,
                version: 7,
            },
        },
        Event::Held {
            held: Held {
                held: 9,
                ts: 1_700_000_000_001,
                danmaku: NewDanmaku {
                    room: room.to_owned(),
                    user: "u-3".to_owned(),
                    name: "Bo".to_owned(),
                    text: "wait for me".to_owned(),
                    mode: Mode::Bottom,
                    color: Color::WHITE,
                    size: 18,
                    vt: Some(0.25),
                    priority: false,
                },
            },
        },
        Event::Settled {
            room: room.to_owned(),
            held: 9,
        },
    ];
    events.extend(
        changes
            .into_iter()
            .map(|change| Event::Moderated { change }),
    );
    events
}

/// Runs every check against nodes of `cluster`.
pub(crate) async fn run(cluster: &impl Cluster) {
    round_trip(cluster).await;
    global_reaches_every_node(cluster).await;
    room_reaches_only_its_subscribers(cluster).await;
    unsubscribe_stops_delivery(cluster).await;
    subscriptions_are_idempotent(cluster).await;
    one_topic_keeps_its_order(cluster).await;
}

/// Every event arrives as it was sent.
async fn round_trip(cluster: &impl Cluster) {
    let a = Node::join(cluster, "round-a").await;
    let b = Node::join(cluster, "round-b").await;
    // Dots at either end and doubled: not a plain NATS token.
    let room = ".round..trip.";
    b.subscribe(room).await;
    let sent = every_event(room);
    for event in &sent {
        a.publish(event.clone()).await;
    }
    let heard = b.hears(&a, sent.len()).await;
    // Room and global events travel on different topics: compare as sets.
    for event in &sent {
        assert!(heard.contains(event), "b never heard {event:?}");
    }
    assert_eq!(heard.len(), sent.len(), "b heard {heard:?}");
    no_degradation(&[&a, &b]);
}

/// A global event reaches a node that subscribed to no room.
async fn global_reaches_every_node(cluster: &impl Cluster) {
    let a = Node::join(cluster, "global-a").await;
    let b = Node::join(cluster, "global-b").await;
    let c = Node::join(cluster, "global-c").await;
    let event = Event::Moderated {
        change: Change::Unban(IpAddr::from([198, 51, 100, 1])),
    };
    a.publish(event.clone()).await;
    assert_eq!(b.hears(&a, 1).await, std::slice::from_ref(&event));
    assert_eq!(c.hears(&a, 1).await, [event]);
}

/// A room's event reaches the nodes subscribed to the room, not the
/// others, nor those subscribed to a room whose name it extends.
async fn room_reaches_only_its_subscribers(cluster: &impl Cluster) {
    let a = Node::join(cluster, "only-a").await;
    let b = Node::join(cluster, "only-b").await;
    let c = Node::join(cluster, "only-c").await;
    let room = "only:room.1";
    b.subscribe(room).await;
    c.subscribe("only:room").await;
    let event = committed(room, 1);
    a.publish(event.clone()).await;
    b.heard_only(&a, std::slice::from_ref(&event)).await;
    c.heard_only(&a, &[]).await;
    no_degradation(&[&a, &b, &c]);
}

/// After `unsubscribe` returns, the room's events no longer arrive.
async fn unsubscribe_stops_delivery(cluster: &impl Cluster) {
    let a = Node::join(cluster, "unsub-a").await;
    let b = Node::join(cluster, "unsub-b").await;
    let room = "unsub-room";
    b.subscribe(room).await;
    a.publish(committed(room, 1)).await;
    b.hears(&a, 1).await;
    b.unsubscribe(room).await;
    a.publish(committed(room, 2)).await;
    b.heard_only(&a, &[committed(room, 1)]).await;
}

/// Subscribing twice delivers once; unsubscribing once stops it;
/// unsubscribing a room never subscribed is fine.
async fn subscriptions_are_idempotent(cluster: &impl Cluster) {
    let a = Node::join(cluster, "idem-a").await;
    let b = Node::join(cluster, "idem-b").await;
    let room = "idem_room";
    b.subscribe(room).await;
    b.subscribe(room).await;
    a.publish(committed(room, 1)).await;
    b.heard_only(&a, &[committed(room, 1)]).await;
    b.unsubscribe(room).await;
    b.unsubscribe(room).await;
    b.unsubscribe("idem-never").await;
    a.publish(committed(room, 2)).await;
    b.heard_only(&a, &[committed(room, 1)]).await;
    no_degradation(&[&a, &b]);
}

/// 1,000 events of one room arrive in the order they were published.
async fn one_topic_keeps_its_order(cluster: &impl Cluster) {
    const COUNT: u64 = 1_000;
    let a = Node::join(cluster, "order-a").await;
    let b = Node::join(cluster, "order-b").await;
    let room = "order-room";
    b.subscribe(room).await;
    for id in 1..=COUNT {
        a.publish(committed(room, id)).await;
    }
    let heard = b.hears(&a, usize::try_from(COUNT).unwrap()).await;
    let ids: Vec<u64> = heard
        .iter()
        .flat_map(|e| match e {
            Event::Committed { danmaku } => danmaku.iter().map(|d| d.id).collect::<Vec<_>>(),
            other => panic!("b heard {other:?}"),
        })
        .collect();
    assert_eq!(ids, (1..=COUNT).collect::<Vec<_>>());
    no_degradation(&[&a, &b]);
}

fn no_degradation(nodes: &[&Node]) {
    for node in nodes {
        assert_eq!(node.bus.degraded(), None, "{} is degraded", node.name);
        assert!(
            node.heard.reconnects().is_empty(),
            "{} reconnected",
            node.name
        );
    }
}

/// The broker of `server` dies and comes back: the nodes of `cluster`
/// (which connect to it) are degraded meanwhile and publish fails fast;
/// then they are whole again, each told once, with their subscriptions,
/// even one asked for while the broker was away.
pub(crate) async fn survives_restart(cluster: &impl Cluster, server: &mut Throwaway) {
    let started = Instant::now();
    let a = Node::join(cluster, "fault-a").await;
    let b = Node::join(cluster, "fault-b").await;
    let room = "fault.room";
    let later = "fault.later";
    a.subscribe(room).await;
    b.publish(committed(room, 1)).await;
    a.hears(&b, 1).await;

    server.kill();
    let killed = Instant::now();
    eventually(
        "both nodes are degraded after the broker died",
        Duration::from_secs(5),
        || a.bus.degraded().is_some() && b.bus.degraded().is_some(),
    )
    .await;
    let noticed = killed.elapsed();
    let publishing = Instant::now();
    let refused = b.try_publish(committed(room, 2)).await;
    let took = publishing.elapsed();
    assert!(refused.is_err(), "publish succeeded with the broker dead");
    assert!(
        took < Duration::from_secs(3),
        "publish took {took:?} to fail"
    );
    let asking = Instant::now();
    let _ = a.bus.subscribe(later).await;
    assert!(asking.elapsed() < Duration::from_secs(3), "subscribe hung");

    server.launch().await;
    let relaunched = Instant::now();
    eventually(
        "both nodes are back after the broker returned",
        PATIENCE,
        || a.bus.degraded().is_none() && b.bus.degraded().is_none(),
    )
    .await;
    let back = relaunched.elapsed();
    eventually("a is told it reconnected", PATIENCE, || {
        !a.heard.reconnects().is_empty()
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    for node in [&a, &b] {
        assert_eq!(
            node.heard.reconnects(),
            [None],
            "{} must be told once, after its degradation cleared",
            node.name
        );
    }
    b.publish(committed(room, 3)).await;
    b.publish(committed(later, 1)).await;
    b.publish(settled(3)).await;
    let heard = a.hears(&b, 4).await;
    for event in [committed(room, 3), committed(later, 1), settled(3)] {
        assert!(
            heard.contains(&event),
            "after the restart a never heard {event:?}"
        );
    }
    eprintln!(
        "{}: degraded {noticed:?} after the kill, publish refused in {took:?}, whole {back:?} after the restart, test {:?}",
        server.program(),
        started.elapsed()
    );
}

/// The broker of `server` hangs and wakes up: the nodes notice without the
/// socket closing (within a few seconds), publish fails fast meanwhile,
/// and they are whole again, each told once, with their subscriptions.
pub(crate) async fn survives_a_hang(cluster: &impl Cluster, server: &mut Throwaway) {
    let started = Instant::now();
    let a = Node::join(cluster, "hang-a").await;
    let b = Node::join(cluster, "hang-b").await;
    let room = "hang-room";
    a.subscribe(room).await;
    b.publish(committed(room, 1)).await;
    a.hears(&b, 1).await;

    server.freeze(true);
    let frozen = Instant::now();
    eventually(
        "both nodes are degraded while the broker hangs",
        Duration::from_secs(6),
        || a.bus.degraded().is_some() && b.bus.degraded().is_some(),
    )
    .await;
    let noticed = frozen.elapsed();
    let publishing = Instant::now();
    let refused = b.try_publish(committed(room, 2)).await;
    let took = publishing.elapsed();
    assert!(refused.is_err(), "publish succeeded with the broker hung");
    assert!(
        took < Duration::from_secs(3),
        "publish took {took:?} to fail"
    );

    server.freeze(false);
    let thawed = Instant::now();
    eventually(
        "both nodes are back after the broker woke up",
        PATIENCE,
        || {
            a.bus.degraded().is_none()
                && b.bus.degraded().is_none()
                && !a.heard.reconnects().is_empty()
                && !b.heard.reconnects().is_empty()
        },
    )
    .await;
    let back = thawed.elapsed();
    tokio::time::sleep(SETTLE).await;
    for node in [&a, &b] {
        assert_eq!(
            node.heard.reconnects(),
            [None],
            "{} must be told once",
            node.name
        );
    }
    b.publish(committed(room, 3)).await;
    let heard = a.hears(&b, 2).await;
    assert!(
        heard.contains(&committed(room, 3)),
        "after the hang a heard {heard:?}"
    );
    eprintln!(
        "{}: degraded {noticed:?} into a hang, publish refused in {took:?}, whole {back:?} after it, test {:?}",
        server.program(),
        started.elapsed()
    );
}

/// Nodes of one process on one [`MemoryBroker`].
struct Memory(Arc<MemoryBroker>);

impl Cluster for Memory {
    async fn bus(&self, sink: Arc<Recorder>) -> Arc<dyn Bus> {
        Arc::new(MemoryBus::connect(self.0.clone(), sink))
    }
}

#[tokio::test]
async fn memory_bus_conforms() {
    run(&Memory(MemoryBroker::new())).await;
}

/// Runs `connect`, which must fail within 6 s with an error naming
/// `address`; returns the error.
pub(crate) async fn refused<T>(
    address: &str,
    connect: impl std::future::Future<Output = Result<T, BusError>>,
) -> BusError {
    let started = Instant::now();
    let Err(e) = connect.await else {
        panic!("connecting to {address} succeeded");
    };
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "connecting to {address} took {:?} to fail",
        started.elapsed()
    );
    assert!(
        e.to_string().contains(address),
        "{e} does not name {address}"
    );
    assert!(!e.to_string().contains('\n'), "{e} is not one line");
    e
}

/// A port that accepts connections and never says a word: a broker that
/// hangs. Keep the listener alive while it is used.
pub(crate) async fn silent_server() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let address = listener.local_addr().expect("its address").to_string();
    (listener, address)
}

/// An envelope a node would publish.
pub(crate) fn envelope(origin: &str, event: Event) -> Envelope {
    Envelope {
        origin: origin.to_owned(),
        event,
    }
}
