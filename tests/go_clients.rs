//! The sidecar as Go users meet it: redigo and go-redis, unchanged, with
//! pipelines, MULTI/EXEC mixing SESSION.* and ordinary commands, EXECABORT
//! and DISCARD, and go-redis's cluster client (`tests/go/contract.go`),
//! standalone, write-through and on a Redis Cluster.
//!
//! The Go module proxy is out of reach where the suite runs, so these are
//! the versions Debian packages (go-redis v5, redigo 1.8), built in GOPATH
//! mode: go-redis v9 itself is not covered.

mod common;

use common::cluster::Cluster;
use common::{RedisServer, Sidecar, run_go_contract};

#[test]
fn go_clients_work_standalone() {
    let sidecar = Sidecar::start(&[]);
    run_go_contract(&sidecar, "standalone");
}

#[test]
fn go_clients_work_write_through() {
    let upstream = RedisServer::start(&[]);
    let sidecar = Sidecar::start(&["--upstream", &upstream.url()]);
    sidecar.wait_upstream_up();
    run_go_contract(&sidecar, "upstream");
}

#[test]
fn go_clients_work_in_front_of_a_cluster() {
    let cluster = Cluster::start();
    let sidecar = Sidecar::start(&["--upstream", &cluster.url()]);
    sidecar.wait_upstream_up();
    run_go_contract(&sidecar, "cluster");
}
