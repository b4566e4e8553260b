//! Presence in Redis, under a namespace (`danmaku` in production):
//!
//! - `{ns}:presence:node:{node}` holds the node's JSON counts, set with
//!   `SET … PX ttl` so that Redis expires a node that stops reporting;
//! - `{ns}:presence:nodes` is the set of the node ids that have reported,
//!   so that a read needs no `SCAN` over the keyspace.
//!
//! A member of the set whose key is gone has expired: a read removes it.
//! The read is one Lua script, so it runs atomically: a node reporting
//! again at the same instant is either read or not yet expired, and is
//! never removed from the set while its key exists. The script reads keys
//! it is not passed (one per node), which a single Redis (with or without
//! replicas) allows and Redis Cluster does not.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncConnectionConfig;

use super::{
    bounded, decode, encode, Counts, Presence, PresenceError, CALL_TIMEOUT, CONNECT_TIMEOUT,
};

/// Every live node's report, as `node, report, node, report, …`; drops
/// the members of the set (`KEYS[1]`) whose key (`ARGV[1]` .. node) is
/// gone.
const READ: &str = r"
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local report = redis.call('GET', ARGV[1] .. node)
  if report then
    out[#out + 1] = node
    out[#out + 1] = report
  else
    redis.call('SREM', KEYS[1], node)
  end
end
return out
";

/// The longest wait between two reconnection attempts: short, so that a
/// node counts the cluster again soon after Redis comes back.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// Presence in Redis, shared by every node of a cluster.
pub struct RedisPresence {
    /// Multiplexed, and reconnects by itself after an I/O error.
    conn: ConnectionManager,
    read: redis::Script,
    /// `{ns}:presence:nodes`.
    nodes_key: String,
    /// `{ns}:presence:node:`, before a node id.
    node_prefix: String,
    /// "Redis at host:port", for errors.
    broker: String,
}

impl RedisPresence {
    /// Connects to Redis at `url` (`redis://host:port`) for the cluster
    /// named `namespace`. Fails within 5 s if it cannot be reached; once
    /// connected, it reconnects by itself.
    pub async fn connect(url: &str, namespace: &str) -> Result<RedisPresence, PresenceError> {
        let client = redis::Client::open(url)
            .map_err(|e| PresenceError::Config(format!("{url:?} is not a Redis URL: {e}")))?;
        let broker = format!("Redis at {}", client.get_connection_info().addr());
        let unreachable =
            |why: String| PresenceError::Unavailable(format!("{broker} is not reachable: {why}"));
        // One plain connection first, to fail at once with the reason (a
        // refused connection, an unknown host) where the manager would
        // retry for seconds and then time out.
        let probe = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT));
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&probe),
        )
        .await
        .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_max_delay(RECONNECT_MAX_DELAY);
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
        Ok(RedisPresence {
            conn,
            read: redis::Script::new(READ),
            nodes_key: format!("{namespace}:presence:nodes"),
            node_prefix: format!("{namespace}:presence:node:"),
            broker,
        })
    }

    fn unavailable(&self, e: redis::RedisError) -> PresenceError {
        PresenceError::Unavailable(format!("{}: {e}", self.broker))
    }

    /// `{ns}:presence:node:{node}`.
    fn node_key(&self, node: &str) -> String {
        format!("{}{node}", self.node_prefix)
    }

    /// Runs `pipe` (an atomic one) within [`CALL_TIMEOUT`](super::CALL_TIMEOUT).
    async fn transaction(&self, pipe: &redis::Pipeline) -> Result<(), PresenceError> {
        let mut conn = self.conn.clone();
        bounded(&self.broker, async {
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| self.unavailable(e))
        })
        .await
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn report(
        &self,
        node: &str,
        counts: &Counts,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        // Redis refuses an expiry of 0 and ones past its clock's range; a
        // TTL is seconds to minutes, so the cap (49 days) changes nothing.
        let ttl_ms = ttl.as_millis().clamp(1, u128::from(u32::MAX)) as u64;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.node_key(node))
            .arg(encode(counts))
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("SADD")
            .arg(&self.nodes_key)
            .arg(node)
            .ignore();
        self.transaction(&pipe).await
    }

    async fn nodes(&self) -> Result<HashMap<String, Counts>, PresenceError> {
        let mut conn = self.conn.clone();
        let reports: HashMap<String, Vec<u8>> = bounded(&self.broker, async {
            self.read
                .key(&self.nodes_key)
                .arg(&self.node_prefix)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.unavailable(e))
        })
        .await?;
        Ok(reports
            .into_iter()
            .filter_map(|(node, report)| {
                let counts = decode(&node, &report)?;
                Some((node, counts))
            })
            .collect())
    }

    async fn leave(&self, node: &str) -> Result<(), PresenceError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(self.node_key(node))
            .ignore()
            .cmd("SREM")
            .arg(&self.nodes_key)
            .arg(node)
            .ignore();
        self.transaction(&pipe).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::conformance::{self, Broker};
    use crate::testing::Throwaway;

    struct Redis;

    #[async_trait]
    impl Broker for Redis {
        type Presence = RedisPresence;
        const SCHEME: &'static str = "redis";
        const PORT: u16 = 6379;
        const START: &'static str = "Redis (redis-server --port 6379)";
        // Refused: at once, with the reason.
        const REFUSED_WITHIN: Duration = Duration::from_secs(1);

        async fn connect(url: &str, namespace: &str) -> Result<RedisPresence, PresenceError> {
            RedisPresence::connect(url, namespace).await
        }

        async fn server() -> Throwaway {
            Throwaway::redis().await
        }
    }

    conformance::suite!(Redis);
    conformance::broker_suite!(Redis);

    #[tokio::test]
    async fn a_bad_url_is_a_configuration_error() {
        let Err(e) = RedisPresence::connect("http://127.0.0.1:6379", "x").await else {
            panic!("accepted an http URL");
        };
        assert!(matches!(e, PresenceError::Config(_)), "{e}");
    }
}
