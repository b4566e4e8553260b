//! The moderation service: owns the live state, the held sends and the
//! durable ledger, and runs every moderation action by one rule.
//!
//! An action is durable first (the change and its audit entry in one store
//! transaction), then takes effect here, then is announced to the other
//! nodes, so that a failed write leaves nothing in effect that a restart
//! would undo. Another node's announcement takes effect through
//! [`Moderator::apply`], the same code a local action uses. The bus may
//! lose announcements (its broker away), so the service also reloads the
//! durable state: when the node asks ([`Moderator::reload_soon`], on a bus
//! reconnection) and every [`RELOAD_EVERY`] as a safety net.
//!
//! The service knows the store's moderation side and nothing of the hub or
//! the bus: a recall's `delete` frame is the node's to publish, and
//! announcing is a callback the node gives.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::Notify;

use super::held::HeldQueues;
use super::{AuditEntry, Ban, Change, Held, Moderation, Mute, RoomPatch, RoomSettings};
use crate::bus::Event;
use crate::danmaku::{now_ms, Danmaku, NewDanmaku};
use crate::error::{ApiError, ErrorCode};
use crate::store::{ModerationStore, StoreError};

/// How long an author may recall their own danmaku, from its `ts`.
pub const SELF_RECALL_MS: i64 = 120_000;

/// How often the durable state is read again, in case an announcement
/// was lost without the bus noticing.
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// How often expired mutes and bans and idle slow-mode times are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Tells the other nodes about a change that took effect here.
pub type Announce = Box<dyn Fn(Event) + Send + Sync>;

/// Mutes, bans, room settings and held sends: the one owner of their live
/// state, which the guard asks and every change goes through.
pub struct Moderator {
    live: Moderation,
    held: HeldQueues,
    ledger: Arc<dyn ModerationStore>,
    announce: Announce,
    /// While a reload reads the store: the changes applied meanwhile, to
    /// apply again on the state it read (which may predate them).
    replay: Mutex<Option<Vec<Event>>>,
    /// One reload at a time, so that none replaces another's replay.
    reloading: tokio::sync::Mutex<()>,
    /// Wakes the background task for a reload now.
    wake: Arc<Notify>,
}

impl Moderator {
    /// Loads the durable state from `ledger`. `max_keys` bounds the
    /// slow-mode clock (`limits.max_limiter_keys`); `announce` carries each
    /// change made here to the other nodes.
    pub async fn load(
        ledger: Arc<dyn ModerationStore>,
        max_keys: usize,
        announce: Announce,
    ) -> Result<Moderator, StoreError> {
        let mut snapshot = ledger.load_moderation().await?;
        Ok(Moderator {
            held: HeldQueues::new(std::mem::take(&mut snapshot.held)),
            live: Moderation::new(snapshot, max_keys),
            ledger,
            announce,
            replay: Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
            wake: Arc::new(Notify::new()),
        })
    }

    /// Starts the background work on the current runtime: the sweep, and
    /// the reloads (every [`RELOAD_EVERY`] and when asked). The task ends
    /// soon after the service is dropped.
    pub fn start_background(self: &Arc<Self>) {
        let service = Arc::downgrade(self);
        let wake = self.wake.clone();
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            let start = tokio::time::Instant::now() + RELOAD_EVERY;
            let mut reload = tokio::time::interval_at(start, RELOAD_EVERY);
            for tick in [&mut sweep, &mut reload] {
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            loop {
                let reload_now = tokio::select! {
                    _ = sweep.tick() => false,
                    _ = reload.tick() => true,
                    () = wake.notified() => true,
                };
                let Some(service) = service.upgrade() else {
                    return;
                };
                if reload_now {
                    if let Err(e) = service.reload().await {
                        tracing::warn!(error = %e, "cannot reload moderation; trying again later");
                    }
                } else {
                    // O(entries): off the runtime's worker threads.
                    let _ = tokio::task::spawn_blocking(move || service.live.sweep()).await;
                }
            }
        });
    }

    /// Asks the background task for a reload now, without waiting for it
    /// (the bus reconnected: announcements may have been lost meanwhile).
    pub fn reload_soon(&self) {
        self.wake.notify_one();
    }

    /// Reads the durable state again and replaces the live state and the
    /// held sends with it. Changes that take effect while the store is
    /// read are applied again on what it read, so none is lost; on an
    /// error, the state stays as it was.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _one = self.reloading.lock().await;
        *self.lock_replay() = Some(Vec::new());
        let loaded = self.ledger.load_moderation().await;
        let mut replay = self.lock_replay();
        let changes = replay.take().unwrap_or_default();
        let mut snapshot = loaded?;
        self.held.replace(std::mem::take(&mut snapshot.held));
        self.live.replace(snapshot);
        for change in &changes {
            self.take_effect(change);
        }
        Ok(())
    }

    /// Applies an event another node announced: its change is already
    /// durable. Idempotent, and safe in any order with this node's own
    /// changes (each sets a value or removes one; room settings older than
    /// those held are ignored; a hold heard after its settlement stays
    /// out). Events that are not moderation are ignored.
    pub fn apply(&self, event: &Event) {
        let mut replay = self.lock_replay();
        self.take_effect(event);
        if let Some(changes) = replay.as_mut() {
            changes.push(event.clone());
        }
    }

    /// The live state, which the guard asks on every send and stream.
    pub fn live(&self) -> &Moderation {
        &self.live
    }

    /// The sends `room` holds, oldest first.
    pub fn held(&self, room: &str) -> Vec<Held> {
        self.held.list(room)
    }

    /// Recalls danmaku `d` for `actor`: deletes it from history and tells
    /// the other nodes. An admin may recall any danmaku; its author (the
    /// same user id, guests included) only within [`SELF_RECALL_MS`]. The
    /// caller publishes the `delete` frame to its own viewers.
    pub async fn recall(&self, actor: &str, admin: bool, d: &Danmaku) -> Result<(), ApiError> {
        let action = if admin {
            "recall"
        } else if d.user == actor && now_ms() - d.ts <= SELF_RECALL_MS {
            "self_recall"
        } else if d.user == actor {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "an author may recall a danmaku only within 120 s of sending it",
            ));
        } else {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "only its author or an admin may recall a danmaku",
            ));
        };
        let detail = json!({ "user": d.user, "text": d.text });
        let entry = entry(actor, action, Some(&d.room), d.id.to_string(), detail);
        let change = Change::Recall {
            room: d.room.clone(),
            id: d.id,
        };
        // Someone else recalled it meanwhile.
        if !self.ledger.record(change, entry).await? {
            return Err(no_danmaku());
        }
        (self.announce)(Event::Recalled {
            room: d.room.clone(),
            ids: vec![d.id],
        });
        Ok(())
    }

    /// Mutes `user` in `room` (or everywhere) for `seconds`.
    pub async fn mute(
        &self,
        actor: &str,
        room: Option<&str>,
        user: &str,
        seconds: u64,
    ) -> Result<Mute, ApiError> {
        let mute = Mute {
            room: room.map(str::to_owned),
            user: user.to_owned(),
            until: until(seconds),
        };
        let detail = json!({ "seconds": seconds, "until": mute.until });
        let entry = entry(actor, "mute", room, user.to_owned(), detail);
        self.change(Change::Mute(mute.clone()), entry).await?;
        Ok(mute)
    }

    /// Lifts a mute of `user` in `room` (or everywhere); `not_found` if
    /// the shared store holds no such mute (one made on another node
    /// counts before this node has heard of it).
    pub async fn unmute(
        &self,
        actor: &str,
        room: Option<&str>,
        user: &str,
    ) -> Result<(), ApiError> {
        // Asked of the shared store, not of this node's copy, which may
        // not have heard yet of a mute made on another node.
        let entry = entry(actor, "unmute", room, user.to_owned(), json!({}));
        let change = Change::Unmute {
            room: room.map(str::to_owned),
            user: user.to_owned(),
        };
        if !self.change_found(change, entry).await? {
            return Err(ApiError::new(ErrorCode::NotFound, "no such mute"));
        }
        Ok(())
    }

    /// Bans an address for `seconds`, or for good without.
    pub async fn ban(
        &self,
        actor: &str,
        ip: IpAddr,
        seconds: Option<u64>,
    ) -> Result<Ban, ApiError> {
        let ban = Ban {
            ip,
            until: seconds.map(until),
        };
        let detail = json!({ "seconds": seconds, "until": ban.until });
        let entry = entry(actor, "ban", None, ip.to_string(), detail);
        self.change(Change::Ban(ban.clone()), entry).await?;
        Ok(ban)
    }

    /// Lifts a ban; `not_found` if the shared store holds no ban of the
    /// address (one made on another node counts before this node heard).
    pub async fn unban(&self, actor: &str, ip: IpAddr) -> Result<(), ApiError> {
        let entry = entry(actor, "unban", None, ip.to_string(), json!({}));
        if !self.change_found(Change::Unban(ip), entry).await? {
            return Err(ApiError::new(ErrorCode::NotFound, "no such ban"));
        }
        Ok(())
    }

    /// Changes the fields of a room's settings that `patch` names; returns
    /// the settings as the store now holds them. The store applies the
    /// patch to its own row, so that patches of different fields made at
    /// once on different nodes all hold, and versions the result, so that
    /// every node ends on the newest settings whatever order it hears of
    /// them in.
    pub async fn set_room(
        &self,
        actor: &str,
        room: &str,
        patch: RoomPatch,
    ) -> Result<RoomSettings, ApiError> {
        let detail = serde_json::to_value(&patch).unwrap_or_default();
        let entry = entry(actor, "room", Some(room), room.to_owned(), detail);
        let settings = self.ledger.set_room(room, &patch, entry).await?;
        self.took_effect(Event::RoomSet {
            settings: settings.clone(),
        });
        Ok(settings)
    }

    /// Holds a send for a moderator, durably, if its room has space.
    pub async fn hold(&self, new: NewDanmaku) -> Result<Held, ApiError> {
        self.held.check_room(&new.room)?;
        let held = self.ledger.hold(new).await?;
        self.took_effect(Event::Held { held: held.clone() });
        Ok(held)
    }

    /// Approves a held send: stores it under its original sender's user
    /// and name. One store transaction removes the held send, stores the
    /// danmaku and writes the audit entry; the store's commit listener
    /// then publishes the danmaku like any committed send (to the other
    /// nodes too), so only the settlement is announced here.
    pub async fn approve(&self, actor: &str, room: &str, held: u64) -> Result<Danmaku, ApiError> {
        let taken = self.held.take(room, held).ok_or_else(no_held)?;
        let (actor, in_room) = (actor.to_owned(), room.to_owned());
        let audit = Box::new(move |d: &Danmaku| {
            let detail = json!({ "id": d.id, "user": d.user });
            entry(&actor, "approve", Some(&in_room), held.to_string(), detail)
        });
        let approved = self
            .ledger
            .approve(held, taken.danmaku.clone(), audit)
            .await;
        self.settle(taken, approved)
    }

    /// Rejects a held send: it is dropped.
    pub async fn reject(&self, actor: &str, room: &str, held: u64) -> Result<(), ApiError> {
        let taken = self.held.take(room, held).ok_or_else(no_held)?;
        let detail = json!({ "user": taken.danmaku.user, "text": taken.danmaku.text });
        let entry = entry(actor, "reject", Some(room), held.to_string(), detail);
        let rejected = self.ledger.record(Change::Reject { held }, entry).await;
        self.settle(taken, rejected.map(|found| found.then_some(())))
    }

    /// The audit log, newest first: up to `limit` entries below `before`.
    pub async fn audit(
        &self,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<AuditEntry>, ApiError> {
        Ok(self.ledger.audit(limit, before).await?)
    }

    /// Records a change of the live state (a mute, a ban) with its audit
    /// entry, then makes it take effect and announces it.
    async fn change(&self, change: Change, entry: AuditEntry) -> Result<(), ApiError> {
        // Mutes and bans always find something to change.
        self.change_found(change, entry).await.map(drop)
    }

    /// Records `change` durably, then applies and announces it; false (and
    /// nothing written, applied or announced) if the store held nothing it
    /// changes (an unmute or unban of nobody).
    async fn change_found(&self, change: Change, entry: AuditEntry) -> Result<bool, ApiError> {
        if !self.ledger.record(change.clone(), entry).await? {
            return Ok(false);
        }
        self.took_effect(Event::Moderated { change });
        Ok(true)
    }

    /// The answer to an approval or rejection of `taken`: `None` means the
    /// store no longer held it (settled elsewhere, and not yet heard
    /// here); on an error nothing was written, so it is held again.
    fn settle<T>(
        &self,
        taken: Held,
        outcome: Result<Option<T>, StoreError>,
    ) -> Result<T, ApiError> {
        let settled = Event::Settled {
            room: taken.danmaku.room.clone(),
            held: taken.held,
        };
        match outcome {
            Ok(Some(done)) => {
                self.took_effect(settled);
                Ok(done)
            }
            Ok(None) => {
                // Its settler announces it; remember it here already.
                self.apply(&settled);
                Err(no_held())
            }
            Err(e) => {
                self.held.insert(taken);
                Err(e.into())
            }
        }
    }

    /// A durable change made here: takes effect, then goes to the other
    /// nodes.
    fn took_effect(&self, event: Event) {
        self.apply(&event);
        (self.announce)(event);
    }

    /// Changes the live state as `event` says.
    fn take_effect(&self, event: &Event) {
        match event {
            Event::Moderated { change } => match change {
                Change::Mute(mute) => self.live.mute(mute.clone()),
                Change::Unmute { room, user } => self.live.unmute(room.as_deref(), user),
                Change::Ban(ban) => self.live.ban(ban.clone()),
                Change::Unban(ip) => self.live.unban(*ip),
                // Announced as `Recalled` and `Settled`.
                Change::Recall { .. } | Change::Reject { .. } => {}
            },
            Event::RoomSet { settings } => self.live.set_room(settings.clone()),
            Event::Held { held } => self.held.insert(held.clone()),
            Event::Settled { room, held } => self.held.settle(room, *held),
            Event::Committed { .. } | Event::Recalled { .. } => {}
        }
    }

    fn lock_replay(&self) -> std::sync::MutexGuard<'_, Option<Vec<Event>>> {
        // Holds only a list: a panic elsewhere leaves it whole.
        self.replay.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `not_found` for a recall of a danmaku that is not (or no longer) stored.
pub fn no_danmaku() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such danmaku in this room")
}

fn no_held() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such held send in this room")
}

/// `seconds` from now, in ms since the epoch (saturating: "for ever").
fn until(seconds: u64) -> i64 {
    let ms = i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    now_ms().saturating_add(ms)
}

fn entry(
    actor: &str,
    action: &str,
    room: Option<&str>,
    target: String,
    detail: serde_json::Value,
) -> AuditEntry {
    AuditEntry {
        id: 0,
        ts: now_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        room: room.map(str::to_owned),
        target: Some(target),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{OnceLock, Weak};

    use super::*;
    use crate::bus::Envelope;
    use crate::config::StoreConfig;
    use crate::danmaku::{Color, Mode};
    use crate::metrics::Metrics;
    use crate::store::{SqliteStore, Store};

    /// A store in a new directory, and the danmaku its commit listener saw.
    fn store() -> (
        tempfile::TempDir,
        Arc<SqliteStore>,
        Arc<Mutex<Vec<Danmaku>>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let committed = Arc::new(Mutex::new(Vec::new()));
        let seen = committed.clone();
        let store = SqliteStore::open(
            dir.path(),
            &StoreConfig::default(),
            Arc::new(Metrics::new()),
            Box::new(move |batch| seen.lock().unwrap().extend_from_slice(batch)),
        )
        .unwrap();
        (dir, Arc::new(store), committed)
    }

    /// A node's moderation over `store`; what it announces goes nowhere
    /// (a broker that is away).
    async fn isolated(store: &Arc<SqliteStore>) -> Moderator {
        Moderator::load(store.clone(), 100, Box::new(|_| {}))
            .await
            .unwrap()
    }

    /// What one node announces, and where it goes: to the other node's
    /// service once it is set, through the bus's wire format.
    #[derive(Default)]
    struct Wire {
        to: OnceLock<Weak<Moderator>>,
        sent: Mutex<Vec<Event>>,
    }

    impl Wire {
        fn announce(self: &Arc<Self>) -> Announce {
            let wire = self.clone();
            Box::new(move |event| {
                wire.sent.lock().unwrap().push(event.clone());
                let envelope = Envelope {
                    origin: "a".into(),
                    event,
                };
                let bytes = serde_json::to_vec(&envelope).unwrap();
                let heard: Envelope = serde_json::from_slice(&bytes).unwrap();
                if let Some(to) = wire.to.get().and_then(Weak::upgrade) {
                    to.apply(&heard.event);
                }
            })
        }

        fn sent(&self) -> Vec<Event> {
            std::mem::take(&mut self.sent.lock().unwrap())
        }
    }

    /// Two nodes' services over one store, each announcing to the other.
    async fn pair(
        store: &Arc<SqliteStore>,
    ) -> (Arc<Moderator>, Arc<Wire>, Arc<Moderator>, Arc<Wire>) {
        let (to_b, to_a) = (Arc::new(Wire::default()), Arc::new(Wire::default()));
        let a = Arc::new(
            Moderator::load(store.clone(), 100, to_b.announce())
                .await
                .unwrap(),
        );
        let b = Arc::new(
            Moderator::load(store.clone(), 100, to_a.announce())
                .await
                .unwrap(),
        );
        to_b.to.set(Arc::downgrade(&b)).unwrap();
        to_a.to.set(Arc::downgrade(&a)).unwrap();
        (a, to_b, b, to_a)
    }

    fn send(room: &str, text: &str) -> NewDanmaku {
        NewDanmaku {
            room: room.into(),
            user: "viewer".into(),
            name: "n".into(),
            text: text.into(),
            mode: Mode::Scroll,
            color: Color(0xffffff),
            size: 25,
            vt: None,
            priority: false,
        }
    }

    fn held(id: u64, room: &str) -> Held {
        Held {
            held: id,
            ts: 1,
            danmaku: send(room, &id.to_string()),
        }
    }

    fn moderated(change: Change) -> Event {
        Event::Moderated { change }
    }

    fn muted(m: &Moderator, room: &str, user: &str) -> bool {
        m.live().check_sender(room, user, false).is_err()
    }

    fn held_ids(m: &Moderator, room: &str) -> Vec<u64> {
        m.held(room).iter().map(|h| h.held).collect()
    }

    #[tokio::test]
    async fn remote_changes_apply_idempotently_and_in_any_order() {
        let (_dir, store, _) = store();
        let m = isolated(&store).await;
        let later = now_ms() + 60_000;
        let mute = Change::Mute(Mute {
            room: Some("r".into()),
            user: "u".into(),
            until: later,
        });
        let unmute = Change::Unmute {
            room: Some("r".into()),
            user: "u".into(),
        };
        m.apply(&moderated(mute.clone()));
        m.apply(&moderated(mute.clone()));
        assert!(muted(&m, "r", "u"));
        assert_eq!(m.live().mutes(Some("r")).len(), 1, "one mute, heard twice");
        m.apply(&moderated(unmute.clone()));
        m.apply(&moderated(unmute.clone()));
        assert!(!muted(&m, "r", "u"), "an unmute heard twice lifts it once");
        assert!(m.live().mutes(Some("r")).is_empty());

        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let ban = Change::Ban(Ban { ip, until: None });
        m.apply(&moderated(Change::Unban(ip)));
        m.apply(&moderated(ban.clone()));
        m.apply(&moderated(ban));
        assert!(m.live().check_ip(ip).is_err());
        assert_eq!(m.live().bans().len(), 1);

        let closed = Event::RoomSet {
            settings: RoomSettings {
                room: "r".into(),
                closed: true,
                slow_mode_s: 5,
                premod: false,
                version: 1,
            },
        };
        m.apply(&closed);
        m.apply(&closed);
        assert!(m.live().room("r").closed);
        assert_eq!(m.live().room("r").version, 1);

        // Not moderation: ignored.
        m.apply(&Event::Recalled {
            room: "r".into(),
            ids: vec![1],
        });
        assert!(m.live().room("r").closed);
    }

    /// Two nodes patch different fields of one room at once, and hear of
    /// each other late and out of order: both patches hold, and neither
    /// node goes back to older settings.
    #[tokio::test]
    async fn room_settings_heard_late_never_go_back() {
        let (_dir, store, _) = store();
        // No bus between them: each hears the other only when told below.
        let (a, b) = (isolated(&store).await, isolated(&store).await);
        let closed = RoomPatch {
            closed: Some(true),
            ..RoomPatch::default()
        };
        let slow = RoomPatch {
            slow_mode_s: Some(5),
            ..RoomPatch::default()
        };
        let on_a = a.set_room("admin", "r", closed).await.unwrap();
        let on_b = b.set_room("admin", "r", slow).await.unwrap();
        assert_eq!((on_a.version, on_b.version), (1, 2));
        assert!(
            on_b.closed && on_b.slow_mode_s == 5,
            "B's patch kept A's: {on_b:?}"
        );
        // B hears A's older settings after its own: it keeps its own.
        b.apply(&Event::RoomSet {
            settings: on_a.clone(),
        });
        assert_eq!(b.live().room("r"), on_b);
        // A hears B's newer ones, then its own again (a broker repeating
        // it): it keeps B's.
        for heard in [&on_b, &on_a] {
            a.apply(&Event::RoomSet {
                settings: heard.clone(),
            });
        }
        assert_eq!(a.live().room("r"), on_b);
        assert_eq!(store.load_moderation().await.unwrap().rooms, vec![on_b]);
    }

    #[tokio::test]
    async fn holds_and_settlements_from_other_nodes() {
        let (_dir, store, _) = store();
        let m = isolated(&store).await;
        m.apply(&Event::Held { held: held(2, "r") });
        m.apply(&Event::Held { held: held(1, "r") });
        m.apply(&Event::Held { held: held(2, "r") });
        assert_eq!(held_ids(&m, "r"), vec![1, 2], "once each, oldest first");
        let settled = Event::Settled {
            room: "r".into(),
            held: 1,
        };
        m.apply(&settled);
        m.apply(&settled);
        assert_eq!(held_ids(&m, "r"), vec![2]);
        // A settlement heard before its hold: the hold stays out.
        m.apply(&Event::Settled {
            room: "r".into(),
            held: 3,
        });
        m.apply(&Event::Held { held: held(3, "r") });
        assert_eq!(held_ids(&m, "r"), vec![2]);
        // Heard of, but not in the store (settled meanwhile, its settlement
        // not heard yet): an approval finds nothing, and forgets it.
        let e = m.approve("admin", "r", 2).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(held_ids(&m, "r").is_empty());
    }

    #[tokio::test]
    async fn reload_replaces_the_live_state_and_the_held_sends() {
        let (_dir, store, _) = store();
        let (a, b) = (isolated(&store).await, isolated(&store).await);
        a.mute("admin", None, "u", 60).await.unwrap();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        a.ban("admin", ip, None).await.unwrap();
        a.set_room(
            "admin",
            "r",
            RoomPatch {
                premod: Some(true),
                ..RoomPatch::default()
            },
        )
        .await
        .unwrap();
        let kept = a.hold(send("r", "kept")).await.unwrap();
        // What B heard but the store does not hold: a lost rejection.
        b.apply(&Event::Held {
            held: held(kept.held + 100, "r"),
        });
        b.apply(&moderated(Change::Mute(Mute {
            room: None,
            user: "ghost".into(),
            until: now_ms() + 60_000,
        })));
        assert!(!muted(&b, "r", "u") && b.live().check_ip(ip).is_ok());

        b.reload().await.unwrap();
        assert!(muted(&b, "r", "u"), "the mute B missed");
        assert!(b.live().check_ip(ip).is_err(), "the ban B missed");
        assert!(b.live().room("r").premod, "the settings B missed");
        assert_eq!(
            held_ids(&b, "r"),
            vec![kept.held],
            "the store's held sends only"
        );
        assert!(
            !muted(&b, "r", "ghost"),
            "what the store does not hold is gone"
        );
    }

    #[tokio::test]
    async fn changes_on_one_node_take_effect_on_the_other() {
        let (_dir, store, committed) = store();
        let (a, to_b, b, to_a) = pair(&store).await;
        let ip: IpAddr = "198.51.100.4".parse().unwrap();

        a.mute("admin", Some("r"), "u", 60).await.unwrap();
        a.ban("admin", ip, Some(60)).await.unwrap();
        a.set_room(
            "admin",
            "r",
            RoomPatch {
                premod: Some(true),
                slow_mode_s: Some(10),
                ..RoomPatch::default()
            },
        )
        .await
        .unwrap();
        assert!(muted(&b, "r", "u"));
        assert!(b.live().check_ip(ip).is_err());
        assert_eq!(
            b.live().verdict("r", false),
            crate::moderation::Verdict::Hold
        );
        assert_eq!(b.live().room("r").slow_mode_s, 10);
        assert_eq!(to_b.sent().len(), 3, "one announcement each");

        let first = a.hold(send("r", "first")).await.unwrap();
        let second = a.hold(send("r", "second")).await.unwrap();
        assert_eq!(held_ids(&b, "r"), vec![first.held, second.held]);
        // Approved on B: A forgets it too; the danmaku reaches the store's
        // commit listener (whence the bus), and is not announced again.
        to_b.sent();
        let d = b.approve("admin", "r", first.held).await.unwrap();
        assert_eq!(d.text, "first");
        assert_eq!(held_ids(&a, "r"), vec![second.held]);
        assert_eq!(
            to_a.sent(),
            vec![Event::Settled {
                room: "r".into(),
                held: first.held
            }]
        );
        assert_eq!(committed.lock().unwrap().last().map(|c| c.id), Some(d.id));
        // Settled on one node while the other tries: found once.
        assert_eq!(
            b.approve("admin", "r", first.held).await.unwrap_err().code,
            ErrorCode::NotFound
        );
        a.reject("admin", "r", second.held).await.unwrap();
        assert!(held_ids(&b, "r").is_empty());

        a.unmute("admin", Some("r"), "u").await.unwrap();
        b.unban("admin", ip).await.unwrap();
        assert!(!muted(&b, "r", "u"));
        assert!(a.live().check_ip(ip).is_ok());

        // A recall is announced for the other nodes' viewers.
        let stored = store.append(send("r", "recall me")).await.unwrap();
        to_b.sent();
        a.recall("admin", true, &stored).await.unwrap();
        assert_eq!(
            to_b.sent(),
            vec![Event::Recalled {
                room: stored.room.clone(),
                ids: vec![stored.id]
            }]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_heard_while_a_reload_reads_survive_it() {
        let (_dir, store, _) = store();
        let (a, _, b, _) = pair(&store).await;
        let muting = tokio::spawn(async move {
            for i in 0..300 {
                a.mute("admin", None, &format!("u{i}"), 60).await.unwrap();
            }
        });
        let mut reloads = 0;
        while !muting.is_finished() {
            b.reload().await.unwrap();
            reloads += 1;
        }
        muting.await.unwrap();
        assert!(reloads > 10, "the reloads overlapped the mutes");
        assert_eq!(b.live().mutes(None).len(), 300);
    }

    #[tokio::test]
    async fn a_mute_or_ban_made_elsewhere_is_lifted_before_it_is_heard() {
        let (_dir, store, _) = store();
        // No bus between them: B has not heard of A's mute and ban.
        let (a, b) = (isolated(&store).await, isolated(&store).await);
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        a.mute("admin", Some("r"), "u", 60).await.unwrap();
        a.ban("admin", ip, Some(60)).await.unwrap();
        assert!(!muted(&b, "r", "u"));
        b.unmute("admin", Some("r"), "u").await.unwrap();
        b.unban("admin", ip).await.unwrap();
        // Gone from the shared store: a second lift finds nothing, and A
        // loses them at its next reload.
        let again = b.unmute("admin", Some("r"), "u").await.unwrap_err();
        assert_eq!(again.code, ErrorCode::NotFound);
        assert_eq!(
            b.unban("admin", ip).await.unwrap_err().code,
            ErrorCode::NotFound
        );
        a.reload().await.unwrap();
        assert!(!muted(&a, "r", "u"));
        assert!(a.live().check_ip(ip).is_ok());
    }

    #[tokio::test]
    async fn reload_soon_catches_up_in_the_background() {
        let (_dir, store, _) = store();
        let (a, b) = (isolated(&store).await, Arc::new(isolated(&store).await));
        b.start_background();
        a.mute("admin", None, "u", 60).await.unwrap();
        b.reload_soon();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !muted(&b, "r", "u") {
            assert!(tokio::time::Instant::now() < deadline, "never reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
