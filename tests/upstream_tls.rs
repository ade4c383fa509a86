//! Write-through over TLS (`rediss://`): the sidecar verifies the upstream's
//! certificate against the CA it is given, and refuses one it cannot verify.

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

fn query(sidecar: &Sidecar, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query(&mut sidecar.client())
}

#[test]
fn rediss_upstream_is_verified_against_the_given_ca() {
    let dir = std::env::temp_dir().join(format!(
        "sidecar-tls-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
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
        .arg("{session:events}:s:over-tls")
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
