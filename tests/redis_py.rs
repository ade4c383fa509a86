//! The contract as a Python user meets it: redis-py (RESP2 and RESP3) against
//! the real binary. scripts/test.sh installs redis-py when it is missing.

mod common;

use common::{RedisServer, Sidecar, run_python_check};

#[test]
fn redis_py_sees_the_contract_over_resp2_and_resp3() {
    let sidecar = Sidecar::start(&[]);
    run_python_check("redis_py_contract.py", &sidecar, &[]);
}

/// The same, write-through: the sidecar in front of a redis-server.
#[test]
fn redis_py_sees_the_contract_write_through() {
    let upstream = RedisServer::start(&[]);
    let sidecar = Sidecar::start(&["--upstream", &upstream.url()]);
    sidecar.wait_upstream_up();
    run_python_check("redis_py_contract.py", &sidecar, &[]);
}
