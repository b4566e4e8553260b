//! The PostgreSQL store: one database shared by every node of a cluster.
//!
//! It mirrors the embedded store (`sqlite.rs`) table for table and method
//! for method; what differs is who else writes.
//!
//! Ids: the room row is the sequencer. A group commit bumps each of its
//! rooms' `rooms.last_id` by the number of its sends in that room, inside
//! the transaction that inserts them, and numbers them `last - n + 1 ..=
//! last`. The bump holds the row lock until commit, so commits of several
//! nodes to one room are serialised and their ranges are contiguous; a
//! rolled-back transaction rolls its bump back too, so no id is skipped or
//! used twice. Rooms are bumped in name order, so two nodes never wait on
//! each other's rooms in a cycle.
//!
//! Per node, one writer task owns one connection and drains the bounded
//! send queue into one transaction per group commit (as in SQLite, holds,
//! moderation changes and approvals take their turn in the same queue).
//! Reads use a small pool of their own connections.
//!
//! Faults: a lost connection fails the batch it was writing with
//! [`StoreError::Unavailable`], and so every send until the writer is back:
//! it reconnects by itself, at once and then after 100 ms doubling to 2 s,
//! also while no send arrives. Nothing waits on the database for longer
//! than [`ANSWER_TIMEOUT`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient, NoTls, Row, Transaction};

use super::{
    answer_all, in_chunks, AuditOf, Cause, CommitListener, Density, ModerationStore, Store,
    StoreError,
};
use crate::config::{StoreConfig, Synchronous};
use crate::danmaku::{now_ms, Color, Danmaku, Mode, NewDanmaku};
use crate::metrics::Metrics;
use crate::moderation::{AuditEntry, Ban, Change, Held, Mute, RoomPatch, RoomSettings, Snapshot};

/// The key of the advisory lock that serialises migrations: nodes that
/// start together migrate one after the other ("danmaku" in ASCII).
const MIGRATION_LOCK: i64 = 0x64_61_6e_6d_61_6b_75;

/// The schema, one migration per version (version `i + 1` is
/// `MIGRATIONS[i]`). Applied migrations are never edited: a change of
/// schema is a new entry.
const MIGRATIONS: &[&str] = &[
    // 1: the tables of `sqlite.rs`. `"user"` is quoted: a reserved word.
    "
CREATE TABLE rooms (
    name    TEXT   PRIMARY KEY,
    last_id BIGINT NOT NULL
);
CREATE TABLE danmaku (
    room   TEXT             NOT NULL,
    id     BIGINT           NOT NULL,
    \"user\" TEXT           NOT NULL,
    name   TEXT             NOT NULL,
    text   TEXT             NOT NULL,
    mode   SMALLINT         NOT NULL,
    color  INTEGER          NOT NULL,
    size   INTEGER          NOT NULL,
    ts     BIGINT           NOT NULL,
    vt     DOUBLE PRECISION,
    PRIMARY KEY (room, id)
);
CREATE INDEX danmaku_by_vt ON danmaku (room, vt) WHERE vt IS NOT NULL;
-- Moderation. A mute's room is '' for every room (no room name is empty).
CREATE TABLE mutes (
    room   TEXT   NOT NULL,
    \"user\" TEXT NOT NULL,
    until  BIGINT NOT NULL,
    PRIMARY KEY (room, \"user\")
);
CREATE TABLE bans (
    ip    TEXT PRIMARY KEY,
    until BIGINT
);
CREATE TABLE room_settings (
    room        TEXT    PRIMARY KEY,
    closed      BOOLEAN NOT NULL,
    slow_mode_s BIGINT  NOT NULL,
    premod      BOOLEAN NOT NULL
);
CREATE TABLE held (
    hid    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room   TEXT             NOT NULL,
    \"user\" TEXT           NOT NULL,
    name   TEXT             NOT NULL,
    text   TEXT             NOT NULL,
    mode   SMALLINT         NOT NULL,
    color  INTEGER          NOT NULL,
    size   INTEGER          NOT NULL,
    ts     BIGINT           NOT NULL,
    vt     DOUBLE PRECISION
);
CREATE TABLE audit (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts     BIGINT NOT NULL,
    actor  TEXT   NOT NULL,
    action TEXT   NOT NULL,
    room   TEXT,
    target TEXT,
    detail TEXT   NOT NULL
);
",
    // 2: room settings are versioned: each change bumps `version`.
    "ALTER TABLE room_settings ADD COLUMN version BIGINT NOT NULL DEFAULT 0;",
];

/// How long a connection attempt may take, TCP and start-up together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one read or one write transaction may wait for PostgreSQL
/// (including a row lock another node holds for its commit): past it the
/// connection is given up, so that a server that stopped answering fails
/// sends rather than hanging them.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The writer's first wait before reconnecting again after a failed
/// attempt; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between the writer's connection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

const COLUMNS: &str = "id, room, \"user\", name, text, mode, color, size, ts, vt";

/// Numbers and stores a batch in one statement. `bumped` bumps the rooms
/// of the batch (`$1`, ascending, each once) by their send counts (`$2`)
/// and returns each room's new last id; the rows are inserted, and so
/// locked, in `ORDER BY` order, which keeps two nodes from deadlocking.
/// Each send (one array per column) takes its room's new last id less
/// `back`, the number of the room's sends after it in the batch.
///
/// One statement, so outside a transaction it is its own: the room rows
/// stay locked from the bump to the commit's WAL flush and no longer, with
/// no round trip to the node in between. That lock is what serialises a
/// hot room's commits from every node, so its length bounds their rate.
const STORE_NUMBERED: &str = "WITH bumped AS ( \
         INSERT INTO rooms (name, last_id) \
         SELECT name, n FROM unnest($1::text[], $2::int8[]) AS b(name, n) ORDER BY name \
         ON CONFLICT (name) DO UPDATE SET last_id = rooms.last_id + EXCLUDED.last_id \
         RETURNING name, last_id), \
     stored AS ( \
         INSERT INTO danmaku (room, id, \"user\", name, text, mode, color, size, ts, vt) \
         SELECT b.room, bumped.last_id - b.back, b.u, b.name, b.text, b.mode, b.color, \
                b.size, $11, b.vt \
         FROM unnest($3::text[], $4::int8[], $5::text[], $6::text[], $7::text[], \
                     $8::int2[], $9::int4[], $10::int4[], $12::float8[]) \
              AS b(room, back, u, name, text, mode, color, size, vt) \
         JOIN bumped ON bumped.name = b.room) \
     SELECT name, last_id FROM bumped";

/// A query parameter with its PostgreSQL type, so that every statement is
/// one round trip (`query_typed`: no separate prepare).
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A request to the writer task. As in `sqlite.rs`, ops take effect in the
/// order they are queued: appends are gathered for group commit, and a job
/// runs only after the appends queued before it are committed.
enum Op {
    Append {
        new: NewDanmaku,
        reply: Reply<Danmaku>,
    },
    Job(Job),
    /// Commit what is queued, refuse the rest, stop.
    Close {
        done: oneshot::Sender<()>,
    },
}

/// The writes other than appends.
enum Job {
    /// One chunk of an [`Store::append_many`]: committed alone.
    Chunk {
        news: Vec<NewDanmaku>,
        reply: Reply<Vec<Danmaku>>,
    },
    /// An audit entry alone: [`ModerationStore::note`].
    Note {
        entry: AuditEntry,
        reply: Reply<()>,
    },
    Hold {
        new: NewDanmaku,
        reply: Reply<Held>,
    },
    Record {
        change: Change,
        entry: AuditEntry,
        reply: Reply<bool>,
    },
    SetRoom {
        room: String,
        patch: RoomPatch,
        entry: AuditEntry,
        reply: Reply<RoomSettings>,
    },
    Approve {
        held: u64,
        new: NewDanmaku,
        entry: AuditOf,
        reply: Reply<Option<Danmaku>>,
    },
}

/// PostgreSQL-backed [`Store`] and [`ModerationStore`]; several nodes may
/// share one database.
pub struct PostgresStore {
    ops: mpsc::Sender<Op>,
    readers: Readers,
    /// Set by the writer while the database's disk is full.
    full: Arc<AtomicBool>,
    /// `store.max_batch`: the largest chunk of an [`Store::append_many`].
    max_batch: usize,
}

impl PostgresStore {
    /// Connects to the database `url` names, creates or migrates its schema
    /// (safely when several nodes start at once), and starts the writer.
    /// `listener` receives every batch this store commits, in commit order.
    ///
    /// A bad URL is a [`StoreError::Database`]; a server that cannot be
    /// reached is a [`StoreError::Unavailable`].
    pub async fn open(
        url: &str,
        config: &StoreConfig,
        metrics: Arc<Metrics>,
        listener: CommitListener,
    ) -> Result<PostgresStore, StoreError> {
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Database(Arc::new(Failure::Url(e))))?;
        if pg.get_application_name().is_none() {
            pg.application_name("danmaku");
        }
        // A database that vanished without closing its connections (a
        // partition, a dead host) is noticed by TCP within about a minute,
        // not after the kernel's two hours.
        pg.keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(30));
        let mut client = connect_writer(&pg, config.synchronous)
            .await
            .map_err(Failure::classify)?;
        migrate(&mut client).await.map_err(Failure::classify)?;
        let full = Arc::new(AtomicBool::new(false));
        let mut writer = Writer {
            pg: pg.clone(),
            synchronous: config.synchronous,
            link: Link::Up(client),
            backoff: BACKOFF_FIRST,
            on_commit: listener,
            metrics,
            full: full.clone(),
        };
        writer.start_up().await?;
        let (ops, rx) = mpsc::channel(config.queue);
        tokio::spawn(writer.run(rx, config.max_batch));
        Ok(PostgresStore {
            ops,
            readers: Readers {
                pg,
                idle: Mutex::new(Vec::new()),
                most: config.read_connections,
                permits: Semaphore::new(config.read_connections),
            },
            full,
            max_batch: config.max_batch,
        })
    }

    /// Queues the op `op` builds around a reply channel and waits for the
    /// writer's answer.
    async fn ask<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(op(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        // A dropped reply means the writer stopped before doing it.
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn append(&self, new: NewDanmaku) -> Result<Danmaku, StoreError> {
        self.ask(|reply| Op::Append { new, reply }).await
    }

    async fn append_many(&self, news: Vec<NewDanmaku>) -> Result<Vec<Danmaku>, StoreError> {
        in_chunks(news, self.max_batch, move |news| {
            self.ask(move |reply| Op::Job(Job::Chunk { news, reply }))
        })
        .await
    }

    async fn after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Danmaku>, StoreError> {
        // No id lies beyond the largest bigint: nothing follows it.
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let limit = sql_limit(limit);
        self.readers
            .rows(
                &format!(
                    "SELECT {COLUMNS} FROM danmaku WHERE room = $1 AND id > $2 \
                     ORDER BY id LIMIT $3"
                ),
                &[
                    (&room, Type::TEXT),
                    (&after, Type::INT8),
                    (&limit, Type::INT8),
                ],
                danmaku_of,
            )
            .await
    }

    async fn by_video_time(
        &self,
        room: &str,
        from: f64,
        to: f64,
        limit: usize,
    ) -> Result<Vec<Danmaku>, StoreError> {
        let limit = sql_limit(limit);
        self.readers
            .rows(
                &format!(
                    "SELECT {COLUMNS} FROM danmaku WHERE room = $1 AND vt IS NOT NULL \
                     AND vt >= $2 AND vt < $3 ORDER BY vt, id LIMIT $4"
                ),
                &[
                    (&room, Type::TEXT),
                    (&from, Type::FLOAT8),
                    (&to, Type::FLOAT8),
                    (&limit, Type::INT8),
                ],
                danmaku_of,
            )
            .await
    }

    async fn density(
        &self,
        room: &str,
        bucket_s: f64,
        max_buckets: usize,
    ) -> Result<Density, StoreError> {
        // The cap before the cast: a far-off video time in a tiny bucket
        // neither overflows a bigint nor makes millions of groups.
        let cap = max_buckets as f64;
        let groups = self
            .readers
            .rows(
                "SELECT LEAST(floor(vt / $2), $3)::int8 AS bucket, count(*) FROM danmaku \
                 WHERE room = $1 AND vt IS NOT NULL AND vt >= 0 GROUP BY bucket",
                &[
                    (&room, Type::TEXT),
                    (&bucket_s, Type::FLOAT8),
                    (&cap, Type::FLOAT8),
                ],
                |r| Ok((narrow::<i64, u64>(r, 0)?, narrow::<i64, u64>(r, 1)?)),
            )
            .await?;
        Ok(Density::from_groups(groups, max_buckets))
    }

    async fn get(&self, room: &str, id: u64) -> Result<Option<Danmaku>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.readers
            .rows(
                &format!("SELECT {COLUMNS} FROM danmaku WHERE room = $1 AND id = $2"),
                &[(&room, Type::TEXT), (&id, Type::INT8)],
                danmaku_of,
            )
            .await
            .map(|mut found| found.pop())
    }

    async fn last_id(&self, room: &str) -> Result<u64, StoreError> {
        let rows = self
            .readers
            .query(
                "SELECT last_id FROM rooms WHERE name = $1",
                &[(&room, Type::TEXT)],
            )
            .await?;
        match rows.first() {
            Some(row) => column_id(row, 0).map_err(Failure::classify),
            None => Ok(0),
        }
    }

    fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self.ops.send(Op::Close { done }).await.is_ok() {
            let _ = finished.await;
        }
    }
}

#[async_trait]
impl ModerationStore for PostgresStore {
    async fn load_moderation(&self) -> Result<Snapshot, StoreError> {
        let now = now_ms();
        let mutes = self
            .readers
            .rows(
                "SELECT room, \"user\", until FROM mutes WHERE until > $1",
                &[(&now, Type::INT8)],
                |r| {
                    let room: String = r.try_get(0)?;
                    Ok(Mute {
                        room: (!room.is_empty()).then_some(room),
                        user: r.try_get(1)?,
                        until: r.try_get(2)?,
                    })
                },
            )
            .await?;
        let bans = self
            .readers
            .rows(
                "SELECT ip, until FROM bans WHERE until IS NULL OR until > $1",
                &[(&now, Type::INT8)],
                |r| {
                    let ip: String = r.try_get(0)?;
                    let until = r.try_get(1)?;
                    // Only this store writes the column, from an IpAddr.
                    Ok(ip.parse().ok().map(|ip| Ban { ip, until }))
                },
            )
            .await?
            .into_iter()
            .flatten()
            .collect();
        let rooms = self
            .readers
            .rows(
                "SELECT room, closed, slow_mode_s, premod, version FROM room_settings",
                &[],
                |r| room_settings(r.try_get(0)?, r, 1),
            )
            .await?;
        let held = self
            .readers
            .rows(
                "SELECT hid, ts, room, \"user\", name, text, mode, color, size, vt \
                 FROM held ORDER BY hid",
                &[],
                |r| {
                    Ok(Held {
                        held: column_id(r, 0)?,
                        ts: r.try_get(1)?,
                        danmaku: NewDanmaku {
                            room: r.try_get(2)?,
                            user: r.try_get(3)?,
                            name: r.try_get(4)?,
                            text: r.try_get(5)?,
                            mode: mode(r, 6)?,
                            color: Color(narrow::<i32, _>(r, 7)?),
                            size: narrow::<i32, _>(r, 8)?,
                            vt: r.try_get(9)?,
                            // Held sends are never an admin's.
                            priority: false,
                        },
                    })
                },
            )
            .await?;
        Ok(Snapshot {
            mutes,
            bans,
            rooms,
            held,
        })
    }

    async fn hold(&self, new: NewDanmaku) -> Result<Held, StoreError> {
        self.ask(|reply| Op::Job(Job::Hold { new, reply })).await
    }

    async fn record(&self, change: Change, entry: AuditEntry) -> Result<bool, StoreError> {
        self.ask(|reply| {
            Op::Job(Job::Record {
                change,
                entry,
                reply,
            })
        })
        .await
    }

    async fn set_room(
        &self,
        room: &str,
        patch: &RoomPatch,
        entry: AuditEntry,
    ) -> Result<RoomSettings, StoreError> {
        self.ask(|reply| {
            Op::Job(Job::SetRoom {
                room: room.to_owned(),
                patch: patch.clone(),
                entry,
                reply,
            })
        })
        .await
    }

    async fn note(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.ask(|reply| Op::Job(Job::Note { entry, reply })).await
    }

    async fn approve(
        &self,
        held: u64,
        new: NewDanmaku,
        entry: AuditOf,
    ) -> Result<Option<Danmaku>, StoreError> {
        self.ask(|reply| {
            Op::Job(Job::Approve {
                held,
                new,
                entry,
                reply,
            })
        })
        .await
    }

    async fn audit(
        &self,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        // Every id lies below one beyond the largest bigint.
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let limit = sql_limit(limit);
        self.readers
            .rows(
                "SELECT id, ts, actor, action, room, target, detail FROM audit \
                 WHERE id < $1 ORDER BY id DESC LIMIT $2",
                &[(&before, Type::INT8), (&limit, Type::INT8)],
                |r| {
                    let detail: String = r.try_get(6)?;
                    Ok(AuditEntry {
                        id: column_id(r, 0)?,
                        ts: r.try_get(1)?,
                        actor: r.try_get(2)?,
                        action: r.try_get(3)?,
                        room: r.try_get(4)?,
                        target: r.try_get(5)?,
                        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                    })
                },
            )
            .await
    }
}

/// What went wrong with PostgreSQL, before [`Failure::classify`] says what
/// it means for the caller. Its message carries the whole chain of causes
/// on one line (`tokio_postgres::Error` alone says only "db error"), so it
/// has no source of its own.
#[derive(Debug)]
enum Failure {
    /// `store.url` does not parse.
    Url(tokio_postgres::Error),
    /// The driver or the server refused.
    Pg(tokio_postgres::Error),
    /// The server did not answer in time.
    Timeout(Duration),
    /// The writer's connection was found closed between two writes.
    Closed,
    /// A stored value does not fit its Rust type, or the server's answer
    /// is not what the statement promises.
    Data(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pg = match self {
            Failure::Url(e) => {
                f.write_str("invalid PostgreSQL URL: ")?;
                e
            }
            Failure::Pg(e) => e,
            Failure::Timeout(after) => {
                return write!(f, "PostgreSQL did not answer within {after:?}")
            }
            Failure::Closed => return f.write_str("the connection to PostgreSQL closed"),
            Failure::Data(what) => return f.write_str(what),
        };
        write!(f, "{pg}")?;
        let mut source = std::error::Error::source(pg);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Pg(e)
    }
}

impl Failure {
    /// What the failure means for the caller: `53100 disk_full` is
    /// [`StoreError::Full`]; a lost or refused connection, a server
    /// shutting down or one that does not answer is
    /// [`StoreError::Unavailable`]; anything else is
    /// [`StoreError::Database`].
    fn classify(self) -> StoreError {
        let unavailable = match &self {
            Failure::Pg(e) => match e.code() {
                Some(code) if *code == tokio_postgres::error::SqlState::DISK_FULL => {
                    return StoreError::Full(Arc::new(self));
                }
                // Class 08: connection exceptions; 57P01-03: the server
                // shuts down or is starting; 53300: too many connections.
                Some(code) => {
                    let code = code.code();
                    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
                }
                None => {
                    e.is_closed()
                        || std::error::Error::source(e)
                            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
                }
            },
            Failure::Timeout(_) | Failure::Closed => true,
            Failure::Url(_) | Failure::Data(_) => false,
        };
        let cause: Cause = Arc::new(self);
        if unavailable {
            StoreError::Unavailable(cause)
        } else {
            StoreError::Database(cause)
        }
    }
}

/// Bounds `work` by [`ANSWER_TIMEOUT`].
async fn answer<T>(
    work: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(ANSWER_TIMEOUT, work)
        .await
        .unwrap_or(Err(Failure::Timeout(ANSWER_TIMEOUT)))
}

/// Opens a connection and runs it on its own task until it closes.
async fn connect(pg: &tokio_postgres::Config) -> Result<Client, Failure> {
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, pg.connect(NoTls))
        .await
        .map_err(|_| Failure::Timeout(CONNECT_TIMEOUT))??;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %Failure::Pg(e), "a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// The writer's connection: `store.synchronous = normal` lets a commit
/// return before PostgreSQL flushed it (a crash of the database server,
/// not of the node, may then lose the last acknowledged sends).
async fn connect_writer(
    pg: &tokio_postgres::Config,
    synchronous: Synchronous,
) -> Result<Client, Failure> {
    let client = connect(pg).await?;
    let commit = match synchronous {
        Synchronous::Full => "on",
        Synchronous::Normal => "off",
    };
    answer(async {
        // A writer this node gave up on (its answer timed out in a network
        // partition) must not keep a room's row locked for every node: the
        // server ends a transaction left idle, and a lock wait, after a
        // bound of its own.
        let set = format!(
            "SET synchronous_commit TO {commit}; \
             SET idle_in_transaction_session_timeout TO '15s'; \
             SET lock_timeout TO '10s'"
        );
        Ok(client.batch_execute(&set).await?)
    })
    .await?;
    Ok(client)
}

/// Applies the migrations the database has not seen, in one transaction.
/// Several nodes may start at once: the transaction first takes an
/// advisory lock, so the first node migrates while the others wait, and
/// they then find nothing left to do. The lock goes with the transaction,
/// also when the node dies.
async fn migrate(client: &mut Client) -> Result<(), Failure> {
    answer(async {
        let tx = client.transaction().await?;
        tx.execute_typed(
            "SELECT pg_advisory_xact_lock($1)",
            &[(&MIGRATION_LOCK, Type::INT8)],
        )
        .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (\
                 version    INTEGER     PRIMARY KEY, \
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
        let applied: i32 = tx
            .query_typed_one(
                "SELECT COALESCE(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .try_get(0)?;
        for (version, sql) in (1..).zip(MIGRATIONS) {
            if version > applied {
                tx.batch_execute(sql).await?;
                tx.execute_typed(
                    "INSERT INTO schema_migrations (version) VALUES ($1)",
                    &[(&version, Type::INT4)],
                )
                .await?;
                tracing::info!(version, "PostgreSQL schema migrated");
            }
        }
        if usize::try_from(applied).is_ok_and(|v| v > MIGRATIONS.len()) {
            // A newer node migrated it: its migrations only add, so this
            // one still works, but should be upgraded.
            tracing::warn!(
                applied,
                known = MIGRATIONS.len(),
                "the PostgreSQL schema is newer than this build"
            );
        }
        Ok(tx.commit().await?)
    })
    .await
}

/// A `LIMIT`: one beyond the largest bigint limits nothing more.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// The id in column `i`: stored ids are never negative, and one that is
/// reads as an error, not as a huge id.
fn column_id(r: &Row, i: usize) -> Result<u64, Failure> {
    let id: i64 = r.try_get(i)?;
    u64::try_from(id).map_err(|_| Failure::Data(format!("column {i} holds a negative id {id}")))
}

/// Column `i`, read as the column's own integer type `S` (`try_get` is
/// exact about it), as the Rust integer `T`, which may be narrower.
fn narrow<S, T>(r: &Row, i: usize) -> Result<T, Failure>
where
    S: for<'a> tokio_postgres::types::FromSql<'a> + Copy + fmt::Display,
    T: TryFrom<S>,
{
    let value: S = r.try_get(i)?;
    T::try_from(value).map_err(|_| Failure::Data(format!("column {i} holds {value}, out of range")))
}

/// The mode in column `i`; an unknown code reads as the default mode, as
/// in `sqlite.rs`.
fn mode(r: &Row, i: usize) -> Result<Mode, Failure> {
    let code: i16 = r.try_get(i)?;
    Ok(u8::try_from(code)
        .ok()
        .and_then(Mode::from_code)
        .unwrap_or_default())
}

/// The danmaku in a row of [`COLUMNS`].
fn danmaku_of(r: &Row) -> Result<Danmaku, Failure> {
    Ok(Danmaku {
        id: column_id(r, 0)?,
        room: r.try_get(1)?,
        user: r.try_get(2)?,
        name: r.try_get(3)?,
        text: r.try_get(4)?,
        mode: mode(r, 5)?,
        color: Color(narrow::<i32, _>(r, 6)?),
        size: narrow::<i32, _>(r, 7)?,
        ts: r.try_get(8)?,
        vt: r.try_get(9)?,
        priority: false,
    })
}

/// A colour as the `INTEGER` column holds it.
fn sql_color(color: Color) -> Result<i32, Failure> {
    i32::try_from(color.0).map_err(|_| Failure::Data(format!("colour {:#x} out of range", color.0)))
}

/// The read connections: at most `most` reads at once, each on a
/// connection of the pool, opened when first needed and reused after.
struct Readers {
    pg: tokio_postgres::Config,
    idle: Mutex<Vec<Client>>,
    most: usize,
    /// A read holds one while it runs.
    permits: Semaphore,
}

impl Readers {
    /// Runs one read and reads each row it returns with `each`.
    async fn rows<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        each: impl Fn(&Row) -> Result<T, Failure>,
    ) -> Result<Vec<T>, StoreError> {
        self.query(sql, params)
            .await?
            .iter()
            .map(each)
            .collect::<Result<_, Failure>>()
            .map_err(Failure::classify)
    }

    /// Runs one read. A pooled connection the server has dropped since its
    /// last use (a restart) is replaced, and a read that fails on one is
    /// tried once more on a new connection: reads change nothing.
    async fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?;
        loop {
            let pooled = self.take_idle();
            let reused = pooled.is_some();
            let client = match pooled {
                Some(c) => c,
                None => connect(&self.pg).await.map_err(Failure::classify)?,
            };
            match answer(async { Ok(client.query_typed(sql, params).await?) }).await {
                Ok(rows) => {
                    self.give_back(client);
                    return Ok(rows);
                }
                Err(f) => match f.classify() {
                    // The connection is gone: dropped here.
                    StoreError::Unavailable(_) if reused => continue,
                    e @ StoreError::Unavailable(_) => return Err(e),
                    e => {
                        self.give_back(client);
                        return Err(e);
                    }
                },
            }
        }
    }

    fn take_idle(&self) -> Option<Client> {
        let mut idle = self.idle.lock().expect("reader pool lock");
        // Those whose connection ended (the server went away) are dropped.
        while let Some(c) = idle.pop() {
            if !c.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn give_back(&self, client: Client) {
        let mut idle = self.idle.lock().expect("reader pool lock");
        if idle.len() < self.most {
            idle.push(client);
        }
    }
}

/// The writer's connection.
enum Link {
    Up(Client),
    /// Lost (or never regained) for `cause`; the next attempt is due at
    /// `retry_at`, and until then writes fail at once.
    Down {
        cause: Cause,
        retry_at: Instant,
    },
}

/// The writer task's state.
struct Writer {
    pg: tokio_postgres::Config,
    synchronous: Synchronous,
    link: Link,
    /// The wait after the next failed connection attempt.
    backoff: Duration,
    on_commit: CommitListener,
    metrics: Arc<Metrics>,
    /// Whether the last write failed for lack of space; shared with the
    /// store (health). Unlike SQLite's writer this one does not probe:
    /// every node keeps trying its sends, and the first that commits
    /// clears it.
    full: Arc<AtomicBool>,
}

impl Writer {
    /// The writes of a start: expired mutes and bans are pruned, as in
    /// `sqlite.rs` (the guard ignores them while running). A full disk does
    /// not stop the start; it is recorded, and a later start prunes.
    async fn start_up(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        let pruned = self
            .write(0, async |c: &mut Client| {
                c.execute_typed("DELETE FROM mutes WHERE until <= $1", &[(&now, Type::INT8)])
                    .await?;
                c.execute_typed(
                    "DELETE FROM bans WHERE until IS NOT NULL AND until <= $1",
                    &[(&now, Type::INT8)],
                )
                .await?;
                Ok(())
            })
            .await;
        match pruned {
            Ok(()) | Err(StoreError::Full(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn run(mut self, mut ops: mpsc::Receiver<Op>, max_batch: usize) {
        let mut news = Vec::new();
        let mut replies = Vec::new();
        let mut closing: Option<oneshot::Sender<()>> = None;
        loop {
            let first = match &self.link {
                // Reconnects when due even if no send comes, so that the
                // first one after the database is back succeeds.
                Link::Down { retry_at, .. } => {
                    let retry_at = *retry_at;
                    tokio::select! {
                        op = ops.recv() => op,
                        () = tokio::time::sleep_until(retry_at) => {
                            self.reconnect().await;
                            continue;
                        }
                    }
                }
                Link::Up(_) => ops.recv().await,
            };
            let Some(first) = first else { break };
            let mut next = Some(first);
            // Group commit: take everything already waiting, up to max_batch.
            while let Some(op) = next.take().or_else(|| {
                (news.len() < max_batch)
                    .then(|| ops.try_recv().ok())
                    .flatten()
            }) {
                match op {
                    Op::Append { new, reply } => {
                        news.push(new);
                        replies.push(reply);
                    }
                    Op::Job(job) => {
                        // Sends queued before the job are committed before
                        // it: a recall never overtakes the send it recalls,
                        // nor a hold the same sender's earlier sends.
                        if !news.is_empty() {
                            self.commit_and_reply(&mut news, &mut replies).await;
                        }
                        self.run_job(job).await;
                    }
                    Op::Close { done } => {
                        // Refuse new sends; those already queued are still
                        // received below and committed before stopping.
                        ops.close();
                        closing = Some(done);
                    }
                }
            }
            if !news.is_empty() {
                self.commit_and_reply(&mut news, &mut replies).await;
            }
            if closing.is_some() && ops.is_empty() {
                break;
            }
        }
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }

    async fn commit_and_reply(
        &mut self,
        news: &mut Vec<NewDanmaku>,
        replies: &mut Vec<Reply<Danmaku>>,
    ) {
        let committed = self.commit_batch(std::mem::take(news)).await;
        answer_all(replies, committed);
    }

    /// One group commit of `batch`, measured, published once committed,
    /// and its failure logged.
    async fn commit_batch(&mut self, batch: Vec<NewDanmaku>) -> Result<Vec<Danmaku>, StoreError> {
        let started = std::time::Instant::now();
        let sends = batch.len();
        self.metrics.store_batch_size.observe(sends as f64);
        let committed = self
            .write(sends as u64, async move |c: &mut Client| {
                // One statement, its own transaction: answered only once
                // committed. If the connection dies while it runs, the
                // outcome is unknown: the batch may be stored. Its sends
                // are answered `Unavailable` all the same (503, and the
                // client retries), so a danmaku may be stored twice; that
                // is accepted. The reverse never happens: a send is
                // acknowledged only after its commit returned.
                insert_numbered(c, batch, now_ms()).await
            })
            .await;
        match &committed {
            Ok(stored) => {
                self.metrics
                    .store_commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.publish(stored);
            }
            // A full disk was logged once, when it filled, and a lost
            // connection when it was lost.
            Err(e @ StoreError::Database(_)) => {
                tracing::error!(error = %e, sends, "group commit failed");
            }
            Err(_) => {}
        }
        committed
    }

    async fn run_job(&mut self, job: Job) {
        match job {
            Job::Chunk { news, reply } => {
                let _ = reply.send(self.commit_batch(news).await);
            }
            Job::Note { entry, reply } => {
                let noted = self
                    .write(1, async move |c: &mut Client| {
                        let tx = c.transaction().await?;
                        audit(&tx, &entry).await?;
                        Ok(tx.commit().await?)
                    })
                    .await;
                let _ = reply.send(noted);
            }
            Job::Hold { new, reply } => {
                let held = self
                    .write(1, async move |c: &mut Client| hold(c, new).await)
                    .await;
                let _ = reply.send(held);
            }
            Job::Record {
                change,
                entry,
                reply,
            } => {
                let changed = self
                    .write(1, async move |c: &mut Client| {
                        record(c, change, &entry).await
                    })
                    .await;
                let _ = reply.send(changed);
            }
            Job::SetRoom {
                room,
                patch,
                entry,
                reply,
            } => {
                let settings = self
                    .write(1, async move |c: &mut Client| {
                        set_room(c, room, &patch, &entry).await
                    })
                    .await;
                let _ = reply.send(settings);
            }
            Job::Approve {
                held,
                new,
                entry,
                reply,
            } => {
                let approved = self
                    .write(1, async move |c: &mut Client| {
                        approve(c, held, new, entry).await
                    })
                    .await;
                // Published like a group commit: once committed, before
                // the answer.
                if let Ok(Some(d)) = &approved {
                    self.publish(std::slice::from_ref(d));
                }
                let _ = reply.send(approved);
            }
        }
    }

    /// Runs `work` on the writer's connection (reconnecting first if it is
    /// due), bounded by [`ANSWER_TIMEOUT`]. `refused` is the number of
    /// requests a failure fails, for the full-disk count.
    async fn write<T>(
        &mut self,
        refused: u64,
        work: impl AsyncFnOnce(&mut Client) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let done = match self.connection().await {
            Ok(client) => answer(work(client)).await.map_err(Failure::classify),
            Err(e) => Err(e),
        };
        match done {
            Ok(v) => {
                self.mark_writable();
                Ok(v)
            }
            Err(e) => Err(self.failed(e, refused)),
        }
    }

    /// The connection, re-established first if it was lost and an attempt
    /// is due; `Unavailable` at once if not.
    async fn connection(&mut self) -> Result<&mut Client, StoreError> {
        if let Link::Up(client) = &self.link {
            if client.is_closed() {
                // Lost while idle (the server restarted): try again now.
                self.lose(Arc::new(Failure::Closed));
            }
        }
        if let Link::Down { retry_at, .. } = &self.link {
            if Instant::now() >= *retry_at {
                self.reconnect().await;
            }
        }
        match &mut self.link {
            Link::Up(client) => Ok(client),
            Link::Down { cause, .. } => Err(StoreError::Unavailable(cause.clone())),
        }
    }

    /// One connection attempt; on failure the next is due after the
    /// backoff, which doubles.
    async fn reconnect(&mut self) {
        match connect_writer(&self.pg, self.synchronous).await {
            Ok(client) => {
                self.link = Link::Up(client);
                self.backoff = BACKOFF_FIRST;
                tracing::warn!("the connection to PostgreSQL is back: sends are taken again");
            }
            Err(f) => {
                tracing::debug!(error = %f, retry_in = ?self.backoff, "PostgreSQL is still unavailable");
                self.link = Link::Down {
                    cause: Arc::new(f),
                    retry_at: Instant::now() + self.backoff,
                };
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// Gives up the connection (whatever it was doing is abandoned: the
    /// server rolls back an unfinished transaction) and reconnects at the
    /// next write or at once when idle.
    fn lose(&mut self, cause: Cause) {
        tracing::warn!(
            error = %cause,
            "lost the connection to PostgreSQL: sends are refused (store_unavailable) \
             until it is back; reconnecting"
        );
        self.link = Link::Down {
            cause,
            retry_at: Instant::now(),
        };
        self.backoff = BACKOFF_FIRST;
    }

    /// Records a failed write, `refused` being the requests it fails: a
    /// full disk marks the store full and counts them; a lost connection
    /// is given up.
    fn failed(&mut self, e: StoreError, refused: u64) -> StoreError {
        match &e {
            StoreError::Full(cause) => {
                self.metrics.store_full_writes.inc_by(refused);
                if !self.full.swap(true, Ordering::Relaxed) {
                    self.metrics.store_full.set(1);
                    tracing::warn!(
                        error = %cause,
                        "the database's disk is full: sends are refused (store_full), reads \
                         and viewers are served, and writes resume once there is space"
                    );
                }
            }
            StoreError::Unavailable(cause) if matches!(self.link, Link::Up(_)) => {
                self.lose(cause.clone());
            }
            _ => {}
        }
        e
    }

    /// A write committed: there is space (again).
    fn mark_writable(&self) {
        if self.full.swap(false, Ordering::Relaxed) {
            self.metrics.store_full.set(0);
            tracing::warn!("the database's disk has space again: sends are taken");
        }
    }

    /// Hands committed danmaku to the commit listener, before any of them
    /// is acknowledged.
    fn publish(&self, stored: &[Danmaku]) {
        self.metrics.received.inc_by(stored.len() as u64);
        (self.on_commit)(stored);
    }
}

/// Stores `news` with server time `ts`, numbered: each room's row is
/// bumped by its number of sends (in name order), and its sends take the
/// ids just below the new `last_id`, in queue order. One statement
/// ([`STORE_NUMBERED`]): on a bare connection it commits by itself, in a
/// transaction it is part of it.
async fn insert_numbered(
    c: &impl GenericClient,
    news: Vec<NewDanmaku>,
    ts: i64,
) -> Result<Vec<Danmaku>, Failure> {
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for new in &news {
        *counts.entry(new.room.as_str()).or_default() += 1;
    }
    // How many of its room's sends follow each send: its id is that far
    // below the room's new last id.
    let mut after: HashMap<&str, i64> = HashMap::with_capacity(counts.len());
    let mut backs = vec![0i64; news.len()];
    for (back, new) in backs.iter_mut().zip(&news).rev() {
        let later = after.entry(new.room.as_str()).or_default();
        *back = *later;
        *later += 1;
    }
    let rooms: Vec<&str> = counts.keys().copied().collect();
    let sizes: Vec<i64> = counts.values().copied().collect();
    let column = |f: fn(&NewDanmaku) -> &str| news.iter().map(f).collect::<Vec<_>>();
    let modes: Vec<i16> = news.iter().map(|n| n.mode.code().into()).collect();
    let colors = news
        .iter()
        .map(|n| sql_color(n.color))
        .collect::<Result<Vec<_>, _>>()?;
    let font_sizes: Vec<i32> = news.iter().map(|n| n.size.into()).collect();
    let vts: Vec<Option<f64>> = news.iter().map(|n| n.vt).collect();
    let bumped = c
        .query_typed(
            STORE_NUMBERED,
            &[
                (&rooms, Type::TEXT_ARRAY),
                (&sizes, Type::INT8_ARRAY),
                (&column(|n| &n.room), Type::TEXT_ARRAY),
                (&backs, Type::INT8_ARRAY),
                (&column(|n| &n.user), Type::TEXT_ARRAY),
                (&column(|n| &n.name), Type::TEXT_ARRAY),
                (&column(|n| &n.text), Type::TEXT_ARRAY),
                (&modes, Type::INT2_ARRAY),
                (&colors, Type::INT4_ARRAY),
                (&font_sizes, Type::INT4_ARRAY),
                (&ts, Type::INT8),
                (&vts, Type::FLOAT8_ARRAY),
            ],
        )
        .await?;
    // Each room's first new id, as the statement numbered them.
    let mut next: HashMap<&str, u64> = HashMap::with_capacity(bumped.len());
    for row in &bumped {
        let name: &str = row.try_get(0)?;
        let last = column_id(row, 1)?;
        let (room, n) = counts
            .get_key_value(name)
            .ok_or_else(|| Failure::Data(format!("room {name} was bumped but not sent to")))?;
        let first = last
            .checked_sub(n.unsigned_abs() - 1)
            .ok_or_else(|| Failure::Data(format!("room {name} numbered below 1")))?;
        next.insert(room, first);
    }
    let mut ids = Vec::with_capacity(news.len());
    for new in &news {
        let id = next
            .get_mut(new.room.as_str())
            .ok_or_else(|| Failure::Data(format!("room {} was not numbered", new.room)))?;
        ids.push(*id);
        *id += 1;
    }
    Ok(news
        .into_iter()
        .zip(ids)
        .map(|(new, id)| Danmaku::stored(new, id, ts))
        .collect())
}

/// Stores a held send (one statement, so its own transaction); the
/// table's identity numbers it.
async fn hold(c: &mut Client, new: NewDanmaku) -> Result<Held, Failure> {
    let ts = now_ms();
    let mode = i16::from(new.mode.code());
    let color = sql_color(new.color)?;
    let size = i32::from(new.size);
    let row = c
        .query_typed_one(
            "INSERT INTO held (room, \"user\", name, text, mode, color, size, ts, vt) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING hid",
            &[
                (&new.room, Type::TEXT),
                (&new.user, Type::TEXT),
                (&new.name, Type::TEXT),
                (&new.text, Type::TEXT),
                (&mode, Type::INT2),
                (&color, Type::INT4),
                (&size, Type::INT4),
                (&ts, Type::INT8),
                (&new.vt, Type::FLOAT8),
            ],
        )
        .await?;
    Ok(Held {
        held: column_id(&row, 0)?,
        ts,
        danmaku: new,
    })
}

/// Applies a moderation change and appends its audit entry in one
/// transaction; false (and nothing written) if it found nothing to change.
async fn record(c: &mut Client, change: Change, entry: &AuditEntry) -> Result<bool, Failure> {
    let tx = c.transaction().await?;
    let changed = match change {
        Change::Reject { held } => release(&tx, held).await?,
        Change::Recall { room, id } => match i64::try_from(id) {
            Ok(id) => {
                tx.execute_typed(
                    "DELETE FROM danmaku WHERE room = $1 AND id = $2",
                    &[(&room, Type::TEXT), (&id, Type::INT8)],
                )
                .await?
                    > 0
            }
            Err(_) => false,
        },
        Change::Mute(m) => {
            tx.execute_typed(
                "INSERT INTO mutes (room, \"user\", until) VALUES ($1, $2, $3) \
                 ON CONFLICT (room, \"user\") DO UPDATE SET until = EXCLUDED.until",
                &[
                    (&m.room.unwrap_or_default(), Type::TEXT),
                    (&m.user, Type::TEXT),
                    (&m.until, Type::INT8),
                ],
            )
            .await?;
            true
        }
        Change::Unmute { room, user } => {
            tx.execute_typed(
                "DELETE FROM mutes WHERE room = $1 AND \"user\" = $2",
                &[(&room.unwrap_or_default(), Type::TEXT), (&user, Type::TEXT)],
            )
            .await?
                > 0
        }
        Change::Ban(b) => {
            tx.execute_typed(
                "INSERT INTO bans (ip, until) VALUES ($1, $2) \
                 ON CONFLICT (ip) DO UPDATE SET until = EXCLUDED.until",
                &[(&b.ip.to_string(), Type::TEXT), (&b.until, Type::INT8)],
            )
            .await?;
            true
        }
        Change::Unban(ip) => {
            tx.execute_typed(
                "DELETE FROM bans WHERE ip = $1",
                &[(&ip.to_string(), Type::TEXT)],
            )
            .await?
                > 0
        }
    };
    if changed {
        audit(&tx, entry).await?;
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(changed)
}

/// Patches a room's settings (or the defaults, if it has none) and bumps
/// their version in one statement, and appends the audit entry, in one
/// transaction; returns the settings as stored. The statement reads the
/// row it updates under its lock, so two nodes patching the room at once
/// take turns, the second patching what the first committed.
async fn set_room(
    c: &mut Client,
    room: String,
    patch: &RoomPatch,
    entry: &AuditEntry,
) -> Result<RoomSettings, Failure> {
    let slow_mode_s = patch.slow_mode_s.map(i64::from);
    let tx = c.transaction().await?;
    let row = tx
        .query_typed_one(
            "INSERT INTO room_settings AS s (room, closed, slow_mode_s, premod, version) \
             VALUES ($1, COALESCE($2, FALSE), COALESCE($3, 0), COALESCE($4, FALSE), 1) \
             ON CONFLICT (room) DO UPDATE SET \
             closed = COALESCE($2, s.closed), \
             slow_mode_s = COALESCE($3, s.slow_mode_s), \
             premod = COALESCE($4, s.premod), \
             version = s.version + 1 \
             RETURNING closed, slow_mode_s, premod, version",
            &[
                (&room, Type::TEXT),
                (&patch.closed, Type::BOOL),
                (&slow_mode_s, Type::INT8),
                (&patch.premod, Type::BOOL),
            ],
        )
        .await?;
    audit(&tx, entry).await?;
    tx.commit().await?;
    room_settings(room, &row, 0)
}

/// A room's settings from the columns `closed, slow_mode_s, premod,
/// version`, the first at `at`.
fn room_settings(room: String, r: &Row, at: usize) -> Result<RoomSettings, Failure> {
    Ok(RoomSettings {
        room,
        closed: r.try_get(at)?,
        slow_mode_s: narrow::<i64, _>(r, at + 1)?,
        premod: r.try_get(at + 2)?,
        version: column_id(r, at + 3)?,
    })
}

/// Approves a held send in one transaction: deletes its row, stores the
/// danmaku under its room's next id (as a group commit does) and appends
/// the audit entry `entry` makes for it. `None`, and nothing written, if
/// the held send is gone: of two nodes approving it at once, the second
/// one's delete waits for the first one's commit and then finds nothing.
async fn approve(
    c: &mut Client,
    held: u64,
    new: NewDanmaku,
    entry: AuditOf,
) -> Result<Option<Danmaku>, Failure> {
    let tx = c.transaction().await?;
    if !release(&tx, held).await? {
        tx.rollback().await?;
        return Ok(None);
    }
    let stored = insert_numbered(&tx, vec![new], now_ms()).await?;
    audit(&tx, &entry(&stored[0])).await?;
    tx.commit().await?;
    Ok(stored.into_iter().next())
}

/// Deletes a held send's row; whether there was one.
async fn release(tx: &Transaction<'_>, held: u64) -> Result<bool, Failure> {
    let Ok(held) = i64::try_from(held) else {
        return Ok(false);
    };
    let deleted = tx
        .execute_typed("DELETE FROM held WHERE hid = $1", &[(&held, Type::INT8)])
        .await?;
    Ok(deleted > 0)
}

/// Appends `entry` to the audit log.
async fn audit(tx: &Transaction<'_>, entry: &AuditEntry) -> Result<(), Failure> {
    tx.execute_typed(
        "INSERT INTO audit (ts, actor, action, room, target, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            (&entry.ts, Type::INT8),
            (&entry.actor, Type::TEXT),
            (&entry.action, Type::TEXT),
            (&entry.room, Type::TEXT),
            (&entry.target, Type::TEXT),
            (&entry.detail.to_string(), Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{approval, conformance_tests, entry, new, Backing, Seen};
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::atomic::AtomicUsize;

    /// The shared test server (see the project's CI set-up).
    const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

    /// A connection to `url`, or a failure that names the server.
    async fn connect_to(url: &str) -> Client {
        let pg: tokio_postgres::Config = url.parse().unwrap();
        connect(&pg).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {url} is not reachable: start it \
                 (`service postgresql start`, user postgres, trust auth): {e}"
            )
        })
    }

    /// A database of its own on the shared test server, dropped at the end.
    struct TestDb {
        name: String,
    }

    impl TestDb {
        async fn create() -> TestDb {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "danmaku_t_{}_{}_{}",
                std::process::id(),
                now_ms(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let admin = connect_to(&format!("{SERVER}/postgres")).await;
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            TestDb { name }
        }

        fn url(&self) -> String {
            format!("{SERVER}/{}", self.name)
        }

        /// Runs `sql` on this database over a connection of its own.
        async fn sql(&self, sql: &str) -> Vec<tokio_postgres::SimpleQueryMessage> {
            connect_to(&self.url())
                .await
                .simple_query(sql)
                .await
                .unwrap()
        }

        async fn open_with(&self, metrics: Arc<Metrics>, seen: &Seen) -> PostgresStore {
            PostgresStore::open(
                &self.url(),
                &StoreConfig::default(),
                metrics,
                seen.listener(),
            )
            .await
            .unwrap()
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let name = self.name.clone();
            // Drop runs inside the test's runtime, which cannot block on
            // a future: the drop gets a thread and a runtime of its own.
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let admin = connect_to(&format!("{SERVER}/postgres")).await;
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    admin.batch_execute(&drop).await
                })
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!("could not drop test database {}: {dropped:?}", self.name);
            }
        }
    }

    impl Backing for TestDb {
        type Store = PostgresStore;

        async fn open(&self, listener: CommitListener) -> PostgresStore {
            PostgresStore::open(
                &self.url(),
                &StoreConfig::default(),
                Arc::new(Metrics::new()),
                listener,
            )
            .await
            .unwrap()
        }

        async fn fail_inserts(&self, fail: bool) {
            if fail {
                self.refuse_inserts("RAISE EXCEPTION 'refused by the test'")
                    .await;
            } else {
                self.sql("DROP TRIGGER fail ON danmaku; DROP FUNCTION fail();")
                    .await;
            }
        }
    }

    impl TestDb {
        /// Makes every insert of a danmaku run `raise` (a PL/pgSQL `RAISE`).
        async fn refuse_inserts(&self, raise: &str) {
            self.sql(&format!(
                "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN {raise}; END $$; \
                 CREATE TRIGGER fail BEFORE INSERT ON danmaku \
                 FOR EACH ROW EXECUTE FUNCTION fail();"
            ))
            .await;
        }
    }

    conformance_tests!(TestDb::create().await);

    /// Three nodes append to one room at once: the room's ids are 1..=N,
    /// each given once, and each node's listener sees its own danmaku, and
    /// only those, in ascending order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_number_one_room_together() {
        const PER_NODE: usize = 300;
        let db = TestDb::create().await;
        let seen = [Seen::default(), Seen::default(), Seen::default()];
        let mut stores = Vec::new();
        for s in &seen {
            stores.push(Arc::new(db.open_with(Arc::new(Metrics::new()), s).await));
        }
        let sends: Vec<_> = (0..PER_NODE)
            .flat_map(|i| {
                stores
                    .iter()
                    .enumerate()
                    .map(move |(k, s)| (i, k, s.clone()))
            })
            .map(|(i, k, store)| {
                tokio::spawn(
                    async move { (k, store.append(new("one", &format!("{k}-{i}"))).await) },
                )
            })
            .collect();
        let mut acked: [Vec<Danmaku>; 3] = Default::default();
        for s in sends {
            let (k, d) = s.await.unwrap();
            acked[k].push(d.unwrap());
        }
        let mut all: Vec<u64> = acked.iter().flatten().map(|d| d.id).collect();
        all.sort_unstable();
        assert_eq!(all, (1..=3 * PER_NODE as u64).collect::<Vec<_>>());
        for (k, mine) in acked.iter_mut().enumerate() {
            mine.sort_by_key(|d| d.id);
            let ids: Vec<u64> = mine.iter().map(|d| d.id).collect();
            assert_eq!(
                seen[k].ids("one"),
                ids,
                "node {k} published its own, ascending"
            );
        }
        let stored = stores[1].after("one", 0, 10_000).await.unwrap();
        let mut everything: Vec<Danmaku> = acked.concat();
        everything.sort_by_key(|d| d.id);
        assert_eq!(stored, everything);
        for store in &stores {
            assert_eq!(store.last_id("one").await.unwrap(), 3 * PER_NODE as u64);
        }
    }

    /// Nodes that start at once on a new database all start, and the
    /// schema is applied once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_starting_at_once_migrate_once() {
        let db = TestDb::create().await;
        let seen = Seen::default();
        let open = || db.open_with(Arc::new(Metrics::new()), &seen);
        let (a, b, c) = tokio::join!(open(), open(), open());
        let later = open().await;
        let rows = db
            .sql("SELECT version FROM schema_migrations ORDER BY version")
            .await;
        let versions: Vec<String> = rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        let expected: Vec<String> = (1..=MIGRATIONS.len()).map(|v| v.to_string()).collect();
        assert_eq!(versions, expected);
        for store in [&a, &b, &c, &later] {
            assert_eq!(store.append(new("r", "x")).await.unwrap().room, "r");
        }
        assert_eq!(later.last_id("r").await.unwrap(), 4);
    }

    /// Two nodes approving the same held sends at once: each is approved
    /// by exactly one, and only that node publishes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_approve_a_held_send_once() {
        let db = TestDb::create().await;
        let (seen_a, seen_b) = (Seen::default(), Seen::default());
        let a = db.open_with(Arc::new(Metrics::new()), &seen_a).await;
        let b = db.open_with(Arc::new(Metrics::new()), &seen_b).await;
        let mut approved = Vec::new();
        for i in 0..10 {
            let h = a.hold(new("r", &i.to_string())).await.unwrap();
            let (x, y) = tokio::join!(
                a.approve(h.held, h.danmaku.clone(), approval("a")),
                b.approve(h.held, h.danmaku.clone(), approval("b")),
            );
            let (x, y) = (x.unwrap(), y.unwrap());
            assert_eq!(
                u8::from(x.is_some()) + u8::from(y.is_some()),
                1,
                "{x:?} {y:?}"
            );
            approved.extend(x.into_iter().chain(y));
        }
        let ids: Vec<u64> = approved.iter().map(|d| d.id).collect();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
        let mut published = seen_a.all();
        published.extend(seen_b.all());
        published.sort_by_key(|d| d.id);
        assert_eq!(published, approved);
        assert!(a.load_moderation().await.unwrap().held.is_empty());
        assert_eq!(a.audit(100, None).await.unwrap().len(), 10);
    }

    /// Two nodes patch different fields of one room at once, many times:
    /// every patch holds (none is undone by the other node's), each gets
    /// a version of its own, and the last is the number of patches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_patch_one_room_at_once() {
        const PER_NODE: u32 = 40;
        let db = TestDb::create().await;
        let seen = Seen::default();
        let a = db.open_with(Arc::new(Metrics::new()), &seen).await;
        let b = db.open_with(Arc::new(Metrics::new()), &seen).await;
        // A sets slow mode 1, 2, ...; B turns pre-moderation off and on,
        // ending on. Each waits for its own patch before the next.
        async fn patching(store: &PostgresStore, patch: fn(u32) -> RoomPatch) -> Vec<u64> {
            let mut versions = Vec::new();
            for i in 1..=PER_NODE {
                let stored = store.set_room("r", &patch(i), entry("room")).await;
                versions.push(stored.unwrap().version);
            }
            versions
        }
        let (on_a, on_b) = tokio::join!(
            patching(&a, |i| RoomPatch {
                slow_mode_s: Some(i),
                ..RoomPatch::default()
            }),
            patching(&b, |i| RoomPatch {
                premod: Some(i % 2 == 0),
                ..RoomPatch::default()
            }),
        );
        let mut versions: Vec<u64> = on_a.into_iter().chain(on_b).collect();
        versions.sort_unstable();
        let patches = u64::from(2 * PER_NODE);
        assert_eq!(versions, (1..=patches).collect::<Vec<_>>());
        let rooms = b.load_moderation().await.unwrap().rooms;
        assert_eq!(
            rooms,
            vec![RoomSettings {
                room: "r".into(),
                closed: false,
                slow_mode_s: PER_NODE,
                premod: true,
                version: patches,
            }]
        );
        assert_eq!(a.audit(1000, None).await.unwrap().len() as u64, patches);
    }

    /// PostgreSQL's `disk_full` makes sends fail with `Full` and the store
    /// report it (health, metrics) until a write succeeds again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_is_store_full() {
        let db = TestDb::create().await;
        let metrics = Arc::new(Metrics::new());
        let store = db.open_with(metrics.clone(), &Seen::default()).await;
        db.refuse_inserts("RAISE EXCEPTION USING ERRCODE = 'disk_full'")
            .await;
        let refused = store.append(new("r", "x")).await;
        assert!(matches!(refused, Err(StoreError::Full(_))), "{refused:?}");
        assert!(store.is_full());
        assert_eq!(metrics.store_full.get(), 1);
        assert_eq!(metrics.store_full_writes.get(), 1);
        // Reads are served meanwhile.
        assert_eq!(store.last_id("r").await.unwrap(), 0);
        db.fail_inserts(false).await;
        assert_eq!(store.append(new("r", "y")).await.unwrap().id, 1);
        assert!(!store.is_full());
        assert_eq!(metrics.store_full.get(), 0);
    }

    /// A store that cannot open says why, in one line, and does not hang.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_says_why_it_cannot() {
        let open = |url: String| async move {
            let started = std::time::Instant::now();
            let failed = PostgresStore::open(
                &url,
                &StoreConfig::default(),
                Arc::new(Metrics::new()),
                Seen::default().listener(),
            )
            .await;
            assert!(started.elapsed() < Duration::from_secs(6), "{url}");
            match failed {
                Ok(_) => panic!("{url} opened"),
                Err(e) => e,
            }
        };
        let e = open("postgres://127.0.0.1:notaport/x".into()).await;
        assert!(matches!(e, StoreError::Database(_)), "{e:?}");
        assert!(e.to_string().contains("invalid PostgreSQL URL"), "{e}");

        let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = nobody.local_addr().unwrap().port();
        drop(nobody);
        let e = open(format!("postgres://postgres@127.0.0.1:{port}/x")).await;
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        assert!(e.to_string().contains("refused"), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");

        let e = open(format!("{SERVER}/danmaku_t_missing_{}", std::process::id())).await;
        assert!(matches!(e, StoreError::Database(_)), "{e:?}");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    /// A PostgreSQL server of the test's own, which it may stop and start:
    /// `initdb` and `pg_ctl` run as user postgres (the server refuses
    /// root) in a new directory, on a free port. Stopped and removed on
    /// drop.
    struct Throwaway {
        dir: tempfile::TempDir,
        port: u16,
    }

    impl Throwaway {
        fn start() -> Throwaway {
            let dir = tempfile::Builder::new()
                .prefix("danmaku-pg-")
                .tempdir()
                .unwrap();
            let chown = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(
                chown.success(),
                "chown of the throwaway PostgreSQL's directory"
            );
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let server = Throwaway { dir, port };
            let data = server.data();
            as_postgres(&[
                "initdb",
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ]);
            server.up();
            server
        }

        fn data(&self) -> String {
            self.dir.path().join("data").display().to_string()
        }

        fn url(&self) -> String {
            format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
        }

        fn up(&self) {
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.path().display()
            );
            let log: PathBuf = self.dir.path().join("log");
            as_postgres(&[
                "pg_ctl",
                "-D",
                &self.data(),
                "-l",
                &log.display().to_string(),
                "-o",
                &options,
                "-w",
                "start",
            ]);
        }

        fn down(&self) {
            as_postgres(&["pg_ctl", "-D", &self.data(), "-m", "fast", "-w", "stop"]);
        }
    }

    impl Drop for Throwaway {
        fn drop(&mut self) {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--", "pg_ctl", "-D", &self.data()])
                .args(["-m", "immediate", "stop"])
                .output();
        }
    }

    /// Runs a PostgreSQL program as user postgres, or fails naming it.
    fn as_postgres(args: &[&str]) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("runuser (to run PostgreSQL's {}): {e}", args[0]));
        assert!(
            out.status.success(),
            "PostgreSQL's {} failed (it is in /usr/lib/postgresql/15/bin): {}{}",
            args[0],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The database stops while senders keep sending, and starts again on
    /// the same port: meanwhile sends and reads fail with `Unavailable`,
    /// promptly; then the same store takes sends again by itself, its ids
    /// go on with no hole, and every acknowledged send is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_restart_is_survived_without_reopening() {
        let server = Arc::new(tokio::task::spawn_blocking(Throwaway::start).await.unwrap());
        let seen = Seen::default();
        let store = Arc::new(
            PostgresStore::open(
                &server.url(),
                &StoreConfig::default(),
                Arc::new(Metrics::new()),
                seen.listener(),
            )
            .await
            .unwrap(),
        );
        for i in 1..=10 {
            let d = store
                .append(new("r", &format!("before {i}")))
                .await
                .unwrap();
            assert_eq!(d.id, i);
        }

        // Senders that keep sending, one send after another, through it all.
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..4)
            .map(|k| {
                let (store, stop) = (store.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let started = std::time::Instant::now();
                        let answer = store.append(new("r", &format!("{k}-{i}"))).await;
                        answers.push((answer, started.elapsed()));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    answers
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;

        let s = server.clone();
        tokio::task::spawn_blocking(move || s.down()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = std::time::Instant::now();
        let refused = store.append(new("r", "while down")).await;
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
        let read = store.after("r", 0, 10).await;
        assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );

        let s = server.clone();
        tokio::task::spawn_blocking(move || s.up()).await.unwrap();
        let back = std::time::Instant::now();
        let first = loop {
            match store.append(new("r", "back")).await {
                Ok(d) => break d,
                Err(StoreError::Unavailable(_)) if back.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("not back after {:?}: {e}", back.elapsed()),
            }
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);

        let first_back = first.id;
        let mut acked = vec![first];
        let mut refused = 0;
        for s in senders {
            for (answer, took) in s.await.unwrap() {
                assert!(took < Duration::from_secs(5), "a send waited {took:?}");
                match answer {
                    Ok(d) => acked.push(d),
                    Err(StoreError::Unavailable(_)) => refused += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
        }
        assert!(refused > 0, "the senders met the outage");
        let after_restart = acked.iter().filter(|d| d.id > first_back).count();
        assert!(
            after_restart > 0,
            "the senders were served after the restart"
        );

        // No hole, nothing acknowledged missing. (A batch whose COMMIT was
        // cut may be stored unacknowledged: that is allowed.)
        let stored = store.after("r", 0, 100_000).await.unwrap();
        let ids: Vec<u64> = stored.iter().map(|d| d.id).collect();
        assert_eq!(ids, (1..=stored.len() as u64).collect::<Vec<_>>());
        for d in &acked {
            assert_eq!(stored.get(d.id as usize - 1), Some(d));
        }
        let mut published: Vec<u64> = seen.ids("r");
        assert!(published.windows(2).all(|w| w[0] < w[1]));
        published.sort_unstable();
        let mut acked_ids: Vec<u64> = (1..=10).chain(acked.iter().map(|d| d.id)).collect();
        acked_ids.sort_unstable();
        assert_eq!(
            published, acked_ids,
            "published exactly what was acknowledged"
        );
        assert!(!store.is_full());
    }
}
