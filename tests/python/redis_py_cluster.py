"""redis-py's RedisCluster through the sidecar, which presents itself as a
one-node cluster serving every slot: every command goes to the sidecar.

Usage: redis_py_cluster.py <sidecar port> [passthrough]
"""

import sys

from redis.cluster import RedisCluster


def main() -> None:
    port = int(sys.argv[1])
    passthrough = len(sys.argv) > 2 and sys.argv[2] == "passthrough"
    rc = RedisCluster(host="127.0.0.1", port=port, decode_responses=True)
    nodes = rc.get_nodes()
    assert len(nodes) == 1, nodes
    assert nodes[0].port == port, nodes
    created = rc.execute_command("SESSION.CREATE", "ID", "py-cluster", "USER", "ann",
                                 target_nodes=nodes[0])
    assert created in ("py-cluster", {nodes[0].name: "py-cluster"}), created
    got = rc.execute_command("SESSION.GET", "py-cluster", "JSON", target_nodes=nodes[0])
    assert "py-cluster" in str(got), got
    if passthrough:
        # Keys of every slot, routed by the sidecar to the upstream's masters.
        for i in range(50):
            rc.set(f"key:{i}", str(i))
        for i in range(50):
            assert rc.get(f"key:{i}") == str(i)
        assert rc.keyslot("key:1") == rc.cluster_keyslot("key:1")
    print("ok")


if __name__ == "__main__":
    main()
