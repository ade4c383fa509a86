//! TLS both ways. Upstream (`rediss://`): the sidecar verifies the
//! upstream's certificate against the CA it is given, and refuses one it
//! cannot verify. Clients (`--tls-listen`): a second listener speaking TLS,
//! for sessions and passthrough alike.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{RedisServer, Sidecar, free_port, wait_until};

/// A CA and a server certificate for 127.0.0.1, made with the openssl CLI.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            status.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

/// A fresh directory with a CA and a server certificate.
fn certificates() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sidecar-tls-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    dir
}

/// A TLS listener on a free port with the test certificate in `dir`: its
/// address, and the flags that ask for it.
fn tls_listener(dir: &Path) -> (String, Vec<String>) {
    let addr = format!("127.0.0.1:{}", free_port());
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let flags = vec![
        "--tls-listen".into(),
        addr.clone(),
        "--tls-cert-file".into(),
        path("server.pem"),
        "--tls-key-file".into(),
        path("server.key"),
    ];
    (addr, flags)
}

/// Starts a sidecar with `args` and then `more`.
fn start_with(args: &[&str], more: &[String]) -> Sidecar {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(more.iter().map(String::as_str));
    Sidecar::start(&all)
}

#[test]
fn clients_speak_tls_on_the_tls_listener() {
    let dir = certificates();
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let upstream = RedisServer::start(&[]);
    let (tls_addr, tls) = tls_listener(&dir);
    let sidecar = start_with(&["--upstream", &upstream.url(), "--threads", "2"], &tls);
    sidecar.wait_upstream_up();
    let (_, tls_port) = tls_addr.rsplit_once(':').unwrap();

    // redis-cli --tls: a session, and a command passed through.
    let cli = |args: &[&str]| -> String {
        let out = Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                &path("ca.pem"),
                "-h",
                "127.0.0.1",
                "-p",
                tls_port,
            ])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["SESSION.CREATE", "ID", "over-tls"]), "over-tls");
    assert_eq!(cli(&["SET", "plain", "v"]), "OK");

    // The redis crate over TLS in RESP3: a pipeline whose replies the pool
    // hands to the TLS session, with sessions interleaved.
    let client = redis::Client::build_with_tls(
        format!("rediss://{tls_addr}/?protocol=resp3"),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(path("ca.pem")).unwrap()),
        },
    )
    .unwrap();
    let mut con = client.get_connection().unwrap();
    let mut pipe = redis::pipe();
    for _ in 0..200 {
        pipe.cmd("INCR").arg("counter");
    }
    pipe.cmd("SESSION.EXISTS")
        .arg("over-tls")
        .cmd("GET")
        .arg("plain");
    let replies: Vec<redis::Value> = pipe.query(&mut con).unwrap();
    assert_eq!(replies[199], redis::Value::Int(200));
    assert_eq!(replies[200], redis::Value::Int(1));
    assert_eq!(replies[201], redis::Value::BulkString(b"v".to_vec()));
    // A large reply, more than a socket takes at once.
    let big = "x".repeat(4 << 20);
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(&big)
        .query(&mut con)
        .unwrap();
    let back: String = redis::cmd("GET").arg("big").query(&mut con).unwrap();
    assert_eq!(back.len(), big.len());

    // The plain listener stays plain; plaintext on the TLS one is closed.
    assert_eq!(
        common::call(&mut sidecar.client(), &["SESSION.EXISTS", "over-tls"]),
        redis::Value::Int(1)
    );
    let mut plain = common::RawConn::connect(tls_addr.parse().unwrap());
    plain.send(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let (got, closed) = plain.read_until_closed(Duration::from_secs(5));
    assert!(closed, "plaintext on the TLS listener was not closed");
    assert!(!got.starts_with(b"+PONG"), "{got:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Peers over TLS (`--peer-tls-ca`): SESSION.MIGRATE reaches a sidecar at
/// its TLS listener, certificate verified, peer secret and all; a sidecar
/// without the CA cannot, and keeps its sessions.
#[test]
fn migrate_reaches_a_peer_over_tls() {
    let dir = certificates();
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (tls_addr, tls) = tls_listener(&dir);
    let (_, tls_port) = tls_addr.rsplit_once(':').unwrap();
    let b = start_with(&["--node-id", "b", "--peer-secret", "between-us"], &tls);
    let a = Sidecar::start(&[
        "--node-id",
        "a",
        "--peer-secret",
        "between-us",
        "--peer-tls-ca",
        &path("ca.pem"),
    ]);
    let mut con_a = a.client();
    for i in 0..10 {
        common::call(&mut con_a, &["SESSION.CREATE", "ID", &format!("s{i}")]);
    }
    let moved = common::call(
        &mut con_a,
        &["SESSION.MIGRATE", "127.0.0.1", tls_port, "ALL"],
    );
    assert_eq!(moved, redis::Value::Int(10));
    let count = |sc: &Sidecar| common::call(&mut sc.client(), &["SESSION.COUNT", "LOCAL"]);
    assert_eq!(count(&b), redis::Value::Int(10));

    // Without the CA, the TLS listener cannot be spoken to: nothing moves.
    let c = Sidecar::start(&["--node-id", "c", "--peer-secret", "between-us"]);
    let mut con_c = c.client();
    common::call(&mut con_c, &["SESSION.CREATE", "ID", "stays"]);
    let refused = common::call(
        &mut con_c,
        &[
            "SESSION.MIGRATE",
            "127.0.0.1",
            tls_port,
            "TIMEOUT",
            "2000",
            "ALL",
        ],
    );
    assert!(
        matches!(&refused, redis::Value::ServerError(_)),
        "{refused:?}"
    );
    assert_eq!(count(&c), redis::Value::Int(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tls_listener_without_a_usable_certificate_is_a_startup_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_session-sidecar"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args([
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert-file",
            "/nonexistent.pem",
        ])
        .args(["--tls-key-file", "/nonexistent.key"])
        .output()
        .expect("run with a missing certificate");
    assert!(!out.status.success());
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("cannot read the TLS certificate /nonexistent.pem"),
        "{said}"
    );
    // --tls-listen alone is refused by the flag parser.
    let out = Command::new(env!("CARGO_BIN_EXE_session-sidecar"))
        .args(["--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0"])
        .output()
        .expect("run without a certificate");
    assert!(!out.status.success());
}

fn query(sidecar: &Sidecar, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query(&mut sidecar.client())
}

#[test]
fn rediss_upstream_is_verified_against_the_given_ca() {
    let dir = certificates();
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let tls_port = free_port().to_string();
    let redis = RedisServer::start(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &path("server.pem"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.pem"),
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}");

    let trusted = Sidecar::start(&["--upstream", &url, "--upstream-tls-ca", &path("ca.pem")]);
    let created = wait_until(Duration::from_secs(10), || {
        query(&trusted, &["SESSION.CREATE", "ID", "over-tls"]).is_ok()
    });
    assert!(created, "no write went through the TLS upstream");
    let stored: Option<String> = redis::cmd("HGET")
        .arg(common::skey("over-tls"))
        .arg("id")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(stored.as_deref(), Some("over-tls"));

    // Without the CA the certificate cannot be verified: nothing is written.
    // Ordinary commands pass through over TLS too, multiplexed and pinned.
    assert_eq!(
        query(&trusted, &["SET", "plain", "over-tls"]).unwrap(),
        redis::Value::Okay
    );
    let plain: Option<String> = redis::cmd("GET")
        .arg("plain")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(plain.as_deref(), Some("over-tls"));
    query(&trusted, &["RPUSH", "queue", "job"]).unwrap();
    let popped: Vec<String> = redis::cmd("BLPOP")
        .arg("queue")
        .arg(1)
        .query(&mut trusted.client())
        .unwrap();
    assert_eq!(popped, ["queue", "job"]);

    let untrusting = Sidecar::start(&["--upstream", &url]);
    let error = query(&untrusting, &["SESSION.CREATE", "ID", "unverified"]).unwrap_err();
    assert_eq!(error.code(), Some("TRYAGAIN"), "{error}");
    let error = query(&untrusting, &["GET", "plain"]).unwrap_err();
    assert_eq!(error.code(), Some("TRYAGAIN"), "{error}");
    let exists: i64 = redis::cmd("EXISTS")
        .arg("{session:events}:s:unverified")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(exists, 0);

    // `#insecure` (encrypted, certificate not checked), as redis-rs reads
    // the URL: sessions and passthrough both work.
    let insecure = Sidecar::start(&["--upstream", &format!("{url}/#insecure")]);
    let created = wait_until(Duration::from_secs(10), || {
        query(&insecure, &["SESSION.CREATE", "ID", "insecure"]).is_ok()
    });
    assert!(created, "no write went through the #insecure TLS upstream");
    assert_eq!(
        query(&insecure, &["GET", "plain"]).unwrap(),
        redis::Value::BulkString(b"over-tls".to_vec())
    );
    query(&insecure, &["RPUSH", "queue", "again"]).unwrap();
    let popped: Vec<String> = redis::cmd("BLPOP")
        .arg("queue")
        .arg(1)
        .query(&mut insecure.client())
        .unwrap();
    assert_eq!(popped, ["queue", "again"]);
    let _ = std::fs::remove_dir_all(&dir);
}
