//! The Redis bus: Redis pub/sub.
//!
//! Channels are `{ns}:room:{room}` for a room and `{ns}:global` for
//! moderation; the namespace (`danmaku` in production) keeps clusters (and
//! tests) that share a Redis apart, since pub/sub ignores the database
//! number. Payloads are [`Envelope`]s as JSON.
//!
//! Each bus holds two connections: a pub/sub connection, read by one task
//! (so events reach the sink in the order Redis sent them) that also makes
//! the subscription changes, in the order they were asked for; and a
//! multiplexed connection for `PUBLISH`, since a subscribed connection
//! cannot publish. The task pings every second, so a broker that hangs
//! without closing the socket is noticed too. When either connection is
//! lost the bus is degraded: publishes fail at once, and the task opens
//! both connections again with backoff, subscribes to the global channel
//! and every wanted room, clears the degradation and only then tells the
//! sink [`EventSink::reconnected`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client, Msg, RedisError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{
    backoff, shown, Bus, BusError, Envelope, EventSink, Topic, BROKER_TIMEOUT, CONNECT_TIMEOUT,
};

/// How often the pub/sub connection is pinged: a broker that does not
/// answer within [`BROKER_TIMEOUT`] is taken as lost.
const PING_EVERY: Duration = Duration::from_secs(1);

/// One node's connection to a Redis used as the bus.
pub struct RedisBus {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    reader: JoinHandle<()>,
}

/// What the bus and its task share.
struct Shared {
    namespace: String,
    sink: Arc<dyn EventSink>,
    /// The broker's `host:port`, for errors and logs.
    address: String,
    link: Mutex<Link>,
    /// The rooms the node wants to hear: the task subscribes to them again
    /// after a reconnection.
    wanted: Mutex<HashSet<String>>,
    undecodable: AtomicU64,
}

/// The state of the connections.
struct Link {
    /// The connection for `PUBLISH`, while the broker is there.
    publisher: Option<MultiplexedConnection>,
    /// Why the broker is away, if it is.
    degraded: Option<String>,
}

/// What the bus asks of its task.
enum Command {
    /// Make the subscription to `room` match whether it is wanted, and say
    /// how that went (unless no one waits).
    Sync {
        room: String,
        done: Option<oneshot::Sender<Result<(), BusError>>>,
    },
    /// The publishing connection broke: open both connections again.
    Reset(String),
}

impl RedisBus {
    /// Connects to the Redis at `url` (`redis://host:port`), delivering
    /// what it hears on `namespace`'s channels to `sink`. Fails with a
    /// [`BusError::Setup`] for a URL that is not Redis's, and a
    /// [`BusError::Unavailable`] when the broker does not answer within
    /// 5 s; after that, the bus reconnects by itself.
    pub async fn connect(
        url: &str,
        namespace: &str,
        sink: Arc<dyn EventSink>,
    ) -> Result<RedisBus, BusError> {
        let client = Client::open(url).map_err(|e| {
            BusError::Setup(format!(
                "bus.url {} is not a usable Redis URL: {e}",
                shown(url)
            ))
        })?;
        let address = client.get_connection_info().addr().to_string();
        let shared = Arc::new(Shared {
            namespace: namespace.to_owned(),
            sink,
            address,
            link: Mutex::new(Link {
                publisher: None,
                degraded: None,
            }),
            wanted: Mutex::new(HashSet::new()),
            undecodable: AtomicU64::new(0),
        });
        let (session, publisher) = tokio::time::timeout(CONNECT_TIMEOUT, open(&client, &shared))
            .await
            .map_err(|_| {
                BusError::Unavailable(format!(
                    "Redis at {} did not answer within {} s",
                    shared.address,
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| {
                BusError::Unavailable(format!("Redis at {} is not reachable: {e}", shared.address))
            })?;
        shared.link().publisher = Some(publisher);
        let (commands, received) = mpsc::unbounded_channel();
        let reader = tokio::spawn(run(shared.clone(), client, received, session));
        Ok(RedisBus {
            shared,
            commands,
            reader,
        })
    }

    /// How many received messages were not envelopes (and were dropped).
    pub fn undecodable(&self) -> u64 {
        self.shared.undecodable.load(Ordering::Relaxed)
    }

    /// Records whether `room` is wanted and has the task make it so:
    /// waits for the broker when it is there; when it is away, the task
    /// does it on reconnection, and a wanted room is an error meanwhile.
    async fn change(&self, room: &str, want: bool) -> Result<(), BusError> {
        {
            let mut wanted = self.shared.wanted();
            if want {
                wanted.insert(room.to_owned());
            } else {
                wanted.remove(room);
            }
        }
        if let Some(reason) = self.degraded() {
            // Queued all the same: a reconnection already under way may
            // have read the wanted rooms before this change.
            let _ = self.commands.send(Command::Sync {
                room: room.to_owned(),
                done: None,
            });
            return if want {
                Err(BusError::Unavailable(format!(
                    "{reason}; {room} is subscribed when it returns"
                )))
            } else {
                Ok(())
            };
        }
        let (done, result) = oneshot::channel();
        self.commands
            .send(Command::Sync {
                room: room.to_owned(),
                done: Some(done),
            })
            .map_err(|_| self.shared.unavailable("the bus has stopped"))?;
        match tokio::time::timeout(BROKER_TIMEOUT, result).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(self.shared.unavailable("the bus has stopped")),
            Err(_) => Err(self.shared.unavailable("no answer within 2 s")),
        }
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        // The task owns the pub/sub connection: ending it closes that one;
        // the publishing one goes with `shared`.
        self.reader.abort();
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError> {
        let payload = serde_json::to_vec(envelope)
            .map_err(|e| BusError::Setup(format!("cannot encode an event: {e}")))?;
        let channel = self.shared.channel(&envelope.event.topic());
        let publisher = self.shared.link().publisher.clone();
        let Some(mut publisher) = publisher else {
            return Err(BusError::Unavailable(self.degraded().unwrap_or_default()));
        };
        let mut command = redis::cmd("PUBLISH");
        command.arg(&channel).arg(payload);
        let sent = command.query_async::<i64>(&mut publisher);
        match tokio::time::timeout(BROKER_TIMEOUT, sent).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                if is_lost(&e) {
                    let _ = self
                        .commands
                        .send(Command::Reset(format!("publish failed: {e}")));
                }
                Err(self.shared.unavailable(&e.to_string()))
            }
            Err(_) => Err(self.shared.unavailable("no answer to PUBLISH within 2 s")),
        }
    }

    async fn subscribe(&self, room: &str) -> Result<(), BusError> {
        self.change(room, true).await
    }

    async fn unsubscribe(&self, room: &str) -> Result<(), BusError> {
        self.change(room, false).await
    }

    fn degraded(&self) -> Option<String> {
        self.shared.link().degraded.clone()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

impl Shared {
    fn link(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wanted(&self) -> MutexGuard<'_, HashSet<String>> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn channel(&self, topic: &Topic) -> String {
        match topic {
            Topic::Room(room) => format!("{}:room:{room}", self.namespace),
            Topic::Global => format!("{}:global", self.namespace),
        }
    }

    fn unavailable(&self, why: &str) -> BusError {
        BusError::Unavailable(format!("Redis at {}: {why}", self.address))
    }

    /// The broker is away: publishes fail from now on.
    fn lose(&self, why: &str) {
        let mut link = self.link();
        link.publisher = None;
        link.degraded = Some(format!("Redis at {}: {why}", self.address));
    }
}

/// Whether `e` means the connection is gone (rather than one command
/// failing).
fn is_lost(e: &RedisError) -> bool {
    e.is_unrecoverable_error() || e.is_connection_dropped() || e.is_io_error()
}

/// The pub/sub side of one connection to the broker.
struct Session {
    sink: PubSubSink,
    stream: PubSubStream,
    /// The channels subscribed on this connection, the global one included.
    subscribed: HashSet<String>,
}

/// Opens both connections and subscribes to the global channel and every
/// wanted room.
async fn open(
    client: &Client,
    shared: &Shared,
) -> Result<(Session, MultiplexedConnection), String> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(BROKER_TIMEOUT))
        .set_response_timeout(Some(BROKER_TIMEOUT));
    let publisher = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sink, stream) = tokio::time::timeout(BROKER_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| "no answer within 2 s".to_owned())?
        .map_err(|e| e.to_string())?
        .split();
    let mut subscribed: HashSet<String> = shared
        .wanted()
        .iter()
        .map(|room| shared.channel(&Topic::Room(room.clone())))
        .collect();
    subscribed.insert(shared.channel(&Topic::Global));
    let channels: Vec<&String> = subscribed.iter().collect();
    tokio::time::timeout(BROKER_TIMEOUT, sink.subscribe(&channels))
        .await
        .map_err(|_| "no answer to SUBSCRIBE within 2 s".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok((
        Session {
            sink,
            stream,
            subscribed,
        },
        publisher,
    ))
}

/// The bus's task: serves a session until its connection is lost, then
/// opens another, until the bus is dropped.
async fn run(
    shared: Arc<Shared>,
    client: Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut session: Session,
) {
    loop {
        let Some(why) = session.serve(&shared, &mut commands).await else {
            return;
        };
        tracing::warn!(broker = %shared.address, reason = %why, "lost the Redis bus; reconnecting");
        shared.lose(&why);
        let Some(next) = reconnect(&shared, &client, &mut commands).await else {
            return;
        };
        session = next;
        tracing::info!(broker = %shared.address, "the Redis bus is back");
        shared.sink.reconnected();
    }
}

/// Opens a session again, waiting longer after each failure, and refusing
/// the commands that come meanwhile. Returns `None` when the bus is
/// dropped.
async fn reconnect(
    shared: &Shared,
    client: &Client,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Option<Session> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let pause = tokio::time::sleep(backoff(attempt));
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                command = commands.recv() => match command? {
                    // The next session subscribes to every wanted room.
                    Command::Sync { done: Some(done), .. } => {
                        let _ = done.send(Err(BusError::Unavailable(
                            shared.link().degraded.clone().unwrap_or_default(),
                        )));
                    }
                    Command::Sync { done: None, .. } | Command::Reset(_) => {}
                },
            }
        }
        match open(client, shared).await {
            Ok((session, publisher)) => {
                let mut link = shared.link();
                link.publisher = Some(publisher);
                link.degraded = None;
                return Some(session);
            }
            Err(why) => {
                tracing::debug!(broker = %shared.address, attempt, error = %why, "cannot reconnect to the Redis bus");
                shared.lose(&format!("reconnecting: {why}"));
            }
        }
    }
}

impl Session {
    /// Delivers messages and makes subscription changes until the
    /// connection is lost (returns why) or the bus is dropped (`None`).
    async fn serve(
        &mut self,
        shared: &Shared,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Option<String> {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = self.stream.next() => match message {
                    Some(message) => self.deliver(shared, &message),
                    None => return Some("connection lost".to_owned()),
                },
                command = commands.recv() => match command? {
                    Command::Sync { room, done } => {
                        let outcome = self.sync(shared, &room).await;
                        let lost = outcome.as_ref().err().cloned();
                        if let Some(done) = done {
                            let _ = done.send(outcome.map_err(|e| shared.unavailable(&e)));
                        }
                        if let Some(why) = lost {
                            return Some(why);
                        }
                    }
                    Command::Reset(why) => return Some(why),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(BROKER_TIMEOUT, self.sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Some(format!("PING failed: {e}")),
                        Err(_) => return Some("no answer to PING within 2 s".to_owned()),
                    }
                }
            }
        }
    }

    /// Subscribes to or unsubscribes from `room` as it is wanted now. An
    /// error means the connection is no longer usable.
    async fn sync(&mut self, shared: &Shared, room: &str) -> Result<(), String> {
        let channel = shared.channel(&Topic::Room(room.to_owned()));
        let want = shared.wanted().contains(room);
        if want == self.subscribed.contains(&channel) {
            return Ok(());
        }
        let changed = if want {
            tokio::time::timeout(BROKER_TIMEOUT, self.sink.subscribe(&channel)).await
        } else {
            tokio::time::timeout(BROKER_TIMEOUT, self.sink.unsubscribe(&channel)).await
        };
        match changed {
            Ok(Ok(())) => {
                if want {
                    self.subscribed.insert(channel);
                } else {
                    self.subscribed.remove(&channel);
                }
                Ok(())
            }
            Ok(Err(e)) => Err(format!("cannot change a subscription: {e}")),
            Err(_) => Err("no answer to a subscription change within 2 s".to_owned()),
        }
    }

    /// Hands a message to the sink, unless its room was unsubscribed since
    /// Redis sent it or it is not an envelope.
    fn deliver(&self, shared: &Shared, message: &Msg) {
        let channel = message.get_channel_name();
        if !self.subscribed.contains(channel) {
            return;
        }
        match serde_json::from_slice::<Envelope>(message.get_payload_bytes()) {
            Ok(envelope) => shared.sink.receive(envelope),
            Err(e) => {
                shared.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(channel, error = %e, "dropped a bus message that is not an event");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::RedisBus;
    use crate::bus::conformance::{self, Backend, Recorder};
    use crate::bus::{BusError, EventSink};
    use crate::testing::Throwaway;

    struct Redis;

    impl Backend for Redis {
        type Bus = RedisBus;
        const BROKER: &'static str = "Redis";
        const SCHEME: &'static str = "redis";
        const PORT: u16 = 6379;

        async fn connect(
            url: &str,
            namespace: &str,
            sink: Arc<dyn EventSink>,
        ) -> Result<RedisBus, BusError> {
            RedisBus::connect(url, namespace, sink).await
        }

        async fn server() -> Throwaway {
            Throwaway::redis().await
        }

        async fn publish_raw(url: &str, namespace: &str, payloads: &[&[u8]]) {
            let client = redis::Client::open(url).expect("a Redis URL");
            let mut raw = client
                .get_multiplexed_async_connection()
                .await
                .unwrap_or_else(|e| panic!("Redis at {url} is not reachable: {e}"));
            for payload in payloads {
                redis::cmd("PUBLISH")
                    .arg(format!("{namespace}:global"))
                    .arg(*payload)
                    .query_async::<i64>(&mut raw)
                    .await
                    .expect("raw publish");
            }
        }

        fn undecodable(bus: &RedisBus) -> u64 {
            bus.undecodable()
        }
    }

    conformance::suite!(Redis);

    #[tokio::test]
    async fn a_url_that_is_not_redis_s_fails_clearly() {
        let e = RedisBus::connect("redis//127.0.0.1:6379", "t", Arc::new(Recorder::default()))
            .await
            .err();
        assert!(matches!(e, Some(BusError::Setup(_))), "{e:?}");
    }
}
