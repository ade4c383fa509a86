"""The SESSION.* contract as a redis-py user meets it, over RESP2 and RESP3.

Run by tests/redis_py.rs against a real sidecar: python3 redis_py_contract.py PORT
Exits non-zero with the failing assertion on stderr.
"""

import json
import sys
import time

import redis


def check(protocol: int, port: int) -> None:
    r = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, decode_responses=True)
    tag = f"p{protocol}-"
    assert r.ping() is True

    sid = r.execute_command("SESSION.CREATE", "ID", tag + "s1", "USER", tag + "alice",
                            "CONN", tag + "ws1", "TTL", 60, "ATTR", "locale", "en-GB")
    assert sid == tag + "s1", sid
    generated = r.execute_command("SESSION.CREATE", "USER", tag + "alice")
    assert len(generated) == 36 and generated.count("-") == 4, generated

    session = r.execute_command("SESSION.GET", sid)
    if protocol == 3:
        assert isinstance(session, dict), session
        fields = session
    else:
        assert isinstance(session, list) and len(session) == 22, session
        fields = dict(zip(session[::2], session[1::2]))
    assert fields["id"] == sid and fields["user"] == tag + "alice", fields
    assert fields["conn"] == tag + "ws1" and fields["status"] == "active", fields
    assert fields["version"] == 1 and fields["ttl"] == 60000, fields
    attrs = fields["attrs"] if protocol == 3 else dict(zip(fields["attrs"][::2], fields["attrs"][1::2]))
    assert attrs == {"locale": "en-GB"}, attrs

    as_json = json.loads(r.execute_command("SESSION.GET", sid, "JSON"))
    assert as_json["attrs"] == {"locale": "en-GB"} and as_json["version"] == 1, as_json
    assert r.execute_command("SESSION.GET", tag + "missing") is None

    assert r.execute_command("SESSION.ATTR.SET", sid, "room", "lobby") == 2
    assert r.execute_command("SESSION.ATTR.GET", sid, "room", "nope") == ["lobby", None]
    assert r.execute_command("SESSION.ATTR.INCRBY", sid, "hits", 5) == 5
    try:
        r.execute_command("SESSION.UPDATE", sid, "IFVERSION", 1, "ATTR", "room", "kitchen")
        raise AssertionError("a stale IFVERSION was applied")
    except redis.ResponseError as error:
        assert str(error) == "CONFLICT version is 3", str(error)
    assert r.execute_command("SESSION.UPDATE", sid, "IFVERSION", 3, "ATTR", "room", "kitchen") == 4
    try:
        r.execute_command("SESSION.ATTR.SET", tag + "missing", "a", "b")
        raise AssertionError("a write to a missing session succeeded")
    except redis.ResponseError as error:
        assert str(error) == "NOSESSION no such session", str(error)

    left = r.execute_command("SESSION.TOUCH", sid)
    assert 0 < left <= 60000, left
    assert r.execute_command("SESSION.BYCONN", tag + "ws1") == sid
    assert r.execute_command("SESSION.BYUSER", tag + "alice") == [sid, generated]
    assert r.execute_command("SESSION.EXISTS", sid, generated, tag + "missing") == 2

    # A pipeline, answered in order.
    pipe = r.pipeline(transaction=False)
    for i in range(100):
        pipe.execute_command("SESSION.CREATE", "ID", f"{tag}bulk{i}", "USER", tag + "bob")
    pipe.execute_command("SESSION.KILLUSER", tag + "bob")
    replies = pipe.execute()
    assert replies[:100] == [f"{tag}bulk{i}" for i in range(100)] and replies[100] == 100, replies[-3:]

    # The default pipeline is a transaction (MULTI ... EXEC), answered in
    # order, and run once.
    pipe = r.pipeline()
    pipe.execute_command("SESSION.CREATE", "ID", tag + "tx", "USER", tag + "carol", "ATTR", "n", 1)
    pipe.execute_command("SESSION.ATTR.INCRBY", tag + "tx", "n", 1)
    pipe.ping()
    pipe.execute_command("SESSION.ATTR.GET", tag + "tx", "n")
    assert pipe.execute() == [tag + "tx", 2, True, ["2"]]
    assert r.execute_command("SESSION.BYUSER", tag + "carol") == [tag + "tx"]
    # A queue-time error: nothing runs, redis-py raises.
    pipe = r.pipeline()
    pipe.execute_command("SESSION.DEL", tag + "tx")
    pipe.execute_command("SESSION.GET")
    try:
        pipe.execute()
        raise AssertionError("a transaction with a queuing error ran")
    except redis.ResponseError as error:
        assert "EXECABORT" in str(error) or "wrong number" in str(error), str(error)
    assert r.execute_command("SESSION.EXISTS", tag + "tx") == 1

    # An optimistic transaction on a session: WATCH it, read, write in MULTI;
    # a concurrent change makes redis-py retry.
    other = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, decode_responses=True)
    attempts = []

    def bump(pipe):
        n = int(pipe.execute_command("SESSION.ATTR.GET", tag + "tx", "n")[0])
        if not attempts:
            other.execute_command("SESSION.ATTR.SET", tag + "tx", "n", 10)
        attempts.append(n)
        pipe.multi()
        pipe.execute_command("SESSION.ATTR.SET", tag + "tx", "n", n + 1)

    r.transaction(bump, tag + "tx")
    assert attempts == [2, 10], attempts
    assert r.execute_command("SESSION.ATTR.GET", tag + "tx", "n") == ["11"]
    other.close()

    # Lifecycle events on the sidecar's own pub/sub.
    events = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, decode_responses=True).pubsub()
    events.subscribe("session:events")
    deadline = time.monotonic() + 5
    while events.get_message(timeout=0.5) is None and time.monotonic() < deadline:
        pass  # the subscribe confirmation
    assert r.execute_command("SESSION.DEL", sid) == 1
    message = None
    while message is None and time.monotonic() < deadline:
        message = events.get_message(timeout=0.5)
    assert message is not None and message["type"] == "message", message
    event = json.loads(message["data"])
    assert event["event"] == "deleted" and event["id"] == sid and event["user"] == tag + "alice", event
    events.close()
    assert r.execute_command("SESSION.GET", sid) is None
    r.close()


async def check_asyncio(protocol: int, port: int) -> None:
    """redis.asyncio, with the hiredis parser when it is installed."""
    import redis.asyncio

    r = redis.asyncio.Redis(host="127.0.0.1", port=port, protocol=protocol, decode_responses=True)
    tag = f"async{protocol}-"
    assert await r.ping() is True
    sid = await r.execute_command("SESSION.CREATE", "ID", tag + "s", "USER", tag + "u", "ATTR", "n", 1)
    assert sid == tag + "s", sid
    async with r.pipeline() as pipe:
        pipe.execute_command("SESSION.ATTR.INCRBY", sid, "n", 1)
        pipe.ping()
        pipe.execute_command("SESSION.ATTR.GET", sid, "n")
        assert await pipe.execute() == [2, True, ["2"]]
    async with r.pipeline(transaction=False) as pipe:
        for i in range(50):
            pipe.execute_command("SESSION.EXISTS", sid)
        assert await pipe.execute() == [1] * 50
    assert await r.execute_command("SESSION.DEL", sid) == 1
    await r.aclose()


def main() -> None:
    import asyncio

    port = int(sys.argv[1])
    for protocol in (2, 3):
        check(protocol, port)
        asyncio.run(check_asyncio(protocol, port))
    try:
        import hiredis  # noqa: F401

        parser = "hiredis"
    except ImportError:
        parser = "the pure-Python parser"
    print(f"ok (sync and asyncio, {parser})")


if __name__ == "__main__":
    main()
