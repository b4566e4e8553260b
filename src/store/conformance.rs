//! The one conformance suite of [`Store`] and [`ModerationStore`]: generic
//! checks that every backend's tests run, through
//! [`conformance_tests!`](conformance_tests), on a fresh database each.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{AuditOf, CommitListener, Density, ModerationStore, Store, StoreError};
use crate::danmaku::{now_ms, Color, Danmaku, Mode, NewDanmaku, MAX_ID};
use crate::moderation::{AuditEntry, Ban, Change, Mute, RoomPatch, RoomSettings};

/// A backend under test: one fresh, empty database, on which stores open.
pub(crate) trait Backing {
    /// The backend's store.
    type Store: Store + ModerationStore;

    /// Opens a store on this database; `listener` is its commit listener.
    async fn open(&self, listener: CommitListener) -> Self::Store;

    /// From now on (until called with `false`), every insert of a danmaku
    /// fails, as on a database that refuses writes.
    async fn fail_inserts(&self, fail: bool);
}

/// Expands to one `#[tokio::test]` per check of the suite, in a module
/// `conformance`, each on the fresh [`Backing`] that `$backing` (evaluated
/// in an async test, in the calling module's scope) makes.
macro_rules! conformance_tests {
    ($backing:expr) => {
        $crate::store::conformance::conformance_tests!(@checks $backing;
            ids_are_contiguous_per_room,
            reads_return_what_was_stored,
            density_counts_by_video_time_in_the_database,
            ids_past_i64_max_name_nothing,
            a_recall_leaves_a_hole,
            approving_stores_releases_and_audits_together,
            a_held_send_is_approved_or_rejected_once,
            a_failed_write_stores_nothing_and_uses_no_id,
            moderation_state_round_trips,
            room_patches_apply_to_the_stored_settings,
            audit_is_newest_first,
            close_commits_what_is_queued_and_refuses_new,
            history_survives_reopen,
            append_many_keeps_order_in_whole_chunks,
        );
    };
    (@checks $backing:expr; $($check:ident),* $(,)?) => {
        mod conformance {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    $crate::store::conformance::$check(&$backing).await;
                }
            )*
        }
    };
}
pub(crate) use conformance_tests;

/// What a store's commit listener saw: every batch, in the order it came.
#[derive(Clone, Default)]
pub(crate) struct Seen(Arc<Mutex<Vec<Vec<Danmaku>>>>);

impl Seen {
    /// A listener that records into this.
    pub(crate) fn listener(&self) -> CommitListener {
        let batches = self.0.clone();
        Box::new(move |batch| batches.lock().unwrap().push(batch.to_vec()))
    }

    /// The batches so far.
    pub(crate) fn batches(&self) -> Vec<Vec<Danmaku>> {
        self.0.lock().unwrap().clone()
    }

    /// Every danmaku so far, in the order published.
    pub(crate) fn all(&self) -> Vec<Danmaku> {
        self.batches().concat()
    }

    /// The ids of `room` so far, in the order published.
    pub(crate) fn ids(&self, room: &str) -> Vec<u64> {
        let all = self.all();
        all.iter()
            .filter(|d| d.room == room)
            .map(|d| d.id)
            .collect()
    }

    fn has(&self, d: &Danmaku) -> bool {
        self.0.lock().unwrap().iter().flatten().any(|s| s == d)
    }
}

/// A send to `room` as the guard passes it.
pub(crate) fn new(room: &str, text: &str) -> NewDanmaku {
    NewDanmaku {
        room: room.into(),
        user: "u".into(),
        name: "n".into(),
        text: text.into(),
        mode: Mode::Bottom,
        color: Color(0x123456),
        size: 18,
        vt: Some(1.5),
        priority: false,
    }
}

/// The audit entry of an approval, as the node makes it.
pub(crate) fn approval(actor: &str) -> AuditOf {
    let actor = actor.to_owned();
    Box::new(move |d: &Danmaku| AuditEntry {
        id: 0,
        ts: now_ms(),
        actor,
        action: "approve".into(),
        room: Some(d.room.clone()),
        target: None,
        detail: serde_json::json!({ "id": d.id }),
    })
}

/// An audit entry of `action`.
pub(crate) fn entry(action: &str) -> AuditEntry {
    AuditEntry {
        id: 0,
        ts: now_ms(),
        actor: "mod".into(),
        action: action.into(),
        room: None,
        target: None,
        detail: serde_json::Value::Null,
    }
}

async fn held_ids(store: &impl ModerationStore) -> Vec<u64> {
    let snapshot = store.load_moderation().await.unwrap();
    snapshot.held.iter().map(|h| h.held).collect()
}

/// A room's stored history as `(id, text)`.
pub(crate) async fn texts(store: &impl Store, room: &str) -> Vec<(u64, String)> {
    let stored = store.after(room, 0, 10_000).await.unwrap();
    stored.into_iter().map(|d| (d.id, d.text)).collect()
}

/// 200 concurrent appends over 3 rooms: each room's ids are 1..=n, each
/// once, as stored; the listener saw each danmaku before its append
/// returned, and each room's ids in ascending order.
pub(crate) async fn ids_are_contiguous_per_room<B: Backing>(b: &B) {
    const SENDS: usize = 200;
    const ROOMS: [&str; 3] = ["a", "b", "c"];
    let seen = Seen::default();
    let store = Arc::new(b.open(seen.listener()).await);
    let sends: Vec<_> = (0..SENDS)
        .map(|i| {
            let (store, seen) = (store.clone(), seen.clone());
            tokio::spawn(async move {
                let d = store
                    .append(new(ROOMS[i % 3], &i.to_string()))
                    .await
                    .unwrap();
                assert!(seen.has(&d), "{} acknowledged before published", d.id);
                d
            })
        })
        .collect();
    let mut acked = Vec::new();
    for s in sends {
        acked.push(s.await.unwrap());
    }
    acked.sort_by_key(|d| d.id);
    for (k, room) in ROOMS.iter().enumerate() {
        let n = (0..SENDS).filter(|i| i % 3 == k).count() as u64;
        let mine: Vec<Danmaku> = acked.iter().filter(|d| d.room == *room).cloned().collect();
        let ids: Vec<u64> = mine.iter().map(|d| d.id).collect();
        assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "room {room}");
        assert_eq!(
            store.after(room, 0, 1000).await.unwrap(),
            mine,
            "room {room}"
        );
        assert_eq!(store.last_id(room).await.unwrap(), n);
        assert_eq!(seen.ids(room), ids, "room {room}: published in id order");
    }
    assert_eq!(seen.all().len(), SENDS);
}

/// `after`, `by_video_time`, `get` and `last_id` return what was stored,
/// every field of it, by their rules.
pub(crate) async fn reads_return_what_was_stored<B: Backing>(b: &B) {
    let store = b.open(Seen::default().listener()).await;
    let sent = [
        NewDanmaku {
            mode: Mode::Top,
            color: Color(0xff0000),
            size: 64,
            vt: Some(10.0),
            ..new("r", "one")
        },
        NewDanmaku {
            vt: None,
            name: "名前".into(),
            ..new("r", "二 two 🎉")
        },
        NewDanmaku {
            vt: Some(5.0),
            ..new("r", "three")
        },
        NewDanmaku {
            mode: Mode::Reverse,
            vt: Some(10.0),
            ..new("r", "four")
        },
    ];
    let mut stored = Vec::new();
    for s in sent.clone() {
        stored.push(store.append(s).await.unwrap());
    }
    let other = store.append(new("other", "elsewhere")).await.unwrap();
    for (d, s) in stored.iter().zip(&sent) {
        assert_eq!(Danmaku::stored(s.clone(), d.id, d.ts), *d);
    }
    let ids: Vec<u64> = stored.iter().map(|d| d.id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    assert_eq!(other.id, 1);

    assert_eq!(store.after("r", 0, 10).await.unwrap(), stored);
    assert_eq!(store.after("r", 1, 2).await.unwrap(), stored[1..3]);
    assert!(store.after("r", 4, 10).await.unwrap().is_empty());
    assert!(store.after("nobody", 0, 10).await.unwrap().is_empty());
    assert_eq!(
        store.after("other", 0, 10).await.unwrap(),
        vec![other.clone()]
    );

    let vt = |from, to, limit| store.by_video_time("r", from, to, limit);
    // [from, to), by video time then id, without the danmaku with none.
    assert_eq!(vt(5.0, 10.0, 10).await.unwrap(), vec![stored[2].clone()]);
    let window = vec![stored[2].clone(), stored[0].clone(), stored[3].clone()];
    assert_eq!(vt(5.0, 10.5, 10).await.unwrap(), window);
    assert_eq!(vt(0.0, 100.0, 2).await.unwrap(), window[..2]);
    assert!(vt(10.5, 100.0, 10).await.unwrap().is_empty());

    assert_eq!(store.get("r", 2).await.unwrap(), Some(stored[1].clone()));
    assert_eq!(store.get("other", 1).await.unwrap(), Some(other));
    assert_eq!(store.get("other", 2).await.unwrap(), None);
    assert_eq!(store.get("r", 99).await.unwrap(), None);

    assert_eq!(store.last_id("r").await.unwrap(), 4);
    assert_eq!(store.last_id("other").await.unwrap(), 1);
    assert_eq!(store.last_id("nobody").await.unwrap(), 0);
}

/// `density` counts a room's danmaku per bucket of video time, from 0,
/// leaving out those without one, other rooms', and those at or past the
/// cap (counted apart, however far: no overflow).
pub(crate) async fn density_counts_by_video_time_in_the_database<B: Backing>(b: &B) {
    let store = b.open(Seen::default().listener()).await;
    let at = |room: &str, vt: Option<f64>| NewDanmaku {
        vt,
        ..new(room, "x")
    };
    let vts = [
        Some(0.0),
        Some(4.9),
        Some(5.0),
        None,
        Some(12.0),
        Some(12.5),
        Some(29.99),
    ];
    let mut news: Vec<NewDanmaku> = vts.iter().map(|&vt| at("r", vt)).collect();
    news.push(at("other", Some(1.0)));
    news.push(at("far", Some(2_592_000.0)));
    news.push(at("far", Some(0.05)));
    store.append_many(news).await.unwrap();

    let density = |room, bucket, max| store.density(room, bucket, max);
    let counts = |counts: &[u64], beyond| Density {
        counts: counts.to_vec(),
        beyond,
    };
    assert_eq!(
        density("r", 5.0, 100).await.unwrap(),
        counts(&[2, 1, 2, 0, 0, 1], 0)
    );
    // [0, 10) and [10, 20); 29.99 lies past the cap of two buckets.
    assert_eq!(density("r", 10.0, 2).await.unwrap(), counts(&[3, 2], 1));
    assert_eq!(density("r", 10.0, 0).await.unwrap(), counts(&[], 6));
    let fine = density("r", 0.5, 10_000).await.unwrap();
    assert_eq!(fine.counts.len(), 60, "29.99 s is in bucket 59");
    assert_eq!(fine.counts.iter().sum::<u64>(), 6);
    assert_eq!(
        (fine.counts[9], fine.counts[10], fine.counts[24]),
        (1, 1, 1)
    );
    assert_eq!(density("other", 5.0, 100).await.unwrap(), counts(&[1], 0));
    // 30 days in buckets of 0.1 s: past any cap, counted as beyond.
    assert_eq!(density("far", 0.1, 10_000).await.unwrap(), counts(&[1], 1));
    assert_eq!(
        density("nobody", 5.0, 100).await.unwrap(),
        Density::default()
    );
}

/// Ids and limits past the largest signed 64-bit integer name nothing and
/// limit nothing more: they never wrap into a negative id (which once read
/// a room's history from id 1).
pub(crate) async fn ids_past_i64_max_name_nothing<B: Backing>(b: &B) {
    let store = b.open(Seen::default().listener()).await;
    for text in ["a", "b"] {
        store.append(new("r", text)).await.unwrap();
    }
    let past = MAX_ID + 1;
    for after in [past, u64::MAX, MAX_ID] {
        assert!(store.after("r", after, 10).await.unwrap().is_empty());
        assert!(store.get("r", after).await.unwrap().is_none());
    }
    assert_eq!(store.after("r", 0, usize::MAX).await.unwrap().len(), 2);
    let recall = Change::Recall {
        room: "r".into(),
        id: u64::MAX,
    };
    assert!(!store.record(recall, entry("recall")).await.unwrap());
    let reject = Change::Reject { held: u64::MAX };
    assert!(!store.record(reject, entry("reject")).await.unwrap());
    let approved = store.approve(u64::MAX, new("r", "c"), approval("mod"));
    assert_eq!(approved.await.unwrap(), None);
    assert!(
        store.audit(10, None).await.unwrap().is_empty(),
        "nothing was changed"
    );
    // Lifting a mute or a ban nobody has changes nothing either.
    let unban = Change::Unban([192, 0, 2, 1].into());
    assert!(!store.record(unban, entry("unban")).await.unwrap());
    let unmute = Change::Unmute {
        room: Some("r".into()),
        user: "nobody".into(),
    };
    assert!(!store.record(unmute, entry("unmute")).await.unwrap());
    assert!(store.audit(10, None).await.unwrap().is_empty());
    // Every entry lies below an id past the largest.
    let banned = Change::Ban(Ban {
        ip: [192, 0, 2, 1].into(),
        until: None,
    });
    assert!(store.record(banned, entry("ban")).await.unwrap());
    assert_eq!(store.audit(10, Some(u64::MAX)).await.unwrap().len(), 1);
    assert_eq!(texts(&store, "r").await.len(), 2);
}

/// A recall deletes the danmaku and leaves its id unused: `after` steps
/// over the hole, the next send does not fill it, and a second recall finds
/// nothing (and writes no audit entry).
pub(crate) async fn a_recall_leaves_a_hole<B: Backing>(b: &B) {
    let store = b.open(Seen::default().listener()).await;
    for text in ["1", "2", "3"] {
        store.append(new("r", text)).await.unwrap();
    }
    let recall = || Change::Recall {
        room: "r".into(),
        id: 2,
    };
    assert!(store.record(recall(), entry("recall")).await.unwrap());
    assert!(!store.record(recall(), entry("recall")).await.unwrap());
    let elsewhere = Change::Recall {
        room: "other".into(),
        id: 1,
    };
    assert!(!store.record(elsewhere, entry("recall")).await.unwrap());
    assert_eq!(
        texts(&store, "r").await,
        vec![(1, "1".into()), (3, "3".into())]
    );
    assert_eq!(store.after("r", 1, 1).await.unwrap()[0].id, 3);
    assert_eq!(store.get("r", 2).await.unwrap(), None);
    assert_eq!(store.last_id("r").await.unwrap(), 3);
    assert_eq!(store.append(new("r", "4")).await.unwrap().id, 4);
    let log = store.audit(10, None).await.unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, vec!["recall"]);
}

/// An approval stores the held send under its room's next id, releases it
/// and writes its audit entry, all durably, and publishes it before it
/// answers.
pub(crate) async fn approving_stores_releases_and_audits_together<B: Backing>(b: &B) {
    let seen = Seen::default();
    let store = b.open(seen.listener()).await;
    let first = store.hold(new("r", "first")).await.unwrap();
    let second = store.hold(new("r", "second")).await.unwrap();
    assert!(second.held > first.held, "held ids ascend");
    assert_eq!(store.append(new("r", "live")).await.unwrap().id, 1);

    let approved = store
        .approve(second.held, second.danmaku.clone(), approval("mod"))
        .await
        .unwrap()
        .expect("it was held");
    assert_eq!((approved.id, approved.text.as_str()), (2, "second"));
    // Published like an append: in commit order, before the answer.
    assert_eq!(seen.ids("r"), vec![1, 2]);
    store.close().await;

    let store = b.open(Seen::default().listener()).await;
    assert_eq!(
        texts(&store, "r").await,
        vec![(1, "live".into()), (2, "second".into())]
    );
    let snapshot = store.load_moderation().await.unwrap();
    assert_eq!(snapshot.held, vec![first]);
    let log = store.audit(10, None).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].action.as_str(), &log[0].detail),
        ("approve", &serde_json::json!({ "id": 2 }))
    );
    assert_eq!(store.append(new("r", "next")).await.unwrap().id, 3);
}

/// Of two approvals and a rejection of one held send, racing, exactly one
/// takes effect; a rejected send cannot be approved.
pub(crate) async fn a_held_send_is_approved_or_rejected_once<B: Backing>(b: &B) {
    let seen = Seen::default();
    let store = b.open(seen.listener()).await;
    let h = store.hold(new("r", "once")).await.unwrap();
    let (a, b2, rejected) = tokio::join!(
        store.approve(h.held, h.danmaku.clone(), approval("a")),
        store.approve(h.held, h.danmaku.clone(), approval("b")),
        store.record(Change::Reject { held: h.held }, entry("reject")),
    );
    let (a, b2, rejected) = (a.unwrap(), b2.unwrap(), rejected.unwrap());
    assert_eq!(
        u8::from(a.is_some()) + u8::from(b2.is_some()),
        1,
        "{a:?} {b2:?}"
    );
    assert!(!rejected, "the first approval took it");

    // Rejected first, it cannot be approved.
    let h = store.hold(new("r", "never")).await.unwrap();
    assert!(store
        .record(Change::Reject { held: h.held }, entry("reject"))
        .await
        .unwrap());
    let late = store.approve(h.held, h.danmaku.clone(), approval("a"));
    assert_eq!(late.await.unwrap(), None);

    assert_eq!(seen.ids("r"), vec![1]);
    assert_eq!(texts(&store, "r").await, vec![(1, "once".into())]);
    assert!(held_ids(&store).await.is_empty());
    let log = store.audit(10, None).await.unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, vec!["reject", "approve"]);
}

/// A write the database refuses acknowledges nothing, publishes nothing,
/// uses no id and releases no held send; writes succeed again after.
pub(crate) async fn a_failed_write_stores_nothing_and_uses_no_id<B: Backing>(b: &B) {
    let seen = Seen::default();
    let store = Arc::new(b.open(seen.listener()).await);
    let h = store.hold(new("r", "held")).await.unwrap();
    b.fail_inserts(true).await;
    // A batch of several sends fails as a whole.
    let sends: Vec<_> = (0..5)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append(new("r", &i.to_string())).await })
        })
        .collect();
    for s in sends {
        let failed = s.await.unwrap();
        assert!(matches!(failed, Err(StoreError::Database(_))), "{failed:?}");
    }
    // The danmaku insert fails after the held row's delete, in the same
    // transaction.
    let failed = store
        .approve(h.held, h.danmaku.clone(), approval("mod"))
        .await;
    assert!(matches!(failed, Err(StoreError::Database(_))), "{failed:?}");
    assert!(seen.all().is_empty(), "nothing was published");
    assert!(!store.is_full());
    b.fail_inserts(false).await;

    // The failed writes used no id, and the send is still held.
    assert_eq!(store.append(new("r", "live")).await.unwrap().id, 1);
    assert_eq!(held_ids(&*store).await, vec![h.held]);
    assert!(store.audit(10, None).await.unwrap().is_empty());
    let approved = store.approve(h.held, h.danmaku, approval("mod")).await;
    assert_eq!(approved.unwrap().map(|d| d.id), Some(2));
    assert_eq!(
        texts(&*store, "r").await,
        vec![(1, "live".into()), (2, "held".into())]
    );
    assert_eq!(seen.ids("r"), vec![1, 2]);
}

/// Mutes and bans are stored, replaced and lifted as recorded, and
/// `load_moderation` returns the unexpired ones and every held send.
pub(crate) async fn moderation_state_round_trips<B: Backing>(b: &B) {
    let store = b.open(Seen::default().listener()).await;
    let later = now_ms() + 3_600_000;
    let mute = |room: Option<&str>, user: &str, until| Mute {
        room: room.map(str::to_owned),
        user: user.into(),
        until,
    };
    let ban = |ip: [u8; 4], until| Ban {
        ip: ip.into(),
        until,
    };
    let changes = [
        Change::Mute(mute(Some("r"), "alice", later)),
        Change::Mute(mute(None, "alice", later)),
        Change::Mute(mute(Some("r"), "bob", later)),
        // Replaces the one before.
        Change::Mute(mute(Some("r"), "bob", later + 1)),
        Change::Mute(mute(None, "expired", now_ms() - 1)),
        Change::Unmute {
            room: None,
            user: "alice".into(),
        },
        Change::Ban(Ban {
            ip: [192, 0, 2, 1].into(),
            until: None,
        }),
        Change::Ban(ban([192, 0, 2, 2], Some(later))),
        Change::Ban(ban([192, 0, 2, 3], Some(later))),
        Change::Unban([192, 0, 2, 3].into()),
        Change::Ban(ban([192, 0, 2, 4], Some(now_ms() - 1))),
    ];
    let count = changes.len();
    for change in changes {
        assert!(store.record(change, entry("change")).await.unwrap());
    }
    let held = store.hold(new("r", "held")).await.unwrap();

    let snapshot = store.load_moderation().await.unwrap();
    let mut mutes = snapshot.mutes;
    mutes.sort_by(|a, b| (&a.room, &a.user).cmp(&(&b.room, &b.user)));
    assert_eq!(
        mutes,
        vec![
            mute(Some("r"), "alice", later),
            mute(Some("r"), "bob", later + 1),
        ]
    );
    let mut bans = snapshot.bans;
    bans.sort_by_key(|b| b.ip);
    assert_eq!(
        bans,
        vec![ban([192, 0, 2, 1], None), ban([192, 0, 2, 2], Some(later))]
    );
    assert_eq!(snapshot.held, vec![held]);
    assert_eq!(store.audit(100, None).await.unwrap().len(), count);
}

/// A room patch changes the fields it names in the settings as stored
/// (the defaults at first), leaves the others as they are, and bumps the
/// version by one, with its audit entry; `load_moderation` returns the
/// settings with their version.
pub(crate) async fn room_patches_apply_to_the_stored_settings<B: Backing>(b: &B) {
    let store = b.open(Seen::default().listener()).await;
    let settings = |room: &str, closed, slow_mode_s, premod, version| RoomSettings {
        room: room.into(),
        closed,
        slow_mode_s,
        premod,
        version,
    };
    let patches = [
        (
            "r",
            RoomPatch {
                closed: Some(true),
                ..RoomPatch::default()
            },
            settings("r", true, 0, false, 1),
        ),
        (
            "r",
            RoomPatch {
                slow_mode_s: Some(u32::MAX),
                ..RoomPatch::default()
            },
            settings("r", true, u32::MAX, false, 2),
        ),
        (
            "s",
            RoomPatch {
                premod: Some(true),
                ..RoomPatch::default()
            },
            settings("s", false, 0, true, 1),
        ),
        (
            "r",
            RoomPatch {
                closed: Some(false),
                premod: Some(true),
                slow_mode_s: None,
            },
            settings("r", false, u32::MAX, true, 3),
        ),
    ];
    for (i, (room, patch, expected)) in patches.iter().enumerate() {
        let written = AuditEntry {
            room: Some((*room).to_owned()),
            ..entry(&format!("room{i}"))
        };
        let stored = store.set_room(room, patch, written).await.unwrap();
        assert_eq!(&stored, expected, "patch {i}");
    }
    let log = store.audit(100, None).await.unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, vec!["room3", "room2", "room1", "room0"]);
    let mut rooms = store.load_moderation().await.unwrap().rooms;
    rooms.sort_by(|a, b| a.room.cmp(&b.room));
    assert_eq!(
        rooms,
        vec![
            settings("r", false, u32::MAX, true, 3),
            settings("s", false, 0, true, 1),
        ]
    );
}

/// The audit log reads newest first, in pages below a given id, with every
/// field as written.
pub(crate) async fn audit_is_newest_first<B: Backing>(b: &B) {
    let store = b.open(Seen::default().listener()).await;
    for i in 0..5u8 {
        let written = AuditEntry {
            room: Some(format!("r{i}")),
            target: (i % 2 == 0).then(|| format!("t{i}")),
            detail: serde_json::json!({ "i": i, "why": "spam \"quoted\"" }),
            ..entry(&format!("action{i}"))
        };
        let change = Change::Ban(Ban {
            ip: [192, 0, 2, i].into(),
            until: None,
        });
        assert!(store.record(change, written).await.unwrap());
    }
    let log = store.audit(10, None).await.unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec!["action4", "action3", "action2", "action1", "action0"]
    );
    assert!(log.windows(2).all(|w| w[0].id > w[1].id), "{log:?}");
    assert_eq!(log[0].room.as_deref(), Some("r4"));
    assert_eq!(log[0].target.as_deref(), Some("t4"));
    assert_eq!(log[1].target, None);
    assert_eq!(log[0].actor, "mod");
    assert_eq!(
        log[0].detail,
        serde_json::json!({ "i": 4, "why": "spam \"quoted\"" })
    );

    assert_eq!(store.audit(2, None).await.unwrap(), log[..2]);
    assert_eq!(store.audit(2, Some(log[1].id)).await.unwrap(), log[2..4]);
    assert_eq!(store.audit(10, Some(log[3].id)).await.unwrap(), log[4..]);
    assert!(store.audit(10, Some(log[4].id)).await.unwrap().is_empty());
}

/// `close` commits and acknowledges every send already queued, then the
/// store refuses writes with `Closed`; reads still work.
pub(crate) async fn close_commits_what_is_queued_and_refuses_new<B: Backing>(b: &B) {
    let seen = Seen::default();
    let store = Arc::new(b.open(seen.listener()).await);
    let sends: Vec<_> = (0..100)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append(new("r", &i.to_string())).await })
        })
        .collect();
    // Some sends are queued, maybe all, maybe none.
    tokio::time::sleep(Duration::from_millis(1)).await;
    store.close().await;
    let mut acked = Vec::new();
    for s in sends {
        match s.await.unwrap() {
            Ok(d) => acked.push(d),
            Err(StoreError::Closed) => {}
            Err(e) => panic!("{e}"),
        }
    }
    acked.sort_by_key(|d| d.id);
    assert_eq!(store.after("r", 0, 1000).await.unwrap(), acked);
    assert_eq!(seen.all().len(), acked.len());
    let late = store.append(new("r", "late")).await;
    assert!(matches!(late, Err(StoreError::Closed)), "{late:?}");
    let held = store.hold(new("r", "late")).await;
    assert!(matches!(held, Err(StoreError::Closed)), "{held:?}");
    let unban = Change::Unban([192, 0, 2, 1].into());
    let recorded = store.record(unban, entry("unban")).await;
    assert!(matches!(recorded, Err(StoreError::Closed)), "{recorded:?}");
    assert_eq!(
        store.last_id("r").await.unwrap(),
        acked.last().map_or(0, |d| d.id)
    );
}

/// What a store acknowledged is there for the next one opened on the same
/// database, which numbers on from it.
pub(crate) async fn history_survives_reopen<B: Backing>(b: &B) {
    let store = b.open(Seen::default().listener()).await;
    for text in ["1", "2"] {
        store.append(new("a", text)).await.unwrap();
    }
    let b1 = store.append(new("b", "b1")).await.unwrap();
    store.close().await;

    let store = b.open(Seen::default().listener()).await;
    assert_eq!(
        texts(&store, "a").await,
        vec![(1, "1".into()), (2, "2".into())]
    );
    assert_eq!(store.get("b", 1).await.unwrap(), Some(b1));
    let d = store.append(new("a", "after reopen")).await.unwrap();
    assert_eq!(d.id, 3);
    assert_eq!(store.after("a", 2, 10).await.unwrap(), vec![d]);
    assert_eq!(store.last_id("b").await.unwrap(), 1);
}

/// An import of three chunks (the default `max_batch` is 2,048) while
/// other sends go to the same room: the import is stored in its order,
/// each chunk is one commit with contiguous ids that no send interleaves,
/// the room's ids stay contiguous, and an audit note is kept.
pub(crate) async fn append_many_keeps_order_in_whole_chunks<B: Backing>(b: &B) {
    const IMPORTED: usize = 2 * 2048 + 100;
    let seen = Seen::default();
    let store = Arc::new(b.open(seen.listener()).await);
    let sends: Vec<_> = (0..100)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append(new("r", &format!("send {i}"))).await })
        })
        .collect();
    let news = (0..IMPORTED)
        .map(|i| new("r", &format!("import {i}")))
        .collect();
    let imported = store.append_many(news).await.unwrap();
    for s in sends {
        s.await.unwrap().unwrap();
    }
    let texts: Vec<String> = imported.iter().map(|d| d.text.clone()).collect();
    let expected: Vec<String> = (0..IMPORTED).map(|i| format!("import {i}")).collect();
    assert_eq!(texts, expected, "stored in the order given");
    for chunk in imported.chunks(2048) {
        let ids: Vec<u64> = chunk.iter().map(|d| d.id).collect();
        let first = ids[0];
        assert_eq!(
            ids,
            (first..first + chunk.len() as u64).collect::<Vec<_>>(),
            "no send inside a chunk"
        );
        assert!(
            seen.batches().iter().any(|b| b.as_slice() == chunk),
            "each chunk published as one batch"
        );
    }
    let n = (IMPORTED + 100) as u64;
    assert_eq!(seen.ids("r"), (1..=n).collect::<Vec<_>>());
    assert_eq!(store.last_id("r").await.unwrap(), n);
    assert_eq!(store.append_many(Vec::new()).await.unwrap(), Vec::new());

    let mut note = entry("import");
    note.detail = serde_json::json!({ "imported": IMPORTED });
    store.note(note).await.unwrap();
    let audit = store.audit(1, None).await.unwrap();
    assert_eq!(audit[0].action, "import");
    assert_eq!(audit[0].detail["imported"], IMPORTED);
}
