//! Lifecycle events on `<prefix>:events` and the sidecar's local pub/sub:
//! SUBSCRIBE / PSUBSCRIBE / UNSUBSCRIBE / PUNSUBSCRIBE, PING in subscribed
//! mode, RESP3 push frames and local PUBLISH.

mod common;

use std::time::Duration;

use common::*;
use redis::Value;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(3);

fn assert_event_shape(event: &serde_json::Value) {
    let obj = event.as_object().expect("an event is a JSON object");
    for key in ["event", "id", "user", "conn", "node", "at"] {
        assert!(obj.contains_key(key), "event lacks {key}: {event}");
    }
    let at = obj["at"].as_i64().expect("at is a number");
    assert!(
        (now_ms() - 10_000..=now_ms()).contains(&at),
        "at {at} is not recent"
    );
}

#[test]
fn created_deleted_bound_unbound_events_carry_the_session_fields() {
    for resp3 in [false, true] {
        let sc = Sidecar::start(&["--node-id", "ev-node"]);
        let mut events = EventSubscriber::new(&sc, "session:events", resp3);
        let mut c = sc.client();

        call(
            &mut c,
            &["SESSION.CREATE", "ID", "s1", "USER", "alice", "CONN", "c1"],
        );
        let created = events
            .wait_for(WAIT, |e| e["event"] == "created")
            .expect("created event");
        assert_event_shape(&created);
        assert_eq!(created["id"], "s1");
        assert_eq!(created["user"], "alice");
        assert_eq!(created["conn"], "c1");
        assert_eq!(created["node"], "ev-node");

        call(&mut c, &["SESSION.UNBIND", "s1"]);
        let unbound = events
            .wait_for(WAIT, |e| e["event"] == "unbound")
            .expect("unbound event");
        assert_event_shape(&unbound);
        assert_eq!(unbound["id"], "s1");
        assert_eq!(unbound["user"], "alice");

        call(&mut c, &["SESSION.BIND", "s1", "c2"]);
        let bound = events
            .wait_for(WAIT, |e| e["event"] == "bound")
            .expect("bound event");
        assert_event_shape(&bound);
        assert_eq!(bound["id"], "s1");
        assert_eq!(bound["conn"], "c2");
        assert_eq!(bound["node"], "ev-node");

        call(&mut c, &["SESSION.DEL", "s1"]);
        let deleted = events
            .wait_for(WAIT, |e| e["event"] == "deleted")
            .expect("deleted event");
        assert_event_shape(&deleted);
        assert_eq!(deleted["id"], "s1");
        assert_eq!(deleted["user"], "alice");

        // A session without user or conn: the fields are null.
        call(&mut c, &["SESSION.CREATE", "ID", "anon"]);
        let anon = events
            .wait_for(WAIT, |e| e["event"] == "created")
            .expect("created event");
        assert_eq!(anon["id"], "anon");
        assert_eq!(anon["user"], serde_json::Value::Null);
        assert_eq!(anon["conn"], serde_json::Value::Null);
    }
}

#[test]
fn events_arrive_in_the_order_of_the_mutations() {
    let sc = Sidecar::start(&[]);
    let mut events = EventSubscriber::new(&sc, "session:events", false);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "o", "CONN", "c"]);
    call(&mut c, &["SESSION.UNBIND", "o"]);
    call(&mut c, &["SESSION.BIND", "o", "d"]);
    call(&mut c, &["SESSION.DEL", "o"]);
    let kinds: Vec<String> = events
        .collect_for(Duration::from_millis(500))
        .iter()
        .filter(|e| e["id"] == "o")
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    let wanted = ["created", "unbound", "bound", "deleted"];
    let positions: Vec<usize> = wanted
        .iter()
        .map(|w| {
            kinds
                .iter()
                .position(|k| k == w)
                .unwrap_or_else(|| panic!("no {w} in {kinds:?}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|p| p[0] < p[1]),
        "out of order: {kinds:?}"
    );
}

#[test]
fn maxperuser_eviction_publishes_deleted_with_reason_evicted() {
    let sc = Sidecar::start(&[]);
    let mut events = EventSubscriber::new(&sc, "session:events", false);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "old", "USER", "u"]);
    assert!(wait_until(Duration::from_secs(1), || now_ms()
        > get_session(&mut c, "old", false).unwrap().created + 1));
    call(
        &mut c,
        &[
            "SESSION.CREATE",
            "ID",
            "new",
            "USER",
            "u",
            "MAXPERUSER",
            "1",
        ],
    );
    let deleted = events
        .wait_for(WAIT, |e| e["event"] == "deleted")
        .expect("deleted event");
    assert_event_shape(&deleted);
    assert_eq!(deleted["id"], "old");
    assert_eq!(deleted["user"], "u");
    assert_eq!(deleted["reason"], "evicted");
}

#[test]
fn killuser_publishes_one_deleted_event_per_session() {
    let sc = Sidecar::start(&[]);
    let mut events = EventSubscriber::new(&sc, "session:events", false);
    let mut c = sc.client();
    for id in ["k1", "k2", "k3"] {
        call(&mut c, &["SESSION.CREATE", "ID", id, "USER", "bye"]);
    }
    assert_eq!(call(&mut c, &["SESSION.KILLUSER", "bye"]), Value::Int(3));
    let mut ids: Vec<String> = events
        .collect_for(Duration::from_millis(500))
        .into_iter()
        .filter(|e| e["event"] == "deleted")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["k1", "k2", "k3"]);
}

#[test]
fn the_event_channel_follows_the_prefix() {
    let sc = Sidecar::start(&["--prefix", "app"]);
    let mut default_channel = EventSubscriber::new(&sc, "session:events", false);
    let mut events = EventSubscriber::new(&sc, "app:events", false);
    call(&mut sc.client(), &["SESSION.CREATE", "ID", "p"]);
    let created = events
        .wait_for(WAIT, |e| e["event"] == "created")
        .expect("event on app:events");
    assert_eq!(created["id"], "p");
    assert_eq!(
        default_channel.collect_for(Duration::from_millis(200)),
        Vec::<serde_json::Value>::new()
    );
}

#[test]
fn every_subscriber_gets_every_event() {
    let sc = Sidecar::start(&[]);
    let mut subs: Vec<EventSubscriber> = (0..4)
        .map(|i| EventSubscriber::new(&sc, "session:events", i % 2 == 1))
        .collect();
    call(&mut sc.client(), &["SESSION.CREATE", "ID", "fan"]);
    for sub in &mut subs {
        let e = sub
            .wait_for(WAIT, |e| e["event"] == "created")
            .expect("each subscriber gets it");
        assert_eq!(e["id"], "fan");
    }
}

#[test]
fn subscribed_mode_resp2_replies_as_redis() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    raw.send_cmd(&["SUBSCRIBE", "session:events", "other"]);
    raw.expect_bytes(b"*3\r\n$9\r\nsubscribe\r\n$14\r\nsession:events\r\n:1\r\n");
    raw.expect_bytes(b"*3\r\n$9\r\nsubscribe\r\n$5\r\nother\r\n:2\r\n");
    raw.send_cmd(&["PING"]);
    raw.expect_bytes(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    raw.send_cmd(&["PING", "hello"]);
    raw.expect_bytes(b"*2\r\n$4\r\npong\r\n$5\r\nhello\r\n");
    // Other commands are refused in RESP2 subscribed mode, as Redis does.
    match raw.cmd(&["SESSION.GET", "x"]) {
        Resp::Error(e) => assert!(e.starts_with("ERR Can't execute 'session.get'"), "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
    raw.send_cmd(&["PSUBSCRIBE", "sess*"]);
    raw.expect_bytes(b"*3\r\n$10\r\npsubscribe\r\n$5\r\nsess*\r\n:3\r\n");
    raw.send_cmd(&["UNSUBSCRIBE", "other"]);
    raw.expect_bytes(b"*3\r\n$11\r\nunsubscribe\r\n$5\r\nother\r\n:2\r\n");
    raw.send_cmd(&["PUNSUBSCRIBE"]);
    raw.expect_bytes(b"*3\r\n$12\r\npunsubscribe\r\n$5\r\nsess*\r\n:1\r\n");
    raw.send_cmd(&["UNSUBSCRIBE"]);
    raw.expect_bytes(b"*3\r\n$11\r\nunsubscribe\r\n$14\r\nsession:events\r\n:0\r\n");
    // Out of subscribed mode, commands work again.
    raw.send_cmd(&["PING"]);
    raw.expect_bytes(b"+PONG\r\n");
    raw.send_cmd(&["SESSION.GET", "x"]);
    raw.expect_bytes(b"$-1\r\n");
}

#[test]
fn unsubscribe_without_subscriptions_replies_as_redis() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    raw.send_cmd(&["UNSUBSCRIBE"]);
    raw.expect_bytes(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n");
    raw.send_cmd(&["PUNSUBSCRIBE"]);
    raw.expect_bytes(b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:0\r\n");
    raw.send_cmd(&["PING"]);
    raw.expect_bytes(b"+PONG\r\n");
}

#[test]
fn subscribed_mode_resp3_uses_push_frames() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    assert!(matches!(raw.cmd(&["HELLO", "3"]), Resp::Map(_)));
    raw.send_cmd(&["SUBSCRIBE", "session:events"]);
    raw.expect_bytes(b">3\r\n$9\r\nsubscribe\r\n$14\r\nsession:events\r\n:1\r\n");
    raw.send_cmd(&["PING"]);
    raw.expect_bytes(b"+PONG\r\n");
    // RESP3 clients may run any command while subscribed.
    raw.send_cmd(&["SESSION.GET", "x"]);
    raw.expect_bytes(b"_\r\n");

    call(&mut sc.client(), &["SESSION.CREATE", "ID", "push"]);
    let Resp::Push(items) = raw.read_reply() else {
        panic!("events must arrive as push frames");
    };
    assert_eq!(items[0], Resp::bulk("message"));
    assert_eq!(items[1], Resp::bulk("session:events"));
    let Resp::Bulk(payload) = &items[2] else {
        panic!("payload {items:?}")
    };
    let event: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(event["event"], "created");
    assert_eq!(event["id"], "push");

    raw.send_cmd(&["PSUBSCRIBE", "session:*"]);
    raw.expect_bytes(b">3\r\n$10\r\npsubscribe\r\n$9\r\nsession:*\r\n:2\r\n");
    raw.send_cmd(&["UNSUBSCRIBE", "session:events"]);
    raw.expect_bytes(b">3\r\n$11\r\nunsubscribe\r\n$14\r\nsession:events\r\n:1\r\n");
    call(&mut sc.client(), &["SESSION.DEL", "push"]);
    let Resp::Push(items) = raw.read_reply() else {
        panic!("pattern messages must arrive as push frames");
    };
    assert_eq!(items.len(), 4);
    assert_eq!(
        &items[..3],
        &[
            Resp::bulk("pmessage"),
            Resp::bulk("session:*"),
            Resp::bulk("session:events")
        ]
    );
}

#[test]
fn psubscribe_delivers_pmessage_frames() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    raw.send_cmd(&["PSUBSCRIBE", "session:*"]);
    raw.expect_bytes(b"*3\r\n$10\r\npsubscribe\r\n$9\r\nsession:*\r\n:1\r\n");
    call(&mut sc.client(), &["SESSION.CREATE", "ID", "pm"]);
    let Resp::Array(items) = raw.read_reply() else {
        panic!("pmessage must be an array")
    };
    assert_eq!(
        &items[..3],
        &[
            Resp::bulk("pmessage"),
            Resp::bulk("session:*"),
            Resp::bulk("session:events")
        ]
    );
    let Resp::Bulk(payload) = &items[3] else {
        panic!("payload {items:?}")
    };
    let event: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(
        (&event["event"], &event["id"]),
        (&json!("created"), &json!("pm"))
    );
}

#[test]
fn local_publish_reaches_local_subscribers() {
    let sc = Sidecar::start(&[]);
    let mut c = sc.client();
    assert_eq!(call(&mut c, &["PUBLISH", "chat", "nobody"]), Value::Int(0));
    let mut sub = sc.raw();
    sub.send_cmd(&["SUBSCRIBE", "chat"]);
    sub.expect_bytes(b"*3\r\n$9\r\nsubscribe\r\n$4\r\nchat\r\n:1\r\n");
    let mut psub = sc.raw();
    psub.send_cmd(&["PSUBSCRIBE", "ch*"]);
    psub.expect_bytes(b"*3\r\n$10\r\npsubscribe\r\n$3\r\nch*\r\n:1\r\n");
    assert_eq!(
        call(&mut c, &["PUBLISH", "chat", "hi\r\nthere\x00"]),
        Value::Int(2)
    );
    sub.expect_bytes(b"*3\r\n$7\r\nmessage\r\n$4\r\nchat\r\n$10\r\nhi\r\nthere\x00\r\n");
    psub.expect_bytes(
        b"*4\r\n$8\r\npmessage\r\n$3\r\nch*\r\n$4\r\nchat\r\n$10\r\nhi\r\nthere\x00\r\n",
    );
    assert_err(
        &call(&mut c, &["PUBLISH", "chat"]),
        "ERR wrong number of arguments for 'publish' command",
    );
}

#[test]
fn reset_leaves_subscribed_mode() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    raw.send_cmd(&["SUBSCRIBE", "session:events"]);
    raw.read_reply();
    raw.send_cmd(&["RESET"]);
    raw.expect_bytes(b"+RESET\r\n");
    call(&mut sc.client(), &["SESSION.CREATE", "ID", "after-reset"]);
    raw.send_cmd(&["PING"]);
    raw.expect_bytes(b"+PONG\r\n");
}

#[test]
fn redis_crate_pubsub_resp2_receives_events() {
    let sc = Sidecar::start(&[]);
    let mut con = sc.client();
    let mut pubsub = con.as_pubsub();
    pubsub.subscribe("session:events").unwrap();
    pubsub.set_read_timeout(Some(WAIT)).unwrap();
    call(&mut sc.client(), &["SESSION.CREATE", "ID", "rs2"]);
    let msg = pubsub.get_message().expect("a message");
    assert_eq!(msg.get_channel_name(), "session:events");
    let event: serde_json::Value = serde_json::from_slice(msg.get_payload_bytes()).unwrap();
    assert_eq!(
        (&event["event"], &event["id"]),
        (&json!("created"), &json!("rs2"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crate_resp3_push_messages_receive_events() {
    let sc = Sidecar::start(&[]);
    let (mut con, mut pushes) = sc.async_client_resp3_with_push().await;
    con.subscribe("session:events").await.expect("subscribe");
    con.psubscribe("session:*").await.expect("psubscribe");
    let mut writer = sc.async_client().await;
    acall(&mut writer, &["SESSION.CREATE", "ID", "rs3", "USER", "u"]).await;

    let mut kinds = Vec::new();
    let end = tokio::time::Instant::now() + WAIT;
    while kinds.len() < 2 {
        let push = tokio::time::timeout_at(end, pushes.recv())
            .await
            .expect("push messages in time")
            .expect("push channel open");
        let payload = match push.kind {
            redis::PushKind::Message => &push.data[1],
            redis::PushKind::PMessage => &push.data[2],
            _ => continue,
        };
        let event: serde_json::Value = serde_json::from_slice(&bytes(payload)).unwrap();
        assert_eq!(
            (&event["event"], &event["id"]),
            (&json!("created"), &json!("rs3"))
        );
        kinds.push(push.kind);
    }
    assert!(
        kinds.contains(&redis::PushKind::Message) && kinds.contains(&redis::PushKind::PMessage)
    );
    // The multiplexed connection still answers commands while subscribed.
    assert_eq!(
        acall(&mut con, &["SESSION.EXISTS", "rs3"]).await,
        Value::Int(1)
    );
}
