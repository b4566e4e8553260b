//! The store: durable history, and the one place ids are assigned.
//!
//! A store takes validated danmaku, gives each the next id of its room,
//! makes them durable by group commit, and hands every committed batch, in
//! commit order, to the commit listener it was opened with (the bus) before
//! acknowledging any of its sends. It never sees a socket or a viewer.
//!
//! Backends live beside this trait: `sqlite.rs` is the embedded default,
//! `postgres.rs` the one several nodes share.

#[cfg(test)]
pub(crate) mod conformance;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::danmaku::{Danmaku, NewDanmaku};
use crate::moderation::{AuditEntry, Change, Held, RoomPatch, RoomSettings, Snapshot};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Receives every committed batch, in commit order, on the store's writer.
/// It must not block: it hands the batch on and returns.
pub type CommitListener = Box<dyn Fn(&[Danmaku]) + Send>;

/// Makes the audit entry of an approval from the danmaku it stored (whose
/// id exists only inside the approving transaction).
pub type AuditOf = Box<dyn FnOnce(&Danmaku) -> AuditEntry + Send>;

/// A backend's own error, carried by a [`StoreError`] without naming the
/// backend's crate. It is printed in the error's message (not also as its
/// source, which would print it twice).
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Why the store could not do what was asked.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is shutting down and takes no new sends.
    #[error("the store is closed")]
    Closed,
    /// The disk (or the quota) holding the store is full: nothing was
    /// written. Reads still work, and writes succeed again once there is
    /// space, without a restart.
    #[error("the disk is full: {0}")]
    Full(Cause),
    /// The database cannot be reached (a server backend that is down or
    /// restarting): nothing was written. The store reconnects by itself.
    #[error("the database is unavailable: {0}")]
    Unavailable(Cause),
    /// The database failed; the sends of the failed batch are not stored.
    #[error("database error: {0}")]
    Database(Cause),
    /// The data directory could not be prepared.
    #[error("cannot prepare data directory: {0}")]
    Io(Arc<std::io::Error>),
    /// A worker thread stopped unexpectedly.
    #[error("store worker failed: {0}")]
    Worker(String),
}

/// A room's danmaku counted by video time ([`Store::density`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Density {
    /// `counts[i]`: the danmaku of bucket `i`, up to the last bucket below
    /// the cap that holds any (empty when none does).
    pub counts: Vec<u64>,
    /// The danmaku at or past the cap (`max_buckets * bucket_s` seconds),
    /// left out of `counts`.
    pub beyond: u64,
}

impl Density {
    /// The density of `(bucket, count)` rows as a query grouped them, in
    /// any order, where every bucket at or past `max_buckets` counts as
    /// beyond: the one reading of both backends' rows.
    pub(crate) fn from_groups(
        groups: impl IntoIterator<Item = (u64, u64)>,
        max_buckets: usize,
    ) -> Density {
        let mut density = Density::default();
        for (bucket, count) in groups {
            match usize::try_from(bucket) {
                Ok(i) if i < max_buckets => {
                    if density.counts.len() <= i {
                        density.counts.resize(i + 1, 0);
                    }
                    density.counts[i] += count;
                }
                _ => density.beyond += count,
            }
        }
        density
    }
}

/// Durable danmaku history.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores one danmaku and returns it with its id and server time. Resolves
    /// only once the danmaku is durable; many concurrent appends share one
    /// commit.
    async fn append(&self, new: NewDanmaku) -> Result<Danmaku, StoreError>;

    /// Stores many danmaku (an import) in their order, in group commits of
    /// up to `store.max_batch`, each one op on the writer queue: within a
    /// commit nothing else interleaves, so every room's ids follow the
    /// order of `news`; other sends may only come between two commits.
    /// Each commit goes to the commit listener like any batch (imported
    /// danmaku are live). On error, the commits before it stay stored and
    /// the rest is not: the error says nothing of how far it got.
    async fn append_many(&self, news: Vec<NewDanmaku>) -> Result<Vec<Danmaku>, StoreError>;

    /// Up to `limit` danmaku of `room` with an id above `after`, ascending.
    async fn after(&self, room: &str, after: u64, limit: usize)
        -> Result<Vec<Danmaku>, StoreError>;

    /// Up to `limit` danmaku of `room` whose video time lies in `[from, to)`,
    /// ascending by video time.
    async fn by_video_time(
        &self,
        room: &str,
        from: f64,
        to: f64,
        limit: usize,
    ) -> Result<Vec<Danmaku>, StoreError>;

    /// How many danmaku of `room` lie in each video-time bucket of
    /// `bucket_s` seconds (finite, above 0), counted by the database: bucket
    /// `i` holds those with a video time in `[i * bucket_s, (i + 1) *
    /// bucket_s)`, for `i` below `max_buckets`; danmaku without one are not
    /// counted. See [`Density`].
    async fn density(
        &self,
        room: &str,
        bucket_s: f64,
        max_buckets: usize,
    ) -> Result<Density, StoreError>;

    /// One stored danmaku, if it exists (and was not recalled).
    async fn get(&self, room: &str, id: u64) -> Result<Option<Danmaku>, StoreError>;

    /// The newest id of `room` (0 if it has none).
    async fn last_id(&self, room: &str) -> Result<u64, StoreError>;

    /// Whether the store's last write failed for lack of space, with no
    /// write succeeding since: sends then fail with [`StoreError::Full`]
    /// while reads are served. The store finds out by itself when space
    /// returns.
    fn is_full(&self) -> bool;

    /// Commits and acknowledges every send already queued, then refuses new
    /// ones with [`StoreError::Closed`]. Resolves when the writer has stopped.
    async fn close(&self);
}

/// Moderation's durable state: mutes, bans, room settings, held sends and
/// the audit log. Every change is written together with its audit entry, in one
/// transaction, so the log never misses an action that took effect.
#[async_trait]
pub trait ModerationStore: Send + Sync + 'static {
    /// The unexpired mutes and bans, every room's settings and the held
    /// sends: at start-up, before the server takes requests, and whenever
    /// the moderation service reloads (after a broker outage, and every
    /// 30 s).
    async fn load_moderation(&self) -> Result<Snapshot, StoreError>;

    /// Durably holds a send for pre-moderation and numbers it; after the
    /// sends queued before it are stored.
    async fn hold(&self, new: NewDanmaku) -> Result<Held, StoreError>;

    /// Applies `change` and appends `entry` to the audit log, atomically.
    /// Returns whether the change found something to change (a recall of
    /// a missing danmaku, a rejection of a missing held send: false, and
    /// then nothing is written).
    async fn record(&self, change: Change, entry: AuditEntry) -> Result<bool, StoreError>;

    /// Applies `patch` to the settings the store holds for `room` (the
    /// defaults if none), bumps their version by one and appends `entry`
    /// to the audit log, atomically: of patches made at once, on any node,
    /// each applies to the result of the one before, so patches of
    /// different fields all hold. Returns the settings as stored.
    async fn set_room(
        &self,
        room: &str,
        patch: &RoomPatch,
        entry: AuditEntry,
    ) -> Result<RoomSettings, StoreError>;

    /// Approves held send `held` (whose send is `new`) in one transaction:
    /// deletes it from the held sends, stores `new` under its room's next
    /// id exactly as [`Store::append`] does, and appends the audit entry
    /// `entry` makes for the stored danmaku. Once committed, the danmaku
    /// goes to the commit listener like any committed batch, and only then
    /// is it returned. `None`, and nothing written, if the held send no
    /// longer exists (approved or rejected meanwhile); on error nothing is
    /// written either.
    async fn approve(
        &self,
        held: u64,
        new: NewDanmaku,
        entry: AuditOf,
    ) -> Result<Option<Danmaku>, StoreError>;

    /// Appends `entry` to the audit log alone: an action that changes no
    /// moderation state (an import).
    async fn note(&self, entry: AuditEntry) -> Result<(), StoreError>;

    /// Up to `limit` audit entries with an id below `before` (all when
    /// `None`), newest first.
    async fn audit(&self, limit: usize, before: Option<u64>)
        -> Result<Vec<AuditEntry>, StoreError>;
}

/// [`Store::append_many`] for every backend: `news` cut into chunks of at
/// most `max_batch`, each handed to `commit` (one op on the backend's
/// writer queue) and awaited before the next is queued.
pub(crate) async fn in_chunks<F, Fut>(
    news: Vec<NewDanmaku>,
    max_batch: usize,
    mut commit: F,
) -> Result<Vec<Danmaku>, StoreError>
where
    F: FnMut(Vec<NewDanmaku>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Danmaku>, StoreError>>,
{
    let mut stored = Vec::with_capacity(news.len());
    let mut news = news.into_iter().peekable();
    while news.peek().is_some() {
        let chunk: Vec<NewDanmaku> = news.by_ref().take(max_batch.max(1)).collect();
        stored.extend(commit(chunk).await?);
    }
    Ok(stored)
}

/// Answers every sender of a group commit: each its stored danmaku, in
/// order, or all the commit's error.
pub(crate) fn answer_all(
    replies: &mut Vec<tokio::sync::oneshot::Sender<Result<Danmaku, StoreError>>>,
    committed: Result<Vec<Danmaku>, StoreError>,
) {
    match committed {
        Ok(stored) => {
            for (reply, d) in replies.drain(..).zip(stored) {
                // The sender may have gone; its danmaku is stored anyway.
                let _ = reply.send(Ok(d));
            }
        }
        Err(e) => {
            for reply in replies.drain(..) {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
