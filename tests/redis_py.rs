//! The contract as a Python user meets it: redis-py (RESP2 and RESP3) against
//! the real binary. scripts/test.sh installs redis-py when it is missing.

mod common;

use common::Sidecar;

#[test]
fn redis_py_sees_the_contract_over_resp2_and_resp3() {
    let sidecar = Sidecar::start(&[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/redis_py_contract.py"
    );
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(sidecar.addr.port().to_string())
        .output()
        .expect("python3 runs (scripts/test.sh installs redis-py)");
    assert!(
        output.status.success(),
        "redis-py contract check failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
