"""A server that stops answering (its connections black-holed by the fault proxy): the
synchronous memory API gives up on a Chroma server at ``Policy.prepare_timeout``, in the
prepare and in the commit's second phase alike, rather than wait for ever (Chroma's HTTP
client itself never gives up); a Postgres storage's commit point, at its
``commit_timeout``, as in doubt (psycopg has no timeout of its own there either). Once
the server answers again, recovery settles what was left and the stores agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import chromadb
import pytest
from qdrant_client import AsyncQdrantClient, QdrantClient

from chaos.proxy import FaultProxy
from chaos.servers import ChromaServer, PostgresServer
from coordinator import (
    AsyncMemoryStore,
    Fact,
    MemoryStore,
    Policy,
    PrepareTimeout,
    TransactionInDoubt,
    new_txid,
)
from coordinator.embeddings import HashingEmbedder
from participants.chroma import ChromaIndex
from participants.postgres import AsyncPostgresStorage, PostgresStorage
from participants.qdrant import AsyncQdrantIndex, QdrantIndex
from participants.sqlite import SQLiteStorage
from tests.support.threads import within

T = TypeVar("T")

POLICY = Policy(prepare_timeout=1.0, finish_attempts=2, in_doubt_timeout=0.001, redrive_after=0)


def proxy_to(port: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy(port)
    try:
        yield proxy
    finally:
        proxy.close()  # resets the connections the abandoned calls still wait on


@pytest.fixture
def proxy(chroma_server: ChromaServer) -> Iterator[FaultProxy]:
    yield from proxy_to(chroma_server.port)


def store(tmp_path: Path, proxy: FaultProxy, fault_hook: Callable[[str], None]) -> MemoryStore:
    """SQLite facts (the decision log in the same file) and a Chroma server's collection
    reached through ``proxy``: the index is the only participant prepared in two phases,
    so the coordinator calls nothing else at that step."""
    client = chromadb.HttpClient(host="127.0.0.1", port=proxy.port)
    index = ChromaIndex(client, f"unanswered-{new_txid()[-12:]}", embedder=HashingEmbedder(16))
    assert not index.in_process
    return MemoryStore(
        SQLiteStorage(tmp_path / "facts.db"), [index], policy=POLICY, fault_hook=fault_hook
    )


def in_time(call: Callable[[], T]) -> T:
    return within(60, call, "still waiting after 60 s on a server that does not answer")


def note(content: str) -> Fact:
    return Fact(type="note", payload={"content": content})


def black_hole_at(step: str, proxy: FaultProxy) -> tuple[Callable[[str], None], list[bool]]:
    """A fault hook that black-holes ``proxy`` at ``step`` while its switch is on."""
    armed = [True]

    def hook(point: str) -> None:
        if armed[0] and point.startswith(step):
            proxy.blackhole()

    return hook, armed


def test_a_prepare_the_server_never_answers_is_a_refusal(tmp_path: Path, proxy: FaultProxy) -> None:
    hook, armed = black_hole_at("before_prepare:", proxy)
    armed[0] = False
    mem = store(tmp_path, proxy, hook)
    kept = mem.commit(note("before"))
    armed[0] = True  # from now on, the server stops answering
    with pytest.raises(PrepareTimeout):
        in_time(lambda: mem.commit(note("unanswered")))
    assert [fact["id"] for fact in mem.query()] == [kept]  # nothing of it committed

    armed[0] = False
    proxy.heal()
    proxy.cut()  # the server restarted, say: the connections the calls wait on are reset
    after = mem.commit(note("after"))
    assert mem.recover().clean
    assert mem.verify().clean
    assert {fact["id"] for fact in mem.query()} == {kept, after}
    mem.close()


def test_a_second_phase_the_server_never_answers_leaves_the_commit_to_recovery(
    tmp_path: Path, proxy: FaultProxy
) -> None:
    hook, armed = black_hole_at("before_commit:", proxy)
    mem = store(tmp_path, proxy, hook)
    committed = in_time(lambda: mem.commit(note("decided, then unanswered")))  # decided
    assert [fact["id"] for fact in mem.query()] == [committed]

    armed[0] = False
    proxy.heal()
    proxy.cut()
    assert mem.recover().clean
    assert mem.verify().clean
    assert [hit.fact["id"] for hit in mem.search("decided", k=1)] == [committed]
    mem.close()


@pytest.fixture
def pg_proxy(postgres_server: PostgresServer) -> Iterator[FaultProxy]:
    yield from proxy_to(postgres_server.port)


def through(proxy: FaultProxy, dsn: str) -> str:
    return dsn.replace(f"port={proxy.upstream_port}", f"port={proxy.port}")


def test_a_postgres_commit_point_the_server_never_answers_is_in_doubt(
    postgres_dsn: str, pg_proxy: FaultProxy
) -> None:
    """The storage commits last, with the decision: its COMMIT is the commit point, so a
    COMMIT left unanswered is in doubt, and recovery decides from the log."""
    hook, armed = black_hole_at("before_decision", pg_proxy)
    armed[0] = False
    storage = PostgresStorage(through(pg_proxy, postgres_dsn), commit_timeout=1)
    index = QdrantIndex(QdrantClient(":memory:"), "notes", embedder=HashingEmbedder(16))
    mem = MemoryStore(storage, [index], policy=POLICY, fault_hook=hook)
    kept = mem.commit(note("before"))
    armed[0] = True
    with pytest.raises(TransactionInDoubt, match="no answer within 1 s"):
        in_time(lambda: mem.commit(note("unanswered")))

    pg_proxy.close()  # the connections end: the server rolls back what never arrived
    healed = MemoryStore(PostgresStorage(postgres_dsn), [index], policy=POLICY)
    assert healed.recover().clean
    assert healed.verify().clean
    assert [fact["id"] for fact in healed.query()] == [kept]
    healed.close()


@pytest.mark.anyio
async def test_an_async_postgres_commit_point_the_server_never_answers_is_in_doubt(
    postgres_dsn: str, pg_proxy: FaultProxy
) -> None:
    """The async twin (without its bound, the commit waits until pytest-timeout ends
    the test: a cancellation from outside does not end psycopg's wait on a silent
    server)."""
    hook, armed = black_hole_at("before_decision", pg_proxy)
    armed[0] = False
    storage = AsyncPostgresStorage(through(pg_proxy, postgres_dsn), commit_timeout=1)
    index = AsyncQdrantIndex(AsyncQdrantClient(":memory:"), "notes", embedder=HashingEmbedder(16))
    mem = AsyncMemoryStore(storage, [index], policy=POLICY, fault_hook=hook)
    kept = await mem.commit(note("before"))
    armed[0] = True
    with pytest.raises(TransactionInDoubt, match="no answer within 1 s"):
        await mem.commit(note("unanswered"))

    pg_proxy.close()
    healed = AsyncMemoryStore(AsyncPostgresStorage(postgres_dsn), [index], policy=POLICY)
    assert (await healed.recover()).clean
    assert (await healed.verify()).clean
    assert [fact["id"] for fact in await healed.query()] == [kept]
    await healed.close()
