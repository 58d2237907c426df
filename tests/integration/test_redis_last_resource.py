"""Redis as the last resource: its decisions kept beside its facts (the default log), the
COMMIT record written by the same script that checks and applies the facts, once the
indexes have prepared; alone in a transaction, one script checks and applies. Each test
reads Redis itself (a recoverer fencing the commit first: ``test_last_resource.py``)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from qdrant_client import QdrantClient

from chaos.proxy import FaultProxy
from chaos.servers import RedisServer
from coordinator import Fact, MemoryStore, Policy, TransactionInDoubt
from coordinator.embeddings import HashingEmbedder
from coordinator.faults import commit_points, last_resource_points
from participants.qdrant import QdrantIndex
from participants.redis import RedisStorage
from tests.support.crash import CrashAt, SimulatedCrash

RECOVER_NOW = Policy(in_doubt_timeout=0.001, redrive_after=0)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def notes(client: QdrantClient) -> QdrantIndex:
    return QdrantIndex(client, "notes", "content", embedder=HashingEmbedder(16))


def scripts_run(raw: redis.Redis) -> int:
    """Scripts the server has run so far (every Lockstep write to Redis is one)."""
    stats = raw.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def decisions(raw: redis.Redis, prefix: str) -> dict[str, dict[str, object]]:
    stored: dict[str, str] = raw.hgetall(f"{prefix}decisions")  # type: ignore[assignment]
    return {txid: json.loads(text) for txid, text in stored.items()}


@pytest.mark.parametrize("indexed", [False, True], ids=["alone", "with an index"])
def test_a_redis_storage_commits_in_one_script_with_its_decision(
    redis_server: RedisServer, raw: redis.Redis, prefix: str, indexed: bool
) -> None:
    indexes = [notes(QdrantClient(":memory:"))] if indexed else []
    mem = MemoryStore(RedisStorage(redis_server.url, prefix=prefix), indexes)
    assert mem.policy.last_resource == "redis"
    mem.commit(Fact(type="note", payload={"content": "the scripts are loaded"}))
    before = scripts_run(raw)
    fid = mem.commit(Fact(type="note", payload={"content": "one script"}), session_id="s")
    # The read of the fact's head, then one script: no prepare, decision and commit apart.
    assert scripts_run(raw) - before == 2
    assert json.loads(raw.get(f"{prefix}fact:{fid}") or "{}")["payload"] == {
        "content": "one script"
    }
    assert raw.smembers(f"{prefix}prepared") == set()
    assert raw.keys(f"{prefix}stage:*") == [] and raw.keys(f"{prefix}lock:*") == []
    recorded = decisions(raw, prefix)
    if indexed:  # the decision names both, and is ended once the index committed
        txid = mem.history(fid)[0]["txid"]
        assert recorded[txid]["decision"] == "commit"
        assert recorded[txid]["participants"] == ["qdrant:notes", "redis"]
        assert raw.zcard(f"{prefix}decisions:unended") == 0
        assert mem.indexes[0].contents().committed.get(fid) == 1
    else:  # one participant: one phase, no decision to keep
        assert recorded == {}
    assert mem.verify().clean
    mem.close()


def test_a_crash_after_the_decision_is_finished_from_redis(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    vectors = QdrantClient(":memory:")
    mem = MemoryStore(
        RedisStorage(redis_server.url, prefix=prefix),
        [notes(vectors)],
        fault_hook=CrashAt("after_decision"),
    )
    with pytest.raises(SimulatedCrash):
        mem.commit(Fact(id="kept", type="note", payload={"content": "decided, then died"}))
    [(txid, record)] = decisions(raw, prefix).items()
    assert record["decision"] == "commit"

    again = MemoryStore(
        RedisStorage(redis_server.url, prefix=prefix), [notes(vectors)], policy=RECOVER_NOW
    )
    assert again.get("kept") is not None  # committed with the decision
    assert again.indexes[0].recover() == [txid]  # the index still holds it staged
    assert again.recover().clean
    assert again.indexes[0].contents().committed == {"kept": 1}
    assert raw.zcard(f"{prefix}decisions:unended") == 0
    assert again.verify().clean
    again.close()


def test_a_last_resource_commit_passes_exactly_its_named_points(
    redis_server: RedisServer, prefix: str
) -> None:
    seen: list[str] = []
    mem = MemoryStore(
        RedisStorage(redis_server.url, prefix=prefix),
        [notes(QdrantClient(":memory:"))],
        fault_hook=seen.append,
    )
    mem.commit(Fact(type="note", payload={"content": "every point once"}))
    mem.close()
    assert seen == last_resource_points(["qdrant:notes", "redis"], "redis")


@pytest.mark.parametrize("point", last_resource_points(["qdrant:notes", "redis"], "redis"))
def test_a_crash_at_any_point_leaves_facts_and_index_agreeing_after_recovery(
    redis_server: RedisServer, raw: redis.Redis, prefix: str, point: str
) -> None:
    vectors = QdrantClient(":memory:")
    storage = RedisStorage(redis_server.url, prefix=prefix)
    seed = MemoryStore(storage, [notes(vectors)])
    seed.commit(Fact(id="a", type="note", payload={"content": "first"}))
    crashing = MemoryStore(
        RedisStorage(redis_server.url, prefix=prefix),
        [notes(vectors)],
        fault_hook=CrashAt(point),
    )
    with pytest.raises(SimulatedCrash):
        crashing.update("a", {"payload": {"content": "second"}})
    healed = MemoryStore(
        RedisStorage(redis_server.url, prefix=prefix), [notes(vectors)], policy=RECOVER_NOW
    )
    assert healed.recover().clean
    version = (healed.get("a") or {})["version"]
    committed = (
        point
        in commit_points(["qdrant:notes"])[
            commit_points(["qdrant:notes"]).index("after_decision") :
        ]
    )
    assert version == (2 if committed else 1)
    assert healed.indexes[0].contents().committed == {"a": version}
    assert healed.indexes[0].recover() == [] and raw.smembers(f"{prefix}prepared") == set()
    assert healed.verify().clean
    healed.close()


@pytest.mark.parametrize("fault", ["lost", "late"])
def test_a_script_whose_reply_is_lost_is_in_doubt_and_the_log_decides(
    redis_server: RedisServer, raw: redis.Redis, prefix: str, fault: str
) -> None:
    proxy = FaultProxy(redis_server.port)
    vectors = QdrantClient(":memory:")
    proxied = redis_server.url.replace(f":{redis_server.port}", f":{proxy.port}")

    def cut(point: str) -> None:
        if point == "before_decision":
            if fault == "lost":
                proxy.blackhole()  # the script never arrives
            else:
                proxy.delay(1.0)  # it arrives after the client gave up, and recovery ran

    mem = MemoryStore(
        RedisStorage(proxied, prefix=prefix, timeout=0.5), [notes(vectors)], fault_hook=cut
    )
    assert mem.policy.last_resource == "redis"
    with pytest.raises(TransactionInDoubt, match="one-phase commit"):
        mem.commit(Fact(id="x", type="note", payload={"content": "cut"}))
    healed = MemoryStore(
        RedisStorage(redis_server.url, prefix=prefix), [notes(vectors)], policy=RECOVER_NOW
    )
    assert healed.recover().clean
    time.sleep(1.5)  # a late script has landed by now
    proxy.close()
    [decided] = [d["decision"] for d in decisions(raw, prefix).values()]
    # Recovery found no decision and recorded ABORT first: a late script, finding it,
    # applies nothing. (Had the script landed first, its COMMIT would stand, with x.)
    assert (healed.get("x") is not None) == (decided == "commit")
    assert healed.indexes[0].contents().committed == ({"x": 1} if decided == "commit" else {})
    assert healed.indexes[0].recover() == [] and raw.keys(f"{prefix}lock:*") == []
    assert healed.verify().clean
    healed.close()
