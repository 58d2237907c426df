"""A server that stops answering (its connections black-holed by the fault proxy): the
synchronous memory API gives up on a Chroma server at ``Policy.prepare_timeout``, in the
prepare and in the commit's second phase alike, rather than wait for ever (chromadb's HTTP
client never gives up; the clients ``http_client`` makes do, in a search and an open too);
a Postgres storage or decision log gives up on any one exchange at its ``answer_timeout``
(psycopg has no timeout of its own there either): a commit's statements as a refusal, its
commit point as in doubt, a read as a failed read. Once the server answers again,
recovery settles what was left and the stores agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import chromadb
import psycopg
import pytest
from qdrant_client import AsyncQdrantClient, QdrantClient

from chaos.proxy import FaultProxy
from chaos.servers import ChromaServer, PostgresServer
from coordinator import (
    AsyncMemoryStore,
    ConfigurationError,
    DecisionLogError,
    Fact,
    MemoryStore,
    ParticipantError,
    Policy,
    PrepareTimeout,
    TransactionInDoubt,
    new_txid,
)
from coordinator.embeddings import HashingEmbedder
from coordinator.plugins import open_decision_log, open_participant
from participants.chroma import ChromaIndex, http_client
from participants.postgres import AsyncPostgresStorage, PostgresDecisionLog, PostgresStorage
from participants.postgres._connections import BoundedConnection
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


def test_a_chroma_server_that_stops_answering_fails_a_search_and_an_open_in_time(
    tmp_path: Path, proxy: FaultProxy
) -> None:
    """A search goes to the index on the caller's thread: with chromadb's own client it
    waits for ever, as does opening a client (it asks the server at once). The clients
    Lockstep makes (``http_client``, the ``chroma+http://`` URLs) give up in time."""
    index = ChromaIndex(
        http_client("127.0.0.1", proxy.port, answer_timeout=1),
        f"unanswered-{new_txid()[-12:]}",
        embedder=HashingEmbedder(16),
    )
    mem = MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [index], policy=POLICY)
    kept = mem.commit(note("kept"))
    proxy.blackhole()
    with pytest.raises(ParticipantError, match=r"Chroma search .* failed"):
        in_time(lambda: mem.search("kept", k=1))
    with pytest.raises(ParticipantError, match="cannot reach the Chroma server"):
        in_time(lambda: http_client("127.0.0.1", proxy.port, answer_timeout=1))

    proxy.heal()
    proxy.cut()
    assert [hit.fact["id"] for hit in mem.search("kept", k=1)] == [kept]
    mem.close()


def test_answer_timeout_from_a_chroma_url(tmp_path: Path, proxy: FaultProxy) -> None:
    url = (
        f"chroma+http://127.0.0.1:{proxy.port}?collection=unanswered-{new_txid()[-12:]}"
        "&embedder=hashing:16&answer_timeout=1"
    )
    index = open_participant(url)
    assert isinstance(index, ChromaIndex)
    mem = MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [index], policy=POLICY)
    mem.commit(note("kept"))
    proxy.blackhole()
    with pytest.raises(ParticipantError, match=r"Chroma search .* failed"):
        within(10, lambda: mem.search("kept", k=1), "the URL's answer_timeout=1 not applied")
    proxy.heal()
    proxy.cut()
    mem.close()
    with pytest.raises(ConfigurationError, match=r"answer_timeout .* got 'never'"):
        open_participant(url.replace("answer_timeout=1", "answer_timeout=never"))


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
    storage = PostgresStorage(through(pg_proxy, postgres_dsn), answer_timeout=1)
    index = QdrantIndex(QdrantClient(":memory:"), "notes", embedder=HashingEmbedder(16))
    mem = MemoryStore(storage, [index], policy=POLICY, fault_hook=hook)
    kept = mem.commit(note("before"))
    armed[0] = True
    with pytest.raises(TransactionInDoubt, match="did not answer within 1 s"):
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
    storage = AsyncPostgresStorage(through(pg_proxy, postgres_dsn), answer_timeout=1)
    index = AsyncQdrantIndex(AsyncQdrantClient(":memory:"), "notes", embedder=HashingEmbedder(16))
    mem = AsyncMemoryStore(storage, [index], policy=POLICY, fault_hook=hook)
    kept = await mem.commit(note("before"))
    armed[0] = True
    with pytest.raises(TransactionInDoubt, match="did not answer within 1 s"):
        await mem.commit(note("unanswered"))

    pg_proxy.close()
    healed = AsyncMemoryStore(AsyncPostgresStorage(postgres_dsn), [index], policy=POLICY)
    assert (await healed.recover()).clean
    assert (await healed.verify()).clean
    assert [fact["id"] for fact in await healed.query()] == [kept]
    await healed.close()


def test_a_postgres_commit_whose_statements_go_unanswered_is_a_refusal(
    postgres_dsn: str, pg_proxy: FaultProxy
) -> None:
    """Postgres alone commits in one phase: the server stops answering before the
    statements that write the fact; the commit is refused (nothing was committed, so it
    is safe to retry), and reads on a silent server fail instead of waiting."""
    hook, armed = black_hole_at("before_one_phase:postgres", pg_proxy)
    armed[0] = False
    storage = PostgresStorage(through(pg_proxy, postgres_dsn), answer_timeout=1)
    mem = MemoryStore(storage, policy=POLICY, fault_hook=hook)
    kept = mem.commit(note("before"))
    armed[0] = True
    with pytest.raises(PrepareTimeout, match="did not answer within 1 s; nothing"):
        in_time(lambda: mem.commit(note("unanswered")))
    armed[0] = False
    pg_proxy.heal()  # the server answers again: the same store goes on
    assert mem.get(kept) is not None
    pg_proxy.blackhole()
    with pytest.raises(ParticipantError, match="did not answer within 1 s"):
        in_time(lambda: mem.get(kept))

    pg_proxy.close()  # the connections end: the server rolls back what it was sent
    healed = MemoryStore(PostgresStorage(postgres_dsn), policy=POLICY)
    assert [fact["id"] for fact in healed.query()] == [kept]
    assert healed.recover().clean
    healed.close()
    mem.close()


@pytest.mark.anyio
async def test_an_async_postgres_commit_whose_statements_go_unanswered_is_a_refusal(
    postgres_dsn: str, pg_proxy: FaultProxy
) -> None:
    hook, armed = black_hole_at("before_one_phase:postgres", pg_proxy)
    armed[0] = False
    storage = AsyncPostgresStorage(through(pg_proxy, postgres_dsn), answer_timeout=1)
    mem = AsyncMemoryStore(storage, policy=POLICY, fault_hook=hook)
    kept = await mem.commit(note("before"))
    armed[0] = True
    with pytest.raises(PrepareTimeout, match="did not answer within 1 s; nothing"):
        await mem.commit(note("unanswered"))
    armed[0] = False
    pg_proxy.heal()
    assert await mem.get(kept) is not None
    pg_proxy.blackhole()
    with pytest.raises(ParticipantError, match="did not answer within 1 s"):
        await mem.get(kept)

    pg_proxy.close()
    healed = AsyncMemoryStore(AsyncPostgresStorage(postgres_dsn), policy=POLICY)
    assert [fact["id"] for fact in await healed.query()] == [kept]
    await healed.close()
    await mem.close()


def test_a_postgres_decision_log_gives_up_on_a_silent_server(
    postgres_dsn: str, pg_proxy: FaultProxy
) -> None:
    log = PostgresDecisionLog(through(pg_proxy, postgres_dsn), answer_timeout=1)
    assert log.records(["nothing"]) == {}
    pg_proxy.blackhole()
    with pytest.raises(DecisionLogError, match="did not answer within 1 s"):
        in_time(lambda: log.records(["nothing"]))
    pg_proxy.heal()
    assert log.records(["nothing"]) == {}  # a fresh connection: the silent one was closed
    log.close()


def test_a_bounded_connection_leaves_psycopgs_own_timeouts_alone(postgres_dsn: str) -> None:
    """A wait psycopg bounds itself (here ``notifies(timeout=)``) keeps its meaning: it
    ends quietly, and the connection stays open."""
    conn = BoundedConnection.connect(postgres_dsn, autocommit=True)
    conn.answer_timeout = 60
    conn.execute("LISTEN lockstep_nothing")
    assert list(conn.notifies(timeout=0.2)) == []
    assert not conn.closed
    assert conn.execute("SELECT 1").fetchone() == (1,)
    conn.close()


def test_answer_timeout_from_a_url_for_the_storage_and_the_log(
    postgres_dsn: str, pg_proxy: FaultProxy
) -> None:
    """``?answer_timeout=`` is Lockstep's (libpq would refuse it): a store opened from
    settings sets the bound, for its storage and for a Postgres decision log; libpq's
    own parameters pass through as written."""
    dbname = postgres_dsn.rsplit("dbname=", 1)[1]
    url = (
        f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/{dbname}"
        "?application_name=agent%20memory&answer_timeout=1"
    )
    storage = open_participant(url, name="facts")
    log = open_decision_log(url)
    assert isinstance(storage, PostgresStorage) and isinstance(log, PostgresDecisionLog)
    mem = MemoryStore(storage, log=log, policy=POLICY)
    kept = mem.commit(note("kept"))
    with psycopg.connect(postgres_dsn) as watcher:  # the server sees libpq's parameter
        seen = watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'agent memory'"
        ).fetchone()
    assert seen is not None and seen[0] >= 1
    pg_proxy.blackhole()
    with pytest.raises(ParticipantError, match=r"did not answer within 1\.0 s"):
        in_time(lambda: mem.get(kept))
    with pytest.raises(DecisionLogError, match=r"did not answer within 1\.0 s"):
        in_time(lambda: log.records([kept]))
    pg_proxy.heal()
    mem.close()

    for bad in ("0", "soon", "inf"):
        with pytest.raises(ConfigurationError, match=r"answer_timeout .* got"):
            open_participant(url.replace("answer_timeout=1", f"answer_timeout={bad}"))
    # The short scheme's log takes it too (libpq would refuse the URL otherwise).
    short = open_decision_log(url.replace("postgresql://", "postgres://"))
    assert isinstance(short, PostgresDecisionLog)
    assert short.records(["nothing"]) == {}  # it opened, and answers
    short.close()
