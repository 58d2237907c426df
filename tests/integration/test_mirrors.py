"""A mirror storage beside the source of truth: Postgres facts, a Redis copy, a Chroma
server index — one memory change lands in all three or in none.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import chromadb
import pytest
import redis

from chaos.servers import ChromaServer, PostgresServer, RedisServer
from coordinator import (
    Fact,
    LockstepError,
    MemoryStore,
    Policy,
    TransactionAborted,
    UsageError,
)
from coordinator.embeddings import HashingEmbedder
from coordinator.records import FactRecord, UpsertFact
from coordinator.settings import LockstepSettings
from participants.chroma import ChromaIndex
from participants.postgres import PostgresStorage
from participants.redis import RedisStorage

RECOVER_NOW = Policy(in_doubt_timeout=0.001, redrive_after=0, prepare_timeout=5)


@pytest.fixture
def three(
    postgres_server: PostgresServer, redis_server: RedisServer, chroma_server: ChromaServer
) -> Iterator[MemoryStore]:
    """Postgres (truth and log) + a Redis mirror + a Chroma server index, fresh names."""
    tag = uuid.uuid4().hex[:10]
    dsn = postgres_server.create_database(f"mirror_{tag}")
    client = chromadb.HttpClient(host="127.0.0.1", port=chroma_server.port)
    mem = MemoryStore(
        PostgresStorage(dsn, name="facts"),
        [ChromaIndex(client, f"m{tag}", "content", embedder=HashingEmbedder(16))],
        mirrors=[RedisStorage(redis_server.url, name="copy", prefix=f"m{tag}:")],
        policy=RECOVER_NOW,
    )
    try:
        yield mem
    finally:
        mem.close()


def versions(records: list[FactRecord]) -> dict[str, int]:
    return {f.id: f.version for f in records}


def test_every_change_lands_in_the_storage_the_mirror_and_the_index(three: MemoryStore) -> None:
    mirror = three.mirrors[0]
    a = three.commit(Fact(type="note", payload={"content": "likes tea"}), session_id="s1")
    b = three.commit(Fact(type="note", payload={"content": "lives in Lisbon"}))
    three.update(a, {"payload": {"content": "likes green tea"}})
    three.delete(None, b)
    three.rollback(1)  # undoes the delete: b is back, at a new version

    truth = three.storage.all_facts()
    assert versions(truth) == {a: 2, b: 3}
    assert versions(mirror.all_facts()) == versions(truth)
    assert mirror.get(a).payload == {"content": "likes green tea"}  # type: ignore[union-attr]
    assert [h.version for h in mirror.history(b)] == [1, 2, 3]
    assert three.indexes[0].contents().committed == {a: 2, b: 3}
    assert three.verify().clean


def test_a_mirror_that_cannot_prepare_aborts_the_whole_change(
    three: MemoryStore, redis_server: RedisServer
) -> None:
    kept = three.commit(Fact(type="note", payload={"content": "before"}))
    redis_server.kill()
    try:
        with pytest.raises(LockstepError):
            three.update(kept, {"payload": {"content": "during the outage"}})
        with pytest.raises(LockstepError):
            three.commit(Fact(id="new", type="note", payload={"content": "never lands"}))
    finally:
        redis_server.start()
    three.recover()
    assert versions(three.storage.all_facts()) == {kept: 1}
    assert three.get(kept)["payload"] == {"content": "before"}  # type: ignore[index]
    assert three.indexes[0].contents().committed == {kept: 1}
    assert three.verify().clean
    three.update(kept, {"payload": {"content": "after"}})
    assert versions(three.mirrors[0].all_facts()) == {kept: 2}


def test_verify_finds_a_wiped_mirror_and_repair_rebuilds_it(
    three: MemoryStore, redis_server: RedisServer
) -> None:
    ids = [three.commit(Fact(type="note", payload={"content": f"fact {n}"})) for n in range(4)]
    three.update(ids[0], {"payload": {"content": "fact 0, revised"}})
    mirror = three.mirrors[0]
    prefix = mirror._prefix  # type: ignore[attr-defined]
    raw = redis.Redis(port=redis_server.port)
    for key in raw.scan_iter(f"{prefix}*"):  # behind Lockstep's back
        raw.delete(key)
    # An update of a fact the mirror lacks is refused, not committed over a wrong copy.
    with pytest.raises(TransactionAborted):
        three.update(ids[1], {"payload": {"content": "refused"}})

    report = three.verify()
    assert not report.clean
    assert report.derived["copy"].missing == sorted(ids)
    assert report.derived[three.indexes[0].name].clean

    three.repair()
    assert three.verify().clean
    assert versions(mirror.all_facts()) == {ids[0]: 2, ids[1]: 1, ids[2]: 1, ids[3]: 1}
    assert mirror.get(ids[0]).payload == {"content": "fact 0, revised"}  # type: ignore[union-attr]
    three.update(ids[1], {"payload": {"content": "accepted now"}})
    assert mirror.get(ids[1]).version == 2  # type: ignore[union-attr]


def test_repair_removes_facts_only_the_mirror_holds(three: MemoryStore) -> None:
    kept = three.commit(Fact(type="note", payload={"content": "kept"}))
    stray = FactRecord("stray", "note", {"content": "only in the mirror"}, 1, txid="t")
    three._apply(three.mirrors[0], [UpsertFact(stray, 0)])
    assert three.verify().derived["copy"].extra == ["stray"]
    three.repair()
    assert versions(three.mirrors[0].all_facts()) == {kept: 1}
    assert three.verify().clean


def test_mirrors_from_settings(
    postgres_server: PostgresServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    name = f"mirror_settings_{uuid.uuid4().hex[:8]}"
    postgres_server.create_database(name)
    settings = LockstepSettings(
        storage=f"postgresql://postgres@127.0.0.1:{postgres_server.port}/{name}",
        mirrors=[f"{redis_server.url}?prefix=s{uuid.uuid4().hex[:8]}:"],
        indexes=[f"qdrant+local:///{tmp_path / 'q'}?collection=notes&text_field=content"],
        embedder="hashing:16",
    )
    mem = MemoryStore.from_settings(settings)
    try:
        fid = mem.commit(Fact(type="note", payload={"content": "from settings"}))
        assert versions(mem.mirrors[0].all_facts()) == {fid: 1}
        assert mem.mirrors[0].name == "mirror0"
    finally:
        mem.close()
    with pytest.raises(LockstepError, match="no storage"):
        MemoryStore.from_settings(LockstepSettings(mirrors=["redis://127.0.0.1:1/0"]))


def test_a_mirror_must_be_a_storage(three: MemoryStore) -> None:
    with pytest.raises(UsageError, match="add_mirror"):
        three.add_mirror(three.indexes[0])  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_eight_asyncio_writers_from_the_first_call(
    postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    """Concurrent first calls open the Postgres pool once (they used to hang the loop)."""
    import anyio

    from coordinator import AsyncMemoryStore
    from participants.postgres import AsyncPostgresStorage
    from participants.redis import AsyncRedisStorage

    tag = uuid.uuid4().hex[:10]
    dsn = postgres_server.create_database(f"async_{tag}")
    mem = AsyncMemoryStore(
        AsyncPostgresStorage(dsn, name="facts"),
        mirrors=[AsyncRedisStorage(redis_server.url, name="copy", prefix=f"a{tag}:")],
    )
    written: list[str] = []

    async def writer(w: int) -> None:
        for i in range(5):
            fact = Fact(type="note", payload={"content": f"writer {w} note {i}"})
            written.append(await mem.commit(fact, session_id=f"s{w}"))

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                for w in range(8):
                    group.start_soon(writer, w)
        truth = {f.id: f.version for f in await mem.storage.all_facts()}
        assert truth == dict.fromkeys(written, 1) and len(truth) == 40
        assert {f.id: f.version for f in await mem.mirrors[0].all_facts()} == truth
    finally:
        await mem.close()


def test_a_nul_character_is_refused_by_every_store_alike(three: MemoryStore) -> None:
    """Postgres cannot store a NUL, in a payload or an id; it used to vote no (a
    TransactionAborted, as if retrying could help) where SQLite took the value. The memory
    API refuses it first, on every combination, and nothing is written."""
    kept = three.commit(Fact(type="note", payload={"content": "kept"}))
    for fact in (
        Fact(type="note", payload={"content": "a\x00b"}),
        Fact(id="x\x00y", type="note", payload={"content": "c"}),
    ):
        with pytest.raises(UsageError, match="NUL character"):
            three.commit(fact)
    assert versions(three.storage.all_facts()) == {kept: 1}
    assert versions(three.mirrors[0].all_facts()) == {kept: 1}
    assert three.indexes[0].contents().committed == {kept: 1}


@pytest.mark.parametrize("bad", ["a\x00b", "caf\udce9"])
def test_text_no_store_keeps_is_refused_in_reads_too(three: MemoryStore, bad: str) -> None:
    """Reads took such text to the storage, where SQLite found nothing and Postgres raised
    a UnicodeEncodeError or a ParticipantError: the memory API refuses it alike everywhere."""
    kept = three.commit(Fact(type="note", payload={"content": "kept"}), session_id="s")
    reads: list[Callable[[], object]] = [
        lambda: three.get(bad),
        lambda: three.history(bad),
        lambda: three.query(typename=bad),
        lambda: three.query(session_id=bad),
        lambda: three.query(filters={"payload.content": bad}),
        lambda: three.search("kept", filters={"payload.content": bad}),
        lambda: three.search(bad),
        lambda: three.rollback(1, session_id=bad),
        lambda: three.update(bad, {"payload": {"content": "x"}}),
        lambda: three.delete(None, bad),
    ]
    for read in reads:
        with pytest.raises(UsageError, match=r"NUL character|lone surrogate"):
            read()
    assert versions(three.storage.all_facts()) == {kept: 1}
    assert three.get(kept)["payload"] == {"content": "kept"}  # type: ignore[index]


@pytest.mark.parametrize(
    ("fact", "session", "where"),
    [
        (Fact(type="note", payload={"content": "caf\udce9"}), None, r"payload\.content holds"),
        (Fact(type="note", payload={"content": "x", "\ud800": 1}), None, "payload has a key"),
        (Fact(id="x\udcffy", type="note", payload={"content": "c"}), None, "fact id 'x"),
        (Fact(type="note", payload={"content": "c"}), "s\ud800", "session_id 's"),
    ],
)
def test_a_lone_surrogate_is_refused_by_every_store_alike(
    three: MemoryStore, fact: Fact, session: str | None, where: str
) -> None:
    """A str holding half a UTF-16 surrogate pair (what decoding bytes with
    ``errors="surrogateescape"`` leaves) is not Unicode text: UTF-8 cannot encode it.
    Each store failed its own way (SQLite kept one in a payload, JSON-escaped, and
    refused one in a session id; Postgres voted no). The memory API refuses it first,
    naming where, and nothing is written."""
    kept = three.commit(Fact(type="note", payload={"content": "kept"}))
    with pytest.raises(UsageError, match=f"{where}.*lone surrogate"):
        three.commit(fact, session_id=session)
    assert versions(three.storage.all_facts()) == {kept: 1}
    assert versions(three.mirrors[0].all_facts()) == {kept: 1}
    assert three.indexes[0].contents().committed == {kept: 1}
