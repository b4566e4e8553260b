//! Presence in a NATS JetStream key-value bucket, `{namespace}_presence`:
//! one key per node, holding its JSON counts.
//!
//! NATS 2.9 has no per-key TTL (per-message TTLs came with 2.11), so the
//! TTL is the bucket's `max_age`: every entry expires that long after it
//! was put, and a node keeps its entry alive by putting it again every
//! interval. The bucket is created, or its `max_age` updated, from this
//! process's first report's `ttl` (and again if a later report brings
//! another): every node of a cluster must be configured with the same
//! `cluster.presence_ttl_s`, or the last to start sets it for all.
//!
//! The bucket is kept in the server's memory: reports live for seconds,
//! and a restarted server that lost the bucket gets it back from the next
//! report.
//!
//! Keys allow `A-Z a-z 0-9 _ - / = .`; a node id (`host:7100`) is written
//! with every byte other than `A-Z a-z 0-9 _ -` as `=XX` (hex), which
//! reads back exactly.

use std::collections::HashMap;
use std::error::Error as _;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind, KeyValueError};
use async_nats::jetstream::kv::Store;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{ConnectOptions, ServerAddr};
use async_trait::async_trait;
use futures_util::TryStreamExt;
use serde::de::IgnoredAny;

use super::{
    bounded, decode, encode, Counts, Presence, PresenceError, CALL_TIMEOUT, CONNECT_TIMEOUT,
};

/// Presence in a JetStream KV bucket, shared by every node of a cluster.
pub struct NatsPresence {
    js: jetstream::Context,
    /// `{namespace}_presence`.
    bucket: String,
    /// "NATS at host:port", for errors.
    broker: String,
    /// The bucket as this process last created or updated it, with the
    /// `max_age` it gave it. Forgotten when a put fails: the server may
    /// have restarted without it.
    store: Mutex<Option<(Store, Duration)>>,
}

impl NatsPresence {
    /// Connects to the NATS server at `url` (`nats://host:port`), with
    /// JetStream enabled, for the cluster named `namespace` (letters,
    /// digits, `_`, `-`). Fails within 5 s if it cannot be reached; once
    /// connected, the client reconnects by itself.
    pub async fn connect(url: &str, namespace: &str) -> Result<NatsPresence, PresenceError> {
        let bucket = format!("{namespace}_presence");
        if namespace.is_empty()
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(PresenceError::Config(format!(
                "the NATS namespace {namespace:?} must be letters, digits, '_' or '-'"
            )));
        }
        let addr: ServerAddr = url
            .parse()
            .map_err(|e| PresenceError::Config(format!("{url:?} is not a NATS URL: {e}")))?;
        let broker = format!("NATS at {}:{}", addr.host(), addr.port());
        let unreachable =
            |why: String| PresenceError::Unavailable(format!("{broker} is not reachable: {why}"));
        let client = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectOptions::new()
                .name("danmaku presence")
                .connection_timeout(CONNECT_TIMEOUT)
                .request_timeout(Some(CALL_TIMEOUT))
                .connect(addr),
        )
        .await
        .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
        let mut js = jetstream::new(client);
        js.set_timeout(CALL_TIMEOUT);
        // Asked now so that a server without JetStream fails the start,
        // not every report.
        js.request::<_, _, Response<IgnoredAny>>("INFO", &())
            .await
            .map_err(|e| e.to_string())
            .and_then(|response| match response {
                Response::Ok(_) => Ok(()),
                Response::Err { error } => Err(error.to_string()),
            })
            .map_err(|e| {
                PresenceError::Unavailable(format!(
                    "{broker} has no JetStream (start nats-server with -js): {e}"
                ))
            })?;
        Ok(NatsPresence {
            js,
            bucket,
            broker,
            store: Mutex::new(None),
        })
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> PresenceError {
        PresenceError::Unavailable(format!("{}: {e}", self.broker))
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Option<(Store, Duration)>> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the bucket, or sets its `max_age` to `ttl`.
    ///
    /// As a stream with the configuration async-nats gives a KV bucket
    /// (`kv_to_stream_config`), created here because its own
    /// `create_key_value` first asks for the account's details in a shape
    /// NATS 2.9 does not answer (`reserved_memory` came with 2.10).
    async fn set_up(&self, ttl: Duration) -> Result<Store, PresenceError> {
        self.js
            .create_or_update_stream(stream::Config {
                name: format!("KV_{}", self.bucket),
                description: Some("danmaku presence: each node's viewers by room".into()),
                subjects: vec![format!("$KV.{}.>", self.bucket)],
                // Only a node's latest report counts.
                max_messages_per_subject: 1,
                max_age: ttl,
                storage: StorageType::Memory,
                num_replicas: 1,
                discard: DiscardPolicy::New,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| self.unavailable(e))?;
        let store = self
            .js
            .get_key_value(self.bucket.as_str())
            .await
            .map_err(|e| self.unavailable(e))?;
        *self.cached() = Some((store.clone(), ttl));
        Ok(store)
    }

    /// The bucket as set up for `ttl`, setting it up if it is not.
    async fn store_for(&self, ttl: Duration) -> Result<Store, PresenceError> {
        let cached = self.cached().clone();
        match cached {
            Some((store, max_age)) if max_age == ttl => Ok(store),
            _ => self.set_up(ttl).await,
        }
    }

    /// The bucket, or `None` if no node has reported yet.
    async fn existing(&self) -> Result<Option<Store>, PresenceError> {
        if let Some((store, _)) = self.cached().clone() {
            return Ok(Some(store));
        }
        match self.js.get_key_value(self.bucket.as_str()).await {
            Ok(store) => Ok(Some(store)),
            Err(e) if no_such_bucket(&e) => Ok(None),
            Err(e) => Err(self.unavailable(e)),
        }
    }
}

#[async_trait]
impl Presence for NatsPresence {
    async fn report(
        &self,
        node: &str,
        counts: &Counts,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let key = key_of(node);
        let value = bytes::Bytes::from(encode(counts));
        bounded(&self.broker, async {
            let store = self.store_for(ttl).await?;
            if store.put(&key, value.clone()).await.is_ok() {
                return Ok(());
            }
            // The server may have restarted without the bucket (it is
            // kept in memory): set it up again and put once more.
            *self.cached() = None;
            let store = self.set_up(ttl).await?;
            store
                .put(&key, value)
                .await
                .map_err(|e| self.unavailable(e))?;
            Ok(())
        })
        .await
    }

    async fn nodes(&self) -> Result<HashMap<String, Counts>, PresenceError> {
        bounded(&self.broker, async {
            let Some(store) = self.existing().await? else {
                return Ok(HashMap::new());
            };
            // Deleted and purged keys (nodes that left) are not listed.
            let keys: Vec<String> = store
                .keys()
                .await
                .map_err(|e| self.unavailable(e))?
                .try_collect()
                .await
                .map_err(|e| self.unavailable(e))?;
            let values =
                futures_util::future::join_all(keys.iter().map(|key| store.get(key.as_str())))
                    .await;
            let mut nodes = HashMap::with_capacity(keys.len());
            for (key, value) in keys.iter().zip(values) {
                // None: expired or removed since it was listed.
                let Some(value) = value.map_err(|e| self.unavailable(e))? else {
                    continue;
                };
                let Some(node) = node_of(key) else {
                    tracing::warn!(key, "presence: ignoring a key that is not a node id");
                    continue;
                };
                if let Some(counts) = decode(&node, &value) {
                    nodes.insert(node, counts);
                }
            }
            Ok(nodes)
        })
        .await
    }

    async fn leave(&self, node: &str) -> Result<(), PresenceError> {
        bounded(&self.broker, async {
            let Some(store) = self.existing().await? else {
                return Ok(());
            };
            store
                .purge(key_of(node))
                .await
                .map_err(|e| self.unavailable(e))
        })
        .await
    }
}

/// Whether getting the bucket failed because it does not exist (rather
/// than because the server could not be asked).
fn no_such_bucket(e: &KeyValueError) -> bool {
    e.source()
        .and_then(|source| source.downcast_ref::<GetStreamError>())
        .is_some_and(|e| {
            matches!(e.kind(), GetStreamErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
        })
}

/// The key of `node`: its bytes, each one a key may not hold (or `=`)
/// written `=XX`.
fn key_of(node: &str) -> String {
    let mut key = String::with_capacity(node.len());
    for b in node.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            key.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(key, "={b:02X}");
        }
    }
    key
}

/// The node id a key was made from, or `None` if no `key_of` makes it.
fn node_of(key: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(key.len());
    let mut rest = key.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'=' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::conformance::{self, Broker};
    use crate::testing::Throwaway;

    struct Nats;

    #[async_trait]
    impl Broker for Nats {
        type Presence = NatsPresence;
        const SCHEME: &'static str = "nats";
        const PORT: u16 = 4222;
        const START: &'static str = "NATS with JetStream (nats-server -js -p 4222)";
        const REFUSED_WITHIN: Duration = Duration::from_secs(6);

        async fn connect(url: &str, namespace: &str) -> Result<NatsPresence, PresenceError> {
            NatsPresence::connect(url, namespace).await
        }

        async fn server() -> Throwaway {
            Throwaway::nats(true).await
        }

        async fn clean(presence: &NatsPresence) {
            // Gone already is as good.
            let _ = presence.js.delete_key_value(&presence.bucket).await;
        }
    }

    conformance::suite!(Nats);
    conformance::broker_suite!(Nats);

    #[tokio::test]
    async fn a_namespace_a_bucket_cannot_be_named_after_is_refused() {
        let Err(e) = NatsPresence::connect("nats://127.0.0.1:4222", "dan maku").await else {
            panic!("accepted a namespace with a space");
        };
        assert!(matches!(e, PresenceError::Config(_)), "{e}");
    }

    #[test]
    fn node_ids_make_valid_keys_that_read_back() {
        for node in ["host:7100", "a.b/c=d", "=41", "plain-id_1", "é~ !"] {
            let key = key_of(node);
            assert!(key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-=".contains(&b)));
            assert_eq!(node_of(&key).as_deref(), Some(node));
        }
        assert_ne!(key_of("=41"), key_of("A"));
        assert_eq!(node_of("=4"), None);
    }
}
