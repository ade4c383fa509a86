"""Passthrough as a redis-py user meets it, over RESP2 and RESP3: ordinary
commands, pipelines, transactions, pub/sub and blocking commands on the
sidecar's one endpoint, beside SESSION.* commands.

Run by tests/proxy.rs against a sidecar with an upstream:
python3 redis_py_proxy.py PORT [cluster]
Exits non-zero with the failing assertion on stderr.
"""

import sys
import threading
import time

import redis


def check(protocol: int, port: int, cluster: bool) -> None:
    r = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, decode_responses=True)
    p = f"py{protocol}:"
    assert r.set(p + "s", "v") is True
    assert r.get(p + "s") == "v"
    assert r.incr(p + "n", 5) == 5
    assert r.hset(p + "h", mapping={"a": "1", "b": "2"}) == 2
    assert r.hgetall(p + "h") == {"a": "1", "b": "2"}
    assert r.zadd(p + "z", {"m": 1.5}) == 1
    assert r.zscore(p + "z", "m") == 1.5
    assert r.expire(p + "s", 100) is True and 0 < r.ttl(p + "s") <= 100
    try:
        r.lpush(p + "s", "x")
        raise AssertionError("WRONGTYPE expected")
    except redis.ResponseError as error:
        assert str(error).startswith("WRONGTYPE"), error

    # The whole keyspace, as one Redis answers for it (on a cluster, every
    # master's keys).
    for i in range(30):
        r.set(f"{p}many:{i}", i)
    wanted = {f"{p}many:{i}" for i in range(30)}
    assert set(r.scan_iter(match=p + "many:*", count=4)) == wanted
    assert set(r.keys(p + "many:*")) == wanted
    assert r.dbsize() >= 30
    assert r.exists(r.randomkey()) == 1

    # A session and plain commands on the same connection.
    sid = r.execute_command("SESSION.CREATE", "ID", p + "sess", "USER", "u")
    assert sid == p + "sess"
    assert r.execute_command("SESSION.EXISTS", sid) == 1

    # Pipelines: plain, and transactional (MULTI/EXEC).
    pipe = r.pipeline(transaction=False)
    pipe.set(p + "a", 1).incr(p + "a").execute_command("SESSION.TTL", sid).get(p + "a")
    replies = pipe.execute()
    assert replies[0] is True and replies[1] == 2 and replies[2] > 0 and replies[3] == "2", replies
    with r.pipeline(transaction=True) as tx:
        tx.incr(p + "a").incr(p + "a")
        assert tx.execute() == [3, 4]

    # WATCH through redis-py's transaction helper, with a concurrent change.
    other = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, decode_responses=True)
    attempts = []

    def bump(pipe):
        value = int(pipe.get(p + "a"))
        if not attempts:
            other.set(p + "a", 100)
        attempts.append(value)
        pipe.multi()
        pipe.set(p + "a", value + 1)

    r.transaction(bump, p + "a")
    assert attempts == [4, 100], attempts
    assert r.get(p + "a") == "101"

    # Pub/sub.
    pubsub = r.pubsub()
    pubsub.subscribe(p + "chan")
    pubsub.psubscribe(p + "pat*")
    confirmations = [pubsub.get_message(timeout=5) for _ in range(2)]
    assert [c["type"] for c in confirmations] == ["subscribe", "psubscribe"], confirmations
    # On a cluster, PUBLISH counts the subscribers of the node it ran on.
    receivers = [r.publish(p + "chan", "hi"), r.publish(p + "pattern", "yo")]
    assert receivers == [1, 1] or cluster, receivers
    messages = []
    deadline = time.time() + 5
    while len(messages) < 2 and time.time() < deadline:
        message = pubsub.get_message(timeout=1)
        if message:
            messages.append((message["type"], message["channel"], message["data"]))
    assert messages == [("message", p + "chan", "hi"), ("pmessage", p + "pattern", "yo")], messages
    pubsub.close()

    # A blocking pop that another client wakes (whether the push comes
    # before or after the pop blocks, the reply is the same).
    pusher = threading.Timer(0.2, lambda: other.rpush(p + "queue", "job"))
    pusher.start()
    assert list(r.blpop([p + "queue"], timeout=5)) == [p + "queue", "job"]
    pusher.join()
    assert r.blpop([p + "empty"], timeout=0.1) is None


def main() -> None:
    port = int(sys.argv[1])
    cluster = sys.argv[2:] == ["cluster"]
    for protocol in (2, 3):
        check(protocol, port, cluster)


if __name__ == "__main__":
    main()
