//! The NATS bus: core NATS subjects (no JetStream: the store is the truth).
//!
//! Subjects are `{ns}.room.{token}` for a room and `{ns}.global` for
//! moderation, where the namespace (`danmaku` in production) keeps clusters
//! (and tests) that share a server apart. A room name may hold `.`, which
//! NATS reads as a token separator, so the token is the room name with each
//! `.` written `~`, a character room names cannot contain: `a.b` is
//! `danmaku.room.a~b`, and no two rooms share a subject. Payloads are
//! [`Envelope`]s as JSON.
//!
//! One client connection carries everything, in plain TCP: no TLS
//! certificates are configured, so a `tls://` URL is refused, and a server
//! that demands TLS fails the connection with the TLS error. The client reconnects by
//! itself (100 ms doubling to 2 s, forever) and subscribes again to what it
//! was subscribed to; its events tell this bus when it was disconnected
//! and when it is back. After a subscription change, and after a
//! reconnection before the bus clears the degradation and tells the sink
//! [`EventSink::reconnected`], the bus makes a round trip to the server, so
//! that the server has the subscriptions when the node reads what it
//! missed from the store.
//! One task reads every subscription, so the events of a topic reach the
//! sink in the order the server sent them.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::client::{PublishErrorKind, RequestErrorKind};
use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, ServerAddr, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamMap;

use super::{
    backoff, shown, Bus, BusError, Envelope, EventSink, Topic, BROKER_TIMEOUT, CONNECT_TIMEOUT,
};

/// How often the client pings the server: after two unanswered pings it
/// takes the server as lost, so a hung server is noticed within about 3 s.
const PING_EVERY: Duration = Duration::from_secs(1);

/// One node's connection to a NATS server used as the bus.
pub struct NatsBus {
    client: Client,
    shared: Arc<Shared>,
    changes: mpsc::UnboundedSender<Change>,
    /// The rooms subscribed to, changed by one caller at a time so that
    /// concurrent calls for one room end as the last one asked.
    rooms: tokio::sync::Mutex<HashSet<String>>,
    reader: JoinHandle<()>,
    watcher: JoinHandle<()>,
}

/// What the bus and its tasks share.
struct Shared {
    namespace: String,
    sink: Arc<dyn EventSink>,
    /// The server's `host:port`, for errors and logs.
    address: String,
    degraded: Mutex<Option<String>>,
    undecodable: AtomicU64,
}

/// A subscription change for the reader, keyed by subject.
enum Change {
    Add(String, Subscriber),
    /// Drops the subscription (the client unsubscribes), then says so.
    Remove(String, oneshot::Sender<()>),
}

impl NatsBus {
    /// Connects to the NATS server at `url` (`nats://host:port`),
    /// delivering what it hears on `namespace`'s subjects to `sink`. Fails
    /// with a [`BusError::Setup`] for a URL or namespace NATS cannot use,
    /// and a [`BusError::Unavailable`] when the server does not answer
    /// within 5 s; after that, the bus reconnects by itself.
    pub async fn connect(
        url: &str,
        namespace: &str,
        sink: Arc<dyn EventSink>,
    ) -> Result<NatsBus, BusError> {
        let server = ServerAddr::from_str(url).map_err(|e| {
            BusError::Setup(format!(
                "bus.url {} is not a usable NATS URL: {e}",
                shown(url)
            ))
        })?;
        if server.tls_required() {
            return Err(BusError::Setup(format!(
                "bus.url {}: TLS to NATS is not built in (use nats://)",
                shown(url)
            )));
        }
        let subject_safe = namespace.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
        });
        if !subject_safe {
            return Err(BusError::Setup(format!(
                "the bus namespace {namespace:?} is not a NATS subject prefix"
            )));
        }
        let shared = Arc::new(Shared {
            namespace: namespace.to_owned(),
            sink,
            address: format!("{}:{}", server.host(), server.port()),
            degraded: Mutex::new(None),
            undecodable: AtomicU64::new(0),
        });
        let (events, heard) = mpsc::unbounded_channel();
        let options = ConnectOptions::new()
            .name(format!("danmaku bus ({namespace})"))
            .connection_timeout(BROKER_TIMEOUT)
            .ping_interval(PING_EVERY)
            .max_reconnects(None)
            .reconnect_delay_callback(|attempt| backoff(u32::try_from(attempt).unwrap_or(u32::MAX)))
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    let _ = events.send(event);
                }
            });
        let unreachable = |why: String| {
            BusError::Unavailable(format!(
                "NATS at {} is not reachable: {why}",
                shared.address
            ))
        };
        let started = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let client = options
                .connect(server)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let global = client
                .subscribe(shared.subject(&Topic::Global))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            round_trip(&client, &shared).await?;
            Ok((client, global))
        })
        .await;
        let (client, global) = started.unwrap_or_else(|_| {
            Err(BusError::Unavailable(format!(
                "NATS at {} did not answer within {} s",
                shared.address,
                CONNECT_TIMEOUT.as_secs()
            )))
        })?;
        let (changes, received) = mpsc::unbounded_channel();
        let global_subject = shared.subject(&Topic::Global);
        let reader = tokio::spawn(read(shared.clone(), global_subject, global, received));
        let watcher = tokio::spawn(watch(shared.clone(), client.clone(), heard));
        Ok(NatsBus {
            client,
            shared,
            changes,
            rooms: tokio::sync::Mutex::new(HashSet::new()),
            reader,
            watcher,
        })
    }

    /// How many received messages were not envelopes (and were dropped).
    pub fn undecodable(&self) -> u64 {
        self.shared.undecodable.load(Ordering::Relaxed)
    }

    /// The subject of a room, or why the room cannot have one.
    fn room_subject(&self, room: &str) -> Result<String, BusError> {
        crate::guard::check_room(room)
            .map_err(|e| BusError::Setup(format!("room {room:?}: {}", e.message)))?;
        Ok(self.shared.subject(&Topic::Room(room.to_owned())))
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        // The tasks hold the subscriptions and a client: once they and
        // `self.client` are gone, the client closes its connection.
        self.reader.abort();
        self.watcher.abort();
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError> {
        if let Some(reason) = self.degraded() {
            // The client would queue it until the server returns; the node
            // prefers to know now (the store has it anyway).
            return Err(BusError::Unavailable(reason));
        }
        let subject = match envelope.event.topic() {
            Topic::Room(room) => self.room_subject(&room)?,
            Topic::Global => self.shared.subject(&Topic::Global),
        };
        let payload = serde_json::to_vec(envelope)
            .map_err(|e| BusError::Setup(format!("cannot encode an event: {e}")))?;
        match tokio::time::timeout(BROKER_TIMEOUT, self.client.publish(subject, payload.into()))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                Err(BusError::Setup(format!(
                    "an event is larger than NATS at {} accepts: {e}",
                    self.shared.address
                )))
            }
            Ok(Err(e)) => Err(self.shared.unavailable(&e.to_string())),
            Err(_) => Err(self.shared.unavailable("no room to publish within 2 s")),
        }
    }

    async fn subscribe(&self, room: &str) -> Result<(), BusError> {
        let subject = self.room_subject(room)?;
        let mut rooms = self.rooms.lock().await;
        if !rooms.contains(room) {
            let subscriber =
                match tokio::time::timeout(BROKER_TIMEOUT, self.client.subscribe(subject.clone()))
                    .await
                {
                    Ok(Ok(subscriber)) => subscriber,
                    Ok(Err(e)) => return Err(self.shared.unavailable(&e.to_string())),
                    Err(_) => {
                        return Err(self.shared.unavailable("no room to subscribe within 2 s"))
                    }
                };
            self.changes
                .send(Change::Add(subject, subscriber))
                .map_err(|_| self.shared.unavailable("the bus has stopped"))?;
            rooms.insert(room.to_owned());
        }
        if let Some(reason) = self.degraded() {
            // The client subscribes when it reconnects.
            return Err(BusError::Unavailable(format!(
                "{reason}; {room} is subscribed when it returns"
            )));
        }
        round_trip(&self.client, &self.shared).await
    }

    async fn unsubscribe(&self, room: &str) -> Result<(), BusError> {
        let subject = self.room_subject(room)?;
        let mut rooms = self.rooms.lock().await;
        if !rooms.remove(room) {
            return Ok(());
        }
        let (done, removed) = oneshot::channel();
        self.changes
            .send(Change::Remove(subject, done))
            .map_err(|_| self.shared.unavailable("the bus has stopped"))?;
        // The reader drops the subscription (the client then sends UNSUB)
        // at once: it does not wait for the broker.
        let _ = removed.await;
        if self.degraded().is_some() {
            // A dropped subscription is not sent again on reconnection.
            return Ok(());
        }
        round_trip(&self.client, &self.shared).await
    }

    fn degraded(&self) -> Option<String> {
        self.shared.degraded().clone()
    }

    fn kind(&self) -> &'static str {
        "nats"
    }
}

impl Shared {
    fn degraded(&self) -> MutexGuard<'_, Option<String>> {
        self.degraded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subject(&self, topic: &Topic) -> String {
        match topic {
            Topic::Room(room) => format!("{}.room.{}", self.namespace, room.replace('.', "~")),
            Topic::Global => format!("{}.global", self.namespace),
        }
    }

    fn unavailable(&self, why: &str) -> BusError {
        BusError::Unavailable(format!("NATS at {}: {why}", self.address))
    }
}

/// Waits until the server has handled everything `client` sent before,
/// so that a subscription change is in effect. `flush` is not enough: it
/// only writes the client's buffer to the socket. A request that no one
/// answers is: the server refuses it ("no responders") after it handled
/// what came before it on the connection.
async fn round_trip(client: &Client, shared: &Shared) -> Result<(), BusError> {
    let probe = client.request(format!("{}.probe", shared.namespace), Bytes::new());
    match tokio::time::timeout(BROKER_TIMEOUT, probe).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
        Ok(Err(e)) => Err(shared.unavailable(&e.to_string())),
        Err(_) => Err(shared.unavailable("no answer within 2 s")),
    }
}

/// Reads every subscription and hands what it hears to the sink, until the
/// bus is dropped.
async fn read(
    shared: Arc<Shared>,
    global_subject: String,
    global: Subscriber,
    mut changes: mpsc::UnboundedReceiver<Change>,
) {
    let mut subscriptions = StreamMap::new();
    subscriptions.insert(global_subject, global);
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Some(Change::Add(subject, subscriber)) => {
                    subscriptions.insert(subject, subscriber);
                }
                Some(Change::Remove(subject, done)) => {
                    subscriptions.remove(&subject);
                    let _ = done.send(());
                }
                None => return,
            },
            Some((subject, message)) = subscriptions.next() => {
                match serde_json::from_slice::<Envelope>(&message.payload) {
                    Ok(envelope) => shared.sink.receive(envelope),
                    Err(e) => {
                        shared.undecodable.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(subject, error = %e, "dropped a bus message that is not an event");
                    }
                }
            }
        }
    }
}

/// Follows the client's connection events: degraded while disconnected;
/// back (and the sink told) once the server has the subscriptions again.
async fn watch(shared: Arc<Shared>, client: Client, mut events: mpsc::UnboundedReceiver<Event>) {
    let mut lost = false;
    while let Some(event) = events.recv().await {
        match event {
            Event::Disconnected => {
                lost = true;
                tracing::warn!(broker = %shared.address, "lost the NATS bus; reconnecting");
                *shared.degraded() = Some(format!(
                    "NATS at {}: connection lost; reconnecting",
                    shared.address
                ));
            }
            Event::Connected if lost => loop {
                // The client has queued the subscriptions again; a round
                // trip makes sure the server has them before the node
                // catches up, so nothing falls between the two.
                match round_trip(&client, &shared).await {
                    Ok(()) => {
                        lost = false;
                        *shared.degraded() = None;
                        tracing::info!(broker = %shared.address, "the NATS bus is back");
                        shared.sink.reconnected();
                        break;
                    }
                    // Lost again: the next events say when it is back.
                    _ if client.connection_state() != State::Connected => break,
                    _ => {}
                }
            },
            Event::ClientError(e) if lost => {
                *shared.degraded() = Some(format!(
                    "NATS at {}: connection lost; reconnecting: {e}",
                    shared.address
                ));
            }
            Event::Closed => {
                *shared.degraded() = Some(format!("NATS at {}: connection closed", shared.address));
            }
            Event::SlowConsumer(sid) => {
                tracing::warn!(broker = %shared.address, sid, "the bus reader fell behind; NATS dropped events (rooms fill the gaps from the store)");
            }
            Event::ServerError(e) => {
                tracing::warn!(broker = %shared.address, error = %e, "NATS server error");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::NatsBus;
    use crate::bus::conformance::{self, Backend, Nodes, Recorder};
    use crate::bus::{Bus, BusError, EventSink};
    use crate::testing::Throwaway;

    struct Nats;

    impl Backend for Nats {
        type Bus = NatsBus;
        const BROKER: &'static str = "NATS";
        const SCHEME: &'static str = "nats";
        const PORT: u16 = 4222;

        async fn connect(
            url: &str,
            namespace: &str,
            sink: Arc<dyn EventSink>,
        ) -> Result<NatsBus, BusError> {
            NatsBus::connect(url, namespace, sink).await
        }

        async fn server() -> Throwaway {
            Throwaway::nats(false).await
        }

        async fn publish_raw(url: &str, namespace: &str, payloads: &[&[u8]]) {
            let raw = async_nats::connect(url)
                .await
                .unwrap_or_else(|e| panic!("NATS at {url} is not reachable: {e}"));
            for payload in payloads {
                raw.publish(format!("{namespace}.global"), payload.to_vec().into())
                    .await
                    .expect("raw publish");
            }
            raw.flush().await.expect("flush");
        }

        fn undecodable(bus: &NatsBus) -> u64 {
            bus.undecodable()
        }
    }

    conformance::suite!(Nats);

    #[tokio::test]
    async fn bad_nats_urls_and_namespaces_fail_clearly() {
        let sink = || Arc::new(Recorder::default());
        let e = NatsBus::connect("nats://127.0.0.1:notaport", "t", sink())
            .await
            .err();
        assert!(matches!(e, Some(BusError::Setup(_))), "{e:?}");
        for namespace in ["", "a..b", "a.*", "with space"] {
            let e = NatsBus::connect("nats://127.0.0.1:4222", namespace, sink())
                .await
                .err();
            assert!(
                matches!(e, Some(BusError::Setup(_))),
                "{namespace:?}: {e:?}"
            );
        }
    }

    #[tokio::test]
    async fn nats_refuses_tls_clearly() {
        let sink = || Arc::new(Recorder::default());
        let e = NatsBus::connect("tls://127.0.0.1:4222", "t", sink())
            .await
            .err();
        assert!(matches!(e, Some(BusError::Setup(_))), "{e:?}");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let made = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl makes the test server's certificate: install openssl");
        assert!(made.status.success(), "openssl: {made:?}");
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let server = Throwaway::start("nats-server", |port| {
            let port = port.to_string();
            [
                "-a",
                "127.0.0.1",
                "-p",
                &port,
                "--tls",
                "--tlscert",
                &cert,
                "--tlskey",
                &key,
            ]
            .map(String::from)
            .to_vec()
        })
        .await;
        let address = format!("127.0.0.1:{}", server.port());
        let e = conformance::refused(
            &address,
            NatsBus::connect(&format!("nats://{address}"), "t", sink()),
        )
        .await;
        // No certificate is configured: the server's is not trusted.
        assert!(
            matches!(e, BusError::Unavailable(_)) && e.to_string().contains("certificate"),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn nats_refuses_a_room_that_is_not_a_room() {
        let bus = Nodes::<Nats>::shared("rooms")
            .connect(Arc::new(Recorder::default()))
            .await;
        for room in ["", "a b", "a.*", "a.>", "...", "x~y"] {
            let e = bus.subscribe(room).await.err();
            assert!(matches!(e, Some(BusError::Setup(_))), "{room:?}: {e:?}");
        }
    }
}
