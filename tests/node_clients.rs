//! The sidecar as Node.js users meet it: ioredis (5, 6) and node-redis
//! (5, 6), unchanged, with pipelines, MULTI/EXEC mixing SESSION.* and
//! ordinary commands, their cluster clients, and node-redis's client-side
//! cache (`tests/node/contract.mjs`), standalone, write-through and on a
//! Redis Cluster.

mod common;

use common::cluster::Cluster;
use common::{RedisServer, Sidecar, run_node_contract};

#[test]
fn node_clients_work_standalone() {
    let sidecar = Sidecar::start(&[]);
    run_node_contract(&sidecar, "standalone");
}

#[test]
fn node_clients_work_write_through() {
    let upstream = RedisServer::start(&[]);
    let sidecar = Sidecar::start(&["--upstream", &upstream.url()]);
    sidecar.wait_upstream_up();
    run_node_contract(&sidecar, "upstream");
}

#[test]
fn node_clients_work_in_front_of_a_cluster() {
    let cluster = Cluster::start();
    let sidecar = Sidecar::start(&["--upstream", &cluster.url()]);
    sidecar.wait_upstream_up();
    run_node_contract(&sidecar, "cluster");
}
