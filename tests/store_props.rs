//! Property tests for the store: after any random sequence of operations, at
//! any clock, every index agrees with the sessions, and the queries built on
//! the indexes agree with a scan of the sessions.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use proptest::prelude::*;
use session_sidecar::store::{
    CreateSession, Event, EventKind, EventSink, Key, MovedTo, SessionLimits, SessionStore,
    StoreError, UpdateSession, transfer,
};

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl EventSink for Recorder {
    fn publish(&self, events: Vec<Event>) {
        self.0.lock().unwrap().extend(events);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        id: u8,
        user: Option<u8>,
        conn: Option<u8>,
        ttl: u64,
        max: Option<usize>,
    },
    Delete(u8),
    Bind(u8, u8),
    Unbind(u8, Option<u64>),
    Touch(u8),
    Expire(u8, u64),
    Update {
        id: u8,
        user: Option<u8>,
        conn: Option<u8>,
        attr: bool,
    },
    AttrSet(u8),
    KillUser(u8),
    Advance(u64),
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    let small = 0u8..8;
    prop_oneof![
        4 => (small.clone(), proptest::option::of(0u8..3), proptest::option::of(0u8..4), 1u64..5_000, proptest::option::of(1usize..4))
            .prop_map(|(id, user, conn, ttl, max)| Op::Create { id, user, conn, ttl, max }),
        1 => small.clone().prop_map(Op::Delete),
        2 => (small.clone(), 0u8..4).prop_map(|(id, conn)| Op::Bind(id, conn)),
        1 => (small.clone(), proptest::option::of(0u64..3_000)).prop_map(|(id, grace)| Op::Unbind(id, grace)),
        2 => small.clone().prop_map(Op::Touch),
        1 => (small.clone(), 1u64..5_000).prop_map(|(id, ttl)| Op::Expire(id, ttl)),
        2 => (small.clone(), proptest::option::of(0u8..3), proptest::option::of(0u8..4), any::<bool>())
            .prop_map(|(id, user, conn, attr)| Op::Update { id, user, conn, attr }),
        1 => small.clone().prop_map(Op::AttrSet),
        1 => (0u8..3).prop_map(Op::KillUser),
        2 => (0u64..3_000).prop_map(Op::Advance),
        1 => Just(Op::Sweep),
    ]
}

/// Applies one operation, checking what it promises on the spot.
fn apply(store: &SessionStore, op: Op, now: &mut u64) -> Result<(), TestCaseError> {
    let now_ref = now;
    let now = *now_ref;
    match op {
        Op::Create {
            id,
            user,
            conn,
            ttl,
            max,
        } => {
            let request = CreateSession {
                id: Some(b("s", id)),
                user: user.map(|u| b("u", u)),
                conn: conn.map(|c| b("c", c)),
                ttl_ms: Some(ttl),
                max_per_user: max.filter(|_| user.is_some()),
                attrs: vec![(Bytes::from("a"), Bytes::from("1"))],
            };
            let created = store.create(request, now).is_ok();
            if let (true, Some(u), Some(max)) = (created, user, max) {
                prop_assert!(store.by_user(&b("u", u), now).len() <= max);
            }
        }
        Op::Delete(id) => {
            let deleted = store.delete(&[b("s", id)], now, None);
            prop_assert!(matches!(
                deleted,
                Ok(_) | Err(StoreError::Moving) | Err(StoreError::Moved(_))
            ));
        }
        Op::Bind(id, conn) => {
            if store.bind(&b("s", id), &b("c", conn), now).is_ok() {
                prop_assert_eq!(store.by_conn(&b("c", conn), now), Some(key("s", id)));
            }
        }
        Op::Unbind(id, grace) => {
            let _ = store.unbind(&b("s", id), grace, now);
        }
        Op::Touch(id) => {
            let touched = store.touch(&b("s", id), now);
            prop_assert!(matches!(touched, Ok(_) | Err(StoreError::Moving)));
        }
        Op::Expire(id, ttl) => {
            let set = store.expire(&b("s", id), ttl, now);
            prop_assert!(matches!(set, Ok(_) | Err(StoreError::Moving)));
        }
        Op::Update {
            id,
            user,
            conn,
            attr,
        } => {
            let request = UpdateSession {
                user: user.map(|u| b("u", u)),
                conn: conn.map(|c| b("c", c)),
                set_attrs: if attr {
                    vec![(Bytes::from("x"), Bytes::from("y"))]
                } else {
                    vec![]
                },
                del_attrs: if attr { vec![] } else { vec![Bytes::from("a")] },
                ..UpdateSession::default()
            };
            let _ = store.update(&b("s", id), &request, now);
        }
        Op::AttrSet(id) => {
            let _ = store.attr_set(&b("s", id), &[(Bytes::from("k"), Bytes::from("v"))], now);
        }
        Op::KillUser(u) => match store.kill_user(&b("u", u), now) {
            Ok(_) => prop_assert!(store.by_user(&b("u", u), now).is_empty()),
            Err(error) => prop_assert_eq!(error, StoreError::Moving),
        },
        Op::Advance(ms) => *now_ref += ms,
        Op::Sweep => {
            store.sweep(now, usize::MAX);
        }
    }
    Ok(())
}

/// A store on node n1 with a one-minute default ttl, its events dropped.
fn quiet_store() -> SessionStore {
    SessionStore::new(
        b"n1",
        60_000,
        SessionLimits::default(),
        Arc::new(Recorder::default()),
    )
}

fn b(prefix: &str, n: u8) -> Bytes {
    Bytes::from(format!("{prefix}{n}"))
}

fn key(prefix: &str, n: u8) -> Key {
    Key::from(format!("{prefix}{n}").as_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn indexes_agree_with_sessions(ops in proptest::collection::vec(op(), 1..80)) {
        let events = Arc::new(Recorder::default());
        let store = SessionStore::new(b"n1", 1_000, SessionLimits::default(), events.clone());
        let mut now = 1_000_000u64;
        for op in ops {
            apply(&store, op, &mut now)?;
            if let Err(disagreement) = store.check_invariants() {
                prop_assert!(false, "{}", disagreement);
            }
            // Queries never show a dead session.
            for u in 0..3 {
                for id in store.by_user(&b("u", u), now) {
                    prop_assert!(store.exists(&id, now));
                    let owner = store.read(&id, now, |s| s.user.clone()).flatten();
                    prop_assert_eq!(owner, Some(key("u", u)));
                }
            }
            for c in 0..4 {
                if let Some(id) = store.by_conn(&b("c", c), now) {
                    let bound = store.read(&id, now, |s| s.conn.clone()).flatten();
                    prop_assert_eq!(bound, Some(key("c", c)));
                }
            }
        }
        // Everything left expires exactly once.
        now += 10_000_000;
        store.sweep(now, usize::MAX);
        prop_assert_eq!(store.count(now), 0);
        store.check_invariants().map_err(TestCaseError::fail)?;
        let recorded = events.0.lock().unwrap();
        let created = recorded.iter().filter(|e| e.kind == EventKind::Created).count();
        let ended = recorded.iter().filter(|e| matches!(e.kind, EventKind::Expired | EventKind::Deleted)).count();
        prop_assert_eq!(created, ended, "every created session ends exactly once");
    }
}

/// MAXPERUSER holds under concurrent logins from many threads.
#[test]
fn max_per_user_is_atomic_under_concurrency() {
    let store = Arc::new(quiet_store());
    let now = 1_000_000;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let request = CreateSession {
                        id: Some(Bytes::from(format!("t{t}-{i}"))),
                        user: Some(Bytes::from("alice")),
                        max_per_user: Some(3),
                        ..CreateSession::default()
                    };
                    store.create(request, now).unwrap();
                    assert!(store.by_user(b"alice", now).len() <= 3);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(store.by_user(b"alice", now).len(), 3);
    assert_eq!(store.count(now), 3);
    store.check_invariants().unwrap();
}

/// A refused UPDATE (stale IFVERSION) changes nothing, not even the other
/// session that holds the connection it names.
#[test]
fn conflicting_update_leaves_the_connection_where_it_was() {
    let store = quiet_store();
    let now = 1_000_000;
    let create = |id: &str, conn: Option<&str>| CreateSession {
        id: Some(Bytes::from(id.to_string())),
        conn: conn.map(|c| Bytes::from(c.to_string())),
        ..CreateSession::default()
    };
    store.create(create("a", Some("c")), now).unwrap();
    store.create(create("b", None), now).unwrap();
    store
        .attr_set(b"b", &[(Bytes::from("k"), Bytes::from("v"))], now)
        .unwrap();
    let stale = UpdateSession {
        if_version: Some(1),
        conn: Some(Bytes::from("c")),
        ..UpdateSession::default()
    };
    assert_eq!(
        store.update(b"b", &stale, now),
        Err(session_sidecar::store::StoreError::Conflict(2))
    );
    assert_eq!(store.by_conn(b"c", now).as_deref(), Some(&b"a"[..]));
    assert_eq!(store.read(b"a", now, |s| s.version), Some(1));
    store.check_invariants().unwrap();
}

/// A user with more sessions than the compact list holds: the index switches
/// form and stays exact through deletions, expiry and KILLUSER.
#[test]
fn a_user_with_many_sessions_keeps_an_exact_index() {
    let store = quiet_store();
    let now = 1_000_000;
    for i in 0..200u64 {
        let request = CreateSession {
            id: Some(Bytes::from(format!("s{i}"))),
            user: Some(Bytes::from("many")),
            ttl_ms: Some(if i % 3 == 0 { 10 } else { 60_000 }),
            ..CreateSession::default()
        };
        store.create(request, now + i).unwrap();
    }
    store.check_invariants().unwrap();
    let ids: Vec<Bytes> = (0..200)
        .step_by(7)
        .map(|i| Bytes::from(format!("s{i}")))
        .collect();
    store.delete(&ids, now + 200, None).unwrap();
    store.sweep(now + 1_000, usize::MAX);
    store.check_invariants().unwrap();
    let listed = store.by_user(b"many", now + 1_000);
    assert!(listed.windows(2).all(|w| {
        let created = |id: &Key| store.read(id, now + 1_000, |s| s.created).unwrap();
        created(&w[0]) <= created(&w[1])
    }));
    assert_eq!(store.kill_user(b"many", now + 1_000), Ok(listed.len()));
    assert!(store.by_user(b"many", now + 1_000).is_empty());
    store.check_invariants().unwrap();
}

/// A step of the migration property: store operations on the source, the
/// start of a move of some ids, or its end with the target's verdicts
/// (`false`: the batch never reached the target).
#[derive(Debug, Clone)]
enum Step {
    Op(Op),
    Begin(Vec<u8>),
    Finish(Vec<bool>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => op().prop_map(Step::Op),
        1 => proptest::collection::vec(0u8..8, 1..5).prop_map(Step::Begin),
        1 => proptest::collection::vec(any::<bool>(), 5).prop_map(Step::Finish),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Moves racing with every kind of write: both stores stay consistent,
    /// no id is ever live on both, a moved session arrives whole (one
    /// version later, owned by the target) and the source then points at it;
    /// every session created ends exactly once, on one side or the other.
    #[test]
    fn moves_keep_both_stores_consistent(steps in proptest::collection::vec(step(), 1..80)) {
        let a_events = Arc::new(Recorder::default());
        let b_events = Arc::new(Recorder::default());
        let a = SessionStore::new(b"a", 1_000, SessionLimits::default(), a_events.clone());
        let b_store = SessionStore::new(b"b", 1_000, SessionLimits::default(), b_events.clone());
        let to = Arc::new(MovedTo { node: "b".into(), addr: "127.0.0.1:1".into(), until: u64::MAX });
        let mut now = 1_000_000u64;
        let mut pending: Vec<(Key, Vec<u8>)> = Vec::new();
        for step in steps {
            match step {
                Step::Op(op) => apply(&a, op, &mut now)?,
                Step::Begin(ids) => {
                    if pending.is_empty() {
                        let ids: Vec<Key> = ids.iter().map(|i| key("s", *i)).collect();
                        pending = a.begin_move(&ids, now);
                        for (id, _) in &pending {
                            // Marked: every write is refused, reads still served.
                            prop_assert!(a.exists(id, now));
                            prop_assert_eq!(a.attr_set(id, &[(Bytes::from("k"), Bytes::from("w"))], now), Err(StoreError::Moving));
                            // Every write says so, none answers "missing".
                            prop_assert_eq!(a.attr_del(id, &[Bytes::from("a")], now), Err(StoreError::Moving));
                            prop_assert_eq!(a.expire(id, 500, now), Err(StoreError::Moving));
                            prop_assert_eq!(a.delete(std::slice::from_ref(id), now, None), Err(StoreError::Moving));
                        }
                    }
                }
                Step::Finish(delivered) => {
                    let batch = std::mem::take(&mut pending);
                    let limits = SessionLimits::default();
                    let mut sent = Vec::new();
                    for ((id, payload), delivered) in batch.iter().zip(delivered.iter().chain(std::iter::repeat(&true))) {
                        if *delivered {
                            sent.push((id.clone(), transfer::decode(payload, &limits).unwrap()));
                        }
                    }
                    let expected: Vec<(Key, transfer::Transfer)> = sent.clone();
                    let mut verdicts = b_store.import(sent, now).into_iter();
                    let taken: Vec<bool> = batch.iter().zip(delivered.iter().chain(std::iter::repeat(&true)))
                        .map(|(_, d)| *d && verdicts.next().unwrap_or(false)).collect();
                    let ids: Vec<Key> = batch.iter().map(|(id, _)| id.clone()).collect();
                    a.finish_move(&ids, &taken, &to, now);
                    for (id, t) in expected {
                        prop_assert!(!a.exists(&id, now));
                        prop_assert!(a.moved_to(&id, now).is_some());
                        if t.expires > now {
                            let arrived = b_store.read(&id, now, |s| (s.version, s.node.clone(), s.attrs.clone(), s.user.clone(), s.conn.clone())).unwrap();
                            prop_assert_eq!(arrived, (t.version + 1, Key::from(&b"b"[..]), t.attrs, t.user, t.conn));
                        }
                    }
                }
            }
            a.check_invariants().map_err(TestCaseError::fail)?;
            b_store.check_invariants().map_err(TestCaseError::fail)?;
            for i in 0..8 {
                let id = key("s", i);
                prop_assert!(!(a.exists(&id, now) && b_store.exists(&id, now)), "{:?} live on both", id);
            }
        }
        // An unfinished move is abandoned; then everything expires.
        let ids: Vec<Key> = pending.iter().map(|(id, _)| id.clone()).collect();
        a.finish_move(&ids, &vec![false; ids.len()], &to, now);
        now += 10_000_000;
        a.sweep(now, usize::MAX);
        b_store.sweep(now, usize::MAX);
        prop_assert_eq!(a.count(now) + b_store.count(now), 0);
        a.check_invariants().map_err(TestCaseError::fail)?;
        b_store.check_invariants().map_err(TestCaseError::fail)?;
        let a_events = a_events.0.lock().unwrap();
        let b_events = b_events.0.lock().unwrap();
        let count = |events: &[Event], kinds: &[EventKind]| events.iter().filter(|e| kinds.contains(&e.kind)).count();
        let created = count(&a_events, &[EventKind::Created]);
        let ended = count(&a_events, &[EventKind::Expired, EventKind::Deleted])
            + count(&b_events, &[EventKind::Expired, EventKind::Deleted]);
        // A moved session ends on the target: one `migrated` here per session
        // installed there (one that expired on its way ends here, expired).
        let imported = b_store.stats.migrated_in.load(std::sync::atomic::Ordering::Relaxed) as usize;
        let migrated = count(&a_events, &[EventKind::Migrated]);
        prop_assert_eq!(migrated, imported);
        prop_assert_eq!(created, ended, "every created session ends exactly once");
    }
}
