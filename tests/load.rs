//! Load: deep pipelines are answered completely and in order, and a
//! thousand concurrent connections are all served correctly.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use redis::Value;

#[test]
fn ten_thousand_pipelined_commands_are_answered_in_order() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    const N: usize = 10_000;
    let mut batch = Vec::new();
    for i in 0..N {
        let id = format!("p{}", i / 2);
        let cmd = if i % 2 == 0 {
            encode_cmd(&["SESSION.CREATE", "ID", id.as_str()])
        } else {
            encode_cmd(&["SESSION.ATTR.INCRBY", id.as_str(), "n", &i.to_string()])
        };
        batch.extend(cmd);
    }
    // Written in one go, without reading anything until all are sent.
    raw.send(&batch).unwrap();
    for i in 0..N {
        let reply = raw.read_reply_within(Duration::from_secs(20));
        let expected = if i % 2 == 0 {
            Resp::bulk(format!("p{}", i / 2))
        } else {
            Resp::Int(i as i64)
        };
        assert_eq!(reply, expected, "reply #{i}");
    }
    assert_eq!(raw.cmd(&["SESSION.COUNT"]), Resp::Int((N / 2) as i64));
}

#[test]
fn redis_crate_pipeline_of_ten_thousand() {
    let sc = Sidecar::start(&[]);
    let mut c = sc.client();
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        pipe.cmd("ECHO").arg(i);
    }
    let replies: Vec<String> = pipe.query(&mut c).expect("pipeline");
    assert_eq!(replies.len(), 10_000);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r, &i.to_string());
    }
}

#[test]
fn pipelined_replies_larger_than_socket_buffers_are_not_lost() {
    let sc = Sidecar::start(&[]);
    let mut c = sc.client();
    let value = "x".repeat(64 * 1024);
    call(
        &mut c,
        &["SESSION.CREATE", "ID", "big", "ATTR", "v", value.as_str()],
    );
    let mut raw = sc.raw();
    let one = encode_cmd(&["SESSION.ATTR.GET", "big", "v"]);
    // 500 × 64 KiB = 32 MiB of replies queued before the client reads any.
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 500).collect();
    raw.send(&batch).unwrap();
    let expected = Resp::Array(vec![Resp::bulk(&value)]);
    for i in 0..500 {
        assert_eq!(
            raw.read_reply_within(Duration::from_secs(20)),
            expected,
            "reply #{i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_connections() {
    const CONNS: usize = 1000;
    let sc = Arc::new(Sidecar::start(&[]));
    // Open them all first so they are truly concurrent.
    let mut opened = Vec::with_capacity(CONNS);
    for chunk in (0..CONNS).collect::<Vec<_>>().chunks(100) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let sc = sc.clone();
                tokio::spawn(async move {
                    let con = if i % 2 == 0 {
                        sc.async_client().await
                    } else {
                        sc.async_client_resp3().await
                    };
                    (i, con)
                })
            })
            .collect();
        for h in handles {
            opened.push(h.await.unwrap());
        }
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(CONNS));
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|(i, mut con)| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let id = format!("c{i}");
                let user = format!("u{}", i % 10);
                assert_eq!(
                    acall(
                        &mut con,
                        &[
                            "SESSION.CREATE",
                            "ID",
                            &id,
                            "USER",
                            &user,
                            "CONN",
                            &format!("conn{i}")
                        ]
                    )
                    .await,
                    bulk(&id)
                );
                assert_eq!(
                    acall(&mut con, &["SESSION.ATTR.SET", &id, "k", &i.to_string()]).await,
                    Value::Int(2)
                );
                assert_eq!(
                    acall(&mut con, &["SESSION.ATTR.GET", &id, "k"]).await,
                    Value::Array(vec![bulk(i.to_string())])
                );
                assert_eq!(
                    acall(&mut con, &["SESSION.BYCONN", &format!("conn{i}")]).await,
                    bulk(&id)
                );
                let touched = acall(&mut con, &["SESSION.TOUCH", &id]).await;
                assert!(matches!(touched, Value::Int(n) if n > 0), "{touched:?}");
                con
            })
        })
        .collect();
    let mut cons = Vec::with_capacity(CONNS);
    for t in tasks {
        cons.push(t.await.expect("a client task failed"));
    }
    let mut c = sc.client();
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(CONNS as i64));
    for u in 0..10 {
        assert_eq!(byuser(&mut c, &format!("u{u}")).len(), CONNS / 10);
    }
    let info = text(&call(&mut c, &["INFO", "clients"]));
    let connected: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .expect("connected_clients")
        .trim()
        .parse()
        .unwrap();
    assert!(
        connected > CONNS,
        "connected_clients {connected} with {CONNS} open"
    );
    drop(cons);
}
