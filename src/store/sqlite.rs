//! The embedded store: SQLite in WAL mode behind one writer thread.
//!
//! Why one writer: SQLite serialises writers anyway, and a single thread that
//! drains the whole send queue into one transaction turns N fsyncs into one
//! (group commit), so throughput grows with load. It also makes id
//! assignment trivial: the writer is the only one that reads and bumps a
//! room's `last_id`, and it does so inside the same transaction that stores
//! the rows, so ids are contiguous and never reused, also across restarts.
//! Readers use their own connections; WAL lets them run beside the writer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::types::ToSql;
use rusqlite::{
    params, params_from_iter, Connection, FileControl, OpenFlags, OptionalExtension, Statement,
    Transaction, TransactionBehavior,
};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{
    answer_all, in_chunks, AuditOf, CommitListener, Density, ModerationStore, Store, StoreError,
};
use crate::config::{StoreConfig, Synchronous};
use crate::danmaku::{now_ms, Color, Danmaku, Mode, NewDanmaku};
use crate::metrics::Metrics;
use crate::moderation::{AuditEntry, Ban, Change, Held, Mute, RoomPatch, RoomSettings, Snapshot};

const DB_FILE: &str = "danmaku.sqlite3";
/// Reads at once, and read-only connections kept open for them. Without
/// a cap each concurrent read took a blocking thread and opened its own
/// connection (two file descriptors and a page cache each), so a burst of
/// resumes grew both with the burst. Reads are short indexed queries, and
/// a 2-core node runs no more than a few at a time anyway.
const READERS: usize = 4;
/// Each reader connection's page cache, KiB (`PRAGMA cache_size`): the
/// recent pages that history and resume reads touch. With the writer's
/// (SQLite's default, about 2 MiB) the store's caches stay under 6 MiB.
const READER_CACHE_KIB: i64 = 1024;
/// The schema's version, in `PRAGMA user_version`; bump it with any change
/// to [`SCHEMA`], and bring the tables an older version made up to date in
/// [`upgrade`]. The schema is applied only to an older database, so that
/// opening an existing one writes nothing: a node restarted on a full disk
/// still starts. (1: history; 2: moderation; 3: `room_settings.version`.)
const SCHEMA_VERSION: i64 = 3;
/// How often the writer tries a write while the disk is full, so that it
/// takes sends again soon after space returns even if none arrives.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rooms (
    name    TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS danmaku (
    room  TEXT    NOT NULL,
    id    INTEGER NOT NULL,
    user  TEXT    NOT NULL,
    name  TEXT    NOT NULL,
    text  TEXT    NOT NULL,
    mode  INTEGER NOT NULL,
    color INTEGER NOT NULL,
    size  INTEGER NOT NULL,
    ts    INTEGER NOT NULL,
    vt    REAL,
    PRIMARY KEY (room, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS danmaku_by_vt ON danmaku (room, vt) WHERE vt IS NOT NULL;
-- Moderation. A mute's room is '' for every room (no room name is empty).
CREATE TABLE IF NOT EXISTS mutes (
    room  TEXT    NOT NULL,
    user  TEXT    NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (room, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bans (
    ip    TEXT PRIMARY KEY,
    until INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS room_settings (
    room        TEXT    PRIMARY KEY,
    closed      INTEGER NOT NULL,
    slow_mode_s INTEGER NOT NULL,
    premod      INTEGER NOT NULL,
    version     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS held (
    hid   INTEGER PRIMARY KEY AUTOINCREMENT,
    room  TEXT    NOT NULL,
    user  TEXT    NOT NULL,
    name  TEXT    NOT NULL,
    text  TEXT    NOT NULL,
    mode  INTEGER NOT NULL,
    color INTEGER NOT NULL,
    size  INTEGER NOT NULL,
    ts    INTEGER NOT NULL,
    vt    REAL
);
CREATE TABLE IF NOT EXISTS audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    ts     INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    room   TEXT,
    target TEXT,
    detail TEXT    NOT NULL
);
";

const COLUMNS: &str = "id, room, user, name, text, mode, color, size, ts, vt";

/// [`Store::density`]: read from the `(room, vt)` index alone (a room's
/// danmaku without a video time are not even visited), with the buckets at
/// or past the cap (`?3`) in one group, so that a far-off video time cannot
/// make millions of them.
const DENSITY: &str = "SELECT MIN(CAST(vt / ?2 AS INTEGER), ?3) AS bucket, COUNT(*) \
     FROM danmaku WHERE room = ?1 AND vt IS NOT NULL AND vt >= 0 GROUP BY bucket";

/// Work for the writer other than an append: it runs on the writer's
/// connection and sends its own reply.
type Job = Box<dyn FnOnce(&mut Writer) + Send>;

/// A request to the writer thread. Ops take effect in the order they are
/// queued: appends are gathered for group commit, and a job runs only after
/// the appends queued before it are committed (and acknowledged).
enum Op {
    Append {
        new: NewDanmaku,
        reply: oneshot::Sender<Result<Danmaku, StoreError>>,
    },
    /// A hold, a moderation change, an approval: see [`SqliteStore::on_writer`].
    Run(Job),
    /// Commit what is queued, refuse the rest, stop.
    Close { done: oneshot::Sender<()> },
}

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    ops: mpsc::Sender<Op>,
    readers: Arc<ReaderPool>,
    /// Set by the writer while the disk is full (see [`Writer::failed`]).
    full: Arc<AtomicBool>,
    /// `store.max_batch`: the largest chunk of an [`Store::append_many`].
    max_batch: usize,
}

impl SqliteStore {
    /// Opens (or creates) the store under `dir` and starts its writer thread.
    /// `on_commit` receives every committed batch in commit order.
    ///
    /// An existing database opens on a full disk: the store then starts
    /// full ([`Store::is_full`]), serves reads, and takes writes again once
    /// there is space. Creating a new one needs space.
    pub fn open(
        dir: &Path,
        config: &StoreConfig,
        metrics: Arc<Metrics>,
        on_commit: CommitListener,
    ) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(Arc::new(e)))?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path)?;
        let sync = match config.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        let prepare = || -> Result<(), rusqlite::Error> {
            // A write only when the database is new (not yet in WAL mode).
            conn.pragma_update(None, "journal_mode", "WAL")?;
            // Keep the log and the 32 KiB shared-memory index when this,
            // the only connection that may, closes last: a restart then
            // needs no new file, and so starts on a full disk.
            conn.file_control(rusqlite::DEFAULT_NAME, FileControl::PersistWal(&mut 1))?;
            conn.pragma_update(None, "synchronous", sync)?;
            conn.busy_timeout(Duration::from_secs(5))?;
            let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if version < SCHEMA_VERSION {
                upgrade(&conn, version)?;
            }
            Ok(())
        };
        // Still fails on a full disk when SQLite must create its 32 KiB
        // shared-memory index (`-shm`: only if someone deleted it), or the
        // database: there is nothing to serve then.
        prepare().map_err(|e| classify(&conn, e.into()))?;

        let full = Arc::new(AtomicBool::new(false));
        let mut writer = Writer::new(conn, on_commit, metrics, full.clone());
        writer.start_up()?;
        let (tx, rx) = mpsc::channel(config.queue);
        let max_batch = config.max_batch;
        std::thread::Builder::new()
            .name("danmaku-store-writer".into())
            .spawn(move || writer.run(rx, max_batch))
            .map_err(|e| StoreError::Io(Arc::new(e)))?;
        spawn_prober(tx.downgrade(), full.clone()).map_err(|e| StoreError::Io(Arc::new(e)))?;
        Ok(SqliteStore {
            ops: tx,
            readers: Arc::new(ReaderPool {
                path,
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(READERS)),
            }),
            full,
            max_batch,
        })
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = self.readers.clone();
        // Owned and moved into the read: a caller that gives up waiting
        // does not free the place of a read that is still running.
        let permit = pool
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            pool.with(f)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    /// Queues the op `op` builds around a reply channel and waits for the
    /// writer's answer.
    async fn ask<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(op(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        // A dropped reply means the writer stopped before doing it.
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `job` on the writer thread, after the appends queued before it
    /// are committed, and returns what it returns.
    async fn on_writer<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Writer) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.ask(|reply| {
            Op::Run(Box::new(move |w: &mut Writer| {
                let result = job(w).map_err(|e| w.failed(e, 1));
                let _ = reply.send(result);
            }))
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, new: NewDanmaku) -> Result<Danmaku, StoreError> {
        self.ask(|reply| Op::Append { new, reply }).await
    }

    async fn append_many(&self, news: Vec<NewDanmaku>) -> Result<Vec<Danmaku>, StoreError> {
        in_chunks(news, self.max_batch, move |mut chunk| {
            // A job, not appends: it runs alone, after the sends queued
            // before it are committed, so the chunk is one commit.
            self.ask(move |reply| {
                Op::Run(Box::new(move |w: &mut Writer| {
                    let _ = reply.send(w.commit_batch(&mut chunk));
                }))
            })
        })
        .await
    }

    async fn after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Danmaku>, StoreError> {
        // No id lies beyond the largest SQLite integer: nothing follows it.
        let Some(after) = sql_id(after) else {
            return Ok(Vec::new());
        };
        let room = room.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM danmaku WHERE room = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![room, after, sql_limit(limit)], row_to_danmaku)?;
            rows.collect()
        })
        .await
    }

    async fn by_video_time(
        &self,
        room: &str,
        from: f64,
        to: f64,
        limit: usize,
    ) -> Result<Vec<Danmaku>, StoreError> {
        let room = room.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM danmaku WHERE room = ?1 AND vt IS NOT NULL \
                 AND vt >= ?2 AND vt < ?3 ORDER BY vt, id LIMIT ?4"
            ))?;
            let rows = stmt.query_map(params![room, from, to, sql_limit(limit)], row_to_danmaku)?;
            rows.collect()
        })
        .await
    }

    async fn density(
        &self,
        room: &str,
        bucket_s: f64,
        max_buckets: usize,
    ) -> Result<Density, StoreError> {
        let room = room.to_owned();
        let cap = sql_limit(max_buckets);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(DENSITY)?;
            let rows = stmt.query_map(params![room, bucket_s, cap], |r| {
                Ok((column_id(r, 0)?, column_id(r, 1)?))
            })?;
            let groups = rows.collect::<Result<Vec<_>, _>>()?;
            Ok(Density::from_groups(groups, max_buckets))
        })
        .await
    }

    async fn get(&self, room: &str, id: u64) -> Result<Option<Danmaku>, StoreError> {
        let Some(id) = sql_id(id) else {
            return Ok(None);
        };
        let room = room.to_owned();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM danmaku WHERE room = ?1 AND id = ?2"
            ))?
            .query_row(params![room, id], row_to_danmaku)
            .optional()
        })
        .await
    }

    async fn last_id(&self, room: &str) -> Result<u64, StoreError> {
        let room = room.to_owned();
        self.read(move |c| read_last_id(c, &room)).await
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
impl ModerationStore for SqliteStore {
    async fn load_moderation(&self) -> Result<Snapshot, StoreError> {
        let now = now_ms();
        // On a reader (a blocking thread): the moderation service reloads
        // this every 30 s, on the runtime.
        self.read(move |c| {
            let mutes = c
                .prepare("SELECT room, user, until FROM mutes WHERE until > ?1")?
                .query_map([now], |r| {
                    let room: String = r.get(0)?;
                    Ok(Mute {
                        room: (!room.is_empty()).then_some(room),
                        user: r.get(1)?,
                        until: r.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            let bans = c
                .prepare("SELECT ip, until FROM bans WHERE until IS NULL OR until > ?1")?
                .query_map([now], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?
                .filter_map(|row| match row {
                    // Only this store writes the column, from an IpAddr.
                    Ok((ip, until)) => ip.parse().ok().map(|ip| Ok(Ban { ip, until })),
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()?;
            let rooms = c
                .prepare("SELECT room, closed, slow_mode_s, premod, version FROM room_settings")?
                .query_map([], |r| {
                    Ok(RoomSettings {
                        room: r.get(0)?,
                        closed: r.get(1)?,
                        slow_mode_s: r.get(2)?,
                        premod: r.get(3)?,
                        version: column_id(r, 4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            let held = c
                .prepare(
                    "SELECT hid, ts, room, user, name, text, mode, color, size, vt \
                     FROM held ORDER BY hid",
                )?
                .query_map([], |r| {
                    Ok(Held {
                        held: column_id(r, 0)?,
                        ts: r.get(1)?,
                        danmaku: NewDanmaku {
                            room: r.get(2)?,
                            user: r.get(3)?,
                            name: r.get(4)?,
                            text: r.get(5)?,
                            mode: Mode::from_code(r.get(6)?).unwrap_or_default(),
                            color: Color(r.get(7)?),
                            size: r.get(8)?,
                            vt: r.get(9)?,
                            // Held sends are never an admin's.
                            priority: false,
                        },
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(Snapshot {
                mutes,
                bans,
                rooms,
                held,
            })
        })
        .await
    }

    async fn hold(&self, new: NewDanmaku) -> Result<Held, StoreError> {
        self.on_writer(move |w| w.hold(new)).await
    }

    async fn record(&self, change: Change, entry: AuditEntry) -> Result<bool, StoreError> {
        self.on_writer(move |w| w.record(change, &entry)).await
    }

    async fn set_room(
        &self,
        room: &str,
        patch: &RoomPatch,
        entry: AuditEntry,
    ) -> Result<RoomSettings, StoreError> {
        let (room, patch) = (room.to_owned(), patch.clone());
        self.on_writer(move |w| w.set_room(room, &patch, &entry))
            .await
    }

    async fn note(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.on_writer(move |w| {
            let tx = w.conn.transaction()?;
            audit(&tx, &entry)?;
            Ok(tx.commit()?)
        })
        .await
    }

    async fn approve(
        &self,
        held: u64,
        new: NewDanmaku,
        entry: AuditOf,
    ) -> Result<Option<Danmaku>, StoreError> {
        self.on_writer(move |w| w.approve(held, new, entry)).await
    }

    async fn audit(
        &self,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        // Every id lies below one beyond the largest SQLite integer.
        let before = before.map_or(i64::MAX, |b| sql_id(b).unwrap_or(i64::MAX));
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, ts, actor, action, room, target, detail FROM audit \
                 WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![before, sql_limit(limit)], |r| {
                let detail: String = r.get(6)?;
                Ok(AuditEntry {
                    id: column_id(r, 0)?,
                    ts: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    room: r.get(4)?,
                    target: r.get(5)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                })
            })?;
            rows.collect()
        })
        .await
    }
}

fn read_last_id(c: &Connection, room: &str) -> Result<u64, rusqlite::Error> {
    let id: Option<u64> = c
        .prepare_cached("SELECT last_id FROM rooms WHERE name = ?1")?
        .query_row([room], |r| column_id(r, 0))
        .optional()?;
    Ok(id.unwrap_or(0))
}

/// A `LIMIT`: one beyond the largest SQLite integer limits nothing more.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// An id as SQLite's integer. Ids are assigned up to
/// [`MAX_ID`](crate::danmaku::MAX_ID), so one above it names nothing:
/// `None`, never a wrapped negative id.
fn sql_id(id: u64) -> Option<i64> {
    i64::try_from(id).ok()
}

/// The id in column `i` of a row: stored ids are never negative, and one
/// that is reads as an error, not as a huge id.
fn column_id(r: &rusqlite::Row<'_>, i: usize) -> Result<u64, rusqlite::Error> {
    let id: i64 = r.get(i)?;
    u64::try_from(id).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, id))
}

/// The error of storing an id past the largest SQLite integer: a room would
/// need 2^63 danmaku first.
fn id_overflow(id: u64) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(
        format!("id {id} is beyond the largest SQLite integer").into(),
    )
}

fn row_to_danmaku(r: &rusqlite::Row<'_>) -> Result<Danmaku, rusqlite::Error> {
    let mode: u8 = r.get(5)?;
    let color: u32 = r.get(6)?;
    Ok(Danmaku {
        id: column_id(r, 0)?,
        room: r.get(1)?,
        user: r.get(2)?,
        name: r.get(3)?,
        text: r.get(4)?,
        mode: Mode::from_code(mode).unwrap_or_default(),
        color: Color(color),
        size: r.get(7)?,
        ts: r.get(8)?,
        vt: r.get(9)?,
        priority: false,
    })
}

/// Read-only connections, reused across queries: at most [`READERS`]
/// reads at once, so at most that many connections.
struct ReaderPool {
    path: std::path::PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// A read holds one while it runs.
    permits: Arc<Semaphore>,
}

impl ReaderPool {
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        let reused = self.idle.lock().expect("reader pool lock").pop();
        let conn = match reused {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                c.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
                c
            }
        };
        let out = f(&conn)?;
        let mut idle = self.idle.lock().expect("reader pool lock");
        if idle.len() < READERS {
            idle.push(conn);
        }
        Ok(out)
    }
}

/// While the disk is full, queues a probe write every [`PROBE_INTERVAL`],
/// so that the store notices space returning without waiting for a send.
/// Stops once the store is dropped or closed.
fn spawn_prober(ops: mpsc::WeakSender<Op>, full: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("danmaku-store-probe".into())
        .spawn(move || loop {
            std::thread::sleep(PROBE_INTERVAL);
            let Some(ops) = ops.upgrade() else { return };
            if full.load(Ordering::Relaxed) {
                let probe = Op::Run(Box::new(|w: &mut Writer| {
                    if let Err(e) = w.probe() {
                        tracing::error!(error = %e, "store probe failed");
                    }
                }));
                // A full queue already holds writes that will find out.
                if let Err(mpsc::error::TrySendError::Closed(_)) = ops.try_send(probe) {
                    return;
                }
            }
        })
        .map(drop)
}

impl From<rusqlite::Error> for StoreError {
    /// SQLite's `SQLITE_FULL` becomes [`StoreError::Full`]; [`classify`]
    /// also reclassifies an I/O error whose cause was a full disk, which
    /// only its connection can tell.
    fn from(e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            StoreError::Full(Arc::new(e))
        } else {
            StoreError::Database(Arc::new(e))
        }
    }
}

/// `e`, the error of `conn`'s last call, as [`StoreError::Full`] when a
/// full disk or quota caused it. SQLite says `SQLITE_FULL` when a write
/// runs out of space, but some paths (growing the shared-memory index, an
/// fsync) report it as an `SQLITE_IOERR_*` that only the errno explains.
fn classify(conn: &Connection, e: StoreError) -> StoreError {
    match e {
        StoreError::Database(db)
            if db
                .downcast_ref::<rusqlite::Error>()
                .and_then(rusqlite::Error::sqlite_error_code)
                == Some(rusqlite::ErrorCode::SystemIoFailure) =>
        {
            // SAFETY: the handle is valid while `conn` lives, and this only
            // reads the errno the connection recorded for its last failure.
            let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) };
            match std::io::Error::from_raw_os_error(errno).kind() {
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    StoreError::Full(db)
                }
                _ => StoreError::Database(db),
            }
        }
        other => other,
    }
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    on_commit: CommitListener,
    metrics: Arc<Metrics>,
    /// Each room's newest committed id, so a commit need not read it back.
    last_ids: HashMap<String, u64>,
    /// Whether the last write failed for lack of space; shared with the
    /// store (health) and the prober.
    full: Arc<AtomicBool>,
}

impl Writer {
    fn new(
        conn: Connection,
        on_commit: CommitListener,
        metrics: Arc<Metrics>,
        full: Arc<AtomicBool>,
    ) -> Writer {
        Writer {
            conn,
            on_commit,
            metrics,
            last_ids: HashMap::new(),
            full,
        }
    }

    /// The writes of a start: pruning, then a probe, so that a store opened
    /// on a full disk knows it at once. Neither is needed to serve, so a
    /// full disk does not stop the start; any other failure does.
    fn start_up(&mut self) -> Result<(), StoreError> {
        // Expired mutes and bans are only ever pruned here: the guard
        // ignores them while running, and a restart is a fine time to
        // forget them for good (or the next one, if the disk is full).
        let now = now_ms();
        let pruned = self
            .conn
            .execute("DELETE FROM mutes WHERE until <= ?1", [now])
            .and_then(|_| {
                self.conn.execute(
                    "DELETE FROM bans WHERE until IS NOT NULL AND until <= ?1",
                    [now],
                )
            });
        match pruned.map_err(|e| self.failed(e.into(), 0)) {
            Ok(_) | Err(StoreError::Full(_)) => {}
            Err(e) => return Err(e),
        }
        self.probe()
    }

    /// Writes one page (the schema version, unchanged: an empty
    /// transaction writes nothing) to learn whether the disk takes writes.
    /// A full disk is not an error here: it is recorded, and the prober
    /// tries again.
    fn probe(&mut self) -> Result<(), StoreError> {
        match self
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION)
        {
            Ok(()) => {
                self.mark_writable();
                Ok(())
            }
            Err(e) => match self.failed(e.into(), 0) {
                StoreError::Full(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Classifies a failed write, `refused` being the requests it fails: a
    /// full disk marks the store full and counts them. Returns the error,
    /// as [`StoreError::Full`] when space was the cause.
    fn failed(&self, e: StoreError, refused: u64) -> StoreError {
        let e = classify(&self.conn, e);
        if let StoreError::Full(cause) = &e {
            self.metrics.store_full_writes.inc_by(refused);
            if !self.full.swap(true, Ordering::Relaxed) {
                self.metrics.store_full.set(1);
                tracing::warn!(
                    error = %cause,
                    "the disk is full: sends are refused (store_full), reads and viewers \
                     are served, and writes resume once there is space"
                );
            }
        }
        e
    }

    /// A write committed: there is space (again).
    fn mark_writable(&self) {
        if self.full.swap(false, Ordering::Relaxed) {
            self.metrics.store_full.set(0);
            tracing::warn!("the disk has space again: sends are taken");
        }
    }

    fn run(mut self, mut ops: mpsc::Receiver<Op>, max_batch: usize) {
        let mut news = Vec::with_capacity(max_batch);
        let mut replies = Vec::with_capacity(max_batch);
        let mut closing: Option<oneshot::Sender<()>> = None;
        while let Some(first) = ops.blocking_recv() {
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
                    Op::Run(job) => {
                        // Sends queued before the job are committed before
                        // it: a recall never overtakes the send it recalls,
                        // nor a hold the same sender's earlier sends.
                        if !news.is_empty() {
                            self.commit_and_reply(&mut news, &mut replies);
                        }
                        job(&mut self);
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
                self.commit_and_reply(&mut news, &mut replies);
            }
            if closing.is_some() && ops.is_empty() {
                break;
            }
        }
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }

    fn commit_and_reply(
        &mut self,
        news: &mut Vec<NewDanmaku>,
        replies: &mut Vec<oneshot::Sender<Result<Danmaku, StoreError>>>,
    ) {
        let committed = self.commit_batch(news);
        answer_all(replies, committed);
    }

    /// One group commit of `news` (left empty), measured, published once
    /// committed, and its failure classified and logged.
    fn commit_batch(&mut self, news: &mut Vec<NewDanmaku>) -> Result<Vec<Danmaku>, StoreError> {
        let started = Instant::now();
        let sends = news.len();
        self.metrics.store_batch_size.observe(sends as f64);
        match self.commit(news) {
            Ok(stored) => {
                self.metrics
                    .store_commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.mark_writable();
                self.publish(&stored);
                Ok(stored)
            }
            Err(e) => {
                let e = self.failed(e, sends as u64);
                // A full disk was logged once, when it filled.
                if !matches!(e, StoreError::Full(_)) {
                    tracing::error!(error = %e, sends, "group commit failed");
                }
                news.clear();
                Err(e)
            }
        }
    }

    /// Stores a held send in its own transaction; the table numbers it.
    fn hold(&mut self, new: NewDanmaku) -> Result<Held, StoreError> {
        let ts = now_ms();
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO held (room, user, name, text, mode, color, size, ts, vt) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        insert_send(&mut insert, None, &new, ts)?;
        let rowid = self.conn.last_insert_rowid();
        Ok(Held {
            // SQLite numbers AUTOINCREMENT rows from 1.
            held: u64::try_from(rowid)
                .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, rowid))?,
            ts,
            danmaku: new,
        })
    }

    /// Applies a moderation change and appends its audit entry in one
    /// transaction; false (and nothing written) if a recall found nothing.
    fn record(&mut self, change: Change, entry: &AuditEntry) -> Result<bool, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = match change {
            Change::Reject { held } => release(&tx, held)?,
            Change::Recall { room, id } => match sql_id(id) {
                Some(id) => {
                    tx.execute(
                        "DELETE FROM danmaku WHERE room = ?1 AND id = ?2",
                        params![room, id],
                    )? > 0
                }
                None => false,
            },
            Change::Mute(m) => {
                tx.execute(
                    "INSERT OR REPLACE INTO mutes (room, user, until) VALUES (?1, ?2, ?3)",
                    params![m.room.unwrap_or_default(), m.user, m.until],
                )?;
                true
            }
            Change::Unmute { room, user } => {
                tx.execute(
                    "DELETE FROM mutes WHERE room = ?1 AND user = ?2",
                    params![room.unwrap_or_default(), user],
                )? > 0
            }
            Change::Ban(b) => {
                tx.execute(
                    "INSERT OR REPLACE INTO bans (ip, until) VALUES (?1, ?2)",
                    params![b.ip.to_string(), b.until],
                )?;
                true
            }
            Change::Unban(ip) => {
                tx.execute("DELETE FROM bans WHERE ip = ?1", [ip.to_string()])? > 0
            }
        };
        if changed {
            audit(&tx, entry)?;
            tx.commit()?;
        }
        Ok(changed)
    }

    /// Patches a room's settings and appends their audit entry in one
    /// transaction; returns them as stored. This writer is the only
    /// connection that writes, so nothing changes the row between the
    /// patch's read of it and its write.
    fn set_room(
        &mut self,
        room: String,
        patch: &RoomPatch,
        entry: &AuditEntry,
    ) -> Result<RoomSettings, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (closed, slow_mode_s, premod, version) = tx.query_row(
            SET_ROOM,
            params![room, patch.closed, patch.slow_mode_s, patch.premod],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, column_id(r, 3)?)),
        )?;
        audit(&tx, entry)?;
        tx.commit()?;
        Ok(RoomSettings {
            room,
            closed,
            slow_mode_s,
            premod,
            version,
        })
    }

    /// Approves a held send in one transaction: deletes its row, stores the
    /// danmaku under its room's next id and appends the audit entry `entry`
    /// makes for it. Once committed, publishes it like a group commit.
    /// `None`, and nothing written, if the held send is gone.
    fn approve(
        &mut self,
        held: u64,
        new: NewDanmaku,
        entry: AuditOf,
    ) -> Result<Option<Danmaku>, StoreError> {
        let ts = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !release(&tx, held)? {
            return Ok(None);
        }
        let (stored, bumped) = insert_numbered(&tx, &self.last_ids, [new], ts)?;
        audit(&tx, &entry(&stored[0]))?;
        tx.commit()?;
        self.last_ids.extend(bumped);
        self.publish(&stored);
        Ok(stored.into_iter().next())
    }

    /// Hands committed danmaku to the commit listener, before any of them
    /// is acknowledged.
    fn publish(&self, stored: &[Danmaku]) {
        self.metrics.received.inc_by(stored.len() as u64);
        (self.on_commit)(stored);
    }

    /// Stores `news` in one transaction. On error nothing is stored and the
    /// cached ids stay as they were.
    fn commit(&mut self, news: &mut Vec<NewDanmaku>) -> Result<Vec<Danmaku>, StoreError> {
        let ts = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (stored, bumped) = insert_numbered(&tx, &self.last_ids, news.drain(..), ts)?;
        tx.commit()?;
        self.last_ids.extend(bumped);
        Ok(stored)
    }
}

/// Inserts `news` with server time `ts`, each under its room's next id
/// (after `cached`, the writer's committed last ids, or else the `rooms`
/// row), and bumps `rooms.last_id`. Returns the stored danmaku and each
/// room's new last id, for the cache once `tx` is committed.
fn insert_numbered(
    tx: &Transaction<'_>,
    cached: &HashMap<String, u64>,
    news: impl IntoIterator<Item = NewDanmaku>,
    ts: i64,
) -> Result<(Vec<Danmaku>, HashMap<String, u64>), StoreError> {
    let news = news.into_iter();
    let mut bumped: HashMap<String, u64> = HashMap::new();
    let mut stored = Vec::with_capacity(news.size_hint().0);
    let mut insert = tx.prepare_cached(
        "INSERT INTO danmaku (id, room, user, name, text, mode, color, size, ts, vt) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for new in news {
        let last = match bumped.get(&new.room).or_else(|| cached.get(&new.room)) {
            Some(id) => *id,
            None => read_last_id(tx, &new.room)?,
        };
        let id = last + 1;
        insert_send(&mut insert, Some(id), &new, ts)?;
        bumped.insert(new.room.clone(), id);
        stored.push(Danmaku::stored(new, id, ts));
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO rooms (name, last_id) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id",
    )?;
    for (room, id) in &bumped {
        upsert.execute(params![room, sql_id(*id).ok_or_else(|| id_overflow(*id))?])?;
    }
    Ok((stored, bumped))
}

/// Runs `insert`, whose parameters are `id` (when given), then `new`'s
/// columns `room, user, name, text, mode, color, size`, then `ts` and `vt`:
/// the column order of both `danmaku` and `held`.
fn insert_send(
    insert: &mut Statement<'_>,
    id: Option<u64>,
    new: &NewDanmaku,
    ts: i64,
) -> Result<(), rusqlite::Error> {
    let id = id
        .map(|id| sql_id(id).ok_or_else(|| id_overflow(id)))
        .transpose()?;
    let mode = new.mode.code();
    let columns: [&dyn ToSql; 9] = [
        &new.room,
        &new.user,
        &new.name,
        &new.text,
        &mode,
        &new.color.0,
        &new.size,
        &ts,
        &new.vt,
    ];
    let id = id.iter().map(|id| id as &dyn ToSql);
    insert.execute(params_from_iter(id.chain(columns)))?;
    Ok(())
}

/// Brings a database of schema `version` (0: new) up to
/// [`SCHEMA_VERSION`], in one transaction, so that a crash halfway leaves
/// it at `version`, to be upgraded again at the next start.
fn upgrade(conn: &Connection, version: i64) -> Result<(), rusqlite::Error> {
    let tx = conn.unchecked_transaction()?;
    // Creates the tables an older version lacks, as they are now ...
    tx.execute_batch(SCHEMA)?;
    // ... and leaves those it had as they were: add what came since.
    if version == 2 {
        tx.execute_batch(
            "ALTER TABLE room_settings ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
        )?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// [`ModerationStore::set_room`]: applies a patch (`?2` to `?4`, each NULL
/// if absent) to a room's row, or to the defaults if it has none, and bumps
/// its version, in one statement of the writer's transaction.
const SET_ROOM: &str = "INSERT INTO room_settings (room, closed, slow_mode_s, premod, version) \
     VALUES (?1, coalesce(?2, 0), coalesce(?3, 0), coalesce(?4, 0), 1) \
     ON CONFLICT (room) DO UPDATE SET \
     closed = coalesce(?2, room_settings.closed), \
     slow_mode_s = coalesce(?3, room_settings.slow_mode_s), \
     premod = coalesce(?4, room_settings.premod), \
     version = room_settings.version + 1 \
     RETURNING closed, slow_mode_s, premod, version";

/// Deletes a held send's row; whether there was one.
fn release(tx: &Transaction<'_>, held: u64) -> Result<bool, rusqlite::Error> {
    let Some(held) = sql_id(held) else {
        return Ok(false);
    };
    Ok(tx.execute("DELETE FROM held WHERE hid = ?1", [held])? > 0)
}

/// Appends `entry` to the audit log.
fn audit(tx: &Transaction<'_>, entry: &AuditEntry) -> Result<(), rusqlite::Error> {
    tx.execute(
        "INSERT INTO audit (ts, actor, action, room, target, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            entry.ts,
            entry.actor,
            entry.action,
            entry.room,
            entry.target,
            entry.detail.to_string()
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moderation::RoomPatch;
    use crate::store::conformance::{conformance_tests, entry, new, Backing};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh database: a new directory.
    struct Sqlite(tempfile::TempDir);

    impl Backing for Sqlite {
        type Store = SqliteStore;

        async fn open(&self, listener: CommitListener) -> SqliteStore {
            SqliteStore::open(
                self.0.path(),
                &StoreConfig::default(),
                Arc::new(Metrics::new()),
                listener,
            )
            .unwrap()
        }

        async fn fail_inserts(&self, fail: bool) {
            let sql = if fail {
                "CREATE TRIGGER fail BEFORE INSERT ON danmaku \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
            } else {
                "DROP TRIGGER fail;"
            };
            Connection::open(self.0.path().join(DB_FILE))
                .unwrap()
                .execute_batch(sql)
                .unwrap();
        }
    }

    fn sqlite() -> Sqlite {
        Sqlite(tempfile::tempdir().unwrap())
    }

    conformance_tests!(sqlite());

    #[tokio::test]
    async fn a_hold_does_not_overtake_sends_queued_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(DB_FILE);
        // The first commit's listener keeps the writer busy until `open`
        // is sent, so that the next append and a hold queue up behind it.
        let (open_tx, open_rx) = std::sync::mpsc::channel::<()>();
        let open_rx = Mutex::new(open_rx);
        let blocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Per batch after the first: its first id, and the held rows that
        // existed when it was published.
        let log = Arc::new(Mutex::new(Vec::new()));
        let (b, l) = (blocked.clone(), log.clone());
        let store = SqliteStore::open(
            dir.path(),
            &StoreConfig::default(),
            Arc::new(Metrics::new()),
            Box::new(move |batch| {
                if batch[0].id == 1 {
                    b.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = open_rx.lock().unwrap().recv();
                    return;
                }
                let held: i64 = Connection::open(&db)
                    .unwrap()
                    .query_row("SELECT count(*) FROM held", [], |r| r.get(0))
                    .unwrap();
                l.lock().unwrap().push((batch[0].id, held));
            }),
        )
        .unwrap();
        let store = Arc::new(store);
        let queued = |n: usize| {
            let store = store.clone();
            async move {
                while store.ops.max_capacity() - store.ops.capacity() < n {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
        };
        let s = store.clone();
        let first = tokio::spawn(async move { s.append(new("r", "1")).await });
        while !blocked.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let s = store.clone();
        let second = tokio::spawn(async move { s.append(new("r", "2")).await });
        queued(1).await;
        let s = store.clone();
        let held = tokio::spawn(async move { s.hold(new("r", "3")).await });
        queued(2).await;
        open_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap().id, 1);
        assert_eq!(second.await.unwrap().unwrap().id, 2);
        held.await.unwrap().unwrap();
        assert_eq!(*log.lock().unwrap(), vec![(2, 0)]);
    }

    /// A database a version-2 node made (room settings without a version)
    /// opens with its settings at version 0; the next patch makes them 1
    /// and keeps the fields it does not name; it opens again as it is.
    #[tokio::test]
    async fn a_version_2_database_gains_the_settings_version() {
        let db = sqlite();
        Connection::open(db.0.path().join(DB_FILE))
            .unwrap()
            .execute_batch(
                "CREATE TABLE room_settings (room TEXT PRIMARY KEY, closed INTEGER NOT NULL, \
                 slow_mode_s INTEGER NOT NULL, premod INTEGER NOT NULL) WITHOUT ROWID; \
                 INSERT INTO room_settings VALUES ('r', 1, 30, 0); \
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        let old = RoomSettings {
            room: "r".into(),
            closed: true,
            slow_mode_s: 30,
            premod: false,
            version: 0,
        };
        let store = db.open(Box::new(|_| {})).await;
        assert_eq!(
            store.load_moderation().await.unwrap().rooms,
            std::slice::from_ref(&old)
        );
        let patch = RoomPatch {
            premod: Some(true),
            ..RoomPatch::default()
        };
        let patched = store.set_room("r", &patch, entry("room")).await.unwrap();
        let expected = RoomSettings {
            premod: true,
            version: 1,
            ..old
        };
        assert_eq!(patched, expected);
        store.close().await;
        drop(store);
        let again = db.open(Box::new(|_| {})).await;
        assert_eq!(again.load_moderation().await.unwrap().rooms, [expected]);
    }

    /// A video's density reads the `(room, vt)` index and nothing else:
    /// not the whole table, nor every row of the room.
    #[tokio::test]
    async fn density_reads_only_the_video_time_index() {
        let db = sqlite();
        let store = db.open(Box::new(|_| {})).await;
        store.append(new("r", "x")).await.unwrap();
        let conn = Connection::open(db.0.path().join(DB_FILE)).unwrap();
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {DENSITY}"))
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map(params!["r", 5.0, 100], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("USING COVERING INDEX danmaku_by_vt (room=?")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN")),
            "{plan:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_reads_shares_a_few_connections() {
        let db = sqlite();
        let store = Arc::new(db.open(Box::new(|_| {})).await);
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let reads: Vec<_> = (0..32)
            .map(|_| {
                let (store, running, most) = (store.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    store
                        .read(move |c| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            running.fetch_sub(1, Ordering::SeqCst);
                            read_last_id(c, "r")
                        })
                        .await
                })
            })
            .collect();
        for r in reads {
            assert_eq!(r.await.unwrap().unwrap(), 0);
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            READERS,
            "32 reads, {READERS} at a time"
        );
        // The writer's connection and the readers', each with its database
        // and WAL file open: nothing more stays open after the burst.
        let dir = std::fs::canonicalize(db.0.path()).unwrap();
        let open = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|path| path.starts_with(&dir) && !path.to_string_lossy().ends_with("-shm"))
            .count();
        assert!(open <= 2 * (1 + READERS), "{open} database files open");
    }
}
